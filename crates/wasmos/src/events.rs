//! `wasmos events`: the cluster's event stream (tasks, agents, jobs, frameworks, roles) as
//! the caller may see it, from an index on, followed with `-f` across failovers.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use wasmos_client::EventFrame;
use wasmos_proto::{ClientRequest, ClientResponse, Event, Topic};

use crate::connect::Target;
use crate::output::{Format, OutputArg, plain};

#[derive(Args)]
pub(crate) struct EventsArgs {
    /// Keep printing events as they happen (Ctrl-C ends it); a lost master or a new leader
    /// is followed without missing or repeating one.
    #[arg(short, long)]
    follow: bool,
    /// Only events of these types (task, agent, job, framework, role), comma-separated.
    #[arg(long = "type", value_name = "TYPE,...", value_delimiter = ',')]
    types: Vec<Topic>,
    /// Start at this index (an event's INDEX, or the `next` a previous run printed) instead
    /// of at the oldest event the master still holds.
    #[arg(long, value_name = "N")]
    index: Option<u64>,
    /// Start at the newest event instead: with `-f`, only what happens from now on.
    #[arg(long, conflicts_with = "index")]
    now: bool,
    #[command(flatten)]
    out: OutputArg,
}

const HEADER: [&str; 4] = ["INDEX", "TYPE", "OBJECT", "WHAT"];

fn line(e: &Event) -> String {
    format!(
        "{:<7} {:<9} {:<20} {}",
        e.index,
        e.topic().as_str(),
        plain(&e.change.key()),
        plain(&e.change.to_string())
    )
}

pub(crate) async fn run(target: &Target, args: EventsArgs) -> Result<ExitCode> {
    let client = target.connect().await?;
    let mut from = args.index;
    if args.now {
        // Where the stream is now: after the last entry the (leading) master applied.
        let ClientResponse::Cluster(info) = client.request(ClientRequest::ClusterStatus).await?
        else {
            anyhow::bail!("unexpected answer to a cluster status");
        };
        from = Some(info.last_applied.unwrap_or(0) + 1);
    }
    let format = args.out.format;
    if format == Format::Table {
        println!(
            "{:<7} {:<9} {:<20} {}",
            HEADER[0], HEADER[1], HEADER[2], HEADER[3]
        );
    }
    let mut failed = None;
    let print = |frame: EventFrame| {
        if let Some(first) = frame.lost_until {
            eprintln!(
                "warning: the events before index {first} are no longer held (history is bounded and starts anew when a master restarts); starting there"
            );
        }
        for e in &frame.events {
            let shown = match format {
                Format::Json => serde_json::to_string(e).map_err(anyhow::Error::from),
                Format::Table => Ok(line(e)),
            };
            match shown {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            }
        }
        true
    };
    let next = client.events(from, args.types, args.follow, print).await?;
    if let Some(e) = failed {
        return Err(e);
    }
    if format == Format::Table {
        eprintln!("next: {next} (resume with --index {next})");
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
