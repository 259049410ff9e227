//! etcd: the broker's coordination store (leader election, approvals,
//! de-duplication, audit trail).
//!
//! The only module that imports `etcd_client`. It connects with the client
//! certificate of `[etcd]` and, when a `password_file` is set, as the etcd
//! user named in `etcd.user`; RBAC on the cluster limits that user to the
//! broker's prefix (`etcd/bootstrap-rbac.sh`).

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use secrecy::{ExposeSecret, SecretString};

use crate::config::EtcdConfig;
use crate::error::ErrorKind;

/// Failures at the etcd boundary. Texts carry no key values and no secret.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd: permission denied: {0}")]
    Denied(String),
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("etcd rejected the request: {0}")]
    Invalid(String),
}

impl EtcdError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EtcdError::Denied(_) => ErrorKind::Denied,
            EtcdError::Invalid(_) => ErrorKind::Invalid,
            EtcdError::ReadFile { .. } | EtcdError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(status) => {
                use tonic::Code;
                let msg = status.message().to_string();
                match status.code() {
                    Code::PermissionDenied | Code::Unauthenticated => EtcdError::Denied(msg),
                    Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                        EtcdError::Invalid(msg)
                    }
                    _ => EtcdError::Unavailable(format!("{:?}: {msg}", status.code())),
                }
            }
            other => EtcdError::Unavailable(other.to_string()),
        }
    }
}

/// A connected etcd client. `Debug` shows endpoints only.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Etcd {
    /// Connects as the config says: TLS with the client certificate, and the
    /// etcd user with its password when `password_file` is set (otherwise the
    /// certificate's CN is the user).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Etcd, EtcdError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(cfg.connect_timeout_secs))
            .with_timeout(Duration::from_secs(cfg.request_timeout_secs))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(4))
            // Simple auth tokens expire (5 min by default); refresh them.
            .with_auto_token_refresh(true);
        if let Some(ca) = &cfg.ca_cert {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
            if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(Identity::from_pem(
                    read("certificate", cert)?,
                    read("key", key)?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        if let (Some(user), Some(pw_file)) = (&cfg.user, &cfg.password_file) {
            let pw = read("password file", pw_file)?;
            let pw = SecretString::from(String::from_utf8_lossy(&pw).trim_end().to_string());
            opts = opts.with_user(user.clone(), pw.expose_secret().to_string());
        }
        let client = Client::connect(cfg.endpoints.clone(), Some(opts)).await?;
        Ok(Etcd {
            client,
            endpoints: cfg.endpoints.clone(),
        })
    }

    /// Writes one key.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), EtcdError> {
        self.client.kv_client().put(key, value, None).await?;
        Ok(())
    }

    /// Reads one key; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let resp = self.client.kv_client().get(key, None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Member count and the cluster's leader id, from the first endpoint that
    /// answers.
    pub async fn status(&self) -> Result<(usize, u64), EtcdError> {
        let members = self.client.cluster_client().member_list().await?;
        let status = self.client.maintenance_client().status().await?;
        Ok((members.members().len(), status.leader()))
    }
}
