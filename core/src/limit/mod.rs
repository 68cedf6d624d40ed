//! Rate limits shared exactly by every Envoy worker: GCRA over fixed slot tables in shared
//! data, each update a compare-and-swap, several limits consumed all or none.
//! Behaviour and settings: `docs/policy.md#writing-a-policy` (the rate-limit rules).

pub mod client;
pub mod fleet;
pub mod slot_table;

use crate::limit::slot_table::{Found, Place, SlotTable};
use crate::store::{SharedStore, StoreError};
use crate::worker::secret_cache::SecretCache;
use std::sync::Mutex;

/// Who a limit counts requests for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitBy {
    /// The client address (`source.address`, or `x-forwarded-for` per `client_ip`).
    Ip,
    /// The API key id (or `jwt:<kid>` for a token).
    Key,
    User,
    Tenant,
}

/// Where a limit counts requests: on this Envoy alone (exact across its workers), or over
/// every Envoy of the fleet ([`fleet`]: exact locally, and the fleet's consumption folded
/// in every `sync_interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Local,
    Fleet,
}

/// Lost compare-and-swaps in a row before the policy's contention rule applies.
pub const MAX_CAS_ATTEMPTS: u32 = 16;

/// Candidate slots per identity ([`crate::limit::slot_table`]).
pub use crate::limit::slot_table::CANDIDATES;

/// A slot whose owner's `tat` lies this far in the past holds nothing worth keeping.
/// Longer than any decision takes, so two workers claiming for the same new caller at
/// nearly the same moment see the same slots as free.
pub const RECLAIM_GRACE_NANOS: u64 = 1_000_000_000;

/// One limit: `requests` per `period_nanos`, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub period_nanos: u64,
    pub burst: u32,
}

impl Rate {
    /// The emission interval `T`, at least 1 ns.
    fn interval(&self) -> u64 {
        (self.period_nanos / u64::from(self.requests.max(1))).max(1)
    }

    /// `τ + T`: how far ahead of `now` the `tat` may run.
    fn horizon(&self) -> u64 {
        self.interval().saturating_mul(u64::from(self.burst.max(1)))
    }
}

/// What the policy does when compare-and-swap keeps failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnContention {
    Refuse,
    Allow,
}

/// A limit to apply to this request: which one (a stable name, part of the slot tag), the
/// caller it is counted for, its rate, and which table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check<'a> {
    pub limit: &'a str,
    pub caller: &'a str,
    pub rate: Rate,
    pub kind: CallerKind,
}

/// Which table a check's state lives in, and what a full one means for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerKind {
    /// An identified caller's own state (user, key, tenant): `rl/...`; no room refuses.
    Identified,
    /// An anonymous caller, counted by address: `rla/...`; no room refuses.
    Address,
    /// An identified caller's limit `by: ip`: `rla/...`, shared with the anonymous
    /// callers of that address; no room skips this limit, since anonymous traffic must
    /// never refuse an identified caller.
    AddressOfIdentified,
}

/// Quota figures for the `RateLimit-*` headers, for the tightest limit that applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the quota is whole again.
    pub reset_secs: u64,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the limit: try again in `retry_after_secs`.
    Exceeded { quota: Quota, retry_after_secs: u64 },
    /// Both candidate slots belong to live strangers (`quota` names the limit).
    Collision { quota: Quota },
    /// Compare-and-swap kept failing and the policy refuses then.
    Contention { quota: Quota },
}

impl std::fmt::Display for Refusal {
    /// The precise reason, as logs and metrics name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Refusal {
    /// The precise reason, for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Exceeded { .. } => "rate_limited",
            Refusal::Collision { .. } => "rate_limit_collision",
            Refusal::Contention { .. } => "rate_limit_contention",
        }
    }

    /// The quota for the `RateLimit-*` headers.
    pub fn quota(&self) -> Quota {
        match self {
            Refusal::Exceeded { quota, .. }
            | Refusal::Collision { quota }
            | Refusal::Contention { quota } => *quota,
        }
    }

    /// Seconds until a retry may pass (`Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refusal::Exceeded {
                retry_after_secs, ..
            } => *retry_after_secs,
            Refusal::Collision { .. } | Refusal::Contention { .. } => 1,
        }
    }
}

/// The quota reported when a limit could not be evaluated.
fn unknown_quota(rate: &Rate) -> Quota {
    Quota {
        limit: rate.requests,
        remaining: 0,
        reset_secs: 1,
    }
}

/// The outcome, with what happened on the way for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<Option<Quota>, Refusal>,
    /// Compare-and-swap gave up at least once (allowed or refused per the policy).
    pub contention: bool,
    /// Compare-and-swap writes lost (another worker wrote the slot between our read and
    /// our write), over every limit of the request: each is followed by a fresh read and
    /// another try, up to [`MAX_CAS_ATTEMPTS`] per limit.
    pub retries: u32,
}

/// The fixed slot tables: shared data has no delete, so states live in `slots` entries
/// per table ([`crate::limit::slot_table`]); anonymous traffic fills only `rla/...` and
/// so can never refuse an identified caller ([`CallerKind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// Slots for identified callers (`rl/<slots>/...`).
    pub slots: u32,
    /// Slots for states counted by address (`rla/<slots>/...`).
    pub address_slots: u32,
    pub on_contention: OnContention,
}

/// The shared-data key of the placement secret: 32 random bytes made with the tables,
/// read by every worker, hashed before each limit and caller to pick slots and tag.
/// Unkeyed, anyone knowing a user id could search addresses whose entries land on that
/// user's candidates (~70,000 hashes) and keep them warm so the user is refused as a
/// collision. Workers reread it on every tick ([`Places::refresh`]), so if two created
/// the tables at once, the secret that stayed is everyone's within a second.
pub const SECRET_KEY: &str = "rl/secret";

/// The placement secret's length.
pub const SECRET_LEN: usize = 32;

/// The limiter's slot table for one kind of caller.
fn table_for(table: &Table, kind: CallerKind) -> SlotTable<'static> {
    match kind {
        CallerKind::Identified => SlotTable {
            name: "rl",
            slots: table.slots,
        },
        CallerKind::Address | CallerKind::AddressOfIdentified => SlotTable {
            name: "rla",
            slots: table.address_slots,
        },
    }
}

/// Creates every slot of both tables unless a worker already did
/// (Envoy writes an absent key whatever CAS value is given, so two workers claiming an
/// absent slot would both win; after this every write is a real compare-and-swap)
/// ([`SlotTable::prepare`]), and the placement secret from `fresh_secret` (random bytes
/// the caller drew) unless one is there. Returns the slots written.
pub fn prepare(
    store: &impl SharedStore,
    table: &Table,
    fresh_secret: &[u8; SECRET_LEN],
) -> Result<u32, StoreError> {
    let written = table_for(table, CallerKind::Identified).prepare(store)?
        + table_for(table, CallerKind::Address).prepare(store)?;
    if read_secret(store).is_none() {
        store.set(SECRET_KEY, fresh_secret, 0)?;
    }
    Ok(written)
}

/// The placement secret and its version, when there is a well-formed one.
fn read_secret(store: &impl SharedStore) -> Option<([u8; SECRET_LEN], u32)> {
    let (bytes, cas) = store.get(SECRET_KEY)?;
    Some((bytes.as_slice().try_into().ok()?, cas))
}

/// Where (limit, caller)'s state is, or can go ([`SlotTable::find`]): its own slot
/// with its `tat`, or a slot whose owner's state has lapsed, to start afresh in.
fn locate(
    store: &impl SharedStore,
    slots: &SlotTable<'_>,
    place: &Place,
    now: u64,
) -> Option<Found> {
    slots.find(
        store,
        place,
        |_| true,
        |tat| tat.saturating_add(RECLAIM_GRACE_NANOS) < now,
    )
}

/// One GCRA step at `now` from `tat`: `Ok((new tat, quota))` or `Err(refusal)`.
///
/// GCRA ("leaky bucket as a meter"): `n` per `period` with burst `b` has emission
/// interval `T = period / n` and tolerance `τ = (b - 1) · T`; the whole state is the
/// theoretical arrival time `tat`. A request at `now` passes when
/// `max(tat, now) + T - (τ + T) <= now`, and then `tat := max(tat, now) + T`. With the
/// default `b = n`, `n` pass at once, then one every `T`: exactly `n` in any period.
fn step(rate: &Rate, tat: u64, now: u64) -> Result<(u64, Quota), Refusal> {
    let t = rate.interval();
    let horizon = rate.horizon();
    let base = tat.max(now);
    let new_tat = base.saturating_add(t);
    let secs_up = |nanos: u64| nanos.div_ceil(1_000_000_000);
    if new_tat > now.saturating_add(horizon) {
        // Allowed again when the tat has come within the horizon.
        let retry = new_tat - now.saturating_add(horizon);
        let quota = Quota {
            limit: rate.requests,
            remaining: 0,
            reset_secs: secs_up(base - now),
        };
        return Err(Refusal::Exceeded {
            quota,
            retry_after_secs: secs_up(retry).max(1),
        });
    }
    let room = now.saturating_add(horizon) - new_tat;
    let remaining = u32::try_from(room / t).unwrap_or(u32::MAX).min(rate.burst);
    Ok((
        new_tat,
        Quota {
            limit: rate.requests,
            remaining,
            reset_secs: secs_up(new_tat - now),
        },
    ))
}

/// Consumes one unit of one limit. `Ok(None)` when contention made the policy allow.
///
/// A compare-and-swap loop: a worker that loses the race reads again and decides again;
/// after [`MAX_CAS_ATTEMPTS`] lost races the policy's [`OnContention`] decides. A slot
/// is claimed only if free or lapsed ([`RECLAIM_GRACE_NANOS`]); when every candidate
/// holds a live stranger the request is refused as a collision, never given a
/// stranger's budget.
fn consume(
    store: &impl SharedStore,
    table: &Table,
    check: &Check<'_>,
    place: &Place,
    now: u64,
) -> (Result<Option<Quota>, Refusal>, bool, u32) {
    let mut retries = 0;
    let slots = table_for(table, check.kind);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some(found) = locate(store, &slots, place, now) else {
            if check.kind == CallerKind::AddressOfIdentified {
                return (Ok(None), false, retries);
            }
            let collision = Refusal::Collision {
                quota: unknown_quota(&check.rate),
            };
            return (Err(collision), false, retries);
        };
        let (new_tat, quota) = match step(&check.rate, found.value.unwrap_or(0), now) {
            Ok(v) => v,
            Err(refusal) => return (Err(refusal), false, retries),
        };
        match slots.write(store, found.index, place.tag, new_tat, found.cas) {
            Ok(()) => return (Ok(Some(quota)), false, retries),
            Err(StoreError::CasMismatch) => retries += 1,
            Err(StoreError::Failed) => break,
        }
    }
    match table.on_contention {
        OnContention::Refuse => (
            Err(Refusal::Contention {
                quota: unknown_quota(&check.rate),
            }),
            true,
            retries,
        ),
        OnContention::Allow => (Ok(None), true, retries),
    }
}

/// Gives back one unit consumed by [`consume`] (a later limit refused the request).
fn refund(store: &impl SharedStore, table: &Table, check: &Check<'_>, place: &Place, now: u64) {
    let t = check.rate.interval();
    let slots = table_for(table, check.kind);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some(Found {
            index,
            cas,
            value: Some(tat),
        }) = locate(store, &slots, place, now)
        else {
            return;
        };
        if tat == 0 {
            return;
        }
        match slots.write(store, index, place.tag, tat.saturating_sub(t), cas) {
            Err(StoreError::CasMismatch) => continue,
            _ => return,
        }
    }
}

/// Applies every limit to one request: all pass and each is consumed once, or the
/// request is refused and none is consumed (those already consumed are refunded,
/// `tat -= T`). The quota returned is the tightest one.
pub fn check_all(
    store: &impl SharedStore,
    table: &Table,
    checks: &[Check<'_>],
    now: u64,
) -> Outcome {
    check_all_with(store, table, checks, now, &Places::none())
}

/// Where callers' states go, per worker: the placement secret as last read from shared
/// data, and the slots and tag of each (limit, caller) seen lately. A caller's place is a
/// pure function of the secret, the limit, the caller and the table size, so a worker
/// that has placed a caller once skips the SHA-256 on its next requests. Held by the
/// worker with the policy ([`crate::worker::Caches::places`]), whose table sizes it was
/// computed for; a new secret ([`Places::refresh`]) forgets every place.
pub struct Places {
    memo: SecretCache<Place>,
    secret: Mutex<Option<([u8; SECRET_LEN], u32)>>,
}

impl Places {
    /// Entries per worker.
    pub const ENTRIES: usize = 512;
    /// The longest `limit ‖ 0 ‖ caller` remembered.
    const MAX_ID: usize = 192;

    /// A memo that remembers no place (the secret is read from the store each time).
    pub const fn none() -> Places {
        Places {
            memo: SecretCache::new(0, 0),
            secret: Mutex::new(None),
        }
    }

    /// The placement secret: as remembered, else read from the store (`None` before the
    /// tables exist).
    fn secret(&self, store: &impl SharedStore) -> Option<[u8; SECRET_LEN]> {
        let mut held = self.secret.try_lock().ok();
        if let Some(Some((secret, _))) = held.as_deref() {
            return Some(*secret);
        }
        let read = read_secret(store)?;
        if self.memo.capacity() > 0
            && let Some(held) = held.as_deref_mut()
        {
            *held = Some(read);
        }
        Some(read.0)
    }

    /// Reads the secret again (each worker does on its tick): if another worker's stayed
    /// in shared data, this worker takes it and forgets the places it computed.
    pub fn refresh(&self, store: &impl SharedStore) {
        let read = read_secret(store);
        let Ok(mut held) = self.secret.try_lock() else {
            return;
        };
        if held.map(|(_, cas)| cas) != read.map(|(_, cas)| cas) {
            *held = read;
            self.memo.clear();
        }
    }

    fn place(&self, secret: &[u8; SECRET_LEN], table: &Table, check: &Check<'_>) -> Place {
        let slots = table_for(table, check.kind);
        let (limit, caller) = (check.limit.as_bytes(), check.caller.as_bytes());
        let mut id = [0u8; Self::MAX_ID];
        let len = limit.len() + 1 + caller.len();
        let Some(id) = id.get_mut(..len) else {
            return slots.place_keyed(secret, limit, caller);
        };
        let (l, rest) = id.split_at_mut(limit.len());
        l.copy_from_slice(limit);
        if let Some((sep, c)) = rest.split_first_mut() {
            *sep = 0;
            c.copy_from_slice(caller);
        }
        if let Some(place) = self.memo.get(id) {
            return place;
        }
        let place = slots.place_keyed(secret, limit, caller);
        self.memo.insert(id, place);
        place
    }
}

impl Default for Places {
    fn default() -> Self {
        Places {
            memo: SecretCache::new(Self::ENTRIES, Self::MAX_ID),
            secret: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places")
            .field("remembered", &self.memo.len())
            .finish_non_exhaustive()
    }
}

/// [`check_all`] with a memo of places (the request path passes the policy's).
pub fn check_all_with(
    store: &impl SharedStore,
    table: &Table,
    checks: &[Check<'_>],
    now: u64,
    places: &Places,
) -> Outcome {
    let mut consumed: Vec<(&Check<'_>, Place)> = Vec::new();
    let mut tightest: Option<Quota> = None;
    let mut contention = false;
    let mut retries: u32 = 0;
    // Without the secret the tables were never made: nothing can be placed.
    let secret = match (places.secret(store), checks.first()) {
        (Some(secret), _) => secret,
        (None, None) => [0; SECRET_LEN],
        (None, Some(first)) => {
            let quota = unknown_quota(&first.rate);
            return Outcome {
                result: Err(Refusal::Collision { quota }),
                contention,
                retries,
            };
        }
    };
    for check in checks {
        let place = places.place(&secret, table, check);
        let (result, gave_up, lost) = consume(store, table, check, &place, now);
        contention |= gave_up;
        retries = retries.saturating_add(lost);
        match result {
            Ok(Some(q)) => {
                consumed.push((check, place));
                if tightest.is_none_or(|t| q.remaining < t.remaining) {
                    tightest = Some(q);
                }
            }
            Ok(None) => {}
            Err(refusal) => {
                for (done, place) in &consumed {
                    refund(store, table, done, place, now);
                }
                return Outcome {
                    result: Err(refusal),
                    contention,
                    retries,
                };
            }
        }
    }
    Outcome {
        result: Ok(tightest),
        contention,
        retries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_767_225_600 * SEC;

    fn per_minute(n: u32) -> Rate {
        Rate {
            requests: n,
            period_nanos: 60 * SEC,
            burst: n,
        }
    }

    fn table() -> Table {
        Table {
            slots: 1024,
            address_slots: 1024,
            on_contention: OnContention::Refuse,
        }
    }

    const SECRET: [u8; SECRET_LEN] = [7; SECRET_LEN];

    /// A prepared store for `table()`.
    fn store() -> MemoryStore {
        let s = MemoryStore::default();
        prepare(&s, &table(), &SECRET).unwrap();
        s
    }

    /// The identified callers' table of `table()`.
    fn identified() -> SlotTable<'static> {
        table_for(&table(), CallerKind::Identified)
    }

    fn allowed(store: &MemoryStore, checks: &[Check<'_>], now: u64) -> bool {
        check_all(store, &table(), checks, now).result.is_ok()
    }

    #[test]
    fn an_unprepared_table_refuses_rather_than_racing_on_absent_slots() {
        let s = MemoryStore::default();
        let c = [Check {
            limit: "l",
            caller: "a",
            rate: per_minute(5),
            kind: CallerKind::Identified,
        }];
        assert!(matches!(
            check_all(&s, &table(), &c, T0).result,
            Err(Refusal::Collision { .. })
        ));
        assert_eq!(prepare(&s, &table(), &SECRET).unwrap(), 2048);
        assert_eq!(
            prepare(&s, &table(), &SECRET).unwrap(),
            0,
            "the markers say it is done"
        );
        assert!(check_all(&s, &table(), &c, T0).result.is_ok());
    }

    #[test]
    fn n_per_minute_admits_exactly_n_then_one_per_interval() {
        let store = store();
        let c = [Check {
            limit: "plan:free",
            caller: "alice",
            rate: per_minute(60),
            kind: CallerKind::Identified,
        }];
        let admitted = (0..100).filter(|_| allowed(&store, &c, T0)).count();
        assert_eq!(admitted, 60);
        let refused = check_all(&store, &table(), &c, T0);
        match refused.result {
            Err(Refusal::Exceeded {
                quota,
                retry_after_secs,
            }) => {
                assert_eq!((quota.limit, quota.remaining, retry_after_secs), (60, 0, 1));
                assert_eq!(quota.reset_secs, 60);
            }
            other => panic!("{other:?}"),
        }
        // One interval later, one more.
        assert!(allowed(&store, &c, T0 + SEC));
        assert!(!allowed(&store, &c, T0 + SEC));
        // A full period later, the whole budget.
        let admitted = (0..100)
            .filter(|_| allowed(&store, &c, T0 + 62 * SEC))
            .count();
        assert_eq!(admitted, 60);
    }

    #[test]
    fn the_quota_counts_down() {
        let store = store();
        let c = [Check {
            limit: "l",
            caller: "a",
            rate: per_minute(3),
            kind: CallerKind::Identified,
        }];
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                check_all(&store, &table(), &c, T0)
                    .result
                    .unwrap()
                    .unwrap()
                    .remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
    }

    #[test]
    fn callers_and_limits_have_separate_budgets() {
        let store = store();
        let a = [Check {
            limit: "l",
            caller: "a",
            rate: per_minute(1),
            kind: CallerKind::Identified,
        }];
        let b = [Check {
            limit: "l",
            caller: "b",
            rate: per_minute(1),
            kind: CallerKind::Identified,
        }];
        let a2 = [Check {
            limit: "m",
            caller: "a",
            rate: per_minute(1),
            kind: CallerKind::Identified,
        }];
        assert!(allowed(&store, &a, T0) && allowed(&store, &b, T0) && allowed(&store, &a2, T0));
        assert!(!allowed(&store, &a, T0));
    }

    #[test]
    fn a_refused_request_consumes_none_of_its_limits() {
        let store = store();
        let plan = Check {
            limit: "plan",
            caller: "u",
            rate: per_minute(10),
            kind: CallerKind::Identified,
        };
        let route = Check {
            limit: "route:login",
            caller: "u",
            rate: per_minute(2),
            kind: CallerKind::Identified,
        };
        let both = [plan.clone(), route.clone()];
        assert!(allowed(&store, &both, T0));
        assert!(allowed(&store, &both, T0));
        for _ in 0..5 {
            assert!(!allowed(&store, &both, T0), "the route limit refuses");
        }
        // The plan was charged for 2 requests only: 8 left.
        let plan_only = [plan];
        let left = (0..20).filter(|_| allowed(&store, &plan_only, T0)).count();
        assert_eq!(left, 8);
    }

    #[test]
    fn a_live_stranger_in_both_slots_is_a_collision_never_a_shared_budget() {
        let store = MemoryStore::default();
        let tiny = Table {
            slots: 2,
            address_slots: 2,
            on_contention: OnContention::Refuse,
        };
        prepare(&store, &tiny, &SECRET).unwrap();
        let c = |caller| {
            [Check {
                limit: "l",
                caller,
                rate: per_minute(100),
                kind: CallerKind::Identified,
            }]
        };
        // With two slots, two callers fill the table; a third collides while they live.
        assert!(check_all(&store, &tiny, &c("a"), T0).result.is_ok());
        assert!(check_all(&store, &tiny, &c("b"), T0).result.is_ok());
        assert!(matches!(
            check_all(&store, &tiny, &c("c"), T0).result,
            Err(Refusal::Collision { .. })
        ));
        // The strangers' budgets were not touched by the collision.
        assert_eq!(
            check_all(&store, &tiny, &c("a"), T0)
                .result
                .unwrap()
                .unwrap()
                .remaining,
            98
        );
        // Once a's state has lapsed, c takes its slot, with a fresh budget of its own.
        let later = T0 + 10 * SEC;
        assert!(check_all(&store, &tiny, &c("c"), later).result.is_ok());
        assert_eq!(
            check_all(&store, &tiny, &c("c"), later)
                .result
                .unwrap()
                .unwrap()
                .remaining,
            98
        );
    }

    /// A store whose writes always lose the race.
    struct Contended(MemoryStore);

    impl SharedStore for Contended {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.0.get(key)
        }
        fn set(&self, _key: &str, _value: &[u8], _cas: u32) -> Result<(), StoreError> {
            Err(StoreError::CasMismatch)
        }
    }

    #[test]
    fn endless_contention_follows_the_policy_and_is_reported() {
        let store = Contended(super::tests::store());
        let c = [Check {
            limit: "l",
            caller: "a",
            rate: per_minute(5),
            kind: CallerKind::Identified,
        }];
        let refuse = check_all(&store, &table(), &c, T0);
        assert!(matches!(refuse.result, Err(Refusal::Contention { .. })) && refuse.contention);
        let allow = Table {
            on_contention: OnContention::Allow,
            ..table()
        };
        let allowed = check_all(&store, &allow, &c, T0);
        assert_eq!((allowed.result, allowed.contention), (Ok(None), true));
        // Every write lost the race.
        assert_eq!(refuse.retries, MAX_CAS_ATTEMPTS);
        assert_eq!(allowed.retries, MAX_CAS_ATTEMPTS);
        let calm = check_all(&super::tests::store(), &table(), &c, T0);
        assert_eq!((calm.contention, calm.retries), (false, 0));
    }

    #[test]
    fn a_clock_going_backwards_never_grants_extra() {
        let store = store();
        let c = [Check {
            limit: "l",
            caller: "a",
            rate: per_minute(2),
            kind: CallerKind::Identified,
        }];
        assert!(allowed(&store, &c, T0));
        assert!(allowed(&store, &c, T0));
        assert!(!allowed(&store, &c, T0 - 30 * SEC));
    }

    /// Caller `a` under limit `l`, one request a minute.
    fn one_a_minute_for_a() -> [Check<'static>; 1] {
        [Check {
            limit: "l",
            caller: "a",
            rate: per_minute(1),
            kind: CallerKind::Identified,
        }]
    }

    #[test]
    fn corrupt_slots_are_reclaimed_not_trusted() {
        let store = store();
        let t = identified();
        let keys: Vec<String> = t
            .place_keyed(&SECRET, b"l", b"a")
            .candidates()
            .iter()
            .map(|&i| t.key(i))
            .collect();
        store.set(&keys[0], b"garbage", 0).unwrap();
        store
            .set(&keys[1], b"0000000000000000|0000000000000000000", 0)
            .unwrap();
        let c = one_a_minute_for_a();
        assert!(allowed(&store, &c, T0));
        assert!(!allowed(&store, &c, T0));
    }

    #[test]
    fn a_state_behind_a_slot_that_frees_up_is_kept_not_doubled() {
        let store = store();
        let t = identified();
        let a = t.place_keyed(&SECRET, b"l", b"a");
        let first = a.candidates()[0];
        // A live stranger holds a's first candidate, so a's state goes to the second.
        t.write(&store, first, 7, T0 + 3600 * SEC, 0).unwrap();
        let c = one_a_minute_for_a();
        assert!(allowed(&store, &c, T0));
        assert!(!allowed(&store, &c, T0));
        // The first candidate frees up (lapsed or unreadable): a's spent budget is still
        // found behind it; a fresh one is not started there.
        t.write(&store, first, 7, 1, 0).unwrap();
        assert!(!allowed(&store, &c, T0));
        store.set(&t.key(first), b"garbage", 0).unwrap();
        assert!(!allowed(&store, &c, T0));
    }

    #[test]
    fn remembered_places_are_the_computed_ones() {
        let places = Places::default();
        let c = Check {
            limit: "plan:team",
            caller: "u:user_1",
            rate: per_minute(5),
            kind: CallerKind::Identified,
        };
        let fresh = identified().place_keyed(&SECRET, b"plan:team", b"u:user_1");
        for _ in 0..2 {
            let p = places.place(&SECRET, &table(), &c);
            assert_eq!((p.candidates(), p.tag), (fresh.candidates(), fresh.tag));
        }
        assert_eq!(places.memo.len(), 1);
        let other = Check {
            caller: "u:user_2",
            ..c.clone()
        };
        assert_ne!(places.place(&SECRET, &table(), &other).tag, fresh.tag);
        // Over the length bound: computed, not remembered.
        let long = "x".repeat(300);
        let big = Check {
            limit: "l",
            caller: &long,
            rate: per_minute(5),
            kind: CallerKind::Identified,
        };
        let p = places.place(&SECRET, &table(), &big);
        assert_eq!(
            p.tag,
            identified().place_keyed(&SECRET, b"l", long.as_bytes()).tag
        );
        // The request path through a memo allows exactly as many as without one.
        let store = store();
        let a = one_a_minute_for_a();
        assert!(
            check_all_with(&store, &table(), &a, T0, &places)
                .result
                .is_ok()
        );
        assert!(
            check_all_with(&store, &table(), &a, T0, &places)
                .result
                .is_err()
        );
        assert!(check_all(&store, &table(), &a, T0).result.is_err());
    }

    /// The attack on unkeyed placement: search addresses whose anonymous entries take a
    /// known user's candidate slots, keep them warm, and the user is refused. Keyed with a
    /// secret and kept in another table, no address search reaches the user's slots.
    #[test]
    fn anonymous_entries_aimed_at_a_user_never_refuse_that_user() {
        let store = store();
        let tiny = Table {
            slots: 1024,
            address_slots: 1024,
            on_contention: OnContention::Refuse,
        };
        let victim = Check {
            limit: "plan:team",
            caller: "u:victim",
            rate: per_minute(1200),
            kind: CallerKind::Identified,
        };
        // What the attacker computes without the secret: addresses whose unkeyed
        // placement covers the victim's unkeyed candidates, as in the old module.
        let unkeyed =
            |limit: &str, caller: &str| identified().place(limit.as_bytes(), caller.as_bytes());
        let target = unkeyed(victim.limit, victim.caller);
        let mut aimed: Vec<String> = Vec::new();
        for i in 0..400_000u32 {
            let caller = format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let p = unkeyed("anonymous", &caller);
            if p.candidates()
                .iter()
                .any(|c| target.candidates().contains(c))
            {
                aimed.push(caller);
            }
            if aimed.len() == 64 {
                break;
            }
        }
        assert_eq!(aimed.len(), 64, "the search finds aimed addresses");
        // Those addresses, and a flood of others, fill the address table completely.
        let mut refused_anonymous = 0;
        let flood = aimed
            .iter()
            .cloned()
            .chain((0..4096u32).map(|i| format!("ip:192.0.{}.{}", i >> 8, i & 255)));
        for caller in flood {
            let c = [Check {
                limit: "anonymous",
                caller: &caller,
                rate: per_minute(60),
                kind: CallerKind::Address,
            }];
            if check_all(&store, &tiny, &c, T0).result.is_err() {
                refused_anonymous += 1;
            }
        }
        assert!(refused_anonymous > 0, "the address table is full");
        // The victim has its whole budget, and its own limit still holds.
        for n in 0..1200 {
            assert!(
                check_all(&store, &tiny, std::slice::from_ref(&victim), T0)
                    .result
                    .is_ok(),
                "request {n}"
            );
        }
        assert!(matches!(
            check_all(&store, &tiny, std::slice::from_ref(&victim), T0).result,
            Err(Refusal::Exceeded { .. })
        ));
        // An identified caller's own `by: ip` limit finds no room in the full address
        // table: skipped, never a refusal; an anonymous caller there is refused.
        let by_ip = |kind| {
            [Check {
                limit: "route:login:0",
                caller: "ip:203.0.113.7",
                rate: per_minute(10),
                kind,
            }]
        };
        assert_eq!(
            check_all(&store, &tiny, &by_ip(CallerKind::AddressOfIdentified), T0).result,
            Ok(None)
        );
        assert!(matches!(
            check_all(&store, &tiny, &by_ip(CallerKind::Address), T0).result,
            Err(Refusal::Collision { .. })
        ));
    }

    #[test]
    fn placement_depends_on_the_secret_and_every_worker_takes_the_one_in_shared_data() {
        let t = identified();
        let a = t.place_keyed(&[1; SECRET_LEN], b"plan:team", b"u:victim");
        let b = t.place_keyed(&[2; SECRET_LEN], b"plan:team", b"u:victim");
        assert_ne!((a.candidates(), a.tag), (b.candidates(), b.tag));
        // The first worker's secret stays; a second prepare draws another and keeps the
        // first.
        let s = MemoryStore::default();
        prepare(&s, &table(), &[1; SECRET_LEN]).unwrap();
        prepare(&s, &table(), &[2; SECRET_LEN]).unwrap();
        assert_eq!(read_secret(&s).unwrap().0, [1; SECRET_LEN]);
        // Two workers raced and one secret was overwritten: the worker that read the
        // first one takes the survivor on its next tick and forgets its places.
        let places = Places::default();
        let c = one_a_minute_for_a();
        assert!(check_all_with(&s, &table(), &c, T0, &places).result.is_ok());
        assert_eq!(places.memo.len(), 1);
        s.set(SECRET_KEY, &[2; SECRET_LEN], 0).unwrap();
        places.refresh(&s);
        assert_eq!(places.memo.len(), 0);
        assert_eq!(places.secret(&s), Some([2; SECRET_LEN]));
        // A secret's bytes are never printed.
        assert!(!format!("{places:?}").contains('2'));
    }

    #[test]
    fn without_a_secret_nothing_is_placed() {
        let s = MemoryStore::default();
        identified().prepare(&s).unwrap();
        assert!(matches!(
            check_all(&s, &table(), &one_a_minute_for_a(), T0).result,
            Err(Refusal::Collision { .. })
        ));
        assert_eq!(check_all(&s, &table(), &[], T0).result, Ok(None));
    }
}
