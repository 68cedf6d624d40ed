//! Header maps as Envoy keeps them, and the proxy-wasm encoding of a map.
//!
//! Names are lower-case (Envoy's `LowerCaseString`); values are bytes, never assumed to be
//! UTF-8, so tests can send what a hostile client would. The wire format, shared by
//! `proxy_get_header_map_pairs`, `proxy_set_header_map_pairs`, local responses and HTTP
//! calls: `u32 count`, then `count` pairs of `(u32 name_len, u32 value_len)`, then each
//! name and value followed by a NUL byte; all integers little-endian.
//!
//! Decoding takes guest-controlled bytes: it must never panic, only return an error.

/// One header map, in order, repeated names allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderMap {
    entries: Vec<(String, Vec<u8>)>,
}

/// Header names are compared and stored lower-case, as Envoy does; bytes that are not UTF-8
/// in a name are replaced (names are tokens, so a real client cannot send them anyway).
pub(crate) fn lower_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

impl HeaderMap {
    pub(crate) fn from_pairs<N: AsRef<[u8]>, V: Into<Vec<u8>>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> HeaderMap {
        HeaderMap {
            entries: pairs
                .into_iter()
                .map(|(n, v)| (lower_name(n.as_ref()), v.into()))
                .collect(),
        }
    }

    pub(crate) fn entries(&self) -> &[(String, Vec<u8>)] {
        &self.entries
    }

    pub(crate) fn into_entries(self) -> Vec<(String, Vec<u8>)> {
        self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The first value only, as Envoy's `getHeaderMapValue` (repeated headers are not joined).
    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let name = lower_name(name);
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn add(&mut self, name: &[u8], value: &[u8]) {
        self.entries.push((lower_name(name), value.to_vec()));
    }

    /// Envoy's `setCopy`: the first entry of that name takes the value, later ones go;
    /// absent names are appended.
    pub(crate) fn replace(&mut self, name: &[u8], value: &[u8]) {
        let name = lower_name(name);
        let mut seen = false;
        self.entries.retain_mut(|(n, v)| {
            if *n != name {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = value.to_vec();
            true
        });
        if !seen {
            self.entries.push((name, value.to_vec()));
        }
    }

    pub(crate) fn remove(&mut self, name: &[u8]) {
        let name = lower_name(name);
        self.entries.retain(|(n, _)| *n != name);
    }
}

/// Decoded pairs as the guest sent them: names not yet lower-cased, bytes as given.
pub(crate) type RawPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Encodes pairs in the proxy-wasm map format.
pub(crate) fn serialize(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 8 + n.len() + 1 + v.len() + 1)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&len_u32(n.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.len()).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Lengths on the wire are u32; a map that large cannot come from a test.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Decodes the proxy-wasm map format. Empty input is the empty map (what the SDK sends for
/// an empty `Vec`). Any inconsistency (truncation, missing NUL) is an error, not a panic.
pub(crate) fn deserialize(bytes: &[u8]) -> Result<RawPairs, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = read_u32(bytes, 0).ok_or("map shorter than its 4-byte count")? as usize;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| format!("map claims {count} entries but has {} bytes", bytes.len()))?;
    let mut pairs = Vec::with_capacity(count);
    let mut at = sizes_end;
    for i in 0..count {
        let name_len = read_u32(bytes, 4 + i * 8).ok_or("truncated size table")? as usize;
        let value_len = read_u32(bytes, 8 + i * 8).ok_or("truncated size table")? as usize;
        let (name, next) = take_terminated(bytes, at, name_len)?;
        let (value, next) = take_terminated(bytes, next, value_len)?;
        pairs.push((name.to_vec(), value.to_vec()));
        at = next;
    }
    Ok(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

/// `len` bytes at `at`, then the NUL that must follow them; returns the slice and the
/// offset after the NUL.
fn take_terminated(bytes: &[u8], at: usize, len: usize) -> Result<(&[u8], usize), String> {
    let end = at
        .checked_add(len)
        .filter(|end| *end < bytes.len())
        .ok_or_else(|| format!("map entry of {len} bytes at offset {at} runs past the end"))?;
    match bytes.get(end) {
        Some(0) => Ok((bytes.get(at..end).unwrap_or_default(), end + 1)),
        _ => Err(format!("map entry at offset {at} is not NUL-terminated")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialization_matches_the_sdk_layout() {
        let pairs = vec![
            (":method".to_string(), b"GET".to_vec()),
            ("x".to_string(), vec![0xff]),
        ];
        let bytes = serialize(&pairs);
        let mut expected = vec![2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0];
        expected.extend_from_slice(b":method\0GET\0x\0\xff\0");
        assert_eq!(bytes, expected);
        let back = deserialize(&bytes).map_err(|e| e.to_string());
        assert_eq!(
            back,
            Ok(vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b"x".to_vec(), vec![0xff])
            ])
        );
    }

    #[test]
    fn empty_input_is_the_empty_map() {
        assert_eq!(deserialize(&[]), Ok(vec![]));
        assert_eq!(deserialize(&[0, 0, 0, 0]), Ok(vec![]));
    }

    #[test]
    fn truncated_or_lying_maps_are_errors_not_panics() {
        assert!(deserialize(&[1]).is_err());
        assert!(deserialize(&[255, 255, 255, 255]).is_err());
        assert!(deserialize(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, b'a', 0]).is_err());
        assert!(deserialize(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', 0]).is_err());
    }

    #[test]
    fn replace_keeps_the_first_position_and_drops_repeats() {
        let mut map = HeaderMap::from_pairs([("a", "1"), ("B", "2"), ("b", "3")]);
        map.replace(b"b", b"9");
        assert_eq!(
            map.entries(),
            &[
                ("a".to_string(), b"1".to_vec()),
                ("b".to_string(), b"9".to_vec())
            ]
        );
        map.replace(b"C", b"4");
        assert_eq!(map.get(b"c"), Some(&b"4"[..]));
        map.remove(b"A");
        assert_eq!(map.get(b"a"), None);
    }
}
