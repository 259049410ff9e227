//! vaultgram — a secrets broker that operators drive from Telegram.
//!
//! The library is the whole broker, the service included
//! ([`service::run`]); `src/main.rs` parses the command line and calls it.
//!
//! What each module is, how they layer and which rules hold: the code map
//! in `ARCHITECTURE.md` (checked against this list by
//! `scripts/check-architecture.py`).

pub mod approvals;
pub mod audit;
pub mod backup;
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
pub mod suspensions;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod transport;
pub mod transport_kind;
pub mod vault;
