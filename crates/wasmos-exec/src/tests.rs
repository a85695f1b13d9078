//! End-to-end tests of the runner on real wasmtime, with tiny command components written in the
//! component-model text format (the real guest programs are built elsewhere).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use wasmos_proto::{OutputStream, Reason, TaskState, TaskStatus};

use crate::{Compiled, ExecConfig, ExecError, Metering, RunRequest, Runner};

/// A deliberately low rate, below any real core, so fuel-metered CPU shares are measurable in
/// tests.
const TEST_FUEL_RATE: u64 = 1_000_000_000;

/// Most tests meter by fuel, whose counts are exact and so make sharp assertions.
fn runner() -> &'static Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    RUNNER.get_or_init(|| fuel_runner(TEST_FUEL_RATE))
}

fn fuel_runner(rate: u64) -> Runner {
    Runner::new(ExecConfig {
        metering: Metering::Fuel {
            per_core_second: Some(rate),
        },
        ..ExecConfig::default()
    })
    .unwrap()
}

/// The agent's default: metering by the thread CPU clock.
fn cpu_runner() -> &'static Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    RUNNER.get_or_init(|| Runner::new(ExecConfig::default()).unwrap())
}

/// A command component whose `run` is the given core function body (returning 0 for Ok, 1 for
/// Err), with `extra` core-module fields (memories, data, helper functions).
fn command(extra: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m
                {extra}
                (func (export "run") (result i32) (local i32) {body}))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $inst (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $inst)))"#
    ))
    .unwrap()
}

const SPIN: &str = "(loop $l (br $l)) i32.const 0";

fn compile(bytes: &[u8]) -> Compiled {
    runner().compile(bytes).unwrap()
}

fn request() -> RunRequest {
    RunRequest {
        args: vec!["task".to_string()],
        env: vec![],
        cpu_millis: 1000,
        mem_bytes: 64 << 20,
        timeout: Duration::from_secs(20),
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

struct Ran {
    status: TaskStatus,
    output: Vec<(OutputStream, Vec<u8>)>,
    elapsed: Duration,
}

/// Runs on a spawned task, which also proves the run future is `Send + 'static`-compatible.
async fn run_with(compiled: &Compiled, req: RunRequest, kill: watch::Receiver<bool>) -> Ran {
    run_on(runner(), compiled, req, kill).await
}

async fn run_on(
    runner: &'static Runner,
    compiled: &Compiled,
    req: RunRequest,
    kill: watch::Receiver<bool>,
) -> Ran {
    let (tx, mut rx) = mpsc::channel(4);
    let collector = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        chunks
    });
    let compiled = compiled.clone();
    let start = Instant::now();
    let outcome = tokio::spawn(async move { runner.run(&compiled, req, tx, kill).await })
        .await
        .unwrap();
    let elapsed = start.elapsed();
    Ran {
        status: outcome.status,
        output: collector.await.unwrap(),
        elapsed,
    }
}

async fn run(bytes: &[u8], req: RunRequest) -> Ran {
    let (_keep, kill) = watch::channel(false);
    run_with(&compile(bytes), req, kill).await
}

fn assert_failed(status: &TaskStatus, reason: Reason) {
    assert_eq!(status.state, TaskState::Failed, "{status:?}");
    assert_eq!(status.reason, Some(reason), "{status:?}");
    assert!(status.message.is_some(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_from_run_finishes_with_exit_code_0_or_1() {
    let ok = run(&command("", "i32.const 0"), request()).await.status;
    assert_eq!(ok.state, TaskState::Finished);
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.reason, None);
    let err = run(&command("", "i32.const 1"), request()).await.status;
    assert_eq!(err.state, TaskState::Finished);
    assert_eq!(err.exit_code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_with_code_reports_the_code() {
    let bytes = wat::parse_str(
        r#"(component
            (import "wasi:cli/exit@0.2.12" (instance $exit
                (export "exit-with-code" (func (param "status-code" u8)))))
            (core func $exit_code (canon lower (func $exit "exit-with-code")))
            (core instance $host (export "exit-with-code" (func $exit_code)))
            (core module $m
                (import "host" "exit-with-code" (func $x (param i32)))
                (func (export "run") (result i32) i32.const 42 call $x unreachable))
            (core instance $i (instantiate $m (with "host" (instance $host))))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $inst (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $inst)))"#,
    )
    .unwrap();
    let status = run(&bytes, request()).await.status;
    assert_eq!(status.state, TaskState::Finished, "{status:?}");
    assert_eq!(status.exit_code, Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_with_a_one_line_message() {
    let status = run(&command("", "unreachable"), request()).await.status;
    assert_failed(&status, Reason::Trap);
    let message = status.message.unwrap();
    assert!(message.contains("unreachable"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_times_out() {
    let mut req = request();
    req.timeout = Duration::from_millis(300);
    let ran = run(&command("", SPIN), req).await;
    assert_failed(&ran.status, Reason::Timeout);
    assert!(
        ran.elapsed >= Duration::from_millis(300),
        "{:?}",
        ran.elapsed
    );
    assert!(ran.elapsed < Duration::from_secs(3), "{:?}", ran.elapsed);
    assert!(ran.status.fuel_used > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_can_be_killed() {
    let compiled = compile(&command("", SPIN));
    let (kill_tx, kill) = watch::channel(false);
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill_tx.send(true).unwrap();
        // Keep the sender alive until the run has seen the kill.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let ran = run_with(&compiled, request(), kill).await;
    killer.abort();
    assert_eq!(ran.status.state, TaskState::Killed, "{:?}", ran.status);
    assert_eq!(ran.status.reason, Some(Reason::Killed));
    assert!(ran.elapsed < Duration::from_secs(3), "{:?}", ran.elapsed);
    assert!(ran.status.fuel_used > 0);

    // A kill requested before the start stops the task before it does anything.
    let (_kill_tx, kill) = watch::channel(true);
    let ran = run_with(&compiled, request(), kill).await;
    assert_eq!(ran.status.state, TaskState::Killed);
    assert_eq!(ran.status.fuel_used, 0);

    // A dropped kill sender is not a kill.
    let (kill_tx, kill) = watch::channel(false);
    drop(kill_tx);
    let mut req = request();
    req.timeout = Duration::from_millis(100);
    assert_failed(
        &run_with(&compiled, req, kill).await.status,
        Reason::Timeout,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_the_cpu_budget_fails_with_cpu_limit() {
    // At 100M fuel per core-second, 50 ms is 5M fuel, which any real core burns in a fraction
    // of that, so the fuel count (not the clock) stops it, exactly.
    static SLOW: OnceLock<Runner> = OnceLock::new();
    let slow = SLOW.get_or_init(|| fuel_runner(100_000_000));
    let compiled = slow.compile(&command("", SPIN)).unwrap();
    let (_keep, kill) = watch::channel(false);
    let mut req = request();
    req.cpu_budget = Some(Duration::from_millis(50));
    let status = run_on(slow, &compiled, req, kill).await.status;
    assert_failed(&status, Reason::CpuLimit);
    assert_eq!(status.fuel_used, 5_000_000);
    assert!(status.message.unwrap().contains("0.050 core-seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_metering_enforces_budgets_and_shares() {
    let spin = cpu_runner().compile(&command("", SPIN)).unwrap();
    let (_keep, kill) = watch::channel(false);

    let mut req = request();
    req.cpu_budget = Some(Duration::from_millis(200));
    let ran = run_on(cpu_runner(), &spin, req, kill.clone()).await;
    assert_failed(&ran.status, Reason::CpuLimit);
    assert_eq!(ran.status.fuel_used, 0, "no fuel when metering by time");
    // Checked every 10 ms tick, so it stops just past the budget.
    assert!((200..300).contains(&ran.status.cpu_ms), "{:?}", ran.status);
    assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);

    // A quarter core for one second of wall time: about 250 ms of CPU (plus the burst), never
    // a whole second.
    let mut req = request();
    req.cpu_millis = 250;
    req.timeout = Duration::from_secs(1);
    let ran = run_on(cpu_runner(), &spin, req, kill).await;
    assert_failed(&ran.status, Reason::Timeout);
    assert!((100..450).contains(&ran.status.cpu_ms), "{:?}", ran.status);
}

/// Calls `wasi:clocks/monotonic-clock.now` in an endless loop: almost no wasm, all host calls.
fn clock_poller() -> Vec<u8> {
    wat::parse_str(
        r#"(component
            (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
                (export "now" (func (result u64)))))
            (core func $now (canon lower (func $clock "now")))
            (core instance $host (export "now" (func $now)))
            (core module $m
                (import "host" "now" (func $now (result i64)))
                (func (export "run") (result i32) (loop $l call $now drop br $l) i32.const 0))
            (core instance $i (instantiate $m (with "host" (instance $host))))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $inst (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $inst)))"#,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spent_in_host_calls_counts_against_the_budget_under_fuel_metering() {
    // At an absurd fuel rate the guest's own code costs next to nothing in core time: only the
    // host time the thread clock sees can use up the budget.
    static FAST: OnceLock<Runner> = OnceLock::new();
    let fast = FAST.get_or_init(|| fuel_runner(1 << 60));
    let compiled = fast.compile(&clock_poller()).unwrap();
    let (_keep, kill) = watch::channel(false);
    let mut req = request();
    req.cpu_budget = Some(Duration::from_millis(200));
    req.timeout = Duration::from_secs(10);
    let ran = run_on(fast, &compiled, req, kill).await;
    assert_failed(&ran.status, Reason::CpuLimit);
    assert!(ran.status.cpu_ms >= 200, "{:?}", ran.status);
    assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);
}

/// Counts down from `n`: 5 fuel per iteration (local.get, i32.const, i32.sub, local.tee, br_if).
fn countdown(n: u32) -> Vec<u8> {
    command(
        "",
        &format!(
            "i32.const {n} local.set 0
             (loop $l local.get 0 i32.const 1 i32.sub local.tee 0 br_if $l)
             i32.const 0"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_used_counts_the_work_done() {
    let status = run(&countdown(1_000_000), request()).await.status;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    assert!(
        (5_000_000..5_000_100).contains(&status.fuel_used),
        "{}",
        status.fuel_used
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_share_throttles_the_task() {
    // 400M fuel: 0.4 s of a whole (test-rate) core, well under 0.1 s on a real one.
    let bytes = countdown(80_000_000);
    let full = run(&bytes, request()).await;
    assert_eq!(full.status.exit_code, Some(0), "{:?}", full.status);
    // Core-time is fuel at the runner's rate: 400M fuel at 1G/s is about 400 ms (the real CPU
    // is less, at any real core's rate, so the fuel figure is the one charged).
    let expected = full.status.fuel_used * 1000 / TEST_FUEL_RATE;
    assert_eq!(full.status.cpu_ms, expected, "{:?}", full.status);
    assert!((350..=450).contains(&expected), "{:?}", full.status);

    // Half a core earns 500M fuel/s: 400M takes 0.8 s, less the 0.1 s burst allowance.
    let mut req = request();
    req.cpu_millis = 500;
    let half = run(&bytes, req).await;
    assert_eq!(half.status.exit_code, Some(0), "{:?}", half.status);
    assert!(
        half.elapsed >= Duration::from_millis(650),
        "{:?}",
        half.elapsed
    );
    assert!(half.elapsed < Duration::from_secs(3), "{:?}", half.elapsed);
    assert!(
        full.elapsed < half.elapsed,
        "{:?} vs {:?}",
        full.elapsed,
        half.elapsed
    );
    assert_eq!(half.status.fuel_used, full.status.fuel_used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_fails_with_memory_limit() {
    // Grows 1 MiB at a time until refused, then traps the way an allocator aborts.
    let hog = command(
        "(memory 1)",
        "(loop $l i32.const 16 memory.grow i32.const -1 i32.ne br_if $l) unreachable",
    );
    let mut req = request();
    req.mem_bytes = 8 << 20;
    let ran = run(&hog, req).await;
    assert_failed(&ran.status, Reason::MemoryLimit);
    assert!(ran.elapsed < Duration::from_secs(2), "{:?}", ran.elapsed);
    // The peak is what was granted: everything up to the refused grow, never past the cap.
    let peak = ran.status.peak_mem_bytes;
    assert!(peak > (6 << 20) && peak <= 8 << 20, "peak {peak}");

    // An initial memory over the limit fails at instantiation, with the same reason.
    let mut req = request();
    req.mem_bytes = 8 << 20;
    let big = command("(memory 200)", "i32.const 0");
    assert_failed(&run(&big, req).await.status, Reason::MemoryLimit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burstable_task_grows_past_its_request_only_while_the_agent_can_lend() {
    let hog = command(
        "(memory 1)",
        "(loop $l i32.const 16 memory.grow i32.const -1 i32.ne br_if $l) unreachable",
    );
    let burstable = |pool: &std::sync::Arc<crate::MemoryPool>| {
        let mut req = request();
        req.mem_bytes = 32 << 20;
        req.burst = Some(crate::Burst {
            request_bytes: 4 << 20,
            pool: pool.clone(),
        });
        req
    };
    // 16 MiB to lend: the task gets its 4 MiB request plus those 16, not its 32 MiB limit.
    let pool = crate::MemoryPool::new(16 << 20);
    let ran = run(&hog, burstable(&pool)).await;
    assert_failed(&ran.status, Reason::MemoryLimit);
    let peak = ran.status.peak_mem_bytes;
    assert!(peak > (18 << 20) && peak <= 20 << 20, "peak {peak}");
    // What it borrowed is back in the pool once it has ended.
    assert_eq!(pool.free(), 16 << 20);
    // With plenty to lend it reaches its limit, and no further.
    let pool = crate::MemoryPool::new(1 << 30);
    let ran = run(&hog, burstable(&pool)).await;
    let peak = ran.status.peak_mem_bytes;
    assert!(peak > (30 << 20) && peak <= 32 << 20, "peak {peak}");
    // Nothing to lend (requests already exceed the agent's memory): only the request.
    let pool = crate::MemoryPool::new(0);
    pool.reserve(4 << 20);
    let ran = run(&hog, burstable(&pool)).await;
    assert!(ran.status.peak_mem_bytes <= 4 << 20, "{:?}", ran.status);
    assert_eq!(pool.free(), -(4 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grow_fails_in_the_guest_which_may_carry_on() {
    // memory.grow returns -1 over the limit; this guest notices and returns normally.
    let careful = command(
        "(memory 1)",
        "i32.const 1000 memory.grow i32.const -1 i32.eq (if (then i32.const 0 return)) unreachable",
    );
    let mut req = request();
    req.mem_bytes = 8 << 20;
    let status = run(&careful, req).await.status;
    assert_eq!(status.state, TaskState::Finished, "{status:?}");
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.peak_mem_bytes, 64 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_growth_counts_against_the_memory_limit() {
    // 100k funcref elements at a time: 800 KB of host memory each, 8 MiB cap.
    let bomb = command(
        "(table 1 funcref)",
        "(loop $l ref.null func i32.const 100000 table.grow i32.const -1 i32.ne br_if $l)
         unreachable",
    );
    let mut req = request();
    req.mem_bytes = 8 << 20;
    let ran = run(&bomb, req).await;
    assert_failed(&ran.status, Reason::MemoryLimit);
    assert!(ran.status.peak_mem_bytes <= 8 << 20, "{:?}", ran.status);
    assert!(ran.status.peak_mem_bytes > 6 << 20, "{:?}", ran.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guests_own_memory_maximum_is_not_a_limit_failure() {
    let capped = command(
        "(memory 1 4)",
        "(loop $l i32.const 1 memory.grow i32.const -1 i32.ne br_if $l) i32.const 0",
    );
    let status = run(&capped, request()).await.status;
    assert_eq!(status.state, TaskState::Finished, "{status:?}");
    assert_eq!(status.exit_code, Some(0));
}

/// Writes `times` copies of a 15-byte line to stdout with WASI 0.2, returning 1 if a write
/// reports an error.
fn printer(times: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (import "wasi:io/error@0.2.0" (instance $error
                (export "error" (type (sub resource)))))
            (alias export $error "error" (type $error_t))
            (import "wasi:io/streams@0.2.0" (instance $streams
                (export "output-stream" (type $os (sub resource)))
                (alias outer 1 $error_t (type $e_outer))
                (export "error" (type $e (eq $e_outer)))
                (type $se (variant (case "last-operation-failed" (own $e)) (case "closed")))
                (export "stream-error" (type $se_t (eq $se)))
                (export "[method]output-stream.blocking-write-and-flush"
                    (func (param "self" (borrow $os)) (param "contents" (list u8))
                          (result (result (error $se_t)))))))
            (alias export $streams "output-stream" (type $os_t))
            (import "wasi:cli/stdout@0.2.0" (instance $stdout
                (alias outer 1 $os_t (type $os_outer))
                (export "output-stream" (type $os (eq $os_outer)))
                (export "get-stdout" (func (result (own $os))))))
            (core module $mem (memory (export "mem") 1))
            (core instance $mem_i (instantiate $mem))
            (alias core export $mem_i "mem" (core memory $memory))
            (core func $get (canon lower (func $stdout "get-stdout")))
            (core func $write (canon lower
                (func $streams "[method]output-stream.blocking-write-and-flush")
                (memory $memory)))
            (core instance $host
                (export "mem" (memory $memory))
                (export "get-stdout" (func $get))
                (export "write" (func $write)))
            (core module $m
                (import "host" "mem" (memory 1))
                (import "host" "get-stdout" (func $get (result i32)))
                (import "host" "write" (func $write (param i32 i32 i32 i32)))
                (data (i32.const 16) "hello from wat\n")
                (func (export "run") (result i32) (local $out i32) (local $n i32)
                    call $get
                    local.set $out
                    (loop $l
                        local.get $n
                        i32.const {times}
                        i32.ge_u
                        (if (then i32.const 0 return))
                        local.get $out i32.const 16 i32.const 15 i32.const 64 call $write
                        (if (i32.load8_u (i32.const 64)) (then i32.const 1 return))
                        local.get $n i32.const 1 i32.add local.set $n
                        br $l)
                    unreachable))
            (core instance $i (instantiate $m (with "host" (instance $host))))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $inst (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $inst)))"#
    ))
    .unwrap()
}

fn stdout_text(output: &[(OutputStream, Vec<u8>)]) -> String {
    let mut text = Vec::new();
    for (stream, data) in output {
        assert_eq!(*stream, OutputStream::Stdout);
        text.extend_from_slice(data);
    }
    String::from_utf8(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_forwarded_in_full() {
    // More lines than the 4-slot channel holds: the guest must wait for the consumer, not lose
    // output.
    let ran = run(&printer(50), request()).await;
    assert_eq!(ran.status.exit_code, Some(0), "{:?}", ran.status);
    assert_eq!(stdout_text(&ran.output), "hello from wat\n".repeat(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_fails_with_output_limit() {
    let mut req = request();
    req.max_output_bytes = 40;
    let ran = run(&printer(10), req).await;
    assert_failed(&ran.status, Reason::OutputLimit);
    let text = stdout_text(&ran.output);
    assert_eq!(text, "hello from wat\n".repeat(3)[..40]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_truncated_when_asked_and_the_task_finishes() {
    let mut req = request();
    req.max_output_bytes = 40;
    req.truncate_output = true;
    let ran = run(&printer(10), req).await;
    assert_eq!(ran.status.exit_code, Some(0), "{:?}", ran.status);
    assert_eq!(
        ran.status.message.as_deref(),
        Some("output truncated (stdout)")
    );
    let text = stdout_text(&ran.output);
    let expected = format!(
        "{}\n[wasmos: stdout truncated after 40 bytes]\n",
        &"hello from wat\n".repeat(3)[..40]
    );
    assert_eq!(text, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_rejects_what_it_cannot_run() {
    let r = runner();
    let invalid = |bytes: &[u8]| match r.compile(bytes) {
        Err(ExecError::InvalidComponent(m)) => m,
        other => panic!("expected InvalidComponent, got {other:?}"),
    };
    assert!(invalid(b"garbage").contains("bad magic"));
    assert!(invalid(&wat::parse_str("(module)").unwrap()).contains("core WebAssembly module"));
    let no_run = invalid(&wat::parse_str("(component)").unwrap());
    assert!(no_run.contains("wasi:cli/run"), "{no_run}");
    let unknown_import = invalid(
        &wat::parse_str(
            r#"(component (import "acme:rockets/launch@1.0.0" (instance
                (export "fire" (func)))))"#,
        )
        .unwrap(),
    );
    assert!(
        unknown_import.contains("acme:rockets/launch"),
        "{unknown_import}"
    );

    let small = Runner::new(ExecConfig {
        max_component_bytes: 16,
        ..ExecConfig::default()
    })
    .unwrap();
    assert!(matches!(
        small.compile(&command("", "i32.const 0")),
        Err(ExecError::TooLarge { max: 16, .. })
    ));
}

#[test]
fn compiling_the_same_bytes_twice_hits_the_cache() {
    let bytes = command("", "i32.const 7 drop i32.const 0");
    let a = runner().compile(&bytes).unwrap();
    let b = runner().compile(&bytes).unwrap();
    assert!(Arc::ptr_eq(&a.inner, &b.inner));
    assert_eq!(a.sha256().len(), 64);
    let other = runner().compile(&command("", "i32.const 1")).unwrap();
    assert_ne!(a.sha256(), other.sha256());
}

#[test]
fn calibration_measures_a_plausible_rate() {
    let runner = Runner::new(ExecConfig {
        metering: Metering::Fuel {
            per_core_second: None,
        },
        ..ExecConfig::default()
    })
    .unwrap();
    assert_eq!(cpu_runner().fuel_per_core_second(), None);
    let rate = runner.fuel_per_core_second().unwrap();
    // Any machine that can run the tests burns between 10 million and 100 billion operators
    // per second.
    assert!((10_000_000..100_000_000_000).contains(&rate), "{rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_artifacts_are_cached_on_disk_and_damaged_entries_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let with_cache = || {
        Runner::new(ExecConfig {
            cache_dir: Some(dir.path().to_path_buf()),
            ..ExecConfig::default()
        })
        .unwrap()
    };
    let ok = command("", "i32.const 0");
    let err = command("", "i32.const 1");
    let first = with_cache();
    first.compile(&ok).unwrap();
    first.compile(&err).unwrap();
    let entry = |bytes: &[u8]| {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&sha))
            .unwrap()
    };
    let (ok_entry, err_entry) = (entry(&ok), entry(&err));

    // A fresh runner (as after a restart) loads from disk instead of compiling: swapping the
    // two entries makes `ok` behave like `err`, which only the cache could cause.
    let ok_artifact = std::fs::read(&ok_entry).unwrap();
    std::fs::copy(&err_entry, &ok_entry).unwrap();
    let runner: &'static Runner = Box::leak(Box::new(with_cache()));
    let (_keep, kill) = watch::channel(false);
    let compiled = runner.compile(&ok).unwrap();
    let status = run_on(runner, &compiled, request(), kill.clone())
        .await
        .status;
    assert_eq!(status.exit_code, Some(1), "{status:?}");

    // A damaged entry (bad checksum) is dropped and rebuilt from the component.
    let mut damaged = ok_artifact.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&ok_entry, &damaged).unwrap();
    let runner: &'static Runner = Box::leak(Box::new(with_cache()));
    let compiled = runner.compile(&ok).unwrap();
    let status = run_on(runner, &compiled, request(), kill).await.status;
    assert_eq!(status.exit_code, Some(0), "{status:?}");
    assert_eq!(std::fs::read(&ok_entry).unwrap(), ok_artifact);
}
