//! Draining an agent for maintenance (`wasmos agent drain`), with real processes: a service's
//! instance there is asked to stop, killed with reason `maintenance` and run again on the
//! other agent; nothing new is placed on a drained agent, across a restart of the whole
//! cluster; only operators drain, an unknown agent is named; `undrain` offers it again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use wasmos_tests::{DevCluster, assert_clean_error, eventually, ok, sample, text, wasmos_cmd};

/// The running tasks, as (id, agent).
fn running(c: &DevCluster) -> Vec<(String, String)> {
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"]["state"] == "Running")
        .map(|t| {
            (
                format!("t-{}", t["id"]),
                t["agent"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until exactly `n` tasks run, on the agents `on` (sorted); what runs then.
fn wait_running(c: &DevCluster, on: &[&str]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    let reached = eventually(Duration::from_secs(30), || {
        seen = running(c);
        let mut agents: Vec<&str> = seen.iter().map(|(_, a)| a.as_str()).collect();
        agents.sort_unstable();
        agents == on
    });
    assert!(reached, "wanted tasks running on {on:?}, saw {seen:?}");
    seen
}

fn agent(c: &DevCluster, id: &str) -> Value {
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {agents}"))
}

#[test]
fn a_drained_agent_gets_no_tasks_and_its_work_moves_away() {
    let mut c = DevCluster::start_with(2, &["--agent-cpu", "2"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Instances that wait to be asked to stop: two fit on one agent, not three.
    let file = dir.path().join("svc.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"lingerers\"\n[[group]]\nname = \"linger\"\nbundle = \"{}\"\nargs = [\"linger\"]\ncount = 2\ncpu = \"900m\"\ntimeout = \"10m\"\nbackoff = \"200ms\"\n",
            sample("platform").display()
        ),
    )
    .unwrap();
    let out = c.cli(&["service", "run", file.to_str().unwrap()]).unwrap();
    let service = ok(&out).trim().to_string();
    let first = wait_running(&c, &["agent-1", "agent-2"]);
    let (on2, _) = first.iter().find(|(_, a)| a == "agent-2").unwrap().clone();

    // Only operators drain; an unknown agent is named.
    let tenant = c.user_config("wasmos://tenant/acme/ci");
    let refused = wasmos_cmd(&tenant, &["agent", "drain", "agent-2"])
        .output()
        .unwrap();
    assert_clean_error(&refused, "only operators may drain agents");
    assert_clean_error(
        &c.cli(&["agent", "drain", "agent-9"]).unwrap(),
        "unknown agent agent-9",
    );
    assert!(!agent(&c, "agent-2")["draining"].as_bool().unwrap());

    let said = ok(&c.cli(&["agent", "drain", "agent-2"]).unwrap());
    assert!(said.contains("1 running task asked to stop"), "{said}");
    // Its instance was asked to stop (it imports `cancellation`), stopped within its grace
    // period, and is recorded killed for maintenance; the service runs it on agent-1.
    let mut ended = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            ended = c.json(&["task", "show", &on2, "-o", "json"]).unwrap();
            ended["status"]["state"] == "Killed"
        }),
        "{ended}"
    );
    assert_eq!(ended["status"]["reason"], "Maintenance", "{ended}");
    assert_eq!(ended["status"]["results"][0]["name"], "stopped", "{ended}");
    wait_running(&c, &["agent-1", "agent-1"]);
    assert!(agent(&c, "agent-2")["draining"].as_bool().unwrap());
    let table = ok(&c.cli(&["agent", "list"]).unwrap());
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("agent-2") && l.contains("draining")),
        "{table}"
    );

    // A third instance does not fit on agent-1 and is not placed on agent-2.
    ok(&c
        .cli(&["service", "scale", &service, "linger", "3"])
        .unwrap());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        running(&c).len(),
        2,
        "placed on a drained agent: {:?}",
        running(&c)
    );

    // The drain outlives a restart of the whole cluster, masters and agents.
    assert!(c.stop_with("TERM", Duration::from_secs(30)).is_some());
    c.spawn().unwrap();
    assert!(agent(&c, "agent-2")["draining"].as_bool().unwrap());
    wait_running(&c, &["agent-1", "agent-1"]);

    // Undrained, it is offered again: the third instance runs there.
    let said = ok(&c.cli(&["agent", "undrain", "agent-2"]).unwrap());
    assert!(said.contains("no longer draining"), "{said}");
    wait_running(&c, &["agent-1", "agent-1", "agent-2"]);
    assert!(!agent(&c, "agent-2")["draining"].as_bool().unwrap());
    let events = ok(&c.cli(&["events", "--type", "agent", "-o", "json"]).unwrap());
    assert!(
        events.contains("Draining") && events.contains("Undrained"),
        "{}",
        text(events.as_bytes())
    );
}
