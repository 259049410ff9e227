//! Response wrapping (`-wrap-ttl`): wrapped reads, wrapping values the
//! broker generates itself, unwrap and lookup.

use std::collections::BTreeMap;

use rustify::enums::RequestMethod;
use secrecy::{ExposeSecret, SecretString};
use serde::de;
use serde::{Deserialize, Serialize};

use super::client::Vault;
use super::error::{Says, VaultError};
use super::http::{check_fields, parse_data, parse_envelope, Envelope, ExposedMap, Req, SecretMap};
use super::kv::KvPath;
pub use super::wrap_ttl::{WrapTtl, WrapTtlError};

// ---------------------------------------------------------------------------
// Wrapping results
// ---------------------------------------------------------------------------

/// A single-use response-wrapping token in place of a value (`vault unwrap
/// TOKEN` gives the value once). `Debug` shows the token redacted.
#[derive(Debug, Clone)]
pub struct Wrapped {
    pub token: SecretString,
    /// Identifies the wrapping token for lookup/revocation; cannot unwrap.
    pub accessor: String,
    pub ttl_secs: u64,
    pub creation_time: String,
    /// The Vault path whose answer is wrapped, e.g. `secret/data/x`.
    pub creation_path: String,
}

/// `sys/wrapping/lookup`: what a wrapping token holds the answer of.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WrappingInfo {
    pub creation_path: String,
    pub creation_time: String,
    pub creation_ttl: u64,
}

impl Vault {
    /// `kv get -wrap-ttl`: the version's answer wrapped in a single-use
    /// token. OpenBao wraps even the 404 of a deleted version (the operator
    /// would get a token that unwraps to nothing), so the version's state is
    /// checked in the metadata first; only if the metadata may not be read
    /// does the wrapped read go ahead unchecked.
    pub async fn kv_get_wrapped(
        &self,
        path: &KvPath,
        version: Option<u64>,
        ttl: WrapTtl,
    ) -> Result<Wrapped, VaultError> {
        let req = self.kv_read_request(path, version)?;
        match self.kv_metadata_get(path).await {
            Ok(meta) => meta.check_readable(path, version)?,
            Err(VaultError::Denied(_)) => {}
            Err(e) => return Err(e),
        }
        self.wrapped(req.wrap(ttl), &path.to_string()).await
    }

    /// `transit decrypt -wrap-ttl`: unwrapping gives `{plaintext: <base64>}`.
    pub async fn transit_decrypt_wrapped(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
        ttl: WrapTtl,
    ) -> Result<Wrapped, VaultError> {
        let (req, ctx) = self.transit_decrypt_request(mount, key, ciphertext)?;
        self.wrapped(req.wrap(ttl), &ctx)
            .await
            .map_err(super::transit::key_not_found_is_not_found)
    }

    /// `transit datakey -wrap-ttl`: unwrapping gives `{plaintext, ciphertext,
    /// key_version}`.
    pub async fn transit_datakey_wrapped(
        &self,
        mount: &str,
        key: &str,
        ttl: WrapTtl,
    ) -> Result<Wrapped, VaultError> {
        let (req, ctx) = self.transit_datakey_request(mount, key)?;
        self.wrapped(req.wrap(ttl), &ctx)
            .await
            .map_err(super::transit::key_not_found_is_not_found)
    }

    /// `sys/wrapping/wrap`: wraps values the broker made itself (a new agent
    /// token, an MTProto link) so they reach the operator only as a token.
    pub async fn wrap_data(
        &self,
        data: &BTreeMap<String, SecretString>,
        ttl: WrapTtl,
    ) -> Result<Wrapped, VaultError> {
        check_fields(data)?;
        if data.is_empty() {
            return Err(VaultError::Input("nothing to wrap: no fields".into()));
        }
        let req = Req::new(RequestMethod::POST, "sys/wrapping/wrap".into())
            .json(&ExposedMap(data))?
            .wrap(ttl);
        self.wrapped(req, "sys/wrapping/wrap").await
    }

    /// `vault unwrap TOKEN` with this client's own token as the caller (the
    /// `default` policy allows it). A second unwrap of the same token fails.
    pub async fn unwrap(
        &self,
        token: &SecretString,
    ) -> Result<BTreeMap<String, SecretString>, VaultError> {
        check_wrapping_token(token)?;
        #[derive(Serialize)]
        struct Body<'a> {
            token: &'a str,
        }
        let req = Req::new(RequestMethod::POST, "sys/wrapping/unwrap".into()).json(&Body {
            token: token.expose_secret(),
        })?;
        self.unwrap_request(req).await
    }

    /// `vault unwrap` where this client's token IS the wrapping token (e.g.
    /// a wrapped AppRole secret_id at start-up, before any login): POST with
    /// no body, authorised by the wrapping token itself.
    pub async fn unwrap_self(&self) -> Result<BTreeMap<String, SecretString>, VaultError> {
        let req = Req::new(RequestMethod::POST, "sys/wrapping/unwrap".into());
        self.unwrap_request(req).await
    }

    /// `sys/wrapping/lookup`: creation path and TTL of a wrapping token,
    /// without using it up (check `creation_path` before unwrapping what
    /// claims to be, say, an AppRole secret_id).
    pub async fn wrapping_lookup(&self, token: &SecretString) -> Result<WrappingInfo, VaultError> {
        check_wrapping_token(token)?;
        #[derive(Serialize)]
        struct Body<'a> {
            token: &'a str,
        }
        let req = Req::new(RequestMethod::POST, "sys/wrapping/lookup".into()).json(&Body {
            token: token.expose_secret(),
        })?;
        match self.send(req).await {
            Ok(body) => parse_data(&body, "sys/wrapping/lookup"),
            Err(e) => Err(invalid_wrapping_token(e.into_error("sys/wrapping/lookup"))),
        }
    }

    async fn unwrap_request(&self, req: Req) -> Result<BTreeMap<String, SecretString>, VaultError> {
        match self.send(req).await {
            Ok(body) => {
                let data: Option<SecretMap> = parse_envelope(&body, "sys/wrapping/unwrap")?.data;
                Ok(data.map(|m| m.0).unwrap_or_default())
            }
            Err(e) => Err(invalid_wrapping_token(e.into_error("sys/wrapping/unwrap"))),
        }
    }

    /// Sends a request that carries `X-Vault-Wrap-TTL` and returns the
    /// wrapping token. An answer without `wrap_info` would hold the value in
    /// clear: it is dropped (zeroized) and reported as an error.
    async fn wrapped(&self, req: Req, ctx: &str) -> Result<Wrapped, VaultError> {
        debug_assert!(req.wrap.is_some());
        let body = self.send(req).await.map_err(|e| e.into_error(ctx))?;
        let env: Envelope<de::IgnoredAny> = parse_envelope(&body, ctx)?;
        let w = env.wrap_info.ok_or_else(|| {
            VaultError::Unavailable(format!("{ctx}: Vault did not wrap the response"))
        })?;
        Ok(Wrapped {
            token: w.token,
            accessor: w.accessor,
            ttl_secs: w.ttl,
            creation_time: w.creation_time,
            creation_path: w.creation_path,
        })
    }
}

/// A used, expired or revoked wrapping token: Vault answers 400 "wrapping
/// token is not valid or does not exist". Said so, because the usual cause
/// is that someone else unwrapped it first.
fn invalid_wrapping_token(e: VaultError) -> VaultError {
    e.recast(Says::WrappingTokenInvalid, |m| {
        VaultError::Invalid(format!("{m} (already unwrapped, expired or revoked)"))
    })
}

/// Refuses obviously malformed tokens before they travel; never echoes one.
fn check_wrapping_token(token: &SecretString) -> Result<(), VaultError> {
    let t = token.expose_secret();
    if t.is_empty() || t.len() > 1024 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(VaultError::Input(
            "invalid wrapping token: expected a Vault token".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn wrap_ttl_parses_cli_durations() {
        assert_eq!(WrapTtl::parse("30s").unwrap().as_secs(), 30);
        assert_eq!(WrapTtl::parse("5m").unwrap().as_secs(), 300);
        assert_eq!(WrapTtl::parse("1h").unwrap().as_secs(), 3600);
        assert_eq!(WrapTtl::parse("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(WrapTtl::parse("90").unwrap().as_secs(), 90);
        assert_eq!(WrapTtl::parse("24h").unwrap().as_secs(), 86400);
        assert_eq!(WrapTtl::parse("1s").unwrap().to_string(), "1s");
    }

    #[test]
    fn wrap_ttl_refuses_out_of_range_and_garbage() {
        for s in [
            "0",
            "0s",
            "24h1s",
            "25h",
            "99999999999999999999999",
            "2000000h",
        ] {
            assert_eq!(WrapTtl::parse(s), Err(WrapTtlError::OutOfRange), "{s}");
        }
        for s in [
            "", "s", "5d", "1h30", "-5s", " 5s", "5 s", "1.5h", "5ms", "h1",
        ] {
            assert_eq!(WrapTtl::parse(s), Err(WrapTtlError::Malformed), "{s:?}");
        }
        assert!(!WrapTtlError::Malformed.to_string().contains('\u{7}'));
    }
}
