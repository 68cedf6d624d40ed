//! `gatehouse-harness check`: every broken policy in `policies/broken/` exits 1 and names
//! the right `file:line:column`; the shipped policies and case files pass.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(file: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse-harness"))
        .arg("check")
        .arg(file)
        .current_dir(root())
        .output()
        .unwrap()
}

/// (file, line:column, a phrase the message must contain)
const BROKEN: [(&str, &str, &str); 6] = [
    (
        "policies/broken/unknown-field.yaml",
        "7:5",
        "unknown field 'audiance'",
    ),
    (
        "policies/broken/wrong-type.yaml",
        "6:26",
        "requests_per_minute",
    ),
    ("policies/broken/bad-sha256.yaml", "7:13", "sha256"),
    (
        "policies/broken/duplicate-key-id.yaml",
        "11:9",
        "duplicate key id 'key_a'",
    ),
    (
        "policies/broken/unknown-plan.yaml",
        "9:11",
        "unknown plan 'gold'",
    ),
    (
        "policies/broken/literal-jwt-secret.yaml",
        "8:15",
        "a literal secret does not belong in a policy",
    ),
];

#[test]
fn each_broken_policy_exits_1_with_file_line_and_column() {
    for (file, pos, phrase) in BROKEN {
        let out = check(file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{file}: {stdout}");
        let prefix = format!("{file}:{pos}: ");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{file}: no line starting with {prefix:?} in:\n{stdout}"));
        assert!(line.contains(phrase), "{file}: {line:?} lacks {phrase:?}");
    }
}

#[test]
fn every_broken_policy_has_an_expectation() {
    let mut on_disk: Vec<String> = std::fs::read_dir(root().join("policies/broken"))
        .unwrap()
        .map(|e| {
            format!(
                "policies/broken/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut covered: Vec<String> = BROKEN.iter().map(|(f, _, _)| f.to_string()).collect();
    covered.sort();
    assert_eq!(on_disk, covered);
}

#[test]
fn the_example_policy_and_its_cases_check_ok() {
    for file in ["policies/example.yaml", "policies/example.cases.yaml"] {
        let out = check(file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{file}: {stdout}");
        assert!(stdout.starts_with(&format!("{file}: ok")), "{stdout}");
    }
}

#[test]
fn a_case_file_with_an_unknown_field_is_refused_with_its_position() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("typo.cases.yaml");
    std::fs::write(
        &file,
        "policy: example.yaml\ncases:\n  - name: x\n    steps:\n      - request: { path: / }\n        expect: { stauts: 200 }\n",
    )
    .unwrap();
    let out = check(file.to_str().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("typo.cases.yaml:6:19: unknown field 'stauts'"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `/admin.json` is `/admin` to frameworks that read a format suffix: an external route
/// after the internal one that takes it is named, with both routes' positions.
#[test]
fn check_warns_when_an_internal_routes_extension_twin_falls_to_a_broader_external_route() {
    let dir = std::env::temp_dir().join(format!("gatehouse-twins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("twins.yaml");
    std::fs::write(
        &file,
        concat!(
            "version: 1\n",
            "routes:\n",
            "  - name: admin\n",
            "    match: { path: /admin }\n",
            "    audience: internal\n",
            "  - name: docs\n",
            "    match: { path_prefix: /docs/ }\n",
            "    audience: external\n",
            "  - name: site\n",
            "    match: { path_prefix: / }\n",
            "    audience: external\n",
        ),
    )
    .unwrap();
    let out = check(file.to_str().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning does not fail: {stdout}"
    );
    let warning = stdout
        .lines()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning in:\n{stdout}"));
    for phrase in [
        "twins.yaml:9:",
        "external route 'site' (routes[2], line 9)",
        "'/admin.json'",
        "internal route 'admin' (routes[0], line 3)",
    ] {
        assert!(warning.contains(phrase), "{phrase:?} missing in {warning}");
    }
    // With the twin claimed by an internal route first, nothing to warn about.
    std::fs::write(
        &file,
        concat!(
            "version: 1\n",
            "routes:\n",
            "  - { name: admin, match: { path: /admin }, audience: internal }\n",
            "  - { name: admin-json, match: { path: /admin.json }, audience: internal }\n",
            "  - { name: site, match: { path_prefix: / }, audience: external }\n",
        ),
    )
    .unwrap();
    let out = check(file.to_str().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("warning"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
