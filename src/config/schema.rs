//! The configuration's types, as the TOML file spells them, and their
//! defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::values::{parse_duration, redact_url_password};

/// The default of `telegram.session_path`, below the KV mount: the one
/// record path spelt outside `records/` (the ground floor cannot import
/// it; `records::session::DEFAULT_PATH` is this constant).
pub const DEFAULT_SESSION_PATH: &str = "vaultgram/telegram-session";

/// What `approvals.required` may list (and lists by default): an effect
/// a command can have, named by the canonical command that has it (the
/// destructive or secret-revealing ones of `SPEC.md`). `effect::classify`
/// says which commands have which; this is the one list of names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Versions of a secret are gone for good.
    DestroyVersions,
    /// A secret with its whole history is gone.
    DeleteMetadata,
    /// A transit key gets a new version.
    RotateKey,
    /// An agent's API token stops working.
    RevokeAgent,
    /// A user's MTProto secret stops working.
    RevokeMtproto,
    /// A panel's password is shown.
    RevealPanelPassword,
    /// A suspended operator (a possibly stolen account) is trusted again.
    ResumeOperator,
}

impl Effect {
    pub const ALL: [Effect; 7] = [
        Effect::DestroyVersions,
        Effect::DeleteMetadata,
        Effect::RotateKey,
        Effect::RevokeAgent,
        Effect::RevokeMtproto,
        Effect::RevealPanelPassword,
        Effect::ResumeOperator,
    ];

    /// The name used in `approvals.required`: the canonical command that
    /// has this effect (`Command::name` of it).
    pub fn name(self) -> &'static str {
        match self {
            Effect::DestroyVersions => "kv destroy",
            Effect::DeleteMetadata => "kv metadata delete",
            Effect::RotateKey => "transit rotate",
            Effect::RevokeAgent => "agent revoke",
            Effect::RevokeMtproto => "mtproto revoke",
            Effect::RevealPanelPassword => "panel show --reveal",
            Effect::ResumeOperator => "operator resume",
        }
    }

    /// The effect `approvals.required` names `name`, if any.
    pub fn from_name(name: &str) -> Option<Effect> {
        Effect::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// The pattern operator and agent names must match. They end up in Vault
/// policy names, token display names and metadata, so they are kept to a
/// conservative alphabet.
pub const NAME_PATTERN: &str = "[a-z0-9][a-z0-9_-]{0,62}";

/// Unix `sun_path` is 108 bytes including the terminating NUL.
pub(super) const MAX_SOCKET_PATH_BYTES: usize = 107;

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

/// Operator look-ups: the one place that searches `operators`.
impl Config {
    pub fn operator_by_name(&self, name: &str) -> Option<&Operator> {
        self.operators.iter().find(|op| op.name == name)
    }

    pub fn operator_by_telegram_id(&self, id: i64) -> Option<&Operator> {
        self.operators.iter().find(|op| op.telegram_id == id)
    }

    /// The operator whose `unix_user` is `user` (the socket's peer, the
    /// console's and the tools' default).
    pub fn operator_by_unix_user(&self, user: &str) -> Option<&Operator> {
        self.operators
            .iter()
            .find(|op| op.unix_user.as_deref() == Some(user))
    }

    /// The admins' names (security alerts, approvals).
    pub fn admin_names(&self) -> Vec<String> {
        self.operators
            .iter()
            .filter(|o| o.role == Role::Admin)
            .map(|o| o.name.clone())
            .collect()
    }

    /// Whether an agent operator acts for `agent`.
    pub fn has_agent(&self, agent: &str) -> bool {
        self.operators
            .iter()
            .any(|o| o.agent.as_deref() == Some(agent))
    }
}

impl Config {
    /// The certificate files the config names, by config key (`doctor`
    /// checks them; `/metrics` exports when they expire).
    pub fn certificate_files(&self) -> [(&'static str, Option<&PathBuf>); 3] {
        [
            ("vault.ca_cert", self.vault.ca_cert.as_ref()),
            ("etcd.ca_cert", self.etcd.ca_cert.as_ref()),
            ("etcd.cert", self.etcd.cert.as_ref()),
        ]
    }
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
    /// Commands older than this (caught up after downtime) are not run:
    /// the operator is told, without an echo.
    pub max_command_age_secs: u64,
    /// A client start (connect, key exchange, authorization check) that
    /// takes longer fails; a leader whose client has not been connected
    /// for twice this long is not ready (`/readyz`).
    pub start_timeout_secs: u64,
    /// Failed client starts in a row after which the leader hands
    /// leadership over, so that another replica (perhaps with another
    /// route to Telegram) can try.
    pub max_failed_starts: u32,
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
            session_path: DEFAULT_SESSION_PATH.into(),
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
            max_command_age_secs: 300,
            start_timeout_secs: 30,
            max_failed_starts: 3,
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
            .field("max_command_age_secs", &self.max_command_age_secs)
            .field("start_timeout_secs", &self.start_timeout_secs)
            .field("max_failed_starts", &self.max_failed_starts)
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
    /// Gated commands need `-reason="…"` when they file a request.
    pub require_reason: bool,
    /// Distinct approving admins per effect (`approvals.required` names);
    /// an effect not listed needs one.
    pub quorum: std::collections::BTreeMap<String, u32>,
    /// Admins who may run a gated command at once (`-break-glass
    /// -reason="…" -code=CODE`); every other admin is alerted and one must
    /// `/review` it.
    pub break_glass: Vec<String>,
    /// Break-glass runs per admin in any 24 hours.
    pub break_glass_per_day: u32,
    /// A break-glass run unreviewed this long alerts again (and again).
    pub review_within_secs: u64,
}

impl ApprovalsConfig {
    /// Approvals a command with `effects` needs: the largest quorum of
    /// the gated ones (at least 1).
    pub fn quorum_for(&self, effects: &[Effect]) -> u32 {
        effects
            .iter()
            .filter_map(|e| self.quorum.get(e.name()).copied())
            .max()
            .unwrap_or(1)
            .max(1)
    }
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            required: Effect::ALL.iter().map(|e| e.name().to_string()).collect(),
            ttl_secs: 600,
            max_pending_per_operator: 5,
            notify: true,
            require_reason: false,
            quorum: std::collections::BTreeMap::new(),
            break_glass: Vec::new(),
            break_glass_per_day: 1,
            review_within_secs: 86_400,
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
    /// Where an `/unlock` applies: the transport it was made on, or all.
    pub unlock_scope: UnlockScope,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            step_up: StepUp::Off,
            unlock_ttl_secs: 900,
            unlock_max_failures: 3,
            reveal_budget: 30,
            reveal_window_secs: 600,
            unlock_scope: UnlockScope::Transport,
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

/// `security.unlock_scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlockScope {
    /// An unlock applies to the transport it was made on only: unlocking
    /// at a terminal does not open secrets to whoever holds the same
    /// account's Telegram.
    #[default]
    Transport,
    /// An unlock applies on every transport.
    All,
}

impl UnlockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            UnlockScope::Transport => "transport",
            UnlockScope::All => "all",
        }
    }
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
