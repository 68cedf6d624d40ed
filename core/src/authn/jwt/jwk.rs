//! Verification keys: HMAC secrets from raw bytes, public keys from JWK (RFC 7517/7518,
//! RFC 8037 for Ed25519), whole key sets from a JWKS document, each parsed and checked
//! once at configure time (or when a JWKS is refetched), never on the request path.

use std::fmt;

use hmac::{Hmac, Mac};
use rsa::{BigUint, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

use super::b64;

use super::alg::Alg;

/// An HMAC key with its keyed state precomputed: a clone per token skips hashing the
/// padded key twice on the request path.
#[derive(Clone)]
pub(crate) enum HmacKey {
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

/// The key itself, in the form its algorithm verifies with.
#[derive(Clone)]
pub(crate) enum Material {
    // Boxed: an HMAC-SHA-512 state is 400 bytes, five times any other key.
    Hmac(Box<HmacKey>),
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// One verification key. Made only through [`Key::hmac`] and [`Key::from_jwk`], which
/// guarantee that the material fits the algorithm: parsed once when the policy or JWKS
/// loads (RSA moduli 2048..=4096 bits, EC points on the curve, HMAC secrets at least the
/// hash length, HMAC state precomputed), never per token.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    alg: Alg,
    material: Material,
}

impl fmt::Debug for Key {
    // Never the material: an HMAC secret must not reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a key (or a whole JWKS document) was refused. Messages name the JWK member and
/// what was expected, never the key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwkError {
    /// The document is not JSON.
    NotJson,
    /// A JWK must be a JSON object.
    NotAnObject,
    /// A JWKS must be an object with a `keys` array.
    NotAJwks,
    /// A required member is absent.
    MissingParam(&'static str),
    /// A member has the wrong type, is not base64url, has the wrong length, or (for
    /// EC and OKP) is not a point on the curve.
    BadParam(&'static str),
    /// `kty` is not `RSA`, `EC`, `OKP` or (outside a JWKS) `oct`.
    UnsupportedKty,
    /// `crv` is not `P-256`, `P-384` or `Ed25519`.
    UnsupportedCurve,
    /// `alg` names an algorithm this plugin does not verify.
    UnsupportedAlg,
    /// `alg` (or the policy's default algorithm) does not fit the key type or curve.
    AlgKtyMismatch,
    /// An RSA or `oct` key without `alg`, and the policy named no algorithm for it.
    AlgRequired,
    /// `use` is not `sig`, or `key_ops` lacks `verify`.
    NotForSignatures,
    /// An `oct` (shared secret) key inside a JWKS.
    SymmetricKeyInJwks,
    /// RSA modulus under 2048 bits, or an HMAC secret shorter than its hash.
    WeakKey,
    /// RSA modulus over 4096 bits.
    KeyTooLarge,
    /// More keys than [`MAX_JWKS_KEYS`]; the rest were not read.
    TooManyKeys,
}

impl fmt::Display for JwkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwkError::NotJson => f.write_str("the key document is not valid JSON"),
            JwkError::NotAnObject => f.write_str("a JWK must be a JSON object"),
            JwkError::NotAJwks => f.write_str("a JWKS must be a JSON object with a `keys` array"),
            JwkError::MissingParam(name) => write!(f, "the JWK has no `{name}`"),
            JwkError::BadParam(name) => write!(f, "the JWK's `{name}` is not valid"),
            JwkError::UnsupportedKty => {
                f.write_str("unsupported `kty`; expected one of [RSA, EC, OKP, oct]")
            }
            JwkError::UnsupportedCurve => {
                f.write_str("unsupported `crv`; expected one of [P-256, P-384, Ed25519]")
            }
            JwkError::UnsupportedAlg => f.write_str(
                "unsupported `alg`; expected one of \
                 [HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA]",
            ),
            JwkError::AlgKtyMismatch => f.write_str("the `alg` does not fit the key's `kty`/`crv`"),
            JwkError::AlgRequired => f.write_str(
                "the JWK has no `alg` and the policy names none for it \
                 (RSA: one of [RS256, RS384, RS512, PS256]; oct: one of [HS256, HS384, HS512])",
            ),
            JwkError::NotForSignatures => {
                f.write_str("the JWK is not a signature key (`use` is not `sig`)")
            }
            JwkError::SymmetricKeyInJwks => {
                f.write_str("a JWKS must not publish `oct` (shared secret) keys")
            }
            JwkError::WeakKey => f.write_str(
                "the key is too short (RSA needs 2048 bits or more; an HMAC secret \
                 at least as many bytes as its hash)",
            ),
            JwkError::KeyTooLarge => f.write_str("the RSA modulus is over 4096 bits"),
            JwkError::TooManyKeys => write!(f, "the JWKS has more than {MAX_JWKS_KEYS} keys"),
        }
    }
}

impl std::error::Error for JwkError {}

/// The most keys read from one JWKS. Real key sets hold a handful; the bound keeps a
/// hostile or broken endpoint from costing unbounded configure-time work.
pub const MAX_JWKS_KEYS: usize = 64;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

impl Key {
    /// An HMAC key from a raw secret (the policy reads it from an environment variable).
    /// The secret must be at least as long as the hash (32, 48 or 64 bytes).
    pub fn hmac(alg: Alg, secret: &[u8], kid: Option<String>) -> Result<Key, JwkError> {
        let min_len = match alg {
            Alg::HS256 => 32,
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => return Err(JwkError::AlgKtyMismatch),
        };
        if secret.len() < min_len {
            return Err(JwkError::WeakKey);
        }
        let bad = |_| JwkError::BadParam("k");
        let mac = match alg {
            Alg::HS384 => HmacKey::Sha384(Hmac::new_from_slice(secret).map_err(bad)?),
            Alg::HS512 => HmacKey::Sha512(Hmac::new_from_slice(secret).map_err(bad)?),
            _ => HmacKey::Sha256(Hmac::new_from_slice(secret).map_err(bad)?),
        };
        Ok(Key {
            kid,
            alg,
            material: Material::Hmac(Box::new(mac)),
        })
    }

    /// A key from one JWK. Refused: RSA moduli under 2048 bits (RFC 7518 §3.3) or over
    /// 4096 (bounds one token's work); `oct` keys in a JWKS (a published HMAC secret lets
    /// anyone mint tokens; HMAC secrets come from the environment); keys for something
    /// other than signatures (`use` not `sig`, `key_ops` without `verify`). `default_alg` is the algorithm the policy names for a JWK
    /// without `alg`; it is needed for `RSA` and `oct` keys (which could be used with
    /// several), ignored for `EC` (the curve decides) and `OKP` (always `EdDSA`).
    pub fn from_jwk(json: &[u8], default_alg: Option<Alg>) -> Result<Key, JwkError> {
        let value: Value = serde_json::from_slice(json).map_err(|_| JwkError::NotJson)?;
        let obj = value.as_object().ok_or(JwkError::NotAnObject)?;
        Key::from_jwk_object(obj, default_alg, true)
    }

    fn from_jwk_object(
        jwk: &Map<String, Value>,
        default_alg: Option<Alg>,
        allow_oct: bool,
    ) -> Result<Key, JwkError> {
        let kty = str_param(jwk, "kty")?.ok_or(JwkError::MissingParam("kty"))?;
        let kid = str_param(jwk, "kid")?.map(str::to_owned);
        if let Some(usage) = str_param(jwk, "use")?
            && usage != "sig"
        {
            return Err(JwkError::NotForSignatures);
        }
        if let Some(ops) = jwk.get("key_ops") {
            let ops = ops.as_array().ok_or(JwkError::BadParam("key_ops"))?;
            if !ops.iter().any(|op| op.as_str() == Some("verify")) {
                return Err(JwkError::NotForSignatures);
            }
        }
        let named_alg = match str_param(jwk, "alg")? {
            Some(name) => Some(Alg::from_name(name).ok_or(JwkError::UnsupportedAlg)?),
            None => None,
        };
        match kty {
            "RSA" => {
                let alg = named_alg.or(default_alg).ok_or(JwkError::AlgRequired)?;
                if !alg.is_rsa() {
                    return Err(JwkError::AlgKtyMismatch);
                }
                let n = BigUint::from_bytes_be(&b64_param(jwk, "n")?);
                let e = BigUint::from_bytes_be(&b64_param(jwk, "e")?);
                let bits = n.bits();
                if bits < MIN_RSA_BITS {
                    return Err(JwkError::WeakKey);
                }
                if bits > MAX_RSA_BITS {
                    return Err(JwkError::KeyTooLarge);
                }
                // Checks the exponent (odd, 2 < e < 2^33) and the modulus size again.
                let key = RsaPublicKey::new(n, e).map_err(|_| JwkError::BadParam("e"))?;
                Ok(Key {
                    kid,
                    alg,
                    material: Material::Rsa(key),
                })
            }
            "EC" => {
                let crv = str_param(jwk, "crv")?.ok_or(JwkError::MissingParam("crv"))?;
                let (alg, coord_len) = match crv {
                    "P-256" => (Alg::ES256, 32),
                    "P-384" => (Alg::ES384, 48),
                    _ => return Err(JwkError::UnsupportedCurve),
                };
                if named_alg.is_some_and(|a| a != alg) {
                    return Err(JwkError::AlgKtyMismatch);
                }
                let x = b64_param(jwk, "x")?;
                let y = b64_param(jwk, "y")?;
                // RFC 7518 §6.2.1.2: each coordinate is the full field size, no more, no
                // less; a shorter one is a broken encoder, not a smaller number.
                if x.len() != coord_len {
                    return Err(JwkError::BadParam("x"));
                }
                if y.len() != coord_len {
                    return Err(JwkError::BadParam("y"));
                }
                let mut sec1 = Vec::with_capacity(1 + 2 * coord_len);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                // from_sec1_bytes refuses points off the curve and the identity.
                let material = if alg == Alg::ES256 {
                    Material::P256(
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                            .map_err(|_| JwkError::BadParam("x/y"))?,
                    )
                } else {
                    Material::P384(
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                            .map_err(|_| JwkError::BadParam("x/y"))?,
                    )
                };
                Ok(Key { kid, alg, material })
            }
            "OKP" => {
                let crv = str_param(jwk, "crv")?.ok_or(JwkError::MissingParam("crv"))?;
                if crv != "Ed25519" {
                    return Err(JwkError::UnsupportedCurve);
                }
                if named_alg.is_some_and(|a| a != Alg::EdDSA) {
                    return Err(JwkError::AlgKtyMismatch);
                }
                let x: [u8; 32] = b64_param(jwk, "x")?
                    .try_into()
                    .map_err(|_| JwkError::BadParam("x"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| JwkError::BadParam("x"))?;
                Ok(Key {
                    kid,
                    alg: Alg::EdDSA,
                    material: Material::Ed25519(key),
                })
            }
            "oct" if allow_oct => {
                let alg = named_alg.or(default_alg).ok_or(JwkError::AlgRequired)?;
                if !alg.is_hmac() {
                    return Err(JwkError::AlgKtyMismatch);
                }
                Key::hmac(alg, &b64_param(jwk, "k")?, kid)
            }
            "oct" => Err(JwkError::SymmetricKeyInJwks),
            _ => Err(JwkError::UnsupportedKty),
        }
    }

    /// The key id tokens name it by, if it has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub(crate) fn material(&self) -> &Material {
        &self.material
    }
}

fn str_param<'a>(
    jwk: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwkError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwkError::BadParam(name)),
    }
}

fn b64_param(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    let text = str_param(jwk, name)?.ok_or(JwkError::MissingParam(name))?;
    let bytes = b64::decode(text.as_bytes()).map_err(|_| JwkError::BadParam(name))?;
    if bytes.is_empty() {
        return Err(JwkError::BadParam(name));
    }
    Ok(bytes)
}

/// A JWK from a JWKS that was not used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the `keys` array.
    pub index: usize,
    /// Its `kid`, when it had a readable one.
    pub kid: Option<String>,
    pub reason: JwkError,
}

/// The usable keys of a JWKS document and the ones skipped.
#[derive(Clone, Debug)]
pub struct Jwks {
    pub keys: Vec<Key>,
    pub skipped: Vec<SkippedKey>,
}

/// Reads a JWKS document (`{"keys": [...]}`, RFC 7517 §5). Fails only when the document
/// itself is unusable; each key that cannot be used is skipped and reported (for the
/// caller to log), so one bad key never makes a whole JWKS unusable.
/// `default_rsa_alg` is the algorithm for RSA keys without `alg` (see [`Key::from_jwk`]).
pub fn parse_jwks(json: &[u8], default_rsa_alg: Option<Alg>) -> Result<Jwks, JwkError> {
    let value: Value = serde_json::from_slice(json).map_err(|_| JwkError::NotJson)?;
    let entries = value
        .as_object()
        .and_then(|o| o.get("keys"))
        .and_then(Value::as_array)
        .ok_or(JwkError::NotAJwks)?;
    let mut out = Jwks {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (index, entry) in entries.iter().enumerate() {
        let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
        if index >= MAX_JWKS_KEYS {
            out.skipped.push(SkippedKey {
                index,
                kid,
                reason: JwkError::TooManyKeys,
            });
            continue;
        }
        let parsed = match entry.as_object() {
            Some(obj) => Key::from_jwk_object(obj, default_rsa_alg, false),
            None => Err(JwkError::NotAnObject),
        };
        match parsed {
            Ok(key) => out.keys.push(key),
            Err(reason) => out.skipped.push(SkippedKey { index, kid, reason }),
        }
    }
    Ok(out)
}

/// The keys one route verifies tokens with, and the tokens they verified lately
/// ([`super::verify_cached`]). A new set (a new policy, a new JWKS) starts with an empty
/// cache, so a token whose key left the set is checked again in full, and refused.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    cache: super::cache::TokenCache,
}

impl KeySet {
    pub fn new(keys: Vec<Key>) -> KeySet {
        KeySet {
            keys,
            cache: Default::default(),
        }
    }

    pub(crate) fn cache(&self) -> &super::cache::TokenCache {
        &self.cache
    }

    pub fn push(&mut self, key: Key) {
        self.keys.push(key);
        self.cache.clear();
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl From<Vec<Key>> for KeySet {
    fn from(keys: Vec<Key>) -> KeySet {
        KeySet::new(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC7515_A3_EC: &str = r#"{"kty":"EC","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    const RFC8037_OKP: &str =
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    const RFC7515_A4_P521: &str = r#"{"kty":"EC","crv":"P-521",
        "x":"AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk",
        "y":"ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2"}"#;

    fn rsa_jwk(extra: &str) -> String {
        format!(
            r#"{{"kty":"RSA","n":"{}","e":"AQAB"{extra}}}"#,
            super::super::test_tokens::RFC7515_A2_N
        )
    }

    #[test]
    fn alg_names_round_trip_and_none_is_not_an_alg() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.as_str()), Some(alg));
        }
        for name in ["none", "None", "hs256", "ES512", "PS384", "RSA-OAEP", ""] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn ec_and_okp_keys_take_their_alg_from_the_curve() {
        let ec = Key::from_jwk(RFC7515_A3_EC.as_bytes(), None).unwrap();
        assert_eq!(ec.alg(), Alg::ES256);
        let ed = Key::from_jwk(RFC8037_OKP.as_bytes(), None).unwrap();
        assert_eq!(ed.alg(), Alg::EdDSA);
    }

    #[test]
    fn an_rsa_key_without_alg_needs_the_policy_to_name_one() {
        assert_eq!(
            Key::from_jwk(rsa_jwk("").as_bytes(), None).unwrap_err(),
            JwkError::AlgRequired
        );
        let key = Key::from_jwk(rsa_jwk("").as_bytes(), Some(Alg::PS256)).unwrap();
        assert_eq!(key.alg(), Alg::PS256);
        assert_eq!(
            Key::from_jwk(rsa_jwk("").as_bytes(), Some(Alg::ES256)).unwrap_err(),
            JwkError::AlgKtyMismatch
        );
        // The JWK's own alg wins over the policy default.
        let key = Key::from_jwk(rsa_jwk(r#","alg":"RS512""#).as_bytes(), Some(Alg::RS256)).unwrap();
        assert_eq!(key.alg(), Alg::RS512);
    }

    #[test]
    fn a_jwk_alg_must_fit_its_kty_and_curve() {
        let cases = [
            (rsa_jwk(r#","alg":"ES256""#), JwkError::AlgKtyMismatch),
            (rsa_jwk(r#","alg":"HS256""#), JwkError::AlgKtyMismatch),
            (
                RFC7515_A3_EC.replace("\"kty\"", "\"alg\":\"ES384\",\"kty\""),
                JwkError::AlgKtyMismatch,
            ),
            (
                RFC7515_A3_EC.replace("\"kty\"", "\"alg\":\"RS256\",\"kty\""),
                JwkError::AlgKtyMismatch,
            ),
            (
                RFC8037_OKP.replace("\"kty\"", "\"alg\":\"ES256\",\"kty\""),
                JwkError::AlgKtyMismatch,
            ),
            (rsa_jwk(r#","alg":"none""#), JwkError::UnsupportedAlg),
            (rsa_jwk(r#","alg":"PS512""#), JwkError::UnsupportedAlg),
        ];
        for (jwk, want) in cases {
            assert_eq!(
                Key::from_jwk(jwk.as_bytes(), None).unwrap_err(),
                want,
                "{jwk}"
            );
        }
    }

    #[test]
    fn refuses_keys_that_are_not_for_signatures() {
        for extra in [r#","use":"enc""#, r#","key_ops":["encrypt"]"#] {
            assert_eq!(
                Key::from_jwk(rsa_jwk(extra).as_bytes(), Some(Alg::RS256)).unwrap_err(),
                JwkError::NotForSignatures
            );
        }
        assert!(
            Key::from_jwk(
                rsa_jwk(r#","use":"sig","key_ops":["verify"]"#).as_bytes(),
                Some(Alg::RS256)
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_short_rsa_moduli_and_short_hmac_secrets() {
        // A 1024-bit modulus: 128 bytes with the top bit set.
        let mut n = vec![0xc5u8; 128];
        n[127] = 0x01;
        let jwk = format!(
            r#"{{"kty":"RSA","alg":"RS256","n":"{}","e":"AQAB"}}"#,
            b64::encode(&n)
        );
        assert_eq!(
            Key::from_jwk(jwk.as_bytes(), None).unwrap_err(),
            JwkError::WeakKey
        );
        let n = vec![0xc5u8; 513];
        let jwk = format!(
            r#"{{"kty":"RSA","alg":"RS256","n":"{}","e":"AQAB"}}"#,
            b64::encode(&n)
        );
        assert_eq!(
            Key::from_jwk(jwk.as_bytes(), None).unwrap_err(),
            JwkError::KeyTooLarge
        );

        assert_eq!(
            Key::hmac(Alg::HS256, &[7; 31], None).unwrap_err(),
            JwkError::WeakKey
        );
        assert!(Key::hmac(Alg::HS256, &[7; 32], None).is_ok());
        assert_eq!(
            Key::hmac(Alg::HS512, &[7; 63], None).unwrap_err(),
            JwkError::WeakKey
        );
        assert_eq!(
            Key::hmac(Alg::RS256, &[7; 64], None).unwrap_err(),
            JwkError::AlgKtyMismatch
        );
    }

    #[test]
    fn refuses_points_off_the_curve_and_short_coordinates() {
        // y of the RFC key plus one: no longer on P-256.
        let off_curve = RFC7515_A3_EC.replace("I5a0", "I5a4");
        assert_eq!(
            Key::from_jwk(off_curve.as_bytes(), None).unwrap_err(),
            JwkError::BadParam("x/y")
        );
        let short = format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
            b64::encode(&[1; 31]),
            b64::encode(&[1; 32])
        );
        assert_eq!(
            Key::from_jwk(short.as_bytes(), None).unwrap_err(),
            JwkError::BadParam("x")
        );
    }

    #[test]
    fn a_jwks_keeps_the_usable_keys_and_reports_the_rest() {
        let doc = format!(
            r#"{{"keys":[
                {},
                {},
                {},
                {{"kty":"oct","alg":"HS256","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}},
                {{"kty":"EC","crv":"P-256","kid":"bad","x":"%%%","y":"AA"}},
                "not a key",
                {}
            ]}}"#,
            RFC7515_A3_EC.replace("\"kty\"", "\"kid\":\"ec\",\"kty\""),
            RFC7515_A4_P521.replace("\"kty\"", "\"kid\":\"p521\",\"kty\""),
            RFC8037_OKP,
            rsa_jwk(r#","kid":"rsa""#),
        );
        let jwks = parse_jwks(doc.as_bytes(), Some(Alg::RS256)).unwrap();
        let kept: Vec<_> = jwks.keys.iter().map(|k| (k.kid(), k.alg())).collect();
        assert_eq!(
            kept,
            [
                (Some("ec"), Alg::ES256),
                (None, Alg::EdDSA),
                (Some("rsa"), Alg::RS256)
            ]
        );
        let skipped: Vec<_> = jwks
            .skipped
            .iter()
            .map(|s| (s.index, s.kid.as_deref(), s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                (1, Some("p521"), JwkError::UnsupportedCurve),
                (3, None, JwkError::SymmetricKeyInJwks),
                (4, Some("bad"), JwkError::BadParam("x")),
                (5, None, JwkError::NotAnObject),
            ]
        );
    }

    #[test]
    fn a_document_that_is_not_a_jwks_fails_whole() {
        assert_eq!(parse_jwks(b"{", None).unwrap_err(), JwkError::NotJson);
        assert_eq!(parse_jwks(b"[]", None).unwrap_err(), JwkError::NotAJwks);
        assert_eq!(
            parse_jwks(br#"{"keys":{}}"#, None).unwrap_err(),
            JwkError::NotAJwks
        );
        assert!(parse_jwks(br#"{"keys":[]}"#, None).unwrap().keys.is_empty());
    }

    #[test]
    fn a_jwks_reads_at_most_max_keys() {
        let one = RFC8037_OKP;
        let doc = format!(r#"{{"keys":[{}]}}"#, vec![one; MAX_JWKS_KEYS + 2].join(","));
        let jwks = parse_jwks(doc.as_bytes(), None).unwrap();
        assert_eq!(jwks.keys.len(), MAX_JWKS_KEYS);
        assert_eq!(jwks.skipped.len(), 2);
        assert!(
            jwks.skipped
                .iter()
                .all(|s| s.reason == JwkError::TooManyKeys)
        );
    }

    #[test]
    fn debug_and_errors_never_show_key_material() {
        let key = Key::hmac(
            Alg::HS256,
            b"0123456789abcdef0123456789abcdef",
            Some("k1".into()),
        )
        .unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("0123456789"), "{shown}");
        assert!(shown.contains("k1") && shown.contains("HS256"));
    }
}
