//! The request plumbing every engine module (`kv`, `transit`, `totp`,
//! `wrap`) sends its calls through.
//!
//! Why our own plumbing instead of vaultrs' endpoint functions:
//! - vaultrs' response structs require fields OpenBao does not send or lack
//!   fields we need (transit `latest_version`), and its `EndpointResult`
//!   envelope requires `lease_id`, `request_id`, … on every answer;
//! - its `api::wrap` hard-codes a 10-minute wrap TTL;
//! - it has no KV v2 `PATCH` (which needs `application/merge-patch+json`);
//! - a KV v2 404 for a deleted version carries the version metadata in the
//!   body, which vaultrs drops (it only keeps `errors`).
//!
//! So requests are built here and executed with the vaultrs client's own
//! HTTP client and middleware (TLS settings, token header, `/v1` prefix),
//! and answers are parsed here. Bodies are held in `Zeroizing` buffers;
//! neither a body nor a serde error text (which can quote a value) is ever
//! put into an error.

use std::collections::BTreeMap;
use std::fmt;

use rustify::client::Client as _;
use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use vaultrs::client::Client as _;
use zeroize::Zeroizing;

use super::client::Vault;
use super::error::VaultError;
use super::wrap_ttl::WrapTtl;

/// One Vault API call. `path` is relative to `/v1/` (the vaultrs middleware
/// prefixes it) and split into URL segments, each percent-encoded.
pub(super) struct Req {
    method: RequestMethod,
    path: String,
    query: Option<String>,
    body: Option<Zeroizing<Vec<u8>>>,
    merge_patch: bool,
    pub(super) wrap: Option<WrapTtl>,
}

impl Req {
    pub(super) fn new(method: RequestMethod, path: String) -> Req {
        Req {
            method,
            path,
            query: None,
            body: None,
            merge_patch: false,
            wrap: None,
        }
    }

    pub(super) fn query(mut self, q: String) -> Req {
        self.query = Some(q);
        self
    }

    /// A JSON body. The serialisation error is not passed on: its text can
    /// quote the value that failed.
    pub(super) fn json<T: Serialize>(mut self, body: &T) -> Result<Req, VaultError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|_| VaultError::Input("request body could not be encoded".into()))?;
        self.body = Some(Zeroizing::new(bytes));
        Ok(self)
    }

    /// `Content-Type: application/merge-patch+json`, which KV v2 `PATCH`
    /// requires (OpenBao answers 415 otherwise).
    pub(super) fn merge_patch(mut self) -> Req {
        self.merge_patch = true;
        self
    }

    pub(super) fn wrap(mut self, ttl: WrapTtl) -> Req {
        self.wrap = Some(ttl);
        self
    }
}

impl Endpoint for Req {
    // Never used: answers are parsed by `parse_envelope`.
    type Response = ();
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn query(&self) -> Result<Option<String>, rustify::errors::ClientError> {
        Ok(self.query.clone())
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        // This copy goes into the HTTP stack, beyond our reach to zeroize.
        Ok(self.body.as_ref().map(|b| b.to_vec()))
    }
}

/// A failed call, before it becomes a [`VaultError`]. `body` may hold data
/// (a KV 404 carries version metadata); it is never displayed.
pub(super) enum SendError {
    Status { code: u16, body: Zeroizing<String> },
    Transport(String),
}

impl SendError {
    pub(super) fn code(&self) -> Option<u16> {
        match self {
            SendError::Status { code, .. } => Some(*code),
            SendError::Transport(_) => None,
        }
    }

    /// The body of a non-2xx answer, for the few callers that read data
    /// from it (KV 404 metadata).
    pub(super) fn body(&self) -> Option<&str> {
        match self {
            SendError::Status { body, .. } => Some(body.as_str()),
            SendError::Transport(_) => None,
        }
    }

    /// Vault's `errors` strings (they name paths and reasons, not values),
    /// tidied: OpenBao sends multi-errors as "1 error occurred:\n\t* …\n\n".
    pub(super) fn messages(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
        }
        let SendError::Status { body, .. } = self else {
            return Vec::new();
        };
        let Ok(e) = serde_json::from_str::<Errors>(body) else {
            return Vec::new();
        };
        e.errors
            .iter()
            .flat_map(|m| m.lines())
            .map(|l| l.trim().trim_start_matches("* ").trim())
            .filter(|l| !l.is_empty() && !is_multierror_header(l))
            .map(|l| l.chars().filter(|c| !c.is_control()).collect())
            .collect()
    }

    /// Maps to a [`VaultError`] whose text starts with `ctx` (the Vault path
    /// or KV path concerned), followed by Vault's own reason if it gave one.
    pub(super) fn into_error(self, ctx: &str) -> VaultError {
        let msgs = self.messages();
        match self {
            SendError::Status { code, .. } => {
                let text = if msgs.is_empty() {
                    ctx.to_string()
                } else {
                    format!("{ctx}: {}", msgs.join("; "))
                };
                VaultError::from_status(code, text)
            }
            SendError::Transport(t) => VaultError::Unavailable(format!("{ctx}: {t}")),
        }
    }
}

fn is_multierror_header(l: &str) -> bool {
    (l.ends_with("error occurred:") || l.ends_with("errors occurred:"))
        && l.split(' ')
            .next()
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

impl Vault {
    /// Executes `req` with this client's token; the body of a 2xx answer.
    pub(super) async fn send(&self, req: Req) -> Result<Zeroizing<Vec<u8>>, SendError> {
        let operation = operation(&req.method, &req.path);
        crate::metrics::time_vault(operation, self.send_timed(req)).await
    }

    async fn send_timed(&self, req: Req) -> Result<Zeroizing<Vec<u8>>, SendError> {
        let http = self.client.http();
        let merge_patch = req.merge_patch;
        let wrap = req.wrap;
        let mut r = req
            .with_middleware(self.client.middle())
            .request(http.base())
            .map_err(|e| SendError::Transport(e.to_string()))?;
        if merge_patch {
            let v = "application/merge-patch+json"
                .parse()
                .map_err(|_| SendError::Transport("bad header".into()))?;
            r.headers_mut().insert("content-type", v);
        }
        if let Some(ttl) = wrap {
            let v = ttl
                .to_string()
                .parse()
                .map_err(|_| SendError::Transport("bad header".into()))?;
            r.headers_mut().insert("x-vault-wrap-ttl", v);
        }
        match http.execute(r).await {
            Ok(resp) => Ok(Zeroizing::new(resp.into_body())),
            Err(rustify::errors::ClientError::ServerResponseError { code, content }) => {
                Err(SendError::Status {
                    code,
                    body: Zeroizing::new(content.unwrap_or_default()),
                })
            }
            Err(e) => Err(SendError::Transport(transport_text(&e))),
        }
    }

    /// [`Self::send`] for calls whose answer has no data we need.
    pub(super) async fn send_empty(&self, req: Req, ctx: &str) -> Result<(), VaultError> {
        self.send(req)
            .await
            .map(drop)
            .map_err(|e| e.into_error(ctx))
    }
}

/// A bounded class for a Vault request (the metrics label `operation`), from its method and its path
/// relative to `/v1/`. Mounts are configurable and may be nested, so the
/// class is taken from the first segment after the mount that names an
/// engine operation; KV paths after that segment are never looked at.
pub(super) fn operation(method: &RequestMethod, path: &str) -> &'static str {
    use RequestMethod as M;
    let path = path.trim_start_matches('/');
    match path {
        "sys/wrapping/wrap" => return "wrap",
        "sys/wrapping/unwrap" => return "unwrap",
        "sys/wrapping/lookup" => return "wrap_lookup",
        "sys/health" => return "sys_health",
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("auth/token/") {
        return match rest.split('/').next().unwrap_or("") {
            "create" | "create-orphan" => "token_create",
            "lookup" | "lookup-self" => "token_lookup",
            "renew" | "renew-self" => "token_renew",
            _ => "other",
        };
    }
    if path.starts_with("auth/") && path.ends_with("/login") {
        return "login";
    }
    for seg in path.split('/').skip(1) {
        let class = match (seg, method) {
            ("data", M::GET) => "kv_read",
            ("data", M::DELETE) => "kv_delete",
            ("data", _) => "kv_write",
            ("metadata", M::LIST) => "kv_list",
            ("metadata", M::DELETE) => "kv_delete",
            ("metadata", _) => "kv_metadata",
            ("delete" | "undelete" | "destroy", _) => "kv_delete",
            ("encrypt", _) => "transit_encrypt",
            ("decrypt", _) => "transit_decrypt",
            ("rewrap" | "keys" | "datakey", _) => "transit_other",
            ("code", _) => "totp",
            _ => continue,
        };
        return class;
    }
    "other"
}

/// Transport failures: rustify's own text is static ("Error sending HTTP
/// request"); the cause (connection refused, TLS, timeout) is what helps.
/// Neither carries a body; a reqwest error names the URL, which holds paths
/// and query (versions), never values.
fn transport_text(e: &rustify::errors::ClientError) -> String {
    use rustify::errors::ClientError as R;
    match e {
        R::RequestError { source, .. } | R::ResponseError { source } => {
            let mut text = e.to_string();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
        other => other.to_string(),
    }
}

/// The envelope of every Vault answer. Only what we read is declared, so
/// `wrap_info` of a wrapped answer.
#[derive(Deserialize)]
pub(super) struct RawWrapInfo {
    pub(super) token: SecretString,
    #[serde(default)]
    pub(super) accessor: String,
    pub(super) ttl: u64,
    #[serde(default)]
    pub(super) creation_time: String,
    #[serde(default)]
    pub(super) creation_path: String,
}

/// fields one server sends and another does not cannot break parsing.
#[derive(Deserialize)]
pub(super) struct Envelope<T> {
    pub(super) data: Option<T>,
    pub(super) wrap_info: Option<RawWrapInfo>,
}

/// Parses a Vault answer. A parse failure says which call, never why: a
/// serde message can quote the offending value.
pub(super) fn parse_envelope<T: DeserializeOwned>(
    body: &[u8],
    ctx: &str,
) -> Result<Envelope<T>, VaultError> {
    serde_json::from_slice(body)
        .map_err(|_| VaultError::Unavailable(format!("{ctx}: unexpected answer from Vault")))
}

/// The `data` of a Vault answer, which must be present.
pub(super) fn parse_data<T: DeserializeOwned>(body: &[u8], ctx: &str) -> Result<T, VaultError> {
    parse_envelope(body, ctx)?
        .data
        .ok_or_else(|| VaultError::Unavailable(format!("{ctx}: Vault's answer has no data")))
}

/// Names Vault restricts with `\w(([\w-.]+)?\w)?` (transit and TOTP keys),
/// and mount paths made of such segments. Checked before they become URL
/// segments: the URL library silently drops `.` and `..` segments.
pub(super) fn check_name(what: &str, s: &str) -> Result<(), VaultError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && word(b[b.len() - 1])
        && b.iter().all(|&c| word(c) || c == b'-' || c == b'.');
    if ok {
        Ok(())
    } else {
        Err(VaultError::Input(format!(
            "invalid {what}: use letters, digits, '_', '-' and '.', starting and ending with a letter, digit or '_' (at most 128)"
        )))
    }
}

/// A mount path (`transit`, `team/transit`); one trailing `/` is accepted.
pub(super) fn check_mount(mount: &str) -> Result<&str, VaultError> {
    let m = mount.strip_suffix('/').unwrap_or(mount);
    if m.is_empty() || m.len() > 256 {
        return Err(VaultError::Input("invalid mount path".into()));
    }
    for seg in m.split('/') {
        check_name("mount path", seg)?;
    }
    Ok(m)
}

/// Field names of a secret map: they appear in `Debug`, logs and replies,
/// so they must be printable.
pub(super) fn check_fields(data: &BTreeMap<String, SecretString>) -> Result<(), VaultError> {
    for k in data.keys() {
        if k.is_empty() {
            return Err(VaultError::Input("empty field name".into()));
        }
        if k.len() > 255 || k.chars().any(|c| c.is_control()) {
            return Err(VaultError::Input(
                "invalid field name: control characters or longer than 255 bytes".into(),
            ));
        }
    }
    Ok(())
}

/// Serialises a secret map for a request body (exposes the values only
/// into the body buffer).
pub(super) struct ExposedMap<'a>(pub(super) &'a BTreeMap<String, SecretString>);

impl Serialize for ExposedMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v.expose_secret())))
    }
}

/// A JSON object read into secret values: strings as they are, any other
/// JSON value as its compact JSON text (as `vault kv get -format=json`
/// shows it), so numbers and nested objects written by other tools survive.
pub(super) struct SecretMap(pub(super) BTreeMap<String, SecretString>);

impl<'de> Deserialize<'de> for SecretMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: BTreeMap<String, SecretValue> = BTreeMap::deserialize(d)?;
        Ok(SecretMap(m.into_iter().map(|(k, v)| (k, v.0)).collect()))
    }
}

struct SecretValue(SecretString);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretValueVisitor)
    }
}

struct SecretValueVisitor;

impl SecretValueVisitor {
    fn json<E: de::Error>(v: serde_json::Value) -> Result<SecretValue, E> {
        let text = Zeroizing::new(
            serde_json::to_string(&v).map_err(|_| E::custom("value not representable"))?,
        );
        Ok(SecretValue(SecretString::from(text.as_str())))
    }
}

impl<'de> Visitor<'de> for SecretValueVisitor {
    type Value = SecretValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretValue, E> {
        Ok(SecretValue(SecretString::from(v)))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretValue, E> {
        let v = Zeroizing::new(v);
        Ok(SecretValue(SecretString::from(v.as_str())))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SecretValue, E> {
        Ok(SecretValue(SecretString::from(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SecretValue, E> {
        Ok(SecretValue(SecretString::from(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SecretValue, E> {
        Ok(SecretValue(SecretString::from(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SecretValue, E> {
        Self::json(serde_json::Value::from(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<SecretValue, E> {
        Ok(SecretValue(SecretString::from("null")))
    }

    fn visit_none<E: de::Error>(self) -> Result<SecretValue, E> {
        self.visit_unit()
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<SecretValue, A::Error> {
        let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Self::json(v)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<SecretValue, A::Error> {
        let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Self::json(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_operations_are_classified_without_the_path() {
        use RequestMethod as M;
        let cases = [
            (M::GET, "secret/data/a/b", "kv_read"),
            (M::POST, "secret/data/a", "kv_write"),
            (M::PATCH, "team/kv/data/a", "kv_write"),
            (M::DELETE, "secret/data/a", "kv_delete"),
            (M::POST, "secret/destroy/a", "kv_delete"),
            (M::LIST, "secret/metadata/a/", "kv_list"),
            (M::GET, "secret/metadata/a", "kv_metadata"),
            (M::POST, "transit/encrypt/k", "transit_encrypt"),
            (M::POST, "transit/decrypt/k", "transit_decrypt"),
            (M::POST, "transit/keys/k/rotate", "transit_other"),
            (M::POST, "totp/code/alice", "totp"),
            (M::POST, "sys/wrapping/unwrap", "unwrap"),
            (M::POST, "auth/token/create/vaultgram-op", "token_create"),
            (M::POST, "auth/approle/login", "login"),
            (M::GET, "sys/mounts", "other"),
            // A KV path segment after `data` is never what decides.
            (M::GET, "secret/data/encrypt", "kv_read"),
        ];
        for (m, p, want) in cases {
            assert_eq!(operation(&m, p), want, "{p}");
        }
    }

    #[test]
    fn names_follow_vaults_generic_name_rule() {
        for ok in ["vaultgram", "k1", "a", "my-key.v2", "_x_"] {
            check_name("key", ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "-a",
            "a-",
            "a/b",
            "a b",
            "ä",
            &"k".repeat(129),
        ] {
            assert!(check_name("key", bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_mount("transit/").unwrap(), "transit");
        assert_eq!(check_mount("team/transit").unwrap(), "team/transit");
        for bad in ["", "/", "/transit", "a//b", "a/../b", "a/./b"] {
            assert!(check_mount(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vault_multierror_text_is_tidied() {
        let e = SendError::Status {
            code: 403,
            body: Zeroizing::new(
                r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#.into(),
            ),
        };
        assert_eq!(e.messages(), vec!["permission denied".to_string()]);
        let err = e.into_error("secret/x");
        assert!(matches!(err, VaultError::Denied(ref m) if m == "secret/x: permission denied"));
    }

    #[test]
    fn secret_map_renders_non_strings_as_compact_json() {
        let m: SecretMap =
            serde_json::from_str(r#"{"s":"x","n":5,"f":1.5,"b":true,"z":null,"o":{"a":[1,"2"]}}"#)
                .unwrap();
        let got: BTreeMap<&str, &str> =
            m.0.iter()
                .map(|(k, v)| (k.as_str(), v.expose_secret()))
                .collect();
        assert_eq!(got["s"], "x");
        assert_eq!(got["n"], "5");
        assert_eq!(got["f"], "1.5");
        assert_eq!(got["b"], "true");
        assert_eq!(got["z"], "null");
        assert_eq!(got["o"], r#"{"a":[1,"2"]}"#);
    }
}
