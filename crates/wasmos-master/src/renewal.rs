//! Renewing certificates: a caller sends a certificate signing request for a key it made,
//! and gets a certificate for the identity its current certificate proves (never the one the
//! request names), signed by the CA whose key this master was given, valid for the lifetime
//! the operator set. The private key never leaves the caller.

use wasmos_net::Identity;
use wasmos_proto::MAX_CSR_BYTES;

use crate::Shared;

/// A new certificate (PEM) for `who`, for the key of `csr`, or why not.
pub(crate) async fn renew(shared: &Shared, who: &Identity, csr: &[u8]) -> Result<String, String> {
    let Some(renewal) = &shared.cfg.renewal else {
        return Err("this master renews no certificates (it was started without --ca-key)".into());
    };
    if csr.len() > MAX_CSR_BYTES {
        return Err(format!(
            "a certificate signing request is at most {MAX_CSR_BYTES} bytes"
        ));
    }
    let key = tokio::fs::read_to_string(&renewal.ca_key)
        .await
        .map_err(|e| {
            tracing::error!("cannot read the CA key {}: {e}", renewal.ca_key.display());
            "this master cannot renew certificates now (its CA key is unreadable)".to_string()
        })?;
    let signer =
        wasmos_net::pki::Signer::from_ders(&shared.creds.ca_certs(), &key).map_err(|e| {
            tracing::error!("cannot renew certificates: {e}");
            "this master cannot renew certificates now (its CA key is not of a trusted CA)"
                .to_string()
        })?;
    let cert = signer
        .sign_renewal(who, csr, renewal.lifetime)
        .map_err(|e| e.to_string())?;
    tracing::info!(who = %who.to_uri(), "renewed a certificate");
    Ok(cert)
}
