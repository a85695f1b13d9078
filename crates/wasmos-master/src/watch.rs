//! A task's output as a reader follows it (`wasmos logs [-f]`, `wasmos run`, the web UI's log
//! tail): everything stored so far, then (following) new output as it arrives, and finally the
//! task's record once it has ended. Frames come one at a time from `OutputFeed::next`, so the
//! QUIC channel and the HTTPS API send the same ones.

use std::collections::VecDeque;
use std::sync::Arc;

use wasmos_net::Identity;
use wasmos_proto::{ClientResponse, ErrorKind, TaskId};

use crate::Shared;
use crate::admission::Follow;
use crate::policy::shown;
use crate::replies::error;

pub struct OutputFeed {
    shared: Arc<Shared>,
    id: TaskId,
    follow: bool,
    offset: u64,
    pending: VecDeque<ClientResponse>,
    log_changes: tokio::sync::watch::Receiver<u64>,
    state_changes: tokio::sync::watch::Receiver<u64>,
    done: bool,
    /// A tenant's place among its follows, given back when the feed is dropped.
    _place: Option<Follow>,
}

impl OutputFeed {
    /// A feed of task `id`'s output for `who`, or the refusal (no such task of theirs, too
    /// many follows).
    pub(crate) fn open(
        shared: Arc<Shared>,
        who: &Identity,
        id: TaskId,
        follow: bool,
    ) -> Result<OutputFeed, ClientResponse> {
        crate::client::get_task(&shared, who, id)?;
        let place = match crate::policy::tenant(who) {
            Some(tenant) if follow => {
                let limit = shared.cfg.tenancy.tenant_follows;
                match shared.admission.follow(&tenant, limit) {
                    Ok(place) => Some(place),
                    Err(why) => return Err(error(ErrorKind::TooManyFollows, why)),
                }
            }
            _ => None,
        };
        let log_changes = shared.logs.subscribe();
        let state_changes = shared.raft.subscribe();
        Ok(OutputFeed {
            shared,
            id,
            follow,
            offset: 0,
            pending: VecDeque::new(),
            log_changes,
            state_changes,
            done: false,
            _place: place,
        })
    }

    /// The next frame: `Output`, then `EndOfOutput` (not following) or `TaskEnded`
    /// (following), or an `Error`; `None` after the last.
    pub async fn next(&mut self) -> Option<ClientResponse> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            // Read the state before the log: output is stored before the final status is
            // recorded, so once we see the end, one more read of the log has everything.
            let id = self.id;
            let task = self.shared.read(|s| s.tasks.get(&id).cloned());
            let ended = task.as_ref().is_none_or(|t| t.status.state.is_terminal());
            self.log_changes.borrow_and_update();
            self.state_changes.borrow_and_update();
            let (records, next) = match self.shared.logs.read_from(id, self.offset) {
                Ok(r) => r,
                Err(e) => {
                    self.done = true;
                    return Some(error(
                        ErrorKind::Internal,
                        format!("cannot read output: {e}"),
                    ));
                }
            };
            self.offset = next;
            // A read takes one chunk: until one comes back empty, there may be more to send.
            if !records.is_empty() {
                self.pending.extend(
                    records
                        .into_iter()
                        .map(|(stream, data)| ClientResponse::Output { stream, data }),
                );
                continue;
            }
            if !self.follow {
                self.done = true;
                return Some(ClientResponse::EndOfOutput);
            }
            if ended {
                self.done = true;
                return Some(match task {
                    Some(t) => ClientResponse::TaskEnded(Box::new(shown(t))),
                    None => error(ErrorKind::NotFound, format!("no task {id}")),
                });
            }
            tokio::select! {
                _ = self.log_changes.changed() => {}
                _ = self.state_changes.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
}
