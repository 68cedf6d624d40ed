//! End-to-end: operators' levers through the admin API reach a real Envoy, through the
//! feed, with no reload: a raised per-key limit serves a caller refused under the old
//! one from its next request; a limit in shadow stops refusing and counts what it would
//! have refused; an allowlisted key skips the limit; `enforce` and removal bring the
//! limit back; levers survive a restart of the control service. Each change's time to
//! reach Envoy is printed (the feed's path: docs/operating.md, "Levers").
//!
//! Real `gatehouse-control` (on a SQLite file, and on PostgreSQL) and a real Envoy with
//! two workers. Envoy
//! missing is a failure with the install hint, never a skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::control::{ControlOptions, ControlService, Database, IssuedKey};
use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::postgres::PostgresCluster;
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, FeedLink, workspace_root};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const FEED_TOKEN_ENV: &str = "GATEHOUSE_FEED_TOKEN";
const JWT_SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
const JWT_SECRET: &str = "gatehouse-test-secret-0123456789abcdef-xyz";
/// How long a lever may take to reach Envoy before the test fails: far above the
/// feed's one round trip, so a slow machine does not fail it; the figure is printed.
const BOUND: Duration = Duration::from_secs(10);
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Longer than a worker's tick (100 ms), on which it takes new levers from shared data.
const WORKER_TICK: Duration = Duration::from_millis(250);

#[allow(clippy::disallowed_methods, reason = "a real Envoy's wall-clock bound")]
fn stopwatch() -> Instant {
    Instant::now()
}

/// `policies/local.yaml` with the free plan at 2 a minute (2 at once), so a test key
/// is refused after two requests.
fn policy() -> String {
    let file = workspace_root().join("policies/local.yaml");
    let source = std::fs::read_to_string(&file).unwrap();
    let loaded = gatehouse_core::policy::load_yaml("local.yaml", &source)
        .unwrap_or_else(|e| panic!("local.yaml does not load:\n{e}"));
    let mut config: Value = serde_json::from_str(&loaded.plugin_config_json).unwrap();
    config["plans"]["free"] = json!({ "requests_per_minute": 2 });
    let json = config.to_string();
    gatehouse_core::policy::Policy::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("the adjusted policy is invalid: {e:?}"));
    json
}

struct Stack {
    control: ControlService,
    envoy: Envoy,
}

impl Stack {
    fn start(opts: &ControlOptions) -> Stack {
        let control = ControlService::start(opts)
            .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
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

    fn diagnostics(&self) -> String {
        format!(
            "--- Envoy log (last lines) ---\n{}\n--- control log (last lines) ---\n{}",
            self.envoy.log_tail(25),
            self.control.log_tail(10)
        )
    }

    fn call(&self, key: &IssuedKey) -> ClientResponse {
        let req = ClientRequest {
            method: "GET".into(),
            path: "/v1/things".into(),
            headers: vec![("x-api-key".into(), key.api_key.as_bytes().to_vec())],
            body: Vec::new(),
        };
        self.envoy
            .send(&req)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.control
            .admin(method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    /// A free-plan key Envoy accepts, then refuses for its limit.
    fn refused_key(&self, user: &str) -> IssuedKey {
        let key = self
            .control
            .issue_key(user, "tenant_levers", "free")
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.until(&format!("{user}'s key accepted"), &key, |r| r.status == 200);
        // The limit: 2 at once; the first 200 above took one.
        let mut last = self.call(&key);
        for _ in 0..3 {
            if last.status == 429 {
                break;
            }
            last = self.call(&key);
        }
        assert_eq!(last.status, 429, "{}", String::from_utf8_lossy(&last.body));
        key
    }

    /// Asks Envoy with `key` until `done` holds; how long it took to the first such
    /// answer. Past [`BOUND`] the test fails.
    fn until(
        &self,
        what: &str,
        key: &IssuedKey,
        done: impl Fn(&ClientResponse) -> bool,
    ) -> Duration {
        let start = stopwatch();
        loop {
            let resp = self.call(key);
            if done(&resp) {
                let took = start.elapsed();
                // Each worker takes the levers from shared data on its own 100 ms tick:
                // the first answer that shows a change may come from one worker while the
                // other follows within a tick. The next step starts with both in step.
                std::thread::sleep(WORKER_TICK);
                return took;
            }
            assert!(
                start.elapsed() < BOUND,
                "{what}: still {} after {BOUND:?} ({})\n{}",
                resp.status,
                String::from_utf8_lossy(&resp.body),
                self.diagnostics()
            );
            std::thread::sleep(PROBE_EVERY);
        }
    }

    /// Waits until the counter `name` is at least 1 (workers flush their counts on
    /// their tick); past [`BOUND`] the test fails.
    fn until_counted(&self, name: &str) {
        let start = stopwatch();
        loop {
            let n = self
                .envoy
                .stat(name)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .unwrap_or(0);
            if n >= 1 {
                return;
            }
            assert!(
                start.elapsed() < BOUND,
                "{name} is still {n} after {BOUND:?}\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn levers_change_what_envoy_does_within_a_round_trip_and_survive_a_restart() {
    levers_through_envoy(Stack::start(&ControlOptions::new()));
}

/// The same on PostgreSQL, in a throwaway cluster.
#[test]
fn levers_on_postgresql_change_what_envoy_does_and_survive_a_restart() {
    let postgres =
        PostgresCluster::start().unwrap_or_else(|e| panic!("could not start PostgreSQL: {e:#}"));
    let url = postgres
        .create_database("gatehouse_levers")
        .unwrap_or_else(|e| panic!("{e:#}"));
    levers_through_envoy(Stack::start(&ControlOptions {
        database: Database::Postgres(url),
        ..ControlOptions::new()
    }));
}

fn levers_through_envoy(mut stack: Stack) {
    let mut took = Vec::new();

    // A raised limit serves the refused key from its next request.
    let raised = stack.refused_key("user_raised");
    let (status, _) = stack.admin(
        "PUT",
        &format!("/v1/keys/{}/limits", raised.id),
        Some(json!({ "requests_per_minute": 600, "expires_at": null, "reason": "e2e: raise" })),
    );
    assert_eq!(status, 200);
    took.push((
        "raise",
        stack.until("raised key served", &raised, |r| r.status == 200),
    ));
    for _ in 0..20 {
        assert_eq!(
            stack.call(&raised).status,
            200,
            "600 a minute admits 20 at once"
        );
    }

    // Shadow: the plan's limit stops refusing, and counts what it would have refused.
    let shadowed = stack.refused_key("user_shadowed");
    let (status, _) = stack.admin(
        "PUT",
        "/v1/limits/free/mode",
        Some(json!({ "mode": "shadow", "reason": "e2e: shadow" })),
    );
    assert_eq!(status, 200);
    took.push((
        "shadow",
        stack.until("shadowed limit passes", &shadowed, |r| r.status == 200),
    ));
    stack.until_counted("wasmcustom.gatehouse.shadow.would_refuse.free");
    let (status, _) = stack.admin(
        "PUT",
        "/v1/limits/free/mode",
        Some(json!({ "mode": "enforce", "reason": "e2e: enforce" })),
    );
    assert_eq!(status, 200);
    took.push((
        "enforce",
        stack.until("enforced again", &shadowed, |r| r.status == 429),
    ));

    // Ten more round trips of the kill switch, for the propagation figures.
    for n in 0..10 {
        for (mode, status) in [("shadow", 200), ("enforce", 429)] {
            let (st, _) = stack.admin(
                "PUT",
                "/v1/limits/free/mode",
                Some(json!({ "mode": mode, "reason": format!("e2e: toggle {n}") })),
            );
            assert_eq!(st, 200);
            took.push((mode, stack.until(mode, &shadowed, |r| r.status == status)));
        }
    }

    // An allowlisted key skips the limit; removing the entry brings it back.
    let listed = stack.refused_key("user_listed");
    let (status, entry) = stack.admin(
        "POST",
        "/v1/allowlist",
        Some(json!({ "key_id": listed.id, "limit": "free", "reason": "e2e: allowlist" })),
    );
    assert_eq!(status, 201, "{entry}");
    took.push((
        "allowlist",
        stack.until("allowlisted key served", &listed, |r| r.status == 200),
    ));
    stack.until_counted("wasmcustom.gatehouse.allowlisted");
    let id = entry["id"].as_str().unwrap().to_string();
    let (status, _) = stack.admin("DELETE", &format!("/v1/allowlist/{id}"), None);
    assert_eq!(status, 204);
    took.push((
        "unlist",
        stack.until("limited again", &listed, |r| r.status == 429),
    ));

    // Levers survive a restart of the control service, and a fresh poll after it
    // changes nothing in Envoy: the raised key is still served.
    stack
        .control
        .restart()
        .unwrap_or_else(|e| panic!("restarting gatehouse-control: {e:#}"));
    let (status, limits) = stack.admin("GET", &format!("/v1/keys/{}/limits", raised.id), None);
    assert_eq!(status, 200, "{limits}");
    assert_eq!(limits["requests_per_minute"], 600);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stack.call(&raised).status, 200);

    let mut all: Vec<Duration> = took.iter().map(|(_, d)| *d).collect();
    all.sort();
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "levers reached Envoy (the first answer that showed them, probing every {} ms), \
         {} changes: p50 {} ms, p99 {} ms, max {} ms",
        PROBE_EVERY.as_millis(),
        all.len(),
        at(0.5).as_millis(),
        at(0.99).as_millis(),
        all.last().unwrap().as_millis()
    );
}
