//! State each worker keeps for itself, apart from the policy (which is configuration):
//! memos of work already done for a client, built empty when a policy loads and dropped
//! with it.

pub mod secret_cache;

use crate::authn::api_key::{KeyHash, KeyRecord, MAX_PRESENTED_KEY_LEN, POLICY_ENTRY_LEN};
use crate::limit::Places;
use crate::policy::KeyFormat;
use secret_cache::SecretCache;
use std::sync::Arc;

/// A worker's caches for the policy it holds. None changes an answer: each saves work a
/// request would otherwise repeat, and what it holds is checked again where it matters.
#[derive(Debug, Default)]
pub struct Caches {
    /// Keys presented lately that passed the format check, with their SHA-256, so a
    /// client's next request with the same key skips both (the key's record is still
    /// read on every request). Each entry remembers the format it was checked under.
    pub presented_keys: PresentedKeys,
    /// Key records decoded lately, reused while their shared-data version is the one
    /// they were decoded from (a revocation or any other write changes the version).
    pub key_records: KeyRecords,
    /// Callers' limiter slots ([`Places`]).
    pub places: Places,
    /// Fleet-scoped admissions not yet handed to the sync ([`crate::limit::fleet`]).
    pub fleet: crate::limit::fleet::Tally,
    /// The sync's view of the fleet, as the worker last read it on its tick.
    pub fleet_view: crate::limit::fleet::CachedView,
    /// The operators' levers from the feed, as the worker last read them on its tick.
    pub levers: crate::levers::CachedLevers,
}

/// Presented API keys already checked and hashed ([`Caches::presented_keys`]): the
/// format they were checked under, their SHA-256 and their shared-data key (`K…`).
#[derive(Debug)]
pub struct PresentedKeys(pub SecretCache<PresentedKey>);

/// One remembered key ([`PresentedKeys`]).
pub type PresentedKey = (KeyFormat, KeyHash, Arc<str>);

/// Key records decoded lately, by shared-data key, with the version (cas) they were
/// decoded from and the hash they hold ([`Caches::key_records`]).
#[derive(Debug)]
pub struct KeyRecords(pub SecretCache<(u32, KeyHash, Arc<KeyRecord>)>);

impl KeyRecords {
    /// Entries per worker.
    pub const ENTRIES: usize = 256;
}

impl Default for KeyRecords {
    fn default() -> Self {
        // The longer of the two entry names (`K…`, `kp…`).
        KeyRecords(SecretCache::new(Self::ENTRIES, POLICY_ENTRY_LEN))
    }
}

impl PresentedKeys {
    /// Entries per worker.
    pub const ENTRIES: usize = 256;
}

impl Default for PresentedKeys {
    fn default() -> Self {
        PresentedKeys(SecretCache::new(Self::ENTRIES, MAX_PRESENTED_KEY_LEN))
    }
}
