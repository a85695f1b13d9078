//! The agent's side of `wasmos:task/spawn`: the children its tasks start, numbered per parent,
//! asked of the leader and followed until they end, started again when they fail and have
//! retries left. Requests and watches not yet answered are sent again to each master the agent
//! registers with, so a failover loses no child and starts none twice (the masters know a
//! request again by its parent and number).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use wasmos_exec::{SpawnFuture, Spawner};
use wasmos_proto::{AgentToMaster, ChildEnd, ChildOutcome, ChildSpec, SpawnRefusal, TaskId};

use crate::Agent;

/// How long a request the masters could not take now waits before it is sent again.
const RETRY_UNAVAILABLE: Duration = Duration::from_millis(500);

/// Every running task's children.
#[derive(Default)]
pub(crate) struct Children(Mutex<State>);

#[derive(Default)]
struct State {
    parents: HashMap<TaskId, Parent>,
    /// The task of each child's current run: (parent, handle).
    by_task: HashMap<TaskId, (TaskId, u32)>,
}

#[derive(Default)]
struct Parent {
    next_seq: u32,
    next_handle: u32,
    /// Requests the masters have not answered, by number.
    asking: BTreeMap<u32, Asking>,
    slots: HashMap<u32, Slot>,
}

struct Asking {
    handle: u32,
    spec: ChildSpec,
    /// The guest waiting in `start`; none for a retry.
    reply: Option<oneshot::Sender<Result<TaskId, SpawnRefusal>>>,
}

struct Slot {
    spec: ChildSpec,
    attempts: u32,
    /// Its current run, once the masters took it.
    task: Option<TaskId>,
    /// Asked to stop: not started again.
    cancelled: bool,
    outcome: watch::Sender<Option<ChildOutcome>>,
}

impl Children {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new request of `parent`'s for `handle`: numbered, recorded, sent if connected.
    fn ask(
        state: &mut State,
        link: Option<&mpsc::UnboundedSender<AgentToMaster>>,
        parent: TaskId,
        handle: u32,
        reply: Option<oneshot::Sender<Result<TaskId, SpawnRefusal>>>,
    ) {
        let Some(p) = state.parents.get_mut(&parent) else {
            return;
        };
        let Some(slot) = p.slots.get(&handle) else {
            return;
        };
        let seq = p.next_seq;
        p.next_seq += 1;
        let spec = slot.spec.clone();
        tracing::debug!(%parent, seq, handle, connected = link.is_some(), "asking for a child");
        if let Some(link) = link {
            let _ = link.send(AgentToMaster::Spawn {
                parent,
                seq,
                spec: spec.clone(),
            });
        }
        p.asking.insert(
            seq,
            Asking {
                handle,
                spec,
                reply,
            },
        );
    }

    /// The masters' answer to request `seq` of `parent`.
    pub(crate) fn spawned(
        self: &Arc<Self>,
        agent: &Arc<Agent>,
        parent: TaskId,
        seq: u32,
        child: Result<TaskId, SpawnRefusal>,
    ) {
        tracing::debug!(%parent, seq, "spawn answered: {child:?}");
        let link = agent.link();
        let mut state = self.state();
        let state = &mut *state;
        let Some(p) = state.parents.get_mut(&parent) else {
            return;
        };
        if let Err(SpawnRefusal::Unavailable(why)) = &child {
            // Asked again after a pause, under the same number.
            tracing::debug!(%parent, seq, "spawn not taken now: {why}");
            let (me, agent) = (Arc::downgrade(self), Arc::downgrade(agent));
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_UNAVAILABLE).await;
                if let (Some(me), Some(agent)) = (me.upgrade(), agent.upgrade()) {
                    me.resend_one(&agent, parent, seq);
                }
            });
            return;
        }
        let Some(asking) = p.asking.remove(&seq) else {
            return;
        };
        let Some(slot) = p.slots.get_mut(&asking.handle) else {
            return;
        };
        match child {
            Ok(task) => {
                slot.task = Some(task);
                state.by_task.insert(task, (parent, asking.handle));
                if let Some(link) = &link {
                    let _ = link.send(AgentToMaster::WatchChildren {
                        parent,
                        children: vec![task],
                    });
                    // Cancelled while it was being asked for.
                    if slot.cancelled {
                        let _ = link.send(AgentToMaster::KillChild {
                            parent,
                            child: task,
                        });
                    }
                }
                if let Some(reply) = asking.reply {
                    let _ = reply.send(Ok(task));
                }
            }
            Err(why) => match asking.reply {
                Some(reply) => {
                    p.slots.remove(&asking.handle);
                    let _ = reply.send(Err(why));
                }
                // A retry the masters refused: the child ends as its last run did, and says
                // why it was not run again.
                None => {
                    let mut outcome = slot.outcome.borrow().clone();
                    if let Some(o) = &mut outcome {
                        let note = format!("not retried: {why}");
                        o.end.message = Some(match o.end.message.take() {
                            Some(m) => format!("{m}; {note}"),
                            None => note,
                        });
                    }
                    slot.outcome.send_replace(outcome);
                }
            },
        }
    }

    /// Sends request `seq` of `parent` again, if it is still unanswered.
    fn resend_one(&self, agent: &Agent, parent: TaskId, seq: u32) {
        let link = agent.link();
        let state = self.state();
        let asking = state.parents.get(&parent).and_then(|p| p.asking.get(&seq));
        if let (Some(a), Some(link)) = (asking, link) {
            let _ = link.send(AgentToMaster::Spawn {
                parent,
                seq,
                spec: a.spec.clone(),
            });
        }
    }

    /// A child a task here waits for has ended: its outcome, or its next run.
    pub(crate) fn ended(&self, agent: &Agent, parent: TaskId, end: ChildEnd) {
        let link = agent.link();
        let mut state = self.state();
        let state = &mut *state;
        // Only the run this agent follows, of the parent the masters name.
        match state.by_task.get(&end.task) {
            Some((p, _)) if *p == parent => {}
            _ => return,
        }
        let Some((_, handle)) = state.by_task.remove(&end.task) else {
            return;
        };
        let Some(slot) = state
            .parents
            .get_mut(&parent)
            .and_then(|p| p.slots.get_mut(&handle))
        else {
            return;
        };
        slot.task = None;
        let retry = end.worth_retrying() && !slot.cancelled && slot.attempts <= slot.spec.retries;
        // What the last run left is the outcome until a retry ends, so a refused retry can
        // still tell it.
        slot.outcome.send_replace(Some(ChildOutcome {
            end,
            attempts: slot.attempts,
        }));
        if retry {
            // Waiters see the outcome only once no run is under way or asked for.
            slot.attempts += 1;
            Self::ask(state, link.as_ref(), parent, handle, None);
        }
    }

    /// Sends every unanswered request and watch again, to the master just registered with.
    pub(crate) fn resend(&self, link: &mpsc::UnboundedSender<AgentToMaster>) {
        let state = self.state();
        for (parent, p) in &state.parents {
            for (seq, a) in &p.asking {
                let _ = link.send(AgentToMaster::Spawn {
                    parent: *parent,
                    seq: *seq,
                    spec: a.spec.clone(),
                });
            }
            let children: Vec<TaskId> = p.slots.values().filter_map(|s| s.task).collect();
            if !children.is_empty() {
                let _ = link.send(AgentToMaster::WatchChildren {
                    parent: *parent,
                    children,
                });
            }
        }
    }

    /// Forgets a task that ended (the masters end its children).
    pub(crate) fn forget(&self, parent: TaskId) {
        let mut state = self.state();
        if let Some(p) = state.parents.remove(&parent) {
            for task in p.slots.values().filter_map(|s| s.task) {
                state.by_task.remove(&task);
            }
        }
    }
}

/// One task's [`Spawner`], over its agent's [`Children`].
#[derive(Debug)]
pub(crate) struct TaskSpawner {
    pub agent: Weak<Agent>,
    pub parent: TaskId,
}

impl TaskSpawner {
    fn gone() -> SpawnRefusal {
        SpawnRefusal::Refused("the agent is stopping".into())
    }
}

impl Spawner for TaskSpawner {
    fn start(&self, specs: Vec<ChildSpec>) -> SpawnFuture<Vec<Result<u32, SpawnRefusal>>> {
        let (agent, parent) = (self.agent.clone(), self.parent);
        Box::pin(async move {
            let Some(agent) = agent.upgrade() else {
                return specs.iter().map(|_| Err(Self::gone())).collect();
            };
            let mut waiting = Vec::with_capacity(specs.len());
            {
                let link = agent.link();
                let mut state = agent.children.state();
                for spec in specs {
                    let (tx, rx) = oneshot::channel();
                    let p = state.parents.entry(parent).or_default();
                    let handle = p.next_handle;
                    p.next_handle += 1;
                    p.slots.insert(
                        handle,
                        Slot {
                            spec,
                            attempts: 1,
                            task: None,
                            cancelled: false,
                            outcome: watch::Sender::new(None),
                        },
                    );
                    Children::ask(&mut state, link.as_ref(), parent, handle, Some(tx));
                    waiting.push((handle, rx));
                }
            }
            drop(agent);
            let mut out = Vec::with_capacity(waiting.len());
            for (handle, rx) in waiting {
                out.push(match rx.await {
                    Ok(Ok(_)) => Ok(handle),
                    Ok(Err(why)) => Err(why),
                    Err(_) => Err(Self::gone()),
                });
            }
            out
        })
    }

    fn wait(&self, handle: u32) -> SpawnFuture<Option<ChildOutcome>> {
        let (agent, parent) = (self.agent.clone(), self.parent);
        Box::pin(async move {
            let mut rx = {
                let agent = agent.upgrade()?;
                let state = agent.children.state();
                state
                    .parents
                    .get(&parent)?
                    .slots
                    .get(&handle)?
                    .outcome
                    .subscribe()
            };
            loop {
                // Done when an outcome is there and no run is under way (a retry's).
                let done = {
                    let agent = agent.upgrade()?;
                    let state = agent.children.state();
                    let slot = state.parents.get(&parent)?.slots.get(&handle)?;
                    let asking = state
                        .parents
                        .get(&parent)?
                        .asking
                        .values()
                        .any(|a| a.handle == handle);
                    match (&*rx.borrow_and_update(), slot.task, asking) {
                        (Some(o), None, false) => Some(o.clone()),
                        _ => None,
                    }
                };
                if done.is_some() {
                    // Told once: the slot (its spec and the child's results) is not kept for a
                    // parent that may start thousands more.
                    if let Some(agent) = agent.upgrade()
                        && let Some(p) = agent.children.state().parents.get_mut(&parent)
                    {
                        p.slots.remove(&handle);
                    }
                    return done;
                }
                rx.changed().await.ok()?;
            }
        })
    }

    fn cancel(&self, handle: u32) -> bool {
        let Some(agent) = self.agent.upgrade() else {
            return false;
        };
        let link = agent.link();
        let mut state = agent.children.state();
        let Some(slot) = state
            .parents
            .get_mut(&self.parent)
            .and_then(|p| p.slots.get_mut(&handle))
        else {
            return false;
        };
        // Asked once per child: a loop of cancels sends nothing more.
        if std::mem::replace(&mut slot.cancelled, true) {
            return true;
        }
        if let (Some(child), Some(link)) = (slot.task, link) {
            let _ = link.send(AgentToMaster::KillChild {
                parent: self.parent,
                child,
            });
        }
        true
    }
}
