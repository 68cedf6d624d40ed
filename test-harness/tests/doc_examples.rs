//! The YAML examples in `README.md`, `docs/*.md` and `test-harness/README.md` are run, so
//! an example that stops being true fails `make test` (issue 19: the harness README's
//! worked example expected a code the module had stopped answering).
//!
//! Every ```` ```yaml ```` block in those files carries a marker, an HTML comment on the
//! line before its fence (invisible when the page is rendered):
//!
//! - `<!-- example: policy NAME -->`: a whole policy, checked as `gatehouse-harness check`
//!   checks one (`gatehouse_core::policy::load_yaml`; warnings do not fail it).
//! - `<!-- example: policy-part NAME -->`: top-level sections of a policy (`cors:`,
//!   `feed:`, ...), checked inside a minimal policy: `version: 1` and, unless the block
//!   has `routes:`, one route for every path.
//! - `<!-- example: route-part NAME -->`: fields of one route (`webhook:`), checked inside
//!   a policy with one external route holding them.
//! - `<!-- example: cases NAME [dir=DIR] [policy=REF] -->`: a whole case file, run in the
//!   harness against the built module (`$GATEHOUSE_WASM`, else the release build) as
//!   `gatehouse-harness run` runs one. Relative paths in it resolve from `DIR` (a directory
//!   of the repository) as if the file were there. `policy=REF` supplies the `policy:`
//!   line the block leaves out: `REF` is another example's `NAME`, or a path in the
//!   repository.
//! - `<!-- example: steps NAME policy=REF -->`: the steps of one case (a YAML list), run
//!   as a case file with that one case.
//! - `<!-- example: not-run REASON -->`: YAML that is neither a policy nor a case file
//!   (Envoy's configuration); said in so many words, so that no example is left out by
//!   accident.
//!
//! A yaml block without a marker, a marker not followed by a fence, an unknown kind or
//! attribute, a name used twice, a `policy=` that names nothing, and a case example in
//! which no case passed all fail the test, and so does finding no policy or no case
//! example at all.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use gatehouse_harness::cases::{self, BackendKind, CaseOutcome, RunOptions};
use gatehouse_harness::envoy::workspace_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Policy,
    PolicyPart,
    RoutePart,
    Cases,
    Steps,
    NotRun,
}

#[derive(Clone, Debug)]
struct Example {
    /// `file:line` of the fence's first content line.
    at: String,
    kind: Kind,
    name: String,
    attrs: BTreeMap<String, String>,
    /// The block's text, its fence's indentation removed.
    text: String,
}

const MARKER: &str = "<!-- example:";

/// The markdown files whose examples are run.
fn doc_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md"), root.join("test-harness/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is there")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no docs/*.md found");
    files.extend(docs);
    files
}

fn parse_marker(line: &str) -> Result<(Kind, String, BTreeMap<String, String>), String> {
    let inner = line
        .trim()
        .strip_prefix(MARKER)
        .and_then(|s| s.strip_suffix("-->"))
        .ok_or("a marker is one line: `<!-- example: KIND NAME [key=value ...] -->`")?;
    let mut words = inner.split_whitespace();
    let kind = match words.next() {
        Some("policy") => Kind::Policy,
        Some("policy-part") => Kind::PolicyPart,
        Some("route-part") => Kind::RoutePart,
        Some("cases") => Kind::Cases,
        Some("steps") => Kind::Steps,
        Some("not-run") => {
            let reason: Vec<&str> = words.collect();
            if reason.is_empty() {
                return Err("`not-run` needs a reason".into());
            }
            return Ok((Kind::NotRun, reason.join(" "), BTreeMap::new()));
        }
        other => {
            return Err(format!(
                "unknown kind {other:?}; expected one of [policy, policy-part, route-part, cases, steps, not-run]"
            ));
        }
    };
    let name = words.next().ok_or("an example needs a NAME")?;
    if name.contains('=') || name.contains('/') {
        return Err(format!("{name:?} is not a NAME"));
    }
    let allowed: &[&str] = match kind {
        Kind::Cases => &["dir", "policy"],
        Kind::Steps => &["policy"],
        _ => &[],
    };
    let mut attrs = BTreeMap::new();
    for word in words {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("{word:?} is not key=value"))?;
        if !allowed.contains(&key) {
            return Err(format!(
                "unknown attribute {key:?}; expected one of {allowed:?}"
            ));
        }
        attrs.insert(key.to_string(), value.to_string());
    }
    if kind == Kind::Steps && !attrs.contains_key("policy") {
        return Err("`steps` needs policy=REF".into());
    }
    Ok((kind, name.to_string(), attrs))
}

/// The marked blocks of one markdown text, and an error for everything malformed.
fn extract(file: &str, source: &str) -> (Vec<Example>, Vec<String>) {
    let lines: Vec<&str> = source.lines().collect();
    let mut examples = Vec::new();
    let mut errors = Vec::new();
    let mut pending: Option<(usize, Kind, String, BTreeMap<String, String>)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.starts_with(MARKER) {
            if let Some((at, ..)) = pending.take() {
                errors.push(format!("{file}:{}: marker not followed by a fence", at + 1));
            }
            match parse_marker(line) {
                Ok((kind, name, attrs)) => pending = Some((i, kind, name, attrs)),
                Err(e) => errors.push(format!("{file}:{}: {e}", i + 1)),
            }
            i += 1;
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = line.len() - trimmed.len();
            let end = (i + 1..lines.len())
                .find(|&j| lines[j].trim_start().starts_with("```"))
                .unwrap_or(lines.len());
            let text: String = lines[i + 1..end]
                .iter()
                .map(|l| format!("{}\n", l.get(indent..).unwrap_or(l.trim_start())))
                .collect();
            let is_yaml = info.trim() == "yaml";
            match pending.take() {
                Some((_, kind, name, attrs)) => {
                    if kind != Kind::NotRun && !is_yaml {
                        errors.push(format!(
                            "{file}:{}: example {name:?} is not a ```yaml block",
                            i + 1
                        ));
                    }
                    examples.push(Example {
                        at: format!("{file}:{}", i + 2),
                        kind,
                        name,
                        attrs,
                        text,
                    });
                }
                None if is_yaml => errors.push(format!(
                    "{file}:{}: a yaml block without a marker; mark it `<!-- example: ... -->` (see test-harness/tests/doc_examples.rs)",
                    i + 1
                )),
                None => {}
            }
            i = end + 1;
            continue;
        }
        if let Some((at, ..)) = pending.take_if(|_| !line.trim().is_empty()) {
            errors.push(format!("{file}:{}: marker not followed by a fence", at + 1));
        }
        i += 1;
    }
    if let Some((at, ..)) = pending {
        errors.push(format!("{file}:{}: marker not followed by a fence", at + 1));
    }
    (examples, errors)
}

fn has_top_level_key(text: &str, key: &str) -> bool {
    text.lines().any(|l| l.starts_with(&format!("{key}:")))
}

fn indented(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("{:by$}{l}\n", "")
            }
        })
        .collect()
}

/// The policy an example stands for, as a whole file.
fn policy_text(example: &Example) -> String {
    match example.kind {
        Kind::Policy => example.text.clone(),
        Kind::PolicyPart => {
            let mut text = String::new();
            if !has_top_level_key(&example.text, "version") {
                text.push_str("version: 1\n");
            }
            text.push_str(&example.text);
            if !has_top_level_key(&example.text, "routes") {
                text.push_str("routes:\n  - { name: all, match: { path_prefix: / } }\n");
            }
            text
        }
        Kind::RoutePart => format!(
            "version: 1\nroutes:\n  - name: {}\n    match: {{ path_prefix: / }}\n    audience: external\n{}",
            example.name,
            indented(&example.text, 4)
        ),
        _ => unreachable!("not a policy"),
    }
}

fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

#[test]
fn every_yaml_example_in_the_docs_is_checked_or_run() {
    let root = workspace_root();
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doc_examples");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();

    let mut examples = Vec::new();
    let mut errors = Vec::new();
    for path in doc_files() {
        let file = path.strip_prefix(&root).unwrap().display().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        let (found, bad) = extract(&file, &source);
        examples.extend(found);
        errors.extend(bad);
    }
    let mut names = BTreeSet::new();
    for e in examples.iter().filter(|e| e.kind != Kind::NotRun) {
        if !names.insert(e.name.clone()) {
            errors.push(format!("{}: the name {:?} is used twice", e.at, e.name));
        }
    }

    // Policies first: case examples may name them.
    let mut policy_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &examples {
        let label = match e.kind {
            Kind::Policy | Kind::PolicyPart | Kind::RoutePart => "policy",
            Kind::Cases | Kind::Steps => "cases",
            Kind::NotRun => "not-run",
        };
        *counts.entry(label).or_default() += 1;
        if label != "policy" {
            continue;
        }
        let text = policy_text(e);
        let shown = format!("{} ({})", e.at, e.name);
        match gatehouse_core::policy::load_yaml(&shown, &text) {
            Ok(_) => {
                let file = scratch.join(format!("{}.yaml", e.name));
                std::fs::write(&file, &text).unwrap();
                policy_files.insert(e.name.clone(), file);
            }
            Err(why) => errors.push(format!(
                "{}: policy example {:?} does not check (lines counted from the {}):\n{why}\n--- as checked:\n{text}",
                e.at,
                e.name,
                if e.kind == Kind::Policy { "block" } else { "wrapped policy below" },
            )),
        }
    }

    for e in examples
        .iter()
        .filter(|e| matches!(e.kind, Kind::Cases | Kind::Steps))
    {
        let policy_line = match e.attrs.get("policy") {
            None => None,
            Some(reference) => {
                let path = if reference.contains('/') {
                    root.join(reference)
                } else if let Some(p) = policy_files.get(reference) {
                    p.clone()
                } else {
                    errors.push(format!(
                        "{}: policy={reference} names no policy example (that checks) and no file",
                        e.at
                    ));
                    continue;
                };
                if !path.exists() {
                    errors.push(format!("{}: policy={reference}: no such file", e.at));
                    continue;
                }
                if has_top_level_key(&e.text, "policy")
                    || has_top_level_key(&e.text, "plugin_config")
                {
                    errors.push(format!(
                        "{}: the block has its own policy; drop policy= from the marker",
                        e.at
                    ));
                    continue;
                }
                Some(format!("policy: {}\n", path.display()))
            }
        };
        let source = match e.kind {
            Kind::Cases => format!("{}{}", policy_line.unwrap_or_default(), e.text),
            _ => format!(
                "{}cases:\n  - name: {}\n    steps:\n{}",
                policy_line.unwrap_or_default(),
                e.name,
                indented(&dedent(&e.text), 6)
            ),
        };
        let dir: PathBuf = match e.attrs.get("dir") {
            Some(d) => root.join(d),
            None => scratch.clone(),
        };
        if !dir.is_dir() {
            errors.push(format!(
                "{}: dir={}: no such directory",
                e.at,
                dir.display()
            ));
            continue;
        }
        let shown = format!("{} ({})", e.at, e.name);
        let file = match cases::parse::parse(&shown, Path::new(&dir), &source) {
            Ok(f) => f,
            Err(why) => {
                errors.push(format!(
                    "{}: case example {:?} does not parse:\n{why}\n--- as parsed:\n{source}",
                    e.at, e.name
                ));
                continue;
            }
        };
        let results = match cases::run_file(&file, BackendKind::Harness, &RunOptions::default()) {
            Ok(r) => r,
            Err(why) => {
                errors.push(format!("{}: {:?} does not run: {why:#}", e.at, e.name));
                continue;
            }
        };
        let mut passed = 0;
        for r in &results {
            match &r.outcome {
                CaseOutcome::Passed => passed += 1,
                CaseOutcome::Failed(why) => errors.push(format!("{}\n{why}", r.line())),
                CaseOutcome::Skipped => {}
            }
        }
        if passed == 0 {
            errors.push(format!("{}: no case of {:?} passed", e.at, e.name));
        }
    }

    for kind in ["policy", "cases"] {
        if counts.get(kind).copied().unwrap_or(0) == 0 {
            errors.push(format!(
                "no `{kind}` example found in the docs: are the markers still read?"
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

// The extractor itself: what it must refuse, so that the test above cannot pass by finding
// nothing.

#[test]
fn a_yaml_block_without_a_marker_is_an_error() {
    let (found, errors) = extract("x.md", "text\n\n```yaml\nversion: 1\n```\n");
    assert!(found.is_empty());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("x.md:3: a yaml block without a marker"));
}

#[test]
fn a_marker_must_be_followed_by_a_fence() {
    let (_, errors) = extract("x.md", "<!-- example: policy a -->\nsome text\n");
    assert_eq!(errors, vec!["x.md:1: marker not followed by a fence"]);
    let (_, errors) = extract("x.md", "<!-- example: policy a -->\n");
    assert_eq!(errors, vec!["x.md:1: marker not followed by a fence"]);
}

#[test]
fn malformed_markers_are_errors() {
    for (marker, expected) in [
        ("<!-- example: polcy a -->", "unknown kind"),
        ("<!-- example: policy -->", "needs a NAME"),
        ("<!-- example: cases a colour=red -->", "unknown attribute"),
        ("<!-- example: steps a -->", "needs policy=REF"),
        ("<!-- example: not-run -->", "needs a reason"),
        ("<!-- example: policy a", "a marker is one line"),
    ] {
        let (found, errors) = extract("x.md", &format!("{marker}\n```yaml\nversion: 1\n```\n"));
        assert!(found.is_empty(), "{marker}");
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{marker}: {errors:?}"
        );
    }
}

#[test]
fn marked_blocks_are_found_with_their_indentation_removed() {
    let source = "intro\n\n<!-- example: steps s policy=p -->\n  ```yaml\n    - request: { path: / }\n  ```\n\n<!-- example: not-run Envoy's configuration -->\n```yaml\nadmin: {}\n```\n\n```sh\nmake test\n```\n";
    let (found, errors) = extract("x.md", source);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].kind, Kind::Steps);
    assert_eq!(found[0].at, "x.md:5");
    assert_eq!(found[0].text, "  - request: { path: / }\n");
    assert_eq!(found[0].attrs["policy"], "p");
    assert_eq!(found[1].kind, Kind::NotRun);
}

#[test]
fn a_policy_part_is_checked_inside_a_minimal_policy() {
    let part = Example {
        at: "x.md:1".into(),
        kind: Kind::PolicyPart,
        name: "p".into(),
        attrs: BTreeMap::new(),
        text: "cors:\n  allowed_origins: [https://app.example.com]\n".into(),
    };
    let text = policy_text(&part);
    assert!(
        gatehouse_core::policy::load_yaml("p", &text).is_ok(),
        "{text}"
    );
    let broken = Example {
        text: "cors:\n  allowed_origin: [https://app.example.com]\n".into(),
        ..part
    };
    assert!(gatehouse_core::policy::load_yaml("p", &policy_text(&broken)).is_err());
}

/// The values of `"code": "..."` in a text (JSON as the docs write it, spaced or not).
fn json_codes(text: &str) -> Vec<String> {
    let mut codes = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"code\"") {
        rest = &rest[at + "\"code\"".len()..];
        let value = rest.trim_start().strip_prefix(':').map(str::trim_start);
        if let Some(v) = value.and_then(|v| v.strip_prefix('"'))
            && let Some(end) = v.find('"')
        {
            codes.push(v[..end].to_string());
        }
    }
    codes
}

/// The issue 19 bug in a form the case runner cannot see: a refusal body or a table row in
/// the docs naming a code that neither the module (`Code`: the refusals and `Code::OTHERS`) nor
/// the bootstrap's `local_reply_config` (envoy/envoy.yaml.tmpl) answers.
#[test]
fn every_refusal_code_the_docs_show_is_one_a_client_can_get() {
    let root = workspace_root();
    let mut known: BTreeSet<String> = gatehouse_core::refusal::Code::REFUSALS
        .iter()
        .chain(&gatehouse_core::refusal::Code::OTHERS)
        .map(|c| c.to_string())
        .collect();
    let template = std::fs::read_to_string(root.join("envoy/envoy.yaml.tmpl")).unwrap();
    for line in template.lines() {
        if let Some(code) = line.trim().strip_prefix("code: ") {
            known.insert(code.trim().to_string());
        }
    }

    let mut shown = 0;
    let mut unknown = Vec::new();
    for path in doc_files() {
        let file = path.strip_prefix(&root).unwrap().display().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        let mut in_json = false;
        for (n, line) in source.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") {
                in_json = trimmed == "```json";
                continue;
            }
            let mut codes = if in_json {
                json_codes(line)
            } else {
                Vec::new()
            };
            // A refusal table row: | 401 | `MISSING_CREDENTIALS` | ...
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() > 3
                && cells[1].len() == 3
                && cells[1].bytes().all(|b| b.is_ascii_digit())
                && let Some(code) = cells[2].strip_prefix('`').and_then(|c| c.strip_suffix('`'))
            {
                codes.push(code.to_string());
            }
            for code in codes {
                shown += 1;
                if !known.contains(&code) {
                    unknown.push(format!("{file}:{}: {code}", n + 1));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "codes no client gets (known: {known:?}):\n{}",
        unknown.join("\n")
    );
    // The README's body, the refusal table, the upstream-error body and the log line.
    assert!(
        shown >= 15,
        "only {shown} codes found in the docs: are they still read?"
    );
}

#[test]
fn codes_are_read_from_json_spaced_or_not() {
    assert_eq!(
        json_codes(r#"{"error": "x", "code": "RATE_LIMITED"} {"code":"NOT_FOUND"}"#),
        ["RATE_LIMITED", "NOT_FOUND"]
    );
}
