//! End-to-end with the control service: a real Envoy running the gatehouse module with
//! `policies/local.yaml` (the policy `make run` uses: keys come from the feed) and a real
//! `gatehouse-control serve` on a temporary SQLite file (the replica test also on a
//! throwaway PostgreSQL cluster, `make postgres`). Keys are issued and revoked
//! through the admin API and used through Envoy; the sync in between is the module's own.
//!
//! Needs Envoy (`make envoy`), the module (`make wasm`) and the control binary, which
//! `cargo test --workspace` builds (alone: `cargo build -p gatehouse-control`). Missing
//! any of them is a failure that says how to get it, never a skip.
//!
//! Timing: every wait has a generous bound and fails only past it; latencies are printed
//! (`-- --nocapture`), never asserted. benches/README.md's revocation figures come from
//! `cargo test -p gatehouse-harness --test envoy_control_e2e -- --nocapture revocation`,
//! back to back, and with `GATEHOUSE_E2E_REVOCATION_PAUSE_MS=1100`, one at a time.

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

/// The policy's `feed.token_env` and the JWT key's `secret_env`.
const FEED_TOKEN_ENV: &str = "GATEHOUSE_FEED_TOKEN";
const JWT_SECRET_ENV: &str = "GATEHOUSE_JWT_SECRET";
const JWT_SECRET: &str = "gatehouse-test-secret-0123456789abcdef-xyz";
/// Revocations measured.
const REVOCATIONS: usize = 50;
/// The longest any change may take to reach Envoy before the test fails. A correctness
/// bound (the change arrives), far above the latency targeted (under a second).
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);
/// How often Envoy is asked while waiting for a change to arrive.
const PROBE_EVERY: Duration = Duration::from_millis(2);
/// How often Envoy is asked while waiting out the staleness bound (seconds): slower, so
/// the probes stay far inside the key's rate limit.
const SLOW_PROBE_EVERY: Duration = Duration::from_millis(50);
/// The plan of every key issued: enterprise (6000 per minute, bursts of as many) keeps
/// the probes of one key clear of its rate limit.
const PLAN: &str = "enterprise";

/// The wall clock, for the latencies this suite reports and for its generous bounds.
#[allow(
    clippy::disallowed_methods,
    reason = "measures real propagation through real processes; the core never reads it"
)]
fn stopwatch() -> Instant {
    Instant::now()
}

/// `policies/local.yaml` as plugin configuration, with `feed` fields replaced by `feed`.
fn local_policy(feed: &Value) -> String {
    let file = workspace_root().join("policies/local.yaml");
    let source = std::fs::read_to_string(&file).unwrap();
    let loaded = gatehouse_core::policy::load_yaml("local.yaml", &source)
        .unwrap_or_else(|e| panic!("local.yaml does not load:\n{e}"));
    let mut config: Value = serde_json::from_str(&loaded.plugin_config_json).unwrap();
    assert_eq!(config["feed"]["token_env"], FEED_TOKEN_ENV);
    for (k, v) in feed.as_object().unwrap() {
        config["feed"][k] = v.clone();
    }
    let json = config.to_string();
    gatehouse_core::policy::Policy::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("the adjusted policy is invalid: {e:?}"));
    json
}

/// The control service and an Envoy whose sync polls it.
struct Stack {
    control: ControlService,
    envoy: Envoy,
}

impl Stack {
    fn start(feed: &Value) -> Stack {
        let control = ControlService::start(&ControlOptions::new())
            .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
        Stack::with_envoy(control, feed)
    }

    /// An Envoy whose sync polls `control`, started now.
    fn with_envoy(control: ControlService, feed: &Value) -> Stack {
        Stack::with_envoy_as(control, feed, false)
    }

    /// [`Stack::start`] with the filter-only bootstrap: no singleton service (as Istio's
    /// `WasmPlugin` and Envoy Gateway deploy the module); a worker runs the sync.
    fn start_filter_only(feed: &Value) -> Stack {
        let control = ControlService::start(&ControlOptions::new())
            .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
        Stack::with_envoy_as(control, feed, true)
    }

    fn with_envoy_as(control: ControlService, feed: &Value, filter_only: bool) -> Stack {
        let opts = EnvoyOptions {
            filter_only,
            // The JWT secret as a plain fixture value; the feed token the way a
            // deployment passes it, from Envoy's own environment.
            env: vec![(JWT_SECRET_ENV.into(), JWT_SECRET.into())],
            concurrency: 2,
            ..EnvoyOptions::new(local_policy(feed))
        };
        let link = FeedLink {
            control: control.addr(),
            secret_env: vec![(FEED_TOKEN_ENV.into(), control.feed_token().into())],
        };
        let envoy = Envoy::start_with_feed(&opts, &link)
            .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
        Stack { control, envoy }
    }

    /// Both logs and the feed metrics, for a failure message.
    fn diagnostics(&self) -> String {
        let metrics: Vec<String> = [
            "version",
            "failures",
            "last_sync_age_seconds",
            "stale_served",
        ]
        .iter()
        .map(|m| {
            let name = format!("wasmcustom.gatehouse.feed.{m}");
            format!("{name}: {:?}", self.envoy.stat(&name).ok().flatten())
        })
        .collect();
        format!(
            "{}\n--- Envoy log (last lines) ---\n{}\n--- control log (last lines) ---\n{}",
            metrics.join("\n"),
            self.envoy.log_tail(25),
            self.control.log_tail(10)
        )
    }

    fn call(&self, path: &str, api_key: Option<&str>) -> ClientResponse {
        let req = ClientRequest {
            method: "GET".into(),
            path: path.into(),
            headers: api_key
                .map(|k| ("x-api-key".to_string(), k.as_bytes().to_vec()))
                .into_iter()
                .collect(),
            body: Vec::new(),
        };
        self.envoy
            .send(&req)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    fn with_key(&self, key: &IssuedKey) -> ClientResponse {
        self.call("/v1/things", Some(&key.api_key))
    }

    fn issue(&self, user: &str) -> IssuedKey {
        self.control
            .issue_key(user, "tenant_demo", PLAN)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    fn revoke(&self, key: &IssuedKey) {
        self.control
            .revoke_key(&key.id)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.diagnostics()))
    }

    /// Asks Envoy with `key` every `every` until `done` holds for the answer; returns
    /// that answer and how long it took. Past `bound` the test fails.
    fn until(
        &self,
        what: &str,
        key: &IssuedKey,
        (every, bound): (Duration, Duration),
        done: impl Fn(&ClientResponse) -> bool,
    ) -> (ClientResponse, Duration) {
        let start = stopwatch();
        loop {
            let resp = self.with_key(key);
            if done(&resp) {
                return (resp, start.elapsed());
            }
            if start.elapsed() > bound {
                panic!(
                    "{what}: still {} after {bound:?} ({})\n{}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body),
                    self.diagnostics()
                );
            }
            std::thread::sleep(every);
        }
    }

    /// Waits until Envoy lets `key` through, and checks the identity it forwards.
    fn until_accepted(&self, key: &IssuedKey) -> Duration {
        let (resp, took) = self.until(
            &format!("issued key {}", key.id),
            key,
            (PROBE_EVERY, PROPAGATION_BOUND),
            |r| r.status == 200,
        );
        let echoed = json_body(&resp);
        assert_eq!(
            echoed["headers"]["x-gatehouse-key-id"], key.id,
            "the upstream sees the key's id: {echoed}"
        );
        took
    }

    /// Waits until Envoy refuses `key`; the refusal is the standard 401.
    fn until_refused(&self, key: &IssuedKey) -> Duration {
        let (resp, took) = self.until(
            &format!("revoked key {}", key.id),
            key,
            (PROBE_EVERY, PROPAGATION_BOUND),
            |r| r.status != 200,
        );
        assert_refused(&resp, 401, "INVALID_CREDENTIALS");
        took
    }

    /// Stops the control service (SIGTERM, as an operator would).
    fn stop_control(&mut self) {
        self.control
            .stop()
            .unwrap_or_else(|e| panic!("stopping gatehouse-control: {e:#}"));
    }

    /// Starts the control service again: same address, same database file.
    fn restart_control(&mut self) {
        self.control
            .restart()
            .unwrap_or_else(|e| panic!("restarting gatehouse-control: {e:#}"));
    }

    fn feed_metric(&self, name: &str) -> u64 {
        self.envoy
            .stat(&format!("wasmcustom.gatehouse.feed.{name}"))
            .unwrap_or_else(|e| panic!("{e:#}"))
            .unwrap_or(0)
    }
}

fn json_body(resp: &ClientResponse) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&resp.body)
        )
    })
}

fn header<'a>(resp: &'a ClientResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn assert_refused(resp: &ClientResponse, status: u16, code: &str) {
    assert_eq!(
        resp.status,
        status,
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(json_body(resp)["code"], code);
}

/// Nearest-rank percentile of sorted durations (`q` in 0..=1).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The default feed timings of `policies/local.yaml`.
fn as_shipped() -> Value {
    json!({})
}

/// Short timings, so an outage reaches the staleness bound in seconds: the cache may be
/// 4 s old (interval 1 s + long poll 1 s leave it up to 2 s old when healthy).
fn short_staleness(on_stale: &str) -> Value {
    json!({ "interval": "1s", "wait": "1s", "staleness": "4s", "on_stale": on_stale })
}

#[test]
fn the_rendered_bootstrap_passes_the_feed_token_by_name_and_points_the_control_cluster_at_the_service()
 {
    let stack = Stack::start(&as_shipped());
    let yaml = stack.envoy.config().unwrap();
    assert!(
        !yaml.contains(stack.control.feed_token()),
        "the feed token is never written into the bootstrap"
    );
    let tree = gatehouse_core::policy::yaml::parse(&yaml)
        .unwrap()
        .to_json();
    let sync = &tree["bootstrap_extensions"][0]["typed_config"]["config"];
    assert_eq!(sync["root_id"], "gatehouse_sync");
    let env = &sync["vm_config"]["environment_variables"];
    let passed: Vec<&str> = env["host_env_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(passed.contains(&FEED_TOKEN_ENV), "{passed:?}");
    assert!(env["key_values"].get(FEED_TOKEN_ENV).is_none());
    let cluster = tree["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "gatehouse_control")
        .expect("a cluster named by feed.cluster");
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["address"], stack.control.addr().ip().to_string());
    assert_eq!(address["port_value"], stack.control.addr().port());

    // And the token got there: the sync's polls are accepted.
    let key = stack.issue("user_config");
    stack.until_accepted(&key);
    assert_eq!(stack.feed_metric("failures"), 0, "{}", stack.diagnostics());
}

/// A pause before each revocation, from `GATEHOUSE_E2E_REVOCATION_PAUSE_MS` (default
/// none: the cycles run back to back, some hundred changes a second). A pause of a
/// second or more measures revocations that do not queue behind other changes.
fn revocation_pause() -> Duration {
    std::env::var("GATEHOUSE_E2E_REVOCATION_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

/// Issue and revocation latencies, printed as benches/README.md reports them.
fn report_latencies(
    stack: &Stack,
    issued: &mut [Duration],
    revoked: &mut [Duration],
    pause: Duration,
) {
    issued.sort();
    revoked.sort();
    for (what, sorted) in [("issue", &*issued), ("revocation", &*revoked)] {
        println!(
            "{what} latency over {} keys (API answer to Envoy's first changed answer; \
             pause before each revocation {pause:?}): p50 {}, p90 {}, p99 {}, max {}; \
             {} over 100 ms",
            sorted.len(),
            ms(percentile(sorted, 0.50)),
            ms(percentile(sorted, 0.90)),
            ms(percentile(sorted, 0.99)),
            ms(percentile(sorted, 1.0)),
            sorted
                .iter()
                .filter(|d| **d > Duration::from_millis(100))
                .count(),
        );
    }
    println!(
        "feed: {} polls failed, version {}",
        stack.feed_metric("failures"),
        stack.feed_metric("version")
    );
}

#[test]
fn in_filter_only_mode_a_worker_runs_the_sync_and_revocations_reach_envoy() {
    // The bootstrap Istio and Envoy Gateway generate: no bootstrap_extensions.
    let stack = Stack::start_filter_only(&as_shipped());
    let yaml = stack.envoy.config().unwrap();
    let tree = gatehouse_core::policy::yaml::parse(&yaml)
        .unwrap()
        .to_json();
    assert_eq!(tree["bootstrap_extensions"], json!([]));
    let mut issued = Vec::new();
    let mut revoked = Vec::new();
    for i in 0..20 {
        let key = stack.issue(&format!("user_filter_only_{i}"));
        issued.push(stack.until_accepted(&key));
        stack.revoke(&key);
        revoked.push(stack.until_refused(&key));
    }
    let log = stack.envoy.log();
    assert!(
        log.contains("this worker runs the sync (filter-only mode"),
        "{}",
        stack.diagnostics()
    );
    println!("filter-only mode (2 workers, no singleton service):");
    report_latencies(&stack, &mut issued, &mut revoked, Duration::ZERO);
}

#[test]
fn keys_revoked_through_the_api_are_refused_by_envoy_and_the_revocation_latency_is_reported() {
    let stack = Stack::start(&as_shipped());
    let pause = revocation_pause();
    let mut issued = Vec::with_capacity(REVOCATIONS);
    let mut revoked = Vec::with_capacity(REVOCATIONS);
    for i in 0..REVOCATIONS {
        let key = stack.issue(&format!("user_rev_{i}"));
        issued.push(stack.until_accepted(&key));
        std::thread::sleep(pause);
        stack.revoke(&key);
        // From the moment DELETE has answered to the first refusal through Envoy.
        revoked.push(stack.until_refused(&key));
    }
    report_latencies(&stack, &mut issued, &mut revoked, pause);
}

#[test]
fn without_the_control_service_keys_work_until_the_staleness_bound_then_fail_closed_and_recover_after_a_restart()
 {
    let mut stack = Stack::start(&short_staleness("fail_closed"));
    let kept = stack.issue("user_kept");
    let gone = stack.issue("user_gone");
    stack.until_accepted(&kept);
    stack.until_accepted(&gone);
    stack.revoke(&gone);
    stack.until_refused(&gone);

    stack.stop_control();
    assert_eq!(
        stack.with_key(&kept).status,
        200,
        "a fresh cache serves without the control service\n{}",
        stack.diagnostics()
    );
    assert_refused(&stack.with_key(&gone), 401, "INVALID_CREDENTIALS");

    // Past the bound every credential is refused, revoked or not; anonymous calls are not
    // the cache's business.
    let (refused, took) = stack.until(
        "the staleness bound",
        &kept,
        (SLOW_PROBE_EVERY, Duration::from_secs(30)),
        |r| r.status != 200,
    );
    println!(
        "fail_closed: the last cached key was refused {} after the control service stopped",
        ms(took)
    );
    assert_refused(&refused, 503, "AUTH_UNAVAILABLE");
    assert_eq!(
        json_body(&refused)["error"],
        "authentication is temporarily unavailable"
    );
    assert!(header(&refused, "retry-after").is_some());
    assert_refused(&stack.with_key(&gone), 503, "AUTH_UNAVAILABLE");
    assert_eq!(stack.call("/healthz", None).status, 200);
    assert_refused(&stack.call("/v1/things", None), 401, "MISSING_CREDENTIALS");
    assert!(stack.feed_metric("failures") > 0, "{}", stack.diagnostics());

    // The same database: the cache catches up, and keeps the revocation made before.
    stack.restart_control();
    let (_, took) = stack.until(
        "the restart",
        &kept,
        (SLOW_PROBE_EVERY, PROPAGATION_BOUND),
        |r| r.status == 200,
    );
    println!(
        "fail_closed: keys worked again {} after the restart",
        ms(took)
    );
    assert_refused(&stack.with_key(&gone), 401, "INVALID_CREDENTIALS");

    // Changes made after the restart reach Envoy.
    let fresh = stack.issue("user_fresh");
    stack.until_accepted(&fresh);
    stack.revoke(&kept);
    stack.until_refused(&kept);
    assert_eq!(stack.with_key(&fresh).status, 200);
}

#[test]
fn with_keep_serving_a_stale_cache_still_serves_its_keys_and_refuses_its_revoked_ones() {
    let mut stack = Stack::start(&short_staleness("keep_serving"));
    let kept = stack.issue("user_kept");
    let gone = stack.issue("user_gone");
    stack.until_accepted(&kept);
    stack.until_accepted(&gone);
    stack.revoke(&gone);
    stack.until_refused(&gone);

    stack.stop_control();
    // The sync reports the cache's age on every tick: wait until it is past the bound.
    let start = stopwatch();
    while stack.feed_metric("last_sync_age_seconds") <= 4 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the cache never got stale\n{}",
            stack.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let resp = stack.with_key(&kept);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_refused(&stack.with_key(&gone), 401, "INVALID_CREDENTIALS");
    // Workers flush their counters on their one-second tick.
    let start = stopwatch();
    while stack.feed_metric("stale_served") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stale_served never counted\n{}",
            stack.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    stack.restart_control();
    stack.revoke(&kept);
    stack.until_refused(&kept);
}

/// A snapshot larger than a page: the control service answers pages of 100 records and
/// holds 350 keys, so a fresh Envoy reads four pages; every key, first page to last,
/// works through it, a key the database never had is a 401 once the snapshot is in, and a
/// change after it arrives as usual.
#[test]
fn a_fresh_envoy_reads_a_snapshot_of_several_pages_and_then_its_changes() {
    const KEYS: usize = 350;
    let opts = ControlOptions {
        env: vec![("GATEHOUSE_FEED_PAGE_SIZE".into(), "100".into())],
        ..ControlOptions::new()
    };
    let control = ControlService::start(&opts)
        .unwrap_or_else(|e| panic!("could not start gatehouse-control: {e:#}"));
    // Five keys a user, the per-user limit.
    let keys: Vec<IssuedKey> = (0..KEYS)
        .map(|i| {
            control
                .issue_key(&format!("user_paged_{}", i / 5), "tenant_demo", PLAN)
                .unwrap_or_else(|e| panic!("{e:#}"))
        })
        .collect();
    let stack = Stack::with_envoy(control, &as_shipped());
    for key in [&keys[0], &keys[KEYS / 2], &keys[KEYS - 1]] {
        let took = stack.until_accepted(key);
        println!("paged snapshot: key {} accepted after {}", key.id, ms(took));
    }
    let bound = stopwatch();
    while stack.feed_metric("version") == 0 {
        assert!(
            bound.elapsed() < PROPAGATION_BOUND,
            "{}",
            stack.diagnostics()
        );
        std::thread::sleep(PROBE_EVERY);
    }
    assert!(
        stack.feed_metric("snapshot_pages") >= 4,
        "350 keys in pages of 100: {}",
        stack.diagnostics()
    );
    for key in &keys {
        assert_eq!(stack.with_key(key).status, 200, "key {}", key.id);
    }
    let stranger = stack.call("/v1/things", Some("ghk_0000000000000000000000000000"));
    assert!(
        matches!(stranger.status, 401),
        "{}",
        String::from_utf8_lossy(&stranger.body)
    );
    // Changes after the snapshot: a revocation and a new key.
    stack.revoke(&keys[7]);
    stack.until_refused(&keys[7]);
    let late = stack.issue("user_paged_late");
    stack.until_accepted(&late);
}

/// Envoy polls the stack's replica A; keys are issued and revoked through replica B, on
/// the same database, and each change must reach Envoy.
fn changes_through_replica_b_reach_envoy(stack: &Stack, b: &ControlService, database: &str) {
    const ROUNDS: usize = 5;
    let first = stack.issue("user_replica_a");
    stack.until_accepted(&first);
    // Each wait is bounded by PROPAGATION_BOUND, half the sync's long-poll `wait`: a
    // change that only reached A's held poll at the end of its wait would fail it.
    for round in 0..ROUNDS {
        let key = b
            .issue_key(&format!("user_replica_b{round}"), "tenant_demo", PLAN)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", b.log_tail(10)));
        let issued = stack.until_accepted(&key);
        b.revoke_key(&key.id)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", b.log_tail(10)));
        let revoked = stack.until_refused(&key);
        println!(
            "{database}: through replica B, to an Envoy polling A: issued key accepted \
             after {}, revoked key refused after {}",
            ms(issued),
            ms(revoked)
        );
    }
}

#[test]
fn keys_issued_and_revoked_through_another_replica_reach_envoy() {
    let stack = Stack::start(&as_shipped());
    let b = stack
        .control
        .replica()
        .unwrap_or_else(|e| panic!("could not start a second gatehouse-control: {e:#}"));
    changes_through_replica_b_reach_envoy(&stack, &b, "SQLite");
}

/// The same on PostgreSQL, where B's commit reaches A by `LISTEN`/`NOTIFY`; and again
/// after B is stopped and started on the same port (its listener is a new connection).
#[test]
fn on_postgresql_keys_issued_and_revoked_through_another_replica_reach_envoy() {
    // Declared first, so dropped last: the replicas go before their database.
    let cluster =
        PostgresCluster::start().unwrap_or_else(|e| panic!("could not start PostgreSQL: {e:#}"));
    let url = cluster
        .create_database("gatehouse_replicas")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let control = ControlService::start(&ControlOptions {
        database: Database::Postgres(url),
        ..ControlOptions::new()
    })
    .unwrap_or_else(|e| panic!("could not start gatehouse-control on PostgreSQL: {e:#}"));
    let stack = Stack::with_envoy(control, &as_shipped());
    let mut b = stack
        .control
        .replica()
        .unwrap_or_else(|e| panic!("could not start a second gatehouse-control: {e:#}"));
    changes_through_replica_b_reach_envoy(&stack, &b, "PostgreSQL");
    b.restart()
        .unwrap_or_else(|e| panic!("restarting replica B: {e:#}"));
    changes_through_replica_b_reach_envoy(&stack, &b, "PostgreSQL, B restarted");
}
