//! What gatehouse does to a response on its way back to the client: security headers,
//! the CORS headers of an allowed origin ([`crate::cors`]), and upstream error hygiene;
//! it must never let an upstream 5xx body through on a route that replaces errors.
//! Behaviour: `docs/policy.md#security-response-headers`, `docs/policy.md#upstream-errors`.

use crate::cors::{self, CorsPolicy};

pub mod headers;

use crate::policy::Policy;
use crate::refusal::{Denial, LocalReply};
use crate::route;
use crate::time::UnixNanos;
use headers::SecurityHeaders;

/// Headers that describe the upstream's body, which a replaced error no longer has.
const BODY_HEADERS: [&str; 9] = [
    "content-length",
    "content-encoding",
    "content-range",
    "content-disposition",
    "content-language",
    "content-md5",
    "digest",
    "etag",
    "last-modified",
];

/// Whether any response of the policy has its `server` header removed: Envoy must then
/// be told not to write its own (`server_header_transformation: PASS_THROUGH`).
pub fn removes_server_header(policy: &Policy) -> bool {
    policy
        .security_headers
        .iter()
        .chain(
            policy
                .routes
                .iter()
                .filter_map(|r| r.security_headers.as_ref()),
        )
        .any(|s| s.remove.iter().any(|h| h == "server"))
}

/// Whether the policy changes responses at all (else the shell remembers nothing).
pub fn enabled(policy: &Policy) -> bool {
    policy.security_headers.is_some()
        || policy.does_cors()
        || policy
            .routes
            .iter()
            .any(|r| r.security_headers.is_some() || r.upstream_errors)
}

/// The media type of a `content-type` value, lower case, without parameters.
fn media_type(content_type: Option<&[u8]>) -> String {
    let raw = content_type.unwrap_or_default();
    let end = raw.iter().position(|b| *b == b';').unwrap_or(raw.len());
    String::from_utf8_lossy(raw.get(..end).unwrap_or_default())
        .trim()
        .to_ascii_lowercase()
}

fn is_json(content_type: Option<&[u8]>) -> bool {
    let m = media_type(content_type);
    m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
}

/// HTML only gets the CSP: it means nothing to a JSON client.
fn is_html(content_type: Option<&[u8]>) -> bool {
    matches!(
        media_type(content_type).as_str(),
        "text/html" | "application/xhtml+xml"
    )
}

/// Whether an upstream response with this status and type is replaced: every 5xx (a JSON
/// 5xx can hold a stack trace too), and a 4xx that is not JSON (`application/json`,
/// `application/*+json`).
pub fn replaces(status: u32, content_type: Option<&[u8]>) -> bool {
    match status {
        500..=599 => true,
        400..=499 => !is_json(content_type),
        _ => false,
    }
}

/// What a request leaves for its response. When the response headers arrive,
/// [`Pending::on_response`] gives the [`Edits`] under the matched route's rules (its
/// overrides already merged by the decoder), or the top-level ones when no route matched.
/// Local replies pass through too (Envoy runs them through the response callbacks), so a
/// refusal to an allowed origin carries the CORS headers a browser needs to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The matched route; `None`: the top-level sections apply.
    route: Option<usize>,
    /// The request's `Origin`, as sent, when the rules' CORS allows it.
    origin: Option<String>,
    request_id: Vec<u8>,
    /// A `HEAD` request: its response has no body to replace.
    head: bool,
    /// Gatehouse answered the request itself (a refusal): never replaced.
    local: bool,
}

/// The request values [`Pending::new`] needs.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub method: &'a [u8],
    /// The raw `:path`.
    pub path: &'a [u8],
    pub origin: Option<&'a [u8]>,
    /// `x-request-id`.
    pub request_id: &'a [u8],
    /// Gatehouse refused the request and answers it locally.
    pub refused: bool,
}

/// Header changes for one response, applied in order: remove, then set. A replaced
/// body is not buffered: each upstream chunk is emptied as it passes and the standard
/// body written at `end_of_stream` (buffering would hold a whole error page, and Envoy
/// resets a stream that outgrows its buffer). So an error ending in trailers keeps an
/// empty body: `end_of_stream` then never comes with data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits<'p> {
    pub remove: Vec<&'p str>,
    /// Each replaces any header of that name.
    pub set: Vec<(&'static str, String)>,
    /// The standard error body that replaces the upstream's.
    pub replace_body: Option<String>,
}

impl<'p> Edits<'p> {
    /// The local reply that stands for a replaced upstream error that had no body.
    pub fn into_reply(self, status: u32) -> Option<LocalReply> {
        Some(LocalReply {
            status,
            body: self.replace_body?,
            headers: self.set,
        })
    }

    /// What the filter does at the response headers, `extra` (the `RateLimit-*` headers)
    /// set last: an upstream error that ends at its headers has no body to rewrite, so
    /// it is answered locally with its own `:status` (502 when that is unreadable) and
    /// the standard body; any other response gets the edits.
    pub fn at_headers(
        mut self,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
        extra: Vec<(&'static str, String)>,
    ) -> AtHeaders<'p> {
        self.set.extend(extra);
        if end_of_stream && self.replace_body.is_some() {
            let status = headers
                .iter()
                .find(|(n, _)| *n == b":status")
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(502);
            if let Some(reply) = self.into_reply(status) {
                return AtHeaders::Reply(reply);
            }
            return AtHeaders::Edit(Edits::default());
        }
        AtHeaders::Edit(self)
    }
}

/// What the response headers lead to ([`Edits::at_headers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AtHeaders<'p> {
    /// Answer locally instead of the upstream's bodiless error.
    Reply(LocalReply),
    /// Remove, then set these headers; a replaced body is written at the end of the body.
    Edit(Edits<'p>),
}

struct Rules<'p> {
    cors: Option<&'p CorsPolicy>,
    security: Option<&'p SecurityHeaders>,
    upstream_errors: bool,
}

fn rules(policy: &Policy, route: Option<usize>) -> Rules<'_> {
    match route.and_then(|i| policy.routes.get(i)) {
        Some(r) => Rules {
            cors: r.cors.as_ref(),
            security: r.security_headers.as_ref(),
            upstream_errors: r.upstream_errors,
        },
        None => Rules {
            cors: policy.cors.as_ref(),
            security: policy.security_headers.as_ref(),
            upstream_errors: false,
        },
    }
}

impl Pending {
    /// What the response to this request needs; `None` when the policy changes nothing
    /// about this request's response. `route` is the matched route when the request was
    /// allowed; for a refused one it is looked up here (one more pass over the routes,
    /// only on policies with response rules).
    pub fn new(policy: &Policy, route: Option<usize>, req: &RequestFacts<'_>) -> Option<Pending> {
        if !enabled(policy) {
            return None;
        }
        let route = route.or_else(|| {
            route::resolve(&policy.routes, req.method, req.path)
                .ok()
                .flatten()
        });
        let rules = rules(policy, route);
        let replaces = rules.upstream_errors && !req.refused;
        if rules.cors.is_none() && rules.security.is_none() && !replaces {
            return None;
        }
        let origin = match (rules.cors, req.origin) {
            (Some(cors), Some(origin)) if cors.allows_origin(origin) => {
                std::str::from_utf8(origin).ok().map(str::to_string)
            }
            _ => None,
        };
        Some(Pending {
            route,
            origin,
            request_id: req.request_id.to_vec(),
            head: req.method == b"HEAD",
            local: req.refused,
        })
    }

    /// Gatehouse refused the request after all, at the body ([`crate::body`]): its local
    /// reply is never taken for an upstream error.
    pub fn mark_local(&mut self) {
        self.local = true;
    }

    /// The edits for a response with these headers (all of them, names lower case).
    pub fn on_response<'p>(
        &self,
        policy: &'p Policy,
        headers: &[(&[u8], &[u8])],
        now: UnixNanos,
    ) -> Edits<'p> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name.as_bytes())
                .map(|(_, v)| *v)
        };
        let has = |name: &str| headers.iter().any(|(n, _)| *n == name.as_bytes());
        let rules = rules(policy, self.route);
        let mut edits = Edits::default();
        let status = get(":status")
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        let mut content_type = get("content-type");

        if rules.upstream_errors && !self.local && !self.head && replaces(status, content_type) {
            let reply = Denial::UpstreamError(status).render(now, &self.request_id, false);
            edits
                .remove
                .extend(BODY_HEADERS.iter().copied().filter(|h| has(h)));
            edits.set.extend(reply.headers);
            edits.replace_body = Some(reply.body);
            content_type = Some(b"application/json");
        }

        if let Some(sec) = rules.security {
            edits
                .remove
                .extend(sec.remove.iter().map(String::as_str).filter(|h| has(h)));
            if let Some(hsts) = &sec.hsts {
                edits.set.push(("strict-transport-security", hsts.value()));
            }
            if sec.nosniff {
                edits
                    .set
                    .push(("x-content-type-options", "nosniff".to_string()));
            }
            if let Some(csp) = &sec.content_security_policy
                && is_html(content_type)
            {
                edits.set.push(("content-security-policy", csp.clone()));
            }
        }

        if let Some(cors) = rules.cors {
            edits.remove.extend(
                cors::RESPONSE_HEADER_NAMES
                    .iter()
                    .copied()
                    .filter(|h| has(h)),
            );
            if let Some(origin) = &self.origin {
                edits.set.extend(cors.response_headers(origin));
            }
            if cors.varies_by_origin() {
                let vary: Vec<&[u8]> = headers
                    .iter()
                    .filter(|(n, _)| *n == b"vary")
                    .map(|(_, v)| *v)
                    .collect();
                if let Some(v) = cors::vary_with_origin(&vary) {
                    edits.set.push(("vary", v));
                }
            }
        }
        edits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headers::Hsts;

    #[test]
    fn a_bodiless_upstream_error_is_answered_locally_with_its_own_status() {
        let edits = || Edits {
            remove: vec!["server"],
            set: vec![("x-content-type-options", "nosniff".to_string())],
            replace_body: Some("{}".to_string()),
        };
        let quota = || vec![("ratelimit-limit", "60".to_string())];
        let status: &[(&[u8], &[u8])] = &[(b":status", b"503")];
        let AtHeaders::Reply(reply) = edits().at_headers(status, true, quota()) else {
            panic!("a local reply");
        };
        assert_eq!((reply.status, reply.body.as_str()), (503, "{}"));
        assert!(
            reply
                .headers
                .contains(&("ratelimit-limit", "60".to_string()))
        );
        let odd: &[(&[u8], &[u8])] = &[(b":status", b"5x3")];
        assert!(
            matches!(edits().at_headers(odd, true, quota()), AtHeaders::Reply(r) if r.status == 502)
        );
        let AtHeaders::Edit(e) = edits().at_headers(status, false, quota()) else {
            panic!("a body follows: it is rewritten as it passes");
        };
        assert_eq!(e.replace_body.as_deref(), Some("{}"));
        assert_eq!(e.set.last(), Some(&("ratelimit-limit", "60".to_string())));
        let plain = Edits::default().at_headers(status, true, quota());
        assert_eq!(
            plain,
            AtHeaders::Edit(Edits {
                set: quota(),
                ..Edits::default()
            })
        );
    }

    #[test]
    fn hsts_values_follow_rfc_6797() {
        let mut h = Hsts {
            max_age_secs: 600,
            include_subdomains: false,
            preload: false,
        };
        assert_eq!(h.value(), "max-age=600");
        h.include_subdomains = true;
        h.preload = true;
        assert_eq!(h.value(), "max-age=600; includeSubDomains; preload");
    }

    #[test]
    fn every_5xx_and_non_json_4xx_is_replaced() {
        let json: Option<&[u8]> = Some(b"application/json; charset=utf-8");
        let problem: Option<&[u8]> = Some(b"Application/Problem+JSON");
        let html: Option<&[u8]> = Some(b"text/html");
        assert!(replaces(500, json));
        assert!(replaces(503, None));
        assert!(replaces(502, html));
        assert!(!replaces(404, json));
        assert!(!replaces(422, problem));
        assert!(replaces(404, html));
        assert!(replaces(400, None));
        assert!(replaces(401, Some(b"text/plain")));
        assert!(!replaces(200, html));
        assert!(!replaces(302, html));
        assert!(!replaces(600, html));
    }

    #[test]
    fn html_is_recognised_by_media_type() {
        assert!(is_html(Some(b"text/html")));
        assert!(is_html(Some(b"TEXT/HTML; charset=UTF-8")));
        assert!(is_html(Some(b"application/xhtml+xml")));
        assert!(!is_html(Some(b"text/htmlx")));
        assert!(!is_html(Some(b"application/json")));
        assert!(!is_html(None));
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod policy_tests {
    use super::*;
    use crate::policy::load_yaml;

    const NOW: UnixNanos = UnixNanos(1_767_225_600_000_000_000);

    fn policy(src: &str) -> Policy {
        load_yaml("p.yaml", src)
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
    }

    fn headers<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    fn facts<'a>(method: &'a str, path: &'a str, origin: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            method: method.as_bytes(),
            path: path.as_bytes(),
            origin: origin.map(str::as_bytes),
            request_id: b"req-7",
            refused: false,
        }
    }

    fn set<'e>(edits: &'e Edits<'_>, name: &str) -> Option<&'e str> {
        edits
            .set
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    const POLICY: &str = "\
version: 1
environment: development
cors:
  allowed_origins: [https://app.example.com]
security_headers:
  content_security_policy: \"default-src 'self'\"
upstream_errors: { replace: true }
routes:
  - name: html
    match: { path_prefix: /pages/ }
    audience: external
    security_headers: { hsts: false, remove: [x-powered-by] }
    upstream_errors: { replace: false }
  - name: api
    match: { path_prefix: /v1/ }
    audience: external
";

    #[test]
    fn a_policy_without_response_rules_remembers_nothing() {
        let p = policy("version: 1\nroutes: [ { match: { path_prefix: / } } ]\n");
        assert!(!enabled(&p));
        assert_eq!(Pending::new(&p, Some(0), &facts("GET", "/", None)), None);
        assert!(!removes_server_header(&p));
    }

    #[test]
    fn a_route_without_response_rules_remembers_nothing_even_if_others_have_some() {
        let p = policy(
            "version: 1\nroutes:\n  - { match: { path_prefix: /a/ }, upstream_errors: { replace: true } }\n  - { match: { path_prefix: /b/ } }\n",
        );
        assert!(enabled(&p));
        assert!(Pending::new(&p, Some(0), &facts("GET", "/a/x", None)).is_some());
        assert_eq!(Pending::new(&p, Some(1), &facts("GET", "/b/x", None)), None);
        // A refusal is never replaced, so error hygiene alone leaves nothing to do.
        let mut refused = facts("GET", "/a/x", None);
        refused.refused = true;
        assert_eq!(Pending::new(&p, None, &refused), None);
    }

    #[test]
    fn an_upstream_500_with_a_stack_trace_becomes_the_standard_body_with_its_status() {
        let p = policy(POLICY);
        let pending = Pending::new(&p, Some(1), &facts("GET", "/v1/x", None)).unwrap();
        let upstream = headers(&[
            (":status", "500"),
            ("content-type", "text/html"),
            ("content-length", "1234"),
            ("etag", "\"abc\""),
            ("server", "gunicorn/20.1"),
            ("x-powered-by", "Express"),
        ]);
        let e = pending.on_response(&p, &upstream, NOW);
        let body: serde_json::Value =
            serde_json::from_str(e.replace_body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "error": "the upstream service failed",
                "code": "UPSTREAM_ERROR",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "request_id": "req-7",
            })
        );
        assert_eq!(set(&e, "content-type"), Some("application/json"));
        assert_eq!(set(&e, "cache-control"), Some("no-store"));
        for gone in ["content-length", "etag", "server", "x-powered-by"] {
            assert!(e.remove.contains(&gone), "{gone} kept: {e:?}");
        }
        // The replaced response is JSON now: no CSP.
        assert_eq!(set(&e, "content-security-policy"), None);
        assert_eq!(
            set(&e, "strict-transport-security"),
            Some("max-age=31536000")
        );
        assert_eq!(set(&e, "x-content-type-options"), Some("nosniff"));
        let reply = e.into_reply(500).unwrap();
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("UPSTREAM_ERROR"));
    }

    #[test]
    fn a_json_4xx_is_kept_and_an_html_4xx_is_replaced() {
        let p = policy(POLICY);
        let pending = Pending::new(&p, Some(1), &facts("GET", "/v1/x", None)).unwrap();
        let json = headers(&[(":status", "404"), ("content-type", "application/json")]);
        assert_eq!(pending.on_response(&p, &json, NOW).replace_body, None);
        let html = headers(&[(":status", "404"), ("content-type", "text/html")]);
        let body = pending.on_response(&p, &html, NOW).replace_body.unwrap();
        assert!(body.contains("\"code\":\"UPSTREAM_ERROR\""), "{body}");
        assert!(
            body.contains("the upstream service could not process the request"),
            "{body}"
        );
    }

    #[test]
    fn refusals_head_requests_and_routes_that_opt_out_are_not_replaced() {
        let p = policy(POLICY);
        let resp = headers(&[(":status", "503"), ("content-type", "text/plain")]);
        let mut refused = facts("GET", "/v1/x", None);
        refused.refused = true;
        let local = Pending::new(&p, None, &refused).unwrap();
        assert_eq!(local.on_response(&p, &resp, NOW).replace_body, None);
        let head = Pending::new(&p, Some(1), &facts("HEAD", "/v1/x", None)).unwrap();
        assert_eq!(head.on_response(&p, &resp, NOW).replace_body, None);
        let pages = Pending::new(&p, Some(0), &facts("GET", "/pages/x", None)).unwrap();
        assert_eq!(pages.on_response(&p, &resp, NOW).replace_body, None);
    }

    #[test]
    fn the_csp_goes_on_html_only_and_routes_override_the_security_headers() {
        let p = policy(POLICY);
        let api = Pending::new(&p, Some(1), &facts("GET", "/v1/x", None)).unwrap();
        let html = headers(&[
            (":status", "200"),
            ("content-type", "text/html; charset=utf-8"),
        ]);
        let e = api.on_response(&p, &html, NOW);
        assert_eq!(
            set(&e, "content-security-policy"),
            Some("default-src 'self'")
        );
        let json = headers(&[(":status", "200"), ("content-type", "application/json")]);
        assert_eq!(
            set(&api.on_response(&p, &json, NOW), "content-security-policy"),
            None
        );
        let pages = Pending::new(&p, Some(0), &facts("GET", "/pages/x", None)).unwrap();
        let upstream = headers(&[
            (":status", "200"),
            ("content-type", "text/html"),
            ("server", "nginx"),
            ("x-powered-by", "PHP"),
        ]);
        let e = pages.on_response(&p, &upstream, NOW);
        assert_eq!(set(&e, "strict-transport-security"), None);
        assert_eq!(
            set(&e, "content-security-policy"),
            Some("default-src 'self'")
        );
        assert_eq!(e.remove, vec!["x-powered-by"]);
        assert!(removes_server_header(&p));
    }

    #[test]
    fn an_allowed_origin_gets_cors_headers_and_every_response_varies_by_origin() {
        let p = policy(POLICY);
        let allowed = Pending::new(
            &p,
            Some(1),
            &facts("GET", "/v1/x", Some("https://app.example.com")),
        )
        .unwrap();
        let upstream = headers(&[
            (":status", "200"),
            ("content-type", "application/json"),
            ("vary", "Accept-Encoding"),
            ("access-control-allow-origin", "*"),
        ]);
        let e = allowed.on_response(&p, &upstream, NOW);
        assert_eq!(
            set(&e, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(set(&e, "vary"), Some("Accept-Encoding, Origin"));
        assert!(e.remove.contains(&"access-control-allow-origin"));

        let other = Pending::new(
            &p,
            Some(1),
            &facts("GET", "/v1/x", Some("https://evil.example.com")),
        )
        .unwrap();
        let e = other.on_response(&p, &upstream, NOW);
        assert_eq!(set(&e, "access-control-allow-origin"), None);
        assert!(e.remove.contains(&"access-control-allow-origin"));
        assert_eq!(set(&e, "vary"), Some("Accept-Encoding, Origin"));
    }

    #[test]
    fn a_refusal_with_no_route_uses_the_top_level_rules() {
        let p = policy(POLICY);
        let mut refused = facts("GET", "/nowhere", Some("https://app.example.com"));
        refused.refused = true;
        let pending = Pending::new(&p, None, &refused).unwrap();
        let local = headers(&[(":status", "404"), ("content-type", "application/json")]);
        let e = pending.on_response(&p, &local, NOW);
        assert_eq!(
            set(&e, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(e.replace_body, None);
        assert_eq!(
            set(&e, "strict-transport-security"),
            Some("max-age=31536000")
        );
    }
}
