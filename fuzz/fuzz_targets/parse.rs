//! The chat-command parser on arbitrary input: it must never panic, and a
//! KV path it accepts must be clean (no `..`, no empty segment, no control
//! character).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultgram::command::{Command, KvCommand};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Command::Kv(kv)) = Command::parse(line) {
        let p = kv.path().to_string();
        assert!(!p.split('/').any(|s| s == ".." || s == "."), "{p:?}");
        assert!(!p.trim_end_matches('/').split('/').any(str::is_empty), "{p:?}");
        assert!(!p.chars().any(char::is_control), "{p:?}");
        let _: &KvCommand = &kv;
    }
});
