//! The request path, top to bottom: route, authenticate, scope, limit; allowed or a
//! refusal. [`decide`] takes the request head, the worker's caches, the shared store and
//! the clock and returns a [`Decision`]; [`stream`] is what the filter does around it.
//! Neither calls the host (docs/layout.md has the whole path).

use crate::authn::api_key::KeyFailure;
use crate::authn::jwt::KeySet;
use crate::authn::{
    AuthFailure, Credential, Identity, TokenSeen, authenticate, presents_credential,
};
use crate::clock::Clock;
use crate::limit::LimitBy;
use crate::limit::client::{client_address, client_network};
use crate::limit::{self, CallerKind, Check, Quota};
use crate::policy::{OnStale, Policy};
use crate::refusal::Denial;
use crate::request::{Presented, RequestHead, query_carries_credential};
use crate::route::Route;
use crate::route::{self, Audience};
use crate::store::SharedStore;
use crate::worker::Caches;

pub mod stream;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Index of the matched route in the policy.
    pub route: usize,
    /// `None` for an anonymous caller on an external route.
    pub identity: Option<Identity>,
    pub credential: Option<Credential>,
    /// Verified claims the policy forwards: (`x-gatehouse-*` header, value). Values are
    /// header-safe; a claim that is not is left out.
    pub claim_headers: Vec<(String, String)>,
    /// The tightest rate limit's quota, for `RateLimit-*` headers on the response.
    pub quota: Option<Quota>,
    /// Compare-and-swap on a limit gave up and the policy allowed the request anyway.
    pub limiter_contention: bool,
    /// The credential was checked against a stale feed cache (`on_stale: keep_serving`).
    pub feed_stale: bool,
    /// Compare-and-swap writes the limiter lost and retried ([`limit::Outcome`]).
    pub limiter_retries: u32,
    /// Where the caller's plan is in `policy.plans` (`None`: anonymous; a plan the policy
    /// does not list is refused or mapped), so counting per plan compares no names.
    pub plan: Option<usize>,
    /// An allowlist from the feed skipped at least one of its rate limits.
    pub allowlisted: bool,
    /// What rules in `shadow` would have refused it (empty: none, no allocation).
    pub shadow: Vec<Shadowed>,
}

/// A rule in `shadow` mode that would have refused the request, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shadowed {
    pub rule: crate::levers::Rule,
    pub denial: Denial,
}

/// What was known about a request when it was refused, for the refusal log and audit:
/// the matched route, the caller when it had authenticated (refused for scope or rate
/// limit), and the limiter's lost compare-and-swaps. Never the credential itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refused {
    /// Index of the matched route in the policy; `None` before or without a match.
    pub route: Option<usize>,
    pub identity: Option<Identity>,
    pub credential: Option<Credential>,
    pub limiter_retries: u32,
    /// The JWT provider a bearer token went to (by its `iss`), allowed or refused.
    pub jwt_provider: Option<usize>,
    /// The token's `kid` is not in its provider's keys: the provider's JWKS is fetched
    /// again ([`crate::authn::jwks_cache::want_refetch`]).
    pub unknown_kid: bool,
    /// An allowlist from the feed skipped at least one of its rate limits.
    pub allowlisted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
}

/// Decides a request from its headers. `caches` are the worker's for this policy;
/// `jwt_keys` are the keys JWTs verify with, one set per provider of `policy.jwt` in its
/// order (built by the plugin from the policy, the environment and any fetched JWKS).
pub fn decide(
    policy: &Policy,
    caches: &Caches,
    jwt_keys: &[KeySet],
    head: &RequestHead<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> Decision {
    decide_explained(policy, caches, jwt_keys, head, store, clock).0
}

/// [`decide`], and for a refusal what was known about the request ([`Refused`]; left
/// empty for an allowed request, whose [`Allowed`] says it all).
pub fn decide_explained(
    policy: &Policy,
    caches: &Caches,
    jwt_keys: &[KeySet],
    head: &RequestHead<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> (Decision, Refused) {
    let mut refused = Refused::default();
    let decision = decide_into(policy, caches, jwt_keys, head, store, clock, &mut refused);
    if matches!(decision, Decision::Allow(_)) {
        refused.route = None;
    }
    (decision, refused)
}

fn decide_into(
    policy: &Policy,
    caches: &Caches,
    jwt_keys: &[KeySet],
    head: &RequestHead<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
    refused: &mut Refused,
) -> Decision {
    let clock = &crate::clock::OnceClock::new(clock);
    let route_index = match route::resolve(&policy.routes, head.method, head.path) {
        Ok(Some(index)) => index,
        Ok(None) => return Decision::Deny(Denial::NoRoute),
        Err(unclear) => return Decision::Deny(Denial::Unclear(unclear)),
    };
    if !method_overrides_agree(policy, head, route_index) {
        return Decision::Deny(Denial::Unclear(route::Unclear::Method));
    }
    refused.route = Some(route_index);
    if query_carries_credential(&policy.api_key_header, policy.jwt.is_some(), head.path) {
        return Decision::Deny(Denial::Unauthorized(AuthFailure::InQuery));
    }
    let route = policy.routes.get(route_index);
    let audience = route.map_or(Audience::Internal, |r| r.audience);
    let group = route.and_then(|r| r.group.as_deref());

    // The feed's cache is what a credential is checked against (keys, revocations), so a
    // stale cache matters only to requests that present one: anonymous callers on
    // external routes are served, and internal routes without a credential get their 401.
    // One read of the feed's state serves the staleness check, the cache's generation
    // (fed records of an older one are absent) and the first-snapshot check below.
    let presents = policy.feed.is_some() && presents_credential(policy, head);
    let feed_state = if presents {
        crate::sync::feed::read_state(store)
    } else {
        None
    };
    let mut feed_stale = false;
    if let Some(feed) = &policy.feed
        && presents
        && crate::sync::feed::stale_given(
            store,
            feed_state.as_ref(),
            clock.now().secs(),
            feed.staleness_secs,
        )
    {
        if feed.on_stale == OnStale::FailClosed {
            return Decision::Deny(Denial::AuthUnavailable);
        }
        feed_stale = true;
    }

    let mut token = TokenSeen::default();
    let generation = feed_state.as_ref().map_or(0, |s| s.generation);
    let authenticated = authenticate(
        policy, caches, jwt_keys, head, store, clock, generation, &mut token,
    );
    refused.jwt_provider = token.provider;
    refused.unknown_kid = token.unknown_kid;
    let caller = match authenticated {
        Ok(caller) => caller,
        // Before the sync's first complete snapshot the cache holds only the policy's own
        // keys and some pages: a miss says nothing about the key, so the caller gets a
        // retryable 503, not a 401.
        Err(AuthFailure::Key(KeyFailure::Unknown))
            if presents && !feed_state.as_ref().is_some_and(|s| s.has_snapshot()) =>
        {
            return Decision::Deny(Denial::AuthUnavailable);
        }
        Err(failure) => return Decision::Deny(Denial::Unauthorized(failure)),
    };
    // The caller's plan, by its place in the policy: a plan the policy does not list has
    // no limit, so it is refused unless the policy maps unknown plans to one it has.
    let mut plan = None;
    let caller = match caller {
        Some(mut a) => {
            plan = policy.plans.iter().position(|p| p.name == a.identity.plan);
            if plan.is_none() {
                match policy
                    .unknown_plan
                    .and_then(|i| Some((i, policy.plans.get(i)?)))
                {
                    Some((i, mapped)) => {
                        a.identity.plan.clone_from(&mapped.name);
                        plan = Some(i);
                    }
                    None => {
                        refused.identity = Some(a.identity);
                        refused.credential = Some(a.credential);
                        return Decision::Deny(Denial::UnknownPlan);
                    }
                }
            }
            Some(a)
        }
        None => None,
    };
    let mut allowed = match caller {
        None if audience == Audience::Internal => {
            return Decision::Deny(Denial::Unauthorized(AuthFailure::Missing));
        }
        None => Allowed {
            route: route_index,
            identity: None,
            credential: None,
            claim_headers: Vec::new(),
            quota: None,
            limiter_contention: false,
            feed_stale: false,
            limiter_retries: 0,
            plan: None,
            allowlisted: false,
            shadow: Vec::new(),
        },
        // A scoped key calls only its route groups, external routes included: a key
        // limited to `billing` is not a general-purpose credential anywhere.
        Some(a) if a.key.as_ref().is_some_and(|k| !k.allows(group)) => {
            refused.identity = Some(a.identity);
            refused.credential = Some(a.credential);
            return Decision::Deny(Denial::Forbidden);
        }
        Some(a) => Allowed {
            route: route_index,
            identity: Some(a.identity),
            credential: Some(a.credential),
            claim_headers: a.claim_headers,
            quota: None,
            limiter_contention: false,
            feed_stale: false,
            limiter_retries: 0,
            plan: None,
            allowlisted: false,
            shadow: Vec::new(),
        },
    };
    allowed.feed_stale = feed_stale;
    let Some(route) = route else {
        return Decision::Allow(allowed);
    };
    allowed.plan = plan;
    let provider = refused
        .jwt_provider
        .and_then(|i| policy.jwt.as_ref()?.providers.get(i))
        .map(|p| p.name.as_str());
    let outcome = limit(
        policy,
        caches,
        (route_index, route),
        head,
        allowed.identity.as_ref(),
        provider,
        allowed.plan,
        store,
        clock,
    );
    let LimitOutcome {
        outcome,
        allowlisted,
        shadow,
    } = outcome;
    match outcome.result {
        Ok(quota) => {
            allowed.quota = quota;
            allowed.limiter_contention = outcome.contention;
            allowed.limiter_retries = outcome.retries;
            allowed.allowlisted = allowlisted;
            allowed.shadow = shadow;
            Decision::Allow(allowed)
        }
        Err(refusal) => {
            refused.identity = allowed.identity;
            refused.credential = allowed.credential;
            refused.limiter_retries = outcome.retries;
            refused.allowlisted = allowlisted;
            Decision::Deny(Denial::RateLimited(refusal))
        }
    }
}

/// Whether every method override the request carries would take the same route as its
/// method: the header (`X-HTTP-Method-Override` and its two cousins, read by Express's
/// method-override, Rails, Laravel, ASP.NET Web API) and a `_method` query parameter
/// (Laravel, Symfony, Express), each upper-cased as those frameworks do. A GET that the
/// upstream runs as a DELETE must not pass on the strength of a public read route. Costs
/// nothing without either.
fn method_overrides_agree(policy: &Policy, head: &RequestHead<'_>, route: usize) -> bool {
    let header = match head.method_override {
        Presented::None => None,
        Presented::One(value) => Some(value),
        Presented::Several => return false,
    };
    let query =
        crate::request::query::query_value(head.path, b"_method", route::MAX_METHOD_LEN * 3);
    if header.is_none() && query.is_none() {
        return true;
    }
    let same_route = |value: &[u8]| {
        let mut upper = [0u8; route::MAX_METHOD_LEN];
        let Some(method) = upper.get_mut(..value.len()) else {
            return false;
        };
        method.copy_from_slice(value);
        method.make_ascii_uppercase();
        route::resolve(&policy.routes, method, head.path) == Ok(Some(route))
    };
    header.is_none_or(same_route) && query.as_deref().is_none_or(same_route)
}

/// What [`limit`] decided: the limiter's outcome over the enforced limits, whether an
/// allowlist skipped any, and the shadowed limits that would have refused.
struct LimitOutcome {
    outcome: limit::Outcome,
    allowlisted: bool,
    shadow: Vec<Shadowed>,
}

/// One limit to apply: its state's id, the caller it counts, its rate, whether it
/// counts fleet-wide, the rule it is and whether it is only shadowed.
struct Applied {
    id: String,
    caller: (String, CallerKind),
    rate: limit::Rate,
    fleet: bool,
    rule: crate::levers::Rule,
    shadow: bool,
}

/// Applies the plan's limit (or the anonymous one) and the route's limits. Anonymous
/// callers and limits `by: ip` count the client's network ([`client_network`]) in the
/// address table; a token has no key of its own, so `by: key` counts a JWT caller per
/// user (its `kid` names the issuer's signing key, shared by every user). A token's user
/// and tenant count under its provider's name (`jwt_provider`): `sub` and tenant values
/// are an issuer's own, so another issuer's (or an API key's) same value is another
/// caller.
///
/// The operators' levers ([`crate::levers`]) apply here: a limit whose mode is `off` is
/// skipped, one an allowlist names for this caller too; a plan limit under a key's or
/// tenant's override counts at the override's rate on a state of its own (its id carries
/// the rate), so a raised limit serves a caller refused under the old one from its next
/// request, and a lowered one starts with the lowered burst. Limits in `shadow` are
/// checked one by one after the enforced ones passed, on their own states as if they
/// applied, and never refuse.
#[allow(clippy::too_many_arguments)]
fn limit(
    policy: &Policy,
    caches: &Caches,
    (route_index, route): (usize, &Route),
    head: &RequestHead<'_>,
    identity: Option<&Identity>,
    jwt_provider: Option<&str>,
    plan: Option<usize>,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> LimitOutcome {
    use crate::levers::{Mode, Rule, Who};
    let rl = &policy.rate_limit;
    // Only anonymous callers and limits `by: ip` need the address.
    let mut ip: Option<String> = None;
    let mut who = |by: LimitBy| -> (String, CallerKind) {
        match (by, identity, jwt_provider) {
            (LimitBy::Key, Some(i), None) => (["k:", &i.key_id].concat(), CallerKind::Identified),
            (LimitBy::User, Some(i), None) => (["u:", &i.user].concat(), CallerKind::Identified),
            (LimitBy::Tenant, Some(i), None) => {
                (["t:", &i.tenant].concat(), CallerKind::Identified)
            }
            // Provider names are a-z 0-9 _ -: the `:` after one is unambiguous.
            (LimitBy::Key | LimitBy::User, Some(i), Some(p)) => {
                (["ju:", p, ":", &i.user].concat(), CallerKind::Identified)
            }
            (LimitBy::Tenant, Some(i), Some(p)) => {
                (["jt:", p, ":", &i.tenant].concat(), CallerKind::Identified)
            }
            // Anonymous callers are counted by address whatever the limit says.
            (_, id, _) => {
                let ip = ip.get_or_insert_with(|| {
                    let address =
                        client_address(head.source_address, head.forwarded_for, rl.trusted_proxies);
                    client_network(address, rl.ipv4_prefix, rl.ipv6_prefix)
                });
                let kind = match id {
                    Some(_) => CallerKind::AddressOfIdentified,
                    None => CallerKind::Address,
                };
                (["ip:", ip.as_str()].concat(), kind)
            }
        }
    };
    let levers = caches.levers.current();
    let levers = levers.as_deref();
    // The allowlists: the feed's and the policy's own.
    let fed = levers.filter(|l| l.has_allowlist());
    let own = Some(&rl.allowlist).filter(|l| l.has_allowlist());
    // The caller as allowlists see it; the client's address only when a CIDR may match.
    let allow = (fed.is_some() || own.is_some()).then(|| Who {
        key_id: identity.map(|i| i.key_id.as_str()),
        user: identity.map(|i| i.user.as_str()),
        tenant: identity.map(|i| i.tenant.as_str()),
        ip: (fed.is_some_and(|l| l.has_cidrs()) || own.is_some_and(|l| l.has_cidrs()))
            .then(|| {
                client_address(head.source_address, head.forwarded_for, rl.trusted_proxies)
                    .parse::<std::net::IpAddr>()
                    .ok()
            })
            .flatten(),
    });
    let mut allowlisted = false;
    // A limit's mode (a lever over the policy's) and whether an allowlist skips it:
    // `None` when it does not apply at all.
    let mut applies = |name: &str, mode: Mode| -> Option<bool> {
        let mode = levers.and_then(|l| l.mode(name)).unwrap_or(mode);
        if mode == Mode::Off {
            return None;
        }
        if allow.as_ref().is_some_and(|w| {
            fed.is_some_and(|l| l.allowlisted(w, name))
                || own.is_some_and(|l| l.allowlisted(w, name))
        }) {
            allowlisted = true;
            return None;
        }
        Some(mode == Mode::Shadow)
    };
    let mut limits: Vec<Applied> = Vec::with_capacity(1 + route.limits.len());
    let fleet_wide = rl.scope == limit::Scope::Fleet;
    match identity {
        Some(i) => {
            if let Some((p, plan)) = plan.and_then(|p| Some((p, policy.plans.get(p)?)))
                && let Some(shadow) = applies(&plan.name, Mode::Enforce)
            {
                let over = levers.and_then(|l| {
                    l.override_for(Some(&i.key_id), Some(&i.tenant), clock.now().secs())
                });
                let (id, rate) = match over {
                    None => (["plan:", &plan.name].concat(), plan.rate()),
                    Some(o) => {
                        let mut id = ["plan:", &plan.name, "@"].concat();
                        crate::text::push_decimal(&mut id, u64::from(o.requests_per_minute));
                        let rate = limit::Rate {
                            requests: o.requests_per_minute,
                            period_nanos: 60_000_000_000,
                            burst: o.requests_per_minute,
                        };
                        (id, rate)
                    }
                };
                limits.push(Applied {
                    id,
                    caller: who(rl.plan_key),
                    rate,
                    fleet: fleet_wide,
                    rule: Rule::Plan(p),
                    shadow,
                });
            }
        }
        None => {
            if let Some(shadow) = applies("anonymous", Mode::Enforce) {
                limits.push(Applied {
                    id: "anonymous".to_string(),
                    caller: who(LimitBy::Ip),
                    rate: rl.anonymous,
                    fleet: fleet_wide,
                    rule: Rule::Anonymous,
                    shadow,
                });
            }
        }
    }
    for (n, l) in route.limits.iter().enumerate() {
        let Some(shadow) = applies(&l.name, l.mode) else {
            continue;
        };
        let mut id = ["route:", &route.name, ":"].concat();
        crate::text::push_decimal(&mut id, n as u64);
        let fleet = l.scope.unwrap_or(rl.scope) == limit::Scope::Fleet;
        limits.push(Applied {
            id,
            caller: who(l.by),
            rate: l.rate,
            fleet,
            rule: Rule::RouteLimit(route_index, n),
            shadow,
        });
    }
    let now = clock.now().0;
    // Fleet-scoped limits: while the fleet's states arrive, the whole limit on states that
    // hold the fleet's consumption; when they stop, this Envoy's share of it.
    let fleet_share = if limits.iter().any(|l| l.fleet) {
        match caches.fleet_view.get(store) {
            Some(view) if view.fresh(now, rl.sync_interval_ms) => None,
            Some(view) => Some(view.proxies),
            None => Some(1),
        }
    } else {
        None
    };
    fn check(l: &Applied, fleet_share: Option<u32>) -> Check<'_> {
        Check {
            limit: &l.id,
            caller: &l.caller.0,
            rate: match fleet_share {
                Some(proxies) if l.fleet => limit::fleet::share(l.rate, proxies),
                _ => l.rate,
            },
            kind: l.caller.1,
        }
    }
    let checks: Vec<Check<'_>> = limits
        .iter()
        .filter(|l| !l.shadow)
        .map(|l| check(l, fleet_share))
        .collect();
    let mut outcome = limit::check_all_with(store, &rl.table(), &checks, now, &caches.places);
    let mut shadow = Vec::new();
    if outcome.result.is_ok() {
        // Reported at the whole rate, which the fleet's state counts in, even when this
        // Envoy decided on its share.
        let record = |check: &Check<'_>, l: &Applied| {
            if l.fleet {
                caches.fleet.record(&Check {
                    rate: l.rate,
                    ..check.clone()
                });
            }
        };
        for (check, l) in checks.iter().zip(limits.iter().filter(|l| !l.shadow)) {
            record(check, l);
        }
        for l in limits.iter().filter(|l| l.shadow) {
            let one = check(l, fleet_share);
            let seen = limit::check_all_with(
                store,
                &rl.table(),
                std::slice::from_ref(&one),
                now,
                &caches.places,
            );
            outcome.retries = outcome.retries.saturating_add(seen.retries);
            match seen.result {
                Ok(_) => record(&one, l),
                Err(refusal) => shadow.push(Shadowed {
                    rule: l.rule,
                    denial: Denial::RateLimited(refusal),
                }),
            }
        }
    }
    LimitOutcome {
        outcome,
        allowlisted,
        shadow,
    }
}

#[cfg(test)]
#[cfg(all(feature = "yaml", feature = "test-tokens"))]
mod tests {
    use super::*;

    /// The decision with the worker's caches as a policy starts with: empty.
    fn decide(
        policy: &Policy,
        jwt_keys: &[KeySet],
        head: &RequestHead<'_>,
        store: &impl SharedStore,
        clock: &impl Clock,
    ) -> Decision {
        super::decide(policy, &Caches::default(), jwt_keys, head, store, clock)
    }

    fn decide_explained(
        policy: &Policy,
        jwt_keys: &[KeySet],
        head: &RequestHead<'_>,
        store: &impl SharedStore,
        clock: &impl Clock,
    ) -> (Decision, Refused) {
        super::decide_explained(policy, &Caches::default(), jwt_keys, head, store, clock)
    }
    use crate::authn::api_key::KeyFailure;
    use crate::authn::api_key::KeyRecord;
    use crate::authn::*;
    use crate::clock::FixedClock;
    use crate::policy::load_yaml;
    use crate::request::*;
    use crate::store::MemoryStore;

    const DEMO: &[u8] = b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
    const REVOKED: &[u8] = b"ghk_revoked_7d1e3a5c9b0f2e4d6c8a1B2tc9GC";
    const EXPIRED: &[u8] = b"ghk_expired_2b4d6f8a0c1e3a5c7e9b1D0ZaY1i";
    use crate::authn::JwtFailure;
    use crate::authn::jwt::test_tokens::{hmac_secret, mint, public_key};
    use crate::authn::jwt::{Alg, Key};
    use crate::authn::revocation::Revoked;

    /// The keys the example policy's JWTs verify with in these tests: its HMAC key (the
    /// test secret in place of GATEHOUSE_JWT_SECRET) and an ES256 key.
    pub(super) fn jwt_test_keys() -> KeySet {
        KeySet::new(vec![
            Key::hmac(
                Alg::HS256,
                &hmac_secret(Alg::HS256),
                Some("demo-hs256".into()),
            )
            .unwrap(),
            public_key(Alg::ES256, Some("es-1")),
        ])
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    fn run_jwt(path: &str, authorization: &[u8], api_key: Presented<'_>) -> Decision {
        let (policy, store, clock) = setup();
        crate::authn::revocation::install(
            &policy.revocations.users,
            &policy.revocations.jtis,
            &store,
        )
        .unwrap();
        let head = RequestHead {
            method: b"GET",
            path: path.as_bytes(),
            api_key,
            authorization: Presented::One(authorization),
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        decide(&policy, &[jwt_test_keys()], &head, &store, &clock)
    }

    /// The shell reads the client address (a host call) only for requests that do not
    /// present a credential: those are the only ones that can end up anonymous.
    #[test]
    fn only_requests_without_a_credential_can_be_anonymous() {
        let (policy, _, _) = setup();
        let with = |key, auth| presents_credential_in(&policy, key, auth);
        assert!(with(Presented::One(b"ghk_x"), Presented::None));
        assert!(with(Presented::Several, Presented::None));
        assert!(with(Presented::None, Presented::One(b"Bearer abc.def.ghi")));
        assert!(with(Presented::None, Presented::Several));
        // Another scheme is not gatehouse's credential: the caller may be anonymous.
        assert!(!with(
            Presented::None,
            Presented::One(b"Basic dXNlcjpwdw==")
        ));
        assert!(!with(Presented::None, Presented::None));
        let mut no_jwt = policy.clone();
        no_jwt.jwt = None;
        assert!(!presents_credential_in(
            &no_jwt,
            Presented::None,
            Presented::One(b"Bearer abc.def.ghi")
        ));
    }

    fn claims(extra: &str) -> String {
        format!(
            r#"{{"sub":"user_jwt","iat":{},"exp":{}{extra}}}"#,
            NOW - 60,
            NOW + 3600
        )
    }

    fn jwt_denied(f: JwtFailure) -> Decision {
        Decision::Deny(Denial::Unauthorized(AuthFailure::Jwt(f)))
    }

    #[test]
    fn a_valid_jwt_gives_its_identity_and_forwarded_claims() {
        let token = mint(
            Alg::HS256,
            Some("demo-hs256"),
            &claims(r#","plan":"team","email":"a@example.com""#),
        );
        let Decision::Allow(a) = run_jwt("/v1/things", &bearer(&token), Presented::None) else {
            panic!("refused")
        };
        assert_eq!(
            a.identity,
            Some(Identity {
                key_id: "jwt:demo-hs256".into(),
                user: "user_jwt".into(),
                tenant: "tenant_demo".into(),
                plan: "team".into()
            })
        );
        assert_eq!(a.credential, Some(Credential::Jwt));
        assert_eq!(
            a.claim_headers,
            vec![
                ("x-gatehouse-issuer".to_string(), "jwt".to_string()),
                ("x-gatehouse-email".to_string(), "a@example.com".to_string())
            ]
        );
        // The policy's default plan applies when the claim is absent; ES256 via its kid.
        let token = mint(Alg::ES256, Some("es-1"), &claims(""));
        let Decision::Allow(a) = run_jwt("/v1/things", &bearer(&token), Presented::None) else {
            panic!("refused")
        };
        assert_eq!(a.identity.unwrap().plan, "free");
    }

    #[test]
    fn each_jwt_refusal_has_its_reason() {
        let hs = |payload: &str| mint(Alg::HS256, Some("demo-hs256"), payload);
        let expired = hs(&format!(
            r#"{{"sub":"u","iat":{},"exp":{}}}"#,
            NOW - 7200,
            NOW - 3600
        ));
        assert_eq!(
            run_jwt("/v1/x", &bearer(&expired), Presented::None),
            jwt_denied(JwtFailure::Expired)
        );

        let good = hs(&claims(""));
        let mut tampered = good.clone().into_bytes();
        let dot = tampered.iter().position(|b| *b == b'.').unwrap();
        tampered[dot + 2] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(matches!(
            run_jwt("/v1/x", &bearer(&tampered), Presented::None),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Jwt(
                JwtFailure::Invalid(_) | JwtFailure::Malformed(_)
            )))
        ));

        let unknown_kid = mint(Alg::HS256, Some("nope"), &claims(""));
        assert_eq!(
            run_jwt("/v1/x", &bearer(&unknown_kid), Presented::None),
            jwt_denied(JwtFailure::Invalid("jwt_unknown_kid"))
        );
        assert_eq!(
            run_jwt("/v1/x", b"Bearer not.a.jwt", Presented::None),
            jwt_denied(JwtFailure::Malformed("jwt_malformed"))
        );
        let unknown_plan = hs(&claims(r#","plan":"gold""#));
        assert_eq!(
            run_jwt("/v1/x", &bearer(&unknown_plan), Presented::None),
            Decision::Deny(Denial::UnknownPlan)
        );
        let bad_plan = hs(&claims(r#","plan":["team"]"#));
        assert_eq!(
            run_jwt("/v1/x", &bearer(&bad_plan), Presented::None),
            jwt_denied(JwtFailure::Invalid("jwt_bad_plan_claim"))
        );
        let bad_user = hs(&format!(
            r#"{{"sub":"a b","iat":{NOW},"exp":{}}}"#,
            NOW + 60
        ));
        assert_eq!(
            run_jwt("/v1/x", &bearer(&bad_user), Presented::None),
            jwt_denied(JwtFailure::Invalid("jwt_bad_user_claim"))
        );
    }

    #[test]
    fn revoked_users_and_jtis_are_refused_on_every_jwt() {
        let locked = |iat: u64| {
            mint(
                Alg::HS256,
                Some("demo-hs256"),
                &format!(
                    r#"{{"sub":"user_locked","iat":{iat},"exp":{}}}"#,
                    NOW + 3600
                ),
            )
        };
        // The example policy locks user_locked out for good (every token before 2099).
        assert_eq!(
            run_jwt("/v1/x", &bearer(&locked(NOW - 10)), Presented::None),
            jwt_denied(JwtFailure::Revoked(Revoked::User))
        );
        // A watermark at NOW: tokens issued before it are refused, from it on allowed.
        let (policy, store, clock) = setup();
        let watermark = crate::authn::revocation::UserRevocation {
            user: "user_locked".into(),
            origin: crate::authn::api_key::Origin::Feed,
            before: NOW,
            until: None,
        };
        crate::authn::revocation::install(&[watermark], &[], &store).unwrap();
        let ask = |token: &str| {
            let auth = bearer(token);
            let head = RequestHead {
                method: b"GET",
                path: b"/v1/x",
                api_key: Presented::None,
                authorization: Presented::One(&auth),
                source_address: b"10.0.0.1:5555",
                forwarded_for: None,
                method_override: Presented::None,
            };
            decide(&policy, &[jwt_test_keys()], &head, &store, &clock)
        };
        assert_eq!(
            ask(&locked(NOW - 10)),
            jwt_denied(JwtFailure::Revoked(Revoked::User))
        );
        assert!(matches!(ask(&locked(NOW)), Decision::Allow(_)));
        let denied_jti = mint(
            Alg::HS256,
            Some("demo-hs256"),
            &claims(r#","jti":"demo-revoked-jti""#),
        );
        assert_eq!(
            run_jwt("/v1/x", &bearer(&denied_jti), Presented::None),
            jwt_denied(JwtFailure::Revoked(Revoked::Jti))
        );
    }

    #[test]
    fn a_token_served_from_the_cache_is_still_refused_once_revoked() {
        let (policy, store, clock) = setup();
        let keys = jwt_test_keys();
        let token = mint(
            Alg::HS256,
            Some("demo-hs256"),
            &format!(
                r#"{{"sub":"user_later","jti":"later-jti","iat":{},"exp":{}}}"#,
                NOW - 10,
                NOW + 3600
            ),
        );
        let auth = bearer(&token);
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::None,
            authorization: Presented::One(&auth),
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        let go = || decide(&policy, std::slice::from_ref(&keys), &head, &store, &clock);
        assert!(matches!(go(), Decision::Allow(_)));
        assert!(matches!(go(), Decision::Allow(_)), "now from the cache");
        let origin = crate::authn::api_key::Origin::Feed;
        let jti = crate::authn::revocation::JtiRevocation {
            jti: "later-jti".into(),
            origin,
            until: None,
        };
        crate::authn::revocation::install(&[], &[jti], &store).unwrap();
        assert_eq!(go(), jwt_denied(JwtFailure::Revoked(Revoked::Jti)));
        let user = crate::authn::revocation::UserRevocation {
            user: "user_later".into(),
            origin,
            before: NOW,
            until: None,
        };
        let other = MemoryStore::default();
        crate::limit::prepare(&other, &policy.rate_limit.table(), &[7; 32]).unwrap();
        crate::authn::revocation::install(&[user], &[], &other).unwrap();
        assert_eq!(
            decide(&policy, std::slice::from_ref(&keys), &head, &other, &clock),
            jwt_denied(JwtFailure::Revoked(Revoked::User))
        );
    }

    #[test]
    fn a_key_and_a_token_together_are_refused_and_other_schemes_are_not_ours() {
        let token = mint(Alg::HS256, Some("demo-hs256"), &claims(""));
        assert_eq!(
            run_jwt("/v1/x", &bearer(&token), Presented::One(DEMO)),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Duplicate))
        );
        // Basic auth is the upstream's business: no credential of ours.
        assert_eq!(
            run_jwt("/v1/x", b"Basic dXNlcjpwYXNz", Presented::None),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Missing))
        );
        assert!(matches!(
            run_jwt("/v1/x", b"Basic dXNlcjpwYXNz", Presented::One(DEMO)),
            Decision::Allow(_)
        ));
        // The scheme is case-insensitive.
        assert!(matches!(
            run_jwt(
                "/v1/x",
                format!("bEaReR {token}").as_bytes(),
                Presented::None
            ),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn other_spellings_of_gatehouse_header_names_are_recognised_in_any_case() {
        let c = |n: &str| classify_spelling("x-api-key", n.as_bytes());
        for n in [
            "x_gatehouse_user",
            "x-gatehouse_user",
            "x_gatehouse-plan",
            "X-Gatehouse-Tenant",
            "X_GATEHOUSE_KEY_ID",
            "x_gatehouse_anything",
        ] {
            assert_eq!(c(n), Some(Spelling::Identity), "{n}");
        }
        for n in ["x_api_key", "X-API-KEY", "x-api_key", "X_Api_Key"] {
            assert_eq!(c(n), Some(Spelling::ApiKey), "{n}");
        }
        for n in [
            "x-gatehouse-user",
            "x-api-key",
            "x_api_keys",
            "x_gatehouse",
            "x_forwarded_for",
            "user_agent",
            "content-type",
        ] {
            assert_eq!(c(n), None, "{n}");
        }
    }

    #[test]
    fn a_port_in_a_trusted_proxys_forwarded_entry_is_not_part_of_the_client() {
        let addr = |xff: &str| client_address(b"10.9.9.9:1", Some(xff.as_bytes()), 1);
        assert_eq!(addr("203.0.113.7:1234"), "203.0.113.7");
        assert_eq!(addr("[2001:db8::7]:443"), "2001:db8::7");
        assert_eq!(addr("2001:db8::7"), "2001:db8::7");
        assert_eq!(addr("198.51.100.1, 203.0.113.7:9"), "203.0.113.7");
        assert_eq!(
            client_address(b"[2001:db8::1]:5555", None, 0),
            "2001:db8::1"
        );
    }

    #[test]
    fn clients_count_as_their_network() {
        let net = |a: &str| client_network(a.to_string(), 32, 64);
        assert_eq!(net("203.0.113.7"), "203.0.113.7");
        assert_eq!(net("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(net("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
        assert_ne!(net("2001:db8:1:3::1"), net("2001:db8:1:2::1"));
        assert_eq!(net("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(net("not an address"), "not an address");
        let with = |a: &str, v4, v6| client_network(a.to_string(), v4, v6);
        assert_eq!(with("203.0.113.7", 24, 64), "203.0.113.0/24");
        assert_eq!(with("2001:db8::1", 32, 48), "2001:db8::/48");
        assert_eq!(with("2001:db8::1", 32, 128), "2001:db8::1/128");
    }

    /// Every address of one IPv6 /64 shares one anonymous budget and one login budget.
    #[test]
    fn an_ipv6_client_cannot_reset_its_limit_by_changing_address_within_its_network() {
        let (mut policy, store, clock) = setup();
        policy.rate_limit.anonymous = limit::Rate {
            requests: 3,
            period_nanos: 60_000_000_000,
            burst: 3,
        };
        let at = |source: &str| {
            let head = RequestHead {
                method: b"GET",
                path: b"/docs/page",
                api_key: Presented::None,
                authorization: Presented::None,
                source_address: source.as_bytes(),
                forwarded_for: None,
                method_override: Presented::None,
            };
            decide(&policy, &[], &head, &store, &clock)
        };
        for host in 1..=3 {
            assert!(matches!(
                at(&format!("[2001:db8:7:7::{host}]:443")),
                Decision::Allow(_)
            ));
        }
        assert!(matches!(
            at("[2001:db8:7:7:dead:beef:0:1]:443"),
            Decision::Deny(Denial::RateLimited(_))
        ));
        // Another network has its own budget.
        assert!(matches!(at("[2001:db8:7:8::1]:443"), Decision::Allow(_)));
    }

    /// A token's `kid` names its issuer's signing key, shared by every user: `key: key`
    /// counts JWT callers per user.
    #[test]
    fn a_limit_by_key_counts_jwt_callers_per_user() {
        let (mut policy, store, clock) = setup();
        policy.rate_limit.plan_key = LimitBy::Key;
        crate::authn::revocation::install(
            &policy.revocations.users,
            &policy.revocations.jtis,
            &store,
        )
        .unwrap();
        let keys = jwt_test_keys();
        let go = |sub: &str| {
            let token = mint(
                Alg::HS256,
                Some("demo-hs256"),
                &format!(
                    r#"{{"sub":"{sub}","iat":{},"exp":{}}}"#,
                    NOW - 60,
                    NOW + 3600
                ),
            );
            let auth = bearer(&token);
            let head = RequestHead {
                method: b"GET",
                path: b"/v1/x",
                api_key: Presented::None,
                authorization: Presented::One(&auth),
                source_address: b"10.0.0.1:5555",
                forwarded_for: None,
                method_override: Presented::None,
            };
            decide(&policy, std::slice::from_ref(&keys), &head, &store, &clock)
        };
        // The default plan (free) allows 60 a minute: one user spends it, another still
        // has all of it.
        for _ in 0..60 {
            assert!(matches!(go("user_a"), Decision::Allow(_)));
        }
        assert!(matches!(
            go("user_a"),
            Decision::Deny(Denial::RateLimited(_))
        ));
        assert!(matches!(go("user_b"), Decision::Allow(_)));
    }

    #[test]
    fn a_lower_case_method_or_an_ambiguous_path_is_400_and_get_covers_head() {
        let bad = |m: &str, p: &str| run(m, p, Presented::One(DEMO));
        for (method, path, why) in [
            ("delete", "/v1/things", route::Unclear::Method),
            ("get", "/healthz", route::Unclear::Method),
            ("GET", "/v1;x=1/things", route::Unclear::PathParameter),
            ("GET", "/v1./things", route::Unclear::TrailingDot),
            ("GET", "/V1/things", route::Unclear::Case),
            ("GET", "/v1/billing/..;/admin/keys", route::Unclear::Path),
        ] {
            assert_eq!(
                bad(method, path),
                Decision::Deny(Denial::Unclear(why)),
                "{method} {path}"
            );
            let d = Denial::Unclear(why);
            assert_eq!((d.status(), d.code(false).as_str()), (400, "BAD_REQUEST"));
        }
        assert!(matches!(
            run("HEAD", "/healthz", Presented::None),
            Decision::Allow(_)
        ));
        assert!(matches!(
            run("GET", "/healthz/", Presented::None),
            Decision::Allow(_)
        ));
    }

    /// `X-HTTP-Method-Override: DELETE` or `?_method=delete` on a GET is a DELETE to the
    /// frameworks that read them: refused unless it takes the same route as the method.
    #[test]
    fn a_method_override_that_would_take_another_route_is_400() {
        let (policy, store, clock) = setup();
        let go = |method: &str, path: &str, over: Presented<'_>| {
            let head = RequestHead {
                method: method.as_bytes(),
                path: path.as_bytes(),
                api_key: Presented::None,
                authorization: Presented::None,
                source_address: b"10.0.0.1:5555",
                forwarded_for: None,
                method_override: over,
            };
            decide(&policy, &[], &head, &store, &clock)
        };
        let unclear = Decision::Deny(Denial::Unclear(route::Unclear::Method));
        // `/healthz` is GET/HEAD only and external; a DELETE there is another route (none).
        for (path, over) in [
            ("/healthz", Presented::One(b"DELETE")),
            ("/healthz", Presented::One(b"delete")),
            ("/healthz", Presented::One(b"POST")),
            ("/healthz", Presented::One(b"not a method")),
            ("/healthz", Presented::Several),
            ("/healthz?_method=DELETE", Presented::None),
            ("/healthz?x=1&_method=delete", Presented::None),
            ("/healthz?_METHOD=put", Presented::None),
            ("/healthz?%5Fmethod=PUT", Presented::None),
        ] {
            assert_eq!(go("GET", path, over), unclear, "{path} {over:?}");
        }
        // The same route either way: nothing to tell apart.
        for (path, over) in [
            ("/healthz", Presented::One(b"HEAD")),
            ("/healthz", Presented::One(b"get")),
            ("/healthz?_method=GET", Presented::None),
            ("/healthz?method=DELETE", Presented::None),
            ("/docs/page", Presented::One(b"DELETE")),
        ] {
            assert!(
                matches!(go("GET", path, over), Decision::Allow(_)),
                "{path} {over:?}"
            );
        }
    }

    /// Well-formed (valid checksum) but in no policy.
    const UNKNOWN: &[u8] = b"ghk_nobody_00000000000000000000004NBVVD";
    const BILLING: &[u8] = b"ghk_billing_9c8b7a6d5e4f3a2b1c0dEf32tzAe";
    // 2026-01-01T00:00:00Z
    const NOW: u64 = 1_767_225_600;

    /// The example policy with small limiter tables, its keys installed, at `NOW`.
    pub(super) fn setup() -> (Policy, MemoryStore, FixedClock) {
        let policy = load_yaml(
            "example.yaml",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/example.yaml"
            )),
        )
        .unwrap()
        .policy;
        let mut policy = policy;
        policy.rate_limit.slots = 1024;
        policy.rate_limit.address_slots = 1024;
        let store = MemoryStore::default();
        key_cache::install_policy_keys(&policy, &store).unwrap();
        crate::limit::prepare(&store, &policy.rate_limit.table(), &[7; 32]).unwrap();
        (policy, store, FixedClock::at_secs(NOW))
    }

    /// Two providers, each with its own HMAC key: a token goes to the provider its `iss`
    /// names and only that provider's key verifies it; equal `sub` values of the two
    /// issuers are two callers for the limits.
    #[test]
    fn each_provider_verifies_only_its_own_issuers_tokens() {
        use crate::authn::jwt::test_tokens::{Signer, sign, signing_input};
        const CORP: &str = "corp-secret-0123456789abcdef0123";
        const PARTNER: &str = "partner-secret-0123456789abcdef0123456789abcdef-0123";
        let src = format!(
            "version: 1
rate_limit: {{ key: user }}
plans: {{ free: {{ requests_per_minute: 2 }} }}
jwt:
  providers:
    - name: corp
      issuers: [https://corp.example]
      audiences: [api]
      keys: [ {{ kid: corp-1, alg: HS256, secret: {CORP}, test_fixture: true }} ]
      default_tenant: t
      default_plan: free
    - name: partner
      issuers: [https://partner.example]
      audiences: any
      keys: [ {{ kid: partner-1, alg: HS384, secret: {PARTNER}, test_fixture: true }} ]
      default_tenant: t
      default_plan: free
routes:
  - match: {{ path_prefix: /v1/ }}
"
        );
        let mut policy = load_yaml("p.yaml", &src).unwrap().policy;
        policy.rate_limit.slots = 1024;
        policy.rate_limit.address_slots = 1024;
        let keys: Vec<KeySet> = policy
            .jwt
            .as_ref()
            .unwrap()
            .providers
            .iter()
            .map(|p| p.static_keys(|_| None).unwrap())
            .collect();
        let store = MemoryStore::default();
        crate::limit::prepare(&store, &policy.rate_limit.table(), &[7; 32]).unwrap();
        let clock = FixedClock::at_secs(NOW);
        let mint = |kid: &str, alg: Alg, secret: &str, iss: &str| {
            let header = format!(r#"{{"alg":"{}","kid":"{kid}"}}"#, alg.as_str());
            let payload = format!(
                r#"{{"sub":"alice","iss":"{iss}","aud":"api","iat":{},"exp":{}}}"#,
                NOW - 10,
                NOW + 600
            );
            let input = signing_input(&header, &payload);
            let sig = sign(
                alg,
                &Signer::Hmac(secret.as_bytes().to_vec()),
                input.as_bytes(),
            );
            format!("{input}.{}", crate::authn::jwt::b64::encode(&sig))
        };
        let corp = mint("corp-1", Alg::HS256, CORP, "https://corp.example");
        let partner = mint("partner-1", Alg::HS384, PARTNER, "https://partner.example");
        // The partner's key signing a token that claims the corp issuer.
        let forged = mint("partner-1", Alg::HS384, PARTNER, "https://corp.example");
        let stranger = mint("corp-1", Alg::HS256, CORP, "https://other.example");
        let ask = |token: &str| {
            let auth = format!("Bearer {token}");
            let head = RequestHead {
                method: b"GET",
                path: b"/v1/x",
                api_key: Presented::None,
                authorization: Presented::One(auth.as_bytes()),
                source_address: b"10.0.0.1:5555",
                forwarded_for: None,
                method_override: Presented::None,
            };
            decide_explained(&policy, &keys, &head, &store, &clock)
        };
        let issuer_of = |d: &Decision| match d {
            Decision::Allow(a) => a
                .claim_headers
                .iter()
                .find(|(h, _)| h == HEADER_ISSUER)
                .map(|(_, v)| v.clone()),
            _ => None,
        };
        let (d, r) = ask(&corp);
        assert_eq!(issuer_of(&d).as_deref(), Some("corp"), "{d:?}");
        assert_eq!(r.jwt_provider, Some(0));
        let (d, r) = ask(&partner);
        assert_eq!(issuer_of(&d).as_deref(), Some("partner"), "{d:?}");
        assert_eq!(r.jwt_provider, Some(1));
        assert_eq!(
            ask(&forged).0,
            jwt_denied(JwtFailure::Invalid("jwt_unknown_kid")),
            "the corp provider has no key partner-1"
        );
        assert_eq!(
            ask(&stranger).0,
            jwt_denied(JwtFailure::Invalid("jwt_unknown_issuer"))
        );
        // 2 a minute per caller: corp's alice and partner's alice are two callers.
        assert!(matches!(ask(&corp).0, Decision::Allow(_)));
        assert!(matches!(
            ask(&corp).0,
            Decision::Deny(Denial::RateLimited(_))
        ));
        assert!(matches!(ask(&partner).0, Decision::Allow(_)));
        assert!(matches!(
            ask(&partner).0,
            Decision::Deny(Denial::RateLimited(_))
        ));
    }

    /// A fed key whose plan the policy does not list ("pro": a typo, or a plan dropped
    /// from the policy) is refused with its own code, on external routes too, unless the
    /// policy maps unknown plans to one it has.
    #[test]
    fn a_plan_the_policy_does_not_know_is_refused_or_mapped() {
        let key = crate::authn::api_key::format_key("ghk", "pro0123456789abcdefghi");
        let key = key.as_bytes();
        let fed = |policy: &Policy, store: &MemoryStore| {
            let record = KeyRecord {
                origin: crate::authn::api_key::Origin::Feed,
                key_id: "key_pro".into(),
                user: "u_pro".into(),
                tenant: "t_pro".into(),
                plan: "pro".into(),
                expires_at: None,
                active: true,
                scopes: vec![],
                generation: 0,
            };
            let hash = crate::authn::api_key::KeyHash::of_key(key);
            store
                .set(&hash.cache_key(), &record.encode(&hash).unwrap(), 0)
                .unwrap();
            let _ = policy;
        };
        let ask = |policy: &Policy, store: &MemoryStore, path: &str| {
            let head = RequestHead {
                method: b"GET",
                path: path.as_bytes(),
                api_key: Presented::One(key),
                authorization: Presented::None,
                source_address: b"10.0.0.1:5555",
                forwarded_for: None,
                method_override: Presented::None,
            };
            decide_explained(policy, &[], &head, store, &FixedClock::at_secs(NOW))
        };
        let (policy, store, _) = setup();
        fed(&policy, &store);
        for path in ["/v1/things", "/docs/intro"] {
            let (d, refused) = ask(&policy, &store, path);
            assert_eq!(d, Decision::Deny(Denial::UnknownPlan), "{path}");
            // The audit names who was refused, with the plan it presented.
            assert_eq!(refused.identity.unwrap().plan, "pro");
        }
        let reply = Denial::UnknownPlan.reply(crate::time::UnixNanos(0), b"");
        assert_eq!(reply.status, 403);
        assert!(reply.body.contains("\"code\":\"UNKNOWN_PLAN\""));

        let mut mapped = policy.clone();
        mapped.unknown_plan = mapped.plans.iter().position(|p| p.name == "free");
        let (d, _) = ask(&mapped, &store, "/v1/things");
        let Decision::Allow(a) = d else {
            panic!("{d:?}")
        };
        assert_eq!(a.identity.unwrap().plan, "free");
        assert_eq!(a.plan, mapped.unknown_plan);
        assert_eq!(a.quota.unwrap().limit, 60, "the free plan's limit applies");
    }

    fn run(method: &str, path: &str, key: Presented<'_>) -> Decision {
        let (policy, store, clock) = setup();
        let head = RequestHead {
            method: method.as_bytes(),
            path: path.as_bytes(),
            api_key: key,
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        decide(&policy, &[], &head, &store, &clock)
    }

    fn in_query(d: &Decision) -> bool {
        matches!(
            d,
            Decision::Deny(Denial::Unauthorized(AuthFailure::InQuery))
        )
    }

    /// A credential in the query string is refused on every route, beside a good key in
    /// the header too: whichever the upstream reads, it is not the caller gatehouse checked.
    #[test]
    fn a_credential_in_the_query_string_is_refused_with_or_without_one_in_the_header() {
        let demo = std::str::from_utf8(DEMO).unwrap();
        let escaped = demo.replace('_', "%5F");
        for path in [
            format!("/v1/things?x-api-key={demo}"),
            format!("/v1/things?page=2&X-API-KEY={demo}"),
            "/v1/things?x%2Dapi%2Dkey=anything".to_string(),
            "/v1/things?api_key=k1&page=2".to_string(),
            "/v1/things?APIKEY=k1".to_string(),
            "/v1/things?api-key=k1#frag".to_string(),
            "/v1/things?a=1;apikey=k1".to_string(),
            // As PHP, Rails and CGI servers read names: `.`, space, `[]`, `_` for `-`.
            "/v1/things?api.key=k1".to_string(),
            "/v1/things?api+key=k1".to_string(),
            "/v1/things?api%20key=k1".to_string(),
            "/v1/things?api_key[]=k1".to_string(),
            "/v1/things?api_key%5B%5D=k1".to_string(),
            "/v1/things?API_KEY[0]=k1".to_string(),
            "/v1/things?api[key=k1".to_string(),
            "/v1/things?x_api_key=k1".to_string(),
            "/v1/things?x.api.key=k1".to_string(),
            "/v1/things?access.token=t".to_string(),
            "/v1/things?access_token=eyJ.eyJ.sig".to_string(),
            format!("/v1/things?q={demo}"),
            format!("/v1/things?q={escaped}"),
            format!("/docs/page?token={demo}"),
            format!(
                "/healthz?key={REVOKED}",
                REVOKED = std::str::from_utf8(REVOKED).unwrap()
            ),
        ] {
            for key in [Presented::One(DEMO), Presented::None] {
                let d = run("GET", &path, key);
                assert!(in_query(&d), "{path} with {key:?}: {d:?}");
            }
        }
        // Query strings without a credential: the usual answer.
        for path in [
            "/v1/things?page=2&sort=name",
            "/v1/things?api_key=",
            "/v1/things?key=hello&token=abc",
            "/v1/things?api_keys=k1&my.api=2&[api_key]=3",
            "/v1/things?x=ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG6",
            "/v1/things?%zz=%",
            "/v1/things?",
            "/v1/things?x=1#x-api-key=k1",
        ] {
            assert!(
                matches!(run("GET", path, Presented::One(DEMO)), Decision::Allow(_)),
                "{path}"
            );
        }
        // `access_token` is a credential only where the policy takes JWTs.
        let (mut policy, _, _) = setup();
        assert!(query_carries_credential(
            &policy.api_key_header,
            policy.jwt.is_some(),
            b"/x?access_token=t"
        ));
        policy.jwt = None;
        assert!(!query_carries_credential(
            &policy.api_key_header,
            policy.jwt.is_some(),
            b"/x?access_token=t"
        ));
        assert!(query_carries_credential(
            &policy.api_key_header,
            policy.jwt.is_some(),
            b"/x?x-api-key=t"
        ));
        let d = Denial::Unauthorized(AuthFailure::InQuery);
        assert_eq!(
            (d.status(), d.code(false).as_str()),
            (401, "MALFORMED_CREDENTIALS")
        );
    }

    #[test]
    fn a_valid_key_on_an_internal_route_is_allowed_with_its_identity() {
        let Decision::Allow(a) = run("GET", "/v1/things?x=1", Presented::One(DEMO)) else {
            panic!("refused")
        };
        assert_eq!(
            a.identity,
            Some(Identity {
                key_id: "key_demo".into(),
                user: "user_demo".into(),
                tenant: "tenant_demo".into(),
                plan: "team".into()
            })
        );
    }

    #[test]
    fn each_key_failure_is_refused_with_401() {
        let deny = |k| Decision::Deny(Denial::Unauthorized(k));
        assert_eq!(
            run("GET", "/v1/x", Presented::None),
            deny(AuthFailure::Missing)
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::Several),
            deny(AuthFailure::Duplicate)
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(b"nope")),
            deny(AuthFailure::Key(KeyFailure::Malformed))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(UNKNOWN)),
            deny(AuthFailure::Key(KeyFailure::Unknown))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(b"has space")),
            deny(AuthFailure::Key(KeyFailure::Malformed))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(REVOKED)),
            deny(AuthFailure::Key(KeyFailure::Revoked))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(EXPIRED)),
            deny(AuthFailure::Key(KeyFailure::Expired))
        );
    }

    #[test]
    fn a_key_expires_at_its_expiry_instant() {
        let (mut policy, store, clock) = setup();
        policy.keys.truncate(1);
        let key = &mut policy.keys[0];
        key.record.expires_at = Some(NOW + 10);
        key_cache::install_policy_keys(&policy, &store).unwrap();
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(DEMO),
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        clock.set_secs(NOW + 9);
        assert!(matches!(
            decide(&policy, &[], &head, &store, &clock),
            Decision::Allow(_)
        ));
        clock.set_secs(NOW + 10);
        assert_eq!(
            decide(&policy, &[], &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Expired)))
        );
    }

    #[test]
    fn external_routes_let_anonymous_callers_through() {
        assert_eq!(
            run("GET", "/healthz", Presented::None),
            Decision::Allow(Allowed {
                route: 0,
                identity: None,
                credential: None,
                claim_headers: Vec::new(),
                quota: Some(Quota {
                    limit: 60,
                    remaining: 59,
                    reset_secs: 1
                }),
                limiter_contention: false,
                feed_stale: false,
                limiter_retries: 0,
                plan: None,
                allowlisted: false,
                shadow: Vec::new(),
            })
        );
        assert!(matches!(
            run("GET", "/docs/intro", Presented::None),
            Decision::Allow(_)
        ));
    }

    fn head<'a>(path: &'a str, key: Presented<'a>, source: &'a [u8]) -> RequestHead<'a> {
        RequestHead {
            method: b"GET",
            path: path.as_bytes(),
            api_key: key,
            authorization: Presented::None,
            source_address: source,
            forwarded_for: None,
            method_override: Presented::None,
        }
    }

    #[test]
    fn the_plan_limit_counts_per_user_and_refuses_with_its_quota() {
        let (mut policy, store, clock) = setup();
        // free: 60 per minute; key_free's user gets exactly that, then 429.
        let free = b"ghk_free_0a9b8c7d6e5f40312e1d0C1OdSVz";
        let keys = KeySet::default();
        let h = head("/v1/things", Presented::One(free), b"10.0.0.1:1");
        let admitted = (0..100)
            .filter(|_| {
                matches!(
                    decide(&policy, std::slice::from_ref(&keys), &h, &store, &clock),
                    Decision::Allow(_)
                )
            })
            .count();
        assert_eq!(admitted, 60);
        let Decision::Deny(Denial::RateLimited(r)) =
            decide(&policy, std::slice::from_ref(&keys), &h, &store, &clock)
        else {
            panic!("not limited")
        };
        assert_eq!(
            (r.quota().limit, r.quota().remaining, r.retry_after_secs()),
            (60, 0, 1)
        );
        // Another user is not affected; a second later the first gets one more.
        let demo = head("/v1/things", Presented::One(DEMO), b"10.0.0.1:1");
        assert!(matches!(
            decide(&policy, std::slice::from_ref(&keys), &demo, &store, &clock),
            Decision::Allow(_)
        ));
        clock.set_secs(NOW + 1);
        assert!(matches!(
            decide(&policy, std::slice::from_ref(&keys), &h, &store, &clock),
            Decision::Allow(_)
        ));
        assert!(matches!(
            decide(&policy, std::slice::from_ref(&keys), &h, &store, &clock),
            Decision::Deny(_)
        ));
        // Counting by tenant instead: key_demo and key_revoked share tenant_demo.
        policy.rate_limit.plan_key = LimitBy::Tenant;
        assert!(matches!(
            decide(&policy, std::slice::from_ref(&keys), &demo, &store, &clock),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn anonymous_callers_are_limited_per_client_address() {
        let (mut policy, store, clock) = setup();
        policy.rate_limit.anonymous.requests = 2;
        policy.rate_limit.anonymous.burst = 2;
        let keys = KeySet::default();
        let from = |addr: &'static [u8]| head("/healthz", Presented::None, addr);
        let run =
            |h: &RequestHead<'_>| decide(&policy, std::slice::from_ref(&keys), h, &store, &clock);
        assert!(matches!(run(&from(b"10.0.0.1:1")), Decision::Allow(_)));
        assert!(
            matches!(run(&from(b"10.0.0.1:2")), Decision::Allow(_)),
            "same address, other port"
        );
        assert!(matches!(
            run(&from(b"10.0.0.1:3")),
            Decision::Deny(Denial::RateLimited(_))
        ));
        assert!(matches!(run(&from(b"[::1]:3")), Decision::Allow(_)));
    }

    #[test]
    fn client_addresses_come_from_the_connection_or_trusted_proxies() {
        assert_eq!(client_address(b"10.0.0.1:5555", None, 0), "10.0.0.1");
        assert_eq!(client_address(b"[2001:db8::1]:443", None, 0), "2001:db8::1");
        let xff = Some(&b"6.6.6.6, 1.2.3.4, 10.0.0.9"[..]);
        // Untrusted: the header is the client's to forge.
        assert_eq!(client_address(b"10.0.0.2:1", xff, 0), "10.0.0.2");
        assert_eq!(client_address(b"10.0.0.2:1", xff, 1), "10.0.0.9");
        assert_eq!(client_address(b"10.0.0.2:1", xff, 2), "1.2.3.4");
        assert_eq!(
            client_address(b"10.0.0.2:1", xff, 5),
            "10.0.0.2",
            "too few hops"
        );
    }

    /// Adds a limit of three requests an hour per user to the `api` route.
    pub(super) fn add_three_an_hour_on_api(
        policy: &mut Policy,
        name: &str,
        mode: crate::levers::Mode,
    ) {
        let api = policy.routes.iter().position(|r| r.name == "api").unwrap();
        policy.routes[api].limits.push(crate::route::RouteLimit {
            rate: crate::limit::Rate {
                requests: 3,
                period_nanos: 3_600_000_000_000,
                burst: 3,
            },
            by: LimitBy::User,
            scope: None,
            name: name.into(),
            mode,
        });
    }

    #[test]
    fn a_route_limit_applies_on_top_and_a_refusal_consumes_neither() {
        let (mut policy, store, clock) = setup();
        add_three_an_hour_on_api(&mut policy, "api-hourly", Default::default());
        let keys = KeySet::default();
        let free = b"ghk_free_0a9b8c7d6e5f40312e1d0C1OdSVz";
        let api_req = head("/v1/things", Presented::One(free), b"10.0.0.1:1");
        let admitted = (0..10)
            .filter(|_| {
                matches!(
                    decide(
                        &policy,
                        std::slice::from_ref(&keys),
                        &api_req,
                        &store,
                        &clock
                    ),
                    Decision::Allow(_)
                )
            })
            .count();
        assert_eq!(admitted, 3, "3 per hour on the route");
        // The plan (60/min) was charged 3 times, not 10: on a route without a limit of its
        // own the key has 57 left.
        let docs = head("/docs/x", Presented::One(free), b"10.0.0.1:1");
        let more = (0..100)
            .filter(|_| {
                matches!(
                    decide(&policy, std::slice::from_ref(&keys), &docs, &store, &clock),
                    Decision::Allow(_)
                )
            })
            .count();
        assert_eq!(more, 57);
    }

    #[test]
    fn fleet_limits_take_the_whole_rate_while_fresh_and_a_share_when_stale() {
        use crate::limit::fleet::{View, decode};
        let keys = KeySet::default();
        let free = b"ghk_free_0a9b8c7d6e5f40312e1d0C1OdSVz";
        let docs = head("/docs/x", Presented::One(free), b"10.0.0.1:1");
        let admitted = |view: Option<View>| {
            let (mut policy, store, clock) = setup();
            policy.rate_limit.scope = crate::limit::Scope::Fleet;
            if let Some(view) = view {
                view.write(&store).unwrap();
            }
            let caches = Caches::default();
            let n = (0..100)
                .filter(|_| {
                    let d = super::decide(
                        &policy,
                        &caches,
                        std::slice::from_ref(&keys),
                        &docs,
                        &store,
                        &clock,
                    );
                    matches!(d, Decision::Allow(_))
                })
                .count();
            let used = caches.fleet.take_batch().map(|b| decode(&b).unwrap());
            (n, used)
        };
        let now = NOW * 1_000_000_000;
        let fresh = View {
            ok_at: now - 500_000_000,
            proxies: 3,
        };
        let (n, used) = admitted(Some(fresh));
        assert_eq!(n, 60, "the whole plan while the fleet's states arrive");
        let used = used.unwrap();
        assert_eq!(used.len(), 1);
        assert_eq!(
            (used[0].member.limit.as_str(), used[0].n),
            ("plan:free", 60)
        );
        assert!(used[0].member.caller.starts_with("u:"));
        assert_eq!(used[0].rate.requests, 60, "the whole rate is reported");
        let stale = View {
            ok_at: now - 5_000_000_000,
            proxies: 3,
        };
        let (n, used) = admitted(Some(stale));
        assert_eq!(n, 20, "a third: three proxies");
        assert_eq!(
            used.unwrap()[0].rate.requests,
            60,
            "reported at the whole rate"
        );
        assert_eq!(
            admitted(None).0,
            60,
            "never exchanged: the whole limit here"
        );
    }

    #[test]
    fn a_refusal_says_what_was_known_when_it_was_refused_and_never_the_credential() {
        let (policy, store, clock) = setup();
        let keys = KeySet::default();
        let explain = |h: &RequestHead<'_>| {
            decide_explained(&policy, std::slice::from_ref(&keys), h, &store, &clock)
        };
        let things = policy
            .routes
            .iter()
            .position(|r| route::find(std::slice::from_ref(r), b"GET", b"/v1/things").is_some())
            .unwrap();
        // No route: nothing known.
        let (d, r) = explain(&head("/nowhere", Presented::One(DEMO), b"10.0.0.1:1"));
        assert_eq!(d, Decision::Deny(Denial::NoRoute));
        assert_eq!(r, Refused::default());
        // A bad key: the route, no identity.
        let (d, r) = explain(&head("/v1/things", Presented::One(UNKNOWN), b"10.0.0.1:1"));
        assert!(matches!(d, Decision::Deny(Denial::Unauthorized(_))));
        assert_eq!((r.route, r.identity), (Some(things), None));
        // Out of scope: the caller is known.
        let (d, r) = explain(&head("/v1/things", Presented::One(BILLING), b"10.0.0.1:1"));
        assert_eq!(d, Decision::Deny(Denial::Forbidden));
        assert_eq!(r.identity.unwrap().key_id, "key_billing");
        assert_eq!(r.credential, Some(Credential::ApiKey));
        // Over the limit: the caller is known too.
        let free = b"ghk_free_0a9b8c7d6e5f40312e1d0C1OdSVz";
        let h = head("/v1/things", Presented::One(free), b"10.0.0.1:1");
        for _ in 0..60 {
            assert!(matches!(explain(&h).0, Decision::Allow(_)));
        }
        let refused = explain(&h);
        assert!(matches!(refused.0, Decision::Deny(Denial::RateLimited(_))));
        assert_eq!(refused.1.route, Some(things));
        assert_eq!(refused.1.identity.unwrap().plan, "free");
        // Allowed: nothing here, the decision carries it.
        let (d, r) = explain(&head("/v1/things", Presented::One(DEMO), b"10.0.0.1:1"));
        assert!(matches!(d, Decision::Allow(_)));
        assert_eq!(r, Refused::default());
    }

    #[test]
    fn a_scoped_key_calls_only_routes_in_its_groups() {
        assert!(matches!(
            run("GET", "/v1/billing/invoices", Presented::One(BILLING)),
            Decision::Allow(_)
        ));
        assert_eq!(
            run("GET", "/v1/things", Presented::One(BILLING)),
            Decision::Deny(Denial::Forbidden)
        );
        // External routes too: a scoped key is not a general credential anywhere.
        assert_eq!(
            run("GET", "/healthz", Presented::One(BILLING)),
            Decision::Deny(Denial::Forbidden)
        );
        // An unscoped key calls every group.
        assert!(matches!(
            run("GET", "/v1/billing/invoices", Presented::One(DEMO)),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn an_opaque_key_format_skips_the_checksum() {
        let (mut policy, store, clock) = setup();
        policy.api_key_format = crate::policy::KeyFormat::Opaque;
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(b"legacy-key-123"),
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        assert_eq!(
            decide(&policy, &[], &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn a_remembered_key_is_still_looked_up_and_rechecked_under_another_format() {
        let (mut policy, store, clock) = setup();
        let head = |key| RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(key),
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        let caches = Caches::default();
        let go =
            |policy: &Policy, key| super::decide(policy, &caches, &[], &head(key), &store, &clock);
        assert!(matches!(go(&policy, DEMO), Decision::Allow(_)));
        assert_eq!(caches.presented_keys.0.len(), 1, "remembered");
        assert_eq!(caches.key_records.0.len(), 1, "its record decoded once");
        assert!(matches!(go(&policy, DEMO), Decision::Allow(_)));
        // Revoked after it was remembered: the record is read on every request.
        let hash = crate::authn::api_key::KeyHash::of_key(DEMO);
        let mut record =
            key_cache::lookup(&policy, &caches.key_records, &store, &hash, 0, clock.now()).unwrap();
        record.active = false;
        store
            .set(&hash.policy_cache_key(), &record.encode(&hash).unwrap(), 0)
            .unwrap();
        assert_eq!(
            go(&policy, DEMO),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Revoked)))
        );
        // A key remembered under the opaque format has no checksum to speak of; under
        // the checksummed format it is checked again, and refused.
        policy.api_key_format = crate::policy::KeyFormat::Opaque;
        let legacy: &[u8] = b"legacy-key-123";
        assert_eq!(
            go(&policy, legacy),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
        policy.api_key_format = crate::policy::KeyFormat::Checksummed;
        assert_eq!(
            go(&policy, legacy),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(
                KeyFailure::Malformed
            )))
        );
        // A refused key is never remembered.
        let before = caches.presented_keys.0.len();
        let _ = go(&policy, b"nope");
        assert_eq!(caches.presented_keys.0.len(), before);
    }

    #[test]
    fn a_bad_key_on_an_external_route_is_still_refused() {
        assert_eq!(
            run("GET", "/healthz", Presented::One(UNKNOWN)),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn unmatched_routes_and_methods_are_404() {
        assert_eq!(
            run("GET", "/v2/x", Presented::One(DEMO)),
            Decision::Deny(Denial::NoRoute)
        );
        assert_eq!(
            run("POST", "/healthz", Presented::None),
            Decision::Deny(Denial::NoRoute)
        );
    }

    #[test]
    fn ambiguous_paths_are_refused_before_matching() {
        assert_eq!(
            run("GET", "/docs/../v1/x", Presented::None),
            Decision::Deny(Denial::Unclear(route::Unclear::Path))
        );
        assert_eq!(
            run("GET", "/docs/%2e%2e/v1/x", Presented::None),
            Decision::Deny(Denial::Unclear(route::Unclear::Path))
        );
    }

    #[test]
    fn a_key_from_an_older_policy_stops_working_when_the_policy_changes() {
        let (mut policy, store, clock) = setup();
        policy.fingerprint ^= 1;
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(DEMO),
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        assert_eq!(
            decide(&policy, &[], &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn a_stale_feed_refuses_credentials_with_503_and_still_serves_anonymous_callers() {
        let (mut policy, store, clock) = setup();
        let mut feed = crate::policy::FeedPolicy {
            cluster: "control".into(),
            authority: "control".into(),
            path: "/v1/cache".into(),
            token_env: "T".into(),
            interval_secs: 1,
            wait_secs: 20,
            staleness_secs: 30,
            on_stale: OnStale::FailClosed,
        };
        policy.feed = Some(feed.clone());
        crate::sync::feed::mark_started(&store, NOW).unwrap();
        let head = |path: &'static str, key| RequestHead {
            method: b"GET",
            path: path.as_bytes(),
            api_key: key,
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        let run = |p: &Policy, path, key| decide(p, &[], &head(path, key), &store, &clock);
        clock.set_secs(NOW + 30);
        assert!(
            matches!(run(&policy, "/v1/x", Presented::One(DEMO)), Decision::Allow(a) if !a.feed_stale)
        );
        clock.set_secs(NOW + 31);
        assert_eq!(
            run(&policy, "/v1/x", Presented::One(DEMO)),
            Decision::Deny(Denial::AuthUnavailable)
        );
        assert!(matches!(
            run(&policy, "/healthz", Presented::None),
            Decision::Allow(_)
        ));
        assert_eq!(
            run(&policy, "/v1/x", Presented::None),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Missing))
        );
        assert_eq!(
            run(&policy, "/nowhere", Presented::One(DEMO)),
            Decision::Deny(Denial::NoRoute)
        );
        feed.on_stale = OnStale::KeepServing;
        policy.feed = Some(feed);
        assert!(
            matches!(run(&policy, "/v1/x", Presented::One(DEMO)), Decision::Allow(a) if a.feed_stale)
        );
    }

    #[test]
    fn before_the_first_feed_answer_an_unknown_key_gets_503_and_afterwards_401() {
        let (mut policy, store, clock) = setup();
        policy.feed = Some(crate::policy::FeedPolicy {
            cluster: "control".into(),
            authority: "control".into(),
            path: "/v1/cache".into(),
            token_env: "T".into(),
            interval_secs: 1,
            wait_secs: 20,
            staleness_secs: 30,
            on_stale: OnStale::FailClosed,
        });
        crate::sync::feed::mark_started(&store, NOW).unwrap();
        let head = |key| RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: key,
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        let run = |key| decide(&policy, &[], &head(key), &store, &clock);
        let unknown_key = crate::authn::api_key::format_key("ghk", "notfedyet0000000000000");
        let unknown = Presented::One(unknown_key.as_bytes());
        assert_eq!(run(unknown), Decision::Deny(Denial::AuthUnavailable));
        assert!(
            matches!(run(Presented::One(DEMO)), Decision::Allow(_)),
            "the policy's own keys work before the first answer"
        );
        // The state an earlier version of the module wrote (upgraded in place): fresh,
        // but its key records have other names. Not ready for a miss, until a snapshot.
        let legacy = format!("e0|3|{NOW}");
        store
            .set(crate::sync::feed::STATE_KEY, legacy.as_bytes(), 0)
            .unwrap();
        assert_eq!(run(unknown), Decision::Deny(Denial::AuthUnavailable));
        assert!(matches!(run(Presented::One(DEMO)), Decision::Allow(_)));
        let answer = crate::sync::feed::parse_answer(
            br#"{"epoch":"e1","version":1,"full":true,"keys":[],"users":[],"jtis":[]}"#,
        )
        .unwrap();
        crate::sync::feed::apply(&store, &answer, false, NOW).unwrap();
        assert_eq!(
            run(unknown),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn a_corrupt_cache_entry_is_an_unknown_key_not_a_crash() {
        let (policy, store, clock) = setup();
        let hash = crate::authn::api_key::KeyHash::of_key(DEMO);
        store.set(&hash.cache_key(), b"\xff garbage", 0).unwrap();
        store
            .set(&hash.policy_cache_key(), b"\xff garbage", 0)
            .unwrap();
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(DEMO),
            authorization: Presented::None,
            source_address: b"10.0.0.1:5555",
            forwarded_for: None,
            method_override: Presented::None,
        };
        assert_eq!(
            decide(&policy, &[], &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod properties {
    use super::*;
    use crate::clock::FixedClock;
    use crate::policy::load_yaml;
    use crate::request::*;
    use crate::store::MemoryStore;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, the core answers with a decision; it never panics, and
        /// an identity is only ever granted for a key whose record exists.
        #[test]
        fn any_request_bytes_get_a_decision_without_panicking(
            method in proptest::collection::vec(any::<u8>(), 0..16),
            path in proptest::collection::vec(any::<u8>(), 0..64),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            several in any::<bool>(),
            authorization in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ) {
            let mut policy = load_yaml("example.yaml", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.yaml"))).unwrap().policy;
            policy.rate_limit.slots = 1024;
            policy.rate_limit.address_slots = 1024;
            let store = MemoryStore::default();
            crate::authn::key_cache::install_policy_keys(&policy, &store).unwrap();
            crate::limit::prepare(&store, &policy.rate_limit.table(), &[7; 32]).unwrap();
            let api_key = match (&key, several) {
                (None, _) => Presented::None,
                (Some(_), true) => Presented::Several,
                (Some(k), false) => Presented::One(k),
            };
            let authorization = match &authorization {
                None => Presented::None,
                Some(a) => Presented::One(a),
            };
            let head = RequestHead { method: &method, path: &path, api_key, authorization, source_address: b"10.0.0.1:1", forwarded_for: None, method_override: Presented::None };
            let keys = super::tests::jwt_test_keys();
            let decision = decide(&policy, &Caches::default(), std::slice::from_ref(&keys), &head, &store, &FixedClock::at_secs(1_767_225_600));
            if let Decision::Allow(Allowed { identity: Some(_), .. }) = decision {
                prop_assert!(false, "random key bytes were granted an identity");
            }
        }
    }
}

/// The operators' levers on the request path ([`crate::levers`]).
#[cfg(test)]
#[cfg(all(feature = "yaml", feature = "test-tokens"))]
mod lever_tests {
    use super::tests::{add_three_an_hour_on_api, setup};
    use super::*;
    use crate::clock::FixedClock;
    use crate::request::Presented;
    use crate::store::MemoryStore;

    const NOW: u64 = 1_767_225_600;

    fn head<'a>(path: &'a str, key: Presented<'a>, source: &'a [u8]) -> RequestHead<'a> {
        RequestHead {
            method: b"GET",
            path: path.as_bytes(),
            api_key: key,
            authorization: Presented::None,
            source_address: source,
            forwarded_for: None,
            method_override: Presented::None,
        }
    }

    /// The worker's caches with these levers, as the sync stores them and a tick reads
    /// them.
    fn with_levers(store: &MemoryStore, levers: serde_json::Value) -> Caches {
        crate::levers::store(store, levers.to_string().as_bytes()).unwrap();
        let caches = Caches::default();
        caches.levers.refresh(store);
        caches
    }

    const FREE: &[u8] = b"ghk_free_0a9b8c7d6e5f40312e1d0C1OdSVz";

    /// Of `n` requests of key_free on /v1/things, how many pass.
    fn admitted(
        policy: &Policy,
        caches: &Caches,
        store: &MemoryStore,
        clock: &FixedClock,
        n: usize,
    ) -> usize {
        let req = head("/v1/things", Presented::One(FREE), b"203.0.113.9:1");
        (0..n)
            .filter(|_| {
                matches!(
                    super::decide(policy, caches, &[], &req, store, clock),
                    Decision::Allow(_)
                )
            })
            .count()
    }

    #[test]
    fn an_allowlisted_caller_skips_the_limits_it_names_and_is_counted() {
        use serde_json::json;
        for entry in [
            json!({"id": "a1", "key_id": "key_free", "limit": "free"}),
            json!({"id": "a2", "user": "user_free", "limit": null}),
            json!({"id": "a3", "tenant": "tenant_free"}),
            json!({"id": "a4", "cidr": "203.0.113.0/24"}),
        ] {
            let (policy, store, clock) = setup();
            let caches = with_levers(&store, json!({ "allowlist": [entry] }));
            assert_eq!(
                admitted(&policy, &caches, &store, &clock, 100),
                100,
                "{entry}"
            );
            let req = head("/v1/things", Presented::One(FREE), b"203.0.113.9:1");
            let Decision::Allow(a) = super::decide(&policy, &caches, &[], &req, &store, &clock)
            else {
                panic!("refused")
            };
            assert!(a.allowlisted);
        }
        // An entry for another limit, or another network, leaves the plan limit on.
        for entry in [
            json!({"id": "a1", "key_id": "key_free", "limit": "team"}),
            json!({"id": "a4", "cidr": "198.51.100.0/24"}),
        ] {
            let (policy, store, clock) = setup();
            let caches = with_levers(&store, json!({ "allowlist": [entry] }));
            assert_eq!(
                admitted(&policy, &caches, &store, &clock, 100),
                60,
                "{entry}"
            );
        }
    }

    #[test]
    fn the_policys_own_allowlist_skips_limits_as_the_feeds_does() {
        use serde_json::json;
        for entry in [
            json!({"key_id": "key_free", "limit": "free"}),
            json!({"user": "user_free"}),
            json!({"cidr": "203.0.113.0/24"}),
        ] {
            let (mut policy, store, clock) = setup();
            let mut set = entry.clone();
            set["id"] = json!("policy");
            policy.rate_limit.allowlist =
                crate::levers::parse(&json!({ "allowlist": [set] })).unwrap();
            let caches = Caches::default();
            assert_eq!(
                admitted(&policy, &caches, &store, &clock, 100),
                100,
                "{entry}"
            );
        }
        let (mut policy, store, clock) = setup();
        policy.rate_limit.allowlist = crate::levers::parse(
            &json!({ "allowlist": [{"id": "policy", "cidr": "198.51.100.0/24"}] }),
        )
        .unwrap();
        assert_eq!(
            admitted(&policy, &Caches::default(), &store, &clock, 100),
            60
        );
    }

    #[test]
    fn a_raised_override_serves_a_refused_caller_at_once_and_a_lowered_one_holds_it() {
        use serde_json::json;
        let (policy, store, clock) = setup();
        let caches = Caches::default();
        assert_eq!(admitted(&policy, &caches, &store, &clock, 100), 60);
        // Raised to 100/min: served from the next request, on a state of its own.
        let caches = with_levers(
            &store,
            json!({"overrides": [{"scope": "key", "id": "key_free", "requests_per_minute": 100, "expires_at": null}]}),
        );
        assert_eq!(admitted(&policy, &caches, &store, &clock, 200), 100);
        // Lowered to 5/min for the tenant: the lowered burst, then refused.
        let (policy, store, clock) = setup();
        let caches = with_levers(
            &store,
            json!({"overrides": [{"scope": "tenant", "id": "tenant_free", "requests_per_minute": 5}]}),
        );
        assert_eq!(admitted(&policy, &caches, &store, &clock, 20), 5);
        // An override past its expiry is ignored: the plan's 60 apply.
        let (policy, store, clock) = setup();
        let caches = with_levers(
            &store,
            json!({"overrides": [{"scope": "key", "id": "key_free", "requests_per_minute": 5, "expires_at": NOW}]}),
        );
        assert_eq!(admitted(&policy, &caches, &store, &clock, 100), 60);
    }

    #[test]
    fn a_limit_off_is_skipped_and_one_in_shadow_never_refuses_but_says_so() {
        use serde_json::json;
        let (policy, store, clock) = setup();
        let caches = with_levers(&store, json!({"modes": [{"limit": "free", "mode": "off"}]}));
        assert_eq!(admitted(&policy, &caches, &store, &clock, 100), 100);
        let (policy, store, clock) = setup();
        let caches = with_levers(
            &store,
            json!({"modes": [{"limit": "free", "mode": "shadow"}]}),
        );
        let req = head("/v1/things", Presented::One(FREE), b"203.0.113.9:1");
        let shadowed: Vec<usize> = (0..100)
            .map(
                |_| match super::decide(&policy, &caches, &[], &req, &store, &clock) {
                    Decision::Allow(a) => a.shadow.len(),
                    Decision::Deny(d) => panic!("refused: {d:?}"),
                },
            )
            .collect();
        // The shadowed limit consumed its state as if it applied: 60 pass, 40 would not.
        assert_eq!(shadowed.iter().filter(|n| **n == 0).count(), 60);
        assert_eq!(shadowed.iter().filter(|n| **n == 1).count(), 40);
        let Decision::Allow(a) = super::decide(&policy, &caches, &[], &req, &store, &clock) else {
            panic!("refused")
        };
        let s = a.shadow[0];
        assert_eq!(s.rule, crate::levers::Rule::Plan(0));
        assert_eq!(policy.rule_name(s.rule), "free");
        assert!(matches!(s.denial, Denial::RateLimited(_)));
    }

    #[test]
    fn a_policy_shadow_mode_is_overridden_by_the_feed() {
        use serde_json::json;
        let (mut policy, store, clock) = setup();
        add_three_an_hour_on_api(&mut policy, "api", crate::levers::Mode::Shadow);
        // In shadow by the policy: the plan's 60 decide.
        assert_eq!(
            admitted(&policy, &Caches::default(), &store, &clock, 100),
            60
        );
        // Enforced by a lever: 3 an hour.
        let (_, store, clock) = setup();
        let caches = with_levers(
            &store,
            json!({"modes": [{"limit": "api", "mode": "enforce"}]}),
        );
        assert_eq!(admitted(&policy, &caches, &store, &clock, 100), 3);
    }
}
