//! Turns a configuration [`Node`] tree into validated policy types, collecting every
//! error (not only the first) with its field path and, for YAML, its position.
//!
//! This is the only place where policy input is validated. The request path works on the
//! types it produces and never re-checks them.

use super::tree::{Key, Node, Pos, Value};
use super::{
    DEFAULT_PLANS, KeyFormat, LogLevel, LoggingPolicy, Plan, Policy, PolicyError, StaticKey,
};
use crate::authn::api_key::{KeyHash, KeyRecord, MAX_SCOPES, Origin, is_valid_id};
use crate::route::{Audience, PathMatch, Route};
use crate::time::parse_rfc3339;

mod auth;
mod body;
mod cors;
mod feed;
mod health;
mod limits;
mod response;

/// Helpers the section decoders' tests share.
#[cfg(all(test, feature = "yaml"))]
mod test_support {
    use crate::policy::load_yaml;

    /// A policy with `extra` at the top and one `/v1/` route carrying `route_extra`.
    pub fn minimal(extra: &str, route_extra: &str) -> String {
        format!("version: 1\n{extra}routes:\n  - match: {{ path_prefix: /v1/ }}\n{route_extra}")
    }

    /// The policy's errors, one line each; empty when it loads.
    pub fn errors(src: &str) -> Vec<String> {
        match load_yaml("p.yaml", src) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }
}

pub(super) struct Decoder {
    pub errors: Vec<PolicyError>,
    /// Valid but probably wrong; reported by `gatehouse-harness check`, never fatal.
    pub warnings: Vec<PolicyError>,
    /// The top-level `body` section, which routes' own `body` sections override.
    body_default: crate::body::BodyPolicy,
    /// Every route limit's name as decoded, with its field path and position, for the
    /// uniqueness check once plans and routes are in ([`Decoder::unique_limit_names`]).
    limit_names: Vec<(String, String, Option<Pos>)>,
}

/// A mapping's fields, after unknown ones were reported.
struct Fields<'n> {
    node: &'n Node,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
            .filter(|v| v.value != Value::Null)
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

impl Decoder {
    pub fn new() -> Self {
        Decoder {
            errors: Vec::new(),
            warnings: Vec::new(),
            body_default: Default::default(),
            limit_names: Vec::new(),
        }
    }

    fn error(&mut self, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.errors.push(PolicyError {
            path: path.to_string(),
            pos,
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, pos: Option<Pos>, message: impl Into<String>) {
        self.warnings.push(PolicyError {
            path: path.to_string(),
            pos,
            message: message.into(),
        });
    }

    fn wrong_type(&mut self, path: &str, node: &Node, expected: &str) {
        let found = node.value.kind();
        self.error(
            path,
            node.pos,
            format!("expected {expected}, found {found}"),
        );
    }

    /// A mapping whose keys must all be in `allowed`.
    fn object<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(path, node, "a mapping");
            return None;
        };
        for (key, _) in entries {
            if !allowed.contains(&key.name.as_str()) {
                self.error(
                    &join(path, &key.name),
                    key.pos,
                    format!(
                        "unknown field '{}'; expected one of [{}]",
                        key.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Fields { node, entries })
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, path: &str, name: &str) -> Option<&'n Node> {
        let found = fields.get(name);
        if found.is_none() {
            self.error(
                path,
                fields.node.pos,
                format!("missing required field '{name}'"),
            );
        }
        found
    }

    fn string<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let kind = node.value.kind();
                self.error(
                    path,
                    node.pos,
                    format!("expected a string, found {kind} (quote it)"),
                );
                None
            }
            _ => {
                self.wrong_type(path, node, "a string");
                None
            }
        }
    }

    fn id(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if is_valid_id(s) {
            Some(s.to_string())
        } else {
            self.error(
                path,
                node.pos,
                "must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ + -",
            );
            None
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong_type(path, node, "true or false");
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => Some(i),
            Value::Int(i) => {
                self.error(
                    path,
                    node.pos,
                    format!("{i} is out of range; expected {min} to {max}"),
                );
                None
            }
            _ => {
                self.wrong_type(path, node, "an integer");
                None
            }
        }
    }

    fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(path, node, "a list");
                None
            }
        }
    }

    pub fn policy(&mut self, root: &Node, fingerprint: u64) -> Option<Policy> {
        let f = self.object(
            root,
            "",
            &[
                "version",
                "api_key",
                "plans",
                "unknown_plan",
                "keys",
                "routes",
                "errors",
                "jwt",
                "revocations",
                "hide_credentials",
                "rate_limit",
                "feed",
                "environment",
                "cors",
                "security_headers",
                "upstream_errors",
                "body",
                "logging",
                "health",
            ],
        )?;
        if let Some(v) = f.get("version") {
            self.integer(v, "version", 1, 1);
        }
        let api_key = match f.get("api_key") {
            Some(n) => self.api_key(n, "api_key"),
            None => Some(("x-api-key".to_string(), KeyFormat::Checksummed)),
        };
        let verbose_errors = match f.get("errors") {
            None => Some(false),
            Some(n) => {
                self.object(n, "errors", &["verbose"])
                    .and_then(|e| match e.get("verbose") {
                        None => Some(false),
                        Some(v) => self.boolean(v, "errors.verbose"),
                    })
            }
        };
        let plans = match f.get("plans") {
            Some(n) => self.plans(n, "plans"),
            None => Some(default_plans()),
        };
        let unknown_plan = match (f.get("unknown_plan"), &plans) {
            (None, _) => Some(None),
            (Some(n), Some(plans)) => self.unknown_plan(n, "unknown_plan", plans),
            (Some(_), None) => None,
        };
        let inherited = {
            let header = api_key.as_ref().map_or("x-api-key", |(h, _)| h.as_str());
            self.inherited(&f, header)
        };
        if let Some(n) = f.get("body")
            && let Some(body) = self.body_policy(n, "body", &Default::default())
        {
            self.body_default = body;
        }
        let routes = match f.get("routes") {
            Some(n) => self.routes(n, "routes", &inherited),
            None => {
                self.error("", root.pos, "missing required field 'routes'");
                None
            }
        };
        let keys = match (f.get("keys"), &plans) {
            (None, _) => Some(Vec::new()),
            (Some(n), Some(plans)) => self.keys(n, "keys", plans, fingerprint),
            (Some(n), None) => {
                // Plans are broken; still report what is wrong in the keys.
                self.keys(n, "keys", &default_plans(), fingerprint);
                None
            }
        };
        let jwt = match f.get("jwt") {
            None => Some(None),
            Some(n) => {
                let known = plans.clone().unwrap_or_else(default_plans);
                self.jwt(n, "jwt", &known).map(Some)
            }
        };
        let revocations = match f.get("revocations") {
            None => Some(Default::default()),
            Some(n) => {
                let longest = jwt
                    .as_ref()
                    .and_then(|j| j.as_ref())
                    .map(|j| j.longest_acceptance_secs());
                self.revocations(n, "revocations", fingerprint, longest)
            }
        };
        let rate_limit = {
            let known = plans.clone().unwrap_or_else(default_plans);
            // The rate limits' names, for allowlist entries that name one.
            let limits: Option<Vec<String>> = routes.as_ref().map(|routes| {
                known
                    .iter()
                    .map(|p| p.name.clone())
                    .chain(std::iter::once("anonymous".to_string()))
                    .chain(
                        routes
                            .iter()
                            .flat_map(|r| r.limits.iter().map(|l| l.name.clone())),
                    )
                    .collect()
            });
            match f.get("rate_limit") {
                None => Some(self.rate_limit_defaults(&known)),
                Some(n) => self.rate_limit(n, "rate_limit", &known, limits.as_deref()),
            }
        };
        if let (Some(plans), Some(_)) = (&plans, &routes) {
            self.unique_limit_names(plans);
        }
        let feed = match f.get("feed") {
            None => Some(None),
            Some(n) => self.feed(n, "feed").map(Some),
        };
        // Fleet-scoped limits exchange their counts through the feed's control service.
        if let (Some(rl), Some(routes), Some(None)) = (&rate_limit, &routes, &feed)
            && rl.any_fleet(routes)
        {
            let pos = f.get("rate_limit").and_then(|n| n.pos);
            self.error(
                "rate_limit.scope",
                pos,
                "fleet-scoped limits exchange counts through the control service: the policy needs a feed section",
            );
        }
        let health = match f.get("health") {
            None => Some(None),
            Some(n) => {
                let named = routes.as_deref().zip(f.get("routes"));
                self.health(n, "health", named).map(Some)
            }
        };
        let hide_credentials = match f.get("hide_credentials") {
            None => Some(false),
            Some(n) => self.boolean(n, "hide_credentials"),
        };
        let logging = match f.get("logging") {
            None => Some(LoggingPolicy::default()),
            Some(n) => self.logging(n, "logging"),
        };
        if !self.errors.is_empty() {
            return None;
        }
        let (api_key_header, api_key_format) = api_key?;
        Some(Policy {
            api_key_header,
            api_key_format,
            verbose_errors: verbose_errors?,
            jwt: jwt?,
            revocations: revocations?,
            feed: feed?,
            hide_credentials: hide_credentials?,
            rate_limit: rate_limit?,
            plans: plans?,
            unknown_plan: unknown_plan?,
            declared: keys.iter().flatten().map(|k| k.hash.0).collect(),
            keys: keys?,
            routes: routes?,
            environment: inherited.environment,
            logging: logging?,
            cors: inherited.cors,
            security_headers: inherited.security_headers,
            health: health?,
            fingerprint,
        })
    }

    /// Limit names are unique across plans, route limits and `anonymous`: a lever or a
    /// shadow count names one limit.
    fn unique_limit_names(&mut self, plans: &[Plan]) {
        let names = std::mem::take(&mut self.limit_names);
        for (i, (name, path, pos)) in names.iter().enumerate() {
            let clash = if name == "anonymous" {
                Some("the anonymous limit".to_string())
            } else if plans.iter().any(|p| &p.name == name) {
                Some(format!("plan '{name}'"))
            } else {
                names
                    .iter()
                    .take(i)
                    .find(|(n, ..)| n == name)
                    .map(|(_, p, _)| format!("the limit at {p}"))
            };
            if let Some(clash) = clash {
                self.error(
                    path,
                    *pos,
                    format!(
                        "limit name '{name}' is already {clash}'s; limit names are unique across plans, route limits and anonymous (give this one its own name:)"
                    ),
                );
            }
        }
    }

    /// A rule's `mode`: one of [enforce, shadow, off].
    pub(super) fn mode(&mut self, node: &Node, path: &str) -> Option<crate::levers::Mode> {
        let s = self.string(node, path)?;
        match crate::levers::Mode::parse(s) {
            Some(m) => Some(m),
            None => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "unknown mode '{s}'; expected one of [{}]",
                        crate::levers::Mode::NAMES.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// `unknown_plan: refuse` (the default) or `unknown_plan: { map_to: <plan> }`.
    fn unknown_plan(&mut self, node: &Node, path: &str, plans: &[Plan]) -> Option<Option<usize>> {
        if let Value::Str(s) = &node.value {
            if s == "refuse" {
                return Some(None);
            }
            self.error(path, node.pos, "expected refuse or { map_to: <plan> }");
            return None;
        }
        let f = self.object(node, path, &["map_to"])?;
        let n = self.required(&f, path, "map_to")?;
        let mp = join(path, "map_to");
        let name = self.string(n, &mp)?;
        match plans.iter().position(|p| p.name == name) {
            Some(i) => Some(Some(i)),
            None => {
                let mut names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
                names.sort_unstable();
                self.error(
                    &mp,
                    n.pos,
                    format!(
                        "unknown plan '{name}'; expected one of [{}]",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn logging(&mut self, node: &Node, path: &str) -> Option<LoggingPolicy> {
        let f = self.object(node, path, &["refusals"])?;
        let Some(n) = f.get("refusals") else {
            return Some(LoggingPolicy::default());
        };
        let rp = join(path, "refusals");
        let refusals = match self.string(n, &rp)? {
            "off" => None,
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" => Some(LogLevel::Warn),
            other => {
                self.error(
                    &rp,
                    n.pos,
                    format!(
                        "unknown log level '{other}'; expected one of [off, debug, info, warn]"
                    ),
                );
                return None;
            }
        };
        Some(LoggingPolicy { refusals })
    }

    fn api_key(&mut self, node: &Node, path: &str) -> Option<(String, KeyFormat)> {
        let f = self.object(node, path, &["header", "format"])?;
        let format = match f.get("format") {
            None => Some(KeyFormat::Checksummed),
            Some(n) => {
                let fp = join(path, "format");
                match self.string(n, &fp) {
                    Some("checksummed") => Some(KeyFormat::Checksummed),
                    Some("opaque") => Some(KeyFormat::Opaque),
                    Some(other) => {
                        self.error(
                            &fp,
                            n.pos,
                            format!("unknown key format '{other}'; expected one of [checksummed, opaque]"),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let Some(h) = f.get("header") else {
            return Some(("x-api-key".to_string(), format?));
        };
        let hp = join(path, "header");
        let name = self.string(h, &hp)?.to_ascii_lowercase();
        let token = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !token {
            self.error(
                &hp,
                h.pos,
                "must be an HTTP header name (letters, digits, '-', '_')",
            );
            return None;
        }
        if name.starts_with("x-gatehouse-") {
            self.error(
                &hp,
                h.pos,
                "x-gatehouse-* headers are reserved for identity sent upstream",
            );
            return None;
        }
        Some((name, format?))
    }

    fn plans(&mut self, node: &Node, path: &str) -> Option<Vec<Plan>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(path, node, "a mapping of plan names");
            return None;
        };
        let mut plans = default_plans();
        let mut ok = true;
        for (key, value) in entries {
            let p = join(path, &key.name);
            let valid_name = !key.name.is_empty()
                && key.name.len() <= 64
                && key.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !valid_name {
                self.error(
                    &p,
                    key.pos,
                    "plan names are 1 to 64 characters of a-z 0-9 _ -",
                );
                ok = false;
                continue;
            }
            let Some(f) = self.object(value, &p, &["requests_per_minute", "burst"]) else {
                ok = false;
                continue;
            };
            let Some(rpm) = self.required(&f, &p, "requests_per_minute") else {
                ok = false;
                continue;
            };
            let Some(rpm) = self.integer(rpm, &join(&p, "requests_per_minute"), 1, 1_000_000_000)
            else {
                ok = false;
                continue;
            };
            let rpm = u32::try_from(rpm).unwrap_or(u32::MAX);
            let burst = match f.get("burst") {
                None => rpm,
                Some(b) => match self.integer(b, &join(&p, "burst"), 1, 1_000_000_000) {
                    Some(b) => u32::try_from(b).unwrap_or(u32::MAX),
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            let plan = Plan {
                name: key.name.clone(),
                requests_per_minute: rpm,
                burst,
            };
            match plans.iter_mut().find(|existing| existing.name == plan.name) {
                Some(existing) => *existing = plan,
                None => plans.push(plan),
            }
        }
        ok.then_some(plans)
    }

    fn keys(
        &mut self,
        node: &Node,
        path: &str,
        plans: &[Plan],
        fingerprint: u64,
    ) -> Option<Vec<StaticKey>> {
        let items = self.list(node, path)?;
        let mut keys: Vec<(StaticKey, Option<Pos>)> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match self.key(item, &p, plans, fingerprint) {
                Some(k) => {
                    if let Some((_, first)) = keys
                        .iter()
                        .find(|(e, _)| e.record.key_id == k.record.key_id)
                    {
                        let line = first.map(|p| p.line).unwrap_or(0);
                        let id = &k.record.key_id;
                        self.error(
                            &join(&p, "id"),
                            id_pos(item),
                            format!("duplicate key id '{id}' (first declared at line {line})"),
                        );
                        ok = false;
                    } else if let Some((e, first)) = keys.iter().find(|(e, _)| e.hash == k.hash) {
                        let line = first.map(|p| p.line).unwrap_or(0);
                        let other = &e.record.key_id;
                        self.error(&join(&p, "sha256"), field_pos(item, "sha256"), format!("the same key hash is already declared for key '{other}' (line {line})"));
                        ok = false;
                    } else {
                        keys.push((k, id_pos(item)));
                    }
                }
                None => ok = false,
            }
        }
        ok.then(|| keys.into_iter().map(|(k, _)| k).collect())
    }

    fn key(
        &mut self,
        node: &Node,
        path: &str,
        plans: &[Plan],
        fingerprint: u64,
    ) -> Option<StaticKey> {
        let f = self.object(
            node,
            path,
            &[
                "id",
                "sha256",
                "user",
                "tenant",
                "plan",
                "expires_at",
                "active",
                "scopes",
            ],
        )?;
        let id = self
            .required(&f, path, "id")
            .and_then(|n| self.id(n, &join(path, "id")));
        let hash = self.required(&f, path, "sha256").and_then(|n| {
            let hp = join(path, "sha256");
            let s = self.string(n, &hp)?;
            // Never echo the value: people paste the key itself here by mistake.
            let h = KeyHash::from_hex(s);
            if h.is_none() {
                self.error(&hp, n.pos, format!(
                    "must be the SHA-256 of the key as 64 hex digits (got {} characters); compute it with: printf '%s' \"$KEY\" | sha256sum",
                    s.chars().count()
                ));
            }
            h
        });
        let user = self
            .required(&f, path, "user")
            .and_then(|n| self.id(n, &join(path, "user")));
        let tenant = self
            .required(&f, path, "tenant")
            .and_then(|n| self.id(n, &join(path, "tenant")));
        let plan = self.required(&f, path, "plan").and_then(|n| {
            let pp = join(path, "plan");
            let name = self.string(n, &pp)?;
            if plans.iter().any(|p| p.name == name) {
                Some(name.to_string())
            } else {
                let mut names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
                names.sort_unstable();
                self.error(
                    &pp,
                    n.pos,
                    format!(
                        "unknown plan '{name}'; expected one of [{}]",
                        names.join(", ")
                    ),
                );
                None
            }
        });
        let expires_at = match f.get("expires_at") {
            None => Some(None),
            Some(n) => {
                let ep = join(path, "expires_at");
                let s = self.string(n, &ep);
                match s.map(parse_rfc3339) {
                    Some(Some(t)) => Some(Some(t)),
                    Some(None) => {
                        self.error(
                            &ep,
                            n.pos,
                            "expected an RFC 3339 date-time such as 2027-01-01T00:00:00Z",
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let active = match f.get("active") {
            None => Some(true),
            Some(n) => self.boolean(n, &join(path, "active")),
        };
        let scopes = match f.get("scopes") {
            None => Some(Vec::new()),
            Some(n) => {
                let sp = join(path, "scopes");
                self.list(n, &sp).and_then(|items| {
                    if items.len() > MAX_SCOPES {
                        self.error(&sp, n.pos, format!("a key has at most {MAX_SCOPES} scopes"));
                        return None;
                    }
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| self.id(item, &format!("{sp}[{i}]")))
                        .collect::<Vec<_>>()
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                })
            }
        };
        Some(StaticKey {
            hash: hash?,
            record: KeyRecord {
                origin: Origin::Policy(fingerprint),
                key_id: id?,
                user: user?,
                tenant: tenant?,
                plan: plan?,
                expires_at: expires_at?,
                active: active?,
                scopes: scopes?,
                generation: 0,
            },
        })
    }

    fn routes(
        &mut self,
        node: &Node,
        path: &str,
        inherited: &response::Inherited,
    ) -> Option<Vec<Route>> {
        let items = self.list(node, path)?;
        if items.is_empty() {
            self.error(path, node.pos, "at least one route is required");
            return None;
        }
        let mut routes: Vec<Route> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match self.route(item, &p, i, inherited) {
                Some(r) => {
                    if routes.iter().any(|e| e.name == r.name) {
                        self.error(
                            &join(&p, "name"),
                            field_pos(item, "name"),
                            format!("duplicate route name '{}'", r.name),
                        );
                        ok = false;
                    }
                    routes.push(r);
                }
                None => ok = false,
            }
        }
        if ok {
            self.warn_extension_twins(&routes, items, path);
        }
        ok.then_some(routes)
    }

    /// Warns when an internal route's extension twin (`/admin.json` for `/admin`) falls to
    /// a broader external route after it: frameworks that read a format suffix (Rails,
    /// Spring's suffix patterns, Django REST's `format_suffix_patterns`) serve the twin as
    /// the internal route, to anyone.
    fn warn_extension_twins(&mut self, routes: &[Route], items: &[Node], path: &str) {
        let line = |i: usize| {
            items
                .get(i)
                .and_then(|n| n.pos)
                .map_or(String::new(), |p| format!(", line {}", p.line))
        };
        for (i, internal) in routes.iter().enumerate() {
            if internal.audience != Audience::Internal {
                continue;
            }
            let base = match &internal.path {
                PathMatch::Exact(p) | PathMatch::Prefix(p) => p.trim_end_matches('/'),
            };
            // A base that has an extension already (`/admin.json`) is itself a twin.
            if base.is_empty()
                || base
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.contains('.'))
            {
                continue;
            }
            let twin = format!("{base}.json");
            let method = internal.methods.first().map_or("GET", String::as_str);
            let Some(j) = crate::route::find(routes, method.as_bytes(), twin.as_bytes()) else {
                continue;
            };
            if j > i
                && let Some(external) = routes.get(j)
                && external.audience == Audience::External
            {
                self.warn(
                    &format!("{path}[{j}]"),
                    items.get(j).and_then(|n| n.pos),
                    format!(
                        "external route '{}' ({path}[{j}]{}) takes '{twin}', the extension twin of internal route '{}' ({path}[{i}]{}): frameworks that read a format suffix (Rails, Spring, Django REST) serve it as '{base}' without identity; add internal routes for the twins the upstream serves ('{twin}') before it",
                        external.name,
                        line(j),
                        internal.name,
                        line(i),
                    ),
                );
            }
        }
    }

    fn route(
        &mut self,
        node: &Node,
        path: &str,
        index: usize,
        inherited: &response::Inherited,
    ) -> Option<Route> {
        let f = self.object(
            node,
            path,
            &[
                "name",
                "match",
                "audience",
                "group",
                "limits",
                "cors",
                "security_headers",
                "upstream_errors",
                "body",
                "webhook",
            ],
        )?;
        let response = self.route_response(&f, path, inherited);
        let body_rules = {
            let base = self.body_default;
            self.route_body(&f, path, &base)
        };
        let limits = match f.get("limits") {
            None => Some(Vec::new()),
            Some(n) => self.route_limits(n, &join(path, "limits")),
        };
        let group = match f.get("group") {
            None => Some(None),
            Some(n) => self.id(n, &join(path, "group")).map(Some),
        };
        let name = match f.get("name") {
            Some(n) => self.id(n, &join(path, "name")),
            None => Some(format!("route-{index}")),
        };
        let mp = join(path, "match");
        let (path_match, methods, path_parameters) = match self.required(&f, path, "match") {
            Some(m) => match self.route_match(m, &mp) {
                Some((p, m, pp)) => (Some(p), Some(m), Some(pp)),
                None => (None, None, None),
            },
            None => (None, None, None),
        };
        let audience = match f.get("audience") {
            None => Some(Audience::Internal),
            Some(n) => {
                let ap = join(path, "audience");
                match self.string(n, &ap) {
                    Some("internal") => Some(Audience::Internal),
                    Some("external") => Some(Audience::External),
                    Some(other) => {
                        self.error(
                            &ap,
                            n.pos,
                            format!(
                                "unknown audience '{other}'; expected one of [internal, external]"
                            ),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let response = response?;
        let (body, webhook, body_mode, webhook_mode) = body_rules?;
        let name = name?;
        let limits = self.name_limits(limits?, &name, f.get("limits"), &join(path, "limits"))?;
        Some(Route {
            name,
            path: path_match?,
            methods: methods?,
            audience: audience?,
            group: group?,
            limits,
            cors: response.cors,
            security_headers: response.security_headers,
            upstream_errors: response.upstream_errors,
            body,
            webhook,
            webhook_mode,
            body_mode,
            path_parameters: path_parameters?,
        })
    }

    /// Gives a route's one unnamed limit the route's name; several unnamed limits on one
    /// route are an error (a lever could not tell them apart). Records each name for
    /// [`Decoder::unique_limit_names`].
    fn name_limits(
        &mut self,
        mut limits: Vec<crate::route::RouteLimit>,
        route: &str,
        node: Option<&Node>,
        path: &str,
    ) -> Option<Vec<crate::route::RouteLimit>> {
        let items: &[Node] = match node.map(|n| &n.value) {
            Some(Value::Seq(items)) => items,
            _ => &[],
        };
        let unnamed = limits.iter().filter(|l| l.name.is_empty()).count();
        if unnamed > 1 {
            self.error(
                path,
                node.and_then(|n| n.pos),
                format!(
                    "route '{route}' has {unnamed} limits without a name: give each a name: (unique across plans and limits) so levers and shadow counts can tell them apart"
                ),
            );
            return None;
        }
        for (i, l) in limits.iter_mut().enumerate() {
            let item = items.get(i);
            let (p, pos) = if l.name.is_empty() {
                l.name = route.to_string();
                (format!("{path}[{i}]"), item.and_then(|n| n.pos))
            } else {
                (
                    format!("{path}[{i}].name"),
                    item.and_then(|n| field_pos(n, "name")),
                )
            };
            self.limit_names.push((l.name.clone(), p, pos));
        }
        Some(limits)
    }

    /// A route's `match`: its path, its methods (`GET` brings `HEAD`) and whether servlet
    /// path parameters may reach it (`path_parameters: allow`; defaults to `refuse`).
    fn route_match(&mut self, node: &Node, path: &str) -> Option<(PathMatch, Vec<String>, bool)> {
        let f = self.object(
            node,
            path,
            &["path", "path_prefix", "methods", "path_parameters"],
        )?;
        let path_parameters = match f.get("path_parameters") {
            None => Some(false),
            Some(n) => {
                let pp = join(path, "path_parameters");
                match self.string(n, &pp) {
                    Some("refuse") => Some(false),
                    Some("allow") => Some(true),
                    Some(other) => {
                        self.error(
                            &pp,
                            n.pos,
                            format!("unknown value '{other}'; expected one of [refuse, allow]"),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let path_match = match (f.get("path"), f.get("path_prefix")) {
            (Some(_), Some(n)) => {
                self.error(
                    &join(path, "path_prefix"),
                    n.pos,
                    "give either 'path' or 'path_prefix', not both",
                );
                None
            }
            (None, None) => {
                self.error(path, node.pos, "missing 'path' or 'path_prefix'");
                None
            }
            (Some(n), None) => self
                .route_path(n, &join(path, "path"))
                .map(PathMatch::Exact),
            (None, Some(n)) => self
                .route_path(n, &join(path, "path_prefix"))
                .map(PathMatch::Prefix),
        };
        let methods = match f.get("methods") {
            None => Some(Vec::new()),
            Some(n) => {
                let mp = join(path, "methods");
                let items = self.list(n, &mp)?;
                let mut methods = Vec::new();
                let mut ok = true;
                for (i, m) in items.iter().enumerate() {
                    let ip = format!("{mp}[{i}]");
                    match self.string(m, &ip) {
                        Some(s) if crate::route::is_method(s.as_bytes()) => {
                            methods.push(s.to_string())
                        }
                        Some(s) => {
                            self.error(
                                &ip,
                                m.pos,
                                format!("'{s}' is not an HTTP method; use upper case, e.g. GET"),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                // Every server answers HEAD with the GET handler: a GET-only internal route
                // must not leave HEAD to a broader route after it.
                if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                    methods.push("HEAD".to_string());
                }
                ok.then_some(methods)
            }
        };
        Some((path_match?, methods?, path_parameters?))
    }

    fn route_path(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if crate::route::check_normal_form(s.as_bytes()).is_err() || s.contains(['?', '#']) {
            self.error(path, node.pos, "must start with '/' and be in normal form (no '//', '.', '..', a segment ending in '.', ';', '%2e', '%2f', query or spaces)");
            return None;
        }
        Some(s.to_string())
    }
}

fn field_pos(node: &Node, name: &str) -> Option<Pos> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == name)
            .and_then(|(_, v)| v.pos),
        _ => None,
    }
}

fn id_pos(node: &Node) -> Option<Pos> {
    field_pos(node, "id")
}

fn default_plans() -> Vec<Plan> {
    DEFAULT_PLANS
        .iter()
        .map(|(name, rpm)| Plan {
            name: (*name).to_string(),
            requests_per_minute: *rpm,
            burst: *rpm,
        })
        .collect()
}
