//! The key check Envoy's `ext_authz` calls (`ANY /v1/authz/{*rest}`), through the real
//! router over a real database (SQLite, or PostgreSQL with
//! `GATEHOUSE_TEST_DATABASE=postgres`; see `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests: a failure panics"
)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{ADMIN, FEED, error_code, svc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// What ext_authz sends: the original method and path after the prefix, the forwarded
/// headers, no body.
fn check_request(method: Method, token: Option<&str>, key: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri("/v1/authz/v1/things?page=2")
        .header("x-request-id", "test-req-1");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(Body::empty()).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

async fn call(s: &common::Svc, req: Request<Body>) -> Answer {
    let res = s.app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let raw = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    let body = if raw.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&raw).unwrap()
    };
    Answer {
        status,
        headers,
        body,
        raw,
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_usable_key_is_answered_200_with_its_identity_in_headers_for_every_method() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ] {
        let a = call(&s, check_request(method.clone(), Some(FEED), Some(key))).await;
        assert_eq!(a.status, StatusCode::OK, "{method}");
        assert_eq!(header(&a, "x-gatehouse-user"), Some("user_1"));
        assert_eq!(header(&a, "x-gatehouse-tenant"), Some("tenant_1"));
        assert_eq!(header(&a, "x-gatehouse-plan"), Some("team"));
        assert_eq!(header(&a, "x-gatehouse-key-id"), k["id"].as_str());
        assert!(a.raw.is_empty());
    }
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys_are_refused_alike_with_401() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    // Last character changed: the checksum no longer matches.
    let mut mistyped = key.to_string();
    let last = mistyped.pop().unwrap();
    mistyped.push(if last == 'a' { 'b' } else { 'a' });
    // A well-formed key that was never issued.
    let unknown = gatehouse::api_key::format_key("ghk", "0123456789abcdefABCDEF");
    assert!(gatehouse::api_key::check_format(unknown.as_bytes()).is_ok());
    for presented in [
        None,
        Some(""),
        Some(mistyped.as_str()),
        Some(unknown.as_str()),
    ] {
        let a = call(&s, check_request(Method::GET, Some(FEED), presented)).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{presented:?}");
        assert_eq!(error_code(&a.body), "INVALID_CREDENTIALS");
        assert_eq!(a.body["request_id"], "test-req-1");
        assert_eq!(header(&a, "x-gatehouse-user"), None);
    }
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused_with_401() {
    let s = svc().await;
    let revoked = s.issue("user_1").await;
    let (status, _) = s
        .admin(
            Method::DELETE,
            &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, expiring) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "user_2", "tenant_id": "tenant_1", "plan": "team",
                "device_name": "laptop", "expires_in_days": 1}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let expiring = expiring["api_key"].as_str().unwrap();
    let a = call(&s, check_request(Method::GET, Some(FEED), Some(expiring))).await;
    assert_eq!(a.status, StatusCode::OK);
    s.clock.advance_secs(86_400);
    for key in [revoked["api_key"].as_str().unwrap(), expiring] {
        let a = call(&s, check_request(Method::GET, Some(FEED), Some(key))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&a.body), "INVALID_CREDENTIALS");
    }
}

#[tokio::test]
async fn only_the_feed_token_may_check_keys() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    for token in [None, Some(ADMIN), Some("not-a-token")] {
        let a = call(&s, check_request(Method::GET, token, Some(key))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(error_code(&a.body), "UNAUTHORIZED");
        assert_eq!(header(&a, "x-gatehouse-user"), None);
    }
}

#[tokio::test]
async fn the_key_is_never_echoed_or_logged_in_the_answer() {
    let s = svc().await;
    let k = s.issue("user_1").await;
    let key = k["api_key"].as_str().unwrap();
    let a = call(&s, check_request(Method::GET, Some(FEED), Some(key))).await;
    assert_eq!(a.status, StatusCode::OK);
    for (_, v) in &a.headers {
        assert!(!v.as_bytes().windows(key.len()).any(|w| w == key.as_bytes()));
    }
}
