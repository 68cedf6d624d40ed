//! The health route (`health:` in the policy) in the harness with a feed: the module runs
//! as the sync (the singleton service) and as worker filters; the control service is a
//! scripted upstream. Without a feed the route is always ready: policies/health.cases.yaml.
//! In a real Envoy with a real control service: health_envoy_e2e.rs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{Harness, HttpCall, Outcome, Reply, Request, Route, Upstream};
use serde_json::{Value, json};
use std::time::Duration;

/// 2026-01-01T00:00:00Z: the virtual wall clock at build.
const T0: u64 = 1_767_225_600;
const FEED_TOKEN: &str = "feed-token-not-the-admin-token";

fn policy() -> String {
    json!({
        "version": 1,
        "api_key": { "format": "opaque" },
        "health": { "path": "/readyz" },
        "routes": [ { "match": { "path_prefix": "/" } } ],
        "feed": { "cluster": "control", "token_env": "FEED_TOKEN", "staleness": "30s" }
    })
    .to_string()
}

fn snapshot(version: u64) -> String {
    json!({ "epoch": "e1", "version": version, "full": true, "keys": [], "users": [], "jtis": [] })
        .to_string()
}

/// A control service that has not answered yet: every poll hangs (and times out).
fn silent() -> Upstream {
    Upstream::new("control")
        .route(Route::post("/v1/events").reply(Reply::json(202, "{}")))
        .route(Route::get("/v1/cache*").reply(Reply::hang()))
}

/// One whose feed is at `version`: a snapshot for `since=0`, nothing new (held 1 s, so
/// the answers keep coming) for a poll from `version`.
fn answering(version: u64) -> Upstream {
    let nothing_new = json!({ "epoch": "e1", "version": version, "full": false,
                              "keys": [], "users": [], "jtis": [] });
    Upstream::new("control")
        .route(Route::post("/v1/events").reply(Reply::json(202, "{}")))
        .route(Route::get("/v1/cache?since=0&*").reply(Reply::json(200, &snapshot(version))))
        .route(
            Route::get("/v1/cache*")
                .reply(Reply::json(200, &nothing_new.to_string()).delay(secs(1))),
        )
}

/// One that fails every poll.
fn failing() -> Upstream {
    Upstream::new("control")
        .route(Route::post("/v1/events").reply(Reply::json(202, "{}")))
        .route(Route::get("/v1/cache*").reply(Reply::status(500)))
}

fn harness(control: Upstream) -> Harness {
    let p = policy();
    Harness::builder(default_wasm())
        .plugin_config(p.clone())
        .singleton(p)
        .workers(2)
        .env("FEED_TOKEN", FEED_TOKEN)
        .time(T0 * 1_000_000_000)
        .upstream(control)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn probe(h: &mut Harness, method: &str) -> Outcome {
    let req = match method {
        "GET" => Request::get("/readyz"),
        m => Request::new(m, "/readyz"),
    };
    h.request(req.header("x-request-id", "probe-1")).unwrap()
}

/// `last_success` of `feed/state`: what the cache's age counts from.
fn last_success(h: &Harness) -> u64 {
    let (state, _) = h.shared_data("feed/state").expect("a snapshot applied");
    gatehouse_core::sync::feed::SyncState::decode(&state)
        .expect("the sync's state")
        .last_success
}

fn now(h: &Harness) -> u64 {
    h.now_nanos() / 1_000_000_000
}

fn posts(h: &Harness) -> Vec<HttpCall> {
    h.http_calls()
        .into_iter()
        .filter(|c| c.path == gatehouse_core::observe::events::PATH)
        .collect()
}

fn assert_not_ready(out: &Outcome, error: &str) {
    assert_eq!(out.status, 503, "{}", out.text());
    let body: Value = out.json();
    assert_eq!(
        body,
        json!({ "error": error, "code": "NOT_READY",
                "timestamp": body["timestamp"].clone(), "request_id": "probe-1" })
    );
    assert_eq!(out.header("retry-after"), Some("5"));
    assert_eq!(out.header("cache-control"), Some("no-store"));
    assert!(out.upstream.is_none(), "never sent upstream");
}

#[test]
fn not_ready_until_the_first_snapshot_then_ready_with_the_cache_version_and_age() {
    let mut h = harness(silent());
    h.advance(secs(3)).unwrap();
    assert!(h.shared_data("feed/state").is_none(), "nothing applied");
    let out = probe(&mut h, "GET");
    assert_not_ready(&out, "the key cache has not received its first snapshot");
    let head = probe(&mut h, "HEAD");
    assert_eq!((head.status, head.body.len()), (503, 0), "HEAD: no body");
    assert_eq!(head.header("retry-after"), Some("5"));

    // The control service answers: the next poll brings the snapshot.
    h.set_upstream(answering(9));
    h.advance(secs(30)).unwrap();
    let out = probe(&mut h, "GET");
    assert_eq!(out.status, 200, "{}", out.text());
    let age = now(&h) - last_success(&h);
    assert_eq!(
        out.text(),
        format!(r#"{{"status":"ok","cache_version":9,"cache_age_seconds":{age}}}"#)
    );
    assert_eq!(out.header("content-type"), Some("application/json"));
    assert_eq!(out.header("cache-control"), Some("no-store"));
    assert!(out.upstream.is_none(), "never sent upstream");
    let head = probe(&mut h, "HEAD");
    assert_eq!((head.status, head.body.len()), (200, 0));
    h.assert_no_trap().unwrap();
}

#[test]
fn past_feed_staleness_it_says_how_old_the_cache_is_and_recovers_with_the_feed() {
    let mut h = harness(answering(4));
    h.advance(secs(1)).unwrap();
    assert_eq!(probe(&mut h, "GET").status, 200);

    h.set_upstream(failing());
    h.advance(secs(40)).unwrap();
    let age = now(&h) - last_success(&h);
    assert!(age > 30, "{age}");
    let out = probe(&mut h, "GET");
    assert_not_ready(
        &out,
        &format!("the key cache is {age} s old, over feed.staleness"),
    );

    h.set_upstream(answering(4));
    h.advance(secs(2)).unwrap();
    assert_eq!(probe(&mut h, "GET").status, 200, "the feed is back");
    h.assert_no_trap().unwrap();
}

#[test]
fn probes_are_counted_apart_and_only_a_wrong_method_reaches_the_refusal_audit() {
    let mut h = harness(silent());
    for _ in 0..3 {
        assert_eq!(probe(&mut h, "GET").status, 503);
    }
    let out = probe(&mut h, "POST");
    assert_eq!(out.status, 405, "{}", out.text());
    assert_eq!(out.json()["code"], "METHOD_NOT_ALLOWED");
    assert_eq!(out.header("allow"), Some("GET, HEAD"));
    // Every worker's tick, then the sync's post.
    h.advance(Duration::from_millis(1200)).unwrap();
    assert_eq!(h.metric("gatehouse.health.not_ready"), Some(3));
    assert_eq!(h.metric("gatehouse.health.ready"), Some(0));
    assert_eq!(h.metric("gatehouse.refused.method_not_allowed"), Some(1));
    assert_eq!(h.metric("gatehouse.requests.refused"), Some(1));
    assert_eq!(h.metric("gatehouse.requests.allowed"), Some(0));
    let sent = posts(&h);
    assert_eq!(sent.len(), 1, "the 405 is audited");
    let batch: Value = serde_json::from_slice(&sent[0].body).unwrap();
    let codes: Vec<&str> = batch["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["METHOD_NOT_ALLOWED"], "{batch}");
    assert_eq!(
        batch["requests"],
        json!([{ "plan": "", "allowed": 0, "refused": 1 }])
    );
    let logs: Vec<String> = h.logs().iter().map(ToString::to_string).collect();
    let logs = logs.join("\n");
    assert!(
        !logs.contains("NOT_READY"),
        "no refusal line for a probe:\n{logs}"
    );
    assert!(logs.contains("METHOD_NOT_ALLOWED"), "{logs}");
}
