//! gatehouse: the proxy-wasm module. Everything it decides is in `gatehouse-core`; this
//! crate moves bytes between the host and the core. It is empty on native targets.

#[cfg(target_arch = "wasm32")]
mod shell;
