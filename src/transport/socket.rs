//! The Unix-socket transport: `vaultgram run` listens, `vaultgram ctl`
//! sends one command and prints the reply.
//!
//! Who is calling is not taken from the request: the kernel tells us the
//! peer's uid (`SO_PEERCRED`), which maps to an operator through
//! `unix_user`. Unknown uids get a `denied` reply and an audit record. The
//! socket is created with mode 0660 (group members may connect; the uid
//! check decides what they may do).
//!
//! Protocol: one command per line in, one JSON reply per line out (the
//! `console --json` format), as many as the client sends. A line that is
//! not UTF-8 or longer than the lexer's bound gets an `invalid` reply and
//! the connection goes on (framing: [`super::framing`]); a client that
//! completes no line for `ipc.idle_timeout_secs` is disconnected; at most
//! `ipc.max_connections` are served at once (the next one gets an
//! `unavailable` reply).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::console::render_json;
use super::framing::{Frame, Framer};
use crate::command::lexer::MAX_LINE_BYTES;
use crate::context::CommandError;
use crate::dispatch::App;
use crate::transport_kind::Transport;

/// Failures of the socket transport.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {0} is in use by a running vaultgram")]
    InUse(PathBuf),
    #[error("no reply from {0}")]
    NoReply(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The login name of `uid`, from /etc/passwd.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Binds the socket: refuses to steal it from a live broker, removes a
/// stale file, creates it with mode 0660.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(path))?;
    }
    // umask for the bind itself, so the socket never exists with wider
    // permissions (restored right after; start-up is single-threaded here).
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    bound.map_err(io_err(path))
}

/// Serves until `shutdown` is cancelled; then stops accepting, lets the
/// connections in flight finish their current command (up to `grace`), and
/// removes the socket file.
pub async fn serve(
    app: Arc<App>,
    listener: UnixListener,
    path: PathBuf,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    let max = app.cfg.ipc.max_connections as usize;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        // Told, not left hanging; written in the background
                        // so a client that does not read cannot stall us.
                        tracker.spawn(async move {
                            let busy = render_json(&Err(CommandError::unavailable(format!(
                                "the broker serves {max} socket connections at once; try again"
                            ))));
                            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                let _ = stream.write_all(format!("{busy}\n").as_bytes()).await;
                            })
                            .await;
                        });
                        continue;
                    };
                    let app = app.clone();
                    let stop = shutdown.clone();
                    tracker.spawn(async move {
                        if let Err(e) = handle(app, stream, stop).await {
                            warn!(error = %e, "socket connection ended with an error");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("socket connections still busy after the grace period; leaving them");
    }
    info!("socket server stopped");
}

async fn handle(app: Arc<App>, stream: UnixStream, stop: CancellationToken) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let uid = cred.uid();
    let user = user_name(uid);
    let op = user
        .as_deref()
        .and_then(|u| app.cfg.operator_by_unix_user(u).cloned());
    let idle = Duration::from_secs(app.cfg.ipc.idle_timeout_secs);
    let (mut read, mut write) = stream.into_split();
    // Bounded per line (too long: refused, never buffered), not per
    // connection: a client may send any number of commands.
    let mut framer = Framer::new(MAX_LINE_BYTES);
    let mut frames = VecDeque::new();
    let mut chunk = Zeroizing::new(vec![0u8; 8 * 1024]);
    // An idle client is let go: one that completes no line for `idle`.
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let read_started = std::time::Instant::now();
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout_at(deadline, read.read(&mut chunk[..])) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
        };
        if n == 0 {
            frames.extend(framer.finish());
        } else {
            framer.push(&chunk[..n], &mut frames);
        }
        if !frames.is_empty() {
            crate::metrics::observe_stage("socket_read", read_started);
        }
        while let Some(frame) = frames.pop_front() {
            // Between commands a shutdown closes the connection; a command
            // that has started is finished first.
            if stop.is_cancelled() {
                return Ok(());
            }
            deadline = tokio::time::Instant::now() + idle;
            let started = std::time::Instant::now();
            let mut reply = match frame {
                Frame::NotUtf8 => render_json(&Err(CommandError::invalid(
                    "the line is not UTF-8; nothing was run",
                ))),
                Frame::TooLong(bytes) => render_json(&Err(CommandError::invalid(format!(
                    "the line is {bytes} bytes long, more than {MAX_LINE_BYTES}; nothing was run"
                )))),
                Frame::Line(line) => {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    dispatch_line(&app, op.as_ref(), uid, user.as_deref(), line).await
                }
            };
            // One write per reply: the line and its newline together.
            reply.push('\n');
            write.write_all(reply.as_bytes()).await?;
            crate::metrics::observe_stage("total", started);
        }
        if n == 0 {
            return Ok(());
        }
    }
}

async fn dispatch_line(
    app: &App,
    op: Option<&crate::config::Operator>,
    uid: u32,
    user: Option<&str>,
    line: &str,
) -> String {
    let sender = format!("uid:{uid}");
    let result = app.dispatch(op, &sender, Transport::Socket, line).await;
    let started = std::time::Instant::now();
    let json = match result {
        Some(r) => render_json(&r),
        None => render_json(&Err(CommandError::denied(format!(
            "uid {uid} is not an operator (no [[operators]] entry has unix_user = {:?})",
            user.unwrap_or("?")
        )))),
    };
    crate::metrics::observe_stage("reply", started);
    json
}

/// Words from a shell command line back into one chat line: words with
/// spaces or quotes are quoted again, so `ctl /kv put p "a=b c"` means what
/// it says.
pub fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| crate::command::args::quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `vaultgram ctl`: sends one line, returns the JSON reply line.
pub async fn request(path: &Path, line: &str) -> Result<String, SocketError> {
    let stream = UnixStream::connect(path).await.map_err(io_err(path))?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(line.as_bytes())
        .await
        .map_err(io_err(path))?;
    write.write_all(b"\n").await.map_err(io_err(path))?;
    write.shutdown().await.map_err(io_err(path))?;
    let mut lines = BufReader::new(read).lines();
    lines
        .next_line()
        .await
        .map_err(io_err(path))?
        .ok_or_else(|| SocketError::NoReply(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_words_round_trips_through_the_lexer() {
        let words: Vec<String> = ["/kv", "put", "secret/x", "a=b c", "q=\"x\"", "e=", r"b=\"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let line = join_words(&words);
        assert_eq!(crate::command::lexer::split(&line).unwrap(), words);
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
