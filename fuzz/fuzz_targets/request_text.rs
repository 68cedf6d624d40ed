//! The request path's own readers and writers of untrusted text: the host's serialized
//! header map (read in place, never past its end), and the JSON strings of refusal
//! bodies (escaped by hand: serde_json must read back exactly what went in).
#![no_main]

use gatehouse_core::request::header_map::{pairs, serialize};
use gatehouse_core::text::push_json_string;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whatever the bytes, the pairs read are a well-formed map of their own.
    let read: Vec<(&[u8], &[u8])> = pairs(data).collect();
    let bytes = serialize(&read);
    let again: Vec<(&[u8], &[u8])> = pairs(&bytes).collect();
    assert_eq!(again, read, "serialize/pairs round trip");
    let text = String::from_utf8_lossy(data);
    let mut out = String::new();
    push_json_string(&mut out, &text);
    let back: String = serde_json::from_str(&out).expect("valid JSON string");
    assert_eq!(back, text, "JSON string round trip");
});
