//! `GET /v1/stats`: per-plan request counts over the last 24 hours (from the per-minute
//! buckets the proxies' reports fill), the feed's version and epoch, the cache version
//! each proxy last said it had applied and how far behind that is, and this replica's own
//! [`Counters`] and its fleet-limit counts (`fleet.rs`). What the dashboard shows.
//!
//! A proxy *lags* when a change older than [`LAG_SECS`] has not reached it: the version
//! it last reported is below the feed's version of [`LAG_SECS`] ago (from the audit log),
//! or it never reported one. Being behind alone is not lagging: a change reaches every
//! proxy a round trip after it commits, so a healthy one is often a version or two behind
//! for a moment. A proxy that stopped reporting (stopped, or idle: the sync posts only
//! when its filter has something to report) keeps its last version, so it lags once a
//! change after its last report is [`LAG_SECS`] old; its `seen_at` tells which.
//!
//! The dashboard's summaries over time are beside it: `refusals.rs` (refusals grouped,
//! the top refused, the "many distinct callers refused" alert) and `series.rs` (requests
//! per plan per minute).

pub mod refusals;
pub mod series;
mod window;

use crate::app::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// The window the counts cover.
pub const WINDOW_SECONDS: i64 = 86_400;

/// How old a change may be before a proxy it has not reached lags (see the module doc).
pub const LAG_SECS: i64 = 30;

#[derive(Serialize)]
pub struct PlanView {
    plan: String,
    allowed: i64,
    refused: i64,
    shadow_refused: i64,
}

#[derive(Serialize)]
pub struct CacheView {
    version: i64,
    epoch: String,
}

#[derive(Serialize)]
pub struct ProxyView {
    proxy: String,
    cache_version: Option<i64>,
    /// The feed's version minus `cache_version`; below 0 if the proxy's cache is of
    /// another database (re-created or restored), until its next poll.
    behind: Option<i64>,
    lagging: bool,
    seen_at: String,
}

/// What this replica has counted since it started: in memory, not shared between replicas
/// and reset by a restart (the logs have each occurrence).
#[derive(Debug)]
pub struct Counters {
    /// When counting began (Unix seconds).
    pub since: i64,
    /// Refusals and key uses `POST /v1/events` dropped for an `at` too far ahead of the
    /// server's clock (`events.rs`).
    pub future_entries_dropped: AtomicU64,
    /// Requests refused for a bearer token that is neither the admin nor the feed token
    /// (`token_limit.rs`).
    pub token_failures: AtomicU64,
    /// Requests answered 429 because their client had too many such failures.
    pub token_lockouts: AtomicU64,
    /// Snapshots refused with 409 `PAGING_REQUIRED` to a sync that cannot read pages
    /// (`feed.rs`).
    pub unpaged_snapshots_refused: AtomicU64,
    /// Feed answers larger than a proxy's sync reads (`feed.rs`): it counts a failure and
    /// keeps its cache, so `GATEHOUSE_FEED_PAGE_SIZE` is too large for these records.
    pub oversized_answers: AtomicU64,
}

impl Counters {
    pub fn new(since: i64) -> Counters {
        Counters {
            since,
            future_entries_dropped: AtomicU64::new(0),
            token_failures: AtomicU64::new(0),
            token_lockouts: AtomicU64::new(0),
            unpaged_snapshots_refused: AtomicU64::new(0),
            oversized_answers: AtomicU64::new(0),
        }
    }
}

#[derive(Serialize)]
pub struct CountersView {
    since: String,
    future_entries_dropped: u64,
    token_failures: u64,
    token_lockouts: u64,
    unpaged_snapshots_refused: u64,
    oversized_answers: u64,
}

#[derive(Serialize)]
pub struct StatsView {
    plans: Vec<PlanView>,
    window_seconds: i64,
    cache: CacheView,
    proxies: Vec<ProxyView>,
    /// How many of `proxies` lag.
    lagging: usize,
    counters: CountersView,
    /// Fleet-wide limits, as this replica counted them (`fleet.rs`).
    fleet: crate::fleet::FleetView,
}

fn rfc3339(secs: i64) -> String {
    format_rfc3339(UnixNanos::from_secs(u64::try_from(secs).unwrap_or(0)))
}

pub async fn get(State(s): State<AppState>) -> Result<Json<StatsView>, ApiError> {
    // Buckets that start within the window: a bucket is counted whole or not at all.
    let since = s.clock.now_secs().saturating_sub(WINDOW_SECONDS);
    let stats = s.store.stats(since).await?;
    let lag_version = s
        .store
        .version_at(s.clock.now_secs().saturating_sub(LAG_SECS))
        .await?;
    let proxies: Vec<ProxyView> = stats
        .proxies
        .into_iter()
        .map(|p| ProxyView {
            behind: p.cache_version.map(|v| stats.version.saturating_sub(v)),
            lagging: p.cache_version.is_none_or(|v| v < lag_version),
            proxy: p.proxy,
            cache_version: p.cache_version,
            seen_at: rfc3339(p.seen_at),
        })
        .collect();
    Ok(Json(StatsView {
        plans: stats
            .plans
            .into_iter()
            .map(|p| PlanView {
                plan: p.plan,
                allowed: p.allowed,
                refused: p.refused,
                shadow_refused: p.shadow_refused,
            })
            .collect(),
        window_seconds: WINDOW_SECONDS,
        cache: CacheView {
            version: stats.version,
            epoch: stats.epoch,
        },
        lagging: proxies.iter().filter(|p| p.lagging).count(),
        proxies,
        counters: CountersView {
            since: rfc3339(s.counters.since),
            future_entries_dropped: s.counters.future_entries_dropped.load(Ordering::Relaxed),
            token_failures: s.counters.token_failures.load(Ordering::Relaxed),
            token_lockouts: s.counters.token_lockouts.load(Ordering::Relaxed),
            unpaged_snapshots_refused: s.counters.unpaged_snapshots_refused.load(Ordering::Relaxed),
            oversized_answers: s.counters.oversized_answers.load(Ordering::Relaxed),
        },
        fleet: s.fleet.view(),
    }))
}
