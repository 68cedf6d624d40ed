//! The API-key cache in shared data, read with one small get per request (two when the
//! policy declares keys of its own): `K<84 bits of the hash>` written by the feed,
//! `kp<the same 84 bits>` by the policy. Neither source writes the other's entries, so no interleaving of a policy
//! reload and the feed can bring back a key the control service revoked.

use crate::authn::api_key::{
    KeyFailure, KeyHash, KeyRecord, Origin, POLICY_ENTRY_LEN, POLICY_KEY_PREFIX,
};
use crate::policy::Policy;
use crate::store::{SharedStore, StoreError};
use crate::time::UnixNanos;
use crate::worker::KeyRecords;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Writes every key the policy declares, under `kp…` only. Every worker does this on
/// configure; the writes are idempotent. Returns how many were written.
pub fn install_policy_keys(policy: &Policy, store: &impl SharedStore) -> Result<usize, StoreError> {
    for key in &policy.keys {
        // The decoder admits only ids the encoding holds; one it cannot hold is left out
        // (and so refused), never written half.
        if let Some(bytes) = key.record.encode(&key.hash) {
            store.set(&key.hash.policy_cache_key(), &bytes, 0)?;
        }
    }
    Ok(policy.keys.len())
}

/// Looks a key up and checks that it may be used at `now`. A key both sources declare
/// is checked against both and the stricter answer holds: refused if either says revoked
/// or expired, else the feed's record (the control service owns scopes and plan).
/// `generation`: the cache's (the feed state's); a fed record of an older one is absent.
pub fn lookup(
    policy: &Policy,
    records: &KeyRecords,
    store: &impl SharedStore,
    hash: &KeyHash,
    generation: u32,
    now: UnixNanos,
) -> Result<KeyRecord, KeyFailure> {
    lookup_at(
        policy,
        records,
        store,
        hash,
        &hash.cache_key(),
        generation,
        now,
    )
    .map(|r| (*r).clone())
}

/// The record at `entry` for `hash`, decoded, through the worker's memo of decoded
/// records. A record for another hash (an entry name is 84 bits of it) is none.
fn read(
    records: &KeyRecords,
    store: &impl SharedStore,
    entry: &str,
    hash: &KeyHash,
) -> Option<Arc<KeyRecord>> {
    let (bytes, cas) = store.get(entry)?;
    let memo = &records.0;
    let (stored, record) = match memo.get(entry.as_bytes()) {
        Some((seen, stored, record)) if seen == cas && cas != 0 => (stored, record),
        _ => {
            let (stored, record) = KeyRecord::decode(&bytes)?;
            let record = Arc::new(record);
            if cas != 0 {
                memo.insert(entry.as_bytes(), (cas, stored, Arc::clone(&record)));
            }
            (stored, record)
        }
    };
    bool::from(stored.0.ct_eq(&hash.0)).then_some(record)
}

/// Whether `record` may be used at `now`.
fn usable(record: &KeyRecord, now: UnixNanos) -> Result<(), KeyFailure> {
    if !record.active {
        return Err(KeyFailure::Revoked);
    }
    if record.expires_at.is_some_and(|exp| now.secs() >= exp) {
        return Err(KeyFailure::Expired);
    }
    Ok(())
}

/// [`lookup`] by the feed's shared-data key ([`KeyHash::cache_key`]) and the key's hash.
/// Records are read on every call; decoding is skipped when the worker's [`KeyRecords`]
/// holds one at the same version (cas). The policy's own entry is read only for a key
/// the policy declares, under a name built on the stack.
pub fn lookup_at(
    policy: &Policy,
    records: &KeyRecords,
    store: &impl SharedStore,
    hash: &KeyHash,
    cache_key: &str,
    generation: u32,
    now: UnixNanos,
) -> Result<Arc<KeyRecord>, KeyFailure> {
    // Only the feed writes `K…`; a policy-origin record there is not the feed's, and one
    // of a generation before the cache's was retired by the last snapshot.
    let fed = read(records, store, cache_key, hash)
        .filter(|r| r.origin == Origin::Feed && r.generation >= generation);
    // Declared by another (older) policy: shared data cannot forget it, so we do.
    let declared = if policy.declared.contains(&hash.0) {
        let mut name = [0u8; POLICY_ENTRY_LEN];
        let (prefix, rest) = name.split_at_mut(POLICY_KEY_PREFIX.len());
        prefix.copy_from_slice(POLICY_KEY_PREFIX.as_bytes());
        let bits = cache_key.as_bytes().get(1..).ok_or(KeyFailure::Unknown)?;
        rest.get_mut(..bits.len())
            .ok_or(KeyFailure::Unknown)?
            .copy_from_slice(bits);
        let name = std::str::from_utf8(&name).map_err(|_| KeyFailure::Unknown)?;
        read(records, store, name, hash).filter(|r| r.origin == Origin::Policy(policy.fingerprint))
    } else {
        None
    };
    match (fed, declared) {
        (None, None) => Err(KeyFailure::Unknown),
        (Some(record), None) | (None, Some(record)) => usable(&record, now).map(|()| record),
        (Some(fed), Some(declared)) => {
            usable(&fed, now)?;
            usable(&declared, now)?;
            Ok(fed)
        }
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::sync::feed::{Answer, apply};

    const DEMO: &[u8] = b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";

    fn policy() -> Policy {
        crate::policy::load_yaml(
            "example.yaml",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/example.yaml"
            )),
        )
        .unwrap()
        .policy
    }

    fn feed(store: &MemoryStore, active: bool, plan: &str) {
        let record = KeyRecord {
            origin: Origin::Feed,
            key_id: "key_demo".into(),
            user: "user_demo".into(),
            tenant: "tenant_demo".into(),
            plan: plan.into(),
            expires_at: None,
            active,
            scopes: vec![],
            generation: 0,
        };
        let answer = Answer {
            epoch: "e1".into(),
            version: 1,
            full: false,
            more: false,
            next: None,
            keys: vec![(KeyHash::of_key(DEMO), record)],
            users: vec![],
            jtis: vec![],
            skipped: 0,
            levers: None,
        };
        apply(store, &answer, false, 1).unwrap();
    }

    /// The policy as a reload with another fingerprint would decode it.
    fn reloaded(p: &Policy, fingerprint: u64) -> Policy {
        let mut p = p.clone();
        p.fingerprint = fingerprint;
        for k in &mut p.keys {
            k.record.origin = Origin::Policy(fingerprint);
        }
        p
    }

    fn ask(policy: &Policy, store: &MemoryStore) -> Result<Arc<KeyRecord>, KeyFailure> {
        let hash = KeyHash::of_key(DEMO);
        lookup_at(
            policy,
            &KeyRecords::default(),
            store,
            &hash,
            &hash.cache_key(),
            0,
            UnixNanos(0),
        )
    }

    /// The control service revoked a key the policy also declares: no order of the
    /// policy's (re)install and the feed's write brings it back.
    #[test]
    fn a_policy_reload_never_brings_back_a_key_the_feed_revoked() {
        let p = policy();
        // Feed first, then a policy reload.
        let store = MemoryStore::default();
        feed(&store, false, "team");
        install_policy_keys(&p, &store).unwrap();
        assert_eq!(ask(&p, &store).err(), Some(KeyFailure::Revoked));
        // Policy first, then the feed, then another reload (a new fingerprint).
        let store = MemoryStore::default();
        install_policy_keys(&p, &store).unwrap();
        assert!(
            ask(&p, &store).is_ok(),
            "declared and not fed: the policy's key"
        );
        feed(&store, false, "team");
        let again = reloaded(&p, p.fingerprint ^ 1);
        install_policy_keys(&again, &store).unwrap();
        assert_eq!(ask(&again, &store).err(), Some(KeyFailure::Revoked));
        assert_eq!(ask(&p, &store).err(), Some(KeyFailure::Revoked));
    }

    /// Both sources hold the key: the stricter answer, and the feed's record.
    #[test]
    fn a_key_both_declare_is_refused_if_either_refuses_and_else_is_the_feeds() {
        let p = policy();
        let store = MemoryStore::default();
        feed(&store, true, "enterprise");
        install_policy_keys(&p, &store).unwrap();
        assert_eq!(ask(&p, &store).unwrap().plan, "enterprise");
        // The policy revokes its copy: refused although the feed says active.
        let mut p = reloaded(&p, p.fingerprint ^ 2);
        if let Some(k) = p.keys.iter_mut().find(|k| k.hash == KeyHash::of_key(DEMO)) {
            k.record.active = false;
        }
        install_policy_keys(&p, &store).unwrap();
        assert_eq!(ask(&p, &store).err(), Some(KeyFailure::Revoked));
        // Without keys of its own a policy reads the feed's entry alone.
        p.keys.clear();
        p.declared.clear();
        assert_eq!(ask(&p, &store).unwrap().plan, "enterprise");
    }

    /// Only keys the policy declares are looked up in its entries: any other costs the
    /// one get of the feed's entry, as before the two were apart.
    #[test]
    fn an_undeclared_key_reads_the_feeds_entry_only() {
        let p = policy();
        let store = MemoryStore::default();
        let stranger = KeyHash::of_key(b"ghk_stranger");
        let record = p.keys[0].record.clone();
        store
            .set(
                &stranger.policy_cache_key(),
                &record.encode(&stranger).unwrap(),
                0,
            )
            .unwrap();
        assert_eq!(
            lookup_at(
                &p,
                &KeyRecords::default(),
                &store,
                &stranger,
                &stranger.cache_key(),
                0,
                UnixNanos(0)
            )
            .err(),
            Some(KeyFailure::Unknown)
        );
        assert!(p.declared.contains(&KeyHash::of_key(DEMO).0));
        assert_eq!(p.declared.len(), p.keys.len());
    }

    /// A record of a generation before the cache's was retired by the last snapshot;
    /// one under the key's entry name but for another hash (84 shared bits) is not its.
    #[test]
    fn a_retired_or_foreign_record_is_an_unknown_key() {
        let mut p = policy();
        p.keys.clear();
        p.declared.clear();
        let store = MemoryStore::default();
        let hash = KeyHash::of_key(b"ghk_some_fed_key");
        let record = KeyRecord {
            origin: Origin::Feed,
            key_id: "key_1".into(),
            user: "u".into(),
            tenant: "t".into(),
            plan: "team".into(),
            expires_at: None,
            active: true,
            scopes: vec![],
            generation: 4,
        };
        store
            .set(&hash.cache_key(), &record.encode(&hash).unwrap(), 0)
            .unwrap();
        let at = |generation| {
            lookup_at(
                &p,
                &KeyRecords::default(),
                &store,
                &hash,
                &hash.cache_key(),
                generation,
                UnixNanos(0),
            )
            .map(|r| r.key_id.clone())
        };
        assert_eq!(at(4).as_deref(), Ok("key_1"));
        assert_eq!(at(3).as_deref(), Ok("key_1"), "a newer record serves");
        assert_eq!(at(5), Err(KeyFailure::Unknown), "retired");
        // Same first 84 bits, another hash: the record is not this key's, memo or not.
        let mut twin = hash;
        twin.0[31] ^= 1;
        assert_eq!(twin.cache_key(), hash.cache_key());
        let records = KeyRecords::default();
        for _ in 0..2 {
            assert!(
                lookup_at(
                    &p,
                    &records,
                    &store,
                    &hash,
                    &hash.cache_key(),
                    0,
                    UnixNanos(0)
                )
                .is_ok()
            );
            assert_eq!(
                lookup_at(
                    &p,
                    &records,
                    &store,
                    &twin,
                    &twin.cache_key(),
                    0,
                    UnixNanos(0)
                )
                .err(),
                Some(KeyFailure::Unknown)
            );
        }
    }
}
