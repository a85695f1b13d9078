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

/// When a certificate valid from `from` to `until` (seconds since the epoch) is due.
fn due_at(from: i64, until: i64) -> SystemTime {
    let at = from + (until - from).max(0) * 2 / 3;
    UNIX_EPOCH + Duration::from_secs(at.max(0) as u64)
}

/// Renews the agent's certificate whenever it is due; never returns.
pub(crate) async fn renew_when_due(agent: Arc<Agent>, creds: Credentials, files: CredentialFiles) {
    loop {
        let wait = wasmos_net::pki::validity_of_der(&creds.leaf())
            .map(|(from, until)| due_at(from, until))
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(LOOK_EVERY)).await;
            continue;
        }
        match renew_once(&agent, &files).await {
            Ok(renewed) => {
                let until = wasmos_net::pki::validity_of_der(&renewed.leaf()).map(|v| v.1);
                // The files are the new pair now; the live credentials follow at once.
                match files.read() {
                    Ok([ca, cert, key]) => {
                        if let Err(e) = creds.reload(&ca, &cert, &key) {
                            tracing::warn!("renewed certificate not loaded: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("renewed certificate not loaded: {e}"),
                }
                tracing::info!(valid_until = ?until, "renewed this agent's certificate");
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
        assert_eq!(due_at(0, 30), UNIX_EPOCH + Duration::from_secs(20));
        assert_eq!(due_at(100, 100), UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(due_at(-50, -10), UNIX_EPOCH);
    }
}
