//! Storage behind one trait, so the handlers do not know which database holds the keys.
//! SQLite (`sqlite.rs`) is the default.
//!
//! Every change runs in one transaction that also bumps the feed version
//! (`UPDATE meta SET seq = seq + 1 RETURNING seq`), stamps each row it touches with that
//! version and writes its audit event. Because writers serialize on that one row, versions
//! commit in order: a reader that sees version N sees every change up to N, so the feed
//! never loses a change to a gap. Times are Unix seconds passed in by the caller; the
//! store never reads a clock.

pub mod sqlite;

use serde::Serialize;

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

/// One answer of the cache feed (control/FEED.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedPage {
    pub epoch: String,
    pub version: i64,
    pub full: bool,
    pub keys: Vec<FeedKey>,
    pub users: Vec<UserRevocation>,
    pub jtis: Vec<JtiRevocation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedAnswer {
    Page(FeedPage),
    /// `since` is older than the oldest change kept: ask again with `since=0`.
    Gone,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: String,
    pub client: Option<String>,
    pub version: i64,
}

/// What one cleanup pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub keys: u64,
    pub users: u64,
    pub jtis: u64,
}

#[derive(Debug)]
pub enum StoreError {
    NotFound,
    /// The user already has this many active keys.
    KeyLimit(u32),
    /// The change does not apply to the record's state (e.g. rotating a revoked key).
    Conflict(&'static str),
    Database(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound => write!(f, "not found"),
            StoreError::KeyLimit(n) => write!(f, "the user already has {n} active keys"),
            StoreError::Conflict(why) => write!(f, "{why}"),
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

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// The database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// The latest committed feed version.
    async fn version(&self) -> StoreResult<i64>;

    /// Inserts a key unless the user already has `max_active` usable, unreplaced keys; the
    /// count and the insert are one write transaction, so concurrent requests cannot
    /// overshoot.
    async fn create_key(
        &self,
        key: NewKey,
        max_active: u32,
        ctx: &ChangeCtx,
    ) -> StoreResult<KeyRow>;
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRow>>;
    async fn list_keys(&self, user_id: &str) -> StoreResult<Vec<KeyRow>>;
    async fn find_key_by_hash(&self, sha256: &str) -> StoreResult<Option<KeyRow>>;
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

    /// Newest first.
    async fn audit(&self, limit: u32) -> StoreResult<Vec<AuditEvent>>;

    /// Changes after `since` (0: everything still kept, as a snapshot).
    async fn feed(&self, since: i64) -> StoreResult<FeedAnswer>;

    /// Deletes up to `batch` rows of each kind whose expiry (key) or end (revocation) is
    /// before `cutoff`, and raises the oldest servable version past them.
    async fn purge(&self, cutoff: i64, batch: u32) -> StoreResult<PurgeCounts>;
}
