//! `wasmos audit`: the cluster's audit log for operators (who called what, from where, over
//! which channel, and what came of it), filtered, as a table or JSON, and followed with `-f`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::Args;
use wasmos_proto::{AuditEntry, AuditFilter, ClientRequest, ClientResponse};

use crate::connect::Target;
use crate::output::{Format, OutputArg, plain, print_list};

#[derive(Args)]
pub(crate) struct AuditArgs {
    /// Only entries from this long ago on (`90s`, `1h`, `7d`).
    #[arg(long, value_name = "DURATION")]
    since: Option<humantime::Duration>,
    /// Only calls by this identity.
    #[arg(long, value_name = "wasmos://...")]
    identity: Option<String>,
    /// Only calls of this action (`submit`, `kill`, `revoke`, `push-bundle`, ...).
    #[arg(long)]
    action: Option<String>,
    /// Print the entries there are, then each new one as it is recorded (Ctrl-C ends it); with
    /// `-o json`, one JSON object per line.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    out: OutputArg,
}

/// How often `-f` asks for new entries.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

const HEADER: [&str; 7] = [
    "TIME", "IDENTITY", "PEER", "CHANNEL", "ACTION", "OBJECT", "RESULT",
];

fn row(e: &AuditEntry) -> Vec<String> {
    let at = UNIX_EPOCH + Duration::from_millis(e.at_ms);
    vec![
        humantime::format_rfc3339_millis(at).to_string(),
        plain(&e.identity),
        plain(&e.peer),
        plain(&e.channel),
        plain(&e.action),
        if e.object.is_empty() {
            "-".into()
        } else {
            plain(&e.object)
        },
        plain(&e.result),
    ]
}

/// The entries after `filter.after` up to the newest there is now, moving the cursor on.
async fn newer(target: &Target, filter: &mut AuditFilter) -> Result<Vec<AuditEntry>> {
    let mut all = Vec::new();
    loop {
        let req = ClientRequest::ListAudit {
            filter: filter.clone(),
        };
        let ClientResponse::Audit {
            entries,
            scanned_to,
            newest,
        } = target.ask(req).await?
        else {
            bail!("unexpected answer to audit");
        };
        all.extend(entries);
        // A cursor that does not move would loop for ever.
        let moved = scanned_to > filter.after;
        filter.after = filter.after.max(scanned_to);
        if !moved || filter.after >= newest {
            return Ok(all);
        }
    }
}

pub(crate) async fn run(target: &Target, args: AuditArgs) -> Result<ExitCode> {
    let since_ms = match args.since {
        Some(d) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            Some(now.saturating_sub(Duration::from(d).as_millis() as u64))
        }
        None => None,
    };
    let mut filter = AuditFilter {
        after: 0,
        since_ms,
        identity: args.identity,
        action: args.action,
    };
    let all = newer(target, &mut filter).await?;
    if !args.follow {
        print_list(args.out.format, &all, &HEADER, row)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Followed: a line per entry as it comes, so no table widths to wait for.
    let print = |entries: &[AuditEntry]| -> Result<()> {
        for e in entries {
            match args.out.format {
                Format::Json => println!("{}", serde_json::to_string(e)?),
                Format::Table => println!("{}", row(e).join("  ")),
            }
        }
        Ok(())
    };
    if args.out.format == Format::Table {
        println!("{}", HEADER.join("  "));
    }
    print(&all)?;
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        print(&newer(target, &mut filter).await?)?;
    }
}
