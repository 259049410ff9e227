//! The dispatcher: every transport (console, Unix socket, Telegram) hands
//! `(operator, command text)` here and renders the [`Reply`] it gets back.
//!
//! parse → authorize by role → approval gate → execute with the operator's
//! Vault child token → audit. Unknown senders, unparsable lines and role
//! violations never reach Vault.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::approvals::Approvals;
use crate::audit::{AuditLog, AuditRecord};
use crate::command::{Command, ParseError};
use crate::config::{Config, Operator};
use crate::error::ErrorKind;
use crate::etcd::{Etcd, EtcdError};
use crate::vault::auth::TokenManager;
use crate::vault::token::OperatorTokens;
use crate::vault::{Vault, VaultError};

/// Where a command came from (audit trail, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Console,
    Socket,
    Telegram,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Console => "console",
            Transport::Socket => "socket",
            Transport::Telegram => "telegram",
        }
    }
}

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
    fn escaped(self) -> Reply {
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

    fn escaped(mut self) -> CommandError {
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

impl From<crate::records::RecordError> for CommandError {
    fn from(e: crate::records::RecordError) -> Self {
        match e {
            crate::records::RecordError::Invalid(m) => CommandError::invalid(m),
            crate::records::RecordError::Random => CommandError::unavailable(e.to_string()),
        }
    }
}

impl From<ParseError> for CommandError {
    fn from(e: ParseError) -> Self {
        CommandError::invalid(e.0)
    }
}

pub type CommandResult = Result<Reply, CommandError>;

/// Failures while starting the core.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Everything a command needs, shared by all transports.
pub struct App {
    pub cfg: Arc<Config>,
    pub broker: TokenManager,
    pub tokens: OperatorTokens,
    pub etcd: Etcd,
    pub audit: AuditLog,
    pub approvals: Approvals,
    /// Suspensions, unlock windows, reveal budgets, alerts (`[security]`).
    pub security: crate::security::Security,
    /// Messages for operators' Telegram chats, delivered by the leader.
    pub notifier: crate::notify::Notifier,
    /// What `vaultgram run` is doing (election, Telegram client), for
    /// `/health`; empty in `console` and the one-shot tools.
    pub runtime: Runtime,
}

/// The service's moving parts, as `/health` (and later `doctor`/metrics)
/// report them.
#[derive(Default)]
pub struct Runtime {
    pub elector: std::sync::OnceLock<Arc<crate::leader::Elector>>,
    pub telegram: std::sync::Mutex<TelegramStatus>,
    /// The last confinement check (`src/kube.rs`); `None` before the first.
    pub confinement: std::sync::Mutex<Option<crate::kube::Status>>,
}

/// The Telegram client of this process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelegramStatus {
    pub connected: bool,
    pub backend: Option<&'static str>,
    /// Unix seconds of the last update received.
    pub last_update: Option<u64>,
    /// Why the client is not running, when it should.
    pub problem: Option<String>,
}

impl Runtime {
    pub fn confinement(&self) -> Option<crate::kube::Status> {
        self.confinement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_confinement(&self, status: crate::kube::Status) {
        crate::metrics::confinement(status.state);
        *self.confinement.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    pub fn telegram(&self) -> TelegramStatus {
        self.telegram
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_telegram(&self, f: impl FnOnce(&mut TelegramStatus)) {
        f(&mut self.telegram.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("broker", &self.broker).finish()
    }
}

/// One command being handled: who, from where, and (on first use) the
/// operator's Vault client.
pub struct Ctx<'a> {
    pub app: &'a App,
    pub op: &'a Operator,
    pub transport: Transport,
    pub request_id: &'a str,
    /// The command line as the operator typed it (the approval gate keeps
    /// it to run the command later; never logged).
    pub line: &'a str,
    vault: OnceCell<Arc<Vault>>,
}

impl<'a> Ctx<'a> {
    /// A context for `op` outside a transport's dispatch: an approved
    /// request runs with its *requester's* identity and child token.
    pub fn for_operator(
        app: &'a App,
        op: &'a Operator,
        transport: Transport,
        request_id: &'a str,
    ) -> Ctx<'a> {
        Ctx {
            app,
            op,
            transport,
            request_id,
            line: "",
            vault: OnceCell::new(),
        }
    }

    /// Sets the command line this context runs.
    pub fn with_line(mut self, line: &'a str) -> Ctx<'a> {
        self.line = line;
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

    /// The operator's child token; a freshly minted one is recorded in
    /// etcd first (a suspension revokes it from any replica), and checked
    /// against a suspension that raced with the mint.
    async fn mint(&self) -> Result<Arc<Vault>, CommandError> {
        let (vault, minted) = self.app.tokens.for_operator_tracked(self.op).await?;
        let Some((accessor, ttl)) = minted else {
            return Ok(vault);
        };
        let sec = &self.app.security;
        sec.record_token(&self.op.name, &accessor, ttl).await;
        if let Ok(Some(_)) = sec.suspension(&self.op.name).await {
            // Suspended while this token was being minted.
            self.app.tokens.forget(&self.op.name).await;
            let _ = self.app.broker.current().revoke_accessor(&accessor).await;
            return Err(CommandError::denied(format!(
                "{} is suspended",
                self.op.name
            )));
        }
        Ok(vault)
    }

    pub fn cfg(&self) -> &Config {
        &self.app.cfg
    }
}

fn request_id() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl App {
    /// Logs in to Vault and connects to etcd.
    pub async fn start(cfg: Config) -> Result<Arc<App>, StartError> {
        let broker = TokenManager::login(&cfg.vault).await?;
        let etcd = Etcd::connect(&cfg.etcd).await?;
        let cfg = Arc::new(cfg);
        Ok(Arc::new(App {
            tokens: OperatorTokens::new(broker.clone()),
            audit: AuditLog::new(etcd.clone(), &cfg),
            approvals: Approvals::new(etcd.clone(), &cfg),
            security: crate::security::Security::new(
                etcd.clone(),
                &cfg.etcd.prefix,
                cfg.security.clone(),
                cfg.operators
                    .iter()
                    .filter(|o| o.role == crate::config::Role::Admin)
                    .map(|o| o.name.clone())
                    .collect(),
            ),
            notifier: crate::notify::Notifier::new(etcd.clone(), &cfg.etcd.prefix),
            runtime: Runtime::default(),
            broker,
            etcd,
            cfg,
        }))
    }

    /// Handles one line. `None`: the sender is not an operator and gets no
    /// reply at all (one audit record is written). `sender` names the
    /// sender for that record when `op` is `None` (a Telegram id, a uid).
    pub async fn dispatch(
        &self,
        op: Option<&Operator>,
        sender: &str,
        transport: Transport,
        text: &str,
    ) -> Option<CommandResult> {
        let rid = request_id();
        let Some(op) = op else {
            self.audit
                .record(AuditRecord::new(
                    &rid,
                    &format!("unknown:{sender}"),
                    transport,
                    "-",
                    None,
                    "ignored",
                ))
                .await;
            crate::metrics::command("-", "ignored", transport.as_str());
            return None;
        };
        let parse_started = std::time::Instant::now();
        let parsed = Command::parse(text);
        crate::metrics::observe_stage("parse", parse_started);
        let (name, target, result) = match parsed {
            Err(e) => ("-".to_string(), None, Err(CommandError::from(e))),
            Ok(cmd) => {
                let ctx = Ctx {
                    app: self,
                    op,
                    transport,
                    request_id: &rid,
                    line: text.trim(),
                    vault: OnceCell::new(),
                };
                let r = self.run_gated(&ctx, &cmd).await;
                (cmd.name(), cmd.target(), r)
            }
        };
        if matches!(&result, Err(e) if e.kind == ErrorKind::Denied && e.from_vault) {
            // A child token that died (with a revoked broker token, say)
            // looks like any denial: check it, bounded, so that only this
            // command fails. The broker's own refusals never reach Vault.
            self.tokens.after_denial(&op.name).await;
        }
        // Whatever the command echoes (paths, names, Vault's messages) is
        // shown to a person: no raw control or invisible character.
        let result = result.map(Reply::escaped).map_err(CommandError::escaped);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        crate::metrics::command(&name, outcome, transport.as_str());
        crate::metrics::time_stage(
            "audit",
            self.audit.record(AuditRecord::new(
                &rid, &op.name, transport, &name, target, outcome,
            )),
        )
        .await;
        Some(result)
    }

    /// Suspension, role check, effects, then — for a gated effect —
    /// arguments and ownership, then the approval gate, the reveal budget
    /// and execution. A read-only command runs while the suspension and
    /// the budget are checked (two etcd round trips that used to come
    /// first, measured in docs/PERFORMANCE.md); its reply is dropped
    /// unseen when either refuses, and it changes nothing that would need
    /// undoing.
    async fn run_gated(&self, ctx: &Ctx<'_>, cmd: &Command) -> CommandResult {
        if cmd.is_read_only() {
            let (suspended, result) = tokio::join!(
                self.check_suspension(ctx),
                self.authorize_and_run(ctx, cmd, true)
            );
            suspended?;
            return result;
        }
        self.check_suspension(ctx).await?;
        self.authorize_and_run(ctx, cmd, false).await
    }

    /// A suspended operator gets nothing, on every replica and transport
    /// (one etcd read: a suspension takes effect at once).
    async fn check_suspension(&self, ctx: &Ctx<'_>) -> Result<(), CommandError> {
        let suspension =
            crate::metrics::time_stage("suspension", self.security.suspension(&ctx.op.name)).await;
        match suspension {
            Ok(Some(s)) => Err(CommandError::denied(format!(
                "{} is suspended (since {} by {}); an admin can /operator resume {}",
                ctx.op.name,
                crate::audit::rfc3339(std::time::Duration::from_secs(s.since)),
                s.by,
                ctx.op.name
            ))),
            Ok(None) => Ok(()),
            // etcd unreachable: commands that need no etcd keep working.
            // A suspended operator still gets nothing from Vault: the
            // suspension revoked every token recorded for it, and no new
            // one is handed out while the suspension is visible.
            Err(e) => {
                tracing::warn!(
                    operator = %ctx.op.name,
                    error = %e,
                    "suspension state unreadable; relying on Vault-side revocation"
                );
                Ok(())
            }
        }
    }

    /// Authorization, then the budget and execution: one after the other,
    /// or side by side for a read-only command (`overlap`).
    async fn authorize_and_run(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
        overlap: bool,
    ) -> CommandResult {
        let authorize_started = std::time::Instant::now();
        self.authorize(ctx, cmd).await?;
        crate::metrics::observe_stage("authorize", authorize_started);
        let run = crate::metrics::time_stage("execute", execute(ctx, cmd));
        if !cmd.reply_is_secret() {
            return run.await;
        }
        let budget = crate::metrics::time_stage("budget", self.check_budget(ctx));
        if overlap {
            let (counted, result) = tokio::join!(budget, run);
            counted?;
            return result;
        }
        budget.await?;
        run.await
    }

    /// Role, step-up, effects and the approval gate.
    async fn authorize(&self, ctx: &Ctx<'_>, cmd: &Command) -> Result<(), CommandError> {
        if !cmd.allowed_for(ctx.op.role) {
            return Err(CommandError::denied(format!(
                "/{} is not available to {} operators",
                cmd.name(),
                ctx.op.role
            )));
        }
        if self.security.needs_unlock(cmd.step())
            && self.security.unlocked_until(&ctx.op.name).await?.is_none()
        {
            return Err(CommandError::denied(format!(
                "locked: /{} needs step-up; send /unlock CODE with your TOTP code first (/lock ends it)",
                cmd.name()
            )));
        }
        let effects = crate::effect::classify(cmd, &self.cfg.vault.kv_mount)?;
        let gated = effects
            .iter()
            .any(|e| self.cfg.approvals.required.iter().any(|r| r == e.name()));
        if gated {
            // Validate, then gate: a request that could not run is never
            // filed, and an approver never spends a code on it. The
            // canonical line is what /pending shows and /approve runs.
            let line = crate::command::prepare(ctx, cmd).await?;
            // Either a grant from an earlier approval is consumed here, or a
            // pending request is created and the command stops.
            self.approvals.gate(ctx, cmd, &line).await?;
        }
        Ok(())
    }

    /// At most `security.reveal_budget` secret-bearing replies per operator
    /// per `reveal_window_secs` (attempts count: a reply is counted before
    /// it is produced). The first one over the budget raises an alert.
    async fn check_budget(&self, ctx: &Ctx<'_>) -> Result<(), CommandError> {
        let sec = &self.security;
        let counted = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            sec.count_reveal(&ctx.op.name),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::etcd::EtcdError::Unavailable(
                "no answer within 2 s".into(),
            ))
        });
        let verdict = match counted {
            Ok(v) => v,
            // A rate limit, not an authorisation: an etcd outage does not
            // stop secrets (step-up, when on, still needs etcd).
            Err(e) => {
                tracing::warn!(operator = %ctx.op.name, error = %e, "reveal budget not counted (etcd)");
                return Ok(());
            }
        };
        let budget = sec.cfg.reveal_budget;
        if verdict == crate::security::Reveal::Allowed {
            return Ok(());
        }
        if verdict == crate::security::Reveal::FirstOver {
            sec.alert(
                &self.audit,
                &self.notifier,
                crate::security::Event::BudgetExceeded,
                &ctx.op.name,
                ctx.transport,
                ctx.request_id,
                &format!(
                    "{} asked for more than {budget} secrets in {} s (via {}); further ones are refused until the window moves",
                    ctx.op.name,
                    sec.cfg.reveal_window_secs,
                    ctx.transport.as_str()
                ),
            )
            .await;
        }
        Err(CommandError::denied(format!(
            "reveal budget exhausted: more than {budget} secrets in {} s; try again later, or /operator suspend {} if this was not you",
            sec.cfg.reveal_window_secs, ctx.op.name
        )))
    }
}

/// Runs a parsed, authorised, approved command.
pub async fn execute(ctx: &Ctx<'_>, cmd: &Command) -> CommandResult {
    match cmd {
        Command::Help
        | Command::Whoami
        | Command::GetKeys(_)
        | Command::Health
        | Command::Audit { .. } => crate::command::info::execute(ctx, cmd).await,
        Command::Kv(c) => c.execute(ctx).await,
        Command::Transit(c) => c.execute(ctx).await,
        Command::Agent(c) => c.execute(ctx).await,
        Command::Panel(c) => c.execute(ctx).await,
        Command::Mtproto(c) => c.execute(ctx).await,
        Command::Approve { .. } | Command::Deny { .. } | Command::Pending => {
            crate::command::approvals::execute(ctx, cmd).await
        }
        Command::Unlock { .. } | Command::Lock | Command::Operator(_) => {
            crate::command::operator::execute(ctx, cmd).await
        }
    }
}
