//! `wasmos agent` (run one) and `wasmos agent list`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use wasmos_proto::{ClientRequest, ClientResponse};

use crate::args::{TlsArgs, key_values, parse_reservation, with_scalars};
use crate::connect::Target;
use crate::output::{Format, OutputArg, print_json};
use crate::output::{list_or_dash, now_ms};
use crate::process::wait_for_stop;
use crate::roles;
use std::net::SocketAddr;
use wasmos_proto::{AgentState, NET, Resources, format_bytes, format_cpu, parse_bytes, parse_cpu};

#[derive(Subcommand)]
pub(crate) enum AgentCmd {
    List(OutputArg),
    /// Operators: drain an agent for maintenance. Nothing more is placed on it, and its
    /// running tasks are killed with reason `maintenance` (a task that imports
    /// `cancellation` is asked to stop first and gets its grace period); jobs and services
    /// run theirs again on other agents. The drain lasts, across the agent's restarts and the
    /// masters' failovers, until `wasmos agent undrain`.
    Drain {
        /// The agent's id, as `wasmos agent list` shows it.
        id: String,
    },
    /// Operators: end an agent's drain; it is offered again.
    Undrain {
        id: String,
    },
    /// Operators: change what an agent offers, live, without restarting it: at most what it
    /// advertises. Kinds not named keep their value. Its outstanding offers are rescinded and
    /// made again; tasks already running keep running, and nothing more of a kind they hold
    /// beyond the new total is placed. The change lasts across the agent's restarts until
    /// `--reset`.
    Set(SetArgs),
    /// Run the agent as a Windows service: install, start, stop, status, uninstall.
    Service {
        #[command(subcommand)]
        cmd: crate::winsvc::ServiceCmd,
    },
}

#[derive(Args)]
pub(crate) struct SetArgs {
    /// The agent's id, as `wasmos agent list` shows it.
    id: String,
    /// CPU in cores or millicores (2, 500m).
    #[arg(long)]
    cpu: Option<String>,
    #[arg(long)]
    mem: Option<String>,
    #[arg(long)]
    disk: Option<String>,
    /// A custom resource, NAME=AMOUNT (repeatable; 0 removes it), e.g. `net=100MiB` for
    /// network bandwidth in bytes per second.
    #[arg(long, value_name = "NAME=AMOUNT")]
    resource: Vec<String>,
    /// Offer again what the agent itself advertises.
    #[arg(long, conflicts_with_all = ["cpu", "mem", "disk", "resource"])]
    reset: bool,
}

#[derive(Args)]
pub(crate) struct AgentArgs {
    /// The master's address; for a multi-master group, every master's, comma-separated (the
    /// agent finds the leader and follows it).
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub(crate) master: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// CPU to offer [default: all cores]
    #[arg(long)]
    pub(crate) cpu: Option<String>,
    #[arg(long, default_value = "2GiB")]
    pub(crate) mem: String,
    #[arg(long, default_value = "1GiB")]
    pub(crate) disk: String,
    /// A custom resource to offer, NAME=AMOUNT, e.g. gpu=2 (repeatable). Tasks ask for it with
    /// `wasmos run --resource`.
    #[arg(long, value_name = "NAME=AMOUNT")]
    pub(crate) resource: Vec<String>,
    /// Reserve part of this agent for a role, ROLE:RESOURCES, e.g. `team-a:cpu=1,mem=1GiB`
    /// (repeatable): only that role and roles under it are offered it.
    #[arg(long, value_name = "ROLE:RESOURCES")]
    pub(crate) reserve: Vec<String>,
    /// Bundle cache and local state [default: per-user data dir]
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Extra attribute to advertise, KEY=VALUE (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub(crate) attrs: Vec<String>,
    /// The region this agent is in (the attribute `region`): jobs and services constrain to
    /// it (`constraints = { region = "eu" }`) and spread over regions (`spread = "region"`).
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Its zone within the region (the attribute `zone`), a fault domain: services spread
    /// over zones with `spread = "zone"`, so losing one leaves the others running.
    #[arg(long)]
    pub(crate) zone: Option<String>,
    /// Where to serve the outputs this agent keeps (a batch job's intermediate files) to other
    /// agents, over mutual TLS; port 0 takes a free port, `off` serves none (its outputs then
    /// go to the masters).
    #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR:PORT|off")]
    pub(crate) peer_listen: String,
    /// Serve this agent's Prometheus metrics (tasks' CPU and memory, ends, compiles) in plain
    /// HTTP at http://ADDR/metrics; they name tasks and roles, so bind it to loopback or a
    /// network only Prometheus reaches.
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// The address other agents dial for this agent's kept outputs [default: the listening
    /// address, or this host's address toward the master when listening on all of them]
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) peer_advertise: Option<String>,
    /// Most bytes of kept outputs this agent holds; outputs that would go past it are stored on
    /// the masters instead. Kept files nobody made or read for a day are dropped (a job that
    /// still needs one makes it again).
    #[arg(long, default_value = "2GiB")]
    pub(crate) keep_max: String,
    /// Write the log to FILE (appended) instead of stderr: for services, which have no console.
    #[arg(long, value_name = "FILE")]
    pub(crate) log_file: Option<PathBuf>,
    /// Internal: run under the Windows service control manager as service NAME (set by
    /// `wasmos agent service install`).
    #[arg(long, value_name = "NAME", hide = true)]
    pub(crate) windows_service: Option<String>,
    /// Run tasks in an executor process that outlives the agent: stopping, upgrading or
    /// crashing the agent leaves its tasks running, and the agent started again with the same
    /// --work-dir takes them back (their output, progress and ends included). To stop its
    /// tasks too, drain the agent first (`wasmos agent drain`).
    #[arg(long)]
    pub(crate) executor: bool,
    /// With --executor: how long the executor keeps tasks running while no agent is
    /// attached; then it kills them and exits. Past the masters' --agent-timeout they have
    /// declared the tasks lost and run them elsewhere, so keep it a little above that.
    #[arg(
        long,
        default_value = "30s",
        value_name = "DURATION",
        requires = "executor"
    )]
    pub(crate) recovery_timeout: humantime::Duration,
    #[command(flatten)]
    pub(crate) exec: Box<ExecArgs>,
}

/// The hidden `wasmos executor` an agent with `--executor` starts.
#[derive(Args)]
pub(crate) struct ExecutorArgs {
    #[arg(long)]
    work_dir: PathBuf,
    /// The agent's memory, in bytes (what burstable tasks borrow from).
    #[arg(long)]
    mem: u64,
    /// The agent's CPU in millicores (one task thread per core).
    #[arg(long)]
    cpu_millis: u64,
    #[arg(long)]
    recovery_timeout_ms: u64,
    #[command(flatten)]
    exec: ExecArgs,
}

pub(crate) async fn executor_cmd(args: ExecutorArgs) -> Result<ExitCode> {
    let mut exec = args.exec.config()?;
    exec.cache_dir = Some(args.work_dir.join("artifacts"));
    wasmos_agent::executor::serve(wasmos_agent::executor::ExecutorSettings {
        work_dir: args.work_dir,
        exec,
        mem_bytes: args.mem,
        cpu_millis: args.cpu_millis,
        recovery_timeout: std::time::Duration::from_millis(args.recovery_timeout_ms),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub(crate) struct ExecArgs {
    /// Keep each task's directory (scratch space, inputs) on the agent after it ends, for
    /// debugging; they are under the agent's work directory, in tasks/.
    #[arg(long)]
    pub(crate) keep_task_dirs: bool,
    /// How agents measure the CPU tasks use: the thread CPU clock (cpu-time), or fuel, which
    /// counts wasm operators deterministically but slows tasks down.
    #[arg(long, value_enum, default_value_t = MeteringArg::CpuTime)]
    pub(crate) metering: MeteringArg,
    /// With --metering fuel: fuel per core-second, instead of measuring it at start.
    #[arg(long, value_name = "N")]
    pub(crate) fuel_rate: Option<u64>,
    /// Most tasks running at once on an agent: instance slots of wasmtime's pooling allocator
    /// (faster launches), reserved up front. 0 allocates per task, without a cap.
    #[arg(long, default_value_t = 1000)]
    pub(crate) max_tasks: u32,
    /// Memory one component's compilation may use (it runs in a child process).
    #[arg(long, default_value = "2GiB")]
    pub(crate) compile_memory: String,
    /// How long one component's compilation may take.
    #[arg(long, default_value = "60s")]
    pub(crate) compile_timeout: humantime::Duration,
    /// Let tasks on this agent reach CIDR[:PORT[-PORT]] although it is protected (loopback,
    /// link-local, multicast, this host's addresses), if their grants name it (repeatable).
    #[arg(long, value_name = "CIDR[:PORTS]")]
    pub(crate) egress_allow: Vec<String>,
    /// Keep tasks on this agent from CIDR[:PORT[-PORT]] whatever they were granted
    /// (repeatable; tried after the --egress-allow rules).
    #[arg(long, value_name = "CIDR[:PORTS]")]
    pub(crate) egress_deny: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum MeteringArg {
    CpuTime,
    Fuel,
}

impl ExecArgs {
    /// The same settings as `wasmos agent` arguments (for the agents `wasmos dev` starts).
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--metering".to_string(),
            match self.metering {
                MeteringArg::CpuTime => "cpu-time".to_string(),
                MeteringArg::Fuel => "fuel".to_string(),
            },
            "--max-tasks".to_string(),
            self.max_tasks.to_string(),
            "--compile-memory".to_string(),
            self.compile_memory.clone(),
            "--compile-timeout".to_string(),
            self.compile_timeout.to_string(),
        ];
        if let Some(rate) = self.fuel_rate {
            args.extend(["--fuel-rate".to_string(), rate.to_string()]);
        }
        if self.keep_task_dirs {
            args.push("--keep-task-dirs".to_string());
        }
        for r in &self.egress_allow {
            args.extend(["--egress-allow".to_string(), r.clone()]);
        }
        for r in &self.egress_deny {
            args.extend(["--egress-deny".to_string(), r.clone()]);
        }
        args
    }

    pub(crate) fn egress(&self) -> Result<Vec<wasmos_proto::EgressRule>> {
        roles::egress_rules(&self.egress_allow, &self.egress_deny)
    }

    pub(crate) fn config(&self) -> Result<wasmos_exec::ExecConfig> {
        let metering = match (self.metering, self.fuel_rate) {
            (MeteringArg::CpuTime, Some(_)) => bail!("--fuel-rate needs --metering fuel"),
            (MeteringArg::CpuTime, None) => wasmos_exec::Metering::CpuTime,
            (MeteringArg::Fuel, Some(0)) => bail!("--fuel-rate must be above 0"),
            (MeteringArg::Fuel, rate) => wasmos_exec::Metering::Fuel {
                per_core_second: rate,
            },
        };
        let program = std::env::current_exe()
            .context("cannot find this program's path to start compile workers")?;
        Ok(wasmos_exec::ExecConfig {
            metering,
            compile_timeout: self.compile_timeout.into(),
            pool: (self.max_tasks > 0).then_some(self.max_tasks),
            compile_worker: Some(wasmos_exec::CompileWorker {
                program,
                args: vec!["compile-worker".into()],
                max_memory_bytes: parse_bytes(&self.compile_memory)?,
            }),
            ..Default::default()
        })
    }
}

pub(crate) async fn agent_cmd(args: AgentArgs) -> Result<ExitCode> {
    agent_until(args, wait_for_stop()).await
}

/// Runs the agent until `stop` completes (a signal, or the service control manager's stop),
/// then stops its tasks, reports them and returns.
pub(crate) async fn agent_until(
    args: AgentArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<ExitCode> {
    let list = args.master.ok_or_else(|| anyhow!("--master is required"))?;
    let masters: Vec<SocketAddr> = list
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.parse()
                .map_err(|_| anyhow!("--master: `{m}` is not HOST:PORT"))
        })
        .collect::<Result<_>>()?;
    let Some((&master, others)) = masters.split_first() else {
        bail!("--master is required");
    };
    let creds = args.tls.credentials()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let cpu = match &args.cpu {
        Some(c) => parse_cpu(c)?,
        None => cores * 1000,
    };
    let mut attributes = wasmos_agent::default_attributes();
    attributes.extend(key_values(&args.attrs, "attribute")?);
    for (key, value) in [("region", &args.region), ("zone", &args.zone)] {
        if let Some(v) = value {
            if v.is_empty() {
                bail!("--{key} must not be empty");
            }
            attributes.insert(key.to_string(), v.clone());
        }
    }
    let work_dir = match args.work_dir {
        Some(d) => d,
        None => wasmos_client::default_data_dir()?.with_file_name("agent"),
    };
    let cfg = wasmos_agent::AgentConfig {
        master,
        other_masters: others.to_vec(),
        resources: with_scalars(
            Resources::new(cpu, parse_bytes(&args.mem)?, parse_bytes(&args.disk)?),
            &args.resource,
            "--resource",
        )?,
        attributes,
        reserved: args
            .reserve
            .iter()
            .map(|r| parse_reservation(r, "--reserve"))
            .collect::<Result<_>>()?,
        work_dir,
        exec: args.exec.config()?,
        keep_task_dirs: args.exec.keep_task_dirs,
        egress: args.exec.egress()?,
        peer_listen: match args.peer_listen.as_str() {
            "off" => None,
            a => Some(
                a.parse()
                    .map_err(|_| anyhow!("--peer-listen: `{a}` is not IP:PORT (or `off`)"))?,
            ),
        },
        peer_advertise: args
            .peer_advertise
            .as_deref()
            .map(|a| {
                a.parse()
                    .map_err(|_| anyhow!("--peer-advertise: `{a}` is not IP:PORT"))
            })
            .transpose()?,
        keep_max_bytes: parse_bytes(&args.keep_max).context("--keep-max")?,
        cert_files: args.tls.files(),
        stats: Default::default(),
        executor: match args.executor {
            false => None,
            true => Some(wasmos_agent::executor::ExecutorProgram {
                program: std::env::current_exe()
                    .context("cannot find this program's path to start the executor")?,
                args: std::iter::once("executor".to_string())
                    .chain(args.exec.to_args())
                    .collect(),
                recovery_timeout: args.recovery_timeout.into(),
            }),
        },
    };
    let _metrics = match args.metrics_listen {
        Some(addr) => {
            let name = match wasmos_net::Identity::from_der(&creds.leaf()) {
                Ok(wasmos_net::Identity::Agent(name)) => name,
                _ => "agent".to_string(),
            };
            let agents = vec![(name, cfg.resources.clone(), cfg.stats.clone())];
            let render = std::sync::Arc::new(move || {
                wasmos_agent::stats::render(&agents).map_err(|e| e.to_string())
            });
            let web = wasmos_web::serve_metrics(addr, render).await?;
            eprintln!(
                "wasmos agent metrics on http://{}/metrics",
                web.local_addr()
            );
            Some(web)
        }
        None => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(wasmos_agent::run(cfg, creds, rx));
    stop.await;
    let _ = tx.send(true);
    agent.await.context("agent task")??;
    Ok(ExitCode::SUCCESS)
}

/// `wasmos agent drain ID` and `wasmos agent undrain ID`.
pub(crate) async fn agent_drain(target: &Target, id: &str, drain: bool) -> Result<ExitCode> {
    let agent = wasmos_proto::AgentId::new(id)
        .map_err(|e| anyhow::anyhow!("invalid agent id {id:?}: {e}"))?;
    let ClientResponse::Drained { killed } = target
        .ask(ClientRequest::DrainAgent {
            agent: agent.clone(),
            drain,
        })
        .await?
    else {
        bail!("unexpected answer to agent drain");
    };
    if drain {
        println!(
            "{agent} is draining: nothing more is placed on it; {killed} running task{} asked to stop (maintenance)",
            if killed == 1 { "" } else { "s" }
        );
    } else {
        println!("{agent} is no longer draining: it is offered again");
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmos agent set ID ...`: the new total is the agent's current one with the named kinds
/// replaced, sent whole (the masters check it against the agent's reservations).
pub(crate) async fn agent_set(target: &Target, args: SetArgs) -> Result<ExitCode> {
    let agent = wasmos_proto::AgentId::new(&args.id)
        .map_err(|e| anyhow::anyhow!("invalid agent id {:?}: {e}", args.id))?;
    let total = if args.reset {
        None
    } else {
        if args.cpu.is_none()
            && args.mem.is_none()
            && args.disk.is_none()
            && args.resource.is_empty()
        {
            bail!("nothing to set: name --cpu, --mem, --disk or --resource (or --reset)");
        }
        let ClientResponse::Agents(agents) = target.ask(ClientRequest::ListAgents).await? else {
            bail!("unexpected answer to agent list");
        };
        let Some(now) = agents.into_iter().find(|a| a.id == agent) else {
            bail!("unknown agent {agent}");
        };
        let mut total = now.total;
        if let Some(cpu) = &args.cpu {
            total.cpu_millis = parse_cpu(cpu).map_err(|e| anyhow::anyhow!("--cpu {cpu}: {e}"))?;
        }
        if let Some(mem) = &args.mem {
            total.mem_bytes = parse_bytes(mem).map_err(|e| anyhow::anyhow!("--mem {mem}: {e}"))?;
        }
        if let Some(disk) = &args.disk {
            total.disk_bytes =
                parse_bytes(disk).map_err(|e| anyhow::anyhow!("--disk {disk}: {e}"))?;
        }
        // Each named kind is replaced, not added to; the last of a name counts.
        for pair in &args.resource {
            let one = with_scalars(
                Resources::default(),
                std::slice::from_ref(pair),
                "--resource",
            )?;
            if let Some((name, _)) = pair.split_once('=') {
                total = total.with_scalar(name, one.scalar(name));
            }
        }
        Some(total)
    };
    let ClientResponse::Resized { total, used } = target
        .ask(ClientRequest::ResizeAgent {
            agent: agent.clone(),
            total,
        })
        .await?
    else {
        bail!("unexpected answer to agent set");
    };
    println!("{agent} now offers {total}");
    if !used.fits_in(&total) {
        println!(
            "its tasks hold {used}, more than that: they keep running, and nothing more of a kind they are over in is placed until enough of them end"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn agent_list(target: &Target, format: Format) -> Result<ExitCode> {
    let ClientResponse::Agents(agents) = target.ask(ClientRequest::ListAgents).await? else {
        bail!("unexpected answer to agent list");
    };
    match format {
        Format::Json => print_json(&agents)?,
        Format::Table => {
            let now = now_ms();
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    let attrs: Vec<String> = a
                        .attributes
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    vec![
                        a.id.to_string(),
                        {
                            let mut state = match (a.state, a.draining) {
                                (AgentState::Active, false) => "active".to_string(),
                                (AgentState::Active, true) => "draining".into(),
                                (AgentState::Disconnected, false) => "disconnected".into(),
                                (AgentState::Disconnected, true) => "disconnected, draining".into(),
                            };
                            if a.resized {
                                state.push_str(", resized");
                            }
                            match &a.maintenance {
                                Some(m) if m.active => state.push_str(", in maintenance"),
                                Some(_) => state.push_str(", maintenance ahead"),
                                None => {}
                            }
                            state
                        },
                        format!(
                            "{}/{}",
                            format_cpu(a.used.cpu_millis),
                            format_cpu(a.total.cpu_millis)
                        ),
                        format!(
                            "{}/{}",
                            format_bytes(a.used.mem_bytes),
                            format_bytes(a.total.mem_bytes)
                        ),
                        match a.total.scalar(NET) {
                            0 => "-".to_string(),
                            total => format!(
                                "{}/{}",
                                format_bytes(a.used.scalar(NET)),
                                format_bytes(total)
                            ),
                        },
                        roles::short(&a.offered),
                        list_or_dash(
                            a.reserved
                                .iter()
                                .map(|(role, r)| format!("{role}: {}", roles::short(r))),
                        ),
                        roles::short(&a.revocable),
                        crate::output::age(now, a.last_seen_ms),
                        match a.fuel_per_core_second {
                            0 => "cpu-time".to_string(),
                            rate => format!("fuel {:.2e}/s", rate as f64),
                        },
                        attrs.join(","),
                    ]
                })
                .collect();
            println!(
                "{}",
                crate::output::render(
                    &[
                        "ID",
                        "STATE",
                        "CPU",
                        "MEM",
                        "NET/S",
                        "OFFERED",
                        "RESERVED",
                        "REVOCABLE",
                        "SEEN",
                        "METERING",
                        "ATTRIBUTES"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
