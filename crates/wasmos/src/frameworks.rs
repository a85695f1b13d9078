//! `wasmos framework list/teardown`: the frameworks a caller may see, and ending one from
//! outside (its owner, or an operator ending a tenant's runaway scheduler).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use wasmos_proto::{ClientRequest, ClientResponse, FrameworkId, format_bytes, format_cpu};

use crate::connect::Target;
use crate::output::{OutputArg, print_list};

#[derive(Subcommand)]
pub(crate) enum FrameworkCmd {
    /// Frameworks not removed, with their role, owner, live tasks, whether they are subscribed
    /// and the offers they hold (tenants see their tenant's).
    List(OutputArg),
    /// End a framework as its own teardown would: its tasks are killed and its id can no
    /// longer subscribe (its owner or an operator; jobs and services are stopped with `job
    /// kill` / `service stop`).
    Teardown {
        /// The framework, e.g. fw-3.
        id: String,
    },
}

pub(crate) async fn run(target: &Target, cmd: FrameworkCmd) -> Result<ExitCode> {
    match cmd {
        FrameworkCmd::List(out) => {
            let ClientResponse::Frameworks(list) =
                target.ask(ClientRequest::ListFrameworks).await?
            else {
                bail!("unexpected answer to framework list");
            };
            let header = [
                "ID",
                "NAME",
                "ROLE",
                "OWNER",
                "JOB",
                "LIVE TASKS",
                "SUBSCRIBED",
                "OFFERS",
            ];
            print_list(out.format, &list, &header, |f| {
                let (subscribed, offers) = match &f.offers {
                    // Answered by a master that does not lead: it runs no offer cycle.
                    None => ("?".to_string(), "?".to_string()),
                    Some(o) => (
                        if o.subscribed { "yes" } else { "no" }.to_string(),
                        match o.outstanding {
                            0 => "0".to_string(),
                            n => format!(
                                "{n} ({} cores, {})",
                                format_cpu(o.offered.cpu_millis),
                                format_bytes(o.offered.mem_bytes)
                            ),
                        },
                    ),
                };
                vec![
                    f.id.to_string(),
                    f.name.clone(),
                    f.role.clone(),
                    f.owner.clone(),
                    f.job.map(|j| j.to_string()).unwrap_or_else(|| "-".into()),
                    f.live_tasks.to_string(),
                    subscribed,
                    offers,
                ]
            })?;
            Ok(ExitCode::SUCCESS)
        }
        FrameworkCmd::Teardown { id } => {
            let id: FrameworkId = id.parse()?;
            target.ask(ClientRequest::TeardownFramework { id }).await?;
            println!("{id} torn down; its tasks are being killed");
            Ok(ExitCode::SUCCESS)
        }
    }
}
