//! gatehouse: the proxy-wasm module, the HTTP filter and the sync, moving bytes between
//! Envoy and `gatehouse-core`, which decides; on native targets this crate is empty. It
//! must never panic: host calls go through `proxy_wasm::hostcalls`, never the helpers
//! that `unwrap`, and header values are read as bytes.
//! A request through the code: `docs/layout.md#a-request-through-the-code`.

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod root;
#[cfg(target_arch = "wasm32")]
mod sync;
