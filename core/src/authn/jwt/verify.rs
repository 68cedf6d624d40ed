//! The request-path check of one token ([`verify`]), in the order that costs an attacker
//! the most and the plugin the least; keys come from the policy and its JWKS, never from
//! the token.

use std::sync::Arc;

use serde_json::Value;

use super::alg::Alg;
use super::claims::{self, Checked, Rules, Times};
use super::jwk::{Key, KeySet};
pub use super::verified::Verified;
use super::{JwtError, b64, jws};

/// How many keys a token without `kid` is tried against. Real sets rarely hold more than
/// two keys of one algorithm (current and next); the bound caps the work per token.
pub const MAX_KEYS_TRIED: usize = 3;

/// Verifies a JWS compact token against `keys` at `now_unix` (seconds) under `rules`.
///
/// Order: size (before reading a byte), three segments; the header (strict base64url,
/// a JSON object, a supported `alg`, `kid`/`typ` strings); the key, whose own algorithm
/// must equal the token's `alg`; the signature over the segments as they arrived; only
/// then the payload and its claim rules. Work is bounded by [`Rules::max_size`] (checked first) and [`MAX_KEYS_TRIED`]. A
/// token with `kid` is checked only against keys with that `kid` (unknown: the caller
/// may refetch the JWKS, rate-limited since the attacker picks the `kid`); one without
/// is tried against keys of its algorithm, and a key without `kid` is found only so.
/// Nothing is trusted before the signature: the payload is parsed only after it
/// verified, key-carrying header members (`jwk`, `jku`, `x5c`, `x5u`) are ignored and
/// `crit` fails the token. Encoding is strict (canonical base64url, one spelling per
/// token, so caches keyed on its text cannot be dodged); duplicate JSON members: the
/// last wins, as serde_json reads them (RFC 7515 §4 allows it).
pub fn verify(
    token: &[u8],
    keys: &KeySet,
    now_unix: u64,
    rules: &Rules,
) -> Result<Verified, JwtError> {
    verify_uncached(token, keys, now_unix, rules).map(|(verified, _)| verified)
}

/// [`verify`] through the key set's cache of tokens that verified
/// ([`super::cache`]): a token seen before is only checked against the time rules
/// again. The answer is the same as [`verify`]'s.
pub fn verify_cached(
    token: &[u8],
    keys: &KeySet,
    now_unix: u64,
    rules: &Rules,
) -> Result<Arc<Verified>, JwtError> {
    let cache = keys.cache();
    if let Some((verified, times)) = cache.get(token, rules) {
        times.check(now_unix, rules)?;
        return Ok(verified);
    }
    let (verified, times) = verify_uncached(token, keys, now_unix, rules)?;
    let verified = Arc::new(verified);
    cache.insert(token, rules, &verified, times);
    Ok(verified)
}

fn verify_uncached(
    token: &[u8],
    keys: &KeySet,
    now_unix: u64,
    rules: &Rules,
) -> Result<(Verified, Times), JwtError> {
    if token.len() > rules.max_size {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.splitn(4, |&b| b == b'.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("segments"));
    };
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(JwtError::Malformed("segments"))?;

    let header = b64::decode(header_b64).map_err(|_| JwtError::Malformed("header"))?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|_| JwtError::Malformed("header"))?;
    let header = header.as_object().ok_or(JwtError::Malformed("header"))?;
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: extensions we do not understand must fail the token, and
        // we understand none.
        return Err(JwtError::UnsupportedCrit);
    }
    let alg = match header.get("alg") {
        Some(Value::String(name)) => Alg::from_name(name).ok_or(JwtError::UnsupportedAlg)?,
        _ => return Err(JwtError::Malformed("header")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(JwtError::Malformed("header")),
    };
    if header.get("typ").is_some_and(|t| !t.is_string()) {
        return Err(JwtError::Malformed("header"));
    }

    let candidates = select_keys(keys, kid, alg)?;
    let sig = b64::decode(sig_b64).map_err(|_| JwtError::Malformed("signature"))?;
    let key = candidates
        .into_iter()
        .flatten()
        .find(|key| jws::is_valid(key, signing_input, &sig))
        .ok_or(JwtError::BadSignature)?;

    let payload = b64::decode(payload_b64).map_err(|_| JwtError::Malformed("payload"))?;
    let payload = match serde_json::from_slice(&payload) {
        Ok(Value::Object(map)) => map,
        _ => return Err(JwtError::Malformed("payload")),
    };
    let Checked {
        claims,
        sub,
        jti,
        iat,
        exp,
        times,
    } = claims::check(payload, now_unix, rules)?;
    let verified = Verified {
        kid: key.kid().map(str::to_owned),
        alg: key.alg(),
        claims,
        sub,
        jti_key: jti.as_deref().map(crate::authn::revocation::jti_key),
        jti,
        iat,
        exp,
    };
    Ok((verified, times))
}

/// The `iss` of a token whose signature has NOT been checked, to choose which
/// provider's keys check it ([`crate::policy::auth::JwtPolicy::provider_for`]); nothing
/// else may rest on it, and the chosen provider's rules check `iss` again once the
/// signature verified. Strict like [`verify`]: the size bound first, three segments,
/// canonical base64url, a JSON object, `iss` a string when present.
pub fn unverified_issuer(token: &[u8], max_size: usize) -> Result<Option<String>, JwtError> {
    if token.len() > max_size {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.splitn(4, |&b| b == b'.');
    let (Some(_), Some(payload_b64), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("segments"));
    };
    let payload = b64::decode(payload_b64).map_err(|_| JwtError::Malformed("payload"))?;
    // Read as the verified claims are (the last of duplicate members wins), so the
    // provider chosen here is the one whose rules see the same `iss`.
    match serde_json::from_slice(&payload) {
        Ok(Value::Object(mut claims)) => match claims.remove("iss") {
            None => Ok(None),
            Some(Value::String(iss)) => Ok(Some(iss)),
            Some(_) => Err(JwtError::InvalidClaim("iss")),
        },
        _ => Err(JwtError::Malformed("payload")),
    }
}

/// The keys a token may be checked against, at most [`MAX_KEYS_TRIED`], without
/// allocating.
fn select_keys<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    alg: Alg,
) -> Result<[Option<&'k Key>; MAX_KEYS_TRIED], JwtError> {
    let mut out = [None; MAX_KEYS_TRIED];
    let mut slots = out.iter_mut();
    match kid {
        Some(kid) => {
            let mut named = keys
                .keys()
                .iter()
                .filter(|k| k.kid() == Some(kid))
                .peekable();
            if named.peek().is_none() {
                return Err(JwtError::UnknownKid);
            }
            let mut any = false;
            for (slot, key) in (&mut slots).zip(named.filter(|k| k.alg() == alg)) {
                *slot = Some(key);
                any = true;
            }
            if !any {
                return Err(JwtError::AlgMismatch);
            }
        }
        None => {
            let mut any = false;
            for (slot, key) in (&mut slots).zip(keys.keys().iter().filter(|k| k.alg() == alg)) {
                *slot = Some(key);
                any = true;
            }
            if !any {
                return Err(JwtError::NoMatchingKey);
            }
        }
    }
    Ok(out)
}
