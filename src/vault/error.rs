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
        match (code, Says::of(&text)) {
            (403 | 401, _) => VaultError::Denied(text),
            (404, _) => VaultError::NotFound(text),
            (400, Some(Says::CasMismatch)) => VaultError::Conflict(text),
            // HashiCorp Vault answers some storage failures (its etcd
            // without quorum) with a 400: the request was fine, the server
            // could not keep it.
            (400, Some(Says::StorageTimeout)) => {
                VaultError::Unavailable(format!("HTTP {code}: {text}"))
            }
            (400 | 405 | 409 | 412 | 422, _) => VaultError::Invalid(text),
            _ => VaultError::Unavailable(format!("HTTP {code}: {text}")),
        }
    }

    /// What the server's text says, if it is one of the answers the
    /// engines act on.
    pub fn says(&self) -> Option<Says> {
        match self {
            VaultError::Invalid(m) | VaultError::Conflict(m) => Says::of(m),
            _ => None,
        }
    }

    /// An `Invalid` answer that says `says` becomes `to(text)`; anything
    /// else is returned unchanged.
    pub fn recast(self, says: Says, to: impl FnOnce(String) -> VaultError) -> VaultError {
        match self {
            VaultError::Invalid(m) if Says::of(&m) == Some(says) => to(m),
            other => other,
        }
    }
}

/// The answers of Vault and OpenBao the engines act on, recognised from
/// the servers' texts here and nowhere else (both servers word them the
/// same; `tests/suite/vault_engines.rs` sees each against both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Says {
    /// A check-and-set mismatch: another writer came first.
    CasMismatch,
    /// The mount requires check-and-set and none was given (a missing
    /// option, not a lost race).
    CasRequired,
    /// The storage backend timed out (HashiCorp Vault's etcd without
    /// quorum answers 400 with this).
    StorageTimeout,
    /// Revoking a token by an accessor that is gone (expired).
    InvalidAccessor,
    /// A used, expired or revoked wrapping token.
    WrappingTokenInvalid,
    /// No TOTP key of that name (OpenBao: 400).
    UnknownTotpKey,
    /// A TOTP code used once already.
    TotpCodeUsed,
    /// No transit key of that name (OpenBao: 400).
    TransitKeyNotFound,
}

impl Says {
    fn of(text: &str) -> Option<Says> {
        // Order matters: "check-and-set parameter required" before any
        // other check-and-set text.
        const TEXTS: [(&str, Says); 8] = [
            ("check-and-set parameter required", Says::CasRequired),
            ("check-and-set", Says::CasMismatch),
            ("context deadline exceeded", Says::StorageTimeout),
            ("invalid accessor", Says::InvalidAccessor),
            ("wrapping token is not valid", Says::WrappingTokenInvalid),
            ("unknown key", Says::UnknownTotpKey),
            ("already used", Says::TotpCodeUsed),
            ("key not found", Says::TransitKeyNotFound),
        ];
        TEXTS
            .iter()
            .find(|(t, _)| text.contains(t))
            .map(|&(_, s)| s)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_recognised_once_and_mapped() {
        let e = |code, t: &str| VaultError::from_status(code, t.to_string());
        assert!(matches!(
            e(
                400,
                "check-and-set parameter did not match the current version"
            ),
            VaultError::Conflict(_)
        ));
        // A missing option, not a lost race.
        assert!(matches!(
            e(400, "check-and-set parameter required for this call"),
            VaultError::Invalid(_)
        ));
        assert!(matches!(
            e(400, "context deadline exceeded"),
            VaultError::Unavailable(_)
        ));
        assert_eq!(
            e(400, "1 error occurred: invalid accessor").says(),
            Some(Says::InvalidAccessor)
        );
        assert!(matches!(
            e(400, "unknown key: alice").recast(Says::UnknownTotpKey, VaultError::NotFound),
            VaultError::NotFound(_)
        ));
        assert!(matches!(
            e(400, "code already used; wait until the next time period")
                .recast(Says::TotpCodeUsed, VaultError::Denied),
            VaultError::Denied(_)
        ));
        // Only what the text says is recast.
        assert!(matches!(
            e(400, "unknown key: alice").recast(Says::TransitKeyNotFound, VaultError::NotFound),
            VaultError::Invalid(_)
        ));
        assert!(matches!(e(403, "permission denied"), VaultError::Denied(_)));
        assert!(matches!(e(503, "sealed"), VaultError::Unavailable(_)));
        assert_eq!(e(400, "anything else").says(), None);
    }
}
