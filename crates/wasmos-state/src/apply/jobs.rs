//! Applying commands of one family: batch jobs and services: submissions and the events their frameworks record.

use super::super::*;

impl ClusterState {
    pub(crate) fn apply_jobs(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::SubmitJob {
                spec,
                owner,
                role,
                now_ms,
            } => {
                if let Err(why) = spec.check() {
                    return CommandResult::Rejected(Rejection::Invalid(why));
                }
                if let Err(why) = self.check_framework_ceiling(&role) {
                    return CommandResult::Rejected(why);
                }
                for g in &spec.groups {
                    let checked = self
                        .check_blobs(&g.task, &owner)
                        .and_then(|()| self.check_spec_ceilings(&g.task, &role))
                        .and_then(|()| check_sealed(&g.task))
                        .and_then(|()| {
                            self.check_signed(
                                &g.task.bundle,
                                g.task.role.as_deref().unwrap_or(role.as_str()),
                            )
                        });
                    if let Err(why) = checked {
                        return CommandResult::Rejected(why.within(&format!("group `{}`", g.name)));
                    }
                    for input in g.inputs.iter().flatten() {
                        if !self.may_read(&owner, &input.blob) {
                            return CommandResult::Rejected(Rejection::NotFound(format!(
                                "group `{}`: input blob {} has not been uploaded",
                                g.name, input.blob
                            )));
                        }
                    }
                }
                self.next_job_id += 1;
                let id = JobId(self.next_job_id);
                self.jobs.insert(
                    id,
                    JobRecord {
                        id,
                        spec,
                        owner,
                        role,
                        submitted_ms: now_ms,
                        state: JobState::Running,
                        ended_ms: None,
                        framework: None,
                        tasks: BTreeMap::new(),
                        done: BTreeMap::new(),
                        failures: BTreeMap::new(),
                        losses: BTreeMap::new(),
                    },
                );
                CommandResult::Job(id)
            }
            Command::Job { job, event, now_ms } => {
                // A new group definition is checked as a submission's groups are.
                if let JobEvent::Updated { group } = &event
                    && let Some(r) = self.jobs.get(&job)
                {
                    let role = r.role.as_str();
                    let checked = if group.task.role.as_deref() != Some(role) {
                        Err(Rejection::Invalid(format!(
                            "the task's role must be the job's, {role}"
                        )))
                    } else {
                        self.check_blobs(&group.task, &r.owner)
                            .and_then(|()| self.check_spec_ceilings(&group.task, &r.role))
                            .and_then(|()| check_sealed(&group.task))
                            .and_then(|()| self.check_signed(&group.task.bundle, role))
                    };
                    if let Err(why) = checked {
                        return CommandResult::Rejected(
                            why.within(&format!("group `{}`", group.name)),
                        );
                    }
                    for input in group.inputs.iter().flatten() {
                        if !self.may_read(&r.owner, &input.blob) {
                            return CommandResult::Rejected(Rejection::NotFound(format!(
                                "group `{}`: input blob {} has not been uploaded",
                                group.name, input.blob
                            )));
                        }
                    }
                }
                let Some(record) = self.jobs.get_mut(&job) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown job {job}"
                    )));
                };
                if record.state.is_terminal() {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "job {job} has ended"
                    )));
                }
                match event {
                    JobEvent::Framework(fw) => record.framework = Some(fw),
                    JobEvent::Launched { task, group, index } => {
                        record.tasks.insert(task, (group, index));
                    }
                    JobEvent::Done {
                        task,
                        group,
                        index,
                        outputs,
                    } => {
                        record.tasks.remove(&task);
                        record.done.insert((group, index), (task, outputs));
                    }
                    JobEvent::Failed { task, group, index } => {
                        // Once per task, however often its end is reported.
                        if record.tasks.remove(&task).is_some() {
                            *record.failures.entry((group, index)).or_default() += 1;
                        }
                    }
                    JobEvent::Stopped { task } => {
                        record.tasks.remove(&task);
                    }
                    JobEvent::Lost { group, index } => {
                        if record.done.remove(&(group.clone(), index)).is_some() {
                            *record.losses.entry((group, index)).or_default() += 1;
                        }
                        // What the undone slot reads may be gone too.
                        record.forget_missing(&self.bundles);
                    }
                    JobEvent::Scaled { group, count } => {
                        if count == 0 || count > wasmos_proto::MAX_GROUP_COUNT {
                            return CommandResult::Rejected(Rejection::Invalid(format!(
                                "count must be 1 to {}",
                                wasmos_proto::MAX_GROUP_COUNT
                            )));
                        }
                        match record.spec.groups.iter_mut().find(|g| g.name == group) {
                            Some(g) => g.count = count,
                            None => {
                                return CommandResult::Rejected(Rejection::NotFound(format!(
                                    "job {job} has no group `{group}`"
                                )));
                            }
                        }
                    }
                    JobEvent::Updated { group } => {
                        if record.spec.kind != wasmos_proto::JobKind::Service {
                            return CommandResult::Rejected(Rejection::Invalid(format!(
                                "{job} is a batch job; only services are updated"
                            )));
                        }
                        let Some(at) = record.spec.groups.iter().position(|g| g.name == group.name)
                        else {
                            return CommandResult::Rejected(Rejection::NotFound(format!(
                                "job {job} has no group `{}`",
                                group.name
                            )));
                        };
                        let mut spec = record.spec.clone();
                        spec.groups[at] = *group;
                        if let Err(why) = spec.check() {
                            return CommandResult::Rejected(Rejection::Invalid(why));
                        }
                        record.spec = spec;
                    }
                    JobEvent::Ended(state) => {
                        record.state = state;
                        record.ended_ms = Some(now_ms);
                    }
                }
                CommandResult::Ok
            }
            other => CommandResult::Rejected(Rejection::Invalid(format!(
                "not a command of this family: {other:?}"
            ))),
        }
    }
}
