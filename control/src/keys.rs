//! The key API: issue, list, show, rotate, revoke and verify API keys.
//!
//! A key's secret exists only in the response that issues it: the database keeps its
//! SHA-256 (the same hash the plugin looks keys up by), and no other response, log line or
//! audit event ever holds the secret or the hash. An issuance sent again with the same
//! `Idempotency-Key` is answered with the key it issued, without the secret
//! (`idempotency.rs`).

use crate::app::{AppState, RequestCtx};
use crate::error::{ApiError, ApiJson, ApiQuery, OptionalJson};
use crate::idempotency::{self, Canonical, IdempotencyKey};
use crate::levers::{LimitsView, key_limits};
use crate::plans::Plans;
use crate::store::{IdempotencyClaim, IdempotencyRecord, Issued, KeyRow, NewKey, OldKeyEnd};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse_core::authn::api_key::{KeyHash, RANDOM_LEN, check_format, format_key, is_valid_id};
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The longest `expires_in_days`: ten years.
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;
/// The longest rotation grace: 30 days.
pub const MAX_GRACE_SECONDS: u32 = 30 * 86_400;
pub const MAX_SCOPES: usize = 32;
pub const MAX_DEVICE_NAME_CHARS: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    user_id: String,
    tenant_id: String,
    plan: String,
    device_name: String,
    expires_in_days: Option<u32>,
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    grace_seconds: Option<u32>,
}

/// The most keys one list answers, and how many a list of every key answers unless told
/// (one user's list answers up to the most: it is read oldest first, and a smaller
/// default would hide the user's newest keys).
pub const MAX_LIST_LIMIT: u32 = 1000;
pub const DEFAULT_LIST_LIMIT: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// One user's keys, oldest first; absent: every key, newest first (the dashboard).
    user: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyKey {
    api_key: String,
}

fn rfc3339(secs: i64) -> String {
    format_rfc3339(UnixNanos::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// A key as the admin API shows it: never the secret, never its hash.
#[derive(Serialize)]
pub struct KeyView {
    id: String,
    user_id: String,
    tenant_id: String,
    plan: String,
    device_name: String,
    scopes: Vec<String>,
    /// `active`, `revoked` (revoked, or past the end of a rotation's grace) or `expired`.
    status: &'static str,
    created_at: String,
    /// When the key stops working on its own (its expiry, or a rotation's grace end).
    expires_at: Option<String>,
    revoked_at: Option<String>,
    replaced_by: Option<String>,
    /// The latest use a proxy reported (`POST /v1/events`), or null.
    last_used: Option<String>,
    /// The key's own rate in force (`PUT /v1/keys/{id}/limits`), or null.
    limits: Option<LimitsView>,
}

impl KeyView {
    fn of(k: &KeyRow, now: i64) -> KeyView {
        let status = if !k.active || k.revoked_at.is_some_and(|t| t <= now) {
            "revoked"
        } else if k.effective_expiry().is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        };
        KeyView {
            id: k.id.clone(),
            user_id: k.user_id.clone(),
            tenant_id: k.tenant_id.clone(),
            plan: k.plan.clone(),
            device_name: k.device_name.clone(),
            scopes: k.scopes.clone(),
            status,
            created_at: rfc3339(k.created_at),
            expires_at: k.effective_expiry().map(rfc3339),
            revoked_at: k.revoked_at.map(rfc3339),
            replaced_by: k.replaced_by.clone(),
            last_used: k.last_used.map(rfc3339),
            limits: None,
        }
    }

    /// The view with the key's override in force, if `found` holds one.
    fn with_limits(mut self, found: &mut HashMap<String, LimitsView>) -> KeyView {
        self.limits = found.remove(&self.id);
        self
    }
}

/// A freshly issued key: the record plus the secret, shown this once.
#[derive(Serialize)]
pub struct IssuedKey {
    #[serde(flatten)]
    key: KeyView,
    api_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaces: Option<KeyView>,
}

/// The answer to a retry of an issuance (same `Idempotency-Key`, same request): the key
/// the first request issued, as it is now, without its secret.
#[derive(Serialize)]
pub struct ReplayedKey {
    #[serde(flatten)]
    key: KeyView,
    /// Always null: the secret was in the first answer only, and is not stored.
    api_key: Option<String>,
    /// Always true (the answer also has the header `Idempotent-Replayed: true`).
    replayed: bool,
    /// Where the secret went and how to get a new one, by the key's state.
    note: String,
}

#[derive(Serialize)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

#[derive(Serialize)]
pub struct Verified {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
}

fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(id_rule(field)))
    }
}

/// What the id rule asks of `field`, for messages (never the value sent).
pub(crate) fn id_rule(field: &str) -> String {
    format!("{field} must be 1 to 128 of A-Z a-z 0-9 . _ : @ + -")
}

/// A device name as stored (trimmed), or what is wrong with it. Length and characters are
/// checked on the name as sent, as the OpenAPI document states them (a tab or newline at
/// the end is refused, not trimmed away).
pub(crate) fn checked_device_name(name: &str) -> Result<String, String> {
    let trimmed = name.trim();
    if trimmed.is_empty()
        || name.chars().count() > MAX_DEVICE_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(format!(
            "device_name must be 1 to {MAX_DEVICE_NAME_CHARS} characters, no control characters"
        ));
    }
    Ok(trimmed.to_string())
}

/// Scopes as stored (sorted, each once), or what is wrong with them. A key without scopes
/// may call every route. `[]` would read as "no route" to anyone but the plugin, so it is
/// refused rather than given either meaning.
pub(crate) fn checked_scopes(scopes: Option<Vec<String>>) -> Result<Vec<String>, String> {
    let mut scopes = match scopes {
        None => return Ok(Vec::new()),
        Some(s) if s.is_empty() => {
            return Err(
                "scopes must not be empty: omit scopes for a key that may call every route"
                    .to_string(),
            );
        }
        Some(s) => s,
    };
    if scopes.len() > MAX_SCOPES {
        return Err(format!("scopes may hold at most {MAX_SCOPES} entries"));
    }
    if !scopes.iter().all(|s| is_valid_id(s)) {
        return Err(id_rule("each scope"));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// The proxies refuse a credential on a plan their policy does not know: no key is
/// issued on one (`plans.rs`). The message lists the plans, never the value sent.
fn check_plan(s: &AppState, plan: &str) -> Result<(), ApiError> {
    if s.config.plans.contains(plan) {
        Ok(())
    } else {
        Err(ApiError::bad_request(plan_rule(&s.config.plans)))
    }
}

/// What `plan` must be, for messages.
pub(crate) fn plan_rule(plans: &Plans) -> String {
    format!("plan must be one of {}", plans.listed())
}

/// Base62 characters of a key id after `key_` (95 bits).
pub const ID_RANDOM_LEN: usize = 16;

/// A new key: the secret (shown once), its SHA-256 and its id.
#[derive(Debug)]
pub struct DrawnKey {
    pub secret: String,
    pub sha256: String,
    pub id: String,
}

/// Draws a key for the API and for `gatehouse-control new-key` alike. The id is drawn
/// apart from the secret: it is shown in lists, audit events, logs and identity headers,
/// so no character of it may come from the secret.
pub fn draw_key(prefix: &str) -> Result<DrawnKey, getrandom::Error> {
    let random = crate::random::base62(RANDOM_LEN)?;
    let secret = format_key(prefix, &random);
    let sha256 = KeyHash::of_key(secret.as_bytes()).to_hex();
    Ok(DrawnKey {
        secret,
        sha256,
        id: new_key_id()?,
    })
}

/// A key id: `key_` and [`ID_RANDOM_LEN`] base62 characters, drawn on their own.
pub fn new_key_id() -> Result<String, getrandom::Error> {
    Ok(format!("key_{}", crate::random::base62(ID_RANDOM_LEN)?))
}

/// The base62 characters of an imported key's id that tell the second it was drawn.
pub const ID_TIME_LEN: usize = 6;

/// The id drawn for an imported key that brings none: `key_` and [`ID_RANDOM_LEN`] base62
/// characters, as [`new_key_id`], the first [`ID_TIME_LEN`] of them the Unix second
/// `now_secs` (zero-padded; the alphabet is in ASCII order, so the ids sort as the
/// seconds do, until the year 3770), the other ten drawn at random (59 bits).
///
/// Why: an import inserts up to 10^6 keys at a time, and a random id lands anywhere in
/// the primary-key index, so each commit dirtied (and wrote) most of its pages; ids that
/// grow with time all go in at one place. The second is no secret: it is the key's
/// `created_at`.
pub fn new_import_key_id(now_secs: i64) -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rest = u64::try_from(now_secs).unwrap_or(0);
    let mut time = [b'0'; ID_TIME_LEN];
    for digit in time.iter_mut().rev() {
        *digit = ALPHABET.get((rest % 62) as usize).copied().unwrap_or(b'0');
        rest /= 62;
    }
    let time = std::str::from_utf8(&time).unwrap_or("000000");
    let random = crate::random::base62(ID_RANDOM_LEN - ID_TIME_LEN)?;
    Ok(format!("key_{time}{random}"))
}

pub async fn create(
    State(s): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    check_id("user_id", &body.user_id)?;
    check_id("tenant_id", &body.tenant_id)?;
    check_id("plan", &body.plan)?;
    check_plan(&s, &body.plan)?;
    let device_name = checked_device_name(&body.device_name).map_err(ApiError::bad_request)?;
    let scopes = checked_scopes(body.scopes).map_err(ApiError::bad_request)?;
    let once = idempotency::from_headers(&headers)?;
    let now = s.clock.now_secs();
    let expires_at = match body.expires_in_days {
        None => None,
        Some(d) if (1..=MAX_EXPIRES_IN_DAYS).contains(&d) => {
            Some(now.saturating_add(i64::from(d) * 86_400))
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "expires_in_days must be from 1 to {MAX_EXPIRES_IN_DAYS}"
            )));
        }
    };
    let claim = match &once {
        None => None,
        Some(k) => Some(IdempotencyClaim {
            key_sha256: k.sha256().to_string(),
            request_sha256: idempotency::fingerprint(&Canonical {
                user_id: &body.user_id,
                tenant_id: &body.tenant_id,
                plan: &body.plan,
                device_name: &device_name,
                expires_in_days: body.expires_in_days,
                scopes: &scopes,
            })?,
            not_before: now.saturating_sub(idempotency::RETENTION_SECS),
        }),
    };
    let DrawnKey { secret, sha256, id } =
        draw_key(&s.config.key_prefix).map_err(|e| ApiError::internal(&e))?;
    let new = NewKey {
        id,
        sha256,
        user_id: body.user_id,
        tenant_id: body.tenant_id,
        plan: body.plan,
        device_name,
        scopes,
        expires_at,
    };
    let issued = s
        .store
        .create_key(
            new,
            s.config.max_keys_per_user,
            claim.as_ref(),
            &ctx.change(now),
        )
        .await?;
    let row = match (issued, &once, &claim) {
        (Issued::Created(row), _, _) => row,
        (Issued::Recorded(found), Some(once), Some(claim)) => {
            return replay(&found, once, claim, now);
        }
        (Issued::Recorded(_), _, _) => {
            return Err(ApiError::internal(&"a replay without an Idempotency-Key"));
        }
    };
    s.committed(row.version);
    Ok((
        StatusCode::CREATED,
        Json(IssuedKey {
            key: KeyView::of(&row, now),
            api_key: secret,
            replaces: None,
        }),
    )
        .into_response())
}

/// The answer to an issuance whose Idempotency-Key was recorded: the same request gets
/// its key without the secret (200), another request 422, a key deleted since 410.
fn replay(
    found: &IdempotencyRecord,
    once: &IdempotencyKey,
    claim: &IdempotencyClaim,
    now: i64,
) -> Result<Response, ApiError> {
    if !idempotency::same_request(&found.request_sha256, &claim.request_sha256) {
        tracing::warn!(
            idempotency_key = once.logged(),
            "Idempotency-Key reused with another request"
        );
        return Err(idempotency::reused());
    }
    let Some(key) = &found.key else {
        tracing::info!(idempotency_key = once.logged(), key_id = %found.key_id,
            "idempotent replay of a deleted key");
        return Err(idempotency::gone());
    };
    let view = KeyView::of(key, now);
    tracing::info!(idempotency_key = once.logged(), key_id = %key.id, status = view.status,
        "idempotent replay");
    let note = idempotency::note(&key.id, view.status, key.replaced_by.as_deref());
    let mut response = (
        StatusCode::OK,
        Json(ReplayedKey {
            key: view,
            api_key: None,
            replayed: true,
            note,
        }),
    )
        .into_response();
    response.headers_mut().insert(
        idempotency::REPLAYED_HEADER,
        HeaderValue::from_static("true"),
    );
    Ok(response)
}

pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<KeyList>, ApiError> {
    if let Some(user) = &q.user {
        check_id("user", user)?;
    }
    let default = if q.user.is_some() {
        MAX_LIST_LIMIT
    } else {
        DEFAULT_LIST_LIMIT
    };
    let limit = q.limit.unwrap_or(default);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_LIST_LIMIT}"
        )));
    }
    let now = s.clock.now_secs();
    let keys = s.store.list_keys(q.user.as_deref(), limit).await?;
    let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let mut limits = key_limits(&s, &ids).await?;
    Ok(Json(KeyList {
        keys: keys
            .iter()
            .map(|k| KeyView::of(k, now).with_limits(&mut limits))
            .collect(),
    }))
}

pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    match s.store.get_key(&id).await? {
        Some(k) => {
            let mut limits = key_limits(&s, std::slice::from_ref(&k.id)).await?;
            Ok(Json(
                KeyView::of(&k, s.clock.now_secs()).with_limits(&mut limits),
            ))
        }
        None => Err(ApiError::not_found("no such key")),
    }
}

pub async fn rotate(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<RotateKey>,
) -> Result<Json<IssuedKey>, ApiError> {
    let now = s.clock.now_secs();
    let end = match body.grace_seconds {
        None | Some(0) => OldKeyEnd::Now,
        Some(g) if g <= MAX_GRACE_SECONDS => OldKeyEnd::At(now.saturating_add(i64::from(g))),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "grace_seconds must be from 0 to {MAX_GRACE_SECONDS}"
            )));
        }
    };
    // The successor keeps the old key's plan: one the service no longer issues keys on
    // (it left GATEHOUSE_PLANS or the policy) would give a new secret the proxies refuse.
    // A plan never changes, so reading it before the rotation's transaction is safe.
    match s.store.get_key(&id).await? {
        None => return Err(ApiError::not_found("no such key")),
        Some(old) if !s.config.plans.contains(&old.plan) => {
            return Err(ApiError::bad_request(format!(
                "the key's plan is not one of {}: issue a new key on one of them instead",
                s.config.plans.listed()
            )));
        }
        Some(_) => {}
    }
    let DrawnKey {
        secret,
        sha256,
        id: new_id,
    } = draw_key(&s.config.key_prefix).map_err(|e| ApiError::internal(&e))?;
    let (old, new) = s
        .store
        .rotate_key(&id, new_id, sha256, end, &ctx.change(now))
        .await?;
    s.committed(new.version);
    // The override stays with the old key's id: a rotation does not carry it over.
    let mut limits = key_limits(&s, std::slice::from_ref(&old.id)).await?;
    Ok(Json(IssuedKey {
        key: KeyView::of(&new, now),
        api_key: secret,
        replaces: Some(KeyView::of(&old, now).with_limits(&mut limits)),
    }))
}

pub async fn revoke(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let now = s.clock.now_secs();
    let row = s.store.revoke_key(&id, &ctx.change(now)).await?;
    s.committed(row.version);
    let mut limits = key_limits(&s, std::slice::from_ref(&row.id)).await?;
    Ok(Json(KeyView::of(&row, now).with_limits(&mut limits)))
}

pub async fn verify(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<VerifyKey>,
) -> Result<Json<Verified>, ApiError> {
    let invalid = Verified {
        valid: false,
        key_id: None,
        user_id: None,
        tenant_id: None,
        plan: None,
        scopes: None,
    };
    // A mistyped or made-up key is refused without a lookup, as the plugin does.
    if body.api_key.len() > gatehouse_core::authn::api_key::MAX_PRESENTED_KEY_LEN
        || check_format(body.api_key.as_bytes()).is_err()
    {
        return Ok(Json(invalid));
    }
    let hash = KeyHash::of_key(body.api_key.as_bytes()).to_hex();
    match s.store.find_key_by_hash(&hash).await? {
        Some(k) if k.usable_at(s.clock.now_secs()) => Ok(Json(Verified {
            valid: true,
            key_id: Some(k.id),
            user_id: Some(k.user_id),
            tenant_id: Some(k.tenant_id),
            plan: Some(k.plan),
            scopes: Some(k.scopes),
        })),
        _ => Ok(Json(invalid)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// Every 8-character window of `s`.
    fn windows(s: &str) -> Vec<&str> {
        (0..=s.len().saturating_sub(8))
            .map(|i| &s[i..i + 8])
            .collect()
    }

    #[test]
    fn an_imported_key_id_has_the_issued_format_and_sorts_by_its_second() {
        let seconds = [
            0,
            61,
            62,
            1_767_225_599,
            1_767_225_600,
            1_767_225_601,
            9_999_999_999,
        ];
        let ids: Vec<String> = seconds
            .iter()
            .map(|s| new_import_key_id(*s).unwrap())
            .collect();
        for id in &ids {
            assert!(is_valid_id(id), "{id}");
            let chars = id.strip_prefix("key_").unwrap();
            assert_eq!(chars.len(), ID_RANDOM_LEN, "{id}");
            assert!(chars.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(&ids[0]["key_".len()..][..ID_TIME_LEN], "000000");
        assert_eq!(&ids[1]["key_".len()..][..ID_TIME_LEN], "00000z");
        // The same second: the same prefix, another key.
        let again = new_import_key_id(1_767_225_600).unwrap();
        assert_eq!(again[..4 + ID_TIME_LEN], ids[4][..4 + ID_TIME_LEN]);
        assert_ne!(again, ids[4]);
    }

    #[test]
    fn a_key_id_shares_no_eight_characters_with_its_secret() {
        for _ in 0..2000 {
            let k = draw_key("ghk").unwrap();
            let id = k.id.strip_prefix("key_").unwrap();
            assert_eq!(id.len(), ID_RANDOM_LEN);
            assert!(is_valid_id(&k.id));
            let random = &k.secret["ghk_".len()..];
            for w in windows(id) {
                assert!(!random.contains(w), "{} and {} share {w}", k.id, k.secret);
            }
            assert_eq!(k.sha256, KeyHash::of_key(k.secret.as_bytes()).to_hex());
        }
    }
}
