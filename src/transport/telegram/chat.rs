//! What both clients (grammers and the stand-in) say to the runner: their
//! error, Telegram's RPC errors mapped once, an account's authorizations,
//! and the login prompt.

use std::time::Duration;

use secrecy::SecretString;

use crate::vault::VaultError;

/// Failures of the Telegram client. Texts carry no message text and no
/// session bytes.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("telegram: FLOOD_WAIT of {}s", .0.as_secs())]
    FloodWait(Duration),
    #[error("telegram: not authorized: {0}")]
    Unauthorized(String),
    /// `RANDOM_ID_DUPLICATE`: a retried send whose first attempt was
    /// delivered; the message exists, its id is unknown.
    #[error("telegram: {0}")]
    Duplicate(String),
    /// Start again from the session in Vault at once.
    #[error("telegram session: {0}")]
    Reload(String),
    /// The stored session was refused before; waiting for a new login.
    #[error("telegram: the stored session was refused; waiting for `vaultgram login`")]
    Refused,
    #[error("telegram: {0}")]
    Io(String),
    /// The session holds no access hash for this user: Telegram cannot be
    /// asked to deliver to them until they write first.
    #[error("telegram: no access hash for user {0} in the session")]
    UnknownPeer(i64),
    #[error("telegram session: {0}")]
    Session(String),
    #[error("telegram: {0}")]
    Vault(#[from] VaultError),
    #[error("telegram login: {0}")]
    Prompt(String),
}

/// What an RPC error from Telegram means here (both clients map through
/// this, so the stand-in's injected errors test the real mapping).
pub(crate) fn rpc_error(code: i32, name: &str, value: Option<u32>) -> ChatError {
    match (code, name) {
        (_, "FLOOD_WAIT" | "FLOOD_PREMIUM_WAIT" | "SLOWMODE_WAIT") => {
            ChatError::FloodWait(Duration::from_secs(value.unwrap_or(0).into()))
        }
        // The key was used from two places at once (two leaders, a copied
        // session): Telegram revoked it. Reconnecting cannot help.
        (406, "AUTH_KEY_DUPLICATED") => ChatError::Unauthorized(
            "AUTH_KEY_DUPLICATED: Telegram revoked this session's key; run `vaultgram login`"
                .into(),
        ),
        (401, n) => ChatError::Unauthorized(format!("{n}: run `vaultgram login`")),
        // The account's home data centre moved (after a login elsewhere):
        // reconnecting with this session only meets the same answer.
        (303, n) if n.ends_with("_MIGRATE") => ChatError::Unauthorized(format!(
            "{n}: the account's home data centre moved; run `vaultgram login`"
        )),
        (_, "RANDOM_ID_DUPLICATE") => ChatError::Duplicate(
            "RANDOM_ID_DUPLICATE: the message was delivered by an earlier attempt".into(),
        ),
        (c, n) => ChatError::Io(format!("RPC error {c} {n}")),
    }
}

/// One authorization of the account (`account.getAuthorizations`): what
/// `doctor` shows. No secret: the hash ends a session, never uses it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Authorization {
    pub hash: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub app: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub active: i64,
    #[serde(default)]
    pub current: bool,
}

/// Where `vaultgram login` gets the phone number, the code and the 2FA
/// password (a terminal in `main`).
pub trait LoginPrompt {
    fn phone(&mut self) -> Result<String, ChatError>;
    fn code(&mut self) -> Result<SecretString, ChatError>;
    fn password(&mut self, hint: Option<&str>) -> Result<SecretString, ChatError>;
    /// Tells the person what happened (a refused code, a new code sent).
    fn notice(&mut self, _text: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telegram_rpc_errors_map_to_what_the_runner_must_do() {
        assert!(matches!(
            rpc_error(406, "AUTH_KEY_DUPLICATED", None),
            ChatError::Unauthorized(m) if m.contains("vaultgram login")
        ));
        assert!(matches!(
            rpc_error(401, "AUTH_KEY_UNREGISTERED", None),
            ChatError::Unauthorized(_)
        ));
        assert!(matches!(
            rpc_error(400, "RANDOM_ID_DUPLICATE", None),
            ChatError::Duplicate(_)
        ));
        assert!(matches!(
            rpc_error(420, "FLOOD_WAIT", Some(30)),
            ChatError::FloodWait(d) if d == Duration::from_secs(30)
        ));
        assert!(matches!(rpc_error(500, "INTERNAL", None), ChatError::Io(_)));
        assert!(matches!(
            rpc_error(303, "USER_MIGRATE", Some(2)),
            ChatError::Unauthorized(m) if m.contains("vaultgram login")
        ));
    }
}
