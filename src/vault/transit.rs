//! Transit: encryption as a service (`vault write transit/encrypt/KEY …`
//! and friends). Plaintext travels base64-encoded as the API wants it; the
//! encoding is done here so callers handle text or bytes only.
//!
//! OpenBao answers 400 "encryption key not found" / "key not found" for an
//! unknown key on encrypt-side paths; those become NotFound here.

use std::collections::BTreeMap;

use rustify::enums::RequestMethod;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::client::Vault;
use super::error::{Says, VaultError};
use super::http::{check_mount, check_name, parse_data, parse_envelope, Req};

/// A transit key as `vault read transit/keys/KEY` shows it (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitKeyInfo {
    pub name: String,
    pub key_type: String,
    pub latest_version: u64,
    /// Ciphertexts of older versions no longer decrypt (nor rewrap).
    pub min_decryption_version: u64,
    /// 0 = encrypt with the latest version.
    pub min_encryption_version: u64,
    pub deletion_allowed: bool,
    pub exportable: bool,
    pub supports_encryption: bool,
    pub supports_decryption: bool,
    /// The key versions still held (below `min_decryption_version` they may
    /// be trimmed).
    pub versions: Vec<u64>,
}

/// A fresh data key (`transit datakey`): use `plaintext` locally, store
/// `ciphertext`, discard the plaintext. `Debug` redacts the plaintext.
#[derive(Debug, Clone)]
pub struct DataKey {
    /// The key, base64 (256 bits).
    pub plaintext: SecretString,
    /// The same key encrypted with the named transit key.
    pub ciphertext: String,
    pub key_version: u64,
}

#[derive(Deserialize)]
struct RawCiphertext {
    ciphertext: String,
}

#[derive(Deserialize)]
struct RawPlaintext {
    plaintext: SecretString,
}

#[derive(Deserialize)]
struct RawDataKey {
    plaintext: SecretString,
    ciphertext: String,
    #[serde(default)]
    key_version: u64,
}

#[derive(Deserialize)]
struct RawKey {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    key_type: String,
    #[serde(default)]
    latest_version: u64,
    #[serde(default)]
    min_decryption_version: u64,
    #[serde(default)]
    min_encryption_version: u64,
    #[serde(default)]
    deletion_allowed: bool,
    #[serde(default)]
    exportable: bool,
    #[serde(default)]
    supports_encryption: bool,
    #[serde(default)]
    supports_decryption: bool,
    // Version → creation time (symmetric) or public-key record (asymmetric);
    // only the version numbers are kept.
    #[serde(default)]
    keys: BTreeMap<String, IgnoredAny>,
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Serialize)]
struct PlaintextBody<'a> {
    plaintext: &'a str,
}

#[derive(Serialize)]
struct CiphertextBody<'a> {
    ciphertext: &'a str,
}

/// Unknown transit keys come back as 400 from OpenBao; they are NotFound.
pub(super) fn key_not_found_is_not_found(e: VaultError) -> VaultError {
    e.recast(Says::TransitKeyNotFound, VaultError::NotFound)
}

/// A ciphertext as the operator pasted it: printable ASCII only, and not
/// absurdly long. Its format (`vault:vN:…`) is the server's to judge. Never
/// echoed (a ciphertext is not secret, but it is noise in an error).
fn check_ciphertext(c: &str) -> Result<(), VaultError> {
    if c.is_empty() || c.len() > 1 << 20 || !c.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(VaultError::Input(
            "invalid ciphertext: expected the vault:vN:… text transit returned".into(),
        ));
    }
    Ok(())
}

fn target(mount: &str, key: &str) -> Result<(String, String), VaultError> {
    let mount = check_mount(mount)?.to_string();
    check_name("transit key name", key)?;
    let ctx = format!("transit key {mount}/{key}");
    Ok((mount, ctx))
}

impl Vault {
    /// `vault write transit/encrypt/KEY plaintext=$(base64 <<< TEXT)`.
    /// With create rights on the path, an unknown key is created (as Vault does).
    pub async fn transit_encrypt(
        &self,
        mount: &str,
        key: &str,
        plaintext: &SecretString,
    ) -> Result<String, VaultError> {
        self.transit_encrypt_bytes(mount, key, plaintext.expose_secret().as_bytes())
            .await
    }

    /// [`Self::transit_encrypt`] for binary plaintext.
    pub async fn transit_encrypt_bytes(
        &self,
        mount: &str,
        key: &str,
        plaintext: &[u8],
    ) -> Result<String, VaultError> {
        let (mount, ctx) = target(mount, key)?;
        let b64 = Zeroizing::new(base64_encode(plaintext));
        let req = Req::new(RequestMethod::POST, format!("{mount}/encrypt/{key}"))
            .json(&PlaintextBody { plaintext: &b64 })?;
        let body = self
            .send(req)
            .await
            .map_err(|e| key_not_found_is_not_found(e.into_error(&ctx)))?;
        Ok(parse_data::<RawCiphertext>(&body, &ctx)?.ciphertext)
    }

    pub(super) fn transit_decrypt_request(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<(Req, String), VaultError> {
        let (mount, ctx) = target(mount, key)?;
        check_ciphertext(ciphertext)?;
        let req = Req::new(RequestMethod::POST, format!("{mount}/decrypt/{key}"))
            .json(&CiphertextBody { ciphertext })?;
        Ok((req, ctx))
    }

    /// `vault write transit/decrypt/KEY ciphertext=…` as text. A ciphertext
    /// older than the key's `min_decryption_version` is refused by Vault
    /// (Invalid: "… disallowed by policy (too old)"). Binary plaintext is
    /// Invalid here; use [`Self::transit_decrypt_bytes`].
    pub async fn transit_decrypt(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<SecretString, VaultError> {
        let bytes = self.transit_decrypt_bytes(mount, key, ciphertext).await?;
        let text = std::str::from_utf8(bytes.expose_secret()).map_err(|_| {
            VaultError::Invalid(format!(
                "transit key {mount}/{key}: the plaintext is binary, not UTF-8 text"
            ))
        })?;
        Ok(SecretString::from(text))
    }

    /// [`Self::transit_decrypt`] for binary plaintext.
    pub async fn transit_decrypt_bytes(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<SecretSlice<u8>, VaultError> {
        let (req, ctx) = self.transit_decrypt_request(mount, key, ciphertext)?;
        let body = self
            .send(req)
            .await
            .map_err(|e| key_not_found_is_not_found(e.into_error(&ctx)))?;
        let raw: RawPlaintext = parse_data(&body, &ctx)?;
        let bytes = base64_decode(raw.plaintext.expose_secret()).ok_or_else(|| {
            VaultError::Unavailable(format!("{ctx}: Vault's plaintext is not base64"))
        })?;
        // An exact-size copy (no reallocation that would leave an unzeroized
        // buffer behind); `bytes` is zeroized when dropped.
        Ok(SecretSlice::from(bytes.to_vec()))
    }

    /// `vault write transit/rewrap/KEY ciphertext=…`: the same plaintext under
    /// the latest key version, without it leaving Vault.
    pub async fn transit_rewrap(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<String, VaultError> {
        let (mount, ctx) = target(mount, key)?;
        check_ciphertext(ciphertext)?;
        let req = Req::new(RequestMethod::POST, format!("{mount}/rewrap/{key}"))
            .json(&CiphertextBody { ciphertext })?;
        let body = self
            .send(req)
            .await
            .map_err(|e| key_not_found_is_not_found(e.into_error(&ctx)))?;
        Ok(parse_data::<RawCiphertext>(&body, &ctx)?.ciphertext)
    }

    /// `vault write -f transit/keys/KEY/rotate`; the new latest version.
    /// OpenBao answers with the key; older Vaults with 204, then it is read.
    pub async fn transit_rotate(&self, mount: &str, key: &str) -> Result<u64, VaultError> {
        let (m, ctx) = target(mount, key)?;
        let body = self
            .send(Req::new(
                RequestMethod::POST,
                format!("{m}/keys/{key}/rotate"),
            ))
            .await
            .map_err(|e| key_not_found_is_not_found(e.into_error(&ctx)))?;
        let latest = parse_envelope::<RawKey>(&body, &ctx)
            .ok()
            .and_then(|e| e.data)
            .map(|k| k.latest_version)
            .filter(|v| *v > 0);
        match latest {
            Some(v) => Ok(v),
            None => Ok(self.transit_key_info(mount, key).await?.latest_version),
        }
    }

    /// `vault list transit/keys`. No keys is NotFound, as the CLI's "No
    /// value found".
    pub async fn transit_keys(&self, mount: &str) -> Result<Vec<String>, VaultError> {
        let mount = check_mount(mount)?;
        let ctx = format!("{mount}/keys/");
        match self
            .send(Req::new(RequestMethod::LIST, format!("{mount}/keys/")))
            .await
        {
            Ok(body) => Ok(parse_data::<RawList>(&body, &ctx)?.keys),
            Err(e) if e.code() == Some(404) => {
                Err(VaultError::NotFound(format!("no transit keys at {ctx}")))
            }
            Err(e) => Err(e.into_error(&ctx)),
        }
    }

    /// `vault read transit/keys/KEY`.
    pub async fn transit_key_info(
        &self,
        mount: &str,
        key: &str,
    ) -> Result<TransitKeyInfo, VaultError> {
        let (mount, ctx) = target(mount, key)?;
        let body = self
            .send(Req::new(RequestMethod::GET, format!("{mount}/keys/{key}")))
            .await
            .map_err(|e| key_not_found_is_not_found(e.into_error(&ctx)))?;
        let k: RawKey = parse_data(&body, &ctx)?;
        let mut versions: Vec<u64> = k.keys.keys().filter_map(|v| v.parse().ok()).collect();
        versions.sort_unstable();
        Ok(TransitKeyInfo {
            name: if k.name.is_empty() {
                key.to_string()
            } else {
                k.name
            },
            key_type: k.key_type,
            latest_version: k.latest_version,
            min_decryption_version: k.min_decryption_version,
            min_encryption_version: k.min_encryption_version,
            deletion_allowed: k.deletion_allowed,
            exportable: k.exportable,
            supports_encryption: k.supports_encryption,
            supports_decryption: k.supports_decryption,
            versions,
        })
    }

    pub(super) fn transit_datakey_request(
        &self,
        mount: &str,
        key: &str,
    ) -> Result<(Req, String), VaultError> {
        let (mount, ctx) = target(mount, key)?;
        let req = Req::new(
            RequestMethod::POST,
            format!("{mount}/datakey/plaintext/{key}"),
        );
        Ok((req, ctx))
    }

    /// `vault write -f transit/datakey/plaintext/KEY`: a fresh 256-bit key,
    /// in plaintext (base64) and encrypted with KEY.
    pub async fn transit_datakey(&self, mount: &str, key: &str) -> Result<DataKey, VaultError> {
        let (req, ctx) = self.transit_datakey_request(mount, key)?;
        let body = self
            .send(req)
            .await
            .map_err(|e| key_not_found_is_not_found(e.into_error(&ctx)))?;
        let raw: RawDataKey = parse_data(&body, &ctx)?;
        Ok(DataKey {
            plaintext: raw.plaintext,
            ciphertext: raw.ciphertext,
            key_version: raw.key_version,
        })
    }
}

/// Standard base64 with padding, as the transit API uses it.
fn base64_encode(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Strict decoding (padded, standard alphabet, canonical trailing bits, no
/// whitespace); the result is zeroized when dropped.
fn base64_decode(input: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(input)
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64_rfc4648_vectors() {
        let v = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in v {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap().as_slice(), plain.as_bytes());
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zh==", "Zm9v\n", "Zm-v", "===="] {
            assert!(base64_decode(bad).is_none(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let enc = base64_encode(&data);
            let dec = base64_decode(&enc).unwrap();
            prop_assert_eq!(dec.as_slice(), data.as_slice());
        }

        #[test]
        fn base64_decode_never_panics(s in any::<String>()) {
            let _ = base64_decode(&s);
        }
    }

    #[test]
    fn ciphertext_and_names_checked_before_sending() {
        assert!(check_ciphertext("vault:v1:abc+/=").is_ok());
        for bad in ["", "vault:v1: abc", "vault:v1:\u{7}", "vault:v1:é"] {
            let e = check_ciphertext(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Invalid);
        }
        assert!(target("transit", "../sys").is_err());
        assert!(target("transit/..", "k").is_err());
        assert_eq!(target("transit/", "k").unwrap().1, "transit key transit/k");
    }
}
