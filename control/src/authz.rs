//! `ANY /v1/authz/{*rest}`: the decision in the shape Envoy's `ext_authz` HTTP service
//! expects, so a deployment without the wasm module decides as the plugin does.
//!
//! **What ext_authz sends.** The original request's method, `path_prefix` followed by the
//! original `:path` as the client sent it, query included (Envoy concatenates the two:
//! `/v1/authz` + `/v1/things?page=2`), the headers its `allowed_headers` match plus
//! `authorization`, `host`, `:method` and `:path`, its `headers_to_add`, and no body. A
//! 200 lets the request through, and the 200's headers matched by
//! `allowed_upstream_headers` replace the upstream request's; any other status is sent to
//! the client with this answer's headers and body; a 5xx counts as the service failing
//! (`status_on_error`). docs/operating.md "ext_authz" has the Envoy configuration.
//!
//! **Who may ask.** The proxies, with the feed token: in `x-control-token`, which leaves
//! `authorization` to the client's bearer token (`headers_to_add` replaces a client header
//! of the same name, so the token cannot travel there without hiding the client's), or,
//! as before it, as `authorization: Bearer <feed token>`, in which case the request has
//! no client `authorization` at all. The feed token grants nothing new here: a proxy
//! holding it already reads every key hash from the feed. Wrong tokens count toward the
//! control API's per-client failure limit (`token_limit.rs`), as on every route behind a
//! token.
//!
//! **With a policy** (`serve --policy FILE`), the answer is the plugin's, from the same
//! core (`authz/decide.rs`): route, unclear paths and method overrides, audience,
//! credentials (API key with its expiry, revocation and scopes; JWT with its watermark
//! and jti), and CORS preflights. Allowed: 200, no body, the identity headers the plugin
//! sets (`x-gatehouse-user`, `-tenant`, `-plan`, `-key-id`) and the forwarded claims, and
//! in `x-envoy-auth-headers-to-remove` every other `x-gatehouse-*` name (the client's: the
//! plugin strips them) and, with `hide_credentials`, the credential header. Refused: the
//! plugin's status, headers and JSON body (`Denial::render`), so the client sees the same
//! thing both ways. The client address is not part of the request ext_authz sends (the
//! HTTP service has no `source.address`): the decision gets `x-forwarded-for` when Envoy
//! forwards it and no peer address, which changes nothing, since the address only places
//! rate-limit state and rate limits are not enforced here.
//!
//! **Not decided here**: rate limits (ext_authz has no limiter shared across requests;
//! each decision counts nothing), anything that needs the body (size limits, JSON caps,
//! webhook signatures) and the response side (security and CORS headers on answers,
//! upstream error hygiene). Keep the module, or Envoy's own filters, for those.
//!
//! **Without a policy**, only the `x-api-key` key is checked, as before: 200 with its
//! identity, or 401 `INVALID_CREDENTIALS` for a missing, malformed, unknown, revoked or
//! expired key. A key with scopes is refused 403 `FORBIDDEN`: without routes nothing can
//! say whether the path is in scope, and a key limited to `billing` must not pass
//! everywhere.
//!
//! Never: log, echo or store the credential; answer 200 for a request the plugin would
//! refuse.

mod decide;
mod request_store;

pub use decide::{MAX_PASSES, PolicyCheck};

use crate::app::{self, AppState};
use crate::error::ApiError;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use gatehouse_core::authn::api_key::{KeyFailure, KeyHash, MAX_PRESENTED_KEY_LEN, check_format};
use gatehouse_core::pipeline::{self, Decision};

use gatehouse_core::policy::Policy;
use gatehouse_core::refusal::{Denial, LocalReply};
use gatehouse_core::request::{
    HEADER_ISSUER, HEADER_KEY_ID, HEADER_PLAN, HEADER_TENANT, HEADER_USER, IDENTITY_HEADER_PREFIX,
    Presented, RequestHead, Spelling,
};

use gatehouse_core::authn::AuthFailure;
use gatehouse_core::time::UnixNanos;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The path prefix ext_authz is configured with (`http_service.path_prefix`).
pub const PATH_PREFIX: &str = "/v1/authz";

/// The header that carries the feed token when `authorization` is the client's.
pub const CONTROL_TOKEN_HEADER: &str = "x-control-token";

/// The request header that carries the key without a policy (the policy's
/// `api_key.header` default).
pub const KEY_HEADER: &str = "x-api-key";

/// Where ext_authz reads the headers to remove from the upstream request.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The method override headers the plugin checks (`pipeline::RequestHead`).
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

struct Endpoint {
    app: AppState,
    /// `None` without `--policy`.
    policy: Option<PolicyCheck>,
}

/// The routes: `/v1/authz/` (the original path `/`) and everything below it, any method
/// (ext_authz keeps the original request's, whatever it is).
pub fn router(state: &AppState) -> Router<AppState> {
    let endpoint = Endpoint {
        app: state.clone(),
        policy: state
            .config
            .policy
            .clone()
            .map(|p| PolicyCheck::new(p, &|name| std::env::var(name).ok())),
    };
    Router::new()
        .route("/v1/authz/", any(check))
        .route("/v1/authz/{*rest}", any(check))
        .with_state(Arc::new(endpoint))
}

/// How the proxy authenticated: it decides whose `authorization` header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proxy {
    /// `x-control-token`: `authorization`, if any, is the client's.
    ControlToken,
    /// `authorization: Bearer <feed token>`: there is no client `authorization`.
    Bearer,
}

/// Who asks: the feed token in `x-control-token`, else as the bearer token. Under the
/// control API's failure limit (`token_limit.rs`), as every route behind a token: a
/// wrong `x-control-token` counts as a guess unless it is the admin token, a wrong bearer
/// token as `app::count_token_failure` says.
fn proxy(s: &AppState, req: &Request) -> Result<Proxy, Box<Response>> {
    let client = app::client_of(req);
    if let Some(refused) = app::refuse_if_locked_out(s, client) {
        return Err(Box::new(refused));
    }
    let feed = &s.config.feed_token;
    if let Some(presented) = req.headers().get(CONTROL_TOKEN_HEADER) {
        let presented = presented.as_bytes();
        // Both compared: the time taken does not tell which token it was.
        let (is_feed, is_admin) = (
            feed.matches(presented),
            s.config.admin_token.matches(presented),
        );
        if is_feed {
            return Ok(Proxy::ControlToken);
        }
        if !is_admin && !presented.is_empty() {
            let failures = s.token_limit.fail(client, s.clock.now_secs());
            s.counters.token_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%client, path = %req.uri().path(), failures, "x-control-token refused");
        }
        return Err(Box::new(ApiError::unauthorized().into_response()));
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, t)| t);
    match bearer {
        Some(t) if feed.matches(t) => Ok(Proxy::Bearer),
        _ => {
            app::count_token_failure(s, client, req);
            Err(Box::new(ApiError::unauthorized().into_response()))
        }
    }
}

async fn check(State(ep): State<Arc<Endpoint>>, req: Request) -> Result<Response, ApiError> {
    let proxy = match proxy(&ep.app, &req) {
        Ok(proxy) => proxy,
        Err(refused) => return Ok(*refused),
    };
    // ext_authz sends no body; the parts are what the answer depends on.
    let (req, _) = req.into_parts();
    let now = ep.app.clock.now();
    match &ep.policy {
        Some(policy) => decide(&ep.app, policy, &req, proxy, now).await,
        None => key_only(&ep.app, &req, now).await,
    }
}

/// The original request's path and query: what follows [`PATH_PREFIX`], exactly.
fn original_path(req: &Parts) -> &[u8] {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    target
        .strip_prefix(PATH_PREFIX)
        .unwrap_or(target)
        .as_bytes()
}

fn request_id(headers: &HeaderMap) -> &[u8] {
    headers
        .get("x-request-id")
        .map_or(&[][..], HeaderValue::as_bytes)
}

/// A header seen once, or again.
fn present<'a>(seen: Presented<'a>, value: &'a [u8]) -> Presented<'a> {
    match seen {
        Presented::None => Presented::One(value),
        _ => Presented::Several,
    }
}

/// The request values the plugin's shell reads from the headers, read the same way.
struct Forwarded<'a> {
    api_key: Presented<'a>,
    authorization: Presented<'a>,
    method_override: Presented<'a>,
    forwarded_for: Option<Vec<u8>>,
    origin: Option<&'a [u8]>,
    cors_method: Option<&'a [u8]>,
    cors_headers: Vec<&'a [u8]>,
    /// Client-sent names that read as `x-gatehouse-*`: removed upstream.
    spoofed: BTreeSet<String>,
}

impl<'a> Forwarded<'a> {
    fn read(headers: &'a HeaderMap, policy: &Policy, proxy: Proxy) -> Forwarded<'a> {
        let mut f = Forwarded {
            api_key: Presented::None,
            authorization: Presented::None,
            method_override: Presented::None,
            forwarded_for: None,
            origin: None,
            cors_method: None,
            cors_headers: Vec::new(),
            spoofed: BTreeSet::new(),
        };
        let mut xff: Vec<&[u8]> = Vec::new();
        for (name, value) in headers {
            let (name, value) = (name.as_str(), value.as_bytes());
            match name {
                n if n == policy.api_key_header => f.api_key = present(f.api_key, value),
                "authorization" if proxy == Proxy::ControlToken => {
                    f.authorization = present(f.authorization, value);
                }
                "x-forwarded-for" => xff.push(value),
                n if METHOD_OVERRIDES.contains(&n) => {
                    f.method_override = present(f.method_override, value);
                }
                "origin" => f.origin = Some(value),
                "access-control-request-method" => f.cors_method = Some(value),
                "access-control-request-headers" => f.cors_headers.push(value),
                n if n.starts_with(IDENTITY_HEADER_PREFIX) => {
                    f.spoofed.insert(n.to_string());
                }
                n => match gatehouse_core::request::classify_spelling(
                    &policy.api_key_header,
                    n.as_bytes(),
                ) {
                    Some(Spelling::Identity) => {
                        f.spoofed.insert(n.to_string());
                    }
                    Some(Spelling::ApiKey) => f.api_key = Presented::Several,
                    None => {}
                },
            }
        }
        // Repeated x-forwarded-for lines are one list (RFC 9110 §5.3), as in the plugin.
        f.forwarded_for = (!xff.is_empty()).then(|| xff.join(&b","[..]));
        f
    }
}

async fn decide(
    app: &AppState,
    check: &PolicyCheck,
    req: &Parts,
    proxy: Proxy,
    now: UnixNanos,
) -> Result<Response, ApiError> {
    let policy = check.policy();
    let method = req.method.as_str().as_bytes();
    let path = original_path(req);
    let request_id = request_id(&req.headers);
    let f = Forwarded::read(&req.headers, policy, proxy);
    // A CORS preflight carries no credentials: answered before authentication, as the
    // plugin does. Its 204 is not a 200, so ext_authz sends it to the client as it is.
    if let Some(preflight) = gatehouse_core::cors::Preflight::from_request(
        method,
        path,
        f.origin,
        f.cors_method,
        &f.cors_headers,
    ) && let Some(answer) = gatehouse_core::cors::preflight::answer_preflight(policy, &preflight)
    {
        return Ok(match answer {
            Ok(reply) => local_reply(reply),
            Err(denial) => refusal(denial, policy, now, request_id),
        });
    }
    let head = RequestHead {
        method,
        path,
        api_key: f.api_key,
        authorization: f.authorization,
        // ext_authz's HTTP service does not send the peer's address (see the module doc).
        source_address: b"",
        forwarded_for: f.forwarded_for.as_deref(),
        method_override: f.method_override,
    };
    let (decision, refused) = check.decide(&head, &*app.store, now).await?;
    match decision {
        Decision::Allow(allowed) => allow(policy, &allowed, &f.spoofed),
        Decision::Deny(denial) => {
            tracing::info!(
                code = denial.audit_code().as_str(),
                reason = denial.reason(),
                route = refused
                    .route
                    .and_then(|i| policy.routes.get(i))
                    .map(|r| r.name.as_str()),
                key_id = refused.identity.as_ref().map(|i| i.key_id.as_str()),
                "ext_authz refusal"
            );
            Ok(refusal(denial, policy, now, request_id))
        }
    }
}

fn header_name(name: &str) -> Result<HeaderName, ApiError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|e| ApiError::internal(&e))
}

/// 200 with what the plugin adds upstream, and what it removes.
fn allow(
    policy: &Policy,
    allowed: &pipeline::Allowed,
    spoofed: &BTreeSet<String>,
) -> Result<Response, ApiError> {
    let mut headers = HeaderMap::new();
    let identity = allowed.identity.iter().flat_map(|i| i.headers());
    let claims = allowed
        .claim_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()));
    for (name, value) in identity.chain(claims) {
        // Identity values are checked ids and claim values header-safe text: always valid.
        let value = HeaderValue::from_str(value).map_err(|e| ApiError::internal(&e))?;
        headers.insert(header_name(name)?, value);
    }
    // Every identity name this answer does not set, whether the client sent it or not
    // (ext_authz forwards only the names its `allowed_headers` match).
    let mut remove: BTreeSet<String> = spoofed.clone();
    remove.extend(
        [
            HEADER_USER,
            HEADER_TENANT,
            HEADER_PLAN,
            HEADER_KEY_ID,
            HEADER_ISSUER,
        ]
        .into_iter()
        .chain(decide::claim_header_names(policy))
        .map(str::to_string),
    );
    remove.retain(|name| !headers.contains_key(name.as_str()));
    if policy.hide_credentials {
        match allowed.credential {
            Some(gatehouse_core::authn::Credential::ApiKey) => {
                remove.insert(policy.api_key_header.clone());
            }
            Some(gatehouse_core::authn::Credential::Jwt) => {
                remove.insert("authorization".to_string());
            }
            None => {}
        }
    }
    if !remove.is_empty() {
        let list = remove.into_iter().collect::<Vec<_>>().join(",");
        let value = HeaderValue::from_str(&list).map_err(|e| ApiError::internal(&e))?;
        headers.insert(HEADERS_TO_REMOVE, value);
    }
    Ok((StatusCode::OK, headers).into_response())
}

/// A reply rendered by the core, sent as it is.
fn local_reply(reply: LocalReply) -> Response {
    let mut response = Response::new(axum::body::Body::from(reply.body));
    *response.status_mut() = StatusCode::from_u16(u16::try_from(reply.status).unwrap_or(500))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        // The core's names are lower-case constants and its values printable text.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The plugin's refusal: its status, headers and body.
fn refusal(denial: Denial, policy: &Policy, now: UnixNanos, request_id: &[u8]) -> Response {
    local_reply(denial.render(now, request_id, policy.verbose_errors))
}

/// Without a policy: the key in `x-api-key` alone (see the module doc).
async fn key_only(app: &AppState, req: &Parts, now: UnixNanos) -> Result<Response, ApiError> {
    let request_id = request_id(&req.headers);
    // Missing, malformed, unknown, revoked and expired keys are all this one answer.
    let invalid =
        || Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)).reply(now, request_id);
    let Some(key) = req.headers.get(KEY_HEADER).map(HeaderValue::as_bytes) else {
        return Ok(local_reply(invalid()));
    };
    // A mistyped or made-up key is refused without a lookup, as the plugin does.
    if key.len() > MAX_PRESENTED_KEY_LEN || check_format(key).is_err() {
        return Ok(local_reply(invalid()));
    }
    let hash = KeyHash::of_key(key).to_hex();
    let Some(k) = app.store.find_key_by_hash(&hash).await? else {
        return Ok(local_reply(invalid()));
    };
    if !k.usable_at(i64::try_from(now.secs()).unwrap_or(i64::MAX)) {
        return Ok(local_reply(invalid()));
    }
    if !k.scopes.is_empty() {
        tracing::info!(key_id = %k.id, "ext_authz refusal: a scoped key without a policy");
        return Ok(local_reply(Denial::Forbidden.reply(now, request_id)));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (HEADER_USER, &k.user_id),
        (HEADER_TENANT, &k.tenant_id),
        (HEADER_PLAN, &k.plan),
        (HEADER_KEY_ID, &k.id),
    ] {
        // Ids are checked on the way in (A-Z a-z 0-9 . _ : @ + -): always a valid value.
        let value = HeaderValue::from_str(value).map_err(|e| ApiError::internal(&e))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok((StatusCode::OK, headers).into_response())
}
