//! The Telegram transport: the election leader's userbot.
//!
//! [`run`] campaigns in etcd ([`crate::leader`]); only while it leads does
//! it load the session from Vault and start a client. Each new message is
//! routed ([`route`]), claimed in etcd *before* it runs (a guarded create,
//! so a redelivered message or a deposed leader never runs it twice), handed
//! to the same dispatcher as the console, and answered; deletions of secret
//! input and secret replies are scheduled in etcd and carried out by
//! whichever node leads when they are due. The session (auth keys, update
//! state) goes back to Vault, transit-encrypted, every
//! `telegram.session_save_secs` and on shutdown.
//!
//! Files: `service` (the election loop, `vaultgram login`), `term` (one
//! leadership term), `client` (the client and its intake), `intake`
//! (between the client library and the runner), `route` (what a message
//! is), `session` (the session in Vault), `chat` (errors, shared types),
//! `grammers` (the only file importing `grammers_*`) with `login`, and —
//! only in a build with the `telegram-standin` feature, for the tests —
//! `file`, the stand-in that replaces grammers alone. This file only
//! declares and re-exports.

mod chat;
mod client;
#[cfg(feature = "telegram-standin")]
mod file;
mod grammers;
mod intake;
mod login;
pub mod route;
mod service;
pub mod session;
mod term;

pub use chat::{Authorization, ChatError, LoginPrompt};
pub use service::{login, run};
