//! Build and test tooling, so the README's commands work on a fresh machine with only rustup:
//! `cargo xtask demo`, `cargo xtask test`, `cargo xtask lint`, `cargo xtask check-windows`,
//! `cargo xtask samples`, `cargo xtask bench`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";
const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// rustup on some machines does not install the targets rust-toolchain.toml lists.
fn ensure_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .context("cannot run rustup (needed to add the wasm32-wasip2 target)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", target]))
}

fn samples() -> Result<()> {
    ensure_target(WASM_TARGET)?;
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--target",
        WASM_TARGET,
        "--manifest-path",
        "sample-tasks/Cargo.toml",
    ]))
}

/// componentize-py, pinned: it embeds its own CPython and WASI adapter, so a new release can
/// change what the Python sample imports.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Builds `sample-tasks/python/app.py` into an ~18 MB component with componentize-py,
/// installed from PyPI into a venv under target/. The WASI WIT it targets is the one wasmtime-wasi
/// ships (found through `cargo metadata`), so the component imports exactly what agents link.
fn python_sample() -> Result<()> {
    let root = root();
    let out = root.join("sample-tasks/target/python/hello-py.wasm");
    let app = root.join("sample-tasks/python/app.py");
    let fresh = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(src)) = (fresh(&out), fresh(&app))
        && built >= src
    {
        return Ok(());
    }
    let venv = root.join("target/componentize-py");
    let tool = venv.join("bin/componentize-py");
    if !tool.is_file() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
    }
    let meta = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(&root)
        .output()
        .context("cannot run cargo metadata")?;
    let meta = String::from_utf8_lossy(&meta.stdout);
    // The manifest path of wasmtime-wasi, without a JSON parser: `"manifest_path":"…/wasmtime-wasi-X/Cargo.toml"`.
    let wit = meta
        .split("\"manifest_path\":\"")
        .filter_map(|s| s.split('"').next())
        .find(|p| p.contains("/wasmtime-wasi-") && p.ends_with("/Cargo.toml"))
        .map(|p| std::path::PathBuf::from(p.trim_end_matches("Cargo.toml")).join("src/p2/wit"))
        .context("wasmtime-wasi is not in cargo metadata")?;
    std::fs::create_dir_all(out.parent().context("no parent")?)?;
    run(Command::new(&tool)
        .arg("-d")
        .arg(&wit)
        .args(["-w", "wasi:cli/command@0.2.12", "componentize", "-p"])
        .arg(root.join("sample-tasks/python"))
        .args(["app", "-o"])
        .arg(&out))
}

/// The version of a package in the workspace's Cargo.lock.
fn locked_version(package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    let wanted = format!("name = \"{package}\"");
    while let Some(line) = lines.next() {
        if line == wanted
            && let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return Ok(v.trim_end_matches('"').to_string());
        }
    }
    bail!("{package} is not in Cargo.lock")
}

/// Installs the `wasmtime` CLI of the version the workspace links, into
/// `target/tools/wasmtime-VERSION`, for the WASI fidelity test. Only `run` and what it needs
/// are built, which takes a fraction of a full install; an existing install is kept.
fn wasmtime_cli() -> Result<()> {
    let version = locked_version("wasmtime")?;
    let dir = root().join(format!("target/tools/wasmtime-{version}"));
    if dir.join("bin/wasmtime").is_file() {
        return Ok(());
    }
    run(cargo()
        .args(["install", "--locked", "--no-default-features"])
        .args(["--features", "run,cranelift,component-model,clap/default"])
        .arg(format!("wasmtime-cli@{version}"))
        .arg("--root")
        .arg(&dir)
        .arg("--target-dir")
        .arg(root().join("target/wasmtime-cli-build")))
}

fn samples_dir() -> String {
    format!("sample-tasks/target/{WASM_TARGET}/release")
}

/// Runs the workspace tests, echoing their output, and closes with one line totalling every
/// test binary's results (cargo prints one summary per binary, the last often a doc-test run
/// with nothing in it).
fn test(extra: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--locked", "--workspace"])
        .args(extra)
        .current_dir(root())
        .stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if let Some(summary) = line.strip_prefix("test result: ") {
                for part in summary.split(['.', ';']) {
                    let mut words = part.split_whitespace();
                    if let (Some(n), Some(what)) = (words.next(), words.next()) {
                        let n: u64 = n.parse().unwrap_or(0);
                        match what {
                            "passed" => passed += n,
                            "failed" => failed += n,
                            "ignored" => ignored += n,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("samples") => samples(),
        Some("demo") => {
            samples()?;
            let data = root().join("target").join("wasmos-demo");
            let _ = std::fs::remove_dir_all(&data);
            run(cargo()
                .args([
                    "run",
                    "--release",
                    "--locked",
                    "-p",
                    "wasmos",
                    "--",
                    "dev",
                    "--demo",
                ])
                .args(["--listen", "127.0.0.1:0", "--demo-dir", &samples_dir()])
                .arg("--data-dir")
                .arg(&data))
        }
        Some("python-sample") => python_sample(),
        Some("wasmtime-cli") => wasmtime_cli(),
        Some("test") => {
            samples()?;
            python_sample()?;
            wasmtime_cli()?;
            // The example framework too: a test runs it as a process.
            run(cargo().args([
                "build",
                "--release",
                "--locked",
                "-p",
                "wasmos",
                "--bins",
                "--examples",
            ]))?;
            test(&rest)
        }
        Some("lint") => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--release",
                "--locked",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }
        Some("check-windows") => {
            ensure_target(WINDOWS_TARGET)?;
            run(cargo().args([
                "check",
                "--release",
                "--locked",
                "--workspace",
                "--exclude",
                "xtask",
                "--target",
                WINDOWS_TARGET,
            ]))
        }
        Some("bench") => {
            samples()?;
            run(cargo().args(["build", "--release", "--locked", "-p", "wasmos"]))?;
            // Wasmos against Ray (installed from PyPI into target/bench-venv) on the same
            // workloads in the same run; `cargo xtask bench compare` runs only this. Last in a
            // full run, so a machine without PyPI still gets every other figure.
            let compare =
                || run(Command::new("python3").arg(root().join("bench").join("compare.py")));
            if args.get(1).map(String::as_str) == Some("compare") {
                return compare();
            }
            run(cargo().args([
                "bench",
                "--locked",
                "-p",
                "wasmos-exec",
                "--bench",
                "sandbox",
            ]))?;
            run(cargo().args([
                "bench",
                "--locked",
                "-p",
                "wasmos-alloc",
                "--bench",
                "cycle",
            ]))?;
            run(cargo()
                .args([
                    "test",
                    "--release",
                    "--locked",
                    "-p",
                    "wasmos-tests",
                    "--test",
                    "bench",
                ])
                // One at a time: each measures against a baseline of its own, on a quiet machine.
                .args(["--", "--ignored", "--nocapture", "--test-threads=1"]))?;
            compare()
        }
        _ => bail!(
            "usage: cargo xtask <demo|test|lint|check-windows|samples|python-sample|wasmtime-cli|bench> [args for cargo test]"
        ),
    }
}
