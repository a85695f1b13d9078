//! Latency of `wasmos run hello.wasm` end to end (a cached bundle, median of 20), as a ratio to
//! `wasmos agent list` (same process start, config load and QUIC + mTLS handshake, no task) run
//! in the same loop. Ignored by default; `cargo xtask bench` runs it and prints the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use wasmos_tests::DevCluster;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run with `cargo xtask bench`"]
fn run_hello_latency() {
    let c = DevCluster::start(1).unwrap();
    // Warm-up: uploads the bundle and compiles it once.
    assert!(c.run(&[], "hello", &[]).unwrap().status.success());
    let (mut runs, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        assert!(c.cli(&["agent", "list"]).unwrap().status.success());
        baseline.push(t.elapsed());
        let t = Instant::now();
        assert!(c.run(&[], "hello", &[]).unwrap().status.success());
        runs.push(t.elapsed());
    }
    let (run, base) = (median(runs), median(baseline));
    println!(
        "bench run_hello: median {:.1} ms over 20 runs (cached bundle)",
        run.as_secs_f64() * 1e3
    );
    println!(
        "bench baseline agent_list: median {:.1} ms",
        base.as_secs_f64() * 1e3
    );
    println!(
        "bench ratio run_hello / agent_list: {:.2}",
        run.as_secs_f64() / base.as_secs_f64()
    );
}
