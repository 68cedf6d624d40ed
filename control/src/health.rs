//! Liveness, readiness and the API description.

use crate::app::AppState;
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

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
