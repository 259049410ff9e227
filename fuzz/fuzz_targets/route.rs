//! Routing of an incoming Telegram message (transport::telegram::route):
//! from any update — any chat, sender, flags, date and text —
//! - a command runs only when an operator typed it (not forwarded, via a
//!   bot, saved from elsewhere, a service message or an edit) in their
//!   private chat with the account (or the account in Saved Messages),
//!   it starts with `/`, and it is not older than the age limit;
//! - such a message is always run (no false refusals);
//! - an operator's message that carries secret input is never ignored: it
//!   runs or is marked secret, so it is deleted;
//! - no date, however far off, panics.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vaultgram::config::{Operator, Role};
use vaultgram::transport::telegram::route::{
    input_carries_secret, route, Incoming, Origin, Route, TELEGRAM_SERVICE,
};

const ME: i64 = 100;
const NOW: i64 = 1_800_000_000;
const MAX_AGE: u64 = 600;
/// Peers: an operator, another operator, a stranger, Telegram, the account.
const PEERS: [i64; 5] = [1, 2, 3, TELEGRAM_SERVICE, ME];
const ORIGINS: [Origin; 6] = [
    Origin::Typed,
    Origin::Forwarded,
    Origin::ViaBot,
    Origin::SavedFromElsewhere,
    Origin::Service,
    Origin::Edited,
];

#[derive(Arbitrary, Debug)]
struct Msg {
    chat: u8,
    sender: Option<u8>,
    private: bool,
    channel: bool,
    outgoing: bool,
    /// Whether the account itself is an operator (Saved Messages).
    me_operator: bool,
    origin: u8,
    date: i64,
    text: String,
}

fn operator(name: &str, id: i64) -> Operator {
    Operator {
        name: name.into(),
        telegram_id: id,
        role: Role::Admin,
        unix_user: None,
        agent: None,
        totp_key: None,
    }
}

fuzz_target!(|m: Msg| {
    let mut ops = vec![operator("alice", 1), operator("bob", 2)];
    if m.me_operator {
        ops.push(operator("me", ME));
    }
    let chat = PEERS[usize::from(m.chat) % PEERS.len()];
    let msg = Incoming {
        id: 1,
        chat,
        sender: m.sender.map(|s| PEERS[usize::from(s) % PEERS.len()]),
        private: m.private,
        channel: m.channel,
        outgoing: m.outgoing,
        reply_to: None,
        text: m.text.clone().into(),
        date: m.date,
        origin: ORIGINS[usize::from(m.origin) % ORIGINS.len()],
    };
    let r = route(&msg, &ops, ME, NOW, MAX_AGE);
    let text = m.text.trim_start();
    let command = text.starts_with('/');
    let fresh = m.date <= 0 || NOW.saturating_sub(m.date) as u64 <= MAX_AGE || m.date > NOW;
    // Who wrote it, if the update is what it must be for a command.
    let author = if !m.private {
        None
    } else if m.outgoing {
        (chat == ME).then_some(ME)
    } else {
        let sender = msg.sender.unwrap_or(chat);
        (sender == chat).then_some(chat)
    };
    let op = author.and_then(|a| ops.iter().find(|o| o.telegram_id == a));
    let should_run = op.is_some() && msg.origin == Origin::Typed && command && fresh;
    match &r {
        Route::Command(o) => {
            assert!(should_run, "{msg:?} {:?} ran", m.text);
            assert_eq!(Some(o.telegram_id), author);
        }
        _ => assert!(!should_run, "{msg:?} {:?} not run: {r:?}", m.text),
    }
    let secret = input_carries_secret(text);
    match &r {
        Route::NotRun { secret: s, .. } | Route::Stale { secret: s, .. } => assert_eq!(*s, secret),
        _ => {}
    }
    if op.is_some() && !m.outgoing && secret {
        assert!(
            matches!(r, Route::Command(_) | Route::NotRun { secret: true, .. } | Route::Stale { secret: true, .. }),
            "an operator's secret left in the chat: {r:?}"
        );
    }
    if !m.private {
        assert!(matches!(r, Route::Group { .. }), "{r:?}");
    }
});
