//! Wall-clock instants as Unix time, RFC 3339 in and out.
//!
//! The core never reads a clock: callers pass `now` in (the wasm shell reads the host's
//! clock, tests pass virtual time). Timestamps stored in shared data are absolute Unix
//! times, because every Envoy worker is its own VM and relative times cannot be shared.

/// Nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(pub u64);

impl UnixNanos {
    pub fn from_secs(secs: u64) -> Self {
        UnixNanos(secs.saturating_mul(1_000_000_000))
    }

    pub fn secs(self) -> u64 {
        self.0 / 1_000_000_000
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Formats as RFC 3339 UTC with milliseconds: `2026-01-01T00:00:00.000Z`. Hand-written,
/// not a date crate: one fixed layout on every refusal body, measured per request
/// (benches/README.md) and tested against known dates.
pub fn format_rfc3339(t: UnixNanos) -> String {
    let secs = t.secs() as i64;
    let millis = (t.0 / 1_000_000) % 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    // Without `format!`: every refusal body carries one.
    use crate::text::push_padded;
    let mut out = String::with_capacity(24);
    push_padded(&mut out, u64::try_from(y).unwrap_or(0), 4);
    out.push('-');
    push_padded(&mut out, u64::from(mo), 2);
    out.push('-');
    push_padded(&mut out, u64::from(d), 2);
    out.push('T');
    push_padded(&mut out, u64::try_from(sod / 3600).unwrap_or(0), 2);
    out.push(':');
    push_padded(&mut out, u64::try_from((sod / 60) % 60).unwrap_or(0), 2);
    out.push(':');
    push_padded(&mut out, u64::try_from(sod % 60).unwrap_or(0), 2);
    out.push('.');
    push_padded(&mut out, millis, 3);
    out.push('Z');
    out
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an RFC 3339 date-time (`2026-01-01T00:00:00Z`, optional fraction, `Z` or a
/// numeric offset) to whole Unix seconds. Dates before 1970 are refused.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    if b.get(16) != Some(&b':') {
        return None;
    }
    let y = num(s.get(0..4)?)?;
    let mo = num(s.get(5..7)?)?;
    let d = num(s.get(8..10)?)?;
    let h = num(s.get(11..13)?)?;
    let mi = num(s.get(14..16)?)?;
    let se = num(s.get(17..19)?)?;
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        rest = frac.get(n..)?;
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            let oh = num(rest.get(1..3)?)?;
            let om = num(rest.get(4..6)?)?;
            if oh > 23 || om > 59 {
                return None;
            }
            sign * i64::from(oh * 3600 + om * 60)
        }
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = *month_days.get((mo as usize).checked_sub(1)?)?;
    if d == 0 || d > max_day || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + se.min(59)) - offset_secs;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_the_epoch_and_a_known_instant() {
        assert_eq!(format_rfc3339(UnixNanos(0)), "1970-01-01T00:00:00.000Z");
        // 2026-01-01T00:00:00Z is 1767225600.
        assert_eq!(
            format_rfc3339(UnixNanos(1_767_225_600_123_000_000)),
            "2026-01-01T00:00:00.123Z"
        );
        assert_eq!(
            format_rfc3339(UnixNanos::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00.5Z"), Some(1_767_225_600));
        assert_eq!(
            parse_rfc3339("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
    }

    #[test]
    fn refuses_malformed_dates() {
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+0100",
            "1969-12-31T23:59:59Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00Zjunk",
            "２026-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
