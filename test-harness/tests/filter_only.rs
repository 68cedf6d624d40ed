//! Filter-only mode in the harness: no singleton service (as Istio's `WasmPlugin` and
//! Envoy Gateway deploy the module), three workers, the feed token passed to them; one
//! worker runs the sync under the lease in shared data (`core/src/sync/lease.rs`), and
//! another takes over when it traps or stalls. The control service is a scripted upstream
//! answering `GET /v1/cache` as `control/FEED.md` says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::api_key::KeyHash;
use gatehouse_core::sync::lease;
use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{Harness, HttpCall, Reply, Request, Route, Upstream, VmId};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const T0: u64 = 1_767_225_600;
const FEED_TOKEN: &str = "feed-token-not-the-admin-token";
const KEY: &str = "filter-only-key";
const LATE_KEY: &str = "filter-only-late-key";

fn policy() -> String {
    json!({
        "version": 1,
        "api_key": { "format": "opaque" },
        "routes": [ { "match": { "path_prefix": "/v1/" } } ],
        "feed": { "cluster": "control", "token_env": "FEED_TOKEN", "interval": "1s",
                  "wait": "1s", "staleness": "30s" }
    })
    .to_string()
}

fn key(raw: &str, id: &str) -> serde_json::Value {
    json!({ "sha256": KeyHash::of_key(raw.as_bytes()).to_hex(), "key_id": id,
            "user": format!("user_{id}"), "tenant": "tenant_1", "plan": "team",
            "expires_at": null, "active": true, "scopes": [] })
}

/// A control service whose feed holds `keys` at `version`; every poll gets it at once.
fn control(version: u64, keys: Vec<serde_json::Value>) -> Upstream {
    let body = json!({ "epoch": "e1", "version": version, "full": true, "keys": keys,
                       "users": [], "jtis": [] })
    .to_string();
    Upstream::new("control")
        .route(Route::get("/v1/cache*").reply(Reply::json(200, &body)))
        .route(Route::any().reply(Reply::json(202, "{}")))
}

fn harness() -> Harness {
    Harness::builder(default_wasm())
        .plugin_config(policy())
        .workers(3)
        .env("FEED_TOKEN", FEED_TOKEN)
        .time(T0 * 1_000_000_000)
        .upstream(control(1, vec![key(KEY, "key_a")]))
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn polls(h: &Harness) -> Vec<HttpCall> {
    h.http_calls()
        .into_iter()
        .filter(|c| c.path.starts_with("/v1/cache"))
        .collect()
}

fn pollers(calls: &[HttpCall]) -> BTreeSet<VmId> {
    calls.iter().map(|c| c.vm).collect()
}

fn accepted_everywhere(h: &mut Harness, raw: &str) -> bool {
    (0..3).all(|w| {
        h.request_on(w, Request::get("/v1/things").header("x-api-key", raw))
            .unwrap()
            .status
            == 200
    })
}

/// The worker whose polls came last.
fn holder(h: &Harness) -> VmId {
    polls(h).last().expect("a poll").vm
}

#[test]
fn one_worker_runs_the_sync_and_every_worker_reads_its_cache() {
    let mut h = harness();
    h.advance(Duration::from_secs(3)).unwrap();
    let calls = polls(&h);
    assert!(!calls.is_empty(), "{:?}", h.logs());
    assert_eq!(pollers(&calls).len(), 1, "one sync, not one per worker");
    assert!(matches!(holder(&h), VmId::Worker(_)));
    assert_eq!(
        calls[0]
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_slice()),
        Some(format!("Bearer {FEED_TOKEN}").as_bytes())
    );
    assert!(accepted_everywhere(&mut h, KEY));
    let lease = lease_in(&h);
    assert!(!lease.singleton);
    assert!(h.logs().iter().any(|l| {
        l.message
            .contains("this worker runs the sync (filter-only mode")
    }),);
    h.assert_no_trap().unwrap();
}

#[test]
fn a_trapped_holder_is_replaced_within_the_lease() {
    let mut h = harness();
    h.advance(Duration::from_secs(2)).unwrap();
    let first = holder(&h);
    h.crash(first);
    h.set_upstream(control(2, vec![key(KEY, "key_a"), key(LATE_KEY, "key_b")]));
    let crashed_at = h.now_nanos();
    // The lease lapses TTL after its last renewal; a worker takes it on its next tick
    // and polls at once.
    let bound = Duration::from_nanos(lease::TTL_NANOS) + Duration::from_millis(300);
    let mut waited = Duration::ZERO;
    while holder(&h) == first {
        assert!(waited <= bound, "no takeover within {bound:?}");
        h.advance(Duration::from_millis(50)).unwrap();
        waited += Duration::from_millis(50);
    }
    let took = h.now_nanos() - crashed_at;
    assert!(
        took >= lease::TTL_NANOS - 200_000_000,
        "taken over while the lease was valid: {took} ns"
    );
    let second = holder(&h);
    assert_ne!(second, first);
    // The new holder resumes the feed: the key added since reaches the live workers.
    h.advance(Duration::from_millis(500)).unwrap();
    for w in 0..3 {
        if VmId::Worker(w) == first {
            continue;
        }
        let r = h
            .request_on(w, Request::get("/v1/things").header("x-api-key", LATE_KEY))
            .unwrap();
        assert_eq!(r.status, 200, "worker {w}");
    }
}

#[test]
fn a_stalled_holder_loses_the_lease_and_drops_its_late_answers() {
    let mut h = harness();
    h.advance(Duration::from_secs(2)).unwrap();
    let first = holder(&h);
    h.stall(first);
    h.advance(Duration::from_nanos(lease::TTL_NANOS) + Duration::from_millis(500))
        .unwrap();
    let second = holder(&h);
    assert_ne!(second, first, "another worker took over");
    // The stalled worker comes back: answers that waited for it are dropped, its sync
    // stops, and from then on only the new holder polls.
    h.resume(first).unwrap();
    assert!(
        h.logs()
            .iter()
            .any(|l| l.message.contains("this worker's sync stops")
                || l.message.contains("this sync stops")),
        "{:?}",
        h.logs().iter().map(|l| &l.message).collect::<Vec<_>>()
    );
    let before = polls(&h).len();
    h.advance(Duration::from_secs(3)).unwrap();
    let after: Vec<HttpCall> = polls(&h).into_iter().skip(before).collect();
    assert!(!after.is_empty());
    assert_eq!(pollers(&after), BTreeSet::from([second]));
    assert!(accepted_everywhere(&mut h, KEY));
    h.assert_no_trap().unwrap();
}

/// The lease as the harness's shared data holds it.
fn lease_in(h: &Harness) -> lease::Lease {
    let (bytes, _) = h.shared_data(lease::KEY).expect("a lease entry");
    lease::Lease::decode(&bytes).expect("a readable lease")
}
