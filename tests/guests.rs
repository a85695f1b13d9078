//! Tasks that talk to the platform through `wasmos:task` (wit/task.wit), built with the Rust
//! guest crate (guests/rust): a real agent tells a task its context, takes its progress to
//! the masters (task show, the event stream) and keeps its results; a task that imports
//! `cancellation` is asked to stop and gets its grace period; a component importing what the
//! cluster does not provide is refused at upload, naming the import.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use wasmos_client::{Client, ConnectOptions};
use wasmos_proto::{BlobKind, ClientRequest, ClientResponse, JobId, JobSlot, TaskSpec};
use wasmos_tests::{DevCluster, EventFollower, eventually, ok, sample, text, wasmos_cmd};

fn show(c: &DevCluster, id: &str) -> Value {
    let out = wasmos_cmd(&c.config(), &["task", "show", id, "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out)).unwrap()
}

fn start(c: &DevCluster, args: &[&str]) -> String {
    let out = wasmos_cmd(&c.config(), &["run", "-d", "--timeout", "60s"])
        .arg(sample("platform"))
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    ok(&out).trim().to_string()
}

#[test]
fn a_task_learns_its_context_reports_progress_and_publishes_results() {
    let c = DevCluster::start(1).unwrap();
    let events = EventFollower::start(&c.config(), &["--type", "task"]);
    let id = start(&c, &["steps", "3", "1500"]);
    let num: u64 = id.trim_start_matches("t-").parse().unwrap();

    // Progress reaches the masters while it runs, and is kept in the task's record.
    let mut seen = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            seen = show(&c, &id);
            seen["progress"]["permille"].as_u64().is_some_and(|p| p > 0)
                && seen["status"]["state"] == "Running"
        }),
        "no progress while it ran: {seen}"
    );
    assert!(
        seen["progress"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("step ")),
        "{seen}"
    );
    let out = wasmos_cmd(&c.config(), &["logs", "-f", &id])
        .output()
        .unwrap();
    let said = ok(&out);
    assert!(
        said.contains(&format!("task {id} role default attempt 1 job None")),
        "{said}"
    );
    // Over-long and badly named results and a relative file path are refused to the task,
    // not kept.
    assert_eq!(said.matches("result published").count(), 2, "{said}");
    assert_eq!(said.matches("result refused").count(), 3, "{said}");

    let done = show(&c, &id);
    assert_eq!(done["status"]["state"], "Finished", "{done}");
    assert_eq!(done["progress"]["permille"], 1000, "{done}");
    let results = done["status"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{done}");
    assert_eq!(results[0]["name"], "steps");
    assert_eq!(results[0]["value"], serde_json::json!([b'3']));
    let table = ok(&wasmos_cmd(&c.config(), &["task", "show", &id])
        .output()
        .unwrap());
    assert!(table.contains("steps = 3"), "{table}");
    // The file it published by name, stored when it ended, read back (tests/spawn.rs checks
    // that only its tenant may).
    let files = done["status"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{done}");
    assert_eq!(files[0]["name"], "log");
    let log = blob_text(&c, &files[0]);
    assert_eq!(log, "step 1 of 3\nstep 2 of 3\nstep 3 of 3\n");
    assert!(table.contains("files:      1"), "{table}");
    assert!(table.contains("100.0% step 3 of 3"), "{table}");

    // The event stream carried the progress as it came, while it ran.
    let carried = |e: &Value| {
        let t = &e["change"]["Task"];
        t["id"] == num
            && t["state"] == "Running"
            && t["progress"]["permille"]
                .as_u64()
                .is_some_and(|p| p > 0 && p < 1000)
    };
    assert!(
        eventually(Duration::from_secs(10), || events
            .events()
            .iter()
            .any(carried)),
        "{:?}",
        events.events()
    );
}

/// The bytes of a file result (`{name, blob, size}`), as its tenant reads them back.
fn blob_text(c: &DevCluster, file: &Value) -> String {
    let hash = file["blob"].as_str().unwrap();
    let got = wasmos_cmd(&c.config(), &["blob", "get", hash])
        .output()
        .unwrap();
    let bytes = ok(&got);
    assert_eq!(got.stdout.len() as u64, file["size"].as_u64().unwrap());
    bytes
}

/// A sample componentize-py or componentize-js built (`cargo xtask test` builds them).
fn built(path: &str) -> std::path::PathBuf {
    let wasm = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-tasks/target")
        .join(path);
    assert!(
        wasm.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        wasm.display()
    );
    wasm
}

/// Runs a Python or JavaScript platform sample to its end; checks what it said and left.
fn run_other_language(wasm: &std::path::Path, lang: &str, steps: u32, language: &str) {
    let c = DevCluster::start(1).unwrap();
    let out = c
        .cmd(&["run", "--mem", "256MiB", "--timeout", "120s"])
        .arg(wasm)
        .args(["--", &steps.to_string()])
        .output()
        .unwrap();
    let said = ok(&out);
    assert!(
        said.contains(&format!("{lang} task t-1 role default attempt 1")),
        "{said}"
    );
    let last = format!("{lang} step {steps} of {steps}");
    assert!(said.contains(&last), "{said}");
    assert!(said.contains("result refused"), "{said}");
    let done = show(&c, "t-1");
    assert_eq!(done["progress"]["permille"], 1000, "{done}");
    assert_eq!(done["progress"]["message"], last.as_str(), "{done}");
    assert_eq!(done["status"]["results"][0]["name"], "language", "{done}");
    assert_eq!(
        done["status"]["results"][0]["value"],
        serde_json::json!(language.as_bytes()),
        "{done}"
    );
    match lang {
        // Python writes a file and publishes it by name.
        "python" => {
            assert_eq!(done["status"]["files"][0]["name"], "report", "{done}");
            let report = blob_text(&c, &done["status"]["files"][0]);
            assert_eq!(report, format!("python took {steps} steps\n"));
        }
        // JavaScript (no filesystem of its own) names a relative path: refused at once.
        _ => assert!(said.contains("file refused"), "{said}"),
    }
}

#[test]
fn a_python_task_built_against_the_world_uses_it_too() {
    run_other_language(&built("python/platform-py.wasm"), "python", 2, "python");
}

#[test]
fn a_javascript_task_built_against_the_world_uses_it_too() {
    run_other_language(&built("js/platform-js.wasm"), "js", 3, "javascript");
}

#[test]
fn a_task_asked_to_stop_gets_its_grace_period() {
    let c = DevCluster::start(1).unwrap();
    let id = start(&c, &["linger"]);
    assert!(eventually(
        Duration::from_secs(20),
        || show(&c, &id)["progress"]["permille"] == 500
    ));
    ok(&wasmos_cmd(&c.config(), &["task", "kill", &id])
        .output()
        .unwrap());
    let mut t = Value::Null;
    assert!(
        eventually(Duration::from_secs(20), || {
            t = show(&c, &id);
            t["status"]["state"] == "Killed"
        }),
        "{t}"
    );
    assert!(
        t["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("within its grace period")),
        "{t}"
    );
    assert_eq!(t["status"]["results"][0]["name"], "stopped", "{t}");
    let out = wasmos_cmd(&c.config(), &["logs", &id]).output().unwrap();
    assert!(
        ok(&out).contains("asked to stop, 5000 ms to finish"),
        "{}",
        text(&out.stdout)
    );

    // One that ignores the request is stopped when its grace period ends.
    let stubborn = start(&c, &["stubborn"]);
    assert!(eventually(Duration::from_secs(20), || {
        let out = wasmos_cmd(&c.config(), &["logs", &stubborn])
            .output()
            .unwrap();
        text(&out.stdout).contains("ignoring requests to stop")
    }));
    let asked = std::time::Instant::now();
    ok(&wasmos_cmd(&c.config(), &["task", "kill", &stubborn])
        .output()
        .unwrap());
    assert!(
        eventually(
            Duration::from_secs(20),
            || show(&c, &stubborn)["status"]["state"] == "Killed"
        ),
        "{}",
        show(&c, &stubborn)
    );
    assert!(
        asked.elapsed() >= Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let t = show(&c, &stubborn);
    assert!(
        t["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not end within its 5000 ms grace period")),
        "{t}"
    );
    assert_eq!(
        t["progress"]["message"], "asked to stop, carrying on",
        "{t}"
    );

    // A plain WASI task is not given one: killed at once, as before.
    let spin = wasmos_cmd(&c.config(), &["run", "-d", "--timeout", "60s"])
        .arg(sample("spin"))
        .output()
        .unwrap();
    let spin = ok(&spin).trim().to_string();
    assert!(eventually(
        Duration::from_secs(20),
        || show(&c, &spin)["status"]["state"] == "Running"
    ));
    ok(&wasmos_cmd(&c.config(), &["task", "kill", &spin])
        .output()
        .unwrap());
    assert!(eventually(
        Duration::from_secs(5),
        || show(&c, &spin)["status"]["message"] == "killed"
    ));
}

#[test]
fn a_job_task_knows_its_job_group_index_and_attempt() {
    let c = DevCluster::start(1).unwrap();
    let job = c.dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"ctx\"\n[[group]]\nname = \"steps\"\ncount = 2\nbundle = {:?}\nargs = [\"steps\", \"2\", \"100\"]\n[[group]]\nname = \"flaky\"\nbundle = {:?}\nargs = [\"flaky\"]\nretries = 1\nbackoff = \"100ms\"\n",
            sample("platform"),
            sample("platform")
        ),
    )
    .unwrap();
    let out = wasmos_cmd(&c.config(), &["job", "submit", "--wait"])
        .arg(&job)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = ok(
        &wasmos_cmd(&c.config(), &["job", "status", "job-1", "-o", "json"])
            .output()
            .unwrap(),
    );
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "Finished", "{status}");
    for g in status["groups"].as_array().unwrap() {
        assert_eq!(g["progress_permille"], 1000, "{status}");
    }
    let tasks: Value = serde_json::from_str(&ok(&wasmos_cmd(
        &c.config(),
        &["task", "list", "-o", "json"],
    )
    .output()
    .unwrap()))
    .unwrap();
    let mut seen = Vec::new();
    for t in tasks.as_array().unwrap() {
        let id = format!("t-{}", t["id"]);
        let said = ok(&wasmos_cmd(&c.config(), &["logs", &id]).output().unwrap());
        let slot = &t["spec"]["slot"];
        assert_eq!(slot["job"], 1, "{t}");
        seen.push((
            slot["group"].as_str().unwrap().to_string(),
            slot["index"].as_u64().unwrap(),
            slot["attempt"].as_u64().unwrap(),
        ));
        if slot["group"] == "steps" {
            assert!(
                said.contains(&format!(
                    "job Some(1) group Some(\"steps\") index Some({})",
                    slot["index"]
                )),
                "{said}"
            );
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("flaky".to_string(), 0, 1),
            ("flaky".to_string(), 0, 2),
            ("steps".to_string(), 0, 1),
            ("steps".to_string(), 1, 1)
        ]
    );
    let flaky = tasks
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["spec"]["slot"]["attempt"] == 2)
        .unwrap();
    assert_eq!(flaky["status"]["results"][0]["name"], "attempt", "{flaky}");
    assert_eq!(
        flaky["status"]["results"][0]["value"],
        serde_json::json!([b'2'])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_the_cluster_does_not_provide_are_refused_at_upload_by_name() {
    let c = DevCluster::start(1).unwrap();
    let client = Client::connect_to(
        &c.operator_credentials(),
        &[c.master_addr()],
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (import, says) in [
        ("wasmos:task/teleport@0.1.0", "wasmos:task/teleport@0.1.0"),
        ("wasmos:task/progress@0.2.0", "wasmos:task/progress@0.2.0"),
        ("wasi:http/types@0.2.0", "wasi:http/types@0.2.0"),
    ] {
        let wasm = wat::parse_str(format!(
            r#"(component (import "{import}" (instance (export "f" (func)))))"#
        ))
        .unwrap();
        let path = dir.path().join("bad.wasm");
        std::fs::write(&path, wasm).unwrap();
        // The CLI refuses before uploading; so does the master, for a client that does not.
        let out = wasmos_cmd(&c.config(), &["bundle", "push"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(says), "{err}");
        // `bundle inspect` says the same, locally.
        let seen = wasmos_cmd(&c.config(), &["bundle", "inspect"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!seen.status.success());
        let said = text(&seen.stdout);
        assert!(
            said.contains("runs here: no") && said.contains(says),
            "{said}"
        );
        let refused = client
            .push_blob(&std::fs::read(&path).unwrap(), BlobKind::Component)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains(says), "{refused}");
    }
    // What it provides passes.
    for (name, world) in [
        ("platform", "wasmos:task/task"),
        ("hello", "wasi:cli/command"),
    ] {
        let out = wasmos_cmd(&c.config(), &["bundle", "inspect", "-o", "json"])
            .arg(sample(name))
            .output()
            .unwrap();
        let seen: Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(seen["world"], world, "{seen}");
        assert_eq!(seen["runs_here"], true, "{seen}");
        let imports = seen["imports"].as_array().unwrap();
        assert_eq!(
            imports
                .iter()
                .any(|i| i.as_str().unwrap().starts_with("wasmos:task/progress@0.1")),
            name == "platform",
            "{seen}"
        );
    }
    let fine = client
        .push_blob(
            &std::fs::read(sample("platform")).unwrap(),
            BlobKind::Component,
        )
        .await;
    let (hash, _) = fine.unwrap();

    // A client cannot give its own task a job slot (another job's, say): the master clears it.
    let mut spec = TaskSpec::new("platform.wasm", hash);
    spec.args = vec!["steps".into(), "1".into(), "10".into()];
    spec.slot = Some(JobSlot {
        job: Some(JobId(1)),
        group: "theirs".into(),
        index: 3,
        attempt: 9,
    });
    let ClientResponse::Submitted { id } = client
        .request(ClientRequest::SubmitTask { spec, key: None })
        .await
        .unwrap()
    else {
        panic!("not submitted");
    };
    let id = id.to_string();
    assert!(show(&c, &id)["spec"]["slot"].is_null(), "{}", show(&c, &id));
    let said = ok(&wasmos_cmd(&c.config(), &["logs", "-f", &id])
        .output()
        .unwrap());
    assert!(said.contains("job None group None index None"), "{said}");
}
