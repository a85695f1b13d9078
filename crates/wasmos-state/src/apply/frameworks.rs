//! Applying commands of one family: frameworks' registrations, failover timeouts, acknowledgements and removals.

use super::super::*;

impl ClusterState {
    pub(crate) fn apply_frameworks(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::RegisterFramework {
                name,
                role,
                owner,
                revocable,
                failover_timeout_ms,
                acknowledges,
                now_ms,
            } => {
                // A job's own framework was counted when the job was submitted.
                if acknowledges
                    && !self.is_unattached_job(&name, &owner)
                    && let Err(why) = self.check_framework_ceiling(&role)
                {
                    return CommandResult::Rejected(why);
                }
                self.next_framework_id += 1;
                let id = FrameworkId(self.next_framework_id);
                self.frameworks.insert(
                    id,
                    FrameworkRecord {
                        id,
                        name,
                        role,
                        owner,
                        revocable,
                        registered_ms: now_ms,
                        failover_timeout_ms,
                        acknowledges,
                        removed_ms: None,
                    },
                );
                CommandResult::Framework(id)
            }
            Command::SetFailoverTimeout {
                framework,
                failover_timeout_ms,
            } => match self.live_framework(framework) {
                Err(why) => CommandResult::Rejected(why),
                Ok(_) => {
                    if let Some(f) = self.frameworks.get_mut(&framework) {
                        f.failover_timeout_ms = failover_timeout_ms;
                    }
                    CommandResult::Ok
                }
            },
            Command::Acknowledge {
                framework,
                task,
                update,
            } => {
                let Some(info) = self.tasks.get_mut(&task) else {
                    return CommandResult::Rejected(Rejection::NotFound(format!(
                        "unknown task {task}"
                    )));
                };
                if info.framework != Some(framework) {
                    return CommandResult::Rejected(Rejection::Conflict(format!(
                        "task {task} is not framework {framework}'s"
                    )));
                }
                if update <= info.acked_seq {
                    return CommandResult::Duplicate;
                }
                // An update past the current one was never sent: acknowledging it would
                // swallow the next real one.
                info.acked_seq = update.min(info.status_seq);
                if info.acked_seq >= info.status_seq {
                    self.unacked.remove(&(framework, task));
                }
                CommandResult::Ok
            }
            Command::RemoveFramework { framework, now_ms } => {
                if let Err(why) = self.live_framework(framework) {
                    return CommandResult::Rejected(why);
                }
                if let Some(f) = self.frameworks.get_mut(&framework) {
                    f.removed_ms = Some(now_ms);
                }
                let gone: Vec<_> = self
                    .unacked
                    .range((framework, TaskId(0))..=(framework, TaskId(u64::MAX)))
                    .copied()
                    .collect();
                for k in gone {
                    self.unacked.remove(&k);
                }
                CommandResult::Ok
            }
            other => CommandResult::Rejected(Rejection::Invalid(format!(
                "not a command of this family: {other:?}"
            ))),
        }
    }
}
