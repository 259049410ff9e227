//! What `vaultgram run` is doing (election, Telegram client,
//! confinement), as `/health`, `doctor` and the metrics report it.

use std::sync::Arc;

use serde::Serialize;

/// The service's moving parts, as `/health` (and later `doctor`/metrics)
/// report them.
#[derive(Default)]
pub struct Runtime {
    pub elector: std::sync::OnceLock<Arc<crate::leader::Elector>>,
    pub telegram: std::sync::Mutex<TelegramStatus>,
    /// The last confinement check (`src/kube.rs`); `None` before the first.
    pub confinement: std::sync::Mutex<Option<crate::kube::Status>>,
}

/// The Telegram client of this process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TelegramStatus {
    pub connected: bool,
    pub backend: Option<&'static str>,
    /// Unix seconds of the last update received.
    pub last_update: Option<u64>,
    /// Why the client is not running, when it should.
    pub problem: Option<String>,
    /// Unix seconds since when this node leads without a connected
    /// client (`None`: connected, or not leading).
    pub down_since: Option<u64>,
    /// Times this node looked at the stored session to start a client
    /// (a refused one is looked at again every recheck, never used).
    pub session_checks: u64,
}

impl Runtime {
    pub fn confinement(&self) -> Option<crate::kube::Status> {
        self.confinement
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_confinement(&self, status: crate::kube::Status) {
        crate::metrics::confinement(
            status.state.as_str(),
            &crate::kube::Confinement::ALL.map(|c| c.as_str()),
        );
        *self.confinement.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    pub fn telegram(&self) -> TelegramStatus {
        self.telegram
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_telegram(&self, f: impl FnOnce(&mut TelegramStatus)) {
        f(&mut self.telegram.lock().unwrap_or_else(|e| e.into_inner()));
    }
}
