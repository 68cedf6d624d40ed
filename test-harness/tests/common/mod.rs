//! Shared by the harness and Envoy suites: run every `policies/*.cases.yaml` against one
//! backend and fail with every failing case's explanation.

use gatehouse_harness::cases::{self, BackendKind, CaseOutcome, RunOptions};
use gatehouse_harness::envoy::workspace_root;

pub fn cases_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".cases.yaml"))
        .collect();
    files.sort();
    files
}

pub fn assert_every_case_file_passes(kind: BackendKind) {
    let files = cases_files();
    assert!(!files.is_empty(), "no policies/*.cases.yaml found");
    let mut failures = Vec::new();
    let mut passed = 0;
    for path in files {
        let file = cases::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let results = cases::run_file(&file, kind, &RunOptions::default())
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
    assert!(passed > 0, "no case ran in {kind}");
}
