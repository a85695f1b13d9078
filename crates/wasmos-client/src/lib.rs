//! The client library of the `wasmos-client/1` channel: how the CLI, the integration tests and
//! the benchmarks talk to a master group.
//!
//! [`Client::connect`] finds the leader among the configured masters; every call follows
//! `NotLeader` redirects, waits out elections, and retries what is safe to retry at the next
//! leader (reads, uploads, submissions carrying a resubmission key). Failures are
//! [`ClientError`]s: a refusal of this client's identity is told apart from a lost connection
//! and from a master's domain answer.

mod client;
mod config;
mod error;

pub use client::{Client, ConnectOptions, EventFrame};
pub use config::{CONFIG_FILE, ClientConfig, default_data_dir, resolve_path};
pub use error::ClientError;
