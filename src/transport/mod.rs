//! Transports: each turns its input into `(operator, text)` for the
//! dispatcher and renders the reply. Only `telegram` may import grammers.

pub mod console;
pub mod socket;
pub mod telegram;
