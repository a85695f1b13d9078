//! The client channel: one request per QUIC stream from `wasmos` commands (upload, submit, list,
//! watch). Tenants see only their own tasks; operators see everything.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmos_alloc::Role;
use wasmos_net::{
    Connection, FrameError, Identity, RecvStream, SendStream, recv_frame, send_frame,
};
use wasmos_proto::{
    AgentInfo, AgentState, BlobKind, BundleHash, ClientRequest, ClientResponse, ErrorKind,
    MasterToAgent, Reason, RoleInfo, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus,
};
use wasmos_state::{Command, CommandResult};

use crate::offers::{Event, Snapshot};
use crate::{Shared, now_ms};

/// The role of operators' submissions that name none.
const DEFAULT_ROLE: &str = "default";

pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection, who: Identity) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(handle(shared.clone(), who.clone(), send, recv));
    }
}

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> ClientResponse {
    ClientResponse::Error {
        kind,
        message: message.into(),
    }
}

fn visible(who: &Identity, task: &TaskInfo) -> bool {
    match who {
        Identity::Operator(_) | Identity::Master(_) => true,
        Identity::Tenant { tenant, .. } => task
            .owner
            .starts_with(&format!("wasmos://tenant/{tenant}/")),
        Identity::Agent(_) => false,
    }
}

async fn handle(shared: Arc<Shared>, who: Identity, mut send: SendStream, mut recv: RecvStream) {
    let req = match recv_frame::<ClientRequest>(&mut recv).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            let _ = send_frame(&mut send, &error(ErrorKind::InvalidRequest, e.to_string())).await;
            let _ = send.finish();
            return;
        }
    };
    let req = match route(&shared, req).await {
        Ok(req) => req,
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
            watch(&shared, &who, id, follow, &mut send).await
        }
        ClientRequest::PushBundle { hash, size, kind } => {
            let resp = push_bundle(&shared, hash, size, kind, &mut recv).await;
            send_frame(&mut send, &resp).await
        }
        ClientRequest::GetBlob { hash } => get_blob(&shared, &who, &hash, &mut send).await,
        other => {
            let resp = answer(&shared, &who, other).await;
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

/// A raft failure as the client sees it: a redirect when another master leads.
pub(crate) fn raft_error(shared: &Shared, e: wasmos_raft::RaftError) -> ClientResponse {
    match e {
        wasmos_raft::RaftError::NotLeader { .. } => {
            let (leader, addr) = shared.raft.leader_addr();
            ClientResponse::NotLeader { leader, addr }
        }
        other => error(ErrorKind::Unavailable, other.to_string()),
    }
}

fn get_task(shared: &Shared, who: &Identity, id: TaskId) -> Result<TaskInfo, ClientResponse> {
    shared
        .read(|s| s.tasks.get(&id).cloned())
        .filter(|t| visible(who, t))
        .ok_or_else(|| error(ErrorKind::NotFound, format!("no task {id}")))
}

async fn answer(shared: &Shared, who: &Identity, req: ClientRequest) -> ClientResponse {
    match req {
        ClientRequest::HasBundle { hash } => {
            // Recorded means a majority of masters held it; this one fetches its own copy now
            // if it lacks one, so an upload is skipped only when the bytes really are there.
            let known = shared.read(|s| s.bundles.contains_key(&hash));
            ClientResponse::HasBundle(
                known
                    && (shared.bundles.contains(&hash)
                        || crate::peers::blob(shared, &hash).await.is_ok()),
            )
        }
        ClientRequest::SubmitTask { spec, key } => submit(shared, who, spec, key).await,
        req @ (ClientRequest::SubmitJob { .. }
        | ClientRequest::ListJobs
        | ClientRequest::GetJob { .. }
        | ClientRequest::KillJob { .. }
        | ClientRequest::ScaleJob { .. }) => crate::jobs::answer(shared, who, req).await,
        ClientRequest::ListTasks => ClientResponse::Tasks(shared.read(|s| {
            s.tasks
                .values()
                .filter(|t| visible(who, t))
                .cloned()
                .collect()
        })),
        ClientRequest::GetTask { id } => match get_task(shared, who, id) {
            Ok(t) => ClientResponse::Task(Box::new(t)),
            Err(e) => e,
        },
        ClientRequest::ListAgents => {
            let snap = snapshot(shared).await;
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
                            reserved: s
                                .reserved_on(&a.id)
                                .into_iter()
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
                        }
                    })
                    .collect()
            }))
        }
        ClientRequest::KillTask { id } => kill(shared, who, id).await,
        ClientRequest::SetRole {
            role,
            weight_milli,
            guarantee,
            limit,
        } => set_role(shared, who, &role, weight_milli, guarantee, limit).await,
        ClientRequest::ListRoles => list_roles(shared, who).await,
        ClientRequest::ClusterStatus => ClientResponse::Cluster(Box::new(shared.raft.status())),
        ClientRequest::InitCluster
        | ClientRequest::AddMaster { .. }
        | ClientRequest::RemoveMaster { .. } => membership(shared, who, req).await,
        ClientRequest::PushBundle { .. }
        | ClientRequest::GetBlob { .. }
        | ClientRequest::WatchTask { .. }
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

/// What the master checks of any task spec before it records it.
pub(crate) fn validate_spec(spec: &TaskSpec) -> Result<(), String> {
    if spec.timeout_ms == 0 {
        return Err("timeout must be greater than zero".into());
    }
    if spec.resources.cpu_millis == 0 || spec.resources.mem_bytes == 0 {
        return Err("cpu and mem must be greater than zero".into());
    }
    spec.check()
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
    if let Err(e) = validate_spec(&spec) {
        return error(ErrorKind::InvalidRequest, e);
    }
    let mut spec = spec;
    match resolve_role(who, spec.role.as_deref()) {
        Ok(role) => spec.role = Some(role.to_string()),
        Err(e) => return error(ErrorKind::InvalidRequest, e),
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
        Ok(CommandResult::Rejected(why)) => error(ErrorKind::InvalidRequest, why),
        Ok(other) => error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => raft_error(shared, e),
    }
}

async fn kill(shared: &Shared, who: &Identity, id: TaskId) -> ClientResponse {
    let task = match get_task(shared, who, id) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if task.status.state.is_terminal() {
        return error(
            ErrorKind::InvalidRequest,
            format!("task {id} already ended as {}", task.status.state),
        );
    }
    if let Some(agent) = &task.agent
        && shared.send_to_agent(
            agent,
            MasterToAgent::Kill {
                task: id,
                reason: None,
            },
        )
    {
        return ClientResponse::Ok;
    }
    let status = TaskStatus::with_reason(
        TaskState::Killed,
        Some(Reason::Killed),
        "killed before it started",
    );
    match shared
        .write(Command::SetStatus {
            task: id,
            status,
            now_ms: now_ms(),
        })
        .await
    {
        Ok(_) => {
            shared.offer_event(Event::TaskChanged(id));
            ClientResponse::Ok
        }
        Err(e) => raft_error(shared, e),
    }
}

/// The role a submission runs under: the one it names, else the submitter's own (a tenant's
/// name; `default` for operators). Tenants may only use their role and roles below it.
pub(crate) fn resolve_role(who: &Identity, asked: Option<&str>) -> Result<Role, String> {
    let home = match who {
        Identity::Tenant { tenant, .. } => Some(
            Role::new(tenant)
                .map_err(|e| format!("tenant `{tenant}` cannot be used as a role: {e}"))?,
        ),
        _ => None,
    };
    let role = match (asked, &home) {
        (Some(r), _) => Role::new(r).map_err(|e| e.to_string())?,
        (None, Some(home)) => home.clone(),
        (None, None) => Role::new(DEFAULT_ROLE).map_err(|e| e.to_string())?,
    };
    if let Some(home) = home
        && !role.is_within(&home)
    {
        return Err(format!(
            "role `{role}` is not yours: tenant `{home}` may use role `{home}` and roles under it, such as `{home}/batch`"
        ));
    }
    Ok(role)
}

/// What the leader's allocator shows; empty if the offer cycle does not answer in time.
async fn snapshot(shared: &Shared) -> Snapshot {
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.offer_event(Event::Snapshot(tx));
    match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
        Ok(Ok(s)) => s,
        _ => Snapshot::default(),
    }
}

async fn set_role(
    shared: &Shared,
    who: &Identity,
    role: &str,
    weight_milli: Option<u64>,
    guarantee: Option<wasmos_proto::Resources>,
    limit: Option<Option<wasmos_proto::Resources>>,
) -> ClientResponse {
    if !matches!(who, Identity::Operator(_)) {
        return error(
            ErrorKind::InvalidRequest,
            "only operators may change weights and quotas",
        );
    }
    let role = match Role::new(role) {
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
    match shared.write(Command::SetRole { role, record }).await {
        Ok(CommandResult::Rejected(why)) => error(ErrorKind::InvalidRequest, why),
        Ok(_) => {
            shared.offer_event(Event::RolesChanged);
            ClientResponse::Ok
        }
        Err(e) => raft_error(shared, e),
    }
}

async fn list_roles(shared: &Shared, who: &Identity) -> ClientResponse {
    let snap = snapshot(shared).await;
    let records = shared.read(|s| s.roles.clone());
    let mut roles: BTreeMap<Role, RoleInfo> = BTreeMap::new();
    for (role, r) in &records {
        roles.insert(
            role.clone(),
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
            },
        );
    }
    for summary in snap.roles {
        let info = roles
            .entry(summary.role.clone())
            .or_insert_with(|| RoleInfo {
                role: summary.role.to_string(),
                weight_milli: (summary.weight * 1000.0).round() as u64,
                guarantee: summary.quota.guarantee.clone(),
                limit: summary.quota.limit.clone(),
                allocated: Default::default(),
                offered: Default::default(),
                reserved: Default::default(),
                share_ppm: 0,
                frameworks: 0,
            });
        info.allocated = summary.allocated;
        info.offered = summary.offered;
        info.reserved = summary.reserved;
        info.share_ppm = (summary.share * 1e6).round() as u64;
        info.frameworks = summary.frameworks as u64;
    }
    let home = match who {
        Identity::Tenant { tenant, .. } => Some(Role::new(tenant).ok()),
        _ => None,
    };
    ClientResponse::Roles(
        roles
            .into_iter()
            .filter(|(r, _)| match &home {
                None => true,
                Some(Some(home)) => r.is_within(home),
                Some(None) => false,
            })
            .map(|(_, info)| info)
            .collect(),
    )
}

/// Sends a blob's bytes after a `Blob` header.
async fn get_blob(
    shared: &Shared,
    who: &Identity,
    hash: &BundleHash,
    send: &mut SendStream,
) -> Result<(), FrameError> {
    let names = |t: &TaskInfo| {
        &t.spec.bundle == hash
            || t.spec.stdin.as_ref() == Some(hash)
            || t.spec.inputs.iter().any(|i| &i.blob == hash)
            || t.spec.mounts.iter().any(|m| &m.archive == hash)
            || t.status.outputs.iter().any(|o| &o.blob == hash)
    };
    let allowed = matches!(who, Identity::Operator(_))
        || shared.read(|s| s.tasks.values().any(|t| visible(who, t) && names(t)));
    let missing = || {
        error(
            ErrorKind::NotFound,
            format!("no blob {hash} that you may read"),
        )
    };
    if !allowed {
        return send_frame(send, &missing()).await;
    }
    match crate::peers::blob(shared, hash).await {
        Ok(bytes) => {
            let head = ClientResponse::Blob {
                size: bytes.len() as u64,
            };
            send_frame(send, &head).await?;
            send.write_all(&bytes).await.map_err(FrameError::Write)
        }
        Err(_) => send_frame(send, &missing()).await,
    }
}

async fn push_bundle(
    shared: &Arc<Shared>,
    hash: BundleHash,
    size: u64,
    kind: BlobKind,
    recv: &mut RecvStream,
) -> ClientResponse {
    match store_blob(shared, hash, size, kind, recv).await {
        Ok(()) => ClientResponse::Ok,
        Err(StoreFailure::Refused(kind, message)) => error(kind, message),
        Err(StoreFailure::Raft(e)) => raft_error(shared, e),
    }
}

pub(crate) enum StoreFailure {
    Refused(ErrorKind, String),
    Raft(wasmos_raft::RaftError),
}

impl StoreFailure {
    pub(crate) fn message(&self) -> String {
        match self {
            StoreFailure::Refused(_, m) => m.clone(),
            StoreFailure::Raft(e) => e.to_string(),
        }
    }
}

/// Reads an announced blob from `recv`, checks it against its hash, copies it to a majority of
/// masters and records it: a client's upload, or a task's output an agent sends.
pub(crate) async fn store_blob(
    shared: &Arc<Shared>,
    hash: BundleHash,
    size: u64,
    kind: BlobKind,
    recv: &mut RecvStream,
) -> Result<(), StoreFailure> {
    let error = |kind, message| Err(StoreFailure::Refused(kind, message));
    let max = shared.cfg.max_bundle_bytes;
    if size > max {
        return error(
            ErrorKind::TooLarge,
            format!("bundle is {size} bytes; this master accepts at most {max}"),
        );
    }
    // One byte more than announced, so a client that sends extra is caught.
    let bytes = match recv.read_to_end(size as usize + 1).await {
        Ok(b) if b.len() as u64 == size => b,
        Ok(b) => {
            return error(
                ErrorKind::InvalidBundle,
                format!("announced {size} bytes but sent {}", b.len()),
            );
        }
        Err(e) => return error(ErrorKind::InvalidBundle, format!("upload failed: {e}")),
    };
    if let Err(e) = shared.bundles.put(&hash, &bytes, kind) {
        return error(ErrorKind::InvalidBundle, e.to_string());
    }
    // Acknowledged only once a majority of masters holds the bytes: the record below must never
    // name a bundle that the loss of a minority of masters could take away.
    if let Err(e) = crate::peers::replicate(shared, &hash, kind, Arc::new(bytes)).await {
        return error(
            ErrorKind::Unavailable,
            format!("bundle {hash} not stored: {e}"),
        );
    }
    shared
        .write(Command::AddBundle {
            hash,
            size,
            now_ms: now_ms(),
        })
        .await
        .map(|_| ())
        .map_err(StoreFailure::Raft)
}

/// Streams a task's output: everything stored so far, then (with `follow`) new output as it
/// arrives, and finally the task's record once it has ended.
async fn watch(
    shared: &Shared,
    who: &Identity,
    id: TaskId,
    follow: bool,
    send: &mut SendStream,
) -> Result<(), FrameError> {
    if let Err(e) = get_task(shared, who, id) {
        return send_frame(send, &e).await;
    }
    let mut log_changes = shared.logs.subscribe();
    let mut state_changes = shared.raft.subscribe();
    let mut offset = 0;
    loop {
        // Read the state before the log: output is stored before the final status is recorded,
        // so once we see the end, one more read of the log has everything.
        let task = shared.read(|s| s.tasks.get(&id).cloned());
        let ended = task.as_ref().is_none_or(|t| t.status.state.is_terminal());
        log_changes.borrow_and_update();
        state_changes.borrow_and_update();
        let (records, next) = match shared.logs.read_from(id, offset) {
            Ok(r) => r,
            Err(e) => {
                let resp = error(ErrorKind::Internal, format!("cannot read output: {e}"));
                return send_frame(send, &resp).await;
            }
        };
        offset = next;
        for (stream, data) in records {
            send_frame(send, &ClientResponse::Output { stream, data }).await?;
        }
        if !follow {
            return send_frame(send, &ClientResponse::EndOfOutput).await;
        }
        if ended {
            return match task {
                Some(t) => send_frame(send, &ClientResponse::TaskEnded(Box::new(t))).await,
                None => {
                    send_frame(send, &error(ErrorKind::NotFound, format!("no task {id}"))).await
                }
            };
        }
        tokio::select! {
            _ = log_changes.changed() => {}
            _ = state_changes.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
