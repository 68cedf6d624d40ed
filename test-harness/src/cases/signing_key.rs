//! The private keys a case file's `tokens:` sign with: an HMAC secret (from the file's
//! `env:`), a key file (PEM or private JWK), or one of the published test keys that
//! `gatehouse_core::authn::jwt::test_tokens` holds.
//!
//! Every key is checked against the recipe's `alg` when the file is read, so minting
//! never meets a key it cannot use (`test_tokens::sign` panics on one). Messages name the
//! file or the variable, never key material.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens::{self, Signer};
use p256::pkcs8::DecodePrivateKey as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPrivateKey};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The published keys a recipe may name with `test_key:`, each with the algorithm family
/// it signs for (the one [`test_tokens::signer`] returns it for) and what it is.
pub const BUILT_IN: [(&str, Alg, &str); 4] = [
    ("rfc7515-a2", Alg::RS256, "RFC 7515 A.2's 2048-bit RSA key"),
    ("rfc7515-a3", Alg::ES256, "RFC 7515 A.3's P-256 key"),
    ("rfc8037-a1", Alg::EdDSA, "RFC 8037 A.1's Ed25519 key"),
    (
        "gatehouse-p384",
        Alg::ES384,
        "gatehouse's fixed P-384 test key",
    ),
];

/// The plugin's bounds on RSA keys (`src/jwt/jwk.rs`): a smaller key would mint tokens
/// the plugin refuses whatever the case says.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// A key that signs for one algorithm family. `Debug` never shows it.
#[derive(Clone)]
pub struct PrivateKey(Arc<Signer>);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, <redacted>)", family(&self.0))
    }
}

impl PrivateKey {
    /// An HMAC key from its secret; `alg` must be HS256, HS384 or HS512. `var` names
    /// where the secret came from, for the message (which never shows the secret).
    pub fn hmac(alg: Alg, secret: Vec<u8>, var: &str) -> Result<PrivateKey, String> {
        Self::checked(alg, Signer::Hmac(secret)).map_err(|why| format!("secret_env '{var}': {why}"))
    }

    /// One of [`BUILT_IN`], by name.
    pub fn built_in(alg: Alg, name: &str) -> Result<PrivateKey, String> {
        let Some((_, family_alg, _)) = BUILT_IN.iter().find(|(n, _, _)| *n == name) else {
            let names: Vec<&str> = BUILT_IN.iter().map(|(n, _, _)| *n).collect();
            return Err(format!(
                "unknown test_key '{name}'; expected one of [{}]",
                names.join(", ")
            ));
        };
        Self::checked(alg, test_tokens::signer(*family_alg))
            .map_err(|why| format!("test_key '{name}': {why}"))
    }

    /// A private key file: PEM (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, SEC1
    /// `EC PRIVATE KEY`) or a private JWK (JSON with `d`).
    pub fn from_file(alg: Alg, path: &Path) -> Result<PrivateKey, String> {
        let at = |why: String| format!("key_file {}: {why}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        Self::checked(alg, parse_key(&text).map_err(at)?).map_err(at)
    }

    fn checked(alg: Alg, signer: Signer) -> Result<PrivateKey, String> {
        if !fits(alg, &signer) {
            return Err(format!(
                "{} cannot sign {alg}; {alg} needs {}",
                family(&signer),
                needs(alg)
            ));
        }
        if let Signer::Rsa(k) = &signer {
            let bits = k.size() * 8;
            if !RSA_BITS.contains(&bits) {
                return Err(format!(
                    "a {bits}-bit RSA key; the plugin takes {} to {} bits",
                    RSA_BITS.start(),
                    RSA_BITS.end()
                ));
            }
        }
        Ok(PrivateKey(Arc::new(signer)))
    }

    pub fn signer(&self) -> &Signer {
        &self.0
    }
}

fn fits(alg: Alg, signer: &Signer) -> bool {
    matches!(
        (alg, signer),
        (Alg::HS256 | Alg::HS384 | Alg::HS512, Signer::Hmac(_))
            | (
                Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256,
                Signer::Rsa(_)
            )
            | (Alg::ES256, Signer::P256(_))
            | (Alg::ES384, Signer::P384(_))
            | (Alg::EdDSA, Signer::Ed25519(_))
    )
}

fn family(signer: &Signer) -> &'static str {
    match signer {
        Signer::Hmac(_) => "an HMAC secret",
        Signer::Rsa(_) => "an RSA key",
        Signer::P256(_) => "a P-256 key",
        Signer::P384(_) => "a P-384 key",
        Signer::Ed25519(_) => "an Ed25519 key",
    }
}

fn needs(alg: Alg) -> &'static str {
    match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => "`secret_env` (an HMAC secret)",
        Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 => "an RSA key",
        Alg::ES256 => "a P-256 key",
        Alg::ES384 => "a P-384 key",
        Alg::EdDSA => "an Ed25519 key",
    }
}

/// The PEM block labelled `label` in `text`, boundaries included (a file may hold others,
/// as `openssl ecparam -genkey` writes `EC PARAMETERS` first).
fn pem_block<'t>(text: &'t str, label: &str) -> Option<&'t str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = start + text.get(start..)?.find(&end)? + end.len();
    text.get(start..stop)
}

fn parse_key(text: &str) -> Result<Signer, String> {
    if text.trim_start().starts_with('{') {
        return private_jwk(text);
    }
    if pem_block(text, "ENCRYPTED PRIVATE KEY").is_some() {
        return Err("the key is encrypted; give a test key unencrypted".into());
    }
    if let Some(pem) = pem_block(text, "RSA PRIVATE KEY") {
        return RsaPrivateKey::from_pkcs1_pem(pem)
            .map(|k| Signer::Rsa(Box::new(k)))
            .map_err(|_| "the RSA PRIVATE KEY block does not decode (PKCS#1)".into());
    }
    if let Some(pem) = pem_block(text, "EC PRIVATE KEY") {
        if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(Signer::P256(k.into()));
        }
        return p384::SecretKey::from_sec1_pem(pem)
            .map(|k| Signer::P384(k.into()))
            .map_err(|_| "the EC PRIVATE KEY block is not a P-256 or P-384 key (SEC1)".into());
    }
    if let Some(pem) = pem_block(text, "PRIVATE KEY") {
        if let Ok(k) = RsaPrivateKey::from_pkcs8_pem(pem) {
            return Ok(Signer::Rsa(Box::new(k)));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Signer::P256(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Signer::P384(k));
        }
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Signer::Ed25519(k));
        }
        return Err(
            "the PRIVATE KEY block is not an RSA, P-256, P-384 or Ed25519 key (PKCS#8)".into(),
        );
    }
    Err("not a private key: expected PEM (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) or a private JWK".into())
}

/// A private JWK: `RSA` with `n`, `e`, `d` (and `p`, `q` when given), `EC` on P-256 or
/// P-384 with `d`, `OKP` on Ed25519 with `d`.
fn private_jwk(text: &str) -> Result<Signer, String> {
    let jwk: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the JWK is not JSON ({e})"))?;
    let member = |name: &str| -> Result<Vec<u8>, String> {
        let text = jwk
            .get(name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("the JWK has no '{name}' (a private JWK needs it)"))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("the JWK's '{name}' is not base64url"))
    };
    let kty = jwk.get("kty").and_then(serde_json::Value::as_str);
    let crv = jwk.get("crv").and_then(serde_json::Value::as_str);
    match (kty, crv) {
        (Some("RSA"), _) => {
            let big = |name: &str| member(name).map(|b| BigUint::from_bytes_be(&b));
            let primes = match (jwk.get("p"), jwk.get("q")) {
                (Some(_), Some(_)) => vec![big("p")?, big("q")?],
                _ => Vec::new(),
            };
            RsaPrivateKey::from_components(big("n")?, big("e")?, big("d")?, primes)
                .map(|k| Signer::Rsa(Box::new(k)))
                .map_err(|_| "the JWK's RSA parameters do not make a valid key".into())
        }
        (Some("EC"), Some("P-256")) => p256::ecdsa::SigningKey::from_slice(&member("d")?)
            .map(Signer::P256)
            .map_err(|_| "the JWK's 'd' is not a P-256 private key".into()),
        (Some("EC"), Some("P-384")) => p384::ecdsa::SigningKey::from_slice(&member("d")?)
            .map(Signer::P384)
            .map_err(|_| "the JWK's 'd' is not a P-384 private key".into()),
        (Some("OKP"), Some("Ed25519")) => {
            let d: [u8; 32] = member("d")?
                .try_into()
                .map_err(|_| "the JWK's 'd' is not 32 bytes (Ed25519)".to_string())?;
            Ok(Signer::Ed25519(ed25519_dalek::SigningKey::from_bytes(&d)))
        }
        _ => Err(format!(
            "the JWK is kty {} crv {}; expected RSA, EC (P-256, P-384) or OKP (Ed25519)",
            kty.unwrap_or("(none)"),
            crv.unwrap_or("(none)")
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp_file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gatehouse-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_built_in_key_must_fit_the_algorithm() {
        assert!(PrivateKey::built_in(Alg::PS256, "rfc7515-a2").is_ok());
        assert!(PrivateKey::built_in(Alg::EdDSA, "rfc8037-a1").is_ok());
        let e = PrivateKey::built_in(Alg::ES256, "rfc7515-a2").unwrap_err();
        assert_eq!(
            e,
            "test_key 'rfc7515-a2': an RSA key cannot sign ES256; ES256 needs a P-256 key"
        );
        let e = PrivateKey::hmac(Alg::RS256, b"s3cret".to_vec(), "K").unwrap_err();
        assert_eq!(
            e,
            "secret_env 'K': an HMAC secret cannot sign RS256; RS256 needs an RSA key"
        );
        let e = PrivateKey::built_in(Alg::RS256, "rfc7515-a9").unwrap_err();
        assert!(e.starts_with("unknown test_key 'rfc7515-a9'; expected one of [rfc7515-a2,"));
    }

    #[test]
    fn a_private_jwk_file_is_read() {
        let jwk = r#"{"kty":"EC","crv":"P-256","d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}"#;
        let key = PrivateKey::from_file(Alg::ES256, &tmp_file("p256.jwk", jwk)).unwrap();
        assert!(matches!(key.signer(), Signer::P256(_)));
        assert_eq!(format!("{key:?}"), "PrivateKey(a P-256 key, <redacted>)");
        let e = PrivateKey::from_file(Alg::ES384, &tmp_file("p256b.jwk", jwk)).unwrap_err();
        assert!(
            e.contains("p256b.jwk: a P-256 key cannot sign ES384"),
            "{e}"
        );
        let public =
            r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"}"#;
        let e = PrivateKey::from_file(Alg::ES256, &tmp_file("pub.jwk", public)).unwrap_err();
        assert!(
            e.ends_with("the JWK has no 'd' (a private JWK needs it)"),
            "{e}"
        );
    }

    #[test]
    fn an_rsa_jwk_without_primes_is_recovered_and_the_size_is_checked() {
        let k = test_tokens::rsa_private();
        let b = |n: &BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
        let jwk = format!(
            r#"{{"kty":"RSA","n":"{}","e":"{}","d":"{}"}}"#,
            b(k.n()),
            b(k.e()),
            b(rsa::traits::PrivateKeyParts::d(&k))
        );
        let key = PrivateKey::from_file(Alg::RS256, &tmp_file("rsa.jwk", &jwk)).unwrap();
        assert!(matches!(key.signer(), Signer::Rsa(_)));
        // The textbook key: n = 61 * 53, e = 17, d = 2753.
        let tiny = r#"{"kty":"RSA","n":"DKE","e":"EQ","d":"CsE","p":"PQ","q":"NQ"}"#;
        let e = PrivateKey::from_file(Alg::RS256, &tmp_file("tiny.jwk", tiny)).unwrap_err();
        assert!(
            e.ends_with("tiny.jwk: a 16-bit RSA key; the plugin takes 2048 to 4096 bits"),
            "{e}"
        );
    }

    #[test]
    fn pem_keys_are_read_whatever_the_container() {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let rsa = test_tokens::rsa_private();
        let pkcs8 = rsa.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).unwrap();
        for (name, pem) in [("rsa8.pem", pkcs8.as_str()), ("rsa1.pem", pkcs1.as_str())] {
            let key = PrivateKey::from_file(Alg::RS256, &tmp_file(name, pem)).unwrap();
            assert!(matches!(key.signer(), Signer::Rsa(_)), "{name}");
        }
        let Signer::P256(p256) = test_tokens::signer(Alg::ES256) else {
            unreachable!()
        };
        let pem = p256.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = PrivateKey::from_file(Alg::ES256, &tmp_file("p256.pem", &pem)).unwrap();
        assert!(matches!(key.signer(), Signer::P256(_)));
        let sec1 = p256::SecretKey::from(&p256)
            .to_sec1_pem(LineEnding::LF)
            .unwrap();
        let key = PrivateKey::from_file(Alg::ES256, &tmp_file("p256.sec1", &sec1)).unwrap();
        assert!(matches!(key.signer(), Signer::P256(_)));
        let Signer::Ed25519(ed) = test_tokens::signer(Alg::EdDSA) else {
            unreachable!()
        };
        let pem = ed.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = PrivateKey::from_file(Alg::EdDSA, &tmp_file("ed.pem", &pem)).unwrap();
        assert!(matches!(key.signer(), Signer::Ed25519(_)));
    }

    #[test]
    fn pem_blocks_are_found_among_others_and_garbage_is_named_not_shown() {
        let text = "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert_eq!(
            pem_block(text, "EC PRIVATE KEY"),
            Some("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----")
        );
        let e = PrivateKey::from_file(Alg::ES256, &tmp_file("bad.pem", text)).unwrap_err();
        assert!(
            e.ends_with("the EC PRIVATE KEY block is not a P-256 or P-384 key (SEC1)"),
            "{e}"
        );
        let e = PrivateKey::from_file(Alg::ES256, &tmp_file("secret.txt", "hunter2-secret"))
            .unwrap_err();
        assert!(
            e.contains("not a private key") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
