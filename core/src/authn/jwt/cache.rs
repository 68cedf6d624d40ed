//! Tokens that verified, so a client sending the same token again (the usual case: one
//! token for its whole lifetime) costs a lookup instead of base64, JSON and a signature,
//! as Envoy's `jwt_authn` does (`jwt_cache_config`).

use std::sync::Arc;

use super::claims::{Rules, Times};
use super::verified::Verified;
use crate::worker::secret_cache::SecretCache;

/// Entries per key set (per worker).
pub const CACHE_ENTRIES: usize = 128;
/// The longest token cached, in bytes.
pub const CACHE_MAX_TOKEN: usize = 2048;

type Entry = (Arc<Rules>, Arc<Verified>, Times);

/// One per [`super::KeySet`], in one worker: a new key set starts empty, so a token whose
/// key was withdrawn is verified again, and refused. Keeps the [`Verified`] result and
/// time claims of tokens that passed (never refusals); a hit is checked against the time
/// rules again, so a cached token expires on time, and revocations are checked on every
/// request anyway. An entry remembers the [`Rules`] it passed; other rules miss. Keyed by
/// the exact token text (one token, one spelling), compared in constant time: a token is
/// a bearer secret. Bounded: [`CACHE_ENTRIES`] entries direct-mapped by a hash of the
/// signature, tokens over [`CACHE_MAX_TOKEN`] bytes not cached (at most 128 × 2 KiB per
/// worker); a colliding token replaces the entry, so an attacker can only make others
/// miss ([`crate::worker::secret_cache`]).
#[derive(Clone, Debug)]
pub(crate) struct TokenCache(SecretCache<Entry>);

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache(SecretCache::new(CACHE_ENTRIES, CACHE_MAX_TOKEN))
    }
}

impl TokenCache {
    /// The verified token and its time claims, when `token` passed under `rules` before.
    pub(crate) fn get(&self, token: &[u8], rules: &Rules) -> Option<(Arc<Verified>, Times)> {
        let (passed_under, verified, times) = self.0.get(token)?;
        (*passed_under == *rules).then_some((verified, times))
    }

    /// Remembers a token that passed every check under `rules`.
    pub(crate) fn insert(
        &self,
        token: &[u8],
        rules: &Rules,
        verified: &Arc<Verified>,
        times: Times,
    ) {
        self.0.insert(
            token,
            (Arc::new(rules.clone()), Arc::clone(verified), times),
        );
    }

    pub(crate) fn clear(&self) {
        self.0.clear();
    }
}
