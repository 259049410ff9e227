//! Messages from the broker to operators' private Telegram chats: approval
//! requests to the admins who may approve them, outcomes to requesters,
//! security alerts to every admin.
//!
//! Any replica or transport queues one etcd record per recipient, in the
//! same transaction as the state change it reports where there is one
//! (a request filed, approved, denied, expired). Only the Telegram leader
//! delivers (`transport::telegram`): it sends, then deletes the record
//! (guarded). Each record carries its own `random_id`, which the leader
//! passes to `messages.sendMessage`; Telegram refuses a second message
//! with the same id (`RANDOM_ID_DUPLICATE`), so a record sent by a leader
//! that died before deleting it is not sent twice by the next one. A
//! failed send is retried with backoff until `expires_at`, then dropped
//! with an audit record.
//!
//! etcd layout (under `etcd.prefix`):
//! - `notify/q/<ms>-<rand>` — a [`Notice`] (never a secret), on a shared
//!   1-day lease.
//! - `notify/unreachable/<operator>` — the leader could not address this
//!   operator (the userbot has no access hash for them: they never wrote
//!   to it); `/pending` shows it. Removed by the next delivery to them.
//! - `leases/notify` — the shared lease's id.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::unix_secs;
use crate::etcd::{Etcd, EtcdError, SharedLease};
use crate::ids::RandomError;

/// Why a notice was not queued.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// One message for one operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    /// `approval_request`, `approval_outcome`, `security`.
    pub kind: String,
    /// The operator's name (its Telegram id comes from the config).
    pub to: String,
    pub text: String,
    /// Unix seconds after which it is dropped undelivered.
    pub expires_at: u64,
    /// Telegram's idempotency key for this message.
    pub random_id: i64,
    #[serde(default)]
    pub attempts: u32,
    /// Unix ms before which no retry is made.
    #[serde(default)]
    pub not_before_ms: u64,
}

impl Notice {
    /// The next attempt after a failure: 2, 4, 8 … 60 s.
    pub fn retry_later(&mut self, now_ms: u64) {
        self.attempts += 1;
        let secs = 1u64 << self.attempts.min(6);
        self.not_before_ms = now_ms + secs.min(60) * 1000;
    }
}

const LEASE_TTL: Duration = Duration::from_secs(86_400);
const LEASE_REUSE: Duration = Duration::from_secs(3_600);

pub struct Notifier {
    etcd: Etcd,
    prefix: String,
    lease: SharedLease,
}

/// Where the queue lives.
pub fn queue_prefix(etcd_prefix: &str) -> String {
    format!("{etcd_prefix}notify/q/")
}

pub fn unreachable_key(etcd_prefix: &str, operator: &str) -> String {
    format!("{etcd_prefix}notify/unreachable/{operator}")
}

impl Notifier {
    pub fn new(etcd: Etcd, etcd_prefix: &str) -> Notifier {
        Notifier {
            etcd,
            prefix: etcd_prefix.to_string(),
            lease: SharedLease::new(
                format!("{etcd_prefix}leases/notify"),
                LEASE_TTL,
                LEASE_REUSE,
            ),
        }
    }

    /// The queue records for `text` to each of `to`, to be written by the
    /// caller (in its own transaction) with [`lease`](Self::lease).
    pub fn records(
        &self,
        kind: &str,
        to: &[&str],
        text: &str,
        expires_at: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, RandomError> {
        let q = queue_prefix(&self.prefix);
        to.iter()
            .map(|op| {
                // A repeated `random_id` would make Telegram drop the
                // second notice as a duplicate: no notice without one.
                let random_id = (crate::ids::random_u64()? | 1) as i64;
                let n = Notice {
                    kind: kind.into(),
                    to: (*op).into(),
                    text: text.into(),
                    expires_at,
                    // Telegram wants a non-zero 64-bit id.
                    random_id,
                    attempts: 0,
                    not_before_ms: 0,
                };
                let key = format!(
                    "{q}{:015}-{:016x}",
                    crate::clock::unix_ms(),
                    crate::ids::random_u64()?
                );
                Ok((key, serde_json::to_vec(&n).unwrap_or_default()))
            })
            .collect()
    }

    /// The shared lease queue records live on.
    pub async fn lease(&self) -> Result<i64, EtcdError> {
        self.lease.get(&self.etcd).await
    }

    /// After a write refused because the shared lease is gone.
    pub fn lease_lost(&self) {
        self.lease.invalidate();
    }

    /// Queues `text` for each of `to` (no state change to go with it).
    pub async fn queue(
        &self,
        kind: &str,
        to: &[&str],
        text: &str,
        expires_at: u64,
    ) -> Result<(), NotifyError> {
        if to.is_empty() {
            return Ok(());
        }
        let items = self.records(kind, to, text, expires_at)?;
        Ok(self.lease.put_many(&self.etcd, &items).await?)
    }

    /// Operators the leader could not address, by name.
    pub async fn unreachable(&self) -> Result<Vec<String>, EtcdError> {
        let p = unreachable_key(&self.prefix, "");
        Ok(self
            .etcd
            .list_prefix(&p, 200, false)
            .await?
            .into_iter()
            .filter_map(|e| e.key.strip_prefix(&p).map(str::to_string))
            .collect())
    }
}

/// Seconds from now, for texts.
pub fn expires_in(expires_at: u64) -> u64 {
    expires_at.saturating_sub(unix_secs())
}
