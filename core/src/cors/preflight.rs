//! A CORS preflight's answer over the whole policy: the route it asks about, that
//! route's rules, and the 204 or the refusal.

use super::{CorsRefusal, Preflight};
use crate::policy::Policy;
use crate::refusal::{Denial, LocalReply};
use crate::route;

/// The answer to a preflight: `Ok` a 204 with the CORS headers, `Err` the refusal.
/// `None` when the policy does no CORS at all: the request then takes the normal path.
pub fn answer_preflight(policy: &Policy, p: &Preflight<'_>) -> Option<Result<LocalReply, Denial>> {
    if !policy.does_cors() {
        return None;
    }
    Some(preflight(policy, p))
}

fn preflight(policy: &Policy, p: &Preflight<'_>) -> Result<LocalReply, Denial> {
    let refuse = |r: CorsRefusal| Denial::CorsRejected(r);
    // Methods are case-sensitive (Fetch normalises only the well-known ones to upper case):
    // one no route could take is the preflight's refusal, not a malformed request.
    if !route::is_method(p.method) {
        return Err(refuse(CorsRefusal::Method));
    }
    let cors = route::resolve(&policy.routes, p.method, p.path)
        .map_err(Denial::Unclear)?
        .and_then(|i| policy.routes.get(i))
        .and_then(|r| r.cors.as_ref())
        .ok_or(refuse(CorsRefusal::Route))?;
    if !cors.allows_origin(p.origin) {
        return Err(refuse(CorsRefusal::Origin));
    }
    // Methods are case-sensitive (Fetch normalises only the well-known ones to upper case).
    if !cors.methods.iter().any(|m| m.as_bytes() == p.method) {
        return Err(refuse(CorsRefusal::Method));
    }
    for line in p.headers {
        for name in line.split(|b| *b == b',') {
            let name = name.trim_ascii();
            if name.is_empty() {
                continue;
            }
            if !cors
                .headers
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            {
                return Err(refuse(CorsRefusal::Headers));
            }
        }
    }
    // `allows_origin` accepted it, so it is a well-formed visible-ASCII origin.
    let origin = std::str::from_utf8(p.origin).map_err(|_| refuse(CorsRefusal::Origin))?;
    Ok(LocalReply {
        status: 204,
        headers: cors.preflight_headers(origin),
        body: String::new(),
    })
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use super::*;
    use crate::cors::*;
    use crate::policy::load_yaml;

    const POLICY: &str = "\
version: 1
cors:
  allowed_origins: [https://app.example.com]
  allowed_methods: [GET, POST, DELETE]
  allowed_headers: [content-type, x-api-key]
  max_age: 10m
  allow_credentials: true
routes:
  - name: health
    match: { path: /healthz, methods: [GET] }
    audience: external
    cors: false
  - name: public
    match: { path_prefix: /public/ }
    audience: external
    cors: { allowed_origins: ['*'], allow_credentials: false }
  - name: reports
    match: { path_prefix: /reports/, methods: [GET] }
  - name: api
    match: { path_prefix: /v1/ }
";

    fn policy(src: &str) -> Policy {
        load_yaml("p.yaml", src)
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
    }

    fn ask(
        p: &Policy,
        path: &str,
        origin: &str,
        method: &str,
        headers: &[&str],
    ) -> Option<Result<LocalReply, Denial>> {
        let lines: Vec<&[u8]> = headers.iter().map(|h| h.as_bytes()).collect();
        let preflight = Preflight::from_request(
            b"OPTIONS",
            path.as_bytes(),
            Some(origin.as_bytes()),
            Some(method.as_bytes()),
            &lines,
        )
        .unwrap();
        answer_preflight(p, &preflight)
    }

    fn header<'r>(reply: &'r LocalReply, name: &str) -> Option<&'r str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_204_and_the_cors_headers() {
        let p = policy(POLICY);
        let reply = ask(
            &p,
            "/v1/orders/7?x=1",
            "https://app.example.com",
            "DELETE",
            &["Content-Type, X-API-Key"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(reply.status, 204);
        assert!(reply.body.is_empty());
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            header(&reply, "access-control-allow-methods"),
            Some("GET, POST, DELETE")
        );
        assert_eq!(
            header(&reply, "access-control-allow-headers"),
            Some("content-type, x-api-key")
        );
        assert_eq!(header(&reply, "access-control-max-age"), Some("600"));
        assert_eq!(
            header(&reply, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&reply, "vary"), Some("Origin"));
    }

    #[test]
    fn the_origin_is_echoed_as_the_browser_sent_it() {
        let p = policy(POLICY);
        let reply = ask(&p, "/v1/x", "HTTPS://App.Example.com:443", "GET", &[])
            .unwrap()
            .unwrap();
        assert_eq!(
            header(&reply, "access-control-allow-origin"),
            Some("HTTPS://App.Example.com:443")
        );
    }

    #[test]
    fn each_failed_check_refuses_with_403_cors_rejected_and_no_cors_headers() {
        let p = policy(POLICY);
        let refused = |path, origin, method, headers: &[&str]| {
            ask(&p, path, origin, method, headers).unwrap().unwrap_err()
        };
        let app = "https://app.example.com";
        assert_eq!(
            refused("/v1/x", "https://evil.example.com", "GET", &[]),
            Denial::CorsRejected(CorsRefusal::Origin)
        );
        assert_eq!(
            refused("/v1/x", "null", "GET", &[]),
            Denial::CorsRejected(CorsRefusal::Origin)
        );
        assert_eq!(
            refused("/v1/x", app, "PUT", &[]),
            Denial::CorsRejected(CorsRefusal::Method)
        );
        assert_eq!(
            refused("/v1/x", app, "get", &[]),
            Denial::CorsRejected(CorsRefusal::Method)
        );
        assert_eq!(
            refused("/v1/x", app, "POST", &["content-type", "x-debug"]),
            Denial::CorsRejected(CorsRefusal::Headers)
        );
        // The route's own methods count: /reports/ takes GET only.
        assert_eq!(
            refused("/reports/q1", app, "POST", &[]),
            Denial::CorsRejected(CorsRefusal::Route)
        );
        assert_eq!(
            refused("/healthz", app, "GET", &[]),
            Denial::CorsRejected(CorsRefusal::Route)
        );
        assert_eq!(
            refused("/nowhere", app, "GET", &[]),
            Denial::CorsRejected(CorsRefusal::Route)
        );
        assert_eq!(
            refused("/v1/../admin", app, "GET", &[]),
            Denial::Unclear(route::Unclear::Path)
        );
        let reply =
            Denial::CorsRejected(CorsRefusal::Origin).reply(crate::time::UnixNanos(0), b"r");
        assert_eq!(reply.status, 403);
        assert!(
            reply
                .headers
                .iter()
                .all(|(n, _)| !n.starts_with("access-control-") && *n != "vary")
        );
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["code"], "CORS_REJECTED");
        assert_eq!(body["error"], "this cross-origin request is not allowed");
    }

    #[test]
    fn a_wildcard_route_answers_star_without_credentials() {
        let p = policy(POLICY);
        let reply = ask(
            &p,
            "/public/widget.js",
            "https://anyone.example",
            "GET",
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(header(&reply, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&reply, "access-control-allow-credentials"), None);
        assert_eq!(header(&reply, "vary"), None);
        // Fields the route did not name come from the top level.
        assert_eq!(header(&reply, "access-control-max-age"), Some("600"));
    }

    #[test]
    fn without_cors_anywhere_a_preflight_takes_the_normal_path() {
        let p = policy("version: 1\nroutes: [ { match: { path_prefix: / } } ]\n");
        assert!(!p.does_cors());
        assert_eq!(ask(&p, "/x", "https://app.example.com", "GET", &[]), None);
    }
}
