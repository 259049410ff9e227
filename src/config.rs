//! Configuration: the TOML file of `SPEC.md`, environment overrides and
//! validation.
//!
//! Loading is a fixed pipeline, and nothing in it touches the network:
//!
//! 1. read the file ([`ConfigError::Read`]);
//! 2. parse it; TOML syntax and type errors become [`ConfigError::Parse`],
//!    with the dotted key path prepended when it can be recovered;
//! 3. normalise: relative file paths are resolved against the directory of
//!    the config file (so a config works the same from any working
//!    directory), and per-operator defaults are filled in;
//! 4. apply the standard Vault variables (`VAULT_ADDR`/`BAO_ADDR`,
//!    `VAULT_CACERT`, `VAULT_TOKEN`);
//! 5. validate, returning the *first* problem as [`ConfigError::Invalid`]
//!    in a fixed order: unknown keys first, then the fields top to bottom;
//! 6. with `vault.auth.method = "token"` and no `VAULT_TOKEN`, read the
//!    token from `vault.auth.token_file` (the only file whose contents are
//!    read here; all other files are only checked for existence).
//!
//! Every error names the offending key, so an operator can fix the file
//! without reading the source, and the process exits before it contacts
//! Vault or etcd.
//!
//! Secrets: the only secret held here is the Vault token, in a
//! [`SecretString`] that serde never (de)serialises and `Debug` never
//! shows. A SOCKS5 proxy URL may embed a password; `Debug` and
//! [`Config::redacted_toml`] mask it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

/// Where the config is looked for when neither `--config` nor
/// `$VAULTGRAM_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/vaultgram/vaultgram.toml";

/// The commands that may be listed under `approvals.required` (and are by
/// default): the destructive or secret-revealing ones of `SPEC.md`.
pub const APPROVABLE_COMMANDS: [&str; 7] = [
    "kv destroy",
    "kv metadata delete",
    "transit rotate",
    "agent revoke",
    "mtproto revoke",
    "panel show --reveal",
    "operator resume",
];

/// The pattern operator and agent names must match. They end up in Vault
/// policy names, token display names and metadata, so they are kept to a
/// conservative alphabet.
pub const NAME_PATTERN: &str = "[a-z0-9][a-z0-9_-]{0,62}";

/// What the redacted rendering shows in place of a secret.
const REDACTED: &str = "<redacted>";

/// Unix `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// A configuration problem. The `Display` text is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error; `message` starts with the key path
    /// (`` `operators[1].telegram_id`: ``) whenever it can be recovered.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Where the config comes from: explicit `--config`, else
/// `$VAULTGRAM_CONFIG`, else [`DEFAULT_PATH`].
pub fn resolve_path(cli: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(path) = cli {
        return path.to_path_buf();
    }
    match env("VAULTGRAM_CONFIG").filter(|v| !v.trim().is_empty()) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(DEFAULT_PATH),
    }
}

/// The process environment as the `env` closure of [`Config::load`]
/// expects it: unset and empty variables are both `None`.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------
// Structures
// ---------------------------------------------------------------------------

/// The whole configuration. After [`Config::load`] every file path in it is
/// absolute and every rule of the module docs holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub vault: VaultConfig,
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub telegram: TelegramConfig,
    #[serde(default)]
    pub ipc: IpcConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    /// Defaults to empty only so that a missing list gets the clear
    /// "at least one operator is required" rather than a serde message.
    #[serde(default)]
    pub operators: Vec<Operator>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultConfig {
    /// Empty when absent from the file, so that `VAULT_ADDR` alone can
    /// supply it; validation rejects it if it is still empty.
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    #[serde(default = "default_transit_mount")]
    pub transit_mount: String,
    #[serde(default = "default_transit_key")]
    pub transit_key: String,
    #[serde(default = "default_operator_token_role")]
    pub operator_token_role: String,
    /// Allows `http://` for Vault (development only).
    #[serde(default)]
    pub dev_insecure: bool,
    #[serde(default = "default_vault_request_timeout")]
    pub request_timeout_secs: u64,
    pub auth: VaultAuth,
}

/// How the broker logs in to Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Approle,
    Kubernetes,
    Token,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Approle => "approle",
            AuthMethod::Kubernetes => "kubernetes",
            AuthMethod::Token => "token",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[vault.auth]`. Only the keys of the chosen `method` are used; the
/// others keep their defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaultAuth {
    pub method: AuthMethod,
    // approle
    #[serde(default)]
    pub role_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_id_file: Option<PathBuf>,
    /// The secret_id file holds a response-wrapping token to unwrap.
    #[serde(default = "default_true")]
    pub secret_id_wrapped: bool,
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    // kubernetes
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
    #[serde(default = "default_jwt_file")]
    pub jwt_file: PathBuf,
    // token
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// From `VAULT_TOKEN` or the contents of `token_file`, and only with
    /// `method = "token"`. Never read from nor written to TOML (a `token`
    /// key in the file is reported as unknown), never shown by `Debug`.
    #[serde(skip)]
    pub token: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdConfig {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default = "default_etcd_user")]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// Allows `http://` endpoints (development only).
    #[serde(default)]
    pub dev_insecure: bool,
    #[serde(default = "default_etcd_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_etcd_request_timeout")]
    pub request_timeout_secs: u64,
}

impl EtcdConfig {
    /// Whether the endpoints use TLS (validation guarantees that all of
    /// them use the same scheme).
    pub fn uses_tls(&self) -> bool {
        self.endpoints
            .first()
            .is_some_and(|e| e.to_ascii_lowercase().starts_with("https://"))
    }
}

/// `[telegram]`. `Debug` is written by hand so that a password embedded
/// in `proxy` never reaches a log.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelegramConfig {
    /// KV path of `api_id` / `api_hash`.
    pub app_path: String,
    /// KV path of the MTProto session.
    pub session_path: String,
    pub secret_reply_ttl_secs: u64,
    pub mtproto_proxy_host: String,
    pub mtproto_proxy_port: u16,
    /// Role name (`admin`/`agent`) → response-wrapping TTL such as `60s`.
    pub wrap_ttl: BTreeMap<String, String>,
    /// `socks5://[user:password@]host:port`, if Telegram must be reached
    /// through a proxy.
    pub proxy: Option<String>,
    /// `false`: `run` serves the socket (and HTTP) only: no election, no
    /// Telegram client.
    pub enabled: bool,
    /// Which client talks to Telegram: `grammers` (MTProto), or `file`, a
    /// TEST-ONLY stand-in for the grammers client (JSONL inbox/outbox in
    /// `file_dir`) so everything around it runs for real in tests.
    pub backend: TelegramBackend,
    pub file_dir: Option<PathBuf>,
    /// How often the leader writes the session (auth keys, update state)
    /// back to Vault.
    pub session_save_secs: u64,
    /// A FLOOD_WAIT up to this long is slept through; a longer one is
    /// reported instead.
    pub flood_wait_max_secs: u64,
    /// How long handled message ids are remembered (etcd lease).
    pub dedup_ttl_secs: u64,
    /// How often the leader checks that its connection still answers; an
    /// answer later than this (at most 10 s) restarts the client.
    pub ping_secs: u64,
}

/// `telegram.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramBackend {
    #[default]
    Grammers,
    File,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            app_path: "telegram".into(),
            session_path: "vaultgram/telegram-session".into(),
            secret_reply_ttl_secs: 60,
            mtproto_proxy_host: "proxy.example.com".into(),
            mtproto_proxy_port: 443,
            wrap_ttl: BTreeMap::new(),
            proxy: None,
            enabled: true,
            backend: TelegramBackend::Grammers,
            file_dir: None,
            session_save_secs: 60,
            flood_wait_max_secs: 60,
            dedup_ttl_secs: 7 * 24 * 3600,
            ping_secs: 60,
        }
    }
}

impl fmt::Debug for TelegramConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramConfig")
            .field("app_path", &self.app_path)
            .field("session_path", &self.session_path)
            .field("secret_reply_ttl_secs", &self.secret_reply_ttl_secs)
            .field("mtproto_proxy_host", &self.mtproto_proxy_host)
            .field("mtproto_proxy_port", &self.mtproto_proxy_port)
            .field("wrap_ttl", &self.wrap_ttl)
            .field("proxy", &self.proxy.as_deref().map(redact_url_password))
            .field("enabled", &self.enabled)
            .field("backend", &self.backend)
            .field("file_dir", &self.file_dir)
            .field("session_save_secs", &self.session_save_secs)
            .field("flood_wait_max_secs", &self.flood_wait_max_secs)
            .field("ping_secs", &self.ping_secs)
            .field("dedup_ttl_secs", &self.dedup_ttl_secs)
            .finish()
    }
}

impl TelegramConfig {
    /// The configured response-wrapping TTL for `role`, if any.
    pub fn wrap_ttl_for(&self, role: Role) -> Option<Duration> {
        self.wrap_ttl
            .get(role.as_str())
            .and_then(|v| parse_duration(v))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IpcConfig {
    pub socket: PathBuf,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Connections served at once; the next one is told to try again.
    pub max_connections: u32,
}

impl Default for IpcConfig {
    fn default() -> Self {
        IpcConfig {
            socket: PathBuf::from("/run/vaultgram/vaultgram.sock"),
            idle_timeout_secs: 60,
            max_connections: 64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApprovalsConfig {
    /// Commands that wait for a second admin's `/approve`.
    pub required: Vec<String>,
    /// How long a pending request lives (its etcd lease).
    pub ttl_secs: u64,
    /// Requests one operator may have waiting at once (a full `/pending`
    /// is a way to hide the one that matters).
    pub max_pending_per_operator: u32,
    /// Tell the admins of a new request and the requester of its outcome
    /// in Telegram (sent by the leader).
    pub notify: bool,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            required: APPROVABLE_COMMANDS.iter().map(|s| s.to_string()).collect(),
            ttl_secs: 600,
            max_pending_per_operator: 5,
            notify: true,
        }
    }
}

/// `[security]`: containing a stolen operator account (`src/security.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SecurityConfig {
    /// Which commands need an unlocked operator (`/unlock CODE`).
    pub step_up: StepUp,
    /// How long `/unlock` opens the window.
    pub unlock_ttl_secs: u64,
    /// Wrong unlock codes in a row that suspend the operator.
    pub unlock_max_failures: u32,
    /// Secret-bearing replies per operator per window.
    pub reveal_budget: u32,
    pub reveal_window_secs: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            step_up: StepUp::Off,
            unlock_ttl_secs: 900,
            unlock_max_failures: 3,
            reveal_budget: 30,
            reveal_window_secs: 600,
        }
    }
}

/// `[kubernetes]`: the pod's own confinement check (`src/kube.rs`). Inside
/// a pod (`KUBERNETES_SERVICE_HOST` set) the broker reads its Pod and the
/// namespace's NetworkPolicies with its ServiceAccount; outside it does
/// nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct KubernetesConfig {
    /// `run` refuses to start, and `/readyz` fails, while the pod is not
    /// selected for Egress by a NetworkPolicy.
    pub require_confinement: bool,
    /// How often `run` checks again.
    pub recheck_secs: u64,
    /// The API credentials: `token`, `ca.crt` and `namespace`, as the
    /// kubelet mounts them (k8s/base/vaultgram.yaml projects the same files).
    pub service_account_dir: PathBuf,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            require_confinement: false,
            recheck_secs: 300,
            service_account_dir: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount"),
        }
    }
}

/// `[backup]`: where `scripts/backup.sh` puts snapshots, for `doctor`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct BackupConfig {
    /// `BACKUP_DIR` of the backup job; unset: `doctor` does not look.
    pub dir: Option<PathBuf>,
    /// `doctor` warns when the newest snapshot is older (default 26 h: a
    /// daily job plus slack).
    pub max_age_secs: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            dir: None,
            max_age_secs: 26 * 3600,
        }
    }
}

/// `security.step_up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepUp {
    /// No unlocking (the behaviour before `[security]`).
    #[default]
    Off,
    /// Commands whose reply or input carries a secret.
    Secrets,
    /// Every command but `/help`, `/whoami`, `/unlock`, `/lock` and
    /// `/operator suspend`.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[operators]]` entry: a Telegram account allowed to give commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    pub name: String,
    pub telegram_id: i64,
    pub role: Role,
    /// The local Unix user who may use `ctl` as this operator
    /// (checked with `SO_PEERCRED`).
    #[serde(default)]
    pub unix_user: Option<String>,
    /// The agent this operator acts for; required exactly when
    /// `role = "agent"`.
    #[serde(default)]
    pub agent: Option<String>,
    /// Name of the Vault TOTP key (`totp/code/NAME`) checked when this
    /// admin approves; after loading it is `Some(name)` for every admin
    /// that did not set it.
    #[serde(default)]
    pub totp_key: Option<String>,
}

fn default_kv_mount() -> String {
    "secret".into()
}
fn default_transit_mount() -> String {
    "transit".into()
}
fn default_transit_key() -> String {
    "vaultgram".into()
}
fn default_operator_token_role() -> String {
    "vaultgram-operator".into()
}
fn default_vault_request_timeout() -> u64 {
    10
}
fn default_true() -> bool {
    true
}
fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
fn default_etcd_user() -> Option<String> {
    Some("vaultgram".into())
}
fn default_etcd_prefix() -> String {
    "/vaultgram/".into()
}
fn default_lease_ttl() -> u64 {
    10
}
fn default_etcd_connect_timeout() -> u64 {
    5
}
fn default_etcd_request_timeout() -> u64 {
    5
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

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

    fn build(
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
    fn resolve_paths(&mut self, base: &Path) {
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

    fn fill_defaults(&mut self) {
        for op in &mut self.operators {
            if op.role == Role::Admin && op.totp_key.is_none() {
                op.totp_key = Some(op.name.clone());
            }
        }
    }

    /// The standard Vault variables override the file. Blank values count
    /// as unset, as the Vault CLI treats them.
    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
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

    /// With `method = "token"` and no `VAULT_TOKEN`, read `token_file`
    /// (validation has already checked that it is set and exists).
    fn load_token(&mut self) -> Result<(), ConfigError> {
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

    pub fn operator_by_name(&self, name: &str) -> Option<&Operator> {
        self.operators.iter().find(|op| op.name == name)
    }

    pub fn operator_by_telegram_id(&self, id: i64) -> Option<&Operator> {
        self.operators.iter().find(|op| op.telegram_id == id)
    }
}

/// Parse the TOML text, collecting every key serde ignored (as
/// `vault.adr`, `operators[0].nmae`) instead of using
/// `deny_unknown_fields`, which would stop at a serde message without
/// the full path.
fn parse(text: &str, origin: &Path) -> Result<(Config, Vec<String>), ConfigError> {
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
fn format_ignored_path(path: &serde_ignored::Path<'_>) -> String {
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
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    fn join(parent: &str, key: &str) -> String {
        if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        }
    }
    fn in_table(table: &DeTable<'_>, offset: usize, parent: &str) -> Option<String> {
        table.iter().find_map(|(key, value)| {
            let path = join(parent, key.get_ref());
            in_value(value, offset, &path).or_else(|| {
                (key.span().contains(&offset) || value.span().contains(&offset)).then_some(path)
            })
        })
    }
    // A match strictly inside `value` (not `value` itself).
    fn in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &str) -> Option<String> {
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

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.as_os_str().is_empty() {
        // Left empty so that validation reports "must not be empty"
        // instead of silently meaning the config directory.
        return PathBuf::new();
    }
    clean(&base.join(path))
}

/// Make `path` absolute against the working directory (lexically).
fn absolute(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    clean(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Drop `.` components (`/etc/vaultgram/./ca.pem` → `/etc/vaultgram/ca.pem`)
/// so messages show the path an operator would type. `..` is kept:
/// removing it lexically is wrong across symlinks.
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// `telegram.proxy`: what grammers 0.11 can use. It speaks `socks5` only
/// (no `socks5h`), takes user and password from the URL as written
/// (percent-escapes reach the proxy undecoded), and needs a port. A host
/// name is accepted: the client resolves it before connecting.
fn check_proxy(raw: &str) -> Result<(), ConfigError> {
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

/// `proxy` with its host replaced by `ip` (a name resolved by the client).
pub fn proxy_with_address(proxy: &str, ip: std::net::IpAddr) -> String {
    match Url::parse(proxy) {
        Ok(mut url) => {
            if url.set_ip_host(ip).is_err() {
                return proxy.to_string();
            }
            url.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => proxy.to_string(),
    }
}

/// Replace the password of a URL (`socks5://u:p@h`) by `<redacted>`.
fn redact_url_password(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) if url.password().is_some() => {
            let user = url.username();
            let rest = &url[url::Position::BeforeHost..];
            format!("{}://{user}:{REDACTED}@{rest}", url.scheme())
        }
        Ok(_) => raw.to_string(),
        // Unparsable: it might still hold credentials, so show none of it
        // if it looks like it does.
        Err(_) if raw.contains('@') => REDACTED.to_string(),
        Err(_) => raw.to_string(),
    }
}

/// `30s`, `5m`, `1h`: digits followed by one unit, greater than zero.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    if n == 0 {
        return None;
    }
    n.checked_mul(unit).map(Duration::from_secs)
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

impl Config {
    /// The rules of the module docs, in file order; the first failure wins.
    fn validate(&self) -> Result<(), ConfigError> {
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

    fn validate_security(&self) -> Result<(), ConfigError> {
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

    fn validate_vault(&self) -> Result<(), ConfigError> {
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

    fn validate_etcd(&self) -> Result<(), ConfigError> {
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

    fn validate_telegram(&self) -> Result<(), ConfigError> {
        let t = &self.telegram;
        check_kv_path("telegram.app_path", &t.app_path)?;
        check_kv_path("telegram.session_path", &t.session_path)?;
        check_at_least("telegram.secret_reply_ttl_secs", t.secret_reply_ttl_secs, 1)?;
        check_at_least("telegram.session_save_secs", t.session_save_secs, 1)?;
        check_at_least("telegram.dedup_ttl_secs", t.dedup_ttl_secs, 60)?;
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

    fn validate_ipc_http(&self) -> Result<(), ConfigError> {
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

    fn validate_approvals(&self) -> Result<(), ConfigError> {
        let a = &self.approvals;
        for (i, command) in a.required.iter().enumerate() {
            if !APPROVABLE_COMMANDS.contains(&command.as_str()) {
                return Err(invalid(
                    format!("approvals.required[{i}]"),
                    format!(
                        "`{command}` cannot require approval; allowed: {}",
                        APPROVABLE_COMMANDS.join(", ")
                    ),
                ));
            }
        }
        check_at_least("approvals.ttl_secs", a.ttl_secs, 10)?;
        if !(1..=100).contains(&a.max_pending_per_operator) {
            return Err(invalid(
                "approvals.max_pending_per_operator",
                "must be between 1 and 100",
            ));
        }
        Ok(())
    }

    fn validate_operators(&self) -> Result<(), ConfigError> {
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
fn check_url(
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
fn check_file(key: &str, path: &Path) -> Result<(), ConfigError> {
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
fn check_vault_name(key: &str, value: &str) -> Result<(), ConfigError> {
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
fn check_kv_path(key: &str, value: &str) -> Result<(), ConfigError> {
    check_vault_name(key, value)?;
    if value.split('/').any(str::is_empty) {
        return Err(invalid(key, "must not contain empty segments (//)"));
    }
    if value.split('/').any(|s| s == "." || s == "..") {
        return Err(invalid(key, "must not contain . or .. segments"));
    }
    Ok(())
}

fn check_at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// [`NAME_PATTERN`]: names become Vault policy names.
fn check_name_pattern(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_policy_name(value) {
        Ok(())
    } else {
        Err(invalid(key, format!("must match {NAME_PATTERN}")))
    }
}

fn is_policy_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    let first_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && first_ok(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| first_ok(b) || b == b'_' || b == b'-')
}

fn is_unix_user_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 32
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use tempfile::TempDir;

    /// A temporary directory holding every file the base config refers to,
    /// so each test changes exactly one thing.
    struct Fixture {
        dir: TempDir,
    }

    /// Valid: approle auth, https Vault, three https etcd endpoints with
    /// client certificates, two operators. File paths are relative to the
    /// fixture directory, which also exercises path resolution.
    const BASE: &str = r#"
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

    const FILES: [&str; 7] = [
        "vault-ca.pem",
        "secrets/role_id",
        "secrets/secret_id",
        "etcd/ca.pem",
        "etcd/client.pem",
        "etcd/client-key.pem",
        "etcd/password",
    ];

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for file in FILES {
                let path = dir.path().join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, "x\n").unwrap();
            }
            Fixture { dir }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn write(&self, rel: &str, contents: &str) -> PathBuf {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn load(&self, text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
            let env: HashMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Config::from_toml_str(text, self.dir.path(), &move |k: &str| env.get(k).cloned())
        }

        fn ok(&self, text: &str, env: &[(&str, &str)]) -> Config {
            match self.load(text, env) {
                Ok(config) => config,
                Err(e) => panic!("expected a valid config, got: {e}"),
            }
        }

        /// The Display text of the error `text` must produce.
        fn err(&self, text: &str, env: &[(&str, &str)]) -> String {
            match self.load(text, env) {
                Ok(_) => panic!("expected an error for:\n{text}"),
                Err(e) => e.to_string(),
            }
        }
    }

    /// `text` with `from` replaced by `to`; panics if `from` is absent so a
    /// test can never pass by editing nothing.
    fn edit(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "`{from}` not in the config text");
        text.replacen(from, to, 1)
    }

    fn base_with(from: &str, to: &str) -> String {
        edit(BASE, from, to)
    }

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
        assert_eq!(c.telegram.session_path, "vaultgram/telegram-session");
        assert_eq!(c.telegram.secret_reply_ttl_secs, 60);
        assert_eq!(c.telegram.mtproto_proxy_host, "proxy.example.com");
        assert_eq!(c.telegram.mtproto_proxy_port, 443);
        assert!(c.telegram.wrap_ttl.is_empty());
        assert!(c.telegram.proxy.is_none());
        assert_eq!(c.ipc.socket, Path::new("/run/vaultgram/vaultgram.sock"));
        assert_eq!(c.http.listen, "127.0.0.1:9090");
        assert_eq!(c.approvals.required, APPROVABLE_COMMANDS.to_vec());
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

    fn token_config() -> String {
        edit(
            BASE,
            "method = \"approle\"\nrole_id_file = \"secrets/role_id\"\nsecret_id_file = \"secrets/secret_id\"\n",
            "method = \"token\"\n",
        )
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

    const ENDPOINTS: &str = "endpoints = [\"https://127.0.0.1:2379\", \"https://127.0.0.1:22379\", \"https://127.0.0.1:32379\"]";

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

    fn with_table(table: &str) -> String {
        base_with(
            "[[operators]]\nname = \"alice\"",
            &format!("{table}\n\n[[operators]]\nname = \"alice\""),
        )
    }

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

    const ALICE_AND_BOB: &str = "[[operators]]\nname = \"alice\"\ntelegram_id = 111111\nrole = \"admin\"\nunix_user = \"alice\"\n\n[[operators]]\nname = \"bob\"\ntelegram_id = 222222\nrole = \"agent\"\nagent = \"bob\"\n";

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
