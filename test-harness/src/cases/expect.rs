//! Compares what a backend observed with what a step expects. Every mismatch is one line
//! that says what was expected and what came back.

use super::backend::Observed;
use super::{BodyExpect, Expect, UpstreamExpect, ValueMatch};

/// The body as text for messages, shortened.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 600;
    let text = String::from_utf8_lossy(body);
    if text.len() <= MAX {
        return text.into_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} bytes)",
        text.get(..end).unwrap_or_default(),
        body.len()
    )
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn check_headers(
    what: &str,
    headers: &[(String, String)],
    expected: &[(String, ValueMatch)],
    absent: &[String],
    out: &mut Vec<String>,
) {
    for (name, m) in expected {
        match (find(headers, name), m) {
            (None, _) => out.push(format!("expected {what} header {name}, it is missing")),
            (Some(_), ValueMatch::Present) => {}
            (Some(got), ValueMatch::Equals(want)) if got == want => {}
            (Some(got), ValueMatch::Equals(want)) => out.push(format!(
                "expected {what} header {name}: {want:?}, got {got:?}"
            )),
        }
    }
    for name in absent {
        if let Some(got) = find(headers, name) {
            out.push(format!(
                "expected no {what} header {name}, got {name}: {got:?}"
            ));
        }
    }
}

/// `want` is a subset of `got`: every field of `want` is in `got` with an equal value;
/// the string `"present"` only needs the field to exist.
fn json_subset(
    path: &str,
    want: &serde_json::Value,
    got: Option<&serde_json::Value>,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    let Some(got) = got else {
        out.push(format!("expected body field {path}, it is missing"));
        return;
    };
    match want {
        Value::String(s) if s == "present" => {}
        Value::Object(fields) => {
            let Value::Object(_) = got else {
                out.push(format!(
                    "expected body field {path} to be an object, got {got}"
                ));
                return;
            };
            for (k, v) in fields {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                json_subset(&sub, v, got.get(k), out);
            }
        }
        // A scalar written in YAML matches the same JSON scalar, or its text: `status: 200`
        // matches `"200"` too, since YAML authors rarely think about quoting.
        _ if want == got => {}
        Value::Number(n) if got.as_str() == Some(n.to_string().as_str()) => {}
        _ => out.push(format!("expected body field {path}: {want}, got {got}")),
    }
}

/// Every way `observed` differs from `expect`; empty when it matches.
pub fn check(expect: &Expect, observed: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(status) = expect.status
        && status != observed.status
    {
        out.push(format!("expected status {status}, got {}", observed.status));
    }
    match &expect.body {
        None => {}
        Some(BodyExpect::Text(want)) if want.as_bytes() == observed.body.as_slice() => {}
        Some(BodyExpect::Text(want)) => out.push(format!(
            "expected body {want:?}, got {:?}",
            excerpt(&observed.body)
        )),
        Some(BodyExpect::JsonSubset(want)) => {
            match serde_json::from_slice::<serde_json::Value>(&observed.body) {
                Ok(got) => json_subset("", want, Some(&got), &mut out),
                Err(_) => out.push(format!(
                    "expected a JSON body with {want}, got {:?}",
                    excerpt(&observed.body)
                )),
            }
        }
    }
    check_headers(
        "response",
        &observed.headers,
        &expect.headers,
        &expect.absent_headers,
        &mut out,
    );
    match (&expect.upstream, &observed.upstream) {
        (None, _) | (Some(UpstreamExpect::Never), None) => {}
        (Some(UpstreamExpect::Never), Some(_)) => {
            out.push("expected the request never to reach the upstream, it did".into());
        }
        (Some(UpstreamExpect::Reached { .. }), None) => {
            out.push("expected the request to reach the upstream, it was answered before".into());
        }
        (
            Some(UpstreamExpect::Reached {
                headers,
                absent_headers,
            }),
            Some(up),
        ) => check_headers("upstream", &up.headers, headers, absent_headers, &mut out),
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::cases::backend::UpstreamSeen;

    fn observed() -> Observed {
        Observed {
            status: 401,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("www-authenticate".into(), "ApiKey".into()),
            ],
            body: br#"{"code":"UNAUTHORIZED","request_id":"r1","n":3}"#.to_vec(),
            upstream: None,
        }
    }

    #[test]
    fn a_matching_observation_has_no_mismatch() {
        let e = Expect {
            status: Some(401),
            body: Some(BodyExpect::JsonSubset(
                serde_json::json!({"code": "UNAUTHORIZED", "request_id": "present", "n": 3}),
            )),
            headers: vec![("www-authenticate".into(), ValueMatch::Present)],
            absent_headers: vec!["server".into()],
            upstream: Some(UpstreamExpect::Never),
        };
        assert_eq!(check(&e, &observed()), Vec::<String>::new());
    }

    #[test]
    fn mismatches_say_what_was_expected_and_what_came_back() {
        let e = Expect {
            status: Some(200),
            body: Some(BodyExpect::JsonSubset(
                serde_json::json!({"code": "OK", "missing": "present"}),
            )),
            headers: vec![(
                "content-type".into(),
                ValueMatch::Equals("text/plain".into()),
            )],
            absent_headers: vec!["www-authenticate".into()],
            upstream: Some(UpstreamExpect::Reached {
                headers: vec![],
                absent_headers: vec![],
            }),
        };
        let m = check(&e, &observed());
        assert_eq!(m[0], "expected status 200, got 401");
        assert_eq!(
            m[1],
            "expected body field code: \"OK\", got \"UNAUTHORIZED\""
        );
        assert_eq!(m[2], "expected body field missing, it is missing");
        assert_eq!(
            m[3],
            "expected response header content-type: \"text/plain\", got \"application/json\""
        );
        assert_eq!(
            m[4],
            "expected no response header www-authenticate, got www-authenticate: \"ApiKey\""
        );
        assert!(m[5].contains("reach the upstream"));
    }

    #[test]
    fn upstream_headers_are_checked() {
        let mut o = observed();
        o.upstream = Some(UpstreamSeen {
            headers: vec![("x-gatehouse-user".into(), "u".into())],
            body: Vec::new(),
        });
        let e = Expect {
            upstream: Some(UpstreamExpect::Reached {
                headers: vec![("x-gatehouse-user".into(), ValueMatch::Equals("v".into()))],
                absent_headers: vec!["x-gatehouse-user".into()],
            }),
            ..Expect::default()
        };
        let m = check(&e, &o);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            m[0],
            "expected upstream header x-gatehouse-user: \"v\", got \"u\""
        );
    }
}
