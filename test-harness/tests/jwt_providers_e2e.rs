//! JWT providers grouped by issuer, in the harness and in a real Envoy with the same
//! policy and the same requests: a token is verified only with the keys of the provider
//! its `iss` names, the upstream learns the provider (`x-gatehouse-issuer`), equal `sub`
//! values of two issuers have a rate limit each, and a policy whose JWKS does not say its
//! audiences never loads (in the checker, the harness and Envoy).

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
use gatehouse_harness::host::{BuildError, Harness, Request};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

const CORP: &str = "https://corp.test";
const PARTNER: &str = "https://partner.test";
const SECRET_ENV: &str = "CORP_JWT_SECRET";

/// `corp`: an HMAC key from the environment; `partner`: the RFC ES256 key in a JWKS. Each
/// user may call twice a minute.
fn policy(partner_audiences: Option<Value>) -> String {
    let mut partner = json!({
        "name": "partner",
        "issuers": [PARTNER],
        "jwks": { "keys": [ serde_json::from_str::<Value>(&public_jwk(Alg::ES256, Some("p-es256"))).unwrap() ] },
        "default_tenant": "t1",
        "default_plan": "tiny"
    });
    if let Some(a) = partner_audiences {
        partner["audiences"] = a;
    }
    json!({
        "version": 1,
        "plans": { "tiny": { "requests_per_minute": 2 } },
        "jwt": { "providers": [
            {
                "name": "corp",
                "issuers": [CORP],
                "audiences": ["api"],
                "keys": [ { "kid": "c-hs256", "alg": "HS256", "secret_env": SECRET_ENV } ],
                "default_tenant": "t1",
                "default_plan": "tiny"
            },
            partner
        ] },
        "routes": [ { "match": { "path_prefix": "/v1/" } } ]
    })
    .to_string()
}

fn env() -> Vec<(String, String)> {
    vec![(
        SECRET_ENV.into(),
        String::from_utf8(hmac_secret(Alg::HS256)).unwrap(),
    )]
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

fn claims(sub: &str, iss: Option<&str>) -> String {
    let now = now();
    let mut c = json!({ "sub": sub, "aud": "api", "iat": now - 60, "exp": now + 3600 });
    if let Some(iss) = iss {
        c["iss"] = json!(iss);
    }
    c.to_string()
}

/// The corp provider's HMAC key signing `payload` (any `iss`).
fn corp_token(payload: &str) -> String {
    let header = r#"{"alg":"HS256","typ":"JWT","kid":"c-hs256"}"#;
    let input = signing_input(header, payload);
    let sig = sign(
        Alg::HS256,
        &Signer::Hmac(hmac_secret(Alg::HS256)),
        input.as_bytes(),
    );
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
    format!("{input}.{sig}")
}

/// The partner provider's ES256 key signing `payload` (any `iss`).
fn partner_token(payload: &str) -> String {
    mint(Alg::ES256, Some("p-es256"), payload)
}

/// (name, token, status, code or the provider the upstream must see)
fn cases() -> Vec<(&'static str, String, u16, &'static str)> {
    vec![
        (
            "corp's token",
            corp_token(&claims("alice", Some(CORP))),
            200,
            "corp",
        ),
        (
            "partner's token",
            partner_token(&claims("alice", Some(PARTNER))),
            200,
            "partner",
        ),
        (
            "corp's key signing for the partner issuer",
            corp_token(&claims("mallory", Some(PARTNER))),
            401,
            "INVALID_CREDENTIALS",
        ),
        (
            "partner's key signing for the corp issuer",
            partner_token(&claims("mallory", Some(CORP))),
            401,
            "INVALID_CREDENTIALS",
        ),
        (
            "an issuer no provider lists",
            corp_token(&claims("mallory", Some("https://evil.test"))),
            401,
            "INVALID_CREDENTIALS",
        ),
        (
            "no iss at all",
            corp_token(&claims("mallory", None)),
            401,
            "INVALID_CREDENTIALS",
        ),
        // Twice a minute per user: corp's alice has had one, partner's alice one.
        (
            "corp's alice again",
            corp_token(&claims("alice", Some(CORP))),
            200,
            "corp",
        ),
        (
            "corp's alice a third time",
            corp_token(&claims("alice", Some(CORP))),
            429,
            "RATE_LIMITED",
        ),
        (
            "partner's alice again",
            partner_token(&claims("alice", Some(PARTNER))),
            200,
            "partner",
        ),
    ]
}

/// What came back: status, and the refusal's code or the upstream's issuer header.
fn check(
    backend: &str,
    name: &str,
    status: u16,
    want: &str,
    seen: (u16, Option<String>),
) -> Option<String> {
    let ok = seen.0 == status && seen.1.as_deref() == Some(want);
    (!ok).then(|| format!("[{backend}] {name}: got {seen:?}, expected ({status}, {want})"))
}

#[test]
fn providers_in_the_harness() {
    let mut builder = Harness::builder(default_wasm()).plugin_config(policy(Some(json!("any"))));
    for (k, v) in env() {
        builder = builder.env(&k, &v);
    }
    let mut h = builder
        .time(now() * 1_000_000_000)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    for (name, token, status, want) in cases() {
        let out = h
            .request(Request::get("/v1/x").header("authorization", format!("Bearer {token}")))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let seen = match out.upstream.as_ref() {
            Some(u) => (
                out.status,
                u.header("x-gatehouse-issuer").map(str::to_owned),
            ),
            None => (out.status, out.json()["code"].as_str().map(str::to_owned)),
        };
        failures.extend(check("harness", name, status, want, seen));
    }
    h.assert_no_trap().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn providers_in_envoy() {
    let envoy = Envoy::start(&EnvoyOptions {
        env: env(),
        ..EnvoyOptions::new(policy(Some(json!("any"))))
    })
    .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
    let mut failures = Vec::new();
    for (name, token, status, want) in cases() {
        let resp = envoy
            .send(&ClientRequest {
                method: "GET".into(),
                path: "/v1/x".into(),
                headers: vec![(
                    "authorization".into(),
                    format!("Bearer {token}").into_bytes(),
                )],
                body: Vec::new(),
            })
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let json: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let upstream = resp
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-echo-upstream"));
        let seen = if upstream {
            (
                resp.status,
                json["headers"]["x-gatehouse-issuer"]
                    .as_str()
                    .map(str::to_owned),
            )
        } else {
            (resp.status, json["code"].as_str().map(str::to_owned))
        };
        failures.extend(check("envoy", name, status, want, seen));
    }
    assert!(
        failures.is_empty(),
        "{}\n--- envoy log ---\n{}",
        failures.join("\n"),
        envoy.log_tail(30)
    );
}

/// A JWKS provider that does not say its audiences is refused wherever the policy
/// loads: by the checker (with file:line:col), by the module's on_configure in the
/// harness, and by Envoy, which does not start with it.
#[test]
fn a_jwks_without_audiences_never_loads() {
    let json = policy(None);
    let err = gatehouse_core::policy::Policy::from_json(json.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("jwt.providers[1]: missing required field 'audiences'"),
        "{err}"
    );
    let yaml = "version: 1\njwt:\n  jwks_url: { cluster: idp, path: /jwks }\n  issuers: [https://idp.test]\nroutes:\n  - match: { path_prefix: /v1/ }\n";
    let err = gatehouse_core::policy::load_yaml("shared-idp.yaml", yaml)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shared-idp.yaml:3:3: jwt: missing required field 'audiences'"),
        "{err}"
    );

    let mut builder = Harness::builder(default_wasm()).plugin_config(json.clone());
    for (k, v) in env() {
        builder = builder.env(&k, &v);
    }
    let refused = builder
        .build()
        .err()
        .expect("the module must refuse the policy");
    assert!(
        matches!(refused, BuildError::ConfigureRejected { .. }),
        "{refused}"
    );

    let err = match Envoy::start(&EnvoyOptions {
        env: env(),
        ..EnvoyOptions::new(json)
    }) {
        Ok(_) => panic!("Envoy started with a JWKS provider that names no audiences"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("missing required field 'audiences'"), "{err}");
}
