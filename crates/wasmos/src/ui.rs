//! `wasmos ui`: the web UI on 127.0.0.1 for your browser, answered by the masters as your CLI
//! identity (like `kubectl proxy`). The page and its API routes are `wasmos-web`'s; here is the
//! backend that asks the masters over QUIC through `wasmos-client`, following the leader.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use futures::StreamExt;
use futures::future::BoxFuture;
use wasmos_client::{Client, ClientError};
use wasmos_master::EventQuery;
use wasmos_net::Identity;
use wasmos_proto::{BundleHash, ClientRequest, ClientResponse, ErrorKind, TaskId};
use wasmos_web::{Backend, Frames};

use crate::connect::Target;
use crate::process::wait_for_stop;

#[derive(Args)]
pub(crate) struct UiArgs {
    /// Where to serve the UI: a loopback address only (it acts as your identity).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    listen: SocketAddr,
}

/// A client error as the API answers it.
fn answer_of(e: ClientError) -> ClientResponse {
    match e {
        ClientError::Rejected { kind, message } => ClientResponse::Error { kind, message },
        other => ClientResponse::Error {
            kind: if other.retryable() {
                ErrorKind::Unavailable
            } else {
                ErrorKind::InvalidRequest
            },
            message: other.to_string(),
        },
    }
}

/// The masters, asked over QUIC with the CLI's certificate.
struct Proxy(Arc<Client>);

/// Frames a task sends into; the stream ends when it drops its sender. Unbounded: the sinks
/// of `wasmos-client` cannot wait, and a frame dropped would be output or an event lost; one
/// local browser reads them.
type Sender = tokio::sync::mpsc::UnboundedSender<ClientResponse>;

/// The frames `work` sends, and then the one it ends with, if any: `work` runs on a task of
/// its own, dropped as soon as the browser stops reading.
fn streamed<F>(work: impl FnOnce(Sender) -> F) -> Frames
where
    F: std::future::Future<Output = Option<ClientResponse>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let work = work(tx.clone());
    tokio::spawn(async move {
        tokio::select! {
            last = work => if let Some(last) = last {
                let _ = tx.send(last);
            },
            () = tx.closed() => {}
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let frame = rx.recv().await?;
        Some((frame, rx))
    })
    .boxed()
}

impl Backend for Proxy {
    fn call(
        &self,
        _who: &Identity,
        _peer: SocketAddr,
        req: ClientRequest,
    ) -> BoxFuture<'static, ClientResponse> {
        let client = self.0.clone();
        Box::pin(async move {
            // One answer each: the streamed requests have routes of their own, as on a master.
            if req.is_streamed() || matches!(req, ClientRequest::Stale(_)) {
                return ClientResponse::Error {
                    kind: ErrorKind::InvalidRequest,
                    message: "a streamed request: use its own endpoint".to_string(),
                };
            }
            client.request(req).await.unwrap_or_else(answer_of)
        })
    }

    fn events(
        &self,
        _who: &Identity,
        _peer: SocketAddr,
        query: EventQuery,
    ) -> BoxFuture<'static, Result<Frames, ClientResponse>> {
        let client = self.0.clone();
        Box::pin(async move {
            Ok(streamed(|tx| async move {
                let follow = client.events(query.from, query.topics, query.follow, |frame| {
                    let frame = ClientResponse::Events {
                        events: frame.events,
                        next: frame.next,
                        lost_until: frame.lost_until,
                        end: false,
                    };
                    // The browser went away: stop following.
                    tx.send(frame).is_ok()
                });
                follow.await.err().map(answer_of)
            }))
        })
    }

    fn logs(
        &self,
        _who: &Identity,
        _peer: SocketAddr,
        task: TaskId,
        follow: bool,
    ) -> BoxFuture<'static, Result<Frames, ClientResponse>> {
        let client = self.0.clone();
        Box::pin(async move {
            Ok(streamed(|tx| async move {
                let watch = client.watch(task, follow, |stream, data| {
                    let _ = tx.send(ClientResponse::Output {
                        stream,
                        data: data.to_vec(),
                    });
                });
                Some(match watch.await {
                    Ok(Some(info)) => ClientResponse::TaskEnded(Box::new(info)),
                    Ok(None) => ClientResponse::EndOfOutput,
                    Err(e) => answer_of(e),
                })
            }))
        })
    }

    fn blob(
        &self,
        _who: &Identity,
        _peer: SocketAddr,
        hash: BundleHash,
    ) -> BoxFuture<'static, Result<Vec<u8>, ClientResponse>> {
        let client = self.0.clone();
        Box::pin(async move { client.get_blob(&hash).await.map_err(answer_of) })
    }
}

pub(crate) async fn run(target: &Target, args: UiArgs) -> Result<ExitCode> {
    let cfg = target.load()?;
    let who = Identity::from_der(&cfg.credentials()?.leaf())
        .context("the client certificate names no wasmos identity")?;
    let client = Arc::new(target.connect_to(&cfg).await?);
    let proxy =
        wasmos_web::serve_ui_proxy(Arc::new(Proxy(client)), who.clone(), args.listen).await?;
    println!("{}", proxy.login_url());
    eprintln!(
        "wasmos ui: open the address above in your browser (it logs you in as {who}; keep it to yourself); Ctrl-C stops it"
    );
    wait_for_stop().await;
    proxy.server.shutdown();
    Ok(ExitCode::SUCCESS)
}
