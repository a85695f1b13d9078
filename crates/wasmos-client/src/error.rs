//! What can go wrong talking to the masters, as data: callers decide what to retry and what to
//! show, by kind rather than by message text.

use std::net::SocketAddr;
use std::time::Duration;

use wasmos_net::NetError;
use wasmos_proto::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client config could not be found, read or parsed (the message names the file).
    #[error("{0}")]
    Config(String),
    /// Certificates could not be loaded, or an endpoint or connection could not be made.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A master refused this client's certificate or identity. Final: asking again, or another
    /// master of the same cluster, gives the same answer.
    #[error("{0}")]
    Refused(String),
    /// The master answered with an error: the request is wrong, not allowed, or cannot be done.
    #[error("{message}")]
    Rejected { kind: ErrorKind, message: String },
    /// The connection or a stream broke before an answer came.
    #[error("{0}")]
    Lost(String),
    /// Redirects went round without reaching a leader.
    #[error(
        "no leader: the masters did not agree on one in time (last asked: {last}); an election may be under way, or a majority of masters is down"
    )]
    NoLeader { last: SocketAddr },
    /// None of the configured masters could be reached.
    #[error("no master answered (tried {tried}): {errors}")]
    Unreachable { tried: String, errors: String },
    /// A submission was retried across failovers for this long without an answer.
    #[error("the submission was not acknowledged within {after:?}: {last}")]
    NotAcknowledged {
        after: Duration,
        last: Box<ClientError>,
    },
    /// A blob's bytes did not match its hash or size.
    #[error("blob {hash} arrived damaged ({got_bytes} bytes, sha256 {got_hash})")]
    Damaged {
        hash: String,
        got_bytes: usize,
        got_hash: String,
    },
    /// The master answered something this request does not expect (a version mismatch).
    #[error("unexpected answer to {to}: {answer}")]
    Unexpected { to: &'static str, answer: String },
}

impl ClientError {
    /// Whether asking again (at the next leader, a moment later) may succeed: a lost
    /// connection, no leader yet, a master that could not commit now (`Unavailable`); not a
    /// refusal of this client, a master's considered answer, a bad config or a version
    /// mismatch.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Rejected { kind, .. } => *kind == ErrorKind::Unavailable,
            ClientError::Refused(_)
            | ClientError::Config(_)
            | ClientError::Unexpected { .. }
            | ClientError::Damaged { .. } => false,
            ClientError::Net(_)
            | ClientError::Lost(_)
            | ClientError::NoLeader { .. }
            | ClientError::Unreachable { .. }
            | ClientError::NotAcknowledged { .. } => true,
        }
    }

    /// The master's kind of rejection, if that is what this is.
    pub fn rejection(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Rejected { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub(crate) fn unexpected(to: &'static str, answer: impl std::fmt::Debug) -> ClientError {
        ClientError::Unexpected {
            to,
            answer: format!("{answer:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_may_change_is_retryable() {
        let rejected = |kind| ClientError::Rejected {
            kind,
            message: String::new(),
        };
        assert!(rejected(ErrorKind::Unavailable).retryable());
        assert!(!rejected(ErrorKind::NotFound).retryable());
        assert!(!rejected(ErrorKind::TooLarge).retryable());
        assert!(!ClientError::Refused("certificate".into()).retryable());
        assert!(!ClientError::unexpected("a watch", "Ok").retryable());
        assert!(ClientError::Lost("reset".into()).retryable());
        let last: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        assert!(ClientError::NoLeader { last }.retryable());
        assert_eq!(
            rejected(ErrorKind::NotFound).rejection(),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(ClientError::Lost(String::new()).rejection(), None);
    }
}
