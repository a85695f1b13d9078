//! `wasmos role set` and `wasmos role list`: weights and quotas of roles, and what each holds.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use wasmos_proto::{ClientRequest, ClientResponse, Resources, RoleInfo, format_bytes, format_cpu};

use crate::{Format, OutputArg, ask, parse_resource_list, print_json, table};

#[derive(Subcommand)]
pub(crate) enum RoleCmd {
    /// Change a role's weight or quota (operators only). Unnamed settings stay as they are.
    Set(SetArgs),
    /// Roles with their weight, quota and what they hold (tenants see their own).
    List(OutputArg),
}

#[derive(Args)]
pub(crate) struct SetArgs {
    /// The role, e.g. tenant-a or tenant-a/analytics.
    role: String,
    /// Relative weight in DRF (1 is the default; 2 gets twice the share).
    #[arg(long)]
    weight: Option<f64>,
    /// Resources offered to the role first and held back from others while it is short, e.g.
    /// cpu=4,mem=8GiB. Only the kinds named are guaranteed.
    #[arg(long, value_name = "RESOURCES")]
    guarantee: Option<String>,
    /// Most the role may hold or be offered, e.g. cpu=8 (only the kinds named are limited).
    #[arg(long, value_name = "RESOURCES", conflicts_with = "no_limit")]
    limit: Option<String>,
    /// Remove the role's limit.
    #[arg(long)]
    no_limit: bool,
}

pub(crate) async fn run(config: Option<&Path>, cmd: RoleCmd) -> Result<ExitCode> {
    match cmd {
        RoleCmd::Set(args) => set(config, args).await,
        RoleCmd::List(out) => list(config, out.format).await,
    }
}

async fn set(config: Option<&Path>, args: SetArgs) -> Result<ExitCode> {
    let weight_milli = match args.weight {
        None => None,
        Some(w) if (0.001..=1_000_000.0).contains(&w) => Some((w * 1000.0).round() as u64),
        Some(w) => bail!("--weight {w}: a weight is a number from 0.001 to 1000000"),
    };
    let guarantee = args
        .guarantee
        .as_deref()
        .map(|g| parse_resource_list(g, "--guarantee"))
        .transpose()?;
    let limit = match (args.limit.as_deref(), args.no_limit) {
        (Some(l), _) => Some(Some(parse_resource_list(l, "--limit")?)),
        (None, true) => Some(None),
        (None, false) => None,
    };
    if weight_milli.is_none() && guarantee.is_none() && limit.is_none() {
        bail!("nothing to change: give --weight, --guarantee, --limit or --no-limit");
    }
    let req = ClientRequest::SetRole {
        role: args.role.clone(),
        weight_milli,
        guarantee,
        limit,
    };
    ask(config, req).await?;
    println!("role {} updated", args.role);
    Ok(ExitCode::SUCCESS)
}

/// CPU and memory of `r` (CPU without a unit, `500m` or `2`), plus any custom resource it
/// has, or `-` when empty.
pub(crate) fn short(r: &Resources) -> String {
    if r.is_empty() {
        return "-".into();
    }
    // Zero kinds are left out: in a limit or guarantee they are not constrained.
    let mut parts = Vec::new();
    if r.cpu_millis > 0 {
        parts.push(format_cpu(r.cpu_millis));
    }
    if r.mem_bytes > 0 {
        parts.push(format_bytes(r.mem_bytes));
    }
    parts.extend(r.scalars.iter().map(|(k, v)| format!("{k}={v}")));
    parts.join(" ")
}

async fn list(config: Option<&Path>, format: Format) -> Result<ExitCode> {
    let ClientResponse::Roles(roles) = ask(config, ClientRequest::ListRoles).await? else {
        bail!("unexpected answer to role list");
    };
    match format {
        Format::Json => print_json(&roles)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = roles.iter().map(row).collect();
            println!(
                "{}",
                table::render(
                    &[
                        "ROLE",
                        "WEIGHT",
                        "SHARE",
                        "ALLOCATED",
                        "OFFERED",
                        "RESERVED",
                        "GUARANTEE",
                        "LIMIT",
                        "FRAMEWORKS"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row(r: &RoleInfo) -> Vec<String> {
    vec![
        r.role.clone(),
        format!("{}", r.weight_milli as f64 / 1000.0),
        format!("{:.1}%", r.share_ppm as f64 / 10_000.0),
        short(&r.allocated),
        short(&r.offered),
        short(&r.reserved),
        short(&r.guarantee),
        r.limit.as_ref().map_or_else(|| "-".into(), short),
        r.frameworks.to_string(),
    ]
}
