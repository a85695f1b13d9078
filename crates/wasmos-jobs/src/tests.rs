//! The job framework through the SDK's sans-IO driver: offers in, calls out, no cluster.

use std::collections::BTreeMap;

use wasmos_proto::{
    AgentId, BundleHash, FrameworkCall, FrameworkEvent, FrameworkId, GroupSpec, JobEvent, JobKind,
    JobSpec, JobState, OfferId, OfferInfo, OfferOperation, OutputFile, Resources, TaskId, TaskSpec,
    TaskState, TaskStatus,
};
use wasmos_sdk::{Action, Driver, Options};

use super::*;

fn hash(b: u8) -> BundleHash {
    BundleHash::parse(&format!("{b:02x}").repeat(32)).unwrap()
}

fn group(name: &str, count: u32, deps: &[&str]) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        count,
        task: TaskSpec {
            args: vec!["--part".into(), "{index}".into()],
            resources: Resources::new(500, 1 << 20, 0),
            ..TaskSpec::new("wc.wasm", hash(1))
        },
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        input_pattern: None,
        inputs: Vec::new(),
        constraints: BTreeMap::new(),
        retries: 1,
        backoff_ms: 1000,
        spread: None,
        max_unavailable: 0,
    }
}

fn job(groups: Vec<GroupSpec>) -> JobSpec {
    JobSpec {
        name: "wc".into(),
        kind: JobKind::Batch,
        role: None,
        deadline_ms: None,
        groups,
    }
}

struct Harness {
    d: Driver<JobFramework>,
    next_offer: u64,
    next_task: u64,
    now: u64,
    /// The calls the last offer made.
    sent: Vec<FrameworkCall>,
}

impl Harness {
    fn new(spec: JobSpec) -> Harness {
        Harness::resumed(spec, Progress::default())
    }

    /// A framework started again from what an earlier one recorded.
    fn resumed(spec: JobSpec, progress: Progress) -> Harness {
        let fw = JobFramework::new(spec, 0, progress);
        let mut d = Driver::new(fw, Options::new("job"));
        d.connected(0);
        d.event(
            FrameworkEvent::Subscribed {
                framework: FrameworkId(4),
                role: "r".into(),
                heartbeat_interval_ms: 0,
                failover_timeout_ms: 1,
            },
            0,
        );
        assert_eq!(
            d.scheduler_mut().take_events(),
            [JobEvent::Framework(FrameworkId(4))]
        );
        Harness {
            d,
            next_offer: 0,
            next_task: 0,
            now: 0,
            sent: Vec::new(),
        }
    }

    /// Offers one agent with `cpu` millicores; returns the specs launched on it and the
    /// tasks they became.
    fn offer(&mut self, agent: &str, cpu: u64, attrs: &[(&str, &str)]) -> Vec<(TaskId, TaskSpec)> {
        self.next_offer += 1;
        let offer = OfferInfo {
            id: OfferId(self.next_offer),
            agent: AgentId::new(agent).unwrap(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            unreserved: Resources::new(cpu, 1 << 30, 1 << 30),
            reserved: BTreeMap::new(),
            revocable: Resources::default(),
        };
        let actions = self.d.event(FrameworkEvent::Offers(vec![offer]), self.now);
        self.sent = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        let mut launched = Vec::new();
        for a in actions {
            if let Action::Send(FrameworkCall::Accept {
                request,
                operations,
                ..
            }) = a
            {
                let OfferOperation::Launch(specs) = &operations[0] else {
                    panic!("{operations:?}")
                };
                let ids: Vec<TaskId> = specs
                    .iter()
                    .map(|_| {
                        self.next_task += 1;
                        TaskId(self.next_task)
                    })
                    .collect();
                self.d.event(
                    FrameworkEvent::Accepted {
                        request,
                        tasks: ids.clone(),
                    },
                    self.now,
                );
                launched.extend(ids.into_iter().zip(specs.iter().cloned()));
            }
        }
        launched
    }

    fn update(&mut self, task: TaskId, status: TaskStatus) -> Vec<Action> {
        self.d.event(
            FrameworkEvent::Update {
                task,
                status,
                update: 1,
            },
            self.now,
        )
    }

    fn finish(&mut self, task: TaskId, outputs: Vec<OutputFile>) -> Vec<Action> {
        let mut s = TaskStatus::new(TaskState::Finished);
        s.exit_code = Some(0);
        s.outputs = outputs;
        self.update(task, s)
    }
}

fn output(path: &str, b: u8) -> OutputFile {
    OutputFile {
        path: path.into(),
        blob: hash(b),
        size: 1,
        held_by: None,
    }
}

#[test]
fn a_dag_runs_in_order_and_later_groups_read_earlier_outputs() {
    let mut reduce = group("reduce", 2, &["map"]);
    reduce.input_pattern = Some("part-{index}".into());
    let mut h = Harness::new(job(vec![group("map", 2, &[]), reduce]));
    // Only the maps are ready; {index} is filled in.
    let maps = h.offer("a1", 4000, &[]);
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[1].1.args, ["--part", "1"]);
    let events = h.d.scheduler_mut().take_events();
    assert!(
        matches!(&events[..], [JobEvent::Launched { group, index: 0, .. }, JobEvent::Launched { index: 1, .. }] if group == "map"),
        "{events:?}"
    );
    assert!(h.offer("a1", 4000, &[]).is_empty(), "reduce waits for map");
    for (i, (task, _)) in maps.iter().enumerate() {
        let out = vec![
            output("part-0", 10 + i as u8),
            output("part-1", 20 + i as u8),
        ];
        let actions = h.finish(*task, out);
        // The outcome is recorded before the update is acknowledged (the host sends the
        // calls only after recording the events).
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Send(FrameworkCall::Acknowledge { .. })))
        );
        assert!(matches!(
            h.d.scheduler_mut().take_events()[..],
            [JobEvent::Done { .. }]
        ));
    }
    let reducers = h.offer("a1", 4000, &[]);
    assert_eq!(reducers.len(), 2);
    let inputs: Vec<(&str, BundleHash)> = reducers[1]
        .1
        .inputs
        .iter()
        .map(|i| (i.guest.as_str(), i.blob.clone()))
        .collect();
    assert_eq!(
        inputs,
        [
            ("/in/map/0/part-1", hash(20)),
            ("/in/map/1/part-1", hash(21))
        ]
    );
    h.finish(reducers[0].0, vec![]);
    let last = h.finish(reducers[1].0, vec![output("counts.tsv", 99)]);
    let events = h.d.scheduler_mut().take_events();
    assert_eq!(events.last(), Some(&JobEvent::Ended(JobState::Finished)));
    assert!(
        last.contains(&Action::Send(FrameworkCall::Teardown)),
        "{last:?}"
    );
}

#[test]
fn failures_are_retried_with_backoff_then_fail_the_job() {
    let mut h = Harness::new(job(vec![group("map", 1, &[])]));
    let (t1, _) = h.offer("a1", 4000, &[])[0].clone();
    h.d.scheduler_mut().take_events();
    let mut failed = TaskStatus::new(TaskState::Finished);
    failed.exit_code = Some(3);
    h.update(t1, failed.clone());
    assert!(matches!(
        h.d.scheduler_mut().take_events()[..],
        [JobEvent::Failed { .. }]
    ));
    // Not before its backoff.
    h.now = 500;
    assert!(h.offer("a1", 4000, &[]).is_empty());
    h.now = 1000;
    let (t2, _) = h.offer("a1", 4000, &[])[0].clone();
    let actions = h.update(t2, failed);
    let events = h.d.scheduler_mut().take_events();
    match events.last() {
        Some(JobEvent::Ended(JobState::Failed(why))) => {
            assert!(
                why.contains("failed 2 times") && why.contains("exit code 3"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(actions.contains(&Action::Send(FrameworkCall::Teardown)));
}

#[test]
fn a_task_its_agent_stopped_runs_again_without_using_a_retry() {
    let mut spec = job(vec![group("map", 1, &[])]);
    spec.groups[0].retries = 0;
    let mut h = Harness::new(spec);
    let (t1, _) = h.offer("a1", 4000, &[])[0].clone();
    h.d.scheduler_mut().take_events();
    let stopped = TaskStatus::with_reason(
        TaskState::Killed,
        Some(Reason::AgentStopped),
        "its agent was stopped",
    );
    h.update(t1, stopped);
    assert_eq!(
        h.d.scheduler_mut().take_events(),
        [JobEvent::Stopped { task: t1 }]
    );
    h.now = 1000;
    let (t2, _) = h.offer("a2", 4000, &[])[0].clone();
    h.finish(t2, vec![]);
    assert!(matches!(
        h.d.scheduler_mut().take_events().last(),
        Some(JobEvent::Ended(JobState::Finished))
    ));
    // Any other failure with no retries left ends the job.
    let mut spec = job(vec![group("map", 1, &[])]);
    spec.groups[0].retries = 0;
    let mut h = Harness::new(spec);
    let (t1, _) = h.offer("a1", 4000, &[])[0].clone();
    h.update(
        t1,
        TaskStatus::with_reason(TaskState::Lost, Some(Reason::AgentLost), "lost"),
    );
    assert!(matches!(
        h.d.scheduler_mut().take_events().last(),
        Some(JobEvent::Ended(JobState::Failed(_)))
    ));
}

#[test]
fn constraints_and_delay_scheduling_choose_the_agent() {
    let mut g = group("map", 3, &[]);
    g.constraints.insert("zone".into(), "b".into());
    let mut h = Harness::new(job(vec![g]));
    assert!(
        h.offer("a1", 4000, &[("zone", "a")]).is_empty(),
        "constraint"
    );
    // One task runs on b1: b1 now holds the bundle compiled.
    let (t, _) = h.offer("b1", 500, &[("zone", "b")])[0].clone();
    h.update(t, TaskStatus::new(TaskState::Running));
    // Another agent is passed over for a while...
    h.now = 100;
    assert!(h.offer("b2", 4000, &[("zone", "b")]).is_empty(), "delay");
    // ...the warm one is taken at once...
    h.now = 200;
    assert_eq!(h.offer("b1", 500, &[("zone", "b")]).len(), 1);
    // ...and once the wait is over, any agent.
    h.now = 100 + LOCALITY_WAIT_MS;
    assert_eq!(h.offer("b2", 4000, &[("zone", "b")]).len(), 1);
}

#[test]
fn a_deadline_fails_the_job_and_a_stop_kills_it() {
    let mut spec = job(vec![group("map", 1, &[])]);
    spec.deadline_ms = Some(10_000);
    let mut h = Harness::new(spec);
    h.offer("a1", 4000, &[]);
    let actions = h.d.tick(10_000);
    assert!(actions.contains(&Action::Send(FrameworkCall::Teardown)));
    let events = h.d.scheduler_mut().take_events();
    assert!(
        matches!(events.last(), Some(JobEvent::Ended(JobState::Failed(w))) if w.contains("deadline"))
    );

    let mut h = Harness::new(job(vec![group("map", 1, &[])]));
    h.d.scheduler_mut().stop();
    h.d.tick(1);
    assert_eq!(
        h.d.scheduler_mut().take_events(),
        [JobEvent::Ended(JobState::Killed)]
    );
}

#[test]
fn a_service_spreads_its_instances_over_agents() {
    let mut spec = job(vec![group("web", 4, &[])]);
    spec.kind = JobKind::Service;
    let mut h = Harness::new(spec);
    // Two agents offered together: one instance each, not four on the first.
    h.next_offer += 1;
    let offers: Vec<OfferInfo> = ["a1", "a2"]
        .iter()
        .enumerate()
        .map(|(i, a)| OfferInfo {
            id: OfferId(100 + i as u64),
            agent: AgentId::new(a).unwrap(),
            attributes: BTreeMap::new(),
            unreserved: Resources::new(8000, 1 << 30, 1 << 30),
            reserved: BTreeMap::new(),
            revocable: Resources::default(),
        })
        .collect();
    let actions = h.d.event(FrameworkEvent::Offers(offers), 0);
    let mut per_offer = Vec::new();
    for a in &actions {
        if let Action::Send(FrameworkCall::Accept {
            request,
            offers,
            operations,
            ..
        }) = a
        {
            let OfferOperation::Launch(specs) = &operations[0] else {
                panic!()
            };
            per_offer.push((offers[0], specs.len()));
            let ids: Vec<TaskId> = (0..specs.len())
                .map(|i| TaskId(50 + *request * 10 + i as u64))
                .collect();
            h.d.event(
                FrameworkEvent::Accepted {
                    request: *request,
                    tasks: ids,
                },
                0,
            );
        }
    }
    assert_eq!(per_offer, [(OfferId(100), 1), (OfferId(101), 1)]);
    // The next round again puts one on each.
    assert_eq!(h.offer("a1", 8000, &[]).len(), 1);
    assert!(
        h.offer("a1", 8000, &[]).is_empty(),
        "a1 already runs more than a2"
    );
    assert_eq!(h.offer("a2", 8000, &[]).len(), 1);
}

#[test]
fn a_spread_group_balances_fault_domains_and_waits_only_so_long() {
    let mut spec = job(vec![group("web", 4, &[])]);
    spec.groups[0].spread = Some("zone".into());
    let zone = |z: &'static str| [("zone", z)];

    // While the domains are being learnt, one task to each: zone a's first offer does not
    // take all four, though no other zone is known yet.
    let mut h = Harness::new(spec.clone());
    assert_eq!(h.offer("a1", 8000, &zone("a")).len(), 1);
    assert!(h.offer("a2", 8000, &zone("a")).is_empty());
    assert_eq!(h.offer("b1", 8000, &zone("b")).len(), 1);
    h.now = crate::DOMAIN_DISCOVERY_MS;
    assert_eq!(h.offer("a2", 8000, &zone("a")).len(), 1);
    assert_eq!(h.offer("b1", 8000, &zone("b")).len(), 1, "2 and 2");

    // Known domains, learnt: a domain takes tasks up to one more than the least used.
    let mut h = Harness::new(spec.clone());
    assert!(
        h.offer("b1", 100, &zone("b")).is_empty(),
        "too small: only known"
    );
    h.now = crate::DOMAIN_DISCOVERY_MS;
    assert_eq!(h.offer("a1", 8000, &zone("a")).len(), 1, "a: 1, b: 0");
    assert!(
        h.offer("a2", 8000, &zone("a")).is_empty(),
        "zone a has more"
    );
    assert_eq!(h.offer("b1", 8000, &zone("b")).len(), 2, "b: 0 to 2");
    assert_eq!(h.offer("a2", 8000, &zone("a")).len(), 1, "the last to a");

    // A domain that never fits the task holds a slot up only for the spread wait.
    let mut h = Harness::new(spec);
    assert!(h.offer("b1", 100, &zone("b")).is_empty());
    h.now = crate::DOMAIN_DISCOVERY_MS;
    assert_eq!(h.offer("a1", 8000, &zone("a")).len(), 1);
    h.now += 1000;
    assert!(h.offer("b1", 100, &zone("b")).is_empty());
    assert!(h.offer("a1", 8000, &zone("a")).is_empty(), "still waiting");
    h.now = crate::DOMAIN_DISCOVERY_MS + crate::SPREAD_WAIT_MS;
    assert_eq!(
        h.offer("a1", 8000, &zone("a")).len(),
        3,
        "waited long enough: anywhere"
    );
}

/// Tasks on agents that have been full (offering nothing) for longer than the domain memory
/// still count in their domains.
#[test]
fn tasks_on_full_agents_still_count_in_their_domain() {
    let mut spec = job(vec![group("web", 4, &[])]);
    spec.kind = JobKind::Service;
    spec.groups[0].spread = Some("zone".into());
    let zone = |z: &'static str| [("zone", z)];
    let mut h = Harness::new(spec);
    // Not waiting for agents that ran the bundle: only the spread decides.
    h.d.scheduler_mut().locality_wait_ms = 0;
    let mut tasks = Vec::new();
    for (i, agent) in ["a1", "b1", "a1", "b1"].into_iter().enumerate() {
        // The second round after the framework has learnt the domains.
        if i == 2 {
            h.now = crate::DOMAIN_DISCOVERY_MS;
        }
        let z = if agent == "a1" { "a" } else { "b" };
        for (t, _) in h.offer(agent, 500, &zone(z)) {
            h.update(t, TaskStatus::new(TaskState::Running));
            tasks.push((t, agent));
        }
    }
    assert_eq!(
        tasks.len(),
        4,
        "two on each agent, which are then full: {tasks:?}"
    );
    // Long after a1 and b1 last offered, one of b's instances ends. A new agent in zone a
    // offers: a runs 2 and b 1, so a is crowded and waits for b.
    h.now += crate::DOMAIN_MEMORY_MS * 3;
    let on_b = tasks[1].0;
    h.update(on_b, TaskStatus::new(TaskState::Finished));
    h.now += 60_000;
    assert!(
        h.offer("a2", 8000, &zone("a")).is_empty(),
        "zone a has more"
    );
    assert_eq!(h.offer("b2", 8000, &zone("b")).len(), 1);
}

/// `wasmos service update`: old instances are replaced one at a time (max-unavailable 1),
/// each only once the one before it runs, and the new ones run the new task.
#[test]
fn a_rolling_update_keeps_all_but_max_unavailable_running() {
    let mut spec = job(vec![group("web", 3, &[])]);
    spec.kind = JobKind::Service;
    let mut h = Harness::new(spec.clone());
    h.d.scheduler_mut().locality_wait_ms = 0;
    let mut old = Vec::new();
    for agent in ["a1", "a2", "a3"] {
        for (t, _) in h.offer(agent, 4000, &[]) {
            h.update(t, TaskStatus::new(TaskState::Running));
            old.push(t);
        }
    }
    assert_eq!(old.len(), 3);
    let kills = |actions: &[Action]| -> Vec<TaskId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(FrameworkCall::Kill { task }) => Some(*task),
                _ => None,
            })
            .collect()
    };
    let mut new_group = spec.groups[0].clone();
    new_group.task.resources = Resources::new(700, 1 << 20, 0);
    h.d.scheduler_mut().update_group(new_group.clone());
    // Nothing changes for a definition that is the same.
    h.d.scheduler_mut().update_group(new_group);
    h.now = 1;
    let first = kills(&h.d.tick(h.now));
    assert_eq!(first.len(), 1, "one at a time");
    assert!(kills(&h.d.tick(h.now)).is_empty(), "the next waits");
    let mut replaced = Vec::new();
    let mut stopping = first;
    for round in 0..3 {
        let t = stopping[0];
        h.update(
            t,
            TaskStatus::with_reason(TaskState::Killed, Some(Reason::Killed), "update"),
        );
        let agent = ["a1", "a2", "a3"][round];
        let launched = h.offer(agent, 4000, &[]);
        assert_eq!(launched.len(), 1, "round {round}: replaced at once");
        assert_eq!(launched[0].1.resources.cpu_millis, 700, "the new task");
        assert!(kills(&h.d.tick(h.now)).is_empty(), "not before it runs");
        let next = kills(&h.update(launched[0].0, TaskStatus::new(TaskState::Running)));
        replaced.push(launched[0].0);
        if round < 2 {
            assert_eq!(next.len(), 1, "round {round}: the next old one");
            assert!(old.contains(&next[0]) && !replaced.contains(&next[0]));
            stopping = next;
        } else {
            assert!(next.is_empty(), "all replaced");
        }
    }
}

/// A framework started again after a failover knows where its running instances are from the
/// state: an inverse offer moves the one on that agent at once, within max-unavailable.
#[test]
fn a_resumed_service_knows_where_its_instances_run() {
    let mut spec = job(vec![group("web", 2, &[])]);
    spec.kind = JobKind::Service;
    let a = |n: &str| AgentId::new(n).unwrap();
    let progress = Progress {
        tasks: BTreeMap::from([
            (TaskId(1), ("web".into(), 0)),
            (TaskId(2), ("web".into(), 1)),
        ]),
        placed: BTreeMap::from([(TaskId(1), (a("a1"), true)), (TaskId(2), (a("a2"), true))]),
        ..Progress::default()
    };
    let mut h = Harness::resumed(spec, progress);
    let actions = h.d.event(
        FrameworkEvent::InverseOffer {
            agent: a("a2"),
            start_ms: 60_000,
            end_ms: 120_000,
        },
        h.now,
    );
    let calls: Vec<&FrameworkCall> = actions
        .iter()
        .filter_map(|x| match x {
            Action::Send(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(
        calls.contains(&&FrameworkCall::AnswerInverseOffer {
            agent: a("a2"),
            accept: true
        }),
        "{calls:?}"
    );
    assert!(
        calls.contains(&&FrameworkCall::Kill { task: TaskId(2) }),
        "{calls:?}"
    );
    assert!(!calls.contains(&&FrameworkCall::Kill { task: TaskId(1) }));
    // Its replacement goes elsewhere: a2 is declined until the window ends.
    h.update(
        TaskId(2),
        TaskStatus::with_reason(TaskState::Killed, Some(Reason::Killed), "moved"),
    );
    assert!(h.offer("a2", 4000, &[]).is_empty());
    assert_eq!(h.offer("a3", 4000, &[]).len(), 1);
}

#[test]
fn a_drained_agents_tasks_run_again_without_using_a_retry() {
    let mut spec = job(vec![group("map", 1, &[])]);
    spec.groups[0].retries = 0;
    let mut h = Harness::new(spec);
    let (t1, _) = h.offer("a1", 4000, &[])[0].clone();
    h.update(
        t1,
        TaskStatus::with_reason(TaskState::Killed, Some(Reason::Maintenance), "drained"),
    );
    h.now = 1000;
    let (t2, _) = h.offer("a2", 4000, &[])[0].clone();
    h.finish(t2, vec![]);
    assert!(matches!(
        h.d.scheduler_mut().take_events().last(),
        Some(JobEvent::Ended(JobState::Finished))
    ));
}

#[test]
fn a_service_replaces_ended_instances_and_scales() {
    let mut spec = job(vec![group("web", 2, &[])]);
    spec.kind = JobKind::Service;
    let mut h = Harness::new(spec.clone());
    // One agent: one instance per offer, until the group's count runs there.
    let mut running = h.offer("a1", 4000, &[]);
    assert_eq!(running.len(), 1);
    running.extend(h.offer("a1", 4000, &[]));
    assert_eq!(running.len(), 2);
    assert!(h.offer("a1", 4000, &[]).is_empty());
    h.finish(running[0].0, vec![]);
    h.now = 1000;
    let replaced = h.offer("a1", 4000, &[]);
    assert_eq!(replaced.len(), 1, "one instance replaced after its backoff");
    let mut one = spec.groups[0].clone();
    one.count = 1;
    h.d.scheduler_mut().update_group(one);
    let actions = h.d.tick(1001);
    let killed: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Send(FrameworkCall::Kill { .. })))
        .collect();
    assert_eq!(killed.len(), 1, "{actions:?}");
}

#[test]
fn a_task_that_can_never_be_valid_fails_the_job_at_once() {
    let mut g = group("map", 1, &[]);
    let input = wasmos_proto::InputFile {
        blob: hash(7),
        guest: "/in/input/a.txt".into(),
    };
    g.inputs = vec![vec![input.clone(), input]];
    let mut h = Harness::new(job(vec![g]));
    assert!(h.offer("a1", 4000, &[]).is_empty());
    match h.d.scheduler_mut().take_events().last() {
        Some(JobEvent::Ended(JobState::Failed(why))) => {
            assert!(
                why.contains("task 0 of group map") && why.contains("two inputs"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// The job tells the master what its next task needs while it has no room for it, and that
/// nothing waits once all are placed; best-effort tasks are never said to wait.
#[test]
fn the_job_says_what_it_waits_for() {
    let waiting = |sent: &[FrameworkCall]| -> Vec<Option<Resources>> {
        sent.iter()
            .filter_map(|c| match c {
                FrameworkCall::Waiting { resources } => Some(resources.clone()),
                _ => None,
            })
            .collect()
    };
    let mut h = Harness::new(job(vec![group("map", 3, &[])]));
    assert_eq!(h.offer("a1", 1000, &[]).len(), 2);
    assert_eq!(
        waiting(&h.sent),
        [Some(Resources::new(500, 1 << 20, 0))],
        "one of three has no room"
    );
    h.now = 1000;
    let again = h.d.tick(h.now);
    assert!(
        !again
            .iter()
            .any(|a| matches!(a, Action::Send(FrameworkCall::Waiting { .. }))),
        "unchanged, not sent again: {again:?}"
    );
    assert_eq!(h.offer("a1", 1000, &[]).len(), 1);
    assert_eq!(waiting(&h.sent), [None], "all placed");

    let mut spare = group("spare", 2, &[]);
    spare.task.qos = Qos::BestEffort;
    let mut h = Harness::new(job(vec![spare]));
    h.now = 1000;
    let ticked: Vec<FrameworkCall> =
        h.d.tick(h.now)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send(c) => Some(c),
                _ => None,
            })
            .collect();
    assert!(waiting(&ticked).is_empty(), "{ticked:?}");
}

/// An output the state machine recorded as kept on `agent`.
fn kept(path: &str, b: u8, agent: &str) -> OutputFile {
    OutputFile {
        held_by: Some(AgentId::new(agent).unwrap()),
        ..output(path, b)
    }
}

/// A map group (with an outputs directory) and a reduce group reading it.
fn map_reduce(maps: u32) -> JobSpec {
    let mut map = group("map", maps, &[]);
    map.task.outputs_dir = Some("/out".into());
    let mut reduce = group("reduce", 1, &["map"]);
    reduce.task.outputs_dir = Some("/out".into());
    job(vec![map, reduce])
}

#[test]
fn only_outputs_a_later_group_reads_are_kept_on_agents() {
    let mut h = Harness::new(map_reduce(1));
    let maps = h.offer("a1", 4000, &[]);
    assert!(maps[0].1.outputs_on_agent, "map outputs are intermediate");
    h.finish(maps[0].0, vec![kept("part-0", 10, "a1")]);
    let reducers = h.offer("a1", 4000, &[]);
    assert!(
        !reducers[0].1.outputs_on_agent,
        "the last group's results go to the masters"
    );
}

#[test]
fn a_lost_agent_takes_its_kept_outputs_and_their_tasks_run_again() {
    let mut h = Harness::new(map_reduce(2));
    let maps = h.offer("a1", 1000, &[]);
    assert_eq!(maps.len(), 2);
    h.finish(maps[0].0, vec![kept("part-0", 10, "a1")]);
    h.finish(maps[1].0, vec![kept("part-0", 11, "a2")]);
    h.d.scheduler_mut().take_events();
    // a2 goes before any reducer ran: only the map whose outputs it kept runs again.
    h.d.event(
        FrameworkEvent::Failure {
            agent: AgentId::new("a2").unwrap(),
        },
        h.now,
    );
    assert_eq!(
        h.d.scheduler_mut().take_events(),
        [JobEvent::Lost {
            group: "map".into(),
            index: 1
        }]
    );
    let again = h.offer("a1", 4000, &[]);
    assert_eq!(again.len(), 1, "only map 1, not the reducer: {again:?}");
    assert_eq!(again[0].1.args, ["--part", "1"]);
    h.finish(again[0].0, vec![kept("part-0", 11, "a1")]);
    let reducers = h.offer("a1", 4000, &[]);
    assert_eq!(reducers.len(), 1);
    assert_eq!(reducers[0].1.inputs.len(), 2);
    // Once every reader is done, losing outputs changes nothing.
    h.finish(reducers[0].0, vec![output("counts", 12)]);
    let events = h.d.scheduler_mut().take_events();
    assert_eq!(events.last(), Some(&JobEvent::Ended(JobState::Finished)));
}

#[test]
fn a_missing_input_reruns_its_producer_without_counting_a_failure() {
    let mut h = Harness::new(map_reduce(2));
    let maps = h.offer("a1", 1000, &[]);
    h.finish(maps[0].0, vec![kept("part-0", 10, "a1")]);
    h.finish(maps[1].0, vec![kept("part-0", 11, "a2")]);
    let reducers = h.offer("a1", 4000, &[]);
    assert_eq!(reducers.len(), 1);
    h.d.scheduler_mut().take_events();
    // The reducer could not fetch from a2 (gone, or it dropped the file) before the master
    // noticed anything.
    let mut s = TaskStatus::with_reason(
        TaskState::Failed,
        Some(wasmos_proto::Reason::InputLost),
        "cannot fetch input",
    );
    s.lost_input = Some(hash(11));
    h.update(reducers[0].0, s);
    let events = h.d.scheduler_mut().take_events();
    assert!(
        events.contains(&JobEvent::Lost {
            group: "map".into(),
            index: 1
        }) && !events.iter().any(|e| matches!(e, JobEvent::Failed { .. })),
        "{events:?}"
    );
    h.now += 1000;
    let again = h.offer("a1", 4000, &[]);
    assert_eq!(again.len(), 1, "map 1 first: {again:?}");
    assert_eq!(again[0].1.args, ["--part", "1"]);
    h.finish(again[0].0, vec![kept("part-0", 11, "a1")]);
    h.now += 1000;
    assert_eq!(h.offer("a1", 4000, &[]).len(), 1, "then the reducer again");
}

#[test]
fn outputs_lost_too_often_fail_the_job_saying_why() {
    let mut h = Harness::new(map_reduce(1));
    for round in 0..=MAX_LOSSES {
        let maps = h.offer("a1", 1000, &[]);
        assert_eq!(maps.len(), 1, "round {round}");
        h.finish(maps[0].0, vec![kept("part-0", 10, "a1")]);
        h.d.event(
            FrameworkEvent::Failure {
                agent: AgentId::new("a1").unwrap(),
            },
            h.now,
        );
    }
    let events = h.d.scheduler_mut().take_events();
    let Some(JobEvent::Ended(JobState::Failed(why))) = events.last() else {
        panic!("{events:?}")
    };
    assert!(why.contains("were lost 5 times"), "{why}");
}

#[test]
fn losing_outputs_two_stages_back_undoes_both_stages() {
    let mut a = group("a", 1, &[]);
    a.task.outputs_dir = Some("/out".into());
    let mut b = group("b", 1, &["a"]);
    b.task.outputs_dir = Some("/out".into());
    let mut c = group("c", 2, &["b"]);
    c.task.outputs_dir = Some("/out".into());
    let mut h = Harness::new(job(vec![a, b, c]));
    let t = h.offer("x", 1000, &[]);
    h.finish(t[0].0, vec![kept("a-out", 10, "x")]);
    let t = h.offer("x", 1000, &[]);
    assert!(t[0].1.outputs_on_agent, "b feeds c");
    h.finish(t[0].0, vec![kept("b-out", 11, "x")]);
    let c_tasks = h.offer("y", 500, &[]);
    assert_eq!(c_tasks.len(), 1, "one c fits");
    h.finish(c_tasks[0].0, vec![output("c-out", 12)]);
    h.d.scheduler_mut().take_events();
    h.d.event(
        FrameworkEvent::Failure {
            agent: AgentId::new("x").unwrap(),
        },
        h.now,
    );
    let events = h.d.scheduler_mut().take_events();
    assert!(
        events.contains(&JobEvent::Lost {
            group: "b".into(),
            index: 0
        }) && events.contains(&JobEvent::Lost {
            group: "a".into(),
            index: 0
        }),
        "{events:?}"
    );
    // a runs first, then b, then the c still to do.
    let again = h.offer("y", 4000, &[]);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.args, ["--part", "0"]);
    assert!(again[0].1.inputs.is_empty(), "that is a: {again:?}");
}

#[test]
fn a_missing_input_no_job_task_made_is_the_readers_own_failure() {
    let mut h = Harness::new(map_reduce(1));
    let maps = h.offer("a1", 1000, &[]);
    h.finish(maps[0].0, vec![kept("part-0", 10, "a1")]);
    let reducers = h.offer("a1", 4000, &[]);
    h.d.scheduler_mut().take_events();
    let mut s = TaskStatus::with_reason(
        TaskState::Failed,
        Some(wasmos_proto::Reason::InputLost),
        "cannot fetch input",
    );
    s.lost_input = Some(hash(99));
    h.update(reducers[0].0, s);
    let events = h.d.scheduler_mut().take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, JobEvent::Failed { group, .. } if group == "reduce"))
            && !events.iter().any(|e| matches!(e, JobEvent::Lost { .. })),
        "{events:?}"
    );
}

#[test]
fn slots_the_record_undid_run_again_and_too_many_losses_fail_the_job() {
    let mut h = Harness::new(map_reduce(2));
    let maps = h.offer("a1", 1000, &[]);
    h.finish(maps[0].0, vec![kept("part-0", 10, "a1")]);
    h.finish(maps[1].0, vec![kept("part-0", 11, "a2")]);
    h.d.scheduler_mut().take_events();
    // The state machine undid map 1 (its output went with an agent this instance never heard
    // of): the host passes the record on.
    let mut record: BTreeMap<(String, u32), ()> = BTreeMap::new();
    record.insert(("map".into(), 0), ());
    let mut losses = BTreeMap::new();
    losses.insert(("map".to_string(), 1), 1);
    h.d.scheduler_mut().sync_done(&record, &losses);
    h.d.tick(h.now);
    let again = h.offer("a1", 4000, &[]);
    assert_eq!(again.len(), 1, "map 1 only, the reducer waits: {again:?}");
    assert_eq!(again[0].1.args, ["--part", "1"]);
    h.finish(again[0].0, vec![kept("part-0", 11, "a1")]);
    // Lost once too often, per the record: the job fails at the next tick.
    record.insert(("map".into(), 1), ());
    losses.insert(("map".to_string(), 0), MAX_LOSSES + 1);
    record.remove(&("map".to_string(), 0));
    h.d.scheduler_mut().sync_done(&record, &losses);
    h.d.tick(h.now);
    let events = h.d.scheduler_mut().take_events();
    let Some(JobEvent::Ended(JobState::Failed(why))) = events.last() else {
        panic!("{events:?}")
    };
    assert!(why.contains("were lost 5 times"), "{why}");
}

#[test]
fn a_refused_launch_is_retried_unless_the_host_dooms_the_job() {
    let mut h = Harness::new(job(vec![group("map", 1, &[]), group("other", 1, &[])]));
    let offer = OfferInfo {
        id: OfferId(1),
        agent: AgentId::new("a1").unwrap(),
        attributes: BTreeMap::new(),
        unreserved: Resources::new(4000, 1 << 30, 1 << 30),
        reserved: BTreeMap::new(),
        revocable: Resources::default(),
    };
    let refuse = |h: &mut Harness, offer: &OfferInfo| {
        let actions =
            h.d.event(FrameworkEvent::Offers(vec![offer.clone()]), h.now);
        let request = actions
            .iter()
            .find_map(|a| match a {
                Action::Send(FrameworkCall::Accept { request, .. }) => Some(*request),
                _ => None,
            })
            .expect("an accept");
        let message = "bundle is signed only by revoked keys".to_string();
        let error = FrameworkEvent::Error {
            request: Some(request),
            message,
        };
        h.d.event(error, h.now);
    };
    refuse(&mut h, &offer);
    // Both groups were in the refused accept; told once.
    assert_eq!(h.d.scheduler_mut().take_refused(), [0, 1].into());
    assert!(h.d.scheduler_mut().take_refused().is_empty());
    // Not doomed: the slots are free again and launch from the next offer.
    h.now += 10;
    let again = h.offer("a1", 4000, &[]);
    assert_eq!(again.len(), 2, "{again:?}");
    h.d.scheduler_mut().take_events();

    // Refused again, and this time the host found it cannot pass: the job fails, with the
    // first reason given.
    let mut h = Harness::new(job(vec![group("map", 1, &[])]));
    refuse(&mut h, &offer);
    assert_eq!(h.d.scheduler_mut().take_refused(), [0].into());
    h.d.scheduler_mut()
        .doom("group map cannot launch: revoked".into());
    h.d.scheduler_mut().doom("a later reason".into());
    h.d.tick(h.now);
    let events = h.d.scheduler_mut().take_events();
    let Some(JobEvent::Ended(JobState::Failed(why))) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(why, "group map cannot launch: revoked");
}
