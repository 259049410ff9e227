//! `/unlock`, `/lock` and `/operator …`: the step-up window and the
//! containment of a stolen account (`crate::security`).

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::{Command, SecretArg};
use crate::config::{Operator, Role};
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::security::Event;
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
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<String, CommandError> {
        match self {
            OperatorCommand::Resume { name } => {
                let op = operator(ctx, name)?;
                if ctx.svc.security.suspension(&op.name).await?.is_none() {
                    return Err(CommandError::invalid(format!(
                        "{} is not suspended",
                        op.name
                    )));
                }
                Ok(format!("/operator resume {}", op.name))
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
        .operators
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| CommandError::not_found(format!("no operator named {}", escape_line(name))))
}

fn when(unix: u64) -> String {
    crate::records::audit::rfc3339(std::time::Duration::from_secs(unix))
}

pub async fn execute(ctx: &Ctx<'_>, cmd: &Command) -> CommandResult {
    match cmd {
        Command::Unlock { code } => unlock(ctx, code).await,
        Command::Lock => {
            let was = ctx.svc.security.lock(&ctx.op.name).await?;
            Ok(Reply::text(if was {
                "locked: commands that need step-up are refused until /unlock CODE"
            } else {
                "not unlocked; nothing to lock"
            })
            .with_data(serde_json::json!({"unlocked": false})))
        }
        Command::Operator(OperatorCommand::Suspend { name, reason }) => {
            suspend(ctx, name, &reason.join(" ")).await
        }
        Command::Operator(OperatorCommand::Resume { name }) => resume(ctx, name).await,
        Command::Operator(OperatorCommand::List) => list(ctx).await,
        _ => Err(CommandError::invalid("not an operator command")),
    }
}

async fn unlock(ctx: &Ctx<'_>, code: &SecretArg) -> CommandResult {
    let sec = &ctx.svc.security;
    let Some(key) = ctx.op.totp_key.as_deref() else {
        return Err(CommandError::invalid(format!(
            "{} has no totp_key in the config; nothing to unlock with",
            ctx.op.name
        )));
    };
    // Vault's TOTP engine decides, with the broker's token; a replayed
    // code (Vault refuses it) counts as a wrong one.
    let valid = match ctx
        .svc
        .broker
        .current()
        .totp_validate(crate::vault::totp::MOUNT, key, code.0.expose_secret())
        .await
    {
        Ok(v) => v,
        Err(VaultError::Denied(_)) | Err(VaultError::Invalid(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if valid {
        let until = sec.unlock(&ctx.op.name).await?;
        return Ok(Reply::text(format!(
            "unlocked until {} ({} s); /lock ends it sooner",
            when(until),
            sec.cfg.unlock_ttl_secs
        ))
        .with_data(serde_json::json!({"unlocked": true, "until": until})));
    }
    let n = sec.add_failure(&ctx.op.name).await?;
    let max = sec.cfg.unlock_max_failures;
    if n >= max {
        sec.suspend(
            &ctx.op.name,
            "vaultgram",
            &format!("{n} wrong unlock codes in a row"),
        )
        .await?;
        contain(ctx, &ctx.op.name).await;
        ctx.svc.alert(
                        Event::AutoSuspend,
            &ctx.op.name,
            ctx.transport,
            ctx.request_id,
            &format!(
                "{} suspended after {n} wrong unlock codes in a row (via {}); a second admin must approve /operator resume {}",
                ctx.op.name,
                ctx.transport.as_str(),
                ctx.op.name
            ),
        )
        .await;
        return Err(CommandError::denied(format!(
            "wrong code; {n} in a row: {} is suspended. Ask an admin to /operator resume {}",
            ctx.op.name, ctx.op.name
        )));
    }
    ctx.svc
        .alert(
            Event::UnlockFailed,
            &ctx.op.name,
            ctx.transport,
            ctx.request_id,
            &format!(
                "wrong unlock code for {} ({n} of {max}, via {})",
                ctx.op.name,
                ctx.transport.as_str()
            ),
        )
        .await;
    Err(CommandError::denied(format!(
        "wrong code ({n} of {max} before suspension)"
    )))
}

/// What a suspension does beyond the record: every child token of the
/// operator revoked in Vault (from any replica's mint), this replica's
/// cache dropped, the operator's pending requests cancelled.
pub async fn contain(ctx: &Ctx<'_>, name: &str) {
    let app = ctx.svc;
    app.tokens.forget(name).await;
    let broker = app.broker.current();
    for accessor in app.security.take_untracked(name) {
        let _ = broker.revoke_accessor(&accessor).await;
    }
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

async fn suspend(ctx: &Ctx<'_>, name: &str, reason: &str) -> CommandResult {
    let target = operator(ctx, name)?;
    if ctx.op.role != Role::Admin && target.name != ctx.op.name {
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
    let reason: String = reason.chars().take(200).collect();
    let sec = &ctx.svc.security;
    let fresh = sec.suspend(&target.name, &ctx.op.name, &reason).await?;
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
        "{} is suspended{}: every replica refuses it, its Vault tokens are revoked; /operator resume {} needs a second admin",
        target.name,
        if fresh { "" } else { " (already)" },
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
    ctx.svc
        .alert(
            Event::Resume,
            &target.name,
            ctx.transport,
            ctx.request_id,
            &format!("{} resumed (requested by {})", target.name, ctx.op.name),
        )
        .await;
    Ok(Reply::text(format!("{} is active again", target.name))
        .with_data(serde_json::json!({"operator": target.name, "suspended": false})))
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
        let u = sec.unlocked_until(&op.name).await?;
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
            (None, Some(u)) => format!("active, unlocked until {}", when(u)),
            (None, None) => "active".to_string(),
        };
        lines.push(format!("{} ({}): {state}", op.name, op.role));
        data.push(serde_json::json!({
            "operator": op.name, "role": op.role.as_str(),
            "suspended": s.as_ref().map(|s| serde_json::json!({"since": s.since, "by": s.by, "reason": s.reason})),
            "unlocked_until": u,
        }));
    }
    Ok(Reply::text(lines.join("\n")).with_data(serde_json::json!({ "operators": data })))
}
