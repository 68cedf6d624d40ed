//! The webhook replay cache: a signature accepted once is refused if it comes again while
//! it is remembered, across every Envoy worker; the algorithm is at [`remember`].
//! What it promises and how to size it: `docs/policy.md#webhook-signatures`.

use crate::body::webhook::{Accepted, SignatureError};
use crate::limit::slot_table::SlotTable;
use crate::store::{SharedStore, StoreError};

/// Candidate slots per message ([`crate::limit::slot_table`]).
pub use crate::limit::slot_table::CANDIDATES;

/// Lost compare-and-swaps in a row before the message is refused as unrememberable.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// Table size when `replay_cache: {}` does not say, on a route whose provider signs a
/// timestamp: a 5-minute window of ~1,000 deliveries, 160 KB. At a load `a` a new message
/// finds all [`CANDIDATES`] taken with probability about `a^4`, so `slots` ≥ 4 ×
/// deliveries per window keeps such refusals under 0.4%.
pub const DEFAULT_SLOTS: u32 = 4096;

/// Table size on a route whose provider signs no timestamp, unless `replay_cache` says
/// otherwise: a 24-hour window of ~16,000 deliveries, 2.6 MB (sized as [`DEFAULT_SLOTS`]).
/// On by default there: without it a captured delivery could be replayed forever.
pub const DEFAULT_WINDOW_SLOTS: u32 = 65_536;

/// The name of a route's table (`wh/<route>`; slots are `wh/<route>/<slots>/<index>`).
fn table_name(table: &str) -> String {
    ["wh/", table].concat()
}

/// Creates every slot of a route's table unless a worker already did, so that every
/// later write is a real compare-and-swap (Envoy writes an absent key whatever cas it
/// is given). Called by every worker at configure time, before it decides any request.
/// Returns the slots written.
pub fn prepare(store: &impl SharedStore, table: &str, slots: u32) -> Result<u32, StoreError> {
    let name = table_name(table);
    SlotTable { name: &name, slots }.prepare(store)
}

/// Remembers an accepted message at `now` (Unix seconds): `Err(Replayed)` when the table
/// already holds it, `Err(Unavailable)` when it cannot be remembered.
///
/// A message is known by the SHA-256 of the MAC that verified it ([`Accepted`]);
/// `SHA-256(route ‖ 0 ‖ fingerprint)` picks its [`CANDIDATES`] slots and tag
/// ([`crate::limit::slot_table`]). An entry holds that tag and the Unix second after
/// which it is forgotten ([`Accepted::replayable_until`]: signed timestamp + tolerance,
/// or acceptance + replay window). Read the candidates: our tag with `until > now` is a
/// replay; else claim the first free one (`until <= now`, or unreadable) by
/// compare-and-swap, rereading on a mismatch (at most [`MAX_CAS_ATTEMPTS`]). Two workers
/// racing with one message aim at the same free slot; one wins, the other's retry finds
/// the tag. A message that cannot be remembered (live strangers everywhere, endless
/// conflicts) is refused, since accepting it would let a replay through later. Known
/// limit: two copies arriving the very second a stranger's entry expires may see
/// different first free slots and both pass.
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
    use crate::body::webhook::{
        DEFAULT_REPLAY_WINDOW_SECS, DEFAULT_TOLERANCE_SECS, Provider, Verifier, Webhook, sign,
        verify,
    };
    use crate::request::Presented;
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

    /// A webhook route as the shell builds it: its verifier and its prepared table.
    fn route(provider: Provider, slots: u32) -> (Verifier, MemoryStore) {
        let w = Webhook {
            provider,
            secrets_env: vec!["S".into()],
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
            replay_window_secs: DEFAULT_REPLAY_WINDOW_SECS,
            replay_slots: Some(slots),
        };
        let v = Verifier::new(&w, "hooks", |_| Some(SECRET.into())).unwrap();
        (v, prepared(slots))
    }

    /// Verifies one delivery at `now` and, when it verifies, remembers it, as the body
    /// check does at the end of the body.
    fn verify_and_remember(
        (v, s): &(Verifier, MemoryStore),
        signature: &str,
        timestamp: Presented<'_>,
        body: &[u8],
        now: u64,
    ) -> Result<(), SignatureError> {
        let accepted = verify(
            v,
            Presented::One(signature.as_bytes()),
            timestamp,
            body,
            now,
        )?;
        let (table, slots) = v.replay_table().unwrap();
        remember(s, table, slots, &accepted, now)
    }

    const SECRET: &str = "github-secret-0123456789";
    const HOUR: u64 = 3600;

    #[test]
    fn a_github_delivery_is_refused_as_a_replay_for_its_whole_replay_window() {
        let r = route(Provider::Github, DEFAULT_WINDOW_SLOTS);
        let body = br#"{"action":"opened","number":1}"#;
        let sig = sign(&Provider::Github, SECRET.as_bytes(), 0, body);
        let deliver = |now| verify_and_remember(&r, &sig, Presented::None, body, now);
        assert_eq!(deliver(NOW), Ok(()));
        // After 5 minutes (the tolerance, which GitHub has nothing to check against), after
        // 23 hours, and at the window's last second: the same captured delivery.
        for later in [
            NOW + 1,
            NOW + 5 * 60 + 1,
            NOW + 23 * HOUR,
            NOW + 24 * HOUR - 1,
        ] {
            assert_eq!(
                deliver(later),
                Err(SignatureError::Replayed),
                "{}s later",
                later - NOW
            );
        }
    }

    #[test]
    fn a_github_delivery_is_accepted_again_once_its_replay_window_has_passed() {
        // Nothing in the delivery ages, so once forgotten it cannot be told from a first
        // delivery (the documented limit): accepted, and remembered for a new window.
        let r = route(Provider::Github, 64);
        let body = br#"{"action":"closed","number":1}"#;
        let sig = sign(&Provider::Github, SECRET.as_bytes(), 0, body);
        let deliver = |now| verify_and_remember(&r, &sig, Presented::None, body, now);
        assert_eq!(deliver(NOW), Ok(()));
        assert_eq!(deliver(NOW + 24 * HOUR), Ok(()));
        assert_eq!(deliver(NOW + 24 * HOUR + 1), Err(SignatureError::Replayed));
        assert_eq!(deliver(NOW + 47 * HOUR), Err(SignatureError::Replayed));
    }

    #[test]
    fn a_stripe_event_replayed_after_its_tolerance_is_refused_by_its_timestamp() {
        let r = route(Provider::Stripe, DEFAULT_SLOTS);
        let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
        let header = sign(&Provider::Stripe, SECRET.as_bytes(), NOW, body);
        let deliver = |now| verify_and_remember(&r, &header, Presented::None, body, now);
        assert_eq!(deliver(NOW), Ok(()));
        // At the window's last second it still verifies, and is still remembered.
        assert_eq!(deliver(NOW + 300), Err(SignatureError::Replayed));
        // The cache has forgotten it by now (it was remembered until t + tolerance): the
        // signed timestamp is what refuses it, before the body is read.
        for later in [NOW + 301, NOW + 23 * HOUR, NOW + 25 * HOUR] {
            assert_eq!(deliver(later), Err(SignatureError::Expired));
        }
        let accepted = verify(
            &r.0,
            Presented::One(header.as_bytes()),
            Presented::None,
            body,
            NOW,
        )
        .unwrap();
        assert_eq!(accepted.replayable_until, NOW + DEFAULT_TOLERANCE_SECS + 1);
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
