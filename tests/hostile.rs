//! The hostile corpus (`sample-tasks/hostile/cases.txt`) run all at once on one agent, beside a
//! well-behaved task: every case ends with its expected outcome within twice its limit, the
//! well-behaved task finishes, the cluster stays up, and nothing leaks (task directories,
//! descriptors, threads, memory) once the corpus has run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, rss_kib, sample, text};

/// Every case runs with these limits, unless its own flags override one.
const BASE: &[(&str, &str)] = &[
    ("--timeout", "2s"),
    ("--mem", "32MiB"),
    ("--disk", "8MiB"),
    ("--max-output", "64KiB"),
    ("--on-output-limit", "stop"),
    ("--cpu", "100m"),
];
const LIMIT: Duration = Duration::from_secs(2);

struct Case {
    name: String,
    file: PathBuf,
    args: Vec<String>,
    flags: Vec<String>,
    code: i32,
    expect: String,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sample-tasks/hostile")
}

/// Reads cases.txt, building the components it names into `work`.
fn load_cases(work: &Path) -> Vec<Case> {
    let input = work.join("input.txt");
    std::fs::write(&input, "the input file\n").unwrap();
    let table = std::fs::read_to_string(corpus_dir().join("cases.txt")).unwrap();
    let mut cases = Vec::new();
    for line in table
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cols.len(), 6, "malformed line in cases.txt: {line}");
        let file = match cols[1] {
            "hostile.wasm" => sample("hostile"),
            "@truncated" => {
                let bytes = std::fs::read(sample("hostile")).unwrap();
                let p = work.join("truncated.wasm");
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
                p
            }
            "@huge" => {
                // A component header followed by 65 MiB: over the 64 MiB cap.
                let mut bytes = vec![0u8, b'a', b's', b'm', 0x0d, 0, 1, 0];
                bytes.resize(65 << 20, 0);
                let p = work.join("huge.wasm");
                std::fs::write(&p, bytes).unwrap();
                p
            }
            "@compile-bomb" => {
                let p = work.join("compile-bomb.wasm");
                std::fs::write(&p, compile_bomb(12_000)).unwrap();
                p
            }
            "@text" => {
                let p = work.join("text.wasm");
                std::fs::write(&p, "(component) ;; text format is not accepted").unwrap();
                p
            }
            wat => {
                let src = corpus_dir().join(wat);
                let bytes = wat::parse_file(&src).unwrap();
                let p = work.join(Path::new(wat).with_extension("wasm").file_name().unwrap());
                std::fs::write(&p, bytes).unwrap();
                p
            }
        };
        let mut flags: Vec<String> = Vec::new();
        let own: Vec<String> = cols[3]
            .split_whitespace()
            .map(|f| f.replace("@input", input.to_str().unwrap()))
            .collect();
        for (k, v) in BASE {
            if !own.iter().any(|f| f == k) {
                flags.extend([k.to_string(), v.to_string()]);
            }
        }
        flags.extend(own);
        cases.push(Case {
            name: cols[0].to_string(),
            file,
            args: cols[2].split_whitespace().map(String::from).collect(),
            flags,
            code: cols[4].parse().unwrap(),
            expect: cols[5].to_string(),
        });
    }
    cases
}

/// A small, valid component that is costly to compile: one function with `n` i64 locals,
/// `n` conditional writes to them and a final read of every one. Cranelift's SSA construction
/// then does work (and keeps memory) proportional to n²: at n = 3,000 (45 KB) compiling takes
/// 3 s and 320 MB here, at 6,000 (90 KB) 11 s and 1.3 GB, and at 12,000 (180 KB) it runs into
/// the agent's default 2 GiB bound after 7 s.
fn compile_bomb(n: usize) -> Vec<u8> {
    let mut body = String::new();
    for j in 0..n {
        let k = j * 7919 % n + 1;
        body.push_str(&format!(
            "(if (local.get 0) (then (local.set {k} (i64.const {j}))))"
        ));
    }
    body.push_str("(i64.const 0)");
    for i in 1..=n {
        body.push_str(&format!("(local.get {i}) (i64.add)"));
    }
    let locals = vec!["i64"; n].join(" ");
    let wat = format!(
        "(component (core module (func (export \"f\") (param i32) (result i64) (local {locals}) {body})))"
    );
    wat::parse_str(wat).unwrap()
}

/// Open descriptors and threads of a process (Linux only: the figures come from /proc).
fn fds_and_threads(pid: u32) -> Option<(usize, usize)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()?;
    Some((fds, threads))
}

/// Runs the whole corpus at once, beside a well-behaved task, and checks every outcome.
fn run_corpus(c: &DevCluster, cases: &[Case]) {
    let spawn = |flags: &[String], file: &Path, args: &[String]| -> Child {
        let mut cmd = c.cmd(&["run"]);
        cmd.args(flags)
            .arg(file)
            .arg("--")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    // A well-behaved task throttled to a tenth of a core, busy for a few seconds: it must
    // finish correctly while the hostile cases run beside it.
    let started = Instant::now();
    let good_flags: Vec<String> = ["--cpu", "100m", "--timeout", "60s"]
        .map(String::from)
        .to_vec();
    let good = spawn(&good_flags, &sample("primes"), &["20000000".to_string()]);
    let running: Vec<(&Case, Child)> = cases
        .iter()
        .map(|case| (case, spawn(&case.flags, &case.file, &case.args)))
        .collect();
    let mut failures = Vec::new();
    for (case, child) in running {
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        if out.status.code() != Some(case.code) || !err.contains(&case.expect) {
            failures.push(format!(
                "{}: exited {:?} (expected {} with `{}`): {}{}",
                case.name,
                out.status.code(),
                case.code,
                case.expect,
                err.trim(),
                text(&out.stdout).trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every case ended within twice the longest limit, counted from when all were started
    // (plus the time to start 45 CLI processes on two cores).
    assert!(
        started.elapsed() < 2 * LIMIT + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let good = good.wait_with_output().unwrap();
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(text(&good.stdout).contains("primes below 20000000"));
}

#[test]
fn hostile_cases_are_contained_while_a_good_task_progresses() {
    // Room for every case's 100m share and memory at once.
    let mut c = DevCluster::start_with(
        1,
        &[
            "--agent-cpu",
            "8",
            "--agent-mem",
            "4GiB",
            // The compile bomb meets these; every other case compiles well within them.
            "--compile-timeout",
            "2s",
            "--compile-memory",
            "512MiB",
        ],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let cases = load_cases(work.path());
    assert!(cases.len() >= 40, "only {} cases", cases.len());

    // Upload once first, so the concurrent runs below do not all race to upload it.
    let warm = c.run(&[], "hostile", &["env"]).unwrap();
    assert_eq!(warm.status.code(), Some(0), "{}", text(&warm.stderr));
    let pid = c.pid().unwrap();

    run_corpus(&c, &cases);
    let first = (fds_and_threads(pid), rss_kib(pid));
    run_corpus(&c, &cases);

    assert!(c.is_running(), "the dev cluster died");
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    assert_eq!(agents[0]["state"], "Active");
    assert!(!c.log_text().contains("panicked"), "{}", c.log_text());

    // Nothing left behind: task directories are emptied (kept only as empty scratch spaces
    // for the next tasks), and a second run of the whole corpus leaves the process with no
    // more descriptors, threads or memory than the first did (idle blocking threads may take
    // a few seconds to go).
    let tasks = c.agent_dir(1).join("tasks");
    let mut left = Vec::new();
    for dir in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
        let inside: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let scratch = std::fs::read_dir(dir.path().join("root")).map_or(0, |d| d.count());
        if inside != ["root"] || scratch != 0 {
            left.push((dir.file_name(), inside, scratch));
        }
    }
    assert!(left.is_empty(), "task files left: {left:?}");
    if let (Some((fds1, threads1)), Some(rss1)) = first {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (fds2, threads2) = fds_and_threads(pid).unwrap();
            let rss2 = rss_kib(pid).unwrap();
            let settled = fds2 <= fds1 + 4 && threads2 <= threads1 + 2;
            if settled || Instant::now() > deadline {
                assert!(fds2 <= fds1 + 4, "descriptors {fds1} -> {fds2}");
                assert!(threads2 <= threads1 + 2, "threads {threads1} -> {threads2}");
                // Allocators keep freed memory around, so allow some growth (2-4 MiB is
                // usual), but not another corpus' worth of task memory: one leaked store per
                // case, with its linear memory, would be well over this.
                assert!(rss2 <= rss1 + 16 * 1024, "RSS {rss1} KiB -> {rss2} KiB");
                eprintln!(
                    "after run 1: {fds1} fds, {threads1} threads, {rss1} KiB; after run 2: {fds2} fds, {threads2} threads, {rss2} KiB"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    c.kill_hard().unwrap();
}
