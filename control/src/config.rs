//! `gatehouse-control serve` settings: flags or environment, checked once at start-up.
//!
//! There is no default secret: both tokens must be set, and start-up fails with a message
//! naming every missing or unusable setting. Tokens come only from the environment (a
//! flag would show them in `ps`) and are never logged; `Debug` prints them redacted, and
//! the database URL's password too.
//!
//! A token must look drawn at random ([`token_problem`]): at least [`MIN_TOKEN_LEN`]
//! visible ASCII characters, at least [`MIN_TOKEN_DISTINCT`] of them distinct, and at
//! least [`MIN_TOKEN_BITS`] bits by the usual estimate, length × log2(the alphabet its
//! characters come from): digits 10, hex 16, lower or upper case letters 26 each, other
//! symbols 32, summed over the classes it uses (trailing `=` padding not counted). So
//! `gatehouse-control new-token`, `openssl rand -base64 32` and `openssl rand -hex 32`
//! pass, as does a 32-digit hex token (128 bits); a word, a sentence, a repeated pattern
//! or a run of digits does not. Tokens are the only secret guarding the admin API, and
//! the per-client failure limit (`app.rs`) only slows guessing down: the token itself
//! must be out of reach.

use crate::plans::Plans;
use crate::store::{Backend, redact_url};
use crate::token_lifetime::{TokenLifetime, parse_lifetime};
use gatehouse_core::policy::Policy;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub const USAGE: &str =
    "gatehouse-control serve [--listen ADDR] [--database-url URL] [--policy FILE]
  environment:
    GATEHOUSE_ADMIN_TOKEN        required: bearer token of the admin API
    GATEHOUSE_FEED_TOKEN         required: bearer token of GET /v1/cache, POST /v1/events
                                 and POST /v1/limits/exchange
                                 Each at least 32 random characters (128 bits): make one
                                 with `gatehouse-control new-token` (or
                                 `openssl rand -base64 32`)
    GATEHOUSE_TOKEN_FAILURES_PER_MINUTE
                                 failed token attempts a client may make in a minute before
                                 it gets 429 for the rest of it. Defaults to 10
    GATEHOUSE_CONTROL_LISTEN     defaults to 127.0.0.1:8081 (--listen)
    GATEHOUSE_DATABASE_URL       defaults to sqlite://gatehouse-control.db (--database-url);
                                 or postgres://USER:PASSWORD@HOST:PORT/DATABASE
    GATEHOUSE_POLICY             the proxies' policy file (--policy): its plans, token
                                 lifetime and routes are the service's too. Defaults to none
    GATEHOUSE_PLANS              the plans keys may be issued on, comma-separated (each one
                                 the policy's, with --policy). Defaults to the policy's
                                 plans, else free,solo,team,enterprise
    GATEHOUSE_KEY_PREFIX         defaults to ghk
    GATEHOUSE_MAX_KEYS_PER_USER  defaults to 5
    GATEHOUSE_MAX_JWT_LIFETIME   the proxies' jwt.max_token_lifetime, or unbounded: JWT
                                 revocations last as long as the tokens they cover. Defaults
                                 to the policy's, else 24h; with --policy, at least the
                                 policy's
    GATEHOUSE_JWT_LEEWAY         the proxies' jwt.leeway. Defaults to the policy's, else 60s;
                                 with --policy, at least the policy's
    GATEHOUSE_CLEANUP_INTERVAL   defaults to 60s
    GATEHOUSE_RETENTION          defaults to 7d (expired entries and revoked keys are
                                 purged after it)
    GATEHOUSE_EVENT_RETENTION    defaults to 30d (refusals, request counts and proxies
                                 reported by POST /v1/events are purged after it)
    GATEHOUSE_FEED_PAGE_SIZE     records (keys, user and jti revocations) in one answer of
                                 GET /v1/cache, 100 to 50000. Defaults to 10000
    GATEHOUSE_ALERT_DISTINCT_REFUSED
                                 the dashboard's \"many distinct callers refused\" alert
                                 fires when more callers than this got 429 in the last 5
                                 minutes, 1 to 1000000. Defaults to 10
    GATEHOUSE_REDIS_URL          the Redis that keeps fleet-wide rate limits
                                 (POST /v1/limits/exchange, control/FLEET.md):
                                 redis://[:PASSWORD@]HOST:PORT/DB or
                                 redis+unix:///PATH (no TLS). Defaults to none: the exchange answers
                                 503 FLEET_UNAVAILABLE, and nothing else needs Redis";

/// Records in one feed answer unless set (control/FEED.md).
pub const DEFAULT_FEED_PAGE_SIZE: u32 = 10_000;
/// The page sizes accepted: below, a snapshot of a million keys takes ten thousand
/// round trips; above, one answer of typical records (some 250 bytes of JSON each) nears
/// the 16 MiB a proxy's sync reads (an answer over it is logged and counted, `feed.rs`).
pub const FEED_PAGE_SIZES: std::ops::RangeInclusive<u32> = 100..=50_000;

/// The shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 32;
/// The fewest distinct characters in a token: fewer is a word or a pattern.
pub const MIN_TOKEN_DISTINCT: usize = 10;
/// The least estimated strength of a token, in bits.
pub const MIN_TOKEN_BITS: f64 = 128.0;
/// How to make a token, for start-up errors.
pub const TOKEN_HOW_TO: &str =
    "make one with `gatehouse-control new-token` (or `openssl rand -base64 32`)";

/// Why `token` is not strong enough to be a bearer token (see the module doc), or `None`.
/// The answer never quotes the token.
pub fn token_problem(token: &str) -> Option<String> {
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Some(
            "may hold visible ASCII characters only (no spaces or control characters)".into(),
        );
    }
    let body = token.trim_end_matches('=').as_bytes();
    let len = body.len();
    if len < MIN_TOKEN_LEN {
        return Some(format!(
            "must be at least {MIN_TOKEN_LEN} characters, not counting `=` padding; it has {len}"
        ));
    }
    let mut seen = [false; 128];
    for b in token.bytes() {
        if let Some(s) = seen.get_mut(usize::from(b)) {
            *s = true;
        }
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < MIN_TOKEN_DISTINCT {
        return Some(format!(
            "must use at least {MIN_TOKEN_DISTINCT} distinct characters; it uses {distinct}"
        ));
    }
    let hex_lower = body
        .iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let hex_upper = body
        .iter()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
    let pool: u32 = if body.iter().all(u8::is_ascii_digit) {
        10
    } else if hex_lower || hex_upper {
        16
    } else {
        [
            (body.iter().any(u8::is_ascii_digit), 10),
            (body.iter().any(u8::is_ascii_lowercase), 26),
            (body.iter().any(u8::is_ascii_uppercase), 26),
            (body.iter().any(|b| !b.is_ascii_alphanumeric()), 32),
        ]
        .iter()
        .filter(|(used, _)| *used)
        .map(|(_, size)| size)
        .sum()
    };
    let bits = len as f64 * f64::from(pool).log2();
    if bits < MIN_TOKEN_BITS {
        return Some(format!(
            "must hold at least {MIN_TOKEN_BITS} bits; {len} characters from an alphabet of \
             {pool} hold about {bits:.0}"
        ));
    }
    None
}

/// A bearer token. Compared in constant time: both sides are hashed first, so neither the
/// content nor the length of the expected token leaks through timing.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(token: &str) -> Token {
        Token(Sha256::digest(token.as_bytes()).into())
    }

    pub fn matches(&self, presented: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.0.ct_eq(&presented).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where the data lives: `sqlite:PATH` / `sqlite://PATH` (the file is created on first
/// start) or `postgres://` / `postgresql://` (the database must exist). `Display` and
/// `Debug` hide the password; only [`DatabaseUrl::expose`] gives the URL as written.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Result<DatabaseUrl, String> {
        let url = url.into();
        match Backend::of_url(&url) {
            Some(_) => Ok(DatabaseUrl(url)),
            None => Err(format!(
                "GATEHOUSE_DATABASE_URL / --database-url must be a sqlite:, postgres:// or \
                 postgresql:// URL, got {:?}",
                redact_url(&url)
            )),
        }
    }

    /// The URL with its password, for opening the database and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// The Redis of fleet-wide limits. It may hold a password, so it is never shown:
/// `Debug` prints it redacted, and nothing displays it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checked as the Redis client reads it; the error never quotes the URL.
    pub fn new(url: impl Into<String>) -> Result<RedisUrl, String> {
        let url = url.into();
        crate::fleet::RedisFleet::new(&url, crate::fleet::Tuning::default())?;
        Ok(RedisUrl(url))
    }

    /// The URL with its password, for connecting and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisUrl(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: DatabaseUrl,
    pub admin_token: Token,
    pub feed_token: Token,
    /// Prefix of the keys issued. Defaults to `ghk`.
    pub key_prefix: String,
    /// Usable, unreplaced keys one user may hold. Defaults to 5.
    pub max_keys_per_user: u32,
    /// How long the proxies accept a JWT, which JWT revocations last
    /// (`token_lifetime.rs`). Defaults to the policy's bound, else 24h and a 60s leeway.
    pub token_lifetime: TokenLifetime,
    /// How often the cleanup job runs. Defaults to 60s.
    pub cleanup_interval: Duration,
    /// How long expired entries and revoked keys stay in the feed before they are purged.
    /// Defaults to 7d.
    pub retention: Duration,
    /// How long refusal events, per-minute request counts and proxies not heard from are
    /// kept. Defaults to 30d.
    pub event_retention: Duration,
    /// The policy the proxies run (`--policy FILE`), checked at start-up like
    /// `gatehouse-harness check` does. Defaults to none.
    pub policy: Option<Arc<Policy>>,
    /// The plans keys may be issued on (`plans.rs`). Defaults to the policy's, else the
    /// plugin's default plans.
    pub plans: Plans,
    /// Failed bearer-token attempts a client may make per minute before it is locked out
    /// for the rest of the minute (`token_limit.rs`). Defaults to 10.
    pub token_failures_per_minute: u32,
    /// Records (keys, user and jti revocations together) in one answer of the feed
    /// (control/FEED.md). Defaults to [`DEFAULT_FEED_PAGE_SIZE`].
    pub feed_page_size: u32,
    /// The Redis of fleet-wide limits (`fleet.rs`). Defaults to none: the exchange answers
    /// 503.
    pub redis_url: Option<RedisUrl>,
    /// The exchange's inner workings (page size, proxy window); not a setting.
    pub fleet: crate::fleet::Tuning,
    /// The "many distinct callers refused" alert fires when more callers than this were
    /// refused with 429 in the last 5 minutes (`stats/refusals.rs`). Defaults to 10.
    pub alert_distinct_refused: u32,
}

impl Config {
    /// Settings for tests and embedding: the two tokens, every other setting at its default.
    pub fn with_tokens(admin: &str, feed: &str) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_url: DatabaseUrl("sqlite://gatehouse-control.db".to_string()),
            admin_token: Token::new(admin),
            feed_token: Token::new(feed),
            key_prefix: "ghk".to_string(),
            max_keys_per_user: 5,
            token_lifetime: TokenLifetime::default(),
            cleanup_interval: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 86_400),
            event_retention: Duration::from_secs(30 * 86_400),
            policy: None,
            plans: Plans::default(),
            token_failures_per_minute: crate::token_limit::DEFAULT_LIMIT,
            feed_page_size: DEFAULT_FEED_PAGE_SIZE,
            redis_url: None,
            fleet: crate::fleet::Tuning::default(),
            alert_distinct_refused: crate::stats::refusals::DEFAULT_ALERT_DISTINCT_REFUSED,
        }
    }

    /// Reads and checks a policy file; the error names the file, line and column.
    pub fn load_policy(path: &str) -> Result<Arc<Policy>, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| format!("GATEHOUSE_POLICY / --policy: reading {path}: {e}"))?;
        gatehouse_core::policy::load_yaml(path, &source)
            .map(|loaded| Arc::new(loaded.policy))
            .map_err(|e| format!("GATEHOUSE_POLICY / --policy: the policy is not valid:\n{e}"))
    }

    /// Reads flags (`args`, after `serve`) and the environment (`env`).
    pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
        let mut listen = env("GATEHOUSE_CONTROL_LISTEN");
        let mut database_url = env("GATEHOUSE_DATABASE_URL");
        let mut policy = env("GATEHOUSE_POLICY");
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let value = rest.next().cloned();
            match (flag.as_str(), value) {
                ("--listen", Some(v)) => listen = Some(v),
                ("--database-url", Some(v)) => database_url = Some(v),
                ("--policy", Some(v)) => policy = Some(v),
                _ => return Err(format!("unexpected argument {flag:?}\nusage: {USAGE}")),
            }
        }
        let mut problems = Vec::new();
        let mut token = |name: &str| match env(name) {
            None => {
                problems.push(format!("{name} is not set"));
                None
            }
            Some(t) => match token_problem(&t) {
                Some(why) => {
                    problems.push(format!("{name} {why}: {TOKEN_HOW_TO}"));
                    None
                }
                None => Some(t),
            },
        };
        let admin = token("GATEHOUSE_ADMIN_TOKEN");
        let feed = token("GATEHOUSE_FEED_TOKEN");
        if let (Some(a), Some(f)) = (&admin, &feed)
            && a == f
        {
            problems.push(
                "GATEHOUSE_FEED_TOKEN must differ from GATEHOUSE_ADMIN_TOKEN (the feed token \
                 may only read the feed)"
                    .to_string(),
            );
        }
        let mut config = Config::with_tokens(
            admin.as_deref().unwrap_or_default(),
            feed.as_deref().unwrap_or_default(),
        );
        if let Some(l) = listen {
            match l.parse() {
                Ok(a) => config.listen = a,
                Err(_) => problems.push(format!(
                    "GATEHOUSE_CONTROL_LISTEN / --listen must be host:port, got {l:?}"
                )),
            }
        }
        if let Some(u) = database_url {
            match DatabaseUrl::new(u) {
                Ok(u) => config.database_url = u,
                Err(problem) => problems.push(problem),
            }
        }
        if let Some(path) = policy {
            match Config::load_policy(&path) {
                Ok(p) => config.policy = Some(p),
                Err(problem) => problems.push(problem),
            }
        }
        match Plans::resolve(env("GATEHOUSE_PLANS").as_deref(), config.policy.as_deref()) {
            Ok(plans) => config.plans = plans,
            Err(problem) => problems.push(problem),
        }
        if let Some(p) = env("GATEHOUSE_KEY_PREFIX") {
            if gatehouse_core::authn::api_key::is_valid_prefix(&p) {
                config.key_prefix = p;
            } else {
                problems.push(format!(
                    "GATEHOUSE_KEY_PREFIX must start with a-z and have 1 to 32 of a-z 0-9 _, \
                     got {p:?}"
                ));
            }
        }
        if let Some(n) = env("GATEHOUSE_TOKEN_FAILURES_PER_MINUTE") {
            match n.parse::<u32>() {
                Ok(n) if (1..=1_000_000).contains(&n) => config.token_failures_per_minute = n,
                _ => problems.push(format!(
                    "GATEHOUSE_TOKEN_FAILURES_PER_MINUTE must be a whole number from 1 to \
                     1000000, got {n:?}"
                )),
            }
        }
        if let Some(n) = env("GATEHOUSE_FEED_PAGE_SIZE") {
            match n.parse::<u32>() {
                Ok(n) if FEED_PAGE_SIZES.contains(&n) => config.feed_page_size = n,
                _ => problems.push(format!(
                    "GATEHOUSE_FEED_PAGE_SIZE must be a whole number from {} to {}, got {n:?}",
                    FEED_PAGE_SIZES.start(),
                    FEED_PAGE_SIZES.end()
                )),
            }
        }
        if let Some(n) = env("GATEHOUSE_ALERT_DISTINCT_REFUSED") {
            match n.parse::<u32>() {
                Ok(n) if (1..=1_000_000).contains(&n) => config.alert_distinct_refused = n,
                _ => problems.push(format!(
                    "GATEHOUSE_ALERT_DISTINCT_REFUSED must be a whole number from 1 to 1000000, \
                     got {n:?}"
                )),
            }
        }
        if let Some(n) = env("GATEHOUSE_MAX_KEYS_PER_USER") {
            match n.parse::<u32>() {
                Ok(n) if n >= 1 => config.max_keys_per_user = n,
                _ => problems.push(format!(
                    "GATEHOUSE_MAX_KEYS_PER_USER must be a whole number from 1, got {n:?}"
                )),
            }
        }
        let env_lifetime = env("GATEHOUSE_MAX_JWT_LIFETIME").and_then(|v| {
            let parsed = parse_lifetime(&v);
            if parsed.is_none() {
                problems.push(format!(
                    "GATEHOUSE_MAX_JWT_LIFETIME must be a duration like 15m, 24h or 7d, or \
                     unbounded, got {v:?}"
                ));
            }
            parsed
        });
        let env_leeway = env("GATEHOUSE_JWT_LEEWAY").and_then(|v| {
            let parsed = parse_duration(&v).map(|d| d.as_secs());
            if parsed.is_none() {
                problems.push(format!(
                    "GATEHOUSE_JWT_LEEWAY must be a duration like 0s, 60s or 5m, got {v:?}"
                ));
            }
            parsed
        });
        let jwt = config.policy.as_deref().and_then(|p| p.jwt.as_ref());
        match TokenLifetime::resolve(jwt, env_lifetime, env_leeway) {
            Ok(t) => config.token_lifetime = t,
            Err(problem) => problems.push(problem),
        }
        for (name, slot) in [
            ("GATEHOUSE_CLEANUP_INTERVAL", &mut config.cleanup_interval),
            ("GATEHOUSE_RETENTION", &mut config.retention),
            ("GATEHOUSE_EVENT_RETENTION", &mut config.event_retention),
        ] {
            if let Some(v) = env(name) {
                match parse_duration(&v) {
                    Some(d) if !d.is_zero() => *slot = d,
                    _ => problems.push(format!(
                        "{name} must be a duration like 90s, 15m, 24h or 7d, got {v:?}"
                    )),
                }
            }
        }
        if let Some(u) = env("GATEHOUSE_REDIS_URL").filter(|u| !u.is_empty()) {
            match RedisUrl::new(u) {
                Ok(u) => config.redis_url = Some(u),
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(format!(
                "gatehouse-control serve cannot start:\n  - {}\nusage: {USAGE}",
                problems.join("\n  - ")
            ))
        }
    }
}

/// `90`, `90s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (s.get(..i)?, s.get(i..)?),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)], args: &[&str]) -> Result<Config, String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Config::parse(&args, &|k| map.get(k).cloned())
    }

    const TOKENS: [(&str, &str); 2] = [
        (
            "GATEHOUSE_ADMIN_TOKEN",
            "admin-token-for-unit-tests-7f3a9c2e41b8",
        ),
        (
            "GATEHOUSE_FEED_TOKEN",
            "feed-token-for-unit-tests-0d5b6e8a13c4",
        ),
    ];

    #[test]
    fn missing_tokens_are_both_named() {
        let err = parse(&[], &[]).unwrap_err();
        assert!(err.contains("GATEHOUSE_ADMIN_TOKEN is not set"), "{err}");
        assert!(err.contains("GATEHOUSE_FEED_TOKEN is not set"), "{err}");
    }

    #[test]
    fn short_or_equal_tokens_are_refused() {
        let err = parse(
            &[
                ("GATEHOUSE_ADMIN_TOKEN", "short"),
                ("GATEHOUSE_FEED_TOKEN", "short"),
            ],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        assert!(err.contains("gatehouse-control new-token"), "{err}");
        let same = "same-token-for-both-7f3a9c2e41b80d5b6e8a";
        let err = parse(
            &[
                ("GATEHOUSE_ADMIN_TOKEN", same),
                ("GATEHOUSE_FEED_TOKEN", same),
            ],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("must differ"), "{err}");
    }

    #[test]
    fn random_tokens_pass_and_made_up_ones_are_refused_without_being_quoted() {
        for good in [
            "3q2-9_Zx0pLm7Rw8Tb4Kc1Yv6Nd5Hs2Ja9",       // base64url, 34
            "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0ZXI=", // base64 with padding
            "0123456789abcdef0123456789abcdef",         // 32 hex digits: 128 bits
            "9F86D081884C7D659A2FEAA0C55AD015",         // upper-case hex
            "3141592653589793238462643383279502884197", // 40 digits: 133 bits
        ] {
            assert_eq!(token_problem(good), None, "{good}");
        }
        for _ in 0..100 {
            let t = crate::random::base62(43).unwrap();
            assert_eq!(token_problem(&t), None, "{t}");
        }
        for (bad, why) in [
            ("short-but-random-Zx9", "at least 32 characters"),
            (
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "at least 10 distinct",
            ),
            (
                "changeme-changeme-changeme-changeme",
                "at least 10 distinct",
            ),
            ("12345678901234567890123456789012", "at least 128 bits"),
            (
                "with spaces in it, which headers lose at the ends",
                "visible ASCII",
            ),
            ("tab\tseparated-token-0123456789abcdef", "visible ASCII"),
            (
                "padding-does-not-count===========",
                "not counting `=` padding",
            ),
        ] {
            let why_not = token_problem(bad).unwrap_or_default();
            assert!(why_not.contains(why), "{bad}: {why_not}");
            assert!(!why_not.contains(bad), "{why_not}");
        }
        // At start-up, the message names the setting and says how to make a token.
        let err = parse(
            &[
                (
                    "GATEHOUSE_ADMIN_TOKEN",
                    "changeme-changeme-changeme-changeme",
                ),
                (
                    "GATEHOUSE_FEED_TOKEN",
                    "feed-token-for-unit-tests-0d5b6e8a13c4",
                ),
            ],
            &[],
        )
        .unwrap_err();
        assert!(
            err.contains("GATEHOUSE_ADMIN_TOKEN must use at least 10 distinct characters"),
            "{err}"
        );
        assert!(err.contains("openssl rand -base64 32"), "{err}");
        assert!(!err.contains("changeme"), "{err}");
    }

    #[test]
    fn defaults_then_env_then_flags() {
        let c = parse(&TOKENS, &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.database_url.expose(), "sqlite://gatehouse-control.db");
        assert_eq!(c.max_keys_per_user, 5);
        assert_eq!(c.retention, Duration::from_secs(604_800));
        assert_eq!(c.event_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.token_failures_per_minute, 10);
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_TOKEN_FAILURES_PER_MINUTE", "1000"));
        assert_eq!(parse(&env, &[]).unwrap().token_failures_per_minute, 1000);
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_TOKEN_FAILURES_PER_MINUTE", "0"));
        let err = parse(&env, &[]).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_TOKEN_FAILURES_PER_MINUTE must be a whole number"),
            "{err}"
        );
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_CONTROL_LISTEN", "127.0.0.1:9000"));
        env.push(("GATEHOUSE_RETENTION", "2h"));
        env.push(("GATEHOUSE_EVENT_RETENTION", "90d"));
        let c = parse(&env, &["--listen", "127.0.0.1:9001"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(c.retention, Duration::from_secs(7200));
        assert_eq!(c.event_retention, Duration::from_secs(90 * 86_400));
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_EVENT_RETENTION", "0d"));
        let err = parse(&env, &[]).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_EVENT_RETENTION must be a duration"),
            "{err}"
        );
    }

    #[test]
    fn the_feed_page_size_defaults_to_10000_and_takes_100_to_50000() {
        assert_eq!(parse(&TOKENS, &[]).unwrap().feed_page_size, 10_000);
        for (value, taken) in [("100", 100), ("50000", 50_000), ("2500", 2500)] {
            let mut env = TOKENS.to_vec();
            env.push(("GATEHOUSE_FEED_PAGE_SIZE", value));
            assert_eq!(parse(&env, &[]).unwrap().feed_page_size, taken);
        }
        for value in ["99", "50001", "0", "-5", "10k", ""] {
            let mut env = TOKENS.to_vec();
            env.push(("GATEHOUSE_FEED_PAGE_SIZE", value));
            let err = parse(&env, &[]).unwrap_err();
            assert!(
                err.contains(&format!(
                    "GATEHOUSE_FEED_PAGE_SIZE must be a whole number from 100 to 50000, \
                     got {value:?}"
                )),
                "{err}"
            );
        }
        assert!(USAGE.contains("GATEHOUSE_FEED_PAGE_SIZE"));
    }

    #[test]
    fn the_alert_threshold_is_a_setting_from_1() {
        assert_eq!(parse(&TOKENS, &[]).unwrap().alert_distinct_refused, 10);
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_ALERT_DISTINCT_REFUSED", "50"));
        assert_eq!(parse(&env, &[]).unwrap().alert_distinct_refused, 50);
        for value in ["0", "-1", "ten", "1000001"] {
            let mut env = TOKENS.to_vec();
            env.push(("GATEHOUSE_ALERT_DISTINCT_REFUSED", value));
            let err = parse(&env, &[]).unwrap_err();
            assert!(
                err.contains("GATEHOUSE_ALERT_DISTINCT_REFUSED must be a whole number"),
                "{err}"
            );
        }
        assert!(USAGE.contains("GATEHOUSE_ALERT_DISTINCT_REFUSED"));
    }

    #[test]
    fn tokens_match_only_themselves_and_never_print() {
        let t = Token::new("admin-token-for-unit-tests-7f3a9c2e41b8");
        assert!(t.matches(b"admin-token-for-unit-tests-7f3a9c2e41b8"));
        assert!(!t.matches(b"admin-token-for-unit-tests-7f3a9c2e41b"));
        assert!(!format!("{t:?}").contains("admin"));
    }

    #[test]
    fn sqlite_and_postgres_urls_are_accepted_and_others_named() {
        for url in [
            "sqlite://data/control.db",
            "sqlite:control.db",
            "postgres://gh:pw@db:5432/gh",
            "postgresql://gh@db/gh",
        ] {
            let mut env = TOKENS.to_vec();
            env.push(("GATEHOUSE_DATABASE_URL", url));
            assert_eq!(parse(&env, &[]).unwrap().database_url.expose(), url);
        }
        let err = parse(&TOKENS, &["--database-url", "mysql://gh:hunter2@db/gh"]).unwrap_err();
        assert!(
            err.contains("must be a sqlite:, postgres:// or postgresql:// URL"),
            "{err}"
        );
        assert!(err.contains("mysql://gh:***@db/gh"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_database_password_never_prints() {
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_DATABASE_URL", "postgres://gh:hunter2@db/gh"));
        let c = parse(&env, &[]).unwrap();
        for shown in [format!("{c:?}"), c.database_url.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("postgres://gh:***@db/gh"), "{shown}");
        }
    }

    #[test]
    fn a_policy_file_is_checked_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "version: 1\nroutes:\n  - match: { path_prefix: /v1/ }\n",
        )
        .unwrap();
        let mut env = TOKENS.to_vec();
        let good = good.to_str().unwrap().to_string();
        env.push(("GATEHOUSE_POLICY", &good));
        let c = parse(&env, &[]).unwrap();
        assert_eq!(c.policy.unwrap().routes.len(), 1);

        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "version: 1\nroutes:\n  - match: { path_prefx: /v1/ }\n",
        )
        .unwrap();
        let err = parse(&TOKENS, &["--policy", bad.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("bad.yaml:3:"), "{err}");
        let err = parse(&TOKENS, &["--policy", "/nonexistent/p.yaml"]).unwrap_err();
        assert!(err.contains("reading /nonexistent/p.yaml"), "{err}");
    }

    #[test]
    fn plans_come_from_the_setting_else_the_policy_else_the_defaults() {
        assert_eq!(
            parse(&TOKENS, &[]).unwrap().plans.listed(),
            "[free, solo, team, enterprise]"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "version: 1\nplans:\n  gold: { requests_per_minute: 10 }\n  \
             silver: { requests_per_minute: 5 }\nroutes:\n  - match: { path_prefix: /v1/ }\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let c = parse(&TOKENS, &["--policy", file]).unwrap();
        assert_eq!(
            c.plans.listed(),
            "[free, solo, team, enterprise, gold, silver]"
        );
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_PLANS", "silver"));
        let c = parse(&env, &["--policy", file]).unwrap();
        assert_eq!(c.plans.listed(), "[silver]");
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_PLANS", "silver,pro"));
        let err = parse(&env, &["--policy", file]).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_PLANS names plans the policy does not have: [pro]"),
            "{err}"
        );
        let err = parse(&env, &["--policy", file, "--listen", "nowhere"]).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_PLANS") && err.contains("--listen"),
            "{err}"
        );
    }

    #[test]
    fn the_token_lifetime_comes_from_the_policy_or_the_settings() {
        let c = parse(&TOKENS, &[]).unwrap();
        assert_eq!(c.token_lifetime, TokenLifetime::default());
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_MAX_JWT_LIFETIME", "1h"));
        env.push(("GATEHOUSE_JWT_LEEWAY", "0s"));
        let c = parse(&env, &[]).unwrap();
        assert_eq!(c.token_lifetime.acceptance_secs, Some(3600));
        assert_eq!(c.token_lifetime.leeway_secs, 0);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "version: 1\njwt:\n  max_token_lifetime: 2h\n  leeway: 30s\n  keys:\n    \
             - { kid: k1, alg: HS256, secret_env: K }\nroutes:\n  - match: { path_prefix: /v1/ }\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let c = parse(&TOKENS, &["--policy", file]).unwrap();
        assert_eq!(c.token_lifetime.acceptance_secs, Some(7230));
        assert_eq!(c.token_lifetime.leeway_secs, 30);
        // Shorter than the policy: start-up stops, naming both.
        let err = parse(&env, &["--policy", file]).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_MAX_JWT_LIFETIME (1h) is shorter than the policy's jwt.max_token_lifetime (2h)"),
            "{err}"
        );
        assert!(
            err.contains("GATEHOUSE_JWT_LEEWAY (0s) is shorter"),
            "{err}"
        );
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_MAX_JWT_LIFETIME", "forever"));
        let err = parse(&env, &[]).unwrap_err();
        assert!(err.contains("or unbounded, got \"forever\""), "{err}");
    }

    #[test]
    fn the_redis_url_is_optional_checked_and_never_shown() {
        assert_eq!(parse(&TOKENS, &[]).unwrap().redis_url, None);
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://:hunter2@redis:6379/0",
            "redis+unix:///run/redis.sock",
        ] {
            let mut env = TOKENS.to_vec();
            env.push(("GATEHOUSE_REDIS_URL", url));
            let c = parse(&env, &[]).unwrap();
            assert_eq!(c.redis_url.as_ref().unwrap().expose(), url);
            assert!(!format!("{c:?}").contains("hunter2"));
        }
        let mut env = TOKENS.to_vec();
        env.push(("GATEHOUSE_REDIS_URL", "http://user:hunter2@redis/"));
        let err = parse(&env, &[]).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_REDIS_URL must be a redis://"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        assert!(USAGE.contains("GATEHOUSE_REDIS_URL"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("7w"), None);
        assert_eq!(parse_duration(""), None);
    }
}
