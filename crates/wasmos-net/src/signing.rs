//! Bundle signing keys: ed25519 key pairs in the PEM files openssl also reads and writes
//! (PKCS#8 private keys, SubjectPublicKeyInfo public keys), key ids, and the signature over a
//! bundle's hash that the CLI makes, the masters check when it is added and agents check
//! again before they compile.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use wasmos_proto::{BundleHash, BundleTrust, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("not a PEM private key (PKCS#8, `-----BEGIN PRIVATE KEY-----`): {0}")]
    PrivatePem(String),
    #[error("not an ed25519 private key: {0}")]
    NotEd25519Private(String),
    #[error("not a PEM public key (`-----BEGIN PUBLIC KEY-----`): {0}")]
    PublicPem(String),
    #[error("not an ed25519 public key (other algorithms are not accepted)")]
    NotEd25519Public,
    #[error("cannot generate a key pair: {0}")]
    Generate(String),
}

/// What is signed: a fixed domain string, then the bundle's sha256 in hex. The prefix keeps a
/// signature made for a bundle from standing for anything else signed by the same key.
fn message(hash: &BundleHash) -> Vec<u8> {
    let mut m = b"wasmos bundle signature v1\n".to_vec();
    m.extend_from_slice(hash.as_str().as_bytes());
    m
}

/// A key's id: `ed25519:` and the first 16 hex digits of its sha256, short enough to type,
/// long enough that nobody makes another key with the same id.
pub fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    let mut id = String::from("ed25519:");
    for b in &digest.as_ref()[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A new key pair, as PEM: the private key (PKCS#8) and the public key (SubjectPublicKeyInfo).
pub fn generate() -> Result<(String, String), SigningError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| SigningError::Generate(e.to_string()))?;
    Ok((pair.serialize_pem(), pair.public_key_pem()))
}

/// The raw 32-byte ed25519 key of a PEM public key.
pub fn public_key_from_pem(pem: &[u8]) -> Result<Vec<u8>, SigningError> {
    let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem)
        .map_err(|e| SigningError::PublicPem(e.to_string()))?;
    // SEQUENCE { SEQUENCE { OID 1.3.101.112 (Ed25519) }, BIT STRING (0 unused bits) }: an
    // ed25519 SubjectPublicKeyInfo is this prefix and the 32 key bytes, nothing else.
    const PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let der = spki.as_ref();
    match der.strip_prefix(&PREFIX[..]) {
        Some(key) if key.len() == PUBLIC_KEY_BYTES => Ok(key.to_vec()),
        _ => Err(SigningError::NotEd25519Public),
    }
}

/// A private signing key, read from its PEM file.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, SigningError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| SigningError::PrivatePem(e.to_string()))?;
        // `maybe_unchecked` takes PKCS#8 v1 too (openssl's `genpkey` writes v1, without the
        // public key); the public key is then derived from the private one.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| SigningError::NotEd25519Private(e.to_string()))?;
        Ok(SigningKey { pair })
    }

    pub fn public(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn id(&self) -> String {
        key_id(self.public())
    }

    /// Signs the bundle whose sha256 is `hash`.
    pub fn sign(&self, hash: &BundleHash) -> Vec<u8> {
        self.pair.sign(&message(hash)).as_ref().to_vec()
    }
}

/// Whether `signature` is `public`'s signature of the bundle whose sha256 is `hash`.
pub fn verify(public: &[u8], hash: &BundleHash, signature: &[u8]) -> bool {
    signature.len() == SIGNATURE_BYTES
        && public.len() == PUBLIC_KEY_BYTES
        && UnparsedPublicKey::new(&ED25519, public)
            .verify(&message(hash), signature)
            .is_ok()
}

/// The agent's check before it compiles: one of the bundle's signatures verifies under one of
/// the keys the task's role trusts. `hash` is the sha256 of the bytes the agent holds (it
/// checked them against it), so a signature that verifies vouches for exactly those bytes,
/// whatever the master's record claimed. Returns the key that vouches, or why none does.
pub fn check_trust(hash: &BundleHash, trust: &BundleTrust) -> Result<String, String> {
    let mut tried = Vec::new();
    for sig in &trust.signatures {
        let Some(key) = trust.keys.iter().find(|k| k.id == sig.key) else {
            continue;
        };
        // A record pairing an id with another key's bytes is refused, not trusted for either.
        if key_id(&key.public) != key.id {
            tried.push(format!("{} (its public key does not match its id)", key.id));
            continue;
        }
        if verify(&key.public, hash, &sig.signature) {
            return Ok(key.id.clone());
        }
        tried.push(format!("{} (the signature does not verify)", key.id));
    }
    let wanted: Vec<&str> = trust.keys.iter().map(|k| k.id.as_str()).collect();
    let wanted = if wanted.is_empty() {
        "none, all revoked".to_string()
    } else {
        wanted.join(", ")
    };
    Err(if tried.is_empty() {
        format!(
            "bundle {hash} is not signed by a key role {} trusts ({wanted}); refusing to compile it",
            trust.role
        )
    } else {
        format!(
            "bundle {hash}: no signature by a key role {} trusts holds: {}; refusing to compile it",
            trust.role,
            tried.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmos_proto::{BundleSignature, TrustedKey};

    fn hash(byte: u8) -> BundleHash {
        BundleHash::parse(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    fn new_key() -> (SigningKey, String) {
        let (private, public) = generate().unwrap();
        let key = SigningKey::from_pem(private.as_bytes()).unwrap();
        (key, public)
    }

    fn trust(keys: &[&SigningKey], signatures: Vec<BundleSignature>) -> BundleTrust {
        BundleTrust {
            role: "acme".into(),
            keys: keys
                .iter()
                .map(|k| TrustedKey {
                    id: k.id(),
                    public: k.public().to_vec(),
                })
                .collect(),
            signatures,
        }
    }

    #[test]
    fn a_signature_verifies_for_its_bundle_and_key_only() {
        let (key, public_pem) = new_key();
        let public = public_key_from_pem(public_pem.as_bytes()).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(key_id(&public), key.id());
        let sig = key.sign(&hash(1));
        assert!(verify(&public, &hash(1), &sig));
        assert!(!verify(&public, &hash(2), &sig), "another bundle");
        let (other, _) = new_key();
        assert!(!verify(other.public(), &hash(1), &sig), "another key");
        let mut flipped = sig.clone();
        flipped[0] ^= 1;
        assert!(!verify(&public, &hash(1), &flipped), "a tampered signature");
        assert!(!verify(&public, &hash(1), &sig[..63]), "a short one");
    }

    #[test]
    fn bad_key_files_are_named_as_such() {
        let (private, public) = generate().unwrap();
        assert!(matches!(
            public_key_from_pem(private.as_bytes()),
            Err(SigningError::PublicPem(_))
        ));
        assert!(matches!(
            SigningKey::from_pem(public.as_bytes()),
            Err(SigningError::PrivatePem(_))
        ));
        // An ECDSA key: right format, wrong algorithm.
        let p256 = rcgen::KeyPair::generate().unwrap();
        assert!(matches!(
            public_key_from_pem(p256.public_key_pem().as_bytes()),
            Err(SigningError::NotEd25519Public)
        ));
        assert!(matches!(
            SigningKey::from_pem(p256.serialize_pem().as_bytes()),
            Err(SigningError::NotEd25519Private(_))
        ));
    }

    /// What the agent does with a master record it cannot trust: each forgery is refused.
    #[test]
    fn the_agent_check_refuses_forged_records() {
        let (good, _) = new_key();
        let (other, _) = new_key();
        let signed = BundleSignature {
            key: good.id(),
            signature: good.sign(&hash(1)),
        };
        assert_eq!(
            check_trust(&hash(1), &trust(&[&good], vec![signed.clone()])),
            Ok(good.id())
        );
        // The record claims the signature is for these bytes, but the agent fetched others.
        let err = check_trust(&hash(2), &trust(&[&good], vec![signed.clone()])).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        // Signed, but by a key the role does not trust.
        let err = check_trust(&hash(1), &trust(&[&other], vec![signed.clone()])).unwrap_err();
        assert!(
            err.contains("not signed by a key role acme trusts"),
            "{err}"
        );
        // The trusted key's id with another key's bytes (a forged key record).
        let mut forged = trust(&[&good], vec![signed.clone()]);
        forged.keys[0].public = other.public().to_vec();
        let err = check_trust(&hash(1), &forged).unwrap_err();
        assert!(err.contains("does not match its id"), "{err}");
        // A signature made by another key, filed under the trusted key's id.
        let misfiled = BundleSignature {
            key: good.id(),
            signature: other.sign(&hash(1)),
        };
        let err = check_trust(&hash(1), &trust(&[&good], vec![misfiled])).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        // No signature at all; no key left (all revoked).
        let err = check_trust(&hash(1), &trust(&[&good], vec![])).unwrap_err();
        assert!(err.contains("not signed"), "{err}");
        let err = check_trust(&hash(1), &trust(&[], vec![signed])).unwrap_err();
        assert!(err.contains("none, all revoked"), "{err}");
    }
}
