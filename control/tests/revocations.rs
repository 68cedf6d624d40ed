//! JWT revocations last as long as the tokens they cover (control/src/token_lifetime.rs),
//! from the bound the service learns from the policy or its settings, and the feed and
//! the cleanup job never drop one before its `until`. Through the real router over a real
//! database (SQLite, or PostgreSQL with `GATEHOUSE_TEST_DATABASE=postgres`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a failure panics"
)]

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, FEED, Svc, T0, svc_with};
use gatehouse_control::config::Config;
use gatehouse_control::token_lifetime::TokenLifetime;
use gatehouse_core::time::{UnixNanos, format_rfc3339};
use serde_json::{Value, json};
use std::time::Duration;

/// The token lifetime `serve` would resolve from this policy and these settings.
fn resolved(policy_yaml: Option<&str>, settings: &[(&str, &str)]) -> TokenLifetime {
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    if let Some(yaml) = policy_yaml {
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, yaml).unwrap();
        args = vec!["--policy".to_string(), file.to_str().unwrap().to_string()];
    }
    let env = |name: &str| match name {
        "GATEHOUSE_ADMIN_TOKEN" => Some(ADMIN.to_string()),
        "GATEHOUSE_FEED_TOKEN" => Some(FEED.to_string()),
        other => settings
            .iter()
            .find(|(k, _)| *k == other)
            .map(|(_, v)| v.to_string()),
    };
    Config::parse(&args, &env).unwrap().token_lifetime
}

/// A policy whose one JWT provider has these `max_token_lifetime` and `leeway`.
fn policy(lifetime: &str, leeway: &str) -> String {
    format!(
        "version: 1\njwt:\n  max_token_lifetime: {lifetime}\n  leeway: {leeway}\n  keys:\n    \
         - {{ kid: k1, alg: HS256, secret_env: K }}\nroutes:\n  - match: {{ path_prefix: /v1/ }}\n"
    )
}

fn at(secs: u64) -> String {
    format_rfc3339(UnixNanos::from_secs(secs))
}

async fn service(lifetime: TokenLifetime, retention: Duration) -> Svc {
    svc_with(|c| {
        c.token_lifetime = lifetime;
        c.retention = retention;
    })
    .await
}

async fn revoke_user(s: &Svc, user: &str) -> Value {
    let (status, body) = s
        .admin(
            Method::POST,
            &format!("/v1/users/{user}/revoke-tokens"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn revoke_jti(s: &Svc, jti: &str, expires_at: u64) -> Value {
    let (status, body) = s
        .admin(
            Method::POST,
            "/v1/tokens/revoke",
            Some(json!({"jti": jti, "expires_at": expires_at})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The snapshot's user and jti entries, as (name, until).
async fn fed(s: &Svc) -> (Vec<(String, Value)>, Vec<Value>) {
    let (status, snap) = s.feed("since=0").await;
    assert_eq!(status, StatusCode::OK, "{snap}");
    let users = snap["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["user"].as_str().unwrap().to_string(), u["until"].clone()))
        .collect();
    let jtis = snap["jtis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["until"].clone())
        .collect();
    (users, jtis)
}

#[tokio::test]
async fn a_users_revocation_lasts_the_policys_token_lifetime_plus_its_leeway() {
    let lifetime = resolved(Some(&policy("2h", "30s")), &[]);
    let s = service(lifetime, Duration::from_secs(86_400)).await;
    let body = revoke_user(&s, "user_1").await;
    assert_eq!(body["tokens_issued_before"], at(T0));
    assert_eq!(body["until"], at(T0 + 7200 + 30));
    let (users, _) = fed(&s).await;
    assert_eq!(users, [("user_1".to_string(), json!(T0 + 7230))]);
}

#[tokio::test]
async fn without_a_policy_the_settings_or_a_day_and_a_minute() {
    let s = service(resolved(None, &[]), Duration::from_secs(86_400)).await;
    assert_eq!(revoke_user(&s, "u").await["until"], at(T0 + 86_400 + 60));
    let lifetime = resolved(
        None,
        &[
            ("GATEHOUSE_MAX_JWT_LIFETIME", "3d"),
            ("GATEHOUSE_JWT_LEEWAY", "5m"),
        ],
    );
    let s = service(lifetime, Duration::from_secs(86_400)).await;
    assert_eq!(
        revoke_user(&s, "u").await["until"],
        at(T0 + 3 * 86_400 + 300)
    );
}

#[tokio::test]
async fn with_an_unbounded_lifetime_a_users_revocation_never_ends() {
    let lifetime = resolved(Some(&policy("unbounded", "60s")), &[]);
    let s = service(lifetime, Duration::from_secs(1)).await;
    let body = revoke_user(&s, "user_1").await;
    assert_eq!(body["until"], Value::Null);
    // A jti entry still ends with its token.
    let jti = revoke_jti(&s, "j1", T0 + 600).await;
    assert_eq!(jti["until"], at(T0 + 660));
    s.clock.advance_secs(20 * 365 * 86_400);
    gatehouse_control::cleanup::run_once(&s.state)
        .await
        .unwrap();
    let (users, jtis) = fed(&s).await;
    assert_eq!(users, [("user_1".to_string(), Value::Null)]);
    assert!(jtis.is_empty(), "the jti entry ended: {jtis:?}");
}

#[tokio::test]
async fn a_jti_entry_lasts_to_exp_plus_leeway_and_no_longer_than_any_token_could() {
    let lifetime = resolved(Some(&policy("1h", "60s")), &[]);
    let s = service(lifetime, Duration::from_secs(86_400)).await;
    assert_eq!(revoke_jti(&s, "a", T0 + 600).await["until"], at(T0 + 660));
    // An exp far past what the policy lets a token live: no token a proxy could accept
    // now (iat <= now + leeway) is accepted after now + leeway + 1h + leeway.
    assert_eq!(
        revoke_jti(&s, "b", T0 + 365 * 86_400).await["until"],
        at(T0 + 60 + 3600 + 60)
    );
    // Revoking again with an earlier exp never shortens the entry.
    assert_eq!(
        revoke_jti(&s, "b", T0 + 10).await["until"],
        at(T0 + 60 + 3600 + 60)
    );
}

#[tokio::test]
async fn the_feed_and_the_cleanup_keep_every_entry_until_its_until() {
    // The shortest retention there is: a purge waits for nothing but `until` itself.
    let lifetime = resolved(
        None,
        &[
            ("GATEHOUSE_MAX_JWT_LIFETIME", "1h"),
            ("GATEHOUSE_JWT_LEEWAY", "60s"),
        ],
    );
    let s = service(lifetime, Duration::from_secs(1)).await;
    revoke_user(&s, "user_1").await;
    revoke_jti(&s, "j1", T0 + 3000).await;
    let user_until = T0 + 3660;
    let jti_until = T0 + 3060;
    let (_, first) = s.feed("since=0").await;
    let version = first["version"].as_i64().unwrap();

    // Up to each `until` and the one second of retention after it, the entry is in every
    // snapshot, however often the cleanup runs; then it goes. (The clock moves second by
    // second around each end, where it matters.)
    let mut now = T0;
    for step in [3000, 59, 1, 1, 1, 597, 1, 1, 1] {
        s.clock.advance_secs(step);
        now += step;
        let purged = gatehouse_control::cleanup::run_once(&s.state)
            .await
            .unwrap();
        let (users, jtis) = fed(&s).await;
        let user_kept = now <= user_until + 1;
        let jti_kept = now <= jti_until + 1;
        assert_eq!(users.len(), usize::from(user_kept), "at T0+{}", now - T0);
        assert_eq!(jtis.len(), usize::from(jti_kept), "at T0+{}", now - T0);
        if user_kept && jti_kept {
            assert_eq!((purged.users, purged.jtis), (0, 0), "at T0+{}", now - T0);
            // A sync that has both entries is not sent away either.
            let (status, _) = s.feed(&format!("since={version}")).await;
            assert_eq!(status, StatusCode::OK, "at T0+{}", now - T0);
        }
    }
    // Both gone now, one second of retention after their ends.
    let (users, jtis) = fed(&s).await;
    assert!(users.is_empty() && jtis.is_empty());
}
