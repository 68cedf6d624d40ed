//! Randomness from the operating system's CSPRNG, for key secrets, key ids and the feed
//! epoch. Nothing here is seeded or predictable.

/// `len` characters of base62 (22 carry 130 bits).
pub fn base62(len: usize) -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf)?;
        // Rejection sampling: 248 = 4 * 62, so every accepted byte is unbiased.
        for b in buf.into_iter().filter(|b| *b < 248) {
            if out.len() == len {
                break;
            }
            if let Some(c) = ALPHABET.get(usize::from(b % 62)) {
                out.push(char::from(*c));
            }
        }
    }
    Ok(out)
}

/// `bytes` random bytes as lower-case hex.
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(base16ct::lower::encode_string(&buf))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base62_has_the_asked_length_and_alphabet() {
        let s = base62(40).unwrap();
        assert_eq!(s.len(), 40);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s, base62(40).unwrap());
    }

    #[test]
    fn hex_is_two_digits_per_byte() {
        let s = hex(8).unwrap();
        assert_eq!(s.len(), 16);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
