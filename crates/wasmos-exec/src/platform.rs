//! The `wasmos:task` interfaces (`wit/task.wit`) as the runner provides them to a task: its
//! context, its progress and results (kept here for the agent to report), and being asked to
//! stop. Each task's [`TaskPlatform`] is shared between its run and its agent.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use wasmos_proto::{ChildOutcome, ChildSpec, ResultError, SpawnRefusal, TaskProgress, TaskResult};

wasmtime::component::bindgen!({
    path: "../../wit/task.wit",
    world: "wasmos:task/imports",
    imports: {
        "wasmos:task/cancellation.wait": async,
        "wasmos:task/spawn.start": async,
        "wasmos:task/spawn.start-all": async,
        "wasmos:task/spawn.wait": async,
    },
});

use wasmos::task::{cancellation, context, progress, results, spawn};

/// The task's place in the cluster, as `wasmos:task/context` tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskContext {
    pub task_id: u64,
    pub job_id: Option<u64>,
    pub group: Option<String>,
    pub index: Option<u32>,
    pub attempt: u32,
    pub role: String,
}

/// A future a [`Spawner`] answers with.
pub type SpawnFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Starts a task's children and tells how they end (`wasmos:task/spawn`): the agent's side,
/// for one parent task. Handles are the parent's own numbers for its children.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts children, their requests sent together; each one's handle once the cluster has
    /// taken it, or why not, in order.
    fn start(&self, specs: Vec<ChildSpec>) -> SpawnFuture<Vec<Result<u32, SpawnRefusal>>>;
    /// How child `handle` ended, once it has (none for an unknown handle).
    fn wait(&self, handle: u32) -> SpawnFuture<Option<ChildOutcome>>;
    /// Asks child `handle` to stop; false for an unknown handle.
    fn cancel(&self, handle: u32) -> bool;
}

/// What one task and its agent share through the platform interfaces.
#[derive(Debug)]
pub struct TaskPlatform {
    context: TaskContext,
    grace: Duration,
    told: Mutex<Told>,
    cancel: watch::Sender<bool>,
    /// Set once instantiated: a task killed before that has nothing to finish.
    running: std::sync::atomic::AtomicBool,
    /// Wall-clock milliseconds since the Unix epoch at which its timeout ends it: set when its
    /// run starts (the timeout counts from there, not from its launch).
    deadline_ms: std::sync::atomic::AtomicU64,
    /// Starts its children, when its agent lets it.
    spawner: std::sync::OnceLock<Arc<dyn Spawner>>,
}

#[derive(Debug, Default)]
struct Told {
    /// The latest report, and whether the agent has taken it since.
    progress: Option<(TaskProgress, bool)>,
    results: Vec<TaskResult>,
    /// Files published by name, as (name, guest path): read by the agent once the task ends.
    files: Vec<(String, String)>,
}

impl TaskPlatform {
    /// A task's platform; `grace` is how long it has to stop once asked, if it imports
    /// `cancellation`.
    pub fn new(context: TaskContext, grace: Duration) -> Arc<TaskPlatform> {
        Arc::new(TaskPlatform {
            context,
            grace,
            told: Mutex::default(),
            cancel: watch::Sender::new(false),
            running: Default::default(),
            deadline_ms: Default::default(),
            spawner: Default::default(),
        })
    }

    /// What starts the task's children, if its agent lets it start any.
    pub fn spawner(&self) -> Option<Arc<dyn Spawner>> {
        self.spawner.get().cloned()
    }

    /// Lets the task start children through `spawner` (set once; later calls change nothing).
    pub fn set_spawner(&self, spawner: Arc<dyn Spawner>) {
        let _ = self.spawner.set(spawner);
    }

    pub(crate) fn set_deadline(&self, timeout: Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let at = u64::try_from((now + timeout).as_millis()).unwrap_or(u64::MAX);
        self.deadline_ms
            .store(at, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn mark_running(&self) {
        self.running
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn told(&self) -> MutexGuard<'_, Told> {
        self.told
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The progress reported since the last call, if any.
    pub fn take_progress(&self) -> Option<TaskProgress> {
        match &mut self.told().progress {
            Some((p, taken @ false)) => {
                *taken = true;
                Some(p.clone())
            }
            _ => None,
        }
    }

    /// Makes the latest report new again, for a master that may not have recorded it (a new
    /// session, a new leader).
    pub fn resend_progress(&self) {
        if let Some((_, taken)) = &mut self.told().progress {
            *taken = false;
        }
    }

    /// Records progress reported elsewhere (by the task's run in an executor process), as if
    /// the task had reported it here.
    pub fn record_progress(&self, progress: TaskProgress) {
        self.told().progress = Some((progress, false));
    }

    /// Records the files the task published elsewhere (in an executor process).
    pub fn record_files(&self, files: Vec<(String, String)>) {
        self.told().files = files;
    }

    /// The latest progress reported, taken or not.
    pub fn latest_progress(&self) -> Option<TaskProgress> {
        self.told().progress.as_ref().map(|(p, _)| p.clone())
    }

    /// What the task published so far.
    pub fn results(&self) -> Vec<TaskResult> {
        self.told().results.clone()
    }

    /// The files the task published by name, as (name, guest path), in the order named.
    pub fn files(&self) -> Vec<(String, String)> {
        self.told().files.clone()
    }

    /// The task's place in the cluster, as it was given.
    pub fn context(&self) -> &TaskContext {
        &self.context
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Asks the task to stop (it learns it through `cancellation`).
    pub(crate) fn request_cancel(&self) {
        self.cancel.send_replace(true);
    }

    pub fn cancel_requested(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// Two platforms are equal when they give a task the same context and grace (requests compare
/// by value; what a run reports is not part of its request).
impl PartialEq for TaskPlatform {
    fn eq(&self, other: &Self) -> bool {
        self.context == other.context && self.grace == other.grace
    }
}

impl Eq for TaskPlatform {}

impl Default for TaskPlatform {
    fn default() -> Self {
        TaskPlatform {
            context: TaskContext::default(),
            grace: Duration::ZERO,
            told: Mutex::default(),
            cancel: watch::Sender::new(false),
            running: Default::default(),
            deadline_ms: Default::default(),
            spawner: Default::default(),
        }
    }
}

/// Whether a component imports the interface `name` of `wasmos:task` (any 0.1 version).
pub(crate) fn imports_interface(imports: &[String], name: &str) -> bool {
    let prefix = format!("{}/{name}@", wasmos_proto::TASK_PACKAGE);
    imports.iter().any(|i| i.starts_with(&prefix))
}

/// The store data's side of the interfaces.
pub(crate) trait HasPlatform {
    fn platform(&self) -> &TaskPlatform;
}

/// Adds the `wasmos:task` interfaces to `linker`.
pub(crate) fn add_to_linker<T: HasPlatform + Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    Imports::add_to_linker::<T, HostData<T>>(linker, |t| Host(t))
}

/// The interfaces' host, over the store's data.
pub(crate) struct Host<'a, T>(&'a mut T);

/// Names [`Host`] as what the bindings' functions get from the store.
struct HostData<T>(std::marker::PhantomData<T>);

impl<T: 'static> wasmtime::component::HasData for HostData<T> {
    type Data<'a> = Host<'a, T>;
}

impl<T: HasPlatform> context::Host for Host<'_, T> {
    fn get(&mut self) -> context::Info {
        let p = self.0.platform();
        let c = &p.context;
        context::Info {
            task_id: c.task_id,
            job_id: c.job_id,
            group: c.group.clone(),
            index: c.index,
            attempt: c.attempt,
            role: c.role.clone(),
            deadline_ms: p.deadline_ms.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl<T: HasPlatform> progress::Host for Host<'_, T> {
    fn report(&mut self, fraction: f32, message: String) {
        let p = TaskProgress::from_guest(fraction, &message);
        let mut told = self.0.platform().told();
        // The same report again is nothing new to send.
        if told.progress.as_ref().is_none_or(|(old, _)| *old != p) {
            told.progress = Some((p, false));
        }
    }
}

impl<T: HasPlatform> results::Host for Host<'_, T> {
    fn put_value(&mut self, name: String, value: Vec<u8>) -> Result<(), results::ErrorCode> {
        let mut told = self.0.platform().told();
        wasmos_proto::publish_result(&mut told.results, &name, value).map_err(result_error)
    }

    fn put_file(&mut self, name: String, path: String) -> Result<(), results::ErrorCode> {
        let mut told = self.0.platform().told();
        wasmos_proto::publish_file(&mut told.files, &name, &path).map_err(result_error)
    }
}

fn result_error(e: ResultError) -> results::ErrorCode {
    match e {
        ResultError::InvalidName => results::ErrorCode::InvalidName,
        ResultError::TooLarge => results::ErrorCode::TooLarge,
        ResultError::TooMany => results::ErrorCode::TooMany,
        ResultError::InvalidPath => results::ErrorCode::InvalidPath,
    }
}

impl<T: HasPlatform + Send> cancellation::Host for Host<'_, T> {
    fn requested(&mut self) -> bool {
        self.0.platform().cancel_requested()
    }

    async fn wait(&mut self, timeout_ms: u64) -> bool {
        let mut rx = self.0.platform().cancel.subscribe();
        let asked = rx.wait_for(|asked| *asked);
        matches!(
            tokio::time::timeout(Duration::from_millis(timeout_ms), asked).await,
            Ok(Ok(_))
        )
    }

    fn grace_ms(&mut self) -> u64 {
        u64::try_from(self.0.platform().grace.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<SpawnRefusal> for spawn::Error {
    fn from(r: SpawnRefusal) -> Self {
        match r {
            SpawnRefusal::TooManyChildren => spawn::Error::TooManyChildren,
            SpawnRefusal::TooDeep(depth) => spawn::Error::TooDeep(depth),
            other => spawn::Error::Refused(other.to_string()),
        }
    }
}

impl<T: HasPlatform + Send> spawn::Host for Host<'_, T> {
    async fn start(&mut self, spec: spawn::ChildSpec) -> Result<u32, spawn::Error> {
        let mut started = self.start_all(vec![spec]).await;
        started
            .pop()
            .unwrap_or_else(|| Err(spawn::Error::Refused("nothing was started".into())))
    }

    async fn start_all(&mut self, specs: Vec<spawn::ChildSpec>) -> Vec<Result<u32, spawn::Error>> {
        let Some(spawner) = self.0.platform().spawner.get().cloned() else {
            let why = "this agent starts no child tasks (it runs tasks alone)";
            return specs
                .iter()
                .map(|_| Err(spawn::Error::Refused(why.into())))
                .collect();
        };
        // Checked here, so only well-formed requests leave; the answers keep their places.
        let mut answers: Vec<Option<Result<u32, spawn::Error>>> = Vec::with_capacity(specs.len());
        let mut asked = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            if i >= wasmos_proto::MAX_LIVE_CHILDREN as usize {
                answers.push(Some(Err(spawn::Error::TooManyChildren)));
                continue;
            }
            match child_spec(spec) {
                Ok(child) => {
                    answers.push(None);
                    asked.push(child);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut started = spawner.start(asked).await.into_iter();
        answers
            .into_iter()
            .map(|a| match a {
                Some(answer) => answer,
                None => match started.next() {
                    Some(s) => s.map_err(spawn::Error::from),
                    None => Err(spawn::Error::Refused("no answer".into())),
                },
            })
            .collect()
    }

    async fn wait(&mut self, child: u32) -> Result<spawn::Outcome, spawn::Error> {
        let spawner = self.0.platform().spawner.get().cloned();
        let outcome = match spawner {
            Some(s) => s.wait(child).await,
            None => None,
        };
        let ChildOutcome { end, attempts } = outcome.ok_or(spawn::Error::UnknownChild)?;
        use wasmos_proto::TaskState as S;
        Ok(spawn::Outcome {
            task_id: end.task.0,
            state: match end.state {
                S::Finished => spawn::EndState::Finished,
                S::Failed => spawn::EndState::Failed,
                S::Killed => spawn::EndState::Killed,
                S::Lost => spawn::EndState::Lost,
                _ => spawn::EndState::Error,
            },
            exit_code: end.exit_code,
            message: end.message,
            attempts,
            results: end.results.into_iter().map(|r| (r.name, r.value)).collect(),
            files: end
                .files
                .into_iter()
                .map(|f| spawn::ResultFile {
                    name: f.name,
                    sha256: f.blob.to_string(),
                    size: f.size,
                })
                .collect(),
        })
    }

    fn cancel(&mut self, child: u32) -> Result<(), spawn::Error> {
        match self.0.platform().spawner.get() {
            Some(s) if s.cancel(child) => Ok(()),
            _ => Err(spawn::Error::UnknownChild),
        }
    }
}

/// A guest's child spec, checked.
fn child_spec(spec: spawn::ChildSpec) -> Result<ChildSpec, spawn::Error> {
    let bundle = match spec.bundle {
        None => None,
        Some(b) => Some(wasmos_proto::BundleHash::parse(&b).map_err(|_| {
            spawn::Error::Refused(format!(
                "bundle `{}` is not a sha256 (64 lowercase hex digits)",
                b.chars().take(80).collect::<String>()
            ))
        })?),
    };
    let child = ChildSpec {
        bundle,
        args: spec.args,
        env: spec.env,
        cpu_millis: spec.cpu_millis,
        mem_bytes: spec.mem_bytes,
        disk_bytes: spec.disk_bytes,
        timeout_ms: spec.timeout_ms,
        retries: spec.retries,
    };
    wasmos_proto::check_child_spec(&child)?;
    Ok(child)
}
