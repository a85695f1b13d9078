//! Tasks' CPU and memory over time, as their agents report them with each heartbeat: kept in
//! memory by the master the agents report to (not replicated; a new leader starts afresh),
//! bounded per task and in tasks, for the task page of the web UI and `wasmos task usage`.

use std::collections::{BTreeSet, HashMap, VecDeque};

use wasmos_proto::{TaskId, TaskSample, USAGE_SAMPLES, UsageSample};

/// Most tasks whose usage is kept: past it, the series heard from longest ago goes. At
/// [`USAGE_SAMPLES`] samples of 24 bytes each this holds at most about 24 MB.
pub(crate) const MAX_TASKS: usize = 8192;

#[derive(Default)]
pub(crate) struct UsageHistory {
    tasks: HashMap<TaskId, Series>,
    /// Every series by when it was last heard from: the stalest goes first.
    by_last: BTreeSet<(u64, TaskId)>,
}

struct Series {
    samples: VecDeque<UsageSample>,
}

impl Series {
    fn last_ms(&self) -> u64 {
        self.samples.back().map_or(0, |s| s.at_ms)
    }
}

impl UsageHistory {
    /// Records what a heartbeat received at `at_ms` says of each task in `samples` (the caller
    /// keeps only tasks the reporting agent runs).
    pub(crate) fn record(&mut self, at_ms: u64, samples: impl IntoIterator<Item = TaskSample>) {
        for s in samples {
            if !self.tasks.contains_key(&s.task)
                && self.tasks.len() >= MAX_TASKS
                && let Some((_, stalest)) = self.by_last.pop_first()
            {
                self.tasks.remove(&stalest);
            }
            let series = self.tasks.entry(s.task).or_insert_with(|| Series {
                samples: VecDeque::with_capacity(8),
            });
            self.by_last.remove(&(series.last_ms(), s.task));
            if series.samples.len() >= USAGE_SAMPLES {
                series.samples.pop_front();
            }
            series.samples.push_back(UsageSample {
                at_ms,
                cpu_millis: s.cpu_millis,
                mem_bytes: s.mem_bytes,
            });
            self.by_last.insert((at_ms, s.task));
        }
    }

    /// A task's samples, oldest first (none if it was never reported or has been dropped).
    pub(crate) fn get(&self, task: TaskId) -> Vec<UsageSample> {
        self.tasks
            .get(&task)
            .map(|s| s.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        assert_eq!(self.tasks.len(), self.by_last.len());
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(task: u64, cpu_millis: u64) -> TaskSample {
        TaskSample {
            task: TaskId(task),
            cpu_millis,
            mem_bytes: cpu_millis * 2,
            progress: None,
        }
    }

    #[test]
    fn keeps_the_last_samples_of_each_task_in_order() {
        let mut h = UsageHistory::default();
        for i in 0..(USAGE_SAMPLES as u64 + 5) {
            h.record(1000 + i, [sample(1, i), sample(2, 7)]);
        }
        let one = h.get(TaskId(1));
        assert_eq!(one.len(), USAGE_SAMPLES);
        assert_eq!(one[0].cpu_millis, 5, "the oldest five went");
        assert_eq!(one[0].at_ms, 1005);
        assert_eq!(
            one.last().map(|s| s.mem_bytes),
            Some(2 * (USAGE_SAMPLES as u64 + 4))
        );
        assert!(one.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert_eq!(h.get(TaskId(2)).len(), USAGE_SAMPLES);
        assert!(h.get(TaskId(3)).is_empty());
    }

    #[test]
    fn past_the_bound_the_task_heard_from_longest_ago_goes() {
        let mut h = UsageHistory::default();
        for t in 0..MAX_TASKS as u64 {
            h.record(10 + t, [sample(t, 1)]);
        }
        // Task 0 is heard from again: task 1 is now the stalest.
        h.record(1_000_000, [sample(0, 2)]);
        h.record(1_000_001, [sample(MAX_TASKS as u64, 3)]);
        assert_eq!(h.len(), MAX_TASKS);
        assert!(h.get(TaskId(1)).is_empty());
        assert_eq!(h.get(TaskId(0)).len(), 2);
        assert_eq!(h.get(TaskId(MAX_TASKS as u64)).len(), 1);
    }
}
