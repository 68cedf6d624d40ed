//! The operators' levers (issue 23) end to end in the harness: the compiled module runs as
//! the sync and as worker filters, and a scripted control service delivers `levers` in its
//! feed answers (`control/FEED.md`): allowlists, per-key and per-tenant overrides, rule
//! modes, and sets the module must keep out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::api_key::KeyHash;
use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{Harness, HttpCall, Outcome, Reply, Request, Route, Upstream};
use serde_json::{Value, json};
use std::time::Duration;

/// 2026-01-01T00:00:00Z: the virtual wall clock at build.
const T0: u64 = 1_767_225_600;
const KEY_A: &str = "levers-key-a";
const KEY_B: &str = "levers-key-b";
/// The long poll's wait (the policy's default).
const WAIT: u64 = 20;

fn sha(s: &str) -> String {
    KeyHash::of_key(s.as_bytes()).to_hex()
}

/// Plan `free` at 3 a minute; `/v1/search/` adds a limit named `search` (2 a minute per
/// user) and `/v1/beta/` one in shadow by the policy (`beta`, 1 a minute); `/hooks` has a
/// body limit of 16 bytes in shadow, `/gh` a GitHub webhook check in shadow.
fn policy() -> String {
    let key = |raw: &str, id: &str| {
        json!({ "id": format!("key_{id}"), "sha256": sha(raw), "user": format!("user_{id}"),
                "tenant": format!("tenant_{id}"), "plan": "free" })
    };
    json!({
        "version": 1,
        "api_key": { "format": "opaque" },
        "plans": { "free": { "requests_per_minute": 3 } },
        "rate_limit": { "anonymous": { "requests_per_minute": 2 } },
        "keys": [ key(KEY_A, "a"), key(KEY_B, "b") ],
        "routes": [
            { "name": "search", "match": { "path_prefix": "/v1/search/" },
              "limits": [ { "name": "search", "requests": 2, "per": "1m", "by": "user" } ] },
            { "name": "beta", "match": { "path_prefix": "/v1/beta/" },
              "limits": [ { "requests": 1, "per": "1m", "by": "user", "mode": "shadow" } ] },
            { "name": "hooks", "match": { "path": "/hooks" }, "audience": "external",
              "body": { "max_bytes": 16, "mode": "shadow" } },
            { "name": "gh", "match": { "path": "/gh" }, "audience": "external",
              "webhook": { "provider": "github", "secrets_env": ["GH_SECRET"], "mode": "shadow" } },
            { "name": "public", "match": { "path_prefix": "/public/" }, "audience": "external" },
            { "name": "api", "match": { "path_prefix": "/v1/" } }
        ],
        "feed": { "cluster": "control", "token_env": "FEED_TOKEN" }
    })
    .to_string()
}

/// A feed answer at `version` carrying `levers` (none: the field is absent).
fn answer(version: u64, full: bool, levers: Option<Value>) -> String {
    let mut a = json!({ "epoch": "e1", "version": version, "full": full, "keys": [],
                        "users": [], "jtis": [] });
    if let Some(l) = levers {
        a["levers"] = l;
    }
    a.to_string()
}

/// A control service whose feed is at `version` with these levers: a poll from that
/// version is held the whole wait and answered with nothing new; any other poll gets the
/// answer at once. `POST /v1/events` is accepted.
fn control(version: u64, levers: Option<Value>) -> Upstream {
    Upstream::new("control")
        .route(
            Route::get(&format!(
                "/v1/cache?since={version}&epoch=e1&wait={WAIT}&paged=true"
            ))
            .reply(Reply::json(200, &answer(version, false, None)).delay(secs(WAIT))),
        )
        .route(
            Route::get("/v1/cache*")
                .reply(Reply::json(200, &answer(version, version == 1, levers))),
        )
        .route(Route::post("/v1/events").reply(Reply::json(
            202,
            r#"{"accepted":{"refusals":0,"key_uses":0,"requests":0}}"#,
        )))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A harness whose first feed answer (version 1) carries `levers`, applied and picked up
/// by the workers.
fn harness(levers: Value) -> Harness {
    let p = policy();
    let mut h = Harness::builder(default_wasm())
        .plugin_config(p.clone())
        .singleton(p)
        .env("FEED_TOKEN", "feed-token")
        .env("GH_SECRET", "gh-secret-0123456789")
        .allow_on_headers_stop_iteration(true)
        .time(T0 * 1_000_000_000)
        .upstream(control(1, Some(levers)))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    h.advance(secs(1)).unwrap();
    h
}

/// The control service moves to `version` with these levers; the held poll ends and the
/// next one brings them.
fn deliver(h: &mut Harness, version: u64, levers: Option<Value>) {
    h.set_upstream(control(version, levers));
    h.advance(secs(WAIT + 1)).unwrap();
}

fn get(h: &mut Harness, path: &str, key: &str, source: &str) -> Outcome {
    let mut req = Request::get(path).source(source);
    if !key.is_empty() {
        req = req.header("x-api-key", key);
    }
    h.request(req).unwrap()
}

/// The statuses of `n` requests.
fn statuses(h: &mut Harness, n: usize, path: &str, key: &str, source: &str) -> Vec<u16> {
    (0..n).map(|_| get(h, path, key, source).status).collect()
}

fn passed(h: &mut Harness, n: usize, path: &str, key: &str, source: &str) -> usize {
    statuses(h, n, path, key, source)
        .iter()
        .filter(|s| **s == 200)
        .count()
}

fn posts(h: &Harness) -> Vec<Value> {
    h.http_calls()
        .into_iter()
        .filter(|c: &HttpCall| c.path == "/v1/events")
        .map(|c| serde_json::from_slice(&c.body).unwrap())
        .collect()
}

const HOME: &str = "198.51.100.7:4000";

#[test]
fn without_levers_the_policy_decides() {
    let mut h = harness(json!({}));
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, HOME), 3);
    assert_eq!(passed(&mut h, 10, "/public/x", "", HOME), 2);
    assert_eq!(h.metric("gatehouse.levers.entries"), Some(0));
    h.assert_no_trap().unwrap();
}

#[test]
fn an_allowlisted_key_user_or_tenant_skips_every_limit_or_the_one_named() {
    let mut h = harness(json!({ "allowlist": [
        { "id": "alw_1", "key_id": "key_a", "limit": null },
        { "id": "alw_2", "user": "user_b", "limit": "search" }
    ]}));
    // key_a: no plan limit, no route limit.
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, HOME), 10);
    assert_eq!(passed(&mut h, 10, "/v1/search/q", KEY_A, HOME), 10);
    // user_b: the search limit skipped, the plan's 3 still count.
    assert_eq!(passed(&mut h, 10, "/v1/search/q", KEY_B, HOME), 3);
    h.advance(secs(1)).unwrap();
    assert_eq!(h.metric("gatehouse.allowlisted"), Some(30));

    // By tenant, every limit.
    let mut h = harness(json!({ "allowlist": [
        { "id": "alw_3", "tenant": "tenant_b" }
    ]}));
    assert_eq!(passed(&mut h, 10, "/v1/search/q", KEY_B, HOME), 10);
    assert_eq!(
        passed(&mut h, 10, "/v1/x", KEY_A, HOME),
        3,
        "another tenant"
    );
    h.assert_no_trap().unwrap();
}

#[test]
fn an_allowlisted_network_skips_limits_for_callers_with_and_without_a_key() {
    let mut h = harness(json!({ "allowlist": [
        { "id": "alw_4", "cidr": "203.0.113.0/24", "limit": null },
        { "id": "alw_5", "cidr": "2001:db8::/32", "limit": "anonymous" }
    ]}));
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, "203.0.113.50:1"), 10);
    assert_eq!(passed(&mut h, 10, "/public/x", "", "203.0.113.51:1"), 10);
    assert_eq!(passed(&mut h, 10, "/public/x", "", "[2001:db8::7]:1"), 10);
    // The IPv6 entry names the anonymous limit only: a key's plan limit still applies.
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_B, "[2001:db8::7]:1"), 3);
    assert_eq!(
        passed(&mut h, 10, "/public/x", "", HOME),
        2,
        "another network"
    );
    h.assert_no_trap().unwrap();
}

#[test]
fn a_raised_override_serves_a_refused_key_at_once_and_a_lowered_one_holds_it() {
    let mut h = harness(json!({}));
    assert_eq!(
        statuses(&mut h, 4, "/v1/x", KEY_A, HOME),
        [200, 200, 200, 429]
    );
    deliver(
        &mut h,
        2,
        Some(json!({ "overrides": [
            { "scope": "key", "id": "key_a", "requests_per_minute": 20, "expires_at": null },
            { "scope": "tenant", "id": "tenant_b", "requests_per_minute": 1, "expires_at": null }
        ]})),
    );
    // The plan's budget drained only a third of the way back in 21 s: the raised limit
    // serves key_a from its next request, at the new rate.
    assert_eq!(passed(&mut h, 30, "/v1/x", KEY_A, HOME), 20);
    // key_b's tenant is lowered to 1 a minute.
    assert_eq!(statuses(&mut h, 3, "/v1/x", KEY_B, HOME), [200, 429, 429]);
    let refused = get(&mut h, "/v1/x", KEY_B, HOME);
    assert_eq!(refused.json()["code"], "RATE_LIMITED");
    assert_eq!(refused.header("ratelimit-limit"), Some("1"));
    h.assert_no_trap().unwrap();
}

#[test]
fn an_override_past_its_expiry_gives_way_to_the_plan() {
    let mut h = harness(json!({ "overrides": [
        { "scope": "key", "id": "key_a", "requests_per_minute": 50, "expires_at": T0 + 30 }
    ]}));
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, HOME), 10);
    h.advance(secs(30)).unwrap();
    // Expired: the plan's own state (untouched, full) and its 3.
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, HOME), 3);
    h.assert_no_trap().unwrap();
}

#[test]
fn a_limit_off_is_not_applied_and_the_policys_shadow_is_overridden_by_the_feed() {
    let mut h = harness(json!({ "modes": [
        { "limit": "free", "mode": "off" },
        { "limit": "beta", "mode": "enforce" },
        { "limit": "no-such-rule", "mode": "off" }
    ]}));
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, HOME), 10, "free is off");
    // beta is in shadow by the policy, enforced by the lever: 1 a minute.
    assert_eq!(passed(&mut h, 5, "/v1/beta/x", KEY_B, HOME), 1);
    h.advance(secs(1)).unwrap();
    assert_eq!(h.metric("gatehouse.levers.unknown_names"), Some(1));
    // The levers removed (`enforce` back through the API: no mode for `free`): the plan
    // applies again, on a state that was left alone while off, and beta is back in shadow.
    deliver(&mut h, 2, Some(json!({})));
    assert_eq!(passed(&mut h, 10, "/v1/x", KEY_A, HOME), 3);
    assert_eq!(passed(&mut h, 2, "/v1/beta/x", KEY_B, HOME), 2);
    h.assert_no_trap().unwrap();
}

#[test]
fn a_limit_in_shadow_never_refuses_and_is_counted_logged_and_posted() {
    let mut h = harness(json!({ "modes": [ { "limit": "free", "mode": "shadow" } ]}));
    assert_eq!(passed(&mut h, 5, "/v1/x", KEY_A, HOME), 5);
    // The policy's own shadow (beta, 1 a minute): the second request would be refused.
    assert_eq!(passed(&mut h, 2, "/v1/beta/x", KEY_B, HOME), 2);
    h.advance(Duration::from_millis(1200)).unwrap();
    assert_eq!(h.metric("gatehouse.shadow.would_refuse.free"), Some(2));
    assert_eq!(h.metric("gatehouse.shadow.would_refuse.beta"), Some(1));
    assert_eq!(h.metric("gatehouse.requests.refused"), Some(0));
    assert_eq!(h.metric("gatehouse.requests.allowed"), Some(7));
    let lines: Vec<Value> = h
        .logs()
        .iter()
        .filter(|l| l.message.contains("would_refuse"))
        .map(|l| serde_json::from_str(&l.message).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["would_refuse"], "free");
    assert_eq!(lines[0]["code"], "RATE_LIMITED");
    assert_eq!(lines[0]["key_id"], "key_a");
    for l in &lines {
        assert!(!l.to_string().contains(KEY_A) && !l.to_string().contains(KEY_B));
    }
    let posts = posts(&h);
    let refusals: Vec<&Value> = posts
        .iter()
        .flat_map(|p| p["refusals"].as_array().unwrap())
        .collect();
    assert_eq!(refusals.len(), 3);
    assert!(
        refusals
            .iter()
            .all(|r| r["shadow"] == true && r["status"] == 429)
    );
    let shadowed: u64 = posts
        .iter()
        .flat_map(|p| p["requests"].as_array().unwrap())
        .map(|r| r["shadow_refused"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shadowed, 3);
    h.assert_no_trap().unwrap();
}

#[test]
fn a_body_limit_in_shadow_lets_a_large_body_through_and_says_so_and_off_is_silent() {
    let mut h = harness(json!({}));
    let big = Request::post("/hooks")
        .source(HOME)
        .header("content-length", "40")
        .body(vec![b'x'; 40]);
    let out = h.request(big.clone()).unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
    h.advance(Duration::from_millis(1200)).unwrap();
    assert_eq!(
        h.metric("gatehouse.shadow.would_refuse.body_hooks"),
        Some(1)
    );
    // Enforced from the feed: refused.
    deliver(
        &mut h,
        2,
        Some(json!({ "modes": [ { "limit": "body:hooks", "mode": "enforce" } ]})),
    );
    let out = h.request(big.clone()).unwrap();
    assert_eq!(out.status, 413);
    assert_eq!(out.json()["code"], "PAYLOAD_TOO_LARGE");
    // Off: passes, not counted.
    deliver(
        &mut h,
        3,
        Some(json!({ "modes": [ { "limit": "body:hooks", "mode": "off" } ]})),
    );
    assert_eq!(h.request(big).unwrap().status, 200);
    h.advance(Duration::from_millis(1200)).unwrap();
    assert_eq!(
        h.metric("gatehouse.shadow.would_refuse.body_hooks"),
        Some(1)
    );
    h.assert_no_trap().unwrap();
}

#[test]
fn a_malformed_or_oversized_levers_set_is_kept_out_and_the_previous_one_stays() {
    let mut h = harness(json!({ "modes": [ { "limit": "free", "mode": "off" } ]}));
    assert_eq!(passed(&mut h, 5, "/v1/x", KEY_A, HOME), 5);
    // A CIDR with host bits set breaks the contract: the whole set is refused.
    deliver(
        &mut h,
        2,
        Some(json!({ "modes": [], "allowlist": [ { "id": "a", "cidr": "10.0.0.1/8" } ]})),
    );
    assert_eq!(h.metric("gatehouse.levers.rejected"), Some(1));
    assert_eq!(
        passed(&mut h, 5, "/v1/x", KEY_A, HOME),
        5,
        "free is still off"
    );
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({ "limit": format!("l{i}"), "mode": "off" }))
        .collect();
    deliver(&mut h, 3, Some(json!({ "modes": too_many })));
    assert_eq!(h.metric("gatehouse.levers.rejected"), Some(2));
    assert_eq!(
        passed(&mut h, 5, "/v1/x", KEY_A, HOME),
        5,
        "free is still off"
    );
    let warned = h
        .logs()
        .iter()
        .filter(|l| l.message.contains("levers refused"))
        .count();
    assert_eq!(warned, 2);
    assert!(
        !h.logs().iter().any(|l| l.message.contains("10.0.0.1")),
        "no value in the log"
    );
    // The rest of those answers was applied: the feed moved on.
    assert_eq!(h.metric("gatehouse.feed.version"), Some(3));
    h.assert_no_trap().unwrap();
}

#[test]
fn a_webhook_check_in_shadow_passes_a_bad_signature_and_counts_it_until_enforced() {
    let mut h = harness(json!({}));
    let forged = || {
        Request::post("/gh")
            .source(HOME)
            .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
            .body(b"{\"action\":\"opened\"}".to_vec())
    };
    let out = h.request(forged()).unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.upstream.unwrap().body, b"{\"action\":\"opened\"}");
    h.advance(Duration::from_millis(1200)).unwrap();
    assert_eq!(
        h.metric("gatehouse.shadow.would_refuse.webhook_gh"),
        Some(1)
    );
    assert_eq!(h.metric("gatehouse.webhook_refused"), Some(0));
    deliver(
        &mut h,
        2,
        Some(json!({ "modes": [ { "limit": "webhook:gh", "mode": "enforce" } ]})),
    );
    let out = h.request(forged()).unwrap();
    assert_eq!(out.status, 401, "{}", out.text());
    assert_eq!(out.json()["code"], "INVALID_SIGNATURE");
    assert!(out.upstream.is_none());
    h.assert_no_trap().unwrap();
}
