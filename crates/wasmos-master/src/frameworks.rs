//! Framework sessions: one [`FrameworkSession`] type for every front end (QUIC
//! `wasmos-framework/1`, the HTTPS/JSON API, the in-leader job host), with one id space and
//! typed subscription errors. Subscription records a new framework through Raft (a returning
//! one must be the same identity); then calls go in and events come out. The offer cycle does
//! the work; this module only carries messages.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use wasmos_alloc::Role;
use wasmos_net::{Connection, Identity, recv_frame, send_frame};
use wasmos_proto::{
    ClientResponse, DEFAULT_FAILOVER_TIMEOUT_MS, FrameworkCall, FrameworkEvent, FrameworkId,
    FrameworkSummary, JobId,
};
use wasmos_state::{Command, CommandResult, FrameworkRecord};

use crate::admission::Kind;
use crate::offers::{BUILTIN_OWNER, Event};
use crate::policy::resolve_role;
use crate::replies::{raft_error, rejected};
use crate::{Shared, now_ms};

pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection, who: Identity) {
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("framework left before subscribing: {e}");
            return;
        }
    };
    let refuse = |message: String| FrameworkEvent::Error {
        request: None,
        message,
    };
    let first = recv_frame(&mut recv).await;
    if let Ok(Some(FrameworkCall::WhoLeads)) = first {
        let (_, addr) = shared.raft.leader_addr();
        refuse_and_close(send, FrameworkEvent::NotLeader { addr }).await;
        return;
    }
    let sub = match first.map(|c| c.map(Subscription::from_call)) {
        Ok(Some(Ok(sub))) => sub,
        other => {
            let msg = format!("expected Subscribe as the first call, got {other:?}");
            refuse_and_close(send, refuse(msg)).await;
            return;
        }
    };
    let owner = who.to_uri();
    let peer = Some(conn.remote_address());
    let session = match FrameworkSession::open(&shared, &who, sub, Front::Quic, peer).await {
        Ok(s) => s,
        Err(e) => {
            // A subscription sent to a follower, or during an election, is routine.
            match e {
                SubscribeError::NotRecorded(_) => {
                    tracing::debug!(%owner, "framework not subscribed here: {e}")
                }
                SubscribeError::Refused(_) => {
                    tracing::warn!(%owner, "framework not subscribed: {e}")
                }
            }
            refuse_and_close(send, e.event(&shared)).await;
            return;
        }
    };
    let id = session.id();
    let caller = session.caller();
    let heartbeat = session.heartbeat();
    let mut writer_done = false;
    let mut writer = tokio::spawn(async move {
        let mut session = session;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            let ev = tokio::select! {
                ev = session.next() => match ev {
                    Some(ev) => ev,
                    // The offer cycle let go of this framework (torn down, or this master
                    // stopped leading): the stream ends.
                    None => break,
                },
                _ = beat.tick() => FrameworkEvent::Heartbeat,
            };
            if send_frame(&mut send, &ev).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        // Dropping the session here tells the offer cycle the framework is gone.
    });
    loop {
        // The session ends with its event stream (torn down, removed, or leadership lost):
        // reading on would only take calls nothing acts on.
        let next = tokio::select! {
            next = recv_frame::<FrameworkCall>(&mut recv) => next,
            _ = &mut writer => {
                // Finished: polling its handle again would panic.
                writer_done = true;
                break;
            }
        };
        match next {
            Ok(Some(FrameworkCall::Subscribe { .. })) => {
                tracing::warn!(framework = %id, "framework subscribed twice on one stream");
            }
            // A flood of calls holds back this stream only; other tenants' calls are not
            // queued behind it.
            Ok(Some(call)) => {
                if let Err(why) = caller.call(call).await {
                    tracing::warn!(framework = %id, "framework call dropped: {why}");
                }
            }
            Ok(None) => break,
            Err(_) if wasmos_net::closed_on_purpose(&conn) => break,
            Err(e) => {
                tracing::warn!(framework = %id, "framework stream failed: {e}");
                break;
            }
        }
    }
    // Ends the session (if the writer still held it): the offer cycle hears it is gone.
    if !writer_done {
        writer.abort();
        let _ = writer.await;
    }
    tracing::info!(framework = %id, "framework disconnected");
}

/// Sends the refusal and waits (briefly) until the framework has read it: the connection
/// closes when this session ends, which would otherwise race the message.
async fn refuse_and_close(mut send: wasmos_net::SendStream, ev: FrameworkEvent) {
    let _ = send_frame(&mut send, &ev).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), send.stopped()).await;
}

/// The fields of a `Subscribe` call.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub name: String,
    pub role: Option<String>,
    pub revocable: bool,
    pub framework: Option<FrameworkId>,
    pub failover_timeout_ms: Option<u64>,
}

impl Subscription {
    /// The fields of a `Subscribe` call; any other call is handed back.
    pub(crate) fn from_call(call: FrameworkCall) -> Result<Subscription, FrameworkCall> {
        match call {
            FrameworkCall::Subscribe {
                name,
                role,
                revocable,
                framework,
                failover_timeout_ms,
            } => Ok(Subscription {
                name,
                role,
                revocable,
                framework,
                failover_timeout_ms,
            }),
            other => Err(other),
        }
    }
}

/// Why a subscription was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    /// Wrong, or not the caller's to make: a refusal.
    #[error("{0}")]
    Refused(String),
    /// Not recorded now (no quorum, a failover, another leader): the caller may try again,
    /// here or at the leader.
    #[error("cannot record the framework now: {0}")]
    NotRecorded(wasmos_raft::RaftError),
}

impl SubscribeError {
    /// What the framework is told: a refusal is an error, which ends its attempt; what could
    /// not be recorded now is `NotLeader`, which SDK frameworks follow by subscribing again
    /// (at the leader it names, or, with none named, at the next master after a pause).
    pub(crate) fn event(&self, shared: &Shared) -> FrameworkEvent {
        self.event_naming(shared.raft.leader_addr().1)
    }

    /// [`SubscribeError::event`] with the leader's address as this master knows it.
    fn event_naming(&self, leader: Option<String>) -> FrameworkEvent {
        match self {
            SubscribeError::NotRecorded(wasmos_raft::RaftError::NotLeader { .. }) => {
                FrameworkEvent::NotLeader { addr: leader }
            }
            SubscribeError::NotRecorded(_) => FrameworkEvent::NotLeader { addr: None },
            SubscribeError::Refused(message) => FrameworkEvent::Error {
                request: None,
                message: message.clone(),
            },
        }
    }
}

/// Session ids, one space for every front end (QUIC, HTTPS, the job host): an event or call
/// names the session it belongs to, and a replaced session's late calls are dropped.
static NEXT_SESSION: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

pub(crate) fn new_session() -> usize {
    NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Longest failover timeout a framework may ask for: a week, as a bound on how long a
/// vanished framework can hold resources.
const MAX_FAILOVER_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// A client's subscription is a write (a registration, or a new failover timeout): it waits
/// for the tenant's turn like other writes. The in-leader job host's are not charged.
async fn admit_subscription(shared: &Shared, who: &Identity) -> Result<(), String> {
    let cfg = &shared.cfg.tenancy;
    shared.admission.admit_caller(cfg, who, Kind::Writes).await
}

/// Registers a new framework, or checks that a returning one is the caller's (and records a
/// new failover timeout if it asks for one). Returns its id, role and failover timeout.
async fn subscribe(
    shared: &Shared,
    who: &Identity,
    owner: &str,
    sub: Subscription,
) -> Result<(FrameworkId, String, u64), SubscribeError> {
    use SubscribeError::{NotRecorded, Refused};
    let Subscription {
        name,
        role,
        revocable,
        framework,
        failover_timeout_ms,
    } = sub;
    if let Some(t) = failover_timeout_ms.filter(|t| *t > MAX_FAILOVER_TIMEOUT_MS) {
        return Err(Refused(format!(
            "failover timeout {t} ms is longer than the most allowed, {MAX_FAILOVER_TIMEOUT_MS} ms (7 days)"
        )));
    }
    if let Some(id) = framework {
        let known = shared.read(|s| {
            let f = s.frameworks.get(&id).filter(|f| f.owner == owner)?;
            Some(s.live_framework(id).cloned().map_err(|_| f.clone()))
        });
        let f = match known {
            Some(Ok(f)) => f,
            Some(Err(_)) => {
                return Err(Refused(format!(
                    "framework {id} was removed (torn down, or away longer than its failover timeout); subscribe without an id to start a new one"
                )));
            }
            None => return Err(Refused(format!("framework {id} is not one of yours"))),
        };
        let mut timeout = f.failover_timeout_ms;
        if let Some(t) = failover_timeout_ms.filter(|t| *t != timeout) {
            let cmd = Command::SetFailoverTimeout {
                framework: id,
                failover_timeout_ms: t,
            };
            match shared.write(cmd).await {
                Ok(CommandResult::Ok) => timeout = t,
                Ok(other) => {
                    return Err(Refused(format!(
                        "cannot record the failover timeout: {other:?}"
                    )));
                }
                Err(e) => return Err(NotRecorded(e)),
            }
        }
        return Ok((id, f.role.to_string(), timeout));
    }
    if name.is_empty() || name.len() > 100 {
        return Err(Refused("a framework name must be 1 to 100 bytes".into()));
    }
    let role = resolve_role(who, role.as_deref()).map_err(Refused)?;
    let timeout = failover_timeout_ms.unwrap_or(DEFAULT_FAILOVER_TIMEOUT_MS);
    let result = shared
        .write(Command::RegisterFramework {
            name,
            role: role.clone(),
            owner: owner.to_string(),
            revocable,
            failover_timeout_ms: timeout,
            acknowledges: true,
            now_ms: now_ms(),
        })
        .await
        .map_err(NotRecorded)?;
    match result {
        CommandResult::Framework(id) => Ok((id, role.to_string(), timeout)),
        CommandResult::Rejected(why) => Err(Refused(why.to_string())),
        other => Err(Refused(format!("cannot record the framework: {other:?}"))),
    }
}

/// Which front end a framework session came in by: it decides how its subscription and calls
/// wait for their tenant's turn and whether its stream carries heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    /// A QUIC stream (`wasmos-framework/1`): calls wait their turn, never dropped.
    Quic,
    /// The HTTPS/JSON API: a call whose tenant's line is too long is refused, saying so (the
    /// caller gets an HTTP answer for each call).
    Https,
    /// The leader's job host, in-process: not charged, no heartbeats.
    JobHost,
}

/// The framework front ends' entry point (the HTTPS/JSON API holds one).
#[derive(Clone)]
pub struct Frameworks {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Frameworks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frameworks").finish_non_exhaustive()
    }
}

/// One subscribed framework, whichever front end it came by (QUIC, HTTPS or the in-leader job
/// host): the single session type. Events come out of [`FrameworkSession::next`], calls go in
/// through its [`Caller`]; dropping it disconnects the framework (its failover timeout starts).
pub struct FrameworkSession {
    caller: Caller,
    heartbeat: std::time::Duration,
    first: Option<FrameworkEvent>,
    events: mpsc::UnboundedReceiver<FrameworkEvent>,
}

/// How calls reach the offer cycle for one session; cloned freely, it outlives nothing.
#[derive(Clone)]
pub(crate) struct Caller {
    id: FrameworkId,
    conn: usize,
    who: Identity,
    front: Front,
    /// The caller's address, for the audit log (none for the job host, which is not audited).
    peer: Option<std::net::SocketAddr>,
    shared: Arc<Shared>,
}

impl Front {
    fn channel(self) -> &'static str {
        match self {
            Front::Quic => "quic",
            Front::Https => "https",
            Front::JobHost => "job-host",
        }
    }
}

/// The audit log's name and object for a framework call it records: the calls that change
/// what runs (launches, kills, a teardown); the rest only steer offers.
fn audited_call(id: FrameworkId, call: &FrameworkCall) -> Option<(&'static str, String)> {
    match call {
        FrameworkCall::Accept { offers, .. } => {
            // Only as many offer ids as the log keeps: a call may name millions.
            let mut object = format!("{id} offers ");
            for (i, o) in offers.iter().enumerate() {
                if object.len() > wasmos_state::MAX_AUDIT_FIELD_BYTES {
                    object.push_str(&format!("... ({} in all)", offers.len()));
                    break;
                }
                if i > 0 {
                    object.push(',');
                }
                object.push_str(&o.to_string());
            }
            Some(("accept", object))
        }
        FrameworkCall::Kill { task } => Some(("framework-kill", task.to_string())),
        FrameworkCall::Teardown => Some(("teardown", id.to_string())),
        _ => None,
    }
}

impl Caller {
    /// Passes a call to the offer cycle once it is its tenant's turn (see [`Front`]); a
    /// `Subscribe` within a session is ignored.
    pub(crate) async fn call(&self, call: FrameworkCall) -> Result<(), String> {
        let (cfg, admission) = (&self.shared.cfg.tenancy, &self.shared.admission);
        let audit =
            self.peer
                .zip(audited_call(self.id, &call))
                .and_then(|(peer, (action, object))| {
                    let caller = crate::audit::Caller {
                        who: self.who.clone(),
                        peer,
                        channel: self.front.channel(),
                    };
                    caller.entry(&self.shared, action, &object)
                });
        match self.front {
            Front::Quic => {
                admission
                    .pace_caller(cfg, &self.who, Kind::FrameworkCalls)
                    .await
            }
            Front::Https => {
                admission
                    .admit_caller(cfg, &self.who, Kind::FrameworkCalls)
                    .await?
            }
            Front::JobHost => {}
        }
        // Recorded as taken: what it leads to is in the tasks' statuses. Not waited for, so
        // the log costs a framework's calls no round trip.
        if let Some(entry) = audit {
            // Spawned, not dropped: the batcher discards a proposal nobody waits for.
            tokio::spawn(crate::audit::record_soon(&self.shared, entry, "ok".into()));
        }
        if !matches!(call, FrameworkCall::Subscribe { .. }) {
            self.shared.offer_event(Event::FrameworkCall {
                id: self.id,
                conn: self.conn,
                call,
            });
        }
        Ok(())
    }
}

impl FrameworkSession {
    /// Subscribes `sub` for `who`: only at the leader, after the tenant's turn for a write
    /// (the job host's are not charged), recording a new framework or checking a returning
    /// one; then hands the session's event channel to the offer cycle.
    pub(crate) async fn open(
        shared: &Arc<Shared>,
        who: &Identity,
        sub: Subscription,
        front: Front,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<FrameworkSession, SubscribeError> {
        // Only the leader offers: anywhere else the framework would wait for nothing.
        if let Err(e @ wasmos_raft::RaftError::NotLeader { .. }) =
            shared.raft.leader_applied().await
        {
            return Err(SubscribeError::NotRecorded(e));
        }
        let audit = peer.and_then(|peer| {
            let caller = crate::audit::Caller {
                who: who.clone(),
                peer,
                channel: front.channel(),
            };
            caller.entry(shared, "subscribe", &sub.name)
        });
        let owner = who.to_uri();
        let recorded = async {
            if front != Front::JobHost {
                admit_subscription(shared, who)
                    .await
                    .map_err(SubscribeError::Refused)?;
            }
            subscribe(shared, who, &owner, sub).await
        };
        let said = |r: &Result<_, SubscribeError>| match r {
            Ok(_) => Some("ok".to_string()),
            Err(SubscribeError::NotRecorded(_)) => None,
            Err(e) => Some(format!("refused: {e}")),
        };
        let (id, role, failover_timeout_ms) =
            crate::audit::run(shared, audit, recorded, said).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let conn = new_session();
        let heartbeat = shared.cfg.framework_heartbeat;
        shared.offer_event(Event::FrameworkUp { id, conn, tx });
        tracing::info!(framework = %id, %role, %owner, ?front, "framework subscribed");
        Ok(FrameworkSession {
            caller: Caller {
                id,
                conn,
                who: who.clone(),
                front,
                peer,
                shared: shared.clone(),
            },
            heartbeat,
            first: Some(FrameworkEvent::Subscribed {
                framework: id,
                role,
                // In-process frameworks hear no heartbeats: they cannot lose the master.
                heartbeat_interval_ms: if front == Front::JobHost {
                    0
                } else {
                    heartbeat.as_millis() as u64
                },
                failover_timeout_ms,
            }),
            events,
        })
    }

    pub fn id(&self) -> FrameworkId {
        self.caller.id
    }

    /// The session's connection id, which its calls carry.
    pub fn conn(&self) -> usize {
        self.caller.conn
    }

    /// How often an idle stream should carry a heartbeat.
    pub fn heartbeat(&self) -> std::time::Duration {
        self.heartbeat
    }

    /// Where this session's calls go in, for a task of its own (the QUIC reader).
    pub(crate) fn caller(&self) -> Caller {
        self.caller.clone()
    }

    /// Passes a call in (see [`Caller::call`]).
    pub(crate) async fn call(&self, call: FrameworkCall) -> Result<(), String> {
        self.caller.call(call).await
    }

    /// The next event; `None` once the master let go of the framework (torn down, or this
    /// master stopped leading after a `NotLeader`).
    pub async fn next(&mut self) -> Option<FrameworkEvent> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        self.events.recv().await
    }

    /// The next event if one is waiting.
    pub(crate) fn try_next(&mut self) -> Option<FrameworkEvent> {
        self.first.take().or_else(|| self.events.try_recv().ok())
    }
}

impl Frameworks {
    /// Subscribes with a `Subscribe` call over HTTPS; a refusal is the event to show
    /// (`NotLeader` or `Error`).
    pub async fn subscribe(
        &self,
        who: &Identity,
        peer: std::net::SocketAddr,
        call: FrameworkCall,
    ) -> Result<FrameworkSession, FrameworkEvent> {
        let Ok(sub) = Subscription::from_call(call) else {
            return Err(FrameworkEvent::Error {
                request: None,
                message: "the first call must be Subscribe".into(),
            });
        };
        FrameworkSession::open(&self.shared, who, sub, Front::Https, Some(peer))
            .await
            .map_err(|e| e.event(&self.shared))
    }

    /// A call of subscribed framework `id` over HTTPS (its session's owner, `who`, checked by
    /// the caller): taken once it is `who`'s tenant's turn, or refused, saying so, when that
    /// tenant's line of framework calls is more than a few seconds long.
    pub async fn call(
        &self,
        who: &Identity,
        peer: std::net::SocketAddr,
        id: FrameworkId,
        conn: usize,
        call: FrameworkCall,
    ) -> Result<(), String> {
        let caller = Caller {
            id,
            conn,
            who: who.clone(),
            front: Front::Https,
            peer: Some(peer),
            shared: self.shared.clone(),
        };
        caller.call(call).await
    }
}

impl std::fmt::Debug for FrameworkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameworkSession")
            .field("id", &self.caller.id)
            .field("front", &self.caller.front)
            .finish_non_exhaustive()
    }
}

impl Drop for FrameworkSession {
    fn drop(&mut self) {
        self.caller.shared.offer_event(Event::FrameworkDown {
            id: self.caller.id,
            conn: self.caller.conn,
        });
    }
}

/// `wasmos framework list`: frameworks not removed that `who` may see, with their sessions
/// and offers when this master leads (a stale read from another master has none to tell).
pub(crate) async fn list(shared: &Shared, who: &Identity) -> ClientResponse {
    // An offer cycle that does not answer (one just starting) has nothing to tell either.
    let offers = match shared.raft.is_leader() {
        true => crate::client::try_snapshot(shared)
            .await
            .map(|s| s.frameworks),
        false => None,
    };
    ClientResponse::Frameworks(shared.read(|s| {
        let job_of: BTreeMap<FrameworkId, JobId> = s
            .jobs
            .values()
            .filter_map(|j| Some((j.framework?, j.id)))
            .collect();
        let mut live: BTreeMap<FrameworkId, u64> = BTreeMap::new();
        for t in s.tasks.values() {
            if let Some(f) = t.framework
                && !t.status.state.is_terminal()
            {
                *live.entry(f).or_default() += 1;
            }
        }
        s.frameworks
            .values()
            .filter(|f| f.removed_ms.is_none() && visible(who, f))
            .map(|f| FrameworkSummary {
                id: f.id,
                name: f.name.clone(),
                role: f.role.to_string(),
                owner: f.owner.clone(),
                registered_ms: f.registered_ms,
                job: job_of.get(&f.id).copied(),
                live_tasks: live.get(&f.id).copied().unwrap_or(0),
                offers: offers
                    .as_ref()
                    .map(|o| o.get(&f.id).cloned().unwrap_or_default()),
            })
            .collect()
    }))
}

/// Whether `who` may see framework `f`: operators all; tenants their tenant's, including the
/// master's own frameworks for their roles.
fn visible(who: &Identity, f: &FrameworkRecord) -> bool {
    if f.owner == BUILTIN_OWNER {
        return match crate::policy::tenant(who) {
            Some(t) => Role::new(&t).is_ok_and(|home| f.role.is_within(&home)),
            None => true,
        };
    }
    crate::policy::may_see(who, &f.owner)
}

/// `wasmos framework teardown`: what the framework's own `Teardown` does, for its owner or an
/// operator. A framework another tenant's caller may not see reads as unknown.
pub(crate) async fn teardown(shared: &Shared, who: &Identity, id: FrameworkId) -> ClientResponse {
    use wasmos_state::Rejection::{Invalid, NotFound};
    let checked = shared.read(|s| {
        let unknown = || NotFound(format!("unknown framework {id}"));
        let f = s.frameworks.get(&id).filter(|f| visible(who, f)).ok_or_else(unknown)?;
        s.live_framework(id)?;
        if f.owner == BUILTIN_OWNER {
            return Err(Invalid(format!(
                "framework {id} is the master's own, for `wasmos run` tasks of role {}: kill those tasks instead",
                f.role
            )));
        }
        if let Some(j) = s.jobs.values().find(|j| j.framework == Some(id)) {
            return Err(Invalid(format!(
                "framework {id} runs {}: stop it with `wasmos job kill {}` (or `wasmos service stop`)",
                j.id, j.id
            )));
        }
        if !crate::policy::may_change(who, &f.owner) {
            return Err(Invalid(format!(
                "framework {id} is {}'s; only its owner or an operator may tear it down",
                f.owner
            )));
        }
        Ok(())
    });
    if let Err(why) = checked {
        return rejected(why);
    }
    let cmd = Command::RemoveFramework {
        framework: id,
        now_ms: now_ms(),
    };
    match shared.write(cmd).await {
        Ok(CommandResult::Rejected(why)) => rejected(why),
        Ok(_) => {
            shared.offer_event(Event::FrameworkRemoved(id));
            ClientResponse::Ok
        }
        Err(e) => raft_error(shared, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_ends_a_subscription_attempt() {
        let leader = Some("127.0.0.1:7434".to_string());
        let moved = SubscribeError::NotRecorded(wasmos_raft::RaftError::NotLeader { leader: None });
        assert!(matches!(
            moved.event_naming(leader.clone()),
            FrameworkEvent::NotLeader { addr } if addr == leader
        ));
        // No quorum now: not a refusal; the framework is told to try again after a pause.
        let stalled = SubscribeError::NotRecorded(wasmos_raft::RaftError::NoQuorum("x".into()));
        assert!(matches!(
            stalled.event_naming(leader.clone()),
            FrameworkEvent::NotLeader { addr: None }
        ));
        let refused = SubscribeError::Refused("a framework name must be 1 to 100 bytes".into());
        assert!(matches!(
            refused.event_naming(leader),
            FrameworkEvent::Error { request: None, message } if message.contains("name")
        ));
    }

    #[test]
    fn sessions_of_every_front_end_share_one_id_space() {
        let ids: std::collections::BTreeSet<usize> = (0..1000).map(|_| new_session()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
