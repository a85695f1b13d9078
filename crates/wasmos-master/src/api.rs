//! The master as the HTTPS front end (`wasmos-web`) sees it: client requests and the event
//! stream on a caller's behalf, admitted, routed and recorded exactly as on the QUIC client
//! channel, with the caller's identity from its certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use wasmos_net::Identity;
use wasmos_proto::{ClientRequest, ClientResponse};

use crate::Shared;
use crate::audit::Caller;
use crate::client::{Prepared, answer_prepared, prepare};
pub use crate::events::{EVENT_HEARTBEAT, EventFeed, EventQuery};
pub use crate::watch::OutputFeed;

/// A streamed answer, frame by frame: the event stream and a task's output alike, so each
/// front end sends both the same way.
pub trait Feed: Send + 'static {
    /// The next frame; `None` after the last.
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<ClientResponse>> + Send;
}

impl Feed for EventFeed {
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<ClientResponse>> + Send {
        self.next()
    }
}

impl Feed for OutputFeed {
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<ClientResponse>> + Send {
        self.next()
    }
}

/// A handle on the master for other front ends; cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub(crate) shared: Arc<Shared>,
}

impl Api {
    fn caller(who: &Identity, peer: SocketAddr) -> Caller {
        Caller {
            who: who.clone(),
            peer,
            channel: "https",
        }
    }

    /// Answers one request that is not streamed (the streamed ones have their own calls).
    pub async fn call(
        &self,
        who: &Identity,
        peer: SocketAddr,
        req: ClientRequest,
    ) -> ClientResponse {
        // Refused before admission and audit: they are not calls of this endpoint at all.
        if req.is_streamed() {
            return crate::replies::error(
                wasmos_proto::ErrorKind::InvalidRequest,
                "a streamed request: use its own endpoint (/api/v1/events, /api/v1/tasks/ID/logs, /api/v1/blobs/HASH; uploads go over the CLI's channel)",
            );
        }
        match prepare(&self.shared, &Self::caller(who, peer), req).await {
            Ok(prepared) => answer_prepared(&self.shared, who, prepared).await,
            Err(refusal) => refusal,
        }
    }

    /// Opens the event stream for `who`, or says why not (a redirect to the leader, the
    /// tenant's rate or follow limit).
    pub async fn events(
        &self,
        who: &Identity,
        peer: SocketAddr,
        query: EventQuery,
    ) -> Result<EventFeed, ClientResponse> {
        let req = ClientRequest::WatchEvents {
            from: query.from,
            topics: query.topics.clone(),
            follow: query.follow,
        };
        let req = if query.stale {
            ClientRequest::Stale(Box::new(req))
        } else {
            req
        };
        let Prepared { audit, all, .. } =
            prepare(&self.shared, &Self::caller(who, peer), req).await?;
        let opened = EventFeed::open(self.shared.clone(), who.clone(), query);
        if let Some(entry) = audit {
            let said = match &opened {
                Err(refusal) => Some(crate::audit::result_of(refusal)),
                Ok(_) if all => Some("ok".to_string()),
                Ok(_) => None,
            };
            if let Some(said) = said {
                crate::audit::record(&self.shared, entry, said).await;
            }
        }
        opened
    }

    /// Opens task `task`'s output for `who` (admitted and recorded as `logs`), or says why not.
    pub async fn logs(
        &self,
        who: &Identity,
        peer: SocketAddr,
        task: wasmos_proto::TaskId,
        follow: bool,
    ) -> Result<OutputFeed, ClientResponse> {
        let req = ClientRequest::WatchTask { id: task, follow };
        let Prepared { audit, all, .. } =
            prepare(&self.shared, &Self::caller(who, peer), req).await?;
        let opened = OutputFeed::open(self.shared.clone(), who, task, follow);
        self.record_opened(audit, all, opened.as_ref().err()).await;
        opened
    }

    /// A blob's bytes for `who` (a task's output file), or why not.
    pub async fn blob(
        &self,
        who: &Identity,
        peer: SocketAddr,
        hash: wasmos_proto::BundleHash,
    ) -> Result<Vec<u8>, ClientResponse> {
        let req = ClientRequest::GetBlob { hash: hash.clone() };
        let Prepared { audit, all, .. } =
            prepare(&self.shared, &Self::caller(who, peer), req).await?;
        let bytes = crate::client::blob_bytes(&self.shared, who, &hash).await;
        self.record_opened(audit, all, bytes.as_ref().err()).await;
        bytes
    }

    /// Records a streamed read: always when refused, otherwise only when reads are audited.
    async fn record_opened(
        &self,
        audit: Option<wasmos_proto::AuditEntry>,
        all: bool,
        refused: Option<&ClientResponse>,
    ) {
        let Some(entry) = audit else { return };
        let said = match refused {
            Some(refusal) => crate::audit::result_of(refusal),
            None if all => "ok".to_string(),
            None => return,
        };
        crate::audit::record(&self.shared, entry, said).await;
    }

    /// The Prometheus metrics text, for operators only: it names every tenant, role and agent.
    pub async fn metrics(&self, who: &Identity) -> Result<String, ClientResponse> {
        if !matches!(who, Identity::Operator(_)) {
            return Err(crate::replies::error(
                wasmos_proto::ErrorKind::InvalidRequest,
                format!("{who} may not read metrics: they are for operators"),
            ));
        }
        crate::metrics::render(&self.shared).await.map_err(|e| {
            crate::replies::error(
                wasmos_proto::ErrorKind::Internal,
                format!("cannot encode metrics: {e}"),
            )
        })
    }
}

/// The `Content-Type` of [`Api::metrics`]' text.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
