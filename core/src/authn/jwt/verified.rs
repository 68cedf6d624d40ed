//! What a token that passed every check carries: its key's id and algorithm, its claims.

use super::alg::Alg;
use super::claims::{ClaimValue, Claims};

/// A token that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// The `kid` of the key that verified it (the token's own `kid`, when it had one).
    pub kid: Option<String>,
    pub alg: Alg,
    /// Every claim of the payload.
    pub claims: Claims,
    pub sub: Option<String>,
    pub jti: Option<String>,
    /// Where the jti denylist would hold this token's `jti`
    /// ([`crate::authn::revocation::jti_key`], a SHA-256): computed once per token, so a token
    /// served from the cache does not hash its `jti` again on every request.
    pub jti_key: Option<String>,
    /// `iat` and `exp` in whole Unix seconds (a fraction is dropped).
    pub iat: Option<i64>,
    pub exp: Option<i64>,
}

impl Verified {
    /// The claim named `name`.
    pub fn claim(&self, name: &str) -> Option<&ClaimValue> {
        self.claims.get(name)
    }

    /// The claim named `name` when it is a string.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(ClaimValue::as_str)
    }
}
