//! What the leader tells operators and records about the account: the
//! notification queue (`notify.rs`) delivered, stale commands and the
//! strangers' summary, who can be reached, a re-login's notice, the
//! account's authorizations for `doctor`.

use std::time::Duration;

use super::chat::ChatError;
use super::client::Client;
use super::intake::IntakeRx;
use super::route;
use super::term::{Term, STRANGER_SUMMARY};
use crate::transport_kind::Transport;

impl Term<'_> {
    /// One audit record for the strangers' messages the intake dropped
    /// since the last one, at most once per [`STRANGER_SUMMARY`] (`force`:
    /// now, when the term ends). Anyone else gets no reply, and no etcd
    /// write or Vault call per message (a flood must not cost more).
    pub(super) async fn summarize_strangers(
        &self,
        rx: &IntakeRx,
        last: &mut std::time::Instant,
        force: bool,
    ) {
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

    /// Learns access hashes from the account's dialogs (bounded), then
    /// marks every operator the session cannot address as unreachable
    /// (`/pending`, `doctor`) and clears the others.
    pub(super) async fn learn_reachability(&self, client: &Client) {
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
    pub(super) async fn mark_reachable(&self, op: &crate::config::Operator, reachable: bool) {
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
    pub(super) async fn tell_after_relogin(
        &self,
        version: u64,
        meta: &crate::records::session::Meta,
    ) {
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
        if let Err(e) = self.tell_every_operator("relogin", &text).await {
            tracing::warn!(error = %e, "telegram: the re-login notice was not queued");
        }
    }

    /// Queues `text` to every operator, kept for a day: what the account
    /// owes everyone (nothing is echoed), not one requester.
    async fn tell_every_operator(
        &self,
        kind: &str,
        text: &str,
    ) -> Result<(), crate::notify::NotifyError> {
        let names: Vec<&str> = self
            .app
            .cfg
            .operators
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        let expires = crate::clock::unix_secs() + 24 * 3600;
        self.app.notifier.queue(kind, &names, text, expires).await
    }

    /// Telegram answered a catch-up with `differenceTooLong`: grammers
    /// skipped the gap, and whatever operators sent in it never arrives.
    /// Every operator is told (the same words as after a re-login: nothing
    /// is echoed, nothing ran) and the log says it at WARN.
    pub(super) async fn tell_update_gap(&self) {
        let gaps = crate::telemetry::take_update_gaps();
        if gaps == 0 {
            return;
        }
        let text = format!(
            "Telegram skipped updates the userbot had missed (differenceTooLong, at {}): messages sent to it while it was away were never delivered and did not run, and any secret in them is still in the chat: delete those messages yourself. Check /audit, and send again what you still need.",
            crate::clock::rfc3339_secs(crate::clock::unix_secs())
        );
        match self.tell_every_operator("update_gap", &text).await {
            Ok(_) => tracing::warn!(
                gaps,
                node = self.node,
                "telegram: updates lost (differenceTooLong); the operators are told"
            ),
            Err(e) => {
                // Told at the next tick instead.
                crate::telemetry::restore_update_gaps(gaps);
                tracing::warn!(error = %e, "telegram: updates lost (differenceTooLong); the notice was not queued");
            }
        }
    }

    /// The account's authorizations, for `doctor` (`tg/authorizations`):
    /// devices and apps, never a secret.
    pub(super) async fn publish_authorizations(&self, client: &Client) {
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

    /// Tells each operator, once per burst, how many of their commands
    /// were too old to run — never what they said.
    pub(super) async fn tell_stale(&self, client: &Client) {
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
    pub(super) async fn run_notices(&self, client: &Client) -> Result<(), ChatError> {
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
                crate::metrics::notice_dropped();
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
}
