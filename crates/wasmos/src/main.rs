//! The `wasmos` command: runs a master, an agent or a whole dev cluster, and is the user's CLI.
//! This file parses the command line and dispatches; each command lives in a module of its own.

mod agent;
mod args;
mod audit;
mod bundle;
mod cert;
mod cluster;
mod connect;
mod demo;
mod dev;
mod dev_group;
mod events;
mod files;
mod frameworks;
mod job;
mod logs;
mod maintenance;
mod master;
mod output;
mod process;
mod roles;
mod run;
mod signing;
mod sim;
mod task;
mod ui;
mod winsvc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::agent::AgentArgs;
use crate::connect::Target;

#[derive(Parser)]
#[command(
    name = "wasmos",
    version,
    about = "A cluster manager whose tasks are WebAssembly components"
)]
struct Cli {
    /// Client config (master address and credentials). Default: $WASMOS_CONFIG, else the
    /// client.toml of the default `wasmos dev` data dir.
    #[arg(long, global = true, env = "WASMOS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Let any master answer reads from its own state, which may be behind the leader's;
    /// without it reads go to the leader, which confirms it still leads first.
    #[arg(long, global = true)]
    stale: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a master and N agents in one process on loopback (creates its PKI on first start).
    Dev(dev::DevArgs),
    /// Run a master.
    Master(master::MasterArgs),
    /// Run an agent, or list agents (`wasmos agent list`).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        cmd: Option<agent::AgentCmd>,
        #[command(flatten)]
        daemon: agent::AgentArgs,
    },
    /// Upload a component, run it as a one-task job, stream its output, exit with its code.
    Run(run::RunArgs),
    /// Upload components: `wasmos bundle push task.wasm` prints the hash frameworks launch;
    /// `keygen` and `sign` make the signatures roles may require.
    Bundle {
        #[command(subcommand)]
        cmd: bundle::BundleCmd,
    },
    /// Batch jobs from a TOML file: task groups with dependencies (map -> reduce), retries, a
    /// deadline, constraints; their progress and results.
    Job {
        #[command(subcommand)]
        cmd: job::JobCmd,
    },
    /// Services: keep N instances of each group running; scale, stop.
    Service {
        #[command(subcommand)]
        cmd: job::ServiceCmd,
    },
    /// Operators: maintenance windows for agents (inverse offers, then a drain).
    Maintenance {
        #[command(subcommand)]
        cmd: maintenance::MaintenanceCmd,
    },
    /// Download stored blobs, such as the files tasks leave in their outputs directory.
    Blob {
        #[command(subcommand)]
        cmd: bundle::BlobCmd,
    },
    /// Operators: the ed25519 keys roles may require bundles to be signed by (`add`, `list`,
    /// `revoke`).
    SigningKey {
        #[command(subcommand)]
        cmd: signing::SigningKeyCmd,
    },
    /// Issue certificates from a cluster CA (for example the one `wasmos dev` made, in
    /// DATA_DIR/pki).
    Cert {
        #[command(subcommand)]
        cmd: cert::CertCmd,
    },
    /// Operators: the audit log, every change and refused call with who, from where and what
    /// came of it (`--since 1h`, `--identity`, `--action`, `-f`, `-o json`).
    Audit(audit::AuditArgs),
    /// The cluster's events as you may see them: tasks, agents, jobs, frameworks and roles
    /// changing (`-f` to follow, `--type task,job`, `--index N` to resume, `-o json`).
    Events(events::EventsArgs),
    /// The web UI in your browser: serves it on 127.0.0.1 as your identity (like `kubectl
    /// proxy`) and prints the address to open, which logs the browser in.
    Ui(ui::UiArgs),
    /// The master group: `wasmos cluster status` shows members, leader, term and log indexes.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Set roles' weights, quotas, ceilings and egress rules, or list roles with what they
    /// hold.
    Role {
        #[command(subcommand)]
        cmd: roles::RoleCmd,
    },
    /// Dynamic reservations frameworks made: list them, or remove one (operators).
    Reservation {
        #[command(subcommand)]
        cmd: roles::ReservationCmd,
    },
    /// Frameworks: list them, or tear one down (its owner or an operator).
    Framework {
        #[command(subcommand)]
        cmd: frameworks::FrameworkCmd,
    },
    /// List, show or kill tasks.
    Task {
        #[command(subcommand)]
        cmd: task::TaskCmd,
    },
    /// Print a task's output; with -f, follow it until the task ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Run the real allocator in virtual time against simulated agents and frameworks, and
    /// print shares, utilization, latency and the error against ideal weighted DRF.
    Sim(sim::SimArgs),
    /// Internal: the agent's executor, which runs its tasks and outlives it (`wasmos agent
    /// --executor`).
    #[command(hide = true)]
    Executor(agent::ExecutorArgs),
    /// Internal: the agent's compile worker (component on stdin, artifact on stdout).
    #[command(hide = true)]
    CompileWorker {
        #[arg(long)]
        max_memory: u64,
        #[arg(long)]
        fuel: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // openraft narrates every election at info; its warnings are what an operator needs.
    let default_log = match &cli.cmd {
        Cmd::Dev(a) if !a.demo => "info,openraft=warn",
        Cmd::Master(_) | Cmd::Agent { cmd: None, .. } => "info,openraft=warn",
        Cmd::Executor(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    let log_file = match &cli.cmd {
        Cmd::Agent {
            cmd: None,
            daemon:
                AgentArgs {
                    log_file: Some(path),
                    ..
                },
        } => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("error: --log-file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match log_file {
        Some(f) => logs
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .init(),
        None => logs.with_writer(std::io::stderr).init(),
    }
    if let Cmd::CompileWorker { max_memory, fuel } = cli.cmd {
        let max_input = wasmos_exec::ExecConfig::default().max_component_bytes;
        return match wasmos_exec::run_compile_worker(fuel, max_memory, max_input) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // A Windows service reports to the service control manager from a thread of its own and
    // starts its own runtime there.
    if let Cmd::Agent {
        cmd: None,
        daemon: daemon @ AgentArgs {
            windows_service: Some(_),
            ..
        },
    } = cli.cmd
    {
        let name = daemon.windows_service.clone().unwrap_or_default();
        return match winsvc::serve(name, daemon) {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if matches!(cli.cmd, Cmd::Dev(_) | Cmd::Agent { cmd: None, .. }) {
        process::raise_open_file_limit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let target = Target {
        config: cli.config,
        options: wasmos_client::ConnectOptions {
            stale_reads: cli.stale,
        },
    };
    let target = &target;
    if matches!(cli.cmd, Cmd::Master(_) | Cmd::Agent { cmd: None, .. }) {
        dev_group::exit_with_parent();
    }
    match cli.cmd {
        Cmd::Dev(args) => dev::dev_cmd(args).await,
        Cmd::Master(args) => master::master_cmd(args).await,
        Cmd::Agent {
            cmd: Some(agent::AgentCmd::List(out)),
            ..
        } => agent::agent_list(target, out.format).await,
        Cmd::Agent {
            cmd: Some(agent::AgentCmd::Drain { id }),
            ..
        } => agent::agent_drain(target, &id, true).await,
        Cmd::Agent {
            cmd: Some(agent::AgentCmd::Undrain { id }),
            ..
        } => agent::agent_drain(target, &id, false).await,
        Cmd::Agent {
            cmd: Some(agent::AgentCmd::Set(args)),
            ..
        } => agent::agent_set(target, args).await,
        Cmd::Agent {
            cmd: Some(agent::AgentCmd::Service { cmd }),
            ..
        } => winsvc::run(cmd),
        Cmd::Agent { cmd: None, daemon } => agent::agent_cmd(daemon).await,
        Cmd::Executor(args) => agent::executor_cmd(args).await,
        Cmd::Run(args) => run::run_cmd(target, args).await,
        Cmd::Task { cmd } => task::run(target, cmd).await,
        Cmd::Logs { id, follow } => logs::logs_cmd(target, &id, follow).await,
        Cmd::Role { cmd } => roles::run(target, cmd).await,
        Cmd::Reservation { cmd } => roles::reservations(target, cmd).await,
        Cmd::Framework { cmd } => frameworks::run(target, cmd).await,
        Cmd::Cluster { cmd } => cluster::run(target, cmd).await,
        Cmd::Cert { cmd } => cert::run(target, cmd).await,
        Cmd::SigningKey { cmd } => signing::run(target, cmd).await,
        Cmd::Audit(args) => audit::run(target, args).await,
        Cmd::Events(args) => events::run(target, args).await,
        Cmd::Ui(args) => ui::run(target, args).await,
        Cmd::Job { cmd } => job::run_job(target, cmd).await,
        Cmd::Service { cmd } => job::run_service(target, cmd).await,
        Cmd::Maintenance { cmd } => maintenance::run(target, cmd).await,
        Cmd::Blob { cmd } => bundle::blob(target, cmd).await,
        Cmd::Bundle { cmd } => bundle::bundle(target, cmd).await,
        Cmd::Sim(args) => sim::sim_cmd(&args),
        Cmd::CompileWorker { .. } => Ok(ExitCode::FAILURE),
    }
}
