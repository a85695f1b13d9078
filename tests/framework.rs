//! The scheduler API on `wasmos-framework/1` against a real cluster: a framework subscribes
//! under a role, receives offers with agent attributes, is refused accepts that ask for more
//! than offered or name a stale offer (nothing launches), launches a task from an offer and
//! follows its status updates, suppresses and revives, and re-attaches to its id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use wasmos_net::{Connection, Endpoint, RecvStream, SendStream};
use wasmos_net::{recv_frame, send_frame};
use wasmos_proto::{
    BundleHash, FrameworkCall, FrameworkEvent, FrameworkId, OfferId, OfferInfo, OfferOperation,
    Reason, Resources, TaskId, TaskSpec, TaskState, alpn,
};
use wasmos_tests::{DevCluster, example_bin, kill_dash_nine, sample, text};

struct Framework {
    _endpoint: Endpoint,
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    /// The dev cluster's log, for failure messages.
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Offers received and not yet used, declined or rescinded.
    outstanding: BTreeMap<OfferId, OfferInfo>,
    /// What `subscribe` asks for.
    failover_timeout_ms: Option<u64>,
}

impl Framework {
    async fn connect(c: &DevCluster) -> Framework {
        Self::connect_to(c, c.master_addr()).await
    }

    async fn connect_to(c: &DevCluster, master: std::net::SocketAddr) -> Framework {
        let creds = c.operator_credentials();
        let endpoint = wasmos_net::client_endpoint(&creds, alpn::FRAMEWORK, master).unwrap();
        let conn = wasmos_net::connect(&endpoint, master).await.unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        Framework {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            log: c.log.clone(),
            outstanding: BTreeMap::new(),
            failover_timeout_ms: None,
        }
    }

    async fn call(&mut self, call: &FrameworkCall) {
        send_frame(&mut self.send, call).await.unwrap();
    }

    /// The next event but heartbeats, or `None` if none comes within `secs`.
    async fn next(&mut self, secs: u64) -> Option<FrameworkEvent> {
        self.next_within(Duration::from_secs(secs)).await
    }

    async fn next_within(&mut self, wait: Duration) -> Option<FrameworkEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let ev = loop {
            let ev = tokio::time::timeout_at(deadline, recv_frame(&mut self.recv))
                .await
                .ok()
                .map(|r| r.unwrap().expect("the master closed the framework stream"));
            if ev != Some(FrameworkEvent::Heartbeat) {
                break ev;
            }
        };
        match &ev {
            Some(FrameworkEvent::Offers(offers)) => {
                for o in offers {
                    self.outstanding.insert(o.id, o.clone());
                }
            }
            Some(FrameworkEvent::Rescind { offer }) => {
                self.outstanding.remove(offer);
            }
            _ => {}
        }
        ev
    }

    /// Accepts `offer` with `operations`; it is no longer outstanding either way.
    async fn accept(&mut self, request: u64, offer: OfferId, operations: Vec<OfferOperation>) {
        self.outstanding.remove(&offer);
        self.call(&FrameworkCall::Accept {
            request,
            offers: vec![offer],
            operations,
            refuse_ms: Some(0),
        })
        .await;
    }

    /// Waits for offers, skipping other events; returns them and what was skipped.
    async fn offers(&mut self, secs: u64) -> (Vec<OfferInfo>, Vec<FrameworkEvent>) {
        let mut skipped = Vec::new();
        loop {
            match self.next(secs).await {
                Some(FrameworkEvent::Offers(o)) => return (o, skipped),
                Some(other) => skipped.push(other),
                None => panic!(
                    "no offers within {secs}s; got {skipped:?}; master log:\n{}",
                    self.log.lock().map(|l| l.clone()).unwrap_or_default()
                ),
            }
        }
    }

    /// Launches `spec` on the next offer; returns the task's id.
    async fn launch_one(&mut self, request: u64, spec: &TaskSpec) -> TaskId {
        let offer = match self.outstanding.keys().next().copied() {
            Some(o) => o,
            None => self.offers(10).await.0[0].id,
        };
        self.accept(
            request,
            offer,
            vec![OfferOperation::Launch(vec![spec.clone()])],
        )
        .await;
        loop {
            match self.next(10).await {
                Some(FrameworkEvent::Accepted { request: r, tasks }) if r == request => {
                    return tasks[0];
                }
                Some(FrameworkEvent::Error { message, .. }) => panic!("launch refused: {message}"),
                Some(_) => {}
                None => panic!("no answer to the accept"),
            }
        }
    }

    /// Waits for an update of `task` in `state` (without acknowledging it); returns its id.
    async fn update_in(&mut self, task: TaskId, state: TaskState) -> u64 {
        loop {
            match self.next(20).await {
                Some(FrameworkEvent::Update {
                    task: t,
                    status,
                    update,
                }) if t == task && status.state == state => return update,
                Some(_) => {}
                None => panic!("{task} did not reach {state}"),
            }
        }
    }

    async fn subscribe(&mut self, role: &str, id: Option<FrameworkId>) -> FrameworkId {
        self.call(&FrameworkCall::Subscribe {
            name: "test-framework".into(),
            role: Some(role.into()),
            revocable: false,
            framework: id,
            failover_timeout_ms: self.failover_timeout_ms,
        })
        .await;
        match self.next(10).await {
            Some(FrameworkEvent::Subscribed {
                framework, role: r, ..
            }) => {
                assert_eq!(r, role);
                framework
            }
            other => panic!("not subscribed: {other:?}"),
        }
    }
}

/// A spec for sample `name` (pushed to the cluster) with `args`.
fn sample_spec(c: &DevCluster, name: &str, cpu: u64, args: &[&str]) -> TaskSpec {
    let out = c
        .cli(&["bundle", "push", sample(name).to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hash = BundleHash::parse(text(&out.stdout).trim()).unwrap();
    TaskSpec {
        args: args.iter().map(|a| a.to_string()).collect(),
        resources: Resources::new(cpu, 64 << 20, 16 << 20),
        ..TaskSpec::new(format!("{name}.wasm"), hash)
    }
}

fn hello_spec(c: &DevCluster, cpu: u64) -> TaskSpec {
    sample_spec(c, "hello", cpu, &["from-framework"])
}

/// A task's state and reason from `wasmos task show`.
fn task_state(c: &DevCluster, task: TaskId) -> (String, String) {
    let v = c
        .json(&["task", "show", &task.to_string(), "-o", "json"])
        .unwrap();
    let s = &v["status"];
    (
        s["state"].as_str().unwrap_or_default().to_string(),
        s["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Status updates carry ids and are sent again until acknowledged; reconciliation answers
/// for known and unknown tasks.
#[test]
fn updates_are_resent_until_acknowledged_and_reconciliation_answers() {
    let c = DevCluster::start(1).unwrap();
    let spec = sample_spec(&c, "exit-code", 250, &["0"]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut fw = Framework::connect(&c).await;
        fw.subscribe("batch", None).await;
        let task = fw.launch_one(1, &spec).await;
        // Each update goes out once until its resend is due (2 s), even when several of the
        // task's changes are recorded in one write: no id comes twice within 1.5 s.
        let mut ids: Vec<(u64, tokio::time::Instant)> = Vec::new();
        let first = loop {
            match fw.next(20).await {
                Some(FrameworkEvent::Update {
                    task: t,
                    status,
                    update,
                }) if t == task => {
                    ids.push((update, tokio::time::Instant::now()));
                    if status.state == TaskState::Finished {
                        break update;
                    }
                }
                Some(_) => {}
                None => panic!("{task} did not finish"),
            }
        };
        let quiet = tokio::time::Instant::now() + Duration::from_millis(800);
        while let Some(left) = quiet.checked_duration_since(tokio::time::Instant::now()) {
            if let Some(FrameworkEvent::Update {
                task: t, update, ..
            }) = fw.next_within(left).await
                && t == task
            {
                ids.push((update, tokio::time::Instant::now()));
            }
        }
        let soon_again = ids.iter().enumerate().any(|(i, (id, at))| {
            ids[..i].iter().any(|(earlier, then)| {
                earlier == id && at.duration_since(*then) < Duration::from_millis(1500)
            })
        });
        assert!(!soon_again, "sent twice: {ids:?}");
        assert!(first > 0);
        // Not acknowledged: the same update comes again, with the same id.
        let again = fw.update_in(task, TaskState::Finished).await;
        assert_eq!(again, first);
        fw.call(&FrameworkCall::Acknowledge {
            task,
            update: first,
        })
        .await;
        // Acknowledged: no more (the next resend would be due within 4 s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
        while tokio::time::Instant::now() < deadline {
            match fw.next(1).await {
                Some(FrameworkEvent::Update { task: t, .. }) if t == task => {
                    panic!("an acknowledged update was sent again")
                }
                _ => {}
            }
        }
        // Explicit reconciliation: a known task's latest status; an unknown one is lost.
        let unknown = TaskId(999_999);
        fw.call(&FrameworkCall::Reconcile {
            tasks: vec![task, unknown],
        })
        .await;
        let mut answers = BTreeMap::new();
        while answers.len() < 2 {
            if let Some(FrameworkEvent::Update {
                task,
                status,
                update,
            }) = fw.next(10).await
            {
                answers.insert(task, (status, update));
            }
        }
        assert_eq!(answers[&task].0.state, TaskState::Finished);
        assert_eq!(answers[&unknown].0.state, TaskState::Lost);
        assert_eq!(answers[&unknown].0.reason, Some(Reason::Unknown));
        assert_eq!(answers[&unknown].1, 0, "nothing to acknowledge");
        // Implicit reconciliation reports live tasks only: this one ended and was acknowledged.
        fw.call(&FrameworkCall::Reconcile { tasks: vec![] }).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if let Some(FrameworkEvent::Update { task: t, .. }) = fw.next(1).await {
                assert_ne!(t, task, "an ended, acknowledged task was reported");
            }
        }
    });
}

/// An update that happens while the framework is away is delivered when it comes back with
/// its id; a framework away past its failover timeout is removed and its tasks killed; a
/// teardown does the same at once and ends the stream.
#[test]
fn frameworks_keep_tasks_within_their_failover_timeout_and_lose_them_after() {
    let c = DevCluster::start_with(1, &["--agent-cpu", "4"]).unwrap();
    let quick = sample_spec(&c, "exit-code", 250, &["0", "1500"]);
    let spin = sample_spec(&c, "spin", 250, &[]);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // Away while its task finishes, back within the timeout: the update is waiting.
        let mut fw = Framework::connect(&c).await;
        fw.failover_timeout_ms = Some(20_000);
        let id = fw.subscribe("batch", None).await;
        let task = fw.launch_one(1, &quick).await;
        let running = fw.update_in(task, TaskState::Running).await;
        fw.call(&FrameworkCall::Acknowledge {
            task,
            update: running,
        })
        .await;
        fw.conn.close(0u32.into(), b"crash");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(task_state(&c, task).0, "Finished");
        let mut back = Framework::connect(&c).await;
        back.failover_timeout_ms = Some(1_500);
        assert_eq!(back.subscribe("batch", Some(id)).await, id);
        let done = back.update_in(task, TaskState::Finished).await;
        assert!(done > running);
        back.call(&FrameworkCall::Acknowledge { task, update: done })
            .await;

        // Now with a 1.5 s timeout: away for longer, its running task is killed.
        let long = back.launch_one(2, &spin).await;
        back.update_in(long, TaskState::Running).await;
        back.conn.close(0u32.into(), b"crash");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (state, reason) = task_state(&c, long);
            if state == "Killed" {
                assert_eq!(reason, "FrameworkRemoved");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{long} still {state} long after its framework's failover timeout"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut late = Framework::connect(&c).await;
        late.call(&FrameworkCall::Subscribe {
            name: "test-framework".into(),
            role: Some("batch".into()),
            revocable: false,
            framework: Some(id),
            failover_timeout_ms: None,
        })
        .await;
        match late.next(10).await {
            Some(FrameworkEvent::Error { message, .. }) => {
                assert!(message.contains("was removed"), "{message}")
            }
            other => panic!("a removed framework subscribed again: {other:?}"),
        }

        // Teardown: tasks killed at once, the stream ends.
        let mut td = Framework::connect(&c).await;
        td.subscribe("batch", None).await;
        let victim = td.launch_one(1, &spin).await;
        td.update_in(victim, TaskState::Running).await;
        td.call(&FrameworkCall::Teardown).await;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match recv_frame::<FrameworkEvent>(&mut td.recv).await {
                    Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream did not end after the teardown");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while task_state(&c, victim).0 != "Killed" {
            assert!(std::time::Instant::now() < deadline, "{victim} not killed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(task_state(&c, victim).1, "FrameworkRemoved");
        // The master ended the session cleanly (its handling of a stream that ends on the
        // master's side once panicked).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !c.log_text().contains("framework disconnected") {
            assert!(std::time::Instant::now() < deadline, "{}", c.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!c.log_text().contains("panicked"), "{}", c.log_text());
    });
}

#[test]
fn a_launch_is_held_to_its_tasks_constraints() {
    let c = DevCluster::start(1).unwrap();
    let spec = hello_spec(&c, 500);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut fw = Framework::connect(&c).await;
        fw.subscribe("analytics", None).await;
        let (offers, _) = fw.offers(10).await;
        // The only agent is a Linux one: a task that needs Windows is refused, not placed.
        let windows = TaskSpec {
            constraints: [("os".to_string(), "windows".to_string())].into(),
            ..spec.clone()
        };
        fw.accept(1, offers[0].id, vec![OfferOperation::Launch(vec![windows])])
            .await;
        loop {
            match fw.next(10).await {
                Some(FrameworkEvent::Error {
                    request: Some(1),
                    message,
                }) => {
                    assert!(
                        message.contains("needs agent attribute os=windows"),
                        "{message}"
                    );
                    break;
                }
                Some(FrameworkEvent::Offers(_) | FrameworkEvent::Rescind { .. }) => {}
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
        assert_eq!(tasks.as_array().unwrap().len(), 0, "{tasks}");
        // One it meets is launched.
        let linux = TaskSpec {
            constraints: [("os".to_string(), "linux".to_string())].into(),
            ..spec
        };
        fw.launch_one(2, &linux).await;
    });
    // `wasmos run --constraint` with no agent that has it waits; one that matches runs.
    let out = c
        .cmd(&["run", "--constraint", "os=linux"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = c
        .cmd(&["run", "--detach", "--constraint", "os=plan9"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    let id = text(&out.stdout).trim().to_string();
    std::thread::sleep(Duration::from_secs(2));
    let shown = c.json(&["task", "show", &id, "-o", "json"]).unwrap();
    assert_eq!(shown["status"]["state"], "Staging", "{shown}");
    let out = c
        .cmd(&["run", "--constraint", "os"])
        .arg(sample("hello"))
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("not KEY=VALUE"));
}

#[test]
fn a_framework_is_offered_resources_and_launches_from_them() {
    let c = DevCluster::start_with(2, &["--agent-cpu", "2"]).unwrap();
    let spec = hello_spec(&c, 500);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut fw = Framework::connect(&c).await;
        let id = fw.subscribe("analytics", None).await;
        // One offer per agent (no other framework wants anything), with its attributes.
        let (offers, _) = fw.offers(10).await;
        assert_eq!(offers.len(), 2, "{offers:?}");
        for o in &offers {
            assert_eq!(o.unreserved.cpu_millis, 2000, "{o:?}");
            assert_eq!(o.attributes.get("dev").map(String::as_str), Some("true"));
        }
        let first = offers[0].clone();
        let second = offers[1].clone();

        // More than offered: refused with the reason, nothing launched.
        let too_big = TaskSpec {
            resources: Resources::new(3000, 64 << 20, 0),
            ..spec.clone()
        };
        fw.accept(1, first.id, vec![OfferOperation::Launch(vec![too_big])])
            .await;
        match fw.next(10).await {
            Some(FrameworkEvent::Error {
                request: Some(1),
                message,
            }) => assert!(message.contains("needs"), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The refused offer is gone: naming it again is a stale offer.
        fw.accept(
            2,
            first.id,
            vec![OfferOperation::Launch(vec![spec.clone()])],
        )
        .await;
        let mut launched = None;
        loop {
            match fw.next(10).await {
                Some(FrameworkEvent::Error {
                    request: Some(2),
                    message,
                }) => {
                    assert!(message.contains("not outstanding"), "{message}");
                    break;
                }
                Some(FrameworkEvent::Offers(_) | FrameworkEvent::Rescind { .. }) => {}
                other => panic!("expected a stale-offer refusal, got {other:?}"),
            }
        }
        let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
        assert_eq!(tasks.as_array().unwrap().len(), 0, "{tasks}");

        // A valid offer, accepted: the task runs and its updates come back.
        fw.accept(
            3,
            second.id,
            vec![OfferOperation::Launch(vec![spec.clone()])],
        )
        .await;
        let mut states = Vec::new();
        while states.last() != Some(&TaskState::Finished) {
            match fw.next(20).await {
                Some(FrameworkEvent::Accepted { request: 3, tasks }) => {
                    assert_eq!(tasks.len(), 1);
                    launched = Some(tasks[0]);
                }
                Some(FrameworkEvent::Update { task, status, .. }) => {
                    assert_eq!(Some(task), launched);
                    states.push(status.state);
                }
                Some(FrameworkEvent::Offers(_) | FrameworkEvent::Rescind { .. }) => {}
                other => panic!("unexpected {other:?} (states so far {states:?})"),
            }
        }
        // Updates come in the order the task went through its states. A framework gets a
        // task's latest status when the master handles a change, so a task that ended by then
        // (a loaded machine) is seen finished without its running.
        assert!(
            states.windows(2).all(|w| w[0].step() <= w[1].step()),
            "{states:?}"
        );
        let task = launched.unwrap();
        let logs = c.cli(&["logs", &task.to_string()]).unwrap();
        assert!(text(&logs.stdout).contains("args: from-framework"));
        let info = c
            .json(&["task", "show", &task.to_string(), "-o", "json"])
            .unwrap();
        assert_eq!(info["framework"], id.0, "{info}");
        assert_eq!(info["spec"]["role"], "analytics", "{info}");

        // RESERVE makes offered resources the role's: agent list shows them, and they come
        // back in offers as reserved for it. UNRESERVE gives them back.
        let offer = loop {
            if let Some(o) = fw.outstanding.values().next().cloned() {
                break o;
            }
            fw.next(10).await.expect("an offer");
        };
        let part = Resources::new(1000, 256 << 20, 0);
        // Without a guarantee or an allowance from an operator, a role reserves nothing.
        fw.accept(40, offer.id, vec![OfferOperation::Reserve(part.clone())])
            .await;
        // The refusal comes once the state machine has decided; what the accept left of the
        // offer may be offered before it, and the agent's whole offer after it.
        let mut refused = false;
        let offer = loop {
            match fw.next(10).await {
                Some(FrameworkEvent::Error {
                    request: Some(40),
                    message,
                }) => {
                    assert!(message.contains("dynamic reservations"), "{message}");
                    refused = true;
                }
                Some(FrameworkEvent::Offers(offers)) if refused => {
                    if let Some(o) = offers.iter().find(|o| o.agent == offer.agent) {
                        break o.clone();
                    }
                }
                Some(_) => {}
                None => panic!("the declined offer did not come back"),
            }
        };
        let set = c
            .cli(&[
                "role",
                "set",
                "analytics",
                "--reservation-allowance",
                "cpu=1,mem=256MiB",
            ])
            .unwrap();
        assert!(set.status.success(), "{}", text(&set.stderr));
        fw.accept(4, offer.id, vec![OfferOperation::Reserve(part.clone())])
            .await;
        let reserved_here = || {
            let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
            agents
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["id"] == offer.agent.as_str())
                .map(|a| a["reserved"]["analytics"]["cpu_millis"].clone())
                .unwrap()
        };
        let reserved_offer = loop {
            match fw.next(10).await {
                Some(FrameworkEvent::Accepted { request: 4, tasks }) => assert!(tasks.is_empty()),
                Some(FrameworkEvent::Offers(offers)) => {
                    if let Some(o) = offers.iter().find(|o| {
                        o.agent == offer.agent
                            && o.reserved.get("analytics").map(|r| r.cpu_millis) == Some(1000)
                    }) {
                        break o.clone();
                    }
                }
                Some(FrameworkEvent::Rescind { .. } | FrameworkEvent::Update { .. }) => {}
                other => panic!("expected the reservation back in an offer, got {other:?}"),
            }
        };
        assert_eq!(reserved_here(), 1000);
        fw.accept(5, reserved_offer.id, vec![OfferOperation::Unreserve(part)])
            .await;
        loop {
            match fw.next(10).await {
                Some(FrameworkEvent::Accepted { request: 5, .. }) => break,
                Some(FrameworkEvent::Error { message, .. }) => panic!("{message}"),
                Some(_) => {}
                None => panic!("no answer to the unreserve"),
            }
        }
        assert_eq!(reserved_here(), serde_json::Value::Null);

        // Suppressed, it is offered nothing; revived, it is offered again.
        let held: Vec<OfferId> = fw.outstanding.keys().copied().collect();
        fw.outstanding.clear();
        fw.call(&FrameworkCall::Decline {
            offers: held,
            refuse_ms: Some(0),
        })
        .await;
        fw.call(&FrameworkCall::Suppress).await;
        // Offers made before the master handled the suppress may still arrive: give them back.
        while let Some(ev) = fw.next(1).await {
            if let FrameworkEvent::Offers(offers) = ev {
                fw.outstanding.clear();
                let ids = offers.iter().map(|o| o.id).collect();
                fw.call(&FrameworkCall::Decline {
                    offers: ids,
                    refuse_ms: Some(0),
                })
                .await;
            }
        }
        while let Some(ev) = fw.next(3).await {
            assert!(
                !matches!(ev, FrameworkEvent::Offers(_)),
                "offered while suppressed: {ev:?}"
            );
        }
        fw.call(&FrameworkCall::Revive).await;
        let (offers, _) = fw.offers(10).await;
        assert!(!offers.is_empty());

        // Back with its id before the old session's end is seen (it still holds the offers
        // above): the same framework, and the new session is offered what the old one held
        // (offers last a minute otherwise).
        let mut again = Framework::connect(&c).await;
        assert_eq!(again.subscribe("analytics", Some(id)).await, id);
        let (offers, _) = again.offers(10).await;
        assert!(!offers.is_empty());
        fw.conn.close(0u32.into(), b"bye");
        // An id that is not ours is refused.
        let mut other = Framework::connect(&c).await;
        other
            .call(&FrameworkCall::Subscribe {
                name: "x".into(),
                role: None,
                revocable: false,
                framework: Some(FrameworkId(999)),
                failover_timeout_ms: None,
            })
            .await;
        match other.next(10).await {
            Some(FrameworkEvent::Error { message, .. }) => {
                assert!(message.contains("not one of yours"), "{message}")
            }
            e => panic!("expected a refusal, got {e:?}"),
        }
    });
}

/// With several masters, a framework that subscribes at a follower is sent to the leader.
#[test]
fn a_follower_sends_frameworks_to_the_leader() {
    let c = DevCluster::start_with(1, &["--masters", "3"]).unwrap();
    let (leader, st) = c.leader(None).unwrap();
    let addr_of = |id: u64| -> std::net::SocketAddr {
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut fw = Framework::connect_to(&c, addr_of(follower)).await;
        fw.call(&FrameworkCall::Subscribe {
            name: "test-framework".into(),
            role: Some("batch".into()),
            revocable: false,
            framework: None,
            failover_timeout_ms: None,
        })
        .await;
        match fw.next(10).await {
            Some(FrameworkEvent::NotLeader { addr: Some(a) }) => {
                assert_eq!(a, addr_of(leader).to_string());
            }
            other => panic!("a follower took a framework: {other:?}"),
        }
        let mut fw = Framework::connect_to(&c, addr_of(leader)).await;
        fw.subscribe("batch", None).await;
    });
}

/// The SDK example framework as a process: `kill -9` it after it launched its tasks, start it
/// again with its id within the failover timeout, and it gets its tasks back (reconciliation
/// reports them running) and sees them finish; they were never killed.
#[test]
fn the_example_framework_killed_and_restarted_keeps_its_tasks() {
    let c = DevCluster::start(1).unwrap();
    let spec = sample_spec(&c, "exit-code", 250, &[]);
    let hash = spec.bundle.to_string();
    let config = c.config();
    let framework = |args: &[&str]| {
        std::process::Command::new(example_bin("framework"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = framework(&["--failover-timeout-ms", "30000", &hash, "2", "0", "6000"]);
    let stdout = first.stdout.take().unwrap();
    let (mut id, mut tasks) = (None, Vec::new());
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("subscribed as ") {
            id = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("launched ") {
            tasks.extend(rest.split(", ").map(|t| t.parse::<TaskId>().unwrap()));
        }
        if tasks.len() == 2 {
            break;
        }
    }
    let id = id.expect("the framework did not say its id");
    assert_eq!(tasks.len(), 2);
    kill_dash_nine(first.id().into());
    let _ = first.wait();
    for t in &tasks {
        assert_ne!(task_state(&c, *t).0, "Killed");
    }
    let second = framework(&["--framework", &id, &hash, "0"]);
    let out = second.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("subscribed as {id}")), "{stdout}");
    for t in &tasks {
        assert!(stdout.contains(&format!("{t}: finished")), "{stdout}");
        assert_eq!(task_state(&c, *t).0, "Finished");
    }
    assert!(
        stdout.contains("all 2 task(s) ended, 0 without exit code 0"),
        "{stdout}"
    );
}

/// Every JSON example in docs/frameworks.md is a call or an event as this build encodes it.
#[test]
fn the_documented_json_examples_parse() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/frameworks.md"
    ))
    .unwrap();
    let mut examples = 0;
    for block in doc.split("```json\n").skip(1) {
        let block = block.split("```").next().unwrap();
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            let call = serde_json::from_str::<FrameworkCall>(line);
            let event = serde_json::from_str::<FrameworkEvent>(line);
            assert!(
                call.is_ok() || event.is_ok(),
                "{line}\nas a call: {call:?}\nas an event: {event:?}"
            );
            examples += 1;
        }
    }
    assert!(examples >= 21, "only {examples} examples found");
}

/// The Python example framework (standard library only) launches tasks over the HTTPS/JSON
/// API, acknowledges their updates and tears itself down; calls without a stream, on another
/// identity's stream, or that are not JSON calls are refused.
#[test]
fn a_python_framework_launches_tasks_over_https() {
    let c = DevCluster::start(1).unwrap();
    let spec = hello_spec(&c, 250);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/framework.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--config")
        .arg(c.config())
        .args([spec.bundle.as_str(), "2", "from", "python"])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("subscribed as fw-1 in role default"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(": finished").count(), 2, "{stdout}");
    assert!(
        stdout.contains("all 2 task(s) ended, 0 without exit code 0"),
        "{stdout}"
    );
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for t in tasks {
        assert_eq!(t["framework"], 1);
        assert_eq!(t["spec"]["args"], serde_json::json!(["from", "python"]));
        // Every update was acknowledged: nothing is owed.
        assert_eq!(t["status_seq"], t["acked_seq"], "{t}");
    }
    let logs = c.cli(&["logs", "t-1"]).unwrap();
    assert!(text(&logs.stdout).contains("args: from python"));
    // The framework tore itself down: its id is retired.
    let mut again = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut fw = Framework::connect(&c).await;
        fw.call(&FrameworkCall::Subscribe {
            name: "x".into(),
            role: None,
            revocable: false,
            framework: Some(FrameworkId(1)),
            failover_timeout_ms: None,
        })
        .await;
        fw.next(10).await
    });
    match again.take() {
        Some(FrameworkEvent::Error { message, .. }) => {
            assert!(message.contains("was removed"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Bad calls, straight over HTTPS with the operator's certificate.
    let probe = format!(
        "{}{}",
        wasmos_tests::PYTHON_HTTPS_CLIENT,
        r#"
def post(body, headers):
    c = connect()
    c.request("POST", "/api/v1/scheduler", body, headers)
    r = c.getresponse()
    print(r.status, r.read().decode())
post("not json", {})
post(json.dumps("Revive"), {})
post(json.dumps("Revive"), {"Wasmos-Stream-Id": "fw-9-0000"})
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &probe])
        .arg(c.config())
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines[0].starts_with("400 ") && lines[0].contains("not a scheduler call"),
        "{said}"
    );
    assert!(
        lines[1].starts_with("400 ") && lines[1].contains("Wasmos-Stream-Id"),
        "{said}"
    );
    assert!(
        lines[2].starts_with("404 ") && lines[2].contains("no open subscription"),
        "{said}"
    );
}
