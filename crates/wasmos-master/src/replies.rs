//! How the client channel's answers are shaped: errors, redirects to the leader when a raft
//! write finds another master leading, and listings cut to what fits in one frame. Shared by
//! every front end that answers `ClientRequest`s (the client channel, jobs, frameworks).

use wasmos_proto::{ClientResponse, ErrorKind};

use crate::Shared;

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> ClientResponse {
    ClientResponse::Error {
        kind,
        message: message.into(),
    }
}

/// A command the state machine refused, answered with the error kind its rejection names.
pub(crate) fn rejected(why: wasmos_state::Rejection) -> ClientResponse {
    error(why.error_kind(), why.to_string())
}

/// A raft failure as the client sees it: a redirect when another master leads.
pub(crate) fn raft_error(shared: &Shared, e: wasmos_raft::RaftError) -> ClientResponse {
    match e {
        wasmos_raft::RaftError::NotLeader { .. } => {
            let (leader, addr) = shared.raft.leader_addr();
            ClientResponse::NotLeader { leader, addr }
        }
        other => error(ErrorKind::Unavailable, other.to_string()),
    }
}

/// A listing's page cut to what fits in one message (halving: the size estimates that filled
/// it are rough), or its first item if even that one alone does not fit.
pub(crate) fn fit_page<T: serde::Serialize>(mut page: Vec<T>) -> Result<Vec<T>, Option<T>> {
    loop {
        match wasmos_proto::encode(&page) {
            Ok(b) if b.len() < wasmos_proto::MAX_FRAME_BYTES - 1024 => return Ok(page),
            _ if page.len() > 1 => page.truncate(page.len() / 2),
            _ => return Err(page.into_iter().next()),
        }
    }
}
