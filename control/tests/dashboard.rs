//! The dashboard end to end: the real `gatehouse-control serve` on a real socket and
//! database (see `common`), keys issued and events reported through the API, then the
//! page loaded in headless Chromium (Debian's `chromium`; `make test` installs it), whose
//! DOM after the script has run is checked for what a person would see: the keys with
//! their plan and last use, refusals grouped by code, route and caller with their counts
//! (shadow "would refuse" apart), the top refused callers and routes, a chart per plan
//! drawn from the per-minute counts, the "many distinct callers refused" alert above its
//! threshold and not at it, the per-plan counts, the cache versions; never a key or its
//! hash; a wrong token's message and no data; markup in a route shown as text; the levers
//! in force (answered by a front, [`levers_front`], whatever the control service behind
//! has), markup in their reasons shown as text. That test also keeps a screenshot of the
//! page as a laptop shows it, `<target dir>/dashboard.png` (see [`SCREENSHOT`]).
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
    now() - 3600
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Where the screenshot is kept: `dashboard.png` in the target directory (beside
/// `debug/`), an artifact CI can upload.
fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join(SCREENSHOT)
}
const SCREENSHOT: &str = "dashboard.png";
/// The screen the screenshot is taken at: a laptop's width; tall enough for the page.
const SCREEN: (u32, u32) = (1366, 2400);
/// The alert threshold of the seeded service: 3 distinct callers refused (429) in 5 min.
const THRESHOLD: &str = "3";

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

/// Held from picking a free port until the server listens on it: tests run in parallel,
/// and two of them handed the same port (free until a server binds it) would both reach
/// the first server to bind, until its test ended and the other's requests were refused.
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start_with(env: &[(&str, &str)]) -> Server {
    let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::fresh(dir.path());
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gatehouse-control"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .env("GATEHOUSE_FEED_TOKEN", FEED)
        .env("GATEHOUSE_DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
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
    let mut server = server;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited: port {port} is another's"
    );
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

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout once it
/// has exited successfully.
fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args(extra)
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
    reader.join().unwrap()
}

/// The DOM of `url` after its script has run, as Chromium serializes it.
fn dump_dom(url: &str) -> String {
    let dom = run_chromium(url, &["--dump-dom".to_string()]);
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    dom
}

/// A screenshot of `url` after its script has run, at `size`, written to `path`.
fn screenshot(url: &str, path: &std::path::Path, size: (u32, u32)) {
    let _ = std::fs::remove_file(path);
    run_chromium(
        url,
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size={},{}", size.0, size.1),
            "--hide-scrollbars".to_string(),
        ],
    );
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
    /// When the refusals were made: two minutes ago.
    refused_at: u64,
}

/// A refusal by `caller` (`key:`, `user:`, `ip:` or nothing) at `at`.
fn refusal(at: u64, route: &str, code: &str, status: u16, caller: &str) -> Value {
    let mut r = json!({"at": at, "request_id": format!("req-{at}"), "method": "GET",
                       "route": route, "code": code, "status": status});
    if let Some(k) = caller.strip_prefix("key:") {
        r["key_id"] = json!(k);
    } else if let Some(u) = caller.strip_prefix("user:") {
        r["user"] = json!(u);
    } else if let Some(ip) = caller.strip_prefix("ip:") {
        r["client"] = json!(ip);
    }
    r
}

/// Three keys, one of them used; refusals: forty alike from one key, three shadow
/// "would refuse" alike from it, one with markup in its route, and one 429 each from
/// `distinct` more callers; request counts for two plans and anonymous callers, shadow
/// counts for one; two proxies at different cache versions and one that never said which
/// it has. The service's alert threshold is [`THRESHOLD`].
fn seeded(distinct: usize) -> Seeded {
    let server = start_with(&[("GATEHOUSE_ALERT_DISTINCT_REFUSED", THRESHOLD)]);
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
    let alice_caller = format!("key:{alice}");
    let used_at = used_at();
    let refused_at = now() - 120;
    let mut refusals: Vec<Value> = (0..40)
        .map(|i| {
            refusal(
                refused_at + i % 3,
                "/v1/orders/{id}",
                "RATE_LIMITED",
                429,
                &alice_caller,
            )
        })
        .collect();
    for r in &mut refusals {
        r["plan"] = json!("team");
        r["method"] = json!("POST");
    }
    refusals.extend((0..3).map(|_| {
        let mut r = refusal(
            refused_at + 1,
            "/v1/orders/{id}",
            "RATE_LIMITED",
            429,
            &alice_caller,
        );
        r["shadow"] = json!(true);
        r
    }));
    refusals.push(refusal(
        refused_at + 2,
        MARKUP_ROUTE,
        "INVALID_CREDENTIALS",
        401,
        "ip:2001:db8::9",
    ));
    refusals.extend((0..distinct).map(|i| {
        refusal(
            refused_at + 3,
            "/v1/search",
            "RATE_LIMITED",
            429,
            &format!("ip:203.0.113.{}", 10 + i),
        )
    }));
    let reports = [
        json!({
            "proxy": "envoy-east", "cache_version": feed_version,
            "refusals": refusals,
            "key_uses": [{"key_id": alice, "at": used_at}],
            "requests": [{"plan": "team", "allowed": 120, "refused": 3, "shadow_refused": 5},
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
        refused_at,
    }
}

/// The value of attribute `name` in the start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let marker = format!(" {name}=\"");
    let at = tag
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + marker.len();
    &tag[at..at + tag[at..].find('"').unwrap()]
}

/// The chart of `plan`: its `<figure>` element, whole.
fn chart<'a>(dom: &'a str, plan: &str) -> &'a str {
    let marker = format!("data-plan=\"{plan}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no chart of plan {plan:?}"));
    let open = dom[..at].rfind("<figure").unwrap();
    let end = at + dom[at..].find("</figure>").unwrap();
    &dom[open..end]
}

/// The start tag of the polyline of `series` in a chart.
fn polyline<'a>(chart: &'a str, series: &str) -> &'a str {
    let marker = format!("data-series=\"{series}\"");
    let at = chart
        .find(&marker)
        .unwrap_or_else(|| panic!("no {series} line in {chart}"));
    let open = chart[..at].rfind('<').unwrap();
    &chart[open..at + chart[at..].find('>').unwrap()]
}

#[test]
fn the_dashboard_shows_grouped_refusals_charts_the_alert_keys_and_cache_versions() {
    // One more distinct caller than the threshold, and alice: 5 callers refused with 429.
    let seeded = seeded(4);
    let port = seeded.server.port;
    let url = format!("http://127.0.0.1:{port}/#token={ADMIN}");
    let dom = dump_dom(&url);

    let (data_tag, _) = element(&dom, "data");
    assert!(
        !data_tag.contains("hidden"),
        "the data stayed hidden: {dom}"
    );
    let message = text(&dom, "message");
    assert!(message.contains("Signed in"), "{message}");

    // The alert, at the top: more distinct callers than the threshold got 429.
    let (alert_tag, _) = element(&dom, "alert");
    assert!(!alert_tag.contains("hidden"), "{alert_tag}");
    let alert = text(&dom, "alert");
    assert!(
        alert.starts_with(
            "Many distinct callers refused: 5 callers got 429 in the last 5 minutes (the \
             alert is set above 3)."
        ),
        "{alert}"
    );
    assert!(
        dom.find("id=\"alert\"").unwrap() < dom.find("id=\"data\"").unwrap(),
        "the alert is not above the data"
    );

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

    // Refusals grouped by code, route and caller, largest first: forty alike are one row.
    let alice_caller = format!("key:{}", seeded.keys[0]["id"].as_str().unwrap());
    let at = seeded.refused_at;
    let groups = rows(&dom, "groups-body");
    assert_eq!(groups.len(), 7, "{groups:?}");
    assert_eq!(
        groups[0],
        [
            "RATE_LIMITED",
            "429",
            "/v1/orders/{id}",
            &alice_caller,
            "refused",
            "40",
            &shown(at),
            &shown(at + 2)
        ]
    );
    // The shadow "would refuse" beside it, apart.
    assert_eq!(
        groups[1],
        [
            "RATE_LIMITED",
            "429",
            "/v1/orders/{id}",
            &alice_caller,
            "would refuse (shadow)",
            "3",
            &shown(at + 1),
            &shown(at + 1)
        ]
    );
    let markup = groups
        .iter()
        .find(|g| g[0] == "INVALID_CREDENTIALS")
        .unwrap();
    assert_eq!(
        markup[1..6],
        ["401", MARKUP_ROUTE, "ip:2001:db8::9", "refused", "1"]
    );
    assert_eq!(
        groups.iter().filter(|g| g[2] == "/v1/search").count(),
        4,
        "{groups:?}"
    );
    let (groups_tag, groups_inner) = element(&dom, "groups-body");
    assert!(!groups_tag.contains("hidden"));
    assert_eq!(groups_inner.matches("<tr class=\"shadow\"").count(), 1);

    // The top refused callers and routes.
    let callers = rows(&dom, "top-callers-body");
    assert_eq!(callers.len(), 6, "{callers:?}");
    assert_eq!(callers[0], [alice_caller.as_str(), "40", "3"]);
    let routes = rows(&dom, "top-routes-body");
    assert_eq!(
        routes,
        [
            ["/v1/orders/{id}", "40", "3"],
            ["/v1/search", "4", "0"],
            [MARKUP_ROUTE, "1", "0"]
        ]
    );

    // A chart per plan, of the last hour's 60 minutes, drawn from the per-minute counts:
    // allowed, refused and the shadow "would refuse" beside them.
    let team = chart(&dom, "team");
    assert!(
        unescape(team)
            .contains("team: 125 allowed, 4 refused, 5 would refuse (shadow) in the last hour"),
        "{team}"
    );
    assert!(team.contains("data-minutes=\"60\""), "{team}");
    for (series, total) in [("allowed", "125"), ("refused", "4"), ("shadow", "5")] {
        let line = polyline(team, series);
        assert_eq!(attr(line, "data-total"), total, "{line}");
        assert_eq!(attr(line, "points").split(' ').count(), 60, "{line}");
    }
    // All in the current minute (the control service's clock at each report): one peak.
    let allowed = attr(polyline(team, "allowed"), "points");
    let tops: Vec<&str> = allowed
        .split(' ')
        .filter(|p| !p.ends_with(",92.0"))
        .collect();
    assert_eq!(tops.len(), 1, "{allowed}");
    assert!(chart(&dom, "").contains("(anonymous)"));
    let free = chart(&dom, "free");
    assert_eq!(attr(polyline(free, "shadow"), "data-total"), "0");
    assert_eq!(dom.matches("<figure").count(), 3);

    // Per-plan counts over the last 24 h, both proxies' reports summed.
    assert_eq!(
        rows(&dom, "plans-body"),
        [
            ["(anonymous)", "7", "2", "0"],
            ["free", "1", "0", "0"],
            ["team", "125", "4", "5"]
        ]
    );

    // The levers: hidden while this control service has no such API (404), else listed.
    let (levers_tag, _) = element(&dom, "levers");
    if !levers_tag.contains("hidden") {
        assert_eq!(
            rows(&dom, "modes-body"),
            [["None: every rule as the policy says."]]
        );
    }

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

/// Answers `GET /v1/limits` and `GET /v1/allowlist` (with the admin token) with `limits`
/// and `allowlist`, and passes every other request to the control service on `backend`,
/// one request per connection; returns its port. The page then shows levers in force
/// whether or not the control service behind has the levers' API.
fn levers_front(backend: u16, limits: Value, allowlist: Value) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (limits, allowlist) = (limits.clone(), allowlist.clone());
            std::thread::spawn(move || front_one(conn, backend, &limits, &allowlist));
        }
    });
    port
}

fn front_one(mut client: TcpStream, backend: u16, limits: &Value, allowlist: &Value) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let lower = head.to_ascii_lowercase();
    let answer = |status: &str, body: String| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let canned = match path.as_str() {
        "/v1/limits" => Some(limits),
        "/v1/allowlist" => Some(allowlist),
        _ => None,
    };
    let response = match canned {
        Some(_)
            if !lower.contains(&format!(
                "authorization: bearer {}",
                ADMIN.to_ascii_lowercase()
            )) =>
        {
            answer("401 Unauthorized", "{}".to_string()).into_bytes()
        }
        Some(body) => answer("200 OK", body.to_string()).into_bytes(),
        None => {
            // The page's requests have no body; ask for the connection to be closed so
            // the answer ends with it.
            let kept: Vec<&str> = head
                .trim_end()
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                .collect();
            let mut upstream = TcpStream::connect(("127.0.0.1", backend)).unwrap();
            upstream
                .write_all(format!("{}\r\nconnection: close\r\n\r\n", kept.join("\r\n")).as_bytes())
                .unwrap();
            let mut out = Vec::new();
            upstream.read_to_end(&mut out).unwrap();
            out
        }
    };
    let _ = client.write_all(&response);
}

#[test]
fn the_levers_in_force_are_listed_as_text_and_the_page_kept_as_a_screenshot() {
    let seeded = seeded(4);
    let limits = json!({
        "modes": [
            {"limit": "team", "mode": "shadow", "reason": "rolling out the <b>team</b> limit",
             "updated_at": "2026-01-01T00:00:00.000Z"},
            {"limit": "webhook:stripe", "mode": "off", "reason": "stripe incident",
             "updated_at": "2026-01-01T00:01:00.000Z"}
        ],
        "overrides": [
            {"scope": "key", "id": "key_8f3a", "requests_per_minute": 20000,
             "expires_at": null, "reason": "enterprise contract",
             "updated_at": "2026-01-01T00:02:00.000Z"},
            {"scope": "tenant", "id": "tenant_1", "requests_per_minute": 30,
             "expires_at": "2026-02-01T00:00:00.000Z", "reason": "abuse case",
             "updated_at": "2026-01-01T00:03:00.000Z"}
        ]
    });
    let allowlist = json!({"allowlist": [
        {"id": "alw_7Hq2", "cidr": "203.0.113.0/24", "limit": null,
         "reason": "office <script>alert(1)</script>", "created_at": "2026-01-01T00:04:00.000Z"},
        {"id": "alw_9Kd1", "key_id": "key_8f3a", "limit": "team", "reason": "partner",
         "created_at": "2026-01-01T00:05:00.000Z"}
    ]});
    let port = levers_front(seeded.server.port, limits, allowlist);
    let url = format!("http://127.0.0.1:{port}/#token={ADMIN}");
    let dom = dump_dom(&url);
    assert!(text(&dom, "message").contains("Signed in"), "{dom}");
    let (levers_tag, _) = element(&dom, "levers");
    assert!(!levers_tag.contains("hidden"), "{levers_tag}");
    assert_eq!(
        rows(&dom, "modes-body"),
        [
            [
                "team",
                "shadow",
                "rolling out the <b>team</b> limit",
                "2026-01-01T00:00:00.000Z"
            ],
            [
                "webhook:stripe",
                "off",
                "stripe incident",
                "2026-01-01T00:01:00.000Z"
            ]
        ]
    );
    assert_eq!(
        rows(&dom, "overrides-body"),
        [
            [
                "key",
                "key_8f3a",
                "20000",
                "never",
                "enterprise contract",
                "2026-01-01T00:02:00.000Z"
            ],
            [
                "tenant",
                "tenant_1",
                "30",
                "2026-02-01T00:00:00.000Z",
                "abuse case",
                "2026-01-01T00:03:00.000Z"
            ]
        ]
    );
    assert_eq!(
        rows(&dom, "allowlist-body"),
        [
            [
                "alw_7Hq2",
                "cidr 203.0.113.0/24",
                "every rate limit",
                "office <script>alert(1)</script>",
                "2026-01-01T00:04:00.000Z"
            ],
            [
                "alw_9Kd1",
                "key key_8f3a",
                "team",
                "partner",
                "2026-01-01T00:05:00.000Z"
            ]
        ]
    );
    // Markup in a reason is text.
    assert!(
        dom.contains("office &lt;script&gt;alert(1)&lt;/script&gt;"),
        "{dom}"
    );
    assert!(
        !dom.contains("<script>alert") && !dom.contains("<b>team"),
        "{dom}"
    );
    // The rest of the page as without the front.
    assert_eq!(rows(&dom, "groups-body").len(), 7);

    // What a person sees on a laptop, kept as an artifact.
    let path = screenshot_path();
    screenshot(&url, &path, SCREEN);
    let png =
        std::fs::read(&path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: width and height, big-endian, after the signature and the chunk's header.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), SCREEN, "{}", path.display());
    assert!(
        png.len() > 20_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
}

#[test]
fn the_last_day_is_drawn_in_1440_minutes() {
    let seeded = seeded(4);
    let dom = dump_dom(&format!(
        "http://127.0.0.1:{}/#token={ADMIN}&window=day",
        seeded.server.port
    ));
    assert!(text(&dom, "message").contains("Signed in"));
    let (day, _) = element(&dom, "window-day");
    assert!(day.contains("aria-pressed=\"true\""), "{day}");
    let team = chart(&dom, "team");
    assert!(unescape(team).contains("in the last day"), "{team}");
    assert!(team.contains("data-minutes=\"1440\""), "{team}");
    for (series, total) in [("allowed", "125"), ("refused", "4"), ("shadow", "5")] {
        let line = polyline(team, series);
        assert_eq!(attr(line, "data-total"), total, "{line}");
        assert_eq!(attr(line, "points").split(' ').count(), 1440, "{line}");
    }
    assert_eq!(rows(&dom, "groups-body").len(), 7);
    // The token left the address bar; the window did not bring it back.
    assert!(!dom.contains(ADMIN));
}

#[test]
fn the_alert_stays_hidden_at_its_threshold() {
    // Alice and two more callers refused with 429: 3, not above the threshold of 3.
    let seeded = seeded(2);
    let dom = dump_dom(&format!(
        "http://127.0.0.1:{}/#token={ADMIN}",
        seeded.server.port
    ));
    assert!(text(&dom, "message").contains("Signed in"));
    let (alert_tag, _) = element(&dom, "alert");
    assert!(alert_tag.contains("hidden"), "{alert_tag}");
    assert_eq!(text(&dom, "alert"), "");
    // The refusals are still grouped and shown.
    assert_eq!(rows(&dom, "groups-body").len(), 5);
}

#[test]
fn a_wrong_token_shows_a_clear_message_and_no_data() {
    let seeded = seeded(4);
    let port = seeded.server.port;
    for token in ["wrong-token-0123456789", FEED] {
        let dom = dump_dom(&format!("http://127.0.0.1:{port}/#token={token}"));
        let (message_tag, _) = element(&dom, "message");
        assert!(message_tag.contains("class=\"error\""), "{message_tag}");
        let message = text(&dom, "message");
        assert!(message.contains("Wrong admin token"), "{message}");
        let (data_tag, _) = element(&dom, "data");
        assert!(data_tag.contains("hidden"), "data shown: {dom}");
        for body in [
            "keys-body",
            "groups-body",
            "top-callers-body",
            "top-routes-body",
            "plans-body",
            "proxies-body",
        ] {
            assert!(rows(&dom, body).is_empty(), "{body}: {dom}");
        }
        assert_eq!(text(&dom, "feed-version"), "");
        assert!(!dom.contains("<figure"), "a chart drawn: {dom}");
        for id in ["lagging", "alert"] {
            let (tag, _) = element(&dom, id);
            assert!(tag.contains("hidden"), "{tag}");
        }
        for key in &seeded.keys {
            assert!(!dom.contains(key["id"].as_str().unwrap()), "a key id shown");
        }
        assert!(!dom.contains("RATE_LIMITED") && !dom.contains("envoy-east"));
    }
}

#[test]
fn without_a_token_the_page_asks_for_one_and_shows_no_data() {
    let seeded = seeded(4);
    let dom = dump_dom(&format!("http://127.0.0.1:{}/", seeded.server.port));
    let message = text(&dom, "message");
    assert!(message.contains("Enter the admin token"), "{message}");
    let (data_tag, _) = element(&dom, "data");
    assert!(data_tag.contains("hidden"));
    assert!(rows(&dom, "keys-body").is_empty());
    assert!(!dom.contains(seeded.keys[0]["id"].as_str().unwrap()));
}
