//! The operators' levers (control/src/levers.rs, control/FEED.md "Levers"): rate
//! overrides per key and per tenant, limit modes, the allowlist. Through the real router
//! over a real database (SQLite, or PostgreSQL with `GATEHOUSE_TEST_DATABASE=postgres`):
//! what the admin API answers and refuses, the audit events, a restart, and what the feed
//! carries when.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests: a failure panics; wall-clock timeouts bound real waits"
)]

mod common;

use axum::http::{Method, StatusCode};
use common::{FEED, Svc, T0, TestDb, error_code, svc, svc_with};
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn at(secs: u64) -> String {
    format_rfc3339(UnixNanos::from_secs(secs))
}

fn v(page: &Value) -> i64 {
    page["version"].as_i64().unwrap()
}

async fn ok(s: &Svc, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = s.admin(method.clone(), path, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {answer}");
    answer
}

#[tokio::test]
async fn a_key_override_is_set_shown_in_key_listings_and_cleared() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    assert_eq!(key["limits"], Value::Null);
    let path = format!("/v1/keys/{id}/limits");

    let (status, set) = s
        .admin(
            Method::PUT,
            &path,
            Some(
                json!({"requests_per_minute": 20000, "expires_at": at(T0 + 3600),
                        "reason": "enterprise trial, ticket 4711"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(
        set,
        json!({"scope": "key", "id": id, "requests_per_minute": 20000,
               "expires_at": at(T0 + 3600), "reason": "enterprise trial, ticket 4711",
               "updated_at": at(T0)})
    );
    let (status, got) = s.admin(Method::GET, &path, None).await;
    assert_eq!((status, &got), (StatusCode::OK, &set));

    let limits = json!({"requests_per_minute": 20000, "expires_at": at(T0 + 3600),
                        "reason": "enterprise trial, ticket 4711", "updated_at": at(T0)});
    let shown = ok(&s, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["limits"], limits);
    let other = s.issue("user_2").await;
    let listed = ok(&s, Method::GET, "/v1/keys", None).await;
    let by_id = |want: &Value| {
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == *want)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&key["id"])["limits"], limits);
    assert_eq!(by_id(&other["id"])["limits"], Value::Null);
    let one_user = ok(&s, Method::GET, "/v1/keys?user=user_1", None).await;
    assert_eq!(one_user["keys"][0]["limits"], limits);

    // Set again: replaced, never.
    let again = ok(
        &s,
        Method::PUT,
        &path,
        Some(json!({"requests_per_minute": 5, "expires_at": null, "reason": "abuse case"})),
    )
    .await;
    assert_eq!(again["requests_per_minute"], 5);
    assert_eq!(again["expires_at"], Value::Null);

    let (status, body) = s.admin(Method::DELETE, &path, None).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = s.admin(Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
    let (status, body) = s.admin(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
    let shown = ok(&s, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["limits"], Value::Null);

    // A key that does not exist has no limits to set.
    let (status, body) = s
        .admin(
            Method::PUT,
            "/v1/keys/key_nope/limits",
            Some(json!({"requests_per_minute": 10, "reason": "r"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn tenant_overrides_and_modes_are_listed_in_force() {
    let s = svc().await;
    let set = ok(
        &s,
        Method::PUT,
        "/v1/tenants/tenant_1/limits",
        Some(json!({"requests_per_minute": 30, "reason": "lowered during abuse case"})),
    )
    .await;
    assert_eq!(
        set,
        json!({"scope": "tenant", "id": "tenant_1", "requests_per_minute": 30,
               "expires_at": null, "reason": "lowered during abuse case",
               "updated_at": at(T0)})
    );
    let got = ok(&s, Method::GET, "/v1/tenants/tenant_1/limits", None).await;
    assert_eq!(got, set);
    let (status, _) = s
        .admin(Method::GET, "/v1/tenants/tenant_2/limits", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mode = ok(
        &s,
        Method::PUT,
        "/v1/limits/webhook:stripe/mode",
        Some(json!({"mode": "off", "reason": "stripe rotated its secret"})),
    )
    .await;
    assert_eq!(
        mode,
        json!({"limit": "webhook:stripe", "mode": "off",
               "reason": "stripe rotated its secret", "updated_at": at(T0)})
    );
    ok(
        &s,
        Method::PUT,
        "/v1/limits/team/mode",
        Some(json!({"mode": "shadow", "reason": "new limit, rolling out"})),
    )
    .await;
    let listed = ok(&s, Method::GET, "/v1/limits", None).await;
    assert_eq!(
        listed,
        json!({
            "modes": [
                {"limit": "team", "mode": "shadow", "reason": "new limit, rolling out",
                 "updated_at": at(T0)},
                {"limit": "webhook:stripe", "mode": "off",
                 "reason": "stripe rotated its secret", "updated_at": at(T0)}
            ],
            "overrides": [set]
        })
    );

    // `enforce` removes the lever: the policy's mode applies again.
    let back = ok(
        &s,
        Method::PUT,
        "/v1/limits/team/mode",
        Some(json!({"mode": "enforce", "reason": "rollout done"})),
    )
    .await;
    assert_eq!(back["mode"], "enforce");
    let listed = ok(&s, Method::GET, "/v1/limits", None).await;
    assert_eq!(listed["modes"].as_array().unwrap().len(), 1);
    assert_eq!(listed["modes"][0]["limit"], "webhook:stripe");

    let (status, _) = s
        .admin(Method::DELETE, "/v1/tenants/tenant_1/limits", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let listed = ok(&s, Method::GET, "/v1/limits", None).await;
    assert_eq!(listed["overrides"], json!([]));
}

#[tokio::test]
async fn allowlist_entries_are_added_listed_and_removed() {
    let s = svc().await;
    let mut added = Vec::new();
    for (body, shown) in [
        (
            json!({"cidr": "203.0.113.0/24", "reason": "office"}),
            json!({"cidr": "203.0.113.0/24", "limit": null}),
        ),
        (
            json!({"cidr": "2001:DB8:0::/48", "limit": "login", "reason": "office v6"}),
            json!({"cidr": "2001:db8::/48", "limit": "login"}),
        ),
        (
            json!({"key_id": "key_8f3a", "limit": "team", "reason": "batch job"}),
            json!({"key_id": "key_8f3a", "limit": "team"}),
        ),
        (
            json!({"user": "user_1", "limit": null, "reason": "support"}),
            json!({"user": "user_1", "limit": null}),
        ),
        (
            json!({"tenant": "tenant_1", "limit": "search", "reason": "partner"}),
            json!({"tenant": "tenant_1", "limit": "search"}),
        ),
    ] {
        let (status, entry) = s
            .admin(Method::POST, "/v1/allowlist", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}: {entry}");
        let id = entry["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("alw_") && id.len() == 20, "{id}");
        let mut want = shown.as_object().unwrap().clone();
        want.insert("id".into(), json!(id));
        want.insert("reason".into(), body["reason"].clone());
        want.insert("created_at".into(), json!(at(T0)));
        assert_eq!(entry, Value::Object(want), "{body}");
        added.push(entry);
    }
    let listed = ok(&s, Method::GET, "/v1/allowlist", None).await;
    let mut want = added.clone();
    want.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(listed, json!({ "allowlist": want }));

    // The same subject and limit twice is a conflict; another limit is another entry.
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/allowlist",
            Some(json!({"cidr": "203.0.113.0/24", "reason": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "CONFLICT");
    let (status, _) = s
        .admin(
            Method::POST,
            "/v1/allowlist",
            Some(json!({"cidr": "203.0.113.0/24", "limit": "free", "reason": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let first = added[0]["id"].as_str().unwrap();
    let (status, _) = s
        .admin(
            Method::DELETE,
            &format!("/v1/allowlist/{first}?reason=office%20moved"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = s
        .admin(Method::DELETE, &format!("/v1/allowlist/{first}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
    let listed = ok(&s, Method::GET, "/v1/allowlist", None).await;
    assert_eq!(listed["allowlist"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn lever_input_is_checked_strictly_in_the_standard_error_shape() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let key_path = format!("/v1/keys/{}/limits", key["id"].as_str().unwrap());
    let long = "x".repeat(501);
    let bad: Vec<(Method, &str, Value)> = vec![
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 0, "reason": "r"}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10_000_001, "reason": "r"}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": -5, "reason": "r"}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 1.5, "reason": "r"}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": "10", "reason": "r"}),
        ),
        (Method::PUT, &key_path, json!({"requests_per_minute": 10})),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": ""}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": "  "}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": long}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": "a\nb"}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": "r", "expires_at": "tomorrow"}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": "r", "expires_at": at(T0)}),
        ),
        (
            Method::PUT,
            &key_path,
            json!({"requests_per_minute": 10, "reason": "r", "burst": 3}),
        ),
        (
            Method::PUT,
            "/v1/tenants/not%20an%20id/limits",
            json!({"requests_per_minute": 10, "reason": "r"}),
        ),
        (
            Method::PUT,
            "/v1/limits/team/mode",
            json!({"mode": "loud", "reason": "r"}),
        ),
        (Method::PUT, "/v1/limits/team/mode", json!({"mode": "off"})),
        (
            Method::PUT,
            "/v1/limits/team/mode",
            json!({"mode": "off", "reason": "r", "x": 1}),
        ),
        (
            Method::PUT,
            "/v1/limits/not%20a%20name/mode",
            json!({"mode": "off", "reason": "r"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"reason": "no subject"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"cidr": "203.0.113.0/24", "user": "u", "reason": "two"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"cidr": "203.0.113.7/24", "reason": "r"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"cidr": "203.0.113.7", "reason": "r"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"cidr": "2001:db8::/129", "reason": "r"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"user": "a b", "reason": "r"}),
        ),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"user": "u", "limit": "no such/name", "reason": "r"}),
        ),
        (Method::POST, "/v1/allowlist", json!({"user": "u"})),
        (
            Method::POST,
            "/v1/allowlist",
            json!({"user": null, "tenant": "t", "reason": ""}),
        ),
    ];
    for (method, path, body) in bad {
        let (status, answer) = s.admin(method.clone(), path, Some(body.clone())).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {answer}"
        );
        assert_eq!(error_code(&answer), "BAD_REQUEST", "{body}");
        // No message quotes what was sent.
        let message = answer["error"].as_str().unwrap();
        assert!(
            !message.contains("tomorrow") && !message.contains("loud"),
            "{message}"
        );
    }
    // A removal's reason is checked too.
    let (status, answer) = s
        .admin(Method::DELETE, "/v1/allowlist/alw_x?reason=", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&answer), "BAD_REQUEST");
    // Nothing was changed, nor audited.
    let audit = ok(&s, Method::GET, "/v1/audit?kind=lever", None).await;
    assert_eq!(audit["events"], json!([]));
    // Only the admin token.
    for (method, path) in [
        (Method::GET, "/v1/limits"),
        (Method::GET, "/v1/allowlist"),
        (Method::PUT, "/v1/limits/team/mode"),
        (Method::GET, key_path.as_str()),
    ] {
        let (status, answer) = common::send(
            &s.app,
            common::request(
                method.clone(),
                path,
                Some(FEED),
                Some(&json!({"mode": "off", "reason": "r"})),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(error_code(&answer), "UNAUTHORIZED");
    }
}

#[tokio::test]
async fn every_lever_change_is_an_audit_event_with_its_reason() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(json!({"requests_per_minute": 20000, "expires_at": at(T0 + 60), "reason": "r1"})),
    )
    .await;
    ok(
        &s,
        Method::PUT,
        "/v1/tenants/tenant_1/limits",
        Some(json!({"requests_per_minute": 30, "reason": "r2"})),
    )
    .await;
    ok(
        &s,
        Method::DELETE,
        "/v1/tenants/tenant_1/limits?reason=r3",
        None,
    )
    .await;
    ok(
        &s,
        Method::PUT,
        "/v1/limits/team/mode",
        Some(json!({"mode": "shadow", "reason": "r4"})),
    )
    .await;
    let entry = ok(
        &s,
        Method::POST,
        "/v1/allowlist",
        Some(json!({"cidr": "198.51.100.0/24", "limit": "team", "reason": "r5"})),
    )
    .await;
    let entry_id = entry["id"].as_str().unwrap();
    ok(
        &s,
        Method::DELETE,
        &format!("/v1/allowlist/{entry_id}"),
        None,
    )
    .await;

    let audit = ok(&s, Method::GET, "/v1/audit?kind=lever", None).await;
    let events = audit["events"].as_array().unwrap();
    let seen: Vec<(Value, Value, Value, Value, Value)> = events
        .iter()
        .rev()
        .map(|e| {
            assert_eq!(e["kind"], "lever");
            assert_eq!(e["actor"], "admin");
            assert_eq!(e["at"], at(T0));
            assert_eq!(e["request_id"], "test-req-1");
            (
                e["action"].clone(),
                e["target"].clone(),
                e["reason"].clone(),
                e["detail"].clone(),
                e["version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                json!("limits.set"),
                json!(format!("key:{id}")),
                json!("r1"),
                json!(format!("requests_per_minute=20000 expires_at={}", T0 + 60)),
                json!(2)
            ),
            (
                json!("limits.set"),
                json!("tenant:tenant_1"),
                json!("r2"),
                json!("requests_per_minute=30 expires_at=never"),
                json!(3)
            ),
            (
                json!("limits.cleared"),
                json!("tenant:tenant_1"),
                json!("r3"),
                json!(""),
                json!(4)
            ),
            (
                json!("mode.set"),
                json!("team"),
                json!("r4"),
                json!("mode=shadow"),
                json!(5)
            ),
            (
                json!("allowlist.added"),
                json!(entry_id),
                json!("r5"),
                json!("cidr=198.51.100.0/24 limit=team"),
                json!(6)
            ),
            (
                json!("allowlist.removed"),
                json!(entry_id),
                Value::Null,
                json!("cidr=198.51.100.0/24 limit=team"),
                json!(7)
            ),
        ]
    );
    // In the whole log too, beside the key changes; key changes carry no reason.
    let all = ok(&s, Method::GET, "/v1/audit", None).await;
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), 7);
    let create = events.last().unwrap();
    assert_eq!(create["kind"], "change");
    assert!(create.get("reason").is_none() && create.get("detail").is_none());
    // No refusal filter picks them up.
    let changes = ok(&s, Method::GET, "/v1/audit?kind=change", None).await;
    assert_eq!(changes["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn levers_survive_a_restart_of_the_service() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(json!({"requests_per_minute": 20000, "reason": "enterprise"})),
    )
    .await;
    ok(
        &s,
        Method::PUT,
        "/v1/limits/login/mode",
        Some(json!({"mode": "off", "reason": "incident 12"})),
    )
    .await;
    ok(
        &s,
        Method::POST,
        "/v1/allowlist",
        Some(json!({"tenant": "tenant_9", "reason": "partner"})),
    )
    .await;
    let (_, before) = s.feed("since=0").await;
    let limits = ok(&s, Method::GET, "/v1/limits", None).await;
    let allowlist = ok(&s, Method::GET, "/v1/allowlist", None).await;

    // A new process on the same database: its own store, pools and state.
    let restarted = s.replica().await;
    let (_, after) = restarted.feed("since=0").await;
    assert_eq!(after["levers"], before["levers"]);
    assert_eq!(after["levers"]["overrides"][0]["id"], json!(id));
    assert_eq!(
        restarted.admin(Method::GET, "/v1/limits", None).await.1,
        limits
    );
    assert_eq!(
        restarted.admin(Method::GET, "/v1/allowlist", None).await.1,
        allowlist
    );
    // A change after the restart is stamped after the last one.
    let (status, _) = restarted
        .admin(
            Method::PUT,
            "/v1/limits/login/mode",
            Some(json!({"mode": "enforce", "reason": "resolved"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, delta) = restarted.feed(&format!("since={}", v(&before))).await;
    assert_eq!(v(&delta), v(&before) + 1);
    assert_eq!(delta["levers"]["modes"], json!([]));
}

#[tokio::test]
async fn the_feed_carries_levers_on_changes_after_a_lever_change_and_on_a_first_snapshot_page() {
    let s = svc_with(|c| c.feed_page_size = 1).await;
    // A database that never changed: the empty set, on its one snapshot page.
    let (_, empty) = s.feed("since=0&paged=true").await;
    assert_eq!(
        empty["levers"],
        json!({"overrides": [], "modes": [], "allowlist": []})
    );

    let k1 = s.issue("user_1").await;
    s.issue("user_2").await;
    // Key changes only: no `levers` in the changes.
    let (_, delta) = s.feed("since=1").await;
    assert_eq!(v(&delta), 2);
    assert!(delta.get("levers").is_none(), "{delta}");

    let id = k1["id"].as_str().unwrap();
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(
            json!({"requests_per_minute": 20000, "expires_at": at(T0 + 3600),
                    "reason": "enterprise"}),
        ),
    )
    .await;
    ok(
        &s,
        Method::PUT,
        "/v1/limits/team/mode",
        Some(json!({"mode": "shadow", "reason": "rollout"})),
    )
    .await;
    let entry = ok(
        &s,
        Method::POST,
        "/v1/allowlist",
        Some(json!({"cidr": "203.0.113.0/24", "reason": "office"})),
    )
    .await;
    let want = json!({
        "overrides": [{"scope": "key", "id": id, "requests_per_minute": 20000,
                       "expires_at": T0 + 3600}],
        "modes": [{"limit": "team", "mode": "shadow"}],
        "allowlist": [{"id": entry["id"], "cidr": "203.0.113.0/24", "limit": null}]
    });
    // Changes that hold a lever change carry the whole set, with no records.
    let (_, delta) = s.feed("since=2").await;
    assert_eq!(v(&delta), 5);
    assert_eq!(delta["keys"], json!([]));
    assert_eq!(delta["levers"], want);
    let (_, delta) = s.feed("since=4").await;
    assert_eq!(delta["levers"], want);
    // Up to date: nothing, and no levers.
    let (_, delta) = s.feed("since=5").await;
    assert_eq!(v(&delta), 5);
    assert!(delta.get("levers").is_none(), "{delta}");

    // A later key change: changes from before both carry them, from after not.
    s.issue("user_3").await;
    let (_, delta) = s.feed("since=5").await;
    assert!(delta.get("levers").is_none(), "{delta}");
    // Page size 1: the answer from 1 holds version 2's key and ends before version 6's
    // (the lever versions between have no records): the levers go with it.
    let (_, delta) = s.feed("since=1").await;
    assert_eq!(v(&delta), 5);
    assert_eq!(delta["keys"].as_array().unwrap().len(), 1);
    assert_eq!(delta["levers"], want);
    let (_, delta) = s.feed("since=2").await;
    assert_eq!(v(&delta), 6);
    assert_eq!(delta["keys"].as_array().unwrap().len(), 1);
    assert_eq!(delta["levers"], want);

    // A paged snapshot: the first page carries them, the pages after it do not.
    let (_, first) = s.feed("since=0&paged=true").await;
    assert_eq!(first["full"], true);
    assert_eq!(first["levers"], want);
    let mut next = first["next"].as_str().unwrap().to_string();
    loop {
        let (status, page) = s.feed(&format!("since=0&paged=true&after={next}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.get("levers").is_none(), "{page}");
        match page["next"].as_str() {
            Some(n) => next = n.to_string(),
            None => break,
        }
    }
    // Another epoch's caller gets a first page: with them.
    let (_, fresh) = s.feed("since=3&epoch=other&paged=true").await;
    assert_eq!(fresh["full"], true);
    assert_eq!(fresh["levers"], want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_long_poll_wakes_on_a_lever_change() {
    let s = svc().await;
    s.issue("user_1").await;
    let (_, snap) = s.feed("since=0").await;
    let since = v(&snap);
    let app = s.app.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        common::send(
            &app,
            common::request(
                Method::GET,
                &format!("/v1/cache?since={since}&wait=30"),
                Some(FEED),
                None,
            ),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll should wait for a change");
    ok(
        &s,
        Method::PUT,
        "/v1/limits/free/mode",
        Some(json!({"mode": "off", "reason": "incident"})),
    )
    .await;
    let (status, delta) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll was not woken")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v(&delta), since + 1);
    assert_eq!(
        delta["levers"]["modes"],
        json!([{"limit": "free", "mode": "off"}])
    );
}

#[tokio::test]
async fn an_expired_override_is_left_out_of_the_feed_and_the_api() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(
            json!({"requests_per_minute": 20000, "expires_at": at(T0 + 60),
                    "reason": "one minute"}),
        ),
    )
    .await;
    ok(
        &s,
        Method::PUT,
        "/v1/tenants/tenant_1/limits",
        Some(json!({"requests_per_minute": 30, "reason": "for good"})),
    )
    .await;
    let (_, snap) = s.feed("since=0").await;
    assert_eq!(snap["levers"]["overrides"].as_array().unwrap().len(), 2);

    s.clock.advance_secs(60);
    let (_, snap) = s.feed("since=0").await;
    assert_eq!(
        snap["levers"]["overrides"],
        json!([{"scope": "tenant", "id": "tenant_1", "requests_per_minute": 30,
                "expires_at": null}])
    );
    let (status, _) = s
        .admin(Method::GET, &format!("/v1/keys/{id}/limits"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let shown = ok(&s, Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown["limits"], Value::Null);
    let listed = ok(&s, Method::GET, "/v1/limits", None).await;
    assert_eq!(listed["overrides"].as_array().unwrap().len(), 1);
    // Set again, it is in force again.
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(json!({"requests_per_minute": 50, "reason": "again"})),
    )
    .await;
    let listed = ok(&s, Method::GET, "/v1/limits", None).await;
    assert_eq!(listed["overrides"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_cleanup_job_purges_expired_overrides_without_a_feed_change() {
    let s = svc_with(|c| c.retention = Duration::from_secs(3600)).await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(
            json!({"requests_per_minute": 20000, "expires_at": at(T0 + 60),
                    "reason": "one minute"}),
        ),
    )
    .await;
    let version = s.state.store.version().await.unwrap();
    s.clock.advance_secs(2 * 3600);
    let purged = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(purged.overrides, 1);
    assert_eq!(s.state.store.version().await.unwrap(), version);
    let (_, delta) = s.feed(&format!("since={version}")).await;
    assert!(delta.get("levers").is_none(), "{delta}");
}

/// Fills the allowlist to `n` entries straight in the database (10,000 requests would
/// take longer than the point they make).
async fn fill_allowlist(db: &TestDb, n: u32) {
    match db {
        TestDb::Sqlite { url, .. } => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
                 INSERT INTO allowlist (id, subject_kind, subject, limit_name, reason, \
                 created_at, version) SELECT 'alw_bulk' || i, 'user', 'user_' || i, '', \
                 'bulk', 0, 1 FROM n",
            )
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        TestDb::Postgres(pg) => {
            let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
            sqlx::query(
                "INSERT INTO allowlist (id, subject_kind, subject, limit_name, reason, \
                 created_at, version) SELECT 'alw_bulk' || i, 'user', 'user_' || i, '', \
                 'bulk', 0, 1 FROM generate_series(1, $1) AS i",
            )
            .bind(i32::try_from(n).unwrap())
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

#[tokio::test]
async fn more_than_ten_thousand_levers_are_refused_with_409_levers_full() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    // An expired override does not count.
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(json!({"requests_per_minute": 10, "expires_at": at(T0 + 1), "reason": "r"})),
    )
    .await;
    ok(
        &s,
        Method::PUT,
        "/v1/limits/team/mode",
        Some(json!({"mode": "shadow", "reason": "r"})),
    )
    .await;
    s.clock.advance_secs(2);
    fill_allowlist(&s.db, 9_998).await;
    // 9,999 in force: one more fits.
    let (status, _) = s
        .admin(
            Method::POST,
            "/v1/allowlist",
            Some(json!({"cidr": "10.0.0.0/8", "reason": "the last one"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let full = [
        (
            Method::POST,
            "/v1/allowlist".to_string(),
            json!({"cidr": "10.0.0.0/16", "reason": "one too many"}),
        ),
        (
            Method::PUT,
            "/v1/limits/free/mode".to_string(),
            json!({"mode": "off", "reason": "one too many"}),
        ),
        (
            Method::PUT,
            format!("/v1/keys/{id}/limits"),
            json!({"requests_per_minute": 10, "reason": "one too many"}),
        ),
        (
            Method::PUT,
            "/v1/tenants/tenant_1/limits".to_string(),
            json!({"requests_per_minute": 10, "reason": "one too many"}),
        ),
    ];
    for (method, path, body) in &full {
        let (status, answer) = s.admin(method.clone(), path, Some(body.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {answer}");
        assert_eq!(error_code(&answer), "LEVERS_FULL");
    }
    // Changing an entry in force adds none: still taken.
    let (status, _) = s
        .admin(
            Method::PUT,
            "/v1/limits/team/mode",
            Some(json!({"mode": "off", "reason": "harder"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, snap) = s.feed("since=0").await;
    let levers = &snap["levers"];
    let total = levers["overrides"].as_array().unwrap().len()
        + levers["modes"].as_array().unwrap().len()
        + levers["allowlist"].as_array().unwrap().len();
    assert_eq!(total, 10_000);
    // Removing one makes room for one.
    let (status, _) = s
        .admin(Method::DELETE, "/v1/allowlist/alw_bulk1", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (method, path, body) = &full[3];
    let (status, answer) = s.admin(method.clone(), path, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn a_revoked_key_shows_its_limits_and_a_rotation_leaves_them_on_the_old_id() {
    let s = svc().await;
    let key = s.issue("user_1").await;
    let id = key["id"].as_str().unwrap();
    ok(
        &s,
        Method::PUT,
        &format!("/v1/keys/{id}/limits"),
        Some(json!({"requests_per_minute": 7, "reason": "abuse"})),
    )
    .await;
    let rotated = ok(&s, Method::POST, &format!("/v1/keys/{id}/rotate"), None).await;
    assert_eq!(rotated["limits"], Value::Null);
    assert_eq!(rotated["replaces"]["limits"]["requests_per_minute"], 7);
    let revoked = ok(&s, Method::DELETE, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(revoked["limits"]["requests_per_minute"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lever_change_through_one_replica_wakes_a_poll_held_by_another() {
    let a = svc().await;
    let b = a.replica().await;
    let _following = a.follow();
    a.issue("user_0").await;
    let app = a.app.clone();
    let held = tokio::spawn(async move {
        let started = Instant::now();
        let answer = common::send(
            &app,
            common::request(
                Method::GET,
                "/v1/cache?since=1&paged=true&wait=20",
                Some(FEED),
                None,
            ),
        )
        .await;
        (answer, started.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.state.changes.receiver_count() == 0 {
        assert!(Instant::now() < deadline, "the poll was never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, entry) = b
        .admin(
            Method::POST,
            "/v1/allowlist",
            Some(json!({"tenant": "tenant_7", "reason": "partner"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{entry}");
    let ((status, page), took) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        took < Duration::from_secs(20),
        "answered only at the end of its wait"
    );
    assert_eq!(page["version"], 2, "{page}");
    assert_eq!(
        page["levers"]["allowlist"],
        json!([{"id": entry["id"], "tenant": "tenant_7", "limit": null}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lever_changes_never_pass_the_bound() {
    let s = svc().await;
    s.warm_pool(8).await;
    fill_allowlist(&s.db, 9_995).await;
    let mut posts = Vec::new();
    for i in 0..20 {
        let app = s.app.clone();
        posts.push(tokio::spawn(async move {
            common::send(
                &app,
                common::request(
                    Method::POST,
                    "/v1/allowlist",
                    Some(common::ADMIN),
                    Some(&json!({"user": format!("racer_{i}"), "reason": "race"})),
                ),
            )
            .await
        }));
    }
    let mut created = 0;
    for p in posts {
        let (status, body) = p.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert_eq!(error_code(&body), "LEVERS_FULL"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(created, 5);
    let listed = ok(&s, Method::GET, "/v1/allowlist", None).await;
    assert_eq!(listed["allowlist"].as_array().unwrap().len(), 10_000);
}
