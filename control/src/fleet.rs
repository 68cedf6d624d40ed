//! `POST /v1/limits/exchange`: fleet-wide rate limits (contract in `control/FLEET.md`).
//!
//! Every Envoy decides its limits locally and, on each sync tick, sends what it admitted
//! since its last exchange and gets back the fleet's state of every caller that changed
//! since its cursor. The fleet's counters live in Redis (`fleet/redis.rs`, one Lua script
//! per exchange); this file checks the request, maps Redis's answer to JSON, and keeps
//! the replica's own counts for `GET /v1/stats`.
//!
//! Redis is optional: without `GATEHOUSE_REDIS_URL` the route answers 503
//! `FLEET_UNAVAILABLE` and nothing else changes. With it, the connection is made on the
//! first exchange and made again after any failure, so a Redis that comes back is used
//! again without an operator. Failures are logged once when they start, then at most
//! every [`LOG_EVERY_SECS`] with the count since, and once when Redis is back: a proxy
//! fleet exchanging every 250 ms would otherwise write a line per proxy per tick.
//!
//! Never logs the Redis URL (it may hold a password) nor a caller's name.

mod redis;

use crate::app::AppState;
use crate::error::{ApiError, ApiJson};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gatehouse_core::authn::api_key::is_valid_id;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use self::redis::{KEY_PREFIX, RedisFleet};

/// The route.
pub const PATH: &str = "/v1/limits/exchange";
/// The body limit of this route: 10,000 entries of typical names (some 120 bytes of JSON
/// each) are about 1.2 MB.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Entries of `used` in one exchange.
pub const MAX_USED: usize = 10_000;
/// Bytes of a limit's or a caller's name.
pub const MAX_NAME_LEN: usize = 256;
/// The largest `n`: more requests than a proxy admits in a year.
pub const MAX_N: i64 = 1_000_000_000_000;
/// The longest `period_ms`: a year. Keeps every time the script computes (µs since the
/// epoch plus two periods) exact in Lua's doubles.
pub const MAX_PERIOD_MS: i64 = 365 * 86_400 * 1000;
/// The longest a member's debt may run past now: ten years, which keeps the script's
/// times (µs since the epoch) exact in Lua's doubles.
pub const MAX_CAP_US: u64 = 10 * 365 * 86_400 * 1_000_000;
/// Failures are logged at most this often while Redis stays unreachable.
pub const LOG_EVERY_SECS: i64 = 30;

/// How the exchange works inside; not settings of the service (the tests shorten some).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// States in one answer. Defaults to 5,000.
    pub page: usize,
    /// Lapsed members removed from the change log per exchange. Defaults to 1,000.
    pub prune: usize,
    /// A proxy not heard from for this long is no longer counted. Defaults to 10 s.
    pub proxy_window: Duration,
    /// How long a caller's state outlives its `tat`. Defaults to 1 s.
    pub margin: Duration,
    /// Connecting to Redis. Defaults to 1 s.
    pub connect_timeout: Duration,
    /// Redis answering one exchange. Defaults to 2 s.
    pub response_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            page: 5_000,
            prune: 1_000,
            proxy_window: Duration::from_secs(10),
            margin: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeIn {
    proxy: String,
    cursor: Option<String>,
    used: Option<Vec<UsedIn>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsedIn {
    limit: String,
    caller: String,
    kind: String,
    n: i64,
    requests: i64,
    period_ms: i64,
    burst: i64,
}

/// Who a state counts: an identified caller (`i`) or one counted by address (`a`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Identified,
    Address,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Identified => "i",
            Kind::Address => "a",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "i" => Some(Kind::Identified),
            "a" => Some(Kind::Address),
            _ => None,
        }
    }
}

/// One (limit, caller, kind): its Redis member is the JSON array `[kind, limit, caller]`,
/// which no two different triples share whatever their names hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub kind: Kind,
    pub limit: String,
    pub caller: String,
}

impl Member {
    pub fn encode(&self) -> String {
        serde_json::json!([self.kind.as_str(), self.limit, self.caller]).to_string()
    }

    /// `None` for anything [`Member::encode`] did not write.
    pub fn decode(s: &str) -> Option<Member> {
        let (kind, limit, caller): (String, String, String) = serde_json::from_str(s).ok()?;
        Some(Member {
            kind: Kind::parse(&kind)?,
            limit,
            caller,
        })
    }
}

/// One checked entry of `used`, as the script takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Used {
    pub member: String,
    pub n: u64,
    /// `T` = `period / requests` in µs, at least 1.
    pub interval_us: u64,
    /// How far past now a `tat` may run, per proxy (the script multiplies it by the
    /// proxies seen, at least two): the longer of the period and a burst, in µs.
    pub cap_us: u64,
}

/// Where the previous answer left off: the change log's epoch (made again if Redis lost
/// its data) and the last change sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}.{}", self.epoch, self.seq)
    }

    /// `None` for anything [`Cursor::encode`] did not write: the exchange then starts from
    /// the beginning of the change log.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (epoch, seq) = s.split_once('.')?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return None;
        }
        Some(Cursor {
            epoch: epoch.to_string(),
            seq: seq.parse().ok()?,
        })
    }
}

/// A checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub proxy: String,
    pub cursor: Option<Cursor>,
    pub used: Vec<Used>,
}

fn bad(field: &str, rule: &str) -> ApiError {
    ApiError::bad_request(format!("{field} must be {rule}"))
}

fn in_range(field: String, v: i64, min: i64, max: i64) -> Result<u64, ApiError> {
    if (min..=max).contains(&v) {
        u64::try_from(v).map_err(|_| bad(&field, "0 or more"))
    } else {
        Err(bad(&field, &format!("from {min} to {max}")))
    }
}

fn used(i: usize, u: UsedIn) -> Result<Used, ApiError> {
    let f = |name: &str| format!("used[{i}].{name}");
    for (name, value) in [("limit", &u.limit), ("caller", &u.caller)] {
        if value.is_empty() || value.len() > MAX_NAME_LEN {
            return Err(bad(&f(name), "1 to 256 bytes"));
        }
    }
    let kind = Kind::parse(&u.kind).ok_or_else(|| {
        bad(
            &f("kind"),
            "\"i\" (identified caller) or \"a\" (by address)",
        )
    })?;
    let n = in_range(f("n"), u.n, 1, MAX_N)?;
    let requests = in_range(f("requests"), u.requests, 1, i64::from(u32::MAX))?;
    let period_ms = in_range(f("period_ms"), u.period_ms, 1, MAX_PERIOD_MS)?;
    in_range(f("burst"), u.burst, 1, i64::from(u32::MAX))?;
    let period_us = period_ms.saturating_mul(1000);
    let interval_us = (period_us / requests).max(1);
    Ok(Used {
        member: Member {
            kind,
            limit: u.limit,
            caller: u.caller,
        }
        .encode(),
        n,
        interval_us,
        // One period or one burst, whichever is longer; the script multiplies it by the
        // proxies (at least two), so the over-use of a burst at every proxy at once is
        // owed in full.
        cap_us: period_us
            .max(interval_us.saturating_mul(u64::try_from(u.burst).unwrap_or(1)))
            .min(MAX_CAP_US),
    })
}

/// The request as the script takes it, or the first rule it breaks. Messages name the
/// field and never quote the value (a caller's name may be a person's address).
pub fn check(body: ExchangeIn) -> Result<Exchange, ApiError> {
    if !is_valid_id(&body.proxy) {
        return Err(bad("proxy", "1 to 128 of A-Z a-z 0-9 . _ : @ + -"));
    }
    let entries = body.used.unwrap_or_default();
    if entries.len() > MAX_USED {
        return Err(bad(
            "used",
            &format!("at most {MAX_USED} entries per exchange"),
        ));
    }
    let used = entries
        .into_iter()
        .enumerate()
        .map(|(i, u)| used(i, u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Exchange {
        proxy: body.proxy,
        cursor: body.cursor.as_deref().and_then(Cursor::decode),
        used,
    })
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct StateOut {
    pub limit: String,
    pub caller: String,
    pub kind: &'static str,
    pub ahead_us: u64,
}

#[derive(Debug, Serialize)]
pub struct ExchangeOut {
    pub cursor: String,
    pub more: bool,
    pub proxies: u64,
    pub states: Vec<StateOut>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum FleetError {
    /// `GATEHOUSE_REDIS_URL` is not set.
    NotConfigured,
    /// No connection, or no answer in time.
    Unreachable(String),
    /// Redis answered with an error, or with something the script never returns.
    Failed(String),
}

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetError::NotConfigured => f.write_str("GATEHOUSE_REDIS_URL is not set"),
            FleetError::Unreachable(e) => write!(f, "redis unreachable: {e}"),
            FleetError::Failed(e) => write!(f, "redis failed the exchange: {e}"),
        }
    }
}

/// What a replica counted since it started (`GET /v1/stats`, `fleet`).
#[derive(Debug, Default, Serialize)]
pub struct FleetView {
    pub exchanges: u64,
    pub failures: u64,
    /// Proxies seen in the window, as of this replica's last successful exchange.
    pub proxies: u64,
}

/// When failures were last logged, and how many since: decides which failures are
/// written to the log (see the module doc).
#[derive(Debug, Default, PartialEq, Eq)]
struct Outage {
    /// Failures since Redis last answered; 0 when it does.
    failures: u64,
    /// Failures not yet written to the log.
    unlogged: u64,
    last_logged: i64,
}

impl Outage {
    /// Counts a failure at `now` (Unix seconds); `Some(failures since the last line)` when
    /// a line is due: the first failure, then one every [`LOG_EVERY_SECS`] at most.
    fn failed(&mut self, now: i64) -> Option<u64> {
        self.failures += 1;
        self.unlogged += 1;
        if self.failures > 1 && now.saturating_sub(self.last_logged) < LOG_EVERY_SECS {
            return None;
        }
        self.last_logged = now;
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Redis answered: `Some(failures of the outage)` if one just ended.
    fn answered(&mut self) -> Option<u64> {
        let failures = self.failures;
        *self = Outage::default();
        (failures > 0).then_some(failures)
    }
}

/// The replica's side of the fleet: the Redis backend if one is set, and its counts.
pub struct Fleet {
    backend: Option<RedisFleet>,
    exchanges: AtomicU64,
    failures: AtomicU64,
    proxies: AtomicU64,
    outage: Mutex<Outage>,
}

impl Fleet {
    /// No connection is made here: the first exchange makes it.
    pub fn new(url: Option<&crate::config::RedisUrl>, tuning: &Tuning) -> Fleet {
        // The URL was read once already (`RedisUrl::new`); it cannot fail here.
        let backend = url.and_then(|u| {
            RedisFleet::new(u.expose(), tuning.clone())
                .map_err(|e| tracing::error!(error = %e, "fleet limits are off"))
                .ok()
        });
        Fleet {
            backend,
            exchanges: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            proxies: AtomicU64::new(0),
            outage: Mutex::new(Outage::default()),
        }
    }

    pub fn view(&self) -> FleetView {
        FleetView {
            exchanges: self.exchanges.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            proxies: self.proxies.load(Ordering::Relaxed),
        }
    }

    pub async fn exchange(&self, ex: &Exchange, now_secs: i64) -> Result<ExchangeOut, FleetError> {
        let backend = self.backend.as_ref().ok_or(FleetError::NotConfigured)?;
        match backend.exchange(ex).await {
            Ok(out) => {
                self.exchanges.fetch_add(1, Ordering::Relaxed);
                self.proxies.store(out.proxies, Ordering::Relaxed);
                self.answered();
                Ok(out)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.failed(&e, now_secs);
                Err(e)
            }
        }
    }

    fn answered(&self) {
        if let Some(failures) = self.outage.lock().ok().and_then(|mut o| o.answered()) {
            tracing::info!(failures, "fleet limits: redis answers again");
        }
    }

    fn failed(&self, e: &FleetError, now: i64) {
        if let Some(failures) = self.outage.lock().ok().and_then(|mut o| o.failed(now)) {
            tracing::warn!(
                error = %e,
                failures,
                "fleet limits: exchanges answered 503 FLEET_UNAVAILABLE"
            );
        }
    }
}

fn unavailable(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "FLEET_UNAVAILABLE",
        message,
    )
}

pub async fn exchange(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<ExchangeIn>,
) -> Result<Json<ExchangeOut>, ApiError> {
    let ex = check(body)?;
    match s.fleet.exchange(&ex, s.clock.now_secs()).await {
        Ok(out) => Ok(Json(out)),
        Err(FleetError::NotConfigured) => Err(unavailable(
            "fleet-wide limits are off: GATEHOUSE_REDIS_URL is not set",
        )),
        Err(FleetError::Unreachable(_)) => Err(unavailable("redis unreachable")),
        Err(FleetError::Failed(_)) => Err(unavailable("redis failed the exchange")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn body(v: serde_json::Value) -> ExchangeIn {
        serde_json::from_value(v).unwrap()
    }

    fn entry() -> serde_json::Value {
        serde_json::json!({"limit": "plan:free", "caller": "user_1", "kind": "i", "n": 3,
            "requests": 60, "period_ms": 60000, "burst": 60})
    }

    fn message(e: ApiError) -> String {
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        e.info.message
    }

    #[test]
    fn a_good_entry_becomes_its_member_interval_and_cap() {
        let ex = check(body(
            serde_json::json!({"proxy": "envoy-a", "used": [entry()]}),
        ))
        .unwrap();
        assert_eq!(ex.proxy, "envoy-a");
        assert_eq!(ex.cursor, None);
        assert_eq!(
            ex.used,
            [Used {
                member: r#"["i","plan:free","user_1"]"#.to_string(),
                n: 3,
                interval_us: 1_000_000,
                cap_us: 60_000_000,
            }]
        );
    }

    #[test]
    fn the_interval_is_at_least_one_microsecond() {
        let mut e = entry();
        e["requests"] = 4_000_000_000u64.into();
        e["period_ms"] = 1.into();
        let ex = check(body(serde_json::json!({"proxy": "p", "used": [e]}))).unwrap();
        assert_eq!(ex.used[0].interval_us, 1);
        assert_eq!(
            ex.used[0].cap_us, 1000,
            "a period (1 ms) is longer than 60 µs"
        );
        let mut e = entry();
        e["burst"] = 600.into();
        let ex = check(body(serde_json::json!({"proxy": "p", "used": [e]}))).unwrap();
        assert_eq!(
            ex.used[0].cap_us, 600_000_000,
            "a burst of 600 at 1 s is 10 min"
        );
    }

    #[test]
    fn used_may_be_left_out() {
        let ex = check(body(serde_json::json!({"proxy": "p", "used": null}))).unwrap();
        assert!(ex.used.is_empty());
        let ex = check(body(serde_json::json!({"proxy": "p"}))).unwrap();
        assert!(ex.used.is_empty());
    }

    #[test]
    fn each_broken_rule_names_its_field_without_the_value() {
        let long = "x".repeat(257);
        for (field, value, named) in [
            (
                "limit",
                serde_json::json!(""),
                "used[0].limit must be 1 to 256 bytes",
            ),
            (
                "caller",
                serde_json::json!(long),
                "used[0].caller must be 1 to 256 bytes",
            ),
            ("kind", serde_json::json!("x"), "used[0].kind must be"),
            ("n", serde_json::json!(0), "used[0].n must be from 1 to"),
            (
                "requests",
                serde_json::json!(0),
                "used[0].requests must be from 1",
            ),
            (
                "period_ms",
                serde_json::json!(-5),
                "used[0].period_ms must be from 1",
            ),
            (
                "period_ms",
                serde_json::json!(MAX_PERIOD_MS + 1),
                "used[0].period_ms",
            ),
            (
                "burst",
                serde_json::json!(0),
                "used[0].burst must be from 1",
            ),
        ] {
            let mut e = entry();
            e[field] = value;
            let m =
                message(check(body(serde_json::json!({"proxy": "p", "used": [e]}))).unwrap_err());
            assert!(m.contains(named), "{field}: {m}");
            assert!(!m.contains("xxx"), "{m}");
        }
        for proxy in ["", "a b", &"p".repeat(129)] {
            let m = message(check(body(serde_json::json!({"proxy": proxy}))).unwrap_err());
            assert!(m.starts_with("proxy must be"), "{m}");
        }
    }

    #[test]
    fn more_than_ten_thousand_entries_are_refused() {
        let used: Vec<_> = (0..=MAX_USED).map(|_| entry()).collect();
        let m = message(check(body(serde_json::json!({"proxy": "p", "used": used}))).unwrap_err());
        assert_eq!(m, "used must be at most 10000 entries per exchange");
    }

    #[test]
    fn members_round_trip_and_names_cannot_collide() {
        let m = Member {
            kind: Kind::Address,
            limit: "a\",\"b".to_string(),
            caller: "c".to_string(),
        };
        assert_eq!(Member::decode(&m.encode()), Some(m.clone()));
        let other = Member {
            kind: Kind::Address,
            limit: "a".to_string(),
            caller: "b\",\"c".to_string(),
        };
        assert_ne!(m.encode(), other.encode());
        assert_eq!(Member::decode(r#"["x","a","b"]"#), None);
        assert_eq!(Member::decode("garbage"), None);
    }

    #[test]
    fn an_outage_is_logged_when_it_starts_then_every_30_s_then_when_it_ends() {
        let mut o = Outage::default();
        assert_eq!(o.answered(), None);
        assert_eq!(o.failed(100), Some(1));
        // A proxy fleet's failures within the next 30 s: no line.
        for now in 100..130 {
            assert_eq!(o.failed(now), None);
        }
        assert_eq!(o.failed(130), Some(31));
        assert_eq!(o.failed(131), None);
        assert_eq!(o.answered(), Some(33));
        assert_eq!(o, Outage::default());
        // The next outage's first failure is logged at once.
        assert_eq!(o.failed(140), Some(1));
    }

    #[test]
    fn cursors_round_trip_and_anything_else_starts_over() {
        let c = Cursor {
            epoch: "1767225600000000".to_string(),
            seq: 130,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for other in [
            "",
            "130",
            ".130",
            "1.",
            "1.x",
            "a.1",
            "1.2.3",
            "1.99999999999999999999",
        ] {
            assert_eq!(Cursor::decode(other), None, "{other}");
        }
        let ex = check(body(
            serde_json::json!({"proxy": "p", "cursor": "nonsense"}),
        ))
        .unwrap();
        assert_eq!(ex.cursor, None);
    }
}
