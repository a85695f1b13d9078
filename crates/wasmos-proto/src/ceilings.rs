//! Per-role ceilings: the limits operators put on what a role's tasks may ask for, with
//! defaults that hold where they set none.

use serde::{Deserialize, Serialize};

/// Limits a role's submissions are held to; `None` takes the default (top-level roles) or
/// adds no limit of its own (sub-roles, which are also held to their ancestors').
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Longest timeout a task may ask for.
    pub timeout_ms: Option<u64>,
    /// Largest output cap per stream a task may ask for.
    pub output_bytes: Option<u64>,
    /// Most bytes of arguments plus environment (names and values) in one task.
    pub spec_bytes: Option<u64>,
    /// Most tasks not yet ended (pending and running) at once, sub-roles included.
    pub tasks: Option<u64>,
    /// Most distinct roles in use beneath this one (by live tasks and frameworks).
    pub sub_roles: Option<u64>,
    /// Most frameworks (scheduler API frameworks and running jobs) at once.
    pub frameworks: Option<u64>,
    /// Most bytes the tenant may store: blobs (what it uploaded and what its tasks produced)
    /// and its tasks' logs.
    pub stored_bytes: Option<u64>,
}

/// The ceilings of a top-level role that sets none.
pub const DEFAULT_CEILINGS: EffectiveCeilings = EffectiveCeilings {
    timeout_ms: 24 * 3600 * 1000,
    output_bytes: 64 << 20,
    spec_bytes: 256 << 10,
    tasks: 10_000,
    sub_roles: 64,
    frameworks: 256,
    stored_bytes: 10 << 30,
};

/// Every ceiling with a value: a top-level role's record merged over the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveCeilings {
    pub timeout_ms: u64,
    pub output_bytes: u64,
    pub spec_bytes: u64,
    pub tasks: u64,
    pub sub_roles: u64,
    pub frameworks: u64,
    pub stored_bytes: u64,
}

impl Ceilings {
    /// These ceilings with the defaults filled in where unset.
    pub fn or_defaults(&self) -> EffectiveCeilings {
        let d = DEFAULT_CEILINGS;
        EffectiveCeilings {
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms),
            output_bytes: self.output_bytes.unwrap_or(d.output_bytes),
            spec_bytes: self.spec_bytes.unwrap_or(d.spec_bytes),
            tasks: self.tasks.unwrap_or(d.tasks),
            sub_roles: self.sub_roles.unwrap_or(d.sub_roles),
            frameworks: self.frameworks.unwrap_or(d.frameworks),
            stored_bytes: self.stored_bytes.unwrap_or(d.stored_bytes),
        }
    }

    /// `other`'s values where it has them, these elsewhere.
    pub fn merged(&self, other: &Ceilings) -> Ceilings {
        Ceilings {
            timeout_ms: other.timeout_ms.or(self.timeout_ms),
            output_bytes: other.output_bytes.or(self.output_bytes),
            spec_bytes: other.spec_bytes.or(self.spec_bytes),
            tasks: other.tasks.or(self.tasks),
            sub_roles: other.sub_roles.or(self.sub_roles),
            frameworks: other.frameworks.or(self.frameworks),
            stored_bytes: other.stored_bytes.or(self.stored_bytes),
        }
    }
}

impl EffectiveCeilings {
    /// The tighter of each ceiling.
    pub fn min(&self, other: &EffectiveCeilings) -> EffectiveCeilings {
        EffectiveCeilings {
            timeout_ms: self.timeout_ms.min(other.timeout_ms),
            output_bytes: self.output_bytes.min(other.output_bytes),
            spec_bytes: self.spec_bytes.min(other.spec_bytes),
            tasks: self.tasks.min(other.tasks),
            sub_roles: self.sub_roles.min(other.sub_roles),
            frameworks: self.frameworks.min(other.frameworks),
            stored_bytes: self.stored_bytes.min(other.stored_bytes),
        }
    }
}

impl Default for EffectiveCeilings {
    fn default() -> Self {
        DEFAULT_CEILINGS
    }
}
