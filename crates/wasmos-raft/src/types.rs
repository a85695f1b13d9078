//! The openraft type configuration: which application types ride in the log and how snapshots
//! travel.

// `declare_raft_types!` names `Cursor` unqualified in its defaults, so it must be in scope.
use std::io::Cursor;

use openraft::{BasicNode, TokioRuntime};
use wasmos_state::{Command, CommandResult};

/// A raft node id. Stable across restarts; the master chooses it.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of the Wasmos master group: the log carries
    /// `wasmos_state::Command`s, applying one yields a `wasmos_state::CommandResult`, and a node
    /// is addressed by its advertised address (`BasicNode::addr`), which the future QUIC network
    /// dials.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        // A snapshot is one serialized `ClusterState`, small enough to hold in memory; a cursor
        // over bytes is what openraft's chunked snapshot transfer reads and writes.
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = TokioRuntime,
);

/// A log entry of this group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of this group.
pub type LogId = openraft::LogId<NodeId>;
/// The openraft storage error of this group.
pub type StorageError = openraft::StorageError<NodeId>;
/// The membership as recorded by the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
/// Snapshot metadata of this group.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
