//! Strict, canonical base64url (RFC 4648 §5) without padding, as JWS compact
//! serialization uses it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a segment is not strict base64url. Carries no input bytes. Strict: only
/// `A-Z a-z 0-9 - _`, no `=`, no whitespace, no length an encoder cannot make
/// (`len % 4 == 1`), and the last character's unused low bits zero. The last rule makes
/// the encoding canonical, so a token cannot be re-spelt (`Q` to `R` at the end) and
/// still verify past a cache keyed on its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotBase64Url;

// The `base64` crate's general-purpose engines are all strict in the ways above: they
// refuse whitespace, the other alphabet and non-zero trailing bits; the `_NO_PAD` ones
// refuse any `=`, and `STANDARD` wants exactly the padding that completes the last
// quantum. Their errors (`DecodeError::InvalidByte`) would carry an input byte: they are
// dropped here.

/// Decodes `input`, appending to `out` (cleared first).
pub(crate) fn decode_into(input: &[u8], out: &mut Vec<u8>) -> Result<(), NotBase64Url> {
    out.clear();
    URL_SAFE_NO_PAD.decode_vec(input, out).map_err(|_| {
        out.clear();
        NotBase64Url
    })
}

/// Decodes `input` into a new vector.
pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, NotBase64Url> {
    let mut out = Vec::new();
    decode_into(input, &mut out)?;
    Ok(out)
}

/// Encodes without padding. Only tests mint tokens; the plugin never encodes.
#[cfg(any(test, feature = "test-tokens"))]
pub(crate) fn encode(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
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
    fn round_trips_every_length_up_to_64() {
        let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=data.len() {
            assert_eq!(decode(encode(&data[..n]).as_bytes()).unwrap(), &data[..n]);
        }
    }
}
