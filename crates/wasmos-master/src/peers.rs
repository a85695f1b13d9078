//! Bundle blobs across the master group (`wasmos-peer/1`): an upload is copied to a majority of
//! masters before it is acknowledged, so losing any minority loses no bundle, and a master that
//! lacks a blob the replicated state names (it was down, or not among the first copies) fetches
//! it from its peers when an agent or client needs it. A master without a CA key renews its
//! certificate from a peer that has one over the same channel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use wasmos_net::{Connection, Credentials, Endpoint, recv_frame, send_frame};
use wasmos_proto::{BlobKind, BundleHash, PeerRequest, PeerResponse, alpn};

use crate::Shared;

/// How long one copy to or from a peer may take (a large bundle over a slow link).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections to the other masters, made on first use and again after they break or this
/// master's certificate changes.
pub(crate) struct PeerLinks {
    endpoint: Option<(Endpoint, Credentials)>,
    /// Each with the certificate (DER) this master dialed it with: a peer renewing this
    /// master's certificate takes its names from that one, so it must be the one in force.
    conns: tokio::sync::Mutex<BTreeMap<SocketAddr, (Connection, Vec<u8>)>>,
}

impl PeerLinks {
    /// `None` for a single master, which has no peers.
    pub fn new(creds: Option<&Credentials>) -> Result<PeerLinks, wasmos_net::NetError> {
        let endpoint = match creds {
            Some(creds) => {
                let any = SocketAddr::from(([0, 0, 0, 0], 0));
                let endpoint = wasmos_net::client_endpoint(creds, alpn::PEER, any)?;
                Some((endpoint, creds.clone()))
            }
            None => None,
        };
        Ok(PeerLinks {
            endpoint,
            conns: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    async fn conn(&self, addr: SocketAddr) -> Result<Connection, String> {
        let (endpoint, creds) = self
            .endpoint
            .as_ref()
            .ok_or_else(|| "this master has no peers".to_string())?;
        let leaf = creds.leaf();
        if let Some((c, _)) = self
            .conns
            .lock()
            .await
            .get(&addr)
            .filter(|(c, with)| c.close_reason().is_none() && *with == leaf)
        {
            return Ok(c.clone());
        }
        // Dialed without the lock: a dead master must not hold up copies to the others.
        let conn = wasmos_net::connect(endpoint, addr)
            .await
            .map_err(|e| e.to_string())?;
        self.conns.lock().await.insert(addr, (conn.clone(), leaf));
        Ok(conn)
    }
}

/// Sends `req` (and then `body`, raw) to the peer at `addr` and reads its answer: the
/// answer and the stream the rest of it comes on, or why not (the peer's own refusal among
/// them).
async fn exchange(
    links: &PeerLinks,
    addr: SocketAddr,
    req: &PeerRequest,
    body: &[u8],
) -> Result<(PeerResponse, wasmos_net::RecvStream), String> {
    let conn = links.conn(addr).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send_frame(&mut send, req)
        .await
        .map_err(|e| e.to_string())?;
    if !body.is_empty() {
        send.write_all(body).await.map_err(|e| e.to_string())?;
    }
    let _ = send.finish();
    match recv_frame::<PeerResponse>(&mut recv).await {
        Ok(Some(PeerResponse::Error { message })) => Err(message),
        Ok(Some(answer)) => Ok((answer, recv)),
        Ok(None) => Err("it closed the stream without answering".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A peer master: id, address, whether it votes.
type Peer = (u64, SocketAddr, bool);

/// The other members of the group, and how many other voters must hold a copy for a majority
/// of voters to have it (this master counts only if it votes itself). Copies to learners are
/// made but not counted.
fn others(shared: &Shared) -> (Vec<Peer>, usize) {
    let status = shared.raft.status();
    let voters = status.members.iter().filter(|m| m.voter).count();
    let self_votes = status
        .members
        .iter()
        .any(|m| m.id == status.node && m.voter);
    let others = status
        .members
        .iter()
        .filter(|m| m.id != status.node)
        .filter_map(|m| Some((m.id, m.addr.parse().ok()?, m.voter)))
        .collect();
    (
        others,
        (voters / 2 + 1).saturating_sub(usize::from(self_votes)),
    )
}

async fn put(
    links: &PeerLinks,
    addr: SocketAddr,
    hash: &BundleHash,
    kind: BlobKind,
    bytes: &[u8],
) -> Result<(), String> {
    let req = PeerRequest::PutBlob {
        hash: hash.clone(),
        kind,
        size: bytes.len() as u64,
    };
    match exchange(links, addr, &req, bytes).await? {
        (PeerResponse::Stored, _) => Ok(()),
        (other, _) => Err(format!("unexpected answer {other:?}")),
    }
}

/// Copies a blob this master just stored to its peers and returns once a majority of the
/// group's voters (this master included) holds it. The remaining copies go on in the
/// background. A single master has nothing to do.
pub(crate) async fn replicate(
    shared: &Arc<Shared>,
    hash: &BundleHash,
    kind: BlobKind,
    bytes: Arc<Vec<u8>>,
) -> Result<(), String> {
    let (others, needed) = others(shared);
    if needed == 0 {
        return Ok(());
    }
    let mut copies: futures::stream::FuturesUnordered<_> = others
        .into_iter()
        .map(|(id, addr, voter)| {
            let shared = shared.clone();
            let hash = hash.clone();
            let bytes = bytes.clone();
            // Spawned, so the copies still running when the majority is reached complete.
            tokio::spawn(async move {
                let done = tokio::time::timeout(
                    TRANSFER_TIMEOUT,
                    put(&shared.peers, addr, &hash, kind, &bytes),
                )
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {TRANSFER_TIMEOUT:?}")));
                if let Err(e) = &done {
                    tracing::warn!(%hash, master = id, "copying the blob to master {id} failed: {e}");
                }
                done.map(|()| voter).map_err(|e| format!("master {id}: {e}"))
            })
        })
        .collect();
    let mut stored = 0;
    let mut errors = Vec::new();
    while let Some(done) = copies.next().await {
        match done {
            Ok(Ok(voter)) => {
                stored += usize::from(voter);
                if stored >= needed {
                    return Ok(());
                }
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!(
        "the bundle reached {stored} of the {needed} other voting masters a majority needs ({})",
        errors.join("; ")
    ))
}

async fn get(
    links: &PeerLinks,
    addr: SocketAddr,
    hash: &BundleHash,
    max: u64,
) -> Result<Vec<u8>, String> {
    let req = PeerRequest::GetBlob { hash: hash.clone() };
    match exchange(links, addr, &req, &[]).await? {
        (PeerResponse::Blob { size }, mut recv) => {
            if size > max {
                return Err(format!(
                    "announced {size} bytes; this master accepts at most {max}"
                ));
            }
            let bytes = recv
                .read_to_end(size as usize + 1)
                .await
                .map_err(|e| e.to_string())?;
            if bytes.len() as u64 != size {
                return Err(format!("announced {size} bytes but sent {}", bytes.len()));
            }
            Ok(bytes)
        }
        (other, _) => Err(format!("unexpected answer {other:?}")),
    }
}

/// A blob from this master's store, else from the first peer that holds it (the copy is then
/// kept here). The hash check in the store guards against a peer sending anything else.
pub(crate) async fn blob(shared: &Shared, hash: &BundleHash) -> Result<Vec<u8>, String> {
    match shared.bundles.get(hash) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot read bundle {hash}: {e}"));
        }
        Err(_) => {}
    }
    let (others, _) = others(shared);
    let mut errors = Vec::new();
    let max = shared.cfg.max_bundle_bytes;
    for (id, addr, _) in others {
        match tokio::time::timeout(TRANSFER_TIMEOUT, get(&shared.peers, addr, hash, max)).await {
            Ok(Ok(bytes)) => {
                // Kind is not recorded with the blob; the bytes were checked when first stored,
                // so only the hash is checked again here.
                shared
                    .bundles
                    .put(hash, &bytes, BlobKind::Data)
                    .map_err(|e| format!("master {id} sent a bad copy of {hash}: {e}"))?;
                tracing::info!(%hash, from = id, "fetched a bundle from a peer");
                return Ok(bytes);
            }
            Ok(Err(e)) => errors.push(format!("master {id}: {e}")),
            Err(_) => errors.push(format!("master {id}: timed out")),
        }
    }
    Err(if errors.is_empty() {
        format!("bundle {hash} is not stored on this master")
    } else {
        format!(
            "bundle {hash} is on no reachable master ({})",
            errors.join("; ")
        )
    })
}

/// A new certificate for this master from the peer at `addr`, or why not.
async fn ask_renewal(links: &PeerLinks, addr: SocketAddr, csr: &[u8]) -> Result<String, String> {
    let req = PeerRequest::Renew { csr: csr.to_vec() };
    match exchange(links, addr, &req, &[]).await? {
        (PeerResponse::Renewed { cert_pem }, _) => Ok(cert_pem),
        (other, _) => Err(format!("unexpected answer {other:?}")),
    }
}

/// A new certificate for this master, for the key of `csr`, from the first peer that holds a
/// CA key: the leader first, which records the renewal in the audit log (a follower cannot).
pub(crate) async fn renewal(shared: &Shared, csr: Vec<u8>) -> Result<String, String> {
    let (mut others, _) = others(shared);
    let leader = shared.raft.status().leader;
    others.sort_by_key(|(id, _, _)| Some(*id) != leader);
    let mut errors = Vec::new();
    for (id, addr, _) in others {
        match tokio::time::timeout(TRANSFER_TIMEOUT, ask_renewal(&shared.peers, addr, &csr)).await {
            Ok(Ok(cert)) => {
                tracing::info!(from = id, "master {id} renewed this master's certificate");
                return Ok(cert);
            }
            Ok(Err(e)) => errors.push(format!("master {id}: {e}")),
            Err(_) => errors.push(format!("master {id}: timed out")),
        }
    }
    Err(if errors.is_empty() {
        "this master holds no CA key and has no peers to ask".to_string()
    } else {
        format!("no peer renewed it ({})", errors.join("; "))
    })
}

/// Has the leader record `entry` (see [`crate::audit::record`]).
pub(crate) async fn audit_at_leader(
    shared: &Shared,
    entry: wasmos_proto::AuditEntry,
) -> Result<(), String> {
    let status = shared.raft.status();
    let leader = status.leader.ok_or("no leader now")?;
    let addr: SocketAddr = status
        .members
        .iter()
        .find(|m| m.id == leader && m.id != status.node)
        .and_then(|m| m.addr.parse().ok())
        .ok_or_else(|| format!("no address for the leader (master {leader})"))?;
    match exchange(&shared.peers, addr, &PeerRequest::Audit { entry }, &[]).await? {
        (PeerResponse::Stored, _) => Ok(()),
        (other, _) => Err(format!("unexpected answer {other:?}")),
    }
}

/// Serves one peer master's requests.
pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let reply = match recv_frame::<PeerRequest>(&mut recv).await {
                Ok(Some(PeerRequest::PutBlob { hash, kind, size })) => {
                    store(&shared, &hash, kind, size, &mut recv).await
                }
                Ok(Some(PeerRequest::GetBlob { hash })) => match shared.bundles.get(&hash) {
                    Ok(bytes) => {
                        let head = PeerResponse::Blob {
                            size: bytes.len() as u64,
                        };
                        if send_frame(&mut send, &head).await.is_ok() {
                            let _ = send.write_all(&bytes).await;
                        }
                        let _ = send.finish();
                        return;
                    }
                    Err(e) => PeerResponse::Error {
                        message: format!("bundle {hash}: {e}"),
                    },
                },
                Ok(Some(PeerRequest::Renew { csr })) => {
                    crate::renewal::renew_peer(&shared, &conn, &csr).await
                }
                Ok(Some(PeerRequest::Audit { entry })) => {
                    let cmd = wasmos_state::Command::Audited { entry, cmd: None };
                    match shared.raft.propose(cmd).await {
                        Ok(_) => PeerResponse::Stored,
                        Err(e) => PeerResponse::Error {
                            message: e.to_string(),
                        },
                    }
                }
                Ok(None) => return,
                Err(e) => PeerResponse::Error {
                    message: e.to_string(),
                },
            };
            let _ = send_frame(&mut send, &reply).await;
            let _ = send.finish();
        });
    }
}

async fn store(
    shared: &Shared,
    hash: &BundleHash,
    kind: BlobKind,
    size: u64,
    recv: &mut wasmos_net::RecvStream,
) -> PeerResponse {
    let max = shared.cfg.max_bundle_bytes;
    if size > max {
        return PeerResponse::Error {
            message: format!("bundle is {size} bytes; this master accepts at most {max}"),
        };
    }
    let bytes = match recv.read_to_end(size as usize + 1).await {
        Ok(b) if b.len() as u64 == size => b,
        Ok(b) => {
            return PeerResponse::Error {
                message: format!("announced {size} bytes but sent {}", b.len()),
            };
        }
        Err(e) => {
            return PeerResponse::Error {
                message: format!("copy failed: {e}"),
            };
        }
    };
    match shared.bundles.put(hash, &bytes, kind) {
        Ok(()) => PeerResponse::Stored,
        Err(e) => PeerResponse::Error {
            message: e.to_string(),
        },
    }
}
