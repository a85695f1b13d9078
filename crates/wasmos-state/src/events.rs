//! The event stream's source: what `apply` records of each change while a caller asks it to
//! (`apply_recording`), and `EventLog`, the bounded history every master keeps of them by raft
//! index. Pure: no clock, no I/O; the raft state machine stamps indexes and holds the log.

use std::collections::VecDeque;

use wasmos_proto::{Change, Event, TaskId};

use crate::{ClusterState, Command, CommandResult};

/// The events of the command being applied, while someone records them. Never stored, never
/// copied (a clone records nothing), no part of equality.
#[derive(Debug, Default)]
pub(crate) struct Recording(Option<Vec<Event>>);

impl Clone for Recording {
    fn clone(&self) -> Self {
        Recording(None)
    }
}

impl PartialEq for Recording {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Recording {}

impl ClusterState {
    /// `apply`, appending the events of what it changed to `out` (their index 0: the caller
    /// knows the raft index, the state does not).
    pub fn apply_recording(&mut self, cmd: Command, out: &mut Vec<Event>) -> CommandResult {
        self.recording.0 = Some(std::mem::take(out));
        let result = self.apply(cmd);
        *out = self.recording.0.take().unwrap_or_default();
        result
    }

    pub(crate) fn recording(&self) -> bool {
        self.recording.0.is_some()
    }

    pub(crate) fn emit(&mut self, owner: Option<String>, change: Change) {
        if let Some(events) = &mut self.recording.0 {
            events.push(Event {
                index: 0,
                owner,
                change,
            });
        }
    }

    /// A task's event, as it stands now.
    pub(crate) fn emit_task(&mut self, task: TaskId) {
        if !self.recording() {
            return;
        }
        let Some(t) = self.tasks.get(&task) else {
            return;
        };
        let change = Change::Task {
            id: task,
            state: t.status.state,
            reason: t.status.reason,
            message: t.status.message.clone(),
            agent: t.agent.clone(),
            role: t.spec.role.clone(),
            framework: t.framework,
            progress: t.progress.clone(),
        };
        let owner = Some(t.owner.clone());
        self.emit(owner, change);
    }
}

/// How many events a master keeps for readers who resume (about 200 bytes each).
pub const EVENT_HISTORY: usize = 65_536;

/// The recent events by raft index, and which indexes they cover.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    /// The first index whose events are all here: earlier ones were dropped (or came before
    /// this log started, or inside a snapshot this node installed).
    first: u64,
    /// The index after the last applied entry: where a reader caught up waits.
    next: u64,
    capacity: usize,
}

/// What a reader gets: events from its index on, the index to ask from next, and whether some
/// it asked for are gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventRead {
    pub events: Vec<Event>,
    pub next: u64,
    /// Set when the reader asked for an index before the oldest held: that oldest index (the
    /// read starts there).
    pub lost_until: Option<u64>,
    /// The read stopped before the last applied entry (it had `max` events): read again.
    pub more: bool,
}

impl EventLog {
    /// An empty log whose history starts after `applied` (the last index applied already).
    pub fn new(applied: u64, capacity: usize) -> Self {
        EventLog {
            events: VecDeque::new(),
            first: applied + 1,
            next: applied + 1,
            capacity: capacity.max(1),
        }
    }

    /// The events of entry `index` (applied in order). Indexes that make no event still move
    /// `next`.
    pub fn push(&mut self, index: u64, events: Vec<Event>) {
        if index < self.next {
            // Applied again (never happens with openraft); keep the first telling.
            return;
        }
        for mut e in events {
            e.index = index;
            self.events.push_back(e);
        }
        self.next = index + 1;
        while self.events.len() > self.capacity {
            if let Some(old) = self.events.pop_front() {
                // Part of that entry's events may remain: the whole index counts as gone.
                self.first = self.first.max(old.index + 1);
            }
        }
    }

    /// A snapshot replaced the state up to `applied`: the events it covered are unknown here.
    pub fn reset(&mut self, applied: u64) {
        *self = EventLog::new(applied, self.capacity);
    }

    /// The index after the last applied entry.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The oldest index whose events are all held.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Events at `from` or later that `keep` lets through, whole entries only, stopping after
    /// the entry that brings them to `max` (so a reader resuming at `next` misses nothing and
    /// sees nothing twice).
    pub fn read(&self, from: u64, max: usize, keep: impl Fn(&Event) -> bool) -> EventRead {
        // Index 0 is before any entry: asking from it asks for everything, lost or not.
        let lost_until = (from.max(1) < self.first).then_some(self.first);
        let from = from.max(self.first);
        let start = self.events.partition_point(|e| e.index < from);
        let mut out = Vec::new();
        let mut next = self.next.max(from);
        // Scanning stops after this many events whatever passes `keep`, so a reader whose
        // filter lets little through does not walk the whole history in one read (readers
        // hold the state's lock while they read).
        let scan = max.saturating_mul(SCAN_FACTOR).max(max);
        for (scanned, e) in self.events.range(start..).enumerate() {
            let full = out.len() >= max || scanned >= scan;
            if full && scanned > 0 && self.events[start + scanned - 1].index != e.index {
                next = e.index;
                break;
            }
            if keep(e) {
                out.push(e.clone());
            }
        }
        EventRead {
            events: out,
            next,
            lost_until,
            more: next < self.next,
        }
    }
}

/// How many events a read scans per event it may return (see [`EventLog::read`]).
pub const SCAN_FACTOR: usize = 16;

/// What a command will change, taken before it is applied (it is moved into `apply`), told
/// once its result says it did.
pub(crate) enum Note {
    Agent(wasmos_proto::AgentId, wasmos_proto::AgentChange),
    NewFramework {
        name: String,
        role: String,
        owner: String,
    },
    FrameworkRemoved(wasmos_proto::FrameworkId),
    NewJob {
        name: String,
        owner: String,
    },
    Job(wasmos_proto::JobId, wasmos_proto::JobChange),
    Role(String, wasmos_proto::RoleChange),
}

impl ClusterState {
    pub(crate) fn note(&self, cmd: &Command) -> Option<Note> {
        use wasmos_proto::{AgentChange, JobChange, JobEvent, RoleChange};
        if !self.recording() {
            return None;
        }
        Some(match cmd {
            Command::RegisterAgent { id, .. } => Note::Agent(id.clone(), AgentChange::Registered),
            Command::AgentLost { agent, .. } => Note::Agent(agent.clone(), AgentChange::Lost),
            // A window's start drains its agent, its end undrains it.
            Command::DrainAgent { agent, drain: on }
            | Command::MaintenanceWindowAt { agent, begun: on } => Note::Agent(
                agent.clone(),
                if *on {
                    AgentChange::Draining
                } else {
                    AgentChange::Undrained
                },
            ),
            Command::ResizeAgent { agent, .. } => Note::Agent(agent.clone(), AgentChange::Resized),
            // One event per command: the first agent stands for all of them.
            Command::ScheduleMaintenance { agents, .. } => match agents.first() {
                Some(a) => Note::Agent(a.clone(), AgentChange::MaintenanceScheduled),
                None => return None,
            },
            Command::RegisterFramework {
                name, role, owner, ..
            } => Note::NewFramework {
                name: name.clone(),
                role: role.to_string(),
                owner: owner.clone(),
            },
            Command::RemoveFramework { framework, .. } => Note::FrameworkRemoved(*framework),
            Command::SubmitJob { spec, owner, .. } => Note::NewJob {
                name: spec.name.clone(),
                owner: owner.clone(),
            },
            Command::Job { job, event, .. } => {
                let progress = |group: &str, index: u32, what: &str, task: Option<TaskId>| {
                    JobChange::Progress {
                        group: group.to_string(),
                        index,
                        what: what.to_string(),
                        task,
                    }
                };
                let slot = |task: &TaskId| {
                    self.jobs
                        .get(job)
                        .and_then(|j| j.tasks.get(task))
                        .cloned()
                        .unwrap_or_default()
                };
                let change = match event {
                    // The job's own framework: a detail of how it runs, not news.
                    JobEvent::Framework(_) => return None,
                    JobEvent::Launched { task, group, index } => {
                        progress(group, *index, "launched", Some(*task))
                    }
                    JobEvent::Done {
                        task, group, index, ..
                    } => progress(group, *index, "done", Some(*task)),
                    // Told once per task, as the record counts it.
                    JobEvent::Failed { task, .. } if slot(task).0.is_empty() => return None,
                    JobEvent::Failed { task, group, index } => {
                        progress(group, *index, "failed", Some(*task))
                    }
                    // Only what the record counts: a task it no longer tracks, a slot not done.
                    JobEvent::Stopped { task } if slot(task).0.is_empty() => return None,
                    JobEvent::Stopped { task } => {
                        let (group, index) = slot(task);
                        progress(&group, index, "stopped", Some(*task))
                    }
                    JobEvent::Lost { group, index }
                        if !self
                            .jobs
                            .get(job)
                            .is_some_and(|j| j.done.contains_key(&(group.clone(), *index))) =>
                    {
                        return None;
                    }
                    JobEvent::Lost { group, index } => progress(group, *index, "lost", None),
                    JobEvent::Scaled { group, count } => JobChange::Scaled {
                        group: group.clone(),
                        count: *count,
                    },
                    JobEvent::Updated { group } => JobChange::Updated {
                        group: group.name.clone(),
                    },
                    JobEvent::Ended(state) => JobChange::Ended(state.clone()),
                };
                Note::Job(*job, change)
            }
            Command::SetRole { role, .. } => Note::Role(role.to_string(), RoleChange::Set),
            Command::RemoveReservation { agent, role } => Note::Role(
                role.to_string(),
                RoleChange::ReservationRemoved {
                    agent: agent.clone(),
                },
            ),
            _ => return None,
        })
    }

    /// Tells what `note` foresaw, if the command's result says it happened.
    pub(crate) fn noted(&mut self, note: Note, result: &CommandResult) {
        if matches!(
            result,
            CommandResult::Rejected(_) | CommandResult::Duplicate
        ) {
            return;
        }
        let (owner, change) = match note {
            Note::Agent(id, change) => (None, Change::Agent { id, change }),
            Note::NewFramework { name, role, owner } => {
                let CommandResult::Framework(id) = result else {
                    return;
                };
                let change = wasmos_proto::FrameworkChange::Registered;
                (
                    Some(owner),
                    Change::Framework {
                        id: *id,
                        name,
                        role,
                        change,
                    },
                )
            }
            Note::FrameworkRemoved(id) => {
                let Some(f) = self.frameworks.get(&id) else {
                    return;
                };
                let change = Change::Framework {
                    id,
                    name: f.name.clone(),
                    role: f.role.to_string(),
                    change: wasmos_proto::FrameworkChange::Removed,
                };
                (Some(f.owner.clone()), change)
            }
            Note::NewJob { name, owner } => {
                let CommandResult::Job(id) = result else {
                    return;
                };
                let change = wasmos_proto::JobChange::Submitted;
                (
                    Some(owner),
                    Change::Job {
                        id: *id,
                        name,
                        change,
                    },
                )
            }
            Note::Job(id, change) => {
                let Some(j) = self.jobs.get(&id) else {
                    return;
                };
                let name = j.spec.name.clone();
                (Some(j.owner.clone()), Change::Job { id, name, change })
            }
            Note::Role(role, change) => (None, Change::Role { role, change }),
        };
        self.emit(owner, change);
    }
}
