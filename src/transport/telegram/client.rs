//! The client behind the runner — grammers, or (built with the
//! `telegram-standin` feature, for the tests) the file stand-in — started
//! with its intake task.

use std::sync::Mutex;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use super::chat::{Authorization, ChatError};
#[cfg(feature = "telegram-standin")]
use super::file;
use super::grammers;
use super::intake::{self, Delivery, Mark, Source};
use super::route::{self, Incoming};
use super::session::StoredSession;
use crate::config::TelegramBackend;
use crate::dispatch::App;
use crate::vault::kv::KvPath;

/// What a build without the stand-in says to `backend = "file"` (the
/// config check refuses it first).
#[cfg(not(feature = "telegram-standin"))]
pub(super) const NO_STANDIN: &str = "telegram.backend = \"file\" needs a build with the `telegram-standin` feature (the tests' stand-in); this build has none";

impl Source for grammers::GrammersUpdates {
    async fn next(&mut self) -> Result<Delivery, ChatError> {
        let (msg, mark) = grammers::GrammersUpdates::next(self).await?;
        Ok(Delivery {
            msg,
            mark: Mark::Grammers(mark),
        })
    }
}

#[cfg(feature = "telegram-standin")]
impl Source for file::FileUpdates {
    async fn next(&mut self) -> Result<Delivery, ChatError> {
        let (msg, line) = file::FileUpdates::next(self).await?;
        Ok(Delivery {
            msg,
            mark: Mark::Position(line),
        })
    }
}

/// The longest any one request to Telegram may take: three pings' worth
/// (`telegram.ping_secs`, each at most 10 s), 5–30 s. Nothing sleeps
/// inside a request ([`NO_FLOOD_SLEEP`]), so only a lost answer or a dead
/// connection gets near it; without a bound the runner loop waited on such
/// a request forever (its ping cannot run while a loop body awaits).
pub(super) fn request_deadline(ping_secs: u64) -> Duration {
    Duration::from_secs((3 * ping_secs.clamp(1, 10)).clamp(5, 30))
}

/// The client behind the runner: grammers, or the test stand-in, with the
/// bounds every request runs under: [`request_deadline`], and `dead`,
/// which the runner's pinger cancels when the connection stops answering
/// (`term.rs`), as does a request past its deadline: every request in
/// flight then fails at once, the runner loop ends and the client is
/// started afresh, so no loop body waits on a connection known to be bad.
pub(super) struct Client {
    backend: Backend,
    dead: CancellationToken,
    deadline: Duration,
}

enum Backend {
    // Boxed: it carries the loaded 256-byte auth key.
    Grammers(Box<grammers::GrammersChat>),
    #[cfg(feature = "telegram-standin")]
    File(file::FileChat),
}

impl Client {
    fn new(backend: Backend, deadline: Duration) -> Client {
        Client {
            backend,
            dead: CancellationToken::new(),
            deadline,
        }
    }

    /// Marks the connection dead: requests in flight and later fail.
    pub(super) fn mark_dead(&self) {
        self.dead.cancel();
    }

    /// Resolves when the connection was marked dead.
    pub(super) async fn dead(&self) {
        self.dead.cancelled().await
    }

    /// One request, bounded by the deadline and `dead`.
    async fn bounded<T>(
        &self,
        what: &str,
        request: impl std::future::Future<Output = Result<T, ChatError>>,
    ) -> Result<T, ChatError> {
        tokio::select! {
            r = tokio::time::timeout(self.deadline, request) => r.unwrap_or_else(|_| {
                tracing::warn!(request = what, deadline_s = self.deadline.as_secs(), "telegram: no answer within the deadline; restarting the client");
                self.mark_dead();
                Err(ChatError::Io(format!(
                    "{what}: no answer from Telegram within {} s", self.deadline.as_secs()
                )))
            }),
            _ = self.dead.cancelled() => Err(ChatError::Io(format!(
                "{what}: abandoned, the connection stopped answering"
            ))),
        }
    }
    /// `telegram.backend`, as the log says it.
    pub(super) fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Grammers(_) => "grammers",
            #[cfg(feature = "telegram-standin")]
            Backend::File(_) => "file",
        }
    }
    /// A switch another task can flip to stop this client at once.
    pub(super) fn kill_switch(&self) -> Box<dyn FnOnce() + Send> {
        match &self.backend {
            Backend::Grammers(c) => Box::new(c.kill_switch()),
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => Box::new(c.kill_switch()),
        }
    }
    pub(super) fn me(&self) -> i64 {
        match &self.backend {
            Backend::Grammers(c) => c.me(),
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => c.me(),
        }
    }
    /// Sends to a user (only users are served: a bare id never names a
    /// group or channel here), replying to `reply_to` (0: no reply).
    pub(super) async fn send(
        &self,
        user: i64,
        reply_to: i32,
        text: &str,
        mono: bool,
    ) -> Result<i32, ChatError> {
        self.bounded("send", async {
            match &self.backend {
                Backend::Grammers(c) => c.send(user, reply_to, text, mono).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.send(user, reply_to, text, mono).await,
            }
        })
        .await
    }
    pub(super) async fn delete(&self, user: i64, ids: &[i32]) -> Result<(), ChatError> {
        self.bounded("delete", async {
            match &self.backend {
                Backend::Grammers(c) => c.delete(user, ids).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.delete(user, ids).await,
            }
        })
        .await
    }
    pub(super) async fn resolve(&self, user: i64, msg_id: i32) -> Result<(), ChatError> {
        self.bounded("resolve", async {
            match &self.backend {
                Backend::Grammers(c) => c.resolve(user, msg_id).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.resolve(user, msg_id).await,
            }
        })
        .await
    }
    /// One message with our own `random_id` (Telegram's idempotency key):
    /// a second send with the same id is `ChatError::Duplicate`.
    pub(super) async fn send_once(
        &self,
        user: i64,
        text: &str,
        random_id: i64,
    ) -> Result<(), ChatError> {
        self.bounded("send_once", async {
            match &self.backend {
                Backend::Grammers(c) => c.send_once(user, text, random_id).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.send_once(user, text, random_id).await,
            }
        })
        .await
    }
    pub(super) async fn leave(&self, chat: i64, channel: bool) -> Result<(), ChatError> {
        self.bounded("leave", async {
            match &self.backend {
                Backend::Grammers(c) => c.leave(chat, channel).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.leave(chat, channel).await,
            }
        })
        .await
    }
    pub(super) async fn authorizations(&self) -> Result<Vec<Authorization>, ChatError> {
        self.bounded("authorizations", async {
            match &self.backend {
                Backend::Grammers(c) => c.authorizations().await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.authorizations().await,
            }
        })
        .await
    }
    pub(super) async fn learn_dialogs(&self, limit: usize) -> Result<usize, ChatError> {
        self.bounded("learn_dialogs", async {
            match &self.backend {
                Backend::Grammers(c) => c.learn_dialogs(limit).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.learn_dialogs(limit).await,
            }
        })
        .await
    }
    pub(super) async fn knows_user(&self, user: i64) -> bool {
        match &self.backend {
            Backend::Grammers(c) => c.knows_user(user).await,
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => c.knows_user(user).await,
        }
    }
    pub(super) async fn find_replies(
        &self,
        user: i64,
        reply_to: i32,
    ) -> Result<Vec<i32>, ChatError> {
        self.bounded("find_replies", async {
            match &self.backend {
                Backend::Grammers(c) => c.find_replies(user, reply_to).await,
                #[cfg(feature = "telegram-standin")]
                Backend::File(c) => c.find_replies(user, reply_to).await,
            }
        })
        .await
    }
    pub(super) async fn ping(&self) -> Result<(), ChatError> {
        match &self.backend {
            Backend::Grammers(c) => c.ping().await,
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => c.ping().await,
        }
    }
    pub(super) async fn commit(&self, mark: Mark) {
        match (&self.backend, mark) {
            (Backend::Grammers(c), Mark::Grammers(m)) => c.commit(m).await,
            #[cfg(feature = "telegram-standin")]
            (Backend::File(c), Mark::Position(line)) => c.commit(line),
            _ => {}
        }
    }
    pub(super) fn key_unchanged(&self) -> bool {
        match &self.backend {
            Backend::Grammers(c) => c.key_unchanged(),
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => c.key_unchanged(),
        }
    }
    pub(super) fn export(&self) -> StoredSession {
        match &self.backend {
            Backend::Grammers(c) => StoredSession {
                format: grammers::FORMAT.into(),
                bytes: c.export_session(),
            },
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => StoredSession {
                format: file::FORMAT.into(),
                bytes: c.export_session(),
            },
        }
    }
    pub(super) async fn quit(self, clean: bool) {
        match self.backend {
            Backend::Grammers(c) => (*c).quit(clean).await,
            #[cfg(feature = "telegram-standin")]
            Backend::File(c) => c.quit(clean).await,
        }
    }
}

/// The userbot's Telegram app keys from `telegram.app_path`, read with the
/// broker's own token.
pub(super) async fn app_keys(app: &App) -> Result<(i32, SecretString), ChatError> {
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
pub(super) const NO_FLOOD_SLEEP: Duration = Duration::ZERO;

/// What the intake does with a new message (before the runner, with no
/// I/O): what concerns an operator — a command, a stale one to tell about,
/// a secret to delete — is forwarded; the rest is state only.
fn sorter(app: &App, me: i64) -> impl Fn(&Incoming) -> intake::Sort + Send + 'static {
    let operators = app.cfg.operators.clone();
    let max_age = app.cfg.telegram.max_command_age_secs;
    // Groups already handed to the runner (to leave): once each.
    let groups = Mutex::new(std::collections::HashSet::new());
    move |m: &Incoming| {
        let now = crate::clock::unix_secs() as i64;
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
pub(super) async fn start_client(
    app: &App,
    stored: &StoredSession,
    stop: &CancellationToken,
) -> Result<(Client, intake::IntakeRx, tokio::task::JoinHandle<()>), ChatError> {
    let t = &app.cfg.telegram;
    let deadline = request_deadline(t.ping_secs);
    let (tx, rx) = intake::channel();
    match t.backend {
        #[cfg(not(feature = "telegram-standin"))]
        TelegramBackend::File => Err(ChatError::Session(NO_STANDIN.into())),
        #[cfg(feature = "telegram-standin")]
        TelegramBackend::File => {
            let dir = t
                .file_dir
                .as_deref()
                .ok_or_else(|| ChatError::Session("telegram.file_dir is not set".into()))?;
            let (c, updates) = file::FileChat::start(dir, &stored.bytes, NO_FLOOD_SLEEP).await?;
            let h = tokio::spawn(intake::read(updates, tx, stop.clone(), sorter(app, c.me())));
            Ok((Client::new(Backend::File(c), deadline), rx, h))
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
            Ok((Client::new(Backend::Grammers(Box::new(c)), deadline), rx, h))
        }
    }
}
