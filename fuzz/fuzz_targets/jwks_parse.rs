//! A JWKS document as fetched from an identity provider, and a single JWK as written in
//! a policy.
#![no_main]

use gatehouse_core::authn::jwt::{Alg, Key, parse_jwks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_jwks(data, None);
    let _ = parse_jwks(data, Some(Alg::PS256));
    let _ = Key::from_jwk(data, None);
});
