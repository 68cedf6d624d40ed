//! The check Envoy's `ext_authz` calls (`ANY /v1/authz/{*rest}`), through the real
//! router over a real database (SQLite, or PostgreSQL with
//! `GATEHOUSE_TEST_DATABASE=postgres`; see `common`): without a policy (the key alone,
//! scoped keys refused), and with `serve --policy`, where every answer must be the
//! plugin's own. `test-harness/tests/authz_parity_envoy.rs` runs the same requests
//! through a real Envoy both ways.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a failure panics"
)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{ADMIN, FEED, T0, error_code, svc, svc_with};
use gatehouse_core::refusal::Denial;

use gatehouse_core::authn::AuthFailure;
use gatehouse_core::time::UnixNanos;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::Arc;
use tower::ServiceExt;

/// What ext_authz sends: the original method and path after the prefix, the forwarded
/// headers, no body.
fn check_request(method: Method, token: Option<&str>, key: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri("/v1/authz/v1/things?page=2")
        .header("x-request-id", "test-req-1");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(Body::empty()).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

async fn call(s: &common::Svc, req: Request<Body>) -> Answer {
    let res = s.app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let raw = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).unwrap()
    };
    Answer {
        status,
        headers,
        body,
        raw,
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_usable_key_is_answered_200_with_its_identity_in_headers_for_every_method() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ] {
        let a = call(&s, check_request(method.clone(), Some(FEED), Some(key))).await;
        assert_eq!(a.status, StatusCode::OK, "{method}");
        assert_eq!(header(&a, "x-gatehouse-user"), Some("user_1"));
        assert_eq!(header(&a, "x-gatehouse-tenant"), Some("tenant_1"));
        assert_eq!(header(&a, "x-gatehouse-plan"), Some("team"));
        assert_eq!(header(&a, "x-gatehouse-key-id"), k["id"].as_str());
        assert!(a.raw.is_empty());
    }
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys_are_refused_alike_with_401() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    // Last character changed: the checksum no longer matches.
    let mut mistyped = key.to_string();
    let last = mistyped.pop().unwrap();
    mistyped.push(if last == 'a' { 'b' } else { 'a' });
    // A well-formed key that was never issued.
    let unknown = gatehouse_core::authn::api_key::format_key("ghk", "0123456789abcdefABCDEF");
    assert!(gatehouse_core::authn::api_key::check_format(unknown.as_bytes()).is_ok());
    for presented in [
        None,
        Some(""),
        Some(mistyped.as_str()),
        Some(unknown.as_str()),
    ] {
        let a = call(&s, check_request(Method::GET, Some(FEED), presented)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{presented:?}");
        assert_eq!(error_code(&a.body), "INVALID_CREDENTIALS");
        assert_eq!(a.body["request_id"], "test-req-1");
        assert_eq!(header(&a, "x-gatehouse-user"), None);
    }
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused_with_401() {
    let s = svc().await;
    let revoked = s.issue("user_1").await;
    let (status, _) = s
        .admin(
            Method::DELETE,
            &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, expiring) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "user_2", "tenant_id": "tenant_1", "plan": "team",
                "device_name": "laptop", "expires_in_days": 1}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let expiring = expiring["api_key"].as_str().unwrap();
    let a = call(&s, check_request(Method::GET, Some(FEED), Some(expiring))).await;
    assert_eq!(a.status, StatusCode::OK);
    s.clock.advance_secs(86_400);
    for key in [revoked["api_key"].as_str().unwrap(), expiring] {
        let a = call(&s, check_request(Method::GET, Some(FEED), Some(key))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&a.body), "INVALID_CREDENTIALS");
    }
}

#[tokio::test]
async fn only_the_feed_token_may_check_keys() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    for token in [None, Some(ADMIN), Some("not-a-token")] {
        let a = call(&s, check_request(Method::GET, token, Some(key))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(error_code(&a.body), "UNAUTHORIZED");
        assert_eq!(header(&a, "x-gatehouse-user"), None);
    }
}

#[tokio::test]
async fn the_key_is_never_echoed_or_logged_in_the_answer() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    let a = call(&s, check_request(Method::GET, Some(FEED), Some(key))).await;
    assert_eq!(a.status, StatusCode::OK);
    for (_, v) in &a.headers {
        assert!(!v.as_bytes().windows(key.len()).any(|w| w == key.as_bytes()));
    }
}

#[tokio::test]
async fn without_a_policy_a_key_with_scopes_is_refused_403_on_every_path() {
    let s = svc().await;
    let scoped = issue_scoped(&s, "user_1", &["billing"]).await;
    for path in ["/v1/billing/invoices", "/v1/things", "/"] {
        let a = call(&s, ask(Method::GET, path, &[("x-api-key", &scoped)])).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(error_code(&a.body), "FORBIDDEN");
        assert_eq!(header(&a, "x-gatehouse-user"), None);
    }
    // The same key without scopes would pass: the scopes are the reason.
    let plain = s.issue("user_2").await;
    let a = call(
        &s,
        ask(Method::GET, "/v1/things", &[("x-api-key", key_of(&plain))]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

// ---- With `serve --policy`: the plugin's decision ----

/// The HMAC secret of the test policy's JWT key (a `test_fixture` literal).
const JWT_SECRET: &str = "authz-test-secret-0123456789abcdefghijklmnop";
/// The policy's static key (example.yaml's demo key; its plaintext is public).
const DEMO_KEY: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";

/// Routes of both audiences, a route group, a route limit, CORS, a JWT key with a
/// forwarded claim, a static key, and a feed section whose staleness must never refuse
/// here. `errors.verbose` makes every refusal say why, so each test sees the reason.
const POLICY: &str = r#"
version: 1
errors: { verbose: true }
api_key: { header: x-api-key, format: checksummed }
feed:
  cluster: gatehouse_control
  token_env: GATEHOUSE_FEED_TOKEN
  staleness: 30s
  on_stale: fail_closed
jwt:
  keys:
    - kid: authz-test
      alg: HS256
      secret: "authz-test-secret-0123456789abcdefghijklmnop"
      test_fixture: true
  claims: { user: sub, tenant: tenant, plan: plan }
  default_tenant: tenant_1
  default_plan: team
  forward_claims: { email: x-gatehouse-email }
cors:
  allowed_origins: [https://app.example.com]
keys:
  # plaintext: ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5
  - id: key_demo
    sha256: ea4d1b2a0167d9569b431fc952792261ff21c7e8da3bb4e49b66fd9bf07ef55f
    user: user_demo
    tenant: tenant_demo
    plan: team
routes:
  - name: health
    match: { path: /healthz, methods: [GET] }
    audience: external
    cors: false
  - name: login
    match: { path: /login }
    audience: external
    limits: [ { requests: 1, per: 1h, by: ip } ]
  - name: billing
    match: { path_prefix: /v1/billing/ }
    group: billing
  - name: api
    match: { path_prefix: /v1/ }
"#;

async fn policy_svc_from(source: &str) -> common::Svc {
    let loaded = gatehouse_core::policy::load_yaml("authz.yaml", source)
        .unwrap_or_else(|e| panic!("the test policy does not load:\n{e}"));
    let policy = Arc::new(loaded.policy);
    svc_with(move |c| c.policy = Some(policy)).await
}

async fn policy_svc() -> common::Svc {
    policy_svc_from(POLICY).await
}

/// What ext_authz sends for `method path` with the client's `headers`: the feed token in
/// `x-control-token`, so `authorization` is the client's.
fn ask(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("/v1/authz{path}"))
        .header("x-request-id", "test-req-1")
        .header("x-control-token", FEED);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(Body::empty()).unwrap()
}

fn key_of(issued: &Value) -> &str {
    issued["api_key"].as_str().unwrap()
}

async fn issue_scoped(s: &common::Svc, user: &str, scopes: &[&str]) -> String {
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": user, "tenant_id": "tenant_1", "plan": "team",
                        "device_name": "laptop", "scopes": scopes}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    key_of(&body).to_string()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 token of the policy's key, issued at `iat` for an hour.
fn jwt(sub: &str, iat: u64, jti: &str) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "authz-test"});
    let claims = json!({"sub": sub, "email": format!("{sub}@example.com"), "iat": iat,
                        "exp": iat + 3600, "jti": jti});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

fn removed(a: &Answer) -> Vec<&str> {
    header(a, "x-envoy-auth-headers-to-remove")
        .map(|v| v.split(',').collect())
        .unwrap_or_default()
}

fn assert_refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(error_code(&a.body), code);
    assert_eq!(header(a, "x-gatehouse-user"), None);
    assert_eq!(header(a, "x-envoy-auth-headers-to-remove"), None);
}

#[tokio::test]
async fn a_scoped_key_passes_on_its_group_and_is_refused_403_on_every_other_route() {
    let s = policy_svc().await;
    let key = issue_scoped(&s, "user_1", &["billing"]).await;
    let a = call(
        &s,
        ask(
            Method::GET,
            "/v1/billing/invoices?page=2",
            &[("x-api-key", &key)],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(header(&a, "x-gatehouse-user"), Some("user_1"));
    // Another internal route, and an external one: a scoped key is no credential there.
    for path in ["/v1/things", "/healthz"] {
        let a = call(&s, ask(Method::GET, path, &[("x-api-key", &key)])).await;
        assert_refused(&a, StatusCode::FORBIDDEN, "FORBIDDEN");
    }
}

#[tokio::test]
async fn an_unscoped_key_passes_with_its_identity_and_other_identity_headers_are_removed() {
    let s = policy_svc().await;
    let k = s.issue("user_1").await;
    let a = call(
        &s,
        ask(
            Method::POST,
            "/v1/things",
            &[
                ("x-api-key", key_of(&k)),
                ("x-gatehouse-user", "admin"),
                ("x-gatehouse-role", "root"),
            ],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.raw.is_empty());
    assert_eq!(header(&a, "x-gatehouse-user"), Some("user_1"));
    assert_eq!(header(&a, "x-gatehouse-tenant"), Some("tenant_1"));
    assert_eq!(header(&a, "x-gatehouse-plan"), Some("team"));
    assert_eq!(header(&a, "x-gatehouse-key-id"), k["id"].as_str());
    // The client's own x-gatehouse-* names go; the ones this answer sets are replaced.
    assert_eq!(
        removed(&a),
        [
            "x-gatehouse-email",
            "x-gatehouse-issuer",
            "x-gatehouse-role"
        ]
    );
}

#[tokio::test]
async fn external_routes_pass_anonymous_callers_and_internal_ones_refuse_them_401() {
    let s = policy_svc().await;
    let a = call(
        &s,
        ask(Method::GET, "/healthz", &[("x-gatehouse-user", "admin")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(header(&a, "x-gatehouse-user"), None);
    // Nothing identifies an anonymous caller upstream, whatever it sent.
    assert_eq!(
        removed(&a),
        [
            "x-gatehouse-email",
            "x-gatehouse-issuer",
            "x-gatehouse-key-id",
            "x-gatehouse-plan",
            "x-gatehouse-tenant",
            "x-gatehouse-user"
        ]
    );
    let a = call(&s, ask(Method::GET, "/v1/things", &[])).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "MISSING_CREDENTIALS");
    assert_eq!(
        header(&a, "www-authenticate"),
        Some("ApiKey realm=\"gatehouse\"")
    );
}

#[tokio::test]
async fn unclear_paths_and_overrides_are_refused_400_and_unmatched_requests_404() {
    let s = policy_svc().await;
    let k = s.issue("user_1").await;
    let key = key_of(&k);
    for path in [
        "/v1/things;x",
        "/v1/billing/..;/things",
        "/healthz/../v1/things",
        "/v1/%2e%2e/things",
        "/V1/things",
    ] {
        let a = call(&s, ask(Method::GET, path, &[("x-api-key", key)])).await;
        assert_refused(&a, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    // A GET the upstream would run as a DELETE must not pass on the public read route.
    let a = call(
        &s,
        ask(
            Method::GET,
            "/healthz",
            &[("x-http-method-override", "DELETE")],
        ),
    )
    .await;
    assert_refused(&a, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    for (method, path) in [
        (Method::GET, "/nowhere"),
        (Method::POST, "/healthz"),
        (Method::GET, "/"),
    ] {
        let a = call(&s, ask(method.clone(), path, &[("x-api-key", key)])).await;
        assert_refused(&a, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
}

#[tokio::test]
async fn unknown_revoked_and_expired_keys_are_refused_for_their_own_reason() {
    let s = policy_svc().await;
    let revoked = s.issue("user_1").await;
    let (status, _) = s
        .admin(
            Method::DELETE,
            &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, expiring) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "user_2", "tenant_id": "tenant_1", "plan": "team",
                "device_name": "laptop", "expires_in_days": 1}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let expiring = key_of(&expiring);
    let unknown = gatehouse_core::authn::api_key::format_key("ghk", "0123456789abcdefABCDEF");
    let get = |key: &str| ask(Method::GET, "/v1/things", &[("x-api-key", key)]);
    assert_eq!(call(&s, get(expiring)).await.status, StatusCode::OK);
    assert_refused(
        &call(&s, get(key_of(&revoked))).await,
        StatusCode::UNAUTHORIZED,
        "REVOKED_KEY",
    );
    assert_refused(
        &call(&s, get(&unknown)).await,
        StatusCode::UNAUTHORIZED,
        "UNKNOWN_KEY",
    );
    assert_refused(
        &call(&s, get("ghk_not-a-key")).await,
        StatusCode::UNAUTHORIZED,
        "MALFORMED_CREDENTIALS",
    );
    s.clock.advance_secs(86_400);
    assert_refused(
        &call(&s, get(expiring)).await,
        StatusCode::UNAUTHORIZED,
        "EXPIRED_CREDENTIALS",
    );
}

#[tokio::test]
async fn a_token_of_a_revoked_user_or_jti_is_refused_and_a_later_token_passes() {
    let s = policy_svc().await;
    let bearer = |t: &str| format!("Bearer {t}");
    let get = |auth: &str| ask(Method::GET, "/v1/things", &[("authorization", auth)]);
    let old = jwt("user_jwt", T0 - 60, "jti-old");
    let a = call(&s, get(&bearer(&old))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(header(&a, "x-gatehouse-user"), Some("user_jwt"));
    assert_eq!(header(&a, "x-gatehouse-tenant"), Some("tenant_1"));
    assert_eq!(header(&a, "x-gatehouse-key-id"), Some("jwt:authz-test"));
    assert_eq!(header(&a, "x-gatehouse-issuer"), Some("jwt"));
    assert_eq!(
        header(&a, "x-gatehouse-email"),
        Some("user_jwt@example.com")
    );

    let (status, _) = s
        .admin(Method::POST, "/v1/users/user_jwt/revoke-tokens", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let a = call(&s, get(&bearer(&old))).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "REVOKED_TOKEN");
    assert!(
        header(&a, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        a.headers
    );

    s.clock.advance_secs(5);
    let fresh = jwt("user_jwt", T0 + 5, "jti-fresh");
    assert_eq!(call(&s, get(&bearer(&fresh))).await.status, StatusCode::OK);
    let (status, _) = s
        .admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"jti": "jti-fresh", "expires_at": T0 + 5 + 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_refused(
        &call(&s, get(&bearer(&fresh))).await,
        StatusCode::UNAUTHORIZED,
        "REVOKED_TOKEN",
    );
    // Another user's tokens are untouched.
    let other = jwt("user_other", T0 - 60, "jti-other");
    assert_eq!(call(&s, get(&bearer(&other))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_key_and_a_token_together_are_refused_as_a_duplicate_credential() {
    let s = policy_svc().await;
    let k = s.issue("user_1").await;
    let token = format!("Bearer {}", jwt("user_jwt", T0 - 60, "jti-1"));
    let a = call(
        &s,
        ask(
            Method::GET,
            "/v1/things",
            &[("x-api-key", key_of(&k)), ("authorization", &token)],
        ),
    )
    .await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "MALFORMED_CREDENTIALS");
}

#[tokio::test]
async fn a_key_declared_in_the_policy_passes_as_in_the_plugin() {
    let s = policy_svc().await;
    let a = call(
        &s,
        ask(Method::GET, "/v1/things", &[("x-api-key", DEMO_KEY)]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(header(&a, "x-gatehouse-key-id"), Some("key_demo"));
}

#[tokio::test]
async fn rate_limits_are_not_enforced_and_the_feed_is_never_stale() {
    let s = policy_svc().await;
    let k = s.issue("user_1").await;
    // `login` allows 1 per hour per address, and the plan 1200 a minute: ext_authz
    // counts neither.
    for _ in 0..5 {
        let a = call(&s, ask(Method::POST, "/login", &[])).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    // A year without a feed poll: the database is the feed, never stale.
    s.clock.advance_secs(365 * 86_400);
    let a = call(
        &s,
        ask(Method::GET, "/v1/things", &[("x-api-key", key_of(&k))]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn a_refusal_is_the_plugins_reply_to_the_byte() {
    let s = policy_svc().await;
    let a = call(&s, ask(Method::GET, "/v1/things", &[])).await;
    let plugin = Denial::Unauthorized(AuthFailure::Missing).render(
        UnixNanos::from_secs(T0),
        b"test-req-1",
        true,
    );
    assert_eq!(u32::from(a.status.as_u16()), plugin.status);
    assert_eq!(String::from_utf8(a.raw.clone()).unwrap(), plugin.body);
    for (name, value) in &plugin.headers {
        assert_eq!(header(&a, name), Some(value.as_str()), "{name}");
    }
}

#[tokio::test]
async fn a_cors_preflight_is_answered_before_authentication() {
    let s = policy_svc().await;
    let preflight = |origin: &str| {
        ask(
            Method::OPTIONS,
            "/v1/things",
            &[("origin", origin), ("access-control-request-method", "GET")],
        )
    };
    let a = call(&s, preflight("https://app.example.com")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(
        header(&a, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let a = call(&s, preflight("https://evil.example.com")).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "CORS_REJECTED");
}

#[tokio::test]
async fn hide_credentials_removes_the_credential_header_upstream() {
    let s =
        policy_svc_from(&POLICY.replace("version: 1", "version: 1\nhide_credentials: true")).await;
    let k = s.issue("user_1").await;
    let a = call(
        &s,
        ask(Method::GET, "/v1/things", &[("x-api-key", key_of(&k))]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(removed(&a).contains(&"x-api-key"), "{:?}", removed(&a));
    let token = format!("Bearer {}", jwt("user_jwt", T0 - 60, "jti-1"));
    let a = call(
        &s,
        ask(Method::GET, "/v1/things", &[("authorization", &token)]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(removed(&a).contains(&"authorization"), "{:?}", removed(&a));
}

#[tokio::test]
async fn with_the_feed_token_as_bearer_the_authorization_header_is_the_proxys() {
    let s = policy_svc().await;
    let k = s.issue("user_1").await;
    // The way ext_authz was configured before x-control-token: keys still work.
    let legacy = Request::builder()
        .uri("/v1/authz/v1/things")
        .header("authorization", format!("Bearer {FEED}"))
        .header("x-api-key", key_of(&k))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s, legacy).await.status, StatusCode::OK);
    // A wrong x-control-token is refused even beside a good bearer token.
    let wrong = Request::builder()
        .uri("/v1/authz/v1/things")
        .header("x-control-token", "not-the-feed-token-0123456789abcdef")
        .header("authorization", format!("Bearer {FEED}"))
        .header("x-api-key", key_of(&k))
        .body(Body::empty())
        .unwrap();
    let a = call(&s, wrong).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&a.body), "UNAUTHORIZED");
    // The admin token is not the proxies'.
    let admin = Request::builder()
        .uri("/v1/authz/v1/things")
        .header("x-control-token", ADMIN)
        .header("x-api-key", key_of(&k))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s, admin).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn wrong_control_tokens_count_toward_the_failure_limit_and_the_admin_token_does_not() {
    let s = svc_with(|c| c.token_failures_per_minute = 3).await;
    let k = s.issue("user_1").await;
    let with_token = |token: &str| {
        Request::builder()
            .uri("/v1/authz/v1/things")
            .header("x-control-token", token)
            .header("x-api-key", key_of(&k))
            .body(Body::empty())
            .unwrap()
    };
    // A real token, the admin's, on the wrong route: refused, not a guess.
    for _ in 0..5 {
        assert_eq!(
            call(&s, with_token(ADMIN)).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    for _ in 0..3 {
        let a = call(&s, with_token("wrong-token-0123456789abcdefghijklmnopq")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // Locked out: even the right token waits out the window.
    let a = call(&s, with_token(FEED)).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&a.body), "RATE_LIMITED");
    assert!(header(&a, "retry-after").is_some());
    s.clock.advance_secs(61);
    assert_eq!(call(&s, with_token(FEED)).await.status, StatusCode::OK);
}

/// Two JWT providers, each with its own HMAC key; corp's tokens live an hour at most.
const PROVIDERS: &str = r#"
version: 1
errors: { verbose: true }
jwt:
  providers:
    - name: corp
      issuers: [https://corp.test]
      audiences: [api]
      keys: [ { kid: corp-1, alg: HS256, secret: "corp-secret-0123456789abcdef0123", test_fixture: true } ]
      max_token_lifetime: 1h
      default_tenant: t1
      default_plan: team
    - name: partner
      issuers: [https://partner.test]
      audiences: any
      keys: [ { kid: partner-1, alg: HS256, secret: "partner-secret-0123456789abcdef01", test_fixture: true } ]
      default_tenant: t1
      default_plan: team
routes:
  - match: { path_prefix: /v1/ }
"#;

/// An HS256 token with `kid`, signed with `secret`, of these claims.
fn signed(kid: &str, secret: &str, claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

/// As in the plugin: a token is verified only with the keys of the provider its `iss`
/// names, the answer names the provider, each provider's lifetime bound holds, and a plan
/// the policy does not list is 403 UNKNOWN_PLAN.
#[tokio::test]
async fn jwt_providers_lifetimes_and_unknown_plans_are_decided_as_in_the_plugin() {
    let s = policy_svc_from(PROVIDERS).await;
    const CORP: &str = "corp-secret-0123456789abcdef0123";
    const PARTNER: &str = "partner-secret-0123456789abcdef01";
    let claims = |iss: &str, extra: Value| {
        let mut c = json!({"sub": "alice", "iss": iss, "aud": "api",
                           "iat": T0 - 60, "exp": T0 + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let get = |token: &str| {
        ask(
            Method::GET,
            "/v1/things",
            &[("authorization", &format!("Bearer {token}"))],
        )
    };
    let corp = signed("corp-1", CORP, &claims("https://corp.test", json!({})));
    let a = call(&s, get(&corp)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(header(&a, "x-gatehouse-issuer"), Some("corp"));
    let partner = signed(
        "partner-1",
        PARTNER,
        &claims("https://partner.test", json!({})),
    );
    let a = call(&s, get(&partner)).await;
    assert_eq!(
        header(&a, "x-gatehouse-issuer"),
        Some("partner"),
        "{}",
        a.body
    );

    // The partner's key signing a token that claims to be corp's; an issuer nobody lists.
    let forged = signed(
        "partner-1",
        PARTNER,
        &claims("https://corp.test", json!({})),
    );
    let stranger = signed("corp-1", CORP, &claims("https://evil.test", json!({})));
    for token in [forged, stranger] {
        assert_refused(
            &call(&s, get(&token)).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_CREDENTIALS",
        );
    }
    // Corp's bound is an hour; the partner's the default day.
    let long = json!({"exp": T0 - 60 + 7200});
    let corp_long = signed("corp-1", CORP, &claims("https://corp.test", long.clone()));
    assert_refused(
        &call(&s, get(&corp_long)).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    let partner_long = signed("partner-1", PARTNER, &claims("https://partner.test", long));
    assert_eq!(call(&s, get(&partner_long)).await.status, StatusCode::OK);
    let no_iat = {
        let mut c = claims("https://corp.test", json!({}));
        c.as_object_mut().unwrap().remove("iat");
        signed("corp-1", CORP, &c)
    };
    assert_refused(
        &call(&s, get(&no_iat)).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_CREDENTIALS",
    );
    let gold = signed(
        "corp-1",
        CORP,
        &claims("https://corp.test", json!({"plan": "gold"})),
    );
    assert_refused(
        &call(&s, get(&gold)).await,
        StatusCode::FORBIDDEN,
        "UNKNOWN_PLAN",
    );
}

/// The control service refuses to start with a policy whose JWKS does not say its
/// audiences, naming the file, line and column, as `check` and the module do.
#[test]
fn a_policy_whose_jwks_says_no_audiences_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idp.yaml");
    std::fs::write(
        &path,
        "version: 1\njwt:\n  jwks_url: { cluster: idp, path: /jwks }\n  issuers: any\nroutes:\n  - match: { path_prefix: /v1/ }\n",
    )
    .unwrap();
    let err = gatehouse_control::config::Config::load_policy(path.to_str().unwrap())
        .err()
        .unwrap();
    assert!(
        err.contains("idp.yaml:3:3: jwt: missing required field 'audiences'"),
        "{err}"
    );
}
