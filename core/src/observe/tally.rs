//! What one worker decided, tallied in its own memory and handed on once a second: an
//! allowed request pays no host call for being watched, and no record ever holds a key,
//! token, signature or other secret. Metrics and log: `docs/observing.md#metrics`.

use crate::authn::api_key::is_valid_id;
use crate::authn::{Credential, Identity};
use crate::refusal::{Code, Denial};
use crate::text::{push_decimal, push_json_string};
use crate::time::{UnixNanos, format_rfc3339};
use std::collections::HashMap;

/// Refusal records kept between two flushes; more are counted as dropped.
pub const MAX_REFUSALS: usize = 256;
/// Key uses kept between two flushes; more wait for a later request.
pub const MAX_KEY_USES: usize = 256;
/// A key id's use is reported at most once this often per worker.
pub const KEY_USE_EVERY_SECS: u64 = 60;
/// Plans with their own counts (the events contract takes 64 entries, anonymous included);
/// requests of later plans count in the totals only.
pub const MAX_PLANS: usize = 63;
/// Key ids remembered as reported; past this, the ones older than a minute are forgotten.
const MAX_REMEMBERED_KEYS: usize = 4096;

/// The counters with a fixed place, and their metric names.
const FIXED: [&str; 13] = [
    "gatehouse.requests.allowed",
    "gatehouse.requests.refused",
    "gatehouse.rate_limited",
    "gatehouse.rate_limit_contention",
    "gatehouse.rate_limit_collisions",
    "gatehouse.rate_limit_cas_retries",
    "gatehouse.feed.stale_served",
    "gatehouse.webhook_refused",
    "gatehouse.body_refused",
    "gatehouse.events.refusals_dropped",
    "gatehouse.health.ready",
    "gatehouse.health.not_ready",
    "gatehouse.allowlisted",
];
const ALLOWED: usize = 0;
const REFUSED: usize = 1;
const RATE_LIMITED: usize = 2;
const LIMITER_CONTENTION: usize = 3;
const LIMITER_COLLISIONS: usize = 4;
const LIMITER_RETRIES: usize = 5;
const FEED_STALE_SERVED: usize = 6;
const WEBHOOK_REFUSED: usize = 7;
const BODY_REFUSED: usize = 8;
const REFUSALS_DROPPED: usize = 9;
const HEALTH_READY: usize = 10;
const HEALTH_NOT_READY: usize = 11;
const ALLOWLISTED: usize = 12;
/// `gatehouse.webhook.signature_failures.<provider>`, in [`SignatureProvider`] order.
const PROVIDERS: [&str; 4] = ["stripe", "slack", "github", "hmac"];
const SIGNATURES: usize = FIXED.len();
const CODES: usize = SIGNATURES + PROVIDERS.len();
const PLANS: usize = CODES + Code::REFUSALS.len();

/// A webhook provider, for the signature failure counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureProvider {
    Stripe,
    Slack,
    Github,
    /// The generic HMAC provider.
    Hmac,
}

impl SignatureProvider {
    pub fn of(provider: &crate::body::webhook::Provider) -> SignatureProvider {
        use crate::body::webhook::Provider;
        match provider {
            Provider::Stripe => SignatureProvider::Stripe,
            Provider::Slack => SignatureProvider::Slack,
            Provider::Github => SignatureProvider::Github,
            Provider::Generic(_) => SignatureProvider::Hmac,
        }
    }
}

/// A metric leaf from a name Envoy would split or Prometheus would rewrite: lower case,
/// anything but `a-z 0-9 _` becomes `_` (a plan `pro-plus` is `gatehouse.plan.pro_plus.*`).
pub fn metric_leaf(name: &str) -> String {
    name.bytes()
        .map(|b| match b.to_ascii_lowercase() {
            c @ (b'a'..=b'z' | b'0'..=b'9' | b'_') => char::from(c),
            _ => '_',
        })
        .collect()
}

/// Every counter a worker flushes, by name, in the order of [`Tally::flush_counts`]'s
/// indexes: the fixed ones, signature failures by provider, refusals by code, allowed
/// and refused per plan (the policy's first [`MAX_PLANS`] plans, then `anonymous`), then
/// `gatehouse.shadow.would_refuse.<rule>` for each of the policy's rules
/// ([`crate::policy::Policy::rule_names`]).
pub fn metric_names_with_rules(plans: &[String], rules: &[String]) -> Vec<String> {
    let mut names = metric_names(plans);
    for rule in rules {
        names.push(["gatehouse.shadow.would_refuse.", &metric_leaf(rule)].concat());
    }
    names
}

/// [`metric_names_with_rules`] without the rules.
pub fn metric_names(plans: &[String]) -> Vec<String> {
    let mut names: Vec<String> = FIXED.iter().map(|n| n.to_string()).collect();
    for p in PROVIDERS {
        names.push(["gatehouse.webhook.signature_failures.", p].concat());
    }
    for code in Code::REFUSALS.map(Code::as_str) {
        names.push(["gatehouse.refused.", &code.to_ascii_lowercase()].concat());
    }
    let plan_names = plans.iter().take(MAX_PLANS).map(|p| metric_leaf(p));
    for plan in plan_names.chain(std::iter::once("anonymous".to_string())) {
        for outcome in [".allowed", ".refused"] {
            names.push(["gatehouse.plan.", &plan, outcome].concat());
        }
    }
    names
}

/// FNV-1a: key ids are validated ids chosen by the control service, and the map is
/// bounded, so a fast hash without keys is enough (SipHash costs more than the lookup).
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvBuild = std::hash::BuildHasherDefault<Fnv>;

/// One worker's tallies, owned by its root context and shared with its filters
/// (`Rc<RefCell<..>>`). An allowed request adds to a few counters (and, for an API key
/// not reported this minute, one key use); on each tick the root flushes counters as
/// deltas ([`Tally::flush_counts`]) and, with a feed, takes one JSON batch
/// ([`Tally::take_batch`]) for the sync ([`crate::observe::events`]). Bounded per flush:
/// [`MAX_REFUSALS`] refusals (more counted as dropped), [`MAX_KEY_USES`] key uses, one
/// count pair for each of the first [`MAX_PLANS`] plans plus anonymous callers.
pub struct Tally {
    /// Counter deltas since the last flush, indexed as [`metric_names`].
    counts: Vec<u64>,
    plan_names: Vec<String>,
    /// Keep refusal records, key uses and plan counts for the sync (the policy has a feed).
    audit: bool,
    /// The refusal records since the last batch, as JSON objects joined by commas.
    refusals: String,
    refusal_count: usize,
    /// Refusals not kept for lack of room since the last batch.
    dropped: u64,
    /// Key uses since the last batch: key id, unix seconds.
    key_uses: Vec<(Box<str>, u64)>,
    /// When each key id's use was last kept.
    reported: HashMap<Box<str>, u64, FnvBuild>,
    /// Allowed and refused requests per plan slot since the last batch, and allowed ones
    /// a rule in shadow would have refused.
    plan_counts: Vec<[u64; 3]>,
    /// Where the shadow counters start in `counts`, and how many rules have one.
    shadow_base: usize,
    rules: usize,
}

/// Everything a refusal is recorded with. Borrowed from the request; holds no secret:
/// only validated values (request id, method, route pattern, code, status, key id, user,
/// plan, client address). A refusal may cost more than an allowed request: its log line
/// and audit record are written by hand (no `format!`, no serde_json).
#[derive(Clone, Copy, Debug)]
pub struct RefusalFacts<'a> {
    pub at: UnixNanos,
    pub denial: Denial,
    pub request_id: &'a [u8],
    pub method: &'a [u8],
    /// The matched route's path pattern from the policy.
    pub route: Option<&'a str>,
    pub identity: Option<&'a Identity>,
    pub credential: Option<Credential>,
    /// The client's address without its port (see [`client_ip`]).
    pub client: Option<&'a str>,
    /// The rule in `shadow` that would have refused the request (which passed): the
    /// audit record says `"shadow":true`, the log line names the rule.
    pub shadow: Option<&'a str>,
}

/// `s` when it is 1 to `max` bytes of visible ASCII (0x21-0x7e), else `""`.
fn printable(raw: &[u8], max: usize) -> &str {
    match std::str::from_utf8(raw) {
        Ok(s) if s.len() <= max && s.bytes().all(|b| (0x21..0x7f).contains(&b)) => s,
        _ => "",
    }
}

/// An HTTP method as the events contract takes it: 1 to 16 token characters, else `""`.
fn method(raw: &[u8]) -> &str {
    let token = raw.len() <= 16
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if token {
        std::str::from_utf8(raw).unwrap_or("")
    } else {
        ""
    }
}

/// The client's address as an IP address, or `None` when it is not one (an
/// `x-forwarded-for` entry can hold anything).
pub fn client_ip(address: &str) -> Option<&str> {
    address
        .parse::<std::net::IpAddr>()
        .is_ok()
        .then_some(address)
}

impl RefusalFacts<'_> {
    /// The key id, for an API key only (a token's `jwt:<kid>` is no key).
    fn key_id(&self) -> Option<&str> {
        match (self.credential, self.identity) {
            (Some(Credential::ApiKey), Some(i)) if is_valid_id(&i.key_id) => Some(&i.key_id),
            _ => None,
        }
    }

    fn user(&self) -> Option<&str> {
        self.identity
            .map(|i| i.user.as_str())
            .filter(|u| is_valid_id(u))
    }

    fn plan(&self) -> Option<&str> {
        self.identity
            .map(|i| i.plan.as_str())
            .filter(|p| is_valid_id(p))
    }

    fn route(&self) -> Option<&str> {
        self.route
            .map(|r| printable(r.as_bytes(), 256))
            .filter(|r| !r.is_empty())
    }

    /// The refusal log line: one JSON object, `time` first. `route` is `null` when no route
    /// matched; `key_id`, `user` and `client` are left out when unknown.
    pub fn log_line(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("{\"time\":\"");
        out.push_str(&format_rfc3339(self.at));
        out.push_str("\",\"request_id\":");
        push_json_string(&mut out, printable(self.request_id, 128));
        out.push_str(",\"method\":");
        push_json_string(&mut out, method(self.method));
        out.push_str(",\"route\":");
        match self.route() {
            Some(r) => push_json_string(&mut out, r),
            None => out.push_str("null"),
        }
        self.push_outcome(&mut out);
        out.push_str(",\"reason\":");
        push_json_string(&mut out, self.denial.reason());
        if let Some(rule) = self.shadow {
            out.push_str(",\"would_refuse\":");
            push_json_string(&mut out, rule);
            out.push_str(",\"shadow\":true");
        }
        self.push_caller(&mut out, false);
        out.push('}');
        out
    }

    /// The refusal as the events contract's `refusals[]` item (`control/FEED.md`).
    pub fn push_audit_record(&self, out: &mut String) {
        out.push_str("{\"at\":");
        push_decimal(out, self.at.secs());
        out.push_str(",\"request_id\":");
        push_json_string(out, printable(self.request_id, 128));
        out.push_str(",\"method\":");
        push_json_string(out, method(self.method));
        out.push_str(",\"route\":");
        push_json_string(out, self.route().unwrap_or(""));
        self.push_outcome(out);
        if self.shadow.is_some() {
            out.push_str(",\"shadow\":true");
        }
        self.push_caller(out, true);
        out.push('}');
    }

    fn push_outcome(&self, out: &mut String) {
        out.push_str(",\"code\":");
        push_json_string(out, self.denial.audit_code().as_str());
        out.push_str(",\"status\":");
        push_decimal(out, u64::from(self.denial.status()));
    }

    fn push_caller(&self, out: &mut String, with_plan: bool) {
        let plan = if with_plan { self.plan() } else { None };
        for (name, value) in [
            ("key_id", self.key_id()),
            ("user", self.user()),
            ("plan", plan),
            ("client", self.client.and_then(client_ip)),
        ] {
            if let Some(v) = value {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                push_json_string(out, v);
            }
        }
    }
}

impl Tally {
    /// A tally for a policy with these plans; `audit`: the policy has a feed, so refusals,
    /// key uses and per-plan counts are kept for the sync.
    pub fn new(plans: &[String], audit: bool) -> Tally {
        Tally::with_rules(plans, 0, audit)
    }

    /// [`Tally::new`] with a shadow counter for each of the policy's `rules`
    /// ([`metric_names_with_rules`]).
    pub fn with_rules(plans: &[String], rules: usize, audit: bool) -> Tally {
        let plan_names: Vec<String> = plans.iter().take(MAX_PLANS).cloned().collect();
        let slots = plan_names.len() + 1;
        Tally {
            shadow_base: PLANS + 2 * slots,
            rules,
            counts: vec![0; PLANS + 2 * slots + rules],
            plan_names,
            audit,
            refusals: String::new(),
            refusal_count: 0,
            dropped: 0,
            key_uses: Vec::new(),
            reported: HashMap::default(),
            plan_counts: vec![[0; 3]; slots],
        }
    }

    /// The plan's slot: its place among the counted plans, the last one for anonymous
    /// callers, `None` for a plan without its own counts.
    fn plan_slot(&self, identity: Option<&Identity>) -> Option<usize> {
        let plan = match identity {
            None => return Some(self.plan_names.len()),
            Some(i) => i.plan.as_bytes(),
        };
        self.plan_names.iter().position(|p| p.as_bytes() == plan)
    }

    fn add(&mut self, index: usize, n: u64) {
        if let Some(c) = self.counts.get_mut(index) {
            *c = c.saturating_add(n);
        }
    }

    /// Counts in the per-plan pairs for the events only.
    fn count_slot_audit(&mut self, slot: Option<usize>, outcome: usize) {
        if self.audit
            && let Some(pair) = slot.and_then(|s| self.plan_counts.get_mut(s))
            && let Some(c) = pair.get_mut(outcome)
        {
            *c = c.saturating_add(1);
        }
    }

    fn count_slot(&mut self, slot: Option<usize>, outcome: usize) {
        let Some(slot) = slot else {
            return;
        };
        self.add(PLANS + 2 * slot + outcome, 1);
        if self.audit
            && let Some(pair) = self.plan_counts.get_mut(slot)
            && let Some(c) = pair.get_mut(outcome)
        {
            *c = c.saturating_add(1);
        }
    }

    /// An allowed request (counted once its body, if checked, passed too). `plan`: the
    /// caller's plan as [`crate::pipeline::Allowed::plan`] says (`None` and `anonymous`:
    /// an anonymous caller). `key_use`: the API key's id and the time, kept for the sync
    /// unless this key id's use was kept less than [`KEY_USE_EVERY_SECS`] ago.
    pub fn allowed(&mut self, plan: Option<usize>, anonymous: bool, key_use: Option<(&str, u64)>) {
        self.allowed_shadowed(plan, anonymous, key_use, false);
    }

    /// [`Tally::allowed`]; `shadow_refused`: a rule in shadow would have refused it
    /// (the events' `requests[].shadow_refused`).
    pub fn allowed_shadowed(
        &mut self,
        plan: Option<usize>,
        anonymous: bool,
        key_use: Option<(&str, u64)>,
        shadow_refused: bool,
    ) {
        self.add(ALLOWED, 1);
        let slot = match plan {
            _ if anonymous => Some(self.plan_names.len()),
            Some(p) if p < self.plan_names.len() => Some(p),
            _ => None,
        };
        self.count_slot(slot, 0);
        if shadow_refused {
            self.count_slot_audit(slot, 2);
        }
        if let (true, Some((key_id, now))) = (self.audit, key_use) {
            self.key_used(key_id, now);
        }
    }

    fn key_used(&mut self, key_id: &str, now: u64) {
        if let Some(at) = self.reported.get(key_id)
            && now.saturating_sub(*at) < KEY_USE_EVERY_SECS
        {
            return;
        }
        if self.key_uses.len() >= MAX_KEY_USES {
            // Not remembered as reported: the key's next request tries again.
            return;
        }
        if self.reported.len() >= MAX_REMEMBERED_KEYS {
            self.reported
                .retain(|_, at| now.saturating_sub(*at) < KEY_USE_EVERY_SECS);
            if self.reported.len() >= MAX_REMEMBERED_KEYS {
                self.reported.clear();
            }
        }
        self.reported.insert(key_id.into(), now);
        self.key_uses.push((key_id.into(), now));
    }

    /// Limiter events of an allowed or refused request.
    pub fn limiter(&mut self, retries: u32, contention: bool) {
        self.add(LIMITER_RETRIES, u64::from(retries));
        if contention {
            self.add(LIMITER_CONTENTION, 1);
        }
    }

    /// A request for which an allowlist skipped at least one rate limit.
    pub fn allowlisted(&mut self) {
        self.add(ALLOWLISTED, 1);
    }

    /// A rule in `shadow` that would have refused a request (`facts.denial`, with
    /// `facts.shadow` naming the rule) it let pass: counted under the rule (its place in
    /// [`crate::policy::Policy::rule_names`]) and kept for the sync as a refusal with
    /// `"shadow":true`. Never counted as a refusal.
    pub fn would_refuse(&mut self, rule: Option<usize>, facts: &RefusalFacts<'_>) {
        if let Some(r) = rule.filter(|r| *r < self.rules) {
            self.add(self.shadow_base + r, 1);
        }
        self.keep_refusal(facts);
    }

    /// A credential checked against a stale feed cache and served (`keep_serving`).
    pub fn stale_served(&mut self) {
        self.add(FEED_STALE_SERVED, 1);
    }

    /// A health route probe answered 200 (`ready`) or 503 `NOT_READY`: counted apart from
    /// requests, never per plan and never in the refusal audit (a load balancer asks every
    /// few seconds, and a cold Envoy's 503s refuse nobody).
    pub fn health(&mut self, ready: bool) {
        self.add(
            if ready {
                HEALTH_READY
            } else {
                HEALTH_NOT_READY
            },
            1,
        );
    }

    /// A refusal: counted by code, plan and kind, and kept for the sync when auditing.
    /// `provider`: the route's webhook provider, for a signature refusal.
    pub fn refused(&mut self, facts: &RefusalFacts<'_>, provider: Option<SignatureProvider>) {
        let denial = facts.denial;
        let Some(code) = denial.code_index() else {
            return;
        };
        self.add(REFUSED, 1);
        self.add(CODES + code, 1);
        self.count_slot(self.plan_slot(facts.identity), 1);
        match denial {
            Denial::RateLimited(r) => {
                self.add(RATE_LIMITED, 1);
                match r {
                    crate::limit::Refusal::Contention { .. } => self.add(LIMITER_CONTENTION, 1),
                    crate::limit::Refusal::Collision { .. } => self.add(LIMITER_COLLISIONS, 1),
                    crate::limit::Refusal::Exceeded { .. } => {}
                }
            }
            Denial::Signature(_) => {
                self.add(WEBHOOK_REFUSED, 1);
                if let Some(p) = provider {
                    self.add(SIGNATURES + p as usize, 1);
                }
            }
            Denial::Body(_) => self.add(BODY_REFUSED, 1),
            _ => {}
        }
        self.keep_refusal(facts);
    }

    /// Keeps a refusal's record for the sync, within the bound.
    fn keep_refusal(&mut self, facts: &RefusalFacts<'_>) {
        if !self.audit {
            return;
        }
        if self.refusal_count >= MAX_REFUSALS {
            self.dropped = self.dropped.saturating_add(1);
            self.add(REFUSALS_DROPPED, 1);
            return;
        }
        if self.refusal_count > 0 {
            self.refusals.push(',');
        }
        facts.push_audit_record(&mut self.refusals);
        self.refusal_count += 1;
    }

    /// Hands every nonzero counter delta to `emit` (index as in [`metric_names`], delta)
    /// and starts counting from zero.
    pub fn flush_counts(&mut self, mut emit: impl FnMut(usize, u64)) {
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c > 0 {
                emit(i, *c);
                *c = 0;
            }
        }
    }

    /// The batch for the sync, when there is anything to report, and starts a new one:
    /// `{"refusals":[..],"key_uses":[..],"requests":[..],"dropped":n}` (the events
    /// contract's fields; the sync adds `proxy` and `cache_version`).
    pub fn take_batch(&mut self) -> Option<String> {
        let counted = self.plan_counts.iter().any(|c| c.iter().any(|n| *n > 0));
        if !self.audit
            || (self.refusal_count == 0
                && self.key_uses.is_empty()
                && !counted
                && self.dropped == 0)
        {
            return None;
        }
        let mut out = String::with_capacity(64 + self.refusals.len() + 48 * self.key_uses.len());
        out.push_str("{\"refusals\":[");
        out.push_str(&self.refusals);
        out.push_str("],\"key_uses\":[");
        for (i, (key_id, at)) in self.key_uses.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"key_id\":");
            push_json_string(&mut out, key_id);
            out.push_str(",\"at\":");
            push_decimal(&mut out, *at);
            out.push('}');
        }
        out.push_str("],\"requests\":[");
        let mut first = true;
        let anonymous = self.plan_names.len();
        for (slot, [allowed, refused, shadowed]) in self.plan_counts.iter().enumerate() {
            if *allowed == 0 && *refused == 0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let plan = if slot == anonymous {
                ""
            } else {
                self.plan_names.get(slot).map_or("", String::as_str)
            };
            out.push_str("{\"plan\":");
            push_json_string(&mut out, plan);
            out.push_str(",\"allowed\":");
            push_decimal(&mut out, *allowed);
            out.push_str(",\"refused\":");
            push_decimal(&mut out, *refused);
            if *shadowed > 0 {
                out.push_str(",\"shadow_refused\":");
                push_decimal(&mut out, *shadowed);
            }
            out.push('}');
        }
        out.push_str("],\"dropped\":");
        push_decimal(&mut out, self.dropped);
        out.push('}');
        self.refusals.clear();
        self.refusal_count = 0;
        self.dropped = 0;
        self.key_uses.clear();
        for c in &mut self.plan_counts {
            *c = [0; 3];
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::AuthFailure;
    use serde_json::{Value, json};

    fn plans() -> Vec<String> {
        ["free", "team", "pro-plus"].map(String::from).to_vec()
    }

    fn team_key() -> Identity {
        Identity {
            key_id: "key_8f3a".into(),
            user: "user_1".into(),
            tenant: "tenant_1".into(),
            plan: "team".into(),
        }
    }

    /// 2026-01-01T00:00:00Z
    const T0: u64 = 1_767_225_600;

    fn facts<'a>(denial: Denial, identity: Option<&'a Identity>) -> RefusalFacts<'a> {
        RefusalFacts {
            at: UnixNanos::from_secs(T0),
            denial,
            request_id: b"req-1",
            method: b"GET",
            route: Some("/v1/"),
            identity,
            credential: identity.map(|_| Credential::ApiKey),
            client: Some("203.0.113.7"),
            shadow: None,
        }
    }

    fn counters(t: &mut Tally) -> std::collections::BTreeMap<String, u64> {
        let names = metric_names(&plans());
        let mut out = std::collections::BTreeMap::new();
        t.flush_counts(|i, n| {
            out.insert(names[i].clone(), n);
        });
        out
    }

    #[test]
    fn health_probes_are_counted_apart_and_never_as_requests_plans_or_refusals() {
        let mut t = Tally::new(&plans(), true);
        t.health(true);
        t.health(true);
        t.health(false);
        // Even handed to `refused`, the health route's 503 is no refusal.
        let not_ready = Denial::NotReady(crate::health::Unready::NoSnapshot);
        t.refused(&facts(not_ready, None), None);
        let c = counters(&mut t);
        assert_eq!(
            c,
            [
                ("gatehouse.health.not_ready".to_string(), 1),
                ("gatehouse.health.ready".to_string(), 2)
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(t.take_batch(), None, "nothing for the audit");
    }

    fn rate_limited() -> Denial {
        let quota = crate::limit::Quota {
            limit: 1,
            remaining: 0,
            reset_secs: 1,
        };
        Denial::RateLimited(crate::limit::Refusal::Exceeded {
            quota,
            retry_after_secs: 1,
        })
    }

    #[test]
    fn metric_names_follow_envoys_conventions() {
        let names = metric_names(&plans());
        for n in &names {
            assert!(n.starts_with("gatehouse."), "{n}");
            assert!(
                n.split('.').all(|leaf| !leaf.is_empty()
                    && leaf
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')),
                "{n}"
            );
        }
        for expected in [
            "gatehouse.requests.allowed",
            "gatehouse.refused.rate_limited",
            "gatehouse.refused.invalid_credentials",
            "gatehouse.plan.pro_plus.allowed",
            "gatehouse.plan.anonymous.refused",
            "gatehouse.webhook.signature_failures.hmac",
            "gatehouse.rate_limit_cas_retries",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}");
        }
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(metric_leaf("Pro.Plus-2"), "pro_plus_2");
    }

    /// docs/observing.md ("Metrics") has a line for every metric the module defines: the
    /// workers' (per code, provider and plan as a pattern) and the root and sync's own.
    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observing.md"));
        let section = readme
            .split("## Metrics")
            .nth(1)
            .and_then(|s| s.split("## Refusal log").next())
            .unwrap_or_default();
        let documented = |prom: &str| section.contains(&format!("`{prom}`"));
        let prometheus = |n: &str| n.replace('.', "_");
        let mut missing = Vec::new();
        for name in metric_names_with_rules(&["team".to_string()], &["login".to_string()]) {
            let prom = prometheus(&name);
            let ok = if prom.starts_with("gatehouse_shadow_would_refuse_") {
                documented("gatehouse_shadow_would_refuse_<rule>")
            } else if let Some(code) = prom.strip_prefix("gatehouse_refused_") {
                documented("gatehouse_refused_<code>") && section.contains(&format!("_{code}`"))
            } else if let Some(rest) = prom.strip_prefix("gatehouse_plan_") {
                let outcome = if rest.ends_with("_allowed") {
                    "_allowed"
                } else {
                    "_refused"
                };
                documented(&format!("gatehouse_plan_<plan>{outcome}"))
                    || (documented("gatehouse_plan_<plan>_allowed") && documented(outcome))
            } else if let Some(p) = prom.strip_prefix("gatehouse_webhook_signature_failures_") {
                documented("gatehouse_webhook_signature_failures_<provider>") && documented(p)
            } else {
                documented(&prom)
            };
            if !ok {
                missing.push(prom);
            }
        }
        // Defined by the root context (JWKS) and the sync (feed, events), not the tally.
        for name in [
            "gatehouse.jwks.fetches",
            "gatehouse.jwks.fetch_failures",
            "gatehouse.feed.version",
            "gatehouse.feed.keys",
            "gatehouse.feed.last_sync_age_seconds",
            "gatehouse.feed.entries_applied",
            "gatehouse.feed.failures",
            "gatehouse.feed.records_skipped",
            "gatehouse.events.posts",
            "gatehouse.events.post_failures",
            "gatehouse.events.refusals_posted",
            "gatehouse.levers.rejected",
            "gatehouse.levers.entries",
            "gatehouse.levers.unknown_names",
        ] {
            if !documented(&prometheus(name)) {
                missing.push(prometheus(name));
            }
        }
        assert!(
            missing.is_empty(),
            "not in docs/observing.md's Metrics table: {missing:?}"
        );
    }

    #[test]
    fn counters_add_up_per_decision_code_and_plan_and_flush_as_deltas() {
        let mut t = Tally::new(&plans(), false);
        let team = team_key();
        for _ in 0..3 {
            t.allowed(Some(1), false, Some(("key_8f3a", T0)));
        }
        t.allowed(None, true, None);
        t.refused(&facts(rate_limited(), Some(&team)), None);
        t.refused(
            &facts(Denial::Unauthorized(AuthFailure::Missing), None),
            None,
        );
        t.refused(
            &facts(
                Denial::Signature(crate::body::webhook::SignatureError::Mismatch),
                None,
            ),
            Some(SignatureProvider::Github),
        );
        t.limiter(2, false);
        let c = counters(&mut t);
        let expect: std::collections::BTreeMap<String, u64> = [
            ("gatehouse.requests.allowed", 4),
            ("gatehouse.requests.refused", 3),
            ("gatehouse.plan.team.allowed", 3),
            ("gatehouse.plan.team.refused", 1),
            ("gatehouse.plan.anonymous.allowed", 1),
            ("gatehouse.plan.anonymous.refused", 2),
            ("gatehouse.refused.rate_limited", 1),
            ("gatehouse.refused.missing_credentials", 1),
            ("gatehouse.refused.invalid_signature", 1),
            ("gatehouse.rate_limited", 1),
            ("gatehouse.webhook_refused", 1),
            ("gatehouse.webhook.signature_failures.github", 1),
            ("gatehouse.rate_limit_cas_retries", 2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(c, expect);
        assert!(counters(&mut t).is_empty(), "flushed: deltas start at zero");
        t.allowed(Some(1), false, None);
        assert_eq!(counters(&mut t)["gatehouse.requests.allowed"], 1);
        // Without a feed nothing is kept for the sync.
        assert_eq!(t.take_batch(), None);
    }

    #[test]
    fn a_batch_holds_refusals_key_uses_once_a_minute_and_plan_counts() {
        let mut t = Tally::new(&plans(), true);
        assert_eq!(t.take_batch(), None, "nothing to report");
        let team = team_key();
        t.allowed(Some(1), false, Some(("key_8f3a", T0)));
        t.allowed(Some(1), false, Some(("key_8f3a", T0 + 59)));
        t.allowed(None, true, None);
        t.refused(&facts(rate_limited(), Some(&team)), None);
        let batch: Value = serde_json::from_str(&t.take_batch().unwrap()).unwrap();
        assert_eq!(
            batch,
            json!({
                "refusals": [{"at": T0, "request_id": "req-1", "method": "GET", "route": "/v1/",
                              "code": "RATE_LIMITED", "status": 429, "key_id": "key_8f3a",
                              "user": "user_1", "plan": "team", "client": "203.0.113.7"}],
                "key_uses": [{"key_id": "key_8f3a", "at": T0}],
                "requests": [{"plan": "team", "allowed": 2, "refused": 1},
                             {"plan": "", "allowed": 1, "refused": 0}],
                "dropped": 0
            })
        );
        assert_eq!(t.take_batch(), None, "taken: a new batch starts empty");
        // Within the minute the key's use is not kept again; after it, it is.
        t.allowed(Some(1), false, Some(("key_8f3a", T0 + 30)));
        let b: Value = serde_json::from_str(&t.take_batch().unwrap()).unwrap();
        assert_eq!(b["key_uses"], json!([]));
        t.allowed(Some(1), false, Some(("key_8f3a", T0 + 60)));
        let b: Value = serde_json::from_str(&t.take_batch().unwrap()).unwrap();
        assert_eq!(
            b["key_uses"],
            json!([{"key_id": "key_8f3a", "at": T0 + 60}])
        );
    }

    #[test]
    fn refusals_beyond_the_bound_are_counted_as_dropped_and_key_uses_wait() {
        let mut t = Tally::new(&plans(), true);
        for _ in 0..MAX_REFUSALS + 10 {
            t.refused(&facts(Denial::NoRoute, None), None);
        }
        let ids: Vec<String> = (0..MAX_KEY_USES + 5).map(|i| format!("key_{i}")).collect();
        for id in &ids {
            t.allowed(None, true, Some((id, T0)));
        }
        let c = counters(&mut t);
        assert_eq!(c["gatehouse.events.refusals_dropped"], 10);
        assert_eq!(c["gatehouse.requests.refused"], (MAX_REFUSALS + 10) as u64);
        let b: Value = serde_json::from_str(&t.take_batch().unwrap()).unwrap();
        assert_eq!(b["refusals"].as_array().unwrap().len(), MAX_REFUSALS);
        assert_eq!(b["dropped"], 10);
        assert_eq!(b["key_uses"].as_array().unwrap().len(), MAX_KEY_USES);
        // The keys that found no room are kept on their next request.
        for id in &ids {
            t.allowed(None, true, Some((id, T0 + 1)));
        }
        let b: Value = serde_json::from_str(&t.take_batch().unwrap()).unwrap();
        let later: Vec<&str> = b["key_uses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["key_id"].as_str().unwrap())
            .collect();
        assert_eq!(later, ids[MAX_KEY_USES..]);
        assert_eq!(b["dropped"], 0);
    }

    #[test]
    fn hostile_request_ids_routes_and_clients_are_escaped_or_left_out() {
        let nasty = Identity {
            key_id: "k\"1".into(),
            user: "user_1".into(),
            tenant: "t".into(),
            plan: "team".into(),
        };
        let f = RefusalFacts {
            request_id: br#"a","code":"OK"#,
            method: b"GE T",
            route: Some("/v1/\"x\n"),
            client: Some("1.2.3.4\",\"x\":\"y"),
            ..facts(Denial::Forbidden, Some(&nasty))
        };
        let line: Value = serde_json::from_str(&f.log_line()).unwrap();
        assert_eq!(line["request_id"], r#"a","code":"OK"#);
        assert_eq!(line["code"], "FORBIDDEN");
        assert_eq!(line["method"], "");
        assert_eq!(line["route"], Value::Null);
        assert_eq!(line.get("key_id"), None, "not an id");
        assert_eq!(line.get("client"), None, "not an address");
        assert_eq!(line["user"], "user_1");
        let mut record = String::new();
        f.push_audit_record(&mut record);
        let record: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(record["request_id"], r#"a","code":"OK"#);
        assert_eq!(record["route"], "");
        // Control characters, spaces, non-UTF-8 and over-long ids are not printable ASCII:
        // the contract takes them as "".
        for id in [&b"a\nb"[..], b"a b", b"\xff", &[b'a'; 129]] {
            let f = RefusalFacts {
                request_id: id,
                ..facts(Denial::NoRoute, None)
            };
            let line: Value = serde_json::from_str(&f.log_line()).unwrap();
            assert_eq!(line["request_id"], "");
        }
        let v6 = RefusalFacts {
            client: Some("2001:db8::1"),
            ..facts(Denial::NoRoute, None)
        };
        let line: Value = serde_json::from_str(&v6.log_line()).unwrap();
        assert_eq!(line["client"], "2001:db8::1");
    }

    #[test]
    fn a_would_refuse_counts_under_its_rule_and_goes_to_the_sync_marked_shadow() {
        let rules = ["free".to_string(), "webhook:stripe".to_string()];
        let mut t = Tally::with_rules(&plans(), rules.len(), true);
        let team = team_key();
        let f = RefusalFacts {
            shadow: Some("webhook:stripe"),
            ..facts(rate_limited(), Some(&team))
        };
        t.would_refuse(Some(1), &f);
        t.allowed_shadowed(Some(1), false, None, true);
        t.allowed(Some(1), false, None);
        let names = metric_names_with_rules(&plans(), &rules);
        let mut c = std::collections::BTreeMap::new();
        t.flush_counts(|i, n| {
            c.insert(names[i].clone(), n);
        });
        assert_eq!(c["gatehouse.shadow.would_refuse.webhook_stripe"], 1);
        assert_eq!(c["gatehouse.requests.allowed"], 2);
        assert_eq!(c.get("gatehouse.requests.refused"), None, "never a refusal");
        assert_eq!(c.get("gatehouse.rate_limited"), None);
        let batch: Value = serde_json::from_str(&t.take_batch().unwrap()).unwrap();
        assert_eq!(batch["refusals"][0]["shadow"], true);
        assert_eq!(batch["refusals"][0]["code"], "RATE_LIMITED");
        assert_eq!(
            batch["requests"],
            json!([{"plan": "team", "allowed": 2, "refused": 0, "shadow_refused": 1}])
        );
        let line: Value = serde_json::from_str(&f.log_line()).unwrap();
        assert_eq!(line["would_refuse"], "webhook:stripe");
        assert_eq!(line["shadow"], true);
    }

    #[test]
    fn the_log_line_has_the_documented_fields_in_order() {
        let team = team_key();
        let f = facts(rate_limited(), Some(&team));
        assert_eq!(
            f.log_line(),
            r#"{"time":"2026-01-01T00:00:00.000Z","request_id":"req-1","method":"GET","route":"/v1/","code":"RATE_LIMITED","status":429,"reason":"rate_limited","key_id":"key_8f3a","user":"user_1","client":"203.0.113.7"}"#
        );
        // A token's identity has a user, not a key id.
        let jwt = RefusalFacts {
            credential: Some(Credential::Jwt),
            ..f
        };
        let line: Value = serde_json::from_str(&jwt.log_line()).unwrap();
        assert_eq!(line.get("key_id"), None);
        assert_eq!(line["user"], "user_1");
    }

    #[test]
    fn plans_beyond_the_bound_count_in_the_totals_only() {
        let many: Vec<String> = (0..MAX_PLANS + 2).map(|i| format!("p{i}")).collect();
        let names = metric_names(&many);
        assert_eq!(names.len(), PLANS + 2 * (MAX_PLANS + 1));
        let mut t = Tally::new(&many, true);
        t.allowed(Some(MAX_PLANS + 1), false, None);
        let mut seen = Vec::new();
        t.flush_counts(|i, n| seen.push((names[i].clone(), n)));
        assert_eq!(seen, [("gatehouse.requests.allowed".to_string(), 1)]);
    }
}
