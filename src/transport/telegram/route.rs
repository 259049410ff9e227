//! The pure parts of the Telegram transport: which updates are commands
//! and from whom, which messages carry secret input, how replies are split,
//! and the etcd keys of claims and scheduled deletions. No I/O here, so all
//! of it is unit-tested from plain values.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::command::Command;
use crate::config::Operator;

/// The user id of Telegram's service notifications (login codes, new-login
/// notices).
pub const TELEGRAM_SERVICE: i64 = 777_000;

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
    /// Not private: a channel or supergroup (else a basic group).
    pub channel: bool,
    /// Sent by this account.
    pub outgoing: bool,
    /// The message this one replies to (our replies carry the command's
    /// id: how a reply whose send "failed" is found again).
    pub reply_to: Option<i32>,
    /// May carry a secret (`/kv put … password=…`): zeroed on drop.
    pub text: Zeroizing<String>,
    /// When Telegram says it was sent (Unix seconds; 0: unknown, as for a
    /// test line without a date).
    pub date: i64,
    /// Whether the sender typed it here, now ([`Origin`]).
    pub origin: Origin,
}

/// Where a message's text comes from. Only a message the operator typed
/// into this chat runs as a command: a forwarded one (`fwd_from`) or one
/// sent via an inline bot (`via_bot_id`) carries someone else's words, one
/// saved into Saved Messages from another chat (`saved_peer_id`) was typed
/// elsewhere, a service message (an action, such as Telegram's login
/// notice) has no command, and an edit changes a message that was already
/// handled (or ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Typed,
    Forwarded,
    ViaBot,
    SavedFromElsewhere,
    Service,
    Edited,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Typed => "typed",
            Origin::Forwarded => "forwarded",
            Origin::ViaBot => "sent via a bot",
            Origin::SavedFromElsewhere => "saved from another chat",
            Origin::Service => "a service message",
            Origin::Edited => "an edit",
        }
    }
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
            .field("date", &self.date)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What to do with an [`Incoming`].
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Not for us (our own replies elsewhere, an operator's notes): no
    /// reply, no audit record, nothing written.
    Ignore(&'static str),
    /// A group or channel the account is in (someone added it): the
    /// broker serves private chats only, and leaves.
    Group { chat: i64, channel: bool },
    /// A private message from someone not in `[[operators]]`: no reply;
    /// counted for the audit summary.
    Unknown(i64),
    /// Telegram's own service account (777000): login notices and codes
    /// for the userbot's account.
    TelegramService,
    /// An operator's message that does not run: not typed here (`why`:
    /// forwarded, via a bot, …) or not a command. `secret`: it carries
    /// secret input, and is deleted all the same.
    NotRun {
        op: &'a Operator,
        why: &'static str,
        secret: bool,
    },
    /// An operator's command older than `telegram.max_command_age_secs`
    /// (caught up after downtime): not run; the operator is told, without
    /// an echo. `secret` as above.
    Stale {
        op: &'a Operator,
        age_secs: u64,
        secret: bool,
    },
    /// A command from an operator.
    Command(&'a Operator),
}

/// Maps an update to its route. Only private chats and Saved Messages are
/// served; in Saved Messages (the account writing to itself) the account's
/// own operator entry applies. `now` (Unix seconds) and `max_age_secs`
/// decide staleness; a message without a date (0) is not stale.
pub fn route<'a>(
    msg: &Incoming,
    operators: &'a [Operator],
    me: i64,
    now: i64,
    max_age_secs: u64,
) -> Route<'a> {
    if !msg.private {
        return Route::Group {
            chat: msg.chat,
            channel: msg.channel,
        };
    }
    let text = msg.text.trim_start();
    let command = text.starts_with('/');
    let op = if msg.outgoing {
        if msg.chat != me {
            return Route::Ignore("own message in another chat");
        }
        // Saved Messages hold the account's own notes too: only what looks
        // like a command concerns us there.
        if !command {
            return Route::Ignore("not a command");
        }
        match operators.iter().find(|o| o.telegram_id == me) {
            Some(op) => op,
            None => return Route::Unknown(me),
        }
    } else {
        // In a private chat the sender is the chat's peer.
        let sender = msg.sender.unwrap_or(msg.chat);
        if sender != msg.chat {
            return Route::Ignore("sender is not the chat's peer");
        }
        match operators.iter().find(|o| o.telegram_id == sender) {
            Some(op) => op,
            None if sender == TELEGRAM_SERVICE => return Route::TelegramService,
            None => return Route::Unknown(sender),
        }
    };
    // An operator's chat with the userbot is a command channel: plain text
    // there may be a secret pasted without its command, so it is deleted.
    let secret = input_carries_secret(text);
    if msg.origin != Origin::Typed {
        return Route::NotRun {
            op,
            why: msg.origin.as_str(),
            secret,
        };
    }
    if !command {
        return Route::NotRun {
            op,
            why: "not a command",
            secret,
        };
    }
    let age = now.saturating_sub(msg.date);
    if msg.date > 0 && age > 0 && age as u64 > max_age_secs {
        return Route::Stale {
            op,
            age_secs: age as u64,
            secret,
        };
    }
    Route::Command(op)
}

/// Whether the message carried secret input and must be deleted once
/// handled. A line that does not parse is deleted unless it is a bare
/// command word: a typo (`/panel ad NAME KIND URL USER PASSWORD`, a secret
/// pasted after a wrong command) must not leave a value in the chat.
pub fn input_carries_secret(text: &str) -> bool {
    match Command::parse_with_gate_flags(text) {
        // A break-glass line carries its author's TOTP code.
        Ok((cmd, flags)) => cmd.input_is_secret() || flags.code.is_some(),
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

/// The etcd key that records a handled message (exactly-once claim), per
/// account: message ids are the account's own, so a login with another
/// account must not find this one's claims.
pub fn handled_key(prefix: &str, account: i64, chat: i64, id: i32) -> String {
    format!("{prefix}tg/handled/{account}/{chat}/{id}")
}

/// What became of a claimed message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClaimState {
    /// Claimed, running.
    Started,
    /// Executed; the reply may not be out yet.
    Ran,
    Done,
    /// A message this broker sent into Saved Messages: never a command.
    Sent,
    /// Too old to run; the operator was told.
    Stale,
    /// A Telegram service message (777000), alerted once.
    Service,
    /// Written by another version of the broker: handled, whatever it was.
    #[serde(other)]
    Other,
}

/// State of a claim, stored as its value (never a message text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Handled {
    pub state: ClaimState,
    pub node: String,
    pub at: u64,
}

/// Where scheduled deletions live: sorted by due time.
pub fn deletions_prefix(prefix: &str) -> String {
    format!("{prefix}tg/delete/")
}

/// One scheduled deletion in `chat`, due at `due_ms`: messages `ids`, and
/// (`replies_to`) every message of ours that replies to that message —
/// written before a secret reply is sent, so a reply delivered by a send
/// that then failed, or just before a crash, is found when it is due.
/// `account`: whose chats these are (0 in records of older brokers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deletion {
    pub chat: i64,
    pub ids: Vec<i32>,
    pub due_ms: u64,
    #[serde(default)]
    pub replies_to: Option<i32>,
    #[serde(default)]
    pub account: i64,
}

impl Deletion {
    /// Its key: zero-padded due time first, so a prefix listing in key
    /// order is in due order; then what it is about.
    pub fn key(&self, prefix: &str) -> String {
        match self.replies_to {
            Some(r) => format!(
                "{}{:015}-{}-r{r}",
                deletions_prefix(prefix),
                self.due_ms,
                self.chat
            ),
            None => format!(
                "{}{:015}-{}-{}",
                deletions_prefix(prefix),
                self.due_ms,
                self.chat,
                self.ids.first().copied().unwrap_or(0)
            ),
        }
    }
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
            channel: false,
            outgoing,
            reply_to: None,
            text: Zeroizing::new(text.into()),
            date: 0,
            origin: Origin::Typed,
        }
    }

    /// [`route`] at a fixed time with the default age limit (300 s).
    fn r<'a>(m: &Incoming, ops: &'a [Operator], me: i64) -> Route<'a> {
        route(m, ops, me, 1_000_000, 300)
    }

    #[test]
    fn operators_in_private_chats_are_routed_to_their_entry() {
        let ops = [op("alice", 111), op("bob", 222)];
        let got = r(&msg(222, Some(222), true, false, "/whoami"), &ops, 999);
        assert_eq!(got, Route::Command(&ops[1]));
        let got = r(&msg(111, None, true, false, "  /help"), &ops, 999);
        assert_eq!(got, Route::Command(&ops[0]));
    }

    #[test]
    fn strangers_groups_and_plain_text_get_nothing() {
        let ops = [op("alice", 111)];
        assert_eq!(
            r(&msg(333, Some(333), true, false, "/get_keys"), &ops, 999),
            Route::Unknown(333)
        );
        // An operator writing in a group: not served (the account
        // leaves the group).
        assert_eq!(
            r(&msg(-100, Some(111), false, false, "/get_keys"), &ops, 999),
            Route::Group {
                chat: -100,
                channel: false
            }
        );
        // An operator's plain text: not run, deleted (it may be a secret
        // pasted without its command).
        assert_eq!(
            r(&msg(111, Some(111), true, false, "hello"), &ops, 999),
            Route::NotRun {
                op: &ops[0],
                why: "not a command",
                secret: true
            }
        );
        // A stranger's plain text is still a stranger (audited, no reply).
        assert_eq!(
            r(&msg(333, Some(333), true, false, "hi"), &ops, 999),
            Route::Unknown(333)
        );
        assert_eq!(
            r(&msg(111, Some(222), true, false, "/help"), &ops, 999),
            Route::Ignore("sender is not the chat's peer")
        );
    }

    #[test]
    fn saved_messages_use_the_accounts_own_entry_and_replies_elsewhere_are_ignored() {
        let ops = [op("alice", 111), op("self", 999)];
        assert_eq!(
            r(&msg(999, Some(999), true, true, "/whoami"), &ops, 999),
            Route::Command(&ops[1])
        );
        assert_eq!(
            r(&msg(999, Some(999), true, true, "API_ID: 1"), &ops, 999),
            Route::Ignore("not a command")
        );
        // Our reply to alice, echoed back as an outgoing update.
        assert_eq!(
            r(&msg(111, Some(999), true, true, "/help output"), &ops, 999),
            Route::Ignore("own message in another chat")
        );
        let only_alice = [op("alice", 111)];
        assert_eq!(
            r(
                &msg(999, Some(999), true, true, "/whoami"),
                &only_alice,
                999
            ),
            Route::Unknown(999)
        );
    }

    /// Only what the operator typed here runs; a forwarded, via-bot or
    /// saved-from-elsewhere copy of a command, a service message or an
    /// edit never does, and a secret in it is deleted all the same.
    #[test]
    fn only_commands_the_operator_typed_here_run() {
        let ops = [op("alice", 111), op("self", 999)];
        for (origin, why) in [
            (Origin::Forwarded, "forwarded"),
            (Origin::ViaBot, "sent via a bot"),
            (Origin::SavedFromElsewhere, "saved from another chat"),
            (Origin::Service, "a service message"),
            (Origin::Edited, "an edit"),
        ] {
            let mut m = msg(111, Some(111), true, false, "/kv put secret/a password=x");
            m.origin = origin;
            assert_eq!(
                r(&m, &ops, 999),
                Route::NotRun {
                    op: &ops[0],
                    why,
                    secret: true
                }
            );
            let mut m = msg(999, Some(999), true, true, "/whoami");
            m.origin = origin;
            assert_eq!(
                r(&m, &ops, 999),
                Route::NotRun {
                    op: &ops[1],
                    why,
                    secret: false
                },
                "{why} into Saved Messages"
            );
        }
    }

    /// A command caught up after downtime is not run when it is older than
    /// the limit; a message without a date is never stale.
    #[test]
    fn stale_commands_do_not_run() {
        let ops = [op("alice", 111)];
        let mut m = msg(111, Some(111), true, false, "/get_keys");
        m.date = 1_000_000 - 301;
        assert_eq!(
            r(&m, &ops, 999),
            Route::Stale {
                op: &ops[0],
                age_secs: 301,
                secret: false
            }
        );
        m.date = 1_000_000 - 300;
        assert_eq!(r(&m, &ops, 999), Route::Command(&ops[0]));
        m.date = 0;
        assert_eq!(r(&m, &ops, 999), Route::Command(&ops[0]));
        // A clock a little ahead of ours: not stale.
        m.date = 1_000_005;
        assert_eq!(r(&m, &ops, 999), Route::Command(&ops[0]));
        let mut m = msg(111, Some(111), true, false, "/kv put secret/a pw=x");
        m.date = 1;
        assert!(matches!(
            r(&m, &ops, 999),
            Route::Stale { secret: true, .. }
        ));
    }

    #[test]
    fn secret_bearing_input_is_recognised_even_when_it_does_not_parse() {
        for t in [
            "/kv put secret/a password=x",
            "/kv patch secret/a k=v",
            "/panel add de1 marzban https://p.example.com admin pw",
            "/transit encrypt vaultgram hello",
            "/approve 0123abcd 123456",
            "/transit rotate -break-glass -reason=\"outage\" -code=123456 k",
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
            "/transit rotate -reason=\"ticket 4\" k",
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
    fn deletions_are_keyed_in_due_order_and_claims_per_account() {
        let input = Deletion {
            chat: 111,
            ids: vec![5],
            due_ms: 1_000,
            replies_to: None,
            account: 100,
        };
        let replies = Deletion {
            chat: 111,
            ids: vec![],
            due_ms: 61_000,
            replies_to: Some(5),
            account: 100,
        };
        let (a, b) = (input.key("/vg/"), replies.key("/vg/"));
        assert!(a.starts_with("/vg/tg/delete/") && a < b, "{a} {b}");
        assert!(b.ends_with("-111-r5"), "{b}");
        // A record of an older broker still reads.
        let old: Deletion = serde_json::from_str(r#"{"chat":1,"ids":[2],"due_ms":3}"#).unwrap();
        assert_eq!((old.replies_to, old.account), (None, 0));
        assert_eq!(handled_key("/vg/", 100, 111, 5), "/vg/tg/handled/100/111/5");
    }
}
