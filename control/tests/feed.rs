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
use gatehouse_control::store::{FeedAnswer, FeedAsk, FeedPage};
use gatehouse_core::authn::api_key::{KeyHash, is_valid_id};
use http_body_util::BodyExt;
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
    assert_eq!(
        (&snap["more"], &snap["next"]),
        (&json!(false), &Value::Null)
    );
    assert_eq!(v(&snap), 3);
    // The contract's field order, as sent.
    let res = tower::ServiceExt::oneshot(
        s.app.clone(),
        common::request(Method::GET, "/v1/cache?since=0", Some(FEED), None),
    )
    .await
    .unwrap();
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let at = |field: &str| text.find(&format!("\"{field}\":")).unwrap();
    let order = [
        "epoch", "version", "full", "more", "next", "keys", "users", "jtis",
    ];
    assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
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

    // Expired, but within retention: still fed.
    s.clock.advance_secs(86_400 + 100);
    s.admin(
        Method::DELETE,
        &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
        None,
    )
    .await; // v5, revoked a day after T0
    let n = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!((n.keys, n.jtis), (0, 1));
    let (_, snap) = s.feed("since=0").await;
    assert_eq!(snap["keys"].as_array().unwrap().len(), 3);
    assert_eq!(snap["jtis"], json!([]));

    // Past retention: the expired key goes; the key revoked within it stays.
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
async fn revoked_keys_leave_the_feed_a_retention_after_their_revocation() {
    let s = svc_with(|c| {
        c.retention = Duration::from_secs(86_400);
        c.max_keys_per_user = 10;
    })
    .await;
    let kept = s.issue("user_1").await; // v1, never expires
    let revoked = s.issue("user_1").await; // v2, never expires
    let graced = s.issue("user_1").await; // v3, never expires
    let (_, behind) = s.feed("since=0").await;
    assert_eq!(v(&behind), 3);
    let id = |k: &Value| k["id"].as_str().unwrap().to_string();
    s.admin(Method::DELETE, &format!("/v1/keys/{}", id(&revoked)), None)
        .await; // v4: a tombstone, revoked at T0
    let (status, successor) = s
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", id(&graced)),
            Some(json!({"grace_seconds": 3600})),
        )
        .await; // v5: the old key works until T0 + 1 h
    assert_eq!(status, StatusCode::OK, "{successor}");
    let (_, in_step) = s.feed("since=3").await;
    assert_eq!(v(&in_step), 5);

    // Within the retention of the revocation: the tombstone is fed to everyone.
    s.clock.advance_secs(86_400);
    let n = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(n.keys, 0);
    let (_, snap) = s.feed("since=0").await;
    let tombstone = snap["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == revoked["id"])
        .unwrap();
    assert_eq!(tombstone["active"], false);

    // A retention after the revocation: the tombstone goes; the rotated key goes a
    // retention after its grace ended.
    s.clock.advance_secs(1);
    let n = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(n.keys, 1);
    s.clock.advance_secs(3600);
    let n = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(n.keys, 1);
    let (_, snap) = s.feed("since=0").await;
    let ids: BTreeSet<String> = snap["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, BTreeSet::from([id(&kept), id(&successor)]));

    // A sync that applied the tombstones has nothing to catch up on; one further behind
    // gets 410 and a snapshot without them, which retires them from its cache.
    let (status, delta) = s.feed("since=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((v(&delta), delta["keys"].clone()), (5, json!([])));
    for since in [3, 4] {
        let (status, body) = s.feed(&format!("since={since}&paged=true")).await;
        assert_eq!(status, StatusCode::GONE, "{since}: {body}");
    }
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["cache"]["version"], 5, "purging is not a change");
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

/// Issues `keys` keys (one user each), revokes the tokens of `users` users and `jtis` jtis.
async fn seed(s: &common::Svc, keys: usize, users: usize, jtis: usize) {
    for i in 0..keys {
        s.issue(&format!("user_{i}")).await;
    }
    for i in 0..users {
        let (status, _) = s
            .admin(Method::POST, &format!("/v1/users/u{i}/revoke-tokens"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    for i in 0..jtis {
        let (status, _) = s
            .admin(
                Method::POST,
                "/v1/tokens/revoke",
                Some(json!({"jti": format!("j{i}"), "expires_at": T0 + 3600})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

fn ids<'a>(page: &'a Value, table: &str, field: &str) -> Vec<&'a str> {
    page[table]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_snapshot_of_thousands_of_keys_comes_in_pages_with_every_record_once() {
    let s = svc_with(|c| c.feed_page_size = 100).await;
    seed(&s, 2000, 150, 130).await;
    let mut pages = Vec::new();
    let (status, mut page) = s.feed("since=0&paged=true").await;
    loop {
        assert_eq!(status, StatusCode::OK, "{page}");
        pages.push(page.clone());
        let Some(next) = page["next"].as_str() else {
            break;
        };
        assert!(next.len() <= 512);
        page = s.feed(&format!("since=0&paged=true&after={next}")).await.1;
    }
    // 2280 records: 22 full pages and one of 80.
    assert_eq!(pages.len(), 23);
    let (view, state) = whole(&s).await;
    assert_eq!(view, 2280);
    let mut keys = Vec::new();
    let mut users = Vec::new();
    let mut jtis = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        assert_eq!((p["full"].clone(), v(p)), (json!(true), view), "page {i}");
        assert_eq!(
            (&p["more"], &p["epoch"]),
            (&json!(false), &pages[0]["epoch"])
        );
        assert_eq!(records(p), if i < 22 { 100 } else { 80 }, "page {i}");
        keys.extend(ids(p, "keys", "sha256"));
        users.extend(ids(p, "users", "user"));
        jtis.extend(ids(p, "jtis", "jti_sha256"));
    }
    // Keys by hash, then users, then jtis, each in order: a page may span tables.
    for list in [&keys, &users, &jtis] {
        assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice"
        );
    }
    assert_eq!((keys.len(), users.len(), jtis.len()), (2000, 150, 130));
    let tables_in = |p: &Value| {
        ["keys", "users", "jtis"]
            .iter()
            .filter(|t| !p[**t].as_array().unwrap().is_empty())
            .count()
    };
    assert_eq!(tables_in(&pages[21]), 2, "users, then jtis");
    let mut paged = Mirror::default();
    for p in &pages {
        paged.apply(p);
    }
    assert_eq!(paged.entries, state);
}

#[tokio::test]
async fn pages_read_while_keys_change_plus_the_changes_since_their_version_are_the_database() {
    let s = svc_with(|c| {
        c.feed_page_size = 100;
        c.max_keys_per_user = 1000;
    })
    .await;
    let mut issued = Vec::new();
    for i in 0..450 {
        issued.push(
            s.issue(&format!("user_{}", i % 7)).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut mirror = Mirror::default();
    assert!(!mirror.step(&s).await);
    let (_, view, _, _) = mirror.snapshot.clone().unwrap();
    assert_eq!(view, 450);
    // Between every two pages: keys issued (some land behind the cursor, some ahead),
    // revoked and rotated (on pages read and pages not read yet), a user's tokens revoked.
    let mut round = 0;
    while mirror.snapshot.is_some() {
        round += 1;
        for _ in 0..5 {
            issued.push(
                s.issue("user_new").await["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        let revoke = &issued[round * 37 % issued.len()];
        s.admin(Method::DELETE, &format!("/v1/keys/{revoke}"), None)
            .await;
        let rotate = issued[round * 53 % issued.len()].clone();
        let (status, k) = s
            .admin(Method::POST, &format!("/v1/keys/{rotate}/rotate"), None)
            .await;
        if status == StatusCode::OK {
            issued.push(k["id"].as_str().unwrap().to_string());
        }
        s.admin(
            Method::POST,
            &format!("/v1/users/u{round}/revoke-tokens"),
            None,
        )
        .await;
        mirror.step(&s).await;
    }
    assert!(round >= 4, "{round} rounds");
    assert_eq!(
        mirror.version, view,
        "the pages' version is the first page's"
    );
    mirror.sync(&s).await;
    let (version, state) = whole(&s).await;
    assert!(version > view);
    assert_eq!(mirror.version, version);
    assert_eq!(mirror.entries, state);
}

#[tokio::test]
async fn a_page_asked_for_again_with_the_same_cursor_is_the_same_page() {
    let s = svc_with(|c| c.feed_page_size = 100).await;
    seed(&s, 250, 0, 0).await;
    let (_, first) = s.feed("since=0&paged=true").await;
    let after = first["next"].as_str().unwrap();
    let (_, second) = s.feed(&format!("since=0&paged=true&after={after}")).await;
    // The sync lost the answer (a timeout, a restarted VM) and asks again.
    let (status, again) = s.feed(&format!("since=0&paged=true&after={after}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, second);
    assert!(again["next"].is_string());
    assert_eq!(records(&again), 100);
    // The cursor names its place, not a count: it stays valid while the database changes.
    s.issue("user_late").await;
    let (_, later) = s.feed(&format!("since=0&paged=true&after={after}")).await;
    assert_eq!(v(&later), v(&first));
    let third = s
        .feed(&format!(
            "since=0&paged=true&after={}",
            later["next"].as_str().unwrap()
        ))
        .await
        .1;
    assert_eq!(third["next"], Value::Null);
}

#[tokio::test]
async fn a_cursor_of_another_database_starts_a_new_snapshot_there() {
    let old = svc_with(|c| c.feed_page_size = 100).await;
    seed(&old, 150, 0, 0).await;
    let (_, first) = old.feed("since=0&paged=true").await;
    let after = first["next"].as_str().unwrap().to_string();
    let old_epoch = first["epoch"].as_str().unwrap().to_string();
    // The database was re-created (or restored) between two pages.
    let new = svc_with(|c| c.feed_page_size = 100).await;
    seed(&new, 120, 0, 0).await;
    let (_, fresh) = new.feed("since=0&paged=true").await;
    for query in [
        format!("since=0&paged=true&after={after}"),
        format!("since=0&paged=true&after={after}&epoch={old_epoch}"),
        // A cursor of this database, but the caller's epoch is another's.
        format!(
            "since=0&paged=true&after={}&epoch={old_epoch}",
            fresh["next"].as_str().unwrap()
        ),
        format!("since=40&paged=true&epoch={old_epoch}"),
    ] {
        let (status, page) = new.feed(&query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        assert_eq!(page, fresh, "{query}");
    }
    assert_ne!(fresh["epoch"], old_epoch.as_str());
    assert_eq!((fresh["full"].clone(), v(&fresh)), (json!(true), 120));
    assert_eq!(records(&fresh), 100);
}

#[tokio::test]
async fn a_cursor_the_service_did_not_give_out_is_refused_without_being_quoted() {
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
    let s = svc_with(|c| c.feed_page_size = 100).await;
    seed(&s, 120, 0, 0).await;
    let (_, first) = s.feed("since=0&paged=true").await;
    let good = first["next"].as_str().unwrap().to_string();
    let epoch = first["epoch"].as_str().unwrap();
    let hash = "a".repeat(64);
    for (query, cursor) in [
        ("since=0&paged=true&after=", String::new()),
        ("since=0&paged=true&after=", "bm90LWEtY3Vyc29y".to_string()),
        ("since=0&paged=true&after=", format!("{good}=")),
        (
            "since=0&paged=true&after=",
            "ghk_a-secret-key-pasted-here".to_string(),
        ),
        ("since=0&paged=true&after=", "A".repeat(513)),
        (
            "since=0&paged=true&after=",
            b64(&format!("1|{epoch}|120|x|{hash}")),
        ),
        (
            "since=0&paged=true&after=",
            b64(&format!("1|{epoch}|120|k|nothex")),
        ),
        // A view this database has not reached: not one it gave out.
        (
            "since=0&paged=true&after=",
            b64(&format!("1|{epoch}|121|k|{hash}")),
        ),
        // A cursor continues a snapshot: with since=0 only.
        ("since=5&paged=true&after=", good.clone()),
    ] {
        let (status, body) = s.feed(&format!("{query}{cursor}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}{cursor}: {body}");
        assert_eq!(error_code(&body), "BAD_REQUEST");
        if !cursor.is_empty() {
            assert!(!body.to_string().contains(&cursor), "{body}");
        }
    }
    // The same view is fine.
    let (status, _) = s
        .feed(&format!(
            "since=0&paged=true&after={}",
            b64(&format!("1|{epoch}|120|k|{hash}"))
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_come_in_whole_versions_with_more_until_the_last() {
    let s = svc_with(|c| {
        c.feed_page_size = 1;
        c.max_keys_per_user = 100;
    })
    .await;
    s.issue("user_1").await; // v1
    let a = s.issue("user_1").await; // v2, rewritten by v4
    let b = s.issue("user_1").await; // v3
    let (_, rotated) = s
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", a["id"].as_str().unwrap()),
            None,
        )
        .await; // v4: two records
    let c = s.issue("user_1").await; // v5
    // Page 1: one version per answer; the rotation (two records) whole, never split.
    let mut answers = Vec::new();
    let mut since = 1;
    loop {
        let started = Instant::now();
        // A long poll with changes waiting is answered at once.
        let (status, page) = s.feed(&format!("since={since}&paged=true&wait=30")).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(
            (page["full"].clone(), page["next"].clone()),
            (json!(false), Value::Null)
        );
        let ids: BTreeSet<&str> = ids(&page, "keys", "key_id").into_iter().collect();
        answers.push((
            v(&page),
            page["more"].clone(),
            ids.into_iter().map(str::to_string).collect::<BTreeSet<_>>(),
        ));
        since = v(&page);
        if page["more"] == false {
            break;
        }
    }
    let set = |ks: &[&Value]| -> BTreeSet<String> {
        ks.iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        answers,
        [
            (3, json!(true), set(&[&b])),
            (4, json!(true), set(&[&a, &rotated])),
            (5, json!(false), set(&[&c])),
        ]
    );
    // The pages together are the one answer a large page gives.
    let ask = FeedAsk {
        since: 1,
        epoch: None,
        after: None,
        page: usize::MAX,
        now: i64::try_from(T0).unwrap(),
    };
    let FeedAnswer::Changes {
        version,
        more,
        records,
        ..
    } = s.state.store.feed(&ask).await.unwrap()
    else {
        panic!("since 1 is changes");
    };
    assert_eq!((version, more, records.keys.len()), (5, false, 4));
}

#[tokio::test]
async fn a_page_of_two_holds_whole_versions_that_fit_together() {
    let s = svc_with(|c| {
        c.feed_page_size = 2;
        c.max_keys_per_user = 100;
    })
    .await;
    s.issue("user_1").await; // v1
    for _ in 0..3 {
        s.issue("user_1").await; // v2, v3, v4
    }
    s.admin(Method::POST, "/v1/users/u1/revoke-tokens", None)
        .await; // v5
    s.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"jti": "j1", "expires_at": T0 + 60})),
    )
    .await; // v6
    let mut seen = Vec::new();
    let mut since = 1;
    loop {
        let (_, page) = s.feed(&format!("since={since}&paged=true")).await;
        assert!(records(&page) <= 2, "{page}");
        seen.push((v(&page), records(&page), page["more"] == true));
        since = v(&page);
        if page["more"] == false {
            break;
        }
    }
    // The records of all three tables count against one page.
    assert_eq!(seen, [(3, 2, true), (5, 2, true), (6, 1, false)]);
}

#[tokio::test]
async fn an_older_sync_gets_a_snapshot_that_fits_a_page_and_409_for_a_larger_one() {
    let s = svc_with(|c| c.feed_page_size = 100).await;
    seed(&s, 60, 30, 10).await; // 100 records: one page
    let (status, whole_page) = s.feed("since=0").await;
    assert_eq!(status, StatusCode::OK, "{whole_page}");
    assert_eq!(
        (whole_page["full"].clone(), whole_page["next"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(records(&whole_page), 100);
    s.issue("user_one_more").await; // 101
    for query in [
        "since=0",
        "since=0&paged=false",
        "since=999",
        "since=0&wait=30",
    ] {
        let (status, body) = s.feed(query).await;
        assert_eq!(status, StatusCode::CONFLICT, "{query}: {body}");
        assert_eq!(error_code(&body), "PAGING_REQUIRED");
        assert_eq!(
            body["error"],
            "the snapshot is larger than one page (101 records); upgrade the gatehouse module"
        );
    }
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["counters"]["unpaged_snapshots_refused"], 4);
    // Changes are answered to it as to any sync, in whole versions: it asks again from
    // `version`, so `more` needs nothing of it.
    let since = v(&whole_page);
    let (status, delta) = s.feed(&format!("since={since}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (v(&delta), delta["more"].clone()),
        (since + 1, json!(false))
    );
    // A sync that reads pages gets the same snapshot in two.
    let (status, first) = s.feed("since=0&paged=true").await;
    assert_eq!(status, StatusCode::OK);
    assert!(first["next"].is_string());
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["counters"]["unpaged_snapshots_refused"], 4);
}

// Property: a snapshot plus the deltas after it equals a fresh snapshot (for everything
// still kept), whatever changes happen in between, including cleanup and 410.

#[derive(Clone, Debug)]
enum Op {
    Create {
        user: u8,
        days: Option<u8>,
    },
    Revoke(u8),
    Rotate {
        key: u8,
        grace: Option<u16>,
    },
    RevokeUser(u8),
    RevokeJti {
        jti: u8,
        ttl: u16,
    },
    Advance(u32),
    Cleanup,
    Sync,
    /// One request of a sync, so that changes land between the pages of a snapshot.
    Step,
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
        2 => Just(Op::Sync),
        3 => Just(Op::Step),
    ]
}

/// What a sync that applied the feed holds: records by their cache key. It reads the feed
/// as control/FEED.md says a sync does: snapshots page by page (a snapshot retires every
/// key it did not mention, as the sync's generations do), changes until `more` is false,
/// a fresh snapshot after 410. [`Mirror::step`] sends one request, so writes can land
/// between the pages of one snapshot.
#[derive(Default, Debug)]
struct Mirror {
    epoch: String,
    version: i64,
    entries: BTreeMap<String, Value>,
    /// A snapshot under way: its epoch, view, the cursor of its next page and the keys
    /// its pages have mentioned.
    snapshot: Option<(String, i64, String, BTreeSet<String>)>,
    /// Requests sent, and the largest answer seen (in records).
    requests: usize,
    largest: usize,
}

fn records(page: &Value) -> usize {
    ["keys", "users", "jtis"]
        .iter()
        .map(|t| page[t].as_array().unwrap().len())
        .sum()
}

impl Mirror {
    /// Writes the records of `page`; returns the cache keys of its key records.
    fn apply(&mut self, page: &Value) -> Vec<String> {
        let mut keys = Vec::new();
        for k in page["keys"].as_array().unwrap() {
            assert!(is_valid_id(k["key_id"].as_str().unwrap()));
            let name = format!("k/{}", k["sha256"].as_str().unwrap());
            self.entries.insert(name.clone(), k.clone());
            keys.push(name);
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
        self.largest = self.largest.max(records(page));
        keys
    }

    /// One request and what it brings; true once the mirror is up to date.
    async fn step(&mut self, s: &common::Svc) -> bool {
        let query = match &self.snapshot {
            Some((epoch, _, next, _)) => {
                format!("since=0&paged=true&after={next}&epoch={epoch}")
            }
            None if self.epoch.is_empty() => format!("since={}&paged=true", self.version),
            None => format!("since={}&paged=true&epoch={}", self.version, self.epoch),
        };
        let (status, page) = s.feed(&query).await;
        self.requests += 1;
        if status == StatusCode::GONE {
            assert_eq!(error_code(&page), "GONE");
            self.snapshot = None;
            self.version = 0;
            return false;
        }
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        let epoch = page["epoch"].as_str().unwrap().to_string();
        let version = v(&page);
        if page["full"] != true {
            assert!(
                self.snapshot.is_none(),
                "changes in the middle of a snapshot"
            );
            assert_eq!(page["next"], Value::Null);
            self.apply(&page);
            self.version = version;
            return page["more"] == false;
        }
        assert_eq!(page["more"], false, "{page}");
        let (_, _, _, mut seen) = match self.snapshot.take() {
            Some(snap) if snap.0 == epoch && snap.1 == version => snap,
            // The first page of a snapshot (or of a new one: another epoch).
            _ => (epoch.clone(), version, String::new(), BTreeSet::new()),
        };
        seen.extend(self.apply(&page));
        match page["next"].as_str() {
            Some(next) => {
                assert!(next.len() <= 512);
                self.snapshot = Some((epoch, version, next.to_string(), seen));
                false
            }
            None => {
                // The snapshot is complete: what it did not mention is retired.
                self.entries
                    .retain(|name, _| !name.starts_with("k/") || seen.contains(name));
                self.epoch = epoch;
                self.version = version;
                // An empty database that never changed: its snapshot is all there is.
                version == 0
            }
        }
    }

    async fn sync(&mut self, s: &common::Svc) {
        for _ in 0..100_000 {
            if self.step(s).await {
                return;
            }
        }
        panic!("the sync never caught up");
    }
}

/// Everything the database holds, as one snapshot with no page limit: what a fresh sync
/// must end up with.
async fn whole(s: &common::Svc) -> (i64, BTreeMap<String, Value>) {
    let ask = FeedAsk {
        since: 0,
        epoch: None,
        after: None,
        page: usize::MAX,
        now: i64::try_from(T0).unwrap(),
    };
    let FeedAnswer::Snapshot {
        epoch,
        view,
        records,
        next,
    } = s.state.store.feed(&ask).await.unwrap()
    else {
        panic!("since 0 is a snapshot");
    };
    assert_eq!(next, None);
    let body = serde_json::to_value(FeedPage {
        epoch,
        version: view,
        full: true,
        more: false,
        next: None,
        keys: records.keys,
        users: records.users,
        jtis: records.jtis,
        levers: records.levers,
    })
    .unwrap();
    let mut m = Mirror::default();
    m.apply(&body);
    (view, m.entries)
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
        // Tiny pages: snapshots and deltas span several answers.
        c.feed_page_size = 2;
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
            Op::Step => {
                mirror.step(&s).await;
            }
            Op::Revoke(_) | Op::Rotate { .. } => {}
        }
    }
    mirror.sync(&s).await;
    let mut fresh = Mirror::default();
    fresh.sync(&s).await;
    let (version, state) = whole(&s).await;
    assert_eq!(
        fresh.entries, state,
        "a fresh paged sync is the database's state"
    );
    assert_eq!((mirror.version, fresh.version), (version, version));
    assert_eq!(mirror.epoch, fresh.epoch);
    // Everything still kept is exactly as the database has it ...
    for (k, v) in &state {
        assert_eq!(mirror.entries.get(k), Some(v), "{k}");
    }
    // ... and whatever else the mirror holds was purged after it had expired or been
    // revoked (a tombstone: its revocation time is not fed).
    let cutoff = s.clock.now_secs_for_tests() - 3600;
    for (k, v) in &mirror.entries {
        if !state.contains_key(k) {
            assert!(
                end_of(v).is_some_and(|e| e < cutoff) || v["active"] == false,
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

/// An answer larger than a proxy's sync reads (16 MiB) is sent all the same, and the
/// service says so where its page size is set: counted in `GET /v1/stats` (and logged).
/// 3,900 keys with 32 scopes of 128 characters are some 17 MB of JSON in one page.
#[tokio::test]
async fn an_answer_over_what_a_sync_reads_is_counted() {
    let s = svc_with(|c| c.feed_page_size = 50_000).await;
    let scopes: Vec<String> = (0..32)
        .map(|i| format!("s{i:02}{}", "x".repeat(125)))
        .collect();
    for i in 0..3_900 {
        let (status, body) = s
            .admin(
                Method::POST,
                "/v1/keys",
                Some(
                    json!({"user_id": format!("user_{i}"), "tenant_id": "tenant_1",
                            "plan": "team", "device_name": "laptop", "scopes": scopes}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let counted = |stats: &Value| stats["counters"]["oversized_answers"].as_u64();
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(counted(&stats), Some(0));
    let (status, page) = s.feed("since=0&paged=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["keys"].as_array().unwrap().len(), 3_900);
    assert!(page.to_string().len() > gatehouse_core::sync::feed::MAX_ANSWER_BYTES);
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(counted(&stats), Some(1));
    // Changes of a few keys are far below it: not counted.
    s.issue("user_small").await;
    let version = page["version"].as_i64().unwrap();
    let (status, _) = s.feed(&format!("since={version}&paged=true")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(counted(&stats), Some(1));
}
