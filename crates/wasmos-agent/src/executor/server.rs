//! The executor process: runs the tasks attached agents give it on a runtime of their own,
//! holds their output and ends while no agent is attached, and exits once no agent has come
//! back for the recovery timeout (killing its tasks) or none is attached and nothing is left.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch};
use wasmos_exec::{Runner, SpawnFuture, Spawner, TaskPlatform, TaskUsage};
use wasmos_proto::{
    ChildEnd, ChildOutcome, ChildSpec, OutputStream, Reason, SpawnRefusal, TaskId, TaskState,
    TaskStatus,
};

use super::ExecutorError;
use super::wire::{
    Ended, FromExecutor, Launch, MAX_HELLO, PROTOCOL, RECORD, Record, ToExecutor, Usage,
    WRONG_TOKEN, nonce, prove, proven, read_frame, read_frame_within, write_frame,
};

/// How often a running task's meters and progress go to the agent.
const USAGE_EVERY: Duration = Duration::from_millis(250);

/// Connections that have not proven themselves yet, at most.
const MAX_HANDSHAKES: usize = 8;

/// How an executor process runs.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// The agent's work directory: the record goes there, the artifact cache is read there.
    pub work_dir: PathBuf,
    pub exec: wasmos_exec::ExecConfig,
    /// The agent's memory, which burstable tasks borrow from beyond their requests.
    pub mem_bytes: u64,
    /// The agent's CPU in millicores: one task worker thread per core.
    pub cpu_millis: u64,
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
    /// The attached agent's connection number and outgoing queue.
    link: Option<(u64, mpsc::Sender<FromExecutor>)>,
    running: BTreeMap<TaskId, Running>,
    /// Ends the agent has not taken yet.
    ended: BTreeMap<TaskId, Ended>,
    next_conn: u64,
    /// Running tasks whose ends nobody will take (the agent killed and forgot them).
    discarded: std::collections::BTreeSet<TaskId>,
    /// Spawn calls of its tasks the agent has not answered, by number: sent again to each
    /// agent that attaches.
    calls: BTreeMap<u64, Call>,
    next_call: u64,
}

/// A task's `wasmos:task/spawn` call, waiting for the agent.
enum Call {
    Start {
        task: TaskId,
        specs: Vec<ChildSpec>,
        reply: oneshot::Sender<Vec<Result<u32, SpawnRefusal>>>,
    },
    Wait {
        task: TaskId,
        handle: u32,
        reply: oneshot::Sender<Option<(ChildEnd, u32)>>,
    },
}

impl Call {
    fn task(&self) -> TaskId {
        match self {
            Call::Start { task, .. } | Call::Wait { task, .. } => *task,
        }
    }

    fn message(&self, req: u64) -> FromExecutor {
        match self {
            Call::Start { task, specs, .. } => FromExecutor::SpawnStart {
                task: *task,
                req,
                specs: specs.clone(),
            },
            Call::Wait { task, handle, .. } => FromExecutor::SpawnWait {
                task: *task,
                req,
                handle: *handle,
            },
        }
    }
}

/// A task's `wasmos:task/spawn`, through the agent.
struct Forward {
    exec: std::sync::Weak<Exec>,
    task: TaskId,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spawns of {} through the agent", self.task)
    }
}

impl Forward {
    /// Records `call` and sends it to the agent (now or once one attaches).
    async fn call(&self, call: Call) {
        let Some(exec) = self.exec.upgrade() else {
            return;
        };
        let msg = {
            let mut s = exec.state();
            s.next_call += 1;
            let req = s.next_call;
            let msg = call.message(req);
            s.calls.insert(req, call);
            msg
        };
        exec.deliver(msg).await;
    }
}

fn stopping(n: usize) -> Vec<Result<u32, SpawnRefusal>> {
    (0..n)
        .map(|_| Err(SpawnRefusal::Refused("the executor is stopping".into())))
        .collect()
}

impl Spawner for Forward {
    fn start(&self, specs: Vec<ChildSpec>) -> SpawnFuture<Vec<Result<u32, SpawnRefusal>>> {
        let forward = Forward {
            exec: self.exec.clone(),
            task: self.task,
        };
        Box::pin(async move {
            let n = specs.len();
            let (reply, answer) = oneshot::channel();
            let task = forward.task;
            forward.call(Call::Start { task, specs, reply }).await;
            answer.await.unwrap_or_else(|_| stopping(n))
        })
    }

    fn wait(&self, handle: u32) -> SpawnFuture<Option<ChildOutcome>> {
        let forward = Forward {
            exec: self.exec.clone(),
            task: self.task,
        };
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let task = forward.task;
            forward
                .call(Call::Wait {
                    task,
                    handle,
                    reply,
                })
                .await;
            let (end, attempts) = answer.await.ok()??;
            Some(ChildOutcome { end, attempts })
        })
    }

    fn cancel(&self, handle: u32) -> bool {
        let Some(exec) = self.exec.upgrade() else {
            return false;
        };
        let task = self.task;
        tokio::spawn(async move {
            exec.deliver(FromExecutor::SpawnCancel { task, handle })
                .await
        });
        true
    }
}

struct Exec {
    runner: Arc<Runner>,
    memory: Arc<wasmos_exec::MemoryPool>,
    slots: Arc<tokio::sync::Semaphore>,
    state: Mutex<ExecState>,
    /// Bumped on every attach and detach.
    attached: watch::Sender<u64>,
    /// Where tasks run: guests are CPU-bound, and the connection to the agent must stay
    /// responsive beside them.
    tasks: tokio::runtime::Handle,
    token: String,
}

impl Exec {
    fn state(&self) -> MutexGuard<'_, ExecState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The attached agent's queue, waiting for an agent to attach.
    async fn link(&self) -> (u64, mpsc::Sender<FromExecutor>) {
        let mut changes = self.attached.subscribe();
        loop {
            if let Some(link) = &self.state().link {
                return link.clone();
            }
            if changes.changed().await.is_err() {
                // The sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forgets a link whose connection is gone.
    fn drop_link(&self, conn: u64) {
        let dropped = {
            let mut s = self.state();
            let ours = s.link.as_ref().is_some_and(|(c, _)| *c == conn);
            if ours {
                s.link = None;
            }
            ours
        };
        if dropped {
            self.attached.send_modify(|n| *n += 1);
        }
    }

    /// Sends `msg` to the agent attached now or the next one, however long that takes: the
    /// task writing it waits meanwhile.
    async fn deliver(&self, mut msg: FromExecutor) {
        loop {
            let (conn, link) = self.link().await;
            match link.send(msg).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(m)) => {
                    msg = m;
                    self.drop_link(conn);
                }
            }
        }
    }

    /// Takes a launch into the books at once, so a kill that follows it finds it.
    fn admit(self: &Arc<Self>, launch: &Launch) -> Admitted {
        let mut s = self.state();
        if let Some(ended) = s.ended.get(&launch.task) {
            return Admitted::Ended(ended.clone());
        }
        if s.running.contains_key(&launch.task) {
            return Admitted::Running;
        }
        let (kill_tx, kill) = watch::channel(false);
        let usage = Arc::new(TaskUsage::default());
        let platform = launch.platform();
        platform.set_spawner(Arc::new(Forward {
            exec: Arc::downgrade(self),
            task: launch.task,
        }));
        s.running.insert(
            launch.task,
            Running {
                kill: kill_tx,
                usage: usage.clone(),
                platform: platform.clone(),
            },
        );
        Admitted::New {
            kill,
            usage,
            platform,
        }
    }
}

enum Admitted {
    New {
        kill: watch::Receiver<bool>,
        usage: Arc<TaskUsage>,
        platform: Arc<TaskPlatform>,
    },
    /// Sent again by an agent that did not see the first one arrive: it runs already.
    Running,
    /// Sent again after it ended: its end is sent again.
    Ended(Ended),
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
    let token = nonce()?;
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
    // Built last: a runtime dropped in async code (an early error) would panic.
    let workers = settings.cpu_millis.div_ceil(1000).clamp(1, 1024) as usize;
    let tasks = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("wasmos-task")
        .enable_all()
        .build()?;
    let exec = Arc::new(Exec {
        runner: Arc::new(runner),
        memory: wasmos_exec::MemoryPool::new(settings.mem_bytes),
        slots: Arc::new(tokio::sync::Semaphore::new(slots)),
        state: Mutex::default(),
        attached: watch::Sender::new(0),
        tasks: tasks.handle().clone(),
        token,
    });
    println!("ready");
    tracing::info!(addr = %record.addr, "executor ready");
    tokio::spawn(report_usage(exec.clone()));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let mut detached_since = Some(tokio::time::Instant::now());
    let mut changes = exec.attached.subscribe();
    loop {
        let deadline = detached_since.map(|t| t + settings.recovery_timeout);
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors, say: not a reason to spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // Past the cap, a connection is closed unanswered: a flood of them cannot
                // hold the executor's memory.
                let Ok(permit) = handshakes.clone().try_acquire_owned() else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(session(exec.clone(), stream, permit));
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
    tasks.shutdown_background();
    Ok(())
}

/// The handshake: a challenge, the agent's proof and its challenge, then this executor's
/// proof with what it runs and what ended. `None` when the agent did not prove itself.
async fn handshake(
    exec: &Exec,
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Option<String> {
    let mine = nonce().ok()?;
    let challenge = FromExecutor::Challenge {
        nonce: mine.clone(),
    };
    write_frame(w, &challenge).await.ok()?;
    let hello = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame_within::<_, ToExecutor>(r, MAX_HELLO),
    );
    let (message, incompatible) = match hello.await {
        Ok(Ok(Some(ToExecutor::Hello {
            protocol,
            proof,
            nonce,
        }))) => {
            if !proven(&exec.token, "agent", &mine, &proof) {
                (WRONG_TOKEN.to_string(), false)
            } else if protocol != PROTOCOL {
                let message = format!(
                    "it speaks executor protocol {PROTOCOL:?}, the agent {protocol:?}: a new executor serves this agent"
                );
                (message, true)
            } else {
                return Some(nonce);
            }
        }
        _ => ("expected a hello with the agent's proof".to_string(), false),
    };
    tracing::warn!("refused a connection: {message}");
    let refused = FromExecutor::Refused {
        message,
        incompatible,
    };
    let _ = write_frame(w, &refused).await;
    None
}

async fn session(exec: Arc<Exec>, stream: TcpStream, permit: tokio::sync::OwnedSemaphorePermit) {
    let (mut r, mut w) = stream.into_split();
    let Some(theirs) = handshake(&exec, &mut r, &mut w).await else {
        return;
    };
    drop(permit);
    let (tx, mut rx) = mpsc::channel::<FromExecutor>(256);
    let conn = {
        let mut s = exec.state();
        s.next_conn += 1;
        let conn = s.next_conn;
        let attached = FromExecutor::Attached {
            proof: prove(&exec.token, "executor", &theirs),
            version: env!("CARGO_PKG_VERSION").to_string(),
            running: s.running.keys().copied().collect(),
            ended: s.ended.iter().map(|(t, e)| (*t, e.clone())).collect(),
        };
        // Queued before the link is shared, so it is the first thing the agent reads.
        let _ = tx.try_send(attached);
        for r in s.running.values() {
            r.platform.resend_progress();
        }
        // Calls the last agent did not answer go to this one, after the handshake.
        let calls: Vec<FromExecutor> = s.calls.iter().map(|(r, c)| c.message(*r)).collect();
        let resend = tx.clone();
        tokio::spawn(async move {
            for msg in calls {
                if resend.send(msg).await.is_err() {
                    break;
                }
            }
        });
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
            Ok(Some(ToExecutor::Run(launch))) => match exec.admit(&launch) {
                Admitted::New {
                    kill,
                    usage,
                    platform,
                } => {
                    let exec2 = exec.clone();
                    exec.tasks.spawn(run(exec2, *launch, kill, usage, platform));
                }
                Admitted::Running => {}
                Admitted::Ended(ended) => {
                    let task = launch.task;
                    let exec = exec.clone();
                    tokio::spawn(
                        async move { exec.deliver(FromExecutor::Ended { task, ended }).await },
                    );
                }
            },
            Ok(Some(ToExecutor::Kill { task })) => {
                if let Some(t) = exec.state().running.get(&task) {
                    let _ = t.kill.send(true);
                }
            }
            Ok(Some(ToExecutor::Taken { task })) => {
                {
                    let mut s = exec.state();
                    if s.ended.remove(&task).is_none() && s.running.contains_key(&task) {
                        s.discarded.insert(task);
                    }
                }
                exec.attached.send_modify(|_| {});
            }
            // An answer is taken only for the task that asked: a call number names a call of
            // this executor's, and an answer meant for another executor's must not reach it.
            Ok(Some(ToExecutor::SpawnStarted { task, req, results })) => {
                let mut s = exec.state();
                if let Some(Call::Start { task: t, .. }) = s.calls.get(&req)
                    && *t == task
                    && let Some(Call::Start { reply, .. }) = s.calls.remove(&req)
                {
                    let _ = reply.send(results);
                }
            }
            Ok(Some(ToExecutor::SpawnWaited { task, req, outcome })) => {
                let mut s = exec.state();
                if let Some(Call::Wait { task: t, .. }) = s.calls.get(&req)
                    && *t == task
                    && let Some(Call::Wait { reply, .. }) = s.calls.remove(&req)
                {
                    let _ = reply.send(outcome);
                }
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
    exec.drop_link(conn);
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

async fn run(
    exec: Arc<Exec>,
    launch: Launch,
    kill: watch::Receiver<bool>,
    usage: Arc<TaskUsage>,
    platform: Arc<TaskPlatform>,
) {
    let task = launch.task;
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
    // Its output is all queued for an agent by now; the end goes once to the one attached. If
    // none is, or it leaves first, the next one finds it in the handshake.
    let link = {
        let mut s = exec.state();
        s.running.remove(&task);
        s.calls.retain(|_, c| c.task() != task);
        if s.discarded.remove(&task) {
            None
        } else {
            s.ended.insert(task, ended.clone());
            s.link.clone()
        }
    };
    if let Some((_, link)) = link {
        let _ = link.send(FromExecutor::Ended { task, ended }).await;
    }
    exec.attached.send_modify(|_| {});
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
    // All output is queued for an agent before the end is.
    let _ = forward.await;
    outcome.status
}

async fn report_usage(exec: Arc<Exec>) {
    let mut tick = tokio::time::interval(USAGE_EVERY);
    loop {
        tick.tick().await;
        let s = exec.state();
        let Some((_, link)) = &s.link else { continue };
        if s.running.is_empty() {
            continue;
        }
        // A full queue skips a report, and takes no progress: the next one says as much.
        let Ok(permit) = link.try_reserve() else {
            continue;
        };
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
        permit.send(FromExecutor::Usage(usage));
    }
}
