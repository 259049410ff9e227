//! The broker's own records in KV v2: what each kind holds and where it
//! lives below the KV mount. The chat commands, the migrations, the
//! approval gate's effect classifier and the Telegram session store all
//! take record formats and paths from here, so that one change of layout
//! is one change in one place.
//!
//! | kind | path (below the KV mount) | written by |
//! | --- | --- | --- |
//! | [`agent`] | `vaultgram/agents/ID` | `/agent`, `import valhalla` |
//! | [`panel`] | `vaultgram/panels/NAME` | `/panel` |
//! | [`panel`] copy | `vaultgram/panels-by-agent/AGENT/NAME` | `/panel` |
//! | [`mtproto`] | `vaultgram/mtproto/OWNER/USER` | `/mtproto`, `import vpnbot` |
//! | [`mtproxy`] | `vaultgram/mtproxy/{placeholder,state}` | `import vpnbot` |
//! | [`session`] | `vaultgram/telegram-session` (default) | `vaultgram login` |
//!
//! And one record outside KV: [`audit`], the audit trail's record in etcd.
//!
//! Depends on nothing above `vault::kv`; the command context converts
//! [`RecordError`]. What every kind shares (the error, digests, field
//! access) is in `common`: this file only declares and re-exports.

pub mod agent;
pub mod audit;
mod common;
pub mod mtproto;
pub mod mtproxy;
pub mod panel;
pub mod session;

pub use common::{field, sha256_hex, RecordError};

/// The managed areas, each with what writes it. `/kv` may read and list
/// them, never write them: the writers keep each record's invariants (a
/// token and its digest, a panel and its copies, a secret and its
/// fingerprint).
pub const MANAGED: [(&str, &str); 6] = [
    (agent::DIR, "/agent"),
    (panel::DIR, "/panel"),
    (panel::COPIES_DIR, "/panel"),
    (mtproto::DIR, "/mtproto"),
    (mtproxy::DIR, "vaultgram import vpnbot"),
    (session::DEFAULT_PATH, "vaultgram login"),
];
