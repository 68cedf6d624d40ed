//! What the adversarial suites (harness and Envoy) compute as an attacker would.

use gatehouse_core::limit::slot_table::SlotTable;

/// Client addresses (`10.x.y.z`) whose anonymous limiter entries would land on a known
/// user's plan-limit slots if slots were placed as they were before they were keyed with
/// a secret and split by caller kind: `SHA-256(limit ‖ 0 ‖ caller)` in one `rl` table of
/// `slots`. The first `n` such addresses, searching at most 400,000 (a table of 1,024
/// slots gives one in about 64).
pub fn addresses_aimed_at(plan: &str, user: &str, slots: u32, n: usize) -> Vec<String> {
    let unkeyed = SlotTable { name: "rl", slots };
    let victim_caller = ["u:", user].concat();
    let victim = unkeyed.place(
        ["plan:", plan].concat().as_bytes(),
        victim_caller.as_bytes(),
    );
    (0..400_000u32)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .filter(|a| {
            let p = unkeyed.place(b"anonymous", ["ip:", a].concat().as_bytes());
            p.candidates()
                .iter()
                .any(|c| victim.candidates().contains(c))
        })
        .take(n)
        .collect()
}
