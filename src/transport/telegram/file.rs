//! TEST-ONLY stand-in for the grammers client (`telegram.backend =
//! "file"`): updates come from `inbox.jsonl` in `telegram.file_dir`, sent
//! messages and deletions go to `outbox.jsonl`. It replaces exactly what
//! `grammers.rs` does and behaves like grammers 0.11 where our runner
//! depends on it, so that a defect that real Telegram would expose fails a
//! test here too. Each point is checked against the grammers 0.11 sources:
//!
//! - **Catch-up batches** (grammers-session `message_box`,
//!   `apply_difference_type`): what is in the inbox when the client starts
//!   comes as `getDifference` results of up to 100 messages (a file
//!   `difference_batch` sets another size), each one packet: its other
//!   updates first, each with its own state, then its messages, which all
//!   carry the batch's *final* state — Telegram does not say where each
//!   message was. Never dropped (a difference is fetched on request).
//! - **Live delivery is bounded.** What arrives later is handed over one
//!   update per packet with `try_send` to a channel of
//!   [`UPDATES_CAPACITY`], dropping what does not fit (grammers'
//!   `SenderPool`, 100-entry `updates_channel_capacity`).
//! - **A packet is handed out at once** ([`FileUpdates`], as grammers'
//!   `UpdateStream` buffers a packet): the next read waits only when the
//!   packet is used up.
//! - **Update state advances on receipt.** The position the stand-in has
//!   *read* is its message box; only [`FileChat::commit`] (grammers:
//!   `Session::set_update_state`) moves the session's stored `offset`.
//! - **Message metadata** on each line: `"date"` (Unix seconds; absent:
//!   unknown), `"fwd":true` (`fwd_from`), `"via_bot":ID`,
//!   `"saved_peer":ID` (saved into Saved Messages from another chat),
//!   `"service":"ACTION"` (a service message), `"edit":true`
//!   (`updateEditMessage`), `"kind":"user"|"chat"|"channel"`. A line
//!   `{"update":"NAME"}` is an update that is not a message.
//! - **Echoes.** Every sent message comes back as an outgoing update in its
//!   chat, replying to what it replied to.
//! - **Access hashes.** A private message arrives as `updateShortMessage`
//!   (no user object) unless its line says `"users": true`; sending to a
//!   user whose hash the session has not cached fails, as grammers has no
//!   `InputPeer` for it. [`FileChat::resolve`] (grammers:
//!   `get_messages_by_id`) learns the hash from the message. A fresh
//!   login has an empty peer cache; the account's earlier chats are the
//!   user ids in `dialogs.json` ([`FileChat::learn_dialogs`], grammers:
//!   `iter_dialogs`).
//! - **The account:** `vaultgram login` stores a new authorization whose
//!   hash is its key; the next login ends the previous one
//!   ([`reset_authorization`]: its key gets 401 from then on); the
//!   account's other authorizations are `authorizations.json`. Telegram's
//!   service account (777000) is an ordinary sender id in the inbox.
//! - **Telegram's limits:** a text over 4096 UTF-16 units is refused with
//!   `MESSAGE_TOO_LONG`; a `random_id` seen within a day (a file
//!   `random_id_window_ms` sets the window) is refused with
//!   `RANDOM_ID_DUPLICATE`, an older one is sent again.
//! - **Errors**, injected by control lines: see below.
//!
//! - **`differenceTooLong`:** with a file `difference_limit` (N), a
//!   catch-up of more than N updates is not delivered at all: the state
//!   jumps past it (one update carries the new state) and the stand-in
//!   emits grammers' own debug event for it (`telemetry::UpdateGaps`),
//!   as grammers-session's `apply_difference` does.
//!
//! Not modelled (checked by hand against a real server, see
//! `userbot/README.md`): MTProto itself, DC migration, `getDifference`
//! slices, channel differences, media, entities, reply markup,
//! Telegram's own flood limits.
//!
//! Session: `{"file_backend":1,"offset":N,"me":ID,"auth_key":"…",
//! "peers":["user:1",…]}`. A new leader resumes from the saved `offset`.
//! A login is account 100 unless a file `account_id` names another.
//!
//! Inbox line: `{"id":42,"chat":111111,"sender":111111,"text":"/whoami"}`
//! with the optional fields above, `"outgoing"`, `"users":true`,
//! `"reply_to":N`. Control lines (each acted on once per process, and
//! only live, never in a catch-up): `{"control":"disconnect"}` (the
//! connection drops), `"blackhole"` (the connection dies silently: nothing
//! arrives, every request hangs), `"hang_deletes"` (deletions of this
//! client get no answer; pings and sends do), `"auth_key_duplicated"` (Telegram
//! refuses this key with 406 from now on), `"reset_key"` (a transport 404:
//! grammers generates a new, unauthorized key), `"latency"` with `"ms"`
//! (each request takes that long), `"panic"` (the next send panics),
//! `"send_error"` with `"rpc"`, `"code"`, `"delivered"`, `"zero"` (the
//! next send fails with that RPC error, or returns id 0, after delivering
//! the message or not), `"die_after_send"` (the process exits right after
//! its next `send_once` was delivered: a crash before the leader recorded
//! it), `"resolve_fail"` with `"times"` (that many resolves fail as a
//! connection reset would), `"delete_error"` with `"chat"` (deletions in
//! that chat fail from now on, as for a chat that is gone), `"migrate"`
//! (the account's home data centre moved: every request with this key
//! gets 303 `USER_MIGRATE_2` from now on), `"flood_wait"`
//! with `"seconds"` and `"method"` (`send`, `send_once`, `delete`: the next
//! such call gets FLOOD_WAIT with that value — slept through inside the
//! call when within the client's sleep threshold, as grammers'
//! `AutoSleep` does, returned otherwise).
//! A file `connect_delay_ms` in the dir makes the next client start hang
//! that long (a connect without a timeout); the start consumes it. A file
//! `connect_hang_<pid>` makes every start of that process hang (a route
//! to Telegram that swallows everything).
//! Outbox lines: `{"op":"connect"|"start"|"send"|"delete"|"stop","pid":…,…}`
//! (`connect`: every attempt; `start`: a client that is up).

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::chat::{rpc_error, Authorization, ChatError};
use super::route::{Incoming, Origin};

pub const FORMAT: &str = "file-v1";
/// This account's own user id in the stand-in (Saved Messages).
pub const DEFAULT_ME: i64 = 100;
/// How long Telegram remembers a `random_id` to refuse it as a duplicate
/// (not documented; its deduplication is meant for retries, not for
/// days): a day here.
pub const RANDOM_ID_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// grammers' default `updates_channel_capacity`.
pub const UPDATES_CAPACITY: usize = 100;

#[derive(Serialize, Deserialize, Clone)]
struct State {
    file_backend: u32,
    offset: usize,
    me: i64,
    #[serde(default)]
    auth_key: String,
    /// Cached access hashes: `user:ID`, `chat:ID`, `channel:ID`.
    #[serde(default)]
    peers: BTreeSet<String>,
}

/// A fresh id for a message this account sends (Telegram's are positive
/// and increasing per chat; random high ones never collide with the tests').
fn message_id() -> i32 {
    // The stand-in only; the OS generator does not fail here.
    let r = crate::ids::random_u64().unwrap_or_default();
    (r % 1_000_000_000) as i32 + 1_000_000_000
}

fn random_key() -> String {
    crate::ids::random_hex::<16>().unwrap_or_default()
}

/// A fresh session, as `vaultgram login` stores it for this backend: a
/// new auth key each time, like a new authorization.
pub fn new_session(dir: Option<&Path>) -> Zeroizing<Vec<u8>> {
    // A login with another account: its id in a file `account_id`.
    let me = dir
        .and_then(|d| std::fs::read_to_string(d.join("account_id")).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(DEFAULT_ME);
    Zeroizing::new(
        serde_json::to_vec(&State {
            file_backend: 1,
            offset: 0,
            me,
            auth_key: random_key(),
            peers: BTreeSet::new(),
        })
        .unwrap_or_default(),
    )
}

/// The authorization hash of a stand-in session (Telegram's
/// `authorization.hash`): its auth key stands for it here.
pub fn session_auth(session: &[u8]) -> Option<String> {
    serde_json::from_slice::<State>(session)
        .ok()
        .map(|s| s.auth_key)
}

/// grammers: `account.resetAuthorization`: the authorization `hash` (an
/// earlier login's) is ended; its key is refused with 401 from then on.
pub fn reset_authorization(dir: &Path, hash: &str) -> Result<(), ChatError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("revoked_keys"))
        .and_then(|mut f| f.write_all(format!("{hash}\n").as_bytes()))
        .map_err(|e| ChatError::Io(format!("revoked_keys: {e}")))?;
    append(
        dir,
        "outbox.jsonl",
        serde_json::json!({"op": "reset_authorization", "pid": std::process::id(), "hash": hash}),
    )
}

/// Inbox control lines already acted on in this process (by inbox and line
/// index): a reconnect that resumes before the line must not act on it
/// again. (Keyed by the inbox too: tests in one process each have their
/// own, with control lines at the same indexes.)
static APPLIED: Mutex<Option<HashSet<(PathBuf, usize)>>> = Mutex::new(None);

fn first_time(dir: &Path, line: usize) -> bool {
    let mut g = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
    g.get_or_insert_with(HashSet::new)
        .insert((dir.to_path_buf(), line))
}

#[derive(Deserialize)]
struct Control {
    control: String,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    rpc: String,
    #[serde(default)]
    code: i32,
    #[serde(default)]
    delivered: bool,
    #[serde(default)]
    zero: bool,
    /// `resolve_fail`: how many resolves fail.
    #[serde(default)]
    times: u32,
    /// `delete_error`: whose chat's deletions fail.
    #[serde(default)]
    chat: i64,
    /// `flood_wait`: its value, and the call it hits (`send`, `send_once`,
    /// `delete`).
    #[serde(default)]
    seconds: u64,
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
struct InboxLine {
    id: i32,
    chat: i64,
    sender: Option<i64>,
    #[serde(default)]
    text: String,
    #[serde(default = "user")]
    kind: String,
    #[serde(default)]
    outgoing: bool,
    #[serde(default)]
    users: bool,
    #[serde(default)]
    reply_to: Option<i32>,
    /// Unix seconds when it was sent (absent: unknown, 0).
    #[serde(default)]
    date: i64,
    /// `fwd_from` is set (a forwarded message).
    #[serde(default)]
    fwd: bool,
    #[serde(default)]
    via_bot: Option<i64>,
    #[serde(default)]
    saved_peer: Option<i64>,
    /// A service message (its action's name).
    #[serde(default)]
    service: Option<String>,
    /// `updateEditMessage` of message `id`.
    #[serde(default)]
    edit: bool,
}

impl InboxLine {
    fn origin(&self) -> Origin {
        if self.edit {
            Origin::Edited
        } else if self.service.is_some() {
            Origin::Service
        } else if self.fwd {
            Origin::Forwarded
        } else if self.via_bot.is_some() {
            Origin::ViaBot
        } else if self.saved_peer.is_some() {
            Origin::SavedFromElsewhere
        } else {
            Origin::Typed
        }
    }
}

/// A line that is an update but not a message (`{"update":"read_history"}`,
/// say): it moves the update state and carries nothing for the runner.
#[derive(Deserialize)]
struct OtherUpdate {
    #[allow(dead_code)]
    update: String,
}

fn user() -> String {
    "user".into()
}

/// What the injected faults have set, shared by the network task and the
/// requests of one client.
#[derive(Default)]
struct Faults {
    /// Set by the kill switch: nothing is sent or deleted any more.
    dead: AtomicBool,
    /// The connection died silently.
    blackhole: AtomicBool,
    /// Deletions get no answer (the connection otherwise works).
    hang_deletes: AtomicBool,
    /// Telegram no longer accepts this key (406, or an unauthorized key
    /// after a transport 404).
    refused: Mutex<Option<(i32, String)>>,
    latency_ms: AtomicU64,
    panic_next: AtomicBool,
    /// The process dies right after its next `send_once` reached
    /// Telegram (before anything else is recorded).
    die_after_send: AtomicBool,
    next_send: Mutex<Option<Control>>,
    /// Resolves that fail (a transient network error) before one works.
    resolve_fail: std::sync::atomic::AtomicU32,
    /// Deletions in this chat fail (the chat is gone, say).
    delete_fail_chat: Mutex<Option<i64>>,
    /// The next call of a method gets FLOOD_WAIT of so many seconds.
    flood: Mutex<std::collections::HashMap<String, u64>>,
}

pub struct FileChat {
    dir: PathBuf,
    faults: Arc<Faults>,
    /// grammers' `AutoSleep` threshold: a FLOOD_WAIT up to this long is
    /// slept through inside the call; a longer one is returned.
    flood_sleep: Duration,
    state: Arc<Mutex<State>>,
    /// The key the session was loaded with.
    loaded_key: String,
    stop: CancellationToken,
    network: tokio::task::JoinHandle<()>,
}

/// One packet from the "network": one live update, or a whole
/// `getDifference` batch. Each entry: the update state its delivery
/// carries (an inbox position), and the message (`None`: another update).
type Packet = Vec<(usize, Option<Incoming>)>;

/// The stand-in's update stream (grammers: `UpdateStream`, which buffers a
/// packet's updates and hands them out one by one, at once).
pub struct FileUpdates {
    rx: mpsc::Receiver<Packet>,
    buffer: std::collections::VecDeque<(usize, Option<Incoming>)>,
}

impl FileUpdates {
    /// The next update and the inbox position after it.
    pub async fn next(&mut self) -> Result<(Option<Incoming>, usize), ChatError> {
        loop {
            if let Some((line, msg)) = self.buffer.pop_front() {
                return Ok((msg, line));
            }
            match self.rx.recv().await {
                Some(packet) => self.buffer.extend(packet),
                None => return Err(ChatError::Io("the connection was closed".into())),
            }
        }
    }
}

fn append(dir: &Path, file: &str, line: serde_json::Value) -> Result<(), ChatError> {
    let mut text = line.to_string();
    text.push('\n');
    // One write of a whole line with O_APPEND: processes do not interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| ChatError::Io(format!("{file}: {e}")))
}

/// Telegram refuses a text longer than 4096 UTF-16 units.
fn too_long(text: &str) -> Result<(), ChatError> {
    if text.encode_utf16().count() > super::route::MESSAGE_LIMIT {
        return Err(rpc_error(400, "MESSAGE_TOO_LONG", None));
    }
    Ok(())
}

fn dead_keys(dir: &Path) -> HashSet<String> {
    keys_in(dir, "dead_keys")
}

fn keys_in(dir: &Path, file: &str) -> HashSet<String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Why Telegram refuses key `key` now, if it does: 406 for a key used
/// from two places, 401 for an authorization that was ended.
fn refusal(dir: &Path, key: &str) -> Option<ChatError> {
    if dead_keys(dir).contains(key) {
        return Some(rpc_error(406, "AUTH_KEY_DUPLICATED", None));
    }
    if keys_in(dir, "revoked_keys").contains(key) {
        return Some(rpc_error(401, "AUTH_KEY_UNREGISTERED", None));
    }
    if keys_in(dir, "migrated_keys").contains(key) {
        return Some(rpc_error(303, "USER_MIGRATE", Some(2)));
    }
    None
}

impl FileChat {
    pub async fn start(
        dir: &Path,
        session: &[u8],
        flood_sleep: Duration,
    ) -> Result<(FileChat, FileUpdates), ChatError> {
        let state: State = serde_json::from_slice(session)
            .map_err(|_| ChatError::Session("not a file-backend session".into()))?;
        // A connect that hangs (no timeout in grammers' connect path).
        let delay = dir.join("connect_delay_ms");
        if let Ok(ms) = std::fs::read_to_string(&delay) {
            let _ = std::fs::remove_file(&delay);
            let ms: u64 = ms.trim().parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // The connection attempt reaches Telegram whatever it answers.
        append(
            dir,
            "outbox.jsonl",
            serde_json::json!({"op": "connect", "pid": std::process::id()}),
        )?;
        // A route to Telegram that swallows everything, for this process
        // only (a file `connect_hang_<pid>`): every start hangs.
        if dir
            .join(format!("connect_hang_{}", std::process::id()))
            .exists()
        {
            std::future::pending::<()>().await;
        }
        if let Some(e) = refusal(dir, &state.auth_key) {
            return Err(e);
        }
        let faults: Arc<Faults> = Arc::default();
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(UPDATES_CAPACITY);
        // What is in the inbox now is the catch-up; fixed before `start` is
        // announced, so a line a test writes after seeing `start` is live
        // however late the network task first runs (it once raced: a live
        // `latency` control counted as catch-up and was ignored).
        let catch_up = std::fs::read_to_string(dir.join("inbox.jsonl"))
            .map(|t| t.rfind('\n').map(|i| t[..=i].lines().count()).unwrap_or(0))
            .unwrap_or(0);
        append(
            dir,
            "outbox.jsonl",
            serde_json::json!({"op": "start", "pid": std::process::id(), "offset": state.offset}),
        )?;
        let loaded_key = state.auth_key.clone();
        let offset = state.offset;
        let state = Arc::new(Mutex::new(state));
        let network = tokio::spawn(network(
            dir.to_path_buf(),
            offset,
            catch_up,
            tx,
            faults.clone(),
            state.clone(),
            stop.clone(),
        ));
        Ok((
            FileChat {
                dir: dir.to_path_buf(),
                faults,
                flood_sleep,
                state,
                loaded_key,
                stop,
                network,
            },
            FileUpdates {
                rx,
                buffer: Default::default(),
            },
        ))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn me(&self) -> i64 {
        self.state().me
    }

    /// Stops the client from any task, at once (fencing): the network task
    /// is aborted and no request in flight completes.
    pub fn kill_switch(&self) -> impl FnOnce() + Send + 'static {
        let faults = self.faults.clone();
        let stop = self.stop.clone();
        let network = self.network.abort_handle();
        move || {
            faults.dead.store(true, Ordering::SeqCst);
            stop.cancel();
            network.abort();
        }
    }

    /// What every request goes through: latency, a dead connection, a
    /// refused key, a client stopped meanwhile.
    async fn request(&self) -> Result<(), ChatError> {
        let ms = self.faults.latency_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.faults.blackhole.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.faults.dead.load(Ordering::SeqCst) {
            return Err(ChatError::Io(
                "request dropped: the client was stopped".into(),
            ));
        }
        let refused = self
            .faults
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((code, name)) = refused {
            return Err(rpc_error(code, &name, None));
        }
        let key = self.state().auth_key.clone();
        if let Some(e) = refusal(&self.dir, &key) {
            return Err(e);
        }
        Ok(())
    }

    /// A FLOOD_WAIT injected for `method`: slept through inside the call
    /// when it is within the sleep threshold (grammers' `AutoSleep`),
    /// returned otherwise.
    async fn flood(&self, method: &str) -> Result<(), ChatError> {
        let wait = self
            .faults
            .flood
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(method);
        match wait {
            Some(s) if Duration::from_secs(s) <= self.flood_sleep => {
                tokio::time::sleep(Duration::from_secs(s)).await;
                Ok(())
            }
            Some(s) => Err(rpc_error(420, "FLOOD_WAIT", Some(s as u32))),
            None => Ok(()),
        }
    }

    /// One message to a user; `monospace` as grammers' `pre` entity.
    pub async fn send(
        &self,
        user: i64,
        reply_to: i32,
        text: &str,
        monospace: bool,
    ) -> Result<i32, ChatError> {
        if self.faults.panic_next.swap(false, Ordering::SeqCst) {
            panic!("file backend: injected panic");
        }
        self.request().await?;
        too_long(text)?;
        self.flood("send").await?;
        if !self.state().peers.contains(&format!("user:{user}")) {
            // grammers has no InputPeer without the access hash.
            return Err(ChatError::UnknownPeer(user));
        }
        let injected = self
            .faults
            .next_send
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let id = message_id();
        let delivered = injected.as_ref().is_none_or(|c| c.delivered);
        if delivered {
            append(
                &self.dir,
                "outbox.jsonl",
                serde_json::json!({
                    "op": "send", "pid": std::process::id(), "chat": user, "peer": "user",
                    "id": id, "reply_to": reply_to, "text": text, "monospace": monospace,
                }),
            )?;
            // Telegram sends an update for our own outgoing message.
            append(
                &self.dir,
                "inbox.jsonl",
                serde_json::json!({
                    "id": id, "chat": user, "sender": self.me(), "text": text,
                    "outgoing": true, "reply_to": reply_to,
                }),
            )?;
        }
        match injected {
            Some(c) if c.zero => Ok(0),
            Some(c) => Err(rpc_error(c.code, &c.rpc, None)),
            None => Ok(id),
        }
    }

    /// grammers: a raw `messages.sendMessage` with our `random_id`;
    /// Telegram answers `RANDOM_ID_DUPLICATE` for an id it has seen
    /// recently — within [`RANDOM_ID_WINDOW_MS`] (a file
    /// `random_id_window_ms` in the dir sets another); an older one is sent
    /// again (the outbox, with each send's time, is the stand-in's memory).
    pub async fn send_once(&self, user: i64, text: &str, random_id: i64) -> Result<(), ChatError> {
        self.request().await?;
        too_long(text)?;
        self.flood("send_once").await?;
        if !self.state().peers.contains(&format!("user:{user}")) {
            return Err(ChatError::UnknownPeer(user));
        }
        let outbox = std::fs::read_to_string(self.dir.join("outbox.jsonl")).unwrap_or_default();
        let window = std::fs::read_to_string(self.dir.join("random_id_window_ms"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(RANDOM_ID_WINDOW_MS);
        let now = crate::clock::unix_ms();
        let seen = outbox.lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["random_id"].as_i64() == Some(random_id)
                    && v["at_ms"]
                        .as_u64()
                        .is_none_or(|at| now.saturating_sub(at) <= window)
            })
        });
        if seen {
            return Err(rpc_error(400, "RANDOM_ID_DUPLICATE", None));
        }
        let id = message_id();
        append(
            &self.dir,
            "outbox.jsonl",
            serde_json::json!({
                "op": "send", "pid": std::process::id(), "chat": user, "peer": "user",
                "id": id, "reply_to": 0, "random_id": random_id, "text": text, "monospace": false,
                "at_ms": now,
            }),
        )?;
        append(
            &self.dir,
            "inbox.jsonl",
            serde_json::json!({
                "id": id, "chat": user, "sender": self.me(), "text": text, "outgoing": true,
            }),
        )?;
        if self.faults.die_after_send.load(Ordering::SeqCst) {
            // A crash between Telegram accepting the message and the
            // leader recording that it was sent.
            tracing::warn!("file backend: the process dies now (test control line)");
            // SAFETY: _exit ends the process at once, as a kill would.
            unsafe { libc::_exit(137) };
        }
        Ok(())
    }

    pub async fn delete(&self, user: i64, ids: &[i32]) -> Result<(), ChatError> {
        self.request().await?;
        if self.faults.hang_deletes.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.flood("delete").await?;
        if *self
            .faults
            .delete_fail_chat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            == Some(user)
        {
            return Err(rpc_error(400, "PEER_ID_INVALID", None));
        }
        append(
            &self.dir,
            "outbox.jsonl",
            serde_json::json!({"op": "delete", "pid": std::process::id(), "chat": user, "ids": ids}),
        )
    }

    /// grammers: `get_messages_by_id` (no peer needed in private chats):
    /// the answer carries the user, whose hash the session then caches.
    pub async fn resolve(&self, user: i64, msg_id: i32) -> Result<(), ChatError> {
        if self.state().peers.contains(&format!("user:{user}")) {
            return Ok(());
        }
        self.request().await?;
        let failing = &self.faults.resolve_fail;
        if failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(ChatError::Io("connection reset while resolving".into()));
        }
        let inbox = std::fs::read_to_string(self.dir.join("inbox.jsonl")).unwrap_or_default();
        let found = inbox.lines().any(|l| {
            serde_json::from_str::<InboxLine>(l)
                .is_ok_and(|m| m.id == msg_id && m.chat == user && m.kind == "user")
        });
        if !found {
            return Err(ChatError::Io(format!("message {msg_id} not found")));
        }
        self.state().peers.insert(format!("user:{user}"));
        Ok(())
    }

    /// grammers: `account.getAuthorizations`: this session (current) and
    /// the others of `authorizations.json` in the dir (`[{"hash":…,
    /// "device":…,"app":…,"created":…,"active":…}]`).
    pub async fn authorizations(&self) -> Result<Vec<Authorization>, ChatError> {
        self.request().await?;
        let mut all: Vec<Authorization> =
            std::fs::read_to_string(self.dir.join("authorizations.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        all.insert(
            0,
            Authorization {
                hash: self.loaded_key.clone(),
                device: "vaultgram".into(),
                app: "file stand-in".into(),
                created: 0,
                active: crate::clock::unix_secs() as i64,
                current: true,
            },
        );
        Ok(all)
    }

    /// grammers: `delete_dialog` (`channels.leaveChannel` or
    /// `messages.deleteChatUser`): the account leaves a group or channel.
    pub async fn leave(&self, chat: i64, channel: bool) -> Result<(), ChatError> {
        self.request().await?;
        append(
            &self.dir,
            "outbox.jsonl",
            serde_json::json!({"op": "leave", "pid": std::process::id(), "chat": chat, "channel": channel}),
        )
    }

    /// grammers: `iter_dialogs`, which caches every user its dialogs name.
    /// The stand-in's dialogs are the user ids in `dialogs.json` (chats the
    /// account had before this session, never delivered as updates).
    pub async fn learn_dialogs(&self, limit: usize) -> Result<usize, ChatError> {
        self.request().await?;
        let ids: Vec<i64> = std::fs::read_to_string(self.dir.join("dialogs.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let mut s = self.state();
        for id in ids.iter().take(limit) {
            s.peers.insert(format!("user:{id}"));
        }
        Ok(ids.len().min(limit))
    }

    pub async fn knows_user(&self, user: i64) -> bool {
        self.state().peers.contains(&format!("user:{user}"))
    }

    /// Our messages in the chat with `user` that reply to `reply_to`
    /// (grammers: the chat's recent history).
    pub async fn find_replies(&self, user: i64, reply_to: i32) -> Result<Vec<i32>, ChatError> {
        self.request().await?;
        let outbox = std::fs::read_to_string(self.dir.join("outbox.jsonl")).unwrap_or_default();
        Ok(outbox
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["op"] == "send"
                    && v["chat"] == user
                    && v["reply_to"].as_i64() == Some(reply_to as i64)
            })
            .filter_map(|v| v["id"].as_i64().map(|i| i as i32))
            .collect())
    }

    pub async fn ping(&self) -> Result<(), ChatError> {
        self.request().await
    }

    /// grammers: `Session::set_update_state` with the update's own state.
    pub fn commit(&self, line: usize) {
        let mut s = self.state();
        s.offset = s.offset.max(line);
    }

    /// Whether the key in memory is still the one the session was loaded
    /// with.
    pub fn key_unchanged(&self) -> bool {
        self.state().auth_key == self.loaded_key
    }

    pub fn export_session(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(&*self.state()).unwrap_or_default())
    }

    pub async fn quit(self, clean: bool) {
        self.stop.cancel();
        self.network.abort();
        if clean {
            let _ = append(
                &self.dir,
                "outbox.jsonl",
                serde_json::json!({"op": "stop", "pid": std::process::id()}),
            );
        }
    }
}

impl Drop for FileChat {
    fn drop(&mut self) {
        self.network.abort();
    }
}

/// Messages of one `getDifference` batch (grammers gets up to 100 per
/// call); a file `difference_batch` in the dir sets another size.
const DIFFERENCE_BATCH: usize = 100;

/// Reads inbox lines after `offset` every 50 ms. What was already there at
/// start is the catch-up, delivered as grammers delivers a `getDifference`
/// result: in batches of [`DIFFERENCE_BATCH`] messages, each batch one
/// packet, its non-message updates first with their own state, then its
/// messages, which all carry the batch's *final* state (Telegram does not
/// say where each message was: grammers-session's `apply_difference`);
/// never dropped (grammers fetches a difference on request). What arrives
/// later is forwarded like grammers' sender forwards live updates: one
/// packet per update, `try_send`, dropping what does not fit.
async fn network(
    path: PathBuf,
    mut received: usize,
    catch_up: usize,
    tx: mpsc::Sender<Packet>,
    faults: Arc<Faults>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    let inbox = path.join("inbox.jsonl");
    let mut dropped = 0usize;
    let batch_size = std::fs::read_to_string(path.join("difference_batch"))
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DIFFERENCE_BATCH);
    // A gap longer than Telegram hands out: `differenceTooLong`. grammers
    // logs it (at debug, the only signal), moves its state past the gap
    // and delivers nothing of it.
    let limit = std::fs::read_to_string(path.join("difference_limit"))
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok());
    if limit.is_some_and(|l| catch_up.saturating_sub(received) > l) {
        tracing::debug!(
            target: "grammers_session::message_box",
            "handling too-long difference (pts = {}); no longer getting diff",
            catch_up
        );
        received = catch_up;
        // The next update carries the new state.
        if tx.send(vec![(received, None)]).await.is_err() {
            return;
        }
    }
    // The catch-up batch being assembled: other updates, then messages.
    let mut others: Packet = Vec::new();
    let mut messages: Vec<Incoming> = Vec::new();
    loop {
        if faults.blackhole.load(Ordering::SeqCst) {
            stop.cancelled().await;
            return;
        }
        let text = std::fs::read_to_string(&inbox).unwrap_or_default();
        // Only complete lines: a writer may be mid-line.
        let complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
        let lines: Vec<&str> = complete.lines().collect();
        while received < lines.len() {
            let line = lines[received];
            received += 1;
            let live = received > catch_up;
            let update = match parse_line(line, received, live, &path, &faults, &state) {
                Parsed::Skip => None,
                Parsed::Disconnect => return,
                Parsed::Blackhole => break,
                Parsed::Update(u) => Some(u),
            };
            match update {
                None => {}
                Some(Some(m)) if !live => messages.push(m),
                Some(None) if !live => others.push((received, None)),
                Some(u) => {
                    // The next update arrives in its own packet.
                    tokio::task::yield_now().await;
                    match tx.try_send(vec![(received, u)]) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            dropped += 1;
                            tracing::warn!(
                                dropped,
                                "file backend: updates channel full, update dropped"
                            );
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            // A catch-up batch is full, or the catch-up ends here.
            if !live && (messages.len() >= batch_size || received == catch_up) {
                let fin = received;
                let mut packet = std::mem::take(&mut others);
                packet.extend(messages.drain(..).map(|m| (fin, Some(m))));
                if !packet.is_empty() && tx.send(packet).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// What one inbox line is.
enum Parsed {
    /// A control line acted on (or skipped), or an unreadable line.
    Skip,
    Disconnect,
    Blackhole,
    /// An update: a message, or another update (`None`).
    Update(Option<Incoming>),
}

/// Parses inbox line number `n` (1-based); acts on a control line if it is
/// `live` and seen for the first time in this process.
fn parse_line(
    line: &str,
    n: usize,
    live: bool,
    path: &Path,
    faults: &Faults,
    state: &Mutex<State>,
) -> Parsed {
    if let Ok(c) = serde_json::from_str::<Control>(line) {
        // A fault hits the connection that is live when it is injected,
        // not a later client catching up past it.
        if !live || !first_time(path, n) {
            return Parsed::Skip;
        }
        match c.control.as_str() {
            "disconnect" => {
                tracing::warn!("file backend: connection dropped (test control line)");
                return Parsed::Disconnect;
            }
            "blackhole" => {
                tracing::warn!("file backend: connection silently dead (test control line)");
                faults.blackhole.store(true, Ordering::SeqCst);
                return Parsed::Blackhole;
            }
            "hang_deletes" => {
                tracing::warn!("file backend: deletions get no answer (test control line)");
                faults.hang_deletes.store(true, Ordering::SeqCst);
            }
            "auth_key_duplicated" => {
                let key = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .auth_key
                    .clone();
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path.join("dead_keys"))
                    .and_then(|mut f| f.write_all(format!("{key}\n").as_bytes()));
            }
            "reset_key" => {
                // grammers after a transport 404: a fresh key, which
                // Telegram does not know.
                state.lock().unwrap_or_else(|e| e.into_inner()).auth_key = random_key();
                *faults.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((401, "AUTH_KEY_UNREGISTERED".into()));
            }
            "latency" => faults.latency_ms.store(c.ms, Ordering::SeqCst),
            "panic" => faults.panic_next.store(true, Ordering::SeqCst),
            "die_after_send" => faults.die_after_send.store(true, Ordering::SeqCst),
            "resolve_fail" => faults.resolve_fail.store(c.times, Ordering::SeqCst),
            // The account's home data centre moved: every request with
            // this key is told so (303 USER_MIGRATE_2), restarts included.
            "migrate" => {
                let key = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .auth_key
                    .clone();
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path.join("migrated_keys"))
                    .and_then(|mut f| f.write_all(format!("{key}\n").as_bytes()));
            }
            "flood_wait" => {
                faults
                    .flood
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(c.method.clone(), c.seconds);
            }
            "delete_error" => {
                *faults
                    .delete_fail_chat
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(c.chat)
            }
            "send_error" => *faults.next_send.lock().unwrap_or_else(|e| e.into_inner()) = Some(c),
            other => tracing::warn!(control = other, "file backend: unknown control line"),
        }
        return Parsed::Skip;
    }
    if serde_json::from_str::<OtherUpdate>(line).is_ok() {
        return Parsed::Update(None);
    }
    let Ok(m) = serde_json::from_str::<InboxLine>(line) else {
        tracing::warn!(line = n, "file backend: unreadable inbox line skipped");
        return Parsed::Skip;
    };
    if m.users {
        // updateNewMessage with the user objects: hashes cached.
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.peers.insert(format!("{}:{}", m.kind, m.chat));
        if let Some(sender) = m.sender {
            s.peers.insert(format!("user:{sender}"));
        }
    }
    let origin = m.origin();
    Parsed::Update(Some(Incoming {
        id: m.id,
        chat: m.chat,
        sender: m.sender,
        private: m.kind == "user",
        channel: m.kind == "channel",
        outgoing: m.outgoing,
        reply_to: m.reply_to,
        text: Zeroizing::new(m.text),
        date: m.date,
        origin,
    }))
}
