//! Behaviour of [`verify`] as a caller sees it: the RFC example tokens, every supported
//! algorithm signed and verified, every refusal path, and no panics on any input.

use proptest::prelude::*;
use rsa::{BigUint, traits::PublicKeyParts};

use super::test_tokens::*;
use super::*;

/// A moment inside every minted token's lifetime.
const NOW: u64 = 1_700_000_000;
/// A payload valid at [`NOW`].
const GOOD: &str = r#"{"sub":"user-1","jti":"id-1","iat":1699999000,"exp":1700003600,"tenant":"acme","plan":"team"}"#;

fn set(keys: Vec<Key>) -> KeySet {
    KeySet::new(keys)
}

fn check(token: &str, keys: &KeySet) -> Result<Verified, JwtError> {
    verify(token.as_bytes(), keys, NOW, &Rules::default())
}

/// Replaces segment `i` of a token.
fn with_segment(token: &str, i: usize, segment: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[i] = segment;
    parts.join(".")
}

// --- RFC vectors ---

#[test]
fn rfc7515_a1_hs256_verifies_until_exp_plus_leeway() {
    let key = Key::hmac(
        Alg::HS256,
        &b64::decode(RFC7515_A1_K.as_bytes()).unwrap(),
        None,
    )
    .unwrap();
    let keys = set(vec![key]);
    let at = |now| verify(RFC7515_A1_TOKEN.as_bytes(), &keys, now, &Rules::default());

    let v = at(RFC7515_EXP - 1).unwrap();
    assert_eq!(v.alg, Alg::HS256);
    assert_eq!(v.exp, Some(RFC7515_EXP as i64));
    assert_eq!(v.claim_str("iss"), Some("joe"));
    assert_eq!(
        v.claim("http://example.com/is_root"),
        Some(&ClaimValue::Bool(true))
    );
    assert!(at(RFC7515_EXP + DEFAULT_LEEWAY_SECS - 1).is_ok());
    assert_eq!(
        at(RFC7515_EXP + DEFAULT_LEEWAY_SECS).unwrap_err(),
        JwtError::Expired
    );

    // The same key given as the RFC's JWK.
    let jwk = format!(r#"{{"kty":"oct","k":"{RFC7515_A1_K}"}}"#);
    let keys = set(vec![
        Key::from_jwk(jwk.as_bytes(), Some(Alg::HS256)).unwrap(),
    ]);
    assert!(
        verify(
            RFC7515_A1_TOKEN.as_bytes(),
            &keys,
            RFC7515_EXP - 1,
            &Rules::default()
        )
        .is_ok()
    );
}

#[test]
fn rfc7515_a2_rs256_verifies_and_the_test_signer_reproduces_it() {
    let jwk = format!(r#"{{"kty":"RSA","n":"{RFC7515_A2_N}","e":"AQAB"}}"#);
    let keys = set(vec![
        Key::from_jwk(jwk.as_bytes(), Some(Alg::RS256)).unwrap(),
    ]);
    let v = verify(
        RFC7515_A2_TOKEN.as_bytes(),
        &keys,
        RFC7515_EXP - 1,
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(v.alg, Alg::RS256);

    // PKCS#1 v1.5 is deterministic: our signer must produce the RFC's signature.
    let input = format!("eyJhbGciOiJSUzI1NiJ9.{RFC7515_PAYLOAD}");
    let sig = sign(Alg::RS256, &signer(Alg::RS256), input.as_bytes());
    assert_eq!(format!("{input}.{}", b64::encode(&sig)), RFC7515_A2_TOKEN);
}

#[test]
fn rfc7515_a3_es256_is_refused_for_its_high_s_and_its_low_s_twin_verifies() {
    let keys = set(vec![
        Key::from_jwk(RFC7515_A3_JWK.as_bytes(), None).unwrap(),
    ]);
    let at_exp = |token: &str, keys: &KeySet| {
        verify(token.as_bytes(), keys, RFC7515_EXP - 1, &Rules::default())
    };
    // The RFC's own example signature is high-S.
    assert_eq!(
        at_exp(RFC7515_A3_TOKEN, &keys).unwrap_err(),
        JwtError::BadSignature
    );
    assert_eq!(
        with_ecdsa_twin(Alg::ES256, RFC7515_A3_TOKEN),
        RFC7515_A3_TOKEN_LOW_S
    );
    let v = at_exp(RFC7515_A3_TOKEN_LOW_S, &keys).unwrap();
    assert_eq!(v.alg, Alg::ES256);
    assert_eq!(v.claim_str("iss"), Some("joe"));
    // The A.3 private key is the one our ES256 tokens are signed with.
    assert_eq!(public_key(Alg::ES256, None).alg(), Alg::ES256);
    let ours = Key::from_jwk(public_jwk(Alg::ES256, None).as_bytes(), None).unwrap();
    assert!(at_exp(RFC7515_A3_TOKEN_LOW_S, &set(vec![ours])).is_ok());
}

#[test]
fn rfc7515_a4_es512_is_refused_as_unsupported() {
    assert_eq!(
        Key::from_jwk(RFC7515_A4_JWK.as_bytes(), None).unwrap_err(),
        JwkError::UnsupportedCurve
    );
    // Even with every other kind of key present, the token fails on its alg alone.
    let keys = set(Alg::ALL.iter().map(|&a| public_key(a, None)).collect());
    assert_eq!(
        check(RFC7515_A4_TOKEN, &keys).unwrap_err(),
        JwtError::UnsupportedAlg
    );
}

#[test]
fn rfc8037_a4_ed25519_signature_verifies_but_its_text_payload_is_no_jwt() {
    let keys = set(vec![Key::from_jwk(RFC8037_JWK.as_bytes(), None).unwrap()]);
    // The signature checks out (otherwise BadSignature); the payload is plain text.
    assert_eq!(
        check(RFC8037_A4_TOKEN, &keys).unwrap_err(),
        JwtError::Malformed("payload")
    );
    let tampered = with_segment(
        RFC8037_A4_TOKEN,
        1,
        &b64::encode(b"Example of Ed25519 signinG"),
    );
    assert_eq!(check(&tampered, &keys).unwrap_err(), JwtError::BadSignature);

    // Ed25519 is deterministic: our signer reproduces the RFC's signature.
    let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    let sig = sign(Alg::EdDSA, &signer(Alg::EdDSA), input.as_bytes());
    assert_eq!(format!("{input}.{}", b64::encode(&sig)), RFC8037_A4_TOKEN);
}

// --- every algorithm ---

#[test]
fn every_supported_alg_verifies_with_and_without_kid() {
    for alg in Alg::ALL {
        let keys = set(vec![public_key(alg, Some("k1"))]);
        let v = check(&mint(alg, Some("k1"), GOOD), &keys).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(v.alg, alg);
        assert_eq!(v.kid.as_deref(), Some("k1"));
        assert_eq!(v.sub.as_deref(), Some("user-1"));
        assert_eq!(v.jti.as_deref(), Some("id-1"));
        assert_eq!(v.iat, Some(1_699_999_000));
        assert_eq!(v.exp, Some(1_700_003_600));
        assert_eq!(v.claim_str("tenant"), Some("acme"));
        assert_eq!(
            v.claim("plan").map(|c| c.to_text().into_owned()).as_deref(),
            Some("team")
        );

        let keys = set(vec![public_key(alg, None)]);
        let v = check(&mint(alg, None, GOOD), &keys).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(v.kid, None);
    }
}

#[test]
fn a_token_without_kid_is_tried_against_keys_of_its_alg_only() {
    // One key of every algorithm: each token finds its own among them.
    let keys = set(Alg::ALL.iter().map(|&a| public_key(a, None)).collect());
    for alg in Alg::ALL {
        assert_eq!(check(&mint(alg, None, GOOD), &keys).unwrap().alg, alg);
    }
}

#[test]
fn a_tampered_payload_is_a_bad_signature_for_every_alg() {
    for alg in Alg::ALL {
        let keys = set(vec![public_key(alg, Some("k"))]);
        let token = mint(alg, Some("k"), GOOD);
        let forged = with_segment(
            &token,
            1,
            &b64::encode(GOOD.replace("user-1", "admin").as_bytes()),
        );
        assert_eq!(
            check(&forged, &keys).unwrap_err(),
            JwtError::BadSignature,
            "{alg}"
        );
    }
}

#[test]
fn a_tampered_or_truncated_signature_is_a_bad_signature_for_every_alg() {
    for alg in Alg::ALL {
        let keys = set(vec![public_key(alg, None)]);
        let token = mint(alg, None, GOOD);
        let mut sig = b64::decode(token.rsplit('.').next().unwrap().as_bytes()).unwrap();
        let mid = sig.len() / 2;
        sig[mid] ^= 0x01;
        let flipped = with_segment(&token, 2, &b64::encode(&sig));
        assert_eq!(
            check(&flipped, &keys).unwrap_err(),
            JwtError::BadSignature,
            "{alg}"
        );
        sig[mid] ^= 0x01;
        let short = with_segment(&token, 2, &b64::encode(&sig[..sig.len() - 1]));
        assert_eq!(
            check(&short, &keys).unwrap_err(),
            JwtError::BadSignature,
            "{alg}"
        );
        let empty = with_segment(&token, 2, "");
        assert_eq!(
            check(&empty, &keys).unwrap_err(),
            JwtError::BadSignature,
            "{alg}"
        );
    }
}

#[test]
fn a_token_whose_alg_differs_from_its_keys_is_refused() {
    for key_alg in Alg::ALL {
        let keys = set(vec![public_key(key_alg, Some("k"))]);
        let good = mint(key_alg, Some("k"), GOOD);
        let good_no_kid = mint(key_alg, None, GOOD);
        for token_alg in Alg::ALL.into_iter().filter(|&a| a != key_alg) {
            // The header says another alg; the signature is still the key's own.
            let header = format!(r#"{{"alg":"{token_alg}","kid":"k"}}"#);
            let relabelled = with_segment(&good, 0, &b64::encode(header.as_bytes()));
            assert_eq!(
                check(&relabelled, &keys).unwrap_err(),
                JwtError::AlgMismatch,
                "{key_alg}->{token_alg}"
            );
            let header = format!(r#"{{"alg":"{token_alg}"}}"#);
            let relabelled = with_segment(&good_no_kid, 0, &b64::encode(header.as_bytes()));
            assert_eq!(
                check(&relabelled, &keys).unwrap_err(),
                JwtError::NoMatchingKey,
                "{key_alg}->{token_alg}"
            );
        }
    }
}

#[test]
fn an_rsa_key_for_rs256_does_not_accept_a_valid_ps256_signature() {
    // Same private key, properly signed under PSS, but the key is configured for RS256.
    let keys = set(vec![public_key(Alg::RS256, Some("k"))]);
    let token = mint_raw(r#"{"alg":"PS256","kid":"k"}"#, GOOD, Alg::PS256, Alg::RS256);
    assert_eq!(check(&token, &keys).unwrap_err(), JwtError::AlgMismatch);
    let token = mint_raw(r#"{"alg":"PS256"}"#, GOOD, Alg::PS256, Alg::RS256);
    assert_eq!(check(&token, &keys).unwrap_err(), JwtError::NoMatchingKey);
}

#[test]
fn alg_none_is_always_refused() {
    let keys = set(Alg::ALL
        .iter()
        .map(|&a| public_key(a, Some(a.as_str())))
        .collect());
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"none","kid":"HS256"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE","typ":"JWT"}"#,
        r#"{"alg":""}"#,
    ] {
        let token = format!("{}.", signing_input(header, GOOD));
        assert_eq!(
            check(&token, &keys).unwrap_err(),
            JwtError::UnsupportedAlg,
            "{header}"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion attack: the attacker knows the RSA public key and uses its
    // bytes as an HMAC secret, hoping the verifier feeds the same bytes to HMAC.
    let rsa = rsa_private();
    let jwk_text = public_jwk(Alg::RS256, Some("rsa"));
    let secrets = [
        jwk_text.clone().into_bytes(),
        rsa.n().to_bytes_be(),
        RFC7515_A2_N.as_bytes().to_vec(),
    ];
    let keys = set(vec![Key::from_jwk(jwk_text.as_bytes(), None).unwrap()]);
    for secret in &secrets {
        let forge = |header: &str| {
            let input = signing_input(header, GOOD);
            let sig = sign(Alg::HS256, &Signer::Hmac(secret.clone()), input.as_bytes());
            format!("{input}.{}", b64::encode(&sig))
        };
        assert_eq!(
            check(&forge(r#"{"alg":"HS256","kid":"rsa"}"#), &keys).unwrap_err(),
            JwtError::AlgMismatch
        );
        assert_eq!(
            check(&forge(r#"{"alg":"HS256"}"#), &keys).unwrap_err(),
            JwtError::NoMatchingKey
        );
    }
    // Alongside a real HS256 key, the forged token is tried against that key only.
    let mixed = set(vec![
        Key::from_jwk(jwk_text.as_bytes(), None).unwrap(),
        public_key(Alg::HS256, None),
    ]);
    let input = signing_input(r#"{"alg":"HS256"}"#, GOOD);
    let sig = sign(
        Alg::HS256,
        &Signer::Hmac(secrets[0].clone()),
        input.as_bytes(),
    );
    let forged = format!("{input}.{}", b64::encode(&sig));
    assert_eq!(check(&forged, &mixed).unwrap_err(), JwtError::BadSignature);
}

// --- key choice ---

#[test]
fn an_unknown_kid_is_reported_so_the_caller_can_refetch() {
    let keys = set(vec![public_key(Alg::ES256, Some("old"))]);
    assert_eq!(
        check(&mint(Alg::ES256, Some("new"), GOOD), &keys).unwrap_err(),
        JwtError::UnknownKid
    );
    // A key without kid is not a wildcard.
    let keys = set(vec![public_key(Alg::ES256, None)]);
    assert_eq!(
        check(&mint(Alg::ES256, Some("new"), GOOD), &keys).unwrap_err(),
        JwtError::UnknownKid
    );
    assert_eq!(
        check(&mint(Alg::ES256, Some("new"), GOOD), &KeySet::default()).unwrap_err(),
        JwtError::UnknownKid
    );
}

#[test]
fn a_kid_shared_by_keys_of_two_algs_picks_the_tokens_alg() {
    let keys = set(vec![
        public_key(Alg::RS256, Some("k")),
        public_key(Alg::ES256, Some("k")),
    ]);
    assert_eq!(
        check(&mint(Alg::ES256, Some("k"), GOOD), &keys)
            .unwrap()
            .alg,
        Alg::ES256
    );
    assert_eq!(
        check(&mint(Alg::RS256, Some("k"), GOOD), &keys)
            .unwrap()
            .alg,
        Alg::RS256
    );
}

#[test]
fn without_kid_only_the_first_few_keys_of_the_alg_are_tried() {
    let decoy = |i: u8| Key::hmac(Alg::HS256, &[i; 32], Some(format!("decoy{i}"))).unwrap();
    let right = public_key(Alg::HS256, Some("right"));
    let token = mint(Alg::HS256, None, GOOD);

    let mut within: Vec<Key> = (0..MAX_KEYS_TRIED as u8 - 1).map(decoy).collect();
    within.push(right.clone());
    assert_eq!(
        check(&token, &set(within)).unwrap().kid.as_deref(),
        Some("right")
    );

    let mut beyond: Vec<Key> = (0..MAX_KEYS_TRIED as u8).map(decoy).collect();
    beyond.push(right);
    assert_eq!(
        check(&token, &set(beyond)).unwrap_err(),
        JwtError::BadSignature
    );
}

// --- shape and encoding ---

#[test]
fn padding_and_non_alphabet_base64_are_malformed() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    let token = mint(Alg::HS256, None, GOOD);
    let parts: Vec<&str> = token.split('.').collect();
    for (i, part) in ["header", "payload", "signature"].into_iter().enumerate() {
        for bad in [
            format!("{}=", parts[i]),
            format!("{}==", parts[i]),
            format!("{}+", parts[i]),
            format!("{} ", parts[i]),
        ] {
            let t = with_segment(&token, i, &bad);
            // A header or signature that does not decode fails as malformed; a payload
            // that does not decode changes the signed bytes, but is still refused.
            let err = check(&t, &keys).unwrap_err();
            if part == "payload" {
                assert!(
                    matches!(err, JwtError::BadSignature | JwtError::Malformed("payload")),
                    "{part} {bad}: {err:?}"
                );
            } else {
                assert_eq!(err, JwtError::Malformed(part), "{bad}");
            }
        }
    }
    let std_alphabet = token.replace('-', "+").replace('_', "/");
    if std_alphabet != token {
        assert!(check(&std_alphabet, &keys).is_err());
    }
}

#[test]
fn a_payload_that_is_not_base64url_is_refused_even_when_signed() {
    // Signed over the bad text itself, so only the decoding can refuse it.
    let keys = set(vec![public_key(Alg::HS256, None)]);
    for payload in ["e30=", "e30*", "e"] {
        let input = format!("{}.{payload}", b64::encode(br#"{"alg":"HS256"}"#));
        let sig = sign(Alg::HS256, &signer(Alg::HS256), input.as_bytes());
        let token = format!("{input}.{}", b64::encode(&sig));
        assert_eq!(
            check(&token, &keys).unwrap_err(),
            JwtError::Malformed("payload"),
            "{payload}"
        );
    }
}

#[test]
fn a_token_must_have_exactly_three_segments() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    let token = mint(Alg::HS256, None, GOOD);
    for bad in [
        String::new(),
        ".".into(),
        "abc".into(),
        token.rsplit_once('.').unwrap().0.into(),
        format!("{token}."),
        format!("{token}.abc"),
        format!(".{token}"),
    ] {
        assert_eq!(
            check(&bad, &keys).unwrap_err(),
            JwtError::Malformed("segments"),
            "{bad}"
        );
    }
}

#[test]
fn the_header_must_be_an_object_with_a_string_alg() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    for header in [
        "",
        "not json",
        "[]",
        r#""HS256""#,
        "{}",
        r#"{"alg":256}"#,
        r#"{"alg":null}"#,
        r#"{"alg":"HS256","kid":7}"#,
        r#"{"alg":"HS256","typ":["JWT"]}"#,
        r#"{"alg":"HS256""#,
    ] {
        let token = mint_raw(header, GOOD, Alg::HS256, Alg::HS256);
        assert_eq!(
            check(&token, &keys).unwrap_err(),
            JwtError::Malformed("header"),
            "{header}"
        );
    }
    // Invalid UTF-8 in the header.
    let token = format!(
        "{}.{}.",
        b64::encode(&[0x7b, 0xff, 0x7d]),
        b64::encode(GOOD.as_bytes())
    );
    assert_eq!(
        check(&token, &keys).unwrap_err(),
        JwtError::Malformed("header")
    );
}

#[test]
fn crit_is_refused_and_key_carrying_headers_are_ignored() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    let crit = mint_raw(
        r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
        GOOD,
        Alg::HS256,
        Alg::HS256,
    );
    assert_eq!(check(&crit, &keys).unwrap_err(), JwtError::UnsupportedCrit);
    let b64_false = mint_raw(
        r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
        GOOD,
        Alg::HS256,
        Alg::HS256,
    );
    assert_eq!(
        check(&b64_false, &keys).unwrap_err(),
        JwtError::UnsupportedCrit
    );

    // An embedded jwk naming the attacker's own key changes nothing: it is not used.
    let attacker = public_jwk(Alg::ES384, None);
    let header = format!(r#"{{"alg":"ES384","jwk":{attacker},"jku":"https://evil.example/jwks"}}"#);
    let token = mint_raw(&header, GOOD, Alg::ES384, Alg::ES384);
    assert_eq!(check(&token, &keys).unwrap_err(), JwtError::NoMatchingKey);
}

#[test]
fn the_payload_must_be_a_json_object() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    for payload in ["[]", "1700003600", "\"x\"", "null", "{", ""] {
        let token = mint_raw(r#"{"alg":"HS256"}"#, payload, Alg::HS256, Alg::HS256);
        assert_eq!(
            check(&token, &keys).unwrap_err(),
            JwtError::Malformed("payload"),
            "{payload}"
        );
    }
}

#[test]
fn a_huge_token_is_refused_before_it_is_read() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    let rules = Rules::default();
    let huge = vec![b'A'; DEFAULT_MAX_SIZE + 1];
    assert_eq!(
        verify(&huge, &keys, NOW, &rules).unwrap_err(),
        JwtError::TooLarge
    );
    let just_fits = vec![b'A'; DEFAULT_MAX_SIZE];
    assert_eq!(
        verify(&just_fits, &keys, NOW, &rules).unwrap_err(),
        JwtError::Malformed("segments")
    );

    // A valid token over a smaller limit.
    let token = mint(Alg::HS256, None, GOOD);
    let tight = Rules {
        max_size: token.len() - 1,
        ..Rules::default()
    };
    assert_eq!(
        verify(token.as_bytes(), &keys, NOW, &tight).unwrap_err(),
        JwtError::TooLarge
    );
    let exact = Rules {
        max_size: token.len(),
        ..Rules::default()
    };
    assert!(verify(token.as_bytes(), &keys, NOW, &exact).is_ok());
}

#[test]
fn an_ecdsa_signature_in_der_form_is_refused() {
    let keys = set(vec![public_key(Alg::ES256, None)]);
    let input = signing_input(r#"{"alg":"ES256"}"#, GOOD);
    // The test signer's low-S signature: a high-S one would be refused for that alone.
    let raw = sign(Alg::ES256, &signer(Alg::ES256), input.as_bytes());
    let sig = p256::ecdsa::Signature::from_slice(&raw).unwrap();
    let der = sig.to_der();
    let token = format!("{input}.{}", b64::encode(der.as_bytes()));
    assert_eq!(check(&token, &keys).unwrap_err(), JwtError::BadSignature);
    let token = format!("{input}.{}", b64::encode(&sig.to_bytes()));
    assert!(check(&token, &keys).is_ok());
}

#[test]
fn a_high_s_ecdsa_token_is_refused_as_a_bad_signature_like_a_tampered_one() {
    for alg in [Alg::ES256, Alg::ES384] {
        let keys = set(vec![public_key(alg, None)]);
        let token = mint(alg, None, GOOD);
        assert!(
            check(&token, &keys).is_ok(),
            "{alg}: the low-S token verifies"
        );
        let high_s = with_ecdsa_twin(alg, &token);
        let err = check(&high_s, &keys).unwrap_err();
        assert_eq!(err, JwtError::BadSignature, "{alg}");

        let mut sig = b64::decode(token.rsplit('.').next().unwrap().as_bytes()).unwrap();
        sig[0] ^= 0x01;
        let tampered = check(&with_segment(&token, 2, &b64::encode(&sig)), &keys).unwrap_err();
        assert_eq!(err.code(), tampered.code(), "{alg}");
    }
}

#[test]
fn a_high_s_ecdsa_token_is_refused_even_after_its_low_s_twin_was_cached() {
    // The cache is keyed on the token's bytes: the second spelling must not ride on the
    // first one's entry, nor earn its own.
    for alg in [Alg::ES256, Alg::ES384] {
        let keys = set(vec![public_key(alg, None)]);
        let token = mint(alg, None, GOOD);
        let rules = Rules::default();
        assert!(verify_cached(token.as_bytes(), &keys, NOW, &rules).is_ok());
        let high_s = with_ecdsa_twin(alg, &token);
        for _ in 0..2 {
            assert_eq!(
                verify_cached(high_s.as_bytes(), &keys, NOW, &rules).unwrap_err(),
                JwtError::BadSignature,
                "{alg}"
            );
        }
    }
}

#[test]
fn the_test_signer_always_emits_low_s_ecdsa_signatures() {
    // p256 and p384 leave s high about half the time; 64 inputs would all come out low
    // by chance once in 2^64 runs.
    for alg in [Alg::ES256, Alg::ES384] {
        let key = signer(alg);
        let half = ecdsa_order(alg) / 2u32;
        for i in 0..64 {
            let sig = sign(alg, &key, format!("input-{i}").as_bytes());
            assert!(ecdsa_s(&sig) <= half, "{alg} input-{i}");
        }
    }
}

#[test]
fn an_rsa_signature_plus_the_modulus_is_refused() {
    // s and s + n are the same number modulo n; only s is the signature. Find a PSS
    // signature small enough that s + n still has the modulus' length.
    let keys = set(vec![public_key(Alg::PS256, None)]);
    let n = rsa_private().n().clone();
    let len = n.to_bytes_be().len();
    let limit = BigUint::from(1u8) << (8 * len);
    let mut found = false;
    for i in 0..64 {
        let token = mint(Alg::PS256, None, &GOOD.replace("id-1", &format!("id-{i}")));
        assert!(check(&token, &keys).is_ok());
        let s = BigUint::from_bytes_be(
            &b64::decode(token.rsplit('.').next().unwrap().as_bytes()).unwrap(),
        );
        let bigger = &s + &n;
        if bigger < limit {
            let forged = with_segment(&token, 2, &b64::encode(&bigger.to_bytes_be()));
            assert_eq!(check(&forged, &keys).unwrap_err(), JwtError::BadSignature);
            found = true;
            break;
        }
    }
    assert!(found, "no signature small enough in 64 tries");
}

// --- claims through verify ---

#[test]
fn time_claims_are_checked_at_their_edges_with_the_leeway() {
    let keys = set(vec![public_key(Alg::ES256, None)]);
    let at = |payload: &str, now: u64| {
        verify(
            mint(Alg::ES256, None, payload).as_bytes(),
            &keys,
            now,
            &Rules::default(),
        )
    };
    let exp = r#"{"exp":1700000000}"#;
    assert!(at(exp, NOW + 59).is_ok());
    assert_eq!(at(exp, NOW + 60).unwrap_err(), JwtError::Expired);
    let nbf = r#"{"exp":1800000000,"nbf":1700000000}"#;
    assert!(at(nbf, NOW - 60).is_ok());
    assert_eq!(at(nbf, NOW - 61).unwrap_err(), JwtError::NotYetValid);
    let iat = r#"{"exp":1800000000,"iat":1700000000}"#;
    assert!(at(iat, NOW - 60).is_ok());
    assert_eq!(at(iat, NOW - 61).unwrap_err(), JwtError::IssuedInFuture);
    assert_eq!(
        at(r#"{"sub":"x"}"#, NOW).unwrap_err(),
        JwtError::MissingClaim("exp".into())
    );
    assert_eq!(
        at(r#"{"exp":"1800000000"}"#, NOW).unwrap_err(),
        JwtError::InvalidClaim("exp")
    );
    assert!(at(r#"{"exp":1800000000.25,"nbf":1699999999.5}"#, NOW).is_ok());
}

// --- the cache of verified tokens ---

#[test]
fn a_cached_token_gets_the_same_answer_as_a_fresh_check_at_every_time() {
    // Time claims with fractions, at the edges of each rule.
    let payload = r#"{"sub":"u","exp":1700000000.5,"nbf":1699990000.25,"iat":1699990000}"#;
    for alg in [Alg::HS256, Alg::ES256] {
        let keys = set(vec![public_key(alg, None)]);
        let token = mint(alg, None, payload);
        let rules = Rules::default();
        let first = verify_cached(token.as_bytes(), &keys, NOW, &rules).unwrap();
        let again = verify_cached(token.as_bytes(), &keys, NOW, &rules).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "{alg}: served from the cache"
        );
        assert_eq!(*first, check(&token, &keys).unwrap());
        for now in [
            NOW + 59,
            NOW + 60,
            NOW + 61,
            1_699_990_000 - 59,
            1_699_990_000 - 60,
            1_699_990_000 - 61,
            0,
            u64::MAX,
        ] {
            let fresh = verify(token.as_bytes(), &keys, now, &rules);
            let cached = verify_cached(token.as_bytes(), &keys, now, &rules).map(|v| (*v).clone());
            assert_eq!(cached, fresh, "{alg} at {now}");
        }
    }
    // A cached token expires on time.
    let keys = set(vec![public_key(Alg::HS256, None)]);
    let token = mint(Alg::HS256, None, r#"{"exp":1700000000}"#);
    assert!(verify_cached(token.as_bytes(), &keys, NOW, &Rules::default()).is_ok());
    assert_eq!(
        verify_cached(token.as_bytes(), &keys, NOW + 60, &Rules::default()).unwrap_err(),
        JwtError::Expired
    );
}

#[test]
fn the_cache_never_lets_a_changed_token_other_rules_or_other_keys_through() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    let token = mint(Alg::HS256, None, GOOD);
    let rules = Rules::default();
    assert!(verify_cached(token.as_bytes(), &keys, NOW, &rules).is_ok());
    // One bit of the signature changed: the same slot, another text.
    let mut flipped = token.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        verify_cached(&flipped, &keys, NOW, &rules).unwrap_err(),
        JwtError::BadSignature
    );
    // A prefix, and the token with a byte more.
    assert!(verify_cached(&token.as_bytes()[..token.len() - 1], &keys, NOW, &rules).is_err());
    assert!(verify_cached(format!("{token}A").as_bytes(), &keys, NOW, &rules).is_err());
    // Other rules: checked in full, and refused.
    let strict = Rules {
        audiences: vec!["api".into()],
        ..Rules::default()
    };
    assert_eq!(
        verify_cached(token.as_bytes(), &keys, NOW, &strict).unwrap_err(),
        JwtError::MissingClaim("aud".into())
    );
    // A key set without the key (a rotated JWKS) has its own, empty cache.
    let rotated = set(vec![public_key(Alg::ES256, None)]);
    assert!(verify_cached(token.as_bytes(), &rotated, NOW, &rules).is_err());
    // A key added to a set empties its cache.
    let mut grown = keys.clone();
    assert!(verify_cached(token.as_bytes(), &grown, NOW, &rules).is_ok());
    grown.push(public_key(Alg::ES256, None));
    assert!(format!("{:?}", grown).contains("SecretCache(0 held)"));
    // The cache's Debug never shows a token.
    assert!(!format!("{keys:?}").contains(&token[..20]));
}

#[test]
fn the_cache_holds_a_bounded_number_of_tokens() {
    let keys = set(vec![public_key(Alg::HS256, None)]);
    for i in 0..1000 {
        let token = mint(
            Alg::HS256,
            None,
            &format!(r#"{{"sub":"u{i}","exp":1800000000}}"#),
        );
        assert!(verify_cached(token.as_bytes(), &keys, NOW, &Rules::default()).is_ok());
    }
    let held: usize = format!("{keys:?}")
        .split("SecretCache(")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(held > 0 && held <= CACHE_ENTRIES, "{held}");
    // A token over the size bound verifies and is not kept.
    let big = mint(
        Alg::HS256,
        None,
        &format!(
            r#"{{"exp":1800000000,"pad":"{}"}}"#,
            "x".repeat(CACHE_MAX_TOKEN)
        ),
    );
    let a = verify_cached(big.as_bytes(), &keys, NOW, &Rules::default()).unwrap();
    let b = verify_cached(big.as_bytes(), &keys, NOW, &Rules::default()).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &b));
}

#[test]
fn issuer_audience_and_required_claims_are_checked() {
    let keys = set(vec![public_key(Alg::EdDSA, None)]);
    let rules = Rules {
        issuers: vec!["https://idp.example".into()],
        audiences: vec!["api".into()],
        required_claims: vec!["tenant".into()],
        ..Rules::default()
    };
    let at = |payload: &str| {
        verify(
            mint(Alg::EdDSA, None, payload).as_bytes(),
            &keys,
            NOW,
            &rules,
        )
    };
    assert!(
        at(r#"{"exp":1800000000,"iss":"https://idp.example","aud":["x","api"],"tenant":"t"}"#)
            .is_ok()
    );
    assert_eq!(
        at(r#"{"exp":1800000000,"iss":"https://other.example","aud":"api","tenant":"t"}"#)
            .unwrap_err(),
        JwtError::BadIssuer
    );
    assert_eq!(
        at(r#"{"exp":1800000000,"iss":"https://idp.example","aud":"web","tenant":"t"}"#)
            .unwrap_err(),
        JwtError::BadAudience
    );
    assert_eq!(
        at(r#"{"exp":1800000000,"iss":"https://idp.example","aud":"api"}"#).unwrap_err(),
        JwtError::MissingClaim("tenant".into())
    );
    assert_eq!(
        at(r#"{"exp":1800000000,"aud":"api","tenant":"t"}"#).unwrap_err(),
        JwtError::MissingClaim("iss".into())
    );
}

#[test]
fn errors_never_repeat_the_token_or_its_claims() {
    let keys = set(vec![public_key(Alg::HS256, Some("k"))]);
    let marker = "SECRETMARKER";
    let tokens = [
        mint(Alg::HS256, Some(marker), GOOD),
        mint(
            Alg::HS256,
            Some("k"),
            &format!(r#"{{"exp":1,"sub":"{marker}"}}"#),
        ),
        mint(
            Alg::HS256,
            Some("k"),
            &format!(r#"{{"exp":1800000000,"iss":"{marker}"}}"#),
        ),
        mint_raw(
            &format!(r#"{{"alg":"{marker}"}}"#),
            GOOD,
            Alg::HS256,
            Alg::HS256,
        ),
        format!("{marker}.{marker}.{marker}"),
    ];
    let rules = Rules {
        issuers: vec!["idp".into()],
        ..Rules::default()
    };
    for token in tokens {
        let err = verify(token.as_bytes(), &keys, NOW, &rules).unwrap_err();
        let shown = format!("{err} {err:?} {}", err.code());
        assert!(!shown.contains(marker), "{shown}");
    }
}

#[test]
fn every_error_has_a_distinct_code() {
    let all = [
        JwtError::TooLarge,
        JwtError::Malformed("x"),
        JwtError::UnsupportedAlg,
        JwtError::UnsupportedCrit,
        JwtError::UnknownKid,
        JwtError::NoMatchingKey,
        JwtError::AlgMismatch,
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::IssuedInFuture,
        JwtError::BadIssuer,
        JwtError::BadAudience,
        JwtError::InvalidClaim("exp"),
        JwtError::MissingClaim("x".into()),
    ];
    let mut codes: Vec<&str> = all.iter().map(JwtError::code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
}

#[test]
fn the_fuzz_key_set_holds_the_rfc_keys_so_fuzzing_reaches_every_verifier() {
    let keys = super::fuzz_keys();
    let algs: Vec<Alg> = keys.keys().iter().map(Key::alg).collect();
    assert_eq!(algs, [Alg::RS256, Alg::ES256, Alg::EdDSA, Alg::HS256]);
    for token in [RFC7515_A1_TOKEN, RFC7515_A2_TOKEN, RFC7515_A3_TOKEN_LOW_S] {
        assert!(verify(token.as_bytes(), &keys, RFC7515_EXP - 1, &Rules::default()).is_ok());
    }
}

#[test]
fn the_fuzz_entry_point_survives_the_rfc_tokens_and_junk() {
    for input in [
        RFC7515_A1_TOKEN,
        RFC7515_A2_TOKEN,
        RFC7515_A3_TOKEN,
        RFC7515_A3_TOKEN_LOW_S,
        RFC7515_A4_TOKEN,
        RFC8037_A4_TOKEN,
        "",
        "..",
        "a.b.c",
    ] {
        fuzz_verify(input.as_bytes());
    }
}

// --- no panics ---

fn all_keys() -> &'static KeySet {
    static KEYS: std::sync::OnceLock<KeySet> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        set(Alg::ALL
            .iter()
            .map(|&a| public_key(a, Some(a.as_str())))
            .collect())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = verify(&data, all_keys(), NOW, &Rules::default());
        fuzz_verify(&data);
    }

    #[test]
    fn verify_never_panics_on_token_shaped_input(
        header in "[A-Za-z0-9_-]{0,60}",
        payload in "[A-Za-z0-9_=+/-]{0,80}",
        sig in "[A-Za-z0-9_-]{0,400}",
    ) {
        let token = format!("{header}.{payload}.{sig}");
        let _ = verify(token.as_bytes(), all_keys(), NOW, &Rules::default());
    }

    #[test]
    fn verify_never_panics_on_any_json_header_and_payload(
        header in r#"\{("(alg|kid|typ|crit)":("(HS256|RS256|PS256|ES256|ES384|EdDSA|none|ES512)"|[0-9]{1,3}|null|\[\]|\{\}),?){0,4}\}"#,
        payload in r#"\{("(exp|nbf|iat|iss|aud|sub)":("[a-z]{0,5}"|-?[0-9]{1,12}(\.[0-9]{1,3})?|1e999|null|true|\["a",1\]),?){0,6}\}"#,
        sig in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let token = format!("{}.{}", signing_input(&header, &payload), b64::encode(&sig));
        let _ = verify(token.as_bytes(), all_keys(), NOW, &Rules::default());
    }

    #[test]
    fn parse_jwks_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_jwks(&data, None);
        let _ = parse_jwks(&data, Some(Alg::RS256));
        let _ = Key::from_jwk(&data, Some(Alg::HS256));
    }

    #[test]
    fn parse_jwks_never_panics_on_jwk_shaped_input(
        kty in "(RSA|EC|OKP|oct|x)",
        crv in "(P-256|P-384|P-521|Ed25519|X25519)",
        alg in "(RS256|PS256|ES256|ES384|EdDSA|HS256|none)",
        a in "[A-Za-z0-9_-]{0,400}",
        b in "[A-Za-z0-9_-]{0,100}",
    ) {
        let doc = format!(
            r#"{{"keys":[{{"kty":"{kty}","crv":"{crv}","alg":"{alg}","n":"{a}","e":"{b}","x":"{a}","y":"{b}","k":"{a}"}}]}}"#
        );
        let _ = parse_jwks(doc.as_bytes(), None);
    }
}

#[test]
fn the_unverified_issuer_is_read_as_strictly_as_a_verified_one() {
    use super::unverified_issuer;
    let t = |payload: &str| {
        format!(
            "{}.{}.sig",
            b64::encode(br#"{"alg":"HS256"}"#),
            b64::encode(payload.as_bytes())
        )
    };
    assert_eq!(
        unverified_issuer(t(r#"{"iss":"https://a.example"}"#).as_bytes(), 8192),
        Ok(Some("https://a.example".into()))
    );
    assert_eq!(unverified_issuer(t("{}").as_bytes(), 8192), Ok(None));
    // The last of duplicate members, as the verified claims read them.
    assert_eq!(
        unverified_issuer(t(r#"{"iss":"a","iss":"b"}"#).as_bytes(), 8192),
        Ok(Some("b".into()))
    );
    assert_eq!(
        unverified_issuer(t(r#"{"iss":7}"#).as_bytes(), 8192),
        Err(JwtError::InvalidClaim("iss"))
    );
    assert_eq!(
        unverified_issuer(t("[1]").as_bytes(), 8192),
        Err(JwtError::Malformed("payload"))
    );
    assert_eq!(
        unverified_issuer(b"a.b", 8192),
        Err(JwtError::Malformed("segments"))
    );
    assert_eq!(
        unverified_issuer(t("{}").as_bytes(), 10),
        Err(JwtError::TooLarge)
    );
    assert_eq!(
        unverified_issuer(b"x.eyJpc3MiOiJhIn0=.y", 8192),
        Err(JwtError::Malformed("payload")),
        "padding is not base64url"
    );
}
