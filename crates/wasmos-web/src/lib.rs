//! The master's HTTPS/JSON API (axum over the cluster's mutual TLS): the scheduler API for
//! frameworks written in any language, like Mesos' scheduler HTTP API.
//!
//! `POST /api/v1/scheduler` with a JSON `Subscribe` call answers `200` with a stream of events,
//! one JSON object per line, and a `Wasmos-Stream-Id` header. Every other call is a `POST` of
//! its JSON with that header, answered `202 Accepted` (its outcome comes as events on the
//! stream) or `4xx` with `{"error": "..."}`. The JSON is that of `FrameworkCall` and
//! `FrameworkEvent` (docs/frameworks.md). Identity is the client certificate's, as on QUIC.
//!
//! `POST /api/v1/client` takes any `ClientRequest` of the CLI's channel as JSON and answers its
//! `ClientResponse`; `GET /api/v1/events` is the event stream (docs/events.md); `GET /metrics`
//! the Prometheus metrics, for operators (docs/metrics.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use wasmos_master::{Api, Frameworks, Master};
use wasmos_net::{Credentials, HttpsAcceptor, Identity};
use wasmos_proto::{FrameworkCall, FrameworkEvent, FrameworkId};

mod backend;
mod client;
mod guard;
mod proxy;
mod ui;

pub use backend::{Backend, Frames, MasterBackend};
pub use proxy::{UiProxy, serve_ui_proxy};

/// The header naming a subscription's stream on later calls.
pub const STREAM_HEADER: &str = "Wasmos-Stream-Id";
/// Largest call body: an accept of many task specs.
const MAX_BODY: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot listen for HTTPS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] wasmos_net::NetError),
    #[error("the UI proxy serves only on a loopback address, not {0}: it acts as your identity")]
    NotLoopback(SocketAddr),
    #[error("no randomness from the OS for the UI proxy's login token")]
    NoRandomness,
}

/// Open subscriptions by stream id: which framework, whose, and the session's connection id.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<HashMap<String, Open>>>);

/// An open subscription: its framework, its subscriber's URI, its session's connection id.
type Open = (FrameworkId, String, usize);

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Open>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct App {
    frameworks: Frameworks,
    api: Api,
    streams: Streams,
}

/// `GET /metrics`: operators only (`403` for tenants: metrics name every tenant and agent).
async fn metrics(State(app): State<App>, Extension(who): Extension<Identity>) -> Response {
    match app.api.metrics(&who).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, wasmos_master::METRICS_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(wasmos_proto::ClientResponse::Error {
            kind: wasmos_proto::ErrorKind::InvalidRequest,
            message,
        }) => refuse(StatusCode::FORBIDDEN, message),
        Err(other) => client::json_answer(&other),
    }
}

/// A running HTTPS listener.
pub struct WebServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(self) {
        self.task.abort();
    }
}

/// Serves the API on `addr` with the master's certificate.
pub async fn serve(
    master: &Master,
    creds: &Credentials,
    addr: SocketAddr,
) -> Result<WebServer, WebError> {
    let acceptor = HttpsAcceptor::new(creds)?;
    let (listener, bound) = bind(addr).await?;
    let app = App {
        frameworks: master.frameworks(),
        api: master.api(),
        streams: Streams::default(),
    };
    let backend: Arc<dyn Backend> = Arc::new(MasterBackend(master.api()));
    let router = Router::new()
        .route("/api/v1/scheduler", post(scheduler))
        .route("/metrics", get(metrics))
        .with_state(app)
        .merge(client::routes(backend))
        .layer(axum::middleware::from_fn(guard::browser_guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    let refusals = Arc::new(wasmos_net::Refusals::default());
    let task = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("HTTPS accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let refused = |why: &dyn std::fmt::Display| {
                    if let Some(skipped) = refusals.admit(remote.ip()) {
                        tracing::warn!(%remote, skipped, "refused HTTPS connection: {why}");
                    }
                };
                let (stream, who) = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        refused(&e);
                        return;
                    }
                };
                if !matches!(who, Identity::Operator(_) | Identity::Tenant { .. }) {
                    refused(&format_args!("{who} may not use the API"));
                    return;
                }
                let service = TowerToHyperService::new(
                    router.layer(Extension(who)).layer(Extension(Peer(remote))),
                );
                let revoked = acceptor.until_revoked(&stream);
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                // A certificate revoked while its connection is open loses it at once
                // (keep-alive requests, a subscription's event stream).
                tokio::select! {
                    r = served => if let Err(e) = r {
                        tracing::debug!(%remote, "HTTPS connection ended: {e}");
                    },
                    () = revoked => {
                        tracing::info!(%remote, "closed an HTTPS connection: certificate revoked");
                    }
                }
            });
        }
    });
    Ok(WebServer { addr: bound, task })
}

/// A TCP listener on `addr`, and the address it got (a port 0 chosen).
pub(crate) async fn bind(
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), WebError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// The TCP address an HTTPS request came from, for the audit log.
#[derive(Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

pub(crate) fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}

async fn scheduler(
    State(app): State<App>,
    Extension(who): Extension<Identity>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let call: FrameworkCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not a scheduler call: {e}"),
            );
        }
    };
    if matches!(call, FrameworkCall::Subscribe { .. }) {
        return subscribe(app, who, peer, call).await;
    }
    let Some(stream) = headers.get(STREAM_HEADER).and_then(|v| v.to_str().ok()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("calls other than Subscribe name their stream in the {STREAM_HEADER} header"),
        );
    };
    let known = app.streams.lock().get(stream).cloned();
    match known {
        Some((id, owner, conn)) if owner == who.to_uri() => {
            match app.frameworks.call(&who, peer, id, conn, call).await {
                Ok(()) => StatusCode::ACCEPTED.into_response(),
                Err(why) => refuse(StatusCode::TOO_MANY_REQUESTS, why),
            }
        }
        _ => refuse(
            StatusCode::NOT_FOUND,
            format!("no open subscription {stream} of yours"),
        ),
    }
}

/// Opens a subscription and streams its events, one JSON line each, with heartbeats.
async fn subscribe(app: App, who: Identity, peer: SocketAddr, call: FrameworkCall) -> Response {
    let session = match app.frameworks.subscribe(&who, peer, call).await {
        Ok(s) => s,
        Err(refusal) => {
            // NotLeader or Error: one event, then the end, as on QUIC.
            let line = event_line(&refusal);
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                line,
            )
                .into_response();
        }
    };
    let stream_id = format!("{}-{:016x}", session.id(), rand_u64());
    app.streams.lock().insert(
        stream_id.clone(),
        (session.id(), who.to_uri(), session.conn()),
    );
    let heartbeat = session.heartbeat();
    let streams = app.streams.clone();
    let key = stream_id.clone();
    // The session (and the subscription with it) lives as long as the response body.
    let events = futures::stream::unfold(
        (
            session,
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
            Cleanup(streams, key),
        ),
        |(mut session, mut beat, cleanup)| async move {
            let ev = tokio::select! {
                ev = session.next() => ev?,
                _ = beat.tick() => FrameworkEvent::Heartbeat,
            };
            let line = event_line(&ev);
            Some((
                Ok::<_, std::convert::Infallible>(line),
                (session, beat, cleanup),
            ))
        },
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE.as_str(), "application/x-ndjson"),
            (STREAM_HEADER, stream_id.as_str()),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

/// Forgets a stream id when its response ends.
struct Cleanup(Streams, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

fn event_line(ev: &FrameworkEvent) -> String {
    let mut line = serde_json::to_string(ev).unwrap_or_else(|e| {
        format!("{{\"Error\":{{\"request\":null,\"message\":\"cannot encode an event: {e}\"}}}}")
    });
    line.push('\n');
    line
}

/// A stream id nobody can guess: the time and the address of a fresh allocation are not
/// secret, so this mixes in the OS's randomness through std's hasher keys.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// What `/metrics` of [`serve_metrics`] answers: the text, or why there is none.
pub type RenderMetrics = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serves `GET /metrics` in plain HTTP on `addr` with what `render` says at each scrape: an
/// agent's metrics (`wasmos agent --metrics-listen`). Agents hold only client certificates, so
/// there is no TLS here: bind it to loopback or a network only Prometheus reaches.
pub async fn serve_metrics(addr: SocketAddr, render: RenderMetrics) -> Result<WebServer, WebError> {
    let (listener, bound) = bind(addr).await?;
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match render() {
                    Ok(text) => (
                        StatusCode::OK,
                        [(header::CONTENT_TYPE, wasmos_master::METRICS_CONTENT_TYPE)],
                        text,
                    )
                        .into_response(),
                    Err(why) => refuse(StatusCode::INTERNAL_SERVER_ERROR, why),
                }
            }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!("the metrics listener stopped: {e}");
        }
    });
    Ok(WebServer { addr: bound, task })
}
