//! Unit and property tests of the state machine's transitions.

use super::*;
use proptest::prelude::*;
use wasmos_proto::{Change, Event};

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
        reserved: BTreeMap::new(),
        running,
        peer_addr: None,
        now_ms: 1,
    });
    assert_eq!(r, CommandResult::Ok);
}

fn submitted(s: &mut ClusterState, cpu: u64) -> TaskId {
    s.apply(Command::AddBundle {
        hash: hash(),
        size: 10,
        now_ms: 1,
        // The tenant of the test frameworks, so their launches may name it.
        reader: Some("a".into()),
    });
    match s.apply(Command::SubmitTask {
        id: None,
        spec: spec(cpu),
        owner: "op".into(),
        now_ms: 2,
        key: None,
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
        id: None,
        spec: spec(100),
        owner: "op".into(),
        now_ms: 0,
        key: None,
    });
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::NotFound(_))),
        "{r:?}"
    );
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
    assert!(matches!(
        s.apply(assign(t2)),
        CommandResult::Rejected(Rejection::OverLimit(_))
    ));
    assert!(matches!(
        s.apply(assign(t1)),
        CommandResult::Rejected(Rejection::Conflict(_))
    ));
    assert_eq!(s.tasks.values().filter(|t| t.agent.is_none()).count(), 1);
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
fn progress_is_recorded_only_from_the_agent_running_the_task_and_results_within_bounds() {
    use wasmos_proto::{TaskProgress, TaskResult};
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    register(&mut s, "b", vec![]);
    let t = submitted(&mut s, 100);
    s.apply(Command::AssignTask {
        task: t,
        agent: agent("a"),
        now_ms: 3,
    });
    let half = TaskProgress {
        permille: 500,
        message: "half".into(),
    };
    let progress = |on: &str, p: &TaskProgress| Command::Progress {
        agent: agent(on),
        updates: vec![(t, p.clone())],
    };
    let mut events = Vec::new();
    // Another agent cannot speak for it; an out-of-bounds report is dropped.
    s.apply_recording(progress("b", &half), &mut events);
    let bad = TaskProgress {
        permille: 1001,
        message: String::new(),
    };
    s.apply_recording(progress("a", &bad), &mut events);
    assert_eq!(s.tasks[&t].progress, None);
    assert!(events.is_empty(), "{events:?}");
    s.apply_recording(progress("a", &half), &mut events);
    assert_eq!(s.tasks[&t].progress, Some(half.clone()));
    assert!(matches!(&events[..], [e] if matches!(&e.change,
        Change::Task { progress: Some(p), .. } if *p == half)));
    // The same report again is no change and no event.
    s.apply_recording(progress("a", &half), &mut events);
    assert_eq!(events.len(), 1);

    // Its end: results an agent reports past the bounds are not kept, and the record says so.
    let mut end = status(1, t, TaskState::Finished);
    end.status.results = vec![
        TaskResult {
            name: "ok".into(),
            value: b"1".to_vec(),
        },
        TaskResult {
            name: "too/big".into(),
            value: vec![0; 10],
        },
    ];
    s.apply(Command::AgentStatus {
        agent: agent("a"),
        update: end,
        now_ms: 4,
    });
    let done = &s.tasks[&t];
    assert!(done.status.results.is_empty());
    assert!(
        done.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("results were refused")),
        "{:?}",
        done.status
    );
    // Ended, it takes no more progress.
    s.apply(progress(
        "a",
        &TaskProgress {
            permille: 900,
            message: String::new(),
        },
    ));
    assert_eq!(s.tasks[&t].progress, Some(half));
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
    // The agent reported `dropped` running once: it knew the task, and has lost it since.
    let r = s.apply(Command::AgentStatus {
        agent: agent("a"),
        update: status(1, dropped, TaskState::Running),
        now_ms: 4,
    });
    assert_eq!(r, CommandResult::Ok);
    let never_heard = submitted(&mut s, 100);
    s.apply(Command::AssignTask {
        task: never_heard,
        agent: agent("a"),
        now_ms: 5,
    });
    register(&mut s, "a", vec![kept]);
    assert_eq!(s.tasks[&kept].status.state, TaskState::Staging);
    assert_eq!(s.tasks[&dropped].status.state, TaskState::Lost);
    assert_eq!(s.tasks[&dropped].status.reason, Some(Reason::AgentLost));
    // A task the agent never reported on was never started there (the launch was lost with a
    // master, say): it stays placed, for the master to send again, rather than lost.
    assert_eq!(s.tasks[&never_heard].status.state, TaskState::Staging);
    assert_eq!(s.tasks[&never_heard].agent, Some(agent("a")));
}

fn assert_rejected(r: &CommandResult, says: &str) {
    assert!(
        matches!(r, CommandResult::Rejected(m) if m.message().contains(says)),
        "expected a refusal saying `{says}`, got {r:?}"
    );
}

fn role(r: &str) -> Role {
    Role::new(r).unwrap()
}

fn framework(s: &mut ClusterState, r: &str) -> FrameworkId {
    match s.apply(Command::RegisterFramework {
        name: "test".into(),
        role: role(r),
        owner: "wasmos://tenant/a/u".into(),
        revocable: false,
        failover_timeout_ms: 60_000,
        acknowledges: true,
        now_ms: 1,
    }) {
        CommandResult::Framework(id) => id,
        other => panic!("not registered: {other:?}"),
    }
}

fn unreserved(cpu: u64) -> Pools {
    Pools {
        unreserved: Resources::new(cpu, 1 << 20, 0),
        ..Pools::default()
    }
}

/// One waiting task, launched with `charge`.
fn waiting(id: TaskId, charge: Pools) -> Vec<LaunchTask> {
    vec![LaunchTask {
        id,
        spec: None,
        charge,
    }]
}

fn launch(fw: FrameworkId, on: &str, tasks: Vec<LaunchTask>) -> Command {
    Command::Launch {
        framework: fw,
        agent: agent(on),
        reservations: Vec::new(),
        tasks,
        now_ms: 5,
    }
}

#[test]
fn launches_are_rechecked_so_two_frameworks_never_share_resources() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let f1 = framework(&mut s, "x");
    let f2 = framework(&mut s, "y");
    let t1 = submitted(&mut s, 700);
    let t2 = submitted(&mut s, 700);
    let one = |id| LaunchTask {
        id,
        spec: None,
        charge: unreserved(700),
    };
    assert_eq!(s.apply(launch(f1, "a", vec![one(t1)])), CommandResult::Ok);
    assert_eq!(s.tasks[&t1].agent, Some(agent("a")));
    assert_eq!(s.tasks[&t1].framework, Some(f1));
    // A second allocator decision for the same CPU (a stale offer) is refused whole.
    let r = s.apply(launch(f2, "a", vec![one(t2)]));
    assert_rejected(&r, "unreserved");
    assert_eq!(s.tasks[&t2].agent, None);
    // Launching a placed task again, or with a charge that is not its size, is refused.
    let r = s.apply(launch(f1, "a", vec![one(t1)]));
    assert_rejected(&r, "already placed");
    let wrong = LaunchTask {
        id: t2,
        spec: None,
        charge: unreserved(100),
    };
    let r = s.apply(launch(f2, "a", vec![wrong]));
    assert_rejected(&r, "charged");
    // Once t1 ends its resources are free again.
    s.apply(Command::AgentStatus {
        agent: agent("a"),
        update: status(1, t1, TaskState::Finished),
        now_ms: 6,
    });
    assert!(s.charges.is_empty());
    assert_eq!(s.apply(launch(f2, "a", vec![one(t2)])), CommandResult::Ok);
    // Unknown framework or agent.
    let t3 = submitted(&mut s, 10);
    let small = || waiting(t3, unreserved(10));
    assert_rejected(
        &s.apply(launch(FrameworkId(99), "a", small())),
        "unknown framework",
    );
    assert_rejected(&s.apply(launch(f1, "zz", small())), "unknown agent");
}

#[test]
fn reservations_are_held_for_their_role_and_only_dynamic_ones_are_released() {
    let mut s = ClusterState::default();
    s.apply(Command::RegisterAgent {
        id: agent("a"),
        total: Resources::new(1000, 1 << 30, 0),
        attributes: BTreeMap::new(),
        fuel_per_core_second: 0,
        reserved: BTreeMap::from([(role("x"), Resources::new(400, 64 << 20, 0))]),
        running: vec![],
        peer_addr: None,
        now_ms: 1,
    });
    let fx = framework(&mut s, "x/sub");
    let fy = framework(&mut s, "y");
    let fxx = framework(&mut s, "x");
    // y takes the 600 unreserved; the reserved 400 is x's alone.
    let ty = submitted(&mut s, 600);
    assert_eq!(
        s.apply(launch(fy, "a", waiting(ty, unreserved(600)))),
        CommandResult::Ok
    );
    let ty2 = submitted(&mut s, 100);
    let r = s.apply(launch(fy, "a", waiting(ty2, unreserved(100))));
    assert!(matches!(r, CommandResult::Rejected(_)), "{r:?}");
    // Charging y's task to x's reservation is refused too.
    let stolen = Pools {
        reserved: BTreeMap::from([(role("x"), Resources::new(100, 1 << 20, 0))]),
        ..Pools::default()
    };
    let r = s.apply(launch(fy, "a", waiting(ty2, stolen.clone())));
    assert_rejected(&r, "cannot use");
    // A task of x/sub may use it: a framework's new task, created by the launch.
    let mut sx = spec(100);
    sx.role = Some("x/sub".into());
    let tx = TaskId(50);
    let r = s.apply(launch(
        fx,
        "a",
        vec![LaunchTask {
            id: tx,
            spec: Some(sx),
            charge: stolen,
        }],
    ));
    assert_eq!(r, CommandResult::Ok);
    assert_eq!(s.tasks[&tx].owner, "wasmos://tenant/a/u");
    assert_eq!(s.next_task_id, 50);
    // A reservation change of x's CPU on agent a, with nothing launched. The static
    // reservation cannot be unreserved; a dynamic one can.
    let change = |reserve: bool, cpu| {
        let (role, resources) = (role("x"), Resources::new(cpu, 0, 0));
        let op = if reserve {
            ReservationOp::Reserve { role, resources }
        } else {
            ReservationOp::Unreserve { role, resources }
        };
        Command::Launch {
            framework: fxx,
            agent: agent("a"),
            reservations: vec![op],
            tasks: vec![],
            now_ms: 9,
        }
    };
    assert_rejected(&s.apply(change(false, 100)), "dynamically");
    // Dynamic reservations stay within what operators allow the role: its guarantee (none
    // here) or an allowance.
    assert_rejected(&s.apply(change(true, 300)), "may hold at most");
    let allowance = RoleRecord {
        reservation_allowance: Some(Resources::new(800, 0, 0)),
        ..RoleRecord::default()
    };
    s.apply(Command::SetRole {
        role: role("x"),
        record: allowance,
    });
    // Only for the framework's own role (or beneath it).
    let r = s.apply(Command::Launch {
        framework: fy,
        agent: agent("a"),
        reservations: vec![ReservationOp::Reserve {
            role: role("x"),
            resources: Resources::new(100, 0, 0),
        }],
        tasks: vec![],
        now_ms: 9,
    });
    assert_rejected(&r, "cannot reserve for role x");
    s.apply(Command::AgentStatus {
        agent: agent("a"),
        update: status(1, ty, TaskState::Finished),
        now_ms: 7,
    });
    assert_eq!(s.apply(change(true, 300)), CommandResult::Ok);
    assert_eq!(
        s.reserved_on(&agent("a"))[&role("x")],
        Resources::new(700, 64 << 20, 0)
    );
    // 700 reserved + the 300 left: a second reserve of 400 does not fit.
    assert!(matches!(
        s.apply(change(true, 400)),
        CommandResult::Rejected(_)
    ));
    assert_eq!(s.apply(change(false, 300)), CommandResult::Ok);
    assert!(s.reservations.is_empty());
}

proptest! {
    /// Whatever sequence of commands arrives, an agent is never over-committed, task ids are
    /// unique and increasing, and replaying the same commands gives the same state.
    #[test]
    fn never_overcommits_and_is_deterministic(ops in proptest::collection::vec((0u8..10, 0u64..1500, 0u64..6), 0..60)) {
        let allowance = RoleRecord {
            reservation_allowance: Some(Resources::new(1500, 0, 0)),
            ..RoleRecord::default()
        };
        let mut cmds = vec![
            Command::AddBundle { hash: hash(), size: 1, now_ms: 0, reader: None },
            Command::SetRole { role: role("r"), record: allowance },
        ];
        for (kind, cpu, n) in ops {
            let name = if n % 2 == 0 { "a" } else { "b" };
            cmds.push(match kind {
                0 => Command::RegisterAgent {
                    id: agent(name),
                    total: Resources::new(1000, 1 << 30, 0),
                    attributes: BTreeMap::new(),
                    fuel_per_core_second: 1_000_000_000,
                    reserved: BTreeMap::new(),
                    running: vec![TaskId(n)],
                    peer_addr: None,
                    now_ms: n,
                },
                1 => {
                    let mut spec = spec(cpu);
                    spec.role = ["r", "r/x", "s"].get(n as usize).map(|r| r.to_string());
                    Command::SubmitTask { id: None, spec, owner: "o".into(), now_ms: n, key: None }
                }
                2 => Command::AssignTask { task: TaskId(n), agent: agent(name), now_ms: n },
                3 => Command::AgentStatus {
                    agent: agent(name),
                    update: status(cpu, TaskId(n), if cpu % 2 == 0 { TaskState::Finished } else { TaskState::Running }),
                    now_ms: n,
                },
                4 => Command::AgentLost {
                    agent: agent(name),
                    registered_ms: None,
                    now_ms: n,
                },
                5 => Command::RegisterFramework {
                    name: "f".into(), role: role("r"), owner: "o".into(), revocable: false,
                    failover_timeout_ms: 1, acknowledges: n % 2 == 0, now_ms: n,
                },
                // Launch a waiting task, charged partly to a reservation.
                6 => Command::Launch {
                    framework: FrameworkId(n % 3),
                    agent: agent(name),
                    reservations: vec![ReservationOp::Reserve { role: role("r"), resources: Resources::new(cpu / 3, 0, 0) }],
                    tasks: vec![LaunchTask {
                        id: TaskId(n),
                        spec: None,
                        charge: Pools {
                            unreserved: Resources::new(cpu / 2, 1 << 20, 0),
                            reserved: BTreeMap::from([(role("r"), Resources::new(cpu - cpu / 2, 0, 0))]),
                            revocable: Resources::default(),
                        },
                    }],
                    now_ms: n,
                },
                8 => Command::RemoveReservation { agent: agent(name), role: role("r") },
                9 => Command::Collect { before_ms: n, keep: cpu % 4, now_ms: n },
                // Launch a new task straight from the framework.
                _ => Command::Launch {
                    framework: FrameworkId(n % 3),
                    agent: agent(name),
                    reservations: vec![ReservationOp::Unreserve { role: role("r"), resources: Resources::new(cpu / 4, 0, 0) }],
                    tasks: vec![LaunchTask {
                        id: TaskId(100 + cpu),
                        spec: Some(spec(cpu)),
                        charge: Pools { unreserved: Resources::new(cpu, 1 << 20, 0), ..Pools::default() },
                    }],
                    now_ms: n,
                },
            });
        }
        let mut s1 = ClusterState::default();
        let mut s2 = ClusterState::default();
        // s2 records events: recording changes nothing else, and the events' last word on
        // every task is the state it is in.
        let mut events = Vec::new();
        for c in &cmds {
            s1.apply(c.clone());
            let mut out = Vec::new();
            s2.apply_recording(c.clone(), &mut out);
            events.extend(out);
            let used = s1.used_by_agent();
            for a in s1.agents.values() {
                prop_assert!(s1.used_on(&a.id).fits_in(&a.total));
                let reserved = s1.reserved_on(&a.id);
                let all = reserved.values().fold(Resources::default(), |x, r| x.saturating_add(r));
                prop_assert!(all.fits_in(&a.total));
                let held = s1.held_on(&a.id);
                prop_assert!(held.unreserved.fits_in(&a.total.saturating_sub(&all)));
                for (r, h) in &held.reserved {
                    prop_assert!(h.fits_in(&reserved.get(r).cloned().unwrap_or_default()));
                }
                prop_assert_eq!(used.get(&a.id).cloned().unwrap_or_default(), s1.used_on(&a.id));
            }
            // The live-task index kept up command by command is what a rebuild finds.
            let mut fresh = s1.clone();
            fresh.live = Default::default();
            fresh.reindex();
            prop_assert_eq!(&fresh.live.tasks, &s1.live.tasks);
            prop_assert_eq!(&fresh.live.by_role, &s1.live.by_role);
        }
        prop_assert_eq!(&s1, &s2);
        let mut last = BTreeMap::new();
        for e in &events {
            if let Change::Task { id, state, agent, .. } = &e.change {
                last.insert(*id, (*state, agent.clone()));
            }
        }
        for t in s2.tasks.values() {
            prop_assert_eq!(last.get(&t.id), Some(&(t.status.state, t.agent.clone())), "task {}", t.id);
        }
        let ids: Vec<u64> = s1.tasks.keys().map(|t| t.0).collect();
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn a_resent_submission_key_returns_the_first_task_until_it_expires() {
    let mut s = ClusterState::default();
    s.apply(Command::AddBundle {
        hash: hash(),
        size: 10,
        now_ms: 1,
        reader: None,
    });
    let submit = |s: &mut ClusterState, owner: &str, key: &str, now_ms: u64| match s.apply(
        Command::SubmitTask {
            id: None,
            spec: spec(100),
            owner: owner.into(),
            now_ms,
            key: Some(key.into()),
        },
    ) {
        CommandResult::Submitted(id) => id,
        other => panic!("not submitted: {other:?}"),
    };
    let first = submit(&mut s, "alice", "k1", 10);
    // The retry of a submission whose answer was lost: the same task, no second one.
    assert_eq!(submit(&mut s, "alice", "k1", 20), first);
    assert_eq!(s.tasks.len(), 1);
    // Keys are per owner: another owner's identical key is another submission.
    let other = submit(&mut s, "bob", "k1", 30);
    assert_ne!(other, first);
    // Once the key has expired, it is a new submission, and the old key is forgotten.
    let later = submit(&mut s, "alice", "k1", 10 + SUBMISSION_KEY_TTL_MS + 1);
    assert_ne!(later, first);
    assert_eq!(s.tasks.len(), 3);
    // Alice's old entry is gone; Bob's (recorded later) and Alice's new one remain.
    assert_eq!(s.submissions.len(), 2, "{:?}", s.submissions);
    assert_eq!(s.submission_times.len(), 2);
}

#[test]
fn a_task_state_never_moves_back() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let t = submitted(&mut s, 100);
    s.apply(Command::AssignTask {
        task: t,
        agent: agent("a"),
        now_ms: 3,
    });
    let update = |s: &mut ClusterState, seq, state| {
        s.apply(Command::AgentStatus {
            agent: agent("a"),
            update: status(seq, t, state),
            now_ms: 4,
        })
    };
    assert_eq!(update(&mut s, 1, TaskState::Running), CommandResult::Ok);
    assert_rejected(&update(&mut s, 2, TaskState::Starting), "cannot go back");
    assert_eq!(s.tasks[&t].status.state, TaskState::Running);
    assert_eq!(update(&mut s, 3, TaskState::Finished), CommandResult::Ok);
}

#[test]
fn framework_updates_wait_for_acknowledgement_and_die_with_the_framework() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let fw = framework(&mut s, "r");
    let t = submitted(&mut s, 100);
    assert_eq!(
        s.apply(launch(fw, "a", waiting(t, unreserved(100)))),
        CommandResult::Ok
    );
    assert!(s.unacked.is_empty(), "a launch is not a status change");
    let agent_status = |seq, state| Command::AgentStatus {
        agent: agent("a"),
        update: status(seq, t, state),
        now_ms: 6,
    };
    assert_eq!(
        s.apply(agent_status(1, TaskState::Running)),
        CommandResult::Ok
    );
    assert_eq!(s.tasks[&t].status_seq, 1);
    assert!(s.unacked.contains(&(fw, t)));
    let ack = |update| Command::Acknowledge {
        framework: fw,
        task: t,
        update,
    };
    // Acknowledging an update not sent yet does not swallow it.
    assert_eq!(
        s.apply(agent_status(2, TaskState::Finished)),
        CommandResult::Ok
    );
    assert_eq!(s.apply(ack(1)), CommandResult::Ok);
    assert!(s.unacked.contains(&(fw, t)), "update 2 is still owed");
    assert_eq!(s.apply(ack(9)), CommandResult::Ok);
    assert_eq!(s.tasks[&t].acked_seq, 2);
    assert!(s.unacked.is_empty());
    assert_eq!(s.apply(ack(2)), CommandResult::Duplicate);
    let other = framework(&mut s, "r");
    assert_rejected(
        &s.apply(Command::Acknowledge {
            framework: other,
            task: t,
            update: 3,
        }),
        "not framework",
    );

    // A removed framework's id is retired: no launches, no second removal, nothing owed.
    let t2 = submitted(&mut s, 100);
    assert_eq!(
        s.apply(launch(fw, "a", waiting(t2, unreserved(100)))),
        CommandResult::Ok
    );
    s.apply(Command::AgentStatus {
        agent: agent("a"),
        update: status(3, t2, TaskState::Running),
        now_ms: 7,
    });
    assert!(s.unacked.contains(&(fw, t2)));
    let remove = Command::RemoveFramework {
        framework: fw,
        now_ms: 8,
    };
    assert_eq!(s.apply(remove.clone()), CommandResult::Ok);
    assert!(s.unacked.is_empty());
    assert_rejected(&s.apply(remove), "was removed");
    let t3 = submitted(&mut s, 100);
    assert_rejected(
        &s.apply(launch(fw, "a", waiting(t3, unreserved(100)))),
        "was removed",
    );
    assert_rejected(
        &s.apply(Command::SetFailoverTimeout {
            framework: fw,
            failover_timeout_ms: 5,
        }),
        "was removed",
    );
}

fn other_hash(n: u8) -> BundleHash {
    BundleHash::parse(&format!("{n:02x}").repeat(32)).unwrap()
}

const ALICE: &str = "wasmos://tenant/acme/alice";
const CAROL: &str = "wasmos://tenant/acme/carol";
const BOB: &str = "wasmos://tenant/evil/bob";
const OP: &str = "wasmos://operator/root";

fn upload(s: &mut ClusterState, h: &BundleHash, size: u64, by: Option<&str>) -> CommandResult {
    s.apply(Command::AddBundle {
        hash: h.clone(),
        size,
        now_ms: 10,
        reader: by.map(str::to_string),
    })
}

fn submit_as(s: &mut ClusterState, owner: &str, spec: TaskSpec) -> CommandResult {
    s.apply(Command::SubmitTask {
        id: None,
        spec,
        owner: owner.into(),
        now_ms: 20,
        key: None,
    })
}

/// A group of one task, no inputs, no retries.
fn one_group(name: &str, task: TaskSpec) -> wasmos_proto::GroupSpec {
    wasmos_proto::GroupSpec {
        name: name.into(),
        count: 1,
        task,
        depends_on: vec![],
        input_pattern: None,
        inputs: vec![],
        constraints: BTreeMap::new(),
        retries: 0,
        backoff_ms: 0,
        spread: None,
        max_unavailable: 0,
    }
}

fn tenant_spec(bundle: &BundleHash, role: &str) -> TaskSpec {
    TaskSpec {
        role: Some(role.into()),
        ..TaskSpec {
            bundle: bundle.clone(),
            ..spec(100)
        }
    }
}

#[test]
fn a_blob_is_read_only_by_tenants_that_uploaded_or_produced_it() {
    let mut s = ClusterState::default();
    let private = other_hash(1);
    let secret_input = other_hash(2);
    let nowhere = other_hash(3);
    upload(&mut s, &private, 10, Some("acme"));
    upload(&mut s, &secret_input, 10, Some("acme"));
    // Alice and Carol (same tenant) may use it; the operator may; Bob may not, and Bob's
    // refusal reads exactly like a hash nobody uploaded.
    assert!(matches!(
        submit_as(&mut s, ALICE, tenant_spec(&private, "acme")),
        CommandResult::Submitted(_)
    ));
    assert!(matches!(
        submit_as(&mut s, CAROL, tenant_spec(&private, "acme")),
        CommandResult::Submitted(_)
    ));
    assert!(matches!(
        submit_as(&mut s, OP, tenant_spec(&private, "default")),
        CommandResult::Submitted(_)
    ));
    let theirs = submit_as(&mut s, BOB, tenant_spec(&private, "evil"));
    let none = submit_as(&mut s, BOB, tenant_spec(&nowhere, "evil"));
    let text = |r: &CommandResult, h: &BundleHash| match r {
        CommandResult::Rejected(m) => m.message().replace(h.as_str(), "HASH"),
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(text(&theirs, &private), text(&none, &nowhere));
    // Every field that names a blob is checked: stdin, mounts, inputs.
    upload(&mut s, &other_hash(9), 10, Some("evil"));
    let mine = other_hash(9);
    let with = |f: &dyn Fn(&mut TaskSpec)| {
        let mut spec = tenant_spec(&mine, "evil");
        f(&mut spec);
        spec
    };
    for (what, spec) in [
        ("stdin", with(&|t| t.stdin = Some(secret_input.clone()))),
        (
            "mount",
            with(&|t| {
                t.mounts = vec![wasmos_proto::Mount {
                    archive: secret_input.clone(),
                    guest: "/data".into(),
                }]
            }),
        ),
        (
            "input",
            with(&|t| {
                t.inputs = vec![wasmos_proto::InputFile {
                    blob: secret_input.clone(),
                    guest: "/in/x".into(),
                }]
            }),
        ),
    ] {
        let r = submit_as(&mut s, BOB, spec);
        assert_rejected(&r, "has not been uploaded");
        assert!(!format!("{r:?}").contains("acme"), "{what}: {r:?}");
    }
    assert!(!s.may_read(BOB, &secret_input));
    // Bob sends the same bytes himself: now he holds them too.
    upload(&mut s, &secret_input, 10, Some("evil"));
    assert!(s.may_read(BOB, &secret_input));
    assert!(matches!(
        submit_as(&mut s, BOB, with(&|t| t.stdin = Some(secret_input.clone()))),
        CommandResult::Submitted(_)
    ));
}

#[test]
fn outputs_are_readable_by_the_producing_tenant_only() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let CommandResult::Submitted(t) = submit_as(&mut s, ALICE, tenant_spec(&bundle, "acme")) else {
        panic!()
    };
    s.apply(Command::AssignTask {
        task: t,
        agent: agent("a"),
        now_ms: 21,
    });
    let out = other_hash(7);
    upload(&mut s, &out, 5, None);
    assert!(!s.may_read(ALICE, &out) && !s.may_read(BOB, &out));
    let mut done = TaskStatus::new(TaskState::Finished);
    done.outputs = vec![wasmos_proto::OutputFile {
        path: "part-0".into(),
        blob: out.clone(),
        size: 5,
        held_by: None,
    }];
    s.apply(Command::AgentStatus {
        agent: agent("a"),
        update: StatusUpdate {
            seq: 1,
            task: t,
            status: done,
        },
        now_ms: 22,
    });
    assert!(s.may_read(ALICE, &out) && s.may_read(CAROL, &out) && s.may_read(OP, &out));
    assert!(!s.may_read(BOB, &out));
}

#[test]
fn result_files_are_readable_by_the_producing_tenant_only_and_bounded() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let file = |name: &str, blob: &BundleHash| wasmos_proto::ResultFile {
        name: name.into(),
        blob: blob.clone(),
        size: 5,
    };
    let finish = |s: &mut ClusterState, seq: u64, files: Vec<wasmos_proto::ResultFile>| {
        let CommandResult::Submitted(t) = submit_as(s, ALICE, tenant_spec(&bundle, "acme")) else {
            panic!()
        };
        s.apply(Command::AssignTask {
            task: t,
            agent: agent("a"),
            now_ms: 21,
        });
        let mut done = TaskStatus::new(TaskState::Finished);
        done.files = files;
        s.apply(Command::AgentStatus {
            agent: agent("a"),
            update: StatusUpdate {
                seq,
                task: t,
                status: done,
            },
            now_ms: 22,
        });
        t
    };
    let model = other_hash(7);
    upload(&mut s, &model, 5, None);
    assert!(!s.may_read(ALICE, &model));
    let t = finish(&mut s, 1, vec![file("model", &model)]);
    assert_eq!(s.tasks[&t].status.files, [file("model", &model)]);
    assert!(s.may_read(ALICE, &model) && s.may_read(CAROL, &model));
    assert!(!s.may_read(BOB, &model));
    // An agent's report out of bounds (two files of one name) is dropped, and grants nothing.
    let other = other_hash(8);
    upload(&mut s, &other, 5, None);
    let t = finish(&mut s, 2, vec![file("x", &other), file("x", &other)]);
    assert!(s.tasks[&t].status.files.is_empty());
    assert!(
        s.tasks[&t]
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("refused")),
        "{:?}",
        s.tasks[&t].status
    );
    assert!(!s.may_read(ALICE, &other));
}

#[test]
fn nothing_is_placed_on_a_drained_agent_and_a_restart_keeps_the_drain() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let drain = |s: &mut ClusterState, name: &str, drain: bool| {
        s.apply(Command::DrainAgent {
            agent: agent(name),
            drain,
        })
    };
    assert!(matches!(
        drain(&mut s, "nope", true),
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
    assert_eq!(drain(&mut s, "a", true), CommandResult::Ok);
    assert_eq!(
        drain(&mut s, "a", true),
        CommandResult::Duplicate,
        "no change"
    );
    let CommandResult::Submitted(t) = submit_as(&mut s, ALICE, tenant_spec(&bundle, "acme")) else {
        panic!()
    };
    let assign = |s: &mut ClusterState| {
        s.apply(Command::AssignTask {
            task: t,
            agent: agent("a"),
            now_ms: 21,
        })
    };
    assert_rejected(&assign(&mut s), "is draining");
    // The agent restarting does not end an operator's drain.
    register(&mut s, "a", vec![]);
    assert!(s.agents[&agent("a")].draining);
    assert_rejected(&assign(&mut s), "is draining");
    assert_eq!(drain(&mut s, "a", false), CommandResult::Ok);
    assert_eq!(assign(&mut s), CommandResult::Ok);
}

#[test]
fn an_operators_resize_lasts_across_restarts_until_reset() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let resize = |s: &mut ClusterState, name: &str, total: Option<Resources>| {
        s.apply(Command::ResizeAgent {
            agent: agent(name),
            total,
        })
    };
    let small = Resources::new(300, 1 << 20, 0);
    assert!(matches!(
        resize(&mut s, "nope", Some(small.clone())),
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
    assert_eq!(resize(&mut s, "a", Some(small.clone())), CommandResult::Ok);
    assert_eq!(
        resize(&mut s, "a", Some(small.clone())),
        CommandResult::Duplicate
    );
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let CommandResult::Submitted(t) = submit_as(&mut s, ALICE, tenant_spec(&bundle, "acme")) else {
        panic!()
    };
    // 100m of 300m fits; a restart keeps the operator's total, not the advertised one.
    register(&mut s, "a", vec![]);
    assert_eq!(s.agents[&agent("a")].total, small);
    assert!(s.agents[&agent("a")].resized);
    assert_eq!(
        s.agents[&agent("a")].advertised,
        Resources::new(1000, 1 << 30, 0)
    );
    // Too small for the task's memory: nothing is assigned there.
    assert_eq!(
        resize(&mut s, "a", Some(Resources::new(300, 1, 0))),
        CommandResult::Ok
    );
    assert!(matches!(
        s.apply(Command::AssignTask {
            task: t,
            agent: agent("a"),
            now_ms: 2,
        }),
        CommandResult::Rejected(_)
    ));
    assert_eq!(resize(&mut s, "a", None), CommandResult::Ok);
    assert!(!s.agents[&agent("a")].resized);
    assert_eq!(
        s.agents[&agent("a")].total,
        Resources::new(1000, 1 << 30, 0)
    );
    assert_eq!(
        s.apply(Command::AssignTask {
            task: t,
            agent: agent("a"),
            now_ms: 3,
        }),
        CommandResult::Ok
    );
}

#[test]
fn kept_outputs_are_held_where_the_task_ran_for_its_tenant_only() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    register(&mut s, "b", vec![]);
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let out = other_hash(7);
    let before = s.stored_by("acme");
    // The agent cannot say another agent holds it: the state knows where the task ran.
    let t = finish_kept(&mut s, &bundle, "a", 1, &out, Some(agent("b")));
    assert_eq!(s.bundles[&out].kept_on, BTreeSet::from([agent("a")]));
    assert_eq!(s.tasks[&t].status.outputs[0].held_by, Some(agent("a")));
    assert!(s.may_read(ALICE, &out) && !s.may_read(BOB, &out));
    assert_eq!(s.stored_by("acme"), before, "not on the masters' disks");
    // Another tenant naming it as an input is told it does not exist.
    upload(&mut s, &other_hash(9), 10, Some("evil"));
    let mut theirs = tenant_spec(&other_hash(9), "evil");
    theirs.inputs = vec![wasmos_proto::InputFile {
        blob: out.clone(),
        guest: "/in/x".into(),
    }];
    assert_rejected(&submit_as(&mut s, BOB, theirs), "has not been uploaded");
    // Its own tenant reads it as an input, but nothing the masters serve may name it.
    let mut input = tenant_spec(&bundle, "acme");
    input.inputs = vec![wasmos_proto::InputFile {
        blob: out.clone(),
        guest: "/in/x".into(),
    }];
    assert!(matches!(
        submit_as(&mut s, ALICE, input),
        CommandResult::Submitted(_)
    ));
    let mut stdin = tenant_spec(&bundle, "acme");
    stdin.stdin = Some(out.clone());
    assert_rejected(&submit_as(&mut s, ALICE, stdin), "kept on agent a");
    // Its agent is lost: so is the blob.
    s.apply(Command::AgentLost {
        agent: agent("a"),
        registered_ms: None,
        now_ms: 30,
    });
    assert!(!s.bundles.contains_key(&out));
}

#[test]
fn ceilings_bound_what_a_role_may_ask_for() {
    let mut s = ClusterState::default();
    let b = other_hash(1);
    upload(&mut s, &b, 10, Some("acme"));
    // Defaults: a day of timeout, 64 MiB of output per stream.
    let mut long = tenant_spec(&b, "acme");
    long.timeout_ms = 100_000 * 3600 * 1000;
    assert_rejected(
        &submit_as(&mut s, ALICE, long),
        "over role acme's ceiling of 1d",
    );
    let mut loud = tenant_spec(&b, "acme");
    loud.max_output_bytes = 4 << 30;
    assert_rejected(&submit_as(&mut s, ALICE, loud), "64MiB");
    let mut fat = tenant_spec(&b, "acme");
    fat.args = vec!["x".repeat(300 << 10)];
    assert_rejected(&submit_as(&mut s, ALICE, fat), "arguments and environment");
    // Operators tighten them: at most 2 live tasks, 1 role in use.
    let record = RoleRecord {
        ceilings: Ceilings {
            tasks: Some(2),
            sub_roles: Some(1),
            ..Ceilings::default()
        },
        ..RoleRecord::default()
    };
    s.apply(Command::SetRole {
        role: role("acme"),
        record,
    });
    assert!(matches!(
        submit_as(&mut s, ALICE, tenant_spec(&b, "acme/a")),
        CommandResult::Submitted(_)
    ));
    assert_rejected(
        &submit_as(&mut s, ALICE, tenant_spec(&b, "acme/b")),
        "uses 1 roles",
    );
    let ok = submit_as(&mut s, ALICE, tenant_spec(&b, "acme/a"));
    assert!(matches!(ok, CommandResult::Submitted(_)), "{ok:?}");
    assert_rejected(
        &submit_as(&mut s, CAROL, tenant_spec(&b, "acme/a")),
        "2 tasks not yet ended",
    );
    // Another tenant is not counted against acme's.
    upload(&mut s, &b, 10, Some("evil"));
    assert!(matches!(
        submit_as(&mut s, BOB, tenant_spec(&b, "evil")),
        CommandResult::Submitted(_)
    ));
    // A plain secret never reaches the state.
    let mut plain = tenant_spec(&b, "evil");
    plain.secret_env = vec![wasmos_proto::SecretEnv {
        name: "K".into(),
        value: wasmos_proto::SecretValue::Plain("v".into()),
    }];
    assert_rejected(&submit_as(&mut s, BOB, plain), "not sealed");
}

#[test]
fn storage_quota_counts_what_a_tenant_holds() {
    let mut s = ClusterState::default();
    let record = RoleRecord {
        ceilings: Ceilings {
            stored_bytes: Some(100),
            ..Ceilings::default()
        },
        ..RoleRecord::default()
    };
    s.apply(Command::SetRole {
        role: role("acme"),
        record,
    });
    assert_eq!(
        upload(&mut s, &other_hash(1), 60, Some("acme")),
        CommandResult::Ok
    );
    // Uploading the same bytes again costs nothing more.
    assert_eq!(
        upload(&mut s, &other_hash(1), 60, Some("acme")),
        CommandResult::Ok
    );
    assert_rejected(
        &upload(&mut s, &other_hash(2), 60, Some("acme")),
        "storage quota",
    );
    assert_eq!(
        upload(&mut s, &other_hash(2), 60, Some("evil")),
        CommandResult::Ok
    );
    assert_eq!(s.stored_by("acme"), 60);
}

#[test]
fn collection_forgets_what_ended_and_blobs_nothing_names() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let (old_blob, live_blob, fresh_blob) = (other_hash(1), other_hash(2), other_hash(3));
    upload(&mut s, &old_blob, 1, Some("acme"));
    upload(&mut s, &live_blob, 1, Some("acme"));
    let CommandResult::Submitted(ended) = submit_as(&mut s, ALICE, tenant_spec(&old_blob, "acme"))
    else {
        panic!()
    };
    let CommandResult::Submitted(live) = submit_as(&mut s, ALICE, tenant_spec(&live_blob, "acme"))
    else {
        panic!()
    };
    s.apply(Command::SetStatus {
        task: ended,
        status: TaskStatus::new(TaskState::Killed),
        now_ms: 30,
    });
    s.apply(Command::AddBundle {
        hash: fresh_blob.clone(),
        size: 1,
        now_ms: 1000,
        reader: Some("acme".into()),
    });
    let r = s.apply(Command::Collect {
        before_ms: 500,
        keep: 100,
        now_ms: 1000,
    });
    assert_eq!(
        r,
        CommandResult::Collected {
            tasks: 1,
            jobs: 0,
            blobs: 1
        }
    );
    assert!(!s.tasks.contains_key(&ended) && s.tasks.contains_key(&live));
    assert!(
        !s.bundles.contains_key(&old_blob),
        "named only by the ended task"
    );
    assert!(s.bundles.contains_key(&live_blob), "a live task names it");
    assert!(
        s.bundles.contains_key(&fresh_blob),
        "younger than the retention"
    );
    // By count: keep 0 ended tasks, whatever their age.
    s.apply(Command::SetStatus {
        task: live,
        status: TaskStatus::new(TaskState::Killed),
        now_ms: 2000,
    });
    s.apply(Command::Collect {
        before_ms: 0,
        keep: 0,
        now_ms: 2001,
    });
    assert!(s.tasks.is_empty());
}

#[test]
fn the_retention_count_holds_per_tenant() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let b = other_hash(7);
    upload(&mut s, &b, 1, Some("acme"));
    upload(&mut s, &b, 1, Some("evil"));
    let end = |s: &mut ClusterState, owner: &str, role: &str, at: u64| {
        let CommandResult::Submitted(id) = submit_as(s, owner, tenant_spec(&b, role)) else {
            panic!()
        };
        s.apply(Command::SetStatus {
            task: id,
            status: TaskStatus::new(TaskState::Finished),
            now_ms: at,
        });
        id
    };
    let alices = end(&mut s, ALICE, "acme", 10);
    // bob's flood ends later, many more tasks than the count.
    let bobs: Vec<TaskId> = (0..5).map(|i| end(&mut s, BOB, "evil", 20 + i)).collect();
    s.apply(Command::Collect {
        before_ms: 0,
        keep: 2,
        now_ms: 100,
    });
    assert!(
        s.tasks.contains_key(&alices),
        "alice's one task is within her count"
    );
    let kept: Vec<&TaskId> = bobs.iter().filter(|t| s.tasks.contains_key(t)).collect();
    assert_eq!(kept, vec![&bobs[3], &bobs[4]], "bob keeps his newest two");
}

#[test]
fn a_job_that_takes_the_last_framework_slot_still_attaches_its_framework() {
    let mut s = ClusterState::default();
    let b = other_hash(8);
    upload(&mut s, &b, 1, Some("acme"));
    s.apply(Command::SetRole {
        role: role("acme"),
        record: RoleRecord {
            ceilings: wasmos_proto::Ceilings {
                frameworks: Some(1),
                ..Default::default()
            },
            ..RoleRecord::default()
        },
    });
    let spec = wasmos_proto::JobSpec {
        name: "wc".into(),
        kind: wasmos_proto::JobKind::Batch,
        role: None,
        deadline_ms: None,
        groups: vec![one_group("g", tenant_spec(&b, "acme"))],
    };
    let submit = |s: &mut ClusterState| {
        s.apply(Command::SubmitJob {
            spec: spec.clone(),
            owner: ALICE.into(),
            role: role("acme"),
            now_ms: 1,
        })
    };
    assert!(matches!(submit(&mut s), CommandResult::Job(_)));
    let register = |s: &mut ClusterState, name: &str, owner: &str| {
        s.apply(Command::RegisterFramework {
            name: name.into(),
            role: role("acme"),
            owner: owner.into(),
            revocable: false,
            failover_timeout_ms: 1000,
            acknowledges: true,
            now_ms: 2,
        })
    };
    // Another identity naming the job's framework, or another framework, is over the ceiling.
    assert!(matches!(
        register(&mut s, "job-1 (wc)", BOB),
        CommandResult::Rejected(_)
    ));
    assert!(matches!(
        register(&mut s, "mine", ALICE),
        CommandResult::Rejected(_)
    ));
    assert!(matches!(
        register(&mut s, "job-1 (wc)", ALICE),
        CommandResult::Framework(_)
    ));
    assert!(
        matches!(
            register(&mut s, "job-1 (wc)", ALICE),
            CommandResult::Rejected(_)
        ),
        "only the first registration under the job's name is the job's"
    );
    assert!(
        matches!(
            submit(&mut s),
            CommandResult::Rejected(Rejection::OverLimit(_))
        ),
        "a second job is over it"
    );
}

/// Role `name`, allowed 1 CPU and 1 GiB of dynamic reservations, with a framework of its own.
fn role_with_allowance(s: &mut ClusterState, name: &str) -> FrameworkId {
    let record = RoleRecord {
        reservation_allowance: Some(Resources::new(1000, 1 << 30, 0)),
        ..RoleRecord::default()
    };
    s.apply(Command::SetRole {
        role: role(name),
        record,
    });
    framework(s, name)
}

#[test]
fn several_reserves_in_one_launch_count_together_against_the_allowance() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let fx = role_with_allowance(&mut s, "x");
    let reserve = |cpu| ReservationOp::Reserve {
        role: role("x"),
        resources: Resources::new(cpu, 0, 0),
    };
    let launch = |s: &mut ClusterState, ops| {
        s.apply(Command::Launch {
            framework: fx,
            agent: agent("a"),
            reservations: ops,
            tasks: vec![],
            now_ms: 5,
        })
    };
    // Each fits alone; together they are over the allowance, and nothing is reserved.
    let r = launch(&mut s, vec![reserve(600), reserve(600)]);
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::OverLimit(ref why)) if why.contains("at most")),
        "{r:?}"
    );
    assert!(s.reservations.is_empty());
    assert_eq!(
        launch(&mut s, vec![reserve(600), reserve(400)]),
        CommandResult::Ok
    );
}

#[test]
fn operators_remove_reservations_but_not_what_tasks_hold() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    upload(&mut s, &hash(), 10, Some("a"));
    let fx = role_with_allowance(&mut s, "x");
    let mut sx = spec(200);
    sx.role = Some("x".into());
    let held = Pools {
        reserved: BTreeMap::from([(role("x"), Resources::new(200, 1 << 20, 0))]),
        ..Pools::default()
    };
    let r = s.apply(Command::Launch {
        framework: fx,
        agent: agent("a"),
        reservations: vec![ReservationOp::Reserve {
            role: role("x"),
            resources: Resources::new(800, 1 << 20, 0),
        }],
        tasks: vec![LaunchTask {
            id: TaskId(7),
            spec: Some(sx),
            charge: held,
        }],
        now_ms: 5,
    });
    assert_eq!(r, CommandResult::Ok);
    let r = s.apply(Command::RemoveReservation {
        agent: agent("a"),
        role: role("x"),
    });
    assert_eq!(
        r,
        CommandResult::Unreserved {
            removed: Resources::new(600, 0, 0),
            held: Resources::new(200, 1 << 20, 0)
        }
    );
    assert_rejected(
        &s.apply(Command::RemoveReservation {
            agent: agent("a"),
            role: role("y"),
        }),
        "holds no dynamic reservation",
    );
}

/// Each kind of refusal is told apart, and answered with the error kind it deserves.
#[test]
fn rejections_are_typed_by_kind() {
    let mut s = ClusterState::default();
    let unknown = s.apply(Command::SetStatus {
        task: TaskId(42),
        status: TaskStatus::new(TaskState::Running),
        now_ms: 1,
    });
    let CommandResult::Rejected(why) = unknown else {
        panic!("{unknown:?}");
    };
    assert_eq!(why, Rejection::NotFound("unknown task t-42".into()));
    assert_eq!(why.error_kind(), wasmos_proto::ErrorKind::NotFound);
    let nested = s.apply(Command::Batch(vec![Command::Batch(vec![])]));
    assert!(
        matches!(&nested, CommandResult::Batch(r) if matches!(r[..], [CommandResult::Rejected(Rejection::Invalid(_))])),
        "{nested:?}"
    );
    let over = Rejection::OverLimit("role r has 3 tasks".into()).within("group `g`");
    assert_eq!(over.message(), "group `g`: role r has 3 tasks");
    assert_eq!(over.error_kind(), wasmos_proto::ErrorKind::InvalidRequest);
    assert_eq!(over.to_string(), over.message());
}

#[test]
fn a_lost_agent_undoes_the_job_slots_whose_kept_outputs_are_still_needed() {
    let mut s = ClusterState::default();
    let b = other_hash(8);
    upload(&mut s, &b, 1, Some("acme"));
    let group = |name: &str, count: u32, deps: &[&str]| wasmos_proto::GroupSpec {
        name: name.into(),
        count,
        task: tenant_spec(&b, "acme"),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        input_pattern: None,
        inputs: vec![],
        constraints: BTreeMap::new(),
        retries: 0,
        backoff_ms: 0,
        spread: None,
        max_unavailable: 0,
    };
    let spec = wasmos_proto::JobSpec {
        name: "wc".into(),
        kind: wasmos_proto::JobKind::Batch,
        role: None,
        deadline_ms: None,
        groups: vec![
            group("map", 2, &[]),
            group("reduce", 1, &["map"]),
            group("final", 1, &["reduce"]),
        ],
    };
    let CommandResult::Job(job) = s.apply(Command::SubmitJob {
        spec,
        owner: ALICE.into(),
        role: role("acme"),
        now_ms: 1,
    }) else {
        panic!()
    };
    let on = |s: &mut ClusterState, a: &str, n: u8| {
        s.bundles.insert(
            other_hash(n),
            BundleMeta {
                size: 1,
                added_ms: 1,
                readers: BTreeSet::from(["acme".to_string()]),
                kept_on: BTreeSet::from([agent(a)]),
                signatures: Vec::new(),
            },
        );
        vec![wasmos_proto::OutputFile {
            path: "part-0".into(),
            blob: other_hash(n),
            size: 1,
            held_by: Some(agent(a)),
        }]
    };
    let done = |s: &mut ClusterState, group: &str, index: u32, task: u64, outputs| {
        s.apply(Command::Job {
            job,
            event: JobEvent::Done {
                task: TaskId(task),
                group: group.into(),
                index,
                outputs,
            },
            now_ms: 2,
        })
    };
    let outputs = on(&mut s, "a", 20);
    done(&mut s, "map", 0, 1, outputs);
    let outputs = on(&mut s, "b", 21);
    done(&mut s, "map", 1, 2, outputs);
    let outputs = on(&mut s, "a", 22);
    done(&mut s, "reduce", 0, 3, outputs);
    s.apply(Command::AgentLost {
        agent: agent("a"),
        registered_ms: None,
        now_ms: 3,
    });
    let rec = &s.jobs[&job];
    // The final group needs the reduce output a kept; the reducer, to run again, needs the
    // map output a kept (two stages back); the map output on b is still there.
    assert!(!rec.done.contains_key(&("reduce".into(), 0)));
    assert!(!rec.done.contains_key(&("map".into(), 0)));
    assert!(rec.done.contains_key(&("map".into(), 1)));
    assert_eq!(rec.losses.get(&("reduce".into(), 0)), Some(&1));
    assert_eq!(rec.losses.get(&("map".into(), 0)), Some(&1));
    assert_eq!(rec.losses.len(), 2);
    // The framework's own record of the same loss counts nothing twice.
    s.apply(Command::Job {
        job,
        event: JobEvent::Lost {
            group: "reduce".into(),
            index: 0,
        },
        now_ms: 4,
    });
    assert_eq!(s.jobs[&job].losses.get(&("reduce".into(), 0)), Some(&1));
    // Later: map 0 and the reducer ran again, the reducer's output now on b. Agent c held
    // map 0's new output and is lost while nothing needs it; then the reducer's output is
    // reported lost: the reducer must run again, and so must map 0, whose output went with c.
    let outputs = on(&mut s, "c", 30);
    done(&mut s, "map", 0, 4, outputs);
    let outputs = on(&mut s, "b", 31);
    done(&mut s, "reduce", 0, 5, outputs);
    s.apply(Command::AgentLost {
        agent: agent("c"),
        registered_ms: None,
        now_ms: 5,
    });
    assert!(
        s.jobs[&job].done.contains_key(&("map".into(), 0)),
        "not needed yet"
    );
    s.apply(Command::Job {
        job,
        event: JobEvent::Lost {
            group: "reduce".into(),
            index: 0,
        },
        now_ms: 6,
    });
    let rec = &s.jobs[&job];
    assert!(!rec.done.contains_key(&("reduce".into(), 0)));
    assert!(
        !rec.done.contains_key(&("map".into(), 0)),
        "its output is nowhere"
    );
    assert!(
        rec.done.contains_key(&("map".into(), 1)),
        "b still has it... {rec:?}"
    );
}

#[test]
fn bytes_kept_on_two_agents_outlive_one_of_them() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    register(&mut s, "b", vec![]);
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let out = other_hash(7);
    for (n, on) in [(1, "a"), (2, "b")] {
        finish_kept(&mut s, &bundle, on, n, &out, None);
    }
    assert_eq!(s.bundles[&out].kept_on.len(), 2);
    s.apply(Command::AgentLost {
        agent: agent("a"),
        registered_ms: None,
        now_ms: 30,
    });
    assert_eq!(s.bundles[&out].kept_on, BTreeSet::from([agent("b")]));
    s.apply(Command::AgentLost {
        agent: agent("b"),
        registered_ms: None,
        now_ms: 31,
    });
    assert!(!s.bundles.contains_key(&out));
}

/// Alice's task that keeps its outputs runs on `on` and finishes with one output, `out`, that
/// its agent says `held_by` holds.
fn finish_kept(
    s: &mut ClusterState,
    bundle: &BundleHash,
    on: &str,
    seq: u64,
    out: &BundleHash,
    held_by: Option<AgentId>,
) -> TaskId {
    let mut spec = tenant_spec(bundle, "acme");
    spec.outputs_dir = Some("/out".into());
    spec.outputs_on_agent = true;
    let CommandResult::Submitted(t) = submit_as(s, ALICE, spec) else {
        panic!()
    };
    s.apply(Command::AssignTask {
        task: t,
        agent: agent(on),
        now_ms: 21,
    });
    let mut done = TaskStatus::new(TaskState::Finished);
    done.exit_code = Some(0);
    done.outputs = vec![wasmos_proto::OutputFile {
        path: "part-0".into(),
        blob: out.clone(),
        size: 5,
        held_by,
    }];
    s.apply(Command::AgentStatus {
        agent: agent(on),
        update: StatusUpdate {
            seq,
            task: t,
            status: done,
        },
        now_ms: 22,
    });
    t
}

#[test]
fn a_verdict_of_lost_on_a_registration_since_replaced_is_refused() {
    let mut s = ClusterState::default();
    register(&mut s, "a", Vec::new());
    let task = submitted(&mut s, 100);
    let assigned = s.apply(Command::AssignTask {
        task,
        agent: agent("a"),
        now_ms: 3,
    });
    assert_eq!(assigned, CommandResult::Ok);
    // The reaper found the registration of ms 1 silent; the agent registered again (at ms 5)
    // before the verdict committed, and was sent its task again.
    let again = s.apply(Command::RegisterAgent {
        id: agent("a"),
        total: Resources::new(1000, 1 << 30, 0),
        attributes: BTreeMap::new(),
        fuel_per_core_second: 1_000_000_000,
        reserved: BTreeMap::new(),
        running: Vec::new(),
        peer_addr: None,
        now_ms: 5,
    });
    assert_eq!(again, CommandResult::Ok);
    let stale = s.apply(Command::AgentLost {
        agent: agent("a"),
        registered_ms: Some(1),
        now_ms: 6,
    });
    assert!(
        matches!(&stale, CommandResult::Rejected(Rejection::Conflict(m)) if m.contains("registered again")),
        "{stale:?}"
    );
    assert_eq!(s.tasks[&task].status.state, TaskState::Staging);
    // A verdict on the registration that is current ends its tasks.
    let lost = s.apply(Command::AgentLost {
        agent: agent("a"),
        registered_ms: Some(5),
        now_ms: 7,
    });
    assert_eq!(lost, CommandResult::Ok);
    assert_eq!(s.tasks[&task].status.state, TaskState::Lost);
    // A verdict on a registration of an agent never recorded is refused too.
    let unknown = s.apply(Command::AgentLost {
        agent: agent("zz"),
        registered_ms: Some(1),
        now_ms: 8,
    });
    assert!(
        matches!(unknown, CommandResult::Rejected(Rejection::NotFound(_))),
        "{unknown:?}"
    );
}

#[test]
fn revocations_are_kept_checked_and_bounded() {
    let mut s = ClusterState::default();
    let revoke = |s: &mut ClusterState, target: RevokeTarget, at: u64| {
        s.apply(Command::Revoke {
            target,
            by: "wasmos://operator/ops".into(),
            now_ms: at,
        })
    };
    assert_eq!(
        revoke(&mut s, RevokeTarget::Serial("0a1b".into()), 5),
        CommandResult::Ok
    );
    assert_eq!(
        revoke(
            &mut s,
            RevokeTarget::Identity("wasmos://tenant/acme/bob".into()),
            6
        ),
        CommandResult::Ok
    );
    // Again: the first record stays.
    assert_eq!(
        revoke(&mut s, RevokeTarget::Serial("0a1b".into()), 9),
        CommandResult::Ok
    );
    assert_eq!(s.revoked_serials["0a1b"].at_ms, 5);
    assert_eq!(s.revoked_identities["wasmos://tenant/acme/bob"].at_ms, 6);
    for bad in ["", "0A1B", "a1b", "00a1", "zz", &"ab".repeat(21)] {
        let r = revoke(&mut s, RevokeTarget::Serial(bad.into()), 1);
        assert!(
            matches!(r, CommandResult::Rejected(Rejection::Invalid(_))),
            "{bad:?}: {r:?}"
        );
    }
    for bad in [
        "tenant/acme/bob".to_string(),
        format!("wasmos://{}", "x".repeat(300)),
    ] {
        let r = revoke(&mut s, RevokeTarget::Identity(bad.clone()), 1);
        assert!(
            matches!(r, CommandResult::Rejected(Rejection::Invalid(_))),
            "{r:?}"
        );
    }
    assert_eq!(s.revoked_serials.len() + s.revoked_identities.len(), 2);
    // The ceiling.
    for i in 0..(MAX_REVOCATIONS - 2) {
        s.revoked_serials.insert(
            format!("{:08x}", i + 0x1000_0000),
            Revocation {
                by: "x".into(),
                at_ms: 0,
            },
        );
    }
    let r = revoke(&mut s, RevokeTarget::Serial("ff".into()), 1);
    assert!(
        matches!(r, CommandResult::Rejected(Rejection::OverLimit(_))),
        "{r:?}"
    );
    // What is already revoked is still answered Ok at the ceiling.
    assert_eq!(
        revoke(&mut s, RevokeTarget::Serial("0a1b".into()), 9),
        CommandResult::Ok
    );
}

fn audit_entry(action: &str, object: &str) -> crate::AuditEntry {
    crate::AuditEntry {
        at_ms: 7,
        identity: "wasmos://tenant/acme/alice".into(),
        peer: "127.0.0.1:5000".into(),
        channel: "quic".into(),
        action: action.into(),
        object: object.into(),
        ..Default::default()
    }
}

/// An audited call's entry goes with its write: the write's result is the entry's (a new
/// task's id its object), a rejected write is logged as rejected and changes nothing else,
/// and a call without a write keeps the result its caller gave.
#[test]
fn audited_calls_are_logged_with_what_came_of_them() {
    let mut s = ClusterState::default();
    s.apply(Command::AddBundle {
        hash: hash(),
        size: 10,
        now_ms: 1,
        reader: None,
    });
    let submitted = s.apply(Command::Audited {
        entry: audit_entry("submit", ""),
        cmd: Some(Box::new(Command::SubmitTask {
            id: None,
            spec: spec(100),
            owner: "op".into(),
            now_ms: 7,
            key: None,
        })),
    });
    let CommandResult::Submitted(id) = submitted else {
        panic!("{submitted:?}");
    };
    let rejected = s.apply(Command::Audited {
        entry: audit_entry("revoke", "zz"),
        cmd: Some(Box::new(Command::Revoke {
            target: crate::RevokeTarget::Serial("zz".into()),
            by: "x".into(),
            now_ms: 8,
        })),
    });
    assert!(matches!(rejected, CommandResult::Rejected(_)));
    assert!(s.revoked_serials.is_empty());
    let mut refused = audit_entry("kill", "t-99");
    refused.result = "refused: not yours".into();
    assert_eq!(
        s.apply(Command::Audited {
            entry: refused,
            cmd: None
        }),
        CommandResult::Ok
    );
    let log: Vec<(u64, &str, &str, &str)> = s
        .audit
        .values()
        .map(|e| {
            (
                e.seq,
                e.action.as_str(),
                e.object.as_str(),
                e.result.as_str(),
            )
        })
        .collect();
    assert_eq!(log[0], (1, "submit", id.to_string().as_str(), "ok"));
    assert_eq!((log[1].0, log[1].1, log[1].2), (2, "revoke", "zz"));
    assert!(log[1].3.starts_with("rejected: "), "{}", log[1].3);
    assert_eq!(log[2], (3, "kill", "t-99", "refused: not yours"));
    // Nested audits are refused; retention forgets by age; numbers are never reused.
    let nested = s.apply(Command::Audited {
        entry: audit_entry("x", ""),
        cmd: Some(Box::new(Command::Audited {
            entry: audit_entry("y", ""),
            cmd: None,
        })),
    });
    assert!(matches!(nested, CommandResult::Rejected(_)));
    assert_eq!(s.audit.len(), 3);
    let mut late = audit_entry("kill", "t-1");
    late.at_ms = 100;
    s.apply(Command::Audited {
        entry: late,
        cmd: None,
    });
    assert_eq!(
        s.apply(Command::ForgetAudit { before_ms: 50 }),
        CommandResult::Forgotten(3)
    );
    assert_eq!(s.audit.keys().copied().collect::<Vec<_>>(), [4]);
    // A hostile object name is cut short.
    s.apply(Command::Audited {
        entry: audit_entry("kill", &"x".repeat(10_000)),
        cmd: None,
    });
    let last = s.audit.values().next_back().unwrap();
    assert!(last.object.len() <= crate::MAX_AUDIT_FIELD_BYTES + 3);
    // Control characters cannot fake a line or colour a terminal.
    s.apply(Command::Audited {
        entry: audit_entry("set-role", "a\nwasmos://operator/admin kill\u{1b}[2J"),
        cmd: None,
    });
    let last = s.audit.values().next_back().unwrap();
    assert!(
        !last.object.chars().any(char::is_control),
        "{}",
        last.object
    );
    assert_eq!(crate::audit_field("a\tb"), "a\\tb");
}

#[test]
fn a_role_that_requires_signed_bundles_runs_only_bundles_its_keys_signed() {
    let mut s = ClusterState::default();
    let add_key = |s: &mut ClusterState, id: &str, byte: u8| {
        s.apply(Command::AddSigningKey {
            id: id.into(),
            public: vec![byte; 32],
            by: OP.into(),
            now_ms: 1,
        })
    };
    let require = |s: &mut ClusterState, r: &str, keys: &[&str]| {
        s.apply(Command::SetRole {
            role: role(r),
            record: RoleRecord {
                require_signed_by: keys.iter().map(|k| k.to_string()).collect(),
                ..RoleRecord::default()
            },
        })
    };
    let sign = |s: &mut ClusterState, h: &BundleHash, key: &str| {
        s.apply(Command::SignBundle {
            hash: h.clone(),
            signature: wasmos_proto::BundleSignature {
                key: key.into(),
                signature: vec![7; 64],
            },
        })
    };
    let (unsigned, signed) = (other_hash(1), other_hash(2));
    for h in [&unsigned, &signed] {
        assert_eq!(upload(&mut s, h, 10, Some("acme")), CommandResult::Ok);
    }
    assert_rejected(
        &require(&mut s, "acme", &["ed25519:k1"]),
        "no signing key ed25519:k1 is registered",
    );
    assert_eq!(add_key(&mut s, "ed25519:k1", 1), CommandResult::Ok);
    assert_eq!(add_key(&mut s, "ed25519:k1", 1), CommandResult::Ok, "again");
    assert_rejected(&add_key(&mut s, "ed25519:k1", 2), "another key");
    assert_eq!(add_key(&mut s, "ed25519:k2", 2), CommandResult::Ok);
    assert_rejected(&sign(&mut s, &signed, "ed25519:nope"), "no signing key");
    assert_eq!(sign(&mut s, &signed, "ed25519:k1"), CommandResult::Ok);
    // Before any requirement, unsigned bundles run.
    assert!(matches!(
        submit_as(&mut s, ALICE, tenant_spec(&unsigned, "acme")),
        CommandResult::Submitted(_)
    ));
    assert_eq!(require(&mut s, "acme", &["ed25519:k1"]), CommandResult::Ok);
    assert_rejected(
        &submit_as(&mut s, ALICE, tenant_spec(&unsigned, "acme")),
        "is not signed by a key role acme requires (ed25519:k1)",
    );
    // A sub-role holds its parent's requirement; another top-level role does not.
    assert_rejected(
        &submit_as(&mut s, ALICE, tenant_spec(&unsigned, "acme/dev")),
        "role acme requires",
    );
    assert!(matches!(
        submit_as(&mut s, BOB, tenant_spec(&unsigned, "evil")),
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
    let trust = s.bundle_trust(&tenant_spec(&signed, "acme/dev")).unwrap();
    assert_eq!(trust.role, "acme");
    assert_eq!(trust.keys.len(), 1);
    assert_eq!(trust.signatures.len(), 1);
    assert!(matches!(
        submit_as(&mut s, ALICE, tenant_spec(&signed, "acme/dev")),
        CommandResult::Submitted(_)
    ));
    // Signed by a key the role does not name.
    assert_eq!(sign(&mut s, &unsigned, "ed25519:k2"), CommandResult::Ok);
    assert_rejected(
        &submit_as(&mut s, ALICE, tenant_spec(&unsigned, "acme")),
        "is not signed by a key role acme requires",
    );
    // Rotation: the role takes both keys, then the old one is revoked.
    assert_eq!(
        require(&mut s, "acme", &["ed25519:k1", "ed25519:k2"]),
        CommandResult::Ok
    );
    assert!(matches!(
        submit_as(&mut s, ALICE, tenant_spec(&unsigned, "acme")),
        CommandResult::Submitted(_)
    ));
    assert_eq!(
        s.apply(Command::RevokeSigningKey {
            id: "ed25519:k1".into(),
            by: OP.into(),
            now_ms: 5,
        }),
        CommandResult::Ok
    );
    assert_rejected(
        &submit_as(&mut s, ALICE, tenant_spec(&signed, "acme")),
        "is signed only by revoked keys",
    );
    assert_eq!(
        s.bundle_trust(&tenant_spec(&signed, "acme"))
            .unwrap()
            .keys
            .len(),
        1,
        "launches carry no revoked key"
    );
    assert_rejected(&add_key(&mut s, "ed25519:k1", 1), "was revoked");
    assert_rejected(&sign(&mut s, &signed, "ed25519:k1"), "is revoked");
    assert_rejected(
        &require(&mut s, "evil", &["ed25519:k1"]),
        "signing key ed25519:k1 is revoked",
    );
    // A role that listed it before may keep it while its other settings change.
    assert_eq!(
        require(&mut s, "acme", &["ed25519:k1", "ed25519:k2"]),
        CommandResult::Ok
    );
    // Bounded: signatures per bundle, keys per role.
    assert_rejected(
        &sign(&mut s, &other_hash(3), "ed25519:k2"),
        "not been uploaded",
    );
    upload(&mut s, &other_hash(3), 10, Some("acme"));
    for n in 0..wasmos_proto::MAX_BUNDLE_SIGNATURES as u8 {
        let id = format!("ed25519:n{n}");
        assert_eq!(add_key(&mut s, &id, 10 + n), CommandResult::Ok);
        assert_eq!(sign(&mut s, &other_hash(3), &id), CommandResult::Ok);
    }
    assert_eq!(add_key(&mut s, "ed25519:extra", 99), CommandResult::Ok);
    assert_rejected(
        &sign(&mut s, &other_hash(3), "ed25519:extra"),
        "the most it may",
    );
    // A signature by a key revoked since makes room.
    s.apply(Command::RevokeSigningKey {
        id: "ed25519:n0".into(),
        by: OP.into(),
        now_ms: 6,
    });
    assert_eq!(
        sign(&mut s, &other_hash(3), "ed25519:extra"),
        CommandResult::Ok
    );
    let many: Vec<String> = (0..=wasmos_proto::MAX_ROLE_SIGNERS)
        .map(|n| format!("k{n}"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_rejected(&require(&mut s, "acme", &many), "at most");
}

/// A full log drops from the largest share: a tenant that floods it (all its users together)
/// pushes out its own oldest entries, while an operator's and another tenant's stay, also
/// after the state is decoded (the index is rebuilt) and after retention removed some.
#[test]
fn a_full_audit_log_drops_the_flooding_tenants_entries_first() {
    let mut s = ClusterState::default();
    let entry = |who: &str, object: &str, at_ms: u64| {
        let mut e = audit_entry("kill", object);
        e.identity = who.into();
        e.at_ms = at_ms;
        Command::Audited {
            entry: e,
            cmd: None,
        }
    };
    s.apply(entry("wasmos://operator/admin", "op-1", 100));
    s.apply(entry("wasmos://tenant/acme/alice", "acme-1", 100));
    for i in 0..crate::MAX_AUDIT_ENTRIES {
        let user = if i % 2 == 0 { "mallory" } else { "eve" };
        s.apply(entry(
            &format!("wasmos://tenant/evil/{user}"),
            &i.to_string(),
            7,
        ));
        if i == 10 {
            // Decoded mid-flood: the index is rebuilt from the log.
            let bytes = wasmos_proto::encode(&s).unwrap();
            s = wasmos_proto::decode(&bytes).unwrap();
        }
    }
    assert_eq!(s.audit.len(), crate::MAX_AUDIT_ENTRIES);
    let objects: Vec<&str> = s.audit.values().map(|e| e.object.as_str()).collect();
    assert_eq!(
        objects[..3],
        ["op-1", "acme-1", "2"],
        "evil's first two went"
    );
    // Retention drops the flood (it is older); the index follows. Then acme floods: its own
    // oldest entry goes first, the operator's stays.
    s.apply(Command::ForgetAudit { before_ms: 8 });
    assert_eq!(s.audit.len(), 2);
    for i in 0..crate::MAX_AUDIT_ENTRIES - 1 {
        s.apply(entry("wasmos://tenant/acme/bob", &format!("b{i}"), 200));
    }
    let objects: Vec<&str> = s.audit.values().map(|e| e.object.as_str()).collect();
    assert_eq!(objects.len(), crate::MAX_AUDIT_ENTRIES);
    assert_eq!(objects[..2], ["op-1", "b0"], "acme's oldest went");
}

/// A task's life, told by the events of the commands that made it, with its owner for the
/// stream's filter; refused commands tell nothing.
#[test]
fn applied_commands_tell_their_events() {
    let mut s = ClusterState::default();
    let mut out = Vec::new();
    register(&mut s, "a1", vec![]);
    s.apply_recording(
        Command::RegisterAgent {
            id: agent("a2"),
            total: Resources::new(1000, 1 << 30, 0),
            attributes: BTreeMap::new(),
            fuel_per_core_second: 1,
            reserved: BTreeMap::new(),
            running: vec![],
            peer_addr: None,
            now_ms: 1,
        },
        &mut out,
    );
    let id = submitted(&mut s, 100);
    s.apply_recording(
        Command::AssignTask {
            task: id,
            agent: agent("a2"),
            now_ms: 3,
        },
        &mut out,
    );
    s.apply_recording(
        Command::AgentStatus {
            agent: agent("a2"),
            update: status(1, id, TaskState::Running),
            now_ms: 4,
        },
        &mut out,
    );
    // A duplicate says nothing.
    s.apply_recording(
        Command::AgentStatus {
            agent: agent("a2"),
            update: status(1, id, TaskState::Running),
            now_ms: 4,
        },
        &mut out,
    );
    // Refused: an unknown task.
    s.apply_recording(
        Command::SetStatus {
            task: TaskId(999),
            status: TaskStatus::new(TaskState::Failed),
            now_ms: 5,
        },
        &mut out,
    );
    s.apply_recording(
        Command::Batch(vec![Command::AgentLost {
            agent: agent("a2"),
            registered_ms: None,
            now_ms: 6,
        }]),
        &mut out,
    );
    let told: Vec<(String, Option<String>)> = out
        .iter()
        .map(|e| {
            (
                format!("{} {} {}", e.topic(), e.change.key(), e.change),
                e.owner.clone(),
            )
        })
        .collect();
    let op = Some("op".to_string());
    assert_eq!(
        told,
        vec![
            ("agent a2 registered".to_string(), None),
            (format!("task {id} staging on a2"), op.clone()),
            (format!("task {id} running on a2"), op.clone()),
            (
                format!("task {id} lost on a2 (agent_lost): the agent stopped responding"),
                op.clone()
            ),
            ("agent a2 lost".to_string(), None),
        ]
    );
    // Without recording, nothing is kept anywhere.
    let mut quiet = s.clone();
    quiet.apply(Command::SetRole {
        role: role("r"),
        record: RoleRecord::default(),
    });
    let mut out = Vec::new();
    quiet.apply_recording(
        Command::SetRole {
            role: role("r"),
            record: RoleRecord::default(),
        },
        &mut out,
    );
    assert_eq!(out.len(), 1, "{out:?}");
}

fn event(index: u64, n: u64) -> Event {
    Event {
        index,
        owner: None,
        change: Change::Agent {
            id: agent(&format!("a{n}")),
            change: wasmos_proto::AgentChange::Registered,
        },
    }
}

/// The history readers resume from: whole entries per read, a resume at `next` neither misses
/// nor repeats, and asking for what was dropped says where history starts now.
#[test]
fn the_event_log_resumes_without_gaps_or_repeats() {
    let mut log = EventLog::new(10, 8);
    assert_eq!((log.first(), log.next()), (11, 11));
    log.push(11, vec![event(0, 1), event(0, 2), event(0, 3)]);
    log.push(12, vec![]);
    log.push(13, vec![event(0, 4), event(0, 5)]);
    // At most 2 asked: the entry that reaches 2 is read whole.
    let r = log.read(11, 2, |_| true);
    assert_eq!(r.events.len(), 3);
    assert!(r.events.iter().all(|e| e.index == 11));
    assert_eq!((r.next, r.lost_until), (13, None));
    let r2 = log.read(r.next, 2, |_| true);
    assert_eq!(
        r2.events.iter().map(|e| e.index).collect::<Vec<_>>(),
        [13, 13]
    );
    assert_eq!(r2.next, 14);
    // Filtered out entirely: the position still moves.
    let r3 = log.read(11, 100, |_| false);
    assert_eq!((r3.events.len(), r3.next), (0, 14));
    // Caught up: nothing, same place.
    assert_eq!(log.read(14, 10, |_| true).next, 14);
    // Over capacity (8): the oldest entry goes, wholly, even if only part of it was pushed out.
    log.push(14, (0..4).map(|n| event(0, n)).collect());
    assert_eq!(log.first(), 12);
    let r = log.read(11, 100, |_| true);
    assert_eq!(r.lost_until, Some(12));
    assert!(r.events.iter().all(|e| e.index >= 13), "{:?}", r.events);
    assert_eq!(r.events.len(), 6);
    // Asking from index 0 asks for everything: nothing is said lost if nothing was.
    assert_eq!(EventLog::new(0, 8).read(0, 10, |_| true).lost_until, None);
    // A filter that lets nothing through still moves on, a bounded scan at a time.
    let mut wide = EventLog::new(0, 1000);
    for i in 1..=200 {
        wide.push(i, vec![event(0, i)]);
    }
    let r = wide.read(1, 2, |_| false);
    assert_eq!((r.events.len(), r.next, r.more), (0, 33, true));
    let mut from = 1;
    let mut reads = 0;
    loop {
        let r = wide.read(from, 2, |e| e.index % 50 == 0);
        reads += 1;
        from = r.next;
        if !r.more {
            break;
        }
    }
    assert_eq!((from, reads), (201, 7));
    // A snapshot installed: history restarts after it.
    log.reset(40);
    let r = log.read(14, 100, |_| true);
    assert_eq!((r.lost_until, r.next, r.events.len()), (Some(41), 41, 0));
}

/// A child of `parent` one level down, as the masters make it.
fn child_of(parent: &TaskInfo, depth: u32) -> TaskSpec {
    TaskSpec {
        lineage: Some(wasmos_proto::Lineage {
            parent: parent.id,
            depth,
        }),
        ..parent.spec.clone()
    }
}

#[test]
fn children_are_their_placed_parents_within_depth_and_fan_out_and_indexed_until_they_end() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let h = hash();
    assert_eq!(upload(&mut s, &h, 10, Some("acme")), CommandResult::Ok);
    let CommandResult::Submitted(root) = submit_as(&mut s, ALICE, tenant_spec(&h, "acme")) else {
        panic!("not submitted");
    };
    // Not placed yet: it starts nothing.
    let parent = s.tasks[&root].clone();
    assert_rejected(
        &submit_as(&mut s, ALICE, child_of(&parent, 1)),
        "only a running task",
    );
    let assign = Command::AssignTask {
        task: root,
        agent: agent("a"),
        now_ms: 3,
    };
    assert_eq!(s.apply(assign), CommandResult::Ok);
    let parent = s.tasks[&root].clone();
    // Another owner, another role, a wrong depth: refused, as for a task that does not exist
    // when it is not the owner's.
    assert!(matches!(
        submit_as(&mut s, BOB, child_of(&parent, 1)),
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
    let mut other_role = child_of(&parent, 1);
    other_role.role = Some("acme/batch".into());
    assert_rejected(&submit_as(&mut s, ALICE, other_role), "parent's role");
    assert_rejected(
        &submit_as(&mut s, ALICE, child_of(&parent, 3)),
        "at depth 1",
    );
    let CommandResult::Submitted(kid) = submit_as(&mut s, ALICE, child_of(&parent, 1)) else {
        panic!("the child was refused");
    };
    assert_eq!(s.live_children(root).collect::<Vec<_>>(), [kid]);
    // Ending the parent leaves its child an orphan until the leader ends it too.
    let killed = TaskStatus::new(TaskState::Killed);
    s.apply(Command::SetStatus {
        task: root,
        status: killed.clone(),
        now_ms: 4,
    });
    assert_eq!(s.orphans().collect::<Vec<_>>(), [kid]);
    assert_rejected(
        &submit_as(&mut s, ALICE, child_of(&parent, 1)),
        "only a running task",
    );
    s.apply(Command::SetStatus {
        task: kid,
        status: killed,
        now_ms: 5,
    });
    assert_eq!(s.live_children(root).count(), 0);
    assert_eq!(s.orphans().count(), 0);

    // The deepest level starts nothing below it.
    let CommandResult::Submitted(deep) = submit_as(&mut s, ALICE, tenant_spec(&h, "acme")) else {
        panic!("not submitted");
    };
    s.tasks.get_mut(&deep).unwrap().spec.lineage = Some(wasmos_proto::Lineage {
        parent: TaskId(999),
        depth: wasmos_proto::MAX_SPAWN_DEPTH,
    });
    s.tasks.get_mut(&deep).unwrap().agent = Some(agent("a"));
    let deepest = s.tasks[&deep].clone();
    let below = child_of(&deepest, wasmos_proto::MAX_SPAWN_DEPTH + 1);
    assert_rejected(&submit_as(&mut s, ALICE, below), "at most 8 deep");

    // At most so many live children at once; one more once one has ended.
    let top = s.tasks[&deep].clone();
    let mut top = TaskInfo {
        spec: TaskSpec {
            lineage: None,
            ..top.spec
        },
        ..top
    };
    top.id = deep;
    s.tasks.insert(deep, top.clone());
    let mut first = None;
    for _ in 0..wasmos_proto::MAX_LIVE_CHILDREN {
        let CommandResult::Submitted(k) = submit_as(&mut s, ALICE, child_of(&top, 1)) else {
            panic!("refused below the limit");
        };
        first.get_or_insert(k);
    }
    assert_rejected(
        &submit_as(&mut s, ALICE, child_of(&top, 1)),
        "1024 children",
    );
    s.apply(Command::SetStatus {
        task: first.unwrap(),
        status: TaskStatus::new(TaskState::Killed),
        now_ms: 6,
    });
    assert!(matches!(
        submit_as(&mut s, ALICE, child_of(&top, 1)),
        CommandResult::Submitted(_)
    ));
}

/// A service update is checked as a submission is: an input blob another tenant uploaded is
/// refused, as if it did not exist.
#[test]
fn a_service_update_cannot_name_another_tenants_blob() {
    let mut s = ClusterState::default();
    let bundle = other_hash(1);
    upload(&mut s, &bundle, 10, Some("acme"));
    let theirs = other_hash(9);
    upload(&mut s, &theirs, 10, Some("evil"));
    let group = wasmos_proto::GroupSpec {
        max_unavailable: 1,
        ..one_group("web", tenant_spec(&bundle, "acme"))
    };
    let spec = wasmos_proto::JobSpec {
        name: "svc".into(),
        kind: wasmos_proto::JobKind::Service,
        role: None,
        deadline_ms: None,
        groups: vec![group.clone()],
    };
    let CommandResult::Job(job) = s.apply(Command::SubmitJob {
        spec,
        owner: ALICE.into(),
        role: role("acme"),
        now_ms: 1,
    }) else {
        panic!()
    };
    let update = |s: &mut ClusterState, g: &wasmos_proto::GroupSpec| {
        s.apply(Command::Job {
            job,
            event: wasmos_proto::JobEvent::Updated {
                group: Box::new(g.clone()),
            },
            now_ms: 2,
        })
    };
    let mut stealing = group.clone();
    stealing.inputs = vec![vec![wasmos_proto::InputFile {
        blob: theirs,
        guest: "/in/input/x".into(),
    }]];
    assert_rejected(&update(&mut s, &stealing), "has not been uploaded");
    let mut other_role = group.clone();
    other_role.task.role = Some("evil".into());
    assert_rejected(&update(&mut s, &other_role), "role must be the job's");
    let mut bigger = group;
    bigger.task.resources.cpu_millis = 700;
    assert_eq!(update(&mut s, &bigger), CommandResult::Ok);
    assert_eq!(s.jobs[&job].spec.groups[0].task.resources.cpu_millis, 700);
}

/// A window begins with a drain and ends with an undrain; an operator's undrain ends it early,
/// and a drain of the operator's during it outlives it. Answers are kept once.
#[test]
fn maintenance_windows_drain_and_undrain_their_agents() {
    let mut s = ClusterState::default();
    register(&mut s, "a", vec![]);
    let window = wasmos_proto::MaintenanceWindow {
        start_ms: 10,
        end_ms: 20,
    };
    let schedule = |s: &mut ClusterState, w: Option<wasmos_proto::MaintenanceWindow>| {
        s.apply(Command::ScheduleMaintenance {
            agents: vec![agent("a")],
            window: w,
        })
    };
    let at = |s: &mut ClusterState, begun: bool| {
        s.apply(Command::MaintenanceWindowAt {
            agent: agent("a"),
            begun,
        })
    };
    assert!(matches!(
        s.apply(Command::ScheduleMaintenance {
            agents: vec![agent("a"), agent("nope")],
            window: Some(window),
        }),
        CommandResult::Rejected(Rejection::NotFound(_))
    ));
    assert_eq!(schedule(&mut s, Some(window)), CommandResult::Ok);
    let answer = |s: &mut ClusterState, accept: bool| {
        s.apply(Command::AnswerInverseOffer {
            agent: agent("a"),
            framework: FrameworkId(3),
            accept,
        })
    };
    assert_eq!(answer(&mut s, true), CommandResult::Ok);
    assert_eq!(answer(&mut s, true), CommandResult::Duplicate);
    // Begun: drained, and not to be rescheduled while under way.
    assert_eq!(at(&mut s, true), CommandResult::Ok);
    assert!(s.agents[&agent("a")].draining);
    assert_rejected(&schedule(&mut s, Some(window)), "in its maintenance window");
    assert_rejected(&answer(&mut s, false), "no maintenance");
    // Ended: undrained, window gone.
    assert_eq!(at(&mut s, false), CommandResult::Ok);
    assert!(!s.agents[&agent("a")].draining);
    assert!(s.agents[&agent("a")].maintenance.is_none());
    // An undrain ends one under way.
    schedule(&mut s, Some(window));
    at(&mut s, true);
    let drain = |s: &mut ClusterState, drain: bool| {
        s.apply(Command::DrainAgent {
            agent: agent("a"),
            drain,
        })
    };
    assert_eq!(drain(&mut s, false), CommandResult::Ok);
    assert!(s.agents[&agent("a")].maintenance.is_none());
    // A drain during one changes nothing: the window drained it.
    schedule(&mut s, Some(window));
    at(&mut s, true);
    assert_eq!(
        drain(&mut s, true),
        CommandResult::Duplicate,
        "already drained"
    );
    // Already drained by the operator when the window begins: the window steps aside.
    let mut s2 = ClusterState::default();
    register(&mut s2, "a", vec![]);
    s2.apply(Command::DrainAgent {
        agent: agent("a"),
        drain: true,
    });
    s2.apply(Command::ScheduleMaintenance {
        agents: vec![agent("a")],
        window: Some(window),
    });
    s2.apply(Command::MaintenanceWindowAt {
        agent: agent("a"),
        begun: true,
    });
    assert!(s2.agents[&agent("a")].draining);
    assert!(s2.agents[&agent("a")].maintenance.is_none());
    // Cancelled before it begins: nothing drained.
    assert_eq!(at(&mut s, false), CommandResult::Ok);
    schedule(&mut s, Some(window));
    assert_eq!(schedule(&mut s, None), CommandResult::Ok);
    assert!(s.agents[&agent("a")].maintenance.is_none());
    assert!(!s.agents[&agent("a")].draining);
}
