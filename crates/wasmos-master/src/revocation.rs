//! Revocations taking effect on this master: the list its verifiers consult (QUIC and HTTPS)
//! follows the replicated one, and the live connections of a certificate it newly covers are
//! closed as soon as the change is applied here, on every master, leader or not.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmos_net::{Connection, RevocationList, Revoked};
use wasmos_state::ClusterState;

/// The connections this master serves, to close those of a revoked certificate.
#[derive(Default)]
pub(crate) struct Live {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, Connection>>,
}

/// A connection's place in [`Live`], given up when it is dropped.
pub(crate) struct Registered<'a> {
    live: &'a Live,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Connection>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `conn`; `None` (and the connection closed) if `list` covers it already, which
    /// catches a revocation applied between its handshake and now.
    pub(crate) fn register<'a>(
        &'a self,
        conn: &Connection,
        list: &RevocationList,
    ) -> Option<Registered<'a>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn.clone());
        let registered = Registered { live: self, id };
        if list.revokes_conn(conn) {
            close(conn);
            return None;
        }
        Some(registered)
    }

    /// Closes every live connection `list` covers; how many.
    pub(crate) fn close_revoked(&self, list: &RevocationList) -> usize {
        let doomed: Vec<Connection> = self
            .lock()
            .values()
            .filter(|c| list.revokes_conn(c))
            .cloned()
            .collect();
        for c in &doomed {
            close(c);
        }
        doomed.len()
    }
}

fn close(conn: &Connection) {
    conn.close(wasmos_net::REFUSED.into(), wasmos_net::REVOKED_REASON);
}

/// The replicated revocations, as the verifiers read them.
pub(crate) fn revoked_of(s: &ClusterState) -> Revoked {
    Revoked {
        serials: s.revoked_serials.keys().cloned().collect(),
        identities: s.revoked_identities.keys().cloned().collect(),
    }
}

/// Keeps `list` equal to the replicated revocations and closes what each change covers.
/// Revocations are only ever added, so their count tells a change.
pub(crate) async fn follow(shared: std::sync::Arc<crate::Shared>) {
    let mut applied = shared.raft.subscribe();
    let mut seen = None;
    loop {
        let count = shared
            .raft
            .read(|s| s.revoked_serials.len() + s.revoked_identities.len());
        if seen != Some(count) {
            seen = Some(count);
            shared.revocations.set(shared.raft.read(revoked_of));
            let closed = shared.live.close_revoked(&shared.revocations);
            if closed > 0 {
                tracing::info!(closed, "closed connections of revoked certificates");
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}
