//! The proxy-wasm shell: moves bytes between Envoy and the core, decides nothing.
//!
//! `on_configure` parses the policy (Envoy refuses the configuration when it is invalid,
//! and the log line says why), installs its static keys and revocations in shared data,
//! and builds the JWT keys (HMAC secrets from the environment Envoy passes to the VM).
//! With a `jwks_url`, every worker's root context ticks once a second: it picks up a
//! JWKS another worker fetched, or fetches it itself when it wins the lease
//! ([`gatehouse_core::authn::jwks_cache`]).
//! `on_http_request_headers` reads the request headers with one host call, asks
//! [`gatehouse_core::pipeline::decide`], and either forwards the request with identity headers or
//! answers with the standard error body.
//!
//! Then the body rules ([`gatehouse_core::body`]): a route with a webhook or JSON caps pauses the
//! headers and `on_http_request_body` feeds each new piece of the held body to the check
//! (Envoy hands over everything held so far; only the new bytes are copied into the VM),
//! continuing at the end of the stream (or the trailers) releases headers and body
//! together; any other route streams and is only counted. Webhook secrets are read from
//! the environment at configure time, like JWT secrets; a missing one refuses the
//! configuration.
//!
//! The same module also runs as the sync: Envoy's singleton wasm service (bootstrap
//! extension, root id [`SYNC_ROOT_ID`], same vm_id, same policy). With a `feed` section it
//! long-polls the control service on its tick, one call at a time, and writes each answer
//! into shared data ([`gatehouse_core::sync::feed`]); the filters read it there and refuse credentials
//! with 503 once the cache is older than `feed.staleness` (`on_stale: fail_closed`).
//!
//! What the filter decided is counted in the worker's own memory ([`gatehouse_core::observe::tally`],
//! shared with the worker's root context): an allowed request makes no host call for it.
//! Every worker's root context ticks once a second and flushes the counts to Envoy's stats
//! (so they lag by up to a second) and, with a feed, puts one batch of refusals, key uses
//! and per-plan counts on the `gatehouse_events` queue the sync registered; the sync merges
//! the batches and posts them to the control service ([`gatehouse_core::observe::events`]). Each refusal also
//! writes one JSON line to the log at the policy's `logging.refusals` level.
//!
//! Host calls go through `proxy_wasm::hostcalls` directly, never the trait helpers that
//! `unwrap` host results, and header values are read as bytes: a header that is not UTF-8
//! must not panic the VM (a panic kills it and Envoy then fails every request).

use gatehouse_core::authn::jwt::{Key, KeySet, parse_jwks};
use gatehouse_core::authn::{jwks_cache, key_cache, revocation};
use gatehouse_core::clock::Clock;
use gatehouse_core::observe::events;
use gatehouse_core::observe::tally::{RefusalFacts, SignatureProvider, Tally};
use gatehouse_core::pipeline::{
    Credential, Decision, IDENTITY_HEADER_PREFIX, Identity, Presented, RequestHead,
    decide_explained,
};
use gatehouse_core::policy::{FeedPolicy, Policy};
use gatehouse_core::refusal::Denial;
use gatehouse_core::store::{SharedStore, StoreError};
use gatehouse_core::sync::feed;
use gatehouse_core::time::UnixNanos;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, Status};
use std::cell::RefCell;
use std::rc::Rc;

// The one place with `unsafe`: `main!` expands to the module's `_initialize` export,
// which is `#[no_mangle]`, and the header map is read with the raw host call.
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(super::Root::default())
        });
    }}

    // The SDK declares the same import with its own enums; here the map type and the
    // status are plain integers (a status the enum does not know must not be UB).
    #[allow(clashing_extern_declarations)]
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
    }

    /// A header map as the host serializes it ([`gatehouse_core::request::header_map`] reads it in place),
    /// empty when the host has none. The SDK's reader copies every header into a `String`
    /// and a `Vec` and panics on a name that is not UTF-8.
    pub(super) fn header_map(map: proxy_wasm::types::MapType) -> Vec<u8> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a pointer and a size into the two locals; the buffer
        // is one it got from `proxy_on_memory_allocate` (the SDK's allocator: a boxed
        // byte slice of exactly `size` bytes), so it is ours to own as a `Vec` of that
        // length and capacity, as the SDK itself does.
        unsafe {
            let status = proxy_get_header_map_pairs(map as u32, &mut data, &mut size);
            if status != 0 || data.is_null() {
                return Vec::new();
            }
            Vec::from_raw_parts(data, size, size)
        }
    }
}

std::thread_local! {
    /// The host's log level, read on configure: a message below it is not even formatted
    /// (a refusal's debug line was a `format!` and a host call on every refused request,
    /// dropped by Envoy at its default level).
    static LOG_LEVEL: std::cell::Cell<u32> = const { std::cell::Cell::new(LogLevel::Trace as u32) };
}

fn read_log_level() {
    if let Ok(level) = hostcalls::get_log_level() {
        LOG_LEVEL.with(|l| l.set(level as u32));
    }
}

fn log_enabled(level: LogLevel) -> bool {
    level as u32 >= LOG_LEVEL.with(std::cell::Cell::get)
}

fn log(level: LogLevel, message: &str) {
    if log_enabled(level) {
        let _ = hostcalls::log(level, message);
    }
}

/// Envoy's shared data for this vm_id.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

/// The host's wall clock.
struct HostClock;

impl Clock for HostClock {
    fn now(&self) -> UnixNanos {
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        UnixNanos(nanos)
    }
}

/// The root id that makes this module the sync (the `bootstrap_extensions` wasm service)
/// rather than the HTTP filter.
pub(crate) const SYNC_ROOT_ID: &str = "gatehouse_sync";

/// A worker's counters ([`gatehouse_core::observe::tally::metric_names`]), defined once per VM on
/// configure (Envoy shows them as `wasmcustom.gatehouse.*`); id 0 means "not defined".
/// The filters never touch them: they add to the worker's [`Tally`], which the root
/// context flushes here on its one-second tick, so Envoy's stats lag by up to a second.
#[derive(Default)]
struct WorkerMetrics {
    ids: Vec<u32>,
    jwks_fetches: u32,
    jwks_fetch_failures: u32,
}

impl WorkerMetrics {
    fn define(policy: &Policy) -> WorkerMetrics {
        use proxy_wasm::types::MetricType;
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        let plans: Vec<String> = policy.plans.iter().map(|p| p.name.clone()).collect();
        WorkerMetrics {
            ids: gatehouse_core::observe::tally::metric_names(&plans)
                .iter()
                .map(|n| counter(n))
                .collect(),
            jwks_fetches: counter("gatehouse.jwks.fetches"),
            jwks_fetch_failures: counter("gatehouse.jwks.fetch_failures"),
        }
    }

    fn flush(&self, tally: &RefCell<Tally>) {
        if let Ok(mut tally) = tally.try_borrow_mut() {
            tally.flush_counts(|i, n| {
                if let Some(&id) = self.ids.get(i) {
                    FeedMetrics::add(id, n);
                }
            });
        }
    }
}

/// A worker's tally, shared by its root context (which flushes it) and its filters.
type SharedTally = Rc<RefCell<Tally>>;

/// The JWT keys in force, shared by a worker's root context (which replaces them when a
/// new JWKS arrives) and its filters (which take the current set per request).
type SharedKeys = Rc<RefCell<Rc<Vec<KeySet>>>>;

#[derive(Default)]
pub(crate) struct Root {
    policy: Option<Rc<Policy>>,
    /// Keys from the policy and the environment, per JWT provider; a fetched JWKS adds
    /// to these.
    static_keys: Vec<Vec<Key>>,
    keys: SharedKeys,
    /// Per provider, the cas of the JWKS document its keys were built from.
    jwks_cas: Vec<u32>,
    /// JWKS fetches in flight: (call token, provider).
    jwks_calls: Vec<(u32, usize)>,
    metrics: WorkerMetrics,
    tally: Option<SharedTally>,
    /// This plugin's vm_id (`plugin_vm_id`), which names the events queue.
    vm_id: String,
    /// The sync's events queue, once resolved ([`events::QUEUE`]).
    events_queue: Option<u32>,
    /// Set when this VM is the sync and the policy has a feed.
    sync: Option<FeedSync>,
    /// Each route's webhook verifier (secrets read from the environment), by route index.
    webhooks: Webhooks,
    /// Some route limits `by: ip`: computed once here, not per request over every route.
    by_ip: bool,
}

/// Webhook verifiers by route index; `None` for a route without a webhook.
type Webhooks = Rc<Vec<Option<gatehouse_core::body::webhook::Verifier>>>;

/// The sync's metrics (Envoy shows them as `wasmcustom.gatehouse.feed.*`).
#[derive(Clone, Copy, Default)]
struct FeedMetrics {
    version: u32,
    entries_applied: u32,
    failures: u32,
    records_skipped: u32,
    last_sync_age: u32,
    /// Key records the sync has applied (live and tombstones): the cache's size.
    keys: u32,
    /// Posts of the refusal audit that the control service accepted ...
    events_posts: u32,
    /// ... and that failed (no answer, or a status other than 2xx).
    events_post_failures: u32,
    /// Refusals in accepted posts.
    events_refusals_posted: u32,
    /// Refusals the sync dropped for lack of room or because the server refused them.
    events_refusals_dropped: u32,
}

impl FeedMetrics {
    fn define() -> FeedMetrics {
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

    fn add(id: u32, n: u64) {
        if id != 0 && n > 0 {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn set(id: u32, value: u64) {
        if id != 0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// The sync's state between ticks. Versions live in shared data (`feed/state`), so a
/// restarted sync resumes where the last one stopped.
struct FeedSync {
    feed: FeedPolicy,
    /// `Bearer <token>`, read from `feed.token_env` on configure.
    authorization: String,
    /// The poll in flight: one at a time.
    in_flight: Option<Poll>,
    /// The server answered 410: ask for a snapshot (`since=0`) next.
    full_next: bool,
    /// Sync ticks so far ([`SYNC_TICK`] apart).
    ticks: u64,
    /// The tick of the next regular poll (every `feed.interval`).
    next_regular: u64,
    /// Polls that may still go out straight after an answer: a bucket of
    /// [`QUICK_POLL_BURST`], refilled at [`QUICK_POLLS_PER_SEC`].
    quick_budget: u32,
    /// When the bucket last gained a poll (unix ns).
    refilled_at: u64,
    /// An answer asked for a poll at once but the bucket was empty: poll on the next tick.
    poll_due: bool,
    /// The last poll failed: the next one asks not to be held (`wait=0`), so the cache
    /// is fresh again as soon as the server answers, not a long poll later.
    recovering: bool,
    fed: feed::FedKeys,
    metrics: FeedMetrics,
    /// The refusal audit waiting to be posted ([`gatehouse_core::observe::events`]).
    events: events::Pending,
    /// The events post in flight, and what it carries (merged back if it fails).
    events_in_flight: Option<(u32, events::Pending)>,
    /// The tick the last events post went out on: at most one a second.
    events_posted_tick: Option<u64>,
    /// The events queue this sync registered.
    events_queue: u32,
    /// Envoy's node id when it is a valid id: the posts' `proxy`.
    proxy: Option<String>,
}

/// A poll sent and not yet answered.
#[derive(Clone, Copy)]
struct Poll {
    token: u32,
    /// When it was sent (unix secs).
    sent: u64,
    /// The version it asked from (0: a snapshot).
    since: u64,
    /// How long it asked the server to hold it (secs).
    wait: u64,
}

impl FeedSync {
    fn failed(&mut self, why: &str) {
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
    fn on_tick(&mut self) {
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
    fn on_queue_ready(&mut self, queue: u32) {
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
    fn post_events(&mut self) {
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
    fn on_events_answer(&mut self, sent: events::Pending) {
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
    fn refill(&mut self) {
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
    fn poll(&mut self, now: u64) {
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
    fn on_response(&mut self, token: u32, body_size: usize) {
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
    fn answer(&mut self, body_size: usize, now: u64) -> Next {
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
enum Next {
    /// Poll on the next tick (a failure, or nothing to hurry for).
    Tick,
    /// A 410: ask for a snapshot.
    Snapshot,
    /// Applied up to `version`; `news`: the answer changed something.
    Applied { version: u64, news: bool },
}

/// The sync's timer: fine enough that a poll held back by [`QUICK_POLL_BURST`] goes out
/// soon, coarse enough to cost nothing on Envoy's main thread.
const SYNC_TICK: std::time::Duration = std::time::Duration::from_millis(100);
const TICKS_PER_SEC: u64 = 10;
/// Polls that may go out straight after answers in a burst ...
const QUICK_POLL_BURST: u32 = 16;
/// ... and in the long run: at 50 a second, 100 changes a second arrive two per answer.
const QUICK_POLLS_PER_SEC: u64 = 50;
/// How long an events post may take before Envoy gives up on it (and it is tried again).
const EVENTS_POST_TIMEOUT_SECS: u64 = 5;

fn now_secs() -> u64 {
    HostClock.now().secs()
}

impl Root {
    /// Replaces provider `p`'s keys (a new set: its cache of verified tokens starts
    /// empty); the other providers' sets are kept as they are.
    fn set_keys(&self, p: usize, keys: Vec<Key>) {
        if let Ok(mut current) = self.keys.try_borrow_mut() {
            let mut sets: Vec<KeySet> = current.as_ref().clone();
            if sets.len() <= p {
                sets.resize_with(p + 1, KeySet::default);
            }
            if let Some(set) = sets.get_mut(p) {
                *set = KeySet::new(keys);
            }
            *current = Rc::new(sets);
        }
    }

    /// Rebuilds provider `p`'s keys when another worker stored a new JWKS for it.
    fn pick_up_jwks(&mut self, policy: &Policy, p: usize) {
        let Some(provider) = policy.jwt.as_ref().and_then(|j| j.providers.get(p)) else {
            return;
        };
        let Some((cas, _, doc)) = jwks_cache::current(&HostStore, p) else {
            return;
        };
        if self.jwks_cas.len() <= p {
            self.jwks_cas.resize(p + 1, 0);
        }
        if self.jwks_cas.get(p) == Some(&cas) {
            return;
        }
        if let Some(seen) = self.jwks_cas.get_mut(p) {
            *seen = cas;
        }
        match parse_jwks(&doc, Some(provider.rsa_alg)) {
            Ok(jwks) => {
                let mut keys = self.static_keys.get(p).cloned().unwrap_or_default();
                keys.extend(jwks.keys);
                self.set_keys(p, keys);
            }
            Err(e) => log(
                LogLevel::Warn,
                &format!("stored JWKS of provider {} unreadable: {e}", provider.name),
            ),
        }
    }
}

impl Root {
    /// The worker's tick: counters to Envoy's stats (as deltas) and, with a feed, one
    /// batch on the sync's events queue. Until the queue resolves (the sync registers it
    /// on its configure), the tally keeps counting and drops refusals past its bound.
    fn flush_tally(&mut self, policy: &Policy) {
        let Some(tally) = self.tally.clone() else {
            return;
        };
        self.metrics.flush(&tally);
        if policy.feed.is_none() {
            return;
        }
        if self.events_queue.is_none() {
            self.events_queue = hostcalls::resolve_shared_queue(&self.vm_id, events::QUEUE)
                .ok()
                .flatten();
        }
        let Some(queue) = self.events_queue else {
            return;
        };
        let Some(batch) = tally.try_borrow_mut().ok().and_then(|mut t| t.take_batch()) else {
            return;
        };
        if hostcalls::enqueue_shared_queue(queue, Some(batch.as_bytes())).is_err() {
            // The sync is gone (a new one registers anew): resolve again next tick.
            self.events_queue = None;
            log(
                LogLevel::Warn,
                "events: the sync's queue is gone; one batch lost",
            );
        }
    }
}

/// Reads and checks the policy from the plugin configuration, logging why not.
fn load_policy() -> Option<Policy> {
    let config = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(Some(bytes)) if !bytes.is_empty() => bytes,
        _ => {
            log(
                LogLevel::Error,
                "no plugin configuration: the policy (JSON) is required",
            );
            return None;
        }
    };
    match Policy::from_json(&config) {
        Ok(policy) => Some(policy),
        Err(errors) => {
            // One line per error: Envoy's log is read line by line.
            let count = errors.len();
            log(
                LogLevel::Error,
                &format!("invalid policy, configuration refused ({count} errors):"),
            );
            for line in errors.to_string().lines() {
                log(LogLevel::Error, &format!("invalid policy: {line}"));
            }
            None
        }
    }
}

impl Root {
    /// Configures this VM as the sync. Without a feed section it has nothing to do (and
    /// says so); the filters install the policy's own keys.
    fn configure_sync(&mut self, policy: Policy) -> bool {
        let Some(feed_policy) = policy.feed else {
            log(
                LogLevel::Info,
                "sync: the policy has no feed section; nothing to poll",
            );
            return true;
        };
        // The name, never the value, goes to the log.
        let token = match std::env::var(&feed_policy.token_env) {
            Ok(t) if !t.is_empty() => t,
            _ => {
                log(
                    LogLevel::Error,
                    &format!(
                        "invalid policy: feed.token_env: the environment variable {} is not set or empty \
                         (Envoy passes it with vm_config.environment_variables)",
                        feed_policy.token_env
                    ),
                );
                return false;
            }
        };
        if let Err(e) = feed::mark_started(&HostStore, now_secs()) {
            log(LogLevel::Error, &format!("shared data: {e:?}"));
            return false;
        }
        let _ = hostcalls::set_tick_period(SYNC_TICK);
        log(
            LogLevel::Info,
            &format!(
                "sync: polling cluster {} {} every {}s (long poll {}s, staleness bound {}s)",
                feed_policy.cluster,
                feed_policy.path,
                feed_policy.interval_secs,
                feed_policy.wait_secs,
                feed_policy.staleness_secs
            ),
        );
        let events_queue = match hostcalls::register_shared_queue(events::QUEUE) {
            Ok(q) => q,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("sync: could not register the events queue: {e:?}"),
                );
                return false;
            }
        };
        // Envoy's node id: `xds.node` since Envoy 1.3x, `node` before.
        let proxy = [vec!["xds", "node", "id"], vec!["node", "id"]]
            .into_iter()
            .find_map(|path| hostcalls::get_property(path).ok().flatten())
            .and_then(|id| events::proxy_id(&id));
        log(
            LogLevel::Info,
            &format!(
                "sync: refusal audit to {} {} as proxy {}",
                feed_policy.cluster,
                events::PATH,
                proxy.as_deref().unwrap_or("(no valid node id: left out)")
            ),
        );
        self.sync = Some(FeedSync {
            feed: feed_policy,
            authorization: format!("Bearer {token}"),
            in_flight: None,
            full_next: false,
            ticks: 0,
            next_regular: 1,
            quick_budget: QUICK_POLL_BURST,
            refilled_at: HostClock.now().0,
            poll_due: false,
            recovering: false,
            fed: feed::FedKeys::default(),
            metrics: FeedMetrics::define(),
            events: events::Pending::default(),
            events_in_flight: None,
            events_posted_tick: None,
            events_queue,
            proxy,
        });
        true
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _t: usize) {
        if let Some(sync) = &mut self.sync {
            sync.on_response(token, body_size);
            return;
        }
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let Some(at) = self.jwks_calls.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, p) = self.jwks_calls.swap_remove(at);
        let Some(provider) = policy.jwt.as_ref().and_then(|j| j.providers.get(p)) else {
            return;
        };
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        if status != b"200" {
            FeedMetrics::add(self.metrics.jwks_fetch_failures, 1);
            log(
                LogLevel::Warn,
                &format!(
                    "JWKS fetch failed (status {}); keeping the last good JWKS",
                    String::from_utf8_lossy(if status.is_empty() { b"none" } else { &status })
                ),
            );
            return;
        }
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match jwks_cache::store_fetched(&HostStore, p, &body, provider.rsa_alg, now_secs()) {
            Ok(n) => {
                log(
                    LogLevel::Info,
                    &format!("JWKS of provider {} fetched: {n} keys", provider.name),
                );
                self.pick_up_jwks(&policy, p);
            }
            Err(e) => {
                FeedMetrics::add(self.metrics.jwks_fetch_failures, 1);
                log(
                    LogLevel::Warn,
                    &format!("JWKS fetch refused: {e}; keeping the last good JWKS"),
                )
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        read_log_level();
        let Some(policy) = load_policy() else {
            return false;
        };
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten()
            .unwrap_or_default();
        if root_id == SYNC_ROOT_ID.as_bytes() {
            return self.configure_sync(policy);
        }
        // First, before the temporary allocations of the steps below: the worker's long-lived
        // counters then sit below them in the heap, and the allocator's free lists stay as the
        // request path found them before there were counters (allocated last, they cost an
        // API-key request some 500 wasm instructions more: examples/profile_request).
        self.metrics = WorkerMetrics::define(&policy);
        let plans: Vec<String> = policy.plans.iter().map(|p| p.name.clone()).collect();
        self.tally = Some(Rc::new(RefCell::new(Tally::new(
            &plans,
            policy.feed.is_some(),
        ))));
        if policy.feed.is_some()
            && let Err(e) = feed::mark_started(&HostStore, now_secs())
        {
            log(LogLevel::Error, &format!("shared data: {e:?}"));
            return false;
        }
        if let Err(e) = key_cache::install_policy_keys(&policy, &HostStore) {
            log(
                LogLevel::Error,
                &format!("could not write the policy's keys to shared data: {e:?}"),
            );
            return false;
        }
        // Drawn by every worker, kept only by the first to create the tables.
        let mut fresh_secret = [0u8; gatehouse_core::limit::SECRET_LEN];
        if let Err(e) = getrandom::getrandom(&mut fresh_secret) {
            log(
                LogLevel::Error,
                &format!("no randomness for the rate limiter's placement secret: {e}"),
            );
            return false;
        }
        match gatehouse_core::limit::prepare(&HostStore, &policy.rate_limit.table(), &fresh_secret)
        {
            Ok(0) => {}
            Ok(n) => log(
                LogLevel::Info,
                &format!("rate-limit tables created: {n} slots"),
            ),
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("could not create the rate-limit table in shared data: {e:?}"),
                );
                return false;
            }
        }
        let r = &policy.revocations;
        if let Err(e) = revocation::install(&r.users, &r.jtis, &HostStore) {
            log(
                LogLevel::Error,
                &format!("could not write the policy's revocations to shared data: {e:?}"),
            );
            return false;
        }
        self.static_keys.clear();
        self.jwks_cas.clear();
        self.jwks_calls.clear();
        for (p, provider) in policy
            .jwt
            .iter()
            .flat_map(|j| j.providers.iter().enumerate())
        {
            match provider.static_keys(|name| std::env::var(name).ok()) {
                Ok(keys) => self.static_keys.push(keys.keys().to_vec()),
                Err(e) => {
                    log(LogLevel::Error, &format!("invalid policy: {e}"));
                    return false;
                }
            }
            if provider.jwks_url.is_some()
                && let Err(e) = jwks_cache::init(&HostStore, p)
            {
                log(LogLevel::Error, &format!("shared data: {e:?}"));
                return false;
            }
        }
        match configure_webhooks(&policy) {
            Some(webhooks) => self.webhooks = Rc::new(webhooks),
            None => return false,
        }
        if let Ok(mut current) = self.keys.try_borrow_mut() {
            *current = Rc::new(self.static_keys.iter().cloned().map(KeySet::new).collect());
        }

        self.vm_id = hostcalls::get_property(vec!["plugin_vm_id"])
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        // Every worker ticks once a second: it flushes its tally (and fetches a JWKS).
        let _ = hostcalls::set_tick_period(std::time::Duration::from_secs(1));
        log(
            LogLevel::Info,
            &format!(
                "policy loaded: {} routes, {} static keys, {} plans, {} JWT keys",
                policy.routes.len(),
                policy.keys.len(),
                policy.plans.len(),
                self.static_keys.iter().map(Vec::len).sum::<usize>()
            ),
        );
        self.by_ip = policy.routes.iter().any(|r| {
            r.limits
                .iter()
                .any(|l| l.by == gatehouse_core::policy::LimitBy::Ip)
        });
        self.policy = Some(Rc::new(policy));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(sync) = &mut self.sync {
            sync.on_queue_ready(queue_id);
        }
    }

    fn on_tick(&mut self) {
        if let Some(sync) = &mut self.sync {
            sync.on_tick();
            return;
        }
        let Some(policy) = self.policy.clone() else {
            return;
        };
        self.flush_tally(&policy);
        policy.rate_limit.places.refresh(&HostStore);
        let Some(jwt) = &policy.jwt else { return };
        for (p, provider) in jwt.providers.iter().enumerate() {
            let Some(url) = &provider.jwks_url else {
                continue;
            };
            self.pick_up_jwks(&policy, p);
            if !jwks_cache::should_fetch(&HostStore, p, url, now_secs()) {
                continue;
            }
            let headers = vec![
                (":method", "GET"),
                (":path", url.path.as_str()),
                (":authority", url.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = std::time::Duration::from_millis(jwks_cache::FETCH_TIMEOUT_MS);
            let sent = hostcalls::dispatch_http_call(&url.cluster, headers, None, vec![], timeout);
            FeedMetrics::add(self.metrics.jwks_fetches, 1);
            match sent {
                Ok(token) => self.jwks_calls.push((token, p)),
                Err(status) => {
                    FeedMetrics::add(self.metrics.jwks_fetch_failures, 1);
                    log(
                        LogLevel::Warn,
                        &format!(
                            "JWKS fetch from cluster {} not sent: {status:?}",
                            url.cluster
                        ),
                    );
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Envoy creates streams only for a configured plugin; should it not, the filter
        // refuses rather than the SDK panicking on `None`.
        Some(Box::new(Filter {
            policy: self.policy.clone(),
            keys: Rc::clone(&self.keys),
            tally: self.tally.clone(),
            quota: None,
            response: None,
            replacement: None,
            webhooks: Rc::clone(&self.webhooks),
            body: None,
            by_ip: self.by_ip,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    policy: Option<Rc<Policy>>,
    keys: SharedKeys,
    /// The worker's tally: what this stream decided is added there, never sent from here.
    tally: Option<SharedTally>,
    /// The request's rate-limit quota, for `RateLimit-*` on the response.
    quota: Option<gatehouse_core::limit::Quota>,
    /// What the response needs from the request (route rules, allowed origin, request id).
    response: Option<gatehouse_core::response::Pending>,
    /// The standard body replacing an upstream error's, written at the end of its body.
    replacement: Option<String>,
    webhooks: Webhooks,
    /// The request body under the route's body rules, between headers and end of stream.
    body: Option<BodyState>,
    /// [`Root::by_ip`], from the policy this stream started under.
    by_ip: bool,
}

impl Context for Filter {}

impl HttpContext for Filter {
    /// Every response passes here, gatehouse's own refusals included (Envoy runs a local
    /// reply through the filter's response callbacks): security headers, CORS headers,
    /// upstream error hygiene ([`gatehouse_core::response`]), and `RateLimit-*` when asked.
    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let quota: Vec<(&'static str, String)> = self
            .quota
            .take()
            .map(|q| gatehouse_core::refusal::quota_headers(&q).to_vec())
            .unwrap_or_default();
        let edits = match (&self.policy, &self.response) {
            (Some(policy), Some(pending)) => {
                // One host call for the map: the rules look at several headers.
                let raw = entry::header_map(MapType::HttpResponseHeaders);
                let headers: Vec<(&[u8], &[u8])> =
                    gatehouse_core::request::header_map::pairs(&raw).collect();
                pending.on_response(policy, &headers, HostClock.now())
            }
            _ => gatehouse_core::response::Edits::default(),
        };
        if edits.replace_body.is_some() && end_of_stream {
            // An upstream error without a body: there is no body to rewrite, so it is
            // answered locally with the same status (Envoy sends a local reply made while
            // the response headers are still here straight to the client).
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
                .unwrap_or(502);
            if let Some(mut reply) = edits.into_reply(status) {
                reply.headers.extend(quota);
                log(
                    LogLevel::Debug,
                    &format!("replaced upstream {status} without a body"),
                );
                send_reply(&reply);
                return Action::Pause;
            }
            return Action::Continue;
        }
        for name in &edits.remove {
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
        }
        for (name, value) in edits.set.iter().chain(&quota) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
        if edits.replace_body.is_some() {
            log(LogLevel::Debug, "replacing an upstream error body");
        }
        self.replacement = edits.replace_body;
        Action::Continue
    }

    /// Empties each chunk of a replaced upstream error as it passes (nothing is
    /// buffered) and writes the standard body in its place at the end of the stream.
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(body) = &self.replacement {
            let data = if end_of_stream { body.as_bytes() } else { b"" };
            let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, data);
            if end_of_stream {
                self.replacement = None;
            }
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            send_refusal(Denial::NotConfigured, b"", false);
            return Action::Pause;
        };
        // One host call for the whole map: cheaper than one call per header we need, and
        // we must see every name anyway to strip client-sent identity headers.
        let raw = entry::header_map(MapType::HttpRequestHeaders);

        let mut method: &[u8] = b"";
        let mut path: &[u8] = b"";
        let mut request_id: &[u8] = b"";
        let mut api_key = Presented::None;
        let mut authorization = Presented::None;
        let mut method_override = Presented::None;
        let mut forwarded: Vec<&[u8]> = Vec::new();
        let mut origin: Option<&[u8]> = None;
        let mut cors_method: Option<&[u8]> = None;
        let mut cors_headers: Vec<&[u8]> = Vec::new();
        let mut spoofed: Vec<&str> = Vec::new();
        for (name, value) in gatehouse_core::request::header_map::pairs(&raw) {
            match name {
                b":method" => method = value,
                b":path" => path = value,
                b"x-request-id" => request_id = value,
                n if n == policy.api_key_header.as_bytes() => {
                    api_key = match api_key {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                b"authorization" => {
                    authorization = match authorization {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                b"x-forwarded-for" => forwarded.push(value),
                b"x-http-method-override" | b"x-http-method" | b"x-method-override" => {
                    method_override = match method_override {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                b"origin" => origin = Some(value),
                b"access-control-request-method" => cors_method = Some(value),
                b"access-control-request-headers" => cors_headers.push(value),
                // Envoy's codecs admit only token characters in names, so a name is
                // always UTF-8 here; one that is not could not be removed by name.
                n if n.starts_with(IDENTITY_HEADER_PREFIX.as_bytes()) => {
                    if let Ok(n) = std::str::from_utf8(n) {
                        spoofed.push(n);
                    }
                }
                // Another spelling of a name gatehouse owns (`x_gatehouse_user`,
                // `X-Api_Key`): CGI-style upstreams read `_` as `-` in any case.
                n => match gatehouse_core::pipeline::classify_spelling(&policy.api_key_header, n) {
                    Some(gatehouse_core::pipeline::Spelling::Identity) => {
                        if let Ok(n) = std::str::from_utf8(n) {
                            spoofed.push(n);
                        }
                    }
                    Some(gatehouse_core::pipeline::Spelling::ApiKey) => {
                        api_key = Presented::Several
                    }
                    None => {}
                },
            }
        }
        // A CORS preflight carries no credentials: it is answered before authentication.
        if let Some(preflight) = gatehouse_core::cors::Preflight::from_request(
            method,
            path,
            origin,
            cors_method,
            &cors_headers,
        ) && let Some(answer) = gatehouse_core::cors::answer_preflight(&policy, &preflight)
        {
            match answer {
                Ok(reply) => send_reply(&reply),
                Err(denial) => {
                    let seen = Seen {
                        request_id,
                        method,
                        route: None,
                        identity: None,
                        credential: None,
                        source_address: &[],
                        forwarded_for: None,
                    };
                    self.record_refusal(&policy, denial, HostClock.now(), &seen, None);
                    send_refusal(denial, request_id, policy.verbose_errors);
                }
            }
            return Action::Pause;
        }
        // Repeated x-forwarded-for lines are one list (RFC 9110 §5.3).
        let forwarded_for = (!forwarded.is_empty()).then(|| forwarded.join(&b","[..]));
        // The client address counts only for callers without an identity (anonymous
        // limits) and for route limits `by: ip`: a request with a credential (an API key,
        // or a bearer token when the policy takes JWTs) is authenticated or refused, never
        // anonymous, so on a policy without the latter it costs no host call.
        let anonymous =
            !gatehouse_core::pipeline::presents_credential_in(&policy, api_key, authorization);
        let source_address = if anonymous || self.by_ip {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };

        let head = RequestHead {
            method,
            path,
            api_key,
            authorization,
            source_address: &source_address,
            forwarded_for: forwarded_for.as_deref(),
            method_override,
        };
        let keys = self
            .keys
            .try_borrow()
            .map(|k| Rc::clone(&k))
            .unwrap_or_default();
        // One clock reading for the decision and, when it refuses, the refusal's timestamp.
        let clock = gatehouse_core::clock::OnceClock::new(&HostClock);
        let (decision, refused) = decide_explained(&policy, &keys, &head, &HostStore, &clock);
        let facts = gatehouse_core::response::RequestFacts {
            method,
            path,
            origin,
            request_id,
            refused: matches!(decision, Decision::Deny(_)),
        };
        let route = match &decision {
            Decision::Allow(allowed) => Some(allowed.route),
            Decision::Deny(_) => None,
        };
        self.response = gatehouse_core::response::Pending::new(&policy, route, &facts);
        match decision {
            Decision::Allow(allowed) => {
                if allowed.limiter_retries > 0 || allowed.limiter_contention || allowed.feed_stale {
                    self.note_limiter(
                        allowed.limiter_retries,
                        allowed.limiter_contention,
                        allowed.feed_stale,
                    );
                }
                if allowed.feed_stale {
                    log(
                        LogLevel::Debug,
                        "feed cache is stale; serving from it (on_stale: keep_serving)",
                    );
                }
                if policy.rate_limit.headers_on_allowed {
                    self.quota = allowed.quota;
                }
                for name in spoofed {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
                if let Some(identity) = &allowed.identity {
                    for (name, value) in identity.headers() {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            name,
                            Some(value),
                        );
                    }
                }
                for (name, value) in &allowed.claim_headers {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                }
                if policy.hide_credentials {
                    let header = match allowed.credential {
                        Some(Credential::ApiKey) => Some(policy.api_key_header.as_str()),
                        Some(Credential::Jwt) => Some("authorization"),
                        None => None,
                    };
                    if let Some(name) = header {
                        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                    }
                }
                // A key's use is reported (at most once a minute per worker) when the
                // policy has a feed; the clock was read for the decision already.
                let key_use = match (&allowed.identity, allowed.credential) {
                    (Some(i), Some(Credential::ApiKey)) if policy.feed.is_some() => {
                        Some((i.key_id.as_str(), clock.now().secs()))
                    }
                    _ => None,
                };
                if !body_checked(&policy, &self.webhooks, allowed.route, end_of_stream) {
                    // Nothing left to refuse it for: allowed, counted now.
                    if let Some(tally) = &self.tally
                        && let Ok(mut tally) = tally.try_borrow_mut()
                    {
                        tally.allowed(allowed.plan, allowed.identity.is_none(), key_use);
                    }
                    return Action::Continue;
                }
                let caller = Caller {
                    plan: allowed.plan,
                    key_use_at: key_use.map(|(_, at)| at),
                    identity: allowed.identity,
                    credential: allowed.credential,
                    method: method.to_vec(),
                    source_address: source_address.clone(),
                    forwarded_for: forwarded_for.clone(),
                };
                self.start_body(
                    &policy,
                    allowed.route,
                    &raw,
                    end_of_stream,
                    request_id,
                    caller,
                )
            }
            Decision::Deny(denial) => {
                let seen = Seen {
                    request_id,
                    method,
                    route: refused.route,
                    identity: refused.identity.as_ref(),
                    credential: refused.credential,
                    source_address: &source_address,
                    forwarded_for: forwarded_for.as_deref(),
                };
                if refused.limiter_retries > 0 {
                    self.note_limiter(refused.limiter_retries, false, false);
                }
                self.record_refusal(&policy, denial, clock.now(), &seen, None);
                // A token signed with a key we have not seen: the issuer may have rotated.
                if denial.reason() == "jwt_unknown_kid"
                    && let Some(p) = refused.jwt_provider
                    && let Some(url) = policy
                        .jwt
                        .as_ref()
                        .and_then(|j| j.providers.get(p)?.jwks_url.as_ref())
                {
                    jwks_cache::want_refetch(&HostStore, p, url, clock.now().secs());
                }
                send_refusal_at(clock.now(), denial, request_id, policy.verbose_errors);
                Action::Pause
            }
        }
    }

    /// A held body arrives whole each time (Envoy buffers what the filter paused on); a
    /// streamed one a piece at a time.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(mut state) = self.body.take() else {
            return Action::Continue;
        };
        let result = if state.check.holds() {
            // Only the bytes not seen yet are copied into the VM.
            let new = body_size.saturating_sub(state.held);
            let bytes = match new {
                0 => Vec::new(),
                n => hostcalls::get_buffer(BufferType::HttpRequestBody, state.held, n)
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            };
            state.held = state.held.max(body_size);
            state.check.feed(&bytes)
        } else {
            state.check.count(body_size as u64)
        };
        if let Err(denial) = result {
            self.refuse_body(denial, &state.caller.seen(&state.request_id, state.route));
            return Action::Pause;
        }
        if !end_of_stream {
            let holds = state.check.holds();
            self.body = Some(state);
            return if holds {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        self.finish_body(state)
    }

    /// Trailers end a body too (HTTP/2, or chunked with trailers): the last body callback
    /// then did not say `end_of_stream`.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.body.take() {
            Some(state) => self.finish_body(state),
            None => Action::Continue,
        }
    }
}

/// A request body under its route's body rules ([`gatehouse_core::body`]).
struct BodyState {
    check: gatehouse_core::body::BodyCheck,
    /// Bytes of a held body already fed to the check.
    held: usize,
    route: usize,
    request_id: Vec<u8>,
    caller: Caller,
}

/// What the headers said about an allowed request whose body is still to be checked: its
/// allowed count waits for the body, and a refusal of the body is logged with it.
struct Caller {
    /// [`gatehouse_core::pipeline::Allowed::plan`].
    plan: Option<usize>,
    identity: Option<Identity>,
    credential: Option<Credential>,
    /// When the key was used, for an API key whose use is reported.
    key_use_at: Option<u64>,
    method: Vec<u8>,
    source_address: Vec<u8>,
    forwarded_for: Option<Vec<u8>>,
}

/// A request as a refusal is recorded with ([`Filter::record_refusal`]).
struct Seen<'a> {
    request_id: &'a [u8],
    method: &'a [u8],
    route: Option<usize>,
    identity: Option<&'a Identity>,
    credential: Option<Credential>,
    /// `source.address` when the request path read it, else empty (read on refusal).
    source_address: &'a [u8],
    forwarded_for: Option<&'a [u8]>,
}

impl Caller {
    fn seen<'a>(&'a self, request_id: &'a [u8], route: usize) -> Seen<'a> {
        Seen {
            request_id,
            method: &self.method,
            route: Some(route),
            identity: self.identity.as_ref(),
            credential: self.credential,
            source_address: &self.source_address,
            forwarded_for: self.forwarded_for.as_deref(),
        }
    }
}

/// Whether an allowed request's body is still to be checked: the route has body rules
/// to apply to a body, or a webhook signature to verify ([`Filter::start_body`]).
fn body_checked(policy: &Policy, webhooks: &Webhooks, route: usize, end_of_stream: bool) -> bool {
    policy.routes.get(route).is_some()
        && !(end_of_stream && webhooks.get(route).and_then(Option::as_ref).is_none())
}

/// The route's path pattern as written in the policy.
fn route_pattern(route: &gatehouse_core::route::Route) -> &str {
    match &route.path {
        gatehouse_core::route::PathMatch::Exact(p)
        | gatehouse_core::route::PathMatch::Prefix(p) => p,
    }
}

fn host_level(level: gatehouse_core::policy::LogLevel) -> LogLevel {
    match level {
        gatehouse_core::policy::LogLevel::Debug => LogLevel::Debug,
        gatehouse_core::policy::LogLevel::Info => LogLevel::Info,
        gatehouse_core::policy::LogLevel::Warn => LogLevel::Warn,
    }
}

impl Filter {
    /// Step 5 of the request path, at the headers: a declared size over the limit and bad
    /// webhook headers are refused at once; a route that checks its body holds it (the
    /// headers pause, so the upstream sees nothing until the body passes); any other
    /// route streams it and counts.
    fn start_body(
        &mut self,
        policy: &Policy,
        route: usize,
        headers: &[u8],
        end_of_stream: bool,
        request_id: &[u8],
        caller: Caller,
    ) -> Action {
        let Some(rules) = policy.routes.get(route) else {
            return Action::Continue;
        };
        let webhooks = Rc::clone(&self.webhooks);
        let verifier = webhooks.get(route).and_then(Option::as_ref);
        let find = |name: Option<&str>| {
            let mut found = Presented::None;
            for (n, v) in gatehouse_core::request::header_map::pairs(headers) {
                if Some(n) == name.map(str::as_bytes) {
                    found = match found {
                        Presented::None => Presented::One(v),
                        _ => Presented::Several,
                    };
                }
            }
            found
        };
        let head = gatehouse_core::body::BodyHead {
            content_length: match find(Some("content-length")) {
                Presented::One(v) => Some(v),
                _ => None,
            },
            end_of_stream,
            signature: find(verifier.map(|v| v.provider().signature_header())),
            timestamp: find(verifier.and_then(|v| v.provider().timestamp_header())),
        };
        let state = |check, caller| BodyState {
            check,
            held: 0,
            route,
            request_id: request_id.to_vec(),
            caller,
        };
        match gatehouse_core::body::start(rules, verifier, &head, now_secs()) {
            Err(denial) => {
                self.refuse_body(denial, &caller.seen(request_id, route));
                Action::Pause
            }
            Ok(check) if end_of_stream => self.finish_body(state(check, caller)),
            Ok(check) => {
                let holds = check.holds();
                self.body = Some(state(check, caller));
                if holds {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
        }
    }

    /// The end of the body: the JSON must be complete, the signature must match and not be
    /// a replay. Continuing releases a held body to the upstream.
    fn finish_body(&mut self, state: BodyState) -> Action {
        let webhooks = Rc::clone(&self.webhooks);
        let verifier = webhooks.get(state.route).and_then(Option::as_ref);
        match state.check.finish(verifier, &HostStore, now_secs()) {
            Ok(()) => {
                let caller = &state.caller;
                if let Some(tally) = &self.tally
                    && let Ok(mut tally) = tally.try_borrow_mut()
                {
                    let key_use = caller
                        .identity
                        .as_ref()
                        .zip(caller.key_use_at)
                        .map(|(i, at)| (i.key_id.as_str(), at));
                    tally.allowed(caller.plan, caller.identity.is_none(), key_use);
                }
                Action::Continue
            }
            Err(denial) => {
                self.refuse_body(denial, &state.caller.seen(&state.request_id, state.route));
                Action::Pause
            }
        }
    }

    fn refuse_body(&mut self, denial: Denial, seen: &Seen<'_>) {
        if let Some(response) = &mut self.response {
            // Our own refusal: the response rules must not take it for an upstream error.
            response.mark_local();
        }
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let provider = seen
            .route
            .and_then(|r| self.webhooks.get(r))
            .and_then(Option::as_ref)
            .map(|v| SignatureProvider::of(v.provider()));
        self.record_refusal(&policy, denial, HostClock.now(), seen, provider);
        send_refusal(denial, seen.request_id, policy.verbose_errors);
    }

    /// The limiter's lost compare-and-swaps and give-ups, and a credential served from a
    /// stale cache: rare, so kept off the common path.
    #[cold]
    #[inline(never)]
    fn note_limiter(&self, retries: u32, contention: bool, stale: bool) {
        if let Some(tally) = &self.tally
            && let Ok(mut tally) = tally.try_borrow_mut()
        {
            tally.limiter(retries, contention);
            if stale {
                tally.stale_served();
            }
        }
    }

    /// Counts a refusal, keeps its audit record (with a feed) and writes its log line at
    /// the policy's level. Reads the client's address when the request path did not.
    #[cold]
    #[inline(never)]
    fn record_refusal(
        &self,
        policy: &Policy,
        denial: Denial,
        at: UnixNanos,
        seen: &Seen<'_>,
        provider: Option<SignatureProvider>,
    ) {
        let level = policy
            .logging
            .refusals
            .map(host_level)
            .filter(|l| log_enabled(*l));
        let wants_client = level.is_some() || policy.feed.is_some();
        let read;
        let source = if seen.source_address.is_empty() && wants_client {
            read = hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .unwrap_or_default();
            read.as_slice()
        } else {
            seen.source_address
        };
        let client = wants_client.then(|| {
            gatehouse_core::pipeline::client_address(
                source,
                seen.forwarded_for,
                policy.rate_limit.trusted_proxies,
            )
        });
        let facts = RefusalFacts {
            at,
            denial,
            request_id: seen.request_id,
            method: seen.method,
            route: seen
                .route
                .and_then(|r| policy.routes.get(r))
                .map(route_pattern),
            identity: seen.identity,
            credential: seen.credential,
            client: client.as_deref(),
        };
        if let Some(tally) = &self.tally
            && let Ok(mut tally) = tally.try_borrow_mut()
        {
            tally.refused(&facts, provider);
        }
        if let Some(level) = level {
            log(level, &facts.log_line());
        }
    }
}

/// Builds every route's webhook verifier from the environment and prepares the replay
/// caches; `None` (configuration refused, the log says why, naming the variable, never
/// its value) when a secret is missing or shared data fails.
fn configure_webhooks(
    policy: &Policy,
) -> Option<Vec<Option<gatehouse_core::body::webhook::Verifier>>> {
    let mut out = Vec::with_capacity(policy.routes.len());
    for (i, route) in policy.routes.iter().enumerate() {
        let Some(webhook) = &route.webhook else {
            out.push(None);
            continue;
        };
        let verifier =
            match gatehouse_core::body::webhook::Verifier::new(webhook, &route.name, |n| {
                std::env::var(n).ok()
            }) {
                Ok(v) => v,
                Err(e) => {
                    log(
                        LogLevel::Error,
                        &format!("invalid policy: routes[{i}].webhook.secrets_env: {e}"),
                    );
                    return None;
                }
            };
        if let Some((table, slots)) = verifier.replay_table() {
            match gatehouse_core::body::replay_cache::prepare(&HostStore, table, slots) {
                Ok(0) => {}
                Ok(n) => log(
                    LogLevel::Info,
                    &format!("replay cache for route {table} created: {n} slots"),
                ),
                Err(e) => {
                    log(
                        LogLevel::Error,
                        &format!("could not create the replay cache in shared data: {e:?}"),
                    );
                    return None;
                }
            }
        }
        out.push(Some(verifier));
    }
    Some(out)
}

/// The one place that refuses a request.
fn send_refusal(denial: Denial, request_id: &[u8], verbose: bool) {
    send_refusal_at(HostClock.now(), denial, request_id, verbose);
}

/// [`send_refusal`] with the time already read for the request.
fn send_refusal_at(now: UnixNanos, denial: Denial, request_id: &[u8], verbose: bool) {
    let reply = denial.render(now, request_id, verbose);
    if log_enabled(LogLevel::Debug) {
        log(
            LogLevel::Debug,
            &format!("refused {} {}", reply.status, denial.reason()),
        );
    }
    send_reply(&reply);
}

/// The one place that answers locally: refusals, preflights, replaced upstream errors.
fn send_reply(reply: &gatehouse_core::refusal::LocalReply) {
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let _ = hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()));
}
