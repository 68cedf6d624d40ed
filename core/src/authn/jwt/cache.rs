//! Tokens that verified, so a client sending the same token again (the usual case: one
//! token for its whole lifetime) costs a lookup instead of base64, JSON and a signature.
//! Envoy's own `jwt_authn` has the same cache (`jwt_cache_config`).
//!
//! - **What is kept**: the [`Verified`] result and the token's time claims, for tokens
//!   that passed every check. A hit is checked against the time rules again (`exp`,
//!   `nbf`, `iat` at the current time), so a cached token expires on time; refusals are
//!   never cached. Revocations (per-user watermark, jti denylist) are not part of
//!   verification: the request path checks them on every request, cached or not.
//! - **Keyed by the exact token text.** One token has one spelling (strict base64url,
//!   canonical signatures), so an equal text is the same signed statement. The text is
//!   compared in constant time: a token is a bearer secret, and the comparison must not
//!   tell an attacker how much of a cached one they guessed.
//! - **Scope**: one cache per [`super::KeySet`], which lives in one worker; a new key
//!   set (a new policy or JWKS) starts empty, so a token whose key was withdrawn is
//!   verified again, and refused. An entry also remembers the [`Rules`] it passed; other
//!   rules miss.
//! - **Bounded**: [`CACHE_ENTRIES`] entries, direct-mapped by a hash of the token's
//!   last bytes (its signature); tokens over [`CACHE_MAX_TOKEN`] bytes are not cached.
//!   At most 128 × 2 KiB of token text per worker. A colliding token replaces the entry:
//!   an attacker with many valid tokens can only make others miss
//!   ([`crate::worker::secret_cache`]).

use std::sync::Arc;

use super::claims::{Rules, Times};
use super::verified::Verified;
use crate::worker::secret_cache::SecretCache;

/// Entries per key set (per worker).
pub const CACHE_ENTRIES: usize = 128;
/// The longest token cached, in bytes.
pub const CACHE_MAX_TOKEN: usize = 2048;

type Entry = (Arc<Rules>, Arc<Verified>, Times);

/// See the module documentation.
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
