//! One leadership term of the Telegram runner: the client started from the
//! stored session and fenced by the lease, the loop over updates and
//! timers, the session saved back with check-and-set, the ordered stop;
//! and the term's guarded etcd writes (claims, records). What happens to
//! one message is `handle.rs`, what the leader tells and records
//! `notices.rs`, deletions `deletions.rs`; `service.rs` owns the election
//! loop around it.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::chat::ChatError;
use super::client::{start_client, Client};
use super::intake::IntakeRx;
use super::route::{self, ClaimState, Handled};
use super::session::{SessionStore, StoredSession};
use crate::dispatch::App;
use crate::etcd::{Claim, SharedLease};
use crate::leader::Leadership;
use crate::records;
use crate::transport_kind::Transport;
use crate::vault::VaultError;

/// How often at most the strangers' messages get an audit record.
pub(super) const STRANGER_SUMMARY: Duration = Duration::from_secs(60);

/// A command whose sender cannot be resolved is given up after this many
/// client restarts for it (each restart delivers it again).
pub(super) const RESOLVE_RESTARTS: u32 = 3;

/// A started client and what the loop keeps between updates.
struct Running {
    client: Client,
    rx: IntakeRx,
    /// The session version the next save checks against.
    version: u64,
    /// The last handled update whose state is not committed yet.
    handled: Option<(u64, super::intake::Mark)>,
    /// When the strangers' messages were last summarized.
    summarized: std::time::Instant,
}

/// One leadership term's view of everything the runner needs.
pub(super) struct Term<'a> {
    pub(super) app: &'a App,
    pub(super) term: &'a Leadership,
    pub(super) store: &'a SessionStore,
    pub(super) dedup: &'a SharedLease,
    pub(super) node: &'a str,
    pub(super) refused: &'a Mutex<Option<u64>>,
    /// Commands whose sender could not be resolved: client restarts so far
    /// (kept across restarts by the caller).
    pub(super) unresolved: &'a Mutex<std::collections::HashMap<(i64, i32), u32>>,
    /// This account's user id, once the client is up (claims are scoped
    /// to it).
    pub(super) me: std::sync::atomic::AtomicI64,
    /// Commands too old to run, per chat: (how many, the oldest's age).
    pub(super) stale: Mutex<std::collections::HashMap<i64, (u32, u64)>>,
    /// The client started in this call of `serve` (a failure after that
    /// is not a failed start).
    pub(super) started: std::sync::atomic::AtomicBool,
    /// Operators this term marked unreachable (so that a command of one
    /// clears the mark without an etcd call per command).
    pub(super) unreachable: Mutex<std::collections::HashSet<String>>,
    /// The loaded record's authorization hash, carried into every save.
    pub(super) auth: Mutex<Option<String>>,
    /// Groups this term has left.
    pub(super) left: Mutex<std::collections::HashSet<i64>>,
}

impl Term<'_> {
    /// Runs one client until leadership is lost (`Ok`), shutdown (`Ok`), or
    /// the client fails (`Err`, retried by the caller).
    pub(super) async fn serve(&self, shutdown: &CancellationToken) -> Result<(), ChatError> {
        let lost = self.term.lost();
        let (stored, version, meta) = self.load_session().await?;
        // The fence is armed before the client exists: losing the lease
        // while grammers is still connecting (no timeout there) drops the
        // half-started client at once.
        let stop = CancellationToken::new();
        let started = tokio::select! {
            biased;
            _ = lost.cancelled() => {
                tracing::warn!(node = self.node, "telegram client stopped");
                return Ok(());
            }
            _ = shutdown.cancelled() => return Ok(()),
            r = self.start(&stored, &stop) => r,
        };
        drop(stored);
        let (client, rx, intake) = match started {
            Ok((c, rx, intake)) => (c, rx, AbortOnDropHandle::new(intake)),
            Err(e) => return Err(self.refuse(version, e).await),
        };
        let fence = self.on_started(&client, &lost, &stop);
        self.first_duties(&client, version, &meta).await;
        let mut run = Running {
            client,
            rx,
            version,
            handled: None,
            // The first stranger of a term is recorded at the next tick.
            summarized: std::time::Instant::now()
                .checked_sub(STRANGER_SUMMARY)
                .unwrap_or_else(std::time::Instant::now),
        };
        let outcome = self.run_loop(&mut run, &lost, shutdown).await;
        // Intake first: it never waits for a runner that left its loop.
        stop.cancel();
        let _ = intake.await;
        commit_settled(&run.client, &run.rx, &mut run.handled).await;
        self.summarize_strangers(&run.rx, &mut run.summarized, true)
            .await;
        self.finish(outcome, run, fence).await
    }

    /// The stored session, its version and meta; a version this node
    /// refused before is not started again.
    async fn load_session(
        &self,
    ) -> Result<(StoredSession, u64, records::session::Meta), ChatError> {
        let vault = self.app.broker.current();
        self.app.runtime.set_telegram(|s| s.session_checks += 1);
        let (stored, version) = self.store.load_versioned(&vault).await?.ok_or_else(|| {
            ChatError::Session(format!(
                "no session stored at {}; run `vaultgram login`",
                self.store.path()
            ))
        })?;
        if *self.refused.lock().unwrap_or_else(|e| e.into_inner()) == Some(version) {
            return Err(ChatError::Refused);
        }
        let meta = self
            .store
            .meta(&vault, Some(version))
            .await?
            .unwrap_or_default();
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = meta.auth.clone();
        Ok((stored, version, meta))
    }

    /// Starts the client, bounded: grammers' connect, key exchange and
    /// first requests have no timeout of their own (a real run waited over
    /// 3 minutes on an answer the server had lost). Dropping the start
    /// drops the half-built client and its connections.
    async fn start(
        &self,
        stored: &StoredSession,
        stop: &CancellationToken,
    ) -> Result<(Client, IntakeRx, tokio::task::JoinHandle<()>), ChatError> {
        let limit = Duration::from_secs(self.app.cfg.telegram.start_timeout_secs);
        tokio::time::timeout(limit, start_client(self.app, stored, stop))
            .await
            .unwrap_or_else(|_| {
                Err(ChatError::Io(format!(
                    "the client did not start within {} s (telegram.start_timeout_secs)",
                    limit.as_secs()
                )))
            })
    }

    /// Marks the client up and arms the fence. Fencing does not wait for
    /// the loop (a handler may be stuck on a partitioned etcd): losing the
    /// lease stops the client at once. Aborted if the handle is dropped (a
    /// panic unwinding through `serve`).
    fn on_started(
        &self,
        client: &Client,
        lost: &CancellationToken,
        stop: &CancellationToken,
    ) -> AbortOnDropHandle<()> {
        self.me
            .store(client.me(), std::sync::atomic::Ordering::Relaxed);
        let backend = client.backend();
        tracing::info!(node = self.node, backend, "telegram client started");
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.app.runtime.set_telegram(|s| {
            s.connected = true;
            s.backend = Some(backend);
            s.problem = None;
            s.down_since = None;
        });
        AbortOnDropHandle::new(tokio::spawn({
            let kill = client.kill_switch();
            let lost = lost.clone();
            let stop = stop.clone();
            let node = self.node.to_string();
            async move {
                lost.cancelled().await;
                stop.cancel();
                kill();
                tracing::warn!(node, "telegram client stopped");
            }
        }))
    }

    /// What a new client does before it reads a command.
    async fn first_duties(&self, client: &Client, version: u64, meta: &records::session::Meta) {
        // Who can be told of requests: a fresh login has no access hashes;
        // the account's dialogs bring those of everyone it ever chatted
        // with, and /pending and doctor name the rest.
        self.learn_reachability(client).await;
        // A session a login has just replaced started from the current
        // update state: what operators sent while the old one was dead
        // was never seen. They are told, once.
        self.tell_after_relogin(version, meta).await;
        self.publish_authorizations(client).await;
        // A new leader first finishes what the previous one scheduled.
        self.run_deletions(client).await;
    }

    /// Updates and timers until the lease is lost (`Ok(false)`), shutdown
    /// (`Ok(true)`) or an error.
    async fn run_loop(
        &self,
        run: &mut Running,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<bool, ChatError> {
        let tg = &self.app.cfg.telegram;
        let mut save = tokio::time::interval(Duration::from_secs(tg.session_save_secs));
        save.tick().await;
        let mut deletions = tokio::time::interval(Duration::from_secs(1));
        let Running {
            client,
            rx,
            version,
            handled,
            summarized,
        } = run;
        let client = &*client;
        // The pinger runs beside the loop, not as one of its branches: a
        // branch body awaiting a request on a silently dead connection kept
        // a ping branch from ever running (a CI run hung so). An unanswered
        // ping marks the client dead, which fails every request in flight
        // (`Client::bounded`) and ends the loop through its `dead` branch,
        // with the error paths intact (nothing is cut off mid-body).
        let pinger = async {
            let ping_limit = Duration::from_secs(tg.ping_secs.clamp(1, 10));
            let mut ping = tokio::time::interval(Duration::from_secs(tg.ping_secs));
            ping.tick().await;
            loop {
                ping.tick().await;
                let why = match tokio::time::timeout(ping_limit, client.ping()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer to a ping within {} s", ping_limit.as_secs()),
                };
                tracing::warn!(node = self.node, reason = %why, "telegram: connection dead; reconnecting");
                client.mark_dead();
                // The loop ends by itself now; this never completes.
                return std::future::pending::<std::convert::Infallible>().await;
            }
        };
        // On the heap: the loop's future (a whole command's inside) is
        // large, and a debug build's worker stack overflowed holding it.
        let main = Box::pin(async {
            loop {
                tokio::select! {
                    biased;
                    _ = lost.cancelled() => return Ok(false),
                    _ = shutdown.cancelled() => return Ok(true),
                    _ = client.dead() => return Err(ChatError::Io(
                        "the connection stopped answering pings; reconnecting".into()
                    )),
                    d = rx.recv() => match d {
                        // Runs to completion: the select does not interrupt a
                        // branch body, so a command is never cut in half.
                        Some((n, d)) => {
                            if let Some(msg) = d.msg {
                                self.app.runtime.set_telegram(|s| s.last_update = Some(crate::clock::unix_secs()));
                                // Not committed on error: delivered again after
                                // a restart.
                                self.handle(client, msg).await?;
                            }
                            // Only now, and only at a settled position, may the
                            // session move past this update (intake.rs).
                            *handled = Some((n, d.mark));
                            commit_settled(client, rx, handled).await;
                        }
                        None => return Err(ChatError::Io("the client stopped delivering updates".into())),
                    },
                    _ = save.tick() => self.save(client, version).await?,
                    _ = deletions.tick() => {
                        commit_settled(client, rx, handled).await;
                        self.summarize_strangers(rx, summarized, false).await;
                        self.tell_stale(client).await;
                        self.tell_update_gap().await;
                        self.run_deletions(client).await;
                        self.run_notices(client).await?;
                    }
                }
            }
        });
        tokio::select! {
            r = main => r,
            never = pinger => match never {},
        }
    }

    /// The ordered stop after the loop, by how it ended.
    async fn finish(
        &self,
        outcome: Result<bool, ChatError>,
        mut run: Running,
        mut fence: AbortOnDropHandle<()>,
    ) -> Result<(), ChatError> {
        match outcome {
            Ok(true) => {
                self.mark_stopped(Some("shutting down".into()));
                fence.abort();
                // Shutdown: intake stopped; store the state of the last
                // handled update, then quit (the caller resigns afterwards).
                tracing::info!(node = self.node, "telegram: intake stopped");
                let _ = self.save(&run.client, &mut run.version).await;
                run.client.quit(true).await;
                tracing::info!(node = self.node, "telegram client stopped");
                Ok(())
            }
            Ok(false) => {
                self.mark_stopped(Some("not the leader".into()));
                // Fenced: the kill switch already stopped the client; write
                // nothing (another node may be leading by now).
                let _ = (&mut fence).await;
                run.client.quit(false).await;
                Ok(())
            }
            Err(e) => {
                // A 401 for a key the client replaced (a transport 404:
                // grammers made a new, unauthorized key) says nothing of
                // the stored session: restart from it, do not refuse it.
                let e = match e {
                    ChatError::Unauthorized(why) if !run.client.key_unchanged() => {
                        ChatError::Reload(format!(
                            "the client replaced the session's auth key and Telegram refused the new one ({why}); restarting from the stored session"
                        ))
                    }
                    e => e,
                };
                self.mark_stopped(Some(e.to_string()));
                fence.abort();
                // The state of what was handled is good: keep it for the
                // next start (unless the session was replaced or refused).
                if !matches!(e, ChatError::Reload(_) | ChatError::Unauthorized(_)) {
                    let _ = self.save(&run.client, &mut run.version).await;
                }
                run.client.quit(false).await;
                tracing::warn!(node = self.node, "telegram client stopped");
                Err(self.refuse(run.version, e).await)
            }
        }
    }

    /// An `Unauthorized` error marks this session version as refused, said
    /// once and loudly; the client is not started again with it.
    pub(super) async fn refuse(&self, version: u64, e: ChatError) -> ChatError {
        if let ChatError::Unauthorized(why) = &e {
            let first = self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(version)
                != Some(version);
            tracing::error!(
                node = self.node,
                session_version = version,
                reason = %why,
                "telegram: Telegram refused the stored session; the client stays stopped until `vaultgram login` stores a new one"
            );
            // The userbot is down until someone logs in again: every admin
            // hears of it (once per session version and node).
            if first {
                self.app
                    .alert(
                        crate::security::Event::TelegramAccount,
                        "telegram",
                        Transport::Telegram,
                        "-",
                        &format!(
                            "Telegram refused the userbot's session ({why}); Telegram commands stop until `vaultgram login` stores a new one"
                        ),
                    )
                    .await;
            }
        }
        e
    }

    /// Everything after the loop: the client is gone either way.
    pub(super) fn mark_stopped(&self, problem: Option<String>) {
        self.app.runtime.set_telegram(|s| {
            s.connected = false;
            s.problem = problem;
            s.down_since.get_or_insert_with(crate::clock::unix_secs);
        });
    }

    /// Writes the session back if it is still the one this client loaded:
    /// check-and-set on the version read (a `vaultgram login` meanwhile wins
    /// and this client restarts from it), and never a session whose home
    /// key grammers replaced (after a transport 404 the new key is not
    /// logged in; the stored one may still be good).
    pub(super) async fn save(&self, client: &Client, version: &mut u64) -> Result<(), ChatError> {
        if self.term.is_lost() {
            return Ok(());
        }
        if !client.key_unchanged() {
            return Err(ChatError::Reload(
                "the client replaced the session's auth key; not saved, restarting from the stored session".into(),
            ));
        }
        let s = client.export();
        let vault = self.app.broker.current();
        let meta = crate::records::session::Meta {
            written_by: crate::records::session::WRITTEN_BY_RUNNER.into(),
            saved_at: String::new(),
            auth: self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        match self
            .store
            .save_cas(&vault, &s, self.node, Some(*version), &meta)
            .await
        {
            Ok(v) => {
                *version = v;
                tracing::debug!(version = v, "telegram session saved");
                Ok(())
            }
            Err(VaultError::Conflict(_)) => {
                tracing::warn!(
                    node = self.node,
                    "telegram: the stored session changed (a new login); restarting from it"
                );
                Err(ChatError::Reload("the stored session was replaced".into()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "telegram session not saved");
                Ok(())
            }
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.app.cfg.etcd.prefix
    }

    pub(super) fn record(&self, state: ClaimState) -> Vec<u8> {
        serde_json::to_vec(&Handled {
            state,
            node: self.node.into(),
            at: crate::clock::unix_secs(),
        })
        .unwrap_or_default()
    }

    /// Claims `(chat, id)`; `Some(previous state)` when it was handled or
    /// claimed before, `None` when this call claimed it. Errors and a lost
    /// leadership come back as `Err` (nothing may run then).
    pub(super) async fn claim(
        &self,
        chat: i64,
        id: i32,
        state: ClaimState,
    ) -> Result<Option<ClaimState>, String> {
        let etcd = &self.app.etcd;
        let key = self.handled_key(chat, id);
        let lease = self.lease().await.map_err(|e| e.to_string())?;
        match etcd
            .claim_guarded(&self.term.guard, &key, &self.record(state), lease)
            .await
        {
            Ok(Claim::Claimed) => Ok(None),
            Ok(Claim::Exists) => {
                let prev = etcd
                    .get(&key)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice::<Handled>(&v).ok())
                    .map_or(ClaimState::Other, |h| h.state);
                Ok(Some(prev))
            }
            Ok(Claim::NotLeader) => {
                self.term.fence("a guarded write was refused");
                Err("not the leader".into())
            }
            Err(e) => {
                // A stale shared lease (revoked, expired) is re-granted next time.
                self.dedup.invalidate();
                Err(e.to_string())
            }
        }
    }

    /// The shared lease for the leader's keys; a fresh one is recorded
    /// only while this term's Guard holds (a refusal fences the term).
    pub(super) async fn lease(&self) -> Result<i64, crate::etcd::EtcdError> {
        let r = self
            .dedup
            .get_guarded(&self.app.etcd, &self.term.guard)
            .await;
        if matches!(r, Err(crate::etcd::EtcdError::NotLeader)) {
            self.term.fence("a guarded write was refused");
        }
        r
    }

    /// A guarded write by the leader; `false` when it did not happen.
    pub(super) async fn put_guarded(&self, key: &str, value: &[u8]) -> bool {
        let etcd = &self.app.etcd;
        let lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "telegram: etcd write skipped");
                return false;
            }
        };
        match etcd.put_guarded(&self.term.guard, key, value, lease).await {
            Ok(true) => true,
            Ok(false) => {
                self.term.fence("a guarded write was refused");
                false
            }
            Err(e) => {
                self.dedup.invalidate();
                tracing::warn!(error = %e, "telegram: etcd write failed");
                false
            }
        }
    }

    /// The claim key of message `id` in `chat`, scoped to this account (a
    /// login with another account has its own message ids).
    pub(super) fn handled_key(&self, chat: i64, id: i32) -> String {
        route::handled_key(
            self.prefix(),
            self.me.load(std::sync::atomic::Ordering::Relaxed),
            chat,
            id,
        )
    }

    /// Guarded delete by the leader; `false` (and fenced) when refused.
    pub(super) async fn delete_guarded(&self, key: &str) -> bool {
        match self.app.etcd.delete_guarded(&self.term.guard, key).await {
            Ok(true) => true,
            Ok(false) => {
                self.term.fence("a guarded write was refused");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "telegram: etcd delete failed");
                false
            }
        }
    }
}

/// Commits the state of the last handled update if its position is
/// settled (everything up to it has been read and handled): never a
/// position inside a batch whose rest still waits.
async fn commit_settled(
    client: &Client,
    rx: &IntakeRx,
    handled: &mut Option<(u64, super::intake::Mark)>,
) {
    if let Some((n, _)) = handled {
        if rx.settled(*n) {
            if let Some((_, mark)) = handled.take() {
                client.commit(mark).await;
            }
        }
    }
}
