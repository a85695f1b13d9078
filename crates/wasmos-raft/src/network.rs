//! The raft network. The group has a single voter for now, so there is never anyone to talk to:
//! every RPC fails as `Unreachable` with "multi-master replication not enabled yet". openraft
//! treats `Unreachable` as a transient condition (it backs off and retries), which is the right
//! behaviour should a peer ever appear in the membership before the real network exists.
//!
//! Multi-master replication (QUIC via `wasmos-net`, ALPN `wasmos_proto::alpn::RAFT` =
//! `wasmos-raft/1`) replaces this module:
//! a factory that dials `BasicNode::addr` in `new_client`, and a server side that feeds incoming
//! RPCs to `RaftNode::raft()` (`append_entries`, `vote`, `install_full_snapshot`). Nothing else
//! in the crate depends on the network type.

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{NodeId, TypeConfig};

/// Creates a [`PeerClient`] per peer. Holds no state today.
#[derive(Debug, Clone, Default)]
pub struct Network;

/// The error every RPC to a peer returns until multi-master replication exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("multi-master replication not enabled yet: cannot reach raft node {target} at {addr}")]
pub struct ReplicationDisabled {
    /// The peer the RPC was for.
    pub target: NodeId,
    /// The address it advertised.
    pub addr: String,
}

/// A (never connected) client for one peer.
#[derive(Debug, Clone)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let err = ReplicationDisabled {
            target: self.target,
            addr: self.addr.clone(),
        };
        RPCError::Unreachable(Unreachable::new(&err))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
