//! The cache feed: what the sync does with an answer from the control service, and how
//! the filter knows whether the cache is fresh enough; it never calls the host, panics on
//! an answer, or fails a whole answer for one bad record. Contract: `control/FEED.md`.

use crate::authn::api_key::{KeyHash, KeyRecord, Origin, is_valid_id};
use crate::authn::revocation::{JtiRevocation, UserRevocation, user_key};
use crate::store::{SharedStore, StoreError};
use serde_json::Value;
use std::collections::HashSet;

/// Where the sync keeps `<epoch>|<version>|<last success>`.
pub const STATE_KEY: &str = "feed/state";
/// When the first VM with a feed configured (unix secs), written once if absent: the
/// staleness clock before any success, so a fresh Envoy serves during its first poll.
pub const STARTED_KEY: &str = "feed/started";
/// The largest answer the sync reads; a bigger one is refused (and counted as a failure).
/// A key record is about 250 bytes of JSON: 16 MiB is some 60 000 keys per answer.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// The longest epoch accepted (the control service makes 16 hex digits).
const MAX_EPOCH_LEN: usize = 64;

/// Why an answer was refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedError {
    TooLarge(usize),
    NotJson,
    /// A required top-level field is missing or has the wrong type.
    Field(&'static str),
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::TooLarge(n) => write!(
                f,
                "answer of {n} bytes is larger than the {MAX_ANSWER_BYTES} bytes accepted"
            ),
            FeedError::NotJson => f.write_str("answer is not a JSON object"),
            FeedError::Field(name) => write!(f, "answer field '{name}' is missing or invalid"),
        }
    }
}

/// One parsed 200 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub epoch: String,
    pub version: u64,
    pub full: bool,
    pub keys: Vec<(KeyHash, KeyRecord)>,
    pub users: Vec<UserRevocation>,
    /// `(sha256 of the jti, 64 lower-case hex; until)`.
    pub jtis: Vec<(String, Option<u64>)>,
    /// Records skipped because they broke the contract (bad hash, bad id, wrong type).
    pub skipped: usize,
}

impl Answer {
    /// Entries the answer carries (what [`apply`] writes, tombstones included).
    pub fn entries(&self) -> usize {
        self.keys.len() + self.users.len() + self.jtis.len()
    }
}

/// What the sync last applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    pub epoch: String,
    pub version: u64,
    /// Unix secs of the last successful poll; 0 for never.
    pub last_success: u64,
}

impl SyncState {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}|{}|{}", self.epoch, self.version, self.last_success).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<SyncState> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut f = s.split('|');
        let epoch = f.next()?.to_string();
        let version = f.next()?.parse().ok()?;
        let last_success = f.next()?.parse().ok()?;
        f.next().is_none().then_some(SyncState {
            epoch,
            version,
            last_success,
        })
    }
}

fn valid_epoch(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_EPOCH_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_lower_hex_64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `null`/absent → `Some(None)`, a non-negative integer → `Some(Some(n))`, else `None`.
fn opt_secs(v: Option<&Value>) -> Option<Option<u64>> {
    match v {
        None | Some(Value::Null) => Some(None),
        Some(n) => n.as_u64().map(Some),
    }
}

fn id_field(o: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    o.get(name)
        .and_then(Value::as_str)
        .filter(|s| is_valid_id(s))
        .map(str::to_string)
}

fn parse_key(v: &Value) -> Option<(KeyHash, KeyRecord)> {
    let o = v.as_object()?;
    let hash = o
        .get("sha256")
        .and_then(Value::as_str)
        .filter(|s| is_lower_hex_64(s))
        .and_then(KeyHash::from_hex)?;
    let scopes = match o.get("scopes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().filter(|s| is_valid_id(s)).map(str::to_string))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    let record = KeyRecord {
        origin: Origin::Feed,
        key_id: id_field(o, "key_id")?,
        user: id_field(o, "user")?,
        tenant: id_field(o, "tenant")?,
        plan: id_field(o, "plan")?,
        expires_at: opt_secs(o.get("expires_at"))?,
        active: o.get("active")?.as_bool()?,
        scopes,
    };
    Some((hash, record))
}

fn parse_user(v: &Value) -> Option<UserRevocation> {
    let o = v.as_object()?;
    Some(UserRevocation {
        user: id_field(o, "user")?,
        origin: Origin::Feed,
        before: o.get("tokens_issued_before")?.as_u64()?,
        until: opt_secs(o.get("until"))?,
    })
}

fn parse_jti(v: &Value) -> Option<(String, Option<u64>)> {
    let o = v.as_object()?;
    let hash = o
        .get("jti_sha256")
        .and_then(Value::as_str)
        .filter(|s| is_lower_hex_64(s))?;
    Some((hash.to_string(), opt_secs(o.get("until"))?))
}

/// Parses the records of one list, skipping (and counting) the bad ones.
fn records<T>(
    root: &serde_json::Map<String, Value>,
    name: &'static str,
    parse: impl Fn(&Value) -> Option<T>,
    skipped: &mut usize,
) -> Result<Vec<T>, FeedError> {
    let items = match root.get(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(FeedError::Field(name)),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match parse(item) {
            Some(r) => out.push(r),
            None => *skipped += 1,
        }
    }
    Ok(out)
}

/// Parses a 200 answer. The answer as a whole is refused only when it is too large, not
/// JSON, or lacks a valid `epoch`, `version` or `full`; bad records are skipped.
pub fn parse_answer(body: &[u8]) -> Result<Answer, FeedError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(FeedError::TooLarge(body.len()));
    }
    let root: Value = serde_json::from_slice(body).map_err(|_| FeedError::NotJson)?;
    let root = root.as_object().ok_or(FeedError::NotJson)?;
    let epoch = root
        .get("epoch")
        .and_then(Value::as_str)
        .filter(|s| valid_epoch(s))
        .ok_or(FeedError::Field("epoch"))?
        .to_string();
    let version = root
        .get("version")
        .and_then(Value::as_u64)
        .ok_or(FeedError::Field("version"))?;
    let full = match root.get("full") {
        None | Some(Value::Null) => false,
        Some(v) => v.as_bool().ok_or(FeedError::Field("full"))?,
    };
    let mut skipped = 0;
    let keys = records(root, "keys", parse_key, &mut skipped)?;
    let users = records(root, "users", parse_user, &mut skipped)?;
    let jtis = records(root, "jtis", parse_jti, &mut skipped)?;
    Ok(Answer {
        epoch,
        version,
        full,
        keys,
        users,
        jtis,
        skipped,
    })
}

/// The key hashes this sync VM has fed and not tombstoned: what a snapshot (`full`, or
/// another epoch) can sweep, writing tombstones for keys it no longer mentions. Keys fed
/// by an earlier sync VM (before the singleton restarted) cannot be found, since shared
/// data cannot be listed; they stay until the feed mentions them, which is safe because
/// the feed keeps a revoked key's tombstone until its credentials expired (FEED.md).
#[derive(Clone, Debug, Default)]
pub struct FedKeys(HashSet<[u8; 32]>);

impl FedKeys {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries written from the answer.
    pub entries: usize,
    /// Keys fed earlier and missing from a snapshot, written back as tombstones.
    pub swept: usize,
    pub snapshot: bool,
}

/// The sync state in shared data, if any.
pub fn read_state(store: &impl SharedStore) -> Option<SyncState> {
    store
        .get(STATE_KEY)
        .and_then(|(bytes, _)| SyncState::decode(&bytes))
}

/// Writes an answer into shared data and records it in `feed/state`, with `now_secs` as
/// the last success. The state is written last: a worker never sees a version whose
/// entries are not all written. On a store failure nothing is recorded, so the next poll
/// asks for the same changes again (every write is idempotent). One small value per
/// entry, in the encodings the filter reads:
///
/// - `k/<sha256 hex>` → [`KeyRecord`], origin [`Origin::Feed`] (a tombstone is
///   `active: false`: shared data has no delete);
/// - `u/<user>` → [`UserRevocation`];
/// - `j/<sha256(jti) hex>` → [`JtiRevocation`]'s encoding (the sync never sees the jti);
/// - [`STATE_KEY`] → `<epoch>|<version>|<last success>`, the next poll's `since`.
pub fn apply(
    store: &impl SharedStore,
    answer: &Answer,
    fed: &mut FedKeys,
    now_secs: u64,
) -> Result<Applied, StoreError> {
    let previous = read_state(store);
    let snapshot = answer.full || previous.as_ref().is_none_or(|p| p.epoch != answer.epoch);
    for (hash, record) in &answer.keys {
        store.set(&hash.cache_key(), &record.encode(), 0)?;
    }
    for user in &answer.users {
        store.set(&user_key(&user.user), &user.encode(), 0)?;
    }
    for (hash, until) in &answer.jtis {
        let value = JtiRevocation {
            jti: String::new(),
            origin: Origin::Feed,
            until: *until,
        };
        store.set(&format!("j/{hash}"), &value.encode(), 0)?;
    }
    let mut swept = 0;
    if snapshot {
        let kept: HashSet<[u8; 32]> = answer.keys.iter().map(|(h, _)| h.0).collect();
        for gone in fed.0.iter().filter(|h| !kept.contains(*h)) {
            let key = KeyHash(*gone).cache_key();
            if let Some((bytes, _)) = store.get(&key)
                && let Some(mut record) = KeyRecord::decode(&bytes)
                && record.origin == Origin::Feed
                && record.active
            {
                record.active = false;
                store.set(&key, &record.encode(), 0)?;
                swept += 1;
            }
        }
        fed.0.clear();
    }
    for (hash, record) in &answer.keys {
        if record.active {
            fed.0.insert(hash.0);
        } else {
            fed.0.remove(&hash.0);
        }
    }
    let state = SyncState {
        epoch: answer.epoch.clone(),
        version: answer.version,
        last_success: now_secs,
    };
    store.set(STATE_KEY, &state.encode(), 0)?;
    Ok(Applied {
        entries: answer.entries(),
        swept,
        snapshot,
    })
}

/// Records the start of the grace period, unless a VM already did.
pub fn mark_started(store: &impl SharedStore, now_secs: u64) -> Result<(), StoreError> {
    if store.get(STARTED_KEY).is_some() {
        return Ok(());
    }
    store.set(STARTED_KEY, now_secs.to_string().as_bytes(), 0)
}

/// Seconds since the last successful poll, or since the grace period started when there
/// has been none; `None` when neither is recorded.
pub fn age_secs(store: &impl SharedStore, now_secs: u64) -> Option<u64> {
    let since = match read_state(store) {
        Some(s) if s.last_success > 0 => s.last_success,
        _ => store
            .get(STARTED_KEY)
            .and_then(|(b, _)| std::str::from_utf8(&b).ok()?.parse().ok())?,
    };
    Some(now_secs.saturating_sub(since))
}

/// Whether the cache is older than `bound_secs` (last success, else [`STARTED_KEY`]);
/// the filter asks on requests that present a credential. Nothing recorded at all (no VM with a
/// feed configured, which the filter's own configure prevents) counts as stale.
pub fn stale(store: &impl SharedStore, now_secs: u64, bound_secs: u64) -> bool {
    age_secs(store, now_secs).is_none_or(|age| age > bound_secs)
}

/// The poll's path. `epoch` goes with a nonzero `since` (FEED.md): a server whose database
/// was re-created then answers a snapshot instead of changes counted from a version of
/// another database. An epoch is only ever one [`parse_answer`] accepted (URL-safe
/// characters), so it needs no escaping.
pub fn poll_path(path: &str, since: u64, epoch: Option<&str>, wait_secs: u64) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    match epoch.filter(|e| since > 0 && valid_epoch(e)) {
        Some(e) => format!("{path}{sep}since={since}&epoch={e}&wait={wait_secs}"),
        None => format!("{path}{sep}since={since}&wait={wait_secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::revocation::{Revoked, check};
    use crate::store::MemoryStore;
    use crate::sync::fixtures::{answer, hash, key, record};
    use serde_json::json;

    const NOW: u64 = 1_767_225_600;

    #[test]
    fn a_valid_answer_is_parsed_into_feed_records() {
        let body = json!({
            "epoch": "3f1c9a2e7b6d4e01", "version": 1234, "full": false,
            "keys": [key(1, true)],
            "users": [{"user": "user_1", "tokens_issued_before": NOW, "until": NOW + 10}],
            "jtis": [{"jti_sha256": hash(9), "until": null}]
        });
        let a = parse_answer(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            (a.epoch.as_str(), a.version, a.full),
            ("3f1c9a2e7b6d4e01", 1234, false)
        );
        let (h, r) = &a.keys[0];
        assert_eq!(h.to_hex(), hash(1));
        assert_eq!(r.origin, Origin::Feed);
        assert_eq!(r.scopes, vec!["billing".to_string()]);
        assert_eq!(a.users[0].before, NOW);
        assert_eq!(a.users[0].until, Some(NOW + 10));
        assert_eq!(a.jtis, vec![(hash(9), None)]);
        assert_eq!((a.skipped, a.entries()), (0, 3));
    }

    #[test]
    fn bad_answers_are_refused_as_a_whole() {
        for (body, err) in [
            (&b"{not json"[..], FeedError::NotJson),
            (b"[1,2]", FeedError::NotJson),
            (br#"{"version":1,"full":false}"#, FeedError::Field("epoch")),
            (br#"{"epoch":"a|b","version":1}"#, FeedError::Field("epoch")),
            (
                br#"{"epoch":"e","version":-1}"#,
                FeedError::Field("version"),
            ),
            (
                br#"{"epoch":"e","version":1,"full":"yes"}"#,
                FeedError::Field("full"),
            ),
            (
                br#"{"epoch":"e","version":1,"keys":{}}"#,
                FeedError::Field("keys"),
            ),
        ] {
            assert_eq!(
                parse_answer(body),
                Err(err),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn records_that_break_the_id_rule_are_skipped_and_counted() {
        let mut bad_user = key(2, true);
        bad_user["user"] = json!("a b");
        let mut upper_hash = key(3, true);
        upper_hash["sha256"] = json!(hash(3).to_uppercase());
        let mut bad_scope = key(4, true);
        bad_scope["scopes"] = json!(["ok", "no|pipes"]);
        let mut no_active = key(5, true);
        no_active.as_object_mut().unwrap().remove("active");
        let body = json!({
            "epoch": "e", "version": 2,
            "keys": [key(1, true), bad_user, upper_hash, bad_scope, no_active, "x"],
            "users": [{"user": "", "tokens_issued_before": 1}, {"user": "u", "tokens_issued_before": "soon"}],
            "jtis": [{"jti_sha256": "abc"}, {"jti_sha256": hash(1), "until": -5}]
        });
        let a = parse_answer(body.to_string().as_bytes()).unwrap();
        assert_eq!(a.keys.len(), 1);
        assert_eq!(a.skipped, 9);
        assert!(!a.full, "full defaults to false");
    }

    #[test]
    fn a_huge_answer_is_refused_before_parsing() {
        let body = vec![b' '; MAX_ANSWER_BYTES + 1];
        assert_eq!(
            parse_answer(&body),
            Err(FeedError::TooLarge(MAX_ANSWER_BYTES + 1))
        );
    }

    #[test]
    fn applying_writes_entries_the_filter_reads_and_records_the_version() {
        let store = MemoryStore::default();
        let body = json!({
            "epoch": "e1", "version": 7, "full": true, "keys": [key(1, true)],
            "users": [{"user": "user_1", "tokens_issued_before": NOW, "until": null}],
            "jtis": [{"jti_sha256": crate::authn::api_key::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"t-1")), "until": null}]
        });
        let a = parse_answer(body.to_string().as_bytes()).unwrap();
        let applied = apply(&store, &a, &mut FedKeys::default(), NOW).unwrap();
        assert_eq!(
            applied,
            Applied {
                entries: 3,
                swept: 0,
                snapshot: true
            }
        );
        let r = record(&store, 1).unwrap();
        assert!(r.active && r.origin == Origin::Feed && r.key_id == "key_1");
        assert_eq!(
            check(&store, 0, "user_1", Some(NOW - 1), None, NOW),
            Err(Revoked::User)
        );
        assert_eq!(
            check(&store, 0, "user_2", Some(NOW), Some("t-1"), NOW),
            Err(Revoked::Jti),
            "the fed hash is the key the filter computes from the jti"
        );
        assert_eq!(
            read_state(&store),
            Some(SyncState {
                epoch: "e1".into(),
                version: 7,
                last_success: NOW
            })
        );
    }

    #[test]
    fn a_tombstone_makes_a_key_inactive() {
        let store = MemoryStore::default();
        let mut fed = FedKeys::default();
        let a = parse_answer(&answer("e", 1, true, vec![key(1, true)])).unwrap();
        apply(&store, &a, &mut fed, NOW).unwrap();
        assert_eq!(fed.len(), 1);
        let a = parse_answer(&answer("e", 2, false, vec![key(1, false)])).unwrap();
        let applied = apply(&store, &a, &mut fed, NOW + 1).unwrap();
        assert!(!applied.snapshot);
        assert!(!record(&store, 1).unwrap().active);
        assert!(fed.is_empty());
    }

    #[test]
    fn a_new_epoch_is_a_snapshot_that_retires_keys_it_no_longer_mentions() {
        let store = MemoryStore::default();
        let mut fed = FedKeys::default();
        let a = parse_answer(&answer("old", 5, true, vec![key(1, true), key(2, true)])).unwrap();
        apply(&store, &a, &mut fed, NOW).unwrap();
        let a = parse_answer(&answer("new", 1, false, vec![key(2, true), key(3, true)])).unwrap();
        let applied = apply(&store, &a, &mut fed, NOW + 1).unwrap();
        assert_eq!(
            applied,
            Applied {
                entries: 2,
                swept: 1,
                snapshot: true
            }
        );
        assert!(!record(&store, 1).unwrap().active);
        assert!(record(&store, 2).unwrap().active && record(&store, 3).unwrap().active);
        assert_eq!(read_state(&store).unwrap().version, 1);
        assert_eq!(fed.len(), 2);
    }

    #[test]
    fn staleness_counts_from_the_last_success_or_from_the_start() {
        let store = MemoryStore::default();
        assert!(stale(&store, NOW, 30), "nothing recorded");
        mark_started(&store, NOW).unwrap();
        mark_started(&store, NOW + 100).unwrap();
        assert!(
            !stale(&store, NOW + 30, 30),
            "grace from the first configure"
        );
        assert!(stale(&store, NOW + 31, 30));
        let a = parse_answer(&answer("e", 1, true, vec![])).unwrap();
        apply(&store, &a, &mut FedKeys::default(), NOW + 40).unwrap();
        assert!(!stale(&store, NOW + 70, 30));
        assert!(stale(&store, NOW + 71, 30));
        assert_eq!(age_secs(&store, NOW + 71), Some(31));
    }

    #[test]
    fn the_poll_path_carries_since_epoch_and_wait() {
        assert_eq!(
            poll_path("/v1/cache", 0, None, 20),
            "/v1/cache?since=0&wait=20"
        );
        assert_eq!(poll_path("/c?x=1", 9, None, 5), "/c?x=1&since=9&wait=5");
        assert_eq!(
            poll_path("/v1/cache", 9, Some("3f1c9a2e7b6d4e01"), 5),
            "/v1/cache?since=9&epoch=3f1c9a2e7b6d4e01&wait=5"
        );
        // A snapshot needs no epoch; an epoch that could break the query is never sent.
        assert_eq!(
            poll_path("/v1/cache", 0, Some("e1"), 5),
            "/v1/cache?since=0&wait=5"
        );
        assert_eq!(
            poll_path("/v1/cache", 9, Some("a&b"), 5),
            "/v1/cache?since=9&wait=5"
        );
    }

    #[test]
    fn the_state_round_trips_and_garbage_is_none() {
        let s = SyncState {
            epoch: "e".into(),
            version: 3,
            last_success: 4,
        };
        assert_eq!(SyncState::decode(&s.encode()), Some(s));
        for bad in [&b""[..], b"e|x|1", b"e|1|2|3", b"\xff"] {
            assert_eq!(SyncState::decode(bad), None);
        }
    }
}
