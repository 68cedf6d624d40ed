//! The cache feed end to end in the harness: the module runs as the sync (the singleton
//! service, root id `gatehouse_sync`) and as a worker filter; the control service is a
//! scripted upstream answering `GET /v1/cache?since=..&wait=..` as `control/FEED.md` says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::api_key::{KeyHash, KeyRecord};
use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens::{hmac_secret, mint};
use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{
    BuildError, Harness, HarnessBuilder, HttpCall, Reply, Request, Route, Upstream, VmId,
};
use serde_json::{Value, json};
use std::time::Duration;

/// 2026-01-01T00:00:00Z: the virtual wall clock at build.
const T0: u64 = 1_767_225_600;
const FEED_TOKEN: &str = "feed-token-not-the-admin-token";
const KEY_A: &str = "feed-key-a";
const KEY_B: &str = "feed-key-b";
/// Declared in the policy itself: works without the feed.
const POLICY_KEY: &str = "policy-key";

fn sha(s: &str) -> String {
    KeyHash::of_key(s.as_bytes()).to_hex()
}

fn policy(on_stale: &str) -> String {
    json!({
        "version": 1,
        "api_key": { "format": "opaque" },
        "keys": [ { "id": "key_policy", "sha256": sha(POLICY_KEY), "user": "user_policy",
                    "tenant": "tenant_1", "plan": "team" } ],
        "jwt": {
            "keys": [ { "alg": "HS256", "secret_env": "JWT_SECRET" } ],
            "default_tenant": "tenant_1",
            "default_plan": "free"
        },
        "routes": [
            { "match": { "path_prefix": "/public/" }, "audience": "external" },
            { "match": { "path_prefix": "/v1/" } }
        ],
        "feed": { "cluster": "control", "token_env": "FEED_TOKEN", "staleness": "30s",
                  "on_stale": on_stale }
    })
    .to_string()
}

fn key(raw: &str, id: &str, active: bool) -> Value {
    json!({ "sha256": sha(raw), "key_id": id, "user": format!("user_{id}"),
            "tenant": "tenant_1", "plan": "team", "expires_at": null,
            "active": active, "scopes": [] })
}

fn answer(epoch: &str, version: u64, full: bool, keys: Vec<Value>) -> String {
    json!({ "epoch": epoch, "version": version, "full": full, "keys": keys,
            "users": [], "jtis": [] })
    .to_string()
}

/// The long poll's `wait` in [`policy`] (the default).
const WAIT: u64 = 20;

/// A control service whose feed is at `body`: a poll from the version `body` carries, with
/// its epoch and a nonzero wait, is held `WAIT` seconds and answered with nothing new, as a
/// real long poll is; any other poll gets `body` at once.
fn control(body: &str) -> Upstream {
    let mut upstream = Upstream::new("control");
    if let Ok(v) = serde_json::from_str::<Value>(body)
        && let (Some(epoch), Some(version)) = (v["epoch"].as_str(), v["version"].as_u64())
    {
        upstream = upstream.route(
            Route::get(&format!(
                "/v1/cache?since={version}&epoch={epoch}&wait={WAIT}&paged=true"
            ))
            .reply(Reply::json(200, &answer(epoch, version, false, vec![])).delay(secs(WAIT))),
        );
    }
    upstream.route(Route::get("/v1/cache*").reply(Reply::json(200, body)))
}

fn builder(on_stale: &str) -> HarnessBuilder {
    let p = policy(on_stale);
    Harness::builder(default_wasm())
        .plugin_config(p.clone())
        .singleton(p)
        .env("FEED_TOKEN", FEED_TOKEN)
        .env(
            "JWT_SECRET",
            std::str::from_utf8(&hmac_secret(Alg::HS256)).unwrap(),
        )
        .time(T0 * 1_000_000_000)
}

fn build(b: HarnessBuilder) -> Harness {
    b.build().unwrap_or_else(|e| panic!("{e}"))
}

fn with_key(h: &mut Harness, raw: &str) -> gatehouse_harness::host::Outcome {
    h.request(Request::get("/v1/things").header("x-api-key", raw))
        .unwrap()
}

fn with_token(h: &mut Harness, token: &str) -> gatehouse_harness::host::Outcome {
    h.request(Request::get("/v1/things").header("authorization", format!("Bearer {token}")))
        .unwrap()
}

/// The sync's feed polls, in order (its refusal audit posts, `POST /v1/events`, are
/// tested in `observability.rs`).
fn polls(h: &Harness) -> Vec<HttpCall> {
    h.http_calls()
        .into_iter()
        .filter(|c| c.path != gatehouse_core::observe::events::PATH)
        .collect()
}

fn paths(h: &Harness) -> Vec<String> {
    polls(h).into_iter().map(|c| c.path).collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_fed_key_works_after_the_first_poll_and_a_tombstone_refuses_it_within_one_poll() {
    let mut h = build(builder("fail_closed").upstream(control(&answer(
        "e1",
        1,
        true,
        vec![key(KEY_A, "key_a", true)],
    ))));
    // Before the first answer a key the policy does not hold cannot be judged: 503.
    let out = with_key(&mut h, KEY_A);
    assert_eq!(out.status, 503, "not fed yet");
    assert_eq!(out.json()["code"], "AUTH_UNAVAILABLE");
    h.advance(secs(1)).unwrap();
    let calls = polls(&h);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].path, "/v1/cache?since=1&epoch=e1&wait=20&paged=true",
        "the next long poll goes out as soon as an answer is applied"
    );
    let call = &calls[0];
    assert_eq!(call.vm, VmId::Singleton);
    assert_eq!(call.cluster, "control");
    assert_eq!(call.path, "/v1/cache?since=0&wait=20&paged=true");
    assert_eq!(call.authority, "control");
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {FEED_TOKEN}").as_str())
    );
    assert_eq!(call.timeout, Some(secs(25)), "wait + 5 s");

    let out = with_key(&mut h, KEY_A);
    assert_eq!(out.status, 200, "{}", out.text());
    let up = out.upstream.unwrap();
    assert_eq!(up.header("x-gatehouse-key-id"), Some("key_a"));
    assert_eq!(up.header("x-gatehouse-user"), Some("user_key_a"));

    h.set_upstream(control(&answer(
        "e1",
        2,
        false,
        vec![key(KEY_A, "key_a", false)],
    )));
    // The held poll ends empty (the scripted server cannot wake it) and the next one, sent
    // at once, brings the tombstone; then the sync holds a poll from version 2.
    h.advance(secs(WAIT)).unwrap();
    assert_eq!(
        paths(&h)[2..],
        [
            "/v1/cache?since=1&epoch=e1&wait=20&paged=true",
            "/v1/cache?since=2&epoch=e1&wait=20&paged=true"
        ]
    );
    let out = with_key(&mut h, KEY_A);
    assert_eq!(out.status, 401);
    assert_eq!(out.json()["code"], "INVALID_CREDENTIALS");
    h.assert_no_trap().unwrap();
}

#[test]
fn fed_user_watermarks_and_jtis_are_enforced_on_jwts() {
    let iat = T0 - 100;
    let token = |sub: &str, jti: &str| {
        mint(
            Alg::HS256,
            None,
            &format!(
                r#"{{"sub":"{sub}","iat":{iat},"exp":{},"jti":"{jti}"}}"#,
                T0 + 3600
            ),
        )
    };
    let (alice, bob) = (token("alice", "t-1"), token("bob", "t-2"));
    let mut h = build(builder("fail_closed").upstream(control(&answer("e1", 1, true, vec![]))));
    h.advance(secs(1)).unwrap();
    assert_eq!(with_token(&mut h, &alice).status, 200);
    assert_eq!(with_token(&mut h, &bob).status, 200);

    let t2_key = gatehouse_core::authn::revocation::jti_key("t-2");
    let t2_hash = t2_key.strip_prefix("j/").unwrap();
    let body = json!({
        "epoch": "e1", "version": 2, "full": false, "keys": [],
        "users": [ { "user": "alice", "tokens_issued_before": iat + 1, "until": null } ],
        "jtis": [ { "jti_sha256": t2_hash, "until": T0 + 3600 } ]
    });
    h.set_upstream(control(&body.to_string()));
    h.advance(secs(WAIT)).unwrap();
    for t in [&alice, &bob] {
        let out = with_token(&mut h, t);
        assert_eq!(out.status, 401, "{}", out.text());
        assert_eq!(out.json()["code"], "INVALID_CREDENTIALS");
    }
    let fresh = mint(
        Alg::HS256,
        None,
        &format!(
            r#"{{"sub":"alice","iat":{},"exp":{},"jti":"t-3"}}"#,
            T0 + 2,
            T0 + 3600
        ),
    );
    assert_eq!(
        with_token(&mut h, &fresh).status,
        200,
        "issued after the watermark"
    );
}

#[test]
fn a_new_epoch_is_applied_as_a_snapshot() {
    let mut h = build(builder("fail_closed").upstream(control(&answer(
        "old",
        7,
        true,
        vec![key(KEY_A, "key_a", true), key(KEY_B, "key_b", true)],
    ))));
    h.advance(secs(1)).unwrap();
    assert_eq!(with_key(&mut h, KEY_A).status, 200);
    assert_eq!(h.metric("gatehouse.feed.version"), Some(7));

    // The control database was re-created: its versions start again, and key_a is gone.
    h.set_upstream(control(&answer(
        "new",
        2,
        false,
        vec![key(KEY_B, "key_b", true)],
    )));
    h.advance(secs(WAIT)).unwrap();
    assert_eq!(
        paths(&h)[1..],
        [
            "/v1/cache?since=7&epoch=old&wait=20&paged=true",
            "/v1/cache?since=7&epoch=old&wait=20&paged=true",
            "/v1/cache?since=2&epoch=new&wait=20&paged=true",
        ],
        "the new epoch's version next"
    );
    assert_eq!(
        with_key(&mut h, KEY_A).status,
        401,
        "a key the snapshot left out"
    );
    assert_eq!(with_key(&mut h, KEY_B).status, 200);
    assert_eq!(h.metric("gatehouse.feed.version"), Some(2));
    let (state, _) = h.shared_data("feed/state").unwrap();
    assert_eq!(
        String::from_utf8(state).unwrap(),
        format!("new|2|{}|2|1", T0 + WAIT),
        "the first poll went out 100 ms after start; the new epoch's snapshot is the \
         second generation, with one key"
    );
}

#[test]
fn a_410_makes_the_sync_ask_for_a_snapshot_at_once() {
    let mut h = build(builder("fail_closed").upstream(control(&answer("e1", 5, true, vec![]))));
    h.advance(secs(1)).unwrap();
    // The server dropped version 5 (cleanup): polls from it get 410, a snapshot is at 6.
    let gone = r#"{"error":"version gone","code":"VERSION_GONE","timestamp":"x","request_id":"y"}"#;
    h.set_upstream(
        Upstream::new("control")
            .route(Route::get("/v1/cache?since=0&*").reply(Reply::json(
                200,
                &answer("e1", 6, true, vec![key(KEY_A, "key_a", true)]),
            )))
            .route(Route::get("/v1/cache?since=6&*").reply(Reply::hang()))
            .route(Route::get("/v1/cache*").reply(Reply::json(410, gone))),
    );
    h.advance(secs(WAIT)).unwrap();
    assert_eq!(
        paths(&h),
        [
            "/v1/cache?since=0&wait=20&paged=true",
            "/v1/cache?since=5&epoch=e1&wait=20&paged=true",
            "/v1/cache?since=5&epoch=e1&wait=20&paged=true",
            "/v1/cache?since=0&wait=20&paged=true",
            "/v1/cache?since=6&epoch=e1&wait=20&paged=true",
        ]
    );
    assert_eq!(h.metric("gatehouse.feed.failures"), Some(0));
    assert_eq!(with_key(&mut h, KEY_A).status, 200);
}

#[test]
fn a_server_that_answers_at_once_cannot_make_the_sync_spin() {
    // Every answer is new (the version grows with each call) and comes back at once.
    let upstream = (1..=300u64).rev().fold(Upstream::new("control"), |u, n| {
        u.route(
            Route::get(&format!("/v1/cache?since={}&*", n - 1))
                .reply(Reply::json(200, &answer("e1", n, false, vec![]))),
        )
    });
    let upstream = upstream.route(
        Route::get("/v1/cache?since=0&*").reply(Reply::json(200, &answer("e1", 1, true, vec![]))),
    );
    let mut h = build(builder("fail_closed").upstream(upstream));
    h.advance(secs(1)).unwrap();
    // The first tick's poll and a burst of 16 quick ones at +0.1 s, then 5 a tick (50 a
    // second) at +0.2 s .. +1 s.
    assert_eq!(polls(&h).len(), 17 + 9 * 5);
    // Ten ticks more, and the regular poll at +1.1 s.
    h.advance(secs(1)).unwrap();
    assert_eq!(polls(&h).len(), 17 + 9 * 5 + 10 * 5 + 1);
    h.assert_no_trap().unwrap();
}

#[test]
fn an_unreachable_feed_keeps_keys_working_until_the_bound_then_fails_closed_and_recovers() {
    let good = answer("e1", 1, true, vec![key(KEY_A, "key_a", true)]);
    // The snapshot, then the service fails (the poll sent right after it gets a 500).
    let mut h = build(
        builder("fail_closed").upstream(
            Upstream::new("control")
                .route(Route::get("/v1/cache?since=0&*").reply(Reply::json(200, &good)))
                .route(Route::get("/v1/cache*").reply(Reply::status(500))),
        ),
    );
    h.advance(secs(1)).unwrap(); // last success at T0 + 1
    h.advance(secs(29)).unwrap(); // T0 + 30: 29 s old
    assert_eq!(with_key(&mut h, KEY_A).status, 200);
    // One per regular poll (every `interval`, 1 s: 30), and the quick tries after the
    // first failure: on each tick for a second, then 200, 400 and 800 ms apart, until
    // the tries are as far apart as the regular polls.
    assert_eq!(h.metric("gatehouse.feed.failures"), Some(41));
    assert_eq!(
        paths(&h).last().map(String::as_str),
        Some("/v1/cache?since=1&epoch=e1&wait=0&paged=true"),
        "after a failure the poll asks not to be held"
    );
    assert_eq!(h.metric("gatehouse.feed.last_sync_age_seconds"), Some(29));
    h.advance(secs(2)).unwrap(); // 31 s old
    let out = with_key(&mut h, KEY_A);
    assert_eq!(out.status, 503, "{}", out.text());
    assert_eq!(out.json()["code"], "AUTH_UNAVAILABLE");
    assert_eq!(
        out.json()["error"],
        "authentication is temporarily unavailable"
    );
    assert_eq!(out.header("retry-after"), Some("5"));
    assert!(out.upstream.is_none());
    // Every credential depends on the cache (revocations too); anonymous callers do not.
    assert_eq!(with_key(&mut h, POLICY_KEY).status, 503);
    assert_eq!(
        h.request(Request::get("/public/status")).unwrap().status,
        200
    );
    assert_eq!(
        h.request(Request::get("/v1/things")).unwrap().json()["code"],
        "MISSING_CREDENTIALS"
    );

    h.set_upstream(control(&answer("e1", 1, false, vec![])));
    h.advance(secs(1)).unwrap();
    assert_eq!(with_key(&mut h, KEY_A).status, 200, "recovered");
    assert_eq!(h.metric("gatehouse.feed.last_sync_age_seconds"), Some(0));
    assert_eq!(
        paths(&h).last().map(String::as_str),
        Some("/v1/cache?since=1&epoch=e1&wait=20&paged=true"),
        "back to long polls"
    );
    h.assert_no_trap().unwrap();
}

#[test]
fn a_hanging_feed_holds_one_call_until_its_timeout_and_keep_serving_serves_past_the_bound() {
    let good = answer("e1", 1, true, vec![key(KEY_A, "key_a", true)]);
    let mut h = build(
        builder("keep_serving").upstream(
            Upstream::new("control")
                .route(Route::get("/v1/cache?since=0&*").reply(Reply::json(200, &good)))
                .route(Route::get("/v1/cache*").reply(Reply::hang())),
        ),
    );
    h.advance(secs(1)).unwrap(); // the snapshot, then a poll that hangs
    h.advance(secs(10)).unwrap();
    assert_eq!(polls(&h).len(), 2, "one call in flight at a time");
    // The hung long poll timed out at +26 s (wait + 5); the next tick sent a poll asking
    // not to be held (wait=0, timeout 5 s), which timed out at +31 s; so did the next.
    h.advance(secs(20)).unwrap();
    let calls = polls(&h);
    assert_eq!(calls.len(), 4);
    assert_eq!(
        calls[2].path,
        "/v1/cache?since=1&epoch=e1&wait=0&paged=true"
    );
    assert_eq!(calls[2].timeout, Some(secs(5)));
    assert_eq!(h.metric("gatehouse.feed.failures"), Some(2));
    h.advance(secs(5)).unwrap();
    let out = with_key(&mut h, KEY_A);
    assert_eq!(out.status, 200, "keep_serving: {}", out.text());
    // Workers flush their counters on their one-second tick.
    h.tick_on(VmId::Worker(0)).unwrap();
    assert_eq!(h.metric("gatehouse.feed.stale_served"), Some(1));
}

#[test]
fn a_fresh_envoy_serves_during_the_grace_period_before_the_first_answer() {
    let mut h =
        build(builder("fail_closed").upstream(
            Upstream::new("control").route(Route::get("/v1/cache*").reply(Reply::hang())),
        ));
    assert_eq!(with_key(&mut h, POLICY_KEY).status, 200);
    h.advance(secs(30)).unwrap();
    assert_eq!(with_key(&mut h, POLICY_KEY).status, 200, "30 s: the bound");
    h.advance(secs(1)).unwrap();
    assert_eq!(with_key(&mut h, POLICY_KEY).status, 503);
}

#[test]
fn metrics_count_versions_and_entries() {
    let mut h = build(builder("fail_closed").upstream(control(&answer(
        "e1",
        3,
        true,
        vec![key(KEY_A, "key_a", true), key(KEY_B, "key_b", true)],
    ))));
    h.advance(secs(1)).unwrap();
    assert_eq!(h.metric("gatehouse.feed.version"), Some(3));
    assert_eq!(h.metric("gatehouse.feed.entries_applied"), Some(2));
    let mut bad = key("x", "bad id with spaces", true);
    bad["scopes"] = json!([]);
    h.set_upstream(control(&answer(
        "e1",
        4,
        false,
        vec![bad, key(KEY_A, "key_a", false)],
    )));
    h.advance(secs(WAIT)).unwrap();
    assert_eq!(h.metric("gatehouse.feed.version"), Some(4));
    assert_eq!(h.metric("gatehouse.feed.entries_applied"), Some(3));
    assert_eq!(h.metric("gatehouse.feed.records_skipped"), Some(1));
    // A broken answer is a failure and changes nothing.
    h.set_upstream(control("{not json"));
    h.advance(secs(WAIT)).unwrap();
    let failed = h.metric("gatehouse.feed.failures").unwrap_or(0);
    assert!(failed >= 1, "{failed}");
    assert_eq!(h.metric("gatehouse.feed.version"), Some(4));
    h.advance(secs(1)).unwrap();
    assert!(h.metric("gatehouse.feed.failures").unwrap_or(0) > failed);
    assert_eq!(
        paths(&h).last().map(String::as_str),
        Some("/v1/cache?since=4&epoch=e1&wait=0&paged=true")
    );
}

#[test]
fn the_sync_refuses_to_start_without_its_token_and_never_logs_it() {
    let p = policy("fail_closed");
    let err = Harness::builder(default_wasm())
        .plugin_config(p.clone())
        .singleton(p)
        .env("JWT_SECRET", "x")
        .build()
        .err()
        .expect("configure must fail");
    let BuildError::ConfigureRejected { logs } = &err else {
        panic!("{err}")
    };
    let text: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        text.iter()
            .any(|m| m.contains("feed.token_env") && m.contains("FEED_TOKEN is not set")),
        "{text:?}"
    );
}

/// The control service revokes a key the policy also declares; then the policy is
/// written again (what every worker's configure does on a reload). Its write goes to the
/// policy's own entry, never over the feed's, so the key stays refused; and the feed's
/// record, once the policy's copy is gone, is what answers.
#[test]
fn a_policy_write_after_the_feed_revoked_its_key_does_not_bring_it_back() {
    let mut fed = key(POLICY_KEY, "key_policy", true);
    fed["plan"] = json!("enterprise");
    let mut h = build(builder("fail_closed").upstream(control(&answer("e1", 1, true, vec![fed]))));
    h.advance(secs(1)).unwrap();
    let out = with_key(&mut h, POLICY_KEY);
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(
        out.upstream.unwrap().header("x-gatehouse-plan"),
        Some("enterprise"),
        "both hold it: the feed's record answers"
    );
    let hash = KeyHash::of_key(POLICY_KEY.as_bytes());
    let (policy_entry, _) = h
        .shared_data(&hash.policy_cache_key())
        .expect("the policy's copy is in its own entry");

    h.set_upstream(control(&answer(
        "e1",
        2,
        false,
        vec![key(POLICY_KEY, "key_policy", false)],
    )));
    h.advance(secs(WAIT)).unwrap();
    let out = with_key(&mut h, POLICY_KEY);
    assert_eq!(out.status, 401, "revoked by the feed: {}", out.text());

    // A reload writes the policy's keys again, after the feed's tombstone.
    h.set_shared_data(&hash.policy_cache_key(), &policy_entry);
    let out = with_key(&mut h, POLICY_KEY);
    assert_eq!(
        out.status,
        401,
        "a reload brought the key back: {}",
        out.text()
    );
    let (fed_entry, _) = h.shared_data(&hash.cache_key()).unwrap();
    let (_, tombstone) = KeyRecord::decode(&fed_entry).unwrap();
    assert!(!tombstone.active, "the feed's tombstone is intact");
    h.assert_no_trap().unwrap();
}

fn page(version: u64, keys: Vec<Value>, next: Option<&str>) -> String {
    json!({ "epoch": "e1", "version": version, "full": true, "more": false, "next": next,
            "keys": keys, "users": [], "jtis": [] })
    .to_string()
}

/// A snapshot in two pages, then a second snapshot (after a 410) that leaves one of its
/// keys out: the module writes each page as it comes, counts a key it does not hold as
/// not ready (503) until the last page, and retires the left-out key by generation.
#[test]
fn a_paged_snapshot_fills_the_cache_page_by_page_and_the_next_one_retires_what_it_omits() {
    let first = page(3, vec![key(KEY_A, "key_a", true)], Some("cursor-1"));
    let second = page(3, vec![key(KEY_B, "key_b", true)], None);
    let mut h = build(
        builder("fail_closed").upstream(
            Upstream::new("control")
                .route(
                    Route::get("/v1/cache?since=0&wait=20&paged=true")
                        .reply(Reply::json(200, &first)),
                )
                // The second page comes a second later: between the two, the cache is
                // half full.
                .route(
                    Route::get("/v1/cache?since=0&epoch=e1&after=cursor-1&wait=0&paged=true")
                        .reply(Reply::json(200, &second).delay(secs(1))),
                )
                .route(
                    Route::get("/v1/cache?since=3&*")
                        .reply(Reply::json(200, &answer("e1", 3, false, vec![])).delay(secs(WAIT))),
                ),
        ),
    );
    h.advance(Duration::from_millis(500)).unwrap();
    assert_eq!(
        with_key(&mut h, KEY_A).status,
        200,
        "the first page's key serves"
    );
    assert_eq!(
        with_key(&mut h, KEY_B).status,
        503,
        "a key not yet fed: not ready, not refused"
    );
    assert_eq!(
        h.metric("gatehouse.feed.version"),
        Some(0),
        "not set before the last page"
    );
    h.advance(secs(1)).unwrap();
    assert_eq!(with_key(&mut h, KEY_B).status, 200);
    assert_eq!(
        with_key(&mut h, "feed-key-unknown").status,
        401,
        "complete: a miss is a 401"
    );
    assert_eq!(h.metric("gatehouse.feed.version"), Some(3));
    assert_eq!(h.metric("gatehouse.feed.snapshot_pages"), Some(2));
    assert!(
        h.metric("gatehouse.feed.wasm_memory_bytes")
            .is_some_and(|m| m > 0)
    );
    assert_eq!(
        paths(&h),
        [
            "/v1/cache?since=0&wait=20&paged=true",
            "/v1/cache?since=0&epoch=e1&after=cursor-1&wait=0&paged=true",
            "/v1/cache?since=3&epoch=e1&wait=20&paged=true",
        ]
    );

    // The server lost our version (the sync was behind its retention): a new snapshot,
    // in which key_a is no more. Its tombstone was purged, so nothing says "revoked".
    let gone = json!({"error": "gone", "code": "GONE", "timestamp": "", "request_id": ""});
    h.set_upstream(
        Upstream::new("control")
            .route(Route::get("/v1/cache?since=0&*").reply(Reply::json(
                200,
                &page(9, vec![key(KEY_B, "key_b", true)], None),
            )))
            .route(
                Route::get("/v1/cache?since=9&*")
                    .reply(Reply::json(200, &answer("e1", 9, false, vec![])).delay(secs(WAIT))),
            )
            .route(Route::get("/v1/cache*").reply(Reply::json(410, &gone.to_string()))),
    );
    h.advance(secs(WAIT + 1)).unwrap();
    assert_eq!(h.metric("gatehouse.feed.version"), Some(9));
    assert_eq!(
        with_key(&mut h, KEY_A).status,
        401,
        "a key the new snapshot does not mention is retired"
    );
    assert_eq!(with_key(&mut h, KEY_B).status, 200);
    let (state, _) = h.shared_data("feed/state").unwrap();
    assert!(String::from_utf8(state).unwrap().starts_with("e1|9|"));
    h.assert_no_trap().unwrap();
}
