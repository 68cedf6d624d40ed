//! The operators' levers (issue 23; feed contract in control/FEED.md, "Levers"): a key's
//! or a tenant's own rate (`PUT/GET/DELETE /v1/keys/{id}/limits`, `.../tenants/{id}/...`),
//! a named limit or rule turned to `shadow` or `off` (`PUT /v1/limits/{name}/mode`), and
//! the allowlist (`POST/GET /v1/allowlist`, `DELETE /v1/allowlist/{id}`). `GET
//! /v1/limits` lists the modes and overrides in force.
//!
//! Each change is one store transaction that bumps the feed version (so held long polls
//! wake and every proxy gets the new set within its next poll) and writes an audit event
//! of kind `lever` with the operator's reason. At most 10,000 entries are in force
//! in all ([`crate::store::MAX_LEVERS`]): one more is refused with 409 `LEVERS_FULL`. Input is checked strictly and no
//! message quotes what the client sent.

use crate::app::{AppState, RequestCtx};
use crate::error::{ApiError, ApiJson, ApiQuery};
use crate::store::{AllowEntry, Levers, Mode, ModeLever, Override, Scope, StoreError, Subject};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gatehouse_core::authn::api_key::is_valid_id;
use gatehouse_core::time::{UnixNanos, format_rfc3339, parse_rfc3339};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The highest `requests_per_minute` an override may set.
pub const MAX_REQUESTS_PER_MINUTE: i64 = 10_000_000;
/// The longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Base62 characters of an allowlist entry's id after `alw_`.
pub const ALLOW_ID_RANDOM_LEN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLimits {
    requests_per_minute: i64,
    /// RFC 3339; absent or null: never.
    #[serde(default)]
    expires_at: Option<String>,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMode {
    /// `enforce`, `shadow` or `off`: a string checked by hand, as serde's message for an
    /// unknown variant would quote what the client sent.
    mode: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAllow {
    #[serde(default)]
    cidr: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    /// The rate limit's name; absent or null: every rate limit.
    #[serde(default)]
    limit: Option<String>,
    reason: String,
}

/// A removal's optional reason, in the query string (a DELETE has no body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovalQuery {
    reason: Option<String>,
}

fn rfc3339(secs: i64) -> String {
    format_rfc3339(UnixNanos::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// An override as `limits` of a key shows it.
#[derive(Serialize)]
pub struct LimitsView {
    requests_per_minute: i64,
    expires_at: Option<String>,
    reason: String,
    updated_at: String,
}

impl LimitsView {
    pub fn of(o: &Override) -> LimitsView {
        LimitsView {
            requests_per_minute: o.requests_per_minute,
            expires_at: o.expires_at.map(rfc3339),
            reason: o.reason.clone(),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// An override with whom it is for.
#[derive(Serialize)]
pub struct OverrideView {
    scope: Scope,
    id: String,
    #[serde(flatten)]
    limits: LimitsView,
}

impl OverrideView {
    fn of(o: &Override) -> OverrideView {
        OverrideView {
            scope: o.scope,
            id: o.id.clone(),
            limits: LimitsView::of(o),
        }
    }
}

#[derive(Serialize)]
pub struct ModeView {
    limit: String,
    mode: Mode,
    reason: String,
    updated_at: String,
}

impl ModeView {
    fn of(m: &ModeLever) -> ModeView {
        ModeView {
            limit: m.limit.clone(),
            mode: m.mode,
            reason: m.reason.clone(),
            updated_at: rfc3339(m.updated_at),
        }
    }
}

#[derive(Serialize)]
pub struct AllowView {
    id: String,
    #[serde(flatten)]
    subject: Subject,
    limit: Option<String>,
    reason: String,
    created_at: String,
}

impl AllowView {
    fn of(e: &AllowEntry) -> AllowView {
        AllowView {
            id: e.id.clone(),
            subject: e.subject.clone(),
            limit: e.limit.clone(),
            reason: e.reason.clone(),
            created_at: rfc3339(e.created_at),
        }
    }
}

#[derive(Serialize)]
pub struct LimitsList {
    modes: Vec<ModeView>,
    overrides: Vec<OverrideView>,
}

#[derive(Serialize)]
pub struct AllowList {
    allowlist: Vec<AllowView>,
}

/// A reason as stored, or what is wrong with it.
fn checked_reason(reason: &str) -> Result<String, ApiError> {
    if reason.trim().is_empty()
        || reason.chars().count() > MAX_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters, no control characters"
        )));
    }
    Ok(reason.to_string())
}

fn checked_removal_reason(q: &RemovalQuery) -> Result<Option<String>, ApiError> {
    q.reason.as_deref().map(checked_reason).transpose()
}

fn check_id(field: &str, value: &str) -> Result<(), ApiError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(ApiError::bad_request(crate::keys::id_rule(field)))
    }
}

/// `text` as a canonical CIDR (`203.0.113.0/24`, `2001:db8::/32`), or `None` if it is not
/// a network with a prefix length and its host bits zero.
pub fn canonical_cidr(text: &str) -> Option<String> {
    // The module's own parser (which also takes an IPv4-mapped network as the IPv4 one it
    // maps), with no leading zero in the prefix length.
    let (_, len) = text.split_once('/')?;
    if len.len() > 1 && len.starts_with('0') {
        return None;
    }
    gatehouse_core::levers::Cidr::parse(text).map(|c| c.to_string())
}

/// The override `body` asks for on `scope`/`id` at `now`, checked.
fn checked_override(
    scope: Scope,
    id: &str,
    body: SetLimits,
    now: i64,
) -> Result<Override, ApiError> {
    if !(1..=MAX_REQUESTS_PER_MINUTE).contains(&body.requests_per_minute) {
        return Err(ApiError::bad_request(format!(
            "requests_per_minute must be from 1 to {MAX_REQUESTS_PER_MINUTE}"
        )));
    }
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(t) => {
            let at = parse_rfc3339(t)
                .and_then(|s| i64::try_from(s).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("expires_at must be an RFC 3339 date-time or null")
                })?;
            if at <= now {
                return Err(ApiError::bad_request("expires_at must be in the future"));
            }
            Some(at)
        }
    };
    Ok(Override {
        scope,
        id: id.to_string(),
        requests_per_minute: body.requests_per_minute,
        expires_at,
        reason: checked_reason(&body.reason)?,
        updated_at: now,
    })
}

fn no_override(scope: Scope) -> ApiError {
    match scope {
        Scope::Key => ApiError::not_found("no limits are set for this key"),
        Scope::Tenant => ApiError::not_found("no limits are set for this tenant"),
    }
}

async fn put_limits(
    s: &AppState,
    ctx: &RequestCtx,
    scope: Scope,
    id: &str,
    body: SetLimits,
) -> Result<Json<OverrideView>, ApiError> {
    let now = s.clock.now_secs();
    let o = checked_override(scope, id, body, now)?;
    let version = s
        .store
        .set_override(&o, &ctx.change(now))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("no such key"),
            e => e.into(),
        })?;
    s.committed(version);
    Ok(Json(OverrideView::of(&o)))
}

async fn get_limits(s: &AppState, scope: Scope, id: &str) -> Result<Json<OverrideView>, ApiError> {
    let found = s
        .store
        .overrides_of(scope, &[id.to_string()], s.clock.now_secs())
        .await?;
    match found.first() {
        Some(o) => Ok(Json(OverrideView::of(o))),
        None => Err(no_override(scope)),
    }
}

async fn delete_limits(
    s: &AppState,
    ctx: &RequestCtx,
    scope: Scope,
    id: &str,
    q: &RemovalQuery,
) -> Result<StatusCode, ApiError> {
    let reason = checked_removal_reason(q)?;
    let now = s.clock.now_secs();
    let version = s
        .store
        .clear_override(scope, id, reason.as_deref(), &ctx.change(now))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => no_override(scope),
            e => e.into(),
        })?;
    s.committed(version);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn put_key(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetLimits>,
) -> Result<Json<OverrideView>, ApiError> {
    // No id check: an id that breaks the rule names no key (404, as GET /v1/keys/{id}).
    put_limits(&s, &ctx, Scope::Key, &id, body).await
}

pub async fn get_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OverrideView>, ApiError> {
    get_limits(&s, Scope::Key, &id).await
}

pub async fn delete_key(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemovalQuery>,
) -> Result<StatusCode, ApiError> {
    delete_limits(&s, &ctx, Scope::Key, &id, &q).await
}

pub async fn put_tenant(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetLimits>,
) -> Result<Json<OverrideView>, ApiError> {
    check_id("the tenant id", &id)?;
    put_limits(&s, &ctx, Scope::Tenant, &id, body).await
}

pub async fn get_tenant(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OverrideView>, ApiError> {
    check_id("the tenant id", &id)?;
    get_limits(&s, Scope::Tenant, &id).await
}

pub async fn delete_tenant(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemovalQuery>,
) -> Result<StatusCode, ApiError> {
    check_id("the tenant id", &id)?;
    delete_limits(&s, &ctx, Scope::Tenant, &id, &q).await
}

pub async fn put_mode(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetMode>,
) -> Result<Json<ModeView>, ApiError> {
    check_id("the limit name", &name)?;
    let mode = match body.mode.as_str() {
        "enforce" => Mode::Enforce,
        "shadow" => Mode::Shadow,
        "off" => Mode::Off,
        _ => return Err(ApiError::bad_request("mode must be enforce, shadow or off")),
    };
    let now = s.clock.now_secs();
    let lever = ModeLever {
        limit: name,
        mode,
        reason: checked_reason(&body.reason)?,
        updated_at: now,
    };
    let version = s.store.set_mode(&lever, &ctx.change(now)).await?;
    s.committed(version);
    Ok(Json(ModeView::of(&lever)))
}

pub async fn list_limits(State(s): State<AppState>) -> Result<Json<LimitsList>, ApiError> {
    let Levers {
        overrides, modes, ..
    } = s.store.levers(s.clock.now_secs()).await?;
    Ok(Json(LimitsList {
        modes: modes.iter().map(ModeView::of).collect(),
        overrides: overrides.iter().map(OverrideView::of).collect(),
    }))
}

/// The one subject `body` names, checked.
fn checked_subject(body: &NewAllow) -> Result<Subject, ApiError> {
    let one_of =
        || ApiError::bad_request("exactly one of cidr, key_id, user or tenant must be given");
    let given = [&body.cidr, &body.key_id, &body.user, &body.tenant]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        return Err(one_of());
    }
    if let Some(cidr) = &body.cidr {
        return canonical_cidr(cidr).map(Subject::Cidr).ok_or_else(|| {
            ApiError::bad_request(
                "cidr must be an IPv4 or IPv6 network with a prefix length and its host bits \
                 zero (e.g. 203.0.113.0/24)",
            )
        });
    }
    if let Some(v) = &body.key_id {
        check_id("key_id", v)?;
        return Ok(Subject::KeyId(v.clone()));
    }
    if let Some(v) = &body.user {
        check_id("user", v)?;
        return Ok(Subject::User(v.clone()));
    }
    match &body.tenant {
        Some(v) => {
            check_id("tenant", v)?;
            Ok(Subject::Tenant(v.clone()))
        }
        None => Err(one_of()),
    }
}

pub async fn add_allow(
    State(s): State<AppState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<NewAllow>,
) -> Result<Response, ApiError> {
    let subject = checked_subject(&body)?;
    if let Some(limit) = &body.limit {
        check_id("limit", limit)?;
    }
    let reason = checked_reason(&body.reason)?;
    let random = crate::random::base62(ALLOW_ID_RANDOM_LEN).map_err(|e| ApiError::internal(&e))?;
    let now = s.clock.now_secs();
    let entry = AllowEntry {
        id: format!("alw_{random}"),
        subject,
        limit: body.limit,
        reason,
        created_at: now,
    };
    let version = s.store.add_allow(&entry, &ctx.change(now)).await?;
    s.committed(version);
    Ok((StatusCode::CREATED, Json(AllowView::of(&entry))).into_response())
}

pub async fn list_allow(State(s): State<AppState>) -> Result<Json<AllowList>, ApiError> {
    let levers = s.store.levers(s.clock.now_secs()).await?;
    Ok(Json(AllowList {
        allowlist: levers.allowlist.iter().map(AllowView::of).collect(),
    }))
}

pub async fn remove_allow(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RemovalQuery>,
) -> Result<StatusCode, ApiError> {
    let reason = checked_removal_reason(&q)?;
    let now = s.clock.now_secs();
    let version = s
        .store
        .remove_allow(&id, reason.as_deref(), &ctx.change(now))
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("no such allowlist entry"),
            e => e.into(),
        })?;
    s.committed(version);
    Ok(StatusCode::NO_CONTENT)
}

/// The overrides in force of these keys, by key id, for the key API's `limits`.
pub async fn key_limits(
    s: &AppState,
    ids: &[String],
) -> Result<HashMap<String, LimitsView>, ApiError> {
    Ok(s.store
        .overrides_of(Scope::Key, ids, s.clock.now_secs())
        .await?
        .iter()
        .map(|o| (o.id.clone(), LimitsView::of(o)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_is_taken_only_as_a_network_with_its_host_bits_zero() {
        for (text, canonical) in [
            ("203.0.113.0/24", "203.0.113.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("198.51.100.7/32", "198.51.100.7/32"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("2001:db8:0:0::/64", "2001:db8::/64"),
            ("::/0", "::/0"),
            ("2001:db8::1/128", "2001:db8::1/128"),
            ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
            ("::FFFF:198.51.100.7/128", "198.51.100.7/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("::/64", "::/64"),
        ] {
            assert_eq!(canonical_cidr(text).as_deref(), Some(canonical), "{text}");
        }
        for bad in [
            "203.0.113.1/24",
            "203.0.113.0",
            "203.0.113.0/33",
            "203.0.113.0/",
            "203.0.113.0/+4",
            "203.0.113.0/024",
            "2001:db8::1/64",
            "2001:db8::/129",
            "::ffff:203.0.113.1/120",
            "::ffff:203.0.113.0/129",
            "203.0.113/24",
            "host/24",
            "",
        ] {
            assert_eq!(canonical_cidr(bad), None, "{bad}");
        }
    }
}
