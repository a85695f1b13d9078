//! The replicated cluster state machine: `ClusterState`, the `Command`s that change it and a pure,
//! deterministic `apply`. Raft feeds it committed commands; everything the cluster must not forget
//! (agents, bundles, tasks and their final states) lives here.

mod apply;
mod audit;
mod events;
mod rejection;
mod signing;
mod tenancy;

use std::collections::{BTreeMap, BTreeSet};

pub use audit::{AuditEntry, MAX_AUDIT_ENTRIES, MAX_AUDIT_FIELD_BYTES, audit_field};
pub use events::{EVENT_HISTORY, EventLog, EventRead};
pub use rejection::Rejection;
pub use signing::SigningKeyRecord;
pub use tenancy::{approx_bytes, spec_bytes, status_bytes, tenant_of};
pub use wasmos_proto::{Ceilings, DEFAULT_CEILINGS, EffectiveCeilings};

use serde::{Deserialize, Serialize};
use wasmos_alloc::{Pools, Role};
use wasmos_proto::{
    AgentId, BundleHash, FrameworkId, JobEvent, JobId, JobSpec, JobState, OutputFile, Reason,
    Resources, StatusUpdate, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: AgentId,
    /// What is offered and placed on: the operator's resize (`resized`), else what the agent
    /// advertised.
    pub total: Resources,
    /// What the agent itself advertised at its last registration.
    #[serde(default)]
    pub advertised: Resources,
    /// `total` is an operator's (`wasmos agent set`), kept across the agent's re-registrations
    /// until reset.
    #[serde(default)]
    pub resized: bool,
    pub attributes: BTreeMap<String, String>,
    pub fuel_per_core_second: u64,
    pub registered_ms: u64,
    /// Highest status-update sequence number recorded from this agent; lower ones are duplicates.
    pub last_status_seq: u64,
    /// Static reservations from the agent's configuration (as of its last registration).
    #[serde(default)]
    pub reserved: BTreeMap<Role, Resources>,
    /// Where other agents fetch the outputs it keeps (`wasmos-agent-peer/1`), if it serves.
    #[serde(default)]
    pub peer_addr: Option<String>,
    /// Drained by an operator: nothing is placed on it (kept across its re-registrations).
    #[serde(default)]
    pub draining: bool,
    /// A maintenance window an operator scheduled for it, until the window is over.
    #[serde(default)]
    pub maintenance: Option<Maintenance>,
}

/// An agent's maintenance window, what frameworks answered its inverse offers, and whether it
/// has begun.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub window: wasmos_proto::MaintenanceWindow,
    pub answers: BTreeMap<FrameworkId, bool>,
    /// The window's start drained the agent: its end undrains it (a drain of the operator's
    /// own, from before, is left).
    pub begun: bool,
}

/// A role's share settings. Roles without a record have weight 1 and no quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    /// Thousandths: 1000 is weight 1.
    pub weight_milli: u64,
    pub guarantee: Resources,
    pub limit: Option<Resources>,
    /// Limits on what the role's tasks may ask for (see [`Ceilings`]).
    pub ceilings: Ceilings,
    /// Most the role (with its sub-roles) may hold in dynamic reservations; `None` allows
    /// its guarantee.
    pub reservation_allowance: Option<Resources>,
    /// Egress rules for the role's tasks, beyond the agents' own policy, checked in order
    /// after each agent's defaults (see `wasmos_proto::EgressRule`).
    pub egress: Vec<wasmos_proto::EgressRule>,
    /// Signing keys (ids) one of which must have signed the bundle of every task the role
    /// (or a sub-role that sets none itself) runs; empty: no signature required.
    pub require_signed_by: Vec<String>,
}

impl Default for RoleRecord {
    fn default() -> Self {
        RoleRecord {
            weight_milli: 1000,
            guarantee: Resources::default(),
            limit: None,
            ceilings: Ceilings::default(),
            reservation_allowance: None,
            egress: Vec::new(),
            require_signed_by: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkRecord {
    pub id: FrameworkId,
    pub name: String,
    pub role: Role,
    /// The identity (certificate URI) that subscribed it; its tasks are owned by it.
    pub owner: String,
    /// Whether it takes revocable resources (for best-effort tasks).
    pub revocable: bool,
    pub registered_ms: u64,
    /// How long it keeps its tasks while disconnected.
    pub failover_timeout_ms: u64,
    /// Whether its tasks' status updates are resent until it acknowledges them (true for
    /// frameworks on the scheduler API; the master's own `wasmos run` frameworks need not).
    pub acknowledges: bool,
    /// When it was torn down or timed out: its id is retired and its tasks are killed.
    pub removed_ms: Option<u64>,
}

/// A task launched from an offer: which pools of its agent it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchTask {
    pub id: TaskId,
    /// `None` launches a task already submitted (and waiting); `Some` creates it.
    pub spec: Option<TaskSpec>,
    pub charge: Pools,
}

/// A dynamic reservation change made by an accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationOp {
    Reserve { role: Role, resources: Resources },
    Unreserve { role: Role, resources: Resources },
}

/// A job and what its framework has recorded of its progress: enough for a new leader's
/// framework to carry on where the old one stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub owner: String,
    /// The role its tasks count against (resolved at submission).
    pub role: Role,
    pub submitted_ms: u64,
    pub state: JobState,
    pub ended_ms: Option<u64>,
    /// The framework running it, once registered.
    pub framework: Option<FrameworkId>,
    /// Its tasks not yet known to have ended: (group, index).
    pub tasks: BTreeMap<TaskId, (String, u32)>,
    /// Batch slots done: the task that did it and its outputs.
    pub done: BTreeMap<(String, u32), (TaskId, Vec<OutputFile>)>,
    /// Failed attempts by slot.
    pub failures: BTreeMap<(String, u32), u32>,
    /// Times a done slot's outputs were lost with the agent that kept them, by slot.
    #[serde(default)]
    pub losses: BTreeMap<(String, u32), u32>,
}

impl JobRecord {
    /// A running batch job's done slots with a kept output no agent keeps any more (its
    /// blob record is gone with its last agent), while a group that reads them is not done,
    /// are not done any more (and count a loss): the job's framework, which the job host keeps
    /// in step with this record, runs them again. Repeated until nothing changes, since
    /// undoing a slot makes its own inputs needed again, whichever agent lost those and when.
    pub(crate) fn forget_missing(&mut self, bundles: &BTreeMap<BundleHash, BundleMeta>) {
        if self.state.is_terminal() || self.spec.kind != wasmos_proto::JobKind::Batch {
            return;
        }
        self.spec
            .undo_lost_kept(&mut self.done, &mut self.losses, |b| {
                !bundles.contains_key(b)
            });
    }
}

/// Who revoked a certificate or an identity, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub by: String,
    pub at_ms: u64,
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    /// A certificate's serial number, as `serial_of_der` prints it.
    Serial(String),
    /// Every certificate naming this identity (`wasmos://...`).
    Identity(String),
}

/// Most revocations the state holds (serials and identities together): each is checked at
/// every handshake and kept for good, so an operator's script gone wrong is stopped here.
pub const MAX_REVOCATIONS: usize = 100_000;

/// Longest identity URI a revocation may name.
pub const MAX_REVOKED_IDENTITY_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMeta {
    pub size: u64,
    pub added_ms: u64,
    /// Tenants that may read it: each that uploaded the bytes itself, and each whose task
    /// produced them. Operators read every blob.
    pub readers: BTreeSet<String>,
    /// The agents that keep it, for an output kept where it was produced
    /// (`TaskSpec::outputs_on_agent`; the same bytes may be made on several); empty for blobs
    /// stored on the masters. Only a task's inputs may name a kept blob; it is forgotten when
    /// its last agent is lost.
    #[serde(default)]
    pub kept_on: BTreeSet<AgentId>,
    /// Its authors' signatures (see `signing.rs`), at most one per key.
    pub signatures: Vec<wasmos_proto::BundleSignature>,
}

impl BundleMeta {
    /// Whether its bytes are only on agents, not on the masters.
    pub fn is_kept(&self) -> bool {
        !self.kept_on.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub next_task_id: u64,
    pub agents: BTreeMap<AgentId, AgentRecord>,
    pub bundles: BTreeMap<BundleHash, BundleMeta>,
    pub tasks: BTreeMap<TaskId, TaskInfo>,
    #[serde(default)]
    pub next_framework_id: u64,
    #[serde(default)]
    pub frameworks: BTreeMap<FrameworkId, FrameworkRecord>,
    #[serde(default)]
    pub roles: BTreeMap<Role, RoleRecord>,
    /// Dynamic reservations (made by frameworks' RESERVE operations), by agent and role.
    #[serde(default)]
    pub reservations: BTreeMap<AgentId, BTreeMap<Role, Resources>>,
    /// The pools each live task launched from an offer holds; removed when it ends.
    #[serde(default)]
    pub charges: BTreeMap<TaskId, Pools>,
    /// Recent submissions by their client-chosen key (scoped to the owner): a client that
    /// lost the answer to a submission (a leader crashed) sends it again with the same key and
    /// gets the task the first one created, not a second task.
    #[serde(default)]
    pub submissions: BTreeMap<String, TaskId>,
    /// The same keys by the time they were recorded, to forget them after
    /// [`SUBMISSION_KEY_TTL_MS`].
    #[serde(default)]
    pub submission_times: std::collections::BTreeSet<(u64, String)>,
    /// Tasks whose latest status their framework has not acknowledged yet: what the leader
    /// resends, and what a framework gets again when it subscribes.
    #[serde(default)]
    pub unacked: std::collections::BTreeSet<(FrameworkId, TaskId)>,
    pub next_job_id: u64,
    pub jobs: BTreeMap<JobId, JobRecord>,
    /// Revoked certificates by serial number (lowercase hex, no leading zero bytes), and
    /// revoked identities (`wasmos://...`, every certificate naming one): every master
    /// refuses them at the handshake. Kept for good: a leaf outlives any retention.
    pub revoked_serials: BTreeMap<String, Revocation>,
    pub revoked_identities: BTreeMap<String, Revocation>,
    /// The audit log by sequence number (see `audit.rs`), and the last number given.
    pub audit: BTreeMap<u64, AuditEntry>,
    pub audit_next: u64,
    /// Bundle signing keys by id, revoked ones kept for good.
    pub signing_keys: BTreeMap<String, SigningKeyRecord>,
    /// Derived from `tasks`, never stored: which tasks have not ended, counted by role.
    #[serde(skip)]
    live: LiveIndex,
    /// Derived from `audit`, never stored: whose entries to drop when the log is full.
    #[serde(skip)]
    audit_index: audit::AuditIndex,
    /// The events of the command being applied, while a caller records them.
    #[serde(skip)]
    recording: events::Recording,
}

/// The tasks that have not ended, and how many per role: the tasks ceiling is checked for
/// every new task, and counting them by walking every task (retained ended ones included)
/// made each launch cost as much as the whole task table.
///
/// A function of `tasks`, so it takes no part in equality; it is rebuilt after the state is
/// decoded (`apply` and [`ClusterState::reindex`] build it when it is not built).
#[derive(Debug, Clone, Default)]
struct LiveIndex {
    built: bool,
    tasks: std::collections::BTreeSet<TaskId>,
    by_role: BTreeMap<String, u64>,
    /// Spawned tasks not yet ended, by parent: for the limit on a parent's children and for
    /// ending them with it.
    children: BTreeMap<TaskId, std::collections::BTreeSet<TaskId>>,
}

impl PartialEq for LiveIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LiveIndex {}

/// How long a submission key is remembered: ten times as long as the CLI retries.
pub const SUBMISSION_KEY_TTL_MS: u64 = 5 * 60 * 1000;

/// Every change to the cluster state. Time is carried in the command (`now_ms`, the leader's
/// clock when it proposed it), so replaying the log gives the same state on every master.
// A command lives from its proposal to its application, one at a time: boxing the task spec
// would buy nothing but indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterAgent {
        id: AgentId,
        total: Resources,
        attributes: BTreeMap<String, String>,
        fuel_per_core_second: u64,
        #[serde(default)]
        reserved: BTreeMap<Role, Resources>,
        /// Tasks the agent still runs (or has unacknowledged updates for); its other live
        /// tasks are lost, except those still staging (never started there).
        running: Vec<TaskId>,
        /// Its `wasmos-agent-peer/1` address (checked by the master to be a socket address).
        #[serde(default)]
        peer_addr: Option<String>,
        now_ms: u64,
    },
    AddBundle {
        hash: BundleHash,
        size: u64,
        now_ms: u64,
        /// The tenant that uploaded it, which may read it from now on (none for operators'
        /// uploads and agents' output files, whose readers come with the task's status).
        reader: Option<String>,
    },
    SubmitTask {
        /// The id the leader handed out; `None` takes the next one.
        #[serde(default)]
        id: Option<TaskId>,
        spec: TaskSpec,
        owner: String,
        now_ms: u64,
        /// The client's key for this submission: a second submission with the same key and
        /// owner within [`SUBMISSION_KEY_TTL_MS`] returns the first one's task.
        #[serde(default)]
        key: Option<String>,
    },
    AssignTask {
        task: TaskId,
        agent: AgentId,
        now_ms: u64,
    },
    /// A status update reported by an agent, deduplicated by its sequence number.
    AgentStatus {
        agent: AgentId,
        update: StatusUpdate,
        now_ms: u64,
    },
    /// A status decided by the master itself (unschedulable, killed before launch, agent lost).
    SetStatus {
        task: TaskId,
        status: TaskStatus,
        now_ms: u64,
    },
    /// The agent is gone for good: every live task on it is lost.
    AgentLost {
        agent: AgentId,
        /// The registration the caller found silent (`AgentRecord::registered_ms`), if it
        /// looked: if the agent registered again since, the command is refused as stale, so
        /// a reaper's verdict that commits after the agent came back cannot end the tasks it
        /// was just sent (which it would go on running on resources counted free).
        registered_ms: Option<u64>,
        now_ms: u64,
    },
    RegisterFramework {
        name: String,
        role: Role,
        owner: String,
        revocable: bool,
        failover_timeout_ms: u64,
        acknowledges: bool,
        now_ms: u64,
    },
    /// A returning framework asked for another failover timeout.
    SetFailoverTimeout {
        framework: FrameworkId,
        failover_timeout_ms: u64,
    },
    /// The framework handled update `update` of `task`.
    Acknowledge {
        framework: FrameworkId,
        task: TaskId,
        update: u64,
    },
    /// Torn down, or gone past its failover timeout: the id is retired (the leader kills its
    /// tasks through their agents).
    RemoveFramework {
        framework: FrameworkId,
        now_ms: u64,
    },
    SetRole {
        role: Role,
        record: RoleRecord,
    },
    /// An accepted offer: reservation changes, then tasks placed on `agent`, all or nothing.
    /// Re-checked against the recorded state, so two frameworks can never hold the same
    /// resources even if an allocator was wrong or a leader changed in between.
    Launch {
        framework: FrameworkId,
        agent: AgentId,
        reservations: Vec<ReservationOp>,
        tasks: Vec<LaunchTask>,
        now_ms: u64,
    },
    /// Several commands in one raft entry, applied in order, each on its own (one refused
    /// does not undo the others): how concurrent writes share one log append and fsync.
    Batch(Vec<Command>),
    SubmitJob {
        spec: JobSpec,
        owner: String,
        role: Role,
        now_ms: u64,
    },
    Job {
        job: JobId,
        event: JobEvent,
        now_ms: u64,
    },
    /// Operators: drops the dynamic reservations `role` holds on `agent`, except what its
    /// live tasks hold there (they keep running; what they free is not reserved again).
    RemoveReservation {
        agent: AgentId,
        role: Role,
    },
    /// Sets what `agent` offers to `total` (the operator's `wasmos agent set`; at most what it
    /// advertises, in every kind), or back to what it advertises (`None`). Refused when its
    /// reservations would not fit; its tasks keep running whatever they hold.
    ResizeAgent {
        agent: AgentId,
        total: Option<Resources>,
    },
    /// Operators: a maintenance window for each of `agents` (all known), or none.
    ScheduleMaintenance {
        agents: Vec<AgentId>,
        window: Option<wasmos_proto::MaintenanceWindow>,
    },
    /// A framework's answer to the inverse offer of `agent`'s window.
    AnswerInverseOffer {
        agent: AgentId,
        framework: FrameworkId,
        accept: bool,
    },
    /// `agent`'s window began (drained, unless it already was) or ended (`begun: false`: the
    /// window is gone, and so is the drain it began).
    MaintenanceWindowAt {
        agent: AgentId,
        begun: bool,
    },
    /// Operators: drains `agent` (nothing more is placed on it) or ends its drain.
    DrainAgent {
        agent: AgentId,
        drain: bool,
    },
    /// Retention: forgets tasks that ended before `before_ms` or beyond the newest `keep`
    /// ended ones, jobs that ended before `before_ms`, and blobs added before `before_ms`
    /// that nothing kept names.
    Collect {
        before_ms: u64,
        keep: u64,
        now_ms: u64,
    },
    /// Operators: revokes a certificate or an identity for good. Revoking what is revoked
    /// already keeps the first record.
    Revoke {
        target: RevokeTarget,
        by: String,
        now_ms: u64,
    },
    /// A caller's call, appended to the audit log in the same raft entry as the write it made
    /// (`cmd`), whose result is the entry's and this command's; without one (a refused call,
    /// an audited read), `entry.result` says what came of it.
    Audited {
        entry: AuditEntry,
        cmd: Option<Box<Command>>,
    },
    /// Retention of the audit log: forgets entries older than `before_ms`.
    ForgetAudit {
        before_ms: u64,
    },
    /// Operators: registers a bundle signing key under `id` (computed from the key).
    AddSigningKey {
        id: String,
        public: Vec<u8>,
        by: String,
        now_ms: u64,
    },
    /// Operators: revokes a signing key for good.
    RevokeSigningKey {
        id: String,
        by: String,
        now_ms: u64,
    },
    /// A signature the master verified, added to the bundle's record.
    SignBundle {
        hash: BundleHash,
        signature: wasmos_proto::BundleSignature,
    },
    /// What running tasks on `agent` said of their progress, from its heartbeat: recorded for
    /// the tasks the state places on that agent and not ended; the others are ignored.
    Progress {
        agent: AgentId,
        updates: Vec<(TaskId, wasmos_proto::TaskProgress)>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    Ok,
    /// The results of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
    /// Already applied earlier (a resent status update): nothing changed.
    Duplicate,
    Submitted(TaskId),
    Framework(FrameworkId),
    Job(JobId),
    /// What a `Collect` forgot.
    Collected {
        tasks: u64,
        jobs: u64,
        blobs: u64,
    },
    /// What a `RemoveReservation` removed, and what live tasks still hold.
    Unreserved {
        removed: Resources,
        held: Resources,
    },
    /// The command was refused; the state is unchanged. A domain answer, not a failure.
    Rejected(Rejection),
    /// How many audit entries a `ForgetAudit` forgot.
    Forgotten(u64),
}

impl ClusterState {
    /// Drops submission keys older than [`SUBMISSION_KEY_TTL_MS`].
    fn forget_submissions(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(SUBMISSION_KEY_TTL_MS);
        while let Some((at, _)) = self.submission_times.first()
            && *at < horizon
        {
            if let Some((_, key)) = self.submission_times.pop_first() {
                self.submissions.remove(&key);
            }
        }
    }

    /// Builds the derived indexes if they are not built (a state just decoded).
    pub fn reindex(&mut self) {
        if self.live.built {
            return;
        }
        let mut live = LiveIndex {
            built: true,
            ..LiveIndex::default()
        };
        for t in self.tasks.values() {
            if !t.status.state.is_terminal() {
                live.tasks.insert(t.id);
                if let Some(r) = &t.spec.role {
                    *live.by_role.entry(r.clone()).or_default() += 1;
                }
                if let Some(l) = &t.spec.lineage {
                    live.children.entry(l.parent).or_default().insert(t.id);
                }
            }
        }
        self.live = live;
    }

    /// Counts a task that was just created (it has not ended).
    fn index_new(&mut self, task: TaskId) {
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        if self.live.tasks.insert(task) {
            if let Some(r) = &t.spec.role {
                *self.live.by_role.entry(r.clone()).or_default() += 1;
            }
            if let Some(l) = &t.spec.lineage {
                self.live.children.entry(l.parent).or_default().insert(task);
            }
        }
        self.emit_task(task);
    }

    /// Stops counting a task that has ended or is forgotten.
    fn index_ended(&mut self, task: TaskId, role: Option<&str>, parent: Option<TaskId>) {
        if !self.live.tasks.remove(&task) {
            return;
        }
        if let Some(r) = role
            && let Some(n) = self.live.by_role.get_mut(r)
        {
            *n -= 1;
            if *n == 0 {
                self.live.by_role.remove(r);
            }
        }
        if let Some(parent) = parent
            && let Some(children) = self.live.children.get_mut(&parent)
        {
            children.remove(&task);
            if children.is_empty() {
                self.live.children.remove(&parent);
            }
        }
    }

    /// The task an earlier submission of `owner`'s with `key` made, if remembered.
    pub fn submitted(&self, owner: &str, key: &str) -> Option<TaskId> {
        self.submissions.get(&format!("{owner} {key}")).copied()
    }

    /// The children of `parent` (spawned through `wasmos:task/spawn`) that have not ended.
    pub fn live_children(&self, parent: TaskId) -> impl Iterator<Item = TaskId> + '_ {
        self.live
            .children
            .get(&parent)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Live spawned tasks whose parent has ended (which a new leader ends, in case the one
    /// that saw the parent end did not get to it).
    pub fn orphans(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.live
            .children
            .iter()
            .filter(|(parent, _)| {
                self.tasks
                    .get(parent)
                    .is_none_or(|p| p.status.state.is_terminal())
            })
            .flat_map(|(_, children)| children.iter().copied())
    }

    /// Live tasks by role, as (role, count): roles with none are absent.
    pub(crate) fn live_by_role(&self) -> impl Iterator<Item = (&str, u64)> {
        self.live.by_role.iter().map(|(r, n)| (r.as_str(), *n))
    }

    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        self.reindex();
        match cmd {
            Command::Batch(cmds) => CommandResult::Batch(
                cmds.into_iter()
                    .map(|cmd| match cmd {
                        // One level only: a batch is the unit of one raft entry, not a tree.
                        Command::Batch(_) => CommandResult::Rejected(Rejection::Invalid(
                            "a batch may not contain a batch".to_string(),
                        )),
                        cmd => self.apply(cmd),
                    })
                    .collect(),
            ),
            Command::Audited { entry, cmd } => self.audited(entry, cmd),
            cmd => {
                let note = self.note(&cmd);
                let result = self.apply_one(cmd);
                if let Some(note) = note {
                    self.noted(note, &result);
                }
                result
            }
        }
    }

    /// `apply` of a command that holds no other.
    fn apply_one(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::Batch(_) | Command::Audited { .. } => CommandResult::Rejected(
                Rejection::Invalid("a command that holds others, held by one".to_string()),
            ),
            cmd @ (Command::RegisterAgent { .. }
            | Command::AssignTask { .. }
            | Command::AgentStatus { .. }
            | Command::AgentLost { .. }
            | Command::DrainAgent { .. }
            | Command::ResizeAgent { .. }
            | Command::ScheduleMaintenance { .. }
            | Command::AnswerInverseOffer { .. }
            | Command::MaintenanceWindowAt { .. }) => self.apply_agents(cmd),
            cmd @ (Command::SubmitTask { .. }
            | Command::Progress { .. }
            | Command::SetStatus { .. }
            | Command::Launch { .. }) => self.apply_tasks(cmd),
            cmd @ (Command::RegisterFramework { .. }
            | Command::SetFailoverTimeout { .. }
            | Command::Acknowledge { .. }
            | Command::RemoveFramework { .. }) => self.apply_frameworks(cmd),
            cmd @ (Command::SubmitJob { .. } | Command::Job { .. }) => self.apply_jobs(cmd),
            cmd @ (Command::SetRole { .. } | Command::RemoveReservation { .. }) => {
                self.apply_roles(cmd)
            }
            cmd @ (Command::AddBundle { .. } | Command::Collect { .. }) => self.apply_storage(cmd),
            Command::Revoke { target, by, now_ms } => self.revoke(target, by, now_ms),
            Command::ForgetAudit { before_ms } => self.forget_audit(before_ms),
            Command::AddSigningKey {
                id,
                public,
                by,
                now_ms,
            } => self.add_signing_key(id, public, by, now_ms),
            Command::RevokeSigningKey { id, by, now_ms } => {
                self.revoke_signing_key(&id, by, now_ms)
            }
            Command::SignBundle { hash, signature } => self.sign_bundle(&hash, signature),
        }
    }

    fn revoke(&mut self, target: RevokeTarget, by: String, now_ms: u64) -> CommandResult {
        let (is_identity, key) = match target {
            RevokeTarget::Serial(serial) => {
                let hex = serial.len() <= 40
                    && serial.len() >= 2
                    && serial.len() % 2 == 0
                    && serial
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !hex || (serial.starts_with("00") && serial != "00") {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "`{}` is not a certificate serial number (lowercase hex, at most 20 bytes)",
                        serial.chars().take(48).collect::<String>()
                    )));
                }
                (false, serial)
            }
            RevokeTarget::Identity(uri) => {
                if uri.len() > MAX_REVOKED_IDENTITY_BYTES || !uri.starts_with("wasmos://") {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "`{}` is not an identity (wasmos://..., at most {MAX_REVOKED_IDENTITY_BYTES} bytes)",
                        uri.chars().take(48).collect::<String>()
                    )));
                }
                (true, uri)
            }
        };
        let held = if is_identity {
            &self.revoked_identities
        } else {
            &self.revoked_serials
        };
        if held.contains_key(&key) {
            return CommandResult::Ok;
        }
        if self.revoked_serials.len() + self.revoked_identities.len() >= MAX_REVOCATIONS {
            return CommandResult::Rejected(Rejection::OverLimit(format!(
                "the cluster holds {MAX_REVOCATIONS} revocations, the most it keeps"
            )));
        }
        let map = if is_identity {
            &mut self.revoked_identities
        } else {
            &mut self.revoked_serials
        };
        map.insert(key, Revocation { by, at_ms: now_ms });
        CommandResult::Ok
    }

    fn remove_reservation(&mut self, agent: &AgentId, role: &Role) -> CommandResult {
        let Some(have) = self
            .reservations
            .get(agent)
            .and_then(|r| r.get(role))
            .cloned()
        else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "role {role} holds no dynamic reservation on agent {agent}"
            )));
        };
        let mut held = Resources::default();
        for id in self.live_tasks_on(agent) {
            if let Some(r) = self.charges.get(&id).and_then(|c| c.reserved.get(role)) {
                held = held.saturating_add(r);
            }
        }
        let keep = have.min(&held);
        let removed = have.saturating_sub(&keep);
        if let Some(by_role) = self.reservations.get_mut(agent) {
            if keep.is_empty() {
                by_role.remove(role);
            } else {
                by_role.insert(role.clone(), keep.clone());
            }
            if by_role.is_empty() {
                self.reservations.remove(agent);
            }
        }
        CommandResult::Unreserved {
            removed,
            held: keep,
        }
    }

    fn collect(&mut self, before_ms: u64, keep: u64) -> CommandResult {
        // The count is kept per tenant (operators' tasks as one more): one tenant's flood of
        // short tasks must not push the others' history out.
        let mut ended: BTreeMap<Option<&str>, Vec<(u64, TaskId)>> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.status.state.is_terminal() {
                ended
                    .entry(tenant_of(&t.owner))
                    .or_default()
                    .push((t.updated_ms, t.id));
            }
        }
        let unacked: BTreeSet<TaskId> = self.unacked.iter().map(|(_, t)| *t).collect();
        let mut forget = Vec::new();
        for mut list in ended.into_values() {
            list.sort_unstable();
            let excess = list.len().saturating_sub(keep as usize);
            for (i, (at, id)) in list.into_iter().enumerate() {
                if (at < before_ms || i < excess) && !unacked.contains(&id) {
                    forget.push(id);
                }
            }
        }
        let tasks = forget.len() as u64;
        for id in forget {
            if let Some(t) = self.tasks.remove(&id) {
                self.index_ended(id, t.spec.role.as_deref(), None);
            }
        }
        let jobs_before = self.jobs.len();
        self.jobs
            .retain(|_, j| !(j.state.is_terminal() && j.ended_ms.is_some_and(|e| e < before_ms)));
        let jobs = (jobs_before - self.jobs.len()) as u64;
        let mut named: BTreeSet<&BundleHash> = BTreeSet::new();
        for t in self.tasks.values() {
            if !t.status.state.is_terminal() {
                named.extend(spec_blobs(&t.spec));
            }
            named.extend(t.status.outputs.iter().map(|o| &o.blob));
            named.extend(t.status.files.iter().map(|f| &f.blob));
        }
        for j in self.jobs.values() {
            for g in &j.spec.groups {
                named.extend(spec_blobs(&g.task));
                named.extend(g.inputs.iter().flatten().map(|i| &i.blob));
            }
            for (_, outputs) in j.done.values() {
                named.extend(outputs.iter().map(|o| &o.blob));
            }
        }
        let gone: Vec<BundleHash> = self
            .bundles
            .iter()
            .filter(|(h, b)| b.added_ms < before_ms && !named.contains(h))
            .map(|(h, _)| h.clone())
            .collect();
        for h in &gone {
            self.bundles.remove(h);
        }
        CommandResult::Collected {
            tasks,
            jobs,
            blobs: gone.len() as u64,
        }
    }

    /// Everything reserved on `agent`, static and dynamic, by role.
    pub fn reserved_on(&self, agent: &AgentId) -> BTreeMap<Role, Resources> {
        let mut out = self
            .agents
            .get(agent)
            .map(|a| a.reserved.clone())
            .unwrap_or_default();
        for (role, r) in self.reservations.get(agent).into_iter().flatten() {
            let e = out.entry(role.clone()).or_default();
            *e = e.saturating_add(r);
        }
        out
    }

    /// What the live tasks on `agent` hold, by pool. Tasks placed without an offer (before
    /// offers existed) count as unreserved.
    pub fn held_on(&self, agent: &AgentId) -> Pools {
        let mut held = Pools::default();
        for id in self.live_tasks_on(agent) {
            match (self.charges.get(&id), self.tasks.get(&id)) {
                (Some(c), _) => held.add(c),
                (None, Some(t)) => {
                    held.unreserved = held.unreserved.saturating_add(&t.spec.resources);
                }
                (None, None) => {}
            }
        }
        held
    }

    fn check_launch(
        &self,
        framework: FrameworkId,
        agent: &AgentId,
        reservations: &[ReservationOp],
        tasks: &[LaunchTask],
    ) -> Result<(), Rejection> {
        let fw = self.live_framework(framework)?;
        let record = self
            .agents
            .get(agent)
            .ok_or_else(|| Rejection::NotFound(format!("unknown agent {agent}")))?;
        if record.draining && !tasks.is_empty() {
            return Err(draining(agent));
        }
        let mut reserved = self.reserved_on(agent);
        let mut dynamic = self.reservations.get(agent).cloned().unwrap_or_default();
        let mut held = self.held_on(agent);
        let mut earlier: Vec<(Role, Resources)> = Vec::new();
        for op in reservations {
            match op {
                ReservationOp::Reserve { role, resources } => {
                    if !role.is_within(&fw.role) {
                        return Err(Rejection::Invalid(format!(
                            "framework {framework} of role {} cannot reserve for role {role}",
                            fw.role
                        )));
                    }
                    self.check_reservation(role, resources, &earlier)?;
                    earlier.push((role.clone(), resources.clone()));
                    let e = reserved.entry(role.clone()).or_default();
                    *e = e.saturating_add(resources);
                    let d = dynamic.entry(role.clone()).or_default();
                    *d = d.saturating_add(resources);
                }
                ReservationOp::Unreserve { role, resources } => {
                    let d = dynamic.get(role).cloned().unwrap_or_default();
                    if !resources.fits_in(&d) {
                        return Err(Rejection::Conflict(format!(
                            "cannot unreserve {resources} of role {role} on {agent}: only {d} is dynamically reserved"
                        )));
                    }
                    if let Some(e) = reserved.get_mut(role) {
                        *e = e.saturating_sub(resources);
                    }
                    if let Some(e) = dynamic.get_mut(role) {
                        *e = e.saturating_sub(resources);
                    }
                }
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            if !ids.insert(t.id) {
                return Err(Rejection::Invalid(format!("task {} appears twice", t.id)));
            }
            let resources = match (&t.spec, self.tasks.get(&t.id)) {
                (None, Some(info))
                    if info.agent.is_none() && info.status.state == TaskState::Staging =>
                {
                    &info.spec.resources
                }
                (None, Some(_)) => {
                    return Err(Rejection::Conflict(format!(
                        "task {} is already placed",
                        t.id
                    )));
                }
                (None, None) => return Err(Rejection::NotFound(format!("unknown task {}", t.id))),
                (Some(_), Some(_)) => {
                    return Err(Rejection::Conflict(format!("task {} already exists", t.id)));
                }
                (Some(spec), None) => {
                    self.check_blobs(spec, &fw.owner)?;
                    check_sealed(spec)?;
                    let role = match &spec.role {
                        Some(r) => Role::new(r).map_err(|e| Rejection::Invalid(e.to_string()))?,
                        None => fw.role.clone(),
                    };
                    self.check_signed(&spec.bundle, role.as_str())?;
                    self.check_ceilings(spec, &role, created)?;
                    created += 1;
                    &spec.resources
                }
            };
            if &t.charge.total() != resources {
                return Err(Rejection::Invalid(format!(
                    "task {} is charged {} but needs {resources}",
                    t.id,
                    t.charge.total()
                )));
            }
            let task_role = match (&t.spec, self.tasks.get(&t.id)) {
                (Some(spec), _) => spec.role.clone(),
                (None, Some(info)) => info.spec.role.clone(),
                (None, None) => None,
            }
            .unwrap_or_else(|| fw.role.to_string());
            for role in t.charge.reserved.keys() {
                if !Role::new(&task_role).is_ok_and(|r| r.is_within(role)) {
                    return Err(Rejection::Invalid(format!(
                        "task {} of role {task_role} cannot use resources reserved for {role}",
                        t.id
                    )));
                }
            }
            held.add(&t.charge);
        }
        let all_reserved = reserved
            .values()
            .fold(Resources::default(), |acc, r| acc.saturating_add(r));
        if !all_reserved.fits_in(&record.total) {
            return Err(Rejection::OverLimit(format!(
                "agent {agent} would have {all_reserved} reserved but has {}",
                record.total
            )));
        }
        let unreserved = record.total.saturating_sub(&all_reserved);
        if !held.unreserved.fits_in(&unreserved) {
            return Err(Rejection::OverLimit(format!(
                "agent {agent} has {unreserved} unreserved; its tasks would hold {}",
                held.unreserved
            )));
        }
        for (role, r) in &held.reserved {
            let have = reserved.get(role).cloned().unwrap_or_default();
            if !r.fits_in(&have) {
                return Err(Rejection::OverLimit(format!(
                    "agent {agent} has {have} reserved for {role}; its tasks would hold {r}"
                )));
            }
        }
        if !held.revocable.fits_in(&record.total) {
            return Err(Rejection::OverLimit(format!(
                "agent {agent} has {}; its best-effort tasks would hold {}",
                record.total, held.revocable
            )));
        }
        Ok(())
    }

    fn launch(
        &mut self,
        framework: FrameworkId,
        agent: AgentId,
        reservations: Vec<ReservationOp>,
        tasks: Vec<LaunchTask>,
        now_ms: u64,
    ) {
        let dynamic = self.reservations.entry(agent.clone()).or_default();
        for op in reservations {
            match op {
                ReservationOp::Reserve { role, resources } => {
                    let e = dynamic.entry(role).or_default();
                    *e = e.saturating_add(&resources);
                }
                ReservationOp::Unreserve { role, resources } => {
                    if let Some(e) = dynamic.get_mut(&role) {
                        *e = e.saturating_sub(&resources);
                        if e.is_empty() {
                            dynamic.remove(&role);
                        }
                    }
                }
            }
        }
        if dynamic.is_empty() {
            self.reservations.remove(&agent);
        }
        let owner = self
            .frameworks
            .get(&framework)
            .map(|f| f.owner.clone())
            .unwrap_or_default();
        for t in tasks {
            self.next_task_id = self.next_task_id.max(t.id.0);
            let info = match t.spec {
                Some(spec) => {
                    self.tasks
                        .entry(t.id)
                        .or_insert(staging(t.id, spec, owner.clone(), now_ms))
                }
                // Checked to exist.
                None => match self.tasks.get_mut(&t.id) {
                    Some(info) => info,
                    None => continue,
                },
            };
            info.framework = Some(framework);
            info.agent = Some(agent.clone());
            info.updated_ms = now_ms;
            self.charges.insert(t.id, t.charge);
            self.index_new(t.id);
        }
    }

    fn finish(&mut self, task: TaskId, state: TaskState, reason: Reason, msg: &str, now_ms: u64) {
        if let Some(info) = self.tasks.get_mut(&task) {
            // Keep the usage last reported: it was consumed even if the end was not seen.
            info.status = TaskStatus {
                fuel_used: info.status.fuel_used,
                cpu_ms: info.status.cpu_ms,
                peak_mem_bytes: info.status.peak_mem_bytes,
                ..TaskStatus::with_reason(state, Some(reason), msg)
            };
            info.updated_ms = now_ms;
        }
        self.charges.remove(&task);
        self.status_changed(task);
    }

    /// Gives a task's new status its update id, and queues it for its framework when that
    /// framework acknowledges updates.
    fn status_changed(&mut self, task: TaskId) {
        let Some(info) = self.tasks.get_mut(&task) else {
            return;
        };
        info.status_seq += 1;
        let ended = info
            .status
            .state
            .is_terminal()
            .then(|| (info.spec.role.clone(), info.spec.lineage.map(|l| l.parent)));
        let framework = info.framework;
        if let Some(fw) = framework
            && self
                .frameworks
                .get(&fw)
                .is_some_and(|f| f.acknowledges && f.removed_ms.is_none())
        {
            self.unacked.insert((fw, task));
        }
        if let Some((role, parent)) = ended {
            self.index_ended(task, role.as_deref(), parent);
        }
        self.emit_task(task);
    }

    /// The framework, if it exists and has not been removed.
    pub fn live_framework(&self, id: FrameworkId) -> Result<&FrameworkRecord, Rejection> {
        match self.frameworks.get(&id) {
            None => Err(Rejection::NotFound(format!("unknown framework {id}"))),
            Some(f) if f.removed_ms.is_some() => Err(Rejection::NotFound(format!(
                "framework {id} was removed (torn down, or away longer than its failover timeout)"
            ))),
            Some(f) => Ok(f),
        }
    }

    /// Whether `task` belongs to a framework that has been removed (its tasks are to end).
    pub fn framework_removed(&self, task: &TaskInfo) -> bool {
        task.framework
            .is_some_and(|fw| self.live_framework(fw).is_err())
    }

    /// Non-terminal tasks placed on `agent`, in id order.
    pub fn live_tasks_on<'a>(&'a self, agent: &'a AgentId) -> impl Iterator<Item = TaskId> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.agent.as_ref() == Some(agent) && !t.status.state.is_terminal())
            .map(|t| t.id)
    }

    /// Resources reserved on `agent` by its live tasks.
    pub fn used_on(&self, agent: &AgentId) -> Resources {
        self.live_tasks_on(agent)
            .filter_map(|id| self.tasks.get(&id))
            .fold(Resources::default(), |acc, t| {
                acc.saturating_add(&t.spec.resources)
            })
    }

    /// Resources reserved by live tasks, for every agent at once: one pass over the tasks
    /// instead of one per agent. Agents without live tasks are absent.
    pub fn used_by_agent(&self) -> BTreeMap<&AgentId, Resources> {
        let mut used: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| !t.status.state.is_terminal())
        {
            if let Some(agent) = &t.agent {
                let entry = used.entry(agent).or_default();
                *entry = entry.saturating_add(&t.spec.resources);
            }
        }
        used
    }
}

/// Every blob a spec names.
pub fn spec_blobs(spec: &TaskSpec) -> impl Iterator<Item = &BundleHash> {
    std::iter::once(&spec.bundle)
        .chain(spec.stdin.iter())
        .chain(spec.mounts.iter().map(|m| &m.archive))
        .chain(spec.inputs.iter().map(|i| &i.blob))
}

/// The replicated state never holds a secret in plain text.
fn check_sealed(spec: &TaskSpec) -> Result<(), Rejection> {
    match spec
        .secret_env
        .iter()
        .find(|s| !matches!(s.value, wasmos_proto::SecretValue::Sealed(_)))
    {
        Some(s) => Err(Rejection::Invalid(format!(
            "secret {} was not sealed by the master",
            s.name
        ))),
        None => Ok(()),
    }
}

/// A task as it is first recorded: staging, on no agent, with no updates yet.
fn staging(id: TaskId, spec: TaskSpec, owner: String, now_ms: u64) -> TaskInfo {
    TaskInfo {
        id,
        spec,
        owner,
        framework: None,
        agent: None,
        status: TaskStatus::new(TaskState::Staging),
        submitted_ms: now_ms,
        updated_ms: now_ms,
        status_seq: 0,
        acked_seq: 0,
        progress: None,
    }
}

/// Why nothing is placed on `agent`: an operator drained it.
fn draining(agent: &AgentId) -> Rejection {
    Rejection::Conflict(format!(
        "agent {agent} is draining for maintenance: nothing is placed on it"
    ))
}

#[cfg(test)]
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
