//! Containing a stolen operator account (`[security]`): step-up unlock
//! with the operator's own TOTP, suspension, the reveal budget, and
//! alerts.
//!
//! Everything lives in etcd, so every replica and every transport sees the
//! same state at once and it survives failover:
//!
//! - `security/suspended/<op>` — `{since, by, reason}`; no lease (only
//!   `/operator resume` ends it).
//! - `security/unlock/<op>/<transport>` (`unlock_scope = "transport"`,
//!   the default) or `security/unlock/<op>` (`"all"`) — `{until, via}`, on
//!   a lease of `unlock_ttl_secs`: an unlock made at a terminal does not
//!   open secrets to whoever holds the same account's Telegram.
//! - `security/failures/<op>` — TOTP codes tried in a row (`/unlock` and
//!   `/approve` alike), on a 1-day lease; counted *before* Vault is asked,
//!   so concurrent attempts cannot get more codes checked than the limit;
//!   reset by a right one.
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

use crate::clock::unix_secs;
use crate::config::{SecurityConfig, StepUp, UnlockScope};
use crate::etcd::{Entry, Etcd, EtcdError};
use crate::transport_kind::Transport;

/// Why and since when an operator is suspended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Suspension {
    pub since: u64,
    pub by: String,
    pub reason: String,
}

/// An open step-up window: until when, and on which transport it was
/// opened (`via`; older records without it count as made on none).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unlock {
    pub until: u64,
    #[serde(default)]
    pub via: String,
}

/// What the attempt counter says to one more TOTP code (`/unlock`,
/// `/approve`): counted before Vault checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The `n`-th code in a row: Vault may check it.
    Allowed(u32),
    /// Over the limit: refused without asking Vault.
    TooMany(u32),
}

/// The kinds of security event (metric label, audit command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Suspend,
    Resume,
    AutoSuspend,
    BudgetExceeded,
    UnlockFailed,
    /// Telegram reports a login (or a login code) for the userbot's own
    /// account, or the account can no longer be used.
    TelegramAccount,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::Suspend,
        Event::Resume,
        Event::AutoSuspend,
        Event::BudgetExceeded,
        Event::UnlockFailed,
        Event::TelegramAccount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Suspend => "suspend",
            Event::Resume => "resume",
            Event::AutoSuspend => "auto_suspend",
            Event::BudgetExceeded => "budget_exceeded",
            Event::UnlockFailed => "unlock_failed",
            Event::TelegramAccount => "telegram_account",
        }
    }
}

const FAILURES_TTL: u64 = 24 * 3600;
/// How long a command waits for an etcd write it cannot do without (its
/// new token recorded, its reveal counted): long enough to wait out an
/// etcd leader election under load (seen in CI: a write caught by one
/// failed with "leader changed" after 3 s, and one took over 5 s), short
/// enough that an operator gets an answer. Beyond it the command is
/// refused (fail closed).
pub const WRITE_WAIT: Duration = Duration::from_secs(10);
/// The bound on the suspension check: a state etcd does not give within
/// this is unknown, and commands that reveal or change anything are
/// refused (fail closed).
pub const SUSPENSION_WAIT: Duration = Duration::from_secs(2);
/// Codes a suspended admin may try at the broker's host (`ctl`) on top of
/// `unlock_max_failures`, per day: the way back after an auto-suspension.
pub const RECOVERY_ATTEMPTS: u32 = 3;

pub struct Security {
    etcd: Etcd,
    prefix: String,
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
    /// The suspensions in memory (`crate::suspensions`), kept current by a
    /// task that stops when this is dropped.
    view: std::sync::Arc<crate::suspensions::View>,
    /// Started by the first check (a process that never checks, such as
    /// `import`, watches nothing).
    view_task: std::sync::OnceLock<tokio_util::sync::DropGuard>,
    /// Checks answered from memory, and by reading etcd (tests, bench).
    pub checks_from_view: std::sync::atomic::AtomicU64,
    pub checks_from_etcd: std::sync::atomic::AtomicU64,
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

/// How long a counter update keeps retrying its compare-and-swap against
/// other writers before it fails closed (`unavailable`).
const COUNTER_PATIENCE: Duration = Duration::from_secs(3);

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
        let prefix = format!("{etcd_prefix}security/");
        Security {
            view: Default::default(),
            view_task: std::sync::OnceLock::new(),
            checks_from_view: Default::default(),
            checks_from_etcd: Default::default(),
            etcd,
            prefix,
            counters: std::sync::Mutex::new(HashMap::new()),
            reserved: std::sync::Mutex::new(HashMap::new()),
            reserving: tokio::sync::Mutex::new(()),
            reserve_ahead: std::sync::atomic::AtomicBool::new(false),
            admins,
            cfg,
        }
    }

    /// Whether suspension checks are answered from memory right now.
    pub fn view_is_current(&self) -> bool {
        self.view.is_current()
    }

    fn key(&self, what: &str, op: &str) -> String {
        format!("{}{what}/{op}", self.prefix)
    }

    /// Checked before every command: from memory while the watched view is
    /// current within `suspensions::STALENESS_BOUND` (no etcd round trip),
    /// else a serializable read, which costs no quorum round and still
    /// answers while quorum is lost, bounded by [`SUSPENSION_WAIT`] (an
    /// unknown state is an error, never "not suspended").
    pub async fn suspension(&self, op: &str) -> Result<Option<Suspension>, EtcdError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.view_task.get_or_init(|| {
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(crate::suspensions::run(
                self.etcd.clone(),
                self.key("suspended", ""),
                self.view.clone(),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        if let Some(record) = self.view.lookup(op) {
            self.checks_from_view.fetch_add(1, Relaxed);
            return Ok(record.and_then(|v| decode(&v)));
        }
        self.checks_from_etcd.fetch_add(1, Relaxed);
        let key = self.key("suspended", op);
        match tokio::time::timeout(SUSPENSION_WAIT, self.etcd.get_local(&key)).await {
            Ok(r) => Ok(r?.and_then(|v| decode(&v))),
            Err(_) => Err(EtcdError::Unavailable(format!(
                "no answer within {} s",
                SUSPENSION_WAIT.as_secs()
            ))),
        }
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
        if created {
            self.view.apply(op, Some(encode(&s)));
        }
        // Whatever else: every unlock window ends now.
        self.lock_all(op).await?;
        Ok(created)
    }

    /// `by` suspends another operator, in one transaction that also checks
    /// that `by` is not suspended itself: two admins suspending each other
    /// at once cannot both win, so the last unsuspended admin is never
    /// suspended by someone else. `Ok(None)`: `by` is suspended (nothing
    /// written); `Ok(Some(fresh))` as [`Security::suspend`].
    pub async fn suspend_other(
        &self,
        op: &str,
        by: &str,
        reason: &str,
    ) -> Result<Option<bool>, EtcdError> {
        let s = Suspension {
            since: unix_secs(),
            by: by.into(),
            reason: reason.into(),
        };
        let key = self.key("suspended", op);
        let mine = self.key("suspended", by);
        let created = self
            .etcd
            .create_if_absent_and(&[mine.as_str()], &[(key.as_str(), &encode(&s), 0)])
            .await?;
        if !created && self.etcd.get(&mine).await?.is_some() {
            return Ok(None);
        }
        if created {
            self.view.apply(op, Some(encode(&s)));
        }
        self.lock_all(op).await?;
        Ok(Some(created))
    }

    /// Ends a suspension; `false` when there was none.
    pub async fn resume(&self, op: &str) -> Result<bool, EtcdError> {
        let gone = self.etcd.delete(&self.key("suspended", op)).await?;
        self.view.apply(op, None);
        self.etcd.delete(&self.key("failures", op)).await?;
        Ok(gone)
    }

    /// The key of `op`'s unlock window on `transport` under the configured
    /// scope.
    fn unlock_key(&self, op: &str, transport: Transport) -> String {
        match self.cfg.unlock_scope {
            UnlockScope::All => self.key("unlock", op),
            UnlockScope::Transport => format!("{}/{}", self.key("unlock", op), transport.as_str()),
        }
    }

    /// `op`'s open unlock window that applies on `transport`, if any.
    pub async fn unlocked(
        &self,
        op: &str,
        transport: Transport,
    ) -> Result<Option<Unlock>, EtcdError> {
        Ok(self
            .etcd
            .get(&self.unlock_key(op, transport))
            .await?
            .and_then(|v| decode::<Unlock>(&v))
            .filter(|u| u.until > unix_secs()))
    }

    /// Every open unlock window of `op` (for `/operator list`).
    pub async fn unlocks(&self, op: &str) -> Result<Vec<Unlock>, EtcdError> {
        let mut out: Vec<Unlock> = self
            .etcd
            .list_prefix(&format!("{}/", self.key("unlock", op)), 0, false)
            .await?
            .into_iter()
            .filter_map(|e| decode::<Unlock>(&e.value))
            .collect();
        if let Some(u) = self
            .etcd
            .get(&self.key("unlock", op))
            .await?
            .and_then(|v| decode::<Unlock>(&v))
        {
            out.push(u);
        }
        out.retain(|u| u.until > unix_secs());
        Ok(out)
    }

    /// Opens `op`'s window on `transport` (everywhere with `unlock_scope =
    /// "all"`) and resets the attempt counter.
    pub async fn unlock(&self, op: &str, transport: Transport) -> Result<u64, EtcdError> {
        let ttl = self.cfg.unlock_ttl_secs;
        let until = unix_secs() + ttl;
        let lease = self.etcd.lease_grant(ttl).await?;
        let rec = Unlock {
            until,
            via: transport.as_str().to_string(),
        };
        self.etcd
            .put_leased(&self.unlock_key(op, transport), encode(&rec), lease)
            .await?;
        self.clear_failures(op).await?;
        Ok(until)
    }

    /// Ends the window that applies on `transport`; `false` when there was
    /// none.
    pub async fn lock(&self, op: &str, transport: Transport) -> Result<bool, EtcdError> {
        self.etcd.delete(&self.unlock_key(op, transport)).await
    }

    /// Ends every window of `op`, on every transport.
    async fn lock_all(&self, op: &str) -> Result<(), EtcdError> {
        self.etcd.delete(&self.key("unlock", op)).await?;
        self.etcd
            .delete_prefix(&format!("{}/", self.key("unlock", op)))
            .await?;
        Ok(())
    }

    /// Counts one more TOTP code of `op` *before* Vault checks it, so that
    /// concurrent attempts never get more codes checked than the limit
    /// (`unlock_max_failures`, plus `extra` for the host recovery path).
    pub async fn begin_code_attempt(&self, op: &str, extra: u32) -> Result<Attempt, EtcdError> {
        let n = self
            .increment(&self.key("failures", op), FAILURES_TTL)
            .await?;
        Ok(if n > self.cfg.unlock_max_failures + extra {
            Attempt::TooMany(n)
        } else {
            Attempt::Allowed(n)
        })
    }

    /// Takes back a counted attempt whose code was never judged (Vault
    /// unreachable): that attempt is not held against the operator.
    pub async fn undo_code_attempt(&self, op: &str) -> Result<(), EtcdError> {
        self.add(&self.key("failures", op), FAILURES_TTL, |n| {
            n.saturating_sub(1)
        })
        .await
        .map(|_| ())
    }

    /// A right code: the attempts in a row start again from zero.
    pub async fn clear_failures(&self, op: &str) -> Result<(), EtcdError> {
        self.etcd.delete(&self.key("failures", op)).await?;
        Ok(())
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
        let deadline = tokio::time::Instant::now() + COUNTER_PATIENCE;
        let mut lost = 0u32;
        loop {
            if lost > 0 {
                // Many writers at once (replicas, consoles): retrying at
                // once would collide again; a random pause that grows
                // spreads them out. Bounded in time, then fail closed.
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let cap_ms = 1u64 << lost.min(6);
                let pause = crate::ids::random_u64().map_or(cap_ms, |r| r % (cap_ms + 1));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            lost += 1;
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
        Err(EtcdError::Unavailable(format!(
            "counter kept changing ({lost} attempts in {} s)",
            COUNTER_PATIENCE.as_secs()
        )))
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a child token's accessor in etcd, bounded in time: a token
    /// that could not be recorded could not be revoked by a suspension
    /// handled elsewhere, so the caller must not use it.
    pub async fn record_token(
        &self,
        op: &str,
        accessor: &str,
        ttl: Duration,
    ) -> Result<(), EtcdError> {
        // Bounded: without quorum a lease grant waits for etcd's own
        // timeout, and the command should not.
        match tokio::time::timeout(WRITE_WAIT, self.track_token(op, accessor, ttl)).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Unavailable(format!(
                "no answer within {} s",
                WRITE_WAIT.as_secs()
            ))),
        }
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
