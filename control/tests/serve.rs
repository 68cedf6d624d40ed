//! `gatehouse-control serve` as a real process on a real socket, over the selected
//! backend's database (see `common`), and its start-up failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests: a failure panics; wall-clock timeouts bound real waits"
)]

mod common;

use common::TestDb;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-for-serve-test-9b3d7f1a5c2e";
const FEED: &str = "feed-token-for-serve-test-6a0c4e8b2d7f";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse-control"));
    for var in [
        "GATEHOUSE_ADMIN_TOKEN",
        "GATEHOUSE_FEED_TOKEN",
        "GATEHOUSE_CONTROL_LISTEN",
        "GATEHOUSE_DATABASE_URL",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn serve_fails_fast_naming_the_missing_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let started = Instant::now();
    let out = bin()
        .args([
            "serve",
            "--database-url",
            &format!("sqlite://{}", db.display()),
        ])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("GATEHOUSE_ADMIN_TOKEN is not set"), "{err}");
    assert!(err.contains("GATEHOUSE_FEED_TOKEN is not set"), "{err}");
    // Nothing was opened.
    assert!(!db.exists());

    let out = bin()
        .arg("serve")
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("GATEHOUSE_ADMIN_TOKEN is not set"), "{err}");
    assert!(err.contains("GATEHOUSE_FEED_TOKEN is not set"), "{err}");
    assert!(!err.contains(ADMIN), "a token was printed: {err}");
}

#[test]
fn serve_refuses_a_weak_token_and_says_how_to_make_one() {
    let weak = "changeme-changeme-changeme-changeme";
    for (admin, feed) in [(weak, FEED), (ADMIN, "feed-token-0123456789")] {
        let out = bin()
            .arg("serve")
            .env("GATEHOUSE_ADMIN_TOKEN", admin)
            .env("GATEHOUSE_FEED_TOKEN", feed)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        let name = if admin == weak {
            "GATEHOUSE_ADMIN_TOKEN must"
        } else {
            "GATEHOUSE_FEED_TOKEN must"
        };
        assert!(err.contains(name), "{err}");
        assert!(err.contains("gatehouse-control new-token"), "{err}");
        assert!(
            !err.contains(admin) && !err.contains(feed),
            "a token was printed: {err}"
        );
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let s = send_request(port, method, path, token, &[], body);
    read_answer(s)
}

/// Sends one HTTP/1.1 request with `headers` besides the token's; returns the connection
/// to read the answer from.
fn send_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// The (status, body) of the answer on `s`.
fn read_answer(mut s: TcpStream) -> (u16, String) {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_on_a_real_socket_and_records_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let port = free_port();
    let child = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .env("GATEHOUSE_FEED_TOKEN", FEED)
        .env("GATEHOUSE_DATABASE_URL", db.url())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    if let TestDb::Sqlite { path, .. } = &db {
        assert!(path.exists(), "the database is created on first start");
    }
    assert_eq!(http(port, "GET", "/readyz", None, None).0, 200);
    let (status, body) = http(
        port,
        "POST",
        "/v1/keys",
        Some(ADMIN),
        Some(r#"{"user_id":"u1","tenant_id":"t1","plan":"team","device_name":"ci"}"#),
    );
    assert_eq!(status, 201, "{body}");
    let key: Value = serde_json::from_str(&body).unwrap();
    let secret = key["api_key"].as_str().unwrap().to_string();
    let (status, body) = http(port, "GET", "/v1/audit", Some(ADMIN), None);
    assert_eq!(status, 200);
    let audit: Value = serde_json::from_str(&body).unwrap();
    let client = audit["events"][0]["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    let (status, body) = http(port, "GET", "/v1/cache?since=0", Some(FEED), None);
    assert_eq!(status, 200);
    assert!(body.contains(key["id"].as_str().unwrap()));
    // A wrong token is refused and logged with the client's address, never the token.
    let wrong = "wrong-token-that-must-not-be-logged-4f2a9c";
    assert_eq!(http(port, "GET", "/v1/stats", Some(wrong), None).0, 401);

    let _ = server.0.kill();
    let _ = server.0.wait();
    let mut logs = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    // JSON log lines, none holding a secret.
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 4, "{logs}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string());
    }
    for secret in [
        secret.as_str(),
        ADMIN,
        FEED,
        wrong,
        common::pg_cluster::PASSWORD,
    ] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
    let refused = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "bearer token refused")
        .unwrap_or_else(|| panic!("no refusal logged: {logs}"));
    assert_eq!(refused["fields"]["client"], "127.0.0.1", "{refused}");
    assert_eq!(refused["fields"]["failures"], 1, "{refused}");
    assert_eq!(refused["level"], "WARN");
}

/// Starts `serve` on `url` and a free port; returns once it accepts connections.
fn start_serving(url: &str) -> (Server, u16) {
    let port = free_port();
    let child = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .env("GATEHOUSE_FEED_TOKEN", FEED)
        .env("GATEHOUSE_DATABASE_URL", url)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// Kills `server` (SIGKILL) and returns what it logged.
fn kill_9(mut server: Server) -> String {
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let mut logs = String::new();
    server
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}

#[test]
fn a_retry_after_kill_9_during_issuance_leaves_exactly_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let mut logs = String::new();
    // Killed at once, a little later, and after the commit surely: the first request may
    // or may not have committed; the retry must leave one key either way.
    for (round, delay_ms) in [0, 2, 10, 300].into_iter().enumerate() {
        let user = format!("user_kill_{round}");
        let idempotency_key = format!("kill-9-retry-{round}-7d1f0c");
        let body =
            format!(r#"{{"user_id":"{user}","tenant_id":"t1","plan":"team","device_name":"ci"}}"#);
        let headers = [("idempotency-key", idempotency_key.as_str())];
        let (server, port) = start_serving(db.url());
        let sent = send_request(port, "POST", "/v1/keys", Some(ADMIN), &headers, Some(&body));
        std::thread::sleep(Duration::from_millis(delay_ms));
        logs.push_str(&kill_9(server));
        drop(sent);

        let (server, port) = start_serving(db.url());
        let (status, answer) = read_answer(send_request(
            port,
            "POST",
            "/v1/keys",
            Some(ADMIN),
            &headers,
            Some(&body),
        ));
        let answer: Value = serde_json::from_str(&answer).unwrap();
        let replayed = match status {
            201 => {
                assert!(answer["api_key"].is_string(), "{answer}");
                false
            }
            200 => {
                assert!(answer["api_key"].is_null(), "{answer}");
                true
            }
            other => panic!("round {round}: {other} {answer}"),
        };
        let (status, list) = http(
            port,
            "GET",
            &format!("/v1/keys?user={user}"),
            Some(ADMIN),
            None,
        );
        assert_eq!(status, 200);
        let list: Value = serde_json::from_str(&list).unwrap();
        let keys = list["keys"].as_array().unwrap();
        assert_eq!(
            keys.len(),
            1,
            "round {round} (killed after {delay_ms} ms): {list}"
        );
        assert_eq!(keys[0]["id"], answer["id"]);
        let retry_logs = kill_9(server);
        // A replay is logged by the first digits of the value's hash, never the value.
        let hash =
            gatehouse_core::authn::api_key::KeyHash::of_key(idempotency_key.as_bytes()).to_hex();
        assert_eq!(
            retry_logs.contains(&format!("\"idempotency_key\":\"{}\"", &hash[..12])),
            replayed,
            "{retry_logs}"
        );
        logs.push_str(&retry_logs);
        assert!(
            !logs.contains(&idempotency_key),
            "the Idempotency-Key was logged"
        );
        assert!(
            !logs.contains(&hash),
            "the Idempotency-Key's whole hash was logged"
        );
    }
}

/// Runs `serve` with `url`; it must exit with 2 within 15 s. Returns its stderr.
fn serve_must_fail(url: &str) -> String {
    let started = Instant::now();
    let out = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .env("GATEHOUSE_FEED_TOKEN", FEED)
        .env("GATEHOUSE_DATABASE_URL", url)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[test]
fn serve_fails_fast_naming_an_unreachable_postgres_url_without_its_password() {
    // Nothing listens on a port just freed.
    let port = free_port();
    let err = serve_must_fail(&format!(
        "postgres://gatehouse:pw-7f3a-s3cret@127.0.0.1:{port}/gatehouse?sslmode=disable"
    ));
    assert!(
        err.contains(&format!(
            "opening the database postgres://gatehouse:***@127.0.0.1:{port}/gatehouse"
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(
        !err.contains("pw-7f3a-s3cret"),
        "the password was printed: {err}"
    );
}

#[test]
fn serve_fails_fast_when_the_postgres_database_does_not_exist() {
    // Needs a server to answer; under SQLite the test above covers start-up failures.
    if common::backend() != common::Backend::Postgres {
        return;
    }
    let url = common::pg_cluster::cluster().url("gh_never_created");
    let err = serve_must_fail(&url);
    assert!(
        err.contains(r#"database "gh_never_created" does not exist"#),
        "{err}"
    );
    assert!(!err.contains(common::pg_cluster::PASSWORD), "{err}");
}

#[test]
fn serve_fails_fast_when_the_sqlite_file_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("no-such-folder").join("control.db");
    let err = serve_must_fail(&format!("sqlite://{}", db.display()));
    assert!(err.contains("opening the database sqlite://"), "{err}");
    assert!(!db.exists());
}
