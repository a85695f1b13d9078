//! The master's side of two-level scheduling as a pure state machine: agents and their resource
//! pools, frameworks under hierarchical roles, and the resource offers between them. The leader
//! feeds it events (agents and frameworks coming and going, accepts, declines, tasks ending,
//! usage reports) with the time as an argument, and acts on what it returns (offers to send,
//! offers to rescind, tasks to launch or preempt). It does no I/O and reads no clock.
//!
//! Policy, in the order an allocation cycle applies it:
//! 1. Quota guarantees: roles below their guarantee are offered resources first, up to it.
//! 2. Hierarchical weighted DRF: each agent's remaining resources go to the framework found by
//!    walking the role tree from the top, always into the child (role or framework) with the
//!    lowest dominant share divided by its weight. Unreserved resources that unmet guarantees
//!    still need are held back (headroom), and no role is offered past its quota limit.
//! 3. Reservations (static from agent configuration, dynamic from RESERVE) are offered only to
//!    frameworks in the reserving role or beneath it.
//! 4. Revocable resources (allocated but unused, from agents' usage reports) are offered to
//!    frameworks that take them, for best-effort tasks; when the owners' usage grows back the
//!    best-effort tasks are preempted, lowest priority first.
//!
//! Each framework holds at most one outstanding offer per agent; offered resources count as
//! allocated (for shares and quotas) until accepted, declined, rescinded or timed out.

use std::collections::{BTreeMap, BTreeSet};

use wasmos_proto::{AgentId, FrameworkId, OfferId, Qos, Resources, TaskId};

use crate::role::Role;

/// Tunables of the offer cycle, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// An offer not answered for this long is rescinded and its resources offered again.
    pub offer_timeout_ms: u64,
    /// How long declined (or accepted but unused) resources are not offered again to the same
    /// framework on the same agent, unless it asks otherwise.
    pub default_refuse_ms: u64,
    /// The least CPU and memory an offer carries (in its non-revocable part, and separately
    /// in its revocable part): less is no use to a task and would only be declined.
    pub min_offer_cpu_millis: u64,
    pub min_offer_mem_bytes: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            offer_timeout_ms: 60_000,
            default_refuse_ms: 5_000,
            min_offer_cpu_millis: 10,
            min_offer_mem_bytes: 32 << 20,
        }
    }
}

/// A role's quota: resources it is offered first and held back for it when the cluster is
/// short (`guarantee`), and a ceiling on what it holds and is offered (`limit`). Each names
/// the kinds it is about by giving them a non-zero amount; a kind left at zero is neither
/// guaranteed nor limited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    pub guarantee: Resources,
    pub limit: Option<Resources>,
}

impl Quota {
    /// Whether the guarantee stays within the limit in every kind the limit names (kinds
    /// the limit leaves at zero are not limited).
    pub fn guarantee_within_limit(&self) -> bool {
        self.limit
            .as_ref()
            .is_none_or(|l| cap_named(&self.guarantee, l, l) == self.guarantee)
    }
}

/// Resources in one offer, or charged to one task, by the pool they come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pools {
    pub unreserved: Resources,
    /// Reserved for a role (the framework's own or an ancestor of it).
    pub reserved: BTreeMap<Role, Resources>,
    /// Allocated to others but unused: only for best-effort tasks, which may be preempted.
    pub revocable: Resources,
}

impl Pools {
    pub fn is_empty(&self) -> bool {
        self.unreserved.is_empty()
            && self.reserved.values().all(Resources::is_empty)
            && self.revocable.is_empty()
    }

    /// Unreserved plus reserved: what counts towards shares and quotas.
    pub fn non_revocable(&self) -> Resources {
        self.reserved
            .values()
            .fold(self.unreserved.clone(), |acc, r| acc.saturating_add(r))
    }

    /// Everything in the pools, revocable included.
    pub fn total(&self) -> Resources {
        self.non_revocable().saturating_add(&self.revocable)
    }

    /// Takes what a task of `role` with `qos` needs, as an accept would (reservations of the
    /// role and its ancestors first, then unreserved; revocable only for best-effort), and
    /// returns its charge; on failure returns what was available and changes nothing.
    pub fn take(&mut self, role: &Role, want: &Resources, qos: Qos) -> Result<Pools, Resources> {
        take(self, role, want, qos)
    }

    pub fn add(&mut self, other: &Pools) {
        self.unreserved = self.unreserved.saturating_add(&other.unreserved);
        for (role, r) in &other.reserved {
            let entry = self.reserved.entry(role.clone()).or_default();
            *entry = entry.saturating_add(r);
        }
        self.revocable = self.revocable.saturating_add(&other.revocable);
    }

    pub fn sub(&mut self, other: &Pools) {
        self.unreserved = self.unreserved.saturating_sub(&other.unreserved);
        for (role, r) in &other.reserved {
            if let Some(entry) = self.reserved.get_mut(role) {
                *entry = entry.saturating_sub(r);
                if entry.is_empty() {
                    self.reserved.remove(role);
                }
            }
        }
        self.revocable = self.revocable.saturating_sub(&other.revocable);
    }

    pub fn reserved_for(&self, role: &str) -> Resources {
        self.reserved.get(role).cloned().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub id: OfferId,
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Pools,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RescindReason {
    /// Not answered within `offer_timeout_ms`.
    Timeout,
    /// The agent left the cluster.
    AgentRemoved,
    /// An operator drained the agent.
    AgentDraining,
    /// An operator changed what the agent offers: its offers are made again from the new total.
    AgentResized,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescind {
    pub offer: OfferId,
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub reason: RescindReason,
}

/// One task to launch from an accepted offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    pub id: TaskId,
    pub resources: Resources,
    pub qos: Qos,
    /// Higher runs first; among best-effort tasks the lowest is preempted first.
    pub priority: i32,
}

/// What an accept may do with the offered resources, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Launch(Vec<TaskRequest>),
    /// Tasks that start together on the agent, or not at all.
    LaunchGroup(Vec<TaskRequest>),
    /// Turn offered unreserved resources into a reservation for the framework's role.
    Reserve(Resources),
    /// Give offered resources reserved for the framework's role back to the unreserved pool.
    Unreserve(Resources),
}

/// A task the accept launches, with the pools it is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub task: TaskId,
    /// Index of the LAUNCH_GROUP operation it belongs to, if any.
    pub group: Option<usize>,
    pub charge: Pools,
}

/// A dynamic reservation made or released by an accept; the master records it durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationChange {
    Reserved {
        agent: AgentId,
        role: Role,
        resources: Resources,
    },
    Unreserved {
        agent: AgentId,
        role: Role,
        resources: Resources,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub agent: AgentId,
    pub launches: Vec<Launch>,
    pub reservations: Vec<ReservationChange>,
}

/// Why an accept was refused. Nothing was launched or reserved; the named offers that were
/// valid are withdrawn and their resources go back to the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("the accept names no offer")]
    NoOffers,
    #[error("offer {0} is not outstanding (it was accepted, declined, rescinded or timed out)")]
    Stale(OfferId),
    #[error("offer {offer} was made to another framework")]
    NotYours { offer: OfferId },
    #[error("the offers are on different agents; one accept uses offers of one agent")]
    MixedAgents,
    #[error("framework {0} is not subscribed")]
    UnknownFramework(FrameworkId),
    #[error("task {0} appears twice, or is already running")]
    DuplicateTask(TaskId),
    #[error("an empty task group")]
    EmptyGroup,
    #[error("task {task} needs {needed} but the offers have {left} left for it")]
    Insufficient {
        task: TaskId,
        needed: Resources,
        left: Resources,
    },
    #[error("reserving {wanted} but the offers have only {left} unreserved")]
    ReserveInsufficient { wanted: Resources, left: Resources },
    #[error(
        "unreserving {wanted} but the offers have only {left} dynamically reserved for role {role}"
    )]
    UnreserveInsufficient {
        wanted: Resources,
        left: Resources,
        role: Role,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("agent {0} is already known")]
    DuplicateAgent(AgentId),
    #[error("agent {0} is not known")]
    UnknownAgent(AgentId),
    #[error("agent {agent}: reservations ({reserved}) exceed its resources ({total})")]
    OverReserved {
        agent: AgentId,
        reserved: Resources,
        total: Resources,
    },
    #[error("framework {0} is already subscribed")]
    DuplicateFramework(FrameworkId),
    #[error("framework {0} is not subscribed")]
    UnknownFramework(FrameworkId),
    #[error("weight {0} is not a positive number")]
    BadWeight(f64),
    #[error("role {role}: guarantee {guarantee} exceeds limit {limit}")]
    GuaranteeOverLimit {
        role: Role,
        guarantee: Resources,
        limit: Resources,
    },
    #[error("task {0} is already running")]
    DuplicateTask(TaskId),
}

/// A best-effort task to stop because its revocable resources are needed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub agent: AgentId,
    pub framework: FrameworkId,
    pub task: TaskId,
}

/// What `agent list` shows for one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSummary {
    pub total: Resources,
    pub reserved: Resources,
    /// In use by tasks (non-revocable).
    pub allocated: Resources,
    /// Held by outstanding offers (non-revocable).
    pub offered: Resources,
    /// Allocated but unused, available to best-effort tasks.
    pub revocable_free: Resources,
    /// In use by best-effort tasks.
    pub revocable_used: Resources,
}

/// What `role list` shows for one role (its whole subtree).
#[derive(Debug, Clone, PartialEq)]
pub struct RoleSummary {
    pub role: Role,
    pub weight: f64,
    pub quota: Quota,
    pub allocated: Resources,
    pub offered: Resources,
    pub reserved: Resources,
    /// Dominant share of the cluster (allocated and offered), before weighting.
    pub share: f64,
    pub frameworks: usize,
}

#[derive(Debug, Clone)]
struct AgentState {
    id: AgentId,
    total: Resources,
    /// Static (agent configuration) and dynamic reservations together.
    reserved: BTreeMap<Role, Resources>,
    /// The dynamic part: only this may be unreserved by a framework.
    dynamic: BTreeMap<Role, Resources>,
    /// Held by tasks.
    taken: Pools,
    /// Held by outstanding offers.
    offered: Pools,
    /// Measured use of this agent's non-revocable tasks, if reported.
    usage: Option<Resources>,
    /// Outstanding offers here, by framework (at most one each, and rarely more than a few:
    /// a vector is cheaper than a map for that).
    offers: Vec<(FrameworkId, OfferId)>,
    /// Best-effort tasks, in preemption order: lowest priority, then newest, first.
    revocable_tasks: BTreeSet<(i32, std::cmp::Reverse<TaskId>)>,
    /// Drained by an operator: offered nothing (its tasks keep what they hold until they end).
    draining: bool,
    /// Its total was changed by an operator: tasks placed before may hold more than it has.
    resized: bool,
}

/// Agents by name (ordered, for every iteration that decides something) and by slot index
/// (for the allocation cycle's hot path, which would otherwise spend its time comparing
/// names in a map).
#[derive(Debug, Clone, Default)]
struct Agents {
    by_id: BTreeMap<AgentId, usize>,
    slots: Vec<Option<AgentState>>,
    free: Vec<usize>,
}

impl Agents {
    fn get(&self, id: &AgentId) -> Option<&AgentState> {
        self.by_id.get(id).and_then(|i| self.at(*i))
    }

    fn get_mut(&mut self, id: &AgentId) -> Option<&mut AgentState> {
        let i = *self.by_id.get(id)?;
        self.at_mut(i)
    }

    fn at(&self, i: usize) -> Option<&AgentState> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    fn at_mut(&mut self, i: usize) -> Option<&mut AgentState> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    fn contains_key(&self, id: &AgentId) -> bool {
        self.by_id.contains_key(id)
    }

    fn insert(&mut self, state: AgentState) {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = None;
                i
            }
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.by_id.insert(state.id.clone(), i);
        self.slots[i] = Some(state);
    }

    fn remove(&mut self, id: &AgentId) -> Option<AgentState> {
        let i = self.by_id.remove(id)?;
        self.free.push(i);
        self.slots.get_mut(i).and_then(Option::take)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// In name order, with slot indices.
    fn iter(&self) -> impl Iterator<Item = (usize, &AgentState)> {
        self.by_id
            .values()
            .filter_map(|i| self.at(*i).map(|a| (*i, a)))
    }

    fn values(&self) -> impl Iterator<Item = &AgentState> {
        self.iter().map(|(_, a)| a)
    }
}

impl AgentState {
    fn reserved_total(&self) -> Resources {
        self.reserved
            .values()
            .fold(Resources::default(), |acc, r| acc.saturating_add(r))
    }

    // The cycle calls this for every agent, more than once: most agents reserve nothing.
    fn free_unreserved(&self) -> Resources {
        let free = if self.reserved.is_empty() {
            self.total.saturating_sub(&self.taken.unreserved)
        } else {
            self.total
                .saturating_sub(&self.reserved_total())
                .saturating_sub(&self.taken.unreserved)
        };
        free.saturating_sub(&self.offered.unreserved)
    }

    fn free_reserved(&self, role: &str) -> Resources {
        self.reserved
            .get(role)
            .map(|r| {
                r.saturating_sub(&self.taken.reserved_for(role))
                    .saturating_sub(&self.offered.reserved_for(role))
            })
            .unwrap_or_default()
    }

    /// What best-effort tasks may use here: allocated to others but not used by them (and
    /// never beyond the total: after a shrink, tasks may hold more than there is).
    fn revocable_capacity(&self) -> Resources {
        match &self.usage {
            Some(used) => self
                .taken
                .non_revocable()
                .min_each(&self.total)
                .saturating_sub(used),
            None => Resources::default(),
        }
    }

    fn free_revocable(&self) -> Resources {
        if self.usage.is_none() {
            return Resources::default();
        }
        self.revocable_capacity()
            .saturating_sub(&self.taken.revocable)
            .saturating_sub(&self.offered.revocable)
    }
}

#[derive(Debug, Clone)]
struct FrameworkState {
    role: Role,
    /// Index of its role in `Allocator::roles`.
    rix: RoleIx,
    suppressed: bool,
    /// Takes revocable offers (for best-effort tasks).
    revocable: bool,
    /// Non-revocable resources held by its tasks and by its offers.
    allocated: Resources,
    offered: Resources,
    /// Per agent: resources it declined, not offered again (or anything smaller) until `until`.
    filters: BTreeMap<AgentId, (Resources, u64)>,
    /// Its position in its role's ordering.
    key: u64,
}

/// A role's index in `Allocator::roles`. Roles are kept sorted by name, so comparing indices
/// orders roles by name: the DRF tie-break stays independent of the order roles appeared in.
type RoleIx = usize;

#[derive(Debug, Clone)]
struct RoleNode {
    name: Role,
    parent: Option<RoleIx>,
    weight: f64,
    quota: Quota,
    /// Held by tasks and offers of frameworks in this role and beneath it.
    allocated: Resources,
    offered: Resources,
    /// Non-suppressed frameworks in this subtree: the role takes part in DRF only while > 0.
    active: usize,
    /// Frameworks subscribed directly in this role (suppressed ones too).
    frameworks: usize,
    /// Active children (roles and frameworks), by weighted dominant share, then name.
    children: BTreeSet<(u64, Child)>,
    key: u64,
}

impl RoleNode {
    fn new(name: Role) -> RoleNode {
        RoleNode {
            name,
            parent: None,
            weight: 1.0,
            quota: Quota::default(),
            allocated: Resources::default(),
            offered: Resources::default(),
            active: 0,
            frameworks: 0,
            children: BTreeSet::new(),
            key: 0,
        }
    }

    fn held(&self) -> Resources {
        self.allocated.saturating_add(&self.offered)
    }

    fn unmet_guarantee(&self) -> Resources {
        self.quota.guarantee.saturating_sub(&self.held())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Child {
    Role(RoleIx),
    Framework(FrameworkId),
}

#[derive(Debug, Clone)]
struct TaskCharge {
    agent: AgentId,
    framework: FrameworkId,
    charge: Pools,
    priority: i32,
    preempting: bool,
}

/// What a search on one agent may offer: unreserved resources up to `cap` in the kinds that
/// `named` names (a role's unmet guarantee in stage 1; in stage 2, what headroom leaves, in
/// every kind), and revocable ones or not.
#[derive(Clone, Copy)]
struct Scope<'a> {
    cap: &'a Resources,
    named: &'a Resources,
    revocable: bool,
}

/// `free`, with each kind that `named` gives a non-zero amount capped at `cap`'s amount;
/// other kinds pass unchanged.
fn cap_named(free: &Resources, cap: &Resources, named: &Resources) -> Resources {
    let pick = |f: u64, c: u64, n: u64| if n > 0 { f.min(c) } else { f };
    let mut out = Resources::new(
        pick(free.cpu_millis, cap.cpu_millis, named.cpu_millis),
        pick(free.mem_bytes, cap.mem_bytes, named.mem_bytes),
        pick(free.disk_bytes, cap.disk_bytes, named.disk_bytes),
    );
    for (k, v) in &free.scalars {
        let x = pick(*v, cap.scalar(k), named.scalar(k));
        if x > 0 {
            out.scalars.insert(k.clone(), x);
        }
    }
    out
}

/// The allocator. See the module documentation for its policy.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    cfg: Config,
    /// Sum of all agents' resources: the denominator of every share.
    total: Resources,
    agents: Agents,
    frameworks: BTreeMap<FrameworkId, FrameworkState>,
    /// Every role that has a framework, a weight or a quota, and their ancestors, sorted by
    /// name (see `RoleIx`).
    roles: Vec<RoleNode>,
    role_ix: BTreeMap<Role, RoleIx>,
    /// Active top-level roles, by weighted share.
    top: BTreeSet<(u64, Child)>,
    offers: BTreeMap<OfferId, Offer>,
    tasks: BTreeMap<TaskId, TaskCharge>,
    next_offer: u64,
    cycles: u64,
    /// Shares all changed (the cluster's total or a weight did): re-sort before the next
    /// cycle rather than after every agent added.
    stale_order: bool,
}

/// Adds `add` to and takes `sub` from the offered part of a holding, or the allocated one.
fn adjust(
    allocated: &mut Resources,
    offered_part: &mut Resources,
    offered: bool,
    add: &Resources,
    sub: &Resources,
) {
    let held = if offered { offered_part } else { allocated };
    // One of the two is usually empty (an offer made, a task released): one operation then.
    *held = match (add.is_empty(), sub.is_empty()) {
        (true, true) => return,
        (false, true) => held.saturating_add(add),
        (true, false) => held.saturating_sub(sub),
        (false, false) => held.saturating_add(add).saturating_sub(sub),
    };
}

/// The order preemption victims go in. Priorities are set by whoever submits, so they order
/// tasks only within one top-level role (a tenant cannot shield its tasks behind a higher
/// number than another tenant's): each role's tasks lowest priority first, then newest; across
/// roles, the newest of the roles' next victims goes first.
fn victim_order(
    queues: BTreeMap<RoleIx, Vec<(i32, std::cmp::Reverse<TaskId>)>>,
) -> Vec<(i32, std::cmp::Reverse<TaskId>)> {
    let mut queues: Vec<std::collections::VecDeque<(i32, std::cmp::Reverse<TaskId>)>> = queues
        .into_values()
        .map(|mut q| {
            q.sort();
            q.into()
        })
        .collect();
    let mut out = Vec::new();
    loop {
        let next = queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.front().map(|(_, std::cmp::Reverse(id))| (*id, i)))
            .max();
        let Some((_, i)) = next else {
            return out;
        };
        if let Some(v) = queues[i].pop_front() {
            out.push(v);
        }
    }
}

/// A share as an order-preserving integer key (shares are never negative).
fn share_key(share: f64) -> u64 {
    if share.is_finite() && share > 0.0 {
        share.to_bits()
    } else {
        0
    }
}

/// `dominant_share(a + b, total)` without building the sum.
fn dominant_share_of_sum(a: &Resources, b: &Resources, total: &Resources) -> f64 {
    if !a.scalars.is_empty() || !b.scalars.is_empty() {
        return dominant_share(&a.saturating_add(b), total);
    }
    let frac = |h: u64, t: u64| if t == 0 { 0.0 } else { h as f64 / t as f64 };
    frac(a.cpu_millis.saturating_add(b.cpu_millis), total.cpu_millis)
        .max(frac(
            a.mem_bytes.saturating_add(b.mem_bytes),
            total.mem_bytes,
        ))
        .max(frac(
            a.disk_bytes.saturating_add(b.disk_bytes),
            total.disk_bytes,
        ))
}

/// The largest fraction of `total` that `held` takes of any one resource: DRF's measure.
pub fn dominant_share(held: &Resources, total: &Resources) -> f64 {
    let frac = |h: u64, t: u64| if t == 0 { 0.0 } else { h as f64 / t as f64 };
    let mut share = frac(held.cpu_millis, total.cpu_millis)
        .max(frac(held.mem_bytes, total.mem_bytes))
        .max(frac(held.disk_bytes, total.disk_bytes));
    for (k, v) in &held.scalars {
        share = share.max(frac(*v, total.scalar(k)));
    }
    share
}

impl Allocator {
    pub fn new(cfg: Config) -> Allocator {
        Allocator {
            cfg,
            ..Allocator::default()
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    // ---- agents ----

    /// Adds an agent with its resources and its (static and dynamic) reservations.
    pub fn add_agent(
        &mut self,
        id: AgentId,
        total: Resources,
        reservations: BTreeMap<Role, Resources>,
    ) -> Result<(), ConfigError> {
        if self.agents.contains_key(&id) {
            return Err(ConfigError::DuplicateAgent(id));
        }
        let reserved = reservations
            .values()
            .fold(Resources::default(), |acc, r| acc.saturating_add(r));
        if !reserved.fits_in(&total) {
            return Err(ConfigError::OverReserved {
                agent: id,
                reserved,
                total,
            });
        }
        self.total = self.total.saturating_add(&total);
        self.agents.insert(AgentState {
            id,
            total,
            reserved: reservations
                .into_iter()
                .filter(|(_, r)| !r.is_empty())
                .collect(),
            dynamic: BTreeMap::new(),
            taken: Pools::default(),
            offered: Pools::default(),
            usage: None,
            offers: Vec::new(),
            revocable_tasks: BTreeSet::new(),
            draining: false,
            resized: false,
        });
        self.stale_order = true;
        Ok(())
    }

    /// Restores a dynamic reservation made earlier (by a RESERVE the master recorded), when a
    /// new leader rebuilds its allocator. It must fit in the agent's unreserved resources.
    pub fn restore_reservation(
        &mut self,
        agent: &AgentId,
        role: Role,
        resources: Resources,
    ) -> Result<(), ConfigError> {
        let a = self
            .agents
            .get_mut(agent)
            .ok_or_else(|| ConfigError::UnknownAgent(agent.clone()))?;
        let reserved = a.reserved_total().saturating_add(&resources);
        if !reserved.fits_in(&a.total) {
            return Err(ConfigError::OverReserved {
                agent: agent.clone(),
                reserved,
                total: a.total.clone(),
            });
        }
        for map in [&mut a.reserved, &mut a.dynamic] {
            let r = map.entry(role.clone()).or_default();
            *r = r.saturating_add(&resources);
        }
        Ok(())
    }

    /// Changes what an agent has in all (an operator's live resize). Its outstanding offers are
    /// rescinded, to be made again from the new total at the next cycle. Tasks already placed
    /// keep what they hold, even beyond a smaller total: the agent is then offered nothing
    /// until enough of them end, so it is never over-committed by new ones.
    pub fn resize_agent(
        &mut self,
        id: &AgentId,
        total: Resources,
    ) -> Result<Vec<Rescind>, ConfigError> {
        let agent = self
            .agents
            .get_mut(id)
            .ok_or_else(|| ConfigError::UnknownAgent(id.clone()))?;
        let reserved = agent.reserved_total();
        if !reserved.fits_in(&total) {
            return Err(ConfigError::OverReserved {
                agent: id.clone(),
                reserved,
                total,
            });
        }
        let old = std::mem::replace(&mut agent.total, total.clone());
        // Kept after a return to the agent's own total: tasks placed before may still hold
        // more than that.
        agent.resized = true;
        self.total = self.total.saturating_sub(&old).saturating_add(&total);
        // Every share is a fraction of the cluster total.
        self.stale_order = true;
        Ok(self.rescind_all(id, RescindReason::AgentResized))
    }

    /// Withdraws every outstanding offer of an agent.
    fn rescind_all(&mut self, id: &AgentId, reason: RescindReason) -> Vec<Rescind> {
        let offers: Vec<OfferId> = self
            .agents
            .get(id)
            .map(|a| a.offers.iter().map(|(_, o)| *o).collect())
            .unwrap_or_default();
        offers
            .into_iter()
            .filter_map(|o| {
                let offer = self.withdraw_offer(o)?;
                Some(Rescind {
                    offer: o,
                    framework: offer.framework,
                    agent: offer.agent,
                    reason,
                })
            })
            .collect()
    }

    /// Drains an agent (it is offered nothing more, and its outstanding offers are rescinded)
    /// or ends its drain.
    pub fn set_draining(&mut self, id: &AgentId, draining: bool) -> Vec<Rescind> {
        let Some(agent) = self.agents.get_mut(id) else {
            return Vec::new();
        };
        agent.draining = draining;
        if !draining {
            return Vec::new();
        }
        self.rescind_all(id, RescindReason::AgentDraining)
    }

    /// Removes an agent: its offers are rescinded and its tasks are released (they are lost).
    pub fn remove_agent(&mut self, id: &AgentId) -> (Vec<Rescind>, Vec<TaskId>) {
        let Some(agent) = self.agents.get(id) else {
            return (Vec::new(), Vec::new());
        };
        let offers: Vec<OfferId> = agent.offers.iter().map(|(_, o)| *o).collect();
        let mut rescinds = Vec::new();
        for o in offers {
            if let Some(offer) = self.withdraw_offer(o) {
                rescinds.push(Rescind {
                    offer: o,
                    framework: offer.framework,
                    agent: offer.agent,
                    reason: RescindReason::AgentRemoved,
                });
            }
        }
        let lost: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| &t.agent == id)
            .map(|(id, _)| *id)
            .collect();
        for t in &lost {
            self.release(*t);
        }
        if let Some(agent) = self.agents.remove(id) {
            self.total = self.total.saturating_sub(&agent.total);
        }
        for f in self.frameworks.values_mut() {
            f.filters.remove(id);
        }
        self.stale_order = true;
        (rescinds, lost)
    }

    /// The measured use of the agent's non-revocable tasks (from its heartbeats); `None`
    /// when unknown, which offers nothing revocable there.
    pub fn set_usage(&mut self, agent: &AgentId, usage: Option<Resources>) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.usage = usage;
        }
    }

    // ---- frameworks and roles ----

    pub fn add_framework(
        &mut self,
        id: FrameworkId,
        role: Role,
        revocable: bool,
    ) -> Result<(), ConfigError> {
        if self.frameworks.contains_key(&id) {
            return Err(ConfigError::DuplicateFramework(id));
        }
        let rix = self.ensure_role(&role);
        self.roles[rix].frameworks += 1;
        self.frameworks.insert(
            id,
            FrameworkState {
                role,
                rix,
                suppressed: false,
                revocable,
                allocated: Resources::default(),
                offered: Resources::default(),
                filters: BTreeMap::new(),
                key: 0,
            },
        );
        self.activate(id, true);
        Ok(())
    }

    /// Withdraws every outstanding offer of a framework (its session went): the resources go
    /// back with no refusal filter.
    pub fn withdraw_offers_of(&mut self, id: FrameworkId) {
        let offers: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| o.framework == id)
            .map(|o| o.id)
            .collect();
        for o in offers {
            self.withdraw_offer(o);
        }
    }

    /// Removes a framework: its offers are withdrawn and its tasks released (the master kills
    /// them). Returns those tasks.
    pub fn remove_framework(&mut self, id: FrameworkId) -> Vec<TaskId> {
        if !self.frameworks.contains_key(&id) {
            return Vec::new();
        }
        self.withdraw_offers_of(id);
        let tasks: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.framework == id)
            .map(|(t, _)| *t)
            .collect();
        for t in &tasks {
            self.release(*t);
        }
        self.activate(id, false);
        if let Some(f) = self.frameworks.remove(&id)
            && let Some(node) = self.roles.get_mut(f.rix)
        {
            node.frameworks = node.frameworks.saturating_sub(1);
        }
        tasks
    }

    /// No more offers for this framework until it revives. Outstanding offers stay.
    pub fn suppress(&mut self, id: FrameworkId) {
        self.activate(id, false);
        if let Some(f) = self.frameworks.get_mut(&id) {
            f.suppressed = true;
        }
    }

    /// Offers again, and forgets every decline filter the framework had.
    pub fn revive(&mut self, id: FrameworkId) {
        if let Some(f) = self.frameworks.get_mut(&id) {
            f.suppressed = false;
            f.filters.clear();
        }
        self.activate(id, true);
    }

    pub fn set_weight(&mut self, role: &Role, weight: f64) -> Result<(), ConfigError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(ConfigError::BadWeight(weight));
        }
        let ix = self.ensure_role(role);
        self.roles[ix].weight = weight;
        self.stale_order = true;
        Ok(())
    }

    pub fn set_quota(&mut self, role: &Role, quota: Quota) -> Result<(), ConfigError> {
        if let Some(limit) = &quota.limit
            && !quota.guarantee_within_limit()
        {
            return Err(ConfigError::GuaranteeOverLimit {
                role: role.clone(),
                guarantee: quota.guarantee,
                limit: limit.clone(),
            });
        }
        let ix = self.ensure_role(role);
        self.roles[ix].quota = quota;
        Ok(())
    }

    /// The index of `role`, adding it and its ancestors if new. Adding renumbers every role
    /// (indices follow names) and rebuilds the ordering; roles are added rarely.
    fn ensure_role(&mut self, role: &Role) -> RoleIx {
        if let Some(ix) = self.role_ix.get(role) {
            return *ix;
        }
        let mut nodes: BTreeMap<Role, RoleNode> = std::mem::take(&mut self.roles)
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        for r in role.self_and_ancestors() {
            nodes
                .entry(Role::unchecked(r))
                .or_insert_with(|| RoleNode::new(Role::unchecked(r)));
        }
        self.roles = nodes.into_values().collect();
        self.role_ix = self
            .roles
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        for i in 0..self.roles.len() {
            let parent = self.roles[i].name.parent();
            self.roles[i].parent = parent.and_then(|p| self.role_ix.get(&p).copied());
        }
        for f in self.frameworks.values_mut() {
            if let Some(ix) = self.role_ix.get(&f.role) {
                f.rix = *ix;
            }
        }
        self.resort_all();
        self.role_ix.get(role).copied().unwrap_or(0)
    }

    // ---- the DRF ordering ----

    fn framework_share(&self, f: &FrameworkState) -> f64 {
        dominant_share(&f.allocated.saturating_add(&f.offered), &self.total)
    }

    /// The ordered set a child sits in: its parent role's, or the top level's.
    fn siblings(&mut self, parent: Option<RoleIx>) -> &mut BTreeSet<(u64, Child)> {
        match parent.and_then(|p| self.roles.get_mut(p)) {
            Some(node) => &mut node.children,
            None => &mut self.top,
        }
    }

    /// Puts a framework into (or takes it out of) the ordering, updating its roles' activity.
    fn activate(&mut self, id: FrameworkId, on: bool) {
        let Some(f) = self.frameworks.get(&id) else {
            return;
        };
        let rix = f.rix;
        let in_tree = !f.suppressed
            && self
                .roles
                .get(rix)
                .is_some_and(|n| n.children.contains(&(f.key, Child::Framework(id))));
        if in_tree == on {
            return;
        }
        let old = f.key;
        let key = share_key(self.framework_share(f));
        if let Some(f) = self.frameworks.get_mut(&id) {
            f.key = key;
        }
        let set = self.siblings(Some(rix));
        if on {
            set.insert((key, Child::Framework(id)));
        } else {
            set.remove(&(old, Child::Framework(id)));
        }
        // Each role up the chain gains or loses an active framework; one that becomes active
        // (or idle) enters (or leaves) its parent's ordering.
        let mut cur = Some(rix);
        while let Some(r) = cur {
            let Some(node) = self.roles.get_mut(r) else {
                break;
            };
            let parent = node.parent;
            let was = node.active > 0;
            node.active = if on {
                node.active + 1
            } else {
                node.active.saturating_sub(1)
            };
            let is = node.active > 0;
            if was != is {
                let old = node.key;
                let key = share_key(dominant_share(&node.held(), &self.total) / node.weight);
                node.key = key;
                let set = self.siblings(parent);
                if is {
                    set.insert((key, Child::Role(r)));
                } else {
                    set.remove(&(old, Child::Role(r)));
                }
            }
            cur = parent;
        }
    }

    /// Adds `delta` (positive or negative, as two parts) to a framework's allocated or offered
    /// resources and to every role above it, moving each in its siblings' ordering.
    fn account(&mut self, id: FrameworkId, add: &Resources, sub: &Resources, offered: bool) {
        // The hottest path of a cycle: roles are reached by index, nothing is cloned.
        let Some(f) = self.frameworks.get_mut(&id) else {
            return;
        };
        adjust(&mut f.allocated, &mut f.offered, offered, add, sub);
        let old = f.key;
        let new = share_key(dominant_share_of_sum(&f.allocated, &f.offered, &self.total));
        f.key = new;
        let rix = f.rix;
        if !f.suppressed
            && old != new
            && let Some(node) = self.roles.get_mut(rix)
            && node.children.remove(&(old, Child::Framework(id)))
        {
            node.children.insert((new, Child::Framework(id)));
        }
        let mut cur = Some(rix);
        while let Some(r) = cur {
            let Some(node) = self.roles.get_mut(r) else {
                break;
            };
            adjust(&mut node.allocated, &mut node.offered, offered, add, sub);
            let old = node.key;
            let new = share_key(
                dominant_share_of_sum(&node.allocated, &node.offered, &self.total) / node.weight,
            );
            node.key = new;
            let parent = node.parent;
            if node.active > 0 && old != new {
                let set = self.siblings(parent);
                if set.remove(&(old, Child::Role(r))) {
                    set.insert((new, Child::Role(r)));
                }
            }
            cur = parent;
        }
    }

    /// Recomputes every key: shares all change when the cluster's total does.
    fn resort_all(&mut self) {
        let total = &self.total;
        for f in self.frameworks.values_mut() {
            f.key = share_key(dominant_share(
                &f.allocated.saturating_add(&f.offered),
                total,
            ));
        }
        for n in &mut self.roles {
            n.key = share_key(dominant_share(&n.held(), total) / n.weight);
            n.children.clear();
        }
        self.top.clear();
        for (id, f) in &self.frameworks {
            if !f.suppressed
                && let Some(n) = self.roles.get_mut(f.rix)
            {
                n.children.insert((f.key, Child::Framework(*id)));
            }
        }
        for i in 0..self.roles.len() {
            if self.roles[i].active > 0 {
                let (key, parent) = (self.roles[i].key, self.roles[i].parent);
                self.siblings(parent).insert((key, Child::Role(i)));
            }
        }
    }

    // ---- offers ----

    /// The quota limits on `role` and every role above it: (room left, limit) for each.
    fn limit_caps(&self, role: RoleIx) -> Vec<(Resources, &Resources)> {
        std::iter::successors(self.roles.get(role), |n| {
            n.parent.and_then(|p| self.roles.get(p))
        })
        .filter_map(|node| {
            let limit = node.quota.limit.as_ref()?;
            Some((limit.saturating_sub(&node.held()), limit))
        })
        .collect()
    }

    /// Whether `pools` is big enough to be worth offering (`min_offer_*`).
    fn worth_offering(&self, r: &Resources) -> bool {
        r.cpu_millis >= self.cfg.min_offer_cpu_millis.max(1)
            && r.mem_bytes >= self.cfg.min_offer_mem_bytes.max(1)
    }

    /// What `fw` would be offered on `agent` now, or `None` if nothing (or only what it
    /// declined there) is available to it.
    fn offerable(&self, fw: FrameworkId, agent: usize, scope: Scope, now: u64) -> Option<Pools> {
        let f = self.frameworks.get(&fw)?;
        let agent = self.agents.at(agent)?;
        if agent.draining || agent.offers.iter().any(|(f, _)| *f == fw) {
            return None;
        }
        let mut pools = Pools::default();
        let reserving = if agent.reserved.is_empty() {
            None
        } else {
            Some(f.role.self_and_ancestors())
        };
        for r in reserving.into_iter().flatten() {
            let free = agent.free_reserved(r);
            if !free.is_empty()
                && let Ok(r) = Role::new(r)
            {
                pools.reserved.insert(r, free);
            }
        }
        pools.unreserved = cap_named(&agent.free_unreserved(), scope.cap, scope.named);
        for (mut room, limit) in self.limit_caps(f.rix) {
            for r in pools.reserved.values_mut() {
                *r = cap_named(r, &room, limit);
                room = room.saturating_sub(r);
            }
            pools.unreserved = cap_named(&pools.unreserved, &room, limit);
        }
        pools.reserved.retain(|_, r| !r.is_empty());
        if !self.worth_offering(&pools.non_revocable()) {
            pools.unreserved = Resources::default();
            pools.reserved.clear();
        }
        if f.revocable && scope.revocable {
            let free = agent.free_revocable();
            if self.worth_offering(&free) {
                pools.revocable = free;
            }
        }
        if pools.is_empty() {
            return None;
        }
        if let Some((declined, until)) = f.filters.get(&agent.id)
            && now < *until
            && pools
                .non_revocable()
                .saturating_add(&pools.revocable)
                .fits_in(declined)
        {
            return None;
        }
        Some(pools)
    }

    /// The first framework in DRF order beneath `children` that can be offered something on
    /// `agent`, with what it would get.
    fn pick(
        &self,
        children: &BTreeSet<(u64, Child)>,
        agent: usize,
        scope: Scope,
        now: u64,
    ) -> Option<(FrameworkId, Pools)> {
        for (_, child) in children {
            match child {
                Child::Framework(fw) => {
                    if let Some(pools) = self.offerable(*fw, agent, scope, now) {
                        return Some((*fw, pools));
                    }
                }
                Child::Role(r) => {
                    // A role at its limit in CPU or memory can take nothing useful.
                    let full = self.limit_caps(*r).iter().any(|(room, limit)| {
                        (limit.cpu_millis > 0 && room.cpu_millis < self.cfg.min_offer_cpu_millis)
                            || (limit.mem_bytes > 0
                                && room.mem_bytes < self.cfg.min_offer_mem_bytes)
                    });
                    if full {
                        continue;
                    }
                    if let Some(node) = self.roles.get(*r)
                        && let Some(found) = self.pick(&node.children, agent, scope, now)
                    {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    fn make_offer(
        &mut self,
        fw: FrameworkId,
        agent: usize,
        pools: Pools,
        now: u64,
    ) -> Option<Offer> {
        let a = self.agents.at_mut(agent)?;
        self.next_offer += 1;
        let id = OfferId(self.next_offer);
        a.offered.add(&pools);
        a.offers.push((fw, id));
        let agent_id = a.id.clone();
        let offer = Offer {
            id,
            framework: fw,
            agent: agent_id,
            resources: pools,
            created_ms: now,
        };
        self.account(
            fw,
            &offer.resources.non_revocable(),
            &Resources::default(),
            true,
        );
        self.offers.insert(offer.id, offer.clone());
        Some(offer)
    }

    /// Takes an outstanding offer back: its resources return to the agent's pools.
    fn withdraw_offer(&mut self, id: OfferId) -> Option<Offer> {
        let offer = self.offers.remove(&id)?;
        if let Some(a) = self.agents.get_mut(&offer.agent) {
            a.offered.sub(&offer.resources);
            a.offers.retain(|(f, _)| *f != offer.framework);
        }
        self.account(
            offer.framework,
            &Resources::default(),
            &offer.resources.non_revocable(),
            true,
        );
        Some(offer)
    }

    /// Unreserved resources that unmet quota guarantees still need: held back from everyone
    /// else. Only the top-most role with a guarantee counts on each path (a guarantee covers
    /// its descendants').
    fn headroom(&self) -> Resources {
        let mut need = Resources::default();
        for node in &self.roles {
            if node.quota.guarantee.is_empty() {
                continue;
            }
            let covered =
                std::iter::successors(node.parent, |p| self.roles.get(*p)?.parent).any(|a| {
                    self.roles
                        .get(a)
                        .is_some_and(|n| !n.quota.guarantee.is_empty())
                });
            if !covered {
                need = need.saturating_add(&node.unmet_guarantee());
            }
        }
        need
    }

    /// One allocation cycle: offers what is free, as the policy says. Offers are made in
    /// batches like this on a timer and after events that free resources.
    pub fn allocate(&mut self, now: u64) -> Vec<Offer> {
        self.cycles += 1;
        if self.stale_order {
            self.resort_all();
            self.stale_order = false;
        }
        let mut out = Vec::new();
        if self.agents.is_empty() {
            return out;
        }
        // The agents with anything free. Stage 1 walks them from the most free down, so a
        // role catching up on its guarantee gets whole agents' worth; stage 2 from the least
        // free up, so other work fills partly used agents first and free space stays in large
        // pieces instead of scattered holes no bigger task fits in. Ties rotate from cycle to
        // cycle, so no agent is always the first one handed out.
        let n = self.agents.len();
        let start = (self.cycles % n as u64) as usize;
        // One pass: the agents with anything free, and the unreserved total (for stage 2).
        let mut free_total = Resources::default();
        let mut ids: Vec<(u64, u64, usize, usize)> = Vec::with_capacity(n);
        for (i, (slot, a)) in self.agents.iter().enumerate() {
            if a.draining {
                continue;
            }
            let free = a.free_unreserved();
            let any = !free.is_empty()
                || a.reserved
                    .keys()
                    .any(|r| !a.free_reserved(r.as_str()).is_empty())
                || !a.free_revocable().is_empty();
            if any {
                ids.push((free.cpu_millis, free.mem_bytes, (i + n - start) % n, slot));
            }
            free_total = free_total.saturating_add(&free);
        }
        ids.sort_unstable_by_key(|a| (a.0, a.1, a.2));
        // Usually one offer per agent with anything free: no regrowing on the way.
        out.reserve(ids.len());

        // Stage 1: roles below their guarantee, poorest first, up to what they lack.
        let mut quota_roles: Vec<(u64, RoleIx)> = self
            .roles
            .iter()
            .enumerate()
            .filter(|(_, n)| n.active > 0 && !n.unmet_guarantee().is_empty())
            .map(|(i, n)| (n.key, i))
            .collect();
        quota_roles.sort();
        for (_, role) in &quota_roles {
            for (_, _, _, agent) in ids.iter().rev() {
                let Some(node) = self.roles.get(*role) else {
                    break;
                };
                let unmet = node.unmet_guarantee();
                if unmet.is_empty() {
                    break;
                }
                let scope = Scope {
                    cap: &unmet,
                    named: &node.quota.guarantee,
                    revocable: false,
                };
                if let Some((fw, pools)) = self.pick(&node.children, *agent, scope, now) {
                    free_total = free_total.saturating_sub(&pools.unreserved);
                    out.extend(self.make_offer(fw, *agent, pools, now));
                }
            }
        }

        // Stage 2: fair shares, holding back what unmet guarantees still need.
        let mut spare = free_total.saturating_sub(&self.headroom());
        let any_revocable = self
            .frameworks
            .values()
            .any(|f| f.revocable && !f.suppressed);
        for &(_, _, _, agent) in &ids {
            while let Some(a) = self.agents.at(agent) {
                let unreserved = self.worth_offering(&a.free_unreserved().min(&spare));
                let revocable = any_revocable && !a.free_revocable().is_empty();
                let reserved: Vec<RoleIx> = a
                    .reserved
                    .keys()
                    .filter(|r| !a.free_reserved(r.as_str()).is_empty())
                    .filter_map(|r| self.role_ix.get(r).copied())
                    .collect();
                let scope = Scope {
                    cap: &spare,
                    named: &spare,
                    revocable: true,
                };
                // Anyone may get unreserved or revocable resources; reserved ones only go to
                // their role's subtree, so search just there when that is all that is left.
                let found = if unreserved || revocable {
                    self.pick(&self.top, agent, scope, now)
                } else {
                    reserved.iter().find_map(|r| {
                        let node = self.roles.get(*r)?;
                        (node.active > 0).then_some(())?;
                        self.pick(&node.children, agent, scope, now)
                    })
                };
                let Some((fw, pools)) = found else {
                    break;
                };
                spare = spare.saturating_sub(&pools.unreserved);
                out.extend(self.make_offer(fw, agent, pools, now));
            }
        }
        out
    }

    /// Rescinds offers older than the offer timeout.
    pub fn expire(&mut self, now: u64) -> Vec<Rescind> {
        let old: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| now.saturating_sub(o.created_ms) >= self.cfg.offer_timeout_ms)
            .map(|o| o.id)
            .collect();
        old.into_iter()
            .filter_map(|id| self.withdraw_offer(id))
            .map(|o| Rescind {
                offer: o.id,
                framework: o.framework,
                agent: o.agent,
                reason: RescindReason::Timeout,
            })
            .collect()
    }

    /// Declines offers: their resources go back, and are not offered to this framework on
    /// those agents for `refuse_ms` (default `default_refuse_ms`) unless more is free.
    /// Offers that are not outstanding or not this framework's are ignored.
    pub fn decline(
        &mut self,
        fw: FrameworkId,
        offers: &[OfferId],
        refuse_ms: Option<u64>,
        now: u64,
    ) {
        for id in offers {
            if self.offers.get(id).is_some_and(|o| o.framework == fw)
                && let Some(offer) = self.withdraw_offer(*id)
            {
                self.filter(fw, &offer.agent, &offer.resources, refuse_ms, now);
            }
        }
    }

    fn filter(
        &mut self,
        fw: FrameworkId,
        agent: &AgentId,
        pools: &Pools,
        refuse_ms: Option<u64>,
        now: u64,
    ) {
        let refuse = refuse_ms.unwrap_or(self.cfg.default_refuse_ms);
        if refuse == 0 {
            return;
        }
        if let Some(f) = self.frameworks.get_mut(&fw) {
            let declined = pools.non_revocable().saturating_add(&pools.revocable);
            f.filters
                .insert(agent.clone(), (declined, now.saturating_add(refuse)));
        }
    }

    /// Accepts offers (all on one agent) with operations applied in order. Either all of it
    /// happens or none: on an error nothing launches, and the named offers that were this
    /// framework's are withdrawn. What the offers had left over is declined with `refuse_ms`.
    pub fn accept(
        &mut self,
        fw: FrameworkId,
        offer_ids: &[OfferId],
        ops: &[Operation],
        refuse_ms: Option<u64>,
        now: u64,
    ) -> Result<Accepted, AcceptError> {
        let result = self.check_accept(fw, offer_ids, ops);
        let mine: Vec<OfferId> = offer_ids
            .iter()
            .copied()
            .filter(|o| self.offers.get(o).is_some_and(|o| o.framework == fw))
            .collect();
        let mut agent = None;
        for o in mine {
            if let Some(offer) = self.withdraw_offer(o) {
                agent = Some(offer.agent);
            }
        }
        let (left, accepted) = result?;
        let Some(agent_id) = agent else {
            return Err(AcceptError::NoOffers);
        };
        for change in &accepted.reservations {
            let Some(a) = self.agents.get_mut(&agent_id) else {
                continue;
            };
            for map in [&mut a.reserved, &mut a.dynamic] {
                match change {
                    ReservationChange::Reserved {
                        role, resources, ..
                    } => {
                        let r = map.entry(role.clone()).or_default();
                        *r = r.saturating_add(resources);
                    }
                    ReservationChange::Unreserved {
                        role, resources, ..
                    } => {
                        if let Some(r) = map.get_mut(role) {
                            *r = r.saturating_sub(resources);
                            if r.is_empty() {
                                map.remove(role);
                            }
                        }
                    }
                }
            }
        }
        let priorities: BTreeMap<TaskId, i32> = ops
            .iter()
            .flat_map(|op| match op {
                Operation::Launch(t) | Operation::LaunchGroup(t) => t.as_slice(),
                _ => &[],
            })
            .map(|t| (t.id, t.priority))
            .collect();
        for launch in &accepted.launches {
            let priority = priorities.get(&launch.task).copied().unwrap_or(0);
            self.charge(launch.task, &agent_id, fw, launch.charge.clone(), priority);
        }
        self.filter(fw, &agent_id, &left, refuse_ms, now);
        Ok(accepted)
    }

    /// Validates an accept against the offers without changing anything; returns what the
    /// offers would have left and the outcome.
    fn check_accept(
        &self,
        fw: FrameworkId,
        offer_ids: &[OfferId],
        ops: &[Operation],
    ) -> Result<(Pools, Accepted), AcceptError> {
        let f = self
            .frameworks
            .get(&fw)
            .ok_or(AcceptError::UnknownFramework(fw))?;
        if offer_ids.is_empty() {
            return Err(AcceptError::NoOffers);
        }
        let mut agent: Option<&AgentId> = None;
        let mut pools = Pools::default();
        let mut seen = BTreeSet::new();
        for id in offer_ids {
            if !seen.insert(*id) {
                continue;
            }
            let offer = self.offers.get(id).ok_or(AcceptError::Stale(*id))?;
            if offer.framework != fw {
                return Err(AcceptError::NotYours { offer: *id });
            }
            if agent.is_some_and(|a| a != &offer.agent) {
                return Err(AcceptError::MixedAgents);
            }
            agent = Some(&offer.agent);
            pools.add(&offer.resources);
        }
        let agent = agent.ok_or(AcceptError::NoOffers)?.clone();
        let mut accepted = Accepted {
            agent: agent.clone(),
            launches: Vec::new(),
            reservations: Vec::new(),
        };
        let mut ids = BTreeSet::new();
        // What the framework may unreserve: the agent's dynamic reservations for its role
        // (static ones belong to the agent's configuration), plus what this accept reserves.
        let mut unreservable = self
            .agents
            .get(&agent)
            .and_then(|a| a.dynamic.get(&f.role).cloned())
            .unwrap_or_default();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Operation::Reserve(r) => {
                    if !r.fits_in(&pools.unreserved) {
                        return Err(AcceptError::ReserveInsufficient {
                            wanted: r.clone(),
                            left: pools.unreserved.clone(),
                        });
                    }
                    pools.unreserved = pools.unreserved.saturating_sub(r);
                    let e = pools.reserved.entry(f.role.clone()).or_default();
                    *e = e.saturating_add(r);
                    unreservable = unreservable.saturating_add(r);
                    accepted.reservations.push(ReservationChange::Reserved {
                        agent: agent.clone(),
                        role: f.role.clone(),
                        resources: r.clone(),
                    });
                }
                Operation::Unreserve(r) => {
                    let have = pools.reserved_for(f.role.as_str()).min(&unreservable);
                    if !r.fits_in(&have) {
                        return Err(AcceptError::UnreserveInsufficient {
                            wanted: r.clone(),
                            left: have,
                            role: f.role.clone(),
                        });
                    }
                    pools.sub(&Pools {
                        reserved: BTreeMap::from([(f.role.clone(), r.clone())]),
                        ..Pools::default()
                    });
                    pools.unreserved = pools.unreserved.saturating_add(r);
                    unreservable = unreservable.saturating_sub(r);
                    accepted.reservations.push(ReservationChange::Unreserved {
                        agent: agent.clone(),
                        role: f.role.clone(),
                        resources: r.clone(),
                    });
                }
                Operation::Launch(tasks) | Operation::LaunchGroup(tasks) => {
                    let group = matches!(op, Operation::LaunchGroup(_)).then_some(i);
                    if group.is_some() && tasks.is_empty() {
                        return Err(AcceptError::EmptyGroup);
                    }
                    for t in tasks {
                        if !ids.insert(t.id) || self.tasks.contains_key(&t.id) {
                            return Err(AcceptError::DuplicateTask(t.id));
                        }
                        let charge =
                            take(&mut pools, &f.role, &t.resources, t.qos).map_err(|left| {
                                AcceptError::Insufficient {
                                    task: t.id,
                                    needed: t.resources.clone(),
                                    left,
                                }
                            })?;
                        accepted.launches.push(Launch {
                            task: t.id,
                            group,
                            charge,
                        });
                    }
                }
            }
        }
        Ok((pools, accepted))
    }

    fn charge(
        &mut self,
        task: TaskId,
        agent: &AgentId,
        fw: FrameworkId,
        charge: Pools,
        priority: i32,
    ) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.taken.add(&charge);
            if !charge.revocable.is_empty() {
                a.revocable_tasks
                    .insert((priority, std::cmp::Reverse(task)));
            }
        }
        self.account(fw, &charge.non_revocable(), &Resources::default(), false);
        self.tasks.insert(
            task,
            TaskCharge {
                agent: agent.clone(),
                framework: fw,
                charge,
                priority,
                preempting: false,
            },
        );
    }

    /// Records a task already running (when a new leader rebuilds its allocator from the
    /// replicated state and agents' reports).
    pub fn restore_task(
        &mut self,
        task: TaskId,
        agent: &AgentId,
        fw: FrameworkId,
        charge: Pools,
        priority: i32,
    ) -> Result<(), ConfigError> {
        if self.tasks.contains_key(&task) {
            return Err(ConfigError::DuplicateTask(task));
        }
        if !self.agents.contains_key(agent) {
            return Err(ConfigError::UnknownAgent(agent.clone()));
        }
        if !self.frameworks.contains_key(&fw) {
            return Err(ConfigError::UnknownFramework(fw));
        }
        self.charge(task, agent, fw, charge, priority);
        Ok(())
    }

    /// A task ended (or was lost): its resources go back to the pools it came from.
    pub fn release(&mut self, task: TaskId) -> bool {
        let Some(t) = self.tasks.remove(&task) else {
            return false;
        };
        if let Some(a) = self.agents.get_mut(&t.agent) {
            a.taken.sub(&t.charge);
            a.revocable_tasks
                .remove(&(t.priority, std::cmp::Reverse(task)));
        }
        self.account(
            t.framework,
            &Resources::default(),
            &t.charge.non_revocable(),
            false,
        );
        true
    }

    /// Best-effort tasks to preempt where owners' usage has grown back into what they were
    /// lent: lowest priority first, then newest, until the rest fits. Each task is named once.
    pub fn preemptions(&mut self) -> Vec<Preemption> {
        let mut out = Vec::new();
        for a in self.agents.values() {
            let agent_id = &a.id;
            if a.taken.revocable.is_empty() {
                continue;
            }
            let capacity = a.revocable_capacity();
            let mut held = a.taken.revocable.clone();
            for (_, std::cmp::Reverse(task)) in &a.revocable_tasks {
                if held.fits_in(&capacity) {
                    break;
                }
                let Some(t) = self.tasks.get(task) else {
                    continue;
                };
                held = held.saturating_sub(&t.charge.revocable);
                if !t.preempting {
                    out.push(Preemption {
                        agent: agent_id.clone(),
                        framework: t.framework,
                        task: *task,
                    });
                }
            }
        }
        for p in &out {
            if let Some(t) = self.tasks.get_mut(&p.task) {
                t.preempting = true;
            }
        }
        out
    }

    /// Tasks to stop so that roles below their quota guarantee get resources back, as
    /// Kubernetes priority preemption and YARN capacity preemption do. `wants` names, per
    /// role (the master sends at most one a role), one task's resources that have waited past
    /// the master's grace period. A want is
    /// served only within the guarantee of the nearest role on its path that has one, only if
    /// no agent has the room already (free, offered, or being freed by earlier preemptions),
    /// and only from tasks of roles outside that guarantee's subtree that stay at or above
    /// every guarantee on their own path: lowest priority first, then newest, on the agent
    /// where the fewest tasks must go. Each task is named once.
    pub fn guarantee_preemptions(&mut self, wants: &[(Role, Resources)]) -> Vec<Preemption> {
        let mut out: Vec<Preemption> = Vec::new();
        // Resources taken from each role by the preemptions chosen so far in this call.
        let mut taken: BTreeMap<RoleIx, Resources> = BTreeMap::new();
        for (role, want) in wants {
            let Some(scope) = self.guaranteed_scope(role, want) else {
                continue;
            };
            let path: Vec<&str> = role.self_and_ancestors().collect();
            // Room an agent has, or will have once the tasks already being preempted end.
            let room = |a: &AgentState| {
                let mut room = a.free_unreserved().saturating_add(&a.offered.unreserved);
                for r in &path {
                    room = room.saturating_add(&a.free_reserved(r));
                }
                room
            };
            let mut dying: BTreeMap<&AgentId, Resources> = BTreeMap::new();
            for t in self.tasks.values().filter(|t| t.preempting) {
                let d = dying.entry(&t.agent).or_default();
                *d = d.saturating_add(&t.charge.unreserved);
            }
            let pending = |a: &AgentState| dying.get(&a.id).cloned().unwrap_or_default();
            // A drained agent's room serves nobody, nor does preempting its tasks.
            if self
                .agents
                .values()
                .any(|a| !a.draining && want.fits_in(&room(a).saturating_add(&pending(a))))
            {
                continue;
            }
            // Candidates by agent: lowest priority first, then newest.
            // Per agent, per top-level role: (priority, newest first).
            type Queue = Vec<(i32, std::cmp::Reverse<TaskId>)>;
            let mut by_agent: BTreeMap<&AgentId, BTreeMap<RoleIx, Queue>> = BTreeMap::new();
            for (id, t) in &self.tasks {
                if t.preempting
                    || t.charge.unreserved.is_empty()
                    || self.agents.get(&t.agent).is_none_or(|a| a.draining)
                {
                    continue;
                }
                let Some(f) = self.frameworks.get(&t.framework) else {
                    continue;
                };
                if self.is_under(f.rix, scope) {
                    continue;
                }
                by_agent
                    .entry(&t.agent)
                    .or_default()
                    .entry(self.top_of(f.rix))
                    .or_default()
                    .push((t.priority, std::cmp::Reverse(*id)));
            }
            let mut best: Option<(Vec<TaskId>, BTreeMap<RoleIx, Resources>)> = None;
            for (agent, queues) in by_agent {
                let Some(a) = self.agents.get(agent) else {
                    continue;
                };
                let candidates = victim_order(queues);
                let mut freed = room(a).saturating_add(&pending(a));
                let mut chosen = Vec::new();
                let mut trial = taken.clone();
                for (_, std::cmp::Reverse(id)) in candidates {
                    if want.fits_in(&freed) {
                        break;
                    }
                    let Some(t) = self.tasks.get(&id) else {
                        continue;
                    };
                    let Some(f) = self.frameworks.get(&t.framework) else {
                        continue;
                    };
                    let charge = t.charge.non_revocable();
                    if !self.stays_guaranteed(f.rix, &charge, &trial) {
                        continue;
                    }
                    let mut at = Some(f.rix);
                    while let Some(i) = at {
                        let e = trial.entry(i).or_default();
                        *e = e.saturating_add(&charge);
                        at = self.roles[i].parent;
                    }
                    freed = freed.saturating_add(&t.charge.unreserved);
                    chosen.push(id);
                }
                if want.fits_in(&freed) && best.as_ref().is_none_or(|(b, _)| chosen.len() < b.len())
                {
                    best = Some((chosen, trial));
                }
            }
            if let Some((chosen, trial)) = best {
                taken = trial;
                for id in chosen {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.preempting = true;
                        out.push(Preemption {
                            agent: t.agent.clone(),
                            framework: t.framework,
                            task: id,
                        });
                    }
                }
            }
        }
        out
    }

    /// The nearest role on `role`'s path with a guarantee, if `want` on top of what that
    /// subtree holds stays within it (only the kinds it names).
    fn guaranteed_scope(&self, role: &Role, want: &Resources) -> Option<RoleIx> {
        let mut at = role.self_and_ancestors().find_map(|r| {
            Role::new(r)
                .ok()
                .and_then(|r| self.role_ix.get(&r).copied())
        });
        while let Some(i) = at {
            let node = &self.roles[i];
            let g = &node.quota.guarantee;
            if !g.is_empty() {
                let after = node.allocated.saturating_add(want);
                return (cap_named(&after, g, g) == after).then_some(i);
            }
            at = node.parent;
        }
        None
    }

    /// The top-level role above (or at) `rix`.
    fn top_of(&self, rix: RoleIx) -> RoleIx {
        let mut at = rix;
        while let Some(p) = self.roles[at].parent {
            at = p;
        }
        at
    }

    fn is_under(&self, rix: RoleIx, scope: RoleIx) -> bool {
        let mut at = Some(rix);
        while let Some(i) = at {
            if i == scope {
                return true;
            }
            at = self.roles[i].parent;
        }
        false
    }

    /// Whether every role on `rix`'s path stays at or above its guarantee (in the kinds it
    /// names) without `charge` and what `taken` already takes from it.
    fn stays_guaranteed(
        &self,
        rix: RoleIx,
        charge: &Resources,
        taken: &BTreeMap<RoleIx, Resources>,
    ) -> bool {
        let mut at = Some(rix);
        while let Some(i) = at {
            let node = &self.roles[i];
            let g = &node.quota.guarantee;
            if !g.is_empty() {
                let after = node
                    .allocated
                    .saturating_sub(taken.get(&i).unwrap_or(&Resources::default()))
                    .saturating_sub(charge);
                // Below the guarantee in some kind it names: this task is protected.
                if cap_named(g, &after, g) != *g {
                    return false;
                }
            }
            at = node.parent;
        }
        true
    }

    // ---- views ----

    pub fn offer(&self, id: OfferId) -> Option<&Offer> {
        self.offers.get(&id)
    }

    /// Tasks the allocator holds resources for.
    pub fn task_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks.keys().copied()
    }

    pub fn offers(&self) -> impl Iterator<Item = &Offer> {
        self.offers.values()
    }

    pub fn agent_summary(&self, id: &AgentId) -> Option<AgentSummary> {
        let a = self.agents.get(id)?;
        Some(AgentSummary {
            total: a.total.clone(),
            reserved: a.reserved_total(),
            allocated: a.taken.non_revocable(),
            offered: a.offered.non_revocable(),
            revocable_free: a.free_revocable(),
            revocable_used: a.taken.revocable.clone(),
        })
    }

    pub fn role_summaries(&self) -> Vec<RoleSummary> {
        self.roles
            .iter()
            .map(|n| RoleSummary {
                role: n.name.clone(),
                weight: n.weight,
                quota: n.quota.clone(),
                allocated: n.allocated.clone(),
                offered: n.offered.clone(),
                reserved: self
                    .agents
                    .values()
                    .flat_map(|a| a.reserved.iter())
                    .filter(|(r, _)| r.is_within(&n.name))
                    .fold(Resources::default(), |acc, (_, r)| acc.saturating_add(r)),
                share: dominant_share(&n.held(), &self.total),
                frameworks: n.frameworks,
            })
            .collect()
    }

    /// The dominant share of a framework (allocated plus offered), for tests and the simulator.
    pub fn framework_dominant_share(&self, id: FrameworkId) -> Option<f64> {
        self.frameworks.get(&id).map(|f| self.framework_share(f))
    }

    pub fn cluster_total(&self) -> &Resources {
        &self.total
    }

    /// Checks the accounting invariants (tests and the simulator call it after every step):
    /// no agent pool is over-committed, and every role's and framework's totals are the sums
    /// of what its offers and tasks hold.
    pub fn check_invariants(&self) -> Result<(), String> {
        for a in self.agents.values() {
            let id = &a.id;
            let reserved = a.reserved_total();
            if !reserved.fits_in(&a.total) {
                return Err(format!("{id}: reservations {reserved} exceed {}", a.total));
            }
            // Tasks may hold more than an agent has only after an operator shrank it; even
            // then nothing more is offered of a kind it is out of.
            let capacity = a.total.saturating_sub(&reserved);
            let unreserved = a.taken.unreserved.saturating_add(&a.offered.unreserved);
            let shrunk_ok = a.resized
                && a.offered
                    .unreserved
                    .fits_in(&capacity.saturating_sub(&a.taken.unreserved));
            if !(unreserved.fits_in(&capacity) || shrunk_ok) {
                return Err(format!(
                    "{id}: unreserved pool over-committed: {unreserved}"
                ));
            }
            let (taken, offered) = (a.taken.non_revocable(), a.offered.non_revocable());
            let in_use = taken.saturating_add(&offered);
            let shrunk_ok = a.resized && offered.fits_in(&a.total.saturating_sub(&taken));
            if !(in_use.fits_in(&a.total) || shrunk_ok) {
                return Err(format!("{id}: over-committed: {in_use} of {}", a.total));
            }
            for (role, r) in &a.reserved {
                let held = a
                    .taken
                    .reserved_for(role.as_str())
                    .saturating_add(&a.offered.reserved_for(role.as_str()));
                if !held.fits_in(r) {
                    return Err(format!("{id}: reservation for {role} over-committed"));
                }
            }
        }
        // The DRF ordering kept up incrementally is the one a full re-sort would build.
        if !self.stale_order {
            let mut fresh = self.clone();
            fresh.resort_all();
            if fresh.top != self.top {
                return Err(format!(
                    "top-level order drifted: {:?} vs {:?}",
                    self.top, fresh.top
                ));
            }
            for (a, b) in self.roles.iter().zip(&fresh.roles) {
                if a.children != b.children || a.key != b.key {
                    return Err(format!(
                        "order under {} drifted: {:?} vs {:?}",
                        a.name, a.children, b.children
                    ));
                }
            }
        }
        let mut per_fw: BTreeMap<FrameworkId, (Resources, Resources)> = BTreeMap::new();
        for o in self.offers.values() {
            let e = per_fw.entry(o.framework).or_default();
            e.1 = e.1.saturating_add(&o.resources.non_revocable());
        }
        for t in self.tasks.values() {
            let e = per_fw.entry(t.framework).or_default();
            e.0 = e.0.saturating_add(&t.charge.non_revocable());
        }
        for (id, f) in &self.frameworks {
            let (alloc, offered) = per_fw.remove(id).unwrap_or_default();
            if alloc != f.allocated || offered != f.offered {
                return Err(format!("{id}: accounting drifted"));
            }
        }
        Ok(())
    }
}

/// Takes `want` for one task out of the offered pools: best-effort tasks from the revocable
/// pool only; others from reservations (the role's own first, then its ancestors') and then
/// the unreserved pool. On failure returns what was available to it.
fn take(pools: &mut Pools, role: &Role, want: &Resources, qos: Qos) -> Result<Pools, Resources> {
    if qos.is_revocable() {
        if !want.fits_in(&pools.revocable) {
            return Err(pools.revocable.clone());
        }
        pools.revocable = pools.revocable.saturating_sub(want);
        return Ok(Pools {
            revocable: want.clone(),
            ..Pools::default()
        });
    }
    let mut available = pools.unreserved.clone();
    for r in role.self_and_ancestors() {
        available = available.saturating_add(&pools.reserved_for(r));
    }
    if !want.fits_in(&available) {
        return Err(available);
    }
    let mut charge = Pools::default();
    let mut need = want.clone();
    for r in role.self_and_ancestors() {
        let part = need.min(&pools.reserved_for(r));
        if !part.is_empty()
            && let Ok(r) = Role::new(r)
        {
            need = need.saturating_sub(&part);
            charge.reserved.insert(r, part);
        }
    }
    charge.unreserved = need;
    pools.sub(&Pools {
        reserved: charge.reserved.clone(),
        ..Pools::default()
    });
    pools.unreserved = pools.unreserved.saturating_sub(&charge.unreserved);
    Ok(charge)
}
