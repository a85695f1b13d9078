//! The cost of revocation checks at the handshake, for BENCHMARKS.md: full mutual-TLS QUIC
//! handshakes (and one stream round trip, so the server's verdict on the client certificate
//! is in) against a server whose list is empty and one whose list holds 10,000 revocations,
//! interleaved in the same process so load drifts hit both. Run with
//! `cargo bench -p wasmos-net --bench handshake` (or `cargo xtask bench`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmos_net::{
    Identity, LiveConnections, RevocationList, Revoked, client_endpoint, connect, pki,
    server_endpoint,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ALPN: &[u8] = b"wasmos-bench/1";
/// Handshakes per batch, batches per side.
const BATCH: usize = 40;
const ROUNDS: usize = 15;
const ENTRIES: usize = 10_000;

/// A server as the master runs one: every handshake checks `list`, every connection is
/// registered with the live set (which checks it again), and each answers one stream.
fn serve(ca: &pki::CaBundle, list: RevocationList) -> Res<SocketAddr> {
    let master = pki::issue_credentials(ca, &Identity::Master("bench".into()))?
        .with_revocations(list.clone());
    let server = server_endpoint("127.0.0.1:0".parse()?, &master, &[ALPN])?;
    let addr = server.local_addr()?;
    let live = Arc::new(LiveConnections::default());
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let (live, list) = (live.clone(), list.clone());
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Some(_registered) = live.register(&conn, &list) else {
                    return;
                };
                if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(16).await;
                    let _ = send.write_all(b"k").await;
                    let _ = send.finish();
                }
                conn.closed().await;
            });
        }
    });
    Ok(addr)
}

/// `BATCH` handshakes in a row, each with a stream round trip; how long they took.
async fn batch(ep: &wasmos_net::Endpoint, addr: SocketAddr) -> Res<Duration> {
    let start = Instant::now();
    for _ in 0..BATCH {
        let conn = connect(ep, addr).await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"x").await?;
        send.finish()?;
        let answer = recv.read_to_end(16).await?;
        if answer != b"k" {
            return Err("the server did not answer".into());
        }
        conn.close(0u32.into(), b"done");
    }
    Ok(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Res<()> {
    let ca = pki::new_ca("bench")?;
    let tenant = pki::issue_credentials(
        &ca,
        &Identity::Tenant {
            tenant: "acme".into(),
            user: "alice".into(),
        },
    )?;
    let full = RevocationList::default();
    full.set(Revoked {
        // Serials as certificates have them (20 random-looking bytes), and some identities.
        serials: (0..ENTRIES * 9 / 10)
            .map(|i| {
                format!(
                    "{:040x}",
                    (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c)
                )
            })
            .collect(),
        identities: (0..ENTRIES / 10)
            .map(|i| format!("wasmos://tenant/t{i}/user{i}"))
            .collect(),
    });
    let empty_addr = serve(&ca, RevocationList::default())?;
    let full_addr = serve(&ca, full)?;
    let ep = client_endpoint(&tenant, ALPN, empty_addr)?;
    // Warm both up (first connections pay for lazy setup).
    batch(&ep, empty_addr).await?;
    batch(&ep, full_addr).await?;
    let (mut ratios, mut empty_total, mut full_total) =
        (Vec::new(), Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let (e, f) = if round % 2 == 0 {
            let e = batch(&ep, empty_addr).await?;
            (e, batch(&ep, full_addr).await?)
        } else {
            let f = batch(&ep, full_addr).await?;
            (batch(&ep, empty_addr).await?, f)
        };
        empty_total += e;
        full_total += f;
        ratios.push(f.as_secs_f64() / e.as_secs_f64());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (BATCH * ROUNDS) as f64;
    println!(
        "handshake + round trip, mutual TLS over QUIC on loopback ({} x {BATCH} each side):",
        ROUNDS
    );
    println!(
        "  no revocations:          {:8.0} us per connection",
        per(empty_total)
    );
    println!(
        "  {ENTRIES} revocations:     {:8.0} us per connection",
        per(full_total)
    );
    println!(
        "  ratio (median of {ROUNDS} per-round ratios): {:.3}x",
        median(ratios)
    );
    Ok(())
}
