//! `wasmos dev`: a whole cluster in one process (a master and N agents on loopback, still talking
//! QUIC + mTLS to each other), its PKI created on first start (by `cert.rs`), and the demo job;
//! with `--masters N`, a group of processes (`dev_group.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::sync::watch;
use wasmos_client::{CONFIG_FILE, ClientConfig};
use wasmos_net::Identity;
use wasmos_proto::{Resources, parse_bytes, parse_cpu};

use crate::agent::ExecArgs;
use crate::args::{parse_reservation, with_scalars};
use crate::cert::{credentials, ensure_ca, ensure_cert};
use crate::master::{OfferArgs, TenancyArgs};
use crate::process::wait_for_stop;
use crate::{demo, dev_group};

pub struct DevOptions {
    pub data_dir: PathBuf,
    pub agents: u32,
    pub listen: SocketAddr,
    pub agent_resources: Resources,
    /// Static reservations of each agent, by role.
    pub agent_reserved: std::collections::BTreeMap<String, Resources>,
    pub exec: wasmos_exec::ExecConfig,
    pub keep_task_dirs: bool,
    /// The agents' egress rules (`--egress-allow`/`--egress-deny`).
    pub egress: Vec<wasmos_proto::EgressRule>,
    pub tenancy: wasmos_master::TenancyConfig,
    pub agent_timeout: std::time::Duration,
    pub allocator: wasmos_alloc::Config,
    /// How long the master's, the agents' and the operator's certificates are valid when
    /// first issued (`None`: until 2074), and renewed ones (`None`: 30 days).
    pub leaf_lifetime: Option<std::time::Duration>,
    /// Where to serve every agent's metrics, in plain HTTP (`--agent-metrics-listen`).
    pub agent_metrics: Option<SocketAddr>,
    /// The agents' zones, given round-robin (`--agent-zones a,b`: agent-1 in a, agent-2 in
    /// b, agent-3 in a...); empty: no zone.
    pub agent_zones: Vec<String>,
}

/// A running dev cluster.
pub struct DevCluster {
    pub master: wasmos_master::Master,
    pub web: wasmos_web::WebServer,
    pub config_path: PathBuf,
    shutdown: watch::Sender<bool>,
    agents: Vec<tokio::task::JoinHandle<()>>,
    /// The agents' metrics listener, if asked for.
    pub agent_metrics: Option<wasmos_web::WebServer>,
    /// Follows the master's certificate files.
    follow: tokio::task::JoinHandle<()>,
}

pub async fn start(opts: &DevOptions) -> Result<DevCluster> {
    if opts.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let data = &opts.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let pki_dir = data.join("pki");
    let ca = ensure_ca(&pki_dir)?;
    let master_files = ensure_cert(
        &pki_dir,
        &ca,
        &Identity::Master("m1".into()),
        "master",
        opts.leaf_lifetime,
    )?;
    // The operator certificate is what client.toml points the CLI at.
    ensure_cert(
        &pki_dir,
        &ca,
        &Identity::Operator("admin".into()),
        "operator",
        opts.leaf_lifetime,
    )?;

    let master_creds = credentials(&ca, &master_files)?;
    let master_cert_files = wasmos_net::CredentialFiles {
        ca: pki_dir.join("ca.pem"),
        cert: master_files.cert.clone(),
        key: master_files.key.clone(),
    };
    let master = wasmos_master::Master::start(
        wasmos_master::MasterConfig {
            agent_timeout: opts.agent_timeout,
            allocator: opts.allocator.clone(),
            tenancy: opts.tenancy.clone(),
            // The dev cluster's own CA renews what it issued.
            renewal: Some(wasmos_master::Renewal {
                ca_key: pki_dir.join("ca.key"),
                lifetime: opts
                    .leaf_lifetime
                    .unwrap_or(std::time::Duration::from_secs(30 * 24 * 3600)),
            }),
            cert_files: Some(master_cert_files.clone()),
            ..wasmos_master::MasterConfig::new(data.join("master"), opts.listen)
        },
        &master_creds,
    )
    .await
    .context("starting the master")?;
    let follow = tokio::spawn(wasmos_net::follow_files(
        master_creds.clone(),
        master_cert_files,
        wasmos_net::RELOAD_EVERY,
    ));
    let addr = master.local_addr();
    // The HTTPS/JSON API on the same interface, on a free port.
    let web = wasmos_web::serve(
        &master,
        &master_creds.with_revocations(master.revocations()),
        std::net::SocketAddr::new(opts.listen.ip(), 0),
    )
    .await
    .context("starting the HTTPS API")?;

    let config_path = data.join(CONFIG_FILE);
    ClientConfig::dev_operator(data.clone(), addr, Vec::new(), Some(web.local_addr()))
        .write(&config_path)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut agents = Vec::new();
    let mut stats = Vec::new();
    for i in 1..=opts.agents {
        let name = format!("agent-{i}");
        let files = ensure_cert(
            &pki_dir,
            &ca,
            &Identity::Agent(name.clone()),
            &name,
            opts.leaf_lifetime,
        )?;
        let mut attributes = wasmos_agent::default_attributes();
        attributes.insert("dev".into(), "true".into());
        if let Some(zone) = zone_of(&opts.agent_zones, i) {
            attributes.insert("zone".into(), zone.to_string());
        }
        let cfg = wasmos_agent::AgentConfig {
            master: addr,
            other_masters: Vec::new(),
            resources: opts.agent_resources.clone(),
            attributes,
            reserved: opts.agent_reserved.clone(),
            work_dir: data.join("agents").join(&name),
            exec: opts.exec.clone(),
            keep_task_dirs: opts.keep_task_dirs,
            egress: opts.egress.clone(),
            // Loopback: the agents of one process are on one host.
            peer_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            peer_advertise: None,
            keep_max_bytes: wasmos_agent::DEFAULT_KEEP_MAX_BYTES,
            cert_files: Some(wasmos_net::CredentialFiles {
                ca: pki_dir.join("ca.pem"),
                cert: files.cert.clone(),
                key: files.key.clone(),
            }),
            stats: Default::default(),
            executor: None,
        };
        stats.push((name.clone(), cfg.resources.clone(), cfg.stats.clone()));
        let creds = credentials(&ca, &files)?;
        let rx = shutdown_rx.clone();
        agents.push(tokio::spawn(async move {
            if let Err(e) = wasmos_agent::run(cfg, creds, rx).await {
                tracing::error!("agent {name} stopped: {e}");
            }
        }));
    }
    let agent_metrics = match opts.agent_metrics {
        Some(addr) => {
            let render = std::sync::Arc::new(move || {
                wasmos_agent::stats::render(&stats).map_err(|e| e.to_string())
            });
            Some(
                wasmos_web::serve_metrics(addr, render)
                    .await
                    .context("starting the agents' metrics listener")?,
            )
        }
        None => None,
    };
    Ok(DevCluster {
        master,
        web,
        config_path,
        shutdown,
        agents,
        agent_metrics,
        follow,
    })
}

impl DevCluster {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.follow.abort();
        for a in self.agents {
            let _ = a.await;
        }
        self.web.shutdown();
        if let Some(m) = self.agent_metrics {
            m.shutdown();
        }
        self.master.shutdown().await;
    }
}

pub fn banner(cluster: &DevCluster, agents: u32) -> String {
    let mut banner = format!(
        "wasmos dev: master on {} with {agents} agent(s); client config written to {}; HTTPS API and /metrics on {}",
        cluster.master.local_addr(),
        cluster.config_path.display(),
        cluster.web.local_addr(),
    );
    if let Some(m) = &cluster.agent_metrics {
        banner.push_str(&format!(
            "; agents' metrics on http://{}/metrics",
            m.local_addr()
        ));
    }
    banner
}

#[derive(Args)]
pub(crate) struct DevArgs {
    /// Where the cluster keeps its state, PKI and client.toml [default: per-user data dir]
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub(crate) agents: u32,
    /// Masters in the raft group. With more than one, every master and agent runs as its own
    /// child process (pids, addresses and logs in <data-dir>/cluster.json), restarted if it dies.
    #[arg(long, default_value_t = 1)]
    pub(crate) masters: u32,
    /// How long an agent may go without a heartbeat before it is declared lost, with its tasks.
    #[arg(long, default_value = "15s")]
    pub(crate) agent_timeout: humantime::Duration,
    /// With --masters: leave children that die down instead of restarting them.
    #[arg(long)]
    pub(crate) no_restart: bool,
    /// The master's UDP address (with --masters, the first one's; the others take the next
    /// ports); port 0 picks free ones.
    #[arg(long, default_value = "127.0.0.1:7433")]
    pub(crate) listen: SocketAddr,
    /// CPU each agent offers.
    #[arg(long, default_value = "2")]
    pub(crate) agent_cpu: String,
    /// Memory each agent offers.
    #[arg(long, default_value = "2GiB")]
    pub(crate) agent_mem: String,
    /// A custom resource each agent offers, NAME=AMOUNT, e.g. gpu=2 (repeatable).
    #[arg(long, value_name = "NAME=AMOUNT")]
    pub(crate) agent_resource: Vec<String>,
    /// Reserve part of each agent for a role, ROLE:RESOURCES, e.g. `team-a:cpu=1,mem=512MiB`
    /// (repeatable).
    #[arg(long, value_name = "ROLE:RESOURCES")]
    pub(crate) agent_reserve: Vec<String>,
    /// Put the agents in these zones (the attribute `zone`), round-robin: `--agents 4
    /// --agent-zones a,b` makes agent-1 and agent-3 zone a, agent-2 and agent-4 zone b.
    #[arg(long, value_name = "ZONE,...", value_delimiter = ',')]
    pub(crate) agent_zones: Vec<String>,
    /// Run the demo job, print its output, then stop.
    #[arg(long)]
    pub(crate) demo: bool,
    /// Where the demo's compiled sample tasks are.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "sample-tasks/target/wasm32-wasip2/release"
    )]
    pub(crate) demo_dir: PathBuf,
    #[command(flatten)]
    pub(crate) exec: ExecArgs,
    #[command(flatten)]
    pub(crate) offers: OfferArgs,
    #[command(flatten)]
    pub(crate) tenancy: TenancyArgs,
    /// How long the masters', the agents' and the operator's certificates are valid when
    /// first issued (default: until 2074), and those the masters renew (default 30d). Masters
    /// and agents renew theirs when two thirds of it have passed; `wasmos cert renew` renews
    /// the operator's.
    #[arg(long, value_name = "DURATION")]
    pub(crate) leaf_lifetime: Option<humantime::Duration>,
    /// Serve the agents' Prometheus metrics in plain HTTP at http://ADDR/metrics (one master
    /// only; each agent of a `--masters N` group is a `wasmos agent --metrics-listen`).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) agent_metrics_listen: Option<SocketAddr>,
}

/// `--leaf-lifetime`, checked as a master checks it.
fn leaf_lifetime(args: &DevArgs) -> Result<Option<std::time::Duration>> {
    match args.leaf_lifetime {
        None => Ok(None),
        Some(l) => {
            crate::master::renewal(Some(PathBuf::new()), l)?;
            Ok(Some(l.into()))
        }
    }
}

pub(crate) async fn dev_cmd(args: DevArgs) -> Result<ExitCode> {
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => wasmos_client::default_data_dir()?,
    };
    if args.masters != 1 {
        if args.demo {
            bail!("--demo runs on one master; drop --masters");
        }
        if args.agent_metrics_listen.is_some() {
            bail!("--agent-metrics-listen serves the agents of one process; drop --masters");
        }
        // Check the agents' settings here, where a mistake is one clear line, not N child logs.
        args.exec.config()?;
        args.offers.config()?;
        parse_cpu(&args.agent_cpu)?;
        parse_bytes(&args.agent_mem)?;
        let mut agent_args = vec![
            "--cpu".to_string(),
            args.agent_cpu.clone(),
            "--mem".to_string(),
            args.agent_mem.clone(),
        ];
        for r in &args.agent_resource {
            agent_args.extend(["--resource".to_string(), r.clone()]);
        }
        for r in &args.agent_reserve {
            parse_reservation(r, "--agent-reserve")?;
            agent_args.extend(["--reserve".to_string(), r.clone()]);
        }
        agent_args.extend(args.exec.to_args());
        check_zones(&args.agent_zones)?;
        dev_group::run(dev_group::GroupOptions {
            agent_zones: args.agent_zones.clone(),
            data_dir,
            masters: args.masters,
            agents: args.agents,
            listen: args.listen,
            agent_args,
            master_args: {
                let mut m = vec![
                    "--agent-timeout".to_string(),
                    args.agent_timeout.to_string(),
                ];
                m.extend(args.offers.to_args());
                m.extend(args.tenancy.to_args());
                if let Some(l) = &args.leaf_lifetime {
                    m.extend(["--leaf-lifetime".to_string(), l.to_string()]);
                }
                m
            },
            restart: !args.no_restart,
            leaf_lifetime: leaf_lifetime(&args)?,
        })
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = DevOptions {
        data_dir,
        agents: args.agents,
        listen: args.listen,
        agent_resources: with_scalars(
            Resources::new(
                parse_cpu(&args.agent_cpu)?,
                parse_bytes(&args.agent_mem)?,
                1 << 30,
            ),
            &args.agent_resource,
            "--agent-resource",
        )?,
        agent_reserved: args
            .agent_reserve
            .iter()
            .map(|r| parse_reservation(r, "--agent-reserve"))
            .collect::<Result<_>>()?,
        exec: args.exec.config()?,
        keep_task_dirs: args.exec.keep_task_dirs,
        egress: args.exec.egress()?,
        tenancy: args.tenancy.config(),
        agent_timeout: args.agent_timeout.into(),
        allocator: args.offers.config()?,
        leaf_lifetime: leaf_lifetime(&args)?,
        agent_metrics: args.agent_metrics_listen,
        agent_zones: check_zones(&args.agent_zones)?.to_vec(),
    };
    if args.demo {
        // Check before starting anything, so a missing build is one clear line.
        demo::check_dir(&args.demo_dir)?;
    }
    let cluster = start(&opts).await?;
    eprintln!("{}", banner(&cluster, args.agents));
    let code = if args.demo {
        let cfg = ClientConfig::load(Some(&cluster.config_path))?;
        let result = demo::run(&cfg, &args.demo_dir).await;
        cluster.stop().await;
        return result;
    } else {
        eprintln!("try: wasmos run sample-tasks/target/wasm32-wasip2/release/hello.wasm -- hi");
        wait_for_stop().await;
        ExitCode::SUCCESS
    };
    cluster.stop().await;
    Ok(code)
}

/// The zone of agent `i` (from 1) when zones are handed out round-robin.
pub(crate) fn zone_of(zones: &[String], i: u32) -> Option<&str> {
    let n = zones.len();
    (n > 0).then(|| zones[(i as usize - 1) % n].as_str())
}

fn check_zones(zones: &[String]) -> Result<&[String]> {
    if zones.iter().any(String::is_empty) {
        bail!("--agent-zones takes zone names separated by commas, none empty");
    }
    Ok(zones)
}
