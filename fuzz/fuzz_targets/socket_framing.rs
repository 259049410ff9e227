//! The socket's line framing: however the bytes are cut into reads, the
//! frames are those of the whole input split on `\n` — a line within the
//! bound comes out whole and unchanged (or as "not UTF-8"), a longer one
//! as "too long" with its exact length, and an unterminated last line only
//! at the end.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use vaultgram::transport::framing::{Frame, Framer};

fuzz_target!(|input: (Vec<u8>, Vec<u16>, u8)| {
    let (data, cuts, max) = input;
    let max = usize::from(max);
    let mut framer = Framer::new(max);
    let mut got = VecDeque::new();
    let mut rest = &data[..];
    for c in cuts {
        let at = usize::from(c) % (rest.len() + 1);
        framer.push(&rest[..at], &mut got);
        rest = &rest[at..];
    }
    framer.push(rest, &mut got);
    got.extend(framer.finish());

    let mut want = Vec::new();
    let mut segments: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    // After the last `\n` (or of an empty input): a line only if non-empty.
    if segments.last().is_some_and(|s| s.is_empty()) {
        segments.pop();
    }
    for s in segments {
        want.push(if s.len() > max {
            Frame::TooLong(s.len())
        } else {
            match std::str::from_utf8(s) {
                Ok(t) => Frame::Line(t.to_string().into()),
                Err(_) => Frame::NotUtf8,
            }
        });
    }
    assert_eq!(Vec::from(got), want);
});
