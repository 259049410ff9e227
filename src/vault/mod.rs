//! Vault (HashiCorp Vault or OpenBao; same HTTP API).
//!
//! The only module that imports `vaultrs`. One submodule per engine arrives
//! with the Vault-core issue; this file holds the client construction and
//! the boundary error every engine maps to.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use crate::config::VaultConfig;

pub mod auth;
mod http;
pub mod kv;
mod sys;
pub use sys::{LeaderInfo, MountInfo, TokenLifetime};
pub mod token;
pub mod totp;
pub mod transit;
pub mod wrap;
use crate::error::ErrorKind;

/// Failures at the Vault boundary. Texts carry Vault's error strings (which
/// name paths, never values) and no token.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault: client set-up failed: {0}")]
    Setup(String),
    #[error("vault denied the request: {0}")]
    Denied(String),
    #[error("vault: not found: {0}")]
    NotFound(String),
    #[error("vault rejected the request: {0}")]
    Invalid(String),
    #[error("vault: check-and-set conflict: {0}")]
    Conflict(String),
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// A credential or token the broker will not use (wrong wrapping
    /// path, already-unwrapped secret_id, non-renewable token).
    #[error("vault: {0}")]
    Refused(String),
    /// Malformed input refused before any request was sent (a bad KV path,
    /// wrap TTL, key name or TOTP code format).
    #[error("{0}")]
    Input(String),
    /// A write refused before it was sent because Vault would drop a
    /// version that is not destroyed from the secret's history.
    #[error("{0}")]
    HistoryFull(String),
}

impl VaultError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            VaultError::Denied(_) | VaultError::Refused(_) | VaultError::HistoryFull(_) => {
                ErrorKind::Denied
            }
            VaultError::NotFound(_) => ErrorKind::NotFound,
            VaultError::Invalid(_) | VaultError::Input(_) => ErrorKind::Invalid,
            VaultError::Conflict(_) => ErrorKind::Conflict,
            VaultError::Setup(_) | VaultError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }

    /// Maps an HTTP status from Vault to an error kind (SPEC.md: sealed or
    /// unreachable → unavailable, 403 → denied, 404 → not_found, 400 →
    /// invalid; a check-and-set mismatch is a 400 whose text says so).
    pub fn from_status(code: u16, text: String) -> VaultError {
        match code {
            403 | 401 => VaultError::Denied(text),
            404 => VaultError::NotFound(text),
            400 if text.contains("check-and-set") => VaultError::Conflict(text),
            // HashiCorp Vault answers some storage failures (its etcd
            // without quorum) with a 400: the request was fine, the server
            // could not keep it.
            400 if text.contains("context deadline exceeded") => {
                VaultError::Unavailable(format!("HTTP {code}: {text}"))
            }
            400 | 405 | 409 | 412 | 422 => VaultError::Invalid(text),
            _ => VaultError::Unavailable(format!("HTTP {code}: {text}")),
        }
    }
}

impl From<ClientError> for VaultError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::APIError { code, errors } => {
                VaultError::from_status(code, errors.join("; "))
            }
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    // The body is not echoed: on some endpoints it may hold data.
                    VaultError::from_status(code, "request failed".into())
                }
                other => VaultError::Unavailable(other.to_string()),
            },
            other => VaultError::Unavailable(other.to_string()),
        }
    }
}

/// Seal state as `sys/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
}

/// A Vault client bound to one token. `Debug` shows the address only: the
/// underlying settings hold the token as a plain string.
pub struct Vault {
    client: VaultClient,
    addr: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("addr", &self.addr).finish()
    }
}

impl Vault {
    /// A client for `cfg.addr` that trusts `cfg.ca_cert` (or the system
    /// roots) and sends `token`. Every setting is explicit so that stray
    /// `VAULT_*` variables (e.g. `VAULT_SKIP_VERIFY`) cannot weaken TLS.
    pub fn with_token(cfg: &VaultConfig, token: &SecretString) -> Result<Vault, VaultError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&cfg.addr)
            .token(token.expose_secret())
            .verify(true)
            .identity(None)
            .timeout(Some(Duration::from_secs(cfg.request_timeout_secs)))
            .ca_certs(
                cfg.ca_cert
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            );
        let settings = settings
            .build()
            .map_err(|e| VaultError::Setup(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Setup(e.to_string()))?;
        Ok(Vault {
            client,
            addr: cfg.addr.clone(),
        })
    }

    /// `sys/health`: whether the server is initialised, sealed, standby.
    pub async fn health(&self) -> Result<Health, VaultError> {
        let r = crate::metrics::time_vault(
            "sys_health",
            vaultrs::api::exec_with_no_result(&self.client, sys::HealthRequest::always_ok()),
        )
        .await?;
        Ok(Health {
            initialized: r.initialized,
            sealed: r.sealed,
            standby: r.standby,
        })
    }

    /// `auth/token/revoke-accessor`: revokes the token (and its children)
    /// that `accessor` names. Revoking one that is already gone is not an
    /// error.
    pub async fn revoke_accessor(&self, accessor: &str) -> Result<(), VaultError> {
        match crate::metrics::time_vault(
            "token_revoke",
            vaultrs::token::revoke_accessor(&self.client, accessor),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(e) => match VaultError::from(e) {
                // Vault: 400 "invalid accessor" once the token has expired.
                VaultError::Invalid(m) if m.contains("invalid accessor") => Ok(()),
                other => Err(other),
            },
        }
    }

    /// `auth/token/lookup-self`: the policies and remaining TTL of the token.
    pub async fn lookup_self(&self) -> Result<TokenInfo, VaultError> {
        let mut r =
            crate::metrics::time_vault("token_lookup", vaultrs::token::lookup_self(&self.client))
                .await?;
        // The response carries the token itself (`id`): move it into a
        // SecretString so it is zeroed when dropped.
        drop(SecretString::from(std::mem::take(&mut r.id)));
        Ok(TokenInfo {
            policies: r.policies,
            ttl_secs: r.ttl,
            display_name: r.display_name,
            renewable: r.renewable.unwrap_or(false),
            meta: r.meta.unwrap_or_default().into_iter().collect(),
            accessor: r.accessor,
        })
    }
}

/// What `lookup-self` tells about a token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub policies: Vec<String>,
    pub ttl_secs: u64,
    pub display_name: String,
    pub renewable: bool,
    pub meta: std::collections::BTreeMap<String, String>,
    /// Names the token for lookup/revocation by an operator; cannot be
    /// used to authenticate.
    pub accessor: String,
}
