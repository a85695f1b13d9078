//! The crate dependency rules of ARCHITECTURE.md, checked against `cargo metadata`: pure cores
//! stay pure, each heavy runtime is reached through exactly one crate, dependencies point one way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Each workspace package's normal (non-dev) dependencies.
fn deps() -> BTreeMap<String, BTreeSet<String>> {
    let meta = metadata();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn internal_dependencies_follow_the_table() {
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("wasmos-proto", &[][..]),
        ("wasmos-alloc", &["wasmos-proto"][..]),
        ("wasmos-state", &["wasmos-proto", "wasmos-alloc"][..]),
        ("wasmos-sim", &["wasmos-proto", "wasmos-alloc"][..]),
        ("wasmos-net", &["wasmos-proto"][..]),
        ("wasmos-exec", &["wasmos-proto"][..]),
        (
            "wasmos-raft",
            &["wasmos-proto", "wasmos-state", "wasmos-net"][..],
        ),
        (
            "wasmos-master",
            &[
                "wasmos-proto",
                "wasmos-alloc",
                "wasmos-state",
                "wasmos-net",
                "wasmos-raft",
                "wasmos-sdk",
                "wasmos-jobs",
            ][..],
        ),
        ("wasmos-jobs", &["wasmos-proto", "wasmos-sdk"][..]),
        (
            "wasmos-web",
            &["wasmos-proto", "wasmos-net", "wasmos-master"][..],
        ),
        ("wasmos-sdk", &["wasmos-proto", "wasmos-net"][..]),
        ("wasmos-client", &["wasmos-proto", "wasmos-net"][..]),
        (
            "wasmos-agent",
            &["wasmos-proto", "wasmos-net", "wasmos-exec"][..],
        ),
    ]);
    let deps = deps();
    for (krate, list) in &deps {
        if !krate.starts_with("wasmos-") || krate == "wasmos-tests" {
            continue;
        }
        let rules = allowed
            .get(krate.as_str())
            .unwrap_or_else(|| panic!("{krate} is not in the dependency table; add it"));
        for d in list.iter().filter(|d| d.starts_with("wasmos")) {
            assert!(rules.contains(&d.as_str()), "{krate} may not depend on {d}");
        }
    }
}

#[test]
fn pure_cores_and_single_gateways() {
    let deps = deps();
    let forbidden_in_cores = [
        "tokio", "quinn", "rustls", "wasmtime", "openraft", "redb", "axum", "futures",
    ];
    for core in ["wasmos-proto", "wasmos-alloc", "wasmos-state", "wasmos-sim"] {
        for f in forbidden_in_cores {
            assert!(
                !deps[core].contains(f),
                "{core} must stay pure but depends on {f}"
            );
        }
    }
    let gateways = [
        ("quinn", "wasmos-net"),
        ("rustls", "wasmos-net"),
        ("tokio-rustls", "wasmos-net"),
        ("wasmtime", "wasmos-exec"),
        ("wasmtime-wasi", "wasmos-exec"),
        ("openraft", "wasmos-raft"),
        ("redb", "wasmos-raft"),
        ("axum", "wasmos-web"),
        ("hyper", "wasmos-web"),
    ];
    for (dep, only) in gateways {
        for (krate, list) in &deps {
            if list.contains(dep) {
                assert_eq!(krate, only, "only {only} may use {dep}, but {krate} does");
            }
        }
    }
}
