//! Reading and parsing the file, resolving paths, filling defaults and
//! reading the token file.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::error::{invalid, ConfigError};
use super::paths::{absolute, resolve};
use super::schema::*;

impl Config {
    /// Read, parse, apply the environment and validate (file-existence
    /// checks included). No network.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Self::build(&text, path, base_dir, env)
    }

    /// Only `ipc.socket` (resolved like `load` does), for `ctl`: a client
    /// needs no credentials, so nothing else is read, checked or `stat`ed
    /// (an operator mapped by `unix_user` cannot read the broker's files).
    pub fn load_socket_path(path: &Path) -> Result<PathBuf, ConfigError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct OnlyIpc {
            ipc: IpcConfig,
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: OnlyIpc = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| {
                let ipc = t.get("ipc").cloned();
                let mut only = toml::Table::new();
                if let Some(ipc) = ipc {
                    only.insert("ipc".into(), ipc);
                }
                only.try_into().ok()
            })
            .ok_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: "`ipc.socket`: not a valid TOML file with an [ipc] table".into(),
            })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let socket = resolve(&absolute(base_dir), &parsed.ipc.socket);
        if socket.as_os_str().is_empty() {
            return Err(invalid("ipc.socket", "must not be empty"));
        }
        Ok(socket)
    }

    /// Like [`Config::load`] but from a string; relative file paths are
    /// resolved against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::build(text, Path::new("<inline config>"), base_dir, env)
    }

    pub(super) fn build(
        text: &str,
        origin: &Path,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (mut config, unknown) = parse(text, origin)?;
        // Unknown keys come first: a misspelt key usually explains the
        // "required" error a later rule would report.
        if let Some(key) = unknown.into_iter().next() {
            let reason = if key == "vault.auth.token" {
                "unknown key (the token is never read from the config file; \
                 set VAULT_TOKEN or vault.auth.token_file)"
            } else {
                "unknown key"
            };
            return Err(invalid(key, reason));
        }
        config.resolve_paths(&absolute(base_dir));
        config.fill_defaults();
        config.apply_env(env);
        config.validate()?;
        config.load_token()?;
        Ok(config)
    }

    /// Resolve relative paths against the config file's directory so the
    /// effective config only holds absolute paths.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let v = &mut self.vault;
        let e = &mut self.etcd;
        for p in [
            &mut v.ca_cert,
            &mut v.auth.role_id_file,
            &mut v.auth.secret_id_file,
            &mut v.auth.token_file,
            &mut e.ca_cert,
            &mut e.cert,
            &mut e.key,
            &mut e.password_file,
            &mut self.telegram.file_dir,
        ]
        .into_iter()
        .flatten()
        {
            *p = resolve(base, p);
        }
        v.auth.jwt_file = resolve(base, &v.auth.jwt_file);
        self.kubernetes.service_account_dir = resolve(base, &self.kubernetes.service_account_dir);
        if let Some(d) = &mut self.backup.dir {
            *d = resolve(base, d);
        }
        self.ipc.socket = resolve(base, &self.ipc.socket);
    }

    pub(super) fn fill_defaults(&mut self) {
        for op in &mut self.operators {
            if op.role == Role::Admin && op.totp_key.is_none() {
                op.totp_key = Some(op.name.clone());
            }
        }
    }

    /// With `method = "token"` and no `VAULT_TOKEN`, read `token_file`
    /// (validation has already checked that it is set and exists).
    pub(super) fn load_token(&mut self) -> Result<(), ConfigError> {
        let auth = &mut self.vault.auth;
        if auth.method != AuthMethod::Token || auth.token.is_some() {
            return Ok(());
        }
        let Some(path) = &auth.token_file else {
            return Ok(());
        };
        let contents =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?,
            );
        let token = contents.trim();
        if token.is_empty() {
            return Err(invalid(
                "vault.auth.token_file",
                format!("file {} is empty", path.display()),
            ));
        }
        auth.token = Some(SecretString::from(token.to_owned()));
        Ok(())
    }
}

/// Parse the TOML text, collecting every key serde ignored (as
/// `vault.adr`, `operators[0].nmae`) instead of using
/// `deny_unknown_fields`, which would stop at a serde message without
/// the full path.
pub(super) fn parse(text: &str, origin: &Path) -> Result<(Config, Vec<String>), ConfigError> {
    let parse_error = |e: toml::de::Error| {
        let detail = e.to_string().trim_end().to_string();
        let message = match e.span().and_then(|span| key_path_at(text, span.start)) {
            Some(key) => format!("`{key}`: {detail}"),
            None => detail,
        };
        ConfigError::Parse {
            path: origin.to_path_buf(),
            message,
        }
    };
    let deserializer = toml::Deserializer::parse(text).map_err(parse_error)?;
    let mut unknown = Vec::new();
    let config = serde_ignored::deserialize(deserializer, |path| {
        unknown.push(format_ignored_path(&path));
    })
    .map_err(parse_error)?;
    Ok((config, unknown))
}

/// `serde_ignored` prints sequences as `operators.0.nmae`; the messages
/// use the `operators[0].nmae` form the rest of this module uses.
pub(super) fn format_ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", format_ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = format_ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            format_ignored_path(parent)
        }
    }
}

/// The dotted key path of the TOML item at byte `offset`, found by walking
/// toml's spanned parse tree. toml's errors carry a span but not the key
/// path, and `telegram_id` alone does not say which operator is meant.
///
/// A table's span covers only its `[header]`, not its body, so every
/// subtree is searched and the deepest item whose key or value span holds
/// `offset` wins.
pub(super) fn key_path_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    pub(super) fn join(parent: &str, key: &str) -> String {
        if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        }
    }
    pub(super) fn in_table(table: &DeTable<'_>, offset: usize, parent: &str) -> Option<String> {
        table.iter().find_map(|(key, value)| {
            let path = join(parent, key.get_ref());
            in_value(value, offset, &path).or_else(|| {
                (key.span().contains(&offset) || value.span().contains(&offset)).then_some(path)
            })
        })
    }
    // A match strictly inside `value` (not `value` itself).
    pub(super) fn in_value(
        value: &Spanned<DeValue<'_>>,
        offset: usize,
        path: &str,
    ) -> Option<String> {
        match value.get_ref() {
            DeValue::Table(table) => in_table(table, offset, path),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let path = format!("{path}[{i}]");
                in_value(item, offset, &path)
                    .or_else(|| item.span().contains(&offset).then_some(path))
            }),
            _ => None,
        }
    }

    let doc = DeTable::parse(text).ok()?;
    in_table(doc.get_ref(), offset, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_duration;
    use crate::config::testutil::*;
    use secrecy::ExposeSecret;
    use std::time::Duration;

    // --- loading, defaults, env --------------------------------------------

    #[test]
    fn base_config_loads_with_defaults_and_absolute_paths() {
        let fx = Fixture::new();
        let c = fx.ok(BASE, &[]);
        assert_eq!(c.vault.addr, "https://127.0.0.1:8200");
        assert_eq!(
            c.vault.ca_cert.as_deref(),
            Some(fx.path("vault-ca.pem").as_path())
        );
        assert_eq!(c.vault.kv_mount, "secret");
        assert_eq!(c.vault.transit_mount, "transit");
        assert_eq!(c.vault.transit_key, "vaultgram");
        assert_eq!(c.vault.operator_token_role, "vaultgram-operator");
        assert!(!c.vault.dev_insecure);
        assert_eq!(c.vault.request_timeout_secs, 10);
        let a = &c.vault.auth;
        assert_eq!(a.method, AuthMethod::Approle);
        assert_eq!(
            a.role_id_file.as_deref(),
            Some(fx.path("secrets/role_id").as_path())
        );
        assert!(a.secret_id_wrapped);
        assert_eq!(a.approle_mount, "approle");
        assert_eq!(a.mount, "kubernetes");
        assert_eq!(
            a.jwt_file,
            Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert!(a.token.is_none());
        assert_eq!(c.etcd.endpoints.len(), 3);
        assert!(c.etcd.uses_tls());
        assert_eq!(
            c.etcd.key.as_deref(),
            Some(fx.path("etcd/client-key.pem").as_path())
        );
        assert_eq!(c.etcd.user.as_deref(), Some("vaultgram"));
        assert_eq!(c.etcd.prefix, "/vaultgram/");
        assert_eq!(c.etcd.lease_ttl_secs, 10);
        assert_eq!(c.etcd.connect_timeout_secs, 5);
        assert_eq!(c.etcd.request_timeout_secs, 5);
        assert_eq!(c.telegram.app_path, "telegram");
        assert_eq!(c.telegram.session_path, super::DEFAULT_SESSION_PATH);
        assert_eq!(c.telegram.secret_reply_ttl_secs, 60);
        assert_eq!(c.telegram.mtproto_proxy_host, "proxy.example.com");
        assert_eq!(c.telegram.mtproto_proxy_port, 443);
        assert!(c.telegram.wrap_ttl.is_empty());
        assert!(c.telegram.proxy.is_none());
        assert_eq!(c.ipc.socket, Path::new("/run/vaultgram/vaultgram.sock"));
        assert_eq!(c.http.listen, "127.0.0.1:9090");
        assert_eq!(
            c.approvals.required,
            super::Effect::ALL.map(|e| e.name().to_string()).to_vec()
        );
        assert_eq!(c.approvals.ttl_secs, 600);
        assert_eq!(c.operators.len(), 2);
        // totp_key defaults to the name for admins only.
        assert_eq!(c.operators[0].totp_key.as_deref(), Some("alice"));
        assert_eq!(c.operators[1].totp_key, None);
    }

    #[test]
    fn load_reads_the_file_and_resolves_paths_against_its_directory() {
        let fx = Fixture::new();
        let file = fx.write("vaultgram.toml", BASE);
        let c = Config::load(&file, &|_: &str| None).unwrap();
        assert_eq!(
            c.etcd.cert.as_deref(),
            Some(fx.path("etcd/client.pem").as_path())
        );
    }

    #[test]
    fn load_of_a_missing_file_is_a_read_error() {
        let fx = Fixture::new();
        let file = fx.path("nope.toml");
        let err = Config::load(&file, &|_: &str| None).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read config file {}: ", file.display())));
    }

    #[test]
    fn relative_paths_with_dot_components_are_cleaned() {
        let fx = Fixture::new();
        let c = fx.ok(&base_with("\"vault-ca.pem\"", "\"./vault-ca.pem\""), &[]);
        assert_eq!(
            c.vault.ca_cert.as_deref(),
            Some(fx.path("vault-ca.pem").as_path())
        );
    }

    #[test]
    fn token_method_reads_token_file_trimmed_when_env_is_unset() {
        let fx = Fixture::new();
        fx.write("secrets/token", "  hvs.from-file \n");
        let text = edit(
            &token_config(),
            "method = \"token\"\n",
            "method = \"token\"\ntoken_file = \"secrets/token\"\n",
        );
        let c = fx.ok(&text, &[]);
        assert_eq!(
            c.vault.auth.token.as_ref().unwrap().expose_secret(),
            "hvs.from-file"
        );
        // VAULT_TOKEN wins over the file.
        let c = fx.ok(&text, &[("VAULT_TOKEN", "hvs.env")]);
        assert_eq!(
            c.vault.auth.token.as_ref().unwrap().expose_secret(),
            "hvs.env"
        );
    }

    #[test]
    fn empty_token_file_is_refused() {
        let fx = Fixture::new();
        let path = fx.write("secrets/token", " \n");
        let text = edit(
            &token_config(),
            "method = \"token\"\n",
            "method = \"token\"\ntoken_file = \"secrets/token\"\n",
        );
        assert_eq!(
            fx.err(&text, &[]),
            format!(
                "config key `vault.auth.token_file`: file {} is empty",
                path.display()
            )
        );
    }

    #[test]
    fn token_method_needs_env_or_token_file() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&token_config(), &[]),
            "config key `vault.auth.token_file`: required when vault.auth.method = \"token\" and VAULT_TOKEN is not set"
        );
    }

    #[test]
    fn operator_lookups() {
        let fx = Fixture::new();
        let c = fx.ok(BASE, &[]);
        assert_eq!(c.operator_by_name("bob").unwrap().telegram_id, 222222);
        assert_eq!(c.operator_by_telegram_id(111111).unwrap().name, "alice");
        assert!(c.operator_by_name("mallory").is_none());
        assert!(c.operator_by_telegram_id(3).is_none());
    }

    #[test]
    fn wrap_ttl_values_parse() {
        let fx = Fixture::new();
        let text = base_with(
            "[[operators]]\nname = \"alice\"",
            "[telegram.wrap_ttl]\nadmin = \"5m\"\nagent = \"60s\"\n\n[[operators]]\nname = \"alice\"",
        );
        let c = fx.ok(&text, &[]);
        assert_eq!(
            c.telegram.wrap_ttl_for(Role::Admin),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            c.telegram.wrap_ttl_for(Role::Agent),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "s", "0s", "10", "1d", "-1s", "1.5m", " 1s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_etcd_and_vault_are_allowed_with_dev_insecure() {
        let fx = Fixture::new();
        let text = base_with("addr = \"https://", "dev_insecure = true\naddr = \"http://");
        let text = edit(
            &text,
            "endpoints = [\"https://127.0.0.1:2379\", \"https://127.0.0.1:22379\", \"https://127.0.0.1:32379\"]",
            "endpoints = [\"http://127.0.0.1:2379\"]\ndev_insecure = true",
        );
        let c = fx.ok(&text, &[]);
        assert!(!c.etcd.uses_tls());
    }

    #[test]
    fn plain_etcd_does_not_need_certificates() {
        let fx = Fixture::new();
        let text = base_with(
            "endpoints = [\"https://127.0.0.1:2379\", \"https://127.0.0.1:22379\", \"https://127.0.0.1:32379\"]\nca_cert = \"etcd/ca.pem\"\ncert = \"etcd/client.pem\"\nkey = \"etcd/client-key.pem\"\n",
            "endpoints = [\"http://127.0.0.1:2379\"]\ndev_insecure = true\n",
        );
        fx.ok(&text, &[]);
    }

    #[test]
    fn kubernetes_method_loads_with_role_and_jwt_file() {
        let fx = Fixture::new();
        let text = base_with(
            "method = \"approle\"",
            "method = \"kubernetes\"\nrole = \"vaultgram\"\njwt_file = \"sa/token\"",
        );
        fx.write("sa/token", "jwt");
        let c = fx.ok(&text, &[]);
        assert_eq!(c.vault.auth.jwt_file, fx.path("sa/token"));
        assert_eq!(c.vault.auth.role.as_deref(), Some("vaultgram"));
    }

    // --- unknown keys and parse errors -------------------------------------

    #[test]
    fn unknown_key_in_table() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("addr =", "adr ="),
                &[("VAULT_ADDR", "https://v:8200")]
            ),
            "config key `vault.adr`: unknown key"
        );
    }

    #[test]
    fn unknown_key_in_operator_uses_index() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("unix_user = \"alice\"", "nmae = \"alice\""), &[]),
            "config key `operators[0].nmae`: unknown key"
        );
    }

    #[test]
    fn unknown_top_level_table() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&format!("{BASE}\n[telegarm]\napp_path = \"x\"\n"), &[]),
            "config key `telegarm`: unknown key"
        );
    }

    #[test]
    fn unknown_keys_are_reported_before_field_rules() {
        let fx = Fixture::new();
        // Both an unknown key and a bad lease TTL: the unknown key wins.
        let text = base_with("password_file =", "lease_ttl_secs = 1\npasword_file =");
        assert_eq!(
            fx.err(&text, &[]),
            "config key `etcd.pasword_file`: unknown key"
        );
    }

    #[test]
    fn token_in_file_is_an_unknown_key_with_a_hint() {
        let fx = Fixture::new();
        let text = base_with(
            "method = \"approle\"",
            "method = \"approle\"\ntoken = \"hvs.x\"",
        );
        assert_eq!(
            fx.err(&text, &[]),
            "config key `vault.auth.token`: unknown key (the token is never read from the config file; set VAULT_TOKEN or vault.auth.token_file)"
        );
    }

    /// Found by the `config` fuzz target: a NUL inside a value came back
    /// raw in the refusal (`vault.addr = "ht\0as://…"`); text from the
    /// file is shown escaped, in values and in unknown keys alike.
    #[test]
    fn refusals_never_carry_raw_control_characters() {
        let fx = Fixture::new();
        for (from, to) in [
            (
                "addr = \"https://127.0.0.1:8200\"",
                "addr = \"ht\0as://124.0.0.1:8200\"",
            ),
            (
                "addr = \"https://127.0.0.1:8200\"",
                "addr = \"https://127.0.0.1:8200\"\n\"a\u{1b}[2Jb\" = 1",
            ),
            ("telegram_id = 222222", "telegram_id = \"\u{202e}x\t\""),
        ] {
            let text = base_with(from, to);
            assert_ne!(text, BASE, "{from}");
            let msg = fx.load(&text, &[]).unwrap_err().to_string();
            assert!(!msg.chars().any(|c| c.is_control() && c != '\n'), "{msg:?}");
            assert!(
                crate::text::find_forbidden(&msg.replace('\n', " ")).is_none(),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn type_error_is_a_parse_error_naming_the_key() {
        let fx = Fixture::new();
        let err = fx
            .load(
                &base_with("telegram_id = 222222", "telegram_id = \"x\""),
                &[],
            )
            .unwrap_err();
        let ConfigError::Parse { message, .. } = &err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert!(
            message.starts_with("`operators[1].telegram_id`: "),
            "{message}"
        );
        assert!(message.contains("telegram_id = \"x\""), "{message}");
        assert!(
            message.contains("invalid type: string \"x\", expected i64"),
            "{message}"
        );
        assert!(err.to_string().starts_with("config file <inline config>: "));
    }

    #[test]
    fn bad_enum_value_is_a_parse_error_naming_the_key() {
        let fx = Fixture::new();
        let err = fx.err(&base_with("method = \"approle\"", "method = \"ldap\""), &[]);
        assert!(err.contains("`vault.auth.method`: "), "{err}");
        assert!(err.contains("unknown variant `ldap`"), "{err}");
        let err = fx.err(&base_with("role = \"agent\"", "role = \"root\""), &[]);
        assert!(err.contains("`operators[1].role`: "), "{err}");
    }

    #[test]
    fn missing_operator_field_names_the_operator() {
        let fx = Fixture::new();
        let err = fx.err(&base_with("role = \"agent\"\n", ""), &[]);
        assert!(err.contains("`operators[1]`: "), "{err}");
        assert!(err.contains("missing field `role`"), "{err}");
    }

    #[test]
    fn syntax_error_is_a_parse_error() {
        let fx = Fixture::new();
        let file = fx.write("bad.toml", "[vault\n");
        let err = Config::load(&file, &|_: &str| None).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("config file {}: ", file.display())),
            "{text}"
        );
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn missing_required_tables_are_parse_errors() {
        let fx = Fixture::new();
        let err = fx.err(
            "[[operators]]\nname = \"a\"\ntelegram_id = 1\nrole = \"admin\"\n",
            &[],
        );
        assert!(err.contains("missing field `vault`"), "{err}");
        let err = fx.err(
            &base_with("[vault.auth]\nmethod = \"approle\"", "[vault.x]"),
            &[],
        );
        assert!(err.contains("missing field `auth`"), "{err}");
    }
}
