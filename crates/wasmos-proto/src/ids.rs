//! Identifiers: tasks are numbered by the replicated state, agents are named by their
//! certificates, bundles by the sha256 of their bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("`{0}` is not a task id (expected t-<number>, e.g. t-12)")]
    Task(String),
    #[error("`{0}` is not a bundle hash (expected 64 lowercase hex digits of a sha256)")]
    Bundle(String),
    #[error("`{0}` is not a valid agent name (letters, digits, '-', '_', '.'; 1-63 characters)")]
    Agent(String),
    #[error("`{0}` is not a framework id (expected fw-<number>, e.g. fw-3)")]
    Framework(String),
    #[error("`{0}` is not a job id (expected job-<number>, e.g. job-3)")]
    Job(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t-{}", self.0)
    }
}

impl FromStr for TaskId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("t-").unwrap_or(s);
        digits
            .parse::<u64>()
            .map(TaskId)
            .map_err(|_| IdError::Task(s.to_string()))
    }
}

/// A framework, numbered by the master when it first subscribes (`fw-3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrameworkId(pub u64);

impl fmt::Display for FrameworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fw-{}", self.0)
    }
}

impl FromStr for FrameworkId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("fw-").unwrap_or(s);
        digits
            .parse::<u64>()
            .map(FrameworkId)
            .map_err(|_| IdError::Framework(s.to_string()))
    }
}

/// A resource offer, numbered by the leader's allocator (`o-17`); offers live only on the
/// leader and die with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "o-{}", self.0)
    }
}

/// An agent's name. Shared, not copied: the allocator keys offers, filters and tasks by it,
/// and a cycle over 50,000 agents clones it once per offer. On the wire it is a string,
/// checked when decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(std::sync::Arc<str>);

impl AgentId {
    pub fn new(name: &str) -> Result<Self, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(AgentId(name.into()))
        } else {
            Err(IdError::Agent(name.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        AgentId::new(&s)
    }
}

impl From<AgentId> for String {
    fn from(a: AgentId) -> String {
        a.0.to_string()
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sha256 of a bundle's bytes, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BundleHash(String);

impl BundleHash {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(BundleHash(s.to_string()))
        } else {
            Err(IdError::Bundle(s.to_string()))
        }
    }
    /// The hash whose digest bytes are `digest`.
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in digest {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        BundleHash(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// First 12 digits, for tables.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for BundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_parse_with_or_without_prefix() {
        assert_eq!("t-7".parse::<TaskId>(), Ok(TaskId(7)));
        assert_eq!("7".parse::<TaskId>(), Ok(TaskId(7)));
        assert!("t-x".parse::<TaskId>().is_err());
        assert_eq!(TaskId(7).to_string(), "t-7");
    }

    #[test]
    fn bundle_hashes_are_checked() {
        assert!(BundleHash::parse(&"a".repeat(64)).is_ok());
        assert!(BundleHash::parse(&"A".repeat(64)).is_err());
        assert!(BundleHash::parse("abc").is_err());
        let mut d = [0u8; 32];
        d[0] = 0xab;
        d[31] = 0x0f;
        let h = BundleHash::from_digest(&d);
        assert_eq!(BundleHash::parse(h.as_str()), Ok(h.clone()));
        assert!(h.as_str().starts_with("ab00") && h.as_str().ends_with("0f"));
    }

    #[test]
    fn agent_names_are_checked() {
        assert!(AgentId::new("agent-1").is_ok());
        assert!(AgentId::new("").is_err());
        assert!(AgentId::new("a/b").is_err());
    }
}
