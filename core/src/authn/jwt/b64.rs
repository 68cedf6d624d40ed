//! Strict base64url (RFC 4648 §5) without padding, as JWS compact serialization uses it.
//!
//! Strict means: only `A-Z a-z 0-9 - _`, no `=` padding, no whitespace, no length that
//! cannot come from an encoder (`len % 4 == 1`), and the unused low bits of the last
//! character must be zero. The last rule makes the encoding canonical: one byte string
//! has exactly one text, so a token cannot be re-encoded (a signature "changed" from `Q`
//! to `R` in its last character) and still verify, which matters to anyone who keys a
//! replay or revocation cache on the token text.
//!
//! [`decode_standard`] reads the standard alphabet (RFC 4648 §4, `+` and `/`), with or
//! without `=` padding, as webhook providers send base64 signatures; the same strictness
//! applies otherwise.

/// Why a segment is not strict base64url. Carries no input bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotBase64Url;

/// The two characters that differ between the alphabets: base64url's `-` `_`, or
/// standard base64's `+` `/`.
type Alphabet = (u8, u8);
const URL: Alphabet = (b'-', b'_');
const STANDARD: Alphabet = (b'+', b'/');

fn sextet(c: u8, (c62, c63): Alphabet) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        _ if c == c62 => 62,
        _ if c == c63 => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes `input`, appending to `out` (cleared first).
pub(crate) fn decode_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), NotBase64Url> {
    decode_alphabet(input, URL, out)
}

/// Decodes standard base64 (RFC 4648 §4), padded or not. `None` for anything else.
pub(crate) fn decode_standard(input: &[u8]) -> Option<Vec<u8>> {
    // Padding only completes the last quantum: at most two `=`, and only then a length
    // that is a multiple of four.
    let unpadded = match input {
        [rest @ .., b'=', b'='] | [rest @ .., b'='] if input.len().is_multiple_of(4) => rest,
        _ => input,
    };
    if unpadded.ends_with(b"=") {
        return None;
    }
    let mut out = Vec::new();
    decode_alphabet(unpadded, STANDARD, &mut out).ok()?;
    Some(out)
}

fn decode_alphabet(
    input: &[u8],
    alphabet: Alphabet,
    out: &mut Vec<u8>,
) -> Result<(), NotBase64Url> {
    let sextet = |c: u8| sextet(c, alphabet);
    out.clear();
    if input.len() % 4 == 1 {
        return Err(NotBase64Url);
    }
    out.reserve(input.len() / 4 * 3 + 2);
    let mut chunks = input.chunks_exact(4);
    for chunk in &mut chunks {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | sextet(c).ok_or(NotBase64Url)?;
        }
        let [_, a, b, c] = acc.to_be_bytes();
        out.extend_from_slice(&[a, b, c]);
    }
    let rest = chunks.remainder();
    let mut acc = 0u32;
    for &c in rest {
        acc = (acc << 6) | sextet(c).ok_or(NotBase64Url)?;
    }
    match rest.len() {
        0 => {}
        // 2 characters = 12 bits = 1 byte + 4 unused bits.
        2 => {
            if acc & 0x0f != 0 {
                return Err(NotBase64Url);
            }
            out.push(((acc >> 4) & 0xff) as u8);
        }
        // 3 characters = 18 bits = 2 bytes + 2 unused bits.
        3 => {
            if acc & 0x03 != 0 {
                return Err(NotBase64Url);
            }
            out.push(((acc >> 10) & 0xff) as u8);
            out.push(((acc >> 2) & 0xff) as u8);
        }
        _ => return Err(NotBase64Url),
    }
    Ok(())
}

/// Decodes `input` into a new vector.
pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, NotBase64Url> {
    let mut out = Vec::new();
    decode_into(input, &mut out)?;
    Ok(out)
}

/// Encodes without padding. Only tests mint tokens; the plugin never encodes.
#[cfg(any(test, feature = "test-tokens"))]
#[allow(
    clippy::indexing_slicing,
    reason = "test-only signer: chunks are never empty"
)]
pub(crate) fn encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rfc4648_vectors_without_padding() {
        for (text, bytes) in [
            ("", ""),
            ("Zg", "f"),
            ("Zm8", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmE", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(decode(text.as_bytes()).unwrap(), bytes.as_bytes(), "{text}");
            assert_eq!(encode(bytes.as_bytes()), text);
        }
    }

    #[test]
    fn uses_the_url_alphabet() {
        assert_eq!(decode(b"-_-_").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(decode(b"+/+/").is_err());
    }

    #[test]
    fn refuses_padding_whitespace_and_impossible_lengths() {
        for bad in [
            &b"Zg=="[..],
            b"Zm8=",
            b"Zm9v\n",
            b" Zm9v",
            b"Z",
            b"Zm9vY",
            b"Zm.v",
            b"Zm9v\0",
        ] {
            assert_eq!(decode(bad), Err(NotBase64Url), "{bad:?}");
        }
    }

    #[test]
    fn refuses_non_canonical_trailing_bits() {
        // "Zg" is canonical for "f"; "Zh" decodes to the same byte with a stray bit.
        assert!(decode(b"Zh").is_err());
        assert!(decode(b"Zm9").is_err());
        assert!(decode(b"Zm8").is_ok());
    }

    #[test]
    fn decodes_standard_base64_with_or_without_padding() {
        for (text, bytes) in [
            ("Zg==", "f"),
            ("Zg", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYmE=", "fooba"),
        ] {
            assert_eq!(decode_standard(text.as_bytes()).unwrap(), bytes.as_bytes());
        }
        assert_eq!(decode_standard(b"+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in [
            &b"-_-_"[..],
            b"Zg=",
            b"Zg===",
            b"Z===",
            b"=",
            b"Zm9v=",
            b"Zh==",
            b" Zg==",
        ] {
            assert_eq!(decode_standard(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trips_every_length_up_to_64() {
        let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=data.len() {
            assert_eq!(decode(encode(&data[..n]).as_bytes()).unwrap(), &data[..n]);
        }
    }
}
