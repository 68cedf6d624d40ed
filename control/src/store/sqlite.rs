//! The SQLite store: one file, WAL, one writer connection and a small reader pool.
//!
//! SQLite allows one writer at a time; a pool of one write connection makes that explicit
//! instead of turning contention into `SQLITE_BUSY`. Write transactions start with
//! `BEGIN IMMEDIATE`, so the per-user key count and the insert that depends on it hold the
//! write lock together (a deferred transaction would read, then fail to upgrade). Readers
//! use their own connections and, in WAL mode, never wait for the writer; the feed reads
//! the version and the rows in one read transaction, so they agree.
//!
//! Replicas: several processes may share one file, and nothing else. Each reads the
//! version every [`FOLLOW_EVERY`] (`follow.rs`), and a background job's pass runs under a
//! lease row (`job_leases`, migration `0004`) taken with one conditional upsert.

use super::levers;
use super::paging::{self, FeedReader, Filter, Rows};
use super::{
    Accepted, AllowEntry, AuditEvent, AuditKind, ChangeCtx, EventBatch, EventPurgeCounts,
    FeedAnswer, FeedAsk, FeedTable, Follow, IdempotencyClaim, IdempotencyRecord, ImportOutcome,
    ImportedBatch, Issued, JOB_LEASE_SECS, Job, JobLock, JtiRevocation, KeyRow, Levers, MAX_COUNT,
    Mode, ModeLever, NewKey, OldKeyEnd, Override, PlanCount, ProxySeen, PurgeCounts, RefusalDetail,
    RefusalGroup, RefusalLimits, RefusalStats, RefusalTally, Scope, Series, SeriesPoint, Stats,
    Store, StoreError, StoreResult, Subject, UserRevocation, busiest, check_import_batches,
    check_rotatable, import_outcomes, import_target, minute_of, retired, revoked, successor,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const KEY_COLUMNS: &str = "id, sha256, user_id, tenant_id, plan, device_name, scopes, \
    created_at, expires_at, grace_until, revoked_at, active, replaced_by, version, last_used";

const AUDIT_COLUMNS: &str = "id, kind, at, actor, action, target, request_id, client, version, \
    code, status, method, plan, proxy, reason, detail";

/// How often a replica reads the version to see other processes' changes: one indexed
/// read of one row.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// This process's name in `job_leases`.
    holder: String,
}

impl SqliteStore {
    /// Opens (creating the file on first start) and migrates the database at `url`
    /// (`sqlite://path` or `sqlite:path`), and makes the feed epoch if it is new.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // 64 MiB of page cache for the writer (SQLite's default is 2 MiB): a bulk
            // import into a table of 10^6 keys otherwise reads most index pages back
            // from the OS on every batch. Readers keep the default.
            .connect_with(options.clone().pragma("cache_size", "-65536"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let epoch = crate::random::hex(8).map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::query(
            "INSERT INTO meta (id, seq, epoch, purged_through) VALUES (1, 0, ?, 0) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(epoch)
        .execute(&writer)
        .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.read_only(true))
            .await?;
        let holder = crate::random::hex(8).map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(SqliteStore {
            writer,
            reader,
            holder,
        })
    }

    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Bumps the feed version and writes the audit event: the first two steps of every change.
async fn bump(
    tx: &mut SqliteConnection,
    ctx: &ChangeCtx,
    action: &str,
    target: &str,
) -> StoreResult<i64> {
    let version: i64 =
        sqlx::query_scalar("UPDATE meta SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, target, request_id, client, version) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(ctx.now)
    .bind(&ctx.actor)
    .bind(action)
    .bind(target)
    .bind(&ctx.request_id)
    .bind(&ctx.client)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    Ok(version)
}

/// [`bump`] for a lever change: also records the version as the last lever change's, and
/// writes the audit event as kind `lever` with the reason and what was set.
async fn bump_lever(
    tx: &mut SqliteConnection,
    ctx: &ChangeCtx,
    action: &str,
    target: &str,
    reason: Option<&str>,
    detail: &str,
) -> StoreResult<i64> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE meta SET seq = seq + 1, levers_version = seq + 1 WHERE id = 1 RETURNING seq",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_events (kind, at, actor, action, target, request_id, client, \
         version, reason, detail) VALUES ('lever', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(ctx.now)
    .bind(&ctx.actor)
    .bind(action)
    .bind(target)
    .bind(&ctx.request_id)
    .bind(&ctx.client)
    .bind(version)
    .bind(reason)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(version)
}

/// Refuses a lever change that adds an entry when the bound is reached (`levers.rs`).
async fn check_lever_room(tx: &mut SqliteConnection, now: i64) -> StoreResult<()> {
    let n: i64 = sqlx::query_scalar(&levers::count_sql("?"))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    levers::check_room(n)
}

const OVERRIDE_COLUMNS: &str = "scope, id, requests_per_minute, expires_at, reason, updated_at";

fn override_row(r: &SqliteRow) -> StoreResult<Override> {
    Ok(Override {
        scope: Scope::of_column(&r.try_get::<String, _>("scope")?)?,
        id: r.try_get("id")?,
        requests_per_minute: r.try_get("requests_per_minute")?,
        expires_at: r.try_get("expires_at")?,
        reason: r.try_get("reason")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Every lever in force at `now`, in the order [`Levers`] promises.
async fn read_levers(conn: &mut SqliteConnection, now: i64) -> StoreResult<Levers> {
    let overrides = sqlx::query(&format!(
        "SELECT {OVERRIDE_COLUMNS} FROM limit_overrides \
         WHERE expires_at IS NULL OR expires_at > ? ORDER BY scope, id"
    ))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(override_row)
    .collect::<StoreResult<Vec<_>>>()?;
    let modes = sqlx::query("SELECT name, mode, reason, updated_at FROM limit_modes ORDER BY name")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| {
            Ok(ModeLever {
                limit: r.try_get("name")?,
                mode: Mode::of_column(&r.try_get::<String, _>("mode")?)?,
                reason: r.try_get("reason")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let allowlist = sqlx::query(
        "SELECT id, subject_kind, subject, limit_name, reason, created_at FROM allowlist \
         ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let limit: String = r.try_get("limit_name")?;
        Ok(AllowEntry {
            id: r.try_get("id")?,
            subject: Subject::of_columns(
                &r.try_get::<String, _>("subject_kind")?,
                r.try_get("subject")?,
            )?,
            limit: (!limit.is_empty()).then_some(limit),
            reason: r.try_get("reason")?,
            created_at: r.try_get("created_at")?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()?;
    Ok(Levers {
        overrides,
        modes,
        allowlist,
    })
}

fn key_row(row: &SqliteRow) -> StoreResult<KeyRow> {
    let scopes: String = row.try_get("scopes")?;
    Ok(KeyRow {
        id: row.try_get("id")?,
        sha256: row.try_get("sha256")?,
        user_id: row.try_get("user_id")?,
        tenant_id: row.try_get("tenant_id")?,
        plan: row.try_get("plan")?,
        device_name: row.try_get("device_name")?,
        scopes: serde_json::from_str(&scopes)
            .map_err(|e| StoreError::Database(format!("scopes column: {e}")))?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        grace_until: row.try_get("grace_until")?,
        revoked_at: row.try_get("revoked_at")?,
        active: row.try_get("active")?,
        replaced_by: row.try_get("replaced_by")?,
        version: row.try_get("version")?,
        last_used: row.try_get("last_used")?,
    })
}

fn audit_event(r: &SqliteRow) -> StoreResult<AuditEvent> {
    let kind = AuditKind::of_column(&r.try_get::<String, _>("kind")?)?;
    let refusal = match kind {
        AuditKind::Change | AuditKind::Lever => None,
        AuditKind::Refusal => Some(RefusalDetail {
            code: r.try_get::<Option<String>, _>("code")?.unwrap_or_default(),
            status: r.try_get::<Option<i64>, _>("status")?.unwrap_or_default(),
            method: r
                .try_get::<Option<String>, _>("method")?
                .unwrap_or_default(),
            plan: r.try_get("plan")?,
            proxy: r.try_get("proxy")?,
        }),
    };
    Ok(AuditEvent {
        id: r.try_get("id")?,
        kind,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        request_id: r.try_get("request_id")?,
        client: r.try_get("client")?,
        version: r.try_get("version")?,
        refusal,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
    })
}

/// A row of per-plan sums: plan, allowed, refused, shadow_refused.
fn plan_count(r: &SqliteRow) -> StoreResult<PlanCount> {
    Ok(PlanCount {
        plan: r.try_get("plan")?,
        allowed: r.try_get("allowed")?,
        refused: r.try_get("refused")?,
        shadow_refused: r.try_get("shadow_refused")?,
    })
}

/// The feed's reads (`paging.rs`) on one connection, inside its read transaction.
struct FeedRead<'c>(&'c mut SqliteConnection);

#[async_trait::async_trait]
impl FeedReader for FeedRead<'_> {
    async fn meta(&mut self) -> StoreResult<(i64, String, i64, i64)> {
        let meta =
            sqlx::query("SELECT seq, epoch, purged_through, levers_version FROM meta WHERE id = 1")
                .fetch_one(&mut *self.0)
                .await?;
        Ok((
            meta.try_get("seq")?,
            meta.try_get("epoch")?,
            meta.try_get("purged_through")?,
            meta.try_get("levers_version")?,
        ))
    }

    async fn levers(&mut self, now: i64) -> StoreResult<Levers> {
        read_levers(&mut *self.0, now).await
    }

    async fn rows(
        &mut self,
        table: FeedTable,
        filter: Filter<'_>,
        limit: usize,
        into: &mut Rows,
    ) -> StoreResult<usize> {
        let columns = match table {
            FeedTable::Keys => KEY_COLUMNS,
            FeedTable::Users => "user_id, tokens_issued_before, until, version",
            FeedTable::Jtis => "jti_sha256, until, version",
        };
        let sql = paging::rows_sql(table, columns, &filter, ["?", "?"]);
        let query = sqlx::query(&sql);
        let query = match filter {
            Filter::VersionAbove(v) | Filter::Version(v) => query.bind(v),
            Filter::IdAbove(id) => query.bind(id),
        };
        let rows = query
            .bind(paging::sql_limit(limit))
            .fetch_all(&mut *self.0)
            .await?;
        for r in &rows {
            match table {
                FeedTable::Keys => into.keys.push(key_row(r)?),
                FeedTable::Users => into.users.push(UserRevocation {
                    user: r.try_get("user_id")?,
                    tokens_issued_before: r.try_get("tokens_issued_before")?,
                    until: r.try_get("until")?,
                    version: r.try_get("version")?,
                }),
                FeedTable::Jtis => into.jtis.push(JtiRevocation {
                    jti_sha256: r.try_get("jti_sha256")?,
                    until: r.try_get("until")?,
                    version: r.try_get("version")?,
                }),
            }
        }
        Ok(rows.len())
    }
}

async fn key_by_id(conn: &mut SqliteConnection, id: &str) -> StoreResult<Option<KeyRow>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(key_row).transpose()
}

/// The idempotency record of `claim`'s Idempotency-Key, with its key as it is now; one
/// made before `claim.not_before` is deleted (in a write transaction) or ignored.
async fn idempotency_record(
    conn: &mut SqliteConnection,
    claim: &IdempotencyClaim,
    delete_stale: bool,
) -> StoreResult<Option<IdempotencyRecord>> {
    if delete_stale {
        sqlx::query("DELETE FROM idempotency_keys WHERE key_sha256 = ? AND created_at < ?")
            .bind(&claim.key_sha256)
            .bind(claim.not_before)
            .execute(&mut *conn)
            .await?;
    }
    let row = sqlx::query(
        "SELECT request_sha256, key_id, created_at FROM idempotency_keys \
         WHERE key_sha256 = ? AND created_at >= ?",
    )
    .bind(&claim.key_sha256)
    .bind(claim.not_before)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let key_id: String = row.try_get("key_id")?;
    let key = key_by_id(&mut *conn, &key_id).await?;
    Ok(Some(IdempotencyRecord {
        request_sha256: row.try_get("request_sha256")?,
        key_id,
        created_at: row.try_get("created_at")?,
        key,
    }))
}

/// Records `claim` for key `key_id`, in the transaction that inserts the key.
async fn insert_idempotency(
    conn: &mut SqliteConnection,
    claim: &IdempotencyClaim,
    key_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (key_sha256, request_sha256, key_id, created_at) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(&claim.key_sha256)
    .bind(&claim.request_sha256)
    .bind(key_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_key(
    conn: &mut SqliteConnection,
    key: &NewKey,
    now: i64,
    version: i64,
) -> StoreResult<KeyRow> {
    let scopes = serde_json::to_string(&key.scopes)
        .map_err(|e| StoreError::Database(format!("scopes: {e}")))?;
    sqlx::query(
        "INSERT INTO api_keys (id, sha256, user_id, tenant_id, plan, device_name, scopes, \
         created_at, expires_at, revoked_at, active, replaced_by, version) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, NULL, ?)",
    )
    .bind(&key.id)
    .bind(&key.sha256)
    .bind(&key.user_id)
    .bind(&key.tenant_id)
    .bind(&key.plan)
    .bind(&key.device_name)
    .bind(scopes)
    .bind(now)
    .bind(key.expires_at)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    Ok(KeyRow {
        id: key.id.clone(),
        sha256: key.sha256.clone(),
        user_id: key.user_id.clone(),
        tenant_id: key.tenant_id.clone(),
        plan: key.plan.clone(),
        device_name: key.device_name.clone(),
        scopes: key.scopes.clone(),
        created_at: now,
        expires_at: key.expires_at,
        grace_until: None,
        revoked_at: None,
        active: true,
        replaced_by: None,
        version,
        last_used: None,
    })
}

/// Inserts `keys` stamped with `version` in one statement (at most 1,000 rows of 10
/// parameters: within SQLite's 32,766), skipping any that would break a uniqueness rule;
/// returns how many it inserted. No `RETURNING`: nearly every batch inserts every key,
/// and reading each row back (then matching it to its key) made an import of 10^6 keys
/// some 1.3x slower (benches/README.md); a batch that missed some reads its rows back
/// with [`keys_of_version`].
async fn insert_new_keys(
    conn: &mut SqliteConnection,
    keys: &[NewKey],
    now: i64,
    version: i64,
) -> StoreResult<u64> {
    let scopes = keys
        .iter()
        .map(|k| serde_json::to_string(&k.scopes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Database(format!("scopes: {e}")))?;
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO api_keys (id, sha256, user_id, tenant_id, plan, device_name, scopes, \
         created_at, expires_at, active, version) ",
    );
    q.push_values(keys.iter().zip(scopes), |mut row, (k, scopes)| {
        row.push_bind(k.id.as_str())
            .push_bind(k.sha256.as_str())
            .push_bind(k.user_id.as_str())
            .push_bind(k.tenant_id.as_str())
            .push_bind(k.plan.as_str())
            .push_bind(k.device_name.as_str())
            .push_bind(scopes)
            .push_bind(now)
            .push_bind(k.expires_at)
            .push("1")
            .push_bind(version);
    });
    // No conflict target: a taken id is skipped too, and told apart by the caller.
    q.push(" ON CONFLICT DO NOTHING");
    Ok(q.build().execute(&mut *conn).await?.rows_affected())
}

/// The (id, sha256) of the rows stamped with `version`. In an import batch, before
/// `bump` hands `version` out, those are the rows the batch inserted: no other row can
/// have a version above `meta.seq`.
async fn keys_of_version(
    conn: &mut SqliteConnection,
    version: i64,
) -> StoreResult<HashSet<(String, String)>> {
    sqlx::query("SELECT id, sha256 FROM api_keys WHERE version = ?")
        .bind(version)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("sha256")?)))
        .collect()
}

/// Which of `sha256s` the table holds.
async fn stored_hashes(
    conn: &mut SqliteConnection,
    sha256s: &[&str],
) -> StoreResult<HashSet<String>> {
    if sha256s.is_empty() {
        return Ok(HashSet::new());
    }
    let mut q = QueryBuilder::<Sqlite>::new("SELECT sha256 FROM api_keys WHERE sha256 IN (");
    let mut list = q.separated(", ");
    for sha256 in sha256s {
        list.push_bind(*sha256);
    }
    q.push(")");
    Ok(q.build_query_scalar()
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
}

/// One import batch, as one change, in the caller's write transaction
/// ([`Store::import_keys`]): no version is handed out when it inserts nothing.
async fn import_batch(
    conn: &mut SqliteConnection,
    keys: &[NewKey],
    ctx: &ChangeCtx,
) -> StoreResult<ImportedBatch> {
    // The write lock is held: the next version is this one, and `bump` (once the count for
    // the audit event is known) hands it out.
    if keys.is_empty() {
        return Ok(ImportedBatch {
            version: None,
            outcomes: Vec::new(),
        });
    }
    let next: i64 = sqlx::query_scalar("SELECT seq + 1 FROM meta WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    let imported = insert_new_keys(&mut *conn, keys, ctx.now, next).await?;
    let imported = usize::try_from(imported).unwrap_or(usize::MAX);
    // Only a batch that missed some key needs to know which, and why.
    let outcomes = if imported == keys.len() {
        vec![ImportOutcome::Imported; keys.len()]
    } else {
        let inserted = keys_of_version(&mut *conn, next).await?;
        let all: Vec<&str> = keys.iter().map(|k| k.sha256.as_str()).collect();
        let stored = stored_hashes(&mut *conn, &all).await?;
        import_outcomes(keys, inserted, &stored)
    };
    if imported == 0 {
        return Ok(ImportedBatch {
            version: None,
            outcomes,
        });
    }
    let version = bump(&mut *conn, ctx, "key.import", &import_target(imported)).await?;
    if version != next {
        return Err(StoreError::Database(
            "the feed version moved during an import batch".to_string(),
        ));
    }
    Ok(ImportedBatch {
        version: Some(version),
        outcomes,
    })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT seq FROM meta WHERE id = 1")
            .fetch_one(&self.reader)
            .await?;
        Ok(())
    }

    async fn version(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT seq FROM meta WHERE id = 1")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn create_key(
        &self,
        key: NewKey,
        max_active: u32,
        claim: Option<&IdempotencyClaim>,
        ctx: &ChangeCtx,
    ) -> StoreResult<Issued> {
        let mut tx = self.begin_write().await?;
        // Before the count: a retry of the request that issued the user's last allowed
        // key is a replay, not a refusal.
        if let Some(claim) = claim
            && let Some(found) = idempotency_record(&mut tx, claim, true).await?
        {
            tx.commit().await?;
            return Ok(Issued::Recorded(found));
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE user_id = ? AND active = 1 \
             AND replaced_by IS NULL AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(&key.user_id)
        .bind(ctx.now)
        .fetch_one(&mut *tx)
        .await?;
        if active >= i64::from(max_active) {
            return Err(StoreError::KeyLimit(max_active));
        }
        let version = bump(&mut tx, ctx, "key.create", &key.id).await?;
        let row = insert_key(&mut tx, &key, ctx.now, version).await?;
        if let Some(claim) = claim {
            match insert_idempotency(&mut tx, claim, &key.id, ctx.now).await {
                Ok(()) => {}
                // Writers are serialized, so the lookup above sees any earlier record;
                // should a duplicate still get here, it loses as a replay, not an error.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tx.rollback().await?;
                    let mut conn = self.reader.acquire().await?;
                    return match idempotency_record(&mut conn, claim, false).await? {
                        Some(found) => Ok(Issued::Recorded(found)),
                        None => Err(StoreError::Database(
                            "an idempotency record vanished during its race".to_string(),
                        )),
                    };
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        Ok(Issued::Created(row))
    }

    async fn import_keys(
        &self,
        batches: &[Vec<NewKey>],
        ctx: &ChangeCtx,
    ) -> StoreResult<Vec<ImportedBatch>> {
        check_import_batches(batches)?;
        let mut done = Vec::with_capacity(batches.len());
        if batches.iter().all(Vec::is_empty) {
            done.resize_with(batches.len(), || ImportedBatch {
                version: None,
                outcomes: Vec::new(),
            });
            return Ok(done);
        }
        let mut tx = self.begin_write().await?;
        for keys in batches {
            done.push(import_batch(&mut tx, keys, ctx).await?);
        }
        if done.iter().any(|b| b.version.is_some()) {
            tx.commit().await?;
        }
        Ok(done)
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRow>> {
        let mut conn = self.reader.acquire().await?;
        key_by_id(&mut conn, id).await
    }

    async fn list_keys(&self, user_id: Option<&str>, limit: u32) -> StoreResult<Vec<KeyRow>> {
        let rows = match user_id {
            Some(user) => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? \
                     ORDER BY created_at, id LIMIT ?"
                );
                sqlx::query(&sql)
                    .bind(user)
                    .bind(i64::from(limit))
                    .fetch_all(&self.reader)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id DESC LIMIT ?"
                );
                sqlx::query(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(&self.reader)
                    .await?
            }
        };
        rows.iter().map(key_row).collect()
    }

    async fn find_key_by_hash(&self, sha256: &str) -> StoreResult<Option<KeyRow>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE sha256 = ?");
        let row = sqlx::query(&sql)
            .bind(sha256)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn find_keys_by_hash_prefix(&self, prefix: &str) -> StoreResult<Vec<KeyRow>> {
        // Hex digits sort before `g`: [prefix, prefix + "g") is every hash it starts, and
        // a range the unique index on sha256 answers.
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE sha256 >= ? AND sha256 < ? \
             ORDER BY sha256 LIMIT 16"
        );
        let rows = sqlx::query(&sql)
            .bind(prefix)
            .bind(format!("{prefix}g"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(key_row).collect()
    }

    async fn rotate_key(
        &self,
        id: &str,
        new_id: String,
        new_sha256: String,
        end: OldKeyEnd,
        ctx: &ChangeCtx,
    ) -> StoreResult<(KeyRow, KeyRow)> {
        let mut tx = self.begin_write().await?;
        let Some(old) = key_by_id(&mut tx, id).await? else {
            return Err(StoreError::NotFound);
        };
        check_rotatable(&old, ctx.now)?;
        let version = bump(&mut tx, ctx, "key.rotate", id).await?;
        let new = insert_key(
            &mut tx,
            &successor(&old, new_id, new_sha256),
            ctx.now,
            version,
        )
        .await?;
        let old = retired(old, &new.id, end, ctx.now, version);
        sqlx::query(
            "UPDATE api_keys SET active = ?, revoked_at = ?, grace_until = ?, replaced_by = ?, \
             version = ? WHERE id = ?",
        )
        .bind(old.active)
        .bind(old.revoked_at)
        .bind(old.grace_until)
        .bind(&old.replaced_by)
        .bind(version)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((old, new))
    }

    async fn revoke_key(&self, id: &str, ctx: &ChangeCtx) -> StoreResult<KeyRow> {
        let mut tx = self.begin_write().await?;
        let Some(key) = key_by_id(&mut tx, id).await? else {
            return Err(StoreError::NotFound);
        };
        if !key.active {
            return Ok(key);
        }
        let version = bump(&mut tx, ctx, "key.revoke", id).await?;
        let key = revoked(key, ctx.now, version);
        sqlx::query("UPDATE api_keys SET active = 0, revoked_at = ?, version = ? WHERE id = ?")
            .bind(key.revoked_at)
            .bind(version)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(key)
    }

    async fn revoke_user_tokens(
        &self,
        user_id: &str,
        tokens_issued_before: i64,
        until: Option<i64>,
        ctx: &ChangeCtx,
    ) -> StoreResult<UserRevocation> {
        let mut tx = self.begin_write().await?;
        let version = bump(&mut tx, ctx, "user.revoke_tokens", user_id).await?;
        // A watermark never moves back, and its end never comes sooner.
        let row = sqlx::query(
            "INSERT INTO user_revocations (user_id, tokens_issued_before, until, version) \
             VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET \
             tokens_issued_before = MAX(tokens_issued_before, excluded.tokens_issued_before), \
             until = CASE WHEN until IS NULL OR excluded.until IS NULL THEN NULL \
                          ELSE MAX(until, excluded.until) END, \
             version = excluded.version \
             RETURNING tokens_issued_before, until",
        )
        .bind(user_id)
        .bind(tokens_issued_before)
        .bind(until)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        let out = UserRevocation {
            user: user_id.to_string(),
            tokens_issued_before: row.try_get("tokens_issued_before")?,
            until: row.try_get("until")?,
            version,
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn revoke_jti(
        &self,
        jti_sha256: &str,
        until: Option<i64>,
        ctx: &ChangeCtx,
    ) -> StoreResult<JtiRevocation> {
        let mut tx = self.begin_write().await?;
        // The audit target is the hash: the jti itself is not stored anywhere.
        let version = bump(&mut tx, ctx, "token.revoke", jti_sha256).await?;
        let row = sqlx::query(
            "INSERT INTO jti_revocations (jti_sha256, until, version) VALUES (?, ?, ?) \
             ON CONFLICT (jti_sha256) DO UPDATE SET \
             until = CASE WHEN until IS NULL OR excluded.until IS NULL THEN NULL \
                          ELSE MAX(until, excluded.until) END, \
             version = excluded.version \
             RETURNING until",
        )
        .bind(jti_sha256)
        .bind(until)
        .bind(version)
        .fetch_one(&mut *tx)
        .await?;
        let out = JtiRevocation {
            jti_sha256: jti_sha256.to_string(),
            until: row.try_get("until")?,
            version,
        };
        tx.commit().await?;
        Ok(out)
    }

    async fn find_user_revocation(&self, user_id: &str) -> StoreResult<Option<UserRevocation>> {
        let row = sqlx::query(
            "SELECT user_id, tokens_issued_before, until, version FROM user_revocations \
             WHERE user_id = ?",
        )
        .bind(user_id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(UserRevocation {
                user: r.try_get("user_id")?,
                tokens_issued_before: r.try_get("tokens_issued_before")?,
                until: r.try_get("until")?,
                version: r.try_get("version")?,
            })
        })
        .transpose()
    }

    async fn find_jti_revocation(&self, jti_sha256: &str) -> StoreResult<Option<JtiRevocation>> {
        let row = sqlx::query(
            "SELECT jti_sha256, until, version FROM jti_revocations WHERE jti_sha256 = ?",
        )
        .bind(jti_sha256)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| {
            Ok(JtiRevocation {
                jti_sha256: r.try_get("jti_sha256")?,
                until: r.try_get("until")?,
                version: r.try_get("version")?,
            })
        })
        .transpose()
    }

    async fn audit(&self, limit: u32, kind: Option<AuditKind>) -> StoreResult<Vec<AuditEvent>> {
        let rows = match kind {
            Some(kind) => {
                sqlx::query(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE kind = ? \
                     ORDER BY id DESC LIMIT ?"
                ))
                .bind(kind.as_str())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT ?"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.iter().map(audit_event).collect()
    }

    async fn record_events(&self, batch: &EventBatch, now: i64) -> StoreResult<Accepted> {
        // The writer connection: one transaction, so a post is stored whole or not at all.
        let mut tx = self.begin_write().await?;
        let version: i64 = sqlx::query_scalar("SELECT seq FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        for r in &batch.refusals {
            sqlx::query(
                "INSERT INTO audit_events (kind, at, actor, action, target, request_id, client, \
                 version, code, status, method, plan, proxy) \
                 VALUES ('refusal', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(r.at)
            .bind(r.actor())
            .bind(r.action())
            .bind(&r.route)
            .bind(&r.request_id)
            .bind(&r.client)
            .bind(version)
            .bind(&r.code)
            .bind(r.status)
            .bind(&r.method)
            .bind(&r.plan)
            .bind(&batch.proxy)
            .execute(&mut *tx)
            .await?;
        }
        for b in batch.refusal_buckets() {
            sqlx::query(
                "INSERT INTO refusal_buckets (minute, shadow, code, status, route, caller, count, \
                 first_at, last_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (minute, shadow, code, status, route, caller) DO UPDATE SET \
                 count = MIN(count + excluded.count, ?10), \
                 first_at = MIN(first_at, excluded.first_at), \
                 last_at = MAX(last_at, excluded.last_at)",
            )
            .bind(b.minute)
            .bind(b.shadow)
            .bind(&b.code)
            .bind(b.status)
            .bind(&b.route)
            .bind(&b.caller)
            .bind(b.count)
            .bind(b.first_at)
            .bind(b.last_at)
            .bind(MAX_COUNT)
            .execute(&mut *tx)
            .await?;
        }
        let mut key_uses = 0;
        for (id, at, n) in batch.latest_uses() {
            let known = sqlx::query(
                "UPDATE api_keys SET last_used = MAX(COALESCE(last_used, ?1), ?1) WHERE id = ?2",
            )
            .bind(at)
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if known > 0 {
                key_uses += n;
            }
        }
        let minute = minute_of(now);
        for c in batch.counts_by_plan() {
            sqlx::query(
                "INSERT INTO usage_buckets (plan, minute, allowed, refused, shadow_refused) \
                 VALUES (?1, ?2, ?3, ?4, ?6) \
                 ON CONFLICT (plan, minute) DO UPDATE SET \
                 allowed = MIN(allowed + excluded.allowed, ?5), \
                 refused = MIN(refused + excluded.refused, ?5), \
                 shadow_refused = MIN(shadow_refused + excluded.shadow_refused, ?5)",
            )
            .bind(&c.plan)
            .bind(minute)
            .bind(c.allowed)
            .bind(c.refused)
            .bind(MAX_COUNT)
            .bind(c.shadow_refused)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(proxy) = &batch.proxy {
            sqlx::query(
                "INSERT INTO proxies (proxy, cache_version, seen_at) VALUES (?, ?, ?) \
                 ON CONFLICT (proxy) DO UPDATE SET \
                 cache_version = COALESCE(excluded.cache_version, cache_version), \
                 seen_at = MAX(seen_at, excluded.seen_at)",
            )
            .bind(proxy)
            .bind(batch.cache_version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Accepted {
            refusals: batch.refusals.len() as u64,
            key_uses,
            requests: batch.requests.len() as u64,
        })
    }

    async fn stats(&self, since: i64) -> StoreResult<Stats> {
        let mut tx = self.reader.begin().await?;
        let meta = sqlx::query("SELECT seq, epoch FROM meta WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let plans = sqlx::query(
            "SELECT plan, SUM(allowed) AS allowed, SUM(refused) AS refused, \
             SUM(shadow_refused) AS shadow_refused FROM usage_buckets \
             WHERE minute > ? GROUP BY plan ORDER BY plan",
        )
        .bind(since)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(plan_count)
        .collect::<StoreResult<Vec<_>>>()?;
        let proxies = sqlx::query(
            "SELECT proxy, cache_version, seen_at FROM proxies ORDER BY proxy LIMIT 1000",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(ProxySeen {
                proxy: r.try_get("proxy")?,
                cache_version: r.try_get("cache_version")?,
                seen_at: r.try_get("seen_at")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await?;
        Ok(Stats {
            plans,
            version: meta.try_get("seq")?,
            epoch: meta.try_get("epoch")?,
            proxies,
        })
    }

    async fn refusal_stats(
        &self,
        since: i64,
        alert_since: i64,
        alert_status: i64,
        limits: RefusalLimits,
    ) -> StoreResult<RefusalStats> {
        let mut tx = self.reader.begin().await?;
        // One more than asked for: whether any were left off.
        let mut groups = sqlx::query(
            "SELECT code, status, route, caller, shadow, SUM(count) AS n, \
             MIN(first_at) AS first_at, MAX(last_at) AS last_at FROM refusal_buckets \
             WHERE minute >= ? GROUP BY code, status, route, caller, shadow \
             ORDER BY n DESC, last_at DESC, code, route, caller, shadow LIMIT ?",
        )
        .bind(since)
        .bind(i64::from(limits.groups) + 1)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(RefusalGroup {
                code: r.try_get("code")?,
                status: r.try_get("status")?,
                route: r.try_get("route")?,
                caller: r.try_get("caller")?,
                shadow: r.try_get("shadow")?,
                count: r.try_get("n")?,
                first_at: r.try_get("first_at")?,
                last_at: r.try_get("last_at")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
        let more_groups = groups.len() > limits.groups as usize;
        groups.truncate(limits.groups as usize);
        let mut tops = Vec::new();
        for column in ["caller", "route"] {
            tops.push(
                sqlx::query(&format!(
                    "SELECT {column} AS name, \
                     SUM(CASE WHEN shadow = 0 THEN count ELSE 0 END) AS refused, \
                     SUM(CASE WHEN shadow = 0 THEN 0 ELSE count END) AS would_refuse \
                     FROM refusal_buckets WHERE minute >= ? GROUP BY {column} \
                     ORDER BY refused DESC, would_refuse DESC, name LIMIT ?"
                ))
                .bind(since)
                .bind(i64::from(limits.top))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| {
                    Ok(RefusalTally {
                        name: r.try_get("name")?,
                        refused: r.try_get("refused")?,
                        would_refuse: r.try_get("would_refuse")?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()?,
            );
        }
        let alert_callers: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT caller) FROM refusal_buckets \
             WHERE minute >= ? AND shadow = 0 AND status = ?",
        )
        .bind(alert_since)
        .bind(alert_status)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut tops = tops.into_iter();
        Ok(RefusalStats {
            groups,
            more_groups,
            top_callers: tops.next().unwrap_or_default(),
            top_routes: tops.next().unwrap_or_default(),
            alert_callers,
        })
    }

    async fn series(&self, since: i64, max_plans: u32) -> StoreResult<Series> {
        let mut tx = self.reader.begin().await?;
        let totals = sqlx::query(
            "SELECT plan, SUM(allowed) AS allowed, SUM(refused) AS refused, \
             SUM(shadow_refused) AS shadow_refused FROM usage_buckets \
             WHERE minute >= ? GROUP BY plan",
        )
        .bind(since)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(plan_count)
        .collect::<StoreResult<Vec<_>>>()?;
        let (totals, plans_left_off) = busiest(totals, max_plans);
        let mut plans = Vec::with_capacity(totals.len());
        // One walk of the (plan, minute) primary key per plan.
        for t in totals {
            let points = sqlx::query(
                "SELECT minute, allowed, refused, shadow_refused FROM usage_buckets \
                 WHERE plan = ? AND minute >= ? ORDER BY minute",
            )
            .bind(&t.plan)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok(SeriesPoint {
                    minute: r.try_get("minute")?,
                    allowed: r.try_get("allowed")?,
                    refused: r.try_get("refused")?,
                    shadow_refused: r.try_get("shadow_refused")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
            plans.push(super::PlanSeries { totals: t, points });
        }
        tx.commit().await?;
        Ok(Series {
            plans,
            plans_left_off,
        })
    }

    async fn version_at(&self, t: i64) -> StoreResult<i64> {
        // The latest second with a change at or before t, then that second's highest
        // version: two short walks of the (kind, at) index, however long the log.
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM audit_events \
             WHERE kind IN ('change', 'lever') AND at = (SELECT MAX(at) FROM audit_events \
             WHERE kind IN ('change', 'lever') AND at <= ?)",
        )
        .bind(t)
        .fetch_one(&self.reader)
        .await?)
    }

    async fn purge_events(&self, cutoff: i64, batch: u32) -> StoreResult<EventPurgeCounts> {
        let mut tx = self.begin_write().await?;
        let limit = i64::from(batch);
        let refusals = sqlx::query(
            "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events \
             WHERE kind = 'refusal' AND at < ? LIMIT ?)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let usage_buckets = sqlx::query(
            "DELETE FROM usage_buckets WHERE (plan, minute) IN (SELECT plan, minute \
             FROM usage_buckets WHERE minute < ? LIMIT ?)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let refusal_buckets = sqlx::query(
            "DELETE FROM refusal_buckets WHERE (minute, shadow, code, status, route, caller) IN \
             (SELECT minute, shadow, code, status, route, caller FROM refusal_buckets \
             WHERE minute < ? LIMIT ?)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let proxies = sqlx::query(
            "DELETE FROM proxies WHERE proxy IN (SELECT proxy FROM proxies \
             WHERE seen_at < ? LIMIT ?)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(EventPurgeCounts {
            refusals,
            usage_buckets,
            refusal_buckets,
            proxies,
        })
    }

    async fn set_override(&self, o: &Override, ctx: &ChangeCtx) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        if o.scope == Scope::Key {
            let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_keys WHERE id = ?")
                .bind(&o.id)
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_none() {
                return Err(StoreError::NotFound);
            }
        }
        let in_force: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM limit_overrides WHERE scope = ? AND id = ? \
             AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(o.scope.as_str())
        .bind(&o.id)
        .bind(ctx.now)
        .fetch_optional(&mut *tx)
        .await?;
        if in_force.is_none() {
            check_lever_room(&mut tx, ctx.now).await?;
        }
        let target = levers::override_target(o.scope, &o.id);
        let detail = levers::override_detail(o);
        let version = bump_lever(
            &mut tx,
            ctx,
            "limits.set",
            &target,
            Some(&o.reason),
            &detail,
        )
        .await?;
        sqlx::query(
            "INSERT INTO limit_overrides (scope, id, requests_per_minute, expires_at, reason, \
             updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (scope, id) DO UPDATE SET \
             requests_per_minute = excluded.requests_per_minute, \
             expires_at = excluded.expires_at, reason = excluded.reason, \
             updated_at = excluded.updated_at, version = excluded.version",
        )
        .bind(o.scope.as_str())
        .bind(&o.id)
        .bind(o.requests_per_minute)
        .bind(o.expires_at)
        .bind(&o.reason)
        .bind(o.updated_at)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn clear_override(
        &self,
        scope: Scope,
        id: &str,
        reason: Option<&str>,
        ctx: &ChangeCtx,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        let in_force: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM limit_overrides WHERE scope = ? AND id = ? \
             AND (expires_at IS NULL OR expires_at > ?)",
        )
        .bind(scope.as_str())
        .bind(id)
        .bind(ctx.now)
        .fetch_optional(&mut *tx)
        .await?;
        if in_force.is_none() {
            return Err(StoreError::NotFound);
        }
        let target = levers::override_target(scope, id);
        let version = bump_lever(&mut tx, ctx, "limits.cleared", &target, reason, "").await?;
        sqlx::query("DELETE FROM limit_overrides WHERE scope = ? AND id = ?")
            .bind(scope.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn overrides_of(
        &self,
        scope: Scope,
        ids: &[String],
        now: i64,
    ) -> StoreResult<Vec<Override>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {OVERRIDE_COLUMNS} FROM limit_overrides WHERE scope = "
        ));
        q.push_bind(scope.as_str());
        q.push(" AND (expires_at IS NULL OR expires_at > ");
        q.push_bind(now);
        q.push(") AND id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id);
        }
        list.push_unseparated(") ORDER BY id");
        q.build()
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(override_row)
            .collect()
    }

    async fn set_mode(&self, m: &ModeLever, ctx: &ChangeCtx) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        let detail = format!("mode={}", m.mode.as_str());
        if m.mode == Mode::Enforce {
            let version =
                bump_lever(&mut tx, ctx, "mode.set", &m.limit, Some(&m.reason), &detail).await?;
            sqlx::query("DELETE FROM limit_modes WHERE name = ?")
                .bind(&m.limit)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(version);
        }
        let set: Option<i64> = sqlx::query_scalar("SELECT 1 FROM limit_modes WHERE name = ?")
            .bind(&m.limit)
            .fetch_optional(&mut *tx)
            .await?;
        if set.is_none() {
            check_lever_room(&mut tx, ctx.now).await?;
        }
        let version =
            bump_lever(&mut tx, ctx, "mode.set", &m.limit, Some(&m.reason), &detail).await?;
        sqlx::query(
            "INSERT INTO limit_modes (name, mode, reason, updated_at, version) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET mode = excluded.mode, \
             reason = excluded.reason, updated_at = excluded.updated_at, \
             version = excluded.version",
        )
        .bind(&m.limit)
        .bind(m.mode.as_str())
        .bind(&m.reason)
        .bind(m.updated_at)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn add_allow(&self, e: &AllowEntry, ctx: &ChangeCtx) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        let same: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM allowlist WHERE subject_kind = ? AND subject = ? AND limit_name = ?",
        )
        .bind(e.subject.kind())
        .bind(e.subject.value())
        .bind(e.limit_column())
        .fetch_optional(&mut *tx)
        .await?;
        if same.is_some() {
            return Err(StoreError::Conflict(
                "an allowlist entry for this subject and limit exists already",
            ));
        }
        check_lever_room(&mut tx, ctx.now).await?;
        let detail = levers::allow_detail(e.subject.kind(), e.subject.value(), e.limit_column());
        let version = bump_lever(
            &mut tx,
            ctx,
            "allowlist.added",
            &e.id,
            Some(&e.reason),
            &detail,
        )
        .await?;
        sqlx::query(
            "INSERT INTO allowlist (id, subject_kind, subject, limit_name, reason, created_at, \
             version) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&e.id)
        .bind(e.subject.kind())
        .bind(e.subject.value())
        .bind(e.limit_column())
        .bind(&e.reason)
        .bind(e.created_at)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn remove_allow(
        &self,
        id: &str,
        reason: Option<&str>,
        ctx: &ChangeCtx,
    ) -> StoreResult<i64> {
        let mut tx = self.begin_write().await?;
        let row =
            sqlx::query("SELECT subject_kind, subject, limit_name FROM allowlist WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound);
        };
        let detail = levers::allow_detail(
            &row.try_get::<String, _>("subject_kind")?,
            &row.try_get::<String, _>("subject")?,
            &row.try_get::<String, _>("limit_name")?,
        );
        let version = bump_lever(&mut tx, ctx, "allowlist.removed", id, reason, &detail).await?;
        sqlx::query("DELETE FROM allowlist WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn levers(&self, now: i64) -> StoreResult<Levers> {
        let mut tx = self.reader.begin().await?;
        let levers = read_levers(&mut tx, now).await?;
        tx.commit().await?;
        Ok(levers)
    }

    async fn feed(&self, ask: &FeedAsk<'_>) -> StoreResult<FeedAnswer> {
        // One read transaction: the version and the rows come from one snapshot.
        let mut tx = self.reader.begin().await?;
        let answer = paging::answer(&mut FeedRead(&mut tx), ask).await?;
        tx.commit().await?;
        Ok(answer)
    }

    async fn feed_size(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM api_keys) + (SELECT COUNT(*) FROM user_revocations) \
             + (SELECT COUNT(*) FROM jti_revocations)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn purge(&self, cutoff: i64, batch: u32) -> StoreResult<PurgeCounts> {
        let mut tx = self.begin_write().await?;
        let limit = i64::from(batch);
        let mut counts = PurgeCounts::default();
        let mut highest: i64 = 0;
        // A NULL end (never) is not below the cutoff: such rows stay.
        for (table, id_col, ended) in [
            ("api_keys", "id", "expires_at < ?1 OR revoked_at < ?1"),
            ("user_revocations", "user_id", "until < ?1"),
            ("jti_revocations", "jti_sha256", "until < ?1"),
        ] {
            let rows = sqlx::query(&format!(
                "DELETE FROM {table} WHERE {id_col} IN (SELECT {id_col} FROM {table} \
                 WHERE {ended} LIMIT ?2) RETURNING version"
            ))
            .bind(cutoff)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            for r in &rows {
                highest = highest.max(r.try_get::<i64, _>("version")?);
            }
            let n = rows.len() as u64;
            match table {
                "api_keys" => counts.keys = n,
                "user_revocations" => counts.users = n,
                _ => counts.jtis = n,
            }
        }
        // Expired overrides are out of the feed and the API already: deleting them
        // changes neither, so it moves no version.
        counts.overrides = sqlx::query(
            "DELETE FROM limit_overrides WHERE (scope, id) IN (SELECT scope, id \
             FROM limit_overrides WHERE expires_at < ?1 LIMIT ?2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if highest > 0 {
            sqlx::query("UPDATE meta SET purged_through = MAX(purged_through, ?) WHERE id = 1")
                .bind(highest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(counts)
    }

    async fn purge_idempotency(&self, cutoff: i64, batch: u32) -> StoreResult<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "DELETE FROM idempotency_keys WHERE key_sha256 IN (SELECT key_sha256 \
             FROM idempotency_keys WHERE created_at < ? LIMIT ?)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    fn follow(&self) -> Follow {
        Follow::Poll(FOLLOW_EVERY)
    }

    async fn try_job_lock(&self, job: Job, now: i64) -> StoreResult<Option<Box<dyn JobLock>>> {
        let taken = sqlx::query(
            "INSERT INTO job_leases (job, holder, until) VALUES (?1, ?2, ?3) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE job_leases.until <= ?4 OR job_leases.holder = excluded.holder",
        )
        .bind(job.name())
        .bind(&self.holder)
        .bind(now.saturating_add(JOB_LEASE_SECS))
        .bind(now)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok((taken == 1).then(|| {
            Box::new(Lease {
                writer: self.writer.clone(),
                holder: self.holder.clone(),
                job,
            }) as Box<dyn JobLock>
        }))
    }
}

/// A held `job_leases` row.
struct Lease {
    writer: SqlitePool,
    holder: String,
    job: Job,
}

#[async_trait::async_trait]
impl JobLock for Lease {
    async fn release(self: Box<Self>) -> StoreResult<()> {
        sqlx::query("DELETE FROM job_leases WHERE job = ? AND holder = ?")
            .bind(self.job.name())
            .bind(&self.holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
