//! The broker's own audit trail: one record per command — time, request
//! id, operator, transport, command name, target, result kind; never a
//! value or a secret-bearing argument.
//!
//! Each record is a `tracing` line (target `vaultgram::audit`) and a JSON
//! value in etcd under `<prefix>audit/<unix nanos, 20 digits>-<request id>`,
//! so keys sort by time and `/audit N` (a descending range read with a
//! limit) works across restarts and replicas. Retention is bounded by a
//! shared 7-day lease, re-granted daily ([`SharedLease`]): a record lives
//! 6 to 7 days. A failed etcd write never fails the command: it is logged
//! as a warning (without the record's content) and the command goes on.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Role};
use crate::dispatch::{CommandError, CommandResult, Ctx, Transport};
use crate::etcd::{Etcd, SharedLease};

/// How long records are kept in etcd (upper bound).
pub const RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// How long one retention lease is reused before a new one is granted.
const LEASE_REUSE: Duration = Duration::from_secs(86_400);
/// An audit write never holds a command up longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// `/audit` without N.
pub const DEFAULT_N: u16 = 20;
/// `/audit N` upper bound.
pub const MAX_N: u16 = 1000;
/// Records per `/audit` page: one Telegram message.
const PAGE: usize = 20;

/// One audit record.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    pub operator: String,
    pub transport: String,
    pub command: String,
    pub target: Option<String>,
    /// `ok`, an error kind, or `ignored` (unknown sender); for the
    /// lifecycle of an approval-gated request also `approved`, `denied`,
    /// `expired`.
    pub result: String,
    /// The admin who approved (or denied) the request this record is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// `time` in nanoseconds since the epoch: orders the etcd keys exactly
    /// as `time` orders the records.
    #[serde(skip)]
    at_nanos: u128,
}

impl AuditRecord {
    pub fn new(
        request_id: &str,
        operator: &str,
        transport: Transport,
        command: &str,
        target: Option<String>,
        result: &str,
    ) -> AuditRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        AuditRecord {
            time: rfc3339(now),
            at_nanos: now.as_nanos(),
            request_id: request_id.to_string(),
            operator: operator.to_string(),
            transport: transport.as_str().to_string(),
            command: command.to_string(),
            target,
            result: result.to_string(),
            approved_by: None,
        }
    }

    /// Names the second admin of an approval-gated request.
    pub fn approved_by(mut self, admin: &str) -> AuditRecord {
        self.approved_by = Some(admin.to_string());
        self
    }

    /// One line for `/audit`.
    /// One line for `/audit`. Every field is escaped on its own: a record
    /// (written by any version, or by anyone with etcd access) cannot draw
    /// a line of its own or hide part of one.
    pub fn render(&self) -> String {
        use crate::text::escape_line as e;
        let mut line = format!(
            "{} {} {} ({}) /{} {} -> {}",
            e(&self.time),
            e(&self.request_id),
            e(&self.operator),
            e(&self.transport),
            e(&self.command),
            e(self.target.as_deref().unwrap_or("-")),
            e(&self.result)
        );
        if let Some(a) = &self.approved_by {
            line.push_str(&format!(" (by {})", e(a)));
        }
        line
    }
}

/// Now as RFC 3339 (UTC, milliseconds).
pub fn now_rfc3339() -> String {
    rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// A time since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(since_epoch: Duration) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since_epoch).to_string()
}

/// Writes audit records to the log and to etcd.
///
/// The log line is written before `record` returns. The etcd copy (what
/// `/audit` reads) goes through a queue and one writer task, so a command
/// does not wait for an etcd write — three fsyncs on a replicated
/// cluster, several times the cost of the Vault read itself. `flush`
/// waits for the queue; `/audit`, the console's end and `run`'s shutdown
/// call it, so nothing queued is lost on an orderly exit.
pub struct AuditLog {
    etcd: Etcd,
    prefix: String,
    queue: mpsc::Sender<Job>,
}

enum Job {
    Write {
        key: String,
        value: Vec<u8>,
        request_id: String,
    },
    Flush(oneshot::Sender<()>),
}

/// Records waiting for etcd; past this, records stay in the log only.
const QUEUE: usize = 4096;

impl AuditLog {
    /// Starts the writer task (needs a Tokio runtime).
    pub fn new(etcd: Etcd, cfg: &Config) -> AuditLog {
        let lease = SharedLease::new(
            format!("{}leases/audit", cfg.etcd.prefix),
            RETENTION,
            LEASE_REUSE,
        );
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(etcd.clone(), lease, rx));
        AuditLog {
            etcd,
            prefix: format!("{}audit/", cfg.etcd.prefix),
            queue,
        }
    }

    pub async fn record(&self, rec: AuditRecord) {
        tracing::info!(
            target: "vaultgram::audit",
            request_id = %rec.request_id,
            operator = %rec.operator,
            transport = %rec.transport,
            command = %rec.command,
            target_path = rec.target.as_deref().unwrap_or("-"),
            result = %rec.result,
            approved_by = rec.approved_by.as_deref().unwrap_or("-"),
            "audit"
        );
        let key = format!(
            "{}{}",
            self.prefix,
            record_key(rec.at_nanos, &rec.request_id)
        );
        let value = match serde_json::to_vec(&rec) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "audit record not serialisable");
                return;
            }
        };
        let job = Job::Write {
            key,
            value,
            request_id: rec.request_id.clone(),
        };
        if self.queue.try_send(job).is_err() {
            tracing::warn!(
                request_id = %rec.request_id,
                "audit queue full or closed: record kept in the log only"
            );
        }
    }

    /// Waits until every record queued so far is written (or given up on).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Job::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The last `n` records, oldest first.
    pub async fn last(&self, n: u16) -> Result<Vec<AuditRecord>, CommandError> {
        // Include this process's own most recent records.
        self.flush().await;
        let entries = self
            .etcd
            .list_prefix(&self.prefix, i64::from(n), true)
            .await?;
        let mut out: Vec<AuditRecord> = entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect();
        out.reverse();
        Ok(out)
    }
}

/// Records per etcd transaction: under load the queue drains in batches
/// (one round of fsyncs for up to 64 records) instead of one write per
/// command, so the etcd copy keeps up and a shutdown flush is short.
const BATCH: usize = 64;

/// The one task that writes queued records to etcd, in order, batched.
async fn writer(etcd: Etcd, lease: SharedLease, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Flush(done) => flushes.push(done),
                Job::Write {
                    key,
                    value,
                    request_id,
                } => {
                    batch.push((key, value));
                    ids.push(request_id);
                }
            }
            // A flush waits for the records queued before it: stop there.
            if batch.len() < BATCH && flushes.is_empty() {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, lease.put_many(&etcd, &batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(
                    request_ids = %ids.join(","),
                    error = %e,
                    "audit records not written to etcd (kept in the log only)"
                ),
                Err(_) => tracing::warn!(
                    request_ids = %ids.join(","),
                    "audit records not written to etcd: timed out (kept in the log only)"
                ),
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// `<unix nanos, 20 digits>-<request id>`: keys sort by the records'
/// `time` (taken when the record was made, not when it was written); the
/// request id keeps two records of the same nanosecond apart. Anything but
/// `[0-9A-Za-z_-]` in the id is replaced (it is ours, but keys must stay
/// one path segment).
fn record_key(at_nanos: u128, request_id: &str) -> String {
    let nanos = if at_nanos == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    } else {
        at_nanos
    };
    let rid: String = request_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{nanos:020}-{rid}")
}

/// `/audit [N]` (admins): the last N records (default 20, at most 500),
/// oldest first, one line each.
pub async fn execute_audit(ctx: &Ctx<'_>, n: Option<u16>, page: Option<u32>) -> CommandResult {
    if ctx.op.role != Role::Admin {
        return Err(CommandError::denied("/audit is for admins"));
    }
    let n = n.unwrap_or(DEFAULT_N).clamp(1, MAX_N);
    let records = ctx.app.audit.last(n).await?;
    // The text shows one page (page 1: the newest), oldest first within
    // it; `data` keeps all N for scripts.
    let paging = crate::command::ListArgs { page, prefix: None };
    let mut shown = paging.paginate((0..records.len()).rev().collect(), PAGE)?;
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
    #[test]
    fn rfc3339_shape() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
