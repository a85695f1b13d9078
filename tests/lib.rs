//! Harness for the integration tests: starts real `wasmos dev` processes on loopback (each in a
//! temporary data dir, on a free port) and runs the real `wasmos` binary against them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod corpus;
pub mod words;

/// `target/release/wasmos` (or debug), next to the directory of this test executable.
pub fn wasmos_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = dir.join(format!("wasmos{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

/// `target/release/examples/NAME`, an example program of the `wasmos` crate.
pub fn example_bin(name: &str) -> PathBuf {
    let bin = wasmos_bin()
        .with_file_name("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

/// A compiled sample task; built by `cargo xtask samples`.
pub fn sample(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sample-tasks/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds the samples",
        path.display()
    );
    path
}

/// A `wasmos dev` process and its data dir.
pub struct DevCluster {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Everything the dev process wrote to stderr (its log).
    pub log: Arc<Mutex<String>>,
    pub agents: u32,
    /// Extra flags for `wasmos dev`.
    pub flags: Vec<String>,
}

impl DevCluster {
    pub fn start(agents: u32) -> Result<DevCluster> {
        Self::start_with(agents, &[])
    }

    pub fn start_with(agents: u32, flags: &[&str]) -> Result<DevCluster> {
        let dir = tempfile::tempdir()?;
        let mut c = DevCluster {
            dir,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            agents,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        c.spawn()?;
        Ok(c)
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("client.toml")
    }

    /// The master's address, from the client config `wasmos dev` wrote.
    pub fn master_addr(&self) -> std::net::SocketAddr {
        let cfg = std::fs::read_to_string(self.config()).unwrap_or_default();
        cfg.lines()
            .find_map(|l| l.strip_prefix("master = "))
            .and_then(|v| v.trim().trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no master address in {cfg}"))
    }

    /// Starts (or restarts) the dev process on this data dir and waits until every agent is
    /// registered and active.
    pub fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.config());
        let mut child = Command::new(wasmos_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--agents"])
            .arg(self.agents.to_string())
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(&self.flags)
            .env("RUST_LOG", "info")
            .env_remove("WASMOS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning wasmos dev")?;
        if let Some(err) = child.stderr.take() {
            let log = self.log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.config().is_file() {
                let out = self.cli(&["agent", "list", "-o", "json"])?;
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                    let active = v
                        .as_array()
                        .map(|a| a.iter().filter(|x| x["state"] == "Active").count())
                        .unwrap_or(0);
                    if active == self.agents as usize {
                        return Ok(());
                    }
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("wasmos dev exited with {status}:\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("cluster did not come up in 60s:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` to the dev process and waits up to `within` for it to exit: its status,
    /// or None if it still runs (it is then killed when the cluster is dropped).
    pub fn stop_with(
        &mut self,
        signal: &str,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        send_signal(u64::from(child.id()), signal);
        let status = wait_exit(child, within);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGKILL on Unix, TerminateProcess on Windows: no chance to clean up.
    pub fn kill_hard(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The dev process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where agent `n` (from 1) of the dev cluster keeps its bundles and task directories.
    pub fn agent_dir(&self, n: u32) -> PathBuf {
        self.dir.path().join("agents").join(format!("agent-{n}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `wasmos --config <this cluster> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Ok(self.cmd(args).output()?)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        wasmos_cmd(&self.config(), args)
    }

    /// `wasmos run` with the given flags, sample and task arguments.
    pub fn run(&self, flags: &[&str], task: &str, args: &[&str]) -> Result<Output> {
        let sample = sample(task);
        let mut cmd = self.cmd(&["run"]);
        cmd.args(flags).arg(&sample).arg("--").args(args);
        Ok(cmd.output()?)
    }

    /// `cluster.json` of a `wasmos dev --masters N` group: pids, roles and addresses.
    pub fn cluster_file(&self) -> Result<serde_json::Value> {
        let path = self.dir.path().join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The pid of master `id` of a `wasmos dev --masters N` group, while it runs.
    pub fn master_pid(&self, id: u64) -> Option<u64> {
        let file = self.cluster_file().ok()?;
        file["masters"].as_array()?.iter().find(|m| m["id"] == id)?["pid"].as_u64()
    }

    /// The leader the group agrees on, asked through the client config (which lists every
    /// master, so the answer comes from the leader itself), other than `not`; waits up to 30 s.
    pub fn leader(&self, not: Option<u64>) -> Result<(u64, serde_json::Value)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(st) = self.json(&["cluster", "status", "-o", "json"])
                && let Some(leader) = st["leader"].as_u64()
                && st["node"] == leader
                && Some(leader) != not
            {
                return Ok((leader, st));
            }
            if Instant::now() > deadline {
                bail!(
                    "no leader (other than {not:?}) within 30s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until master `id` runs again (restarted by `wasmos dev`, with a pid other than
    /// `old_pid`) and the leader has replicated to it close to the end of its log.
    pub fn wait_master_back(&self, id: u64, old_pid: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let restarted = self.master_pid(id).is_some_and(|p| p != old_pid);
            if restarted
                && let Ok((_, st)) = self.leader(None)
                && let Some(last) = st["last_log_index"].as_u64()
                && st["members"].as_array().is_some_and(|members| {
                    members.iter().any(|m| {
                        m["id"] == id && m["matched"].as_u64().is_some_and(|x| x + 20 >= last)
                    })
                })
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "master {id} did not come back and catch up:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!("wasmos {args:?} failed: {}", text(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.kill_hard();
    }
}

/// `wasmos --config CONFIG ARGS`, with no config or log level inherited from the environment.
pub fn wasmos_cmd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(wasmos_bin());
    cmd.arg("--config").arg(config).args(args);
    cmd.env_remove("WASMOS_CONFIG").env_remove("RUST_LOG");
    cmd
}

/// `wasmos logs -f TASK` as `config`'s user, once it follows: the task's first line has come
/// through and contains `first` (its stdout's rest is not read; its stderr is piped).
pub fn follow_logs(config: &Path, task: &str, first: &str) -> Child {
    let mut follow = wasmos_cmd(config, &["logs", "-f", task])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start wasmos logs -f: {e}"));
    let mut line = String::new();
    if let Some(out) = follow.stdout.take() {
        let _ = BufRead::read_line(&mut BufReader::new(out), &mut line);
    }
    assert!(line.contains(first), "logs -f {task} began with {line:?}");
    follow
}

/// Runs `wasmos --config CONFIG ARGS` to completion.
pub fn wasmos_with(config: &Path, args: &[&str]) -> Output {
    match wasmos_cmd(config, args).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {}: {e}", wasmos_bin().display()),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a command succeeded and returns what it printed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts a failed command said one clear `error:` line and did not panic.
pub fn assert_clean_error(out: &Output, must_contain: &str) {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {err}"
    );
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(
        err.contains(must_contain),
        "stderr should mention `{must_contain}`: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
}

/// How many tasks of a `task list -o json` answer are in `state` (e.g. "Running").
pub fn count_in_state(tasks: &serde_json::Value, state: &str) -> usize {
    tasks
        .as_array()
        .map(|a| a.iter().filter(|t| t["status"]["state"] == state).count())
        .unwrap_or(0)
}

/// A process's resident memory in KiB, from /proc (Linux only; `None` elsewhere).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `kill -9 PID` (Unix).
pub fn kill_dash_nine(pid: u64) {
    send_signal(pid, "KILL");
}

/// `kill -SIGNAL PID` (Unix), e.g. `TERM`, `INT`.
pub fn send_signal(pid: u64, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "kill -{signal} {pid} failed"
    );
}

/// Polls `check` every 50 ms for up to `within`; whether it came true.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits up to `within` for `child` to exit; its status, or None if it still runs.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl DevCluster {
    /// The operator's credentials `wasmos dev` wrote into its PKI dir, for clients and
    /// frameworks the tests run in-process.
    pub fn operator_credentials(&self) -> wasmos_net::Credentials {
        let pki = self.dir.path().join("pki");
        let read = |f: &str| std::fs::read_to_string(pki.join(f)).unwrap_or_default();
        wasmos_net::Credentials::from_pem(
            &read("ca.pem"),
            &read("operator.pem"),
            &read("operator.key"),
        )
        .unwrap_or_else(|e| panic!("the dev cluster's operator credentials: {e}"))
    }

    /// A certificate for `identity` signed by the dev cluster's CA.
    pub fn issue(&self, identity: &str) -> wasmos_net::pki::Issued {
        let pki_dir = self.dir.path().join("pki");
        let read = |f: &str| std::fs::read_to_string(pki_dir.join(f)).unwrap_or_default();
        let ca = wasmos_net::pki::CaBundle {
            cert_pem: read("ca.pem"),
            key_pem: read("ca.key"),
        };
        let who =
            wasmos_net::Identity::from_uri(identity).unwrap_or_else(|e| panic!("{identity}: {e}"));
        wasmos_net::pki::issue(&ca, &who, &[], &[])
            .unwrap_or_else(|e| panic!("issuing {identity}: {e}"))
    }

    /// `wasmos agent NAME` as a process of its own, registered with this cluster's master, its
    /// certificate and work directory under `dir`, with `extra` flags (`--cpu 2 --zone b`).
    pub fn start_agent(&self, name: &str, dir: &Path, extra: &[&str]) -> Logged {
        let issued = self.issue(&format!("wasmos://agent/{name}"));
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(&key, &issued.key_pem).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut agent = Command::new(wasmos_bin());
        agent
            .args(["agent", "--master", &self.master_addr().to_string(), "--ca"])
            .arg(self.dir.path().join("pki/ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--work-dir")
            .arg(dir.join(format!("{name}-work")))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        Logged::spawn(agent)
    }

    /// Credentials for `identity` (an agent's, a tenant's...), signed by the dev cluster's CA.
    pub fn credentials_for(&self, identity: &str) -> wasmos_net::Credentials {
        let issued = self.issue(identity);
        let ca =
            std::fs::read_to_string(self.dir.path().join("pki").join("ca.pem")).unwrap_or_default();
        wasmos_net::Credentials::from_pem(&ca, &issued.cert_pem, &issued.key_pem)
            .unwrap_or_else(|e| panic!("credentials for {identity}: {e}"))
    }

    /// A client config for `identity` (such as `wasmos://tenant/acme/alice`), signed by the
    /// dev cluster's CA, with the same master and HTTPS addresses as the operator's.
    pub fn user_config(&self, identity: &str) -> PathBuf {
        let pki_dir = self.dir.path().join("pki");
        let issued = self.issue(identity);
        let dir = self
            .dir
            .path()
            .join("users")
            .join(identity.trim_start_matches("wasmos://").replace('/', "-"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let write = |f: &str, text: &str| {
            std::fs::write(dir.join(f), text).unwrap_or_else(|e| panic!("{f}: {e}"))
        };
        write("me.pem", &issued.cert_pem);
        write("me.key", &issued.key_pem);
        let operator = std::fs::read_to_string(self.config()).unwrap_or_default();
        let mut config = String::new();
        for line in operator.lines() {
            let key = line.split('=').next().unwrap_or_default().trim();
            match key {
                "ca" => config.push_str(&format!("ca = {:?}\n", pki_dir.join("ca.pem"))),
                "cert" => config.push_str("cert = \"me.pem\"\n"),
                "key" => config.push_str("key = \"me.key\"\n"),
                _ => {
                    config.push_str(line);
                    config.push('\n');
                }
            }
        }
        write("client.toml", &config);
        dir.join("client.toml")
    }
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `tool --version` runs. Without it the test says it is skipped and passes, unless
/// the environment variable `switch` is `required` (as `.ci/run` sets it after installing
/// `package`), when it fails.
pub fn tool_present(tool: &str, switch: &str, package: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert_ne!(
            std::env::var(switch).as_deref(),
            Ok("required"),
            "{switch}=required but `{tool}` is missing (apt-get install {package})"
        );
        eprintln!("skipped: `{tool}` is missing (Debian's {package} has it)");
    }
    found
}

/// A free TCP port on loopback, released again for whoever binds it next.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on loopback: {e}"))
}

/// A process whose stderr is collected, killed when dropped.
pub struct Logged {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Logged {
    pub fn spawn(mut cmd: Command) -> Logged {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take();
        let sink = log.clone();
        if let Some(err) = err {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        Logged { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes about `total` bytes of prose-like text (common words, skewed like real text, in
/// lines of 12) over `files` files `part-NNN.txt` in `dir`; returns their paths. Deterministic.
pub fn write_corpus(dir: &Path, files: usize, total: usize) -> Vec<PathBuf> {
    const WORDS: &[&str] = &[
        "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
        "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had",
        "by", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there",
        "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "Wasm",
        "agent", "master", "offer", "task", "job", "raft", "quic", "Mesos", "fuel",
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..files)
        .map(|f| {
            let mut s = String::with_capacity(total / files.max(1) + 64);
            let mut n = 0;
            while s.len() < total / files.max(1) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let r = (x % 1000) as usize;
                s.push_str(WORDS[(r * r / 1000) * WORDS.len() / 1000]);
                n += 1;
                s.push(if n % 12 == 0 { '\n' } else { ' ' });
            }
            let path = dir.join(format!("part-{f:03}.txt"));
            if let Err(e) = std::fs::write(&path, s) {
                panic!("cannot write {}: {e}", path.display());
            }
            path
        })
        .collect()
}

/// A TCP listener on loopback that reports what each connection sent: its port, and a channel
/// of what arrived (one message per connection, read to its end).
/// Writes a service file of one group `web` running `sample` (`count` instances of `cpu`,
/// backoff 200 ms, timeout 10 minutes), plus `extra` lines; its path.
pub fn service_file(
    dir: &Path,
    file: &str,
    sample_name: &str,
    count: u32,
    cpu: &str,
    extra: &str,
) -> String {
    let path = dir.join(file);
    let text = format!(
        "name = \"web\"\n[[group]]\nname = \"web\"\nbundle = \"{}\"\ncount = {count}\ncpu = \"{cpu}\"\ntimeout = \"10m\"\nbackoff = \"200ms\"\n{extra}",
        sample(sample_name).display()
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

pub fn loopback_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot listen on loopback: {e}"));
    let port = listener.local_addr().map_or(0, |a| a.port());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut got = String::new();
            if let Ok(mut s) = stream {
                let _ = s.read_to_string(&mut got);
            }
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

/// Sends one request on the agent peer channel; the answer's head and bytes, or why none came.
pub async fn peer_ask<T: serde::Serialize>(
    conn: &wasmos_net::Connection,
    req: &T,
) -> Result<(wasmos_proto::AgentPeerResponse, Vec<u8>), String> {
    // A refused connection's reason is on the connection, not on the stream that failed.
    let fail = |e: String| match conn.close_reason() {
        Some(reason) => format!("{e}: {reason}"),
        None => e,
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
    wasmos_net::send_frame(&mut send, req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = send.finish();
    let head = wasmos_net::recv_frame::<wasmos_proto::AgentPeerResponse>(&mut recv)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("no answer".into()))?;
    let bytes = recv
        .read_to_end(1 << 30)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok((head, bytes))
}

/// The start of a Python script that speaks HTTPS to the master with the certificate of the
/// client config given as its first argument: it defines `ctx` (the TLS context), `host` and
/// `port`, and `connect()`, a connection whose server is checked as `master.wasmos` (the name
/// only masters' certificates carry). Tests append what they send.
pub const PYTHON_HTTPS_CLIENT: &str = r#"
import http.client, json, os, socket, ssl, sys, tomllib
cfg_path = sys.argv[1]
cfg = tomllib.load(open(cfg_path, "rb"))
base = os.path.dirname(cfg_path)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(os.path.join(base, cfg["ca"]))
ctx.load_cert_chain(os.path.join(base, cfg["cert"]), os.path.join(base, cfg["key"]))
host, _, port = cfg["http"].rpartition(":")
def connect():
    c = http.client.HTTPSConnection(host, int(port), context=ctx)
    c.sock = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname="master.wasmos")
    return c
"#;

/// `wasmos events -f -o json` as one identity, its events collected as they come; killed when
/// dropped.
pub struct EventFollower {
    child: Child,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    err: Arc<Mutex<String>>,
}

impl EventFollower {
    pub fn start(config: &Path, extra: &[&str]) -> EventFollower {
        let mut child = wasmos_cmd(config, &["events", "-f", "-o", "json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wasmos events -f: {e}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let events = events.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let v = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("events -f printed {line:?}: {e}"));
                    if let Ok(mut all) = events.lock() {
                        all.push(v);
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let err = err.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut all) = err.lock() {
                        all.push_str(&line);
                        all.push('\n');
                    }
                }
            });
        }
        EventFollower { child, events, err }
    }

    /// The events printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Stops it and returns every event it printed.
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread ends with the pipe; what it read by then is all there is.
        std::thread::sleep(Duration::from_millis(100));
        self.events()
    }
}

impl Drop for EventFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event's topic and object as `wasmos events` names them (`task t-3`), from its JSON.
pub fn event_object(e: &serde_json::Value) -> (String, String) {
    let Some((kind, body)) = e["change"].as_object().and_then(|o| o.iter().next()) else {
        return (String::new(), String::new());
    };
    let id = match &body["id"] {
        serde_json::Value::Null => body["role"].to_string(),
        v => v.to_string(),
    };
    (kind.to_lowercase(), id.trim_matches('"').to_string())
}
