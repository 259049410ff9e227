//! TLS: one rustls `CryptoProvider` for the whole process, and reading
//! the certificate files of the config (`doctor`, `/metrics`).
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

/// The certificates of a PEM file as (subject CN, `not_after` in Unix
/// seconds), in file order; an error text names the file and the fault.
pub fn certificates(path: &std::path::Path) -> Result<Vec<(String, i64)>, String> {
    use x509_parser::pem::Pem;
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut certs = Vec::new();
    for pem in Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| format!("{shown}: bad PEM: {e}"))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let x = pem
            .parse_x509()
            .map_err(|e| format!("{shown}: bad certificate: {e}"))?;
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| x.subject().to_string());
        certs.push((cn, x.validity().not_after.timestamp()));
    }
    if certs.is_empty() {
        return Err(format!("{shown}: no certificate in the file"));
    }
    Ok(certs)
}
