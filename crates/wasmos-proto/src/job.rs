//! Jobs run by the master's built-in frameworks: a batch job is a DAG of task groups (map →
//! reduce) run to completion; a service keeps N instances of each group running. The CLI
//! turns a job file into a [`JobSpec`] (bundles and input files uploaded, named by hash).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{InputFile, OutputFile, TaskId, TaskSpec};

/// A job, numbered by the replicated state (`job-4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl FromStr for JobId {
    type Err = crate::IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("job-").unwrap_or(s);
        digits
            .parse::<u64>()
            .map(JobId)
            .map_err(|_| crate::IdError::Job(s.to_string()))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Runs each group's tasks once to success (with retries), in dependency order.
    #[default]
    Batch,
    /// Keeps each group's instances running: restarts those that end, replaces those lost.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub kind: JobKind,
    /// The role its tasks count against; `None` is the submitter's default.
    pub role: Option<String>,
    /// A batch job not done this long after submission fails, its tasks killed.
    pub deadline_ms: Option<u64>,
    pub groups: Vec<GroupSpec>,
}

/// Tasks alike but for their index: `count` copies of `task`, where `{index}` in the
/// arguments and environment becomes the task's index (0-based).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub name: String,
    pub count: u32,
    pub task: TaskSpec,
    /// Groups that must be done first; their tasks' outputs become this group's read-only
    /// inputs at `/in/<group>/<index>/<path>`.
    pub depends_on: Vec<String>,
    /// Only dependency outputs whose path matches this (after `{index}` becomes the task's
    /// index) are given, e.g. `part-{index}` for a reducer's partition.
    pub input_pattern: Option<String>,
    /// Input files of each task by index (the job file's inputs, spread over the tasks).
    pub inputs: Vec<Vec<InputFile>>,
    /// Agent attributes a task's agent must have, e.g. `os = "linux"`.
    pub constraints: BTreeMap<String, String>,
    /// How many times a failed task is run again before the job fails.
    pub retries: u32,
    /// The wait before the first retry; doubled for each further one.
    pub backoff_ms: u64,
    /// An agent attribute whose values are fault domains (`zone`, `region`): the group's
    /// tasks are spread evenly over them, so losing one domain leaves the others' running.
    #[serde(default)]
    pub spread: Option<String>,
    /// A service group's rolling updates (`wasmos service update`) stop at most this many of
    /// its instances at a time; 0 counts as 1.
    #[serde(default)]
    pub max_unavailable: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Finished,
    Failed(String),
    /// Stopped by its owner (`job kill`, `service stop`).
    Killed,
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, JobState::Running)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Running => f.write_str("running"),
            JobState::Finished => f.write_str("finished"),
            JobState::Failed(why) => write!(f, "failed: {why}"),
            JobState::Killed => f.write_str("killed"),
        }
    }
}

/// A group's progress, as `job status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupProgress {
    pub name: String,
    pub count: u32,
    pub pending: u32,
    pub running: u32,
    pub done: u32,
    /// How far the group is, in thousandths, counting what its running tasks report through
    /// `wasmos:task/progress` (a done slot counts whole).
    #[serde(default)]
    pub progress_permille: u32,
    /// Failed attempts so far (retried or not).
    pub failed: u32,
    /// Times a done task's kept outputs were lost with their agent, so it ran again.
    #[serde(default)]
    pub lost: u32,
    /// The groups it reads from: the job's graph, for the web UI.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// What `job status` and `job list` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub name: String,
    pub kind: JobKind,
    pub owner: String,
    pub state: JobState,
    pub submitted_ms: u64,
    pub ended_ms: Option<u64>,
    pub groups: Vec<GroupProgress>,
    /// The outputs of the tasks of the last group, by index: a batch job's results.
    pub results: Vec<(u32, TaskId, Vec<OutputFile>)>,
}

/// The largest count a group may ask for.
pub const MAX_GROUP_COUNT: u32 = 10_000;

/// A batch job's record of done slots: the task that did each and its outputs.
pub type DoneSlots = BTreeMap<(String, u32), (TaskId, Vec<OutputFile>)>;

impl JobSpec {
    /// Undoes, in a batch job's record, every done slot with a kept output that is `gone`
    /// while a group that reads it is not done, counting a loss for each; repeated until
    /// nothing changes, since undoing a slot makes its own inputs needed again. The one rule
    /// the state machine applies and the jobs simulation models the master with.
    pub fn undo_lost_kept(
        &self,
        done: &mut DoneSlots,
        losses: &mut BTreeMap<(String, u32), u32>,
        gone: impl Fn(&crate::BundleHash) -> bool,
    ) {
        loop {
            let still_read: std::collections::BTreeSet<&str> = self
                .groups
                .iter()
                .filter(|g| (0..g.count).any(|i| !done.contains_key(&(g.name.clone(), i))))
                .flat_map(|g| g.depends_on.iter().map(String::as_str))
                .collect();
            let lost: Vec<(String, u32)> = done
                .iter()
                .filter(|((g, _), (_, outputs))| {
                    still_read.contains(g.as_str())
                        && outputs.iter().any(|o| o.held_by.is_some() && gone(&o.blob))
                })
                .map(|(k, _)| k.clone())
                .collect();
            if lost.is_empty() {
                return;
            }
            for slot in lost {
                done.remove(&slot);
                *losses.entry(slot).or_default() += 1;
            }
        }
    }

    /// Checks what the master can check: names, counts, the dependency graph (known groups,
    /// no cycles), each group's task template.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 100 {
            return Err("a job name must be 1 to 100 bytes".into());
        }
        if self.groups.is_empty() {
            return Err("a job needs at least one group".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &self.groups {
            let ok = !g.name.is_empty()
                && g.name.len() <= 63
                && g.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !ok {
                return Err(format!(
                    "group name `{}` must be 1-63 letters, digits, '-' or '_'",
                    g.name
                ));
            }
            if !names.insert(g.name.as_str()) {
                return Err(format!("two groups are named `{}`", g.name));
            }
            if g.count == 0 || g.count > MAX_GROUP_COUNT {
                return Err(format!(
                    "group `{}`: count must be 1 to {MAX_GROUP_COUNT}",
                    g.name
                ));
            }
            if g.inputs.len() > g.count as usize {
                return Err(format!("group `{}`: more input lists than tasks", g.name));
            }
            g.task
                .check()
                .and_then(|()| crate::task::check_constraints(&g.constraints))
                .map_err(|e| format!("group `{}`: {e}", g.name))?;
            // An attribute key, bounded like a constraint's: the masters keep it.
            if let Some(key) = &g.spread
                && (key.is_empty() || key.len() > crate::task::MAX_ATTRIBUTE_BYTES)
            {
                return Err(format!(
                    "group `{}`: spread names an agent attribute of 1 to {} bytes",
                    g.name,
                    crate::task::MAX_ATTRIBUTE_BYTES
                ));
            }
            // The framework places by the group's constraints and the master holds every
            // launch to its task's: they must be the same.
            if !g.task.constraints.is_empty() && g.task.constraints != g.constraints {
                return Err(format!(
                    "group `{}`: set the group's constraints, not its task's",
                    g.name
                ));
            }
            if self.kind == JobKind::Service && !g.depends_on.is_empty() {
                return Err(format!(
                    "group `{}`: a service's groups run side by side; depends_on is for batch jobs",
                    g.name
                ));
            }
        }
        for g in &self.groups {
            for d in &g.depends_on {
                if !names.contains(d.as_str()) {
                    return Err(format!("group `{}` depends on unknown group `{d}`", g.name));
                }
            }
        }
        // Kahn's algorithm: every group must become ready.
        let mut done = std::collections::BTreeSet::new();
        while done.len() < self.groups.len() {
            let before = done.len();
            for g in &self.groups {
                if !done.contains(g.name.as_str())
                    && g.depends_on.iter().all(|d| done.contains(d.as_str()))
                {
                    done.insert(g.name.as_str());
                }
            }
            if done.len() == before {
                return Err("the groups' depends_on form a cycle".into());
            }
        }
        Ok(())
    }
}

/// What a job's framework records as it goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEvent {
    Framework(crate::FrameworkId),
    Launched {
        task: TaskId,
        group: String,
        index: u32,
    },
    Done {
        task: TaskId,
        group: String,
        index: u32,
        outputs: Vec<OutputFile>,
    },
    /// An attempt failed (it may be retried).
    Failed {
        task: TaskId,
        group: String,
        index: u32,
    },
    /// A task the framework stopped itself (scaled down, job stopped): no failure.
    Stopped {
        task: TaskId,
    },
    /// A done slot's outputs were kept on an agent that is gone (or no longer holds them)
    /// while a later group still needs them: the slot is not done any more and runs again.
    Lost {
        group: String,
        index: u32,
    },
    /// A service group's new instance count.
    Scaled {
        group: String,
        count: u32,
    },
    /// A service group's new definition (`wasmos service update`): its instances are replaced
    /// by ones of the new task, at most `max_unavailable` at a time.
    Updated {
        group: Box<GroupSpec>,
    },
    Ended(JobState),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_spread_is_an_attribute_key_of_bounded_length() {
        let group = |spread: Option<String>| GroupSpec {
            name: "web".into(),
            count: 1,
            task: TaskSpec::new("t.wasm", crate::BundleHash::from_digest(&[1; 32])),
            depends_on: Vec::new(),
            input_pattern: None,
            inputs: Vec::new(),
            constraints: BTreeMap::new(),
            retries: 0,
            backoff_ms: 0,
            spread,
            max_unavailable: 0,
        };
        let job = |spread: Option<String>| JobSpec {
            name: "j".into(),
            kind: JobKind::Service,
            role: None,
            deadline_ms: None,
            groups: vec![group(spread)],
        };
        assert_eq!(job(None).check(), Ok(()));
        assert_eq!(job(Some("zone".into())).check(), Ok(()));
        for bad in [
            String::new(),
            "z".repeat(crate::task::MAX_ATTRIBUTE_BYTES + 1),
        ] {
            let err = job(Some(bad)).check().unwrap_err();
            assert!(err.contains("spread"), "{err}");
        }
    }
}
