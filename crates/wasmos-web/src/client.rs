//! The client API over HTTP: every request of the CLI's channel as JSON (`POST
//! /api/v1/client`), the event stream (`GET /api/v1/events`) as JSON lines or server-sent
//! events, a task's output (`GET /api/v1/tasks/{id}/logs`), a blob (`GET /api/v1/blobs/{hash}`)
//! and who the caller is (`GET /api/v1/whoami`), for tools in any language and for the web UI;
//! on a master (mutual TLS) or on `wasmos ui`'s local proxy, through a [`Backend`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use wasmos_master::EventQuery;
use wasmos_net::Identity;
use wasmos_proto::{
    BundleHash, ClientRequest, ClientResponse, ErrorKind, OutputStream, TaskId, Topic,
};

use crate::backend::Backend;
use crate::{Peer, refuse};

type Shared = State<Arc<dyn Backend>>;

/// The client API's routes and the web UI, answered by `backend`.
pub(crate) fn routes(backend: Arc<dyn Backend>) -> Router {
    Router::new()
        .route("/api/v1/client", post(call))
        .route("/api/v1/events", get(events))
        .route("/api/v1/tasks/{id}/logs", get(logs))
        .route("/api/v1/blobs/{hash}", get(blob))
        .route("/api/v1/whoami", get(whoami))
        .merge(crate::ui::routes())
        .with_state(backend)
}

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

pub(crate) fn json_answer(answer: &ClientResponse) -> Response {
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

async fn call(
    State(backend): Shared,
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
    json_answer(&backend.call(&who, peer, req).await)
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
    let mut topics = types
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<Topic>, String>>()?;
    topics.sort();
    topics.dedup();
    Ok(topics)
}

async fn events(
    State(backend): Shared,
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
    let frames = match backend.events(&who, peer, query).await {
        Ok(frames) => frames,
        Err(refusal) => return json_answer(&refusal),
    };
    let frames = frames.map(move |frame| {
        let text = if sse {
            sse_frame(&frame)
        } else {
            ndjson(&frame)
        };
        Ok::<_, std::convert::Infallible>(text)
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

/// `GET /api/v1/tasks/{id}/logs[?follow=true]`: the task's output as JSON lines,
/// `{"stream":"stdout","text":"..."}` each (bytes that are not UTF-8 replaced), then
/// `{"end":true}` (not following) or `{"ended":{task record}}`, or `{"error":"..."}`.
async fn logs(
    State(backend): Shared,
    Extension(who): Extension<Identity>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(id): Path<String>,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(task) = id.trim_start_matches("t-").parse::<u64>() else {
        return refuse(StatusCode::BAD_REQUEST, format!("`{id}` is not a task id"));
    };
    let follow = params.is_ok_and(|Query(p)| flag(&p.follow));
    let frames = match backend.logs(&who, peer, TaskId(task), follow).await {
        Ok(frames) => frames,
        Err(refusal) => return json_answer(&refusal),
    };
    let lines = frames.map(|frame| {
        let line = match frame {
            ClientResponse::Output { stream, data } => serde_json::json!({
                "stream": match stream { OutputStream::Stdout => "stdout", OutputStream::Stderr => "stderr" },
                "text": String::from_utf8_lossy(&data),
            }),
            ClientResponse::EndOfOutput => serde_json::json!({ "end": true }),
            ClientResponse::TaskEnded(task) => serde_json::json!({ "ended": task }),
            ClientResponse::Error { message, .. } => serde_json::json!({ "error": message }),
            other => serde_json::json!({ "error": format!("unexpected frame {other:?}") }),
        };
        Ok::<_, std::convert::Infallible>(format!("{line}\n"))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `GET /api/v1/blobs/{hash}[?name=file]`: a blob the caller may read, as a download.
async fn blob(
    State(backend): Shared,
    Extension(who): Extension<Identity>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(hash): Path<String>,
    params: Result<Query<BlobParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(hash) = BundleHash::parse(&hash) else {
        return refuse(StatusCode::BAD_REQUEST, "not a blob hash (64 hex digits)");
    };
    match backend.blob(&who, peer, hash).await {
        Ok(bytes) => {
            // Only a plain file name goes into the header: the name comes from a task.
            let name = params
                .ok()
                .and_then(|Query(p)| p.name)
                .map(|n| n.rsplit('/').next().unwrap_or_default().to_string())
                .filter(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                })
                .unwrap_or_else(|| "blob".to_string());
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                bytes,
            )
                .into_response()
        }
        Err(refusal) => json_answer(&refusal),
    }
}

#[derive(Debug, serde::Deserialize)]
struct BlobParams {
    name: Option<String>,
}

/// `GET /api/v1/whoami`: the identity the API answers as, and whether it is an operator's.
async fn whoami(Extension(who): Extension<Identity>) -> Response {
    Json(serde_json::json!({
        "identity": who.to_uri(),
        "operator": matches!(who, Identity::Operator(_)),
    }))
    .into_response()
}
