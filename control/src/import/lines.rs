//! NDJSON cut into lines as its bytes arrive, whatever the chunks: at most one line is
//! ever held, and a line longer than [`MAX_LINE_BYTES`] is never held at all (its bytes
//! are dropped as they come, and it is reported as too long).

/// The longest line read: a record at its longest (every id at 128 characters, 32 scopes,
/// a device name of 128 escaped characters) is under 6 KiB.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// One line, without its `\n` (nor a `\r` before it).
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a [u8]),
    /// Longer than [`MAX_LINE_BYTES`]; its bytes were not kept.
    TooLong,
}

/// The state between chunks: the start of the line the last chunk left open.
#[derive(Debug, Default)]
pub struct Lines {
    open: Vec<u8>,
    /// The open line is already over the limit.
    too_long: bool,
    /// Lines ended so far.
    ended: u64,
}

impl Lines {
    pub fn new() -> Lines {
        Lines::default()
    }

    /// Lines ended so far (the number of the last one given to `each`).
    pub fn ended(&self) -> u64 {
        self.ended
    }

    /// Calls `each(number, line)`, numbered from 1, for every line `chunk` ends; the rest
    /// of the chunk is kept for the next one.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(u64, Line<'_>)) {
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(at);
            rest = tail.get(1..).unwrap_or_default();
            self.ended += 1;
            if self.too_long || self.open.len() + head.len() > MAX_LINE_BYTES {
                each(self.ended, Line::TooLong);
            } else if self.open.is_empty() {
                // The whole line is in this chunk: no copy.
                each(self.ended, Line::Text(trim_cr(head)));
            } else {
                self.open.extend_from_slice(head);
                each(self.ended, Line::Text(trim_cr(&self.open)));
            }
            self.open.clear();
            self.too_long = false;
        }
        self.hold(rest);
    }

    /// Ends the input: the last line, if it had no `\n`.
    pub fn finish(&mut self, mut each: impl FnMut(u64, Line<'_>)) {
        if self.open.is_empty() && !self.too_long {
            return;
        }
        self.ended += 1;
        if self.too_long {
            each(self.ended, Line::TooLong);
        } else {
            each(self.ended, Line::Text(trim_cr(&self.open)));
        }
        self.open.clear();
        self.too_long = false;
    }

    fn hold(&mut self, part: &[u8]) {
        if self.too_long {
            return;
        }
        if self.open.len() + part.len() > MAX_LINE_BYTES {
            self.too_long = true;
            self.open.clear();
        } else {
            self.open.extend_from_slice(part);
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every line of `input` fed in chunks of `size`, as (number, text or None).
    fn split(input: &[u8], size: usize) -> Vec<(u64, Option<Vec<u8>>)> {
        let mut lines = Lines::new();
        let mut out = Vec::new();
        let mut record = |n, line: Line<'_>| {
            out.push((
                n,
                match line {
                    Line::Text(t) => Some(t.to_vec()),
                    Line::TooLong => None,
                },
            ));
        };
        for chunk in input.chunks(size) {
            lines.feed(chunk, &mut record);
        }
        lines.finish(&mut record);
        out
    }

    #[test]
    fn lines_are_the_same_whatever_the_chunks() {
        let input = b"{\"a\":1}\r\n\n  \n{\"b\":2}\nlast";
        let want: Vec<(u64, Option<Vec<u8>>)> = vec![
            (1, Some(b"{\"a\":1}".to_vec())),
            (2, Some(b"".to_vec())),
            (3, Some(b"  ".to_vec())),
            (4, Some(b"{\"b\":2}".to_vec())),
            (5, Some(b"last".to_vec())),
        ];
        for size in 1..=input.len() {
            assert_eq!(split(input, size), want, "chunks of {size}");
        }
    }

    #[test]
    fn a_final_newline_ends_the_input_without_an_empty_line() {
        assert_eq!(split(b"a\n", 64), vec![(1, Some(b"a".to_vec()))]);
        assert_eq!(split(b"", 64), vec![]);
    }

    #[test]
    fn a_line_over_the_limit_is_too_long_and_the_next_one_is_read() {
        let mut input = vec![b'x'; MAX_LINE_BYTES];
        input.push(b'\n');
        input.extend(vec![b'y'; MAX_LINE_BYTES + 1]);
        input.extend(b"\nok\n");
        input.extend(vec![b'z'; MAX_LINE_BYTES + 1]);
        for size in [1, 7, 1000, 4096, 100_000] {
            let got = split(&input, size);
            assert_eq!(got.len(), 4, "chunks of {size}");
            assert_eq!(got[0], (1, Some(vec![b'x'; MAX_LINE_BYTES])));
            assert_eq!(got[1], (2, None));
            assert_eq!(got[2], (3, Some(b"ok".to_vec())));
            assert_eq!(got[3], (4, None), "chunks of {size}");
        }
    }

    #[test]
    fn an_overlong_line_is_never_held() {
        let mut lines = Lines::new();
        for _ in 0..1000 {
            lines.feed(&[b'x'; 4096], |_, _| panic!("no line ended"));
        }
        assert!(lines.open.capacity() <= 2 * MAX_LINE_BYTES);
        assert_eq!(lines.ended(), 0);
    }
}
