//! Compilation on agents: in a child process with a memory and time limit, cached on disk
//! across agent restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use wasmos_tests::{DevCluster, text};

fn artifacts(c: &DevCluster) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(c.agent_dir(1).join("artifacts"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn artifacts_are_cached_on_disk_and_survive_a_restart() {
    let mut c = DevCluster::start(1).unwrap();
    let out = c.run(&[], "hello", &["one"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cached = artifacts(&c);
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));
    let before = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();

    // After a restart the agent loads the artifact instead of compiling again.
    c.kill_hard().unwrap();
    c.spawn().unwrap();
    let out = c.run(&[], "hello", &["two"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("args: two"));
    assert_eq!(artifacts(&c), cached);
    let after = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    assert_eq!(before, after, "the artifact was rewritten");

    // A damaged artifact is not trusted: it is rebuilt and the task still runs.
    c.kill_hard().unwrap();
    std::fs::write(&cached[0], b"not an artifact").unwrap();
    c.spawn().unwrap();
    let out = c.run(&[], "hello", &["three"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&cached[0]).unwrap().len() > 1000);
}

#[test]
fn compilation_is_bounded_in_memory_and_time() {
    let c = DevCluster::start_with(1, &["--compile-memory", "16MiB"]).unwrap();
    let out = c.run(&[], "hello", &[]).unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("(invalid_bundle)"), "{err}");
    assert!(
        err.contains("needed more than 16777216 bytes of memory"),
        "{err}"
    );
    assert!(c.log_text().lines().all(|l| !l.contains("panicked")));

    let c = DevCluster::start_with(1, &["--compile-timeout", "1ms"]).unwrap();
    let out = c.run(&[], "json", &[]).unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("took longer than 1ms"),
        "{}",
        text(&out.stderr)
    );
}
