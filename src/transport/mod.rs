//! Transports: each turns its input into `(operator, text)` for the
//! dispatcher and renders the reply. Only `telegram` may import grammers.
//! Which transport a command came through is the leaf
//! [`crate::transport_kind::Transport`] (the audit record and the context
//! name it; they must not import this top floor).

pub mod console;
pub mod framing;
pub mod socket;
pub mod telegram;
