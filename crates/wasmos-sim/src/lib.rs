//! `wasmos sim`: the real offer allocator (`wasmos-alloc`) driven in virtual time by simulated
//! agents and frameworks, seeded and deterministic. Frameworks receive offers after a network
//! delay, launch queued tasks that fit and decline the rest, suppress when idle and revive when
//! work arrives; tasks arrive as Poisson processes and run for exponential durations; agents
//! can join and leave. The report samples each tenant's dominant share, utilization and queue
//! over time, measures offer-to-launch latency and task wait, and compares the shares with the
//! ideal weighted DRF allocation for the same demand (progressive filling).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use serde::Serialize;
use wasmos_alloc::{Allocator, Config, Offer, Operation, Quota, Role, TaskRequest, dominant_share};
use wasmos_proto::{AgentId, FrameworkId, OfferId, Qos, Resources, TaskId};

const GIB: u64 = 1 << 30;

/// SplitMix64: small, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// One tenant: a top-level role with one framework submitting identical tasks.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub role: String,
    pub weight: f64,
    pub guarantee: Resources,
    pub task: Resources,
    /// Tasks per second (Poisson).
    pub arrivals_per_s: f64,
    pub mean_task_s: f64,
    /// When its framework subscribes and starts submitting (and its quota is set).
    pub start_s: u64,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub about: String,
    pub agents: usize,
    pub agent: Resources,
    pub tenants: Vec<Tenant>,
    /// Agents that leave: (time in s, how many).
    pub agent_losses: Vec<(u64, usize)>,
    pub duration_s: u64,
    pub sample_every_s: u64,
    /// The allocation cycle's period (plus event-driven cycles 10 ms after resources free).
    pub cycle_ms: u64,
}

impl Scenario {
    /// Three tenants with weights 1:1:2 on 1,000 agents, each wanting more than all of it.
    pub fn three_tenants(agents: usize) -> Scenario {
        let agent = Resources::new(8000, 32 * GIB, 0);
        let tenant = |role: &str, weight: f64| Tenant {
            role: role.to_string(),
            weight,
            guarantee: Resources::default(),
            task: Resources::new(1000, 2 * GIB, 0),
            // Twice what the whole cluster can run, split evenly: everyone stays backlogged.
            arrivals_per_s: 2.0 * (agents * 8) as f64 / 30.0 / 3.0,
            mean_task_s: 30.0,
            start_s: 0,
        };
        Scenario {
            name: "three-tenants".into(),
            about: "tenants a, b, c with weights 1:1:2, all backlogged (1 core, 2 GiB tasks of 30 s on average)".into(),
            agents,
            agent,
            tenants: vec![tenant("a", 1.0), tenant("b", 1.0), tenant("c", 2.0)],
            agent_losses: vec![(300, agents / 10)],
            duration_s: 600,
            sample_every_s: 30,
            cycle_ms: 1000,
        }
    }

    /// A tenant with a quota guarantee arrives on a cluster that two others keep full.
    pub fn quota_arrival(agents: usize) -> Scenario {
        let agent = Resources::new(8000, 32 * GIB, 0);
        let cores = (agents * 8) as f64;
        let busy = |role: &str| Tenant {
            role: role.to_string(),
            weight: 1.0,
            guarantee: Resources::default(),
            task: Resources::new(1000, 2 * GIB, 0),
            arrivals_per_s: cores / 60.0,
            mean_task_s: 60.0,
            start_s: 0,
        };
        Scenario {
            name: "quota-arrival".into(),
            about: "batch-a and batch-b keep the cluster full; at 120 s prod subscribes with a quota guarantee of 40 % of the CPU and more work than that (2-core tasks)".into(),
            agents,
            agent,
            tenants: vec![
                busy("batch-a"),
                busy("batch-b"),
                Tenant {
                    role: "prod".into(),
                    weight: 1.0,
                    guarantee: Resources::new(agents as u64 * 8000 * 2 / 5, 0, 0),
                    task: Resources::new(2000, 2 * GIB, 0),
                    arrivals_per_s: cores / 2.0 / 60.0,
                    mean_task_s: 60.0,
                    start_s: 120,
                },
            ],
            agent_losses: vec![],
            duration_s: 600,
            sample_every_s: 30,
            cycle_ms: 1000,
        }
    }

    pub fn named(name: &str, agents: usize) -> Option<Scenario> {
        match name {
            "three-tenants" => Some(Scenario::three_tenants(agents)),
            "quota-arrival" => Some(Scenario::quota_arrival(agents)),
            _ => None,
        }
    }

    pub const NAMES: [&'static str; 2] = ["three-tenants", "quota-arrival"];
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub time_s: u64,
    /// Each tenant's dominant share of the cluster in running tasks.
    pub shares: Vec<f64>,
    /// The ideal weighted DRF shares for the same demand.
    pub ideal: Vec<f64>,
    pub cpu_utilization: f64,
    pub mem_utilization: f64,
    pub pending: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub about: String,
    pub seed: u64,
    pub agents: usize,
    pub tenants: Vec<String>,
    pub samples: Vec<Sample>,
    pub offers: u64,
    pub declines: u64,
    pub launches: u64,
    pub offer_to_launch_ms: Percentiles,
    pub task_wait_ms: Percentiles,
    /// Mean and largest |share - ideal share| over tenants and samples after the first
    /// minute, in share points.
    pub fairness_error_mean: f64,
    pub fairness_error_max: f64,
    pub allocation_cycles: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub count: usize,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            count: v.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The periodic allocation cycle.
    Cycle,
    /// An extra cycle soon after resources were freed.
    Kick,
    Sample,
    /// A framework's answer to an offer reaches the master.
    Answer(OfferId),
    Arrival(usize),
    TaskEnd(TaskId),
    Subscribe(usize),
    AgentLoss(usize),
}

struct FrameworkSim {
    id: FrameworkId,
    /// Queued tasks: arrival time in ms.
    queue: VecDeque<u64>,
    suppressed: bool,
    subscribed: bool,
    running: usize,
}

/// Runs a scenario with a seed. The same scenario and seed give the same report.
pub fn run(s: &Scenario, seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let mut alloc = Allocator::new(Config::default());
    for i in 0..s.agents {
        if let Ok(id) = AgentId::new(&format!("sim-{i:05}")) {
            let _ = alloc.add_agent(id, s.agent.clone(), BTreeMap::new());
        }
    }
    let roles: Vec<Role> = s
        .tenants
        .iter()
        .filter_map(|t| Role::new(&t.role).ok())
        .collect();
    for (t, r) in s.tenants.iter().zip(&roles) {
        let _ = alloc.set_weight(r, t.weight);
    }
    let mut fws: Vec<FrameworkSim> = (0..s.tenants.len())
        .map(|i| FrameworkSim {
            id: FrameworkId(i as u64 + 1),
            queue: VecDeque::new(),
            suppressed: false,
            subscribed: false,
            running: 0,
        })
        .collect();

    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, at: u64, e: Event| {
        seq += 1;
        q.push(Reverse((at, seq, e)));
    };
    push(&mut queue, 0, Event::Cycle);
    push(&mut queue, s.sample_every_s * 1000, Event::Sample);
    for (i, t) in s.tenants.iter().enumerate() {
        push(&mut queue, t.start_s * 1000, Event::Subscribe(i));
    }
    for (at, n) in &s.agent_losses {
        push(&mut queue, at * 1000, Event::AgentLoss(*n));
    }

    let end = s.duration_s * 1000;
    let mut next_task = 0u64;
    let mut task_owner: BTreeMap<TaskId, usize> = BTreeMap::new();
    let mut pending_offers: BTreeMap<OfferId, Offer> = BTreeMap::new();
    let mut kick_at: Option<u64> = None;
    let (mut offers, mut declines, mut launches, mut cycles) = (0u64, 0u64, 0u64, 0u64);
    let mut offer_to_launch = Vec::new();
    let mut waits = Vec::new();
    let mut samples = Vec::new();
    let mut lost_agents = 0usize;

    while let Some(Reverse((now, _, event))) = queue.pop() {
        if now > end {
            break;
        }
        match event {
            Event::Cycle | Event::Kick => {
                cycles += 1;
                for o in alloc.allocate(now) {
                    offers += 1;
                    // The offer reaches the framework and its answer comes back after a
                    // network round trip and some thinking: 2-40 ms.
                    let delay = 2 + (rng.next_u64() % 39);
                    push(&mut queue, now + delay, Event::Answer(o.id));
                    pending_offers.insert(o.id, o);
                }
                if event == Event::Kick {
                    kick_at = None;
                } else {
                    push(&mut queue, now + s.cycle_ms, Event::Cycle);
                }
            }
            Event::Answer(id) => {
                let Some(offer) = pending_offers.remove(&id) else {
                    continue;
                };
                if alloc.offer(id).is_none() {
                    continue; // rescinded meanwhile
                }
                let Some(fi) = fws.iter().position(|f| f.id == offer.framework) else {
                    continue;
                };
                let t = &s.tenants[fi];
                let mut left = offer.resources.non_revocable();
                let mut tasks = Vec::new();
                while fws[fi].queue.front().is_some() && t.task.fits_in(&left) {
                    let Some(arrived) = fws[fi].queue.pop_front() else {
                        break;
                    };
                    left = left.saturating_sub(&t.task);
                    next_task += 1;
                    waits.push((now - arrived) as f64);
                    tasks.push(TaskRequest {
                        id: TaskId(next_task),
                        resources: t.task.clone(),
                        qos: Qos::Guaranteed,
                        priority: 0,
                    });
                }
                if tasks.is_empty() {
                    // With work queued, ask to see these resources again soon (they may grow
                    // into room for a task); idle, the default filter.
                    declines += 1;
                    let refuse = (!fws[fi].queue.is_empty()).then_some(1000);
                    alloc.decline(offer.framework, &[id], refuse, now);
                } else if let Ok(acc) = alloc.accept(
                    offer.framework,
                    &[id],
                    &[Operation::Launch(tasks)],
                    None,
                    now,
                ) {
                    offer_to_launch.push((now - offer.created_ms) as f64);
                    for l in acc.launches {
                        launches += 1;
                        fws[fi].running += 1;
                        task_owner.insert(l.task, fi);
                        let took = (rng.exp(t.mean_task_s * 1000.0) as u64).max(1);
                        push(&mut queue, now + took, Event::TaskEnd(l.task));
                    }
                }
                if fws[fi].queue.is_empty() && !fws[fi].suppressed {
                    alloc.suppress(fws[fi].id);
                    fws[fi].suppressed = true;
                }
            }
            Event::Subscribe(i) => {
                if let Some(role) = roles.get(i) {
                    let _ = alloc.set_quota(
                        role,
                        Quota {
                            guarantee: s.tenants[i].guarantee.clone(),
                            limit: None,
                        },
                    );
                    let _ = alloc.add_framework(fws[i].id, role.clone(), false);
                    fws[i].subscribed = true;
                    let gap = rng.exp(1000.0 / s.tenants[i].arrivals_per_s) as u64;
                    push(&mut queue, now + gap, Event::Arrival(i));
                }
            }
            Event::Arrival(i) => {
                fws[i].queue.push_back(now);
                if fws[i].suppressed {
                    alloc.revive(fws[i].id);
                    fws[i].suppressed = false;
                }
                let gap = rng.exp(1000.0 / s.tenants[i].arrivals_per_s) as u64;
                push(&mut queue, now + gap, Event::Arrival(i));
            }
            Event::TaskEnd(task) => {
                if alloc.release(task)
                    && let Some(fi) = task_owner.remove(&task)
                {
                    fws[fi].running = fws[fi].running.saturating_sub(1);
                }
                // Freed resources are offered in a batch a little later, not one by one.
                if kick_at.is_none() {
                    kick_at = Some(now + 10);
                    push(&mut queue, now + 10, Event::Kick);
                }
            }
            Event::AgentLoss(n) => {
                for k in 0..n {
                    let Ok(id) = AgentId::new(&format!("sim-{:05}", lost_agents + k)) else {
                        continue;
                    };
                    let (_, lost) = alloc.remove_agent(&id);
                    for t in lost {
                        // The framework runs lost tasks again.
                        if let Some(fi) = task_owner.remove(&t) {
                            fws[fi].running = fws[fi].running.saturating_sub(1);
                            fws[fi].queue.push_front(now);
                            if fws[fi].suppressed {
                                alloc.revive(fws[fi].id);
                                fws[fi].suppressed = false;
                            }
                        }
                    }
                }
                lost_agents += n;
            }
            Event::Sample => {
                samples.push(sample(now, s, &fws, &alloc));
                push(&mut queue, now + s.sample_every_s * 1000, Event::Sample);
            }
        }
    }

    let errors: Vec<f64> = samples
        .iter()
        .filter(|x| x.time_s >= 60)
        .flat_map(|x| x.shares.iter().zip(&x.ideal).map(|(a, b)| (a - b).abs()))
        .collect();
    Report {
        scenario: s.name.clone(),
        about: s.about.clone(),
        seed,
        agents: s.agents,
        tenants: s.tenants.iter().map(|t| t.role.clone()).collect(),
        samples,
        offers,
        declines,
        launches,
        offer_to_launch_ms: Percentiles::of(offer_to_launch),
        task_wait_ms: Percentiles::of(waits),
        fairness_error_mean: if errors.is_empty() {
            0.0
        } else {
            errors.iter().sum::<f64>() / errors.len() as f64
        },
        fairness_error_max: errors.iter().copied().fold(0.0, f64::max),
        allocation_cycles: cycles,
    }
}

fn sample(now: u64, s: &Scenario, fws: &[FrameworkSim], alloc: &Allocator) -> Sample {
    let total = alloc.cluster_total().clone();
    let summaries: BTreeMap<String, Resources> = alloc
        .role_summaries()
        .into_iter()
        .map(|r| (r.role.to_string(), r.allocated))
        .collect();
    let held: Vec<Resources> = s
        .tenants
        .iter()
        .map(|t| summaries.get(&t.role).cloned().unwrap_or_default())
        .collect();
    let used = held
        .iter()
        .fold(Resources::default(), |a, r| a.saturating_add(r));
    // Demand: what each tenant runs plus what it has queued.
    let demand: Vec<f64> = fws
        .iter()
        .map(|f| {
            if f.subscribed {
                (f.running + f.queue.len()) as f64
            } else {
                0.0
            }
        })
        .collect();
    Sample {
        time_s: now / 1000,
        shares: held.iter().map(|r| dominant_share(r, &total)).collect(),
        ideal: ideal_drf(s, &demand, &total),
        cpu_utilization: used.cpu_millis as f64 / total.cpu_millis.max(1) as f64,
        mem_utilization: used.mem_bytes as f64 / total.mem_bytes.max(1) as f64,
        pending: fws.iter().map(|f| f.queue.len()).collect(),
    }
}

/// Weighted DRF by progressive filling: every tenant's dominant share grows in proportion to
/// its weight until its demand is met or a resource it uses runs out; then the others go on.
/// Tasks are treated as divisible, so this is the ideal the discrete allocator approaches.
pub fn ideal_drf(s: &Scenario, demand_tasks: &[f64], total: &Resources) -> Vec<f64> {
    let n = s.tenants.len();
    let dom: Vec<f64> = s
        .tenants
        .iter()
        .map(|t| dominant_share(&t.task, total))
        .collect();
    let cap: Vec<f64> = (0..n).map(|i| demand_tasks[i] * dom[i]).collect();
    let mut frozen: Vec<Option<f64>> = vec![None; n];
    let kinds = |r: &Resources| [r.cpu_millis as f64, r.mem_bytes as f64];
    let totals = kinds(total);
    let shares_at = |level: f64, frozen: &[Option<f64>]| -> Vec<f64> {
        (0..n)
            .map(|i| frozen[i].unwrap_or_else(|| (s.tenants[i].weight * level).min(cap[i])))
            .collect()
    };
    let usage = |shares: &[f64]| -> [f64; 2] {
        let mut u = [0.0; 2];
        for i in 0..n {
            if dom[i] > 0.0 {
                let tasks = shares[i] / dom[i];
                let k = kinds(&s.tenants[i].task);
                u[0] += tasks * k[0];
                u[1] += tasks * k[1];
            }
        }
        u
    };
    let fits = |u: [f64; 2]| u[0] <= totals[0] * (1.0 + 1e-12) && u[1] <= totals[1] * (1.0 + 1e-12);
    while frozen.iter().any(Option::is_none) {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while fits(usage(&shares_at(hi, &frozen))) && hi < 1e9 {
            hi *= 2.0;
        }
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if fits(usage(&shares_at(mid, &frozen))) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let shares = shares_at(lo, &frozen);
        let u = usage(&shares);
        let saturated = [
            u[0] >= totals[0] * (1.0 - 1e-9),
            u[1] >= totals[1] * (1.0 - 1e-9),
        ];
        let mut changed = false;
        for i in 0..n {
            if frozen[i].is_some() {
                continue;
            }
            let k = kinds(&s.tenants[i].task);
            let uses_saturated = (saturated[0] && k[0] > 0.0) || (saturated[1] && k[1] > 0.0);
            if shares[i] >= cap[i] - 1e-12 || uses_saturated {
                frozen[i] = Some(shares[i]);
                changed = true;
            }
        }
        if !changed {
            for (i, f) in frozen.iter_mut().enumerate() {
                if f.is_none() {
                    *f = Some(shares[i]);
                }
            }
        }
    }
    frozen.into_iter().map(|f| f.unwrap_or(0.0)).collect()
}

impl Report {
    /// The report as a table, for a terminal or docs/.
    pub fn render(&self) -> String {
        let mut out = format!(
            "scenario {} (seed {}, {} agents): {}\n\n",
            self.scenario, self.seed, self.agents, self.about
        );
        let mut header = format!("{:>6}", "time");
        for t in &self.tenants {
            header.push_str(&format!(" {:>16}", format!("{t} (ideal)")));
        }
        header.push_str(&format!(" {:>6} {:>6} {:>9}", "cpu", "mem", "queued"));
        out.push_str(&header);
        out.push('\n');
        for smp in &self.samples {
            let mut line = format!("{:>5}s", smp.time_s);
            for (a, i) in smp.shares.iter().zip(&smp.ideal) {
                line.push_str(&format!(
                    " {:>16}",
                    format!("{:.1}% ({:.1}%)", a * 100.0, i * 100.0)
                ));
            }
            line.push_str(&format!(
                " {:>5.1}% {:>5.1}% {:>9}",
                smp.cpu_utilization * 100.0,
                smp.mem_utilization * 100.0,
                smp.pending.iter().sum::<usize>()
            ));
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str(&format!(
            "\n{} allocation cycles, {} offers, {} declined, {} tasks launched\n",
            self.allocation_cycles, self.offers, self.declines, self.launches
        ));
        out.push_str(&format!(
            "offer-to-launch latency: p50 {:.0} ms, p99 {:.0} ms; task wait (arrival to launch): p50 {:.0} ms, p99 {:.0} ms\n",
            self.offer_to_launch_ms.p50,
            self.offer_to_launch_ms.p99,
            self.task_wait_ms.p50,
            self.task_wait_ms.p99
        ));
        out.push_str(&format!(
            "fairness error vs ideal weighted DRF (after 60 s): mean {:.2} points, max {:.2} points\n",
            self.fairness_error_mean * 100.0,
            self.fairness_error_max * 100.0
        ));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_report_and_another_seed_another() {
        let mut s = Scenario::three_tenants(40);
        s.duration_s = 120;
        let a = run(&s, 7);
        let b = run(&s, 7);
        assert_eq!(a.render(), b.render());
        assert_ne!(a.render(), run(&s, 8).render());
        assert!(a.launches > 100, "{}", a.render());
    }

    #[test]
    fn backlogged_tenants_converge_to_their_weighted_shares() {
        let mut s = Scenario::three_tenants(100);
        s.agent_losses.clear();
        s.duration_s = 300;
        let r = run(&s, 1);
        let last = r.samples.last().unwrap();
        // Weights 1:1:2 on a CPU-bound mix: 25 %, 25 %, 50 % of the CPU (all of it in use).
        for (got, want) in last.shares.iter().zip([0.25, 0.25, 0.5]) {
            assert!((got - want).abs() < 0.03, "{}", r.render());
        }
        assert!(last.cpu_utilization > 0.95, "{}", r.render());
        assert!(r.fairness_error_mean < 0.03, "{}", r.render());
    }

    #[test]
    fn a_quota_tenant_gets_its_guarantee_on_a_full_cluster() {
        let mut s = Scenario::quota_arrival(50);
        s.duration_s = 420;
        let r = run(&s, 3);
        let before = r.samples.iter().find(|x| x.time_s == 120).unwrap();
        assert_eq!(before.shares[2], 0.0);
        assert!(before.cpu_utilization > 0.95, "{}", r.render());
        let last = r.samples.last().unwrap();
        assert!(
            last.shares[2] >= 0.38,
            "prod below its guarantee:\n{}",
            r.render()
        );
    }

    #[test]
    fn ideal_drf_fills_progressively() {
        let s = Scenario::three_tenants(10);
        let total = Resources::new(80_000, 320 * GIB, 0);
        // Everyone backlogged: 1:1:2 of the CPU.
        let ideal = ideal_drf(&s, &[1e6, 1e6, 1e6], &total);
        assert!(
            (ideal[0] - 0.25).abs() < 1e-6 && (ideal[2] - 0.5).abs() < 1e-6,
            "{ideal:?}"
        );
        // A tenant that wants little gets all of it; the rest is split 1:2.
        let ideal = ideal_drf(&s, &[8.0, 1e6, 1e6], &total);
        assert!((ideal[0] - 0.1).abs() < 1e-6, "{ideal:?}");
        assert!(
            (ideal[1] - 0.3).abs() < 1e-6 && (ideal[2] - 0.6).abs() < 1e-6,
            "{ideal:?}"
        );
    }
}
