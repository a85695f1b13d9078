//! The audit log: who called what, from where, and what came of it, kept in the replicated
//! state so every master has it and a failover loses none of it. A call's entry is applied in
//! the same raft entry as the write the call made, so the log cannot miss a change or record
//! one that did not happen.

pub use wasmos_proto::AuditEntry;

use std::collections::{BTreeMap, BTreeSet};

use crate::{ClusterState, Command, CommandResult, Rejection};

/// Most entries the log keeps: past it, the oldest entry of whoever holds the most goes
/// (retention by age usually comes first).
pub const MAX_AUDIT_ENTRIES: usize = 200_000;

/// Whose share of the log an entry counts against: a tenant's users share their tenant's;
/// any other identity (an operator, an agent, a master) has its own.
fn owner(identity: &str) -> &str {
    match identity.strip_prefix("wasmos://tenant/") {
        Some(rest) => {
            let tenant = rest.split('/').next().unwrap_or_default();
            &identity[..identity.len() - rest.len() + tenant.len()]
        }
        None => identity,
    }
}

/// Derived from `audit`, never stored: each owner's entries, and owners by how many they
/// hold, so a full log drops from the largest share: one tenant making many changes pushes
/// out its own entries, not operators' or other tenants'.
#[derive(Debug, Default)]
pub(crate) struct AuditIndex {
    built: bool,
    by_owner: BTreeMap<String, BTreeSet<u64>>,
    sizes: BTreeSet<(usize, String)>,
}

/// A copy of the state (a snapshot's, taken while `apply` waits) leaves the index behind:
/// the copy rebuilds it if it is ever appended to.
impl Clone for AuditIndex {
    fn clone(&self) -> Self {
        AuditIndex::default()
    }
}

impl PartialEq for AuditIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for AuditIndex {}

impl AuditIndex {
    /// The index of `audit`, built whole (after decoding, or for a copy).
    fn build(audit: &BTreeMap<u64, AuditEntry>) -> AuditIndex {
        let mut index = AuditIndex {
            built: true,
            ..AuditIndex::default()
        };
        for e in audit.values() {
            index
                .by_owner
                .entry(owner(&e.identity).to_string())
                .or_default()
                .insert(e.seq);
        }
        index.sizes = index
            .by_owner
            .iter()
            .map(|(o, seqs)| (seqs.len(), o.clone()))
            .collect();
        index
    }

    /// Counts entry `seq` of `identity`.
    fn add(&mut self, identity: &str, seq: u64) {
        let owner = owner(identity);
        let seqs = self.by_owner.entry(owner.to_string()).or_default();
        self.sizes.remove(&(seqs.len(), owner.to_string()));
        seqs.insert(seq);
        self.sizes.insert((seqs.len(), owner.to_string()));
    }

    /// Forgets entry `seq` of `identity` (retention dropped it).
    fn remove(&mut self, identity: &str, seq: u64) {
        let owner = owner(identity);
        let Some(seqs) = self.by_owner.get_mut(owner) else {
            return;
        };
        self.sizes.remove(&(seqs.len(), owner.to_string()));
        seqs.remove(&seq);
        if seqs.is_empty() {
            self.by_owner.remove(owner);
        } else {
            self.sizes.insert((seqs.len(), owner.to_string()));
        }
    }

    /// The oldest entry of the owner holding the most (the last by name among equals), taken
    /// out of the index.
    fn evict(&mut self) -> Option<u64> {
        let (n, owner) = self.sizes.pop_last()?;
        let seqs = self.by_owner.get_mut(&owner)?;
        let seq = seqs.pop_first()?;
        if seqs.is_empty() {
            self.by_owner.remove(&owner);
        } else {
            self.sizes.insert((n - 1, owner));
        }
        Some(seq)
    }
}

/// Longest a text field of an entry may be: a caller's object names are bounded elsewhere,
/// this keeps a hostile one from growing the log.
pub const MAX_AUDIT_FIELD_BYTES: usize = 512;

/// `s` as the log keeps a field: control characters escaped (so no field can fake a line or
/// colour a terminal), cut at [`MAX_AUDIT_FIELD_BYTES`]. Reads no more of `s` than it keeps.
pub fn audit_field(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > MAX_AUDIT_FIELD_BYTES {
            let mut cut = MAX_AUDIT_FIELD_BYTES;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

fn bounded(s: String) -> String {
    if s.len() <= MAX_AUDIT_FIELD_BYTES && !s.chars().any(char::is_control) {
        s
    } else {
        audit_field(&s)
    }
}

/// What a write's result says in the log, and the id it made, if any.
fn outcome(result: &CommandResult) -> (String, Option<String>) {
    match result {
        CommandResult::Rejected(why) => (format!("rejected: {why}"), None),
        CommandResult::Submitted(id) => ("ok".into(), Some(id.to_string())),
        CommandResult::Framework(id) => ("ok".into(), Some(id.to_string())),
        CommandResult::Job(id) => ("ok".into(), Some(id.to_string())),
        CommandResult::Batch(results) => match results.iter().find_map(|r| match r {
            CommandResult::Rejected(why) => Some(why),
            _ => None,
        }) {
            Some(why) => (format!("rejected: {why}"), None),
            None => ("ok".into(), None),
        },
        _ => ("ok".into(), None),
    }
}

impl ClusterState {
    /// `Command::Audited`: applies the call's write, if it made one, then appends its entry.
    pub(crate) fn audited(
        &mut self,
        mut entry: AuditEntry,
        cmd: Option<Box<Command>>,
    ) -> CommandResult {
        let result = match cmd {
            Some(cmd) if matches!(*cmd, Command::Audited { .. }) => {
                return CommandResult::Rejected(Rejection::Invalid(
                    "an audited command may not hold another".into(),
                ));
            }
            Some(cmd) => {
                let result = self.apply(*cmd);
                let (said, made) = outcome(&result);
                entry.result = said;
                if let Some(id) = made
                    && entry.object.is_empty()
                {
                    entry.object = id;
                }
                result
            }
            None => CommandResult::Ok,
        };
        self.append_audit(entry);
        result
    }

    fn append_audit(&mut self, entry: AuditEntry) {
        self.audit_next += 1;
        let entry = AuditEntry {
            seq: self.audit_next,
            identity: bounded(entry.identity),
            peer: bounded(entry.peer),
            channel: bounded(entry.channel),
            action: bounded(entry.action),
            object: bounded(entry.object),
            result: bounded(entry.result),
            at_ms: entry.at_ms,
        };
        if !self.audit_index.built {
            self.audit_index = AuditIndex::build(&self.audit);
        }
        self.audit_index.add(&entry.identity, entry.seq);
        self.audit.insert(entry.seq, entry);
        while self.audit.len() > MAX_AUDIT_ENTRIES {
            match self.audit_index.evict() {
                Some(seq) => {
                    self.audit.remove(&seq);
                }
                None => {
                    // Cannot happen while the index matches the log; if it does not, the
                    // oldest entry goes and the index is rebuilt at the next entry.
                    self.audit.pop_first();
                    self.audit_index.built = false;
                }
            }
        }
    }

    /// `Command::ForgetAudit`: drops entries older than `before_ms`.
    pub(crate) fn forget_audit(&mut self, before_ms: u64) -> CommandResult {
        let before = self.audit.len();
        let index = &mut self.audit_index;
        self.audit.retain(|_, e| {
            let keep = e.at_ms >= before_ms;
            if !keep && index.built {
                index.remove(&e.identity, e.seq);
            }
            keep
        });
        CommandResult::Forgotten((before - self.audit.len()) as u64)
    }
}
