//! etcd: the broker's coordination store (leader election, approvals,
//! de-duplication, audit trail).
//!
//! The only module that imports `etcd_client`. It connects with the client
//! certificate of `[etcd]` and, when a `password_file` is set, as the etcd
//! user named in `etcd.user`; RBAC on the cluster limits that user to the
//! broker's prefix (`etcd/bootstrap-rbac.sh`).
//!
//! Every write the broker makes goes through the methods below (plain put,
//! put with a lease, create-if-absent, delete-if-unchanged), so that a
//! leader-only guard (a compare on the election key's revision) can later
//! be added to each write transaction in one place.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
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
    /// A request caught by an election ("etcdserver: leader changed"):
    /// unavailable, but a new leader is there by the time it fails.
    #[error("etcd unavailable: {0}")]
    LeaderChanged(String),
    #[error("etcd rejected the request: {0}")]
    Invalid(String),
    /// A lease that expired or was revoked (gRPC NotFound).
    #[error("etcd: not found: {0}")]
    NotFound(String),
    /// A guarded write refused: the leadership it depended on is gone.
    #[error("etcd: refused, this process no longer leads")]
    NotLeader,
}

impl EtcdError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EtcdError::Denied(_) => ErrorKind::Denied,
            EtcdError::Invalid(_) => ErrorKind::Invalid,
            EtcdError::NotFound(_) => ErrorKind::NotFound,
            EtcdError::ReadFile { .. }
            | EtcdError::Unavailable(_)
            | EtcdError::LeaderChanged(_)
            | EtcdError::NotLeader => ErrorKind::Unavailable,
        }
    }
}

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        // Every failed etcd call passes through here (call-site timeouts
        // do not; they are not etcd answers).
        crate::metrics::etcd_error();
        match e {
            E::GRpcStatus(status) => {
                use tonic::Code;
                let msg = status.message().to_string();
                match status.code() {
                    Code::PermissionDenied | Code::Unauthenticated => EtcdError::Denied(msg),
                    Code::NotFound => EtcdError::NotFound(msg),
                    Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                        EtcdError::Invalid(msg)
                    }
                    // etcd's own wording: the one place it is read.
                    _ if msg.contains("leader changed") => {
                        EtcdError::LeaderChanged(format!("{:?}: {msg}", status.code()))
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
    /// Failures faster than this are retried by reads (see [`retrying`]).
    retry_below: Duration,
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
        // With auth on, connecting authenticates over the balanced channel,
        // and a member that is down fails it ("tcp connect error"). So the
        // client starts with the members that accept a TCP connection and
        // the others are added right after: they are used again once they
        // come back.
        let up = reachable(&cfg.endpoints).await;
        let (first, later): (Vec<String>, Vec<String>) = if up.is_empty() {
            (cfg.endpoints.clone(), Vec::new())
        } else {
            cfg.endpoints.iter().cloned().partition(|e| up.contains(e))
        };
        // Bounded as a whole: a member that accepts TCP and then says
        // nothing (a partition, a stuck proxy) would otherwise hold the TLS
        // handshake and the authentication forever — tonic times neither —
        // and `run` would sit with its socket bound and nothing served.
        let limit = Duration::from_secs(cfg.connect_timeout_secs + cfg.request_timeout_secs);
        let mut attempt = 0;
        let client = loop {
            let tried =
                tokio::time::timeout(limit, Client::connect(first.clone(), Some(opts.clone())))
                    .await
                    .unwrap_or_else(|_| {
                        Err(etcd_client::Error::IoError(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no answer within {} s (TLS handshake or authentication)",
                                limit.as_secs()
                            ),
                        )))
                    });
            match tried {
                Ok(c) => break c,
                Err(e) if attempt < 3 && first.len() > 1 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "etcd connect failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        for e in &later {
            if let Err(err) = client.add_endpoint(e).await {
                tracing::warn!(endpoint = %e, error = %err, "etcd endpoint not added");
            }
        }
        Ok(Etcd {
            client,
            retry_below: Duration::from_secs(cfg.request_timeout_secs) / 2,
            endpoints: cfg.endpoints.clone(),
        })
    }

    /// Writes one key.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), EtcdError> {
        let value = value.into();
        retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            let value = value.clone();
            async move { kv.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// Reads one key; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            async move { kv.get(key, None).await }
        })
        .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Reads one key from the member this client talks to, without a
    /// quorum round (serializable): fast even while quorum is lost, as
    /// fresh as that member (replication lag, normally milliseconds).
    pub async fn get_local(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            async move {
                kv.get(key, Some(GetOptions::new().with_serializable()))
                    .await
            }
        })
        .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Grants a lease of `ttl_secs` (at least 1 s); returns its id.
    pub async fn lease_grant(&self, ttl_secs: u64) -> Result<i64, EtcdError> {
        let ttl = i64::try_from(ttl_secs.max(1)).unwrap_or(i64::MAX);
        // A fast failure (a member that is down) is retried on another.
        let resp = retrying(self.retry_below, || {
            let mut l = self.client.lease_client();
            async move { l.grant(ttl, None).await }
        })
        .await?;
        Ok(resp.id())
    }

    /// Revokes a lease (and deletes the keys still attached to it); a lease
    /// that is already gone is not an error.
    pub async fn lease_revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match EtcdError::from(e) {
                EtcdError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Writes one key attached to `lease` (0: no lease).
    pub async fn put_leased(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<(), EtcdError> {
        let value = value.into();
        retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            let value = value.clone();
            async move { kv.put(key, value, Some(put_opts(lease))).await }
        })
        .await?;
        Ok(())
    }

    /// Writes every `(key, value)` attached to `lease` in one transaction
    /// (at most etcd's `--max-txn-ops`, 128 by default). Blind puts: safe
    /// to retry.
    pub async fn put_all(&self, items: &[(String, Vec<u8>)], lease: i64) -> Result<(), EtcdError> {
        retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            let txn = Txn::new().and_then(
                items
                    .iter()
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), Some(put_opts(lease))))
                    .collect::<Vec<_>>(),
            );
            async move { kv.txn(txn).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes one key; `false` when it did not exist.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(resp.deleted() > 0)
    }

    /// Reads one key with its revision and lease; `None` when absent.
    pub async fn get_entry(&self, key: &str) -> Result<Option<Entry>, EtcdError> {
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            async move { kv.get(key, None).await }
        })
        .await?;
        Ok(resp.kvs().first().map(Entry::from_kv))
    }

    /// Up to `limit` keys under `prefix` (0: no limit), in key order, or in
    /// reverse key order when `newest_first` (keys that start with a
    /// zero-padded time sort by time).
    pub async fn list_prefix(
        &self,
        prefix: &str,
        limit: i64,
        newest_first: bool,
    ) -> Result<Vec<Entry>, EtcdError> {
        let mut opts = GetOptions::new().with_prefix().with_limit(limit);
        if newest_first {
            opts = opts.with_sort(SortTarget::Key, SortOrder::Descend);
        }
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            let opts = opts.clone();
            async move { kv.get(prefix, Some(opts)).await }
        })
        .await?;
        Ok(resp.kvs().iter().map(Entry::from_kv).collect())
    }

    /// Every key under `prefix` from the member this client talks to
    /// (serializable), with the revision the read saw: a watch from the
    /// next revision misses nothing in between.
    pub async fn snapshot_prefix(&self, prefix: &str) -> Result<(Vec<Entry>, i64), EtcdError> {
        let opts = GetOptions::new().with_prefix().with_serializable();
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            let opts = opts.clone();
            async move { kv.get(prefix, Some(opts)).await }
        })
        .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().iter().map(Entry::from_kv).collect(), revision))
    }

    /// Watches every key under `prefix` from `from_revision` on.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<PrefixWatch, EtcdError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision);
        let stream = self.client.watch_client().watch(prefix, Some(opts)).await?;
        Ok(PrefixWatch { stream })
    }

    /// How many keys are under `prefix` (counted by etcd; no values sent).
    pub async fn count_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let opts = GetOptions::new().with_prefix().with_count_only();
        Ok(self
            .client
            .kv_client()
            .get(prefix, Some(opts))
            .await?
            .count())
    }

    /// Writes every `(key, value, lease)` in one transaction, only if none
    /// of the keys exists yet. `false`: at least one existed, nothing was
    /// written.
    pub async fn create_if_absent(&self, puts: &[(&str, &[u8], i64)]) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when(
                puts.iter()
                    .map(|(k, _, _)| Compare::create_revision(*k, CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                puts.iter()
                    .map(|(k, v, lease)| TxnOp::put(*k, v.to_vec(), Some(put_opts(*lease))))
                    .collect::<Vec<_>>(),
            );
        Ok(self.txn_retrying(txn).await?.succeeded())
    }

    /// [`Etcd::create_if_absent`], and only if every key of `absent` is
    /// absent too (checked in the same transaction, written by nobody).
    pub async fn create_if_absent_and(
        &self,
        absent: &[&str],
        puts: &[(&str, &[u8], i64)],
    ) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when(
                absent
                    .iter()
                    .copied()
                    .chain(puts.iter().map(|(k, _, _)| *k))
                    .map(|k| Compare::create_revision(k, CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                puts.iter()
                    .map(|(k, v, lease)| TxnOp::put(*k, v.to_vec(), Some(put_opts(*lease))))
                    .collect::<Vec<_>>(),
            );
        Ok(self.txn_retrying(txn).await?.succeeded())
    }

    /// Deletes every key under `prefix`; how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let resp = retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            async move {
                kv.delete(
                    prefix,
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
            }
        })
        .await?;
        Ok(resp.deleted())
    }

    /// A transaction; a fast failure (a member that is down, nothing
    /// sent) is retried on another member.
    async fn txn_retrying(&self, txn: Txn) -> Result<etcd_client::TxnResponse, EtcdError> {
        retrying(self.retry_below, || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Deletes `key` only if it still has `mod_revision` (nobody changed
    /// or took it since it was read) and, in the same transaction, writes
    /// `then_put` `(key, value, lease)`. `false`: the key was changed,
    /// deleted or expired meanwhile, and nothing was written.
    pub async fn delete_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        then_put: Option<(&str, &[u8], i64)>,
    ) -> Result<bool, EtcdError> {
        let mut ops = vec![TxnOp::delete(key, None)];
        if let Some((k, v, lease)) = then_put {
            ops.push(TxnOp::put(k, v.to_vec(), Some(put_opts(lease))));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then(ops);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// If `key` still has `mod_revision`: deletes it (with `delete`) and
    /// writes every `(key, value, lease)` of `puts`, in one transaction.
    /// `false`: it was changed or deleted meanwhile, nothing was written.
    pub async fn commit_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        delete: bool,
        puts: &[(&str, &[u8], i64)],
    ) -> Result<bool, EtcdError> {
        let mut ops = Vec::new();
        if delete {
            ops.push(TxnOp::delete(key, None));
        }
        for (k, v, lease) in puts {
            ops.push(TxnOp::put(*k, v.to_vec(), Some(put_opts(*lease))));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then(ops);
        Ok(self.txn_retrying(txn).await?.succeeded())
    }

    /// Writes `key` only if it still has `mod_revision`. `false`: it was
    /// changed or deleted meanwhile, nothing was written.
    pub async fn put_if_unchanged(
        &self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::put(key, value.to_vec(), Some(put_opts(lease)))]);
        Ok(self.txn_retrying(txn).await?.succeeded())
    }

    /// Writes `key` only if it still has `mod_revision`, in one round
    /// trip either way: `Ok(new mod_revision)`, or `Err(what it holds
    /// now)` (`None`: absent) when it changed and nothing was written.
    pub async fn put_if_revision(
        &self,
        key: &str,
        mod_revision: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<Result<i64, Option<Entry>>, EtcdError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, mod_revision)])
            .and_then([TxnOp::put(key, value.to_vec(), Some(put_opts(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn_retrying(txn).await?;
        if resp.succeeded() {
            // The put happened at the transaction's revision.
            return Ok(Ok(resp.header().map(|h| h.revision()).unwrap_or(0)));
        }
        Ok(Err(resp.op_responses().into_iter().find_map(
            |op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(Entry::from_kv),
                _ => None,
            },
        )))
    }

    /// One election round: creates `key` with `value` attached to `lease`
    /// unless it exists. `Ok(Won(guard))` with the key's create revision;
    /// `Ok(Held(holder))` with the current holder's value.
    pub async fn campaign(
        &self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<Campaign, EtcdError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), Some(put_opts(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if resp.succeeded() {
            // The put happened at the transaction's revision.
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Campaign::Won(Guard {
                key: key.to_string(),
                create_revision: revision,
            }));
        }
        let holder = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Campaign::Held(
            String::from_utf8_lossy(&holder).into_owned(),
        ))
    }

    /// Whether `guard`'s election key still exists with its create revision.
    pub async fn guard_holds(&self, guard: &Guard) -> Result<bool, EtcdError> {
        let resp = self
            .client
            .kv_client()
            .get(guard.key.as_str(), None)
            .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == guard.create_revision))
    }

    /// A lease keep-alive stream (one per leadership term).
    pub async fn keep_alive(&self, lease: i64) -> Result<LeaseKeepAlive, EtcdError> {
        let (keeper, stream) = self.client.lease_client().keep_alive(lease).await?;
        Ok(LeaseKeepAlive { keeper, stream })
    }

    /// Creates `key` (attached to `lease`) if it does not exist, only while
    /// `guard` holds: the leader's exactly-once claim.
    pub async fn claim_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<Claim, EtcdError> {
        let inner = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), Some(put_opts(lease)))]);
        let txn = Txn::new()
            .when([guard.compare()])
            .and_then([TxnOp::txn(inner)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if !resp.succeeded() {
            return Ok(Claim::NotLeader);
        }
        let inner_ok = resp.op_responses().into_iter().any(|op| match op {
            etcd_client::TxnOpResponse::Txn(t) => t.succeeded(),
            _ => false,
        });
        Ok(if inner_ok {
            Claim::Claimed
        } else {
            Claim::Exists
        })
    }

    /// Writes `key` only while `guard` holds. `false`: this process is not
    /// the leader (any more) and nothing was written.
    pub async fn put_guarded(
        &self,
        guard: &Guard,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<bool, EtcdError> {
        let txn = Txn::new().when([guard.compare()]).and_then([TxnOp::put(
            key,
            value.to_vec(),
            Some(put_opts(lease)),
        )]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Deletes `key` only while `guard` holds (`false`: not the leader).
    pub async fn delete_guarded(&self, guard: &Guard, key: &str) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when([guard.compare()])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Member count and the cluster's leader id, from the first endpoint that
    /// answers.
    pub async fn status(&self) -> Result<(usize, u64), EtcdError> {
        let members = self.client.cluster_client().member_list().await?;
        let status = self.client.maintenance_client().status().await?;
        Ok((members.members().len(), status.leader()))
    }

    /// `doctor`: the status of the member behind `endpoint` alone, through
    /// a client of its own (so a dead member cannot be hidden by another
    /// endpoint answering), connect and request bounded by `timeout`.
    pub async fn member_status(
        cfg: &EtcdConfig,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<MemberStatus, EtcdError> {
        let mut one = cfg.clone();
        one.endpoints = vec![endpoint.to_string()];
        let secs = timeout.as_secs().max(1);
        one.connect_timeout_secs = secs;
        one.request_timeout_secs = secs;
        let probe = async {
            let etcd = Etcd::connect(&one).await?;
            let s = etcd.client.maintenance_client().status().await?;
            Ok::<_, EtcdError>(MemberStatus {
                endpoint: endpoint.to_string(),
                member_id: s.header().map(|h| h.member_id()).unwrap_or(0),
                leader: s.leader(),
                raft_index: s.raft_index(),
                raft_term: s.raft_term(),
                db_size: s.db_size(),
                version: s.version().to_string(),
                errors: s.errors().to_vec(),
            })
        };
        // Authentication at connect time is not covered by the connect
        // timeout; bound the whole probe.
        tokio::time::timeout(timeout * 2, probe)
            .await
            .unwrap_or_else(|_| Err(EtcdError::Unavailable(format!("{endpoint}: timed out"))))
    }

    /// Every member of `cfg.endpoints` probed at once with
    /// [`Etcd::member_status`], in the order of the endpoints (`None`: the
    /// probe did not finish). `doctor` and `/metrics` use it.
    pub async fn member_statuses(
        cfg: &EtcdConfig,
        timeout: Duration,
    ) -> Vec<Option<Result<MemberStatus, EtcdError>>> {
        let mut probes = tokio::task::JoinSet::new();
        for (i, ep) in cfg.endpoints.iter().enumerate() {
            let (one, ep) = (cfg.clone(), ep.clone());
            probes.spawn(async move { (i, Etcd::member_status(&one, &ep, timeout).await) });
        }
        let mut results: Vec<_> = cfg.endpoints.iter().map(|_| None).collect();
        while let Some(r) = probes.join_next().await {
            if let Ok((i, r)) = r {
                results[i] = Some(r);
            }
        }
        results
    }

    /// `doctor`: active alarms as (member id, alarm name). etcd lets any
    /// authenticated user list them (raising or disarming needs root).
    pub async fn alarms(&self) -> Result<Vec<(u64, String)>, EtcdError> {
        use etcd_client::{AlarmAction, AlarmType};
        let resp = self
            .client
            .maintenance_client()
            .alarm(AlarmAction::Get, AlarmType::None, None)
            .await?;
        Ok(resp
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm().as_str_name().to_string()))
            .collect())
    }
}

/// One member's status as `doctor` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub endpoint: String,
    pub member_id: u64,
    /// The leader's member id as this member sees it (0: none).
    pub leader: u64,
    pub raft_index: u64,
    pub raft_term: u64,
    pub db_size: i64,
    pub version: String,
    pub errors: Vec<String>,
}

/// The endpoints that accept a TCP connection within 1 s each (a refused
/// connection fails at once).
async fn reachable(endpoints: &[String]) -> Vec<String> {
    let probes = endpoints.iter().map(|e| async move {
        let url = url::Url::parse(e).ok()?;
        let host = url.host_str()?.to_string();
        let port = url.port_or_known_default()?;
        let ok = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        ok.then(|| e.clone())
    });
    let mut up = Vec::new();
    for p in probes {
        if let Some(e) = p.await {
            up.push(e);
        }
    }
    up
}

/// Runs `op` again (up to 8 times, 10–200 ms apart) when it failed as
/// `Unavailable` within half the request timeout: with one member down,
/// the client's balancer still hands out that member's channel now and
/// then (refused at once, or cut when the connection's keep-alive gives
/// up). A failure that took the whole timeout (no quorum) is returned at
/// once, so commands still fail in bounded time; a slow "leader changed"
/// (an election finished meanwhile) is retried once. Only reads and blind
/// puts use this; transactions are not retried (an ambiguous failure may
/// have committed).
async fn retrying<T, Fut>(
    retry_below: Duration,
    mut op: impl FnMut() -> Fut,
) -> Result<T, EtcdError>
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut delay = Duration::from_millis(10);
    let mut attempt = 0;
    let mut slow_retry_left = true;
    loop {
        // tokio's clock: the unit tests run it paused.
        let started = tokio::time::Instant::now();
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let e = EtcdError::from(e);
                let fast = started.elapsed() < retry_below;
                // A request caught by an election (the leader was killed)
                // fails slowly with "leader changed", but a new leader is
                // there by then: these idempotent calls get one more try
                // (seen in CI: /pending failed after 2.96 s).
                let leader_changed = slow_retry_left && matches!(e, EtcdError::LeaderChanged(_));
                if leader_changed && !fast {
                    slow_retry_left = false;
                }
                let unavailable =
                    matches!(e, EtcdError::Unavailable(_) | EtcdError::LeaderChanged(_));
                if attempt < 8 && (fast || leader_changed) && unavailable {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                    continue;
                }
                return Err(e);
            }
        }
    }
}

fn put_opts(lease: i64) -> PutOptions {
    let opts = PutOptions::new();
    if lease != 0 {
        opts.with_lease(lease)
    } else {
        opts
    }
}

/// One key as read: its revision and lease make compare-and-swap possible.
#[derive(Clone)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub lease: i64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values are coordination records, but keep them out of Debug anyway.
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("mod_revision", &self.mod_revision)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Entry {
    fn from_kv(kv: &etcd_client::KeyValue) -> Entry {
        Entry {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// Proof of leadership: the election key and the revision that created
/// it. Every write the leader makes carries `compare(create_revision(key)
/// == create_revision)`, so once the key is gone (lease expired, resigned)
/// or re-created by another leader, the deposed leader's writes fail --
/// a lock alone does not give that (Jepsen, etcd 3.4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: String,
    pub create_revision: i64,
}

impl Guard {
    fn compare(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.create_revision)
    }
}

/// [`Etcd::campaign`]'s outcome.
#[derive(Debug)]
pub enum Campaign {
    Won(Guard),
    /// Someone leads; their value (a node id).
    Held(String),
}

/// [`Etcd::claim_guarded`]'s outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    Exists,
    NotLeader,
}

/// What a [`PrefixWatch`] delivers.
#[derive(Debug)]
pub enum WatchEvent {
    /// Keys written (`value` set) or deleted (`None`), in revision order.
    Changes(Vec<(String, Option<Vec<u8>>)>),
    /// The watch is current up to `revision`: an answer to
    /// [`PrefixWatch::request_progress`].
    Progress(i64),
    /// The watch was set up (events from its start revision may follow).
    Created,
}

/// An open watch on a prefix.
pub struct PrefixWatch {
    stream: etcd_client::WatchStream,
}

impl PrefixWatch {
    /// Asks etcd to say how far the watch is; answered by a
    /// [`WatchEvent::Progress`] once every earlier event was delivered.
    pub async fn request_progress(&mut self) -> Result<(), EtcdError> {
        self.stream.request_progress().await?;
        Ok(())
    }

    /// The next event; an error when the watch ended (cancelled, compacted
    /// past, the stream closed).
    pub async fn next(&mut self) -> Result<WatchEvent, EtcdError> {
        let Some(resp) = self.stream.message().await? else {
            return Err(EtcdError::Unavailable("the watch stream closed".into()));
        };
        if resp.canceled() {
            return Err(EtcdError::Unavailable(format!(
                "the watch was cancelled (compacted at {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        if resp.created() {
            return Ok(WatchEvent::Created);
        }
        if resp.events().is_empty() {
            return Ok(WatchEvent::Progress(
                resp.header().map_or(0, |h| h.revision()),
            ));
        }
        Ok(WatchEvent::Changes(
            resp.events()
                .iter()
                .filter_map(|e| {
                    let kv = e.kv()?;
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    Some(match e.event_type() {
                        etcd_client::EventType::Put => (key, Some(kv.value().to_vec())),
                        etcd_client::EventType::Delete => (key, None),
                    })
                })
                .collect(),
        ))
    }
}

/// An open keep-alive stream for one lease.
pub struct LeaseKeepAlive {
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
}

impl LeaseKeepAlive {
    /// Sends one keep-alive and waits for its answer: the lease's remaining
    /// TTL in seconds (0: the lease is gone).
    pub async fn renew(&mut self) -> Result<i64, EtcdError> {
        self.keeper.keep_alive().await?;
        match self.stream.message().await? {
            Some(resp) => Ok(resp.ttl()),
            None => Err(EtcdError::Unavailable("keep-alive stream closed".into())),
        }
    }
}

/// A long lease shared by many keys (audit records, the approvals log):
/// bounded retention without one lease per key. A lease is granted with
/// `ttl`, and a new one once the current is older than `reuse_for`, so a
/// key lives between `ttl - reuse_for` and `ttl`. Replicas and restarts
/// share the current lease through `meta_key` (itself attached to the
/// lease), so the number of live leases stays about `ttl / reuse_for`.
#[derive(Debug)]
pub struct SharedLease {
    meta_key: String,
    ttl: Duration,
    reuse_for: Duration,
    cached: Mutex<Option<(i64, Instant)>>,
}

impl SharedLease {
    pub fn new(meta_key: String, ttl: Duration, reuse_for: Duration) -> SharedLease {
        SharedLease {
            meta_key,
            ttl,
            reuse_for,
            cached: Mutex::new(None),
        }
    }

    /// The lease to attach a new key to.
    pub async fn get(&self, etcd: &Etcd) -> Result<i64, EtcdError> {
        self.get_with(etcd, None).await
    }

    /// Like [`SharedLease::get`] for the leader: a fresh lease is recorded
    /// only while `guard` holds, so a fenced term writes nothing
    /// (ARCHITECTURE.md: no leader write without the Guard).
    pub async fn get_guarded(&self, etcd: &Etcd, guard: &Guard) -> Result<i64, EtcdError> {
        self.get_with(etcd, Some(guard)).await
    }

    async fn get_with(&self, etcd: &Etcd, guard: Option<&Guard>) -> Result<i64, EtcdError> {
        if let Some((id, at)) = *self.cached.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < self.reuse_for {
                return Ok(id);
            }
        }
        let now = crate::clock::unix_secs();
        // Another process's lease, if it is young enough.
        if let Some(e) = etcd.get_entry(&self.meta_key).await? {
            let text = String::from_utf8_lossy(&e.value).into_owned();
            if let Some((id, granted)) = text
                .split_once(' ')
                .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<u64>().ok()?)))
            {
                let age = now.saturating_sub(granted);
                if id == e.lease && age < self.reuse_for.as_secs() {
                    let at = Instant::now()
                        .checked_sub(Duration::from_secs(age))
                        .unwrap_or_else(Instant::now);
                    *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, at));
                    return Ok(id);
                }
            }
        }
        let id = etcd.lease_grant(self.ttl.as_secs()).await?;
        let meta = format!("{id} {now}");
        match guard {
            None => etcd.put_leased(&self.meta_key, meta, id).await?,
            Some(guard) => {
                if !etcd
                    .put_guarded(guard, &self.meta_key, meta.as_bytes(), id)
                    .await?
                {
                    let _ = etcd.lease_revoke(id).await;
                    return Err(EtcdError::NotLeader);
                }
            }
        }
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, Instant::now()));
        Ok(id)
    }

    /// Forgets the cached lease (after a write was refused because the
    /// lease is gone).
    pub fn invalidate(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Puts `key` with the shared lease; when the lease has vanished
    /// (revoked by hand), grants a fresh one and retries once.
    pub async fn put(&self, etcd: &Etcd, key: &str, value: &[u8]) -> Result<(), EtcdError> {
        self.put_many(etcd, &[(key.to_string(), value.to_vec())])
            .await
    }

    /// Writes every `(key, value)` attached to the lease in one transaction.
    pub async fn put_many(
        &self,
        etcd: &Etcd,
        items: &[(String, Vec<u8>)],
    ) -> Result<(), EtcdError> {
        retry_on_lost_lease(
            || self.get(etcd),
            // The meta key was attached to that lease: it is gone too.
            || self.invalidate(),
            |lease| etcd.put_all(items, lease),
        )
        .await
    }
}

/// The lease-loss rule, in one place: runs `write` on the lease(s) `get`
/// gives; when etcd answers that a lease is gone (revoked by hand, lost
/// with a restore: gRPC `NotFound`), `forget` drops the cached ones and
/// `write` runs once more on fresh ones. Anything else is returned as is.
pub async fn retry_on_lost_lease<L, T, E, GF, WF>(
    get: impl Fn() -> GF,
    forget: impl FnOnce(),
    write: impl Fn(L) -> WF,
) -> Result<T, E>
where
    GF: std::future::Future<Output = Result<L, E>>,
    WF: std::future::Future<Output = Result<T, EtcdError>>,
    E: From<EtcdError>,
{
    match write(get().await?).await {
        Err(EtcdError::NotFound(_)) => {
            forget();
            Ok(write(get().await?).await?)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    /// Runs `retrying` on answers from `script` (one per call; the last
    /// repeats), each taking `took`; returns the outcome and the calls.
    async fn run(script: &[(tonic::Code, &str)], took: Duration) -> (Result<(), EtcdError>, usize) {
        let calls = Cell::new(0usize);
        let r = retrying(Duration::from_secs(1), || {
            let n = calls.get();
            calls.set(n + 1);
            let (code, msg) = script[n.min(script.len() - 1)];
            async move {
                tokio::time::sleep(took).await;
                match code {
                    tonic::Code::Ok => Ok(()),
                    c => Err(status(c, msg)),
                }
            }
        })
        .await;
        (r, calls.get())
    }

    #[tokio::test(start_paused = true)]
    async fn fast_unavailable_is_retried_eight_times() {
        let (r, calls) = run(&[(tonic::Code::Unavailable, "refused")], Duration::ZERO).await;
        assert!(matches!(r, Err(EtcdError::Unavailable(_))), "{r:?}");
        assert_eq!(calls, 9);
        let ok = [
            (tonic::Code::Unavailable, "refused"),
            (tonic::Code::Unavailable, "refused"),
            (tonic::Code::Ok, ""),
        ];
        let (r, calls) = run(&ok, Duration::ZERO).await;
        assert!(r.is_ok());
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_failures_come_back_at_once() {
        // Took the whole budget (no quorum): a command must fail in
        // bounded time.
        let (r, calls) = run(
            &[(tonic::Code::Unavailable, "timeout")],
            Duration::from_secs(2),
        )
        .await;
        assert!(matches!(r, Err(EtcdError::Unavailable(_))));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_leader_change_is_retried_once() {
        let lc = (tonic::Code::Unavailable, "etcdserver: leader changed");
        let (r, calls) = run(&[lc, (tonic::Code::Ok, "")], Duration::from_secs(2)).await;
        assert!(r.is_ok());
        assert_eq!(calls, 2);
        let (r, calls) = run(&[lc], Duration::from_secs(2)).await;
        assert!(matches!(r, Err(EtcdError::LeaderChanged(_))), "{r:?}");
        assert_eq!(calls, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_are_not_unavailability_are_not_retried() {
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
        ] {
            let (r, calls) = run(&[(code, "no")], Duration::ZERO).await;
            assert!(r.is_err());
            assert_eq!(calls, 1, "{code:?}");
        }
    }

    /// `retry_on_lost_lease` on `answers` (one per write: "ok", "gone" for
    /// a lost lease, "down").
    async fn lease_rule(answers: &[&'static str]) -> (Result<(), EtcdError>, usize, usize, bool) {
        let (gets, writes, forgot) = (Cell::new(0usize), Cell::new(0usize), Cell::new(false));
        let r = retry_on_lost_lease(
            || {
                gets.set(gets.get() + 1);
                let lease = gets.get() as i64;
                async move { Ok::<i64, EtcdError>(lease) }
            },
            || forgot.set(true),
            |lease| {
                let n = writes.get();
                writes.set(n + 1);
                assert_eq!(lease, n as i64 + 1, "each write on the lease got for it");
                let a = answers[n];
                async move {
                    match a {
                        "ok" => Ok(()),
                        "gone" => Err(EtcdError::NotFound("requested lease not found".into())),
                        _ => Err(EtcdError::Unavailable("down".into())),
                    }
                }
            },
        )
        .await;
        (r, gets.get(), writes.get(), forgot.get())
    }

    #[tokio::test]
    async fn a_lost_lease_is_taken_afresh_once() {
        let (r, gets, writes, forgot) = lease_rule(&["gone", "ok"]).await;
        assert!(r.is_ok());
        assert_eq!((gets, writes, forgot), (2, 2, true));
        let (r, _, writes, _) = lease_rule(&["gone", "gone"]).await;
        assert!(matches!(r, Err(EtcdError::NotFound(_))));
        assert_eq!(writes, 2);
        let (r, gets, writes, forgot) = lease_rule(&["down"]).await;
        assert!(matches!(r, Err(EtcdError::Unavailable(_))));
        assert_eq!((gets, writes, forgot), (1, 1, false));
    }
}
