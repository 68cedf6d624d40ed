//! Text for the request path, without `core::fmt`: in the module, `format!` costs a trip
//! through the formatting machinery (dynamic dispatch, padding, and for 64-bit numbers a
//! 128-bit multiply per digit pair on wasm32), measurable per request. Decimals are
//! `itoa`'s.

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` in decimal with at least `width` digits (zeros in front).
pub fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Appends `s` as a JSON string, quotes included, escaped as serde_json does: `"`, `\`
/// and the control characters; everything else as it is (a `str` is valid UTF-8).
/// Hand-written, not `serde_json::to_writer`: it appends to the body being built without
/// serde's `Serializer` and `io::Write` layers, and the tests below hold it to serde_json.
pub fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => Some(""),
            _ => None,
        };
        let Some(escape) = escape else { continue };
        out.push_str(s.get(plain..i).unwrap_or(""));
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(
                HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0'),
            ));
            out.push(char::from(
                HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0'),
            ));
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(s.get(plain..).unwrap_or(""));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padded_decimals() {
        let mut s = String::new();
        push_padded(&mut s, 7, 3);
        push_padded(&mut s, 2026, 4);
        push_padded(&mut s, 12345, 2);
        assert_eq!(s, "007202612345");
    }

    proptest! {
        #[test]
        fn json_strings_match_serde_json(s in any::<String>()) {
            let mut out = String::new();
            push_json_string(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn json_strings_of_every_control_character() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = String::new();
        push_json_string(&mut out, &all);
        assert_eq!(out, serde_json::to_string(&all).unwrap());
    }

    #[test]
    fn decimals_match_display() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            65_536,
            1_767_225_600,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
    }
}
