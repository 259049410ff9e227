//! `vaultgram run`'s HTTP endpoints on `http.listen`: `/healthz`,
//! `/readyz`, `/metrics`.
//!
//! Why a separate listener and not the Unix socket: probes (Kubernetes,
//! systemd watchdogs, Prometheus) speak HTTP over TCP, and none of these
//! endpoints takes a command or returns a secret, so they need no operator
//! identity. The default address is loopback; nothing here is authenticated.
//!
//! - `/healthz`: 200 `ok` while the process serves at all (liveness).
//! - `/readyz`: 200 when the broker's Vault token works (`lookup-self`) and
//!   etcd answers a read, 503 naming the failed check otherwise; both
//!   checks are bounded by [`CHECK_TIMEOUT`] and their result is cached for
//!   [`READY_CACHE`] so that probes cannot hammer Vault. The body also
//!   carries this process's election and Telegram status (`leading`),
//!   which `doctor` and the benchmarks read, and the last confinement
//!   check (`src/kube.rs`), which fails readiness under
//!   `kubernetes.require_confinement`.
//! - `/metrics`: [`crate::metrics`] in the text format; values other
//!   modules already track, and the deployment's state (etcd members,
//!   certificates, backups), are collected per scrape.
//!
//! `server.rs` serves (and answers the probes), `checks.rs` holds the
//! cached dependency checks both share, `scrape.rs` answers `/metrics`.

mod checks;
mod scrape;
mod server;

pub use checks::{CHECK_TIMEOUT, READY_CACHE};
pub use server::{bind, serve, HttpError};
