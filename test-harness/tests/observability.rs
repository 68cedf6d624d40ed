//! Observability through the real module in the harness: Envoy stats after a tick, the
//! refusal log line, and the refusal audit (worker batches on the `gatehouse_events`
//! queue, merged by the sync into `POST /v1/events` on a scripted control service).
//!
//! The policy is `policies/webhooks.yaml` (every webhook provider) with a key on a tiny
//! plan, an HS256 JWT key, its `/v1/` route made internal and, where the audit is tested,
//! a feed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod webhook_fixtures;

use gatehouse_core::authn::api_key::KeyHash;
use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens::{hmac_secret, mint};
use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{
    Harness, HarnessBuilder, HttpCall, LogLevel, Reply, Request, Route, Upstream, VmId,
};
use serde_json::{Value, json};
use std::time::Duration;
use webhook_fixtures::{GITHUB_SECRET, T0, T0_NANOS, env, event_body, github, policy_json};

/// A real key of the `tiny` plan (2 requests a minute), declared in the policy.
const KEY: &str = "ghk_observed_key_value_0123456789abcdef";
const FEED_TOKEN: &str = "feed-token-for-observability-0123";

fn sha(s: &str) -> String {
    KeyHash::of_key(s.as_bytes()).to_hex()
}

/// `policies/webhooks.yaml` plus a key, a JWT key, an internal `/v1/` and `extra` at the
/// top level.
fn policy(extra: Value) -> String {
    let mut p: Value = serde_json::from_str(&policy_json()).unwrap();
    p["api_key"] = json!({ "format": "opaque" });
    p["plans"] = json!({ "tiny": { "requests_per_minute": 2 } });
    p["keys"] = json!([{ "id": "key_obs", "sha256": sha(KEY), "user": "user_obs",
                         "tenant": "tenant_1", "plan": "tiny" }]);
    p["jwt"] = json!({ "keys": [ { "alg": "HS256", "secret_env": "JWT_SECRET" } ],
                       "default_tenant": "tenant_1", "default_plan": "tiny" });
    // Its catch-all `/v1/` route, made internal: anonymous callers get 401 there.
    let api = p["routes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "api")
        .unwrap();
    api["audience"] = json!("internal");
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    let json = p.to_string();
    gatehouse_core::policy::Policy::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("invalid test policy: {e}"));
    json
}

fn builder(policy: &str) -> HarnessBuilder {
    let mut b = Harness::builder(default_wasm())
        .plugin_config(policy)
        .env(
            "JWT_SECRET",
            std::str::from_utf8(&hmac_secret(Alg::HS256)).unwrap(),
        )
        .env("FEED_TOKEN", FEED_TOKEN)
        .time(T0_NANOS)
        .allow_on_headers_stop_iteration(true);
    for (k, v) in env() {
        b = b.env(&k, &v);
    }
    b
}

fn keyed(path: &str) -> Request {
    Request::get(path)
        .header("x-api-key", KEY)
        .header("x-request-id", "req-key")
}

/// A JWT of user `user_jwt` (plan `tiny` by default), valid for an hour.
fn token() -> String {
    mint(
        Alg::HS256,
        None,
        &format!(
            r#"{{"sub":"user_jwt","iat":{},"exp":{}}}"#,
            T0 - 10,
            T0 + 3600
        ),
    )
}

fn metric(h: &Harness, name: &str) -> u64 {
    h.metric(name)
        .unwrap_or_else(|| panic!("{name} is not defined"))
}

/// Refusal log lines: the module's lines that parse as a JSON object with a `code`.
fn refusal_lines(h: &Harness) -> Vec<(LogLevel, Value)> {
    h.logs()
        .into_iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_str(&r.message).ok()?;
            v.get("code")?;
            Some((r.level, v))
        })
        .collect()
}

#[test]
fn counters_have_their_values_after_one_tick_and_allowed_requests_make_no_extra_host_calls() {
    let mut h = builder(&policy(json!({}))).workers(2).build().unwrap();
    // Two allowed requests on the key's plan (its limit), one anonymous webhook, then
    // refusals: rate limited, no credential, an unknown key, no route.
    let before = h.host_call_counts();
    for _ in 0..2 {
        assert_eq!(h.request(keyed("/v1/things")).unwrap().status, 200);
    }
    let after = h.host_call_counts();
    for call in [
        "proxy_increment_metric",
        "proxy_record_metric",
        "proxy_log",
        "proxy_enqueue_shared_queue",
        "proxy_get_property",
    ] {
        assert_eq!(
            after.get(call),
            before.get(call),
            "an allowed request called {call}"
        );
    }
    let body = event_body(100);
    let hook = Request::post("/webhooks/github")
        .header("x-hub-signature-256", github(GITHUB_SECRET, &body))
        .body(body.clone());
    assert_eq!(h.request(hook).unwrap().status, 200);
    assert_eq!(h.request(keyed("/v1/things")).unwrap().status, 429);
    assert_eq!(h.request(Request::get("/v1/things")).unwrap().status, 401);
    let unknown = Request::get("/v1/things").header("x-api-key", "not-a-key-we-know");
    assert_eq!(h.request(unknown).unwrap().status, 401);
    assert_eq!(h.request(Request::get("/nowhere")).unwrap().status, 404);
    let bad_hook = Request::post("/webhooks/github")
        .header("x-hub-signature-256", github("wrong secret", &body))
        .body(body);
    assert_eq!(h.request(bad_hook).unwrap().status, 401);
    // Nothing reaches Envoy's stats before the workers' tick ...
    assert_eq!(metric(&h, "gatehouse.requests.allowed"), 0);
    // ... and all of it after one.
    h.advance(Duration::from_secs(1)).unwrap();
    for (name, value) in [
        ("gatehouse.requests.allowed", 3),
        ("gatehouse.requests.refused", 5),
        ("gatehouse.plan.tiny.allowed", 2),
        ("gatehouse.plan.tiny.refused", 1),
        ("gatehouse.plan.anonymous.allowed", 1),
        ("gatehouse.plan.anonymous.refused", 4),
        ("gatehouse.plan.team.allowed", 0),
        ("gatehouse.refused.rate_limited", 1),
        ("gatehouse.refused.missing_credentials", 1),
        ("gatehouse.refused.unknown_key", 1),
        ("gatehouse.refused.not_found", 1),
        ("gatehouse.refused.invalid_signature", 1),
        ("gatehouse.refused.forbidden", 0),
        ("gatehouse.rate_limited", 1),
        ("gatehouse.webhook_refused", 1),
        ("gatehouse.webhook.signature_failures.github", 1),
        ("gatehouse.webhook.signature_failures.stripe", 0),
        ("gatehouse.rate_limit_contention", 0),
        ("gatehouse.rate_limit_cas_retries", 0),
    ] {
        assert_eq!(metric(&h, name), value, "{name}");
    }
    // Counted once: the next tick adds nothing.
    h.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(metric(&h, "gatehouse.requests.refused"), 5);
    h.assert_no_trap().unwrap();
}

#[test]
fn each_refusal_writes_one_json_line_at_the_policys_level() {
    let mut h = builder(&policy(json!({ "logging": { "refusals": "warn" } })))
        .build()
        .unwrap();
    for _ in 0..3 {
        h.request(keyed("/v1/things?q=1")).unwrap();
    }
    h.request(
        Request::get("/nowhere")
            .header("x-request-id", "id-\"quoted\"")
            .source("198.51.100.9:4321"),
    )
    .unwrap();
    let lines = refusal_lines(&h);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (level, limited) = &lines[0];
    assert_eq!(*level, LogLevel::Warn);
    let time = limited["time"].as_str().unwrap();
    assert!(time.starts_with("2026-01-01T00:00:00"), "{time}");
    let mut fields: Vec<&str> = limited
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "client",
            "code",
            "key_id",
            "method",
            "reason",
            "request_id",
            "route",
            "status",
            "time",
            "user"
        ]
    );
    assert_eq!(limited["request_id"], "req-key");
    assert_eq!(limited["method"], "GET");
    assert_eq!(limited["route"], "/v1/");
    assert_eq!(limited["code"], "RATE_LIMITED");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["key_id"], "key_obs");
    assert_eq!(limited["user"], "user_obs");
    assert!(
        limited["client"]
            .as_str()
            .unwrap()
            .parse::<std::net::IpAddr>()
            .is_ok()
    );
    let (_, lost) = &lines[1];
    assert_eq!(lost["route"], Value::Null);
    assert_eq!(lost["code"], "NOT_FOUND");
    assert_eq!(lost["request_id"], "id-\"quoted\"");
    assert_eq!(lost["client"], "198.51.100.9");
    assert_eq!(lost.get("user"), None);

    // `off`: no line; `debug` under Envoy's default level (info): no line either.
    for level in ["off", "debug"] {
        let mut h = builder(&policy(json!({ "logging": { "refusals": level } })))
            .build()
            .unwrap();
        h.request(Request::get("/nowhere")).unwrap();
        assert_eq!(refusal_lines(&h), vec![], "{level}");
    }
    // Envoy at debug shows the debug lines.
    let mut h = builder(&policy(json!({ "logging": { "refusals": "debug" } })))
        .log_level(LogLevel::Debug)
        .build()
        .unwrap();
    h.request(Request::get("/nowhere")).unwrap();
    let lines = refusal_lines(&h);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].0, LogLevel::Debug);
}

/// The control service: a feed at version 3 with no keys, and `POST /v1/events` answered
/// with `events_status`.
fn control(events_status: u16) -> Upstream {
    let feed = json!({ "epoch": "e1", "version": 3, "full": true, "keys": [], "users": [],
                       "jtis": [] })
    .to_string();
    Upstream::new("control")
        .route(
            Route::get("/v1/cache?since=3&epoch=e1&wait=20")
                .reply(Reply::json(200, &feed).delay(Duration::from_secs(20))),
        )
        .route(Route::get("/v1/cache*").reply(Reply::json(200, &feed)))
        .route(Route::post("/v1/events").reply(Reply::json(
            events_status,
            r#"{"accepted":{"refusals":0,"key_uses":0,"requests":0}}"#,
        )))
}

fn with_feed() -> String {
    policy(json!({ "feed": { "cluster": "control", "token_env": "FEED_TOKEN" } }))
}

fn audit_harness(events_status: u16) -> Harness {
    let p = with_feed();
    let mut h = builder(&p)
        .singleton(p)
        .workers(2)
        .node_id("envoy-node-7")
        .upstream(control(events_status))
        .build()
        .unwrap();
    // The first poll, so the cache is fed (version 3).
    h.advance(Duration::from_secs(1)).unwrap();
    h
}

/// Long enough for every worker's one-second tick and the sync's next 100 ms tick after
/// it: the batches are on the queue, merged, and posted.
fn flush(h: &mut Harness) {
    h.advance(Duration::from_millis(1200)).unwrap();
}

fn posts(h: &Harness) -> Vec<HttpCall> {
    h.http_calls()
        .into_iter()
        .filter(|c| c.path == "/v1/events")
        .collect()
}

fn posted(call: &HttpCall) -> Value {
    serde_json::from_slice(&call.body).unwrap()
}

#[test]
fn refusals_key_uses_and_plan_counts_are_posted_once_a_second_in_one_batch() {
    let mut h = audit_harness(202);
    assert_eq!(posts(&h).len(), 0, "nothing to report yet");
    // Worker 0 then worker 1 (requests alternate): two allowed key requests, one 429,
    // one anonymous 401. Reporting a key's use costs the request no host call (the clock
    // was read for the decision).
    let before = h.host_call_counts();
    h.request(keyed("/v1/a")).unwrap();
    let after = h.host_call_counts();
    let calls =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert_eq!(calls("proxy_get_current_time_nanoseconds"), 1);
    for name in [
        "proxy_increment_metric",
        "proxy_log",
        "proxy_enqueue_shared_queue",
        "proxy_resolve_shared_queue",
        "proxy_get_property",
    ] {
        assert_eq!(calls(name), 0, "{name}");
    }
    h.request(keyed("/v1/b")).unwrap();
    h.request(keyed("/v1/c")).unwrap();
    h.request(
        Request::get("/v1/d")
            .header("x-request-id", "r-anon")
            .source("203.0.113.7:5555"),
    )
    .unwrap();
    flush(&mut h);
    let sent = posts(&h);
    assert_eq!(sent.len(), 1, "one post for both workers' batches");
    let post = &sent[0];
    assert_eq!(post.vm, VmId::Singleton);
    assert_eq!(post.cluster, "control");
    assert_eq!(post.method, "POST");
    assert_eq!(
        post.header("authorization"),
        Some(format!("Bearer {FEED_TOKEN}").as_str())
    );
    assert_eq!(post.header("content-type"), Some("application/json"));
    let b = posted(post);
    let refusals = b["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 2, "{b}");
    let limited = refusals.iter().find(|r| r["status"] == 429).unwrap();
    let anonymous = refusals.iter().find(|r| r["status"] == 401).unwrap();
    let at = T0 + 1;
    assert_eq!(
        *limited,
        json!({ "at": at, "request_id": "req-key", "method": "GET", "route": "/v1/",
                "code": "RATE_LIMITED", "status": 429, "key_id": "key_obs",
                "user": "user_obs", "plan": "tiny",
                "client": limited["client"].clone() })
    );
    assert_eq!(
        *anonymous,
        json!({ "at": at, "request_id": "r-anon", "method": "GET", "route": "/v1/",
                "code": "MISSING_CREDENTIALS", "status": 401, "client": "203.0.113.7" })
    );
    // Each worker saw the key once: one use each, merged into the latest.
    assert_eq!(b["key_uses"], json!([{ "key_id": "key_obs", "at": at }]));
    assert_eq!(
        b["requests"],
        json!([{ "plan": "", "allowed": 0, "refused": 1 },
               { "plan": "tiny", "allowed": 2, "refused": 1 }])
    );
    assert_eq!(b["dropped"], 0);
    assert_eq!(b["proxy"], "envoy-node-7");
    assert_eq!(b["cache_version"], 3);

    // Within the minute the key's use is not reported again; a quiet second posts nothing.
    h.advance(Duration::from_secs(30)).unwrap();
    assert_eq!(posts(&h).len(), 1, "nothing happened: nothing posted");
    h.request(keyed("/v1/e")).unwrap();
    flush(&mut h);
    let b = posted(posts(&h).last().unwrap());
    assert_eq!(b["key_uses"], json!([]));
    assert_eq!(
        b["requests"],
        json!([{ "plan": "tiny", "allowed": 1, "refused": 0 }])
    );
    // A minute after it was reported, it is reported again.
    h.advance(Duration::from_secs(30)).unwrap();
    h.request(keyed("/v1/f")).unwrap();
    h.request(keyed("/v1/g")).unwrap();
    flush(&mut h);
    let b = posted(posts(&h).last().unwrap());
    let uses = b["key_uses"].as_array().unwrap();
    assert_eq!(uses.len(), 1, "{b}");
    assert!(uses[0]["at"].as_u64().unwrap() >= at + 60);

    h.tick().unwrap();
    let sent = posts(&h);
    assert_eq!(metric(&h, "gatehouse.events.posts"), sent.len() as u64);
    let refusals: usize = sent
        .iter()
        .map(|c| posted(c)["refusals"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        metric(&h, "gatehouse.events.refusals_posted"),
        refusals as u64
    );
    assert_eq!(metric(&h, "gatehouse.events.post_failures"), 0);
    h.assert_no_trap().unwrap();
}

#[test]
fn a_failed_post_is_sent_again_with_what_came_since_and_a_refused_one_is_dropped() {
    let mut h = audit_harness(503);
    let ids = |call: &HttpCall| -> Vec<Value> {
        posted(call)["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].clone())
            .collect()
    };
    h.request(Request::get("/v1/x").header("x-request-id", "first"))
        .unwrap();
    flush(&mut h);
    // Posted and refused (503), perhaps posted again already (a second later).
    let before = posts(&h).len();
    assert!(before >= 1);
    assert_eq!(ids(posts(&h).last().unwrap()), [json!("first")]);
    h.request(Request::get("/v1/x").header("x-request-id", "second"))
        .unwrap();
    flush(&mut h);
    let sent = posts(&h);
    assert_eq!(sent.len(), before + 1, "at most one post a second");
    let last = sent.last().unwrap();
    assert_eq!(ids(last), [json!("first"), json!("second")], "oldest first");
    assert_eq!(
        posted(last)["requests"],
        json!([{ "plan": "", "allowed": 0, "refused": 2 }])
    );
    // The server now refuses the batch as bad input: dropped, never sent again.
    h.set_upstream(control(400));
    flush(&mut h);
    let n = posts(&h).len();
    h.advance(Duration::from_secs(5)).unwrap();
    assert_eq!(posts(&h).len(), n, "a refused batch is not retried");
    h.tick().unwrap();
    assert!(metric(&h, "gatehouse.events.post_failures") >= 3);
    assert_eq!(metric(&h, "gatehouse.events.refusals_dropped"), 2);
    assert_eq!(metric(&h, "gatehouse.events.posts"), 0);
    h.assert_no_trap().unwrap();
}

#[test]
fn refusals_past_the_workers_bound_are_dropped_and_counted_until_the_sync_is_there() {
    // No sync: the queue never resolves, the worker keeps counting.
    let mut h = builder(&with_feed()).build().unwrap();
    for _ in 0..300 {
        h.request(Request::get("/nowhere")).unwrap();
    }
    h.advance(Duration::from_secs(2)).unwrap();
    assert_eq!(metric(&h, "gatehouse.requests.refused"), 300);
    assert_eq!(
        metric(&h, "gatehouse.events.refusals_dropped"),
        300 - gatehouse_core::observe::tally::MAX_REFUSALS as u64
    );
    h.assert_no_trap().unwrap();
}

#[test]
fn no_key_token_signature_or_secret_reaches_the_log_the_queue_or_the_post() {
    let p = with_feed();
    let mut h = builder(&p)
        .singleton(p)
        .node_id("envoy-node-7")
        .upstream(control(202))
        .log_level(LogLevel::Trace)
        .build()
        .unwrap();
    h.advance(Duration::from_secs(1)).unwrap();
    let jwt = token();
    let body = event_body(64);
    let signature = github(GITHUB_SECRET, &body);
    // A real key refused by its rate limit (the third request), a real token refused
    // alongside the key, a real token on no route, a correctly signed webhook with its
    // body changed.
    for _ in 0..3 {
        h.request(keyed("/v1/things")).unwrap();
    }
    let both = Request::get("/v1/things")
        .header("x-api-key", KEY)
        .header("authorization", format!("Bearer {jwt}"));
    assert_eq!(h.request(both).unwrap().status, 401);
    let lost = Request::get("/nowhere").header("authorization", format!("Bearer {jwt}"));
    assert_eq!(h.request(lost).unwrap().status, 404);
    let mut tampered = body.clone();
    tampered[0] ^= 1;
    let hook = Request::post("/webhooks/github")
        .header("x-hub-signature-256", &signature)
        .body(tampered);
    assert_eq!(h.request(hook).unwrap().status, 401);
    h.advance(Duration::from_secs(2)).unwrap();
    let sent = posts(&h);
    assert!(!sent.is_empty());
    let mut everything = String::new();
    for record in h.logs() {
        everything.push_str(&record.message);
        everything.push('\n');
    }
    for call in &sent {
        everything.push_str(&String::from_utf8_lossy(&call.body));
    }
    let refusals: usize = sent
        .iter()
        .map(|c| posted(c)["refusals"].as_array().unwrap().len())
        .sum();
    assert_eq!(refusals, 4, "every refusal was audited:\n{everything}");
    assert!(refusal_lines(&h).len() >= 4, "{everything}");
    let token_signature = jwt.rsplit('.').next().unwrap();
    let hex_signature = signature.trim_start_matches("sha256=");
    let jwt_secret = String::from_utf8(hmac_secret(Alg::HS256)).unwrap();
    for (what, secret) in [
        ("the API key", KEY),
        ("the token", jwt.as_str()),
        ("the token's signature", token_signature),
        ("the webhook signature", hex_signature),
        ("the webhook secret", GITHUB_SECRET),
        ("the JWT secret", jwt_secret.as_str()),
        ("the feed token", FEED_TOKEN),
    ] {
        assert!(
            !everything.contains(secret),
            "{what} leaked into the log or the audit:\n{everything}"
        );
        // Nor any long piece of it.
        let bytes = secret.as_bytes();
        for window in bytes.windows(16.min(bytes.len())) {
            let piece = String::from_utf8_lossy(window);
            assert!(
                !everything.contains(piece.as_ref()),
                "a piece of {what} ({piece}) leaked:\n{everything}"
            );
        }
    }
    h.assert_no_trap().unwrap();
}

#[test]
fn jwks_fetches_and_their_failures_are_counted() {
    let jwks_policy = json!({
        "version": 1,
        "jwt": {
            "jwks_url": { "cluster": "auth", "path": "/jwks", "refresh": "10m", "min_refetch": "30s" },
            "issuers": "any",
            "audiences": "any",
            "default_tenant": "t1",
            "default_plan": "free"
        },
        "routes": [ { "match": { "path_prefix": "/v1/" } } ]
    })
    .to_string();
    let failing = Upstream::new("auth").route(Route::get("/jwks").reply(Reply::status(500)));
    let mut h = Harness::builder(default_wasm())
        .plugin_config(jwks_policy)
        .time(T0_NANOS)
        .workers(2)
        .upstream(failing)
        .build()
        .unwrap();
    h.advance(Duration::from_secs(2)).unwrap();
    let jwk: Value = serde_json::from_str(&gatehouse_core::authn::jwt::test_tokens::public_jwk(
        Alg::ES256,
        Some("es-1"),
    ))
    .unwrap();
    let keys = json!({ "keys": [jwk] }).to_string();
    h.set_upstream(Upstream::new("auth").route(Route::get("/jwks").reply(Reply::json(200, &keys))));
    h.advance(Duration::from_secs(11 * 60)).unwrap();
    let calls = h.http_calls();
    let failed = calls
        .iter()
        .filter(|c| c.result != gatehouse_harness::host::CallResult::Responded(200))
        .count() as u64;
    // The first fetch failed, the later ones (a refresh every 10 minutes) got the JWKS.
    assert!(failed == 1 && calls.len() >= 2, "{calls:#?}");
    assert_eq!(metric(&h, "gatehouse.jwks.fetches"), calls.len() as u64);
    assert_eq!(metric(&h, "gatehouse.jwks.fetch_failures"), failed);
    h.assert_no_trap().unwrap();
}
