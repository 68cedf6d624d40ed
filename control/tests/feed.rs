//! The cache feed (control/FEED.md) through the real router over a real database
//! (SQLite, or PostgreSQL with `GATEHOUSE_TEST_DATABASE=postgres`; see `common`).
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
use common::{FEED, T0, error_code, svc, svc_with};
use gatehouse_core::authn::api_key::{KeyHash, is_valid_id};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn v(body: &Value) -> i64 {
    body["version"].as_i64().unwrap()
}

#[tokio::test]
async fn snapshot_holds_every_key_and_revocation_in_the_documented_shape() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    s.admin(Method::POST, "/v1/users/user_2/revoke-tokens", None)
        .await;
    s.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"jti": "abc", "expires_at": T0 + 60})),
    )
    .await;
    let (status, snap) = s.feed("since=0").await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    let epoch = snap["epoch"].as_str().unwrap();
    assert_eq!(epoch.len(), 16);
    assert!(epoch.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(snap["full"], true);
    assert_eq!(v(&snap), 3);
    let secret = k["api_key"].as_str().unwrap();
    assert_eq!(
        snap["keys"],
        json!([{"sha256": KeyHash::of_key(secret.as_bytes()).to_hex(), "key_id": k["id"],
            "user": "user_1", "tenant": "tenant_1", "plan": "team", "expires_at": null,
            "active": true, "scopes": []}])
    );
    assert_eq!(
        snap["users"],
        // 24 h, the longest a token lives by default, and the proxies' 60 s leeway.
        json!([{"user": "user_2", "tokens_issued_before": T0, "until": T0 + 86_460}])
    );
    assert_eq!(
        snap["jtis"],
        json!([{"jti_sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "until": T0 + 60 + 60}])
    );
    assert!(!snap.to_string().contains(secret));
    // Absent since is a snapshot too; the epoch is stable.
    let (_, again) = s.feed("").await;
    assert_eq!(again, snap);
}

#[tokio::test]
async fn deltas_hold_each_changed_record_once_in_its_latest_state() {
    let s = svc().await;
    let a = s.issue("user_1").await;
    let (_, snap) = s.feed("since=0").await;
    let since = v(&snap);
    let b = s.issue("user_1").await;
    let a_id = a["id"].as_str().unwrap();
    let b_id = b["id"].as_str().unwrap();
    s.admin(Method::DELETE, &format!("/v1/keys/{b_id}"), None)
        .await;
    let (_, rotated) = s
        .admin(Method::POST, &format!("/v1/keys/{a_id}/rotate"), None)
        .await;
    let (status, delta) = s.feed(&format!("since={since}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delta["full"], false);
    assert_eq!(v(&delta), since + 3);
    assert_eq!(delta["epoch"], snap["epoch"]);
    let keys = delta["keys"].as_array().unwrap();
    let by_id: BTreeMap<&str, &Value> = keys
        .iter()
        .map(|k| (k["key_id"].as_str().unwrap(), k))
        .collect();
    assert_eq!(keys.len(), 3, "each key once: {delta}");
    // B: created then revoked, sent once as a tombstone; A: rotated away; the new key.
    assert_eq!(by_id[b_id]["active"], false);
    assert_eq!(by_id[a_id]["active"], false);
    assert_eq!(by_id[rotated["id"].as_str().unwrap()]["active"], true);
    assert_eq!(delta["users"], json!([]));
    // Up to date: an empty delta at the same version.
    let (_, empty) = s.feed(&format!("since={}", v(&delta))).await;
    assert_eq!(
        (empty["full"].clone(), v(&empty)),
        (json!(false), v(&delta))
    );
    assert_eq!(empty["keys"], json!([]));
}

#[tokio::test]
async fn since_ahead_of_the_database_or_from_another_epoch_gets_a_snapshot() {
    let s = svc().await;
    s.issue("user_1").await;
    let (_, ahead) = s.feed("since=999").await;
    assert_eq!(ahead["full"], true);
    assert_eq!(ahead["keys"].as_array().unwrap().len(), 1);
    let (_, other) = s.feed("since=1&epoch=0000000000000000").await;
    assert_eq!(other["full"], true);
    assert_eq!(other["keys"].as_array().unwrap().len(), 1);
    let (_, same) = s
        .feed(&format!(
            "since=1&epoch={}",
            ahead["epoch"].as_str().unwrap()
        ))
        .await;
    assert_eq!(same["full"], false);
}

#[tokio::test]
async fn feed_needs_the_feed_token_and_admin_api_refuses_it() {
    let s = svc().await;
    for token in [None, Some(common::ADMIN), Some("wrong-token-wrong-token")] {
        let (status, body) = common::send(
            &s.app,
            common::request(Method::GET, "/v1/cache?since=0", token, None),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&body), "UNAUTHORIZED");
    }
    let (status, _) = common::send(
        &s.app,
        common::request(Method::GET, "/v1/keys?user=u", Some(FEED), None),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cleanup_purges_after_retention_and_old_since_gets_410() {
    let s = svc_with(|c| c.retention = Duration::from_secs(86_400)).await;
    s.issue("user_1").await; // v1, never expires
    let (_, short) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "user_2", "tenant_id": "t", "plan": "free",
                "device_name": "d", "expires_in_days": 1}),
            ),
        )
        .await; // v2
    s.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"jti": "j1", "expires_at": T0 + 10})),
    )
    .await; // v3
    let revoked = s.issue("user_3").await; // v4
    s.admin(
        Method::DELETE,
        &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
        None,
    )
    .await; // v5

    // Expired, but within retention: still fed.
    s.clock.advance_secs(86_400 + 100);
    let n = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!((n.keys, n.jtis), (0, 1));
    let (_, snap) = s.feed("since=0").await;
    assert_eq!(snap["keys"].as_array().unwrap().len(), 3);
    assert_eq!(snap["jtis"], json!([]));

    // Past retention: the expired key goes; the revoked key without expiry stays.
    s.clock.advance_secs(86_400);
    let n = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(n.keys, 1);
    let (_, snap) = s.feed("since=0").await;
    let ids: BTreeSet<&str> = snap["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(short["id"].as_str().unwrap()));
    assert!(ids.contains(revoked["id"].as_str().unwrap()));
    assert_eq!(v(&snap), 5);

    // A since below the highest purged version (the jti's, 3) cannot be a delta.
    for since in [1, 2] {
        let (status, body) = s.feed(&format!("since={since}")).await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(error_code(&body), "GONE");
    }
    let (status, delta) = s.feed("since=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delta["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn cleanup_works_in_batches() {
    let s = svc_with(|c| {
        c.retention = Duration::from_secs(1);
        c.max_keys_per_user = 10_000;
    })
    .await;
    let n = gatehouse_control::cleanup::BATCH as u64 + 20;
    for i in 0..n {
        s.admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"jti": format!("j{i}"), "expires_at": T0 + 1})),
        )
        .await;
    }
    // Past each entry's end (exp plus the 60 s leeway) and the retention.
    s.clock.advance_secs(100);
    let purged = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(purged.jtis, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_wakes_when_a_change_commits() {
    let s = svc().await;
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
    let k = s.issue("user_1").await;
    let (status, delta) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll was not woken")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(delta["keys"][0]["key_id"], k["id"]);
    assert_eq!(v(&delta), since + 1);
}

#[tokio::test]
async fn long_poll_answers_an_empty_delta_when_wait_runs_out() {
    let s = svc().await;
    s.issue("user_1").await;
    let started = Instant::now();
    let (status, body) = s.feed("since=1&wait=1").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!((v(&body), body["keys"].clone()), (1, json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_poller_sees_every_change_of_concurrent_writers_in_version_order() {
    let s = svc_with(|c| c.max_keys_per_user = 100).await;
    s.warm_pool(10).await;
    let overlap = s.watch_pool();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let app = s.app.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..6 {
                    let body = json!({"user_id": format!("user_{w}"), "tenant_id": "t",
                        "plan": "free", "device_name": format!("d{i}")});
                    let (status, k) = common::send(
                        &app,
                        common::request(Method::POST, "/v1/keys", Some(common::ADMIN), Some(&body)),
                    )
                    .await;
                    assert_eq!(status, StatusCode::CREATED);
                    ids.push(k["id"].as_str().unwrap().to_string());
                }
                ids
            })
        })
        .collect();
    let app = s.app.clone();
    let poller = tokio::spawn(async move {
        let mut since = 0i64;
        let mut seen = BTreeSet::new();
        let mut versions = Vec::new();
        while since < 48 {
            let (status, page) = common::send(
                &app,
                common::request(
                    Method::GET,
                    &format!("/v1/cache?since={since}&wait=5"),
                    Some(FEED),
                    None,
                ),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            let version = v(&page);
            assert!(version >= since, "version went back: {since} -> {version}");
            let keys = page["keys"].as_array().unwrap();
            // Nothing between since and version is missing: one key per change here.
            assert_eq!(
                i64::try_from(keys.len()).unwrap(),
                version - since,
                "a delta lost changes"
            );
            for k in keys {
                assert!(
                    seen.insert(k["key_id"].as_str().unwrap().to_string()),
                    "twice: {k}"
                );
            }
            versions.push(version);
            since = version;
        }
        (seen, versions)
    });
    let mut all = BTreeSet::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    let (seen, versions) = tokio::time::timeout(Duration::from_secs(30), poller)
        .await
        .unwrap()
        .unwrap();
    overlap.assert_overlapped().await;
    assert_eq!(seen, all);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert_eq!(versions.last(), Some(&48));
}

// Property: a snapshot plus the deltas after it equals a fresh snapshot (for everything
// still kept), whatever changes happen in between, including cleanup and 410.

#[derive(Clone, Debug)]
enum Op {
    Create { user: u8, days: Option<u8> },
    Revoke(u8),
    Rotate { key: u8, grace: Option<u16> },
    RevokeUser(u8),
    RevokeJti { jti: u8, ttl: u16 },
    Advance(u32),
    Cleanup,
    Sync,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u8..4, proptest::option::of(1u8..4)).prop_map(|(user, days)| Op::Create { user, days }),
        2 => any::<u8>().prop_map(Op::Revoke),
        2 => (any::<u8>(), proptest::option::of(0u16..5000)).prop_map(|(key, grace)| Op::Rotate { key, grace }),
        1 => (0u8..4).prop_map(Op::RevokeUser),
        1 => (0u8..6, 1u16..5000).prop_map(|(jti, ttl)| Op::RevokeJti { jti, ttl }),
        2 => (0u32..200_000).prop_map(Op::Advance),
        1 => Just(Op::Cleanup),
        3 => Just(Op::Sync),
    ]
}

/// What a sync that applied the feed holds: records by their cache key.
#[derive(Default, Debug)]
struct Mirror {
    epoch: String,
    version: i64,
    entries: BTreeMap<String, Value>,
}

impl Mirror {
    fn apply(&mut self, page: &Value) {
        if page["full"] == true || page["epoch"] != self.epoch.as_str() {
            self.epoch = page["epoch"].as_str().unwrap().to_string();
        }
        for k in page["keys"].as_array().unwrap() {
            assert!(is_valid_id(k["key_id"].as_str().unwrap()));
            self.entries
                .insert(format!("k/{}", k["sha256"].as_str().unwrap()), k.clone());
        }
        for u in page["users"].as_array().unwrap() {
            self.entries
                .insert(format!("u/{}", u["user"].as_str().unwrap()), u.clone());
        }
        for j in page["jtis"].as_array().unwrap() {
            self.entries.insert(
                format!("j/{}", j["jti_sha256"].as_str().unwrap()),
                j.clone(),
            );
        }
        self.version = page["version"].as_i64().unwrap();
    }

    async fn sync(&mut self, s: &common::Svc) {
        let (status, page) = s.feed(&format!("since={}", self.version)).await;
        let page = if status == StatusCode::GONE {
            s.feed("since=0").await.1
        } else {
            assert_eq!(status, StatusCode::OK, "{page}");
            page
        };
        self.apply(&page);
    }
}

fn end_of(entry: &Value) -> Option<i64> {
    entry
        .get("expires_at")
        .or_else(|| entry.get("until"))
        .and_then(Value::as_i64)
}

async fn run_ops(ops: Vec<Op>) {
    let s = svc_with(|c| {
        c.retention = Duration::from_secs(3600);
        c.max_keys_per_user = 3;
    })
    .await;
    let mut mirror = Mirror::default();
    mirror.sync(&s).await;
    let mut keys: Vec<String> = Vec::new();
    for op in ops {
        match op {
            Op::Create { user, days } => {
                let mut body = json!({"user_id": format!("u{user}"), "tenant_id": "t",
                    "plan": "free", "device_name": "d"});
                if let Some(d) = days {
                    body["expires_in_days"] = json!(d);
                }
                let (status, k) = s.admin(Method::POST, "/v1/keys", Some(body)).await;
                if status == StatusCode::CREATED {
                    keys.push(k["id"].as_str().unwrap().to_string());
                }
            }
            Op::Revoke(i) if !keys.is_empty() => {
                let id = &keys[usize::from(i) % keys.len()];
                s.admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
                    .await;
            }
            Op::Rotate { key, grace } if !keys.is_empty() => {
                let id = keys[usize::from(key) % keys.len()].clone();
                let body = grace.map(|g| json!({"grace_seconds": g}));
                let (status, k) = s
                    .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), body)
                    .await;
                if status == StatusCode::OK {
                    keys.push(k["id"].as_str().unwrap().to_string());
                }
            }
            Op::RevokeUser(u) => {
                s.admin(Method::POST, &format!("/v1/users/u{u}/revoke-tokens"), None)
                    .await;
            }
            Op::RevokeJti { jti, ttl } => {
                let now = s.clock.now_secs_for_tests();
                s.admin(
                    Method::POST,
                    "/v1/tokens/revoke",
                    Some(json!({"jti": format!("j{jti}"), "expires_at": now + i64::from(ttl)})),
                )
                .await;
            }
            Op::Advance(secs) => s.clock.advance_secs(u64::from(secs)),
            Op::Cleanup => {
                gatehouse_control::cleanup::run_once(&s.state)
                    .await
                    .unwrap();
            }
            Op::Sync => mirror.sync(&s).await,
            Op::Revoke(_) | Op::Rotate { .. } => {}
        }
    }
    mirror.sync(&s).await;
    let mut fresh = Mirror::default();
    fresh.apply(&s.feed("since=0").await.1);
    assert_eq!(mirror.version, fresh.version);
    assert_eq!(mirror.epoch, fresh.epoch);
    // Everything still kept is exactly as a fresh snapshot has it ...
    for (k, v) in &fresh.entries {
        assert_eq!(mirror.entries.get(k), Some(v), "{k}");
    }
    // ... and whatever else the mirror holds was purged after it had expired.
    let cutoff = s.clock.now_secs_for_tests() - 3600;
    for (k, v) in &mirror.entries {
        if !fresh.entries.contains_key(k) {
            assert!(
                end_of(v).is_some_and(|e| e < cutoff),
                "{k}: {v} kept by the mirror only"
            );
        }
    }
}

trait NowSecs {
    fn now_secs_for_tests(&self) -> i64;
}

impl NowSecs for std::sync::Arc<gatehouse_control::clock::ManualClock> {
    fn now_secs_for_tests(&self) -> i64 {
        use gatehouse_control::clock::Clock;
        self.now_secs()
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 48,
        // Committed beside this file (cargo runs tests from the package root).
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            "tests/feed.proptest-regressions",
        ))),
        ..Default::default()
    })]

    #[test]
    fn snapshot_plus_deltas_equals_a_fresh_snapshot(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_ops(ops));
    }
}
