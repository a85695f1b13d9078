//! Applying commands of one family: task submissions, statuses decided by the master, and launches from accepted offers.

use super::super::*;

impl ClusterState {
    pub(crate) fn apply_tasks(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::SubmitTask {
                id,
                spec,
                owner,
                now_ms,
                key,
            } => {
                self.forget_submissions(now_ms);
                let key = key.map(|k| format!("{owner} {k}"));
                if let Some(first) = key.as_ref().and_then(|k| self.submissions.get(k)) {
                    return CommandResult::Submitted(*first);
                }
                if let Err(why) = self.check_blobs(&spec, &owner) {
                    return CommandResult::Rejected(why);
                }
                if let Some(role) = &spec.role {
                    let role = match Role::new(role) {
                        Ok(r) => r,
                        Err(e) => {
                            return CommandResult::Rejected(Rejection::Invalid(e.to_string()));
                        }
                    };
                    if let Err(why) = self.check_ceilings(&spec, &role, 0) {
                        return CommandResult::Rejected(why);
                    }
                }
                let signed = match &spec.role {
                    Some(role) => self.check_signed(&spec.bundle, role),
                    None => Ok(()),
                };
                if let Err(why) = check_sealed(&spec).and(signed) {
                    return CommandResult::Rejected(why);
                }
                if let Some(lineage) = spec.lineage
                    && let Err(why) = self.check_lineage(&spec, &owner, lineage)
                {
                    return CommandResult::Rejected(why);
                }
                let id = match id {
                    Some(id) if self.tasks.contains_key(&id) => {
                        return CommandResult::Rejected(Rejection::Conflict(format!(
                            "task {id} already exists"
                        )));
                    }
                    Some(id) => id,
                    None => TaskId(self.next_task_id + 1),
                };
                self.next_task_id = self.next_task_id.max(id.0);
                self.tasks.insert(id, staging(id, spec, owner, now_ms));
                self.index_new(id);
                if let Some(key) = key {
                    self.submissions.insert(key.clone(), id);
                    self.submission_times.insert((now_ms, key));
                }
                CommandResult::Submitted(id)
            }
            Command::Progress { agent, updates } => {
                for (task, progress) in updates {
                    let Some(info) = self.tasks.get_mut(&task) else {
                        continue;
                    };
                    if info.agent.as_ref() != Some(&agent)
                        || info.status.state.is_terminal()
                        || !progress.is_valid()
                        || info.progress.as_ref() == Some(&progress)
                    {
                        continue;
                    }
                    info.progress = Some(progress);
                    self.emit_task(task);
                }
                CommandResult::Ok
            }
            Command::SetStatus {
                task,
                status,
                now_ms,
            } => {
                let Some(info) = self.tasks.get_mut(&task) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown task {task}"
                    )));
                };
                if info.status.state.is_terminal() {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "task {task} already ended as {}",
                        info.status.state
                    )));
                }
                info.status = status;
                info.updated_ms = now_ms;
                if info.status.state.is_terminal() {
                    self.charges.remove(&task);
                }
                self.status_changed(task);
                CommandResult::Ok
            }
            Command::Launch {
                framework,
                agent,
                reservations,
                tasks,
                now_ms,
            } => match self.check_launch(framework, &agent, &reservations, &tasks) {
                Err(why) => CommandResult::Rejected(why),
                Ok(()) => {
                    self.launch(framework, agent, reservations, tasks, now_ms);
                    CommandResult::Ok
                }
            },
            other => CommandResult::Rejected(Rejection::Invalid(format!(
                "not a command of this family: {other:?}"
            ))),
        }
    }
}

impl ClusterState {
    /// Whether a child may be spawned as `lineage` says: its parent is placed and live, the child is
    /// its owner's under its role, one level deeper, within the depth and fan-out limits.
    pub fn check_lineage(
        &self,
        spec: &TaskSpec,
        owner: &str,
        lineage: wasmos_proto::Lineage,
    ) -> Result<(), Rejection> {
        let parent = self
            .tasks
            .get(&lineage.parent)
            .filter(|p| p.owner == owner)
            .ok_or_else(|| Rejection::NotFound(format!("no task {}", lineage.parent)))?;
        // Its agent's report that it runs may be recorded after the request it made while
        // running: placed and not ended is what counts.
        if parent.status.state.is_terminal() || parent.agent.is_none() {
            return Err(Rejection::Conflict(format!(
                "task {} is {}: only a running task starts children",
                parent.id, parent.status.state
            )));
        }
        if parent.spec.role != spec.role {
            return Err(Rejection::Invalid(
                "a child runs under its parent's role".into(),
            ));
        }
        let depth = parent.spec.lineage.map_or(0, |l| l.depth) + 1;
        if lineage.depth != depth {
            return Err(Rejection::Invalid(format!(
                "a child of task {} is at depth {depth}, not {}",
                parent.id, lineage.depth
            )));
        }
        if depth > wasmos_proto::MAX_SPAWN_DEPTH {
            return Err(Rejection::OverLimit(
                wasmos_proto::SpawnRefusal::TooDeep(depth).to_string(),
            ));
        }
        if self.live_children(parent.id).count() >= wasmos_proto::MAX_LIVE_CHILDREN as usize {
            return Err(Rejection::OverLimit(
                wasmos_proto::SpawnRefusal::TooManyChildren.to_string(),
            ));
        }
        Ok(())
    }
}
