//! Liveness, readiness and the API description.

use crate::app::AppState;
use crate::config::Config;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// The OpenAPI 3 document of this service, kept beside the handlers it describes.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers.
pub async fn readyz(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    match s.store.ping().await {
        Ok(()) => Ok(Json(json!({"status": "ready"}))),
        Err(e) => {
            tracing::warn!(error = %e, "database not reachable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the database is not reachable",
            ))
        }
    }
}

/// The line of the document where `CreateKey.plan` is described: the enum goes before it.
const PLAN_DESCRIPTION: &str = "\"description\": \"One of the plans the service is configured";

/// [`OPENAPI`] with the plans `config` issues keys on as the enum of `CreateKey.plan`, so
/// the document lists exactly the values the service accepts (`plans.rs`). Inserted as
/// text, so the document keeps the order it is written in.
pub fn openapi_document(config: &Config) -> String {
    let Some(at) = OPENAPI.find(PLAN_DESCRIPTION) else {
        return OPENAPI.to_string();
    };
    let indent = OPENAPI
        .get(..at)
        .and_then(|before| before.rsplit('\n').next())
        .unwrap_or_default();
    let (before, after) = OPENAPI.split_at(at);
    format!(
        "{before}\"enum\": {},\n{indent}{after}",
        json!(config.plans.names())
    )
}

pub async fn openapi(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.to_string(),
    )
}
