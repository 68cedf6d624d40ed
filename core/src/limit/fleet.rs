//! Fleet-scoped limits (`scope: fleet`): every Envoy keeps deciding alone, exactly across
//! its workers ([`crate::limit`]), and folds in what the rest of the fleet consumed.
//!
//! - Each worker tallies its fleet-scoped admissions ([`Tally`]) and hands them to the
//!   sync on its tick, through the shared queue [`QUEUE`].
//! - Every `sync_interval` the sync sends the merged tally to the control service
//!   (`POST /v1/limits/exchange`, control/FLEET.md), which keeps one GCRA state per
//!   (limit, caller) for the fleet in Redis, and answers with the states that changed
//!   since the sync's last exchange, its own included.
//! - The sync folds each into the local slot: `tat := max(tat, now + ahead)` ([`apply`]).
//!   The local state already holds this Envoy's own admissions, and the fleet's state holds
//!   everyone's that were reported: the larger of the two is the better estimate, and
//!   taking it never hands back budget.
//! - While the fleet cannot be reached ([`View::fresh`]), each Envoy enforces its share of
//!   the limit ([`share`]) on the same state, so the fleet as a whole stays near the limit.
//!
//! No request waits for any of this: the request path reads one shared-data entry
//! ([`STATE_KEY`]) and counts in worker memory. Accuracy and its bound: docs/fleet.md.

use crate::limit::{
    CallerKind, Check, MAX_CAS_ATTEMPTS, Rate, Table, locate, read_secret, table_for,
};
use crate::store::{SharedStore, StoreError};
use std::collections::HashMap;
use std::sync::Mutex;

/// The shared queue on which workers hand their tallies to the sync.
pub const QUEUE: &str = "gatehouse/fleet";

/// The control service's endpoint (control/FLEET.md).
pub const EXCHANGE_PATH: &str = "/v1/limits/exchange";

/// The shared-data entry where the sync says when it last heard from the fleet, and how
/// many proxies the fleet has: 12 bytes, [`View`].
pub const STATE_KEY: &str = "fl/state";

/// The longest limit name or caller exchanged (the control service's bound too); longer
/// ones stay local.
pub const MAX_NAME_LEN: usize = 256;

/// Which slot table a member's state is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `rl/...`: identified callers.
    Identified,
    /// `rla/...`: states counted by client address.
    Address,
}

impl Kind {
    pub fn of(kind: CallerKind) -> Kind {
        match kind {
            CallerKind::Identified => Kind::Identified,
            CallerKind::Address | CallerKind::AddressOfIdentified => Kind::Address,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Identified => "i",
            Kind::Address => "a",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "i" => Some(Kind::Identified),
            "a" => Some(Kind::Address),
            _ => None,
        }
    }

    fn caller_kind(self) -> CallerKind {
        match self {
            Kind::Identified => CallerKind::Identified,
            Kind::Address => CallerKind::Address,
        }
    }
}

/// One fleet-scoped state: a limit and the caller it counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub kind: Kind,
    pub limit: String,
    pub caller: String,
}

/// Admissions of one member since they were last reported, with the limit's rate (the
/// control service needs it to advance the fleet's state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Used {
    pub member: Member,
    pub n: u32,
    pub rate: Rate,
}

/// A worker's fleet-scoped admissions since its last flush, at most
/// [`Tally::MAX_MEMBERS`] members (more are counted in [`Tally::dropped`] and not
/// reported: the fleet then undercounts them). Counting a member already in the tally
/// allocates nothing: members are found by a hash of their names, compared in place.
#[derive(Debug, Default)]
pub struct Tally {
    members: Mutex<TallyMap>,
    dropped: std::sync::atomic::AtomicU64,
}

/// Members by the hash of (kind, limit, caller); equal hashes share a bucket.
type TallyMap = HashMap<u64, Vec<(Member, u32, Rate)>>;

fn member_hash(kind: Kind, limit: &str, caller: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    kind.hash(&mut h);
    limit.hash(&mut h);
    caller.hash(&mut h);
    h.finish()
}

impl Tally {
    pub const MAX_MEMBERS: usize = 20_000;

    /// Counts one admission under `check`'s limit.
    pub fn record(&self, check: &Check<'_>) {
        if check.limit.len() > MAX_NAME_LEN || check.caller.len() > MAX_NAME_LEN {
            return;
        }
        let Ok(mut members) = self.members.lock() else {
            return;
        };
        let kind = Kind::of(check.kind);
        let hash = member_hash(kind, check.limit, check.caller);
        if let Some((_, n, rate)) = members.get_mut(&hash).and_then(|bucket| {
            bucket.iter_mut().find(|(m, ..)| {
                m.kind == kind && m.limit == check.limit && m.caller == check.caller
            })
        }) {
            *n = n.saturating_add(1);
            *rate = check.rate;
            return;
        }
        if members.len() >= Self::MAX_MEMBERS {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        members.entry(hash).or_default().push((
            Member {
                kind,
                limit: check.limit.to_string(),
                caller: check.caller.to_string(),
            },
            1,
            check.rate,
        ));
    }

    /// Admissions not reported because the tally was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// The tally as a batch for the sync ([`encode`]), emptied; `None` when empty.
    pub fn take_batch(&self) -> Option<Vec<u8>> {
        let mut members = self.members.lock().ok()?;
        let used: Vec<Used> = members
            .drain()
            .flat_map(|(_, bucket)| bucket)
            .map(|(member, n, rate)| Used { member, n, rate })
            .collect();
        if used.is_empty() {
            return None;
        }
        Some(encode(&used))
    }
}

/// Batch format version: the first byte of every batch.
const BATCH_VERSION: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes().get(..usize::from(len)).unwrap_or_default());
}

/// A worker batch: a version byte, then per member its kind, limit and caller
/// (length-prefixed), count, and rate (requests, period in ms, burst), big-endian.
pub fn encode(used: &[Used]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + used.len() * 48);
    out.push(BATCH_VERSION);
    for u in used {
        out.push(match u.member.kind {
            Kind::Identified => b'i',
            Kind::Address => b'a',
        });
        put_str(&mut out, &u.member.limit);
        put_str(&mut out, &u.member.caller);
        out.extend_from_slice(&u.n.to_be_bytes());
        out.extend_from_slice(&u.rate.requests.to_be_bytes());
        out.extend_from_slice(&(u.rate.period_nanos / 1_000_000).to_be_bytes());
        out.extend_from_slice(&u.rate.burst.to_be_bytes());
    }
    out
}

/// Reads a batch made by [`encode`]; `None` if it is anything else.
pub fn decode(batch: &[u8]) -> Option<Vec<Used>> {
    let (version, mut rest) = batch.split_first()?;
    if *version != BATCH_VERSION {
        return None;
    }
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Some(head)
    }
    fn string(rest: &mut &[u8]) -> Option<String> {
        let len = u16::from_be_bytes(take(rest, 2)?.try_into().ok()?);
        let bytes = take(rest, usize::from(len))?;
        String::from_utf8(bytes.to_vec()).ok()
    }
    fn u32_(rest: &mut &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(take(rest, 4)?.try_into().ok()?))
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let kind = match take(&mut rest, 1)? {
            [b'i'] => Kind::Identified,
            [b'a'] => Kind::Address,
            _ => return None,
        };
        let limit = string(&mut rest)?;
        let caller = string(&mut rest)?;
        let n = u32_(&mut rest)?;
        let requests = u32_(&mut rest)?;
        let period_ms = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let burst = u32_(&mut rest)?;
        out.push(Used {
            member: Member {
                kind,
                limit,
                caller,
            },
            n,
            rate: Rate {
                requests,
                period_nanos: period_ms.saturating_mul(1_000_000),
                burst,
            },
        });
    }
    Some(out)
}

/// What the sync last heard from the fleet ([`STATE_KEY`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// When the last exchange succeeded (unix ns).
    pub ok_at: u64,
    /// Proxies the control service saw exchanging lately, this one included.
    pub proxies: u32,
}

/// A worker's copy of [`View`], read from shared data on its tick ([`CachedView::refresh`])
/// so that requests make no host call for it; until the first refresh each request reads
/// shared data.
#[derive(Debug, Default)]
pub struct CachedView {
    /// 0: not read yet; 1: read, no view; 2: read, the view below.
    state: std::sync::atomic::AtomicU8,
    ok_at: std::sync::atomic::AtomicU64,
    proxies: std::sync::atomic::AtomicU32,
}

impl CachedView {
    /// Reads the view from shared data into the copy.
    pub fn refresh(&self, store: &impl SharedStore) {
        use std::sync::atomic::Ordering::Relaxed;
        match View::read(store) {
            Some(v) => {
                self.ok_at.store(v.ok_at, Relaxed);
                self.proxies.store(v.proxies, Relaxed);
                self.state.store(2, Relaxed);
            }
            None => self.state.store(1, Relaxed),
        }
    }

    /// The view as last refreshed, or read from `store` if it never was.
    pub fn get(&self, store: &impl SharedStore) -> Option<View> {
        use std::sync::atomic::Ordering::Relaxed;
        match self.state.load(Relaxed) {
            0 => View::read(store),
            2 => Some(View {
                ok_at: self.ok_at.load(Relaxed),
                proxies: self.proxies.load(Relaxed),
            }),
            _ => None,
        }
    }
}

/// The fleet's view goes stale after four missed exchanges, and never sooner than 1 s.
pub fn stale_after_nanos(interval_ms: u64) -> u64 {
    interval_ms
        .saturating_mul(4)
        .max(1_000)
        .saturating_mul(1_000_000)
}

impl View {
    /// Whether the fleet's states reached this Envoy lately enough to trust them.
    pub fn fresh(&self, now: u64, interval_ms: u64) -> bool {
        now.saturating_sub(self.ok_at) <= stale_after_nanos(interval_ms)
    }

    pub fn write(&self, store: &impl SharedStore) -> Result<(), StoreError> {
        let mut bytes = [0u8; 12];
        let (at, proxies) = bytes.split_at_mut(8);
        at.copy_from_slice(&self.ok_at.to_be_bytes());
        proxies.copy_from_slice(&self.proxies.to_be_bytes());
        store.set(STATE_KEY, &bytes, 0)
    }

    pub fn read(store: &impl SharedStore) -> Option<View> {
        let (bytes, _) = store.get(STATE_KEY)?;
        let bytes: &[u8; 12] = bytes.as_slice().try_into().ok()?;
        let (at, proxies) = bytes.split_at(8);
        Some(View {
            ok_at: u64::from_be_bytes(at.try_into().ok()?),
            proxies: u32::from_be_bytes(proxies.try_into().ok()?),
        })
    }
}

/// One Envoy's share of `rate` in a fleet of `proxies`: `requests` and `burst` divided,
/// rounded up (so each Envoy keeps at least one), over the same period. On the same state
/// as the fleet-wide limit, each admission then costs `proxies` times as much.
pub fn share(rate: Rate, proxies: u32) -> Rate {
    let n = proxies.max(1);
    Rate {
        requests: rate.requests.div_ceil(n).max(1),
        period_nanos: rate.period_nanos,
        burst: rate.burst.div_ceil(n).max(1),
    }
}

/// One member's state in the fleet: its GCRA `tat` lies `ahead_nanos` past now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub member: Member,
    pub ahead_nanos: u64,
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// States that moved a local slot forward.
    pub moved: u32,
    /// States with no room in the table (every candidate slot held by a live stranger):
    /// this Envoy does not know them until a slot frees.
    pub unplaced: u32,
}

/// Folds the fleet's states into this Envoy's slots: `tat := max(tat, now + ahead)`, by
/// compare-and-swap against the workers. A member with no slot here takes a free or lapsed
/// one, so a caller moving to this Envoy brings its consumption with it.
pub fn apply(store: &impl SharedStore, table: &Table, states: &[State], now: u64) -> Applied {
    let mut applied = Applied::default();
    let Some((secret, _)) = read_secret(store) else {
        applied.unplaced = u32::try_from(states.len()).unwrap_or(u32::MAX);
        return applied;
    };
    for state in states {
        let slots = table_for(table, state.member.kind.caller_kind());
        let place = slots.place_keyed(
            &secret,
            state.member.limit.as_bytes(),
            state.member.caller.as_bytes(),
        );
        let target = now.saturating_add(state.ahead_nanos);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(found) = locate(store, &slots, &place, now) else {
                applied.unplaced = applied.unplaced.saturating_add(1);
                break;
            };
            if found.value.unwrap_or(0) >= target {
                break;
            }
            match slots.write(store, found.index, place.tag, target, found.cas) {
                Ok(()) => {
                    applied.moved = applied.moved.saturating_add(1);
                    break;
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Failed) => break,
            }
        }
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{OnContention, check_all, prepare};
    use crate::store::MemoryStore;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_767_225_600 * SEC;

    fn table() -> Table {
        Table {
            slots: 1024,
            address_slots: 1024,
            on_contention: OnContention::Refuse,
        }
    }

    fn per_minute(n: u32) -> Rate {
        Rate {
            requests: n,
            period_nanos: 60 * SEC,
            burst: n,
        }
    }

    fn check<'a>(caller: &'a str, rate: Rate) -> Check<'a> {
        Check {
            limit: "plan:free",
            caller,
            rate,
            kind: CallerKind::Identified,
        }
    }

    fn member(caller: &str) -> Member {
        Member {
            kind: Kind::Identified,
            limit: "plan:free".into(),
            caller: caller.into(),
        }
    }

    fn admitted(store: &MemoryStore, c: &Check<'_>, now: u64, tries: usize) -> usize {
        (0..tries)
            .filter(|_| {
                check_all(store, &table(), std::slice::from_ref(c), now)
                    .result
                    .is_ok()
            })
            .count()
    }

    #[test]
    fn a_batch_reads_back_as_written_and_junk_is_refused() {
        let used = vec![
            Used {
                member: member("u:alice"),
                n: 3,
                rate: per_minute(60),
            },
            Used {
                member: Member {
                    kind: Kind::Address,
                    limit: "anonymous".into(),
                    caller: "ip:2001:db8::/64 \t\n\"odd\"".into(),
                },
                n: 1,
                rate: Rate {
                    requests: 5,
                    period_nanos: 3_600 * SEC,
                    burst: 2,
                },
            },
        ];
        let batch = encode(&used);
        assert_eq!(decode(&batch), Some(used));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[2]), None, "another version");
        assert_eq!(decode(&batch[..batch.len() - 1]), None, "truncated");
        let mut bad_kind = batch.clone();
        bad_kind[1] = b'x';
        assert_eq!(decode(&bad_kind), None);
        assert_eq!(decode(&[BATCH_VERSION]), Some(vec![]));
    }

    #[test]
    fn the_tally_counts_per_member_and_empties_when_taken() {
        let tally = Tally::default();
        let rate = per_minute(60);
        for _ in 0..3 {
            tally.record(&check("u:alice", rate));
        }
        tally.record(&check("u:bob", rate));
        let mut used = decode(&tally.take_batch().unwrap()).unwrap();
        used.sort_by(|a, b| a.member.caller.cmp(&b.member.caller));
        assert_eq!(
            used.iter()
                .map(|u| (u.member.caller.as_str(), u.n))
                .collect::<Vec<_>>(),
            [("u:alice", 3), ("u:bob", 1)]
        );
        assert_eq!(tally.take_batch(), None);
        let long = "x".repeat(MAX_NAME_LEN + 1);
        tally.record(&check(&long, rate));
        assert_eq!(
            tally.take_batch(),
            None,
            "too long to exchange: stays local"
        );
    }

    #[test]
    fn a_full_tally_drops_new_members_and_counts_them() {
        let tally = Tally::default();
        let rate = per_minute(60);
        for i in 0..Tally::MAX_MEMBERS + 5 {
            tally.record(&check(&format!("u:{i}"), rate));
        }
        tally.record(&check("u:0", rate));
        assert_eq!(tally.take_dropped(), 5);
        assert_eq!(tally.take_dropped(), 0);
        let used = decode(&tally.take_batch().unwrap()).unwrap();
        assert_eq!(used.len(), Tally::MAX_MEMBERS);
    }

    #[test]
    fn the_view_is_fresh_for_four_intervals_and_at_least_a_second() {
        let s = MemoryStore::default();
        assert_eq!(View::read(&s), None);
        let v = View {
            ok_at: T0,
            proxies: 3,
        };
        v.write(&s).unwrap();
        assert_eq!(View::read(&s), Some(v));
        assert!(v.fresh(T0 + SEC, 250));
        assert!(!v.fresh(T0 + SEC + 1, 250));
        assert!(v.fresh(T0 + 8 * SEC, 2_000));
        assert!(!v.fresh(T0 + 8 * SEC + 1, 2_000));
    }

    #[test]
    fn the_cached_view_reads_shared_data_until_refreshed_then_only_on_refresh() {
        let s = MemoryStore::default();
        let cached = CachedView::default();
        assert_eq!(cached.get(&s), None);
        let v = View {
            ok_at: T0,
            proxies: 2,
        };
        v.write(&s).unwrap();
        assert_eq!(cached.get(&s), Some(v), "never refreshed: read each time");
        cached.refresh(&s);
        View {
            ok_at: T0 + SEC,
            proxies: 3,
        }
        .write(&s)
        .unwrap();
        assert_eq!(cached.get(&s), Some(v), "the copy until the next refresh");
        cached.refresh(&s);
        assert_eq!(cached.get(&s).unwrap().proxies, 3);
    }

    #[test]
    fn a_share_divides_rounding_up_and_never_reaches_zero() {
        let r = per_minute(60);
        assert_eq!(share(r, 0), r);
        assert_eq!(share(r, 1), r);
        assert_eq!(share(r, 3).requests, 20);
        assert_eq!(share(r, 7).requests, 9);
        assert_eq!(share(per_minute(2), 5).requests, 1);
        assert_eq!(share(per_minute(2), 5).burst, 1);
    }

    #[test]
    fn the_fleets_consumption_takes_local_budget_and_never_gives_any_back() {
        let s = MemoryStore::default();
        prepare(&s, &table(), &[9; 32]).unwrap();
        let rate = per_minute(60);
        let c = check("u:alice", rate);
        // This Envoy admitted 10; the fleet says 40 in all are consumed (tat 40 T ahead).
        assert_eq!(admitted(&s, &c, T0, 10), 10);
        let forty = State {
            member: member("u:alice"),
            ahead_nanos: 40 * SEC,
        };
        let applied = apply(&s, &table(), std::slice::from_ref(&forty), T0);
        assert_eq!(
            applied,
            Applied {
                moved: 1,
                unplaced: 0
            }
        );
        assert_eq!(admitted(&s, &c, T0, 100), 20, "60 - 40 left");
        // An older, smaller state changes nothing.
        let ten = State {
            member: member("u:alice"),
            ahead_nanos: 10 * SEC,
        };
        assert_eq!(apply(&s, &table(), &[ten], T0).moved, 0);
        assert_eq!(admitted(&s, &c, T0, 5), 0);
    }

    #[test]
    fn a_caller_new_to_this_envoy_arrives_with_the_fleets_consumption() {
        let s = MemoryStore::default();
        prepare(&s, &table(), &[9; 32]).unwrap();
        let rate = per_minute(60);
        // Spent elsewhere, 5 s of debt past the budget.
        let state = State {
            member: member("u:carol"),
            ahead_nanos: 65 * SEC,
        };
        assert_eq!(apply(&s, &table(), &[state], T0).moved, 1);
        let c = check("u:carol", rate);
        assert_eq!(admitted(&s, &c, T0, 10), 0);
        assert_eq!(admitted(&s, &c, T0 + 5 * SEC, 10), 0);
        assert_eq!(admitted(&s, &c, T0 + 6 * SEC, 10), 1);
    }

    #[test]
    fn share_mode_on_the_same_state_keeps_what_the_fleet_consumed() {
        let s = MemoryStore::default();
        prepare(&s, &table(), &[9; 32]).unwrap();
        let rate = per_minute(60);
        let half = State {
            member: member("u:dan"),
            ahead_nanos: 30 * SEC,
        };
        apply(&s, &table(), &[half], T0);
        // Three proxies, the fleet unreachable: 20 per minute here, on the same state,
        // so of the 30 left fleet-wide this Envoy takes about a third.
        let c = check("u:dan", share(rate, 3));
        let n = admitted(&s, &c, T0, 100);
        assert_eq!(n, 10, "{n}");
    }

    #[test]
    fn without_the_tables_nothing_is_placed() {
        let s = MemoryStore::default();
        let state = State {
            member: member("u:x"),
            ahead_nanos: SEC,
        };
        assert_eq!(apply(&s, &table(), &[state], T0).unplaced, 1);
    }
}
