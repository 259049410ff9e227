//! `/panel …`: VPN panel credentials, and which agents may see them.

use std::collections::BTreeSet;

use clap::{Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::args::{kv_path, op_agent, quote, wrap_ttl, SecretArg, WrapArg};
use super::reply::{headed, list_or_empty, wrapped_reply};
use super::reply::{record_meta, record_state, Prepared};
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::records::agent::{self, check_id as check_agent_id};
use crate::records::field;
use crate::records::panel::{
    self, check_name as check_panel_name, copy_of, join_agents, parse_agents,
};
use crate::vault::kv::{KvData, KvSecret};
use crate::vault::{Vault, VaultError};

/// The panels vaultgram knows (SPEC.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PanelKind {
    Marzban,
    Marzneshin,
    Rebecca,
    Sanaei,
    Pasarguard,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PanelCommand {
    /// Store a panel's credentials (the message is deleted).
    #[command(override_usage = "/panel add NAME KIND URL USER PASSWORD")]
    Add {
        name: String,
        #[arg(value_enum)]
        kind: PanelKind,
        url: String,
        user: String,
        password: SecretArg,
    },
    /// List panels (an agent sees its assigned panels).
    #[command(override_usage = "/panel list")]
    List,
    /// Show a panel; the password only with --reveal (needs approval).
    #[command(override_usage = "/panel show [--reveal] [-wrap-ttl=DURATION] NAME")]
    Show {
        #[arg(long)]
        reveal: bool,
        #[command(flatten)]
        wrap: WrapArg,
        name: String,
    },
    /// Let an agent see a panel.
    #[command(override_usage = "/panel assign NAME AGENT")]
    Assign { name: String, agent: String },
    /// Delete a panel and every agent's copy (needs approval).
    #[command(override_usage = "/panel remove NAME")]
    Remove { name: String },
}

impl PanelCommand {
    pub fn name(&self) -> &'static str {
        match self {
            PanelCommand::Add { .. } => "add",
            PanelCommand::List => "list",
            PanelCommand::Show { reveal: true, .. } => "show --reveal",
            PanelCommand::Show { .. } => "show",
            PanelCommand::Assign { .. } => "assign",
            PanelCommand::Remove { .. } => "remove",
        }
    }

    pub fn target(&self) -> Option<String> {
        match self {
            PanelCommand::Add { name, .. }
            | PanelCommand::Show { name, .. }
            | PanelCommand::Assign { name, .. }
            | PanelCommand::Remove { name } => Some(name.clone()),
            PanelCommand::List => None,
        }
    }

    pub fn allowed_for_agent(&self) -> bool {
        let mut words = vec!["panel"];
        words.extend(self.name().split(' '));
        super::rules::agent_may_use(&words)
    }

    pub fn reply_is_secret(&self) -> bool {
        matches!(self, PanelCommand::Show { reveal: true, .. })
    }
}

impl PanelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PanelKind::Marzban => "marzban",
            PanelKind::Marzneshin => "marzneshin",
            PanelKind::Rebecca => "rebecca",
            PanelKind::Sanaei => "sanaei",
            PanelKind::Pasarguard => "pasarguard",
        }
    }
}

/// What `/panel show` prints in place of a password.
const MASK: &str = "********";

const MAX_URL_BYTES: usize = 2048;
const MAX_USER_BYTES: usize = 256;
const MAX_PASSWORD_BYTES: usize = 1024;

impl PanelCommand {
    /// Runs the command with the operator's child token (admins: the
    /// canonical records; agents: their copies under `panels-by-agent`).
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        if ctx.op.role != Role::Admin && !self.allowed_for_agent() {
            return Err(CommandError::denied(format!(
                "/panel {} is for admins",
                self.name()
            )));
        }
        match self {
            PanelCommand::Add {
                name,
                kind,
                url,
                user,
                password,
            } => add(ctx, name, *kind, url, user, &password.0).await,
            PanelCommand::List => list(ctx).await,
            PanelCommand::Show { reveal, wrap, name } => show(ctx, name, *reveal, wrap).await,
            PanelCommand::Assign { name, agent } => assign(ctx, name, agent).await,
            PanelCommand::Remove { name } => remove(ctx, name).await,
        }
    }
}

impl PanelCommand {
    /// `/panel show --reveal NAME`, checked before a request is filed: the
    /// panel exists for the requester (an agent: it is assigned to it).
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<Prepared, CommandError> {
        match self {
            PanelCommand::Show {
                reveal: true,
                wrap,
                name,
            } => {
                check_panel_name(name)?;
                wrap_ttl(ctx, wrap)?;
                let (path, missing) = if ctx.op.role == Role::Admin {
                    (kv_path(ctx, &panel::path(name))?, not_found(name))
                } else {
                    (
                        kv_path(ctx, &panel::copy_path(op_agent(ctx)?, name))?,
                        CommandError::not_found(format!("no panel {name} is assigned to you")),
                    )
                };
                let meta = record_meta(ctx, &path, || missing).await?;
                let wrap = match &wrap.wrap_ttl {
                    Some(t) => format!(" {}", quote(&format!("-wrap-ttl={t}"))),
                    None => String::new(),
                };
                let whose = match ctx.op.agent.as_deref() {
                    Some(a) if ctx.op.role != Role::Admin => format!("agent {a}'s copy of "),
                    _ => String::new(),
                };
                Ok(Prepared {
                    line: format!("/panel show --reveal{wrap} {name}"),
                    effect: format!(
                        "shows {} the password of {whose}panel {name} ({})",
                        ctx.op.name,
                        record_state(&meta)
                    ),
                })
            }
            // Deletes the record and every copy with all their versions:
            // checked to exist (as something to remove) before a request is
            // filed.
            PanelCommand::Remove { name } => {
                check_panel_name(name)?;
                let vault = ctx.vault().await?;
                let (canonical, holders) = what_remove_deletes(&vault, ctx, name).await?;
                if !canonical && holders.is_empty() {
                    return Err(not_found(name));
                }
                let copies = if holders.is_empty() {
                    "no agent copies".to_string()
                } else {
                    format!(
                        "the copies of agent(s) {}",
                        holders.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                Ok(Prepared {
                    line: format!("/panel remove {name}"),
                    effect: format!(
                        "deletes panel {name}{} and {copies}, with all versions",
                        if canonical {
                            ""
                        } else {
                            " (its record is gone already)"
                        }
                    ),
                })
            }
            _ => Err(CommandError::invalid(format!(
                "/panel {} cannot wait for approval",
                self.name()
            ))),
        }
    }
}

/// The panel's address: http(s) with a host, without credentials (they
/// would show in `/panel list`), fragment or control characters. Errors do
/// not echo it.
fn check_url(url: &str) -> Result<String, CommandError> {
    let bad = |why: &str| CommandError::invalid(format!("invalid panel URL: {why}"));
    if url.len() > MAX_URL_BYTES {
        return Err(bad("too long"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("control characters or spaces"));
    }
    let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "credentials in the URL; give USER and PASSWORD separately",
        ));
    }
    if u.fragment().is_some() {
        return Err(bad("a #fragment is not part of a panel address"));
    }
    Ok(u.to_string())
}

fn check_user(user: &str) -> Result<(), CommandError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
        return Err(CommandError::invalid(format!(
            "invalid panel user: 1-{MAX_USER_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn check_password(pw: &SecretString) -> Result<(), CommandError> {
    let p = pw.expose_secret();
    if p.is_empty() || p.len() > MAX_PASSWORD_BYTES || p.chars().any(char::is_control) {
        return Err(CommandError::invalid(format!(
            "invalid panel password: 1-{MAX_PASSWORD_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn not_found(name: &str) -> CommandError {
    CommandError::not_found(format!("no panel {name}"))
}

async fn read_canonical(
    vault: &Vault,
    ctx: &Ctx<'_>,
    name: &str,
) -> Result<KvSecret, CommandError> {
    let path = kv_path(ctx, &panel::path(name))?;
    vault.kv_get(&path, None).await.map_err(|e| match e {
        VaultError::NotFound(_) => not_found(name),
        other => other.into(),
    })
}

/// Writes (or refreshes) `panels-by-agent/AGENT/NAME`.
async fn write_copy(
    vault: &Vault,
    ctx: &Ctx<'_>,
    agent: &str,
    name: &str,
    rec: &KvData,
) -> Result<u64, CommandError> {
    let path = kv_path(ctx, &panel::copy_path(agent, name))?;
    Ok(vault.kv_put(&path, &copy_of(rec), None).await?)
}

/// `/panel add`: a new panel, or new credentials for an existing one (its
/// assignments are kept and every agent's copy is rewritten).
async fn add(
    ctx: &Ctx<'_>,
    name: &str,
    kind: PanelKind,
    url: &str,
    user: &str,
    password: &SecretString,
) -> CommandResult {
    check_panel_name(name)?;
    let url = check_url(url)?;
    check_user(user)?;
    check_password(password)?;
    let path = kv_path(ctx, &panel::path(name))?;
    let vault = ctx.vault().await?;
    // An existing panel keeps its assignments; check-and-set on the version
    // read so a concurrent assign is not lost.
    let (agents, cas) = match vault.kv_get(&path, None).await {
        Ok(cur) => (parse_agents(field(&cur.data, "agents")), cur.version),
        Err(VaultError::NotFound(_)) => {
            // Absent, or its latest version deleted: write over whatever
            // version number the metadata holds.
            let cas = match vault.kv_metadata_get(&path).await {
                Ok(m) => m.current_version,
                Err(VaultError::NotFound(_)) => 0,
                Err(e) => return Err(e.into()),
            };
            (BTreeSet::new(), cas)
        }
        Err(e) => return Err(e.into()),
    };
    let updated = cas > 0;
    let mut rec = KvData::new();
    rec.insert("kind".into(), SecretString::from(kind.as_str().to_string()));
    rec.insert("url".into(), SecretString::from(url.clone()));
    rec.insert("username".into(), SecretString::from(user.to_string()));
    rec.insert("password".into(), password.clone());
    rec.insert("agents".into(), SecretString::from(join_agents(&agents)));
    let version = vault
        .kv_put(&path, &rec, Some(cas))
        .await
        .map_err(|e| match e {
            VaultError::Conflict(_) => {
                CommandError::conflict(format!("panel {name} changed meanwhile; try again"))
            }
            other => other.into(),
        })?;
    for a in &agents {
        write_copy(&vault, ctx, a, name, &rec).await?;
    }
    let agents: Vec<&String> = agents.iter().collect();
    let mut text = format!(
        "panel {name} {} ({}, {url}, version {version})",
        if updated { "updated" } else { "added" },
        kind.as_str()
    );
    if !agents.is_empty() {
        text.push_str(&format!(
            "; refreshed the copies of: {}",
            agents
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(Reply::text(text).with_data(json!({
        "panel": name,
        "kind": kind.as_str(),
        "url": url,
        "username": user,
        "agents": agents,
        "version": version,
        "updated": updated,
    })))
}

/// Admins: every canonical panel with its agents. Agents: their copies.
async fn list(ctx: &Ctx<'_>) -> CommandResult {
    let vault = ctx.vault().await?;
    let admin = ctx.op.role == Role::Admin;
    let dir = if admin {
        panel::DIR.to_string()
    } else {
        panel::copies_of(op_agent(ctx)?)
    };
    let mut names: Vec<String> =
        list_or_empty(vault.kv_list(&kv_path(ctx, &format!("{dir}/"))?).await)?
            .into_iter()
            .filter(|k| !k.ends_with('/'))
            .collect();
    names.sort();
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for name in &names {
        let path = kv_path(ctx, &format!("{dir}/{name}"))?;
        let rec = match vault.kv_get(&path, None).await {
            Ok(r) => r,
            // Deleted latest version: not a live panel.
            Err(VaultError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let kind = field(&rec.data, "kind").unwrap_or("?").to_string();
        let url = field(&rec.data, "url").unwrap_or("?").to_string();
        if admin {
            let agents: Vec<String> = parse_agents(field(&rec.data, "agents"))
                .into_iter()
                .collect();
            let shown = if agents.is_empty() {
                "-".to_string()
            } else {
                agents.join(",")
            };
            lines.push(format!("{name}  {kind}  {url}  agents: {shown}"));
            rows.push(json!({"name": name, "kind": kind, "url": url, "agents": agents}));
        } else {
            lines.push(format!("{name}  {kind}  {url}"));
            rows.push(json!({"name": name, "kind": kind, "url": url}));
        }
    }
    let text = if rows.is_empty() {
        if admin {
            "no panels".to_string()
        } else {
            "no panels are assigned to you".to_string()
        }
    } else {
        format!("panels ({}):\n{}", rows.len(), lines.join("\n"))
    };
    Ok(Reply::text(text).with_data(json!({ "panels": rows })))
}

/// `/panel show NAME [--reveal]`: the password masked, or (approved
/// `--reveal`) in a secret reply or a wrapping token. Agents read their
/// copy; a panel not assigned to them does not exist for them.
async fn show(ctx: &Ctx<'_>, name: &str, reveal: bool, wrap: &WrapArg) -> CommandResult {
    check_panel_name(name)?;
    let admin = ctx.op.role == Role::Admin;
    let path = if admin {
        kv_path(ctx, &panel::path(name))?
    } else {
        kv_path(ctx, &panel::copy_path(op_agent(ctx)?, name))?
    };
    let missing = || {
        if admin {
            not_found(name)
        } else {
            CommandError::not_found(format!("no panel {name} is assigned to you"))
        }
    };
    let ttl = if reveal { wrap_ttl(ctx, wrap)? } else { None };
    let vault = ctx.vault().await?;
    let rec = vault.kv_get(&path, None).await.map_err(|e| match e {
        VaultError::NotFound(_) => missing(),
        other => other.into(),
    })?;
    let kind = field(&rec.data, "kind").unwrap_or("?");
    let url = field(&rec.data, "url").unwrap_or("?");
    let user = field(&rec.data, "username").unwrap_or("?");
    let mut data = json!({"panel": name, "kind": kind, "url": url, "username": user});
    let mut text = format!("panel {name}\nkind: {kind}\nurl: {url}\nusername: {user}");
    if admin {
        let agents: Vec<String> = parse_agents(field(&rec.data, "agents"))
            .into_iter()
            .collect();
        text.push_str(&format!(
            "\nagents: {}",
            if agents.is_empty() {
                "-".to_string()
            } else {
                agents.join(",")
            }
        ));
        data["agents"] = json!(agents);
    }
    if !reveal {
        text.push_str(&format!("\npassword: {MASK} (/panel show --reveal {name})"));
        return Ok(Reply::text(text).with_data(data));
    }
    if let Some(ttl) = ttl {
        // Vault wraps its own answer to the read: the broker never puts
        // the password into the reply at all.
        let w = vault
            .kv_get_wrapped(&path, Some(rec.version), ttl)
            .await
            .map_err(|e| match e {
                VaultError::NotFound(_) => missing(),
                other => other.into(),
            })?;
        return Ok(headed(
            &format!("panel {name}: Vault's answer to the read of its record"),
            wrapped_reply(&w, data),
        ));
    }
    let pw = field(&rec.data, "password").unwrap_or("");
    text.push_str(&format!("\npassword: {pw}"));
    Ok(Reply::secret(text).with_data(data))
}

/// Whether `agent` is known: a record under `vaultgram/agents/`, or an
/// agent operator in the config.
async fn agent_exists(vault: &Vault, ctx: &Ctx<'_>, agent: &str) -> Result<bool, CommandError> {
    if ctx.cfg().has_agent(agent) {
        return Ok(true);
    }
    let path = kv_path(ctx, &agent::path(agent))?;
    match vault.kv_metadata_get(&path).await {
        Ok(_) => Ok(true),
        Err(VaultError::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `/panel assign NAME AGENT`, with the admin's token: records AGENT in
/// the canonical record first (check-and-set), then writes the copy, so
/// the canonical list is always a superset of the copies (`remove`
/// deletes every copy it lists; assigning again repairs a missing copy).
async fn assign(ctx: &Ctx<'_>, name: &str, agent: &str) -> CommandResult {
    check_panel_name(name)?;
    check_agent_id(agent)?;
    let vault = ctx.vault().await?;
    if !agent_exists(&vault, ctx, agent).await? {
        return Err(CommandError::not_found(format!(
            "no agent {agent} (neither {} nor an agent operator in the config)",
            agent::path(agent)
        )));
    }
    let cur = read_canonical(&vault, ctx, name).await?;
    let mut agents = parse_agents(field(&cur.data, "agents"));
    let already = !agents.insert(agent.to_string());
    let mut rec = cur.data.clone();
    if !already {
        rec.insert("agents".into(), SecretString::from(join_agents(&agents)));
        let path = kv_path(ctx, &panel::path(name))?;
        vault
            .kv_put(&path, &rec, Some(cur.version))
            .await
            .map_err(|e| match e {
                VaultError::Conflict(_) => {
                    CommandError::conflict(format!("panel {name} changed meanwhile; try again"))
                }
                other => other.into(),
            })?;
    }
    write_copy(&vault, ctx, agent, name, &rec).await?;
    let text = if already {
        format!("panel {name} was already assigned to {agent}; its copy is refreshed")
    } else {
        format!("panel {name} assigned to {agent}")
    };
    let agents: Vec<String> = agents.into_iter().collect();
    Ok(Reply::text(text).with_data(json!({"panel": name, "agent": agent, "agents": agents})))
}

/// What `/panel remove NAME` deletes: whether the canonical record exists,
/// and the agents holding a copy (those the canonical record lists, and
/// any other found under `panels-by-agent/*/NAME`).
async fn what_remove_deletes(
    vault: &Vault,
    ctx: &Ctx<'_>,
    name: &str,
) -> Result<(bool, BTreeSet<String>), CommandError> {
    let path = kv_path(ctx, &panel::path(name))?;
    let canonical = match vault.kv_metadata_get(&path).await {
        Ok(_) => true,
        Err(VaultError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    let mut holders = match vault.kv_get(&path, None).await {
        Ok(cur) => parse_agents(field(&cur.data, "agents")),
        Err(VaultError::NotFound(_)) => BTreeSet::new(),
        Err(e) => return Err(e.into()),
    };
    // Stray copies (an interrupted assign, a hand-made copy).
    let dirs = list_or_empty(
        vault
            .kv_list(&kv_path(ctx, &format!("{}/", panel::COPIES_DIR))?)
            .await,
    )?;
    for d in dirs {
        let Some(a) = d.strip_suffix('/') else {
            continue;
        };
        if check_agent_id(a).is_err() || holders.contains(a) {
            continue;
        }
        let inside = list_or_empty(
            vault
                .kv_list(&kv_path(ctx, &format!("{}/", panel::copies_of(a)))?)
                .await,
        )?;
        if inside.iter().any(|k| k == name) {
            holders.insert(a.to_string());
        }
    }
    Ok((canonical, holders))
}

/// `/panel remove NAME` (approved by a second admin before this runs:
/// effect `kv metadata delete`): every agent's copy, then the canonical
/// record, each with all its versions (metadata delete).
async fn remove(ctx: &Ctx<'_>, name: &str) -> CommandResult {
    check_panel_name(name)?;
    let vault = ctx.vault().await?;
    let path = kv_path(ctx, &panel::path(name))?;
    let (canonical, holders) = what_remove_deletes(&vault, ctx, name).await?;
    if !canonical && holders.is_empty() {
        return Err(not_found(name));
    }
    for a in &holders {
        let copy = kv_path(ctx, &panel::copy_path(a, name))?;
        vault.kv_metadata_delete(&copy).await?;
    }
    if canonical {
        vault.kv_metadata_delete(&path).await?;
    }
    let holders: Vec<String> = holders.into_iter().collect();
    let mut text = format!("panel {name} removed");
    if !holders.is_empty() {
        text.push_str(&format!(", with the copies of: {}", holders.join(", ")));
    }
    Ok(Reply::text(text).with_data(json!({"panel": name, "copies_deleted": holders})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            check_url("https://panel.example.com:8443/dash").unwrap(),
            "https://panel.example.com:8443/dash"
        );
        assert_eq!(check_url("http://10.0.0.1").unwrap(), "http://10.0.0.1/");
        for bad in [
            "ftp://x",
            "panel.example.com",
            "https://",
            "https://u:p@host/",
            "https://u@host/",
            "https://host/#x",
            "https://ho st/",
            "javascript:alert(1)",
            "file:///etc/passwd",
        ] {
            let e = check_url(bad).unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::Invalid, "{bad}");
            assert!(!e.message.contains(bad), "{bad} echoed: {}", e.message);
        }
    }

    #[test]
    fn panel_names_and_agent_lists() {
        for ok in ["it-p1", "de1", "panel.example"] {
            check_panel_name(ok).unwrap();
        }
        for bad in ["", ".", "..", ".x", "a/b", "A", "a b"] {
            assert!(check_panel_name(bad).is_err(), "{bad:?}");
        }
        let a = parse_agents(Some("carol, bob,,bob,Bad/x,admin"));
        assert_eq!(join_agents(&a), "bob,carol");
        assert!(parse_agents(None).is_empty());
    }
}
