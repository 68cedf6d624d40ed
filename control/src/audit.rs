//! `GET /v1/audit`: the audit log, newest first: the changes (`kind: change`) and the lever
//! changes (`kind: lever`, with the operator's reason), written by the store in the
//! transaction of the change they record, and the refusals the proxies reported
//! (`kind: refusal`, `POST /v1/events`). Events name their target by id (a key
//! id, a user, a jti's hash, a route pattern) and never hold a secret.

use crate::app::AppState;
use crate::error::{ApiError, ApiQuery};
use crate::store::{AuditEvent, AuditKind};
use axum::Json;
use axum::extract::State;
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
    /// `change`, `lever` or `refusal`; absent: all. A string checked by hand: serde's message
    /// for an unknown variant would quote what the client sent.
    kind: Option<String>,
}

#[derive(Serialize)]
pub struct EventView {
    id: i64,
    kind: AuditKind,
    at: String,
    actor: String,
    action: String,
    target: String,
    request_id: String,
    client: Option<String>,
    version: i64,
    /// Refusals only, from here on.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    /// `null` in a refusal without a plan; absent in a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<Option<String>>,
    /// Lever changes only, from here on: the operator's reason (`null` when a removal
    /// gave none) and what was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl EventView {
    fn of(e: AuditEvent) -> EventView {
        let (code, status, method, plan, proxy) = match e.refusal {
            Some(r) => (
                Some(r.code),
                Some(r.status),
                Some(r.method),
                Some(r.plan),
                Some(r.proxy),
            ),
            None => (None, None, None, None, None),
        };
        let (reason, detail) = match e.kind {
            AuditKind::Lever => (Some(e.reason), Some(e.detail.unwrap_or_default())),
            AuditKind::Change | AuditKind::Refusal => (None, None),
        };
        EventView {
            id: e.id,
            kind: e.kind,
            at: format_rfc3339(UnixNanos::from_secs(u64::try_from(e.at).unwrap_or(0))),
            actor: e.actor,
            action: e.action,
            target: e.target,
            request_id: e.request_id,
            client: e.client,
            version: e.version,
            code,
            status,
            method,
            plan,
            proxy,
            reason,
            detail,
        }
    }
}

#[derive(Serialize)]
pub struct EventList {
    events: Vec<EventView>,
}

pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<EventList>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let kind = match q.kind.as_deref() {
        None => None,
        Some("change") => Some(AuditKind::Change),
        Some("lever") => Some(AuditKind::Lever),
        Some("refusal") => Some(AuditKind::Refusal),
        Some(_) => {
            return Err(ApiError::bad_request(
                "kind must be change, lever or refusal (or absent: all)",
            ));
        }
    };
    let events = s.store.audit(limit, kind).await?;
    Ok(Json(EventList {
        events: events.into_iter().map(EventView::of).collect(),
    }))
}
