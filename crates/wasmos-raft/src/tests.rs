//! Tests: openraft's storage conformance suite over the redb stores, and the `RaftNode`
//! lifecycle — write/read, restart recovery, snapshot + purge, corrupt data, bad configuration.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use openraft::StorageIOError;
use openraft::testing::{StoreBuilder, Suite};
use redb::{Database, ReadableDatabase, ReadableTable};
use tempfile::TempDir;
use wasmos_proto::{
    AgentId, BundleHash, Resources, StatusUpdate, TaskId, TaskSpec, TaskState, TaskStatus,
};
use wasmos_state::{ClusterState, Command, CommandResult};

use crate::node::DB_FILE;
use crate::store::{KEY_LAST_PURGED, KEY_SNAPSHOT_DATA, KEY_VOTE, LOGS, META, SNAPSHOT};
use crate::types::{LogId, NodeId, StorageError, TypeConfig};
use crate::{LogStore, RaftError, RaftNode, RaftOptions, StateMachineStore, open_stores};

/// Builds a fresh redb-backed log store and state machine in a temporary directory, which the
/// suite keeps alive (the guard) for the duration of each test.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = open_stores(&dir.path().join(DB_FILE))
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

/// openraft's conformance suite (it builds its own runtimes, hence a plain `#[test]`).
#[test]
fn storage_conformance_suite() -> anyhow::Result<()> {
    Suite::test_all(RedbStoreBuilder)?;
    Ok(())
}

fn bundle(n: u64) -> BundleHash {
    BundleHash::parse(&format!("{n:064x}")).expect("64 hex digits")
}

fn agent() -> AgentId {
    AgentId::new("agent-1").expect("valid agent name")
}

fn spec(bundle: BundleHash) -> TaskSpec {
    TaskSpec {
        args: vec!["--greet".into()],
        env: vec![("LANG".into(), "C".into())],
        resources: Resources::new(100, 1 << 20, 0),
        timeout_ms: 1000,
        ..TaskSpec::new("hello.wasm", bundle)
    }
}

/// A small history touching every part of the state: bundles, agents, tasks, statuses.
fn history() -> Vec<Command> {
    vec![
        Command::AddBundle {
            hash: bundle(1),
            size: 10,
            now_ms: 1,
            reader: None,
        },
        Command::RegisterAgent {
            id: agent(),
            total: Resources::new(1000, 1 << 30, 0),
            attributes: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            fuel_per_core_second: 1_000_000_000,
            reserved: BTreeMap::new(),
            running: vec![],
            peer_addr: None,
            now_ms: 2,
        },
        Command::SubmitTask {
            id: None,
            spec: spec(bundle(1)),
            owner: "op".into(),
            now_ms: 3,
            key: None,
        },
        Command::SubmitTask {
            id: None,
            spec: spec(bundle(1)),
            owner: "op".into(),
            now_ms: 4,
            key: None,
        },
        Command::AssignTask {
            task: TaskId(1),
            agent: agent(),
            now_ms: 5,
        },
        Command::AgentStatus {
            agent: agent(),
            update: StatusUpdate {
                seq: 1,
                task: TaskId(1),
                status: TaskStatus::new(TaskState::Running),
            },
            now_ms: 6,
        },
    ]
}

/// What the state must be after `cmds`, computed without raft.
fn replayed(cmds: &[Command]) -> ClusterState {
    let mut state = ClusterState::default();
    for cmd in cmds {
        state.apply(cmd.clone());
    }
    state
}

const ADDR: &str = "127.0.0.1:7070";

async fn open(dir: &Path) -> Result<RaftNode, RaftError> {
    RaftNode::open(dir, 1, ADDR.to_string()).await
}

/// Options that snapshot every 10 entries and keep 3 behind the snapshot.
fn snappy() -> RaftOptions {
    RaftOptions {
        snapshot_logs_since_last: 10,
        logs_to_keep: 3,
        ..RaftOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_write_read() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path()).await?;
    ensure!(
        node.is_leader(),
        "a single voter is leader once open returns"
    );
    ensure!(dir.path().join(DB_FILE).exists());

    let mut applied = node.subscribe();
    let before = *applied.borrow_and_update();
    let cmds = history();
    let mut results = Vec::new();
    for cmd in &cmds {
        results.push(node.write(cmd.clone()).await?);
    }
    ensure!(results[0] == CommandResult::Ok);
    ensure!(results[2] == CommandResult::Submitted(TaskId(1)));
    ensure!(results[3] == CommandResult::Submitted(TaskId(2)));
    ensure!(
        applied.has_changed()?,
        "subscribers hear about applied writes"
    );
    ensure!(*applied.borrow_and_update() > before);

    // A refused command is an answer, not an error, and changes nothing.
    let rejected = node
        .write(Command::SubmitTask {
            id: None,
            spec: spec(bundle(99)),
            owner: "op".into(),
            now_ms: 7,
            key: None,
        })
        .await?;
    ensure!(
        matches!(rejected, CommandResult::Rejected(_)),
        "{rejected:?}"
    );

    let state = node.read(|s| s.clone());
    ensure!(state == replayed(&cmds));
    ensure!(node.read(|s| s.tasks.len()) == 2);

    // A waiting subscriber is woken by the next write.
    let waiter = tokio::spawn(async move { applied.changed().await.map(|_| *applied.borrow()) });
    node.write(Command::AddBundle {
        hash: bundle(2),
        size: 1,
        now_ms: 8,
        reader: None,
    })
    .await?;
    let index = tokio::time::timeout(Duration::from_secs(5), waiter).await???;
    ensure!(index > before);

    let clone = node.clone();
    clone.shutdown().await?;
    node.shutdown().await?; // idempotent
    let after = node
        .write(Command::AddBundle {
            hash: bundle(3),
            size: 1,
            now_ms: 9,
            reader: None,
        })
        .await;
    ensure!(matches!(after, Err(RaftError::Fatal(_))), "{after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_identical_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cmds = history();

    let node = open(dir.path()).await?;
    for cmd in &cmds {
        node.write(cmd.clone()).await?;
    }
    let before = node.read(|s| s.clone());
    ensure!(before == replayed(&cmds));
    node.shutdown().await?;
    drop(node);

    // Nothing is flushed at shutdown (the state machine lives in memory), so this exercises the
    // same recovery as a kill -9: the state is rebuilt by re-applying the committed log.
    let node = open(dir.path()).await?;
    ensure!(node.is_leader());
    ensure!(
        node.read(|s| s.clone()) == before,
        "state differs after restart"
    );

    // The restored state keeps counting where it stopped.
    let next = node
        .write(Command::SubmitTask {
            id: None,
            spec: spec(bundle(1)),
            owner: "op".into(),
            now_ms: 10,
            key: None,
        })
        .await?;
    ensure!(next == CommandResult::Submitted(TaskId(3)), "{next:?}");
    let before = node.read(|s| s.clone());
    node.shutdown().await?;
    drop(node);

    let node = open(dir.path()).await?;
    ensure!(
        node.read(|s| s.clone()) == before,
        "state differs after second restart"
    );
    node.shutdown().await?;
    Ok(())
}

/// Triggers a snapshot and waits until it covers everything applied so far.
async fn snapshot_now(node: &RaftNode) -> anyhow::Result<()> {
    // Our watch is updated as entries are applied; openraft's metrics trail it slightly.
    let last = Some(*node.subscribe().borrow());
    node.raft().trigger().snapshot().await?;
    node.raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(move |m| m.snapshot.map(|s| s.index) >= last, "snapshot")
        .await?;
    Ok(())
}

/// First log index present, last purged log id and whether a snapshot is stored, read straight
/// from the file of a shut-down node.
fn inspect(dir: &Path) -> anyhow::Result<(Option<u64>, Option<LogId>, bool)> {
    let db = Database::open(dir.join(DB_FILE))?;
    let txn = db.begin_read()?;
    let logs = txn.open_table(LOGS)?;
    let first = logs.first()?.map(|(k, _)| k.value());
    let meta = txn.open_table(META)?;
    let purged = match meta.get(KEY_LAST_PURGED)? {
        Some(v) => Some(postcard::from_bytes::<LogId>(v.value())?),
        None => None,
    };
    let snapshot = txn.open_table(SNAPSHOT)?.get(KEY_SNAPSHOT_DATA)?.is_some();
    Ok((first, purged, snapshot))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_purge_and_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = RaftNode::open_with(dir.path(), 1, ADDR.to_string(), snappy()).await?;
    let mut cmds = history();
    cmds.extend((10..50).map(|n| Command::AddBundle {
        hash: bundle(n),
        size: n,
        now_ms: n,
        reader: None,
    }));
    for cmd in &cmds {
        node.write(cmd.clone()).await?;
    }

    // The policy (every 10 entries) has built snapshots and purged the log behind them.
    let metrics = node
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.map(|s| s.index) >= Some(30) && m.purged.is_some(),
            "snapshot and purge",
        )
        .await?;
    let purged = metrics.purged.context("purged")?;

    // A manual trigger snapshots everything applied so far.
    snapshot_now(&node).await?;

    let before = node.read(|s| s.clone());
    ensure!(before == replayed(&cmds));
    node.shutdown().await?;
    drop(node);

    let (first, stored_purged, snapshot) = inspect(dir.path())?;
    ensure!(snapshot, "a snapshot is stored");
    let stored_purged = stored_purged.context("last purged is stored")?;
    ensure!(stored_purged.index >= purged.index);
    ensure!(
        first == Some(stored_purged.index + 1),
        "the log starts right after the purged id: {first:?} vs {stored_purged:?}"
    );

    // Restart from snapshot + remaining log.
    let node = RaftNode::open_with(dir.path(), 1, ADDR.to_string(), snappy()).await?;
    ensure!(
        node.read(|s| s.clone()) == before,
        "state differs after restart"
    );
    node.write(Command::AddBundle {
        hash: bundle(100),
        size: 1,
        now_ms: 100,
        reader: None,
    })
    .await?;
    cmds.push(Command::AddBundle {
        hash: bundle(100),
        size: 1,
        now_ms: 100,
        reader: None,
    });
    ensure!(node.read(|s| s.clone()) == replayed(&cmds));
    node.shutdown().await?;
    Ok(())
}

/// Opens a node, writes the history, shuts it down, then lets `corrupt` damage the file.
async fn corrupted(
    options: RaftOptions,
    corrupt: impl FnOnce(&Database) -> anyhow::Result<()>,
) -> anyhow::Result<(TempDir, RaftError)> {
    let dir = tempfile::tempdir()?;
    let node = RaftNode::open_with(dir.path(), 1, ADDR.to_string(), options.clone()).await?;
    for cmd in history() {
        node.write(cmd).await?;
    }
    snapshot_now(&node).await?;
    node.shutdown().await?;
    drop(node);
    {
        let db = Database::open(dir.path().join(DB_FILE))?;
        corrupt(&db)?;
    }
    match RaftNode::open_with(dir.path(), 1, ADDR.to_string(), options).await {
        Ok(node) => {
            node.shutdown().await?;
            bail!("opening a corrupt store succeeded")
        }
        Err(e) => Ok((dir, e)),
    }
}

fn put(db: &Database, table: redb::TableDefinition<&str, &[u8]>, key: &str) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(table)?
        .insert(key, b"{not json".as_slice())?;
    txn.commit()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_vote_is_a_storage_error() -> anyhow::Result<()> {
    let (_dir, err) = corrupted(RaftOptions::default(), |db| put(db, META, KEY_VOTE)).await?;
    match err {
        RaftError::Storage(msg) => ensure!(msg.contains("corrupt vote"), "{msg}"),
        other => bail!("unexpected error {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_a_storage_error() -> anyhow::Result<()> {
    let (_dir, err) = corrupted(RaftOptions::default(), |db| {
        put(db, SNAPSHOT, KEY_SNAPSHOT_DATA)
    })
    .await?;
    match err {
        RaftError::Storage(msg) => ensure!(msg.contains("corrupt snapshot data"), "{msg}"),
        other => bail!("unexpected error {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_entry_is_a_storage_error() -> anyhow::Result<()> {
    let mut last_index = 0;
    let (_dir, err) = corrupted(RaftOptions::default(), |db| {
        let txn = db.begin_write()?;
        {
            let mut logs = txn.open_table(LOGS)?;
            last_index = logs.last()?.context("log is not empty")?.0.value();
            logs.insert(last_index, b"garbage".as_slice())?;
        }
        txn.commit()?;
        Ok(())
    })
    .await?;
    let want = format!("corrupt log entry at index {last_index}");
    match err {
        RaftError::Storage(msg) => ensure!(msg.contains(&want), "{msg}"),
        other => bail!("unexpected error {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_file_is_a_storage_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(DB_FILE), vec![0xa5_u8; 64 * 1024])?;
    match open(dir.path()).await {
        Err(RaftError::Storage(msg)) => ensure!(msg.contains(DB_FILE), "{msg}"),
        Err(other) => bail!("unexpected error {other:?}"),
        Ok(node) => {
            node.shutdown().await?;
            bail!("opened a garbage file")
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_id_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    open(dir.path()).await?.shutdown().await?;
    let other: NodeId = 2;
    let options = RaftOptions {
        leader_timeout: Duration::from_secs(2),
        ..RaftOptions::default()
    };
    match RaftNode::open_with(dir.path(), other, ADDR.to_string(), options).await {
        Err(RaftError::Config(msg)) => ensure!(msg.contains("voters"), "{msg}"),
        Err(e) => bail!("unexpected error {e:?}"),
        Ok(node) => {
            node.shutdown().await?;
            bail!("node 2 opened node 1's store")
        }
    }
    // The failed open released the file: the right node still opens it.
    open(dir.path()).await?.shutdown().await?;
    Ok(())
}

#[test]
fn invalid_options_are_rejected() {
    let bad = [
        RaftOptions {
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(150),
            ..RaftOptions::default()
        },
        RaftOptions {
            heartbeat_interval: Duration::from_millis(200),
            ..RaftOptions::default()
        },
        RaftOptions {
            snapshot_logs_since_last: 0,
            ..RaftOptions::default()
        },
    ];
    for options in bad {
        assert!(
            matches!(options.to_config(), Err(RaftError::Config(_))),
            "{options:?} accepted"
        );
    }
    let config = RaftOptions::default().to_config().unwrap();
    assert_eq!(config.election_timeout_min, 100);
    assert_eq!(config.election_timeout_max, 200);
    let slow = RaftOptions::with_election_timeout(Duration::from_millis(600))
        .to_config()
        .unwrap();
    assert_eq!(
        (
            slow.heartbeat_interval,
            slow.election_timeout_min,
            slow.election_timeout_max
        ),
        (300, 600, 1200)
    );
}

/// While the snapshot builder copies the state (its gate and a read lock held, as for a large
/// state), `apply` waits for the copy without becoming a waiting writer: other readers get in
/// at once instead of queueing behind it, and the entry is applied when the copy is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The read guard stands for the snapshot builder's copy, held while `apply` runs elsewhere.
#[allow(clippy::await_holding_lock)]
async fn readers_are_not_held_up_while_a_snapshot_copies() -> anyhow::Result<()> {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir()?;
    let (_log, mut sm) = open_stores(&dir.path().join(DB_FILE)).await?;
    let shared = sm.shared();
    let copying = shared.copying.clone().lock_owned().await;
    let reading = shared.read();
    let entry = crate::types::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), 1),
        payload: openraft::EntryPayload::Blank,
    };
    let apply = tokio::spawn(async move { sm.apply(vec![entry]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        shared.applied.try_read().is_ok(),
        "a reader was held up behind apply"
    );
    ensure!(!apply.is_finished(), "applied during the copy");
    drop(reading);
    drop(copying);
    apply.await??;
    ensure!(shared.read().last_applied.map(|l| l.index) == Some(1));
    Ok(())
}
