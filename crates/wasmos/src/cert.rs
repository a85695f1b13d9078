//! `wasmos cert issue`: certificates from a cluster CA, for masters, agents, operators and
//! tenants; and the PKI directory's files, which `wasmos dev` creates the same way.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use wasmos_net::pki::{self, CaBundle};
use wasmos_net::{Credentials, Identity};
use wasmos_proto::{ClientRequest, ClientResponse};

use crate::connect::Target;
use crate::output::{OutputArg, print_list};

#[derive(Subcommand)]
pub(crate) enum CertCmd {
    /// Writes NAME.pem and NAME.key into the CA's directory (kept if they exist), signed by
    /// its ca.pem/ca.key (created there first if missing): `--master m2`, `--agent host-7`,
    /// `--operator alice`, `--tenant acme/alice`.
    Issue {
        /// The directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        #[arg(long, value_name = "NAME", group = "who")]
        master: Option<String>,
        #[arg(long, value_name = "NAME", group = "who")]
        agent: Option<String>,
        #[arg(long, value_name = "NAME", group = "who")]
        operator: Option<String>,
        #[arg(long, value_name = "TENANT/USER", group = "who")]
        tenant: Option<String>,
        /// How long the certificate is valid from now, e.g. 30d (default: until 2074).
        /// Agents renew theirs from the masters before it ends; others with `cert renew`.
        #[arg(long, value_name = "DURATION")]
        lifetime: Option<humantime::Duration>,
    },
    /// Get a new certificate for your own identity from the masters (one started with
    /// --ca-key), for a new key made here: the key and certificate files your client config
    /// names are replaced. The private key never leaves this machine.
    Renew {
        /// Operators: instead, ask every connected agent to renew its own certificate now
        /// (after a CA rollover's second step, so they move to the new CA at once).
        #[arg(long)]
        agents: bool,
    },
    /// Operators: revoke a certificate by its serial number (`wasmos cert serial FILE`
    /// prints it), or every certificate of an identity. Every master refuses it from then on
    /// and closes its open connections.
    Revoke {
        #[arg(long, value_name = "HEX", group = "what", required = true)]
        serial: Option<String>,
        #[arg(long, value_name = "wasmos://...", group = "what")]
        identity: Option<String>,
    },
    /// Operators: the revoked serial numbers and identities, who revoked each and when.
    ListRevoked(OutputArg),
    /// Print the serial number and identity of a certificate (PEM file).
    Serial { file: PathBuf },
}

pub(crate) async fn run(target: &Target, cmd: CertCmd) -> Result<ExitCode> {
    match cmd {
        CertCmd::Revoke { serial, identity } => {
            let what = serial
                .as_deref()
                .or(identity.as_deref())
                .unwrap_or_default()
                .to_string();
            match target
                .ask(ClientRequest::Revoke { serial, identity })
                .await?
            {
                ClientResponse::Ok => println!("revoked {what}"),
                other => bail!("unexpected answer to cert revoke: {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::ListRevoked(out) => {
            let mut list = Vec::new();
            loop {
                let after = list
                    .last()
                    .map(|r: &wasmos_proto::RevokedInfo| (r.kind.clone(), r.value.clone()));
                let ClientResponse::Revoked(page) =
                    target.ask(ClientRequest::ListRevoked { after }).await?
                else {
                    bail!("unexpected answer to cert list-revoked");
                };
                if page.is_empty() {
                    break;
                }
                list.extend(page);
            }
            let now = crate::output::now_ms();
            print_list(out.format, &list, &["KIND", "REVOKED", "BY", "AGE"], |r| {
                vec![
                    r.kind.clone(),
                    r.value.clone(),
                    r.by.clone(),
                    crate::output::age(now, r.at_ms),
                ]
            })?;
            Ok(ExitCode::SUCCESS)
        }
        CertCmd::Serial { file } => {
            let pem = read(&file)?;
            let serial = pki::serial_of_pem(&pem)
                .with_context(|| format!("{} holds no certificate", file.display()))?;
            let who =
                pki::identity_of_pem(&pem).map_or_else(|| "(no identity)".into(), |i| i.to_uri());
            println!("{serial}  {who}");
            Ok(ExitCode::SUCCESS)
        }
        issue @ CertCmd::Issue { .. } => issue_cmd(issue),
        CertCmd::Renew { agents: false } => renew(target).await,
        CertCmd::Renew { agents: true } => {
            let ClientResponse::AgentsAsked { agents } =
                target.ask(ClientRequest::RenewAgents).await?
            else {
                bail!("unexpected answer to cert renew --agents");
            };
            println!("asked {} agent(s) to renew now", agents.len());
            for a in agents {
                println!("{a}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn issue_cmd(cmd: CertCmd) -> Result<ExitCode> {
    let CertCmd::Issue {
        pki,
        master,
        agent,
        operator,
        tenant,
        lifetime,
    } = cmd
    else {
        bail!("not an issue command");
    };
    let (who, file) = match (master, agent, operator, tenant) {
        (Some(n), ..) => (Identity::Master(n.clone()), n),
        (_, Some(n), ..) => (Identity::Agent(n.clone()), n),
        (_, _, Some(n), _) => (Identity::Operator(n.clone()), n),
        (_, _, _, Some(t)) => {
            let (tenant, user) = t
                .split_once('/')
                .ok_or_else(|| anyhow!("--tenant `{t}` is not TENANT/USER"))?;
            let who = Identity::Tenant {
                tenant: tenant.into(),
                user: user.into(),
            };
            (who, format!("{tenant}-{user}"))
        }
        _ => bail!("say whose certificate: --master, --agent, --operator or --tenant"),
    };
    // The identity URI must parse back: this checks the names.
    Identity::from_uri(&who.to_uri()).map_err(|e| anyhow!("{e}"))?;
    if !pki.join("ca.key").is_file() {
        eprintln!("creating a new cluster CA in {}", pki.display());
    }
    let ca = ensure_ca(&pki)?;
    let files = ensure_cert(&pki, &ca, &who, &file, lifetime.map(Into::into))?;
    println!("{}\n{}", files.cert.display(), files.key.display());
    Ok(ExitCode::SUCCESS)
}

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

/// The certificate for `who` named `file`, issued on first use (valid for `lifetime`, or
/// until 2074).
pub fn ensure_cert(
    pki_dir: &Path,
    ca: &CaBundle,
    who: &Identity,
    file: &str,
    lifetime: Option<std::time::Duration>,
) -> Result<PkiFiles> {
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
        let expired = pki::der_of_pem(&pem)
            .and_then(|der| pki::validity_of_der(&der))
            .is_some_and(|(_, until)| until < crate::output::now_ms() as i64 / 1000);
        if expired && held.as_ref() == Some(who) {
            // A short-lived certificate that ran out while nothing renewed it (a dev cluster
            // stopped for longer than its lifetime): issued again.
            eprintln!("{} has expired; issuing it again", files.cert.display());
            return issue_into(ca, who, &files, lifetime);
        }
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
    issue_into(ca, who, &files, lifetime)
}

fn issue_into(
    ca: &CaBundle,
    who: &Identity,
    files: &PkiFiles,
    lifetime: Option<std::time::Duration>,
) -> Result<PkiFiles> {
    let ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
    let issued = pki::issue_for(ca, who, &["localhost".to_string()], &ips, lifetime)?;
    write_private(&files.key, &issued.key_pem)?;
    std::fs::write(&files.cert, &issued.cert_pem)
        .with_context(|| format!("cannot write {}", files.cert.display()))?;
    Ok(PkiFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
    })
}

pub fn credentials(ca: &CaBundle, files: &PkiFiles) -> Result<Credentials> {
    Ok(Credentials::from_pem(
        &ca.cert_pem,
        &read(&files.cert)?,
        &read(&files.key)?,
    )?)
}

/// `wasmos cert renew`: a new key here, a certificate for it from the masters, both files of
/// the client config replaced.
async fn renew(target: &Target) -> Result<ExitCode> {
    let cfg = target.load()?;
    let files = wasmos_net::CredentialFiles {
        ca: cfg.dir.join(&cfg.ca),
        cert: cfg.dir.join(&cfg.cert),
        key: cfg.dir.join(&cfg.key),
    };
    let (csr, key) = pki::renewal_request()?;
    let ClientResponse::Certificate { cert_pem } =
        target.ask(ClientRequest::RenewCertificate { csr }).await?
    else {
        bail!("unexpected answer to cert renew");
    };
    let creds = files.install(&cert_pem, &key).map_err(|e| anyhow!(e))?;
    let until = pki::validity_of_der(&creds.leaf()).map_or_else(
        || "?".to_string(),
        |(_, until)| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(until.max(0) as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    );
    println!(
        "renewed {} (valid until {until}); new key in {}",
        files.cert.display(),
        files.key.display()
    );
    Ok(ExitCode::SUCCESS)
}
