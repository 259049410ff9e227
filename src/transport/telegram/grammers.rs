//! The one file that imports `grammers_*`: connect with a session held in
//! memory, deliver new messages as [`Incoming`], send, delete, export the
//! session, log in. Everything else (who may do what, exactly-once,
//! deletions, fencing, persistence) lives outside, where it is tested
//! against real etcd and OpenBao; this file is kept small enough to review
//! line by line.
//!
//! The session is our own in-memory [`grammers_session::Session`]
//! implementation, serialised to JSON only to be transit-encrypted and
//! stored in Vault: grammers's SQLite storage is not compiled in, so it
//! never touches disk.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grammers_client::message::InputMessage;
use grammers_client::update::Update;
use grammers_client::{Client, SignInError};
use grammers_mtsender::{
    AutoSleep, ConnectionParams, InvocationError, SenderPool, SenderPoolFatHandle,
    UpdatesConfiguration,
};
use grammers_session::types::{
    ChannelState, DcOption, PeerId, PeerInfo, PeerKind, PeerRef, UpdateState, UpdatesState,
};
use grammers_session::{BoxFuture, Session, SessionData};
use grammers_tl_types as tl;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::route::Incoming;
use super::{ChatError, LoginPrompt};

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
        let d: Data = serde_json::from_slice(bytes)
            .map_err(|_| ChatError::Session("not a grammers session".into()))?;
        Ok(MemSession(Mutex::new(d)))
    }

    fn export(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(serde_json::to_vec(&*self.data()).unwrap_or_default())
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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
        match update {
            UpdateState::All(s) => d.updates = s,
            UpdateState::Primary { pts, date, seq } => {
                d.updates.pts = pts;
                d.updates.date = date;
                d.updates.seq = seq;
            }
            UpdateState::Secondary { qts } => d.updates.qts = qts,
            UpdateState::Channel { id, pts } => {
                d.updates.channels.retain(|c| c.id != id);
                d.updates.channels.push(ChannelState { id, pts });
            }
        }
        Box::pin(async { Ok(()) })
    }
}

fn rpc(e: InvocationError) -> ChatError {
    match e {
        InvocationError::Rpc(r) if r.name == "FLOOD_WAIT" => {
            ChatError::FloodWait(Duration::from_secs(r.value.unwrap_or(0).into()))
        }
        InvocationError::Rpc(r) if r.code == 401 => ChatError::Unauthorized(r.name),
        other => ChatError::Io(other.to_string()),
    }
}

/// Connection settings: FLOOD_WAITs up to `flood_max` are slept through
/// by grammers (then the error surfaces and is reported), I/O errors are
/// retried as a 1 s flood, an optional SOCKS5 proxy.
fn connect(
    session: Arc<MemSession>,
    api_id: i32,
    proxy: Option<&str>,
    flood_max: Duration,
) -> (
    Client,
    SenderPoolFatHandle,
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<grammers_session::updates::UpdatesLike>,
) {
    let params = ConnectionParams {
        proxy_url: proxy.map(str::to_string),
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
    (client, handle, tokio::spawn(runner.run()), updates)
}

pub struct GrammersChat {
    client: Client,
    handle: SenderPoolFatHandle,
    session: Arc<MemSession>,
    runner: tokio::task::JoinHandle<()>,
    reader: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    me: i64,
    /// Chats seen in updates, to reply to them.
    peers: Arc<Mutex<HashMap<i64, PeerRef>>>,
}

impl GrammersChat {
    pub async fn start(
        api_id: i32,
        session: &[u8],
        proxy: Option<&str>,
        flood_max: Duration,
    ) -> Result<(GrammersChat, mpsc::Receiver<Incoming>), ChatError> {
        let session = Arc::new(MemSession::load(session)?);
        let (client, handle, runner, updates) = connect(session.clone(), api_id, proxy, flood_max);
        let fail = |e: ChatError, handle: &SenderPoolFatHandle| {
            handle.thin.quit();
            e
        };
        if !client
            .is_authorized()
            .await
            .map_err(rpc)
            .map_err(|e| fail(e, &handle))?
        {
            return Err(fail(
                ChatError::Unauthorized("the stored session is not logged in".into()),
                &handle,
            ));
        }
        let me = client
            .get_me()
            .await
            .map_err(rpc)
            .map_err(|e| fail(e, &handle))?;
        let me = me.id().bare_id_unchecked();
        let mut stream = client
            .stream_updates(updates, UpdatesConfiguration { catch_up: true })
            .await
            .map_err(|e| fail(ChatError::Io(e.to_string()), &handle))?;
        let (tx, rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let peers: Arc<Mutex<HashMap<i64, PeerRef>>> = Arc::default();
        let reader = tokio::spawn({
            let stop = stop.clone();
            let peers = peers.clone();
            async move {
                loop {
                    let update = tokio::select! {
                        _ = stop.cancelled() => break,
                        u = stream.next() => u,
                    };
                    let message = match update {
                        Ok(Update::NewMessage(m)) => m,
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "telegram: update stream failed");
                            break;
                        }
                    };
                    let chat = message.peer_id();
                    if let Ok(Some(r)) = message.peer_ref().await {
                        peers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(chat.bare_id_unchecked(), r);
                    }
                    let msg = Incoming {
                        id: message.id(),
                        chat: chat.bare_id_unchecked(),
                        sender: message.sender_id().map(|s| s.bare_id_unchecked()),
                        private: chat.kind() == PeerKind::User,
                        outgoing: message.outgoing(),
                        text: Zeroizing::new(message.text().to_string()),
                    };
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
                // Stop intake, then persist where we are.
                if let Err(e) = stream.sync_update_state().await {
                    tracing::warn!(error = %e, "telegram: cannot sync update state");
                }
            }
        });
        Ok((
            GrammersChat {
                client,
                handle,
                session,
                runner,
                reader: Some(reader),
                stop,
                me,
                peers,
            },
            rx,
        ))
    }

    pub fn me(&self) -> i64 {
        self.me
    }

    /// Stops the client from any task, at once (fencing): intake stops and
    /// the sender pool closes every connection, so no further request
    /// reaches Telegram with this session.
    pub fn kill_switch(&self) -> impl FnOnce() + Send + 'static {
        let handle = self.handle.clone();
        let stop = self.stop.clone();
        move || {
            stop.cancel();
            handle.thin.quit();
        }
    }

    fn peer(&self, chat: i64) -> Result<PeerRef, ChatError> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&chat)
            .copied()
            .ok_or_else(|| ChatError::Io(format!("chat {chat} not seen in this session")))
    }

    /// One message; `monospace` puts the whole text in a `pre` entity.
    pub async fn send(
        &self,
        chat: i64,
        reply_to: i32,
        text: &str,
        monospace: bool,
    ) -> Result<i32, ChatError> {
        let mut m = InputMessage::new().text(text).reply_to(Some(reply_to));
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
            .send_message(self.peer(chat)?, m)
            .await
            .map_err(rpc)?;
        Ok(sent.id())
    }

    /// Deletes for everyone. Private-chat message ids need no peer.
    pub async fn delete(&self, _chat: i64, ids: &[i32]) -> Result<(), ChatError> {
        self.client
            .invoke(&tl::functions::messages::DeleteMessages {
                revoke: true,
                id: ids.to_vec(),
            })
            .await
            .map_err(rpc)?;
        Ok(())
    }

    pub async fn stop_intake(&mut self) {
        self.stop.cancel();
        if let Some(r) = self.reader.take() {
            let _ = r.await;
        }
    }

    pub fn export_session(&self) -> Zeroizing<Vec<u8>> {
        self.session.export()
    }

    /// Closes every connection and waits for the sender pool to finish.
    pub async fn quit(mut self, _clean: bool) {
        self.stop_intake().await;
        self.handle.thin.quit();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.runner).await;
        self.runner.abort();
    }
}

/// Interactive login: phone, code, 2FA password (hint shown). Returns the
/// session and a closure-free way to sign it out if storing it fails.
pub struct LoggedIn {
    client: Client,
    handle: SenderPoolFatHandle,
    runner: tokio::task::JoinHandle<()>,
    session: Arc<MemSession>,
}

impl LoggedIn {
    pub fn export_session(&self) -> Zeroizing<Vec<u8>> {
        self.session.export()
    }

    /// Ends the new authorization (used when it could not be stored).
    pub async fn sign_out(self) -> Result<(), ChatError> {
        let r = self.client.sign_out().await.map(|_| ()).map_err(rpc);
        self.close().await;
        r
    }

    pub async fn close(self) {
        self.handle.thin.quit();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.runner).await;
    }
}

pub async fn login(
    api_id: i32,
    api_hash: &SecretString,
    proxy: Option<&str>,
    prompt: &mut dyn LoginPrompt,
) -> Result<LoggedIn, ChatError> {
    let session = Arc::new(MemSession::fresh());
    let (client, handle, runner, _updates) =
        connect(session.clone(), api_id, proxy, Duration::from_secs(60));
    let done = LoggedIn {
        client: client.clone(),
        handle,
        runner,
        session,
    };
    let result = async {
        let phone = prompt.phone()?;
        let token = client
            .request_login_code(&phone, api_hash.expose_secret())
            .await
            .map_err(rpc)?;
        let code = prompt.code()?;
        match client.sign_in(&token, code.expose_secret()).await {
            Ok(_) => Ok(()),
            Err(SignInError::PasswordRequired(pw)) => {
                let password = prompt.password(pw.hint())?;
                client
                    .check_password(pw, password.expose_secret().as_bytes())
                    .await
                    .map(|_| ())
                    .map_err(|e| ChatError::Unauthorized(sign_in_error(&e)))
            }
            Err(e) => Err(ChatError::Unauthorized(sign_in_error(&e))),
        }
    }
    .await;
    match result {
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
