//! Reads a case file into [`CaseFile`], through the same positioned YAML reader as
//! policies, so every mistake is reported as `file:line:column: message`.

use super::{
    Action, BodyExpect, Case, CaseFile, Expect, RequestSpec, Step, UpstreamExpect, ValueMatch,
};
use crate::cases::BackendKind;
use gatehouse::policy::tree::{Key, Node, Pos, Value};
use gatehouse::policy::yaml;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Everything wrong with a case file, one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseError {
    pub lines: Vec<String>,
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

impl std::error::Error for CaseError {}

/// Reads and checks a case file.
pub fn load(path: &Path) -> Result<CaseFile, CaseError> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| CaseError {
        lines: vec![format!("{name}: {e}")],
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&name, dir, &source)
}

/// Parses case-file text; `dir` resolves the relative policy path.
pub fn parse(name: &str, dir: &Path, source: &str) -> Result<CaseFile, CaseError> {
    let root = yaml::parse(source).map_err(|e| CaseError {
        lines: vec![format!("{name}:{}: {}", e.pos, e.message)],
    })?;
    let mut r = Reader {
        file: name,
        errors: Vec::new(),
    };
    let file = r.file(&root, dir);
    match file {
        Some(f) if r.errors.is_empty() => Ok(f),
        _ => {
            // Top to bottom, like the file.
            r.errors
                .sort_by_key(|(pos, _)| pos.map(|p| (p.line, p.column)));
            Err(CaseError {
                lines: r.errors.into_iter().map(|(_, line)| line).collect(),
            })
        }
    }
}

struct Reader<'a> {
    file: &'a str,
    errors: Vec<(Option<Pos>, String)>,
}

type Fields<'n> = Vec<(&'n Key, &'n Node)>;

fn get<'n>(fields: &Fields<'n>, name: &str) -> Option<&'n Node> {
    fields.iter().find(|(k, _)| k.name == name).map(|(_, v)| *v)
}

impl Reader<'_> {
    fn error(&mut self, pos: Option<Pos>, message: impl fmt::Display) {
        let line = match pos {
            Some(p) => format!("{}:{p}: {message}", self.file),
            None => format!("{}: {message}", self.file),
        };
        self.errors.push((pos, line));
    }

    /// The entries of a mapping, refusing names not in `allowed`.
    fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut fields = Vec::new();
        for (key, value) in entries {
            if allowed.contains(&key.name.as_str()) {
                fields.push((key, value));
            } else {
                self.error(
                    key.pos,
                    format!(
                        "unknown field '{}' in {what}; expected one of [{}]",
                        key.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(fields)
    }

    fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        what: &str,
        at: &Node,
    ) -> Option<&'n Node> {
        let found = get(fields, name);
        if found.is_none() {
            self.error(at.pos, format!("{what} needs the field '{name}'"));
        }
        found
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A scalar read as text (`12`, `true`, `x`), for header values.
    fn scalar_text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a scalar, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a list, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn file(&mut self, root: &Node, dir: &Path) -> Option<CaseFile> {
        let f = self.map(
            root,
            "the case file",
            &["policy", "workers", "start", "env", "cases"],
        )?;
        let policy = self
            .required(&f, "policy", "the case file", root)
            .and_then(|n| self.string(n, "policy"))
            .map(|p| dir.join(p));
        let workers = match get(&f, "workers") {
            None => 1,
            Some(n) => match n.value {
                Value::Int(w) if (1..=64).contains(&w) => u32::try_from(w).unwrap_or(1),
                _ => {
                    self.error(n.pos, "workers must be an integer from 1 to 64");
                    1
                }
            },
        };
        let start = match get(&f, "start") {
            None => None,
            Some(n) => match self.string(n, "start") {
                Some(s) => match gatehouse::time::parse_rfc3339(&s) {
                    Some(secs) => Some(secs),
                    None => {
                        self.error(
                            n.pos,
                            format!("start must be an RFC 3339 time like 2026-01-01T00:00:00Z, found '{s}'"),
                        );
                        None
                    }
                },
                None => None,
            },
        };
        let mut env = Vec::new();
        if let Some(n) = get(&f, "env") {
            if let Value::Map(entries) = &n.value {
                for (k, v) in entries {
                    if let Some(v) = self.scalar_text(v, &format!("env.{}", k.name)) {
                        env.push((k.name.clone(), v));
                    }
                }
            } else {
                self.error(
                    n.pos,
                    format!("env must be a mapping, found {}", n.value.kind()),
                );
            }
        }
        let mut cases = Vec::new();
        if let Some(n) = self.required(&f, "cases", "the case file", root) {
            for item in self.seq(n, "cases").unwrap_or_default() {
                if let Some(c) = self.case(item) {
                    cases.push(c);
                }
            }
        }
        Some(CaseFile {
            name: self.file.to_string(),
            policy: policy?,
            workers,
            start,
            env,
            cases,
        })
    }

    fn case(&mut self, node: &Node) -> Option<Case> {
        let f = self.map(node, "a case", &["name", "backends", "steps"])?;
        let name = self
            .required(&f, "name", "a case", node)
            .and_then(|n| self.string(n, "name"));
        let mut backends = vec![BackendKind::Harness, BackendKind::Envoy];
        if let Some(n) = get(&f, "backends") {
            backends.clear();
            for b in self.seq(n, "backends").unwrap_or_default() {
                match self.string(b, "a backend").as_deref() {
                    Some("harness") => backends.push(BackendKind::Harness),
                    Some("envoy") => backends.push(BackendKind::Envoy),
                    Some(other) => self.error(
                        b.pos,
                        format!("unknown backend '{other}'; expected one of [harness, envoy]"),
                    ),
                    None => {}
                }
            }
        }
        let mut steps = Vec::new();
        if let Some(n) = self.required(&f, "steps", "a case", node) {
            for s in self.seq(n, "steps").unwrap_or_default() {
                if let Some(step) = self.step(s) {
                    steps.push(step);
                }
            }
        }
        Some(Case {
            name: name?,
            pos: node.pos,
            backends,
            steps,
        })
    }

    fn step(&mut self, node: &Node) -> Option<Step> {
        let f = self.map(node, "a step", &["request", "expect", "advance"])?;
        if let Some(n) = get(&f, "advance") {
            if let Some((k, _)) = f.iter().find(|(k, _)| k.name != "advance") {
                self.error(
                    k.pos,
                    "a step is either `advance` or `request` + `expect`, not both",
                );
            }
            let text = self.scalar_text(n, "advance")?;
            let Some(d) = parse_duration(&text) else {
                self.error(
                    n.pos,
                    format!(
                        "advance must be a duration like 500ms, 61s, 2m, 1h or 1d; found '{text}'"
                    ),
                );
                return None;
            };
            return Some(Step {
                pos: node.pos,
                action: Action::Advance(d),
            });
        }
        let request = self
            .required(&f, "request", "a step", node)
            .and_then(|n| self.request(n));
        let expect = self
            .required(&f, "expect", "a step", node)
            .and_then(|n| self.expect(n));
        Some(Step {
            pos: node.pos,
            action: Action::Request {
                request: request?,
                expect: Box::new(expect?),
            },
        })
    }

    fn request(&mut self, node: &Node) -> Option<RequestSpec> {
        let f = self.map(node, "a request", &["method", "path", "headers", "body"])?;
        let method = match get(&f, "method") {
            Some(n) => self.string(n, "method")?,
            None => "GET".to_string(),
        };
        let path = self
            .required(&f, "path", "a request", node)
            .and_then(|n| self.string(n, "path"))?;
        let mut headers = Vec::new();
        if let Some(n) = get(&f, "headers") {
            headers = self
                .headers(n, "request headers", false)?
                .into_iter()
                .filter_map(|(k, v)| match v {
                    ValueMatch::Equals(v) => Some((k, v)),
                    ValueMatch::Present => None,
                })
                .collect();
        }
        let body = match get(&f, "body") {
            None => Vec::new(),
            Some(n) => match &n.value {
                Value::Str(s) => s.clone().into_bytes(),
                Value::Map(_) | Value::Seq(_) => n.to_json().to_string().into_bytes(),
                other => {
                    self.error(
                        n.pos,
                        format!("body must be a string or a mapping, found {}", other.kind()),
                    );
                    return None;
                }
            },
        };
        Some(RequestSpec {
            method,
            path,
            headers,
            body,
        })
    }

    /// `{name: value}`; names are lower-cased. With `allow_present`, `present` is a match.
    fn headers(
        &mut self,
        node: &Node,
        what: &str,
        allow_present: bool,
    ) -> Option<Vec<(String, ValueMatch)>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let text = self.scalar_text(v, &format!("header '{}'", k.name))?;
            let m = if allow_present && text == "present" {
                ValueMatch::Present
            } else {
                ValueMatch::Equals(text)
            };
            out.push((k.name.to_ascii_lowercase(), m));
        }
        Some(out)
    }

    fn names(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for n in self.seq(node, what)? {
            out.push(self.string(n, what)?.to_ascii_lowercase());
        }
        Some(out)
    }

    fn expect(&mut self, node: &Node) -> Option<Expect> {
        let f = self.map(
            node,
            "expect",
            &["status", "body", "headers", "absent_headers", "upstream"],
        )?;
        let mut e = Expect::default();
        if let Some(n) = get(&f, "status") {
            match n.value {
                Value::Int(s) if (100..=599).contains(&s) => e.status = u16::try_from(s).ok(),
                _ => self.error(n.pos, "status must be an HTTP status from 100 to 599"),
            }
        }
        if let Some(n) = get(&f, "body") {
            e.body = match &n.value {
                Value::Str(s) => Some(BodyExpect::Text(s.clone())),
                Value::Map(_) => Some(BodyExpect::JsonSubset(n.to_json())),
                other => {
                    self.error(n.pos, format!("expect.body must be a mapping (JSON fields) or a string (exact text), found {}", other.kind()));
                    None
                }
            };
        }
        if let Some(n) = get(&f, "headers") {
            e.headers = self.headers(n, "expect.headers", true)?;
        }
        if let Some(n) = get(&f, "absent_headers") {
            e.absent_headers = self.names(n, "absent_headers")?;
        }
        if let Some(n) = get(&f, "upstream") {
            e.upstream = Some(self.upstream(n)?);
        }
        Some(e)
    }

    fn upstream(&mut self, node: &Node) -> Option<UpstreamExpect> {
        if let Value::Str(s) = &node.value
            && s == "none"
        {
            return Some(UpstreamExpect::Never);
        }
        if matches!(node.value, Value::Null) {
            self.error(node.pos, "upstream must be `none` or a mapping; write `upstream: none` for \"never reached\"");
            return None;
        }
        let f = self.map(node, "expect.upstream", &["headers", "absent_headers"])?;
        let headers = match get(&f, "headers") {
            Some(n) => self.headers(n, "upstream.headers", true)?,
            None => Vec::new(),
        };
        let absent_headers = match get(&f, "absent_headers") {
            Some(n) => self.names(n, "upstream.absent_headers")?,
            None => Vec::new(),
        };
        Some(UpstreamExpect::Reached {
            headers,
            absent_headers,
        })
    }
}

/// `500ms`, `61s`, `2m`, `1h`, `1d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn parse_str(src: &str) -> Result<CaseFile, CaseError> {
        parse("t.cases.yaml", Path::new("/p"), src)
    }

    const GOOD: &str = "\
policy: example.yaml
start: 2026-01-01T00:00:00Z
env: { A: b }
cases:
  - name: one
    backends: [harness]
    steps:
      - request: { method: POST, path: /v1/x, headers: { x-api-key: k, X-N: 3 }, body: hi }
        expect:
          status: 401
          body: { code: UNAUTHORIZED, request_id: present }
          headers: { content-type: application/json, www-authenticate: present }
          absent_headers: [Server]
          upstream: none
      - advance: 61s
      - request: { path: /v1/y }
        expect:
          upstream: { headers: { x-gatehouse-user: u }, absent_headers: [x-evil] }
";

    #[test]
    fn a_case_file_is_read() {
        let f = parse_str(GOOD).unwrap();
        assert_eq!(f.policy, Path::new("/p/example.yaml"));
        assert_eq!(f.start, Some(1_767_225_600));
        assert_eq!(f.env, vec![("A".into(), "b".into())]);
        let case = &f.cases[0];
        assert_eq!(case.backends, vec![BackendKind::Harness]);
        assert_eq!(case.steps.len(), 3);
        let Action::Request { request, expect } = &case.steps[0].action else {
            panic!()
        };
        assert_eq!(request.method, "POST");
        assert_eq!(request.headers[1], ("x-n".into(), "3".into()));
        assert_eq!(request.body, b"hi");
        assert_eq!(expect.status, Some(401));
        assert_eq!(
            expect.headers[1],
            ("www-authenticate".into(), ValueMatch::Present)
        );
        assert_eq!(expect.absent_headers, vec!["server".to_string()]);
        assert!(matches!(expect.upstream, Some(UpstreamExpect::Never)));
        assert!(matches!(case.steps[1].action, Action::Advance(d) if d == Duration::from_secs(61)));
        let Action::Request { request, .. } = &case.steps[2].action else {
            panic!()
        };
        assert_eq!(request.method, "GET");
    }

    #[test]
    fn unknown_fields_are_errors_with_their_position() {
        let err = parse_str("policy: p.yaml\ncases:\n  - name: x\n    steps:\n      - request: { path: / }\n        expect: { stauts: 200 }\n").unwrap_err();
        assert_eq!(err.lines.len(), 1, "{err}");
        assert!(
            err.lines[0].starts_with("t.cases.yaml:6:19: unknown field 'stauts'"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let err = parse_str("policy: p.yaml\nworkers: 0\ncases:\n  - name: x\n    backends: [nginx]\n    steps:\n      - advance: soon\n").unwrap_err();
        assert_eq!(err.lines.len(), 3, "{err}");
        assert!(
            err.lines[0].starts_with("t.cases.yaml:2:10: workers"),
            "{err}"
        );
        assert!(err.lines[1].contains("unknown backend 'nginx'"), "{err}");
        assert!(
            err.lines[2].starts_with("t.cases.yaml:7:18: advance"),
            "{err}"
        );
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("61"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
