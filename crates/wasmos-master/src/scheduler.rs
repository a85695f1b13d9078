//! The leader's placement loop: asks the pure allocator where pending tasks go, records each
//! placement through Raft, then tells the agent to launch. Also declares long-gone agents lost.

use std::sync::Arc;
use std::time::Duration;

use wasmos_alloc::{Decision, place};
use wasmos_proto::{AgentId, MasterToAgent, Reason, TaskState, TaskStatus};
use wasmos_state::{Command, CommandResult};

use crate::{Shared, now_ms};

pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = schedule_once(&shared).await {
            tracing::error!("scheduling pass failed: {e}");
        }
        if let Err(e) = reap_lost_agents(&shared).await {
            tracing::error!("lost-agent pass failed: {e}");
        }
    }
}

async fn schedule_once(shared: &Shared) -> Result<(), wasmos_raft::RaftError> {
    let connected: Vec<AgentId> = shared.agents().keys().cloned().collect();
    let (views, pending) = shared.read(|s| (s.agent_views(connected.iter()), s.pending()));
    if pending.is_empty() {
        return Ok(());
    }
    for decision in place(&views, &pending) {
        match decision {
            Decision::Place { task, agent } => {
                let result = shared
                    .write(Command::AssignTask {
                        task,
                        agent: agent.clone(),
                        now_ms: now_ms(),
                    })
                    .await?;
                if let CommandResult::Rejected(why) = result {
                    tracing::warn!(%task, %agent, "placement refused: {why}");
                    continue;
                }
                let spec = shared.read(|s| s.tasks.get(&task).map(|t| t.spec.clone()));
                if let Some(spec) = spec {
                    tracing::info!(%task, %agent, "launching");
                    // If the agent is gone by now, its re-registration (or the grace period)
                    // declares the task lost.
                    shared.send_to_agent(&agent, MasterToAgent::Launch { task, spec });
                }
            }
            Decision::Unschedulable { task, largest } => {
                let demand = shared.read(|s| s.tasks.get(&task).map(|t| t.spec.resources.clone()));
                let Some(demand) = demand else { continue };
                let status = TaskStatus::with_reason(
                    TaskState::Error,
                    Some(Reason::Unschedulable),
                    format!("needs {demand}, but the largest agent has {largest}"),
                );
                shared
                    .write(Command::SetStatus {
                        task,
                        status,
                        now_ms: now_ms(),
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

async fn reap_lost_agents(shared: &Shared) -> Result<(), wasmos_raft::RaftError> {
    let connected: Vec<AgentId> = shared.agents().keys().cloned().collect();
    let with_tasks: Vec<AgentId> = shared.read(|s| {
        s.agents
            .keys()
            .filter(|a| !connected.contains(a) && s.live_tasks_on(a).next().is_some())
            .cloned()
            .collect()
    });
    for agent in with_tasks {
        if shared.gone_for(&agent) >= shared.cfg.agent_grace {
            tracing::warn!(%agent, "agent gone past its grace period; its tasks are lost");
            shared
                .write(Command::AgentLost {
                    agent,
                    now_ms: now_ms(),
                })
                .await?;
        }
    }
    Ok(())
}
