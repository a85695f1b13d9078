//! `wasmos maintenance`: operators schedule, list and cancel agents' maintenance windows.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use wasmos_proto::{AgentId, ClientRequest, ClientResponse, MaintenanceWindow};

use crate::connect::Target;
use crate::output::{Format, OutputArg, now_ms, print_json};

#[derive(Subcommand)]
pub(crate) enum MaintenanceCmd {
    /// Schedule a window for agents. Frameworks running tasks on them are told at once (an
    /// inverse offer: jobs and services move their work away); at the start each agent is
    /// drained (its remaining tasks stopped with reason `maintenance`), at the end offered again.
    Schedule {
        /// Agent ids, comma-separated (agent-1,agent-2).
        agents: String,
        /// When it starts: a wait (`10m`, `now`) or a time (`2026-12-24T22:00:00Z`).
        #[arg(long, default_value = "now")]
        start: String,
        /// How long it lasts (`2h`; at most a week).
        #[arg(long)]
        duration: String,
    },
    /// Cancel agents' windows (one under way: `wasmos agent undrain` ends it).
    Cancel {
        /// Agent ids, comma-separated.
        agents: String,
    },
    /// Agents with a window: when, whether under way, and which frameworks accepted or
    /// declined its inverse offer.
    List(OutputArg),
}

fn agents(list: &str) -> Result<Vec<AgentId>> {
    list.split(',')
        .filter(|a| !a.is_empty())
        .map(|a| AgentId::new(a).map_err(|e| anyhow!("invalid agent id {a:?}: {e}")))
        .collect()
}

/// `now`, a wait from now (`10m`), or an RFC 3339 time; milliseconds since the epoch.
fn when(s: &str) -> Result<u64> {
    if s == "now" {
        return Ok(now_ms());
    }
    if let Ok(wait) = s.parse::<humantime::Duration>() {
        return u64::try_from(Duration::from(wait).as_millis())
            .ok()
            .and_then(|w| now_ms().checked_add(w))
            .ok_or_else(|| anyhow!("--start `{s}` is too far away"));
    }
    let at = humantime::parse_rfc3339_weak(s).map_err(|_| {
        anyhow!("--start `{s}` is not `now`, a wait (10m) or a time (2026-12-24T22:00:00Z)")
    })?;
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64))
}

pub(crate) async fn run(target: &Target, cmd: MaintenanceCmd) -> Result<ExitCode> {
    let (agents, window) = match cmd {
        MaintenanceCmd::List(out) => return list(target, out.format).await,
        MaintenanceCmd::Schedule {
            agents: list,
            start,
            duration,
        } => {
            let start_ms = when(&start)?;
            let length: humantime::Duration = duration
                .parse()
                .map_err(|e| anyhow!("--duration `{duration}`: {e} (e.g. 30m, 2h)"))?;
            let end_ms = u64::try_from(Duration::from(length).as_millis())
                .ok()
                .and_then(|l| start_ms.checked_add(l))
                .ok_or_else(|| anyhow!("--duration `{duration}` is too long"))?;
            (agents(&list)?, Some(MaintenanceWindow { start_ms, end_ms }))
        }
        MaintenanceCmd::Cancel { agents: list } => (agents(&list)?, None),
    };
    let n = agents.len();
    match target
        .ask(ClientRequest::ScheduleMaintenance { agents, window })
        .await?
    {
        ClientResponse::Ok => {}
        other => bail!("unexpected answer: {other:?}"),
    }
    let what = if n == 1 { "agent" } else { "agents" };
    match window {
        Some(w) => println!(
            "maintenance of {n} {what} scheduled: starts {}, lasts {}",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(w.start_ms)),
            humantime::format_duration(Duration::from_secs((w.end_ms - w.start_ms) / 1000))
        ),
        None => println!("maintenance of {n} {what} cancelled"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(target: &Target, format: Format) -> Result<ExitCode> {
    let ClientResponse::Agents(agents) = target.ask(ClientRequest::ListAgents).await? else {
        bail!("unexpected answer to agent list");
    };
    let windows: Vec<_> = agents
        .into_iter()
        .filter_map(|a| a.maintenance.map(|m| (a.id, m)))
        .collect();
    if let Format::Json = format {
        print_json(&windows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let at = |ms: u64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    };
    let ids = |f: &[wasmos_proto::FrameworkId]| {
        crate::output::list_or_dash(f.iter().map(|f| f.to_string()))
    };
    let rows: Vec<Vec<String>> = windows
        .iter()
        .map(|(id, m)| {
            vec![
                id.to_string(),
                if m.active { "under way" } else { "scheduled" }.to_string(),
                at(m.window.start_ms),
                at(m.window.end_ms),
                ids(&m.accepted),
                ids(&m.declined),
            ]
        })
        .collect();
    println!(
        "{}",
        crate::output::render(
            &["AGENT", "STATE", "START", "END", "ACCEPTED", "DECLINED"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
