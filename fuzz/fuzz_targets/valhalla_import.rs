//! ValhallaBot's agent-token export through `import valhalla`'s judging
//! (vaultgram::migrate::valhalla::plan: everything but the Vault writes).
//!
//! - Rows built here from structured input — tokens encrypted with the
//!   current key, an old key or a stranger's, some digests or ciphertexts
//!   spoiled, fields missing, agents repeated — get exactly the verdicts
//!   ValhallaBot's rules give: the first good row per agent is stored with
//!   its token and the key that opened it, a repeat is unchanged or
//!   rejected, every other row rejected.
//! - No verdict, reason or name ever contains a token or a ciphertext.
//! - Any text: no panic, and whatever is stored matches its digest.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use fernet::Fernet;
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use vaultgram::migrate::valhalla::{plan, Action, Keys};
use vaultgram::migrate::RowOutcome;

const CURRENT: &str = "HWKfvKJAYO3x0HZB4DSDyxW8lN70jp44K6sHfC-XAh0=";
const OLD: &str = "czmcBVSk4Ce3HEYAZ_DFmnNUUFBuTHh79JhEiwZPKBk=";
const STRANGER: &str = "XTkpXyA8P6NaSTfnO5SzFYgsENgqiOsRPBGnmF5AjlU=";
const AGENTS: [&str; 4] = ["de1", "nl-2", "x", "bad agent"];

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Rows(Vec<RowSpec>),
}

#[derive(Arbitrary, Debug)]
struct RowSpec {
    agent: u8,
    token: Vec<u8>,
    /// 0: current key, 1: old key, else a key nobody gave the import.
    key: u8,
    /// 0: none, 1: a wrong digest, 2: a ciphertext byte changed,
    /// 3: no token_encrypted, 4: the digest in capitals, 5: not an object.
    spoil: u8,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys::from_keys(&[CURRENT, OLD]).unwrap())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The verdict ValhallaBot's rules give a row, before repeats.
enum Want {
    Good { agent: String, token: String, key: usize },
    Bad,
}

fn build(rows: &[RowSpec]) -> (String, Vec<Want>, Vec<String>) {
    let mut out = Vec::new();
    let mut want = Vec::new();
    let mut secrets = Vec::new();
    for r in rows {
        let agent = AGENTS[usize::from(r.agent) % AGENTS.len()];
        // Printable ASCII tokens, as ValhallaBot issues; an empty one stays
        // empty. The prefix appears in no message, so a token found in one
        // was leaked, not a coincidence.
        let token: String = match r.token.is_empty() {
            true => String::new(),
            false => "vh~".chars().chain(r.token.iter().map(|b| char::from(b'!' + b % 94))).collect(),
        };
        let (key, opened_by) = match r.key % 3 {
            0 => (CURRENT, Some(0)),
            1 => (OLD, Some(1)),
            _ => (STRANGER, None),
        };
        let mut encrypted = Fernet::new(key).unwrap().encrypt(token.as_bytes());
        let mut digest = hex(&Sha256::digest(token.as_bytes()));
        let spoil = r.spoil % 6;
        match spoil {
            1 => digest = hex(&Sha256::digest(format!("{token}!").as_bytes())),
            2 => {
                // Change one character in the middle (still base64).
                let mid = encrypted.len() / 2;
                let c = encrypted.as_bytes()[mid];
                let d = if c == b'A' { "B" } else { "A" };
                encrypted.replace_range(mid..mid + 1, d);
            }
            4 => digest = digest.to_ascii_uppercase(),
            _ => {}
        }
        let mut row = Map::new();
        row.insert("agent".into(), json!(agent));
        row.insert("token_sha256".into(), json!(digest));
        if spoil != 3 {
            row.insert("token_encrypted".into(), json!(encrypted));
        }
        out.push(if spoil == 5 { json!([agent]) } else { Value::Object(row) });
        let good = agent != "bad agent"
            && !token.is_empty()
            && opened_by.is_some()
            && matches!(spoil, 0 | 4);
        want.push(match (good, opened_by) {
            (true, Some(key)) => Want::Good { agent: agent.into(), token: token.clone(), key },
            _ => Want::Bad,
        });
        if !token.is_empty() {
            secrets.push(token);
        }
        secrets.push(encrypted);
    }
    (Value::Array(out).to_string(), want, secrets)
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(text) => {
            if let Ok(steps) = plan(&text, "input", keys()) {
                for s in steps {
                    if let Action::Store { token, .. } = &s.action {
                        assert!(!token.expose_secret().is_empty());
                    }
                }
            }
        }
        Input::Rows(rows) => {
            let (text, want, secrets) = build(&rows);
            let steps = plan(&text, "input", keys()).expect("an array is a document");
            assert_eq!(steps.len(), want.len());
            let mut first: std::collections::HashMap<String, String> = Default::default();
            for (s, w) in steps.iter().zip(&want) {
                let shown = format!("{} {:?}", s.who, s.action);
                for v in &secrets {
                    assert!(!shown.contains(v.as_str()), "row {} shows a value: {shown}", s.n);
                }
                match (w, &s.action) {
                    (Want::Good { agent, token, key }, action) => match first.get(agent) {
                        None => {
                            first.insert(agent.clone(), token.clone());
                            match action {
                                Action::Store { agent: a, token: t, key: k } => {
                                    assert_eq!(a, agent);
                                    assert_eq!(t.expose_secret(), token);
                                    assert_eq!(k, key);
                                }
                                other => panic!("row {}: want stored, got {other:?}", s.n),
                            }
                        }
                        Some(t) => match action {
                            Action::Report(RowOutcome::Unchanged, _) => assert_eq!(t, token),
                            Action::Report(RowOutcome::Rejected(_), _) => assert_ne!(t, token),
                            other => panic!("row {}: want a repeat, got {other:?}", s.n),
                        },
                    },
                    (Want::Bad, Action::Report(RowOutcome::Rejected(_), _)) => {}
                    (Want::Bad, other) => panic!("row {}: want rejected, got {other:?}", s.n),
                }
            }
        }
    }
});
