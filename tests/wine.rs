//! One cluster across operating systems: a Linux master and Linux agent (`wasmos dev`) and a
//! Windows agent, the release `wasmos.exe` for x86_64-pc-windows-gnu run under Wine. The same
//! tasks, placed with `--constraint os=...`, must give the same results on both: the WASI
//! fidelity probe and the samples byte for byte, the hostile subset the same outcome. A batch
//! job's map tasks run on one OS and its reducers on the other, fetching the intermediate files
//! agent to agent, and the counts are exact. `wasmos.exe dev --demo` passes under Wine, and the
//! agent installs, starts, stops and uninstalls as a Windows service (Wine's service control
//! manager).
//!
//! `cargo xtask windows` (run by `cargo xtask test`) builds the exe and readies Wine
//! (target/wine). Without Wine these tests say so and pass, unless `WASMOS_WINE=required`
//! (as CI sets it), when its absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use wasmos_tests::corpus::load_cases;
use wasmos_tests::{
    DevCluster, Logged, eventually, sample, send_signal, text, wait_exit, wasmos_bin,
};

/// One test at a time: every Wine process of the prefix goes through one wineserver, and the
/// hostile cases keep it busy enough (thousands of file creations) to starve another test's
/// agent of its heartbeats.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Wine's loader, the exe beside its test-only shim, and the prefix `cargo xtask windows` made.
struct Wine {
    loader: PathBuf,
    exe: PathBuf,
    prefix: PathBuf,
}

impl Wine {
    fn find() -> Option<Wine> {
        let target = wasmos_bin().parent()?.parent()?.to_path_buf();
        let wine = Wine {
            loader: ["/usr/lib/wine/wine64", "/usr/bin/wine64"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())?,
            exe: target.join("wine/bin/wasmos.exe"),
            prefix: target.join("wine/prefix"),
        };
        let ready = wine.exe.is_file()
            && wine.exe.with_file_name("bcryptprimitives.dll").is_file()
            && wine.prefix.join("system.reg").is_file();
        ready.then_some(wine)
    }

    /// None, after saying why, when Wine is missing and not required.
    fn or_skip() -> Option<Wine> {
        let found = Wine::find();
        if found.is_none() {
            assert_ne!(
                std::env::var("WASMOS_WINE").as_deref(),
                Ok("required"),
                "WASMOS_WINE=required but Wine or target/wine is missing: run `cargo xtask windows`"
            );
            eprintln!("skipped: Wine or target/wine is missing (`cargo xtask windows` readies it)");
        }
        found
    }

    /// `wasmos.exe ARGS` under Wine.
    fn wasmos(&self, args: &[&str]) -> Command {
        let mut cmd = self.cmd(&self.exe.to_string_lossy());
        cmd.args(args);
        cmd
    }

    /// The Windows program `exe` under Wine, in this prefix.
    fn cmd(&self, exe: &str) -> Command {
        let mut cmd = Command::new(&self.loader);
        cmd.arg(exe)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko prompts; the shim beside the exe before Wine's own DLL.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=;bcryptprimitives=n,b")
            .env("RUST_LOG", "info")
            .env_remove("WASMOS_CONFIG")
            .stdin(Stdio::null());
        cmd
    }
}

/// A process killed when this is dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Linux path as the Windows program sees it: Wine maps `/` to drive `Z:`.
fn win(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// The flags that join agent `name` to `c`: its master, and the CA, a certificate issued now
/// and a work directory under `dir`, every path in Windows form.
fn join_flags(c: &DevCluster, name: &str, dir: &Path) -> Vec<String> {
    let issued = c.issue(&format!("wasmos://agent/{name}"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("agent.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("agent.key"), &issued.key_pem).unwrap();
    let ca = c.dir.path().join("pki").join("ca.pem");
    [
        "--master".to_string(),
        c.master_addr().to_string(),
        "--ca".into(),
        win(&ca),
        "--cert".into(),
        win(&dir.join("agent.pem")),
        "--key".into(),
        win(&dir.join("agent.key")),
        "--work-dir".into(),
        win(&dir.join("work")),
    ]
    .to_vec()
}

/// Starts `wasmos.exe agent` under Wine, joined to `c`, with every path in Windows form, and
/// waits until the cluster lists it as an active Windows agent.
fn windows_agent(c: &DevCluster, wine: &Wine, dir: &Path) -> Logged {
    let mut cmd = wine.wasmos(&["agent"]);
    cmd.args(join_flags(c, "win-1", dir)).args([
        "--cpu",
        "8",
        "--mem",
        "4GiB",
        "--disk",
        "2GiB",
        "--max-tasks",
        "64",
        "--peer-listen",
        "127.0.0.1:0",
        "--egress-allow",
        "127.0.0.1/32",
        // As the Linux agent's: the hostile corpus' compile bomb is not in the subset here.
        "--compile-timeout",
        "60s",
    ]);
    let agent = Logged::spawn(cmd);
    wait_for_agent(c, "win-1", true, Duration::from_secs(120), || agent.log());
    agent
}

/// Waits up to `within` until the cluster lists agent `id` as an active Windows agent
/// (`active`), or as no longer active; `log` tells what the agent said if it does not.
fn wait_for_agent(
    c: &DevCluster,
    id: &str,
    active: bool,
    within: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
        let seen = agents.as_array().unwrap().iter().any(|a| {
            a["id"] == id
                && if active {
                    a["state"] == "Active" && a["attributes"]["os"] == "windows"
                } else {
                    a["state"] != "Active"
                }
        });
        if seen {
            return;
        }
        let what = if active {
            "an active Windows agent"
        } else {
            "gone"
        };
        assert!(
            Instant::now() < deadline,
            "agent {id} is not {what} after {within:?}: {agents}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Task ids differ between the two runs; everything else must not.
fn without_task_ids(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("t-") {
        out.push_str(&rest[..i + 2]);
        rest = rest[i + 2..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('N');
    }
    out.push_str(rest);
    out
}

/// `wasmos run FLAGS --constraint os=OS FILE -- ARGS`.
fn run_on(c: &DevCluster, os: &str, flags: &[String], file: &Path, args: &[String]) -> Output {
    c.cmd(&["run", "--constraint", &format!("os={os}")])
        .args(flags)
        .arg(file)
        .arg("--")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        text(&o.stdout[..o.stdout.len().min(3000)]),
        text(&o.stderr[..o.stderr.len().min(3000)])
    )
}

#[test]
fn linux_and_windows_agents_give_the_same_results() {
    let Some(wine) = Wine::or_skip() else { return };
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = DevCluster::start_with(
        1,
        &[
            "--egress-allow",
            "127.0.0.1/32",
            "--agent-cpu",
            "8",
            "--agent-mem",
            "4GiB",
        ],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let agent = windows_agent(&c, &wine, &work.path().join("windows"));

    // Both advertise their OS and architecture by themselves; the table shows them.
    let agents = c.json(&["agent", "list", "-o", "json"]).unwrap();
    let mut oses: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attributes"]["os"].as_str().unwrap())
        .collect();
    oses.sort();
    assert_eq!(oses, ["linux", "windows"]);
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["attributes"]["arch"] == "x86_64")
    );
    let table = text(&c.cli(&["agent", "list"]).unwrap().stdout);
    assert!(
        table.contains("os=windows") && table.contains("os=linux"),
        "{table}"
    );

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut mismatches = Vec::new();

    // Deterministic tasks: the WASI fidelity probe and the samples, byte for byte. The mount
    // and the input go from this (Linux) client to whichever agent runs the task.
    let data = work.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("hello.txt"), "hi from the host\n").unwrap();
    let stdin = work.path().join("stdin.bin");
    std::fs::write(
        &stdin,
        (0..100_000u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mount = format!("{}:/data", data.display());
    let stdin_flag = ["--stdin".to_string(), stdin.display().to_string()];
    let env_flags = s(&[
        "--env",
        "PLAIN=value",
        "--env",
        "UNICODE=ü🦀",
        "--env",
        "EMPTY=",
    ]);
    let fidelity: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![],
            s(&["args", "", "two words", "ünïcödé 🦀", "--flag", "a=b"]),
        ),
        (env_flags, s(&["env"])),
        (stdin_flag.to_vec(), s(&["stdin"])),
        (vec![], s(&["bytes"])),
        (vec![], s(&["random"])),
        (vec![], s(&["net"])),
        (s(&["--mount", &mount]), s(&["fs"])),
        (vec![], s(&["exit", "42"])),
        (vec![], s(&["std-exit", "7"])),
    ];
    let mut deterministic: Vec<(PathBuf, Vec<String>, Vec<String>)> = fidelity
        .into_iter()
        .map(|(f, a)| (sample("fidelity"), f, a))
        .collect();
    deterministic.extend([
        (sample("hello"), vec![], s(&["cross-os"])),
        (sample("primes"), vec![], s(&["200000"])),
        (sample("exit-code"), vec![], s(&["3"])),
    ]);
    for (file, flags, args) in &deterministic {
        let linux = run_on(&c, "linux", flags, file, args);
        let windows = run_on(&c, "windows", flags, file, args);
        let stdout_differs = if args[0] == "fs" {
            !fs_differences(&text(&linux.stdout), &text(&windows.stdout)).is_empty()
        } else {
            linux.stdout != windows.stdout
        };
        if linux.status.code() != windows.status.code()
            || stdout_differs
            || without_task_ids(&text(&linux.stderr)) != without_task_ids(&text(&windows.stderr))
        {
            mismatches.push(format!(
                "{} {args:?}\n=== on Linux: {}\n=== on Windows: {}",
                file.display(),
                describe(&linux),
                describe(&windows)
            ));
        }
    }

    // The hostile subset: every limit ends the task the same way on both.
    let cases = load_cases(work.path());
    let subset = [
        "loop",
        "sleep",
        "loop-budget",
        "clock-poll",
        "recurse",
        "oob",
        "exit-42",
        "alloc-huge",
        "alloc-loop",
        "table-bomb",
        "memory-bomb",
        "flood",
        "flood-stderr",
        "disk-fill",
        "file-bomb",
        "fs",
        "dotdot",
        "symlink",
        "input-write",
        "net",
        "dns",
        "env",
    ];
    for name in subset {
        let case = cases.iter().find(|k| k.name == name).unwrap();
        let mut flags = case.flags.clone();
        if name == "file-bomb" {
            // Creating a file costs Wine about 10 ms of CPU, which counts against the task's
            // share: at the corpus' tenth of a core the bomb makes 10 files a second. A whole
            // core and a minute let it reach the quota (on both OSes, so the outcome is
            // compared under the same flags).
            for (flag, value) in [("--timeout", "60s"), ("--cpu", "1")] {
                if let Some(i) = flags.iter().position(|f| f == flag) {
                    flags[i + 1] = value.into();
                }
            }
        }
        for os in ["linux", "windows"] {
            let out = run_on(&c, os, &flags, &case.file, &case.args);
            if out.status.code() != Some(case.code) || !text(&out.stderr).contains(&case.expect) {
                mismatches.push(format!(
                    "hostile {name} on {os} (expected exit {} with `{}`): {}",
                    case.code,
                    case.expect,
                    describe(&out)
                ));
            }
        }
    }

    // The network allow-list: a granted loopback destination is reached from the Windows
    // agent too, and an ungranted one is not.
    let (port, rx) = wasmos_tests::loopback_listener();
    let target = format!("127.0.0.1:{port}");
    let connect = s(&["connect", &target]);
    for os in ["linux", "windows"] {
        let granted = run_on(
            &c,
            os,
            &s(&["--net", &target]),
            &sample("hostile"),
            &connect,
        );
        let got = rx.recv_timeout(Duration::from_secs(10));
        if granted.status.code() != Some(0) || got.as_deref() != Ok("hello from a task") {
            mismatches.push(format!("granted connect on {os}: {}", describe(&granted)));
        }
        let denied = run_on(&c, os, &[], &sample("hostile"), &connect);
        if denied.status.code() != Some(1) || !text(&denied.stdout).contains("cannot connect") {
            mismatches.push(format!("ungranted connect on {os}: {}", describe(&denied)));
        }
    }
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());

    assert!(
        mismatches.is_empty(),
        "{} difference(s):\n{}\n=== Windows agent log:\n{}",
        mismatches.len(),
        mismatches.join("\n\n"),
        agent.log()
    );

    // A map-reduce job across both: map tasks on one OS keep their outputs there, reducers on
    // the other fetch them agent to agent; the counts are exact either way round.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want = wasmos_tests::words::naive_counts(&wasmos_tests::words::data_files(
        &repo.join("sample-tasks/wordcount/data"),
    ));
    for (map_os, reduce_os) in [("windows", "linux"), ("linux", "windows")] {
        let job = work.path().join(format!("wordcount-{map_os}.toml"));
        std::fs::write(&job, wordcount_job(&repo, map_os, reduce_os)).unwrap();
        let out = c
            .cli(&["job", "submit", job.to_str().unwrap(), "--wait"])
            .unwrap();
        assert!(
            out.status.success(),
            "map on {map_os}, reduce on {reduce_os}: {}{}\n=== Windows agent log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            agent.log()
        );
        let id = text(&out.stdout).lines().next().unwrap().to_string();
        assert_eq!(
            wasmos_tests::words::job_word_counts(&c, &id),
            want,
            "{map_os} -> {reduce_os}"
        );
    }
    // Each OS ran its share: the constraints placed every task where they said (the jobs'
    // tasks carry their group's), and none ran elsewhere.
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks.as_array().unwrap() {
        let os = t["spec"]["constraints"]["os"].as_str().unwrap_or("-");
        let agent = t["agent"].as_str().unwrap_or("-");
        *per_agent.entry(format!("{os} on {agent}")).or_default() += 1;
    }
    let placed: Vec<&String> = per_agent.keys().collect();
    assert_eq!(
        placed,
        ["linux on agent-1", "windows on win-1"],
        "{per_agent:?}"
    );

    // Ctrl-C (Wine turns SIGINT into a console's CTRL_C_EVENT): the Windows agent stops its
    // task, reports it and says goodbye, and exits 0.
    let spin = c
        .cli(&[
            "run",
            "--detach",
            "--constraint",
            "os=windows",
            sample("spin").to_str().unwrap(),
        ])
        .unwrap();
    assert!(spin.status.success(), "{}", describe(&spin));
    let id = text(&spin.stdout).trim().to_string();
    let state = |id: &str| c.json(&["task", "show", id, "-o", "json"]).unwrap()["status"].clone();
    assert!(
        eventually(Duration::from_secs(60), || state(&id)["state"] == "Running"),
        "{}",
        state(&id)
    );
    let mut agent = agent;
    send_signal(u64::from(agent.id()), "INT");
    let exited = wait_exit(agent.child(), Duration::from_secs(20));
    assert!(
        exited.is_some_and(|s| s.success()),
        "{exited:?}\n{}",
        agent.log()
    );
    let ended = state(&id);
    assert_eq!(
        (&ended["state"], &ended["reason"]),
        (&"Killed".into(), &"AgentStopped".into()),
        "{ended}"
    );
    wait_for_agent(&c, "win-1", false, Duration::from_secs(5), || agent.log());
}

/// Lines of the fidelity probe's `fs` case where WASI on a Windows host answers differently,
/// as wasmtime-wasi maps Windows' errors (and Wine's): which error kind a refused operation
/// reports, and symbolic links, which Windows lets only privileged users create. docs/
/// platforms.md lists them. Each must still be refused on Windows: no line may succeed there
/// that Linux refused.
const FS_DIFFERENT_ON_WINDOWS: &[&str] = &[
    "remove_file on a dir",
    "open a dir for writing",
    "symlink b.txt",
    "read through symlink",
    "read_link",
    "symlink_metadata is symlink",
    "symlink ../../../etc/passwd",
    "read through ../ symlink",
    "256-byte name",
    "empty name",
];

/// The lines of the `fs` case that differ beyond [`FS_DIFFERENT_ON_WINDOWS`], or where Windows
/// allowed what Linux refused.
fn fs_differences(linux: &str, windows: &str) -> Vec<String> {
    let (l, w): (Vec<&str>, Vec<&str>) = (linux.lines().collect(), windows.lines().collect());
    if l.len() != w.len() {
        return vec![format!(
            "{} lines on Linux, {} on Windows",
            l.len(),
            w.len()
        )];
    }
    let mut out = Vec::new();
    for (a, b) in l.iter().zip(&w) {
        let what = a.split(": ").next().unwrap_or_default();
        let known = FS_DIFFERENT_ON_WINDOWS.contains(&what);
        // The listing at the end differs only by the links Windows could not make.
        let listing = what == "list /data/out at the end" && b.starts_with(&format!("{what}: Ok("));
        let allowed_more = b.contains(": Ok(") && !a.contains(": Ok(");
        if a != b && (!(known || listing) || allowed_more) {
            out.push(format!("Linux: {a}\nWindows: {b}"));
        }
    }
    out
}

/// The wordcount sample's job with its map group on `map_os` and reducers on `reduce_os`.
fn wordcount_job(repo: &Path, map_os: &str, reduce_os: &str) -> String {
    let wasm = repo.join("sample-tasks/target/wasm32-wasip2/release/wordcount.wasm");
    let data = repo.join("sample-tasks/wordcount/data");
    format!(
        r#"name = "wordcount-{map_os}-to-{reduce_os}"
type = "batch"
deadline = "5m"

[[group]]
name = "map"
bundle = "{wasm}"
inputs = ["{data}/*.txt"]
args = ["map", "--reducers", "2", "--out", "/out", "/in/input"]
cpu = "250m"
constraints = {{ os = "{map_os}" }}

[[group]]
name = "reduce"
bundle = "{wasm}"
depends_on = ["map"]
count = 2
input_pattern = "part-{{index}}"
args = ["reduce", "--part", "{{index}}", "--out", "/out", "/in/map"]
cpu = "250m"
constraints = {{ os = "{reduce_os}" }}
"#,
        wasm = wasm.display(),
        data = data.display(),
    )
}

#[test]
fn the_windows_exe_runs_the_demo_under_wine() {
    let Some(wine) = Wine::or_skip() else { return };
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let data = tempfile::tempdir().unwrap();
    let samples = sample("hello").parent().unwrap().to_path_buf();
    let out = wine
        .wasmos(&[
            "dev",
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--demo-dir",
            &win(&samples),
            "--data-dir",
            &win(data.path()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let shown = text(&out.stdout) + &text(&out.stderr);
    assert!(
        shown.contains("demo finished: every task ended as expected"),
        "{shown}"
    );
}

#[test]
fn the_agent_runs_as_a_windows_service() {
    let Some(wine) = Wine::or_skip() else { return };
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = DevCluster::start(1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // A name of this run's own: the prefix's service database outlives the test.
    let name = format!("wasmos-test-{}", std::process::id());
    let service = |args: &[&str]| {
        let mut all = vec!["agent", "service"];
        all.extend_from_slice(args);
        all.extend(["--name", &name]);
        wine.wasmos(&all).output().unwrap()
    };
    let log = dir.join("agent.log");
    // Wine ends a prefix's whole session, services included, once its last ordinary process
    // exits: unlike a Windows machine, it has no session of its own that outlives them. A
    // `cmd` waiting on its stdin stands in for one while the service runs.
    // Its processes (services.exe and the rest) inherit the standard streams of the program
    // that started the session: they get /dev/null, not the pipes of a command whose output
    // the test waits for, which they would then hold open for as long as the session lasts.
    let mut keeper = wine.cmd("cmd");
    keeper
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _session = KillOnDrop(keeper.spawn().unwrap());
    let started = wine
        .cmd("cmd")
        .args(["/c", "exit"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "{started:?}");
    // Whatever happens below, the service does not outlive the test.
    struct Removed<'a>(&'a Wine, &'a str);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .wasmos(&["agent", "service", "uninstall", "--name", self.1])
                .output();
        }
    }
    let _removed = Removed(&wine, &name);
    let mut install = wine.wasmos(&[
        "agent",
        "service",
        "install",
        "--name",
        &name,
        "--start",
        "demand",
        "--account",
        "LocalSystem",
        "--",
    ]);
    install.args(join_flags(&c, "win-svc", dir)).args([
        "--log-file",
        &win(&log),
        "--max-tasks",
        "16",
    ]);
    let installed = install.output().unwrap();
    assert!(installed.status.success(), "{}", describe(&installed));
    // A relative path is refused at install, not at boot.
    let relative = wine
        .wasmos(&["agent", "service", "install", "--name", "x", "--"])
        .args([
            "--master",
            "127.0.0.1:1",
            "--ca",
            "ca.pem",
            "--cert",
            "C:\\a.pem",
        ])
        .args(["--key", "C:\\a.key", "--work-dir", "C:\\w"])
        .output()
        .unwrap();
    assert!(
        !relative.status.success() && text(&relative.stderr).contains("absolute path"),
        "{}",
        describe(&relative)
    );

    let started = service(&["start"]);
    assert!(started.status.success(), "{}", describe(&started));
    let service_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for_agent(&c, "win-svc", true, Duration::from_secs(120), service_log);
    let ran = run_on(
        &c,
        "windows",
        &[],
        &sample("hello"),
        &["as a service".into()],
    );
    assert!(
        ran.status.success() && text(&ran.stdout).contains("as a service"),
        "{}\n--- service log\n{}",
        describe(&ran),
        service_log()
    );
    let status = service(&["status"]);
    assert!(
        text(&status.stdout).contains("Running"),
        "{}",
        describe(&status)
    );

    // Stopping the service stops the agent the way Ctrl-C does: it says goodbye, and the
    // master sees it gone at once rather than after the agent timeout.
    let stopped = service(&["stop"]);
    assert!(stopped.status.success(), "{}", describe(&stopped));
    wait_for_agent(&c, "win-svc", false, Duration::from_secs(10), service_log);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("registered with master"), "{logged}");

    let removed = service(&["uninstall"]);
    assert!(removed.status.success(), "{}", describe(&removed));
    let status = service(&["status"]);
    assert!(
        !status.status.success() && text(&status.stderr).contains("is installed"),
        "{}",
        describe(&status)
    );
}

/// The Windows client against a Linux cluster, every path in Windows form: the client config
/// (whose relative key paths resolve beside it), a mounted directory, inputs with and without
/// a guest path (`Z:/...` keeps its drive), the task file, and `blob get -o`. The files arrive
/// where the guest paths say and the outputs come back byte for byte.
#[test]
fn the_windows_client_takes_windows_paths() {
    let Some(wine) = Wine::or_skip() else { return };
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let c = DevCluster::start(1).unwrap();
    let local = tempfile::tempdir().unwrap();
    let data = local.path().join("data dir");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub").join("a.txt"), "the cat the dog\n").unwrap();
    let b = local.path().join("b.txt");
    std::fs::write(&b, "A cat!\n").unwrap();
    let d = local.path().join("d.txt");
    std::fs::write(&d, "dog\n").unwrap();
    let config = win(&c.config());
    let client = |args: &[&str]| {
        let mut all = vec![args[0], "--config", &config];
        all.extend_from_slice(&args[1..]);
        wine.wasmos(&all).output().unwrap()
    };
    let mount = format!("{}:/data", win(&data));
    let input_b = format!("Z:{}", b.display());
    let input_d = format!("{}:/more/d.txt", win(&d));
    let task = win(&sample("wordcount"));
    let out = client(&[
        "run",
        "--mount",
        &mount,
        "--input",
        &input_b,
        "--input",
        &input_d,
        "--outputs",
        "/out",
        &task,
        "--",
        "map",
        "--reducers",
        "1",
        "--out",
        "/out",
        "/data",
        "/input",
        "/more",
    ]);
    assert!(out.status.success(), "{}", describe(&out));

    let info = c.json(&["task", "show", "t-1", "-o", "json"]).unwrap();
    let outputs = info["status"]["outputs"].as_array().unwrap().clone();
    assert_eq!(outputs.len(), 1, "{info}");
    let got = local.path().join("part-0");
    let fetched = client(&[
        "blob",
        "get",
        "-o",
        &win(&got),
        outputs[0]["blob"].as_str().unwrap(),
    ]);
    assert!(fetched.status.success(), "{}", describe(&fetched));
    let words = std::fs::read_to_string(&got).unwrap();
    let mut lines: Vec<&str> = words.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["a\t1", "cat\t2", "dog\t2", "the\t2"]);

    // A missing file is named as the user wrote it, and nothing is submitted.
    let missing = client(&[
        "run",
        "--input",
        r"Z:\no\such.txt:/in/x",
        &win(&sample("hello")),
    ]);
    assert!(
        !missing.status.success() && text(&missing.stderr).contains(r"Z:\no\such.txt"),
        "{}",
        describe(&missing)
    );
    let tasks = c.json(&["task", "list", "-o", "json"]).unwrap();
    assert_eq!(tasks.as_array().map(Vec::len), Some(1), "{tasks}");
}
