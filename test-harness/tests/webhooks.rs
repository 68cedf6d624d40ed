//! Webhook signatures through the real module in the harness (`policies/webhooks.yaml`):
//! every provider accepted with signatures computed here, bodies in many small chunks,
//! and every refusal (tampered body, wrong secret, old or future timestamp, missing or
//! duplicated header, replay, also 23 hours later where no timestamp is signed), each
//! answered with the standard body and never seen by the upstream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod webhook_fixtures;

use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{BuildError, Harness, HarnessBuilder, Outcome, Request};
use std::time::Duration;
use webhook_fixtures::*;

const HOUR: u64 = 3600;

fn builder() -> HarnessBuilder {
    let mut b = Harness::builder(default_wasm())
        .plugin_config(policy_json())
        .time(T0_NANOS)
        .allow_on_headers_stop_iteration(true);
    for (k, v) in env() {
        b = b.env(&k, &v);
    }
    b
}

fn harness() -> Harness {
    builder().build().unwrap()
}

fn post(path: &str, headers: &[(String, String)], body: &[u8]) -> Request {
    let mut r = Request::post(path).body(body.to_vec());
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r
}

fn assert_refused(out: &Outcome, status: u16, code: &str) {
    assert_eq!(out.status, status, "{}", out.text());
    assert!(out.local_response);
    assert!(out.upstream.is_none(), "the upstream saw a refused webhook");
    let body = out.json();
    assert_eq!(body["code"], code, "{body}");
    // The standard shape's four fields and nothing else (serde_json sorts the names).
    let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        ["code", "error", "request_id", "timestamp"],
        "{body}"
    );
    assert_eq!(out.header("content-type"), Some("application/json"));
}

#[test]
fn every_provider_is_accepted_with_its_body_in_one_byte_chunks() {
    let mut h = harness();
    for (provider, secret, _) in PROVIDERS {
        for chunk in [1, 7, 64, 4096] {
            // A fresh message each time, or the replay caches would refuse it.
            let body = event_body(300 + chunk);
            let (path, headers) = signed(provider, secret, T0, &body);
            let out = h
                .request(post(&path, &headers, &body).chunked(chunk))
                .unwrap();
            assert_eq!(out.status, 200, "{provider} chunk {chunk}: {}", out.text());
            let up = out.upstream.unwrap();
            assert_eq!(up.body, body, "{provider}: the upstream got another body");
            let (name, value) = &headers[0];
            assert_eq!(up.header(name), Some(value.as_str()), "{provider}");
        }
    }
    h.assert_no_trap().unwrap();
}

#[test]
fn githubs_documented_example_passes_and_slacks_does_at_its_own_time() {
    let mut h = harness();
    let out = h
        .request(post(
            "/webhooks/github",
            &[(
                "x-hub-signature-256".into(),
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
            )],
            b"Hello, World!",
        ))
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.upstream.unwrap().body, b"Hello, World!");

    // https://api.slack.com/authentication/verifying-requests-from-slack
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let headers = [
        (
            "x-slack-signature".to_string(),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503".to_string(),
        ),
        (
            "x-slack-request-timestamp".to_string(),
            "1531420618".to_string(),
        ),
    ];
    let mut then = builder()
        .time(1_531_420_618 * 1_000_000_000 + 42_000_000_000)
        .build()
        .unwrap();
    let out = then
        .request(post("/webhooks/slack", &headers, body.as_bytes()).chunked(5))
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
    // Our own copy of the basestring agrees with Slack's published signature.
    assert_eq!(
        slack(SLACK_SECRET, 1_531_420_618, body.as_bytes()).0,
        headers[0].1
    );
}

#[test]
fn a_tampered_body_or_another_secret_is_invalid_signature_and_never_echoes_the_signature() {
    let mut h = harness();
    for (provider, secret, _) in PROVIDERS {
        let body = event_body(200);
        let (path, headers) = signed(provider, secret, T0, &body);
        let mut tampered = body.clone();
        tampered[100] ^= 0x01;
        let out = h
            .request(post(&path, &headers, &tampered).chunked(3))
            .unwrap();
        assert_refused(&out, 401, "INVALID_SIGNATURE");
        assert_eq!(
            out.json()["error"],
            "the webhook signature is missing or invalid"
        );
        assert!(out.header("www-authenticate").is_some());
        // Neither the signature we expected (the one for the tampered body) nor the
        // string that was signed appears anywhere in the answer.
        let (_, expected) = signed(provider, secret, T0, &tampered);
        let answer = format!("{:?} {}", out.headers, out.text());
        for (_, v) in &expected {
            assert!(!answer.contains(v.as_str()), "{provider}: echoed {v}");
        }
        assert!(!answer.contains("evt_0001"), "{provider}: echoed the body");

        let (_, wrong) = signed(provider, WRONG_SECRET, T0, &body);
        let out = h.request(post(&path, &wrong, &body)).unwrap();
        assert_refused(&out, 401, "INVALID_SIGNATURE");
    }
}

#[test]
fn an_old_or_future_timestamp_is_signature_expired_before_the_body_is_read() {
    let mut h = harness();
    for (provider, secret, _) in PROVIDERS.into_iter().filter(|p| p.2) {
        let body = event_body(100);
        for ts in [T0 - 301, T0 + 301, 1_000_000_000] {
            let (path, headers) = signed(provider, secret, ts, &body);
            let reads = h.host_calls("proxy_get_buffer_bytes");
            let out = h.request(post(&path, &headers, &body).chunked(10)).unwrap();
            assert_refused(&out, 401, "SIGNATURE_EXPIRED");
            assert_eq!(
                out.json()["error"],
                "the webhook timestamp is outside the allowed window"
            );
            assert_eq!(
                h.host_calls("proxy_get_buffer_bytes"),
                reads,
                "{provider}: read the body"
            );
        }
        // The edges of the default 5-minute window are inside it.
        for ts in [T0 - 300, T0 + 300] {
            let body = [&body[..], &ts.to_be_bytes()].concat();
            let (path, headers) = signed(provider, secret, ts, &body);
            let out = h.request(post(&path, &headers, &body)).unwrap();
            assert_eq!(out.status, 200, "{provider} at {ts}: {}", out.text());
        }
    }
}

#[test]
fn missing_duplicated_or_malformed_headers_are_invalid_signature() {
    let mut h = harness();
    for (provider, secret, timed) in PROVIDERS {
        let body = event_body(50);
        let (path, headers) = signed(provider, secret, T0, &body);
        let out = h.request(post(&path, &[], &body)).unwrap();
        assert_refused(&out, 401, "INVALID_SIGNATURE");
        // Sent twice: which would the upstream believe?
        let twice: Vec<(String, String)> = headers
            .iter()
            .cloned()
            .chain(std::iter::once(headers[0].clone()))
            .collect();
        let out = h.request(post(&path, &twice, &body)).unwrap();
        assert_refused(&out, 401, "INVALID_SIGNATURE");
        if timed && headers.len() == 2 {
            // The timestamp header alone is missing.
            let out = h.request(post(&path, &headers[..1], &body)).unwrap();
            assert_refused(&out, 401, "INVALID_SIGNATURE");
        }
        let garbage = [(headers[0].0.clone(), "v1=not-a-signature".to_string())];
        let out = h.request(post(&path, &garbage, &body)).unwrap();
        assert_refused(&out, 401, "INVALID_SIGNATURE");
    }
}

#[test]
fn a_stripe_replay_is_refused_on_any_worker_until_its_window_ends() {
    let mut h = builder().workers(2).build().unwrap();
    let body = event_body(120);
    let (path, headers) = signed("stripe", STRIPE_SECRET, T0, &body);
    let first = h.request_on(0, post(&path, &headers, &body)).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    for worker in [1, 0] {
        let again = h
            .request_on(worker, post(&path, &headers, &body).chunked(9))
            .unwrap();
        assert_refused(&again, 401, "INVALID_SIGNATURE");
    }
    // A re-spelled header (upper-case hex, v1 first) is the same message.
    let respelled = headers[0]
        .1
        .to_uppercase()
        .replace("T=", "t=")
        .replace("V1=", "v1=");
    let out = h
        .request(post(
            &path,
            &[("stripe-signature".into(), respelled)],
            &body,
        ))
        .unwrap();
    assert_refused(&out, 401, "INVALID_SIGNATURE");
    // Past the window the message is refused anyway, as expired.
    h.advance(std::time::Duration::from_secs(301)).unwrap();
    let late = h.request(post(&path, &headers, &body)).unwrap();
    assert_refused(&late, 401, "SIGNATURE_EXPIRED");
}

#[test]
fn a_delivery_without_a_timestamp_is_refused_as_a_replay_on_any_worker_for_24_hours() {
    // github says nothing of a replay cache, so it gets the default of a provider without
    // a signed timestamp (65,536 slots); shop sizes its own.
    let mut h = builder().workers(2).build().unwrap();
    for (route, slots) in [("github", 65_536), ("shop", 4096)] {
        let keys = h.shared_data_keys(&format!("wh/{route}/{slots}/"));
        assert_eq!(
            keys.len(),
            slots + 1,
            "{route}: the slots and the ready marker"
        );
    }
    let deliveries: Vec<_> = ["github", "shop"]
        .into_iter()
        .map(|provider| {
            let secret = PROVIDERS.iter().find(|p| p.0 == provider).unwrap().1;
            let body = event_body(140);
            let (path, headers) = signed(provider, secret, T0, &body);
            let out = h.request_on(0, post(&path, &headers, &body)).unwrap();
            assert_eq!(out.status, 200, "{provider}: {}", out.text());
            (provider, path, headers, body)
        })
        .collect();
    let replay = |h: &mut Harness, worker: usize, when: &str| {
        for (provider, path, headers, body) in &deliveries {
            let out = h
                .request_on(worker, post(path, headers, body).chunked(11))
                .unwrap();
            assert_refused(&out, 401, "INVALID_SIGNATURE");
            assert_eq!(
                out.json()["error"],
                "the webhook signature is missing or invalid",
                "{provider} {when}"
            );
        }
    };
    // Past the 5-minute tolerance, which was all such a delivery used to be remembered
    // for; then 23 hours on; then the window's last second. Virtual time: every tick on
    // the way is delivered.
    h.advance(Duration::from_secs(5 * 60 + 1)).unwrap();
    replay(&mut h, 1, "after 5 minutes");
    h.advance(Duration::from_secs(23 * HOUR - 5 * 60 - 1))
        .unwrap();
    replay(&mut h, 0, "after 23 hours");
    h.advance(Duration::from_secs(HOUR - 1)).unwrap();
    replay(&mut h, 1, "at the window's last second");
    // Once the window has passed, nothing in the delivery tells it from a first one: it
    // is accepted again (the documented limit), and remembered for a new window.
    h.advance(Duration::from_secs(1)).unwrap();
    for (provider, path, headers, body) in &deliveries {
        let out = h.request_on(0, post(path, headers, body)).unwrap();
        assert_eq!(out.status, 200, "{provider} after 24 hours: {}", out.text());
        assert_eq!(out.upstream.unwrap().body, *body);
    }
    replay(&mut h, 1, "in the new window");
    h.assert_no_trap().unwrap();
}

#[test]
fn during_a_rotation_either_secret_verifies() {
    let mut h = harness();
    let body = event_body(80);
    for secrets in [
        &[STRIPE_SECRET][..],
        &[STRIPE_PREVIOUS_SECRET],
        &[WRONG_SECRET, STRIPE_PREVIOUS_SECRET],
    ] {
        let body = [
            &body[..],
            secrets.len().to_string().as_bytes(),
            secrets[0].as_bytes(),
        ]
        .concat();
        let header = stripe(secrets, T0, &body);
        let out = h
            .request(post(
                "/webhooks/stripe",
                &[("stripe-signature".into(), header)],
                &body,
            ))
            .unwrap();
        assert_eq!(out.status, 200, "{secrets:?}: {}", out.text());
    }
}

#[test]
fn a_webhook_body_over_the_route_limit_is_413_even_without_content_length() {
    let mut h = harness();
    let body = event_body(64 * 1024 + 1);
    let (path, headers) = signed("stripe", STRIPE_SECRET, T0, &body);
    // Chunked, no Content-Length: counted while held, refused once past 64KB.
    let out = h
        .request(post(&path, &headers, &body).chunked(1000))
        .unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
    // Declared: refused at the headers.
    let reads = h.host_calls("proxy_get_buffer_bytes");
    let declared = post(&path, &headers, &body).header("content-length", body.len().to_string());
    let out = h.request(declared).unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(h.host_calls("proxy_get_buffer_bytes"), reads);
    // Exactly at the limit it passes.
    let body = event_body(64 * 1024);
    let (_, headers) = signed("stripe", STRIPE_SECRET, T0, &body);
    let out = h
        .request(post(&path, &headers, &body).chunked(4096))
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
}

#[test]
fn a_missing_secret_refuses_the_configuration_naming_the_variable_only() {
    let mut b = Harness::builder(default_wasm())
        .plugin_config(policy_json())
        .time(T0_NANOS);
    for (k, v) in env()
        .into_iter()
        .filter(|(k, _)| k != "SLACK_SIGNING_SECRET")
    {
        b = b.env(&k, &v);
    }
    let Err(BuildError::ConfigureRejected { logs }) = b.build() else {
        panic!("the configuration was accepted without SLACK_SIGNING_SECRET");
    };
    let text: Vec<String> = logs.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    assert!(
        text.contains(
            "invalid policy: routes[1].webhook.secrets_env: the environment variable SLACK_SIGNING_SECRET is not set or empty"
        ),
        "{text}"
    );
    for (_, secret) in env() {
        assert!(!text.contains(&secret), "a secret is in the log:\n{text}");
    }
}

#[test]
fn a_full_replay_cache_refuses_with_a_retryable_503_not_an_upstream_error() {
    // A 16-slot cache, and upstream error replacement on (the 503 is gatehouse's own).
    let policy = serde_json::json!({
        "version": 1,
        "upstream_errors": { "replace": true },
        "rate_limit": { "anonymous": { "requests_per_minute": 100000 } },
        "routes": [ {
            "name": "hooks",
            "match": { "path": "/hooks" },
            "audience": "external",
            "webhook": {
                "provider": "github",
                "secrets_env": ["GITHUB_WEBHOOK_SECRET"],
                "replay_cache": { "slots": 16 }
            }
        } ]
    });
    let mut h = Harness::builder(default_wasm())
        .plugin_config(policy.to_string())
        .time(T0_NANOS)
        .allow_on_headers_stop_iteration(true)
        .env("GITHUB_WEBHOOK_SECRET", GITHUB_SECRET)
        .build()
        .unwrap();
    let mut unavailable = 0;
    for n in 0..40 {
        let body = format!("{{\"delivery\":{n}}}");
        let sig = github(GITHUB_SECRET, body.as_bytes());
        let out = h
            .request(post(
                "/hooks",
                &[("x-hub-signature-256".into(), sig)],
                body.as_bytes(),
            ))
            .unwrap();
        match out.status {
            200 => {}
            503 => {
                unavailable += 1;
                assert_refused(&out, 503, "AUTH_UNAVAILABLE");
                assert_eq!(out.header("retry-after"), Some("5"));
            }
            other => panic!("{other}: {}", out.text()),
        }
    }
    assert!(unavailable > 0, "16 slots held 40 live signatures");
}
