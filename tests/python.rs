//! A real-world heavyweight: an ~18 MB Python component built with componentize-py (`cargo xtask
//! python-sample`, run by `cargo xtask test`) must get through the agent's compile bounds and
//! run, and a second run must come from the artifact cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use wasmos_tests::{DevCluster, text};

#[test]
fn a_componentize_py_component_compiles_within_the_bounds_and_runs() {
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-tasks/target/python/hello-py.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        wasm.display()
    );
    assert!(std::fs::metadata(&wasm).unwrap().len() > 10 << 20);
    let c = DevCluster::start(1).unwrap();
    let run = || {
        let mut cmd = c.cmd(&["run", "--mem", "256MiB", "--timeout", "120s"]);
        cmd.arg(&wasm).args(["--", "a", "b"]);
        let start = Instant::now();
        let out = cmd.output().unwrap();
        (out, start.elapsed())
    };
    let (first, cold) = run();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(stdout.contains("hello from python ['a', 'b']"), "{stdout}");
    assert!(
        stdout.contains("sum of squares below 100000: 333328333350000"),
        "{stdout}"
    );
    let (second, warm) = run();
    assert!(second.status.success(), "{}", text(&second.stderr));
    eprintln!("hello-py: first run {cold:?}, second run {warm:?}");
    assert!(warm < cold, "cached run {warm:?} not faster than {cold:?}");
}
