//! Who is calling: an API key (its format, hash and cached record) or a bearer JWT (its
//! provider, signature and claims), then per-user and per-token revocation. Returns an
//! [`Identity`] or an [`AuthFailure`]; the refusal it becomes is [`crate::refusal`]'s.

pub mod api_key;
pub mod jwks_cache;
pub mod jwt;
pub mod key_cache;
pub mod revocation;

use crate::clock::Clock;
use crate::policy::auth::JwtPolicy;
use crate::policy::{KeyFormat, Policy};
use crate::request::{HEADER_ISSUER, HEADER_KEY_ID, HEADER_PLAN, HEADER_TENANT, HEADER_USER};
use crate::request::{Presented, RequestHead};
use crate::store::SharedStore;
use crate::worker::Caches;
use api_key::{KeyRecord, check_format, hash_presented_key, is_valid_id};
use jwt::{JwtError, KeySet};

/// Why a request had no acceptable identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential on a route that needs one.
    Missing,
    /// The credential header was sent more than once.
    Duplicate,
    /// A credential in the query string, alone or beside one in a header: refused
    /// wherever it is (a URL lands in logs, caches and `Referer`, and an upstream that
    /// reads it could act for someone other than the caller gatehouse checked).
    InQuery,
    /// An API key was presented and refused.
    Key(api_key::KeyFailure),
    /// A bearer token was presented and refused.
    Jwt(JwtFailure),
}

/// Why a bearer token was refused; the `&'static str` is the precise reason for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtFailure {
    /// Not a well-formed token (or an algorithm or claim type we never accept).
    Malformed(&'static str),
    /// Well-formed but not acceptable: signature, key, issuer, audience, claims.
    Invalid(&'static str),
    Expired,
    Revoked(revocation::Revoked),
}

/// Which credential authenticated the request (so the shell can hide it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    Jwt,
}
/// Who is calling, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub key_id: String,
    pub user: String,
    pub tenant: String,
    pub plan: String,
}
impl From<&KeyRecord> for Identity {
    fn from(r: &KeyRecord) -> Self {
        Identity {
            key_id: r.key_id.clone(),
            user: r.user.clone(),
            tenant: r.tenant.clone(),
            plan: r.plan.clone(),
        }
    }
}
impl Identity {
    /// The headers the upstream receives. Values are validated ids: header-safe.
    pub fn headers(&self) -> [(&'static str, &str); 4] {
        [
            (HEADER_USER, &self.user),
            (HEADER_TENANT, &self.tenant),
            (HEADER_PLAN, &self.plan),
            (HEADER_KEY_ID, &self.key_id),
        ]
    }
}
/// Who authenticated, before route checks.
pub struct Authenticated {
    pub identity: Identity,
    /// Scopes of an API key; `None` for a JWT (tokens are not scoped to route groups).
    pub key: Option<std::sync::Arc<KeyRecord>>,
    pub credential: Credential,
    pub claim_headers: Vec<(String, String)>,
}
/// Whether the request carries a credential gatehouse checks: an API key header, or a
/// bearer token when the policy has a `jwt` section (duplicates included).
pub fn presents_credential(policy: &Policy, head: &RequestHead<'_>) -> bool {
    presents_credential_in(policy, head.api_key, head.authorization)
}
/// [`presents_credential`] from the two headers alone, before the rest of the request is
/// read: a request that presents one is either authenticated or refused, never anonymous,
/// so the shell reads the client address (a host call) for it only when a route limits
/// `by: ip`.
pub fn presents_credential_in(
    policy: &Policy,
    api_key: Presented<'_>,
    authorization: Presented<'_>,
) -> bool {
    let bearer = match (&policy.jwt, authorization) {
        (None, _) | (_, Presented::None) => false,
        (Some(_), Presented::Several) => true,
        (Some(_), Presented::One(value)) => bearer_token(value).is_some(),
    };
    api_key != Presented::None || bearer
}
impl AuthFailure {
    /// The precise reason, for logs and metrics only (clients see a generic message).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credential",
            AuthFailure::Duplicate => "duplicate_credential",
            AuthFailure::InQuery => "credential_in_query",
            AuthFailure::Key(k) => k.as_str(),
            AuthFailure::Jwt(j) => j.as_str(),
        }
    }
}

impl JwtFailure {
    /// The precise reason, for logs and metrics only.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtFailure::Malformed(r) | JwtFailure::Invalid(r) => r,
            JwtFailure::Expired => "jwt_expired",
            JwtFailure::Revoked(revocation::Revoked::User) => "jwt_revoked_user",
            JwtFailure::Revoked(revocation::Revoked::Jti) => "jwt_revoked_jti",
        }
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for JwtFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What authentication learnt of a bearer token, allowed or refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenSeen {
    /// The provider it went to, by its `iss`.
    pub provider: Option<usize>,
    /// Signed with a key its provider's set does not hold: the issuer may have rotated.
    pub unknown_kid: bool,
}

/// `Ok(None)`: no credential presented. A credential that is presented must be valid,
/// on external routes too: a caller who sends a bad key learns it instead of silently
/// running anonymous. `feed_generation`: the key cache's (the feed state's, read once per
/// request by the pipeline).
#[allow(clippy::too_many_arguments)]
pub fn authenticate(
    policy: &Policy,
    caches: &Caches,
    jwt_keys: &[KeySet],
    head: &RequestHead<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
    feed_generation: u32,
    seen: &mut TokenSeen,
) -> Result<Option<Authenticated>, AuthFailure> {
    let bearer = match (&policy.jwt, head.authorization) {
        (None, _) | (_, Presented::None) => None,
        (Some(_), Presented::Several) => return Err(AuthFailure::Duplicate),
        (Some(jwt), Presented::One(value)) => bearer_token(value).map(|t| (jwt, t)),
    };
    let raw = match (head.api_key, bearer) {
        (Presented::Several, _) => return Err(AuthFailure::Duplicate),
        // Two credentials: which one would the upstream believe? Neither.
        (Presented::One(_), Some(_)) => return Err(AuthFailure::Duplicate),
        (Presented::None, None) => return Ok(None),
        (Presented::None, Some((jwt, token))) => {
            return authenticate_jwt(policy, jwt, jwt_keys, token, store, clock, seen).map(Some);
        }
        (Presented::One(raw), None) => raw,
    };
    let cache = &caches.presented_keys.0;
    let (hash, cache_key) = match cache.get(raw) {
        Some((checked_as, hash, cache_key)) if checked_as == policy.api_key_format => {
            (hash, cache_key)
        }
        _ => {
            if policy.api_key_format == KeyFormat::Checksummed {
                check_format(raw).map_err(AuthFailure::Key)?;
            }
            let hash = hash_presented_key(raw).map_err(AuthFailure::Key)?;
            let cache_key: std::sync::Arc<str> = hash.cache_key().into();
            cache.insert(
                raw,
                (
                    policy.api_key_format,
                    hash,
                    std::sync::Arc::clone(&cache_key),
                ),
            );
            (hash, cache_key)
        }
    };
    let record = key_cache::lookup_at(
        policy,
        &caches.key_records,
        store,
        &hash,
        &cache_key,
        feed_generation,
        clock.now(),
    )
    .map_err(AuthFailure::Key)?;
    Ok(Some(Authenticated {
        identity: Identity::from(&*record),
        key: Some(record),
        credential: Credential::ApiKey,
        claim_headers: Vec::new(),
    }))
}
/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750);
/// `None` for another scheme, which is not gatehouse's to judge.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value.get(7..)?;
    let start = token.iter().position(|b| *b != b' ')?;
    token.get(start..)
}
fn jwt_failure(e: &JwtError) -> JwtFailure {
    match e {
        JwtError::TooLarge
        | JwtError::Malformed(_)
        | JwtError::UnsupportedAlg
        | JwtError::UnsupportedCrit
        | JwtError::InvalidClaim(_) => JwtFailure::Malformed(e.code()),
        JwtError::Expired => JwtFailure::Expired,
        JwtError::UnknownKid
        | JwtError::NoMatchingKey
        | JwtError::AlgMismatch
        | JwtError::BadSignature
        | JwtError::NotYetValid
        | JwtError::IssuedInFuture
        | JwtError::LifetimeTooLong
        | JwtError::BadIssuer
        | JwtError::BadAudience
        | JwtError::MissingClaim(_) => JwtFailure::Invalid(e.code()),
    }
}
/// A header value an upstream can take as is: visible ASCII and spaces, bounded.
fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= 1024 && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}
fn authenticate_jwt(
    policy: &Policy,
    jwt: &JwtPolicy,
    keys: &[KeySet],
    token: &[u8],
    store: &impl SharedStore,
    clock: &impl Clock,
    seen: &mut TokenSeen,
) -> Result<Authenticated, AuthFailure> {
    let fail = |f| AuthFailure::Jwt(f);
    let now = clock.now().secs();
    // The provider, by the token's (unverified) `iss`: only its keys may verify the token,
    // and its rules check `iss` again on the verified claims.
    let index = match jwt.providers.len() {
        1 => 0,
        _ => {
            let iss = jwt::unverified_issuer(token, jwt.max_token_bytes())
                .map_err(|e| fail(jwt_failure(&e)))?;
            jwt.provider_for(iss.as_deref())
                .ok_or(fail(JwtFailure::Invalid("jwt_unknown_issuer")))?
        }
    };
    seen.provider = Some(index);
    let (Some(provider), Some(keys)) = (jwt.providers.get(index), keys.get(index)) else {
        return Err(fail(JwtFailure::Invalid("jwt_no_matching_key")));
    };
    let verified = jwt::verify_cached(token, keys, now, &provider.rules).map_err(|e| {
        seen.unknown_kid = e == JwtError::UnknownKid;
        fail(jwt_failure(&e))
    })?;
    let jwt = provider;

    let claim_id = |name: &str| {
        verified
            .claim_str(name)
            .filter(|v| is_valid_id(v))
            .map(str::to_owned)
    };
    let user = claim_id(&jwt.claims.user).ok_or(fail(JwtFailure::Invalid("jwt_bad_user_claim")))?;
    let tenant = match (claim_id(&jwt.claims.tenant), &jwt.default_tenant) {
        (Some(t), _) => t,
        (None, Some(d)) if verified.claim(&jwt.claims.tenant).is_none() => d.clone(),
        _ => return Err(fail(JwtFailure::Invalid("jwt_bad_tenant_claim"))),
    };
    // A plan the policy does not list is the caller's business to refuse or map
    // (`unknown_plan`), as for a key; a plan that is no id is a bad token.
    let plan = match (claim_id(&jwt.claims.plan), &jwt.default_plan) {
        (Some(p), _) => p,
        (None, Some(d)) if verified.claim(&jwt.claims.plan).is_none() => d.clone(),
        _ => return Err(fail(JwtFailure::Invalid("jwt_bad_plan_claim"))),
    };
    let iat = verified.iat.and_then(|i| u64::try_from(i).ok());
    revocation::check_at(
        store,
        policy.fingerprint,
        &user,
        iat,
        verified.jti_key.as_deref(),
        now,
    )
    .map_err(|r| fail(JwtFailure::Revoked(r)))?;

    // Which provider vouched for the user: `sub` values are only unique per issuer.
    let claim_headers = std::iter::once((HEADER_ISSUER.to_string(), jwt.name.clone()))
        .chain(jwt.forward_claims.iter().filter_map(|(claim, header)| {
            let text = verified.claim(claim)?.to_text();
            header_safe(&text).then(|| (header.clone(), text.into_owned()))
        }))
        .collect();
    let key_id = match verified.kid.as_deref() {
        Some(kid) if is_valid_id(kid) && kid.len() < 120 => ["jwt:", kid].concat(),
        _ => "jwt".to_string(),
    };
    Ok(Authenticated {
        identity: Identity {
            key_id,
            user,
            tenant,
            plan,
        },
        key: None,
        credential: Credential::Jwt,
        claim_headers,
    })
}
