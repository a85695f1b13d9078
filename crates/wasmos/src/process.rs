//! How the `wasmos` process lives and ends: the open-file limit daemons need, and waiting for
//! the signal to stop.

/// Tasks hold host descriptors (files, sockets), up to a cap each, so an agent needs more than
/// the usual soft limit of 1024: raise it to the hard limit.
pub(crate) fn raise_open_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
}

/// Runs until the process is asked to stop: Ctrl-C, or SIGTERM on Unix (what systemd,
/// launchd and `docker stop` send), or on Windows Ctrl-Break, the console closing or the system
/// shutting down. Daemons then stop their tasks and close their files, `wasmos dev`
/// its cluster, and `wasmos run` kills its task. Where no signal can be caught, runs until
/// killed.
pub(crate) async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { term.recv().await; },
                _ = term.recv() => {}
            }
            return;
        }
    }
    #[cfg(windows)]
    {
        // Not CTRL_LOGOFF_EVENT: a process run by a service wrapper gets it whenever any user
        // logs off, which is no reason to stop.
        use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
        if let (Ok(mut brk), Ok(mut close), Ok(mut shutdown)) =
            (ctrl_break(), ctrl_close(), ctrl_shutdown())
        {
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { std::future::pending::<()>().await },
                _ = brk.recv() => {}
                _ = close.recv() => {}
                _ = shutdown.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
