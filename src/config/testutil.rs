//! What the config tests share: a fixture directory holding every file
//! the base config refers to, the base config, and edits of it.

use tempfile::TempDir;

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

/// A temporary directory holding every file the base config refers to,
/// so each test changes exactly one thing.
pub(crate) struct Fixture {
    pub(crate) dir: TempDir,
}

/// Valid: approle auth, https Vault, three https etcd endpoints with
/// client certificates, two operators. File paths are relative to the
/// fixture directory, which also exercises path resolution.
pub(crate) const BASE: &str = r#"
[vault]
addr = "https://127.0.0.1:8200"
ca_cert = "vault-ca.pem"

[vault.auth]
method = "approle"
role_id_file = "secrets/role_id"
secret_id_file = "secrets/secret_id"

[etcd]
endpoints = ["https://127.0.0.1:2379", "https://127.0.0.1:22379", "https://127.0.0.1:32379"]
ca_cert = "etcd/ca.pem"
cert = "etcd/client.pem"
key = "etcd/client-key.pem"
password_file = "etcd/password"

[[operators]]
name = "alice"
telegram_id = 111111
role = "admin"
unix_user = "alice"

[[operators]]
name = "bob"
telegram_id = 222222
role = "agent"
agent = "bob"
"#;

pub(crate) const FILES: [&str; 7] = [
    "vault-ca.pem",
    "secrets/role_id",
    "secrets/secret_id",
    "etcd/ca.pem",
    "etcd/client.pem",
    "etcd/client-key.pem",
    "etcd/password",
];

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for file in FILES {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x\n").unwrap();
        }
        Fixture { dir }
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub(crate) fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub(crate) fn load(&self, text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str(text, self.dir.path(), &move |k: &str| env.get(k).cloned())
    }

    pub(crate) fn ok(&self, text: &str, env: &[(&str, &str)]) -> Config {
        match self.load(text, env) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got: {e}"),
        }
    }

    /// The Display text of the error `text` must produce.
    pub(crate) fn err(&self, text: &str, env: &[(&str, &str)]) -> String {
        match self.load(text, env) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }
}

/// `text` with `from` replaced by `to`; panics if `from` is absent so a
/// test can never pass by editing nothing.
pub(crate) fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "`{from}` not in the config text");
    text.replacen(from, to, 1)
}

pub(crate) fn base_with(from: &str, to: &str) -> String {
    edit(BASE, from, to)
}

pub(crate) fn token_config() -> String {
    edit(
        BASE,
        "method = \"approle\"\nrole_id_file = \"secrets/role_id\"\nsecret_id_file = \"secrets/secret_id\"\n",
        "method = \"token\"\n",
    )
}

pub(crate) const ENDPOINTS: &str = "endpoints = [\"https://127.0.0.1:2379\", \"https://127.0.0.1:22379\", \"https://127.0.0.1:32379\"]";

pub(crate) fn with_table(table: &str) -> String {
    base_with(
        "[[operators]]\nname = \"alice\"",
        &format!("{table}\n\n[[operators]]\nname = \"alice\""),
    )
}

pub(crate) const ALICE_AND_BOB: &str = "[[operators]]\nname = \"alice\"\ntelegram_id = 111111\nrole = \"admin\"\nunix_user = \"alice\"\n\n[[operators]]\nname = \"bob\"\ntelegram_id = 222222\nrole = \"agent\"\nagent = \"bob\"\n";
