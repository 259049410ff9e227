//! Migration from the stacks vaultgram replaces (SPEC.md, "Migration"):
//! `vaultgram import vpnbot FILE`, `vaultgram import valhalla FILE` and
//! `vaultgram export mtproxy`.
//!
//! These run as an **admin operator**, not as the broker: the broker's
//! credentials from the config log in, mint the operator's child token
//! (`vaultgram-op-admin`, the operator in its display name) and every Vault
//! call uses that child token, so Vault's audit log names the operator.
//! Nothing here touches etcd.
//!
//! Both imports share one discipline ([`store`]): each secret is one Vault
//! write with check-and-set, so nothing is ever half-written; a secret that
//! is already stored is `unchanged`; a different one is a conflict, skipped
//! unless `--overwrite`; a malformed row is rejected with its reason (row
//! number and owner/agent id, never a value) while the other rows go on;
//! `--dry-run` reads but never writes. A whole-file problem (bad JSON, bad
//! key) stops before anything is written.
//!
//! - [`vpnbot`]: vpnbot's `managed-secrets.json` in and out.
//! - [`valhalla`]: ValhallaBot's Fernet-encrypted agent tokens in.

pub mod valhalla;
pub mod vpnbot;

use std::fmt;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::config::{Config, Operator, Role};
use crate::error::ErrorKind;
use crate::records::field;
use crate::vault::auth::TokenManager;
use crate::vault::kv::{KvData, KvPath};
use crate::vault::token::OperatorTokens;
use crate::vault::{Vault, VaultError};

/// Why an import or export stopped. Texts name files, rows, paths and ids,
/// never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "operator `{0}` is not an admin: imports and exports run as an admin operator (--as NAME)"
    )]
    NotAdmin(String),
    /// The input as a whole is unusable (not JSON, wrong shape, a bad key
    /// file); nothing was written.
    #[error("{0}; nothing was written")]
    Input(String),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// Vault failed in the middle of an import: what came before `at` was
    /// handled as `summary` says (each secret is one write, so nothing is
    /// half-written).
    #[error("stopped at {at}: {error}; before that: {summary}")]
    Aborted {
        at: String,
        error: VaultError,
        summary: Summary,
    },
    /// A record in Vault that the export cannot use.
    #[error("{0}")]
    Stored(String),
}

impl MigrateError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            MigrateError::NotAdmin(_) => ErrorKind::Denied,
            MigrateError::Input(_) | MigrateError::Stored(_) => ErrorKind::Invalid,
            MigrateError::Read { .. } | MigrateError::Write { .. } => ErrorKind::Unavailable,
            MigrateError::Vault(e) | MigrateError::Aborted { error: e, .. } => e.kind(),
        }
    }
}

/// `--dry-run` and `--overwrite`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Read Vault and report what would change; write nothing.
    pub dry_run: bool,
    /// Replace a different stored secret instead of skipping it.
    pub overwrite: bool,
}

// ---------------------------------------------------------------------------
// The operator's Vault session
// ---------------------------------------------------------------------------

/// An admin operator's Vault access: the broker logs in with the config's
/// credentials (its token kept alive for as long as the session lives) and
/// mints the operator's child token, re-minted when it runs low.
pub struct Session {
    cfg: Config,
    op: Operator,
    tokens: OperatorTokens,
    renewer: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("operator", &self.op.name)
            .finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Session {
    /// Refuses a non-admin operator before anything touches Vault, then
    /// logs in and mints the child token once (so a denied or unreachable
    /// Vault fails here, before any row).
    pub async fn open(cfg: &Config, op: &Operator) -> Result<Session, MigrateError> {
        if op.role != Role::Admin {
            return Err(MigrateError::NotAdmin(op.name.clone()));
        }
        let broker = TokenManager::login(&cfg.vault).await?;
        let renewer = tokio::spawn(broker.clone().run_renewer(std::future::pending()));
        let session = Session {
            cfg: cfg.clone(),
            op: op.clone(),
            tokens: OperatorTokens::new(broker),
            renewer,
        };
        session.vault().await?;
        Ok(session)
    }

    /// The operator's child-token client (cached; re-minted when low).
    pub async fn vault(&self) -> Result<Arc<Vault>, VaultError> {
        self.tokens.for_operator(&self.op).await
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }

    /// `vaultgram/...` under the configured KV mount.
    pub(crate) fn path(&self, path: &str) -> Result<KvPath, VaultError> {
        Ok(KvPath::new(&self.cfg.vault.kv_mount, path)?)
    }
}

// ---------------------------------------------------------------------------
// Rows, outcomes, summary
// ---------------------------------------------------------------------------

/// What happened to one row (or, with `--dry-run`, would have).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Created,
    Unchanged,
    /// Vault holds something else for this owner/agent; `overwritten`
    /// says whether it was (or, dry, would be) replaced.
    Conflict {
        what: String,
        overwritten: bool,
    },
    Rejected(String),
}

impl RowOutcome {
    pub(crate) fn describe(&self, dry_run: bool) -> String {
        match (self, dry_run) {
            (RowOutcome::Created, false) => "created".into(),
            (RowOutcome::Created, true) => "would be created".into(),
            (RowOutcome::Unchanged, _) => "unchanged (already stored)".into(),
            (
                RowOutcome::Conflict {
                    what,
                    overwritten: false,
                },
                _,
            ) => format!("conflict: {what}; skipped (--overwrite replaces it)"),
            (
                RowOutcome::Conflict {
                    what,
                    overwritten: true,
                },
                false,
            ) => format!("conflict: {what}; overwritten"),
            (
                RowOutcome::Conflict {
                    what,
                    overwritten: true,
                },
                true,
            ) => format!("conflict: {what}; would be overwritten"),
            (RowOutcome::Rejected(why), _) => format!("rejected: {why}"),
        }
    }

    fn is_quiet(&self) -> bool {
        matches!(self, RowOutcome::Created | RowOutcome::Unchanged)
    }
}

/// The counts an import ends with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub created: usize,
    pub unchanged: usize,
    /// Conflicts found (skipped, or replaced with `--overwrite`); a skipped
    /// conflict is not a rejection.
    pub conflicts: usize,
    /// How many of the conflicts were (or, dry, would be) replaced.
    pub overwritten: usize,
    pub rejected: usize,
    pub dry_run: bool,
}

impl Summary {
    fn count(&mut self, o: &RowOutcome) {
        match o {
            RowOutcome::Created => self.created += 1,
            RowOutcome::Unchanged => self.unchanged += 1,
            RowOutcome::Conflict { overwritten, .. } => {
                self.conflicts += 1;
                if *overwritten {
                    self.overwritten += 1;
                }
            }
            RowOutcome::Rejected(_) => self.rejected += 1,
        }
    }

    /// 1 when any row was rejected, else 0 (skipped conflicts are not
    /// rejections).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.rejected > 0)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "created {}, unchanged {}, conflicts {}, rejected {}",
            self.created, self.unchanged, self.conflicts, self.rejected
        )?;
        let skipped = self.conflicts - self.overwritten;
        if skipped > 0 {
            write!(
                f,
                " ({skipped} conflict(s) skipped, not rejections: --overwrite replaces them)"
            )?;
        }
        if self.overwritten > 0 {
            let verb = if self.dry_run {
                "would be overwritten"
            } else {
                "overwritten"
            };
            write!(f, " ({} conflict(s) {verb})", self.overwritten)?;
        }
        if self.dry_run {
            f.write_str(" (dry run: nothing written)")?;
        }
        Ok(())
    }
}

/// Per-row reporting on stderr: an `indicatif` bar on a terminal (only
/// conflicts and rejections get their own line), one plain line per row
/// otherwise (logs, pipes, CI).
pub(crate) struct Reporter {
    bar: Option<ProgressBar>,
    dry_run: bool,
    pub(crate) summary: Summary,
}

impl Reporter {
    pub(crate) fn new(rows: usize, what: &str, opts: ImportOptions) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(rows as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            bar
        });
        Reporter {
            bar,
            dry_run: opts.dry_run,
            summary: Summary {
                dry_run: opts.dry_run,
                ..Summary::default()
            },
        }
    }

    /// A line that is not a row (the placeholder, the generation).
    pub(crate) fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Reports and counts one row. `who` names it (`owner 770001`,
    /// `agent bob`), `extra` adds a note to a success (never a value).
    pub(crate) fn row(&mut self, row: usize, who: &str, outcome: &RowOutcome, extra: &str) {
        self.summary.count(outcome);
        let mut line = format!("row {row} ({who}): {}", outcome.describe(self.dry_run));
        if !extra.is_empty() && !matches!(outcome, RowOutcome::Rejected(_)) {
            line.push_str(&format!(" ({extra})"));
        }
        match &self.bar {
            Some(bar) => {
                if !outcome.is_quiet() {
                    bar.println(&line);
                }
                bar.inc(1);
            }
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(self) -> Summary {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.summary
    }
}

// ---------------------------------------------------------------------------
// Storing one record
// ---------------------------------------------------------------------------

/// Writes `record` at `path` unless an equal one is there. `differs`
/// compares a stored record with the new one and says how they differ
/// (`None` = the same secret is stored). A new record is written with
/// check-and-set on the version seen (0 when there is none; a soft-deleted
/// latest version counts as none), so a concurrent writer makes it a
/// conflict instead of being overwritten.
pub(crate) async fn store(
    session: &Session,
    path: &KvPath,
    record: &KvData,
    differs: impl Fn(&KvData) -> Option<String>,
    opts: ImportOptions,
) -> Result<RowOutcome, VaultError> {
    let vault = session.vault().await?;
    let raced = || RowOutcome::Conflict {
        what: "the record changed in Vault while importing".into(),
        overwritten: false,
    };
    match vault.kv_get(path, None).await {
        Ok(current) => {
            let Some(what) = differs(&current.data) else {
                return Ok(RowOutcome::Unchanged);
            };
            if !opts.overwrite || opts.dry_run {
                return Ok(RowOutcome::Conflict {
                    what,
                    overwritten: opts.overwrite,
                });
            }
            match vault.kv_put(path, record, Some(current.version)).await {
                Ok(_) => Ok(RowOutcome::Conflict {
                    what,
                    overwritten: true,
                }),
                Err(VaultError::Conflict(_)) => Ok(raced()),
                Err(e) => Err(e),
            }
        }
        Err(VaultError::NotFound(_)) => {
            let cas = match vault.kv_metadata_get(path).await {
                Ok(m) => m.current_version,
                Err(VaultError::NotFound(_)) => 0,
                Err(e) => return Err(e),
            };
            if opts.dry_run {
                return Ok(RowOutcome::Created);
            }
            match vault.kv_put(path, record, Some(cas)).await {
                Ok(_) => Ok(RowOutcome::Created),
                Err(VaultError::Conflict(_)) => Ok(raced()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether a stored field equals `want` (`None`: absent or empty).
/// The verdict on a row whose owner/agent an earlier row (`first`) already
/// named: unchanged when it carries the same value, else rejected (one
/// owner/agent cannot get two values from one file); with the detail.
pub(crate) fn repeated(
    first: usize,
    same: bool,
    who: &str,
    what: &str,
    noun: &str,
) -> (RowOutcome, String) {
    let outcome = if same {
        RowOutcome::Unchanged
    } else {
        RowOutcome::Rejected(format!(
            "{who} already has a different {what} at row {first}"
        ))
    };
    (outcome, format!("same {noun} as row {first}"))
}

pub(crate) fn same_field(data: &KvData, key: &str, want: Option<&str>) -> bool {
    field(data, key).filter(|v| !v.is_empty()) == want
}

/// Whether a stored secret field equals `want`, compared without
/// short-circuiting on the first differing byte.
pub(crate) fn same_secret(data: &KvData, key: &str, want: &str) -> bool {
    match data.get(key) {
        Some(v) => {
            let a = v.expose_secret().as_bytes();
            let b = want.as_bytes();
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------
// Input files and JSON
// ---------------------------------------------------------------------------

/// Reads a whole input file (`-` = stdin) into memory that is zeroed when
/// dropped.
pub(crate) fn read_input(path: &Path) -> Result<Zeroizing<String>, MigrateError> {
    let shown = path.display().to_string();
    let mut bytes = Zeroizing::new(Vec::new());
    let r = if shown == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|mut f| {
            let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
            // One allocation up front: no reallocation leaves copies behind.
            bytes.reserve_exact(len + 1);
            f.read_to_end(&mut bytes)
        })
    };
    r.map_err(|error| MigrateError::Read {
        path: shown.clone(),
        error,
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(_) => {
            let v = std::mem::take(&mut *bytes);
            // Valid UTF-8 was checked just above.
            Ok(Zeroizing::new(String::from_utf8(v).unwrap_or_default()))
        }
        Err(e) => Err(MigrateError::Input(format!(
            "{shown} is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))),
    }
}

/// Parses JSON without ever quoting the input: a syntax error keeps
/// serde_json's text (position and what was expected), a structure error
/// gets `shape` and the position only (serde_json's own text may quote a
/// value).
pub(crate) fn parse_json<'a, T: serde::Deserialize<'a>>(
    text: &'a str,
    what: &str,
    shape: &str,
) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| json_error(&e, what, shape))
}

fn json_error(e: &serde_json::Error, what: &str, shape: &str) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("{what} is not valid JSON: {e}"),
        Category::Data => format!(
            "{what}: {shape} (at line {} column {})",
            e.line(),
            e.column()
        ),
        Category::Io => format!("{what}: read error: {e}"),
    }
}

/// `[0-9a-fA-F]{len}`.
pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let mut s = Summary::default();
        assert_eq!(
            s.to_string(),
            "created 0, unchanged 0, conflicts 0, rejected 0"
        );
        s.count(&RowOutcome::Created);
        s.count(&RowOutcome::Conflict {
            what: "x".into(),
            overwritten: false,
        });
        s.dry_run = true;
        assert_eq!(
            s.to_string(),
            "created 1, unchanged 0, conflicts 1, rejected 0 (1 conflict(s) skipped, not \
             rejections: --overwrite replaces them) (dry run: nothing written)"
        );
        assert_eq!(s.exit_code(), 0);
        s.count(&RowOutcome::Rejected("bad".into()));
        assert_eq!(s.exit_code(), 1);
    }

    #[test]
    fn json_errors_never_quote_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u64,
        }
        let e =
            parse_json::<T>(r#"{"n": "s3cr3t-value"}"#, "f.json", "expected a number").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = parse_json::<T>(r#"{"n": "#, "f.json", "x").unwrap_err();
        assert!(e.starts_with("f.json is not valid JSON"), "{e}");
    }
}
