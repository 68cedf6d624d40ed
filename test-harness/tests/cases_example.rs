//! Every `policies/*.cases.yaml` passes in the harness backend (the wasmtime host).
//! `envoy_e2e.rs` runs the same files against a real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_harness::cases::{self, BackendKind, CaseOutcome, RunOptions};
use gatehouse_harness::envoy::workspace_root;

#[test]
fn every_case_file_passes_in_the_harness() {
    let files = cases_files();
    assert!(!files.is_empty(), "no policies/*.cases.yaml found");
    let mut failures = Vec::new();
    let mut passed = 0;
    for path in files {
        let file = cases::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let results = cases::run_file(&file, BackendKind::Harness, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        for r in results {
            match &r.outcome {
                CaseOutcome::Passed => passed += 1,
                CaseOutcome::Failed(why) => failures.push(format!("{}\n{why}", r.line())),
                CaseOutcome::Skipped => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed > 0, "no case ran in the harness");
}

pub fn cases_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".cases.yaml"))
        .collect();
    files.sort();
    files
}
