//! The leader's offer cycle: one task owns the pure allocator, feeds it the live cluster (agents
//! as they connect and leave, tasks as they end, roles as operators change them), runs a cycle
//! every `offer_interval` and after every batch of events, and hands offers to frameworks. An
//! accepted offer becomes a `Launch` command, which the state machine re-checks before it is
//! committed; only then are agents told to launch.
//!
//! The cycle never waits on a write. What it decides (launches, built-in frameworks'
//! registrations, unschedulable tasks, framework removals) is handed to the raft write batcher
//! as it is decided, so everything one cycle decides shares raft entries, and the results come
//! back as events. A launch in flight keeps its resources held in the allocator (and its
//! waiting tasks out of the queue) until its result arrives; the agent is told to launch by
//! the proposer as soon as the launch is committed, whoever leads by then.
//!
//! `wasmos run` tasks are launched by the master's built-in framework, one per role: it takes
//! its role's waiting tasks (highest priority, then oldest first) from the offers it gets, so
//! plain submissions share the cluster by the same DRF, quotas and reservations as any other
//! framework.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use wasmos_alloc::{
    AgentSummary, Allocator, Config, Offer, Operation, Pools, Quota, Rescind, ReservationChange,
    Role, RoleSummary, TaskRequest,
};
use wasmos_proto::{
    AgentId, FrameworkCall, FrameworkEvent, FrameworkId, MasterToAgent, OfferId, OfferInfo,
    OfferOperation, Qos, Reason, Resources, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus,
};
use wasmos_state::{ClusterState, Command, CommandResult, LaunchTask, ReservationOp};

use crate::policy::validate_spec;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod group_sim;
mod live;
#[cfg(test)]
mod sim;

pub(crate) use live::lead;

/// The name and owner the built-in `wasmos run` frameworks are registered with.
pub(crate) const BUILTIN_NAME: &str = "wasmos-run";
pub(crate) const BUILTIN_OWNER: &str = "wasmos://master/builtin";

/// Whether `f` is one of the master's built-in `wasmos run` frameworks, not removed.
fn live_builtin(f: &wasmos_state::FrameworkRecord) -> bool {
    f.owner == BUILTIN_OWNER && f.name == BUILTIN_NAME && f.removed_ms.is_none()
}

/// How many waiting tasks that do not fit one offer are tried before giving up on it: keeps a
/// cycle bounded when a long queue meets a nearly full agent.
const MAX_MISSES_PER_OFFER: usize = 256;
/// Most queued tasks one offer passes over because its agent lacks attributes they need.
const MAX_PASSED_PER_OFFER: usize = 4096;

/// An unacknowledged status update is sent again after this long, then after twice as long
/// each time, up to `RESEND_MAX_MS`.
const RESEND_FIRST_MS: u64 = 2_000;
const RESEND_MAX_MS: u64 = 30_000;
/// How often the unacknowledged updates are looked through.
const RESEND_SCAN_MS: u64 = 500;
/// Most scalar resources a `Waiting` call may name (agents advertise a handful).
const MAX_WANT_SCALARS: usize = 16;

/// When an unacknowledged update goes out again.
struct Resend {
    update: u64,
    due_ms: u64,
    delay_ms: u64,
}

/// What the rest of the master tells the offer cycle.
pub(crate) enum Event {
    AgentUp(AgentId),
    AgentDown(AgentId),
    Submitted(TaskId),
    /// A task's status was recorded (it may have ended).
    TaskChanged(TaskId),
    /// An agent was declared lost with its tasks.
    AgentLost(AgentId),
    /// Retire a framework and kill its tasks (a job that ended with nobody to tear it down).
    RemoveFramework(FrameworkId),
    /// A framework's removal was recorded (`wasmos framework teardown`): kill its tasks and
    /// end its session.
    FrameworkRemoved(FrameworkId),
    RolesChanged,
    /// An agent's reservations changed outside an offer (an operator removed one).
    ReservationsChanged(AgentId),
    /// An operator drained an agent or ended its drain (the state says which).
    DrainChanged(AgentId),
    /// Maintenance windows were scheduled or cancelled for these agents.
    MaintenanceChanged(Vec<AgentId>),
    /// An operator changed what an agent offers.
    AgentResized(AgentId),
    /// An agent's report of what its non-revocable tasks use.
    Usage(AgentId, Option<Resources>),
    /// A framework subscribed on connection `conn`; its events go to `tx`.
    FrameworkUp {
        id: FrameworkId,
        conn: usize,
        tx: mpsc::UnboundedSender<FrameworkEvent>,
    },
    FrameworkDown {
        id: FrameworkId,
        conn: usize,
    },
    /// A call on connection `conn`: acted on only while that is the framework's session (a
    /// torn-down or replaced session's late calls are dropped).
    FrameworkCall {
        id: FrameworkId,
        conn: usize,
        call: FrameworkCall,
    },
    Snapshot(oneshot::Sender<Snapshot>),
    /// A launch proposed by offer cycle `cycle` was decided: committed (its tasks are already
    /// sent to the agent), refused by the state machine, or not recorded.
    Launched {
        cycle: u64,
        launch: u64,
        agent: AgentId,
        tasks: Vec<TaskId>,
        result: Result<CommandResult, wasmos_raft::RaftError>,
    },
    /// A built-in framework's registration proposed by offer cycle `cycle` was decided.
    Registered {
        cycle: u64,
        role: Role,
        result: Result<CommandResult, wasmos_raft::RaftError>,
    },
}

/// How long a launch whose write timed out is watched for a late commit before its built-in
/// tasks go back to the queue.
const LATE_COMMIT_WATCH_MS: u64 = 60_000;

/// A launch whose write timed out (a majority did not confirm it in time): it may commit
/// after all, and then its tasks are placed and must be sent to the agent. Until the watch
/// ends, its built-in tasks are not queued again, so a late commit and a new launch never both
/// send them.
struct Doubtful {
    agent: AgentId,
    tasks: Vec<TaskId>,
    builtin: bool,
    /// A framework's accept waits for the outcome: `Accepted` if it commits, an error once
    /// the watch ends.
    reply: Option<(FrameworkId, u64)>,
    until_ms: u64,
}

/// Numbers offer cycles, so that results proposed by a cycle of an earlier term are told
/// apart from this one's.
static CYCLES: AtomicU64 = AtomicU64::new(1);

/// A launch proposed and not yet decided: the allocator holds its tasks' resources.
struct Launching {
    framework: FrameworkId,
    agent: AgentId,
    /// Each task with its charge and priority: what the allocator holds for it.
    tasks: Vec<(TaskId, Pools, i32)>,
    /// A framework's accept (its request id and the tasks it named) waits for the answer;
    /// `None` for the built-in frameworks, whose tasks go back to the queue if refused.
    reply: Option<(u64, Vec<TaskId>)>,
    /// It reserves or unreserves, and its agent was rebuilt from the recorded state while it
    /// was in flight (which lacks the change): rebuilt again once it is committed.
    changes_reservations: bool,
    rebuilt: bool,
    /// Tasks of it preempted while it was in flight: killed once it is committed (after their
    /// launch, on the same channel to the agent, which ignores a kill for a task it does not
    /// know).
    kills: Vec<(TaskId, Reason)>,
}

/// What `agent list` and `role list` show from the leader's allocator.
#[derive(Default)]
pub(crate) struct Snapshot {
    pub agents: BTreeMap<AgentId, AgentSummary>,
    pub roles: Vec<RoleSummary>,
    /// Frameworks subscribed now or holding offers.
    pub frameworks: BTreeMap<FrameworkId, wasmos_proto::FrameworkOffers>,
}

struct Builtin {
    id: FrameworkId,
    role: Role,
    /// Waiting tasks by (priority descending, id).
    queue: BTreeMap<(Reverse<i32>, TaskId), TaskRequest>,
    suppressed: bool,
}

/// What the offer cycle needs of the master around it: the applied replicated state, raft,
/// the agents' channels, task ids, secrets, and a way to post events back to itself. The live
/// master implements it on `Shared` (`offers/live.rs`: a task per proposal); the simulation
/// (`offers/sim.rs`) on a state machine of its own, in virtual time with seeded faults. The
/// cycle itself does no I/O, reads no clock (time is an argument) and never waits.
pub(crate) trait Env {
    /// Reads the applied state. Keep `f` short.
    fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R;
    /// Hands `cmd` to raft now; when its result is known, [`settle`] does what follows.
    fn propose(&self, cmd: Command, then: Proposal);
    fn send_to_agent(&self, agent: &AgentId, msg: MasterToAgent) -> bool;
    /// Sends a placed task to its agent (its secrets opened for it).
    fn launch(&self, agent: &AgentId, task: TaskId, spec: TaskSpec) -> bool;
    fn new_task_id(&self) -> TaskId;
    /// Whether `tenant` may start more work (its storage quota).
    fn check_storage(&self, tenant: &str) -> Result<(), String>;
    /// Seals a spec's secrets before it is recorded.
    fn seal(&self, spec: &mut TaskSpec) -> Result<(), String>;
    /// The allocator's settings (the least an offer carries).
    fn allocator_config(&self) -> Config {
        Config::default()
    }
    /// The agents connected to this master now.
    fn connected_agents(&self) -> Vec<AgentId>;
    /// How long a want waits before guarantee preemption serves it.
    fn preemption_grace_ms(&self) -> u64;
    /// Queues an event for the cycle.
    fn post(&self, ev: Event);
}

/// What a proposal is for: what [`settle`] does with its result.
pub(crate) enum Proposal {
    Launch {
        cycle: u64,
        launch: u64,
        agent: AgentId,
        tasks: Vec<TaskId>,
    },
    Register {
        cycle: u64,
        role: Role,
    },
    Unschedulable(TaskId),
    RemoveFramework(FrameworkId),
    Acknowledge {
        framework: FrameworkId,
        task: TaskId,
    },
    /// A framework's answer to an inverse offer: shown to operators, nothing follows.
    InverseOfferAnswer {
        framework: FrameworkId,
    },
}

/// What follows a proposal's result, whoever proposed it: a committed launch is sent to its
/// agent at once (whether its cycle still runs or not), and the cycle hears of every result.
pub(crate) fn settle<E: Env>(
    env: &E,
    then: Proposal,
    result: Result<CommandResult, wasmos_raft::RaftError>,
) {
    match then {
        Proposal::Launch {
            cycle,
            launch,
            agent,
            tasks,
        } => {
            // (A write that timed out may still commit: the cycle watches for that.)
            if let Ok(CommandResult::Ok) = &result {
                launch_placed(env, &agent, &tasks);
            }
            env.post(Event::Launched {
                cycle,
                launch,
                agent,
                tasks,
                result,
            });
        }
        Proposal::Register { cycle, role } => env.post(Event::Registered {
            cycle,
            role,
            result,
        }),
        Proposal::Unschedulable(task) => match result {
            Ok(_) => env.post(Event::TaskChanged(task)),
            Err(e) => {
                tracing::warn!(%task, "its end as unschedulable was not recorded: {e}");
                env.post(Event::Submitted(task));
            }
        },
        Proposal::RemoveFramework(fw) => match result {
            Ok(result) => {
                if let CommandResult::Rejected(why) = result {
                    tracing::warn!(framework = %fw, "cannot remove framework: {why}");
                }
                env.post(Event::FrameworkRemoved(fw));
            }
            // A majority did not answer in time: try again (this takes the write timeout each
            // time, so it is no tight loop).
            Err(e @ wasmos_raft::RaftError::NoQuorum(_)) => {
                tracing::warn!(framework = %fw, "framework removal not recorded: {e}");
                env.post(Event::RemoveFramework(fw));
            }
            // No longer the leader (or stopped): the next leader times it out afresh.
            Err(e) => tracing::warn!(framework = %fw, "framework removal not recorded: {e}"),
        },
        // A lost acknowledgement only means the update is sent (and acknowledged) again.
        Proposal::Acknowledge { framework, task } => {
            if let Err(e) = result {
                tracing::debug!(%framework, %task, "acknowledgement not recorded: {e}");
            }
        }
        Proposal::InverseOfferAnswer { framework } => match result {
            Ok(CommandResult::Ok) => {}
            other => tracing::debug!(%framework, "inverse offer answer not recorded: {other:?}"),
        },
    }
}

/// Whether framework `fw` has live tasks on `agent` (the frameworks an agent's maintenance
/// concerns).
fn runs_tasks_on(s: &wasmos_state::ClusterState, agent: &AgentId, fw: FrameworkId) -> bool {
    s.live_tasks_on(agent)
        .any(|t| s.tasks.get(&t).is_some_and(|t| t.framework == Some(fw)))
}

pub(crate) struct Cycle<E: Env> {
    env: E,
    /// The time of the events or the cycle being handled (milliseconds since the epoch).
    now: u64,
    /// This cycle's number (see [`CYCLES`]).
    id: u64,
    /// Launches proposed and not yet decided, by number, and their tasks.
    launching: BTreeMap<u64, Launching>,
    flying: BTreeMap<TaskId, u64>,
    next_launch: u64,
    /// Roles whose built-in framework's registration is proposed, and until when no other is
    /// proposed (`u64::MAX` while its result is awaited; a minute after it timed out, since it
    /// may still commit).
    registering: BTreeMap<Role, u64>,
    next_surplus_check_ms: u64,
    /// Launches whose write timed out: they may still commit.
    doubtful: Vec<Doubtful>,
    alloc: Allocator,
    builtin: BTreeMap<Role, Builtin>,
    builtin_ids: BTreeMap<FrameworkId, Role>,
    /// Connected agents' totals as they advertise them (an operator may offer less for a
    /// while), for the unschedulable check.
    agent_totals: BTreeMap<AgentId, Resources>,
    /// Queued tasks not yet checked against the agents' sizes and their roles' limits.
    unchecked: BTreeMap<TaskId, (Role, TaskRequest)>,
    /// Agents or limits changed: check every queued task again.
    recheck_all: bool,
    /// Subscribed frameworks: their connection and where their events go.
    external: BTreeMap<FrameworkId, (usize, mpsc::UnboundedSender<FrameworkEvent>)>,
    /// Frameworks of the scheduler API that are not subscribed, since when (this leader's
    /// start for those it never saw): removed past their failover timeout.
    away: BTreeMap<FrameworkId, u64>,
    /// Updates sent and not yet acknowledged, by framework and task.
    resend: BTreeMap<(FrameworkId, TaskId), Resend>,
    next_resend_scan_ms: u64,
    /// What subscribed frameworks said they wait for (`FrameworkCall::Waiting`), since when.
    waiting: BTreeMap<FrameworkId, (Resources, u64)>,
}

/// The role a task counts against: the one it names, else its builtin framework's default.
/// The first of `spec`'s constraints that an agent with `attributes` does not meet.
fn unmet_constraint<'a>(
    spec: &'a TaskSpec,
    attributes: &BTreeMap<String, String>,
) -> Option<(&'a String, &'a String)> {
    spec.constraints
        .iter()
        .find(|(k, v)| attributes.get(*k) != Some(*v))
}

fn task_role(t: &TaskInfo) -> Option<Role> {
    t.spec.role.as_deref().and_then(|r| Role::new(r).ok())
}

fn request(t: &TaskInfo) -> TaskRequest {
    TaskRequest {
        id: t.id,
        resources: t.spec.resources.clone(),
        qos: t.spec.qos,
        priority: t.spec.priority,
    }
}

fn offer_info(offer: &Offer) -> OfferInfo {
    OfferInfo {
        id: offer.id,
        agent: offer.agent.clone(),
        attributes: BTreeMap::new(),
        unreserved: offer.resources.unreserved.clone(),
        reserved: offer
            .resources
            .reserved
            .iter()
            .map(|(r, res)| (r.to_string(), res.clone()))
            .collect(),
        revocable: offer.resources.revocable.clone(),
    }
}

impl<E: Env> Cycle<E> {
    /// Handles a batch of events that arrived together at `now`, then runs a cycle: a lost
    /// agent's tasks are reconciled once for the batch.
    pub(crate) fn step(&mut self, batch: Vec<Event>, now: u64) {
        self.now = now;
        let mut reconcile = false;
        for ev in batch {
            match ev {
                Event::AgentLost(agent) => {
                    reconcile = true;
                    for fw in self.external.keys() {
                        self.send(
                            *fw,
                            FrameworkEvent::Failure {
                                agent: agent.clone(),
                            },
                        );
                    }
                }
                other => self.handle(other),
            }
        }
        if reconcile {
            self.reconcile();
        }
        self.run_once(now);
    }

    /// Sends the subscribed frameworks to `addr`, the new leader.
    pub(crate) fn not_leader(&self, addr: Option<String>) {
        for (_, tx) in self.external.values() {
            let _ = tx.send(FrameworkEvent::NotLeader { addr: addr.clone() });
        }
    }

    /// A cycle for a new term: the allocator is rebuilt from the replicated state, earlier
    /// leaders' writes included.
    pub(crate) fn new(env: E, now: u64) -> Cycle<E> {
        let alloc = Allocator::new(env.allocator_config());
        let mut cycle = Cycle {
            env,
            now,
            id: CYCLES.fetch_add(1, Ordering::Relaxed),
            launching: BTreeMap::new(),
            flying: BTreeMap::new(),
            next_launch: 0,
            registering: BTreeMap::new(),
            next_surplus_check_ms: 0,
            doubtful: Vec::new(),
            alloc,
            builtin: BTreeMap::new(),
            builtin_ids: BTreeMap::new(),
            agent_totals: BTreeMap::new(),
            unchecked: BTreeMap::new(),
            recheck_all: false,
            external: BTreeMap::new(),
            away: BTreeMap::new(),
            resend: BTreeMap::new(),
            next_resend_scan_ms: 0,
            waiting: BTreeMap::new(),
        };
        let (frameworks, waiting) = cycle.env.read(|s| {
            let waiting: Vec<TaskInfo> = s
                .tasks
                .values()
                .filter(|t| t.agent.is_none() && t.status.state == TaskState::Staging)
                .cloned()
                .collect();
            (s.frameworks.clone(), waiting)
        });
        cycle.apply_roles();
        for f in frameworks.values() {
            if let Err(e) = cycle.alloc.add_framework(f.id, f.role.clone(), f.revocable) {
                tracing::error!(framework = %f.id, "cannot restore framework: {e}");
                continue;
            }
            // (A removed one stays in the allocator while its tasks end, but launches nothing.)
            if live_builtin(f) {
                cycle.builtin_ids.insert(f.id, f.role.clone());
                cycle.builtin.insert(
                    f.role.clone(),
                    Builtin {
                        id: f.id,
                        role: f.role.clone(),
                        queue: BTreeMap::new(),
                        suppressed: false,
                    },
                );
            }
            // Frameworks get offers only while subscribed; the built-in ones are revived as
            // soon as they have work.
            cycle.alloc.suppress(f.id);
            if f.acknowledges && f.removed_ms.is_none() {
                // Whether it was connected to the previous leader or not, its failover timeout
                // runs from now: it needs time to find this one.
                cycle.away.insert(f.id, now);
            }
        }
        for b in cycle.builtin.values_mut() {
            b.suppressed = true;
        }
        for t in waiting {
            cycle.enqueue(&t);
        }
        // Agents already connected (to a master that has just become leader).
        let connected: Vec<AgentId> = cycle.env.connected_agents();
        for agent in connected {
            cycle.agent_up(agent.clone());
            // Launches an earlier leader recorded and may not have sent (it gave up waiting,
            // or lost leadership before the commit it could see): sent again; an agent
            // ignores a launch it already has. (Agents that connect later get theirs when
            // they register.)
            let placed: Vec<TaskId> = cycle.env.read(|s| {
                s.live_tasks_on(&agent)
                    .filter(|id| {
                        s.tasks
                            .get(id)
                            .is_some_and(|t| t.status.state == TaskState::Staging)
                    })
                    .collect()
            });
            if !placed.is_empty() {
                launch_placed(&cycle.env, &agent, &placed);
            }
        }
        cycle
    }

    fn apply_roles(&mut self) {
        let roles = self.env.read(|s| s.roles.clone());
        for (role, r) in roles {
            let weight = r.weight_milli as f64 / 1000.0;
            if let Err(e) = self.alloc.set_weight(&role, weight) {
                tracing::error!(%role, "cannot apply weight: {e}");
            }
            let quota = Quota {
                guarantee: r.guarantee,
                limit: r.limit,
            };
            if let Err(e) = self.alloc.set_quota(&role, quota) {
                tracing::error!(%role, "cannot apply quota: {e}");
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::AgentUp(agent) => self.agent_up(agent),
            Event::AgentDown(agent) => {
                let (rescinds, _lost) = self.alloc.remove_agent(&agent);
                self.rescinded(rescinds);
                self.agent_totals.remove(&agent);
                self.recheck_all = true;
            }
            Event::Submitted(task) => {
                if let Some(t) = self.env.read(|s| s.tasks.get(&task).cloned()) {
                    self.enqueue(&t);
                }
            }
            Event::TaskChanged(task) => self.task_changed(task),
            Event::AgentLost(_) => self.reconcile(),
            Event::RemoveFramework(fw) => {
                let (live, removed) = self.env.read(|s| {
                    (
                        s.live_framework(fw).is_ok(),
                        s.frameworks
                            .get(&fw)
                            .is_some_and(|f| f.removed_ms.is_some()),
                    )
                });
                if live {
                    tracing::info!(framework = %fw, "removing the framework");
                    self.remove_framework(fw);
                } else if removed {
                    // Recorded after all (a retried removal whose first write committed late).
                    self.removed(fw);
                }
            }
            Event::FrameworkRemoved(fw) => {
                tracing::info!(framework = %fw, "framework torn down by a client request");
                self.removed(fw);
            }
            Event::ReservationsChanged(agent) => self.refresh_agent(&agent),
            Event::DrainChanged(agent) => {
                let draining = self
                    .env
                    .read(|s| s.agents.get(&agent).is_some_and(|a| a.draining));
                let rescinds = self.alloc.set_draining(&agent, draining);
                self.rescinded(rescinds);
                self.recheck_all = true;
            }
            Event::MaintenanceChanged(agents) => {
                let frameworks: Vec<FrameworkId> = self.external.keys().copied().collect();
                for fw in frameworks {
                    self.inverse_offers(fw, Some(&agents));
                }
            }
            Event::AgentResized(agent) => {
                let Some(total) = self
                    .env
                    .read(|s| s.agents.get(&agent).map(|a| a.total.clone()))
                else {
                    return;
                };
                // Not connected: it is built from the record when it comes back.
                if !self.agent_totals.contains_key(&agent) {
                    return;
                }
                match self.alloc.resize_agent(&agent, total) {
                    Ok(rescinds) => self.rescinded(rescinds),
                    Err(e) => tracing::error!(%agent, "cannot resize the agent: {e}"),
                }
            }
            Event::RolesChanged => {
                self.apply_roles();
                // A new limit may leave waiting tasks unable ever to run.
                self.recheck_all = true;
            }
            Event::Usage(agent, usage) => self.alloc.set_usage(&agent, usage),
            Event::FrameworkUp { id, conn, tx } => self.framework_up(id, conn, tx),
            Event::FrameworkDown { id, conn } => {
                if self.external.get(&id).is_some_and(|(c, _)| *c == conn) {
                    self.detach(id);
                    self.away.insert(id, self.now);
                }
            }
            Event::FrameworkCall { id, conn, call } => {
                if self.external.get(&id).is_none_or(|(c, _)| *c != conn) {
                    tracing::debug!(framework = %id, "call from a session that has ended, dropped");
                    return;
                }
                self.framework_call(id, call);
            }
            Event::Launched {
                cycle,
                launch,
                agent,
                tasks,
                result,
            } => match result {
                _ if cycle == self.id => self.launched(launch, result),
                // An earlier term's launch committed after this cycle read the state: its
                // tasks hold resources this allocator does not know of.
                Ok(CommandResult::Ok) => self.refresh_agent(&agent),
                // An earlier term's launch that timed out may commit yet, and nobody else
                // would send it.
                Err(wasmos_raft::RaftError::NoQuorum(_)) => self.doubtful.push(Doubtful {
                    agent,
                    tasks,
                    builtin: false,
                    reply: None,
                    until_ms: self.now + LATE_COMMIT_WATCH_MS,
                }),
                _ => {}
            },
            Event::Registered {
                cycle,
                role,
                result,
            } => {
                // One that timed out may commit yet (this cycle's or an earlier term's): no
                // other is proposed until then, and then a surplus is retired.
                if matches!(result, Err(wasmos_raft::RaftError::NoQuorum(_))) {
                    self.registering
                        .insert(role.clone(), self.now + LATE_COMMIT_WATCH_MS);
                } else if cycle == self.id {
                    self.registering.remove(&role);
                }
                // Taken also from an earlier term's cycle: it is recorded, and a role
                // registered twice would keep a framework nobody uses.
                self.registered(role, result);
            }
            Event::Snapshot(reply) => {
                let agents = self
                    .agent_totals
                    .keys()
                    .filter_map(|a| self.alloc.agent_summary(a).map(|s| (a.clone(), s)))
                    .collect();
                let mut frameworks: BTreeMap<FrameworkId, wasmos_proto::FrameworkOffers> = self
                    .external
                    .keys()
                    .chain(self.builtin_ids.keys())
                    .map(|id| {
                        let subscribed = wasmos_proto::FrameworkOffers {
                            subscribed: true,
                            ..Default::default()
                        };
                        (*id, subscribed)
                    })
                    .collect();
                for o in self.alloc.offers() {
                    let f = frameworks.entry(o.framework).or_default();
                    f.outstanding += 1;
                    f.offered = f.offered.saturating_add(&o.resources.total());
                }
                let _ = reply.send(Snapshot {
                    agents,
                    roles: self.alloc.role_summaries(),
                    frameworks,
                });
            }
        }
    }

    fn send(&self, fw: FrameworkId, ev: FrameworkEvent) {
        if let Some((_, tx)) = self.external.get(&fw) {
            let _ = tx.send(ev);
        }
    }

    fn framework_up(
        &mut self,
        id: FrameworkId,
        conn: usize,
        tx: mpsc::UnboundedSender<FrameworkEvent>,
    ) {
        // Removed between its subscription and now (its timeout ran out): no session; dropping
        // the sender ends the stream.
        if let Err(message) = self.env.read(|s| s.live_framework(id).map(|_| ())) {
            let _ = tx.send(FrameworkEvent::Error {
                request: None,
                message: message.to_string(),
            });
            return;
        }
        if self.alloc.framework_dominant_share(id).is_none() {
            let Some(f) = self.env.read(|s| s.frameworks.get(&id).cloned()) else {
                return;
            };
            if let Err(e) = self.alloc.add_framework(id, f.role, f.revocable) {
                tracing::error!(framework = %id, "cannot add framework: {e}");
                return;
            }
        }
        // Offers sent to an earlier session of this framework went with it: without this,
        // a session replaced before its end was seen (the old stream's end is handled after
        // the new subscription) kept its resources held in offers nobody can answer.
        self.alloc.withdraw_offers_of(id);
        self.alloc.revive(id);
        self.external.insert(id, (conn, tx));
        self.away.remove(&id);
        // What an earlier session said it waits for is that session's: this one says its own.
        self.waiting.remove(&id);
        // Everything it has not acknowledged goes out again at once.
        self.resend.retain(|(f, _), _| *f != id);
        self.next_resend_scan_ms = 0;
        self.inverse_offers(id, None);
    }

    /// Sends `fw` an inverse offer for each agent (of `only`, if given) with a maintenance
    /// window not begun where it runs tasks and that it has not answered.
    fn inverse_offers(&self, fw: FrameworkId, only: Option<&[AgentId]>) {
        let due: Vec<(AgentId, wasmos_proto::MaintenanceWindow)> = self.env.read(|s| {
            s.agents
                .iter()
                .filter(|(a, _)| only.is_none_or(|o| o.contains(a)))
                .filter_map(|(a, r)| {
                    let m = r.maintenance.as_ref()?;
                    (!m.begun && !m.answers.contains_key(&fw) && runs_tasks_on(s, a, fw))
                        .then(|| (a.clone(), m.window))
                })
                .collect()
        });
        for (agent, w) in due {
            self.send(
                fw,
                FrameworkEvent::InverseOffer {
                    agent,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                },
            );
        }
    }

    /// Sends unacknowledged updates to subscribed frameworks: those never sent by this leader
    /// (recorded while the framework was away, or by an earlier leader, or by a bulk change
    /// such as a lost agent) at once, the others when their backoff is due.
    fn resend_updates(&mut self, now: u64) {
        if now < self.next_resend_scan_ms || self.external.is_empty() {
            return;
        }
        self.next_resend_scan_ms = now + RESEND_SCAN_MS;
        let (due, kept) = self.env.read(|s| {
            let mut due = Vec::new();
            for fw in self.external.keys() {
                for key in s.unacked.range((*fw, TaskId(0))..=(*fw, TaskId(u64::MAX))) {
                    // Its accept is not answered yet: the answer comes first.
                    if self.flying.contains_key(&key.1) {
                        continue;
                    }
                    let Some(t) = s.tasks.get(&key.1) else {
                        continue;
                    };
                    let delay = match self.resend.get(key) {
                        Some(r) if r.update == t.status_seq && r.due_ms > now => continue,
                        Some(r) if r.update == t.status_seq => (r.delay_ms * 2).min(RESEND_MAX_MS),
                        _ => RESEND_FIRST_MS,
                    };
                    due.push((*key, t.status.clone(), t.status_seq, delay));
                }
            }
            let kept: Vec<(FrameworkId, TaskId)> = self
                .resend
                .keys()
                .filter(|k| s.unacked.contains(k))
                .copied()
                .collect();
            (due, kept)
        });
        let mut resend = std::mem::take(&mut self.resend);
        self.resend = kept
            .into_iter()
            .filter_map(|k| resend.remove(&k).map(|r| (k, r)))
            .collect();
        for ((fw, task), status, update, delay_ms) in due {
            self.resend.insert(
                (fw, task),
                Resend {
                    update,
                    due_ms: now + delay_ms,
                    delay_ms,
                },
            );
            self.send(
                fw,
                FrameworkEvent::Update {
                    task,
                    status,
                    update,
                },
            );
        }
    }

    /// Removes the frameworks away for longer than their failover timeout.
    fn expire_frameworks(&mut self, now: u64) {
        let expired: Vec<FrameworkId> = self.env.read(|s| {
            self.away
                .iter()
                .filter(|(id, since)| {
                    s.frameworks
                        .get(id)
                        .is_none_or(|f| now.saturating_sub(**since) >= f.failover_timeout_ms)
                })
                .map(|(id, _)| *id)
                .collect()
        });
        for fw in expired {
            tracing::warn!(framework = %fw, "framework did not return within its failover timeout; removing it");
            self.remove_framework(fw);
        }
    }

    /// Retires a framework (torn down or timed out): proposes its removal, and once that is
    /// decided kills its live tasks and stops offering to it (`Event::FrameworkRemoved`). Its
    /// resources are released as its tasks end.
    fn remove_framework(&mut self, fw: FrameworkId) {
        // Not expired again while the removal is in flight.
        self.away.remove(&fw);
        self.env.propose(
            Command::RemoveFramework {
                framework: fw,
                now_ms: self.now,
            },
            Proposal::RemoveFramework(fw),
        );
    }

    /// After a framework's removal is recorded: kills its live tasks, ends its session.
    fn removed(&mut self, fw: FrameworkId) {
        let live: Vec<(TaskId, Option<AgentId>)> = self.env.read(|s| {
            s.tasks
                .values()
                .filter(|t| t.framework == Some(fw) && !t.status.state.is_terminal())
                .map(|t| (t.id, t.agent.clone()))
                .collect()
        });
        for (task, agent) in live {
            // An agent away now kills the task when it registers again (its framework is
            // gone), or it is lost with the agent.
            if let Some(agent) = agent {
                self.env.send_to_agent(
                    &agent,
                    MasterToAgent::Kill {
                        task,
                        reason: Some(Reason::FrameworkRemoved),
                    },
                );
            }
        }
        self.detach(fw);
        self.away.remove(&fw);
        // A built-in one (a surplus retired): its role takes the one recorded, or a new one.
        if let Some(role) = self.builtin_ids.remove(&fw)
            && let Some(b) = self.builtin.get_mut(&role)
            && b.id == fw
        {
            b.id = FrameworkId(0);
            b.suppressed = true;
        }
    }

    /// Lets go of a framework's session: its outstanding offers go back, it is offered
    /// nothing more, its pending resends are dropped, and dropping its sender ends its stream.
    fn detach(&mut self, fw: FrameworkId) {
        self.alloc.withdraw_offers_of(fw);
        self.alloc.suppress(fw);
        self.external.remove(&fw);
        self.resend.retain(|(f, _), _| *f != fw);
        self.waiting.remove(&fw);
    }

    fn framework_call(&mut self, fw: FrameworkId, call: FrameworkCall) {
        let now = self.now;
        match call {
            // A subscribed session has its leader; the question is a probe's only.
            FrameworkCall::Subscribe { .. } | FrameworkCall::WhoLeads => {}
            FrameworkCall::Acknowledge { task, update } => {
                // Nothing owed for this update (a duplicate, an old one): no write.
                let owed = self.env.read(|s| {
                    s.unacked.contains(&(fw, task))
                        && s.tasks.get(&task).is_some_and(|t| update > t.acked_seq)
                });
                if !owed {
                    return;
                }
                // Not resent while the acknowledgement is being recorded; if that write is
                // lost, the update goes out again later and is acknowledged again.
                if let Some(r) = self.resend.get_mut(&(fw, task))
                    && update >= r.update
                {
                    r.due_ms = now + RESEND_MAX_MS;
                }
                // An acknowledgement changes nothing the cycle decides, and a lost one only
                // means the update is sent (and acknowledged) again.
                self.env.propose(
                    Command::Acknowledge {
                        framework: fw,
                        task,
                        update,
                    },
                    Proposal::Acknowledge {
                        framework: fw,
                        task,
                    },
                );
            }
            FrameworkCall::Reconcile { tasks } => {
                // Tasks of an accept not answered yet: the framework learns of them from the
                // answer first.
                let flying = &self.flying;
                let updates: Vec<(TaskId, TaskStatus, u64)> = self.env.read(|s| {
                    if tasks.is_empty() {
                        return s
                            .tasks
                            .values()
                            .filter(|t| t.framework == Some(fw) && !flying.contains_key(&t.id))
                            .filter(|t| {
                                !t.status.state.is_terminal() || s.unacked.contains(&(fw, t.id))
                            })
                            .map(|t| (t.id, t.status.clone(), t.status_seq))
                            .collect();
                    }
                    tasks
                        .iter()
                        .map(|id| match s.tasks.get(id) {
                            Some(t) if t.framework == Some(fw) => {
                                (t.id, t.status.clone(), t.status_seq)
                            }
                            _ => {
                                let why = "not a task of this framework";
                                let status = TaskStatus::with_reason(
                                    TaskState::Lost,
                                    Some(Reason::Unknown),
                                    why,
                                );
                                (*id, status, 0)
                            }
                        })
                        .collect()
                });
                for (task, status, update) in updates {
                    self.send(
                        fw,
                        FrameworkEvent::Update {
                            task,
                            status,
                            update,
                        },
                    );
                }
            }
            FrameworkCall::Teardown => {
                tracing::info!(framework = %fw, "framework tore itself down");
                self.remove_framework(fw);
            }
            FrameworkCall::Decline { offers, refuse_ms } => {
                self.alloc.decline(fw, &offers, refuse_ms, now);
            }
            FrameworkCall::Suppress => self.alloc.suppress(fw),
            FrameworkCall::Waiting { resources } => match resources {
                Some(r) if r.scalars.len() > MAX_WANT_SCALARS => self.send(
                    fw,
                    FrameworkEvent::Error {
                        request: None,
                        message: format!(
                            "a Waiting call names at most {MAX_WANT_SCALARS} scalar resources"
                        ),
                    },
                ),
                // Still waiting (perhaps for another task): it has waited since it first said so.
                Some(r) => {
                    let since = self.waiting.get(&fw).map_or(now, |(_, since)| *since);
                    self.waiting.insert(fw, (r, since));
                }
                None => {
                    self.waiting.remove(&fw);
                }
            },
            FrameworkCall::Revive => self.alloc.revive(fw),
            FrameworkCall::AnswerInverseOffer { agent, accept } => {
                // Only where it runs tasks (where it was sent an inverse offer): no answer
                // for agents it has nothing on.
                if !self.env.read(|s| runs_tasks_on(s, &agent, fw)) {
                    self.send(
                        fw,
                        FrameworkEvent::Error {
                            request: None,
                            message: format!("no inverse offer for agent {agent} to answer"),
                        },
                    );
                    return;
                }
                self.env.propose(
                    Command::AnswerInverseOffer {
                        agent,
                        framework: fw,
                        accept,
                    },
                    Proposal::InverseOfferAnswer { framework: fw },
                );
            }
            FrameworkCall::Kill { task } => {
                let info = self.env.read(|s| s.tasks.get(&task).cloned());
                match info {
                    Some(t) if t.framework == Some(fw) && !t.status.state.is_terminal() => {
                        if let Some(agent) = &t.agent {
                            self.env
                                .send_to_agent(agent, MasterToAgent::Kill { task, reason: None });
                        }
                    }
                    _ => self.send(
                        fw,
                        FrameworkEvent::Error {
                            request: None,
                            message: format!("no live task {task} of this framework"),
                        },
                    ),
                }
            }
            FrameworkCall::Accept {
                request,
                offers,
                operations,
                refuse_ms,
            } => {
                // Answered once the launch is decided (`launched`), or now if refused here.
                if let Err(message) =
                    self.external_accept(fw, request, &offers, operations, refuse_ms, now)
                {
                    self.send(
                        fw,
                        FrameworkEvent::Error {
                            request: Some(request),
                            message,
                        },
                    );
                }
            }
        }
    }

    /// Checks a framework's accept, applies it to the allocator and proposes it; the answer
    /// (`Accepted` once it is committed and its tasks are sent) comes with its result. A
    /// refusal here withdraws the named offers and launches nothing.
    fn external_accept(
        &mut self,
        fw: FrameworkId,
        request: u64,
        offers: &[OfferId],
        operations: Vec<OfferOperation>,
        refuse_ms: Option<u64>,
        now: u64,
    ) -> Result<(), String> {
        let Some((role, owner)) = self.env.read(|s| {
            s.frameworks
                .get(&fw)
                .map(|f| (f.role.clone(), f.owner.clone()))
        }) else {
            return Err(format!("framework {fw} is not known"));
        };
        let launches = operations.iter().any(|op| {
            matches!(
                op,
                OfferOperation::Launch(_) | OfferOperation::LaunchGroup(_)
            )
        });
        if launches
            && let Some(tenant) = wasmos_state::tenant_of(&owner)
            && let Err(e) = self.env.check_storage(tenant)
        {
            self.alloc.decline(fw, offers, Some(0), now);
            return Err(e);
        }
        // The attributes of the agent the offers are for (an accept spanning agents is refused
        // by the allocator below): a task's constraints hold whoever places it.
        let offered_agent = offers
            .first()
            .and_then(|o| self.alloc.offer(*o))
            .map(|o| o.agent.clone());
        let attributes = offered_agent
            .as_ref()
            .and_then(|a| {
                self.env
                    .read(|s| s.agents.get(a).map(|r| r.attributes.clone()))
            })
            .unwrap_or_default();
        // The job whose framework this is, if any: only a job's tasks have a slot, and it is
        // the job the framework runs, whatever the spec says (`wasmos:task/context` tells it).
        let job = self.env.read(|s| {
            s.jobs
                .values()
                .find(|j| j.framework == Some(fw))
                .map(|j| j.id)
        });
        let mut ops = Vec::new();
        let mut specs: BTreeMap<TaskId, TaskSpec> = BTreeMap::new();
        let mut ids = Vec::new();
        for op in operations {
            let (list, group) = match op {
                OfferOperation::Reserve(r) => {
                    ops.push(Operation::Reserve(r));
                    continue;
                }
                OfferOperation::Unreserve(r) => {
                    ops.push(Operation::Unreserve(r));
                    continue;
                }
                OfferOperation::Launch(list) => (list, false),
                OfferOperation::LaunchGroup(list) => (list, true),
            };
            let mut requests = Vec::new();
            for mut spec in list {
                // Only a task's own spawn makes a child.
                spec.lineage = None;
                spec.slot = job.and_then(|job| {
                    spec.slot.take().map(|s| wasmos_proto::JobSlot {
                        job: Some(job),
                        ..s
                    })
                });
                if let Err(e) = validate_spec(&spec).and_then(|()| self.env.seal(&mut spec)) {
                    self.alloc.decline(fw, offers, Some(0), now);
                    return Err(format!("task `{}`: {e}", spec.name));
                }
                if let Err(e) = self.env.read(|s| s.check_spec_ceilings(&spec, &role)) {
                    self.alloc.decline(fw, offers, Some(0), now);
                    return Err(format!("task `{}`: {e}", spec.name));
                }
                if let Some((k, v)) = unmet_constraint(&spec, &attributes) {
                    self.alloc.decline(fw, offers, Some(0), now);
                    let agent = offered_agent
                        .as_ref()
                        .map_or_else(|| "-".to_string(), ToString::to_string);
                    return Err(format!(
                        "task `{}` needs agent attribute {k}={v}, which agent {agent} does not have",
                        spec.name
                    ));
                }
                spec.role = Some(role.to_string());
                let id = self.env.new_task_id();
                requests.push(TaskRequest {
                    id,
                    resources: spec.resources.clone(),
                    qos: spec.qos,
                    priority: spec.priority,
                });
                ids.push(id);
                specs.insert(id, spec);
            }
            ops.push(if group {
                Operation::LaunchGroup(requests)
            } else {
                Operation::Launch(requests)
            });
        }
        let accepted = self
            .alloc
            .accept(fw, offers, &ops, refuse_ms, now)
            .map_err(|e| e.to_string())?;
        let reservations = accepted
            .reservations
            .iter()
            .map(|c| match c {
                ReservationChange::Reserved {
                    role, resources, ..
                } => ReservationOp::Reserve {
                    role: role.clone(),
                    resources: resources.clone(),
                },
                ReservationChange::Unreserved {
                    role, resources, ..
                } => ReservationOp::Unreserve {
                    role: role.clone(),
                    resources: resources.clone(),
                },
            })
            .collect();
        let tasks = accepted
            .launches
            .iter()
            .map(|l| {
                let spec = specs.remove(&l.task);
                let priority = spec.as_ref().map_or(0, |s| s.priority);
                (
                    LaunchTask {
                        id: l.task,
                        spec,
                        charge: l.charge.clone(),
                    },
                    priority,
                )
            })
            .collect();
        self.propose_launch(
            fw,
            accepted.agent,
            reservations,
            tasks,
            Some((request, ids)),
        );
        Ok(())
    }

    /// Proposes an accepted offer. When the launch is committed, the proposer sends its tasks
    /// to the agent at once (whether this cycle still runs or not); the cycle hears of the
    /// result as `Event::Launched`.
    fn propose_launch(
        &mut self,
        fw: FrameworkId,
        agent: AgentId,
        reservations: Vec<ReservationOp>,
        tasks: Vec<(LaunchTask, i32)>,
        reply: Option<(u64, Vec<TaskId>)>,
    ) {
        let launch = self.next_launch;
        self.next_launch += 1;
        let ids: Vec<TaskId> = tasks.iter().map(|(t, _)| t.id).collect();
        let held = tasks
            .iter()
            .map(|(t, priority)| (t.id, t.charge.clone(), *priority))
            .collect();
        let reservations_empty = reservations.is_empty();
        let command = Command::Launch {
            framework: fw,
            agent: agent.clone(),
            reservations,
            tasks: tasks.into_iter().map(|(t, _)| t).collect(),
            now_ms: self.now,
        };
        for id in &ids {
            self.flying.insert(*id, launch);
        }
        self.launching.insert(
            launch,
            Launching {
                framework: fw,
                agent: agent.clone(),
                tasks: held,
                reply,
                changes_reservations: !reservations_empty,
                rebuilt: false,
                kills: Vec::new(),
            },
        );
        self.env.propose(
            command,
            Proposal::Launch {
                cycle: self.id,
                launch,
                agent,
                tasks: ids,
            },
        );
    }

    /// A launch this cycle proposed was decided. If it was not committed, the allocator gives
    /// back what it held for it (the agent is rebuilt from the recorded state), a framework
    /// hears why, and the built-in frameworks' tasks that still wait go back to the queue.
    fn launched(&mut self, launch: u64, result: Result<CommandResult, wasmos_raft::RaftError>) {
        let Some(l) = self.launching.remove(&launch) else {
            return;
        };
        let timed_out = matches!(result, Err(wasmos_raft::RaftError::NoQuorum(_)));
        // A framework's tasks whose launch timed out stay held back from updates and
        // reconciliation until the watch answers the accept.
        if !(timed_out && l.reply.is_some()) {
            for (id, _, _) in &l.tasks {
                self.flying.remove(id);
            }
        }
        // Updates held back while it was in flight go out with the next cycle.
        if l.reply.is_some() {
            self.next_resend_scan_ms = 0;
        }
        let why = match result {
            Ok(CommandResult::Ok) => {
                for (task, reason) in l.kills {
                    self.env.send_to_agent(
                        &l.agent,
                        MasterToAgent::Kill {
                            task,
                            reason: Some(reason),
                        },
                    );
                }
                if l.changes_reservations && l.rebuilt {
                    self.refresh_agent(&l.agent);
                }
                if let Some((request, tasks)) = l.reply {
                    self.send(l.framework, FrameworkEvent::Accepted { request, tasks });
                }
                return;
            }
            Ok(CommandResult::Rejected(why)) => why.to_string(),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("the launch could not be recorded: {e}"),
        };
        tracing::warn!(agent = %l.agent, framework = %l.framework, "launch not made: {why}");
        for (task, _, _) in &l.tasks {
            self.alloc.release(*task);
        }
        // Its tasks may be placed by another launch meanwhile (one that timed out and
        // committed, or an earlier term's): those agents are rebuilt too, so the release
        // above does not drop what they hold.
        let elsewhere: BTreeSet<AgentId> = self.env.read(|s| {
            l.tasks
                .iter()
                .filter_map(|(id, _, _)| s.tasks.get(id)?.agent.clone())
                .filter(|a| *a != l.agent)
                .collect()
        });
        self.refresh_agent(&l.agent);
        for agent in elsewhere {
            self.refresh_agent(&agent);
        }
        if timed_out {
            self.doubtful.push(Doubtful {
                agent: l.agent.clone(),
                tasks: l.tasks.iter().map(|(id, _, _)| *id).collect(),
                builtin: l.reply.is_none(),
                reply: l.reply.as_ref().map(|(request, _)| (l.framework, *request)),
                until_ms: self.now + LATE_COMMIT_WATCH_MS,
            });
        }
        match l.reply {
            // Answered when the watch knows whether it committed.
            Some(_) if timed_out => {}
            Some((request, _)) => self.send(
                l.framework,
                FrameworkEvent::Error {
                    request: Some(request),
                    message: why,
                },
            ),
            None if timed_out => {}
            None => {
                let ids: Vec<TaskId> = l.tasks.iter().map(|(id, _, _)| *id).collect();
                self.requeue(&ids);
            }
        }
    }

    /// Queues again the built-in tasks among `ids` that still wait; those found placed and
    /// not started (by a launch that committed after it was given up on) are sent to their
    /// agent instead, which ignores a launch it already has.
    fn requeue(&mut self, ids: &[TaskId]) {
        let (waiting, placed) = self.env.read(|s| {
            let mut waiting = Vec::new();
            let mut placed: BTreeMap<AgentId, Vec<TaskId>> = BTreeMap::new();
            for t in ids.iter().filter_map(|id| s.tasks.get(id)) {
                if t.status.state != TaskState::Staging {
                    continue;
                }
                match &t.agent {
                    None => waiting.push(t.clone()),
                    Some(a) => placed.entry(a.clone()).or_default().push(t.id),
                }
            }
            (waiting, placed)
        });
        for t in waiting {
            self.enqueue(&t);
        }
        for (agent, tasks) in placed {
            launch_placed(&self.env, &agent, &tasks);
        }
    }

    /// Looks whether launches whose write timed out have committed after all: if so, their
    /// tasks are sent and the agent is rebuilt from the recorded state (which now holds them);
    /// once the watch ends, the built-in tasks that still wait are queued again.
    fn settle_doubts(&mut self, now: u64) {
        if self.doubtful.is_empty() {
            return;
        }
        for d in std::mem::take(&mut self.doubtful) {
            // A launch is all or nothing: it committed if every task of it is placed there
            // (some may be placed by another launch, after it was given up on).
            let committed = self.env.read(|s| {
                d.tasks.iter().all(|id| {
                    s.tasks
                        .get(id)
                        .is_some_and(|t| t.agent.as_ref() == Some(&d.agent))
                })
            });
            if !committed && now < d.until_ms {
                self.doubtful.push(d);
                continue;
            }
            // A framework's tasks were held back from updates until now (a built-in one's,
            // or an earlier term's, are not in `flying`).
            if d.reply.is_some() {
                for id in &d.tasks {
                    self.flying.remove(id);
                }
            }
            if committed {
                tracing::info!(agent = %d.agent, "a launch committed late; sending it");
                launch_placed(&self.env, &d.agent, &d.tasks);
                self.refresh_agent(&d.agent);
                if let Some((fw, request)) = d.reply {
                    self.send(
                        fw,
                        FrameworkEvent::Accepted {
                            request,
                            tasks: d.tasks,
                        },
                    );
                    // Its updates held back meanwhile go out now.
                    self.next_resend_scan_ms = 0;
                }
            } else {
                if d.builtin {
                    self.requeue(&d.tasks);
                }
                if let Some((fw, request)) = d.reply {
                    self.send(
                        fw,
                        FrameworkEvent::Error {
                            request: Some(request),
                            message: format!(
                                "the launch could not be recorded within {} s; nothing was launched",
                                LATE_COMMIT_WATCH_MS / 1000
                            ),
                        },
                    );
                }
            }
        }
    }

    /// Adds a connected agent with its reservations and the tasks it holds.
    fn agent_up(&mut self, agent: AgentId) {
        let (rescinds, _) = self.alloc.remove_agent(&agent);
        self.rescinded(rescinds);

        let launching = &self.launching;
        let snapshot = self.env.read(|s| {
            let record = s.agents.get(&agent).cloned()?;
            let dynamic = s.reservations.get(&agent).cloned().unwrap_or_default();
            // Tasks of launches in flight still hold their resources: those not recorded yet
            // (a framework's) or recorded waiting (a built-in one's). Once committed they are
            // among the live tasks below; once ended they hold nothing.
            let flying: BTreeSet<TaskId> = launching
                .values()
                .filter(|l| l.agent == agent)
                .flat_map(|l| l.tasks.iter().map(|(id, _, _)| *id))
                .filter(|id| {
                    s.tasks
                        .get(id)
                        .is_none_or(|t| t.agent.is_none() && t.status.state == TaskState::Staging)
                })
                .collect();
            let tasks: Vec<(TaskInfo, Pools)> = s
                .live_tasks_on(&agent)
                .filter_map(|id| s.tasks.get(&id))
                .map(|t| {
                    let charge = s.charges.get(&t.id).cloned().unwrap_or_else(|| Pools {
                        unreserved: t.spec.resources.clone(),
                        ..Pools::default()
                    });
                    (t.clone(), charge)
                })
                .collect();
            Some((record, dynamic, tasks, flying))
        });
        let Some((record, dynamic, tasks, flying)) = snapshot else {
            return;
        };
        if let Err(e) = self
            .alloc
            .add_agent(agent.clone(), record.total.clone(), record.reserved)
        {
            tracing::error!(%agent, "agent not offered: {e}");
            return;
        }
        if record.draining {
            self.alloc.set_draining(&agent, true);
        }
        // Tasks placed before an operator shrank it may hold more than it has now.
        if record.resized
            && let Err(e) = self.alloc.resize_agent(&agent, record.total.clone())
        {
            tracing::error!(%agent, "cannot resize the agent: {e}");
        }
        for (role, r) in dynamic {
            if let Err(e) = self.alloc.restore_reservation(&agent, role, r) {
                tracing::error!(%agent, "cannot restore a reservation: {e}");
            }
        }
        for (t, charge) in tasks {
            let fw = match t.framework {
                Some(fw) => fw,
                // Placed before offers existed: count it against its role's built-in framework.
                None => match self.builtin_for(&t) {
                    Some(b) => b,
                    None => continue,
                },
            };
            if let Err(e) = self
                .alloc
                .restore_task(t.id, &agent, fw, charge, t.spec.priority)
            {
                tracing::error!(task = %t.id, "cannot restore task: {e}");
            }
        }
        for l in self.launching.values_mut().filter(|l| l.agent == agent) {
            l.rebuilt = true;
            for (id, charge, priority) in &l.tasks {
                if !flying.contains(id) {
                    continue;
                }
                if let Err(e) =
                    self.alloc
                        .restore_task(*id, &agent, l.framework, charge.clone(), *priority)
                {
                    tracing::error!(task = %id, "cannot restore a task being launched: {e}");
                }
            }
        }
        // What it advertises, not an operator's smaller total: a task too large for that is
        // still one the agent can run once the operator gives its resources back.
        self.agent_totals.insert(agent, record.advertised);
        self.recheck_all = true;
    }

    /// Rebuilds an agent in the allocator from the recorded state (if it is connected).
    fn refresh_agent(&mut self, agent: &AgentId) {
        if self.agent_totals.contains_key(agent) {
            self.agent_up(agent.clone());
        } else {
            let (rescinds, _) = self.alloc.remove_agent(agent);
            self.rescinded(rescinds);
        }
    }

    fn task_changed(&mut self, task: TaskId) {
        let info = self.env.read(|s| s.tasks.get(&task).cloned());
        // An event reads the task's latest status, which a later change may already have
        // replaced (its own event follows): an update already sent under the same number is
        // left to the resend timer.
        // Held back while its launch is in flight: the answer to the accept comes first, and
        // the update follows with the next resend scan.
        if let Some(t) = &info
            && let Some(fw) = t.framework
            && self.external.contains_key(&fw)
            && !self.flying.contains_key(&task)
            && self
                .resend
                .get(&(fw, task))
                .is_none_or(|r| r.update < t.status_seq)
        {
            self.send(
                fw,
                FrameworkEvent::Update {
                    task,
                    status: t.status.clone(),
                    update: t.status_seq,
                },
            );
            self.resend.insert(
                (fw, task),
                Resend {
                    update: t.status_seq,
                    due_ms: self.now + RESEND_FIRST_MS,
                    delay_ms: RESEND_FIRST_MS,
                },
            );
        }
        match info {
            Some(t) if !t.status.state.is_terminal() => {}
            _ => {
                self.alloc.release(task);
                self.dequeue(task, info.as_ref());
                // What it held is free again: a built-in framework with tasks waiting, which
                // declined while nothing fit, hears of it now, not after its decline's
                // timeout (a queue longer than the cluster would otherwise drain in steps of
                // that timeout).
                for b in self.builtin.values_mut() {
                    if !b.queue.is_empty() && b.id != FrameworkId(0) {
                        self.alloc.revive(b.id);
                        b.suppressed = false;
                    }
                }
            }
        }
    }

    /// Releases whatever the allocator holds for tasks that have ended, and drops queued tasks
    /// that no longer wait.
    fn reconcile(&mut self) {
        // Tasks being launched are not in the recorded state yet (a framework's) or not placed
        // yet (a built-in one's): they stay held until their launch is decided.
        let held: Vec<TaskId> = self
            .alloc
            .task_ids()
            .filter(|id| !self.flying.contains_key(id))
            .collect();
        let queued: Vec<TaskId> = self
            .builtin
            .values()
            .flat_map(|b| b.queue.values().map(|r| r.id))
            .collect();
        let (ended, placed) = self.env.read(|s| {
            let live = |id: &TaskId| {
                s.tasks
                    .get(id)
                    .is_some_and(|t| !t.status.state.is_terminal())
            };
            let ended: Vec<TaskId> = held.iter().copied().filter(|t| !live(t)).collect();
            let placed: Vec<TaskInfo> = queued
                .iter()
                .filter(|id| {
                    s.tasks
                        .get(id)
                        .is_none_or(|t| t.agent.is_some() || t.status.state.is_terminal())
                })
                .filter_map(|id| s.tasks.get(id).cloned())
                .collect();
            (ended, placed)
        });
        for t in ended {
            self.alloc.release(t);
        }
        for t in placed {
            self.dequeue(t.id, Some(&t));
        }
    }

    /// The built-in framework of a task's role, if one is registered (`register_builtins` does
    /// that for roles with waiting tasks).
    fn builtin_for(&self, t: &TaskInfo) -> Option<FrameworkId> {
        let role = task_role(t)?;
        self.builtin
            .get(&role)
            .map(|b| b.id)
            .filter(|id| *id != FrameworkId(0))
    }

    fn enqueue(&mut self, t: &TaskInfo) {
        if t.agent.is_some() || t.status.state != TaskState::Staging {
            return;
        }
        let Some(role) = task_role(t) else {
            tracing::error!(task = %t.id, "task has no valid role; it cannot be offered");
            return;
        };
        let b = self.builtin.entry(role.clone()).or_insert_with(|| Builtin {
            // Registered in `run_once` before it is offered anything.
            id: FrameworkId(0),
            role,
            queue: BTreeMap::new(),
            suppressed: true,
        });
        let req = request(t);
        self.unchecked.insert(t.id, (b.role.clone(), req.clone()));
        b.queue.insert((Reverse(t.spec.priority), t.id), req);
        if b.id != FrameworkId(0) {
            // New work: forget declines, so the task is not kept waiting for their timeout.
            self.alloc.revive(b.id);
            b.suppressed = false;
        }
    }

    fn dequeue(&mut self, task: TaskId, info: Option<&TaskInfo>) {
        let Some(t) = info else { return };
        let Some(role) = task_role(t) else { return };
        if let Some(b) = self.builtin.get_mut(&role) {
            b.queue.remove(&(Reverse(t.spec.priority), task));
        }
        self.unchecked.remove(&task);
    }

    fn rescinded(&mut self, rescinds: Vec<Rescind>) {
        for r in rescinds {
            tracing::debug!(offer = %r.offer, framework = %r.framework, "offer rescinded: {:?}", r.reason);
            self.send(r.framework, FrameworkEvent::Rescind { offer: r.offer });
        }
    }

    fn run_once(&mut self, now: u64) {
        self.settle_doubts(now);
        self.register_builtins(now);
        self.expire_frameworks(now);
        self.resend_updates(now);
        let expired = self.alloc.expire(now);
        self.rescinded(expired);
        self.check_unschedulable();
        for b in self.builtin.values_mut() {
            if b.queue.is_empty() && !b.suppressed && b.id != FrameworkId(0) {
                self.alloc.suppress(b.id);
                b.suppressed = true;
            }
        }
        let offers = self.alloc.allocate(now);
        let mut outgoing: BTreeMap<FrameworkId, Vec<OfferInfo>> = BTreeMap::new();
        for offer in offers {
            if self.builtin_ids.contains_key(&offer.framework) {
                self.builtin_accept(offer, now);
            } else if self.external.contains_key(&offer.framework) {
                outgoing
                    .entry(offer.framework)
                    .or_default()
                    .push(offer_info(&offer));
            } else {
                // Its framework has just gone: give the resources back at once.
                self.alloc
                    .decline(offer.framework, &[offer.id], Some(0), now);
            }
        }
        if !outgoing.is_empty() {
            self.env.read(|s| {
                for infos in outgoing.values_mut() {
                    for info in infos.iter_mut() {
                        if let Some(a) = s.agents.get(&info.agent) {
                            info.attributes = a.attributes.clone();
                        }
                    }
                }
            });
            for (fw, infos) in outgoing {
                self.send(fw, FrameworkEvent::Offers(infos));
            }
        }
        for p in self.alloc.preemptions() {
            tracing::info!(task = %p.task, agent = %p.agent, "preempting a best-effort task");
            self.preempt(&p);
        }
        let wants = self.starved(now);
        if !wants.is_empty() {
            let preempted = self.alloc.guarantee_preemptions(&wants);
            if !preempted.is_empty() {
                // One round per grace for what frameworks say they wait for: if the room is
                // not used (taken by another, or not what the framework will launch on), it
                // is not made again at once.
                let grace = self.grace_ms();
                for (_, since) in self.waiting.values_mut() {
                    if now.saturating_sub(*since) >= grace {
                        *since = now;
                    }
                }
            }
            for p in preempted {
                tracing::info!(task = %p.task, agent = %p.agent, "preempting a task for a role below its guarantee");
                self.preempt(&p);
            }
        }
    }

    fn preempt(&mut self, p: &wasmos_alloc::Preemption) {
        if let Some(l) = self
            .flying
            .get(&p.task)
            .and_then(|launch| self.launching.get_mut(launch))
        {
            l.kills.push((p.task, Reason::Preempted));
            return;
        }
        self.env.send_to_agent(
            &p.agent,
            MasterToAgent::Kill {
                task: p.task,
                reason: Some(Reason::Preempted),
            },
        );
    }

    /// How long a want waits before guarantee preemption serves it.
    fn grace_ms(&self) -> u64 {
        self.env.preemption_grace_ms()
    }

    /// What guarantee preemption may make room for, one want per role: its first
    /// non-best-effort `wasmos run` task if that has waited past the preemption grace, else
    /// the longest-standing of what its connected frameworks say they wait for past the grace
    /// (and that some connected agent could hold at all).
    fn starved(&self, now: u64) -> Vec<(Role, Resources)> {
        let grace = self.grace_ms();
        let mut by_role: BTreeMap<Role, (u64, Resources)> = BTreeMap::new();
        self.env.read(|s| {
            for (fw, (r, since)) in &self.waiting {
                if now.saturating_sub(*since) < grace || !self.external.contains_key(fw) {
                    continue;
                }
                let Some(f) = s.live_framework(*fw).ok() else {
                    continue;
                };
                if !self.agent_totals.values().any(|total| r.fits_in(total)) {
                    continue;
                }
                if by_role.get(&f.role).is_none_or(|(older, _)| since < older) {
                    by_role.insert(f.role.clone(), (*since, r.clone()));
                }
            }
        });
        // A role's first waiting task that any agent could take: one with constraints may wait
        // for an agent that has no room or does not exist, and room made elsewhere by
        // preempting other roles' tasks would not help it (the job framework leaves its
        // constrained groups out the same way).
        let builtin = &self.builtin;
        self.env.read(|s| {
            for b in builtin.values() {
                let head = b
                    .queue
                    .iter()
                    .filter(|(_, r)| r.qos != Qos::BestEffort)
                    .take(MAX_MISSES_PER_OFFER)
                    .find_map(|((_, id), r)| {
                        let t = s.tasks.get(id)?;
                        t.spec.constraints.is_empty().then_some((t, r))
                    });
                if let Some((t, r)) = head
                    && now.saturating_sub(t.submitted_ms) >= grace
                {
                    by_role.insert(b.role.clone(), (t.submitted_ms, r.resources.clone()));
                }
            }
        });
        by_role
            .into_iter()
            .map(|(role, (_, r))| (role, r))
            .collect()
    }

    /// Proposes the built-in framework of every role that has waiting tasks but none yet (and
    /// none proposed).
    fn register_builtins(&mut self, now: u64) {
        // Registrations that timed out have committed by now if ever.
        let watched: Vec<Role> = self
            .registering
            .iter()
            .filter(|(_, until)| **until != u64::MAX && now >= **until)
            .map(|(role, _)| role.clone())
            .collect();
        for role in watched {
            self.registering.remove(&role);
            self.retire_surplus_builtins(&role);
        }
        // And once a minute, a surplus left because it still had tasks.
        if now >= self.next_surplus_check_ms {
            self.next_surplus_check_ms = now + LATE_COMMIT_WATCH_MS;
            let doubled: Vec<Role> = self.env.read(|s| {
                let mut seen: BTreeMap<&Role, usize> = BTreeMap::new();
                for f in s.frameworks.values() {
                    if live_builtin(f) {
                        *seen.entry(&f.role).or_default() += 1;
                    }
                }
                seen.into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(r, _)| r.clone())
                    .collect()
            });
            for role in doubled {
                self.retire_surplus_builtins(&role);
            }
        }
        let missing: Vec<Role> = self
            .builtin
            .values()
            .filter(|b| b.id == FrameworkId(0))
            .map(|b| b.role.clone())
            .collect();
        for role in missing {
            // Recorded already (a registration that timed out and committed all the same, or
            // one of an earlier term's cycle): taken, not registered twice.
            let recorded = self.env.read(|s| {
                s.frameworks
                    .values()
                    .find(|f| live_builtin(f) && f.role == role)
                    .map(|f| f.id)
            });
            if let Some(id) = recorded {
                self.registering.remove(&role);
                self.registered(role, Ok(CommandResult::Framework(id)));
                continue;
            }
            if self
                .registering
                .get(&role)
                .is_some_and(|until| now < *until)
            {
                continue;
            }
            self.registering.insert(role.clone(), u64::MAX);
            self.env.propose(
                Command::RegisterFramework {
                    name: BUILTIN_NAME.into(),
                    role: role.clone(),
                    owner: BUILTIN_OWNER.into(),
                    revocable: true,
                    // Never away: the master runs it.
                    failover_timeout_ms: u64::MAX,
                    acknowledges: false,
                    now_ms: now,
                },
                Proposal::Register {
                    cycle: self.id,
                    role,
                },
            );
        }
    }

    /// A built-in framework's registration was decided: once it is recorded, its role's
    /// waiting tasks are offered (unless the role has its built-in framework already).
    fn registered(&mut self, role: Role, result: Result<CommandResult, wasmos_raft::RaftError>) {
        let has_one = self
            .builtin
            .get(&role)
            .is_some_and(|b| b.id != FrameworkId(0));
        if !has_one {
            let id = match result {
                Ok(CommandResult::Framework(id)) => id,
                // Proposed again by a later cycle.
                other => {
                    tracing::error!(%role, "cannot register the built-in framework: {other:?}");
                    return;
                }
            };
            if self.alloc.framework_dominant_share(id).is_none()
                && let Err(e) = self.alloc.add_framework(id, role.clone(), true)
            {
                tracing::error!(%role, "cannot add the built-in framework: {e}");
                return;
            }
            self.builtin_ids.insert(id, role.clone());
            let b = self.builtin.entry(role.clone()).or_insert_with(|| Builtin {
                id,
                role: role.clone(),
                queue: BTreeMap::new(),
                suppressed: false,
            });
            b.id = id;
            b.suppressed = false;
        }
        self.retire_surplus_builtins(&role);
    }

    /// Retires the role's other built-in frameworks recorded without live tasks (two terms'
    /// cycles, or a registration that timed out and committed after another, each recorded
    /// one), so the role keeps one. One an earlier term's cycle launched with is left until
    /// a later registration finds it idle.
    fn retire_surplus_builtins(&mut self, role: &Role) {
        let Some(keep) = self
            .builtin
            .get(role)
            .map(|b| b.id)
            .filter(|id| *id != FrameworkId(0))
        else {
            return;
        };
        let surplus: Vec<FrameworkId> = self.env.read(|s| {
            s.frameworks
                .values()
                .filter(|f| live_builtin(f) && f.role == *role && f.id != keep)
                .filter(|f| {
                    !s.tasks
                        .values()
                        .any(|t| t.framework == Some(f.id) && !t.status.state.is_terminal())
                })
                .map(|f| f.id)
                .collect()
        });
        for fw in surplus {
            tracing::info!(framework = %fw, %role, "retiring a second built-in framework");
            self.remove_framework(fw);
        }
    }

    /// Ends the waiting tasks that no connected agent could hold even when empty (with no
    /// agent connected, they wait).
    fn check_unschedulable(&mut self) {
        if self.agent_totals.is_empty() {
            return;
        }
        let all = std::mem::take(&mut self.recheck_all);
        let unchecked = std::mem::take(&mut self.unchecked);
        // Only the tasks queued since the last cycle, unless something (a role's limit)
        // changed for all: going through the whole queue every cycle made each cycle cost as
        // much as the backlog.
        let candidates: Vec<(Role, TaskRequest)> = if all {
            self.builtin
                .values()
                .flat_map(|b| b.queue.values().map(|r| (b.role.clone(), r.clone())))
                .collect()
        } else {
            unchecked.into_values().collect()
        };
        if candidates.is_empty() {
            return;
        }
        let roles = self.env.read(|s| s.roles.clone());
        // Demands repeat (a job's tasks are alike): decide each distinct one once.
        let mut verdicts: Vec<(Resources, bool)> = Vec::new();
        for (role, r) in candidates {
            // A role limit smaller than the task (in a kind it names) never lets it run.
            let over_limit = role.self_and_ancestors().find_map(|name| {
                let limit = roles.get(name)?.limit.clone()?;
                let within = Quota {
                    guarantee: r.resources.clone(),
                    limit: Some(limit.clone()),
                }
                .guarantee_within_limit();
                (!within).then(|| {
                    format!(
                        "needs {}, more than role {name}'s limit of {limit}",
                        r.resources
                    )
                })
            });
            if let Some(why) = over_limit {
                self.unschedulable(&role, &r, why);
                continue;
            }
            let fits = match verdicts.iter().find(|(d, _)| d == &r.resources) {
                Some((_, v)) => *v,
                None => {
                    let v = self.agent_totals.values().any(|t| r.resources.fits_in(t));
                    verdicts.push((r.resources.clone(), v));
                    v
                }
            };
            if fits {
                continue;
            }
            let largest = self
                .agent_totals
                .values()
                .max_by_key(|t| (t.cpu_millis, t.mem_bytes, t.disk_bytes))
                .cloned()
                .unwrap_or_default();
            let why = format!("needs {}, but the largest agent has {largest}", r.resources);
            self.unschedulable(&role, &r, why);
        }
    }

    /// Takes a task that can never run out of the queue and proposes its end; it is back in
    /// the queue if that is not recorded.
    fn unschedulable(&mut self, role: &Role, r: &TaskRequest, why: String) {
        if let Some(b) = self.builtin.get_mut(role) {
            b.queue.remove(&(Reverse(r.priority), r.id));
        }
        let task = r.id;
        let status = TaskStatus::with_reason(TaskState::Error, Some(Reason::Unschedulable), why);
        self.env.propose(
            Command::SetStatus {
                task,
                status,
                now_ms: self.now,
            },
            Proposal::Unschedulable(task),
        );
    }

    /// The built-in framework takes waiting tasks of its role from an offer, in queue order,
    /// and proposes their launch; they leave the queue until it is decided.
    fn builtin_accept(&mut self, offer: Offer, now: u64) {
        let Some(role) = self.builtin_ids.get(&offer.framework).cloned() else {
            return;
        };
        let mut pools = offer.resources.clone();
        let mut chosen = Vec::new();
        if let Some(b) = self.builtin.get(&role) {
            let (mut misses, mut passed) = (0, 0);
            // One look at the state for the whole pass: the agent's attributes, and each
            // visited task's constraints.
            self.env.read(|s| {
                let attrs = s.agents.get(&offer.agent).map(|a| &a.attributes);
                let none = BTreeMap::new();
                let attrs = attrs.unwrap_or(&none);
                let meets = |id: &TaskId| {
                    s.tasks
                        .get(id)
                        .is_none_or(|t| unmet_constraint(&t.spec, attrs).is_none())
                };
                for req in b.queue.values() {
                    if req.qos == Qos::BestEffort && pools.revocable.is_empty() {
                        continue;
                    }
                    // Passed over, not missed: a task this agent cannot take says nothing
                    // about whether later ones fit; bounded all the same.
                    if !meets(&req.id) {
                        passed += 1;
                        if passed >= MAX_PASSED_PER_OFFER {
                            break;
                        }
                        continue;
                    }
                    match pools.take(&role, &req.resources, req.qos) {
                        Ok(_) => chosen.push(req.clone()),
                        Err(_) => {
                            misses += 1;
                            if misses >= MAX_MISSES_PER_OFFER {
                                break;
                            }
                        }
                    }
                }
            });
        }
        if chosen.is_empty() {
            self.alloc.decline(offer.framework, &[offer.id], None, now);
            return;
        }
        let priorities: BTreeMap<TaskId, i32> = chosen.iter().map(|r| (r.id, r.priority)).collect();
        let accepted = match self.alloc.accept(
            offer.framework,
            &[offer.id],
            &[Operation::Launch(chosen)],
            None,
            now,
        ) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(offer = %offer.id, "built-in framework's accept refused: {e}");
                return;
            }
        };
        if let Some(b) = self.builtin.get_mut(&role) {
            for (id, priority) in &priorities {
                b.queue.remove(&(Reverse(*priority), *id));
            }
        }
        let tasks: Vec<(LaunchTask, i32)> = accepted
            .launches
            .iter()
            .map(|l| {
                self.unchecked.remove(&l.task);
                let priority = priorities.get(&l.task).copied().unwrap_or_default();
                (
                    LaunchTask {
                        id: l.task,
                        spec: None,
                        charge: l.charge.clone(),
                    },
                    priority,
                )
            })
            .collect();
        self.propose_launch(offer.framework, accepted.agent, Vec::new(), tasks, None);
    }
}

/// Sends the tasks of a committed launch that are placed on `agent` and still staging there
/// (nothing has started them) to it. If the agent is gone by now, its re-registration (or the
/// grace period) declares them lost.
pub(crate) fn launch_placed<E: Env>(env: &E, agent: &AgentId, tasks: &[TaskId]) -> usize {
    let placed: Vec<(TaskId, TaskSpec, bool)> = env.read(|s| {
        tasks
            .iter()
            .filter_map(|id| s.tasks.get(id))
            .filter(|t| t.agent.as_ref() == Some(agent))
            .filter(|t| t.status.state == TaskState::Staging)
            .map(|t| {
                let removed = s.framework_removed(t);
                (t.id, t.spec.clone(), removed)
            })
            .collect()
    });
    let count = placed.len();
    for (task, spec, removed) in placed {
        tracing::info!(%task, %agent, "launching");
        env.launch(agent, task, spec);
        // Its framework was removed meanwhile. The removal's kill may have gone out before
        // this launch (and an agent ignores a kill for a task it does not know): killed
        // again after it, on the same channel, so the task ends and frees its place.
        if removed {
            env.send_to_agent(
                agent,
                MasterToAgent::Kill {
                    task,
                    reason: Some(Reason::FrameworkRemoved),
                },
            );
        }
    }
    count
}
