//! API keys: what a presented key must look like, its SHA-256, and the key record kept
//! for it in Envoy's shared data; a key is never stored or cached in plaintext.
//! The key format: `docs/policy.md#writing-a-policy`; storage: `docs/security.md#security`.

use sha2::{Digest, Sha256};

/// The longest API key accepted from a request, in bytes.
pub const MAX_PRESENTED_KEY_LEN: usize = 256;

/// SHA-256 of an API key: all the policy and the cache ever hold. Lookup is by this hash,
/// so no secret is compared byte by byte; timing the lookup tells only whether some hash
/// exists, which needs a preimage to be useful.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not a secret, but logs have no use for all of it.
        write!(f, "KeyHash({}…)", hex(&self.0[..4]))
    }
}

/// Lower-case hex, through `base16ct` (constant-time, as the RustCrypto crates use it).
pub(crate) fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

fn push_hex(s: &mut String, bytes: &[u8; 32]) {
    let mut buf = [0u8; 64];
    // 64 bytes is exactly the encoding of 32: `encode_str` cannot fail.
    s.push_str(base16ct::lower::encode_str(bytes, &mut buf).unwrap_or_default());
}

/// Decodes hex digits (either case) into `out`, which must be exactly half as long.
/// `None` for any other length or a non-hex byte.
pub(crate) fn unhex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len().checked_mul(2)? {
        return None;
    }
    base16ct::mixed::decode(text, out).ok().map(|_| ())
}

impl KeyHash {
    pub fn of_key(key: &[u8]) -> KeyHash {
        KeyHash(Sha256::digest(key).into())
    }

    /// Parses 64 lower- or upper-case hex digits.
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let mut out = [0u8; 32];
        unhex_into(s.as_bytes(), &mut out)?;
        Some(KeyHash(out))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The shared-data key under which the control service's feed keeps this key's
    /// record.
    pub fn cache_key(&self) -> String {
        let mut s = String::with_capacity(66);
        s.push_str("k/");
        push_hex(&mut s, &self.0);
        s
    }

    /// The shared-data key under which a policy's static key of this hash lives: apart
    /// from the feed's, so neither source ever overwrites the other's record.
    pub fn policy_cache_key(&self) -> String {
        let mut s = String::with_capacity(67);
        s.push_str(POLICY_KEY_PREFIX);
        push_hex(&mut s, &self.0);
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

/// Base62 characters of the random part of a key gatehouse issues: 22 carry 130 bits.
pub const RANDOM_LEN: usize = 22;
/// Base62 characters of the checksum that ends a key gatehouse issues.
pub const CHECKSUM_LEN: usize = 6;
/// The longest prefix (`ghk`, `acme_live`, ...), without the `_` that ends it.
pub const MAX_PREFIX_LEN: usize = 32;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The CRC-32 (ISO-HDLC, reflected polynomial `0xEDB88320`, the one zlib and secret
/// scanners use) of every byte value, made at compile time: one lookup per byte instead
/// of eight shift-and-xor steps. Hand-written, not a crate: a dozen lines, measured per
/// request (benches/README.md) and pinned to the published check value by a test.
// `n < 256` indexes a 256-entry table: the loop bound is the length.
#[allow(clippy::indexing_slicing)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut crc = n as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            bit += 1;
        }
        table[n] = crc;
        n += 1;
    }
    table
};

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        let index = usize::from((crc as u8) ^ *b);
        crc = (crc >> 8) ^ CRC_TABLE.get(index).copied().unwrap_or(0);
    }
    !crc
}

/// The checksum of everything before it: CRC-32 in 6 base62 digits, most significant
/// first (62^6 > 2^32, so every CRC has one spelling).
pub fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = u64::from(crc32(body));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62.get((n % 62) as usize).copied().unwrap_or(b'0');
        n /= 62;
    }
    out
}

/// `<prefix>_<random><checksum>`: the key format gatehouse issues. `random` must be
/// base62; the caller draws it from a CSPRNG.
pub fn format_key(prefix: &str, random: &str) -> String {
    let mut key = format!("{prefix}_{random}");
    let sum = checksum(key.as_bytes());
    key.extend(sum.iter().map(|b| char::from(*b)));
    key
}

/// Whether `prefix` can start a key: a lower-case letter, then lower-case letters,
/// digits and `_`, at most [`MAX_PREFIX_LEN`].
pub fn is_valid_prefix(prefix: &str) -> bool {
    let b = prefix.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PREFIX_LEN
        && b.first().is_some_and(u8::is_ascii_lowercase)
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// Checks that a presented key has the issued format and a correct checksum, so a
/// mistyped or made-up key is refused before any lookup: `<prefix>_` then at least
/// [`RANDOM_LEN`] + [`CHECKSUM_LEN`] base62 characters, the last six the checksum of the
/// rest.
pub fn check_format(raw: &[u8]) -> Result<(), KeyFailure> {
    let Some(split) = raw.iter().rposition(|b| *b == b'_') else {
        return Err(KeyFailure::Malformed);
    };
    let (prefix, tail) = (raw.get(..split), raw.get(split + 1..));
    let (Some(prefix), Some(tail)) = (prefix, tail) else {
        return Err(KeyFailure::Malformed);
    };
    let prefix_ok = std::str::from_utf8(prefix).is_ok_and(is_valid_prefix);
    if !prefix_ok
        || tail.len() < RANDOM_LEN + CHECKSUM_LEN
        || !tail.iter().all(u8::is_ascii_alphanumeric)
    {
        return Err(KeyFailure::Malformed);
    }
    let body_len = raw.len() - CHECKSUM_LEN;
    match (raw.get(..body_len), raw.get(body_len..)) {
        (Some(body), Some(sum)) if checksum(body) == sum => Ok(()),
        _ => Err(KeyFailure::Malformed),
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

/// The prefix of [`KeyHash::policy_cache_key`]; the feed's is `k/`.
pub const POLICY_KEY_PREFIX: &str = "kp/";

/// Where a key record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Declared in the policy with this fingerprint (`p<16 hex>`): a key dropped from the
    /// policy stops working when the new policy loads, although shared data has no delete.
    Policy(u64),
    /// Fed by the control service (`f`).
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
    /// Route groups the key may call; empty: every route.
    pub scopes: Vec<String>,
}

impl KeyRecord {
    /// Whether the key may call a route in `group` (`None`: a route in no group).
    pub fn allows(&self, group: Option<&str>) -> bool {
        self.scopes.is_empty() || group.is_some_and(|g| self.scopes.iter().any(|s| s == g))
    }

    /// One shared-data value per key, a few dozen bytes (never one blob for all keys: a
    /// shared-data get copies the whole value):
    /// `1|<origin>|<key id>|<user>|<tenant>|<plan>|<expires unix secs or empty>|<a or r>|<scopes>`,
    /// scopes comma-separated (empty: every route). Every field is an [`is_valid_id`]
    /// string, so `|` and `,` cannot appear inside one.
    pub fn encode(&self) -> Vec<u8> {
        let origin = match self.origin {
            Origin::Policy(fp) => format!("p{fp:016x}"),
            Origin::Feed => "f".to_string(),
        };
        let expires = self.expires_at.map(|e| e.to_string()).unwrap_or_default();
        let state = if self.active { "a" } else { "r" };
        format!(
            "1|{origin}|{}|{}|{}|{}|{expires}|{state}|{}",
            self.key_id,
            self.user,
            self.tenant,
            self.plan,
            self.scopes.join(",")
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
        let scopes = match f.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|s| is_valid_id(s).then(|| s.to_string()))
                .collect::<Option<Vec<_>>>()?,
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
            scopes,
        })
    }
}

/// The precise reason, as logs and metrics name it.
impl std::fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
            scopes: vec!["billing".into(), "reports".into()],
        }
    }

    #[test]
    fn crc32_matches_the_published_check_value() {
        // The CRC-32/ISO-HDLC check value: CRC of "123456789".
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn issued_keys_pass_the_format_check_and_typos_do_not() {
        let key = format_key("ghk", "3kQ9wZ7pL2mN8vB4xC6dF1");
        assert_eq!(key.len(), 4 + RANDOM_LEN + CHECKSUM_LEN);
        assert_eq!(check_format(key.as_bytes()), Ok(()));
        assert_eq!(
            check_format(format_key("acme_live", "3kQ9wZ7pL2mN8vB4xC6dF1").as_bytes()),
            Ok(())
        );
        // Every single-character substitution in the random part is caught.
        let bytes = key.as_bytes();
        for i in 4..bytes.len() {
            for c in [b'0', b'a', b'Z'] {
                if bytes[i] == c {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[i] = c;
                assert_eq!(
                    check_format(&typo),
                    Err(KeyFailure::Malformed),
                    "position {i}"
                );
            }
        }
        // Swapping two adjacent characters is caught too.
        let mut swapped = bytes.to_vec();
        swapped.swap(6, 7);
        if swapped != bytes {
            assert_eq!(check_format(&swapped), Err(KeyFailure::Malformed));
        }
        for bad in [
            &b""[..],
            b"ghk",
            b"ghk_",
            b"_3kQ9wZ7pL2mN8vB4xC6dF1abcdef",
            b"GHK_3kQ9wZ7pL2mN8vB4xC6dF1abcdef",
            b"ghk_short123456",
            b"ghk_3kQ9wZ7pL2mN8vB4xC6dF1abc-ef",
            b"ghk-3kQ9wZ7pL2mN8vB4xC6dF1abcdef",
        ] {
            assert_eq!(check_format(bad), Err(KeyFailure::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn scopes_limit_a_key_to_its_route_groups() {
        let r = record();
        assert!(r.allows(Some("billing")));
        assert!(!r.allows(Some("admin")));
        assert!(!r.allows(None));
        let unscoped = KeyRecord {
            scopes: vec![],
            ..r
        };
        assert!(unscoped.allows(None) && unscoped.allows(Some("admin")));
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
            b"2|f|a|b|c|d||a|",
            b"1|f|a|b|c|d||x|",
            b"1|f|a|b|c|d||a||extra",
            b"1|f|a|b|c|d||a",
            b"1|f|a|b|c|d||a|x,,y",
            b"1|f|a|b|c|d||a|x|y",
            b"1|f|a|b|c||1|a|",
            b"1|q|a|b|c|d||a|",
            b"1|f|a|b|c|d|soon|a|",
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
