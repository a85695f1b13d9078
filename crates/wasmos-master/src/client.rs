//! The client channel: one request per QUIC stream from `wasmos` commands (upload, submit, list,
//! watch). Tenants see only their own tasks; operators see everything.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmos_alloc::Role;
use wasmos_net::{
    Connection, FrameError, Identity, RecvStream, SendStream, recv_frame, send_frame,
};
use wasmos_proto::{
    AgentId, AgentInfo, AgentState, BlobKind, BundleHash, ClientRequest, ClientResponse, ErrorKind,
    MasterToAgent, Reason, RevokedInfo, RoleInfo, TaskFilter, TaskId, TaskInfo, TaskSpec,
    TaskState, TaskStatus,
};
use wasmos_state::{Command, CommandResult};

use crate::admission::Kind;
use crate::blobs::{StoreFailure, store_blob};
use crate::offers::{Event, Snapshot};
use crate::policy::{resolve_role, role_visible, shown, task_visible, validate_spec};
use crate::replies::{error, fit_page, raft_error, rejected};
use crate::{Shared, now_ms};

pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection, who: Identity) {
    let caller = crate::audit::Caller {
        who,
        peer: conn.remote_address(),
        channel: "quic",
    };
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(handle(shared.clone(), caller.clone(), send, recv));
    }
}

async fn handle(
    shared: Arc<Shared>,
    caller: crate::audit::Caller,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let who = &caller.who;
    let req = match recv_frame::<ClientRequest>(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            let _ = send_frame(&mut send, &error(ErrorKind::InvalidRequest, e.to_string())).await;
            let _ = send.finish();
            return;
        }
    };
    let Prepared {
        req,
        audit,
        all,
        stale,
    } = match prepare(&shared, &caller, req).await {
        Ok(prepared) => prepared,
        Err(refusal) => {
            if let Err(e) = send_frame(&mut send, &refusal).await {
                tracing::debug!("client stream ended early: {e}");
            }
            let _ = send.finish();
            // An upload's bytes are not wanted here: stop them instead of letting the client
            // block on flow control.
            let _ = recv.stop(0u32.into());
            return;
        }
    };
    let result = match req {
        ClientRequest::WatchTask { id, follow } => {
            let result = watch(&shared, who, id, follow, &mut send).await;
            record_streamed(&shared, audit, all, &result).await;
            result.map(|_| ())
        }
        ClientRequest::WatchEvents {
            from,
            topics,
            follow,
        } => {
            let query = crate::events::EventQuery {
                from,
                topics,
                follow,
                stale,
            };
            let result = stream_events(&shared, who, query, &mut send).await;
            record_streamed(&shared, audit, all, &result).await;
            result.map(|_| ())
        }
        ClientRequest::PushBundle { hash, size, kind } => {
            let reader = crate::policy::tenant(who);
            let push = push_bundle(&shared, hash, size, kind, reader, &mut recv);
            let resp =
                crate::audit::run(&shared, audit, push, crate::audit::answer_said(all)).await;
            send_frame(&mut send, &resp).await
        }
        ClientRequest::GetBlob { hash } => {
            let result = get_blob(&shared, who, &hash, &mut send).await;
            record_streamed(&shared, audit, all, &result).await;
            result.map(|_| ())
        }
        other => {
            let call = answer(&shared, who, other);
            let resp =
                crate::audit::run(&shared, audit, call, crate::audit::answer_said(all)).await;
            match send_frame(&mut send, &resp).await {
                // Nothing was sent yet: say why instead of closing the stream silently.
                Err(FrameError::Codec(wasmos_proto::CodecError::TooLarge(n))) => {
                    let message = format!(
                        "the answer is {n} bytes, over the {}-byte message limit; ask for less (e.g. one task with `task show`)",
                        wasmos_proto::MAX_FRAME_BYTES
                    );
                    send_frame(&mut send, &error(ErrorKind::TooLarge, message)).await
                }
                other => other,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("client stream ended early: {e}");
    }
    let _ = send.finish();
}

/// A request admitted and routed to this master, with its audit entry.
pub(crate) struct Prepared {
    pub(crate) req: ClientRequest,
    pub(crate) audit: Option<wasmos_proto::AuditEntry>,
    /// Whether its success is recorded too (reads only when reads are audited).
    pub(crate) all: bool,
    /// Asked with `--stale`: answered from this master's own state.
    pub(crate) stale: bool,
}

/// What every front end does before answering a request: admits it against the tenant's rate
/// (a flood past it is refused unrecorded), then has it answered here or redirected to the
/// leader (a redirect or refusal is recorded and returned as the answer).
pub(crate) async fn prepare(
    shared: &Shared,
    caller: &crate::audit::Caller,
    req: ClientRequest,
) -> Result<Prepared, ClientResponse> {
    let who = &caller.who;
    let reads = match &req {
        ClientRequest::Stale(inner) => inner.is_read(),
        other => other.is_read(),
    };
    let kind = if reads { Kind::Reads } else { Kind::Writes };
    if let Err(why) = shared
        .admission
        .admit_caller(&shared.cfg.tenancy, who, kind)
        .await
    {
        return Err(error(ErrorKind::Unavailable, why));
    }
    // Admitted: from here on the call is recorded (a flood past the tenant's rate is not).
    let (audit, all) = match caller.request_entry(shared, &req, reads) {
        Some((entry, all)) => (Some(entry), all),
        None => (None, false),
    };
    let stale = matches!(req, ClientRequest::Stale(_));
    match route(shared, req).await {
        Ok(req) => Ok(Prepared {
            req,
            audit,
            all,
            stale,
        }),
        Err(refusal) => {
            if let Some(entry) = audit
                && let Some(result) = crate::audit::answer_said(all)(&refusal)
            {
                crate::audit::record(shared, entry, result).await;
            }
            Err(refusal)
        }
    }
}

/// Answers a request that is not streamed, recording it: what the HTTPS API's calls get.
pub(crate) async fn answer_prepared(
    shared: &Shared,
    who: &Identity,
    p: Prepared,
) -> ClientResponse {
    match p.req {
        req if req.is_streamed() => error(
            ErrorKind::InvalidRequest,
            "a streamed request: use its own endpoint",
        ),
        req => {
            let call = answer(shared, who, req);
            crate::audit::run(shared, p.audit, call, crate::audit::answer_said(p.all)).await
        }
    }
}

/// Decides whether this master answers `req` itself. Cluster status: always. Stale reads: from
/// the local applied state. Other reads: only on a leader that confirms with a majority that it
/// still leads (so no read misses an acknowledged write). Writes: only on the leader (the
/// write itself then needs the majority). Everything else is redirected to the leader.
async fn route(shared: &Shared, req: ClientRequest) -> Result<ClientRequest, ClientResponse> {
    match req {
        // Asked of a master that has no group yet, so of no leader.
        ClientRequest::ClusterStatus | ClientRequest::InitCluster => Ok(req),
        ClientRequest::Stale(inner) if inner.is_read() => Ok(*inner),
        ClientRequest::Stale(inner) => Err(error(
            ErrorKind::InvalidRequest,
            format!("only reads may be answered stale, not {inner:?}"),
        )),
        read if read.is_read() => match shared.raft.linearize().await {
            Ok(()) => Ok(read),
            Err(e) => Err(raft_error(shared, e)),
        },
        write => match shared.raft.leader_applied().await {
            Ok(()) => Ok(write),
            Err(e) => Err(raft_error(shared, e)),
        },
    }
}

pub(crate) fn get_task(
    shared: &Shared,
    who: &Identity,
    id: TaskId,
) -> Result<TaskInfo, ClientResponse> {
    shared
        .read(|s| s.tasks.get(&id).filter(|t| task_visible(who, t)).cloned())
        .map(shown)
        .ok_or_else(|| error(ErrorKind::NotFound, format!("no task {id}")))
}

/// A page of the tasks `who` may see, as `filter` asks, small enough for one message.
fn list_tasks(shared: &Shared, who: &Identity, filter: &TaskFilter) -> ClientResponse {
    let limit = filter
        .limit
        .unwrap_or(wasmos_proto::MAX_TASK_PAGE)
        .clamp(1, wasmos_proto::MAX_TASK_PAGE) as usize;
    let start = filter.after.map_or(0, |t| t.0.saturating_add(1));
    // However many a caller lists, there are only eight states to compare against.
    let states: std::collections::BTreeSet<TaskState> = filter.states.iter().copied().collect();
    // Filled up to about half a frame (tasks may carry large arguments), so a page costs the
    // master a few MiB whatever is in it; the client asks for the rest with `after`.
    let budget = wasmos_proto::MAX_FRAME_BYTES / 2;
    let page: Vec<TaskInfo> = shared.read(|s| {
        let mut bytes = 0usize;
        s.tasks
            .range(TaskId(start)..)
            .map(|(_, t)| t)
            .filter(|t| task_visible(who, t))
            .filter(|t| states.is_empty() || states.contains(&t.status.state))
            .take(limit)
            .take_while(|t| {
                let first = bytes == 0;
                bytes = bytes.saturating_add(wasmos_state::approx_bytes(&Command::SetStatus {
                    task: t.id,
                    status: t.status.clone(),
                    now_ms: 0,
                }));
                bytes = bytes.saturating_add(wasmos_state::spec_bytes(&t.spec) as usize);
                first || bytes <= budget
            })
            .map(|t| shown(t.clone()))
            .collect()
    });
    match fit_page(page) {
        Ok(page) => ClientResponse::Tasks(page),
        Err(first) => error(
            ErrorKind::TooLarge,
            format!(
                "task {} alone is too large to list; see it with `task show`",
                first.map_or(TaskId(0), |t| t.id)
            ),
        ),
    }
}

async fn answer(shared: &Shared, who: &Identity, req: ClientRequest) -> ClientResponse {
    match req {
        ClientRequest::HasBundle { hash } => {
            // Recorded means a majority of masters held it; this one fetches its own copy now
            // if it lacks one, so an upload is skipped only when the bytes really are there.
            // Only blobs the caller may read count: whether another tenant holds some bytes
            // is not the caller's to learn, and a tenant that wants them sends them.
            let known = shared.read(|s| s.may_read(&who.to_uri(), &hash));
            ClientResponse::HasBundle(
                known
                    && (shared.bundles.contains(&hash)
                        || crate::peers::blob(shared, &hash).await.is_ok()),
            )
        }
        ClientRequest::SubmitTask { spec, key } => submit(shared, who, spec, key).await,
        req @ (ClientRequest::SubmitJob { .. }
        | ClientRequest::ListJobs { .. }
        | ClientRequest::GetJob { .. }
        | ClientRequest::KillJob { .. }
        | ClientRequest::ScaleJob { .. }
        | ClientRequest::UpdateService { .. }) => crate::jobs::answer(shared, who, req).await,
        ClientRequest::ListTasks { filter } => list_tasks(shared, who, &filter),
        ClientRequest::ListReservations => list_reservations(shared, who),
        ClientRequest::ListFrameworks => crate::frameworks::list(shared, who).await,
        ClientRequest::TeardownFramework { id } => {
            crate::frameworks::teardown(shared, who, id).await
        }
        ClientRequest::DrainAgent { agent, drain } => drain_agent(shared, who, agent, drain).await,
        ClientRequest::ResizeAgent { agent, total } => {
            resize_agent(shared, who, agent, total).await
        }
        ClientRequest::ScheduleMaintenance { agents, window } => {
            schedule_maintenance(shared, who, agents, window).await
        }
        ClientRequest::RemoveReservation { agent, role } => {
            remove_reservation(shared, who, agent, &role).await
        }
        ClientRequest::GetTask { id } => match get_task(shared, who, id) {
            Ok(t) => ClientResponse::Task(Box::new(t)),
            Err(e) => e,
        },
        // Another tenant's task is as unknown as one that never was.
        ClientRequest::TaskUsage { id } => match get_task(shared, who, id) {
            Ok(_) => ClientResponse::Usage {
                task: id,
                samples: shared.task_usage(id),
            },
            Err(e) => e,
        },
        ClientRequest::ListAgents => {
            let snap = snapshot(shared).await;
            let own_role = crate::policy::tenant(who).and_then(|t| Role::new(&t).ok());
            let last_seen: BTreeMap<wasmos_proto::AgentId, u64> = shared
                .agents()
                .iter()
                .map(|(id, l)| (id.clone(), l.last_seen_ms))
                .collect();
            ClientResponse::Agents(shared.read(|s| {
                let used = s.used_by_agent();
                s.agents
                    .values()
                    .map(|a| {
                        let seen = last_seen.get(&a.id);
                        let summary = snap.agents.get(&a.id);
                        AgentInfo {
                            id: a.id.clone(),
                            state: if seen.is_some() {
                                AgentState::Active
                            } else {
                                AgentState::Disconnected
                            },
                            total: a.total.clone(),
                            used: used.get(&a.id).cloned().unwrap_or_default(),
                            // A tenant sees its own roles' reservations, not who else
                            // holds what where.
                            reserved: s
                                .reserved_on(&a.id)
                                .into_iter()
                                .filter(|(r, _)| own_role.as_ref().is_none_or(|o| r.is_within(o)))
                                .map(|(r, res)| (r.to_string(), res))
                                .collect(),
                            offered: summary.map(|x| x.offered.clone()).unwrap_or_default(),
                            revocable: summary
                                .map(|x| x.revocable_free.clone())
                                .unwrap_or_default(),
                            attributes: a.attributes.clone(),
                            fuel_per_core_second: a.fuel_per_core_second,
                            registered_ms: a.registered_ms,
                            last_seen_ms: seen.copied().unwrap_or(a.registered_ms),
                            peer_addr: a.peer_addr.clone().filter(|_| own_role.is_none()),
                            draining: a.draining,
                            resized: a.resized,
                            maintenance: a.maintenance.as_ref().map(|m| {
                                // Which frameworks answered what: operators only.
                                let answered = |accept: bool| {
                                    m.answers
                                        .iter()
                                        .filter(|(_, a)| **a == accept && own_role.is_none())
                                        .map(|(f, _)| *f)
                                        .collect()
                                };
                                wasmos_proto::MaintenanceInfo {
                                    window: m.window,
                                    active: m.begun,
                                    accepted: answered(true),
                                    declined: answered(false),
                                }
                            }),
                        }
                    })
                    .collect()
            }))
        }
        ClientRequest::KillTask { id } => kill(shared, who, id).await,
        req @ ClientRequest::SetRole { .. } => set_role(shared, who, req).await,
        ClientRequest::Revoke { serial, identity } => revoke(shared, who, serial, identity).await,
        ClientRequest::ListRevoked { after } => list_revoked(shared, who, after),
        ClientRequest::ListAudit { filter } => list_audit(shared, who, &filter),
        ClientRequest::SignBundle { hash, signature } => {
            crate::signing::sign_bundle(shared, who, hash, signature).await
        }
        ClientRequest::AddSigningKey { public } => {
            crate::signing::add_key(shared, who, public).await
        }
        ClientRequest::RevokeSigningKey { key } => {
            crate::signing::revoke_key(shared, who, key).await
        }
        ClientRequest::ListSigningKeys => crate::signing::list_keys(shared, who),
        ClientRequest::RenewCertificate { csr } => {
            match crate::renewal::renew(shared, who, &csr).await {
                Ok(cert_pem) => ClientResponse::Certificate { cert_pem },
                Err((kind, e)) => error(kind, e),
            }
        }
        ClientRequest::RenewAgents => crate::renewal::renew_agents(shared, who),
        ClientRequest::ListRoles => list_roles(shared, who).await,
        ClientRequest::ClusterStatus => ClientResponse::Cluster(Box::new(shared.raft.status())),
        ClientRequest::InitCluster
        | ClientRequest::AddMaster { .. }
        | ClientRequest::RemoveMaster { .. } => membership(shared, who, req).await,
        ClientRequest::PushBundle { .. }
        | ClientRequest::GetBlob { .. }
        | ClientRequest::WatchTask { .. }
        | ClientRequest::WatchEvents { .. }
        | ClientRequest::Stale(_) => error(ErrorKind::InvalidRequest, "handled elsewhere"),
    }
}

/// `wasmos cluster init / join / leave`.
async fn membership(shared: &Shared, who: &Identity, req: ClientRequest) -> ClientResponse {
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may change the master group",
        );
    }
    let done = match req {
        ClientRequest::InitCluster => match shared.raft.initialize_alone().await {
            Ok(()) => shared.raft.ready(shared.cfg.raft.leader_timeout).await,
            Err(e) => Err(e),
        },
        ClientRequest::AddMaster { id, addr } => {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return error(
                    ErrorKind::InvalidRequest,
                    format!("`{addr}` is not HOST:PORT (an address the other masters can reach)"),
                );
            }
            if shared.raft.status().members.iter().any(|m| m.id == id) {
                return error(
                    ErrorKind::InvalidRequest,
                    format!("master {id} is already a member"),
                );
            }
            shared.raft.add_master(id, addr).await
        }
        ClientRequest::RemoveMaster { id } => shared.raft.remove_master(id).await,
        _ => return error(ErrorKind::InvalidRequest, "not a membership change"),
    };
    match done {
        Ok(()) => ClientResponse::Cluster(Box::new(shared.raft.status())),
        Err(wasmos_raft::RaftError::Config(msg)) => error(ErrorKind::InvalidRequest, msg),
        Err(e) => raft_error(shared, e),
    }
}

async fn submit(
    shared: &Shared,
    who: &Identity,
    spec: TaskSpec,
    key: Option<String>,
) -> ClientResponse {
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 128) {
        return error(
            ErrorKind::InvalidRequest,
            "a submission key must be 1 to 128 bytes",
        );
    }
    // Spawned children's keys are `spawn PARENT SEQ`: a client's may not pose as one.
    if key.as_ref().is_some_and(|k| k.starts_with("spawn ")) {
        return error(
            ErrorKind::InvalidRequest,
            "submission keys starting with `spawn ` are the masters' own",
        );
    }
    let mut spec = spec;
    // A task's job slot is the job host's to give (`wasmos:task/context` tells it).
    spec.slot = None;
    // A child is its parent's to start (`wasmos:task/spawn`, through its agent).
    spec.lineage = None;
    if let Err(e) =
        validate_spec(&spec).and_then(|()| crate::policy::seal(&shared.secrets, &mut spec))
    {
        return error(ErrorKind::InvalidRequest, e);
    }
    match resolve_role(who, spec.role.as_deref()) {
        Ok(role) => {
            // The state machine checks it again; checked here too so that a spec over the
            // ceilings (a 15 MiB argument list) never takes a place in the raft log.
            if let Err(e) = shared.read(|s| s.check_spec_ceilings(&spec, &role)) {
                return rejected(e);
            }
            spec.role = Some(role.to_string());
        }
        Err(e) => return error(ErrorKind::InvalidRequest, e),
    }
    // A tenant whose blobs and logs fill its quota starts nothing more that would write.
    if let Identity::Tenant { tenant, .. } = who
        && let Err(e) = shared.check_storage(tenant, 1)
    {
        return error(ErrorKind::TooLarge, e);
    }
    let cmd = Command::SubmitTask {
        id: Some(shared.new_task_id()),
        spec,
        owner: who.to_uri(),
        now_ms: now_ms(),
        key,
    };
    match shared.write(cmd).await {
        Ok(CommandResult::Submitted(id)) => {
            shared.offer_event(Event::Submitted(id));
            ClientResponse::Submitted { id }
        }
        Ok(CommandResult::Rejected(why)) => rejected(why),
        Ok(other) => error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => raft_error(shared, e),
    }
}

async fn kill(shared: &Shared, who: &Identity, id: TaskId) -> ClientResponse {
    let task = match get_task(shared, who, id) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if !crate::policy::may_change(who, &task.owner) {
        return error(
            ErrorKind::InvalidRequest,
            format!(
                "task {id} is {}'s; only its owner or an operator may kill it",
                task.owner
            ),
        );
    }
    if task.status.state.is_terminal() {
        return error(
            ErrorKind::InvalidRequest,
            format!("task {id} already ended as {}", task.status.state),
        );
    }
    match end_task(
        shared,
        id,
        task.agent.as_ref(),
        None,
        "killed before it started",
    )
    .await
    {
        Ok(()) => ClientResponse::Ok,
        Err(e) => raft_error(shared, e),
    }
}

/// Ends a live task: its agent is told to kill it (for `reason`, none for a plain kill), or,
/// when it is on no connected agent, it is recorded killed with the message `unsent`.
pub(crate) async fn end_task(
    shared: &Shared,
    id: TaskId,
    agent: Option<&AgentId>,
    reason: Option<Reason>,
    unsent: &str,
) -> Result<(), wasmos_raft::RaftError> {
    if let Some(agent) = agent
        && shared.send_to_agent(agent, MasterToAgent::Kill { task: id, reason })
    {
        return Ok(());
    }
    let status = TaskStatus::with_reason(
        TaskState::Killed,
        Some(reason.unwrap_or(Reason::Killed)),
        unsent,
    );
    let cmd = Command::SetStatus {
        task: id,
        status,
        now_ms: now_ms(),
    };
    shared.write(cmd).await?;
    shared.offer_event(Event::TaskChanged(id));
    Ok(())
}

/// What the leader's allocator shows; empty if the offer cycle does not answer in time.
pub(crate) async fn snapshot(shared: &Shared) -> Snapshot {
    try_snapshot(shared).await.unwrap_or_default()
}

/// What the leader's allocator shows, if its offer cycle answers within 5 s.
pub(crate) async fn try_snapshot(shared: &Shared) -> Option<Snapshot> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.offer_event(Event::Snapshot(tx));
    tokio::time::timeout(std::time::Duration::from_secs(5), rx)
        .await
        .ok()?
        .ok()
}

async fn set_role(shared: &Shared, who: &Identity, req: ClientRequest) -> ClientResponse {
    let ClientRequest::SetRole {
        role,
        weight_milli,
        guarantee,
        limit,
        clear_ceilings,
        ceilings,
        reservation_allowance,
        egress,
        require_signed_by,
    } = req
    else {
        return error(ErrorKind::InvalidRequest, "not a role change");
    };
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may change weights, quotas, ceilings and egress rules",
        );
    }
    let role = match Role::new(&role) {
        Ok(r) => r,
        Err(e) => return error(ErrorKind::InvalidRequest, e.to_string()),
    };
    let mut record = shared.read(|s| s.roles.get(&role).cloned().unwrap_or_default());
    if let Some(w) = weight_milli {
        record.weight_milli = w;
    }
    if let Some(g) = guarantee {
        record.guarantee = g;
    }
    if let Some(l) = limit {
        record.limit = l;
    }
    if clear_ceilings {
        record.ceilings = Default::default();
    }
    record.ceilings = record.ceilings.merged(&ceilings);
    if let Some(a) = reservation_allowance {
        record.reservation_allowance = a;
    }
    if let Some(e) = egress {
        record.egress = e;
    }
    if let Some(keys) = require_signed_by {
        if keys.len() > wasmos_proto::MAX_ROLE_SIGNERS
            || keys
                .iter()
                .any(|k| k.len() > wasmos_proto::MAX_KEY_ID_BYTES)
        {
            return error(
                ErrorKind::InvalidRequest,
                format!(
                    "a role requires at most {} signing keys, each named by its id",
                    wasmos_proto::MAX_ROLE_SIGNERS
                ),
            );
        }
        record.require_signed_by = keys;
    }
    match shared.write(Command::SetRole { role, record }).await {
        Ok(CommandResult::Rejected(why)) => rejected(why),
        Ok(_) => {
            shared.offer_event(Event::RolesChanged);
            ClientResponse::Ok
        }
        Err(e) => raft_error(shared, e),
    }
}

fn list_reservations(shared: &Shared, who: &Identity) -> ClientResponse {
    ClientResponse::Reservations(shared.read(|s| {
        let mut out = Vec::new();
        for (agent, by_role) in &s.reservations {
            for (role, resources) in by_role {
                if !role_visible(who, role) {
                    continue;
                }
                let held = s
                    .live_tasks_on(agent)
                    .filter_map(|t| s.charges.get(&t))
                    .filter_map(|c| c.reserved.get(role))
                    .fold(wasmos_proto::Resources::default(), |acc, r| {
                        acc.saturating_add(r)
                    });
                out.push(wasmos_proto::ReservationInfo {
                    agent: agent.clone(),
                    role: role.to_string(),
                    resources: resources.clone(),
                    held,
                });
            }
        }
        out
    }))
}

async fn remove_reservation(
    shared: &Shared,
    who: &Identity,
    agent: wasmos_proto::AgentId,
    role: &str,
) -> ClientResponse {
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may remove reservations",
        );
    }
    let role = match Role::new(role) {
        Ok(r) => r,
        Err(e) => return error(ErrorKind::InvalidRequest, e.to_string()),
    };
    match shared
        .write(Command::RemoveReservation {
            agent: agent.clone(),
            role,
        })
        .await
    {
        Ok(CommandResult::Unreserved { removed, held }) => {
            shared.offer_event(Event::ReservationsChanged(agent));
            ClientResponse::Unreserved { removed, held }
        }
        Ok(CommandResult::Rejected(why)) => rejected(why),
        Ok(other) => error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => raft_error(shared, e),
    }
}

/// `wasmos agent set`: the new total is recorded (refused if the agent's reservations would not
/// fit), and the offer cycle rescinds the agent's offers and makes them again from it.
async fn resize_agent(
    shared: &Shared,
    who: &Identity,
    agent: wasmos_proto::AgentId,
    total: Option<wasmos_proto::Resources>,
) -> ClientResponse {
    if let Some(no) = crate::signing::operator_only(who, "resize agents") {
        return no;
    }
    if let Some(t) = &total
        && let Err(why) = t.check_scalars()
    {
        return error(ErrorKind::InvalidRequest, why);
    }
    match shared
        .write(Command::ResizeAgent {
            agent: agent.clone(),
            total,
        })
        .await
    {
        Ok(CommandResult::Ok) => shared.offer_event(Event::AgentResized(agent.clone())),
        Ok(CommandResult::Duplicate) => {}
        Ok(CommandResult::Rejected(why)) => return rejected(why),
        Ok(other) => return error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => return raft_error(shared, e),
    }
    shared.read(|s| ClientResponse::Resized {
        total: s
            .agents
            .get(&agent)
            .map(|a| a.total.clone())
            .unwrap_or_default(),
        used: s.used_on(&agent),
    })
}

/// `wasmos agent drain/undrain`: the drain is recorded (nothing is placed on the agent from
/// then on, and it outlives the agent's restarts and the masters' failovers), the offer cycle
/// rescinds the agent's offers, and a drain kills its live tasks with reason `maintenance`
/// (each asked to stop first, within its grace period, when it imports `cancellation`); the
/// frameworks of jobs and services run them again elsewhere.
async fn drain_agent(
    shared: &Shared,
    who: &Identity,
    agent: wasmos_proto::AgentId,
    drain: bool,
) -> ClientResponse {
    if let Some(no) = crate::signing::operator_only(who, "drain agents") {
        return no;
    }
    match shared
        .write(Command::DrainAgent {
            agent: agent.clone(),
            drain,
        })
        .await
    {
        // Already so: a drain kills what may have started since, all the same.
        Ok(CommandResult::Ok | CommandResult::Duplicate) => {}
        Ok(CommandResult::Rejected(why)) => return rejected(why),
        Ok(other) => return error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => return raft_error(shared, e),
    }
    shared.offer_event(Event::DrainChanged(agent.clone()));
    if !drain {
        return ClientResponse::Drained { killed: 0 };
    }
    match stop_drained(shared, &agent).await {
        Ok(killed) => ClientResponse::Drained { killed },
        Err(e) => raft_error(shared, e),
    }
}

/// Kills the live tasks of a drained agent with reason `maintenance`; how many.
pub(crate) async fn stop_drained(
    shared: &Shared,
    agent: &wasmos_proto::AgentId,
) -> Result<u32, wasmos_raft::RaftError> {
    let live: Vec<TaskId> = shared.read(|s| s.live_tasks_on(agent).collect());
    let mut killed = 0;
    for id in live {
        end_task(
            shared,
            id,
            Some(agent),
            Some(Reason::Maintenance),
            "its agent was drained while it was not running there, or while that agent was away",
        )
        .await?;
        killed += 1;
    }
    Ok(killed)
}

/// `wasmos maintenance schedule/cancel`: the windows are recorded, and the offer cycle sends
/// inverse offers to the frameworks running tasks on those agents; the reaper's loop begins
/// and ends each window on time.
async fn schedule_maintenance(
    shared: &Shared,
    who: &Identity,
    agents: Vec<wasmos_proto::AgentId>,
    window: Option<wasmos_proto::MaintenanceWindow>,
) -> ClientResponse {
    if let Some(no) = crate::signing::operator_only(who, "schedule maintenance") {
        return no;
    }
    if agents.is_empty() || agents.len() > wasmos_proto::MAX_MAINTENANCE_AGENTS {
        return error(
            ErrorKind::InvalidRequest,
            format!(
                "name 1 to {} agents for maintenance",
                wasmos_proto::MAX_MAINTENANCE_AGENTS
            ),
        );
    }
    if let Some(w) = window {
        let now = now_ms();
        let length = w.end_ms.saturating_sub(w.start_ms);
        if length == 0 || length > wasmos_proto::MAX_MAINTENANCE_MS {
            return error(
                ErrorKind::InvalidRequest,
                "a maintenance window lasts from a second to a week",
            );
        }
        if w.end_ms <= now || w.start_ms > now + 365 * 24 * 3_600_000 {
            return error(
                ErrorKind::InvalidRequest,
                "a maintenance window ends in the future and starts within a year",
            );
        }
    }
    match shared
        .write(Command::ScheduleMaintenance {
            agents: agents.clone(),
            window,
        })
        .await
    {
        Ok(CommandResult::Ok) => {}
        Ok(CommandResult::Rejected(why)) => return rejected(why),
        Ok(other) => return error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => return raft_error(shared, e),
    }
    shared.offer_event(Event::MaintenanceChanged(agents));
    ClientResponse::Ok
}

/// `wasmos cert revoke`: the revocation is replicated, then every master closes what it
/// covers (see `revocation::follow`).
async fn revoke(
    shared: &Shared,
    who: &Identity,
    serial: Option<String>,
    identity: Option<String>,
) -> ClientResponse {
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may revoke certificates",
        );
    }
    let target = match (serial, identity) {
        (Some(s), None) => match wasmos_net::normalize_serial(&s) {
            Some(s) => wasmos_state::RevokeTarget::Serial(s),
            None => {
                let shown: String = s.chars().take(48).collect();
                return error(
                    ErrorKind::InvalidRequest,
                    format!("`{shown}` is not a certificate serial number (hex, at most 20 bytes)"),
                );
            }
        },
        (None, Some(uri)) => match Identity::from_uri(&uri) {
            // A revocation is for good: a master leaves the group instead (`wasmos cluster
            // leave`), and an operator does not lock themselves out.
            Ok(Identity::Master(_)) => {
                return error(
                    ErrorKind::InvalidRequest,
                    "masters are not revoked: remove one from the group with `wasmos cluster leave`",
                );
            }
            Ok(id) if &id == who => {
                return error(
                    ErrorKind::InvalidRequest,
                    "an operator cannot revoke themselves",
                );
            }
            Ok(id) => wasmos_state::RevokeTarget::Identity(id.to_uri()),
            Err(_) if uri.len() > wasmos_state::MAX_REVOKED_IDENTITY_BYTES => {
                return error(
                    ErrorKind::InvalidRequest,
                    format!(
                        "the identity is longer than {} bytes",
                        wasmos_state::MAX_REVOKED_IDENTITY_BYTES
                    ),
                );
            }
            Err(e) => return error(ErrorKind::InvalidRequest, e.to_string()),
        },
        _ => {
            return error(
                ErrorKind::InvalidRequest,
                "say what to revoke: a serial number or an identity, one of them",
            );
        }
    };
    match shared
        .write(Command::Revoke {
            target,
            by: who.to_uri(),
            now_ms: crate::now_ms(),
        })
        .await
    {
        Ok(CommandResult::Ok) => ClientResponse::Ok,
        Ok(CommandResult::Rejected(why)) => rejected(why),
        Ok(other) => error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => raft_error(shared, e),
    }
}

fn list_revoked(
    shared: &Shared,
    who: &Identity,
    after: Option<(String, String)>,
) -> ClientResponse {
    use std::ops::Bound::{Excluded, Unbounded};
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may list revocations",
        );
    }
    if let Some((kind, _)) = &after
        && kind != "serial"
        && kind != "identity"
    {
        return error(
            ErrorKind::InvalidRequest,
            "a revocation list cursor names `serial` or `identity`",
        );
    }
    let page = shared.read(|s| {
        let info = |kind: &str, (value, r): (&String, &wasmos_state::Revocation)| RevokedInfo {
            kind: kind.into(),
            value: value.clone(),
            by: r.by.clone(),
            at_ms: r.at_ms,
        };
        // Serials, then identities; a cursor past the serials starts in the identities.
        let (serials, identities) = match &after {
            None => (Some(Unbounded), Unbounded),
            Some((kind, v)) if kind == "serial" => (Some(Excluded(v.clone())), Unbounded),
            Some((_, v)) => (None, Excluded(v.clone())),
        };
        let serials = serials
            .into_iter()
            .flat_map(|from| s.revoked_serials.range((from, Unbounded)))
            .map(|e| info("serial", e));
        let identities = s
            .revoked_identities
            .range((identities, Unbounded))
            .map(|e| info("identity", e));
        serials
            .chain(identities)
            .take(wasmos_proto::MAX_REVOKED_PAGE)
            .collect::<Vec<_>>()
    });
    match fit_page(page) {
        Ok(page) => ClientResponse::Revoked(page),
        Err(_) => error(ErrorKind::Internal, "a revocation is too large to list"),
    }
}

/// `wasmos audit`: a page of the entries `filter` matches, oldest first.
fn list_audit(
    shared: &Shared,
    who: &Identity,
    filter: &wasmos_proto::AuditFilter,
) -> ClientResponse {
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may read the audit log",
        );
    }
    let (page, scanned_to, newest) = shared.read(|s| {
        let newest = s.audit.last_key_value().map_or(0, |(k, _)| *k);
        let mut scanned_to = filter.after;
        let mut page = Vec::new();
        for (seq, e) in s
            .audit
            .range(filter.after.saturating_add(1)..)
            .take(wasmos_proto::MAX_AUDIT_SCAN)
        {
            if page.len() == wasmos_proto::MAX_AUDIT_PAGE {
                break;
            }
            scanned_to = *seq;
            let matches = filter.since_ms.is_none_or(|t| e.at_ms >= t)
                && filter.identity.as_ref().is_none_or(|i| &e.identity == i)
                && filter.action.as_ref().is_none_or(|a| &e.action == a);
            if matches {
                page.push(e.clone());
            }
        }
        (page, scanned_to, newest)
    });
    let full = page.len();
    match fit_page(page) {
        Ok(entries) => {
            // A page cut to fit a message ends at its last entry: the rest comes next time.
            let scanned_to = match entries.last() {
                Some(last) if entries.len() < full => last.seq,
                _ => scanned_to,
            };
            ClientResponse::Audit {
                entries,
                scanned_to,
                newest,
            }
        }
        Err(_) => error(ErrorKind::Internal, "an audit entry is too large to list"),
    }
}

/// A role's settings as `role list` shows them, before what the allocator reports.
fn role_info(role: &Role, r: &wasmos_state::RoleRecord) -> RoleInfo {
    RoleInfo {
        role: role.to_string(),
        weight_milli: r.weight_milli,
        guarantee: r.guarantee.clone(),
        limit: r.limit.clone(),
        allocated: Default::default(),
        offered: Default::default(),
        reserved: Default::default(),
        share_ppm: 0,
        frameworks: 0,
        ceilings: r.ceilings.clone(),
        effective: Default::default(),
        reservation_allowance: r.reservation_allowance.clone(),
        dynamically_reserved: Default::default(),
        egress: r.egress.clone(),
        require_signed_by: r.require_signed_by.clone(),
        signers: None,
    }
}

async fn list_roles(shared: &Shared, who: &Identity) -> ClientResponse {
    let snap = snapshot(shared).await;
    let records = shared.read(|s| s.roles.clone());
    let mut roles: BTreeMap<Role, RoleInfo> = records
        .iter()
        .map(|(role, r)| (role.clone(), role_info(role, r)))
        .collect();
    for summary in snap.roles {
        let info = roles.entry(summary.role.clone()).or_insert_with(|| {
            let record = wasmos_state::RoleRecord {
                weight_milli: (summary.weight * 1000.0).round() as u64,
                guarantee: summary.quota.guarantee.clone(),
                limit: summary.quota.limit.clone(),
                ..Default::default()
            };
            role_info(&summary.role, &record)
        });
        info.allocated = summary.allocated;
        info.offered = summary.offered;
        info.reserved = summary.reserved;
        info.share_ppm = (summary.share * 1e6).round() as u64;
        info.frameworks = summary.frameworks as u64;
    }
    // A tenant's own top-level role shows even before anything is set for it: its
    // ceilings and quota are what the tenant meets.
    if let Identity::Tenant { tenant, .. } = who
        && let Ok(home) = Role::new(tenant)
    {
        let info = role_info(&home, &Default::default());
        roles.entry(home).or_insert(info);
    }
    shared.read(|s| {
        for (role, info) in roles.iter_mut() {
            info.effective = s
                .ceilings_for(role)
                .into_iter()
                .map(|(_, c)| c)
                .reduce(|a, b| a.min(&b))
                .unwrap_or(wasmos_state::DEFAULT_CEILINGS);
            info.dynamically_reserved = s.dynamically_reserved(role);
            info.signers = s
                .signers_for(role.as_str())
                .map(|(r, keys)| (r.to_string(), keys.to_vec()));
        }
    });
    ClientResponse::Roles(
        roles
            .into_iter()
            .filter(|(r, _)| role_visible(who, r))
            .map(|(_, info)| info)
            .collect(),
    )
}

/// How a streamed read (`logs`, a blob download) ended, for the audit log.
enum Streamed {
    /// It was sent (all of it, or until the reader left).
    Sent,
    /// Refused, with what the caller was told.
    Refused(String),
}

/// `wasmos events`: the feed's frames until it ends or the reader goes away.
async fn stream_events(
    shared: &Arc<Shared>,
    who: &Identity,
    query: crate::events::EventQuery,
    send: &mut SendStream,
) -> Result<Streamed, FrameError> {
    match crate::events::EventFeed::open(shared.clone(), who.clone(), query) {
        Ok(feed) => send_feed(feed, send).await,
        Err(refusal) => refuse(send, refusal).await,
    }
}

/// Sends a feed's frames until its last, an error (a refusal, recorded as such), or until the
/// reader goes away (stopped the stream, or its connection is gone): its place among the
/// tenant's follows is given back then, not when the task ends or the stream would.
async fn send_feed(
    mut feed: impl crate::api::Feed,
    send: &mut SendStream,
) -> Result<Streamed, FrameError> {
    loop {
        let frame = tokio::select! {
            frame = feed.next_frame() => frame,
            _ = send.stopped() => return Ok(Streamed::Sent),
        };
        match frame {
            Some(refusal @ ClientResponse::Error { .. }) => return refuse(send, refusal).await,
            Some(frame) => send_frame(send, &frame).await?,
            None => return Ok(Streamed::Sent),
        }
    }
}

/// Answers a streamed read with a refusal.
async fn refuse(send: &mut SendStream, answer: ClientResponse) -> Result<Streamed, FrameError> {
    send_frame(send, &answer).await?;
    Ok(Streamed::Refused(crate::audit::result_of(&answer)))
}

/// Records a streamed read: always when it was refused (an unknown task or blob is a probe
/// worth seeing), otherwise only when reads are audited.
async fn record_streamed(
    shared: &Shared,
    entry: Option<wasmos_proto::AuditEntry>,
    all: bool,
    result: &Result<Streamed, FrameError>,
) {
    let Some(entry) = entry else { return };
    let said = match result {
        Ok(Streamed::Refused(said)) => said.clone(),
        Ok(Streamed::Sent) if all => "ok".to_string(),
        Err(e) if all => format!("failed: {e}"),
        _ => return,
    };
    crate::audit::record(shared, entry, said).await;
}

/// Sends a blob's bytes after a `Blob` header.
async fn get_blob(
    shared: &Shared,
    who: &Identity,
    hash: &BundleHash,
    send: &mut SendStream,
) -> Result<Streamed, FrameError> {
    match blob_bytes(shared, who, hash).await {
        Ok(bytes) => {
            let head = ClientResponse::Blob {
                size: bytes.len() as u64,
            };
            send_frame(send, &head).await?;
            send.write_all(&bytes).await.map_err(FrameError::Write)?;
            Ok(Streamed::Sent)
        }
        Err(refusal) => refuse(send, refusal).await,
    }
}

/// A blob's bytes, if `who` may read it and the masters store it.
pub(crate) async fn blob_bytes(
    shared: &Shared,
    who: &Identity,
    hash: &BundleHash,
) -> Result<Vec<u8>, ClientResponse> {
    // The blob's readers decide, not whether some visible task names it: a task spec may
    // name any hash, and naming one must not be a way to read it.
    let (allowed, held_by) = shared.read(|s| {
        let allowed = s.may_read(&who.to_uri(), hash);
        (
            allowed,
            s.bundles.get(hash).and_then(|m| m.kept_on.first().cloned()),
        )
    });
    let missing = || {
        error(
            ErrorKind::NotFound,
            format!("no blob {hash} that you may read"),
        )
    };
    if !allowed {
        return Err(missing());
    }
    if let Some(agent) = held_by {
        let message = format!(
            "blob {hash} is an intermediate output kept on agent {agent}, not stored on the masters; tasks read it as an input"
        );
        return Err(error(ErrorKind::NotFound, message));
    }
    crate::peers::blob(shared, hash)
        .await
        .map_err(|_| missing())
}

async fn push_bundle(
    shared: &Arc<Shared>,
    hash: BundleHash,
    size: u64,
    kind: BlobKind,
    reader: Option<String>,
    recv: &mut RecvStream,
) -> ClientResponse {
    match store_blob(shared, hash, size, kind, reader, recv).await {
        Ok(()) => ClientResponse::Ok,
        Err(StoreFailure::Refused(kind, message)) => error(kind, message),
        Err(StoreFailure::Raft(e)) => raft_error(shared, e),
    }
}

/// Streams a task's output (see [`crate::watch::OutputFeed`]).
async fn watch(
    shared: &Arc<Shared>,
    who: &Identity,
    id: TaskId,
    follow: bool,
    send: &mut SendStream,
) -> Result<Streamed, FrameError> {
    match crate::watch::OutputFeed::open(shared.clone(), who, id, follow) {
        Ok(feed) => send_feed(feed, send).await,
        Err(refusal) => refuse(send, refusal).await,
    }
}
