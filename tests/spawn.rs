//! Tasks that start tasks (`wasmos:task/spawn`), with the `fanout` sample on real agents: a
//! recursive sum and a Monte Carlo fan-out aggregate their children; a failing child is retried
//! and its parent told how it ended; the limits on depth and fan-out hold; children end with
//! their parent; a child of another tenant's bundle is refused as unknown; a leader failover
//! in the middle loses no child and starts none twice; files published by name reach the
//! parent and are readable by their tenant only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use wasmos_client::{Client, ConnectOptions};
use wasmos_proto::{
    ClientRequest, ClientResponse, Lineage, TaskFilter, TaskId, TaskInfo, TaskSpec, TaskState,
};
use wasmos_tests::{DevCluster, eventually, ok, sample, text, wasmos_cmd};

/// Starts `fanout ARGS` with small resources (its children take the same), detached.
fn start(config: &std::path::Path, args: &[&str]) -> String {
    let out = wasmos_cmd(
        config,
        &[
            "run",
            "-d",
            "--timeout",
            "90s",
            "--cpu",
            "20m",
            "--mem",
            "24Mi",
        ],
    )
    .arg(sample("fanout"))
    .arg("--")
    .args(args)
    .output()
    .unwrap();
    ok(&out).trim().to_string()
}

fn show(config: &std::path::Path, id: &str) -> Value {
    let out = wasmos_cmd(config, &["task", "show", id, "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out)).unwrap()
}

/// Waits for task `id` to end and returns its record.
fn ended(config: &std::path::Path, id: &str, within: Duration) -> Value {
    let mut seen = Value::Null;
    let done = eventually(within, || {
        seen = show(config, id);
        !matches!(
            seen["status"]["state"].as_str(),
            Some("Staging" | "Starting" | "Running")
        )
    });
    assert!(done, "{id} did not end: {seen}");
    seen
}

/// Result `name` of a task record, as text.
fn result(task: &Value, name: &str) -> String {
    let value = task["status"]["results"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no result {name}: {task}"));
    let bytes: Vec<u8> = serde_json::from_value(value["value"].clone()).unwrap();
    String::from_utf8(bytes).unwrap()
}

async fn operator(c: &DevCluster) -> Client {
    Client::connect_to(
        &c.operator_credentials(),
        &[c.master_addr()],
        ConnectOptions::default(),
    )
    .await
    .unwrap()
}

/// Every task the client sees (a page at a time).
async fn all_tasks(client: &Client) -> Vec<TaskInfo> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let filter = TaskFilter {
            after,
            ..TaskFilter::default()
        };
        match client
            .request(ClientRequest::ListTasks { filter })
            .await
            .unwrap()
        {
            ClientResponse::Tasks(page) if page.is_empty() => return out,
            ClientResponse::Tasks(page) => {
                after = page.last().map(|t| t.id);
                out.extend(page);
            }
            other => panic!("{other:?}"),
        }
    }
}

fn task_id(id: &str) -> TaskId {
    TaskId(id.trim_start_matches("t-").parse().unwrap())
}

/// The tasks `parent` spawned.
fn children_of(tasks: &[TaskInfo], parent: TaskId) -> Vec<&TaskInfo> {
    tasks
        .iter()
        .filter(|t| t.spec.lineage.is_some_and(|l| l.parent == parent))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_sum_and_a_monte_carlo_fan_out_aggregate_their_children() {
    let c = DevCluster::start(2).unwrap();
    let config = c.config();
    let sum = start(&config, &["sum", "1", "1000", "200"]);
    let pi = start(&config, &["pi", "8", "20000"]);
    let sum_done = ended(&config, &sum, Duration::from_secs(60));
    assert_eq!(sum_done["status"]["exit_code"], 0, "{sum_done}");
    assert_eq!(result(&sum_done, "sum"), "500500");
    let pi_done = ended(&config, &pi, Duration::from_secs(60));
    assert_eq!(result(&pi_done, "children"), "8");
    let estimate: f64 = result(&pi_done, "pi").parse().unwrap();
    assert!((3.0..3.3).contains(&estimate), "{estimate}");
    assert_eq!(pi_done["progress"]["permille"], 1000, "{pi_done}");

    // Children are tasks of the parent's owner and role, one level down each, and ended.
    let client = operator(&c).await;
    let tasks = all_tasks(&client).await;
    let kids = children_of(&tasks, task_id(&pi));
    assert_eq!(kids.len(), 8);
    for k in &kids {
        assert_eq!(k.status.state, TaskState::Finished, "{k:?}");
        assert_eq!(k.spec.lineage.map(|l| l.depth), Some(1));
        assert_eq!(k.spec.role.as_deref(), Some("default"));
        assert_eq!(k.spec.resources.cpu_millis, 20, "the parent's resources");
        assert!(k.spec.args.starts_with(&["hits".to_string()]), "{k:?}");
    }
    // 1..=1000 split while longer than 200: 2 children, 4 grandchildren, 8 below them.
    let root = task_id(&sum);
    let mut level = vec![root];
    let mut sizes = Vec::new();
    while !level.is_empty() {
        let next: Vec<TaskId> = level
            .iter()
            .flat_map(|p| children_of(&tasks, *p))
            .map(|t| t.id)
            .collect();
        sizes.push(next.len());
        level = next;
    }
    assert_eq!(sizes, [2, 4, 8, 0]);
}

#[test]
fn a_failing_child_is_retried_and_its_parent_told_how_it_ended() {
    let c = DevCluster::start(1).unwrap();
    let config = c.config();
    let parent = start(&config, &["retry", "3", "2"]);
    let done = ended(&config, &parent, Duration::from_secs(60));
    assert_eq!(done["status"]["exit_code"], 0, "{done}");
    assert_eq!(result(&done, "attempts"), "3", "{done}");
    assert_eq!(result(&done, "state"), "finished");
    // WASI 0.2's exit tells success from failure only: any failing code reads as 1.
    assert_eq!(result(&done, "exit"), "1");
    // A child that succeeds is not run again.
    let once = start(&config, &["retry", "0", "2"]);
    let done = ended(&config, &once, Duration::from_secs(60));
    assert_eq!(result(&done, "attempts"), "1");
    assert_eq!(result(&done, "exit"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_and_fan_out_are_limited_and_children_end_with_their_parent() {
    let c = DevCluster::start(1).unwrap();
    let config = c.config();
    // Eight levels below the first run; the ninth is refused, and says why.
    let deep = start(&config, &["deep"]);
    let done = ended(&config, &deep, Duration::from_secs(90));
    assert_eq!(result(&done, "levels"), "8", "{done}");
    assert!(
        result(&done, "refusal").contains("at most 8 deep"),
        "{done}"
    );

    // 1024 children at once, then a refusal; the parent returns and takes them with it.
    let wide = start(&config, &["wide", "60000"]);
    let done = ended(&config, &wide, Duration::from_secs(90));
    assert_eq!(result(&done, "started"), "1024", "{done}");
    assert!(result(&done, "refusal").contains("1024 children"), "{done}");
    let client = operator(&c).await;
    let parent = task_id(&wide);
    let mut left = usize::MAX;
    let all_ended = eventually(Duration::from_secs(60), || {
        let tasks = futures_lite_block(all_tasks(&client));
        let kids = children_of(&tasks, parent);
        assert_eq!(kids.len(), 1024, "children of {wide}");
        left = kids
            .iter()
            .filter(|k| !k.status.state.is_terminal())
            .count();
        left == 0
            && kids.iter().all(|k| {
                k.status.state == TaskState::Killed
                    && k.status.reason == Some(wasmos_proto::Reason::ParentEnded)
            })
    });
    assert!(all_ended, "{left} children of {wide} still live");

    // A parent killed while it waits: its children are killed too.
    let hold = start(&config, &["hold", "3", "60000"]);
    let parent = task_id(&hold);
    let mut states = Vec::new();
    let running = eventually(Duration::from_secs(30), || {
        let tasks = futures_lite_block(all_tasks(&client));
        let kids = children_of(&tasks, parent);
        states = kids.iter().map(|k| (k.id, k.status.state)).collect();
        kids.len() == 3 && kids.iter().all(|k| k.status.state == TaskState::Running)
    });
    assert!(
        running,
        "children of {hold}: {states:?}; {}",
        show(&config, &hold)
    );
    ok(&wasmos_cmd(&config, &["task", "kill", &hold])
        .output()
        .unwrap());
    assert!(eventually(Duration::from_secs(30), || {
        let tasks = futures_lite_block(all_tasks(&client));
        children_of(&tasks, parent)
            .iter()
            .all(|k| k.status.reason == Some(wasmos_proto::Reason::ParentEnded))
    }));
    let shown = text(
        &wasmos_cmd(&config, &["task", "list"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(shown.contains("parent_ended"), "{shown}");
}

/// Runs a future to its end from a synchronous closure inside a multi-threaded test runtime.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_is_its_parents_tenants_and_only_a_parent_makes_one() {
    let c = DevCluster::start(1).unwrap();
    let alice = c.user_config("wasmos://tenant/alice/ci");
    let bob = c.user_config("wasmos://tenant/bob/ci");
    let pushed = wasmos_cmd(&alice, &["bundle", "push"])
        .arg(sample("noop"))
        .output()
        .unwrap();
    let alices = ok(&pushed).trim().to_string();
    // Bob's task asks for a child of Alice's bundle: refused, as a bundle that does not exist.
    let task = start(&bob, &["other", &alices]);
    let done = ended(&bob, &task, Duration::from_secs(60));
    let refusal = result(&done, "refusal");
    assert!(refusal.contains("refused"), "{refusal}");
    let unknown = start(&bob, &["other", &"0".repeat(64)]);
    let unknown = result(&ended(&bob, &unknown, Duration::from_secs(60)), "refusal");
    assert_eq!(
        refusal.replace(&alices, "HASH"),
        unknown.replace(&"0".repeat(64), "HASH"),
        "another tenant's bundle reads as one that does not exist"
    );
    // Alice's own task may use it.
    let hers = start(&alice, &["other", &alices]);
    let done = ended(&alice, &hers, Duration::from_secs(60));
    assert_eq!(result(&done, "state"), "finished", "{done}");
    // Bob sees none of Alice's tasks, children included.
    let bobs: Value = serde_json::from_str(&ok(&wasmos_cmd(&bob, &["task", "list", "-o", "json"])
        .output()
        .unwrap()))
    .unwrap();
    let ids: Vec<&Value> = bobs.as_array().unwrap().iter().map(|t| &t["id"]).collect();
    assert_eq!(ids.len(), 2, "{bobs}");
    assert!(
        bobs.as_array()
            .unwrap()
            .iter()
            .all(|t| t["owner"] == "wasmos://tenant/bob/ci"),
        "{bobs}"
    );

    // A client cannot make a task another's child by naming a lineage.
    let client = operator(&c).await;
    let mut spec = TaskSpec::new(
        "noop.wasm",
        wasmos_proto::BundleHash::parse(&alices).unwrap(),
    );
    spec.lineage = Some(Lineage {
        parent: task_id(&hers),
        depth: 1,
    });
    let id = client.submit(spec).await.unwrap();
    let tasks = all_tasks(&client).await;
    let made = tasks.iter().find(|t| t.id == id).unwrap();
    assert_eq!(made.spec.lineage, None, "the lineage was cleared");
}

/// `wasmos blob get HASH` as the user of `config`.
fn blob_get(config: &std::path::Path, hash: &str) -> std::process::Output {
    wasmos_cmd(config, &["blob", "get", hash]).output().unwrap()
}

#[test]
fn files_published_by_name_reach_the_parent_and_only_their_tenant() {
    let c = DevCluster::start(1).unwrap();
    let alice = c.user_config("wasmos://tenant/alice/ci");
    let bob = c.user_config("wasmos://tenant/bob/ci");
    let parent = start(&alice, &["files", "3"]);
    let done = ended(&alice, &parent, Duration::from_secs(90));
    assert_eq!(done["status"]["state"], "Finished", "{done}");
    let files = done["status"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{done}");
    assert_eq!(files[0]["name"], "index");
    let index_hash = files[0]["blob"].as_str().unwrap();
    let got = blob_get(&alice, index_hash);
    let index = ok(&got);
    assert_eq!(got.stdout.len() as u64, files[0]["size"].as_u64().unwrap());
    // The parent's index lists each child's file as its wait told it: the child's record
    // and the stored bytes agree with it.
    let lines: Vec<&str> = index.lines().collect();
    assert_eq!(lines.len(), 3, "{index}");
    let mut parts = Vec::new();
    for line in &lines {
        let [hash, size, child] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{line}");
        };
        let record = show(&alice, child);
        assert_eq!(record["status"]["files"][0]["name"], "part", "{record}");
        assert_eq!(record["status"]["files"][0]["blob"], *hash, "{record}");
        let part = blob_get(&alice, hash);
        assert_eq!(part.stdout.len().to_string(), size, "{line}");
        parts.push(ok(&part));
    }
    parts.sort();
    assert_eq!(
        parts,
        [
            "part 0 of the work\n",
            "part 1 of the work\n",
            "part 2 of the work\n"
        ]
    );
    let shown = ok(&wasmos_cmd(&alice, &["task", "show", &parent])
        .output()
        .unwrap());
    assert!(
        shown.contains("files:      1") && shown.contains(&format!("{index_hash} ")),
        "{shown}"
    );

    // Bob cannot read Alice's files, nor tell them from blobs that do not exist.
    let theirs = blob_get(&bob, index_hash);
    assert!(!theirs.status.success(), "{}", text(&theirs.stdout));
    let none = blob_get(&bob, &"0".repeat(64));
    assert_eq!(
        text(&theirs.stderr).replace(index_hash, "HASH"),
        text(&none.stderr).replace(&"0".repeat(64), "HASH"),
    );

    // A file published but never written: the task ends in error naming it, and nothing of
    // it is stored.
    let lost = start(&alice, &["lost-file"]);
    let done = ended(&alice, &lost, Duration::from_secs(60));
    assert_eq!(done["status"]["state"], "Error", "{done}");
    let message = done["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("/never/written.txt") && message.contains("does not exist"),
        "{done}"
    );
    assert_eq!(done["status"]["files"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_survive_a_leader_failover_and_none_starts_twice() {
    let c = DevCluster::start_with(2, &["--masters", "3"]).unwrap();
    let config = c.config();
    // Six children that each take 5 s, so the leader dies while they run.
    let pi = start(&config, &["pi", "6", "20000", "5000"]);
    let parent = task_id(&pi);
    let client = operator(&c).await;
    assert!(eventually(Duration::from_secs(30), || {
        let tasks = futures_lite_block(all_tasks(&client));
        let kids = children_of(&tasks, parent);
        kids.len() == 6 && kids.iter().all(|k| k.status.state == TaskState::Running)
    }));
    let (leader, _) = c.leader(None).unwrap();
    let pid = c.master_pid(leader).unwrap();
    wasmos_tests::kill_dash_nine(pid);
    let (next, _) = c.leader(Some(leader)).unwrap();
    eprintln!("killed master {leader}; master {next} leads");

    let done = ended(&config, &pi, Duration::from_secs(90));
    assert_eq!(done["status"]["exit_code"], 0, "{done}");
    assert_eq!(result(&done, "children"), "6");
    // The same estimate as a run with no failover: every child's seed is fixed by its place.
    let calm = start(&config, &["pi", "6", "20000"]);
    let calm = ended(&config, &calm, Duration::from_secs(90));
    assert_eq!(result(&done, "pi"), result(&calm, "pi"));
    let client = operator(&c).await;
    let tasks = all_tasks(&client).await;
    assert_eq!(
        children_of(&tasks, parent).len(),
        6,
        "no child started twice"
    );
}
