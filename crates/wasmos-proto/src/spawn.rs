//! Tasks that start tasks (`wasmos:task/spawn`): what a parent asks for, how a child's end is
//! told back to it, and the limits on both, which the agent, the masters and the replicated
//! state all check.

use serde::{Deserialize, Serialize};

use crate::{BundleHash, TaskId, TaskResult, TaskState};

/// Most children one task has that have not ended, at any one time.
pub const MAX_LIVE_CHILDREN: u32 = 1_024;
/// How deep spawned tasks nest: a task a client, job or framework started is at depth 0, its
/// children at 1, theirs at 2... A child deeper than this is refused.
pub const MAX_SPAWN_DEPTH: u32 = 8;
/// Most times a failed child is started again.
pub const MAX_CHILD_RETRIES: u32 = 5;
/// Most bytes of arguments and environment one child is given (the default role ceiling on a
/// spec): checked by the agent before a request leaves it, and by the masters.
pub const MAX_CHILD_SPEC_BYTES: usize = 256 << 10;
/// Most arguments plus environment variables one child is given.
pub const MAX_CHILD_SPEC_ITEMS: usize = 4096;

/// Where a spawned task comes from: set by the masters from the parent's record, never by a
/// client or framework (the masters clear it on their tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub parent: TaskId,
    /// 1 for a child of a task nobody spawned, 2 for a grandchild...
    pub depth: u32,
}

/// What a task asks to start as its child. The child runs under the parent's owner and role,
/// with the parent's QoS and priority; anything not given here comes from the parent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// The bundle it runs (one the parent's tenant may use); none runs the parent's own.
    pub bundle: Option<BundleHash>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// 0 takes the parent's.
    pub cpu_millis: u64,
    /// 0 takes the parent's.
    pub mem_bytes: u64,
    /// 0 takes the parent's.
    pub disk_bytes: u64,
    /// 0 takes the parent's.
    pub timeout_ms: u64,
    /// How many more times it is started when it fails (a trap, a limit, a non-zero exit, its
    /// agent lost), at most [`MAX_CHILD_RETRIES`].
    pub retries: u32,
}

/// Why a child was not started, as `wasmos:task/spawn` tells the parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SpawnRefusal {
    #[error("the task already has {MAX_LIVE_CHILDREN} children that have not ended")]
    TooManyChildren,
    #[error("a child would be {0} levels deep; spawned tasks nest at most {MAX_SPAWN_DEPTH} deep")]
    TooDeep(u32),
    /// The spec itself (an unknown bundle, resources over the role's ceilings...).
    #[error("{0}")]
    Refused(String),
    /// Not now (no leader, a failover): the agent tries again.
    #[error("the masters cannot take it now: {0}")]
    Unavailable(String),
}

/// How a child ended, as the masters tell its parent's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildEnd {
    pub task: TaskId,
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub results: Vec<TaskResult>,
    /// The files it published by name (`put-file`).
    pub files: Vec<crate::ResultFile>,
}

impl ChildEnd {
    /// Whether starting it again could end otherwise: it failed by itself (a trap, a limit, a
    /// non-zero exit) or its agent was lost; not when it was killed or could not start.
    pub fn worth_retrying(&self) -> bool {
        match self.state {
            TaskState::Failed | TaskState::Lost => true,
            TaskState::Finished => self.exit_code != Some(0),
            _ => false,
        }
    }
}

/// How a child ended, retries included, as its parent learns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOutcome {
    pub end: ChildEnd,
    /// 1 plus the retries used.
    pub attempts: u32,
}

/// Checks what a guest asked for before it leaves the agent (the masters check it again).
pub fn check_child_spec(spec: &ChildSpec) -> Result<(), SpawnRefusal> {
    let bytes: usize = spec.args.iter().map(String::len).sum::<usize>()
        + spec
            .env
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if bytes > MAX_CHILD_SPEC_BYTES || spec.args.len() + spec.env.len() > MAX_CHILD_SPEC_ITEMS {
        return Err(SpawnRefusal::Refused(format!(
            "a child's arguments and environment are at most {MAX_CHILD_SPEC_ITEMS} items and {MAX_CHILD_SPEC_BYTES} bytes"
        )));
    }
    if spec.retries > MAX_CHILD_RETRIES {
        return Err(SpawnRefusal::Refused(format!(
            "a child is retried at most {MAX_CHILD_RETRIES} times, not {}",
            spec.retries
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn end(state: TaskState, exit_code: Option<i32>) -> ChildEnd {
        ChildEnd {
            task: TaskId(1),
            state,
            exit_code,
            message: None,
            results: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn only_failures_of_the_child_itself_are_retried() {
        assert!(end(TaskState::Failed, None).worth_retrying());
        assert!(end(TaskState::Lost, None).worth_retrying());
        assert!(end(TaskState::Finished, Some(3)).worth_retrying());
        assert!(!end(TaskState::Finished, Some(0)).worth_retrying());
        assert!(!end(TaskState::Killed, None).worth_retrying());
        assert!(!end(TaskState::Error, None).worth_retrying());
    }

    #[test]
    fn retries_are_bounded() {
        let mut spec = ChildSpec {
            retries: MAX_CHILD_RETRIES,
            ..ChildSpec::default()
        };
        assert!(check_child_spec(&spec).is_ok());
        spec.retries += 1;
        assert!(check_child_spec(&spec).is_err());
        let huge = ChildSpec {
            args: vec!["x".repeat(MAX_CHILD_SPEC_BYTES + 1)],
            ..ChildSpec::default()
        };
        assert!(check_child_spec(&huge).is_err());
        let many = ChildSpec {
            env: vec![(String::new(), String::new()); MAX_CHILD_SPEC_ITEMS + 1],
            ..ChildSpec::default()
        };
        assert!(check_child_spec(&many).is_err());
    }
}
