//! The per-client limit on failed bearer-token attempts (control/src/token_limit.rs),
//! through the real router over a real database (SQLite, or PostgreSQL with
//! `GATEHOUSE_TEST_DATABASE=postgres`), each request from the address a real socket gives.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests: a failure panics"
)]

mod common;

use axum::extract::ConnectInfo;
use axum::http::{Method, StatusCode};
use common::{ADMIN, FEED, Svc, error_code, request, svc, svc_with};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tower::ServiceExt;

const WRONG: &str = "not-the-token-but-long-enough-7b1e9d3c5a";

/// `method path` with `token`, from `client` (`ip:port`); returns status, Retry-After and
/// the body.
async fn from(
    s: &Svc,
    client: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let body = (method == Method::POST).then(|| json!({}));
    let mut req = request(method, path, token, body.as_ref());
    let addr: SocketAddr = client.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let res = s.app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry, v)
}

async fn counters(s: &Svc) -> Value {
    let (status, body) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["counters"].clone()
}

#[tokio::test]
async fn ten_wrong_tokens_then_429_with_retry_after_until_the_minute_passes() {
    let s = svc().await;
    let me = "203.0.113.7:40000";
    for i in 0..10 {
        let (status, _, body) = from(&s, me, Method::GET, "/v1/keys", Some(WRONG)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert_eq!(error_code(&body), "UNAUTHORIZED");
    }
    // Locked out: even the right token is not looked at, from any port of the address.
    for (client, token) in [(me, ADMIN), ("203.0.113.7:40001", WRONG)] {
        let (status, retry, body) = from(&s, client, Method::GET, "/v1/keys", Some(token)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error_code(&body), "RATE_LIMITED");
        assert_eq!(retry.as_deref(), Some("60"));
        assert!(!body.to_string().contains(WRONG));
    }
    s.clock.advance_secs(45);
    let (status, retry, _) = from(&s, me, Method::GET, "/v1/keys", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("15"));
    s.clock.advance_secs(15);
    let (status, _, body) = from(&s, me, Method::GET, "/v1/keys", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let c = counters(&s).await;
    assert_eq!(
        (c["token_failures"].clone(), c["token_lockouts"].clone()),
        (json!(10), json!(3))
    );
}

#[tokio::test]
async fn others_are_not_slowed_and_only_guesses_count() {
    let s = svc().await;
    let attacker = "198.51.100.9:5000";
    for _ in 0..10 {
        from(&s, attacker, Method::GET, "/v1/keys", Some(WRONG)).await;
    }
    assert_eq!(
        from(&s, attacker, Method::GET, "/v1/keys", Some(ADMIN))
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another address: untouched.
    assert_eq!(
        from(
            &s,
            "198.51.100.10:5000",
            Method::GET,
            "/v1/keys",
            Some(ADMIN)
        )
        .await
        .0,
        StatusCode::OK
    );
    // Good tokens, however many, are never counted.
    let busy = "192.0.2.1:6000";
    for _ in 0..50 {
        assert_eq!(
            from(&s, busy, Method::GET, "/v1/cache", Some(FEED)).await.0,
            StatusCode::OK
        );
    }
    // No token, or a real token on a route that takes the other one: 401, not a guess.
    let lost = "192.0.2.2:6000";
    for _ in 0..30 {
        for (path, token) in [
            ("/v1/keys", None),
            ("/v1/keys", Some(FEED)),
            ("/v1/cache", Some(ADMIN)),
        ] {
            let (status, _, _) = from(&s, lost, Method::GET, path, token).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
    assert_eq!(
        from(&s, lost, Method::GET, "/v1/keys", Some(ADMIN)).await.0,
        StatusCode::OK
    );
    let c = counters(&s).await;
    assert_eq!(c["token_failures"], 10);
}

#[tokio::test]
async fn the_feed_and_the_reports_are_limited_too() {
    let s = svc().await;
    let proxy = "10.0.0.5:7000";
    for (method, path) in [(Method::GET, "/v1/cache"), (Method::POST, "/v1/events")]
        .into_iter()
        .cycle()
        .take(10)
    {
        let (status, _, _) = from(&s, proxy, method, path, Some(WRONG)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for (method, path) in [(Method::GET, "/v1/cache"), (Method::POST, "/v1/events")] {
        let (status, retry, _) = from(&s, proxy, method, path, Some(FEED)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(retry.is_some());
    }
    // The open routes stay open.
    for path in ["/healthz", "/readyz", "/openapi.json", "/"] {
        assert_eq!(
            from(&s, proxy, Method::GET, path, None).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn ipv6_clients_count_per_64() {
    let s = svc().await;
    for i in 1..=10 {
        let client = format!("[2001:db8:1:2::{i:x}]:443");
        from(&s, &client, Method::GET, "/v1/keys", Some(WRONG)).await;
    }
    let (status, _, _) = from(
        &s,
        "[2001:db8:1:2:ffff::1]:443",
        Method::GET,
        "/v1/keys",
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "same /64");
    let (status, _, _) = from(
        &s,
        "[2001:db8:1:3::1]:443",
        Method::GET,
        "/v1/keys",
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "another /64");
}

#[tokio::test]
async fn the_limit_is_a_setting() {
    let s = svc_with(|c| c.token_failures_per_minute = 2).await;
    let me = "203.0.113.8:1";
    for _ in 0..2 {
        assert_eq!(
            from(&s, me, Method::GET, "/v1/stats", Some(WRONG)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        from(&s, me, Method::GET, "/v1/stats", Some(ADMIN)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}
