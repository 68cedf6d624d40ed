//! JWT revocation: a per-user watermark ("tokens issued before now are revoked") and a
//! denylist of single tokens by jti. The jti is stored and fed only as its SHA-256.
//! Each entry lasts until every token it covers has stopped being accepted by the
//! proxies, and no longer (`token_lifetime.rs`).

use crate::app::{AppState, RequestCtx};
use crate::error::{ApiError, ApiJson, OptionalJson};
use axum::Json;
use axum::extract::{Path, State};
use gatehouse_core::authn::api_key::is_valid_id;
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAX_JTI_LEN: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeJti {
    jti: String,
    /// The token's `exp` claim, Unix seconds (`iat` plus the lifetime bound for a token
    /// without `exp`): the entry is needed until then plus the leeway.
    expires_at: i64,
}

/// The body of a user's revocation: none, or `{}`. It has no fields yet; one sent is
/// refused rather than ignored, so a caller never believes it was applied.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RevokeUserTokens {}

#[derive(Serialize)]
pub struct UserRevoked {
    user_id: String,
    tokens_issued_before: String,
    until: Option<String>,
}

#[derive(Serialize)]
pub struct JtiRevoked {
    jti_sha256: String,
    until: Option<String>,
}

fn rfc3339(secs: i64) -> String {
    format_rfc3339(UnixNanos::from_secs(u64::try_from(secs).unwrap_or(0)))
}

pub async fn revoke_user_tokens(
    State(s): State<AppState>,
    ctx: RequestCtx,
    Path(user): Path<String>,
    OptionalJson(RevokeUserTokens {}): OptionalJson<RevokeUserTokens>,
) -> Result<Json<UserRevoked>, ApiError> {
    if !is_valid_id(&user) {
        return Err(ApiError::bad_request(
            "the user id must be 1 to 128 of A-Z a-z 0-9 . _ : @ + -",
        ));
    }
    let now = s.clock.now_secs();
    // Every token issued before now is revoked; the entry can go once the longest-lived
    // of them has expired on its own (never, with an unbounded lifetime).
    let until = s.config.token_lifetime.watermark_until(now);
    let row = s
        .store
        .revoke_user_tokens(&user, now, until, &ctx.change(now))
        .await?;
    s.committed(row.version);
    Ok(Json(UserRevoked {
        user_id: row.user,
        tokens_issued_before: rfc3339(row.tokens_issued_before),
        until: row.until.map(rfc3339),
    }))
}

pub async fn revoke_jti(
    State(s): State<AppState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<RevokeJti>,
) -> Result<Json<JtiRevoked>, ApiError> {
    if body.jti.is_empty() || body.jti.len() > MAX_JTI_LEN {
        return Err(ApiError::bad_request(format!(
            "jti must be 1 to {MAX_JTI_LEN} bytes"
        )));
    }
    if body.expires_at < 0 {
        return Err(ApiError::bad_request(
            "expires_at must be the token's exp claim, in Unix seconds",
        ));
    }
    let hash: String = Sha256::digest(body.jti.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = s.clock.now_secs();
    let until = s.config.token_lifetime.jti_until(now, body.expires_at);
    let row = s
        .store
        .revoke_jti(&hash, Some(until), &ctx.change(now))
        .await?;
    s.committed(row.version);
    Ok(Json(JtiRevoked {
        jti_sha256: row.jti_sha256,
        until: row.until.map(rfc3339),
    }))
}
