//! The sans-IO scheduler driver: it owns a [`Scheduler`] and the framework's side of the
//! protocol. It does no I/O and reads no clock: the caller passes events and the time in and
//! carries the [`Action`]s out, which makes frameworks testable without a cluster and lets the
//! master run built-in frameworks in-process.

use wasmos_proto::{
    AgentId, FrameworkCall, FrameworkEvent, FrameworkId, OfferId, OfferInfo, OfferOperation,
    Resources, TaskId, TaskSpec, TaskStatus,
};

/// A framework's scheduling policy. Every callback gets a [`Context`] to make calls with.
pub trait Scheduler {
    /// The master accepted the subscription (the first one, or again after a failover, with
    /// the same id and tasks).
    fn subscribed(&mut self, cx: &mut Context, framework: FrameworkId, role: &str) {
        let _ = (cx, framework, role);
    }
    /// Resources to launch on: accept (see [`Context::launch`]) or decline each offer.
    fn offers(&mut self, cx: &mut Context, offers: Vec<OfferInfo>);
    /// A task's status changed (or was asked for by reconciliation). The driver acknowledges
    /// it after this returns.
    fn update(&mut self, cx: &mut Context, task: TaskId, status: &TaskStatus);
    /// An accept succeeded: `tasks` are the new tasks' ids, in the order of its specs.
    fn launched(&mut self, cx: &mut Context, request: u64, tasks: &[TaskId]) {
        let _ = (cx, request, tasks);
    }
    /// An offer was withdrawn; accepting it now fails.
    fn rescinded(&mut self, cx: &mut Context, offer: OfferId) {
        let _ = (cx, offer);
    }
    /// An agent was declared lost (its tasks' updates follow).
    fn failure(&mut self, cx: &mut Context, agent: &AgentId) {
        let _ = (cx, agent);
    }
    /// An operator scheduled maintenance of `agent`, where this framework runs tasks: it is
    /// drained from `start_ms` (its tasks stopped with reason `maintenance`) to `end_ms`.
    /// Answer with [`Context::answer_inverse_offer`]: accept and move the work away first, or
    /// decline. Ignoring it is a decline nobody hears of; the default ignores it.
    fn inverse_offer(&mut self, cx: &mut Context, agent: &AgentId, start_ms: u64, end_ms: u64) {
        let _ = (cx, agent, start_ms, end_ms);
    }
    /// A call was refused; `request` names the accept if it was one. Nothing it asked for
    /// happened.
    fn error(&mut self, cx: &mut Context, request: Option<u64>, message: &str) {
        let _ = (cx, request, message);
    }
    /// Called on every driver tick, and at the time asked with [`Context::wake_at`]: for
    /// the scheduler's own timers (delays, deadlines, backoff).
    fn tick(&mut self, cx: &mut Context) {
        let _ = cx;
    }
}

/// What a scheduler callback can do: calls to the master, plus asking to be woken.
#[derive(Debug)]
pub struct Context {
    now_ms: u64,
    calls: Vec<FrameworkCall>,
    next_request: u64,
    wake_at: Option<u64>,
    finished: bool,
}

impl Context {
    /// The time the driver was given with this event, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Launches `tasks` on one offer; returns the request number `launched` or `error` will
    /// name.
    pub fn launch(&mut self, offer: OfferId, tasks: Vec<TaskSpec>) -> u64 {
        self.accept(vec![offer], vec![OfferOperation::Launch(tasks)], None)
    }

    /// Applies `operations` to offers (all of one agent), all or nothing. What they leave is
    /// declined for `refuse_ms` (default 5 s).
    pub fn accept(
        &mut self,
        offers: Vec<OfferId>,
        operations: Vec<OfferOperation>,
        refuse_ms: Option<u64>,
    ) -> u64 {
        self.next_request += 1;
        let request = self.next_request;
        self.calls.push(FrameworkCall::Accept {
            request,
            offers,
            operations,
            refuse_ms,
        });
        request
    }

    /// Gives offers back, not to be offered to this framework again for `refuse_ms`.
    pub fn decline(&mut self, offers: Vec<OfferId>, refuse_ms: Option<u64>) {
        if !offers.is_empty() {
            self.calls
                .push(FrameworkCall::Decline { offers, refuse_ms });
        }
    }

    /// No more offers until [`Context::revive`].
    pub fn suppress(&mut self) {
        self.calls.push(FrameworkCall::Suppress);
    }

    /// Offers again, forgetting earlier declines.
    pub fn revive(&mut self) {
        self.calls.push(FrameworkCall::Revive);
    }

    pub fn kill(&mut self, task: TaskId) {
        self.calls.push(FrameworkCall::Kill { task });
    }

    /// Answers an inverse offer (see [`Scheduler::inverse_offer`]).
    pub fn answer_inverse_offer(&mut self, agent: AgentId, accept: bool) {
        self.calls
            .push(FrameworkCall::AnswerInverseOffer { agent, accept });
    }

    /// The latest status of `tasks`, or of all live ones when empty, comes as updates.
    pub fn reconcile(&mut self, tasks: Vec<TaskId>) {
        self.calls.push(FrameworkCall::Reconcile { tasks });
    }

    /// Ends the framework for good: its tasks are killed. The driver finishes afterwards.
    pub fn teardown(&mut self) {
        self.calls.push(FrameworkCall::Teardown);
        self.finished = true;
    }

    /// The scheduler is done: the driver sends what is queued and finishes. The framework's
    /// tasks keep running for its failover timeout (use [`Context::teardown`] to end them).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Tells the master the resources of the next task this scheduler wants to launch and has
    /// no room for (`None` once nothing waits), so that a role below its quota guarantee gets
    /// room by preemption. Call it whenever that changes (every tick is fine): the driver
    /// sends only changes, and says it again after a reconnection. Not for best-effort tasks.
    pub fn waiting(&mut self, resources: Option<Resources>) {
        self.calls.push(FrameworkCall::Waiting { resources });
    }

    /// Asks for a [`Scheduler::tick`] no later than `at_ms`.
    pub fn wake_at(&mut self, at_ms: u64) {
        self.wake_at = Some(self.wake_at.map_or(at_ms, |w| w.min(at_ms)));
    }
}

/// How to subscribe.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    /// `None` is the subscriber's default role.
    pub role: Option<String>,
    /// Also take revocable resources, for best-effort tasks.
    pub revocable: bool,
    /// How long the master keeps this framework's tasks while it is away; `None` is the
    /// master's default (60 s).
    pub failover_timeout_ms: Option<u64>,
    /// Re-attach to an earlier subscription of the same identity (after a restart).
    pub framework: Option<FrameworkId>,
}

impl Options {
    pub fn new(name: impl Into<String>) -> Options {
        Options {
            name: name.into(),
            role: None,
            revocable: false,
            failover_timeout_ms: None,
            framework: None,
        }
    }
}

/// What the caller must do for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this call on the framework stream.
    Send(FrameworkCall),
    /// Drop the connection and connect again: to `addr` when given (the leader), else to the
    /// next master; then call [`Driver::connected`].
    Reconnect { addr: Option<String> },
    /// The scheduler finished: close the connection once the calls before this are sent.
    Finished,
    /// The master refused the subscription; retrying will not help.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Disconnected,
    Subscribing,
    Subscribed,
}

/// How many heartbeat intervals of silence mean the master is gone.
const SILENT_HEARTBEATS: u64 = 3;

/// Drives one [`Scheduler`] through subscriptions, failovers and acknowledgements.
#[derive(Debug)]
pub struct Driver<S> {
    scheduler: S,
    opts: Options,
    phase: Phase,
    /// Whether the next subscription re-attaches to an existing id.
    reattach: bool,
    heartbeat_ms: u64,
    last_heard_ms: u64,
    next_request: u64,
    wake_at: Option<u64>,
    /// Calls made while not subscribed, sent once subscribed (offer calls are dropped: a new
    /// subscription gets new offers).
    pending: Vec<FrameworkCall>,
    finished: bool,
    /// What the scheduler last said it waits for: the master forgets it on disconnection.
    waiting: Option<Resources>,
}

impl<S: Scheduler> Driver<S> {
    pub fn new(scheduler: S, opts: Options) -> Driver<S> {
        Driver {
            scheduler,
            opts,
            phase: Phase::Disconnected,
            heartbeat_ms: 0,
            last_heard_ms: 0,
            next_request: 0,
            wake_at: None,
            pending: Vec::new(),
            finished: false,
            reattach: false,
            waiting: None,
        }
    }

    pub fn scheduler(&self) -> &S {
        &self.scheduler
    }

    pub fn scheduler_mut(&mut self) -> &mut S {
        &mut self.scheduler
    }

    pub fn into_scheduler(self) -> S {
        self.scheduler
    }

    /// The framework id, once subscribed.
    pub fn framework(&self) -> Option<FrameworkId> {
        self.opts.framework
    }

    pub fn is_subscribed(&self) -> bool {
        self.phase == Phase::Subscribed
    }

    /// A connection to a master is open: subscribe (again, with the id, after the first time).
    pub fn connected(&mut self, now_ms: u64) -> Vec<Action> {
        self.phase = Phase::Subscribing;
        self.last_heard_ms = now_ms;
        self.reattach = self.opts.framework.is_some();
        vec![Action::Send(FrameworkCall::Subscribe {
            name: self.opts.name.clone(),
            role: self.opts.role.clone(),
            revocable: self.opts.revocable,
            framework: self.opts.framework,
            failover_timeout_ms: self.opts.failover_timeout_ms,
        })]
    }

    /// The connection broke (or could not be made): connect again, to any master.
    pub fn disconnected(&mut self) -> Vec<Action> {
        if self.finished && self.pending.is_empty() {
            return vec![Action::Finished];
        }
        self.phase = Phase::Disconnected;
        vec![Action::Reconnect { addr: None }]
    }

    /// When the driver wants [`Driver::tick`] next, if ever.
    pub fn next_tick_ms(&self) -> Option<u64> {
        let silence = (self.phase == Phase::Subscribed && self.heartbeat_ms > 0)
            .then(|| self.last_heard_ms + SILENT_HEARTBEATS * self.heartbeat_ms);
        match (silence, self.wake_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: checks the master is still heard from, and runs the scheduler's timers.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        if self.phase == Phase::Subscribed
            && self.heartbeat_ms > 0
            && now_ms >= self.last_heard_ms + SILENT_HEARTBEATS * self.heartbeat_ms
        {
            self.phase = Phase::Disconnected;
            return vec![Action::Reconnect { addr: None }];
        }
        if self.wake_at.is_some_and(|w| w <= now_ms) {
            self.wake_at = None;
        }
        self.callback(now_ms, |s, cx| s.tick(cx))
    }

    /// An event from the master.
    pub fn event(&mut self, event: FrameworkEvent, now_ms: u64) -> Vec<Action> {
        self.last_heard_ms = now_ms;
        match event {
            FrameworkEvent::Subscribed {
                framework,
                role,
                heartbeat_interval_ms,
                ..
            } => {
                self.phase = Phase::Subscribed;
                self.opts.framework = Some(framework);
                self.heartbeat_ms = heartbeat_interval_ms;
                let mut out: Vec<Action> = std::mem::take(&mut self.pending)
                    .into_iter()
                    .map(Action::Send)
                    .collect();
                if self.finished {
                    out.push(Action::Finished);
                    return out;
                }
                if self.reattach {
                    // Back after a failover or a restart: the master resends unacknowledged
                    // updates; this asks for the state of every live task too.
                    out.push(Action::Send(FrameworkCall::Reconcile { tasks: Vec::new() }));
                }
                if let Some(resources) = &self.waiting {
                    out.push(Action::Send(FrameworkCall::Waiting {
                        resources: Some(resources.clone()),
                    }));
                }
                out.extend(self.callback(now_ms, |s, cx| s.subscribed(cx, framework, &role)));
                out
            }
            FrameworkEvent::Offers(offers) => self.callback(now_ms, |s, cx| s.offers(cx, offers)),
            FrameworkEvent::Rescind { offer } => {
                self.callback(now_ms, |s, cx| s.rescinded(cx, offer))
            }
            FrameworkEvent::Accepted { request, tasks } => {
                self.callback(now_ms, |s, cx| s.launched(cx, request, &tasks))
            }
            FrameworkEvent::Update {
                task,
                status,
                update,
            } => {
                let mut out = self.callback(now_ms, |s, cx| s.update(cx, task, &status));
                if update != 0 {
                    // After the scheduler has seen it: an update it never handled is resent.
                    out.insert(0, Action::Send(FrameworkCall::Acknowledge { task, update }));
                }
                out
            }
            FrameworkEvent::Failure { agent } => {
                self.callback(now_ms, |s, cx| s.failure(cx, &agent))
            }
            FrameworkEvent::Error { request, message } => {
                if self.phase == Phase::Subscribing {
                    self.phase = Phase::Disconnected;
                    return vec![Action::Failed(message)];
                }
                self.callback(now_ms, |s, cx| s.error(cx, request, &message))
            }
            FrameworkEvent::InverseOffer {
                agent,
                start_ms,
                end_ms,
            } => self.callback(now_ms, |s, cx| {
                s.inverse_offer(cx, &agent, start_ms, end_ms)
            }),
            FrameworkEvent::Heartbeat => Vec::new(),
            FrameworkEvent::NotLeader { addr } => {
                self.phase = Phase::Disconnected;
                vec![Action::Reconnect { addr }]
            }
        }
    }

    /// Runs one scheduler callback and turns what it asked for into actions.
    fn callback(&mut self, now_ms: u64, f: impl FnOnce(&mut S, &mut Context)) -> Vec<Action> {
        let mut cx = Context {
            now_ms,
            calls: Vec::new(),
            next_request: self.next_request,
            wake_at: self.wake_at,
            finished: false,
        };
        f(&mut self.scheduler, &mut cx);
        self.next_request = cx.next_request;
        self.wake_at = cx.wake_at;
        let mut out = Vec::new();
        for call in cx.calls {
            if let FrameworkCall::Waiting { resources } = &call {
                // Only changes go out; a new subscription is told on `Subscribed`.
                if *resources == self.waiting {
                    continue;
                }
                self.waiting = resources.clone();
                if self.phase != Phase::Subscribed {
                    continue;
                }
            }
            if self.phase == Phase::Subscribed {
                out.push(Action::Send(call));
            } else if !matches!(
                call,
                FrameworkCall::Accept { .. } | FrameworkCall::Decline { .. }
            ) {
                self.pending.push(call);
            }
        }
        if cx.finished {
            self.finished = true;
            // A teardown made while away is sent first, once subscribed again.
            if self.pending.is_empty() {
                out.push(Action::Finished);
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
