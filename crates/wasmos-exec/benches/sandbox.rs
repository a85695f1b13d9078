//! Exec-layer figures for BENCHMARKS.md, each against a baseline measured in the same run:
//! metering overhead (the sandbox vs plain wasmtime without fuel or epochs), CPU-share fairness,
//! and launch rate and latency of a trivial cached component. Run with `cargo xtask bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use wasmos_exec::{Compiled, ExecConfig, Metering, RunRequest, Runner, TaskStatus};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn sample(name: &str) -> Res<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../sample-tasks/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|e| {
        format!(
            "{}: {e} (build the samples with `cargo xtask samples`)",
            path.display()
        )
        .into()
    })
}

struct Plain {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Plain {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Stock wasmtime: same compiler settings, no fuel, no limiter, and no epochs unless `epochs`
/// (then with a deadline that never comes: the cost of the checks alone).
fn plain_pre(bytes: &[u8], epochs: bool) -> Res<CommandPre<Plain>> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .gc_support(false)
        .epoch_interruption(epochs);
    let engine = Engine::new(&config)?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let component = Component::new(&engine, bytes)?;
    Ok(CommandPre::new(linker.instantiate_pre(&component)?)?)
}

async fn run_plain(pre: &CommandPre<Plain>, args: &[&str]) -> Res<Duration> {
    let start = Instant::now();
    let wasi = WasiCtxBuilder::new()
        .args(args)
        .stdout(MemoryOutputPipe::new(1 << 20))
        .build();
    let mut store = Store::new(
        pre.engine(),
        Plain {
            wasi,
            table: ResourceTable::new(),
        },
    );
    store.set_epoch_deadline(u64::MAX);
    let command = pre.instantiate_async(&mut store).await?;
    let result = command.wasi_cli_run().call_run(&mut store).await?;
    if result.is_err() {
        return Err("plain run failed".into());
    }
    Ok(start.elapsed())
}

fn request(args: &[&str], cpu_millis: u64, timeout: Duration) -> RunRequest {
    RunRequest {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cpu_millis,
        mem_bytes: 256 << 20,
        timeout,
        max_output_bytes: 1 << 20,
        truncate_output: false,
        cpu_budget: None,
        stdin: Vec::new(),
        net_allow: Vec::new(),
        egress: Default::default(),
        net_rate: None,
        preopens: Vec::new(),
        disk: None,
        usage: None,
        platform: None,
        burst: None,
    }
}

async fn run_sandbox(
    runner: &Runner,
    compiled: &Compiled,
    req: RunRequest,
) -> (Duration, TaskStatus) {
    let (tx, mut rx) = mpsc::channel(64);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (_kill_tx, kill) = watch::channel(false);
    let start = Instant::now();
    let outcome = runner.run(compiled, req, tx, kill).await;
    let took = start.elapsed();
    let _ = drain.await;
    (took, outcome.status)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// This process's user + system CPU time (Linux only; None elsewhere).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters here.
    Some(Duration::from_millis(ticks * 10))
}

fn median_ratio(mut ratios: Vec<f64>) -> f64 {
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The CPU-bound workloads compared: a sieve (the worst case for interruption checks: a loop
/// of a few instructions), a SHA-256 chain and a JSON parse/serialize round trip.
const WORKLOADS: [&[&str]; 3] = [&["primes", "10000000"], &["hash", "64"], &["json", "20000"]];

/// Each workload through `runners` (the sandbox, in each metering mode) and through plain
/// wasmtime, with and without epoch checks.
async fn metering(runners: &[(&str, &Runner)]) -> Res<()> {
    for args in WORKLOADS {
        let bytes = sample(args[0])?;
        let plain = plain_pre(&bytes, false)?;
        let epochs = plain_pre(&bytes, true)?;
        let mut compiled = Vec::new();
        for (_, runner) in runners {
            compiled.push(runner.compile(&bytes)?);
        }
        let mut baseline = Vec::new();
        let mut epoch_ratios = Vec::new();
        let mut ratios = vec![Vec::new(); runners.len()];
        // Interleaved rounds, so drifts in machine load hit every side alike; the median of
        // the per-round ratios is the figure.
        for _ in 0..15 {
            let plain_took = run_plain(&plain, args).await?.as_secs_f64();
            baseline.push(plain_took);
            epoch_ratios.push(run_plain(&epochs, args).await?.as_secs_f64() / plain_took);
            for (i, (_, runner)) in runners.iter().enumerate() {
                let req = request(args, 1000, Duration::from_secs(60));
                let (took, status) = run_sandbox(runner, &compiled[i], req).await;
                if status.exit_code != Some(0) {
                    return Err(format!("sandboxed {} failed: {status:?}", args[0]).into());
                }
                ratios[i].push(took.as_secs_f64() / plain_took);
            }
        }
        baseline.sort_by(f64::total_cmp);
        let mut line = format!(
            "bench metering: {} (plain wasmtime {:.1} ms): epoch checks alone {:.3}x",
            args.join(" "),
            baseline[baseline.len() / 2] * 1e3,
            median_ratio(epoch_ratios)
        );
        for ((label, _), r) in runners.iter().zip(ratios) {
            line.push_str(&format!(", sandbox {label} {:.3}x", median_ratio(r)));
        }
        println!("{line} (medians of 15 interleaved rounds)");
    }
    Ok(())
}

/// 250m and 750m spinners sharing one worker thread (a 1000m agent), and a 500m spinner alone.
fn fairness(runner: &Runner, label: &str) -> Res<()> {
    let bytes = sample("spin")?;
    let compiled = runner.compile(&bytes)?;
    let one_core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (a, b) = one_core.block_on(async {
        let (r1, c1) = (runner.clone(), compiled.clone());
        let (r2, c2) = (runner.clone(), compiled.clone());
        let small = tokio::spawn(async move {
            run_sandbox(&r1, &c1, request(&["spin"], 250, Duration::from_secs(3))).await
        });
        let big = tokio::spawn(async move {
            run_sandbox(&r2, &c2, request(&["spin"], 750, Duration::from_secs(3))).await
        });
        (small.await, big.await)
    });
    let (a, b) = (a?.1.cpu_ms, b?.1.cpu_ms);
    let share = a as f64 / (a + b) as f64;
    println!(
        "bench fairness ({label}): 250m vs 750m on one core for 3 s: {a} vs {b} core-ms, the 250m task got {:.1}% (target 25% +/- 10% of it)",
        share * 100.0
    );
    one_core.shutdown_background();

    let two_cores = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cpu_before = process_cpu();
    let start = Instant::now();
    let (_, status) = two_cores.block_on(run_sandbox(
        runner,
        &compiled,
        request(&["spin"], 500, Duration::from_secs(3)),
    ));
    let wall = start.elapsed();
    let metered = status.cpu_ms as f64 / wall.as_millis() as f64;
    match (cpu_before, process_cpu()) {
        (Some(before), Some(after)) => println!(
            "bench share ({label}): 500m alone on 2 cores for 3 s: metered {:.2} cores, process CPU {:.2} cores",
            metered,
            (after - before).as_secs_f64() / wall.as_secs_f64()
        ),
        _ => println!(
            "bench share ({label}): 500m alone on 2 cores for 3 s: metered {metered:.2} cores"
        ),
    }
    two_cores.shutdown_background();
    Ok(())
}

async fn launch(runner: &Runner, label: &str) -> Res<()> {
    let bytes = sample("noop")?;
    let compiled = runner.compile(&bytes)?;
    let plain = plain_pre(&bytes, false)?;
    let mut lat = Vec::new();
    let mut plain_lat = Vec::new();
    for _ in 0..500 {
        plain_lat.push(run_plain(&plain, &["noop"]).await?);
        let (took, status) = run_sandbox(
            runner,
            &compiled,
            request(&["noop"], 1000, Duration::from_secs(10)),
        )
        .await;
        if status.exit_code != Some(0) {
            return Err(format!("noop failed: {status:?}").into());
        }
        lat.push(took);
    }
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let (pp50, pp99) = (
        percentile(&mut plain_lat, 0.5),
        percentile(&mut plain_lat, 0.99),
    );
    println!(
        "bench launch latency ({label}): noop instantiate+run p50 {:.0} us p99 {:.0} us; plain wasmtime p50 {:.0} us p99 {:.0} us",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        pp50.as_secs_f64() * 1e6,
        pp99.as_secs_f64() * 1e6
    );
    let n = 5000;
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut failed = 0;
    let mut check = |joined: Option<Result<(Duration, TaskStatus), tokio::task::JoinError>>| {
        if !matches!(joined, Some(Ok((_, ref status))) if status.exit_code == Some(0)) {
            failed += 1;
        }
    };
    for i in 0..n {
        if i >= 64 {
            check(set.join_next().await);
        }
        let (r, c) = (runner.clone(), compiled.clone());
        set.spawn(async move {
            run_sandbox(&r, &c, request(&["noop"], 1000, Duration::from_secs(10))).await
        });
    }
    while let Some(joined) = set.join_next().await {
        check(Some(joined));
    }
    let secs = start.elapsed().as_secs_f64();
    if failed > 0 {
        return Err(format!("{failed} of {n} noop tasks failed").into());
    }
    println!(
        "bench launch rate ({label}): {n} noop tasks, 64 in flight, 2 workers: {:.0} tasks/s",
        n as f64 / secs
    );
    Ok(())
}

/// This process's resident memory (Linux only).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resident memory with 10,000 tasks sleeping at once (each has started and printed before it
/// is counted), on the runner as an agent uses it.
async fn density(runner: &Runner, label: &str) -> Res<()> {
    let tasks: usize = std::env::var("WASMOS_DENSITY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let compiled = runner.compile(&sample("hostile")?)?;
    let before = rss_bytes().unwrap_or(0);
    let (kill_tx, kill) = watch::channel(false);
    let (started_tx, mut started_rx) = mpsc::channel::<()>(tasks);
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..tasks {
        let (r, c, k, started) = (
            runner.clone(),
            compiled.clone(),
            kill.clone(),
            started_tx.clone(),
        );
        set.spawn(async move {
            let (tx, mut rx) = mpsc::channel(4);
            let run = tokio::spawn(async move {
                let mut req = request(&["hostile", "sleep"], 1000, Duration::from_secs(600));
                req.mem_bytes = 16 << 20;
                r.run(&c, req, tx, k).await
            });
            if rx.recv().await.is_some() {
                let _ = started.send(()).await;
            }
            while rx.recv().await.is_some() {}
            run.await
        });
    }
    drop(started_tx);
    for n in 0..tasks {
        if started_rx.recv().await.is_none() {
            let _ = kill_tx.send(true);
            let mut first_failure = None;
            while let Some(done) = set.join_next().await {
                if let Ok(Ok(outcome)) = done
                    && outcome.status.reason != Some(wasmos_proto::Reason::Killed)
                {
                    first_failure.get_or_insert(outcome.status);
                }
            }
            return Err(
                format!("only {n} sleepers started; one ended with {first_failure:?}").into(),
            );
        }
    }
    let ramp = start.elapsed();
    let during = rss_bytes().unwrap_or(0);
    let _ = kill_tx.send(true);
    while let Some(done) = set.join_next().await {
        let status = done??.status;
        if status.reason != Some(wasmos_proto::Reason::Killed) {
            return Err(format!("a sleeper ended with {status:?}").into());
        }
    }
    println!(
        "bench density ({label}): {tasks} sleeping tasks: RSS {:.0} MiB (process before: {:.0} MiB; {:.1} KiB per task), all started in {:.1} s",
        during as f64 / 1048576.0,
        before as f64 / 1048576.0,
        (during.saturating_sub(before)) as f64 / tasks as f64 / 1024.0,
        ramp.as_secs_f64()
    );
    Ok(())
}

/// A loopback listener that reads every connection to its end, forever (the bench's sink).
fn sink() -> Res<u16> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0_u8; 256 << 10];
                while let Ok(1..) = s.read(&mut buf) {}
            });
        }
    });
    Ok(port)
}

/// The bandwidth limiter's cost on a socket-heavy task: `netio send` of 256 MiB to a loopback
/// sink, under a limit too high to ever wait (every read and write still goes through the
/// bucket) against no limit, interleaved; then how close a reachable limit comes to its rate.
async fn bandwidth(runner: &Runner) -> Res<()> {
    let compiled = runner.compile(&sample("netio")?)?;
    let port = sink()?;
    let target = format!("127.0.0.1:{port}");
    let send = |bytes: u64, rate: Option<u64>| {
        let mut req = request(
            &["netio", "send", &target, &bytes.to_string()],
            1000,
            Duration::from_secs(120),
        );
        req.net_allow = vec![wasmos_proto::NetRule {
            host: "127.0.0.1".into(),
            port: Some(port),
        }];
        req.net_rate = rate;
        req
    };
    let bytes = 256_u64 << 20;
    let (mut ratios, mut unlimited) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        let (free, status) = run_sandbox(runner, &compiled, send(bytes, None)).await;
        if status.exit_code != Some(0) {
            return Err(format!("unlimited netio failed: {status:?}").into());
        }
        let (limited, status) = run_sandbox(runner, &compiled, send(bytes, Some(1 << 40))).await;
        if status.exit_code != Some(0) {
            return Err(format!("limited netio failed: {status:?}").into());
        }
        unlimited.push(bytes as f64 / free.as_secs_f64());
        ratios.push(limited.as_secs_f64() / free.as_secs_f64());
    }
    unlimited.sort_by(f64::total_cmp);
    println!(
        "bench bandwidth: netio send 256 MiB over loopback, unlimited {:.0} MiB/s: limiter in the path (1 TiB/s limit) {:.3}x the time (median of 9 interleaved rounds)",
        unlimited[unlimited.len() / 2] / 1048576.0,
        median_ratio(ratios)
    );
    let rate = 32_u64 << 20;
    let (took, status) = run_sandbox(runner, &compiled, send(4 * rate, Some(rate))).await;
    if status.exit_code != Some(0) {
        return Err(format!("limited netio failed: {status:?}").into());
    }
    println!(
        "bench bandwidth: 128 MiB at a 32 MiB/s limit took {:.2} s: {:.3} of the rate",
        took.as_secs_f64(),
        (4 * rate) as f64 / took.as_secs_f64() / rate as f64
    );
    Ok(())
}

fn main() -> Res<()> {
    let runner = Runner::new(ExecConfig::default())?;
    let fuel = Runner::new(ExecConfig {
        metering: Metering::Fuel {
            per_core_second: None,
        },
        ..ExecConfig::default()
    })?;
    println!(
        "bench calibration: {} fuel per core-second",
        fuel.fuel_per_core_second().unwrap_or(0)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // `cargo bench -p wasmos-exec -- NAME...` runs only the named parts.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if want("metering") {
        rt.block_on(metering(&[("cpu-time", &runner), ("fuel", &fuel)]))?;
    }
    if want("fairness") {
        fairness(&runner, "cpu-time")?;
        fairness(&fuel, "fuel")?;
    }
    if want("launch") {
        rt.block_on(launch(&runner, "on-demand"))?;
        let pooled = Runner::new(ExecConfig {
            pool: Some(1000),
            ..ExecConfig::default()
        })?;
        rt.block_on(launch(&pooled, "pooling"))?;
    }
    if want("bandwidth") {
        rt.block_on(bandwidth(&runner))?;
    }
    if want("density") {
        // As an agent runs them: the pooling allocator with a slot for each task.
        let pooled = Runner::new(ExecConfig {
            pool: Some(10_000),
            ..ExecConfig::default()
        })?;
        rt.block_on(density(&pooled, "pooling, 10000 slots"))?;
    }
    Ok(())
}
