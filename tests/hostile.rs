//! The hostile corpus (`sample-tasks/hostile`) run all at once on one agent, beside a
//! well-behaved task: every case ends with the expected outcome within twice its limit, the
//! well-behaved task finishes, and the cluster stays up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, sample, text};

/// Every case runs with these limits.
const FLAGS: &[&str] = &[
    "--timeout",
    "2s",
    "--mem",
    "32MiB",
    "--max-output",
    "64KiB",
    "--on-output-limit",
    "stop",
    "--cpu",
    "100m",
];
const LIMIT: Duration = Duration::from_secs(2);

/// (case, expected exit status of `wasmos run`, text its stderr must contain)
const CASES: &[(&str, i32, &str)] = &[
    ("loop", 124, "(timeout)"),
    ("sleep", 124, "(timeout)"),
    ("recurse", 125, "(trap)"),
    ("abort", 125, "(trap)"),
    ("panic", 125, "(trap)"),
    ("alloc-huge", 125, "(memory_limit)"),
    ("alloc-loop", 125, "(memory_limit)"),
    ("flood", 125, "(output_limit)"),
    ("flood-stderr", 125, "(output_limit)"),
    // Probes: exit 0 means every attempt was denied.
    ("stdin", 0, ""),
    ("env", 0, ""),
    ("fs", 0, ""),
    ("net", 0, ""),
    ("cwd", 0, ""),
    ("random", 0, ""),
];

#[test]
fn hostile_cases_are_contained_while_a_good_task_progresses() {
    let mut c = DevCluster::start(1).unwrap();
    let spawn = |flags: &[&str], task: &str, args: &[&str]| -> Child {
        let mut cmd = c.cmd(&["run"]);
        cmd.args(flags)
            .arg(sample(task))
            .arg("--")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    // Upload once first, so the concurrent runs below do not all race to upload it.
    let warm = spawn(FLAGS, "hostile", &["env"])
        .wait_with_output()
        .unwrap();
    assert_eq!(warm.status.code(), Some(0), "{}", text(&warm.stderr));

    // A well-behaved task throttled to a tenth of a core, busy for a few seconds: it must
    // finish correctly while the hostile cases run beside it.
    let started = Instant::now();
    let good = spawn(
        &["--cpu", "100m", "--timeout", "60s"],
        "primes",
        &["20000000"],
    );
    let running: Vec<(&str, i32, &str, Child)> = CASES
        .iter()
        .map(|(case, code, reason)| (*case, *code, *reason, spawn(FLAGS, "hostile", &[case])))
        .collect();
    for (case, code, reason, child) in running {
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "case {case}: {err}");
        assert!(err.contains(reason), "case {case}: {err}");
        assert!(
            !err.contains("wasmos: task") || code != 0,
            "case {case}: {err}"
        );
    }
    // Every case ended within twice the longest limit, counted from when all were started.
    assert!(
        started.elapsed() < 2 * LIMIT + Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let good = good.wait_with_output().unwrap();
    assert!(good.status.success(), "{}", text(&good.stderr));
    assert!(text(&good.stdout).contains("primes below 20000000"));

    assert!(c.is_running(), "the dev cluster died");
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    assert_eq!(agents[0]["state"], "Active");
    assert!(!c.log_text().contains("panicked"), "{}", c.log_text());
    c.kill_hard().unwrap();
}
