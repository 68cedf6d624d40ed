//! JWTs end to end, for every algorithm and every refusal, in the harness and in a real
//! Envoy with the same policy and the same requests. Tokens are signed in the test with
//! the published RFC 7515 / RFC 8037 keys (`gatehouse_core::authn::jwt::test_tokens`, feature
//! `test-tokens`), at the real current time so Envoy's clock accepts them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens::{
    Signer, hmac_secret, mint, public_jwk, sign, signing_input,
};
use gatehouse_harness::envoy::http1::ClientRequest;
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, default_wasm};
use gatehouse_harness::host::{Harness, Request};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

fn kid(alg: Alg) -> String {
    alg.as_str().to_ascii_lowercase()
}

fn env_name(alg: Alg) -> String {
    format!("JWT_SECRET_{}", alg.as_str())
}

/// A policy that accepts every algorithm: HMAC keys from the environment, the public keys
/// inline; an issuer, an audience, one revoked user and one revoked jti.
fn policy_json() -> String {
    let hmac: Vec<Value> = [Alg::HS256, Alg::HS384, Alg::HS512]
        .into_iter()
        .map(|a| json!({ "kid": kid(a), "alg": a.as_str(), "secret_env": env_name(a) }))
        .collect();
    let public: Vec<Value> = Alg::ALL
        .into_iter()
        .filter(|a| !a.as_str().starts_with("HS"))
        .map(|a| serde_json::from_str(&public_jwk(a, Some(&kid(a)))).unwrap())
        .collect();
    json!({
        "version": 1,
        "jwt": {
            "keys": hmac,
            "jwks": { "keys": public },
            "issuers": ["https://issuer.test"],
            "audiences": ["api"],
            "default_tenant": "t1",
            "forward_claims": { "email": "x-gatehouse-email" }
        },
        "revocations": {
            "users": [ { "user": "user_revoked", "tokens_issued_before": "2099-01-01T00:00:00Z" } ],
            "jtis": [ { "jti": "jti-revoked" } ]
        },
        "routes": [ { "match": { "path_prefix": "/v1/" } } ]
    })
    .to_string()
}

fn env() -> Vec<(String, String)> {
    [Alg::HS256, Alg::HS384, Alg::HS512]
        .into_iter()
        .map(|a| (env_name(a), String::from_utf8(hmac_secret(a)).unwrap()))
        .collect()
}

#[allow(
    clippy::disallowed_methods,
    reason = "tokens must be valid at Envoy's real clock"
)]
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, extra: Value) -> String {
    let now = now();
    let mut c = json!({
        "sub": sub, "iss": "https://issuer.test", "aud": "api", "plan": "team",
        "email": "e@example.com", "iat": now - 60, "exp": now + 3600
    });
    // A `null` in `extra` removes the claim.
    if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
        for (name, value) in extra {
            if value.is_null() {
                c.remove(&name);
            } else {
                c.insert(name, value);
            }
        }
    }
    c.to_string()
}

/// One request: a name, the Authorization value, and what must come back (status, code
/// or, for 200, the user the upstream must see).
struct Case {
    name: String,
    authorization: Option<String>,
    status: u16,
    expect: &'static str,
}

fn case(name: &str, authorization: Option<String>, status: u16, expect: &'static str) -> Case {
    Case {
        name: name.to_string(),
        authorization,
        status,
        expect,
    }
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

fn tamper(token: &str) -> String {
    // Change one character in the middle of the signature; stays valid base64url.
    let dot = token.rfind('.').unwrap();
    let mut bytes = token.as_bytes().to_vec();
    let i = dot + 1 + (bytes.len() - dot - 1) / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn confused_token() -> String {
    let input = signing_input(r#"{"alg":"HS256","kid":"rs256"}"#, &claims("u", json!({})));
    let secret = public_jwk(Alg::RS256, Some("rs256")).into_bytes();
    let sig = sign(Alg::HS256, &Signer::Hmac(secret), input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for alg in Alg::ALL {
        let sub = format!("user_{}", kid(alg));
        let token = mint(alg, Some(&kid(alg)), &claims(&sub, json!({})));
        out.push(case(
            &format!("{alg} verifies"),
            bearer(&token),
            200,
            "user",
        ));
        out.push(case(
            &format!("{alg} with a changed signature is refused"),
            bearer(&tamper(&token)),
            401,
            "INVALID_CREDENTIALS",
        ));
    }
    let now = now();
    let hs = |payload: String| mint(Alg::HS256, Some("hs256"), &payload);
    out.extend([
        case("no credential", None, 401, "MISSING_CREDENTIALS"),
        case(
            "expired",
            bearer(&hs(claims(
                "u",
                json!({ "iat": now - 7200, "exp": now - 3600 }),
            ))),
            401,
            "EXPIRED_CREDENTIALS",
        ),
        case(
            "not yet valid",
            bearer(&hs(claims("u", json!({ "nbf": now + 3600 })))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "wrong issuer",
            bearer(&hs(claims("u", json!({ "iss": "https://evil.test" })))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "wrong audience",
            bearer(&hs(claims("u", json!({ "aud": ["other"] })))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "unknown kid",
            bearer(&mint(Alg::HS256, Some("nope"), &claims("u", json!({})))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            // The RS256 key's public JWK used as an HMAC secret: the classic confusion attack.
            "HS256 token naming the RS256 key",
            bearer(&confused_token()),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "alg none",
            Some(format!(
                "Bearer {}.{}.",
                "eyJhbGciOiJub25lIn0", "eyJzdWIiOiJ1In0"
            )),
            401,
            "MALFORMED_CREDENTIALS",
        ),
        case(
            "not a JWS",
            Some("Bearer abc".to_string()),
            401,
            "MALFORMED_CREDENTIALS",
        ),
        case(
            "too large",
            bearer(&hs(claims("u", json!({ "pad": "x".repeat(9000) })))),
            401,
            "MALFORMED_CREDENTIALS",
        ),
        case(
            "unknown plan",
            bearer(&hs(claims("u", json!({ "plan": "gold" })))),
            403,
            "UNKNOWN_PLAN",
        ),
        case(
            "lives a second longer than max_token_lifetime (24 h)",
            bearer(&hs(claims(
                "u",
                json!({ "iat": now - 60, "exp": now - 60 + 86_401 }),
            ))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "exact max_token_lifetime (24 h) verifies",
            bearer(&hs(claims(
                "user_exact",
                json!({ "iat": now - 60, "exp": now - 60 + 86_400 }),
            ))),
            200,
            "user",
        ),
        case(
            "no iat while a lifetime bound is in force",
            bearer(&hs(claims("u", json!({ "iat": null })))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "a plan that is not an id",
            bearer(&hs(claims("u", json!({ "plan": ["team"] })))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "revoked user",
            bearer(&hs(claims("user_revoked", json!({})))),
            401,
            "INVALID_CREDENTIALS",
        ),
        case(
            "revoked jti",
            bearer(&hs(claims("u", json!({ "jti": "jti-revoked" })))),
            401,
            "INVALID_CREDENTIALS",
        ),
    ]);
    out
}

/// What came back, from either backend: status, body code, upstream's user and email.
struct Seen {
    status: u16,
    code: Option<String>,
    user: Option<String>,
    email: Option<String>,
    authenticate: Option<String>,
}

fn check(backend: &str, c: &Case, seen: &Seen) -> Result<(), String> {
    let fail = |what: String| Err(format!("[{backend}] {}: {what}", c.name));
    if seen.status != c.status {
        return fail(format!(
            "status {} (code {:?}), expected {}",
            seen.status, seen.code, c.status
        ));
    }
    if c.status == 200 {
        let sub = c.name.split(' ').next().unwrap().to_ascii_lowercase();
        if seen.user.as_deref() != Some(&format!("user_{sub}")) {
            return fail(format!("upstream user {:?}", seen.user));
        }
        if seen.email.as_deref() != Some("e@example.com") {
            return fail(format!("forwarded email {:?}", seen.email));
        }
    } else {
        if seen.code.as_deref() != Some(c.expect) {
            return fail(format!("code {:?}, expected {}", seen.code, c.expect));
        }
        let challenge = seen.authenticate.clone().unwrap_or_default();
        // A 403 refuses who the caller is, not how it proved it: no challenge.
        let wanted = match (c.status, c.authorization.is_some()) {
            (403, _) => "",
            (_, true) => "Bearer",
            (_, false) => "ApiKey",
        };
        if wanted.is_empty() && !challenge.is_empty() {
            return fail(format!("www-authenticate {challenge:?} on a {}", c.status));
        }
        if !challenge.starts_with(wanted) {
            return fail(format!("www-authenticate {challenge:?}, expected {wanted}"));
        }
    }
    Ok(())
}

fn upstream_header(body: &[u8], name: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["headers"][name].as_str().map(str::to_owned)
}

#[test]
fn every_algorithm_and_refusal_in_the_harness() {
    let mut builder = Harness::builder(default_wasm()).plugin_config(policy_json());
    for (k, v) in env() {
        builder = builder.env(&k, &v);
    }
    let mut h = builder.build().unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for c in cases() {
        let mut req = Request::get("/v1/things");
        if let Some(a) = &c.authorization {
            req = req.header("authorization", a);
        }
        let out = h
            .request(req)
            .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
        let upstream = out.upstream.as_ref();
        let seen = Seen {
            status: out.status,
            code: out.json()["code"].as_str().map(str::to_owned),
            user: upstream
                .and_then(|u| u.header("x-gatehouse-user"))
                .map(str::to_owned),
            email: upstream
                .and_then(|u| u.header("x-gatehouse-email"))
                .map(str::to_owned),
            authenticate: out.header("www-authenticate").map(str::to_owned),
        };
        if let Err(e) = check("harness", &c, &seen) {
            failures.push(e);
        }
    }
    h.assert_no_trap().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_algorithm_and_refusal_in_envoy() {
    let envoy = Envoy::start(&EnvoyOptions {
        env: env(),
        ..EnvoyOptions::new(policy_json())
    })
    .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
    let mut failures = Vec::new();
    for c in cases() {
        let mut headers = Vec::new();
        if let Some(a) = &c.authorization {
            headers.push(("authorization".to_string(), a.as_bytes().to_vec()));
        }
        let resp = envoy
            .send(&ClientRequest {
                method: "GET".into(),
                path: "/v1/things".into(),
                headers,
                body: Vec::new(),
            })
            .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let from_upstream = header("x-echo-upstream").is_some();
        let json: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let seen = Seen {
            status: resp.status,
            code: if from_upstream {
                None
            } else {
                json["code"].as_str().map(str::to_owned)
            },
            user: from_upstream
                .then(|| upstream_header(&resp.body, "x-gatehouse-user"))
                .flatten(),
            email: from_upstream
                .then(|| upstream_header(&resp.body, "x-gatehouse-email"))
                .flatten(),
            authenticate: header("www-authenticate"),
        };
        if let Err(e) = check("envoy", &c, &seen) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- envoy log ---\n{}",
        failures.join("\n"),
        envoy.log_tail(30)
    );
}
