//! The cache feed: what the sync does with an answer from the control service, and how
//! the filter knows whether the cache is fresh enough; it never calls the host, panics on
//! an answer, or fails a whole answer for one bad record. Contract: `control/FEED.md`.

use crate::authn::api_key::{KeyHash, KeyRecord, Origin, is_valid_id};
use crate::authn::revocation::{JtiRevocation, UserRevocation, user_key};
use crate::store::{SharedStore, StoreError};
use serde_json::Value;

/// Where the sync keeps `<epoch>|<version>|<last success>|<generation>|<keys>`: the
/// last version applied, after a complete snapshot.
pub const STATE_KEY: &str = "feed/state";
/// Where the sync keeps its place in a snapshot it is reading:
/// `<epoch>|<version>|<generation>|<keys>|<cursor>`, empty when none is under way.
pub const SNAPSHOT_KEY: &str = "feed/snapshot";
/// When the first VM with a feed configured (unix secs), written once if absent: the
/// staleness clock before any success, so a fresh Envoy serves during its first poll.
pub const STARTED_KEY: &str = "feed/started";
/// The largest answer the sync reads; a bigger one is refused (and counted as a failure).
/// A key record is about 250 bytes of JSON: 16 MiB is some 60 000 keys, six times the
/// control service's default page (FEED.md: answers are pages of at most 10,000 records
/// by default, 100,000 at most).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// The longest epoch accepted (the control service makes 16 hex digits).
const MAX_EPOCH_LEN: usize = 64;
/// The longest snapshot cursor accepted (FEED.md: at most 512 URL-safe characters).
const MAX_CURSOR_LEN: usize = 512;

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
    /// Changes: later versions wait for the next poll.
    pub more: bool,
    /// A snapshot page: the cursor of the page that follows; `None` on the last.
    pub next: Option<String>,
    pub keys: Vec<(KeyHash, KeyRecord)>,
    pub users: Vec<UserRevocation>,
    /// `(sha256 of the jti, 64 lower-case hex; until)`.
    pub jtis: Vec<(String, Option<u64>)>,
    /// Records skipped because they broke the contract (bad hash, bad id, wrong type).
    pub skipped: usize,
    /// The operators' levers, when the answer carries them (absent: unchanged): the set
    /// checked whole ([`crate::levers::parse`]) as compact JSON with its entry count, or
    /// why it was refused (the previous set stays in force).
    pub levers: Option<Result<(Vec<u8>, usize), crate::levers::LeversError>>,
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
    /// The generation of the last complete snapshot: fed key records of an older one
    /// are absent ([`crate::authn::key_cache`]).
    pub generation: u32,
    /// Key records written since that snapshot began (tombstones and rewrites included):
    /// the `gatehouse.feed.keys` gauge.
    pub keys: u64,
}

impl SyncState {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{}|{}|{}|{}|{}",
            self.epoch, self.version, self.last_success, self.generation, self.keys
        )
        .into_bytes()
    }

    /// Whether a snapshot of this version's key records is complete: a state of an
    /// earlier version (three fields, read as generation 0) was written under key names
    /// this one does not read, so an Envoy upgraded in place reads a snapshot again and,
    /// until it is in, judges keys as a fresh Envoy does.
    pub fn has_snapshot(&self) -> bool {
        self.generation > 0
    }

    /// Also reads the three fields of earlier versions (generation 0).
    pub fn decode(bytes: &[u8]) -> Option<SyncState> {
        let s = std::str::from_utf8(bytes).ok()?;
        let f: Vec<&str> = s.split('|').collect();
        let (epoch, version, last_success, generation, keys) = match f[..] {
            [e, v, l] => (e, v, l, "0", "0"),
            [e, v, l, g, k] => (e, v, l, g, k),
            _ => return None,
        };
        Some(SyncState {
            epoch: epoch.to_string(),
            version: version.parse().ok()?,
            last_success: last_success.parse().ok()?,
            generation: generation.parse().ok()?,
            keys: keys.parse().ok()?,
        })
    }
}

/// A snapshot the sync is reading, page by page ([`SNAPSHOT_KEY`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub epoch: String,
    /// The snapshot's view version, the same on each of its pages.
    pub version: u64,
    pub generation: u32,
    /// Key records its pages have written so far.
    pub keys: u64,
    /// The `next` of the last page applied: where to go on.
    pub after: String,
}

impl Progress {
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{}|{}|{}|{}|{}",
            self.epoch, self.version, self.generation, self.keys, self.after
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Progress> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut f = s.split('|');
        let p = Progress {
            epoch: f.next().filter(|e| valid_epoch(e))?.to_string(),
            version: f.next()?.parse().ok()?,
            generation: f.next()?.parse().ok()?,
            keys: f.next()?.parse().ok()?,
            after: f.next().filter(|c| valid_cursor(c))?.to_string(),
        };
        f.next().is_none().then_some(p)
    }
}

fn valid_epoch(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_EPOCH_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A cursor the sync may send back as it is: URL-safe characters only.
fn valid_cursor(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CURSOR_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
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
    if scopes.len() > crate::authn::api_key::MAX_SCOPES {
        return None;
    }
    let record = KeyRecord {
        origin: Origin::Feed,
        key_id: id_field(o, "key_id")?,
        user: id_field(o, "user")?,
        tenant: id_field(o, "tenant")?,
        plan: id_field(o, "plan")?,
        expires_at: opt_secs(o.get("expires_at"))?,
        active: o.get("active")?.as_bool()?,
        scopes,
        generation: 0,
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
    let flag = |name: &'static str| match root.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(v) => v.as_bool().ok_or(FeedError::Field(name)),
    };
    let (full, more) = (flag("full")?, flag("more")?);
    let next = match root.get("next") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .filter(|c| valid_cursor(c))
                .ok_or(FeedError::Field("next"))?
                .to_string(),
        ),
    };
    if next.is_some() && !full {
        // A cursor belongs to a snapshot: on changes it would mean nothing.
        return Err(FeedError::Field("next"));
    }
    let mut skipped = 0;
    let keys = records(root, "keys", parse_key, &mut skipped)?;
    let users = records(root, "users", parse_user, &mut skipped)?;
    let jtis = records(root, "jtis", parse_jti, &mut skipped)?;
    let levers = match root.get("levers") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            crate::levers::parse(v)
                .map(|set| (serde_json::to_vec(v).unwrap_or_default(), set.entries())),
        ),
    };
    Ok(Answer {
        epoch,
        version,
        full,
        more,
        next,
        keys,
        users,
        jtis,
        skipped,
        levers,
    })
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries written from the answer.
    pub entries: usize,
    /// The answer was a page of a snapshot ...
    pub snapshot: bool,
    /// ... and its last: the snapshot's version and generation are now the cache's.
    pub complete: bool,
    /// The generation its key records were written with.
    pub generation: u32,
    /// Key records written since the cache's snapshot began (the `keys` gauge).
    pub keys: u64,
}

/// The sync state in shared data, if any.
pub fn read_state(store: &impl SharedStore) -> Option<SyncState> {
    store
        .get(STATE_KEY)
        .and_then(|(bytes, _)| SyncState::decode(&bytes))
}

/// The snapshot under way, if any: one [`SNAPSHOT_KEY`] holds that the state has not
/// already completed (its generation is above the state's).
pub fn read_progress(store: &impl SharedStore) -> Option<Progress> {
    let progress = store
        .get(SNAPSHOT_KEY)
        .and_then(|(bytes, _)| Progress::decode(&bytes))?;
    let done = read_state(store).is_some_and(|s| s.generation >= progress.generation);
    (!done).then_some(progress)
}

/// Forgets the snapshot under way: the next poll starts one afresh.
pub fn drop_progress(store: &impl SharedStore) -> Result<(), StoreError> {
    store.set(SNAPSHOT_KEY, b"", 0)
}

/// Writes an answer into shared data, one small value per entry, in the encodings the
/// filter reads:
///
/// - `K<84 bits of the hash>` ([`KeyHash::cache_key`]) → [`KeyRecord`], origin
///   [`Origin::Feed`], with the generation of the snapshot it belongs to (a tombstone is
///   `active: false`);
/// - `u/<user>` → [`UserRevocation`];
/// - `j/<sha256(jti) hex>` → [`JtiRevocation`]'s encoding (the sync never sees the jti).
///
/// Changes are written with the cache's generation and recorded in [`STATE_KEY`] with
/// `now_secs` as the last success. A snapshot page (`full`, or another epoch than the
/// state's) is written with its snapshot's generation: the one under way when
/// `continues` (the poll sent the `after` of the last page applied) and the answer has
/// its epoch and version, else a new one above every generation used. A page with a
/// `next` moves [`SNAPSHOT_KEY`] on; the last page makes the snapshot the cache's, in
/// [`STATE_KEY`]. The state is written last: a worker never sees a version whose entries
/// are not all written. On a store failure nothing is recorded, so the next poll asks
/// for the same answer again (every write is idempotent).
pub fn apply(
    store: &impl SharedStore,
    answer: &Answer,
    continues: bool,
    now_secs: u64,
) -> Result<Applied, StoreError> {
    let state = read_state(store);
    let snapshot = answer.full || state.as_ref().is_none_or(|s| s.epoch != answer.epoch);
    let recorded = store
        .get(SNAPSHOT_KEY)
        .and_then(|(bytes, _)| Progress::decode(&bytes));
    let state_generation = state.as_ref().map_or(0, |s| s.generation);
    let (generation, keys_before) = match (&state, &recorded) {
        (Some(state), _) if !snapshot => (state.generation, state.keys),
        (_, Some(p))
            if continues
                && p.generation > state_generation
                && p.epoch == answer.epoch
                && p.version == answer.version =>
        {
            (p.generation, p.keys)
        }
        // A new snapshot: above every generation used, an abandoned snapshot's too.
        _ => {
            let used = recorded.as_ref().map_or(0, |p| p.generation);
            (state_generation.max(used).saturating_add(1), 0)
        }
    };
    for (hash, record) in &answer.keys {
        let record = KeyRecord {
            generation,
            ..record.clone()
        };
        // Every fed record passed the id rule and the scope bound: it always encodes.
        if let Some(bytes) = record.encode(hash) {
            store.set(&hash.cache_key(), &bytes, 0)?;
        }
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
    if let Some(Ok((raw, _))) = &answer.levers {
        crate::levers::store(store, raw)?;
    }
    let keys = keys_before.saturating_add(answer.keys.len() as u64);
    let complete = !snapshot || answer.next.is_none();
    match &answer.next {
        Some(cursor) if snapshot => {
            let progress = Progress {
                epoch: answer.epoch.clone(),
                version: answer.version,
                generation,
                keys,
                after: cursor.clone(),
            };
            store.set(SNAPSHOT_KEY, &progress.encode(), 0)?;
            // The service answers and the cache is being renewed: a long snapshot does
            // not make a serving cache stale (its changes come after the last page).
            if let Some(state) = state {
                let state = SyncState {
                    last_success: now_secs,
                    ..state
                };
                store.set(STATE_KEY, &state.encode(), 0)?;
            }
        }
        _ => {
            let state = SyncState {
                epoch: answer.epoch.clone(),
                version: answer.version,
                last_success: now_secs,
                generation,
                keys,
            };
            store.set(STATE_KEY, &state.encode(), 0)?;
        }
    }
    Ok(Applied {
        entries: answer.entries(),
        snapshot,
        complete,
        generation,
        keys,
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
    age_given(store, read_state(store).as_ref(), now_secs)
}

/// [`age_secs`] with the state already read.
fn age_given(store: &impl SharedStore, state: Option<&SyncState>, now_secs: u64) -> Option<u64> {
    let since = match state {
        Some(s) if s.last_success > 0 => s.last_success,
        _ => store
            .get(STARTED_KEY)
            .and_then(|(b, _)| std::str::from_utf8(&b).ok()?.parse().ok())?,
    };
    Some(now_secs.saturating_sub(since))
}

/// Whether the cache is older than `bound_secs` (last success, else [`STARTED_KEY`]).
/// Nothing recorded at all (no VM with a feed configured, which the filter's own
/// configure prevents) counts as stale.
pub fn stale(store: &impl SharedStore, now_secs: u64, bound_secs: u64) -> bool {
    stale_given(store, read_state(store).as_ref(), now_secs, bound_secs)
}

/// [`stale`] with the state already read (the filter reads it once per request that
/// presents a credential).
pub fn stale_given(
    store: &impl SharedStore,
    state: Option<&SyncState>,
    now_secs: u64,
    bound_secs: u64,
) -> bool {
    age_given(store, state, now_secs).is_none_or(|age| age > bound_secs)
}

/// What a poll asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// The changes after `since` of `epoch`.
    Changes { since: u64, epoch: String },
    /// The first page of a snapshot.
    Snapshot,
    /// The page after `after` of the snapshot of `epoch` under way.
    Page { epoch: String, after: String },
}

impl Ask {
    /// What the sync asks for next: the rest of a snapshot under way, else the changes
    /// after the state's version, else (or when `snapshot` says so, after a 410) a
    /// snapshot.
    pub fn next(store: &impl SharedStore, snapshot: bool) -> Ask {
        if snapshot {
            return Ask::Snapshot;
        }
        if let Some(p) = read_progress(store) {
            return Ask::Page {
                epoch: p.epoch,
                after: p.after,
            };
        }
        match read_state(store) {
            Some(s) if s.has_snapshot() => Ask::Changes {
                since: s.version,
                epoch: s.epoch,
            },
            _ => Ask::Snapshot,
        }
    }

    /// The version asked from (0 for a snapshot's pages).
    pub fn since(&self) -> u64 {
        match self {
            Ask::Changes { since, .. } => *since,
            Ask::Snapshot | Ask::Page { .. } => 0,
        }
    }

    /// The poll's path. `paged=true` always: this sync reads snapshots in pages. The
    /// epoch goes with changes and pages (FEED.md): a server whose database was
    /// re-created answers a new snapshot instead. Epochs and cursors are only ever ones
    /// [`parse_answer`] accepted (URL-safe characters), so they need no escaping; a
    /// page is never held, so it asks `wait=0`.
    pub fn path(&self, path: &str, wait_secs: u64) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        match self {
            Ask::Changes { since, epoch } if *since > 0 && valid_epoch(epoch) => {
                format!("{path}{sep}since={since}&epoch={epoch}&wait={wait_secs}&paged=true")
            }
            Ask::Page { epoch, after } if valid_epoch(epoch) && valid_cursor(after) => {
                format!("{path}{sep}since=0&epoch={epoch}&after={after}&wait=0&paged=true")
            }
            Ask::Changes { since, .. } => {
                format!("{path}{sep}since={since}&wait={wait_secs}&paged=true")
            }
            Ask::Snapshot | Ask::Page { .. } => {
                format!("{path}{sep}since=0&wait={wait_secs}&paged=true")
            }
        }
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
        let applied = apply(&store, &a, false, NOW).unwrap();
        assert_eq!(
            applied,
            Applied {
                entries: 3,
                snapshot: true,
                complete: true,
                generation: 1,
                keys: 1,
            }
        );
        let r = record(&store, 1).unwrap();
        assert!(r.active && r.origin == Origin::Feed && r.key_id == "key_1");
        assert_eq!(r.generation, 1);
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
                last_success: NOW,
                generation: 1,
                keys: 1,
            })
        );
    }

    #[test]
    fn a_tombstone_makes_a_key_inactive() {
        let store = MemoryStore::default();
        let a = parse_answer(&answer("e", 1, true, vec![key(1, true)])).unwrap();
        apply(&store, &a, false, NOW).unwrap();
        let a = parse_answer(&answer("e", 2, false, vec![key(1, false)])).unwrap();
        let applied = apply(&store, &a, false, NOW + 1).unwrap();
        assert!(!applied.snapshot && applied.complete);
        assert_eq!(applied.generation, 1, "changes keep the cache's generation");
        let r = record(&store, 1).unwrap();
        assert!(!r.active);
        assert_eq!(r.generation, 1);
        assert_eq!(read_state(&store).unwrap().version, 2);
    }

    /// A page of a snapshot, as the control service sends it.
    fn page(epoch: &str, version: u64, keys: Vec<Value>, next: Option<&str>) -> Answer {
        let body = json!({"epoch": epoch, "version": version, "full": true,
                          "next": next, "keys": keys});
        parse_answer(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_paged_snapshot_becomes_the_cache_only_with_its_last_page() {
        let store = MemoryStore::default();
        let first = apply(
            &store,
            &page("e", 9, vec![key(1, true)], Some("c1")),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(
            (first.snapshot, first.complete, first.generation),
            (true, false, 1)
        );
        assert_eq!(read_state(&store), None, "no version before the last page");
        assert!(
            record(&store, 1).is_some(),
            "a page's records are written at once"
        );
        assert_eq!(
            Ask::next(&store, false),
            Ask::Page {
                epoch: "e".into(),
                after: "c1".into()
            }
        );
        let second = apply(
            &store,
            &page("e", 9, vec![key(2, true)], Some("c2")),
            true,
            NOW,
        )
        .unwrap();
        assert_eq!((second.generation, second.keys), (1, 2));
        let last = apply(
            &store,
            &page("e", 9, vec![key(3, true)], None),
            true,
            NOW + 2,
        )
        .unwrap();
        assert_eq!((last.complete, last.generation, last.keys), (true, 1, 3));
        let state = read_state(&store).unwrap();
        assert_eq!(
            (
                state.version,
                state.generation,
                state.keys,
                state.last_success
            ),
            (9, 1, 3, NOW + 2)
        );
        assert_eq!(read_progress(&store), None);
        assert_eq!(
            Ask::next(&store, false),
            Ask::Changes {
                since: 9,
                epoch: "e".into()
            },
            "then the changes after the snapshot's version"
        );
    }

    #[test]
    fn a_snapshot_retires_the_keys_it_does_not_mention_by_generation() {
        let store = MemoryStore::default();
        apply(
            &store,
            &page("e", 5, vec![key(1, true), key(2, true)], None),
            false,
            NOW,
        )
        .unwrap();
        // The server answers a new snapshot (a 410, or a restored database): key 1 is in
        // it, key 2 is not.
        apply(
            &store,
            &page("e", 8, vec![key(1, true)], Some("c")),
            false,
            NOW,
        )
        .unwrap();
        let state = read_state(&store).unwrap();
        assert_eq!(
            state.generation, 1,
            "the old cache serves while the pages arrive"
        );
        assert_eq!(record(&store, 1).unwrap().generation, 2);
        assert_eq!(record(&store, 2).unwrap().generation, 1);
        apply(&store, &page("e", 8, vec![key(3, true)], None), true, NOW).unwrap();
        assert_eq!(read_state(&store).unwrap().generation, 2);
        // Key 2's record is still there, one generation behind: the filter takes it as
        // absent (crate::authn::key_cache).
        assert_eq!(record(&store, 2).unwrap().generation, 1);
    }

    #[test]
    fn a_page_that_does_not_continue_the_snapshot_under_way_starts_a_new_one() {
        let store = MemoryStore::default();
        apply(
            &store,
            &page("old", 4, vec![key(1, true)], Some("c1")),
            false,
            NOW,
        )
        .unwrap();
        // The epoch changed between pages: the server answered the first page of a new
        // snapshot, with a generation above the abandoned one's.
        let a = apply(
            &store,
            &page("new", 2, vec![key(2, true)], Some("d1")),
            true,
            NOW,
        )
        .unwrap();
        assert_eq!((a.generation, a.keys), (2, 1));
        // The same epoch and version, but the poll did not continue (a first page asked
        // again after a failure): a new generation too, which is always safe.
        let b = apply(
            &store,
            &page("new", 2, vec![key(2, true)], Some("d1")),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(b.generation, 3);
        let c = apply(&store, &page("new", 2, vec![key(3, true)], None), true, NOW).unwrap();
        assert_eq!((c.complete, c.generation, c.keys), (true, 3, 2));
        // Key 1 came from the abandoned snapshot (generation 1): retired.
        assert!(record(&store, 1).unwrap().generation < read_state(&store).unwrap().generation);
    }

    #[test]
    fn a_long_snapshot_keeps_a_serving_cache_fresh_and_a_new_one_not_ready() {
        let store = MemoryStore::default();
        apply(&store, &page("e", 5, vec![key(1, true)], None), false, NOW).unwrap();
        apply(
            &store,
            &page("e", 9, vec![key(1, true)], Some("c")),
            false,
            NOW + 100,
        )
        .unwrap();
        let state = read_state(&store).unwrap();
        assert_eq!((state.version, state.last_success), (5, NOW + 100));
        let fresh = MemoryStore::default();
        apply(
            &fresh,
            &page("e", 9, vec![key(1, true)], Some("c")),
            false,
            NOW,
        )
        .unwrap();
        assert_eq!(read_state(&fresh), None);
    }

    #[test]
    fn a_next_cursor_is_read_strictly() {
        for (next, ok) in [
            (json!("abc_DEF-123"), true),
            (json!(null), true),
            (json!(""), false),
            (json!("a b"), false),
            (json!("a&since=1"), false),
            (json!("x".repeat(MAX_CURSOR_LEN + 1)), false),
            (json!(5), false),
        ] {
            let body = json!({"epoch": "e", "version": 1, "full": true, "next": next});
            assert_eq!(
                parse_answer(body.to_string().as_bytes()).is_ok(),
                ok,
                "{next}"
            );
        }
        let body = json!({"epoch": "e", "version": 1, "full": false, "next": "c"});
        assert_eq!(
            parse_answer(body.to_string().as_bytes()),
            Err(FeedError::Field("next")),
            "a cursor on changes"
        );
        let body = json!({"epoch": "e", "version": 1, "more": true});
        assert!(parse_answer(body.to_string().as_bytes()).unwrap().more);
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
        apply(&store, &a, false, NOW + 40).unwrap();
        assert!(!stale(&store, NOW + 70, 30));
        assert!(stale(&store, NOW + 71, 30));
        assert_eq!(age_secs(&store, NOW + 71), Some(31));
    }

    #[test]
    fn the_poll_path_carries_since_epoch_cursor_and_paged() {
        let changes = |since, epoch: &str| Ask::Changes {
            since,
            epoch: epoch.into(),
        };
        assert_eq!(
            Ask::Snapshot.path("/v1/cache", 20),
            "/v1/cache?since=0&wait=20&paged=true"
        );
        assert_eq!(
            changes(9, "e1").path("/c?x=1", 5),
            "/c?x=1&since=9&epoch=e1&wait=5&paged=true"
        );
        assert_eq!(
            Ask::Page {
                epoch: "3f1c9a2e7b6d4e01".into(),
                after: "azAZ09-_".into()
            }
            .path("/v1/cache", 5),
            "/v1/cache?since=0&epoch=3f1c9a2e7b6d4e01&after=azAZ09-_&wait=0&paged=true",
            "a page is never held"
        );
        // A snapshot needs no epoch; an epoch or cursor that could break the query is
        // never sent (a page without its cursor is the first page again).
        assert_eq!(
            changes(0, "e1").path("/v1/cache", 5),
            "/v1/cache?since=0&wait=5&paged=true"
        );
        assert_eq!(
            changes(9, "a&b").path("/v1/cache", 5),
            "/v1/cache?since=9&wait=5&paged=true"
        );
        assert_eq!(
            Ask::Page {
                epoch: "e".into(),
                after: "a&b".into()
            }
            .path("/v1/cache", 5),
            "/v1/cache?since=0&wait=5&paged=true"
        );
    }

    #[test]
    fn the_state_and_progress_round_trip_and_garbage_is_none() {
        let s = SyncState {
            epoch: "e".into(),
            version: 3,
            last_success: 4,
            generation: 5,
            keys: 6,
        };
        assert_eq!(SyncState::decode(&s.encode()), Some(s));
        assert_eq!(
            SyncState::decode(b"e|3|4"),
            Some(SyncState {
                epoch: "e".into(),
                version: 3,
                last_success: 4,
                generation: 0,
                keys: 0
            }),
            "the state an earlier version wrote"
        );
        let store = MemoryStore::default();
        store.set(STATE_KEY, b"e|3|4", 0).unwrap();
        assert_eq!(
            Ask::next(&store, false),
            Ask::Snapshot,
            "its records have other names: a snapshot again"
        );
        for bad in [&b""[..], b"e|x|1", b"e|1|2|3", b"e|1|2|3|4|5", b"\xff"] {
            assert_eq!(SyncState::decode(bad), None);
        }
        let p = Progress {
            epoch: "e".into(),
            version: 3,
            generation: 2,
            keys: 10,
            after: "cur".into(),
        };
        assert_eq!(Progress::decode(&p.encode()), Some(p));
        for bad in [
            &b""[..],
            b"e|3|2|10",
            b"e|3|2|10|",
            b"e|3|2|10|a b",
            b"e|3|2|10|c|x",
        ] {
            assert_eq!(Progress::decode(bad), None);
        }
    }
}
