//! The pure parts of the Telegram transport: which updates are commands
//! and from whom, which messages carry secret input, how replies are split,
//! and the etcd keys of claims and scheduled deletions. No I/O here, so all
//! of it is unit-tested from plain values.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::command::Command;
use crate::config::Operator;

/// Telegram's limit for one text message, in UTF-16 code units.
pub const MESSAGE_LIMIT: usize = 4096;

/// A new message as the client saw it (grammers or the test stand-in).
pub struct Incoming {
    pub id: i32,
    /// The chat's peer id (for a private chat: the other user; for Saved
    /// Messages: this account).
    pub chat: i64,
    /// The sender's user id, if the sender is a user.
    pub sender: Option<i64>,
    /// A one-to-one chat with a user (Saved Messages included).
    pub private: bool,
    /// Sent by this account.
    pub outgoing: bool,
    /// The message this one replies to (our replies carry the command's
    /// id: how a reply whose send "failed" is found again).
    pub reply_to: Option<i32>,
    /// May carry a secret (`/kv put … password=…`): zeroed on drop.
    pub text: Zeroizing<String>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("chat", &self.chat)
            .field("sender", &self.sender)
            .field("private", &self.private)
            .field("outgoing", &self.outgoing)
            .field("reply_to", &self.reply_to)
            .finish_non_exhaustive()
    }
}

/// What to do with an [`Incoming`].
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Not for us (groups, channels, our own replies, plain text): no reply,
    /// no audit record.
    Ignore(&'static str),
    /// A private message from someone not in `[[operators]]`: no reply, one
    /// audit record.
    Unknown(i64),
    /// A command from an operator.
    Command(&'a Operator),
}

/// Maps an update to its route. Only private chats and Saved Messages are
/// served; in Saved Messages (the account writing to itself) the account's
/// own operator entry applies.
pub fn route<'a>(msg: &Incoming, operators: &'a [Operator], me: i64) -> Route<'a> {
    if !msg.private {
        return Route::Ignore("not a private chat");
    }
    let text = msg.text.trim_start();
    if msg.outgoing {
        if msg.chat != me {
            return Route::Ignore("own message in another chat");
        }
        if !text.starts_with('/') {
            return Route::Ignore("not a command");
        }
        return match operators.iter().find(|o| o.telegram_id == me) {
            Some(op) => Route::Command(op),
            None => Route::Unknown(me),
        };
    }
    // In a private chat the sender is the chat's peer.
    let sender = msg.sender.unwrap_or(msg.chat);
    if sender != msg.chat {
        return Route::Ignore("sender is not the chat's peer");
    }
    match operators.iter().find(|o| o.telegram_id == sender) {
        Some(_) if !text.starts_with('/') => Route::Ignore("not a command"),
        Some(op) => Route::Command(op),
        None => Route::Unknown(sender),
    }
}

/// Whether the message carried secret input and must be deleted once
/// handled. A line that does not parse is deleted unless it is a bare
/// command word: a typo (`/panel ad NAME KIND URL USER PASSWORD`, a secret
/// pasted after a wrong command) must not leave a value in the chat.
pub fn input_carries_secret(text: &str) -> bool {
    match Command::parse(text) {
        Ok(cmd) => cmd.input_is_secret(),
        Err(_) => {
            let mut words = text.split_whitespace();
            let first = words.next();
            // "/kv put" alone carries nothing, but is plainly a secret
            // command being typed: delete it as well.
            words.next().is_some() || first.is_some_and(|w| !w.starts_with('/'))
        }
    }
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Splits `text` into messages of at most `limit` UTF-16 units (at least
/// 2, the width of one character), at line boundaries; a single longer
/// line is cut at character boundaries. Blank chunks are dropped (Telegram
/// refuses empty messages), so a blank text gives no chunk at all.
pub fn split(text: &str, limit: usize) -> Vec<Zeroizing<String>> {
    let limit = limit.max(2);
    let mut out: Vec<Zeroizing<String>> = Vec::new();
    let mut cur = Zeroizing::new(String::new());
    let mut cur_len = 0;
    let mut open = false;
    let take = |cur: &mut Zeroizing<String>| std::mem::replace(cur, Zeroizing::new(String::new()));
    for line in text.split('\n') {
        let len = utf16_len(line);
        if open && cur_len + 1 + len <= limit {
            cur.push('\n');
            cur.push_str(line);
            cur_len += 1 + len;
            continue;
        }
        if open {
            out.push(take(&mut cur));
            cur_len = 0;
        }
        open = true;
        if len <= limit {
            cur.push_str(line);
            cur_len = len;
            continue;
        }
        // One line longer than a message: cut it.
        for ch in line.chars() {
            let w = ch.len_utf16();
            if cur_len + w > limit && cur_len > 0 {
                out.push(take(&mut cur));
                cur_len = 0;
            }
            cur.push(ch);
            cur_len += w;
        }
    }
    if open {
        out.push(cur);
    }
    out.retain(|c| !c.trim().is_empty());
    out
}

/// The etcd key that records a handled message (exactly-once claim).
pub fn handled_key(prefix: &str, chat: i64, id: i32) -> String {
    format!("{prefix}tg/handled/{chat}/{id}")
}

/// State of a claim, stored as its value (never a message text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handled {
    /// `started` (claimed, running), `ran` (executed; the reply may not be
    /// out yet), `done`, `sent` (a message this broker sent into Saved
    /// Messages: never a command).
    pub state: String,
    pub node: String,
    pub at: u64,
}

/// Where scheduled deletions live: sorted by due time.
pub fn deletions_prefix(prefix: &str) -> String {
    format!("{prefix}tg/delete/")
}

/// One scheduled deletion: messages `ids` in `chat`, due at `due_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deletion {
    pub chat: i64,
    pub ids: Vec<i32>,
    pub due_ms: u64,
}

impl Deletion {
    /// Its key: zero-padded due time first, so a prefix listing in key
    /// order is in due order.
    pub fn key(&self, prefix: &str) -> String {
        format!(
            "{}{:015}-{}-{}",
            deletions_prefix(prefix),
            self.due_ms,
            self.chat,
            self.ids.first().copied().unwrap_or(0)
        )
    }
}

/// The deletions a handled message causes: the operator's own message at
/// once when it carried secret input, the reply after `reply_ttl_ms` when
/// it carries a secret.
pub fn plan_deletions(
    chat: i64,
    input: Option<i32>,
    secret_reply: &[i32],
    now_ms: u64,
    reply_ttl_ms: u64,
) -> Vec<Deletion> {
    let mut out = Vec::new();
    if let Some(id) = input {
        out.push(Deletion {
            chat,
            ids: vec![id],
            due_ms: now_ms,
        });
    }
    if !secret_reply.is_empty() {
        out.push(Deletion {
            chat,
            ids: secret_reply.to_vec(),
            due_ms: now_ms + reply_ttl_ms,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn op(name: &str, id: i64) -> Operator {
        Operator {
            name: name.into(),
            telegram_id: id,
            role: Role::Admin,
            unix_user: None,
            agent: None,
            totp_key: None,
        }
    }

    fn msg(chat: i64, sender: Option<i64>, private: bool, outgoing: bool, text: &str) -> Incoming {
        Incoming {
            id: 7,
            chat,
            sender,
            private,
            outgoing,
            reply_to: None,
            text: Zeroizing::new(text.into()),
        }
    }

    #[test]
    fn operators_in_private_chats_are_routed_to_their_entry() {
        let ops = [op("alice", 111), op("bob", 222)];
        let r = route(&msg(222, Some(222), true, false, "/whoami"), &ops, 999);
        assert_eq!(r, Route::Command(&ops[1]));
        let r = route(&msg(111, None, true, false, "  /help"), &ops, 999);
        assert_eq!(r, Route::Command(&ops[0]));
    }

    #[test]
    fn strangers_groups_and_plain_text_get_nothing() {
        let ops = [op("alice", 111)];
        assert_eq!(
            route(&msg(333, Some(333), true, false, "/get_keys"), &ops, 999),
            Route::Unknown(333)
        );
        // An operator writing in a group is ignored (not private).
        assert_eq!(
            route(&msg(-100, Some(111), false, false, "/get_keys"), &ops, 999),
            Route::Ignore("not a private chat")
        );
        assert_eq!(
            route(&msg(111, Some(111), true, false, "hello"), &ops, 999),
            Route::Ignore("not a command")
        );
        // A stranger's plain text is still a stranger (audited, no reply).
        assert_eq!(
            route(&msg(333, Some(333), true, false, "hi"), &ops, 999),
            Route::Unknown(333)
        );
        assert_eq!(
            route(&msg(111, Some(222), true, false, "/help"), &ops, 999),
            Route::Ignore("sender is not the chat's peer")
        );
    }

    #[test]
    fn saved_messages_use_the_accounts_own_entry_and_replies_elsewhere_are_ignored() {
        let ops = [op("alice", 111), op("self", 999)];
        assert_eq!(
            route(&msg(999, Some(999), true, true, "/whoami"), &ops, 999),
            Route::Command(&ops[1])
        );
        assert_eq!(
            route(&msg(999, Some(999), true, true, "API_ID: 1"), &ops, 999),
            Route::Ignore("not a command")
        );
        // Our reply to alice, echoed back as an outgoing update.
        assert_eq!(
            route(&msg(111, Some(999), true, true, "/help output"), &ops, 999),
            Route::Ignore("own message in another chat")
        );
        let only_alice = [op("alice", 111)];
        assert_eq!(
            route(
                &msg(999, Some(999), true, true, "/whoami"),
                &only_alice,
                999
            ),
            Route::Unknown(999)
        );
    }

    #[test]
    fn secret_bearing_input_is_recognised_even_when_it_does_not_parse() {
        for t in [
            "/kv put secret/a password=x",
            "/kv patch secret/a k=v",
            "/panel add de1 marzban https://p.example.com admin pw",
            "/transit encrypt vaultgram hello",
            "/approve 0123abcd 123456",
            // Typos: still deleted.
            "/kv put",
            "/kv pt secret/a password=hunter2",
            "/whatever token=abc",
            "/panel ad de1 marzban https://p.example.com admin pw",
            "/nope 0123456789abcdef0123456789abcdef",
        ] {
            assert!(input_carries_secret(t), "{t}");
        }
        for t in [
            "/kv get secret/a",
            "/help",
            "/whoami",
            "/mtproto issue 42",
            "/kv get -field=password secret/a",
            "/agent list",
            "/nope",
        ] {
            assert!(!input_carries_secret(t), "{t}");
        }
    }

    #[test]
    fn split_respects_the_limit_and_line_boundaries() {
        assert!(split("", 10).is_empty());
        assert!(split("\n \n", 10).is_empty());
        let one: Vec<String> = split("a\nb", 10).iter().map(|s| s.to_string()).collect();
        assert_eq!(one, ["a\nb"]);
        let lines: Vec<String> = (0..10).map(|i| format!("line{i:02}")).collect();
        let text = lines.join("\n");
        let chunks = split(&text, 20);
        for c in &chunks {
            assert!(c.encode_utf16().count() <= 20, "{c:?}");
            assert!(!c.starts_with('\n') && !c.ends_with('\n'));
        }
        let joined: Vec<&str> = chunks.iter().map(|c| c.as_str()).collect();
        assert_eq!(joined.join("\n"), text);
        // A single over-long line is cut; astral characters count double.
        let long = "😀".repeat(5) + "abc";
        let chunks = split(&long, 4);
        assert!(chunks.iter().all(|c| c.encode_utf16().count() <= 4));
        assert_eq!(chunks.iter().map(|c| c.as_str()).collect::<String>(), long);
        // The real limit.
        let big = "x".repeat(5000) + "\nshort";
        let chunks = split(&big, MESSAGE_LIMIT);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), MESSAGE_LIMIT);
        assert_eq!(chunks[1].as_str(), &format!("{}\nshort", "x".repeat(904)));
    }

    proptest::proptest! {
        #[test]
        fn split_never_exceeds_and_loses_nothing(text in "[a-z\\n 😀]{0,200}", limit in 1usize..40) {
            let chunks = split(&text, limit);
            for c in &chunks {
                proptest::prop_assert!(c.encode_utf16().count() <= limit.max(2));
            }
            let strip = |s: &str| s.replace(['\n', ' '], "");
            let all: String = chunks.iter().map(|c| strip(c)).collect();
            proptest::prop_assert_eq!(all, strip(&text));
        }
    }

    #[test]
    fn deletions_are_planned_and_keyed_in_due_order() {
        let plan = plan_deletions(111, Some(5), &[8, 9], 1_000, 60_000);
        assert_eq!(
            plan,
            [
                Deletion {
                    chat: 111,
                    ids: vec![5],
                    due_ms: 1_000
                },
                Deletion {
                    chat: 111,
                    ids: vec![8, 9],
                    due_ms: 61_000
                },
            ]
        );
        assert!(plan_deletions(111, None, &[], 1_000, 60_000).is_empty());
        let a = plan[0].key("/vg/");
        let b = plan[1].key("/vg/");
        assert!(a.starts_with("/vg/tg/delete/") && a < b, "{a} {b}");
        assert_eq!(handled_key("/vg/", 111, 5), "/vg/tg/handled/111/5");
    }
}
