//! The audit log, master side: which calls are recorded and as what, the entry a call carries
//! into its first write (so both land in one raft entry), and the entry recorded on its own for
//! a call that made no write (a refusal, an audited read) before the caller has its answer.

use std::cell::RefCell;
use std::net::SocketAddr;

use wasmos_net::Identity;
use wasmos_proto::{ClientRequest, ClientResponse};
use wasmos_state::{AuditEntry, Command, audit_field};

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
    /// The entry of this caller's `action` on `object`; `None` when the log is off.
    pub(crate) fn entry(&self, shared: &Shared, action: &str, object: &str) -> Option<AuditEntry> {
        if !shared.cfg.tenancy.audit.enabled {
            return None;
        }
        Some(AuditEntry {
            seq: 0,
            at_ms: now_ms(),
            identity: audit_field(&self.who.to_uri()),
            peer: self.peer.to_string(),
            channel: self.channel.to_string(),
            action: action.to_string(),
            object: audit_field(object),
            result: String::new(),
        })
    }

    /// The entry of a client API request (`read`: whether it only reads), and whether it is
    /// recorded when it is answered without a refusal (a read is not, unless reads are
    /// audited; a refused one always is).
    pub(crate) fn request_entry(
        &self,
        shared: &Shared,
        req: &ClientRequest,
        read: bool,
    ) -> Option<(AuditEntry, bool)> {
        let (action, object) = describe(req);
        let entry = self.entry(shared, action, &object)?;
        Some((entry, !read || shared.cfg.tenancy.audit.reads))
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

/// What the log makes of a client API answer: `None` for a redirect to the leader (which
/// records the call itself) or a master without a quorum, and for an answer that is no refusal
/// when `all` is false.
pub(crate) fn answer_said(all: bool) -> impl FnOnce(&ClientResponse) -> Option<String> {
    move |answer| match answer {
        // No leader to record it (or none with a quorum): writing would only delay the answer.
        ClientResponse::NotLeader { .. }
        | ClientResponse::Error {
            kind: wasmos_proto::ErrorKind::Unavailable,
            ..
        } => None,
        ClientResponse::Error { .. } => Some(result_of(answer)),
        other => all.then(|| result_of(other)),
    }
}

/// Records `entry` on its own, with `result`. A follower that answered the call itself (a
/// `--stale` read, a peer master's renewal) has the leader record it: it cannot write.
pub(crate) async fn record(shared: &Shared, entry: AuditEntry, result: String) {
    let Some(entry) = paced(shared, entry, result) else {
        return;
    };
    let proposed = shared.raft.propose(Command::Audited {
        entry: entry.clone(),
        cmd: None,
    });
    match proposed.await {
        Ok(_) => {}
        Err(wasmos_raft::RaftError::NotLeader { .. }) => {
            // Bounded: the call's answer waits for this.
            let forward = crate::peers::audit_at_leader(shared, entry);
            match tokio::time::timeout(FORWARD_TIMEOUT, forward).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("audit entry not recorded by the leader: {e}"),
                Err(_) => tracing::warn!("audit entry not recorded: the leader did not answer"),
            }
        }
        Err(e) => tracing::debug!("audit entry not recorded here: {e}"),
    }
}

/// How long a follower waits for the leader to take an entry it forwards.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `entry` with `result`, if its caller is within its pace (see [`Pace`]); the result then
/// says how many of the caller's entries went unrecorded before it.
fn paced(shared: &Shared, mut entry: AuditEntry, result: String) -> Option<AuditEntry> {
    let skipped = shared
        .audit_pace
        .take(&entry.identity, std::time::Instant::now())?;
    let result = audit_field(&result);
    entry.result = if skipped > 0 {
        format!("{result} ({skipped} earlier calls of this caller not recorded: over the pace)")
    } else {
        result
    };
    Some(entry)
}

/// Hands `entry` to the write batcher now (the returned future only reports how it went), for
/// calls whose caller does not wait for the log: a framework's calls, which the offer cycle
/// takes on after they are answered. Paced per caller (see [`Pace`]): past the pace it is
/// counted instead, and the caller's next recorded entry says how many went unrecorded.
pub(crate) fn record_soon(
    shared: &Shared,
    entry: AuditEntry,
    result: String,
) -> impl std::future::Future<Output = Result<wasmos_state::CommandResult, wasmos_raft::RaftError>>
+ Send
+ 'static {
    // Not through `Shared::propose`: this entry is no call's write.
    let proposed = paced(shared, entry, result)
        .map(|entry| shared.raft.propose(Command::Audited { entry, cmd: None }));
    async move {
        match proposed {
            Some(p) => p.await,
            None => Ok(wasmos_state::CommandResult::Ok),
        }
    }
}

/// How many entries without a write one caller may add per second, sustained, and at once.
/// Each such entry is a raft write the caller did not otherwise cause (a refused call, a
/// framework's call): without a pace, a hostile tenant's refused calls would cost the masters
/// a write each and push everyone's entries out of the log.
const PACE_PER_SECOND: f64 = 10.0;
const PACE_BURST: f64 = 100.0;
/// Callers tracked at once; idle ones are forgotten first.
const PACE_CALLERS: usize = 10_000;

/// A token bucket per caller for [`record_soon`].
#[derive(Default)]
pub(crate) struct Pace(std::sync::Mutex<std::collections::BTreeMap<String, Bucket>>);

struct Bucket {
    tokens: f64,
    at: std::time::Instant,
    skipped: u64,
}

impl Pace {
    /// `Some(entries skipped since the last one recorded)` if `who` may add one now.
    fn take(&self, who: &str, now: std::time::Instant) -> Option<u64> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= PACE_CALLERS && !map.contains_key(who) {
            // Full buckets hold no state worth keeping.
            map.retain(|_, b| {
                let refill = now.duration_since(b.at).as_secs_f64() * PACE_PER_SECOND;
                b.tokens + refill < PACE_BURST || b.skipped > 0
            });
        }
        let b = map.entry(who.to_string()).or_insert(Bucket {
            tokens: PACE_BURST,
            at: now,
            skipped: 0,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * PACE_PER_SECOND).min(PACE_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.skipped))
        } else {
            b.skipped += 1;
            None
        }
    }
}

/// What an answer says of the call, for the log.
pub(crate) fn result_of(answer: &ClientResponse) -> String {
    match answer {
        ClientResponse::Error { message, .. } => format!("refused: {message}"),
        ClientResponse::NotLeader { .. } => "refused: not the leader".into(),
        // Which certificate it made, so a revocation can name it.
        ClientResponse::Certificate { cert_pem } => format!(
            "ok: serial {}",
            wasmos_net::pki::serial_of_pem(cert_pem).unwrap_or_default()
        ),
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
        R::TaskUsage { id } => ("task-usage", id.to_string()),
        R::SubmitJob { .. } => ("submit-job", String::new()),
        R::ListJobs { .. } => ("list-jobs", String::new()),
        R::GetJob { id } => ("get-job", id.to_string()),
        R::KillJob { id } => ("kill-job", id.to_string()),
        R::UpdateService { id, group } => ("update", format!("{id} {}", audit_field(&group.name))),
        R::ScaleJob { id, group, count } => {
            ("scale-job", format!("{id} {}={count}", audit_field(group)))
        }
        R::ListAgents => ("list-agents", String::new()),
        R::WatchTask { id, .. } => ("logs", id.to_string()),
        R::KillTask { id } => ("kill", id.to_string()),
        R::SetRole { role, .. } => ("set-role", audit_field(role)),
        R::ListReservations => ("list-reservations", String::new()),
        R::RemoveReservation { agent, role } => {
            ("unreserve", format!("{}@{agent}", audit_field(role)))
        }
        R::DrainAgent { agent, drain } => {
            (if *drain { "drain" } else { "undrain" }, agent.to_string())
        }
        R::ResizeAgent { agent, total } => (
            "resize",
            match total {
                Some(t) => format!("{agent} {}", audit_field(&t.to_string())),
                None => format!("{agent} reset"),
            },
        ),
        R::ScheduleMaintenance { agents, window } => (
            if window.is_some() {
                "maintenance"
            } else {
                "maintenance-cancel"
            },
            agents
                .iter()
                .take(8)
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        R::ListRoles => ("list-roles", String::new()),
        R::ListFrameworks => ("list-frameworks", String::new()),
        R::TeardownFramework { id } => ("teardown", id.to_string()),
        R::ClusterStatus => ("cluster-status", String::new()),
        R::InitCluster => ("cluster-init", String::new()),
        R::AddMaster { id, addr } => ("cluster-join", format!("{id}@{}", audit_field(addr))),
        R::RemoveMaster { id } => ("cluster-leave", id.to_string()),
        R::Stale(inner) => describe(inner),
        R::Revoke { serial, identity } => (
            "revoke",
            audit_field(
                serial
                    .as_deref()
                    .or(identity.as_deref())
                    .unwrap_or_default(),
            ),
        ),
        R::ListRevoked { .. } => ("list-revoked", String::new()),
        R::ListAudit { .. } => ("audit", String::new()),
        R::SignBundle { hash, signature } => (
            "sign-bundle",
            format!("{hash} by {}", audit_field(&signature.key)),
        ),
        R::AddSigningKey { public } => ("add-signing-key", wasmos_net::signing::key_id(public)),
        R::RevokeSigningKey { key } => ("revoke-signing-key", audit_field(key)),
        R::ListSigningKeys => ("list-signing-keys", String::new()),
        R::RenewCertificate { .. } => ("renew-certificate", String::new()),
        R::RenewAgents => ("renew-agents", String::new()),
        R::WatchEvents { from, .. } => (
            "events",
            from.map(|i| format!("from {i}")).unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_caller_past_the_pace_is_counted_not_recorded() {
        let pace = Pace::default();
        let t0 = Instant::now();
        for _ in 0..PACE_BURST as usize {
            assert_eq!(pace.take("mallory", t0), Some(0));
        }
        assert_eq!(pace.take("mallory", t0), None);
        assert_eq!(pace.take("mallory", t0), None);
        // Others are not held back by mallory.
        assert_eq!(pace.take("alice", t0), Some(0));
        // A tenth of a second later one more is allowed, and it says what was skipped.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(pace.take("mallory", later), Some(2));
        assert_eq!(pace.take("mallory", later), None);
    }
}
