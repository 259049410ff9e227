//! vpnbot's managed-secrets.json through `import vpnbot` then
//! `export mtproxy` (vaultgram::migrate::vpnbot::round_trip: the real code
//! with an in-memory store for Vault).
//!
//! - A document as vpnbot writes it (built here independently, from
//!   structured input) comes back byte for byte.
//! - Any text the import accepts exports a canonical document that is a
//!   fixed point: importing and exporting it again changes no byte.
//! - Nothing panics.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use vaultgram::migrate::vpnbot::round_trip;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text.
    Raw(String),
    /// A document vpnbot could have written.
    Doc {
        generation: u64,
        users: Vec<(u64, Option<i64>, [u8; 16])>,
        placeholder: [u8; 16],
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// vpnbot's fingerprint: SHA-256 over the secret's text, 16 hex characters.
fn fingerprint(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))[..16].to_string()
}

/// Keys in sorted order, as Python's `sort_keys=True` writes them.
fn object(pairs: Vec<(&str, Value)>) -> Value {
    let mut pairs = pairs;
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())
}

/// `json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"`
/// of vpnbot's rules: one secret per owner (vaultgram keeps one per
/// owner), de-duplicated by fingerprint, sorted by (fingerprint, secret);
/// `runtime_secrets` = `secrets`, or the placeholder entry when empty.
fn vpnbot_document(generation: u64, users: &[(u64, Option<i64>, [u8; 16])], placeholder: &[u8; 16]) -> String {
    let mut owners = std::collections::HashSet::new();
    let mut by_fp = std::collections::BTreeMap::new();
    for (owner, access, secret) in users {
        // vaultgram's owners are positive; one secret per owner.
        if *owner == 0 || !owners.insert(*owner) {
            continue;
        }
        let secret = hex(secret);
        let fp = fingerprint(&secret);
        let mut pairs = vec![
            ("secret", json!(secret)),
            ("fingerprint", json!(fp)),
            ("owner_user_id", json!(owner)),
        ];
        if let Some(a) = access {
            pairs.push(("access_id", json!(a)));
        }
        by_fp.entry(fp.clone()).or_insert((fp, secret, object(pairs)));
    }
    let mut entries: Vec<_> = by_fp.into_values().collect();
    entries.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let secrets: Vec<Value> = entries.into_iter().map(|e| e.2).collect();
    let runtime = if secrets.is_empty() {
        vec![object(vec![
            ("secret", json!(hex(placeholder))),
            ("fingerprint", json!("empty-placeholder")),
            ("purpose", json!("empty-placeholder")),
        ])]
    } else {
        secrets.clone()
    };
    let doc = object(vec![
        ("generation", json!(generation)),
        ("managed_by", json!("vpn-bot")),
        ("runtime_secrets", Value::Array(runtime)),
        ("secrets", Value::Array(secrets)),
        ("version", json!(1)),
    ]);
    serde_json::to_string_pretty(&doc).unwrap() + "\n"
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(text) => {
            if let Ok(out) = round_trip(&text) {
                let out = std::str::from_utf8(&out).expect("the export is UTF-8");
                let again = round_trip(out).expect("the export is accepted");
                assert_eq!(std::str::from_utf8(&again).unwrap(), out);
            }
        }
        Input::Doc { generation, users, placeholder } => {
            let doc = vpnbot_document(generation, &users, &placeholder);
            let out = round_trip(&doc).expect("vpnbot's document is accepted");
            assert_eq!(std::str::from_utf8(&out).unwrap(), doc);
        }
    }
});
