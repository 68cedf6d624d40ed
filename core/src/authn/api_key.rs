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
    /// record: `K` and the first 84 bits of the hash in base64url, [`FEED_ENTRY_LEN`]
    /// bytes, short enough that the host keeps it inside its string object, with no
    /// allocation of its own (the cache holds up to millions of them). Two keys whose
    /// hashes share 84 bits would share the entry (odds about n²/2^85, 3·10^-14 at a
    /// million keys): the record holds the whole hash, which a lookup compares, so one
    /// key is never taken for another.
    pub fn cache_key(&self) -> String {
        use base64::Engine as _;
        let mut buf = [0u8; 16];
        // 11 bytes encode to 15 characters; the first 14 carry the first 84 bits.
        let written = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(self.0.get(..11).unwrap_or_default(), &mut buf)
            .unwrap_or(0);
        let bits = buf
            .get(..written.min(FEED_ENTRY_LEN - 1))
            .unwrap_or_default();
        let mut s = String::with_capacity(FEED_ENTRY_LEN);
        s.push('K');
        s.push_str(std::str::from_utf8(bits).unwrap_or_default());
        s
    }

    /// The hash bits a feed entry name ([`KeyHash::cache_key`]) carries, as the 21
    /// lower-case hex digits every hash of that entry starts with; `None` for a name
    /// that is not a feed entry's. The control service's `/v1/authz` answers a read of
    /// the entry from the keys with those digits.
    pub fn entry_hex_prefix(name: &str) -> Option<String> {
        use base64::Engine as _;
        let bits = name
            .strip_prefix('K')
            .filter(|b| b.len() == FEED_ENTRY_LEN - 1)?;
        // 14 characters and an `A` (six zero bits) are 90 bits: 11 bytes and two zero
        // bits, which strict decoding accepts.
        let mut padded = [b'A'; FEED_ENTRY_LEN];
        padded
            .get_mut(..bits.len())?
            .copy_from_slice(bits.as_bytes());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(padded)
            .ok()?;
        let mut digits = hex(&bytes);
        digits.truncate(21);
        Some(digits)
    }

    /// The shared-data key under which a policy's static key of this hash lives: apart
    /// from the feed's, so neither source ever overwrites the other's record: `kp` and
    /// the same 84 bits as [`KeyHash::cache_key`], so a lookup makes one from the other
    /// by a copy.
    pub fn policy_cache_key(&self) -> String {
        let feed = self.cache_key();
        let mut s = String::with_capacity(POLICY_ENTRY_LEN);
        s.push_str(POLICY_KEY_PREFIX);
        s.push_str(feed.get(1..).unwrap_or_default());
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

/// The prefix of [`KeyHash::policy_cache_key`]; the feed's entries start with `K`.
pub const POLICY_KEY_PREFIX: &str = "kp";
/// The length of [`KeyHash::cache_key`]: `K` and 14 base64url characters.
pub const FEED_ENTRY_LEN: usize = 15;
/// The length of [`KeyHash::policy_cache_key`]: `kp` and the same 14 characters.
pub const POLICY_ENTRY_LEN: usize = 16;

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
    /// The feed's snapshot generation that wrote the record (0 for the policy's keys): a
    /// fed record older than the cache's generation is one the last snapshot no longer
    /// mentions (control/FEED.md, "How the sync applies a snapshot").
    pub generation: u32,
}

/// The first byte of an encoded record. Not ASCII, so never the first byte of the
/// text records of earlier versions (`1|...`), which decode to `None`.
const RECORD_TAG: u8 = 0xB2;
const FLAG_ACTIVE: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
const FLAG_POLICY: u8 = 4;
/// The most scopes a record carries; the feed skips a key with more.
pub const MAX_SCOPES: usize = 255;

impl KeyRecord {
    /// Whether the key may call a route in `group` (`None`: a route in no group).
    pub fn allows(&self, group: Option<&str>) -> bool {
        self.scopes.is_empty() || group.is_some_and(|g| self.scopes.iter().any(|s| s == g))
    }

    /// One shared-data value per key (never one blob for all keys: a shared-data get
    /// copies the whole value), binary and small, since the cache holds up to millions:
    ///
    /// `B2 | flags | generation u32 LE | [expires u64 LE] | [fingerprint u64 LE] |
    /// sha256 (32) | key id | user | tenant | plan | scope count | scopes`,
    ///
    /// flags 1 active, 2 expires, 4 a policy key (with its fingerprint); each string is
    /// one length byte and its bytes (ids are at most 128 bytes). The whole hash is kept
    /// because the feed's entry name holds only 84 bits of it ([`KeyHash::cache_key`]).
    /// `None` when the record cannot be encoded (more than [`MAX_SCOPES`] scopes, an id
    /// the id rule refuses).
    pub fn encode(&self, hash: &KeyHash) -> Option<Vec<u8>> {
        let ids = [&self.key_id, &self.user, &self.tenant, &self.plan];
        if self.scopes.len() > MAX_SCOPES
            || !ids.iter().all(|s| is_valid_id(s))
            || !self.scopes.iter().all(|s| is_valid_id(s))
        {
            return None;
        }
        let strings: usize = ids.iter().map(|s| 1 + s.len()).sum::<usize>()
            + self.scopes.iter().map(|s| 1 + s.len()).sum::<usize>();
        let mut out = Vec::with_capacity(2 + 4 + 16 + 32 + strings + 1);
        let mut flags = 0;
        if self.active {
            flags |= FLAG_ACTIVE;
        }
        if self.expires_at.is_some() {
            flags |= FLAG_EXPIRES;
        }
        if matches!(self.origin, Origin::Policy(_)) {
            flags |= FLAG_POLICY;
        }
        out.extend_from_slice(&[RECORD_TAG, flags]);
        out.extend_from_slice(&self.generation.to_le_bytes());
        if let Some(e) = self.expires_at {
            out.extend_from_slice(&e.to_le_bytes());
        }
        if let Origin::Policy(fp) = self.origin {
            out.extend_from_slice(&fp.to_le_bytes());
        }
        out.extend_from_slice(&hash.0);
        for s in ids {
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out.push(self.scopes.len() as u8);
        for s in &self.scopes {
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        Some(out)
    }

    /// Decodes a record and the hash it is for; `None` for anything
    /// [`KeyRecord::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<(KeyHash, KeyRecord)> {
        let mut r = Reader(bytes);
        if r.byte()? != RECORD_TAG {
            return None;
        }
        let flags = r.byte()?;
        if flags & !(FLAG_ACTIVE | FLAG_EXPIRES | FLAG_POLICY) != 0 {
            return None;
        }
        let generation = u32::from_le_bytes(r.array()?);
        let expires_at = if flags & FLAG_EXPIRES != 0 {
            Some(u64::from_le_bytes(r.array()?))
        } else {
            None
        };
        let origin = if flags & FLAG_POLICY != 0 {
            Origin::Policy(u64::from_le_bytes(r.array()?))
        } else {
            Origin::Feed
        };
        let hash = KeyHash(r.array()?);
        let (key_id, user, tenant, plan) = (r.id()?, r.id()?, r.id()?, r.id()?);
        let count = usize::from(r.byte()?);
        let mut scopes = Vec::with_capacity(count);
        for _ in 0..count {
            scopes.push(r.id()?);
        }
        if !r.0.is_empty() {
            return None;
        }
        Some((
            hash,
            KeyRecord {
                origin,
                key_id,
                user,
                tenant,
                plan,
                expires_at,
                active: flags & FLAG_ACTIVE != 0,
                scopes,
                generation,
            },
        ))
    }
}

/// Reads an encoded record front to back; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    /// One length-prefixed id that follows the id rule.
    fn id(&mut self) -> Option<String> {
        let len = usize::from(self.byte()?);
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        let s = std::str::from_utf8(head).ok()?;
        is_valid_id(s).then(|| s.to_string())
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
            generation: 0,
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
    fn records_round_trip_with_their_hash() {
        let h = KeyHash::of_key(b"k");
        let r = record();
        assert_eq!(
            KeyRecord::decode(&r.encode(&h).unwrap()),
            Some((h, r.clone()))
        );
        let feed = KeyRecord {
            origin: Origin::Feed,
            expires_at: None,
            active: false,
            scopes: vec![],
            generation: u32::MAX,
            ..r
        };
        assert_eq!(
            KeyRecord::decode(&feed.encode(&h).unwrap()),
            Some((h, feed))
        );
    }

    #[test]
    fn a_typical_fed_record_is_under_a_hundred_bytes() {
        let r = KeyRecord {
            origin: Origin::Feed,
            key_id: "key_8f3a9c2e1b7d4f60".into(),
            user: "user_1234567".into(),
            tenant: "tenant_12345".into(),
            plan: "team".into(),
            expires_at: Some(1_767_225_600),
            active: true,
            scopes: vec![],
            generation: 1,
        };
        let bytes = r.encode(&KeyHash::of_key(b"k")).unwrap();
        assert_eq!(bytes.len(), 2 + 4 + 8 + 32 + 20 + 12 + 12 + 4 + 4 + 1);
        assert!(bytes.len() < 100);
    }

    #[test]
    fn records_that_cannot_be_encoded_are_none() {
        let h = KeyHash::of_key(b"k");
        let too_many = KeyRecord {
            scopes: vec!["s".into(); MAX_SCOPES + 1],
            ..record()
        };
        assert_eq!(too_many.encode(&h), None);
        let bad_id = KeyRecord {
            user: "a b".into(),
            ..record()
        };
        assert_eq!(bad_id.encode(&h), None);
    }

    #[test]
    fn corrupt_records_decode_to_none() {
        let good = record().encode(&KeyHash::of_key(b"k")).unwrap();
        // Every strict prefix, the record with a byte more, and each byte changed to one
        // the format cannot hold where it is.
        for n in 0..good.len() {
            assert_eq!(KeyRecord::decode(&good[..n]), None, "prefix of {n} bytes");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(KeyRecord::decode(&longer), None);
        let mut tag = good.clone();
        tag[0] = b'1';
        assert_eq!(KeyRecord::decode(&tag), None);
        let mut flags = good.clone();
        flags[1] |= 8;
        assert_eq!(KeyRecord::decode(&flags), None);
        // The key id's first byte (after tag, flags, generation, expiry, fingerprint and
        // hash, and its length byte) made a space: the id rule refuses it.
        let mut id = good.clone();
        id[2 + 4 + 8 + 8 + 32 + 1] = b' ';
        assert_eq!(KeyRecord::decode(&id), None);
        for text in [&b"1|f|a|b|c|d||a|"[..], b"", b"\xff\xfe"] {
            assert_eq!(KeyRecord::decode(text), None);
        }
    }

    #[test]
    fn feed_entry_names_are_fifteen_bytes_and_carry_84_bits() {
        let a = KeyHash::of_key(b"abc");
        let name = a.cache_key();
        assert_eq!(name.len(), FEED_ENTRY_LEN);
        assert!(name.starts_with('K'));
        assert!(
            name[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b0..., in base64url.
        assert_eq!(name, "KungWv48Bz-pBQU");
        // Hashes that differ only after bit 84 share the name; bit 83 tells them apart.
        let mut b = a;
        b.0[10] ^= 0x0f;
        b.0[31] ^= 1;
        assert_eq!(b.cache_key(), name);
        let mut c = a;
        c.0[10] ^= 0x10;
        assert_ne!(c.cache_key(), name);
        // And back: the name's bits as hex, the first 21 digits of the hash.
        assert_eq!(
            KeyHash::entry_hex_prefix(&name).as_deref(),
            Some("ba7816bf8f01cfea41414")
        );
        for bad in [
            "",
            "K",
            "kungWv48Bz-pBQU",
            "KungWv48Bz-pBQ",
            "KungWv48Bz-pBQU=",
            "KungWv48Bz+pBQU",
        ] {
            assert_eq!(KeyHash::entry_hex_prefix(bad), None, "{bad}");
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
