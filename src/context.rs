//! What a command sees, and what it answers: the leaf of the command core.
//!
//! [`Ctx`] (who asks, from where, with which services), [`Reply`],
//! [`CommandError`] and [`CommandResult`]. `command/`, `approvals/` and
//! the dispatcher import this module; it imports none of them (nor
//! `effect.rs`), so that commands depend on a small context type and never
//! on the pipeline that runs them (ARCHITECTURE.md, invariants).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::config::{Config, Operator};
use crate::error::ErrorKind;
use crate::etcd::{Etcd, EtcdError};
use crate::notify::Notifier;
use crate::records::audit::AuditRecord;
use crate::records::RecordError;
use crate::runtime::Runtime;
use crate::security::{Event, Security};
use crate::transport_kind::Transport;
use crate::vault::auth::TokenManager;
use crate::vault::token::OperatorTokens;
use crate::vault::{Vault, VaultError};

/// What a command answers. `text` may hold a secret value (then `secret`
/// is true): it is zeroed on drop and `Debug` does not show it. `data`
/// is structured and never holds a secret value.
pub struct Reply {
    text: Zeroizing<String>,
    pub secret: bool,
    pub data: serde_json::Value,
}

impl Reply {
    pub fn text(text: impl Into<String>) -> Reply {
        Reply {
            text: Zeroizing::new(text.into()),
            secret: false,
            data: serde_json::Value::Object(Default::default()),
        }
    }

    /// A reply carrying a secret value.
    pub fn secret(text: impl Into<String>) -> Reply {
        Reply {
            secret: true,
            ..Reply::text(text)
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Reply {
        self.data = data;
        self
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The reply as a person may see it: every control or invisible
    /// character but the line break escaped (`crate::text`).
    pub fn escaped(self) -> Reply {
        match crate::text::escape_text(&self.text) {
            std::borrow::Cow::Borrowed(_) => self,
            std::borrow::Cow::Owned(t) => Reply {
                text: Zeroizing::new(t),
                secret: self.secret,
                data: self.data,
            },
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: &str = if self.secret {
            "<redacted>"
        } else {
            &self.text
        };
        f.debug_struct("Reply")
            .field("text", &text)
            .field("secret", &self.secret)
            .field("data", &self.data)
            .finish()
    }
}

/// A failed command, as the operator sees it. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
    /// Vault itself answered (a `denied` from Vault may mean a dead token;
    /// one from the broker's own checks never does).
    pub from_vault: bool,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CommandError {
        CommandError {
            kind,
            message: message.into(),
            from_vault: false,
        }
    }

    /// The error as a person may see it (no raw control character).
    pub fn escaped(mut self) -> CommandError {
        if let std::borrow::Cow::Owned(m) = crate::text::escape_text(&self.message) {
            self.message = m;
        }
        self
    }
    pub fn denied(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, m)
    }
}

impl From<VaultError> for CommandError {
    fn from(e: VaultError) -> Self {
        CommandError {
            from_vault: matches!(e, VaultError::Denied(_)),
            ..CommandError::new(e.kind(), e.to_string())
        }
    }
}

impl From<EtcdError> for CommandError {
    fn from(e: EtcdError) -> Self {
        CommandError::new(e.kind(), e.to_string())
    }
}

impl From<RecordError> for CommandError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Invalid(m) => CommandError::invalid(m),
            RecordError::Random(_) => CommandError::unavailable(e.to_string()),
        }
    }
}

impl From<crate::ids::RandomError> for CommandError {
    fn from(e: crate::ids::RandomError) -> Self {
        CommandError::unavailable(e.to_string())
    }
}

pub type CommandResult = Result<Reply, CommandError>;

/// A boxed future: the object-safe traits below return these.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The audit trail as commands use it: `audit::AuditLog` implements it,
/// and the leaf names only this, so that it never imports the store.
pub trait AuditTrail: Send + Sync {
    /// Writes `rec` to the log at once and queues it for etcd.
    fn record(&self, rec: AuditRecord) -> BoxFuture<'_, ()>;
    /// The last `n` records, oldest first (this process's queue first
    /// flushed).
    fn last(&self, n: u16) -> BoxFuture<'_, Result<Vec<AuditRecord>, EtcdError>>;
}

/// Cancelling an operator's pending approval requests and unused grants,
/// which a suspension does. `approvals::Approvals` implements it; commands
/// see only this, so that the leaf never imports the approval gate.
pub trait PendingRequests: Send + Sync {
    /// Cancels every pending request of `requester` (`by` is recorded) and
    /// withdraws every grant it has not used yet (an approved reveal does
    /// not survive a suspension); how many requests and grants.
    fn cancel_all_of<'a>(&'a self, requester: &'a str, by: &'a str) -> BoxFuture<'a, usize>;
}

/// The services every command may use, shared by all transports.
pub struct Services {
    pub cfg: Arc<Config>,
    pub broker: TokenManager,
    pub tokens: OperatorTokens,
    pub etcd: Etcd,
    /// The audit trail (written by the dispatcher; read by `/audit`;
    /// security alerts add to it).
    pub audit: Arc<dyn AuditTrail>,
    /// Suspensions, unlock windows, reveal budgets, alerts (`[security]`).
    pub security: Security,
    /// Messages for operators' Telegram chats, delivered by the leader.
    pub notifier: Notifier,
    /// What `vaultgram run` is doing (election, Telegram client), for
    /// `/health`; empty in `console` and the one-shot tools.
    pub runtime: Runtime,
    /// The approval requests, as a suspension cancels them.
    pub pending: Arc<dyn PendingRequests>,
}

/// An alert undelivered this long is dropped (with an audit record).
const ALERT_TTL: u64 = 24 * 3600;

impl Services {
    /// A security alert: audit record, WARN line, metric, and a message to
    /// the admins. `text` must never carry a secret (callers compose it
    /// from names and numbers; operator-typed reasons are escaped).
    pub async fn alert(
        &self,
        event: Event,
        operator: &str,
        transport: Transport,
        request_id: &str,
        text: &str,
    ) {
        let text = crate::text::escape_line(text);
        tracing::warn!(kind = event.as_str(), operator, alert = %text, "security alert");
        crate::metrics::security_event(event.as_str());
        self.audit
            .record(AuditRecord::new(
                request_id,
                operator,
                transport,
                &format!("security {}", event.as_str()),
                None,
                "alert",
            ))
            .await;
        let admins: Vec<&str> = self.security.admins().iter().map(String::as_str).collect();
        if let Err(e) = self
            .notifier
            .queue(
                "security",
                &admins,
                &format!("security: {text}"),
                crate::clock::unix_secs() + ALERT_TTL,
            )
            .await
        {
            tracing::warn!(error = %e, "security alert not queued for Telegram");
        }
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("broker", &self.broker)
            .finish()
    }
}

/// One command being handled: who, from where, and (on first use) the
/// operator's Vault client.
pub struct Ctx<'a> {
    pub svc: &'a Services,
    pub op: &'a Operator,
    pub transport: Transport,
    pub request_id: &'a str,
    /// The command line as the operator typed it (the approval gate keeps
    /// it to run the command later; never logged).
    pub line: &'a str,
    /// Runs through the host recovery path: `ctl` on the broker's host by
    /// an admin with their own TOTP code (`dispatch.rs`), the way back
    /// that a stolen Telegram account alone cannot use.
    pub host_recovery: bool,
    /// The suspension check's verdict, for a command that runs while it is
    /// made (`dispatch.rs`, read-only commands): `Some(true)` cleared,
    /// `Some(false)` refused or unknown, `None` not decided yet. A new
    /// token is minted, and a reveal counted, only once cleared.
    clearance: tokio::sync::watch::Receiver<Option<bool>>,
    vault: OnceCell<Arc<Vault>>,
}

impl<'a> Ctx<'a> {
    /// A context for `op`; an approved request runs with its
    /// *requester's* identity and child token, in a context of its own.
    pub fn new(
        svc: &'a Services,
        op: &'a Operator,
        transport: Transport,
        request_id: &'a str,
    ) -> Ctx<'a> {
        Ctx {
            svc,
            op,
            transport,
            request_id,
            line: "",
            host_recovery: false,
            clearance: tokio::sync::watch::channel(Some(true)).1,
            vault: OnceCell::new(),
        }
    }

    /// A context whose suspension check is still being made: its verdict
    /// comes through `clearance`.
    pub fn pending_clearance(
        mut self,
        clearance: tokio::sync::watch::Receiver<Option<bool>>,
    ) -> Ctx<'a> {
        self.clearance = clearance;
        self
    }

    /// Sets the command line this context runs.
    pub fn with_line(mut self, line: &'a str) -> Ctx<'a> {
        self.line = line;
        self
    }

    /// Marks the context as the host recovery path.
    pub fn in_host_recovery(mut self) -> Ctx<'a> {
        self.host_recovery = true;
        self
    }
}

impl Ctx<'_> {
    /// The operator's child-token client (minted on first use, cached by
    /// [`OperatorTokens`]).
    pub async fn vault(&self) -> Result<Arc<Vault>, CommandError> {
        let started = std::time::Instant::now();
        let v = self.vault.get_or_try_init(|| self.mint()).await;
        crate::metrics::observe_stage("token", started);
        let v = v?;
        Ok(v.clone())
    }

    /// Waits for the suspension check's verdict (at once when it was made
    /// before the command ran); `Err` unless cleared.
    pub async fn cleared(&self) -> Result<(), CommandError> {
        let mut rx = self.clearance.clone();
        let verdict = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| *v == Some(true))
            .unwrap_or(false);
        if verdict {
            Ok(())
        } else {
            Err(CommandError::unavailable(format!(
                "{} is not cleared by the suspension check",
                self.op.name
            )))
        }
    }

    /// The operator's child token; a freshly minted one is recorded in
    /// etcd first (so that a suspension revokes it from any replica) or,
    /// when that fails, revoked at once and not used: a token nobody could
    /// revoke must not exist. It is also checked against a suspension that
    /// raced with the mint.
    async fn mint(&self) -> Result<Arc<Vault>, CommandError> {
        // A cached token serves at once (the overlap of a read with the
        // suspension check); a new one only for a cleared operator, so that
        // a suspended or unknown one never gets a token at all.
        if let Some(v) = self.svc.tokens.cached(self.op).await {
            return Ok(v);
        }
        self.cleared().await?;
        let (vault, minted) = self.svc.tokens.for_operator_tracked(self.op).await?;
        let Some((accessor, ttl)) = minted else {
            return Ok(vault);
        };
        let sec = &self.svc.security;
        let refused = match sec.record_token(&self.op.name, &accessor, ttl).await {
            Err(e) => Some(CommandError::unavailable(format!(
                "etcd did not record a new Vault token for {} ({e}); it was revoked unused: the command did not run",
                self.op.name
            ))),
            Ok(()) => match sec.suspension(&self.op.name).await {
                Ok(None) => None,
                // Suspended while this token was being minted.
                Ok(Some(_)) => Some(CommandError::denied(format!(
                    "{} is suspended",
                    self.op.name
                ))),
                Err(e) => Some(CommandError::unavailable(format!(
                    "the suspension state of {} is unknown ({e}); the new token was revoked unused",
                    self.op.name
                ))),
            },
        };
        let Some(e) = refused else {
            return Ok(vault);
        };
        self.svc.tokens.forget(&self.op.name).await;
        if let Err(r) = self.svc.broker.current().revoke_accessor(&accessor).await {
            tracing::warn!(operator = %self.op.name, error = %r, "an unrecorded child token was not revoked (it expires with its TTL)");
        }
        Err(e)
    }

    pub fn cfg(&self) -> &Config {
        &self.svc.cfg
    }
}
