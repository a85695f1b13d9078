//! Submits a component as a task with the client library (`wasmos-client`), the way `wasmos run`
//! does, and prints its output and end:
//!
//! ```text
//! wasmos dev &
//! cargo run --release -p wasmos --example submit -- sample-tasks/target/wasm32-wasip2/release/hello.wasm hi
//! ```
//!
//! The cluster comes from `WASMOS_CONFIG`, else `wasmos dev`'s default `client.toml`.

use anyhow::{Context, Result, bail};
use wasmos_client::{Client, ClientConfig, ClientError};
use wasmos_proto::{BlobKind, ClientRequest, ErrorKind, OutputStream, Resources, TaskSpec};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        bail!("usage: submit TASK.wasm [ARGS...]");
    };
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
    let client = Client::connect(&ClientConfig::load(None)?).await?;
    // Content-addressed: sent only if the masters do not hold it yet.
    let (bundle, uploaded) = client.push_blob(&bytes, BlobKind::Component).await?;
    eprintln!("bundle {bundle} (uploaded: {uploaded})");
    let spec = TaskSpec {
        args: args.collect(),
        resources: Resources::new(250, 64 << 20, 64 << 20),
        ..TaskSpec::new("example", bundle)
    };
    // Carries a resubmission key: retried across a failover, created once.
    let id = client.submit(spec).await?;
    eprintln!("submitted {id}");
    let sink = |stream: OutputStream, data: &[u8]| match stream {
        OutputStream::Stdout => print!("{}", String::from_utf8_lossy(data)),
        OutputStream::Stderr => eprint!("{}", String::from_utf8_lossy(data)),
    };
    let ended = client
        .follow_to_end(id, sink, |why| eprintln!("{why}"))
        .await?;
    if let Some(info) = ended {
        eprintln!("{id} {}", info.status.state);
    }
    // Errors are typed: a master's rejection carries its kind.
    match client
        .request(ClientRequest::GetTask {
            id: "t-999999".parse()?,
        })
        .await
    {
        Err(ClientError::Rejected {
            kind: ErrorKind::NotFound,
            message,
        }) => eprintln!("as expected: {message}"),
        other => eprintln!("unexpected: {other:?}"),
    }
    client.close().await;
    Ok(())
}
