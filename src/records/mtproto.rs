//! A user's MTProto proxy secret (vpnbot-style: 16 random bytes, hex), at
//! `vaultgram/mtproto/OWNER/USER`; OWNER is the issuing agent or `admin`
//! ([`super::agent::RESERVED_OWNER`]).

use super::common::sha256_hex;

/// Where MTProto records live, below the KV mount.
pub const DIR: &str = "vaultgram/mtproto";

/// The folder of `owner`'s users.
pub fn owner_dir(owner: &str) -> String {
    format!("{DIR}/{owner}")
}

/// The record of `owner`'s `user`.
pub fn path(owner: &str, user: &str) -> String {
    format!("{DIR}/{owner}/{user}")
}

/// The first 16 hex characters of SHA-256 over the secret's hex text
/// (vpnbot's `managed-secrets.json`).
pub fn fingerprint(secret_hex: &str) -> String {
    sha256_hex(secret_hex)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_vpnbots() {
        let s = "0123456789abcdef0123456789abcdef";
        assert_eq!(fingerprint(s), sha256_hex(s)[..16]);
        assert_eq!(fingerprint(s).len(), 16);
    }
}
