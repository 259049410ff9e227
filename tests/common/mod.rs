//! Helpers shared by the one integration-test binary: the real cluster
//! (etcd ×3 + OpenBao over TLS), throw-away PKI, child-process hygiene.

pub mod canary;
pub mod cluster;
pub mod console;
pub mod kube;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod tcpproxy;
pub mod totp;

use std::sync::OnceLock;

pub use cluster::Cluster;

/// What every test gets: the cluster (started on first use, once per run)
/// and a Tokio runtime to drive the library's async API.
pub struct Env {
    cluster: OnceLock<Cluster>,
    kube: OnceLock<kube::KubeApi>,
    pub rt: tokio::runtime::Runtime,
}

impl Env {
    pub fn new() -> Env {
        vaultgram::tls::install_crypto_provider();
        canary::capture_logs();
        Env {
            cluster: OnceLock::new(),
            kube: OnceLock::new(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// The shared cluster; the first caller starts it.
    pub fn cluster(&self) -> &Cluster {
        self.cluster.get_or_init(Cluster::start)
    }

    pub fn cluster_if_started(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// The shared kube-apiserver; the first caller starts it.
    pub fn kube(&self) -> &kube::KubeApi {
        self.kube.get_or_init(kube::KubeApi::start)
    }

    pub fn kube_if_started(&self) -> Option<&kube::KubeApi> {
        self.kube.get()
    }

    /// The broker config for this cluster, loaded through the library.
    pub fn config(&self) -> vaultgram::config::Config {
        let c = self.cluster();
        vaultgram::config::Config::load(&c.config_path, &|_| None).expect("harness config")
    }
}

/// The operator `name` of a loaded config (the harness lists alice, dave,
/// bob, carol).
pub fn operator(cfg: &vaultgram::config::Config, name: &str) -> vaultgram::config::Operator {
    cfg.operators
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no operator {name} in the config"))
        .clone()
}
