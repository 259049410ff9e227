//! The client: one Vault (or OpenBao) address, one token, TLS as the
//! config says and nothing else.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use super::error::{Says, VaultError};
use crate::config::VaultConfig;

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
    pub(super) client: VaultClient,
    pub(super) addr: String,
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
            // Vault: 400 "invalid accessor" once the token has expired.
            Err(e) => match VaultError::from(e) {
                e if e.says() == Some(Says::InvalidAccessor) => Ok(()),
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
