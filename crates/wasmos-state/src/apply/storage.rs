//! Applying commands of one family: blobs and retention.

use super::super::*;

impl ClusterState {
    pub(crate) fn apply_storage(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::AddBundle {
                hash,
                size,
                now_ms,
                reader,
            } => {
                if let Some(tenant) = &reader {
                    let quota = self.storage_quota(tenant);
                    let held = self.stored_by(tenant);
                    let adds = self
                        .bundles
                        .get(&hash)
                        .is_none_or(|b| !b.readers.contains(tenant));
                    if adds && held.saturating_add(size) > quota {
                        return CommandResult::Rejected(Rejection::OverLimit(format!(
                            "tenant {tenant} stores {} of its {} storage quota; {} more does not fit (wait for retention to collect what ended, or ask an operator for more)",
                            wasmos_proto::format_bytes(held),
                            wasmos_proto::format_bytes(quota),
                            wasmos_proto::format_bytes(size)
                        )));
                    }
                }
                let meta = self.bundles.entry(hash).or_insert(BundleMeta {
                    size,
                    added_ms: now_ms,
                    readers: BTreeSet::new(),
                    kept_on: BTreeSet::new(),
                    signatures: Vec::new(),
                });
                // Re-uploaded bytes are fresh again for retention; bytes an agent kept are now
                // on the masters too.
                meta.added_ms = meta.added_ms.max(now_ms);
                meta.kept_on.clear();
                if let Some(tenant) = reader {
                    meta.readers.insert(tenant);
                }
                CommandResult::Ok
            }
            Command::Collect {
                before_ms,
                keep,
                now_ms,
            } => {
                self.forget_submissions(now_ms);
                self.collect(before_ms, keep)
            }
            other => CommandResult::Rejected(Rejection::Invalid(format!(
                "not a command of this family: {other:?}"
            ))),
        }
    }
}
