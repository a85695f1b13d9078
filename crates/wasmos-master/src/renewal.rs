//! Renewing certificates: a caller sends a certificate signing request for a key it made,
//! and gets a certificate for the identity its current certificate proves (never the one the
//! request names), signed by the CA whose key this master was given, valid for the lifetime
//! the operator set. The private key never leaves the caller.

use wasmos_net::{Connection, Identity};
use wasmos_proto::{ClientResponse, ErrorKind, MAX_CSR_BYTES, MasterToAgent};

use crate::Shared;

/// A new certificate (PEM) for `who`, for the key of `csr`, or why not (and whether the
/// fault is the caller's request or this master's means).
pub(crate) async fn renew(
    shared: &Shared,
    who: &Identity,
    csr: &[u8],
) -> Result<String, (ErrorKind, String)> {
    let unavailable = |m: &str| (ErrorKind::Unavailable, m.to_string());
    let Some(renewal) = &shared.cfg.renewal else {
        return Err(unavailable(
            "this master renews no certificates (it was started without --ca-key)",
        ));
    };
    if csr.len() > MAX_CSR_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!("a certificate signing request is at most {MAX_CSR_BYTES} bytes"),
        ));
    }
    // Its connection is closed when it is revoked; a request already on its way is not
    // signed either.
    if shared.revocations.current().covers("", Some(who)) {
        return Err((ErrorKind::InvalidRequest, REVOKED.to_string()));
    }
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
    let cert = signer
        .sign_renewal(who, csr, renewal.lifetime)
        .map_err(|e| (ErrorKind::InvalidRequest, e.to_string()))?;
    tracing::info!(
        who = %who.to_uri(),
        serial = %wasmos_net::pki::serial_of_pem(&cert).unwrap_or_default(),
        "renewed a certificate"
    );
    Ok(cert)
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
    let answer = match renew(shared, &who, csr).await {
        Ok(cert_pem) => ClientResponse::Certificate { cert_pem },
        Err((kind, message)) => ClientResponse::Error { kind, message },
    };
    let caller = crate::audit::Caller {
        who,
        peer: conn.remote_address(),
        channel: "quic",
    };
    if let Some(entry) = caller.entry(shared, "renew-certificate", "") {
        crate::audit::record(shared, entry, crate::audit::result_of(&answer)).await;
    }
    match answer {
        ClientResponse::Certificate { cert_pem } => MasterToAgent::Renewed { cert_pem },
        ClientResponse::Error { message, .. } => MasterToAgent::Error { message },
        _ => MasterToAgent::Error {
            message: "not renewed".into(),
        },
    }
}
