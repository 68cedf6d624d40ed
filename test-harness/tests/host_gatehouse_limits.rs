//! Rate limits of the real module in the harness: exact across 4 workers interleaved at
//! every host call under many seeds, the budget coming back on the virtual clock, and the
//! two paths no load test reaches on purpose: a slot collision and endless
//! compare-and-swap failures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::api_key::{KeyHash, format_key};
use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{Harness, HarnessBuilder, Request};
use serde_json::{Value, json};
use std::time::Duration;

const START_NANOS: u64 = 1_767_225_600_000_000_000;

fn key() -> String {
    format_key("ghk_lim", "Lim1t5T3st0K3yAbCdEfGh")
}

fn policy(rate_limit: Value) -> String {
    json!({
        "version": 1,
        "plans": { "tiny": { "requests_per_minute": 5 } },
        "keys": [ {
            "id": "key_lim", "sha256": KeyHash::of_key(key().as_bytes()).to_hex(),
            "user": "user_lim", "tenant": "t", "plan": "tiny"
        } ],
        "rate_limit": rate_limit,
        "routes": [
            { "name": "open", "match": { "path_prefix": "/open/" }, "audience": "external" },
            { "name": "api", "match": { "path_prefix": "/v1/" } }
        ]
    })
    .to_string()
}

fn builder(workers: usize, rate_limit: Value) -> HarnessBuilder {
    Harness::builder(default_wasm())
        .plugin_config(policy(rate_limit))
        .time(START_NANOS)
        .workers(workers)
}

fn keyed() -> Request {
    Request::get("/v1/things").header("x-api-key", key())
}

/// Runs requests on all workers at once and counts the 200s.
fn admitted(h: &mut Harness, seed: u64, per_worker: usize) -> Result<usize, String> {
    let requests = (0..h.workers() * per_worker)
        .map(|i| (i % h.workers(), keyed()))
        .collect();
    let mut ok = 0;
    for r in h.concurrently(seed, requests) {
        let out = r.map_err(|e| format!("{e:#}"))?;
        match out.status {
            200 => ok += 1,
            429 => {}
            other => return Err(format!("unexpected status {other}: {}", out.text())),
        }
    }
    Ok(ok)
}

#[test]
fn four_interleaved_workers_admit_exactly_the_plan_under_every_seed() {
    // The smallest table keeps 40 fresh harnesses quick to start.
    let b = builder(4, json!({ "slots": 1024 }));
    let explored = Harness::explore(&b, 0..40, |h, seed| {
        // 5 per minute, 12 requests at once over 4 workers: exactly 5 pass.
        let first = admitted(h, seed, 3)?;
        if first != 5 {
            return Err(format!(
                "{first} admitted of 12, expected 5 ({} turn changes)",
                h.interleavings()
            ));
        }
        if h.interleavings() == 0 {
            return Err("the workers never interleaved".into());
        }
        // One interval (12 s) later: exactly one more.
        h.advance(Duration::from_secs(12))
            .map_err(|e| e.to_string())?;
        let second = admitted(h, seed.wrapping_add(1000), 1)?;
        if second != 1 {
            return Err(format!("{second} admitted after one interval, expected 1"));
        }
        // A whole minute later: the full budget again.
        h.advance(Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let third = admitted(h, seed.wrapping_add(2000), 3)?;
        if third != 5 {
            return Err(format!("{third} admitted after a minute, expected 5"));
        }
        h.assert_no_trap().map_err(|e| e.to_string())
    })
    .unwrap_or_else(|(seed, m)| panic!("seed {seed}: {m}"));
    assert_eq!(explored, 40);
}

#[test]
fn a_full_slot_table_refuses_newcomers_and_never_touches_strangers_budgets() {
    // 1024 address slots (the minimum); anonymous callers counted per x-forwarded-for
    // address.
    let mut h = builder(
        1,
        json!({ "address_slots": 1024, "trusted_proxies": 1, "anonymous": { "requests_per_minute": 10 } }),
    )
    .build()
    .unwrap_or_else(|e| panic!("{e}"));
    let from = |i: u32| {
        Request::get("/open/x").header(
            "x-forwarded-for",
            format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
        )
    };
    let mut collisions = 0;
    let mut first_refused = None;
    for i in 0..3000u32 {
        let out = h.request(from(i)).unwrap();
        if out.status == 429 {
            collisions += 1;
            first_refused.get_or_insert(i);
            assert_eq!(out.json()["code"], "RATE_LIMITED");
            assert_eq!(out.header("retry-after"), Some("1"));
        }
    }
    assert!(collisions > 0, "3000 callers never filled 1024 slots");
    // Four candidate slots each: the first newcomer with all four taken comes after a
    // few hundred live callers (about (5 * 1024^4)^(1/5) = 354 on average).
    assert!(
        first_refused.unwrap() >= 150,
        "refused too early: {first_refused:?}"
    );
    // Workers flush their counters on their one-second tick.
    h.tick().unwrap();
    assert_eq!(
        h.metric("gatehouse.rate_limit_collisions"),
        Some(collisions)
    );
    // Early callers kept their own budgets: 10 per minute, 1 used, 9 left.
    let out = h.request(from(0)).unwrap();
    assert_eq!(out.status, 200);
    // Once the old states have lapsed (10 per minute: one interval is 6 s), newcomers get
    // slots again.
    h.advance(Duration::from_secs(10)).unwrap();
    assert_eq!(h.request(from(5000)).unwrap().status, 200);
}

/// The attack on unkeyed slots through the real module: anonymous requests from addresses
/// computed to land on a known user's slots (as they were placed before the secret),
/// then a flood that fills the address table, on two workers. The user still gets exactly
/// its plan (5 a minute), then 429 for its own budget; the placement secret is in shared
/// data, 32 bytes, and both workers use it (their counts agree).
#[test]
fn anonymous_traffic_aimed_at_a_known_user_never_refuses_that_user() {
    let mut h = builder(
        2,
        json!({ "slots": 1024, "address_slots": 1024, "trusted_proxies": 1,
                "anonymous": { "requests_per_minute": 1000 } }),
    )
    .build()
    .unwrap_or_else(|e| panic!("{e}"));
    let aimed = gatehouse_harness::attacks::addresses_aimed_at("tiny", "user_lim", 1024, 64);
    assert_eq!(aimed.len(), 64);
    let flood = (0..3000u32).map(|i| format!("192.0.{}.{}", i >> 8, i & 255));
    let mut full = 0;
    for (n, address) in aimed.into_iter().chain(flood).enumerate() {
        let out = h
            .request_on(
                n % 2,
                Request::get("/open/x").header("x-forwarded-for", address),
            )
            .unwrap();
        match out.status {
            200 => {}
            429 => full += 1,
            other => panic!("unexpected {other}: {}", out.text()),
        }
    }
    assert!(full > 0, "the flood filled the address table");
    let statuses: Vec<u16> = (0..8)
        .map(|n| h.request_on(n % 2, keyed()).unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let (secret, _) = h.shared_data("rl/secret").expect("the placement secret");
    assert_eq!(secret.len(), 32);
    assert_ne!(secret, vec![0; 32]);
    h.assert_no_trap().unwrap();
}

#[test]
fn endless_compare_and_swap_failures_follow_the_policy_and_are_counted() {
    for (policy, status) in [("refuse", 429), ("allow", 200)] {
        let mut h = builder(1, json!({ "on_contention": policy, "slots": 1024 }))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        // Every write of the next 16 loses the race (the limiter's bound).
        for nth in 1..=16 {
            h.fault("proxy_set_shared_data", nth, 8);
        }
        let out = h.request(keyed()).unwrap();
        assert_eq!(out.status, status, "on_contention: {policy}");
        h.tick().unwrap();
        assert_eq!(
            h.metric("gatehouse.rate_limit_contention"),
            Some(1),
            "{policy}"
        );
        // The next request, with no fault, is decided normally.
        assert_eq!(h.request(keyed()).unwrap().status, 200);
        h.assert_no_trap().unwrap();
    }
}
