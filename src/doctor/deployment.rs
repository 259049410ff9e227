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
    let newest = match crate::backup::newest(dir) {
        Ok(n) => n,
        Err(e) => return Check::warn(NAME, format!("{}: {e}", dir.display())),
    };
    let Some(oldest_newest) = newest.values().map(|s| s.modified).min() else {
        return Check::warn(NAME, format!("no finished snapshot in {}", dir.display()));
    };
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs();
    let detail = newest
        .iter()
        .map(|(k, s)| {
            format!(
                "{k}: {} ({} bytes, {} old)",
                s.file,
                s.bytes,
                human_secs(age(s.modified))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let data = json!({
        "dir": dir,
        "newest": newest.iter().map(|(k, s)| (k.to_string(), json!({
            "file": s.file, "bytes": s.bytes, "age_secs": age(s.modified),
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
