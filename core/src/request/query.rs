//! The query string as frameworks read it: parameters split at `&` and `;`, names and
//! values percent-decoded.

pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// The query string's parameters as raw bytes, `(name, value)`, split at `&` and `;`;
/// `value` is `None` for a parameter without `=`. Nothing on a path without `?`; the
/// fragment, if any, is not part of the query.
pub fn query_pairs(raw_path: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let query = raw_path
        .iter()
        .position(|&b| b == b'?')
        .and_then(|start| raw_path.get(start + 1..))
        .unwrap_or_default();
    let query = query
        .iter()
        .position(|&b| b == b'#')
        .and_then(|end| query.get(..end))
        .unwrap_or(query);
    query
        .split(|&b| b == b'&' || b == b';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (pair.get(..eq).unwrap_or_default(), pair.get(eq + 1..)),
            None => (pair, None),
        })
}

/// The value of the first query parameter named `name` (any case, percent-decoded, `+`
/// left as is, its first `max` bytes), `None` when there is none.
pub fn query_value<'p>(
    raw_path: &'p [u8],
    name: &[u8],
    max: usize,
) -> Option<std::borrow::Cow<'p, [u8]>> {
    if !raw_path.contains(&b'?') {
        return None;
    }
    query_pairs(raw_path).find_map(|(n, v)| {
        let v = v?;
        percent_decoded(n, name.len() * 3)
            .eq_ignore_ascii_case(name)
            .then(|| percent_decoded(v, max))
    })
}

/// The first `max` bytes of `raw` with `%XX` decoded (a malformed escape kept as it is),
/// borrowed when there is no escape.
pub fn percent_decoded(raw: &[u8], max: usize) -> std::borrow::Cow<'_, [u8]> {
    let raw = raw.get(..max).unwrap_or(raw);
    if !raw.contains(&b'%') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let escaped = match (b, raw.get(i + 1), raw.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_digit(hi).zip(hex_digit(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                out.push((hi << 4) | lo);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}
