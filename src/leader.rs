//! Leader election with fencing: only the leader runs the Telegram client.
//!
//! One key, `<prefix>leader`, created if absent with the node id as value
//! and attached to a lease of `etcd.lease_ttl_secs`. The winner keeps the
//! lease alive every `ttl/4`; each answer *proves* the lease alive until
//! `send time + ttl` (the server cannot expire it earlier). When the proof
//! is older than `ttl - margin` (margin `ttl/4`, at least 500 ms) the
//! leader fences itself: [`Leadership::lost`] fires and the Telegram
//! client stops before any other node can win the key. Two sessions on one
//! Telegram account would get AUTH_KEY_DUPLICATED and the session killed.
//!
//! Locks alone do not give mutual exclusion (a paused leader wakes up after
//! its lease expired): every etcd write the leader makes carries the
//! [`Guard`] (a compare on the key's create revision), so a deposed
//! leader's writes fail.
//!
//! Followers poll the key (every `ttl/8`, at most 500 ms) rather than
//! watch it: a watch can hang unnoticed across a partition; a poll cannot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::EtcdConfig;
use crate::etcd::{Campaign, Etcd, EtcdError, Guard};
use crate::vault::auth::Backoff;

/// Who leads, as this node sees it (`/health`, `doctor`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LeaderStatus {
    pub node: String,
    pub leading: bool,
    /// The leader's node id, when known.
    pub leader: Option<String>,
    /// Unix seconds at which this node became leader.
    pub since: Option<u64>,
    /// Leadership terms this node won.
    pub terms: u64,
}

/// The election key's value: who leads and since when (`doctor` reads it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaderRecord {
    pub node: String,
    /// Unix seconds.
    pub since: u64,
}

impl LeaderRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A value written by this version, or a bare node id.
    pub fn parse(value: &[u8]) -> LeaderRecord {
        serde_json::from_slice(value).unwrap_or_else(|_| LeaderRecord {
            node: String::from_utf8_lossy(value).into_owned(),
            since: 0,
        })
    }
}

/// The election key for `cfg`'s prefix.
pub fn election_key(cfg: &EtcdConfig) -> String {
    format!("{}leader", cfg.prefix)
}

/// Campaigns for the election key of one broker prefix.
pub struct Elector {
    etcd: Etcd,
    key: String,
    node: String,
    ttl: Duration,
    status: Arc<Mutex<LeaderStatus>>,
}

/// One term of leadership; end it with [`Elector::resign`]. Dropping it
/// (a panic unwinding through the runner) still ends it: the keeper stops
/// renewing and the lease is revoked, so no zombie leader keeps a lease
/// alive that no client serves.
pub struct Leadership {
    pub guard: Guard,
    pub lease: i64,
    lost: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
    etcd: Etcd,
    resigned: bool,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.lost.cancel();
        self.keeper.abort();
        if self.resigned {
            return;
        }
        tracing::warn!(
            lease = self.lease,
            "leadership dropped without resigning: lease revoked"
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let etcd = self.etcd.clone();
            let lease = self.lease;
            rt.spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), etcd.lease_revoke(lease)).await;
            });
        }
    }
}

impl Leadership {
    /// Fires when this node can no longer prove it leads.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Gives up at once (a guarded write was refused: someone else leads).
    pub fn fence(&self, reason: &str) {
        if !self.lost.is_cancelled() {
            tracing::warn!(reason, "fenced: stopping Telegram");
            self.lost.cancel();
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This process's id in the election: host name, pid and a random tag (a
/// restarted pod with the same name and pid is still a different node).
pub fn node_id() -> Result<String, crate::ids::RandomError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let tag = crate::ids::random_hex::<3>()?;
    Ok(format!("{host}:{}:{tag}", std::process::id()))
}

impl Elector {
    pub fn new(etcd: Etcd, cfg: &EtcdConfig, node: String) -> Elector {
        let status = LeaderStatus {
            node: node.clone(),
            ..Default::default()
        };
        Elector {
            etcd,
            key: election_key(cfg),
            node,
            ttl: Duration::from_secs(cfg.lease_ttl_secs.max(2)),
            status: Arc::new(Mutex::new(status)),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn status(&self) -> LeaderStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keep-alive interval and fencing margin for the configured TTL.
    pub fn timing(&self) -> (Duration, Duration) {
        let renew = (self.ttl / 4).max(Duration::from_millis(250));
        let margin = (self.ttl / 4).max(Duration::from_millis(500));
        (renew, margin)
    }

    fn set_status(&self, f: impl FnOnce(&mut LeaderStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Waits until this node leads; `None` once `shutdown` fires.
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Option<Leadership> {
        let poll = (self.ttl / 8).min(Duration::from_millis(500));
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut following: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let wait = match self.try_lead().await {
                Ok(Ok(l)) => return Some(l),
                Ok(Err(holder)) => {
                    backoff.reset();
                    if following.as_deref() != Some(holder.as_str()) {
                        tracing::info!(node = %self.node, leader = %holder, "following");
                        self.set_status(|s| {
                            s.leading = false;
                            s.leader = Some(holder.clone());
                        });
                        following = Some(holder);
                    }
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, "election: etcd unavailable");
                    following = None;
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: `Ok(Ok(term))` won, `Ok(Err(holder))` someone leads.
    async fn try_lead(&self) -> Result<Result<Leadership, String>, EtcdError> {
        let step = self.ttl / 2;
        let timed = |what: &'static str| {
            move |_| EtcdError::Unavailable(format!("election: {what} timed out"))
        };
        // Cheap read first: most rounds find a leader and grant no lease.
        if let Some(e) = tokio::time::timeout(step, self.etcd.get_entry(&self.key))
            .await
            .map_err(timed("read"))??
        {
            return Ok(Err(LeaderRecord::parse(&e.value).node));
        }
        let t0 = Instant::now();
        let lease = tokio::time::timeout(step, self.etcd.lease_grant(self.ttl.as_secs()))
            .await
            .map_err(timed("lease grant"))??;
        let record = LeaderRecord {
            node: self.node.clone(),
            since: crate::clock::unix_secs(),
        };
        let won = tokio::time::timeout(
            step,
            self.etcd.campaign(&self.key, &record.to_bytes(), lease),
        )
        .await
        .map_err(timed("campaign"))?;
        let guard = match won {
            Ok(Campaign::Won(g)) => g,
            Ok(Campaign::Held(holder)) => {
                self.revoke_quietly(lease);
                return Ok(Err(LeaderRecord::parse(holder.as_bytes()).node));
            }
            Err(e) => {
                self.revoke_quietly(lease);
                return Err(e);
            }
        };
        let keep = tokio::time::timeout(step, self.etcd.keep_alive(lease))
            .await
            .map_err(timed("keep-alive"))??;
        let lost = CancellationToken::new();
        let (renew_every, margin) = self.timing();
        tracing::info!(
            node = %self.node,
            revision = guard.create_revision,
            lease,
            "became leader"
        );
        self.set_status(|s| {
            s.leading = true;
            s.leader = Some(self.node.clone());
            s.since = Some(crate::clock::unix_secs());
            s.terms += 1;
        });
        let keeper = tokio::spawn(keep_lease(KeepLease {
            etcd: self.etcd.clone(),
            lease,
            guard: guard.clone(),
            keep,
            proven_until: t0 + self.ttl,
            renew_every,
            margin,
            lost: lost.clone(),
            status: self.status.clone(),
        }));
        Ok(Ok(Leadership {
            guard,
            lease,
            lost,
            keeper,
            etcd: self.etcd.clone(),
            resigned: false,
        }))
    }

    fn revoke_quietly(&self, lease: i64) {
        let etcd = self.etcd.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), etcd.lease_revoke(lease)).await;
        });
    }

    /// Ends a term: stops the keeper, deletes the key (guarded) and revokes
    /// the lease, so a follower takes over at once instead of after the
    /// TTL. Best effort within 2 s: if etcd is unreachable the lease simply
    /// expires.
    pub async fn resign(&self, mut term: Leadership) {
        term.lost.cancel();
        term.resigned = true;
        let _ = (&mut term.keeper).await;
        let done = tokio::time::timeout(Duration::from_secs(2), async {
            self.etcd.delete_guarded(&term.guard, &self.key).await?;
            self.etcd.lease_revoke(term.lease).await
        })
        .await;
        self.set_status(|s| {
            s.leading = false;
            s.leader = None;
            s.since = None;
        });
        match done {
            Ok(Ok(())) => tracing::info!(node = %self.node, "resigned"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "resign: etcd refused; the lease will expire")
            }
            Err(_) => tracing::warn!("resign: etcd did not answer; the lease will expire"),
        }
    }
}

struct KeepLease {
    etcd: Etcd,
    lease: i64,
    guard: Guard,
    keep: crate::etcd::LeaseKeepAlive,
    proven_until: Instant,
    renew_every: Duration,
    margin: Duration,
    lost: CancellationToken,
    status: Arc<Mutex<LeaderStatus>>,
}

/// Renews the lease and fences the term when the proof gets too old. The
/// deadline is its own `select!` branch, so a hanging etcd call cannot
/// delay the fence.
async fn keep_lease(mut k: KeepLease) {
    let mut next_renew = Instant::now() + k.renew_every;
    loop {
        let fence_at = k
            .proven_until
            .checked_sub(k.margin)
            .unwrap_or_else(Instant::now);
        let renew = async {
            tokio::time::sleep_until(next_renew.into()).await;
            let sent = Instant::now();
            let r = tokio::time::timeout(k.renew_every, async {
                let ttl = k.keep.renew().await?;
                let holds = ttl > 0 && k.etcd.guard_holds(&k.guard).await?;
                Ok::<_, EtcdError>((ttl, holds))
            })
            .await;
            (sent, r)
        };
        tokio::select! {
            _ = k.lost.cancelled() => break,
            _ = tokio::time::sleep_until(fence_at.into()) => {
                let left = k.proven_until.saturating_duration_since(Instant::now());
                tracing::warn!(
                    proven_until_ms = unix_ms(SystemTime::now() + left),
                    "fenced: stopping Telegram"
                );
                k.lost.cancel();
                break;
            }
            (sent, r) = renew => match r {
                Ok(Ok((ttl, true))) => {
                    k.proven_until = sent + Duration::from_secs(ttl as u64);
                    next_renew = sent + k.renew_every;
                }
                Ok(Ok((_, false))) => {
                    let left = k.proven_until.saturating_duration_since(Instant::now());
                    tracing::warn!(
                        proven_until_ms = unix_ms(SystemTime::now() + left),
                        reason = "election key or lease gone",
                        "fenced: stopping Telegram"
                    );
                    k.lost.cancel();
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "leader: lease keep-alive failed");
                    next_renew = Instant::now() + Duration::from_millis(200);
                    // A broken stream does not recover; open a new one.
                    if let Ok(Ok(ka)) = tokio::time::timeout(
                        k.renew_every,
                        k.etcd.keep_alive(k.lease),
                    ).await {
                        k.keep = ka;
                    }
                }
                Err(_) => {
                    tracing::warn!("leader: lease keep-alive timed out");
                    next_renew = Instant::now();
                }
            }
        }
    }
    let mut s = k.status.lock().unwrap_or_else(|e| e.into_inner());
    s.leading = false;
}
