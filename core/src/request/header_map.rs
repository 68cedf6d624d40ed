//! Reading a header map as the host hands it over, lending slices of the buffer instead
//! of the SDK's owned `String`s (two allocations a header, and a panic on a non-UTF-8
//! name); it never panics and never reads past the end.

/// The pairs of a serialized header map, in order, as `(name, value)` byte slices. The
/// buffer (`proxy_get_header_map_pairs`): the number of pairs (u32, little endian), each
/// pair's name and value lengths (u32 each), then each name and value followed by a NUL.
/// A malformed buffer ends the iteration where it stops making sense.
pub fn pairs(serialized: &[u8]) -> Pairs<'_> {
    let count = read_u32(serialized, 0).map_or(0, |n| n as usize);
    // Each pair needs 8 bytes of lengths and 2 NULs: a count the buffer cannot hold
    // is malformed, and iterating stops before the lengths run out.
    let data_at = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&at| at <= serialized.len());
    match data_at {
        Some(at) => Pairs {
            buf: serialized,
            next: 0,
            count,
            at,
        },
        None => Pairs {
            buf: &[],
            next: 0,
            count: 0,
            at: 0,
        },
    }
}

/// See [`pairs`].
#[derive(Clone)]
pub struct Pairs<'a> {
    buf: &'a [u8],
    /// The pair to read next.
    next: usize,
    count: usize,
    /// Where the next pair's name starts.
    at: usize,
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

impl<'a> Pairs<'a> {
    /// The value of the first header called `name` (lower case), if any.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.clone().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len)?;
        let field = self.buf.get(self.at..end)?;
        // Each field is followed by a NUL.
        if self.buf.get(end) != Some(&0) {
            return None;
        }
        self.at = end + 1;
        Some(field)
    }

    fn read_next(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let lengths = self.next.checked_mul(8)?.checked_add(4)?;
        let name_len = read_u32(self.buf, lengths)? as usize;
        let value_len = read_u32(self.buf, lengths + 4)? as usize;
        let name = self.take(name_len)?;
        let value = self.take(value_len)?;
        Some((name, value))
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        match self.read_next() {
            Some(pair) => {
                self.next += 1;
                Some(pair)
            }
            None => {
                // Malformed from here on: stop for good.
                self.count = 0;
                None
            }
        }
    }
}

/// Serializes pairs the way the host does (for tests and the harness's own checks).
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// [`serialize`] of text pairs, for tests.
#[cfg(test)]
pub(crate) fn serialize_text(pairs: &[(&str, &str)]) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    serialize(&pairs)
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pairs_come_back_in_order_as_slices() {
        let map: &[(&[u8], &[u8])] = &[
            (b":method", b"GET"),
            (b":path", b"/v1/things"),
            (b"x-empty", b""),
            (b"x-bytes", b"\xff\x00\x01"),
            (b"x-api-key", b"ghk_demo"),
        ];
        let bytes = serialize(map);
        let got: Vec<_> = pairs(&bytes).collect();
        assert_eq!(got, map);
        assert_eq!(pairs(&bytes).get(b":path"), Some(&b"/v1/things"[..]));
        assert_eq!(pairs(&bytes).get(b"x-missing"), None);
        assert_eq!(pairs(&[]).count(), 0);
        assert_eq!(pairs(&serialize(&[])).count(), 0);
    }

    #[test]
    fn malformed_maps_stop_without_panicking() {
        let bytes = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        // Cut anywhere: the pairs read are a prefix of the real ones.
        for cut in 0..bytes.len() {
            let got: Vec<_> = pairs(&bytes[..cut]).collect();
            assert!(got.len() < 2, "cut at {cut}");
        }
        // A count that the buffer cannot hold.
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&huge).count(), 0);
        // A length pointing past the end, and a missing NUL.
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(pairs(&long).count(), 0);
        let mut no_nul = bytes;
        let first_nul = 4 + 16 + 1;
        no_nul[first_nul] = b'x';
        assert_eq!(pairs(&no_nul).count(), 0);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let n = pairs(&bytes).count();
            prop_assert!(n <= bytes.len() / 10 + 1);
        }

        #[test]
        fn serialized_maps_round_trip(map in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)),
            0..12,
        )) {
            let borrowed: Vec<(&[u8], &[u8])> =
                map.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
            let bytes = serialize(&borrowed);
            let got: Vec<_> = pairs(&bytes).collect();
            prop_assert_eq!(got, borrowed);
        }
    }
}
