//! Wasmos task execution: validates and compiles WASI 0.2 command components and runs them in
//! wasmtime under CPU (metered time or fuel), memory, wall-clock and output limits, with nothing ambient.
//!
//! The agent owns one [`Runner`] (cheap to clone) for its lifetime: it holds the wasmtime engine,
//! the WASI linker, the epoch ticker that makes running guests interruptible, the metering mode
//! (thread CPU time, or fuel at a calibrated rate), and a cache of compiled components.

mod artifact;
mod bandwidth;
mod calibrate;
mod disk;
mod limits;
mod meter;
mod net;
mod output;
mod platform;
mod runner;
#[cfg(test)]
mod tests;
mod validate;

use std::time::Duration;

pub use artifact::{CompileWorker, run_compile_worker};
pub use disk::{DiskQuota, Preopen, charged_bytes};
pub use net::EgressPolicy;
pub use platform::{SpawnFuture, Spawner, TaskContext, TaskPlatform};
pub use runner::{Compiled, Runner};

pub use validate::validate_component;
pub use wasmos_proto::{OutputStream, TaskStatus};

/// How a [`Runner`] measures the CPU a task uses, which drives both its CPU share (throttling)
/// and its CPU budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metering {
    /// The thread CPU clock, read around every poll of the task and on every epoch tick. It
    /// charges wasm and host calls alike and costs the guest almost nothing, so it is the
    /// default.
    #[default]
    CpuTime,
    /// Fuel (counted WebAssembly operators) for the guest's own code, converted to time at
    /// `per_core_second`, plus whatever the thread CPU clock saw beyond that (host calls).
    /// Deterministic for pure computation, at the price of fuel instrumentation in every loop
    /// (see BENCHMARKS.md). `per_core_second: None` measures the rate when the runner is
    /// created (a few hundred milliseconds of one core); a fixed value makes shares reproducible
    /// across machines.
    Fuel { per_core_second: Option<u64> },
}

/// Settings of a [`Runner`], fixed for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    pub metering: Metering,
    /// Largest component accepted by [`Runner::compile`].
    pub max_component_bytes: u64,
    /// How long [`Runner::compile`] waits for wasmtime to compile one component.
    pub compile_timeout: Duration,
    /// Compile in this child process, under its memory limit, instead of on a thread of the
    /// runner's own process (where a compile bomb's memory cannot be bounded).
    pub compile_worker: Option<CompileWorker>,
    /// Where compiled artifacts are kept across runs and restarts; `None` keeps them in memory
    /// only.
    pub cache_dir: Option<std::path::PathBuf>,
    /// Use wasmtime's pooling allocator sized for this many concurrent tasks; more than that
    /// at once fail to instantiate. `None`: allocate each task's memory on demand.
    pub pool: Option<u32>,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            metering: Metering::default(),
            max_component_bytes: 64 * 1024 * 1024,
            compile_timeout: Duration::from_secs(60),
            compile_worker: None,
            cache_dir: None,
            pool: None,
        }
    }
}

/// One execution of a compiled component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The guest's argv; `args[0]` is the program name (the caller passes the task name).
    pub args: Vec<String>,
    /// The guest's whole environment: nothing of the agent's leaks in.
    pub env: Vec<(String, String)>,
    /// CPU share in thousandths of a core: the task is paused whenever it is ahead of
    /// `cpu_millis / 1000` core-seconds per second. 1000 or more means unthrottled (a guest is
    /// single-threaded); 0 is treated as 1.
    pub cpu_millis: u64,
    /// Cap on the total size of all linear memories of the instance.
    pub mem_bytes: u64,
    /// Wall-clock limit, from the start of instantiation.
    pub timeout: Duration,
    /// Cap on the bytes of each of stdout and stderr. Output up to the cap is forwarded; past
    /// it the stream is truncated (`truncate_output`) or the write stops the task.
    pub max_output_bytes: u64,
    /// Past the cap: drop the rest and go on (true), or stop with `output_limit` (false).
    pub truncate_output: bool,
    /// Total CPU time (core time, as metered) the task may use; `None` is unlimited.
    pub cpu_budget: Option<Duration>,
    /// What the guest reads from stdin; empty means an immediately closed stdin.
    pub stdin: Vec<u8>,
    /// TCP destinations the guest may connect to; empty means no sockets at all.
    pub net_allow: Vec<wasmos_proto::NetRule>,
    /// What of those it may really reach (operators' rules, the host's protection).
    pub egress: std::sync::Arc<EgressPolicy>,
    /// Bytes per second the task's TCP streams may carry in each direction; `None`: unlimited.
    pub net_rate: Option<u64>,
    /// Host directories the guest sees; empty means no filesystem at all.
    pub preopens: Vec<Preopen>,
    /// The quota on the writable part of those, if any.
    pub disk: Option<DiskQuota>,
    /// Where the run publishes what it uses while it runs, for the agent's usage reports.
    pub usage: Option<std::sync::Arc<TaskUsage>>,
    /// What the task and its agent share through the `wasmos:task` interfaces; `None` gives
    /// it an empty context and keeps nothing it reports.
    pub platform: Option<std::sync::Arc<TaskPlatform>>,
    /// For a burstable task: memory past `burst.request_bytes` (up to `mem_bytes`) is granted
    /// only while the agent's pool has it to lend.
    pub burst: Option<Burst>,
}

/// Memory an agent can lend to burstable tasks beyond their requests: its advertised memory,
/// less what running tasks requested and what is lent out. Requests may drive it below zero
/// (best-effort tasks run on lent resources); then nothing is lent.
#[derive(Debug)]
pub struct MemoryPool {
    free: std::sync::atomic::AtomicI64,
}

impl MemoryPool {
    pub fn new(bytes: u64) -> std::sync::Arc<MemoryPool> {
        std::sync::Arc::new(MemoryPool {
            free: std::sync::atomic::AtomicI64::new(i64::try_from(bytes).unwrap_or(i64::MAX)),
        })
    }

    /// A task's request is set aside for it while it runs.
    pub fn reserve(&self, bytes: u64) {
        let b = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.free.fetch_sub(b, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn release(&self, bytes: u64) {
        let b = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.free.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lends `bytes` if that much is free.
    pub(crate) fn try_borrow(&self, bytes: u64) -> bool {
        let Ok(b) = i64::try_from(bytes) else {
            return false;
        };
        self.free
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |free| (free >= b).then(|| free - b),
            )
            .is_ok()
    }

    /// Bytes free to lend now (negative when requests exceed the agent's memory).
    pub fn free(&self) -> i64 {
        self.free.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How a burstable task may exceed its memory request.
#[derive(Debug, Clone)]
pub struct Burst {
    pub request_bytes: u64,
    pub pool: std::sync::Arc<MemoryPool>,
}

/// Requests compare by value; the pool by identity.
impl PartialEq for Burst {
    fn eq(&self, other: &Self) -> bool {
        self.request_bytes == other.request_bytes && std::sync::Arc::ptr_eq(&self.pool, &other.pool)
    }
}

impl Eq for Burst {}

/// A running task's use so far, updated on every epoch tick: the CPU time charged to it and
/// the memory (linear memories and tables) it holds.
#[derive(Debug, Default)]
pub struct TaskUsage {
    cpu_ns: std::sync::atomic::AtomicU64,
    mem_bytes: std::sync::atomic::AtomicU64,
    /// Set once the task is instantiated: before that (fetching, compiling, waiting for a
    /// slot) it uses nothing worth reporting.
    started: std::sync::atomic::AtomicBool,
}

impl TaskUsage {
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the task has been instantiated.
    pub fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Memory alone, as instantiated: the epoch callback records both only while guest code
    /// runs, and a task may wait in a host call from its first instruction on.
    pub(crate) fn record_mem(&self, mem_bytes: u64) {
        self.mem_bytes
            .store(mem_bytes, std::sync::atomic::Ordering::Relaxed);
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Mirrors a meter read elsewhere (a task run by an executor process).
    pub fn mirror(&self, cpu_ns: u64, mem_bytes: u64, started: bool) {
        self.record(cpu_ns, mem_bytes);
        self.started
            .store(started, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn record(&self, cpu_ns: u64, mem_bytes: u64) {
        self.cpu_ns
            .store(cpu_ns, std::sync::atomic::Ordering::Relaxed);
        self.mem_bytes
            .store(mem_bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Two meters are equal when they read the same (requests compare by value).
impl PartialEq for TaskUsage {
    fn eq(&self, other: &Self) -> bool {
        self.cpu_ns() == other.cpu_ns() && self.mem_bytes() == other.mem_bytes()
    }
}

impl Eq for TaskUsage {}

/// How a run ended. `status.cpu_ms` (and `fuel_used` when metering by fuel) is always filled,
/// whatever the ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: TaskStatus,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    /// The bytes are not a component this runner can run; the message names the problem.
    #[error("invalid component: {0}")]
    InvalidComponent(String),
    #[error("component is {size} bytes, larger than the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("compiling the component took longer than {0:?}")]
    CompileTimeout(Duration),
    #[error("compiling the component needed more than {0} bytes of memory")]
    CompileMemory(u64),
    /// wasmtime itself failed (engine setup, calibration, compiler): not the component's fault.
    #[error("wasmtime engine error: {0}")]
    Engine(String),
}
