//! The running service: who leads, what it reported, its `/readyz`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::report::{rfc3339, Check, Status, ETCD_TIMEOUT, HTTP_TIMEOUT};
use crate::config::Config;
use crate::etcd::Etcd;
use crate::leader::{election_key, LeaderRecord};

// ---- leadership and the running service ----------------------------------

pub(super) async fn leadership_check(cfg: &Config, etcd: Option<&Etcd>) -> Check {
    let Some(etcd) = etcd else {
        return Check::skipped("leadership", "no etcd connection");
    };
    let key = election_key(&cfg.etcd);
    match tokio::time::timeout(ETCD_TIMEOUT, etcd.get(&key)).await {
        Ok(Ok(Some(v))) => {
            let r = LeaderRecord::parse(&v);
            let since = if r.since > 0 {
                format!(" since {}", rfc3339(r.since as i64))
            } else {
                String::new()
            };
            Check::ok("leadership", format!("{}{since}", r.node))
                .data(json!({"node": r.node, "since": r.since}))
        }
        Ok(Ok(None)) if cfg.telegram.enabled => Check::warn(
            "leadership",
            format!("no leader ({key} absent): no `vaultgram run` holds the election"),
        ),
        Ok(Ok(None)) => Check::ok("leadership", "no leader (telegram disabled)"),
        Ok(Err(e)) => Check::warn("leadership", format!("{key}: {e}")),
        Err(_) => Check::warn("leadership", format!("{key}: timed out")),
    }
}

/// Operators the Telegram leader cannot address (no access hash: they
/// never wrote to the account, and no dialog names them): approval
/// requests and alerts do not reach them until they write once.
pub(super) async fn reachability_check(cfg: &Config, etcd: Option<&Etcd>) -> Check {
    const NAME: &str = "telegram reachability";
    if !cfg.telegram.enabled {
        return Check::ok(NAME, "telegram disabled");
    }
    let Some(etcd) = etcd else {
        return Check::skipped(NAME, "no etcd connection");
    };
    let prefix = crate::notify::unreachable_key(&cfg.etcd.prefix, "");
    match tokio::time::timeout(ETCD_TIMEOUT, etcd.list_prefix(&prefix, 0, false)).await {
        Ok(Ok(entries)) => {
            let names: Vec<String> = entries
                .iter()
                .filter_map(|e| e.key.strip_prefix(&prefix).map(str::to_string))
                .collect();
            let data = json!({ "unreachable": names });
            if names.is_empty() {
                Check::ok(NAME, "every operator can be told of requests and alerts").data(data)
            } else {
                Check::warn(
                    NAME,
                    format!(
                        "not reachable in Telegram (never wrote to the userbot): {}; each should send it one message, e.g. /whoami",
                        names.join(", ")
                    ),
                )
                .data(data)
            }
        }
        Ok(Err(e)) => Check::warn(NAME, format!("{prefix}: {e}")),
        Err(_) => Check::warn(NAME, format!("{prefix}: timed out")),
    }
}

/// The userbot account's active authorizations, as the Telegram leader
/// last read them (`account.getAuthorizations`; doctor never uses the
/// session itself: a second user of one key gets it revoked). More than
/// the broker's own is worth a look: a stolen login shows up here.
pub(super) async fn authorizations_check(cfg: &Config, etcd: Option<&Etcd>) -> Check {
    const NAME: &str = "telegram authorizations";
    if !cfg.telegram.enabled {
        return Check::ok(NAME, "telegram disabled");
    }
    let Some(etcd) = etcd else {
        return Check::skipped(NAME, "no etcd connection");
    };
    let key = format!("{}tg/authorizations", cfg.etcd.prefix);
    let v: Value = match tokio::time::timeout(ETCD_TIMEOUT, etcd.get(&key)).await {
        Ok(Ok(Some(v))) => serde_json::from_slice(&v).unwrap_or(Value::Null),
        Ok(Ok(None)) => {
            return Check::warn(
                NAME,
                "not read yet (no Telegram leader has started a client)",
            )
        }
        Ok(Err(e)) => return Check::warn(NAME, format!("{key}: {e}")),
        Err(_) => return Check::warn(NAME, format!("{key}: timed out")),
    };
    let all = v["authorizations"].as_array().cloned().unwrap_or_default();
    let fetched = v["fetched_at"].as_i64().unwrap_or(0);
    let list = all
        .iter()
        .map(|a| {
            format!(
                "{} ({}){}, active {}",
                a["device"].as_str().unwrap_or("?"),
                a["app"].as_str().unwrap_or("?"),
                if a["current"] == true {
                    " [the broker]"
                } else {
                    ""
                },
                rfc3339(a["active"].as_i64().unwrap_or(0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let detail = format!("{} active (read {}): {list}", all.len(), rfc3339(fetched));
    let data = json!({"authorizations": all, "fetched_at": fetched});
    if all.len() > 1 {
        Check::warn(
            NAME,
            format!("{detail} — more than the broker's own: end those you do not know in Telegram → Settings → Devices"),
        )
        .data(data)
    } else {
        Check::ok(NAME, detail).data(data)
    }
}

pub(super) async fn telegram_check(cfg: &Config) -> Check {
    if !cfg.telegram.enabled {
        return Check::ok("telegram", "disabled in config");
    }
    let listen = &cfg.http.listen;
    let addr: std::net::SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            return Check::warn(
                "telegram",
                format!("http.listen `{listen}` is not an address"),
            )
        }
    };
    if addr.port() == 0 {
        return Check::warn(
            "telegram",
            "http.listen has port 0: the running service has no fixed address to ask",
        );
    }
    // A wildcard listen address is reached on loopback.
    let target = if addr.ip().is_unspecified() {
        let lo: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        std::net::SocketAddr::new(lo, addr.port())
    } else {
        addr
    };
    let (code, body) = match http_get(target, "/readyz").await {
        Ok(r) => r,
        Err(e) => {
            return Check::warn(
                "telegram",
                format!("vaultgram run not reachable at {target}: {e}"),
            )
        }
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    readyz_verdict(&format!("/readyz at {target}"), code, &v)
}

/// Reads `run`'s `/readyz` answer. Only the leader runs the Telegram
/// client, so a follower that is not connected is fine.
pub(super) fn readyz_verdict(what: &str, code: u16, v: &Value) -> Check {
    let connected = v.pointer("/telegram/connected").and_then(Value::as_bool);
    let last_update = v.pointer("/telegram/last_update").and_then(Value::as_u64);
    let leading = v.get("leading").and_then(Value::as_bool);
    let problem = v.pointer("/telegram/problem").and_then(Value::as_str);
    let failed: Vec<&str> = v
        .get("failed")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let data = json!({
        "http_status": code,
        "leading": leading,
        "connected": connected,
        "last_update": last_update,
        "failed": failed,
    });
    let mut detail = format!("{what}: HTTP {code}");
    if let Some(l) = leading {
        detail.push_str(if l { ", leading" } else { ", follower" });
    }
    if let Some(c) = connected {
        let _ = write!(detail, ", connected {c}");
    }
    if let Some(u) = last_update {
        let _ = write!(detail, ", last update {}", rfc3339(u as i64));
    }
    if let Some(p) = problem {
        let _ = write!(detail, ", problem: {p}");
    }
    if !failed.is_empty() {
        let _ = write!(detail, ", not ready: {}", failed.join(", "));
    }
    let leader_down = leading == Some(true) && connected == Some(false);
    // A server without /readyz (404) or without JSON is an older `run`.
    let status = if code == 200 && !leader_down && v.is_object() {
        Status::Ok
    } else {
        Status::Warn
    };
    Check::new("telegram", status, detail).data(data)
}

/// A bare HTTP/1.0 GET (the server closes after the answer): status code
/// and body.
pub(super) async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(u16, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        // Bounded: a misbehaving listener must not fill memory.
        s.take(1 << 20)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP status")?;
    Ok((code, buf[split + 4..].to_vec()))
}
