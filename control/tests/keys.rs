//! The key API through the real router over a real database (SQLite, or PostgreSQL with
//! `GATEHOUSE_TEST_DATABASE=postgres`; see `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests: a failure panics"
)]

mod common;

use axum::http::{Method, StatusCode};
use common::{T0, error_code, svc, svc_with};
use gatehouse_control::plans::Plans;
use gatehouse_control::token_lifetime::TokenLifetime;
use gatehouse_core::authn::api_key::{KeyHash, check_format};
use serde_json::{Value, json};

#[tokio::test]
async fn issued_key_is_shown_once_in_the_checksummed_format() {
    let s = svc().await;
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"user_id": "user_1", "tenant_id": "tenant_1", "plan": "team",
                "device_name": "Ana's laptop", "expires_in_days": 30, "scopes": ["billing", "billing", "admin"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["api_key"].as_str().unwrap();
    assert!(secret.starts_with("ghk_"));
    assert!(check_format(secret.as_bytes()).is_ok());
    assert_eq!(body["status"], "active");
    assert_eq!(body["scopes"], json!(["admin", "billing"]));
    assert_eq!(body["created_at"], "2026-01-01T00:00:00.000Z");
    assert_eq!(body["expires_at"], "2026-01-31T00:00:00.000Z");
    let id = body["id"].as_str().unwrap();

    // Never again: not in the record, the list, nor as its hash.
    let hash = KeyHash::of_key(secret.as_bytes()).to_hex();
    let (status, one) = s.admin(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    for v in [&one, &list] {
        let text = v.to_string();
        assert!(!text.contains(secret) && !text.contains(&hash), "{text}");
    }
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(one["device_name"], "Ana's laptop");
}

#[tokio::test]
async fn key_prefix_comes_from_config() {
    let s = svc_with(|c| c.key_prefix = "acme_live".to_string()).await;
    let body = s.issue("user_1").await;
    assert!(body["api_key"].as_str().unwrap().starts_with("acme_live_"));
}

#[tokio::test]
async fn sixth_active_key_is_refused_with_409_key_limit_reached() {
    let s = svc().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.issue("user_1").await["id"].as_str().unwrap().to_string());
    }
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "user_1", "tenant_id": "t", "plan": "free", "device_name": "d"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "KEY_LIMIT_REACHED");
    // Another user is not affected; a revoked key frees a slot.
    s.issue("user_2").await;
    let (status, _) = s
        .admin(Method::DELETE, &format!("/v1/keys/{}", ids[0]), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    s.issue("user_1").await;
}

#[tokio::test]
async fn expired_keys_do_not_count_against_the_cap() {
    let s = svc_with(|c| c.max_keys_per_user = 1).await;
    let (status, _) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"user_id": "u", "tenant_id": "t", "plan": "free", "device_name": "d", "expires_in_days": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"user_id": "u", "tenant_id": "t", "plan": "free", "device_name": "d"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    s.clock.advance_secs(86_400);
    s.issue("u").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_requests_for_one_user_give_exactly_five_keys() {
    let s = svc().await;
    // Connections opened up front: the burst then meets the count-then-insert race at once.
    s.warm_pool(12).await;
    let overlap = s.watch_pool();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let app = s.app.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"user_id": "user_c", "tenant_id": "t", "plan": "free",
                "device_name": format!("device {i}")});
            common::send(
                &app,
                common::request(Method::POST, "/v1/keys", Some(common::ADMIN), Some(&body)),
            )
            .await
        }));
    }
    let mut created = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(error_code(&body), "KEY_LIMIT_REACHED");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    overlap.assert_overlapped().await;
    assert_eq!((created, refused), (5, 15));
    let (_, list) = s.admin(Method::GET, "/v1/keys?user=user_c", None).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_rotations_of_one_key_give_exactly_one_new_key() {
    let s = svc().await;
    let id = s.issue("user_r").await["id"].as_str().unwrap().to_string();
    s.warm_pool(12).await;
    let overlap = s.watch_pool();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let app = s.app.clone();
            let path = format!("/v1/keys/{id}/rotate");
            tokio::spawn(async move {
                common::send(
                    &app,
                    common::request(Method::POST, &path, Some(common::ADMIN), None),
                )
                .await
            })
        })
        .collect();
    let mut rotated = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::OK => rotated += 1,
            StatusCode::CONFLICT => assert_eq!(error_code(&body), "CONFLICT"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    overlap.assert_overlapped().await;
    assert_eq!(rotated, 1);
    let (_, list) = s.admin(Method::GET, "/v1/keys?user=user_r", None).await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
}

async fn verify(s: &common::Svc, key: &str) -> Value {
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"api_key": key})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn verify_answers_identity_for_a_live_key_and_false_otherwise() {
    let s = svc().await;
    let issued = s.issue("user_1").await;
    let key = issued["api_key"].as_str().unwrap();
    let v = verify(&s, key).await;
    assert_eq!(
        v,
        json!({"valid": true, "key_id": issued["id"], "user_id": "user_1",
            "tenant_id": "tenant_1", "plan": "team", "scopes": []})
    );
    // Checksum broken, unknown, malformed.
    let mut typo = key.to_string();
    typo.pop();
    typo.push(if key.ends_with('A') { 'B' } else { 'A' });
    for bad in [
        typo.as_str(),
        "ghk_0000000000000000000000000000",
        "nope",
        "",
    ] {
        assert_eq!(verify(&s, bad).await, json!({"valid": false}), "{bad}");
    }
    let unknown = gatehouse_core::authn::api_key::format_key("ghk", "0123456789abcdefghijkl");
    assert_eq!(verify(&s, &unknown).await, json!({"valid": false}));
}

#[tokio::test]
async fn revoked_key_no_longer_verifies_and_revoking_twice_is_harmless() {
    let s = svc().await;
    let issued = s.issue("user_1").await;
    let id = issued["id"].as_str().unwrap();
    let (status, body) = s
        .admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "revoked");
    assert_eq!(body["revoked_at"], "2026-01-01T00:00:00.000Z");
    assert_eq!(
        verify(&s, issued["api_key"].as_str().unwrap()).await["valid"],
        false
    );
    let (status, _) = s
        .admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.admin(Method::DELETE, "/v1/keys/key_nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn expired_key_does_not_verify() {
    let s = svc().await;
    let (_, issued) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"user_id": "u", "tenant_id": "t", "plan": "free", "device_name": "d", "expires_in_days": 1})),
        )
        .await;
    let key = issued["api_key"].as_str().unwrap();
    assert_eq!(verify(&s, key).await["valid"], true);
    s.clock.advance_secs(86_400);
    assert_eq!(verify(&s, key).await["valid"], false);
    let (_, one) = s
        .admin(
            Method::GET,
            &format!("/v1/keys/{}", issued["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(one["status"], "expired");
}

#[tokio::test]
async fn rotation_without_grace_revokes_now_and_never_extends_life() {
    let s = svc().await;
    let (_, old) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "u", "tenant_id": "t", "plan": "team", "device_name": "d",
                "expires_in_days": 10, "scopes": ["billing"]}),
            ),
        )
        .await;
    s.clock.advance_secs(3 * 86_400);
    let id = old["id"].as_str().unwrap();
    let (status, new) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{new}");
    assert_ne!(new["id"], old["id"]);
    assert_ne!(new["api_key"], old["api_key"]);
    // Same expiry as the old key, not 10 days from the rotation.
    assert_eq!(new["expires_at"], old["expires_at"]);
    assert_eq!(new["scopes"], json!(["billing"]));
    assert_eq!(new["replaces"]["id"], old["id"]);
    assert_eq!(new["replaces"]["status"], "revoked");
    assert_eq!(new["replaces"]["replaced_by"], new["id"]);
    assert_eq!(
        verify(&s, old["api_key"].as_str().unwrap()).await["valid"],
        false
    );
    assert_eq!(
        verify(&s, new["api_key"].as_str().unwrap()).await["valid"],
        true
    );
    // A rotated key cannot be rotated again.
    let (status, body) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "CONFLICT");
}

#[tokio::test]
async fn rotation_grace_keeps_the_old_key_until_the_earlier_of_grace_and_expiry() {
    let s = svc().await;
    let (_, old) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"user_id": "u", "tenant_id": "t", "plan": "team", "device_name": "d", "expires_in_days": 1})),
        )
        .await;
    let old_key = old["api_key"].as_str().unwrap();
    let id = old["id"].as_str().unwrap();
    let (status, new) = s
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_seconds": 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{new}");
    assert_eq!(new["replaces"]["expires_at"], "2026-01-01T01:00:00.000Z");
    assert_eq!(new["expires_at"], "2026-01-02T00:00:00.000Z");
    assert_eq!(verify(&s, old_key).await["valid"], true);
    s.clock.advance_secs(3600);
    assert_eq!(verify(&s, old_key).await["valid"], false);

    // Grace longer than the key has left: the key's own expiry wins.
    let (_, k) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"user_id": "u", "tenant_id": "t", "plan": "team", "device_name": "d", "expires_in_days": 1})),
        )
        .await;
    let (_, rotated) = s
        .admin(
            Method::POST,
            &format!("/v1/keys/{}/rotate", k["id"].as_str().unwrap()),
            Some(json!({"grace_seconds": 30 * 86_400})),
        )
        .await;
    assert_eq!(rotated["replaces"]["expires_at"], k["expires_at"]);
    assert_eq!(rotated["expires_at"], k["expires_at"]);
}

#[tokio::test]
async fn rotating_an_unknown_or_revoked_key_is_refused() {
    let s = svc().await;
    let (status, body) = s
        .admin(Method::POST, "/v1/keys/key_none/rotate", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "NOT_FOUND");
    let k = s.issue("u").await;
    let id = k["id"].as_str().unwrap();
    s.admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    let (status, _) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn every_change_is_audited_with_request_id_and_never_a_secret() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let id = k["id"].as_str().unwrap();
    let secret = k["api_key"].as_str().unwrap();
    let (_, rotated) = s
        .admin(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    let new_id = rotated["id"].as_str().unwrap();
    s.admin(Method::DELETE, &format!("/v1/keys/{new_id}"), None)
        .await;
    s.admin(Method::POST, "/v1/users/user_1/revoke-tokens", None)
        .await;
    s.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"jti": "jti-secret-1", "expires_at": T0 + 600})),
    )
    .await;
    // Reads are not changes.
    s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    s.admin(
        Method::POST,
        "/v1/keys/verify",
        Some(json!({"api_key": secret})),
    )
    .await;

    let (status, audit) = s.admin(Method::GET, "/v1/audit?limit=10", None).await;
    assert_eq!(status, StatusCode::OK);
    let events = audit["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.revoke",
            "user.revoke_tokens",
            "key.revoke",
            "key.rotate",
            "key.create"
        ]
    );
    for e in events {
        assert_eq!(e["actor"], "admin");
        assert_eq!(e["request_id"], "test-req-1");
        assert_eq!(e["at"], "2026-01-01T00:00:00.000Z");
    }
    assert_eq!(events[4]["target"], id);
    assert_eq!(events[1]["target"], "user_1");
    let text = audit.to_string();
    assert!(!text.contains(secret));
    assert!(!text.contains(rotated["api_key"].as_str().unwrap()));
    assert!(!text.contains("jti-secret-1"));
    assert!(!text.contains(&KeyHash::of_key(secret.as_bytes()).to_hex()));
    // Versions strictly decrease, newest first.
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] > w[1]), "{versions:?}");

    let (_, one) = s.admin(Method::GET, "/v1/audit?limit=1", None).await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn user_token_revocation_lasts_the_longest_jwt_lifetime() {
    let s = svc_with(|c| {
        c.token_lifetime = TokenLifetime::resolve(None, Some(Some(3600)), Some(60)).unwrap()
    })
    .await;
    let (status, body) = s
        .admin(Method::POST, "/v1/users/user_1/revoke-tokens", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"user_id": "user_1", "tokens_issued_before": "2026-01-01T00:00:00.000Z",
            "until": "2026-01-01T01:01:00.000Z"})
    );
    let (status, body) = s
        .admin(Method::POST, "/v1/users/bad%20user/revoke-tokens", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "BAD_REQUEST");
}

#[tokio::test]
async fn jti_revocation_stores_only_the_hash() {
    let s = svc().await;
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"jti": "abc", "expires_at": T0 + 3600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["jti_sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // The token's exp plus the proxies' leeway (60 s by default).
    assert_eq!(body["until"], "2026-01-01T01:01:00.000Z");
    let jti = b"jti-that-must-not-be-stored-7f3a";
    s.admin(
        Method::POST,
        "/v1/tokens/revoke",
        Some(json!({"jti": std::str::from_utf8(jti).unwrap(), "expires_at": T0 + 3600})),
    )
    .await;
    for bytes in s.db.raw_contents() {
        assert!(!bytes.windows(jti.len()).any(|w| w == jti));
    }
}

fn key_on(plan: &str) -> Value {
    json!({"user_id": "user_1", "tenant_id": "t", "plan": plan, "device_name": "d"})
}

#[tokio::test]
async fn a_key_on_a_plan_the_proxies_do_not_know_is_400_listing_the_plans() {
    let s = svc().await;
    for plan in ["pro", "Team", "free2"] {
        let (status, body) = s.admin(Method::POST, "/v1/keys", Some(key_on(plan))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{plan}: {body}");
        assert_eq!(error_code(&body), "BAD_REQUEST");
        let message = body["error"].as_str().unwrap();
        assert_eq!(
            message, "plan must be one of [free, solo, team, enterprise]",
            "{plan}"
        );
    }
    let (_, list) = s.admin(Method::GET, "/v1/keys?user=user_1", None).await;
    assert_eq!(list["keys"], json!([]), "nothing was issued");
    for plan in ["free", "solo", "team", "enterprise"] {
        let (status, body) = s.admin(Method::POST, "/v1/keys", Some(key_on(plan))).await;
        assert_eq!(status, StatusCode::CREATED, "{plan}: {body}");
        assert_eq!(body["plan"], plan);
    }
}

#[tokio::test]
async fn the_configured_plans_replace_the_defaults() {
    let s = svc_with(|c| c.plans = Plans::resolve(Some("gold,silver"), None).unwrap()).await;
    let (status, body) = s
        .admin(Method::POST, "/v1/keys", Some(key_on("team")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "plan must be one of [gold, silver]");
    let (status, body) = s
        .admin(Method::POST, "/v1/keys", Some(key_on("gold")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The document served says so.
    let (status, doc) = s.admin(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc["components"]["schemas"]["CreateKey"]["properties"]["plan"]["enum"],
        json!(["gold", "silver"])
    );
}

#[tokio::test]
async fn a_key_whose_plan_was_dropped_is_not_rotated() {
    // Issued while `silver` was configured; the service then restarts without it.
    let before = svc_with(|c| c.plans = Plans::resolve(Some("gold,silver"), None).unwrap()).await;
    let (status, key) = before
        .admin(Method::POST, "/v1/keys", Some(key_on("silver")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let id = key["id"].as_str().unwrap();
    let mut config = (*before.state.config).clone();
    config.plans = Plans::resolve(Some("gold"), None).unwrap();
    let state = gatehouse_control::AppState::new(
        before.state.store.clone(),
        config,
        before.state.clock.clone(),
    )
    .await
    .unwrap();
    let after = gatehouse_control::router(state);
    let rotate = |path: String| {
        common::send(
            &after,
            common::request(Method::POST, &path, Some(common::ADMIN), None),
        )
    };
    let (status, body) = rotate(format!("/v1/keys/{id}/rotate")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "BAD_REQUEST");
    assert!(body["error"].as_str().unwrap().contains("[gold]"), "{body}");
    // Nothing changed: the key still works and has no successor.
    let (_, list) = before
        .admin(Method::GET, "/v1/keys?user=user_1", None)
        .await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["keys"][0]["status"], "active");
    assert_eq!(list["keys"][0]["replaced_by"], Value::Null);
    // An unknown key is still 404.
    let (status, _) = rotate("/v1/keys/key_nope/rotate".to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
