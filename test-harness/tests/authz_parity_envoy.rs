//! ext_authz parity: one table of requests sent through two real Envoys, which must
//! answer every one alike.
//!
//! - **plugin**: Envoy with the gatehouse module and `tests/fixtures/authz_parity.yaml`;
//!   its sync takes keys and revocations from the control service's feed.
//! - **ext_authz**: the same Envoy bootstrap with `envoy.filters.http.ext_authz` in place
//!   of the module (`gatehouse_harness::envoy::ext_authz`), asking `/v1/authz` of the same
//!   control service, started with `--policy` of the same file.
//!
//! For every row both must give the status the table expects and the same error `code`;
//! when the request is let through, the upstream must receive the same `x-gatehouse-*`
//! headers from both (the echo upstream says what it got). The table covers API keys from
//! the database and from the policy, scoped and unscoped, revoked, expired and unknown;
//! JWTs good, expired, of a revoked user, with a revoked jti, forged; routes of both
//! audiences, unknown routes, unclear paths, method overrides, credentials in the query
//! and twice, and CORS preflights. What `/v1/authz` does not decide (rate limits, bodies)
//! is not in the table: docs/operating.md "ext_authz" says so.
//!
//! Needs Envoy (`make envoy`), the module (`make wasm`) and the control binary, which
//! `cargo test --workspace` builds (alone: `cargo build -p gatehouse-control`). Missing
//! any of them is a failure that says how to get it, never a skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens::{hmac_secret, mint};
use gatehouse_harness::envoy::control::{ControlOptions, ControlService, IssuedKey};
use gatehouse_harness::envoy::echo::ECHO_MARKER;
use gatehouse_harness::envoy::ext_authz::ExtAuthzLink;
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, FeedLink, workspace_root};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The control service's tokens: long, random-looking, and only ever in environments.
const ADMIN_TOKEN: &str = "q7Rk2VxN9mWc4TzL8pHs3JdF6gYb1KnE5aUoXi0QeWv";
const FEED_TOKEN: &str = "Zt4Hn8Lw2QcV6rXk9PmB3sJd7FgY1aNe5UoTi0RyKbM";
/// The policy's `feed.token_env` and its JWT key's `secret_env`.
const FEED_TOKEN_ENV: &str = "GATEHOUSE_FEED_TOKEN";
const JWT_SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
const JWT_KID: &str = "parity-hs256";

/// The policy's own keys (example.yaml's demo fixtures).
const STATIC_DEMO: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
const STATIC_REVOKED: &str = "ghk_revoked_7d1e3a5c9b0f2e4d6c8a1B2tc9GC";
const STATIC_EXPIRED: &str = "ghk_expired_2b4d6f8a0c1e3a5c7e9b1D0ZaY1i";
const STATIC_BILLING: &str = "ghk_billing_9c8b7a6d5e4f3a2b1c0dEf32tzAe";

/// How long a change may take to reach the plugin's cache before the test fails.
const PROPAGATION_BOUND: Duration = Duration::from_secs(15);

#[allow(
    clippy::disallowed_methods,
    reason = "real processes on the wall clock: token times and generous waits"
)]
fn wall_clock() -> (Instant, u64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (Instant::now(), secs)
}

/// Both Envoys and the control service behind them.
struct Stack {
    control: ControlService,
    plugin: Envoy,
    authz: Envoy,
}

impl Stack {
    fn start() -> Stack {
        let path = workspace_root().join("test-harness/tests/fixtures/authz_parity.yaml");
        let source = std::fs::read_to_string(&path).unwrap();
        let loaded = gatehouse_core::policy::load_yaml("authz_parity.yaml", &source)
            .unwrap_or_else(|e| panic!("authz_parity.yaml does not load:\n{e}"));
        let secret = String::from_utf8(hmac_secret(Alg::HS256)).unwrap();
        let control = ControlService::start(&ControlOptions {
            admin_token: ADMIN_TOKEN.into(),
            feed_token: FEED_TOKEN.into(),
            policy: Some(path),
            env: vec![(JWT_SECRET_ENV.into(), secret.clone())],
            ..ControlOptions::new()
        })
        .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
        let opts = EnvoyOptions {
            env: vec![(JWT_SECRET_ENV.into(), secret)],
            concurrency: 2,
            ..EnvoyOptions::new(loaded.plugin_config_json)
        };
        let token = (FEED_TOKEN_ENV.to_string(), FEED_TOKEN.to_string());
        let plugin = Envoy::start_with_feed(
            &opts,
            &FeedLink {
                control: control.addr(),
                secret_env: vec![token.clone()],
            },
        )
        .unwrap_or_else(|e| panic!("could not start the plugin's Envoy: {e:#}"));
        let authz = Envoy::start_ext_authz(
            &opts,
            &ExtAuthzLink {
                control: control.addr(),
                token_env: token,
            },
        )
        .unwrap_or_else(|e| panic!("could not start the ext_authz Envoy: {e:#}"));
        Stack {
            control,
            plugin,
            authz,
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- plugin Envoy ---\n{}\n--- ext_authz Envoy ---\n{}\n--- control ---\n{}",
            self.plugin.log_tail(15),
            self.authz.log_tail(15),
            self.control.log_tail(15)
        )
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self
            .control
            .admin(method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    fn issue(&self, user: &str, scopes: &[&str]) -> IssuedKey {
        let mut body = json!({"user_id": user, "tenant_id": "tenant_parity", "plan": "team",
                              "device_name": "parity"});
        // No `scopes` at all for a key that may call every route (an empty list is refused).
        if !scopes.is_empty() {
            body["scopes"] = json!(scopes);
        }
        let answer = self.admin("POST", "/v1/keys", Some(body));
        IssuedKey {
            id: answer["id"].as_str().unwrap().to_string(),
            api_key: answer["api_key"].as_str().unwrap().to_string(),
        }
    }

    /// Asks the plugin's Envoy until `request` gets `status`: the feed has delivered.
    fn until_plugin_answers(&self, request: &ClientRequest, status: u16) {
        let (start, _) = wall_clock();
        loop {
            let answer = self.plugin.send(request).unwrap();
            if answer.status == status {
                return;
            }
            assert!(
                start.elapsed() < PROPAGATION_BOUND,
                "{} {}: still {} from the plugin, not {status}\n{}",
                request.method,
                request.path,
                answer.status,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One request of the table and the answer both Envoys must give.
struct Row {
    what: String,
    request: ClientRequest,
    status: u16,
    code: Option<&'static str>,
}

/// A request with these headers (name, value).
fn request(method: &str, path: &str, headers: Vec<(&str, String)>) -> ClientRequest {
    ClientRequest {
        method: method.into(),
        path: path.into(),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.into_bytes()))
            .collect(),
        body: Vec::new(),
    }
}

fn row(
    what: &str,
    (method, path): (&str, &str),
    headers: Vec<(&str, String)>,
    status: u16,
    code: Option<&'static str>,
) -> Row {
    Row {
        what: what.to_string(),
        request: request(method, path, headers),
        status,
        code,
    }
}

fn code_of(answer: &ClientResponse) -> Option<String> {
    let body: Value = serde_json::from_slice(&answer.body).ok()?;
    body.get("code")?.as_str().map(str::to_string)
}

/// The `x-gatehouse-*` headers the upstream received, when the upstream answered.
fn upstream_identity(answer: &ClientResponse) -> Option<BTreeMap<String, String>> {
    if !answer.headers.iter().any(|(n, _)| n == ECHO_MARKER) {
        return None;
    }
    let echoed: Value = serde_json::from_slice(&answer.body).ok()?;
    Some(
        echoed["headers"]
            .as_object()?
            .iter()
            .filter(|(name, _)| name.starts_with("x-gatehouse-"))
            .map(|(n, v)| (n.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

/// An HS256 token of the policy's key (or another `kid`), issued `age` seconds ago and
/// valid for `ttl` seconds from then.
fn token(kid: &str, sub: &str, jti: &str, now: u64, age: u64, ttl: u64) -> String {
    let payload = json!({"sub": sub, "email": format!("{sub}@example.com"), "jti": jti,
                         "iat": now - age, "exp": now - age + ttl});
    mint(Alg::HS256, Some(kid), &payload.to_string())
}

#[test]
fn the_plugin_and_ext_authz_answer_every_request_of_the_table_alike() {
    let stack = Stack::start();
    let (_, now) = wall_clock();

    // The database's keys and revocations, delivered to the plugin by its feed.
    let plain = stack.issue("user_plain", &[]);
    let billing = stack.issue("user_billing_db", &["billing"]);
    let revoked = stack.issue("user_revoked_key", &[]);
    stack.admin("DELETE", &format!("/v1/keys/{}", revoked.id), None);
    let good_jwt = token(JWT_KID, "user_jwt", "parity-good", now, 60, 3600);
    let gone_jwt = token(JWT_KID, "user_gone", "parity-gone", now, 60, 3600);
    let jti_jwt = token(JWT_KID, "user_jwt", "parity-revoked", now, 60, 3600);
    stack.admin("POST", "/v1/users/user_gone/revoke-tokens", None);
    stack.admin(
        "POST",
        "/v1/tokens/revoke",
        Some(json!({"jti": "parity-revoked", "expires_at": now + 3600})),
    );
    let key = |k: &str| ("x-api-key", k.to_string());
    let auth = |t: &str| ("authorization", format!("Bearer {t}"));
    for (path, header, status) in [
        ("/v1/things", key(&plain.api_key), 200),
        ("/v1/billing/invoices", key(&billing.api_key), 200),
        ("/v1/things", key(&revoked.api_key), 401),
        ("/v1/things", auth(&gone_jwt), 401),
        ("/v1/things", auth(&jti_jwt), 401),
    ] {
        stack.until_plugin_answers(&request("GET", path, vec![header]), status);
    }

    let expired_jwt = token(JWT_KID, "user_jwt", "parity-old", now, 7200, 3600);
    let other_kid = token("not-our-kid", "user_jwt", "parity-kid", now, 60, 3600);
    // Another signature, still canonical base64url: `A` and `Q` leave the unused low
    // bits of a last character zero (`B` after an `A` would be malformed, not forged).
    let mut forged = good_jwt.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'Q' } else { 'A' });
    let unknown = gatehouse_core::authn::api_key::format_key("ghk", "0123456789abcdefABCDEF");
    let in_query = format!("/v1/things?api_key={}", plain.api_key);
    let preflight = |origin: &str| {
        vec![
            ("origin", origin.to_string()),
            ("access-control-request-method", "GET".to_string()),
        ]
    };
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        row("anonymous, internal route", ("GET", "/v1/things"), vec![], 401, Some("MISSING_CREDENTIALS")),
        row("anonymous, external route", ("GET", "/healthz"), vec![], 200, None),
        row("anonymous, HEAD on a GET route", ("HEAD", "/healthz"), vec![], 200, None),
        row("anonymous with forged identity headers", ("GET", "/healthz"), vec![("x-gatehouse-user", "admin".into()), ("x-gatehouse-email", "a@b.c".into())], 200, None),
        row("anonymous, external prefix", ("GET", "/docs/intro"), vec![], 200, None),
        row("anonymous, route with a limit", ("POST", "/login"), vec![], 200, None),
        row("method the route does not take", ("POST", "/healthz"), vec![], 404, Some("NOT_FOUND")),
        row("unknown route", ("GET", "/nowhere"), vec![], 404, Some("NOT_FOUND")),
        row("root", ("GET", "/"), vec![], 404, Some("NOT_FOUND")),
        row("database key", ("GET", "/v1/things"), vec![key(&plain.api_key)], 200, None),
        row("database key, query string", ("GET", "/v1/things?page=2&sort=name"), vec![key(&plain.api_key)], 200, None),
        row("database key, billing route", ("GET", "/v1/billing/invoices"), vec![key(&plain.api_key)], 200, None),
        row("database key, admin route", ("GET", "/admin/users"), vec![key(&plain.api_key)], 200, None),
        row("database key with forged identity", ("GET", "/v1/things"), vec![key(&plain.api_key), ("x-gatehouse-user", "admin".into()), ("x-gatehouse-issuer", "corp".into()), ("x-gatehouse-role", "root".into())], 200, None),
        row("scoped database key, in scope", ("GET", "/v1/billing/invoices"), vec![key(&billing.api_key)], 200, None),
        row("scoped database key, out of scope", ("GET", "/v1/things"), vec![key(&billing.api_key)], 403, Some("FORBIDDEN")),
        row("scoped database key, admin route", ("GET", "/admin/users"), vec![key(&billing.api_key)], 403, Some("FORBIDDEN")),
        row("scoped database key, external route", ("GET", "/healthz"), vec![key(&billing.api_key)], 403, Some("FORBIDDEN")),
        row("revoked database key", ("GET", "/v1/things"), vec![key(&revoked.api_key)], 401, Some("REVOKED_KEY")),
        row("unknown key", ("GET", "/v1/things"), vec![key(&unknown)], 401, Some("UNKNOWN_KEY")),
        row("unknown key, external route", ("GET", "/healthz"), vec![key(&unknown)], 401, Some("UNKNOWN_KEY")),
        row("malformed key", ("GET", "/v1/things"), vec![key("ghk_short")], 401, Some("MALFORMED_CREDENTIALS")),
        row("policy key", ("GET", "/v1/things"), vec![key(STATIC_DEMO)], 200, None),
        row("scoped policy key, in scope", ("GET", "/v1/billing/x"), vec![key(STATIC_BILLING)], 200, None),
        row("scoped policy key, out of scope", ("GET", "/v1/things"), vec![key(STATIC_BILLING)], 403, Some("FORBIDDEN")),
        row("revoked policy key", ("GET", "/v1/things"), vec![key(STATIC_REVOKED)], 401, Some("REVOKED_KEY")),
        row("expired policy key", ("GET", "/v1/things"), vec![key(STATIC_EXPIRED)], 401, Some("EXPIRED_CREDENTIALS")),
        row("JWT", ("GET", "/v1/things"), vec![auth(&good_jwt)], 200, None),
        row("JWT, billing route (tokens are not scoped)", ("GET", "/v1/billing/invoices"), vec![auth(&good_jwt)], 200, None),
        row("JWT of a revoked user", ("GET", "/v1/things"), vec![auth(&gone_jwt)], 401, Some("REVOKED_TOKEN")),
        row("JWT with a revoked jti", ("GET", "/v1/things"), vec![auth(&jti_jwt)], 401, Some("REVOKED_TOKEN")),
        row("expired JWT", ("GET", "/v1/things"), vec![auth(&expired_jwt)], 401, Some("EXPIRED_CREDENTIALS")),
        row("JWT of another kid", ("GET", "/v1/things"), vec![auth(&other_kid)], 401, Some("INVALID_CREDENTIALS")),
        row("forged JWT signature", ("GET", "/v1/things"), vec![auth(&forged)], 401, Some("INVALID_CREDENTIALS")),
        row("bearer that is no JWT", ("GET", "/v1/things"), vec![auth("abc")], 401, Some("MALFORMED_CREDENTIALS")),
        row("another scheme is no credential", ("GET", "/v1/things"), vec![("authorization", "Basic dXNlcjpwYXNz".into())], 401, Some("MISSING_CREDENTIALS")),
        row("a key and a JWT", ("GET", "/v1/things"), vec![key(&plain.api_key), auth(&good_jwt)], 401, Some("MALFORMED_CREDENTIALS")),
        row("the key header twice", ("GET", "/v1/things"), vec![key(&plain.api_key), key(STATIC_DEMO)], 401, Some("MALFORMED_CREDENTIALS")),
        row("a key in the query", ("GET", &in_query), vec![], 401, Some("MALFORMED_CREDENTIALS")),
        row("servlet path parameter", ("GET", "/admin;x/users"), vec![key(&plain.api_key)], 400, Some("BAD_REQUEST")),
        row("path parameter on an internal route", ("GET", "/v1/things;jsessionid=1"), vec![key(&plain.api_key)], 400, Some("BAD_REQUEST")),
        row("dot segments", ("GET", "/docs/../admin/users"), vec![], 400, Some("BAD_REQUEST")),
        row("escaped dot segments", ("GET", "/docs/%2e%2e/admin/users"), vec![], 400, Some("BAD_REQUEST")),
        row("case that changes the route", ("GET", "/V1/things"), vec![key(&plain.api_key)], 400, Some("BAD_REQUEST")),
        row("method override to another route", ("GET", "/healthz"), vec![("x-http-method-override", "DELETE".into())], 400, Some("BAD_REQUEST")),
        row("_method to another route", ("GET", "/healthz?_method=POST"), vec![], 400, Some("BAD_REQUEST")),
        row("CORS preflight, allowed origin", ("OPTIONS", "/v1/things"), preflight("https://app.example.com"), 204, None),
        row("CORS preflight, other origin", ("OPTIONS", "/v1/things"), preflight("https://evil.example.com"), 403, Some("CORS_REJECTED")),
        row("OPTIONS that is no preflight", ("OPTIONS", "/v1/things"), vec![key(&plain.api_key)], 200, None),
    ];

    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for r in table {
        let plugin = stack.plugin.send(&r.request).unwrap();
        let authz = stack.authz.send(&r.request).unwrap();
        let (pc, ac) = (code_of(&plugin), code_of(&authz));
        lines.push(format!(
            "{:<45} plugin {} {:<22} ext_authz {} {}",
            r.what,
            plugin.status,
            pc.as_deref().unwrap_or("-"),
            authz.status,
            ac.as_deref().unwrap_or("-")
        ));
        let mut wrong = Vec::new();
        for (side, answer, code) in [("plugin", &plugin, &pc), ("ext_authz", &authz, &ac)] {
            if answer.status != r.status || code.as_deref() != r.code {
                wrong.push(format!(
                    "{side} answered {} {:?}, the table says {} {:?}: {}",
                    answer.status,
                    code,
                    r.status,
                    r.code,
                    String::from_utf8_lossy(&answer.body)
                ));
            }
        }
        if plugin.status == 200 && upstream_identity(&plugin) != upstream_identity(&authz) {
            wrong.push(format!(
                "the upstream got {:?} through the plugin and {:?} through ext_authz",
                upstream_identity(&plugin),
                upstream_identity(&authz)
            ));
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}", r.what, wrong.join("; ")));
        }
    }
    println!("{}", lines.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n"),
        stack.diagnostics()
    );
}
