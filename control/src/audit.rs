//! `GET /v1/audit`: the change log, newest first. Events are written by the store in the
//! transaction of the change they record; they name the target by id (a key id, a user,
//! a jti's hash) and never hold a secret.

use crate::app::AppState;
use crate::error::{ApiError, ApiQuery};
use axum::Json;
use axum::extract::State;
use gatehouse::time::{UnixNanos, format_rfc3339};
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
}

#[derive(Serialize)]
pub struct EventView {
    id: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    request_id: String,
    client: Option<String>,
    version: i64,
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
    let events = s.store.audit(limit).await?;
    Ok(Json(EventList {
        events: events
            .into_iter()
            .map(|e| EventView {
                id: e.id,
                at: format_rfc3339(UnixNanos::from_secs(u64::try_from(e.at).unwrap_or(0))),
                actor: e.actor,
                action: e.action,
                target: e.target,
                request_id: e.request_id,
                client: e.client,
                version: e.version,
            })
            .collect(),
    }))
}
