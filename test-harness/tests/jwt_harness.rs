//! JWT behaviour that needs the harness's virtual clock or its view of what the upstream
//! received: the RFC 7515 A.1 example token, and `hide_credentials`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{Harness, Request};
use serde_json::json;
use std::time::Duration;

/// RFC 7515 Appendix A.1: the HS256 example, its key (JWK `k`, base64url) and its `exp`.
const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const A1_K: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const A1_EXP: u64 = 1_300_819_380;

#[test]
fn the_rfc7515_a1_token_verifies_with_its_published_key_until_exp() {
    // The example has no `sub`: the user is its `iss` ("joe").
    let policy = json!({
        "version": 1,
        "jwt": {
            "keys": [ { "alg": "HS256", "secret_env": "RFC7515_A1_K", "encoding": "base64url" } ],
            "claims": { "user": "iss" },
            "default_tenant": "rfc",
            "default_plan": "free",
            // The example has no `iat`, so no lifetime bound can hold it.
            "max_token_lifetime": "unbounded"
        },
        "routes": [ { "match": { "path_prefix": "/" } } ]
    });
    let build = |policy: &serde_json::Value| {
        Harness::builder(default_wasm())
            .plugin_config(policy.to_string())
            .env("RFC7515_A1_K", A1_K)
            .time((A1_EXP - 3600) * 1_000_000_000)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let send = |h: &mut Harness| {
        h.request(Request::get("/").header("authorization", format!("Bearer {A1_TOKEN}")))
            .unwrap()
    };
    // Under the default 24 h bound a token without `iat` is refused.
    let mut bounded = policy.clone();
    bounded["jwt"]
        .as_object_mut()
        .unwrap()
        .remove("max_token_lifetime");
    let out = send(&mut build(&bounded));
    assert_eq!(out.status, 401);
    assert_eq!(out.json()["code"], "INVALID_CREDENTIALS");
    let mut h = build(&policy);
    let out = send(&mut h);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(
        out.upstream.unwrap().header("x-gatehouse-user"),
        Some("joe")
    );

    // Past exp plus the 60 s leeway: expired.
    h.advance(Duration::from_secs(3600 + 60)).unwrap();
    let out = send(&mut h);
    assert_eq!(out.status, 401);
    assert_eq!(out.json()["code"], "EXPIRED_CREDENTIALS");
}

#[test]
fn hide_credentials_keeps_the_key_and_the_token_from_the_upstream() {
    use base64::Engine as _;
    use gatehouse_core::authn::jwt::Alg;
    use gatehouse_core::authn::jwt::test_tokens::{Signer, sign, signing_input};
    let secret = "gatehouse-test-secret-0123456789abcdef-xyz";
    // HS256 with the example policy's kid, issued at the harness clock for an hour.
    let input = signing_input(
        r#"{"alg":"HS256","typ":"JWT","kid":"demo-hs256"}"#,
        r#"{"sub":"user_jwt","plan":"team","iat":1767225540,"exp":1767229200}"#,
    );
    let sig = sign(
        Alg::HS256,
        &Signer::Hmac(secret.as_bytes().to_vec()),
        input.as_bytes(),
    );
    let token = format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    );
    let key = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example.yaml"),
    )
    .unwrap();
    for hide in [false, true] {
        let yaml = source.replace(
            "hide_credentials: false",
            &format!("hide_credentials: {hide}"),
        );
        let loaded = gatehouse_core::policy::load_yaml("example.yaml", &yaml).unwrap();
        assert_eq!(loaded.policy.hide_credentials, hide);
        let mut h = Harness::builder(default_wasm())
            .plugin_config(loaded.plugin_config_json)
            .env("GATEHOUSE_JWT_SECRET", secret)
            .time(1_767_225_600_000_000_000)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let out = h
            .request(Request::get("/v1/things").header("x-api-key", key))
            .unwrap();
        assert_eq!(out.status, 200);
        let up = out.upstream.unwrap();
        assert_eq!(up.header("x-api-key").is_some(), !hide, "hide={hide}");
        assert_eq!(up.header("x-gatehouse-user"), Some("user_demo"));

        let out = h
            .request(Request::get("/v1/things").header("authorization", format!("Bearer {token}")))
            .unwrap();
        assert_eq!(out.status, 200);
        let up = out.upstream.unwrap();
        assert_eq!(up.header("authorization").is_some(), !hide, "hide={hide}");
        assert_eq!(up.header("x-gatehouse-user"), Some("user_jwt"));
    }
}
