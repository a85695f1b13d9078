//! Tasks that start tasks (`wasmos:task/spawn`), on the leader: a running task's agent asks
//! for a child, which becomes a task of the parent's owner under its role, scheduled like a
//! client's; the agent is told when the children its tasks wait for end; and children do not
//! outlive their parent: when a task ends, the leader ends its children.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmos_proto::{
    AgentId, Change, ChildEnd, ChildSpec, Lineage, MAX_LIVE_CHILDREN, MAX_SPAWN_DEPTH,
    MasterToAgent, Reason, Resources, SpawnRefusal, TaskId, TaskInfo, TaskSpec, TaskState,
    TaskStatus,
};
use wasmos_state::{Command, CommandResult, Rejection};

use crate::offers::Event;
use crate::{Shared, now_ms};

/// Which agent waits for each child's end, for which parent: kept by the leader only (a new
/// one hears again from each agent as it registers).
#[derive(Default)]
pub(crate) struct Watches(Mutex<HashMap<TaskId, (TaskId, AgentId)>>);

impl Watches {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, (TaskId, AgentId)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The task a parent's request makes: the parent's owner, role, QoS, priority and output cap,
/// with what the request gives (or the parent's own bundle, resources and timeout).
fn child_task(parent: &TaskInfo, child: ChildSpec, depth: u32) -> TaskSpec {
    let p = &parent.spec;
    let or = |asked: u64, theirs: u64| if asked == 0 { theirs } else { asked };
    let name = match &child.bundle {
        Some(b) if *b != p.bundle => "child.wasm".to_string(),
        _ => p.name.clone(),
    };
    let mut spec = TaskSpec::new(name, child.bundle.unwrap_or_else(|| p.bundle.clone()));
    spec.args = child.args;
    spec.env = child.env;
    spec.resources = Resources::new(
        or(child.cpu_millis, p.resources.cpu_millis),
        or(child.mem_bytes, p.resources.mem_bytes),
        or(child.disk_bytes, p.resources.disk_bytes),
    );
    spec.timeout_ms = or(child.timeout_ms, p.timeout_ms);
    spec.max_output_bytes = p.max_output_bytes;
    spec.on_output_limit = p.on_output_limit;
    spec.role = p.role.clone();
    spec.qos = p.qos;
    spec.priority = p.priority;
    spec.lineage = Some(Lineage {
        parent: parent.id,
        depth,
    });
    spec
}

/// Starts a child of `parent`, which must be a live task on `agent`. `seq` makes the request
/// idempotent: sent again (after a failover), it answers with the same child.
pub(crate) async fn spawn(
    shared: &Shared,
    agent: &AgentId,
    parent: TaskId,
    seq: u32,
    child: ChildSpec,
) -> Result<TaskId, SpawnRefusal> {
    wasmos_proto::check_child_spec(&child)?;
    let key = format!("spawn {parent} {seq}");
    let made = shared.read(|s| {
        let p = s
            .tasks
            .get(&parent)
            .filter(|p| p.agent.as_ref() == Some(agent) && !p.status.state.is_terminal())
            .ok_or_else(|| {
                SpawnRefusal::Refused(format!("no live task {parent} on agent {agent}"))
            })?;
        // Asked again (a failover, a lost answer): the child it made.
        if let Some(made) = s.submitted(&p.owner, &key) {
            return Ok(Err(made));
        }
        let depth = p.spec.lineage.map_or(0, |l| l.depth) + 1;
        if depth > MAX_SPAWN_DEPTH {
            return Err(SpawnRefusal::TooDeep(depth));
        }
        if s.live_children(parent).count() >= MAX_LIVE_CHILDREN as usize {
            return Err(SpawnRefusal::TooManyChildren);
        }
        Ok(Ok((child_task(p, child, depth), p.owner.clone())))
    });
    let (mut spec, owner) = match made? {
        Ok(made) => made,
        Err(child) => return Ok(child),
    };
    let refused = |e: String| SpawnRefusal::Refused(e);
    crate::policy::validate_spec(&spec).map_err(refused)?;
    crate::policy::seal(&shared.secrets, &mut spec).map_err(refused)?;
    if let Some(role) = spec.role.as_deref() {
        let role = wasmos_alloc::Role::new(role).map_err(|e| refused(e.to_string()))?;
        shared
            .read(|s| s.check_spec_ceilings(&spec, &role))
            .map_err(|e| refused(e.to_string()))?;
    }
    if let Some(tenant) = wasmos_state::tenant_of(&owner) {
        shared.check_storage(tenant, 1).map_err(refused)?;
    }
    let cmd = Command::SubmitTask {
        id: Some(shared.new_task_id()),
        spec,
        owner,
        now_ms: now_ms(),
        key: Some(key),
    };
    match shared.write(cmd).await {
        Ok(CommandResult::Submitted(id)) => {
            shared.offer_event(Event::Submitted(id));
            // The parent may have ended while its child was written: it is not left behind.
            if shared.read(|s| {
                s.tasks
                    .get(&parent)
                    .is_none_or(|p| p.status.state.is_terminal())
            }) {
                end_children(shared, parent).await;
            }
            Ok(id)
        }
        Ok(CommandResult::Rejected(Rejection::OverLimit(m))) => {
            Err(match SpawnRefusal::TooManyChildren.to_string() == m {
                true => SpawnRefusal::TooManyChildren,
                false => SpawnRefusal::Refused(m),
            })
        }
        Ok(CommandResult::Rejected(why)) => Err(SpawnRefusal::Refused(why.to_string())),
        Ok(other) => Err(SpawnRefusal::Unavailable(format!(
            "unexpected result {other:?}"
        ))),
        Err(e) => Err(SpawnRefusal::Unavailable(e.to_string())),
    }
}

/// How `child` ended, if it did.
fn ended(shared: &Shared, child: TaskId) -> Option<ChildEnd> {
    shared.read(|s| {
        let t = s.tasks.get(&child)?;
        t.status.state.is_terminal().then(|| ChildEnd {
            task: child,
            state: t.status.state,
            exit_code: t.status.exit_code,
            message: t.status.message.clone(),
            results: t.status.results.clone(),
            files: t.status.files.clone(),
        })
    })
}

/// Task `parent` on `agent` waits for `children`: each must be its own child. Those already
/// ended are answered at once, the others when they end.
pub(crate) fn watch(shared: &Shared, agent: &AgentId, parent: TaskId, children: Vec<TaskId>) {
    let (parent_here, mine): (bool, Vec<TaskId>) = shared.read(|s| {
        let here = s
            .tasks
            .get(&parent)
            .is_some_and(|p| p.agent.as_ref() == Some(agent));
        let mine = children
            .into_iter()
            .take(MAX_LIVE_CHILDREN as usize * 2)
            .filter(|c| {
                s.tasks
                    .get(c)
                    .and_then(|t| t.spec.lineage)
                    .is_some_and(|l| l.parent == parent)
            })
            .collect();
        (here, mine)
    });
    if !parent_here {
        return;
    }
    {
        let mut map = shared.children.map();
        for c in &mine {
            map.insert(*c, (parent, agent.clone()));
        }
    }
    // Looked at after the watches are in place: a child that ends in between is answered by
    // one or the other (an agent takes the first answer).
    for c in mine {
        tell_if_ended(shared, c);
    }
}

/// Tells the agent waiting for `child` how it ended, if it has.
fn tell_if_ended(shared: &Shared, child: TaskId) {
    let Some(end) = ended(shared, child) else {
        return;
    };
    let Some((parent, agent)) = shared.children.map().remove(&child) else {
        return;
    };
    shared.send_to_agent(&agent, MasterToAgent::ChildEnded { parent, end });
}

/// Task `parent` on `agent` asks its child to stop.
pub(crate) async fn kill_child(shared: &Shared, agent: &AgentId, parent: TaskId, child: TaskId) {
    let target = shared.read(|s| {
        let parent_here = s
            .tasks
            .get(&parent)
            .is_some_and(|p| p.agent.as_ref() == Some(agent));
        let t = s.tasks.get(&child)?;
        let theirs = t.spec.lineage.is_some_and(|l| l.parent == parent);
        (parent_here && theirs && !t.status.state.is_terminal()).then(|| t.agent.clone())
    });
    if let Some(on) = target {
        let why = "killed by its parent before it started";
        if let Err(e) = crate::client::end_task(shared, child, on.as_ref(), None, why).await {
            tracing::warn!(%child, "cannot kill: {e}");
        }
    }
}

/// Ends every live child of `parent` (which ended): those on agents are killed there, the rest
/// recorded killed in one write.
async fn end_children(shared: &Shared, parent: TaskId) {
    let children: Vec<(TaskId, Option<AgentId>)> = shared.read(|s| {
        s.live_children(parent)
            .filter_map(|c| s.tasks.get(&c).map(|t| (c, t.agent.clone())))
            .collect()
    });
    let reason = Some(Reason::ParentEnded);
    let mut waiting = Vec::new();
    for (child, on) in children {
        let kill = MasterToAgent::Kill {
            task: child,
            reason,
        };
        if !on.is_some_and(|agent| shared.send_to_agent(&agent, kill)) {
            waiting.push(child);
        }
    }
    if waiting.is_empty() {
        return;
    }
    let status = TaskStatus::with_reason(
        TaskState::Killed,
        reason,
        format!("its parent {parent} ended"),
    );
    let now = now_ms();
    let cmds = waiting
        .iter()
        .map(|task| Command::SetStatus {
            task: *task,
            status: status.clone(),
            now_ms: now,
        })
        .collect();
    if let Err(e) = shared.write(Command::Batch(cmds)).await {
        tracing::warn!(%parent, "cannot end the children of a task that ended: {e}");
        return;
    }
    for task in &waiting {
        shared.offer_event(Event::TaskChanged(*task));
    }
    // Placed while this was written (their launch was on its way): their agents stop them.
    let placed: Vec<(TaskId, AgentId)> = shared.read(|s| {
        waiting
            .iter()
            .filter_map(|t| Some((*t, s.tasks.get(t)?.agent.clone()?)))
            .collect()
    });
    for (task, agent) in placed {
        shared.send_to_agent(&agent, MasterToAgent::Kill { task, reason });
    }
}

/// The leader's part, for one term: follows the tasks that end, to tell their waiting parents
/// and to end their children. It starts with a sweep, since the last leader may have stopped
/// between a task's end and its children's.
pub(crate) async fn lead(shared: Arc<Shared>) {
    let mut changes = shared.raft.subscribe();
    let mut next = *changes.borrow_and_update() + 1;
    // Waits another term of this master's took in, whose children may have ended since.
    sweep(&shared).await;
    loop {
        let read = shared.raft.read_events(
            next,
            4096,
            |e| matches!(&e.change, Change::Task { state, .. } if state.is_terminal()),
        );
        next = read.next;
        if read.lost_until.is_some() {
            // Events this loop never saw.
            sweep(&shared).await;
        }
        for e in read.events {
            let Change::Task { id, .. } = e.change else {
                continue;
            };
            tell_if_ended(&shared, id);
            if shared.read(|s| s.live_children(id).next().is_some()) {
                end_children(&shared, id).await;
            }
        }
        if read.more {
            continue;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Looks at everything the event log may not tell: every orphan's parent has its children
/// ended, every watched child that ended is told.
async fn sweep(shared: &Shared) {
    let parents: std::collections::BTreeSet<TaskId> = shared.read(|s| {
        s.orphans()
            .filter_map(|c| s.tasks.get(&c)?.spec.lineage.map(|l| l.parent))
            .collect()
    });
    for p in parents {
        end_children(shared, p).await;
    }
    let watched: Vec<TaskId> = shared.children.map().keys().copied().collect();
    for c in watched {
        tell_if_ended(shared, c);
    }
}
