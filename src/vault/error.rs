//! The boundary error every engine maps to: Vault's answers as kinds.

use vaultrs::error::ClientError;

use crate::error::ErrorKind;

/// Failures at the Vault boundary. Texts carry Vault's error strings (which
/// name paths, never values) and no token.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault: client set-up failed: {0}")]
    Setup(String),
    #[error("vault denied the request: {0}")]
    Denied(String),
    #[error("vault: not found: {0}")]
    NotFound(String),
    #[error("vault rejected the request: {0}")]
    Invalid(String),
    #[error("vault: check-and-set conflict: {0}")]
    Conflict(String),
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// A credential or token the broker will not use (wrong wrapping
    /// path, already-unwrapped secret_id, non-renewable token).
    #[error("vault: {0}")]
    Refused(String),
    /// Malformed input refused before any request was sent (a bad KV path,
    /// wrap TTL, key name or TOTP code format).
    #[error("{0}")]
    Input(String),
    /// A write refused before it was sent because Vault would drop a
    /// version that is not destroyed from the secret's history.
    #[error("{0}")]
    HistoryFull(String),
}

impl VaultError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            VaultError::Denied(_) | VaultError::Refused(_) | VaultError::HistoryFull(_) => {
                ErrorKind::Denied
            }
            VaultError::NotFound(_) => ErrorKind::NotFound,
            VaultError::Invalid(_) | VaultError::Input(_) => ErrorKind::Invalid,
            VaultError::Conflict(_) => ErrorKind::Conflict,
            VaultError::Setup(_) | VaultError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }

    /// Maps an HTTP status from Vault to an error kind (SPEC.md: sealed or
    /// unreachable → unavailable, 403 → denied, 404 → not_found, 400 →
    /// invalid; a check-and-set mismatch is a 400 whose text says so).
    pub fn from_status(code: u16, text: String) -> VaultError {
        match code {
            403 | 401 => VaultError::Denied(text),
            404 => VaultError::NotFound(text),
            400 if text.contains("check-and-set") => VaultError::Conflict(text),
            // HashiCorp Vault answers some storage failures (its etcd
            // without quorum) with a 400: the request was fine, the server
            // could not keep it.
            400 if text.contains("context deadline exceeded") => {
                VaultError::Unavailable(format!("HTTP {code}: {text}"))
            }
            400 | 405 | 409 | 412 | 422 => VaultError::Invalid(text),
            _ => VaultError::Unavailable(format!("HTTP {code}: {text}")),
        }
    }
}

impl From<ClientError> for VaultError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::APIError { code, errors } => {
                VaultError::from_status(code, errors.join("; "))
            }
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, .. } => {
                    // The body is not echoed: on some endpoints it may hold data.
                    VaultError::from_status(code, "request failed".into())
                }
                other => VaultError::Unavailable(other.to_string()),
            },
            other => VaultError::Unavailable(other.to_string()),
        }
    }
}
