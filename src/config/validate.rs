//! Every rule of the module docs, in file order; the first failure wins.

use std::collections::HashMap;
use std::path::Path;

use url::Url;

use super::error::{invalid, ConfigError};
use super::schema::*;
use super::values::parse_duration;

/// `telegram.proxy`: what grammers 0.11 can use. It speaks `socks5` only
/// (no `socks5h`), takes user and password from the URL as written
/// (percent-escapes reach the proxy undecoded), and needs a port. A host
/// name is accepted: the client resolves it before connecting.
pub(super) fn check_proxy(raw: &str) -> Result<(), ConfigError> {
    // Errors never quote the URL: it may carry a password.
    const KEY: &str = "telegram.proxy";
    let url = Url::parse(raw).map_err(|e| invalid(KEY, format!("not a URL: {e}")))?;
    match url.scheme() {
        "socks5" => {}
        "socks5h" => {
            return Err(invalid(
                KEY,
                "socks5h is not supported: grammers speaks socks5 only (it resolves the proxy's host name itself); use socks5://",
            ))
        }
        _ => return Err(invalid(KEY, "scheme must be socks5")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(KEY, "not a URL: no host"));
    }
    if url.port().is_none() {
        return Err(invalid(KEY, "must name a port (socks5://host:1080)"));
    }
    if !url.path().trim_start_matches('/').is_empty()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid(KEY, "must not have a path, query or fragment"));
    }
    let plain = |s: &str| !s.contains('%');
    if !plain(url.username()) || !url.password().is_none_or(plain) {
        return Err(invalid(
            KEY,
            "user and password must not need percent-encoding: grammers passes them to the proxy undecoded; use letters, digits and -._~!$&'()*+,;=",
        ));
    }
    if url.password().is_some() && url.username().is_empty() {
        return Err(invalid(KEY, "a password needs a user name"));
    }
    Ok(())
}

impl Config {
    /// The rules of the module docs, in file order; the first failure wins.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_vault()?;
        self.validate_etcd()?;
        self.validate_telegram()?;
        self.validate_ipc_http()?;
        self.validate_approvals()?;
        self.validate_operators()?;
        self.validate_security()?;
        check_at_least("kubernetes.recheck_secs", self.kubernetes.recheck_secs, 10)?;
        check_at_least("backup.max_age_secs", self.backup.max_age_secs, 60)
    }

    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        let s = &self.security;
        check_at_least("security.unlock_ttl_secs", s.unlock_ttl_secs, 10)?;
        if !(1..=20).contains(&s.unlock_max_failures) {
            return Err(invalid(
                "security.unlock_max_failures",
                "must be between 1 and 20",
            ));
        }
        check_at_least("security.reveal_budget", u64::from(s.reveal_budget), 1)?;
        check_at_least("security.reveal_window_secs", s.reveal_window_secs, 10)?;
        if s.step_up != StepUp::Off {
            // Unlocking is a TOTP code from the operator's own key.
            if let Some(i) = self.operators.iter().position(|o| o.totp_key.is_none()) {
                return Err(invalid(
                    format!("operators[{i}].totp_key"),
                    "required while security.step_up is on (/unlock checks the operator's own TOTP code)",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate_vault(&self) -> Result<(), ConfigError> {
        let v = &self.vault;
        if v.addr.trim().is_empty() {
            return Err(invalid(
                "vault.addr",
                "required (set it in the file or with VAULT_ADDR / BAO_ADDR)",
            ));
        }
        check_url("vault.addr", &v.addr, v.dev_insecure, "vault.dev_insecure")?;
        if let Some(ca) = &v.ca_cert {
            check_file("vault.ca_cert", ca)?;
        }
        check_vault_name("vault.kv_mount", &v.kv_mount)?;
        check_vault_name("vault.transit_mount", &v.transit_mount)?;
        check_vault_name("vault.transit_key", &v.transit_key)?;
        check_vault_name("vault.operator_token_role", &v.operator_token_role)?;
        check_at_least("vault.request_timeout_secs", v.request_timeout_secs, 1)?;

        let a = &v.auth;
        let method = a.method;
        let required = || format!("required when vault.auth.method = \"{method}\"");
        match (&a.role_id_file, method) {
            (Some(path), _) => check_file("vault.auth.role_id_file", path)?,
            (None, AuthMethod::Approle) => {
                return Err(invalid("vault.auth.role_id_file", required()))
            }
            (None, _) => {}
        }
        match (&a.secret_id_file, method) {
            (Some(path), _) => check_file("vault.auth.secret_id_file", path)?,
            (None, AuthMethod::Approle) => {
                return Err(invalid("vault.auth.secret_id_file", required()))
            }
            (None, _) => {}
        }
        check_vault_name("vault.auth.approle_mount", &a.approle_mount)?;
        match (&a.role, method) {
            (Some(role), _) => check_vault_name("vault.auth.role", role)?,
            (None, AuthMethod::Kubernetes) => return Err(invalid("vault.auth.role", required())),
            (None, _) => {}
        }
        check_vault_name("vault.auth.mount", &a.mount)?;
        // The default jwt_file only exists inside a pod, so it is checked
        // only when it is going to be used.
        if method == AuthMethod::Kubernetes {
            check_file("vault.auth.jwt_file", &a.jwt_file)?;
        }
        match &a.token_file {
            Some(path) => check_file("vault.auth.token_file", path)?,
            None if method == AuthMethod::Token && a.token.is_none() => {
                return Err(invalid(
                    "vault.auth.token_file",
                    "required when vault.auth.method = \"token\" and VAULT_TOKEN is not set",
                ))
            }
            None => {}
        }
        Ok(())
    }

    pub(super) fn validate_etcd(&self) -> Result<(), ConfigError> {
        let e = &self.etcd;
        if e.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints",
                "at least one endpoint is required",
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut first_scheme: Option<String> = None;
        for (i, endpoint) in e.endpoints.iter().enumerate() {
            let key = format!("etcd.endpoints[{i}]");
            let url = check_url(&key, endpoint, e.dev_insecure, "etcd.dev_insecure")?;
            // One TLS setting applies to the whole client.
            match &first_scheme {
                None => first_scheme = Some(url.scheme().to_string()),
                Some(first) if first != url.scheme() => {
                    return Err(invalid(
                        key,
                        "uses a different scheme from etcd.endpoints[0]; \
                         all endpoints must use the same scheme",
                    ))
                }
                Some(_) => {}
            }
            if let Some(j) = seen.insert(url.as_str().to_string(), i) {
                return Err(invalid(key, format!("duplicate of etcd.endpoints[{j}]")));
            }
        }
        let tls = first_scheme.as_deref() == Some("https");
        for (key, value) in [
            ("etcd.ca_cert", &e.ca_cert),
            ("etcd.cert", &e.cert),
            ("etcd.key", &e.key),
        ] {
            match value {
                Some(path) => check_file(key, path)?,
                None if tls => {
                    return Err(invalid(
                        key,
                        "required for https:// endpoints (etcd uses client-certificate auth)",
                    ))
                }
                None => {}
            }
        }
        if let Some(user) = &e.user {
            if user.trim().is_empty() {
                return Err(invalid("etcd.user", "must not be empty"));
            }
            if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("etcd.user", "must not contain whitespace"));
            }
        }
        if let Some(path) = &e.password_file {
            check_file("etcd.password_file", path)?;
        }
        if !e.prefix.starts_with('/') || !e.prefix.ends_with('/') {
            return Err(invalid("etcd.prefix", "must start and end with /"));
        }
        if e.prefix == "/" {
            // The broker's etcd role is meant to cover only its own prefix.
            return Err(invalid(
                "etcd.prefix",
                "must not be / alone (the broker needs a key prefix of its own)",
            ));
        }
        if e.prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("etcd.prefix", "must not contain whitespace"));
        }
        // Below 2 s a lease cannot be kept alive reliably.
        check_at_least("etcd.lease_ttl_secs", e.lease_ttl_secs, 2)?;
        check_at_least("etcd.connect_timeout_secs", e.connect_timeout_secs, 1)?;
        check_at_least("etcd.request_timeout_secs", e.request_timeout_secs, 1)?;
        Ok(())
    }

    pub(super) fn validate_telegram(&self) -> Result<(), ConfigError> {
        let t = &self.telegram;
        check_kv_path("telegram.app_path", &t.app_path)?;
        check_kv_path("telegram.session_path", &t.session_path)?;
        check_at_least("telegram.secret_reply_ttl_secs", t.secret_reply_ttl_secs, 1)?;
        check_at_least("telegram.session_save_secs", t.session_save_secs, 1)?;
        check_at_least("telegram.dedup_ttl_secs", t.dedup_ttl_secs, 60)?;
        // The stand-in is compiled only into test builds: a production
        // binary must not quietly run a broker that talks to files.
        if t.backend == TelegramBackend::File && !cfg!(feature = "telegram-standin") {
            return Err(invalid(
                "telegram.backend",
                "\"file\" is the tests' stand-in for Telegram, and this build does not contain it (built without the `telegram-standin` feature); use \"grammers\"",
            ));
        }
        if t.backend == TelegramBackend::File && t.file_dir.is_none() {
            return Err(invalid(
                "telegram.file_dir",
                "required with backend = \"file\" (the test stand-in for the grammers client)",
            ));
        }
        let host = &t.mtproto_proxy_host;
        if host.trim().is_empty() {
            return Err(invalid("telegram.mtproto_proxy_host", "must not be empty"));
        }
        if host.contains("://")
            || host.contains('/')
            || host.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "telegram.mtproto_proxy_host",
                "must be a bare host name or IP address (no scheme, path or whitespace)",
            ));
        }
        if t.mtproto_proxy_port == 0 {
            return Err(invalid("telegram.mtproto_proxy_port", "must not be 0"));
        }
        if let Some(p) = &t.proxy {
            check_proxy(p)?;
        }
        check_at_least("telegram.ping_secs", t.ping_secs, 1)?;
        check_at_least("telegram.max_command_age_secs", t.max_command_age_secs, 10)?;
        check_at_least("telegram.start_timeout_secs", t.start_timeout_secs, 1)?;
        check_at_least(
            "telegram.max_failed_starts",
            u64::from(t.max_failed_starts),
            1,
        )?;
        for (role, ttl) in &t.wrap_ttl {
            let key = format!("telegram.wrap_ttl.{role}");
            if role != "admin" && role != "agent" {
                return Err(invalid(key, "unknown role; allowed: admin, agent"));
            }
            if parse_duration(ttl).is_none() {
                return Err(invalid(
                    key,
                    "must be a positive duration such as 30s, 5m or 1h",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate_ipc_http(&self) -> Result<(), ConfigError> {
        let socket = &self.ipc.socket;
        if socket.as_os_str().is_empty() {
            return Err(invalid("ipc.socket", "must not be empty"));
        }
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH_BYTES {
            return Err(invalid(
                "ipc.socket",
                format!(
                    "path is {len} bytes; Unix socket paths are limited to {MAX_SOCKET_PATH_BYTES}"
                ),
            ));
        }
        check_at_least("ipc.idle_timeout_secs", self.ipc.idle_timeout_secs, 1)?;
        check_at_least(
            "ipc.max_connections",
            u64::from(self.ipc.max_connections),
            1,
        )?;
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                "must be an IP address and port such as 127.0.0.1:9090",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_approvals(&self) -> Result<(), ConfigError> {
        let a = &self.approvals;
        for (i, command) in a.required.iter().enumerate() {
            if Effect::from_name(command).is_none() {
                let allowed: Vec<&str> = Effect::ALL.iter().map(|e| e.name()).collect();
                return Err(invalid(
                    format!("approvals.required[{i}]"),
                    format!(
                        "`{command}` cannot require approval; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        // Every gated effect can be requested by an admin, who cannot
        // approve their own request: more than the other admins can never
        // be met, and such a command could never run.
        let others = self.admin_names().len().saturating_sub(1);
        for (effect, &n) in &a.quorum {
            let key = format!("approvals.quorum.\"{effect}\"");
            if Effect::from_name(effect).is_none() {
                let allowed: Vec<&str> = Effect::ALL.iter().map(|e| e.name()).collect();
                return Err(invalid(
                    key,
                    format!(
                        "`{effect}` is not an effect; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if n == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
            if n as usize > others {
                return Err(invalid(
                    key,
                    format!(
                        "{n} approvers can never be found: a requesting admin has {others} other admin(s) to approve"
                    ),
                ));
            }
        }
        let admins = self.admin_names();
        for (i, name) in a.break_glass.iter().enumerate() {
            if !admins.contains(name) {
                return Err(invalid(
                    format!("approvals.break_glass[{i}]"),
                    format!("`{name}` is not an admin operator"),
                ));
            }
        }
        if !(1..=100).contains(&a.break_glass_per_day) {
            return Err(invalid(
                "approvals.break_glass_per_day",
                "must be between 1 and 100",
            ));
        }
        check_at_least("approvals.review_within_secs", a.review_within_secs, 10)?;
        check_at_least("approvals.ttl_secs", a.ttl_secs, 10)?;
        if !(1..=100).contains(&a.max_pending_per_operator) {
            return Err(invalid(
                "approvals.max_pending_per_operator",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_operators(&self) -> Result<(), ConfigError> {
        if self.operators.is_empty() {
            return Err(invalid("operators", "at least one operator is required"));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<i64, &str> = HashMap::new();
        let mut unix_users: HashMap<&str, usize> = HashMap::new();
        let mut totp_keys: HashMap<&str, usize> = HashMap::new();
        for (i, op) in self.operators.iter().enumerate() {
            let key = |field: &str| format!("operators[{i}].{field}");

            check_name_pattern(&key("name"), &op.name)?;
            if let Some(j) = names.insert(&op.name, i) {
                return Err(invalid(
                    key("name"),
                    format!("`{}` is already used by operators[{j}]", op.name),
                ));
            }

            if op.telegram_id <= 0 {
                return Err(invalid(
                    key("telegram_id"),
                    "must be a positive Telegram user id",
                ));
            }
            if let Some(other) = ids.insert(op.telegram_id, &op.name) {
                return Err(invalid(
                    key("telegram_id"),
                    format!("{} is already used by operator `{other}`", op.telegram_id),
                ));
            }

            match (op.role, &op.agent) {
                (Role::Agent, None) => {
                    return Err(invalid(key("agent"), "required when role = \"agent\""))
                }
                (Role::Admin, Some(_)) => {
                    return Err(invalid(key("agent"), "only allowed when role = \"agent\""))
                }
                (Role::Agent, Some(agent)) => {
                    check_name_pattern(&key("agent"), agent)?;
                    // `admin` owns admin-issued MTProto secrets
                    // (vaultgram/mtproto/admin/…): an agent by that name
                    // would read and revoke them.
                    if agent == "admin" {
                        return Err(invalid(
                            key("agent"),
                            "`admin` is reserved (the owner of admin-issued MTProto secrets)",
                        ));
                    }
                }
                (Role::Admin, None) => {}
            }

            if let Some(user) = &op.unix_user {
                if !is_unix_user_name(user) {
                    return Err(invalid(
                        key("unix_user"),
                        "must be a Unix user name (letters, digits, . _ -; \
                         at most 32 characters; not starting with -)",
                    ));
                }
                // SO_PEERCRED gives a uid; it must map to one operator.
                if let Some(j) = unix_users.insert(user, i) {
                    return Err(invalid(
                        key("unix_user"),
                        format!("`{user}` is already used by operators[{j}]"),
                    ));
                }
            }

            if let Some(totp) = &op.totp_key {
                check_vault_name(&key("totp_key"), totp)?;
                if totp.contains('/') {
                    return Err(invalid(key("totp_key"), "must not contain /"));
                }
                // One key for two people makes one person two approvers.
                if let Some(j) = totp_keys.insert(totp, i) {
                    return Err(invalid(
                        key("totp_key"),
                        format!("`{totp}` is already used by operators[{j}]; every operator needs a key of their own"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A Vault or etcd address: a URL with scheme https (or http when
/// `dev_key` is true) and a host, and no credentials (they would end up in
/// logs and in the redacted config).
pub(super) fn check_url(
    key: &str,
    value: &str,
    dev_insecure: bool,
    dev_key: &str,
) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim()).map_err(|e| invalid(key, format!("not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if dev_insecure => {}
        "http" => {
            return Err(invalid(
                key,
                format!("http:// is refused; use https:// or set {dev_key} = true"),
            ))
        }
        _ => return Err(invalid(key, "scheme must be https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, "not a URL: no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, "must not contain a user name or password"));
    }
    Ok(url)
}

/// A file the broker will open later: it must exist now, so that a typo is
/// reported at start-up and not at the first Vault login.
pub(super) fn check_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(invalid(
            key,
            format!("{} is a directory, not a file", path.display()),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(invalid(
            key,
            format!("file {} does not exist", path.display()),
        )),
        Err(e) => Err(invalid(
            key,
            format!("cannot access {}: {e}", path.display()),
        )),
    }
}

/// Vault mount, key and role names end up inside API paths.
pub(super) fn check_vault_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if value.starts_with('/') || value.ends_with('/') {
        return Err(invalid(key, "must not start or end with /"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(key, "must not contain whitespace"));
    }
    Ok(())
}

/// A KV v2 path inside the mount (`vaultgram/telegram-session`).
pub(super) fn check_kv_path(key: &str, value: &str) -> Result<(), ConfigError> {
    check_vault_name(key, value)?;
    if value.split('/').any(str::is_empty) {
        return Err(invalid(key, "must not contain empty segments (//)"));
    }
    if value.split('/').any(|s| s == "." || s == "..") {
        return Err(invalid(key, "must not contain . or .. segments"));
    }
    Ok(())
}

pub(super) fn check_at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// [`NAME_PATTERN`]: names become Vault policy names (the rule of agent
/// ids, `names::is_name`).
pub(super) fn check_name_pattern(key: &str, value: &str) -> Result<(), ConfigError> {
    if crate::names::is_name(value, false) {
        Ok(())
    } else {
        Err(invalid(key, format!("must match {NAME_PATTERN}")))
    }
}

pub(super) fn is_unix_user_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 32
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use crate::config::proxy_with_address;
    use crate::config::testutil::*;

    // --- vault -------------------------------------------------------------

    #[test]
    fn vault_addr_required() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("addr = \"https://127.0.0.1:8200\"\n", ""), &[]),
            "config key `vault.addr`: required (set it in the file or with VAULT_ADDR / BAO_ADDR)"
        );
    }

    #[test]
    fn vault_http_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("\"https://127.0.0.1:8200\"", "\"http://127.0.0.1:8200\""), &[]),
            "config key `vault.addr`: http:// is refused; use https:// or set vault.dev_insecure = true"
        );
    }

    #[test]
    fn vault_addr_not_a_url() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("\"https://127.0.0.1:8200\"", "\"127.0.0.1:8200\""),
                &[]
            ),
            "config key `vault.addr`: not a URL: relative URL without a base"
        );
        assert_eq!(
            fx.err(
                &base_with("\"https://127.0.0.1:8200\"", "\"https://\""),
                &[]
            ),
            "config key `vault.addr`: not a URL: empty host"
        );
    }

    #[test]
    fn vault_addr_wrong_scheme() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("\"https://127.0.0.1:8200\"", "\"ftp://127.0.0.1:8200\""),
                &[]
            ),
            "config key `vault.addr`: scheme must be https"
        );
    }

    #[test]
    fn vault_addr_with_credentials_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with(
                    "\"https://127.0.0.1:8200\"",
                    "\"https://u:p@127.0.0.1:8200\""
                ),
                &[]
            ),
            "config key `vault.addr`: must not contain a user name or password"
        );
    }

    #[test]
    fn vault_ca_cert_missing() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("\"vault-ca.pem\"", "\"nope.pem\""), &[]),
            format!(
                "config key `vault.ca_cert`: file {} does not exist",
                fx.path("nope.pem").display()
            )
        );
    }

    #[test]
    fn file_that_is_a_directory_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("\"vault-ca.pem\"", "\"secrets\""), &[]),
            format!(
                "config key `vault.ca_cert`: {} is a directory, not a file",
                fx.path("secrets").display()
            )
        );
    }

    #[test]
    fn empty_file_path_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("\"vault-ca.pem\"", "\"\""), &[]),
            "config key `vault.ca_cert`: must not be empty"
        );
    }

    #[test]
    fn vault_mount_names() {
        let fx = Fixture::new();
        let cases = [
            (
                "kv_mount = \"\"",
                "config key `vault.kv_mount`: must not be empty",
            ),
            (
                "kv_mount = \"/secret\"",
                "config key `vault.kv_mount`: must not start or end with /",
            ),
            (
                "transit_mount = \"transit/\"",
                "config key `vault.transit_mount`: must not start or end with /",
            ),
            (
                "transit_key = \"my key\"",
                "config key `vault.transit_key`: must not contain whitespace",
            ),
            (
                "operator_token_role = \"\"",
                "config key `vault.operator_token_role`: must not be empty",
            ),
        ];
        for (line, expected) in cases {
            let text = base_with("[vault.auth]", &format!("{line}\n\n[vault.auth]"));
            assert_eq!(fx.err(&text, &[]), expected, "{line}");
        }
        let text = base_with(
            "method = \"approle\"",
            "method = \"approle\"\napprole_mount = \" approle\"",
        );
        assert_eq!(
            fx.err(&text, &[]),
            "config key `vault.auth.approle_mount`: must not contain whitespace"
        );
    }

    #[test]
    fn vault_request_timeout_positive() {
        let fx = Fixture::new();
        let text = base_with("[vault.auth]", "request_timeout_secs = 0\n\n[vault.auth]");
        assert_eq!(
            fx.err(&text, &[]),
            "config key `vault.request_timeout_secs`: must be at least 1"
        );
    }

    #[test]
    fn approle_needs_role_id_file() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("role_id_file = \"secrets/role_id\"\n", ""), &[]),
            "config key `vault.auth.role_id_file`: required when vault.auth.method = \"approle\""
        );
    }

    #[test]
    fn approle_needs_secret_id_file() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("secret_id_file = \"secrets/secret_id\"\n", ""),
                &[]
            ),
            "config key `vault.auth.secret_id_file`: required when vault.auth.method = \"approle\""
        );
    }

    #[test]
    fn approle_files_must_exist() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("\"secrets/role_id\"", "\"secrets/role\""), &[]),
            format!(
                "config key `vault.auth.role_id_file`: file {} does not exist",
                fx.path("secrets/role").display()
            )
        );
        assert_eq!(
            fx.err(&base_with("\"secrets/secret_id\"", "\"secrets/sid\""), &[]),
            format!(
                "config key `vault.auth.secret_id_file`: file {} does not exist",
                fx.path("secrets/sid").display()
            )
        );
    }

    #[test]
    fn kubernetes_needs_role() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("method = \"approle\"", "method = \"kubernetes\""),
                &[]
            ),
            "config key `vault.auth.role`: required when vault.auth.method = \"kubernetes\""
        );
    }

    #[test]
    fn kubernetes_jwt_file_must_exist() {
        let fx = Fixture::new();
        let text = base_with(
            "method = \"approle\"",
            "method = \"kubernetes\"\nrole = \"vaultgram\"\njwt_file = \"sa/token\"",
        );
        assert_eq!(
            fx.err(&text, &[]),
            format!(
                "config key `vault.auth.jwt_file`: file {} does not exist",
                fx.path("sa/token").display()
            )
        );
    }

    #[test]
    fn token_file_must_exist() {
        let fx = Fixture::new();
        let text = edit(
            &token_config(),
            "method = \"token\"\n",
            "method = \"token\"\ntoken_file = \"secrets/token\"\n",
        );
        assert_eq!(
            fx.err(&text, &[("VAULT_TOKEN", "hvs.x")]),
            format!(
                "config key `vault.auth.token_file`: file {} does not exist",
                fx.path("secrets/token").display()
            )
        );
    }

    // --- etcd --------------------------------------------------------------

    #[test]
    fn etcd_endpoints_required() {
        let fx = Fixture::new();
        for replacement in ["endpoints = []", ""] {
            assert_eq!(
                fx.err(&base_with(ENDPOINTS, replacement), &[]),
                "config key `etcd.endpoints`: at least one endpoint is required"
            );
        }
    }

    #[test]
    fn etcd_http_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("\"https://127.0.0.1:22379\"", "\"http://127.0.0.1:22379\""), &[]),
            "config key `etcd.endpoints[1]`: http:// is refused; use https:// or set etcd.dev_insecure = true"
        );
    }

    #[test]
    fn etcd_mixed_schemes_refused() {
        let fx = Fixture::new();
        let text = base_with("\"https://127.0.0.1:22379\"", "\"http://127.0.0.1:22379\"");
        let text = edit(
            &text,
            "password_file =",
            "dev_insecure = true\npassword_file =",
        );
        assert_eq!(
            fx.err(&text, &[]),
            "config key `etcd.endpoints[1]`: uses a different scheme from etcd.endpoints[0]; all endpoints must use the same scheme"
        );
    }

    #[test]
    fn etcd_endpoint_not_a_url() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("\"https://127.0.0.1:32379\"", "\"127.0.0.1:32379\""),
                &[]
            ),
            "config key `etcd.endpoints[2]`: not a URL: relative URL without a base"
        );
        assert_eq!(
            fx.err(
                &base_with("\"https://127.0.0.1:32379\"", "\"unix:///run/etcd.sock\""),
                &[]
            ),
            "config key `etcd.endpoints[2]`: scheme must be https"
        );
    }

    #[test]
    fn etcd_duplicate_endpoint_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("\"https://127.0.0.1:32379\"", "\"https://127.0.0.1:2379\""),
                &[]
            ),
            "config key `etcd.endpoints[2]`: duplicate of etcd.endpoints[0]"
        );
    }

    #[test]
    fn etcd_tls_files_required_for_https() {
        let fx = Fixture::new();
        for (line, key) in [
            ("ca_cert = \"etcd/ca.pem\"\n", "etcd.ca_cert"),
            ("cert = \"etcd/client.pem\"\n", "etcd.cert"),
            ("key = \"etcd/client-key.pem\"\n", "etcd.key"),
        ] {
            assert_eq!(
                fx.err(&base_with(line, ""), &[]),
                format!("config key `{key}`: required for https:// endpoints (etcd uses client-certificate auth)")
            );
        }
    }

    #[test]
    fn etcd_files_must_exist() {
        let fx = Fixture::new();
        for (file, key) in [
            ("etcd/ca.pem", "etcd.ca_cert"),
            ("etcd/client.pem", "etcd.cert"),
            ("etcd/client-key.pem", "etcd.key"),
            ("etcd/password", "etcd.password_file"),
        ] {
            std::fs::remove_file(fx.path(file)).unwrap();
            assert_eq!(
                fx.err(BASE, &[]),
                format!(
                    "config key `{key}`: file {} does not exist",
                    fx.path(file).display()
                )
            );
            fx.write(file, "x");
        }
    }

    #[test]
    fn etcd_user_not_empty() {
        let fx = Fixture::new();
        let text = base_with("password_file =", "user = \"\"\npassword_file =");
        assert_eq!(
            fx.err(&text, &[]),
            "config key `etcd.user`: must not be empty"
        );
    }

    #[test]
    fn etcd_prefix_rules() {
        let fx = Fixture::new();
        for (prefix, reason) in [
            ("vaultgram/", "must start and end with /"),
            ("/vaultgram", "must start and end with /"),
            ("", "must start and end with /"),
            (
                "/",
                "must not be / alone (the broker needs a key prefix of its own)",
            ),
            ("/vault gram/", "must not contain whitespace"),
        ] {
            let text = base_with(
                "password_file =",
                &format!("prefix = \"{prefix}\"\npassword_file ="),
            );
            assert_eq!(
                fx.err(&text, &[]),
                format!("config key `etcd.prefix`: {reason}"),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn etcd_lease_ttl_at_least_two() {
        let fx = Fixture::new();
        let text = base_with("password_file =", "lease_ttl_secs = 1\npassword_file =");
        assert_eq!(
            fx.err(&text, &[]),
            "config key `etcd.lease_ttl_secs`: must be at least 2"
        );
        let text = base_with("password_file =", "lease_ttl_secs = 2\npassword_file =");
        fx.ok(&text, &[]);
    }

    #[test]
    fn etcd_timeouts_positive() {
        let fx = Fixture::new();
        for key in ["connect_timeout_secs", "request_timeout_secs"] {
            let text = base_with("password_file =", &format!("{key} = 0\npassword_file ="));
            assert_eq!(
                fx.err(&text, &[]),
                format!("config key `etcd.{key}`: must be at least 1")
            );
        }
    }

    // --- telegram, ipc, http -----------------------------------------------

    #[test]
    fn telegram_kv_paths() {
        let fx = Fixture::new();
        for (line, expected) in [
            (
                "app_path = \"\"",
                "config key `telegram.app_path`: must not be empty",
            ),
            (
                "app_path = \"/telegram\"",
                "config key `telegram.app_path`: must not start or end with /",
            ),
            (
                "session_path = \"a//b\"",
                "config key `telegram.session_path`: must not contain empty segments (//)",
            ),
            (
                "session_path = \"a/../b\"",
                "config key `telegram.session_path`: must not contain . or .. segments",
            ),
            (
                "session_path = \"a b\"",
                "config key `telegram.session_path`: must not contain whitespace",
            ),
        ] {
            assert_eq!(
                fx.err(&with_table(&format!("[telegram]\n{line}")), &[]),
                expected,
                "{line}"
            );
        }
    }

    #[test]
    fn telegram_numbers_and_host() {
        let fx = Fixture::new();
        for (line, expected) in [
            ("secret_reply_ttl_secs = 0", "config key `telegram.secret_reply_ttl_secs`: must be at least 1"),
            ("mtproto_proxy_host = \"\"", "config key `telegram.mtproto_proxy_host`: must not be empty"),
            ("mtproto_proxy_host = \"https://p.example\"", "config key `telegram.mtproto_proxy_host`: must be a bare host name or IP address (no scheme, path or whitespace)"),
            ("mtproto_proxy_port = 0", "config key `telegram.mtproto_proxy_port`: must not be 0"),
        ] {
            assert_eq!(fx.err(&with_table(&format!("[telegram]\n{line}")), &[]), expected, "{line}");
        }
        // Out of u16 range is a type error from toml.
        let err = fx.err(&with_table("[telegram]\nmtproto_proxy_port = 70000"), &[]);
        assert!(err.contains("`telegram.mtproto_proxy_port`"), "{err}");
    }

    #[test]
    fn telegram_wrap_ttl_rules() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&with_table("[telegram.wrap_ttl]\nroot = \"60s\""), &[]),
            "config key `telegram.wrap_ttl.root`: unknown role; allowed: admin, agent"
        );
        for bad in ["60", "1d", "0s", "5 m"] {
            assert_eq!(
                fx.err(&with_table(&format!("[telegram.wrap_ttl]\nagent = \"{bad}\"")), &[]),
                "config key `telegram.wrap_ttl.agent`: must be a positive duration such as 30s, 5m or 1h",
                "{bad}"
            );
        }
    }

    #[test]
    fn telegram_proxy_rules() {
        let fx = Fixture::new();
        for ok in [
            "socks5://127.0.0.1:1080",
            "socks5://user:pa-ss.w0rd~@127.0.0.1:1080",
            // A host name: resolved by the client before connecting.
            "socks5://proxy.internal:1080",
            "socks5://[::1]:1080",
        ] {
            fx.ok(&with_table(&format!("[telegram]\nproxy = \"{ok}\"")), &[]);
        }
        assert_eq!(
            proxy_with_address(
                "socks5://u:p@proxy.internal:1080",
                "10.1.2.3".parse().unwrap()
            ),
            "socks5://u:p@10.1.2.3:1080"
        );
        for (proxy, reason) in [
            ("http://127.0.0.1:3128", "scheme must be socks5"),
            ("127.0.0.1:1080", "not a URL: relative URL without a base"),
            (
                "socks5://127.0.0.1",
                "must name a port (socks5://host:1080)",
            ),
            (
                "socks5h://127.0.0.1:1080",
                "socks5h is not supported: grammers speaks socks5 only (it resolves the proxy's host name itself); use socks5://",
            ),
            (
                "socks5://us%40er:p%3Ass@127.0.0.1:1080",
                "user and password must not need percent-encoding: grammers passes them to the proxy undecoded; use letters, digits and -._~!$&'()*+,;=",
            ),
            (
                "socks5://u:p ss@127.0.0.1:1080",
                "user and password must not need percent-encoding: grammers passes them to the proxy undecoded; use letters, digits and -._~!$&'()*+,;=",
            ),
            ("socks5://:pw@127.0.0.1:1080", "a password needs a user name"),
            ("socks5://127.0.0.1:1080/x", "must not have a path, query or fragment"),
        ] {
            assert_eq!(
                fx.err(
                    &with_table(&format!("[telegram]\nproxy = \"{proxy}\"")),
                    &[]
                ),
                format!("config key `telegram.proxy`: {reason}"),
                "{proxy}"
            );
        }
    }

    #[test]
    fn ipc_socket_is_resolved_and_length_checked() {
        let fx = Fixture::new();
        let c = fx.ok(&with_table("[ipc]\nsocket = \"run/v.sock\""), &[]);
        assert_eq!(c.ipc.socket, fx.path("run/v.sock"));
        let long = format!("/{}", "a".repeat(120));
        assert_eq!(
            fx.err(&with_table(&format!("[ipc]\nsocket = \"{long}\"")), &[]),
            "config key `ipc.socket`: path is 121 bytes; Unix socket paths are limited to 107"
        );
        assert_eq!(
            fx.err(&with_table("[ipc]\nsocket = \"\""), &[]),
            "config key `ipc.socket`: must not be empty"
        );
    }

    #[test]
    fn http_listen_must_be_a_socket_address() {
        let fx = Fixture::new();
        fx.ok(&with_table("[http]\nlisten = \"[::1]:9090\""), &[]);
        assert_eq!(
            fx.err(&with_table("[http]\nlisten = \"localhost\""), &[]),
            "config key `http.listen`: must be an IP address and port such as 127.0.0.1:9090"
        );
    }

    // --- approvals ---------------------------------------------------------

    #[test]
    fn approvals_required_must_be_known_commands() {
        let fx = Fixture::new();
        fx.ok(&with_table("[approvals]\nrequired = [\"kv destroy\"]"), &[]);
        fx.ok(&with_table("[approvals]\nrequired = []"), &[]);
        assert_eq!(
            fx.err(&with_table("[approvals]\nrequired = [\"kv destroy\", \"kv get\"]"), &[]),
            "config key `approvals.required[1]`: `kv get` cannot require approval; allowed: kv destroy, kv metadata delete, transit rotate, agent revoke, mtproto revoke, panel show --reveal, operator resume"
        );
    }

    #[test]
    fn approvals_quorum_must_be_reachable() {
        let fx = Fixture::new();
        let admins = |n: usize| {
            (0..n)
                .map(|i| {
                    format!(
                        "\n[[operators]]\nname = \"adm{i}\"\ntelegram_id = {}\nrole = \"admin\"\n",
                        900 + i
                    )
                })
                .collect::<String>()
        };
        // alice plus two more admins: two others approve alice's request.
        let c = fx.ok(
            &with_table(&format!(
                "[approvals.quorum]\n\"kv destroy\" = 2\n{}",
                admins(2)
            )),
            &[],
        );
        assert_eq!(
            c.approvals
                .quorum_for(&[crate::config::Effect::DestroyVersions]),
            2
        );
        assert_eq!(
            c.approvals.quorum_for(&[crate::config::Effect::RotateKey]),
            1
        );
        for (table, want) in [
            (
                format!("[approvals.quorum]\n\"kv destroy\" = 3\n{}", admins(2)),
                "config key `approvals.quorum.\"kv destroy\"`: 3 approvers can never be found: a requesting admin has 2 other admin(s) to approve",
            ),
            (
                "[approvals]\nbreak_glass = [\"bob\"]".to_string(),
                "config key `approvals.break_glass[0]`: `bob` is not an admin operator",
            ),
            (
                "[approvals]\nbreak_glass_per_day = 0".to_string(),
                "config key `approvals.break_glass_per_day`: must be between 1 and 100",
            ),
            (
                "[approvals.quorum]\n\"kv destroy\" = 0".to_string(),
                "config key `approvals.quorum.\"kv destroy\"`: must be at least 1",
            ),
            (
                "[approvals.quorum]\n\"kv get\" = 1".to_string(),
                "config key `approvals.quorum.\"kv get\"`: `kv get` is not an effect; allowed: kv destroy, kv metadata delete, transit rotate, agent revoke, mtproto revoke, panel show --reveal, operator resume",
            ),
        ] {
            assert_eq!(fx.err(&with_table(&table), &[]), want, "{table}");
        }
    }

    #[test]
    fn security_rules() {
        let fx = Fixture::new();
        fx.ok(&with_table("[security]\nstep_up = \"off\""), &[]);
        for (table, err) in [
            ("[security]\nstep_up = \"some\"", None),
            (
                "[security]\nunlock_ttl_secs = 5",
                Some("config key `security.unlock_ttl_secs`: must be at least 10"),
            ),
            (
                "[security]\nunlock_max_failures = 0",
                Some("config key `security.unlock_max_failures`: must be between 1 and 20"),
            ),
            (
                "[security]\nreveal_budget = 0",
                Some("config key `security.reveal_budget`: must be at least 1"),
            ),
        ] {
            let e = fx.err(&with_table(table), &[]);
            if let Some(want) = err {
                assert_eq!(e, want, "{table}");
            } else {
                assert!(e.contains("security.step_up"), "{e}");
            }
        }
        // Step-up needs every operator to have a TOTP key of its own.
        let e = fx.err(&with_table("[security]\nstep_up = \"secrets\""), &[]);
        assert!(
            e.contains(".totp_key`: required while security.step_up is on"),
            "{e}"
        );
    }

    #[test]
    fn approvals_ttl_at_least_ten() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&with_table("[approvals]\nttl_secs = 9"), &[]),
            "config key `approvals.ttl_secs`: must be at least 10"
        );
        fx.ok(&with_table("[approvals]\nttl_secs = 10"), &[]);
    }

    // --- operators ---------------------------------------------------------

    #[test]
    fn operators_required() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with(ALICE_AND_BOB, ""), &[]),
            "config key `operators`: at least one operator is required"
        );
        assert_eq!(
            fx.err(
                &format!("operators = []\n{}", base_with(ALICE_AND_BOB, "")),
                &[]
            ),
            "config key `operators`: at least one operator is required"
        );
    }

    #[test]
    fn duplicate_telegram_id() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("telegram_id = 222222", "telegram_id = 111111"),
                &[]
            ),
            "config key `operators[1].telegram_id`: 111111 is already used by operator `alice`"
        );
    }

    #[test]
    fn non_positive_telegram_id() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("telegram_id = 222222", "telegram_id = -5"), &[]),
            "config key `operators[1].telegram_id`: must be a positive Telegram user id"
        );
    }

    #[test]
    fn duplicate_name() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("name = \"bob\"", "name = \"alice\""), &[]),
            "config key `operators[1].name`: `alice` is already used by operators[0]"
        );
    }

    #[test]
    fn operator_name_pattern() {
        let fx = Fixture::new();
        for bad in ["Bob", "", "-bob", "bob smith", "b.b", &"b".repeat(64)] {
            assert_eq!(
                fx.err(
                    &base_with("name = \"bob\"", &format!("name = \"{bad}\"")),
                    &[]
                ),
                "config key `operators[1].name`: must match [a-z0-9][a-z0-9_-]{0,62}",
                "{bad}"
            );
        }
        fx.ok(
            &base_with("name = \"bob\"", &format!("name = \"{}\"", "b".repeat(63))),
            &[],
        );
    }

    #[test]
    fn agent_role_needs_agent() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("agent = \"bob\"\n", ""), &[]),
            "config key `operators[1].agent`: required when role = \"agent\""
        );
    }

    #[test]
    fn admin_with_agent_refused() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(
                &base_with("unix_user = \"alice\"", "agent = \"alice\""),
                &[]
            ),
            "config key `operators[0].agent`: only allowed when role = \"agent\""
        );
    }

    #[test]
    fn agent_name_pattern() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("agent = \"bob\"", "agent = \"Bob/x\""), &[]),
            "config key `operators[1].agent`: must match [a-z0-9][a-z0-9_-]{0,62}"
        );
    }

    #[test]
    fn unix_user_rules() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("unix_user = \"alice\"", "unix_user = \"al ice\""), &[]),
            "config key `operators[0].unix_user`: must be a Unix user name (letters, digits, . _ -; at most 32 characters; not starting with -)"
        );
        assert_eq!(
            fx.err(
                &base_with("agent = \"bob\"", "agent = \"bob\"\nunix_user = \"alice\""),
                &[]
            ),
            "config key `operators[1].unix_user`: `alice` is already used by operators[0]"
        );
    }

    #[test]
    fn totp_key_rules() {
        let fx = Fixture::new();
        let c = fx.ok(
            &base_with("unix_user = \"alice\"", "totp_key = \"alice-phone\""),
            &[],
        );
        assert_eq!(c.operators[0].totp_key.as_deref(), Some("alice-phone"));
        assert_eq!(
            fx.err(
                &base_with("unix_user = \"alice\"", "totp_key = \"a/b\""),
                &[]
            ),
            "config key `operators[0].totp_key`: must not contain /"
        );
        assert_eq!(
            fx.err(&base_with("unix_user = \"alice\"", "totp_key = \"\""), &[]),
            "config key `operators[0].totp_key`: must not be empty"
        );
        // Two operators, one key: one person could approve as both.
        let text = base_with("unix_user = \"alice\"", "totp_key = \"shared\"")
            + "\n[[operators]]\nname = \"dave\"\ntelegram_id = 444444\nrole = \"admin\"\ntotp_key = \"shared\"\n";
        assert_eq!(
            fx.err(&text, &[]),
            "config key `operators[2].totp_key`: `shared` is already used by operators[0]; every operator needs a key of their own"
        );
        // An admin's default key is its name: another admin may not take it.
        let text = base_with("unix_user = \"alice\"", "unix_user = \"alice\"")
            + "\n[[operators]]\nname = \"dave\"\ntelegram_id = 444444\nrole = \"admin\"\ntotp_key = \"alice\"\n";
        assert!(fx
            .err(&text, &[])
            .contains("`alice` is already used by operators[0]"));
    }

    #[test]
    fn agent_admin_is_reserved() {
        let fx = Fixture::new();
        assert_eq!(
            fx.err(&base_with("agent = \"bob\"", "agent = \"admin\""), &[]),
            "config key `operators[1].agent`: `admin` is reserved (the owner of admin-issued MTProto secrets)"
        );
    }
}
