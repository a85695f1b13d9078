//! `wasmos job ...` and `wasmos service ...`: job files (TOML) turned into job specs (their
//! bundles and input files uploaded first), and the jobs' progress, results, scaling and end.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde::Deserialize;
use wasmos_proto::{
    BlobKind, ClientRequest, ClientResponse, GroupSpec, InputFile, JobId, JobInfo, JobKind,
    JobSpec, JobState, Qos, Resources, TaskSpec, parse_bytes, parse_cpu,
};

use wasmos_client::Client;

use crate::connect::Target;
use crate::output::{Format, OutputArg, print_json};

#[derive(Subcommand)]
pub(crate) enum JobCmd {
    /// Start the job a TOML file describes (bundles and input files are uploaded first);
    /// prints its id.
    Submit {
        file: PathBuf,
        /// Follow its progress until it ends; exit 1 if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Each group's progress (pending, running, done, failed), with a bar.
    Status {
        id: String,
        /// Redraw every second until the job ends.
        #[arg(short, long)]
        watch: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    List(OutputArg),
    /// The files the tasks of the job's last group left in their outputs directory: printed,
    /// or written under DIR/<index>/.
    Results {
        id: String,
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// Stop a job: its tasks are killed.
    Kill {
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ServiceCmd {
    /// Start the service a TOML file describes (`type = "service"` is implied).
    Run { file: PathBuf },
    /// Set how many instances of a group run.
    Scale {
        id: String,
        group: String,
        count: u32,
    },
    /// Roll out a new definition of a service's groups from a service file (the same groups;
    /// new resources, bundle, arguments, environment...): each group's instances are replaced
    /// by new ones, at most --max-unavailable (or the group's `max_unavailable`, default 1)
    /// stopped at a time, the next only once its replacement runs. Watch it with `service
    /// status` or `events`.
    Update {
        id: String,
        file: PathBuf,
        /// Instances of a group that may be down at once during the update.
        #[arg(long)]
        max_unavailable: Option<u32>,
    },
    /// Stop a service: its instances are killed.
    Stop { id: String },
    /// Each group's instances, as `job status` shows them.
    Status {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

/// A job file. Paths are relative to the file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    role: Option<String>,
    deadline: Option<String>,
    #[serde(rename = "group")]
    groups: Vec<GroupFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: String,
    bundle: String,
    count: Option<u32>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Secret environment variables, as `--secret-env` takes them: `KEY` (this shell's own
    /// `$KEY`, so the value need not sit in the file) or `KEY=VALUE`.
    #[serde(default)]
    secret_env: Vec<String>,
    /// Files (a `*` or `?` in the file name matches several) spread over the tasks, each at
    /// /in/input/<file name>.
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    input_pattern: Option<String>,
    outputs: Option<String>,
    cpu: Option<String>,
    mem: Option<String>,
    disk: Option<String>,
    timeout: Option<String>,
    qos: Option<String>,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    constraints: BTreeMap<String, String>,
    /// An agent attribute to spread the group's tasks over (`zone`, `region`).
    spread: Option<String>,
    #[serde(default)]
    retries: u32,
    backoff: Option<String>,
    /// A service's rolling updates stop at most this many instances at a time (default 1).
    max_unavailable: Option<u32>,
}

fn duration_ms(what: &str, s: &str) -> Result<u64> {
    let d: humantime::Duration = s
        .parse()
        .map_err(|e| anyhow!("{what} `{s}`: {e} (e.g. 30s, 5m)"))?;
    Ok(Duration::from(d).as_millis() as u64)
}

/// The files a path names: itself, or with `*`/`?` in its file name, every match in its
/// directory, sorted.
fn expand(base: &Path, pattern: &str) -> Result<Vec<PathBuf>> {
    let path = base.join(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("input `{pattern}` names no file"))?
        .to_string();
    if !name.contains(['*', '?']) {
        if !path.is_file() {
            bail!("input `{pattern}`: {} is not a file", path.display());
        }
        return Ok(vec![path]);
    }
    let dir = path.parent().unwrap_or(base).to_path_buf();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("input `{pattern}`"))? {
        let entry = entry.with_context(|| format!("input `{pattern}`"))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if wildcard(&name, &file) && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    if out.is_empty() {
        bail!("input `{pattern}` matches no file in {}", dir.display());
    }
    out.sort();
    Ok(out)
}

/// `*` matches any run of characters, `?` any one.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Reads a job file and uploads what it names; `service` forces `type = "service"`.
async fn load(client: &Client, file: &Path, service: bool) -> Result<JobSpec> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let job: JobFile = toml::from_str(&text).map_err(|e| {
        // One line: where, and what toml says (without its multi-line source excerpt).
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match line {
            Some(l) => anyhow!("{} line {l}: {}", file.display(), e.message().trim()),
            None => anyhow!("{}: {}", file.display(), e.message().trim()),
        }
    })?;
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let kind = match (job.kind.as_deref(), service) {
        (None | Some("service"), true) | (Some("service"), false) => JobKind::Service,
        (None | Some("batch"), false) => JobKind::Batch,
        (Some("batch"), true) => bail!("{}: a batch job; use `wasmos job submit`", file.display()),
        (Some(other), _) => bail!("{}: type `{other}` is not batch or service", file.display()),
    };
    let mut groups = Vec::new();
    let mut uploaded: BTreeMap<PathBuf, wasmos_proto::BundleHash> = BTreeMap::new();
    for g in job.groups {
        let what = |field: &str| format!("group `{}`: {field}", g.name);
        let bundle = if let Ok(h) = wasmos_proto::BundleHash::parse(&g.bundle) {
            h
        } else {
            let path = base.join(&g.bundle);
            let bytes = crate::bundle::load_component(&path).with_context(|| what("bundle"))?;
            crate::bundle::push_component(client, &path, &bytes)
                .await
                .with_context(|| what("bundle"))?
                .0
        };
        let mut files = Vec::new();
        for pattern in &g.inputs {
            files.extend(expand(&base, pattern).with_context(|| what("inputs"))?);
        }
        let count = g.count.unwrap_or(files.len().max(1) as u32);
        let mut inputs: Vec<Vec<InputFile>> = vec![Vec::new(); (count as usize).min(files.len())];
        for (i, path) in files.iter().enumerate() {
            let hash = match uploaded.get(path) {
                Some(h) => h.clone(),
                None => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let h = client.push_blob(&bytes, BlobKind::Data).await?.0;
                    uploaded.insert(path.clone(), h.clone());
                    h
                }
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let slot = i % count.max(1) as usize;
            if let Some(list) = inputs.get_mut(slot) {
                list.push(InputFile {
                    blob: hash,
                    guest: format!("/in/input/{name}"),
                });
            }
        }
        let defaults = TaskSpec::new("", bundle.clone());
        let resources = Resources::new(
            g.cpu
                .as_deref()
                .map(parse_cpu)
                .transpose()
                .with_context(|| what("cpu"))?
                .unwrap_or(defaults.resources.cpu_millis),
            g.mem
                .as_deref()
                .map(parse_bytes)
                .transpose()
                .with_context(|| what("mem"))?
                .unwrap_or(defaults.resources.mem_bytes),
            g.disk
                .as_deref()
                .map(parse_bytes)
                .transpose()
                .with_context(|| what("disk"))?
                .unwrap_or(defaults.resources.disk_bytes),
        );
        let qos = match g.qos.as_deref() {
            None | Some("guaranteed") => Qos::Guaranteed,
            Some("burstable") => Qos::Burstable,
            Some("best-effort") => Qos::BestEffort,
            Some(other) => bail!(
                "{}: `{other}` is not guaranteed, burstable or best-effort",
                what("qos")
            ),
        };
        let name = Path::new(&g.bundle)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| g.name.clone());
        let task = TaskSpec {
            args: g.args,
            env: g.env.into_iter().collect(),
            secret_env: crate::run::secret_env(&g.secret_env)
                .with_context(|| what("secret_env"))?,
            resources,
            timeout_ms: match &g.timeout {
                Some(t) => duration_ms(&what("timeout"), t)?,
                None => defaults.timeout_ms,
            },
            qos,
            priority: g.priority,
            outputs_dir: match (g.outputs, kind) {
                (Some(o), _) => Some(o),
                (None, JobKind::Batch) => Some("/out".into()),
                (None, JobKind::Service) => None,
            },
            constraints: g.constraints.clone(),
            ..TaskSpec::new(name, bundle)
        };
        groups.push(GroupSpec {
            name: g.name.clone(),
            count,
            task,
            depends_on: g.depends_on,
            input_pattern: g.input_pattern,
            inputs,
            constraints: g.constraints,
            spread: match g.spread {
                Some(key) if key.is_empty() || key.len() > 64 => {
                    bail!(
                        "{}: spread names an agent attribute, such as \"zone\"",
                        what("spread")
                    )
                }
                other => other,
            },
            max_unavailable: g.max_unavailable.unwrap_or(1),
            retries: g.retries,
            backoff_ms: match &g.backoff {
                Some(b) => duration_ms(&what("backoff"), b)?,
                None => 1000,
            },
        });
    }
    let spec = JobSpec {
        name: job.name,
        kind,
        role: job.role,
        deadline_ms: job
            .deadline
            .as_deref()
            .map(|d| duration_ms("deadline", d))
            .transpose()?,
        groups,
    };
    spec.check()
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    Ok(spec)
}

fn job_id(s: &str) -> Result<JobId> {
    s.parse().map_err(|e| anyhow!("{e}"))
}

async fn get(client: &Client, id: JobId) -> Result<JobInfo> {
    match client.request(ClientRequest::GetJob { id }).await? {
        ClientResponse::Jobs(mut j) if j.len() == 1 => j.pop().ok_or_else(|| anyhow!("no job")),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// A 24-character bar: `#` done, `>` running, `-` the rest.
fn bar(done: u32, running: u32, count: u32) -> String {
    const WIDTH: u32 = 24;
    let count = count.max(1);
    let d = (done * WIDTH / count).min(WIDTH);
    let r = (running * WIDTH).div_ceil(count).min(WIDTH - d);
    format!(
        "[{}{}{}]",
        "#".repeat(d as usize),
        ">".repeat(r as usize),
        "-".repeat((WIDTH - d - r) as usize)
    )
}

fn render(j: &JobInfo, now_ms: u64) -> String {
    let kind = match j.kind {
        JobKind::Batch => "batch",
        JobKind::Service => "service",
    };
    let took = format!(
        "{:.1}s",
        j.ended_ms.unwrap_or(now_ms).saturating_sub(j.submitted_ms) as f64 / 1000.0
    );
    let mut out = format!("{} {} ({kind}): {} after {took}\n", j.id, j.name, j.state);
    let rows: Vec<Vec<String>> = j
        .groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                // A service is never done: its bar and figure show instances running.
                match j.kind {
                    // With what running tasks report of their progress, when they do.
                    JobKind::Batch if g.progress_permille > 0 => format!(
                        "{} {}/{} {}.{}%",
                        bar(g.done, g.running, g.count),
                        g.done,
                        g.count,
                        g.progress_permille / 10,
                        g.progress_permille % 10
                    ),
                    JobKind::Batch => {
                        format!("{} {}/{}", bar(g.done, g.running, g.count), g.done, g.count)
                    }
                    JobKind::Service => {
                        format!("{} {}/{}", bar(g.running, 0, g.count), g.running, g.count)
                    }
                },
                g.pending.to_string(),
                g.running.to_string(),
                g.done.to_string(),
                g.failed.to_string(),
                g.lost.to_string(),
            ]
        })
        .collect();
    out.push_str(&crate::output::render(
        &[
            "GROUP", "PROGRESS", "PENDING", "RUNNING", "DONE", "FAILED", "LOST",
        ],
        &rows,
    ));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if j.state == JobState::Finished {
        for (i, task, outputs) in &j.results {
            for o in outputs {
                out.push_str(&format!(
                    "result {i} ({task}): {} {} {}\n",
                    o.path, o.size, o.blob
                ));
            }
        }
    }
    out
}

/// Shows a job until it ends, redrawing in place on a terminal.
async fn watch(client: &Client, id: JobId) -> Result<JobInfo> {
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0;
    loop {
        let j = get(client, id).await?;
        let text = render(&j, crate::output::now_ms());
        let mut stdout = std::io::stdout();
        if tty && drawn > 0 {
            write!(stdout, "\x1b[{drawn}A\x1b[J")?;
        }
        if tty || j.state.is_terminal() {
            write!(stdout, "{text}")?;
            drawn = text.lines().count();
        }
        stdout.flush()?;
        if j.state.is_terminal() {
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn exit_for(j: &JobInfo) -> ExitCode {
    match j.state {
        JobState::Finished | JobState::Running => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// Submits a batch job file, shows its progress until it ends, and returns it with its
/// results' lines (`word<TAB>count` for the word-count sample) sorted by count.
pub(crate) async fn submit_and_wait(
    client: &Client,
    file: &Path,
) -> Result<(JobInfo, Vec<(String, u64)>)> {
    let id = submit(client, file, false).await?;
    let info = watch(client, id).await?;
    let mut lines = Vec::new();
    if info.state == JobState::Finished {
        for (_, _, outputs) in &info.results {
            for o in outputs {
                let bytes = client.get_blob(&o.blob).await?;
                for l in String::from_utf8_lossy(&bytes).lines() {
                    if let Some((w, n)) = l.split_once('\t')
                        && let Ok(n) = n.parse::<u64>()
                    {
                        lines.push((w.to_string(), n));
                    }
                }
            }
        }
    }
    lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok((info, lines))
}

async fn submit(client: &Client, file: &Path, service: bool) -> Result<JobId> {
    let spec = load(client, file, service).await?;
    match client.request(ClientRequest::SubmitJob { spec }).await? {
        ClientResponse::JobSubmitted { id } => Ok(id),
        other => bail!("unexpected answer: {other:?}"),
    }
}

async fn status(client: &Client, id: &str, format: Format) -> Result<ExitCode> {
    let j = get(client, job_id(id)?).await?;
    match format {
        Format::Json => print_json(&j)?,
        Format::Table => print!("{}", render(&j, crate::output::now_ms())),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run_job(target: &Target, cmd: JobCmd) -> Result<ExitCode> {
    let client = target.connect().await?;
    let result = job(&client, cmd).await;
    client.close().await;
    result
}

async fn job(client: &Client, cmd: JobCmd) -> Result<ExitCode> {
    match cmd {
        JobCmd::Submit { file, wait } => {
            let id = submit(client, &file, false).await?;
            println!("{id}");
            if wait {
                return Ok(exit_for(&watch(client, id).await?));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCmd::Status {
            id, watch: true, ..
        } => Ok(exit_for(&watch(client, job_id(&id)?).await?)),
        JobCmd::Status { id, out, .. } => status(client, &id, out.format).await,
        JobCmd::List(out) => {
            // Page by page: each answer fits in one message.
            let mut jobs = Vec::new();
            let mut after = None;
            loop {
                let req = ClientRequest::ListJobs { after };
                let ClientResponse::Jobs(page) = client.request(req).await? else {
                    bail!("unexpected answer to job list");
                };
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(last.id);
                jobs.extend(page);
            }
            let now = crate::output::now_ms();
            let header = ["ID", "NAME", "TYPE", "STATE", "DONE", "AGE"];
            crate::output::print_list(out.format, &jobs, &header, |j| {
                let done: u32 = j.groups.iter().map(|g| g.done).sum();
                let count: u32 = j.groups.iter().map(|g| g.count).sum();
                vec![
                    j.id.to_string(),
                    j.name.clone(),
                    format!("{:?}", j.kind).to_lowercase(),
                    j.state.to_string(),
                    format!("{done}/{count}"),
                    crate::output::age(now, j.submitted_ms),
                ]
            })?;
            Ok(ExitCode::SUCCESS)
        }
        JobCmd::Results { id, to } => {
            let j = get(client, job_id(&id)?).await?;
            if j.state != JobState::Finished {
                bail!("{} is {}; results come when it has finished", j.id, j.state);
            }
            let mut stdout = std::io::stdout();
            for (i, _, outputs) in &j.results {
                for o in outputs {
                    let bytes = client.get_blob(&o.blob).await?;
                    match &to {
                        Some(dir) => {
                            let path = dir.join(i.to_string()).join(&o.path);
                            if let Some(parent) = path.parent() {
                                std::fs::create_dir_all(parent).with_context(|| {
                                    format!("cannot create {}", parent.display())
                                })?;
                            }
                            std::fs::write(&path, &bytes)
                                .with_context(|| format!("cannot write {}", path.display()))?;
                            println!("{}", path.display());
                        }
                        None => stdout.write_all(&bytes)?,
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCmd::Kill { id } => {
            client
                .request(ClientRequest::KillJob { id: job_id(&id)? })
                .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn run_service(target: &Target, cmd: ServiceCmd) -> Result<ExitCode> {
    let client = target.connect().await?;
    let result = service(&client, cmd).await;
    client.close().await;
    result
}

async fn service(client: &Client, cmd: ServiceCmd) -> Result<ExitCode> {
    match cmd {
        ServiceCmd::Run { file } => {
            println!("{}", submit(client, &file, true).await?);
        }
        ServiceCmd::Scale { id, group, count } => {
            let req = ClientRequest::ScaleJob {
                id: job_id(&id)?,
                group,
                count,
            };
            client.request(req).await?;
        }
        ServiceCmd::Update {
            id,
            file,
            max_unavailable,
        } => {
            let id = job_id(&id)?;
            let spec = load(client, &file, true).await?;
            let now = get(client, id).await?;
            for mut group in spec.groups {
                if !now.groups.iter().any(|g| g.name == group.name) {
                    bail!(
                        "{}: service {id} has no group `{}` (an update changes the groups it has)",
                        file.display(),
                        group.name
                    );
                }
                if let Some(n) = max_unavailable {
                    group.max_unavailable = n;
                }
                let name = group.name.clone();
                let req = ClientRequest::UpdateService {
                    id,
                    group: Box::new(group),
                };
                client.request(req).await?;
                println!("{id} {name}: rolling out the new definition");
            }
        }
        ServiceCmd::Stop { id } => {
            client
                .request(ClientRequest::KillJob { id: job_id(&id)? })
                .await?;
        }
        ServiceCmd::Status { id, out } => return status(client, &id, out.format).await,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard("part-*.txt", "part-01.txt"));
        assert!(wildcard("*", "x"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("part-*.txt", "part-01.csv"));
        assert!(!wildcard("a?c", "ac"));
    }

    #[test]
    fn the_bar_shows_done_then_running() {
        assert_eq!(
            bar(12, 0, 24),
            format!("[{}{}]", "#".repeat(12), "-".repeat(12))
        );
        assert_eq!(bar(0, 1, 24), format!("[>{}]", "-".repeat(23)));
        assert_eq!(bar(24, 0, 24), format!("[{}]", "#".repeat(24)));
    }
}
