//! `wasmos ui`: the web UI on 127.0.0.1 for a browser that holds no client certificate, as
//! `kubectl proxy` does. The proxy asks the masters as the CLI's own identity (its `Backend`
//! speaks QUIC with the CLI's certificate), so it must not serve anyone else: it answers only
//! requests for its own loopback host name (no DNS rebinding) that carry its login cookie,
//! which the one-time URL it prints sets (HttpOnly, SameSite=Strict: no other site's page can
//! use it). Without the cookie a browser sees nothing but how to get in.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use wasmos_net::Identity;

use crate::backend::Backend;
use crate::{Peer, WebError, WebServer};

const COOKIE: &str = "wasmos_ui";

/// A running proxy and the address that logs a browser in.
pub struct UiProxy {
    pub server: WebServer,
    token: String,
}

impl UiProxy {
    /// The address to open: it carries the login token, so it is for the user alone.
    pub fn login_url(&self) -> String {
        format!(
            "http://{}/ui/?token={}",
            self.server.local_addr(),
            self.token
        )
    }
}

#[derive(Clone)]
struct Gate {
    token: Arc<str>,
    /// The `Host` values this proxy answers to.
    hosts: Arc<[String]>,
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn token_in_query(req: &Request) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

fn denied(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

async fn gate(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !gate.hosts.iter().any(|h| h == host) {
        return denied(
            StatusCode::FORBIDDEN,
            "wasmos ui answers only to its own address (127.0.0.1 or localhost and its port)",
        );
    }
    // A page of another origin may not post to the proxy, cookie or not.
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        && !gate.hosts.iter().any(|h| origin == format!("http://{h}"))
    {
        return denied(
            StatusCode::FORBIDDEN,
            "requests from other origins are refused",
        );
    }
    if let Some(token) = token_in_query(&req) {
        if !same(&token, &gate.token) {
            return denied(
                StatusCode::UNAUTHORIZED,
                "that login token is not this proxy's",
            );
        }
        // Logged in: the cookie from now on, and the token out of the address bar.
        return (
            [(
                header::SET_COOKIE,
                format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", gate.token),
            )],
            Redirect::to("/ui/"),
        )
            .into_response();
    }
    match cookie_of(req.headers()) {
        Some(c) if same(&c, &gate.token) => next.run(req).await,
        _ => denied(
            StatusCode::UNAUTHORIZED,
            "not logged in: open the address `wasmos ui` printed (it carries a one-time token)",
        ),
    }
}

/// Serves the UI on `addr` (a loopback address) for `who`, answered by `backend`.
pub async fn serve_ui_proxy(
    backend: Arc<dyn Backend>,
    who: Identity,
    addr: SocketAddr,
) -> Result<UiProxy, WebError> {
    if !addr.ip().is_loopback() {
        return Err(WebError::NotLoopback(addr));
    }
    let token = wasmos_net::seal::random_token().ok_or(WebError::NoRandomness)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr, source })?;
    let port = bound.port();
    let hosts: Arc<[String]> = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ]
    .into();
    let gate_state = Gate {
        token: token.clone().into(),
        hosts,
    };
    let router: Router = crate::client::routes(backend)
        .layer(Extension(who))
        .layer(Extension(Peer(bound)))
        .layer(axum::middleware::from_fn_with_state(gate_state, gate));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!("the UI proxy stopped: {e}");
        }
    });
    Ok(UiProxy {
        server: WebServer { addr: bound, task },
        token,
    })
}
