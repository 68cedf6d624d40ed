//! Checks one JWS signature with one key; the key's algorithm decides the check, and the
//! caller has already made sure the token asked for that same algorithm.
//! Why ECDSA must be low-S: `docs/policy.md#writing-a-policy` (JWT checks).

use hmac::Mac;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey, traits::PublicKeyParts};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::alg::Alg;
use super::jwk::{HmacKey, Key, Material};

/// True when `sig` is a valid signature by `key` over `signing_input`
/// (`BASE64URL(header) '.' BASE64URL(payload)`). Only yes or no: why a signature
/// failed is nobody's business but an attacker's. Every check admits one spelling:
///
/// - HMAC (HS256/384/512): recomputed, compared in constant time (`verify_slice`).
/// - RSA PKCS#1 v1.5 (RS256/384/512) and PSS (PS256: SHA-256, MGF1-SHA-256, salt 32,
///   RFC 7518 §3.5): exactly the modulus length and below the modulus.
/// - ECDSA (ES256, ES384): the fixed-size `r || s` (64 or 96 bytes; DER fails by length);
///   high-S refused before checking, since `(r, n - s)` also verifies (RFC 7518 allows
///   it; issuers that do not normalize see about half their tokens refused).
/// - Ed25519: `verify_strict` (small-order keys, non-canonical signatures, RFC 8032 §5.1.7).
///
/// Verify only: `rsa`'s RUSTSEC-2023-0071 timing issue concerns private-key operations,
/// which the plugin never performs; no algorithm needs a random number generator.
/// Signing exists only in tests and behind the native-only `test-tokens` feature.
pub(crate) fn is_valid(key: &Key, signing_input: &[u8], sig: &[u8]) -> bool {
    match key.material() {
        Material::Hmac(mac) => hmac_ok(mac, signing_input, sig),
        Material::Rsa(public) => rsa_ok(public, key.alg(), signing_input, sig),
        // `normalize_s` is `Some` exactly when s > n/2: the verifier would accept that
        // high-S twin, so refuse it here.
        Material::P256(vk) => {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| s.normalize_s().is_none() && vk.verify(signing_input, &s).is_ok())
        }
        Material::P384(vk) => {
            use p384::ecdsa::signature::Verifier;
            p384::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| s.normalize_s().is_none() && vk.verify(signing_input, &s).is_ok())
        }
        Material::Ed25519(vk) => ed25519_dalek::Signature::from_slice(sig)
            .is_ok_and(|s| vk.verify_strict(signing_input, &s).is_ok()),
    }
}

fn hmac_ok(mac: &HmacKey, signing_input: &[u8], sig: &[u8]) -> bool {
    match mac {
        HmacKey::Sha256(m) => m
            .clone()
            .chain_update(signing_input)
            .verify_slice(sig)
            .is_ok(),
        HmacKey::Sha384(m) => m
            .clone()
            .chain_update(signing_input)
            .verify_slice(sig)
            .is_ok(),
        HmacKey::Sha512(m) => m
            .clone()
            .chain_update(signing_input)
            .verify_slice(sig)
            .is_ok(),
    }
}

fn rsa_ok(public: &RsaPublicKey, alg: Alg, signing_input: &[u8], sig: &[u8]) -> bool {
    // The rsa crate reduces a PSS signature modulo n before checking it, so `s` and
    // `s + n` (same length) would both pass; refuse anything not below n.
    if sig.len() != public.size() || BigUint::from_bytes_be(sig) >= *public.n() {
        return false;
    }
    let result = match alg {
        Alg::RS256 => public.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(signing_input),
            sig,
        ),
        Alg::RS384 => public.verify(
            Pkcs1v15Sign::new::<Sha384>(),
            &Sha384::digest(signing_input),
            sig,
        ),
        Alg::RS512 => public.verify(
            Pkcs1v15Sign::new::<Sha512>(),
            &Sha512::digest(signing_input),
            sig,
        ),
        // Pss::new uses the digest's output length as the salt length, which PS256
        // requires, and refuses any other.
        Alg::PS256 => public.verify(Pss::new::<Sha256>(), &Sha256::digest(signing_input), sig),
        _ => return false,
    };
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::jwt::test_tokens::{
        ecdsa_order, ecdsa_s, ecdsa_twin, public_key, sign, signer,
    };

    const INPUT: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ";

    /// A signature over [`INPUT`] by the test key of `alg`, and that key.
    fn signed(alg: Alg) -> (Key, Vec<u8>) {
        (public_key(alg, None), sign(alg, &signer(alg), INPUT))
    }

    #[test]
    fn a_low_s_ecdsa_signature_verifies_for_es256_and_es384() {
        for alg in [Alg::ES256, Alg::ES384] {
            let (key, sig) = signed(alg);
            assert!(ecdsa_s(&sig) <= ecdsa_order(alg) / 2u32, "{alg}");
            assert!(is_valid(&key, INPUT, &sig), "{alg}");
        }
    }

    #[test]
    fn the_high_s_twin_of_a_valid_ecdsa_signature_is_refused_for_es256_and_es384() {
        for alg in [Alg::ES256, Alg::ES384] {
            let (key, sig) = signed(alg);
            let twin = ecdsa_twin(alg, &sig);
            assert_ne!(twin, sig, "{alg}");
            assert!(ecdsa_s(&twin) > ecdsa_order(alg) / 2u32, "{alg}");
            assert!(!is_valid(&key, INPUT, &twin), "{alg}");
        }
    }

    #[test]
    fn the_curve_crates_alone_would_accept_the_high_s_twin() {
        // Without the check in `is_valid`, the twin is a second valid spelling: this is
        // what the refusal above guards against, not a signature that fails anyway.
        use p256::ecdsa::signature::Verifier;
        let (_, sig) = signed(Alg::ES256);
        let twin = p256::ecdsa::Signature::from_slice(&ecdsa_twin(Alg::ES256, &sig)).unwrap();
        let key = public_key(Alg::ES256, None);
        let Material::P256(vk) = key.material() else {
            unreachable!()
        };
        assert!(vk.verify(INPUT, &twin).is_ok());

        let (_, sig) = signed(Alg::ES384);
        let twin = p384::ecdsa::Signature::from_slice(&ecdsa_twin(Alg::ES384, &sig)).unwrap();
        let key = public_key(Alg::ES384, None);
        let Material::P384(vk) = key.material() else {
            unreachable!()
        };
        assert!(vk.verify(INPUT, &twin).is_ok());
    }
}
