//! Every refusal, and the one JSON shape it is answered with: nothing else in the plugin
//! sends an error body (the other local answers are a preflight's empty 204 and the
//! health route's 200, [`crate::health::answer`]).
//! Codes, statuses and body: `docs/policy.md#refusals`.

use crate::authn::api_key::KeyFailure;
use crate::authn::{AuthFailure, JwtFailure};
use crate::body::BodyError;
use crate::body::json::JsonError;
use crate::body::webhook::SignatureError;
use crate::health::Unready;
use crate::time::{UnixNanos, format_rfc3339};

/// A refusal. Closed: add a variant here and its mapping below, nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    Unauthorized(AuthFailure),
    /// The caller is authenticated, but its key's scopes do not include this route.
    Forbidden,
    /// The credential names a plan the policy does not list (a typo, a renamed or dropped
    /// plan), and the policy does not map unknown plans to one it has: refused rather
    /// than served without a plan limit.
    UnknownPlan,
    /// Over a rate limit (or the limiter could not decide and the policy refuses).
    RateLimited(crate::limit::Refusal),
    NoRoute,
    /// The method or path could mean another route to the upstream ([`crate::route::resolve`]).
    Unclear(crate::route::Unclear),
    /// The plugin has no valid policy (Envoy should never route to it then).
    NotConfigured,
    /// The credential cannot be checked: the control service's feed is older than the
    /// policy's `feed.staleness` and the policy says `on_stale: fail_closed`.
    AuthUnavailable,
    /// A CORS preflight the route's `cors` does not allow ([`crate::cors`]).
    CorsRejected(crate::cors::CorsRefusal),
    /// Not a refusal: an upstream error response (this status) replaced by the standard
    /// body, which keeps the status ([`crate::response`]).
    UpstreamError(u32),
    /// A webhook signature was missing, wrong, expired or replayed ([`crate::body::webhook`]).
    Signature(crate::body::webhook::SignatureError),
    /// The body is too large, or breaks the route's JSON rules ([`crate::body`]).
    Body(crate::body::BodyError),
    /// A method the path does not answer: the health route takes GET and HEAD only.
    MethodNotAllowed,
    /// Not a refusal: the health route's answer while the key cache is not ready
    /// ([`crate::health`]), counted apart and never audited.
    NotReady(Unready),
}

/// Every `code` an error body can carry. The refusals come first, in the fixed order of
/// [`Code::REFUSALS`]: the refusal metrics (`gatehouse.refused.<code in lower case>`)
/// are defined from it, and [`Denial::code_index`] points into it. [`Code::OTHERS`] come
/// last: the health route's 503 and a replaced upstream error are no refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    MissingCredentials,
    MalformedCredentials,
    ExpiredCredentials,
    InvalidCredentials,
    UnknownKey,
    RevokedKey,
    RevokedToken,
    Forbidden,
    UnknownPlan,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    Unavailable,
    AuthUnavailable,
    CorsRejected,
    InvalidSignature,
    SignatureExpired,
    PayloadTooLarge,
    MalformedBody,
    JsonLimitExceeded,
    NotReady,
    UpstreamError,
}

impl Code {
    /// Every refusal's code, in metric order: the order of the variants, so
    /// [`Denial::code_index`] is the variant's number.
    pub const REFUSALS: [Code; 21] = [
        Code::MissingCredentials,
        Code::MalformedCredentials,
        Code::ExpiredCredentials,
        Code::InvalidCredentials,
        Code::UnknownKey,
        Code::RevokedKey,
        Code::RevokedToken,
        Code::Forbidden,
        Code::UnknownPlan,
        Code::RateLimited,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::BadRequest,
        Code::Unavailable,
        Code::AuthUnavailable,
        Code::CorsRejected,
        Code::InvalidSignature,
        Code::SignatureExpired,
        Code::PayloadTooLarge,
        Code::MalformedBody,
        Code::JsonLimitExceeded,
    ];

    /// The codes a body carries that refuse no client request: not counted, logged or
    /// audited as refusals.
    pub const OTHERS: [Code; 2] = [Code::NotReady, Code::UpstreamError];

    /// The code as the body spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::MissingCredentials => "MISSING_CREDENTIALS",
            Code::MalformedCredentials => "MALFORMED_CREDENTIALS",
            Code::ExpiredCredentials => "EXPIRED_CREDENTIALS",
            Code::InvalidCredentials => "INVALID_CREDENTIALS",
            Code::UnknownKey => "UNKNOWN_KEY",
            Code::RevokedKey => "REVOKED_KEY",
            Code::RevokedToken => "REVOKED_TOKEN",
            Code::Forbidden => "FORBIDDEN",
            Code::UnknownPlan => "UNKNOWN_PLAN",
            Code::RateLimited => "RATE_LIMITED",
            Code::NotFound => "NOT_FOUND",
            Code::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Code::BadRequest => "BAD_REQUEST",
            Code::Unavailable => "UNAVAILABLE",
            Code::AuthUnavailable => "AUTH_UNAVAILABLE",
            Code::CorsRejected => "CORS_REJECTED",
            Code::InvalidSignature => "INVALID_SIGNATURE",
            Code::SignatureExpired => "SIGNATURE_EXPIRED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::MalformedBody => "MALFORMED_BODY",
            Code::JsonLimitExceeded => "JSON_LIMIT_EXCEEDED",
            Code::NotReady => "NOT_READY",
            Code::UpstreamError => "UPSTREAM_ERROR",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Retry-After` on [`Denial::AuthUnavailable`] and [`Denial::NotReady`]: a few sync polls.
pub const AUTH_UNAVAILABLE_RETRY_AFTER_SECS: u32 = 5;

/// A local response ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// The longest request id echoed into a body; longer or non-printable ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

impl Denial {
    pub fn status(self) -> u32 {
        match self {
            Denial::Unauthorized(_) => 401,
            Denial::Forbidden | Denial::UnknownPlan | Denial::CorsRejected(_) => 403,
            Denial::UpstreamError(status) => status,
            Denial::RateLimited(_) => 429,
            Denial::NoRoute => 404,
            Denial::MethodNotAllowed => 405,
            Denial::Unclear(_) => 400,
            Denial::NotConfigured | Denial::AuthUnavailable | Denial::NotReady(_) => 503,
            Denial::Signature(SignatureError::Unavailable) => 503,
            Denial::Signature(_) => 401,
            Denial::Body(BodyError::Json(JsonError::Malformed)) => 400,
            Denial::Body(_) => 413,
        }
    }

    /// The machine-readable `code` of the body. Unknown and revoked keys share
    /// `INVALID_CREDENTIALS` unless `verbose`, so a caller probing keys cannot tell which
    /// applies.
    pub fn code(self, verbose: bool) -> Code {
        match self {
            Denial::Unauthorized(AuthFailure::Missing) => Code::MissingCredentials,
            Denial::Unauthorized(AuthFailure::Duplicate)
            | Denial::Unauthorized(AuthFailure::InQuery)
            | Denial::Unauthorized(AuthFailure::Key(KeyFailure::Malformed)) => {
                Code::MalformedCredentials
            }
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Expired))
            | Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Expired)) => {
                Code::ExpiredCredentials
            }
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Malformed(_))) => {
                Code::MalformedCredentials
            }
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Revoked(_))) if verbose => {
                Code::RevokedToken
            }
            Denial::Unauthorized(AuthFailure::Jwt(_)) => Code::InvalidCredentials,
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)) if verbose => {
                Code::UnknownKey
            }
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Revoked)) if verbose => {
                Code::RevokedKey
            }
            Denial::Unauthorized(AuthFailure::Key(_)) => Code::InvalidCredentials,
            Denial::Forbidden => Code::Forbidden,
            Denial::UnknownPlan => Code::UnknownPlan,
            Denial::RateLimited(_) => Code::RateLimited,
            Denial::NoRoute => Code::NotFound,
            Denial::MethodNotAllowed => Code::MethodNotAllowed,
            Denial::Unclear(_) => Code::BadRequest,
            Denial::NotConfigured => Code::Unavailable,
            Denial::AuthUnavailable => Code::AuthUnavailable,
            Denial::CorsRejected(_) => Code::CorsRejected,
            Denial::UpstreamError(_) => Code::UpstreamError,
            Denial::Signature(SignatureError::Expired) => Code::SignatureExpired,
            // The replay cache could not answer: the signature cannot be checked right now.
            Denial::Signature(SignatureError::Unavailable) => Code::AuthUnavailable,
            Denial::Signature(_) => Code::InvalidSignature,
            Denial::Body(BodyError::TooLarge) => Code::PayloadTooLarge,
            Denial::Body(BodyError::Json(JsonError::Malformed)) => Code::MalformedBody,
            Denial::Body(BodyError::Json(_)) => Code::JsonLimitExceeded,
            Denial::NotReady(_) => Code::NotReady,
        }
    }

    /// The code operators see (logs, metrics, the refusal audit): the precise one, as
    /// `errors.verbose` would show it, whatever the policy shows clients.
    pub fn audit_code(self) -> Code {
        self.code(true)
    }

    /// Where [`Denial::audit_code`] is in [`Code::REFUSALS`]; `None` for [`Code::OTHERS`].
    pub fn code_index(self) -> Option<usize> {
        let code = self.audit_code();
        let i = code as usize;
        (Code::REFUSALS.get(i) == Some(&code)).then_some(i)
    }

    /// The message clients see, as precise as `code`.
    pub fn message(self, verbose: bool) -> &'static str {
        match self {
            Denial::Unauthorized(AuthFailure::Missing) => "authentication required",
            Denial::Unauthorized(AuthFailure::Duplicate) => {
                "the credential was sent more than once"
            }
            Denial::Unauthorized(AuthFailure::InQuery) => {
                "credentials go in a header, never in the query string"
            }
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Malformed)) => {
                "the API key is malformed"
            }
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Expired))
            | Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Expired)) => {
                "the credential has expired"
            }
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Malformed(_))) => {
                "the bearer token is malformed"
            }
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Revoked(_))) if verbose => {
                "the token has been revoked"
            }
            Denial::Unauthorized(AuthFailure::Jwt(_)) => "invalid credentials",
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)) if verbose => {
                "unknown API key"
            }
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Revoked)) if verbose => {
                "the API key has been revoked"
            }
            Denial::Unauthorized(AuthFailure::Key(_)) => "invalid credentials",
            Denial::Forbidden => "this credential may not call this route",
            Denial::UnknownPlan => "this credential's plan is not offered here",
            Denial::RateLimited(_) => "rate limit exceeded",
            Denial::NoRoute => "no route matches this request",
            Denial::Unclear(crate::route::Unclear::Method) => "the request method is not valid",
            Denial::Unclear(_) => "the request path is not in normal form",
            Denial::NotConfigured => "the gateway is not configured",
            Denial::AuthUnavailable => "authentication is temporarily unavailable",
            Denial::CorsRejected(_) => "this cross-origin request is not allowed",
            // Per class only: the upstream's own words may hold internals.
            Denial::UpstreamError(500..) => "the upstream service failed",
            Denial::UpstreamError(_) => "the upstream service could not process the request",
            // Never the expected signature or the signed string: the sender knows both.
            Denial::Signature(SignatureError::Expired) => {
                "the webhook timestamp is outside the allowed window"
            }
            Denial::Signature(SignatureError::Unavailable) => {
                "authentication is temporarily unavailable"
            }
            Denial::Signature(_) => "the webhook signature is missing or invalid",
            Denial::Body(BodyError::TooLarge) => "the request body is too large",
            Denial::Body(BodyError::Json(JsonError::Malformed)) => {
                "the request body is not valid JSON"
            }
            Denial::Body(BodyError::Json(_)) => "the JSON body exceeds the allowed sizes",
            Denial::MethodNotAllowed => "this path answers GET and HEAD only",
            Denial::NotReady(Unready::NoSnapshot) => {
                "the key cache has not received its first snapshot"
            }
            // [`Denial::render`] says how old.
            Denial::NotReady(Unready::Stale { .. }) => "the key cache is older than feed.staleness",
        }
    }

    /// The precise reason, for logs and metrics only.
    pub fn reason(self) -> &'static str {
        match self {
            Denial::Unauthorized(a) => a.as_str(),
            Denial::Forbidden => "out_of_scope",
            Denial::UnknownPlan => "unknown_plan",
            Denial::RateLimited(r) => r.as_str(),
            Denial::NoRoute => "no_route",
            Denial::Unclear(u) => u.reason(),
            Denial::NotConfigured => "not_configured",
            Denial::AuthUnavailable => "feed_stale",
            Denial::CorsRejected(r) => r.reason(),
            Denial::UpstreamError(_) => "upstream_error",
            Denial::Signature(e) => e.as_str(),
            Denial::Body(e) => e.as_str(),
            Denial::MethodNotAllowed => "method_not_allowed",
            Denial::NotReady(u) => u.as_str(),
        }
    }

    /// Renders the local response for this denial, with the generic messages: the one
    /// mapping to status, `code`, headers and body. The precise reason ([`Denial::reason`])
    /// goes to logs and metrics, so a caller probing keys cannot tell an unknown key from a
    /// revoked one. Only the request id is echoed, JSON-escaped and bounded.
    pub fn reply(self, now: UnixNanos, request_id: &[u8]) -> LocalReply {
        self.render(now, request_id, false)
    }

    /// Renders the local response; `verbose` is the policy's `errors.verbose`.
    pub fn render(self, now: UnixNanos, request_id: &[u8], verbose: bool) -> LocalReply {
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
        ];
        match self {
            // RFC 6750: a refused bearer token gets a Bearer challenge.
            Denial::Unauthorized(AuthFailure::Jwt(_)) => headers.push((
                "www-authenticate",
                "Bearer realm=\"gatehouse\", error=\"invalid_token\"".to_string(),
            )),
            Denial::Unauthorized(_) => {
                headers.push(("www-authenticate", "ApiKey realm=\"gatehouse\"".to_string()))
            }
            Denial::RateLimited(r) => {
                headers.push(("retry-after", r.retry_after_secs().to_string()));
                headers.extend(quota_headers(&r.quota()));
            }
            Denial::AuthUnavailable
            | Denial::NotReady(_)
            | Denial::Signature(SignatureError::Unavailable) => {
                headers.push(("retry-after", AUTH_UNAVAILABLE_RETRY_AFTER_SECS.to_string()))
            }
            Denial::MethodNotAllowed => headers.push(("allow", "GET, HEAD".to_string())),
            // RFC 9110 §11.6.1: a 401 names a scheme; webhook senders sign, they do not log in.
            Denial::Signature(_) => headers.push((
                "www-authenticate",
                "Signature realm=\"gatehouse\"".to_string(),
            )),
            _ => {}
        }
        // The one message with a number in it: an operator reading a probe's answer
        // wants to know how old the cache is, not only that it is too old.
        let stale;
        let message = match self {
            Denial::NotReady(Unready::Stale { age_secs }) => {
                let mut m = String::from("the key cache is ");
                crate::text::push_decimal(&mut m, age_secs);
                m.push_str(" s old, over feed.staleness");
                stale = m;
                stale.as_str()
            }
            _ => self.message(verbose),
        };
        LocalReply {
            status: self.status(),
            headers,
            body: error_body(message, self.code(verbose).as_str(), now, request_id),
        }
    }
}

impl From<crate::body::Refusal> for Denial {
    fn from(r: crate::body::Refusal) -> Self {
        match r {
            crate::body::Refusal::Body(e) => Denial::Body(e),
            crate::body::Refusal::Signature(e) => Denial::Signature(e),
        }
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (the IETF draft's
/// names), for refusals and, when the policy asks, allowed responses.
pub fn quota_headers(q: &crate::limit::Quota) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", q.limit.to_string()),
        ("ratelimit-remaining", q.remaining.to_string()),
        ("ratelimit-reset", q.reset_secs.to_string()),
    ]
}

fn printable_request_id(raw: &[u8]) -> &str {
    match std::str::from_utf8(raw) {
        Ok(s) if s.len() <= MAX_REQUEST_ID_LEN && s.bytes().all(|b| (0x20..0x7f).contains(&b)) => s,
        _ => "invalid",
    }
}

/// The standard error body. Shared with the control service, so both speak one shape.
/// Fields are written in the documented order: error, code, timestamp, request_id.
pub fn error_body(message: &str, code: &str, now: UnixNanos, request_id: &[u8]) -> String {
    // Built by hand, not with `format!` and serde_json: every refusal renders one, and a
    // refusal should cost less than the request it turns away.
    use crate::text::push_json_string;
    let mut out = String::with_capacity(128 + message.len());
    out.push_str("{\"error\":");
    push_json_string(&mut out, message);
    out.push_str(",\"code\":");
    push_json_string(&mut out, code);
    out.push_str(",\"timestamp\":\"");
    out.push_str(&format_rfc3339(now));
    out.push_str("\",\"request_id\":");
    push_json_string(&mut out, printable_request_id(request_id));
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::revocation::Revoked;

    fn body(reply: &LocalReply) -> serde_json::Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    #[test]
    fn unauthorized_has_the_standard_shape_and_www_authenticate() {
        let r = Denial::Unauthorized(AuthFailure::Missing)
            .reply(UnixNanos(1_767_225_600_000_000_000), b"req-1");
        assert_eq!(r.status, 401);
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| *k == "content-type" && v == "application/json")
        );
        assert!(r.headers.iter().any(|(k, _)| *k == "www-authenticate"));
        assert_eq!(
            body(&r),
            serde_json::json!({
                "error": "authentication required",
                "code": "MISSING_CREDENTIALS",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "request_id": "req-1",
            })
        );
    }

    #[test]
    fn unknown_and_revoked_keys_look_the_same_to_the_client() {
        let a =
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)).reply(UnixNanos(0), b"x");
        let b =
            Denial::Unauthorized(AuthFailure::Key(KeyFailure::Revoked)).reply(UnixNanos(0), b"x");
        assert_eq!(a, b);
        assert_eq!(body(&a)["code"], "INVALID_CREDENTIALS");
    }

    #[test]
    fn every_refusal_has_its_own_code_and_verbose_tells_unknown_from_revoked() {
        let code =
            |d: Denial, verbose| body(&d.render(UnixNanos(0), b"x", verbose))["code"].clone();
        let key = |k| Denial::Unauthorized(AuthFailure::Key(k));
        assert_eq!(
            code(Denial::Unauthorized(AuthFailure::Missing), false),
            "MISSING_CREDENTIALS"
        );
        assert_eq!(
            code(key(KeyFailure::Malformed), false),
            "MALFORMED_CREDENTIALS"
        );
        assert_eq!(code(key(KeyFailure::Expired), false), "EXPIRED_CREDENTIALS");
        assert_eq!(code(key(KeyFailure::Unknown), true), "UNKNOWN_KEY");
        assert_eq!(code(key(KeyFailure::Revoked), true), "REVOKED_KEY");
        let forbidden = Denial::Forbidden.reply(UnixNanos(0), b"x");
        assert_eq!(forbidden.status, 403);
        assert_eq!(body(&forbidden)["code"], "FORBIDDEN");
        assert!(
            !forbidden
                .headers
                .iter()
                .any(|(n, _)| *n == "www-authenticate")
        );
    }

    #[test]
    fn fields_come_in_the_documented_order() {
        let r = Denial::NoRoute.reply(UnixNanos(0), b"id");
        assert_eq!(
            r.body,
            r#"{"error":"no route matches this request","code":"NOT_FOUND","timestamp":"1970-01-01T00:00:00.000Z","request_id":"id"}"#
        );
    }

    #[test]
    fn a_stale_feed_is_503_auth_unavailable_with_retry_after() {
        let r = Denial::AuthUnavailable.reply(UnixNanos(0), b"");
        assert_eq!(r.status, 503);
        assert_eq!(body(&r)["code"], "AUTH_UNAVAILABLE");
        assert_eq!(
            body(&r)["error"],
            "authentication is temporarily unavailable"
        );
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| *k == "retry-after" && v == "5")
        );
        assert!(!r.headers.iter().any(|(k, _)| *k == "www-authenticate"));
    }

    #[test]
    fn webhook_and_body_refusals_have_their_codes_and_never_more_than_the_standard_fields() {
        let check = |d: Denial, status: u32, code: &str| {
            let r = d.reply(UnixNanos(0), b"id");
            assert_eq!(r.status, status, "{d:?}");
            let b = body(&r);
            assert_eq!(b["code"], code, "{d:?}");
            assert_eq!(b.as_object().unwrap().len(), 4, "{b}");
            r
        };
        for e in [
            SignatureError::Missing,
            SignatureError::Malformed,
            SignatureError::Mismatch,
            SignatureError::Replayed,
        ] {
            let r = check(Denial::Signature(e), 401, "INVALID_SIGNATURE");
            assert!(r.headers.iter().any(|(k, _)| *k == "www-authenticate"));
            assert_eq!(
                body(&r)["error"],
                "the webhook signature is missing or invalid"
            );
        }
        check(
            Denial::Signature(SignatureError::Expired),
            401,
            "SIGNATURE_EXPIRED",
        );
        let r = check(
            Denial::Signature(SignatureError::Unavailable),
            503,
            "AUTH_UNAVAILABLE",
        );
        assert!(r.headers.iter().any(|(k, _)| *k == "retry-after"));
        check(Denial::Body(BodyError::TooLarge), 413, "PAYLOAD_TOO_LARGE");
        check(
            Denial::Body(BodyError::Json(JsonError::Malformed)),
            400,
            "MALFORMED_BODY",
        );
        for e in [
            JsonError::StringTooLong,
            JsonError::TooManyItems,
            JsonError::TooDeep,
        ] {
            check(Denial::Body(BodyError::Json(e)), 413, "JSON_LIMIT_EXCEEDED");
        }
    }

    /// One denial of every kind (every variant, every reason), for exhaustive checks.
    #[test]
    fn the_refusal_codes_are_the_variants_in_order_and_spelled_once() {
        for (i, code) in Code::REFUSALS.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code}");
        }
        let mut spelled: Vec<&str> = Code::REFUSALS
            .iter()
            .chain(&Code::OTHERS)
            .map(|c| c.as_str())
            .collect();
        spelled.sort_unstable();
        spelled.dedup();
        assert_eq!(spelled.len(), Code::REFUSALS.len() + Code::OTHERS.len());
        assert_eq!(Denial::UpstreamError(502).code_index(), None);
        assert_eq!(Denial::NotReady(Unready::NoSnapshot).code_index(), None);
    }

    /// Each leaf error says its own reason; the refusal only maps it to HTTP.
    #[test]
    fn every_leaf_error_displays_the_reason_its_refusal_logs() {
        for d in every_denial() {
            let leaf = match d {
                Denial::Unauthorized(a) => a.to_string(),
                Denial::RateLimited(r) => r.to_string(),
                Denial::Unclear(u) => u.to_string(),
                Denial::CorsRejected(c) => c.to_string(),
                Denial::Signature(e) => e.to_string(),
                Denial::Body(e) => e.to_string(),
                Denial::NotReady(u) => u.to_string(),
                other => other.reason().to_string(),
            };
            assert_eq!(leaf, d.reason(), "{d:?}");
        }
    }

    fn every_denial() -> Vec<Denial> {
        use crate::limit::{Quota, Refusal};
        let quota = Quota {
            limit: 1,
            remaining: 0,
            reset_secs: 1,
        };
        let mut all = vec![
            Denial::Unauthorized(AuthFailure::Missing),
            Denial::Unauthorized(AuthFailure::Duplicate),
            Denial::Unauthorized(AuthFailure::InQuery),
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Malformed("jwt_malformed"))),
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Invalid("jwt_bad_signature"))),
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Expired)),
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Revoked(Revoked::User))),
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Revoked(Revoked::Jti))),
            Denial::Forbidden,
            Denial::UnknownPlan,
            Denial::RateLimited(Refusal::Exceeded {
                quota,
                retry_after_secs: 1,
            }),
            Denial::RateLimited(Refusal::Collision { quota }),
            Denial::RateLimited(Refusal::Contention { quota }),
            Denial::NoRoute,
            Denial::Unclear(crate::route::Unclear::Path),
            Denial::Unclear(crate::route::Unclear::Method),
            Denial::NotConfigured,
            Denial::AuthUnavailable,
            Denial::Body(BodyError::TooLarge),
            Denial::MethodNotAllowed,
        ];
        for k in [
            KeyFailure::Malformed,
            KeyFailure::Unknown,
            KeyFailure::Revoked,
            KeyFailure::Expired,
        ] {
            all.push(Denial::Unauthorized(AuthFailure::Key(k)));
        }
        for c in [
            crate::cors::CorsRefusal::Origin,
            crate::cors::CorsRefusal::Method,
            crate::cors::CorsRefusal::Headers,
            crate::cors::CorsRefusal::Route,
        ] {
            all.push(Denial::CorsRejected(c));
        }
        for e in [
            SignatureError::Missing,
            SignatureError::Malformed,
            SignatureError::Mismatch,
            SignatureError::Expired,
            SignatureError::Replayed,
            SignatureError::Unavailable,
        ] {
            all.push(Denial::Signature(e));
        }
        for e in [
            JsonError::Malformed,
            JsonError::StringTooLong,
            JsonError::TooManyItems,
            JsonError::TooDeep,
        ] {
            all.push(Denial::Body(BodyError::Json(e)));
        }
        all
    }

    #[test]
    fn every_refusal_code_is_in_the_metric_list_and_every_listed_code_occurs() {
        let mut seen = std::collections::BTreeSet::new();
        for d in every_denial() {
            for verbose in [false, true] {
                let code = d.code(verbose);
                assert!(Code::REFUSALS.contains(&code), "{d:?}: {code}");
                seen.insert(code);
            }
            assert_eq!(
                d.code_index().map(|i| Code::REFUSALS[i]),
                Some(d.audit_code())
            );
        }
        assert_eq!(seen.len(), Code::REFUSALS.len(), "{seen:?}");
        assert_eq!(Denial::UpstreamError(502).code_index(), None);
        // Operators see the precise code even where clients see the generic one.
        let revoked = Denial::Unauthorized(AuthFailure::Key(KeyFailure::Revoked));
        assert_eq!(revoked.code(false), Code::InvalidCredentials);
        assert_eq!(revoked.audit_code(), Code::RevokedKey);
    }

    #[test]
    fn the_health_routes_503_is_not_ready_no_refusal_and_says_why() {
        let none = Denial::NotReady(Unready::NoSnapshot).reply(UnixNanos(0), b"p");
        let stale = Denial::NotReady(Unready::Stale { age_secs: 45 }).reply(UnixNanos(0), b"p");
        for (r, message) in [
            (&none, "the key cache has not received its first snapshot"),
            (&stale, "the key cache is 45 s old, over feed.staleness"),
        ] {
            assert_eq!(r.status, 503);
            assert_eq!(body(r)["code"], "NOT_READY");
            assert_eq!(body(r)["error"], message);
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| *k == "retry-after" && v == "5")
            );
            assert!(
                r.headers
                    .iter()
                    .any(|(k, v)| *k == "cache-control" && v == "no-store")
            );
        }
        assert_eq!(
            Denial::NotReady(Unready::NoSnapshot).reason(),
            "no_snapshot"
        );
        assert_eq!(
            Denial::NotReady(Unready::Stale { age_secs: 1 }).reason(),
            "feed_stale"
        );
        assert!(!Code::REFUSALS.contains(&Code::NotReady));
    }

    #[test]
    fn a_wrong_method_on_the_health_path_is_405_with_allow() {
        let r = Denial::MethodNotAllowed.reply(UnixNanos(0), b"");
        assert_eq!(r.status, 405);
        assert_eq!(body(&r)["code"], "METHOD_NOT_ALLOWED");
        assert!(
            r.headers
                .iter()
                .any(|(k, v)| *k == "allow" && v == "GET, HEAD")
        );
        assert_eq!(Denial::MethodNotAllowed.reason(), "method_not_allowed");
    }

    #[test]
    fn no_route_is_404_not_found_without_www_authenticate() {
        let r = Denial::NoRoute.reply(UnixNanos(0), b"");
        assert_eq!(r.status, 404);
        assert_eq!(body(&r)["code"], "NOT_FOUND");
        assert!(!r.headers.iter().any(|(k, _)| *k == "www-authenticate"));
    }

    #[test]
    fn a_hostile_request_id_is_escaped_or_replaced() {
        let r = Denial::NoRoute.reply(UnixNanos(0), br#"a","code":"OK"#);
        assert_eq!(body(&r)["request_id"], r#"a","code":"OK"#);
        assert_eq!(body(&r)["code"], "NOT_FOUND");
        let r = Denial::NoRoute.reply(UnixNanos(0), b"a\nb\xff");
        assert_eq!(body(&r)["request_id"], "invalid");
        let r = Denial::NoRoute.reply(UnixNanos(0), &[b'a'; 129]);
        assert_eq!(body(&r)["request_id"], "invalid");
    }
}
