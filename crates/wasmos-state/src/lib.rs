//! The replicated cluster state machine: `ClusterState`, the `Command`s that change it and a pure,
//! deterministic `apply`. Raft feeds it committed commands; everything the cluster must not forget
//! (agents, bundles, tasks and their final states) lives here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wasmos_alloc::{AgentView, PendingTask};
use wasmos_proto::{
    AgentId, BundleHash, Reason, Resources, StatusUpdate, TaskId, TaskInfo, TaskSpec, TaskState,
    TaskStatus,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: AgentId,
    pub total: Resources,
    pub attributes: BTreeMap<String, String>,
    pub fuel_per_core_second: u64,
    pub registered_ms: u64,
    /// Highest status-update sequence number recorded from this agent; lower ones are duplicates.
    pub last_status_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMeta {
    pub size: u64,
    pub added_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub next_task_id: u64,
    pub agents: BTreeMap<AgentId, AgentRecord>,
    pub bundles: BTreeMap<BundleHash, BundleMeta>,
    pub tasks: BTreeMap<TaskId, TaskInfo>,
}

/// Every change to the cluster state. Time is carried in the command (`now_ms`, the leader's
/// clock when it proposed it), so replaying the log gives the same state on every master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterAgent {
        id: AgentId,
        total: Resources,
        attributes: BTreeMap<String, String>,
        fuel_per_core_second: u64,
        /// Tasks the agent still runs; its other live tasks are lost.
        running: Vec<TaskId>,
        now_ms: u64,
    },
    AddBundle {
        hash: BundleHash,
        size: u64,
        now_ms: u64,
    },
    SubmitTask {
        spec: TaskSpec,
        owner: String,
        now_ms: u64,
    },
    AssignTask {
        task: TaskId,
        agent: AgentId,
        now_ms: u64,
    },
    /// A status update reported by an agent, deduplicated by its sequence number.
    AgentStatus {
        agent: AgentId,
        update: StatusUpdate,
        now_ms: u64,
    },
    /// A status decided by the master itself (unschedulable, killed before launch, agent lost).
    SetStatus {
        task: TaskId,
        status: TaskStatus,
        now_ms: u64,
    },
    /// The agent is gone for good: every live task on it is lost.
    AgentLost { agent: AgentId, now_ms: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    Ok,
    /// Already applied earlier (a resent status update): nothing changed.
    Duplicate,
    Submitted(TaskId),
    /// The command was refused; the state is unchanged. A domain answer, not a failure.
    Rejected(String),
}

impl ClusterState {
    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::RegisterAgent {
                id,
                total,
                attributes,
                fuel_per_core_second,
                running,
                now_ms,
            } => {
                let last_status_seq = self.agents.get(&id).map_or(0, |a| a.last_status_seq);
                self.agents.insert(
                    id.clone(),
                    AgentRecord {
                        id: id.clone(),
                        total,
                        attributes,
                        fuel_per_core_second,
                        registered_ms: now_ms,
                        last_status_seq,
                    },
                );
                let lost: Vec<TaskId> = self
                    .live_tasks_on(&id)
                    .filter(|t| !running.contains(t))
                    .collect();
                for task in lost {
                    self.finish(
                        task,
                        TaskState::Lost,
                        Reason::AgentLost,
                        "the agent restarted without it",
                        now_ms,
                    );
                }
                CommandResult::Ok
            }
            Command::AddBundle { hash, size, now_ms } => {
                self.bundles.entry(hash).or_insert(BundleMeta {
                    size,
                    added_ms: now_ms,
                });
                CommandResult::Ok
            }
            Command::SubmitTask {
                spec,
                owner,
                now_ms,
            } => {
                if !self.bundles.contains_key(&spec.bundle) {
                    return CommandResult::Rejected(format!(
                        "bundle {} has not been uploaded",
                        spec.bundle
                    ));
                }
                if let Some(stdin) = spec
                    .stdin
                    .as_ref()
                    .filter(|h| !self.bundles.contains_key(h))
                {
                    return CommandResult::Rejected(format!(
                        "stdin blob {stdin} has not been uploaded"
                    ));
                }
                self.next_task_id += 1;
                let id = TaskId(self.next_task_id);
                self.tasks.insert(
                    id,
                    TaskInfo {
                        id,
                        spec,
                        owner,
                        agent: None,
                        status: TaskStatus::new(TaskState::Staging),
                        submitted_ms: now_ms,
                        updated_ms: now_ms,
                    },
                );
                CommandResult::Submitted(id)
            }
            Command::AssignTask {
                task,
                agent,
                now_ms,
            } => {
                let Some(record) = self.agents.get(&agent) else {
                    return CommandResult::Rejected(format!("unknown agent {agent}"));
                };
                let free = record.total.saturating_sub(&self.used_on(&agent));
                let Some(info) = self.tasks.get_mut(&task) else {
                    return CommandResult::Rejected(format!("unknown task {task}"));
                };
                if info.agent.is_some() || info.status.state != TaskState::Staging {
                    return CommandResult::Rejected(format!("task {task} is already placed"));
                }
                if !info.spec.resources.fits_in(&free) {
                    return CommandResult::Rejected(format!(
                        "task {task} does not fit on agent {agent}"
                    ));
                }
                info.agent = Some(agent);
                info.updated_ms = now_ms;
                CommandResult::Ok
            }
            Command::AgentStatus {
                agent,
                update,
                now_ms,
            } => {
                let Some(record) = self.agents.get_mut(&agent) else {
                    return CommandResult::Rejected(format!("unknown agent {agent}"));
                };
                if update.seq <= record.last_status_seq {
                    return CommandResult::Duplicate;
                }
                record.last_status_seq = update.seq;
                let Some(info) = self.tasks.get_mut(&update.task) else {
                    return CommandResult::Rejected(format!("unknown task {}", update.task));
                };
                if info.agent.as_ref() != Some(&agent) {
                    return CommandResult::Rejected(format!(
                        "task {} is not on agent {agent}",
                        update.task
                    ));
                }
                if info.status.state.is_terminal() {
                    return CommandResult::Rejected(format!(
                        "task {} already ended as {}",
                        update.task, info.status.state
                    ));
                }
                info.status = update.status;
                info.updated_ms = now_ms;
                CommandResult::Ok
            }
            Command::SetStatus {
                task,
                status,
                now_ms,
            } => {
                let Some(info) = self.tasks.get_mut(&task) else {
                    return CommandResult::Rejected(format!("unknown task {task}"));
                };
                if info.status.state.is_terminal() {
                    return CommandResult::Rejected(format!(
                        "task {task} already ended as {}",
                        info.status.state
                    ));
                }
                info.status = status;
                info.updated_ms = now_ms;
                CommandResult::Ok
            }
            Command::AgentLost { agent, now_ms } => {
                let lost: Vec<TaskId> = self.live_tasks_on(&agent).collect();
                for task in lost {
                    self.finish(
                        task,
                        TaskState::Lost,
                        Reason::AgentLost,
                        "the agent stopped responding",
                        now_ms,
                    );
                }
                CommandResult::Ok
            }
        }
    }

    fn finish(&mut self, task: TaskId, state: TaskState, reason: Reason, msg: &str, now_ms: u64) {
        if let Some(info) = self.tasks.get_mut(&task) {
            // Keep the usage last reported: it was consumed even if the end was not seen.
            info.status = TaskStatus {
                fuel_used: info.status.fuel_used,
                cpu_ms: info.status.cpu_ms,
                peak_mem_bytes: info.status.peak_mem_bytes,
                ..TaskStatus::with_reason(state, Some(reason), msg)
            };
            info.updated_ms = now_ms;
        }
    }

    /// Non-terminal tasks placed on `agent`, in id order.
    pub fn live_tasks_on<'a>(&'a self, agent: &'a AgentId) -> impl Iterator<Item = TaskId> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.agent.as_ref() == Some(agent) && !t.status.state.is_terminal())
            .map(|t| t.id)
    }

    /// Resources reserved on `agent` by its live tasks.
    pub fn used_on(&self, agent: &AgentId) -> Resources {
        self.live_tasks_on(agent)
            .filter_map(|id| self.tasks.get(&id))
            .fold(Resources::default(), |acc, t| {
                acc.saturating_add(&t.spec.resources)
            })
    }

    /// Resources reserved by live tasks, for every agent at once: one pass over the tasks
    /// instead of one per agent. Agents without live tasks are absent.
    pub fn used_by_agent(&self) -> BTreeMap<&AgentId, Resources> {
        let mut used: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        for t in self
            .tasks
            .values()
            .filter(|t| !t.status.state.is_terminal())
        {
            if let Some(agent) = &t.agent {
                let entry = used.entry(agent).or_default();
                *entry = entry.saturating_add(&t.spec.resources);
            }
        }
        used
    }

    /// The allocator's view of the given agents (callers pass the connected ones).
    pub fn agent_views<'a>(&self, agents: impl IntoIterator<Item = &'a AgentId>) -> Vec<AgentView> {
        let used = self.used_by_agent();
        agents
            .into_iter()
            .filter_map(|id| self.agents.get(id))
            .map(|a| AgentView {
                id: a.id.clone(),
                total: a.total.clone(),
                free: a
                    .total
                    .saturating_sub(used.get(&a.id).unwrap_or(&Resources::default())),
            })
            .collect()
    }

    /// Tasks waiting for an agent, in submission order.
    pub fn pending(&self) -> Vec<PendingTask> {
        self.tasks
            .values()
            .filter(|t| t.agent.is_none() && t.status.state == TaskState::Staging)
            .map(|t| PendingTask {
                id: t.id,
                demand: t.spec.resources.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
