//! Observability end to end: a real Envoy (two workers) running the module with
//! `policies/local.yaml` and a real `gatehouse-control serve` on a temporary SQLite file.
//! A refused request and an allowed API-key request go through Envoy; the sync posts the
//! refusal audit and the key's use to the control service (`POST /v1/events`), which shows
//! them in `GET /v1/audit?kind=refusal` and the key's `last_used`; Envoy's
//! `/stats/prometheus` shows the request, refusal and plan counters with their values.
//!
//! Needs Envoy (`make envoy`), the module (`make wasm`) and the control binary
//! (`cargo build -p gatehouse-control`). Missing any of them is a failure, never a skip.
//! Waits are bounded and fail past their bound; nothing is timed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::control::{ControlOptions, ControlService, IssuedKey};
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, FeedLink, workspace_root};
use serde_json::Value;
use std::time::{Duration, Instant};

const FEED_TOKEN_ENV: &str = "GATEHOUSE_FEED_TOKEN";
const JWT_SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
const JWT_SECRET: &str = "gatehouse-test-secret-0123456789abcdef-xyz";
/// The longest any report may take to show before the test fails: a correctness bound
/// (workers flush once a second, the sync posts once a second), far above both.
const BOUND: Duration = Duration::from_secs(20);

#[allow(
    clippy::disallowed_methods,
    reason = "bounds waits on real processes; the core never reads it"
)]
fn stopwatch() -> Instant {
    Instant::now()
}

fn local_policy() -> String {
    let file = workspace_root().join("policies/local.yaml");
    let source = std::fs::read_to_string(&file).unwrap();
    gatehouse_core::policy::load_yaml("local.yaml", &source)
        .unwrap_or_else(|e| panic!("local.yaml does not load:\n{e}"))
        .plugin_config_json
}

struct Stack {
    control: ControlService,
    envoy: Envoy,
}

impl Stack {
    fn start() -> Stack {
        Stack::start_with(ControlOptions::new())
    }

    fn start_with(control: ControlOptions) -> Stack {
        let control = ControlService::start(&control)
            .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
        let opts = EnvoyOptions {
            env: vec![(JWT_SECRET_ENV.into(), JWT_SECRET.into())],
            concurrency: 2,
            ..EnvoyOptions::new(local_policy())
        };
        let link = FeedLink {
            control: control.addr(),
            secret_env: vec![(FEED_TOKEN_ENV.into(), control.feed_token().into())],
        };
        let envoy = Envoy::start_with_feed(&opts, &link)
            .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
        Stack { control, envoy }
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- Envoy log (last lines) ---\n{}\n--- control log (last lines) ---\n{}",
            self.envoy.log_tail(30),
            self.control.log_tail(15)
        )
    }

    fn call(&self, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
        let req = ClientRequest {
            method: "GET".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        };
        self.envoy
            .send(&req)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    fn admin(&self, path: &str) -> Value {
        let (status, body) = self
            .control
            .admin("GET", path, None)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Polls `probe` until it gives a value, for at most [`BOUND`].
    fn until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = stopwatch();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if start.elapsed() > BOUND {
                panic!("{what}: not there after {BOUND:?}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The value of an unlabelled Prometheus sample named exactly `name`.
fn sample(prometheus: &str, name: &str) -> Option<u64> {
    prometheus.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest
            .strip_prefix("{} ")
            .or_else(|| rest.strip_prefix(' '))?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

#[test]
fn refusals_and_key_uses_reach_the_control_service_and_prometheus_shows_the_counters() {
    let stack = Stack::start();
    let key: IssuedKey = stack
        .control
        .issue_key("user_obs", "tenant_demo", "team")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.diagnostics()));
    // Every answer counts: until the feed delivers the key it is refused (401, or 503
    // before the first answer), then allowed.
    let (mut allowed, mut refused) = (0u64, 0u64);
    let mut count = |resp: &ClientResponse| {
        if resp.status == 200 {
            allowed += 1;
        } else {
            refused += 1;
        }
        resp.status
    };
    stack.until("the issued key works through Envoy", || {
        let resp = stack.call("/v1/things", &[("x-api-key", &key.api_key)]);
        (count(&resp) == 200).then_some(())
    });
    let resp = stack.call("/v1/things", &[("x-request-id", "e2e-refused-1")]);
    assert_eq!(count(&resp), 401, "{}", String::from_utf8_lossy(&resp.body));

    // The refusal, in the audit log, with who (nobody), what and where.
    let event = stack.until("the refusal in GET /v1/audit?kind=refusal", || {
        let audit = stack.admin("/v1/audit?kind=refusal&limit=1000");
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["request_id"] == "e2e-refused-1")
            .cloned()
    });
    assert_eq!(event["kind"], "refusal", "{event}");
    assert_eq!(event["actor"], "anonymous", "{event}");
    assert_eq!(event["action"], "refused", "{event}");
    assert_eq!(event["target"], "/v1/", "{event}");
    assert_eq!(event["code"], "MISSING_CREDENTIALS", "{event}");
    assert_eq!(event["status"], 401, "{event}");
    assert_eq!(event["method"], "GET", "{event}");
    assert_eq!(event["client"], "127.0.0.1", "{event}");
    assert_eq!(event["proxy"], stack.envoy.node_id().as_str(), "{event}");

    // The key's use, as its last_used.
    let last_used = stack.until("the key's last_used", || {
        let k = stack.admin(&format!("/v1/keys/{}", key.id));
        k["last_used"].as_str().map(str::to_string)
    });
    assert!(last_used.ends_with('Z'), "RFC 3339: {last_used}");

    // Envoy's Prometheus page: the custom stats under their own names, with the counts
    // of what this test sent (all workers summed; read once both have flushed). Envoy
    // strips the `wasmcustom.` namespace of module stats and adds no `envoy_` prefix:
    // `wasmcustom.gatehouse.requests.allowed` in /stats is `gatehouse_requests_allowed`.
    let (allowed, refused) = (allowed, refused);
    let expected = [
        ("gatehouse_requests_allowed", allowed),
        ("gatehouse_requests_refused", refused),
        ("gatehouse_plan_team_allowed", allowed),
        ("gatehouse_plan_anonymous_refused", refused),
        ("gatehouse_plan_team_refused", 0),
        ("gatehouse_refused_missing_credentials", 1),
    ];
    let text = stack.until("the counters in /stats/prometheus", || {
        let resp = stack.envoy.admin_get("/stats/prometheus").unwrap();
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        expected
            .iter()
            .all(|(name, value)| sample(&text, name) == Some(*value))
            .then_some(text)
    });
    for (name, value) in expected {
        assert_eq!(sample(&text, name), Some(value), "{name}");
    }
    // The feed's gauges are there too: the version applied and the key records fed.
    assert!(sample(&text, "gatehouse_feed_version").unwrap_or(0) >= 1);
    assert!(sample(&text, "gatehouse_feed_keys").unwrap_or(0) >= 1);
    let gatehouse: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("gatehouse_") && !l.starts_with('#'))
        .collect();
    eprintln!("prometheus:\n{}", gatehouse.join("\n"));
    assert!(
        !text.contains("wasmcustom_gatehouse"),
        "{}",
        gatehouse.join("\n")
    );
    assert_eq!(
        stack
            .envoy
            .stat("wasmcustom.gatehouse.requests.allowed")
            .unwrap(),
        Some(allowed)
    );
    assert!(!text.contains(&key.api_key), "the key is in Envoy's stats");
}

/// A plan the proxies' policy does not list (the control service still offers `pro`; the
/// policy dropped it): the key is refused with 403 UNKNOWN_PLAN, never served without a
/// plan limit, and the refusal is counted in Envoy's stats and shown in the audit with
/// the caller it refused.
#[test]
fn a_key_on_a_plan_the_policy_does_not_know_is_refused_counted_and_audited() {
    let mut control = ControlOptions::new();
    control.env.push((
        "GATEHOUSE_PLANS".into(),
        "free,solo,team,enterprise,pro".into(),
    ));
    let stack = Stack::start_with(control);
    let key: IssuedKey = stack
        .control
        .issue_key("user_pro", "tenant_demo", "pro")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.diagnostics()));
    // Until the key is in the cache, calls are refused for other reasons (503 while the
    // first snapshot is read) and audited too: those calls carry another request id.
    stack.until("the key's refusal for its plan", || {
        let resp = stack.call(
            "/v1/things",
            &[
                ("x-api-key", &key.api_key),
                ("x-request-id", "e2e-pro-wait"),
            ],
        );
        (resp.status == 403).then_some(resp)
    });
    let resp = stack.call(
        "/v1/things",
        &[("x-api-key", &key.api_key), ("x-request-id", "e2e-pro-1")],
    );
    assert_eq!(resp.status, 403, "{}", stack.diagnostics());
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["code"], "UNKNOWN_PLAN", "{body}");
    let event = stack.until("the refusal in GET /v1/audit?kind=refusal", || {
        let audit = stack.admin("/v1/audit?kind=refusal&limit=1000");
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["request_id"] == "e2e-pro-1")
            .cloned()
    });
    assert_eq!(event["code"], "UNKNOWN_PLAN", "{event}");
    assert_eq!(event["status"], 403, "{event}");
    assert_eq!(event["actor"], format!("key:{}", key.id), "{event}");
    assert_eq!(event["plan"], "pro", "{event}");
    stack.until(
        "gatehouse_refused_unknown_plan in /stats/prometheus",
        || {
            let resp = stack.envoy.admin_get("/stats/prometheus").unwrap();
            let text = String::from_utf8_lossy(&resp.body).into_owned();
            sample(&text, "gatehouse_refused_unknown_plan")
                .filter(|n| *n >= 1)
                .map(|_| ())
        },
    );
}
