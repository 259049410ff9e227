//! The one file that imports `grammers_*`: connect with a session held in
//! memory, deliver new messages as [`Incoming`] with their update state,
//! send, delete, find our replies, ping, export the session, log in. Everything else (who may do what, exactly-once,
//! deletions, fencing, persistence) lives outside, where it is tested
//! against real etcd and OpenBao; this file is kept small enough to review
//! line by line.
//!
//! The session is our own in-memory [`grammers_session::Session`]
//! implementation, serialised to JSON only to be transit-encrypted and
//! stored in Vault: grammers's SQLite storage is not compiled in, so it
//! never touches disk.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grammers_client::client::{LoginToken, PasswordToken, UpdateStream};
use grammers_client::message::InputMessage;
use grammers_client::update::Update;
use grammers_client::{Client, SignInError};
use grammers_mtsender::{
    AutoSleep, ConnectionParams, InvocationError, SenderPool, SenderPoolFatHandle,
    UpdatesConfiguration,
};
use grammers_session::types::{
    DcOption, PeerAuth, PeerId, PeerInfo, PeerKind, PeerRef, UpdateState, UpdatesState,
};
use grammers_session::updates::{MessageBox, State};
use grammers_session::{BoxFuture, Session, SessionData};
use grammers_tl_types as tl;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::chat::{rpc_error, Authorization, ChatError, LoginPrompt};
use super::login::{self, Check, LoginSteps, SignIn};
use super::route::{Incoming, Origin};

pub const FORMAT: &str = "grammers-0.11";

/// The serialised session: data-centre auth keys, cached peers (needed to
/// resolve gaps and to reply), update state.
#[derive(Serialize, Deserialize)]
struct Data {
    home_dc: i32,
    dc_options: Vec<DcOption>,
    peers: Vec<PeerInfo>,
    updates: UpdatesState,
}

/// In-memory session store; `Debug` is not derived (auth keys).
struct MemSession(Mutex<Data>);

impl MemSession {
    fn fresh() -> MemSession {
        let d = SessionData::default();
        MemSession(Mutex::new(Data {
            home_dc: d.home_dc,
            dc_options: d.dc_options.into_values().collect(),
            peers: Vec::new(),
            updates: UpdatesState::default(),
        }))
    }

    fn load(bytes: &[u8]) -> Result<MemSession, ChatError> {
        let mut d: Data = serde_json::from_slice(bytes)
            .map_err(|_| ChatError::Session("not a grammers session".into()))?;
        // Stored by an older broker: no channel is caught up at start.
        d.updates.channels.clear();
        Ok(MemSession(Mutex::new(d)))
    }

    fn export(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(&*self.data()).unwrap_or_default())
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn home_key(&self) -> Option<[u8; 256]> {
        let d = self.data();
        d.dc_options
            .iter()
            .find(|o| o.id == d.home_dc)
            .and_then(|o| o.auth_key)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("session store")]
struct Never;

impl Session for MemSession {
    type Error = Never;
    fn home_dc_id(&self) -> Result<i32, Never> {
        Ok(self.data().home_dc)
    }
    fn set_home_dc_id(&self, dc_id: i32) -> BoxFuture<'_, Result<(), Never>> {
        self.data().home_dc = dc_id;
        Box::pin(async { Ok(()) })
    }
    fn dc_option(&self, dc_id: i32) -> Result<Option<DcOption>, Never> {
        Ok(self
            .data()
            .dc_options
            .iter()
            .find(|o| o.id == dc_id)
            .cloned())
    }
    fn set_dc_option(&self, dc: &DcOption) -> BoxFuture<'_, Result<(), Never>> {
        let mut d = self.data();
        d.dc_options.retain(|o| o.id != dc.id);
        d.dc_options.push(dc.clone());
        Box::pin(async { Ok(()) })
    }
    fn peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<PeerInfo>, Never>> {
        let p = self.data().peers.iter().find(|p| p.id() == peer).cloned();
        Box::pin(async move { Ok(p) })
    }
    fn cache_peer(&self, peer: PeerInfo) -> BoxFuture<'_, Result<(), Never>> {
        let mut d = self.data();
        match d.peers.iter_mut().find(|p| p.id() == peer.id()) {
            Some(p) => {
                p.extend_info(&peer);
            }
            None => d.peers.push(peer),
        }
        Box::pin(async { Ok(()) })
    }
    fn updates_state(&self) -> BoxFuture<'_, Result<UpdatesState, Never>> {
        let s = self.data().updates.clone();
        Box::pin(async move { Ok(s) })
    }
    fn set_update_state(&self, update: UpdateState) -> BoxFuture<'_, Result<(), Never>> {
        let mut d = self.data();
        // Channel state is never kept: the broker serves private chats
        // only, and every channel in the stored state would have its
        // difference fetched at each start (strangers can add the account
        // to groups). `pts`/`qts` of the account are all it needs.
        match update {
            UpdateState::All(mut s) => {
                s.channels.clear();
                d.updates = s
            }
            UpdateState::Primary { pts, date, seq } => {
                d.updates.pts = pts;
                d.updates.date = date;
                d.updates.seq = seq;
            }
            UpdateState::Secondary { qts } => d.updates.qts = qts,
            UpdateState::Channel { .. } => {}
        }
        d.updates.channels.clear();
        Box::pin(async { Ok(()) })
    }
}

fn rpc(e: InvocationError) -> ChatError {
    match e {
        InvocationError::Rpc(r) => rpc_error(r.code, &r.name, r.value),
        other => ChatError::Io(other.to_string()),
    }
}

/// Connection settings: FLOOD_WAITs up to `flood_max` are slept through
/// by grammers (the runner passes zero: it honours waits itself, without
/// stalling its loop; the login dialogue sleeps), I/O errors are
/// retried as a 1 s flood, an optional SOCKS5 proxy (already resolved to an
/// address by [`resolve_proxy`]).
fn connect(
    session: Arc<MemSession>,
    api_id: i32,
    proxy: Option<String>,
    flood_max: Duration,
) -> (
    Client,
    SenderPoolFatHandle,
    AbortOnDrop,
    mpsc::Receiver<grammers_session::updates::UpdatesLike>,
) {
    let params = ConnectionParams {
        proxy_url: proxy,
        retry_policy: Box::new(AutoSleep {
            threshold: flood_max,
            tries: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            io_errors_as_flood_of: Some(Duration::from_secs(1)),
        }),
        ..Default::default()
    };
    let SenderPool {
        runner,
        updates,
        handle,
    } = SenderPool::with_configuration(session, api_id, params);
    let client = Client::new(handle.clone());
    (
        client,
        handle,
        AbortOnDrop(tokio::spawn(runner.run())),
        updates,
    )
}

/// grammers resolves a proxy host name with a resolver built by
/// `unwrap()` (a panic without `/etc/resolv.conf`); resolve it here and
/// give grammers an address.
async fn resolve_proxy(proxy: Option<&str>) -> Result<Option<String>, ChatError> {
    let Some(p) = proxy else { return Ok(None) };
    let url = url::Url::parse(p).map_err(|e| ChatError::Session(format!("telegram.proxy: {e}")))?;
    let Some(url::Host::Domain(host)) = url.host() else {
        return Ok(Some(p.to_string()));
    };
    let port = url.port().unwrap_or(1080);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ChatError::Io(format!("telegram.proxy: cannot resolve {host}")))?;
    Ok(Some(crate::config::proxy_with_address(p, addr.ip())))
}

/// The sender pool task, aborted (every socket dropped) when this is
/// dropped or the kill switch fires.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One update's own state: what the session may store once the runner has
/// finished with it.
pub struct UpdateMark(State);

impl UpdateMark {
    /// Takes the state of a `later` update of the same message box (the
    /// account's common box, the secondary one, or one channel), or gives
    /// it back: updates arrive in order per box, so the later state covers
    /// the earlier.
    pub fn absorb(&mut self, later: UpdateMark) -> Result<(), UpdateMark> {
        let same = match (&self.0.message_box, &later.0.message_box) {
            (None, None)
            | (Some(MessageBox::Common { .. }), Some(MessageBox::Common { .. }))
            | (Some(MessageBox::Secondary { .. }), Some(MessageBox::Secondary { .. })) => true,
            (
                Some(MessageBox::Channel { channel_id: a, .. }),
                Some(MessageBox::Channel { channel_id: b, .. }),
            ) => a == b,
            _ => false,
        };
        if same {
            *self = later;
            Ok(())
        } else {
            Err(later)
        }
    }
}

/// The update stream (messages, with their state).
pub struct GrammersUpdates {
    stream: UpdateStream,
    me: i64,
}

impl GrammersUpdates {
    /// The next update and its state.
    pub async fn next(&mut self) -> Result<(Option<Incoming>, UpdateMark), ChatError> {
        let update = self.stream.next().await.map_err(rpc)?;
        let mark = UpdateMark(update.state().clone());
        let (m, edited) = match update {
            Update::NewMessage(m) => (m, false),
            // An edit is shown to the runner too: never run, but a secret
            // edited into an operator's message is still deleted.
            Update::MessageEdited(m) => (m, true),
            _ => return Ok((None, mark)),
        };
        let chat = m.peer_id();
        let outgoing = m.outgoing();
        // The message itself (the update wrapper has its own `raw`).
        let raw: &tl::enums::Message = &std::ops::Deref::deref(&m).raw;
        let origin = match raw {
            _ if edited => Origin::Edited,
            tl::enums::Message::Service(_) => Origin::Service,
            tl::enums::Message::Message(raw) if raw.fwd_from.is_some() => Origin::Forwarded,
            tl::enums::Message::Message(raw) if raw.via_bot_id.is_some() => Origin::ViaBot,
            tl::enums::Message::Message(raw) if raw.saved_peer_id.is_some() => {
                Origin::SavedFromElsewhere
            }
            tl::enums::Message::Message(_) => Origin::Typed,
            tl::enums::Message::Empty(_) => Origin::Service,
        };
        let msg = Incoming {
            id: m.id(),
            chat: bare_id(chat, self.me),
            // Outgoing messages carry grammers' `self_user` sentinel, not
            // our id.
            sender: m.sender_id().map(|s| bare_id(s, self.me)),
            private: chat.kind() == PeerKind::User,
            channel: chat.kind() == PeerKind::Channel,
            outgoing,
            reply_to: m.reply_to_message_id(),
            text: Zeroizing::new(m.text().to_string()),
            date: match raw {
                tl::enums::Message::Message(raw) => i64::from(raw.date),
                tl::enums::Message::Service(raw) => i64::from(raw.date),
                tl::enums::Message::Empty(_) => 0,
            },
            origin,
        };
        Ok((Some(msg), mark))
    }
}

/// `account.getAuthorizations`, as the broker shows them.
async fn authorizations(client: &Client) -> Result<Vec<Authorization>, ChatError> {
    let tl::enums::account::Authorizations::Authorizations(all) = client
        .invoke(&tl::functions::account::GetAuthorizations {})
        .await
        .map_err(rpc)?;
    Ok(all
        .authorizations
        .into_iter()
        .map(|tl::enums::Authorization::Authorization(a)| Authorization {
            hash: a.hash.to_string(),
            device: format!("{} {}", a.device_model, a.platform)
                .trim()
                .to_string(),
            app: format!("{} {}", a.app_name, a.app_version)
                .trim()
                .to_string(),
            created: i64::from(a.date_created),
            active: i64::from(a.date_active),
            current: a.current,
        })
        .collect())
}

/// A user's peer from the session cache, looked up by its typed id: a
/// group or channel with the same bare id is never taken for it.
async fn user_ref(session: &MemSession, user: i64) -> Option<PeerRef> {
    let id = PeerId::user(user)?;
    let info = session.peer(id).await.ok().flatten()?;
    info.auth().map(|auth| PeerRef { id, auth })
}

/// A peer's bare id; grammers' `self_user` sentinel is this account.
fn bare_id(p: PeerId, me: i64) -> i64 {
    if p == PeerId::self_user() {
        me
    } else {
        p.bare_id_unchecked()
    }
}

pub struct GrammersChat {
    client: Client,
    handle: SenderPoolFatHandle,
    session: Arc<MemSession>,
    runner: AbortOnDrop,
    /// The home data centre's key as loaded.
    loaded_key: Option<[u8; 256]>,
    me: i64,
}

impl GrammersChat {
    pub async fn start(
        api_id: i32,
        session: &[u8],
        proxy: Option<&str>,
        flood_max: Duration,
    ) -> Result<(GrammersChat, GrammersUpdates), ChatError> {
        let session = Arc::new(MemSession::load(session)?);
        let loaded_key = session.home_key();
        let proxy = resolve_proxy(proxy).await?;
        let (client, handle, runner, updates) = connect(session.clone(), api_id, proxy, flood_max);
        // Dropping `runner` on any error below closes every connection.
        if !client.is_authorized().await.map_err(rpc)? {
            return Err(ChatError::Unauthorized(
                "the stored session is not logged in".into(),
            ));
        }
        let me = client.get_me().await.map_err(rpc)?;
        let me = me.id().bare_id_unchecked();
        let stream = client
            .stream_updates(updates, UpdatesConfiguration { catch_up: true })
            .await
            .map_err(|e| ChatError::Io(e.to_string()))?;
        Ok((
            GrammersChat {
                client,
                handle,
                session,
                runner,
                loaded_key,
                me,
            },
            GrammersUpdates { stream, me },
        ))
    }

    pub fn me(&self) -> i64 {
        self.me
    }

    /// Stops the client from any task, at once (fencing): the sender pool
    /// task is aborted, which drops every connection, even one still being
    /// set up (grammers' connect has no timeout).
    pub fn kill_switch(&self) -> impl FnOnce() + Send + 'static {
        let abort = self.runner.0.abort_handle();
        move || abort.abort()
    }

    /// The user's peer from the session cache.
    async fn user(&self, user: i64) -> Result<PeerRef, ChatError> {
        user_ref(&self.session, user)
            .await
            .ok_or(ChatError::UnknownPeer(user))
    }

    /// Learns the access hash of the sender of a private message: an
    /// `updateShortMessage` carries no user, and grammers 0.11 no longer
    /// fetches it. `messages.getMessages` needs no peer for private chats;
    /// its answer carries the user, which grammers caches in the session.
    pub async fn resolve(&self, user: i64, msg_id: i32) -> Result<(), ChatError> {
        if self.user(user).await.is_ok() {
            return Ok(());
        }
        let id =
            PeerId::user(user).ok_or_else(|| ChatError::Io(format!("{user} is not a user id")))?;
        // Only the id is used for a private chat (no InputPeer is sent).
        let peer = PeerRef {
            id,
            auth: PeerAuth::default(),
        };
        self.client
            .get_messages_by_id(peer, &[msg_id])
            .await
            .map_err(rpc)?;
        self.user(user).await.map(|_| ())
    }

    /// One message; `monospace` puts the whole text in a `pre` entity.
    pub async fn send(
        &self,
        user: i64,
        reply_to: i32,
        text: &str,
        monospace: bool,
    ) -> Result<i32, ChatError> {
        // 0: not a reply (a notice to an admin).
        let mut m = InputMessage::new()
            .text(text)
            .reply_to((reply_to != 0).then_some(reply_to));
        if monospace {
            m = m.fmt_entities(vec![tl::enums::MessageEntity::Pre(
                tl::types::MessageEntityPre {
                    offset: 0,
                    length: text.encode_utf16().count() as i32,
                    language: String::new(),
                },
            )]);
        }
        let sent = self
            .client
            .send_message(self.user(user).await?, m)
            .await
            .map_err(rpc)?;
        Ok(sent.id())
    }

    /// One plain message with our own `random_id`: Telegram refuses a
    /// second message with the same id (`RANDOM_ID_DUPLICATE`), which
    /// makes a retry by another leader harmless.
    pub async fn send_once(&self, user: i64, text: &str, random_id: i64) -> Result<(), ChatError> {
        let peer = self.user(user).await?;
        self.client
            .invoke(&tl::functions::messages::SendMessage {
                no_webpage: true,
                silent: false,
                background: false,
                clear_draft: false,
                noforwards: false,
                update_stickersets_order: false,
                invert_media: false,
                allow_paid_floodskip: false,
                peer: (&peer).into(),
                reply_to: None,
                message: text.to_string(),
                random_id,
                reply_markup: None,
                entities: None,
                schedule_date: None,
                schedule_repeat_period: None,
                send_as: None,
                quick_reply_shortcut: None,
                effect: None,
                allow_paid_stars: None,
                suggested_post: None,
                rich_message: None,
            })
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// Leaves a group or channel the account was added to.
    pub async fn leave(&self, chat: i64, channel: bool) -> Result<(), ChatError> {
        let id = if channel {
            PeerId::channel(chat)
        } else {
            PeerId::chat(chat)
        }
        .ok_or_else(|| ChatError::Io(format!("{chat} is not a group id")))?;
        let auth = self
            .session
            .peer(id)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.auth())
            .unwrap_or_default();
        self.client
            .delete_dialog(PeerRef { id, auth })
            .await
            .map_err(rpc)
    }

    /// The account's authorizations (`account.getAuthorizations`).
    pub async fn authorizations(&self) -> Result<Vec<Authorization>, ChatError> {
        authorizations(&self.client).await
    }

    /// Walks the account's dialogs (up to `limit`): grammers caches every
    /// user they name, so an operator who ever chatted with the account
    /// can be told of requests before writing again (a fresh login starts
    /// with an empty peer cache). How many dialogs were read.
    pub async fn learn_dialogs(&self, limit: usize) -> Result<usize, ChatError> {
        let mut dialogs = self.client.iter_dialogs();
        let mut n = 0;
        while n < limit {
            match dialogs.next().await.map_err(rpc)? {
                Some(_) => n += 1,
                None => break,
            }
        }
        Ok(n)
    }

    /// Whether the session can address `user` (has its access hash).
    pub async fn knows_user(&self, user: i64) -> bool {
        self.user(user).await.is_ok()
    }

    /// Our recent messages to `user` replying to `reply_to`.
    pub async fn find_replies(&self, user: i64, reply_to: i32) -> Result<Vec<i32>, ChatError> {
        let mut it = self.client.iter_messages(self.user(user).await?).limit(50);
        let mut ids = Vec::new();
        while let Some(m) = it.next().await.map_err(rpc)? {
            if m.outgoing() && m.reply_to_message_id() == Some(reply_to) {
                ids.push(m.id());
            }
        }
        Ok(ids)
    }

    /// Deletes for everyone. Private-chat message ids need no peer.
    pub async fn delete(&self, _user: i64, ids: &[i32]) -> Result<(), ChatError> {
        self.client
            .invoke(&tl::functions::messages::DeleteMessages {
                revoke: true,
                id: ids.to_vec(),
            })
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// A round trip through the home connection.
    pub async fn ping(&self) -> Result<(), ChatError> {
        self.client
            .invoke(&tl::functions::updates::GetState {})
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// Stores an update's state in the session (after it was handled).
    pub async fn commit(&self, mark: UpdateMark) {
        let s = mark.0;
        let update = match s.message_box {
            Some(MessageBox::Common { pts }) => UpdateState::Primary {
                pts,
                date: s.date,
                seq: s.seq,
            },
            Some(MessageBox::Secondary { qts }) => UpdateState::Secondary { qts },
            Some(MessageBox::Channel { channel_id, pts }) => UpdateState::Channel {
                id: channel_id,
                pts,
            },
            None => {
                let pts = self.session.data().updates.pts;
                UpdateState::Primary {
                    pts,
                    date: s.date,
                    seq: s.seq,
                }
            }
        };
        let _ = self.session.set_update_state(update).await;
    }

    /// Whether the home data centre's key is still the one loaded (after a
    /// transport 404 grammers generates a new, unauthorized one).
    pub fn key_unchanged(&self) -> bool {
        self.session.home_key() == self.loaded_key
    }

    pub fn export_session(&self) -> Zeroizing<Vec<u8>> {
        self.session.export()
    }

    /// Closes every connection and waits (bounded) for the sender pool.
    pub async fn quit(mut self, _clean: bool) {
        self.handle.thin.quit();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.runner.0).await;
    }
}

/// Interactive login: phone, code, 2FA password (hint shown). Returns the
/// session and a closure-free way to sign it out if storing it fails.
pub struct LoggedIn {
    client: Client,
    handle: SenderPoolFatHandle,
    runner: AbortOnDrop,
    session: Arc<MemSession>,
}

impl LoggedIn {
    pub fn export_session(&self) -> Zeroizing<Vec<u8>> {
        self.session.export()
    }

    /// The hash of this login's authorization (`account.getAuthorizations`,
    /// the entry marked current).
    pub async fn current_authorization(&self) -> Result<Option<String>, ChatError> {
        Ok(authorizations(&self.client)
            .await?
            .into_iter()
            .find(|a| a.current)
            .map(|a| a.hash))
    }

    /// Ends authorization `hash` (an earlier login's).
    pub async fn reset_authorization(&self, hash: &str) -> Result<(), ChatError> {
        let hash: i64 = hash
            .parse()
            .map_err(|_| ChatError::Session(format!("not an authorization hash: {hash}")))?;
        self.client
            .invoke(&tl::functions::account::ResetAuthorization { hash })
            .await
            .map_err(rpc)?;
        Ok(())
    }

    /// Ends the new authorization (used when it could not be stored).
    pub async fn sign_out(self) -> Result<(), ChatError> {
        let r = self.client.sign_out().await.map(|_| ()).map_err(rpc);
        self.close().await;
        r
    }

    pub async fn close(mut self) {
        self.handle.thin.quit();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.runner.0).await;
    }
}

struct Steps<'a> {
    client: &'a Client,
    api_hash: String,
}

impl LoginSteps for Steps<'_> {
    type Token = LoginToken;
    type Password = PasswordToken;
    async fn request_code(&mut self, phone: &str) -> Result<LoginToken, ChatError> {
        self.client
            .request_login_code(phone, &self.api_hash)
            .await
            .map_err(rpc)
    }
    async fn sign_in(&mut self, token: &LoginToken, code: &str) -> SignIn<PasswordToken> {
        match self.client.sign_in(token, code).await {
            Ok(_) => SignIn::Done,
            Err(SignInError::PasswordRequired(pw)) => SignIn::Password(pw),
            Err(SignInError::InvalidCode) => SignIn::InvalidCode,
            Err(SignInError::Other(e)) => SignIn::Failed(rpc(e)),
            Err(e) => SignIn::Failed(ChatError::Unauthorized(sign_in_error(&e))),
        }
    }
    fn hint(password: &PasswordToken) -> Option<String> {
        password.hint().map(str::to_string)
    }
    async fn check_password(
        &mut self,
        token: PasswordToken,
        password: &[u8],
    ) -> Check<PasswordToken> {
        match self.client.check_password(token, password).await {
            Ok(_) => Check::Done,
            Err(SignInError::InvalidPassword(next)) => Check::Invalid(next),
            Err(SignInError::Other(e)) => Check::Failed(rpc(e)),
            Err(e) => Check::Failed(ChatError::Unauthorized(sign_in_error(&e))),
        }
    }
}

pub async fn login(
    api_id: i32,
    api_hash: &SecretString,
    proxy: Option<&str>,
    prompt: &mut dyn LoginPrompt,
) -> Result<LoggedIn, ChatError> {
    let session = Arc::new(MemSession::fresh());
    let proxy = resolve_proxy(proxy).await?;
    let (client, handle, runner, _updates) =
        connect(session.clone(), api_id, proxy, Duration::from_secs(60));
    let done = LoggedIn {
        client: client.clone(),
        handle,
        runner,
        session,
    };
    let mut steps = Steps {
        client: &client,
        // A pasted hash often carries a newline or spaces.
        api_hash: api_hash.expose_secret().trim().to_string(),
    };
    match login::sign_in(&mut steps, prompt).await {
        Ok(()) => Ok(done),
        Err(e) => {
            done.close().await;
            Err(e)
        }
    }
}

fn sign_in_error(e: &SignInError) -> String {
    match e {
        SignInError::SignUpRequired => "this phone number has no Telegram account".into(),
        SignInError::InvalidCode => "the login code is not valid".into(),
        SignInError::InvalidPassword(_) => "the 2FA password is not valid".into(),
        other => format!("sign-in failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grammers_session::types::ChannelState;

    #[test]
    fn the_self_user_sentinel_is_this_account_not_a_bare_id() {
        // `bare_id_unchecked` on the sentinel trips a debug assertion
        // (grammers-session peer.rs); outgoing messages carry it.
        assert_eq!(bare_id(PeerId::self_user(), 4242), 4242);
        assert_eq!(bare_id(PeerId::user(77).unwrap(), 4242), 77);
        assert_eq!(bare_id(PeerId::chat(77).unwrap(), 4242), 77);
    }

    /// Issue 29, item 10: no channel state is kept, loaded or exported
    /// (each one's difference would be fetched at every start; strangers
    /// can add the account to groups). On e84a6d6 every channel ever seen
    /// stayed in the stored state.
    #[tokio::test]
    async fn channel_state_is_never_kept() {
        let s = MemSession::fresh();
        let _ = s
            .set_update_state(UpdateState::Channel { id: 42, pts: 7 })
            .await;
        let mut all = s.updates_state().await.unwrap();
        assert!(all.channels.is_empty());
        all.channels.push(ChannelState { id: 43, pts: 8 });
        all.pts = 100;
        let _ = s.set_update_state(UpdateState::All(all)).await;
        let kept = s.updates_state().await.unwrap();
        assert!(kept.channels.is_empty());
        assert_eq!(kept.pts, 100);
        // A session stored by an older broker, with channels: dropped.
        let mut d: serde_json::Value = serde_json::from_slice(&s.export()).unwrap();
        d["updates"]["channels"] = serde_json::json!([{"id": 44, "pts": 9}]);
        let loaded = MemSession::load(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert!(loaded.updates_state().await.unwrap().channels.is_empty());
    }

    /// A group (and a channel) sharing an operator's bare id is cached
    /// first: replies to the operator must still find only the user.
    #[tokio::test]
    async fn a_group_with_an_operators_bare_id_is_never_the_operators_peer() {
        let s = MemSession::fresh();
        let _ = s.cache_peer(PeerInfo::Chat { id: 111111 }).await;
        let _ = s
            .cache_peer(PeerInfo::Channel {
                id: 111111,
                auth: Some(PeerAuth::from_hash(9)),
                kind: None,
            })
            .await;
        assert!(
            user_ref(&s, 111111).await.is_none(),
            "a chat or channel taken for the user"
        );
        let _ = s
            .cache_peer(PeerInfo::User {
                id: 111111,
                auth: Some(PeerAuth::from_hash(7)),
                bot: None,
                is_self: None,
            })
            .await;
        let r = user_ref(&s, 111111).await.expect("the user");
        assert_eq!(r.id, PeerId::user(111111).unwrap());
        assert_eq!(r.auth, PeerAuth::from_hash(7));
    }
}
