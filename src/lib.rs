//! vaultgram — a secrets broker that operators drive from Telegram.
//!
//! The library is the transport-agnostic core; `src/main.rs` is a thin
//! binary that parses the command line and calls into it.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration of `SPEC.md`, environment overrides
//!   (`VAULT_ADDR`/`BAO_ADDR`, `VAULT_CACERT`, `VAULT_TOKEN`) and validation
//!   that names the offending key. Nothing here touches the network.
//! - [`error`]: [`error::ErrorKind`], the kinds every boundary error maps to.
//! - [`telemetry`]: `tracing` set-up (`--log-format pretty|json`).
//! - [`tls`]: the one rustls `CryptoProvider` the process installs.
//! - [`vault`]: the only module that imports `vaultrs`; builds Vault clients
//!   from the config and maps failures to [`vault::VaultError`].
//! - [`command`]: the chat command table (one `enum Command`, one file per
//!   group: kv, transit, agent, panel, mtproto, operator, info), parsing
//!   from `&str`, `/help` generated from the table, and each group's
//!   execution.
//! - [`context`]: what a command sees ([`context::Ctx`], the shared
//!   [`context::Services`]) and answers ([`context::Reply`], what every
//!   transport renders, or [`context::CommandError`]); imports none of
//!   the command core above it.
//! - [`records`]: the broker's own records (agents, panels and their
//!   copies, MTProto secrets, mtproxy entries, the session, audit
//!   records): formats and KV paths, defined here only.
//! - [`dispatch`]: the pipeline, known nowhere else: parse → suspension →
//!   role → step-up → effects → approval gate → budget → execute with the
//!   operator's child token → audit; runs approved requests.
//! - [`approvals`]: pending requests in etcd with a lease; TOTP-checked
//!   `/approve`.
//! - [`audit`]: the broker's audit trail (log + etcd), never a value.
//! - [`runtime`]: what `run` is doing, for `/health`.
//! - [`transport`]: console (stdin/stdout), Unix socket (`run` + `ctl`),
//!   Telegram (`transport::telegram`: the leader's runner, exactly-once
//!   claims, deletions, the session store; only its `grammers` file imports
//!   `grammers_*`).
//! - [`leader`]: etcd leader election with fencing (lease proven alive or
//!   the Telegram client stops) and the [`etcd::Guard`] on leader writes.
//! - [`migrate`]: `import vpnbot|valhalla` and `export mtproxy`, run as an
//!   admin operator's child token (no etcd).
//! - [`etcd`]: the only module that imports `etcd_client`; connects with a
//!   client certificate and the broker's etcd user, maps failures to
//!   [`etcd::EtcdError`].
//! - [`http`]: `run`'s HTTP endpoints on `http.listen` (`/healthz`,
//!   `/readyz`, `/metrics`).
//! - [`metrics`]: the process's one Prometheus registry; label values come
//!   from fixed sets only (never a path, user or value).
//! - [`text`]: which characters never reach a person raw (controls, bidi
//!   and other invisible format characters) and how they are escaped.
//! - [`doctor`]: `vaultgram doctor`: checks Vault, etcd, certificates,
//!   leadership and the running service; each failure is a check, not an
//!   error.

pub mod approvals;
pub mod audit;
pub mod clock;
pub mod command;
pub mod config;
pub mod context;
pub mod dispatch;
pub mod doctor;
pub mod effect;
pub mod error;
pub mod etcd;
pub mod http;
pub mod ids;
pub mod kube;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod names;
pub mod notify;
pub mod records;
pub mod runtime;
pub mod security;
pub mod service;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod transport;
pub mod transport_kind;
pub mod vault;
