//! What the runner does with one message from an operator: route it
//! (run, leave a group, tell of a stale command, delete a secret that
//! must not run), and for a command: its secret input's deletion recorded
//! first, the sender resolved, the message claimed, the command
//! dispatched, a secret reply's deletion recorded, the reply sent in
//! parts, the claim marked done.

use std::time::Duration;

use zeroize::Zeroizing;

use super::chat::ChatError;
use super::client::Client;
use super::route::{self, ClaimState, Deletion, Incoming, Route};
use super::term::{Term, RESOLVE_RESTARTS};
use crate::config::{Config, Operator};
use crate::transport_kind::Transport;

impl Term<'_> {
    /// Handles one message. `Err` only for what ends the client (Telegram
    /// refused the session, or a sender that cannot be resolved: the
    /// update is then not committed and comes again after the restart).
    pub(super) async fn handle(&self, client: &Client, msg: Incoming) -> Result<(), ChatError> {
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
            Route::Group { chat, channel } => {
                self.leave_group(client, chat, channel).await;
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
        self.run_command(client, &msg, op).await
    }

    /// Someone added the account to a group or channel: only private
    /// chats are served, so it leaves (once per term).
    async fn leave_group(&self, client: &Client, chat: i64, channel: bool) {
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
                Err(e) => tracing::warn!(chat, error = %e, "telegram: could not leave a group"),
            }
        }
    }

    /// An operator's command, typed here, recently: run exactly once and
    /// answered. `Err` only for what ends the client.
    async fn run_command(
        &self,
        client: &Client,
        msg: &Incoming,
        op: &Operator,
    ) -> Result<(), ChatError> {
        let cfg: &Config = &self.app.cfg;
        let me = client.me();
        // Secret input: its deletion is recorded before anything else can
        // fail (a resolve, a claim, a crash, a fence), so the message never
        // stays in the chat.
        let secret_input = route::input_carries_secret(&msg.text);
        if secret_input {
            self.schedule_input_deletion(client, msg).await;
        }
        // A first message usually comes as `updateShortMessage`, with no
        // access hash: learn it now, or the reply would fail after the
        // command ran. A transient failure is retried; a lasting one ends
        // the client without committing this update, so it is delivered
        // again after the restart rather than dropped.
        self.resolve(client, msg).await?;
        let marked = self
            .unreachable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&op.name);
        if marked && !msg.outgoing {
            self.mark_reachable(op, true).await;
        }
        if !self.claim_to_run(client, msg).await {
            return Ok(());
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
        let (sent, fatal) = self.send_reply(client, msg, &chunks, secret).await;
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

    /// Claims the message for running; `false` when it must not run: run
    /// before (a duplicate), interrupted by a failover (it may have had its
    /// effect: the operator is told), or not recordable (etcd down).
    async fn claim_to_run(&self, client: &Client, msg: &Incoming) -> bool {
        match self.claim(msg.chat, msg.id, ClaimState::Started).await {
            Ok(None) => true,
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
                false
            }
            Ok(Some(_)) => {
                tracing::info!(msg_id = msg.id, "duplicate message skipped");
                self.run_deletions(client).await;
                false
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
                false
            }
        }
    }

    /// Sends a reply's parts; the ids Telegram gave back, and the error
    /// that ends the client, if one did.
    async fn send_reply(
        &self,
        client: &Client,
        msg: &Incoming,
        chunks: &[Zeroizing<String>],
        secret: bool,
    ) -> (Vec<i32>, Option<ChatError>) {
        let cfg: &Config = &self.app.cfg;
        let mut sent = Vec::new();
        let mut fatal = None;
        for chunk in chunks {
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
        (sent, fatal)
    }

    /// Resolves the sender of a first message, retrying a transient
    /// failure; a lasting one ends the client (the update stays
    /// uncommitted and is delivered again), and after
    /// [`RESOLVE_RESTARTS`] restarts for the same message it is given up
    /// with an error line (never silently).
    pub(super) async fn resolve(&self, client: &Client, msg: &Incoming) -> Result<(), ChatError> {
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

    /// A message from Telegram's service account (777000): a login or a
    /// login code for the userbot's own account is a security event —
    /// every admin is alerted at once (never with the text: it may hold
    /// the code). Audited as Telegram's, not as an unknown sender's.
    pub(super) async fn telegram_service(&self, msg: &Incoming) {
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
    pub(super) fn stale_note(&self, chat: i64, age_secs: u64) {
        let mut s = self.stale.lock().unwrap_or_else(|e| e.into_inner());
        let e = s.entry(chat).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(age_secs);
    }
}
