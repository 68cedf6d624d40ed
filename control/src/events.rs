//! `POST /v1/events`: what the proxies' sync reports (control/FEED.md, "Events"): the
//! refusals the filter made (and the "would refuse" of rules in shadow mode), the keys it
//! saw used, per-plan request counts and the cache version it has applied.
//!
//! Checked strictly and stored whole or not at all: one field out of its rule refuses the
//! whole post with 400 (naming the field and its index, never quoting the value, which
//! may be anything a client put in a request), so a proxy that sends what the contract
//! allows never loses half a batch. Nothing here touches the feed: refusals never bump
//! the version, and `last_used` is not fed.
//!
//! Times come from the proxies' clocks, which the service does not trust: a refusal or
//! key use whose `at` is more than [`MAX_SKEW_SECS`] ahead of the server's clock is
//! dropped, not stored (one post would otherwise pin a key's `last_used`, which only ever
//! moves forward, in the future, or keep a refusal past the event retention). Such
//! entries are counted in the answer (`dropped_future`), in `GET /v1/stats`
//! (`counters.future_entries_dropped`) and in a warning; the rest of the post is stored.

use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use crate::store::{Accepted, EventBatch, MAX_COUNT, PlanCount, Refusal};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gatehouse_core::authn::api_key::is_valid_id;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

pub const MAX_REFUSALS: usize = 1000;
pub const MAX_KEY_USES: usize = 1000;
pub const MAX_REQUESTS: usize = 64;
pub const MAX_REQUEST_ID_LEN: usize = 128;
pub const MAX_METHOD_LEN: usize = 16;
pub const MAX_ROUTE_LEN: usize = 256;
pub const MAX_CODE_LEN: usize = 64;
/// The latest `at` taken: 2100-01-01T00:00:00Z. Later is a broken clock, not a time.
pub const MAX_AT: i64 = 4_102_444_800;
/// How far ahead of the server's clock an `at` may be (a proxy's clock running fast);
/// entries later than that are dropped.
pub const MAX_SKEW_SECS: i64 = 300;

/// The body limit of this route: 1000 refusals at their longest are about 1.2 MB, well
/// above the 64 KiB of every other route (`app::BODY_LIMIT`).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsIn {
    proxy: Option<String>,
    cache_version: Option<i64>,
    refusals: Option<Vec<RefusalIn>>,
    key_uses: Option<Vec<KeyUseIn>>,
    requests: Option<Vec<RequestsIn>>,
    dropped: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalIn {
    at: i64,
    request_id: String,
    method: String,
    route: String,
    code: String,
    status: i64,
    key_id: Option<String>,
    user: Option<String>,
    plan: Option<String>,
    client: Option<String>,
    /// A "would refuse" of a rule in shadow mode (the request passed); absent: false.
    shadow: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUseIn {
    key_id: String,
    at: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsIn {
    plan: String,
    allowed: i64,
    refused: i64,
    /// Requests that passed but a rule in shadow mode would have refused; absent: 0.
    shadow_refused: Option<i64>,
}

#[derive(Serialize)]
pub struct EventsAccepted {
    accepted: Accepted,
    dropped_future: FutureDropped,
}

/// Entries dropped for an `at` more than [`MAX_SKEW_SECS`] ahead of the server's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FutureDropped {
    pub refusals: u64,
    pub key_uses: u64,
}

/// A checked post: what to store, the refusals the proxy says it dropped, and what was
/// dropped here for being too far ahead.
#[derive(Debug)]
pub struct Checked {
    pub batch: EventBatch,
    pub dropped: i64,
    pub future: FutureDropped,
}

const ID_RULE: &str = "1 to 128 of A-Z a-z 0-9 . _ : @ + -";

fn bad(field: &str, rule: &str) -> ApiError {
    ApiError::bad_request(format!("{field} must be {rule}"))
}

/// Printable ASCII without the space (0x21 to 0x7e), up to `max` bytes.
fn printable(s: &str, max: usize) -> bool {
    s.len() <= max && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// An HTTP method token (RFC 9110 `tchar`), up to [`MAX_METHOD_LEN`].
fn method_token(s: &str) -> bool {
    s.len() <= MAX_METHOD_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn refusal_code(s: &str) -> bool {
    (1..=MAX_CODE_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn optional_id(field: String, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if !is_valid_id(&v) => Err(bad(&field, ID_RULE)),
        v => Ok(v),
    }
}

fn unix_seconds(field: &str, at: i64) -> Result<i64, ApiError> {
    if !(0..=MAX_AT).contains(&at) {
        return Err(bad(field, &format!("Unix seconds, from 0 to {MAX_AT}")));
    }
    Ok(at)
}

fn count(field: String, n: i64) -> Result<i64, ApiError> {
    if (0..=MAX_COUNT).contains(&n) {
        Ok(n)
    } else {
        Err(bad(&field, &format!("from 0 to {MAX_COUNT}")))
    }
}

fn refusal(i: usize, r: RefusalIn) -> Result<Refusal, ApiError> {
    let f = |name: &str| format!("refusals[{i}].{name}");
    let at = unix_seconds(&f("at"), r.at)?;
    if !printable(&r.request_id, MAX_REQUEST_ID_LEN) {
        return Err(bad(
            &f("request_id"),
            "0 to 128 printable ASCII characters (0x21 to 0x7e)",
        ));
    }
    if !method_token(&r.method) {
        return Err(bad(&f("method"), "0 to 16 HTTP token characters"));
    }
    if !printable(&r.route, MAX_ROUTE_LEN) {
        return Err(bad(
            &f("route"),
            "0 to 256 printable ASCII characters (0x21 to 0x7e)",
        ));
    }
    if !refusal_code(&r.code) {
        return Err(bad(&f("code"), "1 to 64 of A-Z 0-9 _"));
    }
    if !(400..=599).contains(&r.status) {
        return Err(bad(&f("status"), "from 400 to 599"));
    }
    // An address without a port, written as the standard library parses it (IPv4 dotted
    // quad, IPv6 without brackets or zone).
    let client = match r.client {
        Some(c) if c.parse::<std::net::IpAddr>().is_err() => {
            return Err(bad(&f("client"), "an IPv4 or IPv6 address, without a port"));
        }
        c => c,
    };
    Ok(Refusal {
        at,
        request_id: r.request_id,
        method: r.method,
        route: r.route,
        code: r.code,
        status: r.status,
        key_id: optional_id(f("key_id"), r.key_id)?,
        user: optional_id(f("user"), r.user)?,
        plan: optional_id(f("plan"), r.plan)?,
        client,
        shadow: r.shadow.unwrap_or(false),
    })
}

/// The body as the store takes it, or the first rule it breaks; entries timed later than
/// `now` + [`MAX_SKEW_SECS`] are left out and counted.
pub fn check(body: EventsIn, now: i64) -> Result<Checked, ApiError> {
    let proxy = match body.proxy {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) if is_valid_id(&p) => Some(p),
        Some(_) => return Err(bad("proxy", &format!("empty or {ID_RULE}"))),
    };
    let cache_version = match body.cache_version {
        Some(v) if v < 0 => return Err(bad("cache_version", "a feed version, 0 or more")),
        v => v,
    };
    let refusals = body.refusals.unwrap_or_default();
    if refusals.len() > MAX_REFUSALS {
        return Err(bad(
            "refusals",
            &format!("at most {MAX_REFUSALS} entries per post"),
        ));
    }
    let key_uses = body.key_uses.unwrap_or_default();
    if key_uses.len() > MAX_KEY_USES {
        return Err(bad(
            "key_uses",
            &format!("at most {MAX_KEY_USES} entries per post"),
        ));
    }
    let requests = body.requests.unwrap_or_default();
    if requests.len() > MAX_REQUESTS {
        return Err(bad(
            "requests",
            &format!("at most {MAX_REQUESTS} entries per post"),
        ));
    }
    let dropped = match body.dropped {
        Some(d) if d < 0 => return Err(bad("dropped", "0 or more")),
        d => d.unwrap_or(0),
    };
    let refusals = refusals
        .into_iter()
        .enumerate()
        .map(|(i, r)| refusal(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let key_uses = key_uses
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            if !is_valid_id(&u.key_id) {
                return Err(bad(&format!("key_uses[{i}].key_id"), ID_RULE));
            }
            Ok((u.key_id, unix_seconds(&format!("key_uses[{i}].at"), u.at)?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let requests = requests
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            // "" counts the callers without a plan (anonymous routes).
            if !c.plan.is_empty() && !is_valid_id(&c.plan) {
                return Err(bad(
                    &format!("requests[{i}].plan"),
                    &format!("empty or {ID_RULE}"),
                ));
            }
            Ok(PlanCount {
                allowed: count(format!("requests[{i}].allowed"), c.allowed)?,
                refused: count(format!("requests[{i}].refused"), c.refused)?,
                shadow_refused: count(
                    format!("requests[{i}].shadow_refused"),
                    c.shadow_refused.unwrap_or(0),
                )?,
                plan: c.plan,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every entry has passed its rules first: a post that breaks one is refused whole,
    // whatever its times.
    let latest = now.saturating_add(MAX_SKEW_SECS);
    let (refusals, future_refusals): (Vec<_>, Vec<_>) =
        refusals.into_iter().partition(|r| r.at <= latest);
    let (key_uses, future_uses): (Vec<_>, Vec<_>) =
        key_uses.into_iter().partition(|(_, at)| *at <= latest);
    Ok(Checked {
        batch: EventBatch {
            proxy,
            cache_version,
            refusals,
            key_uses,
            requests,
        },
        dropped,
        future: FutureDropped {
            refusals: future_refusals.len() as u64,
            key_uses: future_uses.len() as u64,
        },
    })
}

pub async fn post(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<EventsIn>,
) -> Result<(StatusCode, Json<EventsAccepted>), ApiError> {
    let now = s.clock.now_secs();
    let Checked {
        batch,
        dropped,
        future,
    } = check(body, now)?;
    if dropped > 0 {
        tracing::warn!(
            proxy = batch.proxy.as_deref().unwrap_or(""),
            dropped,
            "a proxy dropped refusals it had no room to keep"
        );
    }
    if future != FutureDropped::default() {
        s.counters
            .future_entries_dropped
            .fetch_add(future.refusals + future.key_uses, Ordering::Relaxed);
        tracing::warn!(
            proxy = batch.proxy.as_deref().unwrap_or(""),
            refusals = future.refusals,
            key_uses = future.key_uses,
            max_skew_secs = MAX_SKEW_SECS,
            "dropped reported entries timed ahead of the server's clock"
        );
    }
    let accepted = s.store.record_events(&batch, now).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(EventsAccepted {
            accepted,
            dropped_future: future,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_tokens() {
        assert!(method_token("GET"));
        assert!(method_token(""));
        assert!(method_token("M-SEARCH"));
        assert!(!method_token("GE T"));
        assert!(!method_token("GET/"));
        assert!(!method_token(&"A".repeat(17)));
    }

    #[test]
    fn refusal_codes() {
        assert!(refusal_code("RATE_LIMITED"));
        assert!(refusal_code("E2"));
        assert!(!refusal_code(""));
        assert!(!refusal_code("rate_limited"));
        assert!(!refusal_code(&"A".repeat(65)));
    }

    #[test]
    fn printable_excludes_space_and_controls() {
        assert!(printable("/v1/orders/{id}", 256));
        assert!(printable("", 256));
        assert!(!printable("/a b", 256));
        assert!(!printable("/a\u{7f}", 256));
        assert!(!printable("/é", 256));
        assert!(!printable("abc", 2));
    }
}
