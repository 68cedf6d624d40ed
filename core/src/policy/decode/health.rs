//! Decoding of the `health` section (type in [`crate::policy::HealthPolicy`]).

use super::{Decoder, join};
use crate::policy::HealthPolicy;
use crate::policy::tree::{Node, Value};
use crate::route::{PathMatch, Route};

impl Decoder {
    /// `routes`: the policy's routes and their list node, when they decoded; a route
    /// whose pattern is the health path is refused, since it would never be reached.
    pub(super) fn health(
        &mut self,
        node: &Node,
        path: &str,
        routes: Option<(&[Route], &Node)>,
    ) -> Option<HealthPolicy> {
        let f = self.object(node, path, &["path"])?;
        let n = self.required(&f, path, "path")?;
        let pp = join(path, "path");
        let p = self.string(n, &pp)?;
        // Matched byte for byte, so one spelling only: a request spelled otherwise goes
        // through routing like any other.
        if crate::route::check_normal_form(p.as_bytes()).is_err() || p.contains(['?', '#', '%']) {
            self.error(
                &pp,
                n.pos,
                "must be an exact path: start with '/', in normal form, without percent-encoding or query (no '//', '.', '..', ';', '%', '?' or spaces)",
            );
            return None;
        }
        if let Some((routes, list)) = routes
            && let Some(i) = routes.iter().position(|r| names(r, p))
        {
            let route = routes.get(i).map_or("", |r| r.name.as_str());
            let at = match &list.value {
                Value::Seq(items) => items.get(i).and_then(|r| r.pos),
                _ => None,
            };
            let line = at.map_or(String::new(), |at| format!(", line {}", at.line));
            self.error(
                &pp,
                n.pos,
                format!(
                    "'{p}' is the path of route '{route}' (routes[{i}]{line}): the filter answers it before routing, so that route would never be reached; choose another path"
                ),
            );
            return None;
        }
        Some(HealthPolicy {
            path: p.to_string(),
        })
    }
}

/// Whether the route's pattern is `path`, give or take the trailing slash a route owns
/// (`path: /login` takes `/login/`, `path_prefix: /admin/` takes `/admin`). A broader
/// prefix (`/`) only loses that one path to the health route.
fn names(route: &Route, path: &str) -> bool {
    let pattern = match &route.path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
    };
    pattern.trim_end_matches('/') == path.trim_end_matches('/')
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use super::super::test_support::{errors, minimal};
    use crate::policy::load_yaml;

    #[test]
    fn a_health_path_is_decoded_and_absent_by_default() {
        let p = load_yaml("p.yaml", &minimal("health: { path: /readyz }\n", ""))
            .unwrap()
            .policy;
        assert_eq!(p.health.unwrap().path, "/readyz");
        let p = load_yaml("p.yaml", &minimal("", "")).unwrap().policy;
        assert_eq!(p.health, None);
        // A broader prefix route only loses that one path.
        let src =
            "version: 1\nhealth: { path: /v1/ready }\nroutes:\n  - match: { path_prefix: / }\n";
        assert!(load_yaml("p.yaml", src).is_ok());
    }

    #[test]
    fn a_path_that_is_not_one_exact_spelling_is_refused_with_its_position() {
        for bad in [
            "healthz",
            "/healthz?probe=1",
            "//healthz",
            "/a/../healthz",
            "/health%7a",
            "/healthz#x",
            "/a;b",
            "\"\"",
        ] {
            let errs = errors(&minimal(&format!("health:\n  path: {bad}\n"), ""));
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(
                errs[0].starts_with("p.yaml:3:9: health.path: must be an exact path"),
                "{bad}: {errs:?}"
            );
        }
        let errs = errors(&minimal("health:\n  path: 7\n", ""));
        assert_eq!(
            errs,
            ["p.yaml:3:9: health.path: expected a string, found an integer (quote it)"]
        );
    }

    #[test]
    fn health_mistakes_are_reported_with_their_position() {
        let errs = errors(&minimal("health: {}\n", ""));
        assert_eq!(errs, ["p.yaml:2:9: health: missing required field 'path'"]);
        let errs = errors(&minimal("health: { path: /readyz, methods: [GET] }\n", ""));
        assert_eq!(
            errs,
            ["p.yaml:2:26: health.methods: unknown field 'methods'; expected one of [path]"]
        );
        let errs = errors(&minimal("health: /readyz\n", ""));
        assert_eq!(
            errs,
            ["p.yaml:2:9: health: expected a mapping, found a string"]
        );
    }

    #[test]
    fn a_route_whose_pattern_is_the_health_path_is_refused_at_the_health_path() {
        let route = |m: &str| {
            format!(
                "version: 1\nhealth:\n  path: /healthz\nroutes:\n  - match: {{ path_prefix: /v1/ }}\n  - name: probe\n    match: {m}\n"
            )
        };
        for m in [
            "{ path: /healthz }",
            "{ path: /healthz/, methods: [GET] }",
            "{ path_prefix: /healthz }",
            "{ path_prefix: /healthz/ }",
        ] {
            let errs = errors(&route(m));
            assert_eq!(
                errs,
                [
                    "p.yaml:3:9: health.path: '/healthz' is the path of route 'probe' (routes[1], line 6): the filter answers it before routing, so that route would never be reached; choose another path"
                ],
                "{m}"
            );
        }
        for fine in [
            "{ path: /healthz/deep }",
            "{ path: /health }",
            "{ path_prefix: /healthzz }",
            "{ path: /HEALTHZ }",
        ] {
            assert_eq!(errors(&route(fine)), Vec::<String>::new(), "{fine}");
        }
    }

    #[test]
    fn the_plugin_configuration_decodes_the_same_health_section() {
        let loaded = load_yaml("p.yaml", &minimal("health: { path: /readyz }\n", "")).unwrap();
        let json = crate::policy::Policy::from_json(loaded.plugin_config_json.as_bytes()).unwrap();
        assert_eq!(json.health, loaded.policy.health);
        let clash =
            r#"{"version":1,"health":{"path":"/v1"},"routes":[{"match":{"path_prefix":"/v1/"}}]}"#;
        let errs = crate::policy::Policy::from_json(clash.as_bytes()).unwrap_err();
        assert!(
            errs.to_string()
                .starts_with("plugin configuration: health.path: '/v1' is the path of route 'route-0' (routes[0])"),
            "{errs}"
        );
    }
}
