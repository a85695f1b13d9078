//! Driver tests: the protocol bookkeeping, with a recording scheduler and no I/O.

use wasmos_proto::{
    AgentId, FrameworkCall, FrameworkEvent, FrameworkId, OfferId, OfferInfo, Resources, TaskId,
    TaskState, TaskStatus,
};

use super::*;

#[derive(Default)]
struct Recorder {
    seen: Vec<String>,
    /// Kill this task on the next tick.
    kill_on_tick: Option<TaskId>,
    teardown_on_tick: bool,
    /// Said on every tick.
    waiting: Option<Resources>,
}

impl Scheduler for Recorder {
    fn subscribed(&mut self, _cx: &mut Context, framework: FrameworkId, role: &str) {
        self.seen.push(format!("subscribed {framework} {role}"));
    }
    fn offers(&mut self, cx: &mut Context, offers: Vec<OfferInfo>) {
        for o in offers {
            self.seen.push(format!("offer {}", o.id));
            cx.decline(vec![o.id], Some(1000));
        }
    }
    fn update(&mut self, _cx: &mut Context, task: TaskId, status: &TaskStatus) {
        self.seen.push(format!("update {task} {}", status.state));
    }
    fn tick(&mut self, cx: &mut Context) {
        if let Some(t) = self.kill_on_tick.take() {
            cx.kill(t);
        }
        if self.teardown_on_tick {
            cx.teardown();
        }
        cx.waiting(self.waiting.clone());
    }
}

fn subscribed(id: u64) -> FrameworkEvent {
    FrameworkEvent::Subscribed {
        framework: FrameworkId(id),
        role: "r".into(),
        heartbeat_interval_ms: 1000,
        failover_timeout_ms: 60_000,
    }
}

fn sent(actions: &[Action]) -> Vec<&FrameworkCall> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn subscribed_driver() -> Driver<Recorder> {
    let mut d = Driver::new(Recorder::default(), Options::new("t"));
    d.connected(0);
    d.event(subscribed(7), 0);
    d
}

#[test]
fn subscribes_again_with_its_id_and_reconciles() {
    let mut d = Driver::new(Recorder::default(), Options::new("t"));
    let first = d.connected(0);
    assert!(matches!(
        sent(&first)[..],
        [FrameworkCall::Subscribe {
            framework: None,
            ..
        }]
    ));
    let out = d.event(subscribed(7), 10);
    assert!(
        sent(&out).is_empty(),
        "no reconcile on the first subscription"
    );
    assert_eq!(d.framework(), Some(FrameworkId(7)));

    assert_eq!(d.disconnected(), vec![Action::Reconnect { addr: None }]);
    let again = d.connected(20);
    assert!(matches!(
        sent(&again)[..],
        [FrameworkCall::Subscribe {
            framework: Some(FrameworkId(7)),
            ..
        }]
    ));
    let out = d.event(subscribed(7), 30);
    assert!(
        sent(&out).contains(&&FrameworkCall::Reconcile { tasks: vec![] }),
        "{out:?}"
    );
    assert_eq!(
        d.scheduler().seen,
        ["subscribed fw-7 r", "subscribed fw-7 r"]
    );
}

#[test]
fn acknowledges_updates_after_the_scheduler_saw_them() {
    let mut d = subscribed_driver();
    let status = TaskStatus::new(TaskState::Finished);
    let out = d.event(
        FrameworkEvent::Update {
            task: TaskId(3),
            status: status.clone(),
            update: 2,
        },
        5,
    );
    assert_eq!(
        sent(&out),
        [&FrameworkCall::Acknowledge {
            task: TaskId(3),
            update: 2
        }]
    );
    assert_eq!(d.scheduler().seen.last().unwrap(), "update t-3 finished");
    // A reconciliation answer carries no id and needs no acknowledgement.
    let out = d.event(
        FrameworkEvent::Update {
            task: TaskId(4),
            status,
            update: 0,
        },
        6,
    );
    assert!(sent(&out).is_empty());
}

#[test]
fn a_silent_master_is_left_and_heartbeats_keep_it() {
    let mut d = subscribed_driver();
    assert_eq!(d.next_tick_ms(), Some(3000));
    assert!(d.tick(2000).is_empty());
    d.event(FrameworkEvent::Heartbeat, 2500);
    assert!(d.tick(4000).is_empty(), "the heartbeat moved the deadline");
    assert_eq!(d.tick(5500), vec![Action::Reconnect { addr: None }]);
    assert!(!d.is_subscribed());
}

#[test]
fn not_leader_goes_to_the_leader_and_a_refusal_fails() {
    let mut d = subscribed_driver();
    let out = d.event(
        FrameworkEvent::NotLeader {
            addr: Some("127.0.0.1:9".into()),
        },
        1,
    );
    assert_eq!(
        out,
        vec![Action::Reconnect {
            addr: Some("127.0.0.1:9".into())
        }]
    );
    let mut d = Driver::new(Recorder::default(), Options::new("t"));
    d.connected(0);
    let out = d.event(
        FrameworkEvent::Error {
            request: None,
            message: "framework 3 is not one of yours".into(),
        },
        1,
    );
    assert_eq!(
        out,
        vec![Action::Failed("framework 3 is not one of yours".into())]
    );
}

#[test]
fn offers_are_answered_and_calls_made_while_away_wait() {
    let mut d = subscribed_driver();
    let offer = OfferInfo {
        id: OfferId(5),
        agent: AgentId::new("a1").unwrap(),
        attributes: Default::default(),
        unreserved: Resources::new(1000, 1 << 30, 1 << 30),
        reserved: Default::default(),
        revocable: Resources::default(),
    };
    let out = d.event(FrameworkEvent::Offers(vec![offer]), 1);
    assert_eq!(
        sent(&out),
        [&FrameworkCall::Decline {
            offers: vec![OfferId(5)],
            refuse_ms: Some(1000)
        }]
    );
    d.disconnected();
    d.scheduler_mut().kill_on_tick = Some(TaskId(9));
    d.scheduler_mut().teardown_on_tick = true;
    assert!(d.tick(2).is_empty(), "nothing is sent while away");
    assert_eq!(d.disconnected(), vec![Action::Reconnect { addr: None }]);
    d.connected(3);
    let out = d.event(subscribed(7), 4);
    assert_eq!(
        out,
        vec![
            Action::Send(FrameworkCall::Kill { task: TaskId(9) }),
            Action::Send(FrameworkCall::Teardown),
            Action::Finished
        ]
    );
}

/// What a scheduler waits for goes out when it changes, not on every tick, and is said again
/// to the master it subscribes to after a reconnection (which has forgotten it).
#[test]
fn waiting_is_sent_on_change_and_again_after_a_reconnection() {
    let mut d = subscribed_driver();
    assert!(sent(&d.tick(1)).is_empty(), "nothing waits: nothing said");
    let want = Resources::new(1000, 1 << 20, 0);
    d.scheduler_mut().waiting = Some(want.clone());
    let waiting = FrameworkCall::Waiting {
        resources: Some(want.clone()),
    };
    assert_eq!(sent(&d.tick(2)), [&waiting]);
    assert!(sent(&d.tick(3)).is_empty(), "unchanged: not said again");
    d.disconnected();
    d.connected(4);
    let out = d.event(subscribed(7), 5);
    assert!(sent(&out).contains(&&waiting), "{out:?}");
    d.scheduler_mut().waiting = None;
    assert_eq!(
        sent(&d.tick(6)),
        [&FrameworkCall::Waiting { resources: None }]
    );
    d.disconnected();
    d.connected(7);
    let out = d.event(subscribed(7), 8);
    assert!(
        !sent(&out)
            .iter()
            .any(|c| matches!(c, FrameworkCall::Waiting { .. })),
        "{out:?}"
    );
}
