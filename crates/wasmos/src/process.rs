//! How the `wasmos` process lives and ends: the open-file limit daemons need, and waiting for
//! Ctrl-C.

/// Tasks hold host descriptors (files, sockets), up to a cap each, so an agent needs more than
/// the usual soft limit of 1024: raise it to the hard limit.
pub(crate) fn raise_open_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
}

/// Runs until Ctrl-C (or forever where signals cannot be caught): how daemons and `wasmos dev`
/// wait, and how `wasmos run` learns to kill its task.
pub(crate) async fn wait_for_ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling on this platform: run until killed.
        std::future::pending::<()>().await;
    }
}
