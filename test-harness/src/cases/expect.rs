//! Compares what a backend observed with what a step expects. Every mismatch is one line
//! that says what was expected and what came back.

use super::backend::{HostSeen, Observed};
use super::{BodyExpect, CallEnd, CallExpect, Expect, UpstreamExpect, ValueMatch};
use crate::host::{CallResult, HttpCall};

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

/// `control GET /v1/keys (responded 200)`: a call as messages show it.
pub fn describe_call(call: &HttpCall) -> String {
    let end = match &call.result {
        CallResult::Pending => "pending".to_string(),
        CallResult::Responded(status) => format!("responded {status}"),
        CallResult::TimedOut => "timed_out".to_string(),
        CallResult::Reset => "reset".to_string(),
        CallResult::Unmatched => "unmatched".to_string(),
    };
    format!("{} {} {} ({end})", call.cluster, call.method, call.path)
}

fn call_end(result: &CallResult) -> CallEnd {
    match result {
        CallResult::Pending => CallEnd::Pending,
        CallResult::Responded(_) => CallEnd::Responded,
        CallResult::TimedOut => CallEnd::TimedOut,
        CallResult::Reset => CallEnd::Reset,
        CallResult::Unmatched => CallEnd::Unmatched,
    }
}

fn check_call(n: usize, want: &CallExpect, got: &HttpCall, out: &mut Vec<String>) {
    let what = format!("call {n} ({})", describe_call(got));
    let fields = [
        ("cluster", &want.cluster, &got.cluster),
        ("method", &want.method, &got.method),
        ("path", &want.path, &got.path),
    ];
    for (field, want, got) in fields {
        if let Some(want) = want
            && want != got
        {
            out.push(format!("expected {what} {field} {want:?}, got {got:?}"));
        }
    }
    if let Some(end) = want.result
        && end != call_end(&got.result)
    {
        out.push(format!(
            "expected {what} to end {}, it ended {}",
            end.name(),
            call_end(&got.result).name()
        ));
    }
    if let Some(status) = want.status {
        match got.result {
            CallResult::Responded(s) if s == status => {}
            CallResult::Responded(s) => {
                out.push(format!("expected {what} status {status}, got {s}"));
            }
            _ => out.push(format!(
                "expected {what} status {status}, it ended {}",
                call_end(&got.result).name()
            )),
        }
    }
}

/// Every way what the host saw differs from the metrics, logs, calls and trap `expect`
/// asks for; empty when it matches.
pub fn check_host(expect: &Expect, seen: &HostSeen) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in &expect.metrics {
        match seen.metrics.iter().find(|(n, _)| n == name) {
            Some((_, Some(got))) if got == want => {}
            Some((_, Some(got))) => out.push(format!("expected metric {name} = {want}, got {got}")),
            _ => out.push(format!(
                "expected metric {name} = {want}, the module never defined it"
            )),
        }
    }
    for want in &expect.logs_contain {
        if !seen.logs.iter().any(|line| line.contains(want.as_str())) {
            out.push(format!(
                "expected a log line containing {want:?}, none of {} does",
                seen.logs.len()
            ));
        }
    }
    for unwanted in &expect.logs_absent {
        if let Some(line) = seen.logs.iter().find(|l| l.contains(unwanted.as_str())) {
            out.push(format!(
                "expected no log line containing {unwanted:?}, got {line:?}"
            ));
        }
    }
    if let Some(calls) = &expect.calls {
        if calls.len() != seen.calls.len() {
            let got: Vec<String> = seen.calls.iter().map(describe_call).collect();
            out.push(format!(
                "expected {} HTTP call(s), got {}: [{}]",
                calls.len(),
                seen.calls.len(),
                got.join(", ")
            ));
        }
        for (n, (want, got)) in calls.iter().zip(&seen.calls).enumerate() {
            check_call(n + 1, want, got, &mut out);
        }
    }
    match (expect.trapped, seen.traps.first()) {
        (Some(false), Some(trap)) => out.push(format!(
            "expected no trap, the module trapped {} time(s), first: {trap}",
            seen.traps.len()
        )),
        (Some(true), None) => out.push("expected a trap, the module did not trap".into()),
        _ => {}
    }
    out
}

/// Calls from index `from` on that no route of their cluster answered: each is a mistake
/// in the case (a missing route), unless a `calls` expectation accounted for it.
pub fn unmatched_calls(calls: &[HttpCall], from: usize) -> Vec<String> {
    calls
        .iter()
        .skip(from)
        .filter(|c| c.result == CallResult::Unmatched)
        .map(|c| {
            format!(
                "the module called cluster {} with {} {} and no route matched (answered 404); add a route to `upstreams`, or list the call in this step's `expect.calls` with `result: unmatched`",
                c.cluster, c.method, c.path
            )
        })
        .collect()
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
            ..Expect::default()
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
            ..Expect::default()
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
