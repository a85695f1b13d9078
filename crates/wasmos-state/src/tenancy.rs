//! What keeps tenants apart in the replicated state: who may read a blob, the ceilings every
//! role's submissions are held to, and how much a role may reserve. Checked inside `apply`, so
//! every path that creates a task (the CLI, frameworks over QUIC and HTTPS, the in-leader job
//! host) meets the same rules, whatever the master in front of it checked.

use std::collections::{BTreeMap, BTreeSet};

use wasmos_alloc::Role;
use wasmos_proto::{
    BundleHash, Ceilings, DEFAULT_CEILINGS, EffectiveCeilings, FrameworkId, Resources, TaskId,
    TaskSpec,
};

use crate::{ClusterState, Command, Rejection};

/// The tenant an owner URI (`wasmos://tenant/<tenant>/<user>`) belongs to. Owners that are not
/// tenants (operators, the master's own frameworks) are not confined: `None`.
pub fn tenant_of(owner: &str) -> Option<&str> {
    let rest = owner.strip_prefix("wasmos://tenant/")?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Bytes of a spec's arguments and environment.
pub fn spec_bytes(spec: &TaskSpec) -> u64 {
    let args: usize = spec.args.iter().map(String::len).sum();
    let env: usize = spec.env.iter().map(|(k, v)| k.len() + v.len()).sum();
    let secrets: usize = spec
        .secret_env
        .iter()
        .map(|s| s.name.len() + s.value.len())
        .sum();
    (args + env + secrets) as u64
}

impl ClusterState {
    /// Whether `owner` may read blob `hash`: it is recorded, and the owner is not a tenant or
    /// its tenant uploaded the bytes or produced them.
    pub fn may_read(&self, owner: &str, hash: &BundleHash) -> bool {
        let Some(meta) = self.bundles.get(hash) else {
            return false;
        };
        match tenant_of(owner) {
            None => true,
            Some(t) => meta.readers.contains(t),
        }
    }

    /// Every blob a spec names must be one its owner may read. A blob the owner may not read
    /// gets the same answer as one that does not exist, so no answer tells a tenant what
    /// others hold.
    pub(crate) fn check_blobs(&self, spec: &TaskSpec, owner: &str) -> Result<(), Rejection> {
        if !self.may_read(owner, &spec.bundle) {
            return Err(Rejection::NotFound(format!(
                "bundle {} has not been uploaded",
                spec.bundle
            )));
        }
        let fetched_from_masters = std::iter::once(("bundle", &spec.bundle))
            .chain(spec.stdin.iter().map(|h| ("stdin blob", h)))
            .chain(spec.mounts.iter().map(|m| ("mount archive", &m.archive)));
        let named = fetched_from_masters
            .clone()
            .skip(1)
            .chain(spec.inputs.iter().map(|i| ("input blob", &i.blob)));
        for (what, hash) in named {
            if !self.may_read(owner, hash) {
                return Err(Rejection::NotFound(format!(
                    "{what} {hash} has not been uploaded"
                )));
            }
        }
        // Agents fetch only inputs from other agents: a kept output as a bundle, stdin or
        // mount would be looked for on the masters, which do not have it.
        for (what, hash) in fetched_from_masters {
            if let Some(agent) = self.bundles.get(hash).and_then(|m| m.kept_on.first()) {
                return Err(Rejection::Invalid(format!(
                    "{what} {hash} is an output kept on agent {agent}, not stored on the masters; only a task's inputs can name it"
                )));
            }
        }
        Ok(())
    }

    /// The ceilings that hold for `role`: its top-level role's (with the defaults), then any a
    /// sub-role on the way down sets for itself. Each role on the path is checked with the
    /// ceilings it set (or inherited), counting its own subtree.
    pub fn ceilings_for(&self, role: &Role) -> Vec<(Role, EffectiveCeilings)> {
        let mut path: Vec<&str> = role.self_and_ancestors().collect();
        path.reverse();
        let mut out = Vec::new();
        let mut inherited = Ceilings::default();
        for (depth, r) in path.into_iter().enumerate() {
            let own = self.roles.get(r).map(|rec| &rec.ceilings);
            if depth == 0 || own.is_some_and(|c| *c != Ceilings::default()) {
                inherited = inherited.merged(own.unwrap_or(&Ceilings::default()));
                if let Ok(r) = Role::new(r) {
                    out.push((r, inherited.or_defaults()));
                }
            }
        }
        out
    }

    /// Checks one new task against the ceilings of its role and the roles above it, with
    /// `extra` tasks of the same command created before it.
    pub(crate) fn check_ceilings(
        &self,
        spec: &TaskSpec,
        role: &Role,
        extra: u64,
    ) -> Result<(), Rejection> {
        self.check_spec_ceilings(spec, role)?;
        for (scope, c) in self.ceilings_for(role) {
            let (live, roles) = self.live_in(&scope);
            let live = live + extra;
            if live >= c.tasks {
                return Err(Rejection::OverLimit(format!(
                    "role {scope} has {live} tasks not yet ended, its ceiling; wait for some to end"
                )));
            }
            if !roles.contains(role) && roles.len() as u64 >= c.sub_roles {
                return Err(Rejection::OverLimit(format!(
                    "role {scope} already uses {} roles, its ceiling; use one of them",
                    roles.len()
                )));
            }
        }
        Ok(())
    }

    /// What one spec may ask for under the ceilings of `role` and the roles above it (no
    /// counts: a job's specs are checked at submission, its tasks when launched).
    pub fn check_spec_ceilings(&self, spec: &TaskSpec, role: &Role) -> Result<(), Rejection> {
        for (scope, c) in self.ceilings_for(role) {
            if spec.timeout_ms > c.timeout_ms {
                return Err(Rejection::OverLimit(format!(
                    "timeout {} is over role {scope}'s ceiling of {}",
                    wasmos_proto::format_duration_ms(spec.timeout_ms),
                    wasmos_proto::format_duration_ms(c.timeout_ms)
                )));
            }
            if spec.max_output_bytes > c.output_bytes {
                return Err(Rejection::OverLimit(format!(
                    "output cap {} per stream is over role {scope}'s ceiling of {}",
                    wasmos_proto::format_bytes(spec.max_output_bytes),
                    wasmos_proto::format_bytes(c.output_bytes)
                )));
            }
            let bytes = spec_bytes(spec);
            if bytes > c.spec_bytes {
                return Err(Rejection::OverLimit(format!(
                    "arguments and environment take {} bytes, over role {scope}'s ceiling of {}",
                    bytes, c.spec_bytes
                )));
            }
        }
        Ok(())
    }

    /// Whether a framework named `name` registering for `owner` is the framework of one of
    /// its jobs not yet attached (the master names them `job-N (job name)`).
    /// Only the first such registration counts as the job's: a second one of the same name
    /// (a framework posing as the job to slip past the ceiling) is counted like any other.
    pub(crate) fn is_unattached_job(&self, name: &str, owner: &str) -> bool {
        let job = name
            .split_once(" (")
            .and_then(|(id, _)| id.parse::<wasmos_proto::JobId>().ok())
            .and_then(|id| self.jobs.get(&id));
        job.is_some_and(|j| j.owner == owner && j.framework.is_none() && !j.state.is_terminal())
            && !self
                .frameworks
                .values()
                .any(|f| f.removed_ms.is_none() && f.owner == owner && f.name == name)
    }

    /// A new framework (or job) of `role` against the frameworks ceilings above it.
    pub(crate) fn check_framework_ceiling(&self, role: &Role) -> Result<(), Rejection> {
        for (scope, c) in self.ceilings_for(role) {
            let frameworks = self
                .frameworks
                .values()
                .filter(|f| f.removed_ms.is_none() && f.acknowledges && f.role.is_within(&scope))
                .count() as u64;
            let jobs = self
                .jobs
                .values()
                .filter(|j| !j.state.is_terminal() && j.framework.is_none())
                .filter(|j| j.role.is_within(&scope))
                .count() as u64;
            if frameworks + jobs >= c.frameworks {
                return Err(Rejection::OverLimit(format!(
                    "role {scope} has {} frameworks and jobs, its ceiling; end one first",
                    frameworks + jobs
                )));
            }
        }
        Ok(())
    }

    /// Tasks not yet ended within `scope`, and the roles in use there (by those tasks and by
    /// live frameworks and jobs).
    fn live_in(&self, scope: &Role) -> (u64, BTreeSet<Role>) {
        let mut live = 0;
        let mut roles = BTreeSet::new();
        for (r, n) in self.live_by_role() {
            if let Ok(r) = Role::new(r)
                && r.is_within(scope)
            {
                live += n;
                roles.insert(r);
            }
        }
        // The built-in `wasmos run` frameworks (which do not acknowledge) stay registered
        // for good; a role counts through them only while it has live tasks.
        for f in self.frameworks.values() {
            if f.removed_ms.is_none() && f.acknowledges && f.role.is_within(scope) {
                roles.insert(f.role.clone());
            }
        }
        (live, roles)
    }

    /// What counts against `tenant`'s storage quota in the replicated state: bytes of the
    /// blobs it may read, and of its kept tasks' arguments and environment (which every
    /// master holds, and every snapshot carries, until retention forgets the task).
    pub fn stored_by(&self, tenant: &str) -> u64 {
        let blobs: u64 = self
            .bundles
            .values()
            .filter(|b| !b.is_kept() && b.readers.contains(tenant))
            .map(|b| b.size)
            .sum();
        // A task's spec, and what it published (its results, its progress message).
        let specs: u64 = self
            .tasks
            .values()
            .filter(|t| tenant_of(&t.owner) == Some(tenant))
            .map(|t| {
                spec_bytes(&t.spec)
                    + results_bytes(&t.status.results) as u64
                    + t.progress.as_ref().map_or(0, |p| p.message.len() as u64)
            })
            .sum();
        blobs.saturating_add(specs)
    }

    /// The storage quota of `tenant` (its top-level role's ceiling).
    pub fn storage_quota(&self, tenant: &str) -> u64 {
        self.roles
            .get(tenant)
            .map_or(DEFAULT_CEILINGS.stored_bytes, |r| {
                r.ceilings.or_defaults().stored_bytes
            })
    }

    /// Dynamic reservations held by `role` and its sub-roles, over all agents.
    pub fn dynamically_reserved(&self, role: &Role) -> Resources {
        self.reservations
            .values()
            .flat_map(|by_role| by_role.iter())
            .filter(|(r, _)| r.is_within(role))
            .fold(Resources::default(), |acc, (_, r)| acc.saturating_add(r))
    }

    /// How much `role` may hold in dynamic reservations: each role on its path has an
    /// allowance (set by operators; its quota guarantee otherwise), and its whole subtree must
    /// stay within it, `earlier` reserves of the same command included.
    pub(crate) fn check_reservation(
        &self,
        role: &Role,
        adding: &Resources,
        earlier: &[(Role, Resources)],
    ) -> Result<(), Rejection> {
        for scope in role.self_and_ancestors() {
            let Ok(scope) = Role::new(scope) else {
                continue;
            };
            let record = self.roles.get(&scope).cloned().unwrap_or_default();
            let allowance = record
                .reservation_allowance
                .clone()
                .unwrap_or(record.guarantee.clone());
            let top = scope.parent().is_none();
            // A sub-role without a record of its own is bounded by its ancestors.
            if !top && !self.roles.contains_key(&scope) {
                continue;
            }
            // Earlier reserves of the same command count too: ten reserves of one core in one
            // accept are ten cores.
            let after = earlier
                .iter()
                .filter(|(r, _)| r.is_within(&scope))
                .fold(self.dynamically_reserved(&scope), |acc, (_, r)| {
                    acc.saturating_add(r)
                })
                .saturating_add(adding);
            if !after.fits_in(&allowance) {
                return Err(Rejection::OverLimit(format!(
                    "role {scope} may hold at most {allowance} in dynamic reservations (its guarantee, or the allowance operators set); {after} would be over it"
                )));
            }
        }
        Ok(())
    }

    /// The blob records a tenant holds that only it may read, for listings.
    pub fn blobs_of(&self, tenant: &str) -> BTreeMap<BundleHash, u64> {
        self.bundles
            .iter()
            .filter(|(_, b)| b.readers.contains(tenant))
            .map(|(h, b)| (h.clone(), b.size))
            .collect()
    }
}

impl ClusterState {
    /// The write lane of a command: the top-level role whose work it is (a tenant's name for
    /// tenants), or `""` for the cluster's own bookkeeping. The raft batcher takes turns
    /// between lanes, so one role's flood of writes (submissions, launches, status updates)
    /// does not queue in front of another's.
    pub fn lane_of(&self, cmd: &Command) -> String {
        let top = |role: &str| role.split('/').next().unwrap_or_default().to_string();
        let of_task = |task: &TaskId| {
            self.tasks
                .get(task)
                .and_then(|t| t.spec.role.as_deref())
                .map(top)
                .unwrap_or_default()
        };
        let of_framework = |fw: &FrameworkId| {
            self.frameworks
                .get(fw)
                .map(|f| top(f.role.as_str()))
                .unwrap_or_default()
        };
        match cmd {
            Command::SubmitTask { spec, owner, .. } => spec
                .role
                .as_deref()
                .map(top)
                .or_else(|| tenant_of(owner).map(str::to_string))
                .unwrap_or_default(),
            Command::AgentStatus { update, .. } => of_task(&update.task),
            Command::SetStatus { task, .. } | Command::AssignTask { task, .. } => of_task(task),
            Command::Launch { framework, .. }
            | Command::Acknowledge { framework, .. }
            | Command::SetFailoverTimeout { framework, .. }
            | Command::RemoveFramework { framework, .. } => of_framework(framework),
            Command::RegisterFramework { role, .. } | Command::SubmitJob { role, .. } => {
                top(role.as_str())
            }
            Command::Job { job, .. } => self
                .jobs
                .get(job)
                .map(|j| top(j.role.as_str()))
                .unwrap_or_default(),
            Command::AddBundle { reader, .. } => reader.clone().unwrap_or_default(),
            // An audited call shares its write's lane; a call recorded alone, its caller's.
            Command::Audited { cmd: Some(cmd), .. } => self.lane_of(cmd),
            Command::Audited { entry, cmd: None } => {
                tenant_of(&entry.identity).unwrap_or_default().to_string()
            }
            _ => String::new(),
        }
    }
}

/// Roughly what a command takes encoded in a raft entry: the variable parts (specs, status
/// messages, output file names) plus a fixed allowance for the rest. The batcher closes an
/// entry before the sum passes its budget, so no entry, and no AppendEntries of a few, can
/// grow past the frame limit however large the commands a tenant can make.
pub fn approx_bytes(cmd: &Command) -> usize {
    const FIXED: usize = 256;
    let status = status_bytes;
    let spec = |s: &TaskSpec| {
        FIXED * 2
            + spec_bytes(s) as usize
            + s.name.len()
            + (s.mounts.len() + s.inputs.len()) * 128
            + s.net_allow.len() * 64
    };
    match cmd {
        Command::SubmitTask {
            spec: s,
            owner,
            key,
            ..
        } => spec(s) + owner.len() + key.as_ref().map_or(0, String::len),
        Command::AgentStatus { update, .. } => status(&update.status),
        Command::Progress { updates, .. } => {
            FIXED
                + updates
                    .iter()
                    .map(|(_, p)| 24 + p.message.len())
                    .sum::<usize>()
        }
        Command::SetStatus { status: s, .. } => status(s),
        Command::Launch {
            tasks,
            reservations,
            ..
        } => {
            FIXED
                + reservations.len() * FIXED
                + tasks
                    .iter()
                    .map(|t| FIXED + t.spec.as_ref().map_or(0, spec))
                    .sum::<usize>()
        }
        Command::SubmitJob { spec: j, owner, .. } => {
            FIXED
                + owner.len()
                + j.groups
                    .iter()
                    .map(|g| spec(&g.task) + g.inputs.iter().flatten().count() * 128)
                    .sum::<usize>()
        }
        Command::Job { event, .. } => FIXED + format!("{event:?}").len(),
        Command::RegisterAgent {
            running,
            attributes,
            ..
        } => FIXED * 4 + running.len() * 16 + attributes.len() * 64,
        Command::Batch(cmds) => cmds.iter().map(approx_bytes).sum(),
        Command::Audited { entry, cmd } => {
            FIXED
                + [
                    &entry.identity,
                    &entry.peer,
                    &entry.channel,
                    &entry.action,
                    &entry.object,
                    &entry.result,
                ]
                .iter()
                .map(|f| f.len())
                .sum::<usize>()
                + cmd.as_deref().map_or(0, approx_bytes)
        }
        _ => FIXED,
    }
}

/// Roughly what a task status takes encoded (see [`approx_bytes`]).
pub fn status_bytes(s: &wasmos_proto::TaskStatus) -> usize {
    256 + s.message.as_ref().map_or(0, String::len)
        + s.outputs.iter().map(|o| o.path.len() + 80).sum::<usize>()
        + results_bytes(&s.results)
        + s.files.iter().map(|f| f.name.len() + 80).sum::<usize>()
        + s.progress.as_ref().map_or(0, |p| 16 + p.message.len())
}

/// What a task's published results take (names, values and framing).
pub fn results_bytes(results: &[wasmos_proto::TaskResult]) -> usize {
    results
        .iter()
        .map(|r| 16 + r.name.len() + r.value.len())
        .sum()
}
