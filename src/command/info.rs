//! `/help`, `/whoami`, `/get_keys`, `/health`, `/audit`: who you are and
//! how things stand.

use secrecy::ExposeSecret;
use serde_json::json;

use super::args::{path_error, wrap_ttl, ListArgs, WrapArg};
use super::reply::{fmt_duration, wrapped_reply};
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::vault::kv::KvPath;

// ---------------------------------------------------------------------------
// /help
// ---------------------------------------------------------------------------

/// `/help`: `text` is the table's help for the operator's role (the table
/// renders it; this file does not import the table).
pub fn help(ctx: &Ctx<'_>, text: String) -> Reply {
    let usages: Vec<&str> = text
        .lines()
        .map(|l| l.split(" — ").next().unwrap_or(l))
        .collect();
    let data = json!({"role": ctx.op.role.as_str(), "commands": usages});
    Reply::text(text).with_data(data)
}

// ---------------------------------------------------------------------------
// /whoami
// ---------------------------------------------------------------------------

pub async fn whoami(ctx: &Ctx<'_>) -> Reply {
    let op = ctx.op;
    let mut lines = vec![
        format!("operator: {}", op.name),
        format!("role: {}", op.role),
    ];
    if let Some(agent) = &op.agent {
        lines.push(format!("agent: {agent}"));
    }
    let child = match ctx.vault().await {
        Ok(v) => v.lookup_self().await.map_err(CommandError::from),
        Err(e) => Err(e),
    };
    let vault = match &child {
        Ok(info) => {
            lines.push(format!("vault policies: {}", info.policies.join(", ")));
            lines.push(format!(
                "vault token: {}, TTL {} (a child token minted for you alone; re-minted on demand)",
                info.display_name,
                fmt_duration(info.ttl_secs)
            ));
            json!({
                "policies": info.policies,
                "ttl_secs": info.ttl_secs,
                "display_name": info.display_name,
            })
        }
        Err(e) => {
            lines.push(format!(
                "vault policies: unknown ({}: {})",
                e.kind, e.message
            ));
            json!({"error": {"kind": e.kind.as_str(), "message": e.message}})
        }
    };
    let b = ctx.svc.broker.status();
    let broker_ttl = b
        .ttl_remaining
        .map(|d| fmt_duration(d.as_secs()))
        .unwrap_or_else(|| "no TTL".into());
    lines.push(format!(
        "broker token: TTL {broker_ttl}, {}, {} renewals, {} re-logins (policies: {})",
        if b.renewable {
            "renewable"
        } else {
            "not renewable"
        },
        b.renewals,
        b.relogins,
        b.policies.join(", ")
    ));
    let data = json!({
        "operator": op.name,
        "role": op.role.as_str(),
        "agent": op.agent,
        "telegram_id": op.telegram_id,
        "vault": vault,
        "broker": {
            "ttl_secs": b.ttl_remaining.map(|d| d.as_secs()),
            "renewable": b.renewable,
            "renewals": b.renewals,
            "relogins": b.relogins,
            "failures": b.failures,
            "policies": b.policies,
        },
    });
    Reply::text(lines.join("\n")).with_data(data)
}

// ---------------------------------------------------------------------------
// /get_keys
// ---------------------------------------------------------------------------

pub async fn get_keys(ctx: &Ctx<'_>, wrap: &WrapArg) -> CommandResult {
    let cfg = ctx.cfg();
    let path = KvPath::new(&cfg.vault.kv_mount, &cfg.telegram.app_path).map_err(path_error)?;
    let ttl = wrap_ttl(ctx, wrap)?;
    let vault = ctx.vault().await?;
    if let Some(ttl) = ttl {
        // Wrapped by Vault: the values never pass through the broker.
        let w = vault.kv_get_wrapped(&path, None, ttl).await?;
        return Ok(wrapped_reply(&w, json!({"path": path.to_string()})));
    }
    let secret = vault.kv_get(&path, None).await?;
    let field = |name: &str| {
        secret.data.get(name).ok_or_else(|| {
            CommandError::not_found(format!(
                "{path} has no `{name}` field (put the app keys with: vault kv put {path} api_id=… api_hash=…)"
            ))
        })
    };
    let (id, hash) = (field("api_id")?, field("api_hash")?);
    let (id, hash) = (id.expose_secret(), hash.expose_secret());
    let mut text = String::with_capacity(id.len() + hash.len() + 20);
    text.push_str("API_ID: ");
    text.push_str(id);
    text.push_str("\nAPI_HASH: ");
    text.push_str(hash);
    Ok(Reply::secret(text).with_data(json!({
        "path": path.to_string(),
        "version": secret.version,
    })))
}

// ---------------------------------------------------------------------------
// /health
// ---------------------------------------------------------------------------

pub async fn health(ctx: &Ctx<'_>) -> Reply {
    let vault_client = ctx.svc.broker.current();
    let (vault, etcd) = tokio::join!(vault_client.health(), ctx.svc.etcd.status());
    let b = ctx.svc.broker.status();
    let broker_ttl = b
        .ttl_remaining
        .map(|d| fmt_duration(d.as_secs()))
        .unwrap_or_else(|| "no TTL".into());

    let (vault_ok, vault_line, vault_data) = match vault {
        Ok(h) => {
            let state = if !h.initialized {
                "not initialized"
            } else if h.sealed {
                "sealed"
            } else if h.standby {
                "unsealed, standby"
            } else {
                "unsealed, active"
            };
            let ok = h.initialized && !h.sealed;
            (
                ok,
                format!(
                    "vault: {} ({state}); broker token TTL {broker_ttl}, {} renewals, {} re-logins",
                    if ok { "ok" } else { "DOWN" },
                    b.renewals,
                    b.relogins
                ),
                json!({
                    "ok": ok,
                    "initialized": h.initialized,
                    "sealed": h.sealed,
                    "standby": h.standby,
                }),
            )
        }
        Err(e) => (
            false,
            format!("vault: DOWN ({e}); broker token TTL {broker_ttl}"),
            json!({"ok": false, "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
        ),
    };
    let mut vault_data = vault_data;
    vault_data["broker_token_ttl_secs"] = json!(b.ttl_remaining.map(|d| d.as_secs()));
    vault_data["broker_token_renewals"] = json!(b.renewals);
    vault_data["broker_token_relogins"] = json!(b.relogins);

    let (etcd_ok, etcd_line, etcd_data) = match etcd {
        Ok((members, leader)) if leader != 0 => (
            true,
            format!("etcd: ok ({members} members, leader {leader:x})"),
            json!({"ok": true, "members": members, "leader": format!("{leader:x}")}),
        ),
        Ok((members, _)) => (
            false,
            format!("etcd: DOWN ({members} members, no leader)"),
            json!({"ok": false, "members": members, "leader": null}),
        ),
        Err(e) => (
            false,
            format!("etcd: DOWN ({e})"),
            json!({"ok": false, "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
        ),
    };

    // The Telegram client runs in `vaultgram run`, on the election leader
    // only; `console` has neither.
    let rt = &ctx.svc.runtime;
    let (tg_line, tg_data) = match rt.elector.get() {
        None => (
            format!(
                "telegram: not running in this process ({})",
                ctx.transport.as_str()
            ),
            json!({"running": false}),
        ),
        Some(el) => {
            let lead = el.status();
            let tg = rt.telegram();
            let line = if lead.leading && tg.connected {
                let last = tg
                    .last_update
                    .map(|t| format!("{} s ago", crate::clock::unix_secs().saturating_sub(t)))
                    .unwrap_or_else(|| "none yet".into());
                format!(
                    "telegram: connected on this node (leader {}), last update {last}",
                    lead.node
                )
            } else if lead.leading {
                let down = tg
                    .down_since
                    .map(|t| {
                        format!(
                            " for {}",
                            fmt_duration(crate::clock::unix_secs().saturating_sub(t))
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "telegram: NOT connected on the leader{down} ({})",
                    tg.problem.as_deref().unwrap_or("starting")
                )
            } else {
                format!(
                    "telegram: this node follows; leader {}",
                    lead.leader.as_deref().unwrap_or("unknown")
                )
            };
            (
                line,
                json!({"running": tg.connected, "leader": lead, "client": tg}),
            )
        }
    };
    let ok = vault_ok && etcd_ok;
    let text = format!(
        "status: {}\n{vault_line}\n{etcd_line}\n{tg_line}",
        if ok { "ok" } else { "degraded" }
    );
    Reply::text(text).with_data(json!({
        "ok": ok,
        "vault": vault_data,
        "etcd": etcd_data,
        "telegram": tg_data,
        "transport": ctx.transport.as_str(),
    }))
}

/// `/audit` without N.
const AUDIT_DEFAULT_N: u16 = 20;
/// `/audit N` upper bound.
const AUDIT_MAX_N: u16 = 1000;
/// Records per `/audit` page: one Telegram message.
const AUDIT_PAGE: usize = 20;

/// `/audit [N]` (admins): the last N records (default 20, at most 1000), one page of 20 shown,
/// oldest first, one line each.
pub async fn audit(ctx: &Ctx<'_>, n: Option<u16>, page: Option<u32>) -> CommandResult {
    if ctx.op.role != Role::Admin {
        return Err(CommandError::denied("/audit is for admins"));
    }
    let n = n.unwrap_or(AUDIT_DEFAULT_N).clamp(1, AUDIT_MAX_N);
    let records = ctx.svc.audit.last(n).await?;
    // The text shows one page (page 1: the newest), oldest first within
    // it; `data` keeps all N for scripts.
    let paging = ListArgs { page, prefix: None };
    let mut shown = paging.paginate((0..records.len()).rev().collect(), AUDIT_PAGE)?;
    shown.items.reverse();
    let text = if records.is_empty() {
        "no audit records".to_string()
    } else {
        shown
            .items
            .iter()
            .map(|&i| records[i].render())
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(shown.reply(
        text,
        &format!("/audit {n}"),
        "records",
        serde_json::json!(records),
    ))
}
