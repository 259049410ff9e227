//! The userbot's Telegram session record at `telegram.session_path`:
//! `session` (the client's exported bytes, transit ciphertext — KV never
//! sees them in clear), `format` (what wrote them: `grammers-0.11`, or
//! `file-v1` for the test stand-in), `saved_by` (the node), `saved_at`,
//! `written_by` (`login` or `runner`) and `auth` (the authorization's hash,
//! so that the next login can end this one).
//! The store that encrypts, reads and writes it is
//! `transport/telegram/session.rs`.

use secrecy::{ExposeSecret, SecretString};

use super::common::RecordError;
use crate::vault::kv::KvData;

/// The default of `telegram.session_path`, below the KV mount (the
/// config owns its defaults; this is the same constant).
pub const DEFAULT_PATH: &str = crate::config::DEFAULT_SESSION_PATH;

/// Who wrote a version of the record.
pub const WRITTEN_BY_LOGIN: &str = "login";
pub const WRITTEN_BY_RUNNER: &str = "runner";

/// What a record says about itself, besides the ciphertext (no secret:
/// `auth` is the hash Telegram names the authorization by — with it an
/// account can end the session, never use it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// `login` (a new authorization) or `runner` (a leader's save); empty
    /// in records of older brokers.
    pub written_by: String,
    pub saved_at: String,
    /// The authorization's hash (`account.getAuthorizations`), when known.
    pub auth: Option<String>,
}

/// The record holding `ciphertext`, written by `node` now, as `meta`
/// says (its `saved_at` is now).
pub fn record(ciphertext: String, format: &str, node: &str, meta: &Meta) -> KvData {
    let mut data = KvData::new();
    data.insert("session".to_string(), SecretString::from(ciphertext));
    data.insert("format".to_string(), SecretString::from(format.to_string()));
    data.insert("saved_by".to_string(), SecretString::from(node.to_string()));
    data.insert(
        "saved_at".to_string(),
        SecretString::from(crate::clock::now_rfc3339_millis()),
    );
    data.insert(
        "written_by".to_string(),
        SecretString::from(meta.written_by.clone()),
    );
    if let Some(a) = &meta.auth {
        data.insert("auth".to_string(), SecretString::from(a.clone()));
    }
    data
}

/// The plain fields of a record.
pub fn meta(data: &KvData) -> Meta {
    let field = |k: &str| data.get(k).map(|v| v.expose_secret().to_string());
    Meta {
        written_by: field("written_by").unwrap_or_default(),
        saved_at: field("saved_at").unwrap_or_default(),
        auth: field("auth").filter(|a| !a.is_empty()),
    }
}

/// The ciphertext and the format of a stored record (an old record
/// without `format` has an empty one).
pub fn parse(data: &KvData) -> Result<(&str, String), RecordError> {
    let ciphertext = data
        .get("session")
        .ok_or_else(|| RecordError::Invalid("no `session` field".into()))?;
    let format = data
        .get("format")
        .map(|f| f.expose_secret().to_string())
        .unwrap_or_default();
    Ok((ciphertext.expose_secret(), format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let m = Meta {
            written_by: WRITTEN_BY_LOGIN.into(),
            saved_at: String::new(),
            auth: Some("-42".into()),
        };
        let rec = record("vault:v1:abc".into(), "file-v1", "node-0", &m);
        let (ciphertext, format) = parse(&rec).unwrap();
        assert_eq!((ciphertext, format.as_str()), ("vault:v1:abc", "file-v1"));
        let back = meta(&rec);
        assert_eq!(
            (back.written_by.as_str(), back.auth.as_deref()),
            ("login", Some("-42"))
        );
        assert!(back.saved_at.ends_with('Z'));
        assert!(parse(&KvData::new()).is_err());
    }
}
