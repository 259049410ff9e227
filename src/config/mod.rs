//! Configuration: the TOML file of `SPEC.md`, environment overrides and
//! validation.
//!
//! Loading is a fixed pipeline, and nothing in it touches the network:
//!
//! 1. read the file ([`ConfigError::Read`]);
//! 2. parse it; TOML syntax and type errors become [`ConfigError::Parse`],
//!    with the dotted key path prepended when it can be recovered;
//! 3. normalise: relative file paths are resolved against the directory of
//!    the config file (so a config works the same from any working
//!    directory), and per-operator defaults are filled in;
//! 4. apply the standard Vault variables (`VAULT_ADDR`/`BAO_ADDR`,
//!    `VAULT_CACERT`, `VAULT_TOKEN`);
//! 5. validate, returning the *first* problem as [`ConfigError::Invalid`]
//!    in a fixed order: unknown keys first, then the fields top to bottom;
//! 6. with `vault.auth.method = "token"` and no `VAULT_TOKEN`, read the
//!    token from `vault.auth.token_file` (the only file whose contents are
//!    read here; all other files are only checked for existence).
//!
//! Every error names the offending key, so an operator can fix the file
//! without reading the source, and the process exits before it contacts
//! Vault or etcd.
//!
//! Secrets: the only secret held here is the Vault token, in a
//! [`SecretString`] that serde never (de)serialises and `Debug` never
//! shows. A SOCKS5 proxy URL may embed a password; `Debug` and
//! [`Config::redacted_toml`] mask it.
//!
//! The module is split by concern: `schema` (the types and defaults),
//! `load` (reading, parsing, paths, the token file), `env` (the Vault
//! variables), `validate` (every rule, first failure wins) and `print`
//! (the redacted rendering); each file's tests sit beside it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

mod env;
mod load;
mod print;
mod schema;
#[cfg(test)]
mod testutil;
mod validate;

pub use load::parse_duration;
#[allow(unused_imports)]
use load::*;
pub use print::proxy_with_address;
#[allow(unused_imports)]
use print::*;
pub use schema::*;
#[allow(unused_imports)]
use validate::*;

/// Where the config is looked for when neither `--config` nor
/// `$VAULTGRAM_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/vaultgram/vaultgram.toml";

/// The commands that may be listed under `approvals.required` (and are by
/// default): the destructive or secret-revealing ones of `SPEC.md`.
pub const APPROVABLE_COMMANDS: [&str; 7] = [
    "kv destroy",
    "kv metadata delete",
    "transit rotate",
    "agent revoke",
    "mtproto revoke",
    "panel show --reveal",
    "operator resume",
];

/// The pattern operator and agent names must match. They end up in Vault
/// policy names, token display names and metadata, so they are kept to a
/// conservative alphabet.
pub const NAME_PATTERN: &str = "[a-z0-9][a-z0-9_-]{0,62}";

/// What the redacted rendering shows in place of a secret.
const REDACTED: &str = "<redacted>";

/// Unix `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

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
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Where the config comes from: explicit `--config`, else
/// `$VAULTGRAM_CONFIG`, else [`DEFAULT_PATH`].
pub fn resolve_path(cli: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(path) = cli {
        return path.to_path_buf();
    }
    match env("VAULTGRAM_CONFIG").filter(|v| !v.trim().is_empty()) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(DEFAULT_PATH),
    }
}

/// The process environment as the `env` closure of [`Config::load`]
/// expects it: unset and empty variables are both `None`.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}
