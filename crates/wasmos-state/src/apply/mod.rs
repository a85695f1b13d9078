//! `ClusterState::apply` by command family, one file each: what a command of each family
//! changes and when it is refused.

mod agents;
mod frameworks;
mod jobs;
mod roles;
mod storage;
mod tasks;
