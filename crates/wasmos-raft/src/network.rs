//! The raft network: openraft's RPCs between masters over QUIC with mutual TLS, ALPN
//! `wasmos-raft/2`. Each RPC is one bidirectional stream on a connection kept per peer: the
//! request, then the reply, each one frame holding openraft's own types in postcard (the same
//! codec as the log on disk; openraft's types are not in `wasmos-proto`, which stays free of
//! it). Version 1 carried JSON.
//!
//! The client side ([`Network`], [`PeerClient`]) dials a peer's advertised address with this
//! master's certificate; the server side ([`serve`]) runs on the master's endpoint and feeds
//! each request to the local [`Raft`]. Only master certificates of the cluster's CA are
//! accepted on either side (the master's accept loop checks the identity before calling
//! [`serve`]; dialing verifies the peer's master name).
//!
//! A single-voter group never calls the network: [`Network::none`] fails every RPC as
//! unreachable, which openraft treats as transient.

use std::net::SocketAddr;
use std::time::Duration;

use openraft::BasicNode;
use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;

/// Largest encoded raft request sent in one frame (the frame limit, less room for its header).
const MAX_RAFT_BODY: usize = wasmos_proto::MAX_FRAME_BYTES - 4096;
use serde::{Deserialize, Serialize};
use wasmos_net::{Connection, Credentials, Endpoint, recv_frame, send_frame};

use crate::types::{NodeId, TypeConfig};

/// One RPC, as sent on a stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRequest`], as the receiving raft gave it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The request could not be decoded or did not match the channel.
    Refused(String),
}

/// Why an RPC did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no network: raft node {target} at {addr} is not reachable from a single-master group")]
    NoNetwork { target: NodeId, addr: String },
    #[error("raft node {target}: `{addr}` is not an address (host:port)")]
    BadAddress { target: NodeId, addr: String },
    #[error("cannot reach raft node {target} at {addr}: {detail}")]
    Connect {
        target: NodeId,
        addr: String,
        detail: String,
    },
    #[error("raft node {target} at {addr}: {detail}")]
    Exchange {
        target: NodeId,
        addr: String,
        detail: String,
    },
}

/// Creates a [`PeerClient`] per peer; holds the endpoint all of them dial from.
#[derive(Debug, Clone)]
pub struct Network {
    endpoint: Option<Endpoint>,
}

impl Network {
    /// No peers: every RPC fails as unreachable (a single-voter group never sends one).
    pub fn none() -> Network {
        Network { endpoint: None }
    }

    /// Dials peers as the holder of `creds` (a master certificate of the cluster).
    pub fn quic(creds: &Credentials) -> Result<Network, wasmos_net::NetError> {
        // Any address family works for the bind; peers are dialed per connection.
        let any: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        let endpoint = wasmos_net::client_endpoint(creds, wasmos_proto::alpn::RAFT, any)?;
        Ok(Network {
            endpoint: Some(endpoint),
        })
    }
}

/// The connection to one peer, made on first use and again after it breaks.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    endpoint: Option<Endpoint>,
    conn: Option<Connection>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            endpoint: self.endpoint.clone(),
            conn: None,
        }
    }
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl PeerClient {
    fn error(&self, detail: impl std::fmt::Display) -> PeerError {
        PeerError::Exchange {
            target: self.target,
            addr: self.addr.clone(),
            detail: detail.to_string(),
        }
    }

    async fn connection(&mut self) -> Result<Connection, PeerError> {
        if let Some(c) = self.conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let Some(endpoint) = &self.endpoint else {
            return Err(PeerError::NoNetwork {
                target: self.target,
                addr: self.addr.clone(),
            });
        };
        let addr: SocketAddr = self.addr.parse().map_err(|_| PeerError::BadAddress {
            target: self.target,
            addr: self.addr.clone(),
        })?;
        let conn = wasmos_net::connect(endpoint, addr)
            .await
            .map_err(|e| PeerError::Connect {
                target: self.target,
                addr: self.addr.clone(),
                detail: e.to_string(),
            })?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `req` and returns the reply, within `ttl`. A failure to connect is `Unreachable`
    /// (openraft backs off); a failure after that is a network error (it retries at once).
    async fn call<E: std::error::Error>(
        &mut self,
        req: RaftRequest,
        ttl: Duration,
    ) -> RpcResult<RaftReply, E> {
        let body = postcard::to_stdvec(&req)
            .map_err(|e| RPCError::Network(NetworkError::new(&self.error(e))))?;
        self.call_encoded(body, ttl).await
    }

    /// [`Self::call`] with the request already encoded.
    async fn call_encoded<E: std::error::Error>(
        &mut self,
        body: Vec<u8>,
        ttl: Duration,
    ) -> RpcResult<RaftReply, E> {
        let conn = self
            .connection()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| self.error(e))?;
            send_frame(&mut send, &body)
                .await
                .map_err(|e| self.error(e))?;
            let _ = send.finish();
            let reply: Vec<u8> = recv_frame(&mut recv)
                .await
                .map_err(|e| self.error(e))?
                .ok_or_else(|| self.error("the peer closed the stream without a reply"))?;
            postcard::from_bytes::<RaftReply>(&reply).map_err(|e| self.error(e))
        };
        let reply = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(self.error(format!("no reply within {ttl:?}"))),
        };
        reply.map_err(|e| {
            // The next call dials afresh: the connection may be what broke.
            self.conn = None;
            RPCError::Network(NetworkError::new(&e))
        })
    }
}

fn unexpected<E: std::error::Error>(
    client: &PeerClient,
    reply: RaftReply,
) -> RPCError<NodeId, BasicNode, E> {
    let detail = match reply {
        RaftReply::Refused(why) => format!("refused the request: {why}"),
        other => format!("answered another kind of request: {other:?}"),
    };
    RPCError::Network(NetworkError::new(&client.error(detail)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let entries = rpc.entries.len() as u64;
        let body = postcard::to_stdvec(&RaftRequest::Append(rpc))
            .map_err(|e| RPCError::Network(NetworkError::new(&self.error(e))))?;
        // Too large for one frame: openraft sends fewer entries at a time when told so.
        if body.len() > MAX_RAFT_BODY && entries > 1 {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        match self.call_encoded(body, option.hard_ttl()).await? {
            RaftReply::Append(r) => r.map_err(|e| RPCError::RemoteError(remote(self, e))),
            other => Err(unexpected(self, other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self
            .call(RaftRequest::Snapshot(rpc), option.hard_ttl())
            .await?
        {
            RaftReply::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(remote(self, e))),
            other => Err(unexpected(self, other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(r) => r.map_err(|e| RPCError::RemoteError(remote(self, e))),
            other => Err(unexpected(self, other)),
        }
    }
}

fn remote<E: std::error::Error>(
    client: &PeerClient,
    e: E,
) -> openraft::error::RemoteError<NodeId, BasicNode, E> {
    openraft::error::RemoteError::new_with_node(client.target, BasicNode::new(&client.addr), e)
}

/// Answers raft RPCs arriving on `conn` (a peer master's connection on `wasmos-raft/2`, its
/// identity already checked) until it closes.
pub async fn serve(raft: Raft<TypeConfig>, conn: Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let raft = raft.clone();
        tokio::spawn(async move {
            let reply = match recv_frame::<Vec<u8>>(&mut recv).await {
                Ok(Some(body)) => answer(&raft, &body).await,
                Ok(None) => return,
                Err(e) => RaftReply::Refused(e.to_string()),
            };
            let sent = match postcard::to_stdvec(&reply) {
                Ok(bytes) => send_frame(&mut send, &bytes)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                tracing::debug!("raft reply not delivered: {e}");
            }
            let _ = send.finish();
        });
    }
}

async fn answer(raft: &Raft<TypeConfig>, body: &[u8]) -> RaftReply {
    match decode::<RaftRequest>(body) {
        Ok(RaftRequest::Append(rpc)) => RaftReply::Append(raft.append_entries(rpc).await),
        Ok(RaftRequest::Vote(rpc)) => RaftReply::Vote(raft.vote(rpc).await),
        Ok(RaftRequest::Snapshot(rpc)) => RaftReply::Snapshot(raft.install_snapshot(rpc).await),
        Err(why) => RaftReply::Refused(why),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|e| format!("undecodable raft request: {e}"))
}
