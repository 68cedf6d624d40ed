//! Webhook requests and JSON bodies: the signature header parsers of every provider and
//! the streaming JSON checker, on any bytes. Input: a selector byte (provider, piece
//! size), then `header \n timestamp \n body`. Whatever the pieces, a body must get the same
//! verdict as when it arrives whole, from the verifier and from the JSON checker.
#![no_main]

use gatehouse_core::body::json;
use gatehouse_core::body::webhook::{
    Algorithm, Encoding, Generic, Provider, Template, Verifier, Webhook, verify,
};
use gatehouse_core::request::Presented;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The secret every fuzz verifier uses (the seeds are signed with it).
const SECRET: &str = "fuzz-secret-0123456789abcdef";

fn verifiers() -> &'static [Verifier] {
    static V: OnceLock<Vec<Verifier>> = OnceLock::new();
    V.get_or_init(|| {
        let generic = |algorithm, encoding, prefix: Option<&str>, ts: Option<&str>, t: &str| {
            Provider::Generic(Generic {
                header: "x-sig".into(),
                algorithm,
                encoding,
                prefix: prefix.map(str::to_string),
                timestamp_header: ts.map(str::to_string),
                payload: Template::parse(t).unwrap(),
            })
        };
        [
            Provider::Stripe,
            Provider::Slack,
            Provider::Github,
            generic(
                Algorithm::Sha512,
                Encoding::Base64,
                Some("sha512="),
                Some("x-ts"),
                "{timestamp}.{body}",
            ),
            generic(Algorithm::Sha256, Encoding::Hex, None, None, "{body}"),
            generic(
                Algorithm::Sha256,
                Encoding::Base64,
                Some("v1,"),
                Some("x-ts"),
                "a{timestamp}b{body}c",
            ),
        ]
        .into_iter()
        .map(|provider| {
            let w = Webhook {
                provider,
                secrets_env: vec!["S".into(), "T".into()],
                tolerance_secs: 300,
                replay_window_secs: 86_400,
                replay_slots: None,
            };
            Verifier::new(&w, "fuzz", |n| {
                Some(format!("{SECRET}{}", if n == "T" { "-2" } else { "" }))
            })
            .unwrap()
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let header = parts.next().unwrap_or_default();
    let timestamp = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let piece = usize::from(selector >> 3) + 1;
    let all = verifiers();
    let v = &all[usize::from(selector & 7) % all.len()];
    let now = 1_767_225_600;

    let whole = verify(
        v,
        Presented::One(header),
        Presented::One(timestamp),
        body,
        now,
    );
    let pieces = v
        .begin(Presented::One(header), Presented::One(timestamp), now)
        .and_then(|mut p| {
            for chunk in body.chunks(piece) {
                p.update(chunk);
            }
            p.finish()
        });
    assert_eq!(whole, pieces, "the verdict depends on how the body arrived");

    let caps = (u64::from(selector % 17), u64::from(selector % 5));
    let whole = json::check(body, caps.0, caps.1);
    let mut scanner = json::Scanner::new(caps.0, caps.1);
    let mut streamed = Ok(());
    for chunk in body.chunks(piece) {
        streamed = scanner.feed(chunk);
        if streamed.is_err() {
            break;
        }
    }
    if streamed.is_ok() {
        streamed = scanner.finish();
    }
    assert_eq!(
        whole, streamed,
        "the JSON verdict depends on how the body arrived"
    );
    let _ = json::check(body, u64::MAX, u64::MAX);
});
