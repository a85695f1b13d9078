//! The event stream against real clusters: events come in index order and each task's states
//! in the order it went through them; a tenant sees its own objects and nothing of another's;
//! a reader that disconnects resumes from the index it was given and misses nothing and
//! repeats nothing, on the same master or, after the leader is killed, on the next one; the
//! HTTPS API serves the same stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wasmos_tests::{
    DevCluster, EventFollower, PYTHON_HTTPS_CLIENT, event_object, eventually, kill_dash_nine, ok,
    sample, text, wasmos_cmd, wasmos_with,
};

const ALICE: &str = "wasmos://tenant/acme/alice";
const BOB: &str = "wasmos://tenant/evil/bob";

/// `wasmos run -d hello` as `config`'s identity: the task's number.
fn start_hello(config: &Path) -> u64 {
    let out = wasmos_cmd(config, &["run", "-d"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    let id = ok(&out);
    id.trim().trim_start_matches("t-").parse().unwrap()
}

/// The states a task went through, in the order the stream told them.
fn states_of(events: &[Value], task: u64) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["change"]["Task"].as_object())
        .filter(|t| t["id"] == task)
        .map(|t| t["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn ended(events: &[Value], task: u64) -> bool {
    states_of(events, task)
        .last()
        .is_some_and(|s| s == "Finished")
}

fn indexes(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect()
}

/// Whose objects a list of events is about.
fn owners(events: &[Value]) -> Vec<String> {
    let mut o: Vec<String> = events
        .iter()
        .filter_map(|e| e["owner"].as_str().map(str::to_string))
        .collect();
    o.sort();
    o.dedup();
    o
}

/// `wasmos events -o json` (not followed) with `args`: the events it printed.
fn read_events(config: &Path, args: &[&str]) -> Vec<Value> {
    let out = wasmos_cmd(config, &["events", "-o", "json"])
        .args(args)
        .output()
        .unwrap();
    ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_ordered(events: &[Value]) {
    let idx = indexes(events);
    assert!(
        idx.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {idx:?}"
    );
}

/// No event told twice: (index, object, change) is unique.
fn assert_no_repeats(events: &[Value]) {
    let mut seen = std::collections::BTreeSet::new();
    for e in events {
        assert!(seen.insert(e.to_string()), "told twice: {e}");
    }
}

#[test]
fn the_stream_is_ordered_scoped_and_resumable() {
    let c = DevCluster::start(1).unwrap();
    let op = c.config();
    let alice = c.user_config(ALICE);
    let bob = c.user_config(BOB);
    let op_follow = EventFollower::start(&op, &[]);
    let alice_follow = EventFollower::start(&alice, &[]);
    let bob_follow = EventFollower::start(&bob, &["--type", "task,role"]);
    let a = start_hello(&alice);
    let b = start_hello(&bob);
    ok(&wasmos_with(&op, &["role", "set", "acme", "--weight", "2"]));
    ok(&wasmos_with(&op, &["role", "set", "evil", "--weight", "3"]));
    assert!(
        eventually(Duration::from_secs(30), || {
            let all = op_follow.events();
            ended(&all, a)
                && ended(&all, b)
                && all.iter().filter(|e| event_object(e).0 == "role").count() == 2
        }),
        "the operator's stream did not tell both tasks' ends and both roles: {:?}\n{}",
        op_follow.events(),
        op_follow.stderr()
    );
    assert!(eventually(Duration::from_secs(10), || ended(
        &alice_follow.events(),
        a
    )));
    assert!(eventually(Duration::from_secs(10), || ended(
        &bob_follow.events(),
        b
    )));
    // The operator sees everything, in index order, each task staging → running → finished.
    let all = op_follow.stop();
    assert_ordered(&all);
    assert_no_repeats(&all);
    for t in [a, b] {
        let states = states_of(&all, t);
        assert_eq!(
            states.first().map(String::as_str),
            Some("Staging"),
            "{states:?}"
        );
        assert!(states.contains(&"Running".to_string()), "{states:?}");
        assert_eq!(
            states.last().map(String::as_str),
            Some("Finished"),
            "{states:?}"
        );
    }
    assert!(all.iter().any(|e| event_object(e).0 == "agent"), "{all:?}");
    // Alice sees her tenant's objects, agents and her tenant's role; nothing of bob's.
    let seen = alice_follow.stop();
    assert_ordered(&seen);
    assert!(
        states_of(&seen, b).is_empty(),
        "alice saw bob's task: {seen:?}"
    );
    assert_eq!(owners(&seen), vec![ALICE.to_string()]);
    let roles: Vec<String> = seen
        .iter()
        .filter(|e| event_object(e).0 == "role")
        .map(|e| event_object(e).1)
        .collect();
    assert_eq!(roles, ["acme"], "{seen:?}");
    // Bob asked for tasks and roles only.
    let seen = bob_follow.stop();
    assert!(
        states_of(&seen, a).is_empty(),
        "bob saw alice's task: {seen:?}"
    );
    assert_eq!(owners(&seen), vec![BOB.to_string()]);
    let kinds: std::collections::BTreeSet<String> =
        seen.iter().map(|e| event_object(e).0).collect();
    assert_eq!(kinds, ["role", "task"].map(String::from).into(), "{seen:?}");

    // Resumed from any index: exactly the events from there on, as the full read tells them.
    let full = read_events(&op, &[]);
    assert!(full.len() >= all.len(), "{} < {}", full.len(), all.len());
    assert_eq!(
        &full[..all.len()],
        &all[..],
        "the followed stream and a later read differ"
    );
    let middle = full[full.len() / 2]["index"].as_u64().unwrap();
    let resumed = read_events(&op, &["--index", &middle.to_string()]);
    let expected: Vec<Value> = full
        .iter()
        .filter(|e| e["index"].as_u64().unwrap() >= middle)
        .cloned()
        .collect();
    assert_eq!(resumed, expected);
    // The table says where to resume.
    let out = wasmos_cmd(&op, &["events", "--type", "agent"])
        .output()
        .unwrap();
    let table = ok(&out);
    assert!(table.starts_with("INDEX"), "{table}");
    assert!(
        table.lines().skip(1).all(|l| l.contains(" agent ")),
        "{table}"
    );
    assert!(
        text(&out.stderr).contains("resume with --index"),
        "{}",
        text(&out.stderr)
    );
    // A bad type is refused by name.
    let out = wasmos_cmd(&op, &["events", "--type", "tasks"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown event type `tasks`"),
        "{}",
        text(&out.stderr)
    );

    // The HTTPS API: the same events as JSON lines for alice, from an index, ending with
    // where to resume; bob's objects absent; a bad parameter refused.
    let probe = format!(
        "{PYTHON_HTTPS_CLIENT}{}",
        r#"
def get(path):
    c = connect()
    c.request("GET", path)
    r = c.getresponse()
    print(r.status)
    print(r.read().decode(), end="")
get("/api/v1/events?index=1")
get("/api/v1/events?type=nope")
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &probe])
        .arg(&alice)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some("200"), "{said}");
    let mut over_https = Vec::new();
    let mut next = None;
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(n) = v.get("next") {
            next = n.as_u64();
            break;
        }
        over_https.push(v);
    }
    let alice_full = read_events(&alice, &[]);
    assert_eq!(over_https, alice_full);
    assert!(next.is_some_and(|n| n > middle), "{said}");
    assert_eq!(lines.next(), Some("400"), "{said}");
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains("unknown event type")),
        "{said}"
    );

    // Client requests over HTTPS are answered as on QUIC, for the caller's identity: bob
    // cannot tell alice's task from one that does not exist.
    let probe = format!(
        "{PYTHON_HTTPS_CLIENT}{}",
        r#"
def post(body):
    c = connect()
    c.request("POST", "/api/v1/client", body)
    r = c.getresponse()
    print(r.status, r.read().decode())
post(json.dumps({"GetTask": {"id": int(sys.argv[2])}}))
post(json.dumps({"GetTask": {"id": 999999}}))
post(json.dumps({"GetTask": {"id": int(sys.argv[3])}}))
post("{not json")
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &probe])
        .arg(&bob)
        .args([a.to_string(), b.to_string()])
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[0].starts_with("404 "), "{said}");
    assert_eq!(
        lines[0].replace(&format!("t-{a}"), "T"),
        lines[1].replace("t-999999", "T"),
        "an existence oracle over HTTPS"
    );
    assert!(
        lines[2].starts_with("200 ") && lines[2].contains("\"Task\""),
        "{said}"
    );
    assert!(
        lines[3].starts_with("400 ") && lines[3].contains("not a client request"),
        "{said}"
    );
}

#[test]
fn a_follower_resumes_on_the_new_leader_without_gaps_or_repeats() {
    let c = DevCluster::start_with(1, &["--masters", "3"]).unwrap();
    let op = c.config();
    let follow = EventFollower::start(&op, &["--type", "task"]);
    let first = start_hello(&op);
    assert!(
        eventually(Duration::from_secs(30), || ended(&follow.events(), first)),
        "{:?}\n{}",
        follow.events(),
        follow.stderr()
    );
    let (leader, _) = c.leader(None).unwrap();
    kill_dash_nine(c.master_pid(leader).unwrap());
    let (new_leader, _) = c.leader(Some(leader)).unwrap();
    assert_ne!(new_leader, leader);
    let second = start_hello(&op);
    assert!(
        eventually(Duration::from_secs(60), || ended(&follow.events(), second)),
        "the stream did not follow the new leader: {:?}\n{}",
        follow.events(),
        follow.stderr()
    );
    let seen = follow.stop();
    assert_ordered(&seen);
    assert_no_repeats(&seen);
    // What the new leader holds from the first event seen on: exactly what was followed.
    let start = seen[0]["index"].as_u64().unwrap();
    let now = read_events(&op, &["--type", "task", "--index", &start.to_string()]);
    let upto = seen.last().unwrap()["index"].as_u64().unwrap();
    let now: Vec<Value> = now
        .into_iter()
        .filter(|e| e["index"].as_u64().unwrap() <= upto)
        .collect();
    assert_eq!(seen, now);
}
