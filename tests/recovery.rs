//! Agent recovery: an agent run with `--executor` is killed with `kill -9` while its task runs;
//! the task keeps running in the executor, and the agent started again takes it back, with
//! its output, progress, results and end, in the same executor.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use wasmos_tests::{DevCluster, Logged, eventually, kill_dash_nine, sample, send_signal, text};

fn executor_pid(work: &Path) -> Option<u64> {
    let record = std::fs::read(work.join("executor.json")).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&record).ok()?;
    record["pid"].as_u64()
}

/// Running, not a zombie waiting to be reaped.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn task(c: &DevCluster, id: &str) -> serde_json::Value {
    c.json(&["task", "show", id, "-o", "json"])
        .unwrap_or_default()
}

fn active(c: &DevCluster, name: &str) -> bool {
    c.json(&["agent", "list", "-o", "json"])
        .ok()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|a| a["id"] == name && a["state"] == "Active")
}

/// Kills an executor left behind by a failed test (it is in a process group of its own).
struct Reap(std::path::PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = executor_pid(&self.0).filter(|p| alive(*p)) {
            kill_dash_nine(pid);
        }
    }
}

/// Waits for a line of `id`'s output.
fn printed(c: &DevCluster, id: &str, line: &str) -> bool {
    eventually(Duration::from_secs(30), || {
        text(&c.cli(&["logs", id]).unwrap().stdout).contains(line)
    })
}

/// A dev cluster with the agent rec-1 (`--executor`, attribute `proc=own`) active beside its
/// own agent; a stray executor is killed when it is dropped.
struct Setup {
    _reap: Reap,
    c: DevCluster,
    dir: tempfile::TempDir,
    work: std::path::PathBuf,
}

fn setup() -> (Setup, Logged) {
    let c = DevCluster::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("rec-1-work");
    let agent = c.start_agent("rec-1", dir.path(), AGENT);
    assert!(
        eventually(Duration::from_secs(30), || active(&c, "rec-1")),
        "{}",
        agent.log()
    );
    let s = Setup {
        _reap: Reap(work.clone()),
        c,
        dir,
        work,
    };
    (s, agent)
}

const AGENT: &[&str] = &[
    "--executor",
    "--recovery-timeout",
    "20s",
    "--cpu",
    "2",
    "--mem",
    "1GiB",
    "--attr",
    "proc=own",
    "--peer-listen",
    "off",
];

/// Platform's `steps N MS`, on the agent with `proc=own`, detached.
fn steps(c: &DevCluster, n: u32, ms: u32) {
    let platform = sample("platform");
    let (n, ms) = (n.to_string(), ms.to_string());
    let run = c
        .cli(&[
            "run",
            "--detach",
            "--timeout",
            "3m",
            "--constraint",
            "proc=own",
            platform.to_str().unwrap(),
            "--",
            "steps",
            &n,
            &ms,
        ])
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
}

/// Finished with exit code 0 on rec-1, every step in its output, its results and its file.
fn finished_in_full(c: &DevCluster, id: &str, n: u32) {
    let t = task(c, id);
    assert_eq!(
        (
            &t["status"]["state"],
            &t["status"]["exit_code"],
            &t["agent"]
        ),
        (&"Finished".into(), &0.into(), &"rec-1".into()),
        "{t}"
    );
    assert!(t["status"]["results"].to_string().contains("steps"), "{t}");
    assert_eq!(
        t["status"]["files"].as_array().map(Vec::len),
        Some(1),
        "{t}"
    );
    let logs = text(&c.cli(&["logs", id]).unwrap().stdout);
    assert!(logs.contains(&format!("step {n} of {n}")), "{logs}");
}

fn state(c: &DevCluster, id: &str) -> serde_json::Value {
    task(c, id)["status"]["state"].clone()
}

/// An agent upgraded the way an operator would: two restarts, one after `kill -9` and one
/// after SIGTERM, with tasks running across both, one ending while no agent was there, and one
/// started between them beside a task taken back.
#[test]
fn tasks_outlive_their_agents_restarts() {
    let (s, mut agent) = setup();
    let (c, dir, work) = (&s.c, &s.dir, &s.work);
    steps(c, 240, 250);
    steps(c, 8, 250);
    // Both run in the executor: each has printed.
    assert!(printed(c, "t-1", "step 1 of 240"), "{}", agent.log());
    assert!(printed(c, "t-2", "step 1 of 8"), "{}", agent.log());
    let executor = executor_pid(work).expect("the agent wrote no executor record");
    kill_dash_nine(u64::from(agent.id()));
    let _ = agent.child().wait();
    // t-2 ends meanwhile, in the executor.
    std::thread::sleep(Duration::from_secs(3));
    assert!(alive(executor), "the executor died with its agent");
    let mut agent = c.start_agent("rec-1", dir.path(), AGENT);
    assert!(
        eventually(Duration::from_secs(30), || state(c, "t-2") == "Finished"),
        "{}\n{}",
        task(c, "t-2"),
        agent.log()
    );
    finished_in_full(c, "t-2", 8);
    // A new task beside the one taken back: directories of their own.
    steps(c, 2, 200);
    assert!(
        eventually(Duration::from_secs(30), || state(c, "t-3") == "Finished"),
        "{}\n{}",
        task(c, "t-3"),
        agent.log()
    );
    finished_in_full(c, "t-3", 2);
    assert_eq!(state(c, "t-1"), "Running");

    // Stopped as for an upgrade, t-1 still running; the next agent takes it back.
    send_signal(u64::from(agent.id()), "TERM");
    let _ = agent.child().wait();
    assert_eq!(state(c, "t-1"), "Running");
    let agent = c.start_agent("rec-1", dir.path(), AGENT);
    assert!(
        eventually(Duration::from_secs(150), || state(c, "t-1") == "Finished"),
        "{}\n{}",
        task(c, "t-1"),
        agent.log()
    );
    finished_in_full(c, "t-1", 240);
    assert_eq!(
        executor_pid(work),
        Some(executor),
        "a new executor was started"
    );
    send_signal(u64::from(agent.id()), "TERM");
    assert!(
        eventually(Duration::from_secs(10), || !alive(executor)),
        "the idle executor outlived its agent"
    );
}

#[test]
fn a_task_outlives_kill_dash_nine_of_its_agent_and_finishes() {
    let (s, mut agent) = setup();
    let (c, dir, work) = (&s.c, &s.dir, &s.work);
    steps(c, 16, 500);
    assert!(
        printed(c, "t-1", "step 2 of 16"),
        "{}\n{}",
        task(c, "t-1"),
        agent.log()
    );
    let executor = executor_pid(work).expect("the agent wrote no executor record");
    assert_ne!(u64::from(agent.id()), executor);

    kill_dash_nine(u64::from(agent.id()));
    let _ = agent.child().wait();
    // The task goes on without its agent.
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(executor), "the executor died with its agent");
    assert_eq!(task(c, "t-1")["status"]["state"], "Running");

    let agent = c.start_agent("rec-1", dir.path(), AGENT);
    assert!(
        eventually(Duration::from_secs(60), || {
            task(c, "t-1")["status"]["state"] == "Finished"
        }),
        "{}\n{}",
        task(c, "t-1"),
        agent.log()
    );
    let t1 = task(c, "t-1");
    assert_eq!(t1["status"]["exit_code"], 0, "{t1}");
    assert_eq!(t1["agent"], "rec-1", "{t1}");
    // What it did while its agent was away reached the cluster: output, results, files.
    let logs = text(&c.cli(&["logs", "t-1"]).unwrap().stdout);
    for step in 10..=16 {
        assert!(logs.contains(&format!("step {step} of 16")), "{logs}");
    }
    let results = t1["status"]["results"].to_string();
    assert!(results.contains("steps"), "{t1}");
    assert!(
        !t1["status"]["files"].as_array().unwrap().is_empty(),
        "{t1}"
    );
    assert!(
        agent
            .log()
            .contains("attached to the executor left running"),
        "{}",
        agent.log()
    );
    assert_eq!(
        executor_pid(work),
        Some(executor),
        "a new executor was started"
    );

    // New tasks run in the same executor.
    let hello = sample("hello");
    let out = c
        .cli(&[
            "run",
            "--constraint",
            "proc=own",
            hello.to_str().unwrap(),
            "--",
            "again",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("args: again"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(executor_pid(work), Some(executor));

    // Stopped (SIGTERM) with nothing running, the agent leaves an idle executor, which exits.
    send_signal(u64::from(agent.id()), "TERM");
    assert!(
        eventually(Duration::from_secs(10), || !alive(executor)),
        "the idle executor outlived its agent"
    );
}

/// `wasmos:task/spawn` from a task in the executor: its calls go through the agent.
#[test]
fn a_task_in_the_executor_starts_children() {
    let (s, agent) = setup();
    let c = &s.c;
    let fanout = sample("fanout");
    let out = c
        .cli(&[
            "run",
            "--constraint",
            "proc=own",
            "--cpu",
            "20m",
            "--mem",
            "24Mi",
            "--timeout",
            "90s",
            fanout.to_str().unwrap(),
            "--",
            "sum",
            "1",
            "100",
            "25",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        agent.log()
    );
    let t1 = task(c, "t-1");
    assert_eq!(t1["agent"], "rec-1", "{t1}");
    let sum = t1["status"]["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "sum"))
        .map(|r| serde_json::from_value::<Vec<u8>>(r["value"].clone()).unwrap())
        .unwrap_or_else(|| panic!("no sum: {t1}"));
    assert_eq!(String::from_utf8(sum).unwrap(), "5050", "{t1}");
    let children = c.json(&["task", "list", "-o", "json"]).unwrap();
    assert!(
        children.as_array().unwrap().len() > 1,
        "no children ran: {children}"
    );
}
