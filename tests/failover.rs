//! A three-master `wasmos dev --masters 3` group (every master and agent its own process) whose
//! leader is killed with `kill -9` three times while tasks are submitted and running: each time
//! a new leader takes over, the killed master is restarted and catches up, and at the end every
//! submission the CLI saw acknowledged is recorded exactly once and ran to completion. Bundles
//! are on a majority of masters before their upload is acknowledged.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, sample, text};

#[test]
fn leader_killed_repeatedly_while_submitting_loses_no_acknowledged_task() {
    let g = DevCluster::start_with(2, &["--masters", "3"]).unwrap();
    let wasm = sample("exit-code");

    // An upload is acknowledged once a majority of masters hold the bytes.
    let out = g.cmd(&["bundle", "push"]).arg(&wasm).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = text(&out.stdout).trim().to_string();
    let copies = (1..=3)
        .filter(|i| {
            g.dir
                .path()
                .join(format!("master-{i}/bundles/{hash}.wasm"))
                .is_file()
        })
        .count();
    assert!(copies >= 2, "the bundle is on {copies} of 3 masters");

    // Submissions, one after the other, for as long as the leaders are being killed.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let submitter = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        let cmd_for = {
            let config = g.config();
            let wasm = wasm.clone();
            move || {
                let mut c = wasmos_tests::wasmos_cmd(&config, &["run", "-d", "--timeout", "2m"]);
                c.arg(&wasm).args(["--", "0", "700"]);
                c
            }
        };
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = cmd_for().output().unwrap();
                if out.status.success() {
                    acked
                        .lock()
                        .unwrap()
                        .push(text(&out.stdout).trim().to_string());
                } else {
                    failed.lock().unwrap().push(text(&out.stderr));
                }
            }
        })
    };

    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500));
        let (leader, _) = g.leader(None).unwrap();
        let pid = g.master_pid(leader).unwrap();
        wasmos_tests::kill_dash_nine(pid);
        let killed = Instant::now();
        let (next, st) = g.leader(Some(leader)).unwrap();
        eprintln!(
            "round {round}: killed master {leader}; master {next} leads (term {}) after {:?}",
            st["term"],
            killed.elapsed()
        );
        g.wait_master_back(leader, pid).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    submitter.join().unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "submissions failed: {failed:#?}");
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 5, "only {} submissions", acked.len());

    // Every acknowledged task is recorded once, and runs to the end with its result recorded.
    let deadline = Instant::now() + Duration::from_secs(90);
    let tasks = loop {
        let tasks = g.json(&["task", "list", "-o", "json"]).unwrap();
        let all = tasks.as_array().unwrap();
        let done = all.iter().all(|t| {
            !matches!(
                t["status"]["state"].as_str(),
                Some("Staging" | "Starting" | "Running")
            )
        });
        if done {
            break tasks;
        }
        assert!(
            Instant::now() < deadline,
            "tasks did not end: {tasks:#}\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let recorded: BTreeSet<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("t-{}", t["id"]))
        .collect();
    assert_eq!(
        recorded, acked,
        "recorded tasks differ from acknowledged ones"
    );
    assert_eq!(tasks.as_array().unwrap().len(), acked.len());
    for t in tasks.as_array().unwrap() {
        assert_eq!(t["status"]["state"], "Finished", "{t:#}");
        assert_eq!(t["status"]["exit_code"], 0, "{t:#}");
    }
    eprintln!("{} submissions acknowledged and completed", acked.len());

    // The agents followed each new leader by asking the other masters once theirs went
    // silent, not by waiting out the connection's idle timeout.
    for i in 1..=2 {
        let log = std::fs::read_to_string(g.dir.path().join(format!("logs/agent-{i}.log")))
            .unwrap_or_default();
        let followed = log.matches("went silent and").count();
        assert!(
            followed >= 1,
            "agent {i} never followed a new leader:\n{log}"
        );
        assert!(
            !log.contains("timed out"),
            "agent {i} waited for a timeout:\n{log}"
        );
    }
}
