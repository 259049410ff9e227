//! Vault (HashiCorp Vault or OpenBao; same HTTP API).
//!
//! The only module that imports `vaultrs`. One file per engine (`kv`,
//! `transit`, `totp`, `wrap`, `sys`, `auth`, `token`) on the client
//! (`client`), every raw request through `http`, the boundary error in
//! `error`. This file only declares and re-exports.

pub mod auth;
mod client;
mod error;
mod http;
pub mod kv;
mod sys;
pub mod token;
pub mod totp;
pub mod transit;
pub mod wrap;
mod wrap_ttl;

pub use client::{Health, TokenInfo, Vault};
pub use error::{Says, VaultError};
pub use sys::{LeaderInfo, MountInfo, TokenLifetime};
