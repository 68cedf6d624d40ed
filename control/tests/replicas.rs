//! Several replicas on one database (SQLite file, or PostgreSQL with
//! `GATEHOUSE_TEST_DATABASE=postgres`; see `common`): a change committed through one
//! wakes the long polls held by the others (`follow.rs`), a stopping replica answers its
//! held polls and exits, and the cleanup job runs on one replica at a time. First through
//! the router in one test process, then as real `serve` processes on real sockets.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "tests: a failure panics; wall-clock timeouts bound real waits"
)]

mod common;

use axum::http::{Method, StatusCode};
use common::{FEED, TestDb, request, send, svc};
use gatehouse_control::store::{JOB_LEASE_SECS, Job};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The poll's `wait`: an answer before it ended was woken by the change.
const WAIT: Duration = Duration::from_secs(20);

fn new_key(user: &str) -> Value {
    json!({"user_id": user, "tenant_id": "t1", "plan": "team", "device_name": "ci"})
}

/// Waits until `state` holds at least one long poll (its handler subscribed to the
/// version channel), then a little more for it to have read and begun waiting.
async fn until_held(state: &gatehouse_control::AppState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.changes.receiver_count() == 0 {
        assert!(Instant::now() < deadline, "the poll was never held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_wakes_a_poll_held_by_another() {
    let a = svc().await;
    let b = a.replica().await;
    let _following = a.follow();
    a.issue("user_0").await;
    let app = a.app.clone();
    let held = tokio::spawn(async move {
        let started = Instant::now();
        let path = format!("/v1/cache?since=1&paged=true&wait={}", WAIT.as_secs());
        let answer = send(&app, request(Method::GET, &path, Some(FEED), None)).await;
        (answer, started.elapsed())
    });
    until_held(&a.state).await;
    let (status, key) = b
        .admin(Method::POST, "/v1/keys", Some(new_key("user_1")))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let ((status, page), took) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        took < WAIT,
        "answered only at the end of its wait ({took:?})"
    );
    assert_eq!(page["version"], 2, "{page}");
    assert_eq!(page["keys"][0]["key_id"], key["id"], "{page}");
}

#[tokio::test]
async fn every_change_notifies_its_version_in_commit_order_on_postgres() {
    if common::backend() != common::Backend::Postgres {
        return;
    }
    let a = svc().await;
    let channel = gatehouse_control::store::postgres::NOTIFY_CHANNEL;
    let mut listener = sqlx::postgres::PgListener::connect(a.db.url())
        .await
        .unwrap();
    listener.listen(channel).await.unwrap();
    let key = a.issue("user_1").await;
    a.issue("user_2").await;
    let path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    assert_eq!(a.admin(Method::DELETE, &path, None).await.0, StatusCode::OK);
    for version in ["1", "2", "3"] {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("no notification")
            .unwrap();
        assert_eq!(n.channel(), channel);
        assert_eq!(n.payload(), version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_notify_on_the_channel_cannot_move_a_replicas_version() {
    if common::backend() != common::Backend::Postgres {
        return;
    }
    let a = svc().await;
    let b = a.replica().await;
    let _following = a.follow();
    a.issue("user_0").await;
    let other = sqlx::PgPool::connect(a.db.url()).await.unwrap();
    sqlx::query("SELECT pg_notify($1, '999999')")
        .bind(gatehouse_control::store::postgres::NOTIFY_CHANNEL)
        .execute(&other)
        .await
        .unwrap();
    // A real change after it: once A has seen this one, it has seen the stray one too.
    let (status, _) = b
        .admin(Method::POST, "/v1/keys", Some(new_key("user_1")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut changes = a.state.changes.subscribe();
    tokio::time::timeout(Duration::from_secs(10), changes.wait_for(|v| *v >= 2))
        .await
        .expect("the change never reached A")
        .unwrap();
    assert_eq!(*a.state.changes.borrow(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_listener_lost_its_connection_catches_up() {
    if common::backend() != common::Backend::Postgres {
        return;
    }
    let a = svc().await;
    let b = a.replica().await;
    let _following = a.follow();
    a.issue("user_0").await;
    // Cut the listener's connection, as a restarted server or a dropped link would.
    let admin = sqlx::PgPool::connect(a.db.url()).await.unwrap();
    let listening = "SELECT pid FROM pg_stat_activity \
        WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Some(pid) = sqlx::query_scalar(listening)
            .fetch_optional(&admin)
            .await
            .unwrap()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no replica is listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(ended);
    // Changes made while the listener is down are lost as notifications; the version
    // read on reconnecting wakes the polls anyway, and later changes notify again.
    for (since, user) in [(1, "user_1"), (2, "user_2")] {
        let app = a.app.clone();
        let held = tokio::spawn(async move {
            let started = Instant::now();
            let path = format!("/v1/cache?since={since}&paged=true&wait={}", WAIT.as_secs());
            let answer = send(&app, request(Method::GET, &path, Some(FEED), None)).await;
            (answer, started.elapsed())
        });
        until_held(&a.state).await;
        let (status, key) = b.admin(Method::POST, "/v1/keys", Some(new_key(user))).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        let ((status, page), took) = held.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            took < WAIT,
            "answered only at the end of its wait ({took:?})"
        );
        assert_eq!(page["keys"][0]["key_id"], key["id"], "{page}");
    }
    // Woken by a listener of its own again, not only by the periodic read.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Option<i32> = sqlx::query_scalar(listening)
            .fetch_optional(&admin)
            .await
            .unwrap();
        if now.is_some_and(|p| p != pid) {
            break;
        }
        assert!(Instant::now() < deadline, "the listener never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_answers_its_held_polls_at_once_with_no_change() {
    let a = svc().await;
    a.issue("user_0").await;
    let app = a.app.clone();
    let held = tokio::spawn(async move {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let started = Instant::now();
        let path = format!("/v1/cache?since=1&paged=true&wait={}", WAIT.as_secs());
        let res = app
            .oneshot(request(Method::GET, &path, Some(FEED), None))
            .await
            .unwrap();
        let stopping = res
            .headers()
            .get(gatehouse_control::feed::STOPPING_HEADER)
            .cloned();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        ((status, page), stopping, started.elapsed())
    });
    until_held(&a.state).await;
    a.state.stop();
    let ((status, page), stopping, took) = held.await.unwrap();
    // Marked, so the sync polls again at once (another replica) rather than waiting for
    // its next regular poll as after a quiet answer.
    assert_eq!(stopping.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        took < WAIT,
        "answered only at the end of its wait ({took:?})"
    );
    assert_eq!(page["version"], 1, "{page}");
    assert_eq!(page["full"], false, "{page}");
    assert_eq!(page["keys"], json!([]), "{page}");
    // A poll that comes in now is not held either.
    let started = Instant::now();
    let (status, _) = a.feed("since=1&paged=true&wait=20").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_job_runs_on_one_replica_at_a_time() {
    let a = svc().await;
    let b = a.replica().await;
    let now = a.state.clock.now_secs();
    let held = a
        .state
        .store
        .try_job_lock(Job::Cleanup, now)
        .await
        .unwrap()
        .expect("a free lock is taken");
    assert!(
        b.state
            .store
            .try_job_lock(Job::Cleanup, now)
            .await
            .unwrap()
            .is_none(),
        "two replicas held the cleanup lock at once"
    );
    // B's pass is skipped while A holds the job.
    assert!(!gatehouse_control::cleanup::pass(&b.state).await.unwrap());
    held.release().await.unwrap();
    assert!(gatehouse_control::cleanup::pass(&b.state).await.unwrap());
    // Released after its pass: A runs the next one.
    assert!(gatehouse_control::cleanup::pass(&a.state).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_lock_never_released_frees_itself() {
    let a = svc().await;
    let b = a.replica().await;
    let now = a.state.clock.now_secs();
    let held = a.state.store.try_job_lock(Job::Cleanup, now).await.unwrap();
    assert!(held.is_some());
    // Dropped mid-pass, as when the task is aborted.
    drop(held);
    match common::backend() {
        // The lease holds until it expires.
        common::Backend::Sqlite => {
            let store = &b.state.store;
            let before = store.try_job_lock(Job::Cleanup, now + JOB_LEASE_SECS - 1);
            assert!(before.await.unwrap().is_none());
            let after = store.try_job_lock(Job::Cleanup, now + JOB_LEASE_SECS);
            assert!(after.await.unwrap().is_some());
        }
        // The session holding the advisory lock is closed.
        common::Backend::Postgres => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while b
                .state
                .store
                .try_job_lock(Job::Cleanup, now)
                .await
                .unwrap()
                .is_none()
            {
                assert!(Instant::now() < deadline, "the lock was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

// --- Real `serve` processes ---

const ADMIN: &str = "admin-token-for-replica-test-4d8b2f6a1c9e";
const FEED_TOKEN: &str = "feed-token-for-replica-test-7e1a5c3b9d0f";

/// A `serve` process, killed on drop if still running.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(url: &str) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_gatehouse-control"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
            .env("GATEHOUSE_FEED_TOKEN", FEED_TOKEN)
            .env("GATEHOUSE_DATABASE_URL", url)
            .env_remove("GATEHOUSE_CONTROL_LISTEN")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`; returns its status and logs.
    fn exited_within(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (status, logs)
    }

    fn logs(mut self) -> String {
        self.signal("KILL");
        self.exited_within(Duration::from_secs(10)).1
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns (status, body as JSON).
fn http(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT + Duration::from_secs(10)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         authorization: Bearer {token}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A long poll from `since` on `port` in a thread; joins to (status, page, time taken,
/// when answered).
fn hold_poll(port: u16, since: i64) -> std::thread::JoinHandle<(u16, Value, Duration, Instant)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let path = format!("/v1/cache?since={since}&paged=true&wait={}", WAIT.as_secs());
        let (status, page) = http(port, "GET", &path, FEED_TOKEN, None);
        (status, page, started.elapsed(), Instant::now())
    })
}

fn issue(port: u16, user: &str) -> Value {
    let (status, key) = http(port, "POST", "/v1/keys", ADMIN, Some(&new_key(user)));
    assert_eq!(status, 201, "{key}");
    key
}

fn assert_no_secret(logs: &str) {
    for secret in [ADMIN, FEED_TOKEN, common::pg_cluster::PASSWORD] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
}

#[test]
fn a_key_issued_and_revoked_through_one_serve_process_wakes_polls_held_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let a = Server::start(db.url());
    let b = Server::start(db.url());
    issue(a.port, "user_0");

    let poll = hold_poll(a.port, 1);
    // Nothing shows when the poll is held across processes: give it time to be.
    std::thread::sleep(Duration::from_millis(500));
    let key = issue(b.port, "user_1");
    let committed = Instant::now();
    let (status, page, took, answered) = poll.join().unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        took < WAIT,
        "answered only at the end of its wait ({took:?})"
    );
    assert_eq!(page["version"], 2, "{page}");
    assert_eq!(page["keys"][0]["key_id"], key["id"], "{page}");
    let lag = answered.saturating_duration_since(committed);
    eprintln!("issued through B: a poll held on A answered {lag:?} after B's 201");

    let poll = hold_poll(a.port, 2);
    std::thread::sleep(Duration::from_millis(500));
    let path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    let (status, revoked) = http(b.port, "DELETE", &path, ADMIN, None);
    assert_eq!(status, 200, "{revoked}");
    let committed = Instant::now();
    let (status, page, took, answered) = poll.join().unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        took < WAIT,
        "answered only at the end of its wait ({took:?})"
    );
    assert_eq!(page["keys"][0]["active"], false, "{page}");
    let lag = answered.saturating_duration_since(committed);
    eprintln!("revoked through B: a poll held on A answered {lag:?} after B's 200");

    assert_no_secret(&a.logs());
    assert_no_secret(&b.logs());
}

#[test]
fn sigterm_answers_a_held_poll_and_the_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let mut a = Server::start(db.url());
    issue(a.port, "user_0");
    let poll = hold_poll(a.port, 1);
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    a.signal("TERM");
    let (status, page, took, _) = poll.join().unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        took < WAIT,
        "answered only at the end of its wait ({took:?})"
    );
    // The current state, no change.
    assert_eq!(page["version"], 1, "{page}");
    assert_eq!(page["keys"], json!([]), "{page}");
    let (exit, logs) = a.exited_within(WAIT);
    assert!(exit.success(), "{exit}: {logs}");
    eprintln!(
        "SIGTERM: the poll was answered and the process exited after {:?}",
        signalled.elapsed()
    );
    assert!(logs.contains("gatehouse-control stopped"), "{logs}");
    assert_no_secret(&logs);
}

#[test]
fn sigterm_stops_the_process_even_with_a_request_that_never_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let mut a = Server::start(db.url());
    // A body announced and never sent in full: the request stays in flight.
    let mut stalled = TcpStream::connect(("127.0.0.1", a.port)).unwrap();
    let head = format!(
        "POST /v1/keys HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ADMIN}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"user_id\""
    );
    stalled.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    a.signal("TERM");
    // Bounded by the wait a held poll would have had, not by a speed: the deadline
    // (`serve::STOP_DEADLINE`) ends it; without one, it would wait for the body forever.
    let (exit, logs) = a.exited_within(WAIT);
    assert!(exit.success(), "{exit}: {logs}");
    assert!(
        logs.contains("requests still open at the stop deadline"),
        "{logs}"
    );
    drop(stalled);
}
