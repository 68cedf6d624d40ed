//! The wasmtime host loads the real gatehouse module: every import it makes is either
//! implemented or linked as a trap, start-up runs, and a request completes or is refused
//! without a trap. Build the module first:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip1 -p gatehouse
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_harness::host::{BuildError, Harness, Request};
use std::path::PathBuf;

fn gatehouse_wasm() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("target/wasm32-wasip1/release/gatehouse.wasm");
    assert!(
        path.exists(),
        "{} is missing; build the plugin first:\n  cargo build --release --target wasm32-wasip1 -p gatehouse",
        path.display()
    );
    path
}

#[test]
fn gatehouse_module_loads_and_answers_a_request_without_trapping() {
    let built = Harness::builder(gatehouse_wasm())
        .plugin_config("{}")
        .build();
    let mut h = match built {
        Ok(h) => h,
        // An empty policy may be refused; that is the plugin's call, not a host failure.
        Err(BuildError::ConfigureRejected { .. }) => return,
        Err(e) => panic!("the host could not start gatehouse: {e}"),
    };
    let out = h
        .request(Request::get("/"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status >= 200, "status {}", out.status);
}

#[test]
fn malformed_policy_is_refused_at_configure_not_trapped() {
    let err = Harness::builder(gatehouse_wasm())
        .plugin_config("not json")
        .build()
        .err()
        .expect("a malformed policy must be refused");
    assert!(matches!(err, BuildError::ConfigureRejected { .. }), "{err}");
}
