//! A panel's credentials: the canonical record at `vaultgram/panels/NAME`
//! (`kind`, `url`, `username`, `password`, and `agents`, the comma-separated
//! agents it is assigned to), and one copy per assigned agent at
//! `vaultgram/panels-by-agent/AGENT/NAME` holding the credentials only (an
//! agent's policy reads its own copies, never the canonical record).

use std::collections::BTreeSet;

use super::agent;
use super::common::RecordError;
use crate::names::is_name;
use crate::vault::kv::KvData;

/// Canonical records (admin-only).
pub const DIR: &str = "vaultgram/panels";
/// Per-agent copies.
pub const COPIES_DIR: &str = "vaultgram/panels-by-agent";

/// The canonical record of panel `name`.
pub fn path(name: &str) -> String {
    format!("{DIR}/{name}")
}

/// The folder of `agent`'s copies.
pub fn copies_of(agent: &str) -> String {
    format!("{COPIES_DIR}/{agent}")
}

/// `agent`'s copy of panel `name`.
pub fn copy_path(agent: &str, name: &str) -> String {
    format!("{COPIES_DIR}/{agent}/{name}")
}

/// Whether `path` (inside the mount) is one panel record, canonical or a
/// copy, rather than a folder of them.
pub fn is_record(path: &str) -> bool {
    [DIR, COPIES_DIR].iter().any(|dir| {
        path.strip_prefix(dir)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| !r.is_empty())
    })
}

/// Panel names: `[a-z0-9][a-z0-9_.-]{0,62}` (a KV path segment that
/// cannot be `.`/`..`, and short enough for every chat).
pub fn check_name(name: &str) -> Result<(), RecordError> {
    if is_name(name, true) {
        Ok(())
    } else {
        Err(RecordError::Invalid(
            "invalid panel name: use 1-63 of a-z, 0-9, '_', '-', '.', starting with a letter or digit"
                .into(),
        ))
    }
}

/// The `agents` field: sorted, de-duplicated, valid ids only.
pub fn parse_agents(s: Option<&str>) -> BTreeSet<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| agent::check_id(a).is_ok())
        .map(str::to_string)
        .collect()
}

pub fn join_agents(a: &BTreeSet<String>) -> String {
    a.iter().cloned().collect::<Vec<_>>().join(",")
}

/// What an agent's copy holds: the credentials, never the agent list.
pub fn copy_of(rec: &KvData) -> KvData {
    ["kind", "url", "username", "password"]
        .iter()
        .filter_map(|k| rec.get(*k).map(|v| ((*k).to_string(), v.clone())))
        .collect()
}
