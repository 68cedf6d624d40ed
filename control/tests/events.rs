//! What the proxies report (`POST /v1/events`, control/FEED.md "Events") and where it
//! shows: the audit log's refusals, keys' `last_used`, `GET /v1/stats`, and the cleanup
//! of all of it after the event retention. Through the real router over a real database
//! (SQLite, or PostgreSQL with `GATEHOUSE_TEST_DATABASE=postgres`; see `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests: a failure panics"
)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{ADMIN, FEED, Svc, T0, error_code, request, send, svc, svc_with};
use serde_json::{Value, json};
use std::time::Duration;

async fn post_events(s: &Svc, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    send(
        &s.app,
        request(Method::POST, "/v1/events", token, Some(body)),
    )
    .await
}

/// Posts with the feed token and expects 202; returns `accepted`.
async fn report(s: &Svc, body: Value) -> Value {
    let (status, resp) = post_events(s, Some(FEED), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    resp["accepted"].clone()
}

fn refusal(route: &str, code: &str, status: u16) -> Value {
    json!({"at": T0, "request_id": "req-1", "method": "GET", "route": route, "code": code,
           "status": status})
}

async fn refusals(s: &Svc) -> Vec<Value> {
    let (status, body) = s
        .admin(Method::GET, "/v1/audit?kind=refusal&limit=1000", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().unwrap().clone()
}

async fn stats(s: &Svc) -> Value {
    let (status, body) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn last_used(s: &Svc, id: &str) -> Value {
    let (status, body) = s.admin(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["last_used"].clone()
}

#[tokio::test]
async fn refusals_are_stored_in_the_audit_log_with_who_and_why() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let key_id = key["id"].as_str().unwrap();
    let (_, before) = s.feed("since=0").await;
    let accepted = report(
        &s,
        json!({
            "proxy": "envoy-a",
            "cache_version": 1,
            "refusals": [
                {"at": T0 + 5, "request_id": "r-1", "method": "POST", "route": "/v1/orders/{id}",
                 "code": "RATE_LIMITED", "status": 429, "key_id": key_id, "user": "user_1",
                 "plan": "team", "client": "203.0.113.7"},
                {"at": T0 + 6, "request_id": "r-2", "method": "GET", "route": "/v1/me",
                 "code": "TOKEN_EXPIRED", "status": 401, "user": "user_2",
                 "client": "2001:db8::1"},
                {"at": T0 + 7, "request_id": "", "method": "GET", "route": "",
                 "code": "NO_ROUTE", "status": 404}
            ]
        }),
    )
    .await;
    assert_eq!(
        accepted,
        json!({"refusals": 3, "key_uses": 0, "requests": 0})
    );

    let events = refusals(&s).await;
    assert_eq!(events.len(), 3);
    // Newest first.
    let (anon, by_user, by_key) = (&events[0], &events[1], &events[2]);
    assert_eq!(by_key["kind"], "refusal");
    assert_eq!(by_key["actor"], format!("key:{key_id}"));
    assert_eq!(by_key["action"], "refused");
    assert_eq!(by_key["target"], "/v1/orders/{id}");
    assert_eq!(by_key["code"], "RATE_LIMITED");
    assert_eq!(by_key["status"], 429);
    assert_eq!(by_key["method"], "POST");
    assert_eq!(by_key["plan"], "team");
    assert_eq!(by_key["proxy"], "envoy-a");
    assert_eq!(by_key["request_id"], "r-1");
    assert_eq!(by_key["client"], "203.0.113.7");
    assert_eq!(by_key["at"], "2026-01-01T00:00:05.000Z");
    assert_eq!(by_user["actor"], "user:user_2");
    assert_eq!(by_user["client"], "2001:db8::1");
    assert_eq!(by_user["plan"], Value::Null);
    assert_eq!(anon["actor"], "anonymous");
    assert_eq!(anon["target"], "");
    assert_eq!(anon["client"], Value::Null);
    assert_eq!(anon["status"], 404);

    // Refusals carry the feed version they were stored at and never bump it.
    let version = before["version"].as_i64().unwrap();
    for e in &events {
        assert_eq!(e["version"], version);
    }
    let (_, after) = s.feed(&format!("since={version}")).await;
    assert_eq!(after["version"], version);
    assert_eq!(after["keys"], json!([]));
}

#[tokio::test]
async fn the_audit_log_filters_by_kind_and_marks_changes() {
    let s = svc().await;
    s.issue("user_1").await;
    report(&s, json!({"refusals": [refusal("/a", "FORBIDDEN", 403)]})).await;
    s.issue("user_2").await;

    let (_, both) = s.admin(Method::GET, "/v1/audit", None).await;
    let kinds: Vec<&str> = both["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["change", "refusal", "change"]);
    let (_, changes) = s.admin(Method::GET, "/v1/audit?kind=change", None).await;
    let changes = changes["events"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    for c in changes {
        assert_eq!(c["kind"], "change");
        assert_eq!(c["action"], "key.create");
        // The refusal fields belong to refusals only.
        for field in ["code", "status", "method", "plan", "proxy"] {
            assert!(c.get(field).is_none(), "{field} in {c}");
        }
    }
    let only = refusals(&s).await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["target"], "/a");
    let (_, one) = s
        .admin(Method::GET, "/v1/audit?kind=refusal&limit=1", None)
        .await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn key_uses_move_last_used_forward_only_and_unknown_keys_are_ignored() {
    let s = svc().await;
    let a = s.issue("user_1").await["id"].as_str().unwrap().to_string();
    s.clock.advance_secs(1);
    let b = s.issue("user_1").await["id"].as_str().unwrap().to_string();
    assert_eq!(last_used(&s, &a).await, Value::Null);
    let (_, version_before) = s.feed("since=0").await;

    let accepted = report(
        &s,
        json!({"key_uses": [
            {"key_id": a, "at": T0 + 100},
            {"key_id": a, "at": T0 + 60},
            {"key_id": "key_unknown", "at": T0 + 100},
            {"key_id": b, "at": T0 + 30}
        ]}),
    )
    .await;
    assert_eq!(accepted["key_uses"], 3);
    assert_eq!(last_used(&s, &a).await, "2026-01-01T00:01:40.000Z");
    assert_eq!(last_used(&s, &b).await, "2026-01-01T00:00:30.000Z");

    // An older use (another proxy, late) does not move it back; a newer one moves it.
    report(&s, json!({"key_uses": [{"key_id": a, "at": T0 + 10}]})).await;
    assert_eq!(last_used(&s, &a).await, "2026-01-01T00:01:40.000Z");
    report(&s, json!({"key_uses": [{"key_id": a, "at": T0 + 200}]})).await;
    assert_eq!(last_used(&s, &a).await, "2026-01-01T00:03:20.000Z");

    // The list shows it too, and the feed did not change.
    let (_, list) = s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    let shown: Vec<&Value> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["last_used"])
        .collect();
    assert_eq!(
        shown,
        [
            &json!("2026-01-01T00:03:20.000Z"),
            &json!("2026-01-01T00:00:30.000Z")
        ]
    );
    let (_, version_after) = s.feed("since=0").await;
    assert_eq!(version_after["version"], version_before["version"]);
    let (_, unknown) = s.admin(Method::GET, "/v1/keys/key_unknown", None).await;
    assert_eq!(error_code(&unknown), "NOT_FOUND");
}

#[tokio::test]
async fn every_key_is_listed_newest_first_without_a_user() {
    let s = svc().await;
    let first = s.issue("user_1").await["id"].as_str().unwrap().to_string();
    s.clock.advance_secs(1);
    let second = s.issue("user_2").await["id"].as_str().unwrap().to_string();
    let (status, list) = s.admin(Method::GET, "/v1/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.as_str(), first.as_str()]);
    let (_, one) = s.admin(Method::GET, "/v1/keys?limit=1", None).await;
    assert_eq!(one["keys"].as_array().unwrap().len(), 1);
    assert_eq!(one["keys"][0]["id"], second);
}

#[tokio::test]
async fn request_counts_are_summed_per_plan_over_the_last_24_hours() {
    let s = svc().await;
    // Both anonymous ("") and named plans; one plan twice in a post; shadow counts
    // optional (absent: 0).
    let accepted = report(
        &s,
        json!({"requests": [
            {"plan": "team", "allowed": 120, "refused": 3, "shadow_refused": 6},
            {"plan": "", "allowed": 7, "refused": 2},
            {"plan": "team", "allowed": 5, "refused": 0}
        ]}),
    )
    .await;
    assert_eq!(accepted["requests"], 3);
    s.clock.advance_secs(600);
    report(
        &s,
        json!({"requests": [{"plan": "free", "allowed": 1, "refused": 9},
                            {"plan": "team", "allowed": 10, "refused": 1}]}),
    )
    .await;
    let st = stats(&s).await;
    assert_eq!(st["window_seconds"], 86_400);
    assert_eq!(
        st["plans"],
        json!([
            {"plan": "", "allowed": 7, "refused": 2, "shadow_refused": 0},
            {"plan": "free", "allowed": 1, "refused": 9, "shadow_refused": 0},
            {"plan": "team", "allowed": 135, "refused": 4, "shadow_refused": 6}
        ])
    );
    // A day after the first post, its minute has left the window; the second's has not.
    s.clock.advance_secs(86_400 - 600);
    let st = stats(&s).await;
    assert_eq!(
        st["plans"],
        json!([
            {"plan": "free", "allowed": 1, "refused": 9, "shadow_refused": 0},
            {"plan": "team", "allowed": 10, "refused": 1, "shadow_refused": 0}
        ])
    );
    s.clock.advance_secs(600);
    assert_eq!(stats(&s).await["plans"], json!([]));
}

#[tokio::test]
async fn stats_show_the_feed_version_and_each_proxys_last_reported_version() {
    let s = svc().await;
    s.issue("user_1").await;
    s.issue("user_1").await;
    let (_, page) = s.feed("since=0").await;
    report(&s, json!({"proxy": "envoy-b", "cache_version": 1})).await;
    s.clock.advance_secs(30);
    report(&s, json!({"proxy": "envoy-a", "cache_version": 2})).await;
    s.clock.advance_secs(30);
    // No cache_version: the last one said stays; seen_at moves.
    report(&s, json!({"proxy": "envoy-b"})).await;
    // "" is no proxy: nothing recorded.
    report(&s, json!({"proxy": "", "cache_version": 99})).await;
    let st = stats(&s).await;
    assert_eq!(st["cache"]["version"], 2);
    assert_eq!(st["cache"]["epoch"], page["epoch"]);
    // envoy-b: a change 60 s old has not reached it (see the next test).
    assert_eq!(
        st["proxies"],
        json!([
            {"proxy": "envoy-a", "cache_version": 2, "behind": 0, "lagging": false,
             "seen_at": "2026-01-01T00:00:30.000Z"},
            {"proxy": "envoy-b", "cache_version": 1, "behind": 1, "lagging": true,
             "seen_at": "2026-01-01T00:01:00.000Z"}
        ])
    );
    assert_eq!(st["lagging"], 1);
    report(&s, json!({"proxy": "envoy-b", "cache_version": 2})).await;
    let st = stats(&s).await;
    assert_eq!(
        (
            &st["proxies"][1]["cache_version"],
            &st["proxies"][1]["lagging"]
        ),
        (&json!(2), &json!(false))
    );
    assert_eq!(st["lagging"], 0);
}

#[tokio::test]
async fn a_proxy_lags_once_a_change_older_than_30_s_has_not_reached_it() {
    let s = svc().await;
    s.issue("user_1").await; // v1 at T0
    let proxy = |st: &Value, name: &str| {
        st["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["proxy"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {st}"))
    };
    let state = |p: Value| (p["behind"].clone(), p["lagging"].clone());
    report(&s, json!({"proxy": "stuck", "cache_version": 0})).await;
    // Behind for a moment is not lagging: the change is younger than 30 s.
    s.clock.advance_secs(29);
    let st = stats(&s).await;
    assert_eq!(state(proxy(&st, "stuck")), (json!(1), json!(false)));
    assert_eq!(st["lagging"], 0);
    // 30 s on, still at 0 although it keeps reporting: it lags.
    s.clock.advance_secs(1);
    report(&s, json!({"proxy": "stuck", "cache_version": 0})).await;
    report(&s, json!({"proxy": "silent", "requests": []})).await;
    report(&s, json!({"proxy": "current", "cache_version": 1})).await;
    report(&s, json!({"proxy": "restored", "cache_version": 5})).await;
    let st = stats(&s).await;
    assert_eq!(state(proxy(&st, "stuck")), (json!(1), json!(true)));
    // Never said which version it has: it may hold nothing.
    assert_eq!(state(proxy(&st, "silent")), (Value::Null, json!(true)));
    assert_eq!(state(proxy(&st, "current")), (json!(0), json!(false)));
    // Ahead of the feed: its cache is of another database until its next poll.
    assert_eq!(state(proxy(&st, "restored")), (json!(-4), json!(false)));
    assert_eq!(st["lagging"], 2);
    // Caught up: no longer lagging, however old its report becomes.
    report(&s, json!({"proxy": "stuck", "cache_version": 1})).await;
    s.clock.advance_secs(3600);
    let st = stats(&s).await;
    assert_eq!(state(proxy(&st, "stuck")), (json!(0), json!(false)));
    assert_eq!(st["lagging"], 1);
}

#[tokio::test]
async fn an_empty_report_is_accepted_and_stores_nothing() {
    let s = svc().await;
    for body in [
        json!({}),
        json!({"proxy": null, "cache_version": null, "refusals": null, "key_uses": null,
               "requests": null, "dropped": null}),
        json!({"refusals": [], "key_uses": [], "requests": [], "dropped": 4}),
    ] {
        let accepted = report(&s, body).await;
        assert_eq!(
            accepted,
            json!({"refusals": 0, "key_uses": 0, "requests": 0})
        );
    }
    assert!(refusals(&s).await.is_empty());
    let st = stats(&s).await;
    assert_eq!(
        (st["plans"].clone(), st["proxies"].clone()),
        (json!([]), json!([]))
    );
}

#[tokio::test]
async fn the_admin_token_may_post_events_too_and_nothing_else_may() {
    let s = svc().await;
    let body = json!({"refusals": [refusal("/x", "FORBIDDEN", 403)]});
    let (status, _) = post_events(&s, Some(ADMIN), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for token in [None, Some("not-a-token-at-all-0000"), Some("")] {
        let (status, resp) = post_events(&s, token, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{resp}");
        assert_eq!(error_code(&resp), "UNAUTHORIZED");
    }
    assert_eq!(refusals(&s).await.len(), 1);
}

#[tokio::test]
async fn the_feed_token_cannot_read_stats_audit_or_keys() {
    let s = svc().await;
    s.issue("user_1").await;
    for path in [
        "/v1/stats",
        "/v1/audit",
        "/v1/audit?kind=refusal",
        "/v1/keys",
        "/v1/keys?user=user_1",
    ] {
        let (status, resp) = send(&s.app, request(Method::GET, path, Some(FEED), None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {resp}");
        assert_eq!(error_code(&resp), "UNAUTHORIZED");
        let (status, _) = send(&s.app, request(Method::GET, path, None, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _) = send(
        &s.app,
        request(
            Method::POST,
            "/v1/keys",
            Some(FEED),
            Some(&json!({"user_id": "u", "tenant_id": "t", "plan": "free", "device_name": "d"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A valid report with `bad` put into its first refusal.
fn with_bad_refusal(field: &str, bad: Value) -> Value {
    let mut r = refusal("/ok", "FORBIDDEN", 403);
    r[field] = bad;
    json!({"refusals": [refusal("/fine", "FORBIDDEN", 403), r]})
}

#[tokio::test]
async fn bad_input_is_400_in_the_standard_shape_and_stores_nothing() {
    let s = svc().await;
    let key_id = s.issue("user_1").await["id"].as_str().unwrap().to_string();
    let many = |n: usize| -> Vec<Value> { (0..n).map(|_| refusal("/r", "X", 400)).collect() };
    let cases: Vec<(&str, Value)> = vec![
        ("1001 refusals", json!({"refusals": many(1001)})),
        (
            "1001 key uses",
            json!({"key_uses": (0..1001).map(|_| json!({"key_id": key_id, "at": T0})).collect::<Vec<_>>()}),
        ),
        (
            "65 request counts",
            json!({"requests": (0..65).map(|i| json!({"plan": format!("p{i}"), "allowed": 1, "refused": 0})).collect::<Vec<_>>()}),
        ),
        (
            "lower-case code",
            with_bad_refusal("code", json!("rate_limited")),
        ),
        ("empty code", with_bad_refusal("code", json!(""))),
        (
            "code of 65",
            with_bad_refusal("code", json!("A".repeat(65))),
        ),
        ("status 200", with_bad_refusal("status", json!(200))),
        ("status 600", with_bad_refusal("status", json!(600))),
        ("status as text", with_bad_refusal("status", json!("429"))),
        ("negative at", with_bad_refusal("at", json!(-1))),
        (
            "at after 2100",
            with_bad_refusal("at", json!(4_102_444_801_i64)),
        ),
        ("at as a float", with_bad_refusal("at", json!(1.5))),
        (
            "client with a port",
            with_bad_refusal("client", json!("203.0.113.7:443")),
        ),
        (
            "client in brackets",
            with_bad_refusal("client", json!("[2001:db8::1]")),
        ),
        (
            "client as a name",
            with_bad_refusal("client", json!("example.com")),
        ),
        ("client empty", with_bad_refusal("client", json!(""))),
        (
            "client out of range",
            with_bad_refusal("client", json!("256.1.1.1")),
        ),
        (
            "route with a space",
            with_bad_refusal("route", json!("/a b")),
        ),
        (
            "route with a newline",
            with_bad_refusal("route", json!("/a\nb")),
        ),
        ("route not ASCII", with_bad_refusal("route", json!("/é"))),
        (
            "route of 257",
            with_bad_refusal("route", json!("/".repeat(257))),
        ),
        (
            "request id of 129",
            with_bad_refusal("request_id", json!("r".repeat(129))),
        ),
        (
            "request id with a tab",
            with_bad_refusal("request_id", json!("a\tb")),
        ),
        (
            "method with a space",
            with_bad_refusal("method", json!("GE T")),
        ),
        (
            "method of 17",
            with_bad_refusal("method", json!("A".repeat(17))),
        ),
        (
            "key id with a slash",
            with_bad_refusal("key_id", json!("key/1")),
        ),
        ("empty user", with_bad_refusal("user", json!(""))),
        (
            "plan of 129",
            with_bad_refusal("plan", json!("p".repeat(129))),
        ),
        ("missing code", {
            let mut r = refusal("/x", "X", 400);
            r.as_object_mut().unwrap().remove("code");
            json!({"refusals": [r]})
        }),
        (
            "unknown refusal field",
            with_bad_refusal("reason", json!("x")),
        ),
        ("unknown top-level field", json!({"refusal": []})),
        (
            "unknown key-use field",
            json!({"key_uses": [{"key_id": key_id, "at": T0, "n": 1}]}),
        ),
        (
            "unknown count field",
            json!({"requests": [{"plan": "team", "allowed": 1, "refused": 0, "total": 1}]}),
        ),
        ("proxy with a space", json!({"proxy": "envoy 1"})),
        ("proxy of 129", json!({"proxy": "e".repeat(129)})),
        ("negative cache version", json!({"cache_version": -1})),
        ("negative dropped", json!({"dropped": -1})),
        (
            "negative allowed",
            json!({"requests": [{"plan": "team", "allowed": -1, "refused": 0}]}),
        ),
        (
            "refused above the cap",
            json!({"requests": [{"plan": "team", "allowed": 0, "refused": 1_000_000_000_001_i64}]}),
        ),
        (
            "plan with markup",
            json!({"requests": [{"plan": "<b>", "allowed": 1, "refused": 0}]}),
        ),
        (
            "key id too long",
            json!({"key_uses": [{"key_id": "k".repeat(129), "at": T0}]}),
        ),
        ("refusals not a list", json!({"refusals": {"at": 1}})),
        ("shadow as text", with_bad_refusal("shadow", json!("true"))),
        ("shadow as a number", with_bad_refusal("shadow", json!(1))),
        (
            "negative shadow_refused",
            json!({"requests": [{"plan": "team", "allowed": 0, "refused": 0, "shadow_refused": -1}]}),
        ),
        (
            "shadow_refused above the cap",
            json!({"requests": [{"plan": "team", "allowed": 0, "refused": 0,
                                 "shadow_refused": 1_000_000_000_001_i64}]}),
        ),
    ];
    for (name, body) in &cases {
        // Each bad report also carries good parts: none of them may be stored.
        let mut body = body.clone();
        let obj = body.as_object_mut().unwrap();
        obj.entry("key_uses")
            .or_insert(json!([{"key_id": key_id, "at": T0 + 1}]));
        obj.entry("requests")
            .or_insert(json!([{"plan": "team", "allowed": 1, "refused": 1}]));
        obj.entry("proxy").or_insert(json!("envoy-bad"));
        let (status, resp) = post_events(&s, Some(FEED), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {resp}");
        assert_eq!(error_code(&resp), "BAD_REQUEST", "{name}");
    }
    assert!(refusals(&s).await.is_empty());
    assert_eq!(last_used(&s, &key_id).await, Value::Null);
    let st = stats(&s).await;
    assert_eq!(st["plans"], json!([]));
    assert_eq!(st["proxies"], json!([]));
}

#[tokio::test]
async fn an_error_names_the_field_and_never_quotes_the_value() {
    let s = svc().await;
    let secret = "ghk_pasted_secret_value_123";
    let mut bad = refusal("/x", "X", 400);
    bad["client"] = json!(secret);
    let (status, resp) = post_events(
        &s,
        Some(FEED),
        &json!({"refusals": [refusal("/a", "A", 400), bad]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = resp["error"].as_str().unwrap();
    assert!(message.contains("refusals[1].client"), "{message}");
    assert!(!resp.to_string().contains(secret), "{resp}");
    // An unknown field's name is not echoed either.
    let (status, resp) = post_events(&s, Some(FEED), &json!({ secret: 1 })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!resp.to_string().contains(secret), "{resp}");
}

#[tokio::test]
async fn a_full_report_of_1000_refusals_fits_its_larger_body_limit() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let key_id = key["id"].as_str().unwrap();
    let refusals_in: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"at": T0 + i, "request_id": format!("{i:0>128}"), "method": "DELETE",
                   "route": format!("/{}", "r".repeat(255)), "code": "C".repeat(64),
                   "status": 429, "key_id": key_id, "user": "u".repeat(128),
                   "plan": "p".repeat(128), "client": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"})
        })
        .collect();
    let body = json!({"proxy": "envoy-1", "cache_version": 1, "refusals": refusals_in,
                      "key_uses": [{"key_id": key_id, "at": T0}]});
    // Every `at` in the past of the server's clock: none is dropped as too new.
    s.clock.advance_secs(1000);
    // Far above the 64 KiB of the other routes.
    assert!(body.to_string().len() > 512 * 1024);
    let accepted = report(&s, body).await;
    assert_eq!(accepted["refusals"], 1000);
    assert_eq!(accepted["key_uses"], 1);
    assert_eq!(refusals(&s).await.len(), 1000);

    // Past 2 MiB: 413, whatever the route's JSON says.
    let huge = format!(r#"{{"proxy":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/events")
        .header("authorization", format!("Bearer {FEED}"))
        .header("content-type", "application/json")
        .body(Body::from(huge))
        .unwrap();
    let (status, resp) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&resp), "PAYLOAD_TOO_LARGE");
    // Other routes keep their 64 KiB.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/keys/verify")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Body::from(format!(
            r#"{{"api_key":"{}"}}"#,
            "x".repeat(70 * 1024)
        )))
        .unwrap();
    assert_eq!(send(&s.app, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_report_without_a_json_content_type_is_415() {
    let s = svc().await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/events")
        .header("authorization", format!("Bearer {FEED}"))
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let (status, resp) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&resp), "UNSUPPORTED_MEDIA_TYPE");
}

#[tokio::test]
async fn cleanup_removes_refusals_counts_and_proxies_after_the_event_retention() {
    let s = svc_with(|c| c.event_retention = Duration::from_secs(30 * 86_400)).await;
    let key = s.issue("user_1").await;
    report(
        &s,
        json!({"proxy": "envoy-old",
               "refusals": [refusal("/old", "FORBIDDEN", 403)],
               "requests": [{"plan": "team", "allowed": 1, "refused": 1}]}),
    )
    .await;
    s.clock.advance_secs(29 * 86_400);
    let recent = refusal("/recent", "FORBIDDEN", 403);
    let mut recent = recent;
    recent["at"] = json!(T0 + 29 * 86_400);
    report(
        &s,
        json!({"proxy": "envoy-new", "refusals": [recent],
               "requests": [{"plan": "team", "allowed": 2, "refused": 0}]}),
    )
    .await;

    // Within the retention: everything stays.
    let n = gatehouse_control::cleanup::run_events_once(&s.state)
        .await
        .unwrap();
    assert_eq!((n.refusals, n.usage_buckets, n.proxies), (0, 0, 0));
    assert_eq!(refusals(&s).await.len(), 2);

    // Past 30 days for the first report: its refusal, bucket and proxy go.
    s.clock.advance_secs(86_400 + 60);
    let n = gatehouse_control::cleanup::run_events_once(&s.state)
        .await
        .unwrap();
    assert_eq!((n.refusals, n.usage_buckets, n.proxies), (1, 1, 1));
    let left = refusals(&s).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["target"], "/recent");
    let st = stats(&s).await;
    assert_eq!(st["proxies"].as_array().unwrap().len(), 1);
    assert_eq!(st["proxies"][0]["proxy"], "envoy-new");
    // Changes are the audit trail of the feed: never purged with the refusals.
    let (_, changes) = s.admin(Method::GET, "/v1/audit?kind=change", None).await;
    assert_eq!(changes["events"][0]["target"], key["id"]);
}

#[tokio::test]
async fn the_event_retention_is_a_setting() {
    let s = svc_with(|c| c.event_retention = Duration::from_secs(3600)).await;
    report(
        &s,
        json!({"refusals": [refusal("/x", "FORBIDDEN", 403)],
               "requests": [{"plan": "team", "allowed": 1, "refused": 1}]}),
    )
    .await;
    s.clock.advance_secs(3600 + 120);
    let n = gatehouse_control::cleanup::run_events_once(&s.state)
        .await
        .unwrap();
    assert_eq!((n.refusals, n.usage_buckets), (1, 1));
}

#[tokio::test]
async fn cleanup_of_refusals_works_in_batches() {
    let s = svc_with(|c| c.event_retention = Duration::from_secs(60)).await;
    let n = gatehouse_control::cleanup::BATCH as usize + 20;
    let all: Vec<Value> = (0..n).map(|_| refusal("/x", "FORBIDDEN", 403)).collect();
    for chunk in all.chunks(1000) {
        report(&s, json!({ "refusals": chunk })).await;
    }
    s.clock.advance_secs(600);
    let purged = gatehouse_control::cleanup::run_events_once(&s.state)
        .await
        .unwrap();
    assert_eq!(purged.refusals, n as u64);
    assert!(refusals(&s).await.is_empty());
}

#[tokio::test]
async fn the_dashboard_page_is_served_without_a_token_with_a_strict_csp() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let res = tower::ServiceExt::oneshot(
        s.app.clone(),
        Request::builder().uri("/").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "no-store");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    // The page holds no data: that comes from the API, with the token.
    assert!(!page.contains(key["id"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_reports_are_all_counted() {
    let s = svc().await;
    let key_id = s.issue("user_1").await["id"].as_str().unwrap().to_string();
    s.warm_pool(12).await;
    let overlap = s.watch_pool();
    let tasks: Vec<_> = (0..20_i64)
        .map(|i| {
            let app = s.app.clone();
            let body = json!({
                "proxy": format!("envoy-{}", i % 4),
                "cache_version": i,
                "refusals": (0..5).map(|_| refusal("/c", "FORBIDDEN", 403)).collect::<Vec<_>>(),
                "key_uses": [{"key_id": key_id, "at": T0 as i64 + i}],
                "requests": [{"plan": "team", "allowed": 1, "refused": 2},
                             {"plan": "", "allowed": 3, "refused": 0}]
            });
            tokio::spawn(async move {
                send(
                    &app,
                    request(Method::POST, "/v1/events", Some(FEED), Some(&body)),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    overlap.assert_overlapped().await;
    assert_eq!(refusals(&s).await.len(), 100);
    assert_eq!(last_used(&s, &key_id).await, "2026-01-01T00:00:19.000Z");
    let st = stats(&s).await;
    assert_eq!(
        st["plans"],
        json!([
            {"plan": "", "allowed": 60, "refused": 0, "shadow_refused": 0},
            {"plan": "team", "allowed": 20, "refused": 40, "shadow_refused": 0}
        ])
    );
    assert_eq!(st["proxies"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn one_users_list_is_not_cut_at_the_default_of_the_list_of_every_key() {
    let s = svc_with(|c| c.max_keys_per_user = 200).await;
    for _ in 0..101 {
        s.issue("user_1").await;
    }
    let (_, mine) = s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    assert_eq!(mine["keys"].as_array().unwrap().len(), 101);
    let (_, all) = s.admin(Method::GET, "/v1/keys", None).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 100);
    let (_, some) = s
        .admin(Method::GET, "/v1/keys?user=user_1&limit=3", None)
        .await;
    assert_eq!(some["keys"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn entries_timed_past_the_servers_clock_and_skew_are_dropped_counted_and_the_rest_stored() {
    let s = svc().await;
    let a = s.issue("user_1").await["id"].as_str().unwrap().to_string();
    let mut late = refusal("/late", "FORBIDDEN", 403);
    late["at"] = json!(T0 + 301);
    let mut pinned = refusal("/pinned", "FORBIDDEN", 403);
    pinned["at"] = json!(4_102_444_800_i64);
    let (status, resp) = post_events(
        &s,
        Some(FEED),
        &json!({"refusals": [refusal("/now", "FORBIDDEN", 403), late, pinned],
        "key_uses": [
            {"key_id": a, "at": T0 + 300},
            {"key_id": a, "at": T0 + 301},
            {"key_id": a, "at": 4_102_444_800_i64}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        resp,
        json!({"accepted": {"refusals": 1, "key_uses": 1, "requests": 0},
               "dropped_future": {"refusals": 2, "key_uses": 2}})
    );
    // 300 s of skew is taken; no later time is stored anywhere.
    assert_eq!(last_used(&s, &a).await, "2026-01-01T00:05:00.000Z");
    let stored = refusals(&s).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["target"], "/now");
    assert_eq!(stats(&s).await["counters"]["future_entries_dropped"], 4);

    // The bound moves with the server's clock.
    s.clock.advance_secs(600);
    let accepted = report(&s, json!({"key_uses": [{"key_id": a, "at": T0 + 900}]})).await;
    assert_eq!(accepted["key_uses"], 1);
    assert_eq!(last_used(&s, &a).await, "2026-01-01T00:15:00.000Z");
    let st = stats(&s).await;
    assert_eq!(st["counters"]["future_entries_dropped"], 4);
    assert_eq!(st["counters"]["since"], "2026-01-01T00:00:00.000Z");
}

#[tokio::test]
async fn a_future_entry_does_not_excuse_a_broken_one() {
    let s = svc().await;
    let mut bad = refusal("/x", "lower", 403);
    bad["at"] = json!(T0 + 10_000);
    let (status, resp) = post_events(
        &s,
        Some(FEED),
        &json!({"refusals": [refusal("/ok", "FORBIDDEN", 403), bad]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(error_code(&resp), "BAD_REQUEST");
    assert!(refusals(&s).await.is_empty());
    assert_eq!(stats(&s).await["counters"]["future_entries_dropped"], 0);
}

async fn refusal_stats(s: &Svc, query: &str) -> Value {
    let (status, body) = s
        .admin(Method::GET, &format!("/v1/stats/refusals{query}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn series(s: &Svc, query: &str) -> Value {
    let (status, body) = s
        .admin(Method::GET, &format!("/v1/stats/series{query}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A refusal at `T0 + secs` of `caller` (`key:`, `user:`, `ip:` or nothing).
fn refusal_by(secs: u64, route: &str, code: &str, status: u16, caller: &str) -> Value {
    let mut r = refusal(route, code, status);
    r["at"] = json!(T0 + secs);
    if let Some(k) = caller.strip_prefix("key:") {
        r["key_id"] = json!(k);
    } else if let Some(u) = caller.strip_prefix("user:") {
        r["user"] = json!(u);
    } else if let Some(ip) = caller.strip_prefix("ip:") {
        r["client"] = json!(ip);
    }
    r
}

fn shadow(mut r: Value) -> Value {
    r["shadow"] = json!(true);
    r
}

#[tokio::test]
async fn refusals_are_grouped_by_code_route_and_caller_with_counts_and_first_and_last_seen() {
    let s = svc().await;
    s.clock.advance_secs(120);
    let mut rs: Vec<Value> = (0..40)
        .map(|i| refusal_by(i, "/v1/orders/{id}", "RATE_LIMITED", 429, "key:key_a"))
        .collect();
    // The same refusal, but from a rule in shadow mode: its own group.
    rs.extend((0..3).map(|i| {
        shadow(refusal_by(
            10 + i,
            "/v1/orders/{id}",
            "RATE_LIMITED",
            429,
            "key:key_a",
        ))
    }));
    rs.push(refusal_by(50, "/v1/me", "TOKEN_EXPIRED", 401, "user:bob"));
    rs.push(refusal_by(51, "/v1/me", "TOKEN_EXPIRED", 401, "user:bob"));
    // Anonymous callers are told apart by their address.
    rs.push(refusal_by(
        52,
        "/v1/search",
        "RATE_LIMITED",
        429,
        "ip:2001:db8::9",
    ));
    rs.push(refusal_by(53, "", "NO_ROUTE", 404, ""));
    // A key id wins over the user, as in the audit log.
    let mut both = refusal_by(54, "/v1/me", "TOKEN_EXPIRED", 401, "user:bob");
    both["key_id"] = json!("key_b");
    rs.push(both);
    report(&s, json!({"proxy": "envoy-a", "refusals": rs})).await;

    // The audit log keeps each one; a shadow refusal says it refused nothing.
    let events = refusals(&s).await;
    assert_eq!(events.len(), 48);
    let would: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "would_refuse")
        .collect();
    assert_eq!(would.len(), 3);
    assert!(would.iter().all(|e| e["kind"] == "refusal"));

    let st = refusal_stats(&s, "").await;
    assert_eq!(st["window"], "hour");
    assert_eq!(st["from"], "2025-12-31T23:03:00.000Z");
    assert_eq!(st["to"], "2026-01-01T00:02:00.000Z");
    assert_eq!(st["groups_truncated"], false);
    let g = |code: &str,
             status: u16,
             route: &str,
             caller: &str,
             shadow: bool,
             count: u64,
             first: u64,
             last: u64| {
        let t = |secs: u64| format!("2026-01-01T00:00:{secs:02}.000Z");
        json!({"code": code, "status": status, "route": route, "caller": caller,
               "shadow": shadow, "count": count, "first_seen": t(first), "last_seen": t(last)})
    };
    // Largest first, then the latest seen.
    assert_eq!(
        st["groups"],
        json!([
            g(
                "RATE_LIMITED",
                429,
                "/v1/orders/{id}",
                "key:key_a",
                false,
                40,
                0,
                39
            ),
            g(
                "RATE_LIMITED",
                429,
                "/v1/orders/{id}",
                "key:key_a",
                true,
                3,
                10,
                12
            ),
            g("TOKEN_EXPIRED", 401, "/v1/me", "user:bob", false, 2, 50, 51),
            g(
                "TOKEN_EXPIRED",
                401,
                "/v1/me",
                "key:key_b",
                false,
                1,
                54,
                54
            ),
            g("NO_ROUTE", 404, "", "anonymous", false, 1, 53, 53),
            g(
                "RATE_LIMITED",
                429,
                "/v1/search",
                "ip:2001:db8::9",
                false,
                1,
                52,
                52
            ),
        ])
    );
    assert_eq!(
        st["top_callers"],
        json!([
            {"caller": "key:key_a", "refused": 40, "would_refuse": 3},
            {"caller": "user:bob", "refused": 2, "would_refuse": 0},
            {"caller": "anonymous", "refused": 1, "would_refuse": 0},
            {"caller": "ip:2001:db8::9", "refused": 1, "would_refuse": 0},
            {"caller": "key:key_b", "refused": 1, "would_refuse": 0},
        ])
    );
    assert_eq!(
        st["top_routes"],
        json!([
            {"route": "/v1/orders/{id}", "refused": 40, "would_refuse": 3},
            {"route": "/v1/me", "refused": 3, "would_refuse": 0},
            {"route": "", "refused": 1, "would_refuse": 0},
            {"route": "/v1/search", "refused": 1, "would_refuse": 0},
        ])
    );

    // A second post adds to the same groups: the counts and last seen move.
    report(
        &s,
        json!({"refusals": [refusal_by(100, "/v1/orders/{id}", "RATE_LIMITED", 429, "key:key_a")]}),
    )
    .await;
    let st = refusal_stats(&s, "").await;
    assert_eq!(st["groups"][0]["count"], 41);
    assert_eq!(st["groups"][0]["first_seen"], "2026-01-01T00:00:00.000Z");
    assert_eq!(st["groups"][0]["last_seen"], "2026-01-01T00:01:40.000Z");
}

#[tokio::test]
async fn the_refusal_window_is_the_last_hour_or_day_in_whole_minutes() {
    let s = svc().await;
    report(
        &s,
        json!({"refusals": [refusal_by(0, "/old", "RATE_LIMITED", 429, "user:a")]}),
    )
    .await;
    // 59 minutes later the first minute is still in the hour; a minute on, it is not.
    s.clock.advance_secs(59 * 60 + 30);
    report(
        &s,
        json!({"refusals": [refusal_by(59 * 60, "/new", "RATE_LIMITED", 429, "user:b")]}),
    )
    .await;
    assert_eq!(
        refusal_stats(&s, "?window=hour").await["groups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    s.clock.advance_secs(60);
    let hour = refusal_stats(&s, "?window=hour").await;
    assert_eq!(hour["groups"].as_array().unwrap().len(), 1);
    assert_eq!(hour["groups"][0]["route"], "/new");
    let day = refusal_stats(&s, "?window=day").await;
    assert_eq!(day["window"], "day");
    assert_eq!(day["groups"].as_array().unwrap().len(), 2);
    s.clock.advance_secs(86_400);
    assert_eq!(refusal_stats(&s, "?window=day").await["groups"], json!([]));
}

#[tokio::test]
async fn at_most_100_groups_and_10_top_callers_and_routes_are_answered() {
    let s = svc().await;
    // 120 callers on 120 routes, caller i refused i + 1 times.
    let mut rs = Vec::new();
    for i in 0..120u64 {
        for _ in 0..=i {
            rs.push(refusal_by(
                i % 60,
                &format!("/r{i}"),
                "RATE_LIMITED",
                429,
                &format!("user:u{i}"),
            ));
        }
    }
    for chunk in rs.chunks(1000) {
        report(&s, json!({ "refusals": chunk })).await;
    }
    let st = refusal_stats(&s, "").await;
    let groups = st["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 100);
    assert_eq!(st["groups_truncated"], true);
    assert_eq!(groups[0]["caller"], "user:u119");
    assert_eq!(groups[0]["count"], 120);
    assert_eq!(groups[99]["count"], 21);
    let callers = st["top_callers"].as_array().unwrap();
    assert_eq!(callers.len(), 10);
    assert_eq!(
        callers[0],
        json!({"caller": "user:u119", "refused": 120, "would_refuse": 0})
    );
    assert_eq!(callers[9]["caller"], "user:u110");
    let routes = st["top_routes"].as_array().unwrap();
    assert_eq!(routes.len(), 10);
    assert_eq!(routes[0]["route"], "/r119");
}

#[tokio::test]
async fn the_alert_fires_when_more_distinct_callers_than_the_threshold_got_429_in_5_minutes() {
    let s = svc_with(|c| c.alert_distinct_refused = 3).await;
    s.clock.advance_secs(600);
    let alert = |st: &Value| st["alert"].clone();
    let quiet = refusal_stats(&s, "").await;
    assert_eq!(
        alert(&quiet),
        json!({"distinct_callers": 0, "threshold": 3, "window_seconds": 300, "status": 429,
               "firing": false})
    );
    // Three callers refused, one of them many times: at the threshold, not above.
    let mut rs: Vec<Value> = (0..50)
        .map(|_| refusal_by(590, "/v1/search", "RATE_LIMITED", 429, "key:key_a"))
        .collect();
    rs.push(refusal_by(
        591,
        "/v1/search",
        "RATE_LIMITED",
        429,
        "user:bob",
    ));
    rs.push(refusal_by(
        592,
        "/v1/search",
        "RATE_LIMITED",
        429,
        "ip:203.0.113.7",
    ));
    // Neither shadow refusals, nor other statuses, nor older ones count.
    rs.push(shadow(refusal_by(
        593,
        "/v1/search",
        "RATE_LIMITED",
        429,
        "user:s1",
    )));
    rs.push(refusal_by(
        594,
        "/v1/me",
        "INVALID_CREDENTIALS",
        401,
        "ip:203.0.113.8",
    ));
    rs.push(refusal_by(
        200,
        "/v1/search",
        "RATE_LIMITED",
        429,
        "user:old",
    ));
    report(&s, json!({ "refusals": rs })).await;
    let st = refusal_stats(&s, "").await;
    assert_eq!(alert(&st)["distinct_callers"], 3);
    assert_eq!(alert(&st)["firing"], false);
    // A fourth caller: above the threshold.
    report(
        &s,
        json!({"refusals": [refusal_by(595, "/v1/orders", "RATE_LIMITED", 429, "ip:2001:db8::1")]}),
    )
    .await;
    let st = refusal_stats(&s, "?window=day").await;
    assert_eq!(alert(&st)["distinct_callers"], 4);
    assert_eq!(alert(&st)["firing"], true);
    // The minutes that began within the last 5 minutes: gone 6 minutes on.
    s.clock.advance_secs(6 * 60);
    let st = refusal_stats(&s, "").await;
    assert_eq!(alert(&st)["distinct_callers"], 0);
    assert_eq!(alert(&st)["firing"], false);
    assert_eq!(st["groups"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn the_series_lists_each_plans_minutes_allowed_refused_and_shadow_refused() {
    let s = svc().await;
    s.clock.advance_secs(30);
    report(
        &s,
        json!({"requests": [{"plan": "team", "allowed": 10, "refused": 2, "shadow_refused": 4},
                            {"plan": "", "allowed": 3, "refused": 1}]}),
    )
    .await;
    report(
        &s,
        json!({"requests": [{"plan": "team", "allowed": 5, "refused": 0}]}),
    )
    .await;
    s.clock.advance_secs(120);
    report(
        &s,
        json!({"requests": [{"plan": "team", "allowed": 1, "refused": 1, "shadow_refused": 1},
                            {"plan": "free", "allowed": 1, "refused": 0}]}),
    )
    .await;
    let hour = series(&s, "").await;
    assert_eq!(
        hour,
        json!({
            "window": "hour", "step_seconds": 60,
            "from": "2025-12-31T23:03:00.000Z", "to": "2026-01-01T00:02:00.000Z",
            "plans": [
                {"plan": "team", "allowed": 16, "refused": 3, "shadow_refused": 5, "points": [
                    {"minute": "2026-01-01T00:00:00.000Z", "allowed": 15, "refused": 2,
                     "shadow_refused": 4},
                    {"minute": "2026-01-01T00:02:00.000Z", "allowed": 1, "refused": 1,
                     "shadow_refused": 1}
                ]},
                {"plan": "", "allowed": 3, "refused": 1, "shadow_refused": 0, "points": [
                    {"minute": "2026-01-01T00:00:00.000Z", "allowed": 3, "refused": 1,
                     "shadow_refused": 0}
                ]},
                {"plan": "free", "allowed": 1, "refused": 0, "shadow_refused": 0, "points": [
                    {"minute": "2026-01-01T00:02:00.000Z", "allowed": 1, "refused": 0,
                     "shadow_refused": 0}
                ]}
            ],
            "plans_left_off": 0
        })
    );
    // An hour on, the first minute has left the hour but not the day.
    s.clock.advance_secs(59 * 60);
    let hour = series(&s, "?window=hour").await;
    assert_eq!(hour["plans"][0]["points"].as_array().unwrap().len(), 1);
    assert_eq!(hour["plans"].as_array().unwrap().len(), 2);
    let day = series(&s, "?window=day").await;
    assert_eq!(day["window"], "day");
    assert_eq!(day["from"], "2025-12-31T01:02:00.000Z");
    assert_eq!(day["plans"][0]["points"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_series_answers_the_16_busiest_plans_and_counts_the_others() {
    let s = svc().await;
    let requests: Vec<Value> = (0..20)
        .map(|i| json!({"plan": format!("p{i:02}"), "allowed": i + 1, "refused": 0}))
        .collect();
    report(&s, json!({ "requests": requests })).await;
    let st = series(&s, "").await;
    let plans = st["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 16);
    assert_eq!(plans[0]["plan"], "p19");
    assert_eq!(plans[15]["plan"], "p04");
    assert_eq!(st["plans_left_off"], 4);
}

#[tokio::test]
async fn the_summaries_take_hour_or_day_and_the_admin_token_only() {
    let s = svc().await;
    for path in ["/v1/stats/refusals", "/v1/stats/series"] {
        for query in ["?window=week", "?window=%3Cb%3E", "?window=", "?other=1"] {
            let (status, body) = s.admin(Method::GET, &format!("{path}{query}"), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}{query}: {body}");
            assert_eq!(error_code(&body), "BAD_REQUEST");
            assert!(!body["error"].as_str().unwrap().contains("<b>"), "{body}");
        }
        for token in [None, Some(FEED)] {
            let (status, _) = send(&s.app, request(Method::GET, path, token, None)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
}

#[tokio::test]
async fn cleanup_removes_the_refusal_counts_after_the_event_retention() {
    let s = svc_with(|c| c.event_retention = Duration::from_secs(3600)).await;
    report(
        &s,
        json!({"refusals": [refusal_by(0, "/x", "RATE_LIMITED", 429, "user:a"),
                            shadow(refusal_by(1, "/x", "RATE_LIMITED", 429, "user:a"))]}),
    )
    .await;
    s.clock.advance_secs(3600 + 120);
    let n = gatehouse_control::cleanup::run_events_once(&s.state)
        .await
        .unwrap();
    assert_eq!((n.refusals, n.refusal_buckets), (2, 2));
    assert_eq!(refusal_stats(&s, "?window=day").await["groups"], json!([]));
}
