//! Storing a blob (a client's upload or a task's output an agent sends): size and quota
//! checks before the bytes are read, hash check, copies on a majority of masters, then the
//! record through raft.

use std::sync::Arc;

use wasmos_net::RecvStream;
use wasmos_proto::{BlobKind, BundleHash, ErrorKind};
use wasmos_state::{Command, CommandResult};

use crate::{Shared, now_ms};

pub(crate) enum StoreFailure {
    Refused(ErrorKind, String),
    Raft(wasmos_raft::RaftError),
}

impl StoreFailure {
    pub(crate) fn message(&self) -> String {
        match self {
            StoreFailure::Refused(_, m) => m.clone(),
            StoreFailure::Raft(e) => e.to_string(),
        }
    }
}

/// Reads an announced blob from `recv`, checks it against its hash, copies it to a majority of
/// masters and records it: a client's upload (`reader`: the uploading tenant, which may read
/// it from then on), or a task's output an agent sends.
pub(crate) async fn store_blob(
    shared: &Arc<Shared>,
    hash: BundleHash,
    size: u64,
    kind: BlobKind,
    reader: Option<String>,
    recv: &mut RecvStream,
) -> Result<(), StoreFailure> {
    let error = |kind, message| Err(StoreFailure::Refused(kind, message));
    let max = shared.cfg.max_bundle_bytes;
    if size > max {
        return error(
            ErrorKind::TooLarge,
            format!("bundle is {size} bytes; this master accepts at most {max}"),
        );
    }
    // Refused before the bytes are read: a full quota stops a flood at the door. The hold
    // lasts until the record is committed (or the upload fails); then the state counts it.
    let _hold = match &reader {
        Some(tenant) => match shared.reserve_upload(tenant, size) {
            Ok(h) => Some(h),
            Err(e) => return error(ErrorKind::TooLarge, e),
        },
        None => None,
    };
    // One byte more than announced, so a client that sends extra is caught.
    let bytes = match recv.read_to_end(size as usize + 1).await {
        Ok(b) if b.len() as u64 == size => b,
        Ok(b) => {
            return error(
                ErrorKind::InvalidBundle,
                format!("announced {size} bytes but sent {}", b.len()),
            );
        }
        Err(e) => return error(ErrorKind::InvalidBundle, format!("upload failed: {e}")),
    };
    if let Err(e) = shared.bundles.put(&hash, &bytes, kind) {
        return error(ErrorKind::InvalidBundle, e.to_string());
    }
    // Acknowledged only once a majority of masters holds the bytes: the record below must never
    // name a bundle that the loss of a minority of masters could take away.
    if let Err(e) = crate::peers::replicate(shared, &hash, kind, Arc::new(bytes)).await {
        return error(
            ErrorKind::Unavailable,
            format!("bundle {hash} not stored: {e}"),
        );
    }
    match shared
        .write(Command::AddBundle {
            hash,
            size,
            now_ms: now_ms(),
            reader,
        })
        .await
    {
        // Past the storage quota: too large for what the tenant may keep.
        Ok(CommandResult::Rejected(why @ wasmos_state::Rejection::OverLimit(_))) => {
            error(ErrorKind::TooLarge, why.to_string())
        }
        Ok(CommandResult::Rejected(why)) => error(why.error_kind(), why.to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(StoreFailure::Raft(e)),
    }
}
