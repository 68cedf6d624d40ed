//! The webhook replay cache: a signature accepted once is refused if it comes again while
//! it could still verify (within its tolerance window), across every Envoy worker.
//!
//! **Algorithm.** Shared data has no delete, so the cache is a fixed table of `slots`
//! entries per route, `wh/<route>/<slots>/<index>` ([`crate::slot_table`], the same kind
//! of table as the rate limiter's), created up front ([`prepare`]) so that every later
//! write is a real compare-and-swap (Envoy writes an absent key whatever cas it is
//! given). A message is known by the SHA-256 of the MAC that verified it
//! ([`crate::signature::Accepted`]); `SHA-256(route ‖ 0 ‖ fingerprint)` picks its
//! [`CANDIDATES`] slots and its tag. An entry holds the tag of the message it remembers
//! and the Unix second after which that message could no longer verify (its signed
//! timestamp plus the tolerance, or the moment it was accepted plus the tolerance when
//! nothing signed a timestamp, as with GitHub).
//!
//! To remember a message at `now`: read the candidates; if one holds our tag with
//! `until > now`, it is a **replay**. Otherwise claim the first candidate that is free
//! (`until <= now`, or unreadable) with a compare-and-swap; on a cas mismatch another
//! worker wrote in between, so read again and decide again (at most
//! [`MAX_CAS_ATTEMPTS`] times). Two workers racing with the same message therefore both
//! aim at the same free slot, one wins, and the other's retry finds the tag and refuses.
//! If every candidate holds a live stranger, or the writes keep conflicting, the message
//! cannot be remembered and is refused (503 `AUTH_UNAVAILABLE`, retryable): accepting it
//! would let a replay through later. Size the table for the deliveries of one tolerance
//! window; with 4 candidates a message finds no room only when the table is nearly full.
//!
//! Known limit: two copies of one message arriving at the very second a stranger's entry
//! expires may see different first free slots and both be accepted.
//!
//! Memory is `slots` × ~40 bytes (key and 16-byte value) per route, whatever the traffic.

use crate::signature::{Accepted, SignatureError};
use crate::slot_table::SlotTable;
use crate::store::{SharedStore, StoreError};

/// Candidate slots per message ([`crate::slot_table`]).
pub use crate::slot_table::CANDIDATES;

/// Lost compare-and-swaps in a row before the message is refused as unrememberable.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// Table size when `replay_cache: {}` does not say.
pub const DEFAULT_SLOTS: u32 = 4096;

/// The name of a route's table (`wh/<route>`; slots are `wh/<route>/<slots>/<index>`).
fn table_name(table: &str) -> String {
    ["wh/", table].concat()
}

/// Creates every slot of a route's table unless a worker already did (see the module
/// doc). Called by every worker at configure time, before it decides any request.
/// Returns the slots written.
pub fn prepare(store: &impl SharedStore, table: &str, slots: u32) -> Result<u32, StoreError> {
    let name = table_name(table);
    SlotTable { name: &name, slots }.prepare(store)
}

/// Remembers an accepted message at `now` (Unix seconds): `Err(Replayed)` when the table
/// already holds it, `Err(Unavailable)` when it cannot be remembered.
pub fn remember(
    store: &impl SharedStore,
    table: &str,
    slots: u32,
    accepted: &Accepted,
    now: u64,
) -> Result<(), SignatureError> {
    let name = table_name(table);
    let slots = SlotTable { name: &name, slots };
    let place = slots.place(table.as_bytes(), &accepted.fingerprint);
    let until = accepted.replayable_until.max(now.saturating_add(1));
    for _ in 0..MAX_CAS_ATTEMPTS {
        // Ours while it could still verify; anyone's, ours included, once it could not.
        let live = |until: u64| until > now;
        let Some(found) = slots.find(store, &place, live, |until| !live(until)) else {
            return Err(SignatureError::Unavailable);
        };
        if found.value.is_some() {
            return Err(SignatureError::Replayed);
        }
        match slots.write(store, found.index, place.tag, until, found.cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return Err(SignatureError::Unavailable),
        }
    }
    Err(SignatureError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const NOW: u64 = 1_767_225_600;

    fn accepted(n: u8, until: u64) -> Accepted {
        Accepted {
            fingerprint: [n; 32],
            replayable_until: until,
        }
    }

    fn prepared(slots: u32) -> MemoryStore {
        let s = MemoryStore::default();
        assert_eq!(prepare(&s, "hooks", slots).unwrap(), slots);
        assert_eq!(prepare(&s, "hooks", slots).unwrap(), 0);
        s
    }

    #[test]
    fn a_message_is_accepted_once_then_refused_as_a_replay_until_its_window_ends() {
        let s = prepared(64);
        let a = accepted(1, NOW + 300);
        assert_eq!(remember(&s, "hooks", 64, &a, NOW), Ok(()));
        assert_eq!(
            remember(&s, "hooks", 64, &a, NOW + 10),
            Err(SignatureError::Replayed)
        );
        assert_eq!(
            remember(&s, "hooks", 64, &a, NOW + 299),
            Err(SignatureError::Replayed)
        );
        // After its window the message could not verify any more; the slot is free.
        assert_eq!(remember(&s, "hooks", 64, &a, NOW + 300), Ok(()));
        assert_eq!(
            remember(&s, "hooks", 64, &accepted(2, NOW + 300), NOW),
            Ok(())
        );
    }

    #[test]
    fn each_route_has_its_own_table() {
        let s = prepared(64);
        prepare(&s, "other", 64).unwrap();
        let a = accepted(1, NOW + 300);
        assert_eq!(remember(&s, "hooks", 64, &a, NOW), Ok(()));
        assert_eq!(remember(&s, "other", 64, &a, NOW), Ok(()));
    }

    #[test]
    fn a_full_table_refuses_rather_than_forgets() {
        let s = prepared(4);
        for n in 0..4 {
            assert_eq!(
                remember(&s, "hooks", 4, &accepted(n, NOW + 300), NOW),
                Ok(())
            );
        }
        assert_eq!(
            remember(&s, "hooks", 4, &accepted(9, NOW + 300), NOW),
            Err(SignatureError::Unavailable)
        );
        // Once the entries lapse there is room again.
        assert_eq!(
            remember(&s, "hooks", 4, &accepted(9, NOW + 600), NOW + 301),
            Ok(())
        );
    }

    #[test]
    fn an_unprepared_table_refuses() {
        let s = MemoryStore::default();
        assert_eq!(
            remember(&s, "hooks", 64, &accepted(1, NOW + 300), NOW),
            Err(SignatureError::Unavailable)
        );
    }

    #[test]
    fn a_lost_race_reads_again_and_finds_the_replay() {
        // A store that lets another worker write the same message between our read and
        // our write, once.
        struct Racing {
            inner: MemoryStore,
            raced: std::cell::Cell<bool>,
        }
        impl SharedStore for Racing {
            fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
                self.inner.get(key)
            }
            fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
                if !self.raced.replace(true) {
                    remember(&self.inner, "hooks", 64, &accepted(1, NOW + 300), NOW)
                        .expect("the other worker wins");
                }
                self.inner.set(key, value, cas)
            }
        }
        let s = Racing {
            inner: prepared(64),
            raced: std::cell::Cell::new(false),
        };
        assert_eq!(
            remember(&s, "hooks", 64, &accepted(1, NOW + 300), NOW),
            Err(SignatureError::Replayed)
        );
    }

    #[test]
    fn a_replay_behind_a_slot_that_frees_up_is_still_refused() {
        let s = prepared(64);
        let name = table_name("hooks");
        let t = SlotTable {
            name: &name,
            slots: 64,
        };
        let a = accepted(1, NOW + 300);
        let first = t.place(b"hooks", &a.fingerprint).candidates()[0];
        // A live stranger holds the message's first slot, so it is remembered in the next.
        t.write(&s, first, 7, NOW + 1000, 0).unwrap();
        assert_eq!(remember(&s, "hooks", 64, &a, NOW), Ok(()));
        // The stranger's entry lapses; the message behind it is still known.
        t.write(&s, first, 7, NOW - 1, 0).unwrap();
        assert_eq!(
            remember(&s, "hooks", 64, &a, NOW + 1),
            Err(SignatureError::Replayed)
        );
    }
}
