//! Files only their owner may read: keys, the replicated state, task logs. Created with the
//! restrictive mode from the start, never widened later, so no other user can open them in
//! between.

use std::io::Write;
use std::path::Path;

/// Creates (or truncates) `path` with mode 0600 on Unix and writes `bytes`. On Windows the file
/// inherits the per-user ACL of its directory (the data dir under `%LOCALAPPDATA%`).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    restrict(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Creates `dir` and its missing parents; `dir` itself ends up mode 0700 on Unix.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Narrows an existing file to mode 0600 on Unix (a file created before this rule).
pub fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
