//! The lost-agent reaper: declares the tasks of agents gone past their grace period lost. A
//! master that has just become leader gives every agent the whole grace period to reconnect
//! to it first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmos_proto::AgentId;
use wasmos_state::Command;

use crate::offers::Event;
use crate::{Shared, now_ms};

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !shared.raft.is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        if let Err(e) = reap_lost_agents(&shared, since).await {
            tracing::error!("lost-agent pass failed: {e}");
        }
    }
}

async fn reap_lost_agents(
    shared: &Shared,
    leading_since: Instant,
) -> Result<(), wasmos_raft::RaftError> {
    let connected: Vec<AgentId> = shared.agents().keys().cloned().collect();
    let with_tasks: Vec<AgentId> = shared.read(|s| {
        s.agents
            .keys()
            .filter(|a| !connected.contains(a) && s.live_tasks_on(a).next().is_some())
            .cloned()
            .collect()
    });
    for agent in with_tasks {
        let gone = shared.gone_for(&agent).min(leading_since.elapsed());
        if gone >= shared.cfg.agent_grace {
            tracing::warn!(%agent, "agent gone past its grace period; its tasks are lost");
            shared
                .write(Command::AgentLost {
                    agent,
                    now_ms: now_ms(),
                })
                .await?;
            shared.offer_event(Event::Reconcile);
        }
    }
    Ok(())
}
