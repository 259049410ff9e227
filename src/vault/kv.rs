//! KV v2 with the Vault CLI's semantics (`vault kv get|put|patch|list|
//! delete|undelete|destroy|metadata get|metadata delete|rollback`).
//!
//! Paths are [`KvPath`]s, validated before they become URL segments (SPEC:
//! no `..`, empty segments, control characters or over-long paths). Values
//! are `SecretString`s; what Vault stores as a non-string JSON value (a
//! number written by another tool) comes back as its compact JSON text, as
//! `vault kv get -format=json` shows it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rustify::enums::RequestMethod;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::client::Vault;
use super::error::VaultError;
use super::http::{check_fields, parse_data, parse_envelope, ExposedMap, Req, SecretMap};
// Refused anywhere in a path: controls and the invisible characters that
// make a path look like another in a chat.
use crate::text::forbidden_char;

/// Longest accepted `MOUNT/PATH`, in bytes.
pub const MAX_PATH_BYTES: usize = 512;
/// Longest accepted path segment, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

// ---------------------------------------------------------------------------
// KvPath
// ---------------------------------------------------------------------------

/// A KV v2 location as the CLI takes it: `MOUNT/PATH` (`secret/panels/de1`
/// → mount `secret`, path `panels/de1`). A trailing `/` (or a bare mount)
/// makes it a directory, which only `kv list` accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KvPath {
    mount: String,
    path: String,
    dir: bool,
}

/// Why a KV path was refused. Nothing of the input is echoed except as
/// `U+XXXX` code points, so a control character cannot reach a log or chat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvPathError {
    #[error("invalid KV path: empty")]
    Empty,
    #[error("invalid KV path: {len} bytes, at most {MAX_PATH_BYTES}")]
    TooLong { len: usize },
    #[error("invalid KV path: segment {index} is {len} bytes, at most {MAX_SEGMENT_BYTES}")]
    SegmentTooLong { index: usize, len: usize },
    #[error("invalid KV path: empty segment")]
    EmptySegment,
    #[error("invalid KV path: '.' and '..' segments are not allowed")]
    DotSegment,
    #[error("invalid KV path: control or invisible character U+{0:04X}")]
    ControlChar(u32),
    #[error("invalid KV path: leading or trailing whitespace")]
    Whitespace,
    #[error("invalid KV path: mount name must be letters, digits, '_', '-' or '.'")]
    BadMount,
    #[error("invalid KV path: a secret path is needed after the mount")]
    MissingPath,
    #[error("invalid KV path: ends with '/'; only kv list takes a directory")]
    IsDirectory,
}

impl From<KvPathError> for VaultError {
    fn from(e: KvPathError) -> Self {
        VaultError::Input(e.to_string())
    }
}

impl KvPath {
    /// Parses `MOUNT/PATH` (or `MOUNT/DIR/`, or `MOUNT` for the mount's root).
    pub fn parse(s: &str) -> Result<KvPath, KvPathError> {
        if s.is_empty() {
            return Err(KvPathError::Empty);
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(KvPathError::TooLong { len: s.len() });
        }
        if let Some(c) = s.chars().find(|&c| forbidden_char(c)) {
            return Err(KvPathError::ControlChar(c as u32));
        }
        if s.trim() != s {
            return Err(KvPathError::Whitespace);
        }
        let (body, dir) = match s.strip_suffix('/') {
            Some(b) => (b, true),
            None => (s, false),
        };
        let mut segments = body.split('/');
        let mount = segments.next().unwrap_or_default();
        let rest: Vec<&str> = segments.collect();
        for (i, seg) in std::iter::once(mount)
            .chain(rest.iter().copied())
            .enumerate()
        {
            if seg.is_empty() {
                return Err(KvPathError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(KvPathError::DotSegment);
            }
            if seg.len() > MAX_SEGMENT_BYTES {
                return Err(KvPathError::SegmentTooLong {
                    index: i + 1,
                    len: seg.len(),
                });
            }
            if seg.trim() != seg {
                return Err(KvPathError::Whitespace);
            }
        }
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let m = mount.as_bytes();
        if !(word(m[0])
            && word(m[m.len() - 1])
            && m.iter().all(|&c| word(c) || c == b'-' || c == b'.'))
        {
            return Err(KvPathError::BadMount);
        }
        Ok(KvPath {
            mount: mount.to_string(),
            path: rest.join("/"),
            dir: dir || rest.is_empty(),
        })
    }

    /// A path under a mount known separately (e.g. `vault.kv_mount` from
    /// the config plus the agent record `bob`).
    pub fn new(mount: &str, path: &str) -> Result<KvPath, KvPathError> {
        KvPath::parse(&format!("{mount}/{path}"))
    }

    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The path inside the mount, without a trailing `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A directory: written with a trailing `/`, or the bare mount.
    pub fn is_dir(&self) -> bool {
        self.dir
    }

    /// The path of a secret (not a directory), for every op but `list`.
    pub fn secret(&self) -> Result<&str, KvPathError> {
        if self.path.is_empty() {
            Err(KvPathError::MissingPath)
        } else if self.dir {
            Err(KvPathError::IsDirectory)
        } else {
            Ok(&self.path)
        }
    }

    fn api(&self, kind: &str) -> Result<String, VaultError> {
        Ok(format!("{}/{kind}/{}", self.mount, self.secret()?))
    }
}

impl fmt::Display for KvPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mount)?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        if self.dir {
            f.write_str("/")?;
        }
        Ok(())
    }
}

impl FromStr for KvPath {
    type Err = KvPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvPath::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// The fields of a secret, by name. `Debug` shows names, never values.
pub type KvData = BTreeMap<String, SecretString>;

/// One version of a secret (`vault kv get`).
#[derive(Debug, Clone)]
pub struct KvSecret {
    pub data: KvData,
    pub version: u64,
    pub created_time: String,
    /// Set when a deletion is scheduled (`delete_version_after`); a version
    /// already deleted is an error, not a `KvSecret`.
    pub deletion_time: Option<String>,
    pub destroyed: bool,
    pub custom_metadata: BTreeMap<String, String>,
}

/// `vault kv metadata get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvMetadata {
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub cas_required: bool,
    pub delete_version_after: String,
    pub created_time: String,
    pub updated_time: String,
    pub versions: BTreeMap<u64, VersionMeta>,
    pub custom_metadata: BTreeMap<String, String>,
}

/// The state of one version in [`KvMetadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMeta {
    pub created_time: String,
    pub deletion_time: Option<String>,
    pub destroyed: bool,
}

impl VersionMeta {
    /// Soft-deleted now (a deletion time in the future is only scheduled).
    pub fn is_deleted(&self) -> bool {
        self.deletion_time.as_deref().is_some_and(is_past)
    }
}

impl KvMetadata {
    /// Errors unless `version` (None/0 = current) can be read: it exists,
    /// and is neither deleted nor destroyed.
    pub(super) fn check_readable(
        &self,
        path: &KvPath,
        version: Option<u64>,
    ) -> Result<(), VaultError> {
        let v = version.filter(|v| *v > 0).unwrap_or(self.current_version);
        match self.versions.get(&v) {
            None if version.is_none() => Err(VaultError::NotFound(format!("no secret at {path}"))),
            None => Err(VaultError::NotFound(format!("{path} has no version {v}"))),
            Some(m) if m.destroyed => Err(VaultError::NotFound(destroyed_msg(path, v))),
            Some(m) if m.is_deleted() => Err(VaultError::NotFound(deleted_msg(path, v))),
            Some(_) => Ok(()),
        }
    }
}

fn deleted_msg(path: &KvPath, v: u64) -> String {
    format!("{path} version {v} is deleted (kv undelete -versions={v} restores it)")
}

fn destroyed_msg(path: &KvPath, v: u64) -> String {
    format!("{path} version {v} is destroyed")
}

// ---------------------------------------------------------------------------
// Wire types (only the fields we read; see wrap.rs for why)
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct RawVersionMeta {
    #[serde(default)]
    created_time: String,
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawRead {
    data: Option<SecretMap>,
    metadata: Option<RawVersionMeta>,
}

/// A KV 404 body: `data` is null, `metadata` says why (deleted/destroyed).
/// The `data` field is not even declared, so no value can be read from it.
#[derive(Deserialize)]
struct RawReadMetaOnly {
    metadata: Option<RawVersionMeta>,
}

#[derive(Deserialize)]
struct RawMeta {
    #[serde(default)]
    cas_required: bool,
    #[serde(default)]
    created_time: String,
    #[serde(default)]
    current_version: u64,
    #[serde(default)]
    delete_version_after: String,
    #[serde(default)]
    max_versions: u64,
    #[serde(default)]
    oldest_version: u64,
    #[serde(default)]
    updated_time: String,
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    versions: BTreeMap<String, RawVersionMeta>,
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct RawMountConfig {
    #[serde(default)]
    max_versions: u64,
}

#[derive(Serialize)]
struct WriteBody<'a> {
    data: ExposedMap<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<CasOption>,
}

#[derive(Serialize)]
struct CasOption {
    cas: u64,
}

#[derive(Serialize)]
struct Versions<'a> {
    versions: &'a [u64],
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn check_versions(versions: &[u64]) -> Result<(), VaultError> {
    if versions.is_empty() || versions.contains(&0) {
        return Err(VaultError::Input(
            "versions: give one or more version numbers (1, 2, …)".into(),
        ));
    }
    Ok(())
}

fn check_data(data: &KvData) -> Result<(), VaultError> {
    if data.is_empty() {
        return Err(VaultError::Input(
            "no data: give at least one key=value".into(),
        ));
    }
    check_fields(data)
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

impl Vault {
    /// The `GET data/PATH[?version=N]` request, shared with the wrapped read.
    pub(super) fn kv_read_request(
        &self,
        path: &KvPath,
        version: Option<u64>,
    ) -> Result<Req, VaultError> {
        let mut req = Req::new(RequestMethod::GET, path.api("data")?);
        if let Some(v) = version {
            req = req.query(format!("version={v}"));
        }
        Ok(req)
    }

    /// `vault kv get [-version=N] MOUNT/PATH`. A deleted or destroyed version
    /// is a NotFound that says so (the CLI shows the metadata without data).
    pub async fn kv_get(
        &self,
        path: &KvPath,
        version: Option<u64>,
    ) -> Result<KvSecret, VaultError> {
        let ctx = path.to_string();
        let req = self.kv_read_request(path, version)?;
        match self.send(req).await {
            Ok(body) => {
                let r: RawRead = parse_data(&body, &ctx)?;
                let meta = r.metadata.unwrap_or_default();
                let Some(data) = r.data else {
                    return Err(gone(path, version, Some(meta)));
                };
                Ok(KvSecret {
                    data: data.0,
                    version: meta.version,
                    created_time: meta.created_time,
                    deletion_time: non_empty(meta.deletion_time),
                    destroyed: meta.destroyed,
                    custom_metadata: meta.custom_metadata.unwrap_or_default(),
                })
            }
            Err(e) if e.code() == Some(404) => {
                let meta = e
                    .body()
                    .and_then(|b| parse_envelope::<RawReadMetaOnly>(b.as_bytes(), &ctx).ok())
                    .and_then(|env| env.data)
                    .and_then(|d| d.metadata);
                Err(gone(path, version, meta))
            }
            Err(e) => Err(e.into_error(&ctx)),
        }
    }

    /// `vault kv put [-cas=N] MOUNT/PATH k=v …`: a new version; its number.
    /// `cas = Some(0)` writes only if the secret does not exist yet; a
    /// mismatch is a Conflict. Refused (`HistoryFull`) when Vault would
    /// drop a version that is not destroyed to make room
    /// ([`Vault::kv_history_guard`]).
    pub async fn kv_put(
        &self,
        path: &KvPath,
        data: &KvData,
        cas: Option<u64>,
    ) -> Result<u64, VaultError> {
        check_data(data)?;
        let cas = self.kv_history_guard(path, cas).await?;
        self.kv_put_unguarded(path, data, Some(cas)).await
    }

    /// A write that may push old versions out of the history: only for
    /// the userbot's own session, whose history is nobody's data and which
    /// is saved every few minutes.
    pub async fn kv_put_unguarded(
        &self,
        path: &KvPath,
        data: &KvData,
        cas: Option<u64>,
    ) -> Result<u64, VaultError> {
        check_data(data)?;
        let ctx = path.to_string();
        let req = Req::new(RequestMethod::POST, path.api("data")?).json(&WriteBody {
            data: ExposedMap(data),
            options: cas.map(|cas| CasOption { cas }),
        })?;
        let body = self.send(req).await.map_err(|e| e.into_error(&ctx))?;
        let meta: RawVersionMeta = parse_data(&body, &ctx)?;
        Ok(meta.version)
    }

    /// `vault kv patch MOUNT/PATH k=v …`: merges into the latest version
    /// with HTTP PATCH (`application/merge-patch+json`) as the CLI does;
    /// NotFound if there is no readable latest version. A server without
    /// PATCH (405, Vault < 1.9) gets the CLI's fallback: read, merge, write
    /// with cas = the version read, so a concurrent write is a Conflict.
    pub async fn kv_patch(&self, path: &KvPath, data: &KvData) -> Result<u64, VaultError> {
        check_data(data)?;
        let ctx = path.to_string();
        let cas = self.kv_history_guard(path, None).await?;
        let req = Req::new(RequestMethod::PATCH, path.api("data")?)
            .json(&WriteBody {
                data: ExposedMap(data),
                options: Some(CasOption { cas }),
            })?
            .merge_patch();
        match self.send(req).await {
            Ok(body) => Ok(parse_data::<RawVersionMeta>(&body, &ctx)?.version),
            Err(e) if e.code() == Some(404) => {
                // OpenBao's PATCH 404 carries the latest version's metadata
                // directly in `data` when that version is deleted/destroyed.
                let meta = e
                    .body()
                    .and_then(|b| parse_envelope::<RawVersionMeta>(b.as_bytes(), &ctx).ok())
                    .and_then(|env| env.data);
                Err(gone(path, None, meta))
            }
            Err(e) if e.code() == Some(405) => self.kv_patch_rmw(path, data).await,
            Err(e) => Err(e.into_error(&ctx)),
        }
    }

    async fn kv_patch_rmw(&self, path: &KvPath, data: &KvData) -> Result<u64, VaultError> {
        let current = self.kv_get(path, None).await?;
        let mut merged = current.data;
        merged.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.kv_put(path, &merged, Some(current.version)).await
    }

    /// Decides whether a new version of `path` may be written: Vault keeps
    /// the newest `max_versions` (the key's, else the mount's, else 10) and
    /// silently destroys older ones, which is the effect `/kv destroy`
    /// needs a second admin for. So a write that would push out a version
    /// that is not destroyed is refused. Returns the check-and-set value to
    /// write with: the caller's, or the version just examined, so that the
    /// check and the write are one atomic step.
    pub async fn kv_history_guard(
        &self,
        path: &KvPath,
        cas: Option<u64>,
    ) -> Result<u64, VaultError> {
        let meta = match self.kv_metadata_get(path).await {
            Err(VaultError::NotFound(_)) => return Ok(cas.unwrap_or(0)),
            r => r?,
        };
        let max = if meta.max_versions > 0 {
            meta.max_versions
        } else {
            self.kv_mount_max_versions(path.mount()).await?
        };
        // After the write the newest is current + 1; Vault then drops every
        // version at or below (current + 1) − max.
        let cutoff = (meta.current_version + 1).saturating_sub(max);
        if let Some((v, _)) = meta
            .versions
            .iter()
            .find(|(v, m)| **v <= cutoff && !m.destroyed)
        {
            return Err(VaultError::HistoryFull(format!(
                "writing {path} would drop version {v} for good (the secret keeps {max} versions): destroy version {v} first (/kv destroy -versions={v} {path}, which needs a second admin) or ask a Vault operator to raise max_versions"
            )));
        }
        Ok(cas.unwrap_or(meta.current_version))
    }

    /// The mount's `max_versions` (`MOUNT/config`; 0 there means Vault's
    /// default of 10). Cached per process for a minute: it changes only
    /// when a Vault operator reconfigures the mount.
    async fn kv_mount_max_versions(&self, mount: &str) -> Result<u64, VaultError> {
        use std::sync::Mutex;
        use std::time::{Duration, Instant};
        type Cache = Mutex<BTreeMap<String, (Instant, u64)>>;
        static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
        const FRESH: Duration = Duration::from_secs(60);
        let cache = CACHE.get_or_init(Default::default);
        let key = format!("{}|{mount}", self.addr);
        if let Some((at, max)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if at.elapsed() < FRESH {
                return Ok(*max);
            }
        }
        let ctx = format!("{mount}/config");
        let body = self
            .send(Req::new(RequestMethod::GET, ctx.clone()))
            .await
            .map_err(|e| e.into_error(&ctx))?;
        let c: RawMountConfig = parse_data(&body, &ctx)?;
        let max = if c.max_versions > 0 {
            c.max_versions
        } else {
            10
        };
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), max));
        Ok(max)
    }

    /// `vault kv list MOUNT/DIR/`: the keys below (sub-directories end with
    /// `/`). Nothing there is NotFound, as the CLI's "No value found".
    pub async fn kv_list(&self, path: &KvPath) -> Result<Vec<String>, VaultError> {
        let shown = if path.path().is_empty() {
            format!("{}/", path.mount())
        } else {
            format!("{}/{}/", path.mount(), path.path())
        };
        let api = if path.path().is_empty() {
            format!("{}/metadata/", path.mount())
        } else {
            format!("{}/metadata/{}/", path.mount(), path.path())
        };
        match self.send(Req::new(RequestMethod::LIST, api)).await {
            Ok(body) => Ok(parse_data::<RawList>(&body, &shown)?.keys),
            Err(e) if e.code() == Some(404) => {
                Err(VaultError::NotFound(format!("nothing to list at {shown}")))
            }
            Err(e) => Err(e.into_error(&shown)),
        }
    }

    /// `vault kv delete [-versions=…] MOUNT/PATH`: soft-deletes the latest
    /// version (None) or the given versions; `undelete` restores them.
    pub async fn kv_delete(
        &self,
        path: &KvPath,
        versions: Option<&[u64]>,
    ) -> Result<(), VaultError> {
        let ctx = path.to_string();
        let req = match versions {
            None => Req::new(RequestMethod::DELETE, path.api("data")?),
            Some(v) => {
                check_versions(v)?;
                Req::new(RequestMethod::POST, path.api("delete")?)
                    .json(&Versions { versions: v })?
            }
        };
        self.send_empty(req, &ctx).await
    }

    /// `vault kv undelete -versions=… MOUNT/PATH`.
    pub async fn kv_undelete(&self, path: &KvPath, versions: &[u64]) -> Result<(), VaultError> {
        check_versions(versions)?;
        let req =
            Req::new(RequestMethod::POST, path.api("undelete")?).json(&Versions { versions })?;
        self.send_empty(req, &path.to_string()).await
    }

    /// `vault kv destroy -versions=… MOUNT/PATH`: permanent.
    pub async fn kv_destroy(&self, path: &KvPath, versions: &[u64]) -> Result<(), VaultError> {
        check_versions(versions)?;
        let req =
            Req::new(RequestMethod::POST, path.api("destroy")?).json(&Versions { versions })?;
        self.send_empty(req, &path.to_string()).await
    }

    /// `vault kv metadata get MOUNT/PATH`: version history, no values.
    pub async fn kv_metadata_get(&self, path: &KvPath) -> Result<KvMetadata, VaultError> {
        let ctx = path.to_string();
        let body = match self
            .send(Req::new(RequestMethod::GET, path.api("metadata")?))
            .await
        {
            Ok(body) => body,
            Err(e) if e.code() == Some(404) => {
                return Err(VaultError::NotFound(format!("no secret at {path}")))
            }
            Err(e) => return Err(e.into_error(&ctx)),
        };
        let m: RawMeta = parse_data(&body, &ctx)?;
        Ok(KvMetadata {
            current_version: m.current_version,
            oldest_version: m.oldest_version,
            max_versions: m.max_versions,
            cas_required: m.cas_required,
            delete_version_after: m.delete_version_after,
            created_time: m.created_time,
            updated_time: m.updated_time,
            versions: m
                .versions
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.parse().ok()?,
                        VersionMeta {
                            created_time: v.created_time,
                            deletion_time: non_empty(v.deletion_time),
                            destroyed: v.destroyed,
                        },
                    ))
                })
                .collect(),
            custom_metadata: m.custom_metadata.unwrap_or_default(),
        })
    }

    /// `vault kv metadata delete MOUNT/PATH`: every version and the history.
    pub async fn kv_metadata_delete(&self, path: &KvPath) -> Result<(), VaultError> {
        let req = Req::new(RequestMethod::DELETE, path.api("metadata")?);
        self.send_empty(req, &path.to_string()).await
    }

    /// `vault kv rollback -version=N MOUNT/PATH`, as the CLI does it: reads
    /// version N and writes its data as a new version with cas = the current
    /// version (a concurrent write makes it a Conflict). Refused for a
    /// deleted or destroyed N. Returns the new version.
    pub async fn kv_rollback(&self, path: &KvPath, version: u64) -> Result<u64, VaultError> {
        if version == 0 {
            return Err(VaultError::Input(
                "rollback needs -version=N with N ≥ 1".into(),
            ));
        }
        let meta = self.kv_metadata_get(path).await?;
        if version > meta.current_version {
            return Err(VaultError::Invalid(format!(
                "{path}: cannot roll back to version {version}, the current version is {}",
                meta.current_version
            )));
        }
        meta.check_readable(path, Some(version))
            .map_err(|e| match e {
                VaultError::NotFound(m) => VaultError::NotFound(format!("cannot roll back: {m}")),
                other => other,
            })?;
        let old = self.kv_get(path, Some(version)).await?;
        self.kv_put(path, &old.data, Some(meta.current_version))
            .await
    }
}

/// The NotFound for a read that found no data, saying why when the
/// metadata tells (deleted or destroyed version).
fn gone(path: &KvPath, asked: Option<u64>, meta: Option<RawVersionMeta>) -> VaultError {
    if let Some(m) = meta.filter(|m| m.version > 0) {
        if m.destroyed {
            return VaultError::NotFound(destroyed_msg(path, m.version));
        }
        if !m.deletion_time.is_empty() {
            return VaultError::NotFound(deleted_msg(path, m.version));
        }
    }
    match asked.filter(|v| *v > 0) {
        Some(v) => VaultError::NotFound(format!("{path} has no version {v}")),
        None => VaultError::NotFound(format!("no secret at {path}")),
    }
}

/// Whether an RFC 3339 UTC time (`2026-11-21T23:11:03.33Z`, as Vault writes
/// it) is now or earlier, to the second. Compared as text against the
/// current time in the same layout; an unreadable time counts as past, so a
/// doubtful version is treated as deleted rather than wrapped.
fn is_past(ts: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    is_at_or_before(ts, now)
}

fn is_at_or_before(ts: &str, now_unix: u64) -> bool {
    match ts.get(..19) {
        Some(head) if ts.is_ascii() => head <= rfc3339_seconds(now_unix).as_str(),
        _ => true,
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for a Unix time: the prefix every Vault
/// timestamp shares, so string comparison orders them.
fn rfc3339_seconds(unix: u64) -> String {
    let mut s = crate::clock::rfc3339_secs(unix);
    s.pop(); // the trailing 'Z'
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<KvPath, KvPathError> {
        KvPath::parse(s)
    }

    #[test]
    fn parses_like_the_cli() {
        let k = p("secret/panels/de1").unwrap();
        assert_eq!(
            (k.mount(), k.path(), k.is_dir()),
            ("secret", "panels/de1", false)
        );
        assert_eq!(k.to_string(), "secret/panels/de1");
        assert_eq!(k.secret().unwrap(), "panels/de1");

        let d = p("secret/app/keys/").unwrap();
        assert_eq!((d.path(), d.is_dir()), ("app/keys", true));
        assert_eq!(d.to_string(), "secret/app/keys/");
        assert_eq!(d.secret(), Err(KvPathError::IsDirectory));

        for root in ["secret", "secret/"] {
            let r = p(root).unwrap();
            assert_eq!((r.mount(), r.path(), r.is_dir()), ("secret", "", true));
            assert_eq!(r.to_string(), "secret/");
            assert_eq!(r.secret(), Err(KvPathError::MissingPath));
        }
        assert_eq!(
            KvPath::new("secret", "telegram").unwrap(),
            p("secret/telegram").unwrap()
        );
        // Spaces inside a segment and non-ASCII are Vault-legal.
        assert_eq!(
            p("secret/my panel/de-1 ü").unwrap().path(),
            "my panel/de-1 ü"
        );
    }

    #[test]
    fn refuses_what_spec_forbids() {
        use KvPathError::*;
        let cases: &[(&str, KvPathError)] = &[
            ("", Empty),
            ("/secret/x", EmptySegment),
            ("secret//x", EmptySegment),
            ("secret/x//", EmptySegment),
            ("//", EmptySegment),
            ("secret/../x", DotSegment),
            ("secret/./x", DotSegment),
            ("secret/x/..", DotSegment),
            ("../secret", DotSegment),
            ("secret/x\u{7}", ControlChar(7)),
            ("secret/x\ny", ControlChar(10)),
            ("secret/\u{202E}x", ControlChar(0x202E)),
            ("secret/\u{200B}x", ControlChar(0x200B)),
            ("secret/x\u{85}", ControlChar(0x85)),
            (" secret/x", Whitespace),
            ("secret/x ", Whitespace),
            ("secret/ x/y", Whitespace),
            ("sec ret/x", BadMount),
            ("-secret/x", BadMount),
            ("sécret/x", BadMount),
        ];
        for (input, want) in cases {
            assert_eq!(&p(input).unwrap_err(), want, "{input:?}");
        }
        let long = format!("secret/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(p(&long).unwrap_err(), TooLong { len: long.len() });
        let seg = format!("secret/{}/x", "a".repeat(MAX_SEGMENT_BYTES + 1));
        assert_eq!(p(&seg).unwrap_err(), SegmentTooLong { index: 2, len: 256 });
        p(&format!("secret/{}", "a".repeat(MAX_SEGMENT_BYTES))).unwrap();
    }

    #[test]
    fn errors_never_echo_control_characters() {
        let e = p("secret/\u{1b}[31mred").unwrap_err();
        let text = e.to_string();
        assert_eq!(
            text,
            "invalid KV path: control or invisible character U+001B"
        );
        assert!(!text.chars().any(|c| c.is_control()));
        assert!(VaultError::from(e).kind() == crate::error::ErrorKind::Invalid);
    }

    #[test]
    fn deletion_time_comparison() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00");
        assert_eq!(rfc3339_seconds(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(rfc3339_seconds(1_795_302_766), "2026-11-21T23:12:46");
        let now = 1_795_302_766;
        assert!(is_at_or_before("2026-11-21T23:12:46.9Z", now));
        assert!(is_at_or_before("2025-01-01T00:00:00Z", now));
        assert!(!is_at_or_before("2026-11-21T23:12:47Z", now));
        assert!(!is_at_or_before("2099-01-01T00:00:00.123456789Z", now));
        assert!(is_at_or_before("garbage", now));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_strings_never_panic_and_accepted_paths_are_clean(s in any::<String>()) {
            check_accepted(&s);
        }

        #[test]
        fn path_like_strings_never_panic_and_accepted_paths_are_clean(
            s in r"[a-z./ \t\u{0}\u{7f}\u{202e}-]{0,40}"
        ) {
            check_accepted(&s);
        }
    }

    fn check_accepted(s: &str) {
        if let Ok(k) = KvPath::parse(s) {
            let shown = k.to_string();
            let body = shown.strip_suffix('/').unwrap_or(&shown);
            for seg in body.split('/') {
                assert!(!seg.is_empty(), "empty segment accepted: {s:?}");
                assert!(seg != ".." && seg != ".", "dot segment accepted: {s:?}");
                assert!(seg.len() <= MAX_SEGMENT_BYTES);
            }
            assert!(
                !shown.chars().any(forbidden_char),
                "control char accepted: {s:?}"
            );
            assert!(s.len() <= MAX_PATH_BYTES);
            // Display round-trips.
            assert_eq!(KvPath::parse(&shown).unwrap(), k);
        }
    }
}
