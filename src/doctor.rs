//! `vaultgram doctor`: a separate process that checks what the broker
//! depends on — Vault (seal, HA, the broker token, mounts, the transit key),
//! etcd (every member, quorum, leader, raft lag, alarms, DB size, auth),
//! the certificates named in the config, the election key and the running
//! service's `/readyz`.
//!
//! It must start when Vault is sealed or etcd is down (that is when it is
//! needed), so it does not use `App::start`: every dependency is probed on
//! its own, bounded in time, and a failure becomes a `fail` check while the
//! other checks still run. No check's detail or data holds a secret.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{AuthMethod, Config};
use crate::etcd::{Etcd, EtcdError, MemberStatus};
use crate::leader::{election_key, LeaderRecord};
use crate::vault::auth::TokenManager;
use crate::vault::Vault;

/// etcd's default backend quota (`--quota-backend-bytes`).
pub const DEFAULT_ETCD_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Per-member connect timeout.
const ETCD_TIMEOUT: Duration = Duration::from_secs(2);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// A non-periodic broker token with less left than this cannot be trusted
/// to survive until the renewer's next attempt.
const TOKEN_TTL_WARN_SECS: u64 = 5 * 60;
const RAFT_LAG_WARN: u64 = 1000;
const CERT_WARN_DAYS: i64 = 30;

/// A check's verdict; ordered so that the worst is the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub data: Value,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            data: Value::Null,
        }
    }

    fn data(mut self, data: Value) -> Check {
        self.data = data;
        self
    }

    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail)
    }

    fn warn(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail)
    }

    fn fail(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail)
    }

    /// A check that could not run because another one failed (which
    /// carries the `fail`); it says why.
    fn skipped(name: &str, why: &str) -> Check {
        Check::warn(name, format!("not checked: {why}"))
    }
}

/// Every check, in a stable order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// 0 all ok, 1 any warn, 2 any fail.
    pub fn exit_code(&self) -> u8 {
        match self.status() {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }

    /// `{"status":"ok|warn|fail","checks":[…]}`.
    pub fn to_json(&self) -> Value {
        json!({"status": self.status(), "checks": self.checks})
    }

    /// A table: status, name, detail; then the overall verdict.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(5);
        let mut out = String::new();
        let _ = writeln!(out, "{:<6} {:<width$}  DETAIL", "STATUS", "CHECK");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:<6} {:<width$}  {}",
                c.status.as_str(),
                c.name,
                c.detail
            );
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "overall: {} ({} ok, {} warn, {} fail)",
            self.status().as_str(),
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }
}

/// Knobs the config does not hold.
#[derive(Debug, Clone)]
pub struct Options {
    /// The etcd backend quota to compare the DB size with (etcd 3.4 does
    /// not report it).
    pub etcd_quota_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            etcd_quota_bytes: DEFAULT_ETCD_QUOTA_BYTES,
        }
    }
}

/// Runs every check. Never fails: a failure is a check.
pub async fn run(cfg: &Config, opts: &Options) -> Report {
    let mut checks = Vec::new();
    checks.extend(vault_checks(cfg).await);
    let (etcd_checks, etcd) = etcd_checks(cfg, opts).await;
    checks.extend(etcd_checks);
    checks.extend(cert_checks(cfg, unix_now()));
    checks.push(leadership_check(cfg, etcd.as_ref()).await);
    checks.push(telegram_check(cfg).await);
    checks.push(reachability_check(cfg, etcd.as_ref()).await);
    checks.push(authorizations_check(cfg, etcd.as_ref()).await);
    checks.push(confinement_check(cfg).await);
    checks.push(backup_check(&cfg.backup, SystemTime::now()));
    Report { checks }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn human_secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

// ---- Backups ------------------------------------------------------------

/// The newest snapshot `scripts/backup.sh` left in `backup.dir` (one with
/// its `.sha256` beside it: a finished one), by kind.
fn backup_check(cfg: &crate::config::BackupConfig, now: SystemTime) -> Check {
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
async fn confinement_check(cfg: &Config) -> Check {
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

// ---- Vault --------------------------------------------------------------

/// The Vault checks that need the broker's own token.
const LOGGED_IN_CHECKS: [&str; 4] = [
    "vault.token",
    "vault.mount.kv",
    "vault.mount.transit",
    "vault.transit_key",
];

async fn vault_checks(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let mut vcfg = cfg.vault.clone();
    // A doctor that hangs is no doctor.
    vcfg.request_timeout_secs = vcfg.request_timeout_secs.clamp(1, 5);
    // sys/health and sys/leader need no token.
    let anon = match Vault::with_token(&vcfg, &SecretString::from(String::new())) {
        Ok(v) => v,
        Err(e) => {
            out.push(Check::fail("vault", e.to_string()));
            return out;
        }
    };
    let usable = match anon.health().await {
        Ok(h) if !h.initialized => {
            out.push(Check::fail(
                "vault",
                format!("{} is not initialised", vcfg.addr),
            ));
            false
        }
        Ok(h) if h.sealed => {
            out.push(
                Check::fail("vault", format!("{} is sealed", vcfg.addr))
                    .data(json!({"sealed": true, "initialized": true})),
            );
            false
        }
        Ok(h) => {
            let role = if h.standby { "standby" } else { "active" };
            out.push(
                Check::ok("vault", format!("{} unsealed, {role}", vcfg.addr))
                    .data(json!({"sealed": false, "standby": h.standby})),
            );
            true
        }
        Err(e) => {
            out.push(Check::fail(
                "vault",
                format!("{} unreachable: {e}", vcfg.addr),
            ));
            false
        }
    };
    if !usable {
        let why = "Vault is sealed or unreachable";
        for name in std::iter::once(&"vault.ha").chain(&LOGGED_IN_CHECKS) {
            out.push(Check::skipped(name, why));
        }
        return out;
    }
    out.push(match anon.leader().await {
        Ok(l) if !l.ha_enabled => Check::ok("vault.ha", "HA not enabled (single node)")
            .data(serde_json::to_value(&l).unwrap_or_default()),
        Ok(l) if l.leader_address.is_empty() => {
            Check::warn("vault.ha", "HA enabled but no active node known")
                .data(serde_json::to_value(&l).unwrap_or_default())
        }
        Ok(l) => Check::ok(
            "vault.ha",
            format!(
                "HA enabled, leader {}{}",
                l.leader_address,
                if l.is_self { " (this node)" } else { "" }
            ),
        )
        .data(serde_json::to_value(&l).unwrap_or_default()),
        Err(e) => Check::warn("vault.ha", format!("sys/leader: {e}")),
    });

    // A response-wrapped secret_id is single use: the running service has
    // consumed it (or needs it), so the doctor must not unwrap it.
    let a = &vcfg.auth;
    if a.method == AuthMethod::Approle && a.secret_id_wrapped {
        let why = "approle secret_id is response-wrapped (single use); doctor does not log in";
        for name in &LOGGED_IN_CHECKS {
            out.push(Check::skipped(name, why));
        }
        return out;
    }
    let broker = match TokenManager::login(&vcfg).await {
        Ok(t) => t,
        Err(e) => {
            out.push(Check::fail("vault.token", format!("login failed: {e}")));
            for name in ["vault.mount.kv", "vault.mount.transit", "vault.transit_key"] {
                out.push(Check::skipped(name, "no broker token"));
            }
            return out;
        }
    };
    let vault = broker.current();
    out.push(token_check(&vault, &broker).await);
    out.push(mount_check(&vault, "vault.mount.kv", &vcfg.kv_mount, "kv").await);
    out.push(
        mount_check(
            &vault,
            "vault.mount.transit",
            &vcfg.transit_mount,
            "transit",
        )
        .await,
    );
    // The broker may only encrypt/decrypt with its key, not create one: a
    // successful encryption proves the key exists and is usable.
    let plaintext = SecretString::from("doctor".to_string());
    let target = format!("{}/{}", vcfg.transit_mount, vcfg.transit_key);
    out.push(
        match vault
            .transit_encrypt(&vcfg.transit_mount, &vcfg.transit_key, &plaintext)
            .await
        {
            Ok(_) => Check::ok("vault.transit_key", format!("{target}: encryption works")),
            Err(e) => Check::fail("vault.transit_key", format!("{target}: {e}")),
        }
        .data(json!({"mount": vcfg.transit_mount, "key": vcfg.transit_key})),
    );
    out
}

async fn token_check(vault: &Vault, broker: &TokenManager) -> Check {
    let status = broker.status();
    let policies = status.policies.join(",");
    match vault.token_lifetime().await {
        Ok(l) => {
            let data = json!({
                "ttl_secs": l.ttl,
                "period_secs": l.period,
                "explicit_max_ttl_secs": l.explicit_max_ttl,
                "renewable": l.renewable,
                "policies": l.policies,
            });
            let policies = l.policies.join(",");
            if l.ttl == 0 {
                return Check::ok("vault.token", format!("no TTL; policies {policies}")).data(data);
            }
            let kind = if l.period > 0 {
                format!("periodic {}", human_secs(l.period))
            } else {
                "not periodic".to_string()
            };
            let detail = format!("TTL {} ({kind}); policies {policies}", human_secs(l.ttl));
            if l.period == 0 && l.ttl < TOKEN_TTL_WARN_SECS {
                Check::warn("vault.token", detail).data(data)
            } else {
                Check::ok("vault.token", detail).data(data)
            }
        }
        Err(e) => Check::warn(
            "vault.token",
            format!("logged in (policies {policies}) but lookup-self failed: {e}"),
        ),
    }
}

async fn mount_check(vault: &Vault, name: &str, mount: &str, want: &str) -> Check {
    match vault.mount_info(mount).await {
        Ok(m) => {
            let version = m
                .options
                .as_ref()
                .and_then(|o| o.get("version"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let data = json!({"mount": mount, "type": m.kind, "version": version});
            if m.kind != want {
                return Check::fail(name, format!("{mount}/ is a {} mount, not {want}", m.kind))
                    .data(data);
            }
            if want == "kv" && version.as_deref() != Some("2") {
                return Check::fail(name, format!("{mount}/ is not KV version 2")).data(data);
            }
            let v = version.map(|v| format!(" v{v}")).unwrap_or_default();
            Check::ok(name, format!("{mount}/ ({want}{v})")).data(data)
        }
        // 403: the mount does not exist or the broker has no path on it.
        Err(e) => Check::fail(name, format!("{mount}/: {e}")).data(json!({"mount": mount})),
    }
}

// ---- etcd ---------------------------------------------------------------

async fn etcd_checks(cfg: &Config, opts: &Options) -> (Vec<Check>, Option<Etcd>) {
    let mut out = Vec::new();
    let endpoints = cfg.etcd.endpoints.clone();
    let mut probes = tokio::task::JoinSet::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let ecfg = cfg.etcd.clone();
        let ep = ep.clone();
        probes.spawn(async move { (i, Etcd::member_status(&ecfg, &ep, ETCD_TIMEOUT).await) });
    }
    let mut results: Vec<Option<Result<MemberStatus, EtcdError>>> =
        (0..endpoints.len()).map(|_| None).collect();
    while let Some(r) = probes.join_next().await {
        if let Ok((i, r)) = r {
            results[i] = Some(r);
        }
    }
    let n = endpoints.len();
    let quorum = n / 2 + 1;
    // A member that answers but sees no leader is cut off from the quorum.
    let up: Vec<&MemberStatus> = results
        .iter()
        .filter_map(|r| r.as_ref().and_then(|r| r.as_ref().ok()))
        .filter(|s| s.leader != 0)
        .collect();
    let quorum_holds = up.len() >= quorum;
    let down: Vec<&str> = endpoints
        .iter()
        .zip(&results)
        .filter(|(_, r)| !matches!(r, Some(Ok(s)) if s.leader != 0))
        .map(|(e, _)| e.as_str())
        .collect();
    let down_status = if quorum_holds {
        Status::Warn
    } else {
        Status::Fail
    };
    let leader_id = up.iter().map(|s| s.leader).max().unwrap_or(0);
    for (ep, r) in endpoints.iter().zip(&results) {
        let name = format!("etcd.member {ep}");
        out.push(match r {
            Some(Ok(s)) => {
                let data = serde_json::to_value(s).unwrap_or_default();
                if s.leader == 0 {
                    Check::new(&name, down_status, "answers but sees no leader").data(data)
                } else if !s.errors.is_empty() {
                    Check::warn(&name, format!("errors: {}", s.errors.join("; "))).data(data)
                } else {
                    let role = if s.member_id == s.leader {
                        "leader"
                    } else {
                        "follower"
                    };
                    Check::ok(
                        &name,
                        format!(
                            "{role}, raft index {}, term {}, db {} B, etcd {}",
                            s.raft_index, s.raft_term, s.db_size, s.version
                        ),
                    )
                    .data(data)
                }
            }
            Some(Err(e)) => Check::new(&name, down_status, format!("unreachable: {e}"))
                .data(json!({"endpoint": ep})),
            None => {
                Check::new(&name, down_status, "probe did not finish").data(json!({"endpoint": ep}))
            }
        });
    }
    let qdata = json!({"members": n, "up": up.len(), "quorum": quorum, "down": down});
    out.push(if n == 0 {
        Check::fail("etcd.quorum", "no endpoints configured")
    } else if down.is_empty() {
        Check::ok("etcd.quorum", format!("{n}/{n} members up")).data(qdata)
    } else if quorum_holds {
        Check::warn(
            "etcd.quorum",
            format!(
                "{}/{n} members up, quorum holds; down: {}",
                up.len(),
                down.join(", ")
            ),
        )
        .data(qdata)
    } else {
        Check::fail(
            "etcd.quorum",
            format!(
                "{}/{n} members up, quorum ({quorum}) lost; down: {}",
                up.len(),
                down.join(", ")
            ),
        )
        .data(qdata)
    });
    // Leader and lag are only meaningful among members that see a leader.
    let leaders: std::collections::BTreeSet<u64> = up.iter().map(|s| s.leader).collect();
    out.push(match leaders.len() {
        0 => Check::fail("etcd.leader", "no member sees a leader"),
        1 => {
            let ep = up
                .iter()
                .find(|s| s.member_id == leader_id)
                .map(|s| s.endpoint.as_str())
                .unwrap_or("a member not probed");
            Check::ok("etcd.leader", format!("member {leader_id:x} ({ep})"))
                .data(json!({"leader": leader_id, "endpoint": ep}))
        }
        _ => Check::warn(
            "etcd.leader",
            format!("members disagree on the leader: {leaders:x?}"),
        )
        .data(json!({"leaders": leaders})),
    });
    if up.is_empty() {
        out.push(Check::skipped("etcd.raft_lag", "no member up"));
        out.push(Check::skipped("etcd.db_size", "no member up"));
    } else {
        let max = up.iter().map(|s| s.raft_index).max().unwrap_or(0);
        let lags: Vec<(String, u64)> = up
            .iter()
            .map(|s| (s.endpoint.clone(), max - s.raft_index))
            .collect();
        let worst = lags.iter().map(|(_, l)| *l).max().unwrap_or(0);
        let data = json!({"max_raft_index": max, "lag": lags.iter()
            .map(|(e, l)| json!({"endpoint": e, "lag": l})).collect::<Vec<_>>()});
        out.push(if worst > RAFT_LAG_WARN {
            let behind: Vec<String> = lags
                .iter()
                .filter(|(_, l)| *l > RAFT_LAG_WARN)
                .map(|(e, l)| format!("{e} {l} behind"))
                .collect();
            Check::warn("etcd.raft_lag", behind.join(", ")).data(data)
        } else {
            Check::ok("etcd.raft_lag", format!("max lag {worst} entries")).data(data)
        });
        let size = up
            .iter()
            .map(|s| s.db_size.max(0) as u64)
            .max()
            .unwrap_or(0);
        let quota = opts.etcd_quota_bytes.max(1);
        let pct = size as f64 * 100.0 / quota as f64;
        let detail = format!("{size} B of quota {quota} B ({pct:.1} %)");
        let data = json!({"db_size": size, "quota": quota, "percent": pct});
        out.push(if pct >= 100.0 {
            Check::fail("etcd.db_size", detail).data(data)
        } else if pct >= 80.0 {
            Check::warn("etcd.db_size", detail).data(data)
        } else {
            Check::ok("etcd.db_size", detail).data(data)
        });
    }

    // One client over every endpoint for alarms, auth and the election key.
    // Only members that answered: etcd-client authenticates against the
    // endpoints it is given, and one dead endpoint makes connect fail.
    let mut ecfg = cfg.etcd.clone();
    if !up.is_empty() {
        ecfg.endpoints = up.iter().map(|s| s.endpoint.clone()).collect();
    }
    ecfg.connect_timeout_secs = ETCD_TIMEOUT.as_secs();
    ecfg.request_timeout_secs = ETCD_TIMEOUT.as_secs();
    let connect = async {
        if up.is_empty() {
            // No member sees a leader: every read would fail anyway.
            return Ok(Err(EtcdError::Unavailable("no member up".into())));
        }
        tokio::time::timeout(ETCD_TIMEOUT * 2, Etcd::connect(&ecfg)).await
    };
    let etcd = match connect.await {
        Ok(Ok(e)) => Some(e),
        Ok(Err(_)) if up.is_empty() => None,
        Ok(Err(e)) => {
            out.push(Check::fail("etcd.connect", e.to_string()));
            None
        }
        Err(_) => {
            out.push(Check::fail("etcd.connect", "timed out"));
            None
        }
    };
    let user = cfg.etcd.user.clone().unwrap_or_default();
    match &etcd {
        Some(etcd) => {
            out.push(
                match tokio::time::timeout(ETCD_TIMEOUT, etcd.alarms()).await {
                    Ok(Ok(alarms)) if alarms.is_empty() => Check::ok("etcd.alarms", "none"),
                    Ok(Ok(alarms)) => {
                        let bad = alarms.iter().any(|(_, a)| a == "NOSPACE" || a == "CORRUPT");
                        let list: Vec<String> = alarms
                            .iter()
                            .map(|(m, a)| format!("{a} on member {m:x}"))
                            .collect();
                        let data = json!({"alarms": alarms.iter()
                        .map(|(m, a)| json!({"member": m, "alarm": a})).collect::<Vec<_>>()});
                        Check::new(
                            "etcd.alarms",
                            if bad { Status::Fail } else { Status::Warn },
                            list.join(", "),
                        )
                        .data(data)
                    }
                    // etcd 3.4 lets any user list alarms; a cluster whose
                    // RBAC refuses it is not broken, only opaque.
                    Ok(Err(EtcdError::Denied(_))) => Check::warn(
                        "etcd.alarms",
                        format!("not permitted for etcd user `{user}`"),
                    ),
                    Ok(Err(e)) => Check::warn("etcd.alarms", e.to_string()),
                    Err(_) => Check::warn("etcd.alarms", "timed out"),
                },
            );
            // etcd refuses to authenticate a user while auth is disabled,
            // so a successful password login proves auth is on.
            out.push(if cfg.etcd.password_file.is_some() && !user.is_empty() {
                Check::ok("etcd.auth", format!("enabled (authenticated as `{user}`)"))
            } else {
                Check::warn(
                    "etcd.auth",
                    "unknown: no password user configured (client certificate only)",
                )
            });
        }
        None => {
            out.push(Check::skipped("etcd.alarms", "no etcd connection"));
            out.push(Check::skipped("etcd.auth", "no etcd connection"));
        }
    }
    (out, etcd)
}

// ---- certificates -------------------------------------------------------

/// One check per certificate file in the config; every PEM block is read.
pub fn cert_checks(cfg: &Config, now: i64) -> Vec<Check> {
    let files = [
        ("vault.ca_cert", cfg.vault.ca_cert.as_ref()),
        ("etcd.ca_cert", cfg.etcd.ca_cert.as_ref()),
        ("etcd.cert", cfg.etcd.cert.as_ref()),
    ];
    files
        .into_iter()
        .filter_map(|(key, path)| path.map(|p| cert_file_check(key, p, now)))
        .collect()
}

fn cert_file_check(key: &str, path: &std::path::Path, now: i64) -> Check {
    use x509_parser::pem::Pem;
    let name = format!("cert {key}");
    let shown = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Check::fail(&name, format!("cannot read {shown}: {e}")),
    };
    let mut certs = Vec::new();
    for pem in Pem::iter_from_buffer(&bytes) {
        let pem = match pem {
            Ok(p) => p,
            Err(e) => return Check::fail(&name, format!("{shown}: bad PEM: {e}")),
        };
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let x = match pem.parse_x509() {
            Ok(x) => x,
            Err(e) => return Check::fail(&name, format!("{shown}: bad certificate: {e}")),
        };
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| x.subject().to_string());
        let not_after = x.validity().not_after.timestamp();
        let status = if not_after <= now {
            Status::Fail
        } else if not_after - now < CERT_WARN_DAYS * 86_400 {
            Status::Warn
        } else {
            Status::Ok
        };
        certs.push((cn, not_after, status));
    }
    if certs.is_empty() {
        return Check::fail(&name, format!("{shown}: no certificate in the file"));
    }
    let worst = certs.iter().map(|c| c.2).max().unwrap_or(Status::Ok);
    let describe = |(cn, na, _): &(String, i64, Status)| {
        let when = if *na <= now {
            "expired".to_string()
        } else {
            format!("{} d left", (na - now) / 86_400)
        };
        format!("CN={cn} not_after {} ({when})", rfc3339(*na))
    };
    let detail = if worst == Status::Ok {
        // All fine: the one that expires first is the one to watch.
        let first = certs.iter().min_by_key(|c| c.1).expect("not empty");
        format!(
            "{} cert(s); first to expire: {}",
            certs.len(),
            describe(first)
        )
    } else {
        certs
            .iter()
            .filter(|c| c.2 != Status::Ok)
            .map(describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let data = json!({
        "file": shown,
        "certificates": certs.iter().map(|(cn, na, st)| json!({
            "cn": cn, "not_after": rfc3339(*na), "not_after_unix": na, "status": st,
        })).collect::<Vec<_>>(),
    });
    Check::new(&name, worst, detail).data(data)
}

// ---- leadership and the running service ----------------------------------

async fn leadership_check(cfg: &Config, etcd: Option<&Etcd>) -> Check {
    let Some(etcd) = etcd else {
        return Check::skipped("leadership", "no etcd connection");
    };
    let key = election_key(&cfg.etcd);
    match tokio::time::timeout(ETCD_TIMEOUT, etcd.get(&key)).await {
        Ok(Ok(Some(v))) => {
            let r = LeaderRecord::parse(&v);
            let since = if r.since > 0 {
                format!(" since {}", rfc3339(r.since as i64))
            } else {
                String::new()
            };
            Check::ok("leadership", format!("{}{since}", r.node))
                .data(json!({"node": r.node, "since": r.since}))
        }
        Ok(Ok(None)) if cfg.telegram.enabled => Check::warn(
            "leadership",
            format!("no leader ({key} absent): no `vaultgram run` holds the election"),
        ),
        Ok(Ok(None)) => Check::ok("leadership", "no leader (telegram disabled)"),
        Ok(Err(e)) => Check::warn("leadership", format!("{key}: {e}")),
        Err(_) => Check::warn("leadership", format!("{key}: timed out")),
    }
}

/// Operators the Telegram leader cannot address (no access hash: they
/// never wrote to the account, and no dialog names them): approval
/// requests and alerts do not reach them until they write once.
async fn reachability_check(cfg: &Config, etcd: Option<&Etcd>) -> Check {
    const NAME: &str = "telegram reachability";
    if !cfg.telegram.enabled {
        return Check::ok(NAME, "telegram disabled");
    }
    let Some(etcd) = etcd else {
        return Check::skipped(NAME, "no etcd connection");
    };
    let prefix = crate::notify::unreachable_key(&cfg.etcd.prefix, "");
    match tokio::time::timeout(ETCD_TIMEOUT, etcd.list_prefix(&prefix, 0, false)).await {
        Ok(Ok(entries)) => {
            let names: Vec<String> = entries
                .iter()
                .filter_map(|e| e.key.strip_prefix(&prefix).map(str::to_string))
                .collect();
            let data = json!({ "unreachable": names });
            if names.is_empty() {
                Check::ok(NAME, "every operator can be told of requests and alerts").data(data)
            } else {
                Check::warn(
                    NAME,
                    format!(
                        "not reachable in Telegram (never wrote to the userbot): {}; each should send it one message, e.g. /whoami",
                        names.join(", ")
                    ),
                )
                .data(data)
            }
        }
        Ok(Err(e)) => Check::warn(NAME, format!("{prefix}: {e}")),
        Err(_) => Check::warn(NAME, format!("{prefix}: timed out")),
    }
}

/// The userbot account's active authorizations, as the Telegram leader
/// last read them (`account.getAuthorizations`; doctor never uses the
/// session itself: a second user of one key gets it revoked). More than
/// the broker's own is worth a look: a stolen login shows up here.
async fn authorizations_check(cfg: &Config, etcd: Option<&Etcd>) -> Check {
    const NAME: &str = "telegram authorizations";
    if !cfg.telegram.enabled {
        return Check::ok(NAME, "telegram disabled");
    }
    let Some(etcd) = etcd else {
        return Check::skipped(NAME, "no etcd connection");
    };
    let key = format!("{}tg/authorizations", cfg.etcd.prefix);
    let v: Value = match tokio::time::timeout(ETCD_TIMEOUT, etcd.get(&key)).await {
        Ok(Ok(Some(v))) => serde_json::from_slice(&v).unwrap_or(Value::Null),
        Ok(Ok(None)) => {
            return Check::warn(
                NAME,
                "not read yet (no Telegram leader has started a client)",
            )
        }
        Ok(Err(e)) => return Check::warn(NAME, format!("{key}: {e}")),
        Err(_) => return Check::warn(NAME, format!("{key}: timed out")),
    };
    let all = v["authorizations"].as_array().cloned().unwrap_or_default();
    let fetched = v["fetched_at"].as_i64().unwrap_or(0);
    let list = all
        .iter()
        .map(|a| {
            format!(
                "{} ({}){}, active {}",
                a["device"].as_str().unwrap_or("?"),
                a["app"].as_str().unwrap_or("?"),
                if a["current"] == true {
                    " [the broker]"
                } else {
                    ""
                },
                rfc3339(a["active"].as_i64().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let detail = format!("{} active (read {}): {list}", all.len(), rfc3339(fetched));
    let data = json!({"authorizations": all, "fetched_at": fetched});
    if all.len() > 1 {
        Check::warn(
            NAME,
            format!("{detail} — more than the broker's own: end those you do not know in Telegram → Settings → Devices"),
        )
        .data(data)
    } else {
        Check::ok(NAME, detail).data(data)
    }
}

async fn telegram_check(cfg: &Config) -> Check {
    if !cfg.telegram.enabled {
        return Check::ok("telegram", "disabled in config");
    }
    let listen = &cfg.http.listen;
    let addr: std::net::SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            return Check::warn(
                "telegram",
                format!("http.listen `{listen}` is not an address"),
            )
        }
    };
    if addr.port() == 0 {
        return Check::warn(
            "telegram",
            "http.listen has port 0: the running service has no fixed address to ask",
        );
    }
    // A wildcard listen address is reached on loopback.
    let target = if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(lo, addr.port())
    } else {
        addr
    };
    let (code, body) = match http_get(target, "/readyz").await {
        Ok(r) => r,
        Err(e) => {
            return Check::warn(
                "telegram",
                format!("vaultgram run not reachable at {target}: {e}"),
            )
        }
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    readyz_verdict(&format!("/readyz at {target}"), code, &v)
}

/// Reads `run`'s `/readyz` answer. Only the leader runs the Telegram
/// client, so a follower that is not connected is fine.
fn readyz_verdict(what: &str, code: u16, v: &Value) -> Check {
    let connected = v.pointer("/telegram/connected").and_then(Value::as_bool);
    let last_update = v.pointer("/telegram/last_update").and_then(Value::as_u64);
    let leading = v.get("leading").and_then(Value::as_bool);
    let problem = v.pointer("/telegram/problem").and_then(Value::as_str);
    let failed: Vec<&str> = v
        .get("failed")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let data = json!({
        "http_status": code,
        "leading": leading,
        "connected": connected,
        "last_update": last_update,
        "failed": failed,
    });
    let mut detail = format!("{what}: HTTP {code}");
    if let Some(l) = leading {
        detail.push_str(if l { ", leading" } else { ", follower" });
    }
    if let Some(c) = connected {
        let _ = write!(detail, ", connected {c}");
    }
    if let Some(u) = last_update {
        let _ = write!(detail, ", last update {}", rfc3339(u as i64));
    }
    if let Some(p) = problem {
        let _ = write!(detail, ", problem: {p}");
    }
    if !failed.is_empty() {
        let _ = write!(detail, ", not ready: {}", failed.join(", "));
    }
    let leader_down = leading == Some(true) && connected == Some(false);
    // A server without /readyz (404) or without JSON is an older `run`.
    let status = if code == 200 && !leader_down && v.is_object() {
        Status::Ok
    } else {
        Status::Warn
    };
    Check::new("telegram", status, detail).data(data)
}

/// A bare HTTP/1.0 GET (the server closes after the answer): status code
/// and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        // Bounded: a misbehaving listener must not fill memory.
        s.take(1 << 20)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((code, buf[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: Status) -> Check {
        Check::new("x", status, "")
    }

    #[test]
    fn backup_age_is_the_newest_finished_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = |max| crate::config::BackupConfig {
            dir: Some(dir.path().to_path_buf()),
            max_age_secs: max,
        };
        let now = SystemTime::now();
        assert_eq!(
            backup_check(&crate::config::BackupConfig::default(), now).status,
            Status::Ok
        );
        let c = backup_check(&cfg(3600), now);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        assert!(c.detail.contains("no finished snapshot"), "{}", c.detail);
        // Unfinished (no .sha256) and foreign files do not count.
        std::fs::write(dir.path().join("etcd-20261201T000000Z.db"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        assert!(backup_check(&cfg(3600), now).detail.contains("no finished"));
        std::fs::write(dir.path().join("etcd-20261201T000000Z.db.sha256"), b"x").unwrap();
        let c = backup_check(&cfg(3600), now);
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        assert!(
            c.detail.contains("etcd: etcd-20261201T000000Z.db (1 bytes"),
            "{}",
            c.detail
        );
        // Two hours later the same file is past a one-hour limit.
        let later = now + Duration::from_secs(7200);
        let c = backup_check(&cfg(3600), later);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        assert!(c.detail.contains("older than 1h"), "{}", c.detail);
        let age = c.data["newest"]["etcd"]["age_secs"].as_u64().unwrap();
        assert!((7100..=7200).contains(&age), "{age}");
    }

    #[test]
    fn exit_code_is_the_worst_status() {
        let r = |v: Vec<Check>| Report { checks: v }.exit_code();
        assert_eq!(r(vec![]), 0);
        assert_eq!(r(vec![c(Status::Ok), c(Status::Ok)]), 0);
        assert_eq!(r(vec![c(Status::Ok), c(Status::Warn)]), 1);
        assert_eq!(r(vec![c(Status::Fail), c(Status::Warn)]), 2);
    }

    #[test]
    fn readyz_verdicts() {
        let ok = json!({"ready": true, "leading": true,
            "telegram": {"connected": true, "last_update": 1_800_000_000u64}});
        let c = readyz_verdict("r", 200, &ok);
        assert_eq!(c.status, Status::Ok, "{}", c.detail);
        assert!(c.detail.contains("leading") && c.detail.contains("2027-01-15"));
        let follower = json!({"leading": false, "telegram": {"connected": false}});
        assert_eq!(readyz_verdict("r", 200, &follower).status, Status::Ok);
        let down = json!({"leading": true, "telegram": {"connected": false, "problem": "x"}});
        let c = readyz_verdict("r", 200, &down);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("problem: x"));
        let not_ready = json!({"ready": false, "failed": ["vault"]});
        let c = readyz_verdict("r", 503, &not_ready);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("not ready: vault"));
        assert_eq!(readyz_verdict("r", 404, &Value::Null).status, Status::Warn);
    }

    #[tokio::test]
    async fn http_get_reads_status_and_body_and_reports_refusal() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /readyz HTTP/1.0\r\n"));
            s.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"ready\":false}")
                .await
                .unwrap();
        });
        let (code, body) = http_get(addr, "/readyz").await.unwrap();
        assert_eq!(code, 503);
        assert_eq!(body, b"{\"ready\":false}");
        // Nothing listens there any more.
        assert!(http_get(addr, "/readyz").await.is_err());
    }

    #[test]
    fn json_shape() {
        let v = Report {
            checks: vec![c(Status::Warn)],
        }
        .to_json();
        assert_eq!(v["status"], "warn");
        assert_eq!(v["checks"][0]["status"], "warn");
        assert_eq!(v["checks"][0]["name"], "x");
    }
}
