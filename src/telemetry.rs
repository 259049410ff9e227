//! Logging set-up: `tracing` to stderr, human-readable or JSON lines.
//!
//! Secret values never reach a log call in the first place (they live in
//! `secrecy` types whose `Debug` is redacted); this module only decides the
//! format and the filter.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}` (expected pretty or json)"
            )),
        }
    }
}

/// Installs the global subscriber. The filter comes from `VAULTGRAM_LOG`
/// (same syntax as `RUST_LOG`), default `info`.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// The default filter of one-shot tools whose own output is the report
/// (`import`, `export`): warnings only, and none of rustify's and vaultrs's
/// per-request error lines (an expected 404 is not an error there; a real
/// failure reaches the user as the command's own error).
pub const QUIET_TOOL_FILTER: &str = "warn,rustify=off,vaultrs=off";

/// [`init`] with another default filter (`VAULTGRAM_LOG` still wins).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("VAULTGRAM_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second initialisation (tests) is not an error worth dying for.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
