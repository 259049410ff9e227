//! Which transport a command came through (audit trail, metrics, unlock
//! scope). A leaf: the audit record and the command context name it, and
//! neither may import the transports themselves.

use serde::Serialize;

/// Where a command came from (audit trail, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Console,
    Socket,
    Telegram,
    /// The service itself, no transport (the approvals' expiry sweeper).
    Service,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Console => "console",
            Transport::Socket => "socket",
            Transport::Telegram => "telegram",
            Transport::Service => "service",
        }
    }
}
