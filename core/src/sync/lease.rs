//! Who runs the sync. With Envoy's singleton service (`bootstrap_extensions`) that VM
//! does; Istio's `WasmPlugin` and Envoy Gateway's `EnvoyExtensionPolicy` add HTTP
//! filters only, so without it one worker's root context takes the role ("filter-only
//! mode"). Both take it through one lease in shared data ([`KEY`]): the holder renews it
//! on every tick, another worker takes it over once it lapses ([`TTL_NANOS`] after the
//! holder's last renewal: a trapped or stalled worker), and the singleton takes it at
//! once from whoever holds it, so that with a singleton configured the sync runs there.
//!
//! The entry is 17 bytes: the holder's id (random per VM), when the lease lapses (unix
//! ns), and whether the holder is the singleton; all zeros is free.

use crate::store::{SharedStore, StoreError};

/// The shared-data entry of the lease.
pub const KEY: &str = "sync/lease";

/// How long a lease lasts past its last renewal. The holder renews it every sync tick
/// (100 ms); a worker's ticks may be held up by the requests it serves, so the lease
/// allows for twenty missed ticks before another worker takes over.
pub const TTL_NANOS: u64 = 2_000_000_000;

/// Who asks for the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Envoy's singleton service: takes the lease from a worker.
    Singleton,
    /// A worker's root context: takes the lease only once it lapses.
    Worker,
}

/// The lease as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub until: u64,
    pub singleton: bool,
}

impl Lease {
    fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        let (holder, rest) = out.split_at_mut(8);
        let (until, kind) = rest.split_at_mut(8);
        holder.copy_from_slice(&self.holder.to_be_bytes());
        until.copy_from_slice(&self.until.to_be_bytes());
        if let Some(k) = kind.first_mut() {
            *k = u8::from(self.singleton);
        }
        out
    }

    /// The lease in an entry's bytes; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let bytes: &[u8; 17] = bytes.try_into().ok()?;
        let (holder, rest) = bytes.split_at(8);
        let (until, kind) = rest.split_at(8);
        Some(Lease {
            holder: u64::from_be_bytes(holder.try_into().ok()?),
            until: u64::from_be_bytes(until.try_into().ok()?),
            singleton: kind.first() == Some(&1),
        })
    }
}

/// Makes sure the entry exists, so that taking the lease is always a compare-and-swap
/// (shared data writes an absent key whatever cas is given).
pub fn init(store: &impl SharedStore) -> Result<(), StoreError> {
    if store.get(KEY).is_none() {
        store.set(KEY, &[0; 17], 0)?;
    }
    Ok(())
}

/// The lease as it stands, if the entry is there.
pub fn read(store: &impl SharedStore) -> Option<Lease> {
    store.get(KEY).and_then(|(bytes, _)| Lease::decode(&bytes))
}

/// Whether `me` holds the lease at `now` (without renewing it).
pub fn holds(store: &impl SharedStore, me: u64, now: u64) -> bool {
    read(store).is_some_and(|l| l.holder == me && l.until > now)
}

/// Takes or renews the lease for `me` at `now`; `true` if `me` holds it afterwards. A
/// worker takes a lapsed or free lease; the singleton takes it whoever holds it.
/// Every write is a compare-and-swap, so of several workers asking at once one wins.
pub fn hold(store: &impl SharedStore, me: u64, role: Role, now: u64) -> bool {
    let Some((bytes, cas)) = store.get(KEY) else {
        return false;
    };
    // Anything unreadable counts as a free lease.
    let current = Lease::decode(&bytes).unwrap_or(Lease {
        holder: 0,
        until: 0,
        singleton: false,
    });
    let mine = current.holder == me && me != 0;
    let lapsed = current.until <= now;
    let takes = match role {
        // Envoy runs one singleton service; one that finds another's lease is its
        // replacement (a reloaded VM, or the one Envoy keeps after configuring a first).
        Role::Singleton => true,
        Role::Worker => mine || lapsed,
    };
    if !takes || cas == 0 {
        return false;
    }
    let next = Lease {
        holder: me,
        until: now.saturating_add(TTL_NANOS),
        singleton: role == Role::Singleton,
    };
    store.set(KEY, &next.encode(), cas).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_767_225_600 * SEC;

    fn store() -> MemoryStore {
        let s = MemoryStore::default();
        init(&s).unwrap();
        s
    }

    #[test]
    fn one_worker_holds_it_and_renews_it_the_others_wait() {
        let s = store();
        assert!(hold(&s, 1, Role::Worker, T0));
        assert!(!hold(&s, 2, Role::Worker, T0));
        assert!(hold(&s, 1, Role::Worker, T0 + SEC), "renewed");
        assert!(
            !hold(&s, 2, Role::Worker, T0 + 2 * SEC),
            "renewed a second ago"
        );
        assert!(holds(&s, 1, T0 + 2 * SEC));
        assert!(!holds(&s, 2, T0 + 2 * SEC));
    }

    #[test]
    fn a_lapsed_lease_goes_to_the_next_worker_and_its_old_holder_learns_it() {
        let s = store();
        assert!(hold(&s, 1, Role::Worker, T0));
        // Worker 1 stops ticking (trapped, or stalled).
        assert!(!hold(&s, 2, Role::Worker, T0 + TTL_NANOS - 1));
        assert!(hold(&s, 2, Role::Worker, T0 + TTL_NANOS));
        assert!(!holds(&s, 1, T0 + TTL_NANOS));
        assert!(
            !hold(&s, 1, Role::Worker, T0 + TTL_NANOS + 1),
            "back, but too late"
        );
    }

    #[test]
    fn the_singleton_takes_it_from_a_worker_and_keeps_it() {
        let s = store();
        assert!(hold(&s, 1, Role::Worker, T0));
        assert!(hold(&s, 9, Role::Singleton, T0 + 1));
        assert!(read(&s).unwrap().singleton);
        assert!(
            !hold(&s, 1, Role::Worker, T0 + 2),
            "a worker does not take it back"
        );
        assert!(hold(&s, 9, Role::Singleton, T0 + SEC));
        // A singleton that stops (its VM failed) is replaced by a worker in time, or at
        // once by a new singleton (a reloaded VM).
        assert!(hold(&s, 8, Role::Singleton, T0 + SEC + 1));
        assert!(!hold(&s, 9, Role::Worker, T0 + SEC + 2));
        assert!(hold(&s, 1, Role::Worker, T0 + SEC + 1 + TTL_NANOS));
    }

    #[test]
    fn two_workers_asking_at_once_make_one_holder() {
        let s = store();
        let (_, cas) = s.get(KEY).unwrap();
        // Worker 2 read the same version and writes second: its CAS fails.
        assert!(hold(&s, 1, Role::Worker, T0));
        let stale = Lease {
            holder: 2,
            until: T0 + TTL_NANOS,
            singleton: false,
        };
        assert!(s.set(KEY, &stale.encode(), cas).is_err());
        assert_eq!(read(&s).unwrap().holder, 1);
    }

    #[test]
    fn without_the_entry_or_with_junk_in_it() {
        let s = MemoryStore::default();
        assert!(
            !hold(&s, 1, Role::Worker, T0),
            "init first: never a blind write"
        );
        s.set(KEY, b"junk", 0).unwrap();
        assert!(hold(&s, 1, Role::Worker, T0), "junk is a free lease");
        assert!(!hold(&s, 0, Role::Worker, T0 + TTL_NANOS - 1));
    }
}
