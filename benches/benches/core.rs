//! The cost of one request decision in the pure core, against a baseline measured in the
//! same run (SHA-256 of the key alone: the least any API-key check must do). Compare
//! figures as ratios to `baseline_sha256_of_key`, which makes them portable across
//! machines; `jwt_verify/<alg>` is one full verification (parse, signature, claims).
//!
//! The JWT keys are generated here from a fixed seed, so every run measures the same
//! tokens; the signing crates are dev-dependencies of this crate only.
//!
//! Every allowed request also passes the rate limiter, so the decision benches run on a
//! clock that moves one second per reading ([`SteppingClock`]): a fixed clock would
//! exhaust the plan's burst within the first iterations and measure 429s from then on.
//! `rate_limit/*` measures the limiter alone (`check_all` on the in-memory store) and
//! `harness/*` one request through the real module in the wasmtime host
//! (`target/wasm32-wasip1/release/gatehouse.wasm`, `make wasm`), printing beside each
//! its wasmtime fuel (about one unit per wasm instruction) and host calls per request.
//! `body/webhook_hmac/*` is the webhook check on 1 KB and 64 KB bodies, `route/*` route
//! matching over 10 and 1,000 routes.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gatehouse_core::authn::api_key::{KeyHash, check_format, hash_presented_key};
use gatehouse_core::authn::jwt::{Alg, Key, KeySet, Rules, verify, verify_cached};
use gatehouse_core::authn::key_cache;
use gatehouse_core::clock::Clock;
use gatehouse_core::limit::{CallerKind, Check, OnContention, Rate, Table, check_all, prepare};
use gatehouse_core::pipeline::{Decision, decide};

use gatehouse_core::policy::Policy;
use gatehouse_core::refusal::Denial;
use gatehouse_core::request::{Presented, RequestHead};
use gatehouse_core::worker::{Caches, PresentedKeys};

use gatehouse_core::authn::AuthFailure;
use gatehouse_core::store::MemoryStore;
use gatehouse_core::time::UnixNanos;
use gatehouse_core::worker::secret_cache::SecretCache;
use gatehouse_harness::bench_fixtures::{
    HARNESS_JWT, HARNESS_JWT_SECRET, HARNESS_POLICY_JSON, measure,
};
use gatehouse_harness::host::{Harness, Request};
use std::cell::Cell;
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
/// 2026-01-01T00:00:00Z: the benches' "now".
const NOW: u64 = 1_767_225_600;
const SEC: u64 = 1_000_000_000;

/// A clock that moves one second forward each time it is read, from [`NOW`]: the team
/// plan (1,200 per minute) gives back one request every 50 ms, so every decision on it is
/// allowed however many iterations criterion runs.
struct SteppingClock(Cell<u64>);

impl SteppingClock {
    fn new() -> Self {
        SteppingClock(Cell::new(NOW * SEC))
    }
}

impl Clock for SteppingClock {
    fn now(&self) -> UnixNanos {
        let t = self.0.get() + SEC;
        self.0.set(t);
        UnixNanos(t)
    }
}

/// A store with the policy's keys and the limiter's slot table, as a configured worker
/// has them.
fn prepared_store(policy: &Policy) -> MemoryStore {
    let store = MemoryStore::default();
    #[allow(clippy::expect_used)]
    key_cache::install_policy_keys(policy, &store).expect("memory store accepts writes");
    #[allow(clippy::expect_used)]
    prepare(&store, &policy.rate_limit.table(), &[7; 32]).expect("memory store accepts writes");
    store
}

fn baseline(c: &mut Criterion) {
    c.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
}

fn api_key_decision(c: &mut Criterion) {
    #[allow(clippy::expect_used)]
    let policy = Policy::from_json(POLICY_JSON.as_bytes()).expect("bench policy is valid");
    let store = prepared_store(&policy);
    let clock = SteppingClock::new();
    let no_jwt_keys: [KeySet; 0] = [];
    let caches = Caches::default();

    let mut g = c.benchmark_group("api_key");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    g.bench_function("check_format", |b| {
        b.iter(|| check_format(black_box(DEMO_KEY)))
    });
    // The three steps of one API-key check, without routing or limits.
    g.bench_function("check_format+hash+lookup", |b| {
        b.iter(|| {
            let key = black_box(DEMO_KEY);
            check_format(key)?;
            let hash = hash_presented_key(key)?;
            key_cache::lookup(
                &policy,
                &caches.key_records,
                &store,
                &hash,
                0,
                UnixNanos(NOW * 1_000_000_000),
            )
        })
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
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: gatehouse_core::request::Presented::None,
        };
        let expected = match head.api_key {
            Presented::One(k) if k == DEMO_KEY => 200,
            _ => 401,
        };
        #[allow(clippy::panic)]
        let status = |d: &Decision| match d {
            Decision::Allow(_) => 200,
            Decision::Deny(Denial::RateLimited(r)) => panic!("decide/{name} was limited: {r:?}"),
            Decision::Deny(_) => 401,
        };
        g.bench_with_input(BenchmarkId::new("decide", name), &head, |b, head| {
            b.iter(|| {
                decide(
                    black_box(&policy),
                    &caches,
                    &no_jwt_keys,
                    black_box(head),
                    &store,
                    &clock,
                )
            })
        });
        // What was measured is what the name says: the last decision still passes.
        let last = decide(&policy, &caches, &no_jwt_keys, &head, &store, &clock);
        assert_eq!(status(&last), expected, "decide/{name}");
    }
    // The same remembered key with the operators' levers in force (issue 23): 3,000
    // entries that do not match it (overrides and allowlist entries of other keys, users
    // and networks, modes of other rules), as a busy fleet might hold.
    let levered = Caches::default();
    let levers = lever_set();
    #[allow(clippy::expect_used)]
    gatehouse_core::levers::store(&store, levers.as_bytes()).expect("levers stored");
    assert!(levered.levers.refresh(&store).is_some());
    let head = RequestHead {
        method: b"GET",
        path: b"/v1/things?page=2",
        api_key: Presented::One(DEMO_KEY),
        authorization: Presented::None,
        source_address: b"192.0.2.1:5555",
        forwarded_for: None,
        method_override: gatehouse_core::request::Presented::None,
    };
    g.bench_function("decide/valid_key_with_levers", |b| {
        b.iter(|| {
            decide(
                black_box(&policy),
                &levered,
                &no_jwt_keys,
                black_box(&head),
                &store,
                &clock,
            )
        })
    });
    assert!(matches!(
        decide(&policy, &levered, &no_jwt_keys, &head, &store, &clock),
        Decision::Allow(_)
    ));
    // `decide/valid_key` is a key seen before (its format check and SHA-256 remembered,
    // as a worker has them after a client's first request); this one sees it anew each
    // time: a policy whose memo holds nothing.
    let forgetful = Caches {
        presented_keys: PresentedKeys(SecretCache::new(0, 0)),
        ..Caches::default()
    };
    let head = RequestHead {
        method: b"GET",
        path: b"/v1/things?page=2",
        api_key: Presented::One(DEMO_KEY),
        authorization: Presented::None,
        source_address: b"10.0.0.1:5555",
        forwarded_for: None,
        method_override: gatehouse_core::request::Presented::None,
    };
    g.bench_function("decide/valid_key_first_sight", |b| {
        b.iter(|| {
            decide(
                black_box(&policy),
                &forgetful,
                &no_jwt_keys,
                black_box(&head),
                &store,
                &clock,
            )
        })
    });
    assert!(matches!(
        decide(&policy, &forgetful, &no_jwt_keys, &head, &store, &clock),
        Decision::Allow(_)
    ));
    g.finish();
}

fn per_minute(n: u32) -> Rate {
    Rate {
        requests: n,
        period_nanos: 60 * SEC,
        burst: n,
    }
}

/// The limiter alone: `check_all` on the in-memory store with the default table, against
/// SHA-256 of a key in the same group. Allowed paths move `now` one second per call so
/// the budget never runs out; refused paths keep it fixed after exhausting a limit.
fn rate_limit(c: &mut Criterion) {
    let table = Table {
        slots: 65_536,
        address_slots: 65_536,
        on_contention: OnContention::Refuse,
    };
    let store = MemoryStore::default();
    #[allow(clippy::expect_used)]
    prepare(&store, &table, &[7; 32]).expect("memory store accepts writes");
    let plan = Check {
        limit: "plan:team",
        caller: "u:user_demo",
        rate: per_minute(1200),
        kind: CallerKind::Identified,
    };
    let route = Check {
        limit: "route:export:0",
        caller: "u:user_demo",
        rate: Rate {
            requests: 3600,
            period_nanos: 3600 * SEC,
            burst: 10,
        },
        kind: CallerKind::Identified,
    };
    let mut g = c.benchmark_group("rate_limit");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    // One clock for both: a limit's tat runs ahead of it and must never be left behind.
    let mut now = NOW * SEC;
    for (name, checks) in [
        ("allowed_one_limit", vec![plan.clone()]),
        ("allowed_plan+route", vec![plan.clone(), route.clone()]),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                now += SEC;
                check_all(&store, &table, black_box(&checks), now)
            })
        });
        now += SEC;
        assert!(check_all(&store, &table, &checks, now).result.is_ok());
    }
    // Refused: a caller over its limit (nothing is written).
    let spent = Check {
        caller: "u:user_spent",
        ..plan.clone()
    };
    let at = now;
    while check_all(&store, &table, std::slice::from_ref(&spent), at)
        .result
        .is_ok()
    {}
    g.bench_function("refused_one_limit", |b| {
        b.iter(|| check_all(&store, &table, black_box(std::slice::from_ref(&spent)), at))
    });
    // Refused by the route after the plan consumed one: the plan is refunded each time,
    // so only the route's budget is ever spent.
    let both = [
        Check {
            caller: "u:user_route",
            ..plan.clone()
        },
        Check {
            caller: "u:user_route",
            ..route.clone()
        },
    ];
    while check_all(&store, &table, both.get(1..).unwrap_or_default(), at)
        .result
        .is_ok()
    {}
    g.bench_function("refused_by_route_plan_refunded", |b| {
        b.iter(|| check_all(&store, &table, black_box(&both), at))
    });
    assert!(check_all(&store, &table, &both, at).result.is_err());
    g.finish();
}

/// One request through the real module in the wasmtime host (one worker): a refusal
/// before the limiter (no key on an internal route: the floor of a request through the
/// host), an allowed request that passes the plan's limit, and one that passes the plan's
/// and a route's. The virtual clock moves one second per request so none is limited.
fn harness(c: &mut Criterion) {
    let wasm = gatehouse_harness::envoy::default_wasm();
    #[allow(clippy::panic)]
    let mut h = Harness::builder(&wasm)
        .plugin_config(HARNESS_POLICY_JSON)
        .env("GATEHOUSE_JWT_SECRET", HARNESS_JWT_SECRET)
        .time(NOW * SEC)
        .build()
        .unwrap_or_else(|e| panic!("{}: {e} (build it with `make wasm`)", wasm.display()));
    let key = std::str::from_utf8(DEMO_KEY).unwrap_or_default();
    let mut g = c.benchmark_group("harness");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    let bearer = format!("Bearer {HARNESS_JWT}");
    for (name, path, credential, expected) in [
        ("no_key_401", "/v1/things", None, 401),
        (
            "unknown_key_401",
            "/v1/things",
            Some(("x-api-key", UNKNOWN_KEY)),
            401,
        ),
        (
            "valid_key_plan_limit",
            "/v1/things",
            Some(("x-api-key", key)),
            200,
        ),
        (
            "valid_key_plan+route_limit",
            "/v1/export",
            Some(("x-api-key", key)),
            200,
        ),
        (
            "jwt_hs256_plan_limit",
            "/v1/things",
            Some(("authorization", bearer.as_str())),
            200,
        ),
    ] {
        // A request as Envoy hands it over: the pseudo-headers and a few ordinary ones.
        let request = || {
            let r = Request::get(path)
                .header("user-agent", "curl/8.5.0")
                .header("accept", "application/json")
                .header("x-request-id", "0f6a3d0e-8c1b-4c7e-9a51-2f4b6d8e0a13");
            match credential {
                Some((header, value)) => r.header(header, value),
                None => r,
            }
        };
        let send = |h: &mut Harness| {
            h.set_time(h.now_nanos() + SEC);
            h.request(request())
                .map(|o| o.status)
                .map_err(|e| format!("{e:#}"))
        };
        #[allow(clippy::panic)]
        let check = |status: Result<u16, String>| match status {
            Ok(s) if s == expected => {}
            other => panic!("harness/{name}: expected {expected}, got {other:?}"),
        };
        // What one request costs the module, deterministically: wasmtime fuel (about one
        // unit per wasm instruction) and host calls, printed beside criterion's times.
        // First sight (a caller's first request: every candidate slot read, a token
        // verified in full), then a request from the same caller (what criterion times).
        let cost = |h: &mut Harness| {
            let (status, cost) = measure(h, send);
            check(status);
            cost
        };
        let first = cost(&mut h);
        let then = cost(&mut h);
        println!("harness/{name}: first sight {first}; then {then}");
        g.bench_function(name, |b| b.iter(|| send(&mut h)));
        check(send(&mut h));
    }
    g.finish();
}

/// 3,000 levers none of which concerns the benches' requests.
fn lever_set() -> String {
    let entries = |n: usize, f: &dyn Fn(usize) -> String| -> String {
        (0..n).map(f).collect::<Vec<_>>().join(",")
    };
    format!(
        r#"{{"overrides":[{}],"modes":[{}],"allowlist":[{}]}}"#,
        entries(1000, &|i| format!(
            r#"{{"scope":"key","id":"key_{i}","requests_per_minute":100,"expires_at":null}}"#
        )),
        entries(1000, &|i| format!(
            r#"{{"limit":"rule_{i}","mode":"shadow"}}"#
        )),
        entries(1000, &|i| format!(
            r#"{{"id":"a{i}","cidr":"10.{}.{}.0/24","limit":null}}"#,
            i / 256,
            i % 256
        )),
    )
}

/// Well formed, checksum included, but in no key record: refused after the lookup.
const UNKNOWN_KEY: &str = "ghk_unknown_0000000000000000000000000000";

/// Test-only signing: a private key of each family and the public JWK the plugin loads.
mod signing {
    use super::Alg;
    use p256::ecdsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::SeedableRng;
    use rsa::traits::PublicKeyParts;
    use sha2::{Sha256, Sha384, Sha512};

    pub fn b64url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub struct Keys {
        pub hmac: Vec<u8>,
        pub rsa: rsa::RsaPrivateKey,
        pub p256: p256::ecdsa::SigningKey,
        pub p384: p384::ecdsa::SigningKey,
        pub ed25519: ed25519_dalek::SigningKey,
        rng: ChaCha20Rng,
    }

    #[allow(clippy::expect_used)]
    pub fn generate() -> Keys {
        let mut rng = ChaCha20Rng::seed_from_u64(0x6761_7465_686f_7573);
        Keys {
            hmac: (0..64u8).map(|i| i.wrapping_mul(37)).collect(),
            rsa: rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA-2048 keygen"),
            p256: p256::ecdsa::SigningKey::random(&mut rng),
            p384: p384::ecdsa::SigningKey::random(&mut rng),
            ed25519: ed25519_dalek::SigningKey::generate(&mut rng),
            rng,
        }
    }

    impl Keys {
        /// The public JWK for `alg` (an `oct` JWK for HMAC).
        pub fn public_jwk(&self, alg: Alg, kid: &str) -> String {
            let body = match alg {
                Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                    format!(r#""kty":"oct","k":"{}""#, b64url(self.secret(alg)))
                }
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 => format!(
                    r#""kty":"RSA","n":"{}","e":"{}""#,
                    b64url(&self.rsa.n().to_bytes_be()),
                    b64url(&self.rsa.e().to_bytes_be())
                ),
                Alg::ES256 => {
                    let p = self.p256.verifying_key().to_encoded_point(false);
                    let (x, y) = (p.x().map(|x| b64url(x)), p.y().map(|y| b64url(y)));
                    format!(
                        r#""kty":"EC","crv":"P-256","x":"{}","y":"{}""#,
                        x.unwrap_or_default(),
                        y.unwrap_or_default()
                    )
                }
                Alg::ES384 => {
                    let p = self.p384.verifying_key().to_encoded_point(false);
                    let (x, y) = (p.x().map(|x| b64url(x)), p.y().map(|y| b64url(y)));
                    format!(
                        r#""kty":"EC","crv":"P-384","x":"{}","y":"{}""#,
                        x.unwrap_or_default(),
                        y.unwrap_or_default()
                    )
                }
                Alg::EdDSA => format!(
                    r#""kty":"OKP","crv":"Ed25519","x":"{}""#,
                    b64url(self.ed25519.verifying_key().as_bytes())
                ),
            };
            format!(r#"{{{body},"alg":"{alg}","kid":"{kid}"}}"#)
        }

        /// The HMAC secret for `alg`: the hash length, the least the plugin accepts.
        pub fn secret(&self, alg: Alg) -> &[u8] {
            let len = match alg {
                Alg::HS384 => 48,
                Alg::HS512 => 64,
                _ => 32,
            };
            self.hmac.get(..len).unwrap_or(&self.hmac)
        }

        #[allow(clippy::expect_used)]
        pub fn sign(&mut self, alg: Alg, input: &[u8]) -> Vec<u8> {
            use hmac::{Hmac, Mac};
            let mac_err = "HMAC takes any key length";
            match alg {
                Alg::HS256 => Hmac::<Sha256>::new_from_slice(self.secret(alg))
                    .expect(mac_err)
                    .chain_update(input)
                    .finalize()
                    .into_bytes()
                    .to_vec(),
                Alg::HS384 => Hmac::<Sha384>::new_from_slice(self.secret(alg))
                    .expect(mac_err)
                    .chain_update(input)
                    .finalize()
                    .into_bytes()
                    .to_vec(),
                Alg::HS512 => Hmac::<Sha512>::new_from_slice(self.secret(alg))
                    .expect(mac_err)
                    .chain_update(input)
                    .finalize()
                    .into_bytes()
                    .to_vec(),
                Alg::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(self.rsa.clone())
                    .sign(input)
                    .to_vec(),
                Alg::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(self.rsa.clone())
                    .sign(input)
                    .to_vec(),
                Alg::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(self.rsa.clone())
                    .sign(input)
                    .to_vec(),
                Alg::PS256 => rsa::pss::SigningKey::<Sha256>::new(self.rsa.clone())
                    .sign_with_rng(&mut self.rng, input)
                    .to_vec(),
                Alg::ES256 => {
                    // gatehouse accepts only low-S signatures (one spelling per token).
                    let sig: p256::ecdsa::Signature = self.p256.sign(input);
                    sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
                }
                Alg::ES384 => {
                    let sig: p384::ecdsa::Signature = self.p384.sign(input);
                    sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
                }
                Alg::EdDSA => self.ed25519.sign(input).to_bytes().to_vec(),
            }
        }
    }
}

/// A typical access token: the identity claims the plugin maps, a jti, an hour of life.
fn token(keys: &mut signing::Keys, alg: Alg, kid: &str) -> String {
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#);
    let claims = format!(
        r#"{{"sub":"user_demo","tenant":"tenant_demo","plan":"team","iat":{NOW},"exp":{},"jti":"0f6a3d0e8c1b4c7e9a512f4b6d8e0a13"}}"#,
        NOW + 3600
    );
    let input = format!(
        "{}.{}",
        signing::b64url(header.as_bytes()),
        signing::b64url(claims.as_bytes())
    );
    let sig = keys.sign(alg, input.as_bytes());
    format!("{input}.{}", signing::b64url(&sig))
}

fn jwt_verify(c: &mut Criterion) {
    let mut keys = signing::generate();
    let rules = Rules::default();
    let mut g = c.benchmark_group("jwt_verify");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    for alg in Alg::ALL {
        let kid = format!("bench-{alg}");
        // A realistic key set: every algorithm's key, the token's chosen by kid.
        #[allow(clippy::expect_used)]
        let set = KeySet::new(
            Alg::ALL
                .iter()
                .map(|&a| {
                    let jwk = keys.public_jwk(a, &format!("bench-{a}"));
                    Key::from_jwk(jwk.as_bytes(), None).expect("the bench JWK loads")
                })
                .collect(),
        );
        let tok = token(&mut keys, alg, &kid);
        #[allow(clippy::expect_used)]
        verify(tok.as_bytes(), &set, NOW, &rules).expect("the bench token verifies");
        g.bench_function(alg.as_str(), |b| {
            b.iter(|| verify(black_box(tok.as_bytes()), &set, NOW, &rules))
        });
        // The same token again through the key set's cache of verified tokens (what the
        // request path does): a lookup and the time rules, whatever the algorithm.
        if alg == Alg::HS256 || alg == Alg::RS256 {
            #[allow(clippy::expect_used)]
            verify_cached(tok.as_bytes(), &set, NOW, &rules).expect("the bench token verifies");
            g.bench_function(format!("{}_cached", alg.as_str()), |b| {
                b.iter(|| verify_cached(black_box(tok.as_bytes()), &set, NOW, &rules))
            });
        }
    }
    g.finish();
}

fn error_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("error_body");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    g.bench_function("unauthorized", |b| {
        b.iter(|| {
            Denial::Unauthorized(AuthFailure::Missing).reply(
                black_box(UnixNanos(1_767_225_600_000_000_000)),
                black_box(b"0f6a3d0e-8c1b-4c7e-9a51-2f4b6d8e0a13"),
            )
        })
    });
    g.finish();
}

/// A 64KB webhook body verified (Stripe: one HMAC-SHA256 per secret) and a 256KB JSON
/// body checked, whole; in the plugin both run piece by piece as Envoy delivers the body.
fn webhook_and_body(c: &mut Criterion) {
    use gatehouse_core::body::webhook::{Provider, Verifier, Webhook, sign};
    let mut g = c.benchmark_group("body");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    let body: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let secret = "whsec_bench_0123456789abcdef";
    // The webhook check (header parse, HMAC-SHA256 over `t.body`, constant-time compare,
    // the tolerance window) on a 1 KB and a 64 KB body, one secret.
    for (label, len) in [("1KB", 1024usize), ("64KB", 64 * 1024)] {
        let w = Webhook {
            provider: Provider::Stripe,
            secrets_env: vec!["S0".to_string()],
            tolerance_secs: 300,
            replay_window_secs: 86_400,
            replay_slots: None,
        };
        #[allow(clippy::expect_used)]
        let v = Verifier::new(&w, "bench", |_| Some(secret.to_string()))
            .expect("bench secret is valid");
        let body = body.get(..len).unwrap_or(&body);
        let header = sign(&Provider::Stripe, secret.as_bytes(), NOW, body);
        g.bench_function(BenchmarkId::new("webhook_hmac", label), |b| {
            b.iter(|| {
                gatehouse_core::body::webhook::verify(
                    &v,
                    Presented::One(header.as_bytes()),
                    Presented::None,
                    black_box(body),
                    NOW,
                )
            })
        });
    }
    for secrets in [1usize, 2] {
        let w = Webhook {
            provider: Provider::Stripe,
            secrets_env: (0..secrets).map(|i| format!("S{i}")).collect(),
            tolerance_secs: 300,
            replay_window_secs: 86_400,
            replay_slots: None,
        };
        #[allow(clippy::expect_used)]
        let v = Verifier::new(&w, "bench", |_| Some(secret.to_string()))
            .expect("bench secret is valid");
        let header = sign(&Provider::Stripe, secret.as_bytes(), NOW, &body);
        g.bench_function(BenchmarkId::new("stripe_64KB_secrets", secrets), |b| {
            b.iter(|| {
                gatehouse_core::body::webhook::verify(
                    &v,
                    Presented::One(header.as_bytes()),
                    Presented::None,
                    black_box(&body),
                    NOW,
                )
            })
        });
    }
    let json: Vec<u8> = {
        let items: Vec<String> = (0..100)
            .map(|i| format!("{{\"id\":{i},\"name\":\"{}\"}}", "n".repeat(2500)))
            .collect();
        format!("{{\"items\":[{}]}}", items.join(",")).into_bytes()
    };
    g.bench_function("json_check_256KB", |b| {
        b.iter(|| gatehouse_core::body::json::check(black_box(&json), 256 * 1024, 100))
    });
    g.finish();
}

/// Route matching (first match wins, in policy order) over 10 and 1,000 prefix routes:
/// a request for the last route (every route tried) and one that matches none.
fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.bench_function("baseline_sha256_of_key", |b| {
        b.iter(|| KeyHash::of_key(black_box(DEMO_KEY)))
    });
    for n in [10usize, 1000] {
        let routes: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"name": "r{i}", "match": {{"path_prefix": "/v1/service{i}/", "methods": ["GET", "POST"]}}}}"#
                )
            })
            .collect();
        let json = format!(r#"{{"version": 1, "routes": [{}]}}"#, routes.join(","));
        #[allow(clippy::expect_used)]
        let policy = Policy::from_json(json.as_bytes()).expect("bench policy is valid");
        let last = format!("/v1/service{}/items/42", n - 1);
        #[allow(clippy::panic)]
        if gatehouse_core::route::find(&policy.routes, b"GET", last.as_bytes()) != Some(n - 1) {
            panic!("route/{n}: the last route should match");
        }
        g.bench_function(BenchmarkId::new("last_of", n), |b| {
            b.iter(|| {
                gatehouse_core::route::find(&policy.routes, b"GET", black_box(last.as_bytes()))
            })
        });
        g.bench_function(BenchmarkId::new("none_of", n), |b| {
            b.iter(|| gatehouse_core::route::find(&policy.routes, b"GET", black_box(b"/v2/other")))
        });
    }
    g.finish();
}

fn policy_load(c: &mut Criterion) {
    c.bench_function("policy_from_json", |b| {
        b.iter(|| Policy::from_json(black_box(POLICY_JSON.as_bytes())))
    });
}

criterion_group!(
    benches,
    baseline,
    api_key_decision,
    rate_limit,
    harness,
    jwt_verify,
    error_body,
    webhook_and_body,
    route_match,
    policy_load
);
criterion_main!(benches);
