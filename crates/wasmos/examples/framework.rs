//! A small framework on the Rust SDK (`wasmos-sdk`): subscribes under a role, takes offers
//! until it has launched COUNT copies of a bundle, declines what it does not need, and prints
//! its tasks' status updates until they have all ended.
//!
//! ```text
//! wasmos dev &
//! HASH=$(wasmos bundle push sample-tasks/target/wasm32-wasip2/release/hello.wasm)
//! cargo run --release -p wasmos --example framework -- --role batch $HASH 3 hi there
//! ```
//!
//! The cluster comes from `--config FILE`, else `WASMOS_CONFIG`, else `wasmos dev`'s default.
//! The SDK follows the leader of a multi-master group, re-subscribes with the framework id
//! after a failover (keeping the tasks), and acknowledges each update once `update` returns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use wasmos_sdk::proto::{
    BundleHash, FrameworkId, OfferInfo, Resources, TaskId, TaskSpec, TaskStatus,
};
use wasmos_sdk::{Cluster, Context, Options, Scheduler};

struct Args {
    config: Option<PathBuf>,
    role: Option<String>,
    framework: Option<FrameworkId>,
    failover_timeout_ms: Option<u64>,
    bundle: BundleHash,
    count: usize,
    task_args: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut raw = std::env::args().skip(1);
    let (mut config, mut role, mut positional) = (None, None, Vec::new());
    let (mut framework, mut failover_timeout_ms) = (None, None);
    while let Some(a) = raw.next() {
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(raw.next().context("--config FILE")?)),
            "--role" => role = Some(raw.next().context("--role ROLE")?),
            "--framework" => framework = Some(raw.next().context("--framework ID")?.parse()?),
            "--failover-timeout-ms" => {
                let ms = raw.next().context("--failover-timeout-ms MS")?;
                failover_timeout_ms = Some(ms.parse().context("--failover-timeout-ms MS")?);
            }
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let usage = "usage: framework [--config FILE] [--role ROLE] [--framework ID] \
                 [--failover-timeout-ms MS] BUNDLE_HASH COUNT [ARGS...]";
    let bundle = BundleHash::parse(&positional.next().context(usage)?)?;
    let count = positional
        .next()
        .context(usage)?
        .parse()
        .map_err(|_| anyhow!("COUNT must be a whole number\n{usage}"))?;
    Ok(Args {
        config,
        role,
        framework,
        failover_timeout_ms,
        bundle,
        count,
        task_args: positional.collect(),
    })
}

/// Launches `to_launch` copies of `task`, then waits for them to end.
struct Copies {
    task: TaskSpec,
    to_launch: usize,
    running: BTreeSet<TaskId>,
    /// Copies asked for by each accept not yet answered.
    asked: BTreeMap<u64, usize>,
    ended: BTreeSet<TaskId>,
    failed: usize,
}

impl Scheduler for Copies {
    fn subscribed(&mut self, _cx: &mut Context, framework: FrameworkId, role: &str) {
        println!("subscribed as {framework} in role {role}");
    }

    fn offers(&mut self, cx: &mut Context, offers: Vec<OfferInfo>) {
        let need = &self.task.resources;
        for offer in offers {
            // As many copies as fit in this offer's unreserved and reserved resources.
            let mut left = offer
                .reserved
                .values()
                .fold(offer.unreserved.clone(), |acc, r| acc.saturating_add(r));
            let mut specs = Vec::new();
            while self.to_launch > specs.len() && need.fits_in(&left) {
                left = left.saturating_sub(need);
                specs.push(self.task.clone());
            }
            if specs.is_empty() {
                cx.decline(vec![offer.id], Some(30_000));
                continue;
            }
            self.to_launch -= specs.len();
            println!(
                "accepting {} on {} for {} task(s)",
                offer.id,
                offer.agent,
                specs.len()
            );
            let n = specs.len();
            let request = cx.launch(offer.id, specs);
            self.asked.insert(request, n);
        }
        if self.to_launch == 0 {
            cx.suppress();
        }
    }

    fn launched(&mut self, _cx: &mut Context, request: u64, tasks: &[TaskId]) {
        self.asked.remove(&request);
        let ids: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        println!("launched {}", ids.join(", "));
        self.running.extend(tasks);
    }

    fn update(&mut self, cx: &mut Context, task: TaskId, status: &TaskStatus) {
        println!("{task}: {}", status.state);
        if !status.state.is_terminal() {
            // After a restart with --framework, reconciliation reports the live tasks.
            self.running.insert(task);
        } else {
            self.running.remove(&task);
            // Updates may come twice (resent, or answering reconciliation).
            if self.ended.insert(task) && status.exit_code != Some(0) {
                self.failed += 1;
            }
            if self.running.is_empty() && self.to_launch == 0 && self.asked.is_empty() {
                cx.finish();
            }
        }
    }

    fn error(&mut self, cx: &mut Context, request: Option<u64>, message: &str) {
        eprintln!("the master refused request {request:?}: {message}");
        // A refused accept launched nothing: its copies are still to launch.
        if let Some(n) = request.and_then(|r| self.asked.remove(&r)) {
            self.to_launch += n;
            cx.revive();
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let cfg = wasmos_client::ClientConfig::load(args.config.as_deref())?;
    let mut masters = vec![cfg.master];
    masters.extend(cfg.masters.iter().filter(|m| **m != cfg.master));
    let cluster = Cluster::new(cfg.credentials()?, masters);
    let copies = Copies {
        task: TaskSpec {
            args: args.task_args.clone(),
            resources: Resources::new(250, 64 << 20, 16 << 20),
            ..TaskSpec::new("example-task", args.bundle.clone())
        },
        to_launch: args.count,
        running: BTreeSet::new(),
        asked: BTreeMap::new(),
        ended: BTreeSet::new(),
        failed: 0,
    };
    let options = Options {
        role: args.role.clone(),
        framework: args.framework,
        failover_timeout_ms: args.failover_timeout_ms,
        ..Options::new("example")
    };
    let done = wasmos_sdk::run(&cluster, copies, options).await?;
    println!(
        "all {} task(s) ended, {} without exit code 0",
        done.ended.len(),
        done.failed
    );
    Ok(())
}
