//! The broker's own Vault identity: logging in (AppRole with a
//! response-wrapped secret_id, Kubernetes, or a token) and keeping the token
//! alive — renew at about two thirds of its TTL, log in again when renewal
//! fails or the explicit max TTL is near, back off with jitter while Vault
//! is down.
//!
//! Callers take [`TokenManager::current`] for each call: an `Arc<Vault>`
//! bound to the token of the moment. A re-login swaps in a new client; the
//! old token is left to expire rather than revoked, so a call already in
//! flight with it still succeeds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{error, info, warn};
use vaultrs::api::AuthInfo;

use super::client::Vault;
use super::error::VaultError;
use crate::config::{AuthMethod, VaultConfig};

/// Default AppRole role name (SPEC.md: the `approle` role `vaultgram`).
pub const DEFAULT_APPROLE_ROLE: &str = "vaultgram";

/// What the broker logs in with. Secret parts are `SecretString`; a wrapped
/// secret_id is unwrapped once, at start-up, and only the result is kept.
enum Credentials {
    AppRole {
        mount: String,
        role_id: SecretString,
        secret_id: SecretString,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: std::path::PathBuf,
    },
    /// A token handed over by an operator (dev/ops). "Logging in again"
    /// re-reads `token_file`, in case an agent rotated it.
    Token {
        token: SecretString,
        token_file: Option<std::path::PathBuf>,
    },
}

fn read_secret_file(what: &str, path: &Path) -> Result<SecretString, VaultError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| VaultError::Setup(format!("cannot read {what} {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(VaultError::Setup(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

#[derive(Deserialize)]
struct UnwrappedSecretId {
    secret_id: SecretString,
}

/// Unwraps a response-wrapped AppRole secret_id, refusing it unless Vault
/// says it was created at `expected_path` (someone could otherwise hand us
/// a wrapped value of their own choosing). A token that was already
/// unwrapped — by us earlier, or by someone who intercepted it — fails here
/// with an error that says so.
pub async fn unwrap_secret_id(
    cfg: &VaultConfig,
    wrapping_token: &SecretString,
    expected_path: &str,
) -> Result<SecretString, VaultError> {
    let anon = Vault::with_token(cfg, &SecretString::from(String::new()))?;
    // sys/wrapping/lookup needs no token of its own.
    let info = crate::metrics::time_vault(
        "wrap_lookup",
        vaultrs::sys::wrapping::lookup(&anon.client, wrapping_token.expose_secret()),
    )
    .await
    .map_err(|e| match VaultError::from(e) {
        VaultError::Unavailable(m) => VaultError::Unavailable(m),
        _ => {
            error!("wrapped secret_id: the wrapping token is invalid or was already unwrapped");
            VaultError::Refused(
                "wrapped secret_id: the wrapping token is invalid or was already unwrapped \
                     (if the broker did not unwrap it, someone else may have: issue a new one \
                     and investigate)"
                    .into(),
            )
        }
    })?;
    if info.creation_path != expected_path {
        error!(
            creation_path = %info.creation_path,
            expected = expected_path,
            "wrapped secret_id refused: wrong creation path"
        );
        return Err(VaultError::Refused(format!(
            "wrapped secret_id refused: it was created at `{}`, expected `{expected_path}`",
            info.creation_path
        )));
    }
    let holder = Vault::with_token(cfg, wrapping_token)?;
    let data: UnwrappedSecretId = crate::metrics::time_vault(
        "unwrap",
        vaultrs::sys::wrapping::unwrap(&holder.client, None),
    )
    .await
    .map_err(|e| match VaultError::from(e) {
        VaultError::Unavailable(m) => VaultError::Unavailable(m),
        _ => VaultError::Refused(
            "wrapped secret_id: unwrap failed; the token was used in the meantime".into(),
        ),
    })?;
    Ok(data.secret_id)
}

impl Credentials {
    async fn from_config(cfg: &VaultConfig) -> Result<Credentials, VaultError> {
        let auth = &cfg.auth;
        match auth.method {
            AuthMethod::Approle => {
                let (Some(role_id_file), Some(secret_id_file)) =
                    (&auth.role_id_file, &auth.secret_id_file)
                else {
                    return Err(VaultError::Setup(
                        "approle needs role_id_file and secret_id_file".into(),
                    ));
                };
                let role_id = read_secret_file("role_id file", role_id_file)?;
                let secret = read_secret_file("secret_id file", secret_id_file)?;
                let secret_id = if auth.secret_id_wrapped {
                    let role = auth.role.as_deref().unwrap_or(DEFAULT_APPROLE_ROLE);
                    let expected = format!("auth/{}/role/{role}/secret-id", auth.approle_mount);
                    unwrap_secret_id(cfg, &secret, &expected).await?
                } else {
                    secret
                };
                Ok(Credentials::AppRole {
                    mount: auth.approle_mount.clone(),
                    role_id,
                    secret_id,
                })
            }
            AuthMethod::Kubernetes => Ok(Credentials::Kubernetes {
                mount: auth.mount.clone(),
                role: auth
                    .role
                    .clone()
                    .ok_or_else(|| VaultError::Setup("kubernetes auth needs a role".into()))?,
                jwt_file: auth.jwt_file.clone(),
            }),
            AuthMethod::Token => {
                let token = auth
                    .token
                    .clone()
                    .ok_or_else(|| VaultError::Setup("token auth without a token".into()))?;
                Ok(Credentials::Token {
                    token,
                    token_file: auth.token_file.clone(),
                })
            }
        }
    }

    fn can_relogin(&self) -> bool {
        !matches!(
            self,
            Credentials::Token {
                token_file: None,
                ..
            }
        )
    }

    /// One login; returns the new token and what Vault said about it.
    async fn login(&self, cfg: &VaultConfig) -> Result<LoggedIn, VaultError> {
        let anon = || Vault::with_token(cfg, &SecretString::from(String::new()));
        let auth: AuthInfo = match self {
            Credentials::AppRole {
                mount,
                role_id,
                secret_id,
            } => crate::metrics::time_vault(
                "login",
                vaultrs::auth::approle::login(
                    &anon()?.client,
                    mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                ),
            )
            .await
            .map_err(login_refused)?,
            Credentials::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                // Projected service-account tokens rotate: read it each time.
                let jwt = read_secret_file("service-account token", jwt_file)?;
                crate::metrics::time_vault(
                    "login",
                    vaultrs::auth::kubernetes::login(
                        &anon()?.client,
                        mount,
                        role,
                        jwt.expose_secret(),
                    ),
                )
                .await
                .map_err(login_refused)?
            }
            Credentials::Token { token, token_file } => {
                let token = match token_file {
                    Some(f) => read_secret_file("token_file", f)?,
                    None => token.clone(),
                };
                let vault = Vault::with_token(cfg, &token)?;
                let info = vault.lookup_self().await?;
                return Ok(LoggedIn {
                    vault,
                    ttl: Duration::from_secs(info.ttl_secs),
                    renewable: info.renewable,
                    policies: info.policies,
                });
            }
        };
        LoggedIn::from_auth(cfg, auth)
    }
}

/// A login Vault rejects as a bad request (400 "invalid role or secret
/// ID") is a refused credential, not malformed input.
fn login_refused(e: vaultrs::error::ClientError) -> VaultError {
    match VaultError::from(e) {
        VaultError::Invalid(m) | VaultError::Denied(m) => {
            VaultError::Denied(format!("login refused: {m}"))
        }
        other => other,
    }
}

struct LoggedIn {
    vault: Vault,
    ttl: Duration,
    renewable: bool,
    policies: Vec<String>,
}

impl LoggedIn {
    /// Takes the token out of vaultrs's `AuthInfo` (whose `Debug` would
    /// print it) straight into a `SecretString`.
    fn from_auth(cfg: &VaultConfig, auth: AuthInfo) -> Result<LoggedIn, VaultError> {
        let AuthInfo {
            client_token,
            policies,
            lease_duration,
            renewable,
            ..
        } = auth;
        let token = SecretString::from(client_token);
        Ok(LoggedIn {
            vault: Vault::with_token(cfg, &token)?,
            ttl: Duration::from_secs(lease_duration),
            renewable,
            policies,
        })
    }
}

struct Current {
    vault: Arc<Vault>,
    /// TTL granted at login: what each renewal asks for again.
    base_ttl: Duration,
    /// TTL granted by the last login or renewal, and when that was.
    lease: Duration,
    leased_at: Instant,
    renewable: bool,
    generation: u64,
    policies: Vec<String>,
}

impl Current {
    fn expires_at(&self) -> Instant {
        self.leased_at + self.lease
    }
    /// Two thirds into the lease (a zero TTL — root-like tokens — never
    /// needs renewing).
    fn renew_due(&self) -> Option<Instant> {
        if self.lease.is_zero() {
            None
        } else {
            Some(self.leased_at + self.lease * 2 / 3)
        }
    }
}

/// What `/whoami`, `/health` and metrics show about the broker's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    /// `None` for a token without TTL.
    pub ttl_remaining: Option<Duration>,
    pub renewable: bool,
    pub policies: Vec<String>,
    /// Increases with every login; child tokens minted under an older
    /// generation die with their parent.
    pub generation: u64,
    pub renewals: u64,
    pub relogins: u64,
    pub failures: u64,
}

struct Inner {
    cfg: VaultConfig,
    creds: Credentials,
    current: RwLock<Current>,
    renewals: AtomicU64,
    relogins: AtomicU64,
    failures: AtomicU64,
    /// Serialises refreshes (the renewer and a caller that saw a dead token).
    refreshing: tokio::sync::Mutex<()>,
}

/// The broker's token, kept alive. Cheap to clone.
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("status", &self.status())
            .finish()
    }
}

impl TokenManager {
    /// Reads the credentials (unwrapping a wrapped secret_id) and logs in
    /// once. Fails fast: a caller that wants to wait for Vault retries.
    pub async fn login(cfg: &VaultConfig) -> Result<TokenManager, VaultError> {
        let creds = Credentials::from_config(cfg).await?;
        let first = creds.login(cfg).await?;
        info!(
            method = %cfg.auth.method,
            ttl_secs = first.ttl.as_secs(),
            renewable = first.renewable,
            "logged in to Vault"
        );
        let now = Instant::now();
        Ok(TokenManager {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                creds,
                current: RwLock::new(Current {
                    vault: Arc::new(first.vault),
                    base_ttl: first.ttl,
                    lease: first.ttl,
                    leased_at: now,
                    renewable: first.renewable,
                    generation: 1,
                    policies: first.policies,
                }),
                renewals: AtomicU64::new(0),
                relogins: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                refreshing: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The client for the token of the moment.
    pub fn current(&self) -> Arc<Vault> {
        self.inner.current.read().unwrap().vault.clone()
    }

    pub fn generation(&self) -> u64 {
        self.inner.current.read().unwrap().generation
    }

    /// When the current token expires (`None`: no TTL).
    pub fn expires_at(&self) -> Option<Instant> {
        let c = self.inner.current.read().unwrap();
        (!c.lease.is_zero()).then(|| c.expires_at())
    }

    pub fn config(&self) -> &VaultConfig {
        &self.inner.cfg
    }

    pub fn status(&self) -> TokenStatus {
        let c = self.inner.current.read().unwrap();
        TokenStatus {
            ttl_remaining: (!c.lease.is_zero())
                .then(|| c.expires_at().saturating_duration_since(Instant::now())),
            renewable: c.renewable,
            policies: c.policies.clone(),
            generation: c.generation,
            renewals: self.inner.renewals.load(Ordering::Relaxed),
            relogins: self.inner.relogins.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
        }
    }

    /// Renews, or logs in again when renewal is refused or the explicit max
    /// TTL is near. `seen_generation` lets a caller that saw the token fail
    /// ask for a refresh without causing a second one if another task just
    /// did it.
    pub async fn refresh(&self, seen_generation: Option<u64>) -> Result<(), VaultError> {
        let _guard = self.inner.refreshing.lock().await;
        let (vault, base_ttl, renewable, generation) = {
            let c = self.inner.current.read().unwrap();
            (c.vault.clone(), c.base_ttl, c.renewable, c.generation)
        };
        if seen_generation.is_some_and(|g| g != generation) {
            return Ok(());
        }
        let relogin_possible = self.inner.creds.can_relogin();
        if !renewable {
            return if relogin_possible {
                self.relogin().await
            } else {
                Err(VaultError::Refused(
                    "the broker's token is not renewable".into(),
                ))
            };
        }
        let increment = format!("{}s", base_ttl.as_secs().max(1));
        let renewed = crate::metrics::time_vault(
            "token_renew",
            vaultrs::token::renew_self(&vault.client, Some(&increment)),
        )
        .await;
        match renewed {
            Ok(auth) => {
                let lease = Duration::from_secs(auth.lease_duration);
                // Drop the token string vaultrs handed back at once.
                drop(SecretString::from(auth.client_token));
                self.inner.renewals.fetch_add(1, Ordering::Relaxed);
                {
                    let mut c = self.inner.current.write().unwrap();
                    c.lease = lease;
                    c.leased_at = Instant::now();
                }
                // Vault granted less than we asked for: the explicit max
                // TTL caps the token within one more period. Log in again
                // now, while the old token still has that much to live.
                if lease < base_ttl && relogin_possible {
                    info!(
                        lease_secs = lease.as_secs(),
                        "token near its max TTL; logging in again"
                    );
                    return self.relogin().await;
                }
                Ok(())
            }
            Err(e) => {
                let e = VaultError::from(e);
                match e {
                    // Unreachable or sealed: keep the token, retry later.
                    VaultError::Unavailable(_) => Err(e),
                    // Revoked, expired, or not renewable after all.
                    _ if relogin_possible => {
                        warn!(error = %e, "token renewal refused; logging in again");
                        self.relogin().await
                    }
                    _ => Err(e),
                }
            }
        }
    }

    async fn relogin(&self) -> Result<(), VaultError> {
        let fresh = self.inner.creds.login(&self.inner.cfg).await?;
        let mut c = self.inner.current.write().unwrap();
        c.vault = Arc::new(fresh.vault);
        c.base_ttl = fresh.ttl;
        c.lease = fresh.ttl;
        c.leased_at = Instant::now();
        c.renewable = fresh.renewable;
        c.policies = fresh.policies;
        c.generation += 1;
        self.inner.relogins.fetch_add(1, Ordering::Relaxed);
        info!(
            generation = c.generation,
            ttl_secs = fresh.ttl.as_secs(),
            "logged in to Vault again"
        );
        Ok(())
    }

    /// Runs until `shutdown` resolves: renews on schedule, backs off with
    /// jitter while Vault is unavailable.
    pub async fn run_renewer(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let mut retry_at: Option<Instant> = None;
        loop {
            let due = retry_at.or_else(|| self.inner.current.read().unwrap().renew_due());
            let Some(due) = due else {
                // Nothing to renew; wait for shutdown.
                shutdown.as_mut().await;
                return;
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            match self.refresh(None).await {
                Ok(()) => {
                    backoff.reset();
                    retry_at = None;
                }
                Err(e) => {
                    self.inner.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_delay();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "token refresh failed");
                    retry_at = Some(Instant::now() + wait);
                }
            }
        }
    }
}

/// Exponential backoff with full jitter (AWS architecture blog): the wait
/// is uniform in [0, min(cap, base·2ⁿ)], so many brokers do not retry in
/// lock-step after an outage.
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // No randomness (should not happen): fall back to the ceiling.
        let Ok(r) = crate::ids::random_u64() else {
            return ceiling;
        };
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        // At least a millisecond, so a retry loop never spins.
        ceiling.mul_f64(frac).max(Duration::from_millis(1))
    }
}

/// Metadata for child tokens: the operator's name and Telegram id, so that
/// Vault's audit log names the person behind each call.
pub fn operator_meta(name: &str, telegram_id: i64, role: &str) -> HashMap<String, String> {
    HashMap::from([
        ("operator".to_string(), name.to_string()),
        ("telegram_id".to_string(), telegram_id.to_string()),
        ("role".to_string(), role.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..20 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(1 << n.min(16))
                .min(Duration::from_secs(2));
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
