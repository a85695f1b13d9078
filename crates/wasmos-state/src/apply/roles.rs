//! Applying commands of one family: roles' settings and operators' removal of dynamic reservations.

use super::super::*;

impl ClusterState {
    pub(crate) fn apply_roles(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::SetRole { role, record } => {
                if record.weight_milli == 0 {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "role {role}: weight must be > 0"
                    )));
                }
                let quota = wasmos_alloc::Quota {
                    guarantee: record.guarantee.clone(),
                    limit: record.limit.clone(),
                };
                if let Some(limit) = &record.limit
                    && !quota.guarantee_within_limit()
                {
                    return CommandResult::Rejected(Rejection::Invalid(format!(
                        "role {role}: guarantee {} exceeds limit {limit}",
                        record.guarantee
                    )));
                }
                if let Err(why) = self.check_signers(&role, &record.require_signed_by) {
                    return CommandResult::Rejected(why);
                }
                self.roles.insert(role, record);
                CommandResult::Ok
            }
            Command::RemoveReservation { agent, role } => self.remove_reservation(&agent, &role),
            other => CommandResult::Rejected(Rejection::Invalid(format!(
                "not a command of this family: {other:?}"
            ))),
        }
    }
}
