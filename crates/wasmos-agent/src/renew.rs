//! The agent's own certificate: followed on disk (a new one, or a new CA set, applies to the
//! next handshakes without a restart) and renewed from the masters when two thirds of its
//! lifetime have passed, with a key made here that never leaves the agent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmos_net::{CredentialFiles, Credentials, recv_frame};
use wasmos_proto::{AgentToMaster, MasterToAgent};

use crate::Agent;

/// After a failed attempt (no master, a master that renews nothing), the next one.
const RETRY: Duration = Duration::from_secs(30);
/// The longest the agent sleeps between looks at its certificate.
const LOOK_EVERY: Duration = Duration::from_secs(3600);

/// The least time between two renewals, whatever the certificates say: a certificate that is
/// due as soon as it arrives (a lifetime of seconds, clocks apart) must not start a loop.
const AT_LEAST: Duration = Duration::from_secs(10);

/// When a certificate valid from `from` to `until` (seconds since the epoch), first seen by
/// this agent at `seen`, is due: two thirds into its life, counted from when it was seen if
/// that is later (issuers date certificates back a little for clocks running behind, and a
/// certificate loaded late in its life keeps a third of what is left).
fn due_at(from: i64, until: i64, seen: i64) -> SystemTime {
    let from = from.max(seen);
    let at = from + (until - from).max(0) * 2 / 3;
    UNIX_EPOCH + Duration::from_secs(at.max(0) as u64)
}

fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Renews the agent's certificate whenever it is due; never returns.
pub(crate) async fn renew_when_due(agent: Arc<Agent>, creds: Credentials, files: CredentialFiles) {
    // The certificate in force and when this agent first saw it.
    let mut seen: (Vec<u8>, i64) = (creds.leaf(), epoch_secs(SystemTime::now()));
    loop {
        let leaf = creds.leaf();
        if leaf != seen.0 {
            seen = (leaf, epoch_secs(SystemTime::now()));
        }
        let wait = wasmos_net::pki::validity_of_der(&seen.0)
            .map(|(from, until)| due_at(from, until, seen.1))
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(LOOK_EVERY)).await;
            continue;
        }
        match renew_once(&agent, &files).await {
            Ok(renewed) => {
                let until = wasmos_net::pki::validity_of_der(&renewed.leaf()).map(|v| v.1);
                // Installing built and checked them; the live credentials take them at once,
                // without reading the files back.
                creds.adopt(&renewed);
                tracing::info!(valid_until = ?until, "renewed this agent's certificate");
                tokio::time::sleep(AT_LEAST).await;
            }
            Err(e) => {
                tracing::warn!("cannot renew this agent's certificate (trying again): {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn renew_once(agent: &Agent, files: &CredentialFiles) -> Result<Credentials, String> {
    let (csr, key) = wasmos_net::pki::renewal_request().map_err(|e| e.to_string())?;
    let (mut send, mut recv) = crate::side_stream(agent, &AgentToMaster::Renew { csr }).await?;
    let _ = send.finish();
    let cert = match recv_frame::<MasterToAgent>(&mut recv).await {
        Ok(Some(MasterToAgent::Renewed { cert_pem })) => cert_pem,
        Ok(Some(MasterToAgent::Error { message })) => return Err(message),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    files.install(&cert, &key)
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
}
