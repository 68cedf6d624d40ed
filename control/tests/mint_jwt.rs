//! `mint-jwt`, run as a real process; its tokens are checked with the plugin's own
//! verifier, as the plugin would check them.
#![allow(
    clippy::unwrap_used,
    reason = "the helpers below are test code too: a failure panics"
)]

use gatehouse_core::authn::jwt::{Alg, JwtError, Key, KeySet, Rules, verify};
use std::process::{Command, Output};

const SECRET: &str = "mint-jwt-test-secret-0123456789abcdefghijklmnop"; // 48 bytes

fn mint(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse-control"));
    cmd.arg("mint-jwt").args(args).env_remove("GH_TEST_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn token(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "one line, the token: {text}");
    text.trim().to_string()
}

#[allow(
    clippy::disallowed_methods,
    reason = "the minted iat is the wall clock"
)]
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn keys(alg: Alg, kid: Option<&str>) -> KeySet {
    KeySet::new(vec![
        Key::hmac(alg, SECRET.as_bytes(), kid.map(str::to_string)).unwrap(),
    ])
}

#[test]
fn a_minted_hs256_token_verifies_with_the_plugin_and_carries_the_identity() {
    let out = mint(
        &[("GH_TEST_SECRET", SECRET)],
        &[
            "--secret-env",
            "GH_TEST_SECRET",
            "--kid",
            "demo-hs256",
            "--sub",
            "user_demo",
            "--tenant",
            "tenant_demo",
            "--plan",
            "team",
            "--ttl",
            "600",
        ],
    );
    let tok = token(&out);
    assert!(!tok.contains(SECRET) && !String::from_utf8_lossy(&out.stderr).contains(SECRET));
    let before = now();
    let v = verify(
        tok.as_bytes(),
        &keys(Alg::HS256, Some("demo-hs256")),
        before,
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(v.claim_str("sub"), Some("user_demo"));
    assert_eq!(v.claim_str("tenant"), Some("tenant_demo"));
    assert_eq!(v.claim_str("plan"), Some("team"));
    assert!(
        v.claim_str("jti").is_some_and(|j| j.len() == 22),
        "a 128-bit jti"
    );

    // exp = iat + ttl: past it (and the default 60 s leeway) the token has expired.
    let later = before + 600 + 60 + 5;
    assert_eq!(
        verify(
            tok.as_bytes(),
            &keys(Alg::HS256, Some("demo-hs256")),
            later,
            &Rules::default()
        )
        .map(|_| ()),
        Err(JwtError::Expired)
    );
    // Another secret, or another kid, does not verify it.
    let other = KeySet::new(vec![
        Key::hmac(Alg::HS256, &[b'x'; 32], Some("demo-hs256".into())).unwrap(),
    ]);
    assert_eq!(
        verify(tok.as_bytes(), &other, before, &Rules::default()).map(|_| ()),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        verify(
            tok.as_bytes(),
            &keys(Alg::HS256, Some("other")),
            before,
            &Rules::default()
        )
        .map(|_| ()),
        Err(JwtError::UnknownKid)
    );
}

#[test]
fn two_tokens_get_different_jtis() {
    let args = ["--secret-env", "GH_TEST_SECRET"];
    let a = token(&mint(&[("GH_TEST_SECRET", SECRET)], &args));
    let b = token(&mint(&[("GH_TEST_SECRET", SECRET)], &args));
    let ks = keys(Alg::HS256, None);
    let jti = |t: &str| {
        verify(t.as_bytes(), &ks, now(), &Rules::default())
            .unwrap()
            .claim_str("jti")
            .unwrap()
            .to_string()
    };
    assert_ne!(jti(&a), jti(&b));
}

#[test]
fn hs384_and_hs512_tokens_verify_with_keys_of_that_algorithm() {
    for (name, alg) in [("HS384", Alg::HS384), ("HS512", Alg::HS512)] {
        let secret = "s".repeat(64);
        let out = mint(
            &[("GH_TEST_SECRET", &secret)],
            &["--secret-env", "GH_TEST_SECRET", "--alg", name],
        );
        let ks = KeySet::new(vec![Key::hmac(alg, secret.as_bytes(), None).unwrap()]);
        let tok = token(&out);
        assert!(
            verify(tok.as_bytes(), &ks, now(), &Rules::default()).is_ok(),
            "{name}"
        );
    }
}

#[test]
fn a_short_or_missing_secret_is_refused_with_a_clear_error_and_no_token() {
    let short = "only-31-bytes-of-secret-0123456";
    assert_eq!(short.len(), 31);
    let out = mint(
        &[("GH_TEST_SECRET", short)],
        &["--secret-env", "GH_TEST_SECRET"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GH_TEST_SECRET is 31 bytes") && err.contains("at least 32"),
        "{err}"
    );
    assert!(!err.contains(short), "the secret is never shown: {err}");

    let out = mint(&[], &["--secret-env", "GH_TEST_SECRET"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GH_TEST_SECRET is not set"));
}
