//! Simulation of the whole control plane, seed by seed: masters that are real raft nodes
//! ([`RaftNode`], its write batcher included, over redb files on tmpfs) joined by the
//! in-memory network of `wasmos_raft::sim_net`, each running the pure offer [`Cycle`] while it
//! leads, started and stopped as `leadership.rs` does; simulated agents that register with the
//! leader, run what they are sent, report statuses until they are recorded, and follow a new
//! leader; a framework on the scheduler API that accepts offers, acknowledges updates, kills
//! tasks and subscribes to each new leader; clients that submit with resubmission keys and
//! retry until they are answered.
//! Faults: masters crash and restart from their files or are cut off, messages between them
//! are delayed, reordered and lost, agents disconnect, crash, and are declared lost. On one
//! thread in tokio's paused time.
//!
//! Checked throughout: no task is sent to an agent before its placement there is committed,
//! no task runs on two agents or again after it ended, no agent runs more than it has. After
//! the faults stop: every acknowledged submission is on every master and has ended, each
//! resubmission key made one task, and every master holds the same state.
//!
//! Faults and workloads follow from the seed; openraft draws its election timeouts from a
//! generator of its own, so a replayed seed repeats the faults but not every interleaving.
//! `cargo test` runs [`DEFAULT_SEEDS`] seeds; `WASMOS_GROUP_SIM_SEEDS=N` runs more and
//! `WASMOS_GROUP_SIM_SEED=N` replays one. A failing seed prints what it did last.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wasmos_alloc::Role;
use wasmos_proto::{
    AgentId, BundleHash, FrameworkCall, FrameworkEvent, FrameworkId, MasterToAgent, OfferOperation,
    Resources, StatusUpdate, TaskId, TaskSpec, TaskState, TaskStatus,
};
use wasmos_raft::sim_net::{Rng, Router, SimNetwork, run_paused};
use wasmos_raft::{NodeId, RaftNode, RaftOptions};
use wasmos_state::{ClusterState, Command, CommandResult};

use super::{Cycle, Env, Event, Proposal, settle};

/// Seeds `cargo test` runs.
const DEFAULT_SEEDS: u64 = 1_000;
/// Virtual time of faults and submissions per seed.
const CHAOS: Duration = Duration::from_secs(5);
/// Virtual time the cluster has, once healed, to end every task and agree.
const SETTLE: Duration = Duration::from_secs(120);
/// How long an agent is away before the leader declares it lost.
const REAP_AFTER_MS: u64 = 2_000;
/// Owner of the clients' submissions.
const OWNER: &str = "wasmos://operator/sim";

thread_local! {
    /// What the seed being run did lately, printed if it fails.
    static NOTES: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
}

/// How many of the latest notes a failure prints.
const NOTES_KEPT: usize = 400;

/// Notes what happens (the last [`NOTES_KEPT`] lines are printed when a seed fails).
macro_rules! note {
    ($($arg:tt)*) => {
        NOTES.with(|n| {
            let mut n = n.borrow_mut();
            if n.len() == NOTES_KEPT {
                n.pop_front();
            }
            n.push_back(format!($($arg)*));
        })
    };
}

type Events = Rc<RefCell<Vec<Event>>>;

struct SimAgent {
    total: Resources,
    /// The master it is connected to (an index of `Sim::masters`).
    master: Option<usize>,
    /// Since when it has been connected to no master.
    away_since: Option<u64>,
    registering: bool,
    reporting: bool,
    /// What it runs: when each task ends, and what it takes.
    running: BTreeMap<TaskId, (u64, Resources)>,
    /// Tasks that ran here and were not cut short by a crash of the agent.
    received: BTreeSet<TaskId>,
    next_seq: u64,
    /// Its process: a crash starts a new one, and what the old one had on its way to a
    /// master is no longer its business.
    incarnation: u64,
    /// Status updates not yet recorded, in order.
    unacked: VecDeque<StatusUpdate>,
}

/// The write of `updates` of `agent`, as `record_batch` makes it (always a batch).
fn status_batch(agent: &AgentId, updates: &[StatusUpdate], now: u64) -> Command {
    Command::Batch(
        updates
            .iter()
            .map(|u| Command::AgentStatus {
                agent: agent.clone(),
                update: u.clone(),
                now_ms: now,
            })
            .collect(),
    )
}

impl SimAgent {
    /// `updates` were recorded: they are forgotten; returns the tasks they were about.
    fn recorded(&mut self, updates: &[StatusUpdate]) -> BTreeSet<TaskId> {
        let last = updates.last().map_or(0, |u| u.seq);
        while self.unacked.front().is_some_and(|u| u.seq <= last) {
            self.unacked.pop_front();
        }
        updates.iter().map(|u| u.task).collect()
    }

    fn report(&mut self, task: TaskId, status: TaskStatus) {
        self.next_seq += 1;
        self.unacked.push_back(StatusUpdate {
            seq: self.next_seq,
            task,
            status,
        });
    }
}

/// What masters, agents and clients share.
struct World {
    rng: Rng,
    start: tokio::time::Instant,
    agents: BTreeMap<AgentId, SimAgent>,
    /// The agent each task was first launched on.
    ran_on: BTreeMap<TaskId, AgentId>,
    violations: Vec<String>,
}

impl World {
    /// `agent`, if it is still the process `incarnation` (a write's answer to an earlier one
    /// is no business of the agent that restarted since).
    fn process(&mut self, agent: &AgentId, incarnation: u64) -> Option<&mut SimAgent> {
        self.agents
            .get_mut(agent)
            .filter(|a| a.incarnation == incarnation)
    }

    fn now(&self) -> u64 {
        1_000_000 + self.start.elapsed().as_millis() as u64
    }

    /// Master `master` (whose applied state `node` holds) sends `task` to `agent`.
    fn deliver(
        &mut self,
        master: usize,
        node: &RaftNode,
        agent: &AgentId,
        task: TaskId,
        resources: Resources,
    ) -> bool {
        let placed = node.read(|s| {
            s.tasks
                .get(&task)
                .is_some_and(|t| t.agent.as_ref() == Some(agent) && !t.status.state.is_terminal())
        });
        let now = self.now();
        let end = now + 1 + self.rng.below(400);
        let running_now = self.rng.chance(60);
        let Some(a) = self.agents.get_mut(agent) else {
            return false;
        };
        if a.master != Some(master) {
            return false;
        }
        if !placed {
            self.violations.push(format!(
                "master {master} sent task {task} to {agent} without a committed placement there"
            ));
        }
        note!("{now} master {master} launches {task} on {agent}");
        // As a real agent (`launch` in wasmos-agent), it ignores a second launch of a task it
        // runs, or that ended with its end not yet recorded.
        let ended_unacked = a
            .unacked
            .iter()
            .any(|u| u.task == task && u.status.state.is_terminal());
        if a.running.contains_key(&task) || ended_unacked {
            return true;
        }
        if !a.received.insert(task) {
            self.violations.push(format!(
                "task {task} sent to {agent} again after it ended there"
            ));
        }
        let first = self.ran_on.entry(task).or_insert_with(|| agent.clone());
        if first != agent {
            self.violations.push(format!(
                "task {task} runs on {agent} after running on {first}"
            ));
        }
        let used = a
            .running
            .values()
            .fold(resources.clone(), |u, (_, r)| u.saturating_add(r));
        if !used.fits_in(&a.total) {
            self.violations.push(format!(
                "agent {agent} runs {used}, more than its {}",
                a.total
            ));
        }
        a.running.insert(task, (end, resources));
        if running_now {
            a.report(task, TaskStatus::new(TaskState::Running));
        }
        true
    }

    /// The agent's connection to its master ends; that master's cycle hears of it.
    fn disconnect(&mut self, agent: &AgentId, masters: &[Master]) {
        let now = self.now();
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        if let Some(m) = a.master.take() {
            note!("{now} {agent} leaves master {m}");
            a.away_since = Some(now);
            masters[m].post(Event::AgentDown(agent.clone()));
        }
    }
}

/// One master as the offer cycle sees it.
#[derive(Clone)]
struct MasterEnv {
    index: usize,
    node: RaftNode,
    world: Rc<RefCell<World>>,
    events: Events,
    last_task_id: Rc<Cell<u64>>,
}

impl Env for MasterEnv {
    fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.node.read(f)
    }

    fn propose(&self, cmd: Command, then: Proposal) {
        note!("master {} proposes {cmd:?}", self.index);
        let written = self.node.propose(cmd);
        let env = self.clone();
        tokio::task::spawn_local(async move {
            let result = written.await;
            note!("master {}: {result:?}", env.index);
            settle(&env, then, result);
        });
    }

    fn send_to_agent(&self, agent: &AgentId, msg: MasterToAgent) -> bool {
        let mut w = self.world.borrow_mut();
        let Some(a) = w.agents.get_mut(agent) else {
            return false;
        };
        if a.master != Some(self.index) {
            return false;
        }
        // An agent ignores a kill for a task it does not run.
        if let MasterToAgent::Kill { task, reason } = msg
            && a.running.remove(&task).is_some()
        {
            a.report(
                task,
                TaskStatus::with_reason(TaskState::Killed, reason, "killed"),
            );
        }
        true
    }

    fn launch(&self, agent: &AgentId, task: TaskId, spec: TaskSpec) -> bool {
        self.world
            .borrow_mut()
            .deliver(self.index, &self.node, agent, task, spec.resources)
    }

    fn new_task_id(&self) -> TaskId {
        // As `Shared::new_task_id`: ids earlier leaders handed out are in the state.
        let recorded = self.node.read(|s| s.next_task_id);
        let next = self.last_task_id.get().max(recorded) + 1;
        self.last_task_id.set(next);
        TaskId(next)
    }

    fn check_storage(&self, _tenant: &str) -> Result<(), String> {
        Ok(())
    }

    fn seal(&self, _spec: &mut TaskSpec) -> Result<(), String> {
        Ok(())
    }

    fn connected_agents(&self) -> Vec<AgentId> {
        let w = self.world.borrow();
        w.agents
            .iter()
            .filter(|(_, a)| a.master == Some(self.index))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn preemption_grace_ms(&self) -> u64 {
        1_000
    }

    fn post(&self, ev: Event) {
        self.events.borrow_mut().push(ev);
    }
}

struct Master {
    id: NodeId,
    dir: PathBuf,
    node: Option<RaftNode>,
    /// The offer cycle while it leads, with its term.
    cycle: Option<(u64, Cycle<MasterEnv>)>,
    /// Events for its cycle; a restart starts with none.
    events: Events,
    last_task_id: Rc<Cell<u64>>,
}

impl Master {
    fn post(&self, ev: Event) {
        self.events.borrow_mut().push(ev);
    }

    fn env(&self, index: usize, world: &Rc<RefCell<World>>) -> Option<MasterEnv> {
        Some(MasterEnv {
            index,
            node: self.node.clone()?,
            world: world.clone(),
            events: self.events.clone(),
            last_task_id: self.last_task_id.clone(),
        })
    }
}

/// A framework on the scheduler API: subscribed to the leader's cycle, it accepts some
/// offers with a few small tasks and declines the rest, acknowledges every update, now and
/// then kills a task of its own, and subscribes to the new leader when told to.
struct SimFramework {
    id: FrameworkId,
    /// The master whose cycle it is subscribed to, and on which connection.
    session: Option<(usize, usize)>,
    rx: mpsc::UnboundedReceiver<FrameworkEvent>,
    next_request: u64,
    /// Tasks it was told of by `Accepted`.
    known: Vec<TaskId>,
}

struct Sim {
    router: Arc<Router>,
    framework: Option<SimFramework>,
    masters: Vec<Master>,
    members: BTreeMap<NodeId, String>,
    world: Rc<RefCell<World>>,
    /// The clients' keys: the task each was answered with, if it was.
    keys: BTreeMap<String, Option<TaskId>>,
    /// Keys with a submission on its way.
    submitting: Rc<RefCell<BTreeSet<String>>>,
    answered: Rc<RefCell<Vec<(String, TaskId)>>>,
    bundle: BundleHash,
    faults: bool,
}

fn options() -> RaftOptions {
    RaftOptions {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(150),
        election_timeout_max: Duration::from_millis(300),
        // Snapshots happen within a run, so a lagging master catches up by one.
        snapshot_logs_since_last: 40,
        logs_to_keep: 5,
        leader_timeout: Duration::from_secs(10),
        quorum_timeout: Duration::from_secs(1),
    }
}

impl Sim {
    fn rng(&self) -> std::cell::RefMut<'_, Rng> {
        std::cell::RefMut::map(self.world.borrow_mut(), |w| &mut w.rng)
    }

    fn chance(&self, percent: u64) -> bool {
        self.rng().chance(percent)
    }

    fn now(&self) -> u64 {
        self.world.borrow().now()
    }

    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.masters[i];
        let network = SimNetwork {
            router: self.router.clone(),
            from: m.id,
        };
        let node = RaftNode::open_over(&m.dir, m.id, options(), network, self.members.clone())
            .await
            .map_err(|e| anyhow::anyhow!("master {} does not open: {e}", m.id))?;
        self.router
            .nodes
            .lock()
            .unwrap()
            .insert(m.id, node.raft().clone());
        m.node = Some(node);
        m.events = Rc::default();
        Ok(())
    }

    /// The master's process dies: its cycle with it (no goodbye to anyone), its agents'
    /// connections end.
    async fn crash(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(node) = self.masters[i].node.take() else {
            return Ok(());
        };
        note!("{} master {i} crashes", self.now());
        self.masters[i].cycle = None;
        self.masters[i].events = Rc::default();
        self.router
            .nodes
            .lock()
            .unwrap()
            .remove(&self.masters[i].id);
        node.shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("master {} does not stop: {e}", self.masters[i].id))?;
        let now = self.now();
        let mut w = self.world.borrow_mut();
        for a in w.agents.values_mut() {
            if a.master == Some(i) {
                a.master = None;
                a.away_since = Some(now);
            }
        }
        Ok(())
    }

    /// The leadership supervisor of every master: a master that leads, and has applied the
    /// entries of earlier terms, starts a cycle for its term; one that stops leading (or whose
    /// term changed) stops it and sends its agents away.
    fn supervise(&mut self) {
        let now = self.now();
        for i in 0..self.masters.len() {
            let Some(node) = self.masters[i].node.clone() else {
                continue;
            };
            let m = node.raft().metrics().borrow().clone();
            let leads = RaftNode::leads(&m);
            let term = m.current_term;
            let stale = self.masters[i]
                .cycle
                .as_ref()
                .is_some_and(|(t, _)| !leads || *t != term);
            if stale {
                if let Some((t, cycle)) = self.masters[i].cycle.take() {
                    note!("{now} master {i} stops leading term {t}");
                    cycle.not_leader(None);
                }
                let agents: Vec<AgentId> = self
                    .world
                    .borrow()
                    .agents
                    .iter()
                    .filter(|(_, a)| a.master == Some(i))
                    .map(|(id, _)| id.clone())
                    .collect();
                for agent in agents {
                    self.world.borrow_mut().disconnect(&agent, &self.masters);
                }
            }
            if !leads {
                // A follower acts on no event.
                self.masters[i].events.borrow_mut().clear();
                continue;
            }
            let caught_up = m.last_applied.map(|l| l.leader_id.term) == Some(term);
            if self.masters[i].cycle.is_none() && caught_up {
                note!("{now} master {i} leads term {term}");
                let Some(env) = self.masters[i].env(i, &self.world) else {
                    continue;
                };
                let recorded = node.read(|s| s.next_task_id);
                let last = &self.masters[i].last_task_id;
                last.set(last.get().max(recorded));
                self.masters[i].cycle = Some((term, Cycle::new(env, now)));
            }
        }
        for master in &mut self.masters {
            if let Some((_, cycle)) = &mut master.cycle {
                let batch = std::mem::take(&mut *master.events.borrow_mut());
                cycle.step(batch, now);
            }
        }
    }

    /// The master agents and clients turn to: one with a cycle, the latest term first.
    fn leader(&self) -> Option<usize> {
        self.masters
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.cycle.as_ref().map(|(t, _)| (*t, i)))
            .max()
            .map(|(_, i)| i)
    }

    /// What agents do: end tasks that are due, follow the leader, report.
    fn agents_step(&mut self) {
        let now = self.now();
        let leader = self.leader();
        let ids: Vec<AgentId> = self.world.borrow().agents.keys().cloned().collect();
        for id in ids {
            {
                let mut w = self.world.borrow_mut();
                let Some(a) = w.agents.get_mut(&id) else {
                    continue;
                };
                let due: Vec<TaskId> = a
                    .running
                    .iter()
                    .filter(|(_, (end, _))| *end <= now)
                    .map(|(t, _)| *t)
                    .collect();
                for t in due {
                    a.running.remove(&t);
                    a.report(t, TaskStatus::new(TaskState::Finished));
                }
            }
            let (master, registering, reporting, pending) = {
                let w = self.world.borrow();
                let Some(a) = w.agents.get(&id) else {
                    continue;
                };
                (a.master, a.registering, a.reporting, !a.unacked.is_empty())
            };
            match master {
                // Connected to a master no longer leading (or not the latest leader, which
                // the agent finds out when its writes there time out): it goes.
                Some(m) if Some(m) != leader && self.chance(20) => {
                    self.world.borrow_mut().disconnect(&id, &self.masters);
                }
                Some(m) if pending && !reporting => self.report(&id, m),
                None if !registering && self.chance(30) => {
                    if let Some(l) = leader {
                        self.register(&id, l);
                    }
                }
                _ => {}
            }
        }
    }

    /// Registers `agent` with master `m`, as `agents.rs` has it.
    fn register(&mut self, agent: &AgentId, m: usize) {
        let Some(env) = self.masters[m].env(m, &self.world) else {
            return;
        };
        let now = self.now();
        let (cmd, known, incarnation) = {
            let mut w = self.world.borrow_mut();
            let Some(a) = w.agents.get_mut(agent) else {
                return;
            };
            a.registering = true;
            // Tasks with updates still to record count as known to the agent.
            let mut known: Vec<TaskId> = a.running.keys().copied().collect();
            known.extend(a.unacked.iter().map(|u| u.task));
            known.sort_unstable();
            known.dedup();
            let cmd = Command::RegisterAgent {
                id: agent.clone(),
                total: a.total.clone(),
                attributes: BTreeMap::new(),
                fuel_per_core_second: 1_000_000_000,
                reserved: BTreeMap::new(),
                running: known.clone(),
                peer_addr: None,
                now_ms: now,
            };
            (cmd, known, a.incarnation)
        };
        let agent = agent.clone();
        let written = env.node.propose(cmd);
        tokio::task::spawn_local(async move {
            let result = written.await;
            // As `agents.rs`: the updates the agent resent with its registration are recorded
            // (one more write) before it counts as connected; all the while it is registering.
            let pending: Vec<StatusUpdate> = {
                let mut w = env.world.borrow_mut();
                let Some(a) = w.process(&agent, incarnation) else {
                    return;
                };
                if let Err(e) = result {
                    a.registering = false;
                    note!("{agent} not registered with master {m}: {e}");
                    return;
                }
                a.unacked.iter().take(64).cloned().collect()
            };
            if !pending.is_empty() {
                let now = env.world.borrow().now();
                let recorded = env.node.propose(status_batch(&agent, &pending, now)).await;
                let mut w = env.world.borrow_mut();
                let Some(a) = w.process(&agent, incarnation) else {
                    return;
                };
                if let Err(e) = recorded {
                    a.registering = false;
                    note!("{agent}'s resent updates not recorded on master {m}: {e}");
                    return;
                }
                for t in a.recorded(&pending) {
                    env.post(Event::TaskChanged(t));
                }
            }
            let mut w = env.world.borrow_mut();
            let Some(a) = w.process(&agent, incarnation) else {
                return;
            };
            a.registering = false;
            note!("{agent} registered with master {m}");
            a.master = Some(m);
            a.away_since = None;
            // Tasks the cluster gave up on while it was away stop.
            let given_up: Vec<TaskId> = env.node.read(|s| {
                known
                    .iter()
                    .copied()
                    .filter(|id| {
                        s.tasks.get(id).is_none_or(|t| {
                            t.status.state.is_terminal() || t.agent.as_ref() != Some(&agent)
                        })
                    })
                    .collect()
            });
            for t in given_up {
                a.running.remove(&t);
            }
            // Launches recorded for it that it never received are sent now.
            let unsent: Vec<(TaskId, Resources)> = env.node.read(|s| {
                s.live_tasks_on(&agent)
                    .filter(|t| known.binary_search(t).is_err())
                    .filter_map(|t| s.tasks.get(&t))
                    .filter(|t| t.status.state == TaskState::Staging)
                    .map(|t| (t.id, t.spec.resources.clone()))
                    .collect()
            });
            for (task, resources) in unsent {
                w.deliver(m, &env.node, &agent, task, resources);
            }
            drop(w);
            env.post(Event::AgentUp(agent));
        });
    }

    /// Sends `agent`'s unrecorded updates to master `m` in one write, as `record_batch`.
    fn report(&mut self, agent: &AgentId, m: usize) {
        let Some(env) = self.masters[m].env(m, &self.world) else {
            return;
        };
        let now = self.now();
        let (updates, incarnation): (Vec<StatusUpdate>, u64) = {
            let mut w = self.world.borrow_mut();
            let Some(a) = w.agents.get_mut(agent) else {
                return;
            };
            a.reporting = true;
            (a.unacked.iter().take(64).cloned().collect(), a.incarnation)
        };
        let written = env.node.propose(status_batch(agent, &updates, now));
        let agent = agent.clone();
        let masters: Vec<Events> = self.masters.iter().map(|m| m.events.clone()).collect();
        tokio::task::spawn_local(async move {
            let result = written.await;
            let mut w = env.world.borrow_mut();
            let now = w.now();
            // Not another process's report.
            let Some(a) = w.process(&agent, incarnation) else {
                return;
            };
            a.reporting = false;
            // Nor another connection's.
            if a.master != Some(m) {
                return;
            }
            match result {
                Ok(_) => {
                    note!(
                        "{now} master {m} recorded {agent}'s {:?}",
                        updates
                            .iter()
                            .map(|u| (u.seq, u.task, u.status.state))
                            .collect::<Vec<_>>()
                    );
                    for t in a.recorded(&updates) {
                        env.post(Event::TaskChanged(t));
                    }
                }
                // Not recorded: the agent registers again and resends them.
                Err(e) => {
                    note!("{agent}'s updates not recorded on master {m}: {e}");
                    a.master = None;
                    a.away_since = Some(now);
                    masters[m].borrow_mut().push(Event::AgentDown(agent));
                }
            }
        });
    }

    /// The framework follows the leader, reads what arrived and answers it.
    fn framework_step(&mut self) {
        let Some(mut fw) = self.framework.take() else {
            return;
        };
        let leader = self.leader();
        // Its session ends with its master's process, or is moved to the leader.
        if let Some((m, conn)) = fw.session
            && (self.masters[m].cycle.is_none() || Some(m) != leader)
        {
            self.masters[m].post(Event::FrameworkDown { id: fw.id, conn });
            fw.session = None;
        }
        if fw.session.is_none()
            && let Some(l) = leader
        {
            let (tx, rx) = mpsc::unbounded_channel();
            let conn = crate::frameworks::new_session();
            note!(
                "{} framework subscribes to master {l} on {conn}",
                self.now()
            );
            self.masters[l].post(Event::FrameworkUp {
                id: fw.id,
                conn,
                tx,
            });
            fw.rx = rx;
            fw.session = Some((l, conn));
        }
        let Some((m, conn)) = fw.session else {
            self.framework = Some(fw);
            return;
        };
        let mut calls = Vec::new();
        while let Ok(ev) = fw.rx.try_recv() {
            match ev {
                FrameworkEvent::Offers(offers) => {
                    for offer in offers {
                        let count = 1 + self.rng().below(3);
                        let each = Resources::new(100, 16 << 20, 0);
                        let fits = Resources::new(100 * count, (16 << 20) * count, 0)
                            .fits_in(&offer.unreserved);
                        if self.faults && fits && self.chance(60) {
                            fw.next_request += 1;
                            let specs = (0..count)
                                .map(|_| TaskSpec {
                                    resources: each.clone(),
                                    timeout_ms: 60_000,
                                    ..TaskSpec::new("fw.wasm", self.bundle.clone())
                                })
                                .collect();
                            calls.push(FrameworkCall::Accept {
                                request: fw.next_request,
                                offers: vec![offer.id],
                                operations: vec![OfferOperation::Launch(specs)],
                                refuse_ms: Some(0),
                            });
                        } else {
                            calls.push(FrameworkCall::Decline {
                                offers: vec![offer.id],
                                refuse_ms: Some(0),
                            });
                        }
                    }
                }
                FrameworkEvent::Accepted { tasks, .. } => fw.known.extend(tasks),
                FrameworkEvent::Update { task, update, .. } => {
                    calls.push(FrameworkCall::Acknowledge { task, update });
                }
                FrameworkEvent::NotLeader { .. } => {
                    fw.session = None;
                    break;
                }
                _ => {}
            }
        }
        if self.faults && !fw.known.is_empty() && self.chance(2) {
            let i = self.rng().below(fw.known.len() as u64) as usize;
            calls.push(FrameworkCall::Kill { task: fw.known[i] });
        }
        if fw.session.is_some() {
            for call in calls {
                self.masters[m].post(Event::FrameworkCall {
                    id: fw.id,
                    conn,
                    call,
                });
            }
        }
        self.framework = Some(fw);
    }

    /// A client submits a new task, or again one whose submission was not answered.
    fn client_step(&mut self, new: bool) {
        for (key, id) in self.answered.borrow_mut().drain(..) {
            match self.keys.get(&key) {
                Some(Some(first)) if *first != id => self.world.borrow_mut().violations.push(
                    format!("key {key} was answered with task {first} and then task {id}"),
                ),
                _ => {
                    self.keys.insert(key, Some(id));
                }
            }
        }
        let unanswered: Vec<String> = self
            .keys
            .iter()
            .filter(|(k, id)| id.is_none() && !self.submitting.borrow().contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        let key = if new {
            let key = format!("k{}", self.keys.len());
            self.keys.insert(key.clone(), None);
            key
        } else if let Some(k) = unanswered.first() {
            k.clone()
        } else {
            return;
        };
        // Mostly the leader; now and then a master that is not (it answers NotLeader).
        let up: Vec<usize> = (0..self.masters.len())
            .filter(|i| self.masters[*i].node.is_some())
            .collect();
        let target = match self.leader() {
            Some(l) if !self.chance(10) => l,
            _ if !up.is_empty() => up[self.rng().below(up.len() as u64) as usize],
            _ => return,
        };
        let Some(env) = self.masters[target].env(target, &self.world) else {
            return;
        };
        // The client names a role (`policy` fills in the tenant's default).
        let spec = super::sim::spec(&mut self.rng(), &self.bundle);
        let cmd = Command::SubmitTask {
            id: Some(env.new_task_id()),
            spec,
            owner: OWNER.into(),
            now_ms: self.now(),
            key: Some(key.clone()),
        };
        self.submitting.borrow_mut().insert(key.clone());
        let submitting = self.submitting.clone();
        let answered = self.answered.clone();
        let written = env.node.propose(cmd);
        tokio::task::spawn_local(async move {
            let result = written.await;
            submitting.borrow_mut().remove(&key);
            if let Ok(CommandResult::Submitted(id)) = result {
                note!("key {key} answered: task {id}");
                answered.borrow_mut().push((key, id));
                env.post(Event::Submitted(id));
            }
        });
    }

    /// One fault: a master crashes, restarts, is cut off or back; an agent disconnects or
    /// crashes; the leader declares an agent long away lost.
    async fn fault_step(&mut self) -> anyhow::Result<()> {
        let roll = self.rng().below(10);
        let n = self.masters.len() as u64;
        let i = self.rng().below(n) as usize;
        let id = self.masters[i].id;
        match roll {
            0 if self.masters[i].node.is_some() => self.crash(i).await?,
            1 | 2 if self.masters[i].node.is_none() => self.start(i).await?,
            3 => {
                note!("{} master {i} cut off", self.now());
                self.router.cut.lock().unwrap().insert(id);
            }
            4 | 5 => {
                self.router.cut.lock().unwrap().remove(&id);
            }
            6 | 7 => {
                if let Some(agent) = self.some_agent() {
                    self.world.borrow_mut().disconnect(&agent, &self.masters);
                }
            }
            8 => {
                // The agent's process dies with what it runs and its unsent updates: a task
                // whose end was not recorded may be sent to it again (at least once).
                let Some(agent) = self.some_agent() else {
                    return Ok(());
                };
                note!("{} {agent} crashes", self.now());
                let mut w = self.world.borrow_mut();
                w.disconnect(&agent, &self.masters);
                if let Some(a) = w.agents.get_mut(&agent) {
                    let mut forgotten: Vec<TaskId> = a.running.keys().copied().collect();
                    forgotten.extend(a.unacked.iter().map(|u| u.task));
                    for t in forgotten {
                        a.received.remove(&t);
                    }
                    a.running.clear();
                    a.unacked.clear();
                    a.incarnation += 1;
                    a.registering = false;
                    a.reporting = false;
                }
            }
            _ => self.reap(),
        }
        Ok(())
    }

    fn some_agent(&self) -> Option<AgentId> {
        let mut w = self.world.borrow_mut();
        let n = w.agents.len() as u64;
        let i = w.rng.below(n) as usize;
        w.agents.keys().nth(i).cloned()
    }

    /// The leader's reaper: an agent away for long is declared lost, with its tasks.
    fn reap(&mut self) {
        let Some(l) = self.leader() else {
            return;
        };
        let now = self.now();
        let away: Vec<AgentId> = self
            .world
            .borrow()
            .agents
            .iter()
            // Not one registering (as `scheduler.rs`): its registration may have committed,
            // and a verdict would name it.
            .filter(|(_, a)| {
                a.master != Some(l)
                    && !a.registering
                    && a.away_since.is_some_and(|t| t + REAP_AFTER_MS <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let Some(agent) = away.first().cloned() else {
            return;
        };
        let Some(env) = self.masters[l].env(l, &self.world) else {
            return;
        };
        note!("{now} master {l} declares {agent} lost");
        // As the reaper: on the registration it found silent.
        let registered_ms = env
            .node
            .read(|s| s.agents.get(&agent).map(|a| a.registered_ms));
        let written = env.node.propose(Command::AgentLost {
            agent: agent.clone(),
            registered_ms,
            now_ms: now,
        });
        tokio::task::spawn_local(async move {
            let result = written.await;
            note!("{agent} declared lost: {result:?}");
            if let Ok(CommandResult::Ok) = result {
                env.post(Event::AgentLost(agent));
            }
        });
    }

    /// No agent's recorded live tasks on the leader need more than it has.
    fn check_capacity(&self) {
        let Some(l) = self.leader() else {
            return;
        };
        let Some(node) = &self.masters[l].node else {
            return;
        };
        let mut w = self.world.borrow_mut();
        let held = node.read(|s| {
            let mut held: BTreeMap<AgentId, Resources> = BTreeMap::new();
            for t in s.tasks.values() {
                if let Some(a) = &t.agent
                    && !t.status.state.is_terminal()
                {
                    let h = held.entry(a.clone()).or_default();
                    *h = h.saturating_add(&t.spec.resources);
                }
            }
            held
        });
        let mut found = Vec::new();
        for (agent, h) in held {
            if let Some(a) = w.agents.get(&agent)
                && !h.fits_in(&a.total)
            {
                found.push(format!(
                    "master {l} records {h} on {agent}, more than its {}",
                    a.total
                ));
            }
        }
        w.violations.extend(found);
    }

    /// Each master's raft view, for a failure's message.
    fn describe(&self) -> String {
        let views: Vec<String> = self
            .masters
            .iter()
            .map(|m| match &m.node {
                None => format!("{}: down", m.id),
                Some(n) => {
                    let x = n.raft().metrics().borrow().clone();
                    format!(
                        "{}: {:?} term {} leader {:?} log {:?} applied {:?} cycle {}",
                        m.id,
                        x.state,
                        x.current_term,
                        x.current_leader,
                        x.last_log_index,
                        x.last_applied.map(|l| l.index),
                        m.cycle.is_some()
                    )
                }
            })
            .collect();
        views.join("; ")
    }

    /// Whether everything has come to rest: every key answered, every task ended on the
    /// leader, every agent connected to it with nothing to run or report, its cycle idle.
    fn settled(&self) -> Result<(), String> {
        let Some(l) = self.leader() else {
            return Err("no leader".into());
        };
        if let Some(k) = self.keys.iter().find(|(_, id)| id.is_none()) {
            return Err(format!("key {} unanswered", k.0));
        }
        let w = self.world.borrow();
        if let Some((id, a)) = w
            .agents
            .iter()
            .find(|(_, a)| a.master != Some(l) || !a.running.is_empty() || !a.unacked.is_empty())
        {
            return Err(format!(
                "{id}: master {:?}, running {:?}, {} updates unrecorded",
                a.master,
                a.running.keys().collect::<Vec<_>>(),
                a.unacked.len()
            ));
        }
        let m = &self.masters[l];
        let node = m.node.as_ref().ok_or("leader down")?;
        let live: Vec<TaskId> = node.read(|s| {
            s.tasks
                .values()
                .filter(|t| !t.status.state.is_terminal())
                .map(|t| t.id)
                .collect()
        });
        if !live.is_empty() {
            return Err(format!("tasks not ended on master {l}: {live:?}"));
        }
        if let Some((_, c)) = &m.cycle
            && !(c.launching.is_empty() && c.doubtful.is_empty() && c.registering.is_empty())
        {
            return Err("the leader's cycle has writes in flight".into());
        }
        Ok(())
    }
}

/// Runs one seed to the end; returns how many submissions were answered, and how many tasks
/// the framework launched.
async fn run(seed: u64, dir: &Path) -> anyhow::Result<(usize, usize)> {
    let mut rng = Rng(seed);
    let n: u64 = if rng.chance(25) { 5 } else { 3 };
    let loss = rng.below(10);
    let agents = 1 + rng.below(3);
    let router = Arc::new(Router::new(seed ^ 0x5eed, loss));
    let members: BTreeMap<NodeId, String> = (1..=n).map(|id| (id, format!("sim-{id}"))).collect();
    let world = Rc::new(RefCell::new(World {
        rng,
        start: tokio::time::Instant::now(),
        agents: BTreeMap::new(),
        ran_on: BTreeMap::new(),
        violations: Vec::new(),
    }));
    for i in 0..agents {
        let id = AgentId::new(&format!("agent-{i}"))?;
        let mut w = world.borrow_mut();
        let total = Resources::new(1000 * (1 + w.rng.below(3)), 1 << 30, 0);
        w.agents.insert(
            id,
            SimAgent {
                total,
                master: None,
                away_since: None,
                registering: false,
                reporting: false,
                running: BTreeMap::new(),
                received: BTreeSet::new(),
                next_seq: 0,
                incarnation: 0,
                unacked: VecDeque::new(),
            },
        );
    }
    let masters = (1..=n)
        .map(|id| Master {
            id,
            dir: dir.join(format!("master-{id}")),
            node: None,
            cycle: None,
            events: Rc::default(),
            last_task_id: Rc::default(),
        })
        .collect();
    let mut sim = Sim {
        router,
        framework: None,
        masters,
        members,
        world,
        keys: BTreeMap::new(),
        submitting: Rc::default(),
        answered: Rc::default(),
        bundle: BundleHash::parse(&"ab".repeat(32))?,
        faults: true,
    };
    for i in 0..sim.masters.len() {
        sim.start(i).await?;
    }
    // The bundle every task runs, before any fault.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        sim.supervise();
        if let Some(l) = sim.leader()
            && let Some(node) = &sim.masters[l].node
            && node
                .write(Command::AddBundle {
                    hash: sim.bundle.clone(),
                    size: 10,
                    now_ms: 1,
                    reader: None,
                })
                .await
                .is_ok()
        {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no leader at start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // And the framework, registered as a subscription does (again if it was not answered:
    // messages are lost from the start).
    while sim.framework.is_none() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the framework is not registered"
        );
        sim.supervise();
        let node = sim.leader().and_then(|l| sim.masters[l].node.clone());
        let registered = match node {
            Some(node) => {
                node.write(Command::RegisterFramework {
                    name: "sim".into(),
                    role: Role::new("d")?,
                    owner: "wasmos://operator/fw".into(),
                    revocable: false,
                    failover_timeout_ms: 3_600_000,
                    acknowledges: true,
                    now_ms: sim.now(),
                })
                .await
            }
            None => Err(wasmos_raft::RaftError::NotLeader { leader: None }),
        };
        if let Ok(CommandResult::Framework(id)) = registered {
            sim.framework = Some(SimFramework {
                id,
                session: None,
                rx: mpsc::unbounded_channel().1,
                next_request: 0,
                known: Vec::new(),
            });
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let chaos_end = tokio::time::Instant::now() + CHAOS;
    let settle_end = chaos_end + SETTLE;
    loop {
        let now = tokio::time::Instant::now();
        if sim.faults && now >= chaos_end {
            // Heal: every master up and reachable, no more faults or new submissions.
            sim.faults = false;
            sim.router.cut.lock().unwrap().clear();
            for i in 0..sim.masters.len() {
                if sim.masters[i].node.is_none() {
                    sim.start(i).await?;
                }
            }
        }
        if sim.faults && sim.chance(4) {
            sim.fault_step().await?;
        }
        if !sim.faults && sim.chance(5) {
            // The reaper still runs.
            sim.reap();
        }
        sim.client_step(sim.faults && sim.chance(12));
        sim.supervise();
        sim.agents_step();
        sim.framework_step();
        sim.check_capacity();
        if !sim.world.borrow().violations.is_empty() {
            break;
        }
        if !sim.faults {
            match sim.settled() {
                Ok(()) => break,
                Err(why) => anyhow::ensure!(
                    now < settle_end,
                    "nothing settled {SETTLE:?} after the faults stopped: {why}; masters: {}",
                    sim.describe()
                ),
            }
        }
        let pause = 2 + sim.rng().below(15);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let violations = std::mem::take(&mut sim.world.borrow_mut().violations);
    anyhow::ensure!(violations.is_empty(), "{violations:?}");

    // Every master catches up with the leader's last entry and holds the same state. The
    // marker is written again if it is not answered (messages are still lost; leadership may
    // move).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let target = loop {
        sim.supervise();
        let leader = sim.leader().and_then(|l| sim.masters[l].node.clone());
        if let Some(leader) = leader {
            let marker = leader
                .write(Command::AddBundle {
                    hash: sim.bundle.clone(),
                    size: 10,
                    now_ms: 2,
                    reader: None,
                })
                .await;
            if marker.is_ok() {
                break leader.raft().metrics().borrow().last_applied;
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the healed cluster cannot write: {}",
            sim.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let states = loop {
        let applied: Vec<_> = sim
            .masters
            .iter()
            .filter_map(|m| m.node.as_ref())
            .map(|n| n.raft().metrics().borrow().last_applied)
            .collect();
        // (Elections may go on after the marker, each adding an entry.)
        if applied.iter().all(|a| *a >= target && *a == applied[0]) {
            let states: Vec<ClusterState> = sim
                .masters
                .iter()
                .filter_map(|m| m.node.as_ref())
                .map(|n| n.read(Clone::clone))
                .collect();
            break states;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "masters did not catch up with {target:?}: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let tasks: BTreeSet<TaskId> = sim.keys.values().filter_map(|id| *id).collect();
    anyhow::ensure!(
        tasks.len() == sim.keys.len(),
        "{} keys answered with {} tasks",
        sim.keys.len(),
        tasks.len()
    );
    for (i, s) in states.iter().enumerate() {
        anyhow::ensure!(
            *s == states[0],
            "master {i} holds a state unlike master 0's"
        );
        for id in &tasks {
            let ended = s.tasks.get(id).map(|t| t.status.state.is_terminal());
            anyhow::ensure!(
                ended == Some(true),
                "acknowledged task {id} on master {i}: {ended:?}"
            );
        }
        let made = s.tasks.values().filter(|t| t.owner == OWNER).count();
        anyhow::ensure!(
            made == tasks.len(),
            "{made} tasks were made for {} keys",
            tasks.len()
        );
    }
    let fw = sim.framework.as_ref().map(|f| f.id);
    let launched = states[0]
        .tasks
        .values()
        .filter(|t| t.framework.is_some() && t.framework == fw)
        .count();
    for i in 0..sim.masters.len() {
        sim.crash(i).await?;
    }
    Ok((tasks.len(), launched))
}

/// Runs `seed` on one thread in paused time, its files in a fresh directory.
fn run_seed(seed: u64) -> anyhow::Result<(usize, usize)> {
    NOTES.with(|n| n.borrow_mut().clear());
    run_paused(|dir| async move { run(seed, &dir).await })?.map_err(|e| {
        NOTES.with(|n| {
            for line in n.borrow().iter() {
                eprintln!("{line}");
            }
        });
        anyhow::anyhow!("seed {seed} (replay: WASMOS_GROUP_SIM_SEED={seed}): {e}")
    })
}

#[test]
fn the_control_plane_holds_under_seeded_faults() -> anyhow::Result<()> {
    let seeds: Vec<u64> = match std::env::var("WASMOS_GROUP_SIM_SEED") {
        Ok(one) => vec![one.parse()?],
        Err(_) => {
            let n = std::env::var("WASMOS_GROUP_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (1..=n).collect()
        }
    };
    let (mut answered, mut launched) = (0, 0);
    for seed in &seeds {
        let (a, l) = run_seed(*seed)?;
        answered += a;
        launched += l;
    }
    eprintln!(
        "{} seeds, {answered} submissions answered, {launched} tasks launched by the framework, every invariant held",
        seeds.len()
    );
    anyhow::ensure!(answered > 0, "no submission was ever answered");
    anyhow::ensure!(launched > 0, "the framework never launched a task");
    Ok(())
}
