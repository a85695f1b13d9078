//! The client API over HTTPS: every request of the CLI's channel as JSON (`POST
//! /api/v1/client`), and the event stream (`GET /api/v1/events`) as JSON lines or server-sent
//! events, for tools in any language and for the web UI.

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wasmos_master::EventQuery;
use wasmos_net::Identity;
use wasmos_proto::{ClientRequest, ClientResponse, ErrorKind, Topic};

use crate::{App, Peer, refuse};

/// The HTTP status of an answer: errors by their kind, a redirect to the leader as `421
/// Misdirected Request` (its body names the leader), everything else `200`.
pub(crate) fn status_of(answer: &ClientResponse) -> StatusCode {
    match answer {
        ClientResponse::Error { kind, .. } => match kind {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::InvalidRequest | ErrorKind::InvalidBundle => StatusCode::BAD_REQUEST,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::TooManyFollows => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        },
        ClientResponse::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
        _ => StatusCode::OK,
    }
}

fn json_answer(answer: &ClientResponse) -> Response {
    match serde_json::to_vec(answer) {
        Ok(body) => (
            status_of(answer),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer as JSON: {e}"),
        ),
    }
}

pub(crate) async fn call(
    State(app): State<App>,
    Extension(who): Extension<Identity>,
    Extension(Peer(peer)): Extension<Peer>,
    body: axum::body::Bytes,
) -> Response {
    let req: ClientRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not a client request: {e}"),
            );
        }
    };
    json_answer(&app.api.call(&who, peer, req).await)
}

/// `GET /api/v1/events` parameters.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct EventParams {
    /// Resume at this index (`next` of the last frame).
    index: Option<u64>,
    /// Comma-separated topics.
    #[serde(rename = "type")]
    types: Option<String>,
    /// `true` (or `1`) to keep the stream open.
    follow: Option<String>,
    stale: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "yes" | ""))
}

pub(crate) fn parse_topics(types: Option<&str>) -> Result<Vec<Topic>, String> {
    types
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect()
}

pub(crate) async fn events(
    State(app): State<App>,
    Extension(who): Extension<Identity>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let topics = match parse_topics(params.types.as_deref()) {
        Ok(t) => t,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
    };
    // A browser's EventSource resumes by sending the id of the last event it saw.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let query = EventQuery {
        from: resumed.or(params.index),
        topics,
        follow: flag(&params.follow),
        stale: flag(&params.stale),
    };
    let feed = match app.api.events(&who, peer, query).await {
        Ok(feed) => feed,
        Err(refusal) => return json_answer(&refusal),
    };
    let frames = futures::stream::unfold(feed, move |mut feed| async move {
        let frame = feed.next().await?;
        let text = if sse {
            sse_frame(&frame)
        } else {
            ndjson(&frame)
        };
        Some((Ok::<_, std::convert::Infallible>(text), feed))
    });
    let kind = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot encode: {e}") }).to_string()
    })
}

/// JSON lines: an event per line, then where the stream is (`{"next": N}`), which is all an
/// empty frame (a heartbeat) says; a gap or a redirect is a line of its own.
fn ndjson(frame: &ClientResponse) -> String {
    let mut out = String::new();
    match frame {
        ClientResponse::Events {
            events,
            next,
            lost_until,
            ..
        } => {
            if let Some(first) = lost_until {
                out.push_str(&to_json(&serde_json::json!({ "lost_until": first })));
                out.push('\n');
            }
            for e in events {
                out.push_str(&to_json(e));
                out.push('\n');
            }
            out.push_str(&to_json(&serde_json::json!({ "next": next })));
            out.push('\n');
        }
        other => {
            out.push_str(&to_json(other));
            out.push('\n');
        }
    }
    out
}

/// Server-sent events: each frame one message whose id is where to resume, so a browser's
/// `EventSource` picks up after a reconnect where it left off.
fn sse_frame(frame: &ClientResponse) -> String {
    match frame {
        ClientResponse::Events { next, .. } => {
            format!("id: {next}\nevent: events\ndata: {}\n\n", to_json(frame))
        }
        other => format!("event: error\ndata: {}\n\n", to_json(other)),
    }
}

/// `GET /metrics`: operators only (`403` for tenants: metrics name every tenant and agent).
pub(crate) async fn metrics(
    State(app): State<App>,
    Extension(who): Extension<Identity>,
) -> Response {
    match app.api.metrics(&who).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, wasmos_master::METRICS_CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(ClientResponse::Error {
            kind: ErrorKind::InvalidRequest,
            message,
        }) => refuse(StatusCode::FORBIDDEN, message),
        Err(other) => json_answer(&other),
    }
}
