//! The dashboard end to end: the real `gatehouse-control serve` on a real socket and
//! database (see `common`), keys issued and events reported through the API, then the
//! page loaded in headless Chromium (Debian's `chromium`; `make test` installs it), whose
//! DOM after the script has run is checked for what a person would see: the keys with
//! their plan and last use, the refused route and code, the per-plan counts, the cache
//! versions; never a key or its hash; a wrong token's message and no data; markup in a
//! route shown as text.
//!
//! Chromium is found through `GATEHOUSE_CHROMIUM`, else `/usr/bin/chromium`; without it
//! these tests fail rather than skip.
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
use gatehouse_core::authn::api_key::KeyHash;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "admin-token-for-dashboard-test-5e1c9a3f7b";
const FEED: &str = "feed-token-for-dashboard-test-2d8b6f0a4c";
/// The last use reported for the first key: an hour ago. Reports are real-time data the
/// server keeps for `GATEHOUSE_EVENT_RETENTION` (30 days) and purges when it starts, so a
/// fixed date would be purged, racing the page load, once it is a month old.
fn used_at() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now - 3600
}

/// Unix seconds as the API and the page show them.
fn shown(secs: u64) -> String {
    gatehouse_core::time::format_rfc3339(gatehouse_core::time::UnixNanos::from_secs(secs))
}
/// A route with markup in it: the route rule allows any printable ASCII but the space.
const MARKUP_ROUTE: &str = "/v1/<i>x</i>/<img/src=x>/{id}";

fn chromium() -> PathBuf {
    let path = std::env::var_os("GATEHOUSE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium not found at {} (set GATEHOUSE_CHROMIUM, or `make chromium` installs \
         Debian's package)",
        path.display()
    );
    path
}

struct Server {
    child: Child,
    port: u16,
    _db: TestDb,
    _dir: tempfile::TempDir,
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

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gatehouse-control"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .env("GATEHOUSE_FEED_TOKEN", FEED)
        .env("GATEHOUSE_DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        port,
        _db: db,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// One HTTP/1.1 request with a JSON body; returns (status, body as JSON).
fn http(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
         authorization: Bearer {token}\r\n"
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.get(9..12).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The DOM of `url` after its script has run, as Chromium serializes it.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--virtual-time-budget=10000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dom = reader.join().unwrap();
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    dom
}

/// The inner HTML of the element with this id (its first closing tag of the same name).
fn element<'a>(dom: &'a str, id: &str) -> (&'a str, &'a str) {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let open = dom[..at].rfind('<').unwrap();
    let name_end = dom[open + 1..]
        .find(|c: char| c.is_whitespace() || c == '>')
        .unwrap();
    let name = &dom[open + 1..open + 1 + name_end];
    let tag_end = at + dom[at..].find('>').unwrap();
    let start_tag = &dom[open..=tag_end];
    let close = format!("</{name}>");
    let end = tag_end + dom[tag_end..].find(&close).unwrap();
    (start_tag, &dom[tag_end + 1..end])
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The rows of a table body, each as its cells' text.
fn rows(dom: &str, tbody_id: &str) -> Vec<Vec<String>> {
    let (_, inner) = element(dom, tbody_id);
    inner
        // `<tr>` or `<tr class="...">`
        .split("<tr")
        .skip(1)
        .map(|tr| {
            tr.split("<td")
                .skip(1)
                .map(|td| {
                    let text_start = td.find('>').unwrap() + 1;
                    let text_end = td.find("</td>").unwrap();
                    unescape(&td[text_start..text_end])
                })
                .collect()
        })
        .collect()
}

fn text(dom: &str, id: &str) -> String {
    unescape(element(dom, id).1)
}

struct Seeded {
    server: Server,
    keys: Vec<Value>,
    feed_version: i64,
    used_at: u64,
}

/// Three keys, one of them used; refusals (one with markup in its route); request counts
/// for two plans and anonymous callers; two proxies at different cache versions and one
/// that never said which it has.
fn seeded() -> Seeded {
    let server = start();
    let port = server.port;
    let mut keys = Vec::new();
    for (user, plan) in [("alice", "team"), ("bob", "free"), ("carol", "enterprise")] {
        let (status, key) = http(
            port,
            "POST",
            "/v1/keys",
            ADMIN,
            Some(&json!({"user_id": user, "tenant_id": "acme", "plan": plan,
                         "device_name": "laptop", "expires_in_days": 30})),
        );
        assert_eq!(status, 201, "{key}");
        keys.push(key);
    }
    let (status, _) = http(
        port,
        "DELETE",
        &format!("/v1/keys/{}", keys[2]["id"].as_str().unwrap()),
        ADMIN,
        None,
    );
    assert_eq!(status, 200);
    let (status, page) = http(port, "GET", "/v1/cache?since=0", FEED, None);
    assert_eq!(status, 200);
    let feed_version = page["version"].as_i64().unwrap();
    assert_eq!(feed_version, 4);

    let alice = keys[0]["id"].as_str().unwrap();
    let used_at = used_at();
    let reports = [
        json!({
            "proxy": "envoy-east", "cache_version": feed_version,
            "refusals": [
                {"at": used_at + 5, "request_id": "req-rl", "method": "POST",
                 "route": "/v1/orders/{id}", "code": "RATE_LIMITED", "status": 429,
                 "key_id": alice, "user": "alice", "plan": "team", "client": "203.0.113.7"},
                {"at": used_at + 6, "request_id": "req-mk", "method": "GET",
                 "route": MARKUP_ROUTE, "code": "INVALID_CREDENTIALS", "status": 401,
                 "client": "2001:db8::9"}
            ],
            "key_uses": [{"key_id": alice, "at": used_at}],
            "requests": [{"plan": "team", "allowed": 120, "refused": 3},
                         {"plan": "", "allowed": 7, "refused": 2}]
        }),
        json!({
            "proxy": "envoy-west", "cache_version": 2,
            "requests": [{"plan": "team", "allowed": 5, "refused": 1},
                         {"plan": "free", "allowed": 1, "refused": 0}]
        }),
        // Never says which cache version it has: it lags.
        json!({"proxy": "envoy-north", "requests": []}),
    ];
    for r in &reports {
        let (status, body) = http(port, "POST", "/v1/events", FEED, Some(r));
        assert_eq!(status, 202, "{body}");
    }
    Seeded {
        server,
        keys,
        feed_version,
        used_at,
    }
}

#[test]
fn the_dashboard_shows_keys_refusals_counts_and_cache_versions() {
    let seeded = seeded();
    let port = seeded.server.port;
    let dom = dump_dom(&format!("http://127.0.0.1:{port}/#token={ADMIN}"));

    let (data_tag, _) = element(&dom, "data");
    assert!(
        !data_tag.contains("hidden"),
        "the data stayed hidden: {dom}"
    );
    let message = text(&dom, "message");
    assert!(message.contains("Signed in"), "{message}");

    // Keys: newest first, with plan, state, expiry and last use.
    let keys = rows(&dom, "keys-body");
    assert_eq!(keys.len(), 3, "{keys:?}");
    let by_id = |id: &Value| {
        keys.iter()
            .find(|r| r[0] == id.as_str().unwrap())
            .unwrap_or_else(|| panic!("{id} not shown: {keys:?}"))
            .clone()
    };
    let alice = by_id(&seeded.keys[0]["id"]);
    assert_eq!(alice[1..4], ["alice", "team", "active"]);
    assert_eq!(alice[4], seeded.keys[0]["created_at"].as_str().unwrap());
    assert_eq!(alice[5], seeded.keys[0]["expires_at"].as_str().unwrap());
    assert_eq!(alice[6], shown(seeded.used_at));
    let bob = by_id(&seeded.keys[1]["id"]);
    assert_eq!(bob[1..4], ["bob", "free", "active"]);
    assert_eq!(bob[6], "never");
    let carol = by_id(&seeded.keys[2]["id"]);
    assert_eq!(carol[1..4], ["carol", "enterprise", "revoked"]);

    // Refusals, newest first: who, route, code.
    let refusals = rows(&dom, "refusals-body");
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(
        refusals[1],
        [
            shown(seeded.used_at + 5).as_str(),
            &format!("key:{}", seeded.keys[0]["id"].as_str().unwrap()),
            "POST",
            "/v1/orders/{id}",
            "RATE_LIMITED",
            "429"
        ]
    );
    assert_eq!(
        refusals[0],
        [
            shown(seeded.used_at + 6).as_str(),
            "anonymous",
            "GET",
            MARKUP_ROUTE,
            "INVALID_CREDENTIALS",
            "401"
        ]
    );

    // Per-plan counts over the last 24 h, both proxies' reports summed.
    assert_eq!(
        rows(&dom, "plans-body"),
        [
            ["(anonymous)", "7", "2"],
            ["free", "1", "0"],
            ["team", "125", "4"]
        ]
    );

    // The feed's version and what each proxy has applied.
    assert_eq!(text(&dom, "feed-version"), seeded.feed_version.to_string());
    // Behind by two for a moment is not lagging; never saying is.
    let proxies = rows(&dom, "proxies-body");
    assert_eq!(proxies.len(), 3, "{proxies:?}");
    assert_eq!(proxies[0][..3], ["envoy-east", "4", "0"]);
    assert_eq!(proxies[0][4], "in step");
    assert_eq!(proxies[1][..3], ["envoy-north", "unknown", "unknown"]);
    assert_eq!(proxies[1][4], "lagging");
    assert_eq!(proxies[2][..3], ["envoy-west", "2", "2"]);
    assert_eq!(proxies[2][4], "in step");
    let (lagging_tag, _) = element(&dom, "lagging");
    assert!(!lagging_tag.contains("hidden"), "{lagging_tag}");
    let warning = text(&dom, "lagging");
    assert!(warning.starts_with("Lagging proxies: 1 "), "{warning}");

    // Markup in a route is text: escaped in the DOM, no element made of it.
    assert!(
        dom.contains("/v1/&lt;i&gt;x&lt;/i&gt;/&lt;img/src=x&gt;/{id}"),
        "{dom}"
    );
    assert!(!dom.contains("<i>") && !dom.contains("<img"), "{dom}");

    // Never a key, its hash, or a token.
    for key in &seeded.keys {
        let secret = key["api_key"].as_str().unwrap();
        let hash = KeyHash::of_key(secret.as_bytes()).to_hex();
        assert!(!dom.contains(secret), "a key is in the page");
        assert!(!dom.contains(&hash), "a key's hash is in the page");
    }
    assert!(
        !dom.contains(ADMIN) && !dom.contains(FEED),
        "a token is in the page"
    );
}

#[test]
fn a_wrong_token_shows_a_clear_message_and_no_data() {
    let seeded = seeded();
    let port = seeded.server.port;
    for token in ["wrong-token-0123456789", FEED] {
        let dom = dump_dom(&format!("http://127.0.0.1:{port}/#token={token}"));
        let (message_tag, _) = element(&dom, "message");
        assert!(message_tag.contains("class=\"error\""), "{message_tag}");
        let message = text(&dom, "message");
        assert!(message.contains("Wrong admin token"), "{message}");
        let (data_tag, _) = element(&dom, "data");
        assert!(data_tag.contains("hidden"), "data shown: {dom}");
        for body in ["keys-body", "refusals-body", "plans-body", "proxies-body"] {
            assert!(rows(&dom, body).is_empty(), "{body}: {dom}");
        }
        assert_eq!(text(&dom, "feed-version"), "");
        let (lagging_tag, _) = element(&dom, "lagging");
        assert!(lagging_tag.contains("hidden"), "{lagging_tag}");
        for key in &seeded.keys {
            assert!(!dom.contains(key["id"].as_str().unwrap()), "a key id shown");
        }
        assert!(!dom.contains("RATE_LIMITED") && !dom.contains("envoy-east"));
    }
}

#[test]
fn without_a_token_the_page_asks_for_one_and_shows_no_data() {
    let seeded = seeded();
    let dom = dump_dom(&format!("http://127.0.0.1:{}/", seeded.server.port));
    let message = text(&dom, "message");
    assert!(message.contains("Enter the admin token"), "{message}");
    let (data_tag, _) = element(&dom, "data");
    assert!(data_tag.contains("hidden"));
    assert!(rows(&dom, "keys-body").is_empty());
    assert!(!dom.contains(seeded.keys[0]["id"].as_str().unwrap()));
}
