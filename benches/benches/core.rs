//! The cost of one request decision in the pure core, against a baseline measured in the
//! same run (SHA-256 of the key alone: the least any API-key check must do).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gatehouse::api_key::KeyHash;
use gatehouse::decision::{Presented, RequestHead, decide};
use gatehouse::error::{AuthFailure, Denial};
use gatehouse::key_cache;
use gatehouse::policy::Policy;
use gatehouse::store::{FixedClock, MemoryStore};
use std::hint::black_box;

const POLICY_JSON: &str = r#"{
  "version": 1,
  "keys": [{"id": "key_demo", "sha256": "ea4d1b2a0167d9569b431fc952792261ff21c7e8da3bb4e49b66fd9bf07ef55f",
            "user": "user_demo", "tenant": "tenant_demo", "plan": "team"}],
  "routes": [
    {"name": "health", "match": {"path": "/healthz", "methods": ["GET"]}, "audience": "external"},
    {"name": "api", "match": {"path_prefix": "/v1/"}, "audience": "internal"}
  ]
}"#;
const DEMO_KEY: &[u8] = b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";

fn api_key_decision(c: &mut Criterion) {
    #[allow(clippy::expect_used)]
    let policy = Policy::from_json(POLICY_JSON.as_bytes()).expect("bench policy is valid");
    let store = MemoryStore::default();
    #[allow(clippy::expect_used)]
    key_cache::install_policy_keys(&policy, &store).expect("memory store accepts writes");
    let clock = FixedClock::at_secs(1_767_225_600);

    let mut g = c.benchmark_group("api_key_decision");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    for (name, key) in [
        ("valid_key", Presented::One(DEMO_KEY)),
        (
            "unknown_key",
            Presented::One(b"ghk_unknown_0000000000000000000000000000"),
        ),
        ("missing_key", Presented::None),
    ] {
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/things?page=2",
            api_key: key,
        };
        g.bench_with_input(BenchmarkId::new("decide", name), &head, |b, head| {
            b.iter(|| decide(black_box(&policy), black_box(head), &store, &clock))
        });
    }
    g.finish();
}

fn error_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("error_body");
    g.bench_function("unauthorized", |b| {
        b.iter(|| {
            Denial::Unauthorized(AuthFailure::Missing).reply(
                black_box(gatehouse::time::UnixNanos(1_767_225_600_000_000_000)),
                black_box(b"0f6a3d0e-8c1b-4c7e-9a51-2f4b6d8e0a13"),
            )
        })
    });
    g.finish();
}

fn policy_load(c: &mut Criterion) {
    c.bench_function("policy_from_json", |b| {
        b.iter(|| Policy::from_json(black_box(POLICY_JSON.as_bytes())))
    });
}

criterion_group!(benches, api_key_decision, error_body, policy_load);
criterion_main!(benches);
