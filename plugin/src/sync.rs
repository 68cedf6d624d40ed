//! The sync (Envoy's singleton wasm service): hands the host's ticks, call answers and
//! events-queue batches to the core's scheduler ([`gatehouse_core::sync::schedule`]) and
//! performs what it returns: HTTP calls, metrics, log lines. Every decision is there.

use crate::host::{HostClock, HostStore, host_level, log};
use gatehouse_core::clock::Clock;
use gatehouse_core::policy::{FeedPolicy, RateLimitPolicy};
use gatehouse_core::sync::schedule::{self, Action, HttpAnswer, Metric, Schedule};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

pub(crate) use schedule::SYNC_TICK;

/// The sync's metric ids, by [`Metric`] (Envoy shows them as `wasmcustom.gatehouse.*`).
pub(crate) struct FeedMetrics([u32; Metric::ALL.len()]);

impl FeedMetrics {
    pub(crate) fn define() -> FeedMetrics {
        use proxy_wasm::types::MetricType;
        FeedMetrics(Metric::ALL.map(|metric| {
            let kind = if metric.is_gauge() {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            hostcalls::define_metric(kind, metric.name()).unwrap_or(0)
        }))
    }

    fn id(&self, metric: Metric) -> u32 {
        self.0.get(metric as usize).copied().unwrap_or(0)
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

/// The sync: the scheduler, and the host resources it was given.
pub(crate) struct FeedSync {
    schedule: Schedule,
    metrics: FeedMetrics,
    /// The events queue this sync registered.
    events_queue: u32,
    /// The fleet queue, with fleet-scoped limits.
    fleet_queue: Option<u32>,
}

impl FeedSync {
    /// `authorization`: `Bearer <token>`; `proxy`: Envoy's node id when it is a valid id.
    pub(crate) fn new(
        feed: FeedPolicy,
        authorization: String,
        events_queue: u32,
        proxy: Option<String>,
    ) -> FeedSync {
        FeedSync {
            schedule: Schedule::new(feed, authorization, proxy, HostClock.now()),
            metrics: FeedMetrics::define(),
            events_queue,
            fleet_queue: None,
        }
    }

    /// Exchanges fleet-scoped limits' consumption; workers' tallies arrive on `queue`.
    pub(crate) fn enable_fleet(&mut self, limits: &RateLimitPolicy, queue: u32) {
        self.schedule
            .enable_fleet(limits.table(), limits.sync_interval_ms, HostClock.now());
        self.fleet_queue = Some(queue);
    }

    pub(crate) fn on_tick(&mut self) {
        let actions = self.schedule.on_tick(HostClock.now(), &HostStore);
        self.perform(actions);
    }

    /// Merges the worker batches waiting in the events queue into the pending post.
    pub(crate) fn on_queue_ready(&mut self, queue: u32) {
        if Some(queue) == self.fleet_queue {
            for _ in 0..schedule::MAX_BATCHES_PER_NOTIFICATION {
                let Ok(Some(batch)) = hostcalls::dequeue_shared_queue(queue) else {
                    return;
                };
                let actions = self.schedule.on_fleet_batch(&batch);
                self.perform(actions);
            }
            return;
        }
        if queue != self.events_queue {
            return;
        }
        for _ in 0..schedule::MAX_BATCHES_PER_NOTIFICATION {
            let Ok(Some(batch)) = hostcalls::dequeue_shared_queue(queue) else {
                return;
            };
            let actions = self.schedule.on_batch(&batch);
            self.perform(actions);
        }
    }

    pub(crate) fn on_response(&mut self, token: u32, body_size: usize) {
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .unwrap_or_default();
        let stopping = hostcalls::get_map_value_bytes(
            MapType::HttpCallResponseHeaders,
            schedule::STOPPING_HEADER,
        )
        .ok()
        .flatten()
        .is_some_and(|v| v == b"1");
        let answer = HttpAnswer {
            token,
            status: &status,
            body_size,
            stopping,
        };
        let read_body = |size| {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let actions = self
            .schedule
            .on_answer(HostClock.now(), &HostStore, answer, read_body);
        self.perform(actions);
        // What reading the answer cost: linear memory grows to the largest page read and
        // is never given back.
        let pages = core::arch::wasm32::memory_size(0) as u64;
        FeedMetrics::set(self.metrics.id(Metric::WasmMemory), pages * 65_536);
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(request) => {
                    let headers = request
                        .headers
                        .iter()
                        .map(|(name, value)| (*name, value.as_str()))
                        .collect();
                    let body = request.body.as_deref().map(str::as_bytes);
                    match hostcalls::dispatch_http_call(
                        &request.cluster,
                        headers,
                        body,
                        vec![],
                        request.timeout,
                    ) {
                        Ok(token) => self.schedule.sent(request.call, token),
                        Err(status) => {
                            let more = self.schedule.not_sent(request.call, &format!("{status:?}"));
                            self.perform(more);
                        }
                    }
                }
                Action::Add(metric, n) => FeedMetrics::add(self.metrics.id(metric), n),
                Action::Set(metric, value) => FeedMetrics::set(self.metrics.id(metric), value),
                Action::Log(level, message) => log(host_level(level), &message),
            }
        }
    }
}
