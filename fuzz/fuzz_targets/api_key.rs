//! Presented API keys and cached key records: the format check, the hash, the record
//! decoder. A decoded record must encode back to the same bytes (the format has one
//! spelling per record) and decode to itself.
#![no_main]

use gatehouse_core::authn::api_key::{KeyRecord, check_format, hash_presented_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_format(data);
    let _ = hash_presented_key(data);
    if let Some((hash, record)) = KeyRecord::decode(data) {
        let bytes = record.encode(&hash).expect("a decoded record encodes");
        assert_eq!(bytes, data, "one spelling per record");
        let again = KeyRecord::decode(&bytes);
        assert_eq!(again, Some((hash, record)), "encode/decode round trip");
    }
});
