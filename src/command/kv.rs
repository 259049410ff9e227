//! `/kv …`: KV v2, mirroring the Vault CLI (`vault kv get -version=2 secret/x`).

use std::collections::BTreeMap;

use clap::Subcommand;
use secrecy::ExposeSecret;
use serde_json::json;

use super::args::{path_error, quote, wrap_ttl, Pair, WrapArg};
use super::reply::{concat, table, wrapped_reply};
use super::reply::{record_state, Prepared};
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::vault::kv::{KvData, KvMetadata, KvPath};
use crate::vault::wrap::WrapTtl;
use crate::vault::{Vault, VaultError};

#[derive(Debug, Clone, Subcommand)]
pub enum KvCommand {
    /// Read a secret (or one field of it).
    #[command(override_usage = "/kv get [-version=N] [-field=F] [-wrap-ttl=DURATION] MOUNT/PATH")]
    Get {
        #[arg(long)]
        version: Option<u64>,
        #[arg(long)]
        field: Option<String>,
        #[command(flatten)]
        wrap: WrapArg,
        path: KvPath,
    },
    /// Write a new version (the message carrying the values is deleted).
    #[command(override_usage = "/kv put [-cas=N] MOUNT/PATH k=v …")]
    Put {
        #[arg(long)]
        cas: Option<u64>,
        path: KvPath,
        #[arg(required = true)]
        pairs: Vec<Pair>,
    },
    /// Merge k=v pairs into the latest version.
    #[command(override_usage = "/kv patch MOUNT/PATH k=v …")]
    Patch {
        path: KvPath,
        #[arg(required = true)]
        pairs: Vec<Pair>,
    },
    /// List the keys under a path.
    #[command(override_usage = "/kv list MOUNT/PATH/")]
    List { path: KvPath },
    /// Soft-delete versions (default: the latest).
    #[command(override_usage = "/kv delete [-versions=1,2] MOUNT/PATH")]
    Delete {
        #[arg(long, value_delimiter = ',')]
        versions: Vec<u64>,
        path: KvPath,
    },
    /// Restore soft-deleted versions.
    #[command(override_usage = "/kv undelete -versions=1,2 MOUNT/PATH")]
    Undelete {
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
        path: KvPath,
    },
    /// Destroy versions for good (needs a second admin's approval).
    #[command(override_usage = "/kv destroy -versions=1,2 MOUNT/PATH")]
    Destroy {
        #[arg(long, value_delimiter = ',', required = true)]
        versions: Vec<u64>,
        path: KvPath,
    },
    /// Versions and metadata of a secret; `metadata delete` removes all.
    #[command(subcommand)]
    Metadata(KvMetadataCommand),
    /// Write an older version's data as the new latest version.
    #[command(override_usage = "/kv rollback -version=N MOUNT/PATH")]
    Rollback {
        #[arg(long, required = true)]
        version: u64,
        path: KvPath,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum KvMetadataCommand {
    /// Versions and metadata of a secret.
    #[command(override_usage = "/kv metadata get MOUNT/PATH")]
    Get { path: KvPath },
    /// Delete a secret with all its versions (needs approval).
    #[command(override_usage = "/kv metadata delete MOUNT/PATH")]
    Delete { path: KvPath },
}

impl KvCommand {
    pub fn name(&self) -> &'static str {
        match self {
            KvCommand::Get { .. } => "get",
            KvCommand::Put { .. } => "put",
            KvCommand::Patch { .. } => "patch",
            KvCommand::List { .. } => "list",
            KvCommand::Delete { .. } => "delete",
            KvCommand::Undelete { .. } => "undelete",
            KvCommand::Destroy { .. } => "destroy",
            KvCommand::Metadata(KvMetadataCommand::Get { .. }) => "metadata get",
            KvCommand::Metadata(KvMetadataCommand::Delete { .. }) => "metadata delete",
            KvCommand::Rollback { .. } => "rollback",
        }
    }

    pub fn path(&self) -> &KvPath {
        match self {
            KvCommand::Get { path, .. }
            | KvCommand::Put { path, .. }
            | KvCommand::Patch { path, .. }
            | KvCommand::List { path }
            | KvCommand::Delete { path, .. }
            | KvCommand::Undelete { path, .. }
            | KvCommand::Destroy { path, .. }
            | KvCommand::Metadata(KvMetadataCommand::Get { path })
            | KvCommand::Metadata(KvMetadataCommand::Delete { path })
            | KvCommand::Rollback { path, .. } => path,
        }
    }

    pub fn target(&self) -> Option<String> {
        Some(self.path().to_string())
    }

    pub fn reply_is_secret(&self) -> bool {
        matches!(self, KvCommand::Get { .. })
    }

    /// Reads and nothing else (the table's [`is_read_only`] and the effect
    /// classifier both ask this).
    ///
    /// [`is_read_only`]: crate::command::Command::is_read_only
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            KvCommand::Get { .. }
                | KvCommand::List { .. }
                | KvCommand::Metadata(KvMetadataCommand::Get { .. })
        )
    }
}

impl KvCommand {
    /// The gated `/kv` commands, checked before a request is filed: the
    /// secret and every version named exist for the requester.
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<Prepared, CommandError> {
        let path = self.path();
        path.secret().map_err(path_error)?;
        let shown = quote(&path.to_string());
        match self {
            KvCommand::Destroy { versions, .. } => {
                let meta = ctx.vault().await?.kv_metadata_get(path).await?;
                let mut vs = versions.clone();
                vs.sort_unstable();
                vs.dedup();
                for v in &vs {
                    match meta.versions.get(v) {
                        None => {
                            return Err(CommandError::invalid(format!(
                                "{path} has no version {v} (current: {})",
                                meta.current_version
                            )))
                        }
                        Some(m) if m.destroyed => {
                            return Err(CommandError::invalid(format!(
                                "version {v} of {path} is already destroyed"
                            )))
                        }
                        Some(_) => {}
                    }
                }
                let list: Vec<String> = vs.iter().map(u64::to_string).collect();
                let each: Vec<String> = vs
                    .iter()
                    .map(|v| {
                        let at = meta
                            .versions
                            .get(v)
                            .map_or("?", |m| m.created_time.as_str());
                        format!("{v} (created {at})")
                    })
                    .collect();
                Ok(Prepared {
                    line: format!("/kv destroy -versions={} {shown}", list.join(",")),
                    effect: format!(
                        "destroys version(s) {} of {path} for good; current version {}",
                        each.join(", "),
                        meta.current_version
                    ),
                })
            }
            KvCommand::Metadata(KvMetadataCommand::Delete { .. }) => {
                let meta = ctx.vault().await?.kv_metadata_get(path).await?;
                Ok(Prepared {
                    line: format!("/kv metadata delete {shown}"),
                    effect: format!(
                        "deletes {path} with all {} version(s) for good ({})",
                        meta.versions.len(),
                        record_state(&meta)
                    ),
                })
            }
            _ => Err(CommandError::invalid(format!(
                "/kv {} cannot wait for approval",
                self.name()
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Execution: every call with the operator's child token (Vault enforces the
// ACL). Values appear only in the text of secret replies, never in `data`.
// ---------------------------------------------------------------------------

impl KvCommand {
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        // Refuse a directory where a secret is needed before any Vault call.
        if !matches!(self, KvCommand::List { .. }) {
            self.path().secret().map_err(path_error)?;
        }
        match self {
            KvCommand::Get {
                version,
                field,
                wrap,
                path,
            } => {
                let ttl = wrap_ttl(ctx, wrap)?;
                get(&*ctx.vault().await?, path, *version, field.as_deref(), ttl).await
            }
            KvCommand::Put { cas, path, pairs } => {
                let data = kv_data(pairs);
                let v = ctx.vault().await?.kv_put(path, &data, *cas).await?;
                Ok(written("Data written to", path, v, &data))
            }
            KvCommand::Patch { path, pairs } => {
                let data = kv_data(pairs);
                let v = ctx.vault().await?.kv_patch(path, &data).await?;
                Ok(written("Data patched at", path, v, &data))
            }
            KvCommand::List { path } => list(&*ctx.vault().await?, path).await,
            KvCommand::Delete { versions, path } => {
                delete(&*ctx.vault().await?, path, versions).await
            }
            KvCommand::Undelete { versions, path } => {
                undelete(&*ctx.vault().await?, path, versions).await
            }
            KvCommand::Destroy { versions, path } => {
                destroy(&*ctx.vault().await?, path, versions).await
            }
            KvCommand::Metadata(KvMetadataCommand::Get { path }) => {
                let meta = ctx.vault().await?.kv_metadata_get(path).await?;
                Ok(metadata_reply(path, &meta))
            }
            KvCommand::Metadata(KvMetadataCommand::Delete { path }) => {
                let vault = ctx.vault().await?;
                existing(&vault, path, &[]).await?;
                vault.kv_metadata_delete(path).await?;
                Ok(Reply::text(format!(
                    "Success! Deleted {path} with all its versions and metadata"
                ))
                .with_data(json!({"path": path.to_string()})))
            }
            KvCommand::Rollback { version, path } => {
                let new = ctx.vault().await?.kv_rollback(path, *version).await?;
                Ok(Reply::text(format!(
                    "Success! Rolled back {path} to version {version}: written as version {new}"
                ))
                .with_data(json!({
                    "path": path.to_string(),
                    "from_version": version,
                    "version": new,
                })))
            }
        }
    }
}

/// `k=v` pairs as the data of a write (a repeated key: the last one wins,
/// as with the CLI).
fn kv_data(pairs: &[Pair]) -> KvData {
    pairs
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

fn written(what: &str, path: &KvPath, version: u64, data: &KvData) -> Reply {
    Reply::text(format!("Success! {what}: {path} (version {version})")).with_data(json!({
        "path": path.to_string(),
        "version": version,
        "keys": data.keys().collect::<Vec<_>>(),
    }))
}

/// The Vault CLI's `<nil>` / `map[k:v …]` for custom metadata.
fn fmt_custom(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<nil>".into();
    }
    let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    format!("map[{}]", inner.join(" "))
}

fn api_path(path: &KvPath, kind: &str) -> String {
    format!("{}/{kind}/{}", path.mount(), path.path())
}

async fn get(
    vault: &Vault,
    path: &KvPath,
    version: Option<u64>,
    field: Option<&str>,
    ttl: Option<WrapTtl>,
) -> CommandResult {
    let version = version.filter(|v| *v > 0);
    if let (Some(ttl), None) = (ttl, field) {
        // Wrapped by Vault itself: the values never pass through the broker.
        let w = vault.kv_get_wrapped(path, version, ttl).await?;
        let mut data = json!({"path": path.to_string()});
        if let Some(v) = version {
            data["version"] = json!(v);
        }
        return Ok(wrapped_reply(&w, data));
    }
    let secret = vault.kv_get(path, version).await?;
    let mut data = json!({
        "path": path.to_string(),
        "version": secret.version,
        "created_time": secret.created_time,
        "deletion_time": secret.deletion_time,
        "destroyed": secret.destroyed,
        "keys": secret.data.keys().collect::<Vec<_>>(),
    });
    if let Some(f) = field {
        let value = secret.data.get(f).ok_or_else(|| {
            CommandError::not_found(format!(
                "field `{f}` not present in {path} (version {})",
                secret.version
            ))
        })?;
        data["field"] = json!(f);
        if let Some(ttl) = ttl {
            // One field: only it is wrapped (with the operator's token).
            let one: KvData = [(f.to_string(), value.clone())].into_iter().collect();
            let w = vault.wrap_data(&one, ttl).await?;
            return Ok(wrapped_reply(&w, data));
        }
        return Ok(Reply::secret(value.expose_secret().to_string()).with_data(data));
    }
    let version_text = secret.version.to_string();
    let custom = fmt_custom(&secret.custom_metadata);
    let meta = table(&[
        ("created_time", &secret.created_time),
        ("custom_metadata", &custom),
        (
            "deletion_time",
            secret.deletion_time.as_deref().unwrap_or("n/a"),
        ),
        ("destroyed", if secret.destroyed { "true" } else { "false" }),
        ("version", &version_text),
    ]);
    let rows: Vec<(&str, &str)> = secret
        .data
        .iter()
        .map(|(k, v)| (k.as_str(), v.expose_secret()))
        .collect();
    let values = table(&rows);
    let api = api_path(path, "data");
    let text = concat(&[
        "== Secret Path ==\n",
        &api,
        "\n\n== Metadata ==\n",
        &meta,
        "\n\n== Data ==\n",
        &values,
    ]);
    Ok(Reply::secret(text).with_data(data))
}

async fn list(vault: &Vault, path: &KvPath) -> CommandResult {
    let keys = vault.kv_list(path).await?;
    let mut text = String::from("Keys\n----");
    for k in &keys {
        text.push('\n');
        text.push_str(k);
    }
    let dir = if path.path().is_empty() {
        format!("{}/", path.mount())
    } else {
        format!("{}/{}/", path.mount(), path.path())
    };
    Ok(Reply::text(text).with_data(json!({"path": dir, "keys": keys})))
}

/// The secret's metadata, checking that it exists and has `versions`:
/// `not_found` otherwise, so a typo is not answered with "Success!".
/// `None` when this operator may not read the metadata (Vault then decides
/// on the call itself).
async fn existing(
    vault: &Vault,
    path: &KvPath,
    versions: &[u64],
) -> Result<Option<KvMetadata>, CommandError> {
    let meta = match vault.kv_metadata_get(path).await {
        Ok(m) => m,
        Err(VaultError::Denied(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if meta.current_version == 0 {
        return Err(CommandError::not_found(format!("no secret at {path}")));
    }
    let missing: Vec<u64> = versions
        .iter()
        .copied()
        .filter(|v| !meta.versions.contains_key(v))
        .collect();
    if !missing.is_empty() {
        return Err(CommandError::not_found(format!(
            "{path} has no version {} (current version: {})",
            join(&missing),
            meta.current_version
        )));
    }
    Ok(Some(meta))
}

fn join(versions: &[u64]) -> String {
    versions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(versions: &[u64]) -> &'static str {
    if versions.len() == 1 {
        "version"
    } else {
        "versions"
    }
}

fn check_versions(versions: &[u64]) -> Result<(), CommandError> {
    if versions.contains(&0) {
        return Err(CommandError::invalid(
            "versions: give one or more version numbers (1, 2, …)",
        ));
    }
    Ok(())
}

async fn delete(vault: &Vault, path: &KvPath, versions: &[u64]) -> CommandResult {
    check_versions(versions)?;
    let data = |v: &[u64]| json!({"path": path.to_string(), "versions": v});
    if !versions.is_empty() {
        existing(vault, path, versions).await?;
        vault.kv_delete(path, Some(versions)).await?;
        return Ok(Reply::text(format!(
            "Success! Deleted {} {} of {path} (kv undelete -versions={} {path} restores {})",
            plural(versions),
            join(versions),
            join(versions).replace(", ", ","),
            if versions.len() == 1 { "it" } else { "them" },
        ))
        .with_data(data(versions)));
    }
    // The latest version: named explicitly, so the reply says which one
    // went (a write in between cannot make it delete another).
    let Some(meta) = existing(vault, path, &[]).await? else {
        vault.kv_delete(path, None).await?;
        return Ok(
            Reply::text(format!("Success! Data deleted (if it existed) at: {path}"))
                .with_data(data(&[])),
        );
    };
    let v = meta.current_version;
    match meta.versions.get(&v) {
        Some(m) if m.destroyed => Err(CommandError::not_found(format!(
            "{path} version {v} is destroyed; nothing to delete"
        ))),
        Some(m) if m.is_deleted() => Ok(Reply::text(format!(
            "{path} version {v} is already deleted (kv undelete -versions={v} {path} restores it)"
        ))
        .with_data(data(&[v]))),
        _ => {
            vault.kv_delete(path, Some(&[v])).await?;
            Ok(Reply::text(format!(
                "Success! Deleted version {v} of {path} (kv undelete -versions={v} {path} restores it)"
            ))
            .with_data(data(&[v])))
        }
    }
}

async fn undelete(vault: &Vault, path: &KvPath, versions: &[u64]) -> CommandResult {
    check_versions(versions)?;
    if let Some(meta) = existing(vault, path, versions).await? {
        let destroyed: Vec<u64> = versions
            .iter()
            .copied()
            .filter(|v| meta.versions.get(v).is_some_and(|m| m.destroyed))
            .collect();
        if !destroyed.is_empty() {
            let verb = if destroyed.len() == 1 { "is" } else { "are" };
            return Err(CommandError::invalid(format!(
                "{path} {} {} {verb} destroyed and cannot be restored",
                plural(&destroyed),
                join(&destroyed),
            )));
        }
    }
    vault.kv_undelete(path, versions).await?;
    Ok(Reply::text(format!(
        "Success! Restored {} {} of {path}",
        plural(versions),
        join(versions)
    ))
    .with_data(json!({"path": path.to_string(), "versions": versions})))
}

async fn destroy(vault: &Vault, path: &KvPath, versions: &[u64]) -> CommandResult {
    check_versions(versions)?;
    existing(vault, path, versions).await?;
    vault.kv_destroy(path, versions).await?;
    Ok(Reply::text(format!(
        "Success! Destroyed {} {} of {path} (permanently)",
        plural(versions),
        join(versions)
    ))
    .with_data(json!({"path": path.to_string(), "versions": versions})))
}

fn metadata_reply(path: &KvPath, m: &KvMetadata) -> Reply {
    let (cur, old, max) = (
        m.current_version.to_string(),
        m.oldest_version.to_string(),
        m.max_versions.to_string(),
    );
    let custom = fmt_custom(&m.custom_metadata);
    let meta = table(&[
        (
            "cas_required",
            if m.cas_required { "true" } else { "false" },
        ),
        ("created_time", &m.created_time),
        ("current_version", &cur),
        ("custom_metadata", &custom),
        ("delete_version_after", &m.delete_version_after),
        ("max_versions", &max),
        ("oldest_version", &old),
        ("updated_time", &m.updated_time),
    ]);
    let states: Vec<(String, String)> = m
        .versions
        .iter()
        .rev()
        .map(|(v, vm)| {
            let state = if vm.destroyed {
                "destroyed".to_string()
            } else if vm.is_deleted() {
                format!("deleted {}", vm.deletion_time.as_deref().unwrap_or(""))
            } else if let Some(t) = &vm.deletion_time {
                format!("deletion scheduled {t}")
            } else if *v == m.current_version {
                "current".to_string()
            } else {
                "readable".to_string()
            };
            (
                format!("version {v}"),
                format!("created {}, {state}", vm.created_time),
            )
        })
        .collect();
    let rows: Vec<(&str, &str)> = states
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let versions = table(&rows);
    let text = format!(
        "== Metadata Path ==\n{}\n\n== Metadata ==\n{}\n\n== Versions ==\n{}",
        api_path(path, "metadata"),
        meta.as_str(),
        versions.as_str()
    );
    let versions_data: serde_json::Map<String, serde_json::Value> = m
        .versions
        .iter()
        .map(|(v, vm)| {
            (
                v.to_string(),
                json!({
                    "created_time": vm.created_time,
                    "deletion_time": vm.deletion_time,
                    "deleted": vm.is_deleted(),
                    "destroyed": vm.destroyed,
                }),
            )
        })
        .collect();
    Reply::text(text).with_data(json!({
        "path": path.to_string(),
        "current_version": m.current_version,
        "oldest_version": m.oldest_version,
        "max_versions": m.max_versions,
        "cas_required": m.cas_required,
        "delete_version_after": m.delete_version_after,
        "created_time": m.created_time,
        "updated_time": m.updated_time,
        "custom_metadata": m.custom_metadata,
        "versions": versions_data,
    }))
}
