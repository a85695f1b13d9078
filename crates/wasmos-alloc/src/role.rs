//! Role names: paths such as `tenant-a/analytics`, whose ancestors (`tenant-a`) share in what
//! their descendants are allocated, and may hold reservations and quotas for them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Deepest role path accepted (`a/b/c/d/e/f/g/h`).
pub const MAX_ROLE_DEPTH: usize = 8;
/// Longest role path accepted, in bytes.
pub const MAX_ROLE_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error(
        "role `{0}` is not a role path: use lowercase letters, digits, `-`, `_` and `.` in segments separated by `/`, e.g. tenant-a/analytics"
    )]
    Malformed(String),
    #[error("role `{0}` is deeper than {MAX_ROLE_DEPTH} levels")]
    TooDeep(String),
    #[error("role `{0}` is longer than {MAX_ROLE_LEN} bytes")]
    TooLong(String),
}

/// A validated role path. Ordered by path, so maps keyed by roles iterate deterministically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Role(String);

impl Role {
    pub fn new(path: &str) -> Result<Role, RoleError> {
        if path.len() > MAX_ROLE_LEN {
            return Err(RoleError::TooLong(path.chars().take(40).collect()));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let good = |s: &&str| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                })
        };
        if !segments.iter().all(good) {
            return Err(RoleError::Malformed(path.to_string()));
        }
        if segments.len() > MAX_ROLE_DEPTH {
            return Err(RoleError::TooDeep(path.to_string()));
        }
        Ok(Role(path.to_string()))
    }

    /// A role from a path known to be valid: a segment or prefix of a `Role`.
    pub(crate) fn unchecked(path: &str) -> Role {
        Role(path.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This role and each ancestor, from the role itself up to its top-level segment.
    pub fn self_and_ancestors(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        std::iter::successors(Some(s), |r| r.rfind('/').map(|i| &r[..i]))
    }

    /// The enclosing role, if this is not a top-level one.
    pub fn parent(&self) -> Option<Role> {
        self.0.rfind('/').map(|i| Role(self.0[..i].to_string()))
    }

    /// Whether this role is `other` or lies beneath it.
    pub fn is_within(&self, other: &Role) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

/// Lets maps keyed by roles be searched with the `&str`s of `self_and_ancestors` (a role
/// compares exactly as its path does).
impl std::borrow::Borrow<str> for Role {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Role {
    type Error = RoleError;
    fn try_from(s: String) -> Result<Role, RoleError> {
        Role::new(&s)
    }
}

impl From<Role> for String {
    fn from(r: Role) -> String {
        r.0
    }
}

impl std::str::FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Role, RoleError> {
        Role::new(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_validate_and_walk_up() {
        let r = Role::new("tenant-a/analytics/etl").unwrap();
        assert_eq!(
            r.self_and_ancestors().collect::<Vec<_>>(),
            ["tenant-a/analytics/etl", "tenant-a/analytics", "tenant-a"]
        );
        assert_eq!(r.parent().unwrap().as_str(), "tenant-a/analytics");
        assert!(r.is_within(&Role::new("tenant-a").unwrap()));
        assert!(
            !Role::new("tenant-ab")
                .unwrap()
                .is_within(&Role::new("tenant-a").unwrap())
        );
        for bad in ["", "/a", "a/", "a//b", "A", "a/../b", "a b", "é"] {
            assert!(Role::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            Role::new("a/b/c/d/e/f/g/h/i"),
            Err(RoleError::TooDeep(_))
        ));
    }
}
