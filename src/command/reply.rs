//! Replies as the Vault CLI prints them, shared by every command group:
//! tables, durations, wrapped secrets, headed and empty listings. Buffers
//! that hold a value are sized once and zeroed when dropped.

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::context::{CommandError, Reply};
use crate::vault::wrap::Wrapped;
use crate::vault::VaultError;

/// The reply for a wrapped secret, as `vault … -wrap-ttl` prints it. It is
/// still a secret reply (the token is a bearer credential for the value);
/// `data` gets the TTL, accessor and creation path, never the token.
pub fn wrapped_reply(w: &Wrapped, data: Value) -> Reply {
    let token = w.token.expose_secret();
    let ttl = fmt_duration(w.ttl_secs);
    let rows = [
        ("wrapping_token: ", token),
        ("wrapping_token_ttl: ", ttl.as_str()),
        ("wrapping_token_creation_time: ", w.creation_time.as_str()),
        ("wrapping_token_creation_path: ", w.creation_path.as_str()),
        ("wrapping_accessor: ", w.accessor.as_str()),
        ("unwrap with: vault unwrap ", token),
    ];
    let len: usize = rows.iter().map(|(k, v)| k.len() + v.len() + 1).sum();
    let mut text = String::with_capacity(len);
    for (i, (k, v)) in rows.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(k);
        text.push_str(v);
    }
    let mut data = match data {
        Value::Object(m) => Value::Object(m),
        _ => json!({}),
    };
    data["wrapped"] = json!(true);
    data["wrapping_token_ttl"] = json!(w.ttl_secs);
    data["wrapping_token_creation_path"] = json!(w.creation_path);
    data["wrapping_accessor"] = json!(w.accessor);
    Reply::secret(text).with_data(data)
}

/// A two-column table as the Vault CLI prints it:
///
/// ```text
/// Key         Value
/// ---         -----
/// api_hash    …
/// ```
///
/// Built into one buffer of the exact size (no reallocation leaves a copy
/// of a value behind) that is zeroed when dropped.
pub fn table(rows: &[(&str, &str)]) -> Zeroizing<String> {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(3)
        + 4;
    let pad = |k: &str| width - k.chars().count().min(width);
    let header = [("Key", "Value"), ("---", "-----")];
    let all = header.iter().chain(rows.iter());
    // Every line ends with '\n' but the last (the header is always there).
    let len: usize = all
        .clone()
        .map(|(k, v)| k.len() + pad(k) + v.len() + 1)
        .sum::<usize>()
        - 1;
    let mut out = Zeroizing::new(String::with_capacity(len));
    for (i, (k, v)) in all.enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(k);
        out.extend(std::iter::repeat_n(' ', pad(k)));
        out.push_str(v);
    }
    out
}

/// Moves the text out of a zeroizing buffer (no copy) into a [`Reply`],
/// which zeroes it in turn.
pub fn take(mut text: Zeroizing<String>) -> String {
    std::mem::take(&mut *text)
}

/// Concatenates parts into one exactly-sized buffer (see [`table`]).
pub fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// A duration as Go (and so the Vault CLI) prints it: `45s`, `4m59s`, `1h0m0s`.
pub fn fmt_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A `kv list` that found nothing is an empty list.
pub fn list_or_empty(r: Result<Vec<String>, VaultError>) -> Result<Vec<String>, CommandError> {
    match r {
        Ok(keys) => Ok(keys),
        Err(VaultError::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// A (wrapped) reply with a first line saying what it is.
pub fn headed(headline: &str, mut r: Reply) -> Reply {
    let data = std::mem::take(&mut r.data);
    let text = format!("{headline}\n{}", r.as_str());
    if r.secret {
        Reply::secret(text).with_data(data)
    } else {
        Reply::text(text).with_data(data)
    }
}

/// A gated command checked and resolved before it waits: the canonical
/// line `/approve` runs, and what it will concretely do to what exists
/// now (versions and their creation times, the record's version, the key's
/// version). The approver reads `effect`; `/approve` resolves it again and
/// refuses when it changed, so what was approved is what runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub line: String,
    pub effect: String,
}

/// The KV metadata of the record at `path` (read as the operator);
/// `missing()` when there is none.
pub async fn record_meta(
    ctx: &crate::context::Ctx<'_>,
    path: &crate::vault::kv::KvPath,
    missing: impl FnOnce() -> CommandError,
) -> Result<crate::vault::kv::KvMetadata, CommandError> {
    ctx.vault()
        .await?
        .kv_metadata_get(path)
        .await
        .map_err(|e| match e {
            VaultError::NotFound(_) => missing(),
            other => other.into(),
        })
}

/// "record version 3, created 2026-…": a KV record's current state.
pub fn record_state(meta: &crate::vault::kv::KvMetadata) -> String {
    let created = meta
        .versions
        .get(&meta.current_version)
        .map(|v| v.created_time.as_str())
        .unwrap_or("?");
    format!("record version {}, created {created}", meta.current_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::wrap::Wrapped;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(fmt_duration(0), "0s");
        assert_eq!(fmt_duration(45), "45s");
        assert_eq!(fmt_duration(299), "4m59s");
        assert_eq!(fmt_duration(3600), "1h0m0s");
        assert_eq!(fmt_duration(86399), "23h59m59s");
    }

    #[test]
    fn tables_align_like_the_vault_cli() {
        let t = table(&[("api_hash", "abc"), ("id", "1")]);
        assert_eq!(
            t.as_str(),
            "Key         Value\n---         -----\napi_hash    abc\nid          1"
        );
        assert_eq!(t.len(), t.capacity(), "exactly sized");
        assert_eq!(table(&[]).as_str(), "Key    Value\n---    -----");
        let u = table(&[("ü", "x")]);
        assert_eq!(u.as_str(), "Key    Value\n---    -----\nü      x");
    }

    #[test]
    fn wrapped_reply_is_secret_and_data_has_no_token() {
        let w = Wrapped {
            token: secrecy::SecretString::from("hvs.TESTTOKEN"),
            accessor: "acc".into(),
            ttl_secs: 300,
            creation_time: "2026-01-01T00:00:00Z".into(),
            creation_path: "secret/data/x".into(),
        };
        let r = wrapped_reply(&w, json!({"path": "secret/x"}));
        assert!(r.secret);
        assert!(r.as_str().starts_with("wrapping_token: hvs.TESTTOKEN\n"));
        assert!(r.as_str().contains("\nwrapping_token_ttl: 5m0s\n"));
        assert!(r
            .as_str()
            .ends_with("\nunwrap with: vault unwrap hvs.TESTTOKEN"));
        assert!(!r.data.to_string().contains("TESTTOKEN"));
        assert_eq!(r.data["path"], "secret/x");
        assert_eq!(r.data["wrapping_token_ttl"], 300);
        assert!(!format!("{r:?}").contains("TESTTOKEN"));
    }
}
