//! JWT verification for the request path: JWS compact tokens (RFC 7515) with JWT claims
//! (RFC 7519), checked against keys the policy configured; pure, no host calls, no clock
//! (the caller passes `now`), no panics on any input.
//! What it refuses and why: `docs/security.md#security` (JWTs).

mod alg;
pub(crate) mod b64;
mod cache;
mod claims;
mod jwk;
mod jws;
mod verified;
mod verify;

#[cfg(any(test, feature = "test-tokens"))]
#[doc(hidden)]
pub mod test_tokens;
#[cfg(test)]
mod tests;

use std::fmt;

pub use alg::Alg;
pub use cache::{CACHE_ENTRIES, CACHE_MAX_TOKEN};
pub use claims::{
    ClaimValue, Claims, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_LIFETIME_SECS, DEFAULT_MAX_SIZE, Rules,
};
pub use jwk::{JwkError, Jwks, Key, KeySet, MAX_JWKS_KEYS, SkippedKey, parse_jwks};
pub use verified::Verified;
pub use verify::{MAX_KEYS_TRIED, unverified_issuer, verify, verify_cached};

/// Why a token was refused. Closed: every refusal path has its variant and a test.
/// `Display` and `code` carry no token bytes, claim values or key material: clients get
/// one generic refusal, the variant goes to logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtError {
    /// Longer than [`Rules::max_size`].
    TooLarge,
    /// Not a JWS compact token; names the part: `segments`, `header`, `signature` or
    /// `payload` (bad base64url, not a JSON object, `alg`/`kid`/`typ` of the wrong type).
    Malformed(&'static str),
    /// `alg` is `none` or an algorithm this plugin does not verify.
    UnsupportedAlg,
    /// The header has `crit`: it requires extensions this plugin does not implement.
    UnsupportedCrit,
    /// The token names a `kid` that no configured key has.
    UnknownKid,
    /// The token has no `kid` and no key has the token's algorithm.
    NoMatchingKey,
    /// The key named by `kid` is for another algorithm than the token's `alg`.
    AlgMismatch,
    /// No candidate key verifies the signature.
    BadSignature,
    /// `exp` plus the leeway has passed.
    Expired,
    /// `nbf` minus the leeway is still ahead.
    NotYetValid,
    /// `iat` is further in the future than the leeway.
    IssuedInFuture,
    /// `exp - iat` is longer than [`Rules::max_lifetime_secs`].
    LifetimeTooLong,
    /// `iss` is not one of the accepted issuers.
    BadIssuer,
    /// `aud` holds none of the accepted audiences.
    BadAudience,
    /// A registered claim has the wrong JSON type (`exp` a string, `aud` an object…).
    InvalidClaim(&'static str),
    /// A claim the rules require is absent (or `null`). Names the claim.
    MissingClaim(String),
}

impl JwtError {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "jwt_too_large",
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::UnsupportedAlg => "jwt_unsupported_alg",
            JwtError::UnsupportedCrit => "jwt_unsupported_crit",
            JwtError::UnknownKid => "jwt_unknown_kid",
            JwtError::NoMatchingKey => "jwt_no_matching_key",
            JwtError::AlgMismatch => "jwt_alg_mismatch",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::IssuedInFuture => "jwt_issued_in_future",
            JwtError::LifetimeTooLong => "jwt_lifetime_too_long",
            JwtError::BadIssuer => "jwt_bad_issuer",
            JwtError::BadAudience => "jwt_bad_audience",
            JwtError::InvalidClaim(_) => "jwt_invalid_claim",
            JwtError::MissingClaim(_) => "jwt_missing_claim",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLarge => f.write_str("the token is larger than allowed"),
            JwtError::Malformed(part) => write!(f, "the token's {part} is malformed"),
            JwtError::UnsupportedAlg => f.write_str(
                "the token's alg is not one of \
                 [HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA]",
            ),
            JwtError::UnsupportedCrit => {
                f.write_str("the token requires header extensions (crit) that are not supported")
            }
            JwtError::UnknownKid => f.write_str("no key has the token's kid"),
            JwtError::NoMatchingKey => f.write_str("no key is for the token's alg"),
            JwtError::AlgMismatch => f.write_str("the token's alg is not its key's algorithm"),
            JwtError::BadSignature => f.write_str("the token's signature does not verify"),
            JwtError::Expired => f.write_str("the token has expired"),
            JwtError::NotYetValid => f.write_str("the token is not valid yet (nbf)"),
            JwtError::IssuedInFuture => f.write_str("the token is issued in the future (iat)"),
            JwtError::LifetimeTooLong => {
                f.write_str("the token lives longer (exp - iat) than the policy allows")
            }
            JwtError::BadIssuer => f.write_str("the token's issuer is not accepted"),
            JwtError::BadAudience => f.write_str("the token's audience is not accepted"),
            JwtError::InvalidClaim(name) => {
                write!(f, "the token's {name} claim has the wrong type")
            }
            JwtError::MissingClaim(name) => write!(f, "the token has no {name} claim"),
        }
    }
}

impl std::error::Error for JwtError {}

/// Runs [`verify`] on arbitrary bytes against a fixed key set (the RFC 7515 and RFC 8037
/// example keys, one per key type) and drops the result: an entry point for a fuzzer,
/// which only looks for panics, hangs and runaway allocation.
#[doc(hidden)]
pub fn fuzz_verify(data: &[u8]) {
    static KEYS: std::sync::OnceLock<KeySet> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(fuzz_keys);
    // Just before the RFC examples' exp, so a valid token reaches the claim checks.
    let _ = verify(data, keys, 1_300_819_000, &Rules::default());
}

fn fuzz_keys() -> KeySet {
    const JWKS: &str = r#"{"keys":[
        {"kty":"oct","kid":"hs","alg":"HS256",
         "k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"},
        {"kty":"RSA","kid":"rs","alg":"RS256","e":"AQAB",
         "n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"},
        {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    ]}"#;
    // The oct key is refused inside a JWKS by design, so it is read on its own.
    let mut keys: Vec<Key> = parse_jwks(JWKS.as_bytes(), None)
        .map(|jwks| jwks.keys)
        .unwrap_or_default();
    if let Some(hs) = serde_json::from_str::<serde_json::Value>(JWKS)
        .ok()
        .and_then(|v| v.get("keys")?.get(0).map(|k| k.to_string()))
        .and_then(|k| Key::from_jwk(k.as_bytes(), None).ok())
    {
        keys.push(hs);
    }
    KeySet::new(keys)
}
