//! One rustls `CryptoProvider` for the whole process.
//!
//! The dependency tree enables both `ring` and `aws-lc-rs` in rustls
//! (through reqwest and tonic); with two compiled in, rustls refuses to pick
//! one and panics on the first handshake. Installing `ring` explicitly at
//! start-up makes the choice once, for Vault and etcd alike.

/// Installs the `ring` provider as the process default. Idempotent: a second
/// call (tests, or a library user that installed one already) is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
