//! `sys/` endpoints vaultrs does not model in a way OpenBao answers.
//!
//! vaultrs 0.8's `sys/health` response requires `performance_standby`,
//! which OpenBao does not send; this endpoint reads only the fields both
//! servers return, and asks for HTTP 200 in every state so the body is
//! always there to read.

use rustify_derive::Endpoint;
use serde::{Deserialize, Serialize};

#[derive(Endpoint, Serialize)]
#[endpoint(path = "/sys/health", response = "HealthResponse")]
pub struct HealthRequest {
    #[endpoint(query)]
    pub standbyok: bool,
    #[endpoint(query)]
    pub sealedcode: u16,
    #[endpoint(query)]
    pub uninitcode: u16,
}

impl HealthRequest {
    /// 200 whatever the state: the caller reads the state from the body.
    pub fn always_ok() -> Self {
        HealthRequest {
            standbyok: true,
            sealedcode: 200,
            uninitcode: 200,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct HealthResponse {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
}

// ---- `doctor`'s probes -------------------------------------------------

use rustify::enums::RequestMethod;

use super::client::{Health, Vault};
use super::error::VaultError;
use super::http::{parse_envelope, Req};

impl Vault {
    /// `sys/health`: whether the server is initialised, sealed, standby.
    pub async fn health(&self) -> Result<Health, VaultError> {
        let r = crate::metrics::time_vault(
            "sys_health",
            vaultrs::api::exec_with_no_result(&self.client, HealthRequest::always_ok()),
        )
        .await?;
        Ok(Health {
            initialized: r.initialized,
            sealed: r.sealed,
            standby: r.standby,
        })
    }
}

/// `sys/leader` (unauthenticated): HA mode and the active node.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LeaderInfo {
    #[serde(default)]
    pub ha_enabled: bool,
    #[serde(default)]
    pub is_self: bool,
    #[serde(default)]
    pub leader_address: String,
}

/// What `lookup-self` says about the token's lifetime (`doctor`): whether
/// it is periodic decides if a short TTL matters.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TokenLifetime {
    #[serde(default)]
    pub ttl: u64,
    #[serde(default)]
    pub period: u64,
    #[serde(default)]
    pub explicit_max_ttl: u64,
    #[serde(default)]
    pub renewable: bool,
    #[serde(default)]
    pub policies: Vec<String>,
}

/// A mount as `sys/internal/ui/mounts/<path>` shows it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MountInfo {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub options: Option<serde_json::Value>,
}

impl Vault {
    /// `sys/leader`.
    pub async fn leader(&self) -> Result<LeaderInfo, VaultError> {
        let ctx = "sys/leader";
        let body = self
            .send(Req::new(RequestMethod::GET, ctx.into()))
            .await
            .map_err(|e| e.into_error(ctx))?;
        // Not wrapped in `data`: the fields are at the top level.
        serde_json::from_slice(&body)
            .map_err(|_| VaultError::Unavailable(format!("{ctx}: unexpected answer from Vault")))
    }

    /// `auth/token/lookup-self`, reading only lifetime fields (the answer
    /// also holds the token; the body buffer is zeroized).
    pub async fn token_lifetime(&self) -> Result<TokenLifetime, VaultError> {
        let ctx = "auth/token/lookup-self";
        let body = self
            .send(Req::new(RequestMethod::GET, ctx.into()))
            .await
            .map_err(|e| e.into_error(ctx))?;
        parse_envelope::<TokenLifetime>(&body, ctx)?
            .data
            .ok_or_else(|| VaultError::Unavailable(format!("{ctx}: no data")))
    }

    /// `sys/internal/ui/mounts/<mount>`: any token may read the mounts it
    /// can use (the broker's policy has no `sys/mounts`); 403 when the
    /// mount does not exist or the token has no path on it.
    pub async fn mount_info(&self, mount: &str) -> Result<MountInfo, VaultError> {
        let ctx = format!("sys/internal/ui/mounts/{}", mount.trim_matches('/'));
        let body = self
            .send(Req::new(RequestMethod::GET, ctx.clone()))
            .await
            .map_err(|e| e.into_error(&ctx))?;
        parse_envelope::<MountInfo>(&body, &ctx)?
            .data
            .ok_or_else(|| VaultError::NotFound(ctx.clone()))
    }
}
