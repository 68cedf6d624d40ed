//! The wasmtime host loads the real gatehouse module: every import it makes is either
//! implemented or linked as a trap, start-up runs, and a request completes or is refused
//! without a trap. Build the module first:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip1 -p gatehouse
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_harness::host::{BuildError, Harness, Request};
use std::path::PathBuf;

fn gatehouse_wasm() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/wasm32-wasip1/release/gatehouse.wasm");
    assert!(
        path.exists(),
        "{} is missing; build the plugin first:\n  cargo build --release --target wasm32-wasip1 -p gatehouse",
        path.display()
    );
    path
}

fn example_policy_json() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/example.yaml");
    let src = std::fs::read_to_string(&path).unwrap();
    gatehouse_core::policy::load_yaml("example.yaml", &src)
        .unwrap()
        .plugin_config_json
}

fn example() -> Harness {
    Harness::builder(gatehouse_wasm())
        .plugin_config(example_policy_json())
        .env(
            "GATEHOUSE_JWT_SECRET",
            "gatehouse-test-secret-0123456789abcdef-xyz",
        )
        // 2026-01-01T00:00:00Z
        .time(1_767_225_600_000_000_000)
        .build()
        .unwrap_or_else(|e| panic!("the host could not start gatehouse: {e}"))
}

const DEMO: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";

#[test]
fn gatehouse_module_loads_and_answers_a_request_without_trapping() {
    let mut h = example();
    let out = h
        .request(Request::get("/v1/things"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 401);
    assert!(out.local_response);
    assert!(out.upstream.is_none());
}

#[test]
fn invalid_utf8_in_the_key_and_identity_headers_is_refused_not_trapped() {
    let mut h = example();
    let out = h
        .request(Request::get("/v1/things").header("x-api-key", b"\xff\xfe".as_slice()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 401);
    assert_eq!(out.json()["code"], "MALFORMED_CREDENTIALS");
    // A spoofed identity header that is not UTF-8 is stripped like any other.
    let out = h
        .request(
            Request::get("/v1/things")
                .header("x-api-key", DEMO)
                .header("x-gatehouse-user", b"\xc3\x28".as_slice())
                .header("x-gatehouse-role", "admin"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 200);
    let up = out.upstream.expect("reached the upstream");
    assert_eq!(up.header("x-gatehouse-user"), Some("user_demo"));
    assert_eq!(up.header("x-gatehouse-role"), None);
}

#[test]
fn a_key_sent_twice_is_refused() {
    let mut h = example();
    let out = h
        .request(
            Request::get("/v1/things")
                .header("x-api-key", DEMO)
                .header("x-api-key", DEMO),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 401);
    assert!(out.upstream.is_none());
}

#[test]
fn static_keys_are_in_shared_data_only_as_hashes() {
    let h = example();
    let hash = gatehouse_core::authn::api_key::KeyHash::of_key(DEMO.as_bytes());
    let (record, _cas) = h
        .shared_data(&hash.policy_cache_key())
        .expect("the demo key is cached");
    let (stored, decoded) =
        gatehouse_core::authn::api_key::KeyRecord::decode(&record).expect("a key record");
    assert_eq!(stored, hash);
    assert_eq!(
        (decoded.key_id.as_str(), decoded.user.as_str()),
        ("key_demo", "user_demo")
    );
    assert!(
        !record.windows(DEMO.len()).any(|w| w == DEMO.as_bytes()),
        "the key itself is not in its record"
    );
}

#[test]
fn a_path_not_in_normal_form_is_a_400_before_routing() {
    let mut h = example();
    let out = h
        .request(Request::get("/docs/..%2fv1/things"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 400);
    assert_eq!(out.json()["code"], "BAD_REQUEST");
}

#[test]
fn malformed_policy_is_refused_at_configure_not_trapped() {
    let err = Harness::builder(gatehouse_wasm())
        .plugin_config("not json")
        .build()
        .err()
        .expect("a malformed policy must be refused");
    assert!(matches!(err, BuildError::ConfigureRejected { .. }), "{err}");
}
