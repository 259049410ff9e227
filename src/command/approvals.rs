//! `/approve`, `/deny`, `/pending`: the two-person rule. The logic (etcd
//! records, TOTP check, execution with the requester's identity, one-time
//! grants for secret replies) is in [`crate::approvals`].

use secrecy::ExposeSecret;

use super::Command;
use crate::dispatch::{CommandError, CommandResult, Ctx};

pub async fn execute(ctx: &Ctx<'_>, cmd: &Command) -> CommandResult {
    let approvals = &ctx.app.approvals;
    match cmd {
        Command::Approve { id, code } => approvals.approve(ctx, id, code.0.expose_secret()).await,
        Command::Deny { id } => approvals.deny(ctx, id).await,
        Command::Pending => approvals.list(ctx).await,
        other => Err(CommandError::invalid(format!(
            "/{} is not an approvals command",
            other.name()
        ))),
    }
}
