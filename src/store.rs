//! The two seams between the core and the host: shared data and the clock.
//!
//! In the plugin both are backed by proxy-wasm host calls (Envoy's shared data for this
//! vm_id, shared by every worker; the host's wall clock). In core tests they are the
//! in-memory fakes below. The core never reads `SystemTime::now` (clippy forbids it):
//! time comes from a [`Clock`] so that tests and the harness control it.

use crate::time::UnixNanos;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Why a shared-data write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the entry since it was read; read again and retry.
    CasMismatch,
    /// Any other host failure.
    Failed,
}

/// Envoy's shared data: a byte value and a CAS version per key, no delete.
pub trait SharedStore {
    /// The value and its CAS version, or `None` when absent.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value`; `cas = 0` writes unconditionally, otherwise only if the entry's
    /// version is still `cas`.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// Wall-clock time.
pub trait Clock {
    fn now(&self) -> UnixNanos;
}

/// One reading per decision: the first `now` is read from the wrapped clock (a host call
/// in the module), every later one repeats it, so the parts of one decision agree on the
/// time and a request pays for one clock read at most.
pub struct OnceClock<'a, C: Clock> {
    clock: &'a C,
    at: Cell<Option<UnixNanos>>,
}

impl<'a, C: Clock> OnceClock<'a, C> {
    pub fn new(clock: &'a C) -> Self {
        OnceClock {
            clock,
            at: Cell::new(None),
        }
    }
}

impl<C: Clock> Clock for OnceClock<'_, C> {
    fn now(&self) -> UnixNanos {
        match self.at.get() {
            Some(at) => at,
            None => {
                let at = self.clock.now();
                self.at.set(Some(at));
                at
            }
        }
    }
}

/// An in-memory [`SharedStore`] with Envoy's CAS rules, for core tests.
#[derive(Default)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut entries = self.entries.borrow_mut();
        if let Some((_, current)) = entries.get(key)
            && cas != 0
            && *current != cas
        {
            return Err(StoreError::CasMismatch);
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        entries.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

/// A clock that says what the test sets.
pub struct FixedClock(pub Cell<UnixNanos>);

impl FixedClock {
    pub fn at_secs(secs: u64) -> Self {
        FixedClock(Cell::new(UnixNanos::from_secs(secs)))
    }

    pub fn set_secs(&self, secs: u64) {
        self.0.set(UnixNanos::from_secs(secs));
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixNanos {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_once_clock_reads_its_clock_once() {
        let clock = FixedClock::at_secs(10);
        let once = OnceClock::new(&clock);
        assert_eq!(once.now().secs(), 10);
        clock.set_secs(20);
        assert_eq!(once.now().secs(), 10);
        assert_eq!(OnceClock::new(&clock).now().secs(), 20);
    }

    #[test]
    fn a_stale_cas_is_refused_and_a_fresh_one_accepted() {
        let s = MemoryStore::default();
        s.set("a", b"1", 0).unwrap();
        let (_, cas) = s.get("a").unwrap();
        s.set("a", b"2", cas).unwrap();
        assert_eq!(s.set("a", b"3", cas), Err(StoreError::CasMismatch));
        assert_eq!(s.get("a").unwrap().0, b"2");
    }
}
