//! The case-file features beyond request/expect (`plugin_config`, `module`, `workers`,
//! `upstreams`, `failure_policy`; `tick`, `fault`, `worker`, `chunk` steps; `metrics`,
//! `logs`, `calls`, `trapped` expectations), the Envoy skip rule and `run --junit`,
//! through the case files in `tests/fixtures/cases/` against the probe module. Build the
//! probe first: `make probe`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use gatehouse_harness::cases::{self, BackendKind, CaseOutcome, CaseResult, RunOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cases")
}

fn require_probe() {
    let probe = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/probe/wasm32-wasip1/release/probe.wasm");
    assert!(
        probe.exists(),
        "{} is missing; build the probe fixture first with `make probe`",
        probe.display()
    );
}

fn run(file: &str, kind: BackendKind) -> Vec<CaseResult> {
    let path = fixtures().join(file);
    let loaded = cases::load(&path).unwrap_or_else(|e| panic!("{e}"));
    cases::run_file(&loaded, kind, &RunOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse-harness"))
        .args(args)
        .current_dir(fixtures())
        .output()
        .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_feature_fixture_passes_in_the_harness() {
    require_probe();
    for (file, at_least) in [
        ("probe-features.cases.yaml", 11),
        ("failure-policy.cases.yaml", 1),
        ("envoy-skip.cases.yaml", 7),
    ] {
        let results = run(file, BackendKind::Harness);
        let failures: Vec<String> = results
            .iter()
            .filter_map(|r| match &r.outcome {
                CaseOutcome::Failed(why) => Some(format!("{}\n{why}", r.line())),
                _ => None,
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let passed = results
            .iter()
            .filter(|r| r.outcome == CaseOutcome::Passed)
            .count();
        assert_eq!(passed, at_least, "{file}: every case runs in the harness");
    }
}

/// (case name, phrases its failure must contain): what was expected and what came back.
const WRONG: [(&str, &[&str]); 10] = [
    (
        "wrong metric",
        &[
            "step 1 (",
            "GET /a",
            "expected metric probe_requests = 5, got 1",
        ],
    ),
    (
        "metric never defined",
        &["expected metric probe_queue_items = 1, the module never defined it"],
    ),
    (
        "missing log line",
        &["expected a log line containing \"never logged\", none of 4 does"],
    ),
    (
        "unwanted log line",
        &[
            "expected no log line containing \"request headers\", got \"[worker 0] [info] request headers: ",
        ],
    ),
    (
        "unmatched call not listed",
        &["the module called cluster control with GET /nowhere and no route matched"],
    ),
    (
        "wrong call count",
        &["expected 0 HTTP call(s), got 1: [control GET /v1/keys (responded 200)]"],
    ),
    (
        "wrong call status",
        &["expected call 1 (control GET /v1/keys (responded 200)) status 500, got 200"],
    ),
    (
        "trap without a failure policy",
        &[
            "GET /x: proxy_on_request_headers trapped",
            "probe panic: boom",
        ],
    ),
    (
        "expected trap",
        &["advance", "expected a trap, the module did not trap"],
    ),
    (
        "wrong status after a passing step",
        &["step 2 (", "expected status 404, got 200"],
    ),
];

#[test]
fn each_wrong_expectation_fails_saying_what_was_expected_and_what_came_back() {
    require_probe();
    let results = run(
        "failing/wrong-expectations.cases.yaml",
        BackendKind::Harness,
    );
    assert_eq!(results.len(), WRONG.len(), "one expectation per case");
    for (name, phrases) in WRONG {
        let r = results
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no case named {name:?}"));
        let CaseOutcome::Failed(why) = &r.outcome else {
            panic!("{name:?} must fail, it ended {:?}", r.outcome);
        };
        for phrase in phrases {
            assert!(
                why.contains(phrase),
                "{name:?}: {phrase:?} missing in:\n{why}"
            );
        }
    }
}

#[test]
fn harness_only_cases_are_skipped_on_envoy_with_the_reason_and_envoy_is_not_started() {
    // No Envoy is needed: a file whose cases all skip Envoy never starts it.
    let results = run("envoy-skip.cases.yaml", BackendKind::Envoy);
    let expected = [
        ("advance", Some("it uses `advance` (")),
        ("tick", Some("it uses `tick` (")),
        ("fault", Some("it uses `fault` (")),
        ("worker", Some("it picks a `worker` (")),
        ("chunk", Some("it sends the body in `chunk`s (")),
        (
            "metrics",
            Some("it expects metrics, logs, calls or traps ("),
        ),
        ("harness by choice", None),
    ];
    assert_eq!(results.len(), expected.len());
    for (r, (name, note)) in results.iter().zip(expected) {
        assert_eq!(r.name, name);
        assert_eq!(r.outcome, CaseOutcome::Skipped, "{name}");
        match note {
            Some(note) => {
                let got = r.note.as_deref().unwrap_or_default();
                assert!(got.starts_with("harness only: "), "{name}: {got}");
                assert!(got.contains(note), "{name}: {got}");
                assert!(got.contains("envoy-skip.cases.yaml:"), "{name}: {got}");
            }
            None => assert_eq!(r.note, None, "{name}"),
        }
        assert!(r.line().starts_with("skip [envoy] "), "{}", r.line());
    }
    // A file-level feature makes every case harness-only.
    for r in run("probe-features.cases.yaml", BackendKind::Envoy) {
        assert_eq!(r.outcome, CaseOutcome::Skipped);
        assert!(
            r.note
                .as_deref()
                .unwrap_or_default()
                .contains("`upstreams`"),
            "{:?}",
            r.note
        );
    }
}

#[test]
fn naming_envoy_for_a_harness_only_case_is_an_error_at_its_position() {
    let dir = temp_dir("envoy-only");
    let file = dir.join("envoy.cases.yaml");
    std::fs::write(
        &file,
        "plugin_config: x\ncases:\n  - name: t\n    backends: [harness, envoy]\n    steps:\n      - tick: true\n",
    )
    .unwrap();
    let out = cli(&["check", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("envoy.cases.yaml:4:25: this case cannot run on envoy: it uses `tick` ("),
        "{stdout}"
    );
    assert!(stdout.contains("backends: [harness]"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Just enough XML checking without an XML dependency: tags balance, and the counts match.
fn assert_junit_shape(xml: &str, tests: usize, failures: usize, skipped: usize) {
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "),
        "{xml}"
    );
    assert!(xml.ends_with("</testsuites>\n"), "{xml}");
    assert!(
        xml.contains(&format!(
            "tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">"
        )),
        "{xml}"
    );
    assert_eq!(
        xml.matches("<testsuite ").count(),
        xml.matches("</testsuite>").count()
    );
    assert_eq!(xml.matches("<testcase ").count(), tests, "{xml}");
    assert_eq!(xml.matches("<failure ").count(), failures, "{xml}");
    assert_eq!(xml.matches("</failure>").count(), failures, "{xml}");
    assert_eq!(xml.matches("<skipped ").count(), skipped, "{xml}");
    // Every `<` outside markup was escaped: what is left are tags.
    for piece in xml.split('<').skip(1) {
        let tag = piece.split(['>', ' ']).next().unwrap_or_default();
        assert!(
            [
                "?xml",
                "testsuites",
                "/testsuites",
                "testsuite",
                "/testsuite",
                "testcase",
                "/testcase",
                "failure",
                "/failure",
                "skipped"
            ]
            .contains(&tag),
            "unexpected tag <{tag} in:\n{xml}"
        );
    }
}

#[test]
fn run_junit_reports_passes_and_exits_0() {
    require_probe();
    let dir = temp_dir("junit-pass");
    let junit = dir.join("report.xml");
    let out = cli(&[
        "run",
        "--junit",
        junit.to_str().unwrap(),
        "probe-features.cases.yaml",
        "failure-policy.cases.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.ends_with("12 passed, 0 failed, 0 skipped\n"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_junit_shape(&xml, 12, 0, 0);
    assert!(
        xml.contains("<testsuite name=\"probe-features.cases.yaml [harness]\" tests=\"11\""),
        "{xml}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_junit_reports_failures_escaped_and_exits_1() {
    require_probe();
    let dir = temp_dir("junit-fail");
    let junit = dir.join("report.xml");
    let out = cli(&[
        "run",
        "--junit",
        junit.to_str().unwrap(),
        "failing/wrong-expectations.cases.yaml",
        "does-not-exist.cases.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout
            .contains("FAIL [harness] failing/wrong-expectations.cases.yaml:13:5: wrong metric\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("      expected metric probe_requests = 5, got 1\n"),
        "{stdout}"
    );
    // The file that does not exist counts as one more failure.
    assert!(
        stdout.ends_with("0 passed, 11 failed, 0 skipped\n"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_junit_shape(&xml, 11, 11, 0);
    assert!(
        xml.contains("<failure message=\"step 1 (failing/wrong-expectations.cases.yaml:25:9): GET /a: expected a log line containing &quot;never logged&quot;, none of 4 does\">"),
        "{xml}"
    );
    assert!(xml.contains("<testcase name=\"(the case file)\""), "{xml}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_junit_reports_envoy_skips() {
    let dir = temp_dir("junit-skip");
    let junit = dir.join("report.xml");
    let out = cli(&[
        "run",
        "--envoy",
        "--junit",
        junit.to_str().unwrap(),
        "envoy-skip.cases.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_junit_shape(&xml, 7, 0, 7);
    assert!(
        xml.contains(
            "<skipped message=\"harness only: it uses `tick` (envoy-skip.cases.yaml:13:9)\"/>"
        ),
        "{xml}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_module_flag_overrides_the_case_files_module() {
    let out = cli(&[
        "run",
        "--module",
        "/nonexistent/other.wasm",
        "envoy-skip.cases.yaml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("/nonexistent/other.wasm"), "{stdout}");
}

#[test]
fn module_and_plugin_config_are_read_relative_to_the_case_file() {
    let file = cases::load(&fixtures().join("probe-features.cases.yaml")).unwrap();
    assert_eq!(file.plugin, cases::PluginSource::Raw("tick queue".into()));
    let module = file.module.unwrap();
    assert!(
        module.ends_with(Path::new(
            "../../../../target/probe/wasm32-wasip1/release/probe.wasm"
        )),
        "{}",
        module.display()
    );
    assert!(module.starts_with(fixtures()), "{}", module.display());
    assert_eq!(file.workers, 2);
}
