//! The runner: one wasmtime engine and WASI linker shared by all tasks, the epoch ticker that keeps
//! running guests interruptible, the compile cache, and the execution of one task under its
//! limits.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::pending;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use wasmos_proto::{OutputStream, Reason, TaskState, TaskStatus};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreContextMut, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::artifact::{self, CompileWorker, DiskCache};
use crate::disk::DiskWatch;
use crate::limits::{MemoryLimiter, Throttle};
use crate::meter::CpuMeter;
use crate::output::Output;
use crate::{
    ExecConfig, ExecError, Metering, RunOutcome, RunRequest, calibrate, validate_component,
};

/// Epoch period: how often a running guest yields to the executor, which bounds how late a kill,
/// a timeout or a throttling pause takes effect.
const TICK: Duration = Duration::from_millis(10);

/// Smallest fuel slice between fuel write-backs: below this the yields themselves would cost
/// more than the work between them.
const MIN_FUEL_SLICE: u64 = 10_000;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Compiled components kept for reuse; agents run few distinct bundles at a time.
const CACHE_ENTRIES: usize = 32;

/// Longest trap message kept in a task status.
const MAX_MESSAGE_CHARS: usize = 400;

/// Runs task components. Cheap to clone: clones share the engine, ticker and cache, and the
/// epoch ticker stops once the last clone is dropped.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    /// Instance slots of the pooling allocator, when it is used.
    pool_slots: Option<u32>,
    linker: Linker<TaskData>,
    /// `Some` when metering by fuel: the rate that converts fuel to core time.
    fuel_per_core_second: Option<u64>,
    max_component_bytes: u64,
    compile_timeout: Duration,
    compile_worker: Option<CompileWorker>,
    disk_cache: Option<DiskCache>,
    cache: Mutex<Cache>,
    /// Dropping this disconnects the ticker thread's channel, which ends it.
    _ticker_stop: std::sync::mpsc::Sender<()>,
}

#[derive(Default)]
struct Cache {
    by_hash: HashMap<[u8; 32], Compiled>,
    order: VecDeque<[u8; 32]>,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("fuel_per_core_second", &self.inner.fuel_per_core_second)
            .field("max_component_bytes", &self.inner.max_component_bytes)
            .field("compile_timeout", &self.inner.compile_timeout)
            .finish_non_exhaustive()
    }
}

/// A component compiled and linked against the runner's WASI, ready to instantiate. Cheap to
/// clone; only usable with the [`Runner`] that produced it.
#[derive(Clone)]
pub struct Compiled {
    pub(crate) inner: Arc<CompiledInner>,
}

pub(crate) struct CompiledInner {
    sha256: String,
    pre: CommandPre<TaskData>,
    /// Whether it imports `wasmos:task/cancellation`: asked to stop, it gets a grace period.
    cancellable: bool,
}

impl Compiled {
    /// Hex sha256 of the component bytes this was compiled from.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &self.inner.sha256)
            .finish_non_exhaustive()
    }
}

/// Everything a task's store holds.
struct TaskData {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimiter,
    /// Charged in nanoseconds of core time.
    throttle: Option<Throttle>,
    cpu: Arc<CpuMeter>,
    fuel: Option<FuelMeter>,
    budget: Option<Duration>,
    /// Set when the epoch callback stopped the task for using up `budget`.
    budget_exhausted: bool,
    disk: Option<DiskWatch>,
    usage: Option<Arc<crate::TaskUsage>>,
    platform: Arc<crate::TaskPlatform>,
    net_limit: Option<crate::bandwidth::NetLimit>,
}

impl crate::bandwidth::HasNetLimit for TaskData {
    fn net_limit(&self) -> Option<&crate::bandwidth::NetLimit> {
        self.net_limit.as_ref()
    }
}

impl crate::platform::HasPlatform for TaskData {
    fn platform(&self) -> &crate::TaskPlatform {
        &self.platform
    }
}

/// Fuel bookkeeping of a task when the runner meters by fuel.
struct FuelMeter {
    /// Fuel put in the store at the start; consumption is this minus what is left.
    start: u64,
    per_core_second: u64,
}

impl TaskData {
    /// Core time to charge the task with, given the fuel left in its store (fuel metering).
    /// Fuel converted to time covers the guest's code deterministically; the thread clock
    /// covers host calls too, so the larger of the two is charged.
    fn charged_ns(&self, fuel_left: Option<u64>) -> u64 {
        let cpu = self.cpu.spent_ns();
        match (&self.fuel, fuel_left) {
            (Some(fuel), Some(left)) => cpu.max(fuel_to_ns(
                fuel.start.saturating_sub(left),
                fuel.per_core_second,
            )),
            _ => cpu,
        }
    }
}

/// The error the epoch callback stops a task with when its CPU budget is used up.
#[derive(Debug, thiserror::Error)]
#[error("CPU budget used up")]
struct BudgetExhausted;

/// The error the epoch callback stops a task with when it is over its disk quota.
#[derive(Debug, thiserror::Error)]
#[error("disk quota exceeded")]
struct DiskQuotaExceeded;

impl WasiView for TaskData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn engine_err(context: &str) -> impl Fn(wasmtime::Error) -> ExecError + '_ {
    move |e| ExecError::Engine(format!("{context}: {e:#}"))
}

/// The engine, with the pooling allocator for `slots` instances if asked. The pool reserves
/// its address space up front (gigabytes per thousand slots); where the OS refuses that much
/// (a lower `ulimit -v`, Wine), fewer slots are tried, halving down to one, and then
/// allocation per instance: an agent that runs fewer tasks at once beats one that cannot start.
fn pooled_engine(fuel: bool, slots: Option<u32>) -> Result<(Engine, Option<u32>), ExecError> {
    let Some(wanted) = slots else {
        let engine = Engine::new(&artifact::engine_config(fuel))
            .map_err(engine_err("creating the engine"))?;
        return Ok((engine, None));
    };
    let mut tried = wanted;
    let mut last = String::new();
    while tried > 0 {
        let mut config = artifact::engine_config(fuel);
        artifact::use_pooling(&mut config, tried);
        match Engine::new(&config) {
            Ok(engine) => {
                if tried < wanted {
                    tracing::warn!(
                        wanted,
                        slots = tried,
                        "the OS would not reserve address space for every task slot ({last}); fewer tasks run at once"
                    );
                }
                return Ok((engine, Some(tried)));
            }
            Err(e) => {
                last = format!("{e:#}");
                tried /= 2;
            }
        }
    }
    tracing::warn!(
        wanted,
        "the OS would not reserve address space for even one pooled task slot ({last}); allocating per task"
    );
    let engine =
        Engine::new(&artifact::engine_config(fuel)).map_err(engine_err("creating the engine"))?;
    Ok((engine, None))
}

impl Runner {
    /// Builds the engine and linker, starts the epoch ticker and, when metering by fuel at an
    /// unknown rate, measures the rate (which blocks for a few hundred milliseconds: call this
    /// at startup or from a blocking context).
    pub fn new(cfg: ExecConfig) -> Result<Runner, ExecError> {
        let fuel = matches!(cfg.metering, Metering::Fuel { .. });
        let (engine, pool_slots) = pooled_engine(fuel, cfg.pool)?;
        let disk_cache = cfg.cache_dir.map(|dir| DiskCache {
            dir,
            engine_key: artifact::engine_key(&engine),
        });

        // All of WASI 0.2; what a task can reach is decided per task by its `WasiCtx`, which
        // grants nothing ambient. `exit-with-code` is stable in the WIT wasmtime 48 ships, so it
        // is linked without `LinkOptions`.
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_err("linking WASI"))?;
        crate::bandwidth::add_to_linker(&mut linker)
            .map_err(engine_err("linking the bandwidth limiter"))?;
        crate::platform::add_to_linker(&mut linker)
            .map_err(engine_err("linking the wasmos:task interfaces"))?;

        let ticker_stop = start_epoch_ticker(&engine)?;

        let fuel_per_core_second = match cfg.metering {
            Metering::CpuTime => None,
            Metering::Fuel {
                per_core_second: Some(rate),
            } => Some(rate.max(1)),
            Metering::Fuel {
                per_core_second: None,
            } => Some(match calibrate::fuel_per_core_second(&engine) {
                Ok(rate) => rate,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        fallback = calibrate::FALLBACK_FUEL_PER_CORE_SECOND,
                        "fuel calibration failed; using the built-in rate"
                    );
                    calibrate::FALLBACK_FUEL_PER_CORE_SECOND
                }
            }),
        };
        tracing::debug!(?fuel_per_core_second, "wasm runner ready");

        Ok(Runner {
            inner: Arc::new(Inner {
                engine,
                pool_slots,
                linker,
                fuel_per_core_second,
                max_component_bytes: cfg.max_component_bytes,
                compile_timeout: cfg.compile_timeout,
                compile_worker: cfg.compile_worker,
                disk_cache,
                cache: Mutex::new(Cache::default()),
                _ticker_stop: ticker_stop,
            }),
        })
    }

    /// How many tasks can be instantiated at once: the pooling allocator's slots, which may be
    /// fewer than asked for where the OS would not reserve the address space for all of them;
    /// `None` when instances are allocated one by one, without a cap.
    pub fn pool_slots(&self) -> Option<u32> {
        self.inner.pool_slots
    }

    /// Fuel one core burns per second (measured at startup or fixed by the config) when
    /// metering by fuel; `None` when metering by CPU time.
    pub fn fuel_per_core_second(&self) -> Option<u64> {
        self.inner.fuel_per_core_second
    }

    /// The component compiled from bytes whose SHA-256 is `digest`, if it is in the cache: a
    /// caller that names a bundle by its hash need not read and hash the bytes again.
    pub fn cached(&self, digest: &[u8; 32]) -> Option<Compiled> {
        self.cache().by_hash.get(digest).cloned()
    }

    /// Validates, compiles and links a component. Blocking (seconds for a large component): call
    /// it from `spawn_blocking`. Compiling the same bytes again returns the cached result.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, ExecError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(hit) = self.cached(&digest) {
            return Ok(hit);
        }
        validate_component(bytes, self.inner.max_component_bytes)?;
        let component = self.compile_or_load(&digest, bytes)?;
        self.link(digest, component)
    }

    /// The component whose SHA-256 is `digest` from the memory or disk cache, where a runner
    /// sharing this one's cache directory (and engine settings) put it; `None` if neither has
    /// it. Blocking.
    pub fn load_cached(&self, digest: &[u8; 32]) -> Result<Option<Compiled>, ExecError> {
        if let Some(hit) = self.cached(digest) {
            return Ok(Some(hit));
        }
        let disk = self.inner.disk_cache.as_ref();
        match disk.and_then(|d| d.get(&self.inner.engine, digest)) {
            Some(component) => self.link(*digest, component).map(Some),
            None => Ok(None),
        }
    }

    /// Links a compiled component and keeps it in the memory cache.
    fn link(&self, digest: [u8; 32], component: Component) -> Result<Compiled, ExecError> {
        // Checked against what the cluster provides by `validate_component` above.
        let imports: Vec<String> = component
            .component_type()
            .imports(&self.inner.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            ExecError::InvalidComponent(format!(
                "cannot be linked against WASI 0.2 and wasmos:task: {}",
                one_line(&format!("{e:#}"))
            ))
        })?;
        let pre = CommandPre::new(instance_pre).map_err(|e| {
            ExecError::InvalidComponent(format!(
                "is not a WASI command (it must export wasi:cli/run): {}",
                one_line(&format!("{e:#}"))
            ))
        })?;
        let compiled = Compiled {
            inner: Arc::new(CompiledInner {
                sha256: hex::encode(digest),
                pre,
                cancellable: crate::platform::imports_interface(&imports, "cancellation"),
            }),
        };

        let mut cache = self.cache();
        if !cache.by_hash.contains_key(&digest) {
            if cache.order.len() >= CACHE_ENTRIES
                && let Some(oldest) = cache.order.pop_front()
            {
                cache.by_hash.remove(&oldest);
            }
            cache.order.push_back(digest);
            cache.by_hash.insert(digest, compiled.clone());
        }
        Ok(compiled)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock cannot leave the map half-updated in a harmful way.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The component from the disk cache, else compiled (in the worker if there is one) and
    /// stored there.
    fn compile_or_load(&self, digest: &[u8; 32], bytes: &[u8]) -> Result<Component, ExecError> {
        let engine = &self.inner.engine;
        let disk = self.inner.disk_cache.as_ref();
        if let Some(component) = disk.and_then(|d| d.get(engine, digest)) {
            return Ok(component);
        }
        if let Some(worker) = &self.inner.compile_worker {
            let artifact = artifact::compile_in_worker(
                worker,
                // The worker's engine must meter fuel exactly when this one does.
                self.inner.fuel_per_core_second.is_some(),
                bytes,
                self.inner.compile_timeout,
            )?;
            let component = artifact::load(engine, &artifact)?;
            if let Some(d) = disk {
                d.put(digest, &artifact);
            }
            return Ok(component);
        }
        let component = self.compile_with_timeout(bytes)?;
        if let Some(d) = disk {
            match component.serialize() {
                Ok(artifact) => d.put(digest, &artifact),
                Err(e) => tracing::warn!("cannot serialize a compiled component: {e:#}"),
            }
        }
        Ok(component)
    }

    /// Cranelift cannot be interrupted, so compilation runs on its own thread and is abandoned
    /// (left to finish and be dropped) when it overruns.
    fn compile_with_timeout(&self, bytes: &[u8]) -> Result<Component, ExecError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let engine = self.inner.engine.clone();
        let bytes = bytes.to_vec();
        std::thread::Builder::new()
            .name("wasmos-compile".to_string())
            .spawn(move || {
                // The receiver is gone only if we already gave up waiting.
                let _ = tx.send(Component::new(&engine, &bytes));
            })
            .map_err(|e| ExecError::Engine(format!("starting a compile thread: {e}")))?;
        match rx.recv_timeout(self.inner.compile_timeout) {
            Ok(Ok(component)) => Ok(component),
            Ok(Err(e)) => Err(ExecError::InvalidComponent(one_line(&format!("{e:#}")))),
            Err(RecvTimeoutError::Timeout) => {
                Err(ExecError::CompileTimeout(self.inner.compile_timeout))
            }
            Err(RecvTimeoutError::Disconnected) => Err(ExecError::Engine(
                "the compile thread died without a result".to_string(),
            )),
        }
    }

    /// Runs `compiled` as a WASI command until it returns, exits, hits a limit, times out or
    /// `kill` becomes true. Output is sent to `output` as it is written, all of it before this
    /// returns (unless killed). Never fails: every ending is a [`TaskStatus`].
    pub async fn run(
        &self,
        compiled: &Compiled,
        req: RunRequest,
        output: mpsc::Sender<(OutputStream, Vec<u8>)>,
        mut kill: watch::Receiver<bool>,
    ) -> RunOutcome {
        let out = Output::new(output, req.max_output_bytes, req.truncate_output);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&req.args)
            .envs(&req.env)
            .stdin(MemoryInputPipe::new(req.stdin))
            .stdout(out.stream(OutputStream::Stdout))
            .stderr(out.stream(OutputStream::Stderr))
            .allow_udp(false);
        for p in &req.preopens {
            let perms = if p.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            if let Err(e) = wasi.preopened_dir(&p.host, &p.guest, perms) {
                let status = failed(
                    Reason::Trap,
                    format!("cannot open the task's directory {}: {e}", p.guest),
                );
                return RunOutcome { status };
            }
        }
        if req.net_allow.is_empty() {
            wasi.allow_tcp(false).allow_ip_name_lookup(false);
        } else {
            let allowed = Arc::new(crate::net::resolve(&req.net_allow).await);
            let policy = req.egress.clone();
            wasi.allow_tcp(true)
                .allow_ip_name_lookup(true)
                .socket_addr_check(move |addr, usage| {
                    let ok = crate::net::permits(&allowed, &policy, addr, usage);
                    Box::pin(async move { ok })
                });
        }
        let fuel = self
            .inner
            .fuel_per_core_second
            .map(|per_core_second| FuelMeter {
                start: match req.cpu_budget {
                    Some(budget) => duration_to_fuel(budget, per_core_second),
                    None => u64::MAX,
                },
                per_core_second,
            });
        let cpu = CpuMeter::new();
        let platform = req.platform.clone().unwrap_or_default();
        let data = TaskData {
            wasi: wasi.build(),
            table: resource_table(),
            memory: MemoryLimiter::with_burst(req.mem_bytes, req.burst.clone()),
            throttle: Throttle::new(NANOS_PER_SECOND, req.cpu_millis, Instant::now()),
            cpu: cpu.clone(),
            fuel,
            budget: req.cpu_budget,
            budget_exhausted: false,
            disk: req.disk.map(|q| DiskWatch::new(q, Instant::now())),
            usage: req.usage.clone(),
            platform: platform.clone(),
            net_limit: req.net_rate.map(crate::bandwidth::NetLimit::new),
        };
        let mut store = Store::new(&self.inner.engine, data);
        store.limiter(|data| &mut data.memory);
        if let Some(fuel) = &store.data().fuel {
            // Compiled code keeps its fuel count in a register and writes it back to the store
            // only at calls, returns and when its injected fuel runs out; epoch ticks do not
            // write it. A tight loop would thus look idle to the throttle and to `fuel_used`
            // after a timeout. Injecting fuel in slices of about a millisecond forces a
            // write-back (and a yield) that often, so the store's count is never staler than
            // one slice.
            let (start, slice) = (
                fuel.start,
                (fuel.per_core_second / 1000).max(MIN_FUEL_SLICE),
            );
            if let Err(e) = store
                .set_fuel(start)
                .and_then(|()| store.fuel_async_yield_interval(Some(slice)))
            {
                let status = failed(Reason::Trap, format!("cannot meter fuel: {e}"));
                return RunOutcome { status };
            }
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(on_epoch);

        platform.set_deadline(req.timeout);
        let grace = match compiled.inner.cancellable {
            true => platform.grace(),
            false => Duration::ZERO,
        };
        let ending = {
            let pre = &compiled.inner.pre;
            let task = cpu.meter(async {
                let command = pre.instantiate_async(&mut store).await?;
                if let Some(usage) = &store.data().usage {
                    usage.record_mem(store.data().memory.peak());
                }
                store.data().platform.mark_running();
                command.wasi_cli_run().call_run(&mut store).await
            });
            tokio::pin!(task);
            let timeout = tokio::time::sleep(req.timeout);
            tokio::pin!(timeout);
            tokio::select! {
                biased;
                () = killed(&mut kill) => match grace.is_zero() || !platform.is_running() {
                    true => Ending::Killed,
                    // It imports `cancellation`: asked to stop, it has its grace period (within
                    // its timeout) to finish cleanly before it is stopped.
                    // Its timeout coming first ends the grace too: it was still killed.
                    false => {
                        platform.request_cancel();
                        tokio::select! {
                            biased;
                            () = &mut timeout => Ending::Killed,
                            () = tokio::time::sleep(grace) => Ending::Killed,
                            r = &mut task => match r {
                                // A trap or a limit while finishing is what it was; returning
                                // or exiting, with any code, is stopping as asked.
                                Err(e) if e.downcast_ref::<I32Exit>().is_none() => {
                                    Ending::Returned(Err(e))
                                }
                                _ => Ending::Stopped,
                            },
                        }
                    }
                },
                () = &mut timeout => Ending::Timeout,
                result = &mut task => Ending::Returned(result),
            }
        };

        let fuel_left = store.get_fuel().ok();
        let fuel_used = match (&store.data().fuel, fuel_left) {
            (Some(fuel), Some(left)) => fuel.start.saturating_sub(left),
            _ => 0,
        };
        let cpu_ns = store.data().charged_ns(fuel_left);
        let peak_mem_bytes = store.data().memory.peak();
        // Writes since the last tick (or by a task that never ticked) are measured here.
        let disk_overrun = store.data_mut().disk.as_mut().and_then(DiskWatch::check);
        let mut status = match ending {
            Ending::Killed => {
                let mut s = TaskStatus::new(TaskState::Killed);
                s.reason = Some(Reason::Killed);
                s.message = Some(match !platform.cancel_requested() {
                    true => "killed".to_string(),
                    false => format!(
                        "killed: asked to stop, it did not end within its {} ms grace period",
                        grace.as_millis()
                    ),
                });
                s
            }
            Ending::Stopped => {
                let mut s = TaskStatus::new(TaskState::Killed);
                s.reason = Some(Reason::Killed);
                s.message =
                    Some("killed: asked to stop, it stopped within its grace period".into());
                s
            }
            Ending::Timeout => failed(
                Reason::Timeout,
                format!(
                    "ran longer than its {} ms wall-clock limit",
                    req.timeout.as_millis()
                ),
            ),
            Ending::Returned(result) => classify(result, store.data(), &out, req.cpu_budget),
        };
        if let Some(overrun) = disk_overrun
            && status.state != TaskState::Killed
        {
            status = failed(Reason::DiskLimit, overrun.message());
        }
        drop(store);

        if status.state != TaskState::Killed {
            tokio::select! {
                biased;
                () = killed(&mut kill) => {}
                () = out.drain() => {}
            }
        }
        let truncated = out.truncated();
        if !truncated.is_empty() && status.message.is_none() {
            status.message = Some(format!("output truncated ({})", truncated.join(", ")));
        }
        status.fuel_used = fuel_used;
        status.results = platform.results();
        status.progress = platform.latest_progress();
        status.cpu_ms = cpu_ns / 1_000_000;
        status.peak_mem_bytes = peak_mem_bytes;
        RunOutcome { status }
    }
}

/// Most WASI handles (open files and directories, streams, sockets, pollables) one task may
/// hold at once. Files and sockets are host descriptors; without a cap one task could exhaust
/// the agent's descriptor limit and break every other task. Past it, opening fails inside the
/// guest like `EMFILE`.
const MAX_HANDLES: usize = 1024;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HANDLES);
    table
}

/// Core-nanoseconds that `fuel` represents at `per_core_second` fuel per core-second.
fn fuel_to_ns(fuel: u64, per_core_second: u64) -> u64 {
    let ns = u128::from(fuel) * u128::from(NANOS_PER_SECOND) / u128::from(per_core_second.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn duration_to_fuel(d: Duration, per_core_second: u64) -> u64 {
    let fuel = d.as_nanos() * u128::from(per_core_second) / u128::from(NANOS_PER_SECOND);
    u64::try_from(fuel).unwrap_or(u64::MAX)
}

enum Ending {
    Killed,
    /// Asked to stop, it ended within its grace period.
    Stopped,
    Timeout,
    Returned(wasmtime::Result<Result<(), ()>>),
}

/// Resolves once `kill` is true; never if its sender is gone without asking for a kill.
async fn killed(kill: &mut watch::Receiver<bool>) {
    if kill.wait_for(|k| *k).await.is_err() {
        pending::<()>().await;
    }
}

/// Called on every epoch tick while the guest runs: stops the task if its CPU budget is used
/// up, and otherwise yields to the executor so kills and timeouts are noticed, sleeping first if
/// the task is ahead of its CPU share.
fn on_epoch(mut cx: StoreContextMut<'_, TaskData>) -> wasmtime::Result<UpdateDeadline> {
    let fuel_left = match cx.data().fuel {
        Some(_) => Some(cx.get_fuel()?),
        None => None,
    };
    let data = cx.data_mut();
    let charged = data.charged_ns(fuel_left);
    if let Some(usage) = &data.usage {
        usage.record(charged, data.memory.peak());
    }
    if data
        .budget
        .is_some_and(|b| u128::from(charged) >= b.as_nanos())
    {
        data.budget_exhausted = true;
        return Err(wasmtime::Error::new(BudgetExhausted));
    }
    if let Some(disk) = data.disk.as_mut()
        && disk.on_tick(Instant::now()).is_some()
    {
        return Err(wasmtime::Error::new(DiskQuotaExceeded));
    }
    let pause = data
        .throttle
        .as_mut()
        .and_then(|t| t.on_tick(charged, Instant::now()));
    Ok(match pause {
        Some(pause) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause))),
        None => UpdateDeadline::Yield(1),
    })
}

fn start_epoch_ticker(engine: &Engine) -> Result<std::sync::mpsc::Sender<()>, ExecError> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("wasmos-epoch".to_string())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map_err(|e| ExecError::Engine(format!("starting the epoch ticker: {e}")))?;
    Ok(stop)
}

fn classify(
    result: wasmtime::Result<Result<(), ()>>,
    data: &TaskData,
    out: &Output,
    cpu_budget: Option<Duration>,
) -> TaskStatus {
    let error = match result {
        Ok(Ok(())) => return finished(0),
        Ok(Err(())) => return finished(1),
        Err(error) => error,
    };
    // The limits are checked first: once one is hit the guest's own reaction (an abort, an exit
    // code) is only a consequence of it.
    if out.exceeded() {
        return failed(
            Reason::OutputLimit,
            format!("wrote more than its {}-byte output limit", out.limit()),
        );
    }
    // An explicit exit is the guest's own decision, even after a refused grow.
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return finished(exit.0);
    }
    if let Some((wanted, limit)) = data.memory.exceeded {
        return failed(
            Reason::MemoryLimit,
            format!("tried to grow its memory to {wanted} bytes, over its {limit}-byte limit"),
        );
    }
    let trap = error.downcast_ref::<Trap>();
    if data.budget_exhausted || trap == Some(&Trap::OutOfFuel) {
        let budget = cpu_budget.unwrap_or_default().as_secs_f64();
        return failed(
            Reason::CpuLimit,
            format!("used up its CPU budget of {budget:.3} core-seconds"),
        );
    }
    match trap {
        Some(trap) => {
            let mut message = trap.to_string();
            if let Some(name) = error
                .downcast_ref::<WasmBacktrace>()
                .and_then(|bt| bt.frames().first())
                .and_then(|frame| frame.func_name())
                .filter(|name| !looks_mangled(name))
            {
                message.push_str(&format!(" in `{name}`"));
            }
            failed(Reason::Trap, one_line(&message))
        }
        // A host error: its root cause says what went wrong; the context wasmtime wraps around
        // it is a backtrace of unnamed functions.
        None => failed(Reason::Trap, one_line(&error.root_cause().to_string())),
    }
}

/// Rust symbol manglings are noise in a one-line status; the guest's stderr has the panic text.
fn looks_mangled(name: &str) -> bool {
    name.starts_with("_ZN") || name.starts_with("_R")
}

fn finished(code: i32) -> TaskStatus {
    let mut s = TaskStatus::new(TaskState::Finished);
    s.exit_code = Some(code);
    s
}

fn failed(reason: Reason, message: String) -> TaskStatus {
    let mut s = TaskStatus::new(TaskState::Failed);
    s.reason = Some(reason);
    s.message = Some(message);
    s
}

/// Collapses a possibly multi-line error (wasmtime appends backtraces) into one bounded line.
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if joined.chars().count() <= MAX_MESSAGE_CHARS {
        joined
    } else {
        let mut cut: String = joined.chars().take(MAX_MESSAGE_CHARS).collect();
        cut.push('…');
        cut
    }
}
