//! State survives a hard kill: the dev process is killed with no chance to clean up, started again
//! on the same data dir, and the earlier tasks are still there with their final states.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use wasmos_tests::{DevCluster, text};

#[test]
fn tasks_survive_kill_dash_nine() {
    let mut c = DevCluster::start(1).unwrap();
    assert_eq!(
        c.run(&[], "exit-code", &["7"]).unwrap().status.code(),
        Some(7)
    );
    assert!(c.run(&[], "hello", &["before"]).unwrap().status.success());
    assert_eq!(
        c.run(&["--mem", "16MiB"], "hog", &[])
            .unwrap()
            .status
            .code(),
        Some(125)
    );
    let before = c.json(&["task", "list", "-o", "json"]).unwrap();

    c.kill_hard().unwrap();
    c.spawn().unwrap();

    let after = c.json(&["task", "list", "-o", "json"]).unwrap();
    assert_eq!(before, after, "task records changed across the restart");
    let after = after.as_array().unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(after[0]["status"]["exit_code"], 7);
    assert_eq!(after[1]["status"]["state"], "Finished");
    assert_eq!(after[2]["status"]["reason"], "MemoryLimit");
    // Output was kept too.
    let logs = c.cli(&["logs", "t-2"]).unwrap();
    assert!(text(&logs.stdout).contains("args: before"));

    // The cluster works after the restart, and task ids keep counting up.
    let out = c.run(&[], "hello", &["after"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = c.json(&["task", "show", "t-4", "-o", "json"]).unwrap();
    assert_eq!(shown["spec"]["args"][0], "after");
}
