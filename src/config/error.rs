//! The configuration's error: every message names the offending key.

use std::path::PathBuf;

/// A configuration problem. The `Display` text is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error; `message` starts with the key path
    /// (`` `operators[1].telegram_id`: ``) whenever it can be recovered.
    // Both echo text from the file (a value, a snippet, an unknown key):
    // shown to a person, so never with raw control characters.
    #[error("config file {path}: {}", crate::text::escape_text(message))]
    Parse { path: PathBuf, message: String },
    #[error(
        "config key `{}`: {}",
        crate::text::escape_line(key),
        crate::text::escape_text(reason)
    )]
    Invalid { key: String, reason: String },
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}
