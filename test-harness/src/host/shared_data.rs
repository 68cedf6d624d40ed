//! Envoy's shared data: one key-value store per VM id, readable and writable by every VM
//! (worker) with that id, with compare-and-swap.
//!
//! The CAS protocol, as in proxy-wasm-cpp-host's `SharedData`:
//! - `get(key)` returns the value and the entry's cas; an absent key is `NotFound`.
//! - `set(key, value, cas)`: `cas == 0` writes unconditionally. Otherwise the write happens
//!   only if the entry's current cas equals `cas`, else `CasMismatch`. If the key is absent
//!   the write happens whatever `cas` says (Envoy only compares against an existing entry).
//! - Every successful write gives the entry a fresh cas from one counter shared by all
//!   keys, starting at 1 and skipping 0 on wrap-around, so a cas is never 0 and a reader
//!   cannot confuse "unchanged" with "rewritten with the same value".
//! - There is no delete in ABI 0.2.1.

use std::collections::HashMap;

#[derive(Debug)]
pub(crate) struct SharedData {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

/// `set` refused: the entry changed since the caller read it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CasMismatch;

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            entries: HashMap::new(),
            next_cas: 1,
        }
    }
}

impl SharedData {
    pub(crate) fn get(&self, key: &[u8]) -> Option<(&[u8], u32)> {
        self.entries.get(key).map(|(v, cas)| (v.as_slice(), *cas))
    }

    /// Every key, in no particular order (for tests that bound what the module stores).
    pub(crate) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.keys().map(Vec::as_slice)
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> Result<(), CasMismatch> {
        if let Some((_, current)) = self.entries.get(key)
            && cas != 0
            && cas != *current
        {
            return Err(CasMismatch);
        }
        let new_cas = self.take_cas();
        self.entries.insert(key.to_vec(), (value.to_vec(), new_cas));
        Ok(())
    }

    fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_gets_a_new_cas_from_one_counter() {
        let mut s = SharedData::default();
        assert_eq!(s.set(b"a", b"1", 0), Ok(()));
        assert_eq!(s.set(b"b", b"1", 0), Ok(()));
        assert_eq!(s.get(b"a"), Some((&b"1"[..], 1)));
        assert_eq!(s.get(b"b"), Some((&b"1"[..], 2)));
        assert_eq!(s.set(b"a", b"2", 1), Ok(()));
        assert_eq!(s.get(b"a"), Some((&b"2"[..], 3)));
    }

    #[test]
    fn stale_cas_is_refused_and_leaves_the_value() {
        let mut s = SharedData::default();
        s.set(b"a", b"1", 0).ok();
        s.set(b"a", b"2", 0).ok();
        assert_eq!(s.set(b"a", b"3", 1), Err(CasMismatch));
        assert_eq!(s.get(b"a"), Some((&b"2"[..], 2)));
    }

    #[test]
    fn absent_key_accepts_any_cas() {
        let mut s = SharedData::default();
        assert_eq!(s.set(b"new", b"v", 42), Ok(()));
        assert_eq!(s.get(b"missing"), None);
    }

    #[test]
    fn cas_skips_zero_on_wrap_around() {
        let mut s = SharedData {
            next_cas: u32::MAX,
            ..SharedData::default()
        };
        s.set(b"a", b"1", 0).ok();
        s.set(b"a", b"2", 0).ok();
        assert_eq!(s.get(b"a"), Some((&b"2"[..], 1)));
    }
}
