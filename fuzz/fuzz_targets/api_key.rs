//! Presented API keys and cached key records: the format check, the hash, the record
//! decoder. A decoded record must encode back to a record that decodes to itself.
#![no_main]

use gatehouse_core::authn::api_key::{KeyRecord, check_format, hash_presented_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_format(data);
    let _ = hash_presented_key(data);
    if let Some(record) = KeyRecord::decode(data) {
        let again = KeyRecord::decode(&record.encode());
        assert_eq!(again.as_ref(), Some(&record), "encode/decode round trip");
    }
});
