//! The raft log over redb: entries by index, plus the vote, the committed log id and the last
//! purged log id. Implements openraft's `RaftLogStorage` and `RaftLogReader` (storage v2).
//!
//! Every method runs one redb transaction on the blocking pool and awaits it (see [`crate::store`]
//! for why), so a write is durable before the method returns and writes are applied in the order
//! openraft issues them — the serialization `RaftLogStorage` demands.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, Vote};
use redb::{Database, ReadableTable};

use tokio::sync::watch;

use crate::store::{
    Db, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOGS, META, StoreError, blocking, db_err, decode,
    encode, open_write, read_meta, read_table, write_meta, write_table, write_txn,
};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The redb-backed raft log. Cheap to clone: clones share the database, which is how openraft's
/// log readers (one per replication stream) get their own handle.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        LogStore { db }
    }

    /// Tells when the database is closed, i.e. openraft has let go of every handle on it.
    pub(crate) fn closed(&self) -> watch::Receiver<()> {
        self.db.closed()
    }
}

/// Reads the entries whose index is in `range`, checking that each decodes and sits at its index.
fn read_entries(db: &Database, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
    // redb (like BTreeMap) rejects inverted ranges; openraft may legitimately ask for an empty one.
    let empty = match range {
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    };
    if empty {
        return Ok(Vec::new());
    }
    read_table(db, LOGS, |table| {
        let mut entries = Vec::new();
        for item in table
            .range(range)
            .map_err(|e| db_err("read log entries", e))?
        {
            let (key, value) = item.map_err(|e| db_err("read log entries", e))?;
            entries.push(decode_entry(key.value(), value.value())?);
        }
        Ok(entries)
    })
}

fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    let entry: Entry = decode(bytes, format_args!("log entry at index {index}"))?;
    if entry.log_id.index != index {
        return Err(StoreError::new(format!(
            "corrupt log entry at index {index} in raft.redb: it claims index {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// The last purged log id and the id of the last entry present (or the last purged one).
fn read_log_state(db: &Database) -> Result<LogState<TypeConfig>, StoreError> {
    let last_purged: Option<LogId> = read_meta(db, KEY_LAST_PURGED)?;
    let last_log_id = read_table(db, LOGS, |table| {
        let last = table
            .last()
            .map_err(|e| db_err("read the last log entry", e))?;
        match last {
            Some((key, value)) => Ok(Some(decode_entry(key.value(), value.value())?.log_id)),
            None => Ok(last_purged),
        }
    })?;
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id,
    })
}

/// Writes `entries` (already encoded, by index) in one durable transaction.
fn write_entries(db: &Database, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
    write_table(db, LOGS, "commit log entries", |table| {
        for (index, bytes) in entries {
            table
                .insert(index, bytes.as_slice())
                .map_err(|e| db_err(format_args!("write log entry at index {index}"), e))?;
        }
        Ok(())
    })
}

/// Deletes every entry with index >= `since` in one durable transaction.
fn truncate_entries(db: &Database, since: u64) -> Result<(), StoreError> {
    write_table(
        db,
        LOGS,
        format_args!("commit truncation at index {since}"),
        |table| {
            table
                .retain_in(since.., |_, _| false)
                .map_err(|e| db_err(format_args!("delete log entries from index {since}"), e))
        },
    )
}

/// Records `upto` as the last purged log id and deletes every entry up to it, in one durable
/// transaction: a crash leaves either the old state or the new one, never a hole.
fn purge_entries(db: &Database, upto: LogId) -> Result<(), StoreError> {
    let previous: Option<LogId> = read_meta(db, KEY_LAST_PURGED)?;
    // Purging only moves forward; a stale request must not resurrect the claim that older
    // entries still exist.
    let last_purged = match previous {
        Some(prev) if prev >= upto => prev,
        _ => upto,
    };
    let bytes = encode(&last_purged, "last purged log id")?;
    let index = upto.index;
    write_txn(
        db,
        format_args!("commit purge up to index {index}"),
        |txn| {
            open_write(txn, META)?
                .insert(KEY_LAST_PURGED, bytes.as_slice())
                .map_err(|e| db_err("write last purged log id", e))?;
            open_write(txn, LOGS)?
                .retain_in(..=index, |_, _| false)
                .map_err(|e| db_err(format_args!("purge log entries up to {index}"), e))
        },
    )
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        blocking(move || read_entries(&db, bounds))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_log_state(&db))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(vote, "vote")
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))?;
        let db = self.db.clone();
        blocking(move || write_meta(&db, KEY_VOTE, &bytes))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, KEY_VOTE))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    /// Persisting the committed id is what lets a restarted node rebuild its state: the state
    /// machine lives in memory and is only persisted as snapshots, so on startup openraft
    /// restores the latest snapshot and re-applies the log from there up to this id.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes = encode(&committed, "committed log id")
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))?;
        let db = self.db.clone();
        blocking(move || write_meta(&db, KEY_COMMITTED, &bytes))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        // Stored as JSON of `Option<LogId>`, so a saved `None` reads back as `Some(None)`.
        blocking(move || read_meta::<Option<LogId>>(&db, KEY_COMMITTED))
            .await
            .map(Option::flatten)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    /// Writes the entries in one durable transaction and only then reports them flushed: the
    /// entries are readable when this returns and on disk when the callback fires.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            match encode(&entry, format_args!("log entry at index {index}")) {
                Ok(bytes) => encoded.push((index, bytes)),
                Err(e) => {
                    callback.log_io_completed(Err(io::Error::other(e.message().to_string())));
                    return Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write));
                }
            }
        }
        let db = self.db.clone();
        match blocking(move || write_entries(&db, &encoded)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.message().to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || truncate_entries(&db, log_id.index))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || purge_entries(&db, log_id))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
