//! The walking skeleton's placement rule, used by the master until frameworks take tasks from
//! offers: each task goes to the agent with the most free CPU that fits it.

use wasmos_proto::{AgentId, Resources, TaskId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub id: AgentId,
    pub total: Resources,
    pub free: Resources,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTask {
    pub id: TaskId,
    pub demand: Resources,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Place {
        task: TaskId,
        agent: AgentId,
    },
    /// No agent is large enough even when empty: waiting would never help.
    Unschedulable {
        task: TaskId,
        largest: Resources,
    },
}

/// Places `pending` (in the order given, which callers keep as submission order) onto `agents`.
/// Tasks that fit nowhere right now but would fit an empty agent are left pending.
pub fn place(agents: &[AgentView], pending: &[PendingTask]) -> Vec<Decision> {
    let mut free: Vec<(AgentId, Resources, Resources)> = agents
        .iter()
        .map(|a| (a.id.clone(), a.total.clone(), a.free.clone()))
        .collect();
    free.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for task in pending {
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, (_, _, f))| task.demand.fits_in(f))
            .max_by(|(_, a), (_, b)| {
                (a.2.cpu_millis, a.2.mem_bytes)
                    .cmp(&(b.2.cpu_millis, b.2.mem_bytes))
                    // Ties go to the smallest id: max_by keeps the last maximum, so reverse.
                    .then_with(|| b.0.cmp(&a.0))
            })
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let (id, _, f) = &mut free[i];
                *f = f.saturating_sub(&task.demand);
                out.push(Decision::Place {
                    task: task.id,
                    agent: id.clone(),
                });
            }
            None if !agents.is_empty() && !free.iter().any(|(_, t, _)| task.demand.fits_in(t)) => {
                let largest = free
                    .iter()
                    .map(|(_, t, _)| t.clone())
                    .max_by_key(|t| (t.cpu_millis, t.mem_bytes, t.disk_bytes))
                    .unwrap_or_default();
                out.push(Decision::Unschedulable {
                    task: task.id,
                    largest,
                });
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn res(cpu: u64, mem: u64) -> Resources {
        Resources::new(cpu, mem, 0)
    }

    fn agent(name: &str, total: Resources, free: Resources) -> AgentView {
        AgentView {
            id: AgentId::new(name).unwrap(),
            total,
            free,
        }
    }

    #[test]
    fn spreads_to_the_agent_with_most_free_cpu_and_debits_it() {
        let agents = [
            agent("a", res(2000, 100), res(1000, 100)),
            agent("b", res(2000, 100), res(1500, 100)),
        ];
        let pending = [
            PendingTask {
                id: TaskId(1),
                demand: res(1000, 10),
            },
            PendingTask {
                id: TaskId(2),
                demand: res(1000, 10),
            },
            PendingTask {
                id: TaskId(3),
                demand: res(1000, 10),
            },
        ];
        let d = place(&agents, &pending);
        assert_eq!(
            d,
            vec![
                Decision::Place {
                    task: TaskId(1),
                    agent: agents[1].id.clone()
                },
                Decision::Place {
                    task: TaskId(2),
                    agent: agents[0].id.clone()
                },
            ]
        );
    }

    #[test]
    fn too_big_for_any_agent_is_unschedulable_but_busy_is_pending() {
        let agents = [agent("a", res(1000, 100), res(0, 0))];
        let pending = [
            PendingTask {
                id: TaskId(1),
                demand: res(500, 10),
            },
            PendingTask {
                id: TaskId(2),
                demand: res(4000, 10),
            },
        ];
        assert_eq!(
            place(&agents, &pending),
            vec![Decision::Unschedulable {
                task: TaskId(2),
                largest: res(1000, 100)
            }]
        );
        assert!(place(&[], &pending).is_empty());
    }
}
