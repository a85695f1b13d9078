//! Who may see and change what, and the secrets of task specs: sealed before they are
//! recorded, opened only for the agent that runs the task, hidden from every answer.
//!
//! The policy inside a tenant: every user of a tenant sees the tenant's tasks, jobs and roles
//! (never secret values); only the user who created a task, job or framework may change it
//! (kill, scale, stop, tear down). Operators see and change everything.
//!
//! Also what every front end checks of a request before it acts: a task spec's own limits and
//! the role a submission runs under. Nothing here does I/O: the checks are the same whichever
//! path (client, job host, framework API) a request came by.

use wasmos_alloc::Role;
use wasmos_net::Identity;
use wasmos_net::seal::SecretsKey;
use wasmos_proto::{
    EgressRule, InputSource, MasterToAgent, SecretValue, TaskId, TaskInfo, TaskSpec,
};
use wasmos_state::ClusterState;

/// The role of operators' submissions that name none.
const DEFAULT_ROLE: &str = "default";

/// Whether `who` may see an object created by `owner` (an identity URI).
pub(crate) fn may_see(who: &Identity, owner: &str) -> bool {
    match who {
        Identity::Operator(_) | Identity::Master(_) => true,
        Identity::Tenant { tenant, .. } => {
            wasmos_state::tenant_of(owner).is_some_and(|t| t == tenant)
        }
        Identity::Agent(_) => false,
    }
}

/// Whether `who` may change (kill, scale, stop) an object created by `owner`.
pub(crate) fn may_change(who: &Identity, owner: &str) -> bool {
    match who {
        Identity::Operator(_) | Identity::Master(_) => true,
        Identity::Tenant { .. } => who.to_uri() == owner,
        Identity::Agent(_) => false,
    }
}

/// The tenant whose quota and blob rights a caller's uploads count toward (none for operators).
pub(crate) fn tenant(who: &Identity) -> Option<String> {
    match who {
        Identity::Tenant { tenant, .. } => Some(tenant.clone()),
        _ => None,
    }
}

/// Seals every secret of a spec that came from a client or framework. A value already sealed
/// (a job's task, from its recorded spec) must open with this cluster's key under its name;
/// no answer ever carries sealed bytes, so only the masters' own values can.
pub(crate) fn seal(key: &SecretsKey, spec: &mut TaskSpec) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for s in &mut spec.secret_env {
        if !valid_env_name(&s.name) {
            return Err(format!("`{}` is not an environment variable name", s.name));
        }
        if !names.insert(s.name.clone()) || spec.env.iter().any(|(k, _)| k == &s.name) {
            return Err(format!("{} is given twice", s.name));
        }
        match &s.value {
            SecretValue::Plain(plain) => {
                let sealed = key
                    .seal(&s.name, plain.as_bytes())
                    .map_err(|e| format!("cannot seal secret {}: {e}", s.name))?;
                s.value = SecretValue::Sealed(sealed);
            }
            SecretValue::Sealed(sealed) => {
                key.open(&s.name, sealed)
                    .map_err(|_| format!("secret {} must be sent as its value", s.name))?;
            }
            SecretValue::Hidden => {
                return Err(format!("secret {} must be sent as its value", s.name));
            }
        }
    }
    Ok(())
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.contains(['=', '\0'])
}

/// The `Launch` an agent gets: secrets opened, the role's egress rules attached.
pub(crate) fn launch_message(
    key: &SecretsKey,
    state: &ClusterState,
    task: TaskId,
    mut spec: TaskSpec,
) -> Result<MasterToAgent, String> {
    for s in &mut spec.secret_env {
        if let SecretValue::Sealed(sealed) = &s.value {
            let plain = key.open(&s.name, sealed).map_err(|e| e.to_string())?;
            let plain =
                String::from_utf8(plain).map_err(|_| format!("secret {} is not UTF-8", s.name))?;
            s.value = SecretValue::Plain(plain);
        }
    }
    let egress = egress_for(state, spec.role.as_deref());
    let on = state.tasks.get(&task).and_then(|t| t.agent.as_ref());
    let sources = sources_for(state, &spec, on);
    let trust = state.bundle_trust(&spec);
    Ok(MasterToAgent::Launch {
        task,
        spec,
        egress,
        sources,
        trust,
    })
}

/// Where the inputs kept on agents are, from the state's record (not the job's: the same
/// bytes may be kept on several agents), each blob's holders in the order to try them: the
/// agent the task runs on (`on`) first, which reads its own store.
pub(crate) fn sources_for(
    state: &ClusterState,
    spec: &TaskSpec,
    on: Option<&wasmos_proto::AgentId>,
) -> Vec<InputSource> {
    let mut sources: Vec<InputSource> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in &spec.inputs {
        let Some(meta) = state.bundles.get(&i.blob).filter(|m| m.is_kept()) else {
            continue;
        };
        if !seen.insert(&i.blob) {
            continue;
        }
        let mut holders: Vec<&wasmos_proto::AgentId> = meta.kept_on.iter().collect();
        holders.sort_by_key(|a| Some(*a) != on);
        for agent in holders {
            sources.push(InputSource {
                blob: i.blob.clone(),
                agent: agent.clone(),
                addr: state.agents.get(agent).and_then(|a| a.peer_addr.clone()),
            });
        }
    }
    sources
}

/// The egress rules of `role` and the roles above it, the most specific role's first.
pub(crate) fn egress_for(state: &ClusterState, role: Option<&str>) -> Vec<EgressRule> {
    let Some(role) = role.and_then(|r| wasmos_alloc::Role::new(r).ok()) else {
        return Vec::new();
    };
    role.self_and_ancestors()
        .filter_map(|r| state.roles.get(r))
        .flat_map(|rec| rec.egress.iter().cloned())
        .collect()
}

/// Whether `who` may see this task.
pub(crate) fn task_visible(who: &Identity, task: &TaskInfo) -> bool {
    may_see(who, &task.owner)
}

/// A task record as a client may see it: secret values hidden.
pub(crate) fn shown(mut task: TaskInfo) -> TaskInfo {
    if !task.spec.secret_env.is_empty() {
        task.spec = task.spec.redacted();
    }
    task
}

/// Whether `who` may see role `role`'s settings and holdings: operators all, tenants theirs.
pub(crate) fn role_visible(who: &Identity, role: &Role) -> bool {
    match who {
        Identity::Tenant { tenant, .. } => {
            Role::new(tenant).is_ok_and(|home| role.is_within(&home))
        }
        _ => true,
    }
}

/// What the master checks of any task spec before it records it.
pub(crate) fn validate_spec(spec: &TaskSpec) -> Result<(), String> {
    if spec.timeout_ms == 0 {
        return Err("timeout must be greater than zero".into());
    }
    if spec.resources.cpu_millis == 0 || spec.resources.mem_bytes == 0 {
        return Err("cpu and mem must be greater than zero".into());
    }
    spec.check()
}

/// The role a submission runs under: the one it names, else the submitter's own (a tenant's
/// name; `default` for operators). Tenants may only use their role and roles below it.
pub(crate) fn resolve_role(who: &Identity, asked: Option<&str>) -> Result<Role, String> {
    let home = match who {
        Identity::Tenant { tenant, .. } => Some(
            Role::new(tenant)
                .map_err(|e| format!("tenant `{tenant}` cannot be used as a role: {e}"))?,
        ),
        _ => None,
    };
    let role = match (asked, &home) {
        (Some(r), _) => Role::new(r).map_err(|e| e.to_string())?,
        (None, Some(home)) => home.clone(),
        (None, None) => Role::new(DEFAULT_ROLE).map_err(|e| e.to_string())?,
    };
    if let Some(home) = home
        && !role.is_within(&home)
    {
        return Err(format!(
            "role `{role}` is not yours: tenant `{home}` may use role `{home}` and roles under it, such as `{home}/batch`"
        ));
    }
    Ok(role)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn same_tenant_users_see_but_only_owners_change() {
        let alice = Identity::Tenant {
            tenant: "acme".into(),
            user: "alice".into(),
        };
        let carol = Identity::Tenant {
            tenant: "acme".into(),
            user: "carol".into(),
        };
        let bob = Identity::Tenant {
            tenant: "evil".into(),
            user: "bob".into(),
        };
        let op = Identity::Operator("root".into());
        let owner = alice.to_uri();
        assert!(may_see(&alice, &owner) && may_change(&alice, &owner));
        assert!(may_see(&carol, &owner) && !may_change(&carol, &owner));
        assert!(!may_see(&bob, &owner) && !may_change(&bob, &owner));
        assert!(may_see(&op, &owner) && may_change(&op, &owner));
        // A tenant named like a prefix of another is not that tenant.
        let acme2 = Identity::Tenant {
            tenant: "acme2".into(),
            user: "x".into(),
        };
        assert!(!may_see(&acme2, &owner));
    }

    #[test]
    fn secrets_are_sealed_from_clients_and_opened_for_agents() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretsKey::load_or_create(&dir.path().join("k")).unwrap();
        let hash = wasmos_proto::BundleHash::parse(&"ab".repeat(32)).unwrap();
        let mut spec = TaskSpec::new("t", hash);
        spec.secret_env.push(wasmos_proto::SecretEnv {
            name: "DB_PASSWORD".into(),
            value: SecretValue::Plain("hunter2".into()),
        });
        seal(&key, &mut spec).unwrap();
        assert!(matches!(spec.secret_env[0].value, SecretValue::Sealed(_)));
        assert!(!format!("{spec:?}").contains("hunter2"));
        seal(&key, &mut spec.clone()).unwrap();
        let mut forged = spec.clone();
        forged.secret_env[0].value = SecretValue::Sealed(vec![0; 40]);
        assert!(
            seal(&key, &mut forged).is_err(),
            "foreign sealed bytes refused"
        );
        let mut hidden = spec.redacted();
        assert!(seal(&key, &mut hidden).is_err());
        let redacted = spec.redacted();
        assert_eq!(redacted.secret_env[0].value, SecretValue::Hidden);
        let msg = launch_message(&key, &ClusterState::default(), TaskId(1), spec).unwrap();
        let MasterToAgent::Launch { spec, .. } = msg else {
            panic!()
        };
        assert_eq!(
            spec.secret_env[0].value,
            SecretValue::Plain("hunter2".into())
        );
    }
}
