//! The one place that follows leadership. When this master becomes leader, and has applied
//! every entry of earlier terms, it starts the leader's work for that term: the offer cycle
//! (run here, as it owns the event channel), the lost-agent reaper and the job host. When the
//! master stops leading, or the term changes, all of it stops at once, and its agents and
//! frameworks are sent to the new leader.
//!
//! Before, each of these followed leadership on its own (a metrics watch, a check on every
//! cycle, a 300 ms and a 1 s poll), so for a while after a failover a deposed leader's loops
//! could still act, and a new leader's job host started up to 300 ms late.

use std::sync::Arc;

use tokio::sync::mpsc;
use wasmos_proto::MasterToAgent;

use wasmos_raft::RaftNode;

use crate::Shared;
use crate::offers::Event;

pub(crate) async fn run(shared: Arc<Shared>, mut events: mpsc::UnboundedReceiver<Event>) {
    let mut metrics = shared.raft.raft().metrics();
    // Whether this master led since its agents were last sent to the leader.
    let mut led = false;
    loop {
        if !shared.raft.is_leader() {
            if std::mem::take(&mut led) {
                redirect_agents(&shared);
            }
            // A follower acts on no event: they are dropped until this master leads.
            tokio::select! {
                ev = events.recv() => if ev.is_none() { return },
                changed = metrics.changed() => if changed.is_err() { return },
            }
            continue;
        }
        led = true;
        // Its state may lack writes acknowledged by the previous leader until then.
        if let Err(e) = shared.raft.leader_applied().await {
            tracing::info!("not leading yet: {e}");
            if !matches!(e, wasmos_raft::RaftError::NotLeader { .. }) {
                // Not a change of leader (no quorum, a stopped core): not a tight retry.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            continue;
        }
        let term = {
            let m = metrics.borrow_and_update();
            RaftNode::leads(&m).then_some(m.current_term)
        };
        let Some(term) = term else {
            continue;
        };
        tracing::info!(
            term,
            "leading: starting the offer cycle, the reaper and the job host"
        );
        let mut work = tokio::task::JoinSet::new();
        work.spawn(crate::scheduler::lead(shared.clone()));
        work.spawn(crate::jobs::lead(shared.clone()));
        work.spawn(crate::children::lead(shared.clone()));
        let mut stopped = false;
        let deposed = async {
            loop {
                if metrics.changed().await.is_err() {
                    stopped = true;
                    return;
                }
                let m = metrics.borrow_and_update();
                if !RaftNode::leads(&m) || m.current_term != term {
                    return;
                }
            }
        };
        let closed = crate::offers::lead(&shared, &mut events, deposed).await;
        work.abort_all();
        while work.join_next().await.is_some() {}
        tracing::info!(term, "no longer leading: the leader's work has stopped");
        // Its agents go to the new leader: what they told this one would only grow stale
        // (and read as current if it led again).
        shared.forget_usage();
        if closed || stopped {
            // Shutting down, or the raft core is gone: nothing here can lead again.
            return;
        }
    }
}

/// Sends this master's agents to the leader: their status updates and registrations can only
/// be recorded there, and a deposed leader would otherwise keep them (their heartbeats still
/// succeed) while another master declares their tasks lost.
fn redirect_agents(shared: &Shared) {
    let (_, addr) = shared.raft.leader_addr();
    for link in shared.agents().values() {
        let _ = link
            .tx
            .send(MasterToAgent::NotLeader { addr: addr.clone() });
    }
}
