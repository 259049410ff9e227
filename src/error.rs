//! The error kinds every boundary maps to (SPEC.md, `console --json`).
//!
//! Each module keeps its own `thiserror` type ([`crate::vault::VaultError`],
//! [`crate::etcd::EtcdError`], [`crate::config::ConfigError`]); this enum is
//! what a reply shows, so transports never need to know the boundaries.

use serde::Serialize;

/// What went wrong, as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller may not do this (Vault 403, etcd permission denied, role rules).
    Denied,
    /// Malformed input or a request Vault rejects as invalid (400).
    Invalid,
    /// The thing asked for does not exist (404).
    NotFound,
    /// A dependency is sealed, down, or timed out; retrying later may work.
    Unavailable,
    /// The command waits for a second admin's approval.
    ApprovalRequired,
    /// A check-and-set or concurrent change lost.
    Conflict,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::ApprovalRequired => "approval_required",
            ErrorKind::Conflict => "conflict",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
