//! `wasmos task list|show|usage|kill`: tasks the caller may see, a page at a time.

use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use wasmos_proto::{
    ClientRequest, ClientResponse, TaskId, TaskInfo, TaskState, format_bytes, format_cpu,
};

use crate::connect::Target;
use crate::output::{Format, OutputArg, print_json, print_list};
use crate::output::{list_or_dash, now_ms};

#[derive(Subcommand)]
pub(crate) enum TaskCmd {
    /// Tasks you may see, in id order, a page at a time from the master.
    List(TaskListArgs),
    Show {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// CPU and memory a task used while it ran, one sample per agent heartbeat (about the last
    /// two minutes; kept in memory by the leader, so a new leader starts afresh).
    Usage {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    Kill {
        id: String,
    },
}

#[derive(Args)]
pub(crate) struct TaskListArgs {
    /// Only tasks in this state (repeatable): staging, starting, running, finished, failed,
    /// killed, lost, error; `live` for the first three.
    #[arg(long, value_name = "STATE")]
    pub(crate) state: Vec<String>,
    /// At most this many tasks (default: all).
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u32>,
    /// Only tasks after this id (the last id of a previous page).
    #[arg(long, value_name = "ID")]
    pub(crate) after: Option<String>,
    #[command(flatten)]
    pub(crate) out: OutputArg,
}

pub(crate) fn parse_id(s: &str) -> Result<TaskId> {
    Ok(s.parse::<TaskId>()?)
}

pub(crate) fn result_column(t: &TaskInfo) -> String {
    match (t.status.state, t.status.exit_code, t.status.reason) {
        (TaskState::Finished, Some(code), _) => format!("exit {code}"),
        (_, _, Some(r)) => r.to_string(),
        _ => String::new(),
    }
}

/// The task states `--state` names.
pub(crate) fn parse_states(names: &[String]) -> Result<Vec<TaskState>> {
    use TaskState::*;
    let all = [
        Staging, Starting, Running, Finished, Failed, Killed, Lost, Error,
    ];
    let mut out = Vec::new();
    for n in names.iter().flat_map(|n| n.split(',')) {
        match n {
            "live" => out.extend([Staging, Starting, Running]),
            n => out.push(
                all.into_iter()
                    .find(|s| s.as_str() == n)
                    .ok_or_else(|| anyhow!("--state {n}: not a task state (staging, starting, running, finished, failed, killed, lost, error, live)"))?,
            ),
        }
    }
    Ok(out)
}

pub(crate) async fn task_list(target: &Target, args: TaskListArgs) -> Result<ExitCode> {
    let format = args.out.format;
    let mut filter = wasmos_proto::TaskFilter {
        states: parse_states(&args.state)?,
        after: args.after.as_deref().map(str::parse).transpose()?,
        limit: None,
    };
    // Page through the master's answers: each fits in one message.
    let mut tasks: Vec<TaskInfo> = Vec::new();
    loop {
        let want = args.limit.map(|l| l.saturating_sub(tasks.len() as u32));
        if want == Some(0) {
            break;
        }
        filter.limit = want.map(|w| w.min(wasmos_proto::MAX_TASK_PAGE));
        let req = ClientRequest::ListTasks {
            filter: filter.clone(),
        };
        let ClientResponse::Tasks(page) = target.ask(req).await? else {
            bail!("unexpected answer to task list");
        };
        let Some(last) = page.last().map(|t| t.id) else {
            break;
        };
        filter.after = Some(last);
        tasks.extend(page);
    }
    match format {
        Format::Json => print_json(&tasks)?,
        Format::Table => {
            let now = now_ms();
            let rows: Vec<Vec<String>> = tasks
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.spec.name.clone(),
                        t.status.state.to_string(),
                        result_column(t),
                        t.agent
                            .as_ref()
                            .map_or_else(|| "-".into(), |a| a.to_string()),
                        format_cpu(t.spec.resources.cpu_millis),
                        format_bytes(t.spec.resources.mem_bytes),
                        crate::output::age(now, t.submitted_ms),
                    ]
                })
                .collect();
            println!(
                "{}",
                crate::output::render(
                    &[
                        "ID", "NAME", "STATE", "RESULT", "AGENT", "CPU", "MEM", "AGE"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn task_show(target: &Target, id: &str, format: Format) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let ClientResponse::Task(t) = target.ask(ClientRequest::GetTask { id }).await? else {
        bail!("unexpected answer to task show");
    };
    match format {
        Format::Json => print_json(&t)?,
        Format::Table => {
            let st = &t.status;
            let env: Vec<String> = t.spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let rows = [
                ("id", t.id.to_string()),
                ("name", t.spec.name.clone()),
                ("state", st.state.to_string()),
                (
                    "exit code",
                    st.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                ),
                (
                    "reason",
                    st.reason.map_or_else(|| "-".into(), |r| r.to_string()),
                ),
                ("message", st.message.clone().unwrap_or_else(|| "-".into())),
                (
                    "agent",
                    t.agent
                        .as_ref()
                        .map_or_else(|| "-".into(), |a| a.to_string()),
                ),
                (
                    "parent",
                    t.spec.lineage.map_or_else(
                        || "-".into(),
                        |l| format!("{} (spawned, depth {})", l.parent, l.depth),
                    ),
                ),
                ("bundle", t.spec.bundle.to_string()),
                ("args", t.spec.args.join(" ")),
                ("env", env.join(" ")),
                (
                    "network",
                    if t.spec.net_allow.is_empty() {
                        "none".to_string()
                    } else {
                        let rules: Vec<String> =
                            t.spec.net_allow.iter().map(|r| r.to_string()).collect();
                        rules.join(" ")
                    },
                ),
                (
                    "stdin",
                    t.spec
                        .stdin
                        .as_ref()
                        .map_or_else(|| "-".into(), |h| format!("blob {}", h.short())),
                ),
                (
                    "mounts",
                    list_or_dash(
                        t.spec
                            .mounts
                            .iter()
                            .map(|m| format!("{} (archive {})", m.guest, m.archive.short())),
                    ),
                ),
                (
                    "inputs",
                    list_or_dash(
                        t.spec
                            .inputs
                            .iter()
                            .map(|i| format!("{} (blob {})", i.guest, i.blob.short())),
                    ),
                ),
                ("resources", t.spec.resources.to_string()),
                ("timeout", format!("{}ms", t.spec.timeout_ms)),
                (
                    "cpu budget",
                    t.spec
                        .cpu_budget_ms
                        .map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
                ),
                (
                    "cpu used",
                    match st.fuel_used {
                        0 => format!("{:.3}s", st.cpu_ms as f64 / 1000.0),
                        fuel => format!("{:.3}s ({fuel} fuel)", st.cpu_ms as f64 / 1000.0),
                    },
                ),
                ("peak mem", format_bytes(st.peak_mem_bytes)),
                (
                    "progress",
                    t.progress.as_ref().map_or_else(
                        || "-".into(),
                        |p| {
                            let message = crate::output::plain(&p.message);
                            format!("{}.{}% {message}", p.permille / 10, p.permille % 10)
                        },
                    ),
                ),
                ("owner", t.owner.clone()),
            ];
            for (k, v) in rows {
                println!("{:<11} {v}", format!("{k}:"));
            }
            if let Some(dir) = &t.spec.outputs_dir {
                // One per line with the whole hash: what `wasmos blob get` takes.
                println!("{:<11} {dir} ({} files)", "outputs:", st.outputs.len());
                for o in &st.outputs {
                    println!("  {} {} {}", o.blob, format_bytes(o.size), o.path);
                }
            }
            if !st.files.is_empty() {
                // One per line with the whole hash: what `wasmos blob get` takes.
                println!("{:<11} {}", "files:", st.files.len());
                for f in &st.files {
                    println!("  {} {} {}", f.blob, format_bytes(f.size), f.name);
                }
            }
            if !st.results.is_empty() {
                // Text as text; anything else as its size (`-o json` has the bytes).
                println!("{:<11} {}", "results:", st.results.len());
                for r in &st.results {
                    // A task's text: no terminal escapes reach the screen.
                    match std::str::from_utf8(&r.value) {
                        Ok(text) if !text.chars().any(char::is_control) => {
                            println!("  {} = {text}", r.name)
                        }
                        _ => println!("  {} = ({} bytes)", r.name, r.value.len()),
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(target: &Target, cmd: TaskCmd) -> Result<ExitCode> {
    match cmd {
        TaskCmd::List(args) => task_list(target, args).await,
        TaskCmd::Show { id, out } => task_show(target, &id, out.format).await,
        TaskCmd::Usage { id, out } => {
            let id = parse_id(&id)?;
            let ClientResponse::Usage { samples, .. } =
                target.ask(ClientRequest::TaskUsage { id }).await?
            else {
                bail!("unexpected answer to task usage");
            };
            if samples.is_empty() && out.format == Format::Table {
                println!(
                    "no usage of {id} on record: it has not run for a heartbeat yet, ended too long ago, or the leader changed since"
                );
                return Ok(ExitCode::SUCCESS);
            }
            let now = now_ms();
            print_list(out.format, &samples, &["AGO", "CPU", "MEM"], |s| {
                vec![
                    crate::output::age(now, s.at_ms),
                    format!("{} cores", format_cpu(s.cpu_millis)),
                    format_bytes(s.mem_bytes),
                ]
            })?;
            Ok(ExitCode::SUCCESS)
        }
        TaskCmd::Kill { id } => {
            target
                .ask(ClientRequest::KillTask { id: parse_id(&id)? })
                .await?;
            println!("kill requested for {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
