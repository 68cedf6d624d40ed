//! Shared by the webhook and body-limit suites (harness and Envoy): the policy
//! (`policies/webhooks.yaml`), its fixture secrets, and each provider's signature computed
//! here with `hmac`/`sha2` directly, as the provider would, never with the plugin's code.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_harness::envoy::workspace_root;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

/// 2026-01-01T00:00:00Z: the harness clock in these suites.
pub const T0: u64 = 1_767_225_600;
pub const T0_NANOS: u64 = T0 * 1_000_000_000;

pub const STRIPE_SECRET: &str = "whsec_test_gatehouse_stripe_0123456789";
pub const STRIPE_PREVIOUS_SECRET: &str = "whsec_test_gatehouse_stripe_previous_01";
/// Slack's documented example secret.
pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
/// GitHub's documented example secret.
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";
pub const ACME_SECRET: &str = "acme-test-secret-0123456789abcdef";
pub const SHOP_SECRET: &str = "shop-test-secret-0123456789abcdef";
/// Not the secret of any route.
pub const WRONG_SECRET: &str = "an-attackers-guess-0123456789abc";

/// The environment the policy's `secrets_env` name.
pub fn env() -> Vec<(String, String)> {
    [
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
        ("STRIPE_WEBHOOK_SECRET_PREVIOUS", STRIPE_PREVIOUS_SECRET),
        ("SLACK_SIGNING_SECRET", SLACK_SECRET),
        ("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET),
        ("ACME_WEBHOOK_SECRET", ACME_SECRET),
        ("SHOP_WEBHOOK_SECRET", SHOP_SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `policies/webhooks.yaml` as the plugin configuration.
pub fn policy_json() -> String {
    let path = workspace_root().join("policies/webhooks.yaml");
    let source = std::fs::read_to_string(&path).unwrap();
    gatehouse_core::policy::load_yaml("webhooks.yaml", &source)
        .unwrap_or_else(|e| panic!("webhooks.yaml does not load:\n{e}"))
        .plugin_config_json
}

fn hmac256(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn hmac512(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    use ::base64::Engine as _;
    ::base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `Stripe-Signature` for `body` at `ts`, one `v1` per secret.
pub fn stripe(secrets: &[&str], ts: u64, body: &[u8]) -> String {
    let t = ts.to_string();
    let mut header = format!("t={t}");
    for s in secrets {
        header.push_str(&format!(
            ",v1={}",
            hex(&hmac256(s, &[t.as_bytes(), b".", body]))
        ));
    }
    header
}

/// (`X-Slack-Signature`, `X-Slack-Request-Timestamp`).
pub fn slack(secret: &str, ts: u64, body: &[u8]) -> (String, String) {
    let t = ts.to_string();
    let sig = hmac256(secret, &[b"v0:", t.as_bytes(), b":", body]);
    (format!("v0={}", hex(&sig)), t)
}

/// `X-Hub-Signature-256`.
pub fn github(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac256(secret, &[body])))
}

/// (`X-Acme-Signature`, `X-Acme-Timestamp`): SHA-512, base64, over `<ts>.<body>`.
pub fn acme(secret: &str, ts: u64, body: &[u8]) -> (String, String) {
    let t = ts.to_string();
    let sig = hmac512(secret, &[t.as_bytes(), b".", body]);
    (format!("sha512={}", base64(&sig)), t)
}

/// `X-Shop-Hmac-Sha256`: base64 SHA-256 of the body.
pub fn shop(secret: &str, body: &[u8]) -> String {
    base64(&hmac256(secret, &[body]))
}

/// A provider's signed request: (path, headers) for `body` signed at `ts` with `secret`.
pub fn signed(
    provider: &str,
    secret: &str,
    ts: u64,
    body: &[u8],
) -> (String, Vec<(String, String)>) {
    let h = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<Vec<_>>()
    };
    let headers = match provider {
        "stripe" => h(&[("stripe-signature", stripe(&[secret], ts, body))]),
        "slack" => {
            let (sig, t) = slack(secret, ts, body);
            h(&[("x-slack-signature", sig), ("x-slack-request-timestamp", t)])
        }
        "github" => h(&[("x-hub-signature-256", github(secret, body))]),
        "acme" => {
            let (sig, t) = acme(secret, ts, body);
            h(&[("x-acme-signature", sig), ("x-acme-timestamp", t)])
        }
        "shop" => h(&[("x-shop-hmac-sha256", shop(secret, body))]),
        other => panic!("no provider {other}"),
    };
    (format!("/webhooks/{provider}"), headers)
}

/// Every provider route with its secret, and whether its signature carries a timestamp.
pub const PROVIDERS: [(&str, &str, bool); 5] = [
    ("stripe", STRIPE_SECRET, true),
    ("slack", SLACK_SECRET, true),
    ("github", GITHUB_SECRET, false),
    ("acme", ACME_SECRET, true),
    ("shop", SHOP_SECRET, false),
];

/// A JSON event body of about `len` bytes, with text that must arrive byte for byte.
pub fn event_body(len: usize) -> Vec<u8> {
    let mut body = br#"{"id":"evt_0001","type":"invoice.paid","data":"caf\u00e9 "#.to_vec();
    while body.len() + 2 < len {
        body.push(b'a' + (body.len() % 26) as u8);
    }
    body.extend_from_slice(b"\"}");
    body
}
