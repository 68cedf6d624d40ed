//! Body limits through the real module in the harness (`policies/webhooks.yaml`): a
//! declared `Content-Length` over the limit is refused before any body is read, a body
//! without one is counted as it streams (held or not) and refused once over, and JSON
//! routes cap strings and arrays and refuse what is not JSON.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod webhook_fixtures;

use gatehouse_harness::envoy::default_wasm;
use gatehouse_harness::host::{Harness, Outcome, Request};
use webhook_fixtures::*;

const MB: usize = 1 << 20;
const KB: usize = 1 << 10;

fn harness() -> Harness {
    let mut b = Harness::builder(default_wasm())
        .plugin_config(policy_json())
        .time(T0_NANOS)
        .allow_on_headers_stop_iteration(true);
    for (k, v) in env() {
        b = b.env(&k, &v);
    }
    b.build().unwrap()
}

fn post(path: &str, body: Vec<u8>) -> Request {
    Request::post(path).body(body)
}

fn declared(path: &str, body: Vec<u8>) -> Request {
    let len = body.len().to_string();
    post(path, body).header("content-length", len)
}

fn assert_refused(out: &Outcome, status: u16, code: &str) {
    assert_eq!(out.status, status, "{}", out.text());
    assert!(out.local_response);
    assert!(out.upstream.is_none());
    assert_eq!(out.json()["code"], code, "{}", out.text());
}

fn reads(h: &Harness) -> u64 {
    h.host_calls("proxy_get_buffer_bytes")
}

#[test]
fn a_declared_length_over_the_limit_is_413_before_any_body_is_read() {
    let mut h = harness();
    for (path, limit) in [("/v1/notes", 16), ("/v1/anything", MB), ("/v1/orders", MB)] {
        let before = reads(&h);
        let out = h
            .request(declared(path, vec![b'x'; limit + 1]).chunked(4 * KB))
            .unwrap();
        assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
        assert_eq!(out.json()["error"], "the request body is too large");
        assert_eq!(reads(&h), before, "{path}: the body was read");
    }
}

#[test]
fn a_streamed_body_without_length_is_refused_once_over_and_passes_at_the_limit() {
    let mut h = harness();
    // Streamed (no webhook, no JSON rules): counted, never copied into the VM.
    let before = reads(&h);
    let out = h
        .request(post("/v1/anything", vec![b'x'; MB]).chunked(64 * KB))
        .unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.upstream.unwrap().body.len(), MB);
    assert_eq!(reads(&h), before, "a streamed body was copied into the VM");
    let out = h
        .request(post("/v1/anything", vec![b'x'; MB + 1]).chunked(64 * KB))
        .unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
    // 8MB on the uploads route, one byte more is refused.
    let out = h
        .request(post("/v1/uploads/big", vec![b'u'; 8 * MB]).chunked(256 * KB))
        .unwrap();
    assert_eq!(out.status, 200);
    let out = h
        .request(post("/v1/uploads/big", vec![b'u'; 8 * MB + 1]).chunked(256 * KB))
        .unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
    // One byte at a time on the 16-byte route.
    let out = h
        .request(post("/v1/notes", vec![b'n'; 16]).chunked(1))
        .unwrap();
    assert_eq!(out.status, 200);
    let out = h
        .request(post("/v1/notes", vec![b'n'; 17]).chunked(1))
        .unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
}

#[test]
fn json_routes_cap_strings_and_arrays_and_refuse_what_is_not_json() {
    let mut h = harness();
    let string = |n: usize| format!("{{\"note\":\"{}\"}}", "s".repeat(n)).into_bytes();
    let array = |n: usize| {
        let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("{{\"items\":[{}]}}", items.join(",")).into_bytes()
    };
    for (body, expect) in [
        (string(256 * KB), None),
        (string(256 * KB + 1), Some((413, "JSON_LIMIT_EXCEEDED"))),
        (array(100), None),
        (array(101), Some((413, "JSON_LIMIT_EXCEEDED"))),
        (b"{\"a\":1".to_vec(), Some((400, "MALFORMED_BODY"))),
        (b"{\"a\":1}{}".to_vec(), Some((400, "MALFORMED_BODY"))),
        (b"\xef\xbb\xbf{}".to_vec(), Some((400, "MALFORMED_BODY"))),
        (b"{\"a\":\"\xff\"}".to_vec(), Some((400, "MALFORMED_BODY"))),
        (
            format!("{}{}", "[".repeat(129), "]".repeat(129)).into_bytes(),
            Some((413, "JSON_LIMIT_EXCEEDED")),
        ),
    ] {
        for chunk in [1, 333, 64 * KB] {
            let out = h
                .request(post("/v1/orders", body.clone()).chunked(chunk))
                .unwrap();
            match expect {
                None => {
                    assert_eq!(out.status, 200, "{}", out.text());
                    assert_eq!(out.upstream.unwrap().body, body);
                }
                Some((status, code)) => assert_refused(&out, status, code),
            }
        }
    }
    // A body without JSON rules on another route is not judged.
    let out = h
        .request(post("/v1/anything", b"{not json".to_vec()))
        .unwrap();
    assert_eq!(out.status, 200);
}

#[test]
fn an_oversized_string_is_refused_while_it_streams_in() {
    let mut h = harness();
    // 300KB string in 1KB pieces: refused at the piece that crosses 256KB, long before
    // the body would end (Content-Length says 1MB is coming).
    let mut body = b"{\"note\":\"".to_vec();
    body.extend(std::iter::repeat_n(b's', 300 * KB));
    let before = reads(&h);
    let out = h.request(post("/v1/orders", body).chunked(KB)).unwrap();
    assert_refused(&out, 413, "JSON_LIMIT_EXCEEDED");
    let pieces = reads(&h) - before;
    assert!(pieces < 260, "read {pieces} pieces of 1KB before refusing");
}

#[test]
fn a_large_held_body_within_its_limit_passes() {
    let mut h = harness();
    let mut body = b"{\"data\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'd', 4 * MB - 12));
    body.extend_from_slice(b"\"}");
    assert!(body.len() <= 4 * MB);
    let out = h
        .request(post("/v1/imports", body.clone()).chunked(64 * KB))
        .unwrap();
    assert_eq!(out.status, 200, "{}", out.text());
    assert_eq!(out.upstream.unwrap().body.len(), body.len());
    body.extend(std::iter::repeat_n(b' ', 4 * MB + 1 - body.len()));
    let out = h
        .request(post("/v1/imports", body).chunked(64 * KB))
        .unwrap();
    assert_refused(&out, 413, "PAYLOAD_TOO_LARGE");
}
