//! The suspension set in memory, so that the check before every command
//! reads nothing from etcd (issue 34; docs/PERFORMANCE.md measured that
//! read as the largest part of a socket `/kv get`).
//!
//! [`run`] keeps a [`View`] of `security/suspended/*`: a snapshot, then a
//! watch from the snapshot's next revision, so nothing falls in between.
//! Events alone cannot tell a quiet watch from a dead one, so the task
//! asks etcd for the watch's progress every [`PROGRESS_EVERY`]; etcd
//! answers once every earlier event was sent, and the view then counts as
//! current *as of the moment the question was sent*. [`View::lookup`]
//! answers only while that moment is less than [`STALENESS_BOUND`] ago;
//! otherwise it says "unknown" and the caller reads etcd as before (and
//! refuses what reveals or changes anything when that read fails too). A
//! broken watch therefore costs speed, never a stale answer.
//!
//! The bound, stated: a suspension applied by this process's etcd member
//! more than [`STALENESS_BOUND`] before a lookup is in the answer. (etcd
//! before 3.4.25 may send a progress answer just ahead of an event that
//! was already queued on the same stream — etcd issue 15220 — which widens
//! that by the time the next message takes to arrive on the stream.)
//! Writes this process makes itself are applied at once ([`View::apply`]).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::etcd::{Etcd, WatchEvent};

/// How often the watch is asked how far it is.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(40);
/// How old the view's last proof of currency may be for it to answer.
pub const STALENESS_BOUND: Duration = Duration::from_millis(100);

/// The suspended operators (name → the stored record), and since when
/// that is known to be current.
#[derive(Default)]
pub struct View {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    set: HashMap<String, Vec<u8>>,
    current_as_of: Option<Instant>,
    /// Bumped by every restart of the watch: a proof from an earlier watch
    /// does not vouch for the new one.
    generation: u64,
}

impl View {
    /// The stored record of `op`'s suspension (`Some(None)`: not
    /// suspended), or `None` when the view is not known to be current.
    pub fn lookup(&self, op: &str) -> Option<Option<Vec<u8>>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let fresh = inner
            .current_as_of
            .is_some_and(|t| t.elapsed() < STALENESS_BOUND);
        fresh.then(|| inner.set.get(op).cloned())
    }

    /// Whether lookups are answered from memory right now.
    pub fn is_current(&self) -> bool {
        self.lookup("").is_some()
    }

    /// A change this process wrote itself (read-your-writes without
    /// waiting for the watch), or one the watch delivered.
    pub fn apply(&self, op: &str, record: Option<Vec<u8>>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match record {
            Some(r) => inner.set.insert(op.to_string(), r),
            None => inner.set.remove(op),
        };
    }

    fn restart(&self, set: HashMap<String, Vec<u8>>) -> u64 {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.set = set;
        inner.current_as_of = None;
        inner.generation += 1;
        inner.generation
    }

    fn proven(&self, generation: u64, asked_at: Instant) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation == generation {
            inner.current_as_of = Some(inner.current_as_of.map_or(asked_at, |t| t.max(asked_at)));
        }
    }

    fn stale(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.current_as_of = None;
    }
}

/// Keeps `view` current with the keys under `prefix` (`<prefix><op>`)
/// until `stop`; a failed snapshot or watch is retried with a fresh
/// snapshot (backoff up to 2 s), the view answering nothing meanwhile.
pub async fn run(etcd: Etcd, prefix: String, view: std::sync::Arc<View>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        view.stale();
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            why = follow(&etcd, &prefix, &view) => why,
        };
        tracing::warn!(error = %why, "suspension watch interrupted; checks read etcd until it is back");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One snapshot and watch; returns why it ended.
async fn follow(etcd: &Etcd, prefix: &str, view: &View) -> String {
    let (entries, revision) = match etcd.snapshot_prefix(prefix).await {
        Ok(s) => s,
        Err(e) => return format!("snapshot: {e}"),
    };
    let op_of = |key: &str| key.strip_prefix(prefix).map(str::to_string);
    let set = entries
        .into_iter()
        .filter_map(|e| op_of(&e.key).map(|op| (op, e.value)))
        .collect();
    let generation = view.restart(set);
    let mut watch = match etcd.watch_prefix(prefix, revision + 1).await {
        Ok(w) => w,
        Err(e) => return format!("watch: {e}"),
    };
    // When each unanswered progress question was sent, oldest first.
    let mut asked: VecDeque<Instant> = VecDeque::new();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A watch that leaves questions unanswered past the bound is
                // broken: start over rather than wait on it.
                if asked.front().is_some_and(|t| t.elapsed() > STALENESS_BOUND * 10) {
                    return "no progress answer within 1 s".into();
                }
                if asked.len() < 8 {
                    let at = Instant::now();
                    if let Err(e) = watch.request_progress().await {
                        return format!("progress request: {e}");
                    }
                    asked.push_back(at);
                }
            }
            ev = watch.next() => match ev {
                Ok(WatchEvent::Changes(changes)) => {
                    for (key, value) in changes {
                        if let Some(op) = op_of(&key) {
                            view.apply(&op, value);
                        }
                    }
                }
                Ok(WatchEvent::Progress(_)) => {
                    if let Some(at) = asked.pop_front() {
                        view.proven(generation, at);
                    }
                }
                Ok(WatchEvent::Created) => {}
                Err(e) => return format!("watch: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_while_proven_current() {
        let v = View::default();
        assert_eq!(v.lookup("alice"), None, "never proven");
        let g = v.restart(HashMap::from([("alice".to_string(), b"{}".to_vec())]));
        assert_eq!(v.lookup("alice"), None, "not proven yet");
        v.proven(g, Instant::now());
        assert_eq!(v.lookup("alice"), Some(Some(b"{}".to_vec())));
        assert_eq!(v.lookup("bob"), Some(None));
        // A proof older than the bound answers nothing.
        v.proven(g, Instant::now() - STALENESS_BOUND * 2);
        assert!(v.is_current(), "a later proof is kept");
        let g2 = v.restart(HashMap::new());
        v.proven(g, Instant::now());
        assert_eq!(
            v.lookup("alice"),
            None,
            "an old watch's proof does not count"
        );
        v.proven(g2, Instant::now() - STALENESS_BOUND * 2);
        assert_eq!(v.lookup("alice"), None, "stale");
        v.proven(g2, Instant::now());
        assert_eq!(v.lookup("alice"), Some(None));
        v.apply("bob", Some(b"x".to_vec()));
        assert_eq!(v.lookup("bob"), Some(Some(b"x".to_vec())));
        v.apply("bob", None);
        assert_eq!(v.lookup("bob"), Some(None));
    }
}
