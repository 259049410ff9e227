//! The standard Vault variables (`VAULT_ADDR`/`BAO_ADDR`, `VAULT_CACERT`,
//! `VAULT_TOKEN`) over the file.

use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::paths::absolute;
use super::schema::*;

/// The process environment as the `env` closure of [`Config::load`]
/// expects it: unset and empty variables are both `None`.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// The standard Vault variables override the file. Blank values count
    /// as unset, as the Vault CLI treats them.
    pub(super) fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let get = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        if let Some(addr) = get("VAULT_ADDR").or_else(|| get("BAO_ADDR")) {
            self.vault.addr = addr.trim().to_string();
        }
        if let Some(ca) = get("VAULT_CACERT") {
            // Relative to the working directory, like the Vault CLI.
            self.vault.ca_cert = Some(absolute(Path::new(ca.trim())));
        }
        // VAULT_TOKEN is deliberately ignored for approle/kubernetes: a
        // stray admin token in the shell must not silently replace the
        // broker's own, narrower identity.
        if self.vault.auth.method == AuthMethod::Token {
            if let Some(token) = get("VAULT_TOKEN") {
                let token = Zeroizing::new(token);
                self.vault.auth.token = Some(SecretString::from(token.trim().to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::*;
    use crate::config::{resolve_path, DEFAULT_PATH};
    use secrecy::ExposeSecret;

    #[test]
    fn resolve_path_prefers_cli_then_env_then_default() {
        let env = |k: &str| (k == "VAULTGRAM_CONFIG").then(|| "/from/env.toml".to_string());
        let none = |_: &str| None;
        assert_eq!(
            resolve_path(Some(Path::new("/cli.toml")), &env),
            Path::new("/cli.toml")
        );
        assert_eq!(resolve_path(None, &env), Path::new("/from/env.toml"));
        assert_eq!(resolve_path(None, &none), Path::new(DEFAULT_PATH));
        let empty = |_: &str| Some(String::new());
        assert_eq!(resolve_path(None, &empty), Path::new(DEFAULT_PATH));
    }

    #[test]
    fn vault_addr_env_overrides_and_bao_addr_is_the_fallback() {
        let fx = Fixture::new();
        let c = fx.ok(BASE, &[("VAULT_ADDR", "https://vault.example:8200")]);
        assert_eq!(c.vault.addr, "https://vault.example:8200");
        let c = fx.ok(BASE, &[("BAO_ADDR", "https://bao.example:8200")]);
        assert_eq!(c.vault.addr, "https://bao.example:8200");
        let c = fx.ok(
            BASE,
            &[
                ("VAULT_ADDR", "https://vault.example:8200"),
                ("BAO_ADDR", "https://bao.example:8200"),
            ],
        );
        assert_eq!(c.vault.addr, "https://vault.example:8200");
        // An empty variable counts as unset.
        let c = fx.ok(BASE, &[("VAULT_ADDR", "")]);
        assert_eq!(c.vault.addr, "https://127.0.0.1:8200");
    }

    #[test]
    fn vault_addr_may_come_from_the_env_alone() {
        let fx = Fixture::new();
        let text = edit(BASE, "addr = \"https://127.0.0.1:8200\"\n", "");
        let c = fx.ok(&text, &[("VAULT_ADDR", "https://v:8200")]);
        assert_eq!(c.vault.addr, "https://v:8200");
    }

    #[test]
    fn env_vault_addr_is_validated_too() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(BASE, &[("VAULT_ADDR", "http://127.0.0.1:8200")]),
            "config key `vault.addr`: http:// is refused; use https:// or set vault.dev_insecure = true"
        );
    }

    #[test]
    fn vault_cacert_env_overrides() {
        let fx = Fixture::new();
        let other = fx.write("other-ca.pem", "x");
        let c = fx.ok(BASE, &[("VAULT_CACERT", other.to_str().unwrap())]);
        assert_eq!(c.vault.ca_cert.as_deref(), Some(other.as_path()));
        let missing = fx.path("missing-ca.pem");
        assert_eq!(
            fx.err(BASE, &[("VAULT_CACERT", missing.to_str().unwrap())]),
            format!(
                "config key `vault.ca_cert`: file {} does not exist",
                missing.display()
            )
        );
    }

    #[test]
    fn vault_token_is_ignored_unless_method_is_token() {
        let fx = Fixture::new();
        let c = fx.ok(BASE, &[("VAULT_TOKEN", "hvs.ignored")]);
        assert!(c.vault.auth.token.is_none());
    }

    #[test]
    fn token_method_takes_vault_token_from_env() {
        let fx = Fixture::new();
        let c = fx.ok(&token_config(), &[("VAULT_TOKEN", " hvs.from-env\n")]);
        assert_eq!(
            c.vault.auth.token.as_ref().unwrap().expose_secret(),
            "hvs.from-env"
        );
    }
}
