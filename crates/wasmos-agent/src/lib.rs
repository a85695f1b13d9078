//! The agent daemon: keeps a session with the master (register, heartbeat, reconnect), runs the
//! tasks it is given through `wasmos-exec`, and reports their status and output. Status updates
//! are numbered and kept until the master acknowledges them, so none is lost to a reconnect.

mod children;
pub mod executor;
mod kept;
mod recovery;
mod renew;
pub mod stats;
mod taskdir;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use wasmos_exec::{
    Burst, ExecConfig, MemoryPool, RunRequest, Runner, TaskContext, TaskPlatform, TaskUsage,
};
use wasmos_net::{Connection, Credentials, recv_frame, send_frame};
use wasmos_proto::{
    AgentToMaster, BundleHash, InputSource, MAX_TASK_SAMPLES, MasterToAgent, OutputFile,
    OutputPolicy, OutputStream, Reason, Resources, StatusUpdate, TaskId, TaskSample, TaskSpec,
    TaskState, TaskStatus, alpn,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Net(#[from] wasmos_net::NetError),
    #[error("the wasm runtime could not start: {0}")]
    Exec(#[from] wasmos_exec::ExecError),
    #[error("cannot start the task worker pool: {0}")]
    Runtime(std::io::Error),
    #[error("cannot start or attach to the executor: {0}")]
    Executor(executor::ExecutorError),
    #[error("cannot create work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub master: SocketAddr,
    /// The other masters of a multi-master group: after a session fails the agent tries the
    /// next one, so it finds whichever leads.
    pub other_masters: Vec<SocketAddr>,
    pub resources: Resources,
    pub attributes: BTreeMap<String, String>,
    /// Static reservations: resources offered only to the named role (and its descendants).
    pub reserved: BTreeMap<String, Resources>,
    /// Bundle cache, task directories and other local state.
    pub work_dir: PathBuf,
    pub exec: ExecConfig,
    /// Keep each task's directory (scratch space and inputs) after it ends, for debugging.
    pub keep_task_dirs: bool,
    /// The host operator's egress rules, tried before the roles' rules and the built-in
    /// protection of loopback, link-local, multicast and this host's own addresses.
    pub egress: Vec<wasmos_proto::EgressRule>,
    /// Where to serve kept outputs to other agents (`wasmos-agent-peer/1`); `None` serves
    /// none and keeps none: its tasks' outputs go to the masters.
    pub peer_listen: Option<SocketAddr>,
    /// The address other agents dial, when it is not the listening one (NAT, a wildcard
    /// listen address the route to the master does not tell).
    pub peer_advertise: Option<SocketAddr>,
    /// Most bytes of kept outputs held at once; outputs past it go to the masters.
    pub keep_max_bytes: u64,
    /// Where the agent's CA set, certificate and key are: followed (a change applies without
    /// a restart) and, for the certificate and key, renewed from the masters before the
    /// certificate expires. `None`: the credentials given are kept as they are.
    pub cert_files: Option<wasmos_net::CredentialFiles>,
    /// Where this agent counts what its metrics tell (`stats::render`).
    pub stats: Arc<stats::AgentStats>,
    /// Run tasks in an executor process that outlives the agent (see `executor`), started
    /// this way; `None` runs them in the agent's own process.
    pub executor: Option<executor::ExecutorProgram>,
}

/// The default of [`AgentConfig::keep_max_bytes`].
pub const DEFAULT_KEEP_MAX_BYTES: u64 = 2 << 30;

/// Attributes every agent advertises, so constraints can target an OS or architecture.
pub fn default_attributes() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("os".to_string(), std::env::consts::OS.to_string()),
        ("arch".to_string(), std::env::consts::ARCH.to_string()),
    ])
}

struct Inner {
    next_seq: u64,
    unacked: Vec<StatusUpdate>,
    /// Kill switches of the tasks running here.
    tasks: BTreeMap<TaskId, watch::Sender<bool>>,
    /// Why the master killed a task, when it said (preempted, its framework removed).
    kill_reasons: BTreeMap<TaskId, Reason>,
    /// Each running task's meters, for the usage reports.
    usage: BTreeMap<TaskId, Metered>,
    /// The current session's outgoing queue, if connected.
    link: Option<mpsc::UnboundedSender<AgentToMaster>>,
    /// Per task: bytes of output in that queue (see [`TASK_OUTPUT_BACKLOG`]).
    output_queued: BTreeMap<TaskId, u64>,
    conn: Option<Connection>,
    /// The agent is on its way out: launches that still arrive are turned away at once.
    stopping: bool,
    /// Tasks handed to the executor: they outlive this agent, and their ends are written
    /// down until the masters record them.
    handed: std::collections::BTreeSet<TaskId>,
}

struct Agent {
    cfg: AgentConfig,
    runner: Arc<Runner>,
    /// Emptied task directories, for the next tasks.
    dir_pool: Arc<taskdir::DirPool>,
    /// One lock per bundle being fetched and compiled: the first task of a job compiles it,
    /// the hundreds started with it wait for that instead of compiling it too (which, on a
    /// small machine, took seconds of every core and starved the rest of the process).
    compiling: Mutex<BTreeMap<BundleHash, Arc<tokio::sync::Mutex<()>>>>,
    /// Where tasks run: a runtime of their own (see `TaskPool`).
    pool: tokio::runtime::Handle,
    /// One permit per instance slot of the runner's pooling allocator: a task waits (in
    /// `starting`) for a slot rather than failing to instantiate.
    slots: Arc<tokio::sync::Semaphore>,
    /// Memory no running task requested: what burstable tasks may borrow past their requests.
    memory: Arc<MemoryPool>,
    /// Destinations no task reaches unless a rule allows it: the defaults and this host's
    /// own addresses (read at start).
    protected: Vec<wasmos_proto::Cidr>,
    inner: Mutex<Inner>,
    /// Connections to other agents, for inputs they keep.
    peers: kept::Peers,
    /// This agent's `wasmos-agent-peer/1` address, told to the master at registration.
    peer_addr: Option<SocketAddr>,
    /// The certificates the masters revoked, which this agent's handshakes refuse (those of
    /// other agents, serving or fetching kept outputs).
    revocations: wasmos_net::RevocationList,
    /// The other agents' connections to this one, closed when their certificate is revoked.
    peer_conns: Arc<wasmos_net::LiveConnections>,
    /// Counts the masters' asks for a renewal now (`MasterToAgent::RenewNow`).
    renew_now: tokio::sync::watch::Sender<u64>,
    /// Whether the masters' whole list has arrived once: until then this agent serves no
    /// other agent (it would not know whom to refuse).
    revocations_known: watch::Sender<bool>,
    /// Bytes of task output queued for the master and not yet written to the session: output
    /// waits while it is over [`OUTPUT_BACKLOG`], so a task printing faster than the master
    /// takes it is slowed down instead of filling the agent's memory.
    output_backlog: Arc<AtomicU64>,
    /// The children its tasks started (`wasmos:task/spawn`).
    children: Arc<children::Children>,
    /// The executor running its tasks, when they run in one (`AgentConfig::executor`).
    executor: tokio::sync::Mutex<Option<Arc<executor::Client>>>,
    /// The executor's tasks' spawn calls, by task and call number: their answers, once
    /// given (none while the masters are asked), to answer a call sent again.
    spawn_calls: Mutex<SpawnCalls>,
}

type SpawnCalls =
    std::collections::HashMap<(TaskId, u64), Option<Vec<Result<u32, wasmos_proto::SpawnRefusal>>>>;

/// Most bytes of task output an agent queues for its master at once, and of one task's: a
/// flooding task holds up only itself until sixteen of them flood at once. Each chunk counts
/// at least [`OUTPUT_CHUNK_MIN`], so a task writing a byte at a time queues few messages.
const OUTPUT_BACKLOG: u64 = 16 << 20;
const TASK_OUTPUT_BACKLOG: u64 = 1 << 20;
const OUTPUT_CHUNK_MIN: u64 = 256;

impl Agent {
    /// The lock of a bundle's compile; locks of bundles nobody compiles are dropped.
    fn compile_lock(&self, bundle: &BundleHash) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .compiling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(bundle.clone()).or_default().clone()
    }

    fn spawn_calls(&self) -> MutexGuard<'_, SpawnCalls> {
        self.spawn_calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current session's outgoing queue, if connected.
    fn link(&self) -> Option<mpsc::UnboundedSender<AgentToMaster>> {
        self.inner().link.clone()
    }

    fn report(&self, task: TaskId, status: TaskStatus) {
        Self::push_report(&mut self.inner(), task, status);
    }

    fn push_report(inner: &mut Inner, task: TaskId, status: TaskStatus) {
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let update = StatusUpdate { seq, task, status };
        inner.unacked.push(update.clone());
        if let Some(link) = &inner.link {
            let _ = link.send(AgentToMaster::Status(update));
        }
    }

    fn output(&self, task: TaskId, stream: OutputStream, data: Vec<u8>) {
        let mut inner = self.inner();
        let charge = (data.len() as u64).max(OUTPUT_CHUNK_MIN);
        let sent = inner.link.as_ref().is_some_and(|link| {
            link.send(AgentToMaster::Output { task, stream, data })
                .is_ok()
        });
        if sent {
            *inner.output_queued.entry(task).or_default() += charge;
            self.output_backlog.fetch_add(charge, Ordering::Relaxed);
        }
    }

    /// Output of `task` written to the session: it no longer counts against the backlogs.
    fn output_sent(&self, task: TaskId, len: usize) {
        let charge = (len as u64).max(OUTPUT_CHUNK_MIN);
        let mut inner = self.inner();
        if let Some(q) = inner.output_queued.get_mut(&task) {
            *q = q.saturating_sub(charge);
            if *q == 0 {
                inner.output_queued.remove(&task);
            }
        }
        let _ = self
            .output_backlog
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(charge))
            });
    }

    /// Waits until the agent's output queued for the master is under [`OUTPUT_BACKLOG`].
    async fn backlog_room(&self) {
        while self.output_backlog.load(Ordering::Relaxed) >= OUTPUT_BACKLOG {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until `task`'s output queued for the master is under [`TASK_OUTPUT_BACKLOG`] and
    /// the agent's under [`OUTPUT_BACKLOG`].
    async fn output_room(&self, task: TaskId) {
        loop {
            let mine = self.inner().output_queued.get(&task).copied().unwrap_or(0);
            if mine < TASK_OUTPUT_BACKLOG
                && self.output_backlog.load(Ordering::Relaxed) < OUTPUT_BACKLOG
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The worker threads tasks run on, one per core the agent offers. Guests are CPU-bound and
/// yield only every fuel slice; on a runtime of their own they can keep every worker busy while
/// the session (heartbeats, acks, status updates, launches) keeps its own threads.
struct TaskPool {
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl TaskPool {
    fn new(cpu_millis: u64) -> Result<TaskPool, AgentError> {
        let workers = cpu_millis.div_ceil(1000).clamp(1, 1024) as usize;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("wasmos-task")
            .enable_all()
            .build()
            .map_err(AgentError::Runtime)?;
        Ok(TaskPool {
            handle: rt.handle().clone(),
            rt: Some(rt),
        })
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        // Dropping a runtime from async code blocks and panics; let its threads wind down.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs an agent until `shutdown` turns true, reconnecting to the master whenever the session
/// drops.
/// Background tasks of one agent's life, stopped with it.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

pub async fn run(
    cfg: AgentConfig,
    creds: Credentials,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let bundles = cfg.work_dir.join("bundles");
    // Tasks' files and the cached blobs of every tenant: the agent's user only.
    wasmos_net::create_private_dir(&cfg.work_dir)
        .and_then(|()| std::fs::create_dir_all(&bundles))
        .map_err(|source| AgentError::WorkDir {
            path: bundles.clone(),
            source,
        })?;
    // Fuel calibration keeps a core busy for a moment: not on the async workers.
    let mut exec = cfg.exec.clone();
    if exec.cache_dir.is_none() {
        exec.cache_dir = Some(cfg.work_dir.join("artifacts"));
    }
    if cfg.executor.is_some() {
        // Tasks run in the executor, whose runner reserves the instance slots.
        exec.pool = None;
    }
    let runner = tokio::task::spawn_blocking(move || Runner::new(exec))
        .await
        .map_err(|e| wasmos_exec::ExecError::Engine(format!("runner setup panicked: {e}")))??;
    let runner = Arc::new(runner);
    // What the pool could reserve, which may be fewer slots than configured.
    let cfg_slots = runner.pool_slots();
    match runner.fuel_per_core_second() {
        Some(rate) => tracing::info!(fuel_per_core_second = rate, "metering CPU by fuel"),
        None => tracing::info!("metering CPU by the thread clock"),
    }
    let pool = TaskPool::new(cfg.resources.cpu_millis)?;
    let endpoint = wasmos_net::watchful_client_endpoint(&creds, alpn::AGENT, cfg.master)?;
    // Sequence numbers start from the clock so a restarted agent numbers above its previous
    // life even before the master tells it the last number it recorded.
    let first_seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64 * 1024);
    let memory = MemoryPool::new(cfg.resources.mem_bytes);
    let own: Vec<std::net::IpAddr> = match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!("cannot list this host's addresses ({e}); protecting the defaults only");
            Vec::new()
        }
    };
    let protected = wasmos_exec::EgressPolicy::protected_defaults(&own);
    let peer_server = match cfg.peer_listen {
        Some(listen) => {
            let ep = wasmos_net::server_endpoint(listen, &creds, &[alpn::AGENT_PEER])?;
            let bound = ep.local_addr().map_err(|source| AgentError::WorkDir {
                path: PathBuf::from(listen.to_string()),
                source,
            })?;
            let advertised = cfg
                .peer_advertise
                .unwrap_or_else(|| advertised_addr(bound, cfg.master));
            tracing::info!(
                "serving kept outputs to other agents at {bound} (advertised as {advertised})"
            );
            Some((ep, advertised))
        }
        None => None,
    };
    let revocations_known = watch::Sender::new(false);
    let agent = Arc::new(Agent {
        peers: kept::Peers::new(creds.clone(), revocations_known.subscribe()),
        peer_addr: peer_server.as_ref().map(|(_, a)| *a),
        revocations: creds.revocations(),
        peer_conns: Arc::default(),
        renew_now: tokio::sync::watch::Sender::new(0),
        revocations_known,
        children: Arc::default(),
        memory,
        protected,
        cfg,
        runner,
        dir_pool: Arc::default(),
        compiling: Mutex::default(),
        pool: pool.handle.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(
            cfg_slots.map_or(tokio::sync::Semaphore::MAX_PERMITS, |n| n as usize),
        )),
        inner: Mutex::new(Inner {
            next_seq: first_seq,
            unacked: Vec::new(),
            tasks: BTreeMap::new(),
            kill_reasons: Default::default(),
            usage: BTreeMap::new(),
            link: None,
            output_queued: BTreeMap::new(),
            conn: None,
            stopping: false,
            handed: Default::default(),
        }),
        output_backlog: Arc::new(AtomicU64::new(0)),
        executor: Default::default(),
        spawn_calls: Default::default(),
    });
    // Tasks an executor left by a previous life of this agent still runs (or ran) are taken
    // back; every other task directory of that life belongs to a task that is gone.
    let recovered = match &agent.cfg.executor {
        Some(_) => recovery::attach(&agent)
            .await
            .map_err(AgentError::Executor)?,
        None => executor::Recovered::default(),
    };
    let client = agent.executor.lock().await.clone();
    let left_alone = recovered.left_alone;
    let resumed = recovery::resume_all(&agent, recovered, client.as_deref());
    let task_dirs = taskdir::TaskDir::parent(&agent.cfg.work_dir);
    // An executor this agent cannot attach to (or, without --executor, one an earlier life
    // started) may still run tasks in their directories.
    let foreign = left_alone
        || (agent.cfg.executor.is_none() && agent.cfg.work_dir.join("executor.json").exists());
    if foreign {
        tracing::warn!(
            "an executor of an earlier life of this agent may still run tasks: their directories are left alone"
        );
    }
    if !agent.cfg.keep_task_dirs
        && !foreign
        && let Err(source) = recovery::remove_all_but(&task_dirs, &resumed)
    {
        // A task the executor is killing may still write in its directory: with an executor,
        // what is left is removed next time.
        if agent.cfg.executor.is_none() {
            return Err(AgentError::WorkDir {
                path: task_dirs,
                source,
            });
        }
        tracing::warn!("cannot empty {}: {source}", task_dirs.display());
    }
    if let Some((ep, addr)) = &peer_server {
        let me = format!("at {addr}");
        tokio::spawn(kept::serve(
            ep.clone(),
            agent.cfg.work_dir.clone(),
            me,
            kept::Revocations {
                list: agent.revocations.clone(),
                live: agent.peer_conns.clone(),
                known: agent.revocations_known.subscribe(),
            },
        ));
    }
    // Other agents' sessions whose CA is dropped (a rollover's last step) end then.
    let _trust = peer_server.as_ref().map(|_| {
        let (creds, live) = (creds.clone(), agent.peer_conns.clone());
        AbortOnDrop(vec![tokio::spawn(async move {
            creds.close_distrusted(&live).await
        })])
    });
    let _renewal = agent.cfg.cert_files.clone().map(|files| {
        AbortOnDrop(vec![
            tokio::spawn(wasmos_net::follow_files(
                creds.clone(),
                files.clone(),
                wasmos_net::RELOAD_EVERY,
            )),
            tokio::spawn(renew::renew_when_due(agent.clone(), creds.clone(), files)),
        ])
    });
    let mut backoff = Duration::from_millis(200);
    let mut masters = vec![agent.cfg.master];
    masters.extend(
        agent
            .cfg
            .other_masters
            .iter()
            .filter(|m| **m != agent.cfg.master),
    );
    let mut next = 0;
    loop {
        let master = masters[next % masters.len()];
        let ended = {
            let session = session(agent.clone(), &endpoint, master, &masters);
            tokio::pin!(session);
            tokio::select! {
                result = &mut session => Some(result),
                _ = shutdown.changed() => {
                    // Stopped with a session up: its tasks' ends go to the master before the
                    // goodbye, so they are not left for the agent timeout to call lost.
                    stop_tasks(&agent);
                    tokio::select! {
                        _ = &mut session => {}
                        _ = tokio::time::timeout(STOP_REPORT_WAIT, reported(&agent)) => {}
                    }
                    None
                }
            }
        };
        let Some(result) = ended else { break };
        let mut redirected = false;
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(SessionEnd::NotLeader(Some(leader))) => {
                // A follower (or a deposed leader) names the leader: go there at once.
                tracing::info!("master {master} is not the leader; registering with {leader}");
                next = match masters.iter().position(|m| *m == leader) {
                    Some(i) => i,
                    None => {
                        masters.push(leader);
                        masters.len() - 1
                    }
                };
                redirected = true;
            }
            Err(e) => {
                // A master without a leader, or a dead one: try the next of the group.
                next += 1;
                tracing::warn!("agent session with {master}: {e}; retrying in {backoff:?}");
            }
        }
        {
            let mut inner = agent.inner();
            inner.link = None;
            inner.conn = None;
        }
        if redirected {
            // Two masters with stale views could name each other during an election: a short
            // pause keeps that from spinning.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => break,
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    stop_tasks(&agent);
    recovery::flush(&agent).await;
    endpoint.close(0u32.into(), b"agent shutting down");
    if let Some((ep, _)) = &peer_server {
        ep.close(0u32.into(), b"agent shutting down");
    }
    // Give the close a moment to reach the master, so it sees a clean shutdown, not a loss.
    let _ = tokio::time::timeout(Duration::from_millis(100), endpoint.wait_idle()).await;
    drop(pool);
    Ok(())
}

/// How long a stopping agent waits for its tasks to end and the master to record them: a task
/// that imports `wasmos:task/cancellation` may take its whole grace period first.
const STOP_REPORT_WAIT: Duration = Duration::from_millis(wasmos_proto::GRACE_MS + 3_000);

/// Kills every running task, as stopped with the agent, and turns away later launches.
fn stop_tasks(agent: &Agent) {
    let mut inner = agent.inner();
    inner.stopping = true;
    let Inner {
        tasks,
        kill_reasons,
        handed,
        ..
    } = &mut *inner;
    // Tasks in the executor keep running: the agent's next life attaches to them. Those not
    // handed to it yet are stopped.
    for (task, kill) in tasks.iter().filter(|(t, _)| !handed.contains(t)) {
        // One the master already killed keeps its own reason (or none: a user's kill).
        if !*kill.borrow() {
            kill_reasons.insert(*task, Reason::AgentStopped);
            let _ = kill.send(true);
        }
    }
}

/// Returns once no task runs and the master has acknowledged every status sent.
async fn reported(agent: &Agent) {
    loop {
        {
            let inner = agent.inner();
            if inner.tasks.len() == inner.handed.len() && inner.unacked.is_empty() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address other agents dial: the bound one, or, when it is a wildcard, this host's
/// address on the route to the master (a connected UDP socket sends nothing).
fn advertised_addr(bound: SocketAddr, master: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let route = std::net::UdpSocket::bind(wasmos_net::bind_for(master))
        .and_then(|s| s.connect(master).and_then(|()| s.local_addr()));
    match route {
        Ok(local) => SocketAddr::new(local.ip(), bound.port()),
        Err(e) => {
            tracing::warn!(
                "cannot tell this host's address toward the master ({e}); advertising {bound}"
            );
            bound
        }
    }
}

/// Why a session with a master ended.
#[derive(Debug)]
enum SessionEnd {
    /// The master is not the leader; the leader's address, when it named one that parses.
    NotLeader(Option<SocketAddr>),
    Failed(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::NotLeader(Some(a)) => write!(f, "not the leader (the leader is at {a})"),
            SessionEnd::NotLeader(None) => write!(f, "not the leader, and knows of no leader"),
            SessionEnd::Failed(e) => f.write_str(e),
        }
    }
}

impl From<String> for SessionEnd {
    fn from(e: String) -> Self {
        SessionEnd::Failed(e)
    }
}

async fn session(
    agent: Arc<Agent>,
    endpoint: &wasmos_net::Endpoint,
    master: SocketAddr,
    masters: &[SocketAddr],
) -> Result<(), SessionEnd> {
    let conn = wasmos_net::connect(endpoint, master)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| wasmos_net::describe(&e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        // Queue Register and become reachable in one step, so no update reported meanwhile is
        // missed: it is either in `pending` or queued after Register.
        let mut inner = agent.inner();
        let register = AgentToMaster::Register {
            resources: agent.cfg.resources.clone(),
            attributes: agent.cfg.attributes.clone(),
            fuel_per_core_second: agent.runner.fuel_per_core_second().unwrap_or(0),
            reserved: agent.cfg.reserved.clone(),
            running: inner.tasks.keys().copied().collect(),
            pending: inner.unacked.clone(),
            peer_addr: agent.peer_addr.map(|a| a.to_string()),
        };
        let _ = tx.send(register);
        inner.link = Some(tx.clone());
        inner.conn = Some(conn.clone());
    }
    // What the last session left queued is gone with it.
    agent.output_backlog.store(0, Ordering::Relaxed);
    agent.inner().output_queued.clear();
    let sender = agent.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            match send_frame(&mut send, &msg).await {
                Ok(()) => {}
                // One message that cannot be framed (over the frame limit) is dropped, not
                // the session with everything else the agent has to say.
                Err(wasmos_net::FrameError::Codec(e)) => {
                    tracing::error!("a message to the master could not be sent: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let AgentToMaster::Output { task, data, .. } = &msg {
                sender.output_sent(*task, data.len());
            }
        }
        Ok::<(), wasmos_net::FrameError>(())
    });
    let others: Vec<SocketAddr> = masters.iter().copied().filter(|m| *m != master).collect();
    let result = tokio::select! {
        r = read_loop(&agent, &conn, &mut recv, tx) => r,
        leader = wasmos_net::watch_leader(&conn, master, &others, |other| {
            let endpoint = endpoint.clone();
            async move { who_leads(&endpoint, other).await }
        }) => {
            tracing::info!("master {master} went silent and {leader} leads now; registering there");
            conn.close(0u32.into(), b"going to the new leader");
            Err(SessionEnd::NotLeader(Some(leader)))
        }
    };
    writer.abort();
    result
}

/// Which master `other` says leads.
async fn who_leads(endpoint: &wasmos_net::Endpoint, other: SocketAddr) -> Option<SocketAddr> {
    let leader_of = |answer: MasterToAgent| match answer {
        MasterToAgent::Leader { addr } => addr,
        _ => None,
    };
    wasmos_net::ask_leader(endpoint, other, &AgentToMaster::WhoLeads, leader_of).await
}

async fn read_loop(
    agent: &Arc<Agent>,
    conn: &Connection,
    recv: &mut wasmos_net::RecvStream,
    tx: mpsc::UnboundedSender<AgentToMaster>,
) -> Result<(), SessionEnd> {
    let mut heartbeat: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        let msg = match recv_frame::<MasterToAgent>(recv).await {
            Ok(Some(m)) => m,
            Ok(None) => break Err("the master closed the session".to_string().into()),
            Err(e) => {
                break Err(match conn.close_reason() {
                    Some(reason) => wasmos_net::describe(&reason),
                    None => e.to_string(),
                }
                .into());
            }
        };
        match msg {
            MasterToAgent::Registered {
                agent: id,
                heartbeat_interval_ms,
                last_status_seq,
            } => {
                tracing::info!(agent = %id, "registered with master {}", conn.remote_address());
                {
                    let mut inner = agent.inner();
                    inner.next_seq = inner.next_seq.max(last_status_seq + 1);
                    // This master (perhaps a new leader) may not have the latest reports.
                    for m in inner.usage.values() {
                        m.platform.resend_progress();
                    }
                }
                // Children asked for or waited on, which this master may never have heard of.
                agent.children.resend(&tx);
                let tx = tx.clone();
                let every = Duration::from_millis(heartbeat_interval_ms.max(100));
                let agent = agent.clone();
                heartbeat = Some(tokio::spawn(async move {
                    let mut meter = UsageMeter::default();
                    loop {
                        tokio::time::sleep(every).await;
                        let (usage, tasks) = meter.sample(&agent.inner().usage);
                        let beat = AgentToMaster::Heartbeat {
                            usage: Some(usage),
                            tasks,
                        };
                        if tx.send(beat).is_err() {
                            break;
                        }
                    }
                }));
            }
            MasterToAgent::Launch {
                task,
                spec,
                egress,
                sources,
                trust,
            } => launch(agent.clone(), task, spec, egress, sources, trust),
            MasterToAgent::Kill { task, reason } => {
                let mut inner = agent.inner();
                if let Some(kill) = inner.tasks.get(&task) {
                    let _ = kill.send(true);
                    if let Some(reason) = reason {
                        inner.kill_reasons.insert(task, reason);
                    }
                }
            }
            MasterToAgent::Ack { seq } => {
                let mut recorded = Vec::new();
                agent.inner().unacked.retain(|u| {
                    let acked = u.seq <= seq;
                    if acked && u.status.state.is_terminal() {
                        recorded.push(u.task);
                    }
                    !acked
                });
                if agent.cfg.executor.is_some() {
                    for task in recorded {
                        recovery::recorded(agent, task);
                    }
                }
            }
            MasterToAgent::Spawned { parent, seq, child } => {
                agent.children.spawned(agent, parent, seq, child);
            }
            MasterToAgent::ChildEnded { parent, end } => agent.children.ended(agent, parent, end),
            MasterToAgent::Revoked {
                serials,
                identities,
                complete,
            } => {
                agent.revocations.extend(serials, identities);
                let closed = agent.peer_conns.close_revoked(&agent.revocations)
                    + agent.peers.close_revoked();
                if closed > 0 {
                    tracing::info!(closed, "closed other agents' connections: revoked");
                }
                if complete {
                    agent.revocations_known.send_replace(true);
                }
            }
            MasterToAgent::RenewNow if agent.cfg.cert_files.is_none() => {
                tracing::warn!(
                    "asked to renew this agent's certificate, but it was given no certificate files to renew"
                );
            }
            MasterToAgent::RenewNow => agent.renew_now.send_modify(|n| *n += 1),
            MasterToAgent::Error { message } => break Err(format!("master: {message}").into()),
            MasterToAgent::NotLeader { addr } => {
                conn.close(0u32.into(), b"going to the leader");
                break Err(SessionEnd::NotLeader(addr.and_then(|a| a.parse().ok())));
            }
            MasterToAgent::Bundle { .. }
            | MasterToAgent::Stored
            | MasterToAgent::Leader { .. }
            | MasterToAgent::Renewed { .. } => {
                tracing::warn!("unexpected blob answer on the control stream");
            }
        }
    };
    if let Some(h) = heartbeat {
        h.abort();
    }
    result
}

/// A running task's meters.
#[derive(Clone)]
struct Metered {
    usage: Arc<TaskUsage>,
    /// Whether it counts toward what the agent lends to best-effort tasks (guaranteed and
    /// burstable ones do).
    counted: bool,
    /// What it reports through `wasmos:task` (its progress goes with the heartbeats).
    platform: Arc<TaskPlatform>,
}

/// Turns the running tasks' CPU counters into rates between two heartbeats.
#[derive(Default)]
struct UsageMeter {
    last: Option<std::time::Instant>,
    cpu_ns: BTreeMap<TaskId, u64>,
    /// When each task's progress was last sent: at most one report every [`PROGRESS_EVERY`]
    /// goes to the masters (each is a raft write and an event); the last one goes with its end.
    progress_sent: BTreeMap<TaskId, std::time::Instant>,
}

/// How often a task's progress reports go to the masters, at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl UsageMeter {
    /// What the tasks that count toward lending use together, and each task's own usage.
    fn sample(&mut self, tasks: &BTreeMap<TaskId, Metered>) -> (Resources, Vec<TaskSample>) {
        let now = std::time::Instant::now();
        let elapsed_ns = self
            .last
            .map_or(0, |l| now.duration_since(l).as_nanos() as u64);
        self.last = Some(now);
        let rate = |spent_ns: u64| match elapsed_ns {
            0 => 0,
            e => (u128::from(spent_ns) * 1000 / u128::from(e)) as u64,
        };
        let mut spent_ns = 0u64;
        let mut mem = 0u64;
        let mut seen = BTreeMap::new();
        let mut samples = Vec::with_capacity(tasks.len().min(MAX_TASK_SAMPLES));
        for (task, m) in tasks {
            let u = &m.usage;
            let cpu = u.cpu_ns();
            let spent = cpu.saturating_sub(self.cpu_ns.get(task).copied().unwrap_or(0));
            if m.counted {
                spent_ns = spent_ns.saturating_add(spent);
                mem = mem.saturating_add(u.mem_bytes());
            }
            seen.insert(*task, cpu);
            // The session's first heartbeat has no interval to measure a rate over, and a task
            // not instantiated yet has nothing to report.
            if elapsed_ns > 0 && u.started() && samples.len() < MAX_TASK_SAMPLES {
                let progress = match self.progress_sent.get(task) {
                    Some(at) if now.duration_since(*at) < PROGRESS_EVERY => None,
                    _ => m.platform.take_progress(),
                };
                if progress.is_some() {
                    self.progress_sent.insert(*task, now);
                }
                samples.push(TaskSample {
                    task: *task,
                    cpu_millis: rate(spent),
                    mem_bytes: u.mem_bytes(),
                    progress,
                });
            }
        }
        self.progress_sent.retain(|t, _| seen.contains_key(t));
        self.cpu_ns = seen;
        (Resources::new(rate(spent_ns), mem, 0), samples)
    }
}

/// The agent's own check of a bundle's signature, before it fetches or compiles anything:
/// when the task's role requires signed bundles, one of the signatures the launch carries must
/// verify under one of the role's keys, over the hash the bytes will be checked against. The
/// master checked the same, but a master's record is not proof: a failed check ends the task.
fn untrusted(spec: &TaskSpec, trust: Option<&wasmos_proto::BundleTrust>) -> Option<TaskStatus> {
    let why = wasmos_net::signing::check_trust(&spec.bundle, trust?).err()?;
    tracing::warn!(bundle = %spec.bundle, "refused a launch: {why}");
    Some(TaskStatus::with_reason(
        TaskState::Error,
        Some(Reason::InvalidBundle),
        why,
    ))
}

fn launch(
    agent: Arc<Agent>,
    task: TaskId,
    spec: TaskSpec,
    egress: Vec<wasmos_proto::EgressRule>,
    sources: Vec<InputSource>,
    trust: Option<wasmos_proto::BundleTrust>,
) {
    let (kill_tx, kill_rx) = watch::channel(false);
    {
        let mut inner = agent.inner();
        // A launch sent twice (the master resends what an agent that registers again never
        // received, while the launch itself may still be on its way): running, or ended with
        // its final status not yet acknowledged, the task is not started again. Once the end
        // is acknowledged, the master has it recorded and sends no launch.
        let ended_unacked = inner
            .unacked
            .iter()
            .any(|u| u.task == task && u.status.state.is_terminal());
        if inner.tasks.contains_key(&task) || ended_unacked {
            return;
        }
        if inner.stopping {
            // Sent while the master did not yet know: it is told at once, and runs elsewhere.
            let status = TaskStatus::with_reason(
                TaskState::Killed,
                Some(Reason::AgentStopped),
                "its agent was stopping",
            );
            Agent::push_report(&mut inner, task, status);
            return;
        }
        if let Some(status) = untrusted(&spec, trust.as_ref()) {
            Agent::push_report(&mut inner, task, status);
            return;
        }
        inner.tasks.insert(task, kill_tx);
    }
    let metered = metered(&agent, task, &spec);
    metered
        .platform
        .set_spawner(Arc::new(children::TaskSpawner {
            agent: Arc::downgrade(&agent),
            parent: task,
        }));
    agent.pool.clone().spawn(async move {
        let status = run_task(&agent, task, spec, egress, sources, kill_rx, metered).await;
        end_task(&agent, task, status);
    });
}

/// A task's meters and platform, counted in the agent's books from now on.
fn metered(agent: &Agent, task: TaskId, spec: &TaskSpec) -> Metered {
    let usage = Arc::new(TaskUsage::default());
    let platform = TaskPlatform::new(
        TaskContext {
            task_id: task.0,
            job_id: spec.slot.as_ref().and_then(|s| s.job).map(|j| j.0),
            group: spec.slot.as_ref().map(|s| s.group.clone()),
            index: spec.slot.as_ref().map(|s| s.index),
            attempt: spec.slot.as_ref().map_or(1, |s| s.attempt),
            role: spec.role.clone().unwrap_or_else(|| "default".to_string()),
        },
        Duration::from_millis(wasmos_proto::GRACE_MS.min(spec.timeout_ms)),
    );
    let metered = Metered {
        usage: usage.clone(),
        counted: !spec.qos.is_revocable(),
        platform,
    };
    agent.inner().usage.insert(task, metered.clone());
    agent.cfg.stats.started(task, spec.role.as_deref(), usage);
    metered
}

/// Reports a task's end, with why the master killed it when it did.
fn end_task(agent: &Arc<Agent>, task: TaskId, mut status: TaskStatus) {
    agent.spawn_calls().retain(|(t, _), _| *t != task);
    {
        agent.children.forget(task);
        // One step, so whoever sees the task gone from the running set finds its end among
        // the unacknowledged updates, and no kill reason is left behind for it.
        let mut inner = agent.inner();
        inner.usage.remove(&task);
        if let Some(reason) = inner.kill_reasons.remove(&task)
            && status.state == TaskState::Killed
        {
            status.reason = Some(reason);
            status.message = Some(
                match reason {
                    Reason::Preempted => {
                        "preempted: its resources were needed back by their owner, or by a role below its guarantee"
                    }
                    Reason::FrameworkRemoved => {
                        "its framework was torn down or did not return within its failover timeout"
                    }
                    Reason::AgentStopped => "its agent was stopped",
                    Reason::ParentEnded => "its parent task ended",
                    Reason::Maintenance => "its agent was drained for maintenance",
                    _ => "killed by the master",
                }
                .into(),
            );
        }
        inner.tasks.remove(&task);
        if inner.handed.remove(&task) {
            // Kept until the masters record it, for the agent's next life.
            recovery::ended(agent, task, &status);
        }
        agent.cfg.stats.ended(task, &status);
        Agent::push_report(&mut inner, task, status);
    }
}

async fn run_task(
    agent: &Arc<Agent>,
    task: TaskId,
    spec: TaskSpec,
    role_egress: Vec<wasmos_proto::EgressRule>,
    sources: Vec<InputSource>,
    kill: watch::Receiver<bool>,
    metered: Metered,
) -> TaskStatus {
    // A bundle compiled before is not read, hashed or compiled again: thousands of tasks of
    // one job share it.
    let digest = hex::decode(spec.bundle.as_str())
        .ok()
        .and_then(|d| <[u8; 32]>::try_from(d).ok());
    let cached = digest.and_then(|d| agent.runner.cached(&d));
    // `starting` says the agent fetches or compiles something first; a task with nothing of
    // that goes straight to `running`: one status write less on every short task's path.
    let fetches = cached.is_none()
        || spec.stdin.is_some()
        || !spec.mounts.is_empty()
        || !spec.inputs.is_empty();
    if fetches {
        agent.report(task, TaskStatus::new(TaskState::Starting));
    }
    // Held until this task's compile is done (or found done by another).
    let compiling = match cached {
        Some(_) => None,
        None => Some(agent.compile_lock(&spec.bundle).lock_owned().await),
    };
    let cached = cached.or_else(|| digest.and_then(|d| agent.runner.cached(&d)));
    agent.cfg.stats.compile(cached.is_some());
    let bytes = match cached {
        Some(_) => Vec::new(),
        None => match fetch_blob(agent, &spec.bundle).await {
            Ok(b) => b,
            Err(e) => {
                return TaskStatus::with_reason(
                    TaskState::Error,
                    None,
                    format!("cannot fetch bundle: {e}"),
                );
            }
        },
    };
    let runner = agent.runner.clone();
    let compiled = match cached {
        Some(c) => Ok(Ok(c)),
        None => tokio::task::spawn_blocking(move || runner.compile(&bytes)).await,
    };
    let compiled = match compiled {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return TaskStatus::with_reason(
                TaskState::Error,
                Some(Reason::InvalidBundle),
                e.to_string(),
            );
        }
        Err(e) => {
            return TaskStatus::with_reason(
                TaskState::Error,
                None,
                format!("compiler crashed: {e}"),
            );
        }
    };
    drop(compiling);
    let stdin = match &spec.stdin {
        None => Vec::new(),
        Some(hash) => match fetch_blob(agent, hash).await {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("cannot fetch stdin blob: {e}");
                return TaskStatus::with_reason(TaskState::Error, None, msg);
            }
        },
    };
    let mounts = spec
        .mounts
        .iter()
        .map(|m| (&m.archive, "the archive for mount", &m.guest));
    let mounts = match fetch_all(agent, mounts).await {
        Ok(b) => b,
        Err(msg) => return TaskStatus::with_reason(TaskState::Error, None, msg),
    };
    let inputs = match fetch_inputs(agent, &spec, &sources).await {
        Ok(b) => b,
        Err(status) => return *status,
    };
    let prepared = {
        let (work_dir, spec, keep, pool) = (
            agent.cfg.work_dir.clone(),
            spec.clone(),
            agent.cfg.keep_task_dirs,
            agent.dir_pool.clone(),
        );
        tokio::task::spawn_blocking(move || {
            taskdir::TaskDir::prepare(&work_dir, task, &spec, &mounts, &inputs, keep, &pool)
        })
        .await
    };
    let dir = match prepared {
        Ok(Ok(dir)) => dir,
        Ok(Err(e @ taskdir::PrepareError::OverQuota { .. })) => {
            let mut s = TaskStatus::new(TaskState::Failed);
            s.reason = Some(Reason::DiskLimit);
            s.message = Some(format!("cannot start: {e}"));
            return s;
        }
        Ok(Err(e)) => {
            return TaskStatus::with_reason(TaskState::Error, None, e.to_string());
        }
        Err(e) => {
            let msg = format!("preparing the task directory panicked: {e}");
            return TaskStatus::with_reason(TaskState::Error, None, msg);
        }
    };
    agent.report(task, TaskStatus::new(TaskState::Running));
    let mut args = vec![spec.name.clone()];
    args.extend(spec.args.iter().cloned());
    let mut env = spec.env.clone();
    for s in &spec.secret_env {
        match &s.value {
            wasmos_proto::SecretValue::Plain(v) => env.push((s.name.clone(), v.clone())),
            _ => {
                return TaskStatus::with_reason(
                    TaskState::Error,
                    Some(Reason::InvalidBundle),
                    format!("secret {} did not arrive opened", s.name),
                );
            }
        }
    }
    let mut rules = agent.cfg.egress.clone();
    rules.extend(role_egress);
    let egress = Arc::new(wasmos_exec::EgressPolicy {
        rules,
        protected: agent.protected.clone(),
    });
    let burstable = spec.qos == wasmos_proto::Qos::Burstable;
    let req = RunRequest {
        args,
        env,
        egress,
        cpu_millis: match spec.cpu_limit_millis {
            Some(limit) if burstable => limit,
            _ => spec.resources.cpu_millis,
        },
        mem_bytes: match spec.mem_limit_bytes {
            Some(limit) if burstable => limit,
            _ => spec.resources.mem_bytes,
        },
        timeout: Duration::from_millis(spec.timeout_ms),
        max_output_bytes: spec.max_output_bytes,
        truncate_output: spec.on_output_limit == OutputPolicy::Truncate,
        stdin,
        net_allow: spec.net_allow.clone(),
        net_rate: net_rate(&spec, &agent.cfg.resources),
        cpu_budget: spec.cpu_budget_ms.map(Duration::from_millis),
        preopens: dir.preopens(&spec),
        disk: Some(dir.quota(&spec)),
        usage: Some(metered.usage),
        platform: Some(metered.platform.clone()),
        burst: burstable.then(|| Burst {
            request_bytes: spec.resources.mem_bytes,
            pool: agent.memory.clone(),
        }),
    };
    let status = match agent.cfg.executor {
        Some(_) => recovery::in_executor(agent, task, &spec, &dir, req, kill).await,
        None => in_process(agent, task, &compiled, req, kill, spec.resources.mem_bytes).await,
    };
    collect(agent, &spec, dir, status, &metered.platform).await
}

/// Runs a task on this process's runner.
async fn in_process(
    agent: &Arc<Agent>,
    task: TaskId,
    compiled: &wasmos_exec::Compiled,
    req: RunRequest,
    kill: watch::Receiver<bool>,
    request_bytes: u64,
) -> TaskStatus {
    let mut waiting = kill.clone();
    let slot = tokio::select! {
        permit = agent.slots.clone().acquire_owned() => permit.ok(),
        _ = waiting.wait_for(|k| *k) => None,
    };
    let Some(_slot) = slot else {
        return TaskStatus::with_reason(TaskState::Killed, Some(Reason::Killed), "killed");
    };
    let (out_tx, mut out_rx) = mpsc::channel::<(OutputStream, Vec<u8>)>(64);
    let forward = {
        let agent = agent.clone();
        tokio::spawn(async move {
            while let Some((stream, data)) = out_rx.recv().await {
                agent.output_room(task).await;
                agent.output(task, stream, data);
            }
        })
    };
    // The request is set aside while the task runs, so no burst borrows it.
    agent.memory.reserve(request_bytes);
    let outcome = agent.runner.run(compiled, req, out_tx, kill).await;
    agent.memory.release(request_bytes);
    // All output is queued before the final status, so watchers see it first.
    let _ = forward.await;
    outcome.status
}

/// What a task made, stored or kept once it has ended (a finished task's outputs and result
/// files), then its directory emptied; its final status.
async fn collect(
    agent: &Arc<Agent>,
    spec: &TaskSpec,
    dir: taskdir::TaskDir,
    mut status: TaskStatus,
    platform: &TaskPlatform,
) -> TaskStatus {
    // Results are stored before the task is reported finished: whoever reads the final status
    // can fetch them. The files it named are opened first: one that cannot be ends it in
    // error before anything of it is stored.
    let finished = |s: &TaskStatus| s.state == TaskState::Finished && s.exit_code == Some(0);
    let named = platform.files();
    let mut opened = Vec::new();
    if finished(&status) && !named.is_empty() {
        match open_result_files(dir.scratch_root(), named).await {
            Ok(files) => opened = files,
            Err(e) => {
                status.state = TaskState::Error;
                status.message = Some(format!("cannot store its result files: {e}"));
            }
        }
    }
    if let Some(guest) = spec.outputs_dir.as_ref().filter(|_| finished(&status)) {
        // An agent that serves no other agent keeps nothing: readers elsewhere could not
        // fetch it.
        let result = if spec.outputs_on_agent && agent.peer_addr.is_some() {
            keep_outputs(agent, dir.scratch_root(), guest.clone()).await
        } else {
            store_outputs(agent, dir.scratch_root(), guest.clone()).await
        };
        match result {
            Ok(files) => status.outputs = files,
            Err(e) => {
                status.state = TaskState::Error;
                status.message = Some(format!("cannot store its outputs: {e}"));
            }
        }
    }
    if finished(&status) && !opened.is_empty() {
        match store_result_files(agent, opened).await {
            Ok(files) => status.files = files,
            Err(e) => {
                // An errored task lists nothing it made, so its tenant is granted nothing.
                status.outputs.clear();
                status.state = TaskState::Error;
                status.message = Some(format!("cannot store its result files: {e}"));
            }
        }
    }
    // Deleting a full scratch space can take a while: not on the task workers.
    // A task of the executor's: its end is written down before what it made is deleted, so a
    // restart meanwhile reports it instead of collecting from a half-emptied directory.
    let task = TaskId(platform.context().task_id);
    if agent.inner().handed.contains(&task) {
        recovery::note_end(agent, task, &status);
    }
    let _ = tokio::task::spawn_blocking(move || drop(dir)).await;
    status
}

/// What a task that requested no `net` may use each way on an agent that advertises `net`: a
/// trickle, so leaving the request out cannot take the agent's link from the tasks that asked.
pub const UNREQUESTED_NET_RATE: u64 = 64 << 10;

/// Bytes per second a task's sockets may carry each way: its `net` request; on an agent that
/// advertises no `net` (bandwidth is not managed there), unlimited.
fn net_rate(spec: &TaskSpec, agent_total: &Resources) -> Option<u64> {
    match spec.resources.scalar(wasmos_proto::NET) {
        0 if agent_total.scalar(wasmos_proto::NET) == 0 => None,
        0 => Some(UNREQUESTED_NET_RATE),
        rate => Some(rate),
    }
}

/// The inputs' bytes, in order: those other agents keep from them (a missing one ends the task
/// `input_lost`, naming the agent, so its job makes it again), the rest from the masters.
async fn fetch_inputs(
    agent: &Agent,
    spec: &TaskSpec,
    sources: &[InputSource],
) -> Result<Vec<Vec<u8>>, Box<TaskStatus>> {
    let mut out = Vec::with_capacity(spec.inputs.len());
    for i in &spec.inputs {
        let holders: Vec<&InputSource> = sources.iter().filter(|s| s.blob == i.blob).collect();
        let bytes = if holders.is_empty() {
            fetch_blob(agent, &i.blob).await.map_err(|e| {
                let msg = format!("cannot fetch input {}: {e}", i.guest);
                Box::new(TaskStatus::with_reason(TaskState::Error, None, msg))
            })?
        } else {
            agent
                .peers
                .fetch(
                    &agent.cfg.work_dir,
                    &holders,
                    agent.cfg.exec.max_component_bytes,
                )
                .await
                .map_err(|kept::Lost(e)| {
                    let mut s = TaskStatus::with_reason(
                        TaskState::Failed,
                        Some(Reason::InputLost),
                        format!("cannot fetch input {}: {e}", i.guest),
                    );
                    s.lost_input = Some(i.blob.clone());
                    Box::new(s)
                })?
        };
        out.push(bytes);
    }
    Ok(out)
}

/// Keeps the files of a task's outputs directory on this agent, for other tasks to fetch; on
/// the masters instead when they would take the kept store over its budget (a job with more
/// intermediate data than an agent keeps still finishes, at the masters' pace).
async fn keep_outputs(
    agent: &Arc<Agent>,
    scratch: std::path::PathBuf,
    guest: String,
) -> Result<Vec<OutputFile>, String> {
    let (work_dir, max, budget) = (
        agent.cfg.work_dir.clone(),
        agent.cfg.exec.max_component_bytes,
        agent.cfg.keep_max_bytes,
    );
    let (root, dir) = (scratch.clone(), guest.clone());
    let kept = tokio::task::spawn_blocking(move || {
        let files = taskdir::output_files(&root, &dir).map_err(kept::KeepError::Failed)?;
        kept::keep(&work_dir, files, max, budget)
    })
    .await
    .map_err(|e| format!("keeping the outputs panicked: {e}"))?;
    match kept {
        Ok(files) => Ok(files),
        Err(kept::KeepError::Failed(e)) => Err(e),
        Err(kept::KeepError::OverBudget) => {
            tracing::info!("kept outputs would exceed --keep-max; storing these on the masters");
            store_outputs(agent, scratch, guest).await
        }
    }
}

/// How long a task's outputs are retried while no master takes them (a failover).
const OUTPUT_UPLOAD_PATIENCE: Duration = Duration::from_secs(60);

/// Uploads the files of a task's outputs directory (`root` on the host, `guest` in the task).
async fn store_outputs(
    agent: &Arc<Agent>,
    scratch: std::path::PathBuf,
    guest: String,
) -> Result<Vec<OutputFile>, String> {
    let files = tokio::task::spawn_blocking(move || taskdir::output_files(&scratch, &guest))
        .await
        .map_err(|e| format!("listing the outputs panicked: {e}"))??;
    let mut out = Vec::new();
    for (path, host, size) in files {
        let file =
            std::fs::File::open(&host).map_err(|e| format!("cannot read output {path}: {e}"))?;
        let (blob, size) = store_file(agent, &format!("output {path}"), file, size).await?;
        out.push(OutputFile {
            path,
            blob,
            size,
            held_by: None,
        });
    }
    Ok(out)
}

/// A file a task published by name, opened: (name, guest path, file, size).
type OpenedFile = (String, String, std::fs::File, u64);

/// Opens the files a task published by name (`put-file`), as (name, guest path), in the
/// scratch space at `scratch`; the first that cannot be is the error.
async fn open_result_files(
    scratch: std::path::PathBuf,
    named: Vec<(String, String)>,
) -> Result<Vec<OpenedFile>, String> {
    tokio::task::spawn_blocking(move || {
        named
            .into_iter()
            .map(|(name, guest)| {
                let (file, size) = taskdir::result_file(&scratch, &guest)?;
                Ok((name, guest, file, size))
            })
            .collect()
    })
    .await
    .map_err(|e| format!("opening the result files panicked: {e}"))?
}

/// Uploads the files a task published by name, opened.
async fn store_result_files(
    agent: &Arc<Agent>,
    opened: Vec<OpenedFile>,
) -> Result<Vec<wasmos_proto::ResultFile>, String> {
    let mut out = Vec::with_capacity(opened.len());
    for (name, guest, file, size) in opened {
        let (blob, size) = store_file(agent, &format!("{name} ({guest})"), file, size).await?;
        out.push(wasmos_proto::ResultFile { name, blob, size });
    }
    Ok(out)
}

/// Uploads one file of a task's (`what` names it in errors), `size` bytes as listed, to the
/// masters as a data blob, retrying while no master takes it; its hash and size. A file that
/// grew since it was listed is read no further than the blob limit allows.
async fn store_file(
    agent: &Arc<Agent>,
    what: &str,
    file: std::fs::File,
    size: u64,
) -> Result<(BundleHash, u64), String> {
    // The master takes blobs up to the size of a bundle; larger ones are refused there.
    let max = agent.cfg.exec.max_component_bytes;
    let too_big = |size: u64| format!("{what} is {size} bytes, over the {max}-byte blob limit");
    if size > max {
        return Err(too_big(size));
    }
    let bytes = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut bytes)
            .map(|_| bytes)
    })
    .await
    .map_err(|e| format!("reading {what} panicked: {e}"))?
    .map_err(|e| format!("cannot read {what}: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    let hash = BundleHash::from_digest(&Sha256::digest(&bytes).into());
    let deadline = tokio::time::Instant::now() + OUTPUT_UPLOAD_PATIENCE;
    loop {
        match put_blob(agent, &hash, &bytes).await {
            Ok(()) => return Ok((hash, bytes.len() as u64)),
            // The master looked at it and said no: sending it again changes nothing.
            Err(Put::Refused(e)) => return Err(format!("{what} refused: {e}")),
            Err(Put::Lost(e)) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("cannot upload {what}: {e}"));
            }
            Err(Put::Lost(e)) => {
                tracing::debug!("{what} not stored yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Opens a side stream to the master this agent is connected to and sends its first message.
async fn side_stream(
    agent: &Agent,
    first: &AgentToMaster,
) -> Result<(wasmos_net::SendStream, wasmos_net::RecvStream), String> {
    let conn = agent
        .inner()
        .conn
        .clone()
        .ok_or("not connected to the master")?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send_frame(&mut send, first)
        .await
        .map_err(|e| e.to_string())?;
    Ok((send, recv))
}

/// Why a blob was not stored.
enum Put {
    /// The master answered no.
    Refused(String),
    /// No answer (no master, a failover): worth sending again.
    Lost(String),
}

/// Stores a blob on the master it is connected to.
async fn put_blob(agent: &Agent, hash: &BundleHash, bytes: &[u8]) -> Result<(), Put> {
    let head = AgentToMaster::PutBlob {
        hash: hash.clone(),
        size: bytes.len() as u64,
    };
    let (mut send, mut recv) = side_stream(agent, &head).await.map_err(Put::Lost)?;
    send.write_all(bytes)
        .await
        .map_err(|e| Put::Lost(e.to_string()))?;
    let _ = send.finish();
    match recv_frame::<MasterToAgent>(&mut recv).await {
        Ok(Some(MasterToAgent::Stored)) => Ok(()),
        Ok(Some(MasterToAgent::Error { message })) => Err(Put::Refused(message)),
        // The master ends the stream without an answer when it could not store the blob for
        // now (it stopped leading, no majority to copy to).
        other => Err(Put::Lost(format!("no answer ({other:?})"))),
    }
}

/// The bytes of each `(hash, what, guest path)` blob, in order; the error names the first that
/// could not be fetched.
async fn fetch_all<'a>(
    agent: &Agent,
    blobs: impl Iterator<Item = (&'a BundleHash, &'static str, &'a String)>,
) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (hash, what, guest) in blobs {
        out.push(
            fetch_blob(agent, hash)
                .await
                .map_err(|e| format!("cannot fetch {what} {guest}: {e}"))?,
        );
    }
    Ok(out)
}

/// A blob's bytes (a bundle or a stdin blob), from the local cache or downloaded from the
/// master and verified against its hash.
async fn fetch_blob(agent: &Agent, hash: &BundleHash) -> Result<Vec<u8>, String> {
    let path = agent
        .cfg
        .work_dir
        .join("bundles")
        .join(format!("{hash}.wasm"));
    if let Ok(bytes) = tokio::fs::read(&path).await
        && hex::encode(Sha256::digest(&bytes)) == hash.as_str()
    {
        return Ok(bytes);
    }
    let ask = AgentToMaster::FetchBundle { hash: hash.clone() };
    let (mut send, mut recv) = side_stream(agent, &ask).await?;
    let _ = send.finish();
    let size = match recv_frame::<MasterToAgent>(&mut recv).await {
        Ok(Some(MasterToAgent::Bundle { size })) => size,
        Ok(Some(MasterToAgent::Error { message })) => return Err(message),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let max = agent.cfg.exec.max_component_bytes;
    if size > max {
        return Err(format!(
            "bundle is {size} bytes, over this agent's {max}-byte limit"
        ));
    }
    let bytes = recv
        .read_to_end(size as usize)
        .await
        .map_err(|e| e.to_string())?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != hash.as_str() {
        return Err(format!("downloaded bytes hash to {actual}, not {hash}"));
    }
    // Caching is best effort (a failure only means the next launch downloads again); the
    // temporary file is unique because two tasks may fetch the same bundle at once.
    let cached = bytes.clone();
    let dir = agent.cfg.work_dir.join("bundles");
    let _ = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut f, &cached)?;
        f.persist(path).map_err(|e| e.error)?;
        Ok(())
    })
    .await;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmos_net::signing::{SigningKey, generate};
    use wasmos_proto::{BundleSignature, BundleTrust, TrustedKey};

    fn spec_of(bytes: &[u8]) -> TaskSpec {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        TaskSpec::new("task.wasm", BundleHash::from_digest(&digest))
    }

    /// A master whose record was forged (or that lies) cannot make the agent run bytes the
    /// role's key did not sign: the agent checks the signature against the hash its fetched
    /// bytes must have.
    #[test]
    fn a_forged_master_record_does_not_get_a_bundle_run() {
        let key = SigningKey::from_pem(generate().unwrap().0.as_bytes()).unwrap();
        let signed = spec_of(b"the component the author signed");
        let trust = |signature: Vec<u8>| BundleTrust {
            role: "acme".into(),
            keys: vec![TrustedKey {
                id: key.id(),
                public: key.public().to_vec(),
            }],
            signatures: vec![BundleSignature {
                key: key.id(),
                signature,
            }],
        };
        let good = trust(key.sign(&signed.bundle));
        assert_eq!(untrusted(&signed, Some(&good)), None);
        assert_eq!(untrusted(&signed, None), None, "no requirement, no check");
        // The record carries the author's signature, but for other bytes than the task's.
        let tampered = spec_of(b"the component someone swapped in");
        let refused = untrusted(&tampered, Some(&good)).expect("refused");
        assert_eq!(refused.state, TaskState::Error);
        assert_eq!(refused.reason, Some(Reason::InvalidBundle));
        assert!(
            refused
                .message
                .as_deref()
                .unwrap_or("")
                .contains("does not verify"),
            "{refused:?}"
        );
        // A signature field filled with anything at all.
        let junk = trust(vec![0; 64]);
        assert!(untrusted(&signed, Some(&junk)).is_some());
    }
}
