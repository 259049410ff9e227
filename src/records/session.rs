//! The userbot's Telegram session (`telegram.session_path`; the store is
//! `transport/telegram/session.rs`).

/// The default of `telegram.session_path`, below the KV mount.
pub const DEFAULT_PATH: &str = "vaultgram/telegram-session";
