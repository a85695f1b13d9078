//! Batch jobs against a simulated cluster, seeded: agents die (their running tasks and kept
//! files with them; the master declares them lost only a while later) and kept files vanish
//! without notice (a wiped disk), while the job runs through the SDK's sans-IO driver exactly
//! as in the master. The cluster is modelled as the master behaves: it refuses a launch that
//! names a kept blob it has forgotten, forgets a blob with its last agent, undoes in the job's
//! record the done slots whose kept outputs are gone once they are needed again (as
//! `wasmos_state` does), and the job host keeps the framework in step with that record.
//! Checked on every seed: the job ends finished, no slot ever runs twice at once, every task
//! launched reads the output of every task of the groups it depends on, no attempt counts as
//! failed but those lost with their agent, and the job's results are stored on masters.

use std::collections::{BTreeMap, BTreeSet};

use wasmos_proto::{
    AgentId, BundleHash, FrameworkCall, FrameworkEvent, FrameworkId, GroupSpec, JobEvent, JobKind,
    JobSpec, JobState, OfferId, OfferInfo, OfferOperation, OutputFile, Reason, Resources, TaskId,
    TaskSpec, TaskState, TaskStatus,
};
use wasmos_sdk::{Action, Driver, Options};

use super::*;

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

fn hash_of(n: u64) -> BundleHash {
    BundleHash::parse(&format!("{n:064x}")).unwrap_or_else(|e| panic!("{e}"))
}

/// A slot's one output: the same bytes every time it runs, as a deterministic task's.
fn output_of(group: usize, index: u32) -> BundleHash {
    hash_of(1 << 40 | (group as u64) << 20 | u64::from(index))
}

const AGENTS: [&str; 3] = ["a0", "a1", "a2"];
/// Most disruptions per seed: fewer than `MAX_LOSSES`, so every job must finish.
const DISRUPTIONS: u32 = 3;

struct Running {
    /// Set once its agent died: it will never end by itself.
    frozen: bool,
    agent: String,
    slot: (usize, u32),
    ends_at: u64,
    lost_input: Option<BundleHash>,
    killed: bool,
}

struct Sim {
    rng: Rng,
    d: Driver<JobFramework>,
    spec: JobSpec,
    now: u64,
    alive: BTreeSet<String>,
    back_at: BTreeMap<String, u64>,
    /// Dead agents the master has not declared lost yet, and when it will.
    declare_at: BTreeMap<String, u64>,
    /// The kept blobs the master knows of, and on which agents (the state's `kept_on`).
    recorded: BTreeMap<BundleHash, BTreeSet<String>>,
    /// The job's record of done slots, as the state machine keeps it.
    record_done: BTreeMap<(String, u32), (TaskId, Vec<OutputFile>)>,
    record_losses: BTreeMap<(String, u32), u32>,
    /// Attempts lost with their agent, and attempts the job counted as failed.
    lost_attempts: u64,
    failed_attempts: u64,
    keeps: BTreeMap<String, BTreeSet<BundleHash>>,
    masters: BTreeSet<BundleHash>,
    running: BTreeMap<TaskId, Running>,
    live_slots: BTreeMap<(usize, u32), TaskId>,
    offers_to: BTreeMap<OfferId, String>,
    next_offer: u64,
    next_task: u64,
    update: u64,
    disruptions: u32,
    ended: Option<JobState>,
    seen: Seen,
}

/// What the seeds exercised, so a change that stops the faults from biting fails the test.
#[derive(Default, Debug)]
struct Seen {
    agents_lost: u64,
    files_wiped: u64,
    inputs_lost: u64,
    slots_undone: u64,
    launches_refused: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let groups = 2 + rng.below(3) as usize;
        let spec = JobSpec {
            name: "sim".into(),
            kind: JobKind::Batch,
            role: None,
            deadline_ms: None,
            groups: (0..groups)
                .map(|g| GroupSpec {
                    name: format!("g{g}"),
                    count: 1 + rng.below(4) as u32,
                    task: TaskSpec {
                        args: vec!["--part".into(), "{index}".into()],
                        resources: Resources::new(500, 1 << 20, 0),
                        outputs_dir: Some("/out".into()),
                        ..TaskSpec::new("t.wasm", hash_of(g as u64 + 1))
                    },
                    depends_on: if g == 0 {
                        Vec::new()
                    } else {
                        vec![format!("g{}", g - 1)]
                    },
                    input_pattern: None,
                    inputs: Vec::new(),
                    constraints: BTreeMap::new(),
                    retries: 2 * DISRUPTIONS,
                    backoff_ms: 100,
                    spread: None,
                    max_unavailable: 0,
                })
                .collect(),
        };
        let mut fw = JobFramework::new(spec.clone(), 0, Progress::default());
        fw.locality_wait_ms = 0;
        let mut d = Driver::new(fw, Options::new("job"));
        d.connected(0);
        d.event(
            FrameworkEvent::Subscribed {
                framework: FrameworkId(1),
                role: "r".into(),
                heartbeat_interval_ms: 0,
                failover_timeout_ms: 1,
            },
            0,
        );
        Sim {
            rng,
            d,
            spec,
            now: 0,
            alive: AGENTS.iter().map(|a| a.to_string()).collect(),
            back_at: BTreeMap::new(),
            declare_at: BTreeMap::new(),
            recorded: BTreeMap::new(),
            record_done: BTreeMap::new(),
            record_losses: BTreeMap::new(),
            lost_attempts: 0,
            failed_attempts: 0,
            keeps: BTreeMap::new(),
            masters: BTreeSet::new(),
            running: BTreeMap::new(),
            live_slots: BTreeMap::new(),
            offers_to: BTreeMap::new(),
            next_offer: 0,
            next_task: 0,
            update: 0,
            disruptions: 0,
            ended: None,
            seen: Seen::default(),
        }
    }

    fn group_of(&self, spec: &TaskSpec) -> usize {
        self.spec
            .groups
            .iter()
            .position(|g| g.task.bundle == spec.bundle)
            .unwrap_or_else(|| panic!("a task of no group: {spec:?}"))
    }

    /// Whether some live agent, or the masters, still have the bytes.
    fn available(&self, blob: &BundleHash) -> bool {
        self.masters.contains(blob)
            || self
                .keeps
                .iter()
                .any(|(a, k)| self.alive.contains(a) && k.contains(blob))
    }

    fn send(&mut self, event: FrameworkEvent) {
        let actions = self.d.event(event, self.now);
        self.handle(actions);
    }

    fn status(&mut self, task: TaskId, status: TaskStatus) {
        self.update += 1;
        let update = self.update;
        self.send(FrameworkEvent::Update {
            task,
            status,
            update,
        });
    }

    fn handle(&mut self, actions: Vec<Action>) {
        for a in actions {
            let Action::Send(call) = a else { continue };
            match call {
                FrameworkCall::Accept {
                    request,
                    offers,
                    operations,
                    ..
                } => self.accept(request, &offers, &operations),
                FrameworkCall::Kill { task } => {
                    if let Some(r) = self.running.get_mut(&task) {
                        r.killed = true;
                        r.ends_at = self.now;
                    }
                }
                _ => {}
            }
        }
        for e in self.d.scheduler_mut().take_events() {
            match e {
                JobEvent::Ended(state) => self.ended = Some(state),
                JobEvent::Done {
                    task,
                    group,
                    index,
                    outputs,
                } => drop(self.record_done.insert((group, index), (task, outputs))),
                JobEvent::Lost { group, index } => {
                    self.seen.slots_undone += 1;
                    if self.record_done.remove(&(group.clone(), index)).is_some() {
                        *self.record_losses.entry((group, index)).or_default() += 1;
                    }
                    self.forget_missing();
                }
                JobEvent::Failed { .. } => self.failed_attempts += 1,
                _ => {}
            }
        }
    }

    fn accept(&mut self, request: u64, offers: &[OfferId], operations: &[OfferOperation]) {
        let agent = self.offers_to[&offers[0]].clone();
        // The state machine refuses a launch naming a blob it does not know: a kept output
        // whose last agent was declared lost.
        let forgotten = operations.iter().any(|op| match op {
            OfferOperation::Launch(specs) => specs.iter().any(|s| {
                s.inputs.iter().any(|i| {
                    !self.masters.contains(&i.blob) && !self.recorded.contains_key(&i.blob)
                })
            }),
            _ => false,
        });
        if forgotten {
            self.seen.launches_refused += 1;
            self.send(FrameworkEvent::Error {
                request: Some(request),
                message: "input blob has not been uploaded".into(),
            });
            return;
        }
        let mut ids = Vec::new();
        for op in operations {
            let OfferOperation::Launch(specs) = op else {
                continue;
            };
            for spec in specs {
                let g = self.group_of(spec);
                let index: u32 = spec.args[1].parse().unwrap_or_else(|e| panic!("{e}"));
                let slot = (g, index);
                if let Some(other) = self.live_slots.get(&slot) {
                    panic!("slot {slot:?} launched while task {other:?} still runs it");
                }
                // The output of every task of every group it reads.
                let expect: BTreeSet<BundleHash> = self.spec.groups[g]
                    .depends_on
                    .iter()
                    .filter_map(|d| self.spec.groups.iter().position(|x| &x.name == d))
                    .flat_map(|d| (0..self.spec.groups[d].count).map(move |i| output_of(d, i)))
                    .collect();
                let given: BTreeSet<BundleHash> =
                    spec.inputs.iter().map(|i| i.blob.clone()).collect();
                assert_eq!(given, expect, "slot {slot:?}");
                assert_eq!(spec.inputs.len(), expect.len(), "slot {slot:?}");
                let lost_input = spec
                    .inputs
                    .iter()
                    .find(|i| !self.available(&i.blob))
                    .map(|i| i.blob.clone());
                self.next_task += 1;
                let task = TaskId(self.next_task);
                let ends_at = self.now + 50 + self.rng.below(400);
                self.live_slots.insert(slot, task);
                self.running.insert(
                    task,
                    Running {
                        frozen: false,
                        agent: agent.clone(),
                        slot,
                        ends_at,
                        lost_input,
                        killed: false,
                    },
                );
                ids.push(task);
            }
        }
        self.send(FrameworkEvent::Accepted {
            request,
            tasks: ids,
        });
    }

    fn disrupt(&mut self) {
        if self.disruptions >= DISRUPTIONS || !self.rng.chance(60) {
            return;
        }
        let alive: Vec<String> = self.alive.iter().cloned().collect();
        if alive.len() < 2 {
            return;
        }
        let victim = alive[self.rng.below(alive.len() as u64) as usize].clone();
        self.disruptions += 1;
        if self.rng.chance(500) {
            // Its disk is wiped: nobody is told; readers find out.
            let keeps = self.keeps.entry(victim).or_default();
            let all: Vec<BundleHash> = keeps.iter().cloned().collect();
            if let Some(b) = all.first() {
                keeps.remove(b);
                self.seen.files_wiped += 1;
            }
            return;
        }
        // The agent dies with what it kept and ran; the master notices a while later.
        self.seen.agents_lost += 1;
        self.alive.remove(&victim);
        self.keeps.remove(&victim);
        for r in self.running.values_mut().filter(|r| r.agent == victim) {
            r.frozen = true;
        }
        let after = 200 + self.rng.below(2_000);
        self.declare_at.insert(victim, self.now + after);
    }

    /// The master declares dead agents lost once their time is up: their tasks' lost updates
    /// and the failure reach the framework (in either order), and the state forgets what
    /// they kept and undoes the job's slots that need it.
    fn declare(&mut self) {
        let due: Vec<String> = self
            .declare_at
            .iter()
            .filter(|(_, at)| **at <= self.now)
            .map(|(a, _)| a.clone())
            .collect();
        for victim in due {
            self.declare_at.remove(&victim);
            self.back_at.insert(victim.clone(), self.now + 1_000);
            self.recorded.retain(|_, on| {
                on.remove(&victim);
                !on.is_empty()
            });
            self.forget_missing();
            let lost: Vec<TaskId> = self
                .running
                .iter()
                .filter(|(_, r)| r.agent == victim)
                .map(|(t, _)| *t)
                .collect();
            let agent = AgentId::new(&victim).unwrap_or_else(|e| panic!("{e}"));
            let failure_first = self.rng.chance(500);
            if failure_first {
                self.send(FrameworkEvent::Failure {
                    agent: agent.clone(),
                });
            }
            for t in lost {
                if let Some(r) = self.running.remove(&t) {
                    self.live_slots.remove(&r.slot);
                }
                self.lost_attempts += 1;
                let s = TaskStatus::with_reason(TaskState::Lost, Some(Reason::AgentLost), "lost");
                self.status(t, s);
            }
            if !failure_first {
                self.send(FrameworkEvent::Failure { agent });
            }
        }
    }

    /// The state machine's own rule (`JobSpec::undo_lost_kept`): needed done slots with a kept
    /// output the master no longer knows are undone in the record.
    fn forget_missing(&mut self) {
        let recorded = &self.recorded;
        self.spec
            .undo_lost_kept(&mut self.record_done, &mut self.record_losses, |b| {
                !recorded.contains_key(b)
            });
    }

    fn finish_due(&mut self) {
        let due: Vec<TaskId> = self
            .running
            .iter()
            .filter(|(_, r)| r.ends_at <= self.now && !r.frozen)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            let Some(r) = self.running.remove(&t) else {
                continue;
            };
            self.live_slots.remove(&r.slot);
            let status = if r.killed {
                TaskStatus::with_reason(TaskState::Killed, Some(Reason::Killed), "killed")
            } else if let Some(blob) = r.lost_input {
                self.seen.inputs_lost += 1;
                let mut s = TaskStatus::with_reason(
                    TaskState::Failed,
                    Some(Reason::InputLost),
                    "cannot fetch input",
                );
                s.lost_input = Some(blob);
                s
            } else {
                let (g, i) = r.slot;
                let blob = output_of(g, i);
                let kept = self
                    .spec
                    .groups
                    .iter()
                    .any(|x| x.depends_on.contains(&self.spec.groups[g].name));
                if kept {
                    self.keeps
                        .entry(r.agent.clone())
                        .or_default()
                        .insert(blob.clone());
                    self.recorded
                        .entry(blob.clone())
                        .or_default()
                        .insert(r.agent.clone());
                } else {
                    self.masters.insert(blob.clone());
                }
                let mut s = TaskStatus::new(TaskState::Finished);
                s.exit_code = Some(0);
                s.outputs = vec![OutputFile {
                    path: "part-0".into(),
                    blob,
                    size: 1,
                    held_by: kept.then(|| AgentId::new(&r.agent).unwrap_or_else(|e| panic!("{e}"))),
                }];
                s
            };
            self.status(t, status);
        }
    }

    fn offer(&mut self) {
        let back: Vec<String> = self
            .back_at
            .iter()
            .filter(|(_, at)| **at <= self.now)
            .map(|(a, _)| a.clone())
            .collect();
        for a in back {
            self.back_at.remove(&a);
            self.alive.insert(a);
        }
        // The job host keeps the framework in step with the record between callbacks.
        self.d
            .scheduler_mut()
            .sync_done(&self.record_done, &self.record_losses);
        let mut offers = Vec::new();
        for a in self.alive.clone() {
            let used = self.running.values().filter(|r| r.agent == a).count() as u64 * 500;
            if used >= 1000 {
                continue;
            }
            self.next_offer += 1;
            let id = OfferId(self.next_offer);
            self.offers_to.insert(id, a.clone());
            offers.push(OfferInfo {
                id,
                agent: AgentId::new(&a).unwrap_or_else(|e| panic!("{e}")),
                attributes: BTreeMap::new(),
                unreserved: Resources::new(1000 - used, 1 << 30, 1 << 30),
                reserved: BTreeMap::new(),
                revocable: Resources::default(),
            });
        }
        if !offers.is_empty() {
            self.send(FrameworkEvent::Offers(offers));
        }
    }

    fn run(mut self, seed: u64) -> Seen {
        while self.ended.is_none() {
            assert!(self.now < 600_000, "seed {seed}: the job did not end");
            self.now += 50;
            self.disrupt();
            self.declare();
            self.finish_due();
            let ticks = self.d.tick(self.now);
            self.handle(ticks);
            if self.ended.is_none() {
                self.offer();
            }
        }
        assert_eq!(self.ended, Some(JobState::Finished), "seed {seed}");
        assert!(
            self.failed_attempts <= self.lost_attempts,
            "seed {seed}: {} attempts counted failed, {} lost with agents",
            self.failed_attempts,
            self.lost_attempts
        );
        let last = self.spec.groups.len() - 1;
        for i in 0..self.spec.groups[last].count {
            assert!(
                self.masters.contains(&output_of(last, i)),
                "seed {seed}: result {i} is not on the masters"
            );
        }
        self.seen
    }
}

#[test]
fn jobs_finish_whatever_agents_and_kept_files_are_lost() {
    let seeds: u64 = std::env::var("WASMOS_JOB_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut all = Seen::default();
    for seed in 0..seeds {
        let seen = Sim::new(seed).run(seed);
        all.agents_lost += seen.agents_lost;
        all.files_wiped += seen.files_wiped;
        all.inputs_lost += seen.inputs_lost;
        all.slots_undone += seen.slots_undone;
        all.launches_refused += seen.launches_refused;
    }
    eprintln!("{seeds} seeds: {all:?}");
    if seeds >= 100 {
        assert!(
            all.agents_lost > 0
                && all.files_wiped > 0
                && all.inputs_lost > 0
                && all.slots_undone > 0,
            "the faults did not bite: {all:?}"
        );
    }
}
