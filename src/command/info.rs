//! `/help`, `/whoami`, `/get_keys`, `/health`: who you are and how things stand.
//!
//! Also the reply helpers the command groups share ([`table`],
//! [`fmt_duration`], [`wrap_ttl`], [`wrapped_reply`]): replies are modelled
//! on the Vault CLI's output, and every reply that carries a secret can be
//! a single-use response-wrapping token instead (`-wrap-ttl`, or
//! `telegram.wrap_ttl` for the operator's role).

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{Command, WrapArg};
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::vault::kv::{KvPath, KvPathError};
use crate::vault::wrap::{WrapTtl, Wrapped};
use crate::vault::VaultError;

/// Runs `/help`, `/whoami`, `/get_keys`, `/health` and `/audit`.
pub async fn execute(ctx: &Ctx<'_>, cmd: &Command) -> CommandResult {
    match cmd {
        Command::Help => Ok(help(ctx)),
        Command::Whoami => Ok(whoami(ctx).await),
        Command::GetKeys(wrap) => get_keys(ctx, wrap).await,
        Command::Health => Ok(health(ctx).await),
        // The audit trail's own module reads it (admins only, by role).
        Command::Audit { n, page } => audit(ctx, *n, *page).await,
        other => Err(CommandError::invalid(format!(
            "/{} is not handled here",
            other.name()
        ))),
    }
}

// ---------------------------------------------------------------------------
// /help
// ---------------------------------------------------------------------------

fn help(ctx: &Ctx<'_>) -> Reply {
    let text = super::help(ctx.op.role);
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

async fn whoami(ctx: &Ctx<'_>) -> Reply {
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

async fn get_keys(ctx: &Ctx<'_>, wrap: &WrapArg) -> CommandResult {
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

async fn health(ctx: &Ctx<'_>) -> Reply {
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
                    .map(|t| format!("{} s ago", crate::etcd::unix_secs().saturating_sub(t)))
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
                            fmt_duration(crate::etcd::unix_secs().saturating_sub(t))
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

// ---------------------------------------------------------------------------
// Shared reply helpers
// ---------------------------------------------------------------------------

/// A refused KV path as a command error (`invalid`).
pub fn path_error(e: KvPathError) -> CommandError {
    CommandError::from(VaultError::from(e))
}

/// The response-wrapping TTL for a reply that carries a secret: the
/// operator's `-wrap-ttl`, else `telegram.wrap_ttl` for their role (which
/// makes wrapping the default for that role; a configured TTL above the
/// 24 h a wrapping token may live is capped at 24 h), else none.
pub fn wrap_ttl(ctx: &Ctx<'_>, arg: &WrapArg) -> Result<Option<WrapTtl>, CommandError> {
    if let Some(s) = &arg.wrap_ttl {
        return WrapTtl::parse(s)
            .map(Some)
            .map_err(|e| CommandError::invalid(e.to_string()));
    }
    match ctx.cfg().telegram.wrap_ttl_for(ctx.op.role) {
        None => Ok(None),
        Some(d) => {
            let secs = d.as_secs().clamp(WrapTtl::MIN_SECS, WrapTtl::MAX_SECS);
            WrapTtl::from_secs(secs).map(Some).map_err(|_| {
                CommandError::invalid(format!(
                    "config key `telegram.wrap_ttl.{}`: not a usable wrap TTL",
                    ctx.op.role
                ))
            })
        }
    }
}

/// The reply for a wrapped secret, as `vault … -wrap-ttl` prints it. It is
/// still a secret reply (the token is a bearer credential for the value);
/// `data` gets the TTL, accessor and creation path, never the token.
pub fn wrapped_reply(w: &Wrapped, data: Value) -> Reply {
    let token = w.token.expose_secret();
    let ttl = fmt_duration(w.ttl_secs);
    let rows = [
        ("wrapping_token: ", token),
        ("wrapping_token_ttl: ", ttl.as_str()),
        ("wrapping_token_creation_time: ", w.creation_time.as_str()),
        ("wrapping_token_creation_path: ", w.creation_path.as_str()),
        ("wrapping_accessor: ", w.accessor.as_str()),
        ("unwrap with: vault unwrap ", token),
    ];
    let len: usize = rows.iter().map(|(k, v)| k.len() + v.len() + 1).sum();
    let mut text = String::with_capacity(len);
    for (i, (k, v)) in rows.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(k);
        text.push_str(v);
    }
    let mut data = match data {
        Value::Object(m) => Value::Object(m),
        _ => json!({}),
    };
    data["wrapped"] = json!(true);
    data["wrapping_token_ttl"] = json!(w.ttl_secs);
    data["wrapping_token_creation_path"] = json!(w.creation_path);
    data["wrapping_accessor"] = json!(w.accessor);
    Reply::secret(text).with_data(data)
}

/// A two-column table as the Vault CLI prints it:
///
/// ```text
/// Key         Value
/// ---         -----
/// api_hash    …
/// ```
///
/// Built into one buffer of the exact size (no reallocation leaves a copy
/// of a value behind) that is zeroed when dropped.
pub fn table(rows: &[(&str, &str)]) -> Zeroizing<String> {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(3)
        + 4;
    let pad = |k: &str| width - k.chars().count().min(width);
    let header = [("Key", "Value"), ("---", "-----")];
    let all = header.iter().chain(rows.iter());
    // Every line ends with '\n' but the last (the header is always there).
    let len: usize = all
        .clone()
        .map(|(k, v)| k.len() + pad(k) + v.len() + 1)
        .sum::<usize>()
        - 1;
    let mut out = Zeroizing::new(String::with_capacity(len));
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(k);
        out.extend(std::iter::repeat_n(' ', pad(k)));
        out.push_str(v);
    }
    out
}

/// Moves the text out of a zeroizing buffer (no copy) into a [`Reply`],
/// which zeroes it in turn.
pub fn take(mut text: Zeroizing<String>) -> String {
    std::mem::take(&mut *text)
}

/// Concatenates parts into one exactly-sized buffer (see [`table`]).
pub fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// A duration as Go (and so the Vault CLI) prints it: `45s`, `4m59s`, `1h0m0s`.
pub fn fmt_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// `/audit` without N.
const AUDIT_DEFAULT_N: u16 = 20;
/// `/audit N` upper bound.
const AUDIT_MAX_N: u16 = 1000;
/// Records per `/audit` page: one Telegram message.
const AUDIT_PAGE: usize = 20;

/// `/audit [N]` (admins): the last N records (default 20, at most 1000), one page of 20 shown,
/// oldest first, one line each.
async fn audit(ctx: &Ctx<'_>, n: Option<u16>, page: Option<u32>) -> CommandResult {
    if ctx.op.role != Role::Admin {
        return Err(CommandError::denied("/audit is for admins"));
    }
    let n = n.unwrap_or(AUDIT_DEFAULT_N).clamp(1, AUDIT_MAX_N);
    let records = ctx.svc.audit.last(n).await?;
    // The text shows one page (page 1: the newest), oldest first within
    // it; `data` keeps all N for scripts.
    let paging = super::ListArgs { page, prefix: None };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(fmt_duration(45), "45s");
        assert_eq!(fmt_duration(299), "4m59s");
        assert_eq!(fmt_duration(3600), "1h0m0s");
        assert_eq!(fmt_duration(86399), "23h59m59s");
    }

    #[test]
    fn tables_align_like_the_vault_cli() {
        let t = table(&[("api_hash", "abc"), ("id", "1")]);
        assert_eq!(
            t.as_str(),
            "Key         Value\n---         -----\napi_hash    abc\nid          1"
        );
        assert_eq!(t.len(), t.capacity(), "exactly sized");
        assert_eq!(table(&[]).as_str(), "Key    Value\n---    -----");
        let u = table(&[("ü", "x")]);
        assert_eq!(u.as_str(), "Key    Value\n---    -----\nü      x");
    }

    #[test]
    fn wrapped_reply_is_secret_and_data_has_no_token() {
        let w = Wrapped {
            token: secrecy::SecretString::from("hvs.TESTTOKEN"),
            accessor: "acc".into(),
            ttl_secs: 300,
            creation_time: "2026-01-01T00:00:00Z".into(),
            creation_path: "secret/data/x".into(),
        };
        let r = wrapped_reply(&w, json!({"path": "secret/x"}));
        assert!(r.secret);
        assert!(r.as_str().starts_with("wrapping_token: hvs.TESTTOKEN\n"));
        assert!(r.as_str().contains("\nwrapping_token_ttl: 5m0s\n"));
        assert!(r
            .as_str()
            .ends_with("\nunwrap with: vault unwrap hvs.TESTTOKEN"));
        assert!(!r.data.to_string().contains("TESTTOKEN"));
        assert_eq!(r.data["path"], "secret/x");
        assert_eq!(r.data["wrapping_token_ttl"], 300);
        assert!(!format!("{r:?}").contains("TESTTOKEN"));
    }
}
