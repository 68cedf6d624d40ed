//! The HTTP filter: reads the request, asks the core, applies its edits or sends its reply.

use crate::host::{
    HostClock, HostStore, host_level, log, log_enabled, now_secs, send_refusal, send_refusal_at,
    send_reply,
};
use crate::root::{SharedKeys, SharedTally, Webhooks};
use gatehouse_core::clock::Clock;
use gatehouse_core::observe::tally::SignatureProvider;
use gatehouse_core::pipeline::stream::{
    self, BodyNext, BodyStage, Caller, Edit, Local, Outcome, Seen,
};
use gatehouse_core::policy::Policy;
use gatehouse_core::refusal::Denial;
use gatehouse_core::request::Headers;
use gatehouse_core::response::{AtHeaders, Edits};
use gatehouse_core::time::UnixNanos;
use gatehouse_core::worker::Caches;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};
use std::rc::Rc;

pub(crate) struct Filter {
    pub(crate) policy: Option<Rc<Policy>>,
    /// The worker's caches for that policy.
    pub(crate) caches: Rc<Caches>,
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
    pub(crate) body: Option<Box<BodyStage>>,
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
        let next = match (&self.policy, &self.response) {
            (Some(policy), Some(pending)) => {
                // One host call for the map: the rules look at several headers.
                let raw = crate::host::entry::header_map(MapType::HttpResponseHeaders);
                let headers: Vec<(&[u8], &[u8])> =
                    gatehouse_core::request::header_map::pairs(&raw).collect();
                pending
                    .on_response(policy, &headers, HostClock.now())
                    .at_headers(&headers, end_of_stream, quota)
            }
            _ => Edits::default().at_headers(&[], end_of_stream, quota),
        };
        match next {
            AtHeaders::Reply(reply) => {
                // Envoy sends a local reply made while the response headers are still
                // here straight to the client.
                log(
                    LogLevel::Debug,
                    &format!("replaced upstream {} without a body", reply.status),
                );
                send_reply(&reply);
                Action::Pause
            }
            AtHeaders::Edit(edits) => {
                for name in &edits.remove {
                    let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
                }
                for (name, value) in &edits.set {
                    let _ =
                        hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
                }
                if edits.replace_body.is_some() {
                    log(LogLevel::Debug, "replacing an upstream error body");
                }
                self.replacement = edits.replace_body;
                Action::Continue
            }
        }
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
        let headers = Headers::read(&policy.api_key_header, &raw);
        if let Some(answer) = stream::local_answer(&policy, &headers, &HostStore, &HostClock) {
            match answer {
                Local::Reply(reply) => send_reply(&reply),
                // A probe's answer, not a refusal: counted apart, never logged or audited.
                Local::Probe { reply, ready } => {
                    if let Some(tally) = &self.tally
                        && let Ok(mut tally) = tally.try_borrow_mut()
                    {
                        tally.health(ready);
                    }
                    send_reply(&reply);
                }
                Local::Refuse(denial) => {
                    let seen = Seen::unrouted(&headers);
                    self.record_refusal(&policy, denial, HostClock.now(), &seen, None);
                    send_refusal(denial, headers.request_id, policy.verbose_errors);
                }
            }
            return Action::Pause;
        }
        // An allowlist by CIDR needs every caller's address, not only an anonymous one's.
        let by_ip = self.by_ip || self.caches.levers.has_cidrs();
        let source_address = if stream::needs_source_address(&policy, &headers, by_ip) {
            source_address()
        } else {
            Vec::new()
        };
        let forwarded_for = headers.forwarded_for();
        let head = headers.head(&source_address, forwarded_for.as_deref());
        let keys = self
            .keys
            .try_borrow()
            .map(|k| Rc::clone(&k))
            .unwrap_or_default();
        // One clock reading for the decision and, when it refuses, the refusal's timestamp.
        let clock = gatehouse_core::clock::OnceClock::new(&HostClock);
        let outcome = stream::on_request_headers(
            &policy,
            &self.caches,
            &keys,
            &head,
            end_of_stream,
            &HostStore,
            &clock,
        );
        let (route, refused) = match &outcome {
            Outcome::Pass { allowed, .. } => (Some(allowed.route), false),
            Outcome::Refuse { .. } => (None, true),
        };
        let facts = gatehouse_core::response::RequestFacts {
            method: headers.method,
            path: headers.path,
            origin: headers.origin,
            request_id: headers.request_id,
            refused,
        };
        self.response = gatehouse_core::response::Pending::new(&policy, route, &facts);
        match outcome {
            Outcome::Refuse { denial, refused } => {
                if refused.limiter_retries > 0 {
                    self.note_limiter(refused.limiter_retries, false, false);
                }
                if refused.allowlisted {
                    self.note_allowlisted();
                }
                let seen = Seen::refused(&headers, &head, &refused);
                self.record_refusal(&policy, denial, clock.now(), &seen, None);
                send_refusal_at(
                    clock.now(),
                    denial,
                    headers.request_id,
                    policy.verbose_errors,
                );
                Action::Pause
            }
            Outcome::Pass {
                allowed,
                check_body,
            } => {
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
                if allowed.allowlisted {
                    self.note_allowlisted();
                }
                if !allowed.shadow.is_empty() {
                    let seen = Seen::allowed(&headers, &head, &allowed);
                    self.record_would_refuse(&policy, &allowed.shadow, clock.now(), &seen);
                }
                for edit in stream::request_edits(&policy, &headers, &allowed) {
                    let _ = match edit {
                        Edit::Remove(name) => {
                            hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
                        }
                        Edit::Set(name, value) => {
                            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                        }
                    };
                }
                // The clock was read for the decision already.
                let now = clock.now().secs();
                if !check_body {
                    // Nothing left to refuse it for: allowed, counted now.
                    if let Some(tally) = &self.tally
                        && let Ok(mut tally) = tally.try_borrow_mut()
                    {
                        let key_use = stream::key_use(&policy, &allowed, now);
                        tally.allowed_shadowed(
                            allowed.plan,
                            allowed.identity.is_none(),
                            key_use,
                            !allowed.shadow.is_empty(),
                        );
                    }
                    return Action::Continue;
                }
                let route = allowed.route;
                let caller = Caller::of(&policy, allowed, &head, now);
                let webhooks = Rc::clone(&self.webhooks);
                let verifier = webhooks.get(route).and_then(Option::as_ref);
                let next = BodyStage::start(
                    &policy,
                    route,
                    verifier,
                    &raw,
                    end_of_stream,
                    headers.request_id,
                    caller,
                    &self.caches.levers.get(),
                    &HostStore,
                    now_secs(),
                );
                self.body_next(next)
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(stage) = self.body.take() else {
            return Action::Continue;
        };
        let new = match stage.unseen(body_size) {
            Some((at, n)) if n > 0 => hostcalls::get_buffer(BufferType::HttpRequestBody, at, n)
                .ok()
                .flatten()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let webhooks = Rc::clone(&self.webhooks);
        let verifier = webhooks.get(stage.waiting.route).and_then(Option::as_ref);
        let next = stage.on_body(
            body_size,
            &new,
            end_of_stream,
            verifier,
            &HostStore,
            now_secs(),
        );
        self.body_next(next)
    }

    /// Trailers end a body too (HTTP/2, or chunked with trailers): the last body callback
    /// then did not say `end_of_stream`.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(stage) = self.body.take() else {
            return Action::Continue;
        };
        let webhooks = Rc::clone(&self.webhooks);
        let verifier = webhooks.get(stage.waiting.route).and_then(Option::as_ref);
        let next = stage.finish(verifier, &HostStore, now_secs());
        self.body_next(next)
    }
}

/// `source.address`, the connection's peer (a host call).
fn source_address() -> Vec<u8> {
    hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Filter {
    /// Applies the body stage's answer: continue, wait (holding or streaming), or refuse.
    fn body_next(&mut self, next: BodyNext) -> Action {
        match next {
            BodyNext::Pass(waiting) => {
                if !waiting.caller.shadowed.is_empty()
                    && let Some(policy) = self.policy.clone()
                {
                    let seen = waiting.seen();
                    self.record_would_refuse(
                        &policy,
                        &waiting.caller.shadowed,
                        HostClock.now(),
                        &seen,
                    );
                }
                if let Some(tally) = &self.tally
                    && let Ok(mut tally) = tally.try_borrow_mut()
                {
                    waiting.caller.count_allowed(&mut tally);
                }
                Action::Continue
            }
            BodyNext::More(stage, hold) => {
                self.body = Some(stage);
                if hold {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            BodyNext::Refuse(denial, waiting) => {
                if let Some(response) = &mut self.response {
                    // Our own refusal: the response rules must not take it for an upstream error.
                    response.mark_local();
                }
                let Some(policy) = self.policy.clone() else {
                    return Action::Pause;
                };
                let provider = self
                    .webhooks
                    .get(waiting.route)
                    .and_then(Option::as_ref)
                    .map(|v| SignatureProvider::of(v.provider()));
                let seen = waiting.seen();
                self.record_refusal(&policy, denial, HostClock.now(), &seen, provider);
                send_refusal(denial, &waiting.request_id, policy.verbose_errors);
                Action::Pause
            }
        }
    }

    /// The limiter's lost compare-and-swaps and give-ups, and a credential served from a
    /// stale cache: rare, so kept off the common path.
    #[cold]
    #[inline(never)]
    fn note_limiter(&self, retries: u32, contention: bool, stale: bool) {
        if let Some(tally) = &self.tally
            && let Ok(mut tally) = tally.try_borrow_mut()
        {
            tally.limiter(retries, contention);
            if stale {
                tally.stale_served();
            }
        }
    }

    /// Counts a request for which an allowlist skipped a rate limit.
    #[cold]
    #[inline(never)]
    fn note_allowlisted(&self) {
        if let Some(tally) = &self.tally
            && let Ok(mut tally) = tally.try_borrow_mut()
        {
            tally.allowlisted();
        }
    }

    /// Counts and logs what rules in shadow would have refused
    /// ([`stream::record_would_refuse`]).
    #[cold]
    #[inline(never)]
    fn record_would_refuse(
        &self,
        policy: &Policy,
        shadowed: &[gatehouse_core::pipeline::Shadowed],
        at: UnixNanos,
        seen: &Seen<'_>,
    ) {
        let mut tally = self.tally.as_ref().and_then(|t| t.try_borrow_mut().ok());
        for s in shadowed {
            let line = stream::record_would_refuse(
                policy,
                tally.as_deref_mut(),
                s,
                at,
                seen,
                |l| log_enabled(host_level(l)),
                source_address,
            );
            if let Some((level, line)) = line {
                log(host_level(level), &line);
            }
        }
    }

    /// Counts a refusal and writes its log line ([`stream::record_refusal`]).
    #[cold]
    #[inline(never)]
    fn record_refusal(
        &self,
        policy: &Policy,
        denial: Denial,
        at: UnixNanos,
        seen: &Seen<'_>,
        provider: Option<SignatureProvider>,
    ) {
        let mut tally = self.tally.as_ref().and_then(|t| t.try_borrow_mut().ok());
        let line = stream::record_refusal(
            policy,
            tally.as_deref_mut(),
            denial,
            at,
            seen,
            provider,
            |l| log_enabled(host_level(l)),
            source_address,
        );
        if let Some((level, line)) = line {
            log(host_level(level), &line);
        }
    }
}
