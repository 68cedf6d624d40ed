//! The cleanup job: deletes keys and revocation entries that expired longer ago than the
//! retention period, in batches so the writer is never held for long. Until then they
//! stay in the feed (a proxy refuses them on their own expiry anyway); once deleted, a
//! feed `since` below their version gets 410 and the sync takes a fresh snapshot.
//! Keys revoked without an expiry stay as tombstones: a proxy must keep refusing them.

use crate::app::AppState;
use crate::store::{PurgeCounts, StoreError};

/// Rows of each kind deleted per transaction.
pub const BATCH: u32 = 500;

/// One pass: purges in batches until nothing is left to purge.
pub async fn run_once(s: &AppState) -> Result<PurgeCounts, StoreError> {
    let retention = i64::try_from(s.config.retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = s.clock.now_secs().saturating_sub(retention);
    let mut total = PurgeCounts::default();
    loop {
        let n = s.store.purge(cutoff, BATCH).await?;
        total.keys += n.keys;
        total.users += n.users;
        total.jtis += n.jtis;
        let batch = u64::from(BATCH);
        if n.keys < batch && n.users < batch && n.jtis < batch {
            break;
        }
    }
    tracing::info!(
        keys = total.keys,
        users = total.users,
        jtis = total.jtis,
        cutoff,
        "cleanup"
    );
    Ok(total)
}

/// Runs [`run_once`] every `cleanup_interval`, logging failures and carrying on.
pub fn spawn(s: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.config.cleanup_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = run_once(&s).await {
                tracing::error!(error = %e, "cleanup failed");
            }
        }
    })
}
