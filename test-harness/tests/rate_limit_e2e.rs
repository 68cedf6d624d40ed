//! Rate limits end to end: one budget across Envoy's workers, and a limiter whose memory
//! does not grow with the number of callers.
//!
//! - A burst over one key from parallel connections through a real Envoy with four
//!   workers: exactly the plan's burst passes, every other request is a 429 with the
//!   standard body and headers, and Envoy's counter agrees with what clients saw.
//! - Many distinct anonymous callers (client address = the last `x-forwarded-for` entry,
//!   `trusted_proxies: 1`) through Envoy on keep-alive connections: Envoy's heap does not
//!   grow once the slot table is full. `benches/envoy_memory.sh` runs the same test with
//!   1,000,000 callers and reports Envoy's resident memory.
//! - The same callers through the harness, where shared data can be listed: the limiter
//!   never holds more than its `slots` entries.
//!
//! Envoy missing is a failure with the install hint, never a skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::api_key::{KeyHash, format_key};
use gatehouse_harness::envoy::http1::{self, ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, default_wasm};
use gatehouse_harness::host::{Harness, Request};
use serde_json::json;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The plan's limit in the burst test: N per minute, burst N (the default).
const PLAN_PER_MINUTE: usize = 20;
/// A fixed key in the format gatehouse issues; its SHA-256 goes in the policy.
const KEY_RANDOM: &str = "Rl8e2eBurstK3y9Q4w7Zx1";

fn key() -> String {
    format_key("ghk_e2e", KEY_RANDOM)
}

/// Anonymous callers' limit: an interval of 100 ms, so a caller's slot lapses ~1.1 s
/// after its request (with the reclaim grace) and the table turns over quickly.
const ANONYMOUS_PER_MINUTE: u64 = 600;

/// A policy with one key on a plan of [`PLAN_PER_MINUTE`], an internal `/v1/` route, and
/// an external `/public/` route whose anonymous callers are counted per client address,
/// taken from the last `x-forwarded-for` entry.
fn policy_json(slots: u32) -> String {
    json!({
        "version": 1,
        "plans": { "metered": { "requests_per_minute": PLAN_PER_MINUTE } },
        "keys": [{
            "id": "key_e2e",
            "sha256": KeyHash::of_key(key().as_bytes()).to_hex(),
            "user": "user_e2e",
            "tenant": "tenant_e2e",
            "plan": "metered"
        }],
        "rate_limit": {
            "trusted_proxies": 1,
            "slots": slots,
            "address_slots": slots,
            "anonymous": { "requests_per_minute": ANONYMOUS_PER_MINUTE }
        },
        "routes": [
            { "name": "public", "match": { "path_prefix": "/public/" }, "audience": "external" },
            { "name": "api", "match": { "path_prefix": "/v1/" } }
        ]
    })
    .to_string()
}

fn start_envoy(slots: u32, concurrency: u32) -> Envoy {
    Envoy::start(&EnvoyOptions {
        concurrency,
        ..EnvoyOptions::new(policy_json(slots))
    })
    .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"))
}

#[allow(
    clippy::disallowed_methods,
    reason = "Envoy runs on the real clock: the burst must beat the plan's interval"
)]
fn stopwatch() -> Instant {
    Instant::now()
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn admin_get(envoy: &Envoy, path: &str) -> String {
    let req = ClientRequest {
        method: "GET".into(),
        path: path.into(),
        ..ClientRequest::default()
    };
    let resp = http1::send(envoy.admin_addr(), &req, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("admin {path}: {e}"));
    assert_eq!(resp.status, 200, "admin {path}");
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// A gatehouse counter from Envoy's admin (`wasmcustom.<name>`); 0 until first bumped.
/// A gatehouse counter from Envoy's stats. Workers flush their counters on a one-second
/// tick, so a reading right after the requests waits two seconds for every worker's.
fn envoy_counter(envoy: &Envoy, name: &str) -> u64 {
    std::thread::sleep(Duration::from_secs(2));
    let stats = admin_get(envoy, "/stats?filter=gatehouse");
    let wanted = format!("wasmcustom.{name}: ");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_burst_over_one_key_on_four_workers_admits_exactly_the_plan() {
    let envoy = start_envoy(65_536, 4);
    let threads = 8;
    let per_thread = PLAN_PER_MINUTE * 4 / threads;
    let started = stopwatch();
    let responses: Vec<ClientResponse> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let req = ClientRequest {
                        method: "GET".into(),
                        path: "/v1/things".into(),
                        headers: vec![("x-api-key".into(), key().into_bytes())],
                        body: Vec::new(),
                    };
                    // `send` opens a fresh connection per request: Envoy spreads them
                    // over its workers.
                    (0..per_thread)
                        .map(|_| envoy.send(&req).unwrap_or_else(|e| panic!("{e:#}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    // GCRA gives one request back every 60 s / N; a burst slower than that could
    // legitimately see one more pass.
    let interval = Duration::from_secs(60) / u32::try_from(PLAN_PER_MINUTE).unwrap();
    assert!(
        elapsed < interval,
        "the burst took {elapsed:?}, longer than the plan's interval {interval:?}"
    );

    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&ClientResponse> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok, PLAN_PER_MINUTE, "allowed");
    assert_eq!(ok + limited.len(), responses.len(), "only 200s and 429s");
    for r in &limited {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["code"], "RATE_LIMITED", "{body}");
        assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
        let retry: u64 = header(&r.headers, "retry-after").unwrap().parse().unwrap();
        assert!((1..=3).contains(&retry), "retry-after {retry}");
        assert_eq!(
            header(&r.headers, "ratelimit-limit"),
            Some(PLAN_PER_MINUTE.to_string().as_str())
        );
        assert_eq!(header(&r.headers, "ratelimit-remaining"), Some("0"));
        let reset: u64 = header(&r.headers, "ratelimit-reset")
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset), "ratelimit-reset {reset}");
        assert!(
            header(&r.headers, "x-echo-upstream").is_none(),
            "a refused request reached the upstream"
        );
    }
    // Envoy counts every refusal, over all four workers.
    let refused = u64::try_from(limited.len()).unwrap();
    assert_eq!(envoy_counter(&envoy, "gatehouse.rate_limited"), refused);
    assert_eq!(
        envoy_counter(&envoy, "gatehouse.rate_limit_contention"),
        0,
        "compare-and-swap gave up"
    );
    eprintln!(
        "burst: {} requests on {threads} threads in {elapsed:?}: {ok} x 200, {refused} x 429",
        responses.len()
    );
}

/// The `n`-th distinct client address: 10.0.0.0/8, then 11.0.0.0/8, ...
fn address(n: u64) -> String {
    format!(
        "{}.{}.{}.{}",
        10 + (n >> 24),
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255
    )
}

/// Sends one anonymous request per identity in `ids` on `connections` keep-alive
/// connections; returns (200s, 429s).
fn anonymous_callers(
    listener: SocketAddr,
    ids: std::ops::Range<u64>,
    connections: u64,
) -> (u64, u64) {
    let (start, count) = (ids.start, ids.end - ids.start);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                let from = start + count * c / connections;
                let to = start + count * (c + 1) / connections;
                s.spawn(move || one_connection(listener, from..to))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    })
}

fn connect(listener: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(listener).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

fn one_connection(listener: SocketAddr, ids: std::ops::Range<u64>) -> (u64, u64) {
    let (mut stream, mut reader) = connect(listener);
    let (mut ok, mut limited) = (0, 0);
    let mut out = Vec::with_capacity(128);
    for n in ids {
        out.clear();
        write!(
            out,
            "GET /public/ping HTTP/1.1\r\nhost: gatehouse\r\nx-forwarded-for: {}\r\n\r\n",
            address(n)
        )
        .unwrap();
        stream.write_all(&out).unwrap();
        let head = http1::read_head(&mut reader)
            .unwrap()
            .expect("Envoy closed the connection");
        http1::read_body(&mut reader, &head, false).unwrap();
        match head.start_line.split_whitespace().nth(1) {
            Some("200") => ok += 1,
            Some("429") => limited += 1,
            _ => panic!("unexpected answer {:?}", head.start_line),
        }
        if head.wants_close() {
            (stream, reader) = connect(listener);
        }
    }
    (ok, limited)
}

/// Bytes Envoy's allocator holds (`/memory`'s `allocated`): Envoy's shared data lives
/// there, so a limiter that kept one entry per caller would show in it.
fn envoy_heap(envoy: &Envoy) -> u64 {
    let memory: serde_json::Value = serde_json::from_str(&admin_get(envoy, "/memory")).unwrap();
    memory["allocated"].as_str().unwrap().parse().unwrap()
}

/// Envoy's resident memory in KiB (`VmRSS`), found among this process's children by the
/// admin address file it was started with; `None` where /proc is not available.
fn envoy_rss_kib(envoy: &Envoy) -> Option<u64> {
    let me = std::process::id().to_string();
    let admin = envoy.admin_addr().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid != Some(me.as_str()) {
            continue;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let admin_file = args
            .iter()
            .position(|a| *a == b"--admin-address-path")
            .and_then(|i| args.get(i + 1))
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let Some(file) = admin_file else { continue };
        if std::fs::read_to_string(&file).is_ok_and(|a| a.trim() == admin) {
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        }
    }
    None
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        v.replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}"))
    })
}

/// Always run with 20,000 callers over a table of 1,024 slots (a few seconds).
/// `benches/envoy_memory.sh` sets `GATEHOUSE_MEMORY_CALLERS=1000000`,
/// `GATEHOUSE_MEMORY_WARMUP` and `GATEHOUSE_MEMORY_SLOTS=65536` and reads the report.
#[test]
fn envoy_memory_stays_flat_across_many_distinct_callers() {
    let callers = env_u64("GATEHOUSE_MEMORY_CALLERS", 20_000);
    let warmup = env_u64("GATEHOUSE_MEMORY_WARMUP", 3_000);
    let slots = env_u64("GATEHOUSE_MEMORY_SLOTS", 1_024);
    let connections = env_u64("GATEHOUSE_MEMORY_CONNECTIONS", 8);
    let samples = env_u64("GATEHOUSE_MEMORY_SAMPLES", 4).max(1);
    assert!(warmup < callers);
    let envoy = start_envoy(u32::try_from(slots).unwrap(), 2);
    let listener = envoy.listener_addr();

    let started = stopwatch();
    let (mut ok, mut limited) = anonymous_callers(listener, 0..warmup, connections);
    let (heap_warm, rss_warm) = (envoy_heap(&envoy), envoy_rss_kib(&envoy));
    eprintln!(
        "memory: {warmup} callers: heap {heap_warm} B, RSS {rss_warm:?} KiB ({:?})",
        started.elapsed()
    );
    let mut done = warmup;
    let step = (callers - warmup).div_ceil(samples);
    let ok_at_warmup = ok;
    while done < callers {
        // Let every slot lapse (the anonymous interval plus the reclaim grace) so each
        // round admits a table's worth of new callers, however fast the client is.
        std::thread::sleep(Duration::from_millis(1_200));
        let next = (done + step).min(callers);
        let (a, b) = anonymous_callers(listener, done..next, connections);
        (ok, limited, done) = (ok + a, limited + b, next);
        eprintln!(
            "memory: {done} callers: heap {} B, RSS {:?} KiB ({:?}; {ok} x 200, {limited} x 429)",
            envoy_heap(&envoy),
            envoy_rss_kib(&envoy),
            started.elapsed()
        );
    }
    let (heap_end, rss_end) = (envoy_heap(&envoy), envoy_rss_kib(&envoy));
    let elapsed = started.elapsed();
    eprintln!(
        "memory: {callers} distinct callers in {elapsed:?} ({:.0}/s), {slots} slots: \
         {ok} x 200, {limited} x 429 (collisions)",
        callers as f64 / elapsed.as_secs_f64()
    );
    eprintln!(
        "memory: heap {heap_warm} -> {heap_end} B ({:+} B, x{:.3}); RSS {rss_warm:?} -> {rss_end:?} KiB{}",
        i128::from(heap_end) - i128::from(heap_warm),
        heap_end as f64 / heap_warm as f64,
        match (rss_warm, rss_end) {
            (Some(a), Some(b)) => format!(" (x{:.3})", b as f64 / a as f64),
            _ => String::new(),
        }
    );

    assert_eq!(ok + limited, callers);
    // Refusals here are collisions (live strangers in every candidate slot), never an
    // exceeded limit: every caller sends one request.
    assert_eq!(
        envoy_counter(&envoy, "gatehouse.rate_limit_collisions"),
        limited
    );
    // The table turned over: after warm-up, each round gave most slots to new callers.
    assert!(
        ok - ok_at_warmup > samples * slots / 2,
        "only {} callers admitted after warm-up",
        ok - ok_at_warmup
    );
    // One shared-data entry per caller would cost ~100 B each (1.7 MB for the default
    // run); the table is fixed, so the heap may move by noise only (and by slots claimed
    // for the first time: a claimed slot's value is longer than a free one's).
    let per_caller_budget = (callers - warmup) * 100 / 4;
    assert!(
        heap_end < heap_warm + per_caller_budget.max(1 << 20),
        "Envoy's heap grew from {heap_warm} to {heap_end} bytes"
    );
}

/// The harness lists shared data, so there the bound is exact: 100,000 distinct
/// anonymous callers never make the limiter hold more than its slots. They live in the
/// address table (`rla/`); the identified callers' table (`rl/`) keeps its own size.
#[test]
fn the_limiter_never_holds_more_entries_than_its_slots() {
    const SLOTS: usize = 1_024;
    const CALLERS: u64 = 100_000;
    let mut h = Harness::builder(default_wasm())
        .plugin_config(policy_json(u32::try_from(SLOTS).unwrap()))
        .time(1_767_225_600_000_000_000)
        .workers(1)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut statuses = [0u64; 2];
    let mut owned = 0;
    for n in 0..CALLERS {
        // 4 ms apart: a caller's slot lapses ~1.1 s after its request (the anonymous
        // interval plus the reclaim grace), so ~275 callers are live at a time and a
        // newcomer rarely finds all its candidate slots taken.
        h.set_time(h.now_nanos() + 4_000_000);
        let out = h
            .request(Request::get("/public/ping").header("x-forwarded-for", address(n)))
            .unwrap();
        match out.status {
            200 => statuses[0] += 1,
            429 => statuses[1] += 1,
            other => panic!("caller {n}: status {other}: {}", out.text()),
        }
        if n % 10_000 == 9_999 {
            let entries = h.shared_data_keys("rla/").len();
            // The slots and the table's `ready` marker.
            assert!(entries <= SLOTS + 1, "{entries} entries after {n} callers");
            // The identified table, its marker and the placement secret: untouched.
            assert_eq!(h.shared_data_keys("rl/").len(), SLOTS + 2);
            owned = owned.max(owned_slots(&h));
        }
    }
    let table = format!("rla/{SLOTS}/");
    for k in h.shared_data_keys("rla/") {
        let rest = k
            .strip_prefix(&table)
            .unwrap_or_else(|| panic!("{k} outside the table"));
        if rest != "ready" {
            let index: usize = rest.parse().unwrap();
            assert!(index < SLOTS, "slot {k} outside the table");
        }
    }
    h.assert_no_trap().unwrap();
    h.tick().unwrap();
    eprintln!(
        "harness: {CALLERS} callers: {} x 200, {} x 429; at most {owned} of {SLOTS} slots owned",
        statuses[0], statuses[1]
    );
    assert_eq!(
        h.metric("gatehouse.rate_limit_collisions").unwrap_or(0),
        statuses[1]
    );
    // Nearly everyone got a slot, and the table was used.
    assert!(statuses[0] > CALLERS * 95 / 100, "{statuses:?}");
    assert!(owned > SLOTS / 4, "only {owned} slots owned");
}

/// Slots holding some caller's state: 16 bytes, owner tag then `tat`; a free slot's
/// owner tag is all zeros.
fn owned_slots(h: &Harness) -> usize {
    h.shared_data_keys("rla/")
        .iter()
        .filter_map(|k| h.shared_data(k))
        .filter(|(v, _)| v.len() == 16 && v.iter().take(8).any(|b| *b != 0))
        .count()
}
