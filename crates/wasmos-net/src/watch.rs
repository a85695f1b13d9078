//! Following a new leader without waiting out the idle timeout: a killed master sends nothing
//! (UDP has no reset), so a client that holds one long connection to the leader (an agent, a
//! framework) watches that connection for silence and then asks the other masters who leads.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// After this long without a datagram from its master (which acknowledges the client's
/// keep-alives, sent every [`crate::WATCHFUL_KEEP_ALIVE`]), a watchful client asks the other
/// masters who leads.
pub const SILENCE: Duration = Duration::from_millis(450);
/// How often the connection is looked at, and the other masters asked while it is silent.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// How long one probe of another master may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest pause between rounds of probes while the others name no new leader (a slow
/// leader, an election): the pause doubles from [`WATCH_EVERY`] up to this, so thousands of
/// clients of a stalled leader do not flood the other masters with handshakes.
const MAX_PROBE_PAUSE: Duration = Duration::from_secs(2);

/// Resolves once another master names, through `probe`, a leader other than `master` while
/// `master` is silent on `conn`. A leader that is only slow is still named by the others
/// (they would have elected another otherwise), so its clients stay. Never resolves when there
/// is no other master.
pub async fn watch_leader<F, Fut>(
    conn: &quinn::Connection,
    master: SocketAddr,
    others: &[SocketAddr],
    probe: F,
) -> SocketAddr
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Option<SocketAddr>> + Send + 'static,
{
    if others.is_empty() {
        return std::future::pending().await;
    }
    let mut seen = conn.stats().udp_rx.datagrams;
    let mut heard = tokio::time::Instant::now();
    let mut pause = WATCH_EVERY;
    loop {
        tokio::time::sleep(pause).await;
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            heard = tokio::time::Instant::now();
            pause = WATCH_EVERY;
            continue;
        }
        if heard.elapsed() < SILENCE {
            continue;
        }
        let mut probes = tokio::task::JoinSet::new();
        for other in others {
            let answer = probe(*other);
            probes.spawn(async move {
                tokio::time::timeout(PROBE_TIMEOUT, answer)
                    .await
                    .ok()
                    .flatten()
            });
        }
        while let Some(answer) = probes.join_next().await {
            if let Ok(Some(leader)) = answer
                && leader != master
            {
                return leader;
            }
        }
        // Nobody names another leader yet: ask again later, spread out (a jitter from the
        // clock's nanoseconds) so the clients of one master do not ask in step.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) % 50);
        pause = (pause * 2).min(MAX_PROBE_PAUSE) + Duration::from_millis(jitter);
    }
}

/// Asks master `other`, on a connection of its own, which master leads: sends `question` as
/// the only message and reads the leader's address from the answer with `leader_of` (none
/// while it knows of none, or if it does not answer in [`PROBE_TIMEOUT`]).
pub async fn ask_leader<Q, A>(
    endpoint: &quinn::Endpoint,
    other: SocketAddr,
    question: &Q,
    leader_of: fn(A) -> Option<String>,
) -> Option<SocketAddr>
where
    Q: serde::Serialize,
    A: serde::de::DeserializeOwned,
{
    let conn = crate::connect_within(endpoint, other, PROBE_TIMEOUT)
        .await
        .ok()?;
    let answer = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        crate::send_frame(&mut send, question).await.ok()?;
        let _ = send.finish();
        let answer = crate::recv_frame::<A>(&mut recv).await.ok()??;
        leader_of(answer)?.parse().ok()
    }
    .await;
    conn.close(0u32.into(), b"probe done");
    answer
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pki::{issue, new_ca};
    use crate::{Credentials, Identity};

    fn creds(ca: &crate::pki::CaBundle, who: Identity) -> Credentials {
        let leaf = issue(ca, &who, &[], &[]).unwrap();
        Credentials::from_pem(&ca.cert_pem, &leaf.cert_pem, &leaf.key_pem).unwrap()
    }

    /// A client connected to a live master stays, whatever the others say; once the master
    /// goes silent (its endpoint gone, as a killed process's), the client follows the leader
    /// another master names, and asks nobody while the master still answers.
    #[tokio::test]
    async fn a_silent_master_is_left_for_the_leader_the_others_name() {
        let ca = new_ca("test").unwrap();
        let master = creds(&ca, Identity::Master("m1".into()));
        let server =
            crate::server_endpoint("127.0.0.1:0".parse().unwrap(), &master, &[b"t"]).unwrap();
        let addr = server.local_addr().unwrap();
        let accepted = tokio::spawn({
            let server = server.clone();
            async move { server.accept().await.unwrap().await.unwrap() }
        });
        let agent = creds(&ca, Identity::Agent("a1".into()));
        let client = crate::watchful_client_endpoint(&agent, b"t", addr).unwrap();
        let conn = crate::connect(&client, addr).await.unwrap();
        let _server_side = accepted.await.unwrap();

        let other: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let new_leader: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let probe = {
            let asked = asked.clone();
            move |_: SocketAddr| {
                asked.fetch_add(1, Ordering::Relaxed);
                async move { Some(new_leader) }
            }
        };
        // Alive: it answers the keep-alives, so nobody is asked.
        let live = tokio::time::timeout(
            Duration::from_millis(1500),
            watch_leader(&conn, addr, &[other], probe.clone()),
        )
        .await;
        assert!(live.is_err(), "a live master was left");
        assert_eq!(asked.load(Ordering::Relaxed), 0);

        // Killed: its endpoint is gone and nothing answers any more.
        drop(_server_side);
        server.close(0u32.into(), b"");
        drop(server);
        let followed = tokio::time::timeout(
            Duration::from_secs(5),
            watch_leader(&conn, addr, &[other], probe.clone()),
        )
        .await
        .unwrap();
        assert_eq!(followed, new_leader);
        assert!(asked.load(Ordering::Relaxed) >= 1);

        // With no other master there is nobody to ask: it waits for the idle timeout.
        let alone = tokio::time::timeout(
            Duration::from_millis(800),
            watch_leader(&conn, addr, &[], probe),
        )
        .await;
        assert!(alone.is_err());
    }
}
