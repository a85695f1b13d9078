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
//! // A child task running this same bundle with other arguments, and what it published.
//! let child = wasmos_task::Child::start(&wasmos_task::ChildSpec::new().arg("leaf")).unwrap();
//! let outcome = child.wait().unwrap();
//! let sum = outcome.result("sum");
//! # let _ = sum;
//! ```

use std::time::Duration;

wit_bindgen::generate!({
    path: "../../wit/task.wit",
    world: "wasmos:task/imports",
});

use wasmos::task::{cancellation, context as ctx, progress as prog, results, spawn as sp};

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
    /// More than 64 values, or more than 64 files.
    TooMany,
    /// A file's path is not absolute, is `/` alone, has an empty, `.` or `..` part, a `\` or a
    /// NUL, or is over 1024 bytes.
    InvalidPath,
}

impl std::fmt::Display for ResultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResultError::InvalidName => {
                "result names are 1 to 128 letters, digits, '-', '_' or '.'"
            }
            ResultError::TooLarge => "a result is at most 16 KiB, and all of a task's 64 KiB",
            ResultError::TooMany => "a task publishes at most 64 values and 64 files",
            ResultError::InvalidPath => {
                "a result file is an absolute path of at most 1024 bytes, without '.' or '..'"
            }
        })
    }
}

impl std::error::Error for ResultError {}

/// Publishes a small value under `name` (replacing an earlier one), kept with the task when
/// it ends and shown by `wasmos task show`.
pub fn put_result(name: &str, value: impl AsRef<[u8]>) -> Result<(), ResultError> {
    results::put_value(name, value.as_ref()).map_err(ResultError::from)
}

/// Publishes the file at `path` (absolute, in the task's writable filesystem) under `name`,
/// replacing an earlier file of that name. It is read when the task ends: if the task exits
/// 0 its agent stores it as a data blob of the task's tenant (`wasmos blob get`), listed by
/// `wasmos task show` and in a parent's [`Outcome::files`]. A file then missing, reached
/// through a link, or over the cluster's blob size ends the task in error.
///
/// ```no_run
/// std::fs::write("/model.bin", b"weights").unwrap();
/// wasmos_task::put_file("model", "/model.bin").expect("an absolute path and a good name");
/// ```
pub fn put_file(name: &str, path: &str) -> Result<(), ResultError> {
    results::put_file(name, path).map_err(ResultError::from)
}

impl From<results::ErrorCode> for ResultError {
    fn from(e: results::ErrorCode) -> Self {
        match e {
            results::ErrorCode::InvalidName => ResultError::InvalidName,
            results::ErrorCode::TooLarge => ResultError::TooLarge,
            results::ErrorCode::TooMany => ResultError::TooMany,
            results::ErrorCode::InvalidPath => ResultError::InvalidPath,
        }
    }
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

/// What to start as a child task: the parent's own bundle, resources and timeout unless set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildSpec {
    bundle: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cpu_millis: u64,
    mem_bytes: u64,
    disk_bytes: u64,
    timeout_ms: u64,
    retries: u32,
}

impl ChildSpec {
    fn to_wit(&self) -> sp::ChildSpec {
        sp::ChildSpec {
            bundle: self.bundle.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cpu_millis: self.cpu_millis,
            mem_bytes: self.mem_bytes,
            disk_bytes: self.disk_bytes,
            timeout_ms: self.timeout_ms,
            retries: self.retries,
        }
    }

    /// A child that runs the parent's bundle, with no arguments or environment.
    pub fn new() -> ChildSpec {
        ChildSpec::default()
    }

    /// Runs another bundle (its sha256, as `wasmos bundle push` prints it).
    pub fn bundle(mut self, sha256: &str) -> ChildSpec {
        self.bundle = Some(sha256.to_string());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> ChildSpec {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> ChildSpec {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Millicores (1000 = one core).
    pub fn cpu_millis(mut self, millis: u64) -> ChildSpec {
        self.cpu_millis = millis;
        self
    }

    pub fn mem_bytes(mut self, bytes: u64) -> ChildSpec {
        self.mem_bytes = bytes;
        self
    }

    /// Bytes of scratch disk it may write.
    pub fn disk_bytes(mut self, bytes: u64) -> ChildSpec {
        self.disk_bytes = bytes;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> ChildSpec {
        self.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// How many more times it is started if it fails by itself (at most 5).
    pub fn retries(mut self, retries: u32) -> ChildSpec {
        self.retries = retries;
        self
    }
}

/// Why a child could not be started or waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnError {
    /// The task has 1024 children that have not ended.
    TooManyChildren,
    /// The child would be this deep; spawned tasks nest at most 8 deep.
    TooDeep(u32),
    /// The cluster refused it, for this reason.
    Refused(String),
    /// No child of this task has that handle.
    UnknownChild,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::TooManyChildren => {
                f.write_str("the task already has 1024 children that have not ended")
            }
            SpawnError::TooDeep(d) => {
                write!(
                    f,
                    "a child would be {d} levels deep (spawned tasks nest at most 8 deep)"
                )
            }
            SpawnError::Refused(why) => write!(f, "refused: {why}"),
            SpawnError::UnknownChild => f.write_str("no such child"),
        }
    }
}

impl std::error::Error for SpawnError {}

impl From<sp::Error> for SpawnError {
    fn from(e: sp::Error) -> Self {
        match e {
            sp::Error::TooManyChildren => SpawnError::TooManyChildren,
            sp::Error::TooDeep(d) => SpawnError::TooDeep(d),
            sp::Error::Refused(why) => SpawnError::Refused(why),
            sp::Error::UnknownChild => SpawnError::UnknownChild,
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndState {
    Finished,
    Failed,
    Killed,
    Lost,
    Error,
}

/// A child's end, retries included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its last run's task id.
    pub task_id: u64,
    pub state: EndState,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// 1 plus the retries used.
    pub attempts: u32,
    pub results: Vec<(String, Vec<u8>)>,
    /// The files it published by name ([`put_file`]).
    pub files: Vec<ResultFile>,
}

/// A file a child published by name, as stored on the masters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFile {
    pub name: String,
    /// Its content's sha256 in hex: what `wasmos blob get` takes.
    pub sha256: String,
    pub size: u64,
}

impl Outcome {
    /// Whether it ran to its end and exited 0.
    pub fn succeeded(&self) -> bool {
        self.state == EndState::Finished && self.exit_code == Some(0)
    }

    /// The value of its result `name`, if it published one.
    pub fn result(&self, name: &str) -> Option<&[u8]> {
        self.results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Its file result `name`, if it published one.
    pub fn file(&self, name: &str) -> Option<&ResultFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// A child task this task started. Dropping the handle does not stop the child; the child
/// ends with its parent at the latest.
#[derive(Debug, PartialEq, Eq)]
pub struct Child(u32);

impl Child {
    /// Starts a child, once the cluster has taken it (it then waits to be scheduled like any
    /// other task).
    pub fn start(spec: &ChildSpec) -> Result<Child, SpawnError> {
        Ok(Child(sp::start(&spec.to_wit())?))
    }

    /// Starts several children at once: their requests travel together, so a wide fan-out
    /// does not wait for each answer before asking the next. Each one's child or refusal, in
    /// order.
    pub fn start_all(specs: &[ChildSpec]) -> Vec<Result<Child, SpawnError>> {
        let specs: Vec<sp::ChildSpec> = specs.iter().map(ChildSpec::to_wit).collect();
        sp::start_all(&specs)
            .into_iter()
            .map(|r| r.map(Child).map_err(SpawnError::from))
            .collect()
    }

    /// Waits until it has ended (its retries too). The outcome is told once: the handle is
    /// spent after (waiting again is [`SpawnError::UnknownChild`]).
    pub fn wait(&self) -> Result<Outcome, SpawnError> {
        let o = sp::wait(self.0)?;
        Ok(Outcome {
            task_id: o.task_id,
            state: match o.state {
                sp::EndState::Finished => EndState::Finished,
                sp::EndState::Failed => EndState::Failed,
                sp::EndState::Killed => EndState::Killed,
                sp::EndState::Lost => EndState::Lost,
                sp::EndState::Error => EndState::Error,
            },
            exit_code: o.exit_code,
            message: o.message,
            attempts: o.attempts,
            results: o.results,
            files: o
                .files
                .into_iter()
                .map(|f| ResultFile {
                    name: f.name,
                    sha256: f.sha256,
                    size: f.size,
                })
                .collect(),
        })
    }

    /// Asks it to stop; [`Child::wait`] still tells how it ended.
    pub fn cancel(&self) -> Result<(), SpawnError> {
        Ok(sp::cancel(self.0)?)
    }
}
