//! `GET /v1/stats/series?window=hour|day`: requests per plan per minute, allowed, refused
//! and passed-but-shadow-refused, from the per-minute buckets the proxies' reports fill
//! (the control service's clock at each report). What the dashboard draws.
//!
//! Only the minutes with requests are listed (the page draws the others as 0), and only
//! the [`MAX_PLANS`] busiest plans of the window (by all their requests): at most 1440
//! points of [`MAX_PLANS`] plans, some 2 MB at the very worst; `plans_left_off` says how
//! many others there were.

use super::window::{Window, WindowQuery};
use crate::app::AppState;
use crate::error::{ApiError, ApiQuery};
use axum::Json;
use axum::extract::State;
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde::Serialize;

/// The plans answered, busiest first.
pub const MAX_PLANS: u32 = 16;

#[derive(Serialize)]
pub struct PointView {
    minute: String,
    allowed: i64,
    refused: i64,
    shadow_refused: i64,
}

#[derive(Serialize)]
pub struct PlanView {
    plan: String,
    allowed: i64,
    refused: i64,
    shadow_refused: i64,
    points: Vec<PointView>,
}

#[derive(Serialize)]
pub struct SeriesView {
    window: Window,
    step_seconds: i64,
    /// The start of the first minute and of the last (the current one).
    from: String,
    to: String,
    plans: Vec<PlanView>,
    plans_left_off: u64,
}

fn rfc3339(secs: i64) -> String {
    format_rfc3339(UnixNanos::from_secs(u64::try_from(secs).unwrap_or(0)))
}

pub async fn get(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<WindowQuery>,
) -> Result<Json<SeriesView>, ApiError> {
    let window = Window::of_query(&q)?;
    let now = s.clock.now_secs();
    let since = window.since(now);
    let series = s.store.series(since, MAX_PLANS).await?;
    Ok(Json(SeriesView {
        window,
        step_seconds: 60,
        from: rfc3339(since),
        to: rfc3339(crate::store::minute_of(now)),
        plans: series
            .plans
            .into_iter()
            .map(|p| PlanView {
                plan: p.totals.plan,
                allowed: p.totals.allowed,
                refused: p.totals.refused,
                shadow_refused: p.totals.shadow_refused,
                points: p
                    .points
                    .into_iter()
                    .map(|pt| PointView {
                        minute: rfc3339(pt.minute),
                        allowed: pt.allowed,
                        refused: pt.refused,
                        shadow_refused: pt.shadow_refused,
                    })
                    .collect(),
            })
            .collect(),
        plans_left_off: series.plans_left_off,
    }))
}
