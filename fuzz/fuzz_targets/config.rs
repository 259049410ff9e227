//! The TOML config loader on arbitrary files: never a panic, and a refusal
//! is one clear message without raw control characters (it is shown to a
//! person); an `invalid key` refusal names its key (escaped as shown).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultgram::config::{Config, ConfigError};
use vaultgram::text::escape_line;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("vaultgram-fuzz-config-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("vaultgram.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    match Config::load(&path, &|_| None) {
        Ok(_) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(!msg.chars().any(|c| c.is_control() && c != '\n'), "{msg:?}");
            if let ConfigError::Invalid { key, .. } = &e {
                assert!(!key.is_empty(), "{msg}");
                assert!(msg.contains(escape_line(key).as_ref()), "{msg}");
            }
        }
    }
});
