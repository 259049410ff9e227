//! One leadership term of the Telegram runner: the client started from the
//! stored session, each message claimed in etcd before it runs and then
//! dispatched and answered, the notification queue and the scheduled
//! deletions served, the session saved back. `super::run` owns the
//! election loop around it.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use zeroize::Zeroizing;

use super::chat::ChatError;
use super::client::{start_client, Client};
use super::intake::IntakeRx;
use super::route::{self, ClaimState, Deletion, Handled, Incoming, Route};
use super::session::SessionStore;
use crate::config::Config;
use crate::dispatch::App;
use crate::etcd::{Claim, SharedLease};
use crate::leader::Leadership;
use crate::transport_kind::Transport;
use crate::vault::VaultError;

/// How often at most the strangers' messages get an audit record.
const STRANGER_SUMMARY: Duration = Duration::from_secs(60);

/// A command whose sender cannot be resolved is given up after this many
/// client restarts for it (each restart delivers it again).
const RESOLVE_RESTARTS: u32 = 3;

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
        let vault = self.app.broker.current();
        let (stored, mut version) = self.store.load_versioned(&vault).await?.ok_or_else(|| {
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
        // The fence is armed before the client exists: losing the lease
        // while grammers is still connecting (no timeout there) drops the
        // half-started client at once.
        let stop = CancellationToken::new();
        // Bounded: grammers' connect, key exchange and first requests have
        // no timeout of their own (a real run waited over 3 minutes on an
        // answer the server had lost). Dropping the start drops the
        // half-built client and its connections.
        let limit = Duration::from_secs(self.app.cfg.telegram.start_timeout_secs);
        let started = tokio::select! {
            biased;
            _ = lost.cancelled() => {
                tracing::warn!(node = self.node, "telegram client stopped");
                return Ok(());
            }
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(limit, start_client(self.app, &stored, &stop)) => r.unwrap_or_else(|_| {
                Err(ChatError::Io(format!(
                    "the client did not start within {} s (telegram.start_timeout_secs)",
                    limit.as_secs()
                )))
            }),
        };
        drop(stored);
        let (client, mut rx, intake) = match started {
            Ok((c, rx, intake)) => (c, rx, AbortOnDropHandle::new(intake)),
            Err(e) => return Err(self.refuse(version, e).await),
        };
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
        // Fencing does not wait for the loop below (a handler may be stuck
        // on a partitioned etcd): losing the lease stops the client at once.
        // Aborted if this future is dropped (a panic unwinding through it).
        let mut fence = AbortOnDropHandle::new(tokio::spawn({
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
        }));
        // Who can be told of requests: a fresh login has no access hashes;
        // the account's dialogs bring those of everyone it ever chatted
        // with, and /pending and doctor name the rest.
        self.learn_reachability(&client).await;
        // A session a login has just replaced started from the current
        // update state: what operators sent while the old one was dead
        // was never seen. They are told, once.
        self.tell_after_relogin(version, &meta).await;
        self.publish_authorizations(&client).await;
        // A new leader first finishes what the previous one scheduled.
        self.run_deletions(&client).await;
        let tg = &self.app.cfg.telegram;
        let mut save = tokio::time::interval(Duration::from_secs(tg.session_save_secs));
        save.tick().await;
        let mut deletions = tokio::time::interval(Duration::from_secs(1));
        let mut ping = tokio::time::interval(Duration::from_secs(tg.ping_secs));
        ping.tick().await;
        let ping_limit = Duration::from_secs(tg.ping_secs.clamp(1, 10));
        // The first stranger of a term is recorded at the next tick.
        // The last handled update whose state is not committed yet.
        let mut handled = None;
        let mut summarized = std::time::Instant::now()
            .checked_sub(STRANGER_SUMMARY)
            .unwrap_or_else(std::time::Instant::now);
        let outcome = loop {
            tokio::select! {
                biased;
                _ = lost.cancelled() => break Ok(false),
                _ = shutdown.cancelled() => break Ok(true),
                d = rx.recv() => match d {
                    // Runs to completion: the select does not interrupt a
                    // branch body, so a command is never cut in half.
                    Some((n, d)) => {
                        if let Some(msg) = d.msg {
                            self.app.runtime.set_telegram(|s| s.last_update = Some(crate::clock::unix_secs()));
                            if let Err(e) = self.handle(&client, msg).await {
                                // Not committed: delivered again after a restart.
                                break Err(e);
                            }
                        }
                        // Only now, and only at a settled position, may the
                        // session move past this update (intake.rs).
                        handled = Some((n, d.mark));
                        commit_settled(&client, &rx, &mut handled).await;
                    }
                    None => break Err(ChatError::Io("the client stopped delivering updates".into())),
                },
                _ = save.tick() => if let Err(e) = self.save(&client, &mut version).await {
                    break Err(e);
                },
                _ = deletions.tick() => {
                    commit_settled(&client, &rx, &mut handled).await;
                    self.summarize_strangers(&rx, &mut summarized, false).await;
                    self.tell_stale(&client).await;
                    self.run_deletions(&client).await;
                    if let Err(e) = self.run_notices(&client).await {
                        break Err(e);
                    }
                }
                _ = ping.tick() => match tokio::time::timeout(ping_limit, client.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Err(ChatError::Io(format!(
                        "no answer to a ping within {} s; reconnecting", ping_limit.as_secs()
                    ))),
                },
            }
        };
        // Intake first: it never waits for a runner that left its loop.
        stop.cancel();
        let _ = intake.await;
        commit_settled(&client, &rx, &mut handled).await;
        self.summarize_strangers(&rx, &mut summarized, true).await;
        match outcome {
            Ok(true) => {
                self.mark_stopped(Some("shutting down".into()));
                fence.abort();
                // Shutdown: intake stopped; store the state of the last
                // handled update, then quit (the caller resigns afterwards).
                tracing::info!(node = self.node, "telegram: intake stopped");
                let _ = self.save(&client, &mut version).await;
                client.quit(true).await;
                tracing::info!(node = self.node, "telegram client stopped");
                Ok(())
            }
            Ok(false) => {
                self.mark_stopped(Some("not the leader".into()));
                // Fenced: the kill switch already stopped the client; write
                // nothing (another node may be leading by now).
                let _ = (&mut fence).await;
                client.quit(false).await;
                Ok(())
            }
            Err(e) => {
                self.mark_stopped(Some(e.to_string()));
                fence.abort();
                // The state of what was handled is good: keep it for the
                // next start (unless the session was replaced or refused).
                if !matches!(e, ChatError::Reload(_) | ChatError::Unauthorized(_)) {
                    let _ = self.save(&client, &mut version).await;
                }
                client.quit(false).await;
                tracing::warn!(node = self.node, "telegram client stopped");
                Err(self.refuse(version, e).await)
            }
        }
    }

    /// One audit record for the strangers' messages the intake dropped
    /// since the last one, at most once per [`STRANGER_SUMMARY`] (`force`:
    /// now, when the term ends). Anyone else gets no reply, and no etcd
    /// write or Vault call per message (a flood must not cost more).
    async fn summarize_strangers(&self, rx: &IntakeRx, last: &mut std::time::Instant, force: bool) {
        if !force && last.elapsed() < STRANGER_SUMMARY {
            return;
        }
        let Some(s) = rx.take_strangers() else {
            return;
        };
        *last = std::time::Instant::now();
        crate::metrics::strangers_ignored(s.messages, Transport::Telegram.as_str());
        tracing::info!(
            messages = s.messages,
            senders = s.senders,
            "telegram: messages from non-operators ignored"
        );
        self.app
            .audit
            .record(crate::records::audit::AuditRecord::new(
                "-",
                "unknown",
                Transport::Telegram,
                "-",
                Some(format!(
                    "{} message(s) from {}{} sender(s), e.g. telegram:{}",
                    s.messages,
                    s.senders,
                    if s.senders >= 1000 { "+" } else { "" },
                    s.example
                )),
                "ignored",
            ))
            .await;
    }

    /// An `Unauthorized` error marks this session version as refused, said
    /// once and loudly; the client is not started again with it.
    async fn refuse(&self, version: u64, e: ChatError) -> ChatError {
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
    fn mark_stopped(&self, problem: Option<String>) {
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
    async fn save(&self, client: &Client, version: &mut u64) -> Result<(), ChatError> {
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

    fn prefix(&self) -> &str {
        &self.app.cfg.etcd.prefix
    }

    fn record(&self, state: ClaimState) -> Vec<u8> {
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
    async fn claim(
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
    async fn lease(&self) -> Result<i64, crate::etcd::EtcdError> {
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
    async fn put_guarded(&self, key: &str, value: &[u8]) -> bool {
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

    /// Handles one message. `Err` only for what ends the client (Telegram
    /// refused the session, or a sender that cannot be resolved: the
    /// update is then not committed and comes again after the restart).
    async fn handle(&self, client: &Client, msg: Incoming) -> Result<(), ChatError> {
        let cfg: &Config = &self.app.cfg;
        let me = client.me();
        let now = crate::clock::unix_secs() as i64;
        let route = route::route(
            &msg,
            &cfg.operators,
            me,
            now,
            cfg.telegram.max_command_age_secs,
        );
        // The intake forwards only what concerns an operator (strangers are
        // counted there, for one summary a minute): nothing else costs an
        // etcd write here either.
        let op = match route {
            Route::Command(op) => op,
            Route::Ignore(reason) => {
                tracing::debug!(msg_id = msg.id, reason, "telegram: update ignored");
                return Ok(());
            }
            Route::Unknown(_) => {
                tracing::debug!(msg_id = msg.id, "telegram: a stranger's message ignored");
                return Ok(());
            }
            Route::TelegramService => {
                self.telegram_service(&msg).await;
                return Ok(());
            }
            // Someone added the account to a group or channel: only private
            // chats are served, so it leaves (once per term).
            Route::Group { chat, channel } => {
                let first = self
                    .left
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(chat);
                if first && !self.term.is_lost() {
                    match client.leave(chat, channel).await {
                        Ok(()) => tracing::info!(
                            chat,
                            channel,
                            "telegram: left a group the account was added to"
                        ),
                        Err(e) => {
                            tracing::warn!(chat, error = %e, "telegram: could not leave a group")
                        }
                    }
                }
                return Ok(());
            }
            Route::NotRun { op, why, secret } => {
                tracing::info!(msg_id = msg.id, operator = %op.name, why, "telegram: an operator's message not run");
                if secret {
                    self.delete_input(client, &msg).await;
                }
                // Any message from an operator makes them reachable.
                if !msg.outgoing && client.resolve(msg.chat, msg.id).await.is_ok() {
                    self.mark_reachable(op, true).await;
                }
                return Ok(());
            }
            Route::Stale {
                op,
                age_secs,
                secret,
            } => {
                tracing::info!(msg_id = msg.id, operator = %op.name, age_secs, "telegram: a command older than telegram.max_command_age_secs not run");
                if secret {
                    self.delete_input(client, &msg).await;
                }
                // Claimed, so that a redelivery is not counted again.
                if let Ok(None) = self.claim(msg.chat, msg.id, ClaimState::Stale).await {
                    self.stale_note(msg.chat, age_secs);
                }
                return Ok(());
            }
        };
        if self.term.is_lost() {
            return Ok(());
        }
        // Secret input: its deletion is recorded before anything else can
        // fail (a resolve, a claim, a crash, a fence), so the message never
        // stays in the chat.
        let secret_input = route::input_carries_secret(&msg.text);
        if secret_input {
            self.schedule_input_deletion(client, &msg).await;
        }
        // A first message usually comes as `updateShortMessage`, with no
        // access hash: learn it now, or the reply would fail after the
        // command ran. A transient failure is retried; a lasting one ends
        // the client without committing this update, so it is delivered
        // again after the restart rather than dropped.
        self.resolve(client, &msg).await?;
        let marked = self
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&op.name);
        if marked && !msg.outgoing {
            self.mark_reachable(op, true).await;
        }
        match self.claim(msg.chat, msg.id, ClaimState::Started).await {
            Ok(None) => {}
            Ok(Some(ClaimState::Started)) => {
                // Claimed by a leader that stopped before finishing: it may or
                // may not have run. Running it again could run it twice.
                tracing::warn!(
                    msg_id = msg.id,
                    "telegram: message interrupted by a failover, not re-run"
                );
                let text = format!(
                    "error (unavailable): message {} was being handled when the previous leader stopped; it was not run again. Check its effect (/audit) and send it again if needed.",
                    msg.id
                );
                let _ = client.send(msg.chat, msg.id, &text, false).await;
                let key = self.handled_key(msg.chat, msg.id);
                let _ = self.put_guarded(&key, &self.record(ClaimState::Done)).await;
                self.run_deletions(client).await;
                return Ok(());
            }
            Ok(Some(_)) => {
                tracing::info!(msg_id = msg.id, "duplicate message skipped");
                self.run_deletions(client).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(msg_id = msg.id, error = %e, "telegram: cannot record the message; not run");
                if !self.term.is_lost() {
                    let _ = client
                        .send(
                            msg.chat,
                            msg.id,
                            "error (unavailable): etcd is unreachable; the command was not run",
                            false,
                        )
                        .await;
                }
                self.run_deletions(client).await;
                return Ok(());
            }
        }
        let key = self.handled_key(msg.chat, msg.id);
        let result = self
            .app
            .dispatch(Some(op), &op.name, Transport::Telegram, &msg.text)
            .await;
        let (text, secret) = match &result {
            Some(Ok(r)) => (Zeroizing::new(r.as_str().to_string()), r.secret),
            Some(Err(e)) => (
                Zeroizing::new(format!("error ({}): {}", e.kind, e.message)),
                false,
            ),
            None => (Zeroizing::new(String::new()), false),
        };
        // It ran. From here on a redelivery is a duplicate even if this
        // node dies before its reply is out (the audit trail has it);
        // only a claim still `started` may or may not have run.
        let _ = self.put_guarded(&key, &self.record(ClaimState::Ran)).await;
        drop(result);
        let mut chunks = route::split(&text, route::MESSAGE_LIMIT);
        if chunks.is_empty() {
            chunks.push(Zeroizing::new("(no output)".into()));
        }
        // A secret reply's deletion is recorded before it is sent: it
        // names the command's message, and our replies to it are looked up
        // when it is due, so a reply delivered by a send that then failed,
        // or sent just before a crash or a fence, is found and deleted too.
        let reply_deletion = secret.then(|| Deletion {
            chat: msg.chat,
            ids: Vec::new(),
            due_ms: crate::clock::unix_ms() + cfg.telegram.secret_reply_ttl_secs * 1000,
            replies_to: Some(msg.id),
            account: me,
        });
        if let Some(d) = &reply_deletion {
            let value = serde_json::to_vec(d).unwrap_or_default();
            let _ = self.put_guarded(&d.key(self.prefix()), &value).await;
        }
        let mut sent = Vec::new();
        let mut fatal = None;
        for chunk in &chunks {
            if self.term.is_lost() {
                break;
            }
            let mut attempt = client.send(msg.chat, msg.id, chunk, secret).await;
            // A reply is worth waiting for (up to telegram.flood_wait_max_
            // secs, once): the operator is waiting for it.
            if let Err(ChatError::FloodWait(d)) = &attempt {
                if d.as_secs() <= cfg.telegram.flood_wait_max_secs && !self.term.is_lost() {
                    tracing::warn!(
                        msg_id = msg.id,
                        wait_s = d.as_secs(),
                        "telegram: FLOOD_WAIT on a reply; waiting it out"
                    );
                    tokio::time::sleep(*d).await;
                    attempt = client.send(msg.chat, msg.id, chunk, secret).await;
                }
            }
            match attempt {
                Ok(id) if id != 0 => sent.push(id),
                // Delivered without its id (a retried send that got
                // RANDOM_ID_DUPLICATE, or id 0): found again by the
                // deletion's look-up.
                Ok(_) | Err(ChatError::Duplicate(_)) => {}
                Err(e @ ChatError::Unauthorized(_)) => {
                    tracing::warn!(msg_id = msg.id, error = %e, "telegram: reply not sent");
                    fatal = Some(e);
                    break;
                }
                Err(ChatError::FloodWait(d)) => {
                    tracing::warn!(
                        msg_id = msg.id,
                        wait_s = d.as_secs(),
                        "telegram: FLOOD_WAIT above telegram.flood_wait_max_secs; reply not sent"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(msg_id = msg.id, error = %e, "telegram: reply not sent");
                    break;
                }
            }
        }
        if msg.chat == me {
            // Our replies come back into Saved Messages as updates: claim
            // them now so that none is ever taken for a command.
            for id in &sent {
                let _ = self.claim(msg.chat, *id, ClaimState::Sent).await;
            }
        }
        if let Some(mut d) = reply_deletion {
            // The ids we know, besides the look-up.
            d.ids = sent;
            let value = serde_json::to_vec(&d).unwrap_or_default();
            let _ = self.put_guarded(&d.key(self.prefix()), &value).await;
        }
        let _ = self.put_guarded(&key, &self.record(ClaimState::Done)).await;
        if secret_input {
            self.run_deletions(client).await;
        }
        fatal.map_or(Ok(()), Err)
    }

    /// The claim key of message `id` in `chat`, scoped to this account (a
    /// login with another account has its own message ids).
    fn handled_key(&self, chat: i64, id: i32) -> String {
        route::handled_key(
            self.prefix(),
            self.me.load(std::sync::atomic::Ordering::Relaxed),
            chat,
            id,
        )
    }

    /// Records the deletion of an operator's message that carried secret
    /// input, due now; if etcd cannot take the record, deletes at once.
    async fn schedule_input_deletion(&self, client: &Client, msg: &Incoming) {
        let d = Deletion {
            chat: msg.chat,
            ids: vec![msg.id],
            due_ms: crate::clock::unix_ms(),
            replies_to: None,
            account: client.me(),
        };
        let value = serde_json::to_vec(&d).unwrap_or_default();
        if !self.put_guarded(&d.key(self.prefix()), &value).await && !self.term.is_lost() {
            if let Err(e) = client.delete(msg.chat, &[msg.id]).await {
                tracing::warn!(msg_id = msg.id, error = %e, "telegram: secret input neither recorded for deletion nor deleted");
            }
        }
    }

    /// An operator's message that does not run but carries a secret:
    /// deleted now (recorded first, as for a command).
    async fn delete_input(&self, client: &Client, msg: &Incoming) {
        if self.term.is_lost() {
            return;
        }
        self.schedule_input_deletion(client, msg).await;
        self.run_deletions(client).await;
    }

    /// Resolves the sender of a first message, retrying a transient
    /// failure; a lasting one ends the client (the update stays
    /// uncommitted and is delivered again), and after
    /// [`RESOLVE_RESTARTS`] restarts for the same message it is given up
    /// with an error line (never silently).
    async fn resolve(&self, client: &Client, msg: &Incoming) -> Result<(), ChatError> {
        let mut last = None;
        for wait_ms in [0u64, 300, 1000] {
            if wait_ms > 0 {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            match client.resolve(msg.chat, msg.id).await {
                Ok(()) => {
                    self.unresolved
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(msg.chat, msg.id));
                    return Ok(());
                }
                Err(e @ ChatError::Unauthorized(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        let e = last.map(|e| e.to_string()).unwrap_or_default();
        let tries = {
            let mut u = self.unresolved.lock().unwrap_or_else(|e| e.into_inner());
            let n = u.entry((msg.chat, msg.id)).or_insert(0);
            *n += 1;
            *n
        };
        if tries > RESOLVE_RESTARTS {
            tracing::error!(msg_id = msg.id, chat = msg.chat, error = %e, "telegram: the sender of a command cannot be resolved after {RESOLVE_RESTARTS} client restarts; the command is not run");
            return Ok(());
        }
        Err(ChatError::Io(format!(
            "cannot resolve the sender of message {} ({e}); restarting the client, the update comes again",
            msg.id
        )))
    }

    /// Learns access hashes from the account's dialogs (bounded), then
    /// marks every operator the session cannot address as unreachable
    /// (`/pending`, `doctor`) and clears the others.
    async fn learn_reachability(&self, client: &Client) {
        match tokio::time::timeout(Duration::from_secs(20), client.learn_dialogs(500)).await {
            Ok(Ok(n)) => tracing::info!(
                dialogs = n,
                "telegram: access hashes learnt from the dialogs"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "telegram: dialogs not read"),
            Err(_) => tracing::warn!("telegram: dialogs not read within 20 s"),
        }
        for op in &self.app.cfg.operators {
            if op.telegram_id == client.me() {
                continue;
            }
            self.mark_reachable(op, client.knows_user(op.telegram_id).await)
                .await;
        }
    }

    /// Records whether `op` can be addressed (`notify/unreachable/<op>`).
    async fn mark_reachable(&self, op: &crate::config::Operator, reachable: bool) {
        let key = crate::notify::unreachable_key(self.prefix(), &op.name);
        if reachable {
            // Guarded like every write of the leader: a fenced term must
            // not undo what its successor recorded.
            self.delete_guarded(&key).await;
            self.unreachable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&op.name);
        } else {
            let _ = self.put_guarded(&key, b"1").await;
            self.unreachable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(op.name.clone());
        }
    }

    /// After a re-login: every operator is told once (per session version)
    /// that messages sent between the old session's last save and the
    /// login were not seen — without echoing any.
    async fn tell_after_relogin(&self, version: u64, meta: &crate::records::session::Meta) {
        if meta.written_by != crate::records::session::WRITTEN_BY_LOGIN || version < 2 {
            return;
        }
        let vault = self.app.broker.current();
        let Ok(Some(before)) = self.store.meta(&vault, Some(version - 1)).await else {
            return;
        };
        if before.saved_at.is_empty() {
            return;
        }
        let key = format!("{}tg/relogin/{version}", self.prefix());
        let Ok(lease) = self.lease().await else {
            return;
        };
        match self
            .app
            .etcd
            .claim_guarded(&self.term.guard, &key, b"1", lease)
            .await
        {
            Ok(crate::etcd::Claim::Claimed) => {}
            _ => return,
        }
        tracing::info!(
            version,
            node = self.node,
            "telegram: a re-login's session starts; the operators are told"
        );
        let text = format!(
            "The userbot's Telegram session was replaced by a new login at {}. Messages sent to it after {} (the old session's last save) may not have been seen and did not run. Check /audit, and send again what you still need.",
            meta.saved_at, before.saved_at
        );
        let names: Vec<&str> = self
            .app
            .cfg
            .operators
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        if let Err(e) = self
            .app
            .notifier
            .queue(
                "relogin",
                &names,
                &text,
                crate::clock::unix_secs() + 24 * 3600,
            )
            .await
        {
            tracing::warn!(error = %e, "telegram: the re-login notice was not queued");
        }
    }

    /// The account's authorizations, for `doctor` (`tg/authorizations`):
    /// devices and apps, never a secret.
    async fn publish_authorizations(&self, client: &Client) {
        match tokio::time::timeout(Duration::from_secs(10), client.authorizations()).await {
            Ok(Ok(all)) => {
                let value = serde_json::json!({
                    "fetched_at": crate::clock::unix_secs(),
                    "authorizations": all,
                })
                .to_string();
                let key = format!("{}tg/authorizations", self.prefix());
                let _ = self.put_guarded(&key, value.as_bytes()).await;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "telegram: authorizations not read"),
            Err(_) => tracing::warn!("telegram: authorizations not read within 10 s"),
        }
    }

    /// A message from Telegram's service account (777000): a login or a
    /// login code for the userbot's own account is a security event —
    /// every admin is alerted at once (never with the text: it may hold
    /// the code). Audited as Telegram's, not as an unknown sender's.
    async fn telegram_service(&self, msg: &Incoming) {
        let t = msg.text.to_lowercase();
        let login = ["login", "log in", "logged in", "new device", "code"]
            .iter()
            .any(|w| t.contains(w));
        // Once per message, across failovers.
        if !matches!(
            self.claim(msg.chat, msg.id, ClaimState::Service).await,
            Ok(None)
        ) {
            return;
        }
        self.app
            .audit
            .record(crate::records::audit::AuditRecord::new(
                "-",
                "telegram:777000",
                Transport::Telegram,
                "telegram service",
                None,
                if login { "alerted" } else { "noted" },
            ))
            .await;
        if !login {
            return;
        }
        let when = crate::clock::rfc3339_millis(Duration::from_secs(msg.date.max(0) as u64));
        self.app
            .svc
            .alert(
                crate::security::Event::TelegramAccount,
                "telegram:777000",
                Transport::Telegram,
                "-",
                &format!(
                    "Telegram told the userbot's account of a new login or a login code ({when}). If it was not `vaultgram login`, end that session in Telegram → Settings → Devices now; `vaultgram doctor` lists the account's sessions."
                ),
            )
            .await;
    }

    /// One more command of `chat` that was too old to run.
    fn stale_note(&self, chat: i64, age_secs: u64) {
        let mut s = self.stale.lock().unwrap_or_else(|e| e.into_inner());
        let e = s.entry(chat).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(age_secs);
    }

    /// Tells each operator, once per burst, how many of their commands
    /// were too old to run — never what they said.
    async fn tell_stale(&self, client: &Client) {
        let noted: Vec<(i64, (u32, u64))> = {
            let mut s = self.stale.lock().unwrap_or_else(|e| e.into_inner());
            s.drain().collect()
        };
        let limit = self.app.cfg.telegram.max_command_age_secs;
        for (chat, (n, oldest)) in noted {
            if self.term.is_lost() {
                return;
            }
            let text = format!(
                "{n} command(s) you sent while the userbot was not reading (the oldest {} ago) were not run: commands older than {} are not run after downtime. Send again what you still need.",
                crate::command::reply::fmt_duration(oldest),
                crate::command::reply::fmt_duration(limit)
            );
            if let Err(e) = client.send(chat, 0, &text, false).await {
                tracing::warn!(chat, error = %e, "telegram: stale-command notice not sent");
            }
        }
    }

    /// Delivers queued notices ([`crate::notify`]), oldest first: each
    /// to its operator's private chat with the record's own `random_id`
    /// (a copy already sent by a deposed leader is refused by Telegram as
    /// a duplicate, not sent twice), then the record is deleted (guarded).
    /// A failure is retried with backoff until the notice expires; then it
    /// is dropped with an audit record. An operator the session cannot
    /// address (no access hash: they never wrote to the userbot) is marked
    /// `not reachable` for `/pending`.
    async fn run_notices(&self, client: &Client) -> Result<(), ChatError> {
        if self.term.is_lost() {
            return Ok(());
        }
        let etcd = &self.app.etcd;
        let Ok(queued) = etcd
            .list_prefix(&crate::notify::queue_prefix(self.prefix()), 50, false)
            .await
        else {
            return Ok(());
        };
        let now = crate::clock::unix_ms();
        for entry in queued {
            if self.term.is_lost() {
                return Ok(());
            }
            let Ok(mut n) = serde_json::from_slice::<crate::notify::Notice>(&entry.value) else {
                self.delete_guarded(&entry.key).await;
                continue;
            };
            if n.not_before_ms > now {
                continue;
            }
            let op = self.app.cfg.operator_by_name(&n.to);
            let (Some(op), false) = (op, n.expires_at < now / 1000) else {
                tracing::warn!(to = %n.to, kind = %n.kind, attempts = n.attempts, "telegram: notice dropped undelivered");
                self.app
                    .audit
                    .record(crate::records::audit::AuditRecord::new(
                        "-",
                        &n.to,
                        Transport::Telegram,
                        &format!("notify {}", n.kind),
                        None,
                        "dropped",
                    ))
                    .await;
                self.delete_guarded(&entry.key).await;
                continue;
            };
            let unreachable = crate::notify::unreachable_key(self.prefix(), &op.name);
            // Split like a reply (Telegram refuses more than 4096 UTF-16
            // units); each part has its own `random_id`, derived, so a
            // retry after a partial delivery sends only what is missing.
            let mut sent = Ok(());
            for (i, part) in route::split(&n.text, route::MESSAGE_LIMIT)
                .iter()
                .enumerate()
            {
                match client
                    .send_once(op.telegram_id, part, n.random_id.wrapping_add(i as i64))
                    .await
                {
                    Ok(()) | Err(ChatError::Duplicate(_)) => {}
                    Err(e) => {
                        sent = Err(e);
                        break;
                    }
                }
            }
            match sent {
                Ok(()) => {
                    tracing::info!(to = %op.name, kind = %n.kind, "telegram: notice sent");
                    if !self.delete_guarded(&entry.key).await {
                        return Ok(());
                    }
                    self.delete_guarded(&unreachable).await;
                }
                Err(e @ ChatError::Unauthorized(_)) => return Err(e),
                // Telegram says when sending may go on: this notice, and
                // the others of this round, wait for it (the loop does not:
                // commands, replies and deletions keep going).
                Err(ChatError::FloodWait(d)) => {
                    tracing::warn!(to = %op.name, kind = %n.kind, wait_s = d.as_secs(), "telegram: FLOOD_WAIT on a notice; retried after it");
                    n.attempts += 1;
                    n.not_before_ms = now + d.as_millis() as u64;
                    let value = serde_json::to_vec(&n).unwrap_or_default();
                    if let Err(e) = etcd
                        .put_guarded(&self.term.guard, &entry.key, &value, entry.lease)
                        .await
                    {
                        tracing::warn!(error = %e, "telegram: notice retry not recorded");
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(to = %op.name, kind = %n.kind, error = %e, "telegram: notice not sent; retried later");
                    if matches!(e, ChatError::UnknownPeer(_)) {
                        let _ = self.put_guarded(&unreachable, b"1").await;
                    }
                    n.retry_later(now);
                    let value = serde_json::to_vec(&n).unwrap_or_default();
                    if let Err(e) = etcd
                        .put_guarded(&self.term.guard, &entry.key, &value, entry.lease)
                        .await
                    {
                        tracing::warn!(error = %e, "telegram: notice retry not recorded");
                    }
                }
            }
        }
        Ok(())
    }

    /// Guarded delete by the leader; `false` (and fenced) when refused.
    async fn delete_guarded(&self, key: &str) -> bool {
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

    /// Deletes the messages whose time has come, oldest first; a record is
    /// removed only after Telegram confirmed the deletion. A record that
    /// names replies (`replies_to`) has them looked up first. One that
    /// fails is kept for the next round and does not hold up the others;
    /// one of another account (a login with another account since) cannot
    /// be carried out here and is dropped, with a warning.
    async fn run_deletions(&self, client: &Client) {
        if self.term.is_lost() {
            return;
        }
        let etcd = &self.app.etcd;
        let due = match etcd
            .list_prefix(&route::deletions_prefix(self.prefix()), 100, false)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "telegram: deletions not listed");
                return;
            }
        };
        let now = crate::clock::unix_ms();
        let me = client.me();
        for entry in due {
            let Ok(d) = serde_json::from_slice::<Deletion>(&entry.value) else {
                continue;
            };
            if d.due_ms > now || self.term.is_lost() {
                break;
            }
            if d.account != 0 && d.account != me {
                tracing::warn!(
                    chat = d.chat,
                    account = d.account,
                    "telegram: a deletion of another account's messages dropped (a login with another account since)"
                );
                let _ = self.delete_guarded(&entry.key).await;
                continue;
            }
            let mut ids = d.ids.clone();
            if let Some(r) = d.replies_to {
                match client.find_replies(d.chat, r).await {
                    Ok(found) => ids.extend(found.into_iter().filter(|i| !d.ids.contains(i))),
                    Err(e) => {
                        tracing::warn!(error = %e, "telegram: replies to delete not looked up; retried later");
                        continue;
                    }
                }
            }
            let deleted = if ids.is_empty() {
                Ok(())
            } else {
                client.delete(d.chat, &ids).await
            };
            match deleted {
                Ok(()) => {
                    tracing::info!(
                        chat = d.chat,
                        count = ids.len(),
                        "telegram: messages deleted"
                    );
                    // Refused: fenced, stop; an etcd error: the record is
                    // kept and the deletion repeated later (harmless).
                    if !self.delete_guarded(&entry.key).await && self.term.is_lost() {
                        return;
                    }
                }
                Err(e @ (ChatError::Unauthorized(_) | ChatError::FloodWait(_))) => {
                    // Refused, or told to wait: the records stay for later.
                    tracing::warn!(error = %e, "telegram: deletion failed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "telegram: deletion failed; retried later");
                }
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
