//! Every refusal of the service in the one JSON shape the plugin also answers with
//! (`gatehouse::error::error_body`): `{"error","code","timestamp","request_id"}`.
//!
//! Handlers return [`ApiError`], which only marks the response; the request middleware
//! (`app.rs`) writes the body, because it knows the request id and the time. Axum's own
//! rejections (bad JSON, wrong types, unknown fields, oversized bodies, bad query strings)
//! go through [`ApiJson`] and [`ApiQuery`], and any other error response without a JSON
//! body (unknown route, wrong method) is rewritten by the middleware too, so nothing
//! leaves the service in another shape.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// The code and message of an error response, written into the body by the middleware.
#[derive(Clone, Debug)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub info: ErrorInfo,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            info: ErrorInfo {
                code,
                message: message.into(),
            },
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid bearer token is required",
        )
    }

    /// A database or system failure: the detail goes to the log, never to the client.
    pub fn internal(detail: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        )
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound => ApiError::not_found("no such key"),
            StoreError::KeyLimit(n) => ApiError::new(
                StatusCode::CONFLICT,
                "KEY_LIMIT_REACHED",
                format!("the user already has {n} active keys; revoke one first"),
            ),
            StoreError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", why),
            StoreError::Database(_) => ApiError::internal(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response.extensions_mut().insert(self.info);
        response
    }
}

/// The standard code of a bare status, for responses no handler wrote (404 route, 405).
pub fn code_for_status(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 | 422 => ("BAD_REQUEST", "bad request"),
        401 => ("UNAUTHORIZED", "a valid bearer token is required"),
        403 => ("FORBIDDEN", "forbidden"),
        404 => ("NOT_FOUND", "no such resource"),
        405 => ("METHOD_NOT_ALLOWED", "method not allowed"),
        409 => ("CONFLICT", "conflict"),
        410 => ("GONE", "gone"),
        413 => ("PAYLOAD_TOO_LARGE", "the request body is too large"),
        415 => (
            "UNSUPPORTED_MEDIA_TYPE",
            "expected content-type: application/json",
        ),
        503 => ("UNAVAILABLE", "service unavailable"),
        s if s >= 500 => ("INTERNAL", "internal error"),
        _ => ("BAD_REQUEST", "bad request"),
    }
}

/// serde's messages quote the offending value for some errors; a value may be a secret
/// (an API key in the wrong field), so those messages are replaced by a generic one.
fn safe_detail(detail: &str, generic: &str) -> String {
    if detail.contains("invalid type: string") || detail.contains("invalid value: string") {
        generic.to_string()
    } else {
        detail.to_string()
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => json_rejection_415(),
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("the body is not valid JSON"),
        JsonRejection::JsonDataError(e) => ApiError::bad_request(safe_detail(
            &e.body_text(),
            "the body does not have the expected fields and types",
        )),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is too large",
            )
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(json_rejection)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let mime = v.split(';').next().unwrap_or_default().trim();
                mime.eq_ignore_ascii_case("application/json")
            });
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let (code, message) = code_for_status(e.status());
                ApiError::new(e.status(), code, message)
            })?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        if !is_json {
            return Err(json_rejection_415());
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => ApiError::bad_request(safe_detail(
                    &e.to_string(),
                    "the body does not have the expected fields and types",
                )),
                _ => ApiError::bad_request("the body is not valid JSON"),
            })
    }
}

fn json_rejection_415() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        "expected content-type: application/json",
    )
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(safe_detail(&e.body_text(), "invalid query string"))
            })
    }
}
