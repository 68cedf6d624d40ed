//! Envoy's shared data as the core sees it: one value and CAS version per key, shared by
//! every worker of a vm_id. The plugin backs it with proxy-wasm host calls; core tests
//! use [`MemoryStore`].

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

#[cfg(test)]
mod tests {
    use super::*;

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
