//! Retention: the leader forgets ended tasks, ended jobs and unreferenced blobs after the
//! operator's retention (`Command::Collect`) and audit entries after the audit log's own
//! (`Command::ForgetAudit`); every master removes from its disk the logs and blob files its
//! state no longer names. So neither the disk nor the replicated state (and so its snapshots)
//! grows without bound.

use std::sync::Arc;
use std::time::Duration;

use wasmos_state::{Command, CommandResult};

use crate::{Shared, now_ms};

/// How often the leader collects and each master sweeps its disk.
const PERIOD: Duration = Duration::from_secs(30);
/// A blob file is kept this long even if no record names it yet: an upload stores the bytes
/// before its record is committed.
const UNRECORDED_GRACE: Duration = Duration::from_secs(600);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.raft.is_leader() {
            collect(&shared).await;
        }
        let sweep = shared.clone();
        let swept = tokio::task::spawn_blocking(move || sweep_disk(&sweep)).await;
        if let Ok((logs, blobs)) = swept
            && logs + blobs > 0
        {
            tracing::info!(logs, blobs, "retention: removed files no record names");
        }
    }
}

async fn collect(shared: &Shared) {
    let now = now_ms();
    let before_ms = now.saturating_sub(shared.cfg.tenancy.retention.as_millis() as u64);
    let cmd = Command::Collect {
        before_ms,
        keep: shared.cfg.tenancy.retention_count,
        now_ms: now,
    };
    match shared.write(cmd).await {
        Ok(CommandResult::Collected { tasks, jobs, blobs }) if tasks + jobs + blobs > 0 => {
            tracing::info!(tasks, jobs, blobs, "retention: forgot what ended");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!("retention: not collected now: {e}"),
    }
    let audit = &shared.cfg.tenancy.audit;
    let before_ms = now.saturating_sub(audit.retention.as_millis() as u64);
    // Entries are numbered as applied but timed as taken: any of them may be the oldest.
    if shared.read(|s| s.audit.values().any(|e| e.at_ms < before_ms)) {
        match shared.write(Command::ForgetAudit { before_ms }).await {
            Ok(CommandResult::Forgotten(n)) => {
                tracing::info!(entries = n, "retention: forgot old audit entries");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("retention: audit log not pruned now: {e}"),
        }
    }
}

/// Removes log files of tasks the state no longer holds (ids it handed out) and blob files
/// no record names, older than the grace. Returns how many of each went.
fn sweep_disk(shared: &Shared) -> (u64, u64) {
    let (known_tasks, last_id, known_blobs) = shared.read(|s| {
        (
            s.tasks
                .iter()
                .map(|(id, t)| (*id, wasmos_state::tenant_of(&t.owner).map(str::to_string)))
                .collect::<std::collections::BTreeMap<_, _>>(),
            s.next_task_id,
            s.bundles
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
        )
    });
    let logs = shared.logs.sweep(
        |t| t.0 > last_id || known_tasks.contains_key(&t),
        |t| known_tasks.get(&t).cloned().flatten(),
    );
    let blobs = shared
        .bundles
        .sweep(|h| known_blobs.contains(h), UNRECORDED_GRACE);
    (logs, blobs)
}
