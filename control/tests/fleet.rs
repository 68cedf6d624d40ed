//! Fleet-wide limits (`POST /v1/limits/exchange`, control/FLEET.md) against a real
//! Redis (`common/redis_server.rs`): proxies exchanging through one or two replicas,
//! cursors and pages, lapsed states leaving answers and Redis, the count of proxies,
//! bad requests, no Redis at all, and Redis dying and coming back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests: a failure panics"
)]

mod common;

use axum::http::{Method, StatusCode};
use common::redis_server::RedisServer;
use common::{ADMIN, FEED, Svc, error_code, request, send, svc_with};
use gatehouse_control::config::{Config, RedisUrl};
use gatehouse_control::fleet::KEY_PREFIX;
use serde_json::{Value, json};
use std::time::Duration;

const PATH: &str = "/v1/limits/exchange";

async fn fleet_svc(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Svc {
    let url = redis.url();
    svc_with(move |c| {
        c.redis_url = Some(RedisUrl::new(url).unwrap());
        tweak(c);
    })
    .await
}

async fn post(app: &axum::Router, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    send(app, request(Method::POST, PATH, token, Some(body))).await
}

/// One exchange that must answer 200.
async fn exchange(app: &axum::Router, body: Value) -> Value {
    let (status, answer) = post(app, Some(FEED), &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// `n` requests of `caller` on 60 a minute (T = 1 s).
fn used(caller: &str, n: u64) -> Value {
    json!({"limit": "plan:free", "caller": caller, "kind": "i", "n": n,
        "requests": 60, "period_ms": 60000, "burst": 60})
}

fn callers(answer: &Value) -> Vec<String> {
    answer["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["caller"].as_str().unwrap().to_string())
        .collect()
}

fn ahead_of(answer: &Value, caller: &str) -> Option<u64> {
    answer["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["caller"] == caller)
        .map(|s| s["ahead_us"].as_u64().unwrap())
}

fn fleet_keys(redis: &RedisServer) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{KEY_PREFIX}*"))
        .query(&mut redis.client())
        .unwrap();
    keys.len()
}

fn zcard(redis: &RedisServer, name: &str) -> usize {
    redis::cmd("ZCARD")
        .arg(format!("{KEY_PREFIX}{name}"))
        .query(&mut redis.client())
        .unwrap()
}

#[tokio::test]
async fn a_second_proxy_sees_the_first_ones_consumption() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    let a = exchange(
        &s.app,
        json!({"proxy": "envoy-a", "used": [used("user_1", 3)]}),
    )
    .await;
    // Its own change comes back too: T = 1 s, 3 requests.
    let own = ahead_of(&a, "user_1").unwrap();
    assert!((2_900_000..=3_000_000).contains(&own), "{a}");
    assert_eq!(a["proxies"], 1);
    assert_eq!(a["more"], false);
    assert_eq!(a["states"][0]["limit"], "plan:free");
    assert_eq!(a["states"][0]["kind"], "i");

    let b = exchange(
        &s.app,
        json!({"proxy": "envoy-b", "cursor": null, "used": []}),
    )
    .await;
    let seen = ahead_of(&b, "user_1").unwrap();
    assert!((2_500_000..=own).contains(&seen), "{b}");
    assert_eq!(b["proxies"], 2);

    // B's requests add to A's: max(tat, now) + n·T.
    let b = exchange(
        &s.app,
        json!({"proxy": "envoy-b", "cursor": b["cursor"], "used": [used("user_1", 2)]}),
    )
    .await;
    let both = ahead_of(&b, "user_1").unwrap();
    assert!((4_500_000..=5_000_000).contains(&both), "{b}");

    // Counted by address, the same names are another state.
    let mut by_address = used("user_1", 1);
    by_address["kind"] = json!("a");
    let c = exchange(&s.app, json!({"proxy": "envoy-c", "used": [by_address]})).await;
    let kinds: Vec<&str> = c["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{c}");
    assert!(kinds.contains(&"a") && kinds.contains(&"i"), "{c}");
}

#[tokio::test]
async fn the_fleet_state_owes_at_most_a_burst_per_proxy_plus_one() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    let a = exchange(
        &s.app,
        json!({"proxy": "p", "used": [used("user_1", 1000)]}),
    )
    .await;
    let ahead = ahead_of(&a, "user_1").unwrap();
    assert!((119_000_000..=120_000_000).contains(&ahead), "{a}");
    // Three proxies seen: a burst at each at once is owed in full, up to four periods.
    exchange(&s.app, json!({"proxy": "q"})).await;
    let c = exchange(
        &s.app,
        json!({"proxy": "r", "used": [used("user_2", 1000)]}),
    )
    .await;
    let ahead = ahead_of(&c, "user_2").unwrap();
    assert!((239_000_000..=240_000_000).contains(&ahead), "{c}");
}

#[tokio::test]
async fn the_cursor_returns_only_newer_changes() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    let a1 = exchange(&s.app, json!({"proxy": "a", "used": [used("user_1", 1)]})).await;
    assert_eq!(callers(&a1), ["user_1"]);
    exchange(&s.app, json!({"proxy": "b", "used": [used("user_2", 1)]})).await;
    let a2 = exchange(&s.app, json!({"proxy": "a", "cursor": a1["cursor"]})).await;
    assert_eq!(callers(&a2), ["user_2"], "{a2}");
    let a3 = exchange(&s.app, json!({"proxy": "a", "cursor": a2["cursor"]})).await;
    assert_eq!(callers(&a3), Vec::<String>::new(), "{a3}");
    assert_eq!(a3["cursor"], a2["cursor"]);
    // A cursor the service did not give out starts from the beginning: every live state.
    for cursor in [json!("nonsense"), json!("1.1"), Value::Null] {
        let all = exchange(&s.app, json!({"proxy": "a", "cursor": cursor})).await;
        let mut got = callers(&all);
        got.sort();
        assert_eq!(got, ["user_1", "user_2"], "{cursor}: {all}");
    }
    // Redis lost its data (a restart without persistence): an old cursor starts over
    // rather than skipping the new log's first changes.
    redis::cmd("FLUSHALL")
        .query::<()>(&mut redis.client())
        .unwrap();
    exchange(&s.app, json!({"proxy": "b", "used": [used("user_3", 1)]})).await;
    let after = exchange(&s.app, json!({"proxy": "a", "cursor": a3["cursor"]})).await;
    assert_eq!(callers(&after), ["user_3"], "{after}");
}

#[tokio::test]
async fn answers_hold_at_most_5000_states_and_say_more() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    let many: Vec<Value> = (0..7000).map(|i| used(&format!("user_{i}"), 1)).collect();
    let first = exchange(&s.app, json!({"proxy": "a", "used": many})).await;
    assert_eq!(first["states"].as_array().unwrap().len(), 5000);
    assert_eq!(first["more"], true);
    // In the order of the changes.
    assert_eq!(first["states"][0]["caller"], "user_0");
    assert_eq!(first["states"][4999]["caller"], "user_4999");
    let second = exchange(&s.app, json!({"proxy": "a", "cursor": first["cursor"]})).await;
    assert_eq!(second["states"].as_array().unwrap().len(), 2000);
    assert_eq!(second["states"][0]["caller"], "user_5000");
    assert_eq!(second["more"], false);
    let third = exchange(&s.app, json!({"proxy": "a", "cursor": second["cursor"]})).await;
    assert_eq!(third["states"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_lapsed_state_leaves_the_answers_then_redis() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |c| c.fleet.margin = Duration::from_millis(300)).await;
    // 1 a second: one request puts the caller 1 s ahead.
    let short = json!({"limit": "l", "caller": "short", "kind": "a", "n": 1,
        "requests": 1, "period_ms": 1000, "burst": 1});
    let a = exchange(
        &s.app,
        json!({"proxy": "a", "used": [short, used("long", 30)]}),
    )
    .await;
    assert_eq!(callers(&a), ["short", "long"]);
    assert_eq!(zcard(&redis, "changes"), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Lapsed (its tat is past) but not yet expired: not answered.
    let b = exchange(&s.app, json!({"proxy": "b"})).await;
    assert_eq!(callers(&b), ["long"], "{b}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Past the margin: the key has expired, and the next exchange prunes the log.
    exchange(&s.app, json!({"proxy": "b"})).await;
    assert_eq!(zcard(&redis, "changes"), 1);
    assert_eq!(zcard(&redis, "expiry"), 1);
    let tats: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{KEY_PREFIX}t:*"))
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(tats, [format!(r#"{KEY_PREFIX}t:["i","plan:free","long"]"#)]);
    // seq, epoch, proxies, changes, expiry and the one live tat.
    assert_eq!(fleet_keys(&redis), 6);
}

#[tokio::test]
async fn proxies_count_those_seen_within_the_window() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |c| c.fleet.proxy_window = Duration::from_secs(1)).await;
    assert_eq!(exchange(&s.app, json!({"proxy": "a"})).await["proxies"], 1);
    assert_eq!(exchange(&s.app, json!({"proxy": "b"})).await["proxies"], 2);
    assert_eq!(exchange(&s.app, json!({"proxy": "a"})).await["proxies"], 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(exchange(&s.app, json!({"proxy": "a"})).await["proxies"], 1);
    assert_eq!(zcard(&redis, "proxies"), 1);
    let (status, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats["fleet"],
        json!({"exchanges": 4, "failures": 0, "proxies": 1})
    );
}

#[test]
fn the_proxy_window_defaults_to_10_s() {
    let t = gatehouse_control::fleet::Tuning::default();
    assert_eq!(t.proxy_window, Duration::from_secs(10));
    assert_eq!(t.page, 5000);
    assert_eq!(t.prune, 1000);
}

#[tokio::test]
async fn bad_requests_are_refused_with_400_naming_the_field() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    let mut bad_kind = used("u", 1);
    bad_kind["kind"] = json!("x");
    let mut zero = used("u", 1);
    zero["n"] = json!(0);
    let mut long = used("u", 1);
    long["limit"] = json!("l".repeat(257));
    let mut extra = used("u", 1);
    extra["secret"] = json!(1);
    let many: Vec<Value> = (0..10_001).map(|_| used("u", 1)).collect();
    for (body, says) in [
        (json!({"used": []}), "missing field `proxy`"),
        (json!({"proxy": "a b"}), "proxy must be"),
        (
            json!({"proxy": "p", "used": [bad_kind]}),
            "used[0].kind must be",
        ),
        (
            json!({"proxy": "p", "used": [used("u", 1), zero]}),
            "used[1].n must be",
        ),
        (
            json!({"proxy": "p", "used": [long]}),
            "used[0].limit must be 1 to 256 bytes",
        ),
        (json!({"proxy": "p", "used": [extra]}), "unknown field"),
        (
            json!({"proxy": "p", "used": many}),
            "used must be at most 10000",
        ),
        (json!(["p"]), "must be a JSON object"),
    ] {
        let (status, answer) = post(&s.app, Some(FEED), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{says}: {answer}");
        assert_eq!(error_code(&answer), "BAD_REQUEST");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(says), "{says}: {message}");
        assert!(!message.contains("lll"), "{message}");
    }
    // Nothing was stored.
    assert_eq!(fleet_keys(&redis), 0);
    // The body may be up to 4 MiB (64 KiB elsewhere).
    let (status, _) = post(
        &s.app,
        Some(FEED),
        &json!({"proxy": "p", "cursor": "1".repeat(3 << 20)}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = post(
        &s.app,
        Some(FEED),
        &json!({"proxy": "p", "cursor": "1".repeat(4 << 20)}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&answer), "PAYLOAD_TOO_LARGE");
    // The feed token only.
    for token in [None, Some(ADMIN)] {
        let (status, answer) = post(&s.app, token, &json!({"proxy": "p"})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&answer), "UNAUTHORIZED");
    }
}

#[tokio::test]
async fn without_redis_the_exchange_is_503_and_the_rest_works() {
    let s = svc_with(|_| {}).await;
    let (status, answer) = post(
        &s.app,
        Some(FEED),
        &json!({"proxy": "p", "used": [used("u", 1)]}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&answer), "FLEET_UNAVAILABLE");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("GATEHOUSE_REDIS_URL is not set"),
        "{answer}"
    );
    // Bad input is still 400 first.
    let (status, _) = post(&s.app, Some(FEED), &json!({"proxy": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.issue("user_1").await;
    let (status, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stats["fleet"],
        json!({"exchanges": 0, "failures": 0, "proxies": 0})
    );
}

#[tokio::test]
async fn a_redis_that_dies_is_503_until_it_is_back() {
    let mut redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    exchange(&s.app, json!({"proxy": "a", "used": [used("user_1", 1)]})).await;
    redis.kill();
    for _ in 0..3 {
        let (status, answer) = post(&s.app, Some(FEED), &json!({"proxy": "a"})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert_eq!(error_code(&answer), "FLEET_UNAVAILABLE");
        assert_eq!(answer["error"], "redis unreachable");
    }
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["fleet"]["failures"], 3);
    redis.restart();
    // The same service, no restart: the next exchange connects again.
    let back = exchange(&s.app, json!({"proxy": "a", "used": [used("user_2", 1)]})).await;
    assert_eq!(callers(&back), ["user_2"], "{back}");
    let (_, stats) = s.admin(Method::GET, "/v1/stats", None).await;
    assert_eq!(stats["fleet"]["exchanges"], 2);
}

#[tokio::test]
async fn two_replicas_on_one_redis_agree() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    let r = s.replica().await;
    exchange(&s.app, json!({"proxy": "a", "used": [used("user_1", 3)]})).await;
    let b = exchange(&r.app, json!({"proxy": "b", "used": [used("user_1", 2)]})).await;
    let ahead = ahead_of(&b, "user_1").unwrap();
    assert!((4_500_000..=5_000_000).contains(&ahead), "{b}");
    assert_eq!(b["proxies"], 2);
    let a = exchange(&s.app, json!({"proxy": "a"})).await;
    let seen = ahead_of(&a, "user_1").unwrap();
    assert!((4_500_000..=ahead).contains(&seen), "{a}");
    assert_eq!(a["proxies"], 2);
}

/// One HTTP/1.1 request to a real `serve`; returns (status, body).
fn http(port: u16, token: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

/// A `serve` process, killed on drop (a failed assertion too).
struct Serving(std::process::Child);

impl Serving {
    /// Kills it and returns what it logged.
    fn stop(&mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut logs = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut logs).unwrap();
        }
        logs
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real process: a Redis that takes a password, lost and back, logged once each way
/// and never with its URL or password.
#[test]
fn serve_logs_an_outage_once_each_way_and_never_the_password() {
    const PASSWORD: &str = "redis-pw-never-logged-5c1e9a";
    let mut redis = RedisServer::with_password(PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse-control"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.path().join("c.db").display()))
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .env("GATEHOUSE_FEED_TOKEN", FEED)
        .env("GATEHOUSE_REDIS_URL", redis.url())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Serving(child);
    // 400 tries 50 ms apart: some 20 s.
    let mut tries = 0;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tries += 1;
        assert!(tries < 400, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = json!({"proxy": "a", "used": [used("user_1", 1)]}).to_string();
    let (status, answer) = http(port, FEED, &body);
    assert_eq!(status, 200, "{answer}\n{}", server.stop());
    redis.kill();
    for _ in 0..5 {
        let (status, answer) = http(port, FEED, &body);
        assert_eq!(status, 503, "{answer}");
        assert!(answer.contains("redis unreachable"), "{answer}");
    }
    redis.restart();
    assert_eq!(http(port, FEED, &body).0, 200);

    let logs = server.stop();
    assert!(!logs.contains(PASSWORD), "the password in the logs: {logs}");
    assert!(
        !logs.contains(&redis.socket().display().to_string()),
        "{logs}"
    );
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let said = |message: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    let down = said("fleet limits: exchanges answered 503 FLEET_UNAVAILABLE");
    assert_eq!(down.len(), 1, "{logs}");
    assert_eq!(down[0]["level"], "WARN");
    let back = said("fleet limits: redis answers again");
    assert_eq!(back.len(), 1, "{logs}");
    assert_eq!(back[0]["fields"]["failures"], 5);
}

/// The Redis memory one live (limit, caller) costs: 100,000 members, `INFO memory`
/// before and after (control/FLEET.md, "Memory"). `cargo test -p gatehouse-control
/// --test fleet -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a test: run by hand"]
async fn memory_per_live_member() {
    let redis = RedisServer::start();
    let s = fleet_svc(&redis, |_| {}).await;
    exchange(&s.app, json!({"proxy": "a"})).await;
    let used_memory = || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut redis.client())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = used_memory();
    const MEMBERS: usize = 100_000;
    for batch in 0..MEMBERS / 10_000 {
        let many: Vec<Value> = (0..10_000)
            // A minute ahead: none lapses while the batches are sent.
            .map(|i| used(&format!("user_{}", batch * 10_000 + i), 60))
            .collect();
        let (status, _) = post(&s.app, Some(FEED), &json!({"proxy": "a", "used": many})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let after = used_memory();
    assert_eq!(zcard(&redis, "changes"), MEMBERS);
    println!(
        "{MEMBERS} members (limit `plan:free`, callers `user_N`): {} bytes, {} bytes each",
        after - before,
        (after - before) / MEMBERS as u64
    );
}
