//! Transports: each turns its input into `(operator, text)` for the
//! dispatcher and renders the reply. Only `telegram` may import grammers.

pub mod console;
pub mod socket;
pub mod telegram;

use serde::Serialize;

/// Where a command came from (audit trail, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Console,
    Socket,
    Telegram,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Console => "console",
            Transport::Socket => "socket",
            Transport::Telegram => "telegram",
        }
    }
}
