//! `GET /v1/cache`: the feed the proxies' sync polls (control/FEED.md).
//!
//! Versions: `meta.seq` is bumped in the transaction of every change and stamped on the
//! rows it touched, so "every change after `since`" is "every row with version > since",
//! each row once in its latest state. `since=0` (or a `since` ahead of this database, or
//! an epoch that is not this database's) answers a snapshot (`full: true`). A `since`
//! below the highest version the cleanup job has purged cannot be served as a delta: 410
//! Gone, and the sync starts a snapshot.
//!
//! Pages: an answer holds at most `GATEHOUSE_FEED_PAGE_SIZE` records. Changes come in
//! whole versions, `more: true` when later ones wait; a snapshot comes in pages chained by
//! the cursor in `next` (`feed/cursor.rs`), all with the version of its first page. How
//! the store cuts them: `store/paging.rs`.
//!
//! Older syncs (no `paged=true`) read a snapshot as one answer: one that fits a page is
//! theirs; a larger one is refused with 409 `PAGING_REQUIRED`, counted and logged, since
//! cut to its first page it would make them retire every key of the pages they never read.
//!
//! Long-poll: only an answer with nothing after `since` waits; a snapshot page never does,
//! except the one empty page of a database that has never changed (version 0), which the
//! sync, up to date with it, asks for again with `since=0` and must not spin on. The
//! handler subscribes to the committed-version channel *before* reading, so a change that
//! commits between the read and the wait still wakes it. Changes committed through other
//! replicas reach that channel too (`follow.rs`). A process that is stopping answers its
//! held polls at once, as at the end of their `wait` (`serve.rs`).

mod cursor;

use crate::app::AppState;
use crate::error::{ApiError, ApiQuery};
use crate::store::{FeedAnswer, FeedAsk, FeedPage, FeedRecords, SnapshotAt};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_core::sync::feed::MAX_ANSWER_BYTES;
use serde::Deserialize;
use std::sync::atomic::Ordering;
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
    /// Optional: the epoch the caller's `since` or cursor belongs to. If it is not this
    /// database's, the answer is the first page of a new snapshot.
    epoch: Option<String>,
    /// `true` from a sync that reads snapshots in pages; absent (or `false`) from an older
    /// one (control/FEED.md, "Older syncs").
    paged: Option<bool>,
    /// With `since=0` and `paged=true`: the `next` cursor of the snapshot page before.
    after: Option<String>,
}

fn bad_cursor() -> ApiError {
    // Never quotes the cursor: it is the client's text.
    ApiError::bad_request(
        "after is not a cursor this service gave out; start the snapshot again without it",
    )
}

fn page(
    epoch: String,
    version: i64,
    full: bool,
    more: bool,
    next: Option<String>,
    records: FeedRecords,
) -> FeedPage {
    FeedPage {
        epoch,
        version,
        full,
        more,
        next,
        keys: records.keys,
        users: records.users,
        jtis: records.jtis,
        levers: records.levers,
    }
}

async fn read(s: &AppState, ask: &FeedAsk<'_>) -> Result<FeedPage, ApiError> {
    match s.store.feed(ask).await? {
        FeedAnswer::Changes {
            epoch,
            version,
            more,
            records,
        } => Ok(page(epoch, version, false, more, None, records)),
        FeedAnswer::Snapshot {
            epoch,
            view,
            records,
            next,
        } => {
            let next = next.map(|pos| {
                cursor::encode(&SnapshotAt {
                    epoch: epoch.clone(),
                    view,
                    pos,
                })
            });
            Ok(page(epoch, view, true, false, next, records))
        }
        FeedAnswer::Gone => Err(ApiError::new(
            StatusCode::GONE,
            "GONE",
            "since is older than the oldest change kept; ask again with since=0",
        )),
        FeedAnswer::UnknownView => Err(bad_cursor()),
    }
}

/// [`read`], refusing a snapshot larger than one page to a sync that cannot read pages.
async fn answer(s: &AppState, ask: &FeedAsk<'_>, paged: bool) -> Result<FeedPage, ApiError> {
    let page = read(s, ask).await?;
    if paged || page.next.is_none() {
        return Ok(page);
    }
    let records = s.store.feed_size().await?;
    s.counters
        .unpaged_snapshots_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        records,
        page_size = ask.page,
        "refused a snapshot larger than GATEHOUSE_FEED_PAGE_SIZE to a sync that cannot read \
         pages (409 PAGING_REQUIRED): its proxy runs an older gatehouse module"
    );
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "PAGING_REQUIRED",
        format!(
            "the snapshot is larger than one page ({records} records); upgrade the gatehouse \
             module"
        ),
    ))
}

/// Whether `page` may be held for a change (see the module doc).
fn may_wait(page: &FeedPage, ask: &FeedAsk<'_>) -> bool {
    let same_epoch = ask.epoch.is_none_or(|e| e == page.epoch);
    same_epoch && page.version == ask.since && (!page.full || page.version == 0)
}

/// The answer's body, checked against what a proxy's sync reads
/// ([`MAX_ANSWER_BYTES`]): a larger one is sent all the same (the sync counts a failure
/// and keeps its cache), and logged and counted here, where the page size is set.
fn sized(s: &AppState, page: &FeedPage) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(page).map_err(|e| ApiError::internal(&e))?;
    if body.len() > MAX_ANSWER_BYTES {
        s.counters.oversized_answers.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            bytes = body.len(),
            limit = MAX_ANSWER_BYTES,
            page_size = s.config.feed_page_size,
            "a feed answer is larger than a proxy's sync reads: the proxy keeps its cache \
             and its poll fails; lower GATEHOUSE_FEED_PAGE_SIZE"
        );
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub async fn cache(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Response, ApiError> {
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
    let paged = q.paged.unwrap_or(false);
    let after = match q.after.as_deref() {
        None => None,
        Some(_) if !paged => {
            return Err(ApiError::bad_request(
                "after continues a paged snapshot: it goes with paged=true",
            ));
        }
        Some(_) if since != 0 => {
            return Err(ApiError::bad_request(
                "after continues a snapshot: it goes with since=0 only",
            ));
        }
        Some(c) => Some(cursor::decode(c).ok_or_else(bad_cursor)?),
    };
    let ask = FeedAsk {
        since,
        epoch: q.epoch.as_deref(),
        after: after.as_ref(),
        page: usize::try_from(s.config.feed_page_size).unwrap_or(usize::MAX),
        now: s.clock.now_secs(),
    };
    let mut changes = s.changes.subscribe();
    let mut stopping = s.stopping.subscribe();
    let page = answer(&s, &ask, paged).await?;
    if wait.is_zero() || !may_wait(&page, &ask) {
        return sized(&s, &page);
    }
    // Nothing new: wait for a commit past `since`, the end of `wait`, or the process
    // stopping (then answered as at the end of `wait`, so the sync asks another replica).
    // A stopping replica says so (`gatehouse-stopping: 1`): the sync then polls again at
    // once instead of treating the early answer as a quiet one.
    let stopped = tokio::select! {
        _ = tokio::time::timeout(wait, changes.wait_for(|v| *v > since)) => false,
        _ = stopping.wait_for(|stop| *stop) => true,
    };
    // The time again: an override that expired during the wait is left out.
    let ask = FeedAsk {
        now: s.clock.now_secs(),
        ..ask
    };
    let mut response = sized(&s, &answer(&s, &ask, paged).await?)?;
    if stopped {
        response
            .headers_mut()
            .insert(STOPPING_HEADER, header::HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// The header a stopping replica puts on the held polls it answers early.
pub const STOPPING_HEADER: &str = "gatehouse-stopping";
