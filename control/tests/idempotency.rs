//! Idempotent issuance (`POST /v1/keys` with `Idempotency-Key`) through the real router
//! over a real database (SQLite, or PostgreSQL with `GATEHOUSE_TEST_DATABASE=postgres`;
//! see `common`). The kill -9 case, on a real process, is in `serve.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a failure panics"
)]

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use common::{ADMIN, Svc, error_code, svc, svc_with};
use gatehouse_core::authn::api_key::KeyHash;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn body_for(user: &str) -> Value {
    json!({"user_id": user, "tenant_id": "tenant_1", "plan": "team",
        "device_name": "laptop", "expires_in_days": 30, "scopes": ["billing", "admin"]})
}

/// `POST /v1/keys` with `body` (as text, sent as is) and these Idempotency-Key values
/// (raw bytes, each its own header line); returns (status, headers, body).
async fn post_raw(app: &Router, body: &str, keys: &[&[u8]]) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/v1/keys")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json");
    for k in keys {
        req = req.header("idempotency-key", HeaderValue::from_bytes(k).unwrap());
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

async fn post(app: &Router, body: &Value, key: &str) -> (StatusCode, HeaderMap, Value) {
    post_raw(app, &body.to_string(), &[key.as_bytes()]).await
}

async fn keys_of(s: &Svc, user: &str) -> Vec<Value> {
    let (status, list) = s
        .admin(Method::GET, &format!("/v1/keys?user={user}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["keys"].as_array().unwrap().clone()
}

/// `v` without the fields only an issuance or only a replay has.
fn metadata(v: &Value) -> Value {
    let mut v = v.clone();
    for field in ["api_key", "replayed", "note"] {
        v.as_object_mut().unwrap().remove(field);
    }
    v
}

#[tokio::test]
async fn a_retry_is_200_with_the_same_key_and_no_secret() {
    let s = svc().await;
    let key = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    let (status, headers, first) = post(&s.app, &body_for("user_1"), key).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let secret = first["api_key"].as_str().unwrap().to_string();
    let id = first["id"].as_str().unwrap().to_string();
    let version = s.state.store.version().await.unwrap();

    // The same request, written differently: other field order, spacing, scope order.
    let same = r#"{ "scopes": ["admin", "billing", "admin"], "plan": "team",
        "user_id": "user_1", "device_name": " laptop ", "tenant_id": "tenant_1",
        "expires_in_days": 30 }"#;
    for body in [body_for("user_1").to_string(), same.to_string()] {
        let (status, headers, again) = post_raw(&s.app, &body, &[key.as_bytes()]).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(again["id"], id.as_str());
        assert_eq!(metadata(&again), metadata(&first));
        assert!(again["api_key"].is_null(), "{again}");
        assert_eq!(again["replayed"], true);
        let note = again["note"].as_str().unwrap();
        assert!(note.contains("only in the first answer"), "{note}");
        assert!(
            note.contains(&format!("POST /v1/keys/{id}/rotate")),
            "{note}"
        );
        // Neither the secret, nor its hash, nor the Idempotency-Key.
        let text = again.to_string();
        let hash = KeyHash::of_key(secret.as_bytes()).to_hex();
        assert!(!text.contains(&secret) && !text.contains(&hash) && !text.contains(key));
    }
    assert_eq!(keys_of(&s, "user_1").await.len(), 1);
    // A replay changes nothing: no version for the feed, no audit event.
    assert_eq!(s.state.store.version().await.unwrap(), version);
    let (_, audit) = s.admin(Method::GET, "/v1/audit?kind=change", None).await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");

    // The rotation the note names gives a new secret for the key.
    let (status, rotated) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert!(rotated["api_key"].is_string());
    // Another Idempotency-Key is another request: a new key.
    let (status, _, other) = post(&s.app, &body_for("user_1"), "another-key").await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_ne!(other["id"], id.as_str());
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_request_is_422() {
    let s = svc().await;
    let key = "order-4711";
    let (status, _, first) = post(&s.app, &body_for("user_1"), key).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let mut others = Vec::new();
    for (field, value) in [
        ("device_name", json!("phone")),
        ("user_id", json!("user_2")),
        ("tenant_id", json!("tenant_2")),
        ("plan", json!("free")),
        ("expires_in_days", json!(31)),
        ("scopes", json!(["billing"])),
    ] {
        let mut b = body_for("user_1");
        b[field] = value;
        others.push(b);
    }
    let mut no_scopes = body_for("user_1");
    no_scopes.as_object_mut().unwrap().remove("scopes");
    others.push(no_scopes);
    for body in others {
        let (status, headers, refused) = post(&s.app, &body, key).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {refused}"
        );
        assert_eq!(error_code(&refused), "IDEMPOTENCY_KEY_REUSED");
        assert!(headers.get("idempotent-replayed").is_none());
        assert!(!refused.to_string().contains(key), "{refused}");
    }
    assert_eq!(keys_of(&s, "user_1").await.len(), 1);
    assert!(keys_of(&s, "user_2").await.is_empty());
    // The first request is still replayed.
    let (status, _, again) = post(&s.app, &body_for("user_1"), key).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_400_and_issues_nothing() {
    let s = svc().await;
    let long = "k".repeat(256);
    // (DEL and other control bytes but tab cannot be sent: HTTP refuses them first.)
    let cases: [&[&[u8]]; 7] = [
        &[b""],
        &[long.as_bytes()],
        &[b"two words"],
        &[b"tab\tinside"],
        &[b"caf\xc3\xa9"],
        &[b"\xff"],
        &[b"once", b"twice"],
    ];
    for keys in cases {
        let (status, headers, refused) =
            post_raw(&s.app, &body_for("user_1").to_string(), keys).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{keys:?}: {refused}");
        assert_eq!(error_code(&refused), "BAD_REQUEST");
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
        assert!(headers.get("idempotent-replayed").is_none());
    }
    assert!(keys_of(&s, "user_1").await.is_empty());
    // The bounds themselves are taken.
    let longest = "~".repeat(255);
    for key in ["!", longest.as_str()] {
        let (status, _, body) = post(&s.app, &body_for("user_1"), key).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

#[tokio::test]
async fn a_retry_after_revocation_says_revoked_and_issues_nothing() {
    let s = svc().await;
    let (_, _, first) = post(&s.app, &body_for("user_1"), "k-revoked").await;
    let id = first["id"].as_str().unwrap();
    s.clock.advance_secs(60);
    let (status, _) = s
        .admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, again) = post(&s.app, &body_for("user_1"), "k-revoked").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["id"], id);
    assert_eq!(again["status"], "revoked");
    assert_eq!(again["revoked_at"], "2026-01-01T00:01:00.000Z");
    assert!(again["api_key"].is_null());
    assert!(
        again["note"].as_str().unwrap().contains("revoked"),
        "{again}"
    );
    assert_eq!(keys_of(&s, "user_1").await.len(), 1);
}

#[tokio::test]
async fn a_retry_of_a_rotated_key_names_its_successor() {
    let s = svc().await;
    let (_, _, first) = post(&s.app, &body_for("user_1"), "k-rotated").await;
    let id = first["id"].as_str().unwrap();
    let (_, rotated) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    let (status, _, again) = post(&s.app, &body_for("user_1"), "k-rotated").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["replaced_by"], rotated["id"]);
    let note = again["note"].as_str().unwrap();
    assert!(note.contains(rotated["id"].as_str().unwrap()), "{note}");
    assert_eq!(keys_of(&s, "user_1").await.len(), 2);
}

#[tokio::test]
async fn a_retry_of_the_key_that_reached_the_limit_is_a_replay_not_409() {
    let s = svc_with(|c| c.max_keys_per_user = 1).await;
    let (status, _, first) = post(&s.app, &body_for("user_1"), "k-limit").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, _, again) = post(&s.app, &body_for("user_1"), "k-limit").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    // A new request is still held to the limit.
    let (status, _, refused) = post(&s.app, &body_for("user_1"), "k-limit-2").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&refused), "KEY_LIMIT_REACHED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_issue_one_key_and_replay_it() {
    let s = svc().await;
    s.warm_pool(4).await;
    let overlap = s.watch_pool();
    for round in 0..8 {
        let user = format!("user_race_{round}");
        let key = format!("race-{round}");
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let app = s.app.clone();
                let body = body_for(&user);
                let key = key.clone();
                tokio::spawn(async move { post(&app, &body, &key).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            let (status, headers, body) = t.await.unwrap();
            answers.push((status, headers.get("idempotent-replayed").is_some(), body));
        }
        answers.sort_by_key(|(status, _, _)| *status);
        let [
            (ok, ok_replayed, replayed),
            (created, created_replayed, issued),
        ] = &answers[..]
        else {
            panic!("two answers expected");
        };
        assert_eq!(
            (*ok, *created),
            (StatusCode::OK, StatusCode::CREATED),
            "round {round}: {replayed} {issued}"
        );
        assert!(*ok_replayed && !*created_replayed);
        assert_eq!(replayed["id"], issued["id"]);
        assert!(replayed["api_key"].is_null() && issued["api_key"].is_string());
        assert_eq!(keys_of(&s, &user).await.len(), 1, "round {round}");
    }
    overlap.assert_overlapped().await;
}

#[tokio::test]
async fn after_24_hours_an_idempotency_key_is_forgotten_and_purged() {
    let s = svc().await;
    let (_, _, a) = post(&s.app, &body_for("user_a"), "k-a").await;
    let (_, _, b) = post(&s.app, &body_for("user_b"), "k-b").await;
    // 24 hours to the second: still remembered.
    s.clock.advance_secs(86_400);
    let (status, _, again) = post(&s.app, &body_for("user_a"), "k-a").await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &a["id"]));
    s.clock.advance_secs(1);
    // Past it, before the cleanup job ran: the same request issues a new key.
    let (status, _, new_a) = post(&s.app, &body_for("user_a"), "k-a").await;
    assert_eq!(status, StatusCode::CREATED, "{new_a}");
    assert_ne!(new_a["id"], a["id"]);
    // The cleanup job purges what is older (k-b), not the new record of k-a.
    let purged = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(purged.idempotency_keys, 1);
    let again = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!(again.idempotency_keys, 0);
    let (status, _, new_b) = post(&s.app, &body_for("user_b"), "k-b").await;
    assert_eq!(status, StatusCode::CREATED, "{new_b}");
    assert_ne!(new_b["id"], b["id"]);
    let (status, _, replay) = post(&s.app, &body_for("user_a"), "k-a").await;
    assert_eq!((status, &replay["id"]), (StatusCode::OK, &new_a["id"]));
    assert_eq!(keys_of(&s, "user_a").await.len(), 2);
    // Another request may take a forgotten value.
    s.clock.advance_secs(86_401);
    let (status, _, other) = post(&s.app, &body_for("user_c"), "k-a").await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
}

#[tokio::test]
async fn a_retry_whose_key_was_deleted_since_is_410_and_issues_nothing() {
    // Keys are purged an hour after their revocation here, sooner than the 24 hours an
    // Idempotency-Key is remembered.
    let s = svc_with(|c| c.retention = std::time::Duration::from_secs(3600)).await;
    let (_, _, first) = post(&s.app, &body_for("user_1"), "k-gone").await;
    let id = first["id"].as_str().unwrap();
    s.admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    s.clock.advance_secs(3601);
    let purged = gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    assert_eq!((purged.keys, purged.idempotency_keys), (1, 0));
    let (status, _, refused) = post(&s.app, &body_for("user_1"), "k-gone").await;
    assert_eq!(status, StatusCode::GONE, "{refused}");
    assert_eq!(error_code(&refused), "GONE");
    assert!(keys_of(&s, "user_1").await.is_empty());
}
