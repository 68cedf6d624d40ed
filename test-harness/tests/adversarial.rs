//! The adversarial suite, in the harness: the attacks a case file cannot write down
//! (`policies/adversarial.cases.yaml` has the rest), against `policies/adversarial.yaml`.
//!
//! - invalid UTF-8 bytes in the credential headers, the request id and the path;
//! - a 1 MB bearer token and a 1 MB API key (a real Envoy refuses such a header itself,
//!   `adversarial_envoy_e2e.rs`; the module must still refuse one that gets through);
//! - a webhook body arriving in many tiny chunks, past the route's limit;
//! - 10,000 distinct invalid keys: every one refused in the standard shape, a valid key
//!   still served after, and shared data (key cache, limiter table) exactly as it was.
//!
//! Each refusal is the standard JSON body with exactly its four fields, the upstream is
//! never reached, and the module never traps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::api_key::format_key;
use gatehouse_harness::envoy::{default_wasm, workspace_root};
use gatehouse_harness::host::{Harness, Outcome, Request};

const DEMO_KEY: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
const JWT_SECRET: &str = "adversarial-test-secret-0123456789abcdef";

fn harness() -> Harness {
    let src = std::fs::read_to_string(workspace_root().join("policies/adversarial.yaml")).unwrap();
    let policy = gatehouse_core::policy::load_yaml("adversarial.yaml", &src).unwrap();
    Harness::builder(default_wasm())
        .plugin_config(policy.plugin_config_json)
        .env("ADV_JWT_SECRET", JWT_SECRET)
        .env("GITHUB_WEBHOOK_SECRET", "It's a Secret to Everybody")
        .allow_on_headers_stop_iteration(true)
        // 2026-01-01T00:00:00Z
        .time(1_767_225_600_000_000_000)
        .build()
        .unwrap_or_else(|e| panic!("the host could not start gatehouse: {e}"))
}

/// The standard refusal: status, code, exactly the four fields, JSON content type, and
/// the upstream never reached.
fn assert_refused(out: &Outcome, status: u16, code: &str, what: &str) -> serde_json::Value {
    assert_eq!(out.status, status, "{what}: {}", out.text());
    assert!(out.upstream.is_none(), "{what}: reached the upstream");
    assert_eq!(
        out.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let body = out.json();
    let fields = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {}", out.text()));
    assert_eq!(fields.len(), 4, "{what}: {body}");
    for f in ["error", "code", "timestamp", "request_id"] {
        assert!(fields[f].is_string(), "{what}: {f} in {body}");
    }
    assert_eq!(body["code"], code, "{what}: {body}");
    body
}

#[test]
fn invalid_utf8_in_credentials_request_id_and_path_is_refused_in_the_standard_shape() {
    let mut h = harness();
    let bad_key: &[u8] = b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4h\xff\xfe";
    let out = h
        .request(
            Request::get("/v1/things")
                .header("x-api-key", bad_key)
                .header("x-request-id", b"req-\xc3\x28".as_slice()),
        )
        .unwrap();
    let body = assert_refused(&out, 401, "MALFORMED_CREDENTIALS", "key");
    assert_eq!(body["request_id"], "invalid", "an id that is not UTF-8");

    let out = h
        .request(
            Request::get("/v1/things").header("authorization", b"Bearer \xe2\x82.x.y".as_slice()),
        )
        .unwrap();
    assert_refused(&out, 401, "MALFORMED_CREDENTIALS", "bearer");

    // A path byte outside visible ASCII is refused before matching, on any route.
    // `Request` holds its path as text, so the bytes go in a second `:path` entry, which
    // the module reads last (the map is read in order, the last value kept).
    for path in [&b"/public/\xff"[..], b"/admin/\xc3\xa9", b"/v1/\x00things"] {
        let out = h
            .request(Request::new("GET", "/").header(":path", path))
            .unwrap();
        assert_refused(&out, 400, "BAD_REQUEST", &String::from_utf8_lossy(path));
    }
    h.assert_no_trap().unwrap();
    // And the module still serves.
    let out = h
        .request(Request::get("/v1/things").header("x-api-key", DEMO_KEY))
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
}

#[test]
fn a_one_megabyte_token_or_key_is_refused_before_it_is_parsed() {
    let mut h = harness();
    let token = format!("Bearer {}", "eyJhbGciOiJIUzI1NiJ9.".repeat(1 << 20 >> 5));
    assert!(token.len() > 600_000);
    let out = h
        .request(Request::get("/v1/things").header("authorization", token.as_str()))
        .unwrap();
    assert_refused(&out, 401, "MALFORMED_CREDENTIALS", "1 MB token");
    let key = format!("ghk_{}", "A".repeat(1 << 20));
    let out = h
        .request(Request::get("/public/x").header("x-api-key", key.as_str()))
        .unwrap();
    assert_refused(&out, 401, "MALFORMED_CREDENTIALS", "1 MB key");
    h.assert_no_trap().unwrap();
}

#[test]
fn a_webhook_body_in_tiny_chunks_is_refused_once_past_the_route_limit() {
    let mut h = harness();
    // 64 KB on the route; 80 KB arrive 16 bytes at a time (5,120 body callbacks).
    let body = vec![b'a'; 80 * 1024];
    let out = h
        .request(
            Request::post("/webhooks/github")
                .header(
                    "x-hub-signature-256",
                    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
                )
                .body(body)
                .chunked(16),
        )
        .unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE", "80 KB in 16-byte chunks");
    h.assert_no_trap().unwrap();
}

/// Every shared-data entry and its value: the key cache, the limiter's slots, the
/// revocations, the replay cache.
fn shared_data(h: &Harness) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = h
        .shared_data_keys("")
        .into_iter()
        .map(|k| {
            let v = h.shared_data(&k).map(|(v, _)| v).unwrap_or_default();
            (k, v)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn ten_thousand_distinct_invalid_keys_are_refused_and_leave_shared_data_as_it_was() {
    let mut h = harness();
    // Warm up: the demo key's record and its plan's limiter slot exist before.
    let out = h
        .request(Request::get("/v1/things").header("x-api-key", DEMO_KEY))
        .unwrap();
    assert_eq!(out.status, 200);
    let before = shared_data(&h);
    let bytes_before: usize = before.iter().map(|(k, v)| k.len() + v.len()).sum();
    for n in 0..10_000u32 {
        // Half in the issued format (looked up, unknown), half malformed (refused on the
        // checksum, never looked up).
        let key = if n % 2 == 0 {
            format_key("ghk", &format!("{n:0>22}"))
        } else {
            format!("ghk_{n:0>22}zzzzzz")
        };
        let out = h
            .request(
                Request::get("/v1/things")
                    .header("x-api-key", key.as_str())
                    .source(&format!("10.9.{}.{}:4000", n >> 8, n & 255)),
            )
            .unwrap();
        let code = if n % 2 == 0 {
            "INVALID_CREDENTIALS"
        } else {
            "MALFORMED_CREDENTIALS"
        };
        assert_refused(&out, 401, code, &key);
    }
    h.assert_no_trap().unwrap();
    let after = shared_data(&h);
    let bytes_after: usize = after.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(
        after.len(),
        before.len(),
        "shared data gained entries from refused keys"
    );
    assert_eq!(bytes_after, bytes_before, "shared data grew");
    assert!(before == after, "a refused key changed shared data");
    let out = h
        .request(Request::get("/v1/things").header("x-api-key", DEMO_KEY))
        .unwrap();
    assert_eq!(
        out.status,
        200,
        "the valid key after the flood: {}",
        out.text()
    );
}
