//! The sync's side of fleet-scoped limits ([`crate::limit::fleet`]): merges the workers'
//! tallies, sends them to the control service every `sync_interval` (one exchange in
//! flight at a time), and folds the fleet's states it answers with into the local slots.
//! The contract: control/FLEET.md.

use crate::limit::Table;
use crate::limit::fleet::{self, Member, State, Used, View};
use crate::store::SharedStore;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Members waiting to be reported, at most; admissions of further members are dropped
/// (and counted): the fleet then undercounts them.
pub const MAX_PENDING: usize = 100_000;
/// Members reported per exchange, at most (the control service's bound); the rest go
/// with the next one, which is sent at once.
pub const MAX_USED_PER_EXCHANGE: usize = 10_000;
/// The largest exchange body sent: under the control service's 4 MiB limit whatever the
/// names hold (control/FLEET.md).
pub const MAX_BODY_BYTES: usize = 3 << 20;
/// An answer larger than this is refused unread.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;
/// How long an exchange may take before Envoy gives up on it.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The key poll waits this long at start for the first exchange (so that a fresh Envoy
/// knows the fleet's consumption before it accepts any key), then goes ahead.
pub const FIRST_EXCHANGE_GRACE_NANOS: u64 = 2_000_000_000;
/// The longest `ahead` believed: twice the longest period a limit may have (7 days).
const MAX_AHEAD_NANOS: u64 = 14 * 86_400 * 1_000_000_000;

/// What the sync does with an exchange's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// Fleet states that moved a local slot, and those that found no room.
    pub applied: fleet::Applied,
    /// States in the answer that break the contract (skipped).
    pub skipped: u64,
    /// Proxies the control service counts (on success).
    pub proxies: u32,
    /// Why it failed, for the log.
    pub why: Option<String>,
    /// Whether this exchange failed after the last one succeeded (or vice versa): the
    /// sync logs changes of state only, not every failure.
    pub changed: bool,
}

/// The exchange's state between ticks.
pub struct Exchange {
    interval_nanos: u64,
    table: Table,
    proxy: String,
    /// Admissions merged from worker batches, not yet sent.
    pending: HashMap<Member, Used>,
    /// What the exchange in flight (or being handed to the plugin) carries: merged back
    /// if it fails.
    sent: Option<Vec<Used>>,
    /// The token of the exchange in flight (0 while being handed to the plugin).
    token: Option<u32>,
    /// When the last exchange went out (unix ns).
    sent_at: u64,
    /// The control service's cursor after the last answer.
    cursor: Option<String>,
    /// The last answer said more states are waiting: exchange again at once.
    more: bool,
    /// When this sync started, and whether its first exchange has been answered.
    started: u64,
    first_done: bool,
    /// The last exchange failed.
    failing: bool,
    /// Admissions dropped for lack of room, not yet counted in a metric.
    dropped: u64,
}

impl Exchange {
    pub fn new(table: Table, interval_ms: u64, proxy: Option<String>, now: u64) -> Exchange {
        Exchange {
            interval_nanos: interval_ms.saturating_mul(1_000_000),
            table,
            proxy: proxy.unwrap_or_else(|| "envoy".to_string()),
            pending: HashMap::new(),
            sent: None,
            token: None,
            sent_at: 0,
            cursor: None,
            more: false,
            started: now,
            first_done: false,
            failing: false,
            dropped: 0,
        }
    }

    /// Whether the key poll should wait for the first exchange.
    pub fn holds_first_poll(&self, now: u64) -> bool {
        !self.first_done && now.saturating_sub(self.started) < FIRST_EXCHANGE_GRACE_NANOS
    }

    /// Merges one worker batch ([`fleet::encode`]); `false` if it is not one.
    pub fn merge(&mut self, batch: &[u8]) -> bool {
        let Some(used) = fleet::decode(batch) else {
            return false;
        };
        for u in used {
            self.add(u);
        }
        true
    }

    fn add(&mut self, u: Used) {
        if let Some(p) = self.pending.get_mut(&u.member) {
            p.n = p.n.saturating_add(u.n);
            p.rate = u.rate;
        } else if self.pending.len() < MAX_PENDING {
            self.pending.insert(u.member.clone(), u);
        } else {
            self.dropped = self.dropped.saturating_add(u64::from(u.n));
        }
    }

    /// Admissions dropped for lack of room since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The exchange's body, when one is due at `now` and none is in flight: every
    /// `sync_interval`, or at once while the control service has more to send.
    pub fn due(&mut self, now: u64) -> Option<String> {
        if self.sent.is_some() {
            return None;
        }
        if !self.more && self.sent_at != 0 && now.saturating_sub(self.sent_at) < self.interval_nanos
        {
            return None;
        }
        // At most MAX_USED_PER_EXCHANGE entries and MAX_BODY_BYTES of JSON (names are
        // escaped at most six bytes per byte, with ~110 bytes of fields around them).
        let mut bytes = 0usize;
        let keys: Vec<Member> = self
            .pending
            .keys()
            .take(MAX_USED_PER_EXCHANGE)
            .take_while(|m| {
                bytes = bytes.saturating_add(6 * (m.limit.len() + m.caller.len()) + 110);
                bytes <= MAX_BODY_BYTES
            })
            .cloned()
            .collect();
        let used: Vec<Used> = keys.iter().filter_map(|k| self.pending.remove(k)).collect();
        let body = json!({
            "proxy": self.proxy,
            "cursor": self.cursor,
            "used": used.iter().map(|u| json!({
                "limit": u.member.limit,
                "caller": u.member.caller,
                "kind": u.member.kind.as_str(),
                "n": u.n,
                "requests": u.rate.requests,
                "period_ms": (u.rate.period_nanos / 1_000_000).max(1),
                "burst": u.rate.burst,
            })).collect::<Vec<_>>(),
        })
        .to_string();
        self.more = !self.pending.is_empty();
        self.sent = Some(used);
        self.token = Some(0);
        self.sent_at = now;
        Some(body)
    }

    /// The exchange handed out by [`Exchange::due`] went out as `token`.
    pub fn sent(&mut self, token: u32) {
        if self.sent.is_some() {
            self.token = Some(token);
        }
    }

    /// Whether the exchange in flight has gone unanswered well past its timeout (Envoy
    /// always answers a dispatched call; this guards against a host that does not).
    pub fn stuck(&self, now: u64) -> bool {
        let limit = u64::try_from(TIMEOUT.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(5);
        self.sent.is_some() && now.saturating_sub(self.sent_at) > limit
    }

    /// Whether `token` is the exchange in flight.
    pub fn owns(&self, token: u32) -> bool {
        self.token == Some(token) && token != 0
    }

    /// The exchange in flight failed (not sent, no answer, or an error status): what it
    /// carried is merged back in front of what arrived since.
    pub fn failed(&mut self, why: String) -> Outcome {
        if let Some(sent) = self.sent.take() {
            for u in sent {
                self.add(u);
            }
        }
        self.token = None;
        self.first_done = true;
        self.more = false;
        let changed = !self.failing;
        self.failing = true;
        Outcome {
            why: Some(why),
            changed,
            ..Outcome::default()
        }
    }

    /// The answer to the exchange in flight: `status` and its body (read by `read_body`
    /// only for a 200 that is not too large).
    pub fn answered(
        &mut self,
        store: &impl SharedStore,
        now: u64,
        status: &[u8],
        body_size: usize,
        read_body: impl FnOnce(usize) -> Vec<u8>,
    ) -> Outcome {
        if status != b"200" {
            let shown = if status.is_empty() {
                "no answer (timeout or connection failure)".to_string()
            } else {
                format!("status {}", String::from_utf8_lossy(status))
            };
            return self.failed(shown);
        }
        if body_size > MAX_ANSWER_BYTES {
            return self.failed(format!("answer of {body_size} bytes, over the limit"));
        }
        let Some(answer) = parse(&read_body(body_size)) else {
            return self.failed("an answer that breaks the contract".to_string());
        };
        self.sent = None;
        self.token = None;
        self.first_done = true;
        self.cursor = Some(answer.cursor);
        self.more |= answer.more;
        let applied = fleet::apply(store, &self.table, &answer.states, now);
        let view = View {
            ok_at: now,
            proxies: answer.proxies.max(1),
        };
        let stored = view.write(store);
        let changed = self.failing;
        self.failing = stored.is_err();
        Outcome {
            ok: stored.is_ok(),
            applied,
            skipped: answer.skipped,
            proxies: view.proxies,
            why: stored
                .err()
                .map(|e| format!("could not write to shared data: {e:?}")),
            changed,
        }
    }
}

/// An exchange's answer, read.
struct Answer {
    cursor: String,
    more: bool,
    proxies: u32,
    states: Vec<State>,
    skipped: u64,
}

/// Reads an answer; `None` if it is not the contract's object. A state that breaks the
/// contract is skipped and counted.
fn parse(body: &[u8]) -> Option<Answer> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let cursor = v.get("cursor")?.as_str()?.to_string();
    let more = v.get("more").and_then(Value::as_bool).unwrap_or(false);
    let proxies = v
        .get("proxies")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(1);
    let mut skipped = 0;
    let mut states = Vec::new();
    for s in v.get("states")?.as_array()? {
        let state = (|| {
            let limit = s.get("limit")?.as_str()?;
            let caller = s.get("caller")?.as_str()?;
            let kind = fleet::Kind::parse(s.get("kind")?.as_str()?)?;
            let ahead = s.get("ahead_us")?.as_u64()?.checked_mul(1_000)?;
            let fits = |t: &str| !t.is_empty() && t.len() <= fleet::MAX_NAME_LEN;
            (fits(limit) && fits(caller) && ahead <= MAX_AHEAD_NANOS).then(|| State {
                member: Member {
                    kind,
                    limit: limit.to_string(),
                    caller: caller.to_string(),
                },
                ahead_nanos: ahead,
            })
        })();
        match state {
            Some(state) => states.push(state),
            None => skipped += 1,
        }
    }
    Some(Answer {
        cursor,
        more,
        proxies,
        states,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::fleet::{Kind, Tally};
    use crate::limit::{CallerKind, Check, OnContention, Rate, check_all, prepare};
    use crate::store::MemoryStore;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;
    const T0: u64 = 1_767_225_600 * SEC;

    fn table() -> Table {
        Table {
            slots: 1024,
            address_slots: 1024,
            on_contention: OnContention::Refuse,
        }
    }

    fn rate() -> Rate {
        Rate {
            requests: 60,
            period_nanos: 60 * SEC,
            burst: 60,
        }
    }

    fn batch(callers: &[(&str, u32)]) -> Vec<u8> {
        let tally = Tally::default();
        for (caller, n) in callers {
            for _ in 0..*n {
                tally.record(&Check {
                    limit: "plan:free",
                    caller,
                    rate: rate(),
                    kind: CallerKind::Identified,
                });
            }
        }
        tally.take_batch().unwrap()
    }

    fn used_of(body: &str) -> Vec<(String, u64)> {
        let v: Value = serde_json::from_str(body).unwrap();
        let mut out: Vec<(String, u64)> = v["used"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["caller"].as_str().unwrap().to_string(),
                    u["n"].as_u64().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn ok_answer(cursor: &str, more: bool, states: Value) -> Vec<u8> {
        json!({"cursor": cursor, "more": more, "proxies": 3, "states": states})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn merged_tallies_go_out_every_interval_with_the_cursor() {
        let mut x = Exchange::new(table(), 250, Some("envoy-a".into()), T0);
        assert!(x.merge(&batch(&[("u:a", 2)])));
        assert!(x.merge(&batch(&[("u:a", 1), ("u:b", 1)])));
        assert!(!x.merge(b"junk"));
        let body = x.due(T0).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["proxy"], "envoy-a");
        assert_eq!(v["cursor"], Value::Null);
        assert_eq!(v["used"][0]["requests"], 60);
        assert_eq!(v["used"][0]["period_ms"], 60_000);
        assert_eq!(v["used"][0]["kind"], "i");
        assert_eq!(used_of(&body), [("u:a".into(), 3), ("u:b".into(), 1)]);
        assert_eq!(x.due(T0 + SEC), None, "one in flight at a time");
        assert!(!x.stuck(T0 + SEC));
        assert!(x.stuck(T0 + 11 * SEC));
        x.sent(7);
        assert!(x.owns(7));
        let store = MemoryStore::default();
        let out = x.answered(&store, T0 + 10 * MS, b"200", 0, |_| {
            ok_answer("41", false, json!([]))
        });
        assert!(out.ok && !out.changed);
        assert_eq!(out.proxies, 3);
        assert!(!x.owns(7));
        assert_eq!(x.due(T0 + 200 * MS), None, "not yet");
        let body = x.due(T0 + 250 * MS).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["cursor"], "41");
        assert!(
            used_of(&body).is_empty(),
            "an empty exchange still fetches news"
        );
    }

    #[test]
    fn a_failed_exchange_keeps_its_counts_for_the_next_and_logs_once() {
        let mut x = Exchange::new(table(), 250, None, T0);
        x.merge(&batch(&[("u:a", 2)]));
        x.due(T0).unwrap();
        x.sent(1);
        x.merge(&batch(&[("u:a", 1)]));
        let store = MemoryStore::default();
        let out = x.answered(&store, T0, b"503", 0, |_| unreachable!());
        assert!(!out.ok && out.changed);
        assert_eq!(out.why.as_deref(), Some("status 503"));
        let body = x.due(T0 + 250 * MS).unwrap();
        assert_eq!(used_of(&body), [("u:a".into(), 3)]);
        x.sent(2);
        let again = x.failed("not sent".into());
        assert!(!again.changed, "still failing: not logged again");
        x.due(T0 + 500 * MS).unwrap();
        x.sent(3);
        let back = x.answered(&store, T0 + 500 * MS, b"200", 0, |_| {
            ok_answer("1", false, json!([]))
        });
        assert!(back.ok && back.changed, "recovered: logged");
        assert_eq!(View::read(&store).unwrap().ok_at, T0 + 500 * MS);
    }

    #[test]
    fn the_fleets_states_reach_the_local_slots() {
        let store = MemoryStore::default();
        prepare(&store, &table(), &[3; 32]).unwrap();
        let mut x = Exchange::new(table(), 250, None, T0);
        x.due(T0).unwrap();
        x.sent(1);
        let states = json!([
            {"limit": "plan:free", "caller": "u:a", "kind": "i", "ahead_us": 59_000_000u64},
            {"limit": "plan:free", "caller": "u:b", "kind": "x", "ahead_us": 1},
            {"limit": "", "caller": "u:b", "kind": "i", "ahead_us": 1},
            {"limit": "plan:free", "caller": "u:c", "kind": "i", "ahead_us": -5},
        ]);
        let out = x.answered(&store, T0, b"200", 0, |_| ok_answer("9", false, states));
        assert_eq!(out.applied.moved, 1);
        assert_eq!(out.skipped, 3);
        let c = Check {
            limit: "plan:free",
            caller: "u:a",
            rate: rate(),
            kind: CallerKind::Identified,
        };
        let admitted = (0..10)
            .filter(|_| {
                check_all(&store, &table(), std::slice::from_ref(&c), T0)
                    .result
                    .is_ok()
            })
            .count();
        assert_eq!(admitted, 1, "59 of 60 spent elsewhere");
    }

    #[test]
    fn more_states_waiting_means_exchange_again_at_once() {
        let store = MemoryStore::default();
        let mut x = Exchange::new(table(), 250, None, T0);
        x.due(T0).unwrap();
        x.sent(1);
        x.answered(&store, T0, b"200", 0, |_| ok_answer("5", true, json!([])));
        assert!(x.due(T0 + MS).is_some());
    }

    #[test]
    fn a_large_tally_goes_out_in_several_exchanges() {
        let mut x = Exchange::new(table(), 250, None, T0);
        for i in 0..MAX_USED_PER_EXCHANGE + 10 {
            x.add(Used {
                member: Member {
                    kind: Kind::Address,
                    limit: "anonymous".into(),
                    caller: format!("ip:{i}"),
                },
                n: 1,
                rate: rate(),
            });
        }
        let first = x.due(T0).unwrap();
        assert_eq!(used_of(&first).len(), MAX_USED_PER_EXCHANGE);
        assert!(first.len() < MAX_BODY_BYTES);
        x.sent(1);
        let store = MemoryStore::default();
        x.answered(&store, T0, b"200", 0, |_| ok_answer("1", false, json!([])));
        assert_eq!(used_of(&x.due(T0 + MS).unwrap()).len(), 10);
    }

    #[test]
    fn long_names_go_out_in_bodies_under_the_servers_limit() {
        let mut x = Exchange::new(table(), 250, None, T0);
        let name = "\u{1}".repeat(fleet::MAX_NAME_LEN);
        for i in 0..5_000 {
            x.add(Used {
                member: Member {
                    kind: Kind::Identified,
                    limit: format!("{i:0>256}"),
                    caller: name.clone(),
                },
                n: 1,
                rate: rate(),
            });
        }
        let store = MemoryStore::default();
        let mut sent = 0;
        for round in 0..10 {
            let Some(body) = x.due(T0 + round * SEC) else {
                break;
            };
            assert!(body.len() <= 4 << 20, "{} bytes", body.len());
            sent += used_of(&body).len();
            x.sent(1);
            x.answered(&store, T0, b"200", 0, |_| ok_answer("1", false, json!([])));
        }
        assert_eq!(sent, 5_000);
    }

    #[test]
    fn junk_answers_fail_the_exchange() {
        let store = MemoryStore::default();
        for body in [&b"not json"[..], b"{}", br#"{"cursor": 5, "states": []}"#] {
            let mut x = Exchange::new(table(), 250, None, T0);
            x.due(T0).unwrap();
            x.sent(1);
            let out = x.answered(&store, T0, b"200", body.len(), |_| body.to_vec());
            assert!(!out.ok, "{body:?}");
        }
        let mut x = Exchange::new(table(), 250, None, T0);
        x.due(T0).unwrap();
        x.sent(1);
        let out = x.answered(&store, T0, b"200", MAX_ANSWER_BYTES + 1, |_| unreachable!());
        assert!(!out.ok);
    }

    #[test]
    fn the_first_poll_waits_for_the_first_exchange_but_not_long() {
        let mut x = Exchange::new(table(), 250, None, T0);
        assert!(x.holds_first_poll(T0));
        assert!(!x.holds_first_poll(T0 + FIRST_EXCHANGE_GRACE_NANOS));
        x.due(T0).unwrap();
        x.sent(1);
        x.failed("down".into());
        assert!(
            !x.holds_first_poll(T0 + MS),
            "a failure does not hold it longer"
        );
    }
}
