//! `vaultgram console [--as NAME] [--json]`: one command per stdin line, one
//! reply per command on stdout — the same dispatcher as Telegram.

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::Operator;
use crate::context::CommandResult;
use crate::dispatch::App;
use crate::transport_kind::Transport;

/// Renders one result as `console --json` prints it (SPEC.md):
/// `{"ok":true,"text":…,"secret":…,"data":{…}}` or
/// `{"ok":false,"error":{"kind":…,"message":…}}`.
pub fn render_json(result: &CommandResult) -> String {
    match result {
        Ok(r) => {
            json!({"ok": true, "text": r.as_str(), "secret": r.secret, "data": r.data}).to_string()
        }
        Err(e) => json!({"ok": false, "error": {"kind": e.kind.as_str(), "message": e.message}})
            .to_string(),
    }
}

/// Renders one result for a person.
pub fn render_text(result: &CommandResult) -> String {
    match result {
        Ok(r) => r.as_str().to_string(),
        Err(e) => format!("error ({}): {}", e.kind, e.message),
    }
}

/// Reads stdin to its end; returns the number of commands that failed.
pub async fn run(app: Arc<App>, op: Operator, json: bool) -> std::io::Result<usize> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut failed = 0;
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The operator is known (chosen at start), so there is always a reply.
        let Some(result) = app
            .dispatch(Some(&op), &op.name, Transport::Console, line)
            .await
        else {
            continue;
        };
        if result.is_err() {
            failed += 1;
        }
        let mut text = if json {
            render_json(&result)
        } else {
            render_text(&result)
        };
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    app.audit.flush().await;
    Ok(failed)
}
