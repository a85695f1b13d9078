//! The redb file both storage halves share: table layout, opening, the codec (postcard) and the
//! error type whose messages name what was bad.
//!
//! Layout of `raft.redb`:
//! - `raft_log`: `u64` log index → the openraft `Entry` (carrying a `Command`).
//! - `raft_meta`: `"vote"`, `"committed"`, `"last_purged"` → a `Vote` / `LogId`; `"format"` →
//!   [`FORMAT`], the encoding of everything else.
//! - `raft_snapshot`: `"meta"` → the `SnapshotMeta`, `"data"` → the snapshot bytes (the encoded
//!   `ClusterState`). Both are written in one transaction, so they always match.
//!
//! Values are postcard, not JSON: a snapshot of a large state and every log entry are encoded
//! on each master, and JSON cost several times the CPU and the bytes.
//!
//! Blocking: every redb write transaction is committed with `Durability::Immediate` (the
//! default), i.e. it ends in an fsync that can take milliseconds. openraft calls the storage
//! traits from its core task, so running redb inline would stall a tokio worker thread (of two on
//! the target machines) and with it every other task scheduled there. We therefore run each redb
//! transaction on tokio's blocking pool via [`blocking`] and await it: the await keeps each write
//! complete (and durable) before the trait method returns, which is what openraft needs to
//! serialize IO, while the async workers stay free.

use std::fmt::Display;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use redb::{
    Builder, Database, Key, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    Table, TableDefinition, Value, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;
use crate::types::{NodeId, StorageError};

/// Log entries by index.
pub(crate) const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Vote, committed log id and last purged log id.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The latest snapshot: its metadata and its data.
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";
/// Which encoding the file's values use.
pub(crate) const KEY_FORMAT: &str = "format";
/// The encoding this build writes and reads: postcard, with the state's layout version (3 added
/// framework acknowledgements, 5 outputs kept on agents and the registration a lost-agent
/// verdict names, 6 tasks' placement constraints, 7 revocations, 14 agents' operator resizes; postcard has no optional
/// fields, so older layouts do not decode). Format 1, JSON, was never marked.
pub(crate) const FORMAT: &[u8] = b"postcard-14";

/// The redb page cache. The file holds a bounded log (purged behind snapshots) and one snapshot,
/// so redb's 1 GiB default would only reserve memory the master needs elsewhere.
const CACHE_BYTES: usize = 64 << 20;

/// The open database, plus a signal that it has been closed.
///
/// Whoever drops the last handle runs redb's close (which still writes to the file) before the
/// file lock is released, so seeing the last `Arc` go away is not enough to know the file can be
/// reopened. Fields drop in declaration order: `db` is fully closed before `closed` is dropped,
/// and dropping that sender is what wakes the receivers from [`Db::closed`].
pub(crate) struct Db {
    db: Database,
    closed: watch::Sender<()>,
}

impl Db {
    fn new(db: Database) -> Self {
        Db {
            db,
            closed: watch::Sender::new(()),
        }
    }

    /// A receiver whose `changed()` fails once the database is closed (nothing is ever sent).
    pub(crate) fn closed(&self) -> watch::Receiver<()> {
        self.closed.subscribe()
    }
}

impl Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

/// A storage failure, with a message naming the file, table or entry involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

impl StoreError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        StoreError(msg.into())
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// Converts into openraft's error, tagged with what was being done (openraft stops the node on
    /// any storage error, so the tag only serves the log line and the caller's message).
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::error(self.0)).into()
    }
}

/// Builds the error for a failed redb operation: `what` failed because of `e`.
pub(crate) fn db_err(what: impl Display, e: impl Display) -> StoreError {
    StoreError(format!("raft.redb: {what}: {e}"))
}

/// Serializes a value stored in redb.
pub(crate) fn encode<T: Serialize>(value: &T, what: impl Display) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError(format!("cannot serialize {what}: {e}")))
}

/// Deserializes a value read from redb; a failure means the file holds data we did not write (or
/// wrote with an incompatible version), so the message says which value was corrupt.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl Display,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError(format!("corrupt {what} in raft.redb: {e}")))
}

thread_local! {
    /// Set by the deterministic simulation on its single thread: storage then runs inline, so
    /// no other thread's timing decides the order of events.
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes [`blocking`] run storage inline on this thread (the simulation's), or not.
#[cfg(any(test, feature = "sim"))]
pub(crate) fn run_storage_inline(inline: bool) {
    INLINE.with(|c| c.set(inline));
}

/// Runs a redb transaction on the blocking pool (see the module docs for why) and waits for it.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    if INLINE.with(std::cell::Cell::get) {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError(format!("raft.redb: storage task failed: {e}")))?
}

/// Opens (or creates) the redb file and makes sure every table exists, so that read transactions
/// never have to tell "missing table" from "empty table".
pub(crate) fn open_db(path: &Path) -> Result<Database, StoreError> {
    let mut builder = Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    // A plain open trusts the file and may panic on a page damaged outside redb; with the check a
    // damaged file is reported as an error instead. The file is small (the log is purged behind
    // snapshots), so reading it once at startup is cheap.
    builder.set_check_integrity_on_open(true);
    let db = builder
        .create(path)
        .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;

    write_txn(&db, "commit table creation", |txn| {
        for table in [META, SNAPSHOT] {
            open_write(txn, table)?;
        }
        let logs = open_write(txn, LOGS)?;
        let mut meta = open_write(txn, META)?;
        let format = meta
            .get(KEY_FORMAT)
            .map_err(|e| db_err("read the format", e))?
            .map(|v| v.value().to_vec());
        let used = !logs.is_empty().map_err(|e| db_err("read the log", e))?
            || !meta
                .is_empty()
                .map_err(|e| db_err("read the metadata", e))?;
        match format {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(StoreError(format!(
                    "{} is in format `{}`; this build reads `{}`",
                    path.display(),
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(FORMAT)
                )));
            }
            None if used => {
                return Err(StoreError(format!(
                    "{} was written by an older wasmos (JSON values); start this master on an empty data directory",
                    path.display()
                )));
            }
            None => {
                meta.insert(KEY_FORMAT, FORMAT)
                    .map_err(|e| db_err("write the format", e))?;
            }
        }
        Ok(())
    })?;
    Ok(db)
}

/// Opens `table` in the write transaction `txn` (creating it if missing).
pub(crate) fn open_write<'txn, K: Key + 'static, V: Value + 'static>(
    txn: &'txn WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<Table<'txn, K, V>, StoreError> {
    txn.open_table(table)
        .map_err(|e| db_err(format_args!("open table {table}"), e))
}

/// Runs `body` in one write transaction and commits it durably if `body` succeeds (`commit_what`
/// names the commit in its error). If `body` fails the transaction is aborted: nothing is written.
/// Tables `body` opens must be dropped before it returns.
pub(crate) fn write_txn<R>(
    db: &Database,
    commit_what: impl Display,
    body: impl FnOnce(&WriteTransaction) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let txn = db
        .begin_write()
        .map_err(|e| db_err("begin write transaction", e))?;
    let result = body(&txn)?;
    txn.commit().map_err(|e| db_err(commit_what, e))?;
    Ok(result)
}

/// [`write_txn`] over the single table `table`.
pub(crate) fn write_table<K: Key + 'static, V: Value + 'static, R>(
    db: &Database,
    table: TableDefinition<K, V>,
    commit_what: impl Display,
    body: impl FnOnce(&mut Table<'_, K, V>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    write_txn(db, commit_what, |txn| body(&mut open_write(txn, table)?))
}

/// Runs `body` over `table` in one read transaction.
pub(crate) fn read_table<K: Key + 'static, V: Value + 'static, R>(
    db: &Database,
    table: TableDefinition<K, V>,
    body: impl FnOnce(&ReadOnlyTable<K, V>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let txn = db
        .begin_read()
        .map_err(|e| db_err("begin read transaction", e))?;
    let table = txn
        .open_table(table)
        .map_err(|e| db_err(format_args!("open table {table}"), e))?;
    body(&table)
}

/// Reads and decodes one value of the `raft_meta` table.
pub(crate) fn read_meta<T: DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    read_table(db, META, |table| {
        let value = table
            .get(key)
            .map_err(|e| db_err(format_args!("read {key}"), e))?;
        match value {
            Some(v) => decode(v.value(), format_args!("{key} (table raft_meta)")).map(Some),
            None => Ok(None),
        }
    })
}

/// Writes one already-encoded value of the `raft_meta` table in its own durable transaction.
pub(crate) fn write_meta(db: &Database, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
    write_table(db, META, format_args!("commit {key}"), |table| {
        table
            .insert(key, bytes)
            .map_err(|e| db_err(format_args!("write {key}"), e))?;
        Ok(())
    })
}

/// Opens (or creates) the redb file at `path` and returns the two storage halves over it: the
/// log store, and the state machine restored from the stored snapshot (empty if there is none).
pub async fn open_stores(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = path.to_path_buf();
    let db = Arc::new(Db::new(blocking(move || open_db(&path)).await?));
    let state_machine = StateMachineStore::load(db.clone()).await?;
    Ok((LogStore::new(db), state_machine))
}
