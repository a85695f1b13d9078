//! The hostile corpus (`sample-tasks/hostile/cases.txt`) run all at once on one agent, beside a
//! well-behaved task: every case ends with its expected outcome within twice its limit, the
//! well-behaved task finishes, the cluster stays up, and nothing leaks (task directories,
//! descriptors, threads, memory) once the corpus has run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wasmos_tests::corpus::{Case, LIMIT, load_cases};
use wasmos_tests::{DevCluster, rss_kib, sample, text};

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
