//! Why the state machine refused a command, as data: front ends answer each kind with the
//! error kind it deserves (not found, over a limit, conflicting, malformed) instead of guessing
//! from the text.

use serde::{Deserialize, Serialize};
use wasmos_proto::ErrorKind;

/// A refused command; the state is unchanged. The text is what the caller is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The command names something the state does not hold, or that its caller may not see
    /// (the same answer, so no answer tells a tenant what others hold).
    #[error("{0}")]
    NotFound(String),
    /// It conflicts with what the state holds now: a task already placed or ended, an id
    /// already taken, a job that has ended.
    #[error("{0}")]
    Conflict(String),
    /// It would take its role past a ceiling, quota, allowance or an agent past its capacity.
    #[error("{0}")]
    OverLimit(String),
    /// It is malformed: a bad name or value, a command sent to the wrong family.
    #[error("{0}")]
    Invalid(String),
}

impl Rejection {
    /// The error kind a client is answered with.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            Rejection::NotFound(_) => ErrorKind::NotFound,
            Rejection::Conflict(_) | Rejection::OverLimit(_) | Rejection::Invalid(_) => {
                ErrorKind::InvalidRequest
            }
        }
    }

    /// The same rejection about a part of a command: `what: message`.
    pub fn within(self, what: &str) -> Rejection {
        let prefixed = |m: String| format!("{what}: {m}");
        match self {
            Rejection::NotFound(m) => Rejection::NotFound(prefixed(m)),
            Rejection::Conflict(m) => Rejection::Conflict(prefixed(m)),
            Rejection::OverLimit(m) => Rejection::OverLimit(prefixed(m)),
            Rejection::Invalid(m) => Rejection::Invalid(prefixed(m)),
        }
    }

    /// The text shown to the caller.
    pub fn message(&self) -> &str {
        match self {
            Rejection::NotFound(m)
            | Rejection::Conflict(m)
            | Rejection::OverLimit(m)
            | Rejection::Invalid(m) => m,
        }
    }
}
