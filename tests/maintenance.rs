//! A maintenance window on real agents: the job framework of a service accepts the inverse
//! offer and moves its instance away before the start; the built-in framework of `wasmos run`
//! ignores it, and its tasks there are stopped with reason `maintenance` when the window
//! starts; nothing is placed there during it, and the agent is offered again at its end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use wasmos_tests::{
    DevCluster, assert_clean_error, eventually, ok, sample, service_file, wasmos_cmd,
};

fn tasks(c: &DevCluster) -> Vec<Value> {
    let all = c.json(&["task", "list", "-o", "json"]).unwrap();
    all.as_array().unwrap().clone()
}

fn on(t: &Value) -> &str {
    t["agent"].as_str().unwrap_or_default()
}

#[test]
fn a_window_moves_what_accepts_and_stops_what_does_not() {
    let c = DevCluster::start_with(2, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = service_file(dir.path(), "svc.toml", "spin", 2, "100m", "");
    ok(&c.cli(&["service", "run", &svc]).unwrap());
    let running = |c: &DevCluster| -> Vec<Value> {
        tasks(c)
            .into_iter()
            .filter(|t| t["status"]["state"] == "Running")
            .collect()
    };
    assert!(eventually(Duration::from_secs(30), || running(&c).len() == 2));
    // Four 900m tasks of `wasmos run` fill both agents, two on each.
    let spin = sample("spin");
    for _ in 0..4 {
        let args = ["run", "--detach", "--cpu", "900m", "--timeout", "5m"];
        ok(&c.cmd(&args).arg(&spin).output().unwrap());
    }
    assert!(eventually(Duration::from_secs(30), || running(&c).len() == 6));
    let runs_on_2: Vec<String> = running(&c)
        .iter()
        .filter(|t| on(t) == "agent-2" && t["spec"]["resources"]["cpu_millis"] == 900)
        .map(|t| t["id"].as_u64().unwrap().to_string())
        .collect();
    assert_eq!(runs_on_2.len(), 2);

    // Operators only; agents and windows checked.
    let tenant = c.user_config("wasmos://tenant/acme/ci");
    let refused = wasmos_cmd(
        &tenant,
        &["maintenance", "schedule", "agent-2", "--duration", "1m"],
    )
    .output()
    .unwrap();
    assert_clean_error(&refused, "only operators may schedule maintenance");
    assert_clean_error(
        &c.cli(&["maintenance", "schedule", "agent-9", "--duration", "1m"])
            .unwrap(),
        "unknown agent agent-9",
    );
    assert_clean_error(
        &c.cli(&["maintenance", "schedule", "agent-2", "--duration", "30days"])
            .unwrap(),
        "from a second to a week",
    );

    let said = ok(&c
        .cli(&[
            "maintenance",
            "schedule",
            "agent-2",
            "--start",
            "12s",
            "--duration",
            "6s",
        ])
        .unwrap());
    assert!(said.contains("scheduled"), "{said}");
    // Before the start: the service's framework accepted and moved its instance to agent-1;
    // the run tasks are still there.
    let moved = eventually(Duration::from_secs(11), || {
        let r = running(&c);
        let web: Vec<&Value> = r
            .iter()
            .filter(|t| t["spec"]["resources"]["cpu_millis"] == 100)
            .collect();
        web.len() == 2 && web.iter().all(|t| on(t) == "agent-1")
    });
    assert!(
        moved,
        "{:?} {}",
        tasks(&c)
            .iter()
            .map(|t| format!(
                "{} {} {} {}",
                t["id"],
                t["status"]["state"],
                on(t),
                t["spec"]["resources"]["cpu_millis"]
            ))
            .collect::<Vec<_>>(),
        c.json(&["maintenance", "list", "-o", "json"]).unwrap()
    );
    let windows = c.json(&["maintenance", "list", "-o", "json"]).unwrap();
    assert_eq!(windows[0][0], "agent-2", "{windows}");
    assert_eq!(
        windows[0][1]["accepted"].as_array().unwrap().len(),
        1,
        "{windows}"
    );
    assert!(windows[0][1]["declined"].as_array().unwrap().is_empty());
    assert_eq!(windows[0][1]["active"], false);
    for t in &runs_on_2 {
        let t = c
            .json(&["task", "show", &format!("t-{t}"), "-o", "json"])
            .unwrap();
        assert_eq!(t["status"]["state"], "Running", "{t}");
    }

    // At the start: what stayed is stopped for maintenance, and the agent is drained.
    assert!(eventually(Duration::from_secs(10), || {
        runs_on_2.iter().all(|t| {
            let t = c
                .json(&["task", "show", &format!("t-{t}"), "-o", "json"])
                .unwrap();
            t["status"]["reason"] == "Maintenance"
        })
    }));
    let table = ok(&c.cli(&["agent", "list"]).unwrap());
    assert!(table.contains("in maintenance"), "{table}");
    // At its end: offered again, and the window gone.
    assert!(eventually(Duration::from_secs(15), || {
        let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["draining"] == false && a["maintenance"].is_null())
    }));
    let after = c.cli(&["maintenance", "list"]).unwrap();
    assert!(!ok(&after).contains("agent-2"));
}
