//! Decoding of `environment`, `security_headers` and `upstream_errors`, and of a route's
//! overrides of them and of `cors` (types in [`crate::response`] and [`crate::cors`]).

use super::{Decoder, Fields, join};
use crate::cors::CorsPolicy;
use crate::policy::Environment;
use crate::policy::tree::{Node, Value};
use crate::response::headers::{DEFAULT_HSTS_MAX_AGE_SECS, Hsts, SecurityHeaders};

/// HSTS longer than two years gains nothing (the preload list asks for one).
const MAX_HSTS_SECS: u64 = 2 * DEFAULT_HSTS_MAX_AGE_SECS;
const MAX_CSP_LEN: usize = 4096;

/// What every route starts from: the top-level sections, decoded first. A route's mapping
/// changes only the fields it names, `false` turns the section off for the route, and a
/// route that says nothing has the top level's.
pub(super) struct Inherited {
    pub environment: Environment,
    pub cors: Option<CorsPolicy>,
    pub security_headers: Option<SecurityHeaders>,
    pub upstream_errors: bool,
    /// The policy's API key header, allowed in CORS requests by default.
    pub api_key_header: String,
    /// A top-level section had errors: routes must not report its absence again.
    pub broken: bool,
}

/// A route's CORS, security headers and error hygiene, merged with the top level's.
pub(super) struct RouteResponse {
    pub cors: Option<CorsPolicy>,
    pub security_headers: Option<SecurityHeaders>,
    pub upstream_errors: bool,
}

impl Decoder {
    /// The top-level `environment`, `cors`, `security_headers` and `upstream_errors`.
    /// Always returns what routes can start from; errors go to the decoder.
    pub(super) fn inherited(&mut self, f: &Fields<'_>, api_key_header: &str) -> Inherited {
        let mut out = Inherited {
            environment: Environment::Production,
            cors: None,
            security_headers: None,
            upstream_errors: false,
            api_key_header: api_key_header.to_string(),
            broken: false,
        };
        if let Some(n) = f.get("environment") {
            match self.string(n, "environment") {
                Some("production") => {}
                Some("development") => out.environment = Environment::Development,
                Some(other) => {
                    self.error(
                        "environment",
                        n.pos,
                        format!("unknown environment '{other}'; expected one of [production, development]"),
                    );
                }
                None => {}
            }
        }
        if let Some(n) = f.get("cors") {
            match self.cors(n, "cors", None, &out) {
                Some(c) => out.cors = c,
                None => out.broken = true,
            }
        }
        if let Some(n) = f.get("security_headers") {
            match self.security_headers(n, "security_headers", None) {
                Some(s) => out.security_headers = s,
                None => out.broken = true,
            }
        }
        if let Some(n) = f.get("upstream_errors") {
            match self.upstream_errors(n, "upstream_errors") {
                Some(b) => out.upstream_errors = b,
                None => out.broken = true,
            }
        }
        out
    }

    /// A route's `cors`, `security_headers` and `upstream_errors`, over `inherited`.
    pub(super) fn route_response(
        &mut self,
        f: &Fields<'_>,
        path: &str,
        inherited: &Inherited,
    ) -> Option<RouteResponse> {
        let cors = match f.get("cors") {
            None => Some(inherited.cors.clone()),
            Some(n) => self.cors(n, &join(path, "cors"), inherited.cors.as_ref(), inherited),
        };
        let security_headers = match f.get("security_headers") {
            None => Some(inherited.security_headers.clone()),
            Some(n) => self.security_headers(
                n,
                &join(path, "security_headers"),
                inherited.security_headers.as_ref(),
            ),
        };
        let upstream_errors = match f.get("upstream_errors") {
            None => Some(inherited.upstream_errors),
            Some(n) => self.upstream_errors(n, &join(path, "upstream_errors")),
        };
        Some(RouteResponse {
            cors: cors?,
            security_headers: security_headers?,
            upstream_errors: upstream_errors?,
        })
    }

    /// `security_headers:` over `base`; `false`: none, `true`: the defaults (or `base`).
    fn security_headers(
        &mut self,
        node: &Node,
        path: &str,
        base: Option<&SecurityHeaders>,
    ) -> Option<Option<SecurityHeaders>> {
        let start = || base.cloned().unwrap_or_default();
        match node.value {
            Value::Bool(false) => return Some(None),
            Value::Bool(true) => return Some(Some(start())),
            _ => {}
        }
        let f = self.object(
            node,
            path,
            &["hsts", "nosniff", "content_security_policy", "remove"],
        )?;
        let mut out = start();
        let mut ok = true;
        if let Some(n) = f.get("hsts") {
            match self.hsts(n, &join(path, "hsts"), out.hsts.as_ref()) {
                Some(h) => out.hsts = h,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("nosniff") {
            match self.boolean(n, &join(path, "nosniff")) {
                Some(b) => out.nosniff = b,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("content_security_policy") {
            let cp = join(path, "content_security_policy");
            if n.value == Value::Bool(false) {
                out.content_security_policy = None;
            } else {
                match self.string(n, &cp) {
                    Some(s)
                        if !s.trim().is_empty()
                            && s.len() <= MAX_CSP_LEN
                            && s.bytes().all(|b| (0x20..0x7f).contains(&b)) =>
                    {
                        out.content_security_policy = Some(s.trim().to_string());
                    }
                    Some(_) => {
                        self.error(
                            &cp,
                            n.pos,
                            format!("must be one line of visible ASCII, at most {MAX_CSP_LEN} characters (or false for none)"),
                        );
                        ok = false;
                    }
                    None => ok = false,
                }
            }
        }
        if let Some(n) = f.get("remove") {
            let rp = join(path, "remove");
            match self.header_names(n, &rp) {
                Some(names) => out.remove = names,
                None => ok = false,
            }
        }
        ok.then_some(Some(out))
    }

    /// `hsts:` `false`, or `{max_age, include_subdomains, preload}` over `base`.
    fn hsts(&mut self, node: &Node, path: &str, base: Option<&Hsts>) -> Option<Option<Hsts>> {
        if node.value == Value::Bool(false) {
            return Some(None);
        }
        let f = self.object(node, path, &["max_age", "include_subdomains", "preload"])?;
        let mut out = base.cloned().unwrap_or(Hsts {
            max_age_secs: DEFAULT_HSTS_MAX_AGE_SECS,
            include_subdomains: false,
            preload: false,
        });
        let mut ok = true;
        if let Some(n) = f.get("max_age") {
            match self.duration(n, &join(path, "max_age"), MAX_HSTS_SECS) {
                Some(s) => out.max_age_secs = s,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("include_subdomains") {
            match self.boolean(n, &join(path, "include_subdomains")) {
                Some(b) => out.include_subdomains = b,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("preload") {
            match self.boolean(n, &join(path, "preload")) {
                Some(b) => out.preload = b,
                None => ok = false,
            }
        }
        if ok
            && out.preload
            && (!out.include_subdomains || out.max_age_secs < DEFAULT_HSTS_MAX_AGE_SECS)
        {
            let pos = f.get("preload").and_then(|n| n.pos).or(node.pos);
            self.error(
                &join(path, "preload"),
                pos,
                "preload needs include_subdomains: true and a max_age of at least 365d (the preload list's rules)",
            );
            ok = false;
        }
        ok.then_some(Some(out))
    }

    /// `upstream_errors: { replace: true|false }`.
    fn upstream_errors(&mut self, node: &Node, path: &str) -> Option<bool> {
        let f = self.object(node, path, &["replace"])?;
        let n = self.required(&f, path, "replace")?;
        self.boolean(n, &join(path, "replace"))
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use crate::policy::load_yaml;
    use crate::response::headers::{Hsts, SecurityHeaders};

    use super::super::test_support::{errors, minimal};

    fn route(src: &str) -> crate::route::Route {
        load_yaml("p.yaml", src)
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
            .routes[0]
            .clone()
    }

    #[test]
    fn security_headers_default_to_a_year_of_hsts_nosniff_and_removing_server() {
        let r = route(&minimal("security_headers: {}\n", ""));
        assert_eq!(r.security_headers, Some(SecurityHeaders::default()));
        let s = r.security_headers.unwrap();
        assert_eq!(s.hsts.unwrap().value(), "max-age=31536000");
        assert!(s.nosniff);
        assert_eq!(s.remove, vec!["server", "x-powered-by"]);
        assert_eq!(route(&minimal("", "")).security_headers, None);
        assert_eq!(
            route(&minimal("security_headers: true\n", "")).security_headers,
            Some(SecurityHeaders::default())
        );
    }

    #[test]
    fn a_route_overrides_the_fields_it_names_or_turns_them_off() {
        let top = "security_headers:\n  hsts: { max_age: 30d, include_subdomains: true }\n  content_security_policy: \"default-src 'none'\"\n";
        let s = route(&minimal(
            top,
            "    security_headers: { hsts: { max_age: 1d }, content_security_policy: false, remove: [X-Powered-By] }\n",
        ))
        .security_headers
        .unwrap();
        assert_eq!(
            s.hsts,
            Some(Hsts {
                max_age_secs: 86_400,
                include_subdomains: true,
                preload: false
            })
        );
        assert_eq!(s.content_security_policy, None);
        assert_eq!(s.remove, vec!["x-powered-by"]);
        let r = route(&minimal(top, "    security_headers: false\n"));
        assert_eq!(r.security_headers, None);
        let s = route(&minimal(top, "    security_headers: { hsts: false }\n"))
            .security_headers
            .unwrap();
        assert_eq!(s.hsts, None);
        assert_eq!(
            s.content_security_policy.as_deref(),
            Some("default-src 'none'")
        );
    }

    #[test]
    fn upstream_errors_are_replaced_where_the_policy_says_so() {
        let top = "upstream_errors: { replace: true }\n";
        assert!(route(&minimal(top, "")).upstream_errors);
        assert!(!route(&minimal(top, "    upstream_errors: { replace: false }\n")).upstream_errors);
        assert!(!route(&minimal("", "")).upstream_errors);
        assert!(route(&minimal("", "    upstream_errors: { replace: true }\n")).upstream_errors);
    }

    #[test]
    fn mistakes_are_reported_with_their_position() {
        let errs = errors(&minimal(
            concat!(
                "security_headers:\n",
                "  hsts: { max_age: 10y, preload: maybe }\n",
                "  content_security_policy: \"a\\nb\"\n",
                "  remove: [':status']\n",
                "  nosnif: true\n",
                "upstream_errors: { replce: true }\n",
            ),
            "    security_headers: { hsts: { preload: true } }\n",
        ));
        let joined = errs.join("\n");
        for expected in [
            "p.yaml:3:20: security_headers.hsts.max_age: expected a duration",
            "security_headers.hsts.preload: expected true or false",
            "security_headers.content_security_policy: must be one line of visible ASCII",
            "security_headers.remove[0]: must be an HTTP header name",
            "p.yaml:6:3: security_headers.nosnif: unknown field 'nosnif'",
            "upstream_errors.replce: unknown field 'replce'; expected one of [replace]",
            "upstream_errors: missing required field 'replace'",
            "routes[0].security_headers.hsts.preload: preload needs include_subdomains: true",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }
}
