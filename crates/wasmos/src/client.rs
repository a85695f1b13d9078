//! The CLI's side of the client channel: one QUIC connection to the master, one stream per
//! request, and the upload / submit / watch steps that `wasmos run` is made of.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use sha2::{Digest, Sha256};
use wasmos_net::{Connection, Endpoint, recv_frame, send_frame};
use wasmos_proto::{
    BlobKind, BundleHash, ClientRequest, ClientResponse, OutputStream, TaskId, TaskInfo, TaskSpec,
    alpn,
};

use crate::config::ClientConfig;

pub struct Client {
    conn: Connection,
    endpoint: Endpoint,
}

impl Client {
    /// Connects to the master group's leader: the configured masters are asked in turn who
    /// leads, and the client talks to that one. If no leader is known it keeps the first master
    /// that answered (reads work; writes then say there is no leader).
    pub async fn connect(cfg: &ClientConfig) -> Result<Client> {
        let creds = cfg.credentials()?;
        let endpoint = wasmos_net::client_endpoint(&creds, alpn::CLIENT, cfg.master)?;
        let mut candidates = vec![cfg.master];
        candidates.extend(cfg.masters.iter().filter(|a| **a != cfg.master));
        if candidates.len() == 1 {
            let conn = wasmos_net::connect(&endpoint, cfg.master).await?;
            return Ok(Client { conn, endpoint });
        }
        let mut fallback = None;
        let mut last_error = None;
        for addr in &candidates {
            let conn = match wasmos_net::connect(&endpoint, *addr).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e.to_string());
                    continue;
                }
            };
            let client = Client {
                conn,
                endpoint: endpoint.clone(),
            };
            let Ok(ClientResponse::Cluster(st)) =
                client.request(ClientRequest::ClusterStatus).await
            else {
                continue;
            };
            if st.leader == Some(st.node) {
                return Ok(client);
            }
            let leader_addr = st
                .members
                .iter()
                .find(|m| Some(m.id) == st.leader)
                .and_then(|m| m.addr.parse::<std::net::SocketAddr>().ok());
            if let Some(leader) = leader_addr
                && let Ok(conn) = wasmos_net::connect(&endpoint, leader).await
            {
                client.conn.close(0u32.into(), b"going to the leader");
                return Ok(Client { conn, endpoint });
            }
            fallback.get_or_insert(client);
        }
        fallback.ok_or_else(|| {
            anyhow!(
                "no master answered (tried {}): {}",
                candidates
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                last_error.unwrap_or_default()
            )
        })
    }

    /// Names the real cause of a failed stream: usually the connection's close reason (such
    /// as a refused certificate) rather than the stream error that surfaced it.
    fn fail(&self, e: impl std::fmt::Display) -> anyhow::Error {
        match self.conn.close_reason() {
            Some(reason) => anyhow!(
                "lost the connection to the master at {}: {}",
                self.conn.remote_address(),
                wasmos_net::describe(&reason)
            ),
            None => anyhow!("talking to the master: {e}"),
        }
    }

    async fn open(
        &self,
        req: &ClientRequest,
    ) -> Result<(wasmos_net::SendStream, wasmos_net::RecvStream)> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.fail(e))?;
        send_frame(&mut send, req).await.map_err(|e| self.fail(e))?;
        Ok((send, recv))
    }

    async fn next(&self, recv: &mut wasmos_net::RecvStream) -> Result<ClientResponse> {
        match recv_frame::<ClientResponse>(recv).await {
            Ok(Some(ClientResponse::Error { message, .. })) => bail!("{message}"),
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.fail("the master closed the stream without answering")),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Sends one request and returns its single answer; errors from the master become errors.
    pub async fn request(&self, req: ClientRequest) -> Result<ClientResponse> {
        let (mut send, mut recv) = self.open(&req).await?;
        let _ = send.finish();
        self.next(&mut recv).await
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
        let (mut send, mut recv) = self.open(&req).await?;
        send.write_all(bytes).await.map_err(|e| self.fail(e))?;
        let _ = send.finish();
        match self.next(&mut recv).await? {
            ClientResponse::Ok => Ok((hash, true)),
            other => bail!("unexpected answer to upload: {other:?}"),
        }
    }

    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId> {
        match self.request(ClientRequest::SubmitTask { spec }).await? {
            ClientResponse::Submitted { id } => Ok(id),
            other => bail!("unexpected answer to submit: {other:?}"),
        }
    }

    /// Streams a task's output into `sink`. With `follow`, returns the task's final record once
    /// it ends; without, returns `None` after the output stored so far.
    pub async fn watch(
        &self,
        id: TaskId,
        follow: bool,
        mut sink: impl FnMut(OutputStream, &[u8]),
    ) -> Result<Option<TaskInfo>> {
        let (mut send, mut recv) = self.open(&ClientRequest::WatchTask { id, follow }).await?;
        let _ = send.finish();
        loop {
            match self.next(&mut recv).await? {
                ClientResponse::Output { stream, data } => sink(stream, &data),
                ClientResponse::EndOfOutput => return Ok(None),
                ClientResponse::TaskEnded(info) => return Ok(Some(*info)),
                other => bail!("unexpected answer while watching: {other:?}"),
            }
        }
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        // Long enough to put CONNECTION_CLOSE on the wire; the full draining period (3 PTOs,
        // ~75 ms) would add that much to every command, and the master forgets a silent peer
        // after its idle timeout anyway.
        let _ = tokio::time::timeout(Duration::from_millis(10), self.endpoint.wait_idle()).await;
    }
}
