//! Flag parsers several commands share: certificates, resource lists, reservations, KEY=VALUE pairs.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use wasmos_proto::{Resources, parse_bytes, parse_cpu};

#[derive(Args)]
pub(crate) struct TlsArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the CA.
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
}

impl TlsArgs {
    /// The three files, when all are given: what the node follows for renewals and rollovers.
    pub(crate) fn files(&self) -> Option<wasmos_net::CredentialFiles> {
        Some(wasmos_net::CredentialFiles {
            ca: self.ca.clone()?,
            cert: self.cert.clone()?,
            key: self.key.clone()?,
        })
    }

    pub(crate) fn credentials(&self) -> Result<wasmos_net::Credentials> {
        let read = |what: &str, p: &Option<PathBuf>| -> Result<String> {
            let p = p.as_ref().ok_or_else(|| anyhow!("--{what} is required"))?;
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        Ok(wasmos_net::Credentials::from_pem(
            &read("ca", &self.ca)?,
            &read("cert", &self.cert)?,
            &read("key", &self.key)?,
        )?)
    }
}

/// `base` plus the custom scalar resources given as NAME=AMOUNT to `flag`.
pub(crate) fn with_scalars(mut base: Resources, pairs: &[String], flag: &str) -> Result<Resources> {
    for (name, amount) in key_values(pairs, flag)? {
        let valid = name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid || matches!(name.as_str(), "cpu" | "mem" | "disk") {
            bail!(
                "{flag} `{name}={amount}`: a custom resource name is lowercase letters, digits, `-` and `_` (not cpu, mem or disk, which have their own flags)"
            );
        }
        // Bandwidth is bytes per second, so it takes byte units (`net=10MiB`).
        let amount: u64 = match name.as_str() {
            wasmos_proto::NET => wasmos_proto::parse_bytes(&amount).map_err(|_| {
                anyhow!("{flag} `{name}={amount}`: the amount is not bytes per second (e.g. 10MiB)")
            })?,
            _ => amount.parse().map_err(|_| {
                anyhow!("{flag} `{name}={amount}`: the amount is not a whole number")
            })?,
        };
        let total = base.scalar(&name).saturating_add(amount);
        base = base.with_scalar(&name, total);
    }
    Ok(base)
}

/// `cpu=2,mem=4GiB,gpu=1`: CPU in cores or millicores, memory and disk in bytes with units,
/// anything else a custom resource. Kinds not named are zero.
pub(crate) fn parse_resource_list(list: &str, flag: &str) -> Result<Resources> {
    let mut r = Resources::default();
    let mut scalars = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("{flag} `{list}`: `{part}` is not KIND=AMOUNT (e.g. cpu=2,mem=4GiB)");
        };
        let bad = |e: String| anyhow!("{flag} `{list}`: {k}: {e}");
        match k {
            "cpu" => r.cpu_millis = parse_cpu(v).map_err(|e| bad(e.to_string()))?,
            "mem" => r.mem_bytes = parse_bytes(v).map_err(|e| bad(e.to_string()))?,
            "disk" => r.disk_bytes = parse_bytes(v).map_err(|e| bad(e.to_string()))?,
            _ => scalars.push(part.to_string()),
        }
    }
    with_scalars(r, &scalars, flag)
}

/// `ROLE:RESOURCES` of `wasmos agent --reserve` (and `dev --agent-reserve`).
pub(crate) fn parse_reservation(s: &str, flag: &str) -> Result<(String, Resources)> {
    let Some((role, list)) = s.split_once(':') else {
        bail!("{flag} `{s}` is not ROLE:RESOURCES (e.g. team-a:cpu=1,mem=1GiB)");
    };
    wasmos_alloc::Role::new(role).map_err(|e| anyhow!("{flag} `{s}`: {e}"))?;
    Ok((role.to_string(), parse_resource_list(list, flag)?))
}

pub(crate) fn key_values(pairs: &[String], what: &str) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{what} `{p}` is not KEY=VALUE"))
        })
        .collect()
}
