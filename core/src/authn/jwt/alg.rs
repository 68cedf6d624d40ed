//! The JWS algorithms gatehouse verifies, by their registered names.

use std::fmt;

/// The signature algorithms a key can verify (JWA names, RFC 7518 §3.1; `EdDSA` is
/// Ed25519 only, RFC 8037). Anything else, `none` included, is never accepted: ES512,
/// PS384, PS512 and Ed448 fail with `JwtError::UnsupportedAlg` and are skipped in a JWKS.
/// The key decides the algorithm: each `Key` is made for one `Alg` at configure time and
/// a token's `alg` must equal it (`JwtError::AlgMismatch`), the defence against
/// HS256-signed-with-the-RSA-public-key and `alg: none`.
// The variant names are the registry's spelling, so they read as they do in a token.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    /// Every supported algorithm, in the order error messages list them.
    pub const ALL: [Alg; 10] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The name as it appears in a JOSE header or a JWK.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// Parses a JWA name exactly (names are case-sensitive, RFC 7515 §4.1.1). `none`
    /// and every unsupported name give `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == name)
    }

    pub(super) fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    pub(super) fn is_rsa(self) -> bool {
        matches!(self, Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
