//! [`RaftNode`]: the master's handle on its raft group — open (or recover) the store, become
//! leader, propose commands, read the applied state, shut down.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use wasmos_proto::{ClusterInfo, MasterInfo};
use wasmos_state::{ClusterState, Command, CommandResult};

use crate::RaftError;
use crate::network::Network;
use crate::state_machine::Shared;
use crate::store::open_stores;
use crate::types::{NodeId, TypeConfig};

/// The file, inside the data directory, that holds the log, vote and snapshot.
pub const DB_FILE: &str = "raft.redb";

/// How long [`RaftNode::shutdown`] waits for openraft's tasks to release the store.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunables of a [`RaftNode`]. The defaults suit a single master that must be leader again within
/// a fraction of a second after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftOptions {
    /// How often the leader heartbeats its followers.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomized election timeout; must exceed the heartbeat interval.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout; must exceed the lower bound.
    pub election_timeout_max: Duration,
    /// Build a snapshot once this many entries were applied since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries already covered by a snapshot that are kept in the log anyway, so a follower that
    /// lags a little can catch up from the log instead of needing the whole snapshot.
    pub logs_to_keep: u64,
    /// How long [`RaftNode::open_with`] waits for this node to become leader and apply its log.
    pub leader_timeout: Duration,
    /// How long a write (or a linearizable read) waits for a majority before it fails with
    /// [`RaftError::NoQuorum`]: a leader cut off from its peers keeps believing it leads until
    /// it hears of a later term, so without a bound its callers would wait forever.
    pub quorum_timeout: Duration,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            // How fast a group fails over. openraft's followers wait a leader lease (the upper
            // bound) plus a random election timeout after the last heartbeat before they elect,
            // on ticks of 1.5 heartbeats: 300-400 ms here, so a new leader accepts writes
            // within about half a second of the old one dying. openraft also bounds every
            // AppendEntries RPC (with its entries written to the follower's disk) by the
            // heartbeat interval, so that cannot be much shorter than 50 ms: under load an RPC
            // that always times out would stall replication.
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(100),
            election_timeout_max: Duration::from_millis(200),
            // A snapshot serializes the whole cluster state; every 1000 commands keeps that cost
            // rare while bounding both the log and the replay after a restart.
            snapshot_logs_since_last: 1000,
            logs_to_keep: 200,
            leader_timeout: Duration::from_secs(10),
            // Several election timeouts: a healthy group elects a new leader well within it, so
            // a write that waits longer is on a leader that lost its majority.
            quorum_timeout: Duration::from_secs(3),
        }
    }
}

fn millis(d: Duration, name: &str) -> Result<u64, RaftError> {
    u64::try_from(d.as_millis())
        .map_err(|_| RaftError::Config(format!("{name} of {d:?} is too large")))
}

impl RaftOptions {
    /// Options whose randomized election timeout runs from `min` to twice it, with heartbeats
    /// every half of `min` (for `wasmos master --election-timeout`).
    pub fn with_election_timeout(min: Duration) -> RaftOptions {
        RaftOptions {
            heartbeat_interval: min / 2,
            election_timeout_min: min,
            election_timeout_max: min * 2,
            ..RaftOptions::default()
        }
    }

    /// The openraft configuration for these options, validated.
    pub fn to_config(&self) -> Result<Config, RaftError> {
        if self.snapshot_logs_since_last == 0 {
            return Err(RaftError::Config(
                "snapshot_logs_since_last must be at least 1".to_string(),
            ));
        }
        if self.leader_timeout.is_zero() || self.quorum_timeout.is_zero() {
            return Err(RaftError::Config(
                "leader_timeout and quorum_timeout must be positive".to_string(),
            ));
        }
        let config = Config {
            cluster_name: "wasmos".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval, "heartbeat_interval")?,
            election_timeout_min: millis(self.election_timeout_min, "election_timeout_min")?,
            election_timeout_max: millis(self.election_timeout_max, "election_timeout_max")?,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_to_keep,
            // An entry holds up to MAX_BATCH commands: a few of them make a large RPC already,
            // and one RPC must fit in a heartbeat interval (see `heartbeat_interval`).
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Config::default()
        };
        // Rejects min >= max, min <= heartbeat and the like.
        config
            .validate()
            .map_err(|e| RaftError::Config(e.to_string()))
    }
}

/// The master's handle on its raft group. Cheap to clone (everything inside is shared).
///
/// Call [`RaftNode::shutdown`] before dropping the last clone: openraft runs in background tasks
/// that keep the store (and its file lock) until told to stop.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    raft: Raft<TypeConfig>,
    shared: Shared,
    /// Lets `shutdown` wait until openraft's tasks have dropped and closed the database, so the
    /// directory can be reopened at once.
    closed: watch::Receiver<()>,
    /// Part of a multi-master group (peers are dialed over QUIC).
    multi: bool,
    quorum_timeout: Duration,
    /// The address peers reach this node at.
    addr: String,
    /// Whether a fresh store starts its group by itself (not a `--join` master).
    bootstrap: bool,
    /// Feeds [`batch_writes`]: commands proposed together while earlier ones are being written.
    proposals: mpsc::UnboundedSender<Proposal>,
}

/// A command waiting to be proposed, its lane (see [`ClusterState::lane_of`]), about how many
/// bytes it takes in an entry ([`wasmos_state::approx_bytes`]) and who waits.
type Proposal = (
    Command,
    String,
    usize,
    oneshot::Sender<Result<CommandResult, RaftError>>,
);

/// How long adding or removing a master may take (a new master catches up first).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// Most commands in one raft entry.
const MAX_BATCH: usize = 256;
/// About the most bytes of commands in one raft entry (see [`wasmos_state::approx_bytes`]):
/// with at most [`MAX_PAYLOAD_ENTRIES`] entries an AppendEntries stays near 16 MiB, and the
/// network splits one that would not fit a frame.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;
/// Most entries in one AppendEntries RPC.
const MAX_PAYLOAD_ENTRIES: u64 = 16;
/// Raft entries being written at once: while they are on their way to disk and to the
/// followers, new commands gather into the next one.
const WRITES_IN_FLIGHT: usize = 4;

/// The members of a multi-master group and this master's credentials for reaching them.
#[derive(Clone)]
pub struct Peers {
    /// A master certificate of the cluster.
    pub creds: wasmos_net::Credentials,
    /// Every member (this one included): raft id → the `host:port` its peers dial.
    pub members: BTreeMap<NodeId, String>,
    /// A fresh store: whether the lowest-numbered member initializes the group from `members`
    /// (a group started with `--peers`), or the node waits to be added to a group or told to
    /// start one ([`RaftNode::initialize_alone`]; `wasmos master --join`).
    pub bootstrap: bool,
}

impl fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn from_fatal(fatal: Fatal<NodeId>) -> RaftError {
    match fatal {
        Fatal::StorageError(e) => RaftError::Storage(e.to_string()),
        Fatal::Panicked => RaftError::Fatal("the raft core task panicked".to_string()),
        Fatal::Stopped => RaftError::Fatal("raft has been shut down".to_string()),
    }
}

impl RaftNode {
    /// Opens (or creates) `dir/raft.redb` with the default [`RaftOptions`]; see
    /// [`RaftNode::open_with`].
    pub async fn open(
        dir: &Path,
        id: NodeId,
        advertise_addr: String,
    ) -> Result<RaftNode, RaftError> {
        Self::open_with(dir, id, advertise_addr, RaftOptions::default()).await
    }

    /// Opens (or creates) `dir/raft.redb` holding the log, vote, committed index, last-purged id
    /// and the latest state-machine snapshot.
    ///
    /// - On a fresh store it initializes a single-voter group whose only member is this node
    ///   (`id`, reachable at `advertise_addr`).
    /// - On an existing store it restores the snapshot and re-applies the committed log after it,
    ///   so the state is exactly what it was before the process died (even by `kill -9`: every
    ///   log write and the committed id are fsynced before openraft acts on them).
    ///
    /// It then waits (at most `options.leader_timeout`) until this node is leader and has applied
    /// its whole log, so `read` sees everything written before a restart.
    pub async fn open_with(
        dir: &Path,
        id: NodeId,
        advertise_addr: String,
        options: RaftOptions,
    ) -> Result<RaftNode, RaftError> {
        let timeout = options.leader_timeout;
        let node = Self::create(dir, id, &advertise_addr, options, None).await?;
        node.ready(timeout).await?;
        Ok(node)
    }

    /// Opens (or creates) this master's store as member `id` of a multi-master group. A fresh
    /// group is initialized with `peers.members` by its lowest-numbered member; the others
    /// wait to hear from it. Returns at once: serve [`RaftNode::raft`]'s RPCs (see
    /// [`crate::network::serve`]) and then call [`RaftNode::ready`].
    pub async fn open_cluster(
        dir: &Path,
        id: NodeId,
        options: RaftOptions,
        peers: &Peers,
    ) -> Result<RaftNode, RaftError> {
        let addr = peers.members.get(&id).cloned().ok_or_else(|| {
            RaftError::Config(format!(
                "node {id} is not among the group's members {:?}",
                peers.members.keys().collect::<Vec<_>>()
            ))
        })?;
        Self::create(dir, id, &addr, options, Some(peers)).await
    }

    /// Opens the store, starts raft and initializes a fresh group; does not wait for a leader.
    async fn create(
        dir: &Path,
        id: NodeId,
        advertise_addr: &str,
        options: RaftOptions,
        peers: Option<&Peers>,
    ) -> Result<RaftNode, RaftError> {
        let network = match peers {
            None => Network::none(),
            Some(p) => Network::quic(&p.creds)
                .map_err(|e| RaftError::Config(format!("raft network: {e}")))?,
        };
        let members = peers.map(|p| (p.members.clone(), p.bootstrap));
        Self::create_over(dir, id, advertise_addr, options, network, members).await
    }

    /// Member `id` of a multi-master group whose RPCs go over `network`, an in-memory one
    /// of a deterministic simulation (`wasmos-master`'s control-plane simulation drives real
    /// raft nodes, write batcher included, this way). The lowest-numbered member of
    /// `members` initializes a fresh group; returns at once, like [`RaftNode::open_cluster`].
    #[cfg(any(test, feature = "sim"))]
    pub async fn open_over<N: openraft::network::RaftNetworkFactory<TypeConfig>>(
        dir: &Path,
        id: NodeId,
        options: RaftOptions,
        network: N,
        members: BTreeMap<NodeId, String>,
    ) -> Result<RaftNode, RaftError> {
        let addr = members.get(&id).cloned().unwrap_or_default();
        Self::create_over(dir, id, &addr, options, network, Some((members, true))).await
    }

    /// [`RaftNode::create`] over any network; `members` (with whether a fresh store starts
    /// the group) for a multi-master group, `None` for a single master.
    async fn create_over<N: openraft::network::RaftNetworkFactory<TypeConfig>>(
        dir: &Path,
        id: NodeId,
        advertise_addr: &str,
        options: RaftOptions,
        network: N,
        members: Option<(BTreeMap<NodeId, String>, bool)>,
    ) -> Result<RaftNode, RaftError> {
        let config = options.to_config()?;
        // The state holds every tenant's task specs: only the master's user may read it.
        wasmos_net::create_private_dir(dir)
            .map_err(|e| RaftError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let (log_store, state_machine) = open_stores(&path)
            .await
            .map_err(|e| RaftError::Storage(e.to_string()))?;
        wasmos_net::restrict(&path)
            .map_err(|e| RaftError::Storage(format!("cannot restrict {}: {e}", path.display())))?;
        let closed = log_store.closed();
        let shared = state_machine.shared();
        // `Raft::new` reads the initial state: vote, log bounds, and re-applies committed entries
        // the restored snapshot does not cover. Corrupt data surfaces here as a storage error.
        let raft = Raft::new(id, Arc::new(config), network, log_store, state_machine)
            .await
            .map_err(from_fatal)?;
        let (proposals, queue) = mpsc::unbounded_channel();
        tokio::spawn(batch_writes(raft.clone(), queue, options.quorum_timeout));
        let node = RaftNode {
            id,
            raft,
            shared,
            closed,
            multi: members.is_some(),
            quorum_timeout: options.quorum_timeout,
            addr: advertise_addr.to_string(),
            bootstrap: members.as_ref().is_none_or(|(_, b)| *b),
            proposals,
        };
        let (members, bootstrap) =
            members.unwrap_or_else(|| (BTreeMap::from([(id, advertise_addr.to_string())]), true));
        match node.start(advertise_addr, members, bootstrap, &path).await {
            Ok(()) => Ok(node),
            Err(e) => {
                // Release the store so the caller may retry; the start error is the one to report.
                if let Err(shutdown) = node.shutdown().await {
                    tracing::warn!(error = %shutdown, "shutting raft down after a failed open");
                }
                Err(e)
            }
        }
    }

    /// Initializes a fresh group (only its lowest-numbered member does) and checks this node is
    /// a voter of the group its store belongs to.
    async fn start(
        &self,
        advertise_addr: &str,
        members: BTreeMap<NodeId, String>,
        bootstrap: bool,
        path: &Path,
    ) -> Result<(), RaftError> {
        let initializer = bootstrap && members.keys().next() == Some(&self.id);
        if !self.raft.is_initialized().await.map_err(from_fatal)? && initializer {
            let n = members.len();
            let members: BTreeMap<NodeId, BasicNode> = members
                .into_iter()
                .map(|(id, addr)| (id, BasicNode::new(addr)))
                .collect();
            match self.raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(id = self.id, addr = %advertise_addr, voters = n, "initialized the raft group")
                }
                // Someone initialized it between the check and now: that is the goal anyway.
                Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(openraft::error::RaftError::APIError(e)) => {
                    return Err(RaftError::Config(e.to_string()));
                }
                Err(openraft::error::RaftError::Fatal(f)) => return Err(from_fatal(f)),
            }
        }

        let id = self.id;
        let (voters, addr) = self
            .raft
            .with_raft_state(move |st| {
                let effective = st.membership_state.effective();
                let voters: Vec<NodeId> = effective.voter_ids().collect();
                (voters, effective.get_node(&id).map(|n| n.addr.clone()))
            })
            .await
            .map_err(from_fatal)?;
        // A member of a fresh multi-master group learns the membership from the leader; a
        // learner (being added) is a member without a vote.
        let undecided = self.multi && voters.is_empty();
        if !undecided && !voters.contains(&id) && addr.is_none() {
            return Err(RaftError::Config(format!(
                "{} belongs to a raft group whose voters are {voters:?}; node {id} is not one of them",
                path.display()
            )));
        }
        if let Some(addr) = addr.filter(|a| a != advertise_addr) {
            // Peers dial the recorded address; changing it needs a membership change.
            tracing::warn!(recorded = %addr, advertised = %advertise_addr, "the raft group records another address for this node");
        }
        Ok(())
    }

    /// Waits (at most `timeout`) until the group has a leader this node knows and, on the
    /// leader, until its whole log is applied, so `read` there sees everything written before
    /// a restart. A single master waits to be leader itself.
    pub async fn ready(&self, timeout: Duration) -> Result<(), RaftError> {
        let id = self.id;
        let multi = self.multi;
        let known = self
            .wait_for(timeout, "see a leader", move |m| {
                if multi {
                    m.current_leader.is_some()
                } else {
                    m.state == ServerState::Leader && m.current_leader == Some(id)
                }
            })
            .await?;
        if known.current_leader == Some(id) {
            // Entries written before a restart but not yet known to be committed get committed
            // by the new term; wait until they are applied too.
            let last = known.last_log_index;
            self.wait_for(timeout, "apply its log", move |m| {
                m.last_applied.map(|l| l.index) >= last
            })
            .await?;
        }
        tracing::info!(id, leader = ?known.current_leader, last_log_index = ?known.last_log_index, "raft node is ready");
        Ok(())
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The leader this node knows of and the address the group records for it.
    pub fn leader_addr(&self) -> (Option<NodeId>, Option<String>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let addr = m
            .current_leader
            .and_then(|l| m.membership_config.nodes().find(|(id, _)| **id == l))
            .map(|(_, node)| node.addr.clone());
        (m.current_leader, addr)
    }

    /// Waits (at most the quorum timeout) until this node leads and has applied every entry of
    /// earlier terms: the first entry of its own term is applied. Before that its state may
    /// lack writes acknowledged by the previous leader, so it must not act on it (hand out ids,
    /// rebuild the allocator). Fails at once with [`RaftError::NotLeader`] on a follower.
    pub async fn leader_applied(&self) -> Result<(), RaftError> {
        let caught_up = |m: &RaftMetrics<NodeId, BasicNode>| {
            m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term)
        };
        {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if m.state != ServerState::Leader {
                return Err(RaftError::NotLeader {
                    leader: m.current_leader,
                });
            }
            if caught_up(&m) {
                return Ok(());
            }
        }
        let id = self.id;
        let m = self
            .wait_for(
                self.quorum_timeout,
                "apply the entries of earlier terms",
                move |m| m.state != ServerState::Leader || caught_up(m),
            )
            .await
            .map_err(|e| match e {
                RaftError::Timeout(t) => RaftError::NoQuorum(format!(
                    "master {id} leads but has not committed an entry of its term: {t}"
                )),
                other => other,
            })?;
        if m.state != ServerState::Leader {
            return Err(RaftError::NotLeader {
                leader: m.current_leader,
            });
        }
        Ok(())
    }

    /// Starts a new group whose only voter is this node (`wasmos cluster init`), for a node
    /// opened to wait (`bootstrap: false`). Others join it with [`RaftNode::add_master`].
    pub async fn initialize_alone(&self) -> Result<(), RaftError> {
        if !self.multi || self.bootstrap {
            // A `--peers` member may not have heard from its group yet: starting a group of
            // its own here would split the cluster.
            return Err(RaftError::Config(format!(
                "master {} was not started with --join; its group starts by itself",
                self.id
            )));
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(self.addr.clone()))]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => Err(
                RaftError::Config(format!("master {} already belongs to a group", self.id)),
            ),
            Err(openraft::error::RaftError::APIError(e)) => Err(RaftError::Config(e.to_string())),
            Err(openraft::error::RaftError::Fatal(f)) => Err(from_fatal(f)),
        }
    }

    /// Adds master `id` (reachable at `addr`, started to wait for this) to the group: first as a
    /// learner, which catches up from the log or a snapshot, then as a voter through a joint
    /// consensus change. Only the leader can; waits at most [`MEMBERSHIP_TIMEOUT`].
    pub async fn add_master(&self, id: NodeId, addr: String) -> Result<(), RaftError> {
        self.lead_membership()?;
        let node = BasicNode::new(addr);
        let added = async {
            self.raft
                .add_learner(id, node, true)
                .await
                .map_err(membership_error)?;
            let mut voters = self.voters();
            voters.insert(id);
            self.raft
                .change_membership(voters, false)
                .await
                .map_err(membership_error)
        };
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, added).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(RaftError::Timeout(format!(
                "master {id} did not catch up and join within {MEMBERSHIP_TIMEOUT:?}; is it running with --join?"
            ))),
        }
    }

    /// Removes master `id` from the group through a joint consensus change. The leader may
    /// remove itself: it steps down once the change is committed.
    pub async fn remove_master(&self, id: NodeId) -> Result<(), RaftError> {
        self.lead_membership()?;
        let mut voters = self.voters();
        let member = voters.remove(&id) || self.status().members.iter().any(|m| m.id == id);
        if !member {
            return Err(RaftError::Config(format!("master {id} is not a member")));
        }
        if voters.is_empty() {
            return Err(RaftError::Config(format!(
                "master {id} is the last voter; a group cannot remove its last voter"
            )));
        }
        let removed = self.raft.change_membership(voters, false);
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, removed).await {
            Ok(r) => r.map(|_| ()).map_err(membership_error),
            Err(_) => Err(RaftError::Timeout(format!(
                "the change removing master {id} did not commit within {MEMBERSHIP_TIMEOUT:?}"
            ))),
        }
    }

    /// Only the leader changes membership. Asked first: a follower that has not yet seen the
    /// last change committed would otherwise answer "already undergoing a configuration
    /// change" instead of naming the leader to ask.
    fn lead_membership(&self) -> Result<(), RaftError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(RaftError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Confirms, with a round of heartbeats to a majority, that this node still leads, and waits
    /// until it has applied everything committed before: a read of the state after this sees
    /// every write acknowledged anywhere (a linearizable read). A single master needs no round.
    pub async fn linearize(&self) -> Result<(), RaftError> {
        if !self.multi {
            return if self.is_leader() {
                Ok(())
            } else {
                Err(RaftError::NotLeader {
                    leader: self.leader(),
                })
            };
        }
        let confirmed = tokio::time::timeout(self.quorum_timeout, self.raft.ensure_linearizable())
            .await
            .map_err(|_| {
                RaftError::NoQuorum(format!(
                    "master {} could not confirm its leadership with a majority within {:?}",
                    self.id, self.quorum_timeout
                ))
            })?;
        match confirmed {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(RaftError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(openraft::error::RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(RaftError::NoQuorum(format!(
                    "master {} leads but a majority did not answer: {q}",
                    self.id
                )))
            }
            Err(openraft::error::RaftError::Fatal(f)) => Err(from_fatal(f)),
        }
    }

    /// What this node knows of its group now (as `wasmos cluster status` shows it).
    pub fn status(&self) -> ClusterInfo {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, node)| MasterInfo {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index),
            })
            .collect();
        ClusterInfo {
            node: self.id,
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            members,
        }
    }

    /// Waits until `cond` holds on the metrics, failing early if raft stops.
    async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&RaftMetrics<NodeId, BasicNode>) -> bool + Send,
    ) -> Result<RaftMetrics<NodeId, BasicNode>, RaftError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(move |m| m.running_state.is_err() || cond(m), what)
            .await
            .map_err(|e| match e {
                WaitError::Timeout(..) => RaftError::Timeout(format!(
                    "raft node {} did not {what} within {timeout:?}",
                    self.id
                )),
                WaitError::ShuttingDown => {
                    RaftError::Fatal(format!("raft shut down while waiting to {what}"))
                }
            })?;
        if let Err(fatal) = &metrics.running_state {
            return Err(from_fatal(fatal.clone()));
        }
        Ok(metrics)
    }

    /// This node's raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes a command and returns its result once it is committed and applied.
    ///
    /// `CommandResult::Rejected` is a domain answer (the state is unchanged), not an error.
    /// Errors: [`RaftError::NotLeader`] if this node lost leadership, [`RaftError::NoQuorum`] if
    /// a majority did not confirm it in time, [`RaftError::Storage`] /
    /// [`RaftError::Fatal`] if raft has stopped.
    ///
    /// Commands written concurrently share raft entries (see [`batch_writes`]): openraft appends
    /// and fsyncs each entry on its own, so one command per entry would cap the rate of writes
    /// at the rate of fsyncs.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, RaftError> {
        self.propose(cmd).await
    }

    /// Like [`RaftNode::write`], but the command is handed to the write batcher now, before
    /// the returned future is first polled: commands proposed one after another in a loop
    /// share entries in that order, and the proposer may go on and collect the results later
    /// (the offer cycle proposes a whole cycle's launches and never waits in line).
    pub fn propose(
        &self,
        cmd: Command,
    ) -> impl std::future::Future<Output = Result<CommandResult, RaftError>> + Send + 'static {
        let (done, result) = oneshot::channel();
        let lane = self.read(|s| s.lane_of(&cmd));
        let bytes = wasmos_state::approx_bytes(&cmd);
        let sent = self
            .proposals
            .send((cmd, lane, bytes, done))
            .map_err(|_| RaftError::Fatal("the write batcher stopped".to_string()));
        let (id, quorum_timeout) = (self.id, self.quorum_timeout);
        async move {
            sent?;
            tokio::time::timeout(quorum_timeout, result)
                .await
                .map_err(|_| {
                    RaftError::NoQuorum(format!(
                        "master {id} leads but a majority did not confirm the write within {quorum_timeout:?}"
                    ))
                })?
                .map_err(|_| RaftError::Fatal("the write batcher dropped a write".to_string()))?
        }
    }

    /// Reads the applied state under a lock. Keep `f` short and do not call back into this node
    /// from it: applying waits for the lock.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.shared.read().state)
    }

    /// A watch of the last applied log index: it changes whenever something new is applied, so
    /// the master's loops can `changed().await` and re-read the state.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.subscribe()
    }

    /// Events of the entries applied from index `from` on that `keep` lets through (see
    /// [`EventLog::read`](wasmos_state::EventLog::read)); wait on [`Self::subscribe`] for more.
    pub fn read_events(
        &self,
        from: u64,
        max: usize,
        keep: impl Fn(&wasmos_proto::Event) -> bool,
    ) -> wasmos_state::EventRead {
        self.shared.read().events.read(from, max, keep)
    }

    /// Whether this node currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        Self::leads(&m)
    }

    /// Whether these metrics say their node leads: in the leader state and its own leader (a
    /// leader that removed itself from the group steps down to a learner in the same term,
    /// still naming itself leader).
    pub fn leads(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> bool {
        m.state == ServerState::Leader && m.current_leader == Some(m.id)
    }

    /// The underlying openraft handle: metrics, triggers, and (for the future network server)
    /// the RPC entry points `append_entries`, `vote` and `install_full_snapshot`.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops raft and waits until its tasks have released `raft.redb`, so the directory can be
    /// reopened at once. Idempotent; every clone shares the same raft.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftError::Fatal(format!("the raft core task failed: {e}")))?;
        // The core drops the log store when it returns, but the state-machine worker and any
        // snapshot build finish a moment later, each holding the database. Nothing is ever sent
        // on `closed`: `changed()` fails once the database is closed.
        let mut closed = self.closed.clone();
        tokio::time::timeout(RELEASE_TIMEOUT, async {
            while closed.changed().await.is_ok() {}
        })
        .await
        .map_err(|_| {
            RaftError::Timeout(format!(
                "raft did not release {DB_FILE} within {RELEASE_TIMEOUT:?} of shutting down"
            ))
        })
    }
}

/// Proposes queued commands: whatever has gathered while earlier entries were being written
/// goes into one entry (a `Command::Batch` when there are several), with at most
/// [`WRITES_IN_FLIGHT`] entries on their way at once. Waiting commands queue by lane and each
/// entry takes them in turns, one lane after another, so a lane with thousands waiting (one
/// tenant's flood) delays another's next write by one entry at most, not by its whole
/// backlog. Ends when every [`RaftNode`] is dropped.
///
/// An entry holds its slot for at most `quorum_timeout`: openraft answers a write when its
/// entry is applied or truncated, but not when a snapshot installed from a later leader
/// replaces it, so a leader that was cut off with writes in flight and caught up by snapshot
/// would otherwise keep its slots for ever, and never write again (found by the
/// control-plane simulation in `wasmos-master`).
async fn batch_writes(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::UnboundedReceiver<Proposal>,
    quorum_timeout: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
    let mut lanes = Lanes::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if lanes.is_empty() {
            let Some(first) = queue.recv().await else {
                return;
            };
            lanes.push(first);
        }
        while let Ok(p) = queue.try_recv() {
            lanes.push(p);
        }
        let mut batch = lanes.take(MAX_BATCH, MAX_ENTRY_BYTES);
        // A caller that gave up (its write timed out) was told it failed: do not propose it.
        batch.retain(|(_, _, _, waiter)| !waiter.is_closed());
        if batch.is_empty() {
            continue;
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (cmd, spans) = flatten(batch);
            let result = tokio::time::timeout(quorum_timeout, propose(&raft, cmd))
                .await
                .unwrap_or_else(|_| {
                    Err(RaftError::NoQuorum(format!(
                        "an entry was not answered within {quorum_timeout:?}"
                    )))
                });
            drop(slot);
            match result {
                Ok(CommandResult::Batch(results))
                    if spans.len() > 1 || spans.first().is_some_and(|s| s.nested) =>
                {
                    for span in spans {
                        let part = results.get(span.start..span.start + span.len);
                        let r = match (span.nested, part) {
                            (true, Some(part)) => CommandResult::Batch(part.to_vec()),
                            (false, Some([one])) => one.clone(),
                            // Cannot happen (the state machine answers every command of a
                            // batch); if it did, the command is refused, not guessed at.
                            _ => CommandResult::Rejected(wasmos_state::Rejection::Invalid(
                                "the batch lost this command's result".to_string(),
                            )),
                        };
                        let _ = span.waiter.send(Ok(r));
                    }
                }
                Ok(r) => {
                    for span in spans {
                        let _ = span.waiter.send(Ok(r.clone()));
                    }
                }
                Err(e) => {
                    for span in spans {
                        let _ = span.waiter.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Where one proposal's commands sit in a raft entry, and who waits for their results.
struct Span {
    start: usize,
    len: usize,
    /// The proposal was a `Command::Batch` itself: its answer is the batch of its results.
    nested: bool,
    waiter: oneshot::Sender<Result<CommandResult, RaftError>>,
}

/// One raft entry for `batch`: its commands in order, a proposal that is itself a batch
/// spliced in (the state machine does not apply batches within batches).
fn flatten(batch: Vec<Proposal>) -> (Command, Vec<Span>) {
    let mut flat = Vec::new();
    let mut spans = Vec::new();
    for (cmd, _, _, waiter) in batch {
        let start = flat.len();
        let nested = matches!(cmd, Command::Batch(_));
        match cmd {
            Command::Batch(inner) => flat.extend(inner),
            one => flat.push(one),
        }
        spans.push(Span {
            start,
            len: flat.len() - start,
            nested,
            waiter,
        });
    }
    let cmd = if flat.len() == 1 && !spans.iter().any(|s| s.nested) {
        flat.pop().unwrap_or(Command::Batch(Vec::new()))
    } else {
        Command::Batch(flat)
    };
    (cmd, spans)
}

/// Proposals waiting, by lane, and the lanes' turn order.
#[derive(Default)]
struct Lanes {
    waiting: BTreeMap<String, std::collections::VecDeque<Proposal>>,
    turns: std::collections::VecDeque<String>,
}

impl Lanes {
    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    fn push(&mut self, p: Proposal) {
        let queue = self.waiting.entry(p.1.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(p.1.clone());
        }
        queue.push_back(p);
    }

    /// Up to `max` proposals and about `max_bytes` (at least one), one per lane in turn; a
    /// lane that still has some goes to the back of the line. Within a lane, first come first
    /// served.
    fn take(&mut self, max: usize, max_bytes: usize) -> Vec<Proposal> {
        let mut out: Vec<Proposal> = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max {
            let Some(lane) = self.turns.pop_front() else {
                break;
            };
            let Some(queue) = self.waiting.get_mut(&lane) else {
                continue;
            };
            let next = queue.front().map_or(0, |p| p.2);
            if !out.is_empty() && bytes.saturating_add(next) > max_bytes {
                // Full: this lane keeps its turn for the next entry.
                self.turns.push_front(lane);
                break;
            }
            if let Some(p) = queue.pop_front() {
                bytes = bytes.saturating_add(p.2);
                out.push(p);
            }
            if queue.is_empty() {
                self.waiting.remove(&lane);
            } else {
                self.turns.push_back(lane);
            }
        }
        out
    }
}

/// One raft entry, proposed and waited for until applied.
async fn propose(raft: &Raft<TypeConfig>, cmd: Command) -> Result<CommandResult, RaftError> {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok(resp.data),
        Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(RaftError::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(RaftError::Fatal(format!(
                "a command write failed as a membership change: {e}"
            )))
        }
        Err(openraft::error::RaftError::Fatal(f)) => Err(from_fatal(f)),
    }
}

fn membership_error(
    e: openraft::error::RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
) -> RaftError {
    match e {
        openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            RaftError::NotLeader {
                leader: f.leader_id,
            }
        }
        openraft::error::RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftError::Config(e.to_string())
        }
        openraft::error::RaftError::Fatal(f) => from_fatal(f),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod lane_tests {
    use super::*;

    fn proposal(
        lane: &str,
        n: u64,
    ) -> (
        Proposal,
        oneshot::Receiver<Result<CommandResult, RaftError>>,
    ) {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::SetFailoverTimeout {
            framework: wasmos_proto::FrameworkId(n),
            failover_timeout_ms: 0,
        };
        ((cmd, lane.to_string(), 256, tx), rx)
    }

    fn ids(batch: &[Proposal]) -> Vec<u64> {
        batch
            .iter()
            .map(|(c, _, _, _)| match c {
                Command::SetFailoverTimeout { framework, .. } => framework.0,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn a_proposal_that_is_a_batch_is_spliced_into_the_entry() {
        let (a, _ra) = proposal("x", 1);
        let (b, _rb) = proposal("x", 2);
        let (c, _rc) = proposal("y", 3);
        let (tx, _rd) = oneshot::channel();
        let nested = (Command::Batch(vec![b.0, c.0]), String::new(), 512, tx);
        let (d, _re) = proposal("y", 4);
        let (cmd, spans) = flatten(vec![a, nested, d]);
        let Command::Batch(flat) = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(flat.len(), 4, "no batch within the batch");
        let shape: Vec<(usize, usize, bool)> =
            spans.iter().map(|s| (s.start, s.len, s.nested)).collect();
        assert_eq!(shape, vec![(0, 1, false), (1, 2, true), (3, 1, false)]);
        // A lone batch stays a batch, so its caller gets a batch of results back.
        let (tx, _rf) = oneshot::channel();
        let (e, _rg) = proposal("x", 5);
        let (cmd, spans) = flatten(vec![(Command::Batch(vec![e.0]), String::new(), 256, tx)]);
        assert!(matches!(cmd, Command::Batch(ref v) if v.len() == 1));
        assert!(spans[0].nested);
    }

    #[test]
    fn an_entry_closes_before_its_byte_budget_but_always_takes_one() {
        let mut lanes = Lanes::default();
        let mut keep = Vec::new();
        for (lane, n, bytes) in [("a", 1, 600 << 10), ("b", 2, 600 << 10), ("a", 3, 5 << 20)] {
            let ((cmd, l, _, tx), rx) = proposal(lane, n);
            lanes.push((cmd, l, bytes, tx));
            keep.push(rx);
        }
        assert_eq!(ids(&lanes.take(256, 1 << 20)), vec![1]);
        assert_eq!(ids(&lanes.take(256, 1 << 20)), vec![2]);
        assert_eq!(
            ids(&lanes.take(256, 1 << 20)),
            vec![3],
            "one too large goes alone"
        );
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_flooding_lane_does_not_delay_another_beyond_one_entry() {
        let mut lanes = Lanes::default();
        let mut keep = Vec::new();
        for n in 0..1000 {
            let (p, rx) = proposal("evil", n);
            lanes.push(p);
            keep.push(rx);
        }
        let (p, rx) = proposal("acme", 5000);
        lanes.push(p);
        keep.push(rx);
        let first = lanes.take(4, usize::MAX);
        // In turns: evil's oldest, then acme's only one, then evil's next.
        assert_eq!(ids(&first), vec![0, 5000, 1, 2]);
        let rest = lanes.take(usize::MAX, usize::MAX);
        assert_eq!(rest.len(), 997);
        assert!(
            ids(&rest).windows(2).all(|w| w[0] < w[1]),
            "each lane in order"
        );
        assert!(lanes.is_empty());
    }
}
