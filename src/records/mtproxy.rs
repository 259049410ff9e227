//! The proxy runtime's own entries that `import vpnbot` carries over.

/// The area, below the KV mount.
pub const DIR: &str = "vaultgram/mtproxy";
/// vpnbot's `empty-placeholder` runtime entry.
pub const PLACEHOLDER_PATH: &str = "vaultgram/mtproxy/placeholder";
/// The document's `generation`.
pub const STATE_PATH: &str = "vaultgram/mtproxy/state";
