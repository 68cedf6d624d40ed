//! The bulk import of hashed keys, `POST /v1/keys/import` through the real router and
//! `gatehouse-control import` as a real process, over the selected backend's database
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

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{ADMIN, FEED, Svc, T0, TestDb, error_code, send, svc, svc_with};
use gatehouse_control::keys::draw_key;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const NDJSON: &str = "application/x-ndjson";

/// A key as another gateway would hand it over: the secret the client holds, and the
/// SHA-256 the import gets.
struct Legacy {
    secret: String,
    sha256: String,
}

fn legacy_keys(n: usize) -> Vec<Legacy> {
    (0..n)
        .map(|_| {
            let k = draw_key("ghk").unwrap();
            Legacy {
                secret: k.secret,
                sha256: k.sha256,
            }
        })
        .collect()
}

/// One line for `k`, owned by `user`.
fn line(k: &Legacy, user: &str) -> String {
    json!({"sha256": k.sha256, "user_id": user, "tenant_id": "acme", "plan": "team"}).to_string()
}

fn file_of(keys: &[Legacy]) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, k)| line(k, &format!("user_{}", i % 50)) + "\n")
        .collect()
}

fn import_request(token: Option<&str>, content_type: Option<&str>, body: Body) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri("/v1/keys/import")
        .header("x-request-id", "import-req-1");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body).unwrap()
}

/// Imports `body` with the admin token; returns the status, the body and its raw text.
async fn import(s: &Svc, body: impl Into<Body>) -> (StatusCode, Value, String) {
    let res = s
        .app
        .clone()
        .oneshot(import_request(Some(ADMIN), Some(NDJSON), body.into()))
        .await
        .unwrap();
    let status = res.status();
    let raw = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(raw.to_vec()).unwrap();
    (status, serde_json::from_str(&text).unwrap(), text)
}

async fn version(s: &Svc) -> i64 {
    s.state.store.version().await.unwrap()
}

/// Keys in the feed's answer to `query`.
async fn feed_keys(s: &Svc, query: &str) -> Vec<Value> {
    let (status, page) = s.feed(query).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["keys"].as_array().unwrap().clone()
}

/// What `/v1/authz` (no policy: the key alone) answers for `secret`, and the key id it
/// names.
async fn authz(s: &Svc, secret: &str) -> (StatusCode, Option<String>) {
    let req = Request::builder()
        .uri("/v1/authz/v1/things")
        .header("x-control-token", FEED)
        .header("x-api-key", secret)
        .body(Body::empty())
        .unwrap();
    let res = s.app.clone().oneshot(req).await.unwrap();
    let id = res
        .headers()
        .get("x-gatehouse-key-id")
        .map(|v| v.to_str().unwrap().to_string());
    (res.status(), id)
}

#[tokio::test]
async fn a_few_thousand_keys_arrive_in_the_feed_in_versions_of_at_most_a_thousand() {
    let s = svc().await;
    s.issue("user_0").await;
    let before = version(&s).await;
    let keys = legacy_keys(2500);
    let (status, summary, _) = import(&s, file_of(&keys)).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(
        summary,
        json!({"imported": 2500, "skipped": 0, "failed": 0, "errors": []})
    );
    // Three batches: three versions, three audit events.
    let after = version(&s).await;
    assert_eq!(after, before + 3);
    let mut per_version = Vec::new();
    for v in before..after {
        let newer = feed_keys(&s, &format!("since={v}")).await.len();
        let newest = feed_keys(&s, &format!("since={}", v + 1)).await.len();
        per_version.push(newer - newest);
    }
    assert_eq!(per_version, [1000, 1000, 500]);
    assert!(per_version.iter().all(|n| *n <= 1000));

    // Every key is in the snapshot, as issued keys are.
    let snapshot = feed_keys(&s, "since=0").await;
    assert_eq!(snapshot.len(), 2501);
    let k = snapshot
        .iter()
        .find(|k| k["sha256"] == keys[7].sha256)
        .unwrap();
    assert_eq!(k["user"], "user_7");
    assert_eq!(k["tenant"], "acme");
    assert_eq!(k["plan"], "team");
    assert_eq!(k["active"], true);
    assert_eq!(k["expires_at"], Value::Null);
    assert_eq!(k["scopes"], json!([]));
    let id = k["key_id"].as_str().unwrap();
    assert!(id.starts_with("key_") && id.len() == 20, "{id}");

    // The clients' keys work, each as its own key.
    for k in keys.iter().step_by(499) {
        let (status, id) = authz(&s, &k.secret).await;
        assert_eq!(status, StatusCode::OK);
        assert!(id.is_some());
    }

    let (_, audit) = s.admin(Method::GET, "/v1/audit?limit=3", None).await;
    let events: Vec<(&str, &str, &str)> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("key.import", "500 keys", "admin"),
            ("key.import", "1000 keys", "admin"),
            ("key.import", "1000 keys", "admin"),
        ]
    );
    assert_eq!(audit["events"][0]["request_id"], "import-req-1");
}

#[tokio::test]
async fn each_committed_batch_wakes_a_waiting_long_poll() {
    let s = svc().await;
    let since = version(&s).await;
    let app = s.app.clone();
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let req = common::request(
            Method::GET,
            &format!("/v1/cache?since={since}&wait=30"),
            Some(FEED),
            None,
        );
        let answer = send(&app, req).await;
        (answer, started.elapsed())
    });
    // The poll is waiting before the import starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = import(&s, file_of(&legacy_keys(10))).await;
    assert_eq!(status, StatusCode::OK);
    let ((status, page), waited) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
    assert_eq!(page["version"], since + 1);
    assert_eq!(page["keys"].as_array().unwrap().len(), 10);
}

/// What a team migrating from another gateway runs: the proxies' policy takes keys of
/// any shape (`api_key.format: opaque`), and `/v1/authz` decides with it.
const OPAQUE_POLICY: &str = r#"
version: 1
api_key: { header: x-api-key, format: opaque }
routes:
  - name: billing
    match: { path_prefix: /v1/billing/ }
    group: billing
  - name: api
    match: { path_prefix: /v1/ }
"#;

#[tokio::test]
async fn keys_of_another_gateways_format_work_where_the_policy_takes_opaque_keys() {
    let policy = gatehouse_core::policy::load_yaml("opaque.yaml", OPAQUE_POLICY).unwrap();
    let policy = std::sync::Arc::new(policy.policy);
    let s = svc_with(move |c| c.policy = Some(policy)).await;
    let everywhere = "sk_live_51Hx9aQ2eZvKYlo2C0legacy0001";
    let billing_only = "AKIAlegacy-gw-key/0002+x";
    let hash = |k: &str| gatehouse_core::authn::api_key::KeyHash::of_key(k.as_bytes()).to_hex();
    let body = format!(
        "{}\n{}\n",
        json!({"sha256": hash(everywhere), "user_id": "user_1", "tenant_id": "acme",
               "plan": "team", "key_id": "legacy-1"}),
        json!({"sha256": hash(billing_only), "user_id": "user_2", "tenant_id": "acme",
               "plan": "free", "scopes": ["billing"]}),
    );
    let (_, summary, _) = import(&s, body).await;
    assert_eq!(summary["imported"], 2, "{summary}");
    let ask = |path: &str, key: &str| {
        Request::builder()
            .uri(format!("/v1/authz{path}"))
            .header("x-control-token", FEED)
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap()
    };
    let res = s
        .app
        .clone()
        .oneshot(ask("/v1/things", everywhere))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = |name: &str| res.headers()[name].to_str().unwrap().to_string();
    assert_eq!(h("x-gatehouse-user"), "user_1");
    assert_eq!(h("x-gatehouse-tenant"), "acme");
    assert_eq!(h("x-gatehouse-plan"), "team");
    assert_eq!(h("x-gatehouse-key-id"), "legacy-1");
    for (path, key, want) in [
        ("/v1/billing/invoices", billing_only, StatusCode::OK),
        ("/v1/things", billing_only, StatusCode::FORBIDDEN),
        (
            "/v1/things",
            "sk_live_never_imported",
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let (status, resp) = send(&s.app, ask(path, key)).await;
        assert_eq!(status, want, "{path} {key}: {resp}");
    }
}

#[tokio::test]
async fn a_second_run_skips_every_key_and_changes_nothing() {
    let s = svc().await;
    let keys = legacy_keys(1200);
    let file = file_of(&keys);
    let (_, first, _) = import(&s, file.clone()).await;
    assert_eq!(first["imported"], 1200);
    let v = version(&s).await;
    let (_, audit_before) = s.admin(Method::GET, "/v1/audit", None).await;
    let (status, again, _) = import(&s, file).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again,
        json!({"imported": 0, "skipped": 1200, "failed": 0, "errors": []})
    );
    // No version, no audit event: nothing changed.
    assert_eq!(version(&s).await, v);
    let (_, audit_after) = s.admin(Method::GET, "/v1/audit", None).await;
    assert_eq!(audit_before, audit_after);
}

#[tokio::test]
async fn a_stored_key_is_never_changed_by_an_import_nor_brought_back() {
    let s = svc().await;
    let issued = s.issue("user_1").await;
    let revoked = s.issue("user_2").await;
    let id = revoked["id"].as_str().unwrap();
    let (status, _) = s
        .admin(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let v = version(&s).await;
    let hash = |k: &Value| {
        gatehouse_core::authn::api_key::KeyHash::of_key(k["api_key"].as_str().unwrap().as_bytes())
            .to_hex()
    };
    let body = [&issued, &revoked]
        .iter()
        .map(|k| {
            json!({"sha256": hash(k), "user_id": "intruder", "tenant_id": "other",
                   "plan": "enterprise", "key_id": "hijack", "scopes": ["admin"]})
            .to_string()
                + "\n"
        })
        .collect::<String>();
    let (status, summary, _) = import(&s, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        summary,
        json!({"imported": 0, "skipped": 2, "failed": 0, "errors": []})
    );
    assert_eq!(version(&s).await, v);
    for (k, user, state) in [
        (&issued, "user_1", "active"),
        (&revoked, "user_2", "revoked"),
    ] {
        let (_, shown) = s
            .admin(
                Method::GET,
                &format!("/v1/keys/{}", k["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(shown["user_id"], user);
        assert_eq!(shown["plan"], "team");
        assert_eq!(shown["status"], state);
    }
    let (status, _) = authz(&s, revoked["api_key"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_lines_are_reported_by_number_and_every_other_line_is_imported() {
    let s = svc().await;
    let k = legacy_keys(8);
    let secret_looking = "ghk_Zx9Qp2Lm7Rw8Tb4Kc1Yv6Nd5Hs2Ja9Q0wE";
    let mut with_plaintext: Value = serde_json::from_str(&line(&k[3], "user_3")).unwrap();
    with_plaintext["api_key"] = json!(secret_looking);
    let lines = [
        /* 1 */ line(&k[0], "user_0"),
        /* 2 */ String::new(),
        /* 3 */ line(&k[1], "user_1").replace(&k[1].sha256, &k[1].sha256.to_uppercase()),
        /* 4 */ line(&k[2], "user_2") + "\r",
        /* 5 */ format!("not json {secret_looking}"),
        /* 6 */ with_plaintext.to_string(),
        /* 7 */
        json!({"sha256": k[4].sha256, "user_id": "user_4", "tenant_id": "acme",
               "plan": "free", "key_id": "legacy-1", "device_name": "old gateway",
               "scopes": ["orders"], "expires_at": "2026-06-01T00:00:00Z"})
        .to_string(),
        /* 8 */ line(&k[5], "user_5").replace("\"team\"", "\"platinum\""),
        /* 9 */
        json!({"sha256": k[6].sha256, "user_id": "u", "tenant_id": "t", "plan": "free",
               "expires_at": "2025-12-31T00:00:00Z"})
        .to_string(),
        /* 10 */ format!("{{\"device_name\": \"{}\"}}", "x".repeat(9000)),
        /* 11 */ json!({"key": secret_looking, "user_id": "u"}).to_string(),
        /* 12 */ line(&k[0], "someone_else"),
        /* 13 */
        json!({"sha256": k[7].sha256, "user_id": "u", "tenant_id": "t", "plan": "free",
               "key_id": "legacy-1"})
        .to_string(),
        /* 14 */ "  \t ".to_string(),
        /* 15 */ line(&k[3], "user_3"),
    ];
    // No newline after the last line.
    let body = lines.join("\n");
    let (status, summary, text) = import(&s, body).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["imported"], 4, "{summary}");
    assert_eq!(summary["skipped"], 1, "{summary}");
    assert_eq!(summary["failed"], 8, "{summary}");
    let errors: Vec<(u64, &str)> = summary["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["error"].as_str().unwrap()))
        .collect();
    let lines_refused: Vec<u64> = errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines_refused, [3, 5, 6, 8, 9, 10, 11, 13]);
    for ((_, error), names) in errors.iter().zip([
        "sha256 must be 64 lower-case hex digits",
        "a line must be one JSON object",
        "a field that may hold a plaintext key",
        "plan must be one of [free, solo, team, enterprise]",
        "expires_at must be",
        "longer than 8192 bytes",
        "a field that may hold a plaintext key",
        "key_id is another key's already",
    ]) {
        assert!(error.contains(names), "{error}");
    }
    // Nothing the client sent comes back: not a value, not a hash.
    assert!(!text.contains("ghk_"), "{text}");
    for key in &k {
        assert!(!text.contains(&key.sha256) && !text.contains(&key.sha256.to_uppercase()));
    }

    // The good lines are keys, in the feed and at the door.
    let snapshot = feed_keys(&s, "since=0").await;
    assert_eq!(snapshot.len(), 4);
    for good in [&k[0], &k[2], &k[3]] {
        assert_eq!(authz(&s, &good.secret).await.0, StatusCode::OK);
    }
    // Known, and scoped: without a policy, `/v1/authz` cannot tell a route's scope.
    assert_eq!(authz(&s, &k[4].secret).await.0, StatusCode::FORBIDDEN);
    for bad in [&k[1], &k[5], &k[6], &k[7]] {
        assert_eq!(authz(&s, &bad.secret).await.0, StatusCode::UNAUTHORIZED);
    }
    let kept = snapshot.iter().find(|f| f["key_id"] == "legacy-1").unwrap();
    assert_eq!(kept["sha256"], k[4].sha256);
    assert_eq!(kept["plan"], "free");
    assert_eq!(kept["scopes"], json!(["orders"]));
    assert_eq!(kept["expires_at"], T0 + 151 * 86_400);
    let (_, shown) = s.admin(Method::GET, "/v1/keys/legacy-1", None).await;
    assert_eq!(shown["device_name"], "old gateway");
    let first = snapshot
        .iter()
        .find(|f| f["sha256"] == k[0].sha256)
        .unwrap();
    assert_eq!(first["user"], "user_0", "line 12 changed nothing");
}

#[tokio::test]
async fn the_errors_listed_stop_at_a_thousand_and_failed_counts_them_all() {
    let s = svc().await;
    let keys = legacy_keys(3);
    let mut body = String::new();
    for i in 0..1500 {
        body.push_str(&format!("{{\"sha256\": \"{i}\"}}\n"));
    }
    body.push_str(&file_of(&keys));
    let (status, summary, _) = import(&s, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary["imported"], 3);
    assert_eq!(summary["failed"], 1500);
    let errors = summary["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1000);
    assert_eq!(errors[0]["line"], 1);
    assert_eq!(errors[999]["line"], 1000);
}

#[tokio::test]
async fn imports_are_not_held_to_the_per_user_key_limit() {
    let s = svc_with(|c| c.max_keys_per_user = 2).await;
    let keys = legacy_keys(5);
    let body: String = keys.iter().map(|k| line(k, "user_1") + "\n").collect();
    let (_, summary, _) = import(&s, body).await;
    assert_eq!(summary["imported"], 5, "{summary}");
    // They still count: the user cannot be issued a sixth.
    let (status, resp) = s
        .admin(
            Method::POST,
            "/v1/keys",
            Some(
                json!({"user_id": "user_1", "tenant_id": "acme", "plan": "team",
                        "device_name": "laptop"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&resp), "KEY_LIMIT_REACHED");
}

#[tokio::test]
async fn a_body_larger_than_other_routes_take_is_read() {
    let s = svc().await;
    let file = file_of(&legacy_keys(600));
    assert!(file.len() > 64 * 1024, "{}", file.len());
    let (status, summary, _) = import(&s, file).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["imported"], 600);
}

#[tokio::test]
async fn only_the_admin_token_may_import() {
    let s = svc().await;
    let v = version(&s).await;
    for token in [None, Some(FEED), Some("not-a-token-at-all-0000")] {
        let file = file_of(&legacy_keys(2));
        let (status, resp) = send(&s.app, import_request(token, Some(NDJSON), file.into())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {resp}");
        assert_eq!(error_code(&resp), "UNAUTHORIZED");
    }
    assert_eq!(version(&s).await, v);
}

#[tokio::test]
async fn a_body_that_is_not_ndjson_is_415() {
    let s = svc().await;
    let file = file_of(&legacy_keys(2));
    for ct in [
        None,
        Some("application/json"),
        Some("text/plain"),
        Some("application/x-ndjson-seq"),
    ] {
        let (status, resp) =
            send(&s.app, import_request(Some(ADMIN), ct, file.clone().into())).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}: {resp}");
        assert_eq!(error_code(&resp), "UNSUPPORTED_MEDIA_TYPE");
        assert!(resp["error"].as_str().unwrap().contains(NDJSON), "{resp}");
    }
    assert_eq!(version(&s).await, 0);
    let req = import_request(
        Some(ADMIN),
        Some("application/x-ndjson; charset=utf-8"),
        file.into(),
    );
    let (status, resp) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["imported"], 2);
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_413_before_anything_is_read() {
    let s = svc().await;
    let mut req = import_request(Some(ADMIN), Some(NDJSON), file_of(&legacy_keys(2)).into());
    req.headers_mut().insert(
        "content-length",
        ((1u64 << 30) + 1).to_string().parse().unwrap(),
    );
    let (status, resp) = send(&s.app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert_eq!(error_code(&resp), "PAYLOAD_TOO_LARGE");
    assert_eq!(version(&s).await, 0);
}

// The command line.

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse-control"));
    for var in [
        "GATEHOUSE_DATABASE_URL",
        "GATEHOUSE_POLICY",
        "GATEHOUSE_PLANS",
        "GATEHOUSE_ADMIN_TOKEN",
        "GATEHOUSE_FEED_TOKEN",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs `gatehouse-control import ARGS` with `stdin`; returns the exit code, stdout and
/// stderr.
fn run_import(args: &[&str], url: Option<&str>, stdin: &str) -> (i32, String, String) {
    let mut cmd = bin();
    cmd.arg("import").args(args);
    if let Some(u) = url {
        cmd.env("GATEHOUSE_DATABASE_URL", u);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn the_command_line_imports_a_file_in_batches_and_a_rerun_from_stdin_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let keys = legacy_keys(1200);
    let mut file = file_of(&keys);
    file.push_str("{\"sha256\": \"short\", \"user_id\": \"u\"}\n");
    let path = dir.path().join("keys.ndjson");
    std::fs::write(&path, &file).unwrap();

    let (code, out, err) = run_import(&[path.to_str().unwrap()], Some(db.url()), "");
    assert_eq!(code, 1, "a refused line: exit 1\n{out}\n{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["imported"], 1200, "{summary}");
    assert_eq!(summary["skipped"], 0);
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["errors"][0]["line"], 1201);
    assert!(
        summary["errors"][0]["error"]
            .as_str()
            .unwrap()
            .starts_with("sha256 must be")
    );
    assert!(!out.contains(&keys[0].sha256) && !err.contains(&keys[0].sha256));

    let store = gatehouse_control::store::open(db.url()).await.unwrap();
    assert_eq!(
        store.version().await.unwrap(),
        2,
        "two batches, two versions"
    );
    let k = store
        .find_key_by_hash(&keys[99].sha256)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((k.user_id.as_str(), k.plan.as_str()), ("user_49", "team"));
    // A transaction's keys go in in hash order: the 1,000 smallest hashes are batch 1.
    let mut sorted: Vec<&str> = keys.iter().map(|k| k.sha256.as_str()).collect();
    sorted.sort_unstable();
    let in_first = keys[99].sha256.as_str() <= sorted[999];
    assert_eq!(k.version, if in_first { 1 } else { 2 });
    let audit = store.audit(10, None).await.unwrap();
    let events: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            ("cli", "key.import", "200 keys"),
            ("cli", "key.import", "1000 keys")
        ]
    );
    assert!(audit[0].request_id.starts_with("import-"));
    drop(store);

    // Again, from standard input, only the good lines: all skipped, exit 0.
    let good = file_of(&keys);
    let (code, out, err) = run_import(&["-"], Some(db.url()), &good);
    assert_eq!(code, 0, "{out}\n{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        summary,
        json!({"imported": 0, "skipped": 1200, "failed": 0, "errors": []})
    );
    let store = gatehouse_control::store::open(db.url()).await.unwrap();
    assert_eq!(store.version().await.unwrap(), 2);
}

#[test]
fn the_command_line_checks_plans_as_the_service_does_and_fails_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let keys = legacy_keys(1);
    let mut cmd = bin();
    cmd.args(["import", "-", "--database-url", db.url()])
        .env("GATEHOUSE_PLANS", "gold")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(file_of(&keys).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["errors"][0]["error"], "plan must be one of [gold]");

    let (code, _, err) = run_import(&["-"], None, "");
    assert_eq!(code, 2);
    assert!(err.contains("GATEHOUSE_DATABASE_URL"), "{err}");
    let missing = dir.path().join("nope.ndjson");
    let (code, _, err) = run_import(&[missing.to_str().unwrap()], Some(db.url()), "");
    assert_eq!(code, 2);
    assert!(err.contains("nope.ndjson"), "{err}");
    let (code, _, err) = run_import(&[], Some(db.url()), "");
    assert_eq!(code, 2);
    assert!(err.contains("usage:"), "{err}");
}

#[tokio::test]
async fn the_openapi_document_states_the_rules_these_tests_check() {
    let s = svc().await;
    let (status, doc) = s.admin(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let op = &doc["paths"]["/v1/keys/import"]["post"];
    assert_eq!(op["security"], json!([{"adminToken": []}]));
    let body = op["requestBody"]["content"].as_object().unwrap();
    assert_eq!(body.keys().collect::<Vec<_>>(), [NDJSON]);
    for code in ["200", "400", "401", "413", "415"] {
        assert!(op["responses"][code].is_object(), "{code}");
    }
    let summary = &doc["components"]["schemas"]["ImportSummary"]["properties"];
    assert_eq!(
        summary["errors"]["maxItems"],
        gatehouse_control::import::MAX_LISTED_ERRORS
    );
    let line = &doc["components"]["schemas"]["ImportLine"];
    assert_eq!(line["additionalProperties"], false);
    assert_eq!(
        line["required"],
        json!(["sha256", "user_id", "tenant_id", "plan"])
    );
    let description = op["description"].as_str().unwrap();
    for rule in ["8 KiB", "1 GiB", "at most 1000", "not changed"] {
        assert!(description.contains(rule), "{rule}: {description}");
    }
}
