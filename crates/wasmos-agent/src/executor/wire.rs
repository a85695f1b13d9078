//! What the agent and its executor say to each other: the messages, their frames, the
//! handshake in which each proves to the other that it holds the executor's token, and a
//! task's run request as it crosses the process boundary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wasmos_exec::{
    Burst, DiskQuota, EgressPolicy, MemoryPool, Preopen, RunRequest, TaskContext, TaskPlatform,
    TaskUsage,
};
use wasmos_proto::{
    BundleHash, ChildEnd, ChildSpec, OutputStream, SpawnRefusal, TaskId, TaskProgress, TaskStatus,
};

use super::ExecutorError;

/// Bumped whenever a message of this module changes. Its messages carry types of
/// `wasmos-proto` too, so that protocol's version must match as well: an agent attaches only
/// to an executor that speaks both as it does.
pub(crate) const PROTOCOL: (u32, u32) = (1, wasmos_proto::PROTOCOL_VERSION as u32);

/// Largest frame either side accepts: a task's stdin travels in its launch.
const MAX_FRAME: usize = 512 << 20;

/// The refusal of a wrong proof: the only one that says the executor is not this agent's.
pub(crate) const WRONG_TOKEN: &str = "wrong token";

/// Largest frame before the other side has proven it holds the token.
pub(crate) const MAX_HELLO: usize = 4 << 10;

/// The executor's record in the agent's work directory.
pub(crate) const RECORD: &str = "executor.json";

/// What the executor writes where the agent finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
    pub(crate) pid: u32,
    pub(crate) protocol: (u32, u32),
    pub(crate) version: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToExecutor {
    /// The answer to the executor's challenge: the agent's proof that it holds the token, and
    /// its own challenge.
    Hello {
        protocol: (u32, u32),
        proof: Vec<u8>,
        nonce: String,
    },
    Run(Box<Launch>),
    Kill {
        task: TaskId,
    },
    /// The masters have recorded the end of `task`: the executor forgets it.
    Taken {
        task: TaskId,
    },
    /// The answer to [`FromExecutor::SpawnStart`] number `req`.
    SpawnStarted {
        task: TaskId,
        req: u64,
        results: Vec<Result<u32, SpawnRefusal>>,
    },
    /// The answer to [`FromExecutor::SpawnWait`] number `req`: how the child ended, with the
    /// attempts it took; none for a handle the agent does not know.
    SpawnWaited {
        task: TaskId,
        req: u64,
        outcome: Option<(ChildEnd, u32)>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromExecutor {
    /// The first frame on every connection.
    Challenge {
        nonce: String,
    },
    Attached {
        /// The executor's proof that it holds the token: the agent sends nothing more before
        /// checking it.
        proof: Vec<u8>,
        version: String,
        running: Vec<TaskId>,
        ended: Vec<(TaskId, Ended)>,
    },
    Refused {
        message: String,
        /// Turned away for speaking another protocol (not for a wrong proof).
        incompatible: bool,
    },
    Output {
        task: TaskId,
        stream: OutputStream,
        data: Vec<u8>,
    },
    Usage(Vec<Usage>),
    Ended {
        task: TaskId,
        ended: Ended,
    },
    /// `wasmos:task/spawn` of a task: children to start (numbered `req` by the executor, sent
    /// again to each agent that attaches until answered).
    SpawnStart {
        task: TaskId,
        req: u64,
        specs: Vec<ChildSpec>,
    },
    /// Waits for the end of the task's child `handle`.
    SpawnWait {
        task: TaskId,
        req: u64,
        handle: u32,
    },
    /// Asks the task's child `handle` to stop.
    SpawnCancel {
        task: TaskId,
        handle: u32,
    },
}

/// How a task run by the executor ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ended {
    pub status: TaskStatus,
    /// The files it published by name, as (name, guest path).
    pub files: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Usage {
    pub(crate) task: TaskId,
    pub(crate) cpu_ns: u64,
    pub(crate) mem_bytes: u64,
    pub(crate) started: bool,
    pub(crate) progress: Option<TaskProgress>,
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ExecutorError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(ExecutorError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| ExecutorError::TooLarge(body.len()))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}

/// The next frame, or `None` at a clean end of the stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin, T: for<'a> Deserialize<'a>>(
    r: &mut R,
) -> Result<Option<T>, ExecutorError> {
    read_frame_within(r, MAX_FRAME).await
}

/// The next frame if it is at most `max` bytes.
pub(crate) async fn read_frame_within<R: AsyncRead + Unpin, T: for<'a> Deserialize<'a>>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, ExecutorError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ExecutorError::TooLarge(len));
    }
    // Grown as the bytes arrive: a length alone reserves nothing.
    let mut body = Vec::new();
    r.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(postcard::from_bytes(&body)?))
}

/// Proof of holding `token`, bound to who proves it and to the other side's fresh nonce.
pub(crate) fn prove(token: &str, who: &str, nonce: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    ring::hmac::sign(&key, format!("{who}:{nonce}").as_bytes())
        .as_ref()
        .to_vec()
}

/// Checks a proof (in constant time).
pub(crate) fn proven(token: &str, who: &str, nonce: &str, proof: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    ring::hmac::verify(&key, format!("{who}:{nonce}").as_bytes(), proof).is_ok()
}

pub(crate) fn nonce() -> Result<String, ExecutorError> {
    wasmos_net::seal::random_token()
        .ok_or_else(|| ExecutorError::Start("the OS gave no randomness".into()))
}

/// One task to run: a [`RunRequest`] as it crosses the process boundary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    pub(crate) task: TaskId,
    pub(crate) bundle: BundleHash,
    /// Where the agent keeps the bundle, compiled only if the artifact cache lacks it.
    pub(crate) bundle_file: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cpu_millis: u64,
    mem_bytes: u64,
    timeout_ms: u64,
    max_output_bytes: u64,
    truncate_output: bool,
    cpu_budget_ms: Option<u64>,
    stdin: Vec<u8>,
    net_allow: Vec<wasmos_proto::NetRule>,
    egress: Vec<wasmos_proto::EgressRule>,
    protected: Vec<wasmos_proto::Cidr>,
    net_rate: Option<u64>,
    preopens: Vec<(PathBuf, String, bool)>,
    disk: Option<(PathBuf, u64, u64)>,
    context: (u64, Option<u64>, Option<String>, Option<u32>, u32, String),
    grace_ms: u64,
    /// The memory its request sets aside from the pool burstable tasks borrow from.
    pub(crate) reserve_bytes: u64,
    burstable: bool,
}

impl Launch {
    /// `req` as sent; its meters and platform stay with the agent, which mirrors them.
    pub fn new(
        task: TaskId,
        bundle: BundleHash,
        bundle_file: PathBuf,
        req: &RunRequest,
        reserve_bytes: u64,
    ) -> Launch {
        let c = req
            .platform
            .as_ref()
            .map(|p| p.context().clone())
            .unwrap_or_default();
        Launch {
            task,
            bundle,
            bundle_file,
            args: req.args.clone(),
            env: req.env.clone(),
            cpu_millis: req.cpu_millis,
            mem_bytes: req.mem_bytes,
            timeout_ms: u64::try_from(req.timeout.as_millis()).unwrap_or(u64::MAX),
            max_output_bytes: req.max_output_bytes,
            truncate_output: req.truncate_output,
            cpu_budget_ms: req
                .cpu_budget
                .map(|b| u64::try_from(b.as_millis()).unwrap_or(u64::MAX)),
            stdin: req.stdin.clone(),
            net_allow: req.net_allow.clone(),
            egress: req.egress.rules.clone(),
            protected: req.egress.protected.clone(),
            net_rate: req.net_rate,
            preopens: req
                .preopens
                .iter()
                .map(|p| (p.host.clone(), p.guest.clone(), p.read_only))
                .collect(),
            disk: req
                .disk
                .as_ref()
                .map(|d| (d.root.clone(), d.max_bytes, d.max_entries)),
            context: (c.task_id, c.job_id, c.group, c.index, c.attempt, c.role),
            grace_ms: req.platform.as_ref().map_or(0, |p| {
                u64::try_from(p.grace().as_millis()).unwrap_or(u64::MAX)
            }),
            reserve_bytes,
            burstable: req.burst.is_some(),
        }
    }

    pub(crate) fn request(
        &self,
        memory: &Arc<MemoryPool>,
        usage: Arc<TaskUsage>,
        platform: Arc<TaskPlatform>,
    ) -> RunRequest {
        RunRequest {
            args: self.args.clone(),
            env: self.env.clone(),
            cpu_millis: self.cpu_millis,
            mem_bytes: self.mem_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
            max_output_bytes: self.max_output_bytes,
            truncate_output: self.truncate_output,
            cpu_budget: self.cpu_budget_ms.map(Duration::from_millis),
            stdin: self.stdin.clone(),
            net_allow: self.net_allow.clone(),
            egress: Arc::new(EgressPolicy {
                rules: self.egress.clone(),
                protected: self.protected.clone(),
            }),
            net_rate: self.net_rate,
            preopens: self
                .preopens
                .iter()
                .map(|(host, guest, read_only)| Preopen {
                    host: host.clone(),
                    guest: guest.clone(),
                    read_only: *read_only,
                })
                .collect(),
            disk: self
                .disk
                .as_ref()
                .map(|(root, max_bytes, max_entries)| DiskQuota {
                    root: root.clone(),
                    max_bytes: *max_bytes,
                    max_entries: *max_entries,
                }),
            usage: Some(usage),
            platform: Some(platform),
            burst: self.burstable.then(|| Burst {
                request_bytes: self.reserve_bytes,
                pool: memory.clone(),
            }),
        }
    }

    pub(crate) fn platform(&self) -> Arc<TaskPlatform> {
        let (task_id, job_id, group, index, attempt, role) = self.context.clone();
        TaskPlatform::new(
            TaskContext {
                task_id,
                job_id,
                group,
                index,
                attempt,
                role,
            },
            Duration::from_millis(self.grace_ms),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_for_its_token_side_and_nonce() {
        let p = prove("secret", "agent", "n1");
        assert!(proven("secret", "agent", "n1", &p));
        assert!(!proven("other", "agent", "n1", &p));
        assert!(!proven("secret", "executor", "n1", &p));
        assert!(!proven("secret", "agent", "n2", &p));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &ToExecutor::Kill { task: TaskId(7) })
            .await
            .unwrap();
        let got: Option<ToExecutor> = read_frame(&mut b).await.unwrap();
        assert!(matches!(got, Some(ToExecutor::Kill { task }) if task == TaskId(7)));
        a.write_all(&(MAX_HELLO as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame_within::<_, ToExecutor>(&mut b, MAX_HELLO)
            .await
            .unwrap_err();
        assert!(matches!(err, ExecutorError::TooLarge(_)), "{err}");
    }
}
