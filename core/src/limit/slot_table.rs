//! A fixed table of shared-data slots, shared exactly by every worker: the rate limiter's
//! states ([`crate::limit`]) and the webhook replay cache ([`crate::body::replay_cache`])
//! both live in one. Slots are `<name>/<slots>/<index>`, 16-byte entries ([`encode`]).

use crate::store::{SharedStore, StoreError};
use sha2::{Digest, Sha256};

/// Candidate slots per owner: a newcomer finds no room only when all of them hold live
/// strangers, which at a table load `a` happens with probability about `a^4`.
pub const CANDIDATES: usize = 4;

/// An entry's size in shared data.
pub const ENTRY_LEN: usize = 16;

/// A free slot: no owner, value 0. The same size as a used one, so claiming a slot never
/// grows shared data: the table takes its full size when it is made.
const FREE: [u8; ENTRY_LEN] = [0; ENTRY_LEN];

/// One table: `name` (such as `rl` or `wh/<route>`) and its number of slots. A different
/// `slots` value is a different table, created afresh.
#[derive(Clone, Copy, Debug)]
pub struct SlotTable<'a> {
    pub name: &'a str,
    pub slots: u32,
}

/// Where one owner's entry may live: its candidate slots, in the order they are tried,
/// and its tag.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    candidates: [u64; CANDIDATES],
    count: usize,
    pub tag: u64,
}

impl Place {
    pub fn candidates(&self) -> &[u64] {
        self.candidates.get(..self.count).unwrap_or(&[])
    }
}

/// A slot [`SlotTable::find`] chose: the owner's own (`value` is its entry's value) or a
/// free one to claim (`value` is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub index: u64,
    pub cas: u32,
    pub value: Option<u64>,
}

fn u64_at(d: &[u8; 32], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = d.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

/// An entry's tag and value; `None` for anything not written by [`encode`].
pub fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    let entry: &[u8; ENTRY_LEN] = bytes.try_into().ok()?;
    let (tag, value) = entry.split_at(8);
    Some((
        u64::from_be_bytes(tag.try_into().ok()?),
        u64::from_be_bytes(value.try_into().ok()?),
    ))
}

/// An entry: the owner's 64-bit tag, then one 64-bit value (a `tat` in nanoseconds for
/// the limiter, an expiry second for the replay cache), big-endian. A free slot is all
/// zeros; anything else that is not 16 bytes reads as free.
pub fn encode(tag: u64, value: u64) -> [u8; ENTRY_LEN] {
    let mut entry = [0u8; ENTRY_LEN];
    let (t, v) = entry.split_at_mut(8);
    t.copy_from_slice(&tag.to_be_bytes());
    v.copy_from_slice(&value.to_be_bytes());
    entry
}

impl SlotTable<'_> {
    /// The shared-data key of a slot, `<name>/<slots>/<index>`, built without the
    /// formatting machinery (this runs on every request that uses the table).
    pub fn key(&self, index: u64) -> String {
        let mut key = self.prefix();
        crate::text::push_decimal(&mut key, index);
        key
    }

    fn prefix(&self) -> String {
        let mut key = String::with_capacity(self.name.len() + 24);
        key.push_str(self.name);
        key.push('/');
        crate::text::push_decimal(&mut key, u64::from(self.slots));
        key.push('/');
        key
    }

    fn ready_key(&self) -> String {
        let mut key = self.prefix();
        key.push_str("ready");
        key
    }

    /// Creates every slot unless a worker already did, and then a `<name>/<slots>/ready`
    /// marker. Shared data has no delete, so the table is fixed; Envoy writes an absent
    /// key whatever compare-and-swap value it is given, so every slot must exist before
    /// any request uses it, and after that every write is a real CAS. Every worker calls this when it
    /// configures, before it handles any request; workers configure before Envoy sends
    /// them traffic, so the unconditional writes cannot overwrite a live entry (and once
    /// the marker exists, nobody writes them again). Returns the slots written.
    pub fn prepare(&self, store: &impl SharedStore) -> Result<u32, StoreError> {
        if store.get(&self.ready_key()).is_some() {
            return Ok(0);
        }
        for i in 0..u64::from(self.slots) {
            store.set(&self.key(i), &FREE, 0)?;
        }
        store.set(&self.ready_key(), b"1", 0)?;
        Ok(self.slots)
    }

    /// The place of the owner `(a, b)`: `SHA-256(a ‖ 0 ‖ b)`. For owners no caller can
    /// choose (the replay cache's verified MACs); see [`SlotTable::place_keyed`].
    pub fn place(&self, a: &[u8], b: &[u8]) -> Place {
        self.place_keyed(&[], a, b)
    }

    /// The place of the owner `(a, b)` under a secret: `SHA-256(secret ‖ a ‖ 0 ‖ b)`.
    /// Where callers choose the owners (the rate limiter's client addresses and ids),
    /// the secret keeps them from computing which slots an owner of their choice takes.
    /// The hash's first 16 bytes pick [`CANDIDATES`] distinct slots (4 bytes each), the
    /// next 8 are the tag (never 0), independent of the slot choice.
    pub fn place_keyed(&self, secret: &[u8], a: &[u8], b: &[u8]) -> Place {
        let mut h = Sha256::new();
        h.update(secret);
        h.update(a);
        h.update([0]);
        h.update(b);
        let d: [u8; 32] = h.finalize().into();
        let n = u64::from(self.slots.max(1));
        let mut place = Place {
            candidates: [0; CANDIDATES],
            count: 0,
            tag: u64_at(&d, 16).max(1),
        };
        let wanted = CANDIDATES.min(usize::try_from(n).unwrap_or(CANDIDATES));
        for (c, chunk) in d.chunks_exact(4).take(wanted).enumerate() {
            let mut four = [0u8; 4];
            four.copy_from_slice(chunk);
            let mut i = u64::from(u32::from_be_bytes(four)) % n;
            while place.candidates().contains(&i) {
                i = (i + 1) % n;
            }
            if let Some(slot) = place.candidates.get_mut(c) {
                *slot = i;
                place.count = c + 1;
            }
        }
        place
    }

    /// The owner's entry, when `mine(value)` holds for a candidate with the owner's tag
    /// (reading stops there), else the first candidate whose entry is free to claim:
    /// unreadable, or `free(value)` for its value. `None` when neither: every candidate
    /// holds a live stranger, or is absent (the table was not prepared, and an absent
    /// slot is never claimed: writing it would not be a compare-and-swap). An owner seen
    /// before costs one read; a free slot is chosen only after every candidate was read,
    /// since the owner's entry may sit behind it.
    pub fn find(
        &self,
        store: &impl SharedStore,
        place: &Place,
        mine: impl Fn(u64) -> bool,
        free: impl Fn(u64) -> bool,
    ) -> Option<Found> {
        let mut first_free: Option<Found> = None;
        for &index in place.candidates() {
            let Some((bytes, cas)) = store.get(&self.key(index)) else {
                continue;
            };
            let claimable = match decode(&bytes) {
                Some((tag, value)) if tag == place.tag && mine(value) => {
                    return Some(Found {
                        index,
                        cas,
                        value: Some(value),
                    });
                }
                Some((_, value)) => free(value),
                None => true,
            };
            if claimable && cas != 0 && first_free.is_none() {
                first_free = Some(Found {
                    index,
                    cas,
                    value: None,
                });
            }
        }
        first_free
    }

    /// Writes the owner's entry into slot `index` if it is still at `cas`.
    pub fn write(
        &self,
        store: &impl SharedStore,
        index: u64,
        tag: u64,
        value: u64,
        cas: u32,
    ) -> Result<(), StoreError> {
        store.set(&self.key(index), &encode(tag, value), cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn places_are_distinct_tagged_and_in_range() {
        for slots in [1, 2, 3, 4, 5, 1024, 65_536] {
            let table = SlotTable { name: "t", slots };
            for owner in ["a", "b", "u:user_1", "ip:10.0.0.1"] {
                let p = table.place(b"plan:free", owner.as_bytes());
                let n = usize::try_from(slots).unwrap().min(CANDIDATES);
                assert_eq!(p.candidates().len(), n);
                let mut seen = p.candidates().to_vec();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), n, "distinct candidates");
                assert!(p.candidates().iter().all(|&i| i < u64::from(slots)));
                assert_ne!(p.tag, 0);
            }
        }
        let t = SlotTable {
            name: "t",
            slots: 1024,
        };
        assert_ne!(t.place(b"l", b"a").tag, t.place(b"l", b"b").tag);
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(t.place(b"ab", b"c").tag, t.place(b"a", b"bc").tag);
    }

    #[test]
    fn entries_round_trip_and_keys_are_the_documented_ones() {
        assert_eq!(decode(&encode(u64::MAX, 42)), Some((u64::MAX, 42)));
        assert_eq!(decode(&FREE), Some((0, 0)));
        assert_eq!(decode(b"0000000000000000|0000000000000000000"), None);
        let t = SlotTable {
            name: "rl",
            slots: 65_536,
        };
        assert_eq!(t.key(0), "rl/65536/0");
        assert_eq!(t.key(123_456_789), "rl/65536/123456789");
        assert_eq!(t.ready_key(), "rl/65536/ready");
        let w = SlotTable {
            name: "wh/hooks",
            slots: 7,
        };
        assert_eq!(w.key(3), "wh/hooks/7/3");
    }

    #[test]
    fn find_stops_at_the_owners_entry_and_claims_free_slots_only_after_reading_all() {
        let store = MemoryStore::default();
        let t = SlotTable {
            name: "t",
            slots: 1024,
        };
        t.prepare(&store).unwrap();
        let p = t.place(b"l", b"a");
        let [c0, c1, ..] = p.candidates() else {
            panic!("four candidates")
        };
        // A stranger in the first slot, the owner in the second.
        t.write(&store, *c0, 7, 100, 0).unwrap();
        t.write(&store, *c1, p.tag, 5, 0).unwrap();
        let live = |v: u64| v > 50;
        let found = t.find(&store, &p, |_| true, |v| !live(v)).unwrap();
        assert_eq!((found.index, found.value), (*c1, Some(5)));
        // The stranger lapses: the owner's entry behind it is still found.
        t.write(&store, *c0, 7, 1, 0).unwrap();
        let found = t.find(&store, &p, |_| true, |v| !live(v)).unwrap();
        assert_eq!((found.index, found.value), (*c1, Some(5)));
        // Without an entry of its own the owner gets the first free slot.
        let other = t.place(b"l", b"b");
        let found = t.find(&store, &other, |_| true, |_| true).unwrap();
        assert_eq!((found.index, found.value), (other.candidates()[0], None));
    }

    #[test]
    fn an_unprepared_table_offers_no_slot() {
        let store = MemoryStore::default();
        let t = SlotTable {
            name: "t",
            slots: 64,
        };
        assert_eq!(
            t.find(&store, &t.place(b"l", b"a"), |_| true, |_| true),
            None
        );
        assert_eq!(t.prepare(&store).unwrap(), 64);
        assert_eq!(t.prepare(&store).unwrap(), 0, "the marker says it is done");
        assert!(
            t.find(&store, &t.place(b"l", b"a"), |_| true, |_| true)
                .is_some()
        );
    }
}
