//! `wasmos cluster status|init|join|leave`: the master group, each member's own view, membership changes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use wasmos_proto::{ClientRequest, ClientResponse};

use crate::connect::Target;
use crate::output::{Format, OutputArg, print_json};
use wasmos_client::{Client, ClientConfig};

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// The answering master's view: its state, the leader, term, log and snapshot indexes, and
    /// each member (with replication progress when asked of the leader).
    Status(OutputArg),
    /// Start a group on the config's master (started with `wasmos master --join`), as its only
    /// voter; add the others with `cluster join`.
    Init,
    /// Add a master started with `wasmos master --id ID --join` to the group, as a voter once it
    /// has caught up.
    Join {
        /// Its raft id.
        id: u64,
        /// The address the other masters reach it at.
        addr: String,
    },
    /// Remove a master from the group (it may be the leader).
    Leave {
        /// Its raft id.
        id: u64,
    },
}

pub(crate) async fn cluster_change(target: &Target, cmd: ClusterCmd) -> Result<ExitCode> {
    let mut cfg = target.load()?;
    let (req, done) = match cmd {
        ClusterCmd::Init => {
            // The group does not exist yet: talk to exactly this master, not to a leader.
            cfg.masters.clear();
            (ClientRequest::InitCluster, "started a group".to_string())
        }
        ClusterCmd::Join { id, addr } => (
            ClientRequest::AddMaster { id, addr },
            format!("master {id} joined"),
        ),
        ClusterCmd::Leave { id } => (
            ClientRequest::RemoveMaster { id },
            format!("master {id} left"),
        ),
        ClusterCmd::Status(_) => bail!("not a membership change"),
    };
    let client = target.connect_to(&cfg).await?;
    let resp = client.request(req).await;
    client.close().await;
    let ClientResponse::Cluster(c) = resp? else {
        bail!("unexpected answer to a membership change");
    };
    let voters: Vec<String> = c
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| format!("{} ({})", m.id, m.addr))
        .collect();
    println!("{done}; voters: {}", voters.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Each member's own view (term, applied and snapshot indexes), asked of it directly; `None`
/// for a member that does not answer within a second.
pub(crate) async fn member_views(
    cfg: &ClientConfig,
    c: &wasmos_proto::ClusterInfo,
) -> Vec<Option<wasmos_proto::ClusterInfo>> {
    let asks = c.members.iter().map(|m| {
        let mut direct = cfg.clone();
        direct.masters.clear();
        async move {
            direct.master = m.addr.parse().ok()?;
            let ask = async {
                let client = Client::connect(&direct).await.ok()?;
                let resp = client.request(ClientRequest::ClusterStatus).await;
                client.close().await;
                match resp {
                    Ok(ClientResponse::Cluster(v)) => Some(*v),
                    _ => None,
                }
            };
            tokio::time::timeout(Duration::from_secs(1), ask)
                .await
                .ok()
                .flatten()
        }
    });
    futures::future::join_all(asks).await
}

pub(crate) async fn cluster_status(target: &Target, format: Format) -> Result<ExitCode> {
    let cfg = target.load()?;
    let client = target.connect_to(&cfg).await?;
    let resp = client.request(ClientRequest::ClusterStatus).await;
    client.close().await;
    let ClientResponse::Cluster(c) = resp? else {
        bail!("unexpected answer to cluster status");
    };
    let views = member_views(&cfg, &c).await;
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    match format {
        Format::Json => {
            // The answering master's view, plus each member's own (null if it did not answer).
            let mut json = serde_json::to_value(&*c)?;
            json["views"] = serde_json::to_value(&views)?;
            print_json(&json)?
        }
        Format::Table => {
            println!(
                "master {} is {}; leader {}; term {}; log {}; applied {}; snapshot {}",
                c.node,
                c.state,
                opt(c.leader),
                c.term,
                opt(c.last_log_index),
                opt(c.last_applied),
                opt(c.snapshot)
            );
            let rows: Vec<Vec<String>> = c
                .members
                .iter()
                .zip(&views)
                .map(|(m, view)| {
                    let role = if Some(m.id) == c.leader {
                        "leader"
                    } else if m.voter {
                        "voter"
                    } else {
                        "learner"
                    };
                    let lag = match (m.matched, c.last_log_index) {
                        (Some(matched), Some(last)) => last.saturating_sub(matched).to_string(),
                        _ => "-".into(),
                    };
                    let (term, applied, snapshot) = match view {
                        Some(v) => (v.term.to_string(), opt(v.last_applied), opt(v.snapshot)),
                        None => ("down".into(), "-".into(), "-".into()),
                    };
                    vec![
                        m.id.to_string(),
                        m.addr.clone(),
                        role.into(),
                        term,
                        applied,
                        snapshot,
                        opt(m.matched),
                        lag,
                    ]
                })
                .collect();
            println!(
                "{}",
                crate::output::render(
                    &[
                        "ID", "ADDRESS", "ROLE", "TERM", "APPLIED", "SNAPSHOT", "MATCHED", "LAG"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(target: &Target, cmd: ClusterCmd) -> Result<ExitCode> {
    match cmd {
        ClusterCmd::Status(out) => cluster_status(target, out.format).await,
        cmd => cluster_change(target, cmd).await,
    }
}
