//! Built-in frameworks against real clusters: the shipped word-count map-reduce job gives
//! exact counts; a job survives `kill -9` of an agent in the middle (its tasks are lost after
//! the agent timeout and run again elsewhere); services keep, replace, scale and stop their
//! instances; bad job files are refused with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use wasmos_tests::words::{data_files, job_word_counts, naive_counts};
use wasmos_tests::{DevCluster, assert_clean_error, kill_dash_nine, text};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn the_wordcount_sample_job_gives_exact_counts() {
    let c = DevCluster::start(2).unwrap();
    let job_file = repo().join("sample-tasks/wordcount/job.toml");
    let out = c
        .cli(&["job", "submit", job_file.to_str().unwrap(), "--wait"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let shown = text(&out.stdout);
    assert!(shown.starts_with("job-1\n"), "{shown}");
    assert!(shown.contains("finished"), "{shown}");
    let want = naive_counts(&data_files(&repo().join("sample-tasks/wordcount/data")));
    assert_eq!(job_word_counts(&c, "job-1"), want);

    let status = c.json(&["job", "status", "job-1", "-o", "json"]).unwrap();
    assert_eq!(status["state"], "Finished");
    let groups = status["groups"].as_array().unwrap();
    assert_eq!(groups[0]["name"], "map");
    assert_eq!(groups[0]["done"], 4);
    assert_eq!(groups[1]["done"], 2);
    assert_eq!(groups[1]["pending"], 0);
    // Each reducer read only its partition of every map task's output.
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let reducers: Vec<&serde_json::Value> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["spec"]["args"][0] == "reduce")
        .collect();
    assert_eq!(reducers.len(), 2);
    for r in reducers {
        let part = r["spec"]["args"][2].as_str().unwrap();
        let inputs = r["spec"]["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 4);
        assert!(inputs.iter().all(|i| {
            i["guest"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/part-{part}"))
        }));
    }
    let list = text(&c.cli(&["job", "list"]).unwrap().stdout);
    assert!(list.contains("wordcount") && list.contains("6/6"), "{list}");
}

#[test]
fn a_map_reduce_job_survives_kill_dash_nine_of_an_agent() {
    let c = DevCluster::start_with(
        2,
        &["--masters", "3", "--no-restart", "--agent-timeout", "3s"],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Seven small files and one large: the small maps finish (their outputs kept on their
    // agents) while the large one still runs, which is when the test kills an agent.
    let mut files = wasmos_tests::write_corpus(dir.path(), 7, 7 << 20);
    let big = tempfile::tempdir().unwrap();
    let large = wasmos_tests::write_corpus(big.path(), 1, 24 << 20);
    let moved = dir.path().join("part-007.txt");
    std::fs::rename(&large[0], &moved).unwrap();
    files.push(moved);
    let wasm = repo().join("sample-tasks/target/wasm32-wasip2/release/wordcount.wasm");
    let job = format!(
        r#"
name = "wc-faults"
[[group]]
name = "map"
bundle = "{wasm}"
inputs = ["part-*.txt"]
args = ["map", "--reducers", "3", "--out", "/out", "/in/input"]
outputs = "/out"
# A small share, so the large map runs for a second or more (about 60 ms of CPU).
cpu = "50m"
timeout = "5m"
retries = 3
backoff = "200ms"
[[group]]
name = "reduce"
bundle = "{wasm}"
depends_on = ["map"]
count = 3
input_pattern = "part-{{index}}"
args = ["reduce", "--part", "{{index}}", "--out", "/out", "/in/map"]
outputs = "/out"
timeout = "5m"
retries = 3
"#,
        wasm = wasm.display()
    );
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, job).unwrap();
    let out = c
        .cli(&["job", "submit", job_file.to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Once a map task has finished on an agent while another map still runs, kill that
    // agent: what it kept is gone, and no reducer has read it yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
        let maps: Vec<&serde_json::Value> = tasks
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["spec"]["args"][0] == "map")
            .collect();
        let finished = maps.iter().find(|t| t["status"]["state"] == "Finished");
        let unfinished = maps.len() < 8 || maps.iter().any(|t| t["status"]["state"] != "Finished");
        if let Some(t) = finished
            && unfinished
        {
            let outputs = t["status"]["outputs"].as_array().unwrap();
            assert!(
                outputs.iter().all(|o| o["held_by"] == t["agent"]),
                "map outputs are kept on the agent that made them: {t}"
            );
            break t["agent"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no map finished in time: {tasks}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let cluster = c.cluster_file().unwrap();
    let pid = cluster["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == victim.as_str())
        .and_then(|a| a["pid"].as_u64())
        .unwrap();
    kill_dash_nine(pid);

    let out = c.cli(&["job", "status", "job-1", "--watch"]).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(job_word_counts(&c, "job-1"), naive_counts(&files));
    let status = c.json(&["job", "status", "job-1", "-o", "json"]).unwrap();
    assert_eq!(status["state"], "Finished", "{status}");
    // The maps whose outputs the victim kept ran again elsewhere, without counting as
    // failures of theirs.
    let groups = status["groups"].as_array().unwrap();
    assert!(groups[0]["lost"].as_u64().unwrap() >= 1, "{status}");
    // Tasks that were running on it were reported lost, and ran again elsewhere.
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let lost: Vec<_> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"]["state"] == "Lost")
        .collect();
    assert!(
        lost.iter().all(|t| t["agent"] == victim.as_str()),
        "{tasks}"
    );
    // Intermediate outputs stayed on agents; only the reducers' results are on the masters.
    for t in tasks.as_array().unwrap() {
        if t["status"]["state"] != "Finished" {
            continue;
        }
        let kept = t["spec"]["args"][0] == "map";
        for o in t["status"]["outputs"].as_array().unwrap() {
            assert_eq!(o["held_by"].is_string(), kept, "{t}");
        }
    }
}

#[test]
fn services_keep_replace_scale_and_stop_their_instances() {
    let c = DevCluster::start_with(2, &["--agent-cpu", "2"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spin = repo().join("sample-tasks/target/wasm32-wasip2/release/spin.wasm");
    let file = dir.path().join("svc.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"spinners\"\n[[group]]\nname = \"spin\"\nbundle = \"{}\"\ncount = 2\ncpu = \"100m\"\ntimeout = \"10m\"\nbackoff = \"200ms\"\n",
            spin.display()
        ),
    )
    .unwrap();
    let out = c.cli(&["service", "run", file.to_str().unwrap()]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let running = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
            let live: Vec<String> = tasks
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["status"]["state"] == "Running")
                .map(|t| format!("t-{}", t["id"]))
                .collect();
            if live.len() == n {
                return live;
            }
            assert!(Instant::now() < deadline, "wanted {n} running: {tasks}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = running(2);
    // Spread: one instance on each agent.
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let mut agents: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"]["state"] == "Running")
        .map(|t| t["agent"].as_str().unwrap())
        .collect();
    agents.sort_unstable();
    assert_eq!(agents, ["agent-1", "agent-2"], "{tasks}");
    // One killed: replaced.
    assert!(
        c.cli(&["task", "kill", &first[0]])
            .unwrap()
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = running(2);
    assert!(!after.contains(&first[0]), "{after:?}");
    assert!(
        c.cli(&["service", "scale", &id, "spin", "3"])
            .unwrap()
            .status
            .success()
    );
    running(3);
    assert!(
        c.cli(&["service", "scale", &id, "spin", "1"])
            .unwrap()
            .status
            .success()
    );
    running(1);
    let status = c.json(&["service", "status", &id, "-o", "json"]).unwrap();
    assert_eq!(status["groups"][0]["count"], 1);
    assert!(c.cli(&["service", "stop", &id]).unwrap().status.success());
    running(0);
    let status = c.json(&["job", "status", &id, "-o", "json"]).unwrap();
    assert_eq!(status["state"], "Killed");
    // Scaling a batch job, or another's job, is refused.
    let out = c.cli(&["service", "scale", "job-99", "spin", "2"]).unwrap();
    assert_clean_error(&out, "no job job-99");
}

#[test]
fn bad_job_files_are_refused_with_the_reason() {
    let c = DevCluster::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hello = repo().join("sample-tasks/target/wasm32-wasip2/release/hello.wasm");
    let group = |name: &str, extra: &str| {
        format!(
            "[[group]]\nname = \"{name}\"\nbundle = \"{}\"\n{extra}\n",
            hello.display()
        )
    };
    let cases = [
        (
            format!("name = \"x\"\n{}", group("a", "depends_on = [\"b\"]")),
            "unknown group `b`",
        ),
        (
            format!(
                "name = \"x\"\n{}{}",
                group("a", "depends_on = [\"b\"]"),
                group("b", "depends_on = [\"a\"]")
            ),
            "cycle",
        ),
        (
            format!("name = \"x\"\n{}", group("a", "colour = 1")),
            "colour",
        ),
        (
            format!("name = \"x\"\n{}", group("a", "count = 0")),
            "count",
        ),
        (
            format!(
                "name = \"x\"\n{}",
                group("a", "inputs = [\"nothing-*.txt\"]")
            ),
            "matches no file",
        ),
        (
            format!("name = \"x\"\ntype = \"cron\"\n{}", group("a", "")),
            "cron",
        ),
    ];
    for (i, (toml, says)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&f, toml).unwrap();
        let out = c.cli(&["job", "submit", f.to_str().unwrap()]).unwrap();
        assert_clean_error(&out, says);
    }
    let out = c.cli(&["job", "status", "job-7"]).unwrap();
    assert_clean_error(&out, "no job job-7");
    let out = c.cli(&["job", "status", "seven"]).unwrap();
    assert_clean_error(&out, "not a job id");
}

/// An agent that stops heartbeating (here: paused) has its tasks reported lost after the agent
/// timeout; when it comes back it re-registers with the same identity and is told to kill the
/// tasks the cluster gave up on.
#[test]
fn a_returning_agent_kills_the_tasks_the_cluster_gave_up_on() {
    let c = DevCluster::start_with(
        1,
        &["--masters", "3", "--no-restart", "--agent-timeout", "2s"],
    )
    .unwrap();
    let out = c.run(&["-d", "--timeout", "5m"], "spin", &[]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let task = text(&out.stdout).trim().to_string();
    let state = |c: &DevCluster| {
        let v = c.json(&["task", "show", &task, "-o", "json"]).unwrap();
        v["status"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(40);
        while !f() {
            assert!(Instant::now() < deadline, "waited in vain for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for("the task to run", &|| state(&c) == "Running");
    let cluster = c.cluster_file().unwrap();
    let pid = cluster["agents"][0]["pid"].as_u64().unwrap().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    wait_for("the task to be declared lost", &|| state(&c) == "Lost");
    signal("-CONT");
    let logs = c.dir.path().join("logs");
    wait_for("the returning agent to be told to kill it", &|| {
        std::fs::read_dir(&logs).is_ok_and(|d| {
            d.flatten().any(|f| {
                std::fs::read_to_string(f.path()).is_ok_and(|l| {
                    l.lines().any(|line| {
                        line.contains("killing a task the cluster gave up on")
                            && line.contains(&task)
                    })
                })
            })
        })
    });
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    assert_eq!(agents[0]["state"], "Active", "re-registered: {agents}");
    assert_eq!(state(&c), "Lost");
}

#[test]
fn an_idle_agent_that_kept_outputs_is_declared_lost_with_them() {
    let c = DevCluster::start_with(
        2,
        &["--masters", "3", "--no-restart", "--agent-timeout", "2s"],
    )
    .unwrap();
    let job_file = repo().join("sample-tasks/wordcount/job.toml");
    let out = c
        .cli(&["job", "submit", job_file.to_str().unwrap(), "--wait"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Every task has ended: the agents are idle, but keep the map outputs.
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let map = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["spec"]["args"][0] == "map")
        .unwrap();
    let holder = map["agent"].as_str().unwrap().to_string();
    let blob = map["status"]["outputs"][0]["blob"]
        .as_str()
        .unwrap()
        .to_string();
    assert_clean_error(&c.cli(&["blob", "get", &blob]).unwrap(), "kept on agent");
    let cluster = c.cluster_file().unwrap();
    let pid = cluster["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == holder.as_str())
        .and_then(|a| a["pid"].as_u64())
        .unwrap();
    kill_dash_nine(pid);
    // Past the agent timeout the cluster forgets what it kept (unless the other agent made
    // the same bytes): the blob is no longer said to be on it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = c.cli(&["blob", "get", &blob]).unwrap();
        let said = text(&got.stderr);
        if !said.contains(&format!("kept on agent {holder}")) {
            assert!(!got.status.success(), "the masters never had it: {said}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still said to be on {holder}: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
