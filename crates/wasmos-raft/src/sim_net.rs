//! The in-memory network of the deterministic simulations: raft RPCs between nodes of one
//! process that are delayed, reordered, lost, or refused by a node that is down or cut off,
//! every fault drawn from one seeded generator. This crate's raft simulation and
//! `wasmos-master`'s control-plane simulation (feature `sim`) run real openraft nodes over it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, Raft};

use crate::store::run_storage_inline;
use crate::types::{NodeId, TypeConfig};

/// SplitMix64: small, seedable, and ours.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The in-memory network: who is up, who is cut off, and the fault generator.
pub struct Router {
    pub nodes: Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>,
    pub cut: Mutex<BTreeSet<NodeId>>,
    pub rng: Mutex<Rng>,
    /// Chance (percent) that a request or a reply is lost.
    pub loss: u64,
}

impl Router {
    fn delay(&self) -> Duration {
        let mut rng = self.rng.lock().unwrap();
        // Mostly quick, sometimes slow: slow ones overtake nothing but are overtaken, which is
        // how messages get reordered.
        let ms = if rng.chance(10) {
            20 + rng.below(80)
        } else {
            rng.below(5)
        };
        Duration::from_millis(ms)
    }

    fn lost(&self, from: NodeId, to: NodeId) -> bool {
        let cut = self.cut.lock().unwrap();
        cut.contains(&from) || cut.contains(&to) || self.rng.lock().unwrap().chance(self.loss)
    }

    async fn deliver<T, E, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        call: F,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error,
        F: FnOnce(Raft<TypeConfig>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError<NodeId, E>>>,
    {
        tokio::time::sleep(self.delay()).await;
        if self.lost(from, to) {
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                "request lost",
            ))));
        }
        let Some(raft) = self.nodes.lock().unwrap().get(&to).cloned() else {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                "node down",
            ))));
        };
        let reply = call(raft).await;
        tokio::time::sleep(self.delay()).await;
        if self.lost(to, from) {
            return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                "reply lost",
            ))));
        }
        reply.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(to, e)))
    }
}

pub struct SimNetwork {
    pub router: Arc<Router>,
    pub from: NodeId,
}

pub struct SimClient {
    router: Arc<Router>,
    from: NodeId,
    to: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimClient {
        SimClient {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

type Rpc<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.router
            .deliver(self.from, self.to, |r| async move {
                r.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.router
            .deliver(self.from, self.to, |r| async move {
                r.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.router
            .deliver(self.from, self.to, |r| async move { r.vote(rpc).await })
            .await
    }
}

impl Router {
    /// A network with no node yet, losing `loss` percent of requests and replies, its delays
    /// and losses drawn from `seed`.
    pub fn new(seed: u64, loss: u64) -> Router {
        Router {
            nodes: Mutex::new(BTreeMap::new()),
            cut: Mutex::new(BTreeSet::new()),
            rng: Mutex::new(Rng(seed)),
            loss,
        }
    }
}

/// Runs `run` to its end on this thread in tokio's paused time (inside a `LocalSet`, so it may
/// `spawn_local`), with storage inline and a fresh directory for its files, on tmpfs when
/// there is one (a simulation writes and fsyncs a great deal).
pub fn run_paused<T, F, Fut>(run: F) -> std::io::Result<T>
where
    F: FnOnce(std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let base = std::path::Path::new("/dev/shm");
    let dir = if base.is_dir() {
        tempfile::tempdir_in(base)?
    } else {
        tempfile::tempdir()?
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    /// Storage goes back to the blocking pool however the run ends (a panic included).
    struct Inline;
    impl Drop for Inline {
        fn drop(&mut self) {
            run_storage_inline(false);
        }
    }
    run_storage_inline(true);
    let _inline = Inline;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&runtime, run(dir.path().to_path_buf())))
}
