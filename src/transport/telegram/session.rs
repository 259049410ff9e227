//! The userbot's session in Vault: transit-encrypted with the broker's key,
//! stored as KV v2 at `telegram.session_path` (the record's format is
//! `records::session`), read and written with the broker's own token (the
//! only policy allowed there). Never on disk.

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::records;
use crate::vault::kv::KvPath;
use crate::vault::{Vault, VaultError};

/// Session bytes as a client exported them, and what wrote them
/// (`grammers-0.11`, or `file-v1` for the test stand-in).
pub struct StoredSession {
    pub format: String,
    pub bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("format", &self.format)
            .field(
                "bytes",
                &format_args!("<{} bytes redacted>", self.bytes.len()),
            )
            .finish()
    }
}

/// Where and how the session is kept.
#[derive(Debug, Clone)]
pub struct SessionStore {
    path: KvPath,
    transit_mount: String,
    transit_key: String,
}

impl SessionStore {
    pub fn new(cfg: &Config) -> Result<SessionStore, VaultError> {
        let path = KvPath::new(&cfg.vault.kv_mount, &cfg.telegram.session_path)
            .map_err(|e| VaultError::Input(format!("telegram.session_path: {e}")))?;
        Ok(SessionStore {
            path,
            transit_mount: cfg.vault.transit_mount.clone(),
            transit_key: cfg.vault.transit_key.clone(),
        })
    }

    pub fn path(&self) -> &KvPath {
        &self.path
    }

    /// The stored session; `None` when there is none (never logged in, or
    /// its latest version deleted).
    pub async fn load(&self, vault: &Vault) -> Result<Option<StoredSession>, VaultError> {
        Ok(self.load_versioned(vault).await?.map(|(s, _)| s))
    }

    /// The stored session and its KV version (what a save checks against).
    pub async fn load_versioned(
        &self,
        vault: &Vault,
    ) -> Result<Option<(StoredSession, u64)>, VaultError> {
        let secret = match vault.kv_get(&self.path, None).await {
            Ok(s) => s,
            Err(VaultError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (ciphertext, format) = records::session::parse(&secret.data)
            .map_err(|e| VaultError::Invalid(format!("{}: {e}", self.path)))?;
        let plain = vault
            .transit_decrypt_bytes(&self.transit_mount, &self.transit_key, ciphertext)
            .await?;
        Ok(Some((
            StoredSession {
                format,
                bytes: Zeroizing::new(plain.expose_secret().to_vec()),
            },
            secret.version,
        )))
    }

    /// Encrypts with transit first, then writes a new version: Vault's KV
    /// and its storage only ever see ciphertext.
    pub async fn save(
        &self,
        vault: &Vault,
        session: &StoredSession,
        node: &str,
        meta: &records::session::Meta,
    ) -> Result<u64, VaultError> {
        self.save_cas(vault, session, node, None, meta).await
    }

    /// The plain fields of version `version` (the latest with `None`);
    /// `None` when there is no such version.
    pub async fn meta(
        &self,
        vault: &Vault,
        version: Option<u64>,
    ) -> Result<Option<records::session::Meta>, VaultError> {
        match vault.kv_get(&self.path, version).await {
            Ok(s) => Ok(Some(records::session::meta(&s.data))),
            Err(VaultError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`save`](Self::save) only if the latest version is still `cas`:
    /// the running leader must not overwrite a session that `vaultgram
    /// login` stored meanwhile (a `Conflict` then).
    pub async fn save_cas(
        &self,
        vault: &Vault,
        session: &StoredSession,
        node: &str,
        cas: Option<u64>,
        meta: &records::session::Meta,
    ) -> Result<u64, VaultError> {
        let ciphertext = vault
            .transit_encrypt_bytes(&self.transit_mount, &self.transit_key, &session.bytes)
            .await?;
        let data = records::session::record(ciphertext, &session.format, node, meta);
        vault.kv_put_unguarded(&self.path, &data, cas).await
    }
}
