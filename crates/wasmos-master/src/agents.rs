//! Agent sessions: registration, the control stream (status updates in, launches and kills out,
//! acknowledgements back) and bundle downloads on side streams.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use wasmos_alloc::Role;
use wasmos_net::{Connection, SendStream, recv_frame, send_frame};
use wasmos_proto::{
    AgentId, AgentToMaster, MasterToAgent, OutputStream, Resources, StatusUpdate, TaskId,
};
use wasmos_state::{Command, CommandResult};

use crate::offers::Event;
use crate::{AgentLink, Shared, now_ms};

/// Output beyond a task's cap is dropped here too, in case an agent does not enforce it.
const OUTPUT_SLACK: u64 = 64 * 1024;

pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection, name: String) {
    let agent = match AgentId::new(&name) {
        Ok(a) => a,
        Err(e) => {
            conn.close(1u32.into(), e.to_string().as_bytes());
            return;
        }
    };
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%agent, "agent left before registering: {e}");
            return;
        }
    };
    let (resources, attributes, fuel_per_core_second, reserved, running, pending, peer_addr) =
        match recv_frame(&mut recv).await {
            Ok(Some(AgentToMaster::Register {
                resources,
                attributes,
                fuel_per_core_second,
                reserved,
                running,
                pending,
                peer_addr,
            })) => (
                resources,
                attributes,
                fuel_per_core_second,
                reserved,
                running,
                pending,
                peer_addr,
            ),
            Ok(Some(AgentToMaster::WhoLeads)) => {
                let (_, addr) = shared.raft.leader_addr();
                last_word(&mut send, &conn, MasterToAgent::Leader { addr }).await;
                return;
            }
            other => {
                let got = format!("{other:?}");
                let msg = format!(
                    "expected Register as the first message, got {}",
                    got.chars().take(120).collect::<String>()
                );
                tracing::warn!(%agent, "{msg}");
                last_word(&mut send, &conn, MasterToAgent::Error { message: msg }).await;
                return;
            }
        };
    // Until it is in the map of connected agents, the reaper must not judge it.
    let registering = shared.start_registering(&agent);
    // Other agents dial it: it must be an address, not a name to resolve or a long string.
    if let Some(addr) = &peer_addr
        && addr.parse::<std::net::SocketAddr>().is_err()
    {
        let message = format!(
            "peer address `{}` is not an IP address and port",
            addr.chars().take(80).collect::<String>()
        );
        tracing::warn!(%agent, "refused registration: {message}");
        last_word(&mut send, &conn, MasterToAgent::Error { message }).await;
        return;
    }
    let reserved = match check_reservations(&resources, reserved) {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(%agent, "refused registration: {message}");
            last_word(&mut send, &conn, MasterToAgent::Error { message }).await;
            return;
        }
    };
    // Tasks with updates still to record count as known to the agent: their results are
    // recorded right after, instead of the registration declaring them lost first.
    let mut known = running;
    known.extend(pending.iter().map(|u| u.task));
    known.sort_unstable();
    known.dedup();
    let registered = shared
        .write(Command::RegisterAgent {
            id: agent.clone(),
            total: resources.clone(),
            attributes,
            fuel_per_core_second,
            reserved,
            running: known.clone(),
            peer_addr,
            now_ms: now_ms(),
        })
        .await;
    match registered {
        Ok(_) => {}
        Err(wasmos_raft::RaftError::NotLeader { .. }) => {
            let (_, addr) = shared.raft.leader_addr();
            last_word(&mut send, &conn, MasterToAgent::NotLeader { addr }).await;
            return;
        }
        Err(e) => {
            let message = format!("master cannot record the registration: {e}");
            last_word(&mut send, &conn, MasterToAgent::Error { message }).await;
            return;
        }
    }
    let mut acks = Vec::new();
    let mut pending = pending.into_iter().peekable();
    while pending.peek().is_some() {
        let updates: Vec<StatusUpdate> = pending.by_ref().take(STATUS_BATCH).collect();
        match record_batch(&shared, &agent, updates).await {
            Some(seq) => acks.push(seq),
            None => {
                // The agent registers again and resends them: a later acknowledgement must
                // not cover updates that were not recorded.
                let message = "master cannot record the agent's status updates now".to_string();
                last_word(&mut send, &conn, MasterToAgent::Error { message }).await;
                return;
            }
        }
    }
    let last_status_seq = shared.read(|s| s.agents.get(&agent).map_or(0, |a| a.last_status_seq));
    let hello = MasterToAgent::Registered {
        agent: agent.clone(),
        heartbeat_interval_ms: shared.cfg.heartbeat_interval.as_millis() as u64,
        last_status_seq,
    };
    if send_frame(&mut send, &hello).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    for seq in acks {
        let _ = tx.send(MasterToAgent::Ack { seq });
    }
    // Launches recorded for this agent that it never received (the master that recorded them
    // failed before sending): send them now.
    let unsent: Vec<(wasmos_proto::TaskId, wasmos_proto::TaskSpec, bool)> = shared.read(|s| {
        s.live_tasks_on(&agent)
            .filter(|t| known.binary_search(t).is_err())
            .filter_map(|t| s.tasks.get(&t))
            .filter(|t| t.status.state == wasmos_proto::TaskState::Staging)
            .map(|t| {
                let removed = s.framework_removed(t);
                (t.id, t.spec.clone(), removed)
            })
            .collect()
    });
    for (task, spec, removed) in unsent {
        tracing::info!(%agent, %task, "launching again: the agent never received it");
        match shared.read(|s| crate::policy::launch_message(&shared.secrets, s, task, spec)) {
            Ok(msg) => {
                let _ = tx.send(msg);
                // Its framework is gone: started only to be ended, so it leaves the agent's
                // books (a task never started cannot be killed).
                if removed {
                    let _ = tx.send(MasterToAgent::Kill {
                        task,
                        reason: Some(wasmos_proto::Reason::FrameworkRemoved),
                    });
                }
            }
            Err(e) => tracing::error!(%task, "cannot launch: {e}"),
        }
    }
    // Tasks the agent still runs that the cluster gave up on (declared lost while the agent
    // was away, or whose framework is gone): they must not go on using its resources.
    let given_up: Vec<(wasmos_proto::TaskId, wasmos_proto::Reason)> = shared.read(|s| {
        known
            .iter()
            .filter_map(|id| {
                let Some(t) = s.tasks.get(id) else {
                    return Some((*id, wasmos_proto::Reason::Unknown));
                };
                if t.status.state.is_terminal() || t.agent.as_ref() != Some(&agent) {
                    return Some((*id, wasmos_proto::Reason::AgentLost));
                }
                let removed = s.framework_removed(t);
                removed.then_some((*id, wasmos_proto::Reason::FrameworkRemoved))
            })
            .collect()
    });
    for (task, reason) in given_up {
        tracing::info!(%agent, %task, "killing a task the cluster gave up on ({reason})");
        let _ = tx.send(MasterToAgent::Kill {
            task,
            reason: Some(reason),
        });
    }
    let conn_id = conn.stable_id();
    shared.agents().insert(
        agent.clone(),
        AgentLink {
            conn_id,
            conn: conn.clone(),
            tx,
            last_seen_ms: now_ms(),
        },
    );
    shared.forget_disconnect(&agent);
    // The whole revocation list, read once this agent is in the map `revocation::follow`
    // tells of changes through: a revocation applied meanwhile reaches it one way or both.
    for msg in crate::revocation::to_agents(&shared.revocations.current(), true) {
        shared.send_to_agent(&agent, msg);
    }
    drop(registering);
    // Leadership may have moved since the registration committed, before this agent was in
    // the map `leadership::redirect_agents` goes through.
    if !shared.raft.is_leader() {
        let (_, addr) = shared.raft.leader_addr();
        shared.send_to_agent(&agent, MasterToAgent::NotLeader { addr });
    }
    shared.offer_event(Event::AgentUp(agent.clone()));
    tracing::info!(%agent, %resources, "agent registered");

    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if send_frame(&mut send, &msg).await.is_err() {
                break;
            }
        }
    });
    let fetcher = tokio::spawn(serve_fetches(shared.clone(), conn.clone()));
    let (statuses, pending) = mpsc::unbounded_channel();
    let recorder = tokio::spawn(record_statuses(
        shared.clone(),
        agent.clone(),
        conn.clone(),
        pending,
    ));
    let (progress, reports) = mpsc::unbounded_channel();
    let progress_writer = tokio::spawn(record_progress(shared.clone(), agent.clone(), reports));

    loop {
        match recv_frame::<AgentToMaster>(&mut recv).await {
            Ok(Some(AgentToMaster::Heartbeat { usage, tasks })) => {
                shared.touch(&agent);
                shared.offer_event(Event::Usage(agent.clone(), usage));
                let updates = shared.record_usage(&agent, tasks);
                if !updates.is_empty() {
                    let _ = progress.send(updates);
                }
            }
            Ok(Some(AgentToMaster::Status(update))) => {
                shared.touch(&agent);
                // Recorded in order by the recorder, many to a raft write. The output that
                // came before it is stored already (below): a watcher that sees the task end
                // has all of its output to read.
                let _ = statuses.send(update);
            }
            Ok(Some(AgentToMaster::Output { task, stream, data })) => {
                // Disk work (a file created per task) goes to the blocking pool, so it never
                // holds up the runtime's few threads and with them raft; this session waits
                // for it, which keeps its output and statuses in order and slows a fast
                // stream down to the disk's pace, holding one chunk at a time.
                let (store, of) = (shared.clone(), agent.clone());
                let stored = tokio::task::spawn_blocking(move || {
                    store_output(&store, &of, task, stream, &data)
                })
                .await;
                if let Err(e) = stored {
                    tracing::error!(%agent, "storing task output failed: {e}");
                    break;
                }
            }
            Ok(Some(AgentToMaster::Spawn { parent, seq, spec })) => {
                let (shared, agent) = (shared.clone(), agent.clone());
                tokio::spawn(async move {
                    let child = crate::children::spawn(&shared, &agent, parent, seq, spec).await;
                    tracing::debug!(%agent, %parent, seq, "spawn answered: {child:?}");
                    let answer = MasterToAgent::Spawned { parent, seq, child };
                    shared.send_to_agent(&agent, answer);
                });
            }
            Ok(Some(AgentToMaster::WatchChildren { parent, children })) => {
                crate::children::watch(&shared, &agent, parent, children);
            }
            Ok(Some(AgentToMaster::KillChild { parent, child })) => {
                let (shared, agent) = (shared.clone(), agent.clone());
                tokio::spawn(async move {
                    crate::children::kill_child(&shared, &agent, parent, child).await;
                });
            }
            Ok(Some(other)) => tracing::warn!(%agent, "unexpected message {other:?}"),
            Ok(None) => break,
            Err(_) if wasmos_net::closed_on_purpose(&conn) => break,
            Err(e) => {
                tracing::warn!(%agent, "agent control stream failed: {e}");
                break;
            }
        }
    }
    writer.abort();
    fetcher.abort();
    // What it had not recorded yet is unacknowledged: the agent sends it again.
    recorder.abort();
    progress_writer.abort();
    let mut agents = shared.agents();
    if agents.get(&agent).is_some_and(|l| l.conn_id == conn_id) {
        let seen = agents
            .remove(&agent)
            .map_or_else(now_ms, |l| l.last_seen_ms);
        drop(agents);
        shared.note_disconnect(&agent, seen);
        shared.offer_event(Event::AgentDown(agent.clone()));
        if wasmos_net::closed_on_purpose(&conn) {
            tracing::info!(%agent, "agent closed its session");
        } else {
            tracing::warn!(%agent, "agent disconnected");
        }
    }
}

/// Validates an agent's static reservations: known role paths, all of them within its
/// resources.
fn check_reservations(
    total: &Resources,
    reserved: BTreeMap<String, Resources>,
) -> Result<BTreeMap<Role, Resources>, String> {
    let mut out = BTreeMap::new();
    let mut sum = Resources::default();
    for (role, r) in reserved {
        let role = Role::new(&role).map_err(|e| format!("reservation: {e}"))?;
        sum = sum.saturating_add(&r);
        out.insert(role, r);
    }
    if !sum.fits_in(total) {
        return Err(format!(
            "reservations ({sum}) exceed the agent's resources ({total})"
        ));
    }
    Ok(out)
}

/// Records one status update; returns the sequence number to acknowledge once it is durable.
/// Most status updates of one agent recorded in one raft write, and about the most bytes.
const STATUS_BATCH: usize = 512;
const STATUS_BATCH_BYTES: usize = wasmos_raft::MAX_ENTRY_BYTES / 2;

/// Records an agent's status updates in the order it sent them: whatever has arrived while
/// the previous write was on its way goes into the next one (a `Command::Batch`, applied in
/// order: the state drops an update whose sequence number is not past the agent's last). One
/// write per update, awaited in turn, would hold every tenant's updates on that agent behind
/// a flood of one tenant's short tasks. Acknowledged cumulatively, up to the last recorded.
/// Records the progress an agent's heartbeats carry, one write at a time and off the session's
/// loop (a slow write must not hold up its statuses): what came while a write was under way is
/// merged, the latest report of each task winning, into the next.
async fn record_progress(
    shared: Arc<Shared>,
    agent: AgentId,
    mut reports: mpsc::UnboundedReceiver<Vec<(TaskId, wasmos_proto::TaskProgress)>>,
) {
    while let Some(first) = reports.recv().await {
        let mut latest: BTreeMap<TaskId, wasmos_proto::TaskProgress> = first.into_iter().collect();
        while let Ok(more) = reports.try_recv() {
            latest.extend(more);
        }
        let cmd = Command::Progress {
            agent: agent.clone(),
            updates: latest.into_iter().collect(),
        };
        if let Err(e) = shared.write(cmd).await {
            tracing::debug!(%agent, "progress not recorded: {e}");
        }
    }
}

async fn record_statuses(
    shared: Arc<Shared>,
    agent: AgentId,
    conn: Connection,
    mut pending: mpsc::UnboundedReceiver<StatusUpdate>,
) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(u) => u,
            None => match pending.recv().await {
                Some(u) => u,
                None => return,
            },
        };
        let mut bytes = wasmos_state::status_bytes(&first.status);
        let mut updates = vec![first];
        while updates.len() < STATUS_BATCH && bytes < STATUS_BATCH_BYTES {
            match pending.try_recv() {
                Ok(u) => {
                    bytes += wasmos_state::status_bytes(&u.status);
                    updates.push(u);
                }
                Err(_) => break,
            }
        }
        if bytes > STATUS_BATCH_BYTES && updates.len() > 1 {
            // The last one goes first in the next write.
            next = updates.pop();
        }
        match record_batch(&shared, &agent, updates).await {
            Some(seq) => {
                shared.send_to_agent(&agent, MasterToAgent::Ack { seq });
            }
            None => {
                // Not recorded (or not known to be): end the session, so the agent registers
                // again and resends all it has not had acknowledged, in order. Carrying on
                // would let a later acknowledgement cover these.
                conn.close(1u32.into(), b"status updates not recorded; register again");
                return;
            }
        }
    }
}

/// The last message of a session that ends before it starts (a redirect, a refusal): sent and
/// its stream finished, then the connection is left for the agent to close (for at most 2 s),
/// because closing it at once would discard what was sent.
async fn last_word(send: &mut SendStream, conn: &Connection, msg: MasterToAgent) {
    let _ = send_frame(send, &msg).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
}

/// Records `updates` (in the agent's order) in one raft write; returns the sequence number to
/// acknowledge (the last one), or `None` if nothing was recorded.
async fn record_batch(shared: &Shared, agent: &AgentId, updates: Vec<StatusUpdate>) -> Option<u64> {
    let now = now_ms();
    let sent: Vec<(u64, wasmos_proto::TaskId)> = updates.iter().map(|u| (u.seq, u.task)).collect();
    let running: Vec<bool> = updates
        .iter()
        .map(|u| u.status.state == wasmos_proto::TaskState::Running)
        .collect();
    let live: Vec<bool> = updates
        .iter()
        .map(|u| !u.status.state.is_terminal())
        .collect();
    let cmds: Vec<Command> = updates
        .into_iter()
        .map(|update| Command::AgentStatus {
            agent: agent.clone(),
            update,
            now_ms: now,
        })
        .collect();
    // Always a batch, so every status write of an agent goes in the same lane (`""`).
    let results = match shared.write(Command::Batch(cmds)).await {
        Ok(CommandResult::Batch(results)) => results,
        Ok(one) => vec![one],
        Err(wasmos_raft::RaftError::NotLeader { .. }) => {
            // Recorded nowhere: the agent keeps them and resends them to the leader.
            let (_, addr) = shared.raft.leader_addr();
            shared.send_to_agent(agent, MasterToAgent::NotLeader { addr });
            return None;
        }
        Err(e) => {
            tracing::error!(%agent, "cannot record {} status updates: {e}", sent.len());
            return None;
        }
    };
    let mut changed = std::collections::BTreeSet::new();
    for ((((_, task), result), running), live) in sent.iter().zip(&results).zip(running).zip(live) {
        if let CommandResult::Rejected(why) = result {
            // Recorded as seen: resending it would be rejected again.
            tracing::warn!(%agent, %task, "status update rejected: {why}");
            // It runs a task the cluster has ended (killed while its launch was on its way):
            // it must stop, or it would run on resources counted free.
            let ended = shared.read(|s| {
                s.tasks
                    .get(task)
                    .is_some_and(|t| t.status.state.is_terminal())
            });
            if live && ended {
                let kill = MasterToAgent::Kill {
                    task: *task,
                    reason: None,
                };
                shared.send_to_agent(agent, kill);
            }
        }
        if running && *result == CommandResult::Ok {
            let submitted = shared.read(|s| s.tasks.get(task).map(|t| t.submitted_ms));
            if let Some(at) = submitted {
                shared.metrics.task_started(now.saturating_sub(at));
            }
        }
        // One event a task: the offer cycle reads its latest status either way.
        if changed.insert(*task) {
            shared.offer_event(Event::TaskChanged(*task));
        }
    }
    sent.get(results.len().checked_sub(1)?).map(|(seq, _)| *seq)
}

/// Appends one chunk to its task's log, within the task's cap and its tenant's storage quota.
fn store_output(shared: &Shared, agent: &AgentId, task: TaskId, stream: OutputStream, data: &[u8]) {
    let cap = shared.read(|s| {
        s.tasks
            .get(&task)
            .filter(|t| t.agent.as_ref() == Some(agent))
            // Two streams, each with its truncation marker.
            .map(|t| {
                let cap = t
                    .spec
                    .max_output_bytes
                    .saturating_mul(2)
                    .saturating_add(OUTPUT_SLACK);
                let tenant = wasmos_state::tenant_of(&t.owner).map(str::to_string);
                (cap, tenant)
            })
    });
    match cap {
        Some((cap, tenant)) if shared.logs.len(task) < cap => {
            // A tenant at its storage quota keeps running, but its output is no
            // longer stored: the master's disk is not its to fill.
            let full = tenant.as_deref().is_some_and(|t| {
                let (held, quota) = shared.storage_of(t, true);
                held >= quota
            });
            if full {
                tracing::debug!(%task, "tenant at its storage quota: output dropped");
            } else if let Err(e) = shared.logs.append(task, tenant.as_deref(), stream, data) {
                tracing::error!(%task, "cannot store output: {e}");
            }
        }
        Some(_) => {}
        None => tracing::warn!(%agent, %task, "output for a task not on this agent"),
    }
}

async fn serve_fetches(shared: Arc<Shared>, conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let reply = match recv_frame::<AgentToMaster>(&mut recv).await {
                Ok(Some(AgentToMaster::FetchBundle { hash })) => {
                    crate::peers::blob(&shared, &hash).await
                }
                Ok(Some(AgentToMaster::PutBlob { hash, size })) => {
                    let stored = crate::blobs::store_blob(
                        &shared,
                        hash,
                        size,
                        wasmos_proto::BlobKind::Data,
                        // Its readers come with the final status of the task that made it.
                        None,
                        &mut recv,
                    )
                    .await;
                    let answer = match stored {
                        Ok(()) => Some(MasterToAgent::Stored),
                        // Not for now (a failover, no majority): no answer, so the agent
                        // sends it again, to the leader.
                        Err(crate::blobs::StoreFailure::Raft(_))
                        | Err(crate::blobs::StoreFailure::Refused(
                            wasmos_proto::ErrorKind::Unavailable,
                            _,
                        )) => None,
                        Err(e) => Some(MasterToAgent::Error {
                            message: e.message(),
                        }),
                    };
                    if let Some(answer) = answer {
                        let _ = send_frame(&mut send, &answer).await;
                    }
                    let _ = send.finish();
                    return;
                }
                Ok(Some(AgentToMaster::Renew { csr })) => {
                    let answer = crate::renewal::renew_agent(&shared, &conn, &csr).await;
                    let _ = send_frame(&mut send, &answer).await;
                    let _ = send.finish();
                    return;
                }
                other => Err(format!("expected FetchBundle or PutBlob, got {other:?}")),
            };
            let sent = match reply {
                Ok(bytes) => {
                    let head = MasterToAgent::Bundle {
                        size: bytes.len() as u64,
                    };
                    match send_frame(&mut send, &head).await {
                        Ok(()) => send.write_all(&bytes).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(message) => send_frame(&mut send, &MasterToAgent::Error { message })
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = sent {
                tracing::warn!("bundle download failed: {e}");
            }
            let _ = send.finish();
        });
    }
}
