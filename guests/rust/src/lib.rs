//! The `wasmos:task` interfaces (`wit/task.wit`) for Rust tasks, one call each: who the task
//! is, how far it got, what it leaves behind and whether it is asked to stop. WASI itself comes
//! from Rust's standard library (build for `wasm32-wasip2`); a task that calls none of these
//! imports none of them.
//!
//! ```no_run
//! let me = wasmos_task::context();
//! wasmos_task::progress(0.5, "half way");
//! wasmos_task::put_result("answer", b"42").expect("a small, well-named result");
//! if wasmos_task::wait_for_cancel(std::time::Duration::from_secs(1)) {
//!     // asked to stop: wasmos_task::grace() left to finish
//! }
//! # let _ = me;
//! ```

use std::time::Duration;

wit_bindgen::generate!({
    path: "../../wit/task.wit",
    world: "wasmos:task/imports",
});

use wasmos::task::{cancellation, context as ctx, progress as prog, results};

/// The task's place in the cluster, fixed for its whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Its id (`t-N` in the CLI).
    pub task_id: u64,
    /// The batch job or service it belongs to, if any.
    pub job_id: Option<u64>,
    /// Its group within that job.
    pub group: Option<String>,
    /// Its index within the group.
    pub index: Option<u32>,
    /// 1 for the first run of its slot, 2 for the first retry...
    pub attempt: u32,
    /// The role it runs under.
    pub role: String,
    /// Wall-clock milliseconds since the Unix epoch at which its timeout ends it.
    pub deadline_ms: u64,
}

/// Who the task is.
pub fn context() -> Context {
    let i = ctx::get();
    Context {
        task_id: i.task_id,
        job_id: i.job_id,
        group: i.group,
        index: i.index,
        attempt: i.attempt,
        role: i.role,
        deadline_ms: i.deadline_ms,
    }
}

/// Reports progress: `fraction` from 0.0 to 1.0 and a short message. Cheap: the agent keeps
/// the latest and sends it to the masters at most every 5 seconds, and the last one at the end.
pub fn progress(fraction: f32, message: &str) {
    prog::report(fraction, message);
}

/// Why a result was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultError {
    /// Names are 1 to 128 letters, digits, `-`, `_` or `.`.
    InvalidName,
    /// A value over 16 KiB, or all of the task's over 64 KiB.
    TooLarge,
    /// More than 64 results.
    TooMany,
}

impl std::fmt::Display for ResultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResultError::InvalidName => {
                "result names are 1 to 128 letters, digits, '-', '_' or '.'"
            }
            ResultError::TooLarge => "a result is at most 16 KiB, and all of a task's 64 KiB",
            ResultError::TooMany => "a task publishes at most 64 results",
        })
    }
}

impl std::error::Error for ResultError {}

/// Publishes a small value under `name` (replacing an earlier one), kept with the task when
/// it ends and shown by `wasmos task show`.
pub fn put_result(name: &str, value: impl AsRef<[u8]>) -> Result<(), ResultError> {
    results::put_value(name, value.as_ref()).map_err(|e| match e {
        results::ErrorCode::InvalidName => ResultError::InvalidName,
        results::ErrorCode::TooLarge => ResultError::TooLarge,
        results::ErrorCode::TooMany => ResultError::TooMany,
    })
}

/// Whether the task has been asked to stop (a kill, a preemption, its job's end).
pub fn cancel_requested() -> bool {
    cancellation::requested()
}

/// Waits until the task is asked to stop or `timeout` passes; whether it was asked.
pub fn wait_for_cancel(timeout: Duration) -> bool {
    cancellation::wait(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

/// How long the task has, once asked to stop, before it is stopped.
pub fn grace() -> Duration {
    Duration::from_millis(cancellation::grace_ms())
}
