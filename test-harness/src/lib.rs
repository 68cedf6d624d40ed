//! gatehouse-harness: run the gatehouse proxy-wasm module the way Envoy does, without Envoy.
//!
//! - [`host`]: a wasmtime host implementing the proxy-wasm ABI 0.2.1 with Envoy's semantics.
//! - [`cases`]: YAML case files (requests and what must come back), run against a backend.
//! - [`envoy`]: the same cases against a real Envoy process (end-to-end suite, `make run`).
//! - [`bench_fixtures`]: the policy, key and token the benches and the profiling example use.
//! - [`attacks`]: what the adversarial suites compute as an attacker would.
//! - [`echo_reply`]: the reply a request can ask either echo upstream for (`x-echo-reply`).

pub mod attacks;
pub mod bench_fixtures;
pub mod cases;
pub mod echo_reply;
pub mod envoy;
pub mod host;
pub mod render;
