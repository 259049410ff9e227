//! Canary secret values: tests plant them in Vault, and at the end of the
//! run the harness searches every log it can see for them (the captured
//! `tracing` output of the library, OpenBao's server and audit logs, the
//! etcd logs). One hit fails the run.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

fn planted() -> &'static Mutex<Vec<String>> {
    static P: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(Vec::new()))
}

/// A fresh canary value, registered for the end-of-run search.
pub fn plant(label: &str) -> String {
    let value = format!("CANARY-{label}-{}", super::cluster::random_hex(8));
    planted().lock().unwrap().push(value.clone());
    value
}

/// Registers a real secret (a secret_id, a wrapping token) for the search.
pub fn register(value: &str) {
    planted().lock().unwrap().push(value.to_string());
}

pub fn all() -> Vec<String> {
    planted().lock().unwrap().clone()
}

/// Where the library's `tracing` output of this run goes.
pub fn log_path() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("vaultgram-it-{}-tracing.jsonl", std::process::id()))
    })
}

/// Captures the library's logs (JSON lines, debug for vaultgram, info for
/// the rest — what an operator would run with `VAULTGRAM_LOG=debug`).
pub fn capture_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    let file = std::fs::File::create(log_path()).unwrap();
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(Mutex::new(file))
        .with_filter(tracing_subscriber::EnvFilter::new("info,vaultgram=debug"));
    // As in the broker's own subscriber: grammers' `differenceTooLong`
    // event is counted whatever the filter says (the stand-in emits it).
    let sub = tracing_subscriber::registry()
        .with(fmt)
        .with(vaultgram::telemetry::update_gaps());
    let _ = tracing::subscriber::set_global_default(sub);
}

/// Every canary found in `files`, as `(canary, file)`.
pub fn search(files: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let canaries = all();
    let mut hits = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for c in &canaries {
            if text.contains(c.as_str()) {
                hits.push((c.clone(), f.clone()));
            }
        }
    }
    hits
}
