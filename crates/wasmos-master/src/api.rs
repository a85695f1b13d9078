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
