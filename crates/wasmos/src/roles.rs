//! `wasmos role set/list/show` and `wasmos reservation list/remove`: weights, quotas, ceilings
//! and egress rules of roles, what each holds, and dynamic reservations.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use wasmos_proto::{
    AgentId, Ceilings, ClientRequest, ClientResponse, EgressRule, Resources, RoleInfo,
    format_bytes, format_cpu, format_duration_ms, parse_bytes,
};

use crate::args::parse_resource_list;
use crate::connect::Target;
use crate::output::{Format, OutputArg, print_json, print_list};

#[derive(Subcommand)]
pub(crate) enum RoleCmd {
    /// Change a role's weight or quota (operators only). Unnamed settings stay as they are.
    Set(Box<SetArgs>),
    /// Roles with their weight, quota and what they hold (tenants see their own).
    List(OutputArg),
    /// One role in full: quota, ceilings in force, reservation allowance, egress rules.
    Show {
        role: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Subcommand)]
pub(crate) enum ReservationCmd {
    /// Dynamic reservations by agent and role, with what live tasks hold of them (tenants see
    /// their own roles').
    List(OutputArg),
    /// Remove what ROLE dynamically reserved on AGENT, except what its live tasks hold
    /// (operators only).
    Remove { agent: String, role: String },
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
    /// Ceiling: the longest timeout a task may ask for (default 24h), e.g. 2h.
    #[arg(long, value_name = "DURATION")]
    max_timeout: Option<humantime::Duration>,
    /// Ceiling: the largest output cap per stream (default 64MiB).
    #[arg(long, value_name = "BYTES")]
    max_output: Option<String>,
    /// Ceiling: bytes of arguments plus environment of one task (default 256KiB).
    #[arg(long, value_name = "BYTES")]
    max_spec_bytes: Option<String>,
    /// Ceiling: tasks not yet ended, pending and running (default 10000).
    #[arg(long, value_name = "N")]
    max_tasks: Option<u64>,
    /// Ceiling: distinct roles in use beneath this one (default 64).
    #[arg(long, value_name = "N")]
    max_sub_roles: Option<u64>,
    /// Ceiling: frameworks and running jobs at once (default 256).
    #[arg(long, value_name = "N")]
    max_frameworks: Option<u64>,
    /// Forget the role's own ceilings and storage quota: the defaults (for sub-roles, their
    /// ancestors') hold again. --max-* and --storage-quota given too are set afterwards.
    #[arg(long)]
    default_ceilings: bool,
    /// Storage quota of the tenant: bytes of blobs it holds and of its tasks' logs (default
    /// 10GiB; top-level roles).
    #[arg(long, value_name = "BYTES")]
    storage_quota: Option<String>,
    /// Most the role may hold in dynamic reservations (its guarantee by default), e.g.
    /// cpu=2,mem=4GiB; `none` goes back to the guarantee.
    #[arg(long, value_name = "RESOURCES")]
    reservation_allowance: Option<String>,
    /// Egress: let the role's tasks reach CIDR[:PORT[-PORT]] even where the agents protect it
    /// (loopback, link-local, the agent's addresses). Repeatable; with --egress-deny these
    /// replace the role's rules (its allow rules are tried first, then its deny rules).
    #[arg(long, value_name = "CIDR[:PORTS]")]
    egress_allow: Vec<String>,
    /// Egress: keep the role's tasks from CIDR[:PORT[-PORT]] whatever they were granted.
    #[arg(long, value_name = "CIDR[:PORTS]")]
    egress_deny: Vec<String>,
    /// Remove the role's egress rules.
    #[arg(long, conflicts_with_all = ["egress_allow", "egress_deny"])]
    egress_clear: bool,
    /// Run only bundles signed by one of these registered signing keys (`wasmos signing-key
    /// list`), e.g. ed25519:1a2b3c4d5e6f7a8b; sub-roles too, unless one names its own. `none`
    /// lifts the requirement.
    #[arg(long, value_name = "KEYID,...|none", value_delimiter = ',')]
    require_signed_by: Option<Vec<String>>,
}

pub(crate) async fn run(target: &Target, cmd: RoleCmd) -> Result<ExitCode> {
    match cmd {
        RoleCmd::Set(args) => set(target, *args).await,
        RoleCmd::List(out) => list(target, out.format).await,
        RoleCmd::Show { role, out } => show(target, &role, out.format).await,
    }
}

pub(crate) async fn reservations(target: &Target, cmd: ReservationCmd) -> Result<ExitCode> {
    match cmd {
        ReservationCmd::List(out) => {
            let ClientResponse::Reservations(list) =
                target.ask(ClientRequest::ListReservations).await?
            else {
                bail!("unexpected answer to reservation list");
            };
            let header = ["AGENT", "ROLE", "RESERVED", "HELD BY TASKS"];
            print_list(out.format, &list, &header, |r| {
                vec![
                    r.agent.to_string(),
                    r.role.clone(),
                    r.resources.to_string(),
                    short(&r.held),
                ]
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ReservationCmd::Remove { agent, role } => {
            let agent = AgentId::new(&agent)?;
            let req = ClientRequest::RemoveReservation {
                agent: agent.clone(),
                role: role.clone(),
            };
            let ClientResponse::Unreserved { removed, held } = target.ask(req).await? else {
                bail!("unexpected answer to reservation remove");
            };
            println!("removed {removed} reserved for {role} on {agent}");
            if !held.is_empty() {
                println!("{held} stays reserved while live tasks of {role} hold it");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn set(target: &Target, args: SetArgs) -> Result<ExitCode> {
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
    let bytes = |v: &Option<String>, flag: &str| -> Result<Option<u64>> {
        v.as_deref()
            .map(|b| parse_bytes(b).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
            .transpose()
    };
    let ceilings = Ceilings {
        timeout_ms: args
            .max_timeout
            .map(|d| std::time::Duration::from(d).as_millis() as u64),
        output_bytes: bytes(&args.max_output, "--max-output")?,
        spec_bytes: bytes(&args.max_spec_bytes, "--max-spec-bytes")?,
        tasks: args.max_tasks,
        sub_roles: args.max_sub_roles,
        frameworks: args.max_frameworks,
        stored_bytes: bytes(&args.storage_quota, "--storage-quota")?,
    };
    let reservation_allowance = match args.reservation_allowance.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(r) => Some(Some(parse_resource_list(r, "--reservation-allowance")?)),
    };
    let egress = if args.egress_clear {
        Some(Vec::new())
    } else if args.egress_allow.is_empty() && args.egress_deny.is_empty() {
        None
    } else {
        Some(egress_rules(&args.egress_allow, &args.egress_deny)?)
    };
    let require_signed_by = args.require_signed_by.map(|keys| {
        keys.into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty() && k != "none")
            .collect::<Vec<_>>()
    });
    if weight_milli.is_none()
        && guarantee.is_none()
        && limit.is_none()
        && ceilings == Ceilings::default()
        && !args.default_ceilings
        && reservation_allowance.is_none()
        && egress.is_none()
        && require_signed_by.is_none()
    {
        bail!(
            "nothing to change: give --weight, --guarantee, --limit, --no-limit, a --max-* ceiling, --default-ceilings, --storage-quota, --reservation-allowance, --egress-* or --require-signed-by"
        );
    }
    let req = ClientRequest::SetRole {
        role: args.role.clone(),
        weight_milli,
        guarantee,
        limit,
        clear_ceilings: args.default_ceilings,
        ceilings,
        reservation_allowance,
        egress,
        require_signed_by,
    };
    target.ask(req).await?;
    println!("role {} updated", args.role);
    Ok(ExitCode::SUCCESS)
}

/// Allow rules, then deny rules, as parsed egress rules.
pub(crate) fn egress_rules(allow: &[String], deny: &[String]) -> Result<Vec<EgressRule>> {
    allow
        .iter()
        .map(|r| EgressRule::parse(true, r))
        .chain(deny.iter().map(|r| EgressRule::parse(false, r)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))
}

async fn show(target: &Target, role: &str, format: Format) -> Result<ExitCode> {
    let ClientResponse::Roles(roles) = target.ask(ClientRequest::ListRoles).await? else {
        bail!("unexpected answer to role list");
    };
    let Some(r) = roles.into_iter().find(|r| r.role == role) else {
        bail!("no role {role} that you may see (roles appear once they are set or used)");
    };
    if format == Format::Json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &r.effective;
    let set = |v: Option<u64>| {
        if v.is_some() {
            ""
        } else {
            " (default or inherited)"
        }
    };
    println!("role {}", r.role);
    println!("  weight            {}", r.weight_milli as f64 / 1000.0);
    println!("  guarantee         {}", short(&r.guarantee));
    println!(
        "  limit             {}",
        r.limit.as_ref().map_or_else(|| "-".into(), short)
    );
    println!("  allocated         {}", short(&r.allocated));
    println!(
        "  reservations      {} of {}",
        short(&r.dynamically_reserved),
        r.reservation_allowance
            .as_ref()
            .map_or_else(|| format!("{} (its guarantee)", short(&r.guarantee)), short)
    );
    println!(
        "  max timeout       {}{}",
        format_duration_ms(c.timeout_ms),
        set(r.ceilings.timeout_ms)
    );
    println!(
        "  max output        {} per stream{}",
        format_bytes(c.output_bytes),
        set(r.ceilings.output_bytes)
    );
    println!(
        "  max spec bytes    {}{}",
        format_bytes(c.spec_bytes),
        set(r.ceilings.spec_bytes)
    );
    println!("  max tasks         {}{}", c.tasks, set(r.ceilings.tasks));
    println!(
        "  max sub-roles     {}{}",
        c.sub_roles,
        set(r.ceilings.sub_roles)
    );
    println!(
        "  max frameworks    {}{}",
        c.frameworks,
        set(r.ceilings.frameworks)
    );
    println!(
        "  storage quota     {}{}",
        format_bytes(c.stored_bytes),
        set(r.ceilings.stored_bytes)
    );
    if r.egress.is_empty() {
        println!("  egress            the agents' rules and protection only");
    }
    for rule in &r.egress {
        println!("  egress            {rule}");
    }
    match &r.signers {
        None => println!("  signed bundles    not required"),
        Some((from, keys)) if *from == r.role => {
            println!("  signed bundles    by {}", keys.join(", "))
        }
        Some((from, keys)) => {
            println!("  signed bundles    by {} (set on {from})", keys.join(", "))
        }
    }
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
    parts.extend(r.scalars.iter().map(|(k, v)| match k.as_str() {
        wasmos_proto::NET => format!("{k}={}/s", format_bytes(*v)),
        _ => format!("{k}={v}"),
    }));
    parts.join(" ")
}

async fn list(target: &Target, format: Format) -> Result<ExitCode> {
    let ClientResponse::Roles(roles) = target.ask(ClientRequest::ListRoles).await? else {
        bail!("unexpected answer to role list");
    };
    match format {
        Format::Json => print_json(&roles)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = roles.iter().map(row).collect();
            println!(
                "{}",
                crate::output::render(
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
