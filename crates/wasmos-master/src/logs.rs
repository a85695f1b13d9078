//! Task output on the master's disk: one append-only file per task of `(stream, length, bytes)`
//! records, plus a change counter that wakes `wasmos logs -f` watchers.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::watch;
use wasmos_proto::{OutputStream, TaskId};

pub(crate) struct LogStore {
    dir: PathBuf,
    /// Serializes appends so records never interleave.
    write_lock: Mutex<()>,
    changes: watch::Sender<u64>,
    /// Bytes of log on this master's disk by tenant: what counts against a tenant's storage
    /// quota next to its blobs. Kept up to date by appends, and counted again from the files
    /// at each sweep (and so after a restart).
    usage: Mutex<HashMap<String, u64>>,
}

const HEADER: usize = 5;

/// Most bytes one read takes from a log: what a reader of even a huge log costs in memory.
pub(crate) const READ_CHUNK: u64 = 256 << 10;

/// Output chunks in the order they were written.
pub(crate) type Records = Vec<(OutputStream, Vec<u8>)>;

impl LogStore {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        wasmos_net::create_private_dir(&dir)?;
        Ok(LogStore {
            dir,
            write_lock: Mutex::new(()),
            changes: watch::channel(0).0,
            usage: Mutex::default(),
        })
    }

    fn path(&self, task: TaskId) -> PathBuf {
        self.dir.join(format!("{task}.log"))
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes of log held for `tenant`'s tasks.
    pub fn used_by(&self, tenant: &str) -> u64 {
        self.usage().get(tenant).copied().unwrap_or(0)
    }

    /// Appends one chunk of a task of `tenant` (`None`: an operator's); returns the bytes of
    /// output now stored for the task.
    pub fn append(
        &self,
        task: TaskId,
        tenant: Option<&str>,
        stream: OutputStream,
        data: &[u8],
    ) -> std::io::Result<u64> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(self.path(task))?;
        let mut rec = Vec::with_capacity(HEADER + data.len());
        rec.push(match stream {
            OutputStream::Stdout => 1,
            OutputStream::Stderr => 2,
        });
        rec.extend_from_slice(&(data.len() as u32).to_be_bytes());
        rec.extend_from_slice(data);
        f.write_all(&rec)?;
        let len = f.metadata()?.len();
        drop(_guard);
        if let Some(t) = tenant {
            *self.usage().entry(t.to_string()).or_default() += rec.len() as u64;
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(len)
    }

    /// Size of the task's log file, records included.
    pub fn len(&self, task: TaskId) -> u64 {
        std::fs::metadata(self.path(task)).map_or(0, |m| m.len())
    }

    /// Complete records from byte `offset` on, at most about [`READ_CHUNK`] bytes of them, and
    /// the offset just after the last one: call again from there for the rest. A torn record
    /// at the end (a crash mid-append) is left for a later read, never misparsed.
    pub fn read_from(&self, task: TaskId, offset: u64) -> std::io::Result<(Records, u64)> {
        let mut f = match std::fs::File::open(self.path(task)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], offset)),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        (&mut f).take(READ_CHUNK).read_to_end(&mut buf)?;
        // A record larger than a chunk (agents send at most 64 KiB, so only a damaged file):
        // read that whole record rather than never progressing.
        if buf.len() >= HEADER {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as u64;
            let need = HEADER as u64 + len;
            if need > buf.len() as u64 && need > READ_CHUNK {
                (&mut f)
                    .take(need.min(16 << 20) - buf.len() as u64)
                    .read_to_end(&mut buf)?;
            }
        }
        let mut out = Vec::new();
        let mut pos = 0usize;
        while buf.len() - pos >= HEADER {
            let stream = match buf[pos] {
                2 => OutputStream::Stderr,
                _ => OutputStream::Stdout,
            };
            let mut len = [0u8; 4];
            len.copy_from_slice(&buf[pos + 1..pos + HEADER]);
            let len = u32::from_be_bytes(len) as usize;
            if buf.len() - pos - HEADER < len {
                break;
            }
            out.push((stream, buf[pos + HEADER..pos + HEADER + len].to_vec()));
            pos += HEADER + len;
        }
        Ok((out, offset + pos as u64))
    }

    /// Removes the logs of tasks `keep` says no to, and counts again what each tenant holds
    /// (`tenant_of` names a task's tenant); returns how many logs went.
    pub fn sweep(
        &self,
        keep: impl Fn(TaskId) -> bool,
        tenant_of: impl Fn(TaskId) -> Option<String>,
    ) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        let mut usage: HashMap<String, u64> = HashMap::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<TaskId>().ok())
            else {
                continue;
            };
            if !keep(id) {
                if std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            } else if let Some(t) = tenant_of(id) {
                *usage.entry(t).or_default() += e.metadata().map_or(0, |m| m.len());
            }
        }
        // Appends between the scan and now are lost from the count until the next sweep: a
        // few chunks' worth, on a quota of gigabytes.
        *self.usage() = usage;
        removed
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back_in_order_and_ignores_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path().to_path_buf()).unwrap();
        let t = TaskId(1);
        logs.append(t, None, OutputStream::Stdout, b"one").unwrap();
        let mid = logs.append(t, None, OutputStream::Stderr, b"two").unwrap();
        let (recs, end) = logs.read_from(t, 0).unwrap();
        assert_eq!(
            recs,
            vec![
                (OutputStream::Stdout, b"one".to_vec()),
                (OutputStream::Stderr, b"two".to_vec())
            ]
        );
        assert_eq!(end, mid);
        // A torn record: header promising more bytes than are there.
        let mut f = OpenOptions::new().append(true).open(logs.path(t)).unwrap();
        f.write_all(&[1, 0, 0, 0, 9, b'x']).unwrap();
        let (recs, end2) = logs.read_from(t, end).unwrap();
        assert!(recs.is_empty());
        assert_eq!(end2, end);
        assert_eq!(logs.read_from(TaskId(9), 0).unwrap().0, vec![]);
    }

    #[test]
    fn huge_logs_are_read_a_chunk_at_a_time_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path().to_path_buf()).unwrap();
        let t = TaskId(3);
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..40 {
            logs.append(t, None, OutputStream::Stdout, &chunk).unwrap();
        }
        let (mut offset, mut total, mut reads) = (0, 0, 0);
        loop {
            let (recs, next) = logs.read_from(t, offset).unwrap();
            if recs.is_empty() {
                break;
            }
            let bytes: usize = recs.iter().map(|(_, d)| d.len()).sum();
            assert!(bytes as u64 <= READ_CHUNK, "one read took {bytes}");
            total += bytes;
            reads += 1;
            offset = next;
        }
        assert_eq!(total, 40 * (64 << 10));
        assert!(reads >= 10, "{reads} reads");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(logs.path(t))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        logs.append(TaskId(4), None, OutputStream::Stdout, b"keep")
            .unwrap();
        assert_eq!(logs.sweep(|id| id == TaskId(4), |_| None), 1);
        assert_eq!(logs.len(t), 0);
        assert!(logs.len(TaskId(4)) > 0);
    }

    #[test]
    fn each_tenant_is_charged_for_its_logs_and_a_sweep_counts_again() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(dir.path().to_path_buf()).unwrap();
        logs.append(TaskId(1), Some("acme"), OutputStream::Stdout, &[0; 100])
            .unwrap();
        logs.append(TaskId(2), Some("evil"), OutputStream::Stderr, &[0; 10])
            .unwrap();
        logs.append(TaskId(3), None, OutputStream::Stdout, &[0; 1000])
            .unwrap();
        assert_eq!(logs.used_by("acme"), 100 + HEADER as u64);
        assert_eq!(logs.used_by("evil"), 10 + HEADER as u64);
        // As after a restart: the count comes from the files, and what is swept is not charged.
        let again = LogStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(again.used_by("acme"), 0);
        let tenant = |id: TaskId| match id.0 {
            1 => Some("acme".to_string()),
            2 => Some("evil".to_string()),
            _ => None,
        };
        assert_eq!(again.sweep(|id| id != TaskId(2), tenant), 1);
        assert_eq!(again.used_by("acme"), 100 + HEADER as u64);
        assert_eq!(again.used_by("evil"), 0);
    }
}
