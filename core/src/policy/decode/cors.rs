//! Decoding of `cors` (top level, and a route's override of it), into
//! [`crate::cors::CorsPolicy`]. A route's `cors:` mapping changes only the fields it
//! names; `cors: false` turns CORS off for the route.

use super::response::Inherited;
use super::{Decoder, join};
use crate::cors::{
    AllowedOrigins, CorsPolicy, DEFAULT_MAX_AGE_SECS, DEFAULT_METHODS, MAX_MAX_AGE_SECS,
    OriginError, is_local_origin, normalize_origin,
};
use crate::policy::Environment;
use crate::policy::tree::{Node, Value};

const FIELDS: [&str; 6] = [
    "allowed_origins",
    "allowed_methods",
    "allowed_headers",
    "expose_headers",
    "max_age",
    "allow_credentials",
];

impl Decoder {
    /// `cors:` at `path`. `base`: the top-level CORS a route's override starts from
    /// (`None` at the top level, or when the policy has none). `Some(None)`: CORS off.
    pub(super) fn cors(
        &mut self,
        node: &Node,
        path: &str,
        base: Option<&CorsPolicy>,
        inherited: &Inherited,
    ) -> Option<Option<CorsPolicy>> {
        if node.value == Value::Bool(false) {
            return Some(None);
        }
        if let Value::Bool(true) = node.value {
            self.error(
                path,
                node.pos,
                "expected a mapping (allowed_origins, ...) or false; a route has the policy's cors unless it says otherwise",
            );
            return None;
        }
        let f = self.object(node, path, &FIELDS)?;
        let mut ok = true;

        let origins_node = f.get("allowed_origins");
        let origins = match origins_node {
            Some(n) => self.origins(n, &join(path, "allowed_origins"), inherited.environment),
            None => match base {
                Some(b) => Some(b.origins.clone()),
                None => {
                    if !inherited.broken {
                        let why = if path == "cors" {
                            String::new()
                        } else {
                            " (the policy has no top-level cors to take it from)".to_string()
                        };
                        self.error(
                            path,
                            node.pos,
                            format!("missing required field 'allowed_origins'{why}"),
                        );
                    }
                    None
                }
            },
        };
        let methods = match f.get("allowed_methods") {
            Some(n) => self.methods(n, &join(path, "allowed_methods")),
            None => Some(base.map_or_else(
                || DEFAULT_METHODS.iter().map(|m| (*m).to_string()).collect(),
                |b| b.methods.clone(),
            )),
        };
        let headers = match f.get("allowed_headers") {
            Some(n) => self.header_names(n, &join(path, "allowed_headers")),
            None => Some(base.map_or_else(
                || {
                    let mut h = vec!["authorization".to_string(), "content-type".to_string()];
                    if !h.contains(&inherited.api_key_header) {
                        h.push(inherited.api_key_header.clone());
                    }
                    h
                },
                |b| b.headers.clone(),
            )),
        };
        let expose_headers = match f.get("expose_headers") {
            Some(n) => self.header_names(n, &join(path, "expose_headers")),
            None => Some(base.map(|b| b.expose_headers.clone()).unwrap_or_default()),
        };
        let max_age_secs = match f.get("max_age") {
            Some(n) => self.duration(n, &join(path, "max_age"), MAX_MAX_AGE_SECS),
            None => Some(base.map_or(DEFAULT_MAX_AGE_SECS, |b| b.max_age_secs)),
        };
        let credentials_node = f.get("allow_credentials");
        let allow_credentials = match credentials_node {
            Some(n) => self.boolean(n, &join(path, "allow_credentials")),
            None => Some(base.is_some_and(|b| b.allow_credentials)),
        };
        if let (Some(AllowedOrigins::Any), Some(true)) = (&origins, allow_credentials) {
            // Report it where this level wrote it.
            let (at, pos) = match (credentials_node, origins_node) {
                (Some(n), _) => (join(path, "allow_credentials"), n.pos),
                (None, Some(n)) => (join(path, "allowed_origins"), n.pos),
                (None, None) => (path.to_string(), node.pos),
            };
            self.error(
                &at,
                pos,
                "'*' cannot be used with allow_credentials: true (browsers refuse credentials with a wildcard origin); list the exact origins",
            );
            ok = false;
        }
        let cors = CorsPolicy {
            origins: origins?,
            methods: methods?,
            headers: headers?,
            expose_headers: expose_headers?,
            max_age_secs: max_age_secs?,
            allow_credentials: allow_credentials?,
        };
        ok.then_some(Some(cors))
    }

    /// `allowed_origins`: exact origins, or `['*']` alone.
    fn origins(
        &mut self,
        node: &Node,
        path: &str,
        environment: Environment,
    ) -> Option<AllowedOrigins> {
        let items = self.list(node, path)?;
        if items.is_empty() {
            self.error(
                path,
                node.pos,
                "at least one origin is required (or leave cors out)",
            );
            return None;
        }
        let mut list: Vec<String> = Vec::new();
        let mut any = false;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(raw) = self.string(item, &ip) else {
                ok = false;
                continue;
            };
            if raw == "*" {
                if items.len() > 1 {
                    self.error(
                        &ip,
                        item.pos,
                        "'*' allows every origin; it cannot be listed with others",
                    );
                    ok = false;
                }
                any = true;
                continue;
            }
            match normalize_origin(raw) {
                Ok(origin) => {
                    if list.contains(&origin) {
                        self.error(&ip, item.pos, format!("duplicate origin '{origin}'"));
                        ok = false;
                    } else {
                        if environment == Environment::Production && is_local_origin(&origin) {
                            self.warn(
                                &ip,
                                item.pos,
                                format!(
                                    "'{raw}' is a local development origin in a production policy; remove it, or set `environment: development` if this policy is not for production"
                                ),
                            );
                        }
                        list.push(origin);
                    }
                }
                Err(OriginError::Wildcard) => {
                    self.error(
                        &ip,
                        item.pos,
                        "wildcard origins are not supported; list each origin, e.g. https://app.example.com",
                    );
                    ok = false;
                }
                Err(OriginError::NotAnOrigin) => {
                    self.error(
                        &ip,
                        item.pos,
                        format!(
                            "'{raw}' is not an origin; write scheme://host[:port] with no path or trailing slash, e.g. https://app.example.com"
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        Some(if any {
            AllowedOrigins::Any
        } else {
            AllowedOrigins::Exact(list)
        })
    }

    /// Upper-case method names, e.g. `[GET, POST]`.
    fn methods(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            match self.string(item, &ip) {
                Some(s)
                    if !s.is_empty()
                        && s.len() <= 32
                        && s.bytes().all(|b| b.is_ascii_uppercase()) =>
                {
                    if !out.iter().any(|m| m == s) {
                        out.push(s.to_string());
                    }
                }
                Some(s) => {
                    self.error(
                        &ip,
                        item.pos,
                        format!("'{s}' is not an HTTP method; use upper case, e.g. GET"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Header names, lower-cased. `*` is refused: it means "any" only without
    /// credentials, and listing the names keeps the policy reviewable.
    pub(super) fn header_names(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(s) = self.string(item, &ip) else {
                ok = false;
                continue;
            };
            let name = s.to_ascii_lowercase();
            let token = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if name == "*" {
                self.error(&ip, item.pos, "'*' is not supported; list the header names");
                ok = false;
            } else if !token {
                self.error(
                    &ip,
                    item.pos,
                    "must be an HTTP header name (letters, digits, '-', '_')",
                );
                ok = false;
            } else if !out.contains(&name) {
                out.push(name);
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use crate::cors::{AllowedOrigins, CorsPolicy};
    use crate::policy::load_yaml;

    use super::super::test_support::{errors, minimal};

    fn route_cors(src: &str) -> Option<CorsPolicy> {
        load_yaml("p.yaml", src)
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
            .routes[0]
            .cors
            .clone()
    }

    #[test]
    fn defaults_fill_in_what_the_policy_leaves_out() {
        let c = route_cors(&minimal(
            "api_key: { header: X-Key }\ncors: { allowed_origins: [HTTPS://App.Example.com:443] }\n",
            "",
        ))
        .unwrap();
        assert_eq!(
            c,
            CorsPolicy {
                origins: AllowedOrigins::Exact(vec!["https://app.example.com".into()]),
                methods: vec!["GET".into(), "HEAD".into(), "POST".into()],
                headers: vec![
                    "authorization".into(),
                    "content-type".into(),
                    "x-key".into()
                ],
                expose_headers: vec![],
                max_age_secs: 300,
                allow_credentials: false,
            }
        );
    }

    #[test]
    fn a_route_overrides_the_fields_it_names_or_turns_cors_off() {
        let top = "cors:\n  allowed_origins: [https://a.example]\n  allowed_methods: [GET]\n  max_age: 1h\n";
        let c = route_cors(&minimal(
            top,
            "    cors: { allowed_methods: [GET, PUT], expose_headers: [X-Total] }\n",
        ))
        .unwrap();
        assert_eq!(c.methods, vec!["GET", "PUT"]);
        assert_eq!(c.expose_headers, vec!["x-total"]);
        assert_eq!(c.max_age_secs, 3600);
        assert_eq!(
            c.origins,
            AllowedOrigins::Exact(vec!["https://a.example".into()])
        );
        assert_eq!(route_cors(&minimal(top, "    cors: false\n")), None);
        assert!(route_cors(&minimal(top, "")).is_some());
        assert_eq!(route_cors(&minimal("", "")), None);
    }

    #[test]
    fn a_wildcard_with_credentials_is_an_error_at_its_position() {
        let errs = errors(&minimal(
            "cors:\n  allowed_origins: ['*']\n  allow_credentials: true\n",
            "",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with(
                "p.yaml:4:22: cors.allow_credentials: '*' cannot be used with allow_credentials: true"
            ),
            "{}",
            errs[0]
        );
        // Credentials from the top level, the wildcard from a route: reported at the route.
        let errs = errors(&minimal(
            "cors:\n  allowed_origins: [https://a.example]\n  allow_credentials: true\n",
            "    cors: { allowed_origins: ['*'] }\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with("p.yaml:7:30: routes[0].cors.allowed_origins: '*' cannot"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn bad_origins_methods_and_headers_are_named_with_their_position() {
        let errs = errors(&minimal(
            concat!(
                "cors:\n",
                "  allowed_origins: [https://a.example/, 'https://*.example.com', a.example, https://b.example, HTTPS://B.example:443, '*']\n",
                "  allowed_methods: [get]\n",
                "  allowed_headers: ['*', 'x y']\n",
                "  max_age: 2d\n",
                "  colour: blue\n",
            ),
            "    cors: true\n",
        ));
        let joined = errs.join("\n");
        for expected in [
            "p.yaml:3:21: cors.allowed_origins[0]: 'https://a.example/' is not an origin",
            "cors.allowed_origins[1]: wildcard origins are not supported",
            "cors.allowed_origins[2]: 'a.example' is not an origin",
            "cors.allowed_origins[4]: duplicate origin 'https://b.example'",
            "cors.allowed_origins[5]: '*' allows every origin; it cannot be listed with others",
            "p.yaml:4:21: cors.allowed_methods[0]: 'get' is not an HTTP method",
            "cors.allowed_headers[0]: '*' is not supported; list the header names",
            "cors.allowed_headers[1]: must be an HTTP header name",
            "cors.max_age: at most 86400 seconds",
            "p.yaml:7:3: cors.colour: unknown field 'colour'; expected one of [allowed_origins, allowed_methods, allowed_headers, expose_headers, max_age, allow_credentials]",
            "routes[0].cors: expected a mapping (allowed_origins, ...) or false",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert!(
            !joined.contains("missing required field 'allowed_origins'"),
            "a broken top level is not reported again at the routes:\n{joined}"
        );
    }

    #[test]
    fn a_route_cors_without_a_top_level_one_needs_its_origins() {
        let errs = errors(&minimal("", "    cors: { allowed_methods: [GET] }\n"));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains("routes[0].cors: missing required field 'allowed_origins' (the policy has no top-level cors to take it from)"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn a_local_origin_in_a_production_policy_is_a_warning_with_its_position() {
        let src = minimal(
            "cors: { allowed_origins: [https://app.example.com, 'http://localhost:3000'] }\n",
            "    cors: { allowed_origins: ['http://127.0.0.1:5173'] }\n",
        );
        let loaded = load_yaml("p.yaml", &src).unwrap();
        let w: Vec<String> = loaded
            .warnings
            .errors
            .iter()
            .map(|w| format!("{}: {}: {}", w.pos.unwrap(), w.path, w.message))
            .collect();
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with("2:52: cors.allowed_origins[1]: 'http://localhost:3000' is a local development origin in a production policy"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("5:31: routes[0].cors.allowed_origins[0]: 'http://127.0.0.1:5173'"),
            "{}",
            w[1]
        );
        let dev = format!("environment: development\n{src}");
        assert!(load_yaml("p.yaml", &dev).unwrap().warnings.is_empty());
        let errs = errors(&format!("environment: staging\n{src}"));
        assert!(
            errs[0].contains(
                "environment: unknown environment 'staging'; expected one of [production, development]"
            ),
            "{errs:?}"
        );
    }
}
