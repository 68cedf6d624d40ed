//! Storage behind one trait, so the handlers do not know which database holds the keys.
//! SQLite (`sqlite.rs`) is the default; PostgreSQL (`postgres.rs`) when the database URL
//! says `postgres://` or `postgresql://`. Each has its own pool type and its own migration
//! folder (`control/migrations/<backend>/`): sqlx's `Any` driver cannot carry every column
//! type portably, and each backend needs its own way to serialize writers.
//!
//! Every change runs in one transaction that also bumps the feed version
//! (`UPDATE meta SET seq = seq + 1 RETURNING seq`), stamps each row it touches with that
//! version and writes its audit event. Because writers serialize on that one row, versions
//! commit in order: a reader that sees version N sees every change up to N, so the feed
//! never loses a change to a gap. What the proxies report (`record_events`: refusals,
//! key uses, request counts, their cache version) is not a change: it runs in one write
//! transaction too, all or nothing, but bumps no version and stamps no row, so the feed
//! never sees it. Times are Unix seconds passed in by the caller; the store never reads a
//! clock. How the feed is cut into pages is shared by both backends (`paging.rs`).

pub mod levers;
pub mod paging;
pub mod postgres;
pub mod sqlite;

pub use levers::{
    AllowEntry, FeedLevers, Levers, MAX_LEVERS, Mode, ModeLever, Override, Scope, Subject,
};
pub use paging::{FeedAnswer, FeedAsk, FeedRecords, FeedTable, SnapshotAt, SnapshotPos};

use serde::Serialize;
use std::sync::Arc;

/// Which database a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// By the URL's scheme: `sqlite:`, `postgres://` or `postgresql://`.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Opens (creating and migrating as needed) the database `url` points at. Errors never
/// hold the URL's password.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::open(url).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(postgres::PostgresStore::open(url).await?)),
        None => Err(StoreError::Database(
            "the database URL must start with sqlite:, postgres:// or postgresql://".to_string(),
        )),
    }
}

/// `url` with its password (in the user info or a `password=` parameter) replaced by
/// `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (head, query) = match url.find('?') {
        Some(q) if q >= scheme_end => url.split_at(q),
        _ => (url, ""),
    };
    let (scheme, rest) = head.split_at(scheme_end);
    // The user info ends at the last `@` before the query: an unencoded `@` or `/` in the
    // password must not let its tail through.
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match rest.rfind('@') {
        Some(at) => {
            let (info, host_and_path) = rest.split_at(at);
            match info.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(info),
            }
            out.push_str(host_and_path);
        }
        None => out.push_str(rest),
    }
    if let Some(params) = query.strip_prefix('?') {
        out.push('?');
        let redacted: Vec<String> = params
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&redacted.join("&"));
    }
    out
}

/// The password pieces of `url` (as written in it), to scrub from error messages.
fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return secrets;
    };
    let rest = url.get(scheme_end..).unwrap_or_default();
    let (head, query) = rest.split_once('?').unwrap_or((rest, ""));
    if let Some((info, _)) = head.rsplit_once('@')
        && let Some((_, password)) = info.split_once(':')
        && !password.is_empty()
    {
        secrets.push(password.to_string());
    }
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k.to_ascii_lowercase().contains("password")
            && !v.is_empty()
        {
            secrets.push(v.to_string());
        }
    }
    secrets
}

/// `message` with every password piece of `url` replaced by `***`.
pub(crate) fn scrub(message: String, url: &str) -> String {
    url_secrets(url)
        .iter()
        .fold(message, |m, secret| m.replace(secret.as_str(), "***"))
}

/// Who made a change and when, for the audit trail.
#[derive(Clone, Debug)]
pub struct ChangeCtx {
    pub now: i64,
    pub actor: String,
    pub request_id: String,
    pub client: Option<String>,
}

/// A key to insert: the caller has drawn the secret and hashed it.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub id: String,
    pub sha256: String,
    pub user_id: String,
    pub tenant_id: String,
    pub plan: String,
    pub device_name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

/// What an idempotent issuance records beside its key (`idempotency.rs`): the SHA-256 of
/// the request's Idempotency-Key and of its canonical fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key_sha256: String,
    pub request_sha256: String,
    /// Records made before this instant are forgotten (`now` minus the retention): one is
    /// deleted when its value comes again, as if the cleanup job had got to it first.
    pub not_before: i64,
}

/// A recorded idempotent issuance, found by a retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub request_sha256: String,
    pub key_id: String,
    pub created_at: i64,
    /// The key as it is now; `None` once the cleanup job has deleted it.
    pub key: Option<KeyRow>,
}

/// What [`Store::create_key`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issued {
    /// Inserted the key (and, with a claim, its record).
    Created(KeyRow),
    /// The claim's Idempotency-Key was recorded already: nothing was written.
    Recorded(IdempotencyRecord),
}

/// The most records one change writes. The feed contract (control/FEED.md, "Changes")
/// sends a version whole even when it is larger than a page, so no version may be much
/// larger than this: a bulk import commits in batches of at most this many keys.
pub const MAX_RECORDS_PER_CHANGE: usize = 1000;

/// What became of one key of an import batch ([`Store::import_keys`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// Inserted, stamped with the batch's version.
    Imported,
    /// A key with this SHA-256 was stored already (before the batch, or earlier in it):
    /// left exactly as it was.
    Existing,
    /// Another key (with another SHA-256) already has this id: not inserted.
    IdTaken,
}

/// What [`Store::import_keys`] did with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedBatch {
    /// The batch's feed version; `None` when it inserted nothing, and then it committed
    /// nothing either (no version, no audit event).
    pub version: Option<i64>,
    /// One per key, in the order given.
    pub outcomes: Vec<ImportOutcome>,
}

/// The outcome of each of `keys` once the batch's insert returned `inserted` (the (id,
/// sha256) of each row it inserted); `stored` holds the SHA-256s of the batch the table
/// holds now (needed only when some key was not inserted). A pair inserted once is
/// claimed by its first occurrence only: a key given twice is imported once, then found
/// existing.
pub(crate) fn import_outcomes(
    keys: &[NewKey],
    mut inserted: std::collections::HashSet<(String, String)>,
    stored: &std::collections::HashSet<String>,
) -> Vec<ImportOutcome> {
    keys.iter()
        .map(|k| {
            if inserted.remove(&(k.id.clone(), k.sha256.clone())) {
                ImportOutcome::Imported
            } else if stored.contains(&k.sha256) {
                ImportOutcome::Existing
            } else {
                ImportOutcome::IdTaken
            }
        })
        .collect()
}

/// The most import batches one transaction writes ([`Store::import_keys`]). Each batch
/// is its own change (version, audit event); grouping them spares the database most of
/// its per-commit work: a commit writes every index page its keys touched, and a thousand
/// keys of random hashes touch a thousand pages of each index. Into SQLite holding 10^6
/// keys, a transaction per batch imported some 13,000 keys a second, fifty per
/// transaction 37,000; with the time-ordered ids of imported keys, fifty some 35,000 to
/// 38,000 and a hundred 39,000 to 45,000 on a busy 2-core machine, two hundred no more
/// than a hundred (benches/README.md). Other changes wait for the group's commit: some
/// two seconds at those rates.
pub const MAX_BATCHES_PER_TRANSACTION: usize = 100;

/// Refuses a group of batches larger than one transaction may write, or a batch larger
/// than one change may be.
pub(crate) fn check_import_batches(batches: &[Vec<NewKey>]) -> StoreResult<()> {
    if batches.len() > MAX_BATCHES_PER_TRANSACTION {
        return Err(StoreError::Database(format!(
            "an import transaction holds at most {MAX_BATCHES_PER_TRANSACTION} batches, not {}",
            batches.len()
        )));
    }
    for keys in batches {
        if keys.len() > MAX_RECORDS_PER_CHANGE {
            return Err(StoreError::Database(format!(
                "an import batch holds at most {MAX_RECORDS_PER_CHANGE} keys, not {}",
                keys.len()
            )));
        }
    }
    Ok(())
}

/// The audit target of an import batch: how many keys it inserted.
pub(crate) fn import_target(imported: usize) -> String {
    match imported {
        1 => "1 key".to_string(),
        n => format!("{n} keys"),
    }
}

/// A stored key. `sha256` never leaves the service except in the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub sha256: String,
    pub user_id: String,
    pub tenant_id: String,
    pub plan: String,
    pub device_name: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    /// The expiry set at issuance; never changed afterwards.
    pub expires_at: Option<i64>,
    /// End of a rotation's grace period, if the key was rotated with one.
    pub grace_until: Option<i64>,
    pub revoked_at: Option<i64>,
    pub active: bool,
    pub replaced_by: Option<String>,
    pub version: i64,
    /// The latest use a proxy reported (`POST /v1/events`); not part of the feed.
    pub last_used: Option<i64>,
}

impl KeyRow {
    /// When the key stops working on its own: its expiry, or the end of a rotation's
    /// grace if sooner. This is the `expires_at` the proxies get.
    pub fn effective_expiry(&self) -> Option<i64> {
        match (self.expires_at, self.grace_until) {
            (Some(e), Some(g)) => Some(e.min(g)),
            (e, g) => e.or(g),
        }
    }

    /// Whether the key authenticates at `now`.
    pub fn usable_at(&self, now: i64) -> bool {
        self.active && self.effective_expiry().is_none_or(|e| now < e)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserRevocation {
    pub user: String,
    pub tokens_issued_before: i64,
    pub until: Option<i64>,
    #[serde(skip)]
    pub version: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JtiRevocation {
    pub jti_sha256: String,
    pub until: Option<i64>,
    #[serde(skip)]
    pub version: i64,
}

/// One key as the proxies' cache sees it (control/FEED.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedKey {
    pub sha256: String,
    pub key_id: String,
    pub user: String,
    pub tenant: String,
    pub plan: String,
    pub expires_at: Option<i64>,
    pub active: bool,
    pub scopes: Vec<String>,
}

impl From<&KeyRow> for FeedKey {
    fn from(k: &KeyRow) -> FeedKey {
        FeedKey {
            sha256: k.sha256.clone(),
            key_id: k.id.clone(),
            user: k.user_id.clone(),
            tenant: k.tenant_id.clone(),
            plan: k.plan.clone(),
            expires_at: k.effective_expiry(),
            active: k.active,
            scopes: k.scopes.clone(),
        }
    }
}

/// One answer of the cache feed (control/FEED.md), in the contract's field order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedPage {
    pub epoch: String,
    pub version: i64,
    pub full: bool,
    /// Changes: later versions wait; the caller asks again from `version` at once.
    pub more: bool,
    /// Snapshots: the cursor of the next page; `None` (`null`) on the last.
    pub next: Option<String>,
    pub keys: Vec<FeedKey>,
    pub users: Vec<UserRevocation>,
    pub jtis: Vec<JtiRevocation>,
    /// Every lever in force, when the levers changed in the answer's versions or on a
    /// snapshot's first page; absent: unchanged (control/FEED.md, "Levers").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub levers: Option<FeedLevers>,
}

/// The kinds of audit event: a change of the feed, written in the change's own
/// transaction; a change of the levers (a change of the feed too, with its reason); or a
/// refusal a proxy reported (`POST /v1/events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    Change,
    Lever,
    Refusal,
}

impl AuditKind {
    /// The value of the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Change => "change",
            AuditKind::Lever => "lever",
            AuditKind::Refusal => "refusal",
        }
    }

    pub fn of_column(s: &str) -> StoreResult<AuditKind> {
        match s {
            "change" => Ok(AuditKind::Change),
            "lever" => Ok(AuditKind::Lever),
            "refusal" => Ok(AuditKind::Refusal),
            _ => Err(StoreError::Database(
                "audit_events.kind: unknown kind".to_string(),
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub kind: AuditKind,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: String,
    pub client: Option<String>,
    pub version: i64,
    /// Refusals only (`None` for changes): code, status, method, plan, proxy.
    pub refusal: Option<RefusalDetail>,
    /// Lever changes only: the operator's reason (`None` when a removal gave none) and
    /// what was set.
    pub reason: Option<String>,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusalDetail {
    pub code: String,
    pub status: i64,
    pub method: String,
    pub plan: Option<String>,
    pub proxy: Option<String>,
}

/// One refusal a proxy reported, checked by the handler (`events.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub at: i64,
    pub request_id: String,
    pub method: String,
    pub route: String,
    pub code: String,
    pub status: i64,
    pub key_id: Option<String>,
    pub user: Option<String>,
    pub plan: Option<String>,
    pub client: Option<String>,
    /// A "would refuse" of a rule in shadow mode: the request passed.
    pub shadow: bool,
}

impl Refusal {
    /// Who was refused, as the audit log names actors: the key if the caller presented a
    /// known one, else the user, else `anonymous`.
    pub fn actor(&self) -> String {
        match (&self.key_id, &self.user) {
            (Some(k), _) => format!("key:{k}"),
            (None, Some(u)) => format!("user:{u}"),
            (None, None) => "anonymous".to_string(),
        }
    }

    /// Who was refused, as the summaries group refusals: the key, else the user, else the
    /// client's address (`ip:<address>`: anonymous callers are limited per address), else
    /// `anonymous`.
    pub fn caller(&self) -> String {
        match (&self.key_id, &self.user, &self.client) {
            (Some(k), _, _) => format!("key:{k}"),
            (None, Some(u), _) => format!("user:{u}"),
            (None, None, Some(c)) => format!("ip:{c}"),
            (None, None, None) => "anonymous".to_string(),
        }
    }

    /// The audit log's action: `refused`, or `would_refuse` for a shadow refusal.
    pub fn action(&self) -> &'static str {
        if self.shadow {
            "would_refuse"
        } else {
            "refused"
        }
    }
}

/// Refusals of one minute (of their `at`) with the same code, status, route, caller and
/// shadow flag, as [`EventBatch::refusal_buckets`] folds a post's refusals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalBucket {
    pub minute: i64,
    pub shadow: bool,
    pub code: String,
    pub status: i64,
    pub route: String,
    pub caller: String,
    pub count: i64,
    pub first_at: i64,
    pub last_at: i64,
}

/// Refusals grouped by code, status, route, caller and shadow over a window
/// (`GET /v1/stats/refusals`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalGroup {
    pub code: String,
    pub status: i64,
    pub route: String,
    pub caller: String,
    pub shadow: bool,
    pub count: i64,
    pub first_at: i64,
    pub last_at: i64,
}

/// A caller's or a route's refusals over a window: real ones and shadow "would refuse".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalTally {
    pub name: String,
    pub refused: i64,
    pub would_refuse: i64,
}

/// How many of each list [`Store::refusal_stats`] returns, at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusalLimits {
    pub groups: u32,
    pub top: u32,
}

/// What [`Store::refusal_stats`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefusalStats {
    /// The largest groups first (then the latest seen), at most `limits.groups`.
    pub groups: Vec<RefusalGroup>,
    /// More groups than `limits.groups` were in the window.
    pub more_groups: bool,
    /// By real refusals, then "would refuse", then name; at most `limits.top` each.
    pub top_callers: Vec<RefusalTally>,
    pub top_routes: Vec<RefusalTally>,
    /// Distinct callers refused (real refusals with the alert's status) in the alert's
    /// window.
    pub alert_callers: i64,
}

/// One minute of one plan's requests (`GET /v1/stats/series`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesPoint {
    pub minute: i64,
    pub allowed: i64,
    pub refused: i64,
    pub shadow_refused: i64,
}

/// One plan's minutes with requests in a window, oldest first, and its totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSeries {
    pub totals: PlanCount,
    pub points: Vec<SeriesPoint>,
}

/// What [`Store::series`] found: the busiest plans, by requests in the window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    pub plans: Vec<PlanSeries>,
    /// Plans with requests in the window beyond the `max_plans` returned.
    pub plans_left_off: u64,
}

/// The `max_plans` busiest of `totals` (by allowed + refused + shadow refused, then by
/// name), and how many were left off.
pub(crate) fn busiest(mut totals: Vec<PlanCount>, max_plans: u32) -> (Vec<PlanCount>, u64) {
    let total = |c: &PlanCount| {
        i128::from(c.allowed) + i128::from(c.refused) + i128::from(c.shadow_refused)
    };
    totals.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.plan.cmp(&b.plan)));
    let keep = usize::try_from(max_plans).unwrap_or(usize::MAX);
    let left_off = totals.len().saturating_sub(keep) as u64;
    totals.truncate(keep);
    (totals, left_off)
}

/// Requests one plan served since the proxy's last report (`""`: anonymous callers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanCount {
    pub plan: String,
    pub allowed: i64,
    pub refused: i64,
    /// Requests that passed but a rule in shadow mode would have refused.
    pub shadow_refused: i64,
}

/// The largest count one bucket (or one reported entry) holds: a day of buckets summed
/// stays an exact integer in JSON (below 2^53), whatever the proxies send.
pub const MAX_COUNT: i64 = 1_000_000_000_000;

/// One checked `POST /v1/events`, stored in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// The reporting proxy (Envoy node id), if it named itself.
    pub proxy: Option<String>,
    pub cache_version: Option<i64>,
    pub refusals: Vec<Refusal>,
    /// (key id, Unix seconds).
    pub key_uses: Vec<(String, i64)>,
    pub requests: Vec<PlanCount>,
}

impl EventBatch {
    /// The key uses with one entry per key (the latest), sorted by key id, each with how
    /// many entries named it.
    pub fn latest_uses(&self) -> Vec<(String, i64, u64)> {
        let mut by_key: std::collections::BTreeMap<&str, (i64, u64)> = Default::default();
        for (id, at) in &self.key_uses {
            let e = by_key.entry(id.as_str()).or_insert((*at, 0));
            e.0 = e.0.max(*at);
            e.1 += 1;
        }
        by_key
            .into_iter()
            .map(|(id, (at, n))| (id.to_string(), at, n))
            .collect()
    }

    /// The request counts with one entry per plan (summed, saturating at [`MAX_COUNT`]),
    /// sorted by plan.
    pub fn counts_by_plan(&self) -> Vec<PlanCount> {
        let mut by_plan: std::collections::BTreeMap<&str, (i64, i64, i64)> = Default::default();
        for c in &self.requests {
            let e = by_plan.entry(c.plan.as_str()).or_insert((0, 0, 0));
            e.0 = e.0.saturating_add(c.allowed).min(MAX_COUNT);
            e.1 = e.1.saturating_add(c.refused).min(MAX_COUNT);
            e.2 = e.2.saturating_add(c.shadow_refused).min(MAX_COUNT);
        }
        by_plan
            .into_iter()
            .map(|(plan, (allowed, refused, shadow_refused))| PlanCount {
                plan: plan.to_string(),
                allowed,
                refused,
                shadow_refused,
            })
            .collect()
    }

    /// The refusals folded into one [`RefusalBucket`] per minute of their `at`, code,
    /// status, route, caller and shadow flag, in that order: at most one upsert per row
    /// of `refusal_buckets` a post touches.
    pub fn refusal_buckets(&self) -> Vec<RefusalBucket> {
        type Key = (i64, bool, String, i64, String, String);
        let mut by_key: std::collections::BTreeMap<Key, (i64, i64, i64)> = Default::default();
        for r in &self.refusals {
            let key = (
                minute_of(r.at),
                r.shadow,
                r.code.clone(),
                r.status,
                r.route.clone(),
                r.caller(),
            );
            let e = by_key.entry(key).or_insert((0, r.at, r.at));
            e.0 += 1;
            e.1 = e.1.min(r.at);
            e.2 = e.2.max(r.at);
        }
        by_key
            .into_iter()
            .map(
                |((minute, shadow, code, status, route, caller), (count, first_at, last_at))| {
                    RefusalBucket {
                        minute,
                        shadow,
                        code,
                        status,
                        route,
                        caller,
                        count,
                        first_at,
                        last_at,
                    }
                },
            )
            .collect()
    }
}

/// What a `POST /v1/events` stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub refusals: u64,
    /// Entries naming a known key (others are ignored).
    pub key_uses: u64,
    pub requests: u64,
}

/// A proxy as last heard from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySeen {
    pub proxy: String,
    pub cache_version: Option<i64>,
    pub seen_at: i64,
}

/// What `GET /v1/stats` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub plans: Vec<PlanCount>,
    pub version: i64,
    pub epoch: String,
    pub proxies: Vec<ProxySeen>,
}

/// The start of the minute bucket `t` falls in.
pub fn minute_of(t: i64) -> i64 {
    t - t.rem_euclid(60)
}

/// What one cleanup pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub keys: u64,
    pub users: u64,
    pub jtis: u64,
    /// Idempotency records older than their retention (`idempotency.rs`).
    pub idempotency_keys: u64,
    /// Rate overrides that expired before the cutoff (`levers.rs`).
    pub overrides: u64,
}

/// What one cleanup pass deleted of what the proxies reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventPurgeCounts {
    pub refusals: u64,
    pub usage_buckets: u64,
    /// Rows of `refusal_buckets` (refusals counted per minute).
    pub refusal_buckets: u64,
    pub proxies: u64,
}

#[derive(Debug)]
pub enum StoreError {
    NotFound,
    /// The user already has this many active keys.
    KeyLimit(u32),
    /// The change does not apply to the record's state (e.g. rotating a revoked key).
    Conflict(&'static str),
    /// A lever change would put more than this many entries in force.
    LeversFull(u64),
    Database(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound => write!(f, "not found"),
            StoreError::KeyLimit(n) => write!(f, "the user already has {n} active keys"),
            StoreError::Conflict(why) => write!(f, "{why}"),
            StoreError::LeversFull(n) => write!(f, "{n} levers are in force already"),
            StoreError::Database(e) => write!(f, "database: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::Database(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Database(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How a rotation ends the old key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKeyEnd {
    /// Revoked in the same transaction.
    Now,
    /// Keeps working until this instant (or its own expiry, if sooner), then expires.
    At(i64),
}

/// The rotation rules both backends apply inside their write transaction: `old` may be
/// rotated at `now` only while it is active, unreplaced and unexpired.
pub(crate) fn check_rotatable(old: &KeyRow, now: i64) -> StoreResult<()> {
    if !old.active || old.replaced_by.is_some() {
        return Err(StoreError::Conflict(
            "the key is revoked or already rotated",
        ));
    }
    if !old.usable_at(now) {
        return Err(StoreError::Conflict("the key has expired"));
    }
    Ok(())
}

/// The key that replaces `old`: same owner, plan, device and scopes, and the old expiry
/// (a rotation never extends a key's life).
pub(crate) fn successor(old: &KeyRow, id: String, sha256: String) -> NewKey {
    NewKey {
        id,
        sha256,
        user_id: old.user_id.clone(),
        tenant_id: old.tenant_id.clone(),
        plan: old.plan.clone(),
        device_name: old.device_name.clone(),
        scopes: old.scopes.clone(),
        expires_at: old.expires_at,
    }
}

/// `old` as it stands once `new_id` replaced it at `version`.
pub(crate) fn retired(
    mut old: KeyRow,
    new_id: &str,
    end: OldKeyEnd,
    now: i64,
    version: i64,
) -> KeyRow {
    old.replaced_by = Some(new_id.to_string());
    old.version = version;
    match end {
        OldKeyEnd::Now => {
            old.active = false;
            old.revoked_at = Some(now);
        }
        // Kept active with an earlier effective expiry: the proxies refuse it from then
        // on by themselves, with no feed change needed at that instant. `expires_at`
        // itself stays as issued; `revoked_at` is that end, from which the cleanup job
        // counts the retention, so every copy a proxy in step holds has expired by then.
        OldKeyEnd::At(t) => {
            old.grace_until = Some(t);
            old.revoked_at = old.effective_expiry();
        }
    }
    old
}

/// `key` revoked at `now` in change `version` (an earlier scheduled end stays the end).
pub(crate) fn revoked(mut key: KeyRow, now: i64, version: i64) -> KeyRow {
    key.active = false;
    key.revoked_at = Some(key.revoked_at.map_or(now, |t| t.min(now)));
    key.version = version;
    key
}

/// How a replica learns of changes other processes commit to the same database
/// (`follow.rs` does the following).
#[derive(Clone)]
pub enum Follow {
    /// Read the version this often: SQLite, whose processes share one file and nothing
    /// else.
    Poll(std::time::Duration),
    /// `LISTEN` on `channel` over connections of `pool` (PostgreSQL): every change sends
    /// its version there in its own transaction (`pg_notify`), delivered on commit.
    Notify {
        pool: sqlx::PgPool,
        channel: &'static str,
    },
}

/// A background job that runs on one replica at a time ([`Store::try_job_lock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// `cleanup.rs`: both purges, one pass.
    Cleanup,
}

impl Job {
    /// The job's name, as SQLite's lease table keys it.
    pub fn name(self) -> &'static str {
        match self {
            Job::Cleanup => "cleanup",
        }
    }

    /// The job's PostgreSQL advisory lock key: "gh-clean" in ASCII, unlikely to be
    /// another application's on a shared server.
    pub fn advisory_key(self) -> i64 {
        match self {
            Job::Cleanup => i64::from_be_bytes(*b"gh-clean"),
        }
    }
}

/// How long a SQLite job lease lasts when its holder never releases it (a process killed
/// mid-pass): another replica takes the job over after this.
pub const JOB_LEASE_SECS: i64 = 300;

/// A held job lock: release it when the pass is done. Dropped unreleased (a task
/// aborted mid-pass), it frees itself as its backend can: PostgreSQL closes the session
/// that holds the advisory lock; a SQLite lease expires after [`JOB_LEASE_SECS`].
#[async_trait::async_trait]
pub trait JobLock: Send {
    async fn release(self: Box<Self>) -> StoreResult<()>;
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// The latest committed feed version.
    async fn version(&self) -> StoreResult<i64>;

    /// Inserts a key unless the user already has `max_active` usable, unreplaced keys; the
    /// count and the insert are one write transaction holding the writers' lock (each
    /// backend's module doc says which), so concurrent requests cannot overshoot.
    ///
    /// With a claim, its Idempotency-Key is looked up first under the same lock: recorded
    /// (at or after `not_before`), nothing is written and the record is returned, whatever
    /// the request (the caller compares fingerprints); otherwise the key and the claim's
    /// record are inserted together. A concurrent duplicate that still meets the record's
    /// unique constraint gets the record too, never an error (`idempotency.rs`).
    async fn create_key(
        &self,
        key: NewKey,
        max_active: u32,
        claim: Option<&IdempotencyClaim>,
        ctx: &ChangeCtx,
    ) -> StoreResult<Issued>;
    /// Inserts keys whose secrets the service never saw (a bulk import, `import.rs`), in
    /// one transaction of at most [`MAX_BATCHES_PER_TRANSACTION`] batches, each batch
    /// (at most [`MAX_RECORDS_PER_CHANGE`] keys) one change: one version stamped on every
    /// row it inserts, one audit event (`key.import`, target `<n> keys`). A key whose
    /// SHA-256 is stored already (or was earlier in the group) is left as it is, and one
    /// whose id another key has is not inserted ([`ImportOutcome`]). No per-user limit
    /// applies: the keys exist already, elsewhere. A batch that inserts nothing takes no
    /// version; a group that inserts nothing commits nothing. One answer per batch.
    async fn import_keys(
        &self,
        batches: &[Vec<NewKey>],
        ctx: &ChangeCtx,
    ) -> StoreResult<Vec<ImportedBatch>>;
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRow>>;
    /// One user's keys, oldest first; or, with no user, every key, newest first. At most
    /// `limit`.
    async fn list_keys(&self, user_id: Option<&str>, limit: u32) -> StoreResult<Vec<KeyRow>>;
    async fn find_key_by_hash(&self, sha256: &str) -> StoreResult<Option<KeyRow>>;
    /// The keys whose hash starts with `prefix` (lower-case hex), in hash order, at most
    /// 16: the keys a proxy's cache entry of those bits may hold
    /// (`gatehouse_core::authn::api_key::KeyHash::cache_key`, 84 bits: 21 digits).
    async fn find_keys_by_hash_prefix(&self, prefix: &str) -> StoreResult<Vec<KeyRow>>;
    /// Replaces key `id` by `new` (same owner, plan, scopes and expiry, filled in here);
    /// returns (old, new).
    async fn rotate_key(
        &self,
        id: &str,
        new_id: String,
        new_sha256: String,
        end: OldKeyEnd,
        ctx: &ChangeCtx,
    ) -> StoreResult<(KeyRow, KeyRow)>;
    /// Revokes now; revoking a revoked key changes nothing and returns it.
    async fn revoke_key(&self, id: &str, ctx: &ChangeCtx) -> StoreResult<KeyRow>;

    async fn revoke_user_tokens(
        &self,
        user_id: &str,
        tokens_issued_before: i64,
        until: Option<i64>,
        ctx: &ChangeCtx,
    ) -> StoreResult<UserRevocation>;
    async fn revoke_jti(
        &self,
        jti_sha256: &str,
        until: Option<i64>,
        ctx: &ChangeCtx,
    ) -> StoreResult<JtiRevocation>;
    /// The user's token watermark as the feed carries it, if any (`/v1/authz`).
    async fn find_user_revocation(&self, user_id: &str) -> StoreResult<Option<UserRevocation>>;
    /// The jti entry as the feed carries it, if any (`/v1/authz`).
    async fn find_jti_revocation(&self, jti_sha256: &str) -> StoreResult<Option<JtiRevocation>>;

    /// Newest (last stored) first; of one kind, or of both.
    async fn audit(&self, limit: u32, kind: Option<AuditKind>) -> StoreResult<Vec<AuditEvent>>;

    /// Stores what a proxy reported, all or nothing, at `now` (the time of the request
    /// counts' bucket and of the proxy's `seen_at`). Refusals are audit events of kind
    /// `refusal` carrying the current feed version, which they never bump; a key use
    /// moves the key's `last_used` forward only, and one naming an unknown key is ignored.
    async fn record_events(&self, batch: &EventBatch, now: i64) -> StoreResult<Accepted>;

    /// Request counts per plan in the buckets that start after `since`, the feed version
    /// and epoch, and every proxy heard from.
    async fn stats(&self, since: i64) -> StoreResult<Stats>;

    /// Refusals summed over the minutes of `refusal_buckets` from `since` (a minute's
    /// start) on: the largest groups, the top callers and routes, and the distinct
    /// callers refused with `alert_status` (real refusals) from `alert_since` on. One
    /// read transaction.
    async fn refusal_stats(
        &self,
        since: i64,
        alert_since: i64,
        alert_status: i64,
        limits: RefusalLimits,
    ) -> StoreResult<RefusalStats>;

    /// The `max_plans` busiest plans' request counts per minute from `since` (a minute's
    /// start) on. One read transaction.
    async fn series(&self, since: i64, max_plans: u32) -> StoreResult<Series>;

    /// The feed version as it stood at `t`: that of the last change made at or before it
    /// (by the audit log), 0 if none.
    async fn version_at(&self, t: i64) -> StoreResult<i64>;

    /// Deletes up to `batch` refusal events, usage buckets, refusal buckets and proxies
    /// each from before `cutoff` (their `at`, bucket start and `seen_at`). The feed is not touched.
    async fn purge_events(&self, cutoff: i64, batch: u32) -> StoreResult<EventPurgeCounts>;

    /// One answer of the feed, read in one read transaction: the changes after
    /// `ask.since` in whole versions, or a page of a snapshot, at most `ask.page` records
    /// unless one version alone is more (`paging.rs`).
    async fn feed(&self, ask: &FeedAsk<'_>) -> StoreResult<FeedAnswer>;

    /// The records a snapshot holds now: keys, user and jti revocations.
    async fn feed_size(&self) -> StoreResult<u64>;

    /// Deletes up to `batch` rows of each kind whose end is before `cutoff` (a key's expiry
    /// or revocation, a revocation entry's `until`), and raises the oldest servable
    /// version past them.
    async fn purge(&self, cutoff: i64, batch: u32) -> StoreResult<PurgeCounts>;

    /// Deletes up to `batch` idempotency records made before `cutoff`. The feed is not
    /// touched.
    async fn purge_idempotency(&self, cutoff: i64, batch: u32) -> StoreResult<u64>;

    /// Sets (inserts or replaces) a rate override, a change of kind `lever` (action
    /// `limits.set`). A key's must name a stored key ([`StoreError::NotFound`]); one that
    /// adds an entry is refused when [`MAX_LEVERS`] are in force. Returns its version.
    async fn set_override(&self, o: &Override, ctx: &ChangeCtx) -> StoreResult<i64>;
    /// Removes the override in force for `scope`/`id` (action `limits.cleared`);
    /// [`StoreError::NotFound`] if there is none.
    async fn clear_override(
        &self,
        scope: Scope,
        id: &str,
        reason: Option<&str>,
        ctx: &ChangeCtx,
    ) -> StoreResult<i64>;
    /// The overrides in force at `now` of these ids in `scope`.
    async fn overrides_of(
        &self,
        scope: Scope,
        ids: &[String],
        now: i64,
    ) -> StoreResult<Vec<Override>>;
    /// Sets a limit's mode (action `mode.set`): `enforce` removes its lever. One that
    /// adds an entry is refused when [`MAX_LEVERS`] are in force.
    async fn set_mode(&self, m: &ModeLever, ctx: &ChangeCtx) -> StoreResult<i64>;
    /// Adds an allowlist entry (action `allowlist.added`); an entry of the same subject
    /// and limit is a [`StoreError::Conflict`]. Refused when [`MAX_LEVERS`] are in force.
    async fn add_allow(&self, e: &AllowEntry, ctx: &ChangeCtx) -> StoreResult<i64>;
    /// Removes an allowlist entry (action `allowlist.removed`); [`StoreError::NotFound`]
    /// if there is none.
    async fn remove_allow(
        &self,
        id: &str,
        reason: Option<&str>,
        ctx: &ChangeCtx,
    ) -> StoreResult<i64>;
    /// Every lever in force at `now`.
    async fn levers(&self, now: i64) -> StoreResult<Levers>;

    /// How this replica learns of the changes other replicas commit ([`Follow`]).
    fn follow(&self) -> Follow;

    /// Takes `job`'s lock for one pass unless another replica holds it (`None`: skip the
    /// pass). PostgreSQL: a session advisory lock on a connection the lock holds.
    /// SQLite: a lease row taken with a conditional upsert, held until released or until
    /// `now` + [`JOB_LEASE_SECS`].
    async fn try_job_lock(&self, job: Job, now: i64) -> StoreResult<Option<Box<dyn JobLock>>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_told_apart_by_scheme() {
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("sqlite:x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("postgres://h/db"), Some(Backend::Postgres));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
        assert_eq!(Backend::of_url("x.db"), None);
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        for (url, shown) in [
            (
                "postgres://gh:s3cret@db:5432/gh",
                "postgres://gh:***@db:5432/gh",
            ),
            (
                "postgresql://gh:p@ss/w@rd@db/gh?sslmode=require",
                "postgresql://gh:***@db/gh?sslmode=require",
            ),
            (
                "postgres://db/gh?user=gh&password=s3cret",
                "postgres://db/gh?user=gh&password=***",
            ),
            ("postgres://gh@db/gh", "postgres://gh@db/gh"),
            ("sqlite://dir/control.db", "sqlite://dir/control.db"),
            ("sqlite:control.db", "sqlite:control.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn scrub_removes_every_password_piece() {
        let url = "postgres://gh:p@ss/w@rd@db/gh?password=other";
        let m = scrub("p@ss/w@rd and other".to_string(), url);
        assert_eq!(m, "*** and ***");
    }
}
