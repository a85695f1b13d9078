//! The scheduler API on `wasmos-framework/1`: a framework opens one bidirectional stream,
//! subscribes, and from then on sends calls and receives events on it, each side in order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AgentId, FrameworkId, OfferId, Resources, TaskId, TaskSpec, TaskStatus};

/// Framework to master.
#[allow(clippy::large_enum_variant)] // as for `ClientRequest`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameworkCall {
    /// The first call. `framework` re-attaches to an id this identity subscribed before (its
    /// tasks stay its own); `None` registers a new framework. `role: None` is the
    /// subscriber's default role (a tenant's name, `default` for operators).
    Subscribe {
        name: String,
        role: Option<String>,
        /// Also take revocable resources, for best-effort tasks.
        revocable: bool,
        framework: Option<FrameworkId>,
        /// How long the master keeps a disconnected framework's tasks running, waiting for it
        /// to subscribe again with its id; past it the framework is removed and its tasks
        /// killed. `None` is [`DEFAULT_FAILOVER_TIMEOUT_MS`]. Taken from the latest
        /// subscription.
        failover_timeout_ms: Option<u64>,
    },
    /// Uses offers (all on one agent): the operations apply in order, all or nothing. What the
    /// offers had left is declined for `refuse_ms` (default 5 s). Answered by `Accepted` or
    /// `Error` with the same `request`.
    Accept {
        request: u64,
        offers: Vec<OfferId>,
        operations: Vec<OfferOperation>,
        refuse_ms: Option<u64>,
    },
    /// Gives offers back; their resources are not offered to this framework again for
    /// `refuse_ms` (default 5 s) unless more becomes free.
    Decline {
        offers: Vec<OfferId>,
        refuse_ms: Option<u64>,
    },
    /// No more offers until `Revive`.
    Suppress,
    /// Offers again, forgetting earlier declines.
    Revive,
    Kill {
        task: TaskId,
    },
    /// The framework has handled update `update` of `task` (the id an `Update` event carried):
    /// the master stops resending it. Acknowledging an older or unknown update does nothing.
    Acknowledge {
        task: TaskId,
        update: u64,
    },
    /// Asks for the latest status of `tasks` (explicit reconciliation), or of every live task
    /// and every unacknowledged update of this framework when `tasks` is empty (implicit).
    /// Answered by `Update` events; a task the master does not know as this framework's is
    /// reported `lost` with reason `unknown` and update id 0 (nothing to acknowledge).
    Reconcile {
        tasks: Vec<TaskId>,
    },
    /// Ends the framework now: its tasks are killed, its resources freed, and its id can no
    /// longer be subscribed with. The stream ends after the master has recorded it.
    Teardown,
    /// The resources of the next task this framework wants to launch and has found no room
    /// for (`None`: nothing waits). Replaces what it said before; forgotten when the framework
    /// disconnects. If its role is below its quota guarantee and the want has stood past the
    /// master's preemption grace, the master preempts tasks of roles above theirs to make
    /// room, as it does for `wasmos run`. Say it only for tasks that are not best-effort.
    Waiting {
        resources: Option<Resources>,
    },
    /// The answer to an `InverseOffer` for `agent`: `accept`, the framework moves its work
    /// off the agent before the window starts; or not, it leaves it there (stopped at the
    /// start all the same). Shown to operators (`wasmos maintenance list`).
    AnswerInverseOffer {
        agent: AgentId,
        accept: bool,
    },
    /// Only as the first and only call of a probe connection: which master leads? Answered
    /// with `NotLeader { addr }` naming the leader (the master itself when it leads), none
    /// during an election. A framework whose master went silent asks the others this, to
    /// follow a new leader as soon as it is elected.
    WhoLeads,
}

/// How long a disconnected framework keeps its tasks unless it asks otherwise: one minute,
/// long enough for a restart or a master failover.
pub const DEFAULT_FAILOVER_TIMEOUT_MS: u64 = 60_000;

#[allow(clippy::large_enum_variant)] // as for `ClientRequest`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferOperation {
    /// Tasks to start; the master numbers them (see `Accepted`).
    Launch(Vec<TaskSpec>),
    /// Tasks that start together or not at all.
    LaunchGroup(Vec<TaskSpec>),
    /// Turns offered unreserved resources into a reservation for the framework's role.
    Reserve(Resources),
    /// Gives resources dynamically reserved for the framework's role back.
    Unreserve(Resources),
}

/// Resources of one agent offered to one framework, by pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferInfo {
    pub id: OfferId,
    pub agent: AgentId,
    pub attributes: BTreeMap<String, String>,
    pub unreserved: Resources,
    /// Reserved for the framework's role or one of its ancestors.
    pub reserved: BTreeMap<String, Resources>,
    /// Lent from others' unused allocation: only for best-effort tasks, which may be preempted.
    pub revocable: Resources,
}

/// Master to framework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameworkEvent {
    Subscribed {
        framework: FrameworkId,
        role: String,
        /// A `Heartbeat` comes at least this often; a framework that hears nothing for a few
        /// intervals should assume the master is gone and subscribe again.
        heartbeat_interval_ms: u64,
        failover_timeout_ms: u64,
    },
    Offers(Vec<OfferInfo>),
    /// The offer is withdrawn (timed out, or its agent left); accepting it now fails.
    Rescind {
        offer: OfferId,
    },
    /// The accept succeeded: the ids of the tasks it launched, in the order of its specs.
    Accepted {
        request: u64,
        tasks: Vec<TaskId>,
    },
    /// A status change of one of the framework's tasks. `update` identifies it: it is sent
    /// again (the latest status of the task, with its own id) until the framework
    /// acknowledges it. 0 marks an answer to reconciliation that needs no acknowledgement.
    Update {
        task: TaskId,
        status: TaskStatus,
        update: u64,
    },
    /// An agent was declared lost (its tasks are reported lost in their own updates).
    Failure {
        agent: AgentId,
    },
    /// An inverse offer (as in Mesos' maintenance primitives): an operator scheduled
    /// maintenance of `agent`, where this framework runs tasks. From `start_ms` to `end_ms` the
    /// agent is drained: nothing is placed there and its tasks are stopped with reason
    /// `maintenance` at the start. Answer with `AnswerInverseOffer`; sent again at each
    /// subscription until answered, while the window has not started.
    InverseOffer {
        agent: AgentId,
        start_ms: u64,
        end_ms: u64,
    },
    /// The master is alive and this stream still works.
    Heartbeat,
    /// A call was refused (`request` names the accept, if it was one); nothing it asked for
    /// happened.
    Error {
        request: Option<u64>,
        message: String,
    },
    /// This master is not (or no longer) the leader: subscribe again, with the framework id,
    /// at `addr` (the leader's address, when known; else try the other masters). The stream
    /// ends after this event.
    NotLeader {
        addr: Option<String>,
    },
}
