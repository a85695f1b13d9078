//! Fault domains, with real processes: agents carry a zone (`wasmos dev --agent-zones`,
//! `wasmos agent --zone`); a service spread over zones (`spread = "zone"`) puts as many
//! instances in a zone of one agent as in a zone of three; `--constraint zone=b` lands in that
//! zone; when the whole zone is lost (`kill -9` of its agent), its instances run again in the
//! zone left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use wasmos_tests::{DevCluster, eventually, kill_dash_nine, ok, sample};

/// The agents of the running tasks, sorted.
fn running_on(c: &DevCluster) -> Vec<String> {
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let mut on: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"]["state"] == "Running")
        .map(|t| t["agent"].as_str().unwrap_or("").to_string())
        .collect();
    on.sort_unstable();
    on
}

#[test]
fn a_zone_spread_service_balances_zones_and_outlives_losing_one() {
    // Zone a: three agents in the dev process; zone b: one agent process of its own.
    let c = DevCluster::start_with(
        3,
        &[
            "--agent-zones",
            "a",
            "--agent-timeout",
            "3s",
            "--agent-cpu",
            "2",
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = c.start_agent(
        "zone-b-1",
        dir.path(),
        &[
            "--cpu", "2", "--mem", "1GiB", "--region", "dev", "--zone", "b",
        ],
    );
    let zones = || {
        let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
        let mut z: Vec<String> = agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "Active")
            .map(|a| format!("{}={}", a["id"].as_str().unwrap(), a["attributes"]["zone"]))
            .collect();
        z.sort_unstable();
        z
    };
    assert!(
        eventually(Duration::from_secs(30), || zones().len() == 4),
        "{:?} {}",
        zones(),
        agent.log()
    );
    assert_eq!(
        zones(),
        [
            "agent-1=\"a\"",
            "agent-2=\"a\"",
            "agent-3=\"a\"",
            "zone-b-1=\"b\""
        ]
    );

    // A constraint on the zone lands there.
    let out = c
        .run(&["--constraint", "zone=b"], "hello", &["zoned"])
        .unwrap();
    ok(&out);
    let t1 = c.json(&["task", "show", "t-1", "-o", "json"]).unwrap();
    assert_eq!(t1["agent"], "zone-b-1", "{t1}");

    // Four instances spread over the zones: two in b, two over the three agents of a (spread
    // over agents alone would have put one on each of the four).
    let file = dir.path().join("svc.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"zoned\"\n[[group]]\nname = \"web\"\nbundle = \"{}\"\nargs = [\"sleep\", \"600000\"]\ncount = 4\ncpu = \"100m\"\nmem = \"24Mi\"\ntimeout = \"10m\"\nbackoff = \"200ms\"\nspread = \"zone\"\n",
            sample("fanout").display()
        ),
    )
    .unwrap();
    ok(&c.cli(&["service", "run", file.to_str().unwrap()]).unwrap());
    let mut on = Vec::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            on = running_on(&c);
            on.len() == 4
        }),
        "{on:?}"
    );
    let in_b = on.iter().filter(|a| *a == "zone-b-1").count();
    assert_eq!(in_b, 2, "two of four in zone b: {on:?}");

    // Zone b is lost whole: its instances run again in zone a.
    kill_dash_nine(u64::from(agent.id()));
    assert!(
        eventually(Duration::from_secs(40), || {
            on = running_on(&c);
            on.len() == 4 && on.iter().all(|a| a.starts_with("agent-"))
        }),
        "{on:?}"
    );
}
