//! Decimal text for the request path, without `core::fmt`: in the module, `format!`
//! costs a trip through the formatting machinery (dynamic dispatch, padding, and for
//! 64-bit numbers a 128-bit multiply per digit pair on wasm32), measurable per request.

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    out.push_str(decimal(n, &mut buf));
}

/// `n` in decimal, written into `buf`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        if let Some(b) = buf.get_mut(at) {
            // `n % 10` is below 10: the cast cannot truncate.
            *b = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    let digits = buf.get(at..).unwrap_or(&[]);
    // Only ASCII digits were written.
    std::str::from_utf8(digits).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

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
