//! The API-key cache in shared data: one entry per key hash (`k/<hex>`), written from
//! the policy's static keys on configure (and, later, by the control-service feed), read
//! with one small get per request.

use crate::api_key::{KeyFailure, KeyHash, KeyRecord, Origin};
use crate::policy::Policy;
use crate::store::{SharedStore, StoreError};
use crate::time::UnixNanos;
use std::sync::Arc;

/// Writes every key the policy declares. Every worker does this on configure; the writes
/// are idempotent. Returns how many were written.
pub fn install_policy_keys(policy: &Policy, store: &impl SharedStore) -> Result<usize, StoreError> {
    for key in &policy.keys {
        store.set(&key.hash.cache_key(), &key.record.encode(), 0)?;
    }
    Ok(policy.keys.len())
}

/// Looks a key up and checks that it may be used at `now`.
pub fn lookup(
    policy: &Policy,
    store: &impl SharedStore,
    hash: &KeyHash,
    now: UnixNanos,
) -> Result<KeyRecord, KeyFailure> {
    lookup_at(policy, store, &hash.cache_key(), now).map(|r| (*r).clone())
}

/// [`lookup`] by the record's shared-data key (`k/<hex>`, [`KeyHash::cache_key`]). The
/// record is read on every call; decoding it is skipped when the policy's
/// [`crate::policy::KeyRecords`] holds it at the same version (cas).
pub fn lookup_at(
    policy: &Policy,
    store: &impl SharedStore,
    cache_key: &str,
    now: UnixNanos,
) -> Result<Arc<KeyRecord>, KeyFailure> {
    let (bytes, cas) = store.get(cache_key).ok_or(KeyFailure::Unknown)?;
    let memo = &policy.key_records.0;
    let record = match memo.get(cache_key.as_bytes()) {
        Some((seen, record)) if seen == cas && cas != 0 => record,
        _ => {
            let record = Arc::new(KeyRecord::decode(&bytes).ok_or(KeyFailure::Unknown)?);
            if cas != 0 {
                memo.insert(cache_key.as_bytes(), (cas, Arc::clone(&record)));
            }
            record
        }
    };
    if let Origin::Policy(fp) = record.origin {
        // Declared by another (older) policy: shared data cannot forget it, so we do.
        if fp != policy.fingerprint {
            return Err(KeyFailure::Unknown);
        }
    }
    if !record.active {
        return Err(KeyFailure::Revoked);
    }
    if record.expires_at.is_some_and(|exp| now.secs() >= exp) {
        return Err(KeyFailure::Expired);
    }
    Ok(record)
}
