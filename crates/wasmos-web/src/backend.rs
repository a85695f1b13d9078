//! Where the web API's answers come from: a master itself (`MasterBackend`, on its own state,
//! the caller's identity from its TLS certificate), or `wasmos ui`'s local proxy, which asks the
//! masters over QUIC as the CLI's identity. The web UI and its API routes are the same either way.

use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use wasmos_master::{Api, EventQuery, Feed};
use wasmos_net::Identity;
use wasmos_proto::{BundleHash, ClientRequest, ClientResponse, TaskId};

/// Frames of a streamed answer (events, output), in order.
pub type Frames = BoxStream<'static, ClientResponse>;

/// What the web API asks on a caller's behalf; refusals are `ClientResponse`s (`Error`,
/// `NotLeader`) as on the QUIC channel.
pub trait Backend: Send + Sync + 'static {
    /// Answers one request that is not streamed.
    fn call(
        &self,
        who: &Identity,
        peer: SocketAddr,
        req: ClientRequest,
    ) -> BoxFuture<'static, ClientResponse>;
    /// The event stream (`Events` frames; a redirect or an error ends it).
    fn events(
        &self,
        who: &Identity,
        peer: SocketAddr,
        query: EventQuery,
    ) -> BoxFuture<'static, Result<Frames, ClientResponse>>;
    /// A task's output (`Output` frames, then `EndOfOutput` or `TaskEnded`).
    fn logs(
        &self,
        who: &Identity,
        peer: SocketAddr,
        task: TaskId,
        follow: bool,
    ) -> BoxFuture<'static, Result<Frames, ClientResponse>>;
    /// A blob's bytes (a task's output file).
    fn blob(
        &self,
        who: &Identity,
        peer: SocketAddr,
        hash: BundleHash,
    ) -> BoxFuture<'static, Result<Vec<u8>, ClientResponse>>;
}

/// A feed's frames as a stream.
fn frames(feed: impl Feed) -> Frames {
    Box::pin(futures::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next_frame().await?;
        Some((frame, feed))
    }))
}

/// A master answering for itself.
#[derive(Clone)]
pub struct MasterBackend(pub Api);

impl Backend for MasterBackend {
    fn call(
        &self,
        who: &Identity,
        peer: SocketAddr,
        req: ClientRequest,
    ) -> BoxFuture<'static, ClientResponse> {
        let (api, who) = (self.0.clone(), who.clone());
        Box::pin(async move { api.call(&who, peer, req).await })
    }

    fn events(
        &self,
        who: &Identity,
        peer: SocketAddr,
        query: EventQuery,
    ) -> BoxFuture<'static, Result<Frames, ClientResponse>> {
        let (api, who) = (self.0.clone(), who.clone());
        Box::pin(async move { Ok(frames(api.events(&who, peer, query).await?)) })
    }

    fn logs(
        &self,
        who: &Identity,
        peer: SocketAddr,
        task: TaskId,
        follow: bool,
    ) -> BoxFuture<'static, Result<Frames, ClientResponse>> {
        let (api, who) = (self.0.clone(), who.clone());
        Box::pin(async move { Ok(frames(api.logs(&who, peer, task, follow).await?)) })
    }

    fn blob(
        &self,
        who: &Identity,
        peer: SocketAddr,
        hash: BundleHash,
    ) -> BoxFuture<'static, Result<Vec<u8>, ClientResponse>> {
        let (api, who) = (self.0.clone(), who.clone());
        Box::pin(async move { api.blob(&who, peer, hash).await })
    }
}
