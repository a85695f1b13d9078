//! The revocation list every handshake checks: certificates revoked by serial number, and
//! identities revoked whole (every certificate naming them). The list is shared and replaced
//! as a whole when the replicated one changes, so a revocation takes effect on the next
//! handshake without restarting anything; live sessions are the caller's to close.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Identity;

/// What is revoked: serial numbers (lowercase hex, no leading zero bytes, as
/// [`serial_of_der`] prints them) and identities (`wasmos://...` URIs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub serials: BTreeSet<String>,
    pub identities: BTreeSet<String>,
}

impl Revoked {
    /// Whether a certificate with this serial naming this identity is revoked. Masters'
    /// certificates never are: they carry the group's own traffic (raft included), so a
    /// revocation must not be able to split it; a master leaves the group instead, and a
    /// leaked master key calls for a CA rollover (docs/security.md).
    pub fn covers(&self, serial: &str, identity: Option<&Identity>) -> bool {
        if matches!(identity, Some(Identity::Master(_))) {
            return false;
        }
        self.serials.contains(serial)
            || identity.is_some_and(|i| self.identities.contains(&i.to_uri()))
    }

    pub fn len(&self) -> usize {
        self.serials.len() + self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The list a node's verifiers consult, cheap to clone (one shared list), with a counter of
/// its changes for whoever must act on them (closing what a change revokes).
#[derive(Debug, Clone)]
pub struct RevocationList(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    list: RwLock<Arc<Revoked>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for RevocationList {
    fn default() -> Self {
        RevocationList(Arc::new(Shared {
            list: RwLock::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }))
    }
}

impl RevocationList {
    /// Replaces the whole list (what the replicated state holds now).
    pub fn set(&self, revoked: Revoked) {
        {
            let mut current = self
                .0
                .list
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *current = Arc::new(revoked);
        }
        self.0.changes.send_modify(|n| *n += 1);
    }

    /// Adds revocations to the list (an agent's list grows as the masters tell it more).
    pub fn extend(&self, serials: Vec<String>, identities: Vec<String>) {
        {
            let mut current = self
                .0
                .list
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut next = Revoked::clone(&current);
            next.serials.extend(serials);
            next.identities.extend(identities);
            *current = Arc::new(next);
        }
        self.0.changes.send_modify(|n| *n += 1);
    }

    pub fn current(&self) -> Arc<Revoked> {
        self.0
            .list
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Returns once the list revokes the certificate `der` (never, if it never does): what a
    /// server holding a connection open races against.
    pub async fn until_revokes(&self, der: Vec<u8>) {
        let mut changes = self.0.changes.subscribe();
        loop {
            if self.revokes(&der) {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether the DER certificate is revoked (by its serial or its identity). A certificate
    /// that cannot be parsed is not this list's to judge: the chain check refuses it.
    pub fn revokes(&self, der: &[u8]) -> bool {
        let Some(serial) = serial_of_der(der) else {
            return false;
        };
        let identity = Identity::from_der(der).ok();
        self.current().covers(&serial, identity.as_ref())
    }
}

/// The application close code of a connection closed because its certificate was revoked:
/// [`crate::REFUSED`], so clients stop at once (see [`crate::is_refusal`]) and say why.
pub const REVOKED_REASON: &[u8] = b"certificate revoked";
/// What a peer is told when its connection closes because the CA that signed its certificate
/// is no longer trusted.
pub const UNTRUSTED_REASON: &[u8] = b"certificate no longer trusted (its CA was removed)";

impl RevocationList {
    /// Whether the peer's certificate on `conn` is revoked.
    pub fn revokes_conn(&self, conn: &quinn::Connection) -> bool {
        crate::peer_leaf(conn).is_some_and(|leaf| self.revokes(leaf.as_ref()))
    }
}

/// The connections a server holds, to close those of a certificate revoked after their
/// handshake.
#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, quinn::Connection>>,
}

/// A connection's place in [`LiveConnections`], given up when it is dropped.
pub struct Registered<'a> {
    live: &'a LiveConnections,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

impl LiveConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, quinn::Connection>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers `conn`; `None` (and the connection closed) if `list` covers it already, which
    /// catches a revocation applied between its handshake and now.
    pub fn register<'a>(
        &'a self,
        conn: &quinn::Connection,
        list: &RevocationList,
    ) -> Option<Registered<'a>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn.clone());
        let registered = Registered { live: self, id };
        if list.revokes_conn(conn) {
            close_as_revoked(conn);
            return None;
        }
        Some(registered)
    }

    /// Closes every live connection `list` covers; how many.
    pub fn close_revoked(&self, list: &RevocationList) -> usize {
        let doomed: Vec<quinn::Connection> = self
            .lock()
            .values()
            .filter(|c| list.revokes_conn(c))
            .cloned()
            .collect();
        for c in &doomed {
            close_as_revoked(c);
        }
        doomed.len()
    }

    /// Closes every live connection `keep` does not keep, as refused because its
    /// certificate's CA is no longer trusted; how many.
    pub fn close_unless(&self, keep: impl Fn(&quinn::Connection) -> bool) -> usize {
        let conns: Vec<quinn::Connection> = self.lock().values().cloned().collect();
        let mut closed = 0;
        for c in conns.iter().filter(|c| !keep(c)) {
            c.close(crate::REFUSED.into(), UNTRUSTED_REASON);
            closed += 1;
        }
        closed
    }
}

/// Closes `conn` as refused because its certificate is revoked (what the peer reports).
pub fn close_as_revoked(conn: &quinn::Connection) {
    conn.close(crate::REFUSED.into(), REVOKED_REASON);
}

/// A certificate's serial number as the revocation list keys it: lowercase hex of its bytes,
/// leading zero bytes dropped (DER adds one to keep the number positive).
pub fn serial_of_der(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(normalize_serial_bytes(cert.raw_serial()))
}

fn normalize_serial_bytes(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let hex: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() { "00".into() } else { hex }
}

/// A serial number as a user writes it (`0A:1b:...`, `0a1b...`, with or without a leading
/// `0x`), in the form [`serial_of_der`] prints; `None` if it is not hex or is too long for a
/// certificate serial (20 bytes).
pub fn normalize_serial(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 42 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes: Option<Vec<u8>> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
        .collect();
    let bytes = bytes?;
    let s = normalize_serial_bytes(&bytes);
    (s.len() <= 40).then_some(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// Accepts connections on `server` and holds each open until its peer closes it.
    fn hold_connections(server: quinn::Endpoint) {
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        conn.closed().await;
                    }
                });
            }
        });
    }

    #[test]
    fn serials_and_identities_revoke_their_certificates_only() {
        let ca = pki::new_ca("t").unwrap();
        let bob = Identity::Tenant {
            tenant: "acme".into(),
            user: "bob".into(),
        };
        let alice = Identity::Tenant {
            tenant: "acme".into(),
            user: "alice".into(),
        };
        let bob1 = der(&pki::issue(&ca, &bob, &[], &[]).unwrap().cert_pem);
        let bob2 = der(&pki::issue(&ca, &bob, &[], &[]).unwrap().cert_pem);
        let alice1 = der(&pki::issue(&ca, &alice, &[], &[]).unwrap().cert_pem);
        let list = RevocationList::default();
        assert!(![&bob1, &bob2, &alice1].iter().any(|c| list.revokes(c)));

        let serial = serial_of_der(&bob1).unwrap();
        assert_ne!(Some(&serial), serial_of_der(&bob2).as_ref());
        list.set(Revoked {
            serials: [serial.clone()].into(),
            identities: BTreeSet::new(),
        });
        assert!(list.revokes(&bob1));
        assert!(!list.revokes(&bob2) && !list.revokes(&alice1));

        list.set(Revoked {
            serials: BTreeSet::new(),
            identities: [bob.to_uri()].into(),
        });
        assert!(list.revokes(&bob1) && list.revokes(&bob2));
        assert!(!list.revokes(&alice1));
        // A master's certificate is not revoked, by serial or by name.
        let m = Identity::Master("m1".into());
        let m1 = der(&pki::issue(&ca, &m, &[], &[]).unwrap().cert_pem);
        list.extend(vec![serial_of_der(&m1).unwrap()], vec![m.to_uri()]);
        assert!(!list.revokes(&m1));
        assert!(list.revokes(&bob1) && list.current().len() == 3);
        // Not a certificate: not this list's to judge.
        assert!(!list.revokes(b"junk"));
    }

    /// Over real QUIC: a revoked client is refused at the handshake with `certificate
    /// revoked`, as soon as the shared list changes and with no new endpoint; lifting the
    /// revocation lets it in again; others are never affected.
    #[tokio::test]
    async fn a_revoked_client_is_refused_at_the_handshake() -> anyhow::Result<()> {
        use crate::{Credentials, client_endpoint, connect, server_endpoint};
        let ca = pki::new_ca("t")?;
        let creds = |who: Identity| pki::issue_credentials(&ca, &who);
        let list = RevocationList::default();
        let master = creds(Identity::Master("m1".into()))?.with_revocations(list.clone());
        let server = server_endpoint("127.0.0.1:0".parse()?, &master, &[b"t"])?;
        let addr = server.local_addr()?;
        hold_connections(server);
        let bob = Identity::Tenant {
            tenant: "acme".into(),
            user: "bob".into(),
        };
        let bob_creds = creds(bob.clone())?;
        let alice_creds = creds(Identity::Tenant {
            tenant: "acme".into(),
            user: "alice".into(),
        })?;
        let dial = |c: &Credentials| -> anyhow::Result<_> {
            let ep = client_endpoint(c, b"t", addr)?;
            Ok(async move {
                let conn = connect(&ep, addr).await;
                // The server's verdict on the client's certificate arrives after the client
                // finished its side: a stream round trip shows whether it stood.
                match conn {
                    Ok(conn) => match conn.open_uni().await {
                        Ok(mut s) => {
                            let _ = s.write_all(b"x").await;
                            let _ = s.finish();
                            // Refused, the connection closes; accepted, it stays open.
                            let wait = std::time::Duration::from_secs(2);
                            match tokio::time::timeout(wait, conn.closed()).await {
                                Ok(e) => Err(e.to_string()),
                                Err(_) => Ok(()),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            })
        };
        assert_eq!(dial(&bob_creds)?.await, Ok(()));
        list.set(Revoked {
            serials: BTreeSet::new(),
            identities: [bob.to_uri()].into(),
        });
        let refused = dial(&bob_creds)?.await.unwrap_err();
        assert!(refused.to_lowercase().contains("revoked"), "{refused}");
        assert_eq!(dial(&alice_creds)?.await, Ok(()));
        list.set(Revoked::default());
        assert_eq!(dial(&bob_creds)?.await, Ok(()));
        Ok(())
    }

    /// The dialing side of the agent peer channel: an agent does not fetch from an agent whose
    /// certificate its list revokes, and reaches it again once the list does not.
    #[tokio::test]
    async fn an_agent_does_not_dial_a_revoked_agent() -> anyhow::Result<()> {
        use crate::{agent_peer_client, connect_agent, server_endpoint};
        let ca = pki::new_ca("t")?;
        let creds = |who: &str| pki::issue_credentials(&ca, &Identity::Agent(who.into()));
        let server = server_endpoint("127.0.0.1:0".parse()?, &creds("holder")?, &[b"p"])?;
        let addr = server.local_addr()?;
        hold_connections(server);
        let list = RevocationList::default();
        let dialer = creds("fetcher")?.with_revocations(list.clone());
        let ep = agent_peer_client(&dialer, b"p", addr)?;
        assert!(connect_agent(&ep, addr, "holder").await.is_ok());
        list.extend(Vec::new(), vec![Identity::Agent("holder".into()).to_uri()]);
        let refused = connect_agent(&ep, addr, "holder").await.err();
        let refused = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("revoked"), "{refused:?}");
        list.set(Revoked::default());
        assert!(connect_agent(&ep, addr, "holder").await.is_ok());
        Ok(())
    }

    #[test]
    fn serials_are_read_as_users_write_them() {
        assert_eq!(normalize_serial("0A:1b:ff").as_deref(), Some("0a1bff"));
        assert_eq!(normalize_serial("0x00a1b").as_deref(), Some("0a1b"));
        assert_eq!(normalize_serial("  7 ").as_deref(), Some("07"));
        assert_eq!(normalize_serial("00:00").as_deref(), Some("00"));
        for bad in ["", "xyz", "0x", "12:zz", &"ab".repeat(21)] {
            assert_eq!(normalize_serial(bad), None, "{bad:?}");
        }
        let ca = pki::new_ca("t").unwrap();
        let c = der(&pki::issue(&ca, &Identity::Operator("o".into()), &[], &[])
            .unwrap()
            .cert_pem);
        let s = serial_of_der(&c).unwrap();
        assert_eq!(normalize_serial(&s), Some(s.clone()));
        let colons: Vec<String> = (0..s.len())
            .step_by(2)
            .map(|i| s[i..i + 2].to_uppercase())
            .collect();
        assert_eq!(normalize_serial(&colons.join(":")), Some(s));
    }
}
