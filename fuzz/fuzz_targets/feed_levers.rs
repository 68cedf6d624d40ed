//! A cache feed answer from the control service, `levers` included, and the lookups the
//! request path makes in a set that parsed: untrusted bytes off the network must never
//! panic the sync or a worker.
#![no_main]

use gatehouse_core::levers::{self, Who};
use gatehouse_core::sync::feed::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_answer(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(set) = levers::parse(&value) else {
        return;
    };
    let who = Who {
        key_id: Some("key_1"),
        user: Some("user_1"),
        tenant: Some("tenant_1"),
        ip: "2001:db8::1".parse().ok(),
    };
    let _ = set.allowlisted(&who, "team");
    let v4 = Who {
        ip: "203.0.113.7".parse().ok(),
        ..who
    };
    let _ = set.allowlisted(&v4, "anonymous");
    let _ = set.override_for(Some("key_1"), Some("tenant_1"), 1_767_225_600);
    let _ = set.mode("team");
    let _ = set.rule_mode("webhook:", "stripe");
});
