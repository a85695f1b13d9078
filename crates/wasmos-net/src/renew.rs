//! Renewing one's own certificate when it is due (agents and masters alike): two thirds into
//! its life, with a key made by the caller that never leaves it; after a failed attempt, again
//! later, with a warning that says when the certificate expires.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Credentials;

/// After a first failed attempt (no master reachable, none that renews), the next one; the
/// wait doubles with each failure up to [`RETRY_AT_MOST`].
const RETRY: Duration = Duration::from_secs(30);
/// The longest wait between two failed attempts.
const RETRY_AT_MOST: Duration = Duration::from_secs(600);
/// The longest the loop sleeps between looks at its certificate.
const LOOK_EVERY: Duration = Duration::from_secs(3600);

/// The least time between two renewals, whatever the certificates say: a certificate that is
/// due as soon as it arrives (a lifetime of seconds, clocks apart) must not start a loop.
const AT_LEAST: Duration = Duration::from_secs(10);

/// When a certificate valid from `from` to `until` (seconds since the epoch), first seen by
/// its holder at `seen`, is due: two thirds into its life, counted from when it was seen if
/// that is later (issuers date certificates back a little for clocks running behind, and a
/// certificate loaded late in its life keeps a third of what is left).
fn due_at(from: i64, until: i64, seen: i64) -> SystemTime {
    let from = from.max(seen);
    let at = from + (until - from).max(0) * 2 / 3;
    at_secs(at)
}

fn at_secs(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the warning after a failed renewal says of the certificate in force.
fn expiry(until: Option<i64>, now: SystemTime) -> String {
    match until.map(at_secs) {
        None => "its expiry is unreadable".into(),
        Some(at) => match at.duration_since(now) {
            Ok(left) => format!("it expires in {} s", left.as_secs()),
            Err(_) => "it has expired".into(),
        },
    }
}

/// Returns when `asks` changes (someone asked for a renewal now); never, once nobody can.
async fn asked(asks: &mut tokio::sync::watch::Receiver<u64>) {
    if asks.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Renews `creds` with `renew` whenever its certificate is due, or at once when `asks`
/// changes, `holder` naming whose it is in the log ("agent", "master"); never returns.
/// `renew` makes a key, gets it certified and installs the pair where the holder keeps it,
/// returning the new credentials, which `creds` then adopts for every handshake from then on.
/// Asks that come while a renewal is under way are answered by it.
pub async fn renew_when_due<F, Fut>(
    creds: Credentials,
    holder: &str,
    mut asks: tokio::sync::watch::Receiver<u64>,
    mut renew: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Credentials, String>>,
{
    // The certificate in force and when it was first seen here.
    let mut seen: (Vec<u8>, i64) = (creds.leaf(), epoch_secs(SystemTime::now()));
    let mut retry = RETRY;
    loop {
        let leaf = creds.leaf();
        if leaf != seen.0 {
            seen = (leaf, epoch_secs(SystemTime::now()));
        }
        let validity = crate::pki::validity_of_der(&seen.0);
        let wait = validity
            .map(|(from, until)| due_at(from, until, seen.1))
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait.min(LOOK_EVERY)) => continue,
                () = asked(&mut asks) => {
                    tracing::info!("renewing this {holder}'s certificate now, as asked");
                }
            }
        }
        match renew().await {
            Ok(renewed) => {
                let until = crate::pki::validity_of_der(&renewed.leaf()).map(|v| v.1);
                // The renewal built and checked them; taken at once, without reading files.
                creds.adopt(&renewed);
                tracing::info!(valid_until = ?until, "renewed this {holder}'s certificate");
                retry = RETRY;
                asks.borrow_and_update();
                tokio::time::sleep(AT_LEAST).await;
            }
            Err(e) => {
                let left = expiry(validity.map(|v| v.1), SystemTime::now());
                tracing::warn!(
                    "cannot renew this {holder}'s certificate ({left}; trying again in {} s): {e}",
                    retry.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = asked(&mut asks) => {}
                }
                retry = (retry * 2).min(RETRY_AT_MOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_due_two_thirds_into_its_life() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(due_at(0, 30, 0), at(20));
        // Dated back a minute before it was issued (at 60): two thirds of the 30 s it has.
        assert_eq!(due_at(0, 90, 60), at(80));
        // Seen late in its life: two thirds of what is left.
        assert_eq!(due_at(0, 3000, 2400), at(2800));
        assert_eq!(due_at(100, 100, 0), at(100));
        assert_eq!(due_at(-50, -10, -60), UNIX_EPOCH);
    }

    #[test]
    fn the_warning_says_when_the_certificate_expires() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(expiry(Some(1090), now), "it expires in 90 s");
        assert_eq!(expiry(Some(900), now), "it has expired");
        assert_eq!(expiry(None, now), "its expiry is unreadable");
    }
}
