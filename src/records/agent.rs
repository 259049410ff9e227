//! An agent's API token record (ValhallaBot-style), at `vaultgram/agents/ID`:
//! `token`, `token_sha256` (for look-ups without the token), and who
//! created or rotated it when.

use secrecy::SecretString;

use super::common::{sha256_hex, RecordError};
use crate::names::is_name;
use crate::vault::kv::KvData;

/// Where agent records live, below the KV mount.
pub const DIR: &str = "vaultgram/agents";

/// The owner id of admin-issued MTProto secrets (`mtproto/admin/`); never
/// an agent id.
pub const RESERVED_OWNER: &str = "admin";

/// The record of agent `id` (a checked id).
pub fn path(id: &str) -> String {
    format!("{DIR}/{id}")
}

/// The record: the token, its digest, and `extra` fields.
pub fn token_record(token: &str, extra: &[(&str, String)]) -> KvData {
    let mut d = KvData::new();
    d.insert("token".into(), SecretString::from(token.to_string()));
    d.insert("token_sha256".into(), SecretString::from(sha256_hex(token)));
    for (k, v) in extra {
        d.insert((*k).to_string(), SecretString::from(v.clone()));
    }
    d
}

/// An agent id (SPEC/`apply.sh`): `[a-z0-9][a-z0-9_-]{0,62}`, and not
/// `admin` (the owner id of admin-issued MTProto secrets).
pub fn check_id(id: &str) -> Result<(), RecordError> {
    if !is_name(id, false) {
        return Err(RecordError::Invalid(
            "invalid agent id: use 1-63 of a-z, 0-9, '_', '-', starting with a letter or digit"
                .into(),
        ));
    }
    if id == RESERVED_OWNER {
        return Err(RecordError::Invalid(
            "invalid agent id: `admin` is reserved (owner of admin-issued MTProto secrets)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids() {
        for ok in ["bob", "it-agent1", "a", "0_x", &"a".repeat(63)] {
            check_id(ok).unwrap();
        }
        for bad in [
            "",
            "admin",
            "Bob",
            "-x",
            "_x",
            "a/b",
            "a.b",
            "..",
            &"a".repeat(64),
            "b\u{0}",
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
