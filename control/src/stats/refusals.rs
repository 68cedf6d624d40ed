//! `GET /v1/stats/refusals?window=hour|day`: the refusals the proxies reported, grouped
//! the way people read them: by code, route and caller, with a count and the first and
//! last time seen, real refusals apart from the "would refuse" of rules in shadow mode;
//! the callers and routes refused most; and the "many distinct callers refused" alert.
//!
//! Read from `refusal_buckets` (per minute of the refusals' `at`; migration 0007), never
//! from the audit log's one row per refusal, so the answer costs the same for forty
//! identical refusals as for one. Every list is bounded ([`MAX_GROUPS`], [`MAX_TOP`]).
//!
//! The alert is the incident every team that adds limits meets: legitimate callers
//! blocked, seen as many *distinct* callers answered 429 within a few minutes (one caller
//! refused a thousand times is that caller's problem; fifty callers refused once each is
//! the limit's). It fires when more than `GATEHOUSE_ALERT_DISTINCT_REFUSED` (default 10)
//! callers got a real 429 in the minutes that began within the last
//! [`ALERT_WINDOW_SECS`]. Shadow refusals never fire it: nobody was refused.

use super::window::{Window, WindowQuery};
use crate::app::AppState;
use crate::error::{ApiError, ApiQuery};
use crate::store::{RefusalLimits, RefusalTally, minute_of};
use axum::Json;
use axum::extract::State;
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde::Serialize;

/// The groups answered, largest first.
pub const MAX_GROUPS: u32 = 100;
/// The callers and routes answered, each.
pub const MAX_TOP: u32 = 10;
/// The alert counts the callers refused in the minutes that began this long ago or since.
pub const ALERT_WINDOW_SECS: i64 = 300;
/// The status the alert counts: rate limits, the refusals a lever lifts.
pub const ALERT_STATUS: i64 = 429;
pub const DEFAULT_ALERT_DISTINCT_REFUSED: u32 = 10;

#[derive(Serialize)]
pub struct GroupView {
    code: String,
    status: i64,
    route: String,
    caller: String,
    shadow: bool,
    count: i64,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize)]
pub struct CallerView {
    caller: String,
    refused: i64,
    would_refuse: i64,
}

#[derive(Serialize)]
pub struct RouteView {
    route: String,
    refused: i64,
    would_refuse: i64,
}

#[derive(Serialize)]
pub struct AlertView {
    /// Distinct callers refused with [`ALERT_STATUS`] in the alert's window.
    distinct_callers: i64,
    threshold: u32,
    window_seconds: i64,
    status: i64,
    /// `distinct_callers` > `threshold`.
    firing: bool,
}

#[derive(Serialize)]
pub struct RefusalsView {
    window: Window,
    from: String,
    to: String,
    groups: Vec<GroupView>,
    /// More groups were in the window than the [`MAX_GROUPS`] answered.
    groups_truncated: bool,
    top_callers: Vec<CallerView>,
    top_routes: Vec<RouteView>,
    alert: AlertView,
}

fn rfc3339(secs: i64) -> String {
    format_rfc3339(UnixNanos::from_secs(u64::try_from(secs).unwrap_or(0)))
}

pub async fn get(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> Result<Json<RefusalsView>, ApiError> {
    let window = Window::of_query(&q)?;
    let now = s.clock.now_secs();
    let since = window.since(now);
    let stats = s
        .store
        .refusal_stats(
            since,
            minute_of(now - ALERT_WINDOW_SECS),
            ALERT_STATUS,
            RefusalLimits {
                groups: MAX_GROUPS,
                top: MAX_TOP,
            },
        )
        .await?;
    let threshold = s.config.alert_distinct_refused;
    let tally = |t: RefusalTally| (t.name, t.refused, t.would_refuse);
    Ok(Json(RefusalsView {
        window,
        from: rfc3339(since),
        to: rfc3339(now),
        groups: stats
            .groups
            .into_iter()
            .map(|g| GroupView {
                code: g.code,
                status: g.status,
                route: g.route,
                caller: g.caller,
                shadow: g.shadow,
                count: g.count,
                first_seen: rfc3339(g.first_at),
                last_seen: rfc3339(g.last_at),
            })
            .collect(),
        groups_truncated: stats.more_groups,
        top_callers: stats
            .top_callers
            .into_iter()
            .map(tally)
            .map(|(caller, refused, would_refuse)| CallerView {
                caller,
                refused,
                would_refuse,
            })
            .collect(),
        top_routes: stats
            .top_routes
            .into_iter()
            .map(tally)
            .map(|(route, refused, would_refuse)| RouteView {
                route,
                refused,
                would_refuse,
            })
            .collect(),
        alert: AlertView {
            distinct_callers: stats.alert_callers,
            threshold,
            window_seconds: ALERT_WINDOW_SECS,
            status: ALERT_STATUS,
            firing: stats.alert_callers > i64::from(threshold),
        },
    }))
}
