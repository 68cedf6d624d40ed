//! gatehouse: an API policy plugin for Envoy, built as one proxy-wasm module.
//!
//! The crate is a pure policy core plus a thin proxy-wasm shell:
//!
//! | module | what it decides |
//! | --- | --- |
//! | [`policy`] | reading and validating policies (YAML for people, JSON for Envoy) |
//! | [`route`] | which route a request belongs to |
//! | [`api_key`] | presented keys, their SHA-256, the cached key record |
//! | [`key_cache`] | the key records in shared data: install, look up |
//! | [`rate_limit`] | GCRA limits in a fixed table of shared-data slots, exact across workers |
//! | [`revocation`] | per-user token watermarks and the jti denylist in shared data |
//! | [`jwt`] | verifying JWTs (JWS compact): keys, JWKS, signatures, claims |
//! | [`feed`] | the control service's cache feed: apply an answer, tell a stale cache |
//! | [`jwks_cache`] | a JWKS fetched from a URL, shared by all workers, one fetch at a time |
//! | [`header_map`] | the host's serialized header map, read in place |
//! | [`decision`] | the request path: route, authenticate, allow or refuse |
//! | [`body`] | body rules: size limits, JSON caps, the webhook check over the body |
//! | [`secret_cache`] | per-worker memo keyed by a credential, compared in constant time |
//! | [`signature`] | webhook signatures: provider formats, HMAC, the replay window |
//! | [`slot_table`] | fixed tables of shared-data slots: placement, lookup, compare-and-swap |
//! | [`replay_cache`] | signatures already accepted, in a fixed table of shared-data slots |
//! | [`cors`] | CORS: allowed origins, preflight answers, headers on actual responses |
//! | [`response`] | the response path: security headers, CORS headers, upstream error hygiene |
//! | [`error`] | every refusal and its one JSON shape |
//! | [`tally`] | per-worker counts, refusal log lines and audit records, flushed once a second |
//! | [`events`] | the sync's side of the refusal audit: merged batches, the `POST /v1/events` body |
//! | [`store`] | the shared-data and clock seams (host-backed in wasm, fakes in tests) |
//! | [`time`] | RFC 3339 and Unix time |
//! | [`text`] | decimal text without the formatting machinery (request-path helpers) |
//! | `shell` (wasm32 only) | moves bytes between Envoy and the core; no decisions |
//!
//! The core never calls the host: it takes plain values and returns a decision, so it
//! compiles natively, is unit-tested without a VM, and is what the benches measure.

pub mod api_key;
pub mod body;
pub mod cors;
pub mod decision;
pub mod error;
pub mod events;
pub mod feed;
pub mod header_map;
pub mod jwks_cache;
pub mod jwt;
pub mod key_cache;
pub mod policy;
pub mod rate_limit;
pub mod replay_cache;
pub mod response;
pub mod revocation;
pub mod route;
pub mod secret_cache;
pub mod signature;
pub mod slot_table;
pub mod store;
pub mod tally;
pub mod text;
pub mod time;

#[cfg(target_arch = "wasm32")]
mod shell;
