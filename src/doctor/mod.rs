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

use std::time::SystemTime;

use crate::config::Config;

mod certs;
mod deployment;
mod etcd;
mod report;
mod service;
mod vault;

pub use certs::cert_checks;
use report::unix_now;
pub use report::{Check, Options, Report, Status, DEFAULT_ETCD_QUOTA_BYTES};

/// Runs every check. Never fails: a failure is a check.
pub async fn run(cfg: &Config, opts: &Options) -> Report {
    let mut checks = Vec::new();
    checks.extend(vault::checks(cfg).await);
    let (etcd_checks, etcd) = etcd::checks(cfg, opts).await;
    checks.extend(etcd_checks);
    checks.extend(cert_checks(cfg, unix_now()));
    checks.push(service::leadership_check(cfg, etcd.as_ref()).await);
    checks.push(service::telegram_check(cfg).await);
    checks.push(service::reachability_check(cfg, etcd.as_ref()).await);
    checks.push(service::authorizations_check(cfg, etcd.as_ref()).await);
    checks.push(deployment::confinement_check(cfg).await);
    checks.push(deployment::backup_check(&cfg.backup, SystemTime::now()));
    Report { checks }
}

#[cfg(test)]
mod tests {
    use super::deployment::backup_check;
    use super::service::{http_get, readyz_verdict};
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;

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
