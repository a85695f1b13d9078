//! The task's private filesystem: which host directories it sees (its scratch directory and any
//! read-only inputs), and the disk quota on what it writes, measured by walking its scratch
//! directory from the epoch callback.
//!
//! wasmtime-wasi offers no hook on file writes, and writes reach files through generic output
//! streams too, so the quota is enforced by measuring rather than by refusing individual writes:
//! every [`CHECK_EVERY`] while the guest runs and once more when it ends.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often, at most, the epoch callback measures a task's scratch directory. A task can
/// overshoot its quota by what it writes in this window before it is stopped.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(50);

/// The unit disk use is counted in, like a filesystem block: a file takes its length rounded up
/// to it, and every directory, link and empty file takes one, so a flood of empty files uses up
/// the quota as it would use up a real disk's inodes and blocks.
pub const DISK_BLOCK: u64 = 4096;

/// The bytes an entry of `len` bytes is charged with.
pub fn charged_bytes(len: u64) -> u64 {
    len.div_ceil(DISK_BLOCK).max(1).saturating_mul(DISK_BLOCK)
}

/// One host directory the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    /// Absolute guest path, e.g. `/` or `/data`.
    pub guest: String,
    pub read_only: bool,
}

/// Limits on what a task may store in its scratch directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskQuota {
    /// The directory measured: everything the task can write lives under it.
    pub root: PathBuf,
    /// Total size of what is under `root`, counted as [`charged_bytes`] per entry (by length,
    /// so a sparse file counts in full).
    pub max_bytes: u64,
    /// Files, directories and links under `root`, which bounds inode use and the cost of
    /// measuring.
    pub max_entries: u64,
}

/// What a measurement found over the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overrun {
    Bytes { used: u64, limit: u64 },
    Entries { limit: u64 },
}

impl Overrun {
    pub(crate) fn message(&self) -> String {
        match self {
            Overrun::Bytes { used, limit } => {
                format!(
                    "uses at least {used} bytes of its scratch directory (in {DISK_BLOCK}-byte blocks), over its {limit}-byte disk quota"
                )
            }
            Overrun::Entries { limit } => {
                format!("created more than {limit} files and directories in its scratch directory")
            }
        }
    }
}

/// Bytes and entries under `root`, without following symbolic links; stops counting as soon as
/// a limit is passed. Entries that vanish while walking are skipped (the guest may be deleting
/// them); any other I/O error counts as nothing found there.
pub(crate) fn measure(quota: &DiskQuota) -> Option<Overrun> {
    let mut bytes: u64 = 0;
    let mut entries: u64 = 0;
    let mut stack = vec![quota.root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            entries += 1;
            if entries > quota.max_entries {
                return Some(Overrun::Entries {
                    limit: quota.max_entries,
                });
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            let len = if meta.is_file() { meta.len() } else { 0 };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            bytes = bytes.saturating_add(charged_bytes(len));
            if bytes > quota.max_bytes {
                return Some(Overrun::Bytes {
                    used: bytes,
                    limit: quota.max_bytes,
                });
            }
        }
    }
    None
}

/// Decides when the next measurement is due, so that a busy guest is not measured on every
/// epoch tick.
#[derive(Debug)]
pub(crate) struct DiskWatch {
    quota: DiskQuota,
    next_at: Instant,
    overrun: Option<Overrun>,
}

impl DiskWatch {
    pub(crate) fn new(quota: DiskQuota, now: Instant) -> Self {
        DiskWatch {
            quota,
            next_at: now,
            overrun: None,
        }
    }

    /// Measures if a measurement is due; returns the overrun that must stop the task.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Option<Overrun> {
        if now < self.next_at {
            return None;
        }
        self.next_at = now + CHECK_EVERY;
        self.check()
    }

    pub(crate) fn check(&mut self) -> Option<Overrun> {
        if self.overrun.is_none() {
            self.overrun = measure(&self.quota);
        }
        self.overrun
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn measures_nested_files_and_counts_entries() {
        let dir = tempfile::tempdir().unwrap();
        let quota = |max_bytes, max_entries| DiskQuota {
            root: dir.path().to_path_buf(),
            max_bytes,
            max_entries,
        };
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 1000]).unwrap();
        std::fs::write(dir.path().join("g"), vec![1u8; 5000]).unwrap();
        // 4 entries (a, a/b, a/b/f, g): three of one block, g of two.
        assert_eq!(measure(&quota(5 * DISK_BLOCK, 4)), None);
        assert!(matches!(
            measure(&quota(5 * DISK_BLOCK - 1, 4)),
            Some(Overrun::Bytes { .. })
        ));
        assert_eq!(
            measure(&quota(5 * DISK_BLOCK, 3)),
            Some(Overrun::Entries { limit: 3 })
        );
        // A sparse file counts at its full length.
        let f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.set_len(1 << 40).unwrap();
        assert!(matches!(
            measure(&quota(1 << 30, 100)),
            Some(Overrun::Bytes { .. })
        ));
    }

    #[test]
    fn the_watch_measures_at_most_every_interval_and_remembers_an_overrun() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut w = DiskWatch::new(
            DiskQuota {
                root: dir.path().to_path_buf(),
                max_bytes: 10,
                max_entries: 10,
            },
            t0,
        );
        assert_eq!(w.on_tick(t0), None);
        std::fs::write(dir.path().join("f"), [0u8; 11]).unwrap();
        // Not due yet: the write goes unnoticed until the interval has passed.
        assert_eq!(w.on_tick(t0 + CHECK_EVERY / 2), None);
        assert!(w.on_tick(t0 + CHECK_EVERY).is_some());
        std::fs::remove_file(dir.path().join("f")).unwrap();
        assert!(w.check().is_some(), "an overrun sticks");
    }
}
