//! The lost-agent reaper: an agent silent (no heartbeat) for `agent_timeout` is declared lost
//! with its tasks and the outputs it kept. A master that has just become leader gives every
//! agent the whole timeout to reconnect to it first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmos_proto::AgentId;
use wasmos_state::Command;

use crate::offers::Event;
use crate::{Shared, now_ms};

/// The reaper while this master leads (started and stopped by [`crate::leadership`]).
pub(crate) async fn lead(shared: Arc<Shared>) {
    let since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = reap_lost_agents(&shared, since).await {
            tracing::error!("lost-agent pass failed: {e}");
        }
        if let Err(e) = maintenance_windows(&shared).await {
            tracing::error!("maintenance pass failed: {e}");
        }
    }
}

/// Begins the maintenance windows whose start has come (the agent drained, its tasks stopped
/// with reason `maintenance`) and ends those whose end has (offered again).
async fn maintenance_windows(shared: &Shared) -> Result<(), wasmos_raft::RaftError> {
    let now = now_ms();
    let due: Vec<(AgentId, bool)> = shared.read(|s| {
        s.agents
            .iter()
            .filter_map(|(a, r)| {
                let m = r.maintenance.as_ref()?;
                if now >= m.window.end_ms {
                    Some((a.clone(), false))
                } else if now >= m.window.start_ms && !m.begun {
                    Some((a.clone(), true))
                } else {
                    None
                }
            })
            .collect()
    });
    for (agent, begun) in due {
        let result = shared
            .write(Command::MaintenanceWindowAt {
                agent: agent.clone(),
                begun,
            })
            .await?;
        if result != wasmos_state::CommandResult::Ok {
            continue;
        }
        tracing::info!(%agent, begun, "maintenance window");
        shared.offer_event(Event::DrainChanged(agent.clone()));
        if begun {
            crate::client::stop_drained(shared, &agent).await?;
        }
    }
    Ok(())
}

async fn reap_lost_agents(
    shared: &Shared,
    leading_since: Instant,
) -> Result<(), wasmos_raft::RaftError> {
    let timeout = shared.cfg.agent_timeout;
    // Connected but silent (hung, or its heartbeats cannot get through while its connection
    // lingers): end the session; the agent counts as gone since it was last heard from.
    let silent_ms = timeout.as_millis() as u64;
    for link in shared.agents().values() {
        if now_ms().saturating_sub(link.last_seen_ms) >= silent_ms {
            link.conn
                .close(1u32.into(), b"no heartbeat within the agent timeout");
        }
    }
    // Connected, or registering (not yet in the map, but its registration may have committed:
    // a verdict now would name it).
    let mut connected: Vec<AgentId> = shared.agents().keys().cloned().collect();
    connected.extend(shared.registering().keys().cloned());
    // Agents with something to lose: live tasks, or outputs kept for jobs (an idle agent that
    // holds a job's intermediate files must be declared lost too, or readers would keep being
    // sent to it and the job would learn of the loss only fetch by fetch), each with the
    // registration found silent: the verdict is refused if the agent registers again before
    // it commits.
    let with_tasks: Vec<(AgentId, u64)> = shared.read(|s| {
        let away: Vec<(&AgentId, u64)> = s
            .agents
            .iter()
            .filter(|(a, _)| !connected.contains(a))
            .map(|(a, r)| (a, r.registered_ms))
            .collect();
        if away.is_empty() {
            return Vec::new();
        }
        let keepers: std::collections::BTreeSet<&AgentId> =
            s.bundles.values().flat_map(|m| m.kept_on.iter()).collect();
        away.into_iter()
            .filter(|(a, _)| s.live_tasks_on(a).next().is_some() || keepers.contains(a))
            .map(|(a, r)| (a.clone(), r))
            .collect()
    });
    for (agent, registered_ms) in with_tasks {
        let gone = shared.gone_for(&agent).min(leading_since.elapsed());
        if gone >= timeout {
            tracing::warn!(%agent, "agent silent past the agent timeout; its tasks are lost");
            let verdict = shared
                .write(Command::AgentLost {
                    agent: agent.clone(),
                    registered_ms: Some(registered_ms),
                    now_ms: now_ms(),
                })
                .await?;
            match verdict {
                wasmos_state::CommandResult::Rejected(why) => {
                    tracing::info!(%agent, "not lost after all: {why}");
                }
                _ => shared.offer_event(Event::AgentLost(agent)),
            }
        }
    }
    Ok(())
}
