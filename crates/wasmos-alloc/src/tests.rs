//! Tests of the offer allocator: each policy rule on small clusters, then properties over
//! random event sequences (proptest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use wasmos_proto::{AgentId, FrameworkId, OfferId, Qos, Resources, TaskId};

use crate::{
    AcceptError, Allocator, Config, Offer, Operation, Pools, Quota, RescindReason, Role,
    TaskRequest,
};

const GIB: u64 = 1 << 30;

fn res(cpu: u64, mem_gib: u64) -> Resources {
    Resources::new(cpu, mem_gib * GIB, 0)
}

fn agent(n: usize) -> AgentId {
    AgentId::new(&format!("agent-{n:03}")).unwrap()
}

fn role(r: &str) -> Role {
    Role::new(r).unwrap()
}

fn cluster(agents: usize, each: Resources) -> Allocator {
    let mut a = Allocator::new(Config::default());
    for i in 0..agents {
        a.add_agent(agent(i), each.clone(), BTreeMap::new())
            .unwrap();
    }
    a
}

fn task(id: u64, r: Resources) -> TaskRequest {
    TaskRequest {
        id: TaskId(id),
        resources: r,
        qos: Qos::Guaranteed,
        priority: 0,
    }
}

fn count_by_framework(offers: &[Offer]) -> BTreeMap<FrameworkId, usize> {
    let mut m = BTreeMap::new();
    for o in offers {
        *m.entry(o.framework).or_default() += 1;
    }
    m
}

#[test]
fn equal_roles_split_a_cluster_evenly_and_weights_tilt_it() {
    let mut a = cluster(6, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    a.add_framework(FrameworkId(2), role("b"), false).unwrap();
    let offers = a.allocate(0);
    assert_eq!(offers.len(), 6);
    let by = count_by_framework(&offers);
    assert_eq!((by[&FrameworkId(1)], by[&FrameworkId(2)]), (3, 3));
    a.check_invariants().unwrap();

    let mut a = cluster(6, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    a.add_framework(FrameworkId(2), role("b"), false).unwrap();
    a.set_weight(&role("b"), 2.0).unwrap();
    let by = count_by_framework(&a.allocate(0));
    assert_eq!((by[&FrameworkId(1)], by[&FrameworkId(2)]), (2, 4));
}

#[test]
fn drf_is_hierarchical_roles_first_then_their_children() {
    // t1 has two sub-roles, t2 one framework: t1 and t2 each get half, and t1's half is split
    // between t1/x and t1/y.
    let mut a = cluster(8, res(1000, 4));
    a.add_framework(FrameworkId(1), role("t1/x"), false)
        .unwrap();
    a.add_framework(FrameworkId(2), role("t1/y"), false)
        .unwrap();
    a.add_framework(FrameworkId(3), role("t2"), false).unwrap();
    let by = count_by_framework(&a.allocate(0));
    assert_eq!(by[&FrameworkId(3)], 4);
    assert_eq!((by[&FrameworkId(1)], by[&FrameworkId(2)]), (2, 2));
    let roles: BTreeMap<String, f64> = a
        .role_summaries()
        .into_iter()
        .map(|r| (r.role.to_string(), r.share))
        .collect();
    assert!((roles["t1"] - 0.5).abs() < 1e-9, "{roles:?}");
}

#[test]
fn dominant_share_counts_the_scarcest_resource() {
    // Framework 1 holds a memory-heavy agent; framework 2 a CPU-light one. With a third agent
    // free, the one with the smaller dominant share gets it.
    let mut a = Allocator::new(Config::default());
    a.add_agent(agent(0), res(1000, 30), BTreeMap::new())
        .unwrap();
    a.add_agent(agent(1), res(3000, 2), BTreeMap::new())
        .unwrap();
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    a.add_framework(FrameworkId(2), role("b"), false).unwrap();
    let offers = a.allocate(0);
    assert_eq!(offers.len(), 2);
    // Shares: 30/32 of memory vs 3000/4000 of CPU.
    let s: Vec<f64> = [1, 2]
        .iter()
        .map(|f| a.framework_dominant_share(FrameworkId(*f)).unwrap())
        .collect();
    assert!(s.iter().any(|x| (x - 30.0 / 32.0).abs() < 1e-9), "{s:?}");
    assert!(s.iter().any(|x| (x - 0.75).abs() < 1e-9), "{s:?}");
}

#[test]
fn one_outstanding_offer_per_agent_and_framework_and_nothing_twice() {
    let mut a = cluster(2, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    assert_eq!(a.allocate(0).len(), 2);
    assert!(
        a.allocate(1).is_empty(),
        "offered resources are not offered again"
    );
}

#[test]
fn declined_resources_go_to_others_and_come_back_after_the_filter() {
    let mut a = cluster(1, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    a.add_framework(FrameworkId(2), role("b"), false).unwrap();
    let first = a.allocate(0);
    assert_eq!(first.len(), 1);
    let (who, other) = if first[0].framework == FrameworkId(1) {
        (FrameworkId(1), FrameworkId(2))
    } else {
        (FrameworkId(2), FrameworkId(1))
    };
    a.decline(who, &[first[0].id], Some(10_000), 100);
    let second = a.allocate(200);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].framework, other);
    a.decline(other, &[second[0].id], Some(100_000), 300);
    assert!(
        a.allocate(400).is_empty(),
        "both declined, filters still on"
    );
    let third = a.allocate(10_100);
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].framework, who, "the first filter has expired");
}

#[test]
fn suppressed_frameworks_get_nothing_until_they_revive() {
    let mut a = cluster(2, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    a.suppress(FrameworkId(1));
    assert!(a.allocate(0).is_empty());
    a.revive(FrameworkId(1));
    assert_eq!(a.allocate(1).len(), 2);
}

#[test]
fn unanswered_offers_time_out_and_are_offered_again() {
    let mut a = cluster(1, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    let o = a.allocate(0);
    assert!(a.expire(59_999).is_empty());
    let r = a.expire(60_000);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].offer, o[0].id);
    assert_eq!(a.allocate(60_001).len(), 1);
    a.check_invariants().unwrap();
}

#[test]
fn accepts_launch_within_the_offer_and_refuse_anything_else_atomically() {
    let mut a = cluster(2, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    a.add_framework(FrameworkId(2), role("b"), false).unwrap();
    let offers = a.allocate(0);
    let mine = offers
        .iter()
        .find(|o| o.framework == FrameworkId(1))
        .unwrap()
        .clone();
    let theirs = offers
        .iter()
        .find(|o| o.framework == FrameworkId(2))
        .unwrap()
        .clone();

    // More than offered: refused, nothing launched, the offer is gone.
    let too_much = [Operation::Launch(vec![
        task(1, res(600, 1)),
        task(2, res(600, 1)),
    ])];
    let err = a
        .accept(FrameworkId(1), &[mine.id], &too_much, None, 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            AcceptError::Insufficient {
                task: TaskId(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(a.offer(mine.id).is_none());
    assert_eq!(a.agent_summary(&mine.agent).unwrap().allocated, res(0, 0));
    // Stale, and someone else's.
    let ok = [Operation::Launch(vec![task(3, res(500, 1))])];
    assert_eq!(
        a.accept(FrameworkId(1), &[mine.id], &ok, None, 2),
        Err(AcceptError::Stale(mine.id))
    );
    assert_eq!(
        a.accept(FrameworkId(1), &[theirs.id], &ok, None, 2),
        Err(AcceptError::NotYours { offer: theirs.id })
    );
    assert!(a.offer(theirs.id).is_some(), "not withdrawn for a stranger");
    assert_eq!(
        a.accept(FrameworkId(9), &[theirs.id], &ok, None, 2),
        Err(AcceptError::UnknownFramework(FrameworkId(9)))
    );

    // A good accept: the task's resources are allocated, the rest declined for 5 s.
    let accepted = a
        .accept(FrameworkId(2), &[theirs.id], &ok, None, 3)
        .unwrap();
    assert_eq!(accepted.launches.len(), 1);
    assert_eq!(accepted.launches[0].charge.unreserved, res(500, 1));
    assert_eq!(
        a.agent_summary(&theirs.agent).unwrap().allocated,
        res(500, 1)
    );
    a.check_invariants().unwrap();
    // Both agents are offered again (framework 1's failed accept left no filter); the rest
    // of the second agent is filtered for framework 2, so it goes to framework 1.
    let next = a.allocate(4);
    assert_eq!(next.len(), 2);
    let partial = next.iter().find(|o| o.agent == theirs.agent).unwrap();
    assert_eq!(partial.framework, FrameworkId(1));
    assert_eq!(partial.resources.unreserved, res(500, 3));
    // Duplicate task ids are refused.
    let dup = [Operation::Launch(vec![task(3, res(100, 0))])];
    assert_eq!(
        a.accept(FrameworkId(1), &[partial.id], &dup, None, 5),
        Err(AcceptError::DuplicateTask(TaskId(3)))
    );
    // Freed resources come back.
    assert!(a.release(TaskId(3)));
    assert!(!a.release(TaskId(3)));
    a.check_invariants().unwrap();
}

#[test]
fn offers_of_two_agents_cannot_be_accepted_together() {
    let mut a = cluster(2, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    let o = a.allocate(0);
    let ids: Vec<OfferId> = o.iter().map(|o| o.id).collect();
    assert_eq!(
        a.accept(FrameworkId(1), &ids, &[], None, 1),
        Err(AcceptError::MixedAgents)
    );
    assert_eq!(
        a.accept(FrameworkId(1), &[], &[], None, 1),
        Err(AcceptError::NoOffers)
    );
}

#[test]
fn launch_groups_are_all_or_nothing() {
    let mut a = cluster(1, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    let o = a.allocate(0);
    let group = [Operation::LaunchGroup(vec![
        task(1, res(500, 1)),
        task(2, res(600, 1)),
    ])];
    assert!(
        a.accept(FrameworkId(1), &[o[0].id], &group, Some(0), 1)
            .is_err()
    );
    assert_eq!(a.agent_summary(&agent(0)).unwrap().allocated, res(0, 0));
    let o = a.allocate(2);
    assert_eq!(
        a.accept(
            FrameworkId(1),
            &[o[0].id],
            &[Operation::LaunchGroup(vec![])],
            None,
            3
        ),
        Err(AcceptError::EmptyGroup)
    );
    let o = a.allocate(4);
    let group = [Operation::LaunchGroup(vec![
        task(1, res(500, 1)),
        task(2, res(500, 1)),
    ])];
    let ok = a
        .accept(FrameworkId(1), &[o[0].id], &group, None, 5)
        .unwrap();
    assert!(ok.launches.iter().all(|l| l.group == Some(0)));
}

#[test]
fn reservations_go_only_to_their_role_and_its_children() {
    let mut a = Allocator::new(Config::default());
    a.add_agent(
        agent(0),
        res(2000, 4),
        BTreeMap::from([(role("db"), res(1000, 2))]),
    )
    .unwrap();
    a.add_agent(agent(1), res(2000, 4), BTreeMap::new())
        .unwrap();
    a.add_framework(FrameworkId(1), role("web"), false).unwrap();
    a.add_framework(FrameworkId(2), role("db/replica"), false)
        .unwrap();
    let offers = a.allocate(0);
    // Whoever gets which agent, web is never offered db's reservation, and the reservation
    // does go to db/replica.
    assert!(offers.len() >= 2, "{offers:?}");
    for o in offers.iter().filter(|o| o.framework == FrameworkId(1)) {
        assert!(o.resources.reserved.is_empty(), "{o:?}");
    }
    let db = offers
        .iter()
        .find(|o| o.framework == FrameworkId(2) && o.agent == agent(0))
        .unwrap();
    assert_eq!(db.resources.reserved[&role("db")], res(1000, 2));
    // A task of db/replica uses the reservation before anything unreserved.
    let acc = a
        .accept(
            FrameworkId(2),
            &[db.id],
            &[Operation::Launch(vec![task(1, res(800, 1))])],
            None,
            1,
        )
        .unwrap();
    assert_eq!(acc.launches[0].charge.reserved[&role("db")], res(800, 1));
    assert!(acc.launches[0].charge.unreserved.is_empty());
    // Static reservations cannot be unreserved by a framework.
    let mut a2 = Allocator::new(Config::default());
    a2.add_agent(
        agent(0),
        res(2000, 4),
        BTreeMap::from([(role("db"), res(1000, 2))]),
    )
    .unwrap();
    a2.add_framework(FrameworkId(2), role("db"), false).unwrap();
    let o = a2.allocate(0);
    let err = a2
        .accept(
            FrameworkId(2),
            &[o[0].id],
            &[Operation::Unreserve(res(1000, 2))],
            None,
            1,
        )
        .unwrap_err();
    assert!(
        matches!(err, AcceptError::UnreserveInsufficient { .. }),
        "{err}"
    );
}

#[test]
fn dynamic_reservations_are_made_by_accepts_and_can_be_released() {
    let mut a = cluster(1, res(2000, 4));
    a.add_framework(FrameworkId(1), role("svc"), false).unwrap();
    a.add_framework(FrameworkId(2), role("other"), false)
        .unwrap();
    a.suppress(FrameworkId(2));
    let o = a.allocate(0);
    let acc = a
        .accept(
            FrameworkId(1),
            &[o[0].id],
            &[Operation::Reserve(res(1000, 2))],
            Some(0),
            1,
        )
        .unwrap();
    assert_eq!(acc.reservations.len(), 1);
    assert_eq!(a.agent_summary(&agent(0)).unwrap().reserved, res(1000, 2));
    // The other framework sees only what is unreserved.
    a.revive(FrameworkId(2));
    a.suppress(FrameworkId(1));
    let o = a.allocate(2);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].framework, FrameworkId(2));
    assert_eq!(o[0].resources.unreserved, res(1000, 2));
    assert!(o[0].resources.reserved.is_empty());
    a.decline(FrameworkId(2), &[o[0].id], Some(60_000), 3);
    a.revive(FrameworkId(1));
    let o = a.allocate(4);
    assert_eq!(o[0].framework, FrameworkId(1));
    assert_eq!(o[0].resources.reserved[&role("svc")], res(1000, 2));
    let acc = a
        .accept(
            FrameworkId(1),
            &[o[0].id],
            &[Operation::Unreserve(res(1000, 2))],
            None,
            5,
        )
        .unwrap();
    assert_eq!(acc.reservations.len(), 1);
    assert_eq!(a.agent_summary(&agent(0)).unwrap().reserved, res(0, 0));
    a.check_invariants().unwrap();
}

#[test]
fn quota_guarantees_are_offered_first_and_held_back_from_others() {
    // Four 1-core agents; batch and prod (guaranteed 3 cores) each with a framework.
    let cluster_with_prod = |prod_suppressed: bool| {
        let mut a = cluster(4, res(1000, 4));
        a.add_framework(FrameworkId(1), role("batch"), false)
            .unwrap();
        a.add_framework(FrameworkId(2), role("prod"), false)
            .unwrap();
        if prod_suppressed {
            a.suppress(FrameworkId(2));
        }
        let quota = Quota {
            guarantee: res(3000, 0),
            limit: None,
        };
        a.set_quota(&role("prod"), quota).unwrap();
        a
    };
    let cpu_to = |offers: &[Offer], fw: u64| -> u64 {
        offers
            .iter()
            .filter(|o| o.framework == FrameworkId(fw))
            .map(|o| o.resources.unreserved.cpu_millis)
            .sum()
    };
    let offers = cluster_with_prod(false).allocate(0);
    assert!(cpu_to(&offers, 2) >= 3000, "{offers:?}");
    // When prod's framework declines for now, what its guarantee still needs is not handed
    // to batch either.
    let offers = cluster_with_prod(true).allocate(0);
    assert_eq!(cpu_to(&offers, 1), 1000, "3 cores held back for prod");
}

#[test]
fn quota_limits_cap_what_a_role_holds_and_is_offered() {
    let mut a = cluster(4, res(1000, 4));
    a.add_framework(FrameworkId(1), role("capped"), false)
        .unwrap();
    a.set_quota(
        &role("capped"),
        Quota {
            guarantee: Resources::default(),
            limit: Some(res(1500, 100)),
        },
    )
    .unwrap();
    let offers = a.allocate(0);
    let cpu: u64 = offers
        .iter()
        .map(|o| o.resources.unreserved.cpu_millis)
        .sum();
    assert_eq!(cpu, 1500);
    assert!(
        a.set_quota(
            &role("capped"),
            Quota {
                guarantee: res(2000, 0),
                limit: Some(res(1000, 0)),
            },
        )
        .is_err()
    );
}

#[test]
fn unused_allocations_are_lent_to_best_effort_work_and_taken_back() {
    let mut a = cluster(1, res(4000, 8));
    a.add_framework(FrameworkId(1), role("owner"), false)
        .unwrap();
    a.add_framework(FrameworkId(2), role("scavenger"), true)
        .unwrap();
    a.suppress(FrameworkId(2));
    let o = a.allocate(0);
    a.accept(
        FrameworkId(1),
        &[o[0].id],
        &[Operation::Launch(vec![task(1, res(4000, 8))])],
        None,
        1,
    )
    .unwrap();
    // The owner uses a quarter of what it holds.
    a.set_usage(&agent(0), Some(res(1000, 2)));
    a.revive(FrameworkId(2));
    let o = a.allocate(2);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].resources.revocable, res(3000, 6));
    // A best-effort task on revocable resources; a guaranteed one cannot use them.
    let guaranteed = a
        .accept(
            FrameworkId(2),
            &[o[0].id],
            &[Operation::Launch(vec![task(2, res(1000, 1))])],
            None,
            3,
        )
        .unwrap_err();
    assert!(matches!(guaranteed, AcceptError::Insufficient { .. }));
    let o = a.allocate(4);
    let be = |id, prio, cpu| TaskRequest {
        id: TaskId(id),
        resources: res(cpu, 1),
        qos: Qos::BestEffort,
        priority: prio,
    };
    a.accept(
        FrameworkId(2),
        &[o[0].id],
        &[Operation::Launch(vec![be(10, 5, 1000), be(11, 1, 1000)])],
        None,
        5,
    )
    .unwrap();
    assert!(a.preemptions().is_empty());
    assert_eq!(
        a.agent_summary(&agent(0)).unwrap().revocable_used,
        res(2000, 2)
    );
    // The owner's use grows: the lower-priority best-effort task goes first, once.
    a.set_usage(&agent(0), Some(res(2500, 2)));
    let p = a.preemptions();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].task, TaskId(11));
    assert!(a.preemptions().is_empty(), "named once");
    a.set_usage(&agent(0), Some(res(4000, 8)));
    let p = a.preemptions();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].task, TaskId(10));
    a.check_invariants().unwrap();
}

/// Two 2-core agents filled by `batch` (four 1-core tasks, priorities 5, 0, 0, 5 in id order
/// 1..=4, tasks 1-2 on one agent and 3-4 on the other), then `prod` arrives with a guarantee.
fn held_by_batch(batch_guarantee: u64) -> Allocator {
    let mut a = cluster(2, res(2000, 4));
    a.add_framework(FrameworkId(1), role("batch"), false)
        .unwrap();
    let offers = a.allocate(0);
    assert_eq!(offers.len(), 2);
    let mut next = 1;
    for o in offers {
        let mut pair = Vec::new();
        for _ in 0..2 {
            pair.push(TaskRequest {
                priority: if next % 4 < 2 { 5 } else { 0 },
                ..task(next, res(1000, 1))
            });
            next += 1;
        }
        a.accept(FrameworkId(1), &[o.id], &[Operation::Launch(pair)], None, 1)
            .unwrap();
    }
    if batch_guarantee > 0 {
        let q = Quota {
            guarantee: res(batch_guarantee, 0),
            limit: None,
        };
        a.set_quota(&role("batch"), q).unwrap();
    }
    a.add_framework(FrameworkId(2), role("prod"), false)
        .unwrap();
    let q = Quota {
        guarantee: res(1000, 0),
        limit: None,
    };
    a.set_quota(&role("prod"), q).unwrap();
    assert!(a.allocate(2).is_empty(), "the cluster is full");
    a
}

#[test]
fn a_role_below_its_guarantee_preempts_the_lowest_priority_newest_task_once() {
    let mut a = held_by_batch(0);
    let want = vec![(role("prod"), res(1000, 1))];
    let p = a.guarantee_preemptions(&want);
    assert_eq!(p.len(), 1, "{p:?}");
    // Priority 0 tasks are 2 and 3; the newer is 3.
    assert_eq!(p[0].task, TaskId(3));
    assert_eq!(p[0].framework, FrameworkId(1));
    assert!(a.guarantee_preemptions(&want).is_empty(), "named once");
    // Once it has ended, prod is offered what came back.
    assert!(a.release(TaskId(3)));
    let offers = a.allocate(3);
    assert!(
        offers
            .iter()
            .any(|o| o.framework == FrameworkId(2) && o.resources.unreserved.cpu_millis >= 1000),
        "{offers:?}"
    );
    a.check_invariants().unwrap();
}

#[test]
fn a_tenant_cannot_shield_its_tasks_from_preemption_with_a_high_priority() {
    let mut a = cluster(1, res(2000, 4));
    a.add_framework(FrameworkId(1), role("honest"), false)
        .unwrap();
    a.add_framework(FrameworkId(2), role("evil"), false)
        .unwrap();
    let o = a.allocate(0);
    let first = o[0].clone();
    a.accept(
        first.framework,
        &[first.id],
        &[Operation::Launch(vec![task(1, res(1000, 1))])],
        None,
        1,
    )
    .unwrap();
    let other = if first.framework == FrameworkId(1) {
        FrameworkId(2)
    } else {
        FrameworkId(1)
    };
    let o = a.allocate(2);
    let offer = o.iter().find(|o| o.framework == other).unwrap();
    a.accept(
        other,
        &[offer.id],
        &[Operation::Launch(vec![TaskRequest {
            priority: i32::MAX,
            ..task(2, res(1000, 1))
        }])],
        None,
        3,
    )
    .unwrap();
    a.add_framework(FrameworkId(3), role("prod"), false)
        .unwrap();
    let q = Quota {
        guarantee: res(1000, 0),
        limit: None,
    };
    a.set_quota(&role("prod"), q).unwrap();
    let p = a.guarantee_preemptions(&[(role("prod"), res(1000, 1))]);
    // Across tenants priorities do not count: the newest task goes, whatever its number.
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].task, TaskId(2));
}

#[test]
fn guarantee_preemption_stays_within_the_guarantee_and_spares_guaranteed_work() {
    // Asking for more than the guarantee covers preempts nothing.
    let mut a = held_by_batch(0);
    assert!(
        a.guarantee_preemptions(&[(role("prod"), res(2000, 1))])
            .is_empty()
    );
    // A role with no guarantee preempts nothing.
    assert!(
        a.guarantee_preemptions(&[(role("other"), res(1000, 1))])
            .is_empty()
    );
    // Tasks within their own role's guarantee are not taken: batch is guaranteed all it holds.
    let mut a = held_by_batch(4000);
    assert!(
        a.guarantee_preemptions(&[(role("prod"), res(1000, 1))])
            .is_empty()
    );
    // Guaranteed 3 of its 4 cores, batch gives up exactly one task.
    let mut a = held_by_batch(3000);
    let p = a.guarantee_preemptions(&[(role("prod"), res(1000, 1))]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        a.guarantee_preemptions(&[(role("prod/sub"), res(1000, 1))])
            .is_empty(),
        "the room being freed serves the next want first"
    );
}

#[test]
fn removing_an_agent_rescinds_its_offers_and_loses_its_tasks() {
    let mut a = cluster(2, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    let o = a.allocate(0);
    let on0 = o.iter().find(|o| o.agent == agent(0)).unwrap();
    a.accept(
        FrameworkId(1),
        &[on0.id],
        &[Operation::Launch(vec![task(7, res(100, 0))])],
        None,
        1,
    )
    .unwrap();
    let (rescinds, lost) = a.remove_agent(&agent(1));
    assert_eq!(rescinds.len(), 1);
    assert!(lost.is_empty());
    let (rescinds, lost) = a.remove_agent(&agent(0));
    assert!(rescinds.is_empty());
    assert_eq!(lost, vec![TaskId(7)]);
    assert_eq!(a.cluster_total(), &Resources::default());
    a.check_invariants().unwrap();
}

#[test]
fn a_drained_agent_is_offered_nothing_until_undrained() {
    let mut a = cluster(2, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    let o = a.allocate(0);
    assert_eq!(o.len(), 2, "{o:?}");
    let on1 = o.iter().find(|o| o.agent == agent(1)).unwrap().id;
    let rescinds = a.set_draining(&agent(1), true);
    assert_eq!(rescinds.len(), 1);
    assert_eq!(
        (rescinds[0].offer, &rescinds[0].reason),
        (on1, &RescindReason::AgentDraining)
    );
    let on0 = o.iter().find(|o| o.agent == agent(0)).unwrap().id;
    a.decline(FrameworkId(1), &[on0], None, 1);
    for now in [10_000, 20_000] {
        let again = a.allocate(now);
        assert!(again.iter().all(|o| o.agent != agent(1)), "{again:?}");
    }
    a.check_invariants().unwrap();
    assert!(a.set_draining(&agent(1), false).is_empty());
    let back = a.allocate(30_000);
    assert!(back.iter().any(|o| o.agent == agent(1)), "{back:?}");
    a.check_invariants().unwrap();
}

#[test]
fn a_resized_agent_is_offered_its_new_total_and_never_over_committed() {
    let mut a = cluster(1, res(1000, 4));
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    let o = a.allocate(0);
    a.accept(
        FrameworkId(1),
        &[o[0].id],
        &[Operation::Launch(vec![task(1, res(600, 1))])],
        Some(0),
        1,
    )
    .unwrap();
    let o = a.allocate(10_000);
    assert_eq!(o[0].resources.unreserved.cpu_millis, 400);
    // Shrunk below what its task holds: the offer is rescinded and nothing more is offered.
    let rescinds = a.resize_agent(&agent(0), res(500, 4)).unwrap();
    assert_eq!(
        (rescinds[0].offer, &rescinds[0].reason),
        (o[0].id, &RescindReason::AgentResized)
    );
    let none = a.allocate(20_000);
    assert!(
        none.iter().all(|o| o.resources.unreserved.cpu_millis == 0),
        "{none:?}"
    );
    a.check_invariants().unwrap();
    // Grown: offered what the task leaves of the new total.
    a.resize_agent(&agent(0), res(2000, 8)).unwrap();
    let o = a.allocate(30_000);
    assert_eq!(o[0].resources.unreserved.cpu_millis, 1400, "{o:?}");
    a.check_invariants().unwrap();
    assert!(a.resize_agent(&agent(7), res(1, 1)).is_err());
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let mut a = cluster(1, res(1000, 4));
    assert!(a.add_agent(agent(0), res(1, 1), BTreeMap::new()).is_err());
    let over = a
        .add_agent(
            agent(5),
            res(1000, 1),
            BTreeMap::from([(role("x"), res(2000, 0))]),
        )
        .unwrap_err();
    assert!(over.to_string().contains("exceed"), "{over}");
    assert!(a.set_weight(&role("x"), 0.0).is_err());
    assert!(a.set_weight(&role("x"), f64::NAN).is_err());
    a.add_framework(FrameworkId(1), role("a"), false).unwrap();
    assert!(a.add_framework(FrameworkId(1), role("a"), false).is_err());
}

#[test]
fn custom_scalars_are_offered_and_charged() {
    let mut a = Allocator::new(Config::default());
    a.add_agent(
        agent(0),
        res(1000, 4).with_scalar("gpu", 2),
        BTreeMap::new(),
    )
    .unwrap();
    a.add_framework(FrameworkId(1), role("ml"), false).unwrap();
    let o = a.allocate(0);
    assert_eq!(o[0].resources.unreserved.scalar("gpu"), 2);
    let err = a
        .accept(
            FrameworkId(1),
            &[o[0].id],
            &[Operation::Launch(vec![task(
                1,
                res(100, 0).with_scalar("gpu", 3),
            )])],
            None,
            1,
        )
        .unwrap_err();
    assert!(err.to_string().contains("gpu 3"), "{err}");
    // The GPU share is the dominant one.
    let o = a.allocate(2);
    a.accept(
        FrameworkId(1),
        &[o[0].id],
        &[Operation::Launch(vec![task(
            1,
            res(100, 0).with_scalar("gpu", 1),
        )])],
        Some(0),
        3,
    )
    .unwrap();
    assert!((a.framework_dominant_share(FrameworkId(1)).unwrap() - 0.5).abs() < 1e-9);
}

// ---- properties ----

/// One step of a random scenario.
#[derive(Debug, Clone)]
enum Step {
    Allocate,
    /// Accept the n-th outstanding offer with tasks of these sizes (cpu in units of 100m).
    Accept(usize, Vec<u64>),
    Decline(usize, u64),
    Release(usize),
    RemoveAgent(usize),
    Suppress(u64),
    Revive(u64),
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Allocate),
        3 => (0..20usize, prop::collection::vec(1..8u64, 0..4)).prop_map(|(o, t)| Step::Accept(o, t)),
        1 => (0..20usize, 0..20_000u64).prop_map(|(o, r)| Step::Decline(o, r)),
        2 => (0..40usize).prop_map(Step::Release),
        1 => (0..8usize).prop_map(Step::RemoveAgent),
        1 => (0..4u64).prop_map(Step::Suppress),
        1 => (0..4u64).prop_map(Step::Revive),
        1 => Just(Step::Expire),
    ]
}

/// An agent of a scenario: CPU in units of 100m, memory in GiB, and optionally a reservation
/// of some of its CPU for the role at an index of `ROLES`.
type AgentShape = (u64, u64, Option<(usize, u64)>);

#[derive(Debug, Clone)]
struct Scenario {
    agents: Vec<AgentShape>,
    /// Each framework's role, as an index of `ROLES`.
    frameworks: Vec<usize>,
    weights: Vec<u32>,
    guarantee: Option<(usize, u64)>,
    limit: Option<(usize, u64)>,
    steps: Vec<Step>,
}

const ROLES: [&str; 4] = ["a", "a/x", "b", "c/deep/er"];

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(
            (1..40u64, 1..16u64, prop::option::of((0..4usize, 1..10u64))),
            1..8,
        ),
        prop::collection::vec(0..4usize, 1..5),
        prop::collection::vec(1..4u32, 4),
        prop::option::of((0..4usize, 1..80u64)),
        prop::option::of((0..4usize, 1..80u64)),
        prop::collection::vec(step(), 1..40),
    )
        .prop_map(
            |(agents, frameworks, weights, guarantee, limit, steps)| Scenario {
                agents,
                frameworks,
                weights,
                guarantee,
                limit,
                steps,
            },
        )
}

/// Builds the allocator of a scenario, adding agents and frameworks in the given orders.
fn build(s: &Scenario, agent_order: &[usize], fw_order: &[usize]) -> Allocator {
    let mut a = Allocator::new(Config::default());
    for (i, w) in s.weights.iter().enumerate() {
        a.set_weight(&role(ROLES[i]), f64::from(*w)).unwrap();
    }
    if let Some((r, cpu)) = s.guarantee {
        a.set_quota(
            &role(ROLES[r]),
            Quota {
                guarantee: Resources::new(cpu * 100, 0, 0),
                limit: None,
            },
        )
        .unwrap();
    }
    if let Some((r, cpu)) = s.limit
        && s.guarantee.is_none_or(|(g, _)| g != r)
    {
        a.set_quota(
            &role(ROLES[r]),
            Quota {
                guarantee: Resources::default(),
                limit: Some(Resources::new(cpu * 100, 1 << 50, 1 << 50)),
            },
        )
        .unwrap();
    }
    for &i in agent_order {
        let (cpu, mem, reserved) = s.agents[i];
        let mut reservations = BTreeMap::new();
        if let Some((r, rcpu)) = reserved {
            reservations.insert(role(ROLES[r]), Resources::new(rcpu.min(cpu) * 100, 0, 0));
        }
        a.add_agent(agent(i), res(cpu * 100, mem), reservations)
            .unwrap();
    }
    for &i in fw_order {
        a.add_framework(
            FrameworkId(i as u64),
            role(ROLES[s.frameworks[i]]),
            i % 2 == 0,
        )
        .unwrap();
    }
    a
}

/// Runs the steps, checking the invariants after each; returns a transcript of every output.
fn run(a: &mut Allocator, steps: &[Step]) -> Result<Vec<String>, TestCaseError> {
    let mut log = Vec::new();
    let mut next_task = 0u64;
    let mut tasks: Vec<TaskId> = Vec::new();
    for (t, st) in steps.iter().enumerate() {
        let now = t as u64 * 1000;
        let outstanding: Vec<Offer> = a.offers().cloned().collect();
        match st {
            Step::Allocate => {
                let offers = a.allocate(now);
                for o in &offers {
                    // Reservations are only ever offered to their role or beneath it.
                    for r in o.resources.reserved.keys() {
                        let f = o.framework.0 as usize;
                        prop_assert!(
                            FRAMEWORK_ROLES.with(|m| m.borrow()[f].is_within(r)),
                            "reservation for {r} offered to a framework outside it"
                        );
                    }
                }
                log.push(format!("{offers:?}"));
            }
            Step::Accept(i, sizes) => {
                if let Some(o) = outstanding.get(*i) {
                    let reqs: Vec<TaskRequest> = sizes
                        .iter()
                        .map(|c| {
                            next_task += 1;
                            TaskRequest {
                                id: TaskId(next_task),
                                resources: Resources::new(c * 100, GIB / 2, 0),
                                qos: if c % 3 == 0 && !o.resources.revocable.is_empty() {
                                    Qos::BestEffort
                                } else {
                                    Qos::Guaranteed
                                },
                                priority: (*c as i32) - 4,
                            }
                        })
                        .collect();
                    let r = a.accept(o.framework, &[o.id], &[Operation::Launch(reqs)], None, now);
                    if let Ok(acc) = &r {
                        tasks.extend(acc.launches.iter().map(|l| l.task));
                    }
                    log.push(format!("{r:?}"));
                }
            }
            Step::Decline(i, refuse) => {
                if let Some(o) = outstanding.get(*i) {
                    a.decline(o.framework, &[o.id], Some(*refuse), now);
                }
            }
            Step::Release(i) => {
                if !tasks.is_empty() {
                    let t = tasks.remove(i % tasks.len());
                    a.release(t);
                    // Half the time the agents report using half of what is allocated.
                    for n in 0..8 {
                        if let Some(s) = a.agent_summary(&agent(n)) {
                            let use_half = (i + n) % 2 == 0;
                            a.set_usage(
                                &agent(n),
                                use_half.then(|| {
                                    Resources::new(
                                        s.allocated.cpu_millis / 2,
                                        s.allocated.mem_bytes / 2,
                                        0,
                                    )
                                }),
                            );
                        }
                    }
                    log.push(format!("{:?}", a.preemptions()));
                }
            }
            Step::RemoveAgent(n) => {
                let (rescinds, lost) = a.remove_agent(&agent(*n));
                tasks.retain(|t| !lost.contains(t));
                log.push(format!("{rescinds:?} {lost:?}"));
            }
            Step::Suppress(f) => a.suppress(FrameworkId(*f)),
            Step::Revive(f) => a.revive(FrameworkId(*f)),
            Step::Expire => log.push(format!("{:?}", a.expire(now + 60_000))),
        }
        if let Err(e) = a.check_invariants() {
            return Err(TestCaseError::fail(format!("after step {t} {st:?}: {e}")));
        }
    }
    Ok(log)
}

thread_local! {
    /// The role of each framework index of the scenario being run, for the reservation check.
    static FRAMEWORK_ROLES: std::cell::RefCell<Vec<Role>> = const { std::cell::RefCell::new(Vec::new()) };
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// No agent or reservation is ever over-committed, accounting never drifts, reservations
    /// are only offered within their role, and the same events give the same outputs.
    #[test]
    fn invariants_hold_and_runs_are_deterministic(s in scenario()) {
        FRAMEWORK_ROLES.with(|m| {
            *m.borrow_mut() = s.frameworks.iter().map(|r| role(ROLES[*r])).collect();
        });
        let agents: Vec<usize> = (0..s.agents.len()).collect();
        let fws: Vec<usize> = (0..s.frameworks.len()).collect();
        let first = run(&mut build(&s, &agents, &fws), &s.steps)?;
        let second = run(&mut build(&s, &agents, &fws), &s.steps)?;
        prop_assert_eq!(first, second);
    }

    /// Adding agents and frameworks in another order gives the same offers.
    #[test]
    fn input_order_does_not_matter(s in scenario(), seed in any::<u64>()) {
        FRAMEWORK_ROLES.with(|m| {
            *m.borrow_mut() = s.frameworks.iter().map(|r| role(ROLES[*r])).collect();
        });
        let agents: Vec<usize> = (0..s.agents.len()).collect();
        let fws: Vec<usize> = (0..s.frameworks.len()).collect();
        let mut shuffled_agents = agents.clone();
        let mut shuffled_fws = fws.clone();
        // A seeded Fisher-Yates shuffle.
        let mut x = seed | 1;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for i in (1..shuffled_agents.len()).rev() {
            shuffled_agents.swap(i, next(i + 1));
        }
        for i in (1..shuffled_fws.len()).rev() {
            shuffled_fws.swap(i, next(i + 1));
        }
        let a = run(&mut build(&s, &agents, &fws), &s.steps)?;
        let b = run(&mut build(&s, &shuffled_agents, &shuffled_fws), &s.steps)?;
        prop_assert_eq!(a, b);
    }

    /// A feasible guarantee is met by the first cycle, however many others compete.
    #[test]
    fn feasible_guarantees_are_honoured(
        agents in prop::collection::vec(1..20u64, 1..10),
        others in 1..6usize,
        want in 1..100u64,
    ) {
        let mut a = Allocator::new(Config::default());
        for (i, cpu) in agents.iter().enumerate() {
            a.add_agent(agent(i), Resources::new(cpu * 100, GIB, 0), BTreeMap::new()).unwrap();
        }
        for f in 0..others {
            a.add_framework(FrameworkId(f as u64), role(&format!("other{f}")), false).unwrap();
        }
        a.add_framework(FrameworkId(99), role("prod"), false).unwrap();
        let total: u64 = agents.iter().sum::<u64>() * 100;
        let guarantee = (want * 100).min(total);
        a.set_quota(&role("prod"), Quota { guarantee: Resources::new(guarantee, 0, 0), limit: None }).unwrap();
        let offers = a.allocate(0);
        let got: u64 = offers
            .iter()
            .filter(|o| o.framework == FrameworkId(99))
            .map(|o| o.resources.unreserved.cpu_millis)
            .sum();
        prop_assert!(got >= guarantee, "prod got {}m of a {}m guarantee", got, guarantee);
        a.check_invariants().map_err(TestCaseError::fail)?;
    }

    /// DRF: in a cycle, each role is handed an agent only while it is the poorest (by weighted
    /// dominant share) of those that can take one. So no role ends up richer than another by
    /// more than the one agent it got last: a role's share before its last offer is at most
    /// every other role's final share.
    #[test]
    fn each_offer_goes_to_the_poorest_role(
        agents in prop::collection::vec((1..40u64, 1..16u64), 1..30),
        weights in prop::collection::vec(1..4u32, 2..6),
    ) {
        let mut a = Allocator::new(Config::default());
        for (i, (cpu, mem)) in agents.iter().enumerate() {
            a.add_agent(agent(i), res(cpu * 100, *mem), BTreeMap::new()).unwrap();
        }
        for (i, w) in weights.iter().enumerate() {
            let r = role(&format!("r{i}"));
            a.set_weight(&r, f64::from(*w)).unwrap();
            a.add_framework(FrameworkId(i as u64), r, false).unwrap();
        }
        let offers = a.allocate(0);
        let total = a.cluster_total().clone();
        let share = |r: &Resources| crate::dominant_share(r, &total);
        let mut last: BTreeMap<u64, f64> = BTreeMap::new();
        for o in &offers {
            last.insert(o.framework.0, share(&o.resources.unreserved));
        }
        let fin: Vec<f64> = (0..weights.len())
            .map(|i| a.framework_dominant_share(FrameworkId(i as u64)).unwrap() / f64::from(weights[i]))
            .collect();
        for (i, w) in weights.iter().enumerate() {
            let Some(l) = last.get(&(i as u64)) else { continue };
            let before = a.framework_dominant_share(FrameworkId(i as u64)).unwrap() - l;
            for (j, f) in fin.iter().enumerate() {
                prop_assert!(
                    before / f64::from(*w) <= f + 1e-9,
                    "role {} had {} before its last offer, more than role {}'s final {}", i, before, j, f
                );
            }
        }
    }
}

#[test]
fn pools_sum_and_split() {
    let mut p = Pools::default();
    p.reserved.insert(role("a"), res(1, 1));
    p.unreserved = res(2, 2);
    assert_eq!(p.non_revocable(), res(3, 3));
    assert!(!p.is_empty());
}

#[test]
fn a_limit_constrains_only_the_kinds_it_names() {
    let q = |g: Resources, l: Resources| Quota {
        guarantee: g,
        limit: Some(l),
    };
    // The limit names CPU only: memory in the guarantee is not over it.
    assert!(
        q(
            Resources::new(500, 128 << 20, 0),
            Resources::new(1000, 0, 0)
        )
        .guarantee_within_limit()
    );
    assert!(!q(Resources::new(1500, 0, 0), Resources::new(1000, 0, 0)).guarantee_within_limit());
    let mut a = Allocator::new(Config::default());
    let err = a.set_quota(
        &role("x"),
        q(Resources::new(2000, 0, 0), Resources::new(1000, 1 << 30, 0)),
    );
    assert!(
        matches!(err, Err(crate::ConfigError::GuaranteeOverLimit { .. })),
        "{err:?}"
    );
    assert!(
        a.set_quota(
            &role("x"),
            q(Resources::new(500, 64 << 20, 0), Resources::new(1000, 0, 0))
        )
        .is_ok()
    );
}
