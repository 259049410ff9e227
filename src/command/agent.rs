//! `/agent …`: panel agents' API tokens (ValhallaBot-style: 32 random
//! bytes, urlsafe base64, stored with their SHA-256 for look-ups).

use std::collections::BTreeMap;

use base64::Engine as _;
use clap::Subcommand;
use secrecy::SecretString;
use serde_json::json;
use zeroize::Zeroizing;

use super::args::{kv_path, op_agent, quote, wrap_ttl, ListArgs, WrapArg};
use super::reply::{headed, list_or_empty, wrapped_reply};
use super::reply::{record_meta, record_state, Prepared};
use crate::clock::now_rfc3339;
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::records::agent::{self, check_id as check_agent_id, token_record};
use crate::records::{field, sha256_hex};
use crate::vault::VaultError;

#[derive(Debug, Clone, Subcommand)]
pub enum AgentCommand {
    /// Create an agent and its API token (shown once).
    #[command(override_usage = "/agent add ID")]
    Add { id: String },
    /// Issue a new API token for an agent; the old one stops working (needs approval; shown once to you).
    #[command(override_usage = "/agent token [-wrap-ttl=DURATION] ID")]
    Token {
        #[command(flatten)]
        wrap: WrapArg,
        id: String,
    },
    /// List agents, 100 per page (an agent sees itself; PREFIX: ids starting with it).
    #[command(override_usage = "/agent list [-page=N] [PREFIX]")]
    List(#[command(flatten)] ListArgs),
    /// Revoke an agent's token (needs approval).
    #[command(override_usage = "/agent revoke ID")]
    Revoke { id: String },
}

impl AgentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            AgentCommand::Add { .. } => "add",
            AgentCommand::Token { .. } => "token",
            AgentCommand::List(_) => "list",
            AgentCommand::Revoke { .. } => "revoke",
        }
    }

    pub fn target(&self) -> Option<String> {
        match self {
            AgentCommand::Add { id }
            | AgentCommand::Token { id, .. }
            | AgentCommand::Revoke { id } => Some(id.clone()),
            AgentCommand::List(_) => None,
        }
    }

    pub fn allowed_for_agent(&self) -> bool {
        super::rules::agent_may_use(&["agent", self.name()])
    }

    pub fn reply_is_secret(&self) -> bool {
        matches!(self, AgentCommand::Add { .. } | AgentCommand::Token { .. })
    }
}

impl AgentCommand {
    /// Runs the command with the operator's child token. Role rules were
    /// checked by the dispatcher; they are checked again here so that a
    /// call from elsewhere cannot skip them, and Vault's ACL is the
    /// boundary behind both.
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        if ctx.op.role != Role::Admin && !self.allowed_for_agent() {
            return Err(CommandError::denied(format!(
                "/agent {} is for admins",
                self.name()
            )));
        }
        match self {
            AgentCommand::Add { id } => add(ctx, id).await,
            AgentCommand::Token { wrap, id } => rotate(ctx, wrap, id).await,
            AgentCommand::List(args) => list(ctx, args).await,
            AgentCommand::Revoke { id } => revoke(ctx, id).await,
        }
    }
}

impl AgentCommand {
    /// `/agent revoke ID`, checked before a request is filed: a valid id
    /// with a record.
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<Prepared, CommandError> {
        match self {
            AgentCommand::Revoke { id } => {
                check_agent_id(id)?;
                let path = kv_path(ctx, &agent::path(id))?;
                let meta = record_meta(ctx, &path, || {
                    CommandError::not_found(format!("no agent {id}"))
                })
                .await?;
                Ok(Prepared {
                    line: format!("/agent revoke {id}"),
                    effect: format!("revokes agent {id}'s API token ({})", record_state(&meta)),
                })
            }
            // A new token ends the current one (effect `agent revoke`): the
            // agent must have a live record to rotate.
            AgentCommand::Token { wrap, id } => {
                check_agent_id(id)?;
                wrap_ttl(ctx, wrap)?;
                let path = kv_path(ctx, &agent::path(id))?;
                let meta = record_meta(ctx, &path, || {
                    CommandError::not_found(format!("no agent {id}; /agent add {id} creates it"))
                })
                .await?;
                let live = meta
                    .versions
                    .get(&meta.current_version)
                    .is_some_and(|v| !v.destroyed && !v.is_deleted());
                if !live {
                    return Err(CommandError::not_found(format!(
                        "agent {id} has no live token to rotate; /agent add {id} after a revoke"
                    )));
                }
                let wrap = match &wrap.wrap_ttl {
                    Some(t) => format!(" {}", quote(&format!("-wrap-ttl={t}"))),
                    None => String::new(),
                };
                Ok(Prepared {
                    line: format!("/agent token{wrap} {id}"),
                    effect: format!(
                        "replaces agent {id}'s API token, the old one stops working ({})",
                        record_state(&meta)
                    ),
                })
            }
            _ => Err(CommandError::invalid(format!(
                "/agent {} cannot wait for approval",
                self.name()
            ))),
        }
    }
}

/// A new API token: 32 random bytes, urlsafe base64 without padding (43
/// characters, as Python's `secrets.token_urlsafe(32)`).
fn new_token() -> Result<Zeroizing<String>, CommandError> {
    let bytes = crate::ids::random::<32>()?;
    Ok(Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]),
    ))
}

fn token_text(headline: &str, id: &str, token: &str) -> String {
    format!(
        "{headline}\nAPI token (shown once; store it now):\n{token}\nsha256: {}\nagent: {id}",
        sha256_hex(token)
    )
}

async fn add(ctx: &Ctx<'_>, id: &str) -> CommandResult {
    check_agent_id(id)?;
    let path = kv_path(ctx, &agent::path(id))?;
    let token = new_token()?;
    let digest = sha256_hex(&token);
    let wrap = wrap_ttl(ctx, &WrapArg::default())?;
    let vault = ctx.vault().await?;
    // Wrap before storing: if the write then fails, the wrapping token
    // (never shown) holds a token that was never valid.
    let wrapped = match wrap {
        Some(ttl) => Some(vault.wrap_data(&token_fields(id, &token), ttl).await?),
        None => None,
    };
    let record = token_record(
        &token,
        &[
            ("created_at", now_rfc3339()),
            ("created_by", ctx.op.name.clone()),
        ],
    );
    let version = vault
        .kv_put(&path, &record, Some(0))
        .await
        .map_err(|e| match e {
            VaultError::Conflict(_) => CommandError::conflict(format!(
                "agent {id} already exists; /agent token {id} issues a new token"
            )),
            other => other.into(),
        })?;
    let data = json!({"agent": id, "token_sha256": digest, "version": version});
    Ok(match wrapped {
        Some(w) => wrapped_reply(&w, data),
        None => {
            Reply::secret(token_text(&format!("agent {id} created."), id, &token)).with_data(data)
        }
    })
}

fn token_fields(id: &str, token: &str) -> BTreeMap<String, SecretString> {
    let mut m = BTreeMap::new();
    m.insert("agent".into(), SecretString::from(id.to_string()));
    m.insert("token".into(), SecretString::from(token.to_string()));
    m.insert("token_sha256".into(), SecretString::from(sha256_hex(token)));
    m
}

/// `/agent token ID`: a new token as a new version of the record (written
/// with check-and-set on the version read, so two rotations cannot both
/// win); the old token stays in the record's version history.
async fn rotate(ctx: &Ctx<'_>, wrap: &WrapArg, id: &str) -> CommandResult {
    check_agent_id(id)?;
    let path = kv_path(ctx, &agent::path(id))?;
    let wrap = wrap_ttl(ctx, wrap)?;
    let vault = ctx.vault().await?;
    let current = vault.kv_get(&path, None).await.map_err(|e| match e {
        VaultError::NotFound(_) => {
            CommandError::not_found(format!("no agent {id}; /agent add {id} creates it"))
        }
        other => other.into(),
    })?;
    let token = new_token()?;
    let digest = sha256_hex(&token);
    let wrapped = match wrap {
        Some(ttl) => Some(vault.wrap_data(&token_fields(id, &token), ttl).await?),
        None => None,
    };
    let mut extra = Vec::new();
    for k in ["created_at", "created_by"] {
        if let Some(v) = field(&current.data, k) {
            extra.push((k, v.to_string()));
        }
    }
    extra.push(("rotated_at", now_rfc3339()));
    extra.push(("rotated_by", ctx.op.name.clone()));
    let record = token_record(&token, &extra);
    let version = vault
        .kv_put(&path, &record, Some(current.version))
        .await
        .map_err(|e| match e {
            VaultError::Conflict(_) => CommandError::conflict(format!(
                "agent {id} changed while the token was issued; try again"
            )),
            other => other.into(),
        })?;
    let data = json!({
        "agent": id,
        "token_sha256": digest,
        "version": version,
        "previous_version": current.version,
    });
    let headline = format!(
        "agent {id}: new API token (version {version}; version {} stays in the history)",
        current.version
    );
    Ok(match wrapped {
        Some(w) => headed(&headline, wrapped_reply(&w, data)),
        None => Reply::secret(token_text(&headline, id, &token)).with_data(data),
    })
}

/// Admins: every agent id. An agent: its own record, as the first 12 hex
/// characters of the token's SHA-256 (never the token).
async fn list(ctx: &Ctx<'_>, args: &ListArgs) -> CommandResult {
    let vault = ctx.vault().await?;
    if ctx.op.role == Role::Admin {
        let dir = kv_path(ctx, &format!("{}/", agent::DIR))?;
        let mut ids: Vec<String> = list_or_empty(vault.kv_list(&dir).await)?
            .into_iter()
            .filter(|k| !k.ends_with('/') && args.matches(k))
            .collect();
        ids.sort();
        // 100 ids of at most 64 characters: within one Telegram message.
        let page = args.paginate(ids, 100)?;
        let text = if page.items.is_empty() {
            "no agents".to_string()
        } else {
            format!("agents ({}):\n{}", page.total, page.items.join("\n"))
        };
        let rows = json!(page.items);
        return Ok(page.reply(text, &args.command("/agent list"), "agents", rows));
    }
    let id = op_agent(ctx)?;
    let path = kv_path(ctx, &agent::path(id))?;
    match vault.kv_get(&path, None).await {
        Ok(rec) => {
            let digest = field(&rec.data, "token_sha256")
                .map(str::to_string)
                .or_else(|| field(&rec.data, "token").map(sha256_hex))
                .unwrap_or_default();
            let prefix: String = digest.chars().take(12).collect();
            let created = field(&rec.data, "rotated_at")
                .or_else(|| field(&rec.data, "created_at"))
                .unwrap_or(rec.created_time.as_str())
                .to_string();
            Ok(Reply::text(format!(
                "agent {id}: token sha256 {prefix}…, version {}, issued {created}",
                rec.version
            ))
            .with_data(json!({"agents": [{
                "agent": id,
                "token_sha256_prefix": prefix,
                "version": rec.version,
                "issued_at": created,
            }]})))
        }
        Err(VaultError::NotFound(_)) => Ok(Reply::text(format!(
            "agent {id}: no API token on record (an admin issues it with /agent add {id})"
        ))
        .with_data(json!({"agents": []}))),
        Err(e) => Err(e.into()),
    }
}

/// `/agent revoke ID` (approved by a second admin before this runs):
/// deletes the record's metadata, i.e. every version of the token for
/// good. A soft delete would leave the token readable by `undelete`, and a
/// destroy would leave an empty record that `/agent token` could silently
/// bring back to life; after a revoke the id is free for a fresh
/// `/agent add`. Who revoked it is in the audit trails, not in KV.
async fn revoke(ctx: &Ctx<'_>, id: &str) -> CommandResult {
    check_agent_id(id)?;
    let path = kv_path(ctx, &agent::path(id))?;
    let vault = ctx.vault().await?;
    let meta = vault.kv_metadata_get(&path).await.map_err(|e| match e {
        VaultError::NotFound(_) => CommandError::not_found(format!("no agent {id}")),
        other => other.into(),
    })?;
    vault.kv_metadata_delete(&path).await?;
    let versions = meta.versions.len();
    Ok(Reply::text(format!(
        "agent {id}: API token revoked ({versions} version(s) deleted for good)"
    ))
    .with_data(json!({"agent": id, "versions_deleted": versions})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_urlsafe_characters() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 43);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(*t, *new_token().unwrap());
    }
}
