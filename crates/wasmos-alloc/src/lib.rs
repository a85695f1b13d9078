//! The allocator's pure core: who is offered which resources (the master's half of two-level
//! scheduling). Deterministic: same input, same output; no clock (time is an argument), no
//! I/O, iteration over ordered maps only.

mod allocator;
mod role;
#[cfg(test)]
mod tests;

pub use allocator::{
    AcceptError, Accepted, AgentSummary, Allocator, Config, ConfigError, Launch, Offer, Operation,
    Pools, Preemption, Quota, Rescind, RescindReason, ReservationChange, RoleSummary, TaskRequest,
    dominant_share,
};
pub use role::{MAX_ROLE_DEPTH, MAX_ROLE_LEN, Role, RoleError};
