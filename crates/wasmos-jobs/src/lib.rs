//! The built-in frameworks, written on the public SDK only: batch jobs (a DAG of task groups run
//! to completion, with retries and backoff, a deadline, agent constraints and delay scheduling
//! toward agents that already hold the bundle compiled) and services (N instances of each group
//! kept running, restarted with backoff, scaled, stopped).
//!
//! One [`JobFramework`] runs one job. What it must not forget it hands to its host as
//! [`JobEvent`]s ([`JobFramework::take_events`]); the host records them before it sends the
//! calls the same callback made, acknowledgements included, so an update whose consequence was
//! not recorded is delivered again to the next instance (after a master failover).

use std::collections::{BTreeMap, BTreeSet};

use wasmos_proto::{
    AgentId, BundleHash, FrameworkId, InputFile, JobEvent, JobKind, JobSpec, JobState, OfferInfo,
    OutputFile, Qos, Reason, TaskId, TaskSpec, TaskState, TaskStatus,
};
use wasmos_sdk::{Context, Scheduler};

/// A task's place in its job: (group number, index).
type Slot = (usize, u32);

/// How long a task waits for an offer from an agent that already ran its bundle before it
/// takes any agent (delay scheduling).
pub const LOCALITY_WAIT_MS: u64 = 3_000;
/// How often one slot's outputs may be lost with the agents that kept them before the job
/// gives up (Spark's stage attempts): a loss is not the task's failure, so its retries do not
/// count it, but a cluster that keeps losing agents must not run a job for ever.
pub const MAX_LOSSES: u32 = 4;
/// The longest wait between a service instance's restarts.
const MAX_BACKOFF_MS: u64 = 60_000;
/// How long declined offers stay away: short, so a slot whose wait ends soon gets offers.
const DECLINE_MS: u64 = 1_000;
/// A fault domain (a `spread` attribute's value) counts as there for this long after an
/// agent in it last offered anything: a domain lost whole is forgotten after it.
pub const DOMAIN_MEMORY_MS: u64 = 10_000;
/// How long a task of a spread group waits for an offer from its least used domain before it
/// takes any (a domain whose agents are full, or too small for it, does not hold it up).
pub const SPREAD_WAIT_MS: u64 = 5_000;
/// For this long after its first offers a framework learns which domains there are (an offer
/// cycle may bring one agent's offer before the others'): meanwhile a spread group puts at most
/// one task in each domain.
pub const DOMAIN_DISCOVERY_MS: u64 = 2_000;

/// What a job has recorded so far (from the replicated state), to resume from.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub framework: Option<FrameworkId>,
    /// Tasks not known to have ended.
    pub tasks: BTreeMap<TaskId, (String, u32)>,
    pub done: BTreeMap<(String, u32), (TaskId, Vec<OutputFile>)>,
    pub failures: BTreeMap<(String, u32), u32>,
    /// Times a done slot's kept outputs were lost.
    pub losses: BTreeMap<(String, u32), u32>,
    /// Where the live tasks were placed, and whether they run, as the state has them: a
    /// framework started again (after a failover) knows their agents before any update.
    pub placed: BTreeMap<TaskId, (AgentId, bool)>,
}

#[derive(Debug)]
pub struct JobFramework {
    spec: JobSpec,
    submitted_ms: u64,
    progress: Progress,
    /// Slots with a task on its way (`None`: the accept is not answered yet) or live.
    busy: BTreeMap<Slot, Option<TaskId>>,
    live: BTreeMap<TaskId, Slot>,
    agent_of: BTreeMap<TaskId, AgentId>,
    launching: BTreeMap<u64, Vec<(Slot, AgentId)>>,
    /// Tasks this framework killed itself (scaled down, job stopped): their end is no failure.
    killing: BTreeSet<TaskId>,
    retry_at: BTreeMap<Slot, u64>,
    waiting_since: BTreeMap<Slot, u64>,
    /// Agents that have run a bundle, so hold it compiled.
    warm: BTreeMap<BundleHash, BTreeSet<AgentId>>,
    /// Per group (by position): the indexes done, mirroring `progress.done`, so asking whether
    /// a slot or a group is done costs no string and no walk over the group.
    done_idx: Vec<BTreeSet<u32>>,
    /// Per group: whether a later group reads its outputs (they are then kept on agents).
    feeds: Vec<bool>,
    /// Done slots whose kept outputs went with a lost agent: undone once a group that reads
    /// them is not done (at once if one is not).
    stale: BTreeSet<Slot>,
    /// Per slot with a task on its way or live: the producers (tasks of the groups it reads)
    /// whose outputs that task was given.
    reading: BTreeMap<Slot, BTreeSet<TaskId>>,
    /// Why the job must fail, found outside a callback (see [`JobFramework::sync_done`]).
    doomed: Option<String>,
    /// Groups (by position) with a slot in an accept the master refused since the host last
    /// asked ([`JobFramework::take_refused`]).
    refused: BTreeSet<usize>,
    events: Vec<JobEvent>,
    suppressed: bool,
    stop: bool,
    ended: bool,
    pub locality_wait_ms: u64,
    /// The attributes of the agents that offered, kept for as long as the framework runs:
    /// a task on an agent that is full, and so offers nothing, still counts in its domain.
    attributes: BTreeMap<AgentId, BTreeMap<String, String>>,
    /// When each agent last offered: a domain is known while one of its agents did lately.
    offered_ms: BTreeMap<AgentId, u64>,
    /// When this framework got its first offers.
    first_offers_ms: Option<u64>,
    /// Per group: how many times its definition changed (`wasmos service update`) since this
    /// framework started.
    generation: Vec<u32>,
    /// The generation of each slot's task on its way or live; a slot without one holds a task
    /// this framework found running (after a failover), taken as current.
    slot_gen: BTreeMap<Slot, u32>,
    /// Live tasks reported running: what a rolling update keeps available.
    running: BTreeSet<TaskId>,
    /// Agents with maintenance ahead this framework moved its work off, until the window ends:
    /// their offers are declined.
    avoid: BTreeMap<AgentId, u64>,
}

impl JobFramework {
    pub fn new(spec: JobSpec, submitted_ms: u64, progress: Progress) -> JobFramework {
        let index: BTreeMap<&str, usize> = spec
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i))
            .collect();
        let mut busy = BTreeMap::new();
        let mut live = BTreeMap::new();
        let (mut agent_of, mut running) = (BTreeMap::new(), BTreeSet::new());
        for (task, (group, i)) in &progress.tasks {
            if let Some(g) = index.get(group.as_str()) {
                busy.insert((*g, *i), Some(*task));
                live.insert(*task, (*g, *i));
                if let Some((agent, runs)) = progress.placed.get(task) {
                    agent_of.insert(*task, agent.clone());
                    if *runs {
                        running.insert(*task);
                    }
                }
            }
        }
        let mut done_idx = vec![BTreeSet::new(); spec.groups.len()];
        for (group, i) in progress.done.keys() {
            if let Some(g) = index.get(group.as_str()) {
                done_idx[*g].insert(*i);
            }
        }
        let groups = spec.groups.len();
        let feeds = spec
            .groups
            .iter()
            .map(|g| {
                spec.kind == JobKind::Batch
                    && spec.groups.iter().any(|o| o.depends_on.contains(&g.name))
            })
            .collect();
        JobFramework {
            feeds,
            stale: BTreeSet::new(),
            reading: BTreeMap::new(),
            doomed: None,
            refused: BTreeSet::new(),
            spec,
            submitted_ms,
            progress,
            busy,
            live,
            agent_of,
            launching: BTreeMap::new(),
            killing: BTreeSet::new(),
            retry_at: BTreeMap::new(),
            waiting_since: BTreeMap::new(),
            warm: BTreeMap::new(),
            done_idx,
            events: Vec::new(),
            suppressed: false,
            stop: false,
            ended: false,
            locality_wait_ms: LOCALITY_WAIT_MS,
            attributes: BTreeMap::new(),
            offered_ms: BTreeMap::new(),
            first_offers_ms: None,
            generation: vec![0; groups],
            slot_gen: BTreeMap::new(),
            running,
            avoid: BTreeMap::new(),
        }
    }

    /// What the host must record before it sends the calls of the same callback.
    pub fn take_events(&mut self) -> Vec<JobEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether any group runs best-effort tasks (the framework then takes revocable offers).
    pub fn wants_revocable(spec: &JobSpec) -> bool {
        spec.groups.iter().any(|g| g.task.qos == Qos::BestEffort)
    }

    /// The owner stopped the job: its tasks are killed at the next callback.
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// A service group's new definition: a new count starts more instances or stops the
    /// highest indexes; a new task replaces the old one's instances, at most its
    /// `max_unavailable` at a time (see [`JobFramework::roll`]).
    pub fn update_group(&mut self, group: wasmos_proto::GroupSpec) {
        let Some(g) = self.spec.groups.iter().position(|x| x.name == group.name) else {
            return;
        };
        let old = &self.spec.groups[g];
        if old.task != group.task
            || old.constraints != group.constraints
            || old.spread != group.spread
        {
            self.generation[g] += 1;
        }
        self.spec.groups[g] = group;
    }

    /// One step of each service group's rolling update: instances of an older definition are
    /// stopped (the framework's own kill, so no failure and no backoff: the slot launches
    /// again at once, from the new definition) while at most `max_unavailable` of the group's
    /// count is not running. Those not running yet are stopped at once: that costs nothing.
    fn roll(&mut self, cx: &mut Context) {
        if self.spec.kind != JobKind::Service || self.ended {
            return;
        }
        for g in 0..self.spec.groups.len() {
            let group = &self.spec.groups[g];
            let (count, current) = (group.count, self.generation[g]);
            let live: Vec<(TaskId, Slot)> = self
                .live
                .iter()
                .filter(|(t, s)| s.0 == g && s.1 < count && !self.killing.contains(t))
                .map(|(t, s)| (*t, *s))
                .collect();
            // Of an older definition (a task found running after a failover, of unknown
            // definition, counts as older once the group has changed), or on an agent with
            // maintenance ahead that this framework agreed to leave.
            let outdated = |t: &TaskId, s: &Slot| {
                self.slot_gen.get(s).map_or(current > 0, |v| *v < current)
                    || self
                        .agent_of
                        .get(t)
                        .is_some_and(|a| self.avoid.contains_key(a))
            };
            if !live.iter().any(|(t, s)| outdated(t, s)) {
                continue;
            }
            let available = live
                .iter()
                .filter(|(t, _)| self.running.contains(t))
                .count() as u32;
            let mut budget = group
                .max_unavailable
                .max(1)
                .saturating_sub(count.saturating_sub(available));
            let mut stop = Vec::new();
            for (t, s) in &live {
                if !outdated(t, s) {
                    continue;
                }
                if !self.running.contains(t) {
                    stop.push(*t);
                } else if budget > 0 {
                    budget -= 1;
                    stop.push(*t);
                }
            }
            for t in stop {
                self.killing.insert(t);
                cx.kill(t);
            }
        }
    }

    fn name(&self, slot: Slot) -> (String, u32) {
        (self.spec.groups[slot.0].name.clone(), slot.1)
    }

    fn group_done(&self, g: usize) -> bool {
        let count = self.spec.groups[g].count;
        let done = &self.done_idx[g];
        done.len() >= count as usize && done.range(..count).count() == count as usize
    }

    /// Slots that could launch now, in order: earlier groups first, then by index (an
    /// iterator, so asking whether there is any stops at the first).
    fn pending(&self, now: u64) -> impl Iterator<Item = Slot> + '_ {
        self.spec
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                self.spec.kind != JobKind::Batch
                    || g.depends_on.iter().all(|d| {
                        self.spec
                            .groups
                            .iter()
                            .position(|x| &x.name == d)
                            .is_some_and(|di| self.group_done(di))
                    })
            })
            .flat_map(move |(gi, g)| {
                (0..g.count).map(move |i| (gi, i)).filter(move |slot| {
                    !self.done_idx[gi].contains(&slot.1)
                        && self.retry_at.get(slot).is_none_or(|t| *t <= now)
                        && !self.busy.contains_key(slot)
                })
            })
    }

    /// The task of `slot`: the group's template with `{index}` filled in, its own input
    /// files, and the outputs of the groups it depends on.
    fn task_for(&self, slot: Slot) -> TaskSpec {
        let g = &self.spec.groups[slot.0];
        let index = slot.1.to_string();
        let fill = |s: &str| s.replace("{index}", &index);
        let mut t = g.task.clone();
        // Outputs only later groups read stay where they were made (MapReduce's intermediate
        // files): replicating them to a majority of masters is what made stages wait.
        t.outputs_on_agent = self.feeds[slot.0] && t.outputs_dir.is_some();
        let (group, index_n) = self.name(slot);
        let attempt = 1 + self
            .progress
            .failures
            .get(&(group.clone(), index_n))
            .copied()
            .unwrap_or(0);
        // The master fills in the job from the framework that launches it.
        t.slot = Some(wasmos_proto::JobSlot {
            job: None,
            group,
            index: index_n,
            attempt,
        });
        t.args = t.args.iter().map(|a| fill(a)).collect();
        t.env = t.env.iter().map(|(k, v)| (k.clone(), fill(v))).collect();
        if let Some(own) = g.inputs.get(slot.1 as usize) {
            t.inputs.extend(own.iter().cloned());
        }
        let pattern = g.input_pattern.as_deref().map(fill);
        for dep in &g.depends_on {
            let done = self
                .progress
                .done
                .range((dep.clone(), 0)..=(dep.clone(), u32::MAX));
            for ((_, i), (_, outputs)) in done {
                for o in outputs {
                    if pattern.as_ref().is_some_and(|p| p != &o.path) {
                        continue;
                    }
                    t.inputs.push(InputFile {
                        blob: o.blob.clone(),
                        guest: format!("/in/{dep}/{i}/{}", o.path),
                    });
                }
            }
        }
        t
    }

    fn deadline(&self) -> Option<u64> {
        match self.spec.kind {
            JobKind::Batch => self.spec.deadline_ms.map(|d| self.submitted_ms + d),
            JobKind::Service => None,
        }
    }

    /// Ends the job: records how, kills what still runs (the teardown does), stops.
    fn end(&mut self, cx: &mut Context, state: JobState) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.events.push(JobEvent::Ended(state));
        cx.teardown();
    }

    /// Ends the job if it was stopped or ran past its deadline; true if it has ended.
    fn check_end(&mut self, cx: &mut Context) -> bool {
        if self.stop {
            self.end(cx, JobState::Killed);
        }
        if let Some(why) = self.doomed.take() {
            self.end(cx, JobState::Failed(why));
        }
        if let Some(d) = self.deadline()
            && cx.now_ms() >= d
        {
            self.end(cx, JobState::Failed("it ran past its deadline".into()));
        }
        self.ended
    }

    /// Tells the master what the first slot that could launch now needs. Not for best-effort
    /// groups, which guarantee preemption does not serve, nor for groups with placement
    /// constraints: room made on any agent might not be room they take.
    fn say_waiting(&self, cx: &mut Context) {
        let first = self
            .pending(cx.now_ms())
            .map(|(g, _)| &self.spec.groups[g])
            .find(|g| g.task.qos != Qos::BestEffort && g.constraints.is_empty());
        cx.waiting(first.map(|g| g.task.resources.clone()));
    }

    fn revive(&mut self, cx: &mut Context) {
        if self.suppressed {
            self.suppressed = false;
            cx.revive();
        }
    }

    /// A slot's attempt ended without success: retry it after its backoff, or fail the job.
    fn failed(&mut self, cx: &mut Context, slot: Slot, task: TaskId, status: &TaskStatus) {
        let (group, index) = self.name(slot);
        self.events.push(JobEvent::Failed {
            task,
            group: group.clone(),
            index,
        });
        let n = self
            .progress
            .failures
            .entry((group.clone(), index))
            .or_default();
        *n += 1;
        let n = *n;
        let g = &self.spec.groups[slot.0];
        if self.spec.kind == JobKind::Batch && n > g.retries {
            let why = format!(
                "task {index} of group {group} failed {n} times; the last time {}{}",
                status.state,
                status
                    .message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .or_else(|| status.exit_code.map(|c| format!(" (exit code {c})")))
                    .unwrap_or_default()
            );
            self.end(cx, JobState::Failed(why));
            return;
        }
        let backoff = g
            .backoff_ms
            .saturating_mul(1u64 << (n - 1).min(16))
            .min(MAX_BACKOFF_MS);
        let at = cx.now_ms() + backoff;
        self.retry_at.insert(slot, at);
        cx.wake_at(at);
    }
}

impl Scheduler for JobFramework {
    fn subscribed(&mut self, cx: &mut Context, framework: FrameworkId, _role: &str) {
        if self.progress.framework != Some(framework) {
            self.progress.framework = Some(framework);
            self.events.push(JobEvent::Framework(framework));
        }
        // The tasks a previous instance launched: their state, live or ended.
        let known: Vec<TaskId> = self.live.keys().copied().collect();
        if !known.is_empty() {
            cx.reconcile(known);
        }
        if let Some(d) = self.deadline() {
            cx.wake_at(d);
        }
    }

    fn offers(&mut self, cx: &mut Context, offers: Vec<OfferInfo>) {
        if self.check_end(cx) {
            cx.decline(offers.iter().map(|o| o.id).collect(), None);
            cx.waiting(None);
            return;
        }
        let now = cx.now_ms();
        let pending: Vec<Slot> = self.pending(now).collect();
        if pending.is_empty() {
            cx.decline(offers.iter().map(|o| o.id).collect(), None);
            cx.waiting(None);
            if self.launching.is_empty() {
                self.suppressed = true;
                cx.suppress();
            }
            return;
        }
        self.first_offers_ms.get_or_insert(now);
        for offer in &offers {
            self.attributes
                .insert(offer.agent.clone(), offer.attributes.clone());
            self.offered_ms.insert(offer.agent.clone(), now);
        }
        self.offered_ms
            .retain(|_, at| now.saturating_sub(*at) <= DOMAIN_MEMORY_MS);
        self.avoid.retain(|_, until| now < *until);
        let (offers, avoided): (Vec<OfferInfo>, Vec<OfferInfo>) = offers
            .into_iter()
            .partition(|o| !self.avoid.contains_key(&o.agent));
        for o in avoided {
            let until = self.avoid.get(&o.agent).copied().unwrap_or(now);
            cx.decline(vec![o.id], Some(until.saturating_sub(now)));
        }
        let mut taken: BTreeSet<Slot> = BTreeSet::new();
        // Where this round's choices go, for the spread of the offers after.
        let mut placed: Vec<(usize, AgentId)> = Vec::new();
        for offer in offers {
            let mut left = offer
                .reserved
                .values()
                .fold(offer.unreserved.clone(), |acc, r| acc.saturating_add(r));
            let mut revocable = offer.revocable.clone();
            let mut chosen: Vec<Slot> = Vec::new();
            // Groups whose task no longer fits this offer: a group's slots all ask the same,
            // so the rest of its thousands of slots are not tried.
            let mut full: BTreeSet<usize> = BTreeSet::new();
            for slot in &pending {
                if taken.contains(slot) || full.contains(&slot.0) {
                    continue;
                }
                let g = &self.spec.groups[slot.0];
                // A service spreads its instances: one per group per offer (each agent's
                // offer), and none where the group already runs more than elsewhere.
                if self.spec.kind == JobKind::Service
                    && g.spread.is_none()
                    && (chosen.iter().any(|s| s.0 == slot.0) || self.crowded(slot.0, &offer.agent))
                {
                    continue;
                }
                // A group spread over fault domains: none where its domain holds more of the
                // group than another does, unless the task has waited long enough for one.
                if let Some(key) = &g.spread
                    && self.domain_crowded(slot.0, key, &offer, &placed, now)
                {
                    let since = *self.waiting_since.entry(*slot).or_insert(now);
                    if now < since + SPREAD_WAIT_MS {
                        cx.wake_at(since + SPREAD_WAIT_MS);
                        continue;
                    }
                }
                let matches = g
                    .constraints
                    .iter()
                    .all(|(k, v)| offer.attributes.get(k) == Some(v));
                if !matches {
                    continue;
                }
                // Delay scheduling: wait a while for an agent that already ran the bundle.
                let warm = self.warm.get(&g.task.bundle);
                if warm.is_some_and(|w| !w.contains(&offer.agent)) {
                    let since = *self.waiting_since.entry(*slot).or_insert(now);
                    let until = since + self.locality_wait_ms;
                    if now < until {
                        cx.wake_at(until);
                        continue;
                    }
                }
                let need = &g.task.resources;
                let pool = if g.task.qos == Qos::BestEffort {
                    &mut revocable
                } else {
                    &mut left
                };
                if !need.fits_in(pool) {
                    full.insert(slot.0);
                    if full.len() == self.spec.groups.len() {
                        break;
                    }
                    continue;
                }
                *pool = pool.saturating_sub(need);
                taken.insert(*slot);
                chosen.push(*slot);
                placed.push((slot.0, offer.agent.clone()));
            }
            if chosen.is_empty() {
                cx.decline(vec![offer.id], Some(DECLINE_MS));
                continue;
            }
            let specs: Vec<TaskSpec> = chosen.iter().map(|s| self.task_for(*s)).collect();
            // A task built from its group and its inputs may still be invalid (too many input
            // files, two of one name): no retry can change that, so the job fails, saying why.
            if let Some((slot, why)) = chosen
                .iter()
                .zip(&specs)
                .find_map(|(s, t)| t.check().err().map(|e| (*s, e)))
            {
                let (group, index) = self.name(slot);
                cx.decline(vec![offer.id], None);
                self.end(
                    cx,
                    JobState::Failed(format!("task {index} of group {group}: {why}")),
                );
                return;
            }
            let request = cx.launch(offer.id, specs);
            for s in &chosen {
                self.busy.insert(*s, None);
                self.slot_gen.insert(*s, self.generation[s.0]);
                self.waiting_since.remove(s);
                let producers = self.producers_of(*s);
                self.reading.insert(*s, producers);
            }
            self.launching.insert(
                request,
                chosen
                    .into_iter()
                    .map(|s| (s, offer.agent.clone()))
                    .collect(),
            );
        }
        self.say_waiting(cx);
    }

    fn launched(&mut self, _cx: &mut Context, request: u64, tasks: &[TaskId]) {
        let Some(slots) = self.launching.remove(&request) else {
            return;
        };
        for ((slot, agent), task) in slots.into_iter().zip(tasks) {
            self.busy.insert(slot, Some(*task));
            self.live.insert(*task, slot);
            self.agent_of.insert(*task, agent);
            let (group, index) = self.name(slot);
            self.progress.tasks.insert(*task, (group.clone(), index));
            self.events.push(JobEvent::Launched {
                task: *task,
                group,
                index,
            });
        }
    }

    fn error(&mut self, cx: &mut Context, request: Option<u64>, _message: &str) {
        // A refused accept launched nothing: its slots wait for other offers.
        if let Some(slots) = request.and_then(|r| self.launching.remove(&r)) {
            for (slot, _) in slots {
                self.busy.remove(&slot);
                self.refused.insert(slot.0);
            }
            self.revive(cx);
        }
    }

    fn update(&mut self, cx: &mut Context, task: TaskId, status: &TaskStatus) {
        let Some(slot) = self.live.get(&task).copied() else {
            // Not one this job knows (launched by an instance that failed before recording
            // it): it must not hold resources.
            if !status.state.is_terminal() {
                cx.kill(task);
            }
            return;
        };
        if status.state == TaskState::Running
            && let Some(agent) = self.agent_of.get(&task)
        {
            let bundle = self.spec.groups[slot.0].task.bundle.clone();
            self.warm.entry(bundle).or_default().insert(agent.clone());
        }
        if !status.state.is_terminal() {
            if self.slot_retired(slot) && self.killing.insert(task) {
                cx.kill(task);
            }
            if status.state == TaskState::Running && self.running.insert(task) {
                // One more instance up: a rolling update may stop the next old one.
                self.roll(cx);
            }
            return;
        }
        self.running.remove(&task);
        self.live.remove(&task);
        self.agent_of.remove(&task);
        self.progress.tasks.remove(&task);
        if self.busy.get(&slot) == Some(&Some(task)) {
            self.busy.remove(&slot);
        }
        let killed_by_us = self.killing.remove(&task);
        if status.reason == Some(Reason::InputLost)
            && !killed_by_us
            && !self.ended
            && let Some(blob) = &status.lost_input
            && self.lose_input(cx, slot, blob)
        {
            // Not this task's fault: what it reads went with the agents that kept it. The
            // slots that made it run again, and this one waits for them (no failure counted).
            self.events.push(JobEvent::Stopped { task });
            if !self.ended {
                let at = cx.now_ms() + self.spec.groups[slot.0].backoff_ms;
                self.retry_at.insert(slot, at);
                cx.wake_at(at);
                self.revive(cx);
            }
            return;
        }
        if matches!(
            status.reason,
            Some(Reason::AgentStopped | Reason::Maintenance)
        ) && !killed_by_us
            && !self.ended
        {
            // Its agent was stopped or drained on purpose (maintenance, a deploy): not the
            // task's fault, so it runs again elsewhere without using up a retry.
            self.events.push(JobEvent::Stopped { task });
            let at = cx.now_ms() + self.spec.groups[slot.0].backoff_ms;
            self.retry_at.insert(slot, at);
            cx.wake_at(at);
            self.revive(cx);
            return;
        }
        let ok = status.state == TaskState::Finished && status.exit_code == Some(0);
        let (group, index) = self.name(slot);
        if self.spec.kind == JobKind::Batch && ok {
            self.events.push(JobEvent::Done {
                task,
                group: group.clone(),
                index,
                outputs: status.outputs.clone(),
            });
            self.progress
                .done
                .insert((group, index), (task, status.outputs.clone()));
            self.done_idx[slot.0].insert(slot.1);
            self.stale.remove(&slot);
            self.reading.remove(&slot);
            if (0..self.spec.groups.len()).all(|g| self.group_done(g)) {
                self.end(cx, JobState::Finished);
                return;
            }
        } else if killed_by_us || self.ended {
            // Scaled down or stopped: nothing to replace.
            self.events.push(JobEvent::Stopped { task });
        } else if ok {
            // A service instance that ended well is started again, after the base backoff.
            self.events.push(JobEvent::Stopped { task });
            let at = cx.now_ms() + self.spec.groups[slot.0].backoff_ms;
            self.retry_at.insert(slot, at);
            cx.wake_at(at);
        } else {
            self.failed(cx, slot, task, status);
        }
        if !self.ended {
            self.revive(cx);
        }
    }

    /// Maintenance ahead: accepted. Nothing more is placed on the agent until the window
    /// ends; a service's instances there move off as a rolling update moves them (at most
    /// `max_unavailable` of a group down at once, each the framework's own kill, using no
    /// retry). A batch task there is left to finish: the drain at the start stops it if it
    /// has not, and it runs again elsewhere without using a retry.
    fn inverse_offer(&mut self, cx: &mut Context, agent: &AgentId, _start_ms: u64, end_ms: u64) {
        cx.answer_inverse_offer(agent.clone(), true);
        self.avoid.insert(agent.clone(), end_ms);
        self.roll(cx);
        cx.wake_at(end_ms);
    }

    fn failure(&mut self, cx: &mut Context, agent: &AgentId) {
        // Its tasks' lost updates follow; it no longer holds any bundle warm, nor the outputs
        // it kept.
        for w in self.warm.values_mut() {
            w.remove(agent);
        }
        self.lose(cx, agent);
        if !self.ended {
            self.revive(cx);
        }
    }

    fn tick(&mut self, cx: &mut Context) {
        if self.check_end(cx) {
            cx.waiting(None);
            return;
        }
        self.say_waiting(cx);
        let now = cx.now_ms();
        // Instances past a service's new count stop.
        let retired: Vec<TaskId> = self
            .live
            .iter()
            .filter(|(t, s)| self.slot_retired(**s) && !self.killing.contains(t))
            .map(|(t, _)| *t)
            .collect();
        for t in retired {
            self.killing.insert(t);
            cx.kill(t);
        }
        self.roll(cx);
        if self.pending(now).next().is_some() {
            self.revive(cx);
        }
        if let Some(next) = self.retry_at.values().filter(|t| **t > now).min() {
            cx.wake_at(*next);
        }
        if let Some(d) = self.deadline() {
            cx.wake_at(d);
        }
    }
}

impl JobFramework {
    /// The outputs `agent` kept are gone: the done slots with an output it kept are stale,
    /// and those a group not yet done reads run again.
    fn lose(&mut self, cx: &mut Context, agent: &AgentId) {
        for g in 0..self.spec.groups.len() {
            for i in self.slots_done_with(g, |o| o.held_by.as_ref() == Some(agent)) {
                self.stale.insert((g, i));
            }
        }
        self.undo_needed_stale(cx);
    }

    /// Undoes the stale slots a group not yet done reads, until nothing changes: a slot undone
    /// needs its own inputs again (A → B → C with A's and B's outputs lost and C not done
    /// undoes B, then A, whenever A's were lost).
    fn undo_needed_stale(&mut self, cx: &mut Context) {
        while !self.ended {
            let still_read: BTreeSet<&str> = (0..self.spec.groups.len())
                .filter(|g| !self.group_done(*g))
                .flat_map(|g| self.spec.groups[g].depends_on.iter().map(String::as_str))
                .collect();
            let lost: Vec<Slot> = self
                .stale
                .iter()
                .filter(|(g, _)| still_read.contains(self.spec.groups[*g].name.as_str()))
                .copied()
                .collect();
            if lost.is_empty() {
                return;
            }
            for slot in lost {
                self.stale.remove(&slot);
                self.undo(cx, slot, "with their agent");
            }
        }
    }

    /// Slot `reader` could not fetch input `blob`. The producer it was given that made the
    /// blob kept it on agents that are gone or no longer have it: every done slot kept there
    /// is taken for lost (as Spark takes a fetch failure for the loss of all of an executor's
    /// outputs), so one report, not one per missing file, has them made again. True when the
    /// reader only waits for producers to run (again): no failure of its own.
    fn lose_input(&mut self, cx: &mut Context, reader: Slot, blob: &BundleHash) -> bool {
        let deps = self.deps_of(reader.0);
        let given = self.reading.remove(&reader).unwrap_or_default();
        let mut holders: BTreeSet<AgentId> = BTreeSet::new();
        let mut undone = false;
        for &g in &deps {
            let name = self.spec.groups[g].name.clone();
            let makers: Vec<u32> = self
                .progress
                .done
                .range((name.clone(), 0)..=(name, u32::MAX))
                .filter(|(_, (task, outputs))| {
                    given.contains(task) && outputs.iter().any(|o| &o.blob == blob)
                })
                .map(|((_, i), _)| *i)
                .collect();
            for i in makers {
                self.stale.insert((g, i));
                undone = true;
                if let Some((_, outputs)) = self.progress.done.get(&self.name((g, i))) {
                    holders.extend(
                        outputs
                            .iter()
                            .filter(|o| &o.blob == blob)
                            .filter_map(|o| o.held_by.clone()),
                    );
                }
            }
        }
        for agent in &holders {
            for g in 0..self.spec.groups.len() {
                for i in self.slots_done_with(g, |o| o.held_by.as_ref() == Some(agent)) {
                    self.stale.insert((g, i));
                }
            }
        }
        self.undo_needed_stale(cx);
        // Made again since (or being made): the reader just waits for it.
        let changed = deps.iter().any(|&g| {
            (0..self.spec.groups[g].count).any(|i| {
                self.progress
                    .done
                    .get(&self.name((g, i)))
                    .is_none_or(|(t, _)| !given.contains(t))
            })
        });
        undone || changed
    }

    /// The groups group `g` reads.
    fn deps_of(&self, g: usize) -> Vec<usize> {
        self.spec.groups[g]
            .depends_on
            .iter()
            .filter_map(|d| self.spec.groups.iter().position(|x| &x.name == d))
            .collect()
    }

    /// The tasks whose outputs slot `slot`'s task is given now.
    fn producers_of(&self, slot: Slot) -> BTreeSet<TaskId> {
        self.deps_of(slot.0)
            .into_iter()
            .flat_map(|g| {
                let name = self.spec.groups[g].name.clone();
                self.progress
                    .done
                    .range((name.clone(), 0)..=(name, u32::MAX))
                    .map(|(_, (t, _))| *t)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Keeps this framework in step with the job's record, which the state machine may have
    /// changed itself (a lost agent's outputs, outputs lost with an agent and needed again
    /// later): a slot done here but not in `done` is not done, with the record's count of
    /// losses. Called by the host between callbacks; the next tick revives offers or ends the
    /// job when a slot was lost too often.
    pub fn sync_done<T>(
        &mut self,
        done: &BTreeMap<(String, u32), T>,
        losses: &BTreeMap<(String, u32), u32>,
    ) {
        let gone: Vec<(String, u32)> = self
            .progress
            .done
            .keys()
            .filter(|k| !done.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.progress.done.remove(&key);
            let n = losses.get(&key).copied().unwrap_or(0);
            self.progress.losses.insert(key.clone(), n);
            if let Some(g) = self.spec.groups.iter().position(|x| x.name == key.0) {
                self.done_idx[g].remove(&key.1);
                self.stale.remove(&(g, key.1));
            }
            if n > MAX_LOSSES && self.doomed.is_none() {
                self.doomed = Some(format!(
                    "the outputs of task {} of group {} were lost {n} times",
                    key.1, key.0
                ));
            }
        }
    }

    /// The groups (by position) that had a launch refused since the last call: the host
    /// checks whether they can still launch at all.
    pub fn take_refused(&mut self) -> BTreeSet<usize> {
        std::mem::take(&mut self.refused)
    }

    /// Whether any of the job's tasks is on its way or running.
    pub fn has_live_tasks(&self) -> bool {
        !self.live.is_empty() || !self.launching.is_empty()
    }

    /// Fails the job at the next tick, for a reason the host found (a refusal no retry can
    /// get past), stopping its running tasks; the first reason given stands.
    pub fn doom(&mut self, why: String) {
        if self.doomed.is_none() && !self.ended {
            self.doomed = Some(why);
        }
    }

    /// The done slots of group `g` with an output that `pick` chooses.
    fn slots_done_with(&self, g: usize, pick: impl Fn(&OutputFile) -> bool) -> Vec<u32> {
        let name = &self.spec.groups[g].name;
        self.progress
            .done
            .range((name.clone(), 0)..=(name.clone(), u32::MAX))
            .filter(|(_, (_, outputs))| outputs.iter().any(&pick))
            .map(|((_, i), _)| *i)
            .collect()
    }

    /// A done slot's outputs are lost: it is pending again, or the job fails when that
    /// happened more than [`MAX_LOSSES`] times.
    fn undo(&mut self, cx: &mut Context, slot: Slot, how: &str) {
        if self.ended {
            return;
        }
        let key = self.name(slot);
        self.progress.done.remove(&key);
        self.done_idx[slot.0].remove(&slot.1);
        let n = self.progress.losses.entry(key.clone()).or_default();
        *n += 1;
        let n = *n;
        self.events.push(JobEvent::Lost {
            group: key.0.clone(),
            index: key.1,
        });
        if n > MAX_LOSSES {
            let why = format!(
                "the outputs of task {} of group {} were lost {n} times (the last time {how})",
                key.1, key.0
            );
            self.end(cx, JobState::Failed(why));
        }
    }

    /// The agents group `g`'s tasks run on, one per task; with `pending`, also those being
    /// launched and those chosen this round (`placed`).
    fn group_agents<'a>(
        &'a self,
        g: usize,
        pending: bool,
        placed: &'a [(usize, AgentId)],
    ) -> impl Iterator<Item = &'a AgentId> {
        let running = self
            .live
            .iter()
            .filter(move |(_, slot)| slot.0 == g)
            .filter_map(|(task, _)| self.agent_of.get(task));
        let launching = self
            .launching
            .values()
            .flatten()
            .filter(move |(slot, _)| pending && slot.0 == g)
            .map(|(_, agent)| agent);
        let chosen = placed
            .iter()
            .filter(move |(pg, _)| pending && *pg == g)
            .map(|(_, a)| a);
        running.chain(launching).chain(chosen)
    }

    /// Whether `agent` runs more instances of group `g` than some other agent that runs it.
    fn crowded(&self, g: usize, agent: &AgentId) -> bool {
        let mut per_agent: BTreeMap<&AgentId, usize> = BTreeMap::new();
        for a in self.group_agents(g, false, &[]) {
            *per_agent.entry(a).or_default() += 1;
        }
        let here = per_agent.get(agent).copied().unwrap_or(0);
        let fewest = per_agent.values().copied().min().unwrap_or(0);
        here > fewest
    }

    /// Whether a task of group `g` on `offer`'s agent would put more of the group in that
    /// agent's fault domain (its attribute `key`; none is a domain of its own) than in the
    /// least used domain known: one an agent offered from lately, or one the group runs in.
    /// The group's tasks count where they run, are being launched, or were chosen this round
    /// (`placed`). While the framework is still learning the domains, one is crowded once it
    /// holds any.
    fn domain_crowded(
        &self,
        g: usize,
        key: &str,
        offer: &OfferInfo,
        placed: &[(usize, AgentId)],
        now: u64,
    ) -> bool {
        let domain = |agent: &AgentId| -> String {
            self.attributes
                .get(agent)
                .and_then(|attrs| attrs.get(key))
                .cloned()
                .unwrap_or_default()
        };
        let mut per: BTreeMap<String, usize> = self
            .offered_ms
            .keys()
            .map(|agent| (domain(agent), 0))
            .collect();
        for agent in self.group_agents(g, true, placed) {
            *per.entry(domain(agent)).or_default() += 1;
        }
        let here = offer.attributes.get(key).cloned().unwrap_or_default();
        let count = per.get(&here).copied().unwrap_or(0);
        let fewest = per.values().copied().min().unwrap_or(0);
        let learning = self
            .first_offers_ms
            .is_none_or(|first| now < first + DOMAIN_DISCOVERY_MS);
        count > fewest || (learning && count > 0)
    }

    /// Past its group's count (a service scaled down).
    fn slot_retired(&self, slot: Slot) -> bool {
        slot.1 >= self.spec.groups[slot.0].count
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(test)]
mod sim;
