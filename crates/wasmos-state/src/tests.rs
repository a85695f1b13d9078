//! Unit and property tests of the state machine's transitions.

use super::*;
use proptest::prelude::*;

fn agent(n: &str) -> AgentId {
    AgentId::new(n).unwrap()
}

fn hash() -> BundleHash {
    BundleHash::parse(&"ab".repeat(32)).unwrap()
}

fn spec(cpu: u64) -> TaskSpec {
    TaskSpec {
        resources: Resources::new(cpu, 1 << 20, 0),
        timeout_ms: 1000,
        ..TaskSpec::new("hello.wasm", hash())
    }
}

fn register(s: &mut ClusterState, name: &str, running: Vec<TaskId>) {
    let r = s.apply(Command::RegisterAgent {
        id: agent(name),
        total: Resources::new(1000, 1 << 30, 0),
        attributes: BTreeMap::new(),
        fuel_per_core_second: 1_000_000_000,
        running,
        now_ms: 1,
    });
    assert_eq!(r, CommandResult::Ok);
}

fn submitted(s: &mut ClusterState, cpu: u64) -> TaskId {
    s.apply(Command::AddBundle {
        hash: hash(),
        size: 10,
        now_ms: 1,
    });
    match s.apply(Command::SubmitTask {
        spec: spec(cpu),
        owner: "op".into(),
        now_ms: 2,
    }) {
        CommandResult::Submitted(id) => id,
        other => panic!("not submitted: {other:?}"),
    }
}

fn status(seq: u64, task: TaskId, state: TaskState) -> StatusUpdate {
    StatusUpdate {
        seq,
        task,
        status: TaskStatus::new(state),
    }
}

#[test]
fn submit_requires_an_uploaded_bundle() {
    let mut s = ClusterState::default();
    let r = s.apply(Command::SubmitTask {
        spec: spec(100),
        owner: "op".into(),
        now_ms: 0,
    });
    assert!(matches!(r, CommandResult::Rejected(_)));
    assert!(s.tasks.is_empty());
}

#[test]
fn assignment_respects_free_resources() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let t1 = submitted(&mut s, 800);
    let t2 = submitted(&mut s, 800);
    let assign = |task| Command::AssignTask {
        task,
        agent: agent("a"),
        now_ms: 3,
    };
    assert_eq!(s.apply(assign(t1)), CommandResult::Ok);
    assert!(matches!(s.apply(assign(t2)), CommandResult::Rejected(_)));
    assert!(matches!(s.apply(assign(t1)), CommandResult::Rejected(_)));
    assert_eq!(s.pending().len(), 1);
}

#[test]
fn status_updates_are_deduplicated_and_terminal_states_stick() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let t = submitted(&mut s, 100);
    s.apply(Command::AssignTask {
        task: t,
        agent: agent("a"),
        now_ms: 3,
    });
    let upd = |u| Command::AgentStatus {
        agent: agent("a"),
        update: u,
        now_ms: 4,
    };
    assert_eq!(
        s.apply(upd(status(1, t, TaskState::Running))),
        CommandResult::Ok
    );
    assert_eq!(
        s.apply(upd(status(1, t, TaskState::Running))),
        CommandResult::Duplicate
    );
    assert_eq!(
        s.apply(upd(status(2, t, TaskState::Finished))),
        CommandResult::Ok
    );
    assert!(matches!(
        s.apply(upd(status(3, t, TaskState::Running))),
        CommandResult::Rejected(_)
    ));
    assert_eq!(s.tasks[&t].status.state, TaskState::Finished);
}

#[test]
fn re_registering_loses_tasks_the_agent_no_longer_runs() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let kept = submitted(&mut s, 100);
    let dropped = submitted(&mut s, 100);
    for t in [kept, dropped] {
        s.apply(Command::AssignTask {
            task: t,
            agent: agent("a"),
            now_ms: 3,
        });
    }
    register(&mut s, "a", vec![kept]);
    assert_eq!(s.tasks[&kept].status.state, TaskState::Staging);
    assert_eq!(s.tasks[&dropped].status.state, TaskState::Lost);
    assert_eq!(s.tasks[&dropped].status.reason, Some(Reason::AgentLost));
}

proptest! {
    /// Whatever sequence of commands arrives, an agent is never over-committed, task ids are
    /// unique and increasing, and replaying the same commands gives the same state.
    #[test]
    fn never_overcommits_and_is_deterministic(ops in proptest::collection::vec((0u8..5, 0u64..1500, 0u64..6), 0..60)) {
        let mut cmds = vec![Command::AddBundle { hash: hash(), size: 1, now_ms: 0 }];
        for (kind, cpu, n) in ops {
            let name = if n % 2 == 0 { "a" } else { "b" };
            cmds.push(match kind {
                0 => Command::RegisterAgent {
                    id: agent(name),
                    total: Resources::new(1000, 1 << 30, 0),
                    attributes: BTreeMap::new(),
                    fuel_per_core_second: 1_000_000_000,
                    running: vec![TaskId(n)],
                    now_ms: n,
                },
                1 => Command::SubmitTask { spec: spec(cpu), owner: "o".into(), now_ms: n },
                2 => Command::AssignTask { task: TaskId(n), agent: agent(name), now_ms: n },
                3 => Command::AgentStatus {
                    agent: agent(name),
                    update: status(cpu, TaskId(n), if cpu % 2 == 0 { TaskState::Finished } else { TaskState::Running }),
                    now_ms: n,
                },
                _ => Command::AgentLost { agent: agent(name), now_ms: n },
            });
        }
        let mut s1 = ClusterState::default();
        let mut s2 = ClusterState::default();
        for c in &cmds {
            s1.apply(c.clone());
            s2.apply(c.clone());
            let used = s1.used_by_agent();
            for a in s1.agents.values() {
                prop_assert!(s1.used_on(&a.id).fits_in(&a.total));
                prop_assert_eq!(used.get(&a.id).cloned().unwrap_or_default(), s1.used_on(&a.id));
            }
        }
        prop_assert_eq!(&s1, &s2);
        let ids: Vec<u64> = s1.tasks.keys().map(|t| t.0).collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
