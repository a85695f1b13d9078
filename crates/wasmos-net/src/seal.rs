//! Sealing secrets at rest: ChaCha20-Poly1305 under a 256-bit key that only masters hold (a
//! file next to their certificates). A sealed value is `nonce ‖ ciphertext ‖ tag`.

use std::path::Path;

use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the secrets key {path} is unreadable: {detail}")]
    BadKey { path: String, detail: String },
    #[error("cannot write the secrets key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "a sealed secret does not open with this cluster's secrets key (another key, or damaged)"
    )]
    Open,
    #[error("no randomness available")]
    Random,
}

/// The masters' key for secrets.
pub struct SecretsKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

const KEY_LEN: usize = 32;

impl SecretsKey {
    fn from_bytes(bytes: &[u8]) -> Option<SecretsKey> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        Some(SecretsKey {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Reads the key at `path` (64 hex digits), creating it (mode 0600) if it does not exist.
    /// Every master of a group must be given the same file.
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, SealError> {
        let bad = |detail: String| SealError::BadKey {
            path: path.display().to_string(),
            detail,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes =
                    decode_hex(text.trim()).ok_or_else(|| bad("not 64 hex digits".into()))?;
                if bytes.len() != KEY_LEN {
                    return Err(bad(format!("{} bytes, not {KEY_LEN}", bytes.len())));
                }
                SecretsKey::from_bytes(&bytes).ok_or_else(|| bad("not a key".into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| SealError::Random)?;
                let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                crate::write_private(path, text.as_bytes()).map_err(|source| SealError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
                SecretsKey::from_bytes(&bytes).ok_or_else(|| bad("not a key".into()))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// Encrypts `plain`; `context` (the secret's name) is bound to it, so a sealed value cannot
    /// be moved to another name.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A secret nobody can guess: 32 random bytes from the OS, in hex (the web UI proxy's login
/// token). `None` only if the OS gives no randomness.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = SecretsKey::load_or_create(&path).unwrap();
        let again = SecretsKey::load_or_create(&path).unwrap();
        let sealed = key.seal("DB_PASSWORD", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(again.open("DB_PASSWORD", &sealed).unwrap(), b"hunter2");
        assert!(key.open("OTHER", &sealed).is_err(), "bound to its name");
        let other = SecretsKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open("DB_PASSWORD", &sealed).is_err());
        assert!(key.open("DB_PASSWORD", &sealed[..10]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").unwrap();
        let err = SecretsKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("secrets.key"), "{err}");
    }
}
