//! The root context: reads the policy on configure, installs its keys and revocations,
//! builds JWT keys and webhook verifiers, and on its tick flushes counts and picks up JWKS.

use crate::filter::Filter;
use crate::host::{HostClock, HostStore, log, now_secs, read_log_level};
use crate::sync::{FeedMetrics, FeedSync, SYNC_TICK};
use gatehouse_core::authn::jwks_cache::{PickUp, Picked};
use gatehouse_core::authn::jwt::{Key, KeySet};
use gatehouse_core::authn::{jwks_cache, key_cache, revocation};
use gatehouse_core::clock::Clock;
use gatehouse_core::limit::fleet;
use gatehouse_core::observe::events;
use gatehouse_core::observe::tally::Tally;
use gatehouse_core::policy::Policy;
use gatehouse_core::sync::feed;
use gatehouse_core::sync::lease::{self, Role};
use gatehouse_core::worker::Caches;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// The root id that makes this module the sync (the `bootstrap_extensions` wasm service)
/// rather than the HTTP filter.
pub(crate) const SYNC_ROOT_ID: &str = "gatehouse_sync";

/// A worker's tick: how long a lapsed sync lease waits for a worker to take it, and how
/// long fleet-scoped admissions wait in a worker's tally; once-a-second work is done on
/// every tenth.
const WORKER_TICK: std::time::Duration = std::time::Duration::from_millis(100);
const TICKS_PER_SECOND: u64 = 10;

/// A worker's counters ([`gatehouse_core::observe::tally::metric_names`]), defined once per VM on
/// configure (Envoy shows them as `wasmcustom.gatehouse.*`); id 0 means "not defined".
/// The filters never touch them: they add to the worker's [`Tally`], which the root
/// context flushes here on its one-second tick, so Envoy's stats lag by up to a second.
#[derive(Default)]
pub(crate) struct WorkerMetrics {
    pub(crate) ids: Vec<u32>,
    pub(crate) jwks_fetches: u32,
    pub(crate) jwks_fetch_failures: u32,
    /// Gauge: names the feed's levers give a mode to that no rule of the policy has.
    pub(crate) levers_unknown_names: u32,
}

impl WorkerMetrics {
    pub(crate) fn define(policy: &Policy) -> WorkerMetrics {
        use proxy_wasm::types::MetricType;
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        let plans: Vec<String> = policy.plans.iter().map(|p| p.name.clone()).collect();
        let rules = policy.rule_names();
        WorkerMetrics {
            ids: gatehouse_core::observe::tally::metric_names_with_rules(&plans, &rules)
                .iter()
                .map(|n| counter(n))
                .collect(),
            jwks_fetches: counter("gatehouse.jwks.fetches"),
            jwks_fetch_failures: counter("gatehouse.jwks.fetch_failures"),
            levers_unknown_names: hostcalls::define_metric(
                MetricType::Gauge,
                "gatehouse.levers.unknown_names",
            )
            .unwrap_or(0),
        }
    }

    pub(crate) fn flush(&self, tally: &RefCell<Tally>) {
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
pub(crate) type SharedTally = Rc<RefCell<Tally>>;

/// The JWT keys in force, shared by a worker's root context (which replaces them when a
/// new JWKS arrives) and its filters (which take the current set per request).
pub(crate) type SharedKeys = Rc<RefCell<Rc<Vec<KeySet>>>>;

#[derive(Default)]
pub(crate) struct Root {
    pub(crate) policy: Option<Rc<Policy>>,
    /// The worker's caches for that policy: new with each policy.
    pub(crate) caches: Rc<Caches>,
    /// Keys from the policy and the environment, per JWT provider; a fetched JWKS adds
    /// to these.
    pub(crate) static_keys: Vec<Vec<Key>>,
    pub(crate) keys: SharedKeys,
    /// Per provider, the stored JWKS its keys were built from.
    pub(crate) jwks: Picked,
    /// JWKS fetches in flight: (call token, provider).
    pub(crate) jwks_calls: Vec<(u32, usize)>,
    pub(crate) metrics: WorkerMetrics,
    pub(crate) tally: Option<SharedTally>,
    /// This plugin's vm_id (`plugin_vm_id`), which names the events queue.
    pub(crate) vm_id: String,
    /// The sync's events queue, once resolved ([`events::QUEUE`]).
    pub(crate) events_queue: Option<u32>,
    /// The sync's fleet queue, once resolved (policies with fleet-scoped limits).
    pub(crate) fleet_queue: Option<u32>,
    /// Ticks since the policy was loaded ([`WORKER_TICK`] apart).
    pub(crate) ticks: u64,
    /// The sync, while this VM holds its lease ([`lease`]): always in the singleton
    /// service, in one worker in filter-only mode.
    pub(crate) sync: Option<FeedSync>,
    /// This VM is Envoy's singleton service (`root_id` [`SYNC_ROOT_ID`]).
    pub(crate) singleton: bool,
    /// This VM's claim on the sync's lease (random, never 0; 0 before configuration).
    pub(crate) lease_id: u64,
    /// Each route's webhook verifier (secrets read from the environment), by route index.
    pub(crate) webhooks: Webhooks,
    /// Some route limits `by: ip`, or the policy's allowlist has networks: the client's
    /// address is needed. Computed once here, not per request over every route.
    pub(crate) by_ip: bool,
}

/// Webhook verifiers by route index; `None` for a route without a webhook.
pub(crate) type Webhooks = Rc<Vec<Option<gatehouse_core::body::webhook::Verifier>>>;

impl Root {
    /// Picks up a new set of levers from shared data (one 8-byte read when it did not
    /// change) and says how many of its mode names the policy does not have.
    pub(crate) fn refresh_levers(&self, policy: &Policy) {
        // Levers come only through the feed.
        if policy.feed.is_none() {
            return;
        }
        let Some(levers) = self.caches.levers.refresh(&HostStore) else {
            return;
        };
        let rules = policy.rule_names();
        let unknown = levers
            .mode_names()
            .filter(|n| !rules.iter().any(|r| r == n))
            .count();
        FeedMetrics::set(self.metrics.levers_unknown_names, unknown as u64);
        log(
            LogLevel::Info,
            &format!(
                "levers in force: {} entries ({unknown} mode names no rule has)",
                levers.entries()
            ),
        );
    }

    /// Replaces provider `p`'s keys (a new set: its cache of verified tokens starts
    /// empty); the other providers' sets are kept as they are.
    pub(crate) fn set_keys(&self, p: usize, keys: Vec<Key>) {
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
    pub(crate) fn pick_up_jwks(&mut self, policy: &Policy, p: usize) {
        let Some(provider) = policy.jwt.as_ref().and_then(|j| j.providers.get(p)) else {
            return;
        };
        let fixed = self.static_keys.get(p).map_or(&[][..], Vec::as_slice);
        match self.jwks.pick_up(&HostStore, p, provider.rsa_alg, fixed) {
            PickUp::Same => {}
            PickUp::Keys(keys) => self.set_keys(p, keys),
            PickUp::Unreadable(e) => log(
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
    pub(crate) fn flush_tally(&mut self, policy: &Policy) {
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

impl Root {
    /// Hands the worker's fleet-scoped admissions to the sync ([`fleet::Tally`]). Until
    /// the queue resolves the tally keeps counting (up to its bound).
    pub(crate) fn flush_fleet(&mut self) {
        let dropped = self.caches.fleet.take_dropped();
        if dropped > 0 {
            log(
                LogLevel::Warn,
                &format!("fleet: {dropped} admissions not reported (the worker's tally is full)"),
            );
        }
        if self.fleet_queue.is_none() {
            self.fleet_queue = hostcalls::resolve_shared_queue(&self.vm_id, fleet::QUEUE)
                .ok()
                .flatten();
        }
        let Some(queue) = self.fleet_queue else {
            return;
        };
        let Some(batch) = self.caches.fleet.take_batch() else {
            return;
        };
        if hostcalls::enqueue_shared_queue(queue, Some(&batch)).is_err() {
            self.fleet_queue = None;
            log(
                LogLevel::Warn,
                "fleet: the sync's queue is gone; one tally lost",
            );
        }
    }
}

/// Reads and checks the policy from the plugin configuration, logging why not.
pub(crate) fn load_policy() -> Option<Policy> {
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
    /// Configures this VM as the sync (Envoy's singleton service). Without a feed section
    /// it has nothing to do (and says so); the filters install the policy's own keys.
    pub(crate) fn configure_sync(&mut self, policy: Policy) -> bool {
        if policy.feed.is_none() {
            log(
                LogLevel::Info,
                "sync: the policy has no feed section; nothing to poll",
            );
            return true;
        }
        if let Err(e) =
            feed::mark_started(&HostStore, now_secs()).and_then(|()| lease::init(&HostStore))
        {
            log(LogLevel::Error, &format!("shared data: {e:?}"));
            return false;
        }
        let Some(id) = lease_id() else {
            return false;
        };
        let _ = hostcalls::set_tick_period(SYNC_TICK);
        self.singleton = true;
        self.lease_id = id;
        // At once, before any worker's first tick could take the free lease.
        lease::hold(&HostStore, id, Role::Singleton, HostClock.now().0);
        let Some(sync) = start_sync(&policy) else {
            return false;
        };
        self.sync = Some(sync);
        true
    }

    /// A worker's turn at the sync, when the policy has a feed and the worker can read its
    /// token (filter-only mode: no singleton service; [`lease`]): takes or renews the
    /// lease, starts the sync when it got it, stops it when it lost it.
    fn worker_sync(&mut self, policy: &Policy) {
        let Some(feed_policy) = &policy.feed else {
            return;
        };
        if !std::env::var(&feed_policy.token_env).is_ok_and(|t| !t.is_empty()) {
            return;
        }
        let held = lease::hold(&HostStore, self.lease_id, Role::Worker, HostClock.now().0);
        match (held, self.sync.is_some()) {
            (true, false) => {
                log(
                    LogLevel::Info,
                    "sync: this worker runs the sync (filter-only mode: no singleton holds the lease)",
                );
                self.sync = start_sync(policy);
            }
            (false, true) => {
                log(
                    LogLevel::Info,
                    "sync: another VM holds the sync's lease now; this worker's sync stops",
                );
                self.sync = None;
            }
            _ => {}
        }
        if let Some(sync) = &mut self.sync {
            sync.on_tick();
        }
    }
}

/// A random id for this VM's claim on the sync's lease.
fn lease_id() -> Option<u64> {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => Some(u64::from_be_bytes(bytes).max(1)),
        Err(e) => {
            log(
                LogLevel::Error,
                &format!("no randomness for the sync's lease id: {e}"),
            );
            None
        }
    }
}

/// The sync for `policy` (which has a feed): its token from the environment, its queues
/// registered (the events queue, and the fleet queue with fleet-scoped limits), Envoy's
/// node id as its proxy id. `None`, logged, when it cannot run.
fn start_sync(policy: &Policy) -> Option<FeedSync> {
    let feed_policy = policy.feed.clone()?;
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
            return None;
        }
    };
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
            return None;
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
    let mut sync = FeedSync::new(feed_policy, format!("Bearer {token}"), events_queue, proxy);
    if policy.rate_limit.any_fleet(&policy.routes) {
        match hostcalls::register_shared_queue(fleet::QUEUE) {
            Ok(queue) => sync.enable_fleet(&policy.rate_limit, queue),
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("sync: could not register the fleet queue: {e:?}"),
                );
                return None;
            }
        }
        log(
            LogLevel::Info,
            &format!(
                "sync: fleet-scoped limits exchange every {} ms at {}",
                policy.rate_limit.sync_interval_ms,
                fleet::EXCHANGE_PATH
            ),
        );
    }
    Some(sync)
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _t: usize) {
        let jwks = self.jwks_calls.iter().position(|(t, _)| *t == token);
        if jwks.is_none() {
            // The sync's answer, applied only while this VM still holds the lease: a
            // worker that stalled and lost it must not write an old answer over what the
            // new holder applied.
            if !lease::holds(&HostStore, self.lease_id, HostClock.now().0) {
                if self.sync.take().is_some() {
                    log(
                        LogLevel::Info,
                        "sync: an answer came after the lease was lost; dropped, this sync stops",
                    );
                }
                return;
            }
            if let Some(sync) = &mut self.sync {
                sync.on_response(token, body_size);
            }
            return;
        }
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let Some(at) = jwks else {
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
        self.tally = Some(Rc::new(RefCell::new(Tally::with_rules(
            &plans,
            policy.rule_names().len(),
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
        self.jwks = Picked::default();
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
        // Every worker ticks ten times a second: it may have to take the sync's lease
        // (filter-only mode), and with fleet-scoped limits it hands its admissions to the
        // sync; once a second it flushes its tally (and fetches a JWKS).
        let _ = hostcalls::set_tick_period(WORKER_TICK);
        self.ticks = 0;
        if policy.feed.is_some() {
            if let Err(e) = lease::init(&HostStore) {
                log(LogLevel::Error, &format!("shared data: {e:?}"));
                return false;
            }
            if self.lease_id == 0 {
                match lease_id() {
                    Some(id) => self.lease_id = id,
                    None => return false,
                }
            }
        }
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
        self.by_ip = policy.rate_limit.allowlist.has_cidrs()
            || policy.routes.iter().any(|r| {
                r.limits
                    .iter()
                    .any(|l| l.by == gatehouse_core::limit::LimitBy::Ip)
            });
        self.caches = Rc::new(Caches::default());
        self.refresh_levers(&policy);
        self.policy = Some(Rc::new(policy));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(sync) = &mut self.sync {
            sync.on_queue_ready(queue_id);
        }
    }

    fn on_tick(&mut self) {
        if self.singleton {
            // The singleton always takes the lease (from a worker that held it meanwhile).
            if lease::hold(
                &HostStore,
                self.lease_id,
                Role::Singleton,
                HostClock.now().0,
            ) && let Some(sync) = &mut self.sync
            {
                sync.on_tick();
            }
            return;
        }
        let Some(policy) = self.policy.clone() else {
            return;
        };
        self.worker_sync(&policy);
        self.refresh_levers(&policy);
        if policy.rate_limit.any_fleet(&policy.routes) {
            self.flush_fleet();
            self.caches.fleet_view.refresh(&HostStore);
        }
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks % TICKS_PER_SECOND != 1 {
            return;
        }
        self.flush_tally(&policy);
        self.caches.places.refresh(&HostStore);
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
            caches: Rc::clone(&self.caches),
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

/// Builds every route's webhook verifier from the environment and prepares the replay
/// caches; `None` (configuration refused, the log says why, naming the variable, never
/// its value) when a secret is missing or shared data fails.
pub(crate) fn configure_webhooks(
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
