//! A policy file as people write it (YAML, the `yaml` feature): the positioned YAML reader
//! and the decoder behind it, on any text. A policy that loads must give Envoy JSON that
//! loads to the same policy, and every error must name a position inside the text.
#![no_main]

use gatehouse_core::policy::{Policy, load_yaml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_yaml("fuzz.yaml", text) {
        Ok(loaded) => {
            let again = Policy::from_json(loaded.plugin_config_json.as_bytes())
                .expect("the JSON made from a loaded policy loads");
            assert_eq!(again.routes, loaded.policy.routes, "routes differ");
            assert_eq!(again.fingerprint, loaded.policy.fingerprint);
        }
        Err(errors) => {
            // YAML breaks lines on CR as well as LF: at most one line per either, plus one,
            // plus one more for an error at the end of the stream, reported past the end.
            let lines = text.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count() + 2;
            for e in &errors.errors {
                if let Some(pos) = e.pos {
                    assert!(pos.line >= 1 && pos.line <= lines, "{e:?} in {lines} lines");
                }
            }
        }
    }
});
