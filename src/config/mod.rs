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
//! [`secrecy::SecretString`] that serde never (de)serialises and `Debug` never
//! shows. A SOCKS5 proxy URL may embed a password; `Debug` and
//! [`Config::redacted_toml`] mask it.
//!
//! The module is split by concern: `schema` (the types and defaults),
//! `load` (reading, parsing, the token file), `paths` (where the file is,
//! paths resolved against it), `env` (the Vault variables), `validate`
//! (every rule, first failure wins), `values` (durations, proxy URLs),
//! `print` (the redacted rendering) and `error`; each file's tests sit
//! beside it. This file only declares and re-exports (no file of the
//! module imports it back), and nothing here imports the rest of the
//! crate except the leaf `names`: the config is the ground floor.

mod env;
mod error;
mod load;
mod paths;
mod print;
mod schema;
#[cfg(test)]
mod testutil;
mod validate;
mod values;

pub use env::process_env;
pub use error::ConfigError;
pub use paths::{resolve_path, DEFAULT_PATH};
pub use schema::*;
pub use values::{parse_duration, proxy_with_address};
