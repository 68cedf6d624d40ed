//! The policy as Envoy hands it to the VM (JSON): any bytes must give a policy or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gatehouse_core::policy::Policy::from_json(data);
});
