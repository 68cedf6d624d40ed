//! Idempotent issuance: `POST /v1/keys` with an `Idempotency-Key` header (as Stripe's API
//! and the IETF draft "The Idempotency-Key HTTP Header Field" describe it: a unique value
//! the client chooses per request and sends again, unchanged, on every retry of it).
//!
//! The protocol, all of it inside the write transaction that issues the key (`store/`):
//! 1. the request's Idempotency-Key is hashed ([`IdempotencyKey::sha256`]) and looked up
//!    in `idempotency_keys`;
//! 2. none recorded (or one older than [`RETENTION_SECS`], deleted there and then): the
//!    key is inserted and (that hash, [`fingerprint`] of the request, key id, now)
//!    recorded in the same transaction, so the record exists exactly when the key does.
//!    The table's primary key on the hash is the unique constraint behind it: writers are
//!    serialized (each backend's module doc), so a concurrent duplicate finds the row in
//!    step 1; were it ever to reach the insert, the violation is read as a replay too;
//! 3. one recorded: nothing is written. The same request (same fingerprint) is answered
//!    200 with the key as it is now, without its secret ([`Replayed`]); another request is
//!    refused with 422 `IDEMPOTENCY_KEY_REUSED`.
//!
//! So a client whose first answer was lost (a timeout, a crash of the service after the
//! commit) learns which key exists and can rotate it for a new secret; it never ends with
//! two live keys. After [`RETENTION_SECS`] the value is forgotten: the same request issues
//! a new key (the cleanup job purges the records, `cleanup.rs`).
//!
//! It must never store, log or echo the Idempotency-Key's value (a client may derive it
//! from something private): only its SHA-256 is stored, and at most the first digits of
//! that hash are logged.

use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use gatehouse_core::authn::api_key::KeyHash;
use serde::Serialize;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The answer header of a replay (`true`).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The longest value taken, in characters (each one byte: visible ASCII only).
pub const MAX_LEN: usize = 255;
/// How long a value is remembered: 24 hours, as Stripe does.
pub const RETENTION_SECS: i64 = 86_400;
/// The error code of a value sent again with another request.
pub const REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
/// Hex digits of the value's hash a log line may show.
const LOGGED_HEX: usize = 12;

/// A checked Idempotency-Key: its SHA-256 only, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    sha256: String,
}

impl IdempotencyKey {
    /// The value's SHA-256, 64 lower-case hex digits: what is stored.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The first digits of the hash, for logs.
    pub fn logged(&self) -> &str {
        self.sha256.get(..LOGGED_HEX).unwrap_or_default()
    }
}

/// What the value must be, for messages (never the value sent).
pub fn rule() -> String {
    format!("the Idempotency-Key header must be 1 to {MAX_LEN} visible ASCII characters, sent once")
}

/// The request's Idempotency-Key, if it sent one: 1 to [`MAX_LEN`] visible ASCII
/// characters (0x21 to 0x7e), taken as sent (quotes, if any, are part of the value). The
/// header sent twice, empty, longer, or with any other byte is refused with 400.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if values.next().is_some()
        || bytes.is_empty()
        || bytes.len() > MAX_LEN
        || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(ApiError::bad_request(rule()));
    }
    Ok(Some(IdempotencyKey {
        sha256: KeyHash::of_key(bytes).to_hex(),
    }))
}

/// The fields of an issuance request as they are checked and stored: a retry is "the same
/// request" when these are equal, whatever the JSON's spacing, field order or scope order.
#[derive(Serialize)]
pub struct Canonical<'a> {
    pub user_id: &'a str,
    pub tenant_id: &'a str,
    pub plan: &'a str,
    /// Trimmed, as stored.
    pub device_name: &'a str,
    /// As sent: the expiry is counted from each request's time, so it is not compared.
    pub expires_in_days: Option<u32>,
    /// Sorted, each once, as stored; empty: every route.
    pub scopes: &'a [String],
}

/// SHA-256 of the canonical fields as JSON (fields in their declared order, every string
/// escaped: no two different requests encode the same), 64 lower-case hex digits.
pub fn fingerprint(c: &Canonical<'_>) -> Result<String, ApiError> {
    let json = serde_json::to_vec(c).map_err(|e| ApiError::internal(&e))?;
    Ok(KeyHash::of_key(&json).to_hex())
}

/// Whether a recorded fingerprint is this request's, in constant time.
pub fn same_request(recorded: &str, this: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(recorded.as_bytes(), this.as_bytes()).into()
}

/// The 422 of a value sent again with another request.
pub fn reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        REUSED,
        "this Idempotency-Key was used in the last 24 hours with a different request; \
         send a new Idempotency-Key for a new request",
    )
}

/// The 410 of a replay whose key the cleanup job has deleted since (it was revoked or
/// expired longer ago than GATEHOUSE_RETENTION): still no second key.
pub fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "GONE",
        "the key this Idempotency-Key issued has ended and been deleted; send a new \
         Idempotency-Key to issue a new key",
    )
}

/// What a replay says about the secret, by the key's state (`KeyView::status`).
pub fn note(key_id: &str, status: &str, replaced_by: Option<&str>) -> String {
    let first = "The secret (api_key) was shown only in the first answer to this \
                 Idempotency-Key and is not stored";
    match (status, replaced_by) {
        (_, Some(next)) => {
            format!("{first}. This key was rotated since: its successor is {next}.")
        }
        ("active", None) => format!(
            "{first}. To get a new secret for this key, rotate it: POST /v1/keys/{key_id}/rotate."
        ),
        ("revoked", None) => format!(
            "{first}. This key was revoked since: issue a new key with a new Idempotency-Key."
        ),
        _ => format!("{first}. This key has expired: issue a new key with a new Idempotency-Key."),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn a_visible_ascii_value_of_1_to_255_characters_is_taken_as_its_hash() {
        let long = "~".repeat(MAX_LEN);
        for v in [
            "a",
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
            "\"quoted\"",
            &long,
        ] {
            let k = from_headers(&headers(&[v.as_bytes()])).unwrap().unwrap();
            assert_eq!(k.sha256(), KeyHash::of_key(v.as_bytes()).to_hex());
            assert_eq!(k.logged().len(), LOGGED_HEX);
        }
        assert_eq!(from_headers(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn other_values_are_refused_with_400() {
        let long = "a".repeat(MAX_LEN + 1);
        for v in [
            &b""[..],
            b"with space",
            b"tab\there",
            long.as_bytes(),
            b"caf\xc3\xa9",
            b"\xff",
        ] {
            let e = from_headers(&headers(&[v])).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.info.code, "BAD_REQUEST");
        }
        let e = from_headers(&headers(&[b"a", b"a"])).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn fingerprints_tell_fields_apart() {
        let scopes = vec!["a".to_string()];
        let c = |device_name, expires_in_days, scopes| Canonical {
            user_id: "u",
            tenant_id: "t",
            plan: "free",
            device_name,
            expires_in_days,
            scopes,
        };
        let base = fingerprint(&c("d", None, &[])).unwrap();
        assert_eq!(base, fingerprint(&c("d", None, &[])).unwrap());
        for other in [
            c("e", None, &[]),
            c("d", Some(1), &[]),
            c("d", None, &scopes),
        ] {
            assert!(!same_request(&base, &fingerprint(&other).unwrap()));
        }
        assert!(same_request(&base, &base));
    }
}
