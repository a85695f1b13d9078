//! Messages of each channel. A client request travels on its own QUIC stream and is answered on
//! it; an agent keeps one long-lived control stream with the master.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AgentId, BundleHash, Resources, TaskId, TaskInfo, TaskSpec, TaskStatus};

/// Requests on the `wasmos-client/1` channel, one per bidirectional stream.
// Messages live only between decoding and handling, one at a time: boxing the large variant
// would buy nothing but indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Does the master already hold this bundle? Lets the CLI skip an identical upload.
    HasBundle {
        hash: BundleHash,
    },
    /// Followed on the same stream by exactly `size` raw bytes, then the end of the stream.
    /// A `Component` must be a Wasm component; `Data` (stdin, input files) may be anything.
    PushBundle {
        hash: BundleHash,
        size: u64,
        kind: BlobKind,
    },
    /// A blob's bytes (a task's output file, say): answered `Blob` followed by the bytes.
    /// Tenants may fetch only blobs their own tasks name.
    GetBlob {
        hash: BundleHash,
    },
    SubmitTask {
        spec: TaskSpec,
        /// Chosen by the client, unique per submission: resending the same submission (its
        /// answer was lost when a master failed) returns the task the first one created.
        #[serde(default)]
        key: Option<String>,
    },
    /// A page of tasks in id order, filtered; answered `Tasks`. A page holds at most
    /// `limit` tasks (at most [`MAX_TASK_PAGE`]) and never more than fits in one message:
    /// ask again with `after` set to the last id for the next.
    ListTasks {
        filter: TaskFilter,
    },
    GetTask {
        id: TaskId,
    },
    /// What a task used while it ran, as its agent measured it each heartbeat: answered
    /// `Usage`. Kept in memory by the leader the agent reports to, for the last
    /// [`USAGE_SAMPLES`] heartbeats of each task (empty when asked of another master).
    TaskUsage {
        id: TaskId,
    },
    /// Starts a batch job or service, run by the master's built-in frameworks.
    SubmitJob {
        spec: crate::JobSpec,
    },
    /// Jobs and services with ids above `after`, oldest first, without their results (`GetJob`
    /// has them): a page that fits in one message; ask again from the last id for the rest.
    ListJobs {
        after: Option<crate::JobId>,
    },
    GetJob {
        id: crate::JobId,
    },
    /// Stops a job: its tasks are killed.
    KillJob {
        id: crate::JobId,
    },
    /// Sets how many instances a service group keeps running.
    ScaleJob {
        id: crate::JobId,
        group: String,
        count: u32,
    },
    /// A service group's new definition (same name): its instances are replaced by ones of the
    /// new task, at most the group's `max_unavailable` at a time.
    UpdateService {
        id: crate::JobId,
        group: Box<crate::GroupSpec>,
    },
    ListAgents,
    /// Streams the task's output from the start; with `follow`, keeps streaming until the task
    /// ends and closes with `TaskEnded`.
    WatchTask {
        id: TaskId,
        follow: bool,
    },
    KillTask {
        id: TaskId,
    },
    /// Operators only: changes a role's weight, quota, ceilings, reservation allowance and
    /// egress rules. `None` leaves a field as it is; `limit: Some(None)` removes the limit;
    /// each ceiling set in `ceilings` replaces that one.
    SetRole {
        role: String,
        weight_milli: Option<u64>,
        guarantee: Option<Resources>,
        limit: Option<Option<Resources>>,
        /// Forget the role's own ceilings first (the defaults, or its ancestors', hold
        /// again); `ceilings` then sets the ones it names.
        clear_ceilings: bool,
        ceilings: crate::Ceilings,
        reservation_allowance: Option<Option<Resources>>,
        egress: Option<Vec<crate::EgressRule>>,
        /// The signing keys (ids) one of which must have signed every bundle the role's tasks
        /// run (its sub-roles' too, unless one sets its own); an empty list lifts the
        /// requirement.
        require_signed_by: Option<Vec<String>>,
    },
    /// Dynamic reservations, by agent and role (tenants see their own roles').
    ListReservations,
    /// Operators only: removes what `role` has dynamically reserved on `agent`, except what its
    /// live tasks hold.
    RemoveReservation {
        agent: AgentId,
        role: String,
    },
    /// Operators only: drains `agent` (`drain`: no new tasks are placed there and its live ones
    /// are killed with reason `maintenance`, each task that imports `cancellation` within its
    /// grace period) or ends its drain (it is offered again). Kept across the agent's
    /// restarts and the masters' failovers until undone.
    DrainAgent {
        agent: AgentId,
        drain: bool,
    },
    /// Operators only: `agent` offers `total` from now on in place of what it advertises (at
    /// most that, in every kind; kept across its restarts), or again what it advertises
    /// (`None`). Its outstanding offers are rescinded and made again; tasks already placed keep
    /// running, and nothing more of a kind they hold beyond the new total is offered.
    ResizeAgent {
        agent: AgentId,
        total: Option<Resources>,
    },
    /// Operators only: a maintenance window for `agents` (`None` cancels theirs). Frameworks
    /// running tasks there get inverse offers at once; at `start_ms` each agent is drained (its
    /// tasks stopped with reason `maintenance`), at `end_ms` offered again.
    ScheduleMaintenance {
        agents: Vec<AgentId>,
        window: Option<MaintenanceWindow>,
    },
    /// Roles with their configuration and what they hold now (tenants see their own).
    ListRoles,
    /// Frameworks not removed (tenants see their tenant's).
    ListFrameworks,
    /// Ends a framework as its own `Teardown` would: its tasks are killed and its id retired.
    /// Its owner or an operator; not a job's or service's (stop those), nor the master's own.
    TeardownFramework {
        id: crate::FrameworkId,
    },
    /// The answering master's view of the master group (answered by any master).
    ClusterStatus,
    /// Operators only, to a master started with `--join` that belongs to no group yet: start a
    /// group with this master as its only voter.
    InitCluster,
    /// Operators only: add master `id`, started with `--join` and reachable by its peers at
    /// `addr`, as a voter (it catches up first; joint consensus).
    AddMaster {
        id: u64,
        addr: String,
    },
    /// Operators only: remove master `id` from the group (joint consensus).
    RemoveMaster {
        id: u64,
    },
    /// A read (list, show, watch, has-bundle) answered from this master's applied state even if
    /// it is a follower, so possibly behind the leader. Without it a follower redirects reads to
    /// the leader like writes.
    Stale(Box<ClientRequest>),
    /// Operators only: revokes a certificate (by serial number) or every certificate of an
    /// identity, for good. Exactly one of the two.
    Revoke {
        serial: Option<String>,
        identity: Option<String>,
    },
    /// Operators only: what is revoked, serials first then identities, in order, a page at a
    /// time (at most [`MAX_REVOKED_PAGE`]): those after `after` (a kind and value of the
    /// previous page's last entry). An empty page ends the list.
    ListRevoked {
        after: Option<(String, String)>,
    },
    /// Operators only: audit log entries, oldest first, a page (at most [`MAX_AUDIT_PAGE`]
    /// matching, [`MAX_AUDIT_SCAN`] looked at) at a time.
    ListAudit {
        filter: AuditFilter,
    },
    /// Adds a signature to a bundle the caller may read: the key must be registered and not
    /// revoked, and the signature must verify over the bundle's hash.
    SignBundle {
        hash: BundleHash,
        signature: crate::BundleSignature,
    },
    /// Operators only: registers an ed25519 public key (32 raw bytes) roles may require;
    /// answered `SigningKeyAdded` with its id.
    AddSigningKey {
        public: Vec<u8>,
    },
    /// Operators only: a revoked signing key vouches for no bundle from then on, for good.
    RevokeSigningKey {
        key: String,
    },
    /// Operators only: the registered signing keys.
    ListSigningKeys,
    /// A new certificate for the caller's own identity (as its current certificate names
    /// it), for the key whose certificate signing request (DER) this is; answered
    /// `Certificate`. The private key never leaves the caller.
    RenewCertificate {
        csr: Vec<u8>,
    },
    /// Operators: every agent connected to the leader renews its certificate now, whatever
    /// is left of it (the third step of a CA rollover); answered `AgentsAsked`.
    RenewAgents,
    /// The cluster's events from raft index `from` on (the oldest still held when `None`),
    /// of these topics (all when empty), that the caller may see: answered by `Events`
    /// frames; without `follow` the last one has `end` set, with it the stream goes on, a
    /// frame (perhaps empty) at least every few seconds so the reader knows where it is.
    WatchEvents {
        from: Option<u64>,
        topics: Vec<crate::Topic>,
        follow: bool,
    },
}

/// Largest certificate signing request a master reads.
pub const MAX_CSR_BYTES: usize = 8 << 10;

/// Most entries one `ListRevoked` answer holds.
pub const MAX_REVOKED_PAGE: usize = 5000;

/// Most entries one `ListAudit` answer holds, and most it looks at (so a filter that matches
/// little costs the master a bounded scan per call).
pub const MAX_AUDIT_PAGE: usize = 2000;
pub const MAX_AUDIT_SCAN: usize = 20_000;

/// Which audit entries a `ListAudit` asks for (all of these that are given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Entries after this sequence number (0: from the oldest kept).
    pub after: u64,
    /// Entries at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Calls by this identity (`wasmos://...`).
    pub identity: Option<String>,
    /// Calls of this action (`submit`, `kill`, ...).
    pub action: Option<String>,
}

/// One call to the cluster, as the audit log keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log, from 1, never reused (set when it is applied).
    pub seq: u64,
    /// When the master took the call (its clock).
    pub at_ms: u64,
    /// The caller's identity (`wasmos://...`).
    pub identity: String,
    /// The caller's address as the master saw it.
    pub peer: String,
    /// `quic` or `https`.
    pub channel: String,
    /// What the call asked for (`submit`, `kill`, `revoke`...).
    pub action: String,
    /// What it named (a task id, a role, a hash...), empty when nothing; a new task's, job's
    /// or framework's id when the call made one.
    pub object: String,
    /// `ok`, `rejected: ...` (by the state, with the write) or `refused: ...` (before it).
    pub result: String,
}

impl ClientRequest {
    /// Whether the request only reads, so a follower may answer it when asked to (`Stale`).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            ClientRequest::HasBundle { .. }
                | ClientRequest::GetBlob { .. }
                | ClientRequest::ListTasks { .. }
                | ClientRequest::ListReservations
                | ClientRequest::ListFrameworks
                | ClientRequest::ListJobs { .. }
                | ClientRequest::GetJob { .. }
                | ClientRequest::GetTask { .. }
                | ClientRequest::TaskUsage { .. }
                | ClientRequest::ListAgents
                | ClientRequest::WatchTask { .. }
                | ClientRequest::ListRoles
                | ClientRequest::ClusterStatus
                | ClientRequest::ListRevoked { .. }
                | ClientRequest::ListAudit { .. }
                | ClientRequest::ListSigningKeys
                | ClientRequest::WatchEvents { .. }
        )
    }

    /// Whether more than one answer travels on the request's stream (an upload's bytes, a
    /// blob's, a watch's frames): such a request needs a channel of its own, not a call that
    /// returns one answer. A stale request is streamed when the one it wraps is.
    pub fn is_streamed(&self) -> bool {
        match self {
            ClientRequest::Stale(inner) => inner.is_streamed(),
            r => matches!(
                r,
                ClientRequest::WatchTask { .. }
                    | ClientRequest::WatchEvents { .. }
                    | ClientRequest::PushBundle { .. }
                    | ClientRequest::GetBlob { .. }
            ),
        }
    }
}

/// Most tasks one `ListTasks` answer holds.
pub const MAX_TASK_PAGE: u32 = 1000;

/// Which tasks a `ListTasks` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFilter {
    /// Only tasks in these states (all when empty).
    pub states: Vec<crate::TaskState>,
    /// Only tasks with ids above this one.
    pub after: Option<TaskId>,
    /// At most this many (and at most [`MAX_TASK_PAGE`]); `None` for the most.
    pub limit: Option<u32>,
}

/// A dynamic reservation as `wasmos reservation list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    pub agent: AgentId,
    pub role: String,
    pub resources: Resources,
    /// What live tasks of the role hold of it on that agent.
    pub held: Resources,
}

/// A revocation as `wasmos cert list-revoked` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedInfo {
    /// `serial` or `identity`.
    pub kind: String,
    /// The serial number (lowercase hex) or the identity URI.
    pub value: String,
    /// The operator who revoked it.
    pub by: String,
    pub at_ms: u64,
}

/// A framework as `wasmos framework list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkSummary {
    pub id: crate::FrameworkId,
    pub name: String,
    pub role: String,
    /// The identity that subscribed it.
    pub owner: String,
    pub registered_ms: u64,
    /// The job or service it runs, if it is one's.
    pub job: Option<crate::JobId>,
    /// Its tasks not yet ended.
    pub live_tasks: u64,
    /// Its session and the offers it holds, as the leader's offer cycle knows them (`None`
    /// when answered by another master, from `--stale`).
    pub offers: Option<FrameworkOffers>,
}

/// A framework as the leader's offer cycle sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkOffers {
    /// Whether it is subscribed now (the built-in frameworks always are).
    pub subscribed: bool,
    /// Offers made to it and not yet answered.
    pub outstanding: u64,
    /// What those offers hold.
    pub offered: Resources,
}

/// How many heartbeats of usage the leader keeps per task (about two minutes at the default
/// interval of a second).
pub const USAGE_SAMPLES: usize = 120;

/// Most tasks one heartbeat reports usage for; an agent running more reports those it
/// started first.
pub const MAX_TASK_SAMPLES: usize = 4096;

/// What one running task used over one heartbeat interval, as its agent measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSample {
    pub task: TaskId,
    /// CPU over the interval, in thousandths of a core.
    pub cpu_millis: u64,
    /// Linear memory its instance holds.
    pub mem_bytes: u64,
    /// What it said of its progress since the last heartbeat, if it did.
    pub progress: Option<crate::TaskProgress>,
}

/// One point of a task's usage over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSample {
    /// When the leader received it (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// CPU over the interval before it, in thousandths of a core.
    pub cpu_millis: u64,
    pub mem_bytes: u64,
}

/// What an uploaded blob is for; both live in the same content-addressed store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    Component,
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    InvalidRequest,
    InvalidBundle,
    TooLarge,
    Unavailable,
    Internal,
    /// A follow (`WatchTask` with `follow`) over the tenant's limit of open follows: the task
    /// can still be watched without following.
    TooManyFollows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Ok,
    HasBundle(bool),
    /// Followed by exactly `size` raw bytes.
    Blob {
        size: u64,
    },
    Submitted {
        id: TaskId,
    },
    Tasks(Vec<TaskInfo>),
    JobSubmitted {
        id: crate::JobId,
    },
    Jobs(Vec<crate::JobInfo>),
    Task(Box<TaskInfo>),
    Agents(Vec<AgentInfo>),
    Roles(Vec<RoleInfo>),
    Reservations(Vec<ReservationInfo>),
    Frameworks(Vec<FrameworkSummary>),
    /// A task's usage over time, oldest first.
    Usage {
        task: TaskId,
        samples: Vec<UsageSample>,
    },
    /// A `DrainAgent` done: how many of the agent's live tasks were asked to stop.
    Drained {
        killed: u32,
    },
    /// A `ResizeAgent` done: what the agent has in all now, and what its tasks hold.
    Resized {
        total: Resources,
        used: Resources,
    },
    /// A `RemoveReservation` done: what was removed, and what live tasks still hold.
    Unreserved {
        removed: Resources,
        held: Resources,
    },
    Cluster(Box<ClusterInfo>),
    Output {
        stream: OutputStream,
        data: Vec<u8>,
    },
    /// The last message of a watch: the task's final record.
    TaskEnded(Box<TaskInfo>),
    /// The watch without `follow` has sent all output there is.
    EndOfOutput,
    /// Events of a `WatchEvents`, in index order: resume from `next` to miss none and see
    /// none twice.
    Events {
        events: Vec<crate::Event>,
        next: u64,
        /// Set when events asked for are no longer held (history is bounded, and starts anew
        /// when a master restarts or installs a snapshot): the index the stream starts at.
        lost_until: Option<u64>,
        /// The last frame of a `WatchEvents` without `follow`.
        end: bool,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// This master is not the leader (or the request needs one and there is none): send the
    /// request to `leader` at `addr`, when known.
    NotLeader {
        leader: Option<u64>,
        addr: Option<String>,
    },
    Revoked(Vec<RevokedInfo>),
    SigningKeys(Vec<crate::SigningKeyInfo>),
    SigningKeyAdded {
        id: String,
    },
    /// A renewed certificate (PEM), for the key of the request.
    Certificate {
        cert_pem: String,
    },
    /// A page of audit entries; the next page starts after `scanned_to` (entries up to it
    /// were looked at, matching or not), and `newest` is the last entry there is now.
    Audit {
        entries: Vec<AuditEntry>,
        scanned_to: u64,
        newest: u64,
    },
    /// Answer to `RenewAgents`: the agents asked.
    AgentsAsked {
        agents: Vec<crate::AgentId>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentState {
    Active,
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: AgentId,
    pub state: AgentState,
    pub total: Resources,
    /// Held by tasks (best-effort tasks on revocable resources included).
    pub used: Resources,
    /// Reserved for roles, static and dynamic, by role.
    pub reserved: BTreeMap<String, Resources>,
    /// In outstanding offers.
    pub offered: Resources,
    /// Allocated but unused, lendable to best-effort tasks (free of them).
    pub revocable: Resources,
    pub attributes: BTreeMap<String, String>,
    /// The agent's fuel metering rate; 0 when it meters CPU by the thread clock.
    pub fuel_per_core_second: u64,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// Where it serves its kept outputs to other agents; shown to operators only.
    #[serde(default)]
    pub peer_addr: Option<String>,
    /// Drained by an operator (`wasmos agent drain`): offered nothing until undrained.
    #[serde(default)]
    pub draining: bool,
    /// `total` is an operator's (`wasmos agent set`), not what the agent advertises.
    #[serde(default)]
    pub resized: bool,
    /// Its scheduled or current maintenance window (operators see the answers).
    #[serde(default)]
    pub maintenance: Option<MaintenanceInfo>,
}

/// When an agent is down for maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Most agents one `ScheduleMaintenance` names.
pub const MAX_MAINTENANCE_AGENTS: usize = 256;
/// Longest maintenance window: a week.
pub const MAX_MAINTENANCE_MS: u64 = 7 * 24 * 3_600_000;

/// An agent's maintenance window and what frameworks answered its inverse offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceInfo {
    pub window: MaintenanceWindow,
    /// Under way: the agent is drained.
    pub active: bool,
    pub accepted: Vec<crate::FrameworkId>,
    pub declined: Vec<crate::FrameworkId>,
}

/// One master's view of the master group, as `wasmos cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The master that answered.
    pub node: u64,
    /// Its raft state: `leader`, `follower`, `candidate` or `learner`.
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// The log index its latest snapshot covers.
    pub snapshot: Option<u64>,
    pub members: Vec<MasterInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterInfo {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    /// Reported by the leader: the last log index replicated to this member.
    pub matched: Option<u64>,
}

/// A role as `wasmos role list` shows it. Weights are in thousandths (1000 is weight 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleInfo {
    pub role: String,
    pub weight_milli: u64,
    pub guarantee: Resources,
    pub limit: Option<Resources>,
    /// Held by the role's tasks (its descendants' included).
    pub allocated: Resources,
    pub offered: Resources,
    pub reserved: Resources,
    /// Dominant share of the cluster, in millionths.
    pub share_ppm: u64,
    pub frameworks: u64,
    /// The ceilings this role sets itself (unset ones come from above or the defaults).
    pub ceilings: crate::Ceilings,
    /// The ceilings in force for it, defaults included (the tightest on its path).
    pub effective: crate::EffectiveCeilings,
    pub reservation_allowance: Option<Resources>,
    /// Dynamic reservations it (with its sub-roles) holds now.
    pub dynamically_reserved: Resources,
    pub egress: Vec<crate::EgressRule>,
    /// The signing keys it requires itself (one of them must have signed its tasks' bundles).
    pub require_signed_by: Vec<String>,
    /// The requirement in force for it: its own, or the nearest role above it that sets one
    /// (that role and its keys); `None` when no bundle signature is required.
    pub signers: Option<(String, Vec<String>)>,
}

/// Master to master on `wasmos-peer/1`, one request per stream: the bundle blobs raft does not
/// carry (they are too large for log entries), copied to a majority before an upload is
/// acknowledged and fetched by a master that lacks one it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Followed by exactly `size` raw bytes; answered `Stored` once the copy is on disk.
    PutBlob {
        hash: BundleHash,
        kind: BlobKind,
        size: u64,
    },
    /// Answered `Blob` and the bytes, or `Error` if this master does not hold it.
    GetBlob { hash: BundleHash },
    /// A new certificate for the asking master (the identity and names of the certificate it
    /// connected with) for the key of this signing request (DER, at most [`MAX_CSR_BYTES`]);
    /// answered `Renewed` by a master that holds a CA key, `Error` by others.
    Renew { csr: Vec<u8> },
    /// From a follower to the leader: record this audit entry (of a call the follower
    /// answered itself, which it cannot write); answered `Stored` once committed.
    Audit { entry: AuditEntry },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    Stored,
    /// Followed by exactly `size` raw bytes.
    Blob {
        size: u64,
    },
    /// Answer to `Renew`: the asking master's new certificate (PEM).
    Renewed {
        cert_pem: String,
    },
    Error {
        message: String,
    },
}

/// Agent to agent on `wasmos-agent-peer/1`, one request per stream: an intermediate output the
/// serving agent keeps (`TaskSpec::outputs_on_agent`), fetched by the agent of a task that
/// names it as an input. Only agents of the cluster may ask; the serving agent answers only for
/// blobs it holds as outputs, never for other files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentPeerRequest {
    Fetch { hash: BundleHash },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentPeerResponse {
    /// Followed by exactly `size` raw bytes.
    Blob {
        size: u64,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Where the agent of a task finds an input kept on another agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSource {
    pub blob: BundleHash,
    /// The agent that holds it: the dialing agent checks the certificate names exactly this one.
    pub agent: AgentId,
    /// Its `wasmos-agent-peer/1` address, when it advertised one.
    pub addr: Option<String>,
}

/// A change of a task's status, numbered by the agent so the master can acknowledge it and
/// drop the duplicates that a resend after a reconnect produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub seq: u64,
    pub task: TaskId,
    pub status: TaskStatus,
}

/// Agent to master, on the agent's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentToMaster {
    /// First message. The agent's id is not here: it comes from its certificate.
    Register {
        resources: Resources,
        attributes: BTreeMap<String, String>,
        /// Fuel one core burns per second, as the agent measured at start; 0 when the agent
        /// meters CPU by the thread clock instead of fuel.
        fuel_per_core_second: u64,
        /// Static reservations from the agent's configuration: resources only the named role
        /// (and its descendants) is offered.
        reserved: BTreeMap<String, Resources>,
        /// Tasks this agent is still running (after a reconnect); any other task the master
        /// believes is on this agent is lost.
        running: Vec<TaskId>,
        /// Status updates not yet acknowledged, resent in order.
        pending: Vec<StatusUpdate>,
        /// Where other agents fetch the outputs this agent keeps (`wasmos-agent-peer/1`).
        peer_addr: Option<String>,
    },
    /// First and only message of a probe connection: which master leads, as this one sees it?
    /// An agent whose master has gone silent asks the others, to follow a new leader as soon
    /// as it is elected instead of waiting out the idle timeout. Answered with `Leader`.
    WhoLeads,
    Heartbeat {
        /// What the agent's guaranteed and burstable tasks use now (CPU over the last interval,
        /// memory held): what they hold beyond it is lent to best-effort tasks as revocable.
        usage: Option<Resources>,
        /// Each running task's own usage (best-effort ones too), at most
        /// [`MAX_TASK_SAMPLES`].
        tasks: Vec<TaskSample>,
    },
    Status(StatusUpdate),
    Output {
        task: TaskId,
        stream: OutputStream,
        data: Vec<u8>,
    },
    /// Sent as the first message of a new stream: the master answers with `Bundle` and then the
    /// bundle's raw bytes on that stream.
    FetchBundle {
        hash: BundleHash,
    },
    /// A task's output file, as the first message of a new stream followed by `size` raw
    /// bytes: the master stores it as a data blob (on a majority of masters) and answers
    /// `Stored`, or `Error`.
    PutBlob {
        hash: BundleHash,
        size: u64,
    },
    /// As the first message of a new stream: a new certificate for this agent, for the key of
    /// this certificate signing request (DER); answered `Renewed` or `Error`.
    Renew {
        csr: Vec<u8>,
    },
    /// Task `parent`, running here, asks to start a child (`wasmos:task/spawn`). `seq` numbers
    /// the parent's requests: one sent again (to a new leader) starts no second child.
    /// Answered with `Spawned` on the control stream.
    Spawn {
        parent: TaskId,
        seq: u32,
        spec: crate::ChildSpec,
    },
    /// Task `parent` waits for these children of its: each one's end comes as `ChildEnded`
    /// (at once for those that already ended). Sent again to each new leader.
    WatchChildren {
        parent: TaskId,
        children: Vec<TaskId>,
    },
    /// Task `parent` asks its child to stop.
    KillChild {
        parent: TaskId,
        child: TaskId,
    },
}

/// Master to agent, on the agent's control stream.
#[allow(clippy::large_enum_variant)] // as for `ClientRequest`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterToAgent {
    Registered {
        agent: AgentId,
        heartbeat_interval_ms: u64,
        /// The highest status sequence number already recorded from this agent: a restarted
        /// agent numbers its next updates above it so they are not taken for duplicates.
        last_status_seq: u64,
    },
    Launch {
        task: TaskId,
        /// With secret values in plain text: this channel is the agent's mutual TLS session.
        spec: TaskSpec,
        /// The egress rules of the task's role and the roles above it, most specific first,
        /// tried after the agent's own.
        egress: Vec<crate::EgressRule>,
        /// Inputs kept on other agents, and where those are; other inputs come from masters.
        sources: Vec<InputSource>,
        /// When the task's role requires signed bundles: the keys it trusts and the bundle's
        /// signatures, checked by the agent before it compiles anything.
        trust: Option<crate::BundleTrust>,
    },
    Kill {
        task: TaskId,
        /// Why, when it is not an operator's kill (`Preempted`).
        reason: Option<crate::Reason>,
    },
    /// All status updates up to and including `seq` are durably recorded.
    Ack {
        seq: u64,
    },
    /// The blob of a `PutBlob` is stored.
    Stored,
    /// This master is not (or no longer) the leader: the agent should register with `addr`,
    /// the leader's address when known, and ends this session.
    NotLeader {
        addr: Option<String>,
    },
    /// Answer to `FetchBundle`, followed by `size` raw bytes.
    Bundle {
        size: u64,
    },
    /// Answer to `Renew`: the agent's new certificate (PEM).
    Renewed {
        cert_pem: String,
    },
    Error {
        message: String,
    },
    /// Answer to `WhoLeads`: the leader's address as this master knows it (its own when it
    /// leads), none during an election.
    Leader {
        addr: Option<String>,
    },
    /// Certificates revoked (serials as `serial_of_der` prints them, identity URIs), for the
    /// agent's own handshakes. Revocations are never lifted, so the agent adds these to what
    /// it knows. After `Registered` comes the whole list, in pieces, `complete` on the last;
    /// later messages carry what is new.
    Revoked {
        serials: Vec<String>,
        identities: Vec<String>,
        complete: bool,
    },
    /// Renew this agent's certificate now rather than when it is due (an operator's
    /// `wasmos cert renew --agents`).
    RenewNow,
    /// Answer to `Spawn`: the child's task, or why it was not started.
    Spawned {
        parent: TaskId,
        seq: u32,
        child: Result<TaskId, crate::SpawnRefusal>,
    },
    /// A child a task here waits for has ended.
    ChildEnded {
        parent: TaskId,
        end: crate::ChildEnd,
    },
}
