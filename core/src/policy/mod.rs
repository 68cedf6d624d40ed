//! The policy: what a gatehouse deployment allows, parsed once into validated types.
//! YAML ([`load_yaml`], native, feature `yaml`) and Envoy's JSON ([`Policy::from_json`])
//! go through one decoder, so the checker and the plugin accept exactly the same
//! policies. The reference: `docs/policy.md#writing-a-policy`.

pub mod auth;
mod decode;
pub mod tree;
#[cfg(feature = "yaml")]
pub mod yaml;

use crate::authn::api_key::{KeyHash, KeyRecord};
use crate::route::Route;
use sha2::{Digest, Sha256};
use std::fmt;
use tree::{Node, Pos};

/// The plans every policy has unless it overrides them: requests per minute.
pub const DEFAULT_PLANS: [(&str, u32); 4] = [
    ("free", 60),
    ("solo", 600),
    ("team", 1200),
    ("enterprise", 6000),
];

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lower-case name of the header that carries an API key. Defaults to `x-api-key`.
    pub api_key_header: String,
    /// Which keys are plausible before any lookup. Defaults to [`KeyFormat::Checksummed`].
    pub api_key_format: KeyFormat,
    /// Refusal bodies say "unknown key" or "revoked key" instead of "invalid
    /// credentials". Defaults to false: a caller probing keys learns nothing.
    pub verbose_errors: bool,
    /// JWT authentication (`Authorization: Bearer`). Defaults to none: the Authorization
    /// header is not gatehouse's and passes untouched.
    pub jwt: Option<auth::JwtPolicy>,
    /// Revoked users' tokens and token ids declared in the policy.
    pub revocations: auth::Revocations,
    /// The control service's cache feed, polled by the sync service. Defaults to none:
    /// keys and revocations come from the policy only.
    pub feed: Option<FeedPolicy>,
    pub rate_limit: RateLimitPolicy,
    /// Remove the credential (API key header, or Authorization for a JWT) before the
    /// request goes upstream. Defaults to false.
    pub hide_credentials: bool,
    /// Plans and their limits. Defaults to [`DEFAULT_PLANS`]; the policy may override
    /// their limits and add plans.
    pub plans: Vec<Plan>,
    /// What a credential naming a plan not in `plans` gets (`unknown_plan:`): `None`,
    /// refused with 403 `UNKNOWN_PLAN` (the default: a plan the policy does not know has
    /// no limit, and serving it would be fail-open); `Some(i)`, treated as `plans[i]`
    /// (`unknown_plan: { map_to: free }`), which the upstream then sees as its plan.
    pub unknown_plan: Option<usize>,
    /// Keys declared in the policy (DB-less use). Defaults to none.
    pub keys: Vec<StaticKey>,
    /// The hashes of `keys`: a presented key is looked up in the policy's own entries
    /// (`kp…`) only when it is one of them ([`crate::authn::key_cache`]).
    pub declared: std::collections::HashSet<[u8; 32]>,
    /// Routes in match order. Required, at least one.
    pub routes: Vec<Route>,
    /// Where the policy runs; only warnings depend on it. Defaults to
    /// [`Environment::Production`].
    pub environment: Environment,
    /// What gatehouse writes to Envoy's log (`logging:`). Defaults to
    /// [`LoggingPolicy::default`]: one line per refusal at `info`.
    pub logging: LoggingPolicy,
    /// CORS (`cors:`) for responses no route matched; routes carry their merged copy.
    /// Defaults to none.
    pub cors: Option<crate::cors::CorsPolicy>,
    /// Security headers (`security_headers:`) for responses no route matched; routes
    /// carry their merged copy. Defaults to none.
    pub security_headers: Option<crate::response::headers::SecurityHeaders>,
    /// The readiness route the filter answers itself (`health:`). Defaults to none:
    /// every path goes through routing.
    pub health: Option<HealthPolicy>,
    /// First 8 bytes of SHA-256 of the plugin configuration: tells this policy's static
    /// keys apart from an earlier policy's in shared data.
    pub fingerprint: u64,
}

/// The `feed` section: where the sync polls the control service, and what the filter
/// does when the cache it fills is too old (see [`crate::sync::feed`]).
///
/// ```yaml
/// feed:
///   cluster: control            # the Envoy cluster of the control service. Required.
///   authority: control.internal # Defaults to the cluster name.
///   path: /v1/cache             # Defaults to /v1/cache.
///   token_env: GATEHOUSE_FEED_TOKEN   # variable holding the feed token. Required.
///   interval: 1s                # how often the sync ticks. Defaults to 1s.
///   wait: 20s                   # long-poll time asked of the server. Defaults to 20s.
///   staleness: 30s              # oldest acceptable cache. Defaults to 30s.
///   on_stale: fail_closed       # or keep_serving. Defaults to fail_closed.
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedPolicy {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// The environment variable with the feed token (never the token itself).
    pub token_env: String,
    pub interval_secs: u64,
    pub wait_secs: u64,
    pub staleness_secs: u64,
    pub on_stale: OnStale,
}

/// The `health` section: a path the filter answers itself, before routing, with whether
/// this Envoy's key cache is ready ([`crate::health`]); never sent upstream.
///
/// ```yaml
/// health:
///   path: /readyz   # exact, in normal form, no query; no route's pattern. Required.
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Matched byte for byte against the request's path before any `?`.
    pub path: String,
}

/// What the filter does with a credential while the feed's cache is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStale {
    /// Refuse with 503 `AUTH_UNAVAILABLE`: a revoked key must not work for long.
    FailClosed,
    /// Serve from the cache as it is (counted in `gatehouse.feed.stale_served`).
    KeepServing,
}

/// The `logging` section.
///
/// ```yaml
/// logging:
///   refusals: info   # off, debug, info or warn. Defaults to info.
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggingPolicy {
    /// The level of the one JSON line written per refusal (time, request id, method, route,
    /// code, status, key id or user, client address; never a credential), or `None`
    /// (`off`) for no line. Envoy drops lines below its own log level. Defaults to
    /// [`LogLevel::Info`].
    pub refusals: Option<LogLevel>,
}

/// A log level a policy may choose, in Envoy's (and proxy-wasm's) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
}

impl Default for LoggingPolicy {
    fn default() -> Self {
        LoggingPolicy {
            refusals: Some(LogLevel::Info),
        }
    }
}

/// Where a policy runs (`environment:`): a production policy with a development-only
/// setting, such as a `localhost` CORS origin, is warned about by `gatehouse-harness check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Production,
    Development,
}

/// How presented API keys are checked before their hash is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// Keys gatehouse issues: `<prefix>_<random><checksum>` with a valid checksum
    /// (`api_key::check_format`).
    Checksummed,
    /// Any 1 to 256 visible ASCII characters (keys imported from another system).
    Opaque,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub requests_per_minute: u32,
    /// Requests that may arrive at once. Defaults to `requests_per_minute`: the whole
    /// minute's budget, then one per `60 s / requests_per_minute`.
    pub burst: u32,
}

impl Plan {
    pub fn rate(&self) -> crate::limit::Rate {
        crate::limit::Rate {
            requests: self.requests_per_minute,
            period_nanos: 60_000_000_000,
            burst: self.burst,
        }
    }
}

/// The `rate_limit` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Who a plan's limit counts for. Defaults to [`crate::limit::LimitBy::User`].
    pub plan_key: crate::limit::LimitBy,
    /// Anonymous callers on external routes, per client address. Defaults to the `free`
    /// plan's rate (60 per minute unless overridden).
    pub anonymous: crate::limit::Rate,
    /// Proxies in front of Envoy that append to `x-forwarded-for`; 0 (default) means the
    /// client address is the connection's.
    pub trusted_proxies: u32,
    /// Slots for identified callers' states. Defaults to 65,536 (~40 bytes each).
    pub slots: u32,
    /// Slots for states counted by client address: anonymous callers and `by: ip` route
    /// limits, kept apart so that anonymous traffic never takes an identified caller's
    /// room. Defaults to 65,536.
    pub address_slots: u32,
    /// An IPv4 client counts as its address's network of this many bits. Defaults to 32
    /// (the address itself).
    pub ipv4_prefix: u8,
    /// An IPv6 client counts as its address's network of this many bits. Defaults to 64:
    /// one subscriber's network, as ISPs assign them.
    pub ipv6_prefix: u8,
    pub on_contention: crate::limit::OnContention,
    /// Send `RateLimit-*` headers on allowed responses too. Defaults to false.
    pub headers_on_allowed: bool,
    /// Where the plan and anonymous limits (and route limits without their own `scope`)
    /// count: this Envoy alone, or the whole fleet ([`crate::limit::fleet`]).
    pub scope: crate::limit::Scope,
    /// How often a fleet-scoped Envoy exchanges its consumption for the fleet's, in ms.
    /// Defaults to 250.
    pub sync_interval_ms: u64,
    /// The policy's own allowlist (`allowlist:`): callers the limits it names (or every
    /// rate limit) do not apply to, besides the feed's. Defaults to none.
    pub allowlist: crate::levers::Levers,
}

impl RateLimitPolicy {
    /// Whether any limit of `policy` counts for the whole fleet.
    pub fn any_fleet(&self, routes: &[crate::route::Route]) -> bool {
        self.scope == crate::limit::Scope::Fleet
            || routes
                .iter()
                .flat_map(|r| r.limits.iter())
                .any(|l| l.scope == Some(crate::limit::Scope::Fleet))
    }

    /// The limiter's tables for this policy.
    pub fn table(&self) -> crate::limit::Table {
        crate::limit::Table {
            slots: self.slots,
            address_slots: self.address_slots,
            on_contention: self.on_contention,
        }
    }
}

/// A key declared in the policy: its hash and the record cached for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticKey {
    pub hash: KeyHash,
    pub record: KeyRecord,
}

/// One thing wrong with a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// Field path, e.g. `keys[2].plan`; empty for the whole document.
    pub path: String,
    /// Where in the YAML file, when the policy came from one.
    pub pos: Option<Pos>,
    pub message: String,
}

/// Everything wrong with a policy, in document order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyErrors {
    /// The file name (or `plugin configuration`).
    pub source: String,
    pub errors: Vec<PolicyError>,
}

impl PolicyErrors {
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.pos {
                Some(pos) => write!(f, "{}:{}: ", self.source, pos)?,
                None => write!(f, "{}: ", self.source)?,
            }
            if !e.path.is_empty() {
                write!(f, "{}: ", e.path)?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

fn fingerprint(config_json: &[u8]) -> u64 {
    let digest = Sha256::digest(config_json);
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(first)
}

/// The policy and its warnings (things that are valid but probably wrong), or its errors.
fn decode(
    source: &str,
    root: &Node,
    config_json: &[u8],
) -> Result<(Policy, PolicyErrors), PolicyErrors> {
    let mut d = decode::Decoder::new();
    let policy = d.policy(root, fingerprint(config_json));
    let mut errors = d.errors;
    // Sort by position so the output reads top to bottom like the file.
    errors.sort_by_key(|e| e.pos.map(|p| (p.line, p.column)).unwrap_or((0, 0)));
    let mut warnings = d.warnings;
    warnings.sort_by_key(|e| e.pos.map(|p| (p.line, p.column)).unwrap_or((0, 0)));
    let warnings = PolicyErrors {
        source: source.to_string(),
        errors: warnings,
    };
    match policy {
        Some(p) if errors.is_empty() => Ok((p, warnings)),
        _ => Err(PolicyErrors {
            source: source.to_string(),
            errors,
        }),
    }
}

impl Policy {
    /// Every rule a lever or a shadow count names, in the order of [`Policy::rule_index`]:
    /// the plans' limits, `anonymous`, each route's limits, `webhook:<route>` for each
    /// route with a webhook, and `body:<route>` for each route.
    pub fn rule_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.plans.iter().map(|p| p.name.clone()).collect();
        out.push("anonymous".to_string());
        for r in &self.routes {
            out.extend(r.limits.iter().map(|l| l.name.clone()));
        }
        for r in self.routes.iter().filter(|r| r.webhook.is_some()) {
            out.push(["webhook:", &r.name].concat());
        }
        for r in &self.routes {
            out.push(["body:", &r.name].concat());
        }
        out
    }

    /// A rule's name as levers and shadow counts say it ([`Policy::rule_names`]).
    pub fn rule_name(&self, rule: crate::levers::Rule) -> std::borrow::Cow<'_, str> {
        use crate::levers::Rule;
        use std::borrow::Cow;
        let route = |r: usize| self.routes.get(r).map_or("", |r| r.name.as_str());
        match rule {
            Rule::Plan(p) => Cow::Borrowed(self.plans.get(p).map_or("", |p| p.name.as_str())),
            Rule::Anonymous => Cow::Borrowed("anonymous"),
            Rule::RouteLimit(r, n) => Cow::Borrowed(
                self.routes
                    .get(r)
                    .and_then(|r| r.limits.get(n))
                    .map_or("", |l| l.name.as_str()),
            ),
            Rule::Webhook(r) => Cow::Owned(["webhook:", route(r)].concat()),
            Rule::Body(r) => Cow::Owned(["body:", route(r)].concat()),
        }
    }

    /// A rule's place in [`Policy::rule_names`]; `None` for a rule the policy does not
    /// have. Walks the routes: for the rare shadow refusal, not every request.
    pub fn rule_index(&self, rule: crate::levers::Rule) -> Option<usize> {
        use crate::levers::Rule;
        let plans = self.plans.len();
        let limits: usize = self.routes.iter().map(|r| r.limits.len()).sum();
        let webhooks = self.routes.iter().filter(|r| r.webhook.is_some()).count();
        match rule {
            Rule::Plan(p) => (p < plans).then_some(p),
            Rule::Anonymous => Some(plans),
            Rule::RouteLimit(r, n) => {
                let before: usize = self.routes.iter().take(r).map(|r| r.limits.len()).sum();
                (n < self.routes.get(r)?.limits.len()).then_some(plans + 1 + before + n)
            }
            Rule::Webhook(r) => {
                self.routes.get(r)?.webhook.as_ref()?;
                let before = self
                    .routes
                    .iter()
                    .take(r)
                    .filter(|r| r.webhook.is_some())
                    .count();
                Some(plans + 1 + limits + before)
            }
            Rule::Body(r) => (r < self.routes.len()).then_some(plans + 1 + limits + webhooks + r),
        }
    }

    /// Whether any part of the policy does CORS.
    pub fn does_cors(&self) -> bool {
        self.cors.is_some() || self.routes.iter().any(|r| r.cors.is_some())
    }

    /// Reads the plugin configuration (JSON) that Envoy passes to `on_configure`.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, PolicyErrors> {
        const SOURCE: &str = "plugin configuration";
        let root = Node::from_json(bytes).map_err(|message| PolicyErrors {
            source: SOURCE.to_string(),
            errors: vec![PolicyError {
                path: String::new(),
                pos: None,
                message,
            }],
        })?;
        decode(SOURCE, &root, bytes).map(|(policy, _warnings)| policy)
    }

    /// The environment variables the policy reads secrets from (`jwt.keys[].secret_env`,
    /// `feed.token_env`, `routes[].webhook.secrets_env`), which Envoy must pass to the VM.
    pub fn secret_env_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .jwt
            .iter()
            .flat_map(|j| &j.providers)
            .flat_map(|p| &p.hmac_keys)
            .filter_map(|k| match &k.secret {
                auth::Secret::Env(name) => Some(name.clone()),
                auth::Secret::Literal(_) => None,
            })
            .chain(self.feed.iter().map(|f| f.token_env.clone()))
            .chain(
                self.routes
                    .iter()
                    .filter_map(|r| r.webhook.as_ref())
                    .flat_map(|w| w.secrets_env.iter().cloned()),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }
}

/// A checked YAML policy and the plugin configuration made from it.
#[cfg(feature = "yaml")]
#[derive(Clone, Debug)]
pub struct LoadedPolicy {
    pub policy: Policy,
    /// The JSON to give Envoy as the plugin's `configuration`.
    pub plugin_config_json: String,
    /// Valid but probably wrong (e.g. a `localhost` CORS origin in a production policy):
    /// `gatehouse-harness check` prints them and still passes.
    pub warnings: PolicyErrors,
}

/// Reads and checks a YAML policy; `file_name` is used in error messages.
#[cfg(feature = "yaml")]
pub fn load_yaml(file_name: &str, source: &str) -> Result<LoadedPolicy, PolicyErrors> {
    let root = yaml::parse(source).map_err(|e| PolicyErrors {
        source: file_name.to_string(),
        errors: vec![PolicyError {
            path: String::new(),
            pos: Some(e.pos),
            message: e.message,
        }],
    })?;
    let plugin_config_json = root.to_json().to_string();
    let (policy, warnings) = decode(file_name, &root, plugin_config_json.as_bytes())?;
    Ok(LoadedPolicy {
        policy,
        plugin_config_json,
        warnings,
    })
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use super::*;

    const HASH: &str = "ea4d1b2a0167d9569b431fc952792261ff21c7e8da3bb4e49b66fd9bf07ef55f";

    fn minimal(extra: &str) -> String {
        format!("version: 1\nroutes:\n  - match: {{ path_prefix: /v1/ }}\n{extra}")
    }

    fn errors(src: &str) -> Vec<String> {
        match load_yaml("p.yaml", src) {
            Ok(_) => vec![],
            Err(e) => e.to_string().lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn the_example_policy_is_valid() {
        let src = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/example.yaml"
        ));
        let loaded = load_yaml("example.yaml", src).unwrap();
        assert_eq!(loaded.policy.api_key_header, "x-api-key");
        assert_eq!(loaded.policy.keys.len(), 5);
        assert_eq!(loaded.policy.api_key_format, KeyFormat::Checksummed);
        assert!(!loaded.policy.verbose_errors);
        assert_eq!(
            loaded.policy.plan("team").unwrap().requests_per_minute,
            1200
        );
    }

    #[test]
    fn default_plans_apply_and_can_be_overridden_or_extended() {
        let p = load_yaml(
            "p",
            &minimal(
                "plans:\n  free: { requests_per_minute: 30 }\n  gold: { requests_per_minute: 9 }\n",
            ),
        )
        .unwrap()
        .policy;
        assert_eq!(p.plan("free").unwrap().requests_per_minute, 30);
        assert_eq!(p.plan("enterprise").unwrap().requests_per_minute, 6000);
        assert_eq!(p.plan("gold").unwrap().requests_per_minute, 9);
        let p = load_yaml("p", &minimal("")).unwrap().policy;
        assert_eq!(p.plans.len(), 4);
        assert_eq!(p.plan("solo").unwrap().requests_per_minute, 600);
    }

    #[test]
    fn a_literal_jwt_secret_is_refused_unless_marked_as_a_test_fixture() {
        let src = minimal(
            "jwt:\n  keys:\n    - { kid: k1, alg: HS256, secret: \"0123456789abcdef0123456789abcdef\" }\n",
        );
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with(
                "p.yaml:6:38: jwt.keys[0].secret: a literal secret does not belong in a policy"
            ),
            "{}",
            errs[0]
        );
        assert!(
            !errs[0].contains("0123456789abcdef"),
            "the secret is echoed: {}",
            errs[0]
        );
        let ok = minimal(
            "jwt:\n  keys:\n    - { kid: k1, alg: HS256, secret: \"0123456789abcdef0123456789abcdef\", test_fixture: true }\n",
        );
        let p = load_yaml("p", &ok).unwrap().policy;
        assert_eq!(p.secret_env_names(), Vec::<String>::new());
        let env = minimal("jwt:\n  keys:\n    - { kid: k1, alg: HS256, secret_env: MY_SECRET }\n");
        let p = load_yaml("p", &env).unwrap().policy;
        assert_eq!(p.secret_env_names(), vec!["MY_SECRET".to_string()]);
        let jwt = p.jwt.unwrap().providers.remove(0);
        assert!(
            jwt.static_keys(|_| None)
                .unwrap_err()
                .contains("MY_SECRET is not set")
        );
        let keys = jwt.static_keys(|_| Some("s".repeat(32))).unwrap();
        assert_eq!(keys.len(), 1);
        // base64url secrets (random bytes, as a JWK `k`) are decoded; a bad one is named,
        // never shown.
        let b64 =
            minimal("jwt:\n  keys:\n    - { alg: HS256, secret_env: K, encoding: base64url }\n");
        let jwt64 = load_yaml("p", &b64)
            .unwrap()
            .policy
            .jwt
            .unwrap()
            .providers
            .remove(0);
        assert_eq!(
            jwt64.static_keys(|_| Some("A".repeat(43))).unwrap().len(),
            1
        );
        let bad = jwt64
            .static_keys(|_| Some("not base64!!".into()))
            .unwrap_err();
        assert!(
            bad.contains("not base64url") && !bad.contains("!!"),
            "{bad}"
        );
        // Too short for HS256 (RFC 7518: at least the hash size); the value is not shown.
        let short = jwt.static_keys(|_| Some("short".into())).unwrap_err();
        assert!(!short.contains("short\""), "{short}");
    }

    #[test]
    fn jwt_mistakes_are_reported_with_their_position() {
        let src = minimal(concat!(
            "jwt:\n",
            "  leeway: forever\n",
            "  keys:\n",
            "    - { alg: RS256, secret_env: X }\n",
            "    - { alg: HS999, secret_env: X }\n",
            "  forward_claims: { email: x-email, plan: x-gatehouse-plan }\n",
            "  jwks: { keys: [ { kty: EC, crv: P-521, x: a, y: b } ] }\n",
            "  default_plan: gold\n",
        ));
        let errs = errors(&src);
        let joined = errs.join("\n");
        for expected in [
            "p.yaml:5:11: jwt.leeway: expected a duration",
            "jwt.keys[0].alg: RS256 keys come from jwks or jwks_url",
            "jwt.keys[1].alg: unsupported algorithm 'HS999'",
            "jwt.forward_claims.email: must be an x-gatehouse-* header name",
            "jwt.forward_claims.plan: x-gatehouse-plan is set from the identity itself",
            "jwt.jwks.keys[0]:",
            "jwt.default_plan: unknown plan 'gold'",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        assert!(
            errors(&minimal("jwt: {}\n"))[0]
                .contains("no keys: give at least one of keys, jwks or jwks_url")
        );
    }

    #[test]
    fn a_jwks_needs_its_issuers_and_audiences_said_even_if_any() {
        let jwks = "  jwks: { keys: [ { kty: OKP, crv: Ed25519, kid: e1, x: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo } ] }\n";
        let errs = errors(&minimal(&format!("jwt:\n{jwks}")));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("p.yaml:5:3: jwt: missing required field 'issuers'"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("missing required field 'audiences'"),
            "{errs:?}"
        );
        let url = "  jwks_url: { cluster: auth, path: /jwks }\n  issuers: [https://idp.example]\n";
        let errs = errors(&minimal(&format!("jwt:\n{url}")));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("missing required field 'audiences'"),
            "{errs:?}"
        );
        // `any` said is any; an empty list is a mistake.
        let p = load_yaml("p", &minimal(&format!("jwt:\n{url}  audiences: any\n")))
            .unwrap()
            .policy;
        assert!(p.jwt.unwrap().providers[0].rules.audiences.is_empty());
        let errs = errors(&minimal(&format!("jwt:\n{url}  audiences: []\n")));
        assert!(
            errs[0].contains("jwt.audiences: must not be empty; write any"),
            "{errs:?}"
        );
        // HMAC keys are the policy owner's own: any stays the default there.
        let hmac = "jwt:\n  keys:\n    - { kid: k1, alg: HS256, secret_env: K }\n";
        assert!(load_yaml("p", &minimal(hmac)).is_ok());
    }

    #[test]
    fn jwt_providers_are_named_and_own_their_issuers() {
        let provider = |name: &str, issuers: &str| {
            format!(
                "    - name: {name}\n      issuers: {issuers}\n      audiences: [api]\n      jwks_url: {{ cluster: {name}, path: /jwks }}\n"
            )
        };
        let two = format!(
            "jwt:\n  providers:\n{}{}",
            provider("corp", "[https://corp.example]"),
            provider("partner", "[https://partner.example, https://p2.example]")
        );
        let p = load_yaml("p", &minimal(&two)).unwrap().policy;
        let jwt = p.jwt.unwrap();
        assert_eq!(jwt.providers.len(), 2);
        assert_eq!(jwt.providers[1].name, "partner");
        assert_eq!(jwt.providers[1].path, "jwt.providers[1]");
        assert_eq!(jwt.provider_for(Some("https://p2.example")), Some(1));
        assert_eq!(jwt.provider_for(Some("https://corp.example")), Some(0));
        assert_eq!(jwt.provider_for(Some("https://x.example")), None);
        assert_eq!(jwt.provider_for(None), None);
        assert_eq!(jwt.longest_acceptance_secs(), Some(86_460));

        let clash = format!(
            "jwt:\n  providers:\n{}{}",
            provider("corp", "[https://corp.example]"),
            provider("corp", "[https://corp.example]")
        );
        let joined = errors(&minimal(&clash)).join("\n");
        assert!(
            joined.contains("jwt.providers[1].name: duplicate provider name"),
            "{joined}"
        );
        assert!(
            joined.contains("jwt.providers[1].issuers: issuer 'https://corp.example' is already provider 'corp''s"),
            "{joined}"
        );
        let vague = format!(
            "jwt:\n  providers:\n{}{}",
            provider("corp", "[https://corp.example]"),
            provider("partner", "any")
        );
        let joined = errors(&minimal(&vague)).join("\n");
        assert!(
            joined.contains(
                "jwt.providers[1].issuers: with more than one provider, each lists its issuers"
            ),
            "{joined}"
        );
        // Settings go in a provider, and every provider has a name.
        let shared = format!(
            "jwt:\n  leeway: 30s\n  providers:\n{}",
            provider("corp", "any")
        );
        assert!(errors(&minimal(&shared))[0].contains("jwt.leeway: unknown field"));
        let unnamed =
            "jwt:\n  providers:\n    - { keys: [ { kid: k1, alg: HS256, secret_env: K } ] }\n";
        assert!(
            errors(&minimal(unnamed))[0]
                .contains("jwt.providers[0]: missing required field 'name'")
        );
        let bad_name = "jwt:\n  name: Corp:1\n  keys: [ { kid: k1, alg: HS256, secret_env: K } ]\n";
        assert!(errors(&minimal(bad_name))[0].contains("jwt.name: must be 1 to 32 of a-z 0-9 _ -"));
        // One provider of the old shape keeps its name and its any.
        let old = "jwt:\n  keys:\n    - { kid: k1, alg: HS256, secret_env: K }\n";
        let p = load_yaml("p", &minimal(old)).unwrap().policy;
        assert_eq!(p.jwt.as_ref().unwrap().providers[0].name, "jwt");
        assert_eq!(p.jwt.unwrap().provider_for(Some("anyone")), Some(0));
    }

    #[test]
    fn unknown_plans_are_refused_by_default_or_mapped_to_a_known_one() {
        let p = load_yaml("p", &minimal("")).unwrap().policy;
        assert_eq!(p.unknown_plan, None);
        let p = load_yaml("p", &minimal("unknown_plan: refuse\n"))
            .unwrap()
            .policy;
        assert_eq!(p.unknown_plan, None);
        let p = load_yaml("p", &minimal("unknown_plan: { map_to: team }\n"))
            .unwrap()
            .policy;
        assert_eq!(p.plans[p.unknown_plan.unwrap()].name, "team");
        let errs = errors(&minimal("unknown_plan: { map_to: pro }\n"));
        assert!(
            errs[0].contains("p.yaml:4:25: unknown_plan.map_to: unknown plan 'pro'; expected one of [enterprise, free, solo, team]"),
            "{errs:?}"
        );
        let errs = errors(&minimal("unknown_plan: allow\n"));
        assert!(
            errs[0].contains("expected refuse or { map_to: <plan> }"),
            "{errs:?}"
        );
    }

    #[test]
    fn token_lifetime_defaults_to_a_day_and_bounds_revocations() {
        let jwt = "jwt:\n  keys:\n    - { kid: k1, alg: HS256, secret_env: K }\n";
        let p = load_yaml("p", &minimal(jwt)).unwrap().policy;
        let rules = &p.jwt.as_ref().unwrap().providers[0].rules;
        assert_eq!(rules.max_lifetime_secs, Some(86_400));
        assert_eq!(rules.longest_acceptance_secs(), Some(86_460));
        let set = |v: &str| minimal(&format!("{jwt}  max_token_lifetime: {v}\n"));
        let p = load_yaml("p", &set("1h")).unwrap().policy;
        assert_eq!(
            p.jwt.unwrap().providers.remove(0).rules.max_lifetime_secs,
            Some(3600)
        );
        let p = load_yaml("p", &set("unbounded")).unwrap().policy;
        assert_eq!(
            p.jwt.unwrap().providers.remove(0).rules.max_lifetime_secs,
            None
        );
        assert!(
            errors(&set("0s"))[0]
                .contains("p.yaml:7:23: jwt.max_token_lifetime: must be longer than 0s")
        );
        assert!(errors(&set("400d"))[0].contains("at most"));

        // A watermark must outlive the tokens it covers: until >= before + 24h + 60s.
        let revoked = |until: &str| {
            format!(
                "{jwt}revocations:\n  users: [ {{ user: u1, tokens_issued_before: 2026-01-01T00:00:00Z{until} }} ]\n"
            )
        };
        assert!(load_yaml("p", &minimal(&revoked(""))).is_ok());
        assert!(load_yaml("p", &minimal(&revoked(", until: 2026-01-02T00:01:00Z"))).is_ok());
        let short = errors(&minimal(&revoked(", until: 2026-01-02T00:00:59Z")));
        assert!(
            short[0].contains("revocations.users[0].until: ends before the tokens it revokes do")
                && short[0].contains("2026-01-02T00:01:00.000Z"),
            "{short:?}"
        );
        let unbounded = format!(
            "{jwt}  max_token_lifetime: unbounded\nrevocations:\n  users: [ {{ user: u1, tokens_issued_before: 2026-01-01T00:00:00Z, until: 2030-01-01T00:00:00Z }} ]\n"
        );
        assert!(errors(&minimal(&unbounded))[0].contains("must be left out"));
    }

    #[test]
    fn revocations_are_read_with_the_policys_origin() {
        let src = minimal(concat!(
            "revocations:\n",
            "  users: [ { user: u1, tokens_issued_before: 2026-01-01T00:00:00Z } ]\n",
            "  jtis: [ { jti: \"any text at all\", until: 2026-02-01T00:00:00Z } ]\n",
        ));
        let p = load_yaml("p", &src).unwrap().policy;
        assert_eq!(p.revocations.users[0].before, 1_767_225_600);
        assert_eq!(
            p.revocations.users[0].origin,
            crate::authn::api_key::Origin::Policy(p.fingerprint)
        );
        assert_eq!(p.revocations.jtis[0].until, Some(1_769_904_000));
        let bad =
            minimal("revocations:\n  users: [ { user: \"a b\", tokens_issued_before: soon } ]\n");
        let errs = errors(&bad);
        assert_eq!(errs.len(), 2, "{errs:#?}");
    }

    #[test]
    fn unknown_field_is_reported_at_its_key() {
        assert_eq!(
            errors(&minimal("colour: blue\n")),
            [
                "p.yaml:4:1: colour: unknown field 'colour'; expected one of [version, api_key, plans, unknown_plan, keys, routes, errors, jwt, revocations, hide_credentials, rate_limit, feed, environment, cors, security_headers, upstream_errors, body, logging, health]"
            ]
        );
    }

    #[test]
    fn every_error_is_reported_not_only_the_first() {
        let src = minimal(&format!(
            "keys:\n  - {{ id: a, sha256: abc, user: u, tenant: t, plan: gold }}\n  - {{ id: a, sha256: {HASH}, user: u, tenant: t, plan: team, active: 1 }}\n"
        ));
        let errs = errors(&src);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0].starts_with("p.yaml:5:22: keys[0].sha256: must be the SHA-256"),
            "{}",
            errs[0]
        );
        assert!(errs[1].starts_with("p.yaml:5:53: keys[0].plan: unknown plan 'gold'; expected one of [enterprise, free, solo, team]"), "{}", errs[1]);
        assert!(errs[2].starts_with("p.yaml:6:"), "{}", errs[2]);
        assert!(
            errs[2].contains("keys[1].active: expected true or false, found an integer"),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn duplicate_key_ids_and_hashes_are_refused() {
        let k = |id: &str| {
            format!("  - {{ id: {id}, sha256: {HASH}, user: u, tenant: t, plan: team }}\n")
        };
        let errs = errors(&minimal(&format!("keys:\n{}{}", k("a"), k("a"))));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains(
                "p.yaml:6:11: keys[1].id: duplicate key id 'a' (first declared at line 5)"
            ),
            "{}",
            errs[0]
        );
        let errs = errors(&minimal(&format!("keys:\n{}{}", k("a"), k("b"))));
        assert!(
            errs[0].contains("keys[1].sha256: the same key hash is already declared for key 'a'"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn a_bad_hash_error_never_echoes_the_value() {
        let errs = errors(&minimal(
            "keys:\n  - { id: a, sha256: ghk_live_secret_value, user: u, tenant: t, plan: team }\n",
        ));
        assert!(
            !errs.join("\n").contains("ghk_live_secret_value"),
            "{errs:?}"
        );
    }

    #[test]
    fn wrong_types_name_what_was_expected() {
        let errs = errors("version: 1\nroutes: { a: 1 }\n");
        assert_eq!(
            errs,
            ["p.yaml:2:9: routes: expected a list, found a mapping"]
        );
        let errs = errors(&minimal("api_key: { header: 12 }\n"));
        assert_eq!(
            errs,
            ["p.yaml:4:20: api_key.header: expected a string, found an integer (quote it)"]
        );
    }

    #[test]
    fn routes_are_required_and_validated() {
        assert_eq!(
            errors("version: 1\n"),
            ["p.yaml:1:1: missing required field 'routes'"]
        );
        let errs = errors(
            "routes:\n  - { match: { path: /a, path_prefix: /b }, audience: public }\n  - { match: { path: '/a/../b', methods: [get] } }\n",
        );
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs.iter().any(|e| e.contains(
            "routes[0].audience: unknown audience 'public'; expected one of [internal, external]"
        )));
        assert!(
            errs.iter()
                .any(|e| e.contains("either 'path' or 'path_prefix'"))
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("routes[1].match.path: must start with '/'"))
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("'get' is not an HTTP method"))
        );
    }

    #[test]
    fn yaml_syntax_errors_have_a_position() {
        let errs = errors("version: 1\nroutes: [\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("p.yaml:"), "{}", errs[0]);
        assert!(errs[0].contains("invalid YAML"), "{}", errs[0]);
    }

    #[test]
    fn the_plugin_accepts_exactly_what_the_checker_accepts() {
        let loaded = load_yaml(
            "example.yaml",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/example.yaml"
            )),
        )
        .unwrap();
        let from_json = Policy::from_json(loaded.plugin_config_json.as_bytes()).unwrap();
        assert_eq!(from_json, loaded.policy);
    }

    #[test]
    fn invalid_json_configuration_is_a_clear_error() {
        let e = Policy::from_json(b"{not json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("plugin configuration: the plugin configuration is not valid JSON"),
            "{e}"
        );
        let e = Policy::from_json(br#"{"routes": [], "x": 1}"#).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("plugin configuration: x: unknown field 'x'"),
            "{text}"
        );
        assert!(
            text.contains("routes: at least one route is required"),
            "{text}"
        );
    }

    #[test]
    fn the_refusal_log_level_defaults_to_info_and_unknown_levels_are_refused_at_their_position() {
        let level = |extra: &str| load_yaml("p", &minimal(extra)).unwrap().policy.logging;
        assert_eq!(level("").refusals, Some(LogLevel::Info));
        assert_eq!(level("logging: {}\n").refusals, Some(LogLevel::Info));
        assert_eq!(level("logging: { refusals: off }\n").refusals, None);
        assert_eq!(
            level("logging: { refusals: debug }\n").refusals,
            Some(LogLevel::Debug)
        );
        assert_eq!(
            level("logging:\n  refusals: warn\n").refusals,
            Some(LogLevel::Warn)
        );
        assert_eq!(
            errors(&minimal("logging:\n  refusals: loud\n")),
            [
                "p.yaml:5:13: logging.refusals: unknown log level 'loud'; expected one of [off, debug, info, warn]"
            ]
        );
        assert_eq!(
            errors(&minimal("logging: { requests: info }\n")),
            ["p.yaml:4:12: logging.requests: unknown field 'requests'; expected one of [refusals]"]
        );
        assert_eq!(
            errors(&minimal("logging: { refusals: 3 }\n")),
            ["p.yaml:4:22: logging.refusals: expected a string, found an integer (quote it)"]
        );
        // The plugin reads the same field from JSON.
        let json = r#"{"routes":[{"match":{"path_prefix":"/"}}],"logging":{"refusals":"off"}}"#;
        assert_eq!(
            Policy::from_json(json.as_bytes()).unwrap().logging.refusals,
            None
        );
        let bad = r#"{"routes":[{"match":{"path_prefix":"/"}}],"logging":{"refusals":"error"}}"#;
        assert!(
            Policy::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("logging.refusals: unknown log level 'error'")
        );
    }

    #[test]
    fn the_rate_limit_allowlist_is_checked_with_positions() {
        let p = load_yaml(
            "p.yaml",
            "version: 1
rate_limit:
  allowlist:
    - { cidr: 203.0.113.0/24 }
    - { key_id: key_partner, limit: team }
    - { tenant: tenant_ops, limit: login }
routes:
  - name: login
    match: { path: /login }
    limits: [{ requests: 5, per: 1m, by: ip }]
",
        )
        .unwrap()
        .policy;
        assert!(p.rate_limit.allowlist.has_cidrs());
        let who = crate::levers::Who {
            key_id: Some("key_partner"),
            ..Default::default()
        };
        assert!(p.rate_limit.allowlist.allowlisted(&who, "team"));
        assert!(!p.rate_limit.allowlist.allowlisted(&who, "free"));
        assert_eq!(
            errors(
                "version: 1
rate_limit:
  allowlist:
    - { cidr: 203.0.113.9/24 }
    - { user: u1, tenant: t1 }
    - { key_id: 'bad id' }
    - { user: u1, limit: nope }
    - { color: red }
routes: [{ match: { path_prefix: / } }]
"
            ),
            [
                "p.yaml:4:15: rate_limit.allowlist[0].cidr: expected a network such as 203.0.113.0/24 or 2001:db8::/32, with the host bits zero",
                "p.yaml:5:7: rate_limit.allowlist[1]: expected exactly one of [cidr, key_id, user, tenant]",
                "p.yaml:6:17: rate_limit.allowlist[2].key_id: expected 1 to 128 of A-Z a-z 0-9 . _ : @ + -",
                "p.yaml:7:26: rate_limit.allowlist[3].limit: unknown limit 'nope'; expected one of [free, solo, team, enterprise, anonymous]",
                "p.yaml:8:7: rate_limit.allowlist[4]: expected exactly one of [cidr, key_id, user, tenant]",
                "p.yaml:8:9: rate_limit.allowlist[4].color: unknown field 'color'; expected one of [cidr, key_id, user, tenant, limit]",
            ]
        );
    }

    #[test]
    fn route_limits_are_named_and_names_are_unique() {
        use crate::levers::Mode;
        let policy = |routes: &str| format!("version: 1\nroutes:\n{routes}");
        // One limit: the route's name; several: each its own.
        let p = load_yaml(
            "p",
            &policy(
                "  - name: login\n    match: { path: /login }\n    limits: [ { requests: 5, per: 1m, mode: shadow } ]\n  - name: search\n    match: { path_prefix: /s/ }\n    limits:\n      - { name: search-burst, requests: 5, per: 1s }\n      - { requests: 100, per: 1h }\n",
            ),
        )
        .unwrap()
        .policy;
        let names: Vec<_> = p
            .routes
            .iter()
            .flat_map(|r| &r.limits)
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["login", "search-burst", "search"]);
        assert_eq!(p.routes[0].limits[0].mode, Mode::Shadow);
        assert_eq!(p.routes[1].limits[0].mode, Mode::Enforce);
        assert_eq!(
            p.rule_names(),
            [
                "free",
                "solo",
                "team",
                "enterprise",
                "anonymous",
                "login",
                "search-burst",
                "search",
                "body:login",
                "body:search"
            ]
        );
        // Two unnamed limits on one route, with the file, line and column.
        let errs = errors(&policy(
            "  - name: s\n    match: { path_prefix: /s/ }\n    limits:\n      - { requests: 5, per: 1s }\n      - { requests: 100, per: 1h }\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("p.yaml:6:7"), "{errs:?}");
        assert!(
            errs[0].contains("route 's' has 2 limits without a name"),
            "{errs:?}"
        );
        // A name taken by a plan, by anonymous or by another limit.
        for (routes, clash) in [
            (
                "  - name: team\n    match: { path: /t }\n    limits: [ { requests: 5, per: 1s } ]\n",
                "plan 'team'",
            ),
            (
                "  - name: a\n    match: { path: /a }\n    limits: [ { name: anonymous, requests: 5, per: 1s } ]\n",
                "anonymous",
            ),
            (
                "  - name: a\n    match: { path: /a }\n    limits: [ { name: x, requests: 5, per: 1s } ]\n  - name: b\n    match: { path: /b }\n    limits: [ { name: x, requests: 5, per: 1s } ]\n",
                "routes[0].limits[0].name",
            ),
        ] {
            let errs = errors(&policy(routes));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains("p.yaml:"), "{errs:?}");
            assert!(errs[0].contains(clash), "{errs:?}");
        }
        assert!(
            errors(&policy(
                "  - match: { path: /a }\n    limits: [ { name: 'a b', requests: 5, per: 1s } ]\n"
            ))[0]
                .contains("must be 1 to 128")
        );
    }

    #[test]
    fn webhook_and_body_rules_take_a_mode() {
        use crate::levers::Mode;
        let p = load_yaml(
            "p",
            "version: 1\nroutes:\n  - name: hooks\n    match: { path: /hooks }\n    body: { max_bytes: 64KB, mode: shadow }\n    webhook: { provider: github, secrets_env: [GH], mode: off }\n  - match: { path: /x }\n",
        )
        .unwrap()
        .policy;
        assert_eq!(p.routes[0].body_mode, Mode::Shadow);
        assert_eq!(p.routes[0].webhook_mode, Mode::Off);
        assert_eq!(p.routes[1].body_mode, Mode::Enforce);
        assert!(p.rule_names().contains(&"webhook:hooks".to_string()));
        let errs =
            errors("version: 1\nroutes:\n  - match: { path: /x }\n    body: { mode: loud }\n");
        assert!(errs[0].contains("p.yaml:4:"), "{errs:?}");
        assert!(
            errs[0].contains("unknown mode 'loud'; expected one of [enforce, shadow, off]"),
            "{errs:?}"
        );
        // The top-level body section has no mode: a route's rule has.
        assert!(
            !errors("version: 1\nbody: { mode: shadow }\nroutes:\n  - match: { path: /x }\n")
                .is_empty()
        );
    }

    #[test]
    fn limits_are_local_unless_the_policy_or_the_limit_says_fleet() {
        use crate::limit::Scope;
        let p = load_yaml("p", &minimal("")).unwrap().policy;
        assert_eq!(p.rate_limit.scope, Scope::Local);
        assert_eq!(p.rate_limit.sync_interval_ms, 250);
        assert!(!p.rate_limit.any_fleet(&p.routes));
        let feed = "feed: { cluster: control, token_env: GATEHOUSE_FEED_TOKEN }\n";
        let p = load_yaml(
            "p",
            &format!(
                "version: 1
{feed}rate_limit: {{ scope: fleet, sync_interval: 500ms }}
routes:
  - match: {{ path_prefix: / }}
    limits:
      - {{ name: per-minute, requests: 5, per: 1m, by: user, scope: local }}
      - {{ name: per-hour, requests: 9, per: 1h, by: user }}
"
            ),
        )
        .unwrap()
        .policy;
        assert_eq!(p.rate_limit.scope, Scope::Fleet);
        assert_eq!(p.rate_limit.sync_interval_ms, 500);
        let scopes: Vec<_> = p.routes[0].limits.iter().map(|l| l.scope).collect();
        assert_eq!(scopes, [Some(Scope::Local), None]);
        let p = load_yaml(
            "p",
            &format!(
                "version: 1
{feed}rate_limit: {{ sync_interval: 2s }}
routes:
  - match: {{ path_prefix: / }}
    limits: [{{ requests: 5, per: 1m, by: user, scope: fleet }}]
"
            ),
        )
        .unwrap()
        .policy;
        assert_eq!(p.rate_limit.sync_interval_ms, 2_000);
        assert!(
            p.rate_limit.any_fleet(&p.routes),
            "one route limit is enough"
        );
        assert_eq!(
            errors(&format!(
                "version: 1
{feed}rate_limit: {{ scope: global, sync_interval: 50ms }}
routes: [{{ match: {{ path_prefix: / }}, limits: [{{ requests: 1, per: 1s, scope: 3 }}] }}]
"
            )),
            [
                "p.yaml:3:22: rate_limit.scope: unknown 'global'; expected one of [local, fleet]",
                "p.yaml:3:45: rate_limit.sync_interval: expected a duration such as 250ms or 1s, from 100ms to 10s",
                "p.yaml:4:79: routes[0].limits[0].scope: expected a string, found an integer (quote it)",
            ]
        );
        assert_eq!(
            errors(
                "version: 1
rate_limit: { scope: fleet }
routes: [{ match: { path_prefix: / } }]
"
            ),
            [
                "p.yaml:2:13: rate_limit.scope: fleet-scoped limits exchange counts through the control service: the policy needs a feed section"
            ]
        );
    }

    #[test]
    fn address_tables_networks_and_path_parameters_are_read_with_their_defaults() {
        let p = load_yaml("p", &minimal("")).unwrap().policy;
        assert_eq!(
            (
                p.rate_limit.address_slots,
                p.rate_limit.ipv4_prefix,
                p.rate_limit.ipv6_prefix
            ),
            (65_536, 32, 64)
        );
        assert!(!p.routes[0].path_parameters);
        let p = load_yaml(
            "p",
            "version: 1
rate_limit: { address_slots: 2048, ipv4_prefix: 24, ipv6_prefix: 56 }
routes:
  - match: { path_prefix: /cars/, path_parameters: allow, methods: [GET] }
",
        )
        .unwrap()
        .policy;
        assert_eq!(
            (
                p.rate_limit.address_slots,
                p.rate_limit.ipv4_prefix,
                p.rate_limit.ipv6_prefix
            ),
            (2048, 24, 56)
        );
        assert!(p.routes[0].path_parameters);
        assert_eq!(p.routes[0].methods, ["GET", "HEAD"]);
        let errs = errors(
            "version: 1
rate_limit: { address_slots: 10, ipv6_prefix: 200 }
routes:
  - match: { path: /a, path_parameters: yes }
  - match: { path: '/admin.', methods: [delete] }
",
        );
        let joined = errs.join("\n");
        for expected in [
            "p.yaml:2:30: rate_limit.address_slots:",
            "p.yaml:2:47: rate_limit.ipv6_prefix:",
            "p.yaml:4:41: routes[0].match.path_parameters: unknown value 'yes'; expected one of [refuse, allow]",
            "routes[1].match.path: must start with '/' and be in normal form",
            "routes[1].match.methods[0]: 'delete' is not an HTTP method",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
    }

    #[test]
    fn header_names_are_lower_cased_and_identity_headers_are_reserved() {
        let p = load_yaml("p", &minimal("api_key: { header: X-My-Key }\n"))
            .unwrap()
            .policy;
        assert_eq!(p.api_key_header, "x-my-key");
        let errs = errors(&minimal("api_key: { header: x-gatehouse-user }\n"));
        assert!(errs[0].contains("reserved"), "{errs:?}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_configuration_bytes_are_accepted_or_refused_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = Policy::from_json(&bytes);
        }

        #[test]
        fn mutated_valid_configurations_never_panic(
            cut in 0usize..400,
            insert in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let good = br#"{"version":1,"keys":[{"id":"a","sha256":"ea4d1b2a0167d9569b431fc952792261ff21c7e8da3bb4e49b66fd9bf07ef55f","user":"u","tenant":"t","plan":"team","expires_at":"2027-01-01T00:00:00Z"}],"routes":[{"match":{"path_prefix":"/v1/","methods":["GET"]},"audience":"external"}]}"#;
            let at = cut.min(good.len());
            let mut bytes = good[..at].to_vec();
            bytes.extend_from_slice(&insert);
            bytes.extend_from_slice(&good[at..]);
            let _ = Policy::from_json(&bytes);
        }
    }
}
