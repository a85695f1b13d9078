//! The master's durable state: an openraft group replicating `wasmos_state::ClusterState`, with
//! its log, vote and snapshots stored in one redb file (`<dir>/raft.redb`).
//!
//! [`RaftNode`] is the handle the master uses: [`RaftNode::write`] proposes a
//! [`wasmos_state::Command`] and returns its result once it is committed and applied,
//! [`RaftNode::read`] looks at the applied [`wasmos_state::ClusterState`] and
//! [`RaftNode::subscribe`] wakes the master's loops whenever something new is applied.
//!
//! A single master is a one-voter group that never sends an RPC; several masters form a group
//! over QUIC with mutual TLS ([`network`], ALPN `wasmos-raft/2`), opened with
//! [`RaftNode::open_cluster`].
//!
//! Module map:
//! - [`types`]: the openraft type configuration.
//! - [`store`]: the redb file layout and codec shared by the two storage halves.
//! - [`log_store`]: `RaftLogStorage` (log entries, vote, committed, last purged).
//! - [`state_machine`]: `RaftStateMachine` (in-memory `ClusterState` + persisted snapshots).
//! - [`network`]: openraft's RPCs over QUIC, client and server side.
//! - [`node`]: [`RaftNode`] and its configuration.
//! - `sim_net` (tests and feature `sim`): the simulations' in-memory network.

pub mod log_store;
pub mod network;
pub mod node;
pub mod state_machine;
pub mod store;
pub mod types;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod cluster_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod sim;

// Simulation only: a poisoned lock there is a bug in the simulation, worth a panic.
#[cfg(any(test, feature = "sim"))]
#[allow(clippy::unwrap_used)]
pub mod sim_net;

pub use log_store::LogStore;
pub use network::{Network, PeerClient, PeerError, RaftReply, RaftRequest, serve};
pub use node::{MAX_ENTRY_BYTES, Peers, RaftNode, RaftOptions};
pub use state_machine::{SnapshotBuilder, StateMachineStore};
pub use store::{StoreError, open_stores};
pub use types::{NodeId, TypeConfig};

/// Why a [`RaftNode`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// The redb store could not be opened, read or written, or holds data that does not decode.
    /// The message names the file, table or entry that was bad.
    #[error("raft storage: {0}")]
    Storage(String),
    /// This node is not the leader; writes must go to `leader` (if known).
    #[error("not the raft leader (leader: {})", leader.map_or_else(|| "unknown".to_string(), |l| l.to_string()))]
    NotLeader { leader: Option<NodeId> },
    /// This node leads but cannot reach a majority: the write or read was not confirmed in
    /// time. A write may still commit if the majority comes back before a new leader is elected.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The raft core stopped (shut down, panicked) or failed in a way that is not a storage error.
    #[error("raft fatal: {0}")]
    Fatal(String),
    /// A bounded wait (leadership at startup, releasing the store at shutdown) ran out.
    #[error("raft timeout: {0}")]
    Timeout(String),
    /// The options are invalid, or the store belongs to a group this node is not a voter of.
    #[error("raft config: {0}")]
    Config(String),
}
