//! The results of `gatehouse-harness run` as JUnit XML (`--junit FILE`), the format CI
//! systems show test reports from: `<testsuites>`, one `<testsuite>` per case file and
//! backend, one `<testcase>` per case, with `<failure>` or `<skipped>`.
//!
//! Written by hand (no XML dependency): the format is small, and everything we put in it
//! goes through [`escape`], which also drops the characters XML 1.0 cannot carry at all.

use super::BackendKind;
use super::run::{CaseResult, Outcome};

/// One case file run on one backend.
#[derive(Clone, Debug)]
pub struct Suite {
    /// The case file as named on the command line.
    pub file: String,
    pub backend: BackendKind,
    pub results: Vec<CaseResult>,
    /// Why the file could not run at all (does not load, backend did not start); reported
    /// as one failed test case, so CI shows it.
    pub error: Option<String>,
}

/// Text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept in content; in attributes a parser would fold them to spaces.
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            // Not allowed in XML 1.0 even as references.
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                out.push('\u{fffd}');
            }
            c => out.push(c),
        }
    }
    out
}

/// The first line of a failure with its first mismatch (`step 2 (...): GET /a: expected
/// status 200, got 401`), for the `message` attribute CI lists show; the whole text goes
/// in the element's body.
fn headline(why: &str) -> String {
    let mut lines = why.lines();
    let first = lines.next().unwrap_or_default();
    match lines.next() {
        Some(second) if second.starts_with("  ") && !second.starts_with("   ") => {
            format!("{first}: {}", second.trim())
        }
        _ => first.to_string(),
    }
}

/// The whole report.
pub fn render(suites: &[Suite]) -> String {
    let mut tests = 0;
    let mut failures = 0;
    let mut skipped = 0;
    let mut body = String::new();
    for suite in suites {
        let name = format!("{} [{}]", suite.file, suite.backend);
        let s_tests = suite.results.len() + usize::from(suite.error.is_some());
        let s_failures = suite
            .results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .count()
            + usize::from(suite.error.is_some());
        let s_skipped = suite
            .results
            .iter()
            .filter(|r| r.outcome == Outcome::Skipped)
            .count();
        tests += s_tests;
        failures += s_failures;
        skipped += s_skipped;
        body.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{s_tests}\" failures=\"{s_failures}\" errors=\"0\" skipped=\"{s_skipped}\">\n",
            escape(&name)
        ));
        let classname = escape(&format!("{}.{}", suite.file, suite.backend));
        if let Some(error) = &suite.error {
            body.push_str(&format!(
                "    <testcase name=\"(the case file)\" classname=\"{classname}\">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                escape(&headline(error)),
                escape(error)
            ));
        }
        for r in &suite.results {
            // `location` is `file:line:column`; CI tools want the file and the line apart.
            let line = r.location.rsplit(':').nth(1).unwrap_or("0");
            let open = format!(
                "    <testcase name=\"{}\" classname=\"{classname}\" file=\"{}\" line=\"{}\"",
                escape(&r.name),
                escape(&suite.file),
                escape(line)
            );
            match &r.outcome {
                Outcome::Passed => body.push_str(&format!("{open}/>\n")),
                Outcome::Failed(why) => body.push_str(&format!(
                    "{open}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    escape(&headline(why)),
                    escape(why)
                )),
                Outcome::Skipped => {
                    let why = r
                        .note
                        .clone()
                        .unwrap_or_else(|| format!("not run on {} (`backends:`)", r.backend));
                    body.push_str(&format!(
                        "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                        escape(&why)
                    ));
                }
            }
        }
        body.push_str("  </testsuite>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"gatehouse-harness\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">\n{body}</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, outcome: Outcome) -> CaseResult {
        CaseResult {
            location: "a.cases.yaml:3:5".into(),
            name: name.into(),
            backend: BackendKind::Harness,
            outcome,
            note: None,
        }
    }

    #[test]
    fn escaping_covers_markup_quotes_and_control_characters() {
        assert_eq!(
            escape("a<b>&\"c\" 'd'\u{1}\n"),
            "a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;\u{fffd}&#10;"
        );
    }

    #[test]
    fn a_report_counts_and_escapes_every_case() {
        let xml = render(&[Suite {
            file: "a.cases.yaml".into(),
            backend: BackendKind::Harness,
            results: vec![
                result("passes", Outcome::Passed),
                result(
                    "fails <here>",
                    Outcome::Failed(
                        "step 1 (a:1:1): GET /\n  expected status 200, got 401\n  more".into(),
                    ),
                ),
                result("skips", Outcome::Skipped),
            ],
            error: None,
        }]);
        assert!(xml.contains("<testsuites name=\"gatehouse-harness\" tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\">"), "{xml}");
        assert!(
            xml.contains("<testsuite name=\"a.cases.yaml [harness]\" tests=\"3\""),
            "{xml}"
        );
        assert!(xml.contains("name=\"fails &lt;here&gt;\" classname=\"a.cases.yaml.harness\" file=\"a.cases.yaml\" line=\"3\""), "{xml}");
        assert!(xml.contains("<failure message=\"step 1 (a:1:1): GET /: expected status 200, got 401\">step 1 (a:1:1): GET /&#10;  expected status 200, got 401&#10;  more</failure>"), "{xml}");
        assert!(
            xml.contains("<skipped message=\"not run on harness (`backends:`)\"/>"),
            "{xml}"
        );
        assert!(xml.ends_with("</testsuites>\n"));
    }
}
