//! `GET /v1/stats`: per-plan request counts over the last 24 hours (from the per-minute
//! buckets the proxies' reports fill), the feed's version and epoch, and the cache
//! version each proxy last said it had applied. What the dashboard shows.

use crate::app::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use gatehouse::time::{UnixNanos, format_rfc3339};
use serde::Serialize;

/// The window the counts cover.
pub const WINDOW_SECONDS: i64 = 86_400;

#[derive(Serialize)]
pub struct PlanView {
    plan: String,
    allowed: i64,
    refused: i64,
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
    seen_at: String,
}

#[derive(Serialize)]
pub struct StatsView {
    plans: Vec<PlanView>,
    window_seconds: i64,
    cache: CacheView,
    proxies: Vec<ProxyView>,
}

pub async fn get(State(s): State<AppState>) -> Result<Json<StatsView>, ApiError> {
    // Buckets that start within the window: a bucket is counted whole or not at all.
    let since = s.clock.now_secs().saturating_sub(WINDOW_SECONDS);
    let stats = s.store.stats(since).await?;
    Ok(Json(StatsView {
        plans: stats
            .plans
            .into_iter()
            .map(|p| PlanView {
                plan: p.plan,
                allowed: p.allowed,
                refused: p.refused,
            })
            .collect(),
        window_seconds: WINDOW_SECONDS,
        cache: CacheView {
            version: stats.version,
            epoch: stats.epoch,
        },
        proxies: stats
            .proxies
            .into_iter()
            .map(|p| ProxyView {
                proxy: p.proxy,
                cache_version: p.cache_version,
                seen_at: format_rfc3339(UnixNanos::from_secs(
                    u64::try_from(p.seen_at).unwrap_or(0),
                )),
            })
            .collect(),
    }))
}
