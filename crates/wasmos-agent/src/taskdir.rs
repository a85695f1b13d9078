//! A task's directory on the agent: its writable scratch space (preopened at `/`, holding the
//! unpacked `--mount` archives) and its read-only input files, created before the task starts
//! and deleted when it ends.
//!
//! Layout under `WORK_DIR/tasks/d-K/` (`t-N/`, named after the task, with
//! `--keep-task-dirs`): `root/` is the scratch space (the only part that counts against the
//! disk quota), `inputs/` mirrors the guest paths of the input files.
//!
//! An ended task's directory is emptied and kept in a pool for the next task: creating and
//! deleting two directories per task was most of an agent's CPU time with short tasks (ext4
//! searches its inode bitmap on every mkdir after many deletions), more than running them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmos_exec::{DiskQuota, Preopen};
use wasmos_proto::{TaskId, TaskSpec, guest_parent};

/// Most files and directories a task may have in its scratch space, whatever its quota: bounds
/// the cost of measuring it.
pub(crate) const MAX_ENTRIES: u64 = 100_000;

/// Why a task's directory could not be prepared. `OverQuota` is the task's own doing (its
/// mounts do not fit its disk quota); the rest are bad archives or agent-side I/O failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error("its mounts hold more than its {limit}-byte disk quota")]
    OverQuota { limit: u64 },
    #[error("mount {guest}: {message}")]
    BadArchive { guest: String, message: String },
    #[error("cannot prepare the task directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The top-level directory of a normalized guest file path (`/in` for `/in/map/0/x`).
pub(crate) fn input_root(guest: &str) -> &str {
    match guest[1..].find('/') {
        Some(i) => &guest[..i + 1],
        None => guest_parent(guest),
    }
}

/// The host directory under `root` that the normalized guest path `guest` maps to.
pub(crate) fn host_path(root: &Path, guest: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(guest.split('/').filter(|c| !c.is_empty()));
    p
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Most emptied task directories kept for reuse.
const MAX_POOLED: usize = 4096;

/// Emptied task directories (each holding only an empty `root/`), ready for the next task of
/// the same tenant. Only the same tenant's: a killed task's file operation already under way
/// on a blocking thread still holds the old directory's handle and could land in the next
/// task's scratch space, which must not be another tenant's (a deleted directory took no such
/// late write).
#[derive(Debug, Default)]
pub(crate) struct DirPool {
    free: Mutex<(usize, BTreeMap<String, Vec<PathBuf>>)>,
    next: AtomicU64,
}

/// Whose task directories may be handed to a task: its role's top level, the tenant (roles of
/// a tenant are within its name; operators' tasks share the empty key).
fn pool_key(spec: &TaskSpec) -> String {
    spec.role
        .as_deref()
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string()
}

impl DirPool {
    fn take(&self, parent: &Path, key: &str) -> (PathBuf, bool) {
        let pooled = {
            let mut free = self
                .free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (count, by_key) = &mut *free;
            let taken = by_key.get_mut(key).and_then(Vec::pop);
            if taken.is_some() {
                *count -= 1;
                if by_key.get(key).is_some_and(Vec::is_empty) {
                    by_key.remove(key);
                }
            }
            taken
        };
        match pooled {
            Some(p) => (p, true),
            // A directory an executor's task from this agent's earlier life still uses keeps
            // its name: new ones go around it.
            None => loop {
                let k = self.next.fetch_add(1, Ordering::Relaxed);
                let path = parent.join(format!("d-{k}"));
                if !path.exists() {
                    break (path, false);
                }
            },
        }
    }

    /// Keeps an emptied directory for `key`'s tasks; false if the pool is full.
    fn give(&self, path: PathBuf, key: &str) -> bool {
        let mut free = self
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (count, by_key) = &mut *free;
        if *count >= MAX_POOLED {
            return false;
        }
        *count += 1;
        by_key.entry(key.to_string()).or_default().push(path);
        true
    }
}

/// A prepared task directory; emptied and pooled (or deleted) on drop unless kept for
/// debugging.
#[derive(Debug)]
pub(crate) struct TaskDir {
    path: PathBuf,
    keep: bool,
    pool: Arc<DirPool>,
    pool_key: String,
}

impl TaskDir {
    /// The directory all of this agent's task directories live in.
    pub(crate) fn parent(work_dir: &Path) -> PathBuf {
        work_dir.join("tasks")
    }

    /// Creates (or takes from `pool`) the directory of `task`, unpacks `mounts` (archive
    /// bytes, in the spec's order) into its scratch space and writes `inputs` (file bytes, in
    /// the spec's order). Blocking.
    pub(crate) fn prepare(
        work_dir: &Path,
        task: TaskId,
        spec: &TaskSpec,
        mounts: &[Vec<u8>],
        inputs: &[Vec<u8>],
        keep: bool,
        pool: &Arc<DirPool>,
    ) -> Result<TaskDir, PrepareError> {
        let parent = Self::parent(work_dir);
        let pool_key = pool_key(spec);
        let (path, pooled) = if keep {
            (parent.join(task.to_string()), false)
        } else {
            pool.take(&parent, &pool_key)
        };
        // A directory left by an earlier life of this agent is stale: start clean.
        if !pooled && path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        let dir = TaskDir {
            path,
            keep,
            pool: pool.clone(),
            pool_key,
        };
        let root = dir.scratch();
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let mut budget = Budget {
            bytes_left: spec.resources.disk_bytes,
            entries_left: MAX_ENTRIES,
            limit: spec.resources.disk_bytes,
        };
        for (m, archive) in spec.mounts.iter().zip(mounts) {
            let dest = host_path(&root, &m.guest);
            std::fs::create_dir_all(&dest).map_err(io_err(&dest))?;
            unpack(archive, &dest, &mut budget).map_err(|e| match e {
                Unpack::Prepare(e) => e,
                Unpack::Bad(message) => PrepareError::BadArchive {
                    guest: m.guest.clone(),
                    message,
                },
            })?;
        }
        for (i, bytes) in spec.inputs.iter().zip(inputs) {
            let file = host_path(&dir.inputs(), &i.guest);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            std::fs::write(&file, bytes).map_err(io_err(&file))?;
        }
        Ok(dir)
    }

    fn scratch(&self) -> PathBuf {
        self.path.join("root")
    }

    fn inputs(&self) -> PathBuf {
        self.path.join("inputs")
    }

    /// What the guest sees: the scratch space at `/`, each mount at its own path (also inside
    /// the scratch space, as `wasmtime run --dir` would name it), and each input directory,
    /// read-only.
    pub(crate) fn preopens(&self, spec: &TaskSpec) -> Vec<Preopen> {
        let mut preopens = vec![Preopen {
            host: self.scratch(),
            guest: "/".to_string(),
            read_only: false,
        }];
        for m in spec.mounts.iter().filter(|m| m.guest != "/") {
            preopens.push(Preopen {
                host: host_path(&self.scratch(), &m.guest),
                guest: m.guest.clone(),
                read_only: false,
            });
        }
        // One read-only preopen per top-level input directory (`/in` for `/in/map/0/part-1`),
        // so a task can list the whole tree (a reducer reads `/in/map`).
        let mut dirs: Vec<&str> = spec.inputs.iter().map(|i| input_root(&i.guest)).collect();
        dirs.sort_unstable();
        dirs.dedup();
        for d in dirs {
            preopens.push(Preopen {
                host: host_path(&self.inputs(), d),
                guest: d.to_string(),
                read_only: true,
            });
        }
        preopens
    }

    /// A directory prepared by an earlier life of this agent, for a task its executor ran.
    pub(crate) fn adopt(
        path: PathBuf,
        keep: bool,
        pool: Arc<DirPool>,
        pool_key: String,
    ) -> TaskDir {
        TaskDir {
            path,
            keep,
            pool,
            pool_key,
        }
    }

    /// Where it is and which pool it goes back to: what [`TaskDir::adopt`] takes.
    pub(crate) fn parts(&self) -> (PathBuf, String) {
        (self.path.clone(), self.pool_key.clone())
    }

    /// The scratch space, where guest path `/` is.
    pub(crate) fn scratch_root(&self) -> PathBuf {
        self.scratch()
    }
}

/// The files under guest directory `guest` of the scratch space at `scratch`, as (path
/// relative to `guest`, `/`-separated; host path; size), sorted. A directory the task never
/// created holds nothing. Blocking; only once the task has ended (nothing changes them then).
///
/// The guest may have made symlinks (WASI allows relative ones): neither `guest` nor any
/// directory on the way to it may be one, and links inside are skipped, since the agent
/// reading through them would hand out host files outside the scratch space. Only regular
/// files count.
pub(crate) fn output_files(
    scratch: &Path,
    guest: &str,
) -> Result<Vec<(String, PathBuf, u64)>, String> {
    let mut root = scratch.to_path_buf();
    for part in guest.split('/').filter(|c| !c.is_empty()) {
        root.push(part);
        match std::fs::symlink_metadata(&root) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{guest} leads through a symbolic link; outputs must be plain files"
                ));
            }
            Ok(m) if !m.is_dir() => return Err(format!("{guest} is not a directory")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("cannot read {guest}: {e}")),
        }
    }
    {
        let mut out = Vec::new();
        let mut dirs = vec![(root.clone(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => break,
                Err(e) => return Err(format!("cannot read {guest}/{rel}: {e}")),
            };
            for entry in entries {
                let entry = entry.map_err(|e| format!("cannot read {guest}/{rel}: {e}"))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let kind = entry
                    .file_type()
                    .map_err(|e| format!("cannot read {guest}/{path}: {e}"))?;
                // `file_type` does not follow links: a link is neither, and is skipped.
                if kind.is_dir() {
                    dirs.push((entry.path(), path));
                } else if kind.is_file() {
                    let size = entry
                        .metadata()
                        .map_err(|e| format!("cannot read {guest}/{path}: {e}"))?
                        .len();
                    out.push((path, entry.path(), size));
                    if out.len() > wasmos_proto::MAX_OUTPUT_FILES {
                        return Err(format!(
                            "{guest} holds more than {} files",
                            wasmos_proto::MAX_OUTPUT_FILES
                        ));
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The file a task published by name (`put-file`) at guest path `guest`, opened for reading
/// in the scratch space at `scratch`, and its size. Blocking; only once the task has ended.
///
/// Like [`output_files`], nothing on the way may be a link (the agent would read a host file
/// outside the scratch space), each part must be a plain name on this host too (a Windows
/// drive or prefix is not one), and the file must be a regular file. The walk gives those
/// refusals their words; the open itself resolves beneath the scratch space and follows no
/// link, so a directory changed after the walk (a late write of a killed task of the same
/// tenant in a reused directory) still opens nothing outside it.
pub(crate) fn result_file(scratch: &Path, guest: &str) -> Result<(std::fs::File, u64), String> {
    let parts: Vec<&str> = guest.split('/').filter(|c| !c.is_empty()).collect();
    let mut at = scratch.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        let plain = matches!(
            Path::new(part).components().collect::<Vec<_>>()[..],
            [std::path::Component::Normal(_)]
        );
        if !plain {
            return Err(format!("{guest} is not a path in the task's filesystem"));
        }
        at.push(part);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{guest} does not exist"));
            }
            Err(e) => return Err(format!("cannot read {guest}: {e}")),
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!(
                "{guest} leads through a symbolic link; result files must be plain files"
            ));
        }
        if last && !meta.is_file() {
            return Err(format!("{guest} is not a regular file"));
        }
        if !last && !meta.is_dir() {
            return Err(format!("{guest} does not exist: {part} is a file"));
        }
    }
    if parts.is_empty() {
        return Err(format!("{guest} is not a file"));
    }
    use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
    let root = cap_std::fs::Dir::open_ambient_dir(scratch, cap_std::ambient_authority())
        .map_err(|e| format!("cannot open the task's scratch space: {e}"))?;
    let mut options = cap_std::fs::OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let relative: PathBuf = parts.iter().collect();
    let file = root
        .open_with(&relative, &options)
        .map_err(|e| format!("cannot open {guest}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {guest}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{guest} is not a regular file"));
    }
    Ok((file.into_std(), meta.len()))
}

impl TaskDir {
    pub(crate) fn quota(&self, spec: &TaskSpec) -> DiskQuota {
        DiskQuota {
            root: self.scratch(),
            max_bytes: spec.resources.disk_bytes,
            max_entries: MAX_ENTRIES,
        }
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Deletes everything in `dir`, leaving it empty. Links are deleted, never followed.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else if let Err(e) = std::fs::remove_file(entry.path()) {
            // On Windows a junction or a directory symlink is removed as a directory (the
            // link itself; `remove_dir` does not follow it).
            if !(cfg!(windows) && kind.is_symlink()) {
                return Err(e);
            }
            std::fs::remove_dir(entry.path())?;
        }
    }
    Ok(())
}

impl TaskDir {
    /// Leaves only an empty `root/` in the directory, to pool it.
    fn empty(&self) -> std::io::Result<()> {
        let inputs = self.inputs();
        if inputs.exists() {
            std::fs::remove_dir_all(&inputs)?;
        }
        empty_dir(&self.scratch())?;
        // Nothing else may be there for the next task to find.
        match std::fs::read_dir(&self.path)?.count() {
            1 => Ok(()),
            n => Err(std::io::Error::other(format!("{n} entries left"))),
        }
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        if self.keep {
            tracing::info!(dir = %self.path.display(), "keeping the task directory");
            return;
        }
        if self.empty().is_ok() && self.pool.give(self.path.clone(), &self.pool_key) {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), "cannot delete the task directory: {e}");
        }
    }
}

struct Budget {
    bytes_left: u64,
    entries_left: u64,
    limit: u64,
}

enum Unpack {
    Prepare(PrepareError),
    Bad(String),
}

impl From<std::io::Error> for Unpack {
    /// The tar reader's errors quote the bytes they choked on; the archive may not be a tar at
    /// all, so none of it goes into a message (status messages are shown to users).
    fn from(e: std::io::Error) -> Self {
        Unpack::Bad(format!(
            "not a tar archive of files and directories ({:?})",
            e.kind()
        ))
    }
}

/// An entry name as messages show it: at most 64 printable characters.
fn shown_name(rel: &Path) -> String {
    let s: String = rel
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect();
    s
}

/// Unpacks a tar archive of plain files and directories into `dest`. The archive comes from a
/// user, so every path must stay below `dest` (no `..`, no absolute paths) and nothing but files
/// and directories is accepted: a symlink could later lead a write outside the scratch space.
fn unpack(archive: &[u8], dest: &Path, budget: &mut Budget) -> Result<(), Unpack> {
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let rel = entry.path()?.into_owned();
        let shown = shown_name(&rel);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Unpack::Bad(format!(
                "archive entry `{shown}` leaves the mount directory"
            )));
        }
        budget.entries_left = budget
            .entries_left
            .checked_sub(1)
            .ok_or_else(|| Unpack::Bad(format!("more than {MAX_ENTRIES} files and directories")))?;
        // Counted as the quota counts it later, so what unpacks also fits at the first check.
        budget.bytes_left = budget
            .bytes_left
            .checked_sub(wasmos_exec::charged_bytes(entry.size()))
            .ok_or(Unpack::Prepare(PrepareError::OverQuota {
                limit: budget.limit,
            }))?;
        let target = dest.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target)
                    .map_err(|e| Unpack::Prepare(io_err(&target)(e)))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| Unpack::Prepare(io_err(parent)(e)))?;
                }
                let mut file = std::fs::File::create(&target)
                    .map_err(|e| Unpack::Prepare(io_err(&target)(e)))?;
                // `take` guards against an entry longer than its header says.
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut file)?;
                if copied != size {
                    return Err(Unpack::Bad(format!("archive entry `{shown}` is truncated")));
                }
            }
            other => {
                return Err(Unpack::Bad(format!(
                    "archive entry `{shown}` is a {other:?}: only files and directories can be mounted"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use wasmos_proto::{BundleHash, InputFile, Mount};

    #[cfg(unix)]
    #[test]
    fn result_files_are_plain_files_inside_the_scratch_space() {
        let scratch = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"key").unwrap();
        std::fs::create_dir_all(scratch.path().join("out/dir")).unwrap();
        std::fs::write(scratch.path().join("out/model.bin"), b"weights").unwrap();
        let (mut file, size) = result_file(scratch.path(), "/out/model.bin").unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
        assert_eq!((bytes, size), (b"weights".to_vec(), 7));
        std::os::unix::fs::symlink(outside.path(), scratch.path().join("up")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            scratch.path().join("out/link"),
        )
        .unwrap();
        for (guest, says) in [
            ("/up/secret", "symbolic link"),
            ("/out/link", "symbolic link"),
            ("/out/dir", "not a regular file"),
            ("/out/none", "does not exist"),
            ("/out/model.bin/x", "model.bin is a file"),
        ] {
            let err = result_file(scratch.path(), guest).unwrap_err();
            assert!(err.contains(says) && err.contains(guest), "{guest}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn outputs_never_follow_links_out_of_the_scratch_space() {
        let scratch = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"key").unwrap();
        let out = scratch.path().join("out");
        std::fs::create_dir_all(out.join("sub")).unwrap();
        std::fs::write(out.join("a.txt"), b"aa").unwrap();
        std::fs::write(out.join("sub/b.txt"), b"b").unwrap();
        std::os::unix::fs::symlink(outside.path(), out.join("link-dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), out.join("link-file")).unwrap();
        let files = output_files(scratch.path(), "/out").unwrap();
        let names: Vec<(&str, u64)> = files.iter().map(|(p, _, s)| (p.as_str(), *s)).collect();
        assert_eq!(names, [("a.txt", 2), ("sub/b.txt", 1)]);
        // The directory itself, or one on the way, a link: refused.
        std::os::unix::fs::symlink(outside.path(), scratch.path().join("up")).unwrap();
        let err = output_files(scratch.path(), "/up").unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::create_dir(outside.path().join("d")).unwrap();
        let err = output_files(scratch.path(), "/up/d").unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(
            output_files(scratch.path(), "/never-made")
                .unwrap()
                .is_empty()
        );
    }

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// An archive with one raw header, bypassing the builder's own path checks the way a
    /// hostile client would.
    fn raw_archive(path: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn spec(mounts: &[&str], inputs: &[&str], disk: u64) -> TaskSpec {
        let hash = BundleHash::from_digest(&[1; 32]);
        let mut s = TaskSpec::new("t", hash.clone());
        s.resources.disk_bytes = disk;
        s.mounts = mounts
            .iter()
            .map(|g| Mount {
                archive: hash.clone(),
                guest: g.to_string(),
            })
            .collect();
        s.inputs = inputs
            .iter()
            .map(|g| InputFile {
                blob: hash.clone(),
                guest: g.to_string(),
            })
            .collect();
        s
    }

    #[test]
    fn prepares_mounts_and_inputs_and_empties_everything_on_drop() {
        let work = tempfile::tempdir().unwrap();
        let s = spec(&["/data"], &["/in/a.txt"], 3 * 4096);
        let dir = TaskDir::prepare(
            work.path(),
            TaskId(7),
            &s,
            &[archive(&[("x/y.txt", b"hello")])],
            &[b"input".to_vec()],
            false,
            &Arc::new(DirPool::default()),
        )
        .unwrap();
        let root = dir.path().join("root");
        assert_eq!(std::fs::read(root.join("data/x/y.txt")).unwrap(), b"hello");
        let pre = dir.preopens(&s);
        assert_eq!(
            pre.iter()
                .map(|p| (p.guest.as_str(), p.read_only))
                .collect::<Vec<_>>(),
            [("/", false), ("/data", false), ("/in", true)]
        );
        assert_eq!(std::fs::read(pre[2].host.join("a.txt")).unwrap(), b"input");
        let path = dir.path().to_path_buf();
        drop(dir);
        // Emptied and kept for the next task: only an empty scratch space is left.
        let left: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["root"]);
        assert_eq!(std::fs::read_dir(path.join("root")).unwrap().count(), 0);
    }

    #[test]
    fn a_pooled_directory_holds_nothing_of_the_task_before() {
        let work = tempfile::tempdir().unwrap();
        let pool = Arc::new(DirPool::default());
        let s = spec(&["/data"], &["/in/a.txt"], 1 << 20);
        let first = TaskDir::prepare(
            work.path(),
            TaskId(1),
            &s,
            &[archive(&[("x/y.txt", b"hello")])],
            &[b"input".to_vec()],
            false,
            &pool,
        )
        .unwrap();
        // What a task may leave: files, nested directories, a link out of its sandbox.
        let root = first.scratch_root();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::write(root.join("a/b/c/f"), b"secret").unwrap();
        let outside = work.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let path = first.path().to_path_buf();
        drop(first);
        let plain = spec(&[], &[], 1 << 20);
        let second =
            TaskDir::prepare(work.path(), TaskId(2), &plain, &[], &[], false, &pool).unwrap();
        assert_eq!(second.path(), path, "the emptied directory is reused");
        assert_eq!(std::fs::read_dir(second.scratch_root()).unwrap().count(), 0);
        assert!(!second.path().join("inputs").exists());
        // The link was removed, not followed.
        assert!(outside.join("keep").exists());
        // Two at once get two directories.
        let third =
            TaskDir::prepare(work.path(), TaskId(3), &plain, &[], &[], false, &pool).unwrap();
        assert_ne!(third.path(), second.path());
        // Another tenant's task never gets a directory a task of this one had.
        let (second_path, third_path) = (second.path().to_path_buf(), third.path().to_path_buf());
        drop(second);
        drop(third);
        let mut other = spec(&[], &[], 1 << 20);
        other.role = Some("bob/etl".into());
        let theirs =
            TaskDir::prepare(work.path(), TaskId(4), &other, &[], &[], false, &pool).unwrap();
        assert_ne!(theirs.path(), second_path);
        assert_ne!(theirs.path(), third_path);
    }

    #[test]
    fn mounts_over_the_quota_are_refused_before_the_task_runs() {
        let work = tempfile::tempdir().unwrap();
        let err = TaskDir::prepare(
            work.path(),
            TaskId(1),
            &spec(&["/"], &[], 4096),
            &[archive(&[("big", &[0u8; 4097])])],
            &[],
            false,
            &Arc::new(DirPool::default()),
        )
        .unwrap_err();
        assert!(
            matches!(err, PrepareError::OverQuota { limit: 4096 }),
            "{err}"
        );
    }

    #[test]
    fn hostile_archives_are_refused_naming_the_entry() {
        let work = tempfile::tempdir().unwrap();
        let s = spec(&["/m"], &[], 1 << 20);
        let pool = Arc::new(DirPool::default());
        let prepare = |bytes: Vec<u8>| {
            TaskDir::prepare(work.path(), TaskId(2), &s, &[bytes], &[], false, &pool)
                .unwrap_err()
                .to_string()
        };
        let escape = prepare(raw_archive("../evil", tar::EntryType::Regular, None));
        assert!(escape.contains("`../evil` leaves the mount"), "{escape}");
        let link = prepare(raw_archive("l", tar::EntryType::Symlink, Some("/etc")));
        assert!(link.contains("only files and directories"), "{link}");
        let garbage = prepare(vec![7u8; 700]);
        assert!(garbage.starts_with("mount /m:"), "{garbage}");
        assert!(!work.path().join("evil").exists());
    }
}
