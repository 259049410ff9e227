//! `vaultgram import valhalla FILE --key-file K [--old-keys-file F]`:
//! ValhallaBot's agent API tokens into `vaultgram/agents/<agent>`.
//!
//! ValhallaBot keeps each token as a SHA-256 hex digest (for look-ups) and
//! a Fernet ciphertext (key `AGENT_TOKEN_ENCRYPTION_KEY`, older keys in
//! `AGENT_TOKEN_ENCRYPTION_OLD_KEYS`). The export this reads is
//! `[{"agent": "…", "token_sha256": "…", "token_encrypted": "…"}, …]`.
//! Each ciphertext is decrypted with the current key, else each old key in
//! turn (Python's `MultiFernet`), and the token is stored only if its
//! SHA-256 matches `token_sha256`, in the record format of `/agent add`
//! (`token`, `token_sha256`, `created_at`, `created_by = "import:valhalla"`).

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use fernet::Fernet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::{
    is_hex, parse_json, read_input, repeated, same_secret, store, ImportOptions, MigrateError,
    Reporter, RowOutcome, Session, Summary,
};
use crate::clock::now_rfc3339;
use crate::records::agent::{self, check_id as check_agent_id, token_record};
use crate::records::sha256_hex;

/// `created_by` of imported agent tokens.
pub const CREATED_BY: &str = "import:valhalla";

/// The key files: the current key, then the old ones, in the order they are
/// tried. `Fernet` zeroes its key material when dropped.
pub struct Keys {
    keys: Vec<Fernet>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("count", &self.keys.len())
            .finish()
    }
}

/// Splits a key list on commas and line breaks (ValhallaBot's
/// `AGENT_TOKEN_ENCRYPTION_OLD_KEYS` is comma-separated; a file may hold
/// one key per line), dropping blanks.
fn split_keys(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

impl Keys {
    /// Reads `--key-file` (exactly one key) and `--old-keys-file`. A key
    /// that is not urlsafe base64 of 32 bytes is named by its file and
    /// position, never shown.
    pub fn load(key_file: &Path, old_keys_file: Option<&Path>) -> Result<Keys, MigrateError> {
        let text = read_input(key_file)?;
        let name = key_file.display();
        let mut current = split_keys(&text);
        let key = current
            .next()
            .ok_or_else(|| MigrateError::Input(format!("key file {name} is empty")))?;
        if current.next().is_some() {
            return Err(MigrateError::Input(format!(
                "key file {name} holds more than one key; put the older ones in --old-keys-file"
            )));
        }
        let mut keys = vec![Fernet::new(key).ok_or_else(|| {
            MigrateError::Input(format!(
                "key file {name}: not a Fernet key (urlsafe base64 of 32 bytes)"
            ))
        })?];
        if let Some(f) = old_keys_file {
            let text = read_input(f)?;
            for (i, k) in split_keys(&text).enumerate() {
                keys.push(Fernet::new(k).ok_or_else(|| {
                    MigrateError::Input(format!(
                        "old keys file {}: key {} is not a Fernet key (urlsafe base64 of 32 bytes)",
                        f.display(),
                        i + 1
                    ))
                })?);
            }
        }
        Ok(Keys { keys })
    }

    /// Keys given as text: the current one first, then the old ones in the
    /// order they are tried. `None` if one is not a Fernet key.
    pub fn from_keys(keys: &[&str]) -> Option<Keys> {
        let keys = keys
            .iter()
            .map(|k| Fernet::new(k))
            .collect::<Option<Vec<_>>>()?;
        (!keys.is_empty()).then_some(Keys { keys })
    }

    /// How many old keys there are.
    pub fn old_keys(&self) -> usize {
        self.keys.len() - 1
    }

    /// The plaintext and which key opened it (0 = current, n = old key n).
    /// Checks the token's shape first so that the reason is precise.
    fn decrypt(&self, token: &str) -> Result<(Zeroizing<Vec<u8>>, usize), String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map(Zeroizing::new)
            .map_err(|_| "token_encrypted is not urlsafe base64".to_string())?;
        // version 0x80 | timestamp (8) | IV (16) | ciphertext (n × 16) | HMAC (32)
        let fernet_shape =
            raw.len() >= 1 + 8 + 16 + 16 + 32 && raw[0] == 0x80 && (raw.len() - 57) % 16 == 0;
        if !fernet_shape {
            return Err(
                "token_encrypted is not a Fernet token (wrong version byte or length)".into(),
            );
        }
        for (i, k) in self.keys.iter().enumerate() {
            if let Ok(plain) = k.decrypt(token) {
                return Ok((Zeroizing::new(plain), i));
            }
        }
        Err(format!(
            "no key decrypts token_encrypted (tried the current key and {} old key(s): wrong key, \
             or the ciphertext was altered)",
            self.keys.len() - 1
        ))
    }
}

#[derive(Deserialize)]
struct RawRow<'a> {
    #[serde(borrow, default)]
    agent: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token_sha256: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token_encrypted: Option<&'a RawValue>,
}

/// One decrypted, digest-checked token.
struct Token {
    agent: String,
    token: SecretString,
    digest: String,
    key: usize,
}

struct Rejection {
    who: String,
    why: String,
}

fn row(raw: &RawValue, keys: &Keys) -> Result<Token, Rejection> {
    let unknown = |who: &str, why: &str| Rejection {
        who: who.into(),
        why: why.into(),
    };
    if !raw.get().trim_start().starts_with('{') {
        return Err(unknown("agent id unknown", "not a JSON object"));
    }
    let r: RawRow = serde_json::from_str(raw.get()).map_err(|_| {
        unknown(
            "agent id unknown",
            "malformed entry (a field appears twice?)",
        )
    })?;
    let agent = match r.agent.filter(|v| v.get() != "null") {
        None => return Err(unknown("agent id missing", "agent is missing")),
        Some(v) => serde_json::from_str::<String>(v.get())
            .map_err(|_| unknown("agent id invalid", "agent is not a string"))?,
    };
    // The id is echoed only once it is known to be a plain, short name.
    check_agent_id(&agent).map_err(|e| unknown("agent id invalid", &e.to_string()))?;
    let reject = |why: String| Rejection {
        who: format!("agent {agent}"),
        why,
    };
    let digest = r
        .token_sha256
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .filter(|d| is_hex(d, 64))
        .ok_or_else(|| reject("token_sha256 must be 64 hex characters".into()))?
        .to_ascii_lowercase();
    let encrypted = r
        .token_encrypted
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
        .ok_or_else(|| reject("token_encrypted is missing or not a string".into()))?;
    let (plain, key) = keys.decrypt(&encrypted).map_err(reject)?;
    let token = std::str::from_utf8(&plain)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            reject("the decrypted token is not printable ASCII text (wrong export?)".into())
        })?;
    if sha256_hex(token) != digest {
        return Err(reject(
            "the SHA-256 of the decrypted token does not match token_sha256".into(),
        ));
    }
    Ok(Token {
        token: SecretString::from(token.to_string()),
        agent,
        digest,
        key,
    })
}

/// What `import valhalla` does with one row, decided before Vault is
/// touched.
#[derive(Debug)]
pub struct Step {
    /// The row's number, from 1.
    pub n: usize,
    /// Who the row is about, as the report names it (never a value).
    pub who: String,
    pub action: Action,
}

#[derive(Debug)]
pub enum Action {
    /// Store this agent's token (unless Vault already holds it); `key` is
    /// the key that opened it (0 = current, n = old key n).
    Store {
        agent: String,
        token: SecretString,
        key: usize,
    },
    /// Only report: rejected, or a repeat of an earlier row's agent.
    Report(RowOutcome, String),
}

/// Reads the export and judges every row; one agent cannot get two tokens
/// (the same one again is unchanged, another is rejected). A document that
/// is not a JSON array stops everything.
pub fn plan(text: &str, name: &str, keys: &Keys) -> Result<Vec<Step>, MigrateError> {
    let rows: Vec<&RawValue> = parse_json(
        text,
        name,
        "not a ValhallaBot export (expected a JSON array of objects)",
    )
    .map_err(MigrateError::Input)?;
    // agent → (first row, digest)
    let mut seen: HashMap<String, (usize, String)> = HashMap::new();
    let mut steps = Vec::with_capacity(rows.len());
    for (i, raw) in rows.iter().enumerate() {
        let n = i + 1;
        let t = match row(raw, keys) {
            Ok(t) => t,
            Err(r) => {
                steps.push(Step {
                    n,
                    who: r.who,
                    action: Action::Report(RowOutcome::Rejected(r.why), String::new()),
                });
                continue;
            }
        };
        let who = format!("agent {}", t.agent);
        let action = match seen.get(&t.agent) {
            Some((first, digest)) => {
                let (outcome, detail) = repeated(
                    *first,
                    *digest == t.digest,
                    &format!("agent {}", t.agent),
                    "token",
                    "agent",
                );
                Action::Report(outcome, detail)
            }
            None => {
                seen.insert(t.agent.clone(), (n, t.digest));
                Action::Store {
                    agent: t.agent,
                    token: t.token,
                    key: t.key,
                }
            }
        };
        steps.push(Step { n, who, action });
    }
    Ok(steps)
}

/// `vaultgram import valhalla`: per-row lines on stderr, the summary
/// returned for the binary to print last.
pub async fn import(
    session: &Session,
    file: &Path,
    keys: &Keys,
    opts: ImportOptions,
) -> Result<Summary, MigrateError> {
    let text = read_input(file)?;
    let steps = plan(&text, &file.display().to_string(), keys)?;
    drop(text);
    let mut rep = Reporter::new(steps.len(), "valhalla", opts);
    for Step { n, who, action } in steps {
        let (agent, token, key) = match action {
            Action::Report(outcome, detail) => {
                rep.row(n, &who, &outcome, &detail);
                continue;
            }
            Action::Store { agent, token, key } => (agent, token, key),
        };
        let note = match key {
            0 => "decrypted with the current key".to_string(),
            k => format!("decrypted with old key {k}"),
        };
        let record = token_record(
            token.expose_secret(),
            &[
                ("created_at", now_rfc3339()),
                ("created_by", CREATED_BY.to_string()),
            ],
        );
        let result = match session.path(&agent::path(&agent)) {
            Ok(path) => {
                store(
                    session,
                    &path,
                    &record,
                    |s| {
                        (!same_secret(s, "token", token.expose_secret()))
                            .then(|| "a different token is stored for this agent".to_string())
                    },
                    opts,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => rep.row(n, &who, &outcome, &note),
            Err(source) => {
                let summary = rep.finish();
                return Err(MigrateError::Aborted {
                    at: format!("row {n} ({who})"),
                    error: source,
                    summary,
                });
            }
        }
    }
    Ok(rep.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        Fernet::generate_key()
    }

    fn keys(current: &str, old: &[&str]) -> Keys {
        let mut k = vec![Fernet::new(current).unwrap()];
        k.extend(old.iter().map(|o| Fernet::new(o).unwrap()));
        Keys { keys: k }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn current_and_old_keys_and_every_failure() {
        let (cur, old, other) = (key(), key(), key());
        let ks = keys(&cur, &[&old]);
        let token = "tok-ABC_123";
        let d = sha256_hex(token);
        let enc_cur = Fernet::new(&cur).unwrap().encrypt(token.as_bytes());
        let enc_old = Fernet::new(&old).unwrap().encrypt(token.as_bytes());
        let enc_other = Fernet::new(&other).unwrap().encrypt(token.as_bytes());
        let row_of = |agent: &str, digest: &str, enc: &str| {
            raw(&format!(
                r#"{{"agent":"{agent}","token_sha256":"{digest}","token_encrypted":"{enc}"}}"#
            ))
        };
        let ok = row(&row_of("a1", &d, &enc_cur), &ks).ok().unwrap();
        assert_eq!((ok.key, ok.token.expose_secret()), (0, token));
        let ok = row(&row_of("a1", &d.to_uppercase(), &enc_old), &ks)
            .ok()
            .unwrap();
        assert_eq!(ok.key, 1);
        let why = |r: Box<RawValue>| row(&r, &ks).err().unwrap().why;
        assert!(why(row_of("a1", &d, &enc_other)).contains("no key decrypts"));
        assert!(why(row_of("a1", &d, "!!!notbase64")).contains("not urlsafe base64"));
        assert!(why(row_of("a1", &d, "QUJD")).contains("not a Fernet token"));
        assert!(why(row_of("a1", &sha256_hex("x"), &enc_cur)).contains("does not match"));
        assert!(why(row_of("a1", "abc", &enc_cur)).contains("64 hex"));
        let r = row(&row_of("admin", &d, &enc_cur), &ks).err().unwrap();
        assert_eq!(r.who, "agent id invalid");
        assert!(r.why.contains("reserved"));
        let r = row(&row_of("Bad Id", &d, &enc_cur), &ks).err().unwrap();
        assert_eq!(r.who, "agent id invalid");
        assert!(!r.why.contains("Bad Id"));
        assert!(why(raw("[1]")).contains("not a JSON object"));
    }

    #[test]
    fn one_agent_gets_one_token() {
        let cur = key();
        let ks = Keys::from_keys(&[&cur]).unwrap();
        let enc = |t: &str| Fernet::new(&cur).unwrap().encrypt(t.as_bytes());
        let row = |agent: &str, t: &str| {
            format!(
                r#"{{"agent":"{agent}","token_sha256":"{}","token_encrypted":"{}"}}"#,
                sha256_hex(t),
                enc(t)
            )
        };
        let text = format!(
            "[{},{},{},{}]",
            row("a1", "tok-1"),
            row("a1", "tok-1"),
            row("a1", "tok-2"),
            row("a2", "tok-2")
        );
        let steps = plan(&text, "f", &ks).unwrap();
        let verdicts: Vec<String> = steps
            .iter()
            .map(|s| match &s.action {
                Action::Store { agent, key, .. } => format!("{} store {agent} {key}", s.n),
                Action::Report(o, d) => format!("{} {} {d}", s.n, o.describe(false)),
            })
            .collect();
        assert_eq!(verdicts[0], "1 store a1 0");
        assert_eq!(
            verdicts[1],
            "2 unchanged (already stored) same agent as row 1"
        );
        assert!(verdicts[2].starts_with("3 rejected"), "{}", verdicts[2]);
        assert!(verdicts[2].contains("already has a different token at row 1"));
        assert_eq!(verdicts[3], "4 store a2 0");
        assert!(!format!("{steps:?}").contains("tok-"), "{steps:?}");
        assert!(Keys::from_keys(&["not a key"]).is_none());
        assert!(Keys::from_keys(&[]).is_none());
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cur, o1, o2) = (key(), key(), key());
        let k = dir.path().join("k");
        let o = dir.path().join("o");
        std::fs::write(&k, format!("{cur}\n")).unwrap();
        std::fs::write(&o, format!("{o1},\n {o2}\n\n")).unwrap();
        let ks = Keys::load(&k, Some(&o)).unwrap();
        assert_eq!(ks.old_keys(), 2);
        std::fs::write(&k, format!("{cur},{o1}")).unwrap();
        assert!(Keys::load(&k, None)
            .unwrap_err()
            .to_string()
            .contains("more than one key"));
        std::fs::write(&k, "c2VjcmV0").unwrap();
        let e = Keys::load(&k, None).unwrap_err().to_string();
        assert!(
            e.contains("not a Fernet key") && !e.contains("c2VjcmV0"),
            "{e}"
        );
        std::fs::write(&k, &cur).unwrap();
        std::fs::write(&o, format!("{o1},nope")).unwrap();
        let e = Keys::load(&k, Some(&o)).unwrap_err().to_string();
        assert!(e.contains("key 2 is not") && !e.contains("nope"), "{e}");
    }
}
