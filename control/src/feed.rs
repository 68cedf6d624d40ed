//! `GET /v1/cache`: the feed the proxies' sync polls (control/FEED.md).
//!
//! Versions: `meta.seq` is bumped in the transaction of every change and stamped on the
//! rows it touched, so "every change after `since`" is "every row with version > since",
//! each row once in its latest state. `since=0` (or a `since` ahead of this database)
//! answers a snapshot (`full: true`). A `since` below the highest version the cleanup job
//! has purged cannot be served as a delta: 410 Gone, and the sync asks again with 0.
//!
//! Long-poll: the handler subscribes to the committed-version channel *before* reading,
//! so a change that commits between the read and the wait still wakes it.

use crate::app::AppState;
use crate::error::{ApiError, ApiQuery};
use crate::store::{FeedAnswer, FeedPage};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use std::time::Duration;

/// The longest a long-poll is held.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    since: Option<i64>,
    /// Seconds, held to [`MAX_WAIT_SECS`]. An `i64`, as `since` is, so that the range a
    /// client may send is the OpenAPI document's (`int64`, minimum 0), not `u64`'s.
    wait: Option<i64>,
    /// Optional: the epoch the caller's `since` belongs to. If it is not this database's,
    /// the answer is a snapshot, as if `since` were 0.
    epoch: Option<String>,
}

async fn read(s: &AppState, since: i64, epoch: Option<&str>) -> Result<FeedPage, ApiError> {
    let answer = s.store.feed(since).await?;
    let page = match answer {
        FeedAnswer::Page(p) => p,
        FeedAnswer::Gone => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "GONE",
                "since is older than the oldest change kept; ask again with since=0",
            ));
        }
    };
    match epoch {
        Some(e) if e != page.epoch && !page.full => match s.store.feed(0).await? {
            FeedAnswer::Page(p) => Ok(p),
            FeedAnswer::Gone => Err(ApiError::internal(&"a snapshot cannot be gone")),
        },
        _ => Ok(page),
    }
}

pub async fn cache(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let since = q.since.unwrap_or(0);
    if since < 0 {
        return Err(ApiError::bad_request("since must be 0 or a version"));
    }
    let wait = match u64::try_from(q.wait.unwrap_or(0)) {
        Ok(w) => Duration::from_secs(w.min(MAX_WAIT_SECS)),
        Err(_) => {
            return Err(ApiError::bad_request(
                "wait must be 0 or a number of seconds",
            ));
        }
    };
    let mut changes = s.changes.subscribe();
    let page = read(&s, since, q.epoch.as_deref()).await?;
    // A snapshot of an empty database (since 0, version 0) also waits: nothing changed.
    if page.version != since || wait.is_zero() {
        return Ok(Json(page));
    }
    // Nothing new: wait for a commit past `since`, or the end of `wait`.
    let _ = tokio::time::timeout(wait, changes.wait_for(|v| *v > since)).await;
    Ok(Json(read(&s, since, q.epoch.as_deref()).await?))
}
