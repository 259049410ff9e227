//! Where approvals live: the records in etcd, their keys, and the
//! transactions that change them. Policy (who may approve, what a notice
//! says, what is audited) is the gate's, in `mod.rs`.
//!
//! # etcd layout (under `etcd.prefix`, e.g. `/vaultgram/`)
//!
//! - `approvals/pending/<ID>` — the request ([`Request`] JSON), attached to
//!   its own lease of `approvals.ttl_secs`: it disappears when it expires,
//!   and it survives restarts and failover because it lives only in etcd.
//! - `approvals/log/<ID>` — the same request plus its status (`pending`,
//!   `approved`, `denied`, `expired`), on a shared 7-day lease, so an
//!   expired request can be told from an unknown one.
//! - `approvals/slots/<requester>/<n>` — one key per pending request of a
//!   requester, on the request's lease (the per-operator cap).
//! - `approvals/grants/<requester>/<ID>` — a one-time grant ([`Grant`]
//!   JSON), leased with the rest of the request's TTL.
//! - `approvals/reviews/<ID>` — a break-glass run and its review
//!   ([`Review`] JSON), on the log's lease.
//! - `approvals/break-glass/<admin>/<n>` — one key per break-glass run, on
//!   a 24-hour lease (the per-day cap).
//! - `leases/approvals-log` — the shared lease of the log.
//!
//! Every change that someone should hear of writes its notification
//! queue records in the same transaction ([`Notice`]): announced once,
//! never a change without its message or a message without its change.
//! None of these records holds a secret.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_rfc3339_millis as now_rfc3339;
use crate::clock::unix_secs;
use crate::config::Config;
use crate::context::CommandError;
use crate::etcd::{Entry, Etcd, EtcdError, SharedLease};
use crate::notify::Notifier;

/// How long the approvals log remembers a request.
const LOG_RETENTION: Duration = Duration::from_secs(7 * 86_400);
const LOG_LEASE_REUSE: Duration = Duration::from_secs(86_400);

/// A request waiting for approval, as stored in etcd. No secret value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub requester: String,
    /// The command's name (`transit rotate`).
    pub command: String,
    pub target: Option<String>,
    /// The canonical command line (`crate::command::prepare`): what
    /// `/pending` shows and `/approve` runs.
    pub line: String,
    /// The request id of the command that filed it (audit trail).
    pub request_id: String,
    pub transport: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The lease the request was filed with.
    pub ttl_secs: u64,
    /// Wrong `/approve` codes so far (`MAX_WRONG_CODES` cancel it).
    #[serde(default)]
    pub wrong_codes: u32,
    /// Distinct approvals it needs (`approvals.quorum`).
    #[serde(default = "one")]
    pub quorum: u32,
    /// The admins who approved so far, in order (fewer than `quorum`).
    #[serde(default)]
    pub votes: Vec<String>,
    /// Why the requester asks (`-reason="…"`): shown escaped, never run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it does to what existed when it was filed
    /// (`command::Prepared::effect`); `/approve` refuses when that changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

fn one() -> u32 {
    1
}

impl Request {
    pub fn seconds_left(&self) -> u64 {
        self.expires_at.saturating_sub(unix_secs())
    }

    /// "1 of 2 approvals (dave)", for notices and `/pending`.
    pub fn tally(&self) -> String {
        let mut t = format!("{} of {} approvals", self.votes.len(), self.quorum);
        if !self.votes.is_empty() {
            t.push_str(&format!(" ({})", self.votes.join(", ")));
        }
        t
    }
}

/// What became of a request (`approvals/log/<ID>`'s `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl Status {
    /// As the log, the audit trail and the requester's notice say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
        }
    }
}

/// `approvals/log/<ID>`: a request and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(flatten)]
    pub request: Request,
    pub status: Status,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// `approvals/grants/<requester>/<ID>`: the requester may run `line` once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub requester: String,
    pub line: String,
    pub approved_by: String,
    pub expires_at: u64,
}

/// `approvals/reviews/<ID>`: a break-glass run and its review. Kept on
/// the log's lease (7 days).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Review {
    pub id: String,
    /// The admin who broke the glass.
    pub author: String,
    pub command: String,
    pub target: Option<String>,
    /// The canonical line that ran.
    pub line: String,
    pub reason: String,
    /// The request id of the run (its audit records carry it).
    pub request_id: String,
    pub at: String,
    /// Unix seconds: the review is due by then.
    pub due: u64,
    /// Unix seconds: the next reminder, while unreviewed.
    pub next_alert: u64,
    /// Reminders sent so far.
    #[serde(default)]
    pub reminders: u32,
    /// `ok` or `bad`, once reviewed.
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub reviewer: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// A message queued in the same transaction as the change it tells of.
pub struct Notice<'a> {
    pub kind: &'static str,
    pub to: Vec<&'a str>,
    pub text: String,
    pub expires_at: u64,
}

/// What etcd knows of a request ID.
pub enum Lookup {
    /// Still waiting.
    Pending(Request, Entry),
    /// Gone from `pending/`, remembered in the log.
    Logged(LogEntry, Entry),
    Unknown,
}

pub struct Store {
    etcd: Etcd,
    prefix: String,
    log_lease: SharedLease,
    /// `approvals.notify`: admins hear of new requests, requesters of
    /// their outcome, in Telegram.
    notifier: Option<Notifier>,
}

/// A short random ID (8 hex digits) that an admin can type.
pub fn new_id() -> Result<String, crate::ids::RandomError> {
    crate::ids::random_hex::<4>()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, CommandError> {
    serde_json::from_slice(bytes)
        .map_err(|_| CommandError::unavailable(format!("unreadable {what} record in etcd")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// `(key, value, lease)` as the etcd transactions take them.
type Put<'a> = (&'a str, &'a [u8], i64);

fn with_notes<'a>(
    mut puts: Vec<Put<'a>>,
    notes: &'a [(String, Vec<u8>)],
    lease: i64,
) -> Vec<Put<'a>> {
    puts.extend(notes.iter().map(|(k, v)| (k.as_str(), v.as_slice(), lease)));
    puts
}

impl Store {
    pub fn new(etcd: Etcd, cfg: &Config) -> Store {
        Store {
            etcd: etcd.clone(),
            prefix: format!("{}approvals/", cfg.etcd.prefix),
            log_lease: SharedLease::new(
                format!("{}leases/approvals-log", cfg.etcd.prefix),
                LOG_RETENTION,
                LOG_LEASE_REUSE,
            ),
            notifier: cfg
                .approvals
                .notify
                .then(|| Notifier::new(etcd, &cfg.etcd.prefix)),
        }
    }

    fn pending_key(&self, id: &str) -> String {
        format!("{}pending/{id}", self.prefix)
    }
    fn log_key(&self, id: &str) -> String {
        format!("{}log/{id}", self.prefix)
    }
    fn grants_prefix(&self, requester: &str) -> String {
        format!("{}grants/{requester}/", self.prefix)
    }
    /// Created in the same transaction as the request, on its lease: at
    /// most `max_pending` slots exist, so the cap holds even when two
    /// replicas file at once.
    fn slots_prefix(&self, requester: &str) -> String {
        format!("{}slots/{requester}/", self.prefix)
    }

    /// The queue records for `notice`; none when notifications are off.
    fn notes(&self, notice: Option<&Notice<'_>>) -> Result<Vec<(String, Vec<u8>)>, CommandError> {
        Ok(match (&self.notifier, notice) {
            (Some(n), Some(m)) => n.records(m.kind, &m.to, &m.text, m.expires_at)?,
            _ => Vec::new(),
        })
    }

    /// The shared leases a transaction's records ride on: the log's, and
    /// the notification queue's (0 when there is nothing to queue).
    async fn leases(&self, notes: &[(String, Vec<u8>)]) -> Result<(i64, i64), EtcdError> {
        let log = self.log_lease.get(&self.etcd).await?;
        let note = match &self.notifier {
            Some(n) if !notes.is_empty() => n.lease().await?,
            _ => 0,
        };
        Ok((log, note))
    }

    /// Runs `write` on the shared leases; when etcd says one is gone
    /// (revoked by hand, lost with a restore), once more on fresh ones.
    async fn with_leases<T, F, Fut>(
        &self,
        notes: &[(String, Vec<u8>)],
        write: F,
    ) -> Result<T, CommandError>
    where
        F: Fn((i64, i64)) -> Fut,
        Fut: Future<Output = Result<T, EtcdError>>,
    {
        Ok(
            crate::etcd::retry_on_lost_lease(|| self.leases(notes), || self.leases_lost(), write)
                .await?,
        )
    }

    /// After etcd refused a write because a shared lease is gone (either
    /// one may be): both are taken afresh on the retry.
    fn leases_lost(&self) {
        self.log_lease.invalidate();
        if let Some(n) = &self.notifier {
            n.lease_lost();
        }
    }

    /// The lowest free slot number of `requester` below `max`, if any.
    pub async fn free_slot(&self, requester: &str, max: u32) -> Result<Option<u32>, CommandError> {
        self.free_slot_under(&self.slots_prefix(requester), max)
            .await
    }

    /// The lowest number below `max` with no key `<prefix><n>`.
    async fn free_slot_under(&self, prefix: &str, max: u32) -> Result<Option<u32>, CommandError> {
        let taken: BTreeSet<u32> = self
            .etcd
            .list_prefix(prefix, i64::from(max) + 1, false)
            .await?
            .iter()
            .filter_map(|e| e.key.strip_prefix(prefix)?.parse().ok())
            .collect();
        Ok((0..max).find(|n| !taken.contains(n)))
    }

    /// Files `req` in `slot`: the request on a lease of its own TTL, its
    /// log entry, the slot and `notice`, in one transaction. `false`: the
    /// ID or the slot was taken meanwhile and nothing was written.
    pub async fn file(
        &self,
        req: &Request,
        slot: u32,
        notice: Option<&Notice<'_>>,
    ) -> Result<bool, CommandError> {
        let log = LogEntry {
            request: req.clone(),
            status: Status::Pending,
            by: None,
            updated_at: None,
        };
        let lease = self.etcd.lease_grant(req.ttl_secs).await?;
        let (pk, lk) = (self.pending_key(&req.id), self.log_key(&req.id));
        let sk = format!("{}{slot}", self.slots_prefix(&req.requester));
        let (pv, lv) = (encode(req), encode(&log));
        let notes = self.notes(notice)?;
        let puts = |(log_lease, note_lease)| {
            let own = vec![
                (pk.as_str(), pv.as_slice(), lease),
                (lk.as_str(), lv.as_slice(), log_lease),
                (sk.as_str(), req.id.as_bytes(), lease),
            ];
            with_notes(own, &notes, note_lease)
        };
        let created = self
            .with_leases(&notes, |leases| {
                let puts = puts(leases);
                async move { self.etcd.create_if_absent(&puts).await }
            })
            .await?;
        if !created {
            // The unused lease would expire by itself; free it now.
            self.revoke_quietly(lease).await;
        }
        Ok(created)
    }

    /// The requester's grant for exactly `line`, if there is one. It is
    /// only looked at here: [`Store::spend_grant`] spends it once the
    /// reply exists, so a refusal or a failed run after the approval does
    /// not waste the second admin's approval.
    pub async fn find_grant(
        &self,
        requester: &str,
        line: &str,
    ) -> Result<Option<Entry>, CommandError> {
        let grants = self
            .etcd
            .list_prefix(&self.grants_prefix(requester), 100, false)
            .await?;
        Ok(grants.into_iter().find(|e| {
            serde_json::from_slice::<Grant>(&e.value)
                .is_ok_and(|g| g.requester == requester && g.line == line)
        }))
    }

    /// Spends a grant found by [`Store::find_grant`] (compare and delete):
    /// `false` when a concurrent run spent it first, or it was withdrawn.
    pub async fn spend_grant(&self, e: &Entry) -> Result<bool, CommandError> {
        let spent = self
            .etcd
            .delete_if_unchanged(&e.key, e.mod_revision, None)
            .await?;
        if spent {
            self.revoke_quietly(e.lease).await;
        }
        Ok(spent)
    }

    /// Deletes every unused grant of `requester` (a suspension); how many.
    pub async fn withdraw_grants(&self, requester: &str) -> Result<usize, CommandError> {
        let grants = self
            .etcd
            .list_prefix(&self.grants_prefix(requester), 0, false)
            .await?;
        let mut n = 0;
        for e in grants {
            if self.etcd.delete(&e.key).await? {
                self.revoke_quietly(e.lease).await;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stores `grant`, valid for `secs`.
    pub async fn put_grant(&self, grant: &Grant, secs: u64) -> Result<(), CommandError> {
        let lease = self.etcd.lease_grant(secs).await?;
        let key = format!("{}{}", self.grants_prefix(&grant.requester), grant.id);
        self.etcd.put_leased(&key, encode(grant), lease).await?;
        Ok(())
    }

    pub async fn lookup(&self, id: &str) -> Result<Lookup, CommandError> {
        if let Some(e) = self.etcd.get_entry(&self.pending_key(id)).await? {
            return Ok(Lookup::Pending(decode(&e.value, "approval")?, e));
        }
        match self.etcd.get_entry(&self.log_key(id)).await? {
            Some(e) => Ok(Lookup::Logged(decode(&e.value, "approval log")?, e)),
            None => Ok(Lookup::Unknown),
        }
    }

    /// Every request still waiting (undecodable records skipped), at most
    /// `limit`.
    pub async fn pending_requests(
        &self,
        limit: i64,
    ) -> Result<Vec<(Request, Entry)>, CommandError> {
        Ok(self
            .etcd
            .list_prefix(&format!("{}pending/", self.prefix), limit, false)
            .await?
            .into_iter()
            .filter_map(|e| Some((serde_json::from_slice(&e.value).ok()?, e)))
            .collect())
    }

    /// Log entries still `pending` whose request's lease ran out: expiries
    /// nobody has recorded yet. Empty when etcd cannot say.
    pub async fn unrecorded_expiries(&self) -> Vec<(Entry, LogEntry)> {
        let Ok(entries) = self
            .etcd
            .list_prefix(&format!("{}log/", self.prefix), 1000, false)
            .await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let Ok(log) = decode::<LogEntry>(&e.value, "approval log") else {
                continue;
            };
            if log.status == Status::Pending
                && matches!(
                    self.etcd
                        .get_entry(&self.pending_key(&log.request.id))
                        .await,
                    Ok(None)
                )
            {
                out.push((e, log));
            }
        }
        out
    }

    /// Records an expiry once: whoever notices first wins the transaction
    /// (`true`), and only that one queues `notice`.
    pub async fn mark_expired(
        &self,
        e: &Entry,
        log: &LogEntry,
        notice: Option<&Notice<'_>>,
    ) -> bool {
        let mut done = log.clone();
        done.status = Status::Expired;
        done.updated_at = Some(now_rfc3339());
        let value = encode(&done);
        // No announcement without a notice record; the expiry is still recorded.
        let notes = self.notes(notice).unwrap_or_default();
        let commit = |notes, note_lease| {
            let puts = with_notes(
                vec![(e.key.as_str(), value.as_slice(), e.lease)],
                notes,
                note_lease,
            );
            async move {
                self.etcd
                    .commit_if_unchanged(&e.key, e.mod_revision, false, &puts)
                    .await
            }
        };
        match self
            .with_leases(&notes, |(_, note_lease)| commit(&notes, note_lease))
            .await
        {
            Ok(done) => done,
            // Without a queue lease the expiry is still recorded, unannounced.
            Err(_) if !notes.is_empty() => commit(&[], 0).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Takes the pending request (compare revision, delete), records
    /// `status` and `by` in the log and queues `notice`, in one
    /// transaction. `false`: someone else took it, or it expired,
    /// meanwhile.
    pub async fn take(
        &self,
        req: &Request,
        pending: &Entry,
        status: Status,
        by: &str,
        notice: Option<&Notice<'_>>,
    ) -> Result<bool, CommandError> {
        let log = encode(&LogEntry {
            request: req.clone(),
            status,
            by: Some(by.to_string()),
            updated_at: Some(now_rfc3339()),
        });
        let (pk, lk) = (self.pending_key(&req.id), self.log_key(&req.id));
        let notes = self.notes(notice)?;
        let puts = |(log_lease, note_lease)| {
            with_notes(
                vec![(lk.as_str(), log.as_slice(), log_lease)],
                &notes,
                note_lease,
            )
        };
        let rev = pending.mod_revision;
        let taken = self
            .with_leases(&notes, |leases| {
                let puts = puts(leases);
                let pk = pk.as_str();
                async move { self.etcd.commit_if_unchanged(pk, rev, true, &puts).await }
            })
            .await?;
        if taken {
            // The request's own lease has nothing left to expire.
            self.revoke_quietly(pending.lease).await;
        }
        Ok(taken)
    }

    /// Writes `value` over the record `entry` was read from (its lease
    /// kept), with `notice`, if nothing changed it since. `false`: another
    /// change came first (a vote, a decision, the expiry); read it again.
    pub async fn replace<T: Serialize>(
        &self,
        entry: &Entry,
        value: &T,
        notice: Option<&Notice<'_>>,
    ) -> Result<bool, CommandError> {
        let value = encode(value);
        let notes = self.notes(notice)?;
        self.with_leases(&notes, |(_, note_lease)| {
            let puts = with_notes(
                vec![(entry.key.as_str(), value.as_slice(), entry.lease)],
                &notes,
                note_lease,
            );
            async move {
                self.etcd
                    .commit_if_unchanged(&entry.key, entry.mod_revision, false, &puts)
                    .await
            }
        })
        .await
    }

    fn review_key(&self, id: &str) -> String {
        format!("{}reviews/{id}", self.prefix)
    }
    /// One key per break-glass run of `admin`, each on a 24-hour lease:
    /// at most `break_glass_per_day` exist.
    fn break_glass_prefix(&self, admin: &str) -> String {
        format!("{}break-glass/{admin}/", self.prefix)
    }

    /// Records a break-glass run of `review.author`: a free per-day slot,
    /// the review record and `notice`, in one transaction. `None`: all
    /// `max` slots of the last 24 hours are used.
    pub async fn file_break_glass(
        &self,
        review: &Review,
        max: u32,
        notice: &Notice<'_>,
    ) -> Result<Option<u32>, CommandError> {
        let prefix = self.break_glass_prefix(&review.author);
        let rk = self.review_key(&review.id);
        let rv = encode(review);
        let notes = self.notes(Some(notice))?;
        for _ in 0..5 {
            let Some(slot) = self.free_slot_under(&prefix, max).await? else {
                return Ok(None);
            };
            let lease = self.etcd.lease_grant(86_400).await?;
            let sk = format!("{prefix}{slot}");
            let created = self
                .with_leases(&notes, |(log_lease, note_lease)| {
                    let puts = with_notes(
                        vec![
                            (sk.as_str(), review.id.as_bytes(), lease),
                            (rk.as_str(), rv.as_slice(), log_lease),
                        ],
                        &notes,
                        note_lease,
                    );
                    async move { self.etcd.create_if_absent(&puts).await }
                })
                .await?;
            if created {
                return Ok(Some(slot));
            }
            self.revoke_quietly(lease).await;
        }
        Err(CommandError::unavailable(
            "could not record the break-glass run (concurrent runs); try again",
        ))
    }

    /// Whether `admin` has a break-glass run left in the last 24 hours.
    pub async fn break_glass_left(&self, admin: &str, max: u32) -> Result<bool, CommandError> {
        Ok(self
            .free_slot_under(&self.break_glass_prefix(admin), max)
            .await?
            .is_some())
    }

    pub async fn lookup_review(&self, id: &str) -> Result<Option<(Review, Entry)>, CommandError> {
        match self.etcd.get_entry(&self.review_key(id)).await? {
            Some(e) => Ok(Some((decode(&e.value, "break-glass review")?, e))),
            None => Ok(None),
        }
    }

    /// Every break-glass run still remembered (undecodable ones skipped).
    pub async fn reviews(&self) -> Result<Vec<(Review, Entry)>, CommandError> {
        Ok(self
            .etcd
            .list_prefix(&format!("{}reviews/", self.prefix), 1000, false)
            .await?
            .into_iter()
            .filter_map(|e| Some((serde_json::from_slice(&e.value).ok()?, e)))
            .collect())
    }

    /// Writes `counted` (one more wrong code) over the pending request if
    /// nothing changed it since `entry` was read. A lost race (another
    /// code, an approval, the expiry) only means this one is not counted
    /// twice.
    pub async fn count_wrong_code(&self, entry: &Entry, counted: &Request) {
        let _ = self
            .etcd
            .put_if_unchanged(
                &entry.key,
                entry.mod_revision,
                &encode(counted),
                entry.lease,
            )
            .await;
    }

    /// Operators the Telegram leader could not tell (they never wrote to
    /// the userbot).
    pub async fn unreachable(&self) -> Vec<String> {
        match &self.notifier {
            Some(n) => n.unreachable().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    async fn revoke_quietly(&self, lease: i64) {
        if lease != 0 {
            if let Err(e) = self.etcd.lease_revoke(lease).await {
                tracing::debug!(error = %e, "lease not revoked (it expires by itself)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_eight_hex_digits() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn notes_ride_on_their_own_lease() {
        let notes = vec![("q/1".to_string(), b"n".to_vec())];
        let puts = with_notes(vec![("log/a", b"l".as_slice(), 7)], &notes, 9);
        assert_eq!(
            puts,
            vec![("log/a", b"l".as_slice(), 7), ("q/1", b"n".as_slice(), 9)]
        );
    }
}
