//! API keys: what a presented key must look like, its SHA-256, and the key record kept
//! for it in Envoy's shared data.
//!
//! A key is never stored or cached in plaintext: the policy and the cache hold only
//! `SHA-256(key)`. Lookup is by that hash (`k/<64 hex>`), so no secret is compared
//! byte by byte in this module; an attacker who can time the lookup learns only whether
//! some hash exists, which needs a preimage to be useful.
//!
//! Record encoding (one shared-data value per key, a few dozen bytes; never one blob for
//! all keys, since a shared-data get copies the whole value):
//! `1|<origin>|<key id>|<user>|<tenant>|<plan>|<expires unix secs or empty>|<a or r>`.
//! Every field is an [`is_valid_id`] string, so `|` cannot appear inside one.
//! `origin` is `p<16 hex>` for a key declared in a policy (the policy's fingerprint: a key
//! dropped from the policy stops working when the new policy loads, although shared data
//! has no delete) or `f` for a key fed by the control service.

use sha2::{Digest, Sha256};

/// The longest API key accepted from a request, in bytes.
pub const MAX_PRESENTED_KEY_LEN: usize = 256;

/// SHA-256 of an API key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not a secret, but logs have no use for all of it.
        write!(f, "KeyHash({}…)", hex(&self.0[..4]))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            s.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

impl KeyHash {
    pub fn of_key(key: &[u8]) -> KeyHash {
        KeyHash(Sha256::digest(key).into())
    }

    /// Parses 64 lower- or upper-case hex digits.
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let hi = (*pair.first()? as char).to_digit(16)?;
            let lo = (*pair.get(1)? as char).to_digit(16)?;
            *o = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(KeyHash(out))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The shared-data key under which this key's record lives.
    pub fn cache_key(&self) -> String {
        let mut s = String::with_capacity(66);
        s.push_str("k/");
        s.push_str(&self.to_hex());
        s
    }
}

/// Why a presented key was refused. Logged and counted; clients see one generic message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFailure {
    /// Not a plausible key: empty, too long, or bytes outside visible ASCII.
    Malformed,
    /// No record for its hash.
    Unknown,
    /// The record is revoked or inactive.
    Revoked,
    /// The record's expiry has passed.
    Expired,
}

impl KeyFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyFailure::Malformed => "malformed_key",
            KeyFailure::Unknown => "unknown_key",
            KeyFailure::Revoked => "revoked_key",
            KeyFailure::Expired => "expired_key",
        }
    }
}

/// Checks the shape of a key taken from a request and hashes it.
pub fn hash_presented_key(raw: &[u8]) -> Result<KeyHash, KeyFailure> {
    if raw.is_empty()
        || raw.len() > MAX_PRESENTED_KEY_LEN
        || !raw.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(KeyFailure::Malformed);
    }
    Ok(KeyHash::of_key(raw))
}

/// Identifiers (key ids, users, tenants, plans) are 1 to 128 characters of
/// `A-Z a-z 0-9 . _ : @ + -`: safe in a header value, a log line and the record encoding.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'+' | b'-')
        })
}

/// Where a key record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Declared in the policy with this fingerprint.
    Policy(u64),
    /// Fed by the control service.
    Feed,
}

/// What the cache knows about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub origin: Origin,
    pub key_id: String,
    pub user: String,
    pub tenant: String,
    pub plan: String,
    /// Unix seconds; the key is refused from this instant on.
    pub expires_at: Option<u64>,
    pub active: bool,
}

impl KeyRecord {
    pub fn encode(&self) -> Vec<u8> {
        let origin = match self.origin {
            Origin::Policy(fp) => format!("p{fp:016x}"),
            Origin::Feed => "f".to_string(),
        };
        let expires = self.expires_at.map(|e| e.to_string()).unwrap_or_default();
        let state = if self.active { "a" } else { "r" };
        format!(
            "1|{origin}|{}|{}|{}|{}|{expires}|{state}",
            self.key_id, self.user, self.tenant, self.plan
        )
        .into_bytes()
    }

    /// Decodes a record; `None` for anything not written by [`KeyRecord::encode`].
    pub fn decode(bytes: &[u8]) -> Option<KeyRecord> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut f = s.split('|');
        if f.next()? != "1" {
            return None;
        }
        let origin = match f.next()? {
            "f" => Origin::Feed,
            p => Origin::Policy(u64::from_str_radix(p.strip_prefix('p')?, 16).ok()?),
        };
        let mut id = || f.next().filter(|s| is_valid_id(s)).map(str::to_owned);
        let (key_id, user, tenant, plan) = (id()?, id()?, id()?, id()?);
        let expires_at = match f.next()? {
            "" => None,
            e => Some(e.parse().ok()?),
        };
        let active = match f.next()? {
            "a" => true,
            "r" => false,
            _ => return None,
        };
        if f.next().is_some() {
            return None;
        }
        Some(KeyRecord {
            origin,
            key_id,
            user,
            tenant,
            plan,
            expires_at,
            active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            origin: Origin::Policy(0xdead_beef),
            key_id: "key_1".into(),
            user: "user@example.com".into(),
            tenant: "t-1".into(),
            plan: "team".into(),
            expires_at: Some(1_767_225_600),
            active: true,
        }
    }

    #[test]
    fn sha256_matches_the_published_vector() {
        // FIPS 180-2 example: SHA-256("abc").
        assert_eq!(
            KeyHash::of_key(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_bad_input() {
        let h = KeyHash::of_key(b"k");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(KeyHash::from_hex("abc"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(KeyHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn records_round_trip() {
        let r = record();
        assert_eq!(KeyRecord::decode(&r.encode()), Some(r.clone()));
        let feed = KeyRecord {
            origin: Origin::Feed,
            expires_at: None,
            active: false,
            ..r
        };
        assert_eq!(KeyRecord::decode(&feed.encode()), Some(feed));
    }

    #[test]
    fn corrupt_records_decode_to_none() {
        for bad in [
            &b""[..],
            b"2|f|a|b|c|d||a",
            b"1|f|a|b|c|d||x",
            b"1|f|a|b|c|d||a|extra",
            b"1|f|a|b|c||1|a",
            b"1|q|a|b|c|d||a",
            b"1|f|a|b|c|d|soon|a",
            b"\xff\xfe",
        ] {
            assert_eq!(
                KeyRecord::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn presented_keys_must_be_visible_ascii_of_bounded_length() {
        assert!(hash_presented_key(b"ghk_abc").is_ok());
        assert_eq!(hash_presented_key(b""), Err(KeyFailure::Malformed));
        assert_eq!(hash_presented_key(b"a b"), Err(KeyFailure::Malformed));
        assert_eq!(hash_presented_key(b"a\xffb"), Err(KeyFailure::Malformed));
        assert_eq!(hash_presented_key(&[b'a'; 257]), Err(KeyFailure::Malformed));
        assert!(hash_presented_key(&[b'a'; 256]).is_ok());
    }

    #[test]
    fn ids_are_limited_to_header_safe_characters() {
        assert!(is_valid_id("user_demo@example.com"));
        for bad in ["", "a|b", "a b", "a\nb", "é", &"a".repeat(129)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
