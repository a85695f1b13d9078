//! The master's Prometheus metrics (`GET /metrics` on its HTTPS address, operators only): a
//! few latencies measured as they happen (offer cycles, raft writes, task starts), and at each
//! scrape what raft says of this master and, on the leader only, what the replicated state and
//! the offer cycle say of the cluster (per-role allocation and
//! shares, tasks by state and reason, waiting tasks, per-agent resources, bytes stored per
//! tenant, the raft group). Names follow Prometheus' conventions: base units (seconds, bytes,
//! cores) in the name, counters ending in `_total`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wasmos_proto::{Resources, TaskState};

use crate::Shared;

/// What is measured as it happens; cloned into each scrape's registry (clones share values).
#[derive(Clone)]
pub(crate) struct Metrics {
    offer_cycle: Histogram,
    raft_write: Histogram,
    task_start: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            // 100 µs to ~3 s.
            offer_cycle: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 500 µs to ~16 s: a write waits for batching, a majority's fsync and apply.
            raft_write: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 5 ms to ~160 s: queueing for resources, fetching and compiling count too.
            task_start: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
        }
    }
}

impl Metrics {
    pub(crate) fn offer_cycle(&self, took: Duration) {
        self.offer_cycle.observe(took.as_secs_f64());
    }

    pub(crate) fn raft_write(&self, took: Duration) {
        self.raft_write.observe(took.as_secs_f64());
    }

    /// A task reported running `ms` after it was submitted (the leader's clock both times).
    pub(crate) fn task_started(&self, ms: u64) {
        self.task_start.observe(ms as f64 / 1000.0);
    }
}

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

/// The gauges of one scrape, by name, each with its help and labelled values.
#[derive(Default)]
struct Gauges(BTreeMap<&'static str, (&'static str, GaugeFamily)>);

impl Gauges {
    fn set(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let family = &self
            .0
            .entry(name)
            .or_insert_with(|| (help, Family::default()))
            .1;
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        family.get_or_create(&labels).set(v);
    }

    /// CPU in cores and memory in bytes, as `<prefix>_cpu_cores` and `<prefix>_memory_bytes`.
    fn resources(
        &mut self,
        names: (&'static str, &'static str),
        help: &'static str,
        labels: &[(&str, &str)],
        r: &Resources,
    ) {
        self.set(names.0, help, labels, r.cpu_millis as f64 / 1000.0);
        self.set(names.1, help, labels, r.mem_bytes as f64);
    }
}

fn state_name(s: TaskState) -> String {
    s.to_string()
}

/// The metrics text (Prometheus text format 0.0.4) as of now.
pub(crate) async fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let snap = crate::client::snapshot(shared).await;
    let mut g = Gauges::default();
    let status = shared.raft.status();
    let leads = shared.raft.is_leader();
    g.set(
        "wasmos_raft_term",
        "The raft term this master is in.",
        &[],
        status.term as f64,
    );
    g.set(
        "wasmos_raft_leader",
        "1 if this master leads the raft group",
        &[],
        if leads { 1.0 } else { 0.0 },
    );
    g.set(
        "wasmos_raft_last_log_index",
        "The last raft log index this master holds",
        &[],
        status.last_log_index.unwrap_or(0) as f64,
    );
    g.set(
        "wasmos_raft_applied_index",
        "The last raft log index this master applied",
        &[],
        status.last_applied.unwrap_or(0) as f64,
    );
    // The cluster's figures come from the leader alone: every master holds the same state, and
    // a dashboard summing over masters would count each task once per master.
    if leads {
        cluster_gauges(shared, &snap, &mut g);
        let last = status.last_log_index.unwrap_or(0);
        for m in &status.members {
            let id = m.id.to_string();
            g.set(
                "wasmos_raft_replication_lag_entries",
                "How many log entries a member is behind the leader (reported by the leader)",
                &[("member", &id)],
                last.saturating_sub(m.matched.unwrap_or(0)) as f64,
            );
        }
    }
    let mut registry = Registry::default();
    let m = &shared.metrics;
    registry.register(
        "wasmos_offer_cycle_seconds",
        "How long one step of the offer cycle took (allocating, offering, launching)",
        m.offer_cycle.clone(),
    );
    registry.register(
        "wasmos_raft_write_seconds",
        "From proposing a command to its result: batching, a majority's fsync, applying",
        m.raft_write.clone(),
    );
    registry.register(
        "wasmos_task_start_seconds",
        "From a task's submission to its agent reporting it running",
        m.task_start.clone(),
    );
    for (name, (help, family)) in g.0 {
        registry.register(name, help, family);
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// What the replicated state, the offer cycle and the group say of the whole cluster.
fn cluster_gauges(shared: &Shared, snap: &crate::offers::Snapshot, g: &mut Gauges) {
    let connected: std::collections::BTreeSet<_> = shared.agents().keys().cloned().collect();
    let tenants = shared.read(|s| {
        let used = s.used_by_agent();
        for a in s.agents.values() {
            let l = [("agent", a.id.as_str())];
            g.resources(
                (
                    "wasmos_agent_total_cpu_cores",
                    "wasmos_agent_total_memory_bytes",
                ),
                "What an agent offers the cluster in all",
                &l,
                &a.total,
            );
            g.resources(
                (
                    "wasmos_agent_used_cpu_cores",
                    "wasmos_agent_used_memory_bytes",
                ),
                "What live tasks hold on an agent",
                &l,
                used.get(&a.id).unwrap_or(&Resources::default()),
            );
            let reserved = s
                .reserved_on(&a.id)
                .values()
                .fold(Resources::default(), |x, r| x.saturating_add(r));
            g.resources(
                (
                    "wasmos_agent_reserved_cpu_cores",
                    "wasmos_agent_reserved_memory_bytes",
                ),
                "What an agent holds for roles (static and dynamic reservations)",
                &l,
                &reserved,
            );
            if let Some(summary) = snap.agents.get(&a.id) {
                g.resources(
                    (
                        "wasmos_agent_offered_cpu_cores",
                        "wasmos_agent_offered_memory_bytes",
                    ),
                    "What outstanding offers hold of an agent (on the leader)",
                    &l,
                    &summary.offered,
                );
                g.resources(
                    (
                        "wasmos_agent_revocable_cpu_cores",
                        "wasmos_agent_revocable_memory_bytes",
                    ),
                    "What tasks hold on an agent but leave idle, lent to best-effort tasks",
                    &l,
                    &summary.revocable_free,
                );
            }
            g.set(
                "wasmos_agent_connected",
                "1 if the agent has a session with this master",
                &l,
                if connected.contains(&a.id) { 1.0 } else { 0.0 },
            );
        }
        let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
        // Every role the offer cycle knows, so an empty queue reads 0, not absent.
        let mut waiting: BTreeMap<String, u64> =
            snap.roles.iter().map(|r| (r.role.to_string(), 0)).collect();
        let mut tenants = std::collections::BTreeSet::new();
        for t in s.tasks.values() {
            let reason = t.status.reason.map(|r| r.to_string()).unwrap_or_default();
            *by_state
                .entry((state_name(t.status.state), reason))
                .or_default() += 1;
            if t.status.state == TaskState::Staging && t.agent.is_none() {
                let role = t.spec.role.clone().unwrap_or_default();
                *waiting.entry(role).or_default() += 1;
            }
            if let Some(tenant) = wasmos_state::tenant_of(&t.owner) {
                tenants.insert(tenant.to_string());
            }
        }
        for ((state, reason), n) in &by_state {
            g.set(
                "wasmos_tasks",
                "Tasks the masters keep, by state and the reason they ended",
                &[("state", state), ("reason", reason)],
                *n as f64,
            );
        }
        for (role, n) in &waiting {
            g.set(
                "wasmos_tasks_waiting",
                "Tasks submitted and not yet placed on an agent, by role: the queue",
                &[("role", role)],
                *n as f64,
            );
        }
        let mut jobs: BTreeMap<String, u64> = BTreeMap::new();
        for j in s.jobs.values() {
            let state = match &j.state {
                wasmos_proto::JobState::Failed(_) => "failed".to_string(),
                other => other.to_string(),
            };
            *jobs.entry(state).or_default() += 1;
            if let Some(tenant) = wasmos_state::tenant_of(&j.owner) {
                tenants.insert(tenant.to_string());
            }
        }
        for (state, n) in &jobs {
            g.set(
                "wasmos_jobs",
                "Batch jobs and services the masters keep, by state",
                &[("state", state)],
                *n as f64,
            );
        }
        let live = s
            .frameworks
            .values()
            .filter(|f| f.removed_ms.is_none())
            .count();
        g.set(
            "wasmos_frameworks",
            "Frameworks registered and not removed",
            &[],
            live as f64,
        );
        tenants
    });
    for r in &snap.roles {
        let l = [("role", r.role.as_str())];
        g.resources(
            (
                "wasmos_role_allocated_cpu_cores",
                "wasmos_role_allocated_memory_bytes",
            ),
            "What a role's tasks hold (its sub-roles' included)",
            &l,
            &r.allocated,
        );
        g.resources(
            (
                "wasmos_role_offered_cpu_cores",
                "wasmos_role_offered_memory_bytes",
            ),
            "What outstanding offers to a role's frameworks hold",
            &l,
            &r.offered,
        );
        g.resources(
            (
                "wasmos_role_guarantee_cpu_cores",
                "wasmos_role_guarantee_memory_bytes",
            ),
            "A role's quota guarantee",
            &l,
            &r.quota.guarantee,
        );
        if let Some(limit) = &r.quota.limit {
            g.resources(
                (
                    "wasmos_role_limit_cpu_cores",
                    "wasmos_role_limit_memory_bytes",
                ),
                "A role's quota limit (absent: unlimited)",
                &l,
                limit,
            );
        }
        g.set(
            "wasmos_role_dominant_share",
            "A role's dominant share of the cluster (allocated and offered), before weighting",
            &l,
            r.share,
        );
        g.set("wasmos_role_weight", "A role's DRF weight.", &l, r.weight);
        g.set(
            "wasmos_role_frameworks",
            "Frameworks subscribed in a role",
            &l,
            r.frameworks as f64,
        );
    }
    for (id, f) in &snap.frameworks {
        let id = id.to_string();
        g.set(
            "wasmos_framework_outstanding_offers",
            "Offers made to a framework and not yet answered (on the leader)",
            &[("framework", &id)],
            f.outstanding as f64,
        );
    }
    for tenant in &tenants {
        let (held, quota) = shared.storage_of(tenant, true);
        g.set(
            "wasmos_tenant_stored_bytes",
            "Bytes a tenant stores: blobs, task specs and output logs",
            &[("tenant", tenant)],
            held as f64,
        );
        g.set(
            "wasmos_tenant_storage_quota_bytes",
            "A tenant's storage quota",
            &[("tenant", tenant)],
            quota as f64,
        );
    }
}
