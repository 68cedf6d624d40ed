//! A streaming JSON checker for request bodies: is the body one valid JSON text (RFC
//! 8259) within the route's caps on one string or number and one array's items? It must
//! never panic on any input: every index is checked, every counter saturates.
//! What it refuses: `docs/policy.md#body-limits`.

/// Nesting deeper than this is refused (serde_json's own default recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Why a body is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not one valid JSON text.
    Malformed,
    /// A string or number is longer than the cap.
    StringTooLong,
    /// An array has more items than the cap.
    TooManyItems,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl JsonError {
    /// The precise reason, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            JsonError::Malformed => "json_malformed",
            JsonError::StringTooLong => "json_string_too_long",
            JsonError::TooManyItems => "json_too_many_items",
            JsonError::TooDeep => "json_too_deep",
        }
    }
}

/// Where a number is in its grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    /// Whether the number may end here.
    fn complete(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }

    /// The state after `b`, or `None` when `b` is not part of the number.
    fn next(self, b: u8) -> Option<Num> {
        Some(match (self, b) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, b'1'..=b'9') => Num::Int,
            (Num::Int, b'0'..=b'9') => Num::Int,
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpDigits, b'0'..=b'9') => Num::ExpDigits,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A value must come: at the start, after `:`, after `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the closing bracket; at the top, only whitespace.
    AfterValue,
    /// Inside a string; `key`: an object key.
    Str {
        key: bool,
    },
    /// After a backslash.
    Escape {
        key: bool,
    },
    /// Inside `\uXXXX`, `left` hex digits to go.
    Unicode {
        key: bool,
        left: u8,
    },
    /// Inside a multi-byte UTF-8 character: `left` continuation bytes to go, the next in
    /// `lo..=hi`.
    Utf8 {
        key: bool,
        left: u8,
        lo: u8,
        hi: u8,
    },
    Number(Num),
    /// Inside `true`, `false` or `null`: the word and how much of it was read.
    Literal {
        word: &'static [u8],
        at: u8,
    },
}

/// The checker for one body. Reads it in whatever pieces it arrives ([`Scanner::feed`])
/// with fixed state (the nesting stack is [`MAX_DEPTH`] counters, no allocation), never
/// looks back, and refuses at the first byte that breaks a rule, so an oversized field is
/// refused while it streams in. Builds nothing: yes or no is all the gateway needs. Checks
/// the grammar (escapes, no raw control characters in strings, UTF-8 without overlong
/// forms or surrogates, no trailing data, no byte order mark); `max_string_bytes` counts
/// strings (keys too) and numbers as written (`\n` is two bytes: never under the decoded
/// length).
#[derive(Clone, Debug)]
pub struct Scanner {
    max_token: u64,
    max_items: u64,
    state: State,
    /// Bytes of the string or number being read.
    token: u64,
    /// Open containers.
    depth: usize,
    /// Bit `i`: the container at depth `i` is an array.
    arrays: u128,
    /// Items so far of the array at each depth.
    items: [u64; MAX_DEPTH],
    /// The first error, kept: once refused, always refused.
    failed: Option<JsonError>,
}

fn whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A byte that may sit in a string as it is and ends no UTF-8 or escape rule.
fn plain(b: u8) -> bool {
    (0x20..0x80).contains(&b) && b != b'"' && b != b'\\'
}

impl Scanner {
    /// A checker with these caps (`u64::MAX` for none).
    pub fn new(max_string_bytes: u64, max_array_items: u64) -> Scanner {
        Scanner {
            max_token: max_string_bytes,
            max_items: max_array_items,
            state: State::Value,
            token: 0,
            depth: 0,
            arrays: 0,
            items: [0; MAX_DEPTH],
            failed: None,
        }
    }

    /// Reads the next bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), JsonError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            // Fast path: a run of plain string bytes.
            if let State::Str { .. } = self.state {
                let run = rest.iter().position(|b| !plain(*b)).unwrap_or(rest.len());
                if run > 0 {
                    self.grow_token(run as u64)?;
                    rest = rest.get(run..).unwrap_or_default();
                    continue;
                }
            }
            let Some((&b, tail)) = rest.split_first() else {
                break;
            };
            match self.step(b) {
                Ok(true) => rest = tail,
                Ok(false) => {}
                Err(e) => {
                    self.failed = Some(e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The body ended: it must have been exactly one complete value.
    pub fn finish(&mut self) -> Result<(), JsonError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let complete = self.depth == 0
            && match self.state {
                State::AfterValue => true,
                State::Number(n) => n.complete(),
                _ => false,
            };
        if complete {
            Ok(())
        } else {
            self.failed = Some(JsonError::Malformed);
            Err(JsonError::Malformed)
        }
    }

    fn grow_token(&mut self, n: u64) -> Result<(), JsonError> {
        self.token = self.token.saturating_add(n);
        if self.token > self.max_token {
            self.failed = Some(JsonError::StringTooLong);
            return Err(JsonError::StringTooLong);
        }
        Ok(())
    }

    fn top_is_array(&self) -> bool {
        self.depth
            .checked_sub(1)
            .is_some_and(|top| top < 128 && self.arrays & (1u128 << top) != 0)
    }

    /// A value starts: one more item for the enclosing array.
    fn value_starts(&mut self) -> Result<(), JsonError> {
        if self.top_is_array() {
            let top = self.depth.saturating_sub(1);
            let count = self.items.get_mut(top).ok_or(JsonError::TooDeep)?;
            *count = count.saturating_add(1);
            if *count > self.max_items {
                return Err(JsonError::TooManyItems);
            }
        }
        Ok(())
    }

    fn open(&mut self, array: bool) -> Result<(), JsonError> {
        if self.depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        let bit = 1u128 << self.depth;
        if array {
            self.arrays |= bit;
        } else {
            self.arrays &= !bit;
        }
        *self.items.get_mut(self.depth).ok_or(JsonError::TooDeep)? = 0;
        self.depth += 1;
        self.state = if array {
            State::ValueOrClose
        } else {
            State::KeyOrClose
        };
        Ok(())
    }

    fn close(&mut self, array: bool) -> Result<(), JsonError> {
        if self.depth == 0 || self.top_is_array() != array {
            return Err(JsonError::Malformed);
        }
        self.depth -= 1;
        self.state = State::AfterValue;
        Ok(())
    }

    fn start_value(&mut self, b: u8) -> Result<(), JsonError> {
        self.value_starts()?;
        self.token = 0;
        match b {
            b'{' => self.open(false)?,
            b'[' => self.open(true)?,
            b'"' => self.state = State::Str { key: false },
            b'-' => {
                self.grow_token(1)?;
                self.state = State::Number(Num::Minus);
            }
            b'0' => {
                self.grow_token(1)?;
                self.state = State::Number(Num::Zero);
            }
            b'1'..=b'9' => {
                self.grow_token(1)?;
                self.state = State::Number(Num::Int);
            }
            b't' => {
                self.state = State::Literal {
                    word: b"true",
                    at: 1,
                }
            }
            b'f' => {
                self.state = State::Literal {
                    word: b"false",
                    at: 1,
                }
            }
            b'n' => {
                self.state = State::Literal {
                    word: b"null",
                    at: 1,
                }
            }
            _ => return Err(JsonError::Malformed),
        }
        Ok(())
    }

    /// One byte. `Ok(false)`: the byte ended a number and must be read again in the new
    /// state.
    fn step(&mut self, b: u8) -> Result<bool, JsonError> {
        match self.state {
            State::Value
            | State::ValueOrClose
            | State::KeyOrClose
            | State::Key
            | State::Colon
            | State::AfterValue
                if whitespace(b) => {}
            State::Value => self.start_value(b)?,
            State::ValueOrClose => match b {
                b']' => self.close(true)?,
                _ => self.start_value(b)?,
            },
            State::KeyOrClose | State::Key => match b {
                b'}' if self.state == State::KeyOrClose => self.close(false)?,
                b'"' => {
                    self.token = 0;
                    self.state = State::Str { key: true };
                }
                _ => return Err(JsonError::Malformed),
            },
            State::Colon => match b {
                b':' => self.state = State::Value,
                _ => return Err(JsonError::Malformed),
            },
            State::AfterValue => match b {
                b',' if self.depth > 0 => {
                    self.state = if self.top_is_array() {
                        State::Value
                    } else {
                        State::Key
                    };
                }
                b']' => self.close(true)?,
                b'}' => self.close(false)?,
                _ => return Err(JsonError::Malformed),
            },
            State::Str { key } => match b {
                b'"' => {
                    self.state = if key { State::Colon } else { State::AfterValue };
                }
                b'\\' => {
                    self.grow_token(1)?;
                    self.state = State::Escape { key };
                }
                0x00..=0x1f => return Err(JsonError::Malformed),
                0x20..=0x7f => self.grow_token(1)?,
                _ => {
                    let (left, lo, hi) = match b {
                        0xc2..=0xdf => (1, 0x80, 0xbf),
                        0xe0 => (2, 0xa0, 0xbf),
                        0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
                        0xed => (2, 0x80, 0x9f),
                        0xf0 => (3, 0x90, 0xbf),
                        0xf1..=0xf3 => (3, 0x80, 0xbf),
                        0xf4 => (3, 0x80, 0x8f),
                        _ => return Err(JsonError::Malformed),
                    };
                    self.grow_token(1)?;
                    self.state = State::Utf8 { key, left, lo, hi };
                }
            },
            State::Utf8 { key, left, lo, hi } => {
                if !(lo..=hi).contains(&b) {
                    return Err(JsonError::Malformed);
                }
                self.grow_token(1)?;
                self.state = match left {
                    0 | 1 => State::Str { key },
                    _ => State::Utf8 {
                        key,
                        left: left - 1,
                        lo: 0x80,
                        hi: 0xbf,
                    },
                };
            }
            State::Escape { key } => {
                self.grow_token(1)?;
                self.state = match b {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => State::Str { key },
                    b'u' => State::Unicode { key, left: 4 },
                    _ => return Err(JsonError::Malformed),
                };
            }
            State::Unicode { key, left } => {
                if !b.is_ascii_hexdigit() {
                    return Err(JsonError::Malformed);
                }
                self.grow_token(1)?;
                self.state = match left {
                    0 | 1 => State::Str { key },
                    _ => State::Unicode {
                        key,
                        left: left - 1,
                    },
                };
            }
            State::Number(n) => match n.next(b) {
                Some(next) => {
                    self.grow_token(1)?;
                    self.state = State::Number(next);
                }
                None if n.complete() => {
                    self.state = State::AfterValue;
                    return Ok(false);
                }
                None => return Err(JsonError::Malformed),
            },
            State::Literal { word, at } => {
                let at = usize::from(at);
                if word.get(at) != Some(&b) {
                    return Err(JsonError::Malformed);
                }
                self.state = if at + 1 >= word.len() {
                    State::AfterValue
                } else {
                    State::Literal {
                        word,
                        at: u8::try_from(at + 1).unwrap_or(u8::MAX),
                    }
                };
            }
        }
        Ok(true)
    }
}

/// Checks a whole body at once.
pub fn check(body: &[u8], max_string_bytes: u64, max_array_items: u64) -> Result<(), JsonError> {
    let mut s = Scanner::new(max_string_bytes, max_array_items);
    s.feed(body)?;
    s.finish()
}

/// The precise reason, as logs and metrics name it.
impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: u64 = u64::MAX;

    fn ok(text: &str) {
        assert_eq!(check(text.as_bytes(), NONE, NONE), Ok(()), "{text:?}");
        // And the same in one-byte pieces.
        let mut s = Scanner::new(NONE, NONE);
        for b in text.as_bytes() {
            assert_eq!(s.feed(&[*b]), Ok(()), "{text:?}");
        }
        assert_eq!(s.finish(), Ok(()), "{text:?} byte by byte");
    }

    fn bad(text: &[u8]) {
        assert_eq!(
            check(text, NONE, NONE),
            Err(JsonError::Malformed),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn valid_json_texts_pass() {
        for text in [
            "{}",
            "[]",
            " { \"a\" : [1, -2.5e+3, 0, 0.0, 1E9, true, false, null, \"x\"] } \n",
            "\"just a string\"",
            "0",
            "-0",
            "123",
            "1.5e-7",
            "[[[]]]",
            r#"{"esc":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#,
            "{\"k\":{\"k\":{}},\"l\":[{}]}",
            "\"é漢😀\"",
        ] {
            ok(text);
        }
    }

    #[test]
    fn invalid_json_is_malformed() {
        for text in [
            &b""[..],
            b"   ",
            b"{",
            b"[1,]",
            b"[,1]",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{a:1}",
            b"{'a':1}",
            b"[1 2]",
            b"01",
            b"-",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"+1",
            b"tru",
            b"truex",
            b"nul",
            b"NaN",
            b"\"unterminated",
            b"\"bad \\x escape\"",
            b"\"bad \\u12G4\"",
            b"\"raw\ncontrol\"",
            b"{} {}",
            b"1 2",
            b"[1]]",
            b"[1}",
            b"{\"a\":1]",
            b"\xef\xbb\xbf{}",
            b"\"\xc0\xaf\"",
            b"\"\xed\xa0\x80\"",
            b"\"\xf5\x80\x80\x80\"",
            b"\"\xe2\x82\"",
            b"\"\x80\"",
            b"\"\xf4\x90\x80\x80\"",
            b"{\"a\":1}x",
        ] {
            bad(text);
        }
    }

    #[test]
    fn a_long_string_or_number_is_refused_as_it_arrives() {
        assert_eq!(check(b"[\"12345\"]", 5, NONE), Ok(()));
        assert_eq!(
            check(b"[\"123456\"]", 5, NONE),
            Err(JsonError::StringTooLong)
        );
        assert_eq!(
            check(b"{\"123456\":1}", 5, NONE),
            Err(JsonError::StringTooLong)
        );
        assert_eq!(check(b"[12345]", 5, NONE), Ok(()));
        assert_eq!(check(b"[-12345]", 5, NONE), Err(JsonError::StringTooLong));
        // Escapes count as written.
        assert_eq!(
            check(b"\"\\n\\n\\n\"", 5, NONE),
            Err(JsonError::StringTooLong)
        );
        // Refused before the string ends: the rest never needs to arrive.
        let mut s = Scanner::new(5, NONE);
        assert_eq!(s.feed(b"{\"a\":\"123456"), Err(JsonError::StringTooLong));
        assert_eq!(s.feed(b"\"}"), Err(JsonError::StringTooLong));
        assert_eq!(s.finish(), Err(JsonError::StringTooLong));
    }

    #[test]
    fn arrays_are_capped_each_on_its_own() {
        assert_eq!(check(b"[1,2,3]", NONE, 3), Ok(()));
        assert_eq!(check(b"[1,2,3,4]", NONE, 3), Err(JsonError::TooManyItems));
        assert_eq!(check(b"[[1,2,3],[1,2,3],[1,2,3]]", NONE, 3), Ok(()));
        assert_eq!(
            check(b"[[1,2,3],[1,2,3,4]]", NONE, 3),
            Err(JsonError::TooManyItems)
        );
        // Object members are not array items.
        assert_eq!(check(b"{\"a\":1,\"b\":2,\"c\":3,\"d\":4}", NONE, 3), Ok(()));
        assert_eq!(
            check(b"[{},{},{},{}]", NONE, 3),
            Err(JsonError::TooManyItems)
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep_ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check(deep_ok.as_bytes(), NONE, NONE), Ok(()));
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            check(too_deep.as_bytes(), NONE, NONE),
            Err(JsonError::TooDeep)
        );
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            check(objects.as_bytes(), NONE, NONE),
            Err(JsonError::TooDeep)
        );
    }

    #[test]
    fn the_same_verdict_whatever_the_pieces() {
        let text =
            "{\"items\":[1,2,{\"name\":\"caf\\u00e9 é漢\"}],\"n\":-12.5e3,\"ok\":true}".as_bytes();
        for size in 1..text.len() {
            let mut s = Scanner::new(NONE, NONE);
            for piece in text.chunks(size) {
                s.feed(piece).unwrap();
            }
            assert_eq!(s.finish(), Ok(()), "{size}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_in_any_pieces_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cut in 1usize..64,
            caps in (0u64..16, 0u64..8),
        ) {
            let mut s = Scanner::new(caps.0, caps.1);
            for piece in bytes.chunks(cut) {
                let _ = s.feed(piece);
            }
            let _ = s.finish();
        }

        #[test]
        fn the_scanner_agrees_with_serde_json_on_valid_json(
            bytes in proptest::collection::vec(
                prop::sample::select(b"{}[]\",:0123456789-+.eEtruefalsn \\u\x80\xc3\xa9".to_vec()),
                0..64,
            ),
        ) {
            let ours = check(&bytes, u64::MAX, u64::MAX).is_ok();
            let parsed = serde_json::from_slice::<serde_json::Value>(&bytes);
            // serde_json also refuses lone surrogate escapes and numbers beyond f64, which
            // are valid JSON; everything else must agree.
            let surrogate = bytes.windows(2).any(|w| w == b"\\u");
            let out_of_range = parsed
                .as_ref()
                .is_err_and(|e| e.to_string().contains("out of range"));
            let theirs = parsed.is_ok();
            if !surrogate && !out_of_range {
                prop_assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}
