//! Live resource changes: an operator resizes a running agent (`wasmos agent set`) with tasks
//! on it; what it offers follows at once, its tasks keep running, nothing new is placed beyond
//! the new total, and the change outlives a whole-cluster restart until `--reset`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use wasmos_tests::{DevCluster, assert_clean_error, eventually, ok, sample, wasmos_cmd};

fn agent(c: &DevCluster) -> Value {
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    agents[0].clone()
}

fn state(c: &DevCluster, task: &str) -> String {
    let t = c.json(&["task", "show", task, "-o", "json"]).unwrap();
    let placed = if t["agent"].is_null() {
        ", unplaced"
    } else {
        ""
    };
    format!(
        "{}{placed}",
        t["status"]["state"].as_str().unwrap_or_default()
    )
}

#[test]
fn an_agent_is_resized_live_with_its_tasks_running() {
    let mut c =
        DevCluster::start_with(1, &["--agent-cpu", "2", "--agent-reserve", "team:cpu=200m"])
            .unwrap();
    let spin = sample("spin");
    let spin = spin.to_str().unwrap();
    ok(&c
        .cli(&["run", "--detach", "--cpu", "1", "--timeout", "5m", spin])
        .unwrap());
    assert!(eventually(Duration::from_secs(20), || state(&c, "t-1") == "Running"));

    // Only operators; an unknown agent is named; reservations must still fit.
    let tenant = c.user_config("wasmos://tenant/acme/ci");
    let refused = wasmos_cmd(&tenant, &["agent", "set", "agent-1", "--cpu", "4"])
        .output()
        .unwrap();
    assert_clean_error(&refused, "only operators may resize agents");
    assert_clean_error(
        &c.cli(&["agent", "set", "agent-9", "--cpu", "4"]).unwrap(),
        "unknown agent agent-9",
    );
    assert_clean_error(
        &c.cli(&["agent", "set", "agent-1", "--cpu", "100m"])
            .unwrap(),
        "reserved for roles",
    );
    assert_clean_error(
        &c.cli(&["agent", "set", "agent-1"]).unwrap(),
        "nothing to set",
    );

    // Shrunk to 1.5 cores with 1 in use: a second 1-core task is not placed.
    let said = ok(&c
        .cli(&["agent", "set", "agent-1", "--cpu", "1500m"])
        .unwrap());
    assert!(said.contains("now offers cpu 1500m"), "{said}");
    let a = agent(&c);
    assert_eq!(a["total"]["cpu_millis"], 1500, "{a}");
    assert!(a["resized"].as_bool().unwrap());
    let table = ok(&c.cli(&["agent", "list"]).unwrap());
    assert!(
        table.contains("active, resized") && table.contains("1/1500m"),
        "{table}"
    );
    ok(&c
        .cli(&["run", "--detach", "--cpu", "1", "--timeout", "5m", spin])
        .unwrap());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&c, "t-2"), "Staging, unplaced");
    assert_eq!(state(&c, "t-1"), "Running");

    // Below what its task holds: the task keeps running, and the waiting one keeps waiting
    // (the agent could run it once given its cores back).
    let said = ok(&c
        .cli(&["agent", "set", "agent-1", "--cpu", "500m"])
        .unwrap());
    assert!(said.contains("they keep running"), "{said}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(state(&c, "t-2"), "Staging, unplaced");
    assert_eq!(state(&c, "t-1"), "Running");

    // The resize is the operator's: the agent's restart (with the whole cluster) keeps it.
    c.stop_with("TERM", Duration::from_secs(20));
    c.spawn().unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        let a = agent(&c);
        a["state"] == "Active" && a["total"]["cpu_millis"] == 500
    }));

    // More than it advertises is refused: its host has what it says it has.
    assert_clean_error(
        &c.cli(&["agent", "set", "agent-1", "--cpu", "3"]).unwrap(),
        "it can offer less, not more",
    );
    // Given its 2 cores back: the waiting task is placed at last, and an 800m one beside it
    // (200m is reserved). (The restart stopped t-1 with its agent.)
    ok(&c.cli(&["agent", "set", "agent-1", "--cpu", "2"]).unwrap());
    ok(&c
        .cli(&["run", "--detach", "--cpu", "800m", "--timeout", "5m", spin])
        .unwrap());
    let both = eventually(Duration::from_secs(20), || {
        state(&c, "t-2") == "Running" && state(&c, "t-3") == "Running"
    });
    assert!(
        both,
        "{} {} {}",
        state(&c, "t-2"),
        state(&c, "t-3"),
        agent(&c)
    );
    assert_eq!(agent(&c)["used"]["cpu_millis"], 1800);

    // Reset: what the agent advertises again.
    let said = ok(&c.cli(&["agent", "set", "agent-1", "--reset"]).unwrap());
    assert!(said.contains("now offers cpu 2 "), "{said}");
    let a = agent(&c);
    assert!(!a["resized"].as_bool().unwrap(), "{a}");
}
