//! The sync (Envoy's singleton wasm service): long-polls the control service for the
//! key feed and posts the workers' merged events.

use crate::host::*;
use gatehouse_core::clock::Clock;
use gatehouse_core::observe::events;
use gatehouse_core::policy::FeedPolicy;
use gatehouse_core::sync::feed;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType};

/// The sync's metrics (Envoy shows them as `wasmcustom.gatehouse.feed.*`).
#[derive(Clone, Copy, Default)]
pub(crate) struct FeedMetrics {
    pub(crate) version: u32,
    pub(crate) entries_applied: u32,
    pub(crate) failures: u32,
    pub(crate) records_skipped: u32,
    pub(crate) last_sync_age: u32,
    /// Key records the sync has applied (live and tombstones): the cache's size.
    pub(crate) keys: u32,
    /// Posts of the refusal audit that the control service accepted ...
    pub(crate) events_posts: u32,
    /// ... and that failed (no answer, or a status other than 2xx).
    pub(crate) events_post_failures: u32,
    /// Refusals in accepted posts.
    pub(crate) events_refusals_posted: u32,
    /// Refusals the sync dropped for lack of room or because the server refused them.
    pub(crate) events_refusals_dropped: u32,
}

impl FeedMetrics {
    pub(crate) fn define() -> FeedMetrics {
        use proxy_wasm::types::MetricType;
        let define = |kind, name: &str| hostcalls::define_metric(kind, name).unwrap_or(0);
        FeedMetrics {
            version: define(MetricType::Gauge, "gatehouse.feed.version"),
            entries_applied: define(MetricType::Counter, "gatehouse.feed.entries_applied"),
            failures: define(MetricType::Counter, "gatehouse.feed.failures"),
            records_skipped: define(MetricType::Counter, "gatehouse.feed.records_skipped"),
            last_sync_age: define(MetricType::Gauge, "gatehouse.feed.last_sync_age_seconds"),
            keys: define(MetricType::Gauge, "gatehouse.feed.keys"),
            events_posts: define(MetricType::Counter, "gatehouse.events.posts"),
            events_post_failures: define(MetricType::Counter, "gatehouse.events.post_failures"),
            events_refusals_posted: define(MetricType::Counter, "gatehouse.events.refusals_posted"),
            events_refusals_dropped: define(
                MetricType::Counter,
                "gatehouse.events.refusals_dropped",
            ),
        }
    }

    pub(crate) fn add(id: u32, n: u64) {
        if id != 0 && n > 0 {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn set(id: u32, value: u64) {
        if id != 0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// The sync's state between ticks. Versions live in shared data (`feed/state`), so a
/// restarted sync resumes where the last one stopped.
pub(crate) struct FeedSync {
    pub(crate) feed: FeedPolicy,
    /// `Bearer <token>`, read from `feed.token_env` on configure.
    pub(crate) authorization: String,
    /// The poll in flight: one at a time.
    pub(crate) in_flight: Option<Poll>,
    /// The server answered 410: ask for a snapshot (`since=0`) next.
    pub(crate) full_next: bool,
    /// Sync ticks so far ([`SYNC_TICK`] apart).
    pub(crate) ticks: u64,
    /// The tick of the next regular poll (every `feed.interval`).
    pub(crate) next_regular: u64,
    /// Polls that may still go out straight after an answer: a bucket of
    /// [`QUICK_POLL_BURST`], refilled at [`QUICK_POLLS_PER_SEC`].
    pub(crate) quick_budget: u32,
    /// When the bucket last gained a poll (unix ns).
    pub(crate) refilled_at: u64,
    /// An answer asked for a poll at once but the bucket was empty: poll on the next tick.
    pub(crate) poll_due: bool,
    /// The last poll failed: the next one asks not to be held (`wait=0`), so the cache
    /// is fresh again as soon as the server answers, not a long poll later.
    pub(crate) recovering: bool,
    pub(crate) fed: feed::FedKeys,
    pub(crate) metrics: FeedMetrics,
    /// The refusal audit waiting to be posted ([`gatehouse_core::observe::events`]).
    pub(crate) events: events::Pending,
    /// The events post in flight, and what it carries (merged back if it fails).
    pub(crate) events_in_flight: Option<(u32, events::Pending)>,
    /// The tick the last events post went out on: at most one a second.
    pub(crate) events_posted_tick: Option<u64>,
    /// The events queue this sync registered.
    pub(crate) events_queue: u32,
    /// Envoy's node id when it is a valid id: the posts' `proxy`.
    pub(crate) proxy: Option<String>,
}

/// A poll sent and not yet answered.
#[derive(Clone, Copy)]
pub(crate) struct Poll {
    pub(crate) token: u32,
    /// When it was sent (unix secs).
    pub(crate) sent: u64,
    /// The version it asked from (0: a snapshot).
    pub(crate) since: u64,
    /// How long it asked the server to hold it (secs).
    pub(crate) wait: u64,
}

impl FeedSync {
    pub(crate) fn failed(&mut self, why: &str) {
        self.recovering = true;
        FeedMetrics::add(self.metrics.failures, 1);
        log(
            LogLevel::Warn,
            &format!("feed poll failed: {why}; keeping the last good cache"),
        );
    }

    /// Every [`SYNC_TICK`]: refills the quick-poll bucket, sends a poll that an answer
    /// asked for, and every `feed.interval` the regular one. The first tick comes one
    /// [`SYNC_TICK`] after configuration, so a fresh Envoy asks for its snapshot at once.
    pub(crate) fn on_tick(&mut self) {
        self.ticks += 1;
        self.refill();
        self.post_events();
        let now = now_secs();
        let regular = self.ticks >= self.next_regular;
        if regular {
            let every = self.feed.interval_secs.saturating_mul(TICKS_PER_SEC).max(1);
            self.next_regular = self.ticks.saturating_add(every);
            if let Some(age) = feed::age_secs(&HostStore, now) {
                FeedMetrics::set(self.metrics.last_sync_age, age);
            }
        }
        if let Some(poll) = self.in_flight {
            // Envoy always answers a dispatched call (at the latest with its timeout);
            // this only guards against a host that does not.
            if !regular || now.saturating_sub(poll.sent) <= poll.wait + 10 {
                return;
            }
            self.in_flight = None;
        }
        if regular {
            self.poll_due = false;
            self.poll(now);
        } else if self.poll_due && self.quick_budget > 0 {
            self.poll_due = false;
            self.quick_budget -= 1;
            self.poll(now);
        }
    }

    /// Merges every worker batch waiting in the events queue into the pending post.
    pub(crate) fn on_queue_ready(&mut self, queue: u32) {
        if queue != self.events_queue {
            return;
        }
        // Bounded: a flood of batches is drained over several notifications.
        for _ in 0..1024 {
            let batch = match hostcalls::dequeue_shared_queue(queue) {
                Ok(Some(batch)) => batch,
                _ => return,
            };
            match self.events.merge(&batch) {
                Ok(dropped) => FeedMetrics::add(self.metrics.events_refusals_dropped, dropped),
                Err(e) => log(
                    LogLevel::Warn,
                    &format!("events: a worker batch was refused ({e:?}); dropped"),
                ),
            }
        }
    }

    /// Posts the pending refusal audit: at most once a second, one post at a time.
    pub(crate) fn post_events(&mut self) {
        if self.events_in_flight.is_some() || self.events.is_empty() {
            return;
        }
        if self
            .events_posted_tick
            .is_some_and(|t| self.ticks.saturating_sub(t) < TICKS_PER_SEC)
        {
            return;
        }
        let version = feed::read_state(&HostStore).map(|s| s.version);
        let body = self.events.body(self.proxy.as_deref(), version);
        let headers = vec![
            (":method", "POST"),
            (":path", events::PATH),
            (":authority", self.feed.authority.as_str()),
            ("authorization", self.authorization.as_str()),
            ("content-type", "application/json"),
        ];
        self.events_posted_tick = Some(self.ticks);
        let timeout = std::time::Duration::from_secs(EVENTS_POST_TIMEOUT_SECS);
        match hostcalls::dispatch_http_call(
            &self.feed.cluster,
            headers,
            Some(body.as_bytes()),
            vec![],
            timeout,
        ) {
            Ok(token) => {
                let sent = std::mem::take(&mut self.events);
                self.events_in_flight = Some((token, sent));
            }
            Err(status) => {
                FeedMetrics::add(self.metrics.events_post_failures, 1);
                log(
                    LogLevel::Warn,
                    &format!(
                        "events: post not sent to cluster {}: {status:?}; kept for the next try",
                        self.feed.cluster
                    ),
                );
            }
        }
    }

    /// The answer to an events post: done, kept for another try, or dropped.
    pub(crate) fn on_events_answer(&mut self, sent: events::Pending) {
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        match events::Posted::from_status(&status) {
            events::Posted::Accepted => {
                FeedMetrics::add(self.metrics.events_posts, 1);
                FeedMetrics::add(self.metrics.events_refusals_posted, sent.refusals() as u64);
            }
            events::Posted::Retry => {
                FeedMetrics::add(self.metrics.events_post_failures, 1);
                log(
                    LogLevel::Warn,
                    &format!(
                        "events: post failed (status {}); kept for the next try",
                        String::from_utf8_lossy(if status.is_empty() { b"none" } else { &status })
                    ),
                );
                let newer = std::mem::replace(&mut self.events, sent);
                let dropped = self.events.absorb(newer);
                FeedMetrics::add(self.metrics.events_refusals_dropped, dropped);
            }
            events::Posted::Refused => {
                // Sent again it would be refused again (and a server without the events
                // endpoint would be asked every second): dropped whole, counted here.
                FeedMetrics::add(self.metrics.events_post_failures, 1);
                let dropped = sent.refusals() as u64;
                FeedMetrics::add(self.metrics.events_refusals_dropped, dropped);
                log(
                    LogLevel::Warn,
                    &format!(
                        "events: the control service refused a post (status {}); its {dropped} refusals are dropped",
                        String::from_utf8_lossy(&status)
                    ),
                );
            }
        }
    }

    /// Adds the quick polls earned since the last refill (a token bucket).
    pub(crate) fn refill(&mut self) {
        const EVERY_NS: u64 = 1_000_000_000 / QUICK_POLLS_PER_SEC;
        let now = HostClock.now().0;
        let earned = now.saturating_sub(self.refilled_at) / EVERY_NS;
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

    /// Sends the next long poll: from the version in `feed/state`, or a snapshot after a
    /// 410 or before the first answer.
    pub(crate) fn poll(&mut self, now: u64) {
        let state = feed::read_state(&HostStore);
        let (since, epoch) = match (self.full_next, &state) {
            (false, Some(state)) => (state.version, Some(state.epoch.as_str())),
            _ => (0, None),
        };
        let wait = if self.recovering {
            0
        } else {
            self.feed.wait_secs
        };
        let path = feed::poll_path(&self.feed.path, since, epoch, wait);
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.feed.authority.as_str()),
            ("authorization", self.authorization.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = std::time::Duration::from_secs(wait + 5);
        match hostcalls::dispatch_http_call(&self.feed.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.in_flight = Some(Poll {
                    token,
                    sent: now,
                    since,
                    wait,
                })
            }
            Err(status) => self.failed(&format!(
                "not sent to cluster {}: {status:?}",
                self.feed.cluster
            )),
        }
    }

    /// Handles an answer, then polls again at once when waiting for the next tick would
    /// only delay news: the answer carried changes (more may be queued behind them), the
    /// poll was held its full `wait` (a `wait=0` poll after a failure counts), or the
    /// server asked for a snapshot (410). So a long poll is nearly always in flight and a
    /// change reaches shared data one round trip after it commits. A server that answers
    /// at once with nothing new waits for the regular poll, and quick polls come from a
    /// bucket of [`QUICK_POLL_BURST`] refilled at [`QUICK_POLLS_PER_SEC`] (a poll the
    /// bucket cannot pay for goes out on a later tick): no server can make the sync spin,
    /// and under a steady stream of changes each answer carries a batch of them.
    pub(crate) fn on_response(&mut self, token: u32, body_size: usize) {
        if self
            .events_in_flight
            .as_ref()
            .is_some_and(|(t, _)| *t == token)
        {
            if let Some((_, sent)) = self.events_in_flight.take() {
                self.on_events_answer(sent);
            }
            return;
        }
        let ours = self.in_flight.filter(|p| p.token == token);
        if ours.is_some() {
            self.in_flight = None;
        }
        let now = now_secs();
        let again = match self.answer(body_size, now) {
            Next::Tick => false,
            Next::Snapshot => ours.is_some_and(|p| p.since != 0),
            Next::Applied { version, news } => ours.is_some_and(|p| {
                news || version > p.since || now.saturating_sub(p.sent) + 1 >= p.wait
            }),
        };
        if again && self.in_flight.is_none() {
            self.refill();
            if self.quick_budget > 0 {
                self.quick_budget -= 1;
                self.poll(now);
            } else {
                self.poll_due = true;
            }
        }
    }

    /// Reads and applies one answer; says what the next poll should be.
    pub(crate) fn answer(&mut self, body_size: usize, now: u64) -> Next {
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        match status.as_slice() {
            b"200" => {}
            b"410" => {
                self.full_next = true;
                log(
                    LogLevel::Info,
                    "feed: the server no longer has our version (410); asking for a snapshot",
                );
                return Next::Snapshot;
            }
            b"" => {
                self.failed("no answer (timeout or connection failure)");
                return Next::Tick;
            }
            other => {
                self.failed(&format!("status {}", String::from_utf8_lossy(other)));
                return Next::Tick;
            }
        }
        if body_size > feed::MAX_ANSWER_BYTES {
            self.failed(&feed::FeedError::TooLarge(body_size).to_string());
            return Next::Tick;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let answer = match feed::parse_answer(&body) {
            Ok(answer) => answer,
            Err(e) => {
                self.failed(&e.to_string());
                return Next::Tick;
            }
        };
        if answer.skipped > 0 {
            FeedMetrics::add(self.metrics.records_skipped, answer.skipped as u64);
            log(
                LogLevel::Warn,
                &format!(
                    "feed: skipped {} records that break the contract",
                    answer.skipped
                ),
            );
        }
        match feed::apply(&HostStore, &answer, &mut self.fed, now) {
            Ok(applied) => {
                self.full_next = false;
                FeedMetrics::set(self.metrics.version, answer.version);
                FeedMetrics::set(self.metrics.keys, self.fed.len() as u64);
                FeedMetrics::add(self.metrics.entries_applied, applied.entries as u64);
                FeedMetrics::set(self.metrics.last_sync_age, 0);
                let level = if applied.snapshot || applied.entries > 0 {
                    LogLevel::Info
                } else {
                    LogLevel::Debug
                };
                log(
                    level,
                    &format!(
                        "feed: version {} of epoch {}: {} entries{}{}",
                        answer.version,
                        answer.epoch,
                        applied.entries,
                        if applied.snapshot { " (snapshot)" } else { "" },
                        if applied.swept > 0 {
                            format!(", {} keys no longer fed made inactive", applied.swept)
                        } else {
                            String::new()
                        }
                    ),
                );
                self.recovering = false;
                Next::Applied {
                    version: answer.version,
                    news: applied.snapshot || applied.entries > 0,
                }
            }
            Err(e) => {
                self.failed(&format!("could not write to shared data: {e:?}"));
                Next::Tick
            }
        }
    }
}

/// What follows an answer.
pub(crate) enum Next {
    /// Poll on the next tick (a failure, or nothing to hurry for).
    Tick,
    /// A 410: ask for a snapshot.
    Snapshot,
    /// Applied up to `version`; `news`: the answer changed something.
    Applied { version: u64, news: bool },
}

/// The sync's timer: fine enough that a poll held back by [`QUICK_POLL_BURST`] goes out
/// soon, coarse enough to cost nothing on Envoy's main thread.
pub(crate) const SYNC_TICK: std::time::Duration = std::time::Duration::from_millis(100);
pub(crate) const TICKS_PER_SEC: u64 = 10;
/// Polls that may go out straight after answers in a burst ...
pub(crate) const QUICK_POLL_BURST: u32 = 16;
/// ... and in the long run: at 50 a second, 100 changes a second arrive two per answer.
pub(crate) const QUICK_POLLS_PER_SEC: u64 = 50;
/// How long an events post may take before Envoy gives up on it (and it is tried again).
pub(crate) const EVENTS_POST_TIMEOUT_SECS: u64 = 5;
