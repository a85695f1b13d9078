//! Tasks run by an executor process (`executor`), across the agent's restarts: what the agent
//! writes down for each before it starts (its spec, less what is secret, and its directory)
//! and once it has ended (its final status, until the masters have recorded it), and how a
//! restarted agent takes back the ones its executor still runs or has ended.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use wasmos_exec::RunRequest;
use wasmos_proto::{
    ChildSpec, OutputStream, Reason, SpawnRefusal, TaskId, TaskProgress, TaskSpec, TaskState,
    TaskStatus,
};

use crate::executor::{Client, Ended, ExecutorError, Launch, Mirror, Recovered};
use crate::{Agent, end_task, metered, taskdir};

/// What a restarted agent needs to finish a task its executor ran: where its outputs go and
/// where its directory is; once it has ended, its final status. Nothing secret: the
/// environment and stdin are left out. JSON, so an upgraded agent reads an older one's.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    spec: TaskSpec,
    dir: PathBuf,
    pool_key: String,
    #[serde(default)]
    ended: Option<TaskStatus>,
}

fn notes_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("executor-tasks")
}

fn note_path(work_dir: &Path, task: TaskId) -> PathBuf {
    notes_dir(work_dir).join(task.0.to_string())
}

fn write_note(work_dir: &Path, task: TaskId, note: &Note) -> Result<(), String> {
    let bytes = serde_json::to_vec(note).map_err(|e| e.to_string())?;
    let dir = notes_dir(work_dir);
    let tmp = dir.join(format!("{}.tmp", task.0));
    wasmos_net::create_private_dir(&dir)
        .and_then(|()| wasmos_net::write_private(&tmp, &bytes))
        .and_then(|()| std::fs::rename(&tmp, note_path(work_dir, task)))
        .map_err(|e| e.to_string())
}

fn read_note(work_dir: &Path, task: TaskId) -> Result<Note, String> {
    let bytes = std::fs::read(note_path(work_dir, task)).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The output, meters and progress of the executor's tasks, into the agent's books.
pub(crate) struct AgentMirror(pub(crate) Weak<Agent>);

impl Mirror for AgentMirror {
    fn output(
        &self,
        task: TaskId,
        stream: OutputStream,
        data: Vec<u8>,
    ) -> wasmos_exec::SpawnFuture<()> {
        let agent = self.0.clone();
        Box::pin(async move {
            // Held (and the executor's tasks with it, once their pipes fill) until there is a
            // master to take it: a restarted agent attaches to its executor before it has
            // registered. One connection carries every task's output, usage and end, so it
            // waits for the agent's backlog only, not for one task's.
            while let Some(agent) = agent.upgrade() {
                if agent.link().is_some() {
                    agent.backlog_room().await;
                    agent.output(task, stream, data);
                    return;
                }
                drop(agent);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    }

    fn usage(
        &self,
        task: TaskId,
        cpu_ns: u64,
        mem_bytes: u64,
        started: bool,
        progress: Option<TaskProgress>,
    ) {
        let Some(agent) = self.0.upgrade() else {
            return;
        };
        let inner = agent.inner();
        if let Some(m) = inner.usage.get(&task) {
            m.usage.mirror(cpu_ns, mem_bytes, started);
            if let Some(p) = progress {
                m.platform.record_progress(p);
            }
        }
    }

    fn spawn_start(&self, task: TaskId, req: u64, specs: Vec<ChildSpec>) {
        let Some(agent) = self.0.upgrade() else {
            return;
        };
        let spawner = spawner_of(&agent, task);
        {
            // A call sent again (after a reconnect) is answered again, never started twice.
            let mut calls = agent.spawn_calls();
            match calls.get(&(task, req)) {
                Some(Some(results)) => {
                    let results = results.clone();
                    drop(calls);
                    tokio::spawn(async move {
                        if let Some(c) = agent.executor.lock().await.clone() {
                            c.answer_start(task, req, results);
                        }
                    });
                    return;
                }
                Some(None) => return,
                None => {
                    calls.insert((task, req), None);
                }
            }
        }
        tokio::spawn(async move {
            let results = match spawner {
                Some(s) => s.start(specs).await,
                None => specs.iter().map(|_| Err(restarted())).collect(),
            };
            if let Some(r) = agent.spawn_calls().get_mut(&(task, req)) {
                *r = Some(results.clone());
            }
            if let Some(c) = agent.executor.lock().await.clone() {
                c.answer_start(task, req, results);
            }
        });
    }

    fn spawn_wait(&self, task: TaskId, req: u64, handle: u32) {
        let Some(agent) = self.0.upgrade() else {
            return;
        };
        let spawner = spawner_of(&agent, task);
        tokio::spawn(async move {
            let outcome = match spawner {
                Some(s) => s.wait(handle).await,
                None => None,
            };
            if let Some(c) = agent.executor.lock().await.clone() {
                c.answer_wait(task, req, outcome.map(|o| (o.end, o.attempts)));
            }
        });
    }

    fn spawn_cancel(&self, task: TaskId, handle: u32) {
        if let Some(s) = self.0.upgrade().and_then(|a| spawner_of(&a, task)) {
            s.cancel(handle);
        }
    }
}

/// What starts `task`'s children: none for a task taken back from the last life, whose
/// children this agent does not know (and whose requests it would number anew).
fn spawner_of(agent: &Agent, task: TaskId) -> Option<Arc<dyn wasmos_exec::Spawner>> {
    agent
        .inner()
        .usage
        .get(&task)
        .and_then(|m| m.platform.spawner())
}

fn restarted() -> SpawnRefusal {
    SpawnRefusal::Refused(
        "its agent restarted since it started: it can start no more child tasks".into(),
    )
}

/// Attaches to the executor the agent's last life left, or starts one; what it already had.
pub(crate) async fn attach(agent: &Arc<Agent>) -> Result<Recovered, ExecutorError> {
    let mut current = agent.executor.lock().await;
    attach_locked(agent, &mut current).await
}

async fn attach_locked(
    agent: &Arc<Agent>,
    current: &mut Option<Arc<Client>>,
) -> Result<Recovered, ExecutorError> {
    let program = agent
        .cfg
        .executor
        .as_ref()
        .ok_or_else(|| ExecutorError::Start("this agent runs no executor".into()))?;
    let mirror = Arc::new(AgentMirror(Arc::downgrade(agent)));
    let (c, recovered) = Client::attach_or_start(
        &agent.cfg.work_dir,
        program,
        (
            agent.cfg.resources.mem_bytes,
            agent.cfg.resources.cpu_millis,
        ),
        agent.runner.fuel_per_core_second(),
        mirror,
    )
    .await?;
    *current = Some(Arc::new(c));
    Ok(recovered)
}

/// The executor, started again if the last one is gone.
async fn client(agent: &Arc<Agent>) -> Result<Arc<Client>, String> {
    let mut current = agent.executor.lock().await;
    if let Some(c) = current.as_ref().filter(|c| c.alive()) {
        return Ok(c.clone());
    }
    let recovered = attach_locked(agent, &mut current)
        .await
        .map_err(|e| e.to_string())?;
    let c = current
        .clone()
        .ok_or_else(|| "the executor is gone".to_string())?;
    // A new executor runs nothing of this agent's.
    for task in recovered.running.iter().chain(&recovered.ended) {
        c.discard(*task);
    }
    Ok(c)
}

/// Runs a prepared task in the executor, after writing down what a restarted agent needs to
/// finish it.
pub(crate) async fn in_executor(
    agent: &Arc<Agent>,
    task: TaskId,
    spec: &TaskSpec,
    dir: &taskdir::TaskDir,
    req: RunRequest,
    kill: watch::Receiver<bool>,
) -> TaskStatus {
    let client = match client(agent).await {
        Ok(c) => c,
        Err(e) => {
            return TaskStatus::with_reason(
                TaskState::Error,
                None,
                format!("cannot start the executor: {e}"),
            );
        }
    };
    let (path, pool_key) = dir.parts();
    let mut kept = spec.clone();
    kept.env.clear();
    kept.secret_env.clear();
    kept.stdin = None;
    let note = Note {
        spec: kept,
        dir: path,
        pool_key,
        ended: None,
    };
    if let Err(e) = write_note(&agent.cfg.work_dir, task, &note) {
        return TaskStatus::with_reason(
            TaskState::Error,
            None,
            format!("cannot write down the task for the agent's restarts: {e}"),
        );
    }
    {
        // Killed while it was prepared, or the agent stops: it is not started at all.
        let mut inner = agent.inner();
        if *kill.borrow() || inner.stopping {
            drop(inner);
            let _ = std::fs::remove_file(note_path(&agent.cfg.work_dir, task));
            return TaskStatus::with_reason(TaskState::Killed, Some(Reason::Killed), "killed");
        }
        inner.handed.insert(task);
    }
    let bundle_file = agent
        .cfg
        .work_dir
        .join("bundles")
        .join(format!("{}.wasm", spec.bundle));
    let platform = req.platform.clone();
    let launch = Launch::new(
        task,
        spec.bundle.clone(),
        bundle_file,
        &req,
        spec.resources.mem_bytes,
    );
    let ended = client.run(launch, kill).await;
    if let Some(p) = platform {
        p.record_files(ended.files);
    }
    ended.status
}

/// Takes back the tasks an executor left by the previous life still runs or has ended, from
/// what was written down for them, and reports again the ends the masters had not recorded;
/// has the executor drop what it runs without a note. The directories still in use.
pub(crate) fn resume_all(
    agent: &Arc<Agent>,
    recovered: Recovered,
    client: Option<&Client>,
) -> Vec<PathBuf> {
    let work_dir = &agent.cfg.work_dir;
    let known: Vec<TaskId> = recovered
        .running
        .iter()
        .chain(&recovered.ended)
        .copied()
        .collect();
    let mut noted = Vec::new();
    for e in std::fs::read_dir(notes_dir(work_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        match e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => noted.push(TaskId(n)),
            // A note half written when the agent died.
            None => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut dirs = Vec::new();
    for task in &known {
        if !noted.contains(task) {
            tracing::warn!(%task, "the executor runs a task this agent has no note of: killing it");
            if let Some(c) = client {
                c.discard(*task);
            }
        }
    }
    for task in noted {
        let note = match read_note(work_dir, task) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%task, "cannot read what was written down for a task: {e}");
                if let Some(c) = client.filter(|_| known.contains(&task)) {
                    c.discard(task);
                }
                let _ = std::fs::remove_file(note_path(work_dir, task));
                continue;
            }
        };
        if let Some(status) = note.ended {
            // Ended in the last life, its end not yet recorded by the masters.
            Agent::push_report(&mut agent.inner(), task, status);
            if let Some(c) = client.filter(|_| known.contains(&task)) {
                c.taken(task);
            }
        } else if known.contains(&task) {
            dirs.push(note.dir.clone());
            resume(agent, task, note);
        } else if !recovered.left_alone {
            let _ = std::fs::remove_file(note_path(work_dir, task));
        } else {
            dirs.push(note.dir);
        }
    }
    dirs
}

fn resume(agent: &Arc<Agent>, task: TaskId, note: Note) {
    let (kill_tx, kill) = watch::channel(false);
    {
        let mut inner = agent.inner();
        inner.tasks.insert(task, kill_tx);
        inner.handed.insert(task);
    }
    let metered = metered(agent, task, &note.spec);
    tracing::info!(%task, "taken back from the executor");
    let agent2 = agent.clone();
    agent.pool.spawn(async move {
        let agent = agent2;
        let ended = match client(&agent).await {
            Ok(c) => c.wait(task, kill).await,
            Err(e) => Ended {
                status: TaskStatus::with_reason(TaskState::Lost, Some(Reason::AgentLost), e),
                files: Vec::new(),
            },
        };
        metered.platform.record_files(ended.files);
        let dir = taskdir::TaskDir::adopt(
            note.dir,
            agent.cfg.keep_task_dirs,
            agent.dir_pool.clone(),
            note.pool_key,
        );
        let status = crate::collect(&agent, &note.spec, dir, ended.status, &metered.platform).await;
        end_task(&agent, task, status);
    });
}

/// Writes down a task's end, before its directory is emptied (a restart then reports it
/// again rather than collect what it made a second time); true if it was written.
pub(crate) fn note_end(agent: &Agent, task: TaskId, status: &TaskStatus) -> bool {
    let work_dir = &agent.cfg.work_dir;
    let Ok(mut note) = read_note(work_dir, task) else {
        // Never handed to the executor.
        return false;
    };
    // Written already before its directory was emptied, and unchanged since (no kill reason
    // added): not written again.
    if note.ended.as_ref() == Some(status) {
        return true;
    }
    note.ended = Some(status.clone());
    match write_note(work_dir, task, &note) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%task, "cannot write down the end of a task: {e}");
            false
        }
    }
}

/// A task's end is reported and written down (until the masters record it): the executor
/// may forget it.
pub(crate) fn ended(agent: &Arc<Agent>, task: TaskId, status: &TaskStatus) {
    if note_end(agent, task, status) {
        with_client(agent, move |c| c.taken(task));
    }
}

/// Runs `f` on the executor's client: at once when nobody holds it (messages keep their
/// order), else as soon as it is free.
fn with_client(agent: &Arc<Agent>, f: impl FnOnce(&Client) + Send + 'static) {
    if let Ok(current) = agent.executor.try_lock() {
        if let Some(c) = current.as_ref() {
            f(c);
        }
        return;
    }
    let agent = agent.clone();
    tokio::spawn(async move {
        if let Some(c) = agent.executor.lock().await.as_ref() {
            f(c);
        }
    });
}

/// The masters recorded a task's end: its note is no longer needed.
pub(crate) fn recorded(agent: &Agent, task: TaskId) {
    let _ = std::fs::remove_file(note_path(&agent.cfg.work_dir, task));
}

/// Before a stopping agent exits: what it told the executor is written.
pub(crate) async fn flush(agent: &Agent) {
    let client = agent.executor.lock().await.clone();
    if let Some(c) = client {
        c.flush().await;
    }
}

/// Empties `dir` of everything but `keep`.
pub(crate) fn remove_all_but(dir: &Path, keep: &[PathBuf]) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let path = e?.path();
        if keep.iter().any(|k| k.starts_with(&path)) {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
