//! The executor: a process of its own, started by the agent, that runs the agent's tasks in
//! wasmtime and outlives the agent, so a restarted agent (an upgrade, a crash of the agent
//! process while the host stays up) attaches to the tasks still running and to the ends of
//! those that finished meanwhile, as a Mesos agent recovers its executors.
//!
//! The agent keeps everything that talks to the cluster (the master session, fetching inputs,
//! storing outputs, compiling); the executor only runs compiled components against task
//! directories the agent prepared. They speak length-prefixed postcard frames over a loopback
//! TCP connection that the executor accepts only with the token it wrote to its record in the
//! agent's private work directory (`executor.json`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use wasmos_exec::{
    Burst, DiskQuota, EgressPolicy, MemoryPool, Preopen, RunRequest, Runner, TaskContext,
    TaskPlatform, TaskUsage,
};
use wasmos_proto::{BundleHash, OutputStream, Reason, TaskId, TaskProgress, TaskState, TaskStatus};

/// Bumped whenever a message changes: an agent attaches only to an executor that speaks its
/// protocol.
pub const PROTOCOL: u32 = 1;

/// Largest frame either side accepts: a task's stdin travels in its launch.
const MAX_FRAME: usize = 512 << 20;

/// How often a running task's meters and progress go to the agent.
const USAGE_EVERY: Duration = Duration::from_millis(250);

/// The executor's record in the agent's work directory.
const RECORD: &str = "executor.json";

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("executor I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("executor message: {0}")]
    Codec(#[from] postcard::Error),
    #[error("executor frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("the executor refused the agent: {0}")]
    Refused(String),
    #[error("the executor answered out of turn")]
    Unexpected,
    #[error("cannot start the executor process: {0}")]
    Start(String),
    #[error(transparent)]
    Exec(#[from] wasmos_exec::ExecError),
}

/// What the executor writes where the agent finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    addr: SocketAddr,
    token: String,
    pid: u32,
    protocol: u32,
    version: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum ToExecutor {
    Hello {
        token: String,
        protocol: u32,
    },
    Run(Box<Launch>),
    Kill {
        task: TaskId,
    },
    /// The agent has reported the end of `task`: the executor forgets it.
    Taken {
        task: TaskId,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum FromExecutor {
    Attached {
        version: String,
        running: Vec<TaskId>,
        ended: Vec<(TaskId, Ended)>,
    },
    Refused {
        message: String,
    },
    Output {
        task: TaskId,
        stream: OutputStream,
        data: Vec<u8>,
    },
    Usage(Vec<Usage>),
    Ended {
        task: TaskId,
        ended: Ended,
    },
}

/// How a task run by the executor ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ended {
    pub status: TaskStatus,
    /// The files it published by name, as (name, guest path).
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Usage {
    task: TaskId,
    cpu_ns: u64,
    mem_bytes: u64,
    started: bool,
    progress: Option<TaskProgress>,
}

/// One task to run: a [`RunRequest`] as it crosses the process boundary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    task: TaskId,
    bundle: BundleHash,
    /// Where the agent keeps the bundle, compiled only if the artifact cache lacks it.
    bundle_file: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cpu_millis: u64,
    mem_bytes: u64,
    timeout_ms: u64,
    max_output_bytes: u64,
    truncate_output: bool,
    cpu_budget_ms: Option<u64>,
    stdin: Vec<u8>,
    net_allow: Vec<wasmos_proto::NetRule>,
    egress: Vec<wasmos_proto::EgressRule>,
    protected: Vec<wasmos_proto::Cidr>,
    net_rate: Option<u64>,
    preopens: Vec<(PathBuf, String, bool)>,
    disk: Option<(PathBuf, u64, u64)>,
    context: (u64, Option<u64>, Option<String>, Option<u32>, u32, String),
    grace_ms: u64,
    /// The memory its request sets aside from the pool burstable tasks borrow from.
    reserve_bytes: u64,
    burstable: bool,
}

impl Launch {
    /// `req` as sent; its meters and platform stay with the agent, which mirrors them.
    pub fn new(
        task: TaskId,
        bundle: BundleHash,
        bundle_file: PathBuf,
        req: &RunRequest,
        reserve_bytes: u64,
    ) -> Launch {
        let c = req
            .platform
            .as_ref()
            .map(|p| p.context().clone())
            .unwrap_or_default();
        Launch {
            task,
            bundle,
            bundle_file,
            args: req.args.clone(),
            env: req.env.clone(),
            cpu_millis: req.cpu_millis,
            mem_bytes: req.mem_bytes,
            timeout_ms: u64::try_from(req.timeout.as_millis()).unwrap_or(u64::MAX),
            max_output_bytes: req.max_output_bytes,
            truncate_output: req.truncate_output,
            cpu_budget_ms: req
                .cpu_budget
                .map(|b| u64::try_from(b.as_millis()).unwrap_or(u64::MAX)),
            stdin: req.stdin.clone(),
            net_allow: req.net_allow.clone(),
            egress: req.egress.rules.clone(),
            protected: req.egress.protected.clone(),
            net_rate: req.net_rate,
            preopens: req
                .preopens
                .iter()
                .map(|p| (p.host.clone(), p.guest.clone(), p.read_only))
                .collect(),
            disk: req
                .disk
                .as_ref()
                .map(|d| (d.root.clone(), d.max_bytes, d.max_entries)),
            context: (c.task_id, c.job_id, c.group, c.index, c.attempt, c.role),
            grace_ms: req.platform.as_ref().map_or(0, |p| {
                u64::try_from(p.grace().as_millis()).unwrap_or(u64::MAX)
            }),
            reserve_bytes,
            burstable: req.burst.is_some(),
        }
    }

    fn request(
        &self,
        memory: &Arc<MemoryPool>,
        usage: Arc<TaskUsage>,
        platform: Arc<TaskPlatform>,
    ) -> RunRequest {
        RunRequest {
            args: self.args.clone(),
            env: self.env.clone(),
            cpu_millis: self.cpu_millis,
            mem_bytes: self.mem_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
            max_output_bytes: self.max_output_bytes,
            truncate_output: self.truncate_output,
            cpu_budget: self.cpu_budget_ms.map(Duration::from_millis),
            stdin: self.stdin.clone(),
            net_allow: self.net_allow.clone(),
            egress: Arc::new(EgressPolicy {
                rules: self.egress.clone(),
                protected: self.protected.clone(),
            }),
            net_rate: self.net_rate,
            preopens: self
                .preopens
                .iter()
                .map(|(host, guest, read_only)| Preopen {
                    host: host.clone(),
                    guest: guest.clone(),
                    read_only: *read_only,
                })
                .collect(),
            disk: self
                .disk
                .as_ref()
                .map(|(root, max_bytes, max_entries)| DiskQuota {
                    root: root.clone(),
                    max_bytes: *max_bytes,
                    max_entries: *max_entries,
                }),
            usage: Some(usage),
            platform: Some(platform),
            burst: self.burstable.then(|| Burst {
                request_bytes: self.reserve_bytes,
                pool: memory.clone(),
            }),
        }
    }

    fn platform(&self) -> Arc<TaskPlatform> {
        let (task_id, job_id, group, index, attempt, role) = self.context.clone();
        TaskPlatform::new(
            TaskContext {
                task_id,
                job_id,
                group,
                index,
                attempt,
                role,
            },
            Duration::from_millis(self.grace_ms),
        )
    }
}

async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ExecutorError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(ExecutorError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| ExecutorError::TooLarge(body.len()))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}

/// The next frame, or `None` at a clean end of the stream.
async fn read_frame<R: AsyncRead + Unpin, T: for<'a> Deserialize<'a>>(
    r: &mut R,
) -> Result<Option<T>, ExecutorError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ExecutorError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(postcard::from_bytes(&body)?))
}

/// Compares secrets without telling, by the time taken, how much of a guess was right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

// ---------------------------------------------------------------------------------------------
// The executor process.

/// How an executor process runs.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// The agent's work directory: the record goes there, the artifact cache is read there.
    pub work_dir: PathBuf,
    pub exec: wasmos_exec::ExecConfig,
    /// The agent's memory, which burstable tasks borrow from beyond their requests.
    pub mem_bytes: u64,
    /// How long it keeps its tasks running without an agent; then it kills them and exits.
    pub recovery_timeout: Duration,
}

struct Running {
    kill: watch::Sender<bool>,
    usage: Arc<TaskUsage>,
    platform: Arc<TaskPlatform>,
}

#[derive(Default)]
struct ExecState {
    /// The attached agent's outgoing queue.
    link: Option<(u64, mpsc::Sender<FromExecutor>)>,
    running: BTreeMap<TaskId, Running>,
    /// Ends the agent has not taken yet.
    ended: BTreeMap<TaskId, Ended>,
    next_conn: u64,
}

struct Exec {
    runner: Arc<Runner>,
    memory: Arc<MemoryPool>,
    slots: Arc<tokio::sync::Semaphore>,
    state: Mutex<ExecState>,
    /// Bumped on every attach and detach.
    attached: watch::Sender<u64>,
}

impl Exec {
    fn state(&self) -> MutexGuard<'_, ExecState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The attached agent's queue, waiting for an agent to attach.
    async fn link(&self) -> mpsc::Sender<FromExecutor> {
        let mut changes = self.attached.subscribe();
        loop {
            if let Some((_, link)) = &self.state().link {
                return link.clone();
            }
            if changes.changed().await.is_err() {
                // The sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sends `msg` to the agent attached now or the next one, however long that takes: the
    /// task writing it waits meanwhile, so nothing it writes is lost.
    async fn deliver(&self, mut msg: FromExecutor) {
        loop {
            match self.link().await.send(msg).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(m)) => msg = m,
            }
        }
    }
}

/// Runs an executor: writes its record, prints `ready` on stdout, and runs the tasks attached
/// agents give it until no agent has been attached for `recovery_timeout` (its tasks are then
/// killed) or none is attached and none of its tasks is left.
pub async fn serve(settings: ExecutorSettings) -> Result<(), ExecutorError> {
    let exec_cfg = settings.exec.clone();
    let runner = tokio::task::spawn_blocking(move || Runner::new(exec_cfg))
        .await
        .map_err(|e| ExecutorError::Start(format!("runner setup panicked: {e}")))??;
    let slots = runner
        .pool_slots()
        .map_or(tokio::sync::Semaphore::MAX_PERMITS, |n| n as usize);
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let token = wasmos_net::seal::random_token()
        .ok_or_else(|| ExecutorError::Start("the OS gave no randomness".into()))?;
    let record = Record {
        addr: listener.local_addr()?,
        token: token.clone(),
        pid: std::process::id(),
        protocol: PROTOCOL,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let json = serde_json::to_vec(&record)
        .map_err(|e| ExecutorError::Start(format!("cannot write its record: {e}")))?;
    let path = settings.work_dir.join(RECORD);
    let tmp = settings
        .work_dir
        .join(format!("{RECORD}.{}", std::process::id()));
    wasmos_net::write_private(&tmp, &json)?;
    std::fs::rename(&tmp, &path)?;
    let exec = Arc::new(Exec {
        runner: Arc::new(runner),
        memory: MemoryPool::new(settings.mem_bytes),
        slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        state: Mutex::default(),
        attached: watch::Sender::new(0),
    });
    println!("ready");
    tracing::info!(addr = %record.addr, "executor ready");
    tokio::spawn(report_usage(exec.clone()));
    let mut detached_since = Some(tokio::time::Instant::now());
    let mut changes = exec.attached.subscribe();
    loop {
        let deadline = detached_since.map(|t| t + settings.recovery_timeout);
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(session(exec.clone(), stream, token.clone()));
            }
            _ = changes.changed() => {
                let (attached, idle) = {
                    let s = exec.state();
                    (s.link.is_some(), s.running.is_empty() && s.ended.is_empty())
                };
                detached_since = match (attached, detached_since) {
                    (true, _) => None,
                    (false, Some(t)) => Some(t),
                    (false, None) => Some(tokio::time::Instant::now()),
                };
                if !attached && idle {
                    tracing::info!("the agent left and no task is left: exiting");
                    break;
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                let s = exec.state();
                tracing::warn!(
                    tasks = s.running.len(),
                    "no agent attached within {:?}: killing its tasks and exiting",
                    settings.recovery_timeout
                );
                break;
            }
        }
    }
    // Only if it is still ours: a newer executor may have written its own since.
    if std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        .is_some_and(|r| r.pid == std::process::id())
    {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

async fn session(exec: Arc<Exec>, stream: TcpStream, token: String) {
    let (mut r, mut w) = stream.into_split();
    let hello = tokio::time::timeout(Duration::from_secs(5), read_frame::<_, ToExecutor>(&mut r));
    let refusal = match hello.await {
        Ok(Ok(Some(ToExecutor::Hello { token: t, protocol }))) => {
            if !same_secret(&t, &token) {
                Some("wrong token".to_string())
            } else if protocol != PROTOCOL {
                Some(format!(
                    "it speaks executor protocol {PROTOCOL}, the agent {protocol}"
                ))
            } else {
                None
            }
        }
        _ => Some("expected a hello with the token".to_string()),
    };
    if let Some(message) = refusal {
        tracing::warn!("refused a connection: {message}");
        let _ = write_frame(&mut w, &FromExecutor::Refused { message }).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<FromExecutor>(256);
    let conn = {
        let mut s = exec.state();
        s.next_conn += 1;
        let conn = s.next_conn;
        let attached = FromExecutor::Attached {
            version: env!("CARGO_PKG_VERSION").to_string(),
            running: s.running.keys().copied().collect(),
            ended: s.ended.iter().map(|(t, e)| (*t, e.clone())).collect(),
        };
        // Queued before the link is shared, so it is the first thing the agent reads.
        let _ = tx.try_send(attached);
        for r in s.running.values() {
            r.platform.resend_progress();
        }
        s.link = Some((conn, tx));
        conn
    };
    exec.attached.send_modify(|n| *n += 1);
    tracing::info!("an agent attached");
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if write_frame(&mut w, &msg).await.is_err() {
                break;
            }
        }
    });
    loop {
        match read_frame::<_, ToExecutor>(&mut r).await {
            Ok(Some(ToExecutor::Run(launch))) => {
                tokio::spawn(run(exec.clone(), *launch));
            }
            Ok(Some(ToExecutor::Kill { task })) => {
                if let Some(t) = exec.state().running.get(&task) {
                    let _ = t.kill.send(true);
                }
            }
            Ok(Some(ToExecutor::Taken { task })) => {
                exec.state().ended.remove(&task);
            }
            Ok(Some(ToExecutor::Hello { .. })) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("the agent's connection failed: {e}");
                break;
            }
        }
    }
    writer.abort();
    {
        let mut s = exec.state();
        if s.link.as_ref().is_some_and(|(c, _)| *c == conn) {
            s.link = None;
        }
    }
    exec.attached.send_modify(|n| *n += 1);
    tracing::info!("the agent detached");
}

/// The compiled bundle: from the cache the agent filled, else compiled from its file.
fn load(runner: &Runner, launch: &Launch) -> Result<wasmos_exec::Compiled, String> {
    let digest = hex::decode(launch.bundle.as_str())
        .ok()
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .ok_or_else(|| format!("bundle hash {} is not SHA-256 hex", launch.bundle))?;
    if let Some(c) = runner.load_cached(&digest).map_err(|e| e.to_string())? {
        return Ok(c);
    }
    let bytes = std::fs::read(&launch.bundle_file)
        .map_err(|e| format!("bundle {} is neither compiled nor kept: {e}", launch.bundle))?;
    runner.compile(&bytes).map_err(|e| e.to_string())
}

async fn run(exec: Arc<Exec>, launch: Launch) {
    let task = launch.task;
    let (kill_tx, kill) = watch::channel(false);
    let usage = Arc::new(TaskUsage::default());
    let platform = launch.platform();
    {
        let mut s = exec.state();
        // A launch sent again by an agent that did not see it arrive.
        if s.running.contains_key(&task) || s.ended.contains_key(&task) {
            return;
        }
        s.running.insert(
            task,
            Running {
                kill: kill_tx,
                usage: usage.clone(),
                platform: platform.clone(),
            },
        );
    }
    let loaded = {
        let (runner, launch) = (exec.runner.clone(), launch.clone());
        tokio::task::spawn_blocking(move || load(&runner, &launch)).await
    };
    let status = match loaded {
        Ok(Ok(compiled)) => {
            run_compiled(&exec, &launch, &compiled, kill, usage, platform.clone()).await
        }
        Ok(Err(message)) => {
            TaskStatus::with_reason(TaskState::Error, Some(Reason::InvalidBundle), message)
        }
        Err(e) => TaskStatus::with_reason(
            TaskState::Error,
            None,
            format!("loading the bundle panicked: {e}"),
        ),
    };
    let ended = Ended {
        status,
        files: platform.files(),
    };
    {
        let mut s = exec.state();
        s.running.remove(&task);
        s.ended.insert(task, ended.clone());
    }
    exec.deliver(FromExecutor::Ended { task, ended }).await;
}

async fn run_compiled(
    exec: &Arc<Exec>,
    launch: &Launch,
    compiled: &wasmos_exec::Compiled,
    kill: watch::Receiver<bool>,
    usage: Arc<TaskUsage>,
    platform: Arc<TaskPlatform>,
) -> TaskStatus {
    let mut waiting = kill.clone();
    let slot = tokio::select! {
        permit = exec.slots.clone().acquire_owned() => permit.ok(),
        _ = waiting.wait_for(|k| *k) => None,
    };
    let Some(_slot) = slot else {
        return TaskStatus::with_reason(TaskState::Killed, Some(Reason::Killed), "killed");
    };
    let (out_tx, mut out_rx) = mpsc::channel::<(OutputStream, Vec<u8>)>(64);
    let task = launch.task;
    let forward = {
        let exec = exec.clone();
        tokio::spawn(async move {
            while let Some((stream, data)) = out_rx.recv().await {
                exec.deliver(FromExecutor::Output { task, stream, data })
                    .await;
            }
        })
    };
    let req = launch.request(&exec.memory, usage, platform);
    exec.memory.reserve(launch.reserve_bytes);
    let outcome = exec.runner.run(compiled, req, out_tx, kill).await;
    exec.memory.release(launch.reserve_bytes);
    let _ = forward.await;
    outcome.status
}

async fn report_usage(exec: Arc<Exec>) {
    let mut tick = tokio::time::interval(USAGE_EVERY);
    loop {
        tick.tick().await;
        let s = exec.state();
        let Some((_, link)) = &s.link else { continue };
        let usage: Vec<Usage> = s
            .running
            .iter()
            .map(|(task, r)| Usage {
                task: *task,
                cpu_ns: r.usage.cpu_ns(),
                mem_bytes: r.usage.mem_bytes(),
                started: r.usage.started(),
                progress: r.platform.take_progress(),
            })
            .collect();
        if !usage.is_empty() {
            // A full queue skips a report; the next one says as much.
            let _ = link.try_send(FromExecutor::Usage(usage));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's side.

/// How the agent starts an executor.
#[derive(Debug, Clone)]
pub struct ExecutorProgram {
    /// The program (this one) and the arguments that make it an executor; the agent adds
    /// `--work-dir`, `--mem` and `--recovery-timeout`.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub recovery_timeout: Duration,
}

/// What the agent mirrors of a task the executor runs.
pub(crate) trait Mirror: Send + Sync {
    /// Done once the output is queued for the master (or dropped, with no master).
    fn output(
        &self,
        task: TaskId,
        stream: OutputStream,
        data: Vec<u8>,
    ) -> wasmos_exec::SpawnFuture<()>;
    fn usage(
        &self,
        task: TaskId,
        cpu_ns: u64,
        mem_bytes: u64,
        started: bool,
        progress: Option<TaskProgress>,
    );
}

#[derive(Default)]
struct Waiters {
    waiting: BTreeMap<TaskId, oneshot::Sender<Ended>>,
    /// Ends that arrived before anyone waited for them (tasks recovered at attach).
    early: BTreeMap<TaskId, Ended>,
    /// The connection is gone: nobody waits any more.
    closed: bool,
}

/// The agent's connection to its executor.
pub(crate) struct Client {
    tx: mpsc::UnboundedSender<ToExecutor>,
    waiters: Arc<Mutex<Waiters>>,
    pub(crate) version: String,
}

/// Tasks an attached executor already had.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) running: Vec<TaskId>,
    pub(crate) ended: Vec<TaskId>,
}

impl Client {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attaches to the executor a previous life of this agent left running, or starts one.
    pub(crate) async fn attach_or_start(
        work_dir: &Path,
        program: &ExecutorProgram,
        mem_bytes: u64,
        fuel_rate: Option<u64>,
        mirror: Arc<dyn Mirror>,
    ) -> Result<(Client, Recovered), ExecutorError> {
        if let Some(record) = read_record(work_dir) {
            match Client::attach(&record, mirror.clone()).await {
                Ok(attached) => {
                    tracing::info!(
                        pid = record.pid,
                        version = %attached.0.version,
                        running = attached.1.running.len(),
                        ended = attached.1.ended.len(),
                        "attached to the executor left running"
                    );
                    return Ok(attached);
                }
                Err(e) => tracing::warn!(
                    pid = record.pid,
                    "cannot attach to the executor left running ({e}); starting a new one"
                ),
            }
        }
        let record = start(work_dir, program, mem_bytes, fuel_rate).await?;
        Client::attach(&record, mirror).await
    }

    async fn attach(
        record: &Record,
        mirror: Arc<dyn Mirror>,
    ) -> Result<(Client, Recovered), ExecutorError> {
        let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(record.addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = stream.set_nodelay(true);
        let (mut r, mut w) = stream.into_split();
        let hello = ToExecutor::Hello {
            token: record.token.clone(),
            protocol: PROTOCOL,
        };
        write_frame(&mut w, &hello).await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut r))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let (version, recovered, early) = match answer {
            Some(FromExecutor::Attached {
                version,
                running,
                ended,
            }) => {
                let recovered = Recovered {
                    running,
                    ended: ended.iter().map(|(t, _)| *t).collect(),
                };
                (version, recovered, ended.into_iter().collect())
            }
            Some(FromExecutor::Refused { message }) => return Err(ExecutorError::Refused(message)),
            _ => return Err(ExecutorError::Unexpected),
        };
        let waiters = Arc::new(Mutex::new(Waiters {
            early,
            ..Default::default()
        }));
        let (tx, mut rx) = mpsc::unbounded_channel::<ToExecutor>();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = write_frame(&mut w, &msg).await {
                    tracing::warn!("cannot write to the executor: {e}");
                    break;
                }
            }
        });
        let reading = waiters.clone();
        tokio::spawn(async move {
            loop {
                match read_frame::<_, FromExecutor>(&mut r).await {
                    Ok(Some(FromExecutor::Output { task, stream, data })) => {
                        mirror.output(task, stream, data).await
                    }
                    Ok(Some(FromExecutor::Usage(usage))) => {
                        for u in usage {
                            mirror.usage(u.task, u.cpu_ns, u.mem_bytes, u.started, u.progress);
                        }
                    }
                    Ok(Some(FromExecutor::Ended { task, ended })) => {
                        let mut w = lock(&reading);
                        match w.waiting.remove(&task) {
                            Some(waiter) => {
                                let _ = waiter.send(ended);
                            }
                            None => {
                                w.early.insert(task, ended);
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::error!("the executor closed the connection");
                        break;
                    }
                    Err(e) => {
                        tracing::error!("the executor connection failed: {e}");
                        break;
                    }
                }
            }
            let mut w = lock(&reading);
            w.closed = true;
            w.waiting.clear();
        });
        Ok((
            Client {
                tx,
                waiters,
                version,
            },
            recovered,
        ))
    }

    /// Whether the executor is still there.
    pub(crate) fn alive(&self) -> bool {
        !self.waiters().closed
    }

    /// Runs `launch` in the executor; `kill` turning true kills it there.
    pub(crate) async fn run(&self, launch: Launch, kill: watch::Receiver<bool>) -> Ended {
        let task = launch.task;
        let ended = self.wait_for(task);
        if self.tx.send(ToExecutor::Run(Box::new(launch))).is_err() {
            return gone();
        }
        self.await_end(task, ended, kill).await
    }

    /// Waits for the end of `task`, which the executor runs already.
    pub(crate) async fn wait(&self, task: TaskId, kill: watch::Receiver<bool>) -> Ended {
        let ended = self.wait_for(task);
        self.await_end(task, ended, kill).await
    }

    fn wait_for(&self, task: TaskId) -> oneshot::Receiver<Ended> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.waiters();
        if let Some(ended) = w.early.remove(&task) {
            let _ = tx.send(ended);
        } else if !w.closed {
            w.waiting.insert(task, tx);
        }
        rx
    }

    async fn await_end(
        &self,
        task: TaskId,
        mut ended: oneshot::Receiver<Ended>,
        mut kill: watch::Receiver<bool>,
    ) -> Ended {
        let mut killed = false;
        loop {
            tokio::select! {
                e = &mut ended => return e.unwrap_or_else(|_| gone()),
                changed = kill.wait_for(|k| *k), if !killed => {
                    killed = true;
                    if changed.is_ok() {
                        let _ = self.tx.send(ToExecutor::Kill { task });
                    }
                }
            }
        }
    }

    /// The agent has reported `task`'s end: the executor may forget it.
    pub(crate) fn taken(&self, task: TaskId) {
        let _ = self.tx.send(ToExecutor::Taken { task });
    }
}

fn lock(w: &Mutex<Waiters>) -> MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gone() -> Ended {
    Ended {
        status: TaskStatus::with_reason(
            TaskState::Lost,
            Some(Reason::AgentLost),
            "its executor process ended while it ran",
        ),
        files: Vec::new(),
    }
}

fn read_record(work_dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(work_dir.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Starts an executor and reads the record it writes.
async fn start(
    work_dir: &Path,
    program: &ExecutorProgram,
    mem_bytes: u64,
    fuel_rate: Option<u64>,
) -> Result<Record, ExecutorError> {
    let log_path = work_dir.join("executor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = tokio::process::Command::new(&program.program);
    cmd.args(&program.args)
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--mem")
        .arg(mem_bytes.to_string())
        .arg("--recovery-timeout-ms")
        .arg(program.recovery_timeout.as_millis().to_string())
        // The rate the agent measured, so the two meter alike.
        .args(
            fuel_rate
                .filter(|_| !program.args.iter().any(|a| a == "--fuel-rate"))
                .map(|r| vec!["--fuel-rate".to_string(), r.to_string()])
                .unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // Its own process group (on Windows, detached from the console), so a signal to the
    // agent's group, or the agent's console closing, does not reach the tasks.
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    cmd.creation_flags(0x0000_0008 | 0x0000_0200);
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecutorError::Start(format!("{}: {e}", program.program.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ExecutorError::Start("no stdout".into()))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let ready = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
    )
    .await;
    if !matches!(ready, Ok(Ok(_))) || line.trim() != "ready" {
        let _ = child.start_kill();
        return Err(ExecutorError::Start(format!(
            "it did not get ready; see {}",
            log_path.display()
        )));
    }
    // Reaped when it ends, while this agent lives; after that, init's.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    read_record(work_dir).ok_or_else(|| ExecutorError::Start("it wrote no record".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcd", "abcd"));
        assert!(!same_secret("abcd", "abce"));
        assert!(!same_secret("abcd", "abc"));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &ToExecutor::Kill { task: TaskId(7) })
            .await
            .unwrap();
        let got: Option<ToExecutor> = read_frame(&mut b).await.unwrap();
        assert!(matches!(got, Some(ToExecutor::Kill { task }) if task == TaskId(7)));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, ToExecutor>(&mut b).await.unwrap_err();
        assert!(matches!(err, ExecutorError::TooLarge(_)), "{err}");
    }
}
