//! The agent's control loop is not starved by its tasks: with every offered core busy running
//! CPU-bound guests, heartbeats keep arriving and the master keeps answering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmos_tests::{DevCluster, sample};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn heartbeats_flow_while_every_core_runs_a_guest() {
    let c = DevCluster::start(1).unwrap();
    // The dev agent offers 2 cores: two whole-core spinners fill them.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            c.cmd(&["run", "--cpu", "1", "--timeout", "6s"])
                .arg(sample("spin"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Wait until both are running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
        let running = wasmos_tests::count_in_state(&tasks, "Running");
        if running == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spinners did not start: {tasks}\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // For three seconds of full load, the agent's last heartbeat is never older than 3 beats.
    let until = Instant::now() + Duration::from_secs(3);
    let mut worst = 0;
    while Instant::now() < until {
        let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
        let agent = &agents.as_array().unwrap()[0];
        assert_eq!(agent["state"], "Active", "{agent}");
        let age = now_ms().saturating_sub(agent["last_seen_ms"].as_u64().unwrap());
        worst = worst.max(age);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        worst < 3000,
        "heartbeat went stale for {worst} ms under load"
    );
    for mut s in spinners {
        assert_eq!(s.wait().unwrap().code(), Some(124));
    }
}
