//! `wasmos master`: run one master of a group, with its tenancy settings and optional HTTPS API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Args;

use crate::args::{TlsArgs, parse_resource_list};
use crate::process::wait_for_stop;

#[derive(Args)]
pub(crate) struct MasterArgs {
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:7433")]
    pub(crate) listen: SocketAddr,
    /// How often resources are offered when nothing happens (agents joining, tasks ending
    /// and submissions offer at once).
    #[arg(long, default_value = "1s")]
    pub(crate) offer_interval: humantime::Duration,
    /// This master's raft id in a multi-master group (see --peers).
    #[arg(long, default_value_t = 1)]
    pub(crate) id: u64,
    /// Every master of the group, this one included: ID=HOST:PORT,... (e.g.
    /// 1=10.0.0.1:7433,2=10.0.0.2:7433,3=10.0.0.3:7433). Without it the master runs alone.
    #[arg(long, value_name = "ID=HOST:PORT,...", conflicts_with = "join")]
    pub(crate) peers: Option<String>,
    /// Belong to no group until `wasmos cluster init` starts one here or `wasmos cluster join`
    /// (asked of a group's leader) adds this master. A restart resumes whatever group it joined.
    #[arg(long)]
    pub(crate) join: bool,
    /// The address other masters reach this one at [default: --listen, which must then not be
    /// a wildcard such as 0.0.0.0].
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) advertise: Option<SocketAddr>,
    /// The shortest time followers wait after the leader's last heartbeat before electing a new
    /// one (plus a lease and a random part, up to four times it in all); heartbeats go out
    /// every half of it, and each replication message must be answered within a heartbeat.
    /// Raise it on slow or distant networks, where a short one causes needless elections.
    #[arg(long, default_value = "100ms")]
    pub(crate) election_timeout: humantime::Duration,
    /// How long an agent may go without a heartbeat before it is declared lost: its tasks are
    /// reported lost to their frameworks (batch jobs re-run them, services replace them).
    #[arg(long, default_value = "15s")]
    pub(crate) agent_timeout: humantime::Duration,
    /// Also serve the HTTPS/JSON API here (the scheduler API for frameworks in any language;
    /// same certificates as QUIC), e.g. 127.0.0.1:7480.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) http_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// Renew certificates for those that ask (`wasmos cert renew`, agents and masters before
    /// theirs expire), and this master's own, signed with this CA key: the key of one of the
    /// CAs in --ca. Read at each renewal, so a new one applies without a restart. A master
    /// without one renews its own certificate from a peer master that has one.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_key: Option<PathBuf>,
    /// How long a renewed certificate is valid.
    #[arg(long, default_value = "30d", value_name = "DURATION")]
    pub(crate) leaf_lifetime: humantime::Duration,
    #[command(flatten)]
    pub(crate) tenancy: TenancyArgs,
    #[command(flatten)]
    pub(crate) offers: OfferArgs,
}

/// How masters make offers (`wasmos master`, and the masters `wasmos dev` starts).
#[derive(Args)]
pub(crate) struct OfferArgs {
    /// The least CPU and memory an offer carries, e.g. cpu=10m,mem=32MiB (Mesos'
    /// min_allocatable_resources): lower it to place tasks smaller than that, which an agent's
    /// leftovers below it could otherwise never hold.
    #[arg(long, value_name = "RESOURCES", default_value = "cpu=10m,mem=32MiB")]
    pub(crate) min_offer: String,
}

impl OfferArgs {
    /// The allocator's settings: `--min-offer` is cpu and mem only, each above 0.
    pub(crate) fn config(&self) -> Result<wasmos_alloc::Config> {
        let list = &self.min_offer;
        let least = parse_resource_list(list, "--min-offer")?;
        if !least.scalars.is_empty() || least.disk_bytes > 0 {
            bail!("--min-offer `{list}`: only cpu and mem have a minimum");
        }
        if least.cpu_millis == 0 || least.mem_bytes == 0 {
            bail!(
                "--min-offer `{list}`: give both cpu and mem, each above 0 (e.g. cpu=1m,mem=1MiB)"
            );
        }
        Ok(wasmos_alloc::Config {
            min_offer_cpu_millis: least.cpu_millis,
            min_offer_mem_bytes: least.mem_bytes,
            ..wasmos_alloc::Config::default()
        })
    }

    /// The same settings as `wasmos master` arguments.
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec!["--min-offer".to_string(), self.min_offer.clone()]
    }
}

/// What masters do to keep tenants apart over time: secrets, retention, admission, audit.
#[derive(Args)]
pub(crate) struct TenancyArgs {
    /// The key sealing tasks' secrets in the replicated state (64 hex digits; created if
    /// missing). Every master of a group needs the same file. [default: DATA_DIR/secrets.key]
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_key: Option<PathBuf>,
    /// How long ended tasks (with their logs and outputs), ended jobs and blobs no task names
    /// are kept.
    #[arg(long, default_value = "24h")]
    pub(crate) retention: humantime::Duration,
    /// Most ended tasks kept, whatever their age (the oldest go first).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) retention_count: u64,
    /// Writes (submissions, uploads, kills, ...) each tenant may make per second, sustained;
    /// past it a tenant's requests wait their turn (up to 5 s), without slowing other tenants.
    #[arg(long, default_value_t = 200)]
    pub(crate) tenant_write_rate: u32,
    /// Reads (lists, shows, `logs`, blob downloads, `--stale` ones too) each tenant may make per
    /// second, sustained; past it they wait their turn (up to 5 s), as writes do.
    #[arg(long, default_value_t = 1000)]
    pub(crate) tenant_read_rate: u32,
    /// Scheduler API calls (over QUIC or HTTPS) each tenant's frameworks may make per second
    /// together; past it a framework's calls are taken more slowly, never dropped.
    #[arg(long, default_value_t = 1000)]
    pub(crate) tenant_framework_call_rate: u32,
    /// `wasmos logs -f` streams each tenant may hold open at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) tenant_follows: u32,
    /// How long a task of a role below its quota guarantee waits for room before tasks of
    /// roles above theirs are preempted for it (lowest priority, then newest; reason
    /// `preempted`).
    #[arg(long, default_value = "30s")]
    pub(crate) preemption_grace: humantime::Duration,
    /// How long the audit log keeps its entries (`wasmos audit`).
    #[arg(long, default_value = "30d")]
    pub(crate) audit_retention: humantime::Duration,
    /// Audit reads (lists, shows, logs, downloads) too, not only changes and refusals.
    #[arg(long)]
    pub(crate) audit_reads: bool,
    /// Keep no audit log at all.
    #[arg(long, conflicts_with = "audit_reads")]
    pub(crate) no_audit: bool,
}

impl TenancyArgs {
    pub(crate) fn config(&self) -> wasmos_master::TenancyConfig {
        wasmos_master::TenancyConfig {
            secrets_key: self.secrets_key.clone(),
            retention: self.retention.into(),
            retention_count: self.retention_count,
            tenant_write_rate: self.tenant_write_rate,
            tenant_read_rate: self.tenant_read_rate,
            tenant_framework_call_rate: self.tenant_framework_call_rate,
            tenant_follows: self.tenant_follows,
            preemption_grace: self.preemption_grace.into(),
            audit: wasmos_master::AuditConfig {
                enabled: !self.no_audit,
                reads: self.audit_reads,
                retention: self.audit_retention.into(),
            },
        }
    }

    /// The same settings as `wasmos master` arguments (for the masters `wasmos dev` starts).
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--retention".to_string(),
            self.retention.to_string(),
            "--retention-count".to_string(),
            self.retention_count.to_string(),
            "--tenant-write-rate".to_string(),
            self.tenant_write_rate.to_string(),
            "--tenant-read-rate".to_string(),
            self.tenant_read_rate.to_string(),
            "--tenant-framework-call-rate".to_string(),
            self.tenant_framework_call_rate.to_string(),
            "--tenant-follows".to_string(),
            self.tenant_follows.to_string(),
            "--preemption-grace".to_string(),
            self.preemption_grace.to_string(),
            "--audit-retention".to_string(),
            self.audit_retention.to_string(),
        ];
        if self.audit_reads {
            args.push("--audit-reads".to_string());
        }
        if self.no_audit {
            args.push("--no-audit".to_string());
        }
        if let Some(k) = &self.secrets_key {
            args.push("--secrets-key".to_string());
            args.push(k.display().to_string());
        }
        args
    }
}

pub(crate) async fn master_cmd(args: MasterArgs) -> Result<ExitCode> {
    let creds = args.tls.credentials()?;
    let peers = args
        .peers
        .as_deref()
        .map(|p| parse_peers(p, args.id))
        .transpose()?;
    let election: Duration = args.election_timeout.into();
    if election < Duration::from_millis(50) {
        bail!("--election-timeout must be at least 50ms");
    }
    let peers = match (peers, args.join) {
        (Some(p), _) => Some(p),
        (None, true) => {
            let addr = args.advertise.unwrap_or(args.listen);
            if addr.ip().is_unspecified() {
                bail!(
                    "--join needs an address the other masters can reach: pass --advertise HOST:PORT (--listen is {})",
                    args.listen
                );
            }
            Some(std::collections::BTreeMap::from([(
                args.id,
                addr.to_string(),
            )]))
        }
        (None, false) => None,
    };
    let cfg = wasmos_master::MasterConfig {
        tenancy: args.tenancy.config(),
        join: args.join,
        raft: wasmos_master::RaftOptions::with_election_timeout(election),
        offer_interval: args.offer_interval.into(),
        agent_timeout: args.agent_timeout.into(),
        allocator: args.offers.config()?,
        node_id: args.id,
        peers,
        renewal: renewal(args.ca_key, args.leaf_lifetime)?,
        cert_files: args.tls.files(),
        ..wasmos_master::MasterConfig::new(args.data_dir, args.listen)
    };
    let master = wasmos_master::Master::start(cfg, &creds).await?;
    // A renewed certificate or a new CA set on disk applies without a restart.
    let follow = args.tls.files().map(|files| {
        tokio::spawn(wasmos_net::follow_files(
            creds.clone(),
            files,
            wasmos_net::RELOAD_EVERY,
        ))
    });
    eprintln!("wasmos master listening on {}", master.local_addr());
    let web = match args.http_listen {
        Some(addr) => {
            // The HTTPS handshakes check the same revocations as the QUIC ones.
            let creds = creds.clone().with_revocations(master.revocations());
            let web = wasmos_web::serve(&master, &creds, addr).await?;
            eprintln!("wasmos master HTTPS API on {}", web.local_addr());
            Some(web)
        }
        None => None,
    };
    wait_for_stop().await;
    if let Some(f) = follow {
        f.abort();
    }
    if let Some(web) = web {
        web.shutdown();
    }
    master.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `--ca-key` and `--leaf-lifetime` as the master's renewal settings.
pub(crate) fn renewal(
    ca_key: Option<PathBuf>,
    lifetime: humantime::Duration,
) -> Result<Option<wasmos_master::Renewal>> {
    let lifetime: Duration = lifetime.into();
    if lifetime < Duration::from_secs(10) || lifetime > wasmos_net::pki::MAX_LIFETIME {
        bail!("--leaf-lifetime must be between 10s and 50 years");
    }
    Ok(ca_key.map(|ca_key| wasmos_master::Renewal { ca_key, lifetime }))
}

/// `--peers 1=HOST:PORT,2=HOST:PORT,...`: every member of the group, `id` among them.
pub(crate) fn parse_peers(list: &str, id: u64) -> Result<std::collections::BTreeMap<u64, String>> {
    let mut out = std::collections::BTreeMap::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (n, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--peers: `{part}` is not ID=HOST:PORT"))?;
        let n: u64 = n
            .parse()
            .map_err(|_| anyhow!("--peers: `{n}` in `{part}` is not a master id (a number)"))?;
        addr.parse::<SocketAddr>()
            .map_err(|_| anyhow!("--peers: `{addr}` in `{part}` is not HOST:PORT"))?;
        if out.insert(n, addr.to_string()).is_some() {
            bail!("--peers: master {n} is listed twice");
        }
    }
    if !out.contains_key(&id) {
        bail!("--peers must list this master too (--id {id})");
    }
    Ok(out)
}
