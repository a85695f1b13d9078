//! The cluster's event stream: one event per change the replicated state records, numbered by
//! the raft log index of the entry that made it, so a reader resumes from the last index it saw
//! on any master (every master applies the same entries to the same events).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AgentId, FrameworkId, JobId, JobState, Reason, TaskId, TaskState};

/// What an event is about; `wasmos events --type` picks some.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topic {
    Task,
    Agent,
    Job,
    Framework,
    Role,
}

impl Topic {
    pub const ALL: [Topic; 5] = [
        Topic::Task,
        Topic::Agent,
        Topic::Job,
        Topic::Framework,
        Topic::Role,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Topic::Task => "task",
            Topic::Agent => "agent",
            Topic::Job => "job",
            Topic::Framework => "framework",
            Topic::Role => "role",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Topic {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type `{s}` (task, agent, job, framework, role)"))
    }
}

/// One change, as the stream tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The raft log index of the entry that made the change: several events may share one.
    pub index: u64,
    /// Whose object changed (an identity URI): the stream shows it only to callers who may see
    /// that owner's objects. `None` for agents and roles, which have no owner.
    pub owner: Option<String>,
    pub change: Change,
}

impl Event {
    pub fn topic(&self) -> Topic {
        self.change.topic()
    }
}

/// What changed.
// Externally tagged like every other wire enum: postcard (the QUIC codec) has no tags by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A task was created, placed on an agent, or changed state.
    Task {
        id: TaskId,
        state: TaskState,
        reason: Option<Reason>,
        message: Option<String>,
        agent: Option<AgentId>,
        role: Option<String>,
        framework: Option<FrameworkId>,
        /// What it last said of its progress (`wasmos:task/progress`).
        progress: Option<crate::TaskProgress>,
    },
    Agent {
        id: AgentId,
        change: AgentChange,
    },
    Job {
        id: JobId,
        name: String,
        change: JobChange,
    },
    Framework {
        id: FrameworkId,
        name: String,
        role: String,
        change: FrameworkChange,
    },
    /// A role's settings were set, or an operator removed a reservation of it.
    Role {
        role: String,
        change: RoleChange,
    },
}

impl Change {
    pub fn topic(&self) -> Topic {
        match self {
            Change::Task { .. } => Topic::Task,
            Change::Agent { .. } => Topic::Agent,
            Change::Job { .. } => Topic::Job,
            Change::Framework { .. } => Topic::Framework,
            Change::Role { .. } => Topic::Role,
        }
    }

    /// The object's id as the CLI names it (`task-3`, `job-2`, `fw-1`, an agent's or a role's
    /// name).
    pub fn key(&self) -> String {
        match self {
            Change::Task { id, .. } => id.to_string(),
            Change::Agent { id, .. } => id.to_string(),
            Change::Job { id, .. } => id.to_string(),
            Change::Framework { id, .. } => id.to_string(),
            Change::Role { role, .. } => role.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentChange {
    Registered,
    Lost,
    /// An operator drained it (`wasmos agent drain`): no new tasks, its running ones killed
    /// with reason `maintenance`.
    Draining,
    /// An operator ended its drain (`wasmos agent undrain`): it is offered again.
    Undrained,
    /// An operator changed what it offers (`wasmos agent set`).
    Resized,
    /// An operator scheduled (or cancelled) a maintenance window for it.
    MaintenanceScheduled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobChange {
    Submitted,
    /// A task of a group was launched, finished, failed or was stopped, or a slot's kept
    /// outputs were lost.
    Progress {
        group: String,
        index: u32,
        what: String,
        task: Option<TaskId>,
    },
    Scaled {
        group: String,
        count: u32,
    },
    /// Its group's task was changed: a rolling update began.
    Updated {
        group: String,
    },
    Ended(JobState),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrameworkChange {
    Registered,
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleChange {
    Set,
    ReservationRemoved { agent: AgentId },
}

impl fmt::Display for Change {
    /// What happened, in a few words, for `wasmos events`' table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Task {
                state,
                reason,
                message,
                agent,
                progress,
                ..
            } => {
                write!(f, "{state}")?;
                if let Some(p) = progress.as_ref().filter(|_| !state.is_terminal()) {
                    write!(f, " {}.{}%", p.permille / 10, p.permille % 10)?;
                    if !p.message.is_empty() {
                        write!(f, " {}", p.message)?;
                    }
                }
                if let Some(agent) = agent {
                    write!(f, " on {agent}")?;
                }
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                if let Some(message) = message {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Change::Agent { change, .. } => match change {
                AgentChange::Registered => f.write_str("registered"),
                AgentChange::Lost => f.write_str("lost"),
                AgentChange::Draining => f.write_str("draining"),
                AgentChange::Undrained => f.write_str("undrained"),
                AgentChange::Resized => f.write_str("resized"),
                AgentChange::MaintenanceScheduled => f.write_str("maintenance scheduled"),
            },
            Change::Job { name, change, .. } => match change {
                JobChange::Submitted => write!(f, "{name} submitted"),
                JobChange::Progress {
                    group,
                    index,
                    what,
                    task,
                } => {
                    write!(f, "{name} {group}[{index}] {what}")?;
                    if let Some(task) = task {
                        write!(f, " ({task})")?;
                    }
                    Ok(())
                }
                JobChange::Scaled { group, count } => write!(f, "{name} {group} scaled to {count}"),
                JobChange::Updated { group } => write!(f, "{name} {group} updated: rolling out"),
                JobChange::Ended(state) => write!(f, "{name} {state}"),
            },
            Change::Framework {
                name, role, change, ..
            } => match change {
                FrameworkChange::Registered => write!(f, "{name} registered in role {role}"),
                FrameworkChange::Removed => write!(f, "{name} removed"),
            },
            Change::Role { change, .. } => match change {
                RoleChange::Set => f.write_str("set"),
                RoleChange::ReservationRemoved { agent } => {
                    write!(f, "reservation on {agent} removed")
                }
            },
        }
    }
}

/// Most events one `Events` frame carries.
pub const MAX_EVENTS_PER_FRAME: usize = 256;
