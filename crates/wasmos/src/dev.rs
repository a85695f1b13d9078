//! `wasmos dev`: a whole cluster in one process (a master and N agents on loopback, still talking
//! QUIC + mTLS to each other), its PKI created on first start, and the demo job.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use wasmos_net::pki::{self, CaBundle};
use wasmos_net::{Credentials, Identity};
use wasmos_proto::Resources;

use crate::config::{CONFIG_FILE, ClientConfig};

/// PEM files of one identity inside `<data-dir>/pki`.
pub struct PkiFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    wasmos_net::write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The dev cluster's CA, created on first start.
pub fn ensure_ca(pki_dir: &Path) -> Result<CaBundle> {
    wasmos_net::create_private_dir(pki_dir)
        .with_context(|| format!("cannot create {}", pki_dir.display()))?;
    let cert = pki_dir.join("ca.pem");
    let key = pki_dir.join("ca.key");
    if cert.exists() && key.exists() {
        return Ok(CaBundle {
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
        });
    }
    let ca = pki::new_ca("dev")?;
    write_private(&key, &ca.key_pem)?;
    std::fs::write(&cert, &ca.cert_pem)
        .with_context(|| format!("cannot write {}", cert.display()))?;
    Ok(ca)
}

/// The certificate for `who` named `file`, issued on first use.
pub fn ensure_cert(pki_dir: &Path, ca: &CaBundle, who: &Identity, file: &str) -> Result<PkiFiles> {
    // Identity names may hold dots between labels (`host.example`), never a leading one or
    // a path.
    if matches!(file, "ca" | "secrets")
        || file.is_empty()
        || file.starts_with('.')
        || file.contains("..")
        || file.contains(['/', '\\'])
    {
        bail!(
            "`{file}` cannot name a certificate file in {}",
            pki_dir.display()
        );
    }
    let files = PkiFiles {
        cert: pki_dir.join(format!("{file}.pem")),
        key: pki_dir.join(format!("{file}.key")),
    };
    if files.cert.exists() || files.key.exists() {
        // Only ever hand back the same identity's files: names of different identities can
        // meet (`--agent acme-x` and `--tenant acme/x`).
        let pem = read(&files.cert)?;
        let held = pki::identity_of_pem(&pem);
        if held.as_ref() != Some(who) || !files.key.exists() {
            bail!(
                "{} already holds {}, not {who}: choose another name or directory",
                files.cert.display(),
                held.map_or_else(
                    || "something else".to_string(),
                    |h| format!("the certificate of {h}")
                )
            );
        }
        return Ok(files);
    }
    let ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
    let issued = pki::issue(ca, who, &["localhost".to_string()], &ips)?;
    write_private(&files.key, &issued.key_pem)?;
    std::fs::write(&files.cert, &issued.cert_pem)
        .with_context(|| format!("cannot write {}", files.cert.display()))?;
    Ok(files)
}

pub fn credentials(ca: &CaBundle, files: &PkiFiles) -> Result<Credentials> {
    Ok(Credentials::from_pem(
        &ca.cert_pem,
        &read(&files.cert)?,
        &read(&files.key)?,
    )?)
}

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
}

/// A running dev cluster.
pub struct DevCluster {
    pub master: wasmos_master::Master,
    pub web: wasmos_web::WebServer,
    pub config_path: PathBuf,
    shutdown: watch::Sender<bool>,
    agents: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn start(opts: &DevOptions) -> Result<DevCluster> {
    if opts.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let data = &opts.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create {}", data.display()))?;
    let pki_dir = data.join("pki");
    let ca = ensure_ca(&pki_dir)?;
    let master_files = ensure_cert(&pki_dir, &ca, &Identity::Master("m1".into()), "master")?;
    // The operator certificate is what client.toml points the CLI at.
    ensure_cert(
        &pki_dir,
        &ca,
        &Identity::Operator("admin".into()),
        "operator",
    )?;

    let master = wasmos_master::Master::start(
        wasmos_master::MasterConfig {
            agent_timeout: opts.agent_timeout,
            tenancy: opts.tenancy.clone(),
            ..wasmos_master::MasterConfig::new(data.join("master"), opts.listen)
        },
        &credentials(&ca, &master_files)?,
    )
    .await
    .context("starting the master")?;
    let addr = master.local_addr();
    // The HTTPS/JSON API on the same interface, on a free port.
    let web = wasmos_web::serve(
        master.frameworks(),
        &credentials(&ca, &master_files)?,
        std::net::SocketAddr::new(opts.listen.ip(), 0),
    )
    .await
    .context("starting the HTTPS API")?;

    let config_path = data.join(CONFIG_FILE);
    ClientConfig {
        http: Some(web.local_addr()),
        master: addr,
        masters: Vec::new(),
        ca: PathBuf::from("pki").join("ca.pem"),
        cert: PathBuf::from("pki").join("operator.pem"),
        key: PathBuf::from("pki").join("operator.key"),
        dir: data.clone(),
    }
    .write(&config_path)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut agents = Vec::new();
    for i in 1..=opts.agents {
        let name = format!("agent-{i}");
        let files = ensure_cert(&pki_dir, &ca, &Identity::Agent(name.clone()), &name)?;
        let mut attributes = wasmos_agent::default_attributes();
        attributes.insert("dev".into(), "true".into());
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
        };
        let creds = credentials(&ca, &files)?;
        let rx = shutdown_rx.clone();
        agents.push(tokio::spawn(async move {
            if let Err(e) = wasmos_agent::run(cfg, creds, rx).await {
                tracing::error!("agent {name} stopped: {e}");
            }
        }));
    }
    Ok(DevCluster {
        master,
        web,
        config_path,
        shutdown,
        agents,
    })
}

impl DevCluster {
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for a in self.agents {
            let _ = a.await;
        }
        self.web.shutdown();
        self.master.shutdown().await;
    }
}

pub fn banner(cluster: &DevCluster, agents: u32) -> String {
    format!(
        "wasmos dev: master on {} with {agents} agent(s); client config written to {}",
        cluster.master.local_addr(),
        cluster.config_path.display()
    )
}
