//! The replicated state machine: `wasmos_state::ClusterState` in memory, plus the latest snapshot
//! of it persisted in redb. Implements openraft's `RaftStateMachine` and `RaftSnapshotBuilder`.
//!
//! Applying is memory-only (it is a pure function of the log), so the state is made durable in
//! two ways: snapshots (serialized `ClusterState` + last applied log id + membership, one redb
//! transaction) and the log itself. On restart [`StateMachineStore::load`] restores the snapshot
//! and openraft re-applies the committed log after it (the log store persists the committed id),
//! which rebuilds exactly the state the node had before it died.

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot,
};
use redb::{Database, ReadableTable};
use tokio::sync::watch;
use wasmos_state::{ClusterState, CommandResult, EVENT_HISTORY, EventLog};

use crate::store::{
    Db, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT, StoreError, blocking, db_err, decode,
    encode, open_write, read_table,
};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// What has been applied: the cluster state and the raft bookkeeping that goes with it.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) last_membership: StoredMembership,
    pub(crate) state: ClusterState,
    /// The events of the entries applied since this node started or installed a snapshot
    /// (the most recent [`EVENT_HISTORY`]): the event stream's history.
    pub(crate) events: EventLog,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            last_applied: None,
            last_membership: StoredMembership::default(),
            state: ClusterState::default(),
            events: EventLog::new(0, EVENT_HISTORY),
        }
    }
}

/// The part of the state machine the [`crate::RaftNode`] shares: the applied state (read under a
/// lock) and a watch of the last applied index.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) applied: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
    /// Held by the snapshot builder while it copies the state (long, under the read lock) and
    /// by `apply` before it takes the write lock: apply then waits for the copy here, as an
    /// await, instead of as a waiting writer. A waiting writer blocks its thread and, the std
    /// lock preferring writers, every reader that comes after it: with the copy of a large
    /// state taking longer than an election timeout, both runtime threads of a 2-core master
    /// stalled and the leader lost its term.
    pub(crate) copying: Arc<tokio::sync::Mutex<()>>,
}

impl Shared {
    fn new(applied: Applied) -> Self {
        let index = applied.last_applied.map_or(0, |l| l.index);
        Shared {
            applied: Arc::new(RwLock::new(applied)),
            applied_tx: Arc::new(watch::Sender::new(index)),
            copying: Arc::default(),
        }
    }

    // A poisoned lock means `ClusterState::apply` panicked mid-command (a bug). The apply task is
    // gone and raft stops with it, but the master's readers can still be served the state as it
    // was left rather than all panicking too, so poisoning is ignored on both sides.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.applied.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn notify(&self, last_applied: Option<LogId>) {
        // `send_replace` stores the value even when nobody subscribes yet.
        self.applied_tx
            .send_replace(last_applied.map_or(0, |l| l.index));
    }
}

/// The redb-backed state machine store.
pub struct StateMachineStore {
    db: Arc<Db>,
    shared: Shared,
}

impl StateMachineStore {
    /// Restores the state machine from the snapshot stored in `db` (empty if there is none).
    pub(crate) async fn load(db: Arc<Db>) -> Result<Self, StoreError> {
        let reader = db.clone();
        let stored = blocking(move || read_snapshot(&reader)).await?;
        let applied = match stored {
            Some((meta, data)) => Applied {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership,
                state: decode(&data, "snapshot data (ClusterState)")?,
                // Openraft applies the log after the snapshot again: its events are told anew.
                events: EventLog::new(meta.last_log_id.map_or(0, |l| l.index), EVENT_HISTORY),
            },
            None => Applied::default(),
        };
        Ok(StateMachineStore {
            db,
            shared: Shared::new(applied),
        })
    }

    pub(crate) fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// A copy of the applied cluster state.
    pub fn cluster_state(&self) -> ClusterState {
        self.shared.read().state.clone()
    }
}

/// Reads the stored snapshot: its metadata and its (still encoded) data.
fn read_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
    read_table(db, SNAPSHOT, |table| {
        let meta = table
            .get(KEY_SNAPSHOT_META)
            .map_err(|e| db_err("read snapshot metadata", e))?;
        let data = table
            .get(KEY_SNAPSHOT_DATA)
            .map_err(|e| db_err("read snapshot data", e))?;
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some((
                decode(meta.value(), "snapshot metadata")?,
                data.value().to_vec(),
            ))),
            (None, None) => Ok(None),
            _ => Err(StoreError::new(
                "corrupt snapshot in raft.redb: only one of its metadata and data is present",
            )),
        }
    })
}

/// Stores a snapshot (metadata and data in one durable transaction). With `only_if_newer`, a
/// snapshot older than the stored one is dropped: a snapshot built from the local state can race
/// with one installed from the leader, and the newer must win. Returns whether it was stored.
fn write_snapshot(
    db: &Database,
    meta: &SnapshotMeta,
    data: &[u8],
    only_if_newer: bool,
) -> Result<bool, StoreError> {
    let meta_bytes = encode(meta, "snapshot metadata")?;
    // Written by hand rather than with `write_table`: a stale snapshot aborts the transaction
    // (dropping it) instead of committing an empty one, which would cost an fsync for nothing.
    let txn = db
        .begin_write()
        .map_err(|e| db_err("begin write transaction", e))?;
    {
        let mut table = open_write(&txn, SNAPSHOT)?;
        if only_if_newer {
            let current = table
                .get(KEY_SNAPSHOT_META)
                .map_err(|e| db_err("read snapshot metadata", e))?
                .map(|v| decode::<SnapshotMeta>(v.value(), "snapshot metadata"))
                .transpose()?;
            if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
                return Ok(false);
            }
        }
        table
            .insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())
            .map_err(|e| db_err("write snapshot metadata", e))?;
        table
            .insert(KEY_SNAPSHOT_DATA, data)
            .map_err(|e| db_err("write snapshot data", e))?;
    }
    txn.commit().map_err(|e| db_err("commit snapshot", e))?;
    Ok(true)
}

/// A snapshot id unique per build: the last log id alone is not enough, two builds at the same
/// log id may differ in bytes (openraft's contract), so a wall-clock stamp is appended.
fn snapshot_id(last_log_id: Option<LogId>) -> String {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    match last_log_id {
        Some(id) => format!("{}-{}-{stamp}", id.leader_id, id.index),
        None => format!("empty-{stamp}"),
    }
}

/// Builds a snapshot from a copy of the state taken, with the log id and membership it
/// matches, when the build starts. The copy and the encoding both happen on the blocking pool:
/// a large state takes long enough to copy that doing it on an async worker delayed heartbeats
/// into needless elections.
pub struct SnapshotBuilder {
    db: Arc<Db>,
    shared: Shared,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let shared = self.shared.clone();
        let copying = self.shared.copying.clone().lock_owned().await;
        let (meta, data) = blocking(move || {
            let (last_applied, last_membership, state) = {
                let applied = shared.read();
                (
                    applied.last_applied,
                    applied.last_membership.clone(),
                    applied.state.clone(),
                )
            };
            drop(copying);
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
                snapshot_id: snapshot_id(last_applied),
            };
            let data = encode(&state, "snapshot data (ClusterState)")?;
            drop(state);
            let stored = write_snapshot(&db, &meta, &data, true)?;
            if !stored {
                tracing::info!(
                    snapshot = %meta.snapshot_id,
                    "a newer snapshot is already stored; keeping it"
                );
            }
            Ok((meta, data))
        })
        .await
        .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let copied = self.shared.copying.lock().await;
        let last_applied = {
            // One lock per batch: readers see whole batches, and apply is pure and fast.
            let mut applied = self.shared.write();
            let mut events = Vec::new();
            for entry in entries {
                applied.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::default(),
                    EntryPayload::Normal(cmd) => applied.state.apply_recording(cmd, &mut events),
                    EntryPayload::Membership(membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::default()
                    }
                };
                applied
                    .events
                    .push(entry.log_id.index, std::mem::take(&mut events));
                results.push(result);
            }
            applied.last_applied
        };
        drop(copied);
        self.shared.notify(last_applied);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let signature = meta.signature();
        // Decode before storing anything: a bad snapshot must leave both disk and memory as they
        // were.
        let state: ClusterState =
            decode(&data, "received snapshot data (ClusterState)").map_err(|e| {
                e.into_storage(
                    ErrorSubject::Snapshot(Some(signature.clone())),
                    ErrorVerb::Read,
                )
            })?;
        let db = self.db.clone();
        let stored_meta = meta.clone();
        blocking(move || write_snapshot(&db, &stored_meta, &data, false))
            .await
            .map_err(|e| {
                e.into_storage(ErrorSubject::Snapshot(Some(signature)), ErrorVerb::Write)
            })?;
        {
            // Not while a snapshot of this node copies the state (see `Shared::copying`).
            let _copied = self.shared.copying.lock().await;
            let mut applied = self.shared.write();
            applied.state = state;
            applied
                .events
                .reset(meta.last_log_id.map_or(0, |l| l.index));
            applied.last_applied = meta.last_log_id;
            applied.last_membership = meta.last_membership.clone();
        }
        self.shared.notify(meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || read_snapshot(&db))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
