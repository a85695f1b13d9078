//! `wasmos service update`: a service's instances are replaced by ones of its new definition,
//! never more than max-unavailable of them down at once, watched from outside while it rolls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use wasmos_tests::{DevCluster, assert_clean_error, ok, service_file, text, wasmos_cmd};

/// The service's live tasks: (id, state, cpu in millicores).
fn instances(c: &DevCluster) -> Vec<(u64, String, u64)> {
    let tasks: Value = c
        .json(&["task", "list", "--state", "live", "-o", "json"])
        .unwrap();
    tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap_or_default(),
                t["status"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                t["spec"]["resources"]["cpu_millis"]
                    .as_u64()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_service_rolls_to_its_new_definition_one_instance_at_a_time() {
    let c = DevCluster::start_with(2, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = service_file(dir.path(), "v1.toml", "spin", 4, "200m", "");
    let id = ok(&c.cli(&["service", "run", &v1]).unwrap())
        .trim()
        .to_string();
    let running = |cpu: u64| {
        instances(&c)
            .iter()
            .filter(|(_, s, c)| s == "Running" && *c == cpu)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(200) < 4 {
        assert!(Instant::now() < deadline, "{:?}", instances(&c));
        std::thread::sleep(Duration::from_millis(100));
    }
    let first: Vec<u64> = instances(&c).iter().map(|(t, _, _)| *t).collect();

    // Only the owner's tenant sees it; an unknown group is named.
    let other = c.user_config("wasmos://tenant/other/ci");
    let v2 = service_file(dir.path(), "v2.toml", "spin", 4, "300m", "");
    let refused = wasmos_cmd(&other, &["service", "update", &id, &v2])
        .output()
        .unwrap();
    assert_clean_error(&refused, "of yours");
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&v2)
            .unwrap()
            .replace("name = \"web\"\nbundle", "name = \"api\"\nbundle"),
    )
    .unwrap();
    assert_clean_error(
        &c.cli(&["service", "update", &id, wrong.to_str().unwrap()])
            .unwrap(),
        "has no group `api`",
    );

    // The update: 300m instead of 200m, at most 2 down at once. Watched until all run the new
    // definition, at least 2 of the 4 run at every look.
    let said = ok(&c
        .cli(&["service", "update", &id, &v2, "--max-unavailable", "2"])
        .unwrap());
    assert!(said.contains("rolling out"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = instances(&c);
        let up = now.iter().filter(|(_, s, _)| s == "Running").count() as u32;
        assert!(up >= 2, "more than 2 down: {now:?}");
        if running(300) == 4 && now.len() == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "not rolled out: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every first instance was stopped by the update, none failed.
    for t in first {
        let t = c
            .json(&["task", "show", &format!("t-{t}"), "-o", "json"])
            .unwrap();
        assert_eq!(t["status"]["state"], "Killed", "{t}");
    }
    let status = text(&c.cli(&["service", "status", &id]).unwrap().stdout);
    assert!(!status.contains("failed"), "{status}");
}
