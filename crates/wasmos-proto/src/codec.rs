//! The frame codec: every message is a postcard-encoded `(version, body)` pair.
//!
//! Length prefixes are added by the transport; this module only turns one message into bytes and
//! back, and rejects a peer that speaks another protocol version or an unknown message kind with
//! an error that says so.

use serde::{Serialize, de::DeserializeOwned};

/// Bumped whenever a wire type changes incompatibly.
pub const PROTOCOL_VERSION: u16 = 22;

/// Largest encoded message accepted from a peer. Bundles travel as raw stream bytes, not frames,
/// so control messages stay small; this bound keeps a hostile peer from making us allocate.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("peer speaks wasmos protocol version {got}, this build speaks {expected}")]
    Version { got: u16, expected: u16 },
    #[error("frame of {0} bytes is larger than the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed or unknown message kind: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_stdvec(&(PROTOCOL_VERSION, msg))
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (version, rest): (u16, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::Version {
            got: version,
            expected: PROTOCOL_VERSION,
        });
    }
    let (msg, tail) =
        postcard::take_from_bytes(rest).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !tail.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after message",
            tail.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, TaskId};

    #[test]
    fn round_trips_a_message() {
        let msg = ClientRequest::GetTask { id: TaskId(42) };
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode::<ClientRequest>(&bytes).unwrap(), msg);
    }

    #[test]
    fn rejects_other_versions() {
        let bytes = postcard::to_stdvec(&(99u16, ClientRequest::ListAgents)).unwrap();
        assert_eq!(
            decode::<ClientRequest>(&bytes),
            Err(CodecError::Version {
                got: 99,
                expected: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn rejects_unknown_message_kinds_and_garbage() {
        // Variant index 200 does not exist.
        let bytes = postcard::to_stdvec(&(PROTOCOL_VERSION, 200u8)).unwrap();
        assert!(matches!(
            decode::<ClientRequest>(&bytes),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ClientRequest>(&[]),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = encode(&ClientRequest::ListAgents).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<ClientRequest>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    /// Event frames cross the QUIC channel in postcard and the HTTPS API in JSON: both give
    /// back what was sent.
    #[test]
    fn event_frames_round_trip_in_postcard_and_json() {
        use crate::{AgentId, Change, ClientResponse, Event, JobChange, JobId, Topic};
        let events = vec![
            Event {
                index: 7,
                owner: Some("wasmos://tenant/acme/alice".into()),
                change: Change::Task {
                    id: TaskId(3),
                    state: crate::TaskState::Failed,
                    reason: Some(crate::Reason::Timeout),
                    message: Some("too slow".into()),
                    agent: AgentId::new("agent-1").ok(),
                    role: Some("acme".into()),
                    framework: None,
                    progress: Some(crate::TaskProgress {
                        permille: 250,
                        message: "a quarter".into(),
                    }),
                },
            },
            Event {
                index: 8,
                owner: None,
                change: Change::Job {
                    id: JobId(2),
                    name: "wc".into(),
                    change: JobChange::Progress {
                        group: "map".into(),
                        index: 1,
                        what: "done".into(),
                        task: Some(TaskId(4)),
                    },
                },
            },
        ];
        let frame = ClientResponse::Events {
            events,
            next: 9,
            lost_until: Some(5),
            end: false,
        };
        assert_eq!(
            decode::<ClientResponse>(&encode(&frame).unwrap()).unwrap(),
            frame
        );
        let json = serde_json::to_string(&frame).unwrap();
        assert_eq!(
            serde_json::from_str::<ClientResponse>(&json).unwrap(),
            frame
        );
        let req = ClientRequest::WatchEvents {
            from: Some(3),
            topics: vec![Topic::Task, Topic::Role],
            follow: true,
        };
        assert_eq!(
            decode::<ClientRequest>(&encode(&req).unwrap()).unwrap(),
            req
        );
        assert_eq!("role".parse::<Topic>(), Ok(Topic::Role));
        assert!(
            "tasks"
                .parse::<Topic>()
                .unwrap_err()
                .contains("unknown event type")
        );
    }
}
