//! The sync's scheduler: when to long-poll the control service for the feed, when to
//! post the merged events, and what each answer means; the plugin performs the
//! [`Action`]s it returns. Never: call the host, panic on an answer, or send a second
//! poll while one is in flight. How it polls: `control/FEED.md#how-the-sync-polls`.

use crate::observe::events;
use crate::policy::{FeedPolicy, LogLevel};
use crate::store::SharedStore;
use crate::sync::exchange::{self, Exchange};
use crate::sync::feed;
use crate::time::UnixNanos;
use std::time::Duration;

/// The sync's timer: fine enough that a poll held back by [`QUICK_POLL_BURST`] goes out
/// soon, coarse enough to cost nothing on Envoy's main thread.
pub const SYNC_TICK: Duration = Duration::from_millis(100);
pub const TICKS_PER_SEC: u64 = 10;
/// Polls that may go out straight after answers in a burst ... An answer triggers the
/// next poll at once when waiting would only delay news (it carried changes, the poll
/// was held its full `wait`, or the server asked for a snapshot); those quick polls are
/// paid from a token bucket (`earned = (now - refilled_at) / (1 s / rate)`, capped at
/// the burst), and one it cannot pay for goes out on a later tick.
pub const QUICK_POLL_BURST: u32 = 16;
/// ... and in the long run: at 50 a second, 100 changes a second arrive two per answer.
pub const QUICK_POLLS_PER_SEC: u64 = 50;

/// Polls that fail in a row are tried again on the next tick this many times (a second)
/// before the tries back off: behind replicas restarting one after another, one of ten
/// tries reaches a replica that is up, and a refused connection costs the control
/// service nothing.
pub const QUICK_RETRIES: u32 = 10;
/// The response header with which a stopping control service marks the held polls it
/// answers early (control/FEED.md): the sync polls again at once.
pub const STOPPING_HEADER: &str = "gatehouse-stopping";
/// How long an events post may take before Envoy gives up on it (and it is tried again).
pub const EVENTS_POST_TIMEOUT_SECS: u64 = 5;
/// Worker batches read per queue notification: a flood is drained over several.
pub const MAX_BATCHES_PER_NOTIFICATION: usize = 1024;
/// How long past its `wait` Envoy may take to give up on a poll (its call timeout).
const POLL_TIMEOUT_MARGIN_SECS: u64 = 5;
/// How long past its `wait` a poll may stay unanswered before a regular tick forgets it.
const UNANSWERED_GRACE_SECS: u64 = 10;

/// Which of the sync's two calls a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `GET <feed.path>?since=...`
    Poll,
    /// `POST /v1/events`: at most one a second and one at a time; a failed post is merged
    /// back in front of what arrived meanwhile ([`events::Posted`] says which answers
    /// are retried and which dropped).
    Events,
    /// `POST /v1/limits/exchange`: fleet-scoped limits ([`exchange`]), every
    /// `sync_interval`, one at a time.
    Exchange,
}

/// An HTTP call to the feed's cluster, complete: the plugin dispatches it as it is and
/// reports [`Schedule::sent`] or [`Schedule::not_sent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub call: Call,
    pub cluster: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
    pub timeout: Duration,
}

impl Request {
    /// The value of header `name`, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The sync's metrics (Envoy shows them as `wasmcustom.gatehouse.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Gauge: the feed version applied last.
    Version,
    EntriesApplied,
    Failures,
    RecordsSkipped,
    /// Gauge: seconds since the last successful poll.
    LastSyncAge,
    /// Gauge: key records written since the cache's snapshot began (live, tombstones and
    /// rewrites): an upper bound of the cache's size.
    Keys,
    /// Snapshot pages applied.
    SnapshotPages,
    /// Gauge: the sync VM's linear memory, in bytes (the plugin sets it).
    WasmMemory,
    /// Posts of the refusal audit that the control service accepted ...
    EventsPosts,
    /// ... and that failed (not sent, no answer, or a status other than 2xx).
    EventsPostFailures,
    /// Refusals in accepted posts.
    EventsRefusalsPosted,
    /// Refusals dropped for lack of room or because the server refused them.
    EventsRefusalsDropped,
    /// Fleet-limit exchanges answered ...
    FleetExchanges,
    /// ... and failed (not sent, no answer, an error status or a bad answer).
    FleetExchangeFailures,
    /// Fleet states that moved a local limiter state forward.
    FleetStatesApplied,
    /// Fleet states that found no room in the slot table, or broke the contract.
    FleetStatesSkipped,
    /// Fleet-scoped admissions never reported (the pending tallies were full).
    FleetAdmissionsDropped,
    /// Gauge: proxies the control service counts in the fleet.
    FleetProxies,
    /// `levers` sets refused whole (over the bound or breaking the contract): the previous
    /// set stays in force.
    LeversRejected,
    /// Gauge: entries of the levers set in force.
    LeversEntries,
}

impl Metric {
    /// Every metric, in the order the plugin defines them.
    pub const ALL: [Metric; 20] = [
        Metric::Version,
        Metric::EntriesApplied,
        Metric::Failures,
        Metric::RecordsSkipped,
        Metric::LastSyncAge,
        Metric::Keys,
        Metric::SnapshotPages,
        Metric::WasmMemory,
        Metric::EventsPosts,
        Metric::EventsPostFailures,
        Metric::EventsRefusalsPosted,
        Metric::EventsRefusalsDropped,
        Metric::FleetExchanges,
        Metric::FleetExchangeFailures,
        Metric::FleetStatesApplied,
        Metric::FleetStatesSkipped,
        Metric::FleetAdmissionsDropped,
        Metric::FleetProxies,
        Metric::LeversRejected,
        Metric::LeversEntries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Version => "gatehouse.feed.version",
            Metric::EntriesApplied => "gatehouse.feed.entries_applied",
            Metric::Failures => "gatehouse.feed.failures",
            Metric::RecordsSkipped => "gatehouse.feed.records_skipped",
            Metric::LastSyncAge => "gatehouse.feed.last_sync_age_seconds",
            Metric::Keys => "gatehouse.feed.keys",
            Metric::SnapshotPages => "gatehouse.feed.snapshot_pages",
            Metric::WasmMemory => "gatehouse.feed.wasm_memory_bytes",
            Metric::EventsPosts => "gatehouse.events.posts",
            Metric::EventsPostFailures => "gatehouse.events.post_failures",
            Metric::EventsRefusalsPosted => "gatehouse.events.refusals_posted",
            Metric::EventsRefusalsDropped => "gatehouse.events.refusals_dropped",
            Metric::FleetExchanges => "gatehouse.fleet.exchanges",
            Metric::FleetExchangeFailures => "gatehouse.fleet.exchange_failures",
            Metric::FleetStatesApplied => "gatehouse.fleet.states_applied",
            Metric::FleetStatesSkipped => "gatehouse.fleet.states_skipped",
            Metric::FleetAdmissionsDropped => "gatehouse.fleet.admissions_dropped",
            Metric::FleetProxies => "gatehouse.fleet.proxies",
            Metric::LeversRejected => "gatehouse.levers.rejected",
            Metric::LeversEntries => "gatehouse.levers.entries",
        }
    }

    /// A gauge (set) rather than a counter (added to).
    pub fn is_gauge(self) -> bool {
        matches!(
            self,
            Metric::Version
                | Metric::LastSyncAge
                | Metric::Keys
                | Metric::WasmMemory
                | Metric::FleetProxies
                | Metric::LeversEntries
        )
    }
}

/// What the plugin does next, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Dispatch this call, then report [`Schedule::sent`] or [`Schedule::not_sent`]
    /// before performing the next action.
    Send(Request),
    /// Add to a counter (never zero).
    Add(Metric, u64),
    /// Set a gauge.
    Set(Metric, u64),
    Log(LogLevel, String),
}

/// An answer to one of the sync's calls, as the host reports it.
#[derive(Clone, Copy, Debug)]
pub struct HttpAnswer<'a> {
    pub token: u32,
    /// `:status`, empty when there was no answer (timeout or connection failure).
    pub status: &'a [u8],
    pub body_size: usize,
    /// The server said it is stopping (`gatehouse-stopping: 1`, control/FEED.md): its held
    /// poll was answered early, so the next one goes at once (to another replica).
    pub stopping: bool,
}

/// A poll sent and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Poll {
    token: u32,
    /// When it was sent (unix secs).
    sent: u64,
    /// The version it asked from (0: a snapshot).
    since: u64,
    /// How long it asked the server to hold it (secs).
    wait: u64,
    /// It asked for the page after one applied ([`feed::Ask::Page`]).
    continues: bool,
}

/// What follows an answer.
enum Next {
    /// Poll on the next tick (a failure, or nothing to hurry for).
    Tick,
    /// A 410: ask for a snapshot.
    Snapshot,
    /// Applied up to `version`; `news`: the answer changed something.
    Applied { version: u64, news: bool },
}

/// The sync's state between ticks. Versions live in shared data (`feed/state`), so a
/// restarted sync resumes where the last one stopped.
pub struct Schedule {
    feed: FeedPolicy,
    /// `Bearer <token>`.
    authorization: String,
    /// Envoy's node id when it is a valid id: the posts' `proxy`.
    proxy: Option<String>,
    /// The poll in flight: one at a time.
    in_flight: Option<Poll>,
    /// A poll handed to the plugin whose token is not known yet (token 0 here).
    sending: Option<Poll>,
    /// The server answered 410: ask for a snapshot (`since=0`) next.
    full_next: bool,
    /// Ticks so far ([`SYNC_TICK`] apart).
    ticks: u64,
    /// The tick of the next regular poll (every `feed.interval`).
    next_regular: u64,
    /// Polls that may still go out straight after an answer (the bucket).
    quick_budget: u32,
    /// When the bucket last gained a poll (unix ns).
    refilled_at: u64,
    /// An answer asked for a poll at once but the bucket was empty: poll on a later tick.
    poll_due: bool,
    /// The last poll failed: the next one asks `wait=0`.
    recovering: bool,
    /// Polls failed in a row, and the tick the next try goes out on (before the regular
    /// poll): on each of the [`QUICK_RETRIES`] ticks after the first failure, then 200,
    /// 400, 800 ms ... apart up to `feed.interval`, so a replica that just stopped (or
    /// several restarting in turn) costs a tick or a few, not an interval.
    failures_in_a_row: u32,
    retry_tick: Option<u64>,
    /// The refusal audit waiting to be posted.
    events: events::Pending,
    /// A post handed to the plugin whose token is not known yet.
    events_sending: Option<events::Pending>,
    /// The events post in flight, and what it carries (merged back if it fails).
    events_in_flight: Option<(u32, events::Pending)>,
    /// The tick the last events post went out on: at most one a second.
    events_posted_tick: Option<u64>,
    /// Fleet-scoped limits' exchange, when the policy has any.
    fleet: Option<Exchange>,
}

impl Schedule {
    /// A sync configured at `now`: its first tick polls for a snapshot at once.
    pub fn new(
        feed: FeedPolicy,
        authorization: String,
        proxy: Option<String>,
        now: UnixNanos,
    ) -> Schedule {
        Schedule {
            feed,
            authorization,
            proxy,
            in_flight: None,
            sending: None,
            full_next: false,
            ticks: 0,
            next_regular: 1,
            quick_budget: QUICK_POLL_BURST,
            refilled_at: now.0,
            poll_due: false,
            recovering: false,
            failures_in_a_row: 0,
            retry_tick: None,
            events: events::Pending::default(),
            events_sending: None,
            events_in_flight: None,
            events_posted_tick: None,
            fleet: None,
        }
    }

    /// Exchanges fleet-scoped limits' consumption every `interval_ms`
    /// ([`crate::limit::fleet`]), for the limiter's `table`. The first key poll waits for
    /// the first exchange ([`exchange::FIRST_EXCHANGE_GRACE_NANOS`] at most).
    pub fn enable_fleet(&mut self, table: crate::limit::Table, interval_ms: u64, now: UnixNanos) {
        self.fleet = Some(Exchange::new(table, interval_ms, self.proxy.clone(), now.0));
    }

    /// Merges one worker tally from the fleet queue.
    pub fn on_fleet_batch(&mut self, batch: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(fleet) = &mut self.fleet
            && !fleet.merge(batch)
        {
            out.push(Action::Log(
                LogLevel::Warn,
                "fleet: a worker tally was unreadable; dropped".into(),
            ));
        }
        out
    }

    /// Hands the exchange to the plugin when one is due.
    fn exchange(&mut self, out: &mut Vec<Action>, now: UnixNanos) {
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        add(out, Metric::FleetAdmissionsDropped, fleet.take_dropped());
        if fleet.stuck(now.0) {
            let outcome = fleet.failed("unanswered".into());
            Self::exchanged(out, outcome);
        }
        let Some(fleet) = &mut self.fleet else {
            return;
        };
        let Some(body) = fleet.due(now.0) else {
            return;
        };
        out.push(Action::Send(Request {
            call: Call::Exchange,
            cluster: self.feed.cluster.clone(),
            headers: vec![
                (":method", "POST".into()),
                (":path", crate::limit::fleet::EXCHANGE_PATH.into()),
                (":authority", self.feed.authority.clone()),
                ("authorization", self.authorization.clone()),
                ("content-type", "application/json".into()),
            ],
            body: Some(body),
            timeout: exchange::TIMEOUT,
        }));
    }

    /// Reports an exchange's outcome as metrics, and as a log line when it changes from
    /// working to failing or back.
    fn exchanged(out: &mut Vec<Action>, outcome: exchange::Outcome) {
        if outcome.ok {
            add(out, Metric::FleetExchanges, 1);
            out.push(Action::Set(
                Metric::FleetProxies,
                u64::from(outcome.proxies),
            ));
            add(
                out,
                Metric::FleetStatesApplied,
                u64::from(outcome.applied.moved),
            );
            let skipped = u64::from(outcome.applied.unplaced).saturating_add(outcome.skipped);
            add(out, Metric::FleetStatesSkipped, skipped);
            if outcome.changed {
                out.push(Action::Log(
                    LogLevel::Info,
                    "fleet: exchanges work again; fleet-scoped limits count the whole fleet".into(),
                ));
            }
        } else {
            add(out, Metric::FleetExchangeFailures, 1);
            if outcome.changed {
                out.push(Action::Log(
                    LogLevel::Warn,
                    format!(
                        "fleet: exchange failed ({}); fleet-scoped limits fall back to this Envoy's share once the fleet's states are stale",
                        outcome.why.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
        }
    }

    /// Every [`SYNC_TICK`]: refills the quick-poll bucket, posts the events, sends a poll
    /// that an answer asked for, and every `feed.interval` the regular one. The first tick
    /// comes one [`SYNC_TICK`] after configuration, so a fresh Envoy asks for its snapshot
    /// at once.
    pub fn on_tick(&mut self, now: UnixNanos, store: &impl SharedStore) -> Vec<Action> {
        let mut out = Vec::new();
        self.exchange(&mut out, now);
        if self
            .fleet
            .as_ref()
            .is_some_and(|f| f.holds_first_poll(now.0))
        {
            return out;
        }
        self.ticks = self.ticks.saturating_add(1);
        self.refill(now);
        self.post_events(&mut out, store);
        let now = now.secs();
        let regular = self.ticks >= self.next_regular;
        if regular {
            let every = self.feed.interval_secs.saturating_mul(TICKS_PER_SEC).max(1);
            self.next_regular = self.ticks.saturating_add(every);
            if let Some(age) = feed::age_secs(store, now) {
                out.push(Action::Set(Metric::LastSyncAge, age));
            }
        }
        if let Some(poll) = self.in_flight {
            // Envoy always answers a dispatched call (at the latest with its timeout);
            // this only guards against a host that does not.
            let limit = poll.wait.saturating_add(UNANSWERED_GRACE_SECS);
            if !regular || now.saturating_sub(poll.sent) <= limit {
                return out;
            }
            self.in_flight = None;
        }
        let retry = self.retry_tick.is_some_and(|t| self.ticks >= t);
        if regular {
            self.poll_due = false;
            self.retry_tick = None;
            self.poll(&mut out, now, store);
        } else if (self.poll_due || retry) && self.quick_budget > 0 {
            self.retry_tick = None;
            self.poll_due = false;
            self.quick_budget -= 1;
            self.poll(&mut out, now, store);
        }
        out
    }

    /// Merges one worker batch from the events queue into the pending post.
    pub fn on_batch(&mut self, batch: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        match self.events.merge(batch) {
            Ok(dropped) => add(&mut out, Metric::EventsRefusalsDropped, dropped),
            Err(e) => out.push(Action::Log(
                LogLevel::Warn,
                format!("events: a worker batch was refused ({e:?}); dropped"),
            )),
        }
        out
    }

    /// The call of the last [`Action::Send`] of kind `call` went out as `token`.
    pub fn sent(&mut self, call: Call, token: u32) {
        match call {
            Call::Poll => {
                if let Some(poll) = self.sending.take() {
                    self.in_flight = Some(Poll { token, ..poll });
                }
            }
            Call::Events => {
                if let Some(batch) = self.events_sending.take() {
                    self.events_in_flight = Some((token, batch));
                }
            }
            Call::Exchange => {
                if let Some(fleet) = &mut self.fleet {
                    fleet.sent(token);
                }
            }
        }
    }

    /// The call of the last [`Action::Send`] of kind `call` could not be dispatched
    /// (`why`: the host's status).
    pub fn not_sent(&mut self, call: Call, why: &str) -> Vec<Action> {
        let mut out = Vec::new();
        match call {
            Call::Poll => {
                self.sending = None;
                self.failed(
                    &mut out,
                    &format!("not sent to cluster {}: {why}", self.feed.cluster),
                );
            }
            Call::Events => {
                if let Some(batch) = self.events_sending.take() {
                    let newer = std::mem::replace(&mut self.events, batch);
                    self.events.absorb(newer);
                }
                add(&mut out, Metric::EventsPostFailures, 1);
                out.push(Action::Log(
                    LogLevel::Warn,
                    format!(
                        "events: post not sent to cluster {}: {why}; kept for the next try",
                        self.feed.cluster
                    ),
                ));
            }
            Call::Exchange => {
                if let Some(fleet) = &mut self.fleet {
                    let outcome = fleet.failed(format!("not sent: {why}"));
                    Self::exchanged(&mut out, outcome);
                }
            }
        }
        out
    }

    /// Handles an answer (an events post's, or a poll's, even one given up on), then
    /// polls again at once when waiting for the next tick would only delay news (see the
    /// module documentation). `read_body` reads the answer's body of the given size; it
    /// is called only for a 200 that is not too large.
    pub fn on_answer(
        &mut self,
        now: UnixNanos,
        store: &impl SharedStore,
        answer: HttpAnswer<'_>,
        read_body: impl FnOnce(usize) -> Vec<u8>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(fleet) = self.fleet.as_mut().filter(|f| f.owns(answer.token)) {
            let outcome = fleet.answered(store, now.0, answer.status, answer.body_size, read_body);
            Self::exchanged(&mut out, outcome);
            // More states waiting: the next exchange goes at once.
            self.exchange(&mut out, now);
            return out;
        }
        if let Some((_, sent)) = self
            .events_in_flight
            .take_if(|(token, _)| *token == answer.token)
        {
            self.events_answer(&mut out, answer.status, sent);
            return out;
        }
        let ours = self.in_flight.filter(|p| p.token == answer.token);
        if ours.is_some() {
            self.in_flight = None;
        }
        let secs = now.secs();
        let continues = ours.is_some_and(|p| p.continues);
        let stopping = answer.stopping && ours.is_some();
        let next = self.answer(&mut out, store, answer, read_body, continues, secs);
        // A stopping server answered early: the next poll goes at once (a failure is
        // retried on the next tick anyway).
        let again = (stopping && !matches!(next, Next::Tick))
            || match next {
                Next::Tick => false,
                Next::Snapshot => ours.is_some_and(|p| p.since != 0),
                Next::Applied { version, news } => ours.is_some_and(|p| {
                    news || version > p.since
                        || secs.saturating_sub(p.sent).saturating_add(1) >= p.wait
                }),
            };
        if again && self.in_flight.is_none() {
            self.refill(now);
            if self.quick_budget > 0 {
                self.quick_budget -= 1;
                self.poll(&mut out, secs, store);
            } else {
                self.poll_due = true;
            }
        }
        out
    }

    fn failed(&mut self, out: &mut Vec<Action>, why: &str) {
        self.recovering = true;
        let every = self.feed.interval_secs.saturating_mul(TICKS_PER_SEC).max(1);
        let backoff = 1u64
            .checked_shl(
                self.failures_in_a_row
                    .saturating_add(1)
                    .saturating_sub(QUICK_RETRIES),
            )
            .unwrap_or(u64::MAX)
            .min(every);
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.retry_tick = Some(self.ticks.saturating_add(backoff));
        add(out, Metric::Failures, 1);
        out.push(Action::Log(
            LogLevel::Warn,
            format!("feed poll failed: {why}; keeping the last good cache"),
        ));
    }

    /// Hands the pending refusal audit to the plugin: at most once a second, one post at
    /// a time.
    fn post_events(&mut self, out: &mut Vec<Action>, store: &impl SharedStore) {
        if self.events_in_flight.is_some() || self.events.is_empty() {
            return;
        }
        if self
            .events_posted_tick
            .is_some_and(|t| self.ticks.saturating_sub(t) < TICKS_PER_SEC)
        {
            return;
        }
        let version = feed::read_state(store).map(|s| s.version);
        let body = self.events.body(self.proxy.as_deref(), version);
        self.events_posted_tick = Some(self.ticks);
        self.events_sending = Some(std::mem::take(&mut self.events));
        out.push(Action::Send(Request {
            call: Call::Events,
            cluster: self.feed.cluster.clone(),
            headers: vec![
                (":method", "POST".into()),
                (":path", events::PATH.into()),
                (":authority", self.feed.authority.clone()),
                ("authorization", self.authorization.clone()),
                ("content-type", "application/json".into()),
            ],
            body: Some(body),
            timeout: Duration::from_secs(EVENTS_POST_TIMEOUT_SECS),
        }));
    }

    /// The answer to an events post: done, kept for another try, or dropped.
    fn events_answer(&mut self, out: &mut Vec<Action>, status: &[u8], sent: events::Pending) {
        match events::Posted::from_status(status) {
            events::Posted::Accepted => {
                add(out, Metric::EventsPosts, 1);
                add(out, Metric::EventsRefusalsPosted, sent.refusals() as u64);
            }
            events::Posted::Retry => {
                add(out, Metric::EventsPostFailures, 1);
                let shown = if status.is_empty() { b"none" } else { status };
                out.push(Action::Log(
                    LogLevel::Warn,
                    format!(
                        "events: post failed (status {}); kept for the next try",
                        String::from_utf8_lossy(shown)
                    ),
                ));
                let newer = std::mem::replace(&mut self.events, sent);
                let dropped = self.events.absorb(newer);
                add(out, Metric::EventsRefusalsDropped, dropped);
            }
            events::Posted::Refused => {
                // Sent again it would be refused again (and a server without the events
                // endpoint would be asked every second): dropped whole, counted here.
                add(out, Metric::EventsPostFailures, 1);
                let dropped = sent.refusals() as u64;
                add(out, Metric::EventsRefusalsDropped, dropped);
                out.push(Action::Log(
                    LogLevel::Warn,
                    format!(
                        "events: the control service refused a post (status {}); its {dropped} refusals are dropped",
                        String::from_utf8_lossy(status)
                    ),
                ));
            }
        }
    }

    /// Adds the quick polls earned since the last refill (a token bucket).
    fn refill(&mut self, now: UnixNanos) {
        const EVERY_NS: u64 = 1_000_000_000 / QUICK_POLLS_PER_SEC;
        let earned = now.0.saturating_sub(self.refilled_at) / EVERY_NS;
        if earned == 0 {
            return;
        }
        self.refilled_at = self
            .refilled_at
            .saturating_add(earned.saturating_mul(EVERY_NS));
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.quick_budget = self
            .quick_budget
            .saturating_add(earned)
            .min(QUICK_POLL_BURST);
    }

    /// Hands the next long poll to the plugin: the rest of a snapshot under way, the
    /// changes after the version in `feed/state`, or a snapshot after a 410 or before
    /// the first answer ([`feed::Ask::next`]).
    fn poll(&mut self, out: &mut Vec<Action>, now: u64, store: &impl SharedStore) {
        let ask = feed::Ask::next(store, self.full_next);
        let wait = if self.recovering {
            0
        } else {
            self.feed.wait_secs
        };
        let path = ask.path(&self.feed.path, wait);
        let continues = matches!(ask, feed::Ask::Page { .. });
        let wait = if continues { 0 } else { wait };
        self.sending = Some(Poll {
            token: 0,
            sent: now,
            since: ask.since(),
            wait,
            continues,
        });
        out.push(Action::Send(Request {
            call: Call::Poll,
            cluster: self.feed.cluster.clone(),
            headers: vec![
                (":method", "GET".into()),
                (":path", path),
                (":authority", self.feed.authority.clone()),
                ("authorization", self.authorization.clone()),
                ("accept", "application/json".into()),
            ],
            body: None,
            timeout: Duration::from_secs(wait.saturating_add(POLL_TIMEOUT_MARGIN_SECS)),
        }));
    }

    /// Reads and applies one poll's answer; says what the next poll should be.
    fn answer(
        &mut self,
        out: &mut Vec<Action>,
        store: &impl SharedStore,
        answer: HttpAnswer<'_>,
        read_body: impl FnOnce(usize) -> Vec<u8>,
        continues: bool,
        now: u64,
    ) -> Next {
        match answer.status {
            b"200" => {}
            b"410" => {
                self.full_next = true;
                out.push(Action::Log(
                    LogLevel::Info,
                    "feed: the server no longer has our version (410); asking for a snapshot"
                        .into(),
                ));
                return Next::Snapshot;
            }
            b"" => {
                self.failed(out, "no answer (timeout or connection failure)");
                return Next::Tick;
            }
            b"400" if continues => {
                // The server cannot read our cursor (it may have been upgraded since):
                // asking with it again would fail forever, so the snapshot starts over.
                self.failed(
                    out,
                    "status 400 to a snapshot page; starting the snapshot over",
                );
                if let Err(e) = feed::drop_progress(store) {
                    self.failed(out, &format!("could not write to shared data: {e:?}"));
                }
                return Next::Tick;
            }
            other => {
                self.failed(out, &format!("status {}", String::from_utf8_lossy(other)));
                return Next::Tick;
            }
        }
        if answer.body_size > feed::MAX_ANSWER_BYTES {
            self.failed(
                out,
                &feed::FeedError::TooLarge(answer.body_size).to_string(),
            );
            return Next::Tick;
        }
        let parsed = match feed::parse_answer(&read_body(answer.body_size)) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.failed(out, &e.to_string());
                return Next::Tick;
            }
        };
        if parsed.skipped > 0 {
            add(out, Metric::RecordsSkipped, parsed.skipped as u64);
            out.push(Action::Log(
                LogLevel::Warn,
                format!(
                    "feed: skipped {} records that break the contract",
                    parsed.skipped
                ),
            ));
        }
        match &parsed.levers {
            Some(Err(e)) => {
                add(out, Metric::LeversRejected, 1);
                // The error names the list and the entry's index, never a value.
                out.push(Action::Log(
                    LogLevel::Warn,
                    format!("feed: levers refused, the previous set stays in force: {e}"),
                ));
            }
            Some(Ok((_, entries))) => {
                out.push(Action::Set(Metric::LeversEntries, *entries as u64));
                out.push(Action::Log(
                    LogLevel::Info,
                    format!(
                        "feed: levers of version {}: {entries} entries",
                        parsed.version
                    ),
                ));
            }
            None => {}
        }
        match feed::apply(store, &parsed, continues, now) {
            Ok(applied) => {
                self.full_next = false;
                let news = applied.snapshot || applied.entries > 0;
                if applied.complete {
                    out.push(Action::Set(Metric::Version, parsed.version));
                    out.push(Action::Set(Metric::LastSyncAge, 0));
                }
                out.push(Action::Set(Metric::Keys, applied.keys));
                add(out, Metric::EntriesApplied, applied.entries as u64);
                if applied.snapshot {
                    add(out, Metric::SnapshotPages, 1);
                }
                let what = match (applied.snapshot, applied.complete) {
                    (false, _) if parsed.more => " (more to come)".to_string(),
                    (false, _) => String::new(),
                    (true, false) => format!(
                        " (snapshot page, generation {}, {} keys so far)",
                        applied.generation, applied.keys
                    ),
                    (true, true) => format!(
                        " (snapshot complete: generation {}, {} keys; older key records retired)",
                        applied.generation, applied.keys
                    ),
                };
                out.push(Action::Log(
                    if news {
                        LogLevel::Info
                    } else {
                        LogLevel::Debug
                    },
                    format!(
                        "feed: version {} of epoch {}: {} entries{what}",
                        parsed.version, parsed.epoch, applied.entries,
                    ),
                ));
                self.recovering = false;
                self.failures_in_a_row = 0;
                self.retry_tick = None;
                Next::Applied {
                    version: parsed.version,
                    news,
                }
            }
            Err(e) => {
                self.failed(out, &format!("could not write to shared data: {e:?}"));
                Next::Tick
            }
        }
    }
}

/// A counter increment; nothing for zero, as the host call would do nothing.
fn add(out: &mut Vec<Action>, metric: Metric, n: u64) {
    if n > 0 {
        out.push(Action::Add(metric, n));
    }
}

#[cfg(test)]
mod tests {
    //! The sync on a virtual clock: [`Sim`] performs the actions as the plugin does
    //! (dispatching a [`Request`] hands out the next token, or fails when told to) and
    //! keeps what a user would see: the calls, the metrics, the log lines, shared data.

    use super::*;
    use crate::policy::OnStale;
    use crate::store::{MemoryStore, StoreError};
    use crate::sync::fixtures::{answer, key, record};
    use serde_json::{Value, json};
    use std::cell::Cell;
    use std::collections::HashMap;

    const NOW: u64 = 1_767_225_600;
    const TICK_NS: u64 = 100_000_000;

    /// A [`MemoryStore`] whose writes can be made to fail.
    #[derive(Default)]
    struct Store {
        inner: MemoryStore,
        refuse_writes: Cell<bool>,
    }

    impl SharedStore for Store {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if self.refuse_writes.get() {
                return Err(StoreError::Failed);
            }
            self.inner.set(key, value, cas)
        }
    }

    fn policy() -> FeedPolicy {
        FeedPolicy {
            cluster: "control".into(),
            authority: "control.internal".into(),
            path: "/v1/feed".into(),
            token_env: "GATEHOUSE_FEED_TOKEN".into(),
            interval_secs: 10,
            wait_secs: 25,
            staleness_secs: 300,
            on_stale: OnStale::FailClosed,
        }
    }

    struct Sim {
        schedule: Schedule,
        store: Store,
        /// Virtual unix ns.
        now: u64,
        next_token: u32,
        /// Dispatching fails with this host status while set.
        refuse_sends: Option<&'static str>,
        /// Every call dispatched, with its token.
        calls: Vec<(u32, Request)>,
        /// Every action performed, in order (the `Send`s included).
        done: Vec<Action>,
        counters: HashMap<&'static str, u64>,
        gauges: HashMap<&'static str, u64>,
    }

    impl Sim {
        fn new() -> Sim {
            let now = UnixNanos::from_secs(NOW);
            Sim {
                schedule: Schedule::new(
                    policy(),
                    "Bearer feed-token".into(),
                    Some("envoy_1".into()),
                    now,
                ),
                store: Store::default(),
                now: now.0,
                next_token: 1,
                refuse_sends: None,
                calls: Vec::new(),
                done: Vec::new(),
                counters: HashMap::new(),
                gauges: HashMap::new(),
            }
        }

        fn perform(&mut self, actions: Vec<Action>) {
            for action in actions {
                self.done.push(action.clone());
                match action {
                    Action::Send(request) => match self.refuse_sends {
                        Some(why) => {
                            let more = self.schedule.not_sent(request.call, why);
                            self.perform(more);
                        }
                        None => {
                            let token = self.next_token;
                            self.next_token += 1;
                            self.schedule.sent(request.call, token);
                            self.calls.push((token, request));
                        }
                    },
                    Action::Add(m, n) => {
                        assert!(!m.is_gauge() && n > 0, "{m:?} += {n}");
                        *self.counters.entry(m.name()).or_default() += n;
                    }
                    Action::Set(m, v) => {
                        assert!(m.is_gauge(), "{m:?} = {v}");
                        self.gauges.insert(m.name(), v);
                    }
                    Action::Log(..) => {}
                }
            }
        }

        fn tick(&mut self) {
            self.now += TICK_NS;
            let actions = self.schedule.on_tick(UnixNanos(self.now), &self.store);
            self.perform(actions);
        }

        fn ticks(&mut self, n: usize) {
            for _ in 0..n {
                self.tick();
            }
        }

        /// Passes time without a tick (an answer comes between ticks).
        fn wait_secs(&mut self, secs: u64) {
            self.now += secs * 1_000_000_000;
        }

        fn answer(&mut self, token: u32, status: &str, body: &[u8]) {
            let answer = HttpAnswer {
                token,
                status: status.as_bytes(),
                body_size: body.len(),
                stopping: false,
            };
            let actions =
                self.schedule
                    .on_answer(UnixNanos(self.now), &self.store, answer, |size| {
                        assert_eq!(size, body.len());
                        body.to_vec()
                    });
            self.perform(actions);
        }

        /// Answers the last call.
        fn answer_last(&mut self, status: &str, body: &[u8]) {
            let token = self.last().0;
            self.answer(token, status, body);
        }

        fn batch(&mut self, batch: &[u8]) {
            let actions = self.schedule.on_batch(batch);
            self.perform(actions);
        }

        fn last(&self) -> &(u32, Request) {
            self.calls.last().expect("a call was sent")
        }

        fn polls(&self) -> Vec<String> {
            self.calls
                .iter()
                .filter(|(_, r)| r.call == Call::Poll)
                .filter_map(|(_, r)| r.header(":path").map(str::to_string))
                .collect()
        }

        fn posts(&self) -> Vec<Value> {
            self.calls
                .iter()
                .filter(|(_, r)| r.call == Call::Events)
                .map(|(_, r)| serde_json::from_str(r.body.as_deref().unwrap_or("")).unwrap())
                .collect()
        }

        fn counter(&self, m: Metric) -> u64 {
            self.counters.get(m.name()).copied().unwrap_or(0)
        }

        fn gauge(&self, m: Metric) -> Option<u64> {
            self.gauges.get(m.name()).copied()
        }

        fn logs(&self) -> Vec<(LogLevel, &str)> {
            self.done
                .iter()
                .filter_map(|a| match a {
                    Action::Log(level, line) => Some((*level, line.as_str())),
                    _ => None,
                })
                .collect()
        }

        fn last_log(&self) -> (LogLevel, &str) {
            *self.logs().last().expect("a line was logged")
        }

        fn take_done(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.done)
        }
    }

    fn exchanges(sim: &Sim) -> Vec<Value> {
        sim.calls
            .iter()
            .filter(|(_, r)| r.call == Call::Exchange)
            .map(|(_, r)| serde_json::from_str(r.body.as_deref().unwrap_or("")).unwrap())
            .collect()
    }

    fn fleet_sim() -> Sim {
        let mut sim = Sim::new();
        let table = crate::limit::Table {
            slots: 1024,
            address_slots: 1024,
            on_contention: crate::limit::OnContention::Refuse,
        };
        sim.schedule.enable_fleet(table, 250, UnixNanos(sim.now));
        crate::limit::prepare(&sim.store, &table, &[1; 32]).unwrap();
        sim
    }

    #[test]
    fn with_fleet_limits_the_first_exchange_goes_before_the_first_poll() {
        let mut sim = fleet_sim();
        sim.tick();
        assert_eq!(exchanges(&sim).len(), 1);
        assert!(sim.polls().is_empty(), "the key poll waits for the fleet");
        let (token, request) = sim.last().clone();
        assert_eq!(request.header(":path"), Some("/v1/limits/exchange"));
        assert_eq!(request.header("authorization"), Some("Bearer feed-token"));
        assert_eq!(exchanges(&sim)[0]["proxy"], "envoy_1");
        sim.tick();
        assert!(sim.polls().is_empty());
        let states = json!([{"limit": "plan:free", "caller": "u:a", "kind": "i",
                             "ahead_us": 1_000_000u64}]);
        let body = json!({"cursor": "3", "more": false, "proxies": 2, "states": states});
        sim.answer(token, "200", body.to_string().as_bytes());
        assert_eq!(sim.counter(Metric::FleetExchanges), 1);
        assert_eq!(sim.counter(Metric::FleetStatesApplied), 1);
        assert_eq!(sim.gauge(Metric::FleetProxies), Some(2));
        let view = crate::limit::fleet::View::read(&sim.store).unwrap();
        assert_eq!(view.proxies, 2);
        sim.tick();
        assert_eq!(sim.polls().len(), 1, "then the keys");
        // Every 250 ms (on the 100 ms tick: the third), with the cursor; the poll held by
        // the server does not hold the exchanges up.
        sim.ticks(2);
        let sent = exchanges(&sim);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1]["cursor"], "3");
    }

    #[test]
    fn worker_tallies_are_reported_and_a_failure_keeps_them_and_logs_once() {
        let mut sim = fleet_sim();
        let tally = crate::limit::fleet::Tally::default();
        let check = crate::limit::Check {
            limit: "plan:free",
            caller: "u:a",
            rate: crate::limit::Rate {
                requests: 60,
                period_nanos: 60_000_000_000,
                burst: 60,
            },
            kind: crate::limit::CallerKind::Identified,
        };
        tally.record(&check);
        tally.record(&check);
        let actions = sim.schedule.on_fleet_batch(&tally.take_batch().unwrap());
        sim.perform(actions);
        sim.tick();
        assert_eq!(exchanges(&sim)[0]["used"][0]["n"], 2);
        sim.answer_last("503", b"");
        assert_eq!(sim.counter(Metric::FleetExchangeFailures), 1);
        assert!(
            sim.last_log()
                .1
                .contains("fleet: exchange failed (status 503)")
        );
        let logged = sim.logs().len();
        sim.ticks(1);
        assert_eq!(
            sim.polls().len(),
            1,
            "a failed first exchange releases the poll"
        );
        sim.ticks(2);
        let sent = exchanges(&sim);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1]["used"][0]["n"], 2, "sent again");
        sim.answer_last("", b"");
        assert_eq!(sim.counter(Metric::FleetExchangeFailures), 2);
        assert!(
            sim.logs()[logged..]
                .iter()
                .all(|(_, l)| !l.starts_with("fleet:")),
            "still failing: not logged again"
        );
        let actions = sim.schedule.on_fleet_batch(b"junk");
        sim.perform(actions);
        assert!(sim.last_log().1.contains("unreadable"));
    }

    fn refusals(from: u64, n: u64) -> Vec<u8> {
        let refusals: Vec<Value> = (from..from + n)
            .map(|i| json!({"at": i, "request_id": format!("r{i}"), "code": "NOT_FOUND"}))
            .collect();
        json!({"refusals": refusals, "key_uses": [], "requests": [], "dropped": 0})
            .to_string()
            .into_bytes()
    }

    fn refusal_ids(post: &Value) -> Vec<&str> {
        post["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap())
            .collect()
    }

    /// A sync that has applied a snapshot of version 5 (key 1) and has the next long
    /// poll in flight.
    fn synced() -> Sim {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("200", &answer("e1", 5, true, vec![key(1, true)]));
        sim
    }

    // Polls.

    #[test]
    fn the_first_tick_asks_for_a_snapshot_held_the_full_wait() {
        let mut sim = Sim::new();
        sim.now += TICK_NS;
        let actions = sim.schedule.on_tick(UnixNanos(sim.now), &sim.store);
        assert_eq!(
            actions,
            [Action::Send(Request {
                call: Call::Poll,
                cluster: "control".into(),
                headers: vec![
                    (":method", "GET".into()),
                    (":path", "/v1/feed?since=0&wait=25&paged=true".into()),
                    (":authority", "control.internal".into()),
                    ("authorization", "Bearer feed-token".into()),
                    ("accept", "application/json".into()),
                ],
                body: None,
                timeout: Duration::from_secs(30),
            })]
        );
    }

    #[test]
    fn an_answer_with_changes_is_applied_and_polled_again_at_once() {
        let sim = synced();
        assert!(record(&sim.store, 1).is_some_and(|r| r.active));
        assert_eq!(
            sim.polls(),
            [
                "/v1/feed?since=0&wait=25&paged=true",
                "/v1/feed?since=5&epoch=e1&wait=25&paged=true"
            ]
        );
        assert_eq!(sim.gauge(Metric::Version), Some(5));
        assert_eq!(sim.gauge(Metric::Keys), Some(1));
        assert_eq!(sim.gauge(Metric::LastSyncAge), Some(0));
        assert_eq!(sim.counter(Metric::EntriesApplied), 1);
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Info,
                "feed: version 5 of epoch e1: 1 entries (snapshot complete: generation 1, 1 keys; older key records retired)"
            )
        );
    }

    #[test]
    fn an_answer_with_nothing_new_before_the_wait_waits_for_the_regular_poll() {
        let mut sim = synced();
        sim.wait_secs(3);
        sim.answer_last("200", &answer("e1", 5, false, vec![]));
        assert_eq!(
            sim.last_log(),
            (LogLevel::Debug, "feed: version 5 of epoch e1: 0 entries")
        );
        assert_eq!(sim.polls().len(), 2);
        // The regular poll: `interval` (10 s) after the first tick.
        sim.ticks(99);
        assert_eq!(sim.polls().len(), 2);
        sim.tick();
        assert_eq!(sim.polls().len(), 3);
    }

    #[test]
    fn a_newer_version_without_entries_is_polled_again_at_once() {
        let mut sim = synced();
        sim.answer_last("200", &answer("e1", 6, false, vec![]));
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=6&epoch=e1&wait=25&paged=true"
        );
    }

    #[test]
    fn a_poll_held_its_full_wait_is_followed_at_once() {
        let mut sim = synced();
        sim.wait_secs(24);
        sim.answer_last("200", &answer("e1", 5, false, vec![]));
        assert_eq!(sim.polls().len(), 3);
    }

    #[test]
    fn a_burst_of_quick_polls_is_followed_by_the_refill_rate() {
        let mut sim = Sim::new();
        let mut version = 0;
        let mut polls_per_tick = Vec::new();
        for _ in 0..11 {
            let before = sim.polls().len();
            sim.tick();
            // A server with a change for every poll, answering at once.
            while let Some(poll) = sim.schedule.in_flight {
                version += 1;
                sim.answer(
                    poll.token,
                    "200",
                    &answer("e1", version, false, vec![key(1, true)]),
                );
            }
            polls_per_tick.push(sim.polls().len() - before);
        }
        // The regular poll and the bucket of 16, then 50 a second: 5 per 100 ms tick.
        assert_eq!(polls_per_tick, [17, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]);
        assert!(sim.schedule.poll_due);
    }

    #[test]
    fn the_bucket_refills_to_its_burst_and_no_further() {
        let mut sim = Sim::new();
        sim.schedule.quick_budget = 0;
        sim.now += 10 * 1_000_000_000;
        sim.schedule.refill(UnixNanos(sim.now));
        assert_eq!(sim.schedule.quick_budget, QUICK_POLL_BURST);
        sim.now += 19_000_000;
        sim.schedule.quick_budget = 0;
        sim.schedule.refill(UnixNanos(sim.now));
        assert_eq!(sim.schedule.quick_budget, 0);
        sim.now += 1_000_000;
        sim.schedule.refill(UnixNanos(sim.now));
        assert_eq!(sim.schedule.quick_budget, 1);
    }

    #[test]
    fn a_410_asks_for_a_snapshot() {
        let mut sim = synced();
        sim.answer_last("410", b"");
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Info,
                "feed: the server no longer has our version (410); asking for a snapshot"
            )
        );
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=0&wait=25&paged=true"
        );
        assert_eq!(sim.counter(Metric::Failures), 0);
        sim.answer_last("200", &answer("e2", 7, true, vec![key(1, true)]));
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=7&epoch=e2&wait=25&paged=true"
        );
    }

    #[test]
    fn a_410_to_a_snapshot_poll_waits_for_the_regular_poll_and_asks_again() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("410", b"");
        assert_eq!(sim.polls().len(), 1);
        sim.ticks(100);
        assert_eq!(sim.polls(), ["/v1/feed?since=0&wait=25&paged=true"; 2]);
    }

    #[test]
    fn a_snapshot_is_asked_for_until_one_is_applied() {
        let mut sim = synced();
        sim.answer_last("410", b"");
        sim.answer_last("503", b"");
        sim.ticks(100);
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=0&wait=0&paged=true"
        );
    }

    #[test]
    fn a_failed_poll_is_counted_and_the_next_one_asks_not_to_be_held() {
        let mut sim = synced();
        sim.answer_last("503", b"");
        assert_eq!(sim.counter(Metric::Failures), 1);
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Warn,
                "feed poll failed: status 503; keeping the last good cache"
            )
        );
        assert_eq!(sim.polls().len(), 2, "not at once after a failure ...");
        sim.tick();
        assert_eq!(sim.polls().len(), 3, "... but on the next tick");
        let (_, poll) = sim.last();
        assert_eq!(
            poll.header(":path"),
            Some("/v1/feed?since=5&epoch=e1&wait=0&paged=true")
        );
        assert_eq!(poll.timeout, Duration::from_secs(5));
        // A `wait=0` poll is held its full wait: the next long poll follows at once.
        sim.answer_last("200", &answer("e1", 5, false, vec![]));
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=5&epoch=e1&wait=25&paged=true"
        );
    }

    #[test]
    fn a_failed_poll_is_tried_again_on_the_next_tick_then_ever_later() {
        let mut sim = synced();
        // 100 ms ten times, then 200, 400, 800 ms ... up to `interval` (10 s) between
        // tries (the regular poll, every 10 s, would cut the next gap short).
        let mut gaps = Vec::new();
        for _ in 0..14 {
            let before = sim.polls().len();
            sim.answer_last("503", b"");
            let mut ticks = 0;
            while sim.polls().len() == before {
                sim.tick();
                ticks += 1;
            }
            gaps.push(ticks);
        }
        assert_eq!(gaps, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 16]);
        // A success ends it: the next failure is tried again on the next tick.
        sim.answer_last("200", &answer("e1", 5, false, vec![]));
        sim.answer_last("503", b"");
        let before = sim.polls().len();
        sim.tick();
        assert_eq!(sim.polls().len(), before + 1);
    }

    #[test]
    fn a_stopping_servers_early_answer_is_followed_at_once() {
        let mut sim = synced();
        sim.wait_secs(3);
        let token = sim.last().0;
        let body = answer("e1", 5, false, vec![]);
        let actions = sim.schedule.on_answer(
            UnixNanos(sim.now),
            &sim.store,
            HttpAnswer {
                token,
                status: b"200",
                body_size: body.len(),
                stopping: true,
            },
            |_| body.clone(),
        );
        sim.perform(actions);
        assert_eq!(sim.polls().len(), 3, "not held until the regular poll");
    }

    #[test]
    fn no_answer_is_a_failure() {
        let mut sim = synced();
        sim.answer_last("", b"");
        assert_eq!(sim.counter(Metric::Failures), 1);
        assert_eq!(
            sim.last_log().1,
            "feed poll failed: no answer (timeout or connection failure); keeping the last good cache"
        );
    }

    #[test]
    fn an_answer_too_large_is_a_failure_and_never_read() {
        let mut sim = synced();
        let token = sim.last().0;
        let size = feed::MAX_ANSWER_BYTES + 1;
        let answer = HttpAnswer {
            token,
            status: b"200",
            body_size: size,
            stopping: false,
        };
        let actions = sim
            .schedule
            .on_answer(UnixNanos(sim.now), &sim.store, answer, |_| {
                panic!("a body over the bound is read")
            });
        sim.perform(actions);
        assert_eq!(sim.counter(Metric::Failures), 1);
        assert_eq!(
            sim.last_log().1,
            format!(
                "feed poll failed: {}; keeping the last good cache",
                feed::FeedError::TooLarge(size)
            )
        );
    }

    #[test]
    fn an_answer_that_is_not_json_is_a_failure() {
        let mut sim = synced();
        sim.answer_last("200", b"{not json");
        assert_eq!(sim.counter(Metric::Failures), 1);
        assert_eq!(
            sim.last_log().1,
            format!(
                "feed poll failed: {}; keeping the last good cache",
                feed::FeedError::NotJson
            )
        );
        assert_eq!(sim.gauge(Metric::Version), Some(5));
    }

    #[test]
    fn levers_are_stored_whole_and_a_bad_set_is_refused_keeping_the_last() {
        let with_levers = |version: u64, levers: Value| {
            let mut a: Value =
                serde_json::from_slice(&answer("e1", version, false, vec![])).unwrap();
            a["levers"] = levers;
            a.to_string()
        };
        let mut sim = synced();
        let good = json!({"modes": [{"limit": "team", "mode": "off"}]});
        sim.answer_last("200", with_levers(6, good).as_bytes());
        assert_eq!(sim.gauge(Metric::LeversEntries), Some(1));
        let stored = crate::levers::read(&sim.store).unwrap();
        assert_eq!(stored.mode("team"), Some(crate::levers::Mode::Off));
        let stamp = crate::levers::read_stamp(&sim.store);
        // A user override at 0 a minute breaks the contract: refused whole, counted, and
        // logged by its place, never its values; the rest of the answer is applied.
        let bad = json!({"overrides": [{"scope": "key", "id": "key_secretish", "requests_per_minute": 0}]});
        sim.answer_last("200", with_levers(7, bad).as_bytes());
        assert_eq!(sim.counter(Metric::LeversRejected), 1);
        assert!(sim.logs().contains(&(
            LogLevel::Warn,
            "feed: levers refused, the previous set stays in force: overrides[0] breaks the contract"
        )));
        assert!(!sim.logs().iter().any(|(_, l)| l.contains("key_secretish")));
        assert_eq!(crate::levers::read_stamp(&sim.store), stamp);
        assert_eq!(
            crate::sync::feed::read_state(&sim.store).unwrap().version,
            7
        );
        // Without the field: unchanged.
        sim.answer_last("200", &answer("e1", 8, false, vec![]));
        assert_eq!(crate::levers::read_stamp(&sim.store), stamp);
        assert_eq!(sim.counter(Metric::LeversRejected), 1);
    }

    #[test]
    fn records_that_break_the_contract_are_skipped_and_counted() {
        let mut sim = synced();
        let bad = json!({"sha256": "nothex", "key_id": "key_9", "active": true});
        sim.answer_last("200", &answer("e1", 6, false, vec![key(2, true), bad]));
        assert_eq!(sim.counter(Metric::RecordsSkipped), 1);
        assert!(sim.logs().contains(&(
            LogLevel::Warn,
            "feed: skipped 1 records that break the contract"
        )));
        assert!(record(&sim.store, 2).is_some());
    }

    #[test]
    fn a_snapshot_without_a_fed_key_retires_it_and_says_so() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last(
            "200",
            &answer("e1", 1, true, vec![key(1, true), key(2, true)]),
        );
        sim.answer_last("200", &answer("e1", 2, true, vec![key(1, true)]));
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Info,
                "feed: version 2 of epoch e1: 1 entries (snapshot complete: generation 2, 1 keys; older key records retired)"
            )
        );
        let state = feed::read_state(&sim.store).unwrap();
        assert!(record(&sim.store, 2).is_some_and(|r| r.generation < state.generation));
        assert!(record(&sim.store, 1).is_some_and(|r| r.generation == state.generation));
        assert_eq!(sim.gauge(Metric::Keys), Some(1));
    }

    /// A snapshot page of the control service: `next` is the following page's cursor.
    fn page(version: u64, keys: Vec<Value>, next: Option<&str>) -> Vec<u8> {
        json!({"epoch": "e1", "version": version, "full": true, "next": next, "keys": keys})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_snapshot_is_read_page_by_page_at_once_then_its_changes() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("200", &page(7, vec![key(1, true)], Some("c1")));
        sim.answer_last("200", &page(7, vec![key(2, true)], Some("c2")));
        assert_eq!(
            sim.gauge(Metric::Version),
            None,
            "no version before the last page"
        );
        sim.answer_last("200", &page(7, vec![key(3, true)], None));
        assert_eq!(
            sim.polls(),
            [
                "/v1/feed?since=0&wait=25&paged=true",
                "/v1/feed?since=0&epoch=e1&after=c1&wait=0&paged=true",
                "/v1/feed?since=0&epoch=e1&after=c2&wait=0&paged=true",
                "/v1/feed?since=7&epoch=e1&wait=25&paged=true",
            ]
        );
        assert_eq!(sim.last().1.timeout, Duration::from_secs(30));
        assert_eq!(sim.counter(Metric::SnapshotPages), 3);
        assert_eq!(sim.gauge(Metric::Version), Some(7));
        assert_eq!(sim.gauge(Metric::Keys), Some(3));
        assert!(sim.logs().contains(&(
            LogLevel::Info,
            "feed: version 7 of epoch e1: 1 entries (snapshot page, generation 1, 2 keys so far)"
        )));
    }

    #[test]
    fn a_page_asks_the_server_not_to_hold_it() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("200", &page(7, vec![key(1, true)], Some("c1")));
        assert_eq!(
            sim.last().1.timeout,
            Duration::from_secs(POLL_TIMEOUT_MARGIN_SECS)
        );
    }

    #[test]
    fn a_failed_page_is_asked_again_from_the_same_place() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("200", &page(7, vec![key(1, true)], Some("c1")));
        sim.answer_last("503", b"");
        sim.ticks(100);
        assert_eq!(sim.polls().len(), 3);
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=0&epoch=e1&after=c1&wait=0&paged=true"
        );
        sim.answer_last("200", &page(7, vec![key(2, true)], None));
        assert_eq!(feed::read_state(&sim.store).unwrap().keys, 2);
    }

    #[test]
    fn a_restarted_sync_goes_on_with_the_snapshot_under_way() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("200", &page(7, vec![key(1, true)], Some("c1")));
        // A new sync VM on the same shared data.
        sim.schedule = Schedule::new(
            policy(),
            "Bearer feed-token".into(),
            None,
            UnixNanos(sim.now),
        );
        sim.tick();
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=0&epoch=e1&after=c1&wait=0&paged=true"
        );
        sim.answer_last("200", &page(7, vec![key(2, true)], None));
        let state = feed::read_state(&sim.store).unwrap();
        assert_eq!(
            (state.generation, state.keys),
            (1, 2),
            "one snapshot, not two"
        );
    }

    #[test]
    fn a_page_the_server_cannot_read_starts_the_snapshot_over() {
        let mut sim = Sim::new();
        sim.tick();
        sim.answer_last("200", &page(7, vec![key(1, true)], Some("c1")));
        sim.answer_last("400", b"");
        assert_eq!(sim.counter(Metric::Failures), 1);
        sim.ticks(100);
        assert_eq!(sim.polls().len(), 3);
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=0&wait=0&paged=true"
        );
    }

    #[test]
    fn changes_with_more_to_come_are_followed_at_once() {
        let mut sim = synced();
        let body = json!({"epoch": "e1", "version": 6, "more": true, "keys": [key(2, true)]});
        sim.answer_last("200", body.to_string().as_bytes());
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Info,
                "feed: version 6 of epoch e1: 1 entries (more to come)"
            )
        );
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=6&epoch=e1&wait=25&paged=true"
        );
    }

    #[test]
    fn an_answer_that_cannot_be_written_to_shared_data_is_a_failure() {
        let mut sim = synced();
        sim.store.refuse_writes.set(true);
        sim.answer_last("200", &answer("e1", 6, false, vec![key(2, true)]));
        assert_eq!(sim.counter(Metric::Failures), 1);
        assert_eq!(
            sim.last_log().1,
            "feed poll failed: could not write to shared data: Failed; keeping the last good cache"
        );
        assert_eq!(sim.polls().len(), 2);
    }

    #[test]
    fn a_poll_that_could_not_be_sent_is_a_failure_and_the_next_asks_not_to_be_held() {
        let mut sim = Sim::new();
        sim.refuse_sends = Some("BadArgument");
        sim.tick();
        assert!(sim.calls.is_empty());
        assert_eq!(sim.counter(Metric::Failures), 1);
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Warn,
                "feed poll failed: not sent to cluster control: BadArgument; keeping the last good cache"
            )
        );
        sim.refuse_sends = None;
        // Nothing is in flight: the next regular tick polls.
        sim.ticks(100);
        assert_eq!(sim.polls(), ["/v1/feed?since=0&wait=0&paged=true"]);
    }

    #[test]
    fn a_poll_that_is_never_answered_is_given_up_after_its_wait_and_ten_seconds() {
        let mut sim = Sim::new();
        sim.tick();
        let lost = sim.last().0;
        // Regular ticks at 10, 20 and 30 s: within 25 + 10 s of the send.
        sim.ticks(300);
        assert_eq!(sim.polls().len(), 1);
        // At 40 s the poll is forgotten and the regular one goes out.
        sim.ticks(100);
        assert_eq!(sim.polls().len(), 2);
        // Its late answer is still applied, but it is not ours: no poll follows.
        sim.answer(lost, "200", &answer("e1", 3, true, vec![key(1, true)]));
        assert_eq!(sim.gauge(Metric::Version), Some(3));
        assert_eq!(sim.polls().len(), 2);
    }

    #[test]
    fn a_poll_answered_quicker_than_a_tick_is_not_repeated_by_the_tick_between() {
        let mut sim = synced();
        sim.take_done();
        sim.tick();
        assert!(
            sim.take_done().is_empty(),
            "a poll is in flight, no news due"
        );
    }

    #[test]
    fn a_poll_due_with_an_empty_bucket_goes_out_on_a_later_tick() {
        let mut sim = synced();
        sim.schedule.quick_budget = 0;
        sim.schedule.refilled_at = sim.now;
        sim.answer_last("200", &answer("e1", 6, false, vec![key(2, true)]));
        assert_eq!(sim.polls().len(), 2);
        assert!(sim.schedule.poll_due);
        // 100 ms later the bucket has earned 5.
        sim.tick();
        assert_eq!(
            sim.polls().last().unwrap(),
            "/v1/feed?since=6&epoch=e1&wait=25&paged=true"
        );
        assert_eq!(sim.schedule.quick_budget, 4);
        assert!(!sim.schedule.poll_due);
    }

    #[test]
    fn a_poll_due_waits_while_the_bucket_is_empty() {
        let mut sim = synced();
        sim.answer_last("200", &answer("e1", 5, false, vec![]));
        sim.schedule.poll_due = true;
        sim.schedule.quick_budget = 0;
        sim.schedule.refilled_at = u64::MAX;
        sim.tick();
        assert_eq!(sim.polls().len(), 2);
        assert!(sim.schedule.poll_due);
    }

    #[test]
    fn the_regular_tick_reports_the_cache_age() {
        let mut sim = Sim::new();
        sim.tick();
        assert_eq!(sim.gauge(Metric::LastSyncAge), None, "nothing recorded yet");
        feed::mark_started(&sim.store, NOW - 3).unwrap();
        sim.ticks(100);
        assert_eq!(sim.gauge(Metric::LastSyncAge), Some(13));
        sim.answer_last("200", &answer("e1", 1, true, vec![]));
        sim.wait_secs(4);
        sim.ticks(100);
        assert_eq!(sim.gauge(Metric::LastSyncAge), Some(14));
    }

    // Events.

    #[test]
    fn worker_batches_are_posted_once_a_second_with_proxy_and_cache_version() {
        let mut sim = synced();
        sim.batch(&refusals(1, 2));
        sim.batch(&refusals(3, 1));
        sim.take_done();
        sim.tick();
        let (token, post) = sim.last().clone();
        assert_eq!(
            (post.call, post.cluster.as_str(), post.timeout),
            (Call::Events, "control", Duration::from_secs(5))
        );
        assert_eq!(
            post.headers,
            vec![
                (":method", "POST".into()),
                (":path", "/v1/events".into()),
                (":authority", "control.internal".into()),
                ("authorization", "Bearer feed-token".into()),
                ("content-type", "application/json".into()),
            ]
        );
        let body = &sim.posts()[0];
        assert_eq!(
            (&body["proxy"], &body["cache_version"]),
            (&json!("envoy_1"), &json!(5))
        );
        assert_eq!(refusal_ids(body), ["r1", "r2", "r3"]);
        // One post at a time.
        sim.batch(&refusals(4, 1));
        sim.ticks(20);
        assert_eq!(sim.posts().len(), 1);
        sim.answer(token, "204", b"");
        assert_eq!(sim.counter(Metric::EventsPosts), 1);
        assert_eq!(sim.counter(Metric::EventsRefusalsPosted), 3);
        assert_eq!(sim.polls().len(), 2, "an events answer is no poll's");
        sim.tick();
        assert_eq!(refusal_ids(&sim.posts()[1]), ["r4"]);
        // At most one a second.
        let token = sim.last().0;
        sim.answer(token, "200", b"");
        sim.batch(&refusals(5, 1));
        sim.ticks(9);
        assert_eq!(sim.posts().len(), 2);
        sim.tick();
        assert_eq!(sim.posts().len(), 3);
    }

    #[test]
    fn nothing_is_posted_without_events() {
        let mut sim = synced();
        sim.ticks(50);
        assert!(sim.posts().is_empty());
    }

    #[test]
    fn a_failed_post_is_retried_on_a_later_tick() {
        let mut sim = Sim::new();
        sim.batch(&refusals(1, 2));
        sim.tick();
        let token = sim.calls[0].0;
        assert_eq!(
            sim.posts()[0].get("cache_version"),
            None,
            "nothing applied yet"
        );
        sim.batch(&refusals(3, 1));
        sim.answer(token, "503", b"");
        assert_eq!(sim.counter(Metric::EventsPostFailures), 1);
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Warn,
                "events: post failed (status 503); kept for the next try"
            )
        );
        sim.ticks(9);
        assert_eq!(sim.posts().len(), 1);
        sim.tick();
        assert_eq!(refusal_ids(&sim.posts()[1]), ["r1", "r2", "r3"]);
    }

    #[test]
    fn a_post_without_an_answer_is_retried_and_logged_with_status_none() {
        let mut sim = Sim::new();
        sim.batch(&refusals(1, 1));
        sim.tick();
        let token = sim.calls[0].0;
        sim.answer(token, "", b"");
        assert_eq!(
            sim.last_log().1,
            "events: post failed (status none); kept for the next try"
        );
        sim.ticks(10);
        assert_eq!(refusal_ids(&sim.posts()[1]), ["r1"]);
    }

    #[test]
    fn a_retried_post_keeps_its_refusals_ahead_and_drops_what_finds_no_room() {
        let mut sim = Sim::new();
        sim.batch(&refusals(0, events::MAX_REFUSALS as u64));
        sim.tick();
        let token = sim.calls[0].0;
        sim.batch(&refusals(5000, 2));
        sim.answer(token, "500", b"");
        assert_eq!(sim.counter(Metric::EventsRefusalsDropped), 2);
        sim.ticks(10);
        let post = &sim.posts()[1];
        assert_eq!(refusal_ids(post).first(), Some(&"r0"));
        assert_eq!(refusal_ids(post).len(), events::MAX_REFUSALS);
        assert_eq!(post["dropped"], json!(2));
    }

    #[test]
    fn a_post_the_server_refuses_is_dropped_whole() {
        let mut sim = Sim::new();
        sim.batch(&refusals(1, 3));
        sim.tick();
        let token = sim.calls[0].0;
        sim.answer(token, "400", b"");
        assert_eq!(sim.counter(Metric::EventsPostFailures), 1);
        assert_eq!(sim.counter(Metric::EventsRefusalsDropped), 3);
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Warn,
                "events: the control service refused a post (status 400); its 3 refusals are dropped"
            )
        );
        sim.ticks(30);
        assert_eq!(sim.posts().len(), 1);
    }

    #[test]
    fn a_post_that_could_not_be_sent_is_kept_for_the_next_try() {
        let mut sim = Sim::new();
        sim.batch(&refusals(1, 1));
        sim.refuse_sends = Some("InternalFailure");
        sim.tick();
        assert_eq!(sim.counter(Metric::EventsPostFailures), 1);
        assert_eq!(
            sim.logs().first().copied(),
            Some((
                LogLevel::Warn,
                "events: post not sent to cluster control: InternalFailure; kept for the next try"
            ))
        );
        sim.refuse_sends = None;
        sim.batch(&refusals(2, 1));
        sim.ticks(10);
        assert_eq!(refusal_ids(&sim.posts()[0]), ["r1", "r2"]);
    }

    #[test]
    fn the_events_post_goes_out_before_the_poll_on_the_same_tick() {
        let mut sim = Sim::new();
        sim.batch(&refusals(1, 1));
        sim.tick();
        let calls: Vec<Call> = sim.calls.iter().map(|(_, r)| r.call).collect();
        assert_eq!(calls, [Call::Events, Call::Poll]);
    }

    #[test]
    fn a_malformed_worker_batch_is_logged_and_dropped() {
        let mut sim = Sim::new();
        sim.batch(b"[]");
        assert_eq!(
            sim.last_log(),
            (
                LogLevel::Warn,
                "events: a worker batch was refused (Malformed); dropped"
            )
        );
        sim.ticks(10);
        assert!(sim.posts().is_empty());
    }

    #[test]
    fn refusals_beyond_the_bound_are_counted_as_dropped() {
        let mut sim = Sim::new();
        sim.batch(&refusals(0, events::MAX_REFUSALS as u64 + 1));
        assert_eq!(sim.counter(Metric::EventsRefusalsDropped), 1);
    }

    #[test]
    fn every_metric_has_a_distinct_name_under_gatehouse() {
        let names: std::collections::HashSet<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
        assert!(names.iter().all(|n| n.starts_with("gatehouse.")));
        assert!(
            Metric::ALL
                .iter()
                .enumerate()
                .all(|(i, m)| *m as usize == i)
        );
    }
}
