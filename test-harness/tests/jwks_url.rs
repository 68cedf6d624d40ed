//! A JWKS fetched from a cluster (`jwt.jwks_url`), in the harness with a scripted
//! upstream: one fetch for all workers, refresh, refetch on an unknown `kid`, and the last
//! good JWKS kept when a fetch fails. Envoy's end-to-end stack has no JWKS server, so
//! this path is tested here only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens::{mint, public_jwk};
use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{
    CallResult, Harness, HarnessBuilder, Reply, Request, Route, Upstream,
};
use serde_json::json;
use std::time::Duration;

const START: u64 = 1_767_225_600;

fn policy() -> String {
    json!({
        "version": 1,
        "jwt": {
            "jwks_url": { "cluster": "auth", "path": "/jwks", "refresh": "10m", "min_refetch": "30s" },
            "issuers": "any",
            "audiences": "any",
            "default_tenant": "t1",
            "default_plan": "free"
        },
        "routes": [ { "match": { "path_prefix": "/v1/" } } ]
    })
    .to_string()
}

fn jwks(kids: &[(Alg, &str)]) -> String {
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .map(|(alg, kid)| serde_json::from_str(&public_jwk(*alg, Some(kid))).unwrap())
        .collect();
    json!({ "keys": keys }).to_string()
}

fn token(alg: Alg, kid: &str, now: u64) -> String {
    let claims = json!({ "sub": "user_1", "iat": now - 10, "exp": now + 3600 }).to_string();
    mint(alg, Some(kid), &claims)
}

fn builder(auth: Upstream) -> HarnessBuilder {
    Harness::builder(default_wasm())
        .plugin_config(policy())
        .time(START * 1_000_000_000)
        .workers(2)
        .upstream(auth)
}

fn status(h: &mut Harness, worker: usize, token: &str) -> u16 {
    h.request_on(
        worker,
        Request::get("/v1/x").header("authorization", format!("Bearer {token}")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
    .status
}

fn now(h: &Harness) -> u64 {
    h.now_nanos() / 1_000_000_000
}

#[test]
fn one_worker_fetches_and_every_worker_uses_the_keys() {
    let auth =
        Upstream::new("auth").route(Route::get("/jwks").reply(
            Reply::json(200, &jwks(&[(Alg::ES256, "es-1")])).delay(Duration::from_millis(20)),
        ));
    let mut h = builder(auth).build().unwrap_or_else(|e| panic!("{e}"));
    let t = token(Alg::ES256, "es-1", START);
    assert_eq!(status(&mut h, 0, &t), 401, "no keys before the first fetch");
    h.advance(Duration::from_secs(2)).unwrap();
    let calls = h.http_calls();
    assert_eq!(calls.len(), 1, "two workers, one fetch: {calls:#?}");
    assert_eq!(calls[0].result, CallResult::Responded(200));
    assert_eq!(
        (calls[0].path.as_str(), calls[0].authority.as_str()),
        ("/jwks", "auth")
    );
    assert_eq!(status(&mut h, 0, &t), 200);
    assert_eq!(status(&mut h, 1, &t), 200);
    // Fresh until the refresh interval; then fetched again, once.
    h.advance(Duration::from_secs(590)).unwrap();
    assert_eq!(h.http_calls().len(), 1);
    h.advance(Duration::from_secs(15)).unwrap();
    assert_eq!(h.http_calls().len(), 2);
    h.assert_no_trap().unwrap();
}

#[test]
fn a_failed_fetch_keeps_the_last_good_jwks() {
    let good = jwks(&[(Alg::EdDSA, "ed-1")]);
    let serving = |reply: Reply| Upstream::new("auth").route(Route::get("/jwks").reply(reply));
    let mut h = builder(serving(Reply::json(200, &good))).build().unwrap();
    h.advance(Duration::from_secs(2)).unwrap();
    let t = token(Alg::EdDSA, "ed-1", START);
    assert_eq!(status(&mut h, 0, &t), 200);

    // The JWKS server breaks in three ways in turn; each refresh fails and the keys stay.
    for (broken, result) in [
        (Reply::status(500), CallResult::Responded(500)),
        (
            Reply::json(200, "<html>maintenance</html>"),
            CallResult::Responded(200),
        ),
        (
            Reply::json(200, r#"{"keys":[]}"#),
            CallResult::Responded(200),
        ),
        (Reply::hang(), CallResult::TimedOut),
    ] {
        h.set_upstream(serving(broken));
        let before = h.http_calls().len();
        h.advance(Duration::from_secs(615)).unwrap();
        let calls = h.http_calls();
        assert!(calls.len() > before, "no refresh attempt");
        assert_eq!(calls[before].result, result);
        assert_eq!(
            status(&mut h, 1, &t),
            200,
            "the last good JWKS is still in force"
        );
    }
    let warnings = h
        .logs()
        .iter()
        .filter(|r| r.message.contains("keeping the last good JWKS"))
        .count();
    assert!(warnings >= 4, "each failure is logged: {warnings}");

    // A harness whose first fetch fails has no keys at all.
    let mut h2 = builder(serving(Reply::status(500))).build().unwrap();
    h2.advance(Duration::from_secs(2)).unwrap();
    assert_eq!(status(&mut h2, 0, &t), 401);
}

#[test]
fn an_unknown_kid_brings_a_refetch_forward_once_per_interval() {
    // The issuer rotates: the first fetch has es-1, later ones es-1 and es-2.
    let first = jwks(&[(Alg::ES256, "es-1")]);
    let auth = Upstream::new("auth").route(Route::get("/jwks").reply(Reply::json(200, &first)));
    let mut h = builder(auth).build().unwrap();
    h.advance(Duration::from_secs(2)).unwrap();
    assert_eq!(h.http_calls().len(), 1);

    let rotated = token(Alg::ES384, "es-2", now(&h));
    assert_eq!(status(&mut h, 0, &rotated), 401);
    // Within min_refetch of the last fetch: no new call yet.
    h.advance(Duration::from_secs(20)).unwrap();
    assert_eq!(h.http_calls().len(), 1);
    // After it: one refetch (not one per worker, not one per request).
    for _ in 0..5 {
        status(&mut h, 1, &rotated);
    }
    h.advance(Duration::from_secs(15)).unwrap();
    assert_eq!(h.http_calls().len(), 2, "{:#?}", h.http_calls());
    h.advance(Duration::from_secs(60)).unwrap();
    assert_eq!(
        h.http_calls().len(),
        2,
        "no refetch without a new unknown kid"
    );
}
