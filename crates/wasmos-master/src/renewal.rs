//! Renewing certificates: a caller sends a certificate signing request for a key it made,
//! and gets a certificate for the identity its current certificate proves (never the one the
//! request names), signed by the CA whose key this master was given, valid for the lifetime
//! the operator set. The private key never leaves the caller. A master renews its own the
//! same way, signing it itself if it holds the CA key and asking a peer master that does if not.

use std::sync::Arc;

use wasmos_net::{Connection, CredentialFiles, Credentials, Identity};
use wasmos_proto::{ClientResponse, ErrorKind, MAX_CSR_BYTES, MasterToAgent, PeerResponse};

use crate::Shared;

/// What this master signs renewals with, and for how long, or why it cannot.
async fn signer(
    shared: &Shared,
) -> Result<(wasmos_net::pki::Signer, std::time::Duration), (ErrorKind, String)> {
    let unavailable = |m: &str| (ErrorKind::Unavailable, m.to_string());
    let Some(renewal) = &shared.cfg.renewal else {
        return Err(unavailable(
            "this master renews no certificates (it was started without --ca-key)",
        ));
    };
    let key = tokio::fs::read_to_string(&renewal.ca_key)
        .await
        .map_err(|e| {
            tracing::error!("cannot read the CA key {}: {e}", renewal.ca_key.display());
            unavailable("this master cannot renew certificates now (its CA key is unreadable)")
        })?;
    let signer =
        wasmos_net::pki::Signer::from_ders(&shared.creds.ca_certs(), &key).map_err(|e| {
            tracing::error!("cannot renew certificates: {e}");
            unavailable(
                "this master cannot renew certificates now (its CA key is not of a trusted CA)",
            )
        })?;
    Ok((signer, renewal.lifetime))
}

/// Refuses a request larger than any signing request, or from a revoked identity (its
/// connection is closed when it is revoked; a request already on its way is not signed).
fn admissible(shared: &Shared, who: &Identity, csr: &[u8]) -> Result<(), (ErrorKind, String)> {
    if csr.len() > MAX_CSR_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!("a certificate signing request is at most {MAX_CSR_BYTES} bytes"),
        ));
    }
    if shared.revocations.current().covers("", Some(who)) {
        return Err((ErrorKind::InvalidRequest, REVOKED.to_string()));
    }
    Ok(())
}

/// `cert`, made for `who`, logged with its serial.
fn signed(who: &Identity, cert: String) -> String {
    tracing::info!(
        who = %who.to_uri(),
        serial = %wasmos_net::pki::serial_of_pem(&cert).unwrap_or_default(),
        "renewed a certificate"
    );
    cert
}

/// A new certificate (PEM) for `who`, for the key of `csr`, or why not (and whether the
/// fault is the caller's request or this master's means).
pub(crate) async fn renew(
    shared: &Shared,
    who: &Identity,
    csr: &[u8],
) -> Result<String, (ErrorKind, String)> {
    admissible(shared, who, csr)?;
    let (signer, lifetime) = signer(shared).await?;
    let cert = signer
        .sign_renewal(who, csr, lifetime)
        .map_err(|e| (ErrorKind::InvalidRequest, e.to_string()))?;
    Ok(signed(who, cert))
}

/// A new certificate for the master whose current certificate is `current` (DER: the one it
/// connected with, or this master's own), with that certificate's identity and names.
async fn renew_master(
    shared: &Shared,
    current: &[u8],
    csr: &[u8],
) -> Result<String, (ErrorKind, String)> {
    let who =
        Identity::from_der(current).map_err(|e| (ErrorKind::InvalidRequest, e.to_string()))?;
    admissible(shared, &who, csr)?;
    let (signer, lifetime) = signer(shared).await?;
    let cert = signer
        .sign_master_renewal(current, csr, lifetime)
        .map_err(|e| (ErrorKind::InvalidRequest, e.to_string()))?;
    Ok(signed(&who, cert))
}

/// A peer master's renewal, asked on its `wasmos-peer/1` connection; recorded in the audit
/// log as a client's is.
pub(crate) async fn renew_peer(shared: &Shared, conn: &Connection, csr: &[u8]) -> PeerResponse {
    // Masters' certificates are never revoked: no revocation check here.
    let refuse = |message: String| PeerResponse::Error { message };
    let (Some(current), Ok(who)) = (wasmos_net::peer_leaf(conn), wasmos_net::peer_identity(conn))
    else {
        return refuse("the asking master's connection carries no readable certificate".into());
    };
    let answer = renew_master(shared, &current, csr).await;
    match audited(shared, conn, who, answer).await {
        Ok(cert_pem) => PeerResponse::Renewed { cert_pem },
        Err(message) => refuse(message),
    }
}

/// Records a renewal asked on a connection (not a client's, whose calls are recorded where
/// they are answered), with the serial it made or why not; the certificate or the refusal's
/// message.
async fn audited(
    shared: &Shared,
    conn: &Connection,
    who: Identity,
    answer: Result<String, (ErrorKind, String)>,
) -> Result<String, String> {
    let caller = crate::audit::Caller {
        who,
        peer: conn.remote_address(),
        channel: "quic",
    };
    if let Some(entry) = caller.entry(shared, "renew-certificate", "") {
        // Said as a client's answer would be, so the entry reads the same.
        let response = match &answer {
            Ok(cert_pem) => ClientResponse::Certificate {
                cert_pem: cert_pem.clone(),
            },
            Err((kind, message)) => ClientResponse::Error {
                kind: *kind,
                message: message.clone(),
            },
        };
        crate::audit::record(shared, entry, crate::audit::result_of(&response)).await;
    }
    answer.map_err(|(_, message)| message)
}

/// Renews this master's own certificate whenever it is due, signing it itself when it holds
/// a CA key and asking its peers otherwise, and installs it in `files`; never returns.
pub(crate) async fn renew_own(shared: Arc<Shared>, files: CredentialFiles) {
    let creds = shared.creds.clone();
    // Nothing asks a master to renew early: it is given a new certificate by hand.
    let (_, never) = tokio::sync::watch::channel(0);
    wasmos_net::renew_when_due(creds, "master", never, || renew_own_once(&shared, &files)).await
}

/// One renewal of this master's own certificate: signed here if this master holds a CA key
/// that works, else by a peer; installed in `files` and recorded in the audit log.
async fn renew_own_once(shared: &Shared, files: &CredentialFiles) -> Result<Credentials, String> {
    let (csr, key) = wasmos_net::pki::renewal_request().map_err(|e| e.to_string())?;
    let here = match shared.cfg.renewal {
        Some(_) => Some(renew_master(shared, &shared.creds.leaf(), &csr).await),
        None => None,
    };
    let cert = match here {
        Some(Ok(cert)) => cert,
        // Its own CA key refuses this certificate (of another CA): peers would too.
        Some(Err((ErrorKind::InvalidRequest, e))) => return Err(e),
        Some(Err((_, e))) => {
            tracing::warn!("cannot sign this master's certificate here ({e}); asking its peers");
            crate::peers::renewal(shared, csr).await?
        }
        None => crate::peers::renewal(shared, csr).await.map_err(|e| {
            format!("{e} (give a master --ca-key, or replace this certificate by hand)")
        })?,
    };
    let installed = files.install(&cert, &key)?;
    if let Ok(me) = Identity::from_der(&installed.leaf()) {
        let entry = crate::audit::Caller {
            who: me,
            peer: shared.cfg.listen,
            channel: "self",
        }
        .entry(shared, "renew-certificate", "");
        if let Some(entry) = entry {
            let serial = wasmos_net::serial_of_der(&installed.leaf()).unwrap_or_default();
            crate::audit::record(shared, entry, format!("ok: serial {serial}")).await;
        }
    }
    Ok(installed)
}

const REVOKED: &str = "this certificate was revoked by an operator of the cluster";

/// An agent's renewal, asked on its connection: answered `Renewed` or `Error`, and recorded
/// in the audit log as a client's is, with the serial it made.
pub(crate) async fn renew_agent(shared: &Shared, conn: &Connection, csr: &[u8]) -> MasterToAgent {
    if shared.revocations.revokes_conn(conn) {
        return MasterToAgent::Error {
            message: REVOKED.to_string(),
        };
    }
    let who = match wasmos_net::peer_identity(conn) {
        Ok(who) => who,
        Err(e) => {
            return MasterToAgent::Error {
                message: e.to_string(),
            };
        }
    };
    let answer = renew(shared, &who, csr).await;
    match audited(shared, conn, who, answer).await {
        Ok(cert_pem) => MasterToAgent::Renewed { cert_pem },
        Err(message) => MasterToAgent::Error { message },
    }
}

/// `wasmos cert renew --agents` (operators): tells every agent connected here (the leader's
/// are all of them) to renew its certificate now.
pub(crate) fn renew_agents(shared: &Shared, who: &Identity) -> ClientResponse {
    if let Some(refused) =
        crate::signing::operator_only(who, "ask agents to renew their certificates")
    {
        return refused;
    }
    let agents = shared
        .agents()
        .iter()
        .filter(|(_, link)| link.tx.send(MasterToAgent::RenewNow).is_ok())
        .map(|(id, _)| id.clone())
        .collect();
    ClientResponse::AgentsAsked { agents }
}
