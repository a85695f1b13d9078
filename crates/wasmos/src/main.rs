//! The `wasmos` command: runs a master, an agent or a whole dev cluster, and is the user's CLI
//! (run, task, logs, agent list).

mod client;
mod config;
mod demo;
mod dev;
mod dev_group;
mod files;
mod frameworks;
mod job;
mod roles;
mod table;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use wasmos_proto::{
    AgentState, BlobKind, ClientRequest, ClientResponse, InputFile, Mount, OutputStream, Reason,
    Resources, TaskId, TaskInfo, TaskSpec, TaskState, format_bytes, format_cpu, parse_bytes,
    parse_cpu,
};

use crate::client::Client;
use crate::config::ClientConfig;

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
    Dev(DevArgs),
    /// Run a master.
    Master(MasterArgs),
    /// Run an agent, or list agents (`wasmos agent list`).
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        cmd: Option<AgentCmd>,
        #[command(flatten)]
        daemon: AgentArgs,
    },
    /// Upload a component, run it as a one-task job, stream its output, exit with its code.
    Run(RunArgs),
    /// Upload components: `wasmos bundle push task.wasm` prints the hash frameworks launch.
    Bundle {
        #[command(subcommand)]
        cmd: BundleCmd,
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
    /// Download stored blobs, such as the files tasks leave in their outputs directory.
    Blob {
        #[command(subcommand)]
        cmd: BlobCmd,
    },
    /// Issue certificates from a cluster CA (for example the one `wasmos dev` made, in
    /// DATA_DIR/pki).
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// The master group: `wasmos cluster status` shows members, leader, term and log indexes.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
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
        cmd: TaskCmd,
    },
    /// Print a task's output; with -f, follow it until the task ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Run the real allocator in virtual time against simulated agents and frameworks, and
    /// print shares, utilization, latency and the error against ideal weighted DRF.
    Sim(SimArgs),
    /// Internal: the agent's compile worker (component on stdin, artifact on stdout).
    #[command(hide = true)]
    CompileWorker {
        #[arg(long)]
        max_memory: u64,
        #[arg(long)]
        fuel: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputLimitArg {
    Truncate,
    Stop,
}

impl From<OutputLimitArg> for wasmos_proto::OutputPolicy {
    fn from(a: OutputLimitArg) -> Self {
        match a {
            OutputLimitArg::Truncate => wasmos_proto::OutputPolicy::Truncate,
            OutputLimitArg::Stop => wasmos_proto::OutputPolicy::Stop,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum QosArg {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl From<QosArg> for wasmos_proto::Qos {
    fn from(a: QosArg) -> Self {
        match a {
            QosArg::Guaranteed => wasmos_proto::Qos::Guaranteed,
            QosArg::Burstable => wasmos_proto::Qos::Burstable,
            QosArg::BestEffort => wasmos_proto::Qos::BestEffort,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, Default, PartialEq, Eq)]
enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args)]
struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    format: Format,
}

#[derive(Args)]
struct SimArgs {
    #[arg(long, value_enum, default_value_t = SimScenario::ThreeTenants)]
    scenario: SimScenario,
    /// Seed of the simulation's random numbers: the same seed gives the same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of simulated agents (8 cores, 32 GiB each).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Virtual time to simulate [default: the scenario's, 10m].
    #[arg(long)]
    duration: Option<humantime::Duration>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum SimScenario {
    /// Tenants a, b, c with weights 1:1:2, all backlogged; 10 % of the agents leave at 300 s.
    ThreeTenants,
    /// Two tenants keep the cluster full; a third with a 40 % CPU guarantee arrives at 120 s.
    QuotaArrival,
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Tasks you may see, in id order, a page at a time from the master.
    List(TaskListArgs),
    Show {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    Kill {
        id: String,
    },
}

#[derive(Args)]
struct TaskListArgs {
    /// Only tasks in this state (repeatable): staging, starting, running, finished, failed,
    /// killed, lost, error; `live` for the first three.
    #[arg(long, value_name = "STATE")]
    state: Vec<String>,
    /// At most this many tasks (default: all).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Only tasks after this id (the last id of a previous page).
    #[arg(long, value_name = "ID")]
    after: Option<String>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Subcommand)]
enum CertCmd {
    /// Writes NAME.pem and NAME.key into the CA's directory (kept if they exist), signed by
    /// its ca.pem/ca.key (created there first if missing): `--master m2`, `--agent host-7`,
    /// `--operator alice`, `--tenant acme/alice`.
    Issue {
        /// The directory holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        #[arg(long, value_name = "NAME", group = "who")]
        master: Option<String>,
        #[arg(long, value_name = "NAME", group = "who")]
        agent: Option<String>,
        #[arg(long, value_name = "NAME", group = "who")]
        operator: Option<String>,
        #[arg(long, value_name = "TENANT/USER", group = "who")]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
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

#[derive(Subcommand)]
enum BundleCmd {
    /// Check and upload a component (skipped if the master has it); prints its sha256.
    Push { file: PathBuf },
}

#[derive(Subcommand)]
enum BlobCmd {
    /// Download a blob (a task's output file, as `task show` lists them) by its sha256.
    Get {
        hash: String,
        /// Write it to this file instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    List(OutputArg),
}

#[derive(Args)]
struct DevArgs {
    /// Where the cluster keeps its state, PKI and client.toml [default: per-user data dir]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    agents: u32,
    /// Masters in the raft group. With more than one, every master and agent runs as its own
    /// child process (pids, addresses and logs in <data-dir>/cluster.json), restarted if it dies.
    #[arg(long, default_value_t = 1)]
    masters: u32,
    /// How long an agent may go without a heartbeat before it is declared lost, with its tasks.
    #[arg(long, default_value = "15s")]
    agent_timeout: humantime::Duration,
    /// With --masters: leave children that die down instead of restarting them.
    #[arg(long)]
    no_restart: bool,
    /// The master's UDP address (with --masters, the first one's; the others take the next
    /// ports); port 0 picks free ones.
    #[arg(long, default_value = "127.0.0.1:7433")]
    listen: SocketAddr,
    /// CPU each agent offers.
    #[arg(long, default_value = "2")]
    agent_cpu: String,
    /// Memory each agent offers.
    #[arg(long, default_value = "2GiB")]
    agent_mem: String,
    /// A custom resource each agent offers, NAME=AMOUNT, e.g. gpu=2 (repeatable).
    #[arg(long, value_name = "NAME=AMOUNT")]
    agent_resource: Vec<String>,
    /// Reserve part of each agent for a role, ROLE:RESOURCES, e.g. `team-a:cpu=1,mem=512MiB`
    /// (repeatable).
    #[arg(long, value_name = "ROLE:RESOURCES")]
    agent_reserve: Vec<String>,
    /// Run the demo job, print its output, then stop.
    #[arg(long)]
    demo: bool,
    /// Where the demo's compiled sample tasks are.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "sample-tasks/target/wasm32-wasip2/release"
    )]
    demo_dir: PathBuf,
    #[command(flatten)]
    exec: ExecArgs,
    #[command(flatten)]
    tenancy: TenancyArgs,
}

#[derive(Args)]
struct TlsArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by the CA.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

impl TlsArgs {
    fn credentials(&self) -> Result<wasmos_net::Credentials> {
        let read = |what: &str, p: &Option<PathBuf>| -> Result<String> {
            let p = p.as_ref().ok_or_else(|| anyhow!("--{what} is required"))?;
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        Ok(wasmos_net::Credentials::from_pem(
            &read("ca", &self.ca)?,
            &read("cert", &self.cert)?,
            &read("key", &self.key)?,
        )?)
    }
}

#[derive(Args)]
struct MasterArgs {
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:7433")]
    listen: SocketAddr,
    /// How often resources are offered when nothing happens (agents joining, tasks ending
    /// and submissions offer at once).
    #[arg(long, default_value = "1s")]
    offer_interval: humantime::Duration,
    /// This master's raft id in a multi-master group (see --peers).
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Every master of the group, this one included: ID=HOST:PORT,... (e.g.
    /// 1=10.0.0.1:7433,2=10.0.0.2:7433,3=10.0.0.3:7433). Without it the master runs alone.
    #[arg(long, value_name = "ID=HOST:PORT,...", conflicts_with = "join")]
    peers: Option<String>,
    /// Belong to no group until `wasmos cluster init` starts one here or `wasmos cluster join`
    /// (asked of a group's leader) adds this master. A restart resumes whatever group it joined.
    #[arg(long)]
    join: bool,
    /// The address other masters reach this one at [default: --listen, which must then not be
    /// a wildcard such as 0.0.0.0].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<SocketAddr>,
    /// The shortest time followers wait after the leader's last heartbeat before electing a new
    /// one (plus a lease and a random part, up to four times it in all); heartbeats go out
    /// every half of it, and each replication message must be answered within a heartbeat.
    /// Raise it on slow or distant networks, where a short one causes needless elections.
    #[arg(long, default_value = "100ms")]
    election_timeout: humantime::Duration,
    /// How long an agent may go without a heartbeat before it is declared lost: its tasks are
    /// reported lost to their frameworks (batch jobs re-run them, services replace them).
    #[arg(long, default_value = "15s")]
    agent_timeout: humantime::Duration,
    /// Also serve the HTTPS/JSON API here (the scheduler API for frameworks in any language;
    /// same certificates as QUIC), e.g. 127.0.0.1:7480.
    #[arg(long, value_name = "HOST:PORT")]
    http_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    tenancy: TenancyArgs,
}

/// What masters do to keep tenants apart over time: secrets, retention, admission.
#[derive(Args)]
struct TenancyArgs {
    /// The key sealing tasks' secrets in the replicated state (64 hex digits; created if
    /// missing). Every master of a group needs the same file. [default: DATA_DIR/secrets.key]
    #[arg(long, value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// How long ended tasks (with their logs and outputs), ended jobs and blobs no task names
    /// are kept.
    #[arg(long, default_value = "24h")]
    retention: humantime::Duration,
    /// Most ended tasks kept, whatever their age (the oldest go first).
    #[arg(long, default_value_t = 10_000)]
    retention_count: u64,
    /// Writes (submissions, uploads, kills, ...) each tenant may make per second, sustained;
    /// past it a tenant's requests wait their turn (up to 5 s), without slowing other tenants.
    #[arg(long, default_value_t = 200)]
    tenant_write_rate: u32,
    /// Reads (lists, shows, `logs`, blob downloads, `--stale` ones too) each tenant may make per
    /// second, sustained; past it they wait their turn (up to 5 s), as writes do.
    #[arg(long, default_value_t = 1000)]
    tenant_read_rate: u32,
    /// Scheduler API calls (over QUIC or HTTPS) each tenant's frameworks may make per second
    /// together; past it a framework's calls are taken more slowly, never dropped.
    #[arg(long, default_value_t = 1000)]
    tenant_framework_call_rate: u32,
    /// `wasmos logs -f` streams each tenant may hold open at once.
    #[arg(long, default_value_t = 64)]
    tenant_follows: u32,
    /// How long a task of a role below its quota guarantee waits for room before tasks of
    /// roles above theirs are preempted for it (lowest priority, then newest; reason
    /// `preempted`).
    #[arg(long, default_value = "30s")]
    preemption_grace: humantime::Duration,
}

impl TenancyArgs {
    fn config(&self) -> wasmos_master::TenancyConfig {
        wasmos_master::TenancyConfig {
            secrets_key: self.secrets_key.clone(),
            retention: self.retention.into(),
            retention_count: self.retention_count,
            tenant_write_rate: self.tenant_write_rate,
            tenant_read_rate: self.tenant_read_rate,
            tenant_framework_call_rate: self.tenant_framework_call_rate,
            tenant_follows: self.tenant_follows,
            preemption_grace: self.preemption_grace.into(),
        }
    }

    /// The same settings as `wasmos master` arguments (for the masters `wasmos dev` starts).
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--retention".to_string(),
            self.retention.to_string(),
            "--retention-count".to_string(),
            self.retention_count.to_string(),
            "--tenant-write-rate".to_string(),
            self.tenant_write_rate.to_string(),
            "--tenant-read-rate".to_string(),
            self.tenant_read_rate.to_string(),
            "--tenant-framework-call-rate".to_string(),
            self.tenant_framework_call_rate.to_string(),
            "--tenant-follows".to_string(),
            self.tenant_follows.to_string(),
            "--preemption-grace".to_string(),
            self.preemption_grace.to_string(),
        ];
        if let Some(k) = &self.secrets_key {
            args.push("--secrets-key".to_string());
            args.push(k.display().to_string());
        }
        args
    }
}

#[derive(Args)]
struct AgentArgs {
    /// The master's address; for a multi-master group, every master's, comma-separated (the
    /// agent finds the leader and follows it).
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    master: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// CPU to offer [default: all cores]
    #[arg(long)]
    cpu: Option<String>,
    #[arg(long, default_value = "2GiB")]
    mem: String,
    #[arg(long, default_value = "1GiB")]
    disk: String,
    /// A custom resource to offer, NAME=AMOUNT, e.g. gpu=2 (repeatable). Tasks ask for it with
    /// `wasmos run --resource`.
    #[arg(long, value_name = "NAME=AMOUNT")]
    resource: Vec<String>,
    /// Reserve part of this agent for a role, ROLE:RESOURCES, e.g. `team-a:cpu=1,mem=1GiB`
    /// (repeatable): only that role and roles under it are offered it.
    #[arg(long, value_name = "ROLE:RESOURCES")]
    reserve: Vec<String>,
    /// Bundle cache and local state [default: per-user data dir]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Extra attribute to advertise, KEY=VALUE (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    attrs: Vec<String>,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Args)]
struct ExecArgs {
    /// Keep each task's directory (scratch space, inputs) on the agent after it ends, for
    /// debugging; they are under the agent's work directory, in tasks/.
    #[arg(long)]
    keep_task_dirs: bool,
    /// How agents measure the CPU tasks use: the thread CPU clock (cpu-time), or fuel, which
    /// counts wasm operators deterministically but slows tasks down.
    #[arg(long, value_enum, default_value_t = MeteringArg::CpuTime)]
    metering: MeteringArg,
    /// With --metering fuel: fuel per core-second, instead of measuring it at start.
    #[arg(long, value_name = "N")]
    fuel_rate: Option<u64>,
    /// Most tasks running at once on an agent: instance slots of wasmtime's pooling allocator
    /// (faster launches), reserved up front. 0 allocates per task, without a cap.
    #[arg(long, default_value_t = 1000)]
    max_tasks: u32,
    /// Memory one component's compilation may use (it runs in a child process).
    #[arg(long, default_value = "2GiB")]
    compile_memory: String,
    /// How long one component's compilation may take.
    #[arg(long, default_value = "60s")]
    compile_timeout: humantime::Duration,
    /// Let tasks on this agent reach CIDR[:PORT[-PORT]] although it is protected (loopback,
    /// link-local, multicast, this host's addresses), if their grants name it (repeatable).
    #[arg(long, value_name = "CIDR[:PORTS]")]
    egress_allow: Vec<String>,
    /// Keep tasks on this agent from CIDR[:PORT[-PORT]] whatever they were granted
    /// (repeatable; tried after the --egress-allow rules).
    #[arg(long, value_name = "CIDR[:PORTS]")]
    egress_deny: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum MeteringArg {
    CpuTime,
    Fuel,
}

impl ExecArgs {
    /// The same settings as `wasmos agent` arguments (for the agents `wasmos dev` starts).
    fn to_args(&self) -> Vec<String> {
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

    fn egress(&self) -> Result<Vec<wasmos_proto::EgressRule>> {
        roles::egress_rules(&self.egress_allow, &self.egress_deny)
    }

    fn config(&self) -> Result<wasmos_exec::ExecConfig> {
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

#[derive(Args)]
struct RunArgs {
    /// CPU share, in cores or millicores (500m = half a core).
    #[arg(long, default_value = "500m")]
    cpu: String,
    /// Memory limit.
    #[arg(long, default_value = "64MiB")]
    mem: String,
    /// Disk quota of the task's scratch space (its filesystem at /, mounts included).
    #[arg(long, default_value = "64MiB")]
    disk: String,
    /// A custom resource the task needs, NAME=AMOUNT, e.g. gpu=1 (repeatable): it runs only
    /// on an agent offering that much.
    #[arg(long, value_name = "NAME=AMOUNT")]
    resource: Vec<String>,
    /// Ship a local directory with the task as a writable copy at GUEST_PATH in its scratch
    /// space, counted against --disk (repeatable). GUEST_PATH / makes it the whole filesystem.
    #[arg(long, value_name = "LOCAL_DIR:GUEST_PATH")]
    mount: Vec<String>,
    /// A file the task can read but not change, at GUEST_PATH (default /input/NAME); its
    /// directory is read-only and holds only input files (repeatable).
    #[arg(long, value_name = "FILE[:GUEST_PATH]")]
    input: Vec<String>,
    /// Wall-clock limit.
    #[arg(long, default_value = "30s")]
    timeout: humantime::Duration,
    /// Total CPU budget in core-seconds (e.g. 10s, 500ms), counting host calls made for the
    /// task; running out stops it with cpu_limit.
    #[arg(long, value_name = "DURATION")]
    cpu_budget: Option<humantime::Duration>,
    /// Let the task open TCP connections to HOST:PORT or HOST:* (repeatable). Default: no
    /// network at all.
    #[arg(long, value_name = "HOST:PORT")]
    net: Vec<String>,
    /// A file the task reads as its stdin (`-` for this command's own stdin). Default: empty.
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Cap on each of stdout and stderr.
    #[arg(long, default_value = "1MiB")]
    max_output: String,
    /// Past the cap: keep the first bytes and go on (truncate), or stop the task (stop).
    #[arg(long, value_enum, default_value_t = OutputLimitArg::Truncate)]
    on_output_limit: OutputLimitArg,
    /// Environment variable for the task, KEY=VALUE (repeatable). Nothing else is visible.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A secret environment variable: KEY=VALUE, or KEY alone to take this command's own
    /// $KEY (repeatable). The task sees it like --env; listings, `task show`, `-o json` and
    /// logs never print its value, and the masters store it encrypted.
    #[arg(long = "secret-env", value_name = "KEY[=VALUE]")]
    secret_env: Vec<String>,
    /// The role whose share the task counts against [default: your tenant, or `default` for
    /// operators]. Tenants may name roles under their own, e.g. acme/batch.
    #[arg(long)]
    role: Option<String>,
    /// guaranteed or burstable run on allocated resources; best-effort runs on resources
    /// others hold but do not use, and is preempted when they need them back.
    #[arg(long, value_enum, default_value_t = QosArg::Guaranteed)]
    qos: QosArg,
    /// With --qos burstable: the CPU share the task may use when the agent's CPU is idle,
    /// above its --cpu request.
    #[arg(long, value_name = "CPU")]
    cpu_limit: Option<String>,
    /// With --qos burstable: memory the task may grow to past its --mem request, granted
    /// while its agent has memory no task requested.
    #[arg(long, value_name = "BYTES")]
    mem_limit: Option<String>,
    /// A guest directory of results (like /out): if the task finishes with exit code 0, each
    /// file in it is stored as a blob and listed by `wasmos task show`; `wasmos blob get HASH`
    /// fetches one.
    #[arg(long, value_name = "GUEST_DIR")]
    outputs: Option<String>,
    /// Higher launches first among its role's waiting tasks; lower is preempted first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Print the task's id once the submission is acknowledged and exit, instead of streaming
    /// its output (`wasmos logs -f ID` / `wasmos task show ID` follow it later).
    #[arg(long, short = 'd')]
    detach: bool,
    /// The Wasm component (wasm32-wasip2 command).
    file: PathBuf,
    /// Arguments for the task.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// `--secret-env` values: `KEY=VALUE`, or `KEY` for this process's own `$KEY`.
pub(crate) fn secret_env(items: &[String]) -> Result<Vec<wasmos_proto::SecretEnv>> {
    items
        .iter()
        .map(|item| {
            let (name, value) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = std::env::var(item).map_err(|_| {
                        anyhow!("secret {item}: ${item} is not set here (give {item}=VALUE, or export it)")
                    })?;
                    (item.clone(), v)
                }
            };
            if name.is_empty() {
                bail!("secret `{item}` has no name");
            }
            Ok(wasmos_proto::SecretEnv {
                name,
                value: wasmos_proto::SecretValue::Plain(value),
            })
        })
        .collect()
}

/// Exit status of `wasmos run` when the task was stopped rather than exiting by itself.
const EXIT_STOPPED: u8 = 125;
/// Same, for a timeout (as `timeout(1)` does).
const EXIT_TIMEOUT: u8 = 124;

/// Tasks hold host descriptors (files, sockets), up to a cap each, so an agent needs more than
/// the usual soft limit of 1024: raise it to the hard limit.
fn raise_open_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!("cannot raise the open file limit: {e}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // openraft narrates every election at info; its warnings are what an operator needs.
    let default_log = match &cli.cmd {
        Cmd::Dev(a) if !a.demo => "info,openraft=warn",
        Cmd::Master(_) | Cmd::Agent { cmd: None, .. } => "info,openraft=warn",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    if matches!(cli.cmd, Cmd::Dev(_) | Cmd::Agent { cmd: None, .. }) {
        raise_open_file_limit();
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
    crate::client::allow_stale_reads(cli.stale);
    let config = cli.config.as_deref();
    if matches!(cli.cmd, Cmd::Master(_) | Cmd::Agent { cmd: None, .. }) {
        dev_group::exit_with_parent();
    }
    match cli.cmd {
        Cmd::Dev(args) => dev_cmd(args).await,
        Cmd::Master(args) => master_cmd(args).await,
        Cmd::Agent {
            cmd: Some(AgentCmd::List(out)),
            ..
        } => agent_list(config, out.format).await,
        Cmd::Agent { cmd: None, daemon } => agent_cmd(daemon).await,
        Cmd::Run(args) => run_cmd(config, args).await,
        Cmd::Task {
            cmd: TaskCmd::List(args),
        } => task_list(config, args).await,
        Cmd::Task {
            cmd: TaskCmd::Show { id, out },
        } => task_show(config, &id, out.format).await,
        Cmd::Task {
            cmd: TaskCmd::Kill { id },
        } => {
            let client = connect(config).await?;
            client
                .request(ClientRequest::KillTask { id: parse_id(&id)? })
                .await?;
            println!("kill requested for {id}");
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs { id, follow } => logs_cmd(config, &id, follow).await,
        Cmd::Role { cmd } => roles::run(config, cmd).await,
        Cmd::Reservation { cmd } => roles::reservations(config, cmd).await,
        Cmd::Framework { cmd } => frameworks::run(config, cmd).await,
        Cmd::Cluster {
            cmd: ClusterCmd::Status(out),
        } => cluster_status(config, out.format).await,
        Cmd::Cluster { cmd } => cluster_change(config, cmd).await,
        Cmd::Cert {
            cmd:
                CertCmd::Issue {
                    pki,
                    master,
                    agent,
                    operator,
                    tenant,
                },
        } => {
            use wasmos_net::Identity;
            let (who, file) = match (master, agent, operator, tenant) {
                (Some(n), ..) => (Identity::Master(n.clone()), n),
                (_, Some(n), ..) => (Identity::Agent(n.clone()), n),
                (_, _, Some(n), _) => (Identity::Operator(n.clone()), n),
                (_, _, _, Some(t)) => {
                    let (tenant, user) = t
                        .split_once('/')
                        .ok_or_else(|| anyhow!("--tenant `{t}` is not TENANT/USER"))?;
                    let who = Identity::Tenant {
                        tenant: tenant.into(),
                        user: user.into(),
                    };
                    (who, format!("{tenant}-{user}"))
                }
                _ => bail!("say whose certificate: --master, --agent, --operator or --tenant"),
            };
            // The identity URI must parse back: this checks the names.
            wasmos_net::Identity::from_uri(&who.to_uri()).map_err(|e| anyhow!("{e}"))?;
            if !pki.join("ca.key").is_file() {
                eprintln!("creating a new cluster CA in {}", pki.display());
            }
            let ca = dev::ensure_ca(&pki)?;
            let files = dev::ensure_cert(&pki, &ca, &who, &file)?;
            println!("{}\n{}", files.cert.display(), files.key.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Job { cmd } => job::run_job(config, cmd).await,
        Cmd::Service { cmd } => job::run_service(config, cmd).await,
        Cmd::Blob {
            cmd: BlobCmd::Get { hash, output },
        } => {
            let hash = wasmos_proto::BundleHash::parse(&hash)?;
            let cfg = ClientConfig::load(config)?;
            let client = Client::connect(&cfg).await?;
            let bytes = client.get_blob(&hash).await;
            client.close().await;
            let bytes = bytes?;
            match output {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)
                    .context("cannot write to standard output")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bundle {
            cmd: BundleCmd::Push { file },
        } => {
            let bytes = load_component(&file)?;
            let cfg = ClientConfig::load(config)?;
            let client = Client::connect(&cfg).await?;
            let (hash, uploaded) = client.push_blob(&bytes, BlobKind::Component).await?;
            client.close().await;
            let note = if uploaded {
                "uploaded"
            } else {
                "already there"
            };
            eprintln!("{}: {note}", file.display());
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim(args) => sim_cmd(&args),
        Cmd::CompileWorker { .. } => Ok(ExitCode::FAILURE),
    }
}

fn sim_cmd(args: &SimArgs) -> Result<ExitCode> {
    if args.agents == 0 || args.agents > 100_000 {
        bail!("--agents must be between 1 and 100000");
    }
    let mut scenario = match args.scenario {
        SimScenario::ThreeTenants => wasmos_sim::Scenario::three_tenants(args.agents),
        SimScenario::QuotaArrival => wasmos_sim::Scenario::quota_arrival(args.agents),
    };
    if let Some(d) = args.duration {
        scenario.duration_s = Duration::from(d).as_secs().max(1);
    }
    let report = wasmos_sim::run(&scenario, args.seed);
    match args.out.format {
        Format::Json => print_json(&report)?,
        Format::Table => print!("{}", report.render()),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_id(s: &str) -> Result<TaskId> {
    Ok(s.parse::<TaskId>()?)
}

async fn connect(config: Option<&Path>) -> Result<Client> {
    let cfg = ClientConfig::load(config)?;
    Client::connect(&cfg).await
}

/// One request on a fresh connection: what every read command does.
async fn ask(config: Option<&Path>, req: ClientRequest) -> Result<ClientResponse> {
    let client = connect(config).await?;
    let resp = client.request(req).await;
    client.close().await;
    resp
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn wait_for_ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling on this platform: run until killed.
        std::future::pending::<()>().await;
    }
}

async fn dev_cmd(args: DevArgs) -> Result<ExitCode> {
    let data_dir = match args.data_dir.clone() {
        Some(d) => d,
        None => config::default_data_dir()?,
    };
    if args.masters != 1 {
        if args.demo {
            bail!("--demo runs on one master; drop --masters");
        }
        // Check the agents' settings here, where a mistake is one clear line, not N child logs.
        args.exec.config()?;
        parse_cpu(&args.agent_cpu)?;
        parse_bytes(&args.agent_mem)?;
        let mut agent_args = vec![
            "--cpu".to_string(),
            args.agent_cpu.clone(),
            "--mem".to_string(),
            args.agent_mem.clone(),
        ];
        for r in &args.agent_resource {
            agent_args.extend(["--resource".to_string(), r.clone()]);
        }
        for r in &args.agent_reserve {
            parse_reservation(r, "--agent-reserve")?;
            agent_args.extend(["--reserve".to_string(), r.clone()]);
        }
        agent_args.extend(args.exec.to_args());
        dev_group::run(dev_group::GroupOptions {
            data_dir,
            masters: args.masters,
            agents: args.agents,
            listen: args.listen,
            agent_args,
            master_args: {
                let mut m = vec![
                    "--agent-timeout".to_string(),
                    args.agent_timeout.to_string(),
                ];
                m.extend(args.tenancy.to_args());
                m
            },
            restart: !args.no_restart,
        })
        .await?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = dev::DevOptions {
        data_dir,
        agents: args.agents,
        listen: args.listen,
        agent_resources: with_scalars(
            Resources::new(
                parse_cpu(&args.agent_cpu)?,
                parse_bytes(&args.agent_mem)?,
                1 << 30,
            ),
            &args.agent_resource,
            "--agent-resource",
        )?,
        agent_reserved: args
            .agent_reserve
            .iter()
            .map(|r| parse_reservation(r, "--agent-reserve"))
            .collect::<Result<_>>()?,
        exec: args.exec.config()?,
        keep_task_dirs: args.exec.keep_task_dirs,
        egress: args.exec.egress()?,
        tenancy: args.tenancy.config(),
        agent_timeout: args.agent_timeout.into(),
    };
    if args.demo {
        // Check before starting anything, so a missing build is one clear line.
        demo::check_dir(&args.demo_dir)?;
    }
    let cluster = dev::start(&opts).await?;
    eprintln!("{}", dev::banner(&cluster, args.agents));
    let code = if args.demo {
        let cfg = ClientConfig::load(Some(&cluster.config_path))?;
        let result = demo::run(&cfg, &args.demo_dir).await;
        cluster.stop().await;
        return result;
    } else {
        eprintln!("try: wasmos run sample-tasks/target/wasm32-wasip2/release/hello.wasm -- hi");
        wait_for_ctrl_c().await;
        ExitCode::SUCCESS
    };
    cluster.stop().await;
    Ok(code)
}

async fn master_cmd(args: MasterArgs) -> Result<ExitCode> {
    let creds = args.tls.credentials()?;
    let peers = args
        .peers
        .as_deref()
        .map(|p| parse_peers(p, args.id))
        .transpose()?;
    let election: Duration = args.election_timeout.into();
    if election < Duration::from_millis(50) {
        bail!("--election-timeout must be at least 50ms");
    }
    let peers = match (peers, args.join) {
        (Some(p), _) => Some(p),
        (None, true) => {
            let addr = args.advertise.unwrap_or(args.listen);
            if addr.ip().is_unspecified() {
                bail!(
                    "--join needs an address the other masters can reach: pass --advertise HOST:PORT (--listen is {})",
                    args.listen
                );
            }
            Some(std::collections::BTreeMap::from([(
                args.id,
                addr.to_string(),
            )]))
        }
        (None, false) => None,
    };
    let cfg = wasmos_master::MasterConfig {
        tenancy: args.tenancy.config(),
        join: args.join,
        raft: wasmos_master::RaftOptions::with_election_timeout(election),
        offer_interval: args.offer_interval.into(),
        agent_timeout: args.agent_timeout.into(),
        node_id: args.id,
        peers,
        ..wasmos_master::MasterConfig::new(args.data_dir, args.listen)
    };
    let master = wasmos_master::Master::start(cfg, &creds).await?;
    eprintln!("wasmos master listening on {}", master.local_addr());
    let web = match args.http_listen {
        Some(addr) => {
            let web = wasmos_web::serve(master.frameworks(), &creds, addr).await?;
            eprintln!("wasmos master HTTPS API on {}", web.local_addr());
            Some(web)
        }
        None => None,
    };
    wait_for_ctrl_c().await;
    if let Some(web) = web {
        web.shutdown();
    }
    master.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `base` plus the custom scalar resources given as NAME=AMOUNT to `flag`.
fn with_scalars(mut base: Resources, pairs: &[String], flag: &str) -> Result<Resources> {
    for (name, amount) in key_values(pairs, flag)? {
        let valid = name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid || matches!(name.as_str(), "cpu" | "mem" | "disk") {
            bail!(
                "{flag} `{name}={amount}`: a custom resource name is lowercase letters, digits, `-` and `_` (not cpu, mem or disk, which have their own flags)"
            );
        }
        let amount: u64 = amount
            .parse()
            .map_err(|_| anyhow!("{flag} `{name}={amount}`: the amount is not a whole number"))?;
        let total = base.scalar(&name).saturating_add(amount);
        base = base.with_scalar(&name, total);
    }
    Ok(base)
}

/// `cpu=2,mem=4GiB,gpu=1`: CPU in cores or millicores, memory and disk in bytes with units,
/// anything else a custom resource. Kinds not named are zero.
pub(crate) fn parse_resource_list(list: &str, flag: &str) -> Result<Resources> {
    let mut r = Resources::default();
    let mut scalars = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("{flag} `{list}`: `{part}` is not KIND=AMOUNT (e.g. cpu=2,mem=4GiB)");
        };
        let bad = |e: String| anyhow!("{flag} `{list}`: {k}: {e}");
        match k {
            "cpu" => r.cpu_millis = parse_cpu(v).map_err(|e| bad(e.to_string()))?,
            "mem" => r.mem_bytes = parse_bytes(v).map_err(|e| bad(e.to_string()))?,
            "disk" => r.disk_bytes = parse_bytes(v).map_err(|e| bad(e.to_string()))?,
            _ => scalars.push(part.to_string()),
        }
    }
    with_scalars(r, &scalars, flag)
}

/// `--peers 1=HOST:PORT,2=HOST:PORT,...`: every member of the group, `id` among them.
fn parse_peers(list: &str, id: u64) -> Result<std::collections::BTreeMap<u64, String>> {
    let mut out = std::collections::BTreeMap::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (n, addr) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--peers: `{part}` is not ID=HOST:PORT"))?;
        let n: u64 = n
            .parse()
            .map_err(|_| anyhow!("--peers: `{n}` in `{part}` is not a master id (a number)"))?;
        addr.parse::<SocketAddr>()
            .map_err(|_| anyhow!("--peers: `{addr}` in `{part}` is not HOST:PORT"))?;
        if out.insert(n, addr.to_string()).is_some() {
            bail!("--peers: master {n} is listed twice");
        }
    }
    if !out.contains_key(&id) {
        bail!("--peers must list this master too (--id {id})");
    }
    Ok(out)
}

/// `ROLE:RESOURCES` of `wasmos agent --reserve` (and `dev --agent-reserve`).
fn parse_reservation(s: &str, flag: &str) -> Result<(String, Resources)> {
    let Some((role, list)) = s.split_once(':') else {
        bail!("{flag} `{s}` is not ROLE:RESOURCES (e.g. team-a:cpu=1,mem=1GiB)");
    };
    wasmos_alloc::Role::new(role).map_err(|e| anyhow!("{flag} `{s}`: {e}"))?;
    Ok((role.to_string(), parse_resource_list(list, flag)?))
}

fn key_values(pairs: &[String], what: &str) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{what} `{p}` is not KEY=VALUE"))
        })
        .collect()
}

async fn agent_cmd(args: AgentArgs) -> Result<ExitCode> {
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
    let work_dir = match args.work_dir {
        Some(d) => d,
        None => config::default_data_dir()?.with_file_name("agent"),
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
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(wasmos_agent::run(cfg, creds, rx));
    wait_for_ctrl_c().await;
    let _ = tx.send(true);
    agent.await.context("agent task")??;
    Ok(ExitCode::SUCCESS)
}

fn write_output(stream: OutputStream, data: &[u8]) {
    // A closed stdout (e.g. piped into `head`) must not kill the watch loop.
    let _ = match stream {
        OutputStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|_| out.flush())
        }
        OutputStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(data).and_then(|_| err.flush())
        }
    };
}

/// Reads and checks a component file before anything is sent anywhere.
pub(crate) fn load_component(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    wasmos_exec::validate_component(
        &bytes,
        wasmos_exec::ExecConfig::default().max_component_bytes,
    )
    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(bytes)
}

fn placeholder_hash() -> wasmos_proto::BundleHash {
    wasmos_proto::BundleHash::from_digest(&[0; 32])
}

fn task_spec(name: String, hash: wasmos_proto::BundleHash, args: &RunArgs) -> Result<TaskSpec> {
    let mounts = args
        .mount
        .iter()
        .map(|m| {
            let (_, guest) = files::parse_mount(m)?;
            Ok(Mount {
                archive: hash.clone(),
                guest,
            })
        })
        .collect::<Result<_>>()?;
    let inputs = args
        .input
        .iter()
        .map(|i| {
            let (_, guest) = files::parse_input(i)?;
            Ok(InputFile {
                blob: hash.clone(),
                guest,
            })
        })
        .collect::<Result<_>>()?;
    let spec = TaskSpec {
        name,
        bundle: hash,
        args: args.args.clone(),
        env: key_values(&args.env, "--env")?,
        resources: with_scalars(
            Resources::new(
                parse_cpu(&args.cpu)?,
                parse_bytes(&args.mem)?,
                parse_bytes(&args.disk)?,
            ),
            &args.resource,
            "--resource",
        )?,
        timeout_ms: Duration::from(args.timeout).as_millis() as u64,
        max_output_bytes: parse_bytes(&args.max_output)?,
        on_output_limit: args.on_output_limit.into(),
        stdin: None,
        net_allow: args
            .net
            .iter()
            .map(|r| r.parse())
            .collect::<Result<_, _>>()?,
        cpu_budget_ms: args
            .cpu_budget
            .map(|d| Duration::from(d).as_millis() as u64),
        mounts,
        inputs,
        role: args.role.clone(),
        qos: args.qos.into(),
        priority: args.priority,
        cpu_limit_millis: args.cpu_limit.as_deref().map(parse_cpu).transpose()?,
        mem_limit_bytes: args.mem_limit.as_deref().map(parse_bytes).transpose()?,
        outputs_dir: args.outputs.clone(),
        secret_env: secret_env(&args.secret_env).context("--secret-env")?,
    };
    spec.check().map_err(|e| anyhow!("{e}"))?;
    Ok(spec)
}

async fn run_cmd(config: Option<&Path>, args: RunArgs) -> Result<ExitCode> {
    let bytes = load_component(&args.file)?;
    let name = args.file.file_name().map_or_else(
        || "task.wasm".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    // Flags are checked before anything is sent.
    let mut spec = task_spec(name, placeholder_hash(), &args)?;
    let stdin = match &args.stdin {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
                .context("cannot read standard input for --stdin -")?;
            Some(data)
        }
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("cannot read {} for --stdin", p.display()))?,
        ),
    };
    let mut archives = Vec::new();
    for m in &args.mount {
        let (local, _) = files::parse_mount(m)?;
        archives.push(files::pack_dir(&local)?);
    }
    let mut input_files = Vec::new();
    for i in &args.input {
        let (local, _) = files::parse_input(i)?;
        let data =
            std::fs::read(&local).with_context(|| format!("cannot read {}", local.display()))?;
        input_files.push(data);
    }
    let cfg = ClientConfig::load(config)?;
    let client = Client::connect(&cfg).await?;
    if let Some(data) = stdin {
        let (hash, _) = client.push_blob(&data, BlobKind::Data).await?;
        spec.stdin = Some(hash);
    }
    for (m, archive) in spec.mounts.iter_mut().zip(&archives) {
        m.archive = client.push_blob(archive, BlobKind::Data).await?.0;
    }
    for (i, data) in spec.inputs.iter_mut().zip(&input_files) {
        i.blob = client.push_blob(data, BlobKind::Data).await?.0;
    }
    let (hash, uploaded) = client.push_blob(&bytes, BlobKind::Component).await?;
    if uploaded {
        tracing::info!(%hash, "uploaded bundle");
    } else {
        tracing::info!(%hash, "bundle already on the master; not uploading");
    }
    spec.bundle = hash;
    let id = client.submit(spec).await?;
    tracing::info!(%id, "submitted");
    if args.detach {
        client.close().await;
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let ended = tokio::select! {
        r = client.follow_to_end(id, write_output) => r?,
        _ = wait_for_ctrl_c() => {
            eprintln!("wasmos: interrupted; killing {id}");
            let _ = client.request(ClientRequest::KillTask { id }).await;
            client.follow_to_end(id, |_, _| {}).await?
        }
    };
    client.close().await;
    let info = ended.ok_or_else(|| anyhow!("the master stopped streaming {id} before it ended"))?;
    Ok(exit_code_of(&info))
}

/// The task's own exit code, or a line naming why it was stopped and 124/125.
fn exit_code_of(info: &TaskInfo) -> ExitCode {
    let st = &info.status;
    if st.state == TaskState::Finished {
        let code = st.exit_code.unwrap_or(0);
        return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_STOPPED));
    }
    let reason = st
        .reason
        .map_or_else(|| st.state.to_string(), |r| r.to_string());
    let detail = st
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    eprintln!("wasmos: task {} {} ({reason}){detail}", info.id, st.state);
    if st.reason == Some(Reason::Timeout) {
        ExitCode::from(EXIT_TIMEOUT)
    } else {
        ExitCode::from(EXIT_STOPPED)
    }
}

fn result_column(t: &TaskInfo) -> String {
    match (t.status.state, t.status.exit_code, t.status.reason) {
        (TaskState::Finished, Some(code), _) => format!("exit {code}"),
        (_, _, Some(r)) => r.to_string(),
        _ => String::new(),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A listing: a JSON array for scripts, or a table of `header` and a row per item.
fn print_list<T: serde::Serialize>(
    format: Format,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    match format {
        Format::Json => print_json(&items)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(row).collect();
            println!("{}", table::render(header, &rows));
        }
    }
    Ok(())
}

/// The task states `--state` names.
fn parse_states(names: &[String]) -> Result<Vec<TaskState>> {
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

async fn task_list(config: Option<&Path>, args: TaskListArgs) -> Result<ExitCode> {
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
        let ClientResponse::Tasks(page) = ask(config, req).await? else {
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
                        table::age(now, t.submitted_ms),
                    ]
                })
                .collect();
            println!(
                "{}",
                table::render(
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

async fn task_show(config: Option<&Path>, id: &str, format: Format) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let ClientResponse::Task(t) = ask(config, ClientRequest::GetTask { id }).await? else {
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
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The items joined by ", ", or "-" when there are none.
fn list_or_dash(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

async fn agent_list(config: Option<&Path>, format: Format) -> Result<ExitCode> {
    let ClientResponse::Agents(agents) = ask(config, ClientRequest::ListAgents).await? else {
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
                        match a.state {
                            AgentState::Active => "active".into(),
                            AgentState::Disconnected => "disconnected".into(),
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
                        roles::short(&a.offered),
                        list_or_dash(
                            a.reserved
                                .iter()
                                .map(|(role, r)| format!("{role}: {}", roles::short(r))),
                        ),
                        roles::short(&a.revocable),
                        table::age(now, a.last_seen_ms),
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
                table::render(
                    &[
                        "ID",
                        "STATE",
                        "CPU",
                        "MEM",
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

async fn cluster_change(config: Option<&Path>, cmd: ClusterCmd) -> Result<ExitCode> {
    let mut cfg = ClientConfig::load(config)?;
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
    let client = Client::connect(&cfg).await?;
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
async fn member_views(
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

async fn cluster_status(config: Option<&Path>, format: Format) -> Result<ExitCode> {
    let cfg = ClientConfig::load(config)?;
    let client = Client::connect(&cfg).await?;
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
                table::render(
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

async fn logs_cmd(config: Option<&Path>, id: &str, follow: bool) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let client = connect(config).await?;
    client.watch(id, follow, write_output).await?;
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
