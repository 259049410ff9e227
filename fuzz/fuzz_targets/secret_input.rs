//! An incoming Telegram message: whether it carries secret input (and must
//! be deleted) is decided without panicking for every text, a line whose
//! command takes secret input is always recognised, and a reply split for
//! Telegram keeps every character (within the limit, none lost but blank
//! chunks' whitespace).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultgram::command::Command;
use vaultgram::transport::telegram::route::{input_carries_secret, split};

fuzz_target!(|input: (String, u16)| {
    let (text, limit) = input;
    let secret = input_carries_secret(&text);
    if let Ok((cmd, _)) = Command::parse_with_gate_flags(&text) {
        if cmd.input_is_secret() {
            assert!(secret, "{text:?}");
        }
    }
    let limit = usize::from(limit % 5000);
    let chunks = split(&text, limit);
    let limit = limit.max(2);
    for c in &chunks {
        assert!(c.encode_utf16().count() <= limit, "{limit} {c:?}");
        assert!(!c.trim().is_empty());
    }
    let kept: String = chunks.iter().flat_map(|c| c.chars()).filter(|c| !c.is_whitespace()).collect();
    let given: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(kept, given);
});
