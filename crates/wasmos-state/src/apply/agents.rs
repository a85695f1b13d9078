//! Applying commands of one family: agents' registrations, status reports and losses, and direct assignments.

use super::super::*;

impl ClusterState {
    pub(crate) fn apply_agents(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::RegisterAgent {
                id,
                total,
                attributes,
                fuel_per_core_second,
                reserved,
                running,
                peer_addr,
                now_ms,
            } => {
                let last_status_seq = self.agents.get(&id).map_or(0, |a| a.last_status_seq);
                // A drain is the operator's, not the agent's: a restart does not end it.
                let draining = self.agents.get(&id).is_some_and(|a| a.draining);
                let maintenance = self.agents.get(&id).and_then(|a| a.maintenance.clone());
                // So is a resize, unless it no longer fits: in what the agent advertises now,
                // or around its reservations, static and dynamic.
                let all_reserved = reserved
                    .values()
                    .chain(
                        self.reservations
                            .get(&id)
                            .into_iter()
                            .flat_map(|r| r.values()),
                    )
                    .fold(Resources::default(), |acc, r| acc.saturating_add(r));
                let resized = self
                    .agents
                    .get(&id)
                    .filter(|a| a.resized)
                    .map(|a| a.total.clone())
                    .filter(|t| all_reserved.fits_in(t) && t.fits_in(&total));
                self.agents.insert(
                    id.clone(),
                    AgentRecord {
                        id: id.clone(),
                        resized: resized.is_some(),
                        total: resized.unwrap_or_else(|| total.clone()),
                        advertised: total,
                        attributes,
                        fuel_per_core_second,
                        registered_ms: now_ms,
                        last_status_seq,
                        reserved,
                        peer_addr,
                        draining,
                        maintenance,
                    },
                );
                // A task still staging was never reported on by the agent: its launch never
                // arrived (a master failed between recording and sending it), so it is kept, to
                // be launched again, not lost. The master passes the tasks of the agent's
                // unacknowledged updates as running, so their results are applied after this.
                let lost: Vec<TaskId> = self
                    .live_tasks_on(&id)
                    .filter(|t| !running.contains(t))
                    .filter(|t| {
                        self.tasks
                            .get(t)
                            .is_some_and(|i| i.status.state != TaskState::Staging)
                    })
                    .collect();
                for task in lost {
                    self.finish(
                        task,
                        TaskState::Lost,
                        Reason::AgentLost,
                        "the agent restarted without it",
                        now_ms,
                    );
                }
                CommandResult::Ok
            }
            Command::AssignTask {
                task,
                agent,
                now_ms,
            } => {
                let Some(record) = self.agents.get(&agent) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown agent {agent}"
                    )));
                };
                if record.draining {
                    return CommandResult::Rejected(crate::draining(&agent));
                }
                let free = record.total.saturating_sub(&self.used_on(&agent));
                let Some(info) = self.tasks.get_mut(&task) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown task {task}"
                    )));
                };
                if info.agent.is_some() || info.status.state != TaskState::Staging {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "task {task} is already placed"
                    )));
                }
                if !info.spec.resources.fits_in(&free) {
                    return CommandResult::Rejected(Rejection::OverLimit(format!(
                        "task {task} does not fit on agent {agent}"
                    )));
                }
                info.agent = Some(agent);
                info.updated_ms = now_ms;
                self.emit_task(task);
                CommandResult::Ok
            }
            Command::AgentStatus {
                agent,
                update,
                now_ms,
            } => {
                let Some(record) = self.agents.get_mut(&agent) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown agent {agent}"
                    )));
                };
                if update.seq <= record.last_status_seq {
                    return CommandResult::Duplicate;
                }
                record.last_status_seq = update.seq;
                let Some(info) = self.tasks.get_mut(&update.task) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown task {}",
                        update.task
                    )));
                };
                if info.agent.as_ref() != Some(&agent) {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "task {} is not on agent {agent}",
                        update.task
                    )));
                }
                if info.status.state.is_terminal() {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "task {} already ended as {}",
                        update.task, info.status.state
                    )));
                }
                if update.status.state.step() < info.status.state.step() {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "task {} is {}; it cannot go back to {}",
                        update.task, info.status.state, update.status.state
                    )));
                }
                let mut status = update.status;
                // An agent is not trusted to have kept its tasks' results within bounds: out
                // of them, none are kept, and the task's record says why.
                if !wasmos_proto::results_valid(&status.results)
                    || !wasmos_proto::result_files_valid(&status.files)
                {
                    status.results.clear();
                    status.files.clear();
                    let refused = "its results were refused: over the limits";
                    status.message = Some(match status.message.take() {
                        Some(m) => format!("{m}; {refused}"),
                        None => refused.to_string(),
                    });
                }
                // Its last progress, which the heartbeats may not have carried, is the task's.
                if let Some(p) = status.progress.take().filter(|p| p.is_valid()) {
                    info.progress = Some(p);
                }
                // Outputs kept on the agent are recorded as held where the task ran (which
                // the state knows, whatever the agent says), unless the masters store the
                // same bytes already; outputs stored on masters were recorded by `AddBundle`.
                let keeps = info.spec.outputs_on_agent;
                for o in &mut status.outputs {
                    o.held_by = None;
                    if keeps && self.bundles.get(&o.blob).is_none_or(BundleMeta::is_kept) {
                        o.held_by = Some(agent.clone());
                        let meta = self.bundles.entry(o.blob.clone()).or_insert(BundleMeta {
                            size: o.size,
                            added_ms: now_ms,
                            readers: Default::default(),
                            kept_on: Default::default(),
                            signatures: Vec::new(),
                        });
                        meta.kept_on.insert(agent.clone());
                        meta.size = o.size;
                        meta.added_ms = now_ms;
                    }
                }
                info.status = status;
                info.updated_ms = now_ms;
                let ended = info.status.state.is_terminal();
                // What a task produced, its tenant may read.
                let grant: Vec<BundleHash> = (info.status.outputs.iter().map(|o| &o.blob))
                    .chain(info.status.files.iter().map(|f| &f.blob))
                    .cloned()
                    .collect();
                let tenant = tenant_of(&info.owner).map(str::to_string);
                if ended {
                    self.charges.remove(&update.task);
                }
                if let Some(tenant) = tenant {
                    for hash in grant {
                        if let Some(meta) = self.bundles.get_mut(&hash) {
                            meta.readers.insert(tenant.clone());
                        }
                    }
                }
                self.status_changed(update.task);
                CommandResult::Ok
            }
            Command::AgentLost {
                agent,
                registered_ms,
                now_ms,
            } => {
                if let Some(seen) = registered_ms {
                    match self.agents.get(&agent) {
                        Some(record) if record.registered_ms == seen => {}
                        Some(_) => {
                            return CommandResult::Rejected(Rejection::Conflict(format!(
                                "agent {agent} registered again since it was found silent"
                            )));
                        }
                        None => {
                            return CommandResult::Rejected(Rejection::NotFound(format!(
                                "unknown agent {agent}"
                            )));
                        }
                    }
                }
                // What it kept is gone with it: jobs that need it run its producers again.
                self.bundles.retain(|_, m| {
                    let kept = m.is_kept();
                    m.kept_on.remove(&agent);
                    !kept || m.is_kept()
                });
                let bundles = &self.bundles;
                for job in self.jobs.values_mut() {
                    job.forget_missing(bundles);
                }
                let lost: Vec<TaskId> = self.live_tasks_on(&agent).collect();
                for task in lost {
                    self.finish(
                        task,
                        TaskState::Lost,
                        Reason::AgentLost,
                        "the agent stopped responding",
                        now_ms,
                    );
                }
                CommandResult::Ok
            }
            Command::ResizeAgent { agent, total } => {
                let Some(record) = self.agents.get(&agent) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown agent {agent}"
                    )));
                };
                let new = total.clone().unwrap_or_else(|| record.advertised.clone());
                // The agent sized its task threads, memory pool and bandwidth management from
                // what it advertises: it cannot be given more without a restart.
                if !new.fits_in(&record.advertised) {
                    return CommandResult::Rejected(Rejection::OverLimit(format!(
                        "agent {agent} advertises {}: it can offer less, not more (restart it with larger flags for more)",
                        record.advertised
                    )));
                }
                let reserved = self
                    .reserved_on(&agent)
                    .values()
                    .fold(Resources::default(), |acc, r| acc.saturating_add(r));
                if !reserved.fits_in(&new) {
                    return CommandResult::Rejected(Rejection::OverLimit(format!(
                        "agent {agent} has {reserved} reserved for roles, which would not fit in {new}: remove reservations first"
                    )));
                }
                if record.total == new && record.resized == total.is_some() {
                    return CommandResult::Duplicate;
                }
                if let Some(record) = self.agents.get_mut(&agent) {
                    record.total = new;
                    record.resized = total.is_some();
                }
                CommandResult::Ok
            }
            Command::ScheduleMaintenance { agents, window } => {
                if let Some(missing) = agents.iter().find(|a| !self.agents.contains_key(a)) {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown agent {missing}"
                    )));
                }
                if let Some(w) = window
                    && w.end_ms <= w.start_ms
                {
                    return CommandResult::Rejected(Rejection::Invalid(
                        "a maintenance window ends after it starts".into(),
                    ));
                }
                if let Some(busy) = agents.iter().find(|a| {
                    self.agents
                        .get(*a)
                        .and_then(|r| r.maintenance.as_ref())
                        .is_some_and(|m| m.begun)
                }) {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "agent {busy} is in its maintenance window: undrain it to end it"
                    )));
                }
                for a in &agents {
                    if let Some(record) = self.agents.get_mut(a) {
                        record.maintenance = window.map(|window| Maintenance {
                            window,
                            answers: BTreeMap::new(),
                            begun: false,
                        });
                    }
                }
                CommandResult::Ok
            }
            Command::AnswerInverseOffer {
                agent,
                framework,
                accept,
            } => match self
                .agents
                .get_mut(&agent)
                .and_then(|a| a.maintenance.as_mut())
            {
                Some(m) if !m.begun => match m.answers.insert(framework, accept) {
                    Some(before) if before == accept => CommandResult::Duplicate,
                    _ => CommandResult::Ok,
                },
                _ => CommandResult::Rejected(Rejection::NotFound(format!(
                    "no maintenance of agent {agent} to answer for"
                ))),
            },
            Command::MaintenanceWindowAt { agent, begun } => {
                let Some(record) = self.agents.get_mut(&agent) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown agent {agent}"
                    )));
                };
                match (&mut record.maintenance, begun) {
                    (Some(m), true) if !m.begun => {
                        // An operator's drain from before is the operator's to end.
                        m.begun = !record.draining;
                        record.draining = true;
                        if !m.begun {
                            record.maintenance = None;
                        }
                        CommandResult::Ok
                    }
                    (Some(m), false) => {
                        if m.begun {
                            record.draining = false;
                        }
                        record.maintenance = None;
                        CommandResult::Ok
                    }
                    _ => CommandResult::Duplicate,
                }
            }
            Command::DrainAgent { agent, drain } => match self.agents.get_mut(&agent) {
                // Nothing changes: no event says it did.
                Some(record) if record.draining == drain => CommandResult::Duplicate,
                Some(record) => {
                    record.draining = drain;
                    // An undrain ends a window under way (a window drains its agent, so a
                    // drain never meets one under way).
                    if !drain && record.maintenance.as_ref().is_some_and(|m| m.begun) {
                        record.maintenance = None;
                    }
                    CommandResult::Ok
                }
                None => {
                    CommandResult::Rejected(Rejection::NotFound(format!("unknown agent {agent}")))
                }
            },
            other => CommandResult::Rejected(Rejection::Invalid(format!(
                "not a command of this family: {other:?}"
            ))),
        }
    }
}
