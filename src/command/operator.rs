//! `/unlock`, `/lock` and `/operator …`: the step-up window and the
//! containment of a stolen account (`crate::security`).

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::args::SecretArg;
use super::reply::Prepared;
use crate::config::{Operator, Role, UnlockScope};
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::security::{Attempt, Event, RECOVERY_ATTEMPTS};
use crate::text::escape_line;
use crate::vault::VaultError;

#[derive(Debug, Clone, Subcommand)]
pub enum OperatorCommand {
    /// Suspend an operator at once (yourself: the panic button).
    #[command(override_usage = "/operator suspend NAME [REASON…]")]
    Suspend {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        reason: Vec<String>,
    },
    /// End a suspension (a second admin approves).
    #[command(override_usage = "/operator resume NAME")]
    Resume { name: String },
    /// Every operator: active, suspended or unlocked.
    #[command(override_usage = "/operator list")]
    List,
}

impl OperatorCommand {
    pub fn name(&self) -> &'static str {
        match self {
            OperatorCommand::Suspend { .. } => "suspend",
            OperatorCommand::Resume { .. } => "resume",
            OperatorCommand::List => "list",
        }
    }

    pub fn target(&self) -> Option<String> {
        match self {
            OperatorCommand::Suspend { name, .. } | OperatorCommand::Resume { name } => {
                Some(name.clone())
            }
            OperatorCommand::List => None,
        }
    }

    /// Agents may suspend themselves (checked at execution), nothing else.
    pub fn allowed_for_agent(&self) -> bool {
        matches!(self, OperatorCommand::Suspend { .. })
    }

    /// `/operator resume NAME` waits for approval: checked and made
    /// canonical first.
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<Prepared, CommandError> {
        match self {
            OperatorCommand::Resume { name } => {
                let op = operator(ctx, name)?;
                let Some(s) = ctx.svc.security.suspension(&op.name).await? else {
                    return Err(CommandError::invalid(format!(
                        "{} is not suspended",
                        op.name
                    )));
                };
                Ok(Prepared {
                    line: format!("/operator resume {}", op.name),
                    effect: format!(
                        "resumes {}, suspended since {} by {}",
                        op.name,
                        when(s.since),
                        escape_line(&s.by)
                    ),
                })
            }
            _ => Err(CommandError::invalid(format!(
                "/operator {} cannot wait for approval",
                self.name()
            ))),
        }
    }
}

fn operator<'a>(ctx: &'a Ctx<'_>, name: &str) -> Result<&'a Operator, CommandError> {
    ctx.cfg()
        .operator_by_name(name)
        .ok_or_else(|| CommandError::not_found(format!("no operator named {}", escape_line(name))))
}

fn when(unix: u64) -> String {
    crate::clock::rfc3339_millis(std::time::Duration::from_secs(unix))
}

impl OperatorCommand {
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        match self {
            OperatorCommand::Suspend { name, reason } => {
                suspend(ctx, name, &reason.join(" ")).await
            }
            OperatorCommand::Resume { name } => resume(ctx, name).await,
            OperatorCommand::List => list(ctx).await,
        }
    }
}

/// `/lock`: the step-up window closes now.
pub async fn lock(ctx: &Ctx<'_>) -> CommandResult {
    let was = ctx.svc.security.lock(&ctx.op.name, ctx.transport).await?;
    Ok(Reply::text(if was {
        "locked: commands that need step-up are refused until /unlock CODE"
    } else {
        "not unlocked here; nothing to lock"
    })
    .with_data(serde_json::json!({"unlocked": false})))
}

/// Where an unlock applies, in words (the `/unlock` reply says it).
fn scope_words(ctx: &Ctx<'_>) -> String {
    match ctx.svc.security.cfg.unlock_scope {
        UnlockScope::Transport => format!("on this transport ({}) only", ctx.transport.as_str()),
        UnlockScope::All => "on every transport".to_string(),
    }
}

/// Asks Vault's TOTP engine about `code` (the operator's own key, with
/// the broker's token) after counting the attempt in etcd, so that no
/// more codes are ever checked than the limit allows, however many
/// arrive at once. `Ok(Ok(()))`: right; `Ok(Err(n))`: the `n`-th wrong
/// code in a row (already counted; see [`code_failed`]). A replayed code
/// (Vault refuses it) counts as a wrong one. `what` names the command.
pub async fn check_own_code(
    ctx: &Ctx<'_>,
    key: &str,
    code: &str,
    what: &str,
) -> Result<Result<(), u32>, CommandError> {
    let sec = &ctx.svc.security;
    let extra = if ctx.host_recovery {
        RECOVERY_ATTEMPTS
    } else {
        0
    };
    let n = match sec.begin_code_attempt(&ctx.op.name, extra).await? {
        Attempt::Allowed(n) => n,
        Attempt::TooMany(n) => {
            return Err(CommandError::denied(format!(
                "too many TOTP codes in a row for {} ({n}); {what} refused without checking the code. An admin can /operator resume {}",
                ctx.op.name, ctx.op.name
            )))
        }
    };
    let valid = match ctx
        .svc
        .broker
        .current()
        .totp_validate(crate::vault::totp::MOUNT, key, code)
        .await
    {
        Ok(v) => v,
        Err(VaultError::Denied(_)) | Err(VaultError::Invalid(_)) => false,
        // Not a verdict on the code: the attempt is not held against them.
        Err(e) => {
            let _ = sec.undo_code_attempt(&ctx.op.name).await;
            return Err(totp_error(e, &ctx.op.name, key));
        }
    };
    if valid {
        sec.clear_failures(&ctx.op.name).await?;
        return Ok(Ok(()));
    }
    Ok(Err(n))
}

/// Vault's answer about a TOTP key when it gave no verdict on the code,
/// as the operator should read it. The code itself is never repeated.
fn totp_error(e: VaultError, op: &str, key: &str) -> CommandError {
    match e {
        VaultError::NotFound(_) => CommandError::denied(format!(
            "no TOTP key `{key}` for {op} in Vault; a Vault operator creates it (vault write totp/keys/{key} generate=true …)"
        )),
        other => other.into(),
    }
}

/// The `n`-th wrong TOTP code in a row of this operator (`/unlock` or
/// `/approve`, `what`): an alert, and at `unlock_max_failures` the
/// operator is suspended (tokens revoked, requests cancelled). Returns
/// the operator's error.
pub async fn code_failed(ctx: &Ctx<'_>, n: u32, what: &str) -> CommandError {
    let sec = &ctx.svc.security;
    let max = sec.cfg.unlock_max_failures;
    let name = &ctx.op.name;
    if n >= max {
        let fresh = sec
            .suspend(name, "vaultgram", &format!("{n} wrong TOTP codes in a row"))
            .await;
        contain(ctx, name).await;
        if matches!(fresh, Ok(true)) {
            ctx.svc
                .alert(
                    Event::AutoSuspend,
                    name,
                    ctx.transport,
                    ctx.request_id,
                    &format!(
                        "{name} suspended after {n} wrong TOTP codes in a row (last: {what}, via {}); a second admin must approve /operator resume {name}",
                        ctx.transport.as_str()
                    ),
                )
                .await;
        }
        return CommandError::denied(format!(
            "wrong code; {n} in a row: {name} is suspended. Ask an admin to /operator resume {name}"
        ));
    }
    ctx.svc
        .alert(
            Event::UnlockFailed,
            name,
            ctx.transport,
            ctx.request_id,
            &format!(
                "wrong TOTP code for {name} in {what} ({n} of {max}, via {})",
                ctx.transport.as_str()
            ),
        )
        .await;
    CommandError::denied(format!("wrong code ({n} of {max} before suspension)"))
}

pub async fn unlock(ctx: &Ctx<'_>, code: &SecretArg) -> CommandResult {
    let sec = &ctx.svc.security;
    let Some(key) = ctx.op.totp_key.as_deref() else {
        return Err(CommandError::invalid(format!(
            "{} has no totp_key in the config; nothing to unlock with",
            ctx.op.name
        )));
    };
    if let Err(n) = check_own_code(ctx, key, code.0.expose_secret(), "/unlock").await? {
        return Err(code_failed(ctx, n, "/unlock").await);
    }
    let until = sec.unlock(&ctx.op.name, ctx.transport).await?;
    Ok(Reply::text(format!(
        "unlocked until {} ({} s) {}; /lock ends it sooner",
        when(until),
        sec.cfg.unlock_ttl_secs,
        scope_words(ctx)
    ))
    .with_data(serde_json::json!({
        "unlocked": true,
        "until": until,
        "scope": sec.cfg.unlock_scope.as_str(),
        "transport": ctx.transport.as_str(),
    })))
}

/// What a suspension does beyond the record: every child token of the
/// operator revoked in Vault (from any replica's mint), this replica's
/// cache dropped, the operator's pending requests cancelled.
pub async fn contain(ctx: &Ctx<'_>, name: &str) {
    let app = ctx.svc;
    app.tokens.forget(name).await;
    let broker = app.broker.current();
    match app.security.tokens(name).await {
        Ok(tokens) => {
            for (key, accessor) in tokens {
                match broker.revoke_accessor(&accessor).await {
                    Ok(()) => {
                        let _ = app.security.forget_token(&key).await;
                    }
                    Err(e) => {
                        tracing::warn!(operator = name, error = %e, "suspend: a child token was not revoked")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(operator = name, error = %e, "suspend: child tokens not listed"),
    }
    let cancelled = app.pending.cancel_all_of(name, "vaultgram").await;
    if cancelled > 0 {
        tracing::info!(
            operator = name,
            cancelled,
            "suspend: pending requests cancelled"
        );
    }
}

/// A break-glass run reviewed `bad` suspends its author exactly as
/// `/operator suspend NAME REASON` by the reviewer would (the reviewer's
/// own step-up included).
pub async fn suspend_by_review(ctx: &Ctx<'_>, name: &str, reason: &str) -> CommandResult {
    suspend(ctx, name, reason).await
}

async fn suspend(ctx: &Ctx<'_>, name: &str, reason: &str) -> CommandResult {
    let target = operator(ctx, name)?;
    let own = target.name == ctx.op.name;
    if !own && ctx.op.role != Role::Admin {
        return Err(CommandError::denied(
            "agents may suspend only themselves (the panic button)",
        ));
    }
    if let Some(c) = crate::text::find_forbidden(reason) {
        return Err(CommandError::invalid(format!(
            "the reason contains a control or invisible character (U+{:04X})",
            c as u32
        )));
    }
    let sec = &ctx.svc.security;
    // Yourself: the panic button, always free. Someone else: only with
    // your own second factor, so that a stolen chat account alone cannot
    // lock the defenders out.
    if !own && sec.unlocked(&ctx.op.name, ctx.transport).await?.is_none() {
        return Err(CommandError::denied(format!(
            "suspending another operator needs your own step-up first: /unlock CODE (your TOTP code) {}, then /operator suspend {}; suspending yourself needs nothing",
            match sec.cfg.unlock_scope {
                UnlockScope::Transport => format!("on this transport ({})", ctx.transport.as_str()),
                UnlockScope::All => "on any transport".to_string(),
            },
            target.name
        )));
    }
    let reason: String = reason.chars().take(200).collect();
    let fresh = if own {
        sec.suspend(&target.name, &ctx.op.name, &reason).await?
    } else {
        match sec
            .suspend_other(&target.name, &ctx.op.name, &reason)
            .await?
        {
            Some(fresh) => fresh,
            None => {
                return Err(CommandError::denied(format!(
                    "{} is suspended itself meanwhile; {} was not suspended",
                    ctx.op.name, target.name
                )))
            }
        }
    };
    // Contain even when it was suspended already: a token minted in the
    // meantime is revoked too.
    contain(ctx, &target.name).await;
    if fresh {
        ctx.svc
            .alert(
                Event::Suspend,
                &target.name,
                ctx.transport,
                ctx.request_id,
                &format!(
                    "{} suspended by {} (via {}){}",
                    target.name,
                    ctx.op.name,
                    ctx.transport.as_str(),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
            )
            .await;
    }
    Ok(Reply::text(format!(
        "{} is suspended{}: every replica refuses it, its Vault tokens are revoked; /operator resume {} needs a second admin (or an admin at the broker's host: `/unlock CODE` typed into `vaultgram ctl -`, then `vaultgram ctl /operator resume {}`)",
        target.name,
        if fresh { "" } else { " (already)" },
        target.name,
        target.name
    ))
    .with_data(serde_json::json!({"operator": target.name, "suspended": true})))
}

async fn resume(ctx: &Ctx<'_>, name: &str) -> CommandResult {
    let target = operator(ctx, name)?;
    let sec = &ctx.svc.security;
    if !sec.resume(&target.name).await? {
        return Err(CommandError::invalid(format!(
            "{} is not suspended",
            target.name
        )));
    }
    let how = if ctx.host_recovery {
        format!(
            "at once by {} at the broker's host (ctl, with their own TOTP code), without a second admin",
            ctx.op.name
        )
    } else {
        format!("requested by {}", ctx.op.name)
    };
    ctx.svc
        .alert(
            Event::Resume,
            &target.name,
            ctx.transport,
            ctx.request_id,
            &format!("{} resumed ({how})", target.name),
        )
        .await;
    Ok(Reply::text(format!("{} is active again", target.name)).with_data(
        serde_json::json!({"operator": target.name, "suspended": false, "host_recovery": ctx.host_recovery}),
    ))
}

async fn list(ctx: &Ctx<'_>) -> CommandResult {
    if ctx.op.role != Role::Admin {
        return Err(CommandError::denied("/operator list is for admins"));
    }
    let sec = &ctx.svc.security;
    let mut lines = Vec::new();
    let mut data = Vec::new();
    for op in &ctx.cfg().operators {
        let s = sec.suspension(&op.name).await?;
        let unlocks = sec.unlocks(&op.name).await?;
        let u = unlocks.iter().map(|u| u.until).max();
        let via: Vec<&str> = unlocks.iter().map(|u| u.via.as_str()).collect();
        let state = match (&s, u) {
            (Some(s), _) => format!(
                "suspended since {} by {}{}",
                when(s.since),
                escape_line(&s.by),
                if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", escape_line(&s.reason))
                }
            ),
            (None, Some(u)) => format!(
                "active, unlocked until {} (via {})",
                when(u),
                via.join(", ")
            ),
            (None, None) => "active".to_string(),
        };
        lines.push(format!("{} ({}): {state}", op.name, op.role));
        data.push(serde_json::json!({
            "operator": op.name, "role": op.role.as_str(),
            "suspended": s.as_ref().map(|s| serde_json::json!({"since": s.since, "by": s.by, "reason": s.reason})),
            "unlocked_until": u,
            "unlocked_via": via,
        }));
    }
    Ok(Reply::text(lines.join("\n")).with_data(serde_json::json!({ "operators": data })))
}
