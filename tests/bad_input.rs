//! Bad input gets one clear error line and a non-zero exit, never a panic or a hang, and the
//! cluster keeps running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use wasmos_tests::{DevCluster, assert_clean_error, sample, text};

#[test]
fn bad_components_ids_and_configs_are_clear_errors() {
    let mut c = DevCluster::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run_file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        c.cmd(&["run"]).arg(&path).output().unwrap()
    };

    assert_clean_error(
        &run_file("notes.wasm", b"just some text"),
        "not a WebAssembly",
    );
    let hello = std::fs::read(sample("hello")).unwrap();
    assert_clean_error(
        &run_file("truncated.wasm", &hello[..hello.len() / 2]),
        "truncated.wasm",
    );
    // The smallest core module: magic + version 1.
    assert_clean_error(
        &run_file("core.wasm", &[0, b'a', b's', b'm', 1, 0, 0, 0]),
        "core WebAssembly module",
    );
    assert_clean_error(&run_file("empty.wasm", b""), "empty.wasm");
    assert_clean_error(
        &c.cmd(&["run"])
            .arg(dir.path().join("absent.wasm"))
            .output()
            .unwrap(),
        "cannot read",
    );

    assert_clean_error(&c.cli(&["task", "show", "t-999"]).unwrap(), "no task t-999");
    assert_clean_error(&c.cli(&["logs", "t-999"]).unwrap(), "no task t-999");
    assert_clean_error(
        &c.cli(&["task", "show", "banana"]).unwrap(),
        "not a task id",
    );

    let missing = dir.path().join("missing.toml");
    let out = wasmos_tests::wasmos_with(&missing, &["task", "list"]);
    assert_clean_error(&out, "no client config");

    // A config pointing at an address where nothing listens: a bounded wait, then one line.
    let cfg = std::fs::read_to_string(c.config()).unwrap();
    let dead = dir.path().join("dead.toml");
    let pki = c.dir.path().join("pki");
    let cfg = cfg
        .lines()
        .map(|l| {
            if l.starts_with("master") {
                "master = \"127.0.0.1:9\"".to_string()
            } else if let Some((k, v)) = l.split_once(" = \"pki") {
                format!("{k} = \"{}{}", pki.display(), v)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&dead, cfg).unwrap();
    let started = Instant::now();
    let out = wasmos_tests::wasmos_with(&dead, &["task", "list"]);
    assert_clean_error(&out, "127.0.0.1:9");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Bad flags.
    assert_clean_error(
        &c.cmd(&["run", "--mem", "lots"])
            .arg(sample("hello"))
            .output()
            .unwrap(),
        "not a byte size",
    );

    // Still serving.
    assert!(c.is_running());
    let out = c.run(&[], "hello", &[]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!c.log_text().contains("panicked"), "{}", c.log_text());
}
