//! The offline key tool, run as a real process.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse-control"))
}

#[test]
fn hash_key_prints_the_sha256_the_plugin_looks_up() {
    let mut child = bin()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "ea4d1b2a0167d9569b431fc952792261ff21c7e8da3bb4e49b66fd9bf07ef55f"
    );
}

#[test]
fn new_key_prints_a_fresh_key_and_only_its_hash_in_the_policy_entry() {
    let run = || {
        let out = bin()
            .args(["new-key", "--prefix", "acme"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    let key_of = |s: &str| {
        s.lines()
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let key = key_of(&a);
    assert!(key.starts_with("acme_") && key.len() == 5 + 22 + 6, "{key}");
    assert_eq!(
        gatehouse_core::authn::api_key::check_format(key.as_bytes()),
        Ok(()),
        "{key}"
    );
    assert_ne!(key, key_of(&b), "two keys must differ");
    let entry = a.split("policy entry:").nth(1).unwrap();
    assert!(!entry.contains(&key));
    let hash = gatehouse_core::authn::api_key::KeyHash::of_key(key.as_bytes()).to_hex();
    assert!(entry.contains(&format!("sha256: {hash}")), "{entry}");
}

#[test]
fn a_bad_prefix_or_command_is_refused_with_usage() {
    let out = bin()
        .args(["new-key", "--prefix", "Bad-Prefix"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[test]
fn new_key_draws_its_id_apart_from_the_secret() {
    for _ in 0..20 {
        let out = bin().arg("new-key").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let key = text.lines().next().unwrap().rsplit(' ').next().unwrap();
        let random = key.strip_prefix("ghk_").unwrap();
        let id = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("- id: "))
            .unwrap();
        let id_random = id.strip_prefix("key_").unwrap();
        assert_eq!(id_random.len(), 16, "{id}");
        assert!(gatehouse_core::authn::api_key::is_valid_id(id), "{id}");
        for i in 0..=id_random.len() - 8 {
            let window = &id_random[i..i + 8];
            assert!(!random.contains(window), "{id} and {key} share {window}");
        }
    }
}

#[test]
fn new_token_prints_a_token_serve_accepts() {
    let run = || {
        let out = bin().arg("new-token").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.lines().count(), 1, "{a}");
    let token = a.trim_end();
    assert_eq!(token.len(), 43, "{token}");
    assert!(token.bytes().all(|c| c.is_ascii_alphanumeric()), "{token}");
    assert_eq!(gatehouse_control::config::token_problem(token), None);
    assert_ne!(a, b, "two tokens must differ");
}
