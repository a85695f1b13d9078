//! WASI fidelity, differentially: the same command component (`sample-tasks/fidelity`), with the
//! same arguments, environment, stdin and directory, under `wasmos run` on a dev cluster and
//! under the `wasmtime run` CLI of the wasmtime version Wasmos links (`cargo xtask wasmtime-cli`
//! installs it; `cargo xtask test` does so first). Stdout and stderr must match byte for byte
//! and exit codes must be equal, for args, env, stdin, binary output, exit codes, clocks,
//! random, filesystem semantics in a mounted directory, and denied sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmos_tests::{DevCluster, sample, text};

/// The wasmtime version in the workspace's lockfile: the one the agent runs tasks with.
fn linked_wasmtime_version() -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"))
        .unwrap();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\"" {
            let version = lines.next().unwrap();
            return version
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_string();
        }
    }
    panic!("wasmtime is not in Cargo.lock");
}

/// The `wasmtime` CLI of that same version, as `cargo xtask wasmtime-cli` installs it.
fn wasmtime_cli() -> PathBuf {
    let version = linked_wasmtime_version();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/tools/wasmtime-{version}/bin/wasmtime"));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test` (or `cargo xtask wasmtime-cli`), \
         which installs wasmtime-cli {version} from crates.io",
        path.display()
    );
    let out = Command::new(&path).arg("--version").output().unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with(&format!("wasmtime {version}")),
        "{} is not wasmtime {version}: {shown}",
        path.display()
    );
    path
}

/// One case: the task's arguments, environment and stdin, and whether it gets the /data
/// fixture mounted.
struct Case {
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    stdin: Vec<u8>,
    mount: bool,
}

fn case(args: &[&str]) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        stdin: Vec::new(),
        mount: false,
    }
}

/// A fresh copy of the directory the fs case expects at /data.
fn fixture(parent: &Path) -> PathBuf {
    let dir = parent.join("data");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("hello.txt"), "hi from the host\n").unwrap();
    dir
}

fn under_wasmtime(cli: &Path, c: &Case, work: &Path) -> Output {
    let root = work.join("wasmtime-root");
    std::fs::create_dir_all(&root).unwrap();
    let stdin = work.join("stdin");
    std::fs::write(&stdin, &c.stdin).unwrap();
    // What the agent gives a task: its scratch space at /, and the mount inside it.
    let mut cmd = Command::new(cli);
    cmd.arg("run")
        .arg("--dir")
        .arg(format!("{}::/", root.display()));
    if c.mount {
        let data = fixture(&root);
        cmd.arg("--dir").arg(format!("{}::/data", data.display()));
    }
    for (k, v) in &c.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg(sample("fidelity"))
        .args(&c.args)
        .stdin(std::fs::File::open(&stdin).unwrap())
        .env_clear();
    cmd.output().unwrap()
}

fn under_wasmos(cluster: &DevCluster, c: &Case, work: &Path) -> Output {
    let stdin = work.join("stdin");
    std::fs::write(&stdin, &c.stdin).unwrap();
    let mut cmd = cluster.cmd(&["run"]);
    cmd.arg("--stdin").arg(&stdin);
    if c.mount {
        let data = fixture(&work.join("wasmos-mount"));
        cmd.arg("--mount").arg(format!("{}:/data", data.display()));
    }
    for (k, v) in &c.env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg(sample("fidelity"))
        .arg("--")
        .args(&c.args)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

/// The first lines of `bytes` up to (not including) the first line starting with one of
/// `runtime_says`: what the guest itself wrote before the runtime reported its failure.
fn guest_part<'a>(bytes: &'a [u8], runtime_says: &[&str]) -> &'a [u8] {
    let mut at = 0;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if runtime_says.iter().any(|p| line.starts_with(p.as_bytes())) {
            break;
        }
        at += line.len();
    }
    &bytes[..at]
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ({} bytes)\n{}\n--- stderr ({} bytes)\n{}",
        o.status.code(),
        o.stdout.len(),
        String::from_utf8_lossy(&o.stdout[..o.stdout.len().min(4000)]),
        o.stderr.len(),
        String::from_utf8_lossy(&o.stderr[..o.stderr.len().min(4000)])
    )
}

#[test]
fn command_components_behave_as_under_wasmtime_run() {
    let cli = wasmtime_cli();
    let cluster = DevCluster::start(1).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut cases = vec![
        case(&[
            "args",
            "",
            "two words",
            "ünïcödé 🦀",
            "--flag",
            "-x",
            "a=b",
            "\t",
        ]),
        Case {
            env: vec![
                ("PLAIN", "value"),
                ("EMPTY", ""),
                ("SPACES", "a b  c"),
                ("UNICODE", "ü🦀"),
                ("EQUALS", "x=y=z"),
            ],
            ..case(&["env"])
        },
        case(&["env"]),
        Case {
            stdin: (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect(),
            ..case(&["stdin"])
        },
        case(&["stdin"]),
        case(&["bytes"]),
        case(&["clocks", &now]),
        case(&["random"]),
        case(&["net"]),
        Case {
            mount: true,
            ..case(&["fs"])
        },
    ];
    for code in ["0", "1", "3", "42", "255"] {
        cases.push(case(&["exit", code]));
    }
    for code in ["0", "1", "7"] {
        cases.push(case(&["std-exit", code]));
    }

    let mut mismatches = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let work = tempfile::tempdir().unwrap();
        let (ours, theirs) = (
            under_wasmos(&cluster, c, work.path()),
            under_wasmtime(&cli, c, work.path()),
        );
        if ours.stdout != theirs.stdout
            || ours.stderr != theirs.stderr
            || ours.status.code() != theirs.status.code()
        {
            mismatches.push(format!(
                "case {i} {:?}\n=== wasmos run: {}\n=== wasmtime run: {}",
                c.args,
                describe(&ours),
                describe(&theirs)
            ));
        }
    }

    // A panic and a trap: the guest's own output is the same; after it, each CLI reports the
    // failure its own way (wasmtime exits 134, as for SIGABRT; `wasmos run` says the task
    // failed with reason trap and exits 125, as for every task the platform stopped).
    for args in [["panic"], ["trap"]] {
        let work = tempfile::tempdir().unwrap();
        let c = case(&args);
        let (ours, theirs) = (
            under_wasmos(&cluster, &c, work.path()),
            under_wasmtime(&cli, &c, work.path()),
        );
        let ours_guest = guest_part(&ours.stderr, &["wasmos: task t-", "Error:"]);
        let theirs_guest = guest_part(&theirs.stderr, &["Error:"]);
        if ours.stdout != theirs.stdout
            || ours_guest != theirs_guest
            || ours.status.code() != Some(125)
            || theirs.status.code() != Some(134)
            || !text(&ours.stderr).contains("(trap)")
        {
            mismatches.push(format!(
                "case {args:?}\n=== wasmos run: {}\n=== wasmtime run: {}",
                describe(&ours),
                describe(&theirs)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} case(s) differ:\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}
