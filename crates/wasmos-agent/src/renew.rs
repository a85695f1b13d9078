//! The agent's own certificate: renewed from the masters when it is due (see
//! [`wasmos_net::renew_when_due`]), with a key made here that never leaves the agent.

use std::sync::Arc;

use wasmos_net::{CredentialFiles, Credentials, recv_frame};
use wasmos_proto::{AgentToMaster, MasterToAgent};

use crate::Agent;

/// Renews the agent's certificate whenever it is due; never returns.
pub(crate) async fn renew_when_due(agent: Arc<Agent>, creds: Credentials, files: CredentialFiles) {
    let asks = agent.renew_now.subscribe();
    wasmos_net::renew_when_due(creds, "agent", asks, || renew_once(&agent, &files)).await
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
