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
/// (`import`, `export`): warnings only (rustify's and vaultrs's
/// per-request lines are off everywhere, see [`QUIET_CLIENTS`]).
pub const QUIET_TOOL_FILTER: &str = "warn";

/// rustify logs every non-2xx answer at ERROR with the request URI, and
/// vaultrs the error bodies: an expected 403 or 404 (a denied command, a
/// look-up of something absent) is not an error of the broker, and a real
/// failure reaches the log as the command's own outcome. Off unless the
/// filter names them.
const QUIET_CLIENTS: [&str; 2] = ["rustify=off", "vaultrs=off"];

/// [`init`] with another default filter (`VAULTGRAM_LOG` still wins).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let spec = std::env::var("VAULTGRAM_LOG").ok();
    let mut filter = spec
        .as_deref()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    for directive in QUIET_CLIENTS {
        let target = directive.split('=').next().unwrap_or_default();
        let named = spec.as_deref().unwrap_or(default_filter).contains(target);
        if !named {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second initialisation (tests) is not an error worth dying for.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
