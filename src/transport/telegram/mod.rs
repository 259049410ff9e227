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
//! `telegram.session_save_secs` and on shutdown. This file holds the
//! election loop and the client; one leadership term's work is in `term.rs`.
//!
//! The client is `grammers` (the only file importing `grammers_*`) or, in
//! tests, the `file` stand-in that replaces only it.

mod file;
mod grammers;
mod intake;
mod login;
pub mod route;
pub mod session;
mod term;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::config::TelegramBackend;
use crate::dispatch::App;
use crate::etcd::SharedLease;
use crate::leader::Elector;
use crate::vault::auth::Backoff;
use crate::vault::kv::KvPath;
use crate::vault::VaultError;
use route::Incoming;
use session::{SessionStore, StoredSession};
use term::Term;

/// Failures of the Telegram client. Texts carry no message text and no
/// session bytes.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("telegram: FLOOD_WAIT of {}s", .0.as_secs())]
    FloodWait(Duration),
    #[error("telegram: not authorized: {0}")]
    Unauthorized(String),
    /// `RANDOM_ID_DUPLICATE`: a retried send whose first attempt was
    /// delivered; the message exists, its id is unknown.
    #[error("telegram: {0}")]
    Duplicate(String),
    /// Start again from the session in Vault at once.
    #[error("telegram session: {0}")]
    Reload(String),
    /// The stored session was refused before; waiting for a new login.
    #[error("telegram: the stored session was refused; waiting for `vaultgram login`")]
    Refused,
    #[error("telegram: {0}")]
    Io(String),
    #[error("telegram session: {0}")]
    Session(String),
    #[error("telegram: {0}")]
    Vault(#[from] VaultError),
    #[error("telegram login: {0}")]
    Prompt(String),
}

/// What an RPC error from Telegram means here (both clients map through
/// this, so the stand-in's injected errors test the real mapping).
pub(crate) fn rpc_error(code: i32, name: &str, value: Option<u32>) -> ChatError {
    match (code, name) {
        (_, "FLOOD_WAIT" | "FLOOD_PREMIUM_WAIT" | "SLOWMODE_WAIT") => {
            ChatError::FloodWait(Duration::from_secs(value.unwrap_or(0).into()))
        }
        // The key was used from two places at once (two leaders, a copied
        // session): Telegram revoked it. Reconnecting cannot help.
        (406, "AUTH_KEY_DUPLICATED") => ChatError::Unauthorized(
            "AUTH_KEY_DUPLICATED: Telegram revoked this session's key; run `vaultgram login`"
                .into(),
        ),
        (401, n) => ChatError::Unauthorized(format!("{n}: run `vaultgram login`")),
        // The account's home data centre moved (after a login elsewhere):
        // reconnecting with this session only meets the same answer.
        (303, n) if n.ends_with("_MIGRATE") => ChatError::Unauthorized(format!(
            "{n}: the account's home data centre moved; run `vaultgram login`"
        )),
        (_, "RANDOM_ID_DUPLICATE") => ChatError::Duplicate(
            "RANDOM_ID_DUPLICATE: the message was delivered by an earlier attempt".into(),
        ),
        (c, n) => ChatError::Io(format!("RPC error {c} {n}")),
    }
}

/// One authorization of the account (`account.getAuthorizations`): what
/// `doctor` shows. No secret: the hash ends a session, never uses it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Authorization {
    pub hash: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub active: i64,
    #[serde(default)]
    pub current: bool,
}

/// Where `vaultgram login` gets the phone number, the code and the 2FA
/// password (a terminal in `main`).
pub trait LoginPrompt {
    fn phone(&mut self) -> Result<String, ChatError>;
    fn code(&mut self) -> Result<SecretString, ChatError>;
    fn password(&mut self, hint: Option<&str>) -> Result<SecretString, ChatError>;
    /// Tells the person what happened (a refused code, a new code sent).
    fn notice(&mut self, _text: &str) {}
}

/// An update's own state, persisted only after the runner finished with
/// it (so a failover neither skips nor refetches).
pub(crate) enum Mark {
    Grammers(grammers::UpdateMark),
    /// The stand-in's inbox position after the line.
    File(usize),
}

impl Mark {
    /// Folds the state of a `later` update into this one when it belongs
    /// to the same message box (committing the later state alone says all
    /// that committing both would), or gives it back.
    fn absorb(&mut self, later: Mark) -> Result<(), Mark> {
        match (self, later) {
            (Mark::File(a), Mark::File(b)) => {
                *a = (*a).max(b);
                Ok(())
            }
            (Mark::Grammers(a), Mark::Grammers(b)) => a.absorb(b).map_err(Mark::Grammers),
            (_, later) => Err(later),
        }
    }
}

/// One update as the client library hands it over: a new message, or
/// anything else (`msg: None`), with its state.
pub(crate) struct Delivery {
    pub msg: Option<Incoming>,
    pub mark: Mark,
}

/// An update stream (grammers' `UpdateStream`, or the stand-in's).
pub(crate) trait Source: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Delivery, ChatError>> + Send;
}

impl Source for grammers::GrammersUpdates {
    fn next(&mut self) -> impl Future<Output = Result<Delivery, ChatError>> + Send {
        grammers::GrammersUpdates::next(self)
    }
}

impl Source for file::FileUpdates {
    fn next(&mut self) -> impl Future<Output = Result<Delivery, ChatError>> + Send {
        file::FileUpdates::next(self)
    }
}

/// The client behind the runner: grammers, or the test stand-in.
enum Client {
    // Boxed: it carries the loaded 256-byte auth key.
    Grammers(Box<grammers::GrammersChat>),
    File(file::FileChat),
}

impl Client {
    /// A switch another task can flip to stop this client at once.
    fn kill_switch(&self) -> Box<dyn FnOnce() + Send> {
        match self {
            Client::Grammers(c) => Box::new(c.kill_switch()),
            Client::File(c) => Box::new(c.kill_switch()),
        }
    }
    fn me(&self) -> i64 {
        match self {
            Client::Grammers(c) => c.me(),
            Client::File(c) => c.me(),
        }
    }
    /// Sends to a user (only users are served: a bare id never names a
    /// group or channel here), replying to `reply_to` (0: no reply).
    async fn send(
        &self,
        user: i64,
        reply_to: i32,
        text: &str,
        mono: bool,
    ) -> Result<i32, ChatError> {
        match self {
            Client::Grammers(c) => c.send(user, reply_to, text, mono).await,
            Client::File(c) => c.send(user, reply_to, text, mono).await,
        }
    }
    async fn delete(&self, user: i64, ids: &[i32]) -> Result<(), ChatError> {
        match self {
            Client::Grammers(c) => c.delete(user, ids).await,
            Client::File(c) => c.delete(user, ids).await,
        }
    }
    async fn resolve(&self, user: i64, msg_id: i32) -> Result<(), ChatError> {
        match self {
            Client::Grammers(c) => c.resolve(user, msg_id).await,
            Client::File(c) => c.resolve(user, msg_id).await,
        }
    }
    /// One message with our own `random_id` (Telegram's idempotency key):
    /// a second send with the same id is `ChatError::Duplicate`.
    async fn send_once(&self, user: i64, text: &str, random_id: i64) -> Result<(), ChatError> {
        match self {
            Client::Grammers(c) => c.send_once(user, text, random_id).await,
            Client::File(c) => c.send_once(user, text, random_id).await,
        }
    }
    async fn leave(&self, chat: i64, channel: bool) -> Result<(), ChatError> {
        match self {
            Client::Grammers(c) => c.leave(chat, channel).await,
            Client::File(c) => c.leave(chat, channel).await,
        }
    }
    async fn authorizations(&self) -> Result<Vec<Authorization>, ChatError> {
        match self {
            Client::Grammers(c) => c.authorizations().await,
            Client::File(c) => c.authorizations().await,
        }
    }
    async fn learn_dialogs(&self, limit: usize) -> Result<usize, ChatError> {
        match self {
            Client::Grammers(c) => c.learn_dialogs(limit).await,
            Client::File(c) => c.learn_dialogs(limit).await,
        }
    }
    async fn knows_user(&self, user: i64) -> bool {
        match self {
            Client::Grammers(c) => c.knows_user(user).await,
            Client::File(c) => c.knows_user(user).await,
        }
    }
    async fn find_replies(&self, user: i64, reply_to: i32) -> Result<Vec<i32>, ChatError> {
        match self {
            Client::Grammers(c) => c.find_replies(user, reply_to).await,
            Client::File(c) => c.find_replies(user, reply_to).await,
        }
    }
    async fn ping(&self) -> Result<(), ChatError> {
        match self {
            Client::Grammers(c) => c.ping().await,
            Client::File(c) => c.ping().await,
        }
    }
    async fn commit(&self, mark: Mark) {
        match (self, mark) {
            (Client::Grammers(c), Mark::Grammers(m)) => c.commit(m).await,
            (Client::File(c), Mark::File(line)) => c.commit(line),
            _ => {}
        }
    }
    fn key_unchanged(&self) -> bool {
        match self {
            Client::Grammers(c) => c.key_unchanged(),
            Client::File(c) => c.key_unchanged(),
        }
    }
    fn export(&self) -> StoredSession {
        match self {
            Client::Grammers(c) => StoredSession {
                format: grammers::FORMAT.into(),
                bytes: c.export_session(),
            },
            Client::File(c) => StoredSession {
                format: file::FORMAT.into(),
                bytes: c.export_session(),
            },
        }
    }
    async fn quit(self, clean: bool) {
        match self {
            Client::Grammers(c) => (*c).quit(clean).await,
            Client::File(c) => c.quit(clean).await,
        }
    }
}

/// The userbot's Telegram app keys from `telegram.app_path`, read with the
/// broker's own token.
async fn app_keys(app: &App) -> Result<(i32, SecretString), ChatError> {
    let cfg = &app.cfg;
    let path = KvPath::new(&cfg.vault.kv_mount, &cfg.telegram.app_path)
        .map_err(|e| ChatError::Session(format!("telegram.app_path: {e}")))?;
    let secret = app.broker.current().kv_get(&path, None).await?;
    let api_id = secret
        .data
        .get("api_id")
        .and_then(|v| v.expose_secret().trim().parse::<i32>().ok())
        .ok_or_else(|| ChatError::Session(format!("{path}: `api_id` missing or not a number")))?;
    let api_hash = secret
        .data
        .get("api_hash")
        .cloned()
        .ok_or_else(|| ChatError::Session(format!("{path}: `api_hash` missing")))?;
    Ok((api_id, api_hash))
}

/// The runner's client never sleeps through a FLOOD_WAIT inside a call
/// (grammers' `AutoSleep` would, up to its threshold, and the whole runner
/// loop with it: commands, pings, deletions, notices): the error comes
/// back and each caller honours the wait in its own way (`term.rs`).
const NO_FLOOD_SLEEP: Duration = Duration::ZERO;

/// What the intake does with a new message (before the runner, with no
/// I/O): what concerns an operator — a command, a stale one to tell about,
/// a secret to delete — is forwarded; the rest is state only.
fn sorter(app: &App, me: i64) -> impl Fn(&Incoming) -> intake::Sort + Send + 'static {
    let operators = app.cfg.operators.clone();
    let max_age = app.cfg.telegram.max_command_age_secs;
    // Groups already handed to the runner (to leave): once each.
    let groups = Mutex::new(std::collections::HashSet::new());
    move |m: &Incoming| {
        let now = crate::etcd::unix_secs() as i64;
        match route::route(m, &operators, me, now, max_age) {
            route::Route::Group { chat, .. } => {
                let mut g = groups.lock().unwrap_or_else(|e| e.into_inner());
                if g.len() < 1000 && g.insert(chat) {
                    intake::Sort::Forward
                } else {
                    intake::Sort::Drop { stranger: None }
                }
            }
            route::Route::Command(_)
            | route::Route::Stale { .. }
            | route::Route::TelegramService
            | route::Route::NotRun { secret: true, .. } => intake::Sort::Forward,
            route::Route::Unknown(sender) => intake::Sort::Drop {
                stranger: Some(sender),
            },
            route::Route::NotRun { secret: false, .. } | route::Route::Ignore(_) => {
                intake::Sort::Drop { stranger: None }
            }
        }
    }
}

/// Starts a client and its intake task; the intake stops with `stop`.
async fn start_client(
    app: &App,
    stored: &StoredSession,
    stop: &CancellationToken,
) -> Result<(Client, intake::IntakeRx, tokio::task::JoinHandle<()>), ChatError> {
    let t = &app.cfg.telegram;
    let (tx, rx) = intake::channel();
    match t.backend {
        TelegramBackend::File => {
            let dir = t
                .file_dir
                .as_deref()
                .ok_or_else(|| ChatError::Session("telegram.file_dir is not set".into()))?;
            let (c, updates) = file::FileChat::start(dir, &stored.bytes, NO_FLOOD_SLEEP).await?;
            let h = tokio::spawn(intake::read(updates, tx, stop.clone(), sorter(app, c.me())));
            Ok((Client::File(c), rx, h))
        }
        TelegramBackend::Grammers => {
            if stored.format != grammers::FORMAT {
                return Err(ChatError::Session(format!(
                    "the stored session was written by `{}`, not `{}`; run `vaultgram login`",
                    stored.format,
                    grammers::FORMAT
                )));
            }
            let (api_id, _hash) = app_keys(app).await?;
            let (c, updates) = grammers::GrammersChat::start(
                api_id,
                &stored.bytes,
                t.proxy.as_deref(),
                NO_FLOOD_SLEEP,
            )
            .await?;
            let h = tokio::spawn(intake::read(updates, tx, stop.clone(), sorter(app, c.me())));
            Ok((Client::Grammers(Box::new(c)), rx, h))
        }
    }
}

/// `vaultgram login`: signs in (grammers: phone, code, 2FA; the file
/// stand-in: nothing to ask) and stores the session in Vault. If storing
/// fails the new authorization is signed out, so no live session is left
/// that nobody holds.
pub async fn login(app: &App, prompt: &mut dyn LoginPrompt) -> Result<u64, ChatError> {
    use crate::records::session::{Meta, WRITTEN_BY_LOGIN};
    let store = SessionStore::new(&app.cfg)?;
    let node = crate::leader::node_id();
    let vault = app.broker.current();
    // The authorization this login replaces: ended once the new one is
    // stored, so that no older version of the record holds a live session.
    let previous = store.meta(&vault, None).await?.and_then(|m| m.auth);
    match app.cfg.telegram.backend {
        TelegramBackend::File => {
            let bytes = file::new_session(app.cfg.telegram.file_dir.as_deref());
            let auth = file::session_auth(&bytes);
            let s = StoredSession {
                format: file::FORMAT.into(),
                bytes,
            };
            let meta = Meta {
                written_by: WRITTEN_BY_LOGIN.into(),
                saved_at: String::new(),
                auth: auth.clone(),
            };
            let v = store.save(&vault, &s, &node, &meta).await?;
            if let (Some(old), Some(dir)) = (previous, app.cfg.telegram.file_dir.as_deref()) {
                if Some(&old) != auth.as_ref() {
                    file::reset_authorization(dir, &old)?;
                }
            }
            Ok(v)
        }
        TelegramBackend::Grammers => {
            let (api_id, api_hash) = app_keys(app).await?;
            let t = &app.cfg.telegram;
            let done = grammers::login(api_id, &api_hash, t.proxy.as_deref(), prompt).await?;
            let auth = match done.current_authorization().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "login: the new authorization's hash is unknown; the next login cannot end it by itself");
                    None
                }
            };
            let s = StoredSession {
                format: grammers::FORMAT.into(),
                bytes: done.export_session(),
            };
            let meta = Meta {
                written_by: WRITTEN_BY_LOGIN.into(),
                saved_at: String::new(),
                auth: auth.clone(),
            };
            match store.save(&vault, &s, &node, &meta).await {
                Ok(v) => {
                    if let Some(old) = previous.filter(|o| Some(o) != auth.as_ref()) {
                        match done.reset_authorization(&old).await {
                            Ok(()) => tracing::info!("login: the previous authorization was ended"),
                            Err(e) => {
                                tracing::warn!(error = %e, "login: the previous authorization was not ended; end it in Telegram → Settings → Devices")
                            }
                        }
                    }
                    done.close().await;
                    Ok(v)
                }
                Err(e) => {
                    tracing::error!(error = %e, "login: cannot store the session; signing it out");
                    if let Err(out) = done.sign_out().await {
                        tracing::error!(error = %out, "login: sign-out failed too; end it in Telegram → Settings → Devices");
                    }
                    Err(e.into())
                }
            }
        }
    }
}

/// The service loop: campaign, serve while leading, resign; again until
/// `shutdown`.
pub async fn run(app: Arc<App>, elector: Arc<Elector>, shutdown: CancellationToken) {
    // `/health` reports this process's election and client.
    let _ = app.runtime.elector.set(elector.clone());
    let store = match SessionStore::new(&app.cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "telegram disabled");
            return;
        }
    };
    let dedup = Arc::new(SharedLease::new(
        format!("{}tg/lease", app.cfg.etcd.prefix),
        Duration::from_secs(app.cfg.telegram.dedup_ttl_secs),
        Duration::from_secs((app.cfg.telegram.dedup_ttl_secs / 7).max(30)),
    ));
    // The session version Telegram refused (401/406): not started again
    // until `vaultgram login` stores a new one.
    let refused = Mutex::new(None);
    // Commands whose sender could not be resolved, and how often.
    let unresolved = Mutex::new(std::collections::HashMap::new());
    // How often a refused or missing session is looked at again.
    let recheck = Duration::from_secs(app.cfg.telegram.session_save_secs.clamp(1, 30));
    let max_failed = app.cfg.telegram.max_failed_starts;
    while let Some(term) = elector.campaign(&shutdown).await {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        // Leading without a client: not ready after a while (`/readyz`).
        app.runtime
            .set_telegram(|s| s.down_since = Some(crate::etcd::unix_secs()));
        let mut failed_starts = 0u32;
        let mut hand_over = false;
        loop {
            let lost = term.lost();
            let t = Term {
                app: &app,
                term: &term,
                store: &store,
                dedup: &dedup,
                node: elector.node(),
                refused: &refused,
                unresolved: &unresolved,
                me: Default::default(),
                stale: Default::default(),
                started: Default::default(),
                unreachable: Default::default(),
                auth: Default::default(),
                left: Default::default(),
            };
            // A panic in the runner (or a client library) is an error like
            // any other: the client is dropped (its connections with it)
            // and this node either restarts it or resigns; never a leader
            // that holds the lease and serves nothing.
            let result = match AssertUnwindSafe(t.serve(&shutdown)).catch_unwind().await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(
                        node = elector.node(),
                        "telegram: the runner panicked; client dropped, restarting"
                    );
                    Err(ChatError::Io("the runner panicked".into()))
                }
            };
            let started = t.started.load(std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(()) => break,
                Err(e) => {
                    failed_starts = if started { 0 } else { failed_starts + 1 };
                    // Another replica may have another route to Telegram:
                    // after N failed starts in a row, let it try. (Not for
                    // a session that is missing or refused: every replica
                    // has the same one.)
                    if failed_starts >= max_failed
                        && !matches!(
                            e,
                            ChatError::Session(_) | ChatError::Unauthorized(_) | ChatError::Refused
                        )
                    {
                        tracing::error!(
                            node = elector.node(),
                            failed_starts,
                            error = %e,
                            "telegram: the client failed to start {failed_starts} times in a row; handing leadership over"
                        );
                        app.runtime.set_telegram(|s| {
                            s.connected = false;
                            s.problem = Some(format!(
                                "{failed_starts} failed starts ({e}); leadership handed over"
                            ));
                        });
                        hand_over = true;
                        break;
                    }
                    let wait = match e {
                        ChatError::Reload(_) => Duration::from_millis(100),
                        ChatError::Session(_) | ChatError::Unauthorized(_) | ChatError::Refused => {
                            recheck
                        }
                        _ => backoff.next_delay(),
                    };
                    if !matches!(e, ChatError::Refused) {
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "telegram client not running");
                    }
                    app.runtime.set_telegram(|s| {
                        s.connected = false;
                        if !matches!(e, ChatError::Refused) {
                            s.problem = Some(e.to_string());
                        }
                    });
                    tokio::select! {
                        _ = lost.cancelled() => break,
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        elector.resign(term).await;
        app.runtime.set_telegram(|s| s.down_since = None);
        if shutdown.is_cancelled() {
            break;
        }
        if hand_over {
            // Stand aside for two lease terms, so that a replica that is
            // campaigning wins first.
            let pause = Duration::from_secs(2 * app.cfg.etcd.lease_ttl_secs.max(1));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_rpc_errors_map_to_what_the_runner_must_do() {
        assert!(matches!(
            rpc_error(406, "AUTH_KEY_DUPLICATED", None),
            ChatError::Unauthorized(m) if m.contains("vaultgram login")
        ));
        assert!(matches!(
            rpc_error(401, "AUTH_KEY_UNREGISTERED", None),
            ChatError::Unauthorized(_)
        ));
        assert!(matches!(
            rpc_error(400, "RANDOM_ID_DUPLICATE", None),
            ChatError::Duplicate(_)
        ));
        assert!(matches!(
            rpc_error(420, "FLOOD_WAIT", Some(30)),
            ChatError::FloodWait(d) if d == Duration::from_secs(30)
        ));
        assert!(matches!(rpc_error(500, "INTERNAL", None), ChatError::Io(_)));
        assert!(matches!(
            rpc_error(303, "USER_MIGRATE", Some(2)),
            ChatError::Unauthorized(m) if m.contains("vaultgram login")
        ));
    }
}
