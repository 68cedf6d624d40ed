//! One HTTP stream as the filter runs it: what the request headers lead to (the health
//! route's or a preflight's answer, a refusal, or edits and a body plan), the body stage, and what a refusal is
//! recorded with. The plugin reads the host and applies these answers; every choice is
//! here, where native tests reach it.

use super::{Allowed, Decision, Refused, decide_explained};
use crate::authn::jwks_cache;
use crate::authn::jwt::KeySet;
use crate::authn::{Credential, Identity, presents_credential_in};
use crate::body::webhook::Verifier;
use crate::body::{self, BodyCheck, BodyHead};
use crate::clock::Clock;
use crate::cors::{self, Preflight};
use crate::health::answer::{self as health, Answer};
use crate::limit::client::client_address;
use crate::observe::tally::{RefusalFacts, SignatureProvider, Tally};
use crate::policy::{LogLevel, Policy};
use crate::refusal::{Denial, LocalReply};
use crate::request::{Headers, Presented, RequestHead, header_map};
use crate::route::{PathMatch, Route};
use crate::store::SharedStore;
use crate::time::UnixNanos;
use crate::worker::Caches;

/// Whether the decision needs the connection's address (a host call): for a caller
/// without a credential (anonymous limits) and for route limits `by: ip`. A request that
/// presents a credential is authenticated or refused, never anonymous.
pub fn needs_source_address(policy: &Policy, headers: &Headers<'_>, by_ip: bool) -> bool {
    by_ip || !presents_credential_in(policy, headers.api_key, headers.authorization)
}

/// A CORS preflight's answer (a 204 with the CORS headers, or the refusal), before
/// authentication and before the client address is read: it carries no credentials.
/// `None`: not a preflight, or the policy does no CORS.
pub fn preflight(policy: &Policy, headers: &Headers<'_>) -> Option<Result<LocalReply, Denial>> {
    let preflight = Preflight::from_request(
        headers.method,
        headers.path,
        headers.origin,
        headers.cors_method,
        &headers.cors_headers,
    )?;
    cors::preflight::answer_preflight(policy, &preflight)
}

/// What the filter answers itself, before routing ([`local_answer`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Local {
    /// Send as it is: a preflight's 204.
    Reply(LocalReply),
    /// The health route's 200 or 503: counted with [`Tally::health`], never recorded as a
    /// refusal.
    Probe { reply: LocalReply, ready: bool },
    /// Refused before routing (a preflight the policy does not allow, a method the health
    /// route does not answer): recorded with [`Seen::unrouted`].
    Refuse(Denial),
}

/// What the filter answers itself before routing: the health route's path (whatever the
/// method, and before CORS: it is the filter's own), then a CORS preflight. `None`: the
/// request goes on to [`on_request_headers`]. The clock and the store are read only for
/// the health path.
pub fn local_answer(
    policy: &Policy,
    headers: &Headers<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> Option<Local> {
    let probe = health::answer(
        policy,
        headers.method,
        headers.path,
        headers.request_id,
        store,
        clock,
    );
    if let Some(answer) = probe {
        return Some(match answer {
            Answer::Probe { reply, ready } => Local::Probe { reply, ready },
            Answer::Refuse(denial) => Local::Refuse(denial),
        });
    }
    preflight(policy, headers).map(|answer| match answer {
        Ok(reply) => Local::Reply(reply),
        Err(denial) => Local::Refuse(denial),
    })
}

/// What the request headers lead to, once [`local_answer`] left them to routing.
#[derive(Debug)]
pub enum Outcome {
    /// Refused: answer with the denial's reply. `refused` says what was known.
    Refuse { denial: Denial, refused: Refused },
    /// Allowed: apply [`request_edits`]; `check_body` says whether the body goes through
    /// [`BodyStage`] before the request counts as allowed.
    Pass { allowed: Allowed, check_body: bool },
}

/// The request headers' outcome. A refused token whose `kid` its provider does not know
/// asks for that provider's JWKS again (the issuer may have rotated its keys).
pub fn on_request_headers(
    policy: &Policy,
    caches: &Caches,
    jwt_keys: &[KeySet],
    head: &RequestHead<'_>,
    end_of_stream: bool,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> Outcome {
    match decide_explained(policy, caches, jwt_keys, head, store, clock) {
        (Decision::Allow(allowed), _) => {
            // A request without a body needs no body stage unless a webhook must still
            // refuse its missing signature.
            let check_body = policy
                .routes
                .get(allowed.route)
                .is_some_and(|r| !(end_of_stream && r.webhook.is_none()));
            Outcome::Pass {
                allowed,
                check_body,
            }
        }
        (Decision::Deny(denial), refused) => {
            if refused.unknown_kid
                && let Some(p) = refused.jwt_provider
                && let Some(url) = policy
                    .jwt
                    .as_ref()
                    .and_then(|j| j.providers.get(p)?.jwks_url.as_ref())
            {
                jwks_cache::want_refetch(store, p, url, clock.now().secs());
            }
            Outcome::Refuse { denial, refused }
        }
    }
}

/// One change to the request headers before the request goes upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit<'a> {
    Remove(&'a str),
    Set(&'a str, &'a str),
}

/// The edits an allowed request gets, in order: client-sent identity names out, the
/// caller's identity and forwarded claims in, and with `hide_credentials` the credential
/// that authenticated it out.
pub fn request_edits<'a>(
    policy: &'a Policy,
    headers: &'a Headers<'a>,
    allowed: &'a Allowed,
) -> impl Iterator<Item = Edit<'a>> {
    let spoofed = headers.spoofed.iter().map(|n| Edit::Remove(n));
    let identity = allowed
        .identity
        .iter()
        .flat_map(|i| i.headers())
        .map(|(n, v)| Edit::Set(n, v));
    let claims = allowed
        .claim_headers
        .iter()
        .map(|(n, v)| Edit::Set(n.as_str(), v.as_str()));
    let hidden = match (policy.hide_credentials, allowed.credential) {
        (true, Some(Credential::ApiKey)) => Some(policy.api_key_header.as_str()),
        (true, Some(Credential::Jwt)) => Some("authorization"),
        _ => None,
    };
    spoofed
        .chain(identity)
        .chain(claims)
        .chain(hidden.map(Edit::Remove))
}

/// The key use an allowed request reports: an API key's id and the time, when the
/// policy has a feed (the control service keeps the last use).
pub fn key_use<'a>(policy: &Policy, allowed: &'a Allowed, now_secs: u64) -> Option<(&'a str, u64)> {
    match (&allowed.identity, allowed.credential) {
        (Some(i), Some(Credential::ApiKey)) if policy.feed.is_some() => {
            Some((i.key_id.as_str(), now_secs))
        }
        _ => None,
    }
}

/// What the headers said about an allowed request whose body is still to be checked: its
/// allowed count waits for the body, and a refusal of the body is recorded with it.
#[derive(Clone, Debug)]
pub struct Caller {
    /// [`Allowed::plan`].
    pub plan: Option<usize>,
    pub identity: Option<Identity>,
    pub credential: Option<Credential>,
    /// When the key was used, for an API key whose use is reported ([`key_use`]).
    pub key_use_at: Option<u64>,
    /// A rule in shadow would have refused it ([`Allowed::shadow`], or a body rule).
    pub shadow_refused: bool,
    /// What rules in shadow of the body stage would have refused (recorded when the
    /// request passes).
    pub shadowed: Vec<super::Shadowed>,
    pub method: Vec<u8>,
    pub source_address: Vec<u8>,
    pub forwarded_for: Option<Vec<u8>>,
}

impl Caller {
    /// The caller of an allowed request.
    pub fn of(policy: &Policy, allowed: Allowed, head: &RequestHead<'_>, now_secs: u64) -> Caller {
        let key_use_at = key_use(policy, &allowed, now_secs).map(|(_, at)| at);
        Caller {
            plan: allowed.plan,
            key_use_at,
            shadow_refused: !allowed.shadow.is_empty(),
            shadowed: Vec::new(),
            identity: allowed.identity,
            credential: allowed.credential,
            method: head.method.to_vec(),
            source_address: head.source_address.to_vec(),
            forwarded_for: head.forwarded_for.map(<[u8]>::to_vec),
        }
    }

    /// A rule of `route` in shadow would have refused the request at its headers.
    fn would_refuse(&mut self, route: usize, denial: Denial) {
        self.shadowed.push(super::Shadowed {
            rule: shadow_rule(route, denial),
            denial,
        });
        self.shadow_refused = true;
    }

    /// Counts the request as allowed.
    pub fn count_allowed(&self, tally: &mut Tally) {
        let key_use = self
            .identity
            .as_ref()
            .zip(self.key_use_at)
            .map(|(i, at)| (i.key_id.as_str(), at));
        tally.allowed_shadowed(
            self.plan,
            self.identity.is_none(),
            key_use,
            self.shadow_refused,
        );
    }

    pub fn seen<'a>(&'a self, request_id: &'a [u8], route: usize) -> Seen<'a> {
        Seen {
            request_id,
            method: &self.method,
            route: Some(route),
            identity: self.identity.as_ref(),
            credential: self.credential,
            source_address: &self.source_address,
            forwarded_for: self.forwarded_for.as_deref(),
        }
    }
}

/// A request as a refusal is recorded with ([`record_refusal`]).
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    pub request_id: &'a [u8],
    pub method: &'a [u8],
    pub route: Option<usize>,
    pub identity: Option<&'a Identity>,
    pub credential: Option<Credential>,
    /// `source.address` when the request path read it, else empty (read on refusal).
    pub source_address: &'a [u8],
    pub forwarded_for: Option<&'a [u8]>,
}

impl<'a> Seen<'a> {
    /// A refused request, from what its headers and the decision said.
    pub fn refused(headers: &'a Headers<'a>, head: &RequestHead<'a>, refused: &'a Refused) -> Self {
        Seen {
            request_id: headers.request_id,
            method: headers.method,
            route: refused.route,
            identity: refused.identity.as_ref(),
            credential: refused.credential,
            source_address: head.source_address,
            forwarded_for: head.forwarded_for,
        }
    }

    /// An allowed request, for what a rule in shadow would have refused in it.
    pub fn allowed(headers: &'a Headers<'a>, head: &RequestHead<'a>, allowed: &'a Allowed) -> Self {
        Seen {
            request_id: headers.request_id,
            method: headers.method,
            route: Some(allowed.route),
            identity: allowed.identity.as_ref(),
            credential: allowed.credential,
            source_address: head.source_address,
            forwarded_for: head.forwarded_for,
        }
    }

    /// A request refused before routing (a preflight, a wrong method on the health
    /// path): nothing known but the request.
    pub fn unrouted(headers: &'a Headers<'a>) -> Self {
        Seen {
            request_id: headers.request_id,
            method: headers.method,
            route: None,
            identity: None,
            credential: None,
            source_address: &[],
            forwarded_for: None,
        }
    }
}

/// The route's path pattern as written in the policy.
fn route_pattern(route: &Route) -> &str {
    match &route.path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
    }
}

/// Records a refusal: counts it in `tally` (with its audit record when the policy has a
/// feed) and returns its log line with the policy's level when `logs(level)` says the
/// host would keep it. The client's address is computed only when the line or the audit
/// needs it, and the connection's address read (`read_source`, a host call) only then and
/// only when the request path did not read it.
#[allow(clippy::too_many_arguments)]
pub fn record_refusal(
    policy: &Policy,
    tally: Option<&mut Tally>,
    denial: Denial,
    at: UnixNanos,
    seen: &Seen<'_>,
    provider: Option<SignatureProvider>,
    logs: impl Fn(LogLevel) -> bool,
    read_source: impl FnOnce() -> Vec<u8>,
) -> Option<(LogLevel, String)> {
    record(
        policy,
        tally,
        denial,
        at,
        seen,
        Recorded::Refusal(provider),
        logs,
        read_source,
    )
}

/// Records what a rule in `shadow` would have refused in a request that passed: counted
/// under the rule, kept for the sync with `"shadow":true`, and logged as a refusal line
/// that says `"would_refuse":"<rule>"` (never a secret, as every refusal line).
#[allow(clippy::too_many_arguments)]
pub fn record_would_refuse(
    policy: &Policy,
    tally: Option<&mut Tally>,
    shadowed: &super::Shadowed,
    at: UnixNanos,
    seen: &Seen<'_>,
    logs: impl Fn(LogLevel) -> bool,
    read_source: impl FnOnce() -> Vec<u8>,
) -> Option<(LogLevel, String)> {
    let name = policy.rule_name(shadowed.rule);
    record(
        policy,
        tally,
        shadowed.denial,
        at,
        seen,
        Recorded::Shadow(policy.rule_index(shadowed.rule), &name),
        logs,
        read_source,
    )
}

/// What [`record`] records.
enum Recorded<'a> {
    /// A refusal, with the webhook provider of a signature refusal.
    Refusal(Option<SignatureProvider>),
    /// A rule in shadow's "would refuse": the rule's place and name.
    Shadow(Option<usize>, &'a str),
}

#[allow(clippy::too_many_arguments)]
fn record(
    policy: &Policy,
    tally: Option<&mut Tally>,
    denial: Denial,
    at: UnixNanos,
    seen: &Seen<'_>,
    what: Recorded<'_>,
    logs: impl Fn(LogLevel) -> bool,
    read_source: impl FnOnce() -> Vec<u8>,
) -> Option<(LogLevel, String)> {
    let level = policy.logging.refusals.filter(|l| logs(*l));
    let wants_client = level.is_some() || policy.feed.is_some();
    let read;
    let source = if seen.source_address.is_empty() && wants_client {
        read = read_source();
        read.as_slice()
    } else {
        seen.source_address
    };
    let client = wants_client.then(|| {
        client_address(
            source,
            seen.forwarded_for,
            policy.rate_limit.trusted_proxies,
        )
    });
    let facts = RefusalFacts {
        at,
        denial,
        request_id: seen.request_id,
        method: seen.method,
        route: seen
            .route
            .and_then(|r| policy.routes.get(r))
            .map(route_pattern),
        identity: seen.identity,
        credential: seen.credential,
        client: client.as_deref(),
        shadow: match what {
            Recorded::Shadow(_, name) => Some(name),
            Recorded::Refusal(_) => None,
        },
    };
    if let Some(tally) = tally {
        match what {
            Recorded::Refusal(provider) => tally.refused(&facts, provider),
            Recorded::Shadow(rule, _) => tally.would_refuse(rule, &facts),
        }
    }
    level.map(|l| (l, facts.log_line()))
}

/// A request body under its route's body rules ([`crate::body`]), between the request
/// headers and the end of the stream. The rules in `enforce` make up `check`; those in
/// `shadow` (a route's `webhook` or `body` mode, or a lever for `webhook:<route>` or
/// `body:<route>`) make up `shadow`, judged on the same bytes and never refusing; those
/// `off` are in neither.
#[derive(Debug)]
pub struct BodyStage {
    check: BodyCheck,
    /// The webhook's signature is in `check` (else in `shadow`, or `off`).
    webhook_enforced: bool,
    /// The rules in shadow, until one would have refused.
    shadow: Option<BodyCheck>,
    /// Bytes of a held body already fed to the checks.
    held: usize,
    pub waiting: Waiting,
}

/// A body with no limit: what a rule `off` or in `shadow` leaves to the enforced check.
const UNLIMITED: crate::body::BodyPolicy = crate::body::BodyPolicy {
    max_bytes: u64::MAX,
    json: None,
};

/// An allowed request waiting for its body: what it counts and is recorded with.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub route: usize,
    pub request_id: Vec<u8>,
    pub caller: Caller,
}

impl Waiting {
    pub fn seen(&self) -> Seen<'_> {
        self.caller.seen(&self.request_id, self.route)
    }
}

/// What the body stage does next.
#[derive(Debug)]
pub enum BodyNext {
    /// The body passed: the request counts as allowed and continues (what rules in
    /// shadow would have refused is in its caller's `shadowed`).
    Pass(Waiting),
    /// Wait for more of the body; `hold`: keep it from the upstream meanwhile.
    More(Box<BodyStage>, bool),
    /// Refused; recorded with the waiting request.
    Refuse(Denial, Waiting),
}

/// One of the headers, as the body check reads it (each name said twice is several).
fn find<'a>(raw: &'a [u8], name: Option<&str>) -> Presented<'a> {
    let Some(name) = name else {
        return Presented::None;
    };
    header_map::pairs(raw)
        .filter(|(n, _)| *n == name.as_bytes())
        .fold(Presented::None, |found, (_, v)| found.and(v))
}

impl BodyStage {
    /// Step 5 of the request path, at the headers: a declared size over the limit and bad
    /// webhook headers are refused at once; a route that checks its body holds it (the
    /// headers pause, so the upstream sees nothing until the body passes); any other
    /// route streams it and counts. `raw` is the request's header map; `levers` may set
    /// the webhook's and the body limit's modes.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        policy: &Policy,
        route: usize,
        verifier: Option<&Verifier>,
        raw: &[u8],
        end_of_stream: bool,
        request_id: &[u8],
        caller: Caller,
        levers: &crate::levers::Levers,
        store: &impl SharedStore,
        now_secs: u64,
    ) -> BodyNext {
        use crate::levers::Mode;
        let Some(rules) = policy.routes.get(route) else {
            return BodyNext::Pass(Waiting {
                route,
                request_id: request_id.to_vec(),
                caller,
            });
        };
        let head = BodyHead {
            content_length: match find(raw, Some("content-length")) {
                Presented::One(v) => Some(v),
                _ => None,
            },
            end_of_stream,
            signature: find(raw, verifier.map(|v| v.provider().signature_header())),
            timestamp: find(raw, verifier.and_then(|v| v.provider().timestamp_header())),
        };
        let mut waiting = Waiting {
            route,
            request_id: request_id.to_vec(),
            caller,
        };
        let webhook_mode = match verifier {
            Some(_) => levers
                .rule_mode("webhook:", &rules.name)
                .unwrap_or(rules.webhook_mode),
            None => Mode::Off,
        };
        let body_mode = levers
            .rule_mode("body:", &rules.name)
            .unwrap_or(rules.body_mode);
        let pick = |wanted: Mode| {
            let body = if body_mode == wanted {
                rules.body
            } else {
                UNLIMITED
            };
            (body, verifier.filter(|_| webhook_mode == wanted))
        };
        let shadow = if webhook_mode == Mode::Shadow || body_mode == Mode::Shadow {
            let (body, v) = pick(Mode::Shadow);
            match body::start(&body, v, &head, now_secs) {
                Ok(check) => Some(check),
                Err(refusal) => {
                    waiting.caller.would_refuse(route, refusal.into());
                    None
                }
            }
        } else {
            None
        };
        let (body, v) = pick(Mode::Enforce);
        match body::start(&body, v, &head, now_secs) {
            Err(refusal) => BodyNext::Refuse(refusal.into(), waiting),
            Ok(check) => {
                let stage = BodyStage {
                    check,
                    webhook_enforced: webhook_mode == Mode::Enforce,
                    shadow,
                    held: 0,
                    waiting,
                };
                if end_of_stream {
                    return stage.finish(verifier, store, now_secs);
                }
                let hold = stage.holds();
                BodyNext::More(Box::new(stage), hold)
            }
        }
    }

    /// Whether either check holds the body.
    fn holds(&self) -> bool {
        self.check.holds() || self.shadow.as_ref().is_some_and(BodyCheck::holds)
    }

    /// The body's bytes so far, fed or counted.
    pub fn seen(&self) -> u64 {
        self.check.seen()
    }

    /// The part of a body of `body_size` bytes not yet fed to the check, as (offset,
    /// length): a held body arrives whole each time (Envoy buffers what the filter paused
    /// on), so only new bytes are copied into the VM. `None`: a streamed body, counted
    /// only.
    pub fn unseen(&self, body_size: usize) -> Option<(usize, usize)> {
        self.holds()
            .then(|| (self.held, body_size.saturating_sub(self.held)))
    }

    /// The body grew to `body_size` bytes; `new` is what [`BodyStage::unseen`] asked for
    /// (empty for a streamed body). At the end of the stream the body is finished.
    pub fn on_body(
        mut self,
        body_size: usize,
        new: &[u8],
        end_of_stream: bool,
        verifier: Option<&Verifier>,
        store: &impl SharedStore,
        now_secs: u64,
    ) -> BodyNext {
        let held = self.holds();
        // Held, the body arrives whole each time and `new` is what is new; streamed, each
        // piece arrives once and `body_size` is its size.
        let step = |check: &mut BodyCheck| {
            if !held {
                check.count(body_size as u64)
            } else if check.holds() {
                check.feed(new)
            } else {
                check.count(new.len() as u64)
            }
        };
        if held {
            self.held = self.held.max(body_size);
        }
        if let Err(refusal) = step(&mut self.check) {
            return BodyNext::Refuse(refusal.into(), self.waiting);
        }
        if let Some(shadow) = &mut self.shadow
            && let Err(refusal) = step(shadow)
        {
            self.shadow = None;
            self.would_refuse(refusal.into());
        }
        if !end_of_stream {
            let hold = self.holds();
            return BodyNext::More(Box::new(self), hold);
        }
        self.finish(verifier, store, now_secs)
    }

    /// A rule in shadow would have refused the request.
    fn would_refuse(&mut self, denial: Denial) {
        let route = self.waiting.route;
        let caller = &mut self.waiting.caller;
        caller.shadowed.push(super::Shadowed {
            rule: shadow_rule(route, denial),
            denial,
        });
        caller.shadow_refused = true;
    }

    /// The end of the body (or trailers): the JSON must be complete, the signature must
    /// match and not be a replay.
    pub fn finish(
        mut self,
        verifier: Option<&Verifier>,
        store: &impl SharedStore,
        now_secs: u64,
    ) -> BodyNext {
        let enforced = verifier.filter(|_| self.webhook_enforced);
        let shadowed = verifier.filter(|_| !self.webhook_enforced);
        if let Some(shadow) = self.shadow.take()
            && let Err(refusal) = shadow.finish(shadowed, store, now_secs)
        {
            self.would_refuse(refusal.into());
        }
        match self.check.finish(enforced, store, now_secs) {
            Ok(()) => BodyNext::Pass(self.waiting),
            Err(refusal) => BodyNext::Refuse(refusal.into(), self.waiting),
        }
    }
}

/// Which rule of a route a body-stage refusal belongs to: a signature's to its webhook
/// check, any other to its body limit.
fn shadow_rule(route: usize, denial: Denial) -> crate::levers::Rule {
    match denial {
        Denial::Signature(_) => crate::levers::Rule::Webhook(route),
        _ => crate::levers::Rule::Body(route),
    }
}

#[cfg(test)]
#[cfg(all(feature = "yaml", feature = "test-tokens"))]
mod tests {
    use super::*;
    use crate::authn::jwt::test_tokens::{mint, public_key};
    use crate::authn::jwt::{Alg, KeySet};
    use crate::authn::{AuthFailure, JwtFailure};
    use crate::body::webhook::{Provider, SignatureError, sign};
    use crate::body::{BodyError, json::JsonError};
    use crate::clock::FixedClock;
    use crate::policy::load_yaml;
    use crate::store::MemoryStore;
    use std::cell::Cell;

    const NOW: u64 = 1_767_225_600;
    const DEMO: &str = "ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
    const SECRET: &str = "github-secret-0123456789";

    use header_map::serialize_text as map;

    fn get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut pairs = vec![(":method", "GET"), (":path", path), ("x-request-id", "r-1")];
        pairs.extend_from_slice(extra);
        map(&pairs)
    }

    /// Runs the headers stage as the filter does, the client address given.
    fn outcome(
        policy: &Policy,
        store: &MemoryStore,
        clock: &FixedClock,
        raw: &[u8],
        eos: bool,
    ) -> Outcome {
        let headers = Headers::read(&policy.api_key_header, raw);
        assert!(preflight(policy, &headers).is_none());
        let head = headers.head(b"10.0.0.1:4000", None);
        on_request_headers(
            policy,
            &Caches::default(),
            &[KeySet::default()],
            &head,
            eos,
            store,
            clock,
        )
    }

    #[test]
    fn the_client_address_is_read_only_for_callers_without_a_credential_or_by_ip_limits() {
        let (policy, _, _) = super::super::tests::setup();
        let raw = get("/v1/x", &[("x-api-key", DEMO)]);
        let keyed = Headers::read(&policy.api_key_header, &raw);
        let raw = get("/v1/x", &[]);
        let bare = Headers::read(&policy.api_key_header, &raw);
        assert!(!needs_source_address(&policy, &keyed, false));
        assert!(
            needs_source_address(&policy, &keyed, true),
            "a route limits by ip"
        );
        assert!(needs_source_address(&policy, &bare, false));
    }

    #[test]
    fn an_allowed_request_loses_spoofed_names_and_gains_its_identity_in_order() {
        let (mut policy, store, clock) = super::super::tests::setup();
        policy.hide_credentials = true;
        let raw = get(
            "/v1/x",
            &[("x-api-key", DEMO), ("x_gatehouse_user", "admin")],
        );
        let headers = Headers::read(&policy.api_key_header, &raw);
        let head = headers.head(b"", None);
        let Outcome::Pass {
            allowed,
            check_body,
        } = on_request_headers(
            &policy,
            &Caches::default(),
            &[KeySet::default()],
            &head,
            true,
            &store,
            &clock,
        )
        else {
            panic!("allowed");
        };
        assert!(
            !check_body,
            "no body and no webhook: counted at the headers"
        );
        let edits: Vec<Edit<'_>> = request_edits(&policy, &headers, &allowed).collect();
        assert_eq!(edits.first(), Some(&Edit::Remove("x_gatehouse_user")));
        assert_eq!(
            edits.last(),
            Some(&Edit::Remove("x-api-key")),
            "hidden last"
        );
        let set: Vec<&str> = edits
            .iter()
            .filter_map(|e| match e {
                Edit::Set(n, _) => Some(*n),
                Edit::Remove(_) => None,
            })
            .collect();
        assert_eq!(
            set,
            [
                "x-gatehouse-user",
                "x-gatehouse-tenant",
                "x-gatehouse-plan",
                "x-gatehouse-key-id"
            ]
        );
        policy.hide_credentials = false;
        assert!(
            !request_edits(&policy, &headers, &allowed).any(|e| e == Edit::Remove("x-api-key"))
        );
    }

    #[test]
    fn a_request_with_a_body_goes_through_the_body_stage() {
        let (policy, store, clock) = super::super::tests::setup();
        let raw = get("/v1/x", &[("x-api-key", DEMO)]);
        assert!(matches!(
            outcome(&policy, &store, &clock, &raw, false),
            Outcome::Pass {
                check_body: true,
                ..
            }
        ));
    }

    #[test]
    fn key_use_is_reported_for_an_api_key_only_with_a_feed() {
        let (mut policy, store, clock) = super::super::tests::setup();
        let raw = get("/v1/x", &[("x-api-key", DEMO)]);
        let Outcome::Pass { allowed, .. } = outcome(&policy, &store, &clock, &raw, true) else {
            panic!("allowed");
        };
        assert_eq!(key_use(&policy, &allowed, NOW), None, "no feed");
        policy.feed = Some(crate::policy::FeedPolicy {
            cluster: "control".into(),
            authority: "control".into(),
            path: "/v1/feed".into(),
            token_env: "T".into(),
            interval_secs: 1,
            wait_secs: 1,
            staleness_secs: 60,
            on_stale: crate::policy::OnStale::FailClosed,
        });
        assert_eq!(key_use(&policy, &allowed, NOW), Some(("key_demo", NOW)));
        let anonymous = Allowed {
            identity: None,
            credential: None,
            ..allowed.clone()
        };
        assert_eq!(key_use(&policy, &anonymous, NOW), None);
        let caller = Caller::of(
            &policy,
            allowed,
            &Headers::default().head(b"1.2.3.4:5", None),
            NOW,
        );
        assert_eq!(caller.key_use_at, Some(NOW));
        assert_eq!(caller.seen(b"r", 3).route, Some(3));
    }

    #[test]
    fn a_token_with_an_unknown_kid_asks_for_its_providers_jwks_again_and_others_do_not() {
        let src = "version: 1\njwt:\n  issuers: [https://idp.example]\n  audiences: [api]\n  jwks_url: { cluster: idp, path: /jwks }\nroutes:\n  - name: api\n    match: { path_prefix: / }\n";
        let mut policy = load_yaml("p.yaml", src).unwrap().policy;
        policy.rate_limit.slots = 1024;
        policy.rate_limit.address_slots = 1024;
        let store = MemoryStore::default();
        crate::limit::prepare(&store, &policy.rate_limit.table(), &[7; 32]).unwrap();
        let clock = FixedClock::at_secs(NOW);
        let keys = [KeySet::new(vec![public_key(Alg::ES256, Some("known"))])];
        let token = |kid| {
            let claims = format!(
                r#"{{"sub":"u","tenant":"t","plan":"free","iss":"https://idp.example","aud":"api","iat":{},"exp":{}}}"#,
                NOW - 60,
                NOW + 600
            );
            format!("Bearer {}", mint(Alg::ES256, Some(kid), &claims))
        };
        let wanted = || store.get("jwks/0/want").is_some();
        let run = |bearer: &str| {
            let raw = get("/x", &[("authorization", bearer)]);
            let headers = Headers::read(&policy.api_key_header, &raw);
            let head = headers.head(b"", None);
            on_request_headers(
                &policy,
                &Caches::default(),
                &keys,
                &head,
                true,
                &store,
                &clock,
            )
        };
        let known = run(&token("known"));
        assert!(matches!(known, Outcome::Pass { .. }), "{known:?}");
        assert!(matches!(run("Bearer not.a.token"), Outcome::Refuse { .. }));
        assert!(!wanted(), "a bad token is no reason to fetch");
        let Outcome::Refuse { denial, refused } = run(&token("rotated")) else {
            panic!("refused");
        };
        assert_eq!(
            denial,
            Denial::Unauthorized(AuthFailure::Jwt(JwtFailure::Invalid("jwt_unknown_kid")))
        );
        assert!(refused.unknown_kid);
        assert!(wanted(), "the provider's JWKS is fetched again");
    }

    #[test]
    fn a_preflight_is_answered_or_refused_before_authentication() {
        let src = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/cors.yaml"
        ));
        let policy = load_yaml("cors.yaml", src).unwrap().policy;
        let preflight_to = |path: &str, origin: &str| {
            let raw = map(&[
                (":method", "OPTIONS"),
                (":path", path),
                ("origin", origin),
                ("access-control-request-method", "GET"),
            ]);
            let headers = Headers::read(&policy.api_key_header, &raw);
            preflight(&policy, &headers)
        };
        let ok = preflight_to("/v1/a", "https://app.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(ok.status, 204);
        assert_eq!(
            preflight_to("/v1/a", "https://evil.example").unwrap(),
            Err(Denial::CorsRejected(crate::cors::CorsRefusal::Origin))
        );
        assert!(
            preflight_to("/healthz", "https://app.example.com")
                .unwrap()
                .is_err()
        );
        let raw = get("/public/a", &[("origin", "https://app.example.com")]);
        let headers = Headers::read(&policy.api_key_header, &raw);
        assert!(
            preflight(&policy, &headers).is_none(),
            "a GET is no preflight"
        );
        let facts = Seen::unrouted(&headers);
        assert_eq!((facts.route, facts.source_address), (None, &b""[..]));
    }

    #[test]
    fn the_health_path_is_answered_before_cors_routing_and_credentials() {
        let src = concat!(
            "version: 1\n",
            "feed: { cluster: control, token_env: T }\n",
            "health: { path: /readyz }\n",
            "cors: { allowed_origins: [https://app.example.com] }\n",
            "routes:\n  - match: { path_prefix: / }\n",
        );
        let policy = load_yaml("p.yaml", src).unwrap().policy;
        let store = MemoryStore::default();
        let clock = FixedClock::at_secs(NOW);
        let ask = |pairs: &[(&str, &str)]| {
            let raw = map(pairs);
            let headers = Headers::read(&policy.api_key_header, &raw);
            local_answer(&policy, &headers, &store, &clock)
        };
        // A bad key on an internal catch-all would be a 401: the probe never gets there.
        let probe = ask(&[
            (":method", "GET"),
            (":path", "/readyz?x=1"),
            ("x-api-key", "not-a-key"),
        ]);
        match probe {
            Some(Local::Probe { reply, ready }) => {
                assert!(!ready);
                assert_eq!(reply.status, 503);
                assert!(reply.body.contains("\"NOT_READY\""), "{}", reply.body);
            }
            other => panic!("{other:?}"),
        }
        let preflight = |path| {
            ask(&[
                (":method", "OPTIONS"),
                (":path", path),
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
            ])
        };
        assert_eq!(
            preflight("/readyz"),
            Some(Local::Refuse(Denial::MethodNotAllowed)),
            "the health path is the filter's own, CORS or not"
        );
        assert!(matches!(preflight("/v1/x"), Some(Local::Reply(r)) if r.status == 204));
        assert_eq!(ask(&[(":method", "GET"), (":path", "/v1/x")]), None);
        assert_eq!(
            ask(&[(":method", "GET"), (":path", "//readyz")]),
            None,
            "another spelling is routed"
        );
    }

    #[test]
    fn a_refusal_reads_the_client_address_only_when_its_log_line_or_audit_needs_it() {
        let (mut policy, _, _) = super::super::tests::setup();
        let raw = get("/v1/x", &[]);
        let headers = Headers::read(&policy.api_key_header, &raw);
        let refused = Refused::default();
        let head = headers.head(b"", None);
        let seen = Seen::refused(&headers, &head, &refused);
        let reads = Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            b"203.0.113.9:1234".to_vec()
        };
        let denial = Denial::NoRoute;
        let mut tally = Tally::new(&[], false);
        policy.logging.refusals = Some(LogLevel::Info);
        let line = record_refusal(
            &policy,
            Some(&mut tally),
            denial,
            UnixNanos(0),
            &seen,
            None,
            |_| false,
            read,
        );
        assert_eq!(
            (line, reads.get()),
            (None, 0),
            "the host drops the line: no read"
        );
        let line = record_refusal(
            &policy,
            Some(&mut tally),
            denial,
            UnixNanos(0),
            &seen,
            None,
            |_| true,
            read,
        );
        let (level, line) = line.unwrap();
        assert_eq!(level, LogLevel::Info);
        assert!(
            line.contains("203.0.113.9") && !line.contains("1234"),
            "{line}"
        );
        assert_eq!(reads.get(), 1);
        let known = Seen {
            source_address: b"198.51.100.7:9",
            ..seen
        };
        let (_, line) = record_refusal(
            &policy,
            None,
            denial,
            UnixNanos(0),
            &known,
            None,
            |_| true,
            read,
        )
        .unwrap();
        assert!(line.contains("198.51.100.7"), "{line}");
        assert_eq!(reads.get(), 1, "read by the request path already");
        policy.logging.refusals = None;
        assert!(
            record_refusal(
                &policy,
                None,
                denial,
                UnixNanos(0),
                &seen,
                None,
                |_| true,
                read
            )
            .is_none()
        );
        assert_eq!(reads.get(), 1, "no log line and no feed: no address");
    }

    fn hooks() -> (Policy, MemoryStore, Verifier) {
        let src = "version: 1\nroutes:\n  - name: hooks\n    match: { path: /hooks, methods: [POST] }\n    audience: external\n    body: { max_bytes: 64 }\n    webhook: { provider: github, secrets_env: [S], replay_cache: { slots: 64 } }\n  - name: json\n    match: { path: /json, methods: [POST] }\n    audience: external\n    body: { max_bytes: 64, json: { max_string_bytes: 4, max_array_items: 2 } }\n  - name: stream\n    match: { path: /stream, methods: [POST] }\n    audience: external\n    body: { max_bytes: 10 }\n";
        let policy = load_yaml("hooks.yaml", src).unwrap().policy;
        let webhook = policy.routes[0].webhook.clone().unwrap();
        let verifier = Verifier::new(&webhook, "hooks", |_| Some(SECRET.into())).unwrap();
        let store = MemoryStore::default();
        crate::body::replay_cache::prepare(&store, "hooks", 64).unwrap();
        (policy, store, verifier)
    }

    fn caller() -> Caller {
        Caller {
            plan: None,
            identity: None,
            credential: None,
            key_use_at: None,
            shadow_refused: false,
            shadowed: Vec::new(),
            method: b"POST".to_vec(),
            source_address: Vec::new(),
            forwarded_for: None,
        }
    }

    fn start(
        policy: &Policy,
        route: usize,
        v: Option<&Verifier>,
        raw: &[u8],
        eos: bool,
        store: &MemoryStore,
    ) -> BodyNext {
        let levers = crate::levers::Levers::default();
        BodyStage::start(
            policy,
            route,
            v,
            raw,
            eos,
            b"r-1",
            caller(),
            &levers,
            store,
            NOW,
        )
    }

    #[test]
    fn a_held_body_is_fed_only_its_new_bytes_and_a_signed_one_passes_once() {
        let (policy, store, v) = hooks();
        let body = b"{\"action\":\"opened\"}";
        let sig = sign(&Provider::Github, SECRET.as_bytes(), 0, body);
        let raw = map(&[("x-hub-signature-256", &sig)]);
        let deliver = || {
            let BodyNext::More(stage, hold) = start(&policy, 0, Some(&v), &raw, false, &store)
            else {
                panic!("waits for the body");
            };
            assert!(hold, "a webhook body is held");
            assert_eq!(stage.unseen(5), Some((0, 5)));
            let BodyNext::More(stage, _) =
                stage.on_body(5, &body[..5], false, Some(&v), &store, NOW)
            else {
                panic!("more");
            };
            assert_eq!(
                stage.unseen(body.len()),
                Some((5, body.len() - 5)),
                "only new bytes"
            );
            stage.on_body(body.len(), &body[5..], true, Some(&v), &store, NOW)
        };
        assert!(matches!(deliver(), BodyNext::Pass(_)));
        match deliver() {
            BodyNext::Refuse(d, waiting) => {
                assert_eq!(d, Denial::Signature(SignatureError::Replayed));
                assert_eq!((waiting.route, waiting.seen().request_id), (0, &b"r-1"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_webhook_without_its_signature_is_refused_at_the_headers() {
        let (policy, store, v) = hooks();
        let raw = map(&[("content-length", "2")]);
        assert!(matches!(
            start(&policy, 0, Some(&v), &raw, true, &store),
            BodyNext::Refuse(Denial::Signature(SignatureError::Missing), _)
        ));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_any_body() {
        let (policy, store, _) = hooks();
        let raw = map(&[("content-length", "65")]);
        assert!(matches!(
            start(&policy, 1, None, &raw, false, &store),
            BodyNext::Refuse(Denial::Body(BodyError::TooLarge), _)
        ));
        let twice = map(&[("content-length", "65"), ("content-length", "65")]);
        assert!(
            matches!(
                start(&policy, 1, None, &twice, false, &store),
                BodyNext::More(..)
            ),
            "a repeated length is no declared length: the count decides"
        );
    }

    #[test]
    fn a_streamed_body_is_counted_not_copied_and_refused_past_its_limit() {
        let (policy, store, _) = hooks();
        let BodyNext::More(stage, hold) = start(&policy, 2, None, &[], false, &store) else {
            panic!("waits");
        };
        assert!(!hold, "streamed");
        assert_eq!(stage.unseen(8), None, "nothing is copied");
        let BodyNext::More(stage, _) = stage.on_body(8, &[], false, None, &store, NOW) else {
            panic!("within the limit");
        };
        assert!(matches!(
            stage.on_body(11, &[], false, None, &store, NOW),
            BodyNext::Refuse(Denial::Body(BodyError::TooLarge), _)
        ));
    }

    #[test]
    fn trailers_finish_a_held_json_body() {
        let (policy, store, _) = hooks();
        let BodyNext::More(stage, _) = start(&policy, 1, None, &[], false, &store) else {
            panic!("waits");
        };
        let BodyNext::More(stage, _) = stage.on_body(3, b"[1,", false, None, &store, NOW) else {
            panic!("more");
        };
        assert!(matches!(
            stage.finish(None, &store, NOW),
            BodyNext::Refuse(Denial::Body(BodyError::Json(JsonError::Malformed)), _)
        ));
        let BodyNext::More(stage, _) = start(&policy, 1, None, &[], false, &store) else {
            panic!("waits");
        };
        let BodyNext::More(stage, _) = stage.on_body(5, b"[1,2]", false, None, &store, NOW) else {
            panic!("more");
        };
        let BodyNext::Pass(Waiting { caller, .. }) = stage.finish(None, &store, NOW) else {
            panic!("passes");
        };
        let mut tally = Tally::new(&[], false);
        caller.count_allowed(&mut tally);
    }

    #[test]
    fn a_route_outside_the_policy_passes_the_body_stage() {
        let (policy, store, _) = hooks();
        assert!(matches!(
            start(&policy, 99, None, &[], false, &store),
            BodyNext::Pass(_)
        ));
    }
}
