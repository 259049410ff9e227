//! The effective configuration as text, secrets redacted.

use super::schema::*;
use super::values::{redact_url_password, REDACTED};

impl Config {
    /// The effective configuration as TOML, for `--print-config`-style
    /// output: defaults and environment overrides applied, the Vault token
    /// shown only as `<redacted>`, a proxy password masked. The result
    /// parses back as a config (the token line is a comment).
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.vault.auth.token = None; // serde skips it anyway; belt and braces
        if let Some(proxy) = &shown.telegram.proxy {
            shown.telegram.proxy = Some(redact_url_password(proxy));
        }
        let body = match toml::to_string_pretty(&shown) {
            Ok(body) => body,
            // Only possible with a non-UTF-8 path.
            Err(e) => return format!("# cannot render the configuration as TOML: {e}\n"),
        };
        let mut out = String::from(
            "# effective vaultgram configuration: defaults and environment applied, secrets redacted\n",
        );
        for line in body.lines() {
            out.push_str(line);
            out.push('\n');
            if line.trim() == "[vault.auth]" && self.vault.auth.token.is_some() {
                out.push_str(&format!(
                    "# token = \"{REDACTED}\" (from VAULT_TOKEN or vault.auth.token_file)\n"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    #[test]
    fn secrets_are_absent_from_redacted_toml_and_debug() {
        let fx = Fixture::new();
        let canary = "hvs.CANARY-5f1d2c9a";
        let text = edit(
            &token_config(),
            "[[operators]]\nname = \"alice\"",
            "[telegram]\nproxy = \"socks5://u:proxy-CANARY-pw@127.0.0.1:1080\"\n\n[[operators]]\nname = \"alice\"",
        );
        let c = fx.ok(&text, &[("VAULT_TOKEN", canary)]);
        let rendered = c.redacted_toml();
        let debug = format!("{c:?}");
        for out in [&rendered, &debug] {
            assert!(!out.contains(canary), "token leaked:\n{out}");
            assert!(
                !out.contains("proxy-CANARY-pw"),
                "proxy password leaked:\n{out}"
            );
        }
        assert!(rendered.contains("# token = \"<redacted>\""), "{rendered}");
        assert!(
            rendered.contains("socks5://u:<redacted>@127.0.0.1:1080"),
            "{rendered}"
        );
        assert!(
            debug.contains("socks5://u:<redacted>@127.0.0.1:1080"),
            "{debug}"
        );
    }

    #[test]
    fn redacted_toml_round_trips_as_a_config() {
        let fx = Fixture::new();
        let c = fx.ok(&token_config(), &[("VAULT_TOKEN", "hvs.x")]);
        let rendered = c.redacted_toml();
        let again = fx.ok(&rendered, &[("VAULT_TOKEN", "hvs.x")]);
        assert_eq!(again.redacted_toml(), rendered);
        assert!(rendered.contains("[vault.auth]"));
        assert!(rendered.contains("[[operators]]"));
    }

    #[test]
    fn debug_of_auth_never_shows_token() {
        let fx = Fixture::new();
        let c = fx.ok(&token_config(), &[("VAULT_TOKEN", "hvs.DEBUG-CANARY")]);
        let debug = format!("{:?}", c.vault.auth);
        assert!(!debug.contains("hvs.DEBUG-CANARY"), "{debug}");
        let err = format!(
            "{:?}",
            fx.err(
                &base_with("unix_user", "bogus"),
                &[("VAULT_TOKEN", "hvs.DEBUG-CANARY")]
            )
        );
        assert!(!err.contains("hvs.DEBUG-CANARY"));
    }
}
