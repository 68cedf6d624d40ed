//! Test fixtures: the published example keys and tokens of RFC 7515 and RFC 8037, and a
//! minimal token signer that mints the same token on every run. Built for tests and,
//! with the native-only `test-tokens` feature, the harness; never part of the plugin, so
//! it may panic on bad test input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use p256::ecdsa::signature::{RandomizedSigner, SignatureEncoding, Signer as _};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
use rsa::{BigUint, RsaPrivateKey, traits::PublicKeyParts};
use sha2::{Sha256, Sha384, Sha512};

use super::alg::Alg;
use super::b64;
use super::jwk::Key;

/// RFC 7515 A.1: the HS256 key (JWK `k`) and token.
pub const RFC7515_A1_K: &str =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
/// Header `{"typ":"JWT",\r\n "alg":"HS256"}`; payload
/// `{"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true}`.
pub const RFC7515_A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// The `exp` of the A.1–A.3 example payload.
pub const RFC7515_EXP: u64 = 1_300_819_380;
/// The example payload shared by A.1–A.3, encoded.
pub const RFC7515_PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";

/// RFC 7515 A.2: the RSA key.
pub const RFC7515_A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const RFC7515_A2_D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
const RFC7515_A2_P: &str = "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc";
const RFC7515_A2_Q: &str = "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc";
/// RFC 7515 A.2: the RS256 token (header `{"alg":"RS256"}`, the A.1 payload).
pub const RFC7515_A2_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

/// RFC 7515 A.3: the P-256 key (public JWK and private `d`) and ES256 token.
pub const RFC7515_A3_JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
const RFC7515_A3_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
/// Its signature is high-S (s > n/2), which the plugin refuses.
pub const RFC7515_A3_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
/// [`RFC7515_A3_TOKEN`] with `s` replaced by `n - s` ([`ecdsa_twin`]): the same
/// signature spelt low-S, which the plugin accepts.
pub const RFC7515_A3_TOKEN_LOW_S: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmU69fgrc8OPGycO0lD3tat_FoFp57SETepkeks4eL_QfA";

/// The order n of the P-256 group (FIPS 186-4 D.1.2.3), big-endian hex.
pub const P256_ORDER: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
/// The order n of the P-384 group (FIPS 186-4 D.1.2.4), big-endian hex.
pub const P384_ORDER: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";

/// RFC 7515 A.4: the P-521 key and ES512 token (header `{"alg":"ES512"}`, payload
/// `Payload`), which this plugin does not support.
pub const RFC7515_A4_JWK: &str = r#"{"kty":"EC","crv":"P-521","x":"AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk","y":"ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2"}"#;
pub const RFC7515_A4_TOKEN: &str = "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA.AdwMgeerwtHoh-l192l60hp9wAHZFVJbLfD_UxMi70cwnZOYaRI1bKPWROc-mZZqwqT2SI-KGDKB34XO0aw_7XdtAG8GaSwFKdCAPZgoXD2YBJZCPEX3xKpRwcdOO8KpEHwJjyqOgzDO7iKvU8vcnwNrmxYbSW9ERBXukOXolLzeO_Jn";

/// RFC 8037 A.1/A.4: the Ed25519 key and EdDSA JWS (header `{"alg":"EdDSA"}`, payload
/// `Example of Ed25519 signing`: not JSON, so not a JWT).
pub const RFC8037_JWK: &str =
    r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
pub const RFC8037_A4_TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

/// A private key that signs for one algorithm family.
pub enum Signer {
    Hmac(Vec<u8>),
    Rsa(Box<RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

fn unb64(s: &str) -> Vec<u8> {
    b64::decode(s.as_bytes()).unwrap()
}

/// The test secret for an HMAC algorithm: exactly the minimum length.
pub fn hmac_secret(alg: Alg) -> Vec<u8> {
    let len = match alg {
        Alg::HS384 => 48,
        Alg::HS512 => 64,
        _ => 32,
    };
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

pub fn rsa_private() -> RsaPrivateKey {
    let n = BigUint::from_bytes_be(&unb64(RFC7515_A2_N));
    let d = BigUint::from_bytes_be(&unb64(RFC7515_A2_D));
    let p = BigUint::from_bytes_be(&unb64(RFC7515_A2_P));
    let q = BigUint::from_bytes_be(&unb64(RFC7515_A2_Q));
    RsaPrivateKey::from_components(n, BigUint::from(65_537u32), d, vec![p, q]).unwrap()
}

/// The signing key the tests use for `alg`: RFC 7515 A.2's RSA key, A.3's P-256, RFC
/// 8037 A's Ed25519, and a fixed P-384 scalar of our own (no RFC has an ES384 example).
/// RS256 and Ed25519 are deterministic, so signing the RFC inputs reproduces the RFC
/// signatures byte for byte (tested), which pins the signer every other test uses.
pub fn signer(alg: Alg) -> Signer {
    match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => Signer::Hmac(hmac_secret(alg)),
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 => Signer::Rsa(Box::new(rsa_private())),
        Alg::ES256 => {
            Signer::P256(p256::ecdsa::SigningKey::from_slice(&unb64(RFC7515_A3_D)).unwrap())
        }
        Alg::ES384 => Signer::P384(p384::ecdsa::SigningKey::from_slice(&[0x2a; 48]).unwrap()),
        Alg::EdDSA => Signer::Ed25519(ed25519_dalek::SigningKey::from_bytes(
            &unb64(RFC8037_D).try_into().unwrap(),
        )),
    }
}

/// The public JWK (or, for HMAC, `oct` JWK) of the test key for `alg`, with `alg` and
/// `kid` members when given.
pub fn public_jwk(alg: Alg, kid: Option<&str>) -> String {
    let body = match signer(alg) {
        Signer::Hmac(secret) => format!(r#""kty":"oct","k":"{}""#, b64::encode(&secret)),
        Signer::Rsa(k) => format!(
            r#""kty":"RSA","n":"{}","e":"{}""#,
            b64::encode(&k.n().to_bytes_be()),
            b64::encode(&k.e().to_bytes_be())
        ),
        Signer::P256(k) => {
            let p = k.verifying_key().to_encoded_point(false);
            format!(
                r#""kty":"EC","crv":"P-256","x":"{}","y":"{}""#,
                b64::encode(p.x().unwrap()),
                b64::encode(p.y().unwrap())
            )
        }
        Signer::P384(k) => {
            let p = k.verifying_key().to_encoded_point(false);
            format!(
                r#""kty":"EC","crv":"P-384","x":"{}","y":"{}""#,
                b64::encode(p.x().unwrap()),
                b64::encode(p.y().unwrap())
            )
        }
        Signer::Ed25519(k) => format!(
            r#""kty":"OKP","crv":"Ed25519","x":"{}""#,
            b64::encode(k.verifying_key().as_bytes())
        ),
    };
    let kid = kid.map(|k| format!(r#","kid":"{k}""#)).unwrap_or_default();
    format!(r#"{{{body},"alg":"{alg}"{kid}}}"#)
}

/// The verification key for the test key of `alg`, made through the JWK path.
pub fn public_key(alg: Alg, kid: Option<&str>) -> Key {
    Key::from_jwk(public_jwk(alg, kid).as_bytes(), None).unwrap()
}

/// Signs `signing_input` as `alg` with `signer`. The algorithm is the caller's choice,
/// so tests can sign with a key under the wrong algorithm on purpose. ECDSA uses RFC 6979
/// nonces and PSS a seeded salt, so output is the same on every run; ECDSA is normalized
/// to low-S, which the plugin requires and p256/p384 0.13 do not do when signing.
pub fn sign(alg: Alg, signer: &Signer, signing_input: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    match (alg, signer) {
        (Alg::HS256, Signer::Hmac(s)) => Hmac::<Sha256>::new_from_slice(s)
            .unwrap()
            .chain_update(signing_input)
            .finalize()
            .into_bytes()
            .to_vec(),
        (Alg::HS384, Signer::Hmac(s)) => Hmac::<Sha384>::new_from_slice(s)
            .unwrap()
            .chain_update(signing_input)
            .finalize()
            .into_bytes()
            .to_vec(),
        (Alg::HS512, Signer::Hmac(s)) => Hmac::<Sha512>::new_from_slice(s)
            .unwrap()
            .chain_update(signing_input)
            .finalize()
            .into_bytes()
            .to_vec(),
        (Alg::RS256, Signer::Rsa(k)) => rsa::pkcs1v15::SigningKey::<Sha256>::new((**k).clone())
            .sign(signing_input)
            .to_vec(),
        (Alg::RS384, Signer::Rsa(k)) => rsa::pkcs1v15::SigningKey::<Sha384>::new((**k).clone())
            .sign(signing_input)
            .to_vec(),
        (Alg::RS512, Signer::Rsa(k)) => rsa::pkcs1v15::SigningKey::<Sha512>::new((**k).clone())
            .sign(signing_input)
            .to_vec(),
        (Alg::PS256, Signer::Rsa(k)) => {
            // Seeded by the input, so the same token comes out on every run.
            let seed = <Sha256 as sha2::Digest>::digest(signing_input).into();
            let mut rng = ChaCha20Rng::from_seed(seed);
            rsa::pss::SigningKey::<Sha256>::new((**k).clone())
                .sign_with_rng(&mut rng, signing_input)
                .to_vec()
        }
        // The signers leave s as it falls; the plugin only accepts low-S.
        (Alg::ES256, Signer::P256(k)) => {
            let sig: p256::ecdsa::Signature = k.sign(signing_input);
            sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
        }
        (Alg::ES384, Signer::P384(k)) => {
            let sig: p384::ecdsa::Signature = k.sign(signing_input);
            sig.normalize_s().unwrap_or(sig).to_bytes().to_vec()
        }
        (Alg::EdDSA, Signer::Ed25519(k)) => k.sign(signing_input).to_bytes().to_vec(),
        (alg, _) => panic!("the test signer cannot sign {alg} with this key"),
    }
}

/// The order n of the curve behind `alg` (ES256 or ES384).
pub fn ecdsa_order(alg: Alg) -> BigUint {
    let hex = match alg {
        Alg::ES256 => P256_ORDER,
        Alg::ES384 => P384_ORDER,
        _ => panic!("{alg} is not ECDSA"),
    };
    BigUint::parse_bytes(hex.as_bytes(), 16).unwrap()
}

/// The `s` of a JWS ECDSA signature (`r || s`, fixed size) as a number.
pub fn ecdsa_s(sig: &[u8]) -> BigUint {
    BigUint::from_bytes_be(&sig[sig.len() / 2..])
}

/// The other spelling of the JWS ECDSA signature `sig` for `alg`: `(r, n - s)`, which
/// verifies wherever `(r, s)` does. Computed with big integers, not the curve crates, so
/// it does not lean on the code it tests.
pub fn ecdsa_twin(alg: Alg, sig: &[u8]) -> Vec<u8> {
    let half = sig.len() / 2;
    let twin_s = (ecdsa_order(alg) - ecdsa_s(sig)).to_bytes_be();
    let mut out = sig[..half].to_vec();
    out.resize(sig.len() - twin_s.len(), 0);
    out.extend_from_slice(&twin_s);
    out
}

/// `token` with its signature replaced by [`ecdsa_twin`]'s.
pub fn with_ecdsa_twin(alg: Alg, token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let twin = ecdsa_twin(alg, &b64::decode(sig.as_bytes()).unwrap());
    format!("{input}.{}", b64::encode(&twin))
}

/// `BASE64URL(header) '.' BASE64URL(payload)`.
pub fn signing_input(header_json: &str, payload_json: &str) -> String {
    format!(
        "{}.{}",
        b64::encode(header_json.as_bytes()),
        b64::encode(payload_json.as_bytes())
    )
}

/// A complete token: `header_json` and `payload_json` encoded, signed as `alg` with the
/// test key for `key_alg`.
pub fn mint_raw(header_json: &str, payload_json: &str, alg: Alg, key_alg: Alg) -> String {
    let input = signing_input(header_json, payload_json);
    let sig = sign(alg, &signer(key_alg), input.as_bytes());
    format!("{input}.{}", b64::encode(&sig))
}

/// A well-formed token for `alg`, signed with the test key for `alg`.
pub fn mint(alg: Alg, kid: Option<&str>, payload_json: &str) -> String {
    let kid = kid.map(|k| format!(r#","kid":"{k}""#)).unwrap_or_default();
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"{kid}}}"#);
    mint_raw(&header, payload_json, alg, alg)
}
