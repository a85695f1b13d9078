//! `wasmos run`: upload a component (and its stdin, mounts and inputs), submit it as a one-task job, stream its output, exit with its code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use wasmos_proto::ClientRequest;

use crate::args::{key_values, with_scalars};
use crate::bundle::load_component;
use crate::connect::Target;
use crate::files;
use crate::process::wait_for_stop;
use std::io::Write;
use wasmos_proto::{
    BlobKind, InputFile, Mount, OutputStream, Reason, Resources, TaskInfo, TaskSpec, TaskState,
    parse_bytes, parse_cpu,
};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OutputLimitArg {
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
pub(crate) enum QosArg {
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

#[derive(Args)]
pub(crate) struct RunArgs {
    /// CPU share, in cores or millicores (500m = half a core).
    #[arg(long, default_value = "500m")]
    pub(crate) cpu: String,
    /// Memory limit.
    #[arg(long, default_value = "64MiB")]
    pub(crate) mem: String,
    /// Disk quota of the task's scratch space (its filesystem at /, mounts included).
    #[arg(long, default_value = "64MiB")]
    pub(crate) disk: String,
    /// A custom resource the task needs, NAME=AMOUNT, e.g. gpu=1 (repeatable): it runs only
    /// on an agent offering that much.
    #[arg(long, value_name = "NAME=AMOUNT")]
    pub(crate) resource: Vec<String>,
    /// Ship a local directory with the task as a writable copy at GUEST_PATH in its scratch
    /// space, counted against --disk (repeatable). GUEST_PATH / makes it the whole filesystem.
    #[arg(long, value_name = "LOCAL_DIR:GUEST_PATH")]
    pub(crate) mount: Vec<String>,
    /// A file the task can read but not change, at GUEST_PATH (default /input/NAME); its
    /// directory is read-only and holds only input files (repeatable).
    #[arg(long, value_name = "FILE[:GUEST_PATH]")]
    pub(crate) input: Vec<String>,
    /// Wall-clock limit.
    #[arg(long, default_value = "30s")]
    pub(crate) timeout: humantime::Duration,
    /// Total CPU budget in core-seconds (e.g. 10s, 500ms), counting host calls made for the
    /// task; running out stops it with cpu_limit.
    #[arg(long, value_name = "DURATION")]
    pub(crate) cpu_budget: Option<humantime::Duration>,
    /// Let the task open TCP connections to HOST:PORT or HOST:* (repeatable). Default: no
    /// network at all.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) net: Vec<String>,
    /// A file the task reads as its stdin (`-` for this command's own stdin). Default: empty.
    #[arg(long, value_name = "FILE")]
    pub(crate) stdin: Option<PathBuf>,
    /// Cap on each of stdout and stderr.
    #[arg(long, default_value = "1MiB")]
    pub(crate) max_output: String,
    /// Past the cap: keep the first bytes and go on (truncate), or stop the task (stop).
    #[arg(long, value_enum, default_value_t = OutputLimitArg::Truncate)]
    pub(crate) on_output_limit: OutputLimitArg,
    /// Environment variable for the task, KEY=VALUE (repeatable). Nothing else is visible.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// A secret environment variable: KEY=VALUE, or KEY alone to take this command's own
    /// $KEY (repeatable). The task sees it like --env; listings, `task show`, `-o json` and
    /// logs never print its value, and the masters store it encrypted.
    #[arg(long = "secret-env", value_name = "KEY[=VALUE]")]
    pub(crate) secret_env: Vec<String>,
    /// The role whose share the task counts against [default: your tenant, or `default` for
    /// operators]. Tenants may name roles under their own, e.g. acme/batch.
    #[arg(long)]
    pub(crate) role: Option<String>,
    /// guaranteed or burstable run on allocated resources; best-effort runs on resources
    /// others hold but do not use, and is preempted when they need them back.
    #[arg(long, value_enum, default_value_t = QosArg::Guaranteed)]
    pub(crate) qos: QosArg,
    /// With --qos burstable: the CPU share the task may use when the agent's CPU is idle,
    /// above its --cpu request.
    #[arg(long, value_name = "CPU")]
    pub(crate) cpu_limit: Option<String>,
    /// With --qos burstable: memory the task may grow to past its --mem request, granted
    /// while its agent has memory no task requested.
    #[arg(long, value_name = "BYTES")]
    pub(crate) mem_limit: Option<String>,
    /// A guest directory of results (like /out): if the task finishes with exit code 0, each
    /// file in it is stored as a blob and listed by `wasmos task show`; `wasmos blob get HASH`
    /// fetches one.
    #[arg(long, value_name = "GUEST_DIR")]
    pub(crate) outputs: Option<String>,
    /// Higher launches first among its role's waiting tasks; lower is preempted first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i32,
    /// Run only on an agent whose attributes include KEY=VALUE (repeatable), e.g.
    /// `os=windows`; every agent advertises `os` and `arch`, and more with `wasmos agent --attr`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub(crate) constraint: Vec<String>,
    /// Print the task's id once the submission is acknowledged and exit, instead of streaming
    /// its output (`wasmos logs -f ID` / `wasmos task show ID` follow it later).
    #[arg(long, short = 'd')]
    pub(crate) detach: bool,
    /// The Wasm component (wasm32-wasip2 command).
    pub(crate) file: PathBuf,
    /// Arguments for the task.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
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
pub(crate) const EXIT_STOPPED: u8 = 125;
/// Same, for a timeout (as `timeout(1)` does).
pub(crate) const EXIT_TIMEOUT: u8 = 124;

/// Says on stderr why `wasmos run` waits instead of streaming.
fn notice(message: &str) {
    eprintln!("wasmos: {message}");
}

pub(crate) fn write_output(stream: OutputStream, data: &[u8]) {
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

pub(crate) fn placeholder_hash() -> wasmos_proto::BundleHash {
    wasmos_proto::BundleHash::from_digest(&[0; 32])
}

pub(crate) fn task_spec(
    name: String,
    hash: wasmos_proto::BundleHash,
    args: &RunArgs,
) -> Result<TaskSpec> {
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
        outputs_on_agent: false,
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
        constraints: key_values(&args.constraint, "--constraint")?
            .into_iter()
            .collect(),
        slot: None,
        lineage: None,
    };
    spec.check().map_err(|e| anyhow!("{e}"))?;
    Ok(spec)
}

pub(crate) async fn run_cmd(target: &Target, args: RunArgs) -> Result<ExitCode> {
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
    let cfg = target.load()?;
    let client = target.connect_to(&cfg).await?;
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
    let (hash, uploaded) = crate::bundle::push_component(&client, &args.file, &bytes).await?;
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
        r = client.follow_to_end(id, write_output, notice) => r?,
        _ = wait_for_stop() => {
            eprintln!("wasmos: interrupted; killing {id}");
            let _ = client.request(ClientRequest::KillTask { id }).await;
            client.follow_to_end(id, |_, _| {}, notice).await?
        }
    };
    client.close().await;
    let info = ended.ok_or_else(|| anyhow!("the master stopped streaming {id} before it ended"))?;
    Ok(exit_code_of(&info))
}

/// The task's own exit code, or a line naming why it was stopped and 124/125.
pub(crate) fn exit_code_of(info: &TaskInfo) -> ExitCode {
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
