//! The HTTP filter: reads the request, asks the core, applies its edits or sends its reply.

use crate::host::*;
use crate::root::*;
use gatehouse_core::authn::jwks_cache;
use gatehouse_core::clock::Clock;
use gatehouse_core::observe::tally::{RefusalFacts, SignatureProvider};
use gatehouse_core::pipeline::{
    Credential, Decision, IDENTITY_HEADER_PREFIX, Identity, Presented, RequestHead,
    decide_explained,
};
use gatehouse_core::policy::Policy;
use gatehouse_core::refusal::Denial;
use gatehouse_core::time::UnixNanos;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use std::rc::Rc;

pub(crate) struct Filter {
    pub(crate) policy: Option<Rc<Policy>>,
    pub(crate) keys: SharedKeys,
    /// The worker's tally: what this stream decided is added there, never sent from here.
    pub(crate) tally: Option<SharedTally>,
    /// The request's rate-limit quota, for `RateLimit-*` on the response.
    pub(crate) quota: Option<gatehouse_core::limit::Quota>,
    /// What the response needs from the request (route rules, allowed origin, request id).
    pub(crate) response: Option<gatehouse_core::response::Pending>,
    /// The standard body replacing an upstream error's, written at the end of its body.
    pub(crate) replacement: Option<String>,
    pub(crate) webhooks: Webhooks,
    /// The request body under the route's body rules, between headers and end of stream.
    pub(crate) body: Option<BodyState>,
    /// [`Root::by_ip`], from the policy this stream started under.
    pub(crate) by_ip: bool,
}

impl Context for Filter {}

impl HttpContext for Filter {
    /// Every response passes here, gatehouse's own refusals included (Envoy runs a local
    /// reply through the filter's response callbacks): security headers, CORS headers,
    /// upstream error hygiene ([`gatehouse_core::response`]), and `RateLimit-*` when asked.
    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let quota: Vec<(&'static str, String)> = self
            .quota
            .take()
            .map(|q| gatehouse_core::refusal::quota_headers(&q).to_vec())
            .unwrap_or_default();
        let edits = match (&self.policy, &self.response) {
            (Some(policy), Some(pending)) => {
                // One host call for the map: the rules look at several headers.
                let raw = crate::host::entry::header_map(MapType::HttpResponseHeaders);
                let headers: Vec<(&[u8], &[u8])> =
                    gatehouse_core::request::header_map::pairs(&raw).collect();
                pending.on_response(policy, &headers, HostClock.now())
            }
            _ => gatehouse_core::response::Edits::default(),
        };
        if edits.replace_body.is_some() && end_of_stream {
            // An upstream error without a body: there is no body to rewrite, so it is
            // answered locally with the same status (Envoy sends a local reply made while
            // the response headers are still here straight to the client).
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
                .unwrap_or(502);
            if let Some(mut reply) = edits.into_reply(status) {
                reply.headers.extend(quota);
                log(
                    LogLevel::Debug,
                    &format!("replaced upstream {status} without a body"),
                );
                send_reply(&reply);
                return Action::Pause;
            }
            return Action::Continue;
        }
        for name in &edits.remove {
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
        }
        for (name, value) in edits.set.iter().chain(&quota) {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
        }
        if edits.replace_body.is_some() {
            log(LogLevel::Debug, "replacing an upstream error body");
        }
        self.replacement = edits.replace_body;
        Action::Continue
    }

    /// Empties each chunk of a replaced upstream error as it passes (nothing is
    /// buffered) and writes the standard body in its place at the end of the stream.
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(body) = &self.replacement {
            let data = if end_of_stream { body.as_bytes() } else { b"" };
            let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, data);
            if end_of_stream {
                self.replacement = None;
            }
        }
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(policy) = self.policy.clone() else {
            send_refusal(Denial::NotConfigured, b"", false);
            return Action::Pause;
        };
        // One host call for the whole map: cheaper than one call per header we need, and
        // we must see every name anyway to strip client-sent identity headers.
        let raw = crate::host::entry::header_map(MapType::HttpRequestHeaders);

        let mut method: &[u8] = b"";
        let mut path: &[u8] = b"";
        let mut request_id: &[u8] = b"";
        let mut api_key = Presented::None;
        let mut authorization = Presented::None;
        let mut method_override = Presented::None;
        let mut forwarded: Vec<&[u8]> = Vec::new();
        let mut origin: Option<&[u8]> = None;
        let mut cors_method: Option<&[u8]> = None;
        let mut cors_headers: Vec<&[u8]> = Vec::new();
        let mut spoofed: Vec<&str> = Vec::new();
        for (name, value) in gatehouse_core::request::header_map::pairs(&raw) {
            match name {
                b":method" => method = value,
                b":path" => path = value,
                b"x-request-id" => request_id = value,
                n if n == policy.api_key_header.as_bytes() => {
                    api_key = match api_key {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                b"authorization" => {
                    authorization = match authorization {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                b"x-forwarded-for" => forwarded.push(value),
                b"x-http-method-override" | b"x-http-method" | b"x-method-override" => {
                    method_override = match method_override {
                        Presented::None => Presented::One(value),
                        _ => Presented::Several,
                    }
                }
                b"origin" => origin = Some(value),
                b"access-control-request-method" => cors_method = Some(value),
                b"access-control-request-headers" => cors_headers.push(value),
                // Envoy's codecs admit only token characters in names, so a name is
                // always UTF-8 here; one that is not could not be removed by name.
                n if n.starts_with(IDENTITY_HEADER_PREFIX.as_bytes()) => {
                    if let Ok(n) = std::str::from_utf8(n) {
                        spoofed.push(n);
                    }
                }
                // Another spelling of a name gatehouse owns (`x_gatehouse_user`,
                // `X-Api_Key`): CGI-style upstreams read `_` as `-` in any case.
                n => match gatehouse_core::pipeline::classify_spelling(&policy.api_key_header, n) {
                    Some(gatehouse_core::pipeline::Spelling::Identity) => {
                        if let Ok(n) = std::str::from_utf8(n) {
                            spoofed.push(n);
                        }
                    }
                    Some(gatehouse_core::pipeline::Spelling::ApiKey) => {
                        api_key = Presented::Several
                    }
                    None => {}
                },
            }
        }
        // A CORS preflight carries no credentials: it is answered before authentication.
        if let Some(preflight) = gatehouse_core::cors::Preflight::from_request(
            method,
            path,
            origin,
            cors_method,
            &cors_headers,
        ) && let Some(answer) = gatehouse_core::cors::answer_preflight(&policy, &preflight)
        {
            match answer {
                Ok(reply) => send_reply(&reply),
                Err(denial) => {
                    let seen = Seen {
                        request_id,
                        method,
                        route: None,
                        identity: None,
                        credential: None,
                        source_address: &[],
                        forwarded_for: None,
                    };
                    self.record_refusal(&policy, denial, HostClock.now(), &seen, None);
                    send_refusal(denial, request_id, policy.verbose_errors);
                }
            }
            return Action::Pause;
        }
        // Repeated x-forwarded-for lines are one list (RFC 9110 §5.3).
        let forwarded_for = (!forwarded.is_empty()).then(|| forwarded.join(&b","[..]));
        // The client address counts only for callers without an identity (anonymous
        // limits) and for route limits `by: ip`: a request with a credential (an API key,
        // or a bearer token when the policy takes JWTs) is authenticated or refused, never
        // anonymous, so on a policy without the latter it costs no host call.
        let anonymous =
            !gatehouse_core::pipeline::presents_credential_in(&policy, api_key, authorization);
        let source_address = if anonymous || self.by_ip {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };

        let head = RequestHead {
            method,
            path,
            api_key,
            authorization,
            source_address: &source_address,
            forwarded_for: forwarded_for.as_deref(),
            method_override,
        };
        let keys = self
            .keys
            .try_borrow()
            .map(|k| Rc::clone(&k))
            .unwrap_or_default();
        // One clock reading for the decision and, when it refuses, the refusal's timestamp.
        let clock = gatehouse_core::clock::OnceClock::new(&HostClock);
        let (decision, refused) = decide_explained(&policy, &keys, &head, &HostStore, &clock);
        let facts = gatehouse_core::response::RequestFacts {
            method,
            path,
            origin,
            request_id,
            refused: matches!(decision, Decision::Deny(_)),
        };
        let route = match &decision {
            Decision::Allow(allowed) => Some(allowed.route),
            Decision::Deny(_) => None,
        };
        self.response = gatehouse_core::response::Pending::new(&policy, route, &facts);
        match decision {
            Decision::Allow(allowed) => {
                if allowed.limiter_retries > 0 || allowed.limiter_contention || allowed.feed_stale {
                    self.note_limiter(
                        allowed.limiter_retries,
                        allowed.limiter_contention,
                        allowed.feed_stale,
                    );
                }
                if allowed.feed_stale {
                    log(
                        LogLevel::Debug,
                        "feed cache is stale; serving from it (on_stale: keep_serving)",
                    );
                }
                if policy.rate_limit.headers_on_allowed {
                    self.quota = allowed.quota;
                }
                for name in spoofed {
                    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                }
                if let Some(identity) = &allowed.identity {
                    for (name, value) in identity.headers() {
                        let _ = hostcalls::set_map_value(
                            MapType::HttpRequestHeaders,
                            name,
                            Some(value),
                        );
                    }
                }
                for (name, value) in &allowed.claim_headers {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
                }
                if policy.hide_credentials {
                    let header = match allowed.credential {
                        Some(Credential::ApiKey) => Some(policy.api_key_header.as_str()),
                        Some(Credential::Jwt) => Some("authorization"),
                        None => None,
                    };
                    if let Some(name) = header {
                        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
                    }
                }
                // A key's use is reported (at most once a minute per worker) when the
                // policy has a feed; the clock was read for the decision already.
                let key_use = match (&allowed.identity, allowed.credential) {
                    (Some(i), Some(Credential::ApiKey)) if policy.feed.is_some() => {
                        Some((i.key_id.as_str(), clock.now().secs()))
                    }
                    _ => None,
                };
                if !body_checked(&policy, &self.webhooks, allowed.route, end_of_stream) {
                    // Nothing left to refuse it for: allowed, counted now.
                    if let Some(tally) = &self.tally
                        && let Ok(mut tally) = tally.try_borrow_mut()
                    {
                        tally.allowed(allowed.plan, allowed.identity.is_none(), key_use);
                    }
                    return Action::Continue;
                }
                let caller = Caller {
                    plan: allowed.plan,
                    key_use_at: key_use.map(|(_, at)| at),
                    identity: allowed.identity,
                    credential: allowed.credential,
                    method: method.to_vec(),
                    source_address: source_address.clone(),
                    forwarded_for: forwarded_for.clone(),
                };
                self.start_body(
                    &policy,
                    allowed.route,
                    &raw,
                    end_of_stream,
                    request_id,
                    caller,
                )
            }
            Decision::Deny(denial) => {
                let seen = Seen {
                    request_id,
                    method,
                    route: refused.route,
                    identity: refused.identity.as_ref(),
                    credential: refused.credential,
                    source_address: &source_address,
                    forwarded_for: forwarded_for.as_deref(),
                };
                if refused.limiter_retries > 0 {
                    self.note_limiter(refused.limiter_retries, false, false);
                }
                self.record_refusal(&policy, denial, clock.now(), &seen, None);
                // A token signed with a key we have not seen: the issuer may have rotated.
                if denial.reason() == "jwt_unknown_kid"
                    && let Some(p) = refused.jwt_provider
                    && let Some(url) = policy
                        .jwt
                        .as_ref()
                        .and_then(|j| j.providers.get(p)?.jwks_url.as_ref())
                {
                    jwks_cache::want_refetch(&HostStore, p, url, clock.now().secs());
                }
                send_refusal_at(clock.now(), denial, request_id, policy.verbose_errors);
                Action::Pause
            }
        }
    }

    /// A held body arrives whole each time (Envoy buffers what the filter paused on); a
    /// streamed one a piece at a time.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(mut state) = self.body.take() else {
            return Action::Continue;
        };
        let result = if state.check.holds() {
            // Only the bytes not seen yet are copied into the VM.
            let new = body_size.saturating_sub(state.held);
            let bytes = match new {
                0 => Vec::new(),
                n => hostcalls::get_buffer(BufferType::HttpRequestBody, state.held, n)
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            };
            state.held = state.held.max(body_size);
            state.check.feed(&bytes)
        } else {
            state.check.count(body_size as u64)
        };
        if let Err(denial) = result {
            self.refuse_body(denial, &state.caller.seen(&state.request_id, state.route));
            return Action::Pause;
        }
        if !end_of_stream {
            let holds = state.check.holds();
            self.body = Some(state);
            return if holds {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        self.finish_body(state)
    }

    /// Trailers end a body too (HTTP/2, or chunked with trailers): the last body callback
    /// then did not say `end_of_stream`.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.body.take() {
            Some(state) => self.finish_body(state),
            None => Action::Continue,
        }
    }
}

/// A request body under its route's body rules ([`gatehouse_core::body`]).
pub(crate) struct BodyState {
    pub(crate) check: gatehouse_core::body::BodyCheck,
    /// Bytes of a held body already fed to the check.
    pub(crate) held: usize,
    pub(crate) route: usize,
    pub(crate) request_id: Vec<u8>,
    pub(crate) caller: Caller,
}

/// What the headers said about an allowed request whose body is still to be checked: its
/// allowed count waits for the body, and a refusal of the body is logged with it.
pub(crate) struct Caller {
    /// [`gatehouse_core::pipeline::Allowed::plan`].
    pub(crate) plan: Option<usize>,
    pub(crate) identity: Option<Identity>,
    pub(crate) credential: Option<Credential>,
    /// When the key was used, for an API key whose use is reported.
    pub(crate) key_use_at: Option<u64>,
    pub(crate) method: Vec<u8>,
    pub(crate) source_address: Vec<u8>,
    pub(crate) forwarded_for: Option<Vec<u8>>,
}

/// A request as a refusal is recorded with ([`Filter::record_refusal`]).
pub(crate) struct Seen<'a> {
    pub(crate) request_id: &'a [u8],
    pub(crate) method: &'a [u8],
    pub(crate) route: Option<usize>,
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) credential: Option<Credential>,
    /// `source.address` when the request path read it, else empty (read on refusal).
    pub(crate) source_address: &'a [u8],
    pub(crate) forwarded_for: Option<&'a [u8]>,
}

impl Caller {
    pub(crate) fn seen<'a>(&'a self, request_id: &'a [u8], route: usize) -> Seen<'a> {
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

/// Whether an allowed request's body is still to be checked: the route has body rules
/// to apply to a body, or a webhook signature to verify ([`Filter::start_body`]).
pub(crate) fn body_checked(
    policy: &Policy,
    webhooks: &Webhooks,
    route: usize,
    end_of_stream: bool,
) -> bool {
    policy.routes.get(route).is_some()
        && !(end_of_stream && webhooks.get(route).and_then(Option::as_ref).is_none())
}

/// The route's path pattern as written in the policy.
pub(crate) fn route_pattern(route: &gatehouse_core::route::Route) -> &str {
    match &route.path {
        gatehouse_core::route::PathMatch::Exact(p)
        | gatehouse_core::route::PathMatch::Prefix(p) => p,
    }
}

impl Filter {
    /// Step 5 of the request path, at the headers: a declared size over the limit and bad
    /// webhook headers are refused at once; a route that checks its body holds it (the
    /// headers pause, so the upstream sees nothing until the body passes); any other
    /// route streams it and counts.
    pub(crate) fn start_body(
        &mut self,
        policy: &Policy,
        route: usize,
        headers: &[u8],
        end_of_stream: bool,
        request_id: &[u8],
        caller: Caller,
    ) -> Action {
        let Some(rules) = policy.routes.get(route) else {
            return Action::Continue;
        };
        let webhooks = Rc::clone(&self.webhooks);
        let verifier = webhooks.get(route).and_then(Option::as_ref);
        let find = |name: Option<&str>| {
            let mut found = Presented::None;
            for (n, v) in gatehouse_core::request::header_map::pairs(headers) {
                if Some(n) == name.map(str::as_bytes) {
                    found = match found {
                        Presented::None => Presented::One(v),
                        _ => Presented::Several,
                    };
                }
            }
            found
        };
        let head = gatehouse_core::body::BodyHead {
            content_length: match find(Some("content-length")) {
                Presented::One(v) => Some(v),
                _ => None,
            },
            end_of_stream,
            signature: find(verifier.map(|v| v.provider().signature_header())),
            timestamp: find(verifier.and_then(|v| v.provider().timestamp_header())),
        };
        let state = |check, caller| BodyState {
            check,
            held: 0,
            route,
            request_id: request_id.to_vec(),
            caller,
        };
        match gatehouse_core::body::start(rules, verifier, &head, now_secs()) {
            Err(denial) => {
                self.refuse_body(denial, &caller.seen(request_id, route));
                Action::Pause
            }
            Ok(check) if end_of_stream => self.finish_body(state(check, caller)),
            Ok(check) => {
                let holds = check.holds();
                self.body = Some(state(check, caller));
                if holds {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
        }
    }

    /// The end of the body: the JSON must be complete, the signature must match and not be
    /// a replay. Continuing releases a held body to the upstream.
    pub(crate) fn finish_body(&mut self, state: BodyState) -> Action {
        let webhooks = Rc::clone(&self.webhooks);
        let verifier = webhooks.get(state.route).and_then(Option::as_ref);
        match state.check.finish(verifier, &HostStore, now_secs()) {
            Ok(()) => {
                let caller = &state.caller;
                if let Some(tally) = &self.tally
                    && let Ok(mut tally) = tally.try_borrow_mut()
                {
                    let key_use = caller
                        .identity
                        .as_ref()
                        .zip(caller.key_use_at)
                        .map(|(i, at)| (i.key_id.as_str(), at));
                    tally.allowed(caller.plan, caller.identity.is_none(), key_use);
                }
                Action::Continue
            }
            Err(denial) => {
                self.refuse_body(denial, &state.caller.seen(&state.request_id, state.route));
                Action::Pause
            }
        }
    }

    pub(crate) fn refuse_body(&mut self, denial: Denial, seen: &Seen<'_>) {
        if let Some(response) = &mut self.response {
            // Our own refusal: the response rules must not take it for an upstream error.
            response.mark_local();
        }
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let provider = seen
            .route
            .and_then(|r| self.webhooks.get(r))
            .and_then(Option::as_ref)
            .map(|v| SignatureProvider::of(v.provider()));
        self.record_refusal(&policy, denial, HostClock.now(), seen, provider);
        send_refusal(denial, seen.request_id, policy.verbose_errors);
    }

    /// The limiter's lost compare-and-swaps and give-ups, and a credential served from a
    /// stale cache: rare, so kept off the common path.
    #[cold]
    #[inline(never)]
    pub(crate) fn note_limiter(&self, retries: u32, contention: bool, stale: bool) {
        if let Some(tally) = &self.tally
            && let Ok(mut tally) = tally.try_borrow_mut()
        {
            tally.limiter(retries, contention);
            if stale {
                tally.stale_served();
            }
        }
    }

    /// Counts a refusal, keeps its audit record (with a feed) and writes its log line at
    /// the policy's level. Reads the client's address when the request path did not.
    #[cold]
    #[inline(never)]
    pub(crate) fn record_refusal(
        &self,
        policy: &Policy,
        denial: Denial,
        at: UnixNanos,
        seen: &Seen<'_>,
        provider: Option<SignatureProvider>,
    ) {
        let level = policy
            .logging
            .refusals
            .map(host_level)
            .filter(|l| log_enabled(*l));
        let wants_client = level.is_some() || policy.feed.is_some();
        let read;
        let source = if seen.source_address.is_empty() && wants_client {
            read = hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .unwrap_or_default();
            read.as_slice()
        } else {
            seen.source_address
        };
        let client = wants_client.then(|| {
            gatehouse_core::pipeline::client_address(
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
        };
        if let Some(tally) = &self.tally
            && let Ok(mut tally) = tally.try_borrow_mut()
        {
            tally.refused(&facts, provider);
        }
        if let Some(level) = level {
            log(level, &facts.log_line());
        }
    }
}
