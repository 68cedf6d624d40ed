//! Decoding of the `rate_limit` section and of routes' `limits` (types in
//! [`crate::policy::RateLimitPolicy`] and [`crate::route::RouteLimit`]).

use super::auth::parse_duration_secs;
use super::{Decoder, join};
use crate::levers::Mode;
use crate::limit::{OnContention, Rate, Scope};
use crate::policy::tree::{Node, Value};
use crate::policy::{Plan, RateLimitPolicy};

use crate::limit::LimitBy;
use crate::route::RouteLimit;

/// The default size of the slot table: ~40 bytes each, about 3 MB in all.
pub const DEFAULT_SLOTS: u32 = 65_536;

const MINUTE_NANOS: u64 = 60_000_000_000;

/// `rate_limit.sync_interval`: its default and bounds, in ms.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 250;
const MIN_SYNC_INTERVAL_MS: u64 = 100;
const MAX_SYNC_INTERVAL_MS: u64 = 10_000;

/// `250ms` or `2s` in milliseconds.
fn parse_millis(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, scale) = if let Some(d) = s.strip_suffix("ms") {
        (d, 1)
    } else {
        (s.strip_suffix('s')?, 1000)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

fn anonymous_default(plans: &[Plan]) -> Rate {
    plans.iter().find(|p| p.name == "free").map_or(
        Rate {
            requests: 60,
            period_nanos: MINUTE_NANOS,
            burst: 60,
        },
        Plan::rate,
    )
}

impl Decoder {
    pub(super) fn rate_limit_defaults(&self, plans: &[Plan]) -> RateLimitPolicy {
        RateLimitPolicy {
            plan_key: LimitBy::User,
            anonymous: anonymous_default(plans),
            trusted_proxies: 0,
            slots: DEFAULT_SLOTS,
            address_slots: DEFAULT_SLOTS,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            on_contention: OnContention::Refuse,
            headers_on_allowed: false,
            scope: Scope::Local,
            sync_interval_ms: DEFAULT_SYNC_INTERVAL_MS,
            allowlist: crate::levers::Levers::default(),
        }
    }

    fn scope(&mut self, node: &Node, path: &str) -> Option<Scope> {
        match self.string(node, path)? {
            "local" => Some(Scope::Local),
            "fleet" => Some(Scope::Fleet),
            other => {
                self.error(
                    path,
                    node.pos,
                    format!("unknown '{other}'; expected one of [local, fleet]"),
                );
                None
            }
        }
    }

    /// `250ms`, `1s` or `2s`: from 100 ms to 10 s.
    fn sync_interval(&mut self, node: &Node, path: &str) -> Option<u64> {
        let ms = match &node.value {
            Value::Str(s) => parse_millis(s),
            _ => None,
        };
        match ms {
            Some(ms) if (MIN_SYNC_INTERVAL_MS..=MAX_SYNC_INTERVAL_MS).contains(&ms) => Some(ms),
            _ => {
                self.error(
                    path,
                    node.pos,
                    "expected a duration such as 250ms or 1s, from 100ms to 10s",
                );
                None
            }
        }
    }

    fn limit_by(&mut self, node: &Node, path: &str) -> Option<LimitBy> {
        match self.string(node, path)? {
            "ip" => Some(LimitBy::Ip),
            "key" => Some(LimitBy::Key),
            "user" => Some(LimitBy::User),
            "tenant" => Some(LimitBy::Tenant),
            other => {
                self.error(
                    path,
                    node.pos,
                    format!("unknown '{other}'; expected one of [ip, key, user, tenant]"),
                );
                None
            }
        }
    }

    fn count(&mut self, node: &Node, path: &str) -> Option<u32> {
        self.integer(node, path, 1, 1_000_000_000)
            .and_then(|v| u32::try_from(v).ok())
    }

    /// `limits`: the names the policy's rate limits have (plans, `anonymous`, route
    /// limits), which an allowlist entry's `limit` must be one of; `None` when the routes
    /// did not decode (their errors are reported already).
    pub(super) fn rate_limit(
        &mut self,
        node: &Node,
        path: &str,
        plans: &[Plan],
        limits: Option<&[String]>,
    ) -> Option<RateLimitPolicy> {
        let f = self.object(
            node,
            path,
            &[
                "key",
                "anonymous",
                "trusted_proxies",
                "slots",
                "address_slots",
                "ipv4_prefix",
                "ipv6_prefix",
                "on_contention",
                "headers_on_allowed",
                "scope",
                "sync_interval",
                "allowlist",
            ],
        )?;
        let mut out = self.rate_limit_defaults(plans);
        let mut ok = true;
        if let Some(n) = f.get("key") {
            match self.limit_by(n, &join(path, "key")) {
                Some(LimitBy::Ip) => {
                    self.error(
                        &join(path, "key"),
                        n.pos,
                        "plan limits count authenticated callers: expected one of [key, user, tenant]",
                    );
                    ok = false;
                }
                Some(by) => out.plan_key = by,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("anonymous") {
            let ap = join(path, "anonymous");
            match self.object(n, &ap, &["requests_per_minute", "burst"]) {
                Some(a) => {
                    let rpm = self
                        .required(&a, &ap, "requests_per_minute")
                        .and_then(|v| self.count(v, &join(&ap, "requests_per_minute")));
                    let burst = match a.get("burst") {
                        None => rpm,
                        Some(b) => self.count(b, &join(&ap, "burst")),
                    };
                    match (rpm, burst) {
                        (Some(requests), Some(burst)) => {
                            out.anonymous = Rate {
                                requests,
                                period_nanos: MINUTE_NANOS,
                                burst,
                            }
                        }
                        _ => ok = false,
                    }
                }
                None => ok = false,
            }
        }
        if let Some(n) = f.get("trusted_proxies") {
            match self.integer(n, &join(path, "trusted_proxies"), 0, 16) {
                Some(v) => out.trusted_proxies = u32::try_from(v).unwrap_or(0),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("slots") {
            match self.integer(n, &join(path, "slots"), 1024, 16_777_216) {
                Some(v) => out.slots = u32::try_from(v).unwrap_or(DEFAULT_SLOTS),
                None => ok = false,
            }
        }
        if let Some(n) = f.get("address_slots") {
            match self.integer(n, &join(path, "address_slots"), 1024, 16_777_216) {
                Some(v) => out.address_slots = u32::try_from(v).unwrap_or(DEFAULT_SLOTS),
                None => ok = false,
            }
        }
        // A client's address counts as its network: every address of an IPv6 /64 is one
        // subscriber's, and would otherwise be a fresh budget each.
        for (field, min, max) in [("ipv4_prefix", 8, 32), ("ipv6_prefix", 16, 128)] {
            if let Some(n) = f.get(field) {
                match self.integer(n, &join(path, field), min, max) {
                    Some(v) => {
                        let v = u8::try_from(v).unwrap_or(0);
                        if field == "ipv4_prefix" {
                            out.ipv4_prefix = v;
                        } else {
                            out.ipv6_prefix = v;
                        }
                    }
                    None => ok = false,
                }
            }
        }
        if let Some(n) = f.get("on_contention") {
            let cp = join(path, "on_contention");
            match self.string(n, &cp) {
                Some("refuse") => out.on_contention = OnContention::Refuse,
                Some("allow") => out.on_contention = OnContention::Allow,
                Some(other) => {
                    self.error(
                        &cp,
                        n.pos,
                        format!("unknown '{other}'; expected one of [refuse, allow]"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(n) = f.get("headers_on_allowed") {
            match self.boolean(n, &join(path, "headers_on_allowed")) {
                Some(b) => out.headers_on_allowed = b,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("scope") {
            match self.scope(n, &join(path, "scope")) {
                Some(s) => out.scope = s,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("sync_interval") {
            match self.sync_interval(n, &join(path, "sync_interval")) {
                Some(ms) => out.sync_interval_ms = ms,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("allowlist") {
            match self.allowlist(n, &join(path, "allowlist"), limits) {
                Some(a) => out.allowlist = a,
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `rate_limit.allowlist`: entries of exactly one of `cidr` (canonical: host bits
    /// zero), `key_id`, `user`, `tenant`, and an optional `limit` naming one of the
    /// policy's rate limits (absent: every rate limit). The same entries as the feed's
    /// allowlist (control/FEED.md, "Levers"), checked here with their positions.
    fn allowlist(
        &mut self,
        node: &Node,
        path: &str,
        limits: Option<&[String]>,
    ) -> Option<crate::levers::Levers> {
        let items = self.list(node, path)?;
        if items.len() > crate::levers::MAX_ENTRIES {
            self.error(
                path,
                node.pos,
                format!("at most {} entries", crate::levers::MAX_ENTRIES),
            );
            return None;
        }
        let mut entries = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(e) = self.object(item, &ip, &["cidr", "key_id", "user", "tenant", "limit"])
            else {
                ok = false;
                continue;
            };
            let given: Vec<&str> = ["cidr", "key_id", "user", "tenant"]
                .into_iter()
                .filter(|k| e.get(k).is_some())
                .collect();
            let [field] = given.as_slice() else {
                self.error(
                    &ip,
                    item.pos,
                    "expected exactly one of [cidr, key_id, user, tenant]",
                );
                ok = false;
                continue;
            };
            let fp = join(&ip, field);
            let Some(n) = e.get(field) else { continue };
            let Some(value) = self.string(n, &fp) else {
                ok = false;
                continue;
            };
            let valid = if *field == "cidr" {
                crate::levers::Cidr::parse(value).is_some()
            } else {
                crate::authn::api_key::is_valid_id(value)
            };
            if !valid {
                let what = if *field == "cidr" {
                    "expected a network such as 203.0.113.0/24 or 2001:db8::/32, with the host bits zero"
                } else {
                    "expected 1 to 128 of A-Z a-z 0-9 . _ : @ + -"
                };
                self.error(&fp, n.pos, what);
                ok = false;
                continue;
            }
            let mut entry = serde_json::json!({ "id": "policy", *field: value });
            if let Some(l) = e.get("limit") {
                let lp = join(&ip, "limit");
                let Some(name) = self.string(l, &lp) else {
                    ok = false;
                    continue;
                };
                if let Some(known) = limits
                    && !known.iter().any(|k| k == name)
                {
                    self.error(
                        &lp,
                        l.pos,
                        format!(
                            "unknown limit '{name}'; expected one of [{}]",
                            known.join(", ")
                        ),
                    );
                    ok = false;
                    continue;
                }
                if let Some(o) = entry.as_object_mut() {
                    o.insert("limit".into(), serde_json::Value::String(name.to_string()));
                }
            }
            entries.push(entry);
        }
        if !ok {
            return None;
        }
        let set = serde_json::json!({ "allowlist": entries });
        match crate::levers::parse(&set) {
            Ok(levers) => Some(levers),
            Err(e) => {
                self.error(path, node.pos, e.to_string());
                None
            }
        }
    }

    pub(super) fn route_limits(&mut self, node: &Node, path: &str) -> Option<Vec<RouteLimit>> {
        let items = self.list(node, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(f) = self.object(
                item,
                &p,
                &["name", "requests", "per", "by", "burst", "scope", "mode"],
            ) else {
                ok = false;
                continue;
            };
            let requests = self
                .required(&f, &p, "requests")
                .and_then(|n| self.count(n, &join(&p, "requests")));
            let per = self.required(&f, &p, "per").and_then(|n| {
                let pp = join(&p, "per");
                let secs = match &n.value {
                    Value::Str(s) => parse_duration_secs(s),
                    _ => None,
                };
                match secs {
                    Some(s) if (1..=86_400 * 7).contains(&s) => Some(s),
                    _ => {
                        self.error(
                            &pp,
                            n.pos,
                            "expected a period such as 1s, 1m, 1h or 1d (at most 7d)",
                        );
                        None
                    }
                }
            });
            let by = match f.get("by") {
                None => Some(LimitBy::Ip),
                Some(n) => self.limit_by(n, &join(&p, "by")),
            };
            let burst = match f.get("burst") {
                None => requests,
                Some(n) => self.count(n, &join(&p, "burst")),
            };
            let scope = match f.get("scope") {
                None => Some(None),
                Some(n) => self.scope(n, &join(&p, "scope")).map(Some),
            };
            // Unnamed: named after the route ([`Decoder::name_limits`]).
            let name = match f.get("name") {
                None => Some(String::new()),
                Some(n) => self.id(n, &join(&p, "name")),
            };
            let mode = match f.get("mode") {
                None => Some(Mode::Enforce),
                Some(n) => self.mode(n, &join(&p, "mode")),
            };
            match (requests, per, by, burst, scope, name, mode) {
                (
                    Some(requests),
                    Some(per),
                    Some(by),
                    Some(burst),
                    Some(scope),
                    Some(name),
                    Some(mode),
                ) => out.push(RouteLimit {
                    rate: Rate {
                        requests,
                        period_nanos: per.saturating_mul(1_000_000_000),
                        burst,
                    },
                    by,
                    scope,
                    name,
                    mode,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }
}
