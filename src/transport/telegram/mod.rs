//! The Telegram transport: the election leader's userbot.
//!
//! [`run`] campaigns in etcd ([`crate::leader`]); only while it leads does
//! it load the session from Vault and start a client. Each new message is
//! routed ([`route`]), claimed in etcd *before* it runs (a guarded create,
//! so a redelivered message or a deposed leader never runs it twice), handed
//! to the same dispatcher as the console, and answered; deletions of secret
//! input and secret replies are scheduled in etcd and carried out by
//! whichever node leads when they are due. The session (auth keys, update
//! state) goes back to Vault, transit-encrypted, every
//! `telegram.session_save_secs` and on shutdown.
//!
//! Files: `service` (the election loop, `vaultgram login`), `term` (one
//! leadership term) with `handle`, `notices` and `deletions`, `client`
//! (the client and its intake), `intake`
//! (between the client library and the runner), `route` (what a message
//! is), `session` (the session in Vault), `chat` (errors, shared types),
//! `grammers` (the only file importing `grammers_*`) with `login`, and —
//! only in a build with the `telegram-standin` feature, for the tests —
//! `file`, the stand-in that replaces grammers alone. This file only
//! declares and re-exports.
//!
//! # The path, end to end
//!
//! ```text
//!  vaultgram run (every replica)
//!    ├─ socket server, approval sweeper, token renewer       (all replicas)
//!    └─ transport::telegram::run
//!         loop: Elector::campaign ──► Leadership {guard, lease, lost}
//!               │  leader.rs: keep-alive every ttl/4; each answer proves the
//!               │  lease until send-time + ttl; proof older than ttl − ttl/4
//!               │  → `lost` fires → a separate task kills the client at once
//!               ├─ SessionStore::load (Vault KV, transit-decrypt, broker token)
//!               ├─ client start (grammers.rs | file.rs stand-in), bounded by
//!               │    telegram.start_timeout_secs; max_failed_starts in a row →
//!               │    resign and stand aside (another replica tries)
//!               ├─ dialogs → who is reachable; a re-login's first start tells
//!               │    the operators; the account's authorizations → etcd
//!               ├─ intake (every update at once; commands queued, the rest
//!               │    state only) → route (who, typed here?, how old?) →
//!               │    secret input's deletion recorded → resolve → claim
//!               │    (guarded create) → App::dispatch → a secret reply's
//!               │    deletion recorded → split/send → mark done → commit the
//!               │    update state only at a settled position
//!               ├─ every second: due deletions, notices, stale-command
//!               │    notices, the strangers' audit summary; every
//!               │    session_save_secs: save
//!               └─ shutdown: stop intake → commit → save session → quit → resign
//! ```
//!
//! # Why each step is where it is
//! - **Fencing before expiry.** Two clients on one Telegram session get
//!   AUTH_KEY_DUPLICATED and the session is killed, so the old leader must be
//!   off before any other node can win. The server keeps the lease at least
//!   until `send time of the last answered keep-alive + ttl`; the leader stops
//!   `ttl/4` (≥ 500 ms) before that. The kill does not go through the
//!   runner's loop, which may be stuck on a partitioned etcd (a test found
//!   exactly that: the client stopped 2 s too late until the kill got its own
//!   task).
//! - **Guarded writes.** A lock is not mutual exclusion (a paused leader wakes
//!   up after its lease expired; Jepsen, etcd 3.4.3). Every etcd write of the
//!   leader (claims, deletion records, "done" marks) is a transaction with
//!   `create_revision(<prefix>leader) == <the revision that made it leader>`;
//!   a refused compare fences the node.
//! - **Only what the operator typed, here, recently, runs.** `route::route`
//!   runs a message only when its origin is `Typed` — not forwarded
//!   (`fwd_from`), not via a bot, not saved into Saved Messages from another
//!   chat, not a service message, not an edit — and it is not older than
//!   `telegram.max_command_age_secs` (a catch-up after downtime must not post
//!   secrets into a chat nobody watches; the operator is told how many, once
//!   per burst, never what). Such a message that carries a secret, and an
//!   operator's plain text (a secret pasted without its command), is deleted
//!   all the same. Groups and channels the account is added to are left
//!   once each; no channel state is kept in the session (each channel's
//!   difference would be fetched at every start). Telegram's own service
//!   account (777000) announcing a new login or a login code alerts every
//!   admin (never with the text).
//! - **Exactly once = claim before run.** `tg/handled/<account>/<chat>/<id>` is created
//!   (guarded, create-if-absent) *before* the command runs. A redelivered
//!   id (reconnect, failover, a stale update state) finds the claim and is
//!   skipped; a claim left in state `started` by a leader that died mid-command
//!   is not re-run (it may have had its effect); the operator is told to check
//!   `/audit` and resend. Once the command has run the claim says `ran` (then
//!   `done` after the reply): a redelivery after that is skipped silently —
//!   if the node died between running and replying, the reply is lost but
//!   the audit trail has the result (a test kills the leader right after its
//!   reply and checks exactly that). Replies we send into Saved Messages are claimed as
//!   `sent`, so their echo is never taken for a command.
//! - **Deletions in etcd, recorded first.** Secret input (decided by
//!   `route::input_carries_secret`, which also catches lines that do not
//!   parse) is recorded for deletion, due at once, before anything else can
//!   fail (a resolve, a claim, a crash, a fence). A secret reply's deletion
//!   is recorded *before* it is sent, naming the command's message
//!   (`replies_to`): when due, our replies to it are looked up, so a reply
//!   delivered by a send that then failed, or sent just before a crash, is
//!   deleted too. Records `tg/delete/<due ms>-<chat>-<id|r<id>>` are removed
//!   only after Telegram confirmed, so a new leader finishes them; one that
//!   keeps failing does not hold up the others; one of another account is
//!   dropped.
//! - **Session.** Auth keys, DC options, cached peers and the update state are
//!   our own in-memory `grammers_session::Session` (SQLite storage is not
//!   compiled in), serialised only to be transit-encrypted and written to
//!   `secret/vaultgram/telegram-session` with the broker's token. `login`
//!   signs the new authorization out if storing it fails. The leader saves
//!   with check-and-set on the version it loaded: a `vaultgram login` in the
//!   meantime wins, and the leader restarts from it. A session whose home
//!   key grammers replaced (after a transport 404) is never saved; one that
//!   Telegram refused (401, 406 `AUTH_KEY_DUPLICATED`) is not started again
//!   until a new login stores another version.
//! - **A client start is bounded, a FLOOD_WAIT stalls nothing.** grammers'
//!   connect, key exchange and first requests have no timeout: the start is
//!   bounded by `telegram.start_timeout_secs`; a leader without a client for
//!   twice that is not ready (`/readyz` names `telegram`) and `/health` says
//!   for how long; after `max_failed_starts` it resigns and stands aside two
//!   lease terms. The runner's client never sleeps through a FLOOD_WAIT
//!   inside a call (grammers' `AutoSleep` threshold is zero there): a notice
//!   told to wait is retried after the wait, a reply waits it out once (up to
//!   `flood_wait_max_secs`), a deletion round stops — the loop goes on.
//!   A session Telegram refuses (401, 406, `*_MIGRATE`) is not restarted
//!   until a new login, and every admin is alerted. grammers's own log
//!   events reach ours only as level and place (they can hold message text).
//! - **Update state moves only past handled updates.** The client delivers
//!   each update with its own state (`Update::state()`); one reader task
//!   (`telegram/intake.rs`, shared by both clients) takes every update the
//!   moment it arrives, so grammers' own 100-entry channel never overflows
//!   while a handler runs, and sorts it with no I/O (`route::route`): only an
//!   operator's command takes a place in the queue (up to `INTAKE_CAPACITY`,
//!   4096); everything else — a stranger's message, a group, our own echoes,
//!   a non-message update — is *state only*, and consecutive state-only
//!   updates of one message box fold into one. A stranger flood therefore
//!   costs no etcd write, no Vault call and no queue space (an adversarial run
//!   lost 1,777 of 6,000 updates, an operator's `/kv put` among them, when
//!   each stranger was claimed and audited before the next was read);
//!   strangers are counted for one audit summary a minute. The read is raced
//!   only against the stop token (grammers' update stream is not
//!   cancel-safe). The runner commits an update's state to the session only
//!   after handling it, and only at a *settled* position: a `getDifference`
//!   batch hands its messages over with the batch's final state (Telegram
//!   does not say where each was), so the reader marks a position settled
//!   when the stream has nothing more at once — everything up to it has been
//!   read. A stop in the middle of a batch therefore never saves a state
//!   past a command still waiting; a redelivery is harmless (claims).
//! - **Fencing before connecting; a panic is an error.** The fence is armed
//!   before the client connects (the connect is raced against the lease), the
//!   kill switch aborts grammers' sender-pool task (every socket dropped), a
//!   ping every `telegram.ping_secs` restarts a silently dead client, the
//!   runner's future is `catch_unwind`ed, and a `Leadership` dropped without
//!   `resign` cancels itself and revokes its lease.

mod chat;
mod client;
mod deletions;
#[cfg(feature = "telegram-standin")]
mod file;
mod grammers;
mod handle;
mod intake;
mod login;
mod notices;
pub mod route;
mod service;
pub mod session;
mod term;

pub use chat::{Authorization, ChatError, LoginPrompt};
pub use service::{login, run};
