//! The cleanup job. It purges two things, each after its own retention period:
//!
//! - keys and revocation entries that ended longer ago than `retention` (a key's expiry or
//!   revocation, an entry's `until`), in batches so the writer is never held for long.
//!   Until then they stay in the feed: a revoked key as a tombstone, which every proxy in
//!   step applies within the retention, an expired one refused by the proxies on its own.
//!   Once deleted, a feed `since` below their version gets 410 and the sync takes a fresh
//!   snapshot, which retires every key it does not mention (control/FEED.md): so a revoked
//!   key without an expiry does not stay in the database, nor in the caches, forever.
//! - what the proxies reported (`POST /v1/events`) longer ago than `event_retention`:
//!   refusal events (by their `at`), per-minute request counts and proxies not heard
//!   from since. None of it is in the feed, so no version moves.
//! - idempotency records of `POST /v1/keys` (`idempotency.rs`) older than their fixed
//!   24 h, with the first: once gone, the same Idempotency-Key issues a new key. Not in
//!   the feed either.
//!
//! Several replicas on one database: each pass first takes the job's lock
//! ([`Store::try_job_lock`](crate::store::Store::try_job_lock): an advisory lock on
//! PostgreSQL, a lease row on SQLite), and a replica that does not get it skips that pass.
//! So one replica purges at a time; the purges would be safe side by side (each batch is
//! a write transaction) but would only queue on the writers' lock for nothing.

use crate::app::AppState;
use crate::store::{EventPurgeCounts, Job, PurgeCounts, StoreError};

/// Rows of each kind deleted per transaction.
pub const BATCH: u32 = 500;

fn cutoff(s: &AppState, retention: std::time::Duration) -> i64 {
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    s.clock.now_secs().saturating_sub(retention)
}

/// One pass: purges in batches until nothing is left to purge.
pub async fn run_once(s: &AppState) -> Result<PurgeCounts, StoreError> {
    let cutoff = cutoff(s, s.config.retention);
    let mut total = PurgeCounts::default();
    loop {
        let n = s.store.purge(cutoff, BATCH).await?;
        total.keys += n.keys;
        total.users += n.users;
        total.jtis += n.jtis;
        total.overrides += n.overrides;
        let batch = u64::from(BATCH);
        if n.keys < batch && n.users < batch && n.jtis < batch && n.overrides < batch {
            break;
        }
    }
    let idempotency_cutoff = s
        .clock
        .now_secs()
        .saturating_sub(crate::idempotency::RETENTION_SECS);
    loop {
        let n = s.store.purge_idempotency(idempotency_cutoff, BATCH).await?;
        total.idempotency_keys += n;
        if n < u64::from(BATCH) {
            break;
        }
    }
    tracing::info!(
        keys = total.keys,
        users = total.users,
        jtis = total.jtis,
        idempotency_keys = total.idempotency_keys,
        overrides = total.overrides,
        cutoff,
        "cleanup"
    );
    Ok(total)
}

/// One pass over what the proxies reported, in batches until nothing is left to purge.
pub async fn run_events_once(s: &AppState) -> Result<EventPurgeCounts, StoreError> {
    let cutoff = cutoff(s, s.config.event_retention);
    let mut total = EventPurgeCounts::default();
    loop {
        let n = s.store.purge_events(cutoff, BATCH).await?;
        total.refusals += n.refusals;
        total.usage_buckets += n.usage_buckets;
        total.refusal_buckets += n.refusal_buckets;
        total.proxies += n.proxies;
        let batch = u64::from(BATCH);
        if n.refusals < batch
            && n.usage_buckets < batch
            && n.refusal_buckets < batch
            && n.proxies < batch
        {
            break;
        }
    }
    tracing::info!(
        refusals = total.refusals,
        usage_buckets = total.usage_buckets,
        refusal_buckets = total.refusal_buckets,
        proxies = total.proxies,
        cutoff,
        "cleanup of reported events"
    );
    Ok(total)
}

/// One pass under the job's lock: [`run_once`] then [`run_events_once`], each failure
/// logged. `Ok(false)`: another replica holds the lock, and this pass is skipped.
pub async fn pass(s: &AppState) -> Result<bool, StoreError> {
    let Some(lock) = s
        .store
        .try_job_lock(Job::Cleanup, s.clock.now_secs())
        .await?
    else {
        tracing::debug!("cleanup pass skipped: another replica holds the job");
        return Ok(false);
    };
    if let Err(e) = run_once(s).await {
        tracing::error!(error = %e, "cleanup failed");
    }
    if let Err(e) = run_events_once(s).await {
        tracing::error!(error = %e, "cleanup of reported events failed");
    }
    lock.release().await?;
    Ok(true)
}

/// Runs a [`pass`] every `cleanup_interval`, logging failures and carrying on.
pub fn spawn(s: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.config.cleanup_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = pass(&s).await {
                tracing::error!(error = %e, "cleanup lock failed");
            }
        }
    })
}
