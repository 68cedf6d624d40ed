//! A small per-worker memo keyed by a secret (a presented API key, a bearer token), so a
//! client sending the same credential again skips the work. It memoizes only pure
//! functions of the secret; anything that can change (a record, a revocation, the clock)
//! the caller still checks on every request.

use std::sync::Mutex;

/// One entry: the secret and what was derived from it.
type Slot<V> = Option<(Box<[u8]>, V)>;

/// A fixed number of entries, direct-mapped by a hash of the secret's last 16 bytes (a
/// key's random part, a token's signature); secrets over `max_len` are not kept. A hit
/// compares the whole secret in time that depends only on the lengths, so response
/// times never tell how much of a cached credential was guessed. A colliding secret
/// replaces the entry: an attacker can only make others miss, never hit a wrong entry.
/// `Debug` shows the entry count, never a secret; clones start empty and any two caches
/// are equal, so what holds one compares and clones by its content.
pub struct SecretCache<V> {
    // A `Mutex` only so that its holder may sit in a `static` in tests; the module is
    // single threaded and never waits on it.
    entries: Mutex<Vec<Slot<V>>>,
    capacity: usize,
    max_len: usize,
}

impl<V: Clone> SecretCache<V> {
    /// A cache of `capacity` entries for secrets of at most `max_len` bytes.
    pub const fn new(capacity: usize, max_len: usize) -> Self {
        SecretCache {
            entries: Mutex::new(Vec::new()),
            capacity,
            max_len,
        }
    }

    fn slot(&self, secret: &[u8]) -> usize {
        let tail = secret
            .get(secret.len().saturating_sub(16)..)
            .unwrap_or(secret);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in tail {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        usize::try_from(h % self.capacity.max(1) as u64).unwrap_or(0)
    }

    /// What was stored for `secret`, if it is the one stored.
    pub fn get(&self, secret: &[u8]) -> Option<V> {
        let entries = self.entries.try_lock().ok()?;
        let (stored, value) = entries.get(self.slot(secret))?.as_ref()?;
        same(stored, secret).then(|| value.clone())
    }

    /// Remembers `value` for `secret` (not when `secret` is over the length bound).
    pub fn insert(&self, secret: &[u8], value: V) {
        if secret.len() > self.max_len || self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.try_lock() else {
            return;
        };
        if entries.is_empty() {
            entries.resize_with(self.capacity, || None);
        }
        let slot = self.slot(secret);
        if let Some(entry) = entries.get_mut(slot) {
            *entry = Some((secret.into(), value));
        }
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.try_lock() {
            entries.clear();
        }
    }

    /// How many secrets are held.
    /// Entries it can hold (0: it remembers nothing).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries
            .try_lock()
            .map_or(0, |e| e.iter().flatten().count())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Equal texts, in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u64;
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(y.try_into().unwrap_or([0; 8]));
        diff |= x ^ y;
    }
    for (x, y) in ar.iter().zip(br) {
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A copy starts empty: a key set's verified tokens (`authn::jwt`) are not copied with
/// its keys.
impl<V: Clone> Clone for SecretCache<V> {
    fn clone(&self) -> Self {
        SecretCache::new(self.capacity, self.max_len)
    }
}

impl<V> std::fmt::Debug for SecretCache<V> {
    // Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self
            .entries
            .try_lock()
            .map_or(0, |e| e.iter().flatten().count());
        write!(f, "SecretCache({held} held)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_whole_texts() {
        assert!(same(b"", b""));
        assert!(same(b"abcdefghij", b"abcdefghij"));
        assert!(!same(b"abcdefghij", b"abcdefghiX"));
        assert!(!same(b"Xbcdefghij", b"abcdefghij"));
        assert!(!same(b"abc", b"abcd"));
        let long: Vec<u8> = (0..=255).collect();
        let mut other = long.clone();
        other[100] ^= 1;
        assert!(same(&long, &long.clone()));
        assert!(!same(&long, &other));
    }

    #[test]
    fn only_the_exact_secret_hits_and_the_size_is_bounded() {
        let c: SecretCache<u32> = SecretCache::new(8, 32);
        c.insert(b"ghk_secret_one", 1);
        assert_eq!(c.get(b"ghk_secret_one"), Some(1));
        assert_eq!(c.get(b"ghk_secret_onE"), None);
        assert_eq!(c.get(b"ghk_secret_on"), None);
        assert_eq!(c.get(b"ghk_secret_one!"), None);
        for i in 0..100u32 {
            c.insert(format!("k{i}").as_bytes(), i);
        }
        assert!(c.len() <= 8);
        c.insert(&[b'x'; 33], 9);
        assert_eq!(c.get(&[b'x'; 33]), None, "over the length bound");
        assert!(!format!("{c:?}").contains('k'), "{c:?}");
        assert_eq!(c.clone().len(), 0);
        c.clear();
        assert!(c.is_empty());
    }
}
