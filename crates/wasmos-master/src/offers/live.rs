//! The offer cycle in the running master: the thin async loop around the pure [`Cycle`] and
//! its [`Env`] on `Shared` (raft proposals awaited each on a task of its own, agents'
//! channels, the masters' secrets key).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wasmos_proto::{AgentId, MasterToAgent, TaskId, TaskSpec};
use wasmos_state::{ClusterState, Command};

use super::{Cycle, Env, Event, Proposal, settle};
use crate::{Shared, now_ms};

/// The offer cycle while this master leads, until `deposed` resolves (started and stopped by
/// [`crate::leadership`]). The allocator is rebuilt from the replicated state, earlier leaders'
/// writes included, and dropped at the end with every outstanding offer. True if the event
/// channel closed (the master is shutting down).
pub(crate) async fn lead(
    shared: &Arc<Shared>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    deposed: impl std::future::Future<Output = ()>,
) -> bool {
    let next = shared.raft.read(|s| s.next_task_id);
    shared
        .last_task_id
        .fetch_max(next, std::sync::atomic::Ordering::Relaxed);
    let mut cycle = Cycle::new(LiveEnv(shared.clone()), now_ms());
    let closed = cycle_loop(
        &mut cycle,
        events,
        deposed,
        shared.cfg.offer_interval,
        &shared.metrics,
    )
    .await;
    // No longer the leader: send the frameworks to the one that is.
    let (_, addr) = shared.raft.leader_addr();
    cycle.not_leader(addr);
    closed
}

async fn cycle_loop(
    cycle: &mut Cycle<LiveEnv>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    deposed: impl std::future::Future<Output = ()>,
    interval: Duration,
    metrics: &crate::metrics::Metrics,
) -> bool {
    let mut deposed = std::pin::pin!(deposed);
    loop {
        let first = tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => Some(ev),
                None => {
                    events.close();
                    return true;
                }
            },
            _ = tokio::time::sleep(interval) => None,
            () = &mut deposed => return false,
        };
        let mut batch: Vec<Event> = first.into_iter().collect();
        while let Ok(ev) = events.try_recv() {
            batch.push(ev);
        }
        let start = std::time::Instant::now();
        cycle.step(batch, now_ms());
        metrics.offer_cycle(start.elapsed());
    }
}

/// The running master as the offer cycle's environment.
#[derive(Clone)]
pub(crate) struct LiveEnv(Arc<Shared>);

impl Env for LiveEnv {
    fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.0.read(f)
    }

    fn allocator_config(&self) -> wasmos_alloc::Config {
        self.0.cfg.allocator.clone()
    }

    fn propose(&self, cmd: Command, then: Proposal) {
        // Handed to the write batcher here, in the order the cycle decided.
        let written = self.0.propose(cmd);
        let env = self.clone();
        tokio::spawn(async move {
            let result = written.await;
            settle(&env, then, result);
        });
    }

    fn send_to_agent(&self, agent: &AgentId, msg: MasterToAgent) -> bool {
        self.0.send_to_agent(agent, msg)
    }

    fn launch(&self, agent: &AgentId, task: TaskId, spec: TaskSpec) -> bool {
        self.0.launch(agent, task, spec)
    }

    fn new_task_id(&self) -> TaskId {
        self.0.new_task_id()
    }

    fn check_storage(&self, tenant: &str) -> Result<(), String> {
        self.0.check_storage(tenant, 1)
    }

    fn seal(&self, spec: &mut TaskSpec) -> Result<(), String> {
        crate::policy::seal(&self.0.secrets, spec)
    }

    fn connected_agents(&self) -> Vec<AgentId> {
        self.0.agents().keys().cloned().collect()
    }

    fn preemption_grace_ms(&self) -> u64 {
        self.0.cfg.tenancy.preemption_grace.as_millis() as u64
    }

    fn post(&self, ev: Event) {
        self.0.offer_event(ev);
    }
}
