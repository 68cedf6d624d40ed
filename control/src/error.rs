//! Every refusal of the service in the one JSON shape the plugin also answers with
//! (`gatehouse_core::refusal::error_body`): `{"error","code","timestamp","request_id"}`.
//!
//! Handlers return [`ApiError`], which only marks the response; the request middleware
//! (`app.rs`) writes the body, because it knows the request id and the time. Bad bodies
//! (not JSON, not an object, wrong types, unknown fields, too large, wrong content type)
//! are refused by [`ApiJson`] and [`OptionalJson`], bad query strings by [`ApiQuery`], and
//! any other error response without a JSON body (unknown route, wrong method, a path
//! that is not UTF-8) is rewritten by the middleware too, so nothing leaves the service
//! in another shape. No message quotes a string the client sent, nor the name of an
//! unknown field: either may be a secret.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
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
            StoreError::LeversFull(n) => ApiError::new(
                StatusCode::CONFLICT,
                "LEVERS_FULL",
                format!(
                    "{n} levers (overrides, modes and allowlist entries) are in force already; \
                     remove one first"
                ),
            ),
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
        429 => ("RATE_LIMITED", "too many requests"),
        503 => ("UNAVAILABLE", "service unavailable"),
        s if s >= 500 => ("INTERNAL", "internal error"),
        _ => ("BAD_REQUEST", "bad request"),
    }
}

/// serde's messages quote the offending value for some errors; a value may be a secret
/// (an API key in the wrong field), so those messages are replaced by a generic one. An
/// unknown field's name is the client's text too (a key pasted as a name): it is cut out,
/// and the list of the fields expected is kept.
fn safe_detail(detail: &str, generic: &str) -> String {
    if detail.contains("invalid type: string") || detail.contains("invalid value: string") {
        return generic.to_string();
    }
    // What comes before may hold the name too (the query extractor prefixes the path).
    if let Some((_, rest)) = detail.split_once("unknown field `") {
        // serde writes "unknown field `NAME`, expected ..." or "..., there are no fields";
        // the last such suffix is serde's, whatever NAME holds.
        let tail = [
            rest.rfind("`, expected "),
            rest.rfind("`, there are no fields"),
        ]
        .into_iter()
        .flatten()
        .max()
        .and_then(|i| rest.get(i + 1..));
        return match tail {
            Some(tail) => format!("unknown field{tail}"),
            None => generic.to_string(),
        };
    }
    detail.to_string()
}

/// `application/json` or `application/<anything>+json`, parameters ignored: what axum's
/// `Json` accepts.
fn is_json(req: &Request) -> bool {
    let Some(value) = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = mime.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// The whole body, within `DefaultBodyLimit` (`app::BODY_LIMIT`): 413 above it.
async fn body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        let (code, message) = code_for_status(e.status());
        ApiError::new(e.status(), code, message)
    })
}

/// The body as a `T`, which must be sent as a JSON object. serde's derived structs also
/// take a JSON array of their fields in order (`["u","t","free","laptop",null,null]` would
/// issue a key); every body of this API is an object, so anything else is refused first.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::bad_request("the body must be a JSON object"),
                Err(_) => ApiError::bad_request("the body is not valid JSON"),
            },
        );
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::bad_request(safe_detail(
            &e.to_string(),
            "the body does not have the expected fields and types",
        )),
        _ => ApiError::bad_request("the body is not valid JSON"),
    })
}

/// A JSON object body, as `axum::Json` reads it, whose rejections are [`ApiError`]s: 415
/// without a JSON content type, 413 above the body limit, 400 for anything else.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(json_rejection_415());
        }
        let bytes = body(req, state).await?;
        parse_object(&bytes).map(ApiJson)
    }
}

/// A JSON object body that may be left out entirely (then `T::default()`); a body that is
/// sent is read as [`ApiJson`] reads it.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = is_json(&req);
        let bytes = body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(T::default()));
        }
        if !is_json {
            return Err(json_rejection_415());
        }
        parse_object(&bytes).map(OptionalJson)
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

#[cfg(test)]
mod tests {
    use super::safe_detail;

    const GENERIC: &str = "generic";

    #[test]
    fn a_quoted_string_value_is_replaced_by_the_generic_message() {
        let d = r#"invalid type: string "ghk_secret", expected u32 at line 1 column 9"#;
        assert_eq!(safe_detail(d, GENERIC), GENERIC);
    }

    #[test]
    fn an_unknown_field_name_is_cut_and_the_expected_fields_kept() {
        let d = "unknown field `ghk_secret`, expected `jti` or `expires_at` at line 1 column 14";
        assert_eq!(
            safe_detail(d, GENERIC),
            "unknown field, expected `jti` or `expires_at` at line 1 column 14"
        );
        let d = "Failed to deserialize query string: ghk_x: unknown field `ghk_x`, expected `user`";
        assert_eq!(safe_detail(d, GENERIC), "unknown field, expected `user`");
        let d = "unknown field `a`, expected `b``, there are no fields at line 1 column 9";
        assert_eq!(
            safe_detail(d, GENERIC),
            "unknown field, there are no fields at line 1 column 9"
        );
    }

    #[test]
    fn an_unknown_field_message_of_another_form_is_generic() {
        assert_eq!(safe_detail("unknown field `ghk_secret", GENERIC), GENERIC);
    }

    #[test]
    fn other_messages_are_kept() {
        let d = "missing field `plan` at line 1 column 2";
        assert_eq!(safe_detail(d, GENERIC), d);
    }
}
