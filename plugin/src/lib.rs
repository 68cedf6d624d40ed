//! gatehouse: the proxy-wasm module. It moves bytes between the host and `gatehouse-core`,
//! which decides; on native targets this crate is empty.
//!
//! `on_configure` parses the policy (Envoy refuses the configuration when it is invalid,
//! and the log line says why), installs its static keys and revocations in shared data,
//! and builds the JWT keys (HMAC secrets from the environment Envoy passes to the VM).
//! With a `jwks_url`, every worker's root context ticks once a second: it picks up a
//! JWKS another worker fetched, or fetches it itself when it wins the lease
//! ([`gatehouse_core::authn::jwks_cache`]).
//! `on_http_request_headers` reads the request headers with one host call, asks
//! [`gatehouse_core::pipeline::decide`], and either forwards the request with identity headers or
//! answers with the standard error body.
//!
//! Then the body rules ([`gatehouse_core::body`]): a route with a webhook or JSON caps pauses the
//! headers and `on_http_request_body` feeds each new piece of the held body to the check
//! (Envoy hands over everything held so far; only the new bytes are copied into the VM),
//! continuing at the end of the stream (or the trailers) releases headers and body
//! together; any other route streams and is only counted. Webhook secrets are read from
//! the environment at configure time, like JWT secrets; a missing one refuses the
//! configuration.
//!
//! The same module also runs as the sync: Envoy's singleton wasm service (bootstrap
//! extension, root id [`SYNC_ROOT_ID`], same vm_id, same policy). With a `feed` section it
//! long-polls the control service on its tick, one call at a time, and writes each answer
//! into shared data ([`gatehouse_core::sync::feed`]); the filters read it there and refuse credentials
//! with 503 once the cache is older than `feed.staleness` (`on_stale: fail_closed`).
//!
//! What the filter decided is counted in the worker's own memory ([`gatehouse_core::observe::tally`],
//! shared with the worker's root context): an allowed request makes no host call for it.
//! Every worker's root context ticks once a second and flushes the counts to Envoy's stats
//! (so they lag by up to a second) and, with a feed, puts one batch of refusals, key uses
//! and per-plan counts on the `gatehouse_events` queue the sync registered; the sync merges
//! the batches and posts them to the control service ([`gatehouse_core::observe::events`]). Each refusal also
//! writes one JSON line to the log at the policy's `logging.refusals` level.
//!
//! Host calls go through `proxy_wasm::hostcalls` directly, never the trait helpers that
//! `unwrap` host results, and header values are read as bytes: a header that is not UTF-8
//! must not panic the VM (a panic kills it and Envoy then fails every request).

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod root;
#[cfg(target_arch = "wasm32")]
mod sync;
