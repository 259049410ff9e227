//! The userbot's Telegram session record at `telegram.session_path`:
//! `session` (the client's exported bytes, transit ciphertext — KV never
//! sees them in clear), `format` (what wrote them: `grammers-0.11`, or
//! `file-v1` for the test stand-in), `saved_by` (the node) and `saved_at`.
//! The store that encrypts, reads and writes it is
//! `transport/telegram/session.rs`.

use secrecy::{ExposeSecret, SecretString};

use super::RecordError;
use crate::vault::kv::KvData;

/// The default of `telegram.session_path`, below the KV mount.
pub const DEFAULT_PATH: &str = "vaultgram/telegram-session";

/// The record holding `ciphertext`, written by `node` now.
pub fn record(ciphertext: String, format: &str, node: &str) -> KvData {
    let mut data = KvData::new();
    data.insert("session".to_string(), SecretString::from(ciphertext));
    data.insert("format".to_string(), SecretString::from(format.to_string()));
    data.insert("saved_by".to_string(), SecretString::from(node.to_string()));
    data.insert(
        "saved_at".to_string(),
        SecretString::from(super::audit::now_rfc3339()),
    );
    data
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
        let rec = record("vault:v1:abc".into(), "file-v1", "node-0");
        let (ciphertext, format) = parse(&rec).unwrap();
        assert_eq!((ciphertext, format.as_str()), ("vault:v1:abc", "file-v1"));
        assert!(parse(&KvData::new()).is_err());
    }
}
