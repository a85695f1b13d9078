//! The async client: runs a [`Driver`] over QUIC (`wasmos-framework/1`) against a group of
//! masters, connecting to whichever leads and following it through failovers.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmos_net::{Credentials, NetError, recv_frame, send_frame};
use wasmos_proto::{FrameworkCall, FrameworkEvent, alpn};

use crate::{Action, Driver, Options, Scheduler};

/// Where the masters are and who this framework is (its certificate).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub credentials: Credentials,
    /// Every master of the group (one for a single master); any will do, the driver follows
    /// redirects to the leader.
    pub masters: Vec<SocketAddr>,
    /// How long to keep trying when no master takes the subscription, before giving up.
    pub give_up_after: Duration,
}

impl Cluster {
    pub fn new(credentials: Credentials, masters: Vec<SocketAddr>) -> Cluster {
        Cluster {
            credentials,
            masters,
            give_up_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no masters given")]
    NoMasters,
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the master refused the framework: {0}")]
    Refused(String),
    #[error("no master took the framework for {secs}s (last tried {last}: {why})")]
    Unreachable {
        secs: u64,
        last: SocketAddr,
        why: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Pause between attempts when a master cannot be reached or does not lead.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Pause before following a redirect to the leader.
const REDIRECT_PAUSE: Duration = Duration::from_millis(50);

/// Subscribes `scheduler` and runs it until it finishes ([`crate::Context::finish`] or
/// [`crate::Context::teardown`]); returns it then, for its results.
pub async fn run<S: Scheduler>(
    cluster: &Cluster,
    scheduler: S,
    options: Options,
) -> Result<S, ClientError> {
    let first = *cluster.masters.first().ok_or(ClientError::NoMasters)?;
    let endpoint =
        wasmos_net::watchful_client_endpoint(&cluster.credentials, alpn::FRAMEWORK, first)?;
    let mut driver = Driver::new(scheduler, options);
    let mut target = first;
    let mut unreachable_since = tokio::time::Instant::now();
    loop {
        let (ended, subscribed) = session(&endpoint, &mut driver, target, &cluster.masters).await;
        if subscribed {
            // It worked for a while: the patience starts over from this failure.
            unreachable_since = tokio::time::Instant::now();
        }
        let (why, pause) = match ended {
            Ok(Ended::Finished) => {
                endpoint.wait_idle().await;
                return Ok(driver.into_scheduler());
            }
            Ok(Ended::Failed(message)) => return Err(ClientError::Refused(message)),
            // Redirects are progress (an election is settling), but a loop of them is not:
            // a short pause, and the patience still counts.
            Ok(Ended::Moved(Some(addr))) => {
                target = addr;
                ("not the leader".to_string(), REDIRECT_PAUSE)
            }
            Ok(Ended::Moved(None)) => {
                target = next(&cluster.masters, target);
                ("not the leader".to_string(), RETRY_PAUSE)
            }
            Err(e) => {
                target = next(&cluster.masters, target);
                (e, RETRY_PAUSE)
            }
        };
        if unreachable_since.elapsed() > cluster.give_up_after {
            return Err(ClientError::Unreachable {
                secs: cluster.give_up_after.as_secs(),
                last: target,
                why,
            });
        }
        tracing::debug!(%target, "framework reconnecting: {why}");
        tokio::time::sleep(pause).await;
    }
}

fn next(masters: &[SocketAddr], current: SocketAddr) -> SocketAddr {
    let i = masters
        .iter()
        .position(|m| *m == current)
        .map_or(0, |i| i + 1);
    masters
        .get(i % masters.len().max(1))
        .copied()
        .unwrap_or(current)
}

enum Ended {
    Finished,
    Failed(String),
    /// Go to this master (or the next one).
    Moved(Option<SocketAddr>),
}

/// One connection: subscribe, then events in and calls out until it ends. Also says whether
/// the framework was subscribed on it.
async fn session<S: Scheduler>(
    endpoint: &wasmos_net::Endpoint,
    driver: &mut Driver<S>,
    target: SocketAddr,
    masters: &[SocketAddr],
) -> (Result<Ended, String>, bool) {
    let others: Vec<SocketAddr> = masters.iter().copied().filter(|m| *m != target).collect();
    let conn = match wasmos_net::connect(endpoint, target).await {
        Ok(c) => c,
        Err(e) => return (Err(e.to_string()), false),
    };
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return (Err(e.to_string()), false),
    };
    let mut subscribed = false;
    let mut actions = driver.connected(now_ms());
    // One watch for the whole session: its silence clock must not restart with every event
    // or timer of the scheduler.
    let mut watch = std::pin::pin!(wasmos_net::watch_leader(&conn, target, &others, |other| {
        let endpoint = endpoint.clone();
        async move { who_leads(&endpoint, other).await }
    }));
    let mut watched = false;
    let outcome = 'session: loop {
        for action in actions.drain(..) {
            match action {
                Action::Send(call) => {
                    if let Err(e) = send_frame(&mut send, &call).await {
                        break 'session Err(e.to_string());
                    }
                }
                Action::Reconnect { addr } => {
                    break 'session Ok(Ended::Moved(addr.and_then(|a| a.parse().ok())));
                }
                Action::Finished => {
                    let _ = send.finish();
                    // Let the master read the last calls before the connection goes.
                    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                    break 'session Ok(Ended::Finished);
                }
                Action::Failed(message) => break 'session Ok(Ended::Failed(message)),
            }
        }
        let wake = driver.next_tick_ms();
        let sleep = wake.map_or(Duration::from_secs(3600), |w| {
            Duration::from_millis(w.saturating_sub(now_ms()))
        });
        subscribed |= driver.is_subscribed();
        tokio::select! {
            ev = recv_frame::<FrameworkEvent>(&mut recv) => match ev {
                Ok(Some(ev)) => actions = driver.event(ev, now_ms()),
                Ok(None) => {
                    actions = driver.disconnected();
                    if actions.is_empty() {
                        break 'session Err("the master ended the stream".into());
                    }
                }
                Err(e) => {
                    actions = driver.disconnected();
                    if !actions.contains(&Action::Finished) {
                        break 'session Err(e.to_string());
                    }
                }
            },
            _ = tokio::time::sleep(sleep) => actions = driver.tick(now_ms()),
            // A killed leader sends nothing: ask the others rather than wait out the idle
            // timeout (the driver resubscribes there, keeping its id and tasks).
            leader = &mut watch, if !watched => {
                watched = true;
                tracing::info!(%target, %leader, "the master went silent; following the new leader");
                actions = driver.event(FrameworkEvent::NotLeader { addr: Some(leader.to_string()) }, now_ms());
            }
        }
    };
    conn.close(0u32.into(), b"framework done");
    (outcome, subscribed || driver.is_subscribed())
}

/// Which master `other` says leads.
async fn who_leads(endpoint: &wasmos_net::Endpoint, other: SocketAddr) -> Option<SocketAddr> {
    let leader_of = |ev: FrameworkEvent| match ev {
        FrameworkEvent::NotLeader { addr } => addr,
        _ => None,
    };
    wasmos_net::ask_leader(endpoint, other, &FrameworkCall::WhoLeads, leader_of).await
}
