//! A real kube-apiserver for the tests that need Kubernetes: built from
//! k8s.io/kubernetes by `kube_binaries` (scripts/lib.sh), on loopback with
//! TLS, RBAC, a service-account issuer and signing key, an admin client
//! certificate (O=system:masters), and an etcd member of its own (client
//! certificates required). No kubelet and no controllers: Pods stay
//! Pending, which is all the tests need (RBAC, admission, TokenRequest,
//! TokenReview, NetworkPolicy objects are the API server's own work).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cluster::repo_root;
use super::pki::{write_private, Ca};
use super::process::{free_port, Proc};

pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct KubeApi {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    etcd_port: u16,
    pub kubeconfig: PathBuf,
    /// The API server's CA (what a pod's `ca.crt` holds).
    pub ca_path: PathBuf,
    pub ca: Ca,
    procs: Mutex<Vec<Proc>>,
    /// Removed at shutdown (it may live outside `dir`, on tmpfs).
    etcd_data: PathBuf,
}

/// `$KUBE_BIN_DIR` (scripts/test.sh sets it), else `kube_binaries`, which
/// builds kube-apiserver and kubectl when missing.
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBE_BIN_DIR") {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$1/scripts/lib.sh\" && kube_binaries")
        .arg("kube_binaries")
        .arg(repo_root())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "kube-apiserver is not built: run ensure_tools (scripts/lib.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

impl KubeApi {
    pub fn start() -> KubeApi {
        let t0 = Instant::now();
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("vaultgram-kube-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let tls = root.join("tls");
        std::fs::create_dir(&tls).unwrap();
        let ca = Ca::new("vaultgram test Kubernetes CA");
        let ca_path = tls.join("ca.crt");
        ca.write_ca(&ca_path);
        let etcd_leaf = ca.write_leaf(&tls, "etcd", "etcd", 30);
        let etcd_client = ca.write_leaf(&tls, "apiserver-etcd-client", "kube-apiserver", 30);
        let serving = ca.write_leaf(&tls, "apiserver", "kube-apiserver", 30);
        let admin = ca.write_leaf_in(&tls, "admin", "admin", Some("system:masters"), 30);
        // One ECDSA key signs service-account tokens; its public half
        // verifies them.
        let sa_key = tls.join("sa.key");
        let sa_pub = tls.join("sa.pub");
        let key = rcgen::KeyPair::generate().unwrap();
        write_private(&sa_key, key.serialize_pem().as_bytes());
        std::fs::write(&sa_pub, key.public_key_pem()).unwrap();

        let etcd_port = free_port();
        let mut etcd = Command::new("etcd");
        let client_url = format!("https://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{}", etcd_port + 1);
        // Its data on tmpfs when there is one: the API server's writes
        // (leases every few seconds) must not compete with the fsyncs of
        // the cluster under test.
        let shm = Path::new("/dev/shm");
        let etcd_data = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("vaultgram-kube-etcd-")
                .tempdir_in(shm)
                .map(|d| d.keep())
                .unwrap_or_else(|_| root.join("etcd-data"))
        } else {
            root.join("etcd-data")
        };
        etcd.args(["--name", "kube-etcd", "--data-dir"])
            .arg(&etcd_data)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .arg(format!("--initial-cluster=kube-etcd={peer_url}"))
            .arg("--cert-file")
            .arg(&etcd_leaf.cert)
            .arg("--key-file")
            .arg(&etcd_leaf.key)
            .arg("--trusted-ca-file")
            .arg(&ca_path)
            .arg("--client-cert-auth");
        let etcd = Proc::spawn("kube-etcd", etcd, &root.join("etcd.log"));

        let port = free_port();
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args(["--etcd-servers", &client_url, "--etcd-prefix", "/registry"])
            .arg("--etcd-cafile")
            .arg(&ca_path)
            .arg("--etcd-certfile")
            .arg(&etcd_client.cert)
            .arg("--etcd-keyfile")
            .arg(&etcd_client.key)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            // A loopback address cannot back the `kubernetes` Service.
            .args(["--endpoint-reconciler-type", "none"])
            .arg(format!("--secure-port={port}"))
            .arg("--tls-cert-file")
            .arg(&serving.cert)
            .arg("--tls-private-key-file")
            .arg(&serving.key)
            .arg("--client-ca-file")
            .arg(&ca_path)
            .args(["--authorization-mode", "RBAC", "--anonymous-auth=false"])
            .args(["--service-account-issuer", ISSUER])
            .arg("--service-account-key-file")
            .arg(&sa_pub)
            .arg("--service-account-signing-key-file")
            .arg(&sa_key)
            .args([
                "--service-cluster-ip-range",
                "10.96.0.0/16",
                "--profiling=false",
            ])
            .arg("--cert-dir")
            .arg(root.join("certs"));
        let api = Proc::spawn("kube-apiserver", api, &root.join("kube-apiserver.log"));

        let kubeconfig = root.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: it\n  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{ca}\"}}\n\
                 users:\n- name: admin\n  user: {{client-certificate: \"{cert}\", client-key: \"{key}\"}}\n\
                 contexts:\n- name: it\n  context: {{cluster: it, user: admin}}\ncurrent-context: it\n",
                ca = ca_path.display(),
                cert = admin.cert.display(),
                key = admin.key.display(),
            ),
        )
        .unwrap();
        let kube = KubeApi {
            dir,
            bin,
            port,
            etcd_port,
            kubeconfig,
            ca_path,
            ca,
            procs: Mutex::new(vec![etcd, api]),
            etcd_data,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = kube.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                break;
            }
            let exited = kube.procs.lock().unwrap().iter_mut().any(|p| p.exited());
            assert!(
                Instant::now() < deadline && !exited,
                "kube-apiserver not ready within 120 s: {}\n--- log tail:\n{}",
                String::from_utf8_lossy(&out.stderr),
                kube.log_tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!(
            "harness: kube-apiserver ({}) + its etcd up in {:.1} s on port {port}",
            String::from_utf8_lossy(&kube.ok(&["version", "-o", "json"]))
                .lines()
                .find(|l| l.contains("gitVersion"))
                .unwrap_or("?")
                .trim(),
            t0.elapsed().as_secs_f64()
        );
        kube
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// kubectl (of the same release) as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout", "30s"])
            .args(args)
            .output()
            .expect("kubectl")
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A TokenRequest for `namespace/sa`: what the kubelet projects.
    pub fn token(&self, namespace: &str, sa: &str, audience: Option<&str>) -> String {
        let mut args = vec!["create", "token", sa, "-n", namespace, "--duration", "1h"];
        if let Some(a) = audience {
            args.extend(["--audience", a]);
        }
        String::from_utf8(self.ok(&args))
            .unwrap()
            .trim()
            .to_string()
    }

    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.path().join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn shutdown(&self) {
        let mut procs = self.procs.lock().unwrap();
        // The API server first, then its storage.
        while let Some(mut p) = procs.pop() {
            p.terminate(Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.etcd_data);
    }

    pub fn log_files(&self) -> Vec<PathBuf> {
        vec![
            self.path().join("kube-apiserver.log"),
            self.path().join("etcd.log"),
        ]
    }

    pub fn ports(&self) -> Vec<u16> {
        vec![self.port, self.etcd_port, self.etcd_port + 1]
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shutdown();
    }
}
