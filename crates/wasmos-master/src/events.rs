//! The event stream (`wasmos events`, `GET /api/v1/events`): the events this master applied,
//! from an index on, cut to what the caller may see, and followed as more are applied. Every
//! master applies the same entries to the same events, so a reader that lost its master resumes
//! on another from the last `next` it was given.

use std::sync::Arc;
use std::time::Duration;

use wasmos_alloc::Role;
use wasmos_net::Identity;
use wasmos_proto::{Change, ClientResponse, ErrorKind, Event, MAX_EVENTS_PER_FRAME, Topic};

use crate::Shared;
use crate::admission::Follow;
use crate::policy::{may_see, role_visible};
use crate::replies::error;

/// How long a follower of the stream waits without news before it is sent an empty frame
/// saying where the stream is (and this master checks it still leads).
pub const EVENT_HEARTBEAT: Duration = Duration::from_secs(5);

/// Whether `who` may see event `e`: the owner's objects as everywhere else, every agent's
/// comings and goings (agents are listed to tenants too), and roles as `role list` shows them.
pub(crate) fn event_visible(who: &Identity, e: &Event) -> bool {
    match (&e.change, &e.owner) {
        (Change::Agent { .. }, _) => !matches!(who, Identity::Agent(_)),
        (Change::Role { role, .. }, _) => {
            !matches!(who, Identity::Agent(_))
                && Role::new(role).is_ok_and(|r| role_visible(who, &r))
        }
        (_, Some(owner)) => may_see(who, owner),
        (_, None) => matches!(who, Identity::Operator(_) | Identity::Master(_)),
    }
}

/// What a reader asked for.
#[derive(Debug, Clone)]
pub struct EventQuery {
    pub from: Option<u64>,
    pub topics: Vec<Topic>,
    pub follow: bool,
    /// Answered from this master's state even when it does not lead (`--stale`).
    pub stale: bool,
}

/// One reader's place in the stream; `next` gives its frames in order.
pub struct EventFeed {
    shared: Arc<Shared>,
    who: Identity,
    query: EventQuery,
    changes: tokio::sync::watch::Receiver<u64>,
    done: bool,
    /// When an empty frame is due if nothing else is sent before (see [`EVENT_HEARTBEAT`]).
    heartbeat: tokio::time::Instant,
    /// A tenant's place among its follows (`--tenant-follows`), given back when dropped.
    _place: Option<Follow>,
}

impl EventFeed {
    /// A feed for `who`, or the refusal to answer (the tenant follows too many streams).
    pub(crate) fn open(
        shared: Arc<Shared>,
        who: Identity,
        mut query: EventQuery,
    ) -> Result<EventFeed, ClientResponse> {
        // Each topic once: the list is checked against every event read.
        query.topics.sort();
        query.topics.dedup();
        let place = match crate::policy::tenant(&who) {
            Some(tenant) if query.follow => {
                let limit = shared.cfg.tenancy.tenant_follows;
                match shared.admission.follow(&tenant, limit) {
                    Ok(place) => Some(place),
                    Err(why) => return Err(error(ErrorKind::TooManyFollows, why)),
                }
            }
            _ => None,
        };
        let changes = shared.raft.subscribe();
        Ok(EventFeed {
            shared,
            who,
            query,
            changes,
            done: false,
            heartbeat: tokio::time::Instant::now() + EVENT_HEARTBEAT,
            _place: place,
        })
    }

    /// The next frame: events, or (following) an empty one every [`EVENT_HEARTBEAT`]; a
    /// redirect when this master no longer leads; `None` once a read without follow is done.
    pub async fn next(&mut self) -> Option<ClientResponse> {
        if self.done {
            return None;
        }
        loop {
            self.changes.borrow_and_update();
            let topics = &self.query.topics;
            let who = &self.who;
            let keep = |e: &Event| {
                (topics.is_empty() || topics.contains(&e.topic())) && event_visible(who, e)
            };
            let read = match self.query.from {
                Some(from) => self
                    .shared
                    .raft
                    .read_events(from, MAX_EVENTS_PER_FRAME, keep),
                // From the oldest held: nothing asked for is missing.
                None => {
                    let mut read = self.shared.raft.read_events(0, MAX_EVENTS_PER_FRAME, keep);
                    read.lost_until = None;
                    read
                }
            };
            self.query.from = Some(read.next);
            let end = !self.query.follow && !read.more;
            if !read.events.is_empty() || read.lost_until.is_some() || end {
                self.done = end;
                self.heartbeat = tokio::time::Instant::now() + EVENT_HEARTBEAT;
                return Some(ClientResponse::Events {
                    events: read.events,
                    next: read.next,
                    lost_until: read.lost_until,
                    end,
                });
            }
            if read.more {
                continue;
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.done = true;
                        return Some(error(ErrorKind::Unavailable, "this master is stopping"));
                    }
                }
                // Due whatever else wakes this loop: entries this reader may not see must not
                // keep it from hearing where the stream is, or its master from checking it
                // still leads.
                _ = tokio::time::sleep_until(self.heartbeat) => {
                    self.heartbeat = tokio::time::Instant::now() + EVENT_HEARTBEAT;
                    if !self.query.stale && !self.shared.raft.is_leader() {
                        // A deposed leader cut off from the group applies nothing more:
                        // send the reader to the one that does.
                        self.done = true;
                        let (leader, addr) = self.shared.raft.leader_addr();
                        return Some(ClientResponse::NotLeader { leader, addr });
                    }
                    return Some(ClientResponse::Events {
                        events: Vec::new(),
                        next: read.next,
                        lost_until: None,
                        end: false,
                    });
                }
            }
        }
    }
}
