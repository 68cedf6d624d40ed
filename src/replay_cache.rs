//! The webhook replay cache: a signature accepted once is refused if it comes again while
//! it could still verify (within its tolerance window), across every Envoy worker.
//!
//! **Algorithm.** Shared data has no delete, so the cache is a fixed table of `slots`
//! entries per route, `wh/<route>/<slots>/<index>`, created up front ([`prepare`]) like
//! the rate limiter's (`crate::rate_limit`), so that every later write is a real
//! compare-and-swap (Envoy writes an absent key whatever cas it is given). A message is
//! known by the SHA-256 of the MAC that verified it ([`crate::signature::Accepted`]):
//! `d = SHA-256(route ‖ 0 ‖ fingerprint)`. Four 8-byte words of `d` pick
//! [`CANDIDATES`] distinct slots; the first 8 bytes of `SHA-256(d)` are the message's tag. An entry is
//! `<tag hex>|<until secs>`: the tag of the message it remembers and the Unix second
//! after which that message could no longer verify (its signed timestamp plus the
//! tolerance, or the moment it was accepted plus the tolerance when nothing signed a
//! timestamp, as with GitHub).
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
//! Memory is `slots` × ~60 bytes (key and value) per route, whatever the traffic.

use crate::signature::{Accepted, SignatureError};
use crate::store::{SharedStore, StoreError};
use sha2::{Digest, Sha256};

/// Candidate slots per message.
pub const CANDIDATES: usize = 4;

/// Lost compare-and-swaps in a row before the message is refused as unrememberable.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// Table size when `replay_cache: {}` does not say.
pub const DEFAULT_SLOTS: u32 = 4096;

/// A free slot: as long as a used one (16 hex digits, `|`, 20 digits), so claiming a slot
/// never grows shared data.
const FREE: &[u8] = b"0000000000000000|00000000000000000000";

fn slot_key(table: &str, slots: u32, index: u64) -> String {
    format!("wh/{table}/{slots}/{index}")
}

fn ready_key(table: &str, slots: u32) -> String {
    format!("wh/{table}/{slots}/ready")
}

/// Creates every slot of a route's table unless a worker already did (see the module
/// doc). Called by every worker at configure time, before it decides any request.
/// Returns the slots written.
pub fn prepare(store: &impl SharedStore, table: &str, slots: u32) -> Result<u32, StoreError> {
    if store.get(&ready_key(table, slots)).is_some() {
        return Ok(0);
    }
    for i in 0..u64::from(slots) {
        store.set(&slot_key(table, slots, i), FREE, 0)?;
    }
    store.set(&ready_key(table, slots), b"1", 0)?;
    Ok(slots)
}

fn u64_at(d: &[u8; 32], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = d.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

/// The candidate slot keys and the tag of a message.
fn place(table: &str, slots: u32, fingerprint: &[u8; 32]) -> (Vec<String>, u64) {
    let mut h = Sha256::new();
    h.update(table.as_bytes());
    h.update([0]);
    h.update(fingerprint);
    let d: [u8; 32] = h.finalize().into();
    let n = u64::from(slots.max(1));
    let mut picked: Vec<u64> = Vec::with_capacity(CANDIDATES);
    for c in 0..CANDIDATES.min(usize::try_from(n).unwrap_or(CANDIDATES)) {
        let mut i = u64_at(&d, c * 8) % n;
        while picked.contains(&i) {
            i = (i + 1) % n;
        }
        picked.push(i);
    }
    // The tag comes from a second digest, independent of the slot choice.
    let tag = u64_at(&Sha256::digest(d).into(), 0);
    let keys = picked
        .into_iter()
        .map(|i| slot_key(table, slots, i))
        .collect();
    (keys, tag)
}

fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(bytes).ok()?;
    let (tag, until) = s.split_once('|')?;
    Some((u64::from_str_radix(tag, 16).ok()?, until.parse().ok()?))
}

fn encode(tag: u64, until: u64) -> Vec<u8> {
    format!("{tag:016x}|{until:020}").into_bytes()
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
    let (keys, tag) = place(table, slots, &accepted.fingerprint);
    let until = accepted.replayable_until.max(now.saturating_add(1));
    for _ in 0..MAX_CAS_ATTEMPTS {
        let entries: Vec<Option<(u64, u64, u32)>> = keys
            .iter()
            .map(|k| {
                store.get(k).map(|(bytes, cas)| {
                    let (t, u) = decode(&bytes).unwrap_or((0, 0));
                    (t, u, cas)
                })
            })
            .collect();
        if entries
            .iter()
            .flatten()
            .any(|(t, u, _)| *t == tag && *u > now)
        {
            return Err(SignatureError::Replayed);
        }
        // Never an absent slot: writing it would not be a compare-and-swap.
        let free = keys.iter().zip(&entries).find_map(|(key, e)| match e {
            Some((_, u, cas)) if *u <= now && *cas != 0 => Some((key, *cas)),
            _ => None,
        });
        let Some((key, cas)) = free else {
            return Err(SignatureError::Unavailable);
        };
        match store.set(key, &encode(tag, until), cas) {
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
    fn slot_entries_keep_their_size() {
        assert_eq!(encode(u64::MAX, u64::MAX).len(), FREE.len());
        assert_eq!(decode(FREE), Some((0, 0)));
    }
}
