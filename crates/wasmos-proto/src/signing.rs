//! Bundle signatures as they travel: a signature names its key by id, a role's requirement
//! names the keys it trusts, and a launch carries both so the agent checks them itself.

use serde::{Deserialize, Serialize};

/// Most signatures one bundle carries (one per key; a new one by the same key replaces it).
pub const MAX_BUNDLE_SIGNATURES: usize = 8;
/// Most keys one role may require (any one of them suffices).
pub const MAX_ROLE_SIGNERS: usize = 16;
/// Most signing keys the cluster registers, revoked ones included (they are kept for good).
pub const MAX_SIGNING_KEYS: usize = 1000;
/// Longest key id a caller may name (`ed25519:` and 16 hex digits are 24 bytes).
pub const MAX_KEY_ID_BYTES: usize = 64;
/// An ed25519 signature's length, and a public key's.
pub const SIGNATURE_BYTES: usize = 64;
pub const PUBLIC_KEY_BYTES: usize = 32;

/// One author's signature of a bundle: ed25519 over the bundle's sha256 (see
/// `wasmos_net::signing` for the exact message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSignature {
    /// The signing key's id (`ed25519:` and the first 16 hex digits of its sha256).
    pub key: String,
    pub signature: Vec<u8>,
}

/// A public key an agent may trust for a launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub id: String,
    /// The raw 32-byte ed25519 public key.
    pub public: Vec<u8>,
}

/// What a launch of a task whose role requires signed bundles carries: the keys (none revoked)
/// the role trusts and the signatures the bundle has. The agent runs the task only if one of
/// the signatures verifies, under one of the keys, over the bytes it fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleTrust {
    /// The role whose requirement this is (the task's, or the nearest above it that sets one).
    pub role: String,
    pub keys: Vec<TrustedKey>,
    pub signatures: Vec<BundleSignature>,
}

/// A registered signing key as `wasmos signing-key list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyInfo {
    pub id: String,
    pub public: Vec<u8>,
    pub added_by: String,
    pub added_ms: u64,
    /// Who revoked it and when; a revoked key vouches for nothing.
    pub revoked: Option<(String, u64)>,
    /// The roles that require it.
    pub roles: Vec<String>,
}
