//! The leader's job host: runs every running job's framework (`wasmos-jobs`, on the SDK's
//! sans-IO driver) in-process. Each subscribes like any framework, with the job owner's
//! identity and role, and talks to the offer cycle over the same channels a QUIC framework
//! session uses. What a framework must not forget it records in the job's replicated record
//! before its calls (acknowledgements included) go out; a master that becomes leader starts
//! the jobs' frameworks again from those records, re-attaching to their framework ids.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use wasmos_jobs::{JobFramework, Progress};
use wasmos_net::Identity;
use wasmos_proto::{FrameworkCall, JobEvent, JobId, JobInfo, JobState};
use wasmos_sdk::{Action, Driver, Options};
use wasmos_state::{Command, CommandResult, JobRecord};

use crate::frameworks::{FrameworkSession, Front, SubscribeError, Subscription};
use crate::offers::Event;
use crate::{Shared, now_ms};

/// How often the host looks for new, stopped or rescaled jobs.
const POLL: Duration = Duration::from_millis(300);

/// Most framework events handled before their job events are recorded, and most job events
/// in one raft entry.
const MAX_EVENTS_PER_WRITE: usize = 1024;
/// About the most bytes of job events in one raft entry (see `wasmos_state::approx_bytes`).
const MAX_BYTES_PER_WRITE: usize = wasmos_raft::MAX_ENTRY_BYTES / 2;

/// Most jobs in one page of `job list`.
const JOB_PAGE: usize = 1000;

/// The job host while this master leads (started and stopped by [`crate::leadership`]):
/// stopping it stops every job's framework with it.
pub(crate) async fn lead(shared: Arc<Shared>) {
    let mut runners = Runners::default();
    loop {
        runners.0.retain(|_, h| !h.is_finished());
        let (running, ended): (Vec<JobId>, Vec<wasmos_proto::FrameworkId>) = shared.read(|s| {
            let running = s
                .jobs
                .values()
                .filter(|j| !j.state.is_terminal())
                .map(|j| j.id)
                .collect();
            // Jobs that ended (killed, past a deadline) while no runner was there to tear
            // their framework down (a leader change, a runner that failed): their tasks must
            // not run on until the failover timeout.
            let ended = s
                .jobs
                .values()
                .filter(|j| j.state.is_terminal() && !runners.0.contains_key(&j.id))
                .filter_map(|j| j.framework)
                .filter(|fw| s.live_framework(*fw).is_ok())
                .collect();
            (running, ended)
        });
        for fw in ended {
            shared.offer_event(Event::RemoveFramework(fw));
        }
        for job in running {
            runners
                .0
                .entry(job)
                .or_insert_with(|| tokio::spawn(runner(shared.clone(), job)));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shared.jobs_changed.notified() => {}
        }
    }
}

/// The running jobs' frameworks; they stop when the host does.
#[derive(Default)]
struct Runners(BTreeMap<JobId, JoinHandle<()>>);

impl Drop for Runners {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

fn record(shared: &Shared, job: JobId) -> Option<JobRecord> {
    shared.read(|s| s.jobs.get(&job).cloned())
}

/// Why no retry can launch a group among `refused` (positions in the job's groups): its
/// role requires signed bundles and the group's bundle carries no signature by a usable
/// required key (the key was revoked after the job was accepted). Other refusals (a stale
/// offer, a full agent) pass with time, and the job goes on retrying them.
fn unlaunchable(
    shared: &Shared,
    job: &JobRecord,
    refused: &std::collections::BTreeSet<usize>,
) -> Option<String> {
    if refused.is_empty() {
        return None;
    }
    shared.read(|s| {
        refused
            .iter()
            .filter_map(|g| job.spec.groups.get(*g))
            .find_map(|g| {
                s.check_signed(&g.task.bundle, job.role.as_str())
                    .err()
                    .map(|e| format!("group {} cannot launch: {e}", g.name))
            })
    })
}

/// Writes a job's events, in order, in as few raft entries as their size allows; false if
/// they could not be recorded (this runner must stop). Not one write per event: a job of
/// 10,000 tasks records 20,000 events, and awaiting an fsync for each held the whole job to a
/// few hundred tasks/s. Not one entry for any burst either: `Done` events carry output lists,
/// and an entry must stay small enough to replicate.
async fn persist(shared: &Shared, job: JobId, events: Vec<JobEvent>) -> bool {
    let now = now_ms();
    let mut cmds = events.into_iter().map(|event| Command::Job {
        job,
        event,
        now_ms: now,
    });
    let mut next = cmds.next();
    while let Some(first) = next.take() {
        let mut bytes = wasmos_state::approx_bytes(&first);
        let mut chunk = vec![first];
        for cmd in cmds.by_ref() {
            let size = wasmos_state::approx_bytes(&cmd);
            if chunk.len() >= MAX_EVENTS_PER_WRITE || bytes + size > MAX_BYTES_PER_WRITE {
                next = Some(cmd);
                break;
            }
            bytes += size;
            chunk.push(cmd);
        }
        let cmd = if chunk.len() == 1 {
            chunk.remove(0)
        } else {
            Command::Batch(chunk)
        };
        let results = match shared.write(cmd).await {
            Ok(CommandResult::Batch(results)) => results,
            Ok(other) => vec![other],
            Err(e) => {
                tracing::warn!(%job, "cannot record job progress: {e}");
                return false;
            }
        };
        for r in results {
            if let CommandResult::Rejected(why) = r {
                tracing::debug!(%job, "job event not recorded: {why}");
            }
        }
    }
    true
}

/// Runs one job's framework until it ends or this master stops leading.
async fn runner(shared: Arc<Shared>, job: JobId) {
    let Some(rec) = record(&shared, job) else {
        return;
    };
    let who = match Identity::from_uri(&rec.owner) {
        Ok(w) => w,
        Err(e) => {
            let why = format!("its owner {} is not an identity: {e}", rec.owner);
            persist(&shared, job, vec![JobEvent::Ended(JobState::Failed(why))]).await;
            return;
        }
    };
    let revocable = JobFramework::wants_revocable(&rec.spec);
    let placed = shared.read(|s| {
        rec.tasks
            .keys()
            .filter_map(|t| s.tasks.get(t))
            .filter_map(|t| {
                let runs = t.status.state == wasmos_proto::TaskState::Running;
                Some((t.id, (t.agent.clone()?, runs)))
            })
            .collect()
    });
    let progress = Progress {
        framework: rec.framework,
        tasks: rec.tasks.clone(),
        done: rec.done.clone(),
        failures: rec.failures.clone(),
        losses: rec.losses.clone(),
        placed,
    };
    let fw = JobFramework::new(rec.spec.clone(), rec.submitted_ms, progress);
    let options = Options {
        role: Some(rec.role.to_string()),
        revocable,
        framework: rec.framework,
        // A job outlives any failover; it ends by itself or by its owner.
        failover_timeout_ms: Some(3_600_000),
        ..Options::new(format!("{job} ({})", rec.spec.name))
    };
    let mut driver = Driver::new(fw, options);
    // The job's framework session, once subscribed: when the offer cycle lets go of the
    // framework, its events end and this runner ends.
    let mut session: Option<FrameworkSession> = None;
    let mut poll = tokio::time::interval(POLL);
    // The groups as the framework has them: a change of count scales, any other change of a
    // group (`service update`) rolls its instances over to the new definition.
    let mut known: BTreeMap<String, wasmos_proto::GroupSpec> = rec
        .spec
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.clone()))
        .collect();
    let mut actions = driver.connected(now_ms());
    'run: loop {
        // Recorded before any call of the same callback goes out.
        let events = driver.scheduler_mut().take_events();
        if !persist(&shared, job, events).await {
            break;
        }
        for action in std::mem::take(&mut actions) {
            match action {
                Action::Send(call @ FrameworkCall::Subscribe { .. }) => {
                    let Ok(sub) = Subscription::from_call(call) else {
                        break 'run;
                    };
                    if session.is_some() {
                        break 'run;
                    }
                    match FrameworkSession::open(&shared, &who, sub, Front::JobHost, None).await {
                        Ok(s) => session = Some(s),
                        // Not recorded for now (no quorum, a failover): the next runner tries
                        // again.
                        Err(e @ SubscribeError::NotRecorded(_)) => {
                            tracing::info!(%job, "job framework not subscribed yet: {e}");
                            break 'run;
                        }
                        Err(SubscribeError::Refused(why)) => {
                            tracing::warn!(%job, "job framework refused: {why}");
                            let ended = JobEvent::Ended(JobState::Failed(why));
                            persist(&shared, job, vec![ended]).await;
                            break 'run;
                        }
                    }
                }
                Action::Send(call) => {
                    if let Some(s) = &session {
                        // The job host's calls are not charged: this cannot fail.
                        let _ = s.call(call).await;
                    }
                }
                // Leadership moved (the new leader runs the job) or the job ended.
                Action::Reconnect { .. } | Action::Finished | Action::Failed(_) => break 'run,
            }
        }
        let event = async {
            match session.as_mut() {
                Some(s) => s.next().await,
                // Not subscribed yet: only the poll moves things on.
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            ev = event => match ev {
                Some(ev) => {
                    // Everything already queued is handled before anything is recorded, so
                    // a burst of updates costs one write.
                    let mut next = driver.event(ev, now_ms());
                    for _ in 1..MAX_EVENTS_PER_WRITE {
                        match session.as_mut().and_then(FrameworkSession::try_next) {
                            Some(ev) => next.extend(driver.event(ev, now_ms())),
                            None => break,
                        }
                    }
                    next
                }
                None => break,
            },
            _ = poll.tick() => {
                // The owner may have stopped or rescaled the job.
                match record(&shared, job) {
                    Some(r) if r.state.is_terminal() => driver.scheduler_mut().stop(),
                    Some(r) => {
                        for g in &r.spec.groups {
                            if known.get(&g.name) != Some(g) {
                                known.insert(g.name.clone(), g.clone());
                                driver.scheduler_mut().update_group(g.clone());
                            }
                        }
                        // The state machine undoes slots whose kept outputs are gone.
                        driver.scheduler_mut().sync_done(&r.done, &r.losses);
                        let refused = driver.scheduler_mut().take_refused();
                        if let Some(why) = unlaunchable(&shared, &r, &refused) {
                            // A service keeps the instances it has running (failing it would
                            // stop them) and goes on asking; a batch job cannot finish.
                            let serving = r.spec.kind == wasmos_proto::JobKind::Service
                                && driver.scheduler_mut().has_live_tasks();
                            if serving {
                                tracing::warn!(%job, "service cannot launch more instances: {why}");
                            } else {
                                driver.scheduler_mut().doom(why);
                            }
                        }
                    }
                    None => break,
                }
                driver.tick(now_ms())
            }
        };
        actions = next;
    }
    // Dropping the session tells the offer cycle the job's framework is gone from here.
    drop(session);
}

/// The job requests of the client API.
pub(crate) async fn answer(
    shared: &Shared,
    who: &Identity,
    req: wasmos_proto::ClientRequest,
) -> wasmos_proto::ClientResponse {
    use wasmos_proto::{ClientRequest, ClientResponse, ErrorKind};
    let error = crate::replies::error;
    // Users of a tenant see its jobs; only a job's owner (or an operator) changes it.
    let mine = |r: &JobRecord| crate::policy::may_see(who, &r.owner);
    let changeable = |r: &JobRecord| crate::policy::may_change(who, &r.owner);
    match req {
        ClientRequest::SubmitJob { mut spec } => {
            if let Err(why) = spec.check() {
                return error(ErrorKind::InvalidRequest, why);
            }
            let role = match crate::policy::resolve_role(who, spec.role.as_deref()) {
                Ok(r) => r,
                Err(why) => return error(ErrorKind::InvalidRequest, why),
            };
            spec.role = Some(role.to_string());
            for g in &mut spec.groups {
                if let Err(e) = crate::policy::validate_spec(&g.task)
                    .and_then(|()| crate::policy::seal(&shared.secrets, &mut g.task))
                {
                    return error(
                        ErrorKind::InvalidRequest,
                        format!("group `{}`: {e}", g.name),
                    );
                }
                g.task.role = Some(role.to_string());
            }
            let cmd = Command::SubmitJob {
                spec,
                owner: who.to_uri(),
                role,
                now_ms: now_ms(),
            };
            match shared.write(cmd).await {
                Ok(CommandResult::Job(id)) => {
                    shared.jobs_changed.notify_one();
                    ClientResponse::JobSubmitted { id }
                }
                Ok(CommandResult::Rejected(why)) => crate::replies::rejected(why),
                Ok(other) => error(ErrorKind::Internal, format!("{other:?}")),
                Err(e) => crate::replies::raft_error(shared, e),
            }
        }
        ClientRequest::ListJobs { after } => {
            let start = after.map_or(0, |j| j.0.saturating_add(1));
            let page: Vec<JobInfo> = shared.read(|s| {
                s.jobs
                    .range(JobId(start)..)
                    .map(|(_, j)| j)
                    .filter(|j| mine(j))
                    .take(JOB_PAGE)
                    .map(|j| info(s, j, false))
                    .collect()
            });
            match crate::replies::fit_page(page) {
                Ok(page) => ClientResponse::Jobs(page),
                Err(first) => error(
                    ErrorKind::TooLarge,
                    format!(
                        "job {} alone is too large to list; see it with `job status`",
                        first.map_or(JobId(0), |j| j.id)
                    ),
                ),
            }
        }
        ClientRequest::GetJob { id } => {
            match shared.read(|s| {
                s.jobs
                    .get(&id)
                    .filter(|j| mine(j))
                    .map(|j| info(s, j, true))
            }) {
                Some(j) => ClientResponse::Jobs(vec![j]),
                None => error(ErrorKind::NotFound, format!("no job {id} of yours")),
            }
        }
        ClientRequest::KillJob { id }
        | ClientRequest::ScaleJob { id, .. }
        | ClientRequest::UpdateService { id, .. }
            if !shared.read(|s| s.jobs.get(&id).is_some_and(mine)) =>
        {
            error(ErrorKind::NotFound, format!("no job {id} of yours"))
        }
        ClientRequest::KillJob { id }
        | ClientRequest::ScaleJob { id, .. }
        | ClientRequest::UpdateService { id, .. }
            if !shared.read(|s| s.jobs.get(&id).is_some_and(changeable)) =>
        {
            error(
                ErrorKind::InvalidRequest,
                format!("job {id} is another user's; only its owner or an operator may change it"),
            )
        }
        ClientRequest::KillJob { id } => {
            let event = JobEvent::Ended(JobState::Killed);
            write_event(shared, id, event).await
        }
        ClientRequest::ScaleJob { id, group, count } => {
            let service = shared.read(|s| {
                s.jobs
                    .get(&id)
                    .is_some_and(|j| j.spec.kind == wasmos_proto::JobKind::Service)
            });
            if !service {
                return error(
                    ErrorKind::InvalidRequest,
                    format!("{id} is a batch job; only services scale"),
                );
            }
            write_event(shared, id, JobEvent::Scaled { group, count }).await
        }
        ClientRequest::UpdateService { id, mut group } => {
            // The job's role, as its submission had: the caller cannot move it.
            let Some(role) = shared.read(|s| s.jobs.get(&id).map(|j| j.role.to_string())) else {
                return error(ErrorKind::NotFound, format!("no job {id} of yours"));
            };
            if let Err(e) = crate::policy::validate_spec(&group.task)
                .and_then(|()| crate::policy::seal(&shared.secrets, &mut group.task))
            {
                return error(
                    ErrorKind::InvalidRequest,
                    format!("group `{}`: {e}", group.name),
                );
            }
            group.task.role = Some(role);
            write_event(shared, id, JobEvent::Updated { group }).await
        }
        other => error(
            ErrorKind::InvalidRequest,
            format!("not a job request: {other:?}"),
        ),
    }
}

async fn write_event(shared: &Shared, job: JobId, event: JobEvent) -> wasmos_proto::ClientResponse {
    use wasmos_proto::ClientResponse;
    let cmd = Command::Job {
        job,
        event,
        now_ms: now_ms(),
    };
    match shared.write(cmd).await {
        Ok(CommandResult::Rejected(why)) => crate::replies::rejected(why),
        Ok(_) => ClientResponse::Ok,
        Err(e) => crate::replies::raft_error(shared, e),
    }
}

/// A job's progress, group by group, from its record and its tasks' states; with its results
/// (the last group's outputs) when `results` (not in listings, where they could be large).
fn info(s: &wasmos_state::ClusterState, j: &JobRecord, results: bool) -> JobInfo {
    use wasmos_proto::{GroupProgress, JobKind};
    let groups = j
        .spec
        .groups
        .iter()
        .map(|g| {
            let live: Vec<_> = j
                .tasks
                .iter()
                .filter(|(_, (group, _))| group == &g.name)
                .filter_map(|(t, _)| s.tasks.get(t))
                .filter(|t| !t.status.state.is_terminal())
                .collect();
            // What its running tasks said of their progress (`wasmos:task/progress`).
            let reported: u64 = live
                .iter()
                .filter_map(|t| t.progress.as_ref())
                .map(|p| u64::from(p.permille))
                .sum();
            let live = live.len() as u32;
            let done = match j.spec.kind {
                JobKind::Batch => {
                    j.done.keys().filter(|(group, _)| group == &g.name).count() as u32
                }
                JobKind::Service => 0,
            };
            let ended = j.state.is_terminal();
            let running = if ended { 0 } else { live };
            GroupProgress {
                name: g.name.clone(),
                count: g.count,
                // A stopped service waits for nothing; a failed batch job's unrun tasks show.
                pending: match (j.spec.kind, ended) {
                    (JobKind::Service, true) => 0,
                    _ => g.count.saturating_sub(done + running),
                },
                running,
                done,
                // A batch group: its done slots whole and its running ones as far as they
                // said, over its count. A service: how far its running tasks said they are.
                progress_permille: match j.spec.kind {
                    JobKind::Batch => ((u64::from(done) * 1000 + reported)
                        / u64::from(g.count.max(1)))
                    .min(1000) as u32,
                    JobKind::Service => (reported / u64::from(running.max(1))).min(1000) as u32,
                },
                failed: of_group(&j.failures, &g.name),
                lost: of_group(&j.losses, &g.name),
                depends_on: g.depends_on.clone(),
            }
        })
        .collect();
    let results = j
        .spec
        .groups
        .last()
        .filter(|_| results)
        .map(|g| {
            j.done
                .range((g.name.clone(), 0)..=(g.name.clone(), u32::MAX))
                .map(|((_, i), (t, outputs))| (*i, *t, outputs.clone()))
                .collect()
        })
        .unwrap_or_default();
    JobInfo {
        id: j.id,
        name: j.spec.name.clone(),
        kind: j.spec.kind,
        owner: j.owner.clone(),
        state: j.state.clone(),
        submitted_ms: j.submitted_ms,
        ended_ms: j.ended_ms,
        groups,
        results,
    }
}

/// The sum of a per-slot count over the slots of one group.
fn of_group(counts: &BTreeMap<(String, u32), u32>, group: &str) -> u32 {
    counts
        .range((group.to_string(), 0)..=(group.to_string(), u32::MAX))
        .map(|(_, n)| *n)
        .sum()
}
