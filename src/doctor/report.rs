//! The report `doctor` prints: checks, their verdicts, the thresholds.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

/// etcd's default backend quota (`--quota-backend-bytes`).
pub const DEFAULT_ETCD_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Per-member connect timeout.
pub(super) const ETCD_TIMEOUT: Duration = Duration::from_secs(2);
pub(super) const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// A non-periodic broker token with less left than this cannot be trusted
/// to survive until the renewer's next attempt.
pub(super) const TOKEN_TTL_WARN_SECS: u64 = 5 * 60;
pub(super) const RAFT_LAG_WARN: u64 = 1000;
pub(super) const CERT_WARN_DAYS: i64 = 30;

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
    pub(super) fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            data: Value::Null,
        }
    }

    pub(super) fn data(mut self, data: Value) -> Check {
        self.data = data;
        self
    }

    pub(super) fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, detail)
    }

    pub(super) fn warn(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Warn, detail)
    }

    pub(super) fn fail(name: &str, detail: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, detail)
    }

    /// A check that could not run because another one failed (which
    /// carries the `fail`); it says why.
    pub(super) fn skipped(name: &str, why: &str) -> Check {
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

pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn human_secs(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
