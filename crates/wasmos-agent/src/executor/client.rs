//! The agent's side of its executor: starting it or attaching to the one its last life left,
//! the handshake in which the executor proves itself before it is sent anything, running and
//! waiting for tasks there, and attaching again when the connection drops while the executor
//! lives (a task is called lost only once the executor is gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use wasmos_proto::{
    ChildEnd, ChildSpec, OutputStream, Reason, SpawnRefusal, TaskId, TaskProgress, TaskState,
    TaskStatus,
};

use super::wire::{
    Ended, FromExecutor, Launch, MAX_HELLO, PROTOCOL, RECORD, Record, ToExecutor, WRONG_TOKEN,
    nonce, prove, proven, read_frame, read_frame_within, write_frame,
};
use super::{ExecutorError, ExecutorProgram};

/// What the agent mirrors of the tasks the executor runs.
pub(crate) trait Mirror: Send + Sync {
    /// Done once the output is queued for the master (or dropped, with no master).
    fn output(
        &self,
        task: TaskId,
        stream: OutputStream,
        data: Vec<u8>,
    ) -> wasmos_exec::SpawnFuture<()>;
    fn usage(
        &self,
        task: TaskId,
        cpu_ns: u64,
        mem_bytes: u64,
        started: bool,
        progress: Option<TaskProgress>,
    );
    /// A task's `wasmos:task/spawn` calls; answered through [`Client::answer_start`] and
    /// [`Client::answer_wait`].
    fn spawn_start(&self, task: TaskId, req: u64, specs: Vec<ChildSpec>);
    fn spawn_wait(&self, task: TaskId, req: u64, handle: u32);
    fn spawn_cancel(&self, task: TaskId, handle: u32);
}

/// Tasks an attached executor already had.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) running: Vec<TaskId>,
    pub(crate) ended: Vec<TaskId>,
    /// An executor answered at the recorded address but could not be attached (another
    /// protocol, too busy to answer): it may still run tasks in their directories, so
    /// nothing of the last life is cleaned up.
    pub(crate) left_alone: bool,
}

#[derive(Default)]
struct Books {
    /// The current connection's queue; `None` while attaching again.
    tx: Option<mpsc::UnboundedSender<ToExecutor>>,
    /// What waits to be sent once attached again.
    queued: Vec<ToExecutor>,
    waiting: BTreeMap<TaskId, oneshot::Sender<Ended>>,
    /// Launches the executor has not confirmed yet (listed as running in a handshake, metered
    /// or ended): sent again after a reconnect, since the first may have died with it.
    launched: BTreeMap<TaskId, Launch>,
    /// Tasks recovered at attach whose end may arrive before anyone waits for it.
    expected: BTreeSet<TaskId>,
    early: BTreeMap<TaskId, Ended>,
    /// Tasks the agent asked to kill, sent again on a new connection.
    killed: BTreeSet<TaskId>,
    /// Ends handed over (or kept for a later wait) that the agent has not written down yet:
    /// the executor must keep them until it has.
    delivered: BTreeSet<TaskId>,
    /// The executor is gone: nobody waits any more.
    gone: bool,
    /// Messages handed to the current connection's writer and not written yet.
    unsent: usize,
}

impl Books {
    /// Nothing more of `task` is kept here.
    fn forget(&mut self, task: TaskId) {
        self.delivered.remove(&task);
        self.early.remove(&task);
        self.expected.remove(&task);
    }

    fn send(&mut self, msg: ToExecutor) {
        match &self.tx {
            Some(tx) => match tx.send(msg) {
                Ok(()) => self.unsent += 1,
                Err(mpsc::error::SendError(msg)) => self.queued.push(msg),
            },
            None => self.queued.push(msg),
        }
    }
}

/// The agent's connection to its executor.
pub(crate) struct Client {
    books: Arc<Mutex<Books>>,
}

fn lock(books: &Mutex<Books>) -> MutexGuard<'_, Books> {
    books
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An attached connection, before its halves go to their tasks.
struct Attached {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    version: String,
    running: Vec<TaskId>,
    ended: Vec<(TaskId, Ended)>,
}

/// Why an attach failed.
enum AttachError {
    /// Nobody there, or someone who is not this agent's executor: the executor is gone.
    Absent(ExecutorError),
    /// The executor is there but did not answer in time, or turned the connection away
    /// before its challenge (a flood of other connections): worth trying again.
    Busy(ExecutorError),
    /// The executor speaks another protocol (an older or newer agent's).
    Incompatible(ExecutorError),
}

impl AttachError {
    fn into_inner(self) -> ExecutorError {
        match self {
            AttachError::Absent(e) | AttachError::Busy(e) | AttachError::Incompatible(e) => e,
        }
    }
}

/// How long a restarting agent keeps trying an executor that is there but does not answer,
/// before it gives up starting (its supervisor starts it again).
const BUSY_PATIENCE: Duration = Duration::from_secs(60);

impl Client {
    fn books(&self) -> MutexGuard<'_, Books> {
        lock(&self.books)
    }

    /// Attaches to the executor a previous life of this agent left running, or starts one.
    pub(crate) async fn attach_or_start(
        work_dir: &Path,
        program: &ExecutorProgram,
        resources: (u64, u64),
        fuel_rate: Option<u64>,
        mirror: Arc<dyn Mirror>,
    ) -> Result<(Client, Recovered), ExecutorError> {
        let mut left_alone = false;
        if let Some(record) = read_record(work_dir) {
            let since = tokio::time::Instant::now();
            loop {
                match attach(&record).await {
                    Ok(attached) => {
                        tracing::info!(
                            pid = record.pid,
                            version = %attached.version,
                            running = attached.running.len(),
                            ended = attached.ended.len(),
                            "attached to the executor left running"
                        );
                        return Ok(Client::install(attached, work_dir, mirror));
                    }
                    Err(AttachError::Absent(e)) => {
                        tracing::info!(pid = record.pid, "the last executor is gone ({e})");
                        break;
                    }
                    Err(AttachError::Busy(e)) if since.elapsed() < BUSY_PATIENCE => {
                        tracing::warn!(
                            pid = record.pid,
                            "the executor left running does not answer yet ({e}); trying again"
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(AttachError::Busy(e)) => {
                        return Err(ExecutorError::Start(format!(
                            "the executor left running (pid {}) does not answer: {e}",
                            record.pid
                        )));
                    }
                    Err(AttachError::Incompatible(e)) => {
                        left_alone = true;
                        tracing::warn!(
                            pid = record.pid,
                            "cannot attach to the executor left running ({e}); starting a new one and leaving its tasks' directories alone"
                        );
                        break;
                    }
                }
            }
        }
        let record = start(work_dir, program, resources, fuel_rate).await?;
        let attached = attach(&record).await.map_err(AttachError::into_inner)?;
        let (client, mut recovered) = Client::install(attached, work_dir, mirror);
        recovered.left_alone = left_alone;
        Ok((client, recovered))
    }

    /// Starts the halves' tasks and returns the client with what the executor had.
    fn install(
        attached: Attached,
        work_dir: &Path,
        mirror: Arc<dyn Mirror>,
    ) -> (Client, Recovered) {
        let recovered = Recovered {
            running: attached.running.clone(),
            ended: attached.ended.iter().map(|(t, _)| *t).collect(),
            left_alone: false,
        };
        let books = Arc::new(Mutex::new(Books {
            expected: recovered.running.iter().copied().collect(),
            early: attached.ended.iter().cloned().collect(),
            delivered: recovered.ended.iter().copied().collect(),
            ..Default::default()
        }));
        connect_halves(books.clone(), attached, work_dir.to_path_buf(), mirror);
        (Client { books }, recovered)
    }

    /// Whether the executor is still there (or being attached to again).
    pub(crate) fn alive(&self) -> bool {
        !self.books().gone
    }

    /// Runs `launch` in the executor; `kill` turning true kills it there.
    pub(crate) async fn run(&self, launch: Launch, kill: watch::Receiver<bool>) -> Ended {
        let task = launch.task;
        let (tx, ended) = oneshot::channel();
        {
            // One step: a reconnect in between would find a waiter without its launch.
            let mut b = self.books();
            if b.gone {
                return gone();
            }
            b.waiting.insert(task, tx);
            b.launched.insert(task, launch.clone());
            b.send(ToExecutor::Run(Box::new(launch)));
        }
        self.await_end(task, ended, kill).await
    }

    /// Waits for the end of `task`, which this executor ran when it was attached (a task it
    /// never knew ends at once, lost).
    pub(crate) async fn wait(&self, task: TaskId, kill: watch::Receiver<bool>) -> Ended {
        let (tx, ended) = oneshot::channel();
        {
            let mut b = self.books();
            let expected = b.expected.remove(&task);
            if let Some(e) = b.early.remove(&task) {
                return e;
            }
            if !expected || b.gone {
                return gone();
            }
            b.waiting.insert(task, tx);
        }
        self.await_end(task, ended, kill).await
    }

    async fn await_end(
        &self,
        task: TaskId,
        mut ended: oneshot::Receiver<Ended>,
        mut kill: watch::Receiver<bool>,
    ) -> Ended {
        let mut killed = false;
        let end = loop {
            tokio::select! {
                e = &mut ended => break e.unwrap_or_else(|_| gone()),
                changed = kill.wait_for(|k| *k), if !killed => {
                    killed = true;
                    if changed.is_ok() {
                        let mut b = self.books();
                        b.killed.insert(task);
                        b.send(ToExecutor::Kill { task });
                    }
                }
            }
        };
        let mut b = self.books();
        b.killed.remove(&task);
        b.launched.remove(&task);
        end
    }

    /// The agent has written `task`'s end down: the executor may forget it.
    pub(crate) fn taken(&self, task: TaskId) {
        let mut b = self.books();
        b.forget(task);
        b.send(ToExecutor::Taken { task });
    }

    /// The answer to a task's spawn call number `req`.
    pub(crate) fn answer_start(
        &self,
        task: TaskId,
        req: u64,
        results: Vec<Result<u32, SpawnRefusal>>,
    ) {
        self.books()
            .send(ToExecutor::SpawnStarted { task, req, results });
    }

    /// How the child a task waited for (call number `req`) ended.
    pub(crate) fn answer_wait(&self, task: TaskId, req: u64, outcome: Option<(ChildEnd, u32)>) {
        self.books()
            .send(ToExecutor::SpawnWaited { task, req, outcome });
    }

    /// Kills a task nobody will wait for and has the executor forget it (its end too, when
    /// it comes).
    pub(crate) fn discard(&self, task: TaskId) {
        let mut b = self.books();
        b.forget(task);
        b.send(ToExecutor::Kill { task });
        b.send(ToExecutor::Taken { task });
    }

    /// Waits (a little) until what was sent is written: before a stopping agent exits.
    pub(crate) async fn flush(&self) {
        for _ in 0..50 {
            let idle = {
                let b = self.books();
                b.tx.is_none() || b.unsent == 0
            };
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts a connection's writer and reader; when the reader ends, attaches again if the
/// executor is still there, and otherwise ends every wait as lost.
fn connect_halves(
    books: Arc<Mutex<Books>>,
    attached: Attached,
    work_dir: PathBuf,
    mirror: Arc<dyn Mirror>,
) {
    let Attached { mut r, mut w, .. } = attached;
    let (tx, mut rx) = mpsc::unbounded_channel::<ToExecutor>();
    {
        let mut b = lock(&books);
        b.tx = Some(tx);
        b.unsent = 0;
        for msg in std::mem::take(&mut b.queued) {
            b.send(msg);
        }
    }
    let written = books.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = write_frame(&mut w, &msg).await {
                tracing::warn!("cannot write to the executor: {e}");
                break;
            }
            let mut b = lock(&written);
            b.unsent = b.unsent.saturating_sub(1);
        }
    });
    tokio::spawn(async move {
        loop {
            match read_frame::<_, FromExecutor>(&mut r).await {
                Ok(Some(FromExecutor::Output { task, stream, data })) => {
                    mirror.output(task, stream, data).await
                }
                Ok(Some(FromExecutor::Usage(usage))) => {
                    {
                        let mut b = lock(&books);
                        for u in &usage {
                            b.launched.remove(&u.task);
                        }
                    }
                    for u in usage {
                        mirror.usage(u.task, u.cpu_ns, u.mem_bytes, u.started, u.progress);
                    }
                }
                Ok(Some(FromExecutor::Ended { task, ended })) => deliver(&books, task, ended),
                Ok(Some(FromExecutor::SpawnStart { task, req, specs })) => {
                    mirror.spawn_start(task, req, specs)
                }
                Ok(Some(FromExecutor::SpawnWait { task, req, handle })) => {
                    mirror.spawn_wait(task, req, handle)
                }
                Ok(Some(FromExecutor::SpawnCancel { task, handle })) => {
                    mirror.spawn_cancel(task, handle)
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!("the executor closed the connection");
                    break;
                }
                Err(e) => {
                    tracing::warn!("the executor connection failed: {e}");
                    break;
                }
            }
        }
        // What the writer had not written is made good after the next handshake: launches
        // not confirmed are sent again, kills too, and ends nobody wants are taken.
        lock(&books).tx = None;
        writer.abort();
        reattach(books, work_dir, mirror).await;
    });
}

/// An end, to whoever waits for it; kept if it is one of a recovered task nobody waits for
/// yet; otherwise dropped (sent again: its first copy was taken).
fn deliver(books: &Mutex<Books>, task: TaskId, ended: Ended) {
    let mut b = lock(books);
    b.launched.remove(&task);
    match b.waiting.remove(&task) {
        Some(waiter) => {
            b.delivered.insert(task);
            let _ = waiter.send(ended);
        }
        None => {
            if b.expected.remove(&task) {
                b.delivered.insert(task);
                b.early.insert(task, ended);
            }
        }
    }
}

/// After a dropped connection: attaches again to the same executor while it is there,
/// else gives up on it.
async fn reattach(books: Arc<Mutex<Books>>, work_dir: PathBuf, mirror: Arc<dyn Mirror>) {
    let mut pause = Duration::from_millis(200);
    let since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        let Some(record) = read_record(&work_dir) else {
            break;
        };
        let attached = match attach(&record).await {
            Ok(a) => a,
            // An executor that does not answer for minutes is as good as gone (the masters
            // have long declared its tasks lost).
            Err(AttachError::Busy(e)) if since.elapsed() < 5 * BUSY_PATIENCE => {
                tracing::warn!("attaching to the executor again: {e}");
                continue;
            }
            Err(AttachError::Busy(_)) => break,
            Err(AttachError::Absent(_) | AttachError::Incompatible(_)) => break,
        };
        tracing::info!("attached to the executor again");
        {
            let mut b = lock(&books);
            let mut unwanted = Vec::new();
            for (task, ended) in &attached.ended {
                b.launched.remove(task);
                if let Some(waiter) = b.waiting.remove(task) {
                    b.delivered.insert(*task);
                    let _ = waiter.send(ended.clone());
                } else if b.expected.remove(task) {
                    b.delivered.insert(*task);
                    b.early.insert(*task, ended.clone());
                } else if !b.delivered.contains(task) {
                    // Written down already (its `Taken` died with the connection).
                    unwanted.push(*task);
                }
            }
            b.launched.retain(|t, _| !attached.running.contains(t));
            let unknown: Vec<TaskId> = b
                .waiting
                .keys()
                .filter(|t| !attached.running.contains(t) && !b.launched.contains_key(t))
                .copied()
                .collect();
            for task in unknown {
                if let Some(waiter) = b.waiting.remove(&task) {
                    let _ = waiter.send(gone());
                }
            }
            // The writer's queue died with the connection: launches and kills are made anew,
            // the rest queued since is kept.
            b.queued
                .retain(|m| !matches!(m, ToExecutor::Run(_) | ToExecutor::Kill { .. }));
            let relaunch: Vec<ToExecutor> = b
                .launched
                .values()
                .map(|l| ToExecutor::Run(Box::new(l.clone())))
                .collect();
            b.queued.extend(relaunch);
            let kills: Vec<ToExecutor> = b
                .killed
                .iter()
                .map(|&task| ToExecutor::Kill { task })
                .collect();
            b.queued.extend(kills);
            b.queued
                .extend(unwanted.into_iter().map(|task| ToExecutor::Taken { task }));
        }
        connect_halves(books, attached, work_dir, mirror);
        return;
    }
    tracing::error!("the executor is gone: its tasks are lost");
    let mut b = lock(&books);
    b.gone = true;
    b.queued.clear();
    b.launched.clear();
    for (_, waiter) in std::mem::take(&mut b.waiting) {
        let _ = waiter.send(gone());
    }
}

fn gone() -> Ended {
    Ended {
        status: TaskStatus::with_reason(
            TaskState::Lost,
            Some(Reason::AgentLost),
            "its executor process ended while it ran",
        ),
        files: Vec::new(),
    }
}

fn read_record(work_dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(work_dir.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Connects and runs the handshake: the executor's challenge, this agent's proof and
/// challenge, the executor's proof. Nothing else is sent before the executor has proven
/// itself.
async fn attach(record: &Record) -> Result<Attached, AttachError> {
    use AttachError::{Absent, Busy, Incompatible};
    let timed_out = || ExecutorError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut));
    let stream =
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(record.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Absent(e.into())),
            Err(_) => return Err(Busy(timed_out())),
        };
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let challenge =
        match tokio::time::timeout(Duration::from_secs(5), read_frame_within(&mut r, MAX_HELLO))
            .await
        {
            Err(_) => return Err(Busy(timed_out())),
            // Closed before its challenge: too many handshakes at once.
            Ok(Ok(None)) | Ok(Err(ExecutorError::Io(_))) => {
                return Err(Busy(ExecutorError::Unexpected));
            }
            Ok(Err(e)) => return Err(Absent(e)),
            Ok(Ok(Some(c))) => c,
        };
    let FromExecutor::Challenge { nonce: theirs } = challenge else {
        return Err(Absent(ExecutorError::Impostor));
    };
    let mine = nonce().map_err(Busy)?;
    let hello = ToExecutor::Hello {
        protocol: PROTOCOL,
        proof: prove(&record.token, "agent", &theirs),
        nonce: mine.clone(),
    };
    write_frame(&mut w, &hello).await.map_err(Busy)?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame_within(&mut r, MAX_ATTACHED),
    )
    .await
    .map_err(|_| Busy(timed_out()))?
    .map_err(Busy)?;
    match answer {
        Some(FromExecutor::Attached {
            proof,
            version,
            running,
            ended,
        }) => {
            if !proven(&record.token, "executor", &mine, &proof) {
                return Err(Absent(ExecutorError::Impostor));
            }
            Ok(Attached {
                r,
                w,
                version,
                running,
                ended,
            })
        }
        Some(FromExecutor::Refused {
            message,
            incompatible: true,
        }) => Err(Incompatible(ExecutorError::Refused(message))),
        // Not its token: another executor took the port.
        Some(FromExecutor::Refused { message, .. }) if message == WRONG_TOKEN => {
            Err(Absent(ExecutorError::Refused(message)))
        }
        // Turned away for a hello too slow (a starved agent): worth trying again.
        Some(FromExecutor::Refused { message, .. }) => Err(Busy(ExecutorError::Refused(message))),
        _ => Err(Busy(ExecutorError::Unexpected)),
    }
}

/// Largest handshake answer: the ends an executor holds travel in it.
const MAX_ATTACHED: usize = 64 << 20;

/// Starts an executor and reads the record it writes.
async fn start(
    work_dir: &Path,
    program: &ExecutorProgram,
    (mem_bytes, cpu_millis): (u64, u64),
    fuel_rate: Option<u64>,
) -> Result<Record, ExecutorError> {
    let log_path = work_dir.join("executor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = tokio::process::Command::new(&program.program);
    cmd.args(&program.args)
        .arg("--work-dir")
        .arg(work_dir)
        .arg("--mem")
        .arg(mem_bytes.to_string())
        .arg("--cpu-millis")
        .arg(cpu_millis.to_string())
        .arg("--recovery-timeout-ms")
        .arg(program.recovery_timeout.as_millis().to_string())
        // The rate the agent measured, so the two meter alike.
        .args(
            fuel_rate
                .filter(|_| !program.args.iter().any(|a| a == "--fuel-rate"))
                .map(|r| vec!["--fuel-rate".to_string(), r.to_string()])
                .unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // Its own process group (on Windows, detached from the console), so a signal to the
    // agent's group, or the agent's console closing, does not reach the tasks.
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(windows)]
    cmd.creation_flags(0x0000_0008 | 0x0000_0200);
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecutorError::Start(format!("{}: {e}", program.program.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ExecutorError::Start("no stdout".into()))?;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let ready = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line),
    )
    .await;
    if !matches!(ready, Ok(Ok(_))) || line.trim() != "ready" {
        let _ = child.start_kill();
        return Err(ExecutorError::Start(format!(
            "it did not get ready; see {}",
            log_path.display()
        )));
    }
    // Reaped when it ends, while this agent lives; after that, init's.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    read_record(work_dir).ok_or_else(|| ExecutorError::Start("it wrote no record".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::executor::{ExecutorSettings, serve};
    use tokio::net::TcpListener;

    /// A real executor on a temporary work directory, and its record.
    async fn executor(dir: &Path) -> Record {
        let settings = ExecutorSettings {
            work_dir: dir.to_path_buf(),
            exec: wasmos_exec::ExecConfig::default(),
            mem_bytes: 64 << 20,
            cpu_millis: 1000,
            recovery_timeout: Duration::from_secs(20),
        };
        tokio::spawn(serve(settings));
        for _ in 0..200 {
            if let Some(r) = read_record(dir) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the executor wrote no record");
    }

    #[tokio::test]
    async fn the_executor_attaches_only_an_agent_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let record = executor(dir.path()).await;
        let mut wrong = record.clone();
        wrong.token = "0".repeat(64);
        match attach(&wrong).await {
            Err(AttachError::Absent(ExecutorError::Refused(m))) => {
                assert!(m.contains("wrong token"), "{m}")
            }
            Err(e) => panic!("{}", e.into_inner()),
            Ok(_) => panic!("attached without the token"),
        }
        let attached = attach(&record).await.map_err(|_| ()).expect("attach");
        assert!(attached.running.is_empty() && attached.ended.is_empty());
    }

    #[tokio::test]
    async fn an_impostor_at_the_executors_address_is_told_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let record = Record {
            addr: listener.local_addr().unwrap(),
            token: "a".repeat(64),
            pid: 1,
            protocol: PROTOCOL,
            version: "x".into(),
        };
        let impostor = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let challenge = FromExecutor::Challenge { nonce: "n".into() };
            write_frame(&mut w, &challenge).await.unwrap();
            let hello: Option<ToExecutor> = read_frame(&mut r).await.unwrap();
            let fake = FromExecutor::Attached {
                proof: vec![0; 32],
                version: "x".into(),
                running: vec![],
                ended: vec![],
            };
            write_frame(&mut w, &fake).await.unwrap();
            // Whatever else the agent sends, if anything.
            let after: Result<Option<ToExecutor>, _> = read_frame(&mut r).await;
            (hello, after.ok().flatten())
        });
        let result = attach(&record).await;
        assert!(
            matches!(result, Err(AttachError::Absent(ExecutorError::Impostor))),
            "the impostor was attached"
        );
        drop(result);
        let (hello, after) = impostor.await.unwrap();
        // The hello proves the token without revealing it, and nothing follows it.
        match hello {
            Some(ToExecutor::Hello { proof, .. }) => {
                assert!(!String::from_utf8_lossy(&proof).contains(&record.token))
            }
            other => panic!("{other:?}"),
        }
        assert!(after.is_none(), "{after:?}");
    }
}
