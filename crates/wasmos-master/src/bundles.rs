//! The bundle store: content-addressed component files, written atomically and only after their
//! sha256 matches the name they were announced under.

use std::io::Write;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmos_proto::{BlobKind, BundleHash};

/// The first 8 bytes of every WebAssembly component (magic, then the component layer/version).
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A cheap check of what kind of file this is, for a clear error before anything is stored.
/// Full validation happens when the agent compiles the component.
pub(crate) fn sniff_component(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || bytes[..4] != COMPONENT_HEADER[..4] {
        return Err("not a WebAssembly file (bad magic number)".into());
    }
    if bytes[4..8] == [0x01, 0x00, 0x00, 0x00] {
        return Err("a core WebAssembly module, not a component (build for wasm32-wasip2)".into());
    }
    if bytes[4..8] != COMPONENT_HEADER[4..] {
        return Err("an unsupported WebAssembly version or layer".into());
    }
    // Refused now rather than when an agent links it: a task of it could never run here.
    wasmos_proto::check_component_imports(bytes)
}

pub(crate) struct BundleStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BundleError {
    #[error("content hash is {actual}, not the announced {announced}")]
    HashMismatch { announced: String, actual: String },
    #[error("{0}")]
    NotAComponent(String),
    #[error("cannot store bundle: {0}")]
    Io(#[from] std::io::Error),
}

impl BundleStore {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        wasmos_net::create_private_dir(&dir)?;
        Ok(BundleStore { dir })
    }

    fn path(&self, hash: &BundleHash) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    pub fn contains(&self, hash: &BundleHash) -> bool {
        self.path(hash).is_file()
    }

    /// Verifies and stores `bytes` under `hash`. The file appears under its final name only once
    /// complete, so a crash never leaves a truncated bundle behind.
    pub fn put(&self, hash: &BundleHash, bytes: &[u8], kind: BlobKind) -> Result<(), BundleError> {
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != hash.as_str() {
            return Err(BundleError::HashMismatch {
                announced: hash.to_string(),
                actual,
            });
        }
        if kind == BlobKind::Component {
            sniff_component(bytes).map_err(BundleError::NotAComponent)?;
        }
        // Written even when the file is there already: an upload must take as long whether or
        // not another tenant stored the same bytes, or its timing would tell. A uniquely named
        // temporary file: two clients may upload the same bundle at once; the rename replaces
        // the same content atomically.
        let mut f = tempfile::NamedTempFile::new_in(&self.dir)?;
        f.write_all(bytes)?;
        f.as_file().sync_all()?;
        f.persist(self.path(hash)).map_err(|e| e.error)?;
        Ok(())
    }

    pub fn get(&self, hash: &BundleHash) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(hash))
    }

    /// Removes blob files `keep` says no to once they are older than `grace` (an upload's
    /// bytes land before its record); returns how many went.
    pub fn sweep(&self, keep: impl Fn(&BundleHash) -> bool, grace: std::time::Duration) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(hash) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wasm"))
                .and_then(|n| BundleHash::parse(n).ok())
            else {
                continue;
            };
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > grace);
            if old && !keep(&hash) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_names_the_problem() {
        assert!(
            sniff_component(b"hello world")
                .unwrap_err()
                .contains("not a WebAssembly")
        );
        let core = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        assert!(
            sniff_component(&core)
                .unwrap_err()
                .contains("core WebAssembly module")
        );
        assert!(sniff_component(&COMPONENT_HEADER).is_ok());
    }

    #[test]
    fn stores_only_what_matches_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::open(dir.path().to_path_buf()).unwrap();
        let bytes = COMPONENT_HEADER.to_vec();
        let good = BundleHash::parse(&hex::encode(Sha256::digest(&bytes))).unwrap();
        let bad = BundleHash::parse(&"0".repeat(64)).unwrap();
        assert!(matches!(
            store.put(&bad, &bytes, BlobKind::Component),
            Err(BundleError::HashMismatch { .. })
        ));
        assert!(!store.contains(&bad));
        store.put(&good, &bytes, BlobKind::Component).unwrap();
        // Data blobs are not sniffed; components are.
        let text = b"plain text".to_vec();
        let text_hash = BundleHash::parse(&hex::encode(Sha256::digest(&text))).unwrap();
        assert!(matches!(
            store.put(&text_hash, &text, BlobKind::Component),
            Err(BundleError::NotAComponent(_))
        ));
        store.put(&text_hash, &text, BlobKind::Data).unwrap();
        assert_eq!(store.get(&good).unwrap(), bytes);
    }

    #[test]
    fn concurrent_uploads_of_one_bundle_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BundleStore::open(dir.path().to_path_buf()).unwrap();
        let mut bytes = COMPONENT_HEADER.to_vec();
        bytes.extend(std::iter::repeat_n(7u8, 4 << 20));
        let hash = BundleHash::parse(&hex::encode(Sha256::digest(&bytes))).unwrap();
        // Data: the bytes are no component (a component's imports are read at upload).
        std::thread::scope(|s| {
            let a = s.spawn(|| store.put(&hash, &bytes, BlobKind::Data));
            let b = s.spawn(|| store.put(&hash, &bytes, BlobKind::Data));
            a.join().unwrap().unwrap();
            b.join().unwrap().unwrap();
        });
        assert_eq!(store.get(&hash).unwrap(), bytes);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "temporary files left behind");
    }
}
