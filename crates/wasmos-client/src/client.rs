//! The client's side of the client channel: one QUIC connection to the leading master, one
//! stream per request, redirects and failovers followed, and the upload / submit / watch steps
//! that `wasmos run` is made of.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmos_net::{Connection, Credentials, Endpoint, recv_frame, send_frame};
use wasmos_proto::{
    BlobKind, BundleHash, ClientRequest, ClientResponse, ErrorKind, OutputStream, TaskId, TaskInfo,
    TaskSpec, alpn,
};

use crate::config::ClientConfig;
use crate::error::ClientError;

type Result<T> = std::result::Result<T, ClientError>;

/// How many times one request follows a redirect (or waits for an election) before giving up.
const MAX_REDIRECTS: u32 = 20;
/// How long to wait before asking again when no master knows of a leader (an election).
const ELECTION_WAIT: Duration = Duration::from_millis(100);
/// How often the masters are asked who leads while looking for the leader.
const POLL_LEADER: Duration = Duration::from_millis(50);
/// How long to look for a leader before settling for any master that answers.
const FIND_LEADER: Duration = Duration::from_secs(5);
/// How long a submission keeps being retried (across a master's crash and the election
/// that follows) before the client gives up.
const SUBMIT_RETRY: Duration = Duration::from_secs(30);

/// How a client talks to the group, beyond where the masters are and who it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// `--stale`: let reads be answered by any master from its own, possibly older, state
    /// instead of being redirected to the leader.
    pub stale_reads: bool,
}

/// Why an upload attempt failed: the master said no, or the master was lost on the way.
enum Upload {
    Refused(ClientError),
    Lost(ClientError),
}

/// A connection to the master group, shared by concurrent calls (`&self` everywhere; wrap it in
/// an `Arc` to use it from several tasks).
pub struct Client {
    /// Replaced when a master redirects the client to the leader.
    conn: std::sync::Mutex<Connection>,
    endpoint: Endpoint,
    /// Every configured master, to find the leader again after losing the connection.
    masters: Vec<SocketAddr>,
    options: ConnectOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("master", &self.conn().remote_address())
            .field("masters", &self.masters)
            .finish_non_exhaustive()
    }
}

impl Client {
    fn new(conn: Connection, endpoint: Endpoint, options: ConnectOptions) -> Client {
        Client {
            conn: std::sync::Mutex::new(conn),
            endpoint,
            masters: Vec::new(),
            options,
        }
    }

    fn replace_conn(&self, conn: Connection) {
        let old = std::mem::replace(
            &mut *self
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            conn,
        );
        old.close(0u32.into(), b"going to the leader");
    }

    fn conn(&self) -> Connection {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Follows a `NotLeader` answer: connects to the leader it names, or, while no master knows
    /// one (an election is under way), waits a moment before the request is asked again.
    async fn redirect(&self, leader: Option<u64>, addr: Option<String>) -> Result<()> {
        let from = self.conn().remote_address();
        let Some(addr) = addr else {
            tracing::debug!(%from, "no leader known; waiting for an election");
            tokio::time::sleep(ELECTION_WAIT).await;
            return Ok(());
        };
        let target: SocketAddr = addr.parse().map_err(|e| {
            ClientError::Lost(format!(
                "master {from} names the leader at `{addr}`, which is not an address: {e}"
            ))
        })?;
        let conn = wasmos_net::connect(&self.endpoint, target)
            .await
            .map_err(|e| {
                ClientError::Lost(format!(
                    "master {from} says master {} at {target} leads, which did not answer: {e}",
                    leader.map_or_else(|| "?".to_string(), |l| l.to_string())
                ))
            })?;
        self.replace_conn(conn);
        Ok(())
    }

    /// Wraps reads in `Stale` when the user allowed stale reads.
    fn wrap(&self, req: ClientRequest) -> ClientRequest {
        if self.options.stale_reads && req.is_read() && req != ClientRequest::ClusterStatus {
            ClientRequest::Stale(Box::new(req))
        } else {
            req
        }
    }

    /// Connects to the master group's leader: the configured masters are asked in turn who
    /// leads, and the client talks to that one. If no leader is known it keeps the first master
    /// that answered (reads work; writes then say there is no leader).
    pub async fn connect(cfg: &ClientConfig) -> Result<Client> {
        Self::connect_with(cfg, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with options.
    pub async fn connect_with(cfg: &ClientConfig, options: ConnectOptions) -> Result<Client> {
        let mut masters = vec![cfg.master];
        masters.extend(cfg.masters.iter().filter(|a| **a != cfg.master));
        Self::connect_to(&cfg.credentials()?, &masters, options).await
    }

    /// Connects to the leader among `masters` (any of the group will do, the rest are found)
    /// with these credentials, without a config file.
    pub async fn connect_to(
        credentials: &Credentials,
        masters: &[SocketAddr],
        options: ConnectOptions,
    ) -> Result<Client> {
        let first = *masters
            .first()
            .ok_or_else(|| ClientError::Config("no master address given".to_string()))?;
        let endpoint = wasmos_net::client_endpoint(credentials, alpn::CLIENT, first)?;
        let mut client = Self::find_leader(&endpoint, masters, options).await?;
        client.masters = masters.to_vec();
        Ok(client)
    }

    /// The master this client talks to now.
    pub fn master(&self) -> SocketAddr {
        self.conn().remote_address()
    }

    /// Connects to the leader among `candidates` again (after the connection broke).
    async fn reconnect(&self) -> Result<()> {
        let mut candidates = self.masters.clone();
        if candidates.is_empty() {
            candidates.push(self.conn().remote_address());
        }
        let found = Self::find_leader(&self.endpoint, &candidates, self.options).await?;
        self.replace_conn(found.conn());
        Ok(())
    }

    /// Finds the leader among `candidates`: connects to all of them at once (a dead master
    /// costs only its own connect timeout) and asks those that answer who leads, again every
    /// [`POLL_LEADER`] while an election is under way, until one says it is the leader itself.
    /// With `--stale`, the first master that answers will do. If no master knows a leader by
    /// [`FIND_LEADER`], a follower is kept: its requests follow redirects once there is one.
    async fn find_leader(
        endpoint: &Endpoint,
        candidates: &[SocketAddr],
        options: ConnectOptions,
    ) -> Result<Client> {
        let endpoint = endpoint.clone();
        if let [only] = candidates {
            let conn = wasmos_net::connect(&endpoint, *only).await?;
            return Ok(Client::new(conn, endpoint, options));
        }
        let (found, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let dial = |addr: SocketAddr| {
            let endpoint = endpoint.clone();
            let found = found.clone();
            tokio::spawn(async move {
                let answer = wasmos_net::connect(&endpoint, addr)
                    .await
                    .map_err(|e| e.to_string());
                let _ = found.send((addr, answer));
            })
        };
        let mut dialing: std::collections::BTreeSet<SocketAddr> =
            candidates.iter().copied().collect();
        for addr in candidates {
            dial(*addr);
        }
        let deadline = tokio::time::Instant::now() + FIND_LEADER;
        let mut live: Vec<Client> = Vec::new();
        let mut errors = Vec::new();
        loop {
            while let Ok((addr, answer)) = answers.try_recv() {
                dialing.remove(&addr);
                match answer {
                    Ok(conn) => live.push(Client::new(conn, endpoint.clone(), options)),
                    Err(e) => errors.push(e),
                }
            }
            if options.stale_reads && !live.is_empty() {
                return Ok(live.swap_remove(0));
            }
            let asks = live.iter().map(|c| {
                tokio::time::timeout(POLL_LEADER * 5, c.request(ClientRequest::ClusterStatus))
            });
            let statuses = futures::future::join_all(asks).await;
            // Every master that answered refused us, and none is left to dial: say so now.
            let refusal = statuses.iter().find_map(|st| match st {
                Ok(Err(ClientError::Refused(why))) => Some(why.clone()),
                _ => None,
            });
            if let Some(why) = refusal
                && dialing.is_empty()
                && statuses
                    .iter()
                    .all(|st| matches!(st, Ok(Err(ClientError::Refused(_)))))
            {
                return Err(ClientError::Refused(why));
            }
            // A leader cut off from the others still believes it leads: of several that claim
            // to, the one in the latest term is the real one.
            let claimant = statuses
                .iter()
                .enumerate()
                .filter_map(|(i, st)| match st {
                    // A master that removed itself may still name itself leader for a moment.
                    Ok(Ok(ClientResponse::Cluster(st)))
                        if st.leader == Some(st.node) && st.state == "leader" =>
                    {
                        Some((st.term, i))
                    }
                    _ => None,
                })
                .max();
            if let Some((_, i)) = claimant {
                return Ok(live.swap_remove(i));
            }
            for st in statuses {
                let Ok(Ok(ClientResponse::Cluster(st))) = st else {
                    continue;
                };
                // A leader not among those dialed (the config lists only some masters).
                let named = st
                    .members
                    .iter()
                    .find(|m| Some(m.id) == st.leader)
                    .and_then(|m| m.addr.parse::<SocketAddr>().ok());
                if let Some(addr) = named
                    && !candidates.contains(&addr)
                    && dialing.insert(addr)
                {
                    dial(addr);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || (live.is_empty() && dialing.is_empty()) {
                break;
            }
            if live.is_empty() {
                // Nothing to ask yet: wait for the next connection (or failure).
                match tokio::time::timeout_at(deadline, answers.recv()).await {
                    Ok(Some((addr, answer))) => {
                        dialing.remove(&addr);
                        match answer {
                            Ok(conn) => live.push(Client::new(conn, endpoint.clone(), options)),
                            Err(e) => errors.push(e),
                        }
                    }
                    _ => break,
                }
            } else {
                tokio::time::sleep(POLL_LEADER).await;
            }
        }
        if !live.is_empty() {
            return Ok(live.swap_remove(0));
        }
        Err(ClientError::Unreachable {
            tried: candidates
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            errors: errors.join("; "),
        })
    }

    /// Names the real cause of a failed stream: usually the connection's close reason (such
    /// as a refused certificate) rather than the stream error that surfaced it.
    fn fail(&self, e: impl std::fmt::Display) -> ClientError {
        let conn = self.conn();
        match conn.close_reason() {
            Some(reason) if wasmos_net::is_refusal(&reason) => ClientError::Refused(format!(
                "the master at {} refused this client: {}",
                conn.remote_address(),
                wasmos_net::describe(&reason)
            )),
            Some(reason) => ClientError::Lost(format!(
                "lost the connection to the master at {}: {}",
                conn.remote_address(),
                wasmos_net::describe(&reason)
            )),
            None => ClientError::Lost(format!("talking to the master: {e}")),
        }
    }

    async fn open(
        &self,
        req: &ClientRequest,
    ) -> Result<(wasmos_net::SendStream, wasmos_net::RecvStream)> {
        let (mut send, recv) = self.conn().open_bi().await.map_err(|e| self.fail(e))?;
        send_frame(&mut send, req).await.map_err(|e| self.fail(e))?;
        Ok((send, recv))
    }

    async fn next(&self, recv: &mut wasmos_net::RecvStream) -> Result<ClientResponse> {
        match self.next_answer(recv).await? {
            ClientResponse::Error { kind, message } => Err(ClientError::Rejected { kind, message }),
            r => Ok(r),
        }
    }

    /// The next answer on a stream, errors from the master included.
    async fn next_answer(&self, recv: &mut wasmos_net::RecvStream) -> Result<ClientResponse> {
        match recv_frame::<ClientResponse>(recv).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.fail("the master closed the stream without answering")),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Sends one request and returns its single answer; errors from the master become errors.
    /// A redirect to the leader is followed.
    pub async fn request(&self, req: ClientRequest) -> Result<ClientResponse> {
        let req = self.wrap(req);
        // Asking again changes nothing for these, so a master lost mid-request (the leader
        // died) is retried at the next leader instead of failing the command.
        let again = req.is_read()
            || matches!(
                req,
                ClientRequest::Stale(_)
                    | ClientRequest::SetRole { .. }
                    | ClientRequest::SignBundle { .. }
                    | ClientRequest::AddSigningKey { .. }
                    | ClientRequest::RevokeSigningKey { .. }
            );
        let deadline = tokio::time::Instant::now() + SUBMIT_RETRY;
        loop {
            match self.request_raw(&req).await {
                Ok(ClientResponse::Error { kind, message }) => {
                    return Err(ClientError::Rejected { kind, message });
                }
                Ok(answer) => return Ok(answer),
                Err(e) if again && e.retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::info!("request failed ({e:#}); asking the leader again");
                    tokio::time::sleep(ELECTION_WAIT).await;
                    if let Err(e) = self.reconnect().await {
                        tracing::info!("finding the leader again: {e:#}");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn no_leader(&self) -> ClientError {
        ClientError::NoLeader {
            last: self.conn().remote_address(),
        }
    }

    /// Uploads a blob unless the master already holds one with the same content hash.
    /// Returns its hash and whether bytes were sent.
    pub async fn push_blob(&self, bytes: &[u8], kind: BlobKind) -> Result<(BundleHash, bool)> {
        let hash = BundleHash::from_digest(&Sha256::digest(bytes).into());
        if let ClientResponse::HasBundle(true) = self
            .request(ClientRequest::HasBundle { hash: hash.clone() })
            .await?
        {
            return Ok((hash, false));
        }
        let req = ClientRequest::PushBundle {
            hash: hash.clone(),
            size: bytes.len() as u64,
            kind,
        };
        // Uploads are content-addressed, so one lost with a master is sent again.
        let deadline = tokio::time::Instant::now() + SUBMIT_RETRY;
        loop {
            match self.push_once(&req, bytes).await {
                Ok(Some(())) => return Ok((hash, true)),
                Ok(None) => continue,
                Err(Upload::Refused(e)) => return Err(e),
                Err(Upload::Lost(e)) if e.retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::info!("upload failed ({e:#}); sending it to the leader again");
                    tokio::time::sleep(ELECTION_WAIT).await;
                    if let Err(e) = self.reconnect().await {
                        tracing::info!("finding the leader again: {e:#}");
                    }
                }
                Err(Upload::Lost(e)) => return Err(e),
            }
        }
    }

    /// One upload attempt: `Some` when stored, `None` after following a redirect.
    async fn push_once(
        &self,
        req: &ClientRequest,
        bytes: &[u8],
    ) -> std::result::Result<Option<()>, Upload> {
        let (mut send, mut recv) = self.open(req).await.map_err(Upload::Lost)?;
        // A master that refuses the upload (not the leader, too large) answers and stops the
        // stream: its answer says more than the failed write.
        let written = send.write_all(bytes).await;
        let _ = send.finish();
        match recv_frame::<ClientResponse>(&mut recv).await {
            Ok(Some(ClientResponse::NotLeader { leader, addr })) => {
                self.redirect(leader, addr).await.map_err(Upload::Lost)?;
                Ok(None)
            }
            Ok(Some(ClientResponse::Ok)) if written.is_ok() => Ok(Some(())),
            Ok(Some(ClientResponse::Error { kind, message })) => {
                Err(Upload::Refused(ClientError::Rejected { kind, message }))
            }
            Ok(Some(other)) => Err(Upload::Refused(ClientError::unexpected("an upload", other))),
            Ok(None) => Err(Upload::Lost(
                self.fail("the master closed the stream without answering"),
            )),
            Err(e) => Err(Upload::Lost(self.fail(e))),
        }
    }

    /// Submits a task. If the answer is lost (the master crashed, or a leader without a
    /// majority gave up), the same submission is sent again, with the same key, to whichever
    /// master leads next: the task is created once, and its id returned, or the error says why
    /// not.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId> {
        let req = ClientRequest::SubmitTask {
            spec,
            key: Some(submission_key()),
        };
        let deadline = tokio::time::Instant::now() + SUBMIT_RETRY;
        loop {
            let failure = match self.request_raw(&req).await {
                Ok(ClientResponse::Submitted { id }) => return Ok(id),
                Ok(ClientResponse::Error {
                    kind: ErrorKind::Unavailable,
                    message,
                }) => ClientError::Rejected {
                    kind: ErrorKind::Unavailable,
                    message,
                },
                Ok(ClientResponse::Error { kind, message }) => {
                    return Err(ClientError::Rejected { kind, message });
                }
                Ok(other) => return Err(ClientError::unexpected("a submission", other)),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NotAcknowledged {
                    after: SUBMIT_RETRY,
                    last: Box::new(failure),
                });
            }
            tracing::info!("submission not acknowledged ({failure}); sending it again");
            tokio::time::sleep(ELECTION_WAIT).await;
            if let Err(e) = self.reconnect().await {
                tracing::info!("finding the leader again: {e:#}");
            }
        }
    }

    /// One request, following redirects; the master's errors are returned as answers, and only
    /// transport failures as errors.
    async fn request_raw(&self, req: &ClientRequest) -> Result<ClientResponse> {
        for _ in 0..MAX_REDIRECTS {
            let (mut send, mut recv) = self.open(req).await?;
            let _ = send.finish();
            match recv_frame::<ClientResponse>(&mut recv).await {
                Ok(Some(ClientResponse::NotLeader { leader, addr })) => {
                    self.redirect(leader, addr).await?
                }
                Ok(Some(other)) => return Ok(other),
                Ok(None) => return Err(self.fail("the master closed the stream without answering")),
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(self.no_leader())
    }

    /// A blob's bytes (a task's output file), checked against its hash.
    pub async fn get_blob(&self, hash: &BundleHash) -> Result<Vec<u8>> {
        let req = self.wrap(ClientRequest::GetBlob { hash: hash.clone() });
        for _ in 0..MAX_REDIRECTS {
            let (mut send, mut recv) = self.open(&req).await?;
            let _ = send.finish();
            match self.next(&mut recv).await? {
                ClientResponse::NotLeader { leader, addr } => self.redirect(leader, addr).await?,
                ClientResponse::Blob { size } => {
                    let bytes = recv
                        .read_to_end(size as usize)
                        .await
                        .map_err(|e| self.fail(e))?;
                    let got = hex::encode(sha2::Sha256::digest(&bytes));
                    if bytes.len() as u64 != size || got != hash.as_str() {
                        return Err(ClientError::Damaged {
                            hash: hash.to_string(),
                            got_bytes: bytes.len(),
                            got_hash: got,
                        });
                    }
                    return Ok(bytes);
                }
                other => return Err(ClientError::unexpected("a blob download", other)),
            }
        }
        Err(self.no_leader())
    }

    /// Streams a task's output into `sink`. With `follow`, returns the task's final record once
    /// it ends; without, returns `None` after the output stored so far.
    pub async fn watch(
        &self,
        id: TaskId,
        follow: bool,
        sink: impl FnMut(OutputStream, &[u8]),
    ) -> Result<Option<TaskInfo>> {
        self.stream_output(id, follow, None::<fn(&str)>, sink).await
    }

    /// Follows a task's output until it ends (`wasmos run`). If the tenant already follows as
    /// many logs as it may, tells `notice` why, waits for the task to end and then passes its
    /// output, instead of failing for a task already submitted.
    pub async fn follow_to_end(
        &self,
        id: TaskId,
        sink: impl FnMut(OutputStream, &[u8]),
        notice: impl FnOnce(&str),
    ) -> Result<Option<TaskInfo>> {
        self.stream_output(id, true, Some(notice), sink).await
    }

    async fn stream_output(
        &self,
        id: TaskId,
        follow: bool,
        mut or_wait: Option<impl FnOnce(&str)>,
        mut sink: impl FnMut(OutputStream, &[u8]),
    ) -> Result<Option<TaskInfo>> {
        let mut req = self.wrap(ClientRequest::WatchTask { id, follow });
        let mut redirects = 0;
        let (mut send, mut recv) = self.open(&req).await?;
        let _ = send.finish();
        // Set when the tenant already follows as many logs as it may: the task's end is
        // polled for instead, and its output read once it has ended.
        let mut ended = None;
        loop {
            match self.next_answer(&mut recv).await? {
                ClientResponse::NotLeader { leader, addr } if redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    self.redirect(leader, addr).await?;
                    (send, recv) = self.open(&req).await?;
                    let _ = send.finish();
                }
                ClientResponse::Output { stream, data } => sink(stream, &data),
                ClientResponse::EndOfOutput => return Ok(ended),
                ClientResponse::TaskEnded(info) => return Ok(Some(*info)),
                ClientResponse::Error {
                    kind: ErrorKind::TooManyFollows,
                    message,
                } if or_wait.is_some() && ended.is_none() => {
                    if let Some(notice) = or_wait.take() {
                        notice(&format!(
                            "{message}; printing the output of {id} when it ends"
                        ));
                    }
                    ended = Some(self.wait_until_ended(id).await?);
                    req = self.wrap(ClientRequest::WatchTask { id, follow: false });
                    (send, recv) = self.open(&req).await?;
                    let _ = send.finish();
                }
                ClientResponse::Error { kind, message } => {
                    return Err(ClientError::Rejected { kind, message });
                }
                other => return Err(ClientError::unexpected("a watch", other)),
            }
        }
    }

    /// The cluster's events from index `from` on (the oldest a master still holds when
    /// `None`), of `topics` (all when empty), passed to `sink` frame by frame with the index to
    /// resume from and, when some asked for were no longer held, where the stream starts. With
    /// `follow` it goes on until `sink` says stop (returns `false`); a lost master or a change of
    /// leader costs nothing: the stream is asked again, from where it was, of the leader. Without
    /// `follow` it ends once caught up. Returns the index to resume from.
    pub async fn events(
        &self,
        from: Option<u64>,
        topics: Vec<wasmos_proto::Topic>,
        follow: bool,
        mut sink: impl FnMut(EventFrame) -> bool,
    ) -> Result<u64> {
        let mut from = from;
        let mut redirects = 0;
        // A master that goes away is tried again until no master has answered for this long.
        let mut lost_since: Option<tokio::time::Instant> = None;
        loop {
            let req = self.wrap(ClientRequest::WatchEvents {
                from,
                topics: topics.clone(),
                follow,
            });
            let failure = match self.open(&req).await {
                Ok((mut send, mut recv)) => {
                    let _ = send.finish();
                    loop {
                        match self.next_answer(&mut recv).await {
                            Ok(ClientResponse::Events {
                                events,
                                next,
                                lost_until,
                                end,
                            }) => {
                                lost_since = None;
                                redirects = 0;
                                from = Some(next);
                                let frame = EventFrame {
                                    events,
                                    next,
                                    lost_until,
                                };
                                if !sink(frame) || end {
                                    return Ok(next);
                                }
                            }
                            Ok(ClientResponse::NotLeader { leader, addr })
                                if redirects < MAX_REDIRECTS =>
                            {
                                redirects += 1;
                                // A leader just gone may still be named: try again, as for
                                // any lost master.
                                match self.redirect(leader, addr).await {
                                    Ok(()) => break None,
                                    Err(e) => break Some(e),
                                }
                            }
                            Ok(ClientResponse::Error { kind, message }) => {
                                break Some(ClientError::Rejected { kind, message });
                            }
                            Ok(other) => {
                                return Err(ClientError::unexpected("an event stream", other));
                            }
                            Err(e) => break Some(e),
                        }
                    }
                }
                Err(e) => Some(e),
            };
            let Some(failure) = failure else { continue };
            if !failure.retryable() {
                return Err(failure);
            }
            let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > SUBMIT_RETRY {
                return Err(failure);
            }
            tracing::info!("event stream interrupted ({failure}); resuming");
            tokio::time::sleep(ELECTION_WAIT).await;
            if let Err(e) = self.reconnect().await {
                tracing::info!("finding the leader again: {e:#}");
            }
        }
    }

    /// Asks for the task every second until it has ended; returns its final record.
    async fn wait_until_ended(&self, id: TaskId) -> Result<TaskInfo> {
        loop {
            match self.request(ClientRequest::GetTask { id }).await? {
                ClientResponse::Task(info) if info.status.state.is_terminal() => return Ok(*info),
                ClientResponse::Task(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                other => return Err(ClientError::unexpected("task show", other)),
            }
        }
    }

    /// Closes the connection, giving the close a moment to reach the master.
    pub async fn close(self) {
        self.conn().close(0u32.into(), b"done");
        // Long enough for the endpoint's driver to put CONNECTION_CLOSE on the socket (a local
        // send, whatever the distance to the master); the full draining period (3 PTOs, ~75 ms)
        // would add that much to every command, and the master forgets a silent peer after its
        // idle timeout anyway. (It was 10 ms: half of what `wasmos agent list` took.)
        let _ = tokio::time::timeout(Duration::from_millis(2), self.endpoint.wait_idle()).await;
    }
}

/// A frame of [`Client::events`].
#[derive(Debug, Clone)]
pub struct EventFrame {
    pub events: Vec<wasmos_proto::Event>,
    /// Where to resume to miss none and see none twice.
    pub next: u64,
    /// Set when events asked for were no longer held: the index the stream starts at.
    pub lost_until: Option<u64>,
}

/// A key unique to one submission: the time, this process and a counter, hashed.
fn submission_key() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest = Sha256::digest(format!("{nanos} {} {n}", std::process::id()));
    hex::encode(&digest[..16])
}
