//! Tasks: what a user asks to run (`TaskSpec`), the resources it reserves, and the states it
//! moves through with the reason it stopped.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AgentId, BundleHash, TaskId};

/// The custom scalar that is network bandwidth, in bytes per second each way (ingress and
/// egress are limited separately, each to the amount). Agents enforce it on the task's sockets.
pub const NET: &str = "net";

/// Most kinds of custom resource one bundle of resources may name.
pub const MAX_SCALAR_KINDS: usize = 16;

/// A bundle of resources. Integers only, so comparisons and sums are exact and deterministic.
/// Besides CPU, memory and disk, an agent may advertise custom scalars (`gpu`, `fpga`, ...)
/// that tasks request by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a core.
    pub cpu_millis: u64,
    pub mem_bytes: u64,
    /// Scratch disk space.
    pub disk_bytes: u64,
    /// Custom scalar resources by name; a missing name is zero. (`default`: Raft state written
    /// before scalars existed is JSON without the field.)
    #[serde(default)]
    pub scalars: BTreeMap<String, u64>,
}

impl Resources {
    #[inline]
    pub fn new(cpu_millis: u64, mem_bytes: u64, disk_bytes: u64) -> Resources {
        Resources {
            cpu_millis,
            mem_bytes,
            disk_bytes,
            scalars: BTreeMap::new(),
        }
    }

    /// With custom scalar `name` set to `amount`.
    pub fn with_scalar(mut self, name: &str, amount: u64) -> Resources {
        if amount == 0 {
            self.scalars.remove(name);
        } else {
            self.scalars.insert(name.to_string(), amount);
        }
        self
    }

    /// Whether the custom scalars are few and well named: at most [`MAX_SCALAR_KINDS`], each
    /// name 1 to 32 bytes of lowercase letters, digits, `-` and `_`. Names the problem if not.
    pub fn check_scalars(&self) -> Result<(), String> {
        if self.scalars.len() > MAX_SCALAR_KINDS {
            return Err(format!(
                "at most {MAX_SCALAR_KINDS} custom resources, not {}",
                self.scalars.len()
            ));
        }
        for name in self.scalars.keys() {
            let ok = !matches!(name.as_str(), "cpu" | "mem" | "disk")
                && (1..=32).contains(&name.len())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !ok {
                let shown: String = name.chars().take(40).collect();
                return Err(format!(
                    "`{shown}` is not a custom resource name (1 to 32 lowercase letters, digits, `-`, `_`)"
                ));
            }
        }
        Ok(())
    }

    pub fn scalar(&self, name: &str) -> u64 {
        self.scalars.get(name).copied().unwrap_or(0)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.cpu_millis == 0
            && self.mem_bytes == 0
            && self.disk_bytes == 0
            && self.scalars.values().all(|v| *v == 0)
    }

    #[inline]
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis
            && self.mem_bytes <= free.mem_bytes
            && self.disk_bytes <= free.disk_bytes
            && self.scalars.iter().all(|(k, v)| *v <= free.scalar(k))
    }

    #[inline]
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut out = Resources::new(
            self.cpu_millis.saturating_sub(other.cpu_millis),
            self.mem_bytes.saturating_sub(other.mem_bytes),
            self.disk_bytes.saturating_sub(other.disk_bytes),
        );
        if self.scalars.is_empty() {
            return out;
        }
        for (k, v) in &self.scalars {
            let left = v.saturating_sub(other.scalar(k));
            if left > 0 {
                out.scalars.insert(k.clone(), left);
            }
        }
        out
    }

    /// The smaller of the two in each kind.
    pub fn min_each(&self, other: &Resources) -> Resources {
        let mut out = Resources::new(
            self.cpu_millis.min(other.cpu_millis),
            self.mem_bytes.min(other.mem_bytes),
            self.disk_bytes.min(other.disk_bytes),
        );
        for (k, v) in &self.scalars {
            let least = (*v).min(other.scalar(k));
            if least > 0 {
                out.scalars.insert(k.clone(), least);
            }
        }
        out
    }

    #[inline]
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        let mut out = Resources::new(
            self.cpu_millis.saturating_add(other.cpu_millis),
            self.mem_bytes.saturating_add(other.mem_bytes),
            self.disk_bytes.saturating_add(other.disk_bytes),
        );
        // Most resources have no custom scalars: skip the maps.
        if self.scalars.is_empty() && other.scalars.is_empty() {
            return out;
        }
        out.scalars = self.scalars.clone();
        for (k, v) in &other.scalars {
            let sum = out.scalar(k).saturating_add(*v);
            if sum > 0 {
                out.scalars.insert(k.clone(), sum);
            }
        }
        out
    }

    /// The smaller of each quantity.
    #[inline]
    pub fn min(&self, other: &Resources) -> Resources {
        let mut out = Resources::new(
            self.cpu_millis.min(other.cpu_millis),
            self.mem_bytes.min(other.mem_bytes),
            self.disk_bytes.min(other.disk_bytes),
        );
        for (k, v) in &self.scalars {
            let m = (*v).min(other.scalar(k));
            if m > 0 {
                out.scalars.insert(k.clone(), m);
            }
        }
        out
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
        )?;
        for (k, v) in &self.scalars {
            match k.as_str() {
                NET => write!(f, " {k} {}/s", crate::format_bytes(*v))?,
                _ => write!(f, " {k} {v}")?,
            }
        }
        Ok(())
    }
}

/// Quality of service: how a task's resources are held. `Guaranteed` and `Burstable` tasks are
/// placed on resources allocated to them (a burstable task may use more than it requested when
/// the agent has it to spare); `BestEffort` tasks run on revocable resources, the allocated but
/// unused share of others, and are preempted (reason `preempted`) when the owner needs it back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Qos {
    #[default]
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn is_revocable(self) -> bool {
        self == Qos::BestEffort
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
    /// Total CPU the task may use, in milliseconds of one core (as the agent meters it, host
    /// calls included); `None` for no budget beyond the timeout. Running out stops it with
    /// `cpu_limit`.
    pub cpu_budget_ms: Option<u64>,
    /// A data blob (uploaded like a bundle) the task reads as its stdin; none means empty.
    pub stdin: Option<BundleHash>,
    /// Destinations the task may open TCP connections to; empty means no network at all.
    pub net_allow: Vec<crate::NetRule>,
    /// Local directories shipped with the task, each a writable copy inside its scratch space.
    /// (`default`: Raft state written before mounts existed is JSON without the field.)
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Files the task can read but not change.
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    /// The role whose share the task counts against (`tenant-a/analytics`); `None` at submit
    /// time means the submitter's default (a tenant's name, `default` for operators), which the
    /// master fills in.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub qos: Qos,
    /// Higher launches first; among best-effort tasks the lowest is preempted first.
    #[serde(default)]
    pub priority: i32,
    /// A burstable task's CPU share ceiling, above its request (`resources.cpu_millis`).
    #[serde(default)]
    pub cpu_limit_millis: Option<u64>,
    /// A burstable task's memory ceiling: memory past its request is granted only while its
    /// agent has memory no task requested.
    #[serde(default)]
    pub mem_limit_bytes: Option<u64>,
    /// A guest directory of results: when the task finishes with exit code 0, every file under
    /// it is uploaded to the master as a data blob and listed in the final status (`outputs`),
    /// where frameworks find them (a batch job hands them to its later stages).
    #[serde(default)]
    pub outputs_dir: Option<String>,
    /// Keep the outputs on the agent that ran the task instead of storing them on the masters:
    /// tasks that name them as inputs fetch them from that agent (agent to agent, over mutual
    /// TLS), and they are gone if that agent is. A batch job sets this for the groups whose
    /// outputs only later groups read (MapReduce's intermediate files).
    #[serde(default)]
    pub outputs_on_agent: bool,
    /// Environment variables whose values are secret: the task sees them like `env`, but no
    /// listing, `task show`, `-o json` or log prints their values, and the replicated state
    /// holds them only sealed (encrypted with a key only masters hold).
    #[serde(default)]
    pub secret_env: Vec<SecretEnv>,
    /// Agent attributes the task needs, KEY = VALUE (`os = "windows"`): the master places it
    /// only on an agent that advertises every one.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Its slot in a batch job or service, which `wasmos:task/context` tells it. Set by the
    /// masters' job host only: the masters clear it on anything else's tasks.
    #[serde(default)]
    pub slot: Option<JobSlot>,
    /// The task that spawned it (`wasmos:task/spawn`), if one did. Set by the masters only:
    /// they clear it on clients' and frameworks' tasks.
    #[serde(default)]
    pub lineage: Option<crate::Lineage>,
}

/// A task's place in a batch job or service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSlot {
    /// The job (filled in by the master from the framework that launched it).
    pub job: Option<crate::JobId>,
    pub group: String,
    pub index: u32,
    /// 1 for the slot's first run, 2 for its first retry...
    pub attempt: u32,
}

/// A secret environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub name: String,
    pub value: SecretValue,
}

/// A secret's value in each place it travels.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecretValue {
    /// From a client to the master, and from the master to the agent that runs the task (both
    /// over mutual TLS).
    Plain(String),
    /// In the replicated state and on the masters' disks: sealed with the masters' key.
    Sealed(Vec<u8>),
    /// In every answer a client gets: the value is not there.
    Hidden,
}

impl SecretValue {
    /// Bytes the value takes, as counted against the role's ceiling on arguments and
    /// environment.
    pub fn len(&self) -> usize {
        match self {
            SecretValue::Plain(s) => s.len(),
            SecretValue::Sealed(b) => b.len(),
            SecretValue::Hidden => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Never prints a value: specs end up in logs.
impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Plain(_) => f.write_str("Plain(<secret>)"),
            SecretValue::Sealed(b) => write!(f, "Sealed({} bytes)", b.len()),
            SecretValue::Hidden => f.write_str("Hidden"),
        }
    }
}

impl TaskSpec {
    /// The spec as a client may see it: secret values hidden.
    pub fn redacted(&self) -> TaskSpec {
        let mut spec = self.clone();
        for s in &mut spec.secret_env {
            s.value = SecretValue::Hidden;
        }
        spec
    }
}

/// A file a task left in its outputs directory, stored as a data blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the outputs directory, `/`-separated (`part-0`, `sub/x.csv`).
    pub path: String,
    pub blob: BundleHash,
    pub size: u64,
    /// The agent that holds it, when it was kept there (`outputs_on_agent`) and not stored on
    /// the masters; set by the state machine from where the task ran, never by the agent.
    #[serde(default)]
    pub held_by: Option<crate::AgentId>,
}

/// Most files one task's outputs directory may hold.
pub const MAX_OUTPUT_FILES: usize = 256;

/// A directory shipped with a task: a tar archive (uploaded as a data blob) unpacked at `guest`
/// inside the task's scratch space, so it is writable and counts against the `disk` quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub archive: BundleHash,
    /// Absolute guest path; `/` makes the directory the task's whole filesystem.
    pub guest: String,
}

/// A read-only file: the blob's bytes at guest path `guest` (whose directory becomes a
/// read-only directory of the task's filesystem, holding only input files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub blob: BundleHash,
    pub guest: String,
}

/// Most mounts and input files one task may have.
pub const MAX_MOUNTS: usize = 16;
/// Checks placement constraints (a task's, a job group's) against [`MAX_CONSTRAINTS`] and
/// [`MAX_ATTRIBUTE_BYTES`].
pub fn check_constraints(constraints: &BTreeMap<String, String>) -> Result<(), String> {
    if constraints.len() > MAX_CONSTRAINTS {
        return Err(format!("at most {MAX_CONSTRAINTS} constraints per task"));
    }
    for (k, v) in constraints {
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_BYTES || v.len() > MAX_ATTRIBUTE_BYTES {
            let shown: String = k.chars().take(40).collect();
            return Err(format!(
                "constraint `{shown}`: keys are 1 to {MAX_ATTRIBUTE_BYTES} bytes, values at most {MAX_ATTRIBUTE_BYTES}"
            ));
        }
    }
    Ok(())
}

/// Most constraints one task may name.
pub const MAX_CONSTRAINTS: usize = 16;
/// Longest constraint key or value, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 128;
pub const MAX_INPUTS: usize = 1024;

/// Whether `guest` is an absolute, normalized guest path: `/`, `/data`, `/a/b`, without `.`,
/// `..`, empty components, backslashes or NULs.
pub fn valid_guest_path(guest: &str) -> bool {
    guest == "/"
        || (guest.len() <= 1024
            && guest.starts_with('/')
            && !guest.ends_with('/')
            && guest[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '\0'])))
}

/// The directory part of a normalized guest file path (`/in/a.csv` -> `/in`).
pub fn guest_parent(guest: &str) -> &str {
    match guest.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &guest[..i],
    }
}

impl TaskSpec {
    /// A spec with the CLI's defaults: no args, env, stdin, network, mounts or inputs; half a
    /// core, 64 MiB of memory and 64 MiB of scratch disk, 30 s, 1 MiB of output per stream
    /// (truncated past it), no CPU budget.
    pub fn new(name: impl Into<String>, bundle: BundleHash) -> Self {
        TaskSpec {
            name: name.into(),
            bundle,
            args: Vec::new(),
            env: Vec::new(),
            resources: Resources::new(500, 64 << 20, 64 << 20),
            timeout_ms: 30_000,
            max_output_bytes: 1 << 20,
            on_output_limit: OutputPolicy::Truncate,
            cpu_budget_ms: None,
            stdin: None,
            net_allow: Vec::new(),
            mounts: Vec::new(),
            inputs: Vec::new(),
            role: None,
            qos: Qos::Guaranteed,
            priority: 0,
            cpu_limit_millis: None,
            mem_limit_bytes: None,
            outputs_dir: None,
            outputs_on_agent: false,
            secret_env: Vec::new(),
            constraints: BTreeMap::new(),
            slot: None,
            lineage: None,
        }
    }

    /// Checks what the master can check before accepting the spec: the filesystem layout
    /// (mount and input paths) and its sizes. The message names the offending entry.
    pub fn check(&self) -> Result<(), String> {
        type Show = fn(u64) -> String;
        let limits: [(&str, Option<u64>, u64, Show); 2] = [
            (
                "cpu",
                self.cpu_limit_millis,
                self.resources.cpu_millis,
                crate::format_cpu,
            ),
            (
                "memory",
                self.mem_limit_bytes,
                self.resources.mem_bytes,
                crate::format_bytes,
            ),
        ];
        for (what, limit, request, show) in limits {
            match limit {
                Some(_) if self.qos != Qos::Burstable => {
                    return Err(format!(
                        "a {what} limit is for burstable tasks (qos burstable); others get exactly what they request"
                    ));
                }
                Some(l) if l < request => {
                    return Err(format!(
                        "the {what} limit ({}) is below the request ({})",
                        show(l),
                        show(request)
                    ));
                }
                _ => {}
            }
        }
        check_constraints(&self.constraints)?;
        if self.mounts.len() > MAX_MOUNTS {
            return Err(format!("at most {MAX_MOUNTS} mounts per task"));
        }
        if self.inputs.len() > MAX_INPUTS {
            return Err(format!("at most {MAX_INPUTS} input files per task"));
        }
        let mut mounts = std::collections::BTreeSet::new();
        for m in &self.mounts {
            if !valid_guest_path(&m.guest) {
                return Err(format!(
                    "mount path `{}` must be absolute and normalized, like /data",
                    m.guest
                ));
            }
            if !mounts.insert(m.guest.as_str()) {
                return Err(format!("two mounts at `{}`", m.guest));
            }
        }
        if self.outputs_on_agent && self.outputs_dir.is_none() {
            return Err("outputs kept on the agent need an outputs directory".into());
        }
        if let Some(dir) = &self.outputs_dir
            && (!valid_guest_path(dir) || dir == "/")
        {
            return Err(format!(
                "outputs directory `{dir}` must be an absolute, normalized path below /, like /out"
            ));
        }
        let mut files = std::collections::BTreeSet::new();
        for i in &self.inputs {
            if !valid_guest_path(&i.guest) || i.guest == "/" {
                return Err(format!(
                    "input path `{}` must be an absolute, normalized file path, like /in/data.csv",
                    i.guest
                ));
            }
            let dir = guest_parent(&i.guest);
            if dir == "/" {
                return Err(format!(
                    "input `{}` must be in a directory (like /in/{}): / is the task's writable scratch space",
                    i.guest,
                    &i.guest[1..]
                ));
            }
            // Inputs are seen through their top-level directory, read-only: no mount may be
            // that directory, inside it, or around it.
            let top = match i.guest[1..].find('/') {
                Some(n) => &i.guest[..n + 1],
                None => dir,
            };
            let overlaps = |m: &str| {
                m != "/"
                    && (m == top
                        || m.starts_with(&format!("{top}/"))
                        || top.starts_with(&format!("{m}/")))
            };
            if let Some(m) = mounts.iter().find(|m| overlaps(m)) {
                return Err(format!(
                    "input `{}` is under `{top}`, which overlaps mount `{m}`; input directories are read-only",
                    i.guest
                ));
            }
            if !files.insert(i.guest.as_str()) {
                return Err(format!("two inputs at `{}`", i.guest));
            }
        }
        for i in &self.inputs {
            // An input directory holding another input's directory would hide it.
            if files.contains(guest_parent(&i.guest)) {
                return Err(format!(
                    "input `{}` is inside another input's path",
                    i.guest
                ));
            }
        }
        Ok(())
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
    /// How far along a task in this state is: staging, starting, running, ended. A task's
    /// state never moves to a lower step.
    pub fn step(self) -> u8 {
        match self {
            TaskState::Staging => 0,
            TaskState::Starting => 1,
            TaskState::Running => 2,
            _ => 3,
        }
    }

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
    /// Wrote more to its scratch directory than its `disk` quota.
    DiskLimit,
    /// Asked about in reconciliation, but not a task of the asking framework.
    Unknown,
    /// Its framework was torn down or did not come back within its failover timeout.
    FrameworkRemoved,
    /// An input kept on other agents (an earlier task's intermediate output) could not be
    /// fetched from any of them: they are gone, or no longer hold it. `TaskStatus::lost_input`
    /// names it, so the job runs the task that produced it again.
    InputLost,
    /// Its agent was stopped (SIGTERM, Ctrl-C, the service stopped) and killed it on the way
    /// out; the task may run again elsewhere.
    AgentStopped,
    /// The task that spawned it ended first: children do not outlive their parent.
    ParentEnded,
    /// An operator drained its agent (`wasmos agent drain`); the task may run again elsewhere.
    Maintenance,
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
            Reason::DiskLimit => "disk_limit",
            Reason::Unknown => "unknown",
            Reason::FrameworkRemoved => "framework_removed",
            Reason::InputLost => "input_lost",
            Reason::AgentStopped => "agent_stopped",
            Reason::ParentEnded => "parent_ended",
            Reason::Maintenance => "maintenance",
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
    /// Fuel the task consumed, when its agent meters by fuel; 0 otherwise.
    pub fuel_used: u64,
    /// CPU the task used, in milliseconds of one core, host calls included.
    pub cpu_ms: u64,
    /// Largest total size its linear memories reached.
    pub peak_mem_bytes: u64,
    /// What it left in its outputs directory (finished with exit code 0 only).
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    /// With `Reason::InputLost`: the input blob that could not be fetched.
    #[serde(default)]
    pub lost_input: Option<BundleHash>,
    /// What it published through `wasmos:task/results`, however it ended.
    #[serde(default)]
    pub results: Vec<crate::TaskResult>,
    /// The files it published by name through `wasmos:task/results` (`put-file`), stored on
    /// the masters (finished with exit code 0 only, like `outputs`).
    #[serde(default)]
    pub files: Vec<crate::ResultFile>,
    /// On an agent's last report of a task: what it last said of its progress, which the
    /// heartbeats may not have carried yet (the state keeps it in the task's `progress`).
    #[serde(default)]
    pub progress: Option<crate::TaskProgress>,
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
            outputs: Vec::new(),
            lost_input: None,
            results: Vec::new(),
            files: Vec::new(),
            progress: None,
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
    /// The framework that launched it from an offer (`wasmos run` tasks belong to the master's
    /// built-in framework of their role).
    #[serde(default)]
    pub framework: Option<crate::FrameworkId>,
    pub agent: Option<AgentId>,
    pub status: TaskStatus,
    pub submitted_ms: u64,
    pub updated_ms: u64,
    /// Counts the task's status changes: the id of the update that reported the current
    /// status to its framework.
    #[serde(default)]
    pub status_seq: u64,
    /// The highest update its framework acknowledged; below `status_seq`, the latest status
    /// is still being resent.
    #[serde(default)]
    pub acked_seq: u64,
    /// What it last said of its progress while it ran (`wasmos:task/progress`).
    #[serde(default)]
    pub progress: Option<crate::TaskProgress>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod fs_layout_tests {
    use super::*;

    fn spec(mounts: &[&str], inputs: &[&str]) -> TaskSpec {
        let hash = BundleHash::from_digest(&[7; 32]);
        let mut s = TaskSpec::new("t", hash.clone());
        s.mounts = mounts
            .iter()
            .map(|g| Mount {
                archive: hash.clone(),
                guest: g.to_string(),
            })
            .collect();
        s.inputs = inputs
            .iter()
            .map(|g| InputFile {
                blob: hash.clone(),
                guest: g.to_string(),
            })
            .collect();
        s
    }

    #[test]
    fn constraints_are_bounded() {
        let mut s = spec(&[], &[]);
        s.constraints = (0..MAX_CONSTRAINTS)
            .map(|i| (format!("k{i}"), "v".repeat(MAX_ATTRIBUTE_BYTES)))
            .collect();
        assert_eq!(s.check(), Ok(()));
        s.constraints.insert("one-more".into(), "v".into());
        assert!(s.check().unwrap_err().contains("at most 16 constraints"));
        for (k, v) in [
            (String::new(), "v".to_string()),
            ("k".repeat(MAX_ATTRIBUTE_BYTES + 1), "v".to_string()),
            ("os".to_string(), "v".repeat(MAX_ATTRIBUTE_BYTES + 1)),
        ] {
            s.constraints = [(k, v)].into();
            let err = s.check().unwrap_err();
            assert!(err.contains("keys are 1 to 128 bytes"), "{err}");
            // An oversized key is not echoed back whole.
            assert!(err.len() < 200, "{err}");
        }
    }

    #[test]
    fn guest_paths_must_be_absolute_and_normalized() {
        for ok in ["/", "/data", "/a/b.txt", "/a b/ü"] {
            assert!(valid_guest_path(ok), "{ok}");
        }
        for bad in [
            "", "data", "/data/", "//x", "/a/../b", "/./a", "/a\\b", "/a\0", "C:\\x",
        ] {
            assert!(!valid_guest_path(bad), "{bad:?}");
        }
        assert_eq!(guest_parent("/in/a.csv"), "/in");
        assert_eq!(guest_parent("/a.csv"), "/");
    }

    #[test]
    fn layouts_are_checked_with_a_message_naming_the_entry() {
        assert_eq!(
            spec(&["/", "/data"], &["/in/a", "/in/b", "/x/y/z"]).check(),
            Ok(())
        );
        let err = |m: &[&str], i: &[&str]| spec(m, i).check().unwrap_err();
        assert!(err(&["data"], &[]).contains("`data`"));
        assert!(err(&["/d", "/d"], &[]).contains("two mounts at `/d`"));
        assert!(err(&[], &["/a.csv"]).contains("/in/a.csv"));
        assert!(err(&["/in"], &["/in/a"]).contains("overlaps mount `/in`"));
        assert!(err(&["/in/m"], &["/in/a/b"]).contains("overlaps mount `/in/m`"));
        assert!(spec(&["/data"], &["/in/a/b"]).check().is_ok());
        assert!(err(&[], &["/in/a", "/in/a"]).contains("two inputs"));
        assert!(err(&[], &["/in/a", "/in/a/b"]).contains("inside another input"));
        let many: Vec<String> = (0..=MAX_MOUNTS).map(|i| format!("/m{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(err(&many, &[]).contains("at most"));
    }
}
