//! Containing a stolen operator account (`[security]`): step-up unlock
//! with the operator's own TOTP, suspension, the reveal budget, and
//! alerts.
//!
//! Everything lives in etcd, so every replica and every transport sees the
//! same state at once and it survives failover:
//!
//! - `security/suspended/<op>` — `{since, by, reason}`; no lease (only
//!   `/operator resume` ends it).
//! - `security/unlock/<op>` — `{until}`, on a lease of `unlock_ttl_secs`.
//! - `security/failures/<op>` — wrong unlock codes in a row, on a 1-day
//!   lease; reset by a right one.
//! - `security/reveal/<op>/<window>` — secret-bearing replies in one
//!   window of `reveal_window_secs`, on a lease of two windows.
//! - `security/tokens/<op>/<accessor>` — the accessor of every child token
//!   minted for the operator, on a lease of the token's TTL, so a
//!   suspension revokes them in Vault from any replica. An accessor can
//!   look a token up or revoke it, never use it.
//!
//! Alerts (`context::Services::alert`: audit record, metric, WARN line)
//! reach every admin's private chat through [`crate::notify`]; the
//! [`Event`] kinds and the admins to tell are defined here.
//!
//! No value here is a secret: codes are checked by Vault and never stored,
//! reasons and texts are what operators typed or what we composed.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{SecurityConfig, StepUp};
use crate::etcd::{unix_secs, Entry, Etcd, EtcdError};

/// Why and since when an operator is suspended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Suspension {
    pub since: u64,
    pub by: String,
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct Unlock {
    until: u64,
}

/// The kinds of security event (metric label, audit command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Suspend,
    Resume,
    AutoSuspend,
    BudgetExceeded,
    UnlockFailed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Suspend => "suspend",
            Event::Resume => "resume",
            Event::AutoSuspend => "auto_suspend",
            Event::BudgetExceeded => "budget_exceeded",
            Event::UnlockFailed => "unlock_failed",
        }
    }
}

const FAILURES_TTL: u64 = 24 * 3600;
/// How long a command waits for its new token to be recorded in etcd.
const RECORD_WAIT: Duration = Duration::from_secs(1);

pub struct Security {
    etcd: Etcd,
    prefix: String,
    /// Child tokens minted while etcd was unreachable: recorded as soon as
    /// it answers again, revoked by a suspension handled here meanwhile.
    untracked: std::sync::Mutex<Vec<(String, String, Duration)>>,
    /// The last value written to each counter (see `add`).
    counters: std::sync::Mutex<HashMap<String, Entry>>,
    /// Reveals reserved by this process and not yet handed out: operator →
    /// (window, how many, the next block) (see `count_reveal`).
    reserved: std::sync::Mutex<HashMap<String, (u64, u32, u32)>>,
    reserve_ahead: std::sync::atomic::AtomicBool,
    reserving: tokio::sync::Mutex<()>,
    /// Who gets the alerts in Telegram.
    admins: Vec<String>,
    pub cfg: SecurityConfig,
}

/// What the reveal budget says to one more secret-bearing reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    Allowed,
    /// The first one over the budget in this window (alert).
    FirstOver,
    Over,
}

fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Option<T> {
    serde_json::from_slice(v).ok()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Security {
    pub fn new(
        etcd: Etcd,
        etcd_prefix: &str,
        cfg: SecurityConfig,
        admins: Vec<String>,
    ) -> Security {
        Security {
            etcd,
            prefix: format!("{etcd_prefix}security/"),
            untracked: std::sync::Mutex::new(Vec::new()),
            counters: std::sync::Mutex::new(HashMap::new()),
            reserved: std::sync::Mutex::new(HashMap::new()),
            reserving: tokio::sync::Mutex::new(()),
            reserve_ahead: std::sync::atomic::AtomicBool::new(false),
            admins,
            cfg,
        }
    }

    fn key(&self, what: &str, op: &str) -> String {
        format!("{}{what}/{op}", self.prefix)
    }

    /// Checked before every command: a serializable read, so it costs no
    /// quorum round and still answers while quorum is lost.
    pub async fn suspension(&self, op: &str) -> Result<Option<Suspension>, EtcdError> {
        Ok(self
            .etcd
            .get_local(&self.key("suspended", op))
            .await?
            .and_then(|v| decode(&v)))
    }

    /// Records a suspension; `false` when the operator already was.
    pub async fn suspend(&self, op: &str, by: &str, reason: &str) -> Result<bool, EtcdError> {
        let s = Suspension {
            since: unix_secs(),
            by: by.into(),
            reason: reason.into(),
        };
        let key = self.key("suspended", op);
        let created = self
            .etcd
            .create_if_absent(&[(key.as_str(), &encode(&s), 0)])
            .await?;
        // Whatever else: the unlock window ends now.
        self.etcd.delete(&self.key("unlock", op)).await?;
        Ok(created)
    }

    /// Ends a suspension; `false` when there was none.
    pub async fn resume(&self, op: &str) -> Result<bool, EtcdError> {
        let gone = self.etcd.delete(&self.key("suspended", op)).await?;
        self.etcd.delete(&self.key("failures", op)).await?;
        Ok(gone)
    }

    /// Unix seconds until which `op` is unlocked, if it is.
    pub async fn unlocked_until(&self, op: &str) -> Result<Option<u64>, EtcdError> {
        Ok(self
            .etcd
            .get(&self.key("unlock", op))
            .await?
            .and_then(|v| decode::<Unlock>(&v))
            .map(|u| u.until)
            .filter(|&u| u > unix_secs()))
    }

    pub async fn unlock(&self, op: &str) -> Result<u64, EtcdError> {
        let ttl = self.cfg.unlock_ttl_secs;
        let until = unix_secs() + ttl;
        let lease = self.etcd.lease_grant(ttl).await?;
        self.etcd
            .put_leased(&self.key("unlock", op), encode(&Unlock { until }), lease)
            .await?;
        self.etcd.delete(&self.key("failures", op)).await?;
        Ok(until)
    }

    /// Ends the unlock window; `false` when there was none.
    pub async fn lock(&self, op: &str) -> Result<bool, EtcdError> {
        self.etcd.delete(&self.key("unlock", op)).await
    }

    /// One more wrong unlock code in a row; returns how many now.
    pub async fn add_failure(&self, op: &str) -> Result<u32, EtcdError> {
        self.increment(&self.key("failures", op), FAILURES_TTL)
            .await
    }

    /// Counts one secret-bearing reply of `op` in the current window
    /// against `reveal_budget`.
    ///
    /// The etcd counter holds what every process has *reserved*. A
    /// `vaultgram run` (see [`Security::reserve_ahead`]) takes blocks in
    /// one compare-and-swap and hands them out locally, so most reveals
    /// cost no etcd round trip (measured: one per reveal was the largest
    /// stage of `/kv get`, docs/PERFORMANCE.md). Blocks start at one and
    /// double with use, up to a tenth of the budget, so a replica never
    /// holds more unused than it has handed out. The sum never exceeds the
    /// budget; a block left unused by a replica that stopped leading, or
    /// restarted, only makes the limit stricter. Other processes (the
    /// console) reserve one at a time, exactly as counted before.
    pub async fn count_reveal(&self, op: &str) -> Result<Reveal, EtcdError> {
        let w = self.cfg.reveal_window_secs.max(1);
        let window = unix_secs() / w;
        if self.take_reserved(op, window) {
            return Ok(Reveal::Allowed);
        }
        // One reservation at a time: concurrent reveals wait for it rather
        // than each reserving a block.
        let _one = self.reserving.lock().await;
        if self.take_reserved(op, window) {
            return Ok(Reveal::Allowed);
        }
        let budget = self.cfg.reveal_budget;
        let block = if self
            .reserve_ahead
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let grown = self
                .reserved()
                .get(op)
                .filter(|r| r.0 == window)
                .map_or(1, |r| r.2);
            grown.min(budget / 10).max(1)
        } else {
            1
        };
        let key = format!("{}reveal/{op}/{window}", self.prefix);
        // Below the budget: up to a block. At or over it: one more, so
        // that the first refusal (budget + 1) is seen exactly once.
        let (before, after) = self
            .add(&key, 2 * w, |n| {
                if n < budget {
                    n + block.min(budget - n)
                } else {
                    n.saturating_add(1)
                }
            })
            .await?;
        if after <= budget {
            let mut held = self.reserved();
            if held.len() >= 1024 {
                held.retain(|_, r| r.0 == window);
            }
            held.insert(
                op.to_string(),
                (window, after - before - 1, block.saturating_mul(2)),
            );
            return Ok(Reveal::Allowed);
        }
        Ok(if after == budget + 1 {
            Reveal::FirstOver
        } else {
            Reveal::Over
        })
    }

    /// Takes one reveal reserved for `op` in `window`, if any is left.
    fn take_reserved(&self, op: &str, window: u64) -> bool {
        match self.reserved().get_mut(op) {
            Some((w, left, _)) if *w == window && *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u32, u32)>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets this process reserve reveals in growing blocks (`vaultgram
    /// run`: long-lived, where each etcd round trip per reveal counted).
    pub fn reserve_ahead(&self) {
        self.reserve_ahead
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A counter under compare-and-swap, so two replicas never lose a
    /// count; a fresh key gets its own lease of `ttl`. Returns the count.
    async fn increment(&self, key: &str, ttl: u64) -> Result<u32, EtcdError> {
        Ok(self.add(key, ttl, |n| n.saturating_add(1)).await?.1)
    }

    /// Replaces counter `key`'s value n by `next(n)` (absent: 0) under
    /// compare-and-swap; `(n, next(n))`. The last value this process
    /// wrote is tried first: one etcd round trip while no other replica
    /// changes the same key.
    async fn add(
        &self,
        key: &str,
        ttl: u64,
        next: impl Fn(u32) -> u32,
    ) -> Result<(u32, u32), EtcdError> {
        let cached = self.counters().get(key).cloned();
        let mut seen = match cached {
            Some(e) => Some(e),
            None => self.etcd.get_entry(key).await?,
        };
        for _ in 0..8 {
            match seen {
                None => {
                    let first = next(0);
                    let lease = self.etcd.lease_grant(ttl).await?;
                    if self
                        .etcd
                        .create_if_absent(&[(key, first.to_string().as_bytes(), lease)])
                        .await?
                    {
                        return Ok((0, first));
                    }
                    seen = self.etcd.get_entry(key).await?;
                }
                Some(e) => {
                    let n: u32 = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let value = next(n).to_string().into_bytes();
                    match self
                        .etcd
                        .put_if_revision(key, e.mod_revision, &value, e.lease)
                        .await?
                    {
                        Ok(mod_revision) => {
                            let mut counters = self.counters();
                            // Old windows' keys are never used again.
                            if counters.len() >= 1024 {
                                counters.clear();
                            }
                            counters.insert(
                                key.to_string(),
                                Entry {
                                    value,
                                    mod_revision,
                                    ..e
                                },
                            );
                            return Ok((n, next(n)));
                        }
                        Err(now) => seen = now,
                    }
                }
            }
        }
        self.counters().remove(key);
        Err(EtcdError::Unavailable("counter kept changing".into()))
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a child token's accessor; while etcd is unreachable it is
    /// kept here and recorded with the next token that is. (Commands that
    /// need no etcd keep working through an etcd outage; a suspension needs
    /// etcd itself, so it cannot happen in the meantime.)
    pub async fn record_token(&self, op: &str, accessor: &str, ttl: Duration) {
        let pending: Vec<_> =
            std::mem::take(&mut *self.untracked.lock().unwrap_or_else(|e| e.into_inner()));
        for (o, a, t) in pending
            .into_iter()
            .chain([(op.to_string(), accessor.to_string(), ttl)])
        {
            // Bounded: without quorum a lease grant waits for etcd's own
            // timeout, and the command should not.
            let r = match tokio::time::timeout(RECORD_WAIT, self.track_token(&o, &a, t)).await {
                Ok(r) => r,
                Err(_) => Err(EtcdError::Unavailable("no answer within 1 s".into())),
            };
            if let Err(e) = r {
                tracing::warn!(operator = %o, error = %e, "child token not recorded in etcd yet (kept in memory)");
                self.untracked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((o, a, t));
            }
        }
    }

    /// Accessors of `op`'s tokens minted here but not recorded yet.
    pub fn take_untracked(&self, op: &str) -> Vec<String> {
        let mut g = self.untracked.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *g)
            .into_iter()
            .partition(|(o, _, _)| o == op);
        *g = rest;
        mine.into_iter().map(|(_, a, _)| a).collect()
    }

    /// Remembers a child token's accessor for as long as the token lives.
    pub async fn track_token(
        &self,
        op: &str,
        accessor: &str,
        ttl: Duration,
    ) -> Result<(), EtcdError> {
        let lease = self.etcd.lease_grant(ttl.as_secs().max(1) + 5).await?;
        self.etcd
            .put_leased(
                &format!("{}tokens/{op}/{accessor}", self.prefix),
                b"1".to_vec(),
                lease,
            )
            .await
    }

    /// The accessors of `op`'s child tokens that may still be alive.
    pub async fn tokens(&self, op: &str) -> Result<Vec<(String, String)>, EtcdError> {
        let prefix = format!("{}tokens/{op}/", self.prefix);
        Ok(self
            .etcd
            .list_prefix(&prefix, 0, false)
            .await?
            .into_iter()
            .filter_map(|e| {
                let acc = e.key.strip_prefix(&prefix)?.to_string();
                Some((e.key, acc))
            })
            .collect())
    }

    pub async fn forget_token(&self, key: &str) -> Result<bool, EtcdError> {
        self.etcd.delete(key).await
    }

    /// Whether `cmd` needs an unlocked operator under the configured mode.
    pub fn needs_unlock(&self, step: Step) -> bool {
        match self.cfg.step_up {
            StepUp::Off => false,
            StepUp::Secrets => step == Step::Secret,
            StepUp::All => step != Step::Free,
        }
    }

    /// The admins, whom alerts reach.
    pub fn admins(&self) -> &[String] {
        &self.admins
    }
}

/// How a command stands to step-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Never needs unlocking (`/help`, `/whoami`, `/unlock`, `/lock`, and
    /// the panic button `/operator suspend`: someone who lost their phone
    /// has no TOTP code).
    Free,
    /// Needs unlocking under `all`.
    Plain,
    /// Its reply or input carries a secret: needs unlocking under
    /// `secrets` and `all`.
    Secret,
}
