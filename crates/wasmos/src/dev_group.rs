//! `wasmos dev --masters N`: a multi-master cluster on loopback where every master and agent is
//! its own child process (so any one can be `kill -9`ed), supervised and restarted when it
//! dies, with their pids, roles and addresses kept in `<data-dir>/cluster.json`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use wasmos_net::Identity;

use crate::cert::{PkiFiles, ensure_ca, ensure_cert};
use wasmos_client::{CONFIG_FILE, ClientConfig};

/// The file, in the data dir, describing the running group.
pub const CLUSTER_FILE: &str = "cluster.json";

/// Set on children: they exit when their standard input (a pipe from `wasmos dev`) closes, so
/// no master or agent outlives a dev process that was killed.
pub const PARENT_ENV: &str = "WASMOS_DEV_PARENT";

/// How often the supervisor looks for children that died.
const POLL: Duration = Duration::from_millis(200);
/// How long a dead child stays down before it is restarted: long enough for a failover to be
/// watched, short enough that a majority is back soon.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What `wasmos dev --masters N` starts.
pub struct GroupOptions {
    pub data_dir: PathBuf,
    pub masters: u32,
    pub agents: u32,
    /// The first master's address; the others take the following ports (port 0: free ports).
    pub listen: SocketAddr,
    /// Arguments every agent gets besides its identity, masters and work dir (resources,
    /// reservations, execution settings).
    pub agent_args: Vec<String>,
    /// The agents' zones, round-robin (`--agent-zones`).
    pub agent_zones: Vec<String>,
    /// Arguments every master gets besides its id, address, peers, data dir and certificate.
    pub master_args: Vec<String>,
    /// Restart children that die.
    pub restart: bool,
    /// How long the agents' and the operator's certificates are valid when first issued.
    pub leaf_lifetime: Option<std::time::Duration>,
}

/// One supervised child, as `cluster.json` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// `master` or `agent`.
    pub role: String,
    pub name: String,
    /// The raft id of a master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The address a master listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The running process; `null` while it is down.
    pub pid: Option<u32>,
    pub restarts: u32,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// The content of `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The `wasmos dev` process supervising the others.
    pub dev_pid: u32,
    pub client_config: PathBuf,
    pub masters: Vec<Member>,
    pub agents: Vec<Member>,
}

struct Proc {
    member: Member,
    args: Vec<OsString>,
    child: Option<Child>,
    /// When a dead child may be started again.
    down_since: Option<std::time::Instant>,
}

impl Proc {
    /// A child not started yet; its log goes to `<data>/logs/<name>.log`.
    fn new(
        data: &Path,
        role: &str,
        name: String,
        master: Option<(u64, SocketAddr)>,
        dir: PathBuf,
        args: Vec<OsString>,
    ) -> Proc {
        Proc {
            member: Member {
                role: role.into(),
                log: data.join("logs").join(format!("{name}.log")),
                name,
                id: master.map(|(id, _)| id),
                addr: master.map(|(_, a)| a.to_string()),
                pid: None,
                restarts: 0,
                dir,
            },
            args,
            child: None,
            down_since: None,
        }
    }
}

/// Addresses for `n` masters: the ones recorded by an earlier run on this data dir (the raft
/// group remembers its members' addresses), else consecutive ports from `listen`, else (port 0)
/// free ports.
fn master_addrs(data_dir: &Path, n: u32, listen: SocketAddr) -> Result<Vec<SocketAddr>> {
    if let Ok(text) = std::fs::read_to_string(data_dir.join(CLUSTER_FILE))
        && let Ok(old) = serde_json::from_str::<ClusterFile>(&text)
    {
        let addrs: Vec<SocketAddr> = old
            .masters
            .iter()
            .filter_map(|m| m.addr.as_deref()?.parse().ok())
            .collect();
        if addrs.len() == n as usize {
            return Ok(addrs);
        }
        if data_dir.join("master-1").exists() {
            bail!(
                "{} was a group of {} masters; start it with --masters {} or use another --data-dir",
                data_dir.display(),
                addrs.len(),
                addrs.len()
            );
        }
    }
    if listen.port() == 0 {
        // Bind them all before releasing any, so the ports differ.
        let sockets = (0..n)
            .map(|_| std::net::UdpSocket::bind(SocketAddr::new(listen.ip(), 0)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot find free UDP ports for the masters")?;
        return sockets
            .iter()
            .map(|s| s.local_addr().context("reading a free port"))
            .collect();
    }
    (0..n)
        .map(|i| {
            let port = listen
                .port()
                .checked_add(i as u16)
                .context("--listen port too high for this many masters")?;
            Ok(SocketAddr::new(listen.ip(), port))
        })
        .collect()
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Creates the PKI and client config, starts every child and supervises them until Ctrl-C.
pub async fn run(opts: GroupOptions) -> Result<()> {
    if opts.masters < 2 || opts.masters > 9 {
        bail!("--masters must be 1 (one in-process master) or between 2 and 9");
    }
    if opts.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let data = std::path::absolute(&opts.data_dir)
        .with_context(|| format!("cannot resolve {}", opts.data_dir.display()))?;
    std::fs::create_dir_all(data.join("logs"))
        .with_context(|| format!("cannot create {}", data.display()))?;
    let pki = data.join("pki");
    let ca = ensure_ca(&pki)?;
    ensure_cert(
        &pki,
        &ca,
        &Identity::Operator("admin".into()),
        "operator",
        opts.leaf_lifetime,
    )?;
    let addrs = master_addrs(&data, opts.masters, opts.listen)?;
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let all = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().context("cannot find this program's path")?;

    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let name = format!("master-{id}");
        let who = Identity::Master(format!("m{id}"));
        let files = ensure_cert(&pki, &ca, &who, &name, opts.leaf_lifetime)?;
        let dir = data.join(&name);
        let mut args = os(&["master", "--id", &id.to_string(), "--listen"]);
        args.push(addr.to_string().into());
        args.extend(os(&["--peers", &peers, "--data-dir"]));
        args.push(dir.clone().into());
        args.extend(tls_args(&pki, &files));
        // The group's own CA renews what it issued.
        args.push("--ca-key".into());
        args.push(pki.join("ca.key").into());
        args.extend(opts.master_args.iter().map(Into::into));
        if !opts.master_args.iter().any(|a| a == "--secrets-key") {
            // One key for the group: a secret sealed by one leader opens on the next.
            args.push("--secrets-key".into());
            args.push(pki.join("secrets.key").into());
        }
        procs.push(Proc::new(
            &data,
            "master",
            name,
            Some((id, *addr)),
            dir,
            args,
        ));
    }
    for i in 1..=opts.agents {
        let name = format!("agent-{i}");
        let files = ensure_cert(
            &pki,
            &ca,
            &Identity::Agent(name.clone()),
            &name,
            opts.leaf_lifetime,
        )?;
        let dir = data.join("agents").join(&name);
        let mut args = os(&[
            "agent",
            "--master",
            &all,
            "--attr",
            "dev=true",
            "--work-dir",
        ]);
        args.push(dir.clone().into());
        args.extend(tls_args(&pki, &files));
        args.extend(opts.agent_args.iter().map(OsString::from));
        if let Some(zone) = crate::dev::zone_of(&opts.agent_zones, i) {
            args.extend(os(&["--zone", zone]));
        }
        procs.push(Proc::new(&data, "agent", name, None, dir, args));
    }

    let config_path = data.join(CONFIG_FILE);
    ClientConfig::dev_operator(data.clone(), addrs[0], addrs.clone(), None).write(&config_path)?;

    for p in &mut procs {
        start(&exe, p)?;
    }
    write_cluster_file(&data, &config_path, &procs)?;
    eprintln!(
        "wasmos dev: {} masters ({all}) and {} agent(s), each its own process; pids and logs in {}",
        opts.masters,
        opts.agents,
        data.join(CLUSTER_FILE).display()
    );
    eprintln!(
        "try: export WASMOS_CONFIG={}; wasmos cluster status",
        config_path.display()
    );
    if opts.restart {
        eprintln!(
            "children that die (try kill -9 on the leader's pid) are restarted after {RESTART_DELAY:?}"
        );
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let mut changed = false;
        for p in &mut procs {
            changed |= supervise(&exe, p, opts.restart);
        }
        if changed {
            write_cluster_file(&data, &config_path, &procs)?;
        }
    }
    eprintln!("wasmos dev: stopping");
    for p in &mut procs {
        if let Some(mut c) = p.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        p.member.pid = None;
    }
    write_cluster_file(&data, &config_path, &procs)?;
    Ok(())
}

fn tls_args(pki: &Path, files: &PkiFiles) -> Vec<OsString> {
    vec![
        "--ca".into(),
        pki.join("ca.pem").into(),
        "--cert".into(),
        files.cert.clone().into(),
        "--key".into(),
        files.key.clone().into(),
    ]
}

fn start(exe: &Path, p: &mut Proc) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.member.log)
        .with_context(|| format!("cannot open {}", p.member.log.display()))?;
    let child = Command::new(exe)
        .args(&p.args)
        .env(PARENT_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().context("cannot share the log file")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", p.member.name))?;
    p.member.pid = Some(child.id());
    p.child = Some(child);
    p.down_since = None;
    Ok(())
}

/// Notices a child that died and restarts it after [`RESTART_DELAY`]. Returns whether
/// `cluster.json` must be rewritten.
fn supervise(exe: &Path, p: &mut Proc, restart: bool) -> bool {
    if let Some(child) = p.child.as_mut() {
        match child.try_wait() {
            Ok(None) => return false,
            Ok(Some(status)) => {
                eprintln!("wasmos dev: {} exited ({status})", p.member.name);
            }
            Err(e) => eprintln!("wasmos dev: cannot watch {}: {e}", p.member.name),
        }
        p.child = None;
        p.member.pid = None;
        p.down_since = Some(std::time::Instant::now());
        return true;
    }
    let due = p.down_since.is_some_and(|t| t.elapsed() >= RESTART_DELAY);
    if !(restart && due) {
        return false;
    }
    p.member.restarts += 1;
    match start(exe, p) {
        Ok(()) => eprintln!(
            "wasmos dev: restarted {} (pid {})",
            p.member.name,
            p.member.pid.unwrap_or(0)
        ),
        Err(e) => {
            eprintln!("wasmos dev: {e:#}");
            p.down_since = Some(std::time::Instant::now());
        }
    }
    true
}

fn write_cluster_file(data: &Path, config: &Path, procs: &[Proc]) -> Result<()> {
    let (masters, agents): (Vec<&Proc>, Vec<&Proc>) =
        procs.iter().partition(|p| p.member.role == "master");
    let file = ClusterFile {
        dev_pid: std::process::id(),
        client_config: config.to_path_buf(),
        masters: masters.iter().map(|p| p.member.clone()).collect(),
        agents: agents.iter().map(|p| p.member.clone()).collect(),
    };
    let path = data.join(CLUSTER_FILE);
    let tmp = data.join(format!("{CLUSTER_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // A rename, so a reader never sees half a file.
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// In a child of `wasmos dev`: exits the process once the parent is gone (its end of our
/// standard input closes).
pub fn exit_with_parent() {
    if std::env::var_os(PARENT_ENV).is_none() {
        return;
    }
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match std::io::Read::read(&mut stdin, &mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}
