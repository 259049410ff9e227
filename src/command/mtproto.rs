//! `/mtproto …`: per-user MTProto proxy secrets (vpnbot-style: 16 random
//! bytes, hex), with t.me/proxy links.

use std::collections::BTreeMap;

use clap::Subcommand;
use secrecy::SecretString;
use serde_json::json;
use zeroize::Zeroizing;

use super::args::{kv_path, op_agent, wrap_ttl, ListArgs, WrapArg};
use super::reply::{headed, list_or_empty, wrapped_reply};
use super::reply::{record_meta, record_state, Prepared};
use crate::clock::now_rfc3339;
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::ids::{hex, random};
use crate::records::agent::{check_id as check_agent_id, RESERVED_OWNER};
use crate::records::field;
use crate::records::mtproto::{self, fingerprint};
use crate::vault::kv::KvData;
use crate::vault::{Vault, VaultError};

#[derive(Debug, Clone, Subcommand)]
pub enum MtprotoCommand {
    /// Issue a secret for a user, with its proxy links.
    #[command(override_usage = "/mtproto issue [-wrap-ttl=DURATION] USER")]
    Issue {
        #[command(flatten)]
        wrap: WrapArg,
        user: String,
    },
    /// Show a user's secret and links.
    #[command(override_usage = "/mtproto show [-wrap-ttl=DURATION] USER")]
    Show {
        #[command(flatten)]
        wrap: WrapArg,
        user: String,
    },
    /// Revoke a user's secret (needs approval).
    #[command(override_usage = "/mtproto revoke USER")]
    Revoke { user: String },
    /// List users with a secret, 50 per page (PREFIX: names starting with it).
    #[command(override_usage = "/mtproto list [-page=N] [PREFIX]")]
    List(#[command(flatten)] ListArgs),
}

impl MtprotoCommand {
    pub fn name(&self) -> &'static str {
        match self {
            MtprotoCommand::Issue { .. } => "issue",
            MtprotoCommand::Show { .. } => "show",
            MtprotoCommand::Revoke { .. } => "revoke",
            MtprotoCommand::List(_) => "list",
        }
    }

    pub fn target(&self) -> Option<String> {
        match self {
            MtprotoCommand::Issue { user, .. }
            | MtprotoCommand::Show { user, .. }
            | MtprotoCommand::Revoke { user } => Some(user.clone()),
            MtprotoCommand::List(_) => None,
        }
    }

    pub fn reply_is_secret(&self) -> bool {
        matches!(
            self,
            MtprotoCommand::Issue { .. } | MtprotoCommand::Show { .. }
        )
    }
}

/// Whose secret a command is about: `USER` (the operator's own: its agent,
/// or `admin`), or `OWNER/USER` (admins: anyone's; agents: only their own).
struct Target {
    owner: String,
    user: String,
}

impl Target {
    fn shown(&self) -> String {
        format!("{}/{}", self.owner, self.user)
    }
}

/// `[A-Za-z0-9_-]{1,64}`: a Telegram user id or a vpnbot user name.
fn check_user(user: &str) -> Result<(), CommandError> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CommandError::invalid(
            "invalid user: 1-64 of A-Z, a-z, 0-9, '_', '-' (or OWNER/USER)",
        ))
    }
}

/// The operator's own owner id.
fn own_owner(ctx: &Ctx<'_>) -> Result<String, CommandError> {
    match ctx.op.role {
        Role::Admin => Ok(RESERVED_OWNER.to_string()),
        Role::Agent => Ok(op_agent(ctx)?.to_string()),
    }
}

fn target(ctx: &Ctx<'_>, arg: &str) -> Result<Target, CommandError> {
    let own = own_owner(ctx)?;
    let (owner, user) = match arg.split_once('/') {
        None => (own.clone(), arg),
        Some((owner, user)) => {
            if owner != RESERVED_OWNER {
                check_agent_id(owner).map_err(|_| {
                    CommandError::invalid("invalid owner: an agent id or `admin` (OWNER/USER)")
                })?;
            }
            (owner.to_string(), user)
        }
    };
    check_user(user)?;
    if ctx.op.role == Role::Agent && owner != own {
        return Err(CommandError::denied(format!(
            "agent {own} may only use its own users' MTProto secrets (mtproto/{own}/…)"
        )));
    }
    Ok(Target {
        owner,
        user: user.to_string(),
    })
}

/// `https://t.me/proxy?…`: plain, and with the `dd` (random padding) prefix.
fn links(ctx: &Ctx<'_>, secret: &str) -> (String, String) {
    let t = &ctx.cfg().telegram;
    let base = format!(
        "https://t.me/proxy?server={}&port={}&secret=",
        t.mtproto_proxy_host, t.mtproto_proxy_port
    );
    (format!("{base}{secret}"), format!("{base}dd{secret}"))
}

fn not_found(t: &Target) -> CommandError {
    CommandError::not_found(format!(
        "no MTProto secret for {}; /mtproto issue {} creates one",
        t.shown(),
        t.user
    ))
}

/// The reply of issue and show: the secret and both links (a secret
/// reply), or a wrapping token holding them.
async fn secret_reply(
    ctx: &Ctx<'_>,
    vault: &Vault,
    t: &Target,
    secret: &str,
    fp: &str,
    headline: &str,
    ttl: Option<crate::vault::wrap::WrapTtl>,
) -> CommandResult {
    let (plain, dd) = links(ctx, secret);
    let tg = &ctx.cfg().telegram;
    let data = json!({
        "owner": t.owner,
        "user": t.user,
        "fingerprint": fp,
        "server": tg.mtproto_proxy_host,
        "port": tg.mtproto_proxy_port,
    });
    if let Some(ttl) = ttl {
        let mut m: BTreeMap<String, SecretString> = BTreeMap::new();
        for (k, v) in [
            ("owner", t.owner.as_str()),
            ("user", t.user.as_str()),
            ("secret", secret),
            ("fingerprint", fp),
            ("link", plain.as_str()),
            ("link_dd", dd.as_str()),
        ] {
            m.insert(k.into(), SecretString::from(v.to_string()));
        }
        let w = vault.wrap_data(&m, ttl).await?;
        return Ok(headed(headline, wrapped_reply(&w, data)));
    }
    let text = Zeroizing::new(format!(
        "{headline}\nsecret: {secret}\nfingerprint: {fp}\n{plain}\n{dd}"
    ));
    Ok(Reply::secret(text.as_str()).with_data(data))
}

impl MtprotoCommand {
    /// Runs the command with the operator's child token: an agent's policy
    /// covers `mtproto/<agent>/*` only, an admin's the whole tree.
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        match self {
            MtprotoCommand::Issue { wrap, user } => issue(ctx, wrap, user).await,
            MtprotoCommand::Show { wrap, user } => show(ctx, wrap, user).await,
            MtprotoCommand::Revoke { user } => revoke(ctx, user).await,
            MtprotoCommand::List(args) => list(ctx, args).await,
        }
    }
}

impl MtprotoCommand {
    /// `/mtproto revoke USER`, checked before a request is filed: the user
    /// is the requester's to revoke (an agent: its own users) and has a
    /// live secret. The canonical line names the owner explicitly.
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<Prepared, CommandError> {
        match self {
            MtprotoCommand::Revoke { user } => {
                let t = target(ctx, user)?;
                let path = kv_path(ctx, &mtproto::path(&t.owner, &t.user))?;
                let meta = record_meta(ctx, &path, || not_found(&t)).await?;
                let live = meta
                    .versions
                    .values()
                    .any(|v| !v.destroyed && !v.is_deleted());
                if !live {
                    return Err(CommandError::not_found(format!(
                        "the MTProto secret of {} is already revoked",
                        t.shown()
                    )));
                }
                Ok(Prepared {
                    line: format!("/mtproto revoke {}", t.shown()),
                    effect: format!(
                        "revokes the MTProto secret of {} ({})",
                        t.shown(),
                        record_state(&meta)
                    ),
                })
            }
            _ => Err(CommandError::invalid(format!(
                "/mtproto {} cannot wait for approval",
                self.name()
            ))),
        }
    }
}

/// `/mtproto issue USER`: 16 random bytes as 32 hex characters, stored with
/// check-and-set 0 (a live secret is never replaced: use show). A secret
/// an agent revoked (soft-deleted) is replaced by a new version.
async fn issue(ctx: &Ctx<'_>, wrap: &WrapArg, arg: &str) -> CommandResult {
    let t = target(ctx, arg)?;
    let own = own_owner(ctx)?;
    if t.owner != own {
        return Err(CommandError::invalid(format!(
            "secrets are issued under their issuer: /mtproto issue {} files it under {own}/",
            t.user
        )));
    }
    let ttl = wrap_ttl(ctx, wrap)?;
    let path = kv_path(ctx, &mtproto::path(&t.owner, &t.user))?;
    let vault = ctx.vault().await?;
    let cas = match vault.kv_metadata_get(&path).await {
        Err(VaultError::NotFound(_)) => 0,
        Ok(m) => {
            let live = m
                .versions
                .get(&m.current_version)
                .is_some_and(|v| !v.destroyed && !v.is_deleted());
            if live {
                return Err(exists(&t));
            }
            m.current_version
        }
        Err(e) => return Err(e.into()),
    };
    let bytes = random::<16>()?;
    let secret = Zeroizing::new(hex(&bytes[..]));
    let fp = fingerprint(&secret);
    let mut rec = KvData::new();
    for (k, v) in [
        ("secret", secret.as_str()),
        ("fingerprint", fp.as_str()),
        ("owner", t.owner.as_str()),
        ("issued_by", ctx.op.name.as_str()),
    ] {
        rec.insert(k.into(), SecretString::from(v.to_string()));
    }
    rec.insert("issued_at".into(), SecretString::from(now_rfc3339()));
    vault
        .kv_put(&path, &rec, Some(cas))
        .await
        .map_err(|e| match e {
            VaultError::Conflict(_) => exists(&t),
            other => other.into(),
        })?;
    // Stored before it is wrapped (unlike a new agent token): if wrapping
    // fails, `/mtproto show` still gives it.
    let headline = format!("MTProto secret issued for {}", t.shown());
    secret_reply(ctx, &vault, &t, &secret, &fp, &headline, ttl).await
}

fn exists(t: &Target) -> CommandError {
    CommandError::conflict(format!(
        "{} already has an MTProto secret; /mtproto show {} shows it",
        t.shown(),
        t.user
    ))
}

async fn show(ctx: &Ctx<'_>, wrap: &WrapArg, arg: &str) -> CommandResult {
    let t = target(ctx, arg)?;
    let ttl = wrap_ttl(ctx, wrap)?;
    let path = kv_path(ctx, &mtproto::path(&t.owner, &t.user))?;
    let vault = ctx.vault().await?;
    let rec = vault.kv_get(&path, None).await.map_err(|e| match e {
        VaultError::NotFound(_) => not_found(&t),
        other => other.into(),
    })?;
    let Some(secret) = field(&rec.data, "secret") else {
        return Err(CommandError::not_found(format!(
            "the record of {} holds no secret",
            t.shown()
        )));
    };
    let fp = field(&rec.data, "fingerprint")
        .map(str::to_string)
        .unwrap_or_else(|| fingerprint(secret));
    let headline = format!("MTProto secret of {}", t.shown());
    secret_reply(ctx, &vault, &t, secret, &fp, &headline, ttl).await
}

/// `/mtproto revoke USER` (approved by a second admin before this runs).
/// Admins delete the record with its history (metadata delete). An agent's
/// policy has no metadata delete (permanent removal is an admin's job), so
/// an agent's revoke soft-deletes every version: the secret can no longer
/// be read, shown or exported, an admin can still purge it, and issuing
/// for the user again writes a new version.
async fn revoke(ctx: &Ctx<'_>, arg: &str) -> CommandResult {
    let t = target(ctx, arg)?;
    let path = kv_path(ctx, &mtproto::path(&t.owner, &t.user))?;
    let vault = ctx.vault().await?;
    let meta = vault.kv_metadata_get(&path).await.map_err(|e| match e {
        VaultError::NotFound(_) => not_found(&t),
        other => other.into(),
    })?;
    let data = json!({"owner": t.owner, "user": t.user});
    if ctx.op.role == Role::Admin {
        vault.kv_metadata_delete(&path).await?;
        return Ok(Reply::text(format!(
            "MTProto secret of {} revoked (deleted with its history)",
            t.shown()
        ))
        .with_data(data));
    }
    let live: Vec<u64> = meta
        .versions
        .iter()
        .filter(|(_, v)| !v.destroyed && !v.is_deleted())
        .map(|(n, _)| *n)
        .collect();
    if live.is_empty() {
        return Err(CommandError::not_found(format!(
            "the MTProto secret of {} is already revoked",
            t.shown()
        )));
    }
    vault.kv_delete(&path, Some(&live)).await?;
    Ok(Reply::text(format!(
        "MTProto secret of {} revoked (every version deleted; an admin can purge it)",
        t.shown()
    ))
    .with_data(data))
}

/// Users per `/mtproto list` page: 50 lines of at most ~150 characters
/// stay within one Telegram message (4,096).
const PAGE: usize = 50;

/// Users with a secret and their fingerprints (never the secrets). An
/// agent: its own; an admin: `admin`'s, then every agent's as AGENT/USER.
/// Revoked (soft-deleted) entries are marked. One page of the sorted
/// names; only that page's records are read.
async fn list(ctx: &Ctx<'_>, args: &ListArgs) -> CommandResult {
    let vault = ctx.vault().await?;
    let own = own_owner(ctx)?;
    let mut owners = vec![own.clone()];
    if ctx.op.role == Role::Admin {
        let dirs = list_or_empty(
            vault
                .kv_list(&kv_path(ctx, &format!("{}/", mtproto::DIR))?)
                .await,
        )?;
        let mut agents: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.strip_suffix('/'))
            .filter(|d| *d != RESERVED_OWNER)
            .map(str::to_string)
            .collect();
        agents.sort();
        owners.extend(agents);
    }
    // (owner, user, shown name), in display order.
    let mut names = Vec::new();
    for owner in &owners {
        let shown_prefix = if *owner == own {
            String::new()
        } else {
            format!("{owner}/")
        };
        // An AGENT/… prefix names the owner: skip the others unread.
        if let Some(p) = &args.prefix {
            if !(p.starts_with(&shown_prefix) || shown_prefix.starts_with(p.as_str())) {
                continue;
            }
        }
        let dir = kv_path(ctx, &format!("{}/", mtproto::owner_dir(owner)))?;
        let mut users: Vec<String> = list_or_empty(vault.kv_list(&dir).await)?
            .into_iter()
            .filter(|u| !u.ends_with('/'))
            .collect();
        users.sort();
        for user in users {
            let shown = format!("{shown_prefix}{user}");
            if args.matches(&shown) {
                names.push((owner.clone(), user, shown));
            }
        }
    }
    let page = args.paginate(names, PAGE)?;
    let paths = page
        .items
        .iter()
        .map(|(owner, user, _)| kv_path(ctx, &mtproto::path(owner, user)))
        .collect::<Result<Vec<_>, _>>()?;
    // A page's records, a few at a time (Vault reads are independent).
    use futures_util::stream::{self, StreamExt};
    let reads: Vec<_> = paths.iter().map(|p| vault.kv_get(p, None)).collect();
    let records: Vec<_> = stream::iter(reads).buffered(8).collect().await;
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for ((owner, user, shown), rec) in page.items.iter().zip(records) {
        match rec {
            Ok(rec) => {
                let fp = field(&rec.data, "fingerprint")
                    .map(str::to_string)
                    .or_else(|| field(&rec.data, "secret").map(fingerprint))
                    .unwrap_or_default();
                lines.push(format!("{shown}  {fp}"));
                rows.push(
                    json!({"owner": owner, "user": user, "fingerprint": fp, "revoked": false}),
                );
            }
            Err(VaultError::NotFound(_)) => {
                lines.push(format!("{shown}  (revoked)"));
                rows.push(json!({"owner": owner, "user": user, "revoked": true}));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let text = if rows.is_empty() {
        "no MTProto secrets".to_string()
    } else {
        format!("MTProto users ({}):\n{}", page.total, lines.join("\n"))
    };
    Ok(page.reply(text, &args.command("/mtproto list"), "users", json!(rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        for ok in ["9001", "a_b-C", &"x".repeat(64)] {
            check_user(ok).unwrap();
        }
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(65), "..", "a\u{0}"] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }
}
