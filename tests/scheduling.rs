//! The offer cycle through a real cluster: weighted DRF between roles as resources free up,
//! static reservations held for their role, best-effort tasks on revocable resources and their
//! preemption, role and quota commands, and tenants kept to their own roles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, assert_clean_error, sample, text};

/// Starts `wasmos run FLAGS SAMPLE -- ARGS` in the background.
fn spawn_run(c: &DevCluster, flags: &[&str], task: &str, args: &[&str]) -> Child {
    let mut cmd = c.cmd(&["run"]);
    cmd.args(flags)
        .arg(sample(task))
        .arg("--")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.spawn().unwrap()
}

/// Running tasks by role, from `task list`.
fn running_by_role(c: &DevCluster) -> std::collections::BTreeMap<String, usize> {
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for t in tasks.as_array().unwrap() {
        if t["status"]["state"] == "Running" {
            let role = t["spec"]["role"].as_str().unwrap_or("?").to_string();
            *out.entry(role).or_insert(0) += 1;
        }
    }
    out
}

/// Waits until `role` runs `n` tasks, then checks that it stays at `n` (more are waiting).
fn assert_runs_exactly(c: &DevCluster, role: &str, n: usize) {
    wait_for(&format!("{n} tasks of role {role} to run"), 20, || {
        (running_by_role(c).get(role) == Some(&n)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running_by_role(c).get(role), Some(&n));
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills every live task (the `wasmos run` processes only watch them).
fn kill_tasks(c: &DevCluster) {
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    for t in tasks.as_array().unwrap() {
        if matches!(
            t["status"]["state"].as_str(),
            Some("Staging" | "Starting" | "Running")
        ) {
            let id = format!("t-{}", t["id"]);
            let _ = c.cli(&["task", "kill", &id]);
        }
    }
}

fn kill_all(mut children: Vec<Child>) {
    for ch in &mut children {
        let _ = ch.kill();
        let _ = ch.wait();
    }
}

#[test]
fn freed_resources_go_to_roles_by_weighted_drf() {
    let c = DevCluster::start_with(1, &["--agent-cpu", "2"]).unwrap();
    let set = c.cli(&["role", "set", "acme", "--weight", "3"]).unwrap();
    assert!(set.status.success(), "{}", text(&set.stderr));
    // Fill the agent (4 x 500m) with tasks that end one after another, 4 to 7 s from now.
    let fill: Vec<Child> = (0..4)
        .map(|i| {
            let timeout = format!("{}s", 4 + i);
            spawn_run(&c, &["--timeout", &timeout], "hostile", &["sleep"])
        })
        .collect();
    wait_for("the agent to be full", 20, || {
        (running_by_role(&c).get("default") == Some(&4)).then_some(())
    });
    // Both roles queue more than the agent holds.
    let mut waiting = Vec::new();
    for role in ["acme", "beta"] {
        for _ in 0..4 {
            waiting.push(spawn_run(
                &c,
                &["--role", role, "--timeout", "60s"],
                "hostile",
                &["sleep"],
            ));
        }
    }
    wait_for("the waiting tasks to be submitted", 20, || {
        let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
        (wasmos_tests::count_in_state(&tasks, "Staging") == 8).then_some(())
    });
    // Each freed 500m goes to the role furthest below its weighted share: acme (weight 3)
    // ends with 3 tasks, beta with 1. Equal weights would have given 2 and 2.
    let shares = wait_for("the fill tasks to end", 30, || {
        let r = running_by_role(&c);
        (!r.contains_key("default") && r.values().sum::<usize>() == 4).then_some(r)
    });
    assert_eq!(shares.get("acme"), Some(&3), "{shares:?}");
    assert_eq!(shares.get("beta"), Some(&1), "{shares:?}");
    let roles = c.json(&["role", "list", "-o", "json"]).unwrap();
    let acme = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["role"] == "acme")
        .unwrap()
        .clone();
    assert_eq!(acme["weight_milli"], 3000, "{roles}");
    assert_eq!(acme["allocated"]["cpu_millis"], 1500, "{roles}");
    assert_eq!(acme["share_ppm"], 750_000, "{roles}");
    let table = c.cli(&["role", "list"]).unwrap();
    assert!(
        text(&table.stdout).contains("75.0%"),
        "{}",
        text(&table.stdout)
    );
    kill_all(fill);
    kill_all(waiting);
}

#[test]
fn reservations_are_held_for_their_role() {
    let c = DevCluster::start_with(
        1,
        &[
            "--agent-cpu",
            "2",
            "--agent-reserve",
            "acme:cpu=1,mem=512MiB",
        ],
    )
    .unwrap();
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    assert_eq!(
        agents[0]["reserved"]["acme"]["cpu_millis"], 1000,
        "{agents}"
    );
    // Other roles get the unreserved core only: two of three 500m tasks run.
    let others: Vec<Child> = (0..3)
        .map(|_| spawn_run(&c, &["--timeout", "60s"], "hostile", &["sleep"]))
        .collect();
    assert_runs_exactly(&c, "default", 2);
    // acme (and roles under it) runs at once on its reservation.
    let out = c
        .run(&["--role", "acme/batch", "--cpu", "1"], "hello", &["mine"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("args: mine"));
    // More than is reserved and free together is never offered: it waits, then times out.
    let table = c.cli(&["agent", "list"]).unwrap();
    assert!(
        text(&table.stdout).contains("acme: 1 512MiB"),
        "{}",
        text(&table.stdout)
    );
    // Malformed reservations are refused, naming the flag.
    let bad = wasmos_tests::wasmos_cmd(
        &c.config(),
        &["dev", "--agent-reserve", "Acme:cpu=1", "--agents", "0"],
    )
    .output()
    .unwrap();
    assert_clean_error(&bad, "--agent-reserve");
    kill_all(others);
}

#[test]
fn best_effort_tasks_borrow_unused_resources_and_are_preempted() {
    let c = DevCluster::start_with(1, &["--agent-cpu", "1"]).unwrap();
    // The owner holds the whole core but idles for 4 s, then spins.
    let owner = spawn_run(&c, &["--cpu", "1", "--timeout", "60s"], "spin", &["4"]);
    wait_for("the owner to run", 20, || {
        (running_by_role(&c).get("default") == Some(&1)).then_some(())
    });
    // Nothing is free, but the idle core is lent as revocable to a best-effort task.
    let borrower = c
        .cmd(&[
            "run",
            "--qos",
            "best-effort",
            "--cpu",
            "500m",
            "--mem",
            "16MiB",
            "--timeout",
            "60s",
        ])
        .arg(sample("hostile"))
        .args(["--", "sleep"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let out = borrower.wait_with_output().unwrap();
    // Once the owner spins, its use grows into what was lent, and the borrower is stopped.
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("preempted"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let be = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["spec"]["qos"] == "BestEffort")
        .unwrap()
        .clone();
    assert_eq!(be["status"]["reason"], "Preempted", "{be}");
    // The owner goes on.
    assert_eq!(running_by_role(&c).get("default"), Some(&1));
    kill_all(vec![owner]);
}

#[test]
fn roles_and_quotas_are_set_by_operators_and_tenants_keep_to_their_own() {
    let c = DevCluster::start(1).unwrap();
    let ok = c
        .cli(&[
            "role",
            "set",
            "acme",
            "--weight",
            "2",
            "--guarantee",
            "cpu=500m,mem=128MiB",
            "--limit",
            "cpu=1",
        ])
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let roles = c.json(&["role", "list", "-o", "json"]).unwrap();
    let acme = &roles[0];
    assert_eq!(acme["role"], "acme", "{roles}");
    assert_eq!(acme["guarantee"]["cpu_millis"], 500, "{roles}");
    assert_eq!(acme["limit"]["cpu_millis"], 1000, "{roles}");
    // Refused with the reason: a guarantee over the limit, a bad weight or role, no setting.
    let bad = c
        .cli(&["role", "set", "acme", "--guarantee", "cpu=2"])
        .unwrap();
    assert_clean_error(&bad, "exceeds limit");
    for (args, says) in [
        (&["role", "set", "acme", "--weight", "0"][..], "--weight"),
        (&["role", "set", "Acme", "--weight", "1"][..], "role path"),
        (&["role", "set", "acme"][..], "nothing to change"),
        (
            &["role", "set", "acme", "--limit", "cpu=lots"][..],
            "--limit",
        ),
    ] {
        assert_clean_error(&c.cli(args).unwrap(), says);
    }
    // The limit holds: acme never runs more than 1 core at once.
    let two: Vec<Child> = (0..3)
        .map(|_| {
            spawn_run(
                &c,
                &["--role", "acme", "--cpu", "500m", "--timeout", "60s"],
                "hostile",
                &["sleep"],
            )
        })
        .collect();
    assert_runs_exactly(&c, "acme", 2);
    // A task larger than the limit could never run: it ends unschedulable, saying why.
    let out = c
        .run(&["--role", "acme", "--cpu", "2"], "hello", &[])
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("(unschedulable)") && err.contains("role acme's limit"),
        "{err}"
    );

    // A tenant runs under its own role by default, may use roles under it, nothing else.
    let tenant = c.user_config("wasmos://tenant/acme/alice");
    let run = |flags: &[&str]| {
        let mut cmd = wasmos_tests::wasmos_cmd(&tenant, &["run"]);
        cmd.args(flags)
            .args(["--timeout", "20s"])
            .arg(sample("hello"));
        cmd.output().unwrap()
    };
    assert_clean_error(&run(&["--role", "beta"]), "is not yours");
    assert_clean_error(
        &wasmos_tests::wasmos_with(&tenant, &["role", "set", "acme", "--weight", "5"]),
        "only operators",
    );
    let mine = wasmos_tests::wasmos_with(&tenant, &["role", "list", "-o", "json"]);
    let mine: serde_json::Value = serde_json::from_slice(&mine.stdout).unwrap();
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|r| r["role"].as_str().unwrap().starts_with("acme")),
        "{mine}"
    );
    kill_tasks(&c);
    kill_all(two);
    // With acme's tasks gone, the tenant's own run fits under the limit again.
    wait_for("acme's tasks to end", 30, || {
        (!running_by_role(&c).contains_key("acme")).then_some(())
    });
    let out = run(&["--role", "acme/etl"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn burstable_tasks_use_spare_memory_up_to_their_limit() {
    let c = DevCluster::start(1).unwrap();
    // Runs the memory hog with `flags`; its exit code and the most memory it held.
    let hog = |flags: &[&str]| {
        let out = c.run(flags, "hog", &[]).unwrap();
        let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
        let last = tasks.as_array().unwrap().last().unwrap().clone();
        (out, last["status"]["peak_mem_bytes"].as_u64().unwrap_or(0))
    };
    // Allocated 16 MiB, allowed 64: the hog grows past its request to the limit.
    let (out, peak) = hog(&[
        "--qos",
        "burstable",
        "--mem",
        "16MiB",
        "--mem-limit",
        "64MiB",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("memory_limit"));
    assert!(peak > 48 << 20 && peak <= 64 << 20, "peak {peak}");
    // A guaranteed task with the same request stops at it.
    let (out, peak) = hog(&["--mem", "16MiB"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(peak <= 16 << 20, "peak {peak}");
    // Limits are for burstable tasks, and not below the request.
    assert_clean_error(&hog(&["--mem-limit", "64MiB"]).0, "burstable");
    let (out, _) = hog(&[
        "--qos",
        "burstable",
        "--mem",
        "16MiB",
        "--mem-limit",
        "8MiB",
    ]);
    assert_clean_error(&out, "below the request");
}

/// `--min-offer` lowers the least an offer carries: a task smaller than the default minimum
/// (10m, 32 MiB) runs in an agent's leftover below it, which is otherwise never offered; a
/// minimum that names other kinds, or zero, is refused with a clear error.
#[test]
fn a_lower_minimum_offer_places_tasks_in_small_leftovers() {
    let c = DevCluster::start_with(
        1,
        &[
            "--agent-cpu",
            "1",
            "--agent-mem",
            "256MiB",
            "--min-offer",
            "cpu=1m,mem=1MiB",
        ],
    )
    .unwrap();
    let big = c
        .run(
            &["-d", "--cpu", "995m", "--mem", "16MiB", "--timeout", "5m"],
            "hostile",
            &["sleep"],
        )
        .unwrap();
    assert!(big.status.success(), "{}", text(&big.stderr));
    wait_for("the big task to run", 20, || {
        (running_by_role(&c).values().sum::<usize>() == 1).then_some(())
    });
    // 5m is what is left of the agent's CPU: below the default minimum of 10m.
    let small = c
        .run(
            &["-d", "--cpu", "5m", "--mem", "4MiB", "--timeout", "5m"],
            "hostile",
            &["sleep"],
        )
        .unwrap();
    assert!(small.status.success(), "{}", text(&small.stderr));
    wait_for("the small task to run in the leftover", 20, || {
        (running_by_role(&c).values().sum::<usize>() == 2).then_some(())
    });
    kill_tasks(&c);

    let dir = tempfile::tempdir().unwrap();
    for bad in ["gpu=1", "cpu=0,mem=1MiB", "cpu=1m"] {
        let out = std::process::Command::new(wasmos_tests::wasmos_bin())
            .args(["dev", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--min-offer", bad])
            .output()
            .unwrap();
        assert_clean_error(&out, "--min-offer");
    }
}
