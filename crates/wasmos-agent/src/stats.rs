//! The agent's Prometheus metrics (`wasmos agent --metrics-listen`): what its tasks use now,
//! how its tasks ended, and how often a bundle was found compiled. Counted as they happen,
//! read at each scrape; `render` writes several agents' (one `wasmos dev`) as one text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use wasmos_exec::TaskUsage;
use wasmos_proto::{Resources, TaskId, TaskStatus};

/// Counted by one agent; shared with whoever serves its metrics.
#[derive(Default)]
pub struct AgentStats {
    compiles: AtomicU64,
    compile_cache_hits: AtomicU64,
    /// Ended tasks by (state, reason).
    ended: Mutex<BTreeMap<(String, String), u64>>,
    /// The tasks running now: their role and what they use.
    running: Mutex<BTreeMap<TaskId, (String, Arc<TaskUsage>)>>,
}

impl std::fmt::Debug for AgentStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStats").finish_non_exhaustive()
    }
}

impl AgentStats {
    fn running(&self) -> MutexGuard<'_, BTreeMap<TaskId, (String, Arc<TaskUsage>)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn started(&self, task: TaskId, role: Option<&str>, usage: Arc<TaskUsage>) {
        let role = role.unwrap_or_default().to_string();
        self.running().insert(task, (role, usage));
    }

    pub(crate) fn ended(&self, task: TaskId, status: &TaskStatus) {
        self.running().remove(&task);
        let reason = status.reason.map(|r| r.to_string()).unwrap_or_default();
        *self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((status.state.to_string(), reason))
            .or_default() += 1;
    }

    /// A bundle was found compiled (`true`) or had to be compiled.
    pub(crate) fn compile(&self, cached: bool) {
        let counter = if cached {
            &self.compile_cache_hits
        } else {
            &self.compiles
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The metrics of these agents (name, what it offers, its stats) in the Prometheus text format.
pub fn render(agents: &[(String, Resources, Arc<AgentStats>)]) -> Result<String, std::fmt::Error> {
    let offered_cpu = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let offered_mem = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let running = Family::<Labels, Gauge>::default();
    let task_cpu = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let task_mem = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let ended = Family::<Labels, Counter>::default();
    let compiles = Family::<Labels, Counter>::default();
    let hits = Family::<Labels, Counter>::default();
    for (name, total, stats) in agents {
        let agent = labels(&[("agent", name)]);
        offered_cpu
            .get_or_create(&agent)
            .set(total.cpu_millis as f64 / 1000.0);
        offered_mem
            .get_or_create(&agent)
            .set(total.mem_bytes as f64);
        let tasks = stats.running().clone();
        running.get_or_create(&agent).set(tasks.len() as i64);
        for (task, (role, usage)) in &tasks {
            let task = task.to_string();
            let l = labels(&[("agent", name), ("task", &task), ("role", role)]);
            task_cpu
                .get_or_create(&l)
                .inc_by(usage.cpu_ns() as f64 / 1e9);
            task_mem.get_or_create(&l).set(usage.mem_bytes() as f64);
        }
        let counts = stats
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for ((state, reason), n) in &counts {
            let l = labels(&[("agent", name), ("state", state), ("reason", reason)]);
            ended.get_or_create(&l).inc_by(*n);
        }
        compiles
            .get_or_create(&agent)
            .inc_by(stats.compiles.load(Ordering::Relaxed));
        hits.get_or_create(&agent)
            .inc_by(stats.compile_cache_hits.load(Ordering::Relaxed));
    }
    let mut registry = Registry::default();
    registry.register(
        "wasmos_agent_capacity_cpu_cores",
        "The CPU this agent offers the cluster",
        offered_cpu,
    );
    registry.register(
        "wasmos_agent_capacity_memory_bytes",
        "The memory this agent offers the cluster",
        offered_mem,
    );
    registry.register(
        "wasmos_agent_running_tasks",
        "Tasks running on an agent now",
        running,
    );
    registry.register(
        "wasmos_agent_task_cpu_seconds",
        "CPU time a running task has used",
        task_cpu,
    );
    registry.register(
        "wasmos_agent_task_memory_bytes",
        "Memory a running task holds now",
        task_mem,
    );
    registry.register(
        "wasmos_agent_tasks_ended",
        "Tasks that ended on an agent since it started, by state and reason",
        ended,
    );
    registry.register(
        "wasmos_agent_compiles",
        "Bundles an agent compiled (or loaded from its artifact cache on disk)",
        compiles,
    );
    registry.register(
        "wasmos_agent_compile_cache_hits",
        "Tasks whose bundle was already compiled in the agent's memory",
        hits,
    );
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;
