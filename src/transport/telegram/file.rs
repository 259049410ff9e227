//! TEST-ONLY stand-in for the grammers client (`telegram.backend =
//! "file"`): updates come from `inbox.jsonl` in `telegram.file_dir`, sent
//! messages and deletions go to `outbox.jsonl`. It replaces exactly what
//! `grammers.rs` does (connect, deliver updates, send, delete, export the
//! session) so that election, fencing, exactly-once claims, deletions and
//! the session store run for real in tests.
//!
//! Its session is `{"file_backend":1,"offset":N,"me":ID}`: `offset` is the
//! number of inbox lines delivered, i.e. the update state. A new leader
//! resumes from the last *saved* offset, so lines after it are delivered
//! again -- exactly what Telegram does after a failover.
//!
//! Inbox line: `{"id":42,"chat":111111,"sender":111111,"text":"/whoami"}`,
//! optional `"private":false`, `"outgoing":true`; or `{"control":
//! "disconnect"}`, which drops the connection once per process (the runner
//! must reconnect from the stored session). Outbox lines:
//! `{"op":"start"|"send"|"delete"|"stop","pid":…,…}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::route::Incoming;
use super::ChatError;

pub const FORMAT: &str = "file-v1";
/// This account's own user id in the stand-in (Saved Messages).
pub const DEFAULT_ME: i64 = 100;

#[derive(Serialize, Deserialize)]
struct State {
    file_backend: u32,
    offset: usize,
    me: i64,
}

/// A fresh session, as `vaultgram login` stores it for this backend.
pub fn new_session() -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        serde_json::to_vec(&State {
            file_backend: 1,
            offset: 0,
            me: DEFAULT_ME,
        })
        .unwrap_or_default(),
    )
}

/// Inbox lines up to this one had their `disconnect` acted on already
/// (this process): a reconnect that resumes before the line must not drop
/// the connection again.
static DISCONNECTED_AT: AtomicUsize = AtomicUsize::new(0);

#[derive(Deserialize)]
struct Control {
    control: String,
}

#[derive(Deserialize)]
struct InboxLine {
    id: i32,
    chat: i64,
    sender: Option<i64>,
    text: String,
    #[serde(default = "yes")]
    private: bool,
    #[serde(default)]
    outgoing: bool,
}

fn yes() -> bool {
    true
}

pub struct FileChat {
    dir: PathBuf,
    /// Set by the kill switch: nothing is sent or deleted any more.
    dead: Arc<std::sync::atomic::AtomicBool>,
    me: i64,
    offset: Arc<AtomicUsize>,
    stop: CancellationToken,
    reader: Option<tokio::task::JoinHandle<()>>,
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

impl FileChat {
    pub async fn start(
        dir: &Path,
        session: &[u8],
    ) -> Result<(FileChat, mpsc::Receiver<Incoming>), ChatError> {
        let state: State = serde_json::from_slice(session)
            .map_err(|_| ChatError::Session("not a file-backend session".into()))?;
        let offset = Arc::new(AtomicUsize::new(state.offset));
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(1);
        append(
            dir,
            "outbox.jsonl",
            serde_json::json!({"op": "start", "pid": std::process::id(), "offset": state.offset}),
        )?;
        let reader = tokio::spawn(read_inbox(
            dir.join("inbox.jsonl"),
            offset.clone(),
            tx,
            stop.clone(),
        ));
        Ok((
            FileChat {
                dir: dir.to_path_buf(),
                dead: Arc::default(),
                me: state.me,
                offset,
                stop,
                reader: Some(reader),
            },
            rx,
        ))
    }

    pub fn me(&self) -> i64 {
        self.me
    }

    /// Stops the client from any task, at once (fencing).
    pub fn kill_switch(&self) -> impl FnOnce() + Send + 'static {
        let dead = self.dead.clone();
        let stop = self.stop.clone();
        move || {
            dead.store(true, Ordering::SeqCst);
            stop.cancel();
        }
    }

    fn alive(&self) -> Result<(), ChatError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(ChatError::Io("client stopped".into()));
        }
        Ok(())
    }

    pub async fn send(
        &self,
        chat: i64,
        reply_to: i32,
        text: &str,
        monospace: bool,
    ) -> Result<i32, ChatError> {
        self.alive()?;
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        let id = (u32::from_le_bytes(b) % 1_000_000_000) as i32 + 1_000_000_000;
        append(
            &self.dir,
            "outbox.jsonl",
            serde_json::json!({
                "op": "send", "pid": std::process::id(), "chat": chat, "id": id,
                "reply_to": reply_to, "text": text, "monospace": monospace,
            }),
        )?;
        if chat == self.me {
            // Telegram echoes what we send into Saved Messages as an
            // outgoing update; so does the stand-in.
            append(
                &self.dir,
                "inbox.jsonl",
                serde_json::json!({
                    "id": id, "chat": chat, "sender": chat, "text": text, "outgoing": true,
                }),
            )?;
        }
        Ok(id)
    }

    pub async fn delete(&self, chat: i64, ids: &[i32]) -> Result<(), ChatError> {
        self.alive()?;
        append(
            &self.dir,
            "outbox.jsonl",
            serde_json::json!({"op": "delete", "pid": std::process::id(), "chat": chat, "ids": ids}),
        )
    }

    /// Stops delivering updates (intake), keeping the client usable.
    pub async fn stop_intake(&mut self) {
        self.stop.cancel();
        if let Some(r) = self.reader.take() {
            let _ = r.await;
        }
    }

    pub fn export_session(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(
            serde_json::to_vec(&State {
                file_backend: 1,
                offset: self.offset.load(Ordering::SeqCst),
                me: self.me,
            })
            .unwrap_or_default(),
        )
    }

    pub async fn quit(mut self, clean: bool) {
        self.stop_intake().await;
        if clean {
            let _ = append(
                &self.dir,
                "outbox.jsonl",
                serde_json::json!({"op": "stop", "pid": std::process::id()}),
            );
        }
    }
}

/// Delivers inbox lines after `offset`, polling every 50 ms; the offset
/// advances once the runner has taken the update.
async fn read_inbox(
    path: PathBuf,
    offset: Arc<AtomicUsize>,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
) {
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // Only complete lines: a writer may be mid-line.
        let complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
        let lines: Vec<&str> = complete.lines().collect();
        let mut i = offset.load(Ordering::SeqCst);
        while i < lines.len() {
            let line = lines[i];
            i += 1;
            if let Ok(c) = serde_json::from_str::<Control>(line) {
                offset.store(i, Ordering::SeqCst);
                if c.control == "disconnect" && DISCONNECTED_AT.fetch_max(i, Ordering::SeqCst) < i {
                    tracing::warn!("file backend: connection dropped (test control line)");
                    return;
                }
                continue;
            }
            let Ok(m) = serde_json::from_str::<InboxLine>(line) else {
                tracing::warn!(line = i, "file backend: unreadable inbox line skipped");
                offset.store(i, Ordering::SeqCst);
                continue;
            };
            let msg = Incoming {
                id: m.id,
                chat: m.chat,
                sender: m.sender,
                private: m.private,
                outgoing: m.outgoing,
                text: Zeroizing::new(m.text),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = tx.send(msg) => if r.is_err() { return },
            }
            offset.store(i, Ordering::SeqCst);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
