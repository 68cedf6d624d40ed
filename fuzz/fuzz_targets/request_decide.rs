//! A whole request through the core: `decide` against `policies/adversarial.yaml` (API
//! keys, HS256 and RS256 JWTs, claims copied to headers, rate limits by plan and by client
//! address, a webhook route, internal routes beside external ones) with an in-memory
//! store. The fuzzer picks the method, path, credential headers (once or twice),
//! x-forwarded-for, source address, request id and clock.
//!
//! Input: `flags` (1 byte), `clock` (2 bytes, seconds after 2026-01-01), then fields split
//! on `\n`: method, path, x-api-key, authorization, x-forwarded-for, source address,
//! x-request-id, x-hub-signature-256, body (an empty or missing field is an absent
//! header). Flags: bit 0 sends the API key twice, bit 1 the authorization header twice,
//! bit 2 renders verbose errors, bit 3 declares the body's length; bits 4-7 pick the size
//! of the pieces the body arrives in (1 to 16 bytes, or whole).
//!
//! An allowed request's body then goes through the route's body rules as the filter runs
//! them (`pipeline::stream::BodyStage`: judged at the headers, each piece fed or counted,
//! then finished), the webhook route's
//! signature included.
//!
//! Whatever the input, on every decision (each request is decided twice, so caches and
//! limits see a second visit):
//! - a refusal (of the headers or the body) renders the standard body: JSON with exactly `error`, `code`, `timestamp`,
//!   `request_id` (strings), `code` the denial's, a 4xx/5xx status, JSON content type;
//! - an allowed request has an upper-case method and a matched route (the one
//!   `route::resolve` gives, with every ambiguity check); an internal route has an identity; an API-key identity was the policy's key;
//!   every identity and claim header value is header-safe;
//! - the per-worker caches stay within their bounds.
#![no_main]

use gatehouse_core::pipeline::stream::{self, BodyNext, BodyStage, Caller, Outcome};
use gatehouse_core::request::header_map;

use gatehouse_core::authn::Credential;

use gatehouse_core::authn::jwt::KeySet;
use gatehouse_core::body::webhook::Verifier;
use gatehouse_core::clock::FixedClock;
use gatehouse_core::policy::{Policy, load_yaml};
use gatehouse_core::refusal::Denial;
use gatehouse_core::request::{Presented, RequestHead};
use gatehouse_core::route::{self, Audience};
use gatehouse_core::store::{MemoryStore, SharedStore, StoreError};
use gatehouse_core::time::UnixNanos;
use gatehouse_core::worker::{Caches, PresentedKeys};
use libfuzzer_sys::fuzz_target;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// The policy's one API key (policies/example.yaml's published demo key).
const DEMO_KEY: &[u8] = b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
/// The policy's HS256 secret (ADV_JWT_SECRET in policies/adversarial.cases.yaml).
const JWT_SECRET: &str = "adversarial-test-secret-0123456789abcdef";
/// 2026-01-01T00:00:00Z: the tokens in the seeds are fresh from here until 2035.
const START: u64 = 1_767_225_600;
/// The webhook route's secret (GitHub's documented example).
const GITHUB_SECRET: &str = "It's a Secret to Everybody";

struct Fixture {
    policy: Policy,
    keys: KeySet,
    /// Shared data after the plugin configured: the policy's keys, the limiter's table.
    base: MemoryStore,
    /// Each route's webhook verifier, as the shell builds them.
    verifiers: Vec<Option<Verifier>>,
}

/// A fresh store per input without rebuilding the 1024-slot table each time: reads fall
/// through to the configured `base`, writes stay here, with Envoy's CAS rules.
struct Overlay<'a> {
    base: &'a MemoryStore,
    written: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a MemoryStore) -> Self {
        Overlay {
            base,
            written: RefCell::new(HashMap::new()),
            // Above every version the base handed out (it wrote a few thousand entries).
            next_cas: Cell::new(1 << 30),
        }
    }
}

impl SharedStore for Overlay<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match self.written.borrow().get(key) {
            Some(entry) => Some(entry.clone()),
            None => self.base.get(key),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if cas != 0
            && let Some((_, current)) = self.get(key)
            && current != cas
        {
            return Err(StoreError::CasMismatch);
        }
        let next = self.next_cas.get().wrapping_add(1).max(1 << 30);
        self.next_cas.set(next);
        self.written
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

fn fixture() -> &'static Fixture {
    // Built once; libFuzzer runs the target on one thread (the store is not `Sync`).
    thread_local!(static F: &'static Fixture = Box::leak(Box::new(build())));
    F.with(|f| *f)
}

fn build() -> Fixture {
    let source = include_str!("../../policies/adversarial.yaml");
    let mut policy = load_yaml("adversarial.yaml", source)
        .expect("policies/adversarial.yaml loads")
        .policy;
    // The smallest table the policy allows.
    policy.rate_limit.slots = 1024;
    policy.rate_limit.address_slots = 1024;
    let keys = policy
        .jwt
        .as_ref()
        .expect("the policy has a jwt section")
        .providers[0]
        .static_keys(|name| (name == "ADV_JWT_SECRET").then(|| JWT_SECRET.to_string()))
        .expect("the policy's JWT keys build");
    let base = MemoryStore::default();
    gatehouse_core::authn::key_cache::install_policy_keys(&policy, &base).expect("keys install");
    gatehouse_core::limit::prepare(&base, &policy.rate_limit.table(), &[7; 32]).expect("slots");
    let verifiers = policy
        .routes
        .iter()
        .map(|r| {
            r.webhook.as_ref().map(|w| {
                Verifier::new(w, &r.name, |_| Some(GITHUB_SECRET.to_string()))
                    .expect("the webhook verifier builds")
            })
        })
        .collect();
    Fixture {
        policy,
        keys,
        base,
        verifiers,
    }
}

fn header_safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A refusal renders the standard body: status, JSON content type, exactly the four
/// fields as strings, the denial's code, header-safe headers.
fn assert_standard(denial: Denial, now: UnixNanos, request_id: &[u8], verbose: bool) {
    let reply = denial.render(now, request_id, verbose);
    assert!(
        (400..600).contains(&reply.status),
        "status {}",
        reply.status
    );
    assert!(
        reply
            .headers
            .iter()
            .any(|(k, v)| *k == "content-type" && v == "application/json")
    );
    let body: serde_json::Value =
        serde_json::from_str(&reply.body).expect("the refusal body is JSON");
    let obj = body.as_object().expect("the refusal body is an object");
    assert_eq!(obj.len(), 4, "{body}");
    for field in ["error", "code", "timestamp", "request_id"] {
        assert!(obj.get(field).is_some_and(|v| v.is_string()), "{body}");
    }
    assert_eq!(obj["code"], denial.code(verbose).as_str());
    for (name, value) in &reply.headers {
        assert!(header_safe(value), "{name}: {value:?}");
    }
}

/// The body through the core's body stage, as the filter runs it: judged at the headers,
/// then each piece fed (held, only its new bytes) or counted (streamed), then finished.
#[allow(clippy::too_many_arguments)]
fn run_body(
    policy: &gatehouse_core::policy::Policy,
    route: usize,
    verifier: Option<&Verifier>,
    store: &Overlay<'_>,
    flags: u8,
    body: &[u8],
    signature: &[u8],
    now: u64,
) -> Result<(), Denial> {
    let length = body.len().to_string();
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
    if flags & 8 != 0 {
        pairs.push((b"content-length", length.as_bytes()));
    }
    if !signature.is_empty() {
        pairs.push((b"x-hub-signature-256", signature));
    }
    let raw = header_map::serialize(&pairs);
    let caller = Caller {
        plan: None,
        identity: None,
        credential: None,
        key_use_at: None,
        shadow_refused: false,
        shadowed: Vec::new(),
        method: b"POST".to_vec(),
        source_address: Vec::new(),
        forwarded_for: None,
    };
    let max = policy.routes[route].body.max_bytes;
    let eos = body.is_empty();
    let levers = gatehouse_core::levers::Levers::default();
    let mut next = BodyStage::start(
        policy, route, verifier, &raw, eos, b"r", caller, &levers, store, now,
    );
    let piece = match flags >> 4 {
        0 => body.len().max(1),
        n => usize::from(n),
    };
    let mut size = 0;
    let mut chunks = body.chunks(piece).peekable();
    loop {
        match next {
            BodyNext::Pass(_) => return Ok(()),
            BodyNext::Refuse(denial, _) => return Err(denial),
            BodyNext::More(stage, _) => {
                assert!(stage.seen() <= max, "past the limit");
                let Some(chunk) = chunks.next() else {
                    next = stage.finish(verifier, store, now);
                    continue;
                };
                size += chunk.len();
                // Envoy hands over the whole held body each time; the stage asks for
                // the bytes it has not seen.
                let held: Vec<u8> = body.get(..size).unwrap_or_default().to_vec();
                let new = match stage.unseen(size) {
                    Some((at, n)) => held.get(at..at + n).unwrap_or_default().to_vec(),
                    None => Vec::new(),
                };
                let last = chunks.peek().is_none();
                next = stage.on_body(size, &new, last, verifier, store, now);
            }
        }
    }
}

fn presented(field: Option<&[u8]>, twice: bool) -> Presented<'_> {
    match field {
        None | Some([]) => Presented::None,
        Some(_) if twice => Presented::Several,
        Some(v) => Presented::One(v),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, c0, c1], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let f = fixture();
    // The body is the rest, newlines and all.
    let fields: Vec<&[u8]> = rest.splitn(9, |b| *b == b'\n').collect();
    let field = |i: usize| fields.get(i).copied();
    let method = field(0).unwrap_or(b"GET");
    let path = field(1).unwrap_or(b"/");
    let request_id = field(6).unwrap_or_default();
    let signature = field(7).unwrap_or_default();
    let body = field(8).unwrap_or_default();
    let head = RequestHead {
        method,
        path,
        api_key: presented(field(2), flags & 1 != 0),
        authorization: presented(field(3), flags & 2 != 0),
        forwarded_for: field(4).filter(|v| !v.is_empty()),
        // Bit 3: an `X-HTTP-Method-Override: DELETE` beside the method.
        method_override: presented((flags & 8 != 0).then_some(&b"DELETE"[..]), false),
        source_address: field(5).unwrap_or(b"10.0.0.1:5555"),
    };
    let verbose = flags & 4 != 0;

    // A fresh store per input: what one input did to the limits never leaks into another.
    let policy = f.policy.clone();
    let store = Overlay::new(&f.base);
    let clock = FixedClock::at_secs(START + u64::from(u16::from_le_bytes([c0, c1])));
    let now = UnixNanos::from_secs(START + u64::from(u16::from_le_bytes([c0, c1])));

    let caches = Caches::default();
    for _ in 0..2 {
        let keys = std::slice::from_ref(&f.keys);
        let eos = body.is_empty();
        match stream::on_request_headers(&policy, &caches, keys, &head, eos, &store, &clock) {
            Outcome::Refuse { denial, .. } => assert_standard(denial, now, request_id, verbose),
            Outcome::Pass {
                allowed: a,
                check_body,
            } => {
                // One meaning: an upper-case method, and the route `resolve` finds with
                // every ambiguity check (path parameters only where the route takes them).
                assert!(route::is_method(method), "{method:?}");
                assert_eq!(
                    route::resolve(&policy.routes, method, path),
                    Ok(Some(a.route))
                );
                let r = &policy.routes[a.route];
                if flags & 8 != 0 {
                    assert_eq!(
                        route::resolve(&policy.routes, b"DELETE", path),
                        Ok(Some(a.route)),
                        "an override that takes another route"
                    );
                }
                let normal = route::path_only(path);
                assert!(r.path_parameters || !normal.contains(&b';'), "{path:?}");
                if r.audience == Audience::Internal {
                    assert!(
                        a.identity.is_some(),
                        "anonymous on internal route {}",
                        r.name
                    );
                }
                if a.credential == Some(Credential::ApiKey) {
                    assert_eq!(head.api_key, Presented::One(DEMO_KEY));
                }
                if let Some(identity) = &a.identity {
                    for (name, value) in identity.headers() {
                        assert!(header_safe(value), "{name}: {value:?}");
                    }
                }
                for (name, value) in &a.claim_headers {
                    assert!(name.starts_with("x-gatehouse-"), "{name}");
                    assert!(header_safe(value), "{name}: {value:?}");
                }
                let verifier = f.verifiers.get(a.route).and_then(Option::as_ref);
                if check_body
                    && let Err(denial) = run_body(
                        &policy,
                        a.route,
                        verifier,
                        &store,
                        flags,
                        body,
                        signature,
                        now.secs(),
                    )
                {
                    assert_standard(denial, now, request_id, verbose);
                }
            }
        }
    }
    assert!(caches.presented_keys.0.len() <= PresentedKeys::ENTRIES);
});
