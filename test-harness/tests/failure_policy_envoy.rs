//! The failure policy in a real Envoy: what a module trap does to requests under the
//! plugin stanza gatehouse ships (`envoy/envoy.yaml.tmpl`: `failure_policy: FAIL_RELOAD`).
//!
//! gatehouse never panics on input, so there is no request that makes it trap; the test
//! loads a fixture module (`test-harness/tests/fixtures/trap`, built by `make probe`) that
//! panics on `x-trap` into
//! exactly the same stanza. docs/operating.md "Failure policy" says what must happen:
//!
//! 1. the request that trapped gets a 503 and never reaches the upstream (closed, not open);
//! 2. Envoy counts the failure and loads a fresh VM, so a later request is served again;
//! 3. Envoy stays up throughout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use gatehouse_harness::envoy::http1::{ClientRequest, ClientResponse};
use gatehouse_harness::envoy::{Envoy, EnvoyOptions, workspace_root};
use std::time::Duration;

fn probe_wasm() -> std::path::PathBuf {
    let path = workspace_root().join("target/probe/wasm32-wasip1/release/trap.wasm");
    assert!(
        path.is_file(),
        "the probe module is not at {}: build it with `make probe`",
        path.display()
    );
    path
}

fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> ClientResponse {
    let req = ClientRequest {
        method: "GET".into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
    };
    envoy.send(&req).unwrap()
}

/// Requests Envoy sent to the upstream cluster.
fn upstream_requests(envoy: &Envoy) -> u64 {
    envoy
        .stat("cluster.upstream.upstream_rq_total")
        .unwrap()
        .unwrap_or(0)
}

#[test]
fn the_shipped_stanza_fails_closed_then_reloads() {
    let config = std::fs::read_to_string(workspace_root().join("envoy/envoy.yaml.tmpl")).unwrap();
    assert!(
        config.contains("failure_policy: FAIL_RELOAD"),
        "docs/operating.md and this test describe FAIL_RELOAD"
    );
    let envoy = Envoy::start(&EnvoyOptions {
        wasm: probe_wasm(),
        ..EnvoyOptions::new("{}")
    })
    .unwrap_or_else(|e| panic!("could not start Envoy: {e:#}"));
    let rendered = envoy.config().unwrap();
    assert!(rendered.contains("FAIL_RELOAD"), "{rendered}");

    // A healthy VM: the probe passes the request on.
    let ok = get(&envoy, "/before", &[]);
    assert_eq!(ok.status, 200, "{ok:?}");

    // The trap: a 503 from Envoy, and the upstream never sees the request.
    let seen_before = upstream_requests(&envoy);
    let trapped = get(&envoy, "/trap", &[("x-trap", "boom")]);
    assert_eq!(trapped.status, 503, "{trapped:?}");
    assert_eq!(
        upstream_requests(&envoy),
        seen_before,
        "a trapped request must not reach the upstream (fail closed)"
    );
    assert!(
        trapped.body.is_empty(),
        "Envoy's own 503: the module that would write the JSON body is the one that failed"
    );
    let log = envoy.log();
    assert!(log.contains("trap fixture: boom"), "Envoy logs the trap");

    // Reloaded: within the backoff (1 s base) a fresh VM serves requests again.
    // Up to 30 s (150 tries 200 ms apart), for a slow CI machine.
    let mut after = get(&envoy, "/after", &[]);
    for _ in 0..150 {
        if after.status == 200 {
            break;
        }
        // Until the reload, the failed VM keeps failing closed.
        assert_eq!(after.status, 503, "{after:?}");
        std::thread::sleep(Duration::from_millis(200));
        after = get(&envoy, "/after", &[]);
    }
    assert_eq!(after.status, 200, "a fresh VM serves again: {after:?}");
    assert_eq!(
        envoy.stat("wasm.gatehouse.vm_reload_success").unwrap(),
        Some(1),
        "Envoy counts the reload"
    );
    assert_eq!(
        envoy.admin_get("/ready").unwrap().status,
        200,
        "Envoy stays up"
    );
    // And the new VM fails closed again on the next trap, then recovers again.
    let again = get(&envoy, "/trap2", &[("x-trap", "again")]);
    assert_eq!(again.status, 503, "{again:?}");
}
