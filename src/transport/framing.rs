//! The socket's line framing, kept apart from the I/O so that it can be
//! unit-tested and fuzzed: bytes in, in chunks of any size; whole lines out.
//!
//! A line is bounded (the lexer's `MAX_LINE_BYTES`): the bytes of a longer
//! one are dropped as they arrive, never buffered, and the line is reported
//! once as too long. Nothing else is bounded per connection: a client may
//! send any number of commands on one connection.

use std::collections::VecDeque;

use zeroize::{Zeroize, Zeroizing};

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line without its `\n`, valid UTF-8. Zeroed when dropped: it may
    /// carry a secret (`/kv put … password=…`).
    Line(Zeroizing<String>),
    /// A line that is not UTF-8.
    NotUtf8,
    /// A line longer than the bound; how many bytes it had.
    TooLong(usize),
}

/// Splits a byte stream into [`Frame`]s.
pub struct Framer {
    max: usize,
    /// The line so far (capacity reserved up front so that growing it never
    /// leaves a copy of a secret in freed memory).
    buf: Vec<u8>,
    /// The length of a line that went over the bound, while it lasts.
    over: Option<usize>,
}

impl Framer {
    /// A framer for lines of at most `max` bytes (without the `\n`).
    pub fn new(max: usize) -> Framer {
        Framer {
            max,
            buf: Vec::new(),
            over: None,
        }
    }

    /// Appends every line that `data` completes to `out`, in order; the
    /// rest waits for the next call.
    pub fn push(&mut self, mut data: &[u8], out: &mut VecDeque<Frame>) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            self.take(&data[..i]);
            out.push_back(self.end());
            data = &data[i + 1..];
        }
        self.take(data);
    }

    /// At the end of the input: the last line, if it had no `\n`.
    pub fn finish(&mut self) -> Option<Frame> {
        (!self.buf.is_empty() || self.over.is_some()).then(|| self.end())
    }

    fn take(&mut self, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        if let Some(n) = &mut self.over {
            *n = n.saturating_add(part.len());
            return;
        }
        let len = self.buf.len() + part.len();
        if len > self.max {
            self.buf.zeroize();
            self.over = Some(len);
            return;
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.max);
        }
        self.buf.extend_from_slice(part);
    }

    fn end(&mut self) -> Frame {
        if let Some(n) = self.over.take() {
            return Frame::TooLong(n);
        }
        match String::from_utf8(std::mem::take(&mut self.buf)) {
            Ok(s) => Frame::Line(Zeroizing::new(s)),
            Err(e) => {
                e.into_bytes().zeroize();
                Frame::NotUtf8
            }
        }
    }
}

impl Drop for Framer {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Framer::new(max);
        let mut out = VecDeque::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out.extend(f.finish());
        out.into()
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Zeroizing::new(s.to_string()))
    }

    #[test]
    fn lines_come_out_whole_however_the_bytes_arrive() {
        let want = vec![line("/a b"), line(""), line("/c\r"), line("tail")];
        assert_eq!(frames(16, &[b"/a b\n\n/c\r\ntail"]), want);
        assert_eq!(
            frames(16, &[b"/a", b" b\n", b"\n/c\r", b"\nta", b"il"]),
            want
        );
        assert_eq!(frames(16, &[b"x\n"]), vec![line("x")]);
        assert_eq!(frames(16, &[b""]), vec![]);
    }

    #[test]
    fn the_bound_is_per_line_and_inclusive() {
        assert_eq!(frames(4, &[b"abcd\n"]), vec![line("abcd")]);
        assert_eq!(
            frames(4, &[b"abcde\nok\n"]),
            vec![Frame::TooLong(5), line("ok")]
        );
        // Over the bound across chunks, counted to its end, then on.
        assert_eq!(
            frames(4, &[b"ab", b"cd", b"e", b"fg\nok"]),
            vec![Frame::TooLong(7), line("ok")]
        );
        assert_eq!(frames(4, &[b"abcdefgh"]), vec![Frame::TooLong(8)]);
    }

    #[test]
    fn many_lines_are_not_limited_per_connection() {
        let mut f = Framer::new(8);
        let mut out = VecDeque::new();
        for _ in 0..100_000 {
            f.push(b"/ping\n", &mut out);
        }
        assert_eq!(out.len(), 100_000);
        assert!(out.iter().all(|l| *l == line("/ping")));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_and_the_next_one_read() {
        assert_eq!(
            frames(16, &[b"\xff\xfe\n/ok\n"]),
            vec![Frame::NotUtf8, line("/ok")]
        );
        // A character split between chunks is still one character.
        assert_eq!(frames(16, &[b"\xc3", b"\xa9\n"]), vec![line("é")]);
    }
}
