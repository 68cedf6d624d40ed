//! JWT revocation in shared data, checked on every JWT: per-user watermarks ("tokens of
//! this user issued before T are revoked") and a jti denylist, written from the policy
//! on configure and by the control-service feed.
//! What a revocation promises: `docs/policy.md#token-lifetime-and-revocation`.

use crate::authn::api_key::{Origin, hex};
use crate::store::{SharedStore, StoreError};
use sha2::{Digest, Sha256};

/// "Tokens of `user` issued before `before` are revoked", until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRevocation {
    pub user: String,
    pub origin: Origin,
    pub before: u64,
    pub until: Option<u64>,
}

/// One revoked token id, until `until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JtiRevocation {
    pub jti: String,
    pub origin: Origin,
    pub until: Option<u64>,
}

/// Why a verified token is refused anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Issued before the user's watermark (or carries no `iat` while one is in force).
    User,
    /// Its `jti` is on the denylist.
    Jti,
}

fn origin_text(origin: Origin) -> String {
    match origin {
        Origin::Policy(fp) => format!("p{fp:016x}"),
        Origin::Feed => "f".to_string(),
    }
}

fn parse_origin(s: &str) -> Option<Origin> {
    match s {
        "f" => Some(Origin::Feed),
        p => Some(Origin::Policy(
            u64::from_str_radix(p.strip_prefix('p')?, 16).ok()?,
        )),
    }
}

fn parse_until(s: &str) -> Option<Option<u64>> {
    match s {
        "" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// `u/<user>` → `1|<origin>|<revoked before, unix secs>|<until, unix secs or empty>`.
/// `until` is when the entry stops mattering (every token it covers has expired), so an
/// expired entry counts as absent and the feed can stop writing it (no delete). `origin`
/// works as for keys ([`crate::authn::api_key::Origin`]): an entry from an older policy
/// is ignored, and one the feed wrote is never overwritten by a policy.
pub fn user_key(user: &str) -> String {
    ["u/", user].concat()
}

/// `j/<sha256(jti), 64 hex>` → `1|<origin>|<until, unix secs or empty>`. Hashed because a
/// jti is arbitrary issuer-chosen text: the hash bounds the key's length and alphabet.
pub fn jti_key(jti: &str) -> String {
    ["j/", &hex(&Sha256::digest(jti.as_bytes()))].concat()
}

impl UserRevocation {
    pub fn encode(&self) -> Vec<u8> {
        let until = self.until.map(|u| u.to_string()).unwrap_or_default();
        format!("1|{}|{}|{until}", origin_text(self.origin), self.before).into_bytes()
    }

    /// `(origin, before, until)`; `None` for anything [`UserRevocation::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<(Origin, u64, Option<u64>)> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut f = s.split('|');
        if f.next()? != "1" {
            return None;
        }
        let origin = parse_origin(f.next()?)?;
        let before = f.next()?.parse().ok()?;
        let until = parse_until(f.next()?)?;
        f.next().is_none().then_some((origin, before, until))
    }
}

impl JtiRevocation {
    pub fn encode(&self) -> Vec<u8> {
        let until = self.until.map(|u| u.to_string()).unwrap_or_default();
        format!("1|{}|{until}", origin_text(self.origin)).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<(Origin, Option<u64>)> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut f = s.split('|');
        if f.next()? != "1" {
            return None;
        }
        let origin = parse_origin(f.next()?)?;
        let until = parse_until(f.next()?)?;
        f.next().is_none().then_some((origin, until))
    }
}

/// Whether an entry with this origin and expiry is in force for a policy at `now`.
fn in_force(origin: Origin, until: Option<u64>, fingerprint: u64, now_secs: u64) -> bool {
    let ours = match origin {
        Origin::Policy(fp) => fp == fingerprint,
        Origin::Feed => true,
    };
    ours && until.is_none_or(|u| now_secs < u)
}

/// Whether the entry at `key` was written by the feed (which a policy must not overwrite).
fn fed(
    store: &impl SharedStore,
    key: &str,
    decode_origin: impl Fn(&[u8]) -> Option<Origin>,
) -> bool {
    store
        .get(key)
        .and_then(|(bytes, _)| decode_origin(&bytes))
        .is_some_and(|o| o == Origin::Feed)
}

/// Writes the policy's revocations, leaving any entry the feed wrote alone. Returns how
/// many were written.
pub fn install(
    users: &[UserRevocation],
    jtis: &[JtiRevocation],
    store: &impl SharedStore,
) -> Result<usize, StoreError> {
    let mut written = 0;
    for u in users {
        let key = user_key(&u.user);
        if !fed(store, &key, |b| UserRevocation::decode(b).map(|d| d.0)) {
            store.set(&key, &u.encode(), 0)?;
            written += 1;
        }
    }
    for j in jtis {
        let key = jti_key(&j.jti);
        if !fed(store, &key, |b| JtiRevocation::decode(b).map(|d| d.0)) {
            store.set(&key, &j.encode(), 0)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Checks a verified token's user, `iat` and `jti` against the cache: two gets at most.
/// A corrupt entry is ignored (it cannot be attributed to anyone), never a crash.
pub fn check(
    store: &impl SharedStore,
    fingerprint: u64,
    user: &str,
    iat: Option<u64>,
    jti: Option<&str>,
    now_secs: u64,
) -> Result<(), Revoked> {
    let jti_key = jti.map(jti_key);
    check_at(store, fingerprint, user, iat, jti_key.as_deref(), now_secs)
}

/// [`check`] with the jti's denylist key already computed ([`jti_key`]).
pub fn check_at(
    store: &impl SharedStore,
    fingerprint: u64,
    user: &str,
    iat: Option<u64>,
    jti_key: Option<&str>,
    now_secs: u64,
) -> Result<(), Revoked> {
    if let Some((bytes, _)) = store.get(&user_key(user))
        && let Some((origin, before, until)) = UserRevocation::decode(&bytes)
        && in_force(origin, until, fingerprint, now_secs)
        && iat.is_none_or(|iat| iat < before)
    {
        return Err(Revoked::User);
    }
    if let Some(key) = jti_key
        && let Some((bytes, _)) = store.get(key)
        && let Some((origin, until)) = JtiRevocation::decode(&bytes)
        && in_force(origin, until, fingerprint, now_secs)
    {
        return Err(Revoked::Jti);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const FP: u64 = 0xfeed;
    const NOW: u64 = 1_767_225_600;

    fn user(before: u64, until: Option<u64>, origin: Origin) -> UserRevocation {
        UserRevocation {
            user: "alice".into(),
            origin,
            before,
            until,
        }
    }

    #[test]
    fn tokens_issued_before_the_watermark_are_revoked_and_later_ones_pass() {
        let store = MemoryStore::default();
        install(&[user(NOW, None, Origin::Policy(FP))], &[], &store).unwrap();
        let check = |iat| check(&store, FP, "alice", iat, None, NOW + 10);
        assert_eq!(check(Some(NOW - 1)), Err(Revoked::User));
        assert_eq!(
            check(None),
            Err(Revoked::User),
            "no iat: cannot prove it is newer"
        );
        assert_eq!(check(Some(NOW)), Ok(()));
        assert_eq!(super::check(&store, FP, "bob", Some(0), None, NOW), Ok(()));
    }

    #[test]
    fn an_entry_past_its_until_no_longer_counts() {
        let store = MemoryStore::default();
        install(
            &[user(NOW, Some(NOW + 3600), Origin::Policy(FP))],
            &[],
            &store,
        )
        .unwrap();
        assert_eq!(
            check(&store, FP, "alice", Some(1), None, NOW + 3599),
            Err(Revoked::User)
        );
        assert_eq!(
            check(&store, FP, "alice", Some(1), None, NOW + 3600),
            Ok(())
        );
    }

    #[test]
    fn denylisted_jtis_are_refused_until_their_entry_expires() {
        let store = MemoryStore::default();
        let j = JtiRevocation {
            jti: "tok-1|weird\u{0}".into(),
            origin: Origin::Feed,
            until: Some(NOW + 60),
        };
        install(&[], std::slice::from_ref(&j), &store).unwrap();
        assert!(jti_key(&j.jti).len() == 66 && jti_key(&j.jti).starts_with("j/"));
        assert_eq!(
            check(&store, FP, "u", Some(NOW), Some("tok-1|weird\u{0}"), NOW),
            Err(Revoked::Jti)
        );
        assert_eq!(
            check(&store, FP, "u", Some(NOW), Some("tok-2"), NOW),
            Ok(())
        );
        assert_eq!(
            check(
                &store,
                FP,
                "u",
                Some(NOW),
                Some("tok-1|weird\u{0}"),
                NOW + 60
            ),
            Ok(())
        );
    }

    #[test]
    fn an_older_policys_entries_are_ignored_and_the_feed_is_never_overwritten() {
        let store = MemoryStore::default();
        install(&[user(NOW, None, Origin::Policy(1))], &[], &store).unwrap();
        assert_eq!(check(&store, FP, "alice", Some(0), None, NOW), Ok(()));

        store
            .set(
                &user_key("alice"),
                &user(NOW + 100, None, Origin::Feed).encode(),
                0,
            )
            .unwrap();
        assert_eq!(
            install(&[user(NOW, None, Origin::Policy(FP))], &[], &store).unwrap(),
            0
        );
        assert_eq!(
            check(&store, FP, "alice", Some(NOW + 50), None, NOW),
            Err(Revoked::User)
        );
    }

    #[test]
    fn corrupt_entries_are_ignored() {
        let store = MemoryStore::default();
        for bad in [
            &b"1|f|soon|"[..],
            b"2|f|1|",
            b"1|x|1|",
            b"1|f|1|2|3",
            b"\xff",
        ] {
            store.set(&user_key("alice"), bad, 0).unwrap();
            assert_eq!(
                check(&store, FP, "alice", Some(0), None, NOW),
                Ok(()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn entries_round_trip() {
        let u = user(5, Some(9), Origin::Policy(FP));
        assert_eq!(
            UserRevocation::decode(&u.encode()),
            Some((u.origin, 5, Some(9)))
        );
        let j = JtiRevocation {
            jti: "x".into(),
            origin: Origin::Feed,
            until: None,
        };
        assert_eq!(
            JtiRevocation::decode(&j.encode()),
            Some((Origin::Feed, None))
        );
    }
}
