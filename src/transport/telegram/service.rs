//! The election loop (campaign, serve while leading, resign) and
//! `vaultgram login`. One leadership term's work is in `term.rs`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::chat::{ChatError, LoginPrompt};
use super::client::app_keys;
#[cfg(feature = "telegram-standin")]
use super::file;
use super::grammers;
use super::session::{SessionStore, StoredSession};
use super::term::Term;
use crate::config::TelegramBackend;
use crate::dispatch::App;
use crate::etcd::SharedLease;
use crate::leader::Elector;
use crate::vault::auth::Backoff;

/// `vaultgram login`: signs in (grammers: phone, code, 2FA; the file
/// stand-in: nothing to ask) and stores the session in Vault. If storing
/// fails the new authorization is signed out, so no live session is left
/// that nobody holds.
pub async fn login(app: &App, prompt: &mut dyn LoginPrompt) -> Result<u64, ChatError> {
    use crate::records::session::{Meta, WRITTEN_BY_LOGIN};
    let store = SessionStore::new(&app.cfg)?;
    let node = crate::leader::node_id().map_err(|e| ChatError::Session(e.to_string()))?;
    let vault = app.broker.current();
    // The authorization this login replaces: ended once the new one is
    // stored, so that no older version of the record holds a live session.
    let previous = store.meta(&vault, None).await?.and_then(|m| m.auth);
    match app.cfg.telegram.backend {
        #[cfg(not(feature = "telegram-standin"))]
        TelegramBackend::File => Err(ChatError::Session(super::client::NO_STANDIN.into())),
        #[cfg(feature = "telegram-standin")]
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
            .set_telegram(|s| s.down_since = Some(crate::clock::unix_secs()));
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
