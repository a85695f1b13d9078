//! The audit log, master side: which calls are recorded and as what, the entry a call carries
//! into its first write (so both land in one raft entry), and the entry recorded on its own for
//! a call that made no write (a refusal, an audited read) before the caller has its answer.

use std::cell::RefCell;
use std::net::SocketAddr;

use wasmos_net::Identity;
use wasmos_proto::{ClientRequest, ClientResponse};
use wasmos_state::{AuditEntry, Command};

use crate::{Shared, now_ms};

tokio::task_local! {
    /// The entry of the call this task serves, until a write takes it.
    static CALL: RefCell<Option<AuditEntry>>;
}

/// `cmd`, carrying the entry of the call being served if it has not gone with a write yet.
pub(crate) fn with_call(cmd: Command) -> Command {
    match CALL.try_with(|c| c.borrow_mut().take()).ok().flatten() {
        Some(entry) => Command::Audited {
            entry,
            cmd: Some(Box::new(cmd)),
        },
        None => cmd,
    }
}

/// Who called, from where and over what: the part of an entry known before the call is read.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) who: Identity,
    pub(crate) peer: SocketAddr,
    pub(crate) channel: &'static str,
}

impl Caller {
    /// The entry of this caller's `action` on `object`; `None` when it is not recorded (the log
    /// is off, or it is a read and reads are not audited).
    pub(crate) fn entry(
        &self,
        shared: &Shared,
        action: &str,
        object: String,
        read: bool,
    ) -> Option<AuditEntry> {
        let cfg = &shared.cfg.tenancy.audit;
        if !cfg.enabled || (read && !cfg.reads) {
            return None;
        }
        Some(AuditEntry {
            seq: 0,
            at_ms: now_ms(),
            identity: self.who.to_uri(),
            peer: self.peer.to_string(),
            channel: self.channel.to_string(),
            action: action.to_string(),
            object,
            result: String::new(),
        })
    }

    /// The entry of a client API request.
    pub(crate) fn request_entry(&self, shared: &Shared, req: &ClientRequest) -> Option<AuditEntry> {
        let (action, object) = describe(req);
        let read = match req {
            ClientRequest::Stale(inner) => inner.is_read(),
            other => other.is_read(),
        };
        self.entry(shared, action, object, read)
    }
}

/// Serves `call` as the call `entry` describes (`None`: not recorded). Its first write carries
/// the entry; if it made none, the entry is recorded with what `said` makes of its outcome
/// (`None`: not at all, as for a redirect to the leader, which records the call itself).
pub(crate) async fn run<T, F>(
    shared: &Shared,
    entry: Option<AuditEntry>,
    call: F,
    said: impl FnOnce(&T) -> Option<String>,
) -> T
where
    F: std::future::Future<Output = T>,
{
    let Some(entry) = entry else {
        return call.await;
    };
    let (outcome, left) = CALL
        .scope(RefCell::new(Some(entry)), async {
            let outcome = call.await;
            (outcome, CALL.with(|c| c.borrow_mut().take()))
        })
        .await;
    if let Some(entry) = left
        && let Some(result) = said(&outcome)
    {
        record(shared, entry, result).await;
    }
    outcome
}

/// What the log makes of a client API answer: `None` for a redirect to the leader.
pub(crate) fn answer_said(answer: &ClientResponse) -> Option<String> {
    match answer {
        ClientResponse::NotLeader { .. } => None,
        other => Some(result_of(other)),
    }
}

/// Records `entry` on its own, with `result`.
pub(crate) async fn record(shared: &Shared, entry: AuditEntry, result: String) {
    if let Err(e) = record_soon(shared, entry, result).await {
        // A follower redirects the call to the leader, which records it.
        tracing::debug!("audit entry not recorded here: {e}");
    }
}

/// Hands `entry` to the write batcher now (the returned future only reports how it went), for
/// calls whose caller does not wait for the log: a framework's calls, which the offer cycle
/// takes on after they are answered.
pub(crate) fn record_soon(
    shared: &Shared,
    mut entry: AuditEntry,
    result: String,
) -> impl std::future::Future<Output = Result<wasmos_state::CommandResult, wasmos_raft::RaftError>>
+ Send
+ 'static {
    entry.result = result;
    // Not through `Shared::propose`: this entry is no call's write.
    shared.raft.propose(Command::Audited { entry, cmd: None })
}

/// What an answer says of the call, for the log.
pub(crate) fn result_of(answer: &ClientResponse) -> String {
    match answer {
        ClientResponse::Error { message, .. } => format!("refused: {message}"),
        ClientResponse::NotLeader { .. } => "refused: not the leader".into(),
        _ => "ok".into(),
    }
}

/// A request's action and object as the log names them.
pub(crate) fn describe(req: &ClientRequest) -> (&'static str, String) {
    use ClientRequest as R;
    match req {
        R::HasBundle { hash } => ("has-bundle", hash.to_string()),
        R::PushBundle { hash, .. } => ("push-bundle", hash.to_string()),
        R::GetBlob { hash } => ("get-blob", hash.to_string()),
        // The new task's (job's) id becomes the object when the write makes one.
        R::SubmitTask { .. } => ("submit", String::new()),
        R::ListTasks { .. } => ("list-tasks", String::new()),
        R::GetTask { id } => ("get-task", id.to_string()),
        R::SubmitJob { .. } => ("submit-job", String::new()),
        R::ListJobs { .. } => ("list-jobs", String::new()),
        R::GetJob { id } => ("get-job", id.to_string()),
        R::KillJob { id } => ("kill-job", id.to_string()),
        R::ScaleJob { id, group, count } => ("scale-job", format!("{id} {group}={count}")),
        R::ListAgents => ("list-agents", String::new()),
        R::WatchTask { id, .. } => ("logs", id.to_string()),
        R::KillTask { id } => ("kill", id.to_string()),
        R::SetRole { role, .. } => ("set-role", role.clone()),
        R::ListReservations => ("list-reservations", String::new()),
        R::RemoveReservation { agent, role } => ("unreserve", format!("{role}@{agent}")),
        R::ListRoles => ("list-roles", String::new()),
        R::ListFrameworks => ("list-frameworks", String::new()),
        R::TeardownFramework { id } => ("teardown", id.to_string()),
        R::ClusterStatus => ("cluster-status", String::new()),
        R::InitCluster => ("cluster-init", String::new()),
        R::AddMaster { id, addr } => ("cluster-join", format!("{id}@{addr}")),
        R::RemoveMaster { id } => ("cluster-leave", id.to_string()),
        R::Stale(inner) => describe(inner),
        R::Revoke { serial, identity } => (
            "revoke",
            serial.clone().or(identity.clone()).unwrap_or_default(),
        ),
        R::ListRevoked { .. } => ("list-revoked", String::new()),
        R::ListAudit { .. } => ("audit", String::new()),
    }
}
