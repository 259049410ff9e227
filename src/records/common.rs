//! What every record kind shares: the error, digests, field access.

use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::vault::kv::KvData;

/// A record or a name in it that breaks the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Random(#[from] crate::ids::RandomError),
}

/// Hex of SHA-256 of the string's bytes.
pub fn sha256_hex(s: &str) -> String {
    crate::ids::hex(&Sha256::digest(s.as_bytes()))
}

/// A field of a KV record, if present.
pub fn field<'a>(data: &'a KvData, key: &str) -> Option<&'a str> {
    data.get(key).map(|v| v.expose_secret())
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
}
