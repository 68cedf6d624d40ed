//! The health route (`health:` in the policy) in a real Envoy with a real
//! `gatehouse-control serve`: 503 `NOT_READY` while the control service has not answered,
//! 200 once its first snapshot is applied, 503 again once the cache is older than
//! `feed.staleness`. The probe is answered by the module itself: the echo upstream never
//! sees it.
//!
//! Needs Envoy (`make envoy`), the module (`make wasm`) and the control binary (`cargo
//! build -p gatehouse-control`); missing any of them is a failure that says how to get it.
//! Every wait has a generous bound and fails only past it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::control::{ControlOptions, ControlService};
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, FeedLink, workspace_root};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const FEED_TOKEN_ENV: &str = "GATEHOUSE_FEED_TOKEN";
const JWT_SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
const JWT_SECRET: &str = "gatehouse-test-secret-0123456789abcdef-xyz";
/// The longest a change of readiness may take to show before the test fails.
const BOUND: Duration = Duration::from_secs(30);

#[allow(
    clippy::disallowed_methods,
    reason = "waits on real processes; the core never reads it"
)]
fn stopwatch() -> Instant {
    Instant::now()
}

/// `policies/local.yaml` (keys from the feed) with a health route on `/readyz` and short
/// feed timings: a healthy cache is at most 2 s old, a stale one is past 4 s.
fn policy() -> String {
    let source = std::fs::read_to_string(workspace_root().join("policies/local.yaml")).unwrap();
    let loaded = gatehouse_core::policy::load_yaml("local.yaml", &source).unwrap();
    let mut config: Value = serde_json::from_str(&loaded.plugin_config_json).unwrap();
    config["health"] = json!({ "path": "/readyz" });
    for (k, v) in [("interval", "1s"), ("wait", "1s"), ("staleness", "4s")] {
        config["feed"][k] = json!(v);
    }
    let json = config.to_string();
    gatehouse_core::policy::Policy::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("the adjusted policy is invalid: {e}"));
    json
}

struct Stack {
    control: ControlService,
    envoy: Envoy,
}

impl Stack {
    /// Envoy pointed at a control service that is not running yet.
    fn start_before_control() -> Stack {
        let mut control = ControlService::start(&ControlOptions::new())
            .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
        control.stop().unwrap();
        let opts = EnvoyOptions {
            env: vec![(JWT_SECRET_ENV.into(), JWT_SECRET.into())],
            concurrency: 2,
            ..EnvoyOptions::new(policy())
        };
        let link = FeedLink {
            control: control.addr(),
            secret_env: vec![(FEED_TOKEN_ENV.into(), control.feed_token().into())],
        };
        let envoy = Envoy::start_with_feed(&opts, &link)
            .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
        Stack { control, envoy }
    }

    fn send(&self, method: &str, path: &str) -> ClientResponse {
        let req = ClientRequest {
            method: method.into(),
            path: path.into(),
            headers: vec![("x-request-id".into(), b"probe-1".to_vec())],
            body: Vec::new(),
        };
        self.envoy
            .send(&req)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- Envoy log (last lines) ---\n{}\n--- control log (last lines) ---\n{}",
            self.envoy.log_tail(25),
            self.control.log_tail(10)
        )
    }

    /// Probes every 100 ms until `done` holds; past [`BOUND`] the test fails.
    fn until(&self, what: &str, done: impl Fn(&ClientResponse) -> bool) -> ClientResponse {
        let start = stopwatch();
        loop {
            let resp = self.send("GET", "/readyz");
            if done(&resp) {
                println!("{what}: after {:?}", start.elapsed());
                return resp;
            }
            assert!(
                start.elapsed() < BOUND,
                "{what}: still {} {} after {BOUND:?}\n{}",
                resp.status,
                text(&resp),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn text(resp: &ClientResponse) -> String {
    String::from_utf8_lossy(&resp.body).into_owned()
}

fn json_body(resp: &ClientResponse) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", text(resp)))
}

fn header<'a>(resp: &'a ClientResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn assert_not_ready(resp: &ClientResponse, error: &str) {
    assert_eq!(resp.status, 503, "{}", text(resp));
    let body = json_body(resp);
    assert_eq!(body["code"], "NOT_READY", "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["request_id"], "probe-1");
    assert!(header(resp, "retry-after").is_some());
    assert_eq!(header(resp, "cache-control"), Some("no-store"));
}

#[test]
fn the_health_route_is_503_before_the_control_service_answers_and_200_after() {
    let mut stack = Stack::start_before_control();
    // Envoy is up and its sync polls a closed port: no snapshot, whatever the wait.
    std::thread::sleep(Duration::from_secs(2));
    let resp = stack.send("GET", "/readyz");
    assert_not_ready(&resp, "the key cache has not received its first snapshot");
    let head = stack.send("HEAD", "/readyz");
    assert_eq!((head.status, head.body.len()), (503, 0), "HEAD: no body");
    let post = stack.send("POST", "/readyz");
    assert_eq!(post.status, 405, "{}", text(&post));
    assert_eq!(json_body(&post)["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(header(&post, "allow"), Some("GET, HEAD"));
    // The route of the same policy that goes upstream still does.
    let forwarded = stack.send("GET", "/healthz");
    assert_eq!(forwarded.status, 200, "{}", text(&forwarded));
    assert!(
        json_body(&forwarded)["headers"].is_object(),
        "the echo answered"
    );

    stack.control.restart().unwrap();
    let ready = stack.until("ready once the control service answers", |r| {
        r.status == 200
    });
    let body = json_body(&ready);
    assert_eq!(body["status"], "ok", "{body}");
    assert!(body["cache_version"].is_u64(), "{body}");
    assert!(body["cache_age_seconds"].as_u64().unwrap() <= 4, "{body}");
    assert_eq!(
        body.as_object().unwrap().len(),
        3,
        "the module's answer, not the echo's: {body}"
    );
    assert_eq!(header(&ready, "cache-control"), Some("no-store"));
    let head = stack.send("HEAD", "/readyz?probe=lb");
    assert_eq!((head.status, head.body.len()), (200, 0));

    stack.control.stop().unwrap();
    let stale = stack.until("not ready once the cache is stale", |r| r.status == 503);
    let error = json_body(&stale)["error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("the key cache is ") && error.ends_with(" s old, over feed.staleness"),
        "{error}"
    );
    assert_not_ready(&stale, &error);

    stack.control.restart().unwrap();
    stack.until("ready again", |r| r.status == 200);
}
