//! The master daemon: accepts agents and clients over QUIC + mTLS, records every durable change
//! through Raft, places pending tasks on agents, stores bundles and task output.

mod admission;
mod agents;
mod api;
mod audit;
mod blobs;
mod bundles;
mod children;
mod client;
mod events;
mod frameworks;
mod jobs;
mod leadership;
mod logs;
mod metrics;
mod offers;
mod peers;
mod policy;
mod renewal;
mod replies;
mod retention;
mod revocation;
mod scheduler;
mod signing;
mod usage;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use api::{
    Api, EVENT_HEARTBEAT, EventFeed, EventQuery, Feed, METRICS_CONTENT_TYPE, OutputFeed,
};
pub use frameworks::{FrameworkSession, Frameworks};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wasmos_net::{Credentials, Identity};
use wasmos_proto::{AgentId, MasterToAgent, alpn};
use wasmos_raft::RaftNode;
pub use wasmos_raft::RaftOptions;
use wasmos_state::{ClusterState, Command, CommandResult};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Net(#[from] wasmos_net::NetError),
    #[error("raft: {0}")]
    Raft(#[from] wasmos_raft::RaftError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub node_id: u64,
    /// Largest bundle a client may upload.
    pub max_bundle_bytes: u64,
    pub heartbeat_interval: Duration,
    /// How long an agent may go without a heartbeat before it is declared lost, with its
    /// tasks.
    pub agent_timeout: Duration,
    /// How often an idle framework stream carries a `Heartbeat`.
    pub framework_heartbeat: Duration,
    /// How often the offer cycle runs when nothing happens (events run it sooner).
    pub offer_interval: Duration,
    /// The masters of a multi-master group (this one included): raft id → the `host:port` its
    /// peers reach it at. `None` runs a single master.
    pub peers: Option<BTreeMap<u64, String>>,
    /// Raft timings (election timeout, heartbeats) and bounds.
    pub raft: wasmos_raft::RaftOptions,
    /// With `peers` holding only this master: do not start a group; wait to be added to one
    /// (`wasmos cluster join`) or told to start one (`wasmos cluster init`).
    pub join: bool,
    pub tenancy: TenancyConfig,
    /// The offer allocator's tunables, among them the least CPU and memory an offer carries
    /// (Mesos' `min_allocatable_resources`): lower it for tasks smaller than the default 10m
    /// and 32 MiB, which an agent's leftovers below it could otherwise never hold.
    pub allocator: wasmos_alloc::Config,
    /// Renewing certificates for the callers that ask (`wasmos cert renew`, agents before
    /// their certificate expires); `None`: this master renews none.
    pub renewal: Option<Renewal>,
    /// Where this master's own certificate, key and trusted CAs are kept: given, the master
    /// renews its certificate two thirds into its life (signing it itself with `renewal`'s CA
    /// key, else asking a peer master that holds one) and writes the new one there.
    pub cert_files: Option<wasmos_net::CredentialFiles>,
}

/// What a master renews certificates with.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The private key of one of the CAs the master trusts, read at each renewal (so a new
    /// one applies without a restart); the CA whose key it is signs.
    pub ca_key: PathBuf,
    /// How long a renewed certificate is valid.
    pub lifetime: Duration,
}

/// What keeps tenants apart over time: sealed secrets, retention, fair admission.
#[derive(Debug, Clone)]
pub struct TenancyConfig {
    /// The key that seals tasks' secrets in the replicated state (64 hex digits), created if
    /// missing; every master of a group needs the same file. `None`: `<data>/secrets.key`.
    pub secrets_key: Option<PathBuf>,
    /// How long ended tasks, ended jobs and unreferenced blobs are kept.
    pub retention: Duration,
    /// Most ended tasks kept, whatever their age.
    pub retention_count: u64,
    /// Writes (submissions, uploads, kills...) one tenant may make per second, sustained.
    pub tenant_write_rate: u32,
    /// Reads (lists, shows, log reads, blob downloads) one tenant may make per second.
    pub tenant_read_rate: u32,
    /// Scheduler calls one tenant's frameworks may make per second, together.
    pub tenant_framework_call_rate: u32,
    /// `logs -f` streams one tenant may hold open at once.
    pub tenant_follows: u32,
    /// How long a waiting task of a role below its guarantee waits before others' tasks are
    /// preempted for it.
    pub preemption_grace: Duration,
    /// What the audit log records, and for how long.
    pub audit: AuditConfig,
}

/// The audit log's settings (see `audit.rs`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Whether calls are recorded at all.
    pub enabled: bool,
    /// Whether reads are recorded too (changes and refusals always are, when enabled).
    pub reads: bool,
    /// How long entries are kept.
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            reads: false,
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            secrets_key: None,
            retention: Duration::from_secs(24 * 3600),
            retention_count: 10_000,
            tenant_write_rate: 200,
            tenant_read_rate: 1000,
            tenant_framework_call_rate: 1000,
            tenant_follows: 64,
            preemption_grace: Duration::from_secs(30),
            audit: AuditConfig::default(),
        }
    }
}

impl MasterConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        MasterConfig {
            data_dir,
            listen,
            node_id: 1,
            max_bundle_bytes: 64 << 20,
            heartbeat_interval: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(15),
            framework_heartbeat: Duration::from_secs(5),
            offer_interval: Duration::from_secs(1),
            peers: None,
            raft: wasmos_raft::RaftOptions::default(),
            join: false,
            tenancy: TenancyConfig::default(),
            allocator: wasmos_alloc::Config::default(),
            renewal: None,
            cert_files: None,
        }
    }
}

/// A connected agent: where to send it messages, and which connection that is (a reconnect
/// replaces the entry; the old session must not remove the new one when it ends).
pub(crate) struct AgentLink {
    pub conn_id: usize,
    /// To end a session whose agent stopped heartbeating but whose connection lingers.
    pub conn: wasmos_net::Connection,
    pub tx: mpsc::UnboundedSender<MasterToAgent>,
    pub last_seen_ms: u64,
}

pub(crate) struct Shared {
    pub cfg: MasterConfig,
    pub raft: RaftNode,
    pub bundles: bundles::BundleStore,
    /// Connections to the other masters, for bundle blobs.
    pub peers: peers::PeerLinks,
    pub logs: logs::LogStore,
    pub agents: Mutex<BTreeMap<AgentId, AgentLink>>,
    /// When each registered but unconnected agent was last heard from (master start for those
    /// never seen since); past `agent_timeout` its tasks are lost.
    pub disconnected: Mutex<BTreeMap<AgentId, std::time::Instant>>,
    /// Agents whose registration is under way (its write, its pending updates' writes), by
    /// how many sessions register each: the reaper leaves them alone, since its verdict would
    /// name the new registration and end the tasks it is about to be sent.
    pub registering: Mutex<BTreeMap<AgentId, usize>>,
    /// Tells the offer cycle what changed.
    pub events: mpsc::UnboundedSender<offers::Event>,
    /// The last task id handed out. Ids are given before the command that creates the task is
    /// proposed (an accept must name its tasks before they are committed), so client
    /// submissions and framework launches draw from this one counter.
    pub last_task_id: std::sync::atomic::AtomicU64,
    pub started: std::time::Instant,
    /// Seals and opens tasks' secrets.
    pub secrets: wasmos_net::seal::SecretsKey,
    /// Per-tenant admission of writes.
    pub admission: admission::Admission,
    pub refusals: wasmos_net::Refusals,
    /// Per tenant: bytes it stores in the replicated state and its quota, and when counted.
    storage_cache: Mutex<std::collections::HashMap<String, StorageFigures>>,
    /// Per tenant: bytes of uploads under way (see [`Shared::reserve_upload`]).
    uploads: Mutex<std::collections::HashMap<String, u64>>,
    /// The revocations every handshake of this master checks (QUIC here, HTTPS through
    /// [`Master::revocations`]), kept equal to the replicated ones.
    pub revocations: wasmos_net::RevocationList,
    /// The connections served, to close those of a certificate revoked while they last.
    live: wasmos_net::LiveConnections,
    /// Paces the audit entries recorded without a write, per caller.
    audit_pace: audit::Pace,
    /// Wakes the job host when a job was submitted, so it starts at once, not at its next
    /// poll (up to 300 ms later).
    pub jobs_changed: tokio::sync::Notify,
    /// This master's credentials: the CA set in force is what renewals are signed under.
    pub creds: Credentials,
    /// Latencies measured as they happen, for `/metrics`.
    pub metrics: metrics::Metrics,
    /// Tasks' usage over time, from the heartbeats of the agents connected here.
    usage: Mutex<usage::UsageHistory>,
    /// Which agents wait for which spawned tasks to end.
    pub(crate) children: children::Watches,
}

/// An agent's registration under way (see [`Shared::registering`]); ends when dropped.
pub(crate) struct Registering {
    shared: Arc<Shared>,
    agent: AgentId,
}

impl Drop for Registering {
    fn drop(&mut self) {
        let mut map = self.shared.registering();
        if let Some(n) = map.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.agent);
            }
        }
    }
}

impl Shared {
    pub fn agents(&self) -> MutexGuard<'_, BTreeMap<AgentId, AgentLink>> {
        // A poisoned lock means a panic elsewhere already; the map itself is still consistent
        // (every update is a single insert or remove).
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `cmd`; the first write of an audited call carries the call's entry with it
    /// (see `audit.rs`).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, wasmos_raft::RaftError> {
        self.propose(cmd).await
    }

    /// Hands `cmd` to the write batcher now; the future yields its result (see
    /// [`wasmos_raft::RaftNode::propose`]).
    pub fn propose(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<CommandResult, wasmos_raft::RaftError>> + Send + 'static
    {
        let written = self.raft.propose(audit::with_call(cmd));
        let metrics = self.metrics.clone();
        let start = std::time::Instant::now();
        async move {
            let result = written.await;
            metrics.raft_write(start.elapsed());
            result
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.raft.read(f)
    }

    pub fn new_task_id(&self) -> wasmos_proto::TaskId {
        use std::sync::atomic::Ordering::Relaxed;
        // Ids handed out by earlier leaders are in the replicated state: a master that just
        // became leader must not hand them out again.
        let recorded = self.read(|s| s.next_task_id);
        self.last_task_id.fetch_max(recorded, Relaxed);
        wasmos_proto::TaskId(self.last_task_id.fetch_add(1, Relaxed) + 1)
    }

    pub fn offer_event(&self, ev: offers::Event) {
        // Fails only while the master shuts down.
        let _ = self.events.send(ev);
    }

    /// Records a heartbeat's per-task usage, of the tasks the state places on `agent` and not
    /// ended (an agent speaks for its own tasks only); returns the progress they reported,
    /// for the caller to record in the state.
    pub(crate) fn record_usage(
        &self,
        agent: &AgentId,
        samples: Vec<wasmos_proto::TaskSample>,
    ) -> Vec<(wasmos_proto::TaskId, wasmos_proto::TaskProgress)> {
        if samples.is_empty() {
            return Vec::new();
        }
        // An agent is not trusted to keep to the bound, nor to name each task once.
        let samples: BTreeMap<_, _> = samples
            .into_iter()
            .take(wasmos_proto::MAX_TASK_SAMPLES)
            .map(|s| (s.task, s))
            .collect();
        // In one look at the state: the samples of its own live tasks, and the tasks it runs
        // that must stop. Those are tasks the cluster has ended (killed while their launch was
        // on its way) or forgotten, which would run on resources counted free, and live
        // children whose parent has ended (the kill sent then may have been lost, or come
        // before their launch): no child outlives its parent. On a drained agent every task
        // must stop: one its drain missed (launched after it, a kill lost) is stopped here.
        let (own, stop) = self.read(|s| {
            let mut own = Vec::new();
            let mut stop = Vec::new();
            let draining = s.agents.get(agent).is_some_and(|a| a.draining);
            for x in samples.into_values() {
                match s.tasks.get(&x.task) {
                    Some(t) if t.agent.as_ref() != Some(agent) => {}
                    Some(t) if !t.status.state.is_terminal() => {
                        let orphan = t.spec.lineage.is_some_and(|l| {
                            s.tasks
                                .get(&l.parent)
                                .is_none_or(|p| p.status.state.is_terminal())
                        });
                        if orphan {
                            stop.push((x.task, Some(wasmos_proto::Reason::ParentEnded)));
                        } else if draining {
                            stop.push((x.task, Some(wasmos_proto::Reason::Maintenance)));
                        }
                        own.push(x);
                    }
                    _ => stop.push((x.task, None)),
                }
            }
            (own, stop)
        });
        for (task, reason) in stop {
            if reason.is_none() {
                tracing::info!(%agent, %task, "agent runs a task that has ended; killing it");
            }
            self.send_to_agent(agent, MasterToAgent::Kill { task, reason });
        }
        let progress = own
            .iter()
            .filter_map(|s| Some((s.task, s.progress.clone()?)))
            .collect();
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(now_ms(), own);
        progress
    }

    pub(crate) fn forget_usage(&self) {
        *self
            .usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Default::default();
    }

    /// A task's usage over time (the caller checked that its caller may see the task).
    pub(crate) fn task_usage(&self, task: wasmos_proto::TaskId) -> Vec<wasmos_proto::UsageSample> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task)
    }

    pub fn touch(&self, agent: &AgentId) {
        if let Some(link) = self.agents().get_mut(agent) {
            link.last_seen_ms = now_ms();
        }
    }

    fn disconnected(&self) -> MutexGuard<'_, BTreeMap<AgentId, std::time::Instant>> {
        self.disconnected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `agent` went away, last heard from at `last_seen_ms`.
    pub fn note_disconnect(&self, agent: &AgentId, last_seen_ms: u64) {
        let silent = Duration::from_millis(now_ms().saturating_sub(last_seen_ms));
        let now = std::time::Instant::now();
        let since = now.checked_sub(silent).unwrap_or(now);
        self.disconnected().insert(agent.clone(), since);
    }

    pub fn forget_disconnect(&self, agent: &AgentId) {
        self.disconnected().remove(agent);
    }

    pub(crate) fn registering(&self) -> MutexGuard<'_, BTreeMap<AgentId, usize>> {
        self.registering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `agent` as registering until the guard is dropped.
    pub fn start_registering(self: &Arc<Self>, agent: &AgentId) -> Registering {
        *self.registering().entry(agent.clone()).or_default() += 1;
        Registering {
            shared: self.clone(),
            agent: agent.clone(),
        }
    }

    /// How long `agent` has been silent (since master start if never seen by this master).
    pub fn gone_for(&self, agent: &AgentId) -> std::time::Duration {
        let since = self
            .disconnected()
            .get(agent)
            .copied()
            .unwrap_or(self.started);
        since.elapsed()
    }

    /// Sends `task` to `agent` with its secrets opened and its role's egress rules; false if
    /// the agent is not connected (or the secrets do not open: the task is then failed).
    pub fn launch(
        &self,
        agent: &AgentId,
        task: wasmos_proto::TaskId,
        spec: wasmos_proto::TaskSpec,
    ) -> bool {
        let msg = self.read(|s| policy::launch_message(&self.secrets, s, task, spec));
        match msg {
            Ok(msg) => self.send_to_agent(agent, msg),
            Err(e) => {
                tracing::error!(%task, "cannot launch: {e}");
                false
            }
        }
    }

    pub fn send_to_agent(&self, agent: &AgentId, msg: MasterToAgent) -> bool {
        self.agents()
            .get(agent)
            .is_some_and(|link| link.tx.send(msg).is_ok())
    }
}

impl Shared {
    /// What `tenant` stores in the replicated state (blobs and task specs) and its storage
    /// quota; with `cached`, as counted at most a second ago, so a flood of output chunks does
    /// not rescan the state for each.
    fn stored_in_state(&self, tenant: &str, cached: bool) -> (u64, u64) {
        let fresh = || self.read(|s| (s.stored_by(tenant), s.storage_quota(tenant)));
        if !cached {
            return fresh();
        }
        let mut cache = self
            .storage_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() > 10_000 {
            cache.clear();
        }
        match cache.get(tenant) {
            Some((at, figures)) if at.elapsed() < std::time::Duration::from_secs(1) => *figures,
            _ => {
                let figures = fresh();
                cache.insert(tenant.to_string(), (std::time::Instant::now(), figures));
                figures
            }
        }
    }

    /// What `tenant` stores (the replicated state's count, its logs on this master's disk, and
    /// `uploading` bytes under way) and its storage quota.
    fn held_by(&self, tenant: &str, cached: bool, uploading: u64) -> (u64, u64) {
        let (state, quota) = self.stored_in_state(tenant, cached);
        let held = state
            .saturating_add(self.logs.used_by(tenant))
            .saturating_add(uploading);
        (held, quota)
    }

    fn uploading(uploads: &std::collections::HashMap<String, u64>, tenant: &str) -> u64 {
        uploads.get(tenant).copied().unwrap_or(0)
    }

    /// What `tenant` stores, uploads under way included, and its storage quota.
    pub(crate) fn storage_of(&self, tenant: &str, cached: bool) -> (u64, u64) {
        let uploading = Self::uploading(
            &self
                .uploads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            tenant,
        );
        self.held_by(tenant, cached, uploading)
    }

    /// Refuses `adding` more bytes for `tenant` past its storage quota, with the figures.
    pub(crate) fn check_storage(&self, tenant: &str, adding: u64) -> Result<(), String> {
        let (held, quota) = self.storage_of(tenant, false);
        quota_refusal(tenant, held, quota, adding)
    }

    /// Holds `size` bytes of `tenant`'s quota for an upload under way, so concurrent uploads
    /// cannot each pass the check and together go past it; released when the guard drops.
    pub(crate) fn reserve_upload(
        self: &Arc<Self>,
        tenant: &str,
        size: u64,
    ) -> Result<UploadHold, String> {
        let mut uploads = self
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked under the lock that records the hold: two uploads cannot both fit.
        let (held, quota) = self.held_by(tenant, false, Self::uploading(&uploads, tenant));
        quota_refusal(tenant, held, quota, size)?;
        *uploads.entry(tenant.to_string()).or_default() += size;
        Ok(UploadHold {
            shared: self.clone(),
            tenant: tenant.to_string(),
            size,
        })
    }
}

/// The refusal of `adding` bytes past a storage quota, with the figures.
fn quota_refusal(tenant: &str, held: u64, quota: u64, adding: u64) -> Result<(), String> {
    if held.saturating_add(adding) <= quota {
        return Ok(());
    }
    Err(format!(
        "tenant {tenant} stores {} (blobs, task specs, logs and uploads under way) of its {} storage quota; {} more does not fit (wait for retention, or ask an operator for `wasmos role set {tenant} --storage-quota`)",
        wasmos_proto::format_bytes(held),
        wasmos_proto::format_bytes(quota),
        wasmos_proto::format_bytes(adding)
    ))
}

/// When a tenant's stored bytes were counted, then what it stores and its quota.
type StorageFigures = (std::time::Instant, (u64, u64));

/// A share of a tenant's storage quota held by an upload under way.
pub(crate) struct UploadHold {
    shared: Arc<Shared>,
    tenant: String,
    size: u64,
}

impl Drop for UploadHold {
    fn drop(&mut self) {
        let mut uploads = self
            .shared
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = uploads.get_mut(&self.tenant) {
            *n = n.saturating_sub(self.size);
            if *n == 0 {
                uploads.remove(&self.tenant);
            }
        }
    }
}

/// Milliseconds since the Unix epoch: the time stamped into commands the leader proposes.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A running master. Dropping it does not stop it; call `shutdown`.
pub struct Master {
    addr: SocketAddr,
    endpoint: wasmos_net::Endpoint,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Master {
    pub async fn start(cfg: MasterConfig, creds: &Credentials) -> Result<Master, MasterError> {
        let io = |what, path: &PathBuf| {
            let path = path.clone();
            move |source| MasterError::Io { what, path, source }
        };
        // Task specs, logs and blobs of every tenant: readable by the master's user only.
        wasmos_net::create_private_dir(&cfg.data_dir)
            .map_err(io("cannot create", &cfg.data_dir))?;
        let key_path = cfg
            .tenancy
            .secrets_key
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("secrets.key"));
        let secrets = wasmos_net::seal::SecretsKey::load_or_create(&key_path).map_err(|e| {
            MasterError::Io {
                what: "cannot use the secrets key",
                path: key_path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let bundles = bundles::BundleStore::open(cfg.data_dir.join("bundles"))
            .map_err(io("cannot open bundle store", &cfg.data_dir))?;
        let logs = logs::LogStore::open(cfg.data_dir.join("logs"))
            .map_err(io("cannot open log store", &cfg.data_dir))?;
        // Every handshake checks the replicated revocations (filled in once raft is open).
        let revocations = wasmos_net::RevocationList::default();
        let creds = &creds.clone().with_revocations(revocations.clone());
        let endpoint = wasmos_net::server_endpoint(
            cfg.listen,
            creds,
            &[
                alpn::AGENT,
                alpn::CLIENT,
                alpn::FRAMEWORK,
                alpn::RAFT,
                alpn::PEER,
            ],
        )?;
        let addr = endpoint
            .local_addr()
            .map_err(io("cannot read bound address of", &cfg.data_dir))?;
        let raft_dir = cfg.data_dir.join("raft");
        let raft = match &cfg.peers {
            None => {
                RaftNode::open_with(&raft_dir, cfg.node_id, addr.to_string(), cfg.raft.clone())
                    .await?
            }
            Some(members) => {
                let peers = wasmos_raft::Peers {
                    creds: creds.clone(),
                    members: members.clone(),
                    bootstrap: !cfg.join,
                };
                RaftNode::open_cluster(&raft_dir, cfg.node_id, cfg.raft.clone(), &peers).await?
            }
        };
        let peers = peers::PeerLinks::new(cfg.peers.as_ref().map(|_| creds))?;
        let (events, events_rx) = mpsc::unbounded_channel();
        let last_task_id = raft.read(|s| s.next_task_id);
        let shared = Arc::new(Shared {
            cfg,
            raft,
            bundles,
            peers,
            logs,
            agents: Mutex::new(BTreeMap::new()),
            disconnected: Mutex::new(BTreeMap::new()),
            registering: Mutex::new(BTreeMap::new()),
            events,
            last_task_id: std::sync::atomic::AtomicU64::new(last_task_id),
            started: std::time::Instant::now(),
            secrets,
            admission: admission::Admission::default(),
            refusals: wasmos_net::Refusals::default(),
            storage_cache: Mutex::default(),
            jobs_changed: tokio::sync::Notify::new(),
            creds: creds.clone(),
            metrics: Default::default(),
            usage: Default::default(),
            uploads: Mutex::default(),
            revocations,
            live: wasmos_net::LiveConnections::default(),
            audit_pace: audit::Pace::default(),
            children: Default::default(),
        });
        // The state was loaded when raft opened: the list is right before the first handshake.
        shared
            .revocations
            .set(shared.raft.read(revocation::revoked_of));
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(endpoint.clone(), shared.clone()));
        if shared.cfg.peers.is_some() {
            // Peers reach this raft through the accept loop, so only now can a leader emerge.
            let wait = shared.cfg.raft.leader_timeout;
            if let Err(e) = shared.raft.ready(wait).await {
                tracing::warn!("no raft leader yet ({e}); serving as a follower until there is");
            }
        }
        tasks.spawn(leadership::run(shared.clone(), events_rx));
        tasks.spawn(retention::run(shared.clone()));
        tasks.spawn(revocation::follow(shared.clone()));
        // The last step of a CA rollover ends the sessions of certificates the old CA signed.
        let holder = shared.clone();
        tasks.spawn(async move { holder.creds.close_distrusted(&holder.live).await });
        if let Some(files) = shared.cfg.cert_files.clone() {
            tasks.spawn(renewal::renew_own(shared.clone(), files));
        }
        tracing::info!(%addr, "master listening");
        Ok(Master {
            addr,
            endpoint,
            shared,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The revocation list this master follows, for its HTTPS acceptor.
    pub fn revocations(&self) -> wasmos_net::RevocationList {
        self.shared.revocations.clone()
    }

    /// The handle the HTTPS front end answers client requests and event streams through.
    pub fn api(&self) -> Api {
        Api {
            shared: self.shared.clone(),
        }
    }

    /// Framework sessions, for the HTTPS/JSON API.
    pub fn frameworks(&self) -> frameworks::Frameworks {
        frameworks::Frameworks {
            shared: self.shared.clone(),
        }
    }

    pub async fn shutdown(mut self) {
        self.endpoint.close(0u32.into(), b"master shutting down");
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        self.endpoint.wait_idle().await;
    }
}

async fn accept_loop(endpoint: wasmos_net::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let refused = |why: &str| {
                if let Some(skipped) = shared.refusals.admit(remote.ip()) {
                    tracing::warn!(%remote, skipped, "refused connection: {why}");
                }
            };
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    refused(&wasmos_net::describe(&e));
                    return;
                }
            };
            let identity = match wasmos_net::peer_identity(&conn) {
                Ok(id) => id,
                Err(e) => {
                    refused(&e.to_string());
                    conn.close(wasmos_net::REFUSED.into(), e.to_string().as_bytes());
                    return;
                }
            };
            let holder = shared.clone();
            let Some(_live) = holder.live.register(&conn, &holder.revocations) else {
                refused("certificate revoked");
                return;
            };
            let alpn = wasmos_net::negotiated_alpn(&conn);
            match (alpn.as_deref(), &identity) {
                (Some(alpn::AGENT), Identity::Agent(name)) => {
                    agents::serve(shared, conn, name.clone()).await
                }
                (Some(alpn::CLIENT), Identity::Operator(_) | Identity::Tenant { .. }) => {
                    client::serve(shared, conn, identity).await
                }
                (Some(alpn::FRAMEWORK), Identity::Operator(_) | Identity::Tenant { .. }) => {
                    frameworks::serve(shared, conn, identity).await
                }
                (Some(alpn::RAFT), Identity::Master(_)) => {
                    wasmos_raft::serve(shared.raft.raft().clone(), conn).await
                }
                (Some(alpn::PEER), Identity::Master(_)) => peers::serve(shared, conn).await,
                _ => {
                    let msg = format!("{identity} may not use this channel");
                    refused(&msg);
                    conn.close(wasmos_net::REFUSED.into(), msg.as_bytes());
                }
            }
        });
    }
}
