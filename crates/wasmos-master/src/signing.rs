//! The client calls for signed bundles: operators register and revoke signing keys and list
//! them; a tenant adds a signature to a bundle it may read. Each caller-supplied id, key and
//! signature is bounded and checked here before anything is written.

use wasmos_net::Identity;
use wasmos_proto::{
    BundleHash, BundleSignature, ClientResponse, ErrorKind, MAX_KEY_ID_BYTES, PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES, SigningKeyInfo,
};
use wasmos_state::{Command, CommandResult};

use crate::Shared;
use crate::replies::{error, raft_error, rejected};

pub(crate) fn operator_only(who: &Identity, what: &str) -> Option<ClientResponse> {
    (!matches!(who, Identity::Operator(_))).then(|| {
        error(
            ErrorKind::InvalidRequest,
            format!("only operators may {what}"),
        )
    })
}

async fn write(shared: &Shared, cmd: Command, done: ClientResponse) -> ClientResponse {
    match shared.write(cmd).await {
        Ok(CommandResult::Ok) => done,
        Ok(CommandResult::Rejected(why)) => rejected(why),
        Ok(other) => error(ErrorKind::Internal, format!("unexpected result {other:?}")),
        Err(e) => raft_error(shared, e),
    }
}

pub(crate) async fn add_key(shared: &Shared, who: &Identity, public: Vec<u8>) -> ClientResponse {
    if let Some(no) = operator_only(who, "register signing keys") {
        return no;
    }
    if public.len() != PUBLIC_KEY_BYTES {
        return error(
            ErrorKind::InvalidRequest,
            format!(
                "an ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {}",
                public.len()
            ),
        );
    }
    let id = wasmos_net::signing::key_id(&public);
    let cmd = Command::AddSigningKey {
        id: id.clone(),
        public,
        by: who.to_uri(),
        now_ms: crate::now_ms(),
    };
    write(shared, cmd, ClientResponse::SigningKeyAdded { id }).await
}

pub(crate) async fn revoke_key(shared: &Shared, who: &Identity, key: String) -> ClientResponse {
    if let Some(no) = operator_only(who, "revoke signing keys") {
        return no;
    }
    if key.len() > MAX_KEY_ID_BYTES {
        return error(ErrorKind::InvalidRequest, "that is no signing key id");
    }
    let cmd = Command::RevokeSigningKey {
        id: key,
        by: who.to_uri(),
        now_ms: crate::now_ms(),
    };
    write(shared, cmd, ClientResponse::Ok).await
}

pub(crate) fn list_keys(shared: &Shared, who: &Identity) -> ClientResponse {
    if let Some(no) = operator_only(who, "list signing keys") {
        return no;
    }
    ClientResponse::SigningKeys(shared.read(|s| {
        s.signing_keys
            .iter()
            .map(|(id, k)| SigningKeyInfo {
                id: id.clone(),
                public: k.public.clone(),
                added_by: k.added_by.clone(),
                added_ms: k.added_ms,
                revoked: k.revoked.as_ref().map(|r| (r.by.clone(), r.at_ms)),
                roles: s
                    .roles
                    .iter()
                    .filter(|(_, r)| r.require_signed_by.contains(id))
                    .map(|(name, _)| name.to_string())
                    .collect(),
            })
            .collect()
    }))
}

/// Adds a signature to a bundle. The caller must be able to read the bundle (a tenant: one it
/// uploaded or produced), and a bundle it cannot read gets the answer a missing one gets. The
/// signature is verified here, against the registered key, so the record never holds one
/// that does not verify (agents check again all the same).
pub(crate) async fn sign_bundle(
    shared: &Shared,
    who: &Identity,
    hash: BundleHash,
    sig: BundleSignature,
) -> ClientResponse {
    if sig.key.len() > MAX_KEY_ID_BYTES || sig.signature.len() != SIGNATURE_BYTES {
        return error(
            ErrorKind::InvalidRequest,
            format!("a signature names a key id and holds {SIGNATURE_BYTES} bytes"),
        );
    }
    let owner = who.to_uri();
    let key = shared.read(|s| {
        if !s.may_read(&owner, &hash) {
            return Err(error(
                ErrorKind::NotFound,
                format!("bundle {hash} has not been uploaded"),
            ));
        }
        s.usable_key(&sig.key)
            .map(|k| k.public.clone())
            .map_err(rejected)
    });
    let public = match key {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    if !wasmos_net::signing::verify(&public, &hash, &sig.signature) {
        return error(
            ErrorKind::InvalidBundle,
            format!(
                "the signature is not {}'s signature of bundle {hash} (signed other bytes, or with another key)",
                sig.key
            ),
        );
    }
    let cmd = Command::SignBundle {
        hash,
        signature: sig,
    };
    write(shared, cmd, ClientResponse::Ok).await
}
