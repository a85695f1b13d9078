//! Outputs kept on this agent (`TaskSpec::outputs_on_agent`, a batch job's intermediate files):
//! storing them under a byte budget, serving them to other agents on `wasmos-agent-peer/1`,
//! and fetching the ones other agents keep for the inputs of tasks that run here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmos_net::{Connection, Credentials, Endpoint, Identity, recv_frame, send_frame};
use wasmos_proto::{
    AgentPeerRequest, AgentPeerResponse, BundleHash, ErrorKind, InputSource, OutputFile, alpn,
};

/// The directory of kept outputs, one file per blob named by its hash.
pub(crate) fn dir(work_dir: &Path) -> PathBuf {
    work_dir.join("kept")
}

/// Most fetches this agent serves at once: each holds a whole blob in memory.
const SERVE_CONCURRENCY: usize = 16;
/// How long a fetch of a kept input may take, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries at a kept input before it is reported lost: a restarting peer gets a moment.
const FETCH_TRIES: u32 = 3;
/// How long a peer has to send its request once it opened a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept file stays after it was last made or read: jobs read their intermediate
/// files soon after they are made; one read later than this finds it gone and has it made again.
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// Why outputs were not kept.
#[derive(Debug)]
pub(crate) enum KeepError {
    /// The store would go over its budget: the caller stores them on the masters instead.
    OverBudget,
    Failed(String),
}

/// Moves the files of a finished task's outputs directory into the kept store and lists them,
/// after dropping kept files nobody made or read for [`KEEP_FOR`]. Refuses (touching nothing)
/// when they would take the store over `budget` bytes. Blocking: call it off the async
/// workers.
pub(crate) fn keep(
    work_dir: &Path,
    files: Vec<(String, PathBuf, u64)>,
    max_file: u64,
    budget: u64,
) -> Result<Vec<OutputFile>, KeepError> {
    // One keep at a time: tasks finishing together must not each see room for their outputs.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept = dir(work_dir);
    std::fs::create_dir_all(&kept)
        .map_err(|e| KeepError::Failed(format!("cannot create {}: {e}", kept.display())))?;
    let held = expire(&kept);
    let adding: u64 = files.iter().map(|f| f.2).sum();
    if held.saturating_add(adding) > budget {
        return Err(KeepError::OverBudget);
    }
    if let Some((path, _, size)) = files.iter().find(|f| f.2 > max_file) {
        return Err(KeepError::Failed(format!(
            "output {path} is {size} bytes, over the {max_file}-byte blob limit"
        )));
    }
    let mut out = Vec::new();
    for (path, host, _) in files {
        let bytes = std::fs::read(&host)
            .map_err(|e| KeepError::Failed(format!("cannot read output {path}: {e}")))?;
        let hash = BundleHash::from_digest(&Sha256::digest(&bytes).into());
        let dest = kept.join(hash.as_str());
        // The same bytes kept already (another attempt, another task) and intact: one copy,
        // freshened. Anything else there (a partial write of a crashed agent) is replaced.
        let intact =
            std::fs::read(&dest).is_ok_and(|b| hex::encode(Sha256::digest(&b)) == hash.as_str());
        if intact {
            touch(&dest);
        } else if std::fs::rename(&host, &dest).is_err() {
            // Another file system: a copy, whole or not at all (a temporary file renamed). No
            // fsync, here or above: a kept file is not durable by design, and one a crash
            // damaged fails its hash at the next read, which has it made again.
            let mut tmp = tempfile::NamedTempFile::new_in(&kept)
                .map_err(|e| KeepError::Failed(format!("cannot keep output {path}: {e}")))?;
            std::io::Write::write_all(&mut tmp, &bytes)
                .map_err(|e| KeepError::Failed(format!("cannot keep output {path}: {e}")))?;
            tmp.persist(&dest)
                .map_err(|e| KeepError::Failed(format!("cannot keep output {path}: {e}")))?;
        }
        out.push(OutputFile {
            path,
            blob: hash,
            size: bytes.len() as u64,
            held_by: None,
        });
    }
    Ok(out)
}

fn touch(path: &Path) {
    let _ = std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
}

/// Drops kept files (and temporary files a crash left) not made or read for [`KEEP_FOR`];
/// returns the bytes the store still holds. A dropped file still needed is made again by its
/// job (the reader reports it lost).
fn expire(kept: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(kept) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut total = 0u64;
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        let age = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age > KEEP_FOR && std::fs::remove_file(e.path()).is_ok() {
            tracing::info!(
                "dropped kept output {} (unused for {KEEP_FOR:?})",
                e.path().display()
            );
            continue;
        }
        total = total.saturating_add(m.len());
    }
    total
}

/// A kept blob's bytes, if this agent keeps it and they still hash right (a read keeps it
/// from expiring).
pub(crate) async fn read_local(work_dir: &Path, hash: &BundleHash) -> Option<Vec<u8>> {
    let path = dir(work_dir).join(hash.as_str());
    let bytes = tokio::fs::read(&path).await.ok()?;
    if hex::encode(Sha256::digest(&bytes)) != hash.as_str() {
        return None;
    }
    let _ = tokio::task::spawn_blocking(move || touch(&path)).await;
    Some(bytes)
}

/// What the peer server needs of the masters' revocations.
pub(crate) struct Revocations {
    /// The list the endpoint's handshakes check.
    pub(crate) list: wasmos_net::RevocationList,
    /// Connections served, closed when the list comes to cover them.
    pub(crate) live: Arc<wasmos_net::LiveConnections>,
    /// Turns true once the masters' whole list has arrived.
    pub(crate) known: tokio::sync::watch::Receiver<bool>,
}

/// Serves kept outputs to other agents until the endpoint closes. Anyone but an agent of the
/// cluster is refused at once; an agent gets only files of the kept store, by valid hash.
/// Nothing is served before the masters' revocations are known.
pub(crate) async fn serve(endpoint: Endpoint, work_dir: PathBuf, me: String, revoked: Revocations) {
    let Revocations {
        list,
        live,
        mut known,
    } = revoked;
    if known.wait_for(|k| *k).await.is_err() {
        return;
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(SERVE_CONCURRENCY));
    while let Some(incoming) = endpoint.accept().await {
        let (work_dir, permits, me) = (work_dir.clone(), permits.clone(), me.clone());
        let (list, live) = (list.clone(), live.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                return;
            };
            let Some(_live) = live.register(&conn, &list) else {
                return;
            };
            let agent = matches!(wasmos_net::peer_identity(&conn), Ok(Identity::Agent(_)));
            let alpn_ok = wasmos_net::negotiated_alpn(&conn).as_deref() == Some(alpn::AGENT_PEER);
            if !agent || !alpn_ok {
                let peer =
                    wasmos_net::peer_identity(&conn).map_or_else(|e| e.to_string(), |i| i.to_uri());
                tracing::warn!("refused {peer} on the agent peer channel: only agents fetch here");
                conn.close(
                    wasmos_net::REFUSED.into(),
                    b"only agents fetch kept outputs",
                );
                return;
            }
            while let Ok((send, recv)) = conn.accept_bi().await {
                let (work_dir, permits, me) = (work_dir.clone(), permits.clone(), me.clone());
                tokio::spawn(async move {
                    // The request first, within a bound: a peer that opens streams and sends
                    // nothing must not hold the permits that serve the others.
                    let request = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        recv_frame::<AgentPeerRequest>(&mut { recv }),
                    )
                    .await;
                    let Ok(request) = request else {
                        return;
                    };
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    serve_one(&work_dir, &me, request, send).await;
                });
            }
        });
    }
}

async fn serve_one(
    work_dir: &Path,
    me: &str,
    request: Result<Option<AgentPeerRequest>, wasmos_net::FrameError>,
    mut send: wasmos_net::SendStream,
) {
    let answer = match request {
        Ok(Some(AgentPeerRequest::Fetch { hash })) => {
            // The hash names a file: only 64 hex digits may (no path of any other shape).
            match BundleHash::parse(hash.as_str()) {
                Ok(hash) => match read_local(work_dir, &hash).await {
                    Some(bytes) => Ok(bytes),
                    None => Err((
                        ErrorKind::NotFound,
                        format!("agent {me} keeps no output {hash}"),
                    )),
                },
                Err(e) => Err((ErrorKind::InvalidRequest, e.to_string())),
            }
        }
        Ok(None) => return,
        Err(e) => Err((ErrorKind::InvalidRequest, format!("bad request: {e}"))),
    };
    let result = match answer {
        Ok(bytes) => {
            let head = AgentPeerResponse::Blob {
                size: bytes.len() as u64,
            };
            match send_frame(&mut send, &head).await {
                Ok(()) => send.write_all(&bytes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        Err((kind, message)) => send_frame(&mut send, &AgentPeerResponse::Error { kind, message })
            .await
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        tracing::debug!("a kept-output fetch ended early: {e}");
    }
    let _ = send.finish();
}

/// Dials other agents, one connection per agent reused across fetches.
pub(crate) struct Peers {
    /// This agent's credentials, with the revocation list the dialing verifier consults.
    creds: Credentials,
    /// Turns true once the masters' whole revocation list has arrived: nothing is fetched
    /// before (a revoked agent could pose as a holder).
    known: tokio::sync::watch::Receiver<bool>,
    endpoints: Mutex<BTreeMap<bool, Endpoint>>,
    conns: Mutex<BTreeMap<String, Connection>>,
}

/// Why a kept input could not be had.
#[derive(Debug)]
pub(crate) struct Lost(pub String);

impl Peers {
    pub(crate) fn new(creds: Credentials, known: tokio::sync::watch::Receiver<bool>) -> Peers {
        Peers {
            creds,
            known,
            endpoints: Mutex::default(),
            conns: Mutex::default(),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Connection>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes and forgets the connections to agents whose certificate is now revoked; how many.
    pub(crate) fn close_revoked(&self) -> usize {
        let list = self.creds.revocations();
        let mut conns = self.conns();
        let before = conns.len();
        conns.retain(|_, c| {
            let revoked = list.revokes_conn(c);
            if revoked {
                wasmos_net::close_as_revoked(c);
            }
            !revoked
        });
        before - conns.len()
    }

    fn endpoint(&self, addr: SocketAddr) -> Result<Endpoint, String> {
        let mut eps = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = eps.get(&addr.is_ipv6()) {
            return Ok(e.clone());
        }
        let e = wasmos_net::agent_peer_client(&self.creds, alpn::AGENT_PEER, addr)
            .map_err(|e| e.to_string())?;
        eps.insert(addr.is_ipv6(), e.clone());
        Ok(e)
    }

    async fn conn(&self, agent: &str, addr: SocketAddr) -> Result<Connection, String> {
        let revocations = self.creds.revocations();
        let cached = self
            .conns()
            .get(agent)
            .filter(|c| c.close_reason().is_none() && c.remote_address() == addr)
            .filter(|c| !revocations.revokes_conn(c))
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let endpoint = self.endpoint(addr)?;
        let conn = wasmos_net::connect_agent(&endpoint, addr, agent)
            .await
            .map_err(|e| e.to_string())?;
        self.conns().insert(agent.to_string(), conn.clone());
        Ok(conn)
    }

    /// The bytes of a kept input, verified against its hash: from this agent's own store when
    /// it has them, else from its holders (`sources`, all for the same blob) in turn.
    pub(crate) async fn fetch(
        &self,
        work_dir: &Path,
        sources: &[&InputSource],
        max: u64,
    ) -> Result<Vec<u8>, Lost> {
        let Some(first) = sources.first() else {
            return Err(Lost("no agent keeps it".into()));
        };
        if let Some(bytes) = read_local(work_dir, &first.blob).await {
            return Ok(bytes);
        }
        let mut known = self.known.clone();
        if !matches!(
            tokio::time::timeout(FETCH_TIMEOUT, known.wait_for(|k| *k)).await,
            Ok(Ok(_))
        ) {
            return Err(Lost(
                "this agent has not had the masters' revocation list yet".into(),
            ));
        }
        let mut why = Vec::new();
        for src in sources {
            match self.fetch_from(src, max).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => why.push(format!("agent {}: {e}", src.agent)),
            }
        }
        Err(Lost(why.join("; ")))
    }

    async fn fetch_from(&self, src: &InputSource, max: u64) -> Result<Vec<u8>, String> {
        let Some(addr) = src
            .addr
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return Err("it serves no address (--peer-listen off)".into());
        };
        let mut last = String::new();
        for attempt in 0..FETCH_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let once = tokio::time::timeout(FETCH_TIMEOUT, self.fetch_once(src, addr, max));
            match once.await {
                Ok(Ok(bytes)) => return Ok(bytes),
                // The holder answered that it has no such output: asking again cannot help.
                Ok(Err((true, e))) => return Err(e),
                Ok(Err((false, e))) => last = e,
                Err(_) => last = format!("no answer within {FETCH_TIMEOUT:?}"),
            }
            self.conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(src.agent.as_str());
        }
        Err(format!("at {addr}: {last}"))
    }

    /// One try; the error says whether it is final (the holder does not have it).
    async fn fetch_once(
        &self,
        src: &InputSource,
        addr: SocketAddr,
        max: u64,
    ) -> Result<Vec<u8>, (bool, String)> {
        let conn = self
            .conn(src.agent.as_str(), addr)
            .await
            .map_err(|e| (false, e))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| (false, e.to_string()))?;
        let ask = AgentPeerRequest::Fetch {
            hash: src.blob.clone(),
        };
        send_frame(&mut send, &ask)
            .await
            .map_err(|e| (false, e.to_string()))?;
        let _ = send.finish();
        let size = match recv_frame::<AgentPeerResponse>(&mut recv).await {
            Ok(Some(AgentPeerResponse::Blob { size })) => size,
            Ok(Some(AgentPeerResponse::Error { kind, message })) => {
                return Err((kind == ErrorKind::NotFound, message));
            }
            Ok(None) => return Err((false, "the stream ended without an answer".into())),
            Err(e) => return Err((false, e.to_string())),
        };
        if size > max {
            return Err((
                true,
                format!("it is {size} bytes, over the {max}-byte limit"),
            ));
        }
        let bytes = recv
            .read_to_end(size as usize)
            .await
            .map_err(|e| (false, e.to_string()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != src.blob.as_str() || bytes.len() as u64 != size {
            return Err((
                true,
                format!("its bytes hash to {actual}, not {}", src.blob),
            ));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn output(dir: &Path, name: &str, text: &str) -> (String, PathBuf, u64) {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        (name.to_string(), p, text.len() as u64)
    }

    #[test]
    fn outputs_are_kept_whole_within_the_budget() {
        let work = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let files = vec![
            output(scratch.path(), "a", "hello"),
            output(scratch.path(), "b", "hi"),
        ];
        let kept = keep(work.path(), files, 1 << 20, 100).unwrap();
        assert_eq!(kept.len(), 2);
        let stored = dir(work.path()).join(kept[0].blob.as_str());
        assert_eq!(std::fs::read_to_string(&stored).unwrap(), "hello");
        // A damaged copy of the same bytes (a crash mid-write) is replaced, not trusted.
        std::fs::write(&stored, "hel").unwrap();
        let again = keep(
            work.path(),
            vec![output(scratch.path(), "a", "hello")],
            1 << 20,
            100,
        );
        assert_eq!(again.unwrap()[0].blob, kept[0].blob);
        assert_eq!(std::fs::read_to_string(&stored).unwrap(), "hello");
        // Over the budget: nothing is moved, and the caller is told to store them elsewhere.
        let big = output(scratch.path(), "c", &"x".repeat(200));
        assert!(matches!(
            keep(work.path(), vec![big.clone()], 1 << 20, 100),
            Err(KeepError::OverBudget)
        ));
        assert!(big.1.exists());
        let names = std::fs::read_dir(dir(work.path())).unwrap().count();
        assert_eq!(names, 2);
    }

    #[test]
    fn kept_files_unused_for_a_day_expire() {
        let work = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let kept = keep(
            work.path(),
            vec![output(scratch.path(), "a", "old")],
            1 << 20,
            100,
        )
        .unwrap();
        let path = dir(work.path()).join(kept[0].blob.as_str());
        let long_ago = std::time::SystemTime::now() - KEEP_FOR - Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(expire(&dir(work.path())), 0);
        assert!(!path.exists());
    }
}
