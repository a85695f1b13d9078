//! The framework SDK: write a scheduler as a [`Scheduler`] (a few callbacks that see offers and
//! task updates and answer with calls on a [`Context`]), and run it with [`run`] over QUIC, or
//! drive it yourself with the sans-IO [`Driver`] (events and the time in, actions out).
//!
//! The driver does the protocol's bookkeeping so schedulers do not have to: it subscribes and
//! re-subscribes with the framework id after a master failover (keeping the tasks), follows
//! the leader, acknowledges status updates once the scheduler has seen them, reconciles after
//! re-subscribing, and treats a silent master (no heartbeat) as gone.

mod client;
mod driver;

pub use client::{ClientError, Cluster, run};
pub use driver::{Action, Context, Driver, Options, Scheduler};
/// The wire types a scheduler works with (offers, task specs, statuses, ids).
pub use wasmos_proto as proto;
