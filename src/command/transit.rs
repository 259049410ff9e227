//! `/transit …`: encryption as a service and key lifecycle.

use clap::Subcommand;
use secrecy::ExposeSecret;
use serde_json::json;
use zeroize::Zeroizing;

use super::args::{quote, wrap_ttl, SecretArg, WrapArg};
use super::reply::Prepared;
use super::reply::{concat, table, take, wrapped_reply};
use crate::context::{CommandError, CommandResult, Ctx, Reply};

#[derive(Debug, Clone, Subcommand)]
pub enum TransitCommand {
    /// Encrypt text with a transit key (the message is deleted).
    #[command(override_usage = "/transit encrypt KEY TEXT")]
    Encrypt {
        key: String,
        /// Several words are joined with single spaces.
        #[arg(required = true, num_args = 1..)]
        text: Vec<SecretArg>,
    },
    /// Decrypt a vault:vN:… ciphertext.
    #[command(override_usage = "/transit decrypt [-wrap-ttl=DURATION] KEY vault:vN:…")]
    Decrypt {
        #[command(flatten)]
        wrap: WrapArg,
        key: String,
        ciphertext: String,
    },
    /// Re-encrypt a ciphertext with the key's latest version.
    #[command(override_usage = "/transit rewrap KEY vault:vN:…")]
    Rewrap { key: String, ciphertext: String },
    /// Rotate a key to a new version (needs approval).
    #[command(override_usage = "/transit rotate KEY")]
    Rotate { key: String },
    /// List transit keys.
    #[command(override_usage = "/transit keys")]
    Keys,
    /// A fresh data key: plaintext and wrapped.
    #[command(override_usage = "/transit datakey [-wrap-ttl=DURATION] KEY")]
    Datakey {
        #[command(flatten)]
        wrap: WrapArg,
        key: String,
    },
}

impl TransitCommand {
    pub fn name(&self) -> &'static str {
        match self {
            TransitCommand::Encrypt { .. } => "encrypt",
            TransitCommand::Decrypt { .. } => "decrypt",
            TransitCommand::Rewrap { .. } => "rewrap",
            TransitCommand::Rotate { .. } => "rotate",
            TransitCommand::Keys => "keys",
            TransitCommand::Datakey { .. } => "datakey",
        }
    }

    pub fn target(&self) -> Option<String> {
        match self {
            TransitCommand::Encrypt { key, .. }
            | TransitCommand::Decrypt { key, .. }
            | TransitCommand::Rewrap { key, .. }
            | TransitCommand::Rotate { key }
            | TransitCommand::Datakey { key, .. } => Some(key.clone()),
            TransitCommand::Keys => None,
        }
    }

    pub fn reply_is_secret(&self) -> bool {
        matches!(
            self,
            TransitCommand::Decrypt { .. } | TransitCommand::Datakey { .. }
        )
    }
}

impl TransitCommand {
    /// `/transit rotate KEY`, checked before a request is filed: the key
    /// exists and the requester may read it.
    pub async fn prepare(&self, ctx: &Ctx<'_>) -> Result<Prepared, CommandError> {
        match self {
            TransitCommand::Rotate { key } => {
                let mount = ctx.cfg().vault.transit_mount.as_str();
                let info = ctx.vault().await?.transit_key_info(mount, key).await?;
                Ok(Prepared {
                    line: format!("/transit rotate {}", quote(key)),
                    effect: format!(
                        "rotates transit key {key} from version {} to {}",
                        info.latest_version,
                        info.latest_version + 1
                    ),
                })
            }
            _ => Err(CommandError::invalid(format!(
                "/transit {} cannot wait for approval",
                self.name()
            ))),
        }
    }
}

// ---------------------------------------------------------------------------
// Execution: on `vault.transit_mount`, with the operator's child token.
// Plaintexts appear only in the text of secret replies; ciphertexts (not
// secret) may appear anywhere.
// ---------------------------------------------------------------------------

impl TransitCommand {
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        let mount = ctx.cfg().vault.transit_mount.as_str();
        match self {
            TransitCommand::Encrypt { key, text } => {
                // The words joined with single spaces, in one exactly-sized
                // buffer that is zeroed when dropped.
                let len = text
                    .iter()
                    .map(|w| w.0.expose_secret().len())
                    .sum::<usize>()
                    + text.len().saturating_sub(1);
                let mut plain = Zeroizing::new(String::with_capacity(len));
                for (i, w) in text.iter().enumerate() {
                    if i > 0 {
                        plain.push(' ');
                    }
                    plain.push_str(w.0.expose_secret());
                }
                let ct = ctx
                    .vault()
                    .await?
                    .transit_encrypt_bytes(mount, key, plain.as_bytes())
                    .await?;
                Ok(ciphertext_reply(key, ct))
            }
            TransitCommand::Decrypt {
                wrap,
                key,
                ciphertext,
            } => {
                let ttl = wrap_ttl(ctx, wrap)?;
                let vault = ctx.vault().await?;
                let data = json!({"key": key, "key_version": key_version(ciphertext)});
                if let Some(ttl) = ttl {
                    let w = vault
                        .transit_decrypt_wrapped(mount, key, ciphertext, ttl)
                        .await?;
                    return Ok(wrapped_reply(&w, data));
                }
                let bytes = vault.transit_decrypt_bytes(mount, key, ciphertext).await?;
                let mut data = data;
                match std::str::from_utf8(bytes.expose_secret()) {
                    Ok(text) => {
                        data["encoding"] = json!("utf-8");
                        Ok(Reply::secret(text.to_string()).with_data(data))
                    }
                    Err(_) => {
                        // Binary plaintext (written through the API): as
                        // the CLI shows every plaintext, base64.
                        data["encoding"] = json!("base64");
                        let b64 = Zeroizing::new(base64(bytes.expose_secret()));
                        Ok(Reply::secret(concat(&["plaintext (base64): ", &b64])).with_data(data))
                    }
                }
            }
            TransitCommand::Rewrap { key, ciphertext } => {
                let ct = ctx
                    .vault()
                    .await?
                    .transit_rewrap(mount, key, ciphertext)
                    .await?;
                Ok(ciphertext_reply(key, ct))
            }
            TransitCommand::Rotate { key } => {
                let v = ctx.vault().await?.transit_rotate(mount, key).await?;
                Ok(Reply::text(format!(
                    "Success! Rotated transit key {key}: the latest version is {v}"
                ))
                .with_data(json!({"key": key, "latest_version": v})))
            }
            TransitCommand::Keys => {
                let keys = ctx.vault().await?.transit_keys(mount).await?;
                let mut text = String::from("Keys\n----");
                for k in &keys {
                    text.push('\n');
                    text.push_str(k);
                }
                Ok(Reply::text(text).with_data(json!({"mount": mount, "keys": keys})))
            }
            TransitCommand::Datakey { wrap, key } => {
                let ttl = wrap_ttl(ctx, wrap)?;
                let vault = ctx.vault().await?;
                if let Some(ttl) = ttl {
                    let w = vault.transit_datakey_wrapped(mount, key, ttl).await?;
                    return Ok(wrapped_reply(&w, json!({"key": key})));
                }
                let dk = vault.transit_datakey(mount, key).await?;
                let version = dk.key_version.to_string();
                let text = table(&[
                    ("ciphertext", &dk.ciphertext),
                    ("key_version", &version),
                    ("plaintext", dk.plaintext.expose_secret()),
                ]);
                Ok(Reply::secret(take(text)).with_data(json!({
                    "key": key,
                    "ciphertext": dk.ciphertext,
                    "key_version": dk.key_version,
                })))
            }
        }
    }
}

/// The key version of a `vault:vN:…` ciphertext.
fn key_version(ciphertext: &str) -> Option<u64> {
    ciphertext
        .strip_prefix("vault:v")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

fn ciphertext_reply(key: &str, ciphertext: String) -> Reply {
    let version = key_version(&ciphertext);
    let v = version
        .map(|v| v.to_string())
        .unwrap_or_else(|| "n/a".into());
    let text = table(&[("ciphertext", &ciphertext), ("key_version", &v)]);
    Reply::text(take(text)).with_data(json!({
        "key": key,
        "ciphertext": ciphertext,
        "key_version": version,
    }))
}

/// Standard base64 with padding (binary plaintexts only).
fn base64(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_versions_and_base64() {
        assert_eq!(key_version("vault:v3:abc"), Some(3));
        assert_eq!(key_version("vault:v12:"), Some(12));
        assert_eq!(key_version("nonsense"), None);
        assert_eq!(key_version("vault:vx:abc"), None);
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn ciphertext_reply_is_not_secret() {
        let r = ciphertext_reply("k", "vault:v2:AAAA".into());
        assert!(!r.secret);
        assert_eq!(
            r.as_str(),
            "Key            Value\n---            -----\nciphertext     vault:v2:AAAA\nkey_version    2"
        );
        assert_eq!(r.data["key_version"], 2);
    }
}
