//! A small framework on the `wasmos-framework/1` scheduler API: subscribes under a role, takes
//! offers until it has launched COUNT copies of a bundle, declines what it does not need, and
//! prints its tasks' status updates until they have all ended.
//!
//! ```text
//! wasmos dev &
//! HASH=$(wasmos bundle push sample-tasks/target/wasm32-wasip2/release/hello.wasm)
//! cargo run --release -p wasmos --example framework -- --role batch $HASH 3 hi there
//! ```
//!
//! The cluster comes from `--config FILE`, else `WASMOS_CONFIG`, else `wasmos dev`'s default.
//! With several masters (`masters = [...]` in the config) it follows the leader: a master that
//! does not lead answers `NotLeader` with the leader's address, and the framework subscribes
//! there again with its framework id, keeping its tasks.

#[path = "../src/config.rs"]
#[allow(dead_code)]
mod config;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use wasmos_net::{recv_frame, send_frame};
use wasmos_proto::{
    BundleHash, FrameworkCall, FrameworkEvent, OfferOperation, Resources, TaskSpec, alpn,
};

struct Args {
    config: Option<PathBuf>,
    role: Option<String>,
    bundle: BundleHash,
    count: usize,
    task_args: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut raw = std::env::args().skip(1);
    let (mut config, mut role, mut positional) = (None, None, Vec::new());
    while let Some(a) = raw.next() {
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(raw.next().context("--config FILE")?)),
            "--role" => role = Some(raw.next().context("--role ROLE")?),
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let usage = "usage: framework [--config FILE] [--role ROLE] BUNDLE_HASH COUNT [ARGS...]";
    let bundle = BundleHash::parse(&positional.next().context(usage)?)?;
    let count = positional
        .next()
        .context(usage)?
        .parse()
        .map_err(|_| anyhow!("COUNT must be a whole number\n{usage}"))?;
    Ok(Args {
        config,
        role,
        bundle,
        count,
        task_args: positional.collect(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let cfg = config::ClientConfig::load(args.config.as_deref())?;
    let endpoint = wasmos_net::client_endpoint(&cfg.credentials()?, alpn::FRAMEWORK, cfg.master)?;
    let mut masters = vec![cfg.master];
    masters.extend(cfg.masters.iter().filter(|m| **m != cfg.master));
    let (mut target, mut framework) = (cfg.master, None);

    let task = TaskSpec {
        args: args.task_args.clone(),
        resources: Resources::new(250, 64 << 20, 16 << 20),
        ..TaskSpec::new("example-task", args.bundle.clone())
    };
    let per_task = task.resources.clone();
    let (mut to_launch, mut running) = (args.count, BTreeSet::new());
    let mut request = 0;
    let mut attempts = 0;
    'session: loop {
        attempts += 1;
        if attempts > 50 {
            bail!("no master would take this framework (last tried {target})");
        }
        // (Re)subscribe at `target`; a broken connection moves on to the next master.
        let next_master =
            |t| masters[(masters.iter().position(|m| *m == t).unwrap_or(0) + 1) % masters.len()];
        let Ok(conn) = wasmos_net::connect(&endpoint, target).await else {
            target = next_master(target);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        let subscribe = FrameworkCall::Subscribe {
            name: "example".into(),
            role: args.role.clone(),
            revocable: false,
            framework,
        };
        send_frame(&mut send, &subscribe).await?;
        loop {
            let Ok(Some(event)) = recv_frame::<FrameworkEvent>(&mut recv).await else {
                println!("lost the master at {target}; trying the others");
                target = next_master(target);
                continue 'session;
            };
            match event {
                FrameworkEvent::Subscribed {
                    framework: id,
                    role,
                } => {
                    println!("subscribed as {id} in role {role} at {target}");
                    framework = Some(id);
                    attempts = 0;
                }
                FrameworkEvent::NotLeader { addr } => {
                    target = addr
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| next_master(target));
                    println!("not the leader; subscribing again at {target}");
                    continue 'session;
                }
                FrameworkEvent::Offers(offers) => {
                    for offer in offers {
                        // As many copies as fit in this offer's unreserved and reserved resources.
                        let mut left = offer
                            .reserved
                            .values()
                            .fold(offer.unreserved.clone(), |acc, r| acc.saturating_add(r));
                        let mut specs = Vec::new();
                        while to_launch > specs.len() && per_task.fits_in(&left) {
                            left = left.saturating_sub(&per_task);
                            specs.push(task.clone());
                        }
                        if specs.is_empty() {
                            let call = FrameworkCall::Decline {
                                offers: vec![offer.id],
                                refuse_ms: Some(30_000),
                            };
                            send_frame(&mut send, &call).await?;
                            continue;
                        }
                        request += 1;
                        to_launch -= specs.len();
                        println!(
                            "accepting {} on {} for {} task(s)",
                            offer.id,
                            offer.agent,
                            specs.len()
                        );
                        let call = FrameworkCall::Accept {
                            request,
                            offers: vec![offer.id],
                            operations: vec![OfferOperation::Launch(specs)],
                            refuse_ms: None,
                        };
                        send_frame(&mut send, &call).await?;
                    }
                    if to_launch == 0 {
                        send_frame(&mut send, &FrameworkCall::Suppress).await?;
                    }
                }
                FrameworkEvent::Accepted { tasks, .. } => {
                    let ids: Vec<String> = tasks.iter().map(ToString::to_string).collect();
                    println!("launched {}", ids.join(", "));
                    running.extend(tasks);
                }
                FrameworkEvent::Rescind { offer } => println!("{offer} rescinded"),
                FrameworkEvent::Update { task, status } => {
                    println!("{task}: {}", status.state);
                    if status.state.is_terminal() {
                        running.remove(&task);
                        if running.is_empty() && to_launch == 0 {
                            conn.close(0u32.into(), b"done");
                            break 'session;
                        }
                    }
                }
                FrameworkEvent::Error { request, message } => {
                    bail!("the master refused request {request:?}: {message}")
                }
            }
        }
    }
    println!("all {} task(s) ended", args.count);
    endpoint.wait_idle().await;
    Ok(())
}
