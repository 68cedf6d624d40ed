//! The key check in the shape Envoy's `ext_authz` HTTP service expects:
//! `ANY /v1/authz/{*rest}`.
//!
//! `ext_authz` (HTTP service) sends the original request's method and path appended to a
//! path prefix, the headers it is allowed to forward and no body, and lets the request
//! through on a 200; the headers of a 200 listed in its `allowed_upstream_headers` go
//! upstream. So the key comes from the `x-api-key` header, and the answer is 200 with
//! `x-gatehouse-user`, `-tenant`, `-plan` and `-key-id` (the headers the plugin sends
//! upstream) or 401 `INVALID_CREDENTIALS` in the standard error shape, the same for a
//! missing, malformed, unknown, revoked or expired key, as the plugin answers by default.
//!
//! It sits behind the feed token: the caller is a proxy, which already holds that token
//! to read the feed (every key hash), so checking one key through it grants nothing new;
//! the admin token, which can issue and revoke keys, never needs to be in a proxy's
//! configuration. The key is looked up by its SHA-256, never logged, never echoed.

use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gatehouse::api_key::{KeyHash, MAX_PRESENTED_KEY_LEN, check_format};

/// The request header that carries the key (the policy's default `api_key.header`).
pub const KEY_HEADER: &str = "x-api-key";

fn invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
        "invalid credentials",
    )
}

/// Answers any method: `ext_authz` keeps the original request's.
pub async fn check(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let Some(key) = req.headers().get(KEY_HEADER).map(HeaderValue::as_bytes) else {
        return Err(invalid());
    };
    // A mistyped or made-up key is refused without a lookup, as the plugin does.
    if key.len() > MAX_PRESENTED_KEY_LEN || check_format(key).is_err() {
        return Err(invalid());
    }
    let hash = KeyHash::of_key(key).to_hex();
    let Some(k) = s.store.find_key_by_hash(&hash).await? else {
        return Err(invalid());
    };
    if !k.usable_at(s.clock.now_secs()) {
        return Err(invalid());
    }
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-gatehouse-user", &k.user_id),
        ("x-gatehouse-tenant", &k.tenant_id),
        ("x-gatehouse-plan", &k.plan),
        ("x-gatehouse-key-id", &k.id),
    ] {
        // Ids are checked on the way in (A-Z a-z 0-9 . _ : @ + -): always a valid value.
        let value = HeaderValue::from_str(value).map_err(|e| ApiError::internal(&e))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok((StatusCode::OK, headers).into_response())
}
