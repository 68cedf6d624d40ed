//! The router: which path is served by which handler, behind which token, and the one
//! middleware every request passes (request id, client address, access log, error shape).

use crate::clock::Clock;
use crate::config::Config;
use crate::error::{ApiError, ErrorInfo, code_for_status};
use crate::fleet::Fleet;
use crate::store::{ChangeCtx, Store};
use crate::token_limit::{Client, FailureLimit};
use crate::{
    audit, authz, dashboard, events, feed, fleet, health, import, keys, levers, revocations, stats,
};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// Request bodies above this are refused with 413 before they are parsed.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The proxies' reports (`POST /v1/events`), whose bodies may be larger: see
/// [`events::BODY_LIMIT`].
const EVENTS_PATH: &str = "/v1/events";

/// A body declared larger than the route's limit ([`BODY_LIMIT`], [`events::BODY_LIMIT`]
/// on [`EVENTS_PATH`], [`import::BODY_LIMIT`] on [`import::PATH`], [`fleet::BODY_LIMIT`]
/// on [`fleet::PATH`]). Checked for every
/// route before any handler runs: the extractors' limit only covers the bodies a handler
/// reads, and a huge body on a route that reads none would otherwise be answered 200.
/// (The import reads its body as a stream, and holds it to its limit as it reads.)
fn declared_too_large(req: &Request) -> bool {
    let limit = match req.uri().path() {
        EVENTS_PATH => events::BODY_LIMIT,
        import::PATH => import::BODY_LIMIT,
        fleet::PATH => fleet::BODY_LIMIT,
        _ => BODY_LIMIT,
    };
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    /// The latest committed feed version; long-polls wait on it.
    pub changes: Arc<watch::Sender<i64>>,
    /// `true` once the process is stopping: held long-polls answer at once.
    pub stopping: Arc<watch::Sender<bool>>,
    /// The OpenAPI document as served: the file with this configuration's plans in it.
    pub openapi: Arc<str>,
    /// What this replica counts in memory (`GET /v1/stats`).
    pub counters: Arc<crate::stats::Counters>,
    /// Failed bearer-token attempts per client (`token_limit.rs`).
    pub token_limit: Arc<FailureLimit>,
    /// Fleet-wide limits (`fleet.rs`): the Redis connection, if one is set, and its counts.
    pub fleet: Arc<Fleet>,
}

impl AppState {
    pub async fn new(
        store: Arc<dyn Store>,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<AppState, crate::store::StoreError> {
        let version = store.version().await?;
        Ok(AppState {
            store,
            fleet: Arc::new(Fleet::new(config.redis_url.as_ref(), &config.fleet)),
            openapi: health::openapi_document(&config).into(),
            counters: Arc::new(crate::stats::Counters::new(clock.now_secs())),
            token_limit: Arc::new(FailureLimit::new(
                config.token_failures_per_minute,
                crate::token_limit::CAPACITY,
            )),
            config: Arc::new(config),
            clock,
            changes: Arc::new(watch::Sender::new(version)),
            stopping: Arc::new(watch::Sender::new(false)),
        })
    }

    /// Answers every held long-poll now, and every later one without holding it: the
    /// process is stopping (`serve.rs`).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Wakes the long-polls: called after a change has committed, never before.
    pub fn committed(&self, version: i64) {
        self.changes.send_if_modified(|v| {
            if version > *v {
                *v = version;
                true
            } else {
                false
            }
        });
    }
}

/// Who is asking, set by the middleware for every request.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    pub request_id: String,
    pub client: Option<String>,
}

impl RequestCtx {
    pub fn change(&self, now: i64) -> ChangeCtx {
        ChangeCtx {
            now,
            actor: "admin".to_string(),
            request_id: self.request_id.clone(),
            client: self.client.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestCtx>()
            .cloned()
            .ok_or_else(|| ApiError::internal(&"request context missing"))
    }
}

pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/verify", post(keys::verify))
        .route(import::PATH, post(import::post))
        .route("/v1/keys/{id}", get(keys::get).delete(keys::revoke))
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route(
            "/v1/keys/{id}/limits",
            put(levers::put_key)
                .get(levers::get_key)
                .delete(levers::delete_key),
        )
        .route(
            "/v1/tenants/{id}/limits",
            put(levers::put_tenant)
                .get(levers::get_tenant)
                .delete(levers::delete_tenant),
        )
        .route("/v1/limits", get(levers::list_limits))
        .route("/v1/limits/{name}/mode", put(levers::put_mode))
        .route(
            "/v1/allowlist",
            post(levers::add_allow).get(levers::list_allow),
        )
        .route("/v1/allowlist/{id}", delete(levers::remove_allow))
        .route(
            "/v1/users/{id}/revoke-tokens",
            post(revocations::revoke_user_tokens),
        )
        .route("/v1/tokens/revoke", post(revocations::revoke_jti))
        .route("/v1/audit", get(audit::list))
        .route("/v1/stats", get(stats::get))
        .route("/v1/stats/refusals", get(stats::refusals::get))
        .route("/v1/stats/series", get(stats::series::get))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    // The proxies' reports: the sync posts them with the feed token; the admin token may
    // too (a person replaying a batch by hand).
    let reports = Router::new()
        .route(EVENTS_PATH, post(events::post))
        .layer(DefaultBodyLimit::max(events::BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_feed_or_admin,
        ));
    // The proxies' token. The check `ext_authz` calls (`/v1/authz`) takes it too, in its
    // own header or this one: authz.rs.
    let feed = Router::new()
        .route("/v1/cache", get(feed::cache))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_feed));
    // Fleet-wide limits: the proxies' sync, with the feed token only.
    let limits = Router::new()
        .route(fleet::PATH, post(fleet::exchange))
        .layer(DefaultBodyLimit::max(fleet::BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_feed));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(health::openapi))
        // The page itself holds no data: its script asks the admin API with the token
        // the person types in.
        .route("/", get(dashboard::page))
        .merge(admin)
        .merge(feed)
        .merge(authz::router(&state))
        .merge(reports)
        .merge(limits)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

fn bearer(req: &Request) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// The client a request is counted as by the failure limit (`token_limit.rs`).
pub fn client_of(req: &Request) -> Client {
    Client::of(
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip()),
    )
}

/// The 429 for a client locked out by the failure limit, if it is: ask before looking at
/// the request's token (`token_limit.rs` says why).
pub fn refuse_if_locked_out(s: &AppState, client: Client) -> Option<Response> {
    let retry_after = s.token_limit.locked(client, s.clock.now_secs())?;
    s.counters.token_lockouts.fetch_add(1, Ordering::Relaxed);
    Some(crate::token_limit::too_many(retry_after))
}

/// Counts a refused request whose `authorization` header held a token that is neither
/// ours (a guess), and logs it without the token. Other refusals are not counted.
pub fn count_token_failure(s: &AppState, client: Client, req: &Request) {
    let Some(presented) = req.headers().get(header::AUTHORIZATION) else {
        return;
    };
    let ours = bearer(req).is_some_and(|t| {
        // Both compared: the time taken does not tell which token it was.
        s.config.admin_token.matches(t) | s.config.feed_token.matches(t)
    });
    if ours || presented.is_empty() {
        return;
    }
    let failures = s.token_limit.fail(client, s.clock.now_secs());
    s.counters.token_failures.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%client, path = %req.uri().path(), failures, "bearer token refused");
}

/// Which token a group of routes takes.
#[derive(Clone, Copy)]
enum Needs {
    Admin,
    Feed,
    FeedOrAdmin,
}

/// The token check of every route behind a token, under the failure limit.
async fn guard(s: &AppState, needs: Needs, req: Request, next: Next) -> Response {
    let client = client_of(&req);
    if let Some(refused) = refuse_if_locked_out(s, client) {
        return refused;
    }
    let presented = bearer(&req);
    // Both compared, whichever the route takes: the time taken does not tell which token
    // it was.
    let admin = presented.is_some_and(|t| s.config.admin_token.matches(t));
    let feed = presented.is_some_and(|t| s.config.feed_token.matches(t));
    let accepted = match needs {
        Needs::Admin => admin,
        Needs::Feed => feed,
        Needs::FeedOrAdmin => admin | feed,
    };
    if accepted {
        return next.run(req).await;
    }
    count_token_failure(s, client, &req);
    ApiError::unauthorized().into_response()
}

async fn require_admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    guard(&s, Needs::Admin, req, next).await
}

async fn require_feed(State(s): State<AppState>, req: Request, next: Next) -> Response {
    guard(&s, Needs::Feed, req, next).await
}

async fn require_feed_or_admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    guard(&s, Needs::FeedOrAdmin, req, next).await
}

/// The caller's request id if it is a short printable one, else a new one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .map(str::to_string)
        .or_else(|| crate::random::hex(16).ok())
        .unwrap_or_else(|| "unknown".to_string())
}

#[allow(
    clippy::disallowed_methods,
    reason = "Instant::now only measures the latency written to the access log"
)]
async fn request_context(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let ctx = RequestCtx {
        request_id: request_id(&req),
        client: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.to_string()),
    };
    req.extensions_mut().insert(ctx.clone());
    let method = req.method().clone();
    // The path only: query strings are not logged.
    let path = req.uri().path().to_string();
    let mut response = if declared_too_large(&req) {
        let (code, message) = code_for_status(StatusCode::PAYLOAD_TOO_LARGE);
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message).into_response()
    } else {
        next.run(req).await
    };
    let status = response.status();
    let info = response.extensions_mut().remove::<ErrorInfo>();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let info = match info {
        Some(i) => Some(i),
        // An error no handler wrote (unknown route, wrong method): same shape.
        None if (status.is_client_error() || status.is_server_error()) && !is_json => {
            let (code, message) = code_for_status(status);
            Some(ErrorInfo {
                code,
                message: message.to_string(),
            })
        }
        None => None,
    };
    if let Some(info) = &info {
        let body = gatehouse_core::refusal::error_body(
            &info.message,
            info.code,
            s.clock.now(),
            ctx.request_id.as_bytes(),
        );
        let (mut parts, _) = response.into_parts();
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        response = Response::from_parts(parts, axum::body::Body::from(body));
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%method, %path, status = status.as_u16(), request_id = %ctx.request_id, latency_ms, "request");
    } else {
        tracing::info!(%method, %path, status = status.as_u16(), request_id = %ctx.request_id,
            code = info.as_ref().map(|i| i.code), latency_ms, "request");
    }
    response
}
