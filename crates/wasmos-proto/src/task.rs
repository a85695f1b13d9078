//! Tasks: what a user asks to run (`TaskSpec`), the resources it reserves, and the states it
//! moves through with the reason it stopped.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AgentId, BundleHash, TaskId};

/// A bundle of resources. Integers only, so comparisons and sums are exact and deterministic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a core.
    pub cpu_millis: u64,
    pub mem_bytes: u64,
    /// Scratch disk space.
    pub disk_bytes: u64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis
            && self.mem_bytes <= free.mem_bytes
            && self.disk_bytes <= free.disk_bytes
    }
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            mem_bytes: self.mem_bytes.saturating_sub(other.mem_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
        }
    }
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            mem_bytes: self.mem_bytes.saturating_add(other.mem_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {} mem {} disk {}",
            crate::format_cpu(self.cpu_millis),
            crate::format_bytes(self.mem_bytes),
            crate::format_bytes(self.disk_bytes)
        )
    }
}

/// What to run: a bundle (a Wasm component by hash), its arguments and environment, the resources
/// it reserves and how long it may run. Nothing else is visible to the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// A human label, usually the file name the bundle was pushed from.
    pub name: String,
    pub bundle: BundleHash,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub resources: Resources,
    /// Wall-clock limit in milliseconds.
    pub timeout_ms: u64,
    /// Cap on the bytes of each of stdout and stderr.
    pub max_output_bytes: u64,
    /// What happens past that cap.
    pub on_output_limit: OutputPolicy,
    /// Total CPU the task may use, in milliseconds of one core (metered as fuel); `None`
    /// for no budget beyond the timeout. Running out stops it with `cpu_limit`.
    pub cpu_budget_ms: Option<u64>,
    /// A data blob (uploaded like a bundle) the task reads as its stdin; none means empty.
    pub stdin: Option<BundleHash>,
    /// Destinations the task may open TCP connections to; empty means no network at all.
    pub net_allow: Vec<crate::NetRule>,
}

impl TaskSpec {
    /// A spec with the CLI's defaults: no args, env, stdin or network; half a core, 64 MiB,
    /// 30 s, 1 MiB of output per stream (truncated past it), no CPU budget.
    pub fn new(name: impl Into<String>, bundle: BundleHash) -> Self {
        TaskSpec {
            name: name.into(),
            bundle,
            args: Vec::new(),
            env: Vec::new(),
            resources: Resources {
                cpu_millis: 500,
                mem_bytes: 64 << 20,
                disk_bytes: 0,
            },
            timeout_ms: 30_000,
            max_output_bytes: 1 << 20,
            on_output_limit: OutputPolicy::Truncate,
            cpu_budget_ms: None,
            stdin: None,
            net_allow: Vec::new(),
        }
    }
}

/// What happens when a task writes more than its output cap to a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputPolicy {
    /// Keep the first bytes, drop the rest, say so in the log; the task goes on.
    #[default]
    Truncate,
    /// Stop the task with `output_limit`.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Accepted, waiting for or on its way to an agent.
    Staging,
    /// The agent is fetching and compiling the bundle.
    Starting,
    Running,
    /// Ran to completion (any exit code).
    Finished,
    /// Stopped by a limit or a trap.
    Failed,
    Killed,
    /// Its agent went away.
    Lost,
    /// Could not be started at all (invalid bundle, no fitting agent...).
    Error,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Lost
                | TaskState::Error
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "staging",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Finished => "finished",
            TaskState::Failed => "failed",
            TaskState::Killed => "killed",
            TaskState::Lost => "lost",
            TaskState::Error => "error",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a task stopped other than by returning from `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    CpuLimit,
    MemoryLimit,
    Timeout,
    Trap,
    OutputLimit,
    AgentLost,
    Preempted,
    InvalidBundle,
    Killed,
    Unschedulable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::CpuLimit => "cpu_limit",
            Reason::MemoryLimit => "memory_limit",
            Reason::Timeout => "timeout",
            Reason::Trap => "trap",
            Reason::OutputLimit => "output_limit",
            Reason::AgentLost => "agent_lost",
            Reason::Preempted => "preempted",
            Reason::InvalidBundle => "invalid_bundle",
            Reason::Killed => "killed",
            Reason::Unschedulable => "unschedulable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub reason: Option<Reason>,
    /// One human line with details (the trap message, the limit that was hit...).
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    /// Fuel the task consumed: its metered CPU usage.
    pub fuel_used: u64,
    /// The same usage in milliseconds of one core, at the agent's calibrated fuel rate.
    pub cpu_ms: u64,
    /// Largest total size its linear memories reached.
    pub peak_mem_bytes: u64,
}

impl TaskStatus {
    /// A status with a reason and a one-line message and no usage recorded.
    pub fn with_reason(
        state: TaskState,
        reason: Option<Reason>,
        message: impl Into<String>,
    ) -> Self {
        TaskStatus {
            reason,
            message: Some(message.into()),
            ..TaskStatus::new(state)
        }
    }

    pub fn new(state: TaskState) -> Self {
        TaskStatus {
            state,
            reason: None,
            message: None,
            exit_code: None,
            fuel_used: 0,
            cpu_ms: 0,
            peak_mem_bytes: 0,
        }
    }
}

/// Everything the cluster knows about one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: TaskId,
    pub spec: TaskSpec,
    /// The identity (certificate name) that submitted it.
    pub owner: String,
    pub agent: Option<AgentId>,
    pub status: TaskStatus,
    pub submitted_ms: u64,
    pub updated_ms: u64,
}
