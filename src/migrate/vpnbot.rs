//! vpnbot's `managed-secrets.json`, in (`import vpnbot`) and out
//! (`export mtproxy`).
//!
//! The document (SPEC.md, "Migration"):
//!
//! ```json
//! {"generation": N, "managed_by": "vpn-bot", "version": 1,
//!  "secrets": [{"secret": "<32 hex>", "fingerprint": "<16 hex>",
//!               "owner_user_id": N, "access_id": N}, …],
//!  "runtime_secrets": [… = secrets, or the one empty-placeholder entry]}
//! ```
//!
//! written as Python's `json.dumps(doc, indent=2, sort_keys=True,
//! ensure_ascii=False) + "\n"`, entries sorted by `(fingerprint, secret)`
//! and de-duplicated by fingerprint.
//!
//! Storage (under `vault.kv_mount`):
//!
//! - `vaultgram/mtproto/admin/<owner_user_id>`: one user secret, in the
//!   record format of `/mtproto issue` (`secret`, `fingerprint`,
//!   `owner = "admin"`, `issued_by = "import:vpnbot"`, `issued_at`) plus
//!   `owner_user_id` and, when known, `access_id`.
//! - `vaultgram/mtproxy/placeholder`: the `empty-placeholder` runtime entry
//!   (`secret`, `fingerprint`, `purpose`), which is not a user secret.
//! - `vaultgram/mtproxy/state`: the document's `generation`.
//!
//! The export reads every live secret under `vaultgram/mtproto/*/*` (admin's
//! and every agent's users: one proxy serves them all).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::{
    is_hex, parse_json, read_input, repeated, same_field, same_secret, store, ImportOptions,
    MigrateError, Reporter, RowOutcome, Session, Summary,
};
use crate::clock::now_rfc3339;
use crate::ids::{hex, random};
use crate::records::agent::RESERVED_OWNER;
use crate::records::field;
use crate::records::mtproto::{self, fingerprint};
use crate::records::mtproxy::{PLACEHOLDER_PATH, STATE_PATH};
use crate::vault::kv::KvData;
use crate::vault::VaultError;

/// The fingerprint and purpose of vpnbot's placeholder runtime entry.
pub const PLACEHOLDER: &str = "empty-placeholder";
/// `managed_by` of vpnbot's document.
pub const MANAGED_BY: &str = "vpn-bot";
/// The only document `version` there is.
pub const VERSION: u64 = 1;
/// `issued_by` of imported secrets.
pub const ISSUED_BY: &str = "import:vpnbot";

// ---------------------------------------------------------------------------
// Reading the document
// ---------------------------------------------------------------------------

/// Every field is taken raw, so that a value of the wrong type is reported
/// by name (serde_json's own messages may quote the value).
#[derive(Deserialize)]
struct RawDoc<'a> {
    #[serde(borrow, default)]
    version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    generation: Option<&'a RawValue>,
    #[serde(borrow, default)]
    managed_by: Option<&'a RawValue>,
    #[serde(borrow, default)]
    secrets: Option<&'a RawValue>,
    #[serde(borrow, default)]
    runtime_secrets: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawEntry<'a> {
    #[serde(borrow, default)]
    secret: Option<&'a RawValue>,
    #[serde(borrow, default)]
    fingerprint: Option<&'a RawValue>,
    #[serde(borrow, default)]
    owner_user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    access_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    purpose: Option<&'a RawValue>,
}

fn is_object(v: &RawValue) -> bool {
    v.get().trim_start().starts_with('{')
}

fn raw_u64(v: &RawValue) -> Option<u64> {
    serde_json::from_str(v.get()).ok()
}

fn raw_i64(v: &RawValue) -> Option<i64> {
    serde_json::from_str(v.get()).ok()
}

/// A non-secret string field.
fn raw_str(v: &RawValue) -> Option<String> {
    serde_json::from_str(v.get()).ok()
}

fn raw_secret(v: &RawValue) -> Option<SecretString> {
    serde_json::from_str(v.get()).ok()
}

fn present(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|v| v.get() != "null")
}

/// One valid user secret of the document.
struct Entry {
    owner_user_id: u64,
    access_id: Option<i64>,
    secret: SecretString,
    fingerprint: String,
}

/// A row that cannot be imported: who it is about (never a value) and why.
struct Rejection {
    who: String,
    why: String,
}

/// The document, validated as a whole; rows keep their own verdicts.
struct Document {
    generation: u64,
    rows: Vec<Result<Entry, Rejection>>,
    placeholder: Option<SecretString>,
}

/// The checks every stored MTProto secret passes: 32 hex characters.
fn check_secret(s: &str) -> Result<(), String> {
    if s.len() != 32 {
        return Err(format!(
            "secret must be 32 hex characters, it has {}",
            s.chars().count()
        ));
    }
    if !is_hex(s, 32) {
        return Err("secret must be 32 hex characters, it has a non-hex character".into());
    }
    Ok(())
}

fn entry(raw: &RawValue) -> Result<Entry, Rejection> {
    let unknown = |why: &str| Rejection {
        who: "owner id unknown".into(),
        why: why.into(),
    };
    if !is_object(raw) {
        return Err(unknown("not a JSON object"));
    }
    let e: RawEntry = serde_json::from_str(raw.get())
        .map_err(|_| unknown("malformed entry (a field appears twice?)"))?;
    let owner_user_id = match present(e.owner_user_id) {
        None => {
            return Err(Rejection {
                who: "owner id missing".into(),
                why: "owner_user_id is missing: every user secret needs its owner".into(),
            })
        }
        Some(v) => match raw_u64(v).filter(|n| *n > 0) {
            Some(n) => n,
            None => {
                return Err(Rejection {
                    who: "owner id invalid".into(),
                    why: "owner_user_id must be a positive integer".into(),
                })
            }
        },
    };
    let reject = |why: String| Rejection {
        who: format!("owner {owner_user_id}"),
        why,
    };
    let fp_field = present(e.fingerprint).map(raw_str);
    let purpose = present(e.purpose).and_then(raw_str);
    if matches!(&fp_field, Some(Some(f)) if f == PLACEHOLDER)
        || purpose.as_deref() == Some(PLACEHOLDER)
    {
        return Err(reject(
            "the empty-placeholder entry is not a user secret (it belongs in runtime_secrets only)"
                .into(),
        ));
    }
    let secret = match present(e.secret) {
        None => return Err(reject("secret is missing".into())),
        Some(v) => raw_secret(v).ok_or_else(|| reject("secret is not a string".into()))?,
    };
    check_secret(secret.expose_secret()).map_err(reject)?;
    let fp = fingerprint(secret.expose_secret());
    match fp_field {
        None => return Err(reject("fingerprint is missing".into())),
        Some(None) => return Err(reject("fingerprint is not a string".into())),
        Some(Some(f)) if f != fp => {
            return Err(reject(
                "fingerprint does not match the secret (it must be the first 16 hex characters \
                 of the SHA-256 of the secret)"
                    .into(),
            ))
        }
        Some(Some(_)) => {}
    }
    let access_id = match present(e.access_id) {
        None => None,
        Some(v) => Some(raw_i64(v).ok_or_else(|| reject("access_id must be an integer".into()))?),
    };
    Ok(Entry {
        owner_user_id,
        access_id,
        secret,
        fingerprint: fp,
    })
}

/// A list field's items, raw.
fn list<'a>(
    v: Option<&'a RawValue>,
    name: &str,
    key: &str,
) -> Result<Option<Vec<&'a RawValue>>, MigrateError> {
    match present(v) {
        None => Ok(None),
        Some(v) => serde_json::from_str::<Vec<&RawValue>>(v.get())
            .map(Some)
            .map_err(|_| MigrateError::Input(format!("{name}: `{key}` must be a list"))),
    }
}

/// Validates everything but the rows; any problem here stops the import
/// before Vault is touched.
fn parse(text: &str, name: &str) -> Result<Document, MigrateError> {
    let bad = |m: String| MigrateError::Input(m);
    let doc: RawDoc = parse_json(
        text,
        name,
        "not a vpnbot managed-secrets document (expected a JSON object)",
    )
    .map_err(bad)?;
    if !text.trim_start().starts_with('{') {
        return Err(bad(format!(
            "{name}: not a vpnbot managed-secrets document (expected a JSON object)"
        )));
    }
    match present(doc.version).map(raw_u64) {
        Some(Some(VERSION)) => {}
        None => {
            return Err(bad(format!(
                "{name}: `version` is missing (vpnbot writes 1)"
            )))
        }
        Some(_) => {
            return Err(bad(format!(
                "{name}: unsupported `version` (only version {VERSION} is known)"
            )))
        }
    }
    if let Some(m) = present(doc.managed_by) {
        if raw_str(m).as_deref() != Some(MANAGED_BY) {
            return Err(bad(format!(
                "{name}: `managed_by` is not \"{MANAGED_BY}\": not a vpnbot document"
            )));
        }
    }
    let generation = match present(doc.generation) {
        None => return Err(bad(format!("{name}: `generation` is missing"))),
        Some(g) => raw_u64(g).ok_or_else(|| {
            bad(format!(
                "{name}: `generation` must be a non-negative integer"
            ))
        })?,
    };
    let secrets = list(doc.secrets, name, "secrets")?
        .ok_or_else(|| bad(format!("{name}: `secrets` is missing")))?;
    let runtime = list(doc.runtime_secrets, name, "runtime_secrets")?.unwrap_or_default();
    let mut placeholder = None;
    for raw in runtime {
        if !is_object(raw) {
            return Err(bad(format!(
                "{name}: `runtime_secrets` holds something that is not an object"
            )));
        }
        let e: RawEntry = serde_json::from_str(raw.get())
            .map_err(|_| bad(format!("{name}: a malformed `runtime_secrets` entry")))?;
        let is_placeholder = present(e.fingerprint).and_then(raw_str).as_deref()
            == Some(PLACEHOLDER)
            || present(e.purpose).and_then(raw_str).as_deref() == Some(PLACEHOLDER);
        if !is_placeholder {
            // A user secret: `secrets` holds the same entries.
            continue;
        }
        if placeholder.is_some() {
            return Err(bad(format!(
                "{name}: `runtime_secrets` holds more than one {PLACEHOLDER} entry"
            )));
        }
        let secret = present(e.secret).and_then(raw_secret).ok_or_else(|| {
            bad(format!(
                "{name}: the {PLACEHOLDER} entry of `runtime_secrets` has no secret"
            ))
        })?;
        check_secret(secret.expose_secret())
            .map_err(|m| bad(format!("{name}: the {PLACEHOLDER} entry: {m}")))?;
        placeholder = Some(secret);
    }
    Ok(Document {
        generation,
        rows: secrets.into_iter().map(entry).collect(),
        placeholder,
    })
}

// ---------------------------------------------------------------------------
// import vpnbot
// ---------------------------------------------------------------------------

impl Entry {
    /// The `/mtproto issue` record plus vpnbot's ids.
    fn record(&self) -> KvData {
        let mut d = KvData::new();
        d.insert(
            "secret".into(),
            SecretString::from(self.secret.expose_secret().to_string()),
        );
        let plain = [
            ("fingerprint", self.fingerprint.clone()),
            ("owner", RESERVED_OWNER.to_string()),
            ("issued_by", ISSUED_BY.to_string()),
            ("issued_at", now_rfc3339()),
            ("owner_user_id", self.owner_user_id.to_string()),
        ];
        for (k, v) in plain {
            d.insert(k.into(), SecretString::from(v));
        }
        if let Some(a) = self.access_id {
            d.insert("access_id".into(), SecretString::from(a.to_string()));
        }
        d
    }

    /// How a stored record differs from this entry (`None`: it holds the
    /// same secret with the same ids).
    fn differs(&self, stored: &KvData) -> Option<String> {
        if !same_secret(stored, "secret", self.secret.expose_secret()) {
            return Some("a different secret is stored for this owner".into());
        }
        let owner = self.owner_user_id.to_string();
        let access = self.access_id.map(|a| a.to_string());
        if !same_field(stored, "owner_user_id", Some(&owner))
            || !same_field(stored, "access_id", access.as_deref())
        {
            return Some("the same secret is stored with other owner_user_id/access_id".into());
        }
        None
    }
}

/// What `import vpnbot` does with one row, decided before Vault is touched.
struct Step<'a> {
    /// The row's number, from 1.
    n: usize,
    who: String,
    action: Action<'a>,
}

enum Action<'a> {
    /// Store this secret (unless Vault already holds it).
    Store(&'a Entry),
    /// Only report: rejected, or a repeat of an earlier row's owner.
    Report(RowOutcome, String),
}

/// The rows in order; a file naming one owner twice cannot store two
/// secrets for it (the same one again is unchanged, another is rejected).
fn plan(doc: &Document) -> Vec<Step<'_>> {
    // owner_user_id → (first row, fingerprint)
    let mut seen: HashMap<u64, (usize, &str)> = HashMap::new();
    let mut steps = Vec::with_capacity(doc.rows.len());
    for (i, row) in doc.rows.iter().enumerate() {
        let n = i + 1;
        let e = match row {
            Err(r) => {
                steps.push(Step {
                    n,
                    who: r.who.clone(),
                    action: Action::Report(RowOutcome::Rejected(r.why.clone()), String::new()),
                });
                continue;
            }
            Ok(e) => e,
        };
        let who = format!("owner {}", e.owner_user_id);
        let action = match seen.get(&e.owner_user_id) {
            Some((first, fp)) => {
                let (outcome, detail) = repeated(
                    *first,
                    *fp == e.fingerprint,
                    &format!("owner_user_id {}", e.owner_user_id),
                    "secret",
                    "owner",
                );
                Action::Report(outcome, detail)
            }
            None => {
                seen.insert(e.owner_user_id, (n, &e.fingerprint));
                Action::Store(e)
            }
        };
        steps.push(Step { n, who, action });
    }
    steps
}

/// `vaultgram import vpnbot FILE`: every valid user secret to
/// `mtproto/admin/<owner_user_id>`, then the placeholder and the
/// generation. Per-row lines on stderr; the returned summary is what the
/// binary prints last.
pub async fn import(
    session: &Session,
    file: &Path,
    opts: ImportOptions,
) -> Result<Summary, MigrateError> {
    let text = read_input(file)?;
    let doc = parse(&text, &file.display().to_string())?;
    drop(text);
    let mut rep = Reporter::new(doc.rows.len(), "vpnbot", opts);
    let aborted = |at: String, error: VaultError, summary: Summary| MigrateError::Aborted {
        at,
        error,
        summary,
    };
    for Step { n, who, action } in plan(&doc) {
        let e = match action {
            Action::Report(outcome, detail) => {
                rep.row(n, &who, &outcome, &detail);
                continue;
            }
            Action::Store(e) => e,
        };
        let result =
            match session.path(&mtproto::path(RESERVED_OWNER, &e.owner_user_id.to_string())) {
                Ok(path) => store(session, &path, &e.record(), |s| e.differs(s), opts).await,
                Err(err) => Err(err),
            };
        match result {
            Ok(outcome) => rep.row(n, &who, &outcome, ""),
            Err(source) => {
                let summary = rep.finish();
                return Err(aborted(format!("row {n} ({who})"), source, summary));
            }
        }
    }
    if let Some(p) = &doc.placeholder {
        if let Err(source) = import_placeholder(session, p, opts, &rep).await {
            let summary = rep.finish();
            return Err(aborted("the placeholder".into(), source, summary));
        }
    }
    if let Err(source) = import_generation(session, doc.generation, opts, &rep).await {
        let summary = rep.finish();
        return Err(aborted("the generation".into(), source, summary));
    }
    Ok(rep.finish())
}

fn placeholder_record(secret: &str) -> KvData {
    let mut d = KvData::new();
    d.insert("secret".into(), SecretString::from(secret.to_string()));
    d.insert("fingerprint".into(), SecretString::from(PLACEHOLDER));
    d.insert("purpose".into(), SecretString::from(PLACEHOLDER));
    d
}

async fn import_placeholder(
    session: &Session,
    secret: &SecretString,
    opts: ImportOptions,
    rep: &Reporter,
) -> Result<(), VaultError> {
    let path = session.path(PLACEHOLDER_PATH)?;
    let record = placeholder_record(secret.expose_secret());
    let outcome = store(
        session,
        &path,
        &record,
        |s| {
            (!same_secret(s, "secret", secret.expose_secret()))
                .then(|| "a different placeholder is stored".to_string())
        },
        opts,
    )
    .await?;
    rep.note(&format!(
        "runtime placeholder ({path}): {}",
        outcome.describe(opts.dry_run)
    ));
    Ok(())
}

/// The generation only goes up: a lower one than stored is kept unless
/// `--overwrite`.
async fn import_generation(
    session: &Session,
    generation: u64,
    opts: ImportOptions,
    rep: &Reporter,
) -> Result<(), VaultError> {
    let path = session.path(STATE_PATH)?;
    let vault = session.vault().await?;
    let (stored, cas) = match vault.kv_get(&path, None).await {
        Ok(cur) => (
            field(&cur.data, "generation").and_then(|g| g.parse::<u64>().ok()),
            cur.version,
        ),
        Err(VaultError::NotFound(_)) => match vault.kv_metadata_get(&path).await {
            Ok(m) => (None, m.current_version),
            Err(VaultError::NotFound(_)) => (None, 0),
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let would = if opts.dry_run { "would be " } else { "" };
    let text = match stored {
        Some(s) if s == generation => format!("generation {generation}: unchanged"),
        Some(s) if s > generation && !opts.overwrite => format!(
            "generation: kept {s} (the document has {generation}, lower; --overwrite sets it)"
        ),
        _ => {
            if !opts.dry_run {
                let mut d = KvData::new();
                d.insert(
                    "generation".into(),
                    SecretString::from(generation.to_string()),
                );
                vault.kv_put(&path, &d, Some(cas)).await?;
            }
            match stored {
                Some(s) => format!("generation: {would}set to {generation} (was {s})"),
                None => format!("generation {generation}: {would}stored"),
            }
        }
    };
    rep.note(&text);
    Ok(())
}

// ---------------------------------------------------------------------------
// export mtproxy
// ---------------------------------------------------------------------------

/// `--generation` and `-o`.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The document's generation (default: the stored one, else 0).
    pub generation: Option<u64>,
    /// Where to write (default: stdout).
    pub output: Option<PathBuf>,
}

/// Where the document went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Stdout,
    File(PathBuf),
    /// The file already held exactly this document (mode 0600): untouched.
    Unchanged(PathBuf),
}

/// What `export mtproxy` did (no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub secrets: usize,
    pub generation: u64,
    /// No user secrets and no stored placeholder: a new one was generated
    /// (and stored, so the next export writes the same document).
    pub placeholder_generated: bool,
    pub written: Written,
}

/// One live secret found in Vault.
struct Found {
    owner: String,
    user: String,
    secret: Zeroizing<String>,
    fingerprint: String,
    owner_user_id: Option<u64>,
    access_id: Option<i64>,
}

/// One entry of the document, fields in Python's `sort_keys` order.
#[derive(Serialize)]
struct OutEntry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_id: Option<i64>,
    fingerprint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_user_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purpose: Option<&'a str>,
    secret: &'a str,
}

/// The document, fields in Python's `sort_keys` order.
#[derive(Serialize)]
struct OutDoc<'a> {
    generation: u64,
    managed_by: &'a str,
    runtime_secrets: &'a [OutEntry<'a>],
    secrets: &'a [OutEntry<'a>],
    version: u64,
}

/// `[]` for a listing of nothing.
fn list_or_empty(r: Result<Vec<String>, VaultError>) -> Result<Vec<String>, VaultError> {
    match r {
        Err(VaultError::NotFound(_)) => Ok(Vec::new()),
        other => other,
    }
}

/// The export's view of one stored record at `mtproto/<owner>/<user>`:
/// `None` when it holds no valid secret. A user key that is a number is
/// vpnbot's `owner_user_id` when the record does not name one.
fn found_in(owner: &str, user: &str, data: &KvData) -> Option<Found> {
    let secret = match field(data, "secret") {
        Some(s) if is_hex(s, 32) => Zeroizing::new(s.to_string()),
        _ => return None,
    };
    let owner_user_id = field(data, "owner_user_id")
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| {
            (!user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()))
                .then(|| user.parse::<u64>().ok())
                .flatten()
        });
    let access_id = field(data, "access_id").and_then(|v| v.parse::<i64>().ok());
    Some(Found {
        fingerprint: fingerprint(&secret),
        secret,
        owner: owner.to_string(),
        user: user.to_string(),
        owner_user_id,
        access_id,
    })
}

/// Every live secret under `mtproto/*/*`, in (owner, user) order.
/// Soft-deleted and destroyed ones read as not found and are left out; a
/// record without a valid secret is left out with a warning.
async fn collect(session: &Session) -> Result<Vec<Found>, MigrateError> {
    let vault = session.vault().await?;
    let mut owners: Vec<String> = list_or_empty(
        vault
            .kv_list(&session.path(&format!("{}/", mtproto::DIR))?)
            .await,
    )?
    .into_iter()
    .filter_map(|d| d.strip_suffix('/').map(str::to_string))
    .collect();
    owners.sort();
    let mut found = Vec::new();
    for owner in owners {
        let Ok(dir) = session.path(&format!("{}/", mtproto::owner_dir(&owner))) else {
            eprintln!(
                "warning: skipped {}/…: a directory name Vault listed is not a valid path",
                mtproto::DIR
            );
            continue;
        };
        let mut users: Vec<String> = list_or_empty(vault.kv_list(&dir).await)?
            .into_iter()
            .filter(|u| !u.ends_with('/'))
            .collect();
        users.sort();
        for user in users {
            let Ok(path) = session.path(&mtproto::path(&owner, &user)) else {
                eprintln!("warning: skipped a key under {dir}: not a valid path");
                continue;
            };
            let rec = match vault.kv_get(&path, None).await {
                Ok(rec) => rec,
                Err(VaultError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            match found_in(&owner, &user, &rec.data) {
                Some(f) => found.push(f),
                None => eprintln!("warning: skipped {path}: its record holds no 32-hex secret"),
            }
        }
    }
    Ok(found)
}

/// The stored generation, 0 when none is stored.
async fn stored_generation(session: &Session) -> Result<u64, MigrateError> {
    let path = session.path(STATE_PATH)?;
    match session.vault().await?.kv_get(&path, None).await {
        Ok(rec) => field(&rec.data, "generation")
            .and_then(|g| g.parse::<u64>().ok())
            .ok_or_else(|| {
                MigrateError::Stored(format!(
                    "{path} holds no valid `generation`; fix it or pass --generation N"
                ))
            }),
        Err(VaultError::NotFound(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The stored placeholder secret; when none is stored, a new random one,
/// stored (check-and-set 0) so that later exports agree. `true` when it
/// was generated.
async fn placeholder(session: &Session) -> Result<(Zeroizing<String>, bool), MigrateError> {
    let path = session.path(PLACEHOLDER_PATH)?;
    let vault = session.vault().await?;
    for _ in 0..2 {
        match vault.kv_get(&path, None).await {
            Ok(rec) => {
                return match field(&rec.data, "secret") {
                    Some(s) if is_hex(s, 32) => Ok((Zeroizing::new(s.to_string()), false)),
                    _ => Err(MigrateError::Stored(format!(
                        "{path} holds no 32-hex secret; fix or delete it"
                    ))),
                }
            }
            Err(VaultError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let cas = match vault.kv_metadata_get(&path).await {
            Ok(m) => m.current_version,
            Err(VaultError::NotFound(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        let bytes = random::<16>().map_err(|e| MigrateError::Stored(e.to_string()))?;
        let secret = Zeroizing::new(hex(&bytes[..]));
        match vault
            .kv_put(&path, &placeholder_record(&secret), Some(cas))
            .await
        {
            Ok(_) => return Ok((secret, true)),
            // Another export stored one first: use that one.
            Err(VaultError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(MigrateError::Stored(format!(
        "{path} keeps changing while the export runs; try again"
    )))
}

/// Builds vpnbot's document: entries sorted by (fingerprint, secret),
/// de-duplicated by fingerprint; `runtime_secrets` = `secrets`, or the
/// placeholder entry when there are none. Bytes as Python's
/// `json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"`.
fn render(
    found: &[Found],
    placeholder: Option<&str>,
    generation: u64,
) -> Result<Zeroizing<Vec<u8>>, MigrateError> {
    let secrets: Vec<OutEntry> = found
        .iter()
        .map(|f| OutEntry {
            access_id: f.access_id,
            fingerprint: &f.fingerprint,
            owner_user_id: f.owner_user_id,
            purpose: None,
            secret: &f.secret,
        })
        .collect();
    let runtime: Vec<OutEntry> = if secrets.is_empty() {
        placeholder
            .map(|p| OutEntry {
                access_id: None,
                fingerprint: PLACEHOLDER,
                owner_user_id: None,
                purpose: Some(PLACEHOLDER),
                secret: p,
            })
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    let doc = OutDoc {
        generation,
        managed_by: MANAGED_BY,
        runtime_secrets: if secrets.is_empty() {
            &runtime
        } else {
            &secrets
        },
        secrets: &secrets,
        version: VERSION,
    };
    // Room for everything up front: a reallocation would leave a copy of
    // the secrets behind in freed memory.
    let mut out = Zeroizing::new(Vec::with_capacity(512 + 512 * (secrets.len() + 1)));
    serde_json::to_writer_pretty(&mut *out, &doc)
        .map_err(|e| MigrateError::Stored(format!("cannot render the document: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

/// Sorts by (fingerprint, secret) — then by path, so ties are stable — and
/// keeps the first entry of each fingerprint.
fn sort_and_dedup(mut found: Vec<Found>) -> Vec<Found> {
    found.sort_by(|a, b| {
        (a.fingerprint.as_str(), a.secret.as_str(), &a.owner, &a.user).cmp(&(
            b.fingerprint.as_str(),
            b.secret.as_str(),
            &b.owner,
            &b.user,
        ))
    });
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        if let Some(prev) = out.last() {
            if prev.fingerprint == f.fingerprint {
                eprintln!(
                    "note: {}/{} has the same secret as {}/{}; exported once",
                    f.owner, f.user, prev.owner, prev.user
                );
                continue;
            }
        }
        out.push(f);
    }
    out
}

/// `vaultgram export mtproxy [--generation N] [-o FILE]`.
pub async fn export(session: &Session, opts: &ExportOptions) -> Result<ExportReport, MigrateError> {
    let found = sort_and_dedup(collect(session).await?);
    let generation = match opts.generation {
        Some(g) => g,
        None => stored_generation(session).await?,
    };
    let (ph, generated) = if found.is_empty() {
        let (p, generated) = placeholder(session).await?;
        if generated {
            eprintln!(
                "note: no user secrets and no stored placeholder: generated a new \
                 {PLACEHOLDER} runtime entry and stored it at {}/{PLACEHOLDER_PATH}",
                session.cfg.vault.kv_mount
            );
        }
        (Some(p), generated)
    } else {
        (None, false)
    };
    let bytes = render(&found, ph.as_deref().map(String::as_str), generation)?;
    let written = match &opts.output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|_| out.flush())
                .map_err(|error| MigrateError::Write {
                    path: "stdout".into(),
                    error,
                })?;
            Written::Stdout
        }
        Some(path) => {
            if write_atomic(path, &bytes)? {
                Written::File(path.clone())
            } else {
                Written::Unchanged(path.clone())
            }
        }
    };
    Ok(ExportReport {
        secrets: found.len(),
        generation,
        placeholder_generated: generated,
        written,
    })
}

/// `import vpnbot` then `export mtproxy`, with an empty in-memory store in
/// place of Vault: the same parsing, planning, records, reading back,
/// sorting and rendering; only the I/O differs. A document without user
/// secrets or a placeholder exports the all-zero placeholder here (a random
/// one in the real export). What the `vpnbot_roundtrip` fuzz target and the
/// unit tests check: a canonical document comes back byte for byte; any
/// other accepted one comes back canonical.
pub fn round_trip(text: &str) -> Result<Zeroizing<Vec<u8>>, MigrateError> {
    let doc = parse(text, "input")?;
    // (owner, user) → record: Vault lists keys sorted, as this iterates.
    let mut stored = std::collections::BTreeMap::new();
    for step in plan(&doc) {
        if let Action::Store(e) = step.action {
            let user = e.owner_user_id.to_string();
            stored.insert((RESERVED_OWNER.to_string(), user), e.record());
        }
    }
    let found: Vec<Found> = stored
        .iter()
        .filter_map(|((owner, user), data)| found_in(owner, user, data))
        .collect();
    let found = sort_and_dedup(found);
    let zero = "0".repeat(32);
    let placeholder = match &doc.placeholder {
        Some(p) => p.expose_secret(),
        None => zero.as_str(),
    };
    let placeholder = found.is_empty().then_some(placeholder);
    render(&found, placeholder, doc.generation)
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in
/// the same directory, fsync, rename over `path`, fsync the directory. A
/// reader sees the old document or the new one, never a part. `false`
/// when `path` already holds exactly these bytes with mode 0600 (left
/// untouched, so a watcher sees no change).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<bool, MigrateError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = path.display().to_string();
    let err = |error: std::io::Error| MigrateError::Write {
        path: shown.clone(),
        error,
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() && meta.permissions().mode() & 0o777 == 0o600 {
            if let Ok(existing) = std::fs::read(path).map(Zeroizing::new) {
                if existing.as_slice() == bytes {
                    return Ok(false);
                }
            }
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("not a file name")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let suffix = random::<6>()
        .map(|b| hex(&b[..]))
        .map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!(
        ".{}.{}.{suffix}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only take bits away; make it exactly 0600.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "0123456789abcdef0123456789abcdef";
    const S2: &str = "fedcba9876543210fedcba9876543210";

    fn found(owner: &str, user: &str, secret: &str, uid: Option<u64>, aid: Option<i64>) -> Found {
        Found {
            owner: owner.into(),
            user: user.into(),
            secret: Zeroizing::new(secret.into()),
            fingerprint: fingerprint(secret),
            owner_user_id: uid,
            access_id: aid,
        }
    }

    #[test]
    fn renders_pythons_json_dumps_layout() {
        let f = sort_and_dedup(vec![
            found("admin", "7", S1, Some(7), Some(3)),
            found("bob", "x", S2, None, None),
            found("carol", "9", S1, Some(9), None),
        ]);
        assert_eq!(f.len(), 2);
        let out = render(&f, None, 5).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        let (a, b) = if fingerprint(S1) < fingerprint(S2) {
            (
                format!(
                    "{{\n      \"access_id\": 3,\n      \"fingerprint\": \"{}\",\n      \"owner_user_id\": 7,\n      \"secret\": \"{S1}\"\n    }}",
                    fingerprint(S1)
                ),
                format!(
                    "{{\n      \"fingerprint\": \"{}\",\n      \"secret\": \"{S2}\"\n    }}",
                    fingerprint(S2)
                ),
            )
        } else {
            (
                format!(
                    "{{\n      \"fingerprint\": \"{}\",\n      \"secret\": \"{S2}\"\n    }}",
                    fingerprint(S2)
                ),
                format!(
                    "{{\n      \"access_id\": 3,\n      \"fingerprint\": \"{}\",\n      \"owner_user_id\": 7,\n      \"secret\": \"{S1}\"\n    }}",
                    fingerprint(S1)
                ),
            )
        };
        let list = format!("[\n    {a},\n    {b}\n  ]");
        let want = format!(
            "{{\n  \"generation\": 5,\n  \"managed_by\": \"vpn-bot\",\n  \"runtime_secrets\": {list},\n  \"secrets\": {list},\n  \"version\": 1\n}}\n"
        );
        assert_eq!(text, want);
    }

    #[test]
    fn renders_the_placeholder_when_empty() {
        let out = render(&[], Some(S1), 0).unwrap();
        let want = format!(
            "{{\n  \"generation\": 0,\n  \"managed_by\": \"vpn-bot\",\n  \"runtime_secrets\": [\n    {{\n      \"fingerprint\": \"empty-placeholder\",\n      \"purpose\": \"empty-placeholder\",\n      \"secret\": \"{S1}\"\n    }}\n  ],\n  \"secrets\": [],\n  \"version\": 1\n}}\n"
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
    }

    #[test]
    fn import_then_export_gives_a_canonical_document_back_unchanged() {
        let canonical = render(
            &sort_and_dedup(vec![
                found("admin", "7", S1, Some(7), Some(3)),
                found("admin", "8", S2, Some(8), None),
            ]),
            None,
            5,
        )
        .unwrap();
        let text = std::str::from_utf8(&canonical).unwrap();
        assert_eq!(round_trip(text).unwrap().as_slice(), canonical.as_slice());
        // Compact, unsorted, with a repeated owner and a rejected row: the
        // export is the canonical form, which then stays as it is.
        let messy = format!(
            r#"{{"version":1,"secrets":[{{"secret":"{S2}","fingerprint":"{}","owner_user_id":8}},{{"secret":"{S1}","fingerprint":"{}","owner_user_id":7,"access_id":3}},{{"secret":"{S1}","fingerprint":"{}","owner_user_id":7,"access_id":3}},{{"owner_user_id":0}}],"generation":5}}"#,
            fingerprint(S2),
            fingerprint(S1),
            fingerprint(S1)
        );
        assert_eq!(round_trip(&messy).unwrap().as_slice(), canonical.as_slice());
        // No user secrets: the placeholder is what runtime_secrets holds.
        let empty = render(&[], Some(S1), 0).unwrap();
        let text = std::str::from_utf8(&empty).unwrap();
        assert_eq!(round_trip(text).unwrap().as_slice(), empty.as_slice());
    }

    fn doc(secrets: &str) -> String {
        format!(
            r#"{{"generation": 3, "managed_by": "vpn-bot", "version": 1, "secrets": {secrets}, "runtime_secrets": []}}"#
        )
    }

    fn verdicts(text: &str) -> Vec<Result<u64, String>> {
        parse(text, "f")
            .unwrap_or_else(|e| panic!("{e}"))
            .rows
            .into_iter()
            .map(|r| r.map(|e| e.owner_user_id).map_err(|r| r.why))
            .collect()
    }

    #[test]
    fn rows_are_judged_one_by_one() {
        let fp1 = fingerprint(S1);
        let text = doc(&format!(
            r#"[{{"secret":"{S1}","fingerprint":"{fp1}","owner_user_id":7,"access_id":1}},
               {{"secret":"{S1}","fingerprint":"{fp1}"}},
               {{"secret":"abc","fingerprint":"{fp1}","owner_user_id":8}},
               {{"secret":"{S2}","fingerprint":"{fp1}","owner_user_id":9}},
               {{"secret":"{S2}","fingerprint":"{fp1}","owner_user_id":"9"}},
               {{"secret":"zz23456789abcdef0123456789abcdef","fingerprint":"{fp1}","owner_user_id":10}},
               {{"secret":"{S1}","fingerprint":"empty-placeholder","owner_user_id":11}},
               5]"#
        ));
        let v = verdicts(&text);
        assert_eq!(v[0], Ok(7));
        assert!(v[1]
            .as_ref()
            .unwrap_err()
            .contains("owner_user_id is missing"));
        assert!(v[2].as_ref().unwrap_err().contains("it has 3"));
        assert!(v[3]
            .as_ref()
            .unwrap_err()
            .contains("fingerprint does not match"));
        assert!(v[4].as_ref().unwrap_err().contains("positive integer"));
        assert!(v[5].as_ref().unwrap_err().contains("non-hex"));
        assert!(v[6].as_ref().unwrap_err().contains("not a user secret"));
        assert!(v[7].as_ref().unwrap_err().contains("not a JSON object"));
        for r in &v {
            if let Err(m) = r {
                assert!(!m.contains(S1) && !m.contains(S2), "{m}");
            }
        }
    }

    #[test]
    fn document_errors_stop_everything() {
        for (text, want) in [
            ("{", "is not valid JSON"),
            ("[]", "expected a JSON object"),
            (
                r#"{"version": 2, "generation": 1, "secrets": []}"#,
                "unsupported `version`",
            ),
            (
                r#"{"version": 1, "secrets": []}"#,
                "`generation` is missing",
            ),
            (
                r#"{"version": 1, "generation": -1, "secrets": []}"#,
                "non-negative",
            ),
            (r#"{"version": 1, "generation": 1}"#, "`secrets` is missing"),
            (
                r#"{"version": 1, "generation": 1, "secrets": {}}"#,
                "must be a list",
            ),
            (
                r#"{"version": 1, "generation": 1, "secrets": [], "managed_by": "x"}"#,
                "managed_by",
            ),
            (
                r#"{"version": 1, "generation": 1, "secrets": [], "runtime_secrets": [{"secret": "12", "fingerprint": "empty-placeholder"}]}"#,
                "32 hex",
            ),
        ] {
            let e = parse(text, "f")
                .err()
                .unwrap_or_else(|| panic!("{text}"))
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.ends_with("nothing was written"), "{e}");
        }
        let d = parse(
            &format!(
                r#"{{"version": 1, "generation": 4, "secrets": [], "runtime_secrets": [{{"secret": "{S1}", "fingerprint": "empty-placeholder", "purpose": "empty-placeholder"}}]}}"#
            ),
            "f",
        )
        .unwrap();
        assert_eq!(d.generation, 4);
        assert_eq!(d.placeholder.unwrap().expose_secret(), S1);
    }

    #[test]
    fn atomic_write_mode_and_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("managed-secrets.json");
        assert!(write_atomic(&p, b"one\n").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"one\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!write_atomic(&p, b"one\n").unwrap());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(write_atomic(&p, b"one\n").unwrap());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(write_atomic(&p, b"two\n").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
