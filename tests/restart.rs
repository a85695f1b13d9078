//! State survives a hard kill: the dev process is killed with no chance to clean up, started again
//! on the same data dir, and the earlier tasks are still there with their final states. And the
//! stop signals (SIGTERM from systemd, launchd or `docker stop`; Ctrl-C's SIGINT) end each
//! process cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, eventually, send_signal, text, wait_exit};

#[test]
fn tasks_survive_kill_dash_nine() {
    let mut c = DevCluster::start(1).unwrap();
    assert_eq!(
        c.run(&[], "exit-code", &["7"]).unwrap().status.code(),
        Some(7)
    );
    assert!(c.run(&[], "hello", &["before"]).unwrap().status.success());
    assert_eq!(
        c.run(&["--mem", "16MiB"], "hog", &[])
            .unwrap()
            .status
            .code(),
        Some(125)
    );
    let before = c.json(&["task", "list", "-o", "json"]).unwrap();

    c.kill_hard().unwrap();
    c.spawn().unwrap();

    let after = c.json(&["task", "list", "-o", "json"]).unwrap();
    assert_eq!(before, after, "task records changed across the restart");
    let after = after.as_array().unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(after[0]["status"]["exit_code"], 7);
    assert_eq!(after[1]["status"]["state"], "Finished");
    assert_eq!(after[2]["status"]["reason"], "MemoryLimit");
    // Output was kept too.
    let logs = c.cli(&["logs", "t-2"]).unwrap();
    assert!(text(&logs.stdout).contains("args: before"));

    // The cluster works after the restart, and task ids keep counting up.
    let out = c.run(&[], "hello", &["after"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = c.json(&["task", "show", "t-4", "-o", "json"]).unwrap();
    assert_eq!(shown["spec"]["args"][0], "after");
}

/// The task's status; null until it is submitted.
fn task_state(c: &DevCluster, id: &str) -> serde_json::Value {
    c.json(&["task", "show", id, "-o", "json"])
        .map(|t| t["status"].clone())
        .unwrap_or_default()
}

/// SIGINT to `wasmos run` kills its task; SIGTERM to an agent stops its tasks and tells the
/// master, which sees it gone at once instead of after the agent timeout (15 s); SIGTERM to
/// `wasmos dev` ends it with status 0, its state intact for the next start.
#[test]
fn stop_signals_end_clients_agents_and_the_cluster_cleanly() {
    // The dev cluster's own agent stays; the tasks here go to the separate agent process.
    let mut c = DevCluster::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = c.start_agent(
        "lin-1",
        dir.path(),
        &["--cpu", "2", "--mem", "1GiB", "--attr", "proc=own"],
    );
    let active = || {
        c.json(&["agent", "list", "-o", "json"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "lin-1" && a["state"] == "Active")
    };
    assert!(
        eventually(Duration::from_secs(30), active),
        "{}",
        agent.log()
    );

    // Ctrl-C on `wasmos run`: the task is killed, and the client says so.
    let spin = wasmos_tests::sample("spin");
    let mut run = c.cmd(&["run", "--constraint", "proc=own"]);
    run.arg(&spin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut run = run.spawn().unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        task_state(&c, "t-1")["state"] == "Running"
    }));
    send_signal(u64::from(run.id()), "INT");
    let status = wait_exit(&mut run, Duration::from_secs(10)).expect("wasmos run ignored SIGINT");
    let mut said = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(125), "{said}");
    assert!(said.contains("interrupted; killing t-1"), "{said}");
    assert_eq!(task_state(&c, "t-1")["state"], "Killed");

    // SIGTERM to the agent: it exits 0 and the master knows at once.
    let detached = c
        .cli(&[
            "run",
            "--detach",
            "--constraint",
            "proc=own",
            spin.to_str().unwrap(),
        ])
        .unwrap();
    assert!(detached.status.success(), "{}", text(&detached.stderr));
    assert!(eventually(Duration::from_secs(30), || {
        task_state(&c, "t-2")["state"] == "Running"
    }));
    let stopped_at = Instant::now();
    send_signal(u64::from(agent.id()), "TERM");
    let status = wait_exit(agent.child(), Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        agent.log()
    );
    assert!(
        eventually(Duration::from_secs(5), || !active()),
        "the master still lists the stopped agent as active"
    );
    assert!(
        eventually(Duration::from_secs(5), || task_state(&c, "t-2")["state"]
            != "Running"),
        "{}",
        task_state(&c, "t-2")
    );
    assert!(
        stopped_at.elapsed() < Duration::from_secs(12),
        "took {:?}: the agent timeout, not the goodbye",
        stopped_at.elapsed()
    );
    // Reported by the agent on its way out, not declared lost by the master.
    let t2 = task_state(&c, "t-2");
    assert_eq!(
        (&t2["state"], &t2["reason"]),
        (&"Killed".into(), &"AgentStopped".into()),
        "{t2}"
    );

    // SIGTERM to `wasmos dev`: status 0, and the next start has every task as it was.
    let status = c.stop_with("TERM", Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        c.log_text()
    );
    c.spawn().unwrap();
    assert_eq!(task_state(&c, "t-1")["state"], "Killed");
    assert_eq!(task_state(&c, "t-2"), t2);
}
