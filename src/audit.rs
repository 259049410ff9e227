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

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::etcd::{Etcd, SharedLease};
use crate::records::audit::AuditRecord;

/// How long records are kept in etcd (upper bound).
pub const RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// How long one retention lease is reused before a new one is granted.
const LEASE_REUSE: Duration = Duration::from_secs(86_400);
/// An audit write never holds a command up longer than this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
            record_key(rec.at_nanos(), &rec.request_id)
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
    pub async fn last(&self, n: u16) -> Result<Vec<AuditRecord>, crate::etcd::EtcdError> {
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

impl crate::context::AuditTrail for AuditLog {
    fn record(&self, rec: AuditRecord) -> crate::context::BoxFuture<'_, ()> {
        Box::pin(AuditLog::record(self, rec))
    }

    fn last(
        &self,
        n: u16,
    ) -> crate::context::BoxFuture<'_, Result<Vec<AuditRecord>, crate::etcd::EtcdError>> {
        Box::pin(AuditLog::last(self, n))
    }
}
