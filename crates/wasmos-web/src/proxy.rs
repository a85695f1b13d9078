//! `wasmos ui`: the web UI on loopback for a browser that holds no client certificate, as
//! `kubectl proxy` does. The proxy asks the masters as the CLI's own identity (its `Backend`
//! speaks QUIC with the CLI's certificate), so it must not serve anyone else:
//! - it answers only to a host name of its own, `wasmos-<random>.localhost:PORT` (browsers send
//!   `*.localhost` to loopback): not to a DNS name rebound to 127.0.0.1, and its cookie, scoped
//!   to that name, never goes to another server on 127.0.0.1 or localhost, whatever its port;
//! - the address it prints carries a token good for one login, traded for a session cookie
//!   (HttpOnly, SameSite=Strict) of another random value;
//! - other sites' pages are refused (`guard.rs`).
//!
//! Without the cookie a browser sees nothing but how to get in.

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

/// A running proxy and the address that logs a browser in.
pub struct UiProxy {
    pub server: WebServer,
    host: String,
    token: String,
}

impl UiProxy {
    /// The address to open: it carries the login token, so it is for the user alone.
    pub fn login_url(&self) -> String {
        format!("http://{}/ui/?token={}", self.host, self.token)
    }
}

#[derive(Clone)]
struct Gate {
    /// The login token until it is used.
    token: Arc<std::sync::Mutex<Option<String>>>,
    /// The session cookie's value.
    session: Arc<str>,
    /// The cookie's name (its port in it: two proxies do not overwrite each other's).
    cookie: Arc<str>,
    /// The `Host` this proxy answers to.
    host: Arc<str>,
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Whether any cookie named `name` has the value `want`.
fn has_cookie(headers: &HeaderMap, name: &str, want: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == name && same(v, want))
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
    if host != &*gate.host {
        return denied(
            StatusCode::FORBIDDEN,
            "wasmos ui answers only to the address it printed",
        );
    }
    if let Some(token) = token_in_query(&req) {
        let mut left = gate
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !left.as_deref().is_some_and(|t| same(&token, t)) {
            return denied(
                StatusCode::UNAUTHORIZED,
                "that login token is not this proxy's, or was used already: run `wasmos ui` again",
            );
        }
        *left = None;
        // Logged in: the session cookie from now on, and the token out of the address bar.
        return (
            [(
                header::SET_COOKIE,
                format!(
                    "{}={}; HttpOnly; SameSite=Strict; Path=/",
                    gate.cookie, gate.session
                ),
            )],
            Redirect::to("/ui/"),
        )
            .into_response();
    }
    if has_cookie(req.headers(), &gate.cookie, &gate.session) {
        next.run(req).await
    } else {
        denied(
            StatusCode::UNAUTHORIZED,
            "not logged in: open the address `wasmos ui` printed (it carries a one-time token)",
        )
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
    let random = || wasmos_net::seal::random_token().ok_or(WebError::NoRandomness);
    let (token, session, name) = (random()?, random()?, random()?);
    let (listener, bound) = crate::bind(addr).await?;
    let port = bound.port();
    let host = format!("wasmos-{}.localhost:{port}", &name[..16]);
    let gate_state = Gate {
        token: Arc::new(std::sync::Mutex::new(Some(token.clone()))),
        session: session.into(),
        cookie: format!("wasmos_ui_{port}").into(),
        host: host.clone().into(),
    };
    let router: Router = crate::client::routes(backend)
        .layer(Extension(who))
        .layer(Extension(Peer(bound)))
        .layer(axum::middleware::from_fn_with_state(gate_state, gate))
        .layer(axum::middleware::from_fn(crate::guard::browser_guard));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!("the UI proxy stopped: {e}");
        }
    });
    Ok(UiProxy {
        server: WebServer { addr: bound, task },
        host,
        token,
    })
}
