//! The shared data one `/v1/authz` decision reads: what a proxy's shared data would hold
//! for this request, assembled from the database instead of the feed.
//!
//! The plugin's core (`gatehouse_core::pipeline::decide`) reads a [`SharedStore`]: key records
//! (`K<84 bits of the sha256>`), user watermarks (`u/<user>`), jti entries (`j/<sha256 hex>`), the
//! feed's state and the rate limiter's tables. [`RequestStore`] answers those reads, in
//! this order, from:
//!
//! 1. the writes of this decision (the limiter's, the only writer);
//! 2. the entries fetched from the database for this request ([`Entries`], written by
//!    `gatehouse_core::sync::feed::apply`, the sync's own encoder);
//! 3. the policy's own keys and revocations (written once at start-up by
//!    `key_cache::install_policy_keys` and `revocation::install`, as a proxy's configure
//!    does). Policy keys live under their own prefix (`kp`), so a key both declare is
//!    judged by the core from both records, as in the plugin; a revocation both hold is
//!    the database's, as a fed entry is a proxy's;
//! 4. the limiter's tables as freshly prepared: every slot free, and a placement secret.
//!
//! A read of a key record, watermark or jti entry that none of these holds is recorded
//! ([`RequestStore::missing`]): the caller looks those up in the database and decides
//! again (`decide.rs`).
//!
//! Versions: entries of layers 2 and 3 are answered with compare-and-swap version 0, "no
//! version". The policy memoizes decoded key records by version, which is sound for
//! Envoy's shared data (a change bumps the version) but not here, where each request
//! builds its entries afresh: with version 0 the memo is never used, so a key revoked a
//! moment ago is never answered from an earlier request's record. Limiter slots carry
//! real versions (a slot with version 0 is never claimed).
//!
//! Never: keep anything across requests, or grow past what one decision writes (one
//! entry per limit the request is counted against, and its refund).

use gatehouse_core::limit::slot_table::ENTRY_LEN;
use gatehouse_core::limit::{SECRET_KEY, SECRET_LEN};
use gatehouse_core::store::{SharedStore, StoreError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};

/// The prefixes of the entries the database holds the truth for: key records, user
/// watermarks and jti entries (`gatehouse_core::authn::key_cache`, `gatehouse_core::authn::revocation`).
const FROM_DATABASE: [&str; 3] = ["K", "u/", "j/"];

/// The limiter's placement secret. The secret keeps callers from aiming their limiter
/// slots at someone else's in a table shared by every request; here each decision has a
/// table of its own, empty, so there is nothing to aim at and a constant does.
const PLACEMENT_SECRET: [u8; SECRET_LEN] = [0x5a; SECRET_LEN];

/// The version of a limiter slot nobody wrote in this decision (never 0: see the module
/// doc).
const PREPARED: u32 = 1;

/// Entries in the plugin's shared-data encoding, without versions. Filled through
/// [`Entries::writer`] by the core's own encoders.
#[derive(Clone, Debug, Default)]
pub struct Entries(HashMap<String, Vec<u8>>);

impl Entries {
    /// A [`SharedStore`] whose writes land in these entries.
    pub fn writer(&mut self) -> Writer<'_> {
        Writer(RefCell::new(self))
    }

    fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.0.get(key)
    }
}

/// Writes into [`Entries`]; reads see what was written (the encoders read before they
/// write, e.g. to leave a fed revocation alone). Every write is unconditional.
pub struct Writer<'a>(RefCell<&'a mut Entries>);

impl SharedStore for Writer<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.borrow().get(key).map(|v| (v.clone(), 0))
    }

    fn set(&self, key: &str, value: &[u8], _cas: u32) -> Result<(), StoreError> {
        self.0
            .borrow_mut()
            .0
            .insert(key.to_string(), value.to_vec());
        Ok(())
    }
}

/// Whether `key` names a slot of one of the limiter's tables: `rl/<slots>/<index>` or
/// `rla/<slots>/<index>` (`gatehouse_core::limit`, `gatehouse_core::limit::slot_table`).
fn is_limiter_slot(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("rl/").or_else(|| key.strip_prefix("rla/")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest.split_once('/')
        .is_some_and(|(slots, index)| digits(slots) && digits(index))
}

/// See the module doc.
pub struct RequestStore<'a> {
    fetched: &'a Entries,
    base: &'a Entries,
    writes: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    last_cas: Cell<u32>,
    missing: RefCell<BTreeSet<String>>,
}

impl<'a> RequestStore<'a> {
    pub fn new(fetched: &'a Entries, base: &'a Entries) -> RequestStore<'a> {
        RequestStore {
            fetched,
            base,
            writes: RefCell::new(HashMap::new()),
            last_cas: Cell::new(PREPARED),
            missing: RefCell::new(BTreeSet::new()),
        }
    }

    /// The key records, watermarks and jti entries read and found nowhere, sorted.
    pub fn missing(&self) -> Vec<String> {
        self.missing.borrow().iter().cloned().collect()
    }

    /// Entries this decision wrote.
    #[cfg(test)]
    pub fn written(&self) -> usize {
        self.writes.borrow().len()
    }

    /// The current version of `key`, for a compare-and-swap; `None` when absent.
    fn version(&self, key: &str) -> Option<u32> {
        self.get(key).map(|(_, cas)| cas)
    }
}

impl SharedStore for RequestStore<'_> {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        if let Some(entry) = self.writes.borrow().get(key) {
            return Some(entry.clone());
        }
        if let Some(value) = self.fetched.get(key).or_else(|| self.base.get(key)) {
            return Some((value.clone(), 0));
        }
        if key == SECRET_KEY {
            return Some((PLACEMENT_SECRET.to_vec(), PREPARED));
        }
        if is_limiter_slot(key) {
            return Some((vec![0; ENTRY_LEN], PREPARED));
        }
        if FROM_DATABASE.iter().any(|p| key.starts_with(p)) {
            self.missing.borrow_mut().insert(key.to_string());
        }
        None
    }

    /// Envoy's rules: `cas` 0 writes unconditionally, any other only over that version.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if cas != 0
            && let Some(current) = self.version(key)
            && current != cas
        {
            return Err(StoreError::CasMismatch);
        }
        let next = self.last_cas.get().wrapping_add(1).max(PREPARED + 1);
        self.last_cas.set(next);
        self.writes
            .borrow_mut()
            .insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests: a failure panics")]
    use super::*;

    fn entries(pairs: &[(&str, &[u8])]) -> Entries {
        let mut e = Entries::default();
        let w = e.writer();
        for (k, v) in pairs {
            w.set(k, v, 0).unwrap();
        }
        e
    }

    #[test]
    fn fetched_entries_win_over_the_policys_and_carry_no_version() {
        let fetched = entries(&[("Ka", b"db")]);
        let base = entries(&[("Ka", b"policy"), ("Kb", b"policy")]);
        let s = RequestStore::new(&fetched, &base);
        assert_eq!(s.get("Ka"), Some((b"db".to_vec(), 0)));
        assert_eq!(s.get("Kb"), Some((b"policy".to_vec(), 0)));
        assert!(s.missing().is_empty());
    }

    #[test]
    fn reads_the_database_must_answer_are_recorded_and_nothing_else_is() {
        let (fetched, base) = (Entries::default(), Entries::default());
        let s = RequestStore::new(&fetched, &base);
        for key in ["Kc", "u/alice", "j/00", "feed/state", "wh/x/1", "Kc", "kpc"] {
            assert_eq!(s.get(key), None, "{key}");
        }
        assert_eq!(s.missing(), ["Kc", "j/00", "u/alice"]);
    }

    #[test]
    fn limiter_tables_read_as_prepared_and_take_compare_and_swap_writes() {
        let (fetched, base) = (Entries::default(), Entries::default());
        let s = RequestStore::new(&fetched, &base);
        assert_eq!(s.get("rl/secret").unwrap().0.len(), SECRET_LEN);
        let (free, cas) = s.get("rla/65536/17").unwrap();
        assert_eq!((free, cas), (vec![0; ENTRY_LEN], PREPARED));
        assert_eq!(
            s.set("rla/65536/17", b"x", PREPARED + 5),
            Err(StoreError::CasMismatch)
        );
        s.set("rla/65536/17", b"x", PREPARED).unwrap();
        let (value, now) = s.get("rla/65536/17").unwrap();
        assert_eq!(value, b"x");
        assert_ne!(now, PREPARED);
        assert_eq!(
            s.set("rla/65536/17", b"y", PREPARED),
            Err(StoreError::CasMismatch)
        );
        assert_eq!(s.written(), 1);
        for not_a_slot in ["rl/", "rl/1", "rl/1/", "rl/x/1", "rlb/1/1", "rla/1/2/3"] {
            assert!(!is_limiter_slot(not_a_slot), "{not_a_slot}");
        }
    }
}
