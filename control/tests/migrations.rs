//! A database made before the events migration (`0002_events.sql`) is upgraded in place
//! when the service opens it: its changes read as `kind: "change"`, its keys have no
//! `last_used` yet, reports are taken, and levers (`0006_levers.sql`) can be set. On the
//! selected backend (see `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests: a failure panics"
)]

mod common;

use axum::http::{Method, StatusCode};
use common::{ADMIN, FEED, T0, TestDb, request, send};
use gatehouse_control::app::{AppState, router};
use gatehouse_control::clock::ManualClock;
use gatehouse_control::config::Config;
use gatehouse_control::store::Store;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// Applies only the first migration of `backend`'s folder, as a database made by the
/// previous release has it.
async fn migrate_first_only(db: &TestDb, backend: &str, dir: &Path) {
    let first = dir.join("first");
    std::fs::create_dir(&first).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend)
        .join("0001_init.sql");
    std::fs::copy(source, first.join("0001_init.sql")).unwrap();
    let migrator = sqlx::migrate::Migrator::new(first.as_path()).await.unwrap();
    let seed = [
        "INSERT INTO meta (id, seq, epoch, purged_through) VALUES (1, 1, 'oldepoch', 0)",
        "INSERT INTO audit_events (at, actor, action, target, request_id, client, version) \
         VALUES (1767225600, 'admin', 'key.create', 'key_old', 'req-old', NULL, 1)",
    ];
    match db {
        TestDb::Sqlite { url, .. } => {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
            let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true))
                .await
                .unwrap();
            migrator.run(&pool).await.unwrap();
            for sql in seed {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            sqlx::query(
                "INSERT INTO api_keys (id, sha256, user_id, tenant_id, plan, device_name, \
                 scopes, created_at, expires_at, revoked_at, active, replaced_by, version) \
                 VALUES ('key_old', 'aa', 'user_1', 't', 'team', 'd', '[]', 1767225600, \
                 NULL, NULL, 1, NULL, 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        TestDb::Postgres(pg) => {
            let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            for sql in seed {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            sqlx::query(
                "INSERT INTO api_keys (id, sha256, user_id, tenant_id, plan, device_name, \
                 scopes, created_at, expires_at, revoked_at, active, replaced_by, version) \
                 VALUES ('key_old', 'aa', 'user_1', 't', 'team', 'd', '{}', 1767225600, \
                 NULL, NULL, TRUE, NULL, 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
}

#[tokio::test]
async fn a_database_of_the_previous_release_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let backend = match common::backend() {
        common::Backend::Sqlite => "sqlite",
        common::Backend::Postgres => "postgres",
    };
    migrate_first_only(&db, backend, dir.path()).await;

    let store: Arc<dyn Store> = gatehouse_control::store::open(db.url()).await.unwrap();
    let state = AppState::new(
        store,
        Config::with_tokens(ADMIN, FEED),
        Arc::new(ManualClock::at_secs(T0)),
    )
    .await
    .unwrap();
    let app = router(state);

    let (status, audit) = send(&app, request(Method::GET, "/v1/audit", Some(ADMIN), None)).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert_eq!(audit["events"][0]["kind"], "change");
    assert_eq!(audit["events"][0]["target"], "key_old");
    let (_, key) = send(
        &app,
        request(Method::GET, "/v1/keys/key_old", Some(ADMIN), None),
    )
    .await;
    assert_eq!(key["last_used"], serde_json::Value::Null);

    let (status, accepted) = send(
        &app,
        request(
            Method::POST,
            "/v1/events",
            Some(FEED),
            Some(&json!({"key_uses": [{"key_id": "key_old", "at": T0}],
                         "refusals": [{"at": T0, "request_id": "r", "method": "GET",
                                       "route": "/x", "code": "FORBIDDEN", "status": 403}]})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["accepted"]["key_uses"], 1);
    let (_, key) = send(
        &app,
        request(Method::GET, "/v1/keys/key_old", Some(ADMIN), None),
    )
    .await;
    assert_eq!(key["last_used"], "2026-01-01T00:00:00.000Z");
    let (_, refusals) = send(
        &app,
        request(Method::GET, "/v1/audit?kind=refusal", Some(ADMIN), None),
    )
    .await;
    assert_eq!(refusals["events"][0]["version"], 1);

    // The levers (migration 0006): none yet, then set, audited and fed.
    let (_, snap) = send(
        &app,
        request(Method::GET, "/v1/cache?since=0", Some(FEED), None),
    )
    .await;
    assert_eq!(
        snap["levers"],
        json!({"overrides": [], "modes": [], "allowlist": []})
    );
    let (status, _) = send(
        &app,
        request(
            Method::PUT,
            "/v1/keys/key_old/limits",
            Some(ADMIN),
            Some(&json!({"requests_per_minute": 100, "reason": "after the upgrade"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, delta) = send(
        &app,
        request(Method::GET, "/v1/cache?since=1", Some(FEED), None),
    )
    .await;
    assert_eq!(delta["version"], 2);
    assert_eq!(delta["levers"]["overrides"][0]["id"], "key_old");
    let (_, levers) = send(
        &app,
        request(Method::GET, "/v1/audit?kind=lever", Some(ADMIN), None),
    )
    .await;
    assert_eq!(levers["events"][0]["reason"], "after the upgrade");
}
