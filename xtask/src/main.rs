//! Build and test tooling, so the README's commands work on a fresh machine with only rustup:
//! `cargo xtask demo`, `cargo xtask test`, `cargo xtask lint`, `cargo xtask check-windows`,
//! `cargo xtask samples`, `cargo xtask windows`, `cargo xtask windows-unit-tests`,
//! `cargo xtask check-macos`, `cargo xtask dist`, `cargo xtask bench`.

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

/// Builds the Python samples into ~18 MB components with componentize-py, installed from PyPI
/// into a venv under target/: `sample-tasks/python` as a plain WASI command against the WASI WIT
/// wasmtime-wasi ships (found through `cargo metadata`, so it imports exactly what agents link),
/// and `sample-tasks/python-platform` against the world `wasmos:task/task` (`target/wit`, made
/// by `wit()`). Each is rebuilt only when its source is newer.
fn python_sample() -> Result<()> {
    let root = root();
    let venv = root.join("target/componentize-py");
    let tool = venv.join("bin/componentize-py");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let builds = [
        (
            "python",
            "hello-py.wasm",
            wasi_wit()?,
            "wasi:cli/command@0.2.12",
        ),
        (
            "python-platform",
            "platform-py.wasm",
            wit()?,
            "wasmos:task/task",
        ),
    ];
    for (dir, name, wit, world) in builds {
        let out = root.join("sample-tasks/target/python").join(name);
        let app = root.join("sample-tasks").join(dir).join("app.py");
        // The platform sample's bindings come from wit/ too.
        let sources = [app, root.join("wit/task.wit"), root.join("wit/command.wit")];
        let newest = sources.iter().filter_map(|p| fresh(p)).max();
        if let (Some(built), Some(src)) = (fresh(&out), newest)
            && built >= src
        {
            continue;
        }
        if !tool.is_file() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
            run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
        }
        std::fs::create_dir_all(out.parent().context("no parent")?)?;
        run(Command::new(&tool)
            .arg("-d")
            .arg(&wit)
            .args(["-w", world, "componentize", "-p"])
            .arg(root.join("sample-tasks").join(dir))
            .args(["app", "-o"])
            .arg(&out))?;
    }
    Ok(())
}

/// componentize-js, pinned, from npm (calling its own CLI: `jco componentize` 1.35 fails where
/// it works).
const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// Builds `sample-tasks/js-platform/app.js` into a ~14 MB component with componentize-js,
/// installed from npm under target/, against the world `wasmos:task/task` (`target/wit`).
/// Without `-d http -d fetch-event` it would import `wasi:http`, which agents do not provide.
fn js_sample() -> Result<()> {
    let root = root();
    let out = root.join("sample-tasks/target/js/platform-js.wasm");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let app = root.join("sample-tasks/js-platform/app.js");
    let sources = [
        app.clone(),
        root.join("wit/task.wit"),
        root.join("wit/command.wit"),
    ];
    let newest = sources.iter().filter_map(|p| fresh(p)).max();
    if let (Some(built), Some(src)) = (fresh(&out), newest)
        && built >= src
    {
        return Ok(());
    }
    let prefix = root.join("target/componentize-js");
    let tool = prefix.join("node_modules/.bin/componentize-js");
    if !tool.is_file() {
        std::fs::create_dir_all(&prefix).context("creating target/componentize-js")?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(COMPONENTIZE_JS))
        .context("installing componentize-js needs node and npm (apt-get install nodejs npm)")?;
    }
    let wit = wit()?;
    std::fs::create_dir_all(out.parent().context("no parent")?)?;
    run(Command::new(&tool)
        .arg(&app)
        .arg("-w")
        .arg(&wit)
        .args([
            "-n",
            "wasmos:task/task",
            "-d",
            "http",
            "-d",
            "fetch-event",
            "-o",
        ])
        .arg(&out))
}

/// The WASI 0.2 WIT that wasmtime-wasi ships (its crate source, found through `cargo
/// metadata`): exactly what agents link.
fn wasi_wit() -> Result<PathBuf> {
    let meta = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .context("cannot run cargo metadata")?;
    let meta = String::from_utf8_lossy(&meta.stdout);
    // The manifest path of wasmtime-wasi, without a JSON parser: `"manifest_path":"…/wasmtime-wasi-X/Cargo.toml"`.
    meta.split("\"manifest_path\":\"")
        .filter_map(|s| s.split('"').next())
        .find(|p| p.contains("/wasmtime-wasi-") && p.ends_with("/Cargo.toml"))
        .map(|p| PathBuf::from(p.trim_end_matches("Cargo.toml")).join("src/p2/wit"))
        .context("wasmtime-wasi is not in cargo metadata")
}

/// Puts the platform's WIT package with the WASI definitions it includes into `target/wit/`
/// (what componentize-py and componentize-js read), and checks that its world `task`
/// resolves there.
fn wit() -> Result<PathBuf> {
    let root = root();
    let out = root.join("target/wit");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("deps")).context("creating target/wit/deps")?;
    let copy_wit = |from: &Path, to: &Path| -> Result<()> {
        for entry in
            std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "wit") {
                let name = path.file_name().context("no file name")?;
                std::fs::copy(&path, to.join(name))
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
        Ok(())
    };
    copy_wit(&root.join("wit"), &out)?;
    copy_wit(&wasi_wit()?.join("deps"), &out.join("deps"))?;
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(&out)
        .context("wit/ does not resolve against the WASI definitions agents link")?;
    resolve
        .select_world(&[package], Some("task"))
        .context("wit/ has no world `task`")?;
    eprintln!(
        "xtask: {} (the world wasmos:task/task, with WASI)",
        out.display()
    );
    Ok(out)
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
        .arg(root().join("target/wasmtime-cli-build")))?;
    remove_build_dir("target/wasmtime-cli-build")
}

/// `cargo install --target-dir` keeps its build (a gigabyte for the wasmtime CLI); once the
/// binary is installed nothing reads it, and CI's disk is not unlimited.
fn remove_build_dir(rel: &str) -> Result<()> {
    let dir = root().join(rel);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The release build of the `wasmos` binary, for cargo and cargo-zigbuild alike.
const BUILD_WASMOS: [&str; 7] = [
    "build",
    "--release",
    "--locked",
    "-p",
    "wasmos",
    "--bin",
    "wasmos",
];

/// `cargo build --release --locked -p wasmos --bin wasmos`, for `target` if given.
fn build_wasmos(target: Option<&str>) -> Command {
    let mut cmd = cargo();
    cmd.args(BUILD_WASMOS);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    cmd
}

/// Wine's loader, if installed: Debian's wine64 package puts it outside PATH.
fn wine64() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("wine64"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/lib/wine/wine64");
        debian.is_file().then_some(debian)
    })
}

/// Builds the release `wasmos.exe` for Windows and, where Wine is installed, readies it to run
/// under Wine for the mixed-OS tests: `target/wine/bin` holds a copy of the exe beside a
/// test-only `bcryptprimitives.dll` (tests/wine/prng_shim.c: Debian's Wine 8 lacks the
/// `ProcessPrng` every Rust program imports), and `target/wine/prefix` is a Wine prefix made
/// once. The exe under target/x86_64-pc-windows-gnu/release is the one shipped, untouched.
fn windows() -> Result<()> {
    ensure_target(WINDOWS_TARGET)?;
    run(&mut build_wasmos(Some(WINDOWS_TARGET)))?;
    let Some(wine) = wine64() else {
        eprintln!("xtask: Wine (wine64) is not installed; the mixed-OS tests will be skipped");
        return Ok(());
    };
    let target = root().join("target");
    let bin = target.join("wine/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(
        target.join(WINDOWS_TARGET).join("release/wasmos.exe"),
        bin.join("wasmos.exe"),
    )
    .context("copying wasmos.exe")?;
    run(Command::new("x86_64-w64-mingw32-gcc")
        .args(["-shared", "-O2", "-o"])
        .arg(bin.join("bcryptprimitives.dll"))
        .arg(root().join("tests/wine/prng_shim.c"))
        .arg("-ladvapi32"))?;
    let prefix = target.join("wine/prefix");
    if !prefix.join("system.reg").is_file() {
        run(Command::new(&wine)
            .args(["wineboot", "--init"])
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml="))?;
    }
    // The shim before Wine's own DLL for every process of the prefix, those Wine's service
    // control manager starts included (they do not inherit a test's environment).
    run(Command::new(&wine)
        .args(["reg", "add", "HKCU\\Software\\Wine\\DllOverrides"])
        .args(["/v", "bcryptprimitives", "/d", "native,builtin", "/f"])
        .env("WINEPREFIX", &prefix)
        .env("WINEDEBUG", "-all"))?;
    // The exe's own smoke test: it starts and answers under Wine.
    let out = Command::new(&wine)
        .arg(bin.join("wasmos.exe"))
        .arg("--version")
        .env("WINEPREFIX", &prefix)
        .env("WINEDEBUG", "-all")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=;bcryptprimitives=n,b")
        .output()
        .context("running wasmos.exe under Wine")?;
    if !out.status.success() {
        bail!(
            "wasmos.exe --version under Wine failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "xtask: under Wine: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // Wine writes the prefix's registry (system.reg, the tests' sign of a ready prefix) when
    // its wineserver exits, a few seconds after the last process; wait for that.
    let server = Some(wine.with_file_name("wineserver"))
        .filter(|s| s.is_file())
        .unwrap_or_else(|| PathBuf::from("wineserver"));
    run(Command::new(server).arg("-w").env("WINEPREFIX", &prefix))?;
    Ok(())
}

const MACOS_TARGETS: [&str; 2] = ["aarch64-apple-darwin", "x86_64-apple-darwin"];
/// Pinned: cargo-zigbuild and zig must agree on zig's command line and its macOS libc.
const CARGO_ZIGBUILD: &str = "0.24.1";
const ZIGLANG: &str = "ziglang==0.15.2";

/// cargo-zigbuild (from crates.io, into target/tools) and zig (the `ziglang` PyPI package,
/// into a venv under target/): what cross-checks and builds for macOS need on Linux. Returns
/// the cargo-zigbuild binary and a PATH that finds the venv's `python3 -m ziglang`.
fn zigbuild() -> Result<(PathBuf, std::ffi::OsString)> {
    let tools = root().join(format!("target/tools/cargo-zigbuild-{CARGO_ZIGBUILD}"));
    let bin = tools.join("bin/cargo-zigbuild");
    if !bin.is_file() {
        run(cargo()
            .args(["install", "--locked"])
            .arg(format!("cargo-zigbuild@{CARGO_ZIGBUILD}"))
            .arg("--root")
            .arg(&tools)
            .arg("--target-dir")
            .arg(root().join("target/cargo-zigbuild-build")))?;
        remove_build_dir("target/cargo-zigbuild-build")?;
    }
    let venv = root().join("target/zig-venv");
    if !venv.join("bin/python3").is_file() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let has_zig = Command::new(venv.join("bin/python3"))
        .args(["-m", "ziglang", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_zig {
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", ZIGLANG]))?;
    }
    let mut paths = vec![venv.join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    Ok((bin, std::env::join_paths(paths)?))
}

/// `cargo clippy -D warnings` of the workspace for both macOS targets, through cargo-zigbuild
/// (zig compiles the C code build scripts need). Nothing is linked or run: no macOS here.
fn check_macos() -> Result<()> {
    let (zigbuild, path) = zigbuild()?;
    for target in MACOS_TARGETS {
        ensure_target(target)?;
        run(Command::new(&zigbuild)
            .args(["clippy", "--release", "--locked", "--workspace"])
            .args(["--exclude", "xtask", "--all-targets", "--target", target])
            .args(["--", "-D", "warnings"])
            .env("PATH", &path))?;
    }
    Ok(())
}

/// Release archives of `wasmos` for Linux and Windows (and with `--macos` both macOS targets,
/// through cargo-zigbuild; linking for macOS needs a macOS SDK zig does not ship, so it is not
/// run in CI) in target/dist: the binary, deploy/ and the README, as .tar.gz (.zip for Windows).
fn dist(macos: bool) -> Result<()> {
    let dist = root().join("target/dist");
    std::fs::create_dir_all(&dist)?;
    let version = cargo_version()?;
    let linux = "x86_64-unknown-linux-gnu";
    run(&mut build_wasmos(None))?;
    let mut built = vec![(linux.to_string(), root().join("target/release/wasmos"))];
    ensure_target(WINDOWS_TARGET)?;
    run(&mut build_wasmos(Some(WINDOWS_TARGET)))?;
    built.push((
        WINDOWS_TARGET.to_string(),
        root().join(format!("target/{WINDOWS_TARGET}/release/wasmos.exe")),
    ));
    let (zigbuild, path) = if macos {
        zigbuild()?
    } else {
        (PathBuf::new(), std::ffi::OsString::new())
    };
    for target in MACOS_TARGETS.iter().filter(|_| macos) {
        ensure_target(target)?;
        run(Command::new(&zigbuild)
            .args(BUILD_WASMOS)
            .args(["--target", target])
            .env("PATH", &path))?;
        built.push((
            target.to_string(),
            root().join(format!("target/{target}/release/wasmos")),
        ));
    }
    for (target, binary) in built {
        let name = format!("wasmos-{version}-{target}");
        let stage = dist.join(&name);
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(&stage)?;
        let file = binary.file_name().context("binary has no name")?;
        std::fs::copy(&binary, stage.join(file))
            .with_context(|| format!("copying {}", binary.display()))?;
        std::fs::copy(root().join("README.md"), stage.join("README.md"))?;
        run(Command::new("cp")
            .arg("-r")
            .arg(root().join("deploy"))
            .arg(&stage))?;
        let _ = std::fs::remove_dir_all(stage.join("deploy/container/pki"));
        if target == WINDOWS_TARGET {
            run(Command::new("python3")
                .args(["-m", "zipfile", "-c"])
                .arg(dist.join(format!("{name}.zip")))
                .arg(&stage))?;
        } else {
            run(Command::new("tar")
                .arg("-czf")
                .arg(dist.join(format!("{name}.tar.gz")))
                .arg("-C")
                .arg(&dist)
                .arg(&name))?;
        }
        std::fs::remove_dir_all(&stage)?;
    }
    eprintln!("xtask: archives in {}", dist.display());
    Ok(())
}

/// The workspace's version, from Cargo.toml.
fn cargo_version() -> Result<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .map(|v| v.trim_end_matches('"').to_string())
        .context("no version in Cargo.toml")
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
        .args(extra);
    run_tests(cmd)
}

/// The Windows builds of the crates with Windows-only code (private files' DACLs, the plain
/// UDP fallback), their unit tests run under Wine: cargo starts each test binary through
/// Wine, beside the shim DLL `windows()` built.
fn windows_unit_tests(wine: &Path) -> Result<()> {
    let target = root().join("target");
    let deps = target.join(WINDOWS_TARGET).join("release/deps");
    std::fs::create_dir_all(&deps)?;
    std::fs::copy(
        target.join("wine/bin/bcryptprimitives.dll"),
        deps.join("bcryptprimitives.dll"),
    )
    .context("copying the shim DLL beside the Windows test binaries")?;
    let runner = format!(
        "CARGO_TARGET_{}_RUNNER",
        WINDOWS_TARGET.to_uppercase().replace('-', "_")
    );
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--locked", "--target", WINDOWS_TARGET])
        .args(["-p", "wasmos-net", "--lib"])
        .env(runner, wine)
        .env("WINEPREFIX", target.join("wine/prefix"))
        .env("WINEDEBUG", "-all")
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=;bcryptprimitives=n,b");
    run_tests(cmd)
}

/// Runs a `cargo test` command, echoing its output, and sums up its results.
fn run_tests(mut cmd: Command) -> Result<()> {
    cmd.current_dir(root()).stdout(Stdio::piped());
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
        Some("wit") => wit().map(drop),
        Some("js-sample") => js_sample(),
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
        Some("windows") => windows(),
        Some("windows-unit-tests") => {
            windows()?;
            let wine = wine64().context("Wine (wine64) is not installed")?;
            windows_unit_tests(&wine)
        }
        Some("check-macos") => check_macos(),
        Some("dist") => dist(rest.contains(&"--macos")),
        Some("test") => {
            samples()?;
            wit()?;
            python_sample()?;
            js_sample()?;
            wasmtime_cli()?;
            // The Windows agent the mixed-OS tests run under Wine, where there is Wine: the
            // build needs mingw-w64 too, which a machine with rustup alone lacks.
            if wine64().is_some() || std::env::var("WASMOS_WINE").as_deref() == Ok("required") {
                windows()?;
                if let Some(wine) = wine64() {
                    windows_unit_tests(&wine)?;
                }
            } else {
                eprintln!("xtask: Wine is not installed; the mixed-OS tests will be skipped");
            }
            // The example framework too: a test runs it as a process. `--workspace` makes this
            // build resolve features as `cargo test --workspace` does (every member's
            // dev-dependencies turn on tokio's test-util, fnv's std...): with `-p wasmos` alone
            // the two differed, and wasmtime and everything under it was built twice.
            run(cargo().args([
                "build",
                "--release",
                "--locked",
                "--workspace",
                "--exclude",
                "xtask",
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
                "clippy",
                "--release",
                "--locked",
                "--workspace",
                "--exclude",
                "xtask",
                "--all-targets",
                "--target",
                WINDOWS_TARGET,
                "--",
                "-D",
                "warnings",
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
            run(cargo().args([
                "bench",
                "--locked",
                "-p",
                "wasmos-net",
                "--bench",
                "handshake",
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
            "usage: cargo xtask <demo|test|lint|check-windows|windows|windows-unit-tests|check-macos|dist|samples|wit|python-sample|js-sample|wasmtime-cli|bench> [args for cargo test]"
        ),
    }
}
