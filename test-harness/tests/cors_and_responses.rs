//! CORS, security response headers and upstream error hygiene, in the harness (the
//! module as Envoy runs it, without Envoy), with `policies/cors.yaml`; plus the checker's
//! warning for a local origin in a production policy and the bootstrap's `server` header
//! setting. The same behaviour in a real Envoy: `cors_envoy_e2e.rs`.
//!
//! The upstream is the harness's echo; `x-echo-reply` makes it answer with a scripted
//! status, headers and body (in pieces when `chunk` is given) instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::echo_reply::{EchoReply, REPLY_HEADER};
use gatehouse_harness::envoy::config::Bootstrap;
use gatehouse_harness::envoy::{default_wasm, workspace_root};
use gatehouse_harness::host::{Harness, Outcome, Request};
use std::path::PathBuf;
use std::process::Command;

const DEMO_KEY: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
const APP: &str = "https://app.example.com";

fn policy_json(file: &str) -> String {
    let path = workspace_root().join("policies").join(file);
    let src = std::fs::read_to_string(&path).unwrap();
    gatehouse_core::policy::load_yaml(file, &src)
        .unwrap_or_else(|e| panic!("{e}"))
        .plugin_config_json
}

fn harness() -> Harness {
    Harness::builder(default_wasm())
        .plugin_config(policy_json("cors.yaml"))
        // 2026-01-01T00:00:00Z
        .time(1_767_225_600_000_000_000)
        .build()
        .unwrap_or_else(|e| panic!("the host could not start gatehouse: {e}"))
}

fn send(h: &mut Harness, req: Request) -> Outcome {
    h.request(req).unwrap_or_else(|e| panic!("{e:#}"))
}

fn preflight(path: &str, origin: &str, method: &str) -> Request {
    Request::new("OPTIONS", path)
        .header("origin", origin)
        .header("access-control-request-method", method)
}

/// A request whose upstream answers with `reply` instead of the echo.
fn replying(req: Request, reply: &EchoReply) -> Request {
    req.header(REPLY_HEADER, reply.to_header_value())
}

fn reply(status: u16, content_type: &str, body: &str) -> EchoReply {
    EchoReply {
        status,
        headers: vec![("content-type".into(), content_type.into())],
        body: body.as_bytes().to_vec(),
        chunk: None,
    }
}

const STACK_TRACE: &str = "Traceback (most recent call last):\n  File \"/srv/app/orders.py\", line 42, in list_orders\n    rows = db.execute(SQL, password=\"hunter2\")\nKeyError: 'customer_id'\n";

fn assert_standard_upstream_error(out: &Outcome, status: u16, request_id: &str) {
    assert_eq!(out.status, status, "{}", out.text());
    assert!(!out.local_response, "the reply came from the upstream");
    assert_eq!(out.header("content-type"), Some("application/json"));
    assert_eq!(out.header("content-length"), None);
    let body = out.json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["code", "error", "request_id", "timestamp"], "{body}");
    assert!(out.text().starts_with("{\"error\":"), "{}", out.text());
    assert_eq!(body["code"], "UPSTREAM_ERROR");
    assert_eq!(body["request_id"], request_id);
    for secret in ["Traceback", "hunter2", "orders.py", "KeyError"] {
        assert!(
            !out.text().contains(secret),
            "{secret} leaked: {}",
            out.text()
        );
    }
}

#[test]
fn an_allowed_preflight_is_answered_before_authentication_with_204() {
    let mut h = harness();
    let out = send(
        &mut h,
        preflight("/v1/orders/7", APP, "DELETE")
            .header("access-control-request-headers", "Content-Type, X-API-Key"),
    );
    assert_eq!(out.status, 204, "{}", out.text());
    assert!(out.local_response);
    assert!(out.upstream.is_none());
    assert!(out.body.is_empty());
    assert_eq!(out.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        out.header("access-control-allow-methods"),
        Some("GET, POST, DELETE")
    );
    assert_eq!(
        out.header("access-control-allow-headers"),
        Some("content-type, x-api-key, x-request-id")
    );
    assert_eq!(out.header("access-control-max-age"), Some("600"));
    assert_eq!(out.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(out.header("vary"), Some("Origin"));
}

#[test]
fn a_refused_preflight_is_403_cors_rejected_without_any_cors_header() {
    let mut h = harness();
    for req in [
        preflight("/v1/orders/7", "https://evil.example.com", "GET"),
        preflight("/v1/orders/7", "null", "GET"),
        preflight("/v1/orders/7", APP, "PUT"),
        preflight("/v1/orders/7", APP, "POST").header("access-control-request-headers", "x-debug"),
        preflight("/healthz", APP, "GET"),
        preflight("/nowhere", APP, "GET"),
    ] {
        let out = send(&mut h, req.header("x-request-id", "req-pf"));
        assert_eq!(out.status, 403, "{}", out.text());
        assert!(out.upstream.is_none());
        assert_eq!(out.json()["code"], "CORS_REJECTED");
        assert_eq!(out.json()["request_id"], "req-pf");
        assert_eq!(
            out.json()["error"],
            "this cross-origin request is not allowed"
        );
        for (name, _) in &out.headers {
            assert!(
                !name.starts_with("access-control-") && name != "vary",
                "{name} on a refused preflight"
            );
        }
    }
}

#[test]
fn an_options_request_that_is_not_a_preflight_takes_the_normal_path() {
    let mut h = harness();
    let out = send(
        &mut h,
        Request::new("OPTIONS", "/v1/orders").header("origin", APP),
    );
    assert_eq!(out.status, 401, "{}", out.text());
    assert_eq!(out.json()["code"], "MISSING_CREDENTIALS");
}

#[test]
fn an_actual_request_from_an_allowed_origin_gets_the_cors_headers() {
    let mut h = harness();
    let out = send(
        &mut h,
        Request::get("/v1/things")
            .header("origin", APP)
            .header("x-api-key", DEMO_KEY),
    );
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.header("access-control-allow-origin"), Some(APP));
    assert_eq!(out.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        out.header("access-control-expose-headers"),
        Some("ratelimit-limit, ratelimit-remaining, ratelimit-reset, retry-after")
    );
    assert_eq!(out.header("vary"), Some("Origin"));
}

#[test]
fn an_origin_that_is_not_listed_gets_no_cors_headers_not_even_the_upstreams() {
    let mut h = harness();
    let mut up = reply(200, "application/json", "{}");
    up.headers
        .push(("access-control-allow-origin".into(), "*".into()));
    up.headers.push(("vary".into(), "Accept-Encoding".into()));
    let out = send(
        &mut h,
        replying(
            Request::get("/v1/things")
                .header("origin", "https://evil.example.com")
                .header("x-api-key", DEMO_KEY),
            &up,
        ),
    );
    assert_eq!(out.status, 200, "{}", out.text());
    for (name, _) in &out.headers {
        assert!(!name.starts_with("access-control-"), "{name} sent");
    }
    // The answer depends on the origin even when it is refused: caches must know.
    assert_eq!(out.header("vary"), Some("Accept-Encoding, Origin"));
}

#[test]
fn a_refusal_to_an_allowed_origin_carries_the_cors_and_security_headers() {
    let mut h = harness();
    let out = send(
        &mut h,
        Request::get("/v1/things").header("origin", "https://admin.example.com"),
    );
    assert_eq!(out.status, 401);
    assert!(out.local_response);
    assert_eq!(
        out.header("access-control-allow-origin"),
        Some("https://admin.example.com")
    );
    assert_eq!(out.json()["code"], "MISSING_CREDENTIALS");
    assert_eq!(
        out.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(out.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn security_headers_are_set_per_route_and_leaky_upstream_headers_removed() {
    let mut h = harness();
    let mut up = reply(200, "application/json", "{\"things\":[]}");
    up.headers.push(("server".into(), "gunicorn/20.1.0".into()));
    up.headers.push(("x-powered-by".into(), "Flask".into()));
    up.headers
        .push(("strict-transport-security".into(), "max-age=0".into()));
    let out = send(
        &mut h,
        replying(
            Request::get("/v1/things").header("x-api-key", DEMO_KEY),
            &up,
        ),
    );
    assert_eq!(out.status, 200);
    assert_eq!(out.json()["things"], serde_json::json!([]));
    assert_eq!(
        out.header_values("strict-transport-security"),
        [b"max-age=31536000; includeSubDomains".as_slice()]
    );
    assert_eq!(out.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(out.header("server"), None);
    assert_eq!(out.header("x-powered-by"), None);
    assert_eq!(out.header("content-security-policy"), None);

    // /healthz turns them off.
    let out = send(&mut h, Request::get("/healthz"));
    assert_eq!(out.status, 200);
    assert_eq!(out.header("strict-transport-security"), None);
    assert_eq!(out.header("x-content-type-options"), None);
}

#[test]
fn the_content_security_policy_goes_on_html_only() {
    let mut h = harness();
    let html = send(
        &mut h,
        replying(
            Request::get("/pages/welcome"),
            &reply(200, "Text/HTML; charset=utf-8", "<h1>hi</h1>"),
        ),
    );
    assert_eq!(html.text(), "<h1>hi</h1>");
    assert_eq!(
        html.header("content-security-policy"),
        Some("default-src 'self'")
    );
    let json = send(
        &mut h,
        replying(
            Request::get("/pages/data.json"),
            &reply(200, "application/json", "{}"),
        ),
    );
    assert_eq!(json.header("content-security-policy"), None);
    // The top-level CSP on a route that does not override it.
    let api_html = send(
        &mut h,
        replying(
            Request::get("/v1/report").header("x-api-key", DEMO_KEY),
            &reply(200, "text/html", "<p>report</p>"),
        ),
    );
    assert_eq!(
        api_html.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
}

#[test]
fn an_upstream_500_with_a_stack_trace_becomes_the_standard_body() {
    let mut h = harness();
    let mut up = reply(500, "text/html", STACK_TRACE);
    up.headers.push(("etag".into(), "\"v1\"".into()));
    let out = send(
        &mut h,
        replying(
            Request::get("/v1/orders")
                .header("x-api-key", DEMO_KEY)
                .header("x-request-id", "req-500"),
            &up,
        ),
    );
    assert_standard_upstream_error(&out, 500, "req-500");
    assert_eq!(out.json()["error"], "the upstream service failed");
    assert_eq!(out.header("etag"), None);
    assert_eq!(out.header("cache-control"), Some("no-store"));
    let upstream = out.upstream.as_ref().unwrap();
    assert_eq!(upstream.header("x-request-id"), Some("req-500"));
}

#[test]
fn a_generated_request_id_in_the_body_is_the_one_the_upstream_saw() {
    let mut h = harness();
    let out = send(
        &mut h,
        replying(
            Request::get("/v1/orders").header("x-api-key", DEMO_KEY),
            &reply(503, "text/plain", "connection pool exhausted"),
        ),
    );
    let seen = out
        .upstream
        .as_ref()
        .unwrap()
        .header("x-request-id")
        .unwrap();
    assert_eq!(seen.len(), 36, "a UUID: {seen}");
    assert_standard_upstream_error(&out, 503, seen);
}

#[test]
fn a_chunked_upstream_error_is_emptied_piece_by_piece_and_replaced_at_the_end() {
    let mut h = harness();
    let before = h.host_calls("proxy_set_buffer_bytes");
    let mut up = reply(500, "text/plain", STACK_TRACE);
    up.chunk = Some(16);
    let pieces = up.pieces().len() as u64;
    assert!(pieces > 5);
    let out = send(
        &mut h,
        replying(
            Request::get("/v1/orders")
                .header("x-api-key", DEMO_KEY)
                .header("x-request-id", "req-chunked"),
            &up,
        ),
    );
    assert_standard_upstream_error(&out, 500, "req-chunked");
    // One rewrite per piece: nothing was held back and buffered.
    assert_eq!(h.host_calls("proxy_set_buffer_bytes") - before, pieces);
}

#[test]
fn an_upstream_error_without_a_body_gets_the_standard_body_and_the_response_headers() {
    let mut h = harness();
    let empty = EchoReply {
        status: 502,
        ..EchoReply::default()
    };
    let out = send(
        &mut h,
        replying(
            Request::get("/v1/orders")
                .header("x-api-key", DEMO_KEY)
                .header("origin", APP)
                .header("x-request-id", "req-502"),
            &empty,
        ),
    );
    assert_eq!(out.status, 502);
    assert_eq!(out.json()["code"], "UPSTREAM_ERROR");
    assert_eq!(out.json()["request_id"], "req-502");
    assert_eq!(out.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        out.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
}

#[test]
fn a_4xx_in_json_is_kept_and_a_4xx_in_html_is_replaced() {
    let mut h = harness();
    let kept = send(
        &mut h,
        replying(
            Request::get("/v1/orders/9").header("x-api-key", DEMO_KEY),
            &reply(
                422,
                "application/problem+json",
                "{\"title\":\"quantity must be positive\"}",
            ),
        ),
    );
    assert_eq!(kept.status, 422);
    assert_eq!(kept.json()["title"], "quantity must be positive");

    let replaced = send(
        &mut h,
        replying(
            Request::get("/v1/orders/9")
                .header("x-api-key", DEMO_KEY)
                .header("x-request-id", "req-404"),
            &reply(404, "text/html", "<h1>Not Found</h1><hr>nginx/1.25.3"),
        ),
    );
    assert_standard_upstream_error(&replaced, 404, "req-404");
    assert_eq!(
        replaced.json()["error"],
        "the upstream service could not process the request"
    );
    assert!(!replaced.text().contains("nginx"));
}

#[test]
fn head_requests_and_routes_that_opt_out_keep_the_upstream_error() {
    let mut h = harness();
    let out = send(
        &mut h,
        replying(
            Request::get("/pages/broken"),
            &reply(500, "text/html", "<h1>Sorry</h1>"),
        ),
    );
    assert_eq!(out.status, 500);
    assert_eq!(out.text(), "<h1>Sorry</h1>");
    // A HEAD response has no body to leak; it is left as it is.
    let out = send(
        &mut h,
        replying(
            Request::new("HEAD", "/v1/orders").header("x-api-key", DEMO_KEY),
            &reply(500, "text/plain", "x"),
        ),
    );
    assert_eq!(out.status, 500);
    assert_eq!(out.header("content-type"), Some("text/plain"));
}

/// `gatehouse-harness check` on a policy written to a temporary file.
fn check_policy(name: &str, src: &str) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("gatehouse-cors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join(name);
    std::fs::write(&file, src).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-harness"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const LOCAL_ORIGIN_POLICY: &str = "\
version: 1
environment: production
cors:
  allowed_origins: [https://app.example.com, http://localhost:3000]
routes:
  - match: { path_prefix: /v1/ }
";

#[test]
fn check_warns_about_a_local_origin_in_a_production_policy_but_passes() {
    let (code, out) = check_policy("prod.yaml", LOCAL_ORIGIN_POLICY);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("prod.yaml:4:46: warning: cors.allowed_origins[1]: 'http://localhost:3000' is a local development origin in a production policy"),
        "{out}"
    );
    assert!(out.contains("prod.yaml: ok (1 warning)"), "{out}");

    let dev = LOCAL_ORIGIN_POLICY.replace("production", "development");
    let (code, out) = check_policy("dev.yaml", &dev);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
    assert!(out.contains("dev.yaml: ok"), "{out}");
}

#[test]
fn check_refuses_a_wildcard_origin_with_credentials_at_its_position() {
    let (code, out) = check_policy(
        "star.yaml",
        "version: 1\ncors:\n  allowed_origins: ['*']\n  allow_credentials: true\nroutes:\n  - match: { path_prefix: /v1/ }\n",
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("star.yaml:4:22: cors.allow_credentials: '*' cannot be used with allow_credentials: true"),
        "{out}"
    );
}

#[test]
fn the_bootstrap_passes_the_server_header_through_only_when_the_policy_removes_it() {
    let bootstrap = |policy: &str| Bootstrap {
        listen: "127.0.0.1:10000".parse().unwrap(),
        admin: "127.0.0.1:9901".parse().unwrap(),
        upstream: "127.0.0.1:8080".parse().unwrap(),
        wasm: PathBuf::from("/tmp/gatehouse.wasm"),
        plugin_config_json: policy_json(policy),
        env: vec![],
        pass_env: vec![],
        control: Vec::new(),
        filter_only: false,
        filter_config: None,
    };
    let hcm = |yaml: String| {
        let tree = gatehouse_core::policy::yaml::parse(&yaml)
            .unwrap()
            .to_json();
        tree["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["server_header_transformation"]
            .clone()
    };
    assert_eq!(hcm(bootstrap("cors.yaml").render()), "PASS_THROUGH");
    assert_eq!(hcm(bootstrap("example.yaml").render()), "OVERWRITE");
}
