//! Compiling untrusted components under bounds, and keeping the result on disk.
//!
//! Cranelift cannot be interrupted and its memory use grows with the input (a 3 MB component can
//! need close to 1 GiB), so an agent compiles in a child process of its own binary (the compile
//! worker) with an address-space limit and a deadline: a compile bomb costs one killed process,
//! not the agent. The worker's output, a wasmtime precompiled artifact, is cached on disk per
//! (component sha256, engine configuration and wasmtime version), so a second run, even after an
//! agent restart, skips compilation. Artifacts are only ever produced by the agent itself (the
//! worker or the in-process compiler), never accepted from users; each cache file carries the
//! sha256 of its artifact, and an entry that fails that check or fails to load is deleted and
//! rebuilt.

use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::ExecError;

/// How to start the compile worker: `program args...` runs [`run_compile_worker`] with the
/// same metering mode as the runner (the worker adds `--fuel` itself when needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileWorker {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Address space the worker may use (Unix; elsewhere only the deadline applies).
    pub max_memory_bytes: u64,
}

/// Pooling allocator sizing: how many tasks can be instantiated at once, and how many core
/// instances, memories and tables each may use (a Rust command component has three to five
/// core instances, one memory and a couple of tables; a componentize-py one a few more).
const CORE_INSTANCES_PER_TASK: u32 = 16;
const MEMORIES_PER_TASK: u32 = 2;
const TABLES_PER_TASK: u32 = 4;
/// Elements one table may have under the pooling allocator (8 MB of address space per table).
pub(crate) const TABLE_ELEMENTS: usize = 1_000_000;

/// Adds the pooling instance allocator for `tasks` concurrent instances: memory, tables, fiber
/// stacks and instance state are reserved once and reused, instead of mapped and unmapped per
/// task. Compiled code does not depend on it, so the compile worker leaves it out.
pub(crate) fn use_pooling(config: &mut Config, tasks: u32) {
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(tasks)
        .total_core_instances(tasks.saturating_mul(CORE_INSTANCES_PER_TASK))
        .total_memories(tasks.saturating_mul(MEMORIES_PER_TASK))
        .total_tables(tasks.saturating_mul(TABLES_PER_TASK))
        .total_stacks(tasks)
        .max_memories_per_component(MEMORIES_PER_TASK)
        .max_tables_per_component(TABLES_PER_TASK)
        .max_core_instances_per_component(CORE_INSTANCES_PER_TASK)
        .max_tables_per_module(TABLES_PER_TASK)
        .table_elements(TABLE_ELEMENTS)
        // Resetting a slot with madvise costs a TLB shootdown on every other core running
        // this process; instead (Linux 6.7+) find the pages a task dirtied and reset up to
        // 256 KiB of them in place, leaving them resident for the slot's next task. That
        // more than tripled the launch rate (BENCHMARKS.md); idle warm slots keep at most
        // this much each.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(64 << 10);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
}

/// The engine configuration of the runner and of the compile worker: they must agree exactly,
/// or the worker's artifacts would not load.
pub(crate) fn engine_config(fuel: bool) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(fuel)
        .epoch_interruption(true)
        .wasm_component_model(true)
        // Command components built from Rust need neither GC nor exceptions, and the workspace
        // builds wasmtime without a collector.
        .gc_support(false);
    config
}

/// The body of the compile worker process: sets its own memory limit, reads a component from
/// stdin (at most `max_input` bytes), compiles it and writes the artifact to stdout.
pub fn run_compile_worker(fuel: bool, max_memory: u64, max_input: u64) -> Result<(), ExecError> {
    #[cfg(unix)]
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::AS, max_memory, max_memory) {
        return Err(ExecError::Engine(format!(
            "cannot limit the compile worker's memory: {e}"
        )));
    }
    #[cfg(not(unix))]
    let _ = max_memory;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(max_input.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ExecError::Engine(format!("reading the component: {e}")))?;
    if bytes.len() as u64 > max_input {
        return Err(ExecError::TooLarge {
            size: bytes.len() as u64,
            max: max_input,
        });
    }
    let engine = Engine::new(&engine_config(fuel))
        .map_err(|e| ExecError::Engine(format!("creating the engine: {e:#}")))?;
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| ExecError::InvalidComponent(format!("{e:#}")))?;
    std::io::stdout()
        .lock()
        .write_all(&artifact)
        .map_err(|e| ExecError::Engine(format!("writing the artifact: {e}")))
}

/// Runs the worker on `bytes`, killing it at `timeout`. Returns the artifact.
pub(crate) fn compile_in_worker(
    worker: &CompileWorker,
    fuel: bool,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let mut cmd = Command::new(&worker.program);
    cmd.args(&worker.args)
        .arg("--max-memory")
        .arg(worker.max_memory_bytes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if fuel {
        cmd.arg("--fuel");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecError::Engine(format!("starting the compile worker: {e}")))?;
    // Feeding and draining on threads: the pipes would otherwise deadlock on large inputs.
    let feeder = child.stdin.take().map(|mut stdin| {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        })
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ExecError::CompileTimeout(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(ExecError::Engine(format!(
                    "waiting for the compile worker: {e}"
                )));
            }
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let artifact = stdout.join().unwrap_or_default();
    let errors = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    if status.success() {
        return Ok(artifact);
    }
    // Rust reports a failed allocation with this line before aborting.
    if errors.contains("memory allocation of") || errors.contains("out of memory") {
        return Err(ExecError::CompileMemory(worker.max_memory_bytes));
    }
    let message = errors
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("error: ").to_string())
        .unwrap_or_else(|| format!("the compile worker exited with {status}"));
    Err(ExecError::InvalidComponent(message))
}

/// Loads an artifact this agent produced (in-process or in its worker).
#[allow(unsafe_code)]
pub(crate) fn load(engine: &Engine, artifact: &[u8]) -> Result<Component, ExecError> {
    // SAFETY: `Component::deserialize` trusts its input to be a wasmtime artifact. Ours come
    // only from `Engine::precompile_component`/`Component::serialize` run by this agent with the
    // same engine configuration, and reach us either straight from the worker's stdout or from
    // a cache file whose embedded sha256 matched; wasmtime itself also checks the header,
    // version and engine compatibility.
    unsafe { Component::deserialize(engine, artifact) }
        .map_err(|e| ExecError::Engine(format!("loading a compiled artifact: {e:#}")))
}

/// Feeds `Hash` output into sha256, to name cache entries by the engine's compatibility hash
/// in a way that is stable across runs (unlike `DefaultHasher`'s seed-free but unspecified
/// algorithm).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// A short key for everything that makes an artifact loadable: wasmtime's version, the engine
/// configuration and the host.
pub(crate) fn engine_key(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// The on-disk artifact cache.
#[derive(Debug)]
pub(crate) struct DiskCache {
    pub(crate) dir: PathBuf,
    pub(crate) engine_key: String,
}

impl DiskCache {
    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_key))
    }

    /// The cached artifact of `digest`, if present and intact; a damaged entry is deleted.
    pub(crate) fn get(&self, engine: &Engine, digest: &[u8; 32]) -> Option<Component> {
        let path = self.path(digest);
        let data = std::fs::read(&path).ok()?;
        let loaded = match data.split_at_checked(32) {
            Some((sum, artifact)) if Sha256::digest(artifact).as_slice() == sum => {
                load(engine, artifact)
            }
            _ => Err(ExecError::Engine("checksum mismatch".to_string())),
        };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping a damaged compile cache entry: {e}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores an artifact; best effort (a failure only costs a recompile later).
    pub(crate) fn put(&self, digest: &[u8; 32], artifact: &[u8]) {
        if let Err(e) = self.try_put(digest, artifact) {
            tracing::warn!(dir = %self.dir.display(), "cannot write the compile cache: {e}");
        }
    }

    fn try_put(&self, digest: &[u8; 32], artifact: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut f = tempfile::NamedTempFile::new_in(&self.dir)?;
        f.write_all(&Sha256::digest(artifact))?;
        f.write_all(artifact)?;
        f.as_file().sync_all()?;
        f.persist(self.path(digest)).map_err(|e| e.error)?;
        Ok(())
    }
}
