//! Per-operator child tokens.
//!
//! Every Vault call made for an operator's command runs with a token minted
//! by the broker's own token through the token role (`vault.operator_token_role`,
//! `vaultgram-operator`) and carrying only that operator's policy:
//! `vaultgram-op-admin`, or `vaultgram-op-agent-<agent>`. Vault, not the
//! broker, then enforces what the operator may touch, and Vault's audit log
//! shows the operator in the token's display name and metadata.
//!
//! Children are cached until a third of their TTL remains. A child dies with
//! its parent, so the cache also drops every child minted under an older
//! broker token (see [`TokenManager::generation`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio::time::Instant;
use vaultrs::api::token::requests::CreateRoleTokenRequestBuilder;

use super::auth::{operator_meta, TokenManager};
use super::client::Vault;
use super::error::VaultError;
use crate::config::{Operator, Role};

/// How long a child token lives. Short: it is re-minted on demand.
pub const CHILD_TTL: Duration = Duration::from_secs(300);

/// The one Vault policy an operator's child token carries.
pub fn policy_for(op: &Operator) -> String {
    match (op.role, op.agent.as_deref()) {
        (Role::Admin, _) => "vaultgram-op-admin".to_string(),
        (Role::Agent, Some(agent)) => format!("vaultgram-op-agent-{agent}"),
        // Config validation makes an agent without `agent` impossible;
        // a policy that does not exist grants nothing.
        (Role::Agent, None) => "vaultgram-op-agent-invalid".to_string(),
    }
}

struct Cached {
    vault: Arc<Vault>,
    refresh_after: Instant,
    generation: u64,
    /// When a denial last made us check that this token is still alive.
    checked_at: Option<Instant>,
}

/// At most one liveness check of an operator's child token per this
/// long, however many of its commands Vault denies.
const DENIAL_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Mints and caches child tokens for operators.
pub struct OperatorTokens {
    broker: TokenManager,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorTokens")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl OperatorTokens {
    pub fn new(broker: TokenManager) -> OperatorTokens {
        Self::with_ttl(broker, CHILD_TTL)
    }

    pub fn with_ttl(broker: TokenManager, ttl: Duration) -> OperatorTokens {
        OperatorTokens {
            broker,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn broker(&self) -> &TokenManager {
        &self.broker
    }

    /// A client whose token carries only `op`'s policy.
    pub async fn for_operator(&self, op: &Operator) -> Result<Arc<Vault>, VaultError> {
        Ok(self.for_operator_tracked(op).await?.0)
    }

    /// `op`'s cached client, if it is still good (no Vault call).
    pub async fn cached(&self, op: &Operator) -> Option<Arc<Vault>> {
        let generation = self.broker.generation();
        let cache = self.cache.lock().await;
        cache
            .get(&op.name)
            .filter(|c| c.generation == generation && Instant::now() < c.refresh_after)
            .map(|c| c.vault.clone())
    }

    /// [`for_operator`](Self::for_operator), and when a token was minted
    /// for this call, its accessor and TTL (the caller records them, so a
    /// suspension can revoke the token from any replica).
    pub async fn for_operator_tracked(
        &self,
        op: &Operator,
    ) -> Result<(Arc<Vault>, Option<(String, Duration)>), VaultError> {
        let generation = self.broker.generation();
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(&op.name) {
            if c.generation == generation && Instant::now() < c.refresh_after {
                return Ok((c.vault.clone(), None));
            }
        }
        let (vault, lease, accessor) = match self.mint(op).await {
            // The broker's own token may have been revoked from outside:
            // log in again and mint once more, so this command still works.
            Err(VaultError::Denied(_)) if self.heal_if_parent_dead().await => self.mint(op).await?,
            r => r?,
        };
        let now = Instant::now();
        // Refresh when a third of the child's life is left, and never later
        // than the parent's expiry (the child dies with it).
        let mut refresh_after = now + lease * 2 / 3;
        if let Some(parent_end) = self.broker.expires_at() {
            refresh_after = refresh_after.min(parent_end);
        }
        let vault = Arc::new(vault);
        cache.insert(
            op.name.clone(),
            Cached {
                vault: vault.clone(),
                refresh_after,
                generation,
                checked_at: None,
            },
        );
        Ok((vault, Some((accessor, lease))))
    }

    /// After a `denied`: if the broker's own token is dead (revoked from
    /// outside), log in again now instead of at the next renewal, and drop
    /// every cached child (they died with it). `true` when it healed. One
    /// lookup-self per denied command; a token that is fine costs nothing
    /// more.
    pub async fn heal_if_parent_dead(&self) -> bool {
        let generation = self.broker.generation();
        match self.broker.current().lookup_self().await {
            Err(VaultError::Denied(_)) => {}
            _ => return false,
        }
        tracing::warn!("the broker's Vault token was refused; logging in again");
        match self.broker.refresh(Some(generation)).await {
            Ok(()) => {
                if let Ok(mut cache) = self.cache.try_lock() {
                    cache.clear();
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-login after a refused token failed");
                false
            }
        }
    }

    /// After Vault denied one of `name`'s commands: a denial is usually
    /// just the policy at work, so the child token is kept. Only if the
    /// token itself is dead (revoked, or its parent was) is it dropped, and
    /// the broker's own token healed. One `lookup-self` at most every
    /// [`DENIAL_CHECK_INTERVAL`] per operator, never a mint: denied
    /// commands cannot churn Vault's token store.
    pub async fn after_denial(&self, name: &str) {
        let vault = {
            let mut cache = self.cache.lock().await;
            let Some(c) = cache.get_mut(name) else { return };
            let now = Instant::now();
            if c.checked_at
                .is_some_and(|t| now < t + DENIAL_CHECK_INTERVAL)
            {
                return;
            }
            c.checked_at = Some(now);
            c.vault.clone()
        };
        if let Err(VaultError::Denied(_)) = vault.lookup_self().await {
            // The child is dead: mint a fresh one next time, and if its
            // parent died too, log in again now.
            self.forget(name).await;
            self.heal_if_parent_dead().await;
        }
    }

    /// Forgets an operator's cached token (e.g. after Vault said it is
    /// invalid).
    pub async fn forget(&self, name: &str) {
        self.cache.lock().await.remove(name);
    }

    async fn mint(&self, op: &Operator) -> Result<(Vault, Duration, String), VaultError> {
        let cfg = self.broker.config();
        let parent = self.broker.current();
        let mut req = CreateRoleTokenRequestBuilder::default();
        req.policies(vec![policy_for(op)])
            .ttl(format!("{}s", self.ttl.as_secs()))
            .renewable(false)
            // Vault prefixes "token-": the audit log shows token-vaultgram-alice.
            .display_name(format!("vaultgram-{}", op.name))
            .meta(operator_meta(&op.name, op.telegram_id, op.role.as_str()));
        let auth = crate::metrics::time_vault(
            "token_create",
            vaultrs::token::new_role(&parent.client, &cfg.operator_token_role, Some(&mut req)),
        )
        .await?;
        let lease = Duration::from_secs(auth.lease_duration);
        let token = SecretString::from(auth.client_token);
        Ok((Vault::with_token(cfg, &token)?, lease, auth.accessor))
    }
}
