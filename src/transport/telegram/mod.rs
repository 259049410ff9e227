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
//! The client is `grammers` (the only file importing `grammers_*`) or, in
//! tests, the `file` stand-in that replaces only it.

mod file;
mod grammers;
pub mod route;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::config::{Config, TelegramBackend};
use crate::dispatch::{App, Transport};
use crate::etcd::{Claim, SharedLease};
use crate::leader::{Elector, Leadership};
use crate::vault::auth::Backoff;
use crate::vault::kv::KvPath;
use crate::vault::VaultError;
use route::{Deletion, Handled, Incoming, Route};
use session::{SessionStore, StoredSession};

/// Failures of the Telegram client. Texts carry no message text and no
/// session bytes.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("telegram: FLOOD_WAIT of {}s", .0.as_secs())]
    FloodWait(Duration),
    #[error("telegram: not authorized: {0}")]
    Unauthorized(String),
    #[error("telegram: {0}")]
    Io(String),
    #[error("telegram session: {0}")]
    Session(String),
    #[error("telegram: {0}")]
    Vault(#[from] VaultError),
    #[error("telegram login: {0}")]
    Prompt(String),
}

/// Where `vaultgram login` gets the phone number, the code and the 2FA
/// password (a terminal in `main`).
pub trait LoginPrompt {
    fn phone(&mut self) -> Result<String, ChatError>;
    fn code(&mut self) -> Result<SecretString, ChatError>;
    fn password(&mut self, hint: Option<&str>) -> Result<SecretString, ChatError>;
}

/// The client behind the runner: grammers, or the test stand-in.
enum Client {
    Grammers(grammers::GrammersChat),
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
    async fn send(
        &self,
        chat: i64,
        reply_to: i32,
        text: &str,
        mono: bool,
    ) -> Result<i32, ChatError> {
        match self {
            Client::Grammers(c) => c.send(chat, reply_to, text, mono).await,
            Client::File(c) => c.send(chat, reply_to, text, mono).await,
        }
    }
    async fn delete(&self, chat: i64, ids: &[i32]) -> Result<(), ChatError> {
        match self {
            Client::Grammers(c) => c.delete(chat, ids).await,
            Client::File(c) => c.delete(chat, ids).await,
        }
    }
    async fn stop_intake(&mut self) {
        match self {
            Client::Grammers(c) => c.stop_intake().await,
            Client::File(c) => c.stop_intake().await,
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
            Client::Grammers(c) => c.quit(clean).await,
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

async fn start_client(
    app: &App,
    stored: &StoredSession,
) -> Result<(Client, mpsc::Receiver<Incoming>), ChatError> {
    let t = &app.cfg.telegram;
    match t.backend {
        TelegramBackend::File => {
            let dir = t
                .file_dir
                .as_deref()
                .ok_or_else(|| ChatError::Session("telegram.file_dir is not set".into()))?;
            let (c, rx) = file::FileChat::start(dir, &stored.bytes).await?;
            Ok((Client::File(c), rx))
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
            let (c, rx) = grammers::GrammersChat::start(
                api_id,
                &stored.bytes,
                t.proxy.as_deref(),
                Duration::from_secs(t.flood_wait_max_secs),
            )
            .await?;
            Ok((Client::Grammers(c), rx))
        }
    }
}

/// `vaultgram login`: signs in (grammers: phone, code, 2FA; the file
/// stand-in: nothing to ask) and stores the session in Vault. If storing
/// fails the new authorization is signed out, so no live session is left
/// that nobody holds.
pub async fn login(app: &App, prompt: &mut dyn LoginPrompt) -> Result<u64, ChatError> {
    let store = SessionStore::new(&app.cfg)?;
    let node = crate::leader::node_id();
    let vault = app.broker.current();
    match app.cfg.telegram.backend {
        TelegramBackend::File => {
            let s = StoredSession {
                format: file::FORMAT.into(),
                bytes: file::new_session(),
            };
            Ok(store.save(&vault, &s, &node).await?)
        }
        TelegramBackend::Grammers => {
            let (api_id, api_hash) = app_keys(app).await?;
            let t = &app.cfg.telegram;
            let done = grammers::login(api_id, &api_hash, t.proxy.as_deref(), prompt).await?;
            let s = StoredSession {
                format: grammers::FORMAT.into(),
                bytes: done.export_session(),
            };
            match store.save(&vault, &s, &node).await {
                Ok(v) => {
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    while let Some(term) = elector.campaign(&shutdown).await {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let lost = term.lost();
            let t = Term {
                app: &app,
                term: &term,
                store: &store,
                dedup: &dedup,
                node: elector.node(),
            };
            match t.serve(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    let wait = match e {
                        ChatError::Session(_) | ChatError::Unauthorized(_) => {
                            Duration::from_secs(30)
                        }
                        _ => backoff.next_delay(),
                    };
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "telegram client not running");
                    app.runtime.set_telegram(|s| {
                        s.connected = false;
                        s.problem = Some(e.to_string());
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
        if shutdown.is_cancelled() {
            break;
        }
    }
}

/// One leadership term's view of everything the runner needs.
struct Term<'a> {
    app: &'a App,
    term: &'a Leadership,
    store: &'a SessionStore,
    dedup: &'a SharedLease,
    node: &'a str,
}

impl Term<'_> {
    /// Runs one client until leadership is lost (`Ok`), shutdown (`Ok`), or
    /// the client fails (`Err`, retried by the caller).
    async fn serve(&self, shutdown: &CancellationToken) -> Result<(), ChatError> {
        let lost = self.term.lost();
        let vault = self.app.broker.current();
        let stored = self.store.load(&vault).await?.ok_or_else(|| {
            ChatError::Session(format!(
                "no session stored at {}; run `vaultgram login`",
                self.store.path()
            ))
        })?;
        if lost.is_cancelled() || shutdown.is_cancelled() {
            return Ok(());
        }
        let (mut client, mut rx) = start_client(self.app, &stored).await?;
        drop(stored);
        let backend = match &client {
            Client::Grammers(_) => "grammers",
            Client::File(_) => "file",
        };
        tracing::info!(node = self.node, backend, "telegram client started");
        self.app.runtime.set_telegram(|s| {
            s.connected = true;
            s.backend = Some(backend);
            s.problem = None;
        });
        // Fencing does not wait for the loop below (a handler may be stuck
        // on a partitioned etcd): losing the lease stops the client at once.
        let fence = tokio::spawn({
            let kill = client.kill_switch();
            let lost = lost.clone();
            let node = self.node.to_string();
            async move {
                lost.cancelled().await;
                kill();
                tracing::warn!(node, "telegram client stopped");
            }
        });
        // A new leader first finishes what the previous one scheduled.
        self.run_deletions(&client).await;
        let mut save =
            tokio::time::interval(Duration::from_secs(self.app.cfg.telegram.session_save_secs));
        save.tick().await;
        let mut deletions = tokio::time::interval(Duration::from_secs(1));
        let outcome = loop {
            tokio::select! {
                biased;
                _ = lost.cancelled() => break Ok(false),
                _ = shutdown.cancelled() => break Ok(true),
                m = rx.recv() => match m {
                    // Runs to completion: the select does not interrupt a
                    // branch body, so a command is never cut in half.
                    Some(msg) => {
                        self.app.runtime.set_telegram(|s| s.last_update = Some(crate::etcd::unix_secs()));
                        self.handle(&client, msg).await
                    }
                    None => break Err(ChatError::Io("the client stopped delivering updates".into())),
                },
                _ = save.tick() => self.save(&client).await,
                _ = deletions.tick() => self.run_deletions(&client).await,
            }
        };
        match outcome {
            Ok(true) => {
                self.mark_stopped(Some("shutting down".into()));
                fence.abort();
                // Shutdown: stop intake, sync the update state, store it,
                // then quit (the caller resigns afterwards).
                tracing::info!(node = self.node, "telegram: intake stopped");
                client.stop_intake().await;
                self.save(&client).await;
                client.quit(true).await;
                tracing::info!(node = self.node, "telegram client stopped");
                Ok(())
            }
            Ok(false) => {
                self.mark_stopped(Some("not the leader".into()));
                // Fenced: the kill switch already stopped the client; write
                // nothing (another node may be leading by now).
                let _ = fence.await;
                client.quit(false).await;
                Ok(())
            }
            Err(e) => {
                self.mark_stopped(Some(e.to_string()));
                fence.abort();
                // The update state is still good: keep it for the next start.
                self.save(&client).await;
                client.quit(false).await;
                tracing::warn!(node = self.node, "telegram client stopped");
                Err(e)
            }
        }
    }

    /// Everything after the loop: the client is gone either way.
    fn mark_stopped(&self, problem: Option<String>) {
        self.app.runtime.set_telegram(|s| {
            s.connected = false;
            s.problem = problem;
        });
    }

    async fn save(&self, client: &Client) {
        if self.term.is_lost() {
            return;
        }
        let s = client.export();
        let vault = self.app.broker.current();
        match self.store.save(&vault, &s, self.node).await {
            Ok(v) => tracing::debug!(version = v, "telegram session saved"),
            Err(e) => tracing::warn!(error = %e, "telegram session not saved"),
        }
    }

    fn prefix(&self) -> &str {
        &self.app.cfg.etcd.prefix
    }

    fn record(&self, state: &str) -> Vec<u8> {
        serde_json::to_vec(&Handled {
            state: state.into(),
            node: self.node.into(),
            at: crate::etcd::unix_secs(),
        })
        .unwrap_or_default()
    }

    /// Claims `(chat, id)`; `Some(previous state)` when it was handled or
    /// claimed before, `None` when this call claimed it. Errors and a lost
    /// leadership come back as `Err` (nothing may run then).
    async fn claim(&self, chat: i64, id: i32, state: &str) -> Result<Option<String>, String> {
        let etcd = &self.app.etcd;
        let key = route::handled_key(self.prefix(), chat, id);
        let lease = self.dedup.get(etcd).await.map_err(|e| e.to_string())?;
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
                    .map(|h| h.state)
                    .unwrap_or_default();
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

    async fn put_guarded(&self, key: &str, value: &[u8]) {
        let etcd = &self.app.etcd;
        let lease = match self.dedup.get(etcd).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "telegram: etcd write skipped");
                return;
            }
        };
        match etcd.put_guarded(&self.term.guard, key, value, lease).await {
            Ok(true) => {}
            Ok(false) => self.term.fence("a guarded write was refused"),
            Err(e) => {
                self.dedup.invalidate();
                tracing::warn!(error = %e, "telegram: etcd write failed");
            }
        }
    }

    async fn handle(&self, client: &Client, msg: Incoming) {
        let cfg: &Config = &self.app.cfg;
        let me = client.me();
        let route = route::route(&msg, &cfg.operators, me);
        if let Route::Ignore(reason) = route {
            tracing::debug!(msg_id = msg.id, reason, "telegram: update ignored");
            return;
        }
        if self.term.is_lost() {
            return;
        }
        match self.claim(msg.chat, msg.id, "started").await {
            Ok(None) => {}
            Ok(Some(prev)) if prev == "started" => {
                // Claimed by a leader that stopped before finishing: it may or
                // may not have run. Running it again could run it twice.
                tracing::warn!(
                    msg_id = msg.id,
                    "telegram: message interrupted by a failover, not re-run"
                );
                if let Route::Command(_) = route {
                    let text = format!(
                        "error (unavailable): message {} was being handled when the previous leader stopped; it was not run again. Check its effect (/audit) and send it again if needed.",
                        msg.id
                    );
                    let _ = client.send(msg.chat, msg.id, &text, false).await;
                }
                let key = route::handled_key(self.prefix(), msg.chat, msg.id);
                self.put_guarded(&key, &self.record("done")).await;
                return;
            }
            Ok(Some(_)) => {
                tracing::info!(msg_id = msg.id, "duplicate message skipped");
                return;
            }
            Err(e) => {
                tracing::warn!(msg_id = msg.id, error = %e, "telegram: cannot record the message; not run");
                if let (Route::Command(_), false) = (&route, self.term.is_lost()) {
                    let _ = client
                        .send(
                            msg.chat,
                            msg.id,
                            "error (unavailable): etcd is unreachable; the command was not run",
                            false,
                        )
                        .await;
                }
                return;
            }
        }
        let key = route::handled_key(self.prefix(), msg.chat, msg.id);
        let op = match route {
            Route::Command(op) => op,
            Route::Unknown(sender) => {
                // No reply at all; one audit record.
                self.app
                    .dispatch(None, &format!("telegram:{sender}"), Transport::Telegram, "")
                    .await;
                self.put_guarded(&key, &self.record("done")).await;
                return;
            }
            Route::Ignore(_) => return,
        };
        let secret_input = route::input_carries_secret(&msg.text);
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
        self.put_guarded(&key, &self.record("ran")).await;
        drop(result);
        let mut chunks = route::split(&text, route::MESSAGE_LIMIT);
        if chunks.is_empty() {
            chunks.push(Zeroizing::new("(no output)".into()));
        }
        let mut sent = Vec::new();
        for chunk in &chunks {
            if self.term.is_lost() {
                break;
            }
            match client.send(msg.chat, msg.id, chunk, secret).await {
                Ok(id) => sent.push(id),
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
                let _ = self.claim(msg.chat, *id, "sent").await;
            }
        }
        let plan = route::plan_deletions(
            msg.chat,
            secret_input.then_some(msg.id),
            if secret { &sent } else { &[] },
            now_ms(),
            cfg.telegram.secret_reply_ttl_secs * 1000,
        );
        for d in &plan {
            let value = serde_json::to_vec(d).unwrap_or_default();
            self.put_guarded(&d.key(self.prefix()), &value).await;
        }
        self.put_guarded(&key, &self.record("done")).await;
        if secret_input {
            self.run_deletions(client).await;
        }
    }

    /// Deletes the messages whose time has come, oldest first; a record is
    /// removed only after Telegram confirmed the deletion.
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
        let now = now_ms();
        for entry in due {
            let Ok(d) = serde_json::from_slice::<Deletion>(&entry.value) else {
                continue;
            };
            if d.due_ms > now || self.term.is_lost() {
                break;
            }
            match client.delete(d.chat, &d.ids).await {
                Ok(()) => {
                    tracing::info!(
                        chat = d.chat,
                        count = d.ids.len(),
                        "telegram: messages deleted"
                    );
                    match etcd.delete_guarded(&self.term.guard, &entry.key).await {
                        Ok(true) => {}
                        Ok(false) => {
                            self.term.fence("a guarded write was refused");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "telegram: deletion record kept"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "telegram: deletion failed; retried later");
                    return;
                }
            }
        }
    }
}
