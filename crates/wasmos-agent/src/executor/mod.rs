//! The executor: a process of its own, started by the agent, that runs the agent's tasks in
//! wasmtime and outlives the agent, so a restarted agent (an upgrade, a crash of the agent
//! process while the host stays up) attaches to the tasks still running and to the ends of
//! those that finished meanwhile, as a Mesos agent recovers its executors.
//!
//! The agent keeps everything that talks to the cluster (the master session, fetching inputs,
//! storing outputs, compiling); the executor only runs compiled components against task
//! directories the agent prepared (`server.rs`). They speak length-prefixed postcard frames
//! over a loopback TCP connection (`wire.rs`) on which each proves to the other that it holds
//! the token the executor wrote to its record in the agent's private work directory
//! (`executor.json`). The agent's side (`client.rs`) reconnects when the connection drops.

mod client;
mod server;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

pub(crate) use client::{Client, Mirror, Recovered};
pub use server::{ExecutorSettings, serve};
pub use wire::{Ended, Launch};

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("executor I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("executor message: {0}")]
    Codec(#[from] postcard::Error),
    #[error("executor frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("the executor refused the agent: {0}")]
    Refused(String),
    #[error("the executor answered out of turn")]
    Unexpected,
    #[error("the process at the executor's address could not prove it is this agent's executor")]
    Impostor,
    #[error("cannot start the executor process: {0}")]
    Start(String),
    #[error(transparent)]
    Exec(#[from] wasmos_exec::ExecError),
}

/// How the agent starts an executor.
#[derive(Debug, Clone)]
pub struct ExecutorProgram {
    /// The program (this one) and the arguments that make it an executor; the agent adds
    /// `--work-dir`, `--mem`, `--cpu` and `--recovery-timeout-ms`.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub recovery_timeout: Duration,
}
