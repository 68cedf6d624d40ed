//! Every `policies/*.cases.yaml` passes in the harness backend (the wasmtime host).
//! `envoy_e2e.rs` runs the same files against a real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use gatehouse_harness::cases::BackendKind;

#[test]
fn every_case_file_passes_in_the_harness() {
    common::assert_every_case_file_passes(BackendKind::Harness);
}
