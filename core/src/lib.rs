//! gatehouse-core: every decision gatehouse makes, with no proxy-wasm in it.
//!
//! It takes plain values (a request head, shared data behind [`store::SharedStore`], a
//! [`clock::Clock`]) and returns an outcome, so it compiles natively and to wasm32, is
//! unit-tested without a VM, and is what the benches, the harness, the control service
//! and the fuzzers link. The `gatehouse` crate in `plugin/` is the proxy-wasm shell that
//! moves bytes between the host and this crate. The modules follow the request path;
//! docs/layout.md has the map.

pub mod authn;
pub mod body;
pub mod clock;
pub mod cors;
pub mod limit;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod refusal;
pub mod request;
pub mod response;
pub mod route;
pub mod store;
pub mod sync;
pub mod text;
pub mod time;
pub mod worker;
