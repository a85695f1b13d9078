//! End-to-end figures, ignored by default; `cargo xtask bench` runs them and prints them:
//! latency of `wasmos run hello.wasm` (a cached bundle, median of 20) as a ratio to `wasmos
//! agent list` (same process start, config load and QUIC + mTLS handshake, no task) run in the
//! same loop; and the resident memory of a real `wasmos agent` process, idle and with 10,000
//! sleeping tasks (`WASMOS_DENSITY_TASKS=N` changes the count).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmos_client::{Client, ConnectOptions};
use wasmos_net::Credentials;
use wasmos_proto::{ClientRequest, ClientResponse, TaskSpec};
use wasmos_tests::{DevCluster, KillOnDrop, rss_kib, sample, text, wasmos_bin, wasmos_cmd};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn run_hello_latency() {
    let c = DevCluster::start(1).unwrap();
    // Warm-up: uploads the bundle and compiles it once.
    assert!(c.run(&[], "hello", &[]).unwrap().status.success());
    let (mut runs, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        assert!(c.cli(&["agent", "list"]).unwrap().status.success());
        baseline.push(t.elapsed());
        let t = Instant::now();
        assert!(c.run(&[], "hello", &[]).unwrap().status.success());
        runs.push(t.elapsed());
    }
    let (run, base) = (median(runs), median(baseline));
    println!(
        "bench run_hello: median {:.1} ms over 20 runs (cached bundle)",
        run.as_secs_f64() * 1e3
    );
    println!(
        "bench baseline agent_list: median {:.1} ms",
        base.as_secs_f64() * 1e3
    );
    println!(
        "bench ratio run_hello / agent_list: {:.2}",
        run.as_secs_f64() / base.as_secs_f64()
    );
}

/// The p-th percentile (0-100) of `v`, nearest rank.
fn percentile(mut v: Vec<Duration>, p: usize) -> Duration {
    v.sort();
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn failover_latency() {
    let runs: usize = std::env::var("WASMOS_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let g = DevCluster::start_with(2, &["--masters", "3"]).unwrap();
    // What a user waits for: `wasmos run` attached, which exits once the task has finished
    // and its output is printed (the agents must have found the new leader by then).
    let run = || {
        let out = g.run(&[], "hello", &["x"]).unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("hello"), "{}", text(&out.stdout));
    };
    // Warm-up: uploads the bundle and compiles it on the agents.
    run();
    run();
    let (mut failovers, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        run();
        baseline.push(t.elapsed());
        let (leader, _) = g.leader(None).unwrap();
        let pid = g.master_pid(leader).unwrap();
        wasmos_tests::kill_dash_nine(pid);
        let t = Instant::now();
        run();
        failovers.push(t.elapsed());
        g.wait_master_back(leader, pid).unwrap();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99, max) = (
        percentile(failovers.clone(), 50),
        percentile(failovers.clone(), 99),
        percentile(failovers, 100),
    );
    let base = median(baseline);
    println!(
        "bench failover: kill -9 of the leader to a `wasmos run hello.wasm` finished, {runs} runs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(p50),
        ms(p99),
        ms(max)
    );
    println!(
        "bench baseline the same run without failover: median {:.0} ms",
        ms(base)
    );
    println!(
        "bench ratio failover p50 / run: {:.1}",
        p50.as_secs_f64() / base.as_secs_f64()
    );
}

/// Concurrent client connections of the throughput benchmark.
const CLIENTS: usize = 4;

/// Submissions per second through the leader of a `wasmos dev --masters N` group whose one
/// agent is kept busy, so every submission waits and costs exactly one raft write.
fn submit_rate(masters: u32, n: usize, flags: &[&str]) -> f64 {
    let masters = masters.to_string();
    let mut all = vec!["--masters", &masters, "--agent-cpu", "1"];
    all.extend(flags);
    let g = DevCluster::start_with(1, &all).unwrap();
    let masters: u32 = masters.parse().unwrap();
    let out = g
        .run(
            &["-d", "--cpu", "1", "--timeout", "1h"],
            "hostile",
            &["sleep"],
        )
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = g.json(&["task", "show", "t-1", "-o", "json"]).unwrap();
    let spec: TaskSpec = serde_json::from_value(shown["spec"].clone()).unwrap();
    // Every submission waits, so the role's ceiling on tasks not yet ended must admit them all.
    let ceiling = (n + 10).to_string();
    let out = g
        .cli(&["role", "set", "default", "--max-tasks", &ceiling])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let master = if masters == 1 {
        g.master_addr()
    } else {
        let (leader, st) = g.leader(None).unwrap();
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == leader)
            .unwrap()["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    runtime.block_on(submit_many(g.dir.path(), master, spec, n, 96, CLIENTS));
    let rate = n as f64 / started.elapsed().as_secs_f64();
    // Every submission was recorded: the last id exists (a full listing of this many tasks
    // exceeds a message).
    let last = format!("t-{}", n + 1);
    let shown = g.json(&["task", "show", &last, "-o", "json"]).unwrap();
    assert_eq!(shown["status"]["state"], "Staging", "{shown}");
    rate
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn replicated_write_throughput() {
    let n: usize = std::env::var("WASMOS_THROUGHPUT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // WASMOS_THROUGHPUT_MASTERS=1 or 3 runs one side only.
    let only = std::env::var("WASMOS_THROUGHPUT_MASTERS").ok();
    let single = if only.as_deref() == Some("3") {
        f64::NAN
    } else {
        submit_rate(1, n, &[])
    };
    let three = if only.as_deref() == Some("1") {
        f64::NAN
    } else {
        submit_rate(3, n, &[])
    };
    println!(
        "bench submissions through 1 master: {single:.0}/s ({n} tasks, {CLIENTS} clients with 96 in flight each)"
    );
    println!("bench submissions through the leader of 3 masters: {three:.0}/s");
    println!("bench ratio 3 masters / 1 master: {:.2}", three / single);
}

/// What the audit log costs replicated submissions: the leader of three masters takes the same
/// submissions with the log on (each submission's entry rides in its raft entry) and off
/// (`--no-audit`), alternating A B B A so drift hits both.
#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn audit_overhead_on_submissions() {
    let n: usize = std::env::var("WASMOS_AUDIT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for audited in [true, false, false, true] {
        let rate = submit_rate(3, n, if audited { &[] } else { &["--no-audit"] });
        println!(
            "bench submissions with the audit log {}: {rate:.0}/s",
            if audited { "on" } else { "off" }
        );
        if audited {
            on.push(rate);
        } else {
            off.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "bench ratio time per submission, audit on / off: {:.3} ({n} tasks per run, {CLIENTS} clients with 96 in flight each)",
        mean(&off) / mean(&on)
    );
}

/// A daemon (`wasmos master` or `wasmos agent`) that is killed when dropped.
fn daemon(args: &[&str], log: &Path) -> KillOnDrop {
    let child = Command::new(wasmos_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Submits `n` copies of `spec` over `clients` connections (as many clients would), each with
/// `in_flight` requests at a time (QUIC allows 100 streams at once).
async fn submit_many(
    dir: &Path,
    master: std::net::SocketAddr,
    spec: TaskSpec,
    n: usize,
    in_flight: usize,
    clients: usize,
) {
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let share = n / clients + usize::from(c < n % clients);
        let (dir, spec) = (dir.to_path_buf(), spec.clone());
        set.spawn(async move { submit_on_one(&dir, master, spec, share, in_flight).await });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
}

async fn submit_on_one(
    dir: &Path,
    master: std::net::SocketAddr,
    spec: TaskSpec,
    n: usize,
    in_flight: usize,
) {
    let read = |f: &str| std::fs::read_to_string(dir.join("pki").join(f)).unwrap();
    let creds = Credentials::from_pem(
        &read("ca.pem"),
        &read("operator.pem"),
        &read("operator.key"),
    )
    .unwrap();
    let client = std::sync::Arc::new(
        Client::connect_to(&creds, &[master], ConnectOptions::default())
            .await
            .unwrap(),
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        if i >= in_flight {
            set.join_next().await.unwrap().unwrap();
        }
        let (client, spec) = (client.clone(), spec.clone());
        set.spawn(async move {
            // No resubmission key: each copy is a new task, and the figure is the write's.
            let answer = client
                .request(ClientRequest::SubmitTask { spec, key: None })
                .await;
            assert!(
                matches!(answer, Ok(ClientResponse::Submitted { .. })),
                "{answer:?}"
            );
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn agent_density() {
    let n: usize = std::env::var("WASMOS_DENSITY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // WASMOS_DENSITY_AGENTS=5 WASMOS_DENSITY_TASKS=50000: the issue's 50,000 over 5 agents.
    let agents: usize = std::env::var("WASMOS_DENSITY_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_agent = n.div_ceil(agents);
    // A dev cluster only to mint the certificates and client config; then a master and the
    // agents as processes of their own, so each agent's memory is its own.
    let mut dev = DevCluster::start(agents as u32).unwrap();
    dev.kill_hard().unwrap();
    let dir = dev.dir.path();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let master: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let pki = |f: &str| dir.join("pki").join(f).display().to_string();
    let _m = daemon(
        &[
            "master",
            "--data-dir",
            &dir.join("m1").display().to_string(),
            "--listen",
            &master.to_string(),
            "--ca",
            &pki("ca.pem"),
            "--cert",
            &pki("master.pem"),
            "--key",
            &pki("master.key"),
        ],
        &dir.join("master.log"),
    );
    let daemons: Vec<KillOnDrop> = (1..=agents)
        .map(|i| {
            daemon(
                &[
                    "agent",
                    "--master",
                    &master.to_string(),
                    "--ca",
                    &pki("ca.pem"),
                    "--cert",
                    &pki(&format!("agent-{i}.pem")),
                    "--key",
                    &pki(&format!("agent-{i}.key")),
                    "--work-dir",
                    &dir.join(format!("a{i}")).display().to_string(),
                    // Room for one more than its share: the first real run, and a minimum offer
                    // (10m, 32 MiB) so the last task is offered wherever it lands.
                    "--cpu",
                    &format!("{}m", per_agent + 10),
                    "--mem",
                    &format!("{}MiB", per_agent * 4 + 32),
                    "--disk",
                    &format!("{}MiB", per_agent + 32),
                    "--max-tasks",
                    &(per_agent + 1).to_string(),
                ],
                &dir.join(format!("agent-{i}.log")),
            )
        })
        .collect();
    let rss = || -> u64 {
        daemons
            .iter()
            .map(|d| rss_kib(d.0.id()).expect("an agent's /proc status"))
            .sum()
    };
    let config = dir.join("client.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    let toml: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("master") {
                format!("master = \"{master}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&config, toml).unwrap();
    let cli = |args: &[&str]| wasmos_cmd(&config, args).output().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while text(&cli(&["agent", "list"]).stdout)
        .matches("active")
        .count()
        < agents
    {
        assert!(Instant::now() < deadline, "the agents did not register");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let fresh = rss();
    // One real run uploads the bundle and gives a spec to copy.
    let mut cmd = wasmos_cmd(&config, &["run", "--cpu", "1m", "--mem", "4MiB"]);
    let out = cmd
        .arg(sample("hostile"))
        .args(["--", "env"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss();

    let shown = cli(&["task", "show", "t-1", "-o", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let mut spec: TaskSpec = serde_json::from_value(info["spec"].clone()).unwrap();
    spec.args = vec!["sleep".to_string()];
    spec.timeout_ms = 3_600_000;
    spec.resources.cpu_millis = 1;
    spec.resources.mem_bytes = 4 << 20;
    spec.resources.disk_bytes = 1 << 20;
    // The role's ceiling on tasks not yet ended (10,000 by default) must admit them all.
    let out = cli(&[
        "role",
        "set",
        "default",
        "--max-tasks",
        &(n + 10).to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = Instant::now();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(submit_many(dir, master, spec, n, 96, CLIENTS));
    let submitted = started.elapsed();
    // Wait until no copy waits or starts any more (a cheap question, one task at most), then
    // check that every copy runs (and has had a moment to reach its sleep).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let waiting = cli(&[
            "task",
            "list",
            "--state",
            "staging,starting",
            "--limit",
            "1",
            "-o",
            "json",
        ]);
        let waiting: serde_json::Value = serde_json::from_slice(&waiting.stdout).unwrap();
        if waiting.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks still waiting after 600 s: {waiting}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let all_running = started.elapsed();
    let list = cli(&["task", "list", "--state", "running", "-o", "json"]);
    let tasks: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let running = wasmos_tests::count_in_state(&tasks, "Running");
    assert_eq!(running, n, "only {running} of {n} tasks running");
    std::thread::sleep(Duration::from_secs(3));
    let loaded = rss();
    println!(
        "bench agent_density: {agents} agent(s), RSS of all {:.1} MiB registered, {:.1} MiB after one task; with {n} sleeping tasks {:.0} MiB ({:.1} KiB per task, {:.1}x idle)",
        fresh as f64 / 1024.0,
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        (loaded - idle) as f64 / n as f64,
        loaded as f64 / idle as f64
    );
    println!(
        "bench agent_density: {n} submissions over {agents} agent(s) acknowledged in {:.1} s, all running after {:.1} s",
        submitted.as_secs_f64(),
        all_running.as_secs_f64()
    );
}

/// Word count over 100 MB as a map-reduce job on a dev cluster (2 agents): wall time from
/// submission to the end, and tasks per second; against the same count done natively in this
/// process, single-threaded.
#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn wordcount_100mb() {
    let mb: usize = std::env::var("WASMOS_WORDCOUNT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let (maps, reducers) = (40usize, 8usize);
    let dir = tempfile::tempdir().unwrap();
    let files = wasmos_tests::write_corpus(dir.path(), maps, mb << 20);
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-tasks/target/wasm32-wasip2/release/wordcount.wasm");
    let job = format!(
        r#"
name = "wordcount-{mb}mb"
[[group]]
name = "map"
bundle = "{wasm}"
inputs = ["part-*.txt"]
args = ["map", "--reducers", "{reducers}", "--out", "/out", "/in/input"]
cpu = "1"
mem = "256MiB"
disk = "64MiB"
timeout = "10m"
[[group]]
name = "reduce"
bundle = "{wasm}"
depends_on = ["map"]
count = {reducers}
input_pattern = "part-{{index}}"
args = ["reduce", "--part", "{{index}}", "--out", "/out", "/in/map"]
cpu = "1"
mem = "256MiB"
timeout = "10m"
"#,
        wasm = wasm.display()
    );
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, job).unwrap();
    let c = DevCluster::start_with(2, &["--agent-cpu", "2", "--agent-mem", "4GiB"]).unwrap();
    // Warm-up: the bundle uploaded and compiled on both agents.
    let _ = c.run(&[], "wordcount", &["help"]);
    let t = Instant::now();
    let out = c
        .cli(&["job", "submit", job_file.to_str().unwrap(), "--wait"])
        .unwrap();
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let results = c.cli(&["job", "results", "job-1"]).unwrap();
    let total_words: u64 = text(&results.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t')?.1.parse::<u64>().ok())
        .sum();

    // The baseline: the same count, natively, in this process.
    let t = Instant::now();
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for w in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(w.to_lowercase()).or_default() += 1;
        }
    }
    let native = t.elapsed();
    let native_total: u64 = counts.values().sum();
    assert_eq!(
        total_words, native_total,
        "the job's counts differ from the native count"
    );
    let tasks = maps + reducers;
    println!(
        "bench wordcount {mb} MB: {maps} map + {reducers} reduce tasks on 2 agents: wall {:.2} s, {:.1} tasks/s, {:.1} MB/s",
        wall.as_secs_f64(),
        tasks as f64 / wall.as_secs_f64(),
        mb as f64 / wall.as_secs_f64()
    );
    println!(
        "bench baseline native single-threaded count of the same {mb} MB: {:.2} s",
        native.as_secs_f64()
    );
    println!(
        "bench ratio job wall / native: {:.2}",
        wall.as_secs_f64() / native.as_secs_f64()
    );
}

/// An SDK framework that launches `want` tasks one offer at a time and records, for each
/// launch, the time from the offer's arrival to the `Accepted` answer.
struct Launcher {
    spec: TaskSpec,
    want: usize,
    launched: usize,
    asked: std::collections::BTreeMap<u64, Instant>,
    latencies: Vec<Duration>,
    /// When each launched task's offer arrived, until its end is heard.
    started: std::collections::BTreeMap<wasmos_proto::TaskId, Instant>,
    /// From an offer's arrival to the `finished` update of the task launched on it.
    round_trips: Vec<Duration>,
    ended: usize,
}

impl wasmos_sdk::Scheduler for Launcher {
    fn offers(&mut self, cx: &mut wasmos_sdk::Context, offers: Vec<wasmos_sdk::proto::OfferInfo>) {
        let arrived = Instant::now();
        for o in offers {
            if self.launched + self.asked.len() >= self.want
                || !self.spec.resources.fits_in(&o.unreserved)
            {
                cx.decline(vec![o.id], Some(100));
                continue;
            }
            let request = cx.launch(o.id, vec![self.spec.clone()]);
            self.asked.insert(request, arrived);
        }
    }

    fn launched(
        &mut self,
        _cx: &mut wasmos_sdk::Context,
        request: u64,
        tasks: &[wasmos_proto::TaskId],
    ) {
        if let Some(t) = self.asked.remove(&request) {
            self.latencies.push(t.elapsed());
            self.launched += 1;
            for task in tasks {
                self.started.insert(*task, t);
            }
        }
    }

    fn error(&mut self, _cx: &mut wasmos_sdk::Context, request: Option<u64>, _message: &str) {
        // A lost race for an offer: that launch is retried on a later one.
        if let Some(r) = request {
            self.asked.remove(&r);
        }
    }

    fn update(
        &mut self,
        cx: &mut wasmos_sdk::Context,
        task: wasmos_proto::TaskId,
        status: &wasmos_proto::TaskStatus,
    ) {
        if !status.state.is_terminal() {
            return;
        }
        if let Some(t) = self.started.remove(&task) {
            if status.state == wasmos_proto::TaskState::Finished {
                self.round_trips.push(t.elapsed());
            }
            self.ended += 1;
        }
        if self.ended >= self.want {
            cx.teardown();
        }
    }
}

/// Offer-to-launch latency through the SDK: `n` frameworks at once each launch tasks until they
/// have 40; p50/p99 with 10 frameworks against the same with 1, in the same run.
fn offer_to_launch(c: &DevCluster, n: usize, spec: &TaskSpec) -> (Vec<Duration>, Vec<Duration>) {
    let cluster = wasmos_sdk::Cluster::new(c.operator_credentials(), vec![c.master_addr()]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (mut all, mut trips) = (Vec::new(), Vec::new());
        let runs = (0..n).map(|i| {
            let cluster = cluster.clone();
            let fw = Launcher {
                spec: spec.clone(),
                want: 40,
                launched: 0,
                asked: Default::default(),
                latencies: Vec::new(),
                started: Default::default(),
                round_trips: Vec::new(),
                ended: 0,
            };
            let options = wasmos_sdk::Options {
                role: Some(format!("bench/fw{i}")),
                ..wasmos_sdk::Options::new(format!("bench-{i}"))
            };
            tokio::spawn(async move { wasmos_sdk::run(&cluster, fw, options).await })
        });
        for h in runs.collect::<Vec<_>>() {
            let done = h.await.unwrap().unwrap();
            all.extend(done.latencies);
            trips.extend(done.round_trips);
        }
        (all, trips)
    })
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn offer_to_launch_latency() {
    let c = DevCluster::start_with(4, &["--agent-cpu", "8", "--agent-mem", "8GiB"]).unwrap();
    let out = c
        .cli(&["bundle", "push", sample("noop").to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = wasmos_proto::BundleHash::parse(text(&out.stdout).trim()).unwrap();
    let spec = TaskSpec {
        resources: wasmos_proto::Resources::new(100, 16 << 20, 1 << 20),
        ..TaskSpec::new("noop.wasm", hash)
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (one, one_trips) = offer_to_launch(&c, 1, &spec);
    let (ten, ten_trips) = offer_to_launch(&c, 10, &spec);
    let (b50, b99) = (percentile(one.clone(), 50), percentile(one.clone(), 99));
    let (p50, p99) = (percentile(ten.clone(), 50), percentile(ten.clone(), 99));
    println!(
        "bench offer-to-launch, 10 frameworks at once ({} launches): p50 {:.1} ms, p99 {:.1} ms",
        ten.len(),
        ms(p50),
        ms(p99)
    );
    println!(
        "bench baseline offer-to-launch, 1 framework ({} launches): p50 {:.1} ms, p99 {:.1} ms",
        one.len(),
        ms(b50),
        ms(b99)
    );
    println!(
        "bench ratio 10 frameworks / 1: p50 {:.2}, p99 {:.2}",
        p50.as_secs_f64() / b50.as_secs_f64(),
        p99.as_secs_f64() / b99.as_secs_f64()
    );
    // The SDK round trip the issue names: an offer taken, its no-op launched, run, and its
    // `finished` update back at the framework; against offer-to-launch of the same run.
    for (label, trips, launch) in [
        ("1 framework", one_trips, b50),
        ("10 frameworks", ten_trips, p50),
    ] {
        let (t50, t99) = (percentile(trips.clone(), 50), percentile(trips.clone(), 99));
        println!(
            "bench offer-to-finished through the SDK, {label} ({} tasks): p50 {:.1} ms, p99 {:.1} ms; {:.2}x its offer-to-launch p50",
            trips.len(),
            ms(t50),
            ms(t99),
            t50.as_secs_f64() / launch.as_secs_f64()
        );
    }
}

/// Submits `n` tasks as fast as one tenant can (64 in flight on one connection) with the
/// credentials in `dir` (`me.pem`, `me.key`; the CA at `ca`); returns (accepted, refused).
async fn flood(
    dir: &Path,
    ca: &Path,
    master: std::net::SocketAddr,
    spec: TaskSpec,
    n: usize,
) -> (usize, usize) {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let creds = Credentials::from_pem(
        &read(ca),
        &read(&dir.join("me.pem")),
        &read(&dir.join("me.key")),
    )
    .unwrap();
    let client = std::sync::Arc::new(
        Client::connect_to(&creds, &[master], ConnectOptions::default())
            .await
            .unwrap(),
    );
    let mut set = tokio::task::JoinSet::new();
    let (mut accepted, mut refused) = (0, 0);
    let mut tally = |answer: bool| {
        if answer { accepted += 1 } else { refused += 1 }
    };
    for i in 0..n {
        if i >= 64 {
            tally(set.join_next().await.unwrap().unwrap());
        }
        let (client, spec) = (client.clone(), spec.clone());
        set.spawn(async move {
            matches!(
                client
                    .request(ClientRequest::SubmitTask { spec, key: None })
                    .await,
                Ok(ClientResponse::Submitted { .. })
            )
        });
    }
    while let Some(done) = set.join_next().await {
        tally(done.unwrap());
    }
    (accepted, refused)
}

/// Issue 15's flood: tenant `evil` submits 1,000 tasks as fast as it can while tenant `acme`
/// runs `hello.wasm`; acme's p50 against the same runs with no flood (target ≤ 2×).
#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn victim_latency_under_another_tenants_flood() {
    let c = DevCluster::start_with(1, &["--agent-cpu", "16", "--agent-mem", "16GiB"]).unwrap();
    let alice = c.user_config("wasmos://tenant/acme/alice");
    let bob = c.user_config("wasmos://tenant/evil/bob");
    let run = |config: &Path| {
        let t = Instant::now();
        let out = wasmos_cmd(config, &["run", "--cpu", "10m"])
            .arg(sample("hello"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        t.elapsed()
    };
    run(&alice);
    let out = wasmos_cmd(&bob, &["bundle", "push", sample("noop").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = wasmos_proto::BundleHash::parse(text(&out.stdout).trim()).unwrap();
    let spec = TaskSpec {
        resources: wasmos_proto::Resources::new(10, 16 << 20, 1 << 20),
        role: Some("evil".into()),
        ..TaskSpec::new("noop.wasm", hash)
    };
    let quiet: Vec<Duration> = (0..15).map(|_| run(&alice)).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (dir, ca, master) = (
        bob.parent().unwrap().to_path_buf(),
        c.dir.path().join("pki/ca.pem"),
        c.master_addr(),
    );
    let flooding = std::thread::spawn(move || {
        let t = Instant::now();
        let tally = runtime.block_on(flood(&dir, &ca, master, spec, 1000));
        (tally, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut loud = Vec::new();
    while !flooding.is_finished() || loud.len() < 5 {
        loud.push(run(&alice));
    }
    let ((accepted, refused), took) = flooding.join().unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let worst = loud.iter().max().copied().unwrap_or_default();
    let (q, l) = (median(quiet), median(loud.clone()));
    println!(
        "bench tenant flood: evil sent 1000 submissions in {:.1} s ({accepted} accepted, {refused} told to slow down); acme's run hello p50 {:.1} ms, max {:.1} ms over {} runs meanwhile",
        took.as_secs_f64(),
        ms(l),
        ms(worst),
        loud.len()
    );
    println!(
        "bench baseline: acme's run hello p50 {:.1} ms over 15 runs, no flood",
        ms(q)
    );
    println!(
        "bench ratio flood / quiet: {:.2} (target <= 2)",
        l.as_secs_f64() / q.as_secs_f64()
    );
}

/// Issue 15's log case: the master's resident memory while 8 clients read the same 1 GiB
/// log at once, against 1 reader (target: growth <= 64 MiB).
#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn master_memory_with_readers_of_a_huge_log() {
    let c = DevCluster::start(1).unwrap();
    let op = |args: &[&str]| {
        let out = c.cli(args).unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    op(&["role", "set", "default", "--max-output", "1GiB"]);
    let pid = c.pid().unwrap();
    let at_start = rss_kib(pid).unwrap();
    let id = op(&[
        "run",
        "-d",
        "--max-output",
        "1GiB",
        "--on-output-limit",
        "stop",
        "--timeout",
        "10m",
        sample("hostile").to_str().unwrap(),
        "--",
        "flood",
    ])
    .trim()
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let shown = c.json(&["task", "show", &id, "-o", "json"]).unwrap();
        if !matches!(
            shown["status"]["state"].as_str(),
            Some("Running" | "Staging" | "Starting")
        ) {
            eprintln!("the flood ended: {}", shown["status"]);
            break;
        }
        assert!(Instant::now() < deadline, "the flood did not end: {shown}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let after_flood = rss_kib(pid).unwrap();
    let peak_with = |readers: usize| {
        std::thread::sleep(Duration::from_secs(2));
        let before = rss_kib(pid).unwrap();
        let started = Instant::now();
        let mut children: Vec<Child> = (0..readers)
            .map(|_| {
                c.cmd(&["logs", &id])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Each reader's output is counted as it comes, so a reader that stops early shows.
        let counters: Vec<_> = children
            .iter_mut()
            .map(|ch| {
                let mut out = ch.stdout.take().unwrap();
                std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()).unwrap())
            })
            .collect();
        let mut peak = before;
        while children
            .iter_mut()
            .any(|ch| matches!(ch.try_wait(), Ok(None)))
        {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        for (ch, n) in children.iter_mut().zip(counters) {
            let n = n.join().unwrap();
            assert!(ch.wait().unwrap().success());
            assert!(n >= 1 << 30, "a reader got only {n} bytes");
        }
        (before, peak, took)
    };
    let log_bytes: u64 = std::fs::read_dir(c.dir.path().join("master").join("logs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    let (b1, p1, t1) = peak_with(1);
    let (b8, p8, t8) = peak_with(8);
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "bench huge log: {:.0} MiB of log; 8 readers at once: master RSS {:.0} -> {:.0} MiB (growth {:.1} MiB) in {:.1} s",
        log_bytes as f64 / (1 << 20) as f64,
        mib(b8),
        mib(p8),
        mib(p8.saturating_sub(b8)),
        t8.as_secs_f64()
    );
    println!(
        "bench the process (master and its agent in one): {:.0} MiB before the 1 GiB flood, {:.0} MiB after it",
        mib(at_start),
        mib(after_flood)
    );
    println!(
        "bench baseline: 1 reader: master RSS {:.0} -> {:.0} MiB (growth {:.1} MiB) in {:.1} s",
        mib(b1),
        mib(p1),
        mib(p1.saturating_sub(b1)),
        t1.as_secs_f64()
    );
    println!(
        "bench ratio growth 8 readers / 1 reader: {:.2} (target: 8-reader growth <= 64 MiB)",
        mib(p8.saturating_sub(b8)) / mib(p1.saturating_sub(b1)).max(0.1)
    );
}

/// Runs `n` no-op tasks to their end through the leader of `c` (submitted 64 at a time);
/// returns tasks per second from the first submission to the last `finished` event.
async fn launch_rate(c: &DevCluster, spec: &TaskSpec, n: usize) -> f64 {
    let client = Client::connect_to(
        &c.operator_credentials(),
        &[c.master_addr()],
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    let ClientResponse::Cluster(info) = client.request(ClientRequest::ClusterStatus).await.unwrap()
    else {
        panic!("no cluster status");
    };
    let from = info.last_applied.unwrap_or(0) + 1;
    let t = Instant::now();
    let submitting = submit_many(c.dir.path(), c.master_addr(), spec.clone(), n, 64, 1);
    let mut ended = std::collections::BTreeSet::new();
    let watching = client.events(Some(from), vec![wasmos_proto::Topic::Task], true, |frame| {
        for e in frame.events {
            if let wasmos_proto::Change::Task {
                id, state, message, ..
            } = e.change
                && state.is_terminal()
            {
                assert_eq!(
                    state,
                    wasmos_proto::TaskState::Finished,
                    "task {id}: {message:?}"
                );
                ended.insert(id);
            }
        }
        ended.len() < n
    });
    let (_, watched) = tokio::join!(submitting, watching);
    watched.unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

/// A web UI viewer as `wasmos ui` makes one of the masters: it follows the event stream and,
/// as the page does, lists a page of tasks after events (at most every 250 ms) and asks the
/// cluster's status every 5 s.
async fn viewer(creds: Credentials, master: std::net::SocketAddr) {
    let client = std::sync::Arc::new(
        Client::connect_to(&creds, &[master], ConnectOptions::default())
            .await
            .unwrap(),
    );
    // As the page does: the stream from now on, not its history.
    let from = match client.request(ClientRequest::ClusterStatus).await {
        Ok(ClientResponse::Cluster(info)) => info.last_applied.unwrap_or(0) + 1,
        other => panic!("no cluster status: {other:?}"),
    };
    let dirty = std::sync::atomic::AtomicBool::new(false);
    // One future for both halves: aborting the viewer ends its stream too.
    let follow = client.events(Some(from), Vec::new(), true, |frame| {
        if !frame.events.is_empty() {
            dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        true
    });
    let refresh = async {
        let mut tick = 0u32;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            tick += 1;
            if dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
                let filter = wasmos_proto::TaskFilter {
                    states: Vec::new(),
                    after: None,
                    limit: Some(50),
                };
                let _ = client.request(ClientRequest::ListTasks { filter }).await;
            }
            if tick.is_multiple_of(20) {
                let _ = client.request(ClientRequest::ClusterStatus).await;
            }
        }
    };
    tokio::select! {
        _ = follow => {}
        () = refresh => {}
    }
}

/// Scrapes the master's `/metrics` every `every` with the operator's certificate, as
/// Prometheus would (one kept-alive HTTPS connection), until killed.
fn scraper(c: &DevCluster, every: Duration) -> KillOnDrop {
    let script = format!(
        "{}{}",
        wasmos_tests::PYTHON_HTTPS_CLIENT,
        r#"
import time
c = connect()
every = float(sys.argv[2])
while True:
    c.request("GET", "/metrics")
    r = c.getresponse()
    assert r.status == 200, r.status
    r.read()
    time.sleep(every)
"#
    );
    let child = Command::new("python3")
        .args(["-c", &script])
        .arg(c.config())
        .arg(every.as_secs_f64().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// The launch path under observation: no-op tasks run to their end with nothing watching,
/// with the master's metrics scraped ten times a second (Prometheus scrapes every 15 s by
/// default), and with 100 web UI viewers; rounds interleaved so drift hits all three.
#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn metrics_and_ui_viewers_on_the_launch_path() {
    let n: usize = std::env::var("WASMOS_UI_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let c = DevCluster::start_with(1, &["--agent-cpu", "4", "--agent-mem", "8GiB"]).unwrap();
    let out = c
        .cli(&["bundle", "push", sample("noop").to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = wasmos_proto::BundleHash::parse(text(&out.stdout).trim()).unwrap();
    let spec = TaskSpec {
        resources: wasmos_proto::Resources::new(100, 16 << 20, 1 << 20),
        ..TaskSpec::new("noop.wasm", hash)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Warm-up: the bundle compiled, the first connections made.
    rt.block_on(launch_rate(&c, &spec, 50));
    let mut rates: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for round in [
        "base", "metrics", "viewers", "viewers", "metrics", "base", "base", "metrics", "viewers",
    ] {
        let rate = match round {
            "metrics" => {
                let _scrape = scraper(&c, Duration::from_millis(100));
                std::thread::sleep(Duration::from_millis(500));
                rt.block_on(launch_rate(&c, &spec, n))
            }
            "viewers" => rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..100 {
                    set.spawn(viewer(c.operator_credentials(), c.master_addr()));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let rate = launch_rate(&c, &spec, n).await;
                set.abort_all();
                rate
            }),
            _ => rt.block_on(launch_rate(&c, &spec, n)),
        };
        println!("bench launches ({round}): {rate:.0} tasks/s ({n} no-op tasks to their end)");
        rates.entry(round).or_default().push(rate);
    }
    let mean = |k: &str| rates[k].iter().sum::<f64>() / rates[k].len() as f64;
    println!(
        "bench baseline launches with nothing watching: {:.0} tasks/s",
        mean("base")
    );
    println!(
        "bench ratio time per task, metrics scraped 10/s / nothing: {:.3}",
        mean("base") / mean("metrics")
    );
    println!(
        "bench ratio time per task, 100 UI viewers / nothing: {:.3}",
        mean("base") / mean("viewers")
    );
}
