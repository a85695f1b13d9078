//! `wasmos cert issue`: certificates from a cluster CA, for masters, agents, operators and tenants.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;

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
    },
}

pub(crate) fn run(cmd: CertCmd) -> Result<ExitCode> {
    let CertCmd::Issue {
        pki,
        master,
        agent,
        operator,
        tenant,
    } = cmd;
    use wasmos_net::Identity;
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
    let ca = crate::dev::ensure_ca(&pki)?;
    let files = crate::dev::ensure_cert(&pki, &ca, &who, &file)?;
    println!("{}\n{}", files.cert.display(), files.key.display());
    Ok(ExitCode::SUCCESS)
}
