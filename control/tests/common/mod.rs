//! Shared fixtures: the real router over a real SQLite file in a temp dir, with a clock
//! the test moves by hand.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    reason = "test fixtures: a failure panics; not every test file uses every helper"
)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gatehouse_control::app::{AppState, router};
use gatehouse_control::clock::ManualClock;
use gatehouse_control::config::Config;
use gatehouse_control::store::sqlite::SqliteStore;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

pub const ADMIN: &str = "admin-token-for-tests-0001";
pub const FEED: &str = "feed-token-for-tests-0001";
/// 2026-01-01T00:00:00Z
pub const T0: u64 = 1_767_225_600;

pub struct Svc {
    pub app: Router,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

pub async fn svc() -> Svc {
    svc_with(|_| {}).await
}

pub async fn svc_with(tweak: impl FnOnce(&mut Config)) -> Svc {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("control.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    let mut config = Config::with_tokens(ADMIN, FEED);
    config.database_url = url;
    tweak(&mut config);
    let clock = Arc::new(ManualClock::at_secs(T0));
    let state = AppState::new(Arc::new(store), config, clock.clone())
        .await
        .unwrap();
    Svc {
        app: router(state.clone()),
        state,
        clock,
        dir,
    }
}

pub fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("x-request-id", "test-req-1");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

impl Svc {
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        send(&self.app, request(method, path, Some(ADMIN), body.as_ref())).await
    }

    pub async fn feed(&self, query: &str) -> (StatusCode, Value) {
        send(
            &self.app,
            request(Method::GET, &format!("/v1/cache?{query}"), Some(FEED), None),
        )
        .await
    }

    /// Issues a key for `user`; returns the whole 201 body.
    pub async fn issue(&self, user: &str) -> Value {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/keys",
                Some(serde_json::json!({
                    "user_id": user, "tenant_id": "tenant_1", "plan": "team",
                    "device_name": "laptop"
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

/// Asserts the standard error shape and returns its code.
pub fn error_code(body: &Value) -> String {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "error", "request_id", "timestamp"], "{body}");
    assert!(body["error"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    body["code"].as_str().unwrap().to_string()
}
