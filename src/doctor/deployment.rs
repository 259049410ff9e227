//! What the deployment around the broker leaves behind: backups on disk
//! and the pod's NetworkPolicy confinement.

use std::time::SystemTime;

use serde_json::json;

use super::report::{human_secs, Check};
use crate::config::Config;

// ---- Backups ------------------------------------------------------------

/// The newest snapshot `scripts/backup.sh` left in `backup.dir` (one with
/// its `.sha256` beside it: a finished one), by kind.
pub(super) fn backup_check(cfg: &crate::config::BackupConfig, now: SystemTime) -> Check {
    const NAME: &str = "backup";
    let Some(dir) = &cfg.dir else {
        return Check::ok(NAME, "not configured (backup.dir): not checked");
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Check::warn(NAME, format!("{}: {e}", dir.display())),
    };
    let mut newest: std::collections::BTreeMap<&str, (SystemTime, String, u64)> =
        Default::default();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = match name.as_str() {
            n if n.starts_with("etcd-") && n.ends_with(".db") => "etcd",
            n if n.starts_with("raft-") && n.ends_with(".snap") => "raft",
            n if n.starts_with("unsealer-") && n.ends_with(".snap") => "unsealer",
            _ => continue,
        };
        if !dir.join(format!("{name}.sha256")).is_file() {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let Ok(mtime) = meta.modified() else { continue };
        if newest.get(kind).is_none_or(|(t, _, _)| mtime > *t) {
            newest.insert(kind, (mtime, name, meta.len()));
        }
    }
    let Some(oldest_newest) = newest.values().map(|(t, _, _)| *t).min() else {
        return Check::warn(NAME, format!("no finished snapshot in {}", dir.display()));
    };
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs();
    let detail = newest
        .iter()
        .map(|(k, (t, n, len))| format!("{k}: {n} ({len} bytes, {} old)", human_secs(age(*t))))
        .collect::<Vec<_>>()
        .join("; ");
    let data = json!({
        "dir": dir,
        "newest": newest.iter().map(|(k, (t, n, len))| (k.to_string(), json!({
            "file": n, "bytes": len, "age_secs": age(*t),
        }))).collect::<serde_json::Map<_, _>>(),
        "max_age_secs": cfg.max_age_secs,
    });
    if age(oldest_newest) > cfg.max_age_secs {
        Check::warn(
            NAME,
            format!("{detail}: older than {}", human_secs(cfg.max_age_secs)),
        )
        .data(data)
    } else {
        Check::ok(NAME, detail).data(data)
    }
}

// ---- Kubernetes ---------------------------------------------------------

/// The pod's NetworkPolicy confinement (`src/kube.rs`).
pub(super) async fn confinement_check(cfg: &Config) -> Check {
    const NAME: &str = "kubernetes.confinement";
    let s = crate::kube::status(cfg).await;
    let data = s.report.as_ref().map(|r| {
        json!({
            "pod": r.pod,
            "namespace": r.namespace,
            "ingress_by": r.ingress_by,
            "egress_by": r.egress_by,
            "allowed_egress": r.allowed,
            "findings": r.findings,
        })
    });
    use crate::kube::Confinement as C;
    let check = match s.state {
        C::Ok | C::NotInPod => Check::ok(NAME, s.detail),
        C::Warn => Check::warn(NAME, s.detail),
        C::Fail | C::Error => Check::fail(NAME, s.detail),
    };
    match data {
        Some(d) => check.data(d),
        None => check,
    }
}
