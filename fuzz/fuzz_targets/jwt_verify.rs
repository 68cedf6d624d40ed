//! A token as it arrives in `authorization: Bearer …`, verified against one key of each
//! type (the fixed key set inside `gatehouse_core::authn::jwt::fuzz_verify`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gatehouse_core::authn::jwt::fuzz_verify(data));
