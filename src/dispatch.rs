//! The dispatcher: every transport (console, Unix socket, Telegram) hands
//! `(operator, command text)` here and renders the [`Reply`] it gets back.
//! The pipeline, known nowhere else ([`App::dispatch`]):
//!
//! 1. parse against the table (no raw control character in a shown word);
//! 2. suspended? — one etcd read bounded by `security::SUSPENSION_WAIT`
//!    (2 s); unknown → only `/help`, `/whoami`, `/health` run (fail
//!    closed); a suspended admin on the socket may still `/unlock` and
//!    `/operator resume` itself (the host recovery path);
//! 3. role (`command::rules`);
//! 4. effects (`effect::classify`): a generic spelling that would reach a
//!    managed record is refused;
//! 5. step-up (`Command::step`, raised to *secret* for any effect; the
//!    unlock must apply on this transport);
//! 6. for a gated effect: arguments and ownership checked, the canonical
//!    line built (`command::prepare`), then the approval gate (a grant
//!    consumed, or a request filed);
//! 7. the reveal budget for a secret reply (not countable in time →
//!    refused);
//! 8. execute with the operator's child token (`Ctx::vault`); a read-only
//!    command runs while 2 and 7 are checked, minting and counting nothing
//!    until they clear (`Ctx::cleared`), its reply dropped if they refuse;
//! 9. escape what is shown (`text`), one audit record; each stage timed
//!    into `vaultgram_command_stage_seconds{stage}`.
//!
//! `/approve`, `/deny` and `/pending` drive the pipeline itself: an
//! approved command runs here as its requester. Unknown senders,
//! unparsable lines and role violations never reach Vault.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::approvals::{Approval, Approvals, Filing, HeldGrant};
use crate::audit::AuditLog;
use crate::command::{Command, GateFlags};
use crate::config::{Config, Operator};
use crate::context::{CommandError, CommandResult, Ctx, Reply, Services};
use crate::error::ErrorKind;
use crate::etcd::{Etcd, EtcdError};
use crate::records::audit::AuditRecord;
use crate::runtime::Runtime;
use crate::transport_kind::Transport;
use crate::vault::auth::TokenManager;
use crate::vault::token::OperatorTokens;
use crate::vault::VaultError;

/// Failures while starting the core.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// The command core: the services every command may use, and the
/// approval gate, which only the pipeline touches.
pub struct App {
    pub svc: Services,
    pub approvals: Arc<Approvals>,
    /// The audit trail itself (`svc.audit` is the same, as commands see
    /// it): the dispatcher records every command, transports flush it.
    pub audit: Arc<AuditLog>,
}

/// `app.cfg`, `app.audit`, …: the services, as every transport and tool
/// uses them.
impl std::ops::Deref for App {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.svc
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("broker", &self.broker).finish()
    }
}

/// How the sender stands to the suspension check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Active,
    /// Suspended, at the broker's host, with a command of the way back.
    HostRecovery,
}

/// What a *suspended* admin may still do at the broker's host (`ctl`,
/// where the kernel vouches for the Unix user): `/unlock` with their own
/// TOTP code, then `/operator resume` of themselves (and `/lock`). Nothing
/// else, and nothing over Telegram or the console.
fn host_recovery_command(ctx: &Ctx<'_>, cmd: &Command) -> bool {
    use crate::command::OperatorCommand;
    ctx.transport == Transport::Socket
        && ctx.op.role == crate::config::Role::Admin
        && match cmd {
            Command::Unlock { .. } | Command::Lock => true,
            Command::Operator(OperatorCommand::Resume { name }) => *name == ctx.op.name,
            _ => false,
        }
}

impl App {
    /// Logs in to Vault and connects to etcd.
    pub async fn start(cfg: Config) -> Result<Arc<App>, StartError> {
        let broker = TokenManager::login(&cfg.vault).await?;
        let etcd = Etcd::connect(&cfg.etcd).await?;
        let cfg = Arc::new(cfg);
        let approvals = Arc::new(Approvals::new(etcd.clone(), &cfg));
        let audit = Arc::new(AuditLog::new(etcd.clone(), &cfg));
        let svc = Services {
            tokens: OperatorTokens::new(broker.clone()),
            audit: audit.clone(),
            pending: approvals.clone(),
            security: crate::security::Security::new(
                etcd.clone(),
                &cfg.etcd.prefix,
                cfg.security.clone(),
                cfg.admin_names(),
            ),
            notifier: crate::notify::Notifier::new(etcd.clone(), &cfg.etcd.prefix),
            runtime: Runtime::default(),
            broker,
            etcd,
            cfg,
        };
        Ok(Arc::new(App {
            svc,
            approvals,
            audit,
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
        // Every record of the request carries this id; without the OS
        // random source there is none to give (and no token to mint).
        let rid = match crate::ids::random_hex::<6>() {
            Ok(r) => r,
            Err(e) => return op.map(|_| Err(CommandError::unavailable(e.to_string()))),
        };
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
        let parsed = Command::parse_with_gate_flags(text);
        crate::metrics::observe_stage("parse", parse_started);
        let (name, target, result) = match parsed {
            Err(e) => ("-".to_string(), None, Err(CommandError::from(e))),
            Ok((cmd, flags)) => {
                let ctx = Ctx::new(&self.svc, op, transport, &rid).with_line(text.trim());
                let r = self.run_gated(&ctx, &cmd, &flags).await;
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
    /// the budget are checked (etcd round trips that used to come first,
    /// measured in docs/PERFORMANCE.md); its reply is dropped
    /// unseen when either refuses, and it changes nothing that would need
    /// undoing.
    async fn run_gated(&self, ctx: &Ctx<'_>, cmd: &Command, flags: &GateFlags) -> CommandResult {
        if cmd.is_read_only() {
            // The read runs while the check is made; it mints no token and
            // counts no reveal until the check has cleared the operator.
            let (tx, rx) = tokio::sync::watch::channel(None);
            let rctx = Ctx::new(ctx.svc, ctx.op, ctx.transport, ctx.request_id)
                .with_line(ctx.line)
                .pending_clearance(rx);
            let check = async {
                let s = self.check_suspension(ctx, cmd).await;
                let _ = tx.send(Some(matches!(s, Ok(Standing::Active))));
                s
            };
            let (standing, result) =
                tokio::join!(check, self.authorize_and_run(&rctx, cmd, flags, true));
            standing?;
            return result;
        }
        match self.check_suspension(ctx, cmd).await? {
            Standing::Active => self.authorize_and_run(ctx, cmd, flags, false).await,
            Standing::HostRecovery => {
                let rctx = Ctx::new(ctx.svc, ctx.op, ctx.transport, ctx.request_id)
                    .with_line(ctx.line)
                    .in_host_recovery();
                self.authorize_and_run(&rctx, cmd, flags, false).await
            }
        }
    }

    /// A suspended operator gets nothing, on every replica and transport
    /// (from the watched view in memory, current within
    /// `suspensions::STALENESS_BOUND`, or else one bounded etcd read) — but
    /// for the host recovery path ([`host_recovery_command`]). When the
    /// state cannot be read within `security::SUSPENSION_WAIT`, only
    /// `/help`, `/whoami` and `/health` run: a command that reveals or
    /// changes anything is refused rather than run unchecked (and
    /// unaudited: the audit trail lives in the same etcd).
    async fn check_suspension(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
    ) -> Result<Standing, CommandError> {
        let suspension =
            crate::metrics::time_stage("suspension", self.security.suspension(&ctx.op.name)).await;
        match suspension {
            Ok(None) => Ok(Standing::Active),
            Ok(Some(_)) if host_recovery_command(ctx, cmd) => Ok(Standing::HostRecovery),
            Ok(Some(s)) => Err(CommandError::denied(format!(
                "{} is suspended (since {} by {}); an admin can /operator resume {}{}",
                ctx.op.name,
                crate::clock::rfc3339_millis(std::time::Duration::from_secs(s.since)),
                crate::text::escape_line(&s.by),
                ctx.op.name,
                if ctx.op.role == crate::config::Role::Admin {
                    format!(
                        ", or {0} at the broker's host: `/unlock CODE` typed into `vaultgram ctl -`, then `vaultgram ctl /operator resume {0}`",
                        ctx.op.name
                    )
                } else {
                    String::new()
                }
            ))),
            Err(e) if cmd.is_diagnostic() => {
                tracing::warn!(operator = %ctx.op.name, error = %e, "suspension state unknown; a diagnostic command runs");
                Ok(Standing::Active)
            }
            Err(e) => {
                tracing::warn!(operator = %ctx.op.name, error = %e, "suspension state unknown; command refused (fail closed)");
                Err(CommandError::unavailable(format!(
                    "etcd did not say within {} s whether {} is suspended ({e}); commands that reveal or change anything do not run without that check (/help, /whoami and /health do)",
                    crate::security::SUSPENSION_WAIT.as_secs(),
                    ctx.op.name
                )))
            }
        }
    }

    /// Authorization, then the budget and execution: one after the other,
    /// or side by side for a read-only command (`overlap`).
    async fn authorize_and_run(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
        flags: &GateFlags,
        overlap: bool,
    ) -> CommandResult {
        let authorize_started = std::time::Instant::now();
        let (recovery, grant) = self.authorize(ctx, cmd, flags).await?;
        crate::metrics::observe_stage("authorize", authorize_started);
        if recovery && !ctx.host_recovery {
            // An admin at the broker's host resumes without a second admin:
            // the command knows, and says so in its alert.
            let rctx = Ctx::new(ctx.svc, ctx.op, ctx.transport, ctx.request_id)
                .with_line(ctx.line)
                .in_host_recovery();
            return crate::metrics::time_stage("execute", self.execute(&rctx, cmd)).await;
        }
        let run = crate::metrics::time_stage("execute", self.execute(ctx, cmd));
        let result = self.budget_and_run(ctx, cmd, overlap, run).await;
        match grant {
            // An approval is spent only by a reply: a refusal (the budget)
            // or a failure (Vault) leaves it for the rest of its window.
            Some(g) if result.is_ok() => {
                self.approvals.spend(ctx, g).await?;
                result
            }
            _ => result,
        }
    }

    /// The reveal budget for a secret reply, then `run` (side by side for
    /// a read-only command, `overlap`).
    async fn budget_and_run(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
        overlap: bool,
        run: impl std::future::Future<Output = CommandResult>,
    ) -> CommandResult {
        if !cmd.reply_is_secret() {
            return run.await;
        }
        let budget = crate::metrics::time_stage("budget", async {
            // Counted only for a cleared operator (at once outside the
            // overlap): one refused anyway costs no etcd write.
            ctx.cleared().await?;
            self.check_budget(ctx).await
        });
        if overlap {
            let (counted, result) = tokio::join!(budget, run);
            counted?;
            return result;
        }
        budget.await?;
        run.await
    }

    /// Role, step-up, effects and the approval gate. `Ok((true, _))`: the
    /// command passes the gate on the host recovery path; `Some` grant:
    /// an earlier approval lets it through, to be spent by its reply.
    async fn authorize(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
        flags: &GateFlags,
    ) -> Result<(bool, Option<HeldGrant>), CommandError> {
        if !cmd.allowed_for(ctx.op.role) {
            return Err(CommandError::denied(format!(
                "/{} is not available to {} operators",
                cmd.name(),
                ctx.op.role
            )));
        }
        let effects = crate::effect::classify(cmd, &self.cfg.vault.kv_mount)?;
        // Whatever destroys or reveals (an effect of `approvals.required`)
        // needs step-up under `secrets` too, as a secret reply does.
        let step = match cmd.step() {
            crate::security::Step::Plain if !effects.is_empty() => crate::security::Step::Secret,
            s => s,
        };
        if self.security.needs_unlock(step)
            && self
                .security
                .unlocked(&ctx.op.name, ctx.transport)
                .await?
                .is_none()
        {
            return Err(CommandError::denied(format!(
                "locked: /{} needs step-up; send /unlock CODE with your TOTP code first (/lock ends it)",
                cmd.name()
            )));
        }
        let gated: Vec<crate::config::Effect> = effects
            .iter()
            .copied()
            .filter(|e| self.cfg.approvals.required.iter().any(|r| r == e.name()))
            .collect();
        if gated.is_empty() && !flags.is_empty() {
            return Err(CommandError::invalid(format!(
                "-reason and -break-glass are for commands that need approval; /{} does not",
                cmd.name()
            )));
        }
        if flags.code.is_some() && !flags.break_glass {
            return Err(CommandError::invalid(
                "-code=CODE goes with -break-glass (approvers give theirs with /approve ID CODE)",
            ));
        }
        if !gated.is_empty() {
            if self.host_resume(ctx, cmd).await? {
                return Ok((true, None));
            }
            // Validate, then gate: a request that could not run is never
            // filed, and an approver never spends a code on it. The
            // canonical line is what /pending shows and /approve runs.
            // Boxed: every group's preparation inlined in this future made
            // it too large for a worker's stack in debug builds.
            let prepared = Box::pin(crate::command::prepare(ctx, cmd)).await?;
            if flags.break_glass {
                Box::pin(self.approvals.break_glass(ctx, cmd, &prepared, flags)).await?;
                return Ok((false, None));
            }
            // Either a grant from an earlier approval lets it through, or a
            // pending request is created and the command stops.
            let filing = Filing {
                quorum: self.cfg.approvals.quorum_for(&gated),
                reason: flags.reason.as_deref(),
                effect: &prepared.effect,
            };
            let grant = self
                .approvals
                .gate(ctx, cmd, &prepared.line, &filing)
                .await?;
            return Ok((false, grant));
        }
        Ok((false, None))
    }

    /// The way back that a stolen Telegram account alone cannot use: at
    /// the broker's host (`ctl`: the kernel vouches for the Unix user,
    /// mapped to an admin) an admin who unlocked *there* with their own
    /// TOTP code resumes an operator at once, themselves included. Host
    /// access already holds the broker's own Vault credential, so this
    /// gives nobody more than they have; every admin is alerted.
    async fn host_resume(&self, ctx: &Ctx<'_>, cmd: &Command) -> Result<bool, CommandError> {
        let Command::Operator(crate::command::OperatorCommand::Resume { .. }) = cmd else {
            return Ok(false);
        };
        if ctx.transport != Transport::Socket || ctx.op.role != crate::config::Role::Admin {
            return Ok(false);
        }
        let unlocked = self
            .security
            .unlocked(&ctx.op.name, Transport::Socket)
            .await?
            .is_some_and(|u| u.via == Transport::Socket.as_str());
        if !unlocked && ctx.host_recovery {
            return Err(CommandError::denied(format!(
                "{} is suspended: at the broker's host, `/unlock CODE` (your own TOTP code) typed into `vaultgram ctl -` first, then `vaultgram ctl /operator resume NAME`",
                ctx.op.name
            )));
        }
        Ok(unlocked)
    }

    /// At most `security.reveal_budget` secret-bearing replies per operator
    /// per `reveal_window_secs` (attempts count: a reply is counted before
    /// it is produced). The first one over the budget raises an alert.
    async fn check_budget(&self, ctx: &Ctx<'_>) -> Result<(), CommandError> {
        let sec = &self.security;
        let wait = crate::security::WRITE_WAIT;
        let counted = tokio::time::timeout(wait, sec.count_reveal(&ctx.op.name))
            .await
            .unwrap_or_else(|_| {
                Err(crate::etcd::EtcdError::Unavailable(format!(
                    "no answer within {} s",
                    wait.as_secs()
                )))
            });
        let verdict = match counted {
            Ok(v) => v,
            // Fail closed: a secret that could not be counted is not shown.
            Err(e) => {
                tracing::warn!(operator = %ctx.op.name, error = %e, "reveal budget not counted (etcd); secret refused");
                return Err(CommandError::unavailable(format!(
                    "the reveal budget of {} could not be counted ({e}); no secret is shown without it",
                    ctx.op.name
                )));
            }
        };
        let budget = sec.cfg.reveal_budget;
        if verdict == crate::security::Reveal::Allowed {
            return Ok(());
        }
        if verdict == crate::security::Reveal::FirstOver {
            self.svc.alert(
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

    /// Runs a parsed, authorised, approved command. The approval commands
    /// are the pipeline's own: `/approve` runs the approved request here,
    /// with its requester's identity, and nowhere else.
    async fn execute(&self, ctx: &Ctx<'_>, cmd: &Command) -> CommandResult {
        match cmd {
            Command::Approve { id, code } => {
                match Box::pin(self.approvals.approve(ctx, id, code.0.expose_secret())).await? {
                    Approval::Granted(reply) | Approval::Counted(reply) => Ok(reply),
                    Approval::Run(run) => {
                        let requester = run.requester(ctx.cfg())?;
                        let rctx = Ctx::new(&self.svc, requester, ctx.transport, &run.request.id)
                            .with_line(&run.request.line);
                        // Approval commands are never held for approval, so
                        // the held command goes straight to its group.
                        let result = run.cmd.execute(&rctx).await;
                        self.approvals.ran(ctx, &run, result).await
                    }
                }
            }
            Command::Deny { id, reason } => self.approvals.deny(ctx, id, reason).await,
            Command::Pending => self.approvals.list(ctx).await,
            Command::Review { id, verdict, note } => {
                self.approvals.review(ctx, id, *verdict, note).await
            }
            other => other.execute(ctx).await,
        }
    }
}
