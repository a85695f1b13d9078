//! Signed bundles in the replicated state: the signing keys operators register (and revoke,
//! for good), each bundle's signatures, and the rule that a task of a role requiring signed
//! bundles runs only a bundle signed by one of the role's keys. Checked inside `apply`, so
//! every path that creates a task meets it; agents check the signatures again themselves.

use wasmos_alloc::Role;
use wasmos_proto::{
    BundleHash, BundleSignature, BundleTrust, MAX_BUNDLE_SIGNATURES, MAX_KEY_ID_BYTES,
    MAX_ROLE_SIGNERS, MAX_SIGNING_KEYS, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, TaskSpec, TrustedKey,
};

use crate::{ClusterState, CommandResult, Rejection, Revocation};
use serde::{Deserialize, Serialize};

/// A registered signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    /// The raw 32-byte ed25519 public key.
    pub public: Vec<u8>,
    pub added_by: String,
    pub added_ms: u64,
    pub revoked: Option<Revocation>,
}

impl ClusterState {
    /// Registers a key under `id` (the master computed it from the key). Adding a key that is
    /// there is a no-op; a revoked key stays revoked.
    pub(crate) fn add_signing_key(
        &mut self,
        id: String,
        public: Vec<u8>,
        by: String,
        now_ms: u64,
    ) -> CommandResult {
        if public.len() != PUBLIC_KEY_BYTES || id.is_empty() || id.len() > MAX_KEY_ID_BYTES {
            return CommandResult::Rejected(Rejection::Invalid(
                "not an ed25519 public key (32 bytes) with its id".into(),
            ));
        }
        if let Some(have) = self.signing_keys.get(&id) {
            return match &have.revoked {
                Some(r) => CommandResult::Rejected(Rejection::Conflict(format!(
                    "signing key {id} was revoked by {} and cannot be trusted again; make a new key",
                    r.by
                ))),
                None if have.public == public => CommandResult::Ok,
                None => CommandResult::Rejected(Rejection::Conflict(format!(
                    "another key is registered as {id}"
                ))),
            };
        }
        if self.signing_keys.len() >= MAX_SIGNING_KEYS {
            return CommandResult::Rejected(Rejection::OverLimit(format!(
                "the cluster holds {MAX_SIGNING_KEYS} signing keys, the most it keeps"
            )));
        }
        self.signing_keys.insert(
            id,
            SigningKeyRecord {
                public,
                added_by: by,
                added_ms: now_ms,
                revoked: None,
            },
        );
        CommandResult::Ok
    }

    /// Revokes a signing key for good: from now on it vouches for no bundle, and roles that
    /// require only revoked keys run nothing until an operator names another.
    pub(crate) fn revoke_signing_key(
        &mut self,
        id: &str,
        by: String,
        now_ms: u64,
    ) -> CommandResult {
        let Some(key) = self.signing_keys.get_mut(id) else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "no signing key {} is registered",
                crate::audit_field(id)
            )));
        };
        if key.revoked.is_none() {
            key.revoked = Some(Revocation { by, at_ms: now_ms });
        }
        CommandResult::Ok
    }

    /// Adds (or replaces, by the same key) a signature of a bundle. The master verified it
    /// against the key before proposing it; agents verify it again.
    pub(crate) fn sign_bundle(&mut self, hash: &BundleHash, sig: BundleSignature) -> CommandResult {
        if let Err(why) = self.usable_key(&sig.key) {
            return CommandResult::Rejected(why);
        }
        if sig.signature.len() != SIGNATURE_BYTES {
            return CommandResult::Rejected(Rejection::Invalid(format!(
                "an ed25519 signature is {SIGNATURE_BYTES} bytes, not {}",
                sig.signature.len()
            )));
        }
        let Some(meta) = self.bundles.get_mut(hash) else {
            return CommandResult::Rejected(Rejection::NotFound(format!(
                "bundle {hash} has not been uploaded"
            )));
        };
        if let Some(have) = meta.signatures.iter_mut().find(|s| s.key == sig.key) {
            *have = sig;
            return CommandResult::Ok;
        }
        if meta.signatures.len() >= MAX_BUNDLE_SIGNATURES {
            // Signatures by keys revoked since vouch for nothing: they make room.
            let keys = &self.signing_keys;
            meta.signatures
                .retain(|s| keys.get(&s.key).is_some_and(|k| k.revoked.is_none()));
        }
        if meta.signatures.len() >= MAX_BUNDLE_SIGNATURES {
            return CommandResult::Rejected(Rejection::OverLimit(format!(
                "bundle {hash} carries {MAX_BUNDLE_SIGNATURES} signatures, the most it may"
            )));
        }
        meta.signatures.push(sig);
        CommandResult::Ok
    }

    /// A registered key that is not revoked, or why `id` is not one.
    pub fn usable_key(&self, id: &str) -> Result<&SigningKeyRecord, Rejection> {
        match self.signing_keys.get(id) {
            None => Err(Rejection::NotFound(format!(
                "no signing key {} is registered (an operator adds it with `wasmos signing-key add`)",
                crate::audit_field(id)
            ))),
            Some(k) if k.revoked.is_some() => {
                Err(Rejection::Invalid(format!("signing key {id} is revoked")))
            }
            Some(k) => Ok(k),
        }
    }

    /// Checks a role's new list of required keys: few enough, and each it did not list before
    /// registered and usable (one revoked since stays listed, vouching for nothing, until an
    /// operator drops it; other changes to the role are not held up by it).
    pub(crate) fn check_signers(&self, role: &Role, keys: &[String]) -> Result<(), Rejection> {
        if keys.len() > MAX_ROLE_SIGNERS {
            return Err(Rejection::Invalid(format!(
                "role {role}: at most {MAX_ROLE_SIGNERS} signing keys, not {}",
                keys.len()
            )));
        }
        let before = self.roles.get(role).map(|r| &r.require_signed_by);
        for k in keys
            .iter()
            .filter(|k| before.is_none_or(|b| !b.contains(k)))
        {
            self.usable_key(k)
                .map_err(|why| why.within(&format!("role {role}")))?;
        }
        Ok(())
    }

    /// The signing requirement in force for `role`: its own, or that of the nearest role above
    /// it that sets one (a sub-role may name other keys, never none).
    pub fn signers_for(&self, role: &str) -> Option<(&str, &[String])> {
        let role = Role::new(role).ok()?;
        role.self_and_ancestors().find_map(|r| {
            self.roles
                .get_key_value(r)
                .filter(|(_, rec)| !rec.require_signed_by.is_empty())
                .map(|(name, rec)| (name.as_str(), rec.require_signed_by.as_slice()))
        })
    }

    /// What a launch of `spec` carries for the agent to check: the trusted keys not revoked
    /// and the bundle's signatures; `None` when its role requires no signature.
    pub fn bundle_trust(&self, spec: &TaskSpec) -> Option<BundleTrust> {
        self.trust_for(&spec.bundle, spec.role.as_deref()?)
    }

    fn trust_for(&self, bundle: &BundleHash, role: &str) -> Option<BundleTrust> {
        let (role, keys) = self.signers_for(role)?;
        let keys = keys
            .iter()
            .filter_map(|id| {
                let k = self.usable_key(id).ok()?;
                Some(TrustedKey {
                    id: id.clone(),
                    public: k.public.clone(),
                })
            })
            .collect();
        let signatures = self
            .bundles
            .get(bundle)
            .map(|m| m.signatures.clone())
            .unwrap_or_default();
        Some(BundleTrust {
            role: role.to_string(),
            keys,
            signatures,
        })
    }

    /// A new task of `role`, when the role requires signed bundles, must name a bundle signed
    /// by one of the role's keys that is not revoked. Checked on every submission and launch:
    /// it reads the record in place rather than build the `BundleTrust` a launch carries.
    pub fn check_signed(&self, bundle: &BundleHash, role: &str) -> Result<(), Rejection> {
        let Some((from, wanted)) = self.signers_for(role) else {
            return Ok(());
        };
        let signatures = self
            .bundles
            .get(bundle)
            .map_or(&[][..], |m| m.signatures.as_slice());
        let by_wanted = |s: &&BundleSignature| wanted.contains(&s.key);
        if signatures
            .iter()
            .filter(by_wanted)
            .any(|s| self.usable_key(&s.key).is_ok())
        {
            return Ok(());
        }
        let revoked = signatures.iter().any(|s| by_wanted(&s));
        Err(Rejection::Invalid(if revoked {
            format!(
                "bundle {bundle} is signed only by revoked keys; role {from} requires a signature by {}",
                wanted.join(", ")
            )
        } else {
            format!(
                "bundle {bundle} is not signed by a key role {from} requires ({}): sign it with `wasmos bundle sign` and push it with its signature",
                wanted.join(", ")
            )
        }))
    }
}
