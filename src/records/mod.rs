//! The broker's own records in KV v2: what each kind holds and where it
//! lives below the KV mount. The chat commands, the migrations, the
//! approval gate's effect classifier and the Telegram session store all
//! take record formats and paths from here, so that one change of layout
//! is one change in one place.
//!
//! | kind | path (below the KV mount) | written by |
//! | --- | --- | --- |
//! | [`agent`] | `vaultgram/agents/ID` | `/agent`, `import valhalla` |
//! | [`panel`] | `vaultgram/panels/NAME` | `/panel` |
//! | [`panel`] copy | `vaultgram/panels-by-agent/AGENT/NAME` | `/panel` |
//! | [`mtproto`] | `vaultgram/mtproto/OWNER/USER` | `/mtproto`, `import vpnbot` |
//! | [`mtproxy`] | `vaultgram/mtproxy/{placeholder,state}` | `import vpnbot` |
//! | [`session`] | `vaultgram/telegram-session` (default) | `vaultgram login` |
//!
//! And one record outside KV: [`audit`], the audit trail's record in etcd.
//!
//! Depends on nothing above `vault::kv`: `config` uses the session's
//! default path, and the command context converts [`RecordError`].

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::vault::kv::KvData;

pub mod agent;
pub mod audit;
pub mod mtproto;
pub mod mtproxy;
pub mod panel;
pub mod session;

/// The managed areas, each with what writes it. `/kv` may read and list
/// them, never write them: the writers keep each record's invariants (a
/// token and its digest, a panel and its copies, a secret and its
/// fingerprint).
pub const MANAGED: [(&str, &str); 6] = [
    (agent::DIR, "/agent"),
    (panel::DIR, "/panel"),
    (panel::COPIES_DIR, "/panel"),
    (mtproto::DIR, "/mtproto"),
    (mtproxy::DIR, "vaultgram import vpnbot"),
    (session::DEFAULT_PATH, "vaultgram login"),
];

/// A record or a name in it that breaks the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Invalid(String),
    #[error("the OS random number generator failed")]
    Random,
}

/// `N` bytes from the OS.
pub fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, RecordError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(&mut b[..]).map_err(|_| RecordError::Random)?;
    Ok(b)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Hex of SHA-256 of the string's bytes.
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// A field of a KV record, if present.
pub fn field<'a>(data: &'a KvData, key: &str) -> Option<&'a str> {
    data.get(key).map(|v| v.expose_secret())
}

/// `[a-z0-9][a-z0-9_-]{0,62}` (plus `.` inside when `dots`): agent ids and
/// panel names, KV path segments that cannot be `.` or `..`.
pub fn is_name(s: &str, dots: bool) -> bool {
    let b = s.as_bytes();
    let first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && first(b[0])
        && b[1..]
            .iter()
            .all(|&c| first(c) || c == b'_' || c == b'-' || (dots && c == b'.'))
}

/// Now, as RFC 3339 UTC to the second (`2026-01-02T03:04:05Z`), the
/// records' `created_at`-style fields.
pub fn now_rfc3339() -> String {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(unix)
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_a_known_digest() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_302_766), "2026-11-21T23:12:46Z");
    }
}
