//! Deletions of secrets from the chat: recorded in etcd first, carried
//! out when due by whichever node leads, removed only once Telegram
//! confirmed.

use super::chat::ChatError;
use super::client::Client;
use super::route::{self, Deletion, Incoming};
use super::term::Term;

impl Term<'_> {
    /// Records the deletion of an operator's message that carried secret
    /// input, due now; if etcd cannot take the record, deletes at once.
    pub(super) async fn schedule_input_deletion(&self, client: &Client, msg: &Incoming) {
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
    pub(super) async fn delete_input(&self, client: &Client, msg: &Incoming) {
        if self.term.is_lost() {
            return;
        }
        self.schedule_input_deletion(client, msg).await;
        self.run_deletions(client).await;
    }

    /// Deletes the messages whose time has come, oldest first; a record is
    /// removed only after Telegram confirmed the deletion. A record that
    /// names replies (`replies_to`) has them looked up first. One that
    /// fails is kept for the next round and does not hold up the others;
    /// one of another account (a login with another account since) cannot
    /// be carried out here and is dropped, with a warning.
    pub(super) async fn run_deletions(&self, client: &Client) {
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
