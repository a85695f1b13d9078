//! What every web route refuses of a browser, on the masters and on `wasmos ui` alike: a
//! request another site's page made (cross-site request forgery: a browser would present the
//! user's client certificate or cookie with it), judged by the `Sec-Fetch-Site` and `Origin`
//! headers browsers send (other clients send neither); and answers that other pages could
//! load as scripts or images (`nosniff`, `Cross-Origin-Resource-Policy: same-origin`).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Whether a browser sent this request from another site's page. Following a link to the UI
/// itself from elsewhere is fine: it changes nothing and the page asks from its own origin.
fn foreign(req: &Request) -> bool {
    let navigation = req.method() == Method::GET
        && matches!(req.uri().path(), "/" | "/ui" | "/ui/")
        && header_str(req, "sec-fetch-mode") == Some("navigate");
    let site = header_str(req, "sec-fetch-site");
    if site.is_some_and(|s| s != "same-origin" && s != "none") && !navigation {
        return true;
    }
    let host = header_str(req, "host").unwrap_or_default();
    header_str(req, "origin").is_some_and(|origin| {
        origin != format!("https://{host}") && origin != format!("http://{host}")
    })
}

pub(crate) async fn browser_guard(req: Request, next: Next) -> Response {
    if foreign(&req) {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "requests from other sites' pages are refused\n",
        )
            .into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}
