//! Shared fixtures: the real router over a real database, with a clock the test moves by
//! hand. The database is a SQLite file in a temp dir, or, with
//! `GATEHOUSE_TEST_DATABASE=postgres`, a fresh database in a PostgreSQL cluster the tests
//! start themselves (`pg_cluster.rs`): the same test files run against both backends.
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
use gatehouse_control::config::DatabaseUrl;
use gatehouse_control::store::Store;
use gatehouse_control::store::postgres::PostgresStore;
use gatehouse_control::store::sqlite::SqliteStore;
use http_body_util::BodyExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tower::ServiceExt;

pub mod pg_cluster;
pub mod redis_server;

/// Fixture tokens, as strong as `serve` requires (`config::token_problem`).
pub const ADMIN: &str = "admin-token-for-tests-3f9a1c7e5b20d846";
pub const FEED: &str = "feed-token-for-tests-8c4e2a6f0d97b135";
/// 2026-01-01T00:00:00Z
pub const T0: u64 = 1_767_225_600;

/// The backend the tests run against: `GATEHOUSE_TEST_DATABASE` = `sqlite` (the default)
/// or `postgres`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("GATEHOUSE_TEST_DATABASE").as_deref() {
        Err(_) | Ok("" | "sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("GATEHOUSE_TEST_DATABASE must be sqlite or postgres, got {other:?}"),
    }
}

/// A fresh, empty database for one test, of the selected backend.
pub enum TestDb {
    /// A file not made yet: the store creates it.
    Sqlite {
        path: PathBuf,
        url: String,
    },
    Postgres(pg_cluster::Database),
}

impl TestDb {
    /// A SQLite file in `dir`, or a new database in this binary's PostgreSQL cluster.
    pub fn fresh(dir: &Path) -> TestDb {
        match backend() {
            Backend::Sqlite => {
                let path = dir.join("control.db");
                let url = format!("sqlite://{}", path.display());
                TestDb::Sqlite { path, url }
            }
            Backend::Postgres => TestDb::Postgres(pg_cluster::cluster().create_database()),
        }
    }

    /// The URL the service is given, password included.
    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } => url,
            TestDb::Postgres(db) => &db.url,
        }
    }

    /// Everything stored, as bytes: the SQLite file and its WAL, or a `pg_dump`.
    pub fn raw_contents(&self) -> Vec<Vec<u8>> {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                vec![
                    std::fs::read(path).unwrap(),
                    std::fs::read(wal).unwrap_or_default(),
                ]
            }
            TestDb::Postgres(db) => vec![db.dump()],
        }
    }
}

pub struct Svc {
    pub app: Router,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    /// PostgreSQL only: the store's pool, to see how many connections the test used.
    pub pg_pool: Option<sqlx::PgPool>,
    /// Last: dropped (a PostgreSQL database with it) once the service is gone.
    pub db: TestDb,
}

pub async fn svc() -> Svc {
    svc_with(|_| {}).await
}

pub async fn svc_with(tweak: impl FnOnce(&mut Config)) -> Svc {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let (store, pg_pool): (Arc<dyn Store>, _) = match &db {
        TestDb::Sqlite { url, .. } => (Arc::new(SqliteStore::open(url).await.unwrap()), None),
        TestDb::Postgres(pg) => {
            let store = PostgresStore::open(&pg.url).await.unwrap();
            let pool = store.pool().clone();
            (Arc::new(store), Some(pool))
        }
    };
    let mut config = Config::with_tokens(ADMIN, FEED);
    config.database_url = DatabaseUrl::new(db.url()).unwrap();
    tweak(&mut config);
    let clock = Arc::new(ManualClock::at_secs(T0));
    let state = AppState::new(store, config, clock.clone()).await.unwrap();
    Svc {
        app: router(state.clone()),
        state,
        clock,
        dir,
        pg_pool,
        db,
    }
}

/// A second replica of a service: its own store (own pools) on the same database, the
/// same settings and clock, and its own router and long-poll channel.
pub struct Replica {
    pub app: Router,
    pub state: AppState,
}

impl Svc {
    /// Another replica on this service's database.
    pub async fn replica(&self) -> Replica {
        let store = gatehouse_control::store::open(self.db.url()).await.unwrap();
        let config = (*self.state.config).clone();
        let state = AppState::new(store, config, self.clock.clone())
            .await
            .unwrap();
        Replica {
            app: router(state.clone()),
            state,
        }
    }

    /// Starts following the changes other replicas commit (`follow.rs`), as `serve`
    /// does; stopped with the returned guard.
    pub fn follow(&self) -> Following {
        Following(gatehouse_control::follow::spawn(self.state.clone()))
    }
}

impl Replica {
    pub fn follow(&self) -> Following {
        Following(gatehouse_control::follow::spawn(self.state.clone()))
    }

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
}

/// A running follower task, aborted on drop.
pub struct Following(tokio::task::JoinHandle<()>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
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
    /// PostgreSQL only: opens `n` pooled connections up front, so that a burst of
    /// requests runs side by side at once instead of trickling in while the pool opens
    /// connections one by one.
    pub async fn warm_pool(&self, n: usize) {
        if let Some(pool) = &self.pg_pool {
            let mut held = Vec::new();
            for _ in 0..n {
                held.push(pool.acquire().await.unwrap());
            }
        }
    }

    /// Starts watching how many pooled connections are in use at once (PostgreSQL only;
    /// SQLite's writer is one connection by design).
    pub fn watch_pool(&self) -> PoolWatch {
        PoolWatch(self.pg_pool.clone().map(|pool| {
            let done = Arc::new(AtomicBool::new(false));
            let stop = done.clone();
            let peak = tokio::spawn(async move {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max((pool.size() as usize).saturating_sub(pool.num_idle()));
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                peak
            });
            (done, peak)
        }))
    }

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

/// See [`Svc::watch_pool`].
pub struct PoolWatch(Option<(Arc<AtomicBool>, tokio::task::JoinHandle<usize>)>);

impl PoolWatch {
    /// Asserts that more than one connection was in use at some moment since the watch
    /// began: the requests in between really ran side by side against the database.
    pub async fn assert_overlapped(self) {
        if let Some((done, peak)) = self.0 {
            done.store(true, Ordering::Relaxed);
            let peak = peak.await.unwrap();
            assert!(
                peak > 1,
                "the concurrent requests ran one at a time (at most {peak} connection in use)"
            );
        }
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
