//! Logging set-up: `tracing` to stderr, human-readable or JSON lines.
//!
//! Secret values never reach a log call in the first place (they live in
//! `secrecy` types whose `Debug` is redacted); this module only decides the
//! format and the filter — and it is where grammers' one signal of lost
//! updates is caught ([`UpdateGaps`]).

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

/// The crates of the Telegram client. grammers logs whole `Updates` at
/// WARN on a path the broker takes by design (a sent message whose id is
/// not in the answer: `messages.rs`, "failed to find just-sent message"),
/// message text included; its events therefore reach our log only as
/// their level and place ([`GrammersRedacted`]), never their fields.
const GRAMMERS: [&str; 6] = [
    "grammers_client",
    "grammers_mtsender",
    "grammers_session",
    "grammers_mtproto",
    "grammers_crypto",
    "grammers_tl_types",
];

/// [`init`] with another default filter (`VAULTGRAM_LOG` still wins).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let spec = std::env::var("VAULTGRAM_LOG").ok();
    // A second initialisation (tests) is not an error worth dying for.
    let _ = tracing::subscriber::set_global_default(subscriber(
        format,
        spec.as_deref(),
        default_filter,
        std::io::stderr,
    ));
}

/// The subscriber: our events formatted as `format`, filtered by `spec`
/// (else `default_filter`); rustify's and vaultrs's off unless named;
/// grammers's redacted, always.
fn subscriber<W>(
    format: LogFormat,
    spec: Option<&str>,
    default_filter: &str,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    let mut filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    for directive in QUIET_CLIENTS {
        let target = directive.split('=').next().unwrap_or_default();
        let named = spec.unwrap_or(default_filter).contains(target);
        if !named {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    // Whatever the filter says: grammers's fields never pass.
    for target in GRAMMERS {
        if let Ok(d) = format!("{target}=off").parse() {
            filter = filter.add_directive(d);
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let fmt = match format {
        LogFormat::Pretty => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // Each layer with its own filter: a layer without one makes every
    // callsite of every crate (h2's and tonic's trace events included)
    // build its events for nobody.
    let grammers = tracing_subscriber::filter::Targets::new()
        .with_targets(GRAMMERS.map(|g| (g, tracing::Level::WARN)));
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(
            GrammersRedacted {
                json: format == LogFormat::Json,
                writer,
            }
            .with_filter(grammers),
        )
        .with(update_gaps())
}

/// Where grammers 0.11 says that Telegram answered `getDifference` with
/// `differenceTooLong` (grammers-session `message_box/mod.rs`, a `debug!`
/// with this text): the gap was too long to fetch, grammers moved its
/// update state past it, and the messages in it are never delivered. It
/// is the only signal grammers gives; the Telegram runner turns it into
/// an alert ([`take_update_gaps`]). Pinned by `Cargo.lock`; the test
/// `the_grammers_event_is_the_one_grammers_emits` reads grammers' source.
pub const DIFFERENCE_TOO_LONG_TARGET: &str = "grammers_session::message_box";
pub const DIFFERENCE_TOO_LONG_TEXT: &str = "handling too-long difference";

static UPDATE_GAPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many `differenceTooLong` answers grammers handled since the last
/// call (only the leader runs a client, so they are its own).
pub fn take_update_gaps() -> u64 {
    UPDATE_GAPS.swap(0, std::sync::atomic::Ordering::Relaxed)
}

/// Puts back what [`take_update_gaps`] took and could not report.
pub fn restore_update_gaps(n: u64) {
    UPDATE_GAPS.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// The [`UpdateGaps`] layer, interested in its one target only. Part of
/// every subscriber this module builds; the tests' own log capture adds
/// it too.
pub fn update_gaps<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    UpdateGaps.with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target(DIFFERENCE_TOO_LONG_TARGET, tracing::Level::DEBUG),
    )
}

/// Counts grammers' `differenceTooLong` events whatever the log filter
/// says (the filter keeps grammers off).
pub struct UpdateGaps;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for UpdateGaps {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != DIFFERENCE_TOO_LONG_TARGET {
            return;
        }
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}").starts_with(DIFFERENCE_TOO_LONG_TEXT);
                }
            }
        }
        let mut m = Message(false);
        event.record(&mut m);
        if m.0 {
            UPDATE_GAPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// grammers's warnings and errors, reduced to their level and the place
/// in grammers's source that raised them: never a field, never the
/// message (it can hold a whole `Updates`, message text included).
struct GrammersRedacted<W> {
    json: bool,
    writer: W,
}

impl<S, W> tracing_subscriber::Layer<S> for GrammersRedacted<W>
where
    S: tracing::Subscriber,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        use std::io::Write;
        let m = event.metadata();
        if !GRAMMERS.iter().any(|g| m.target().starts_with(g)) || *m.level() > tracing::Level::WARN
        {
            return;
        }
        let place = format!("{}:{}", m.file().unwrap_or("?"), m.line().unwrap_or(0));
        const NOTE: &str = "grammers event; its text is not logged (it may carry message text)";
        let line = if self.json {
            serde_json::json!({
                "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": m.level().as_str(),
                "message": NOTE,
                "grammers_at": place,
                "target": m.target(),
            })
            .to_string()
        } else {
            format!(
                "{} {:>5} {}: {NOTE} ({place})",
                humantime::format_rfc3339_millis(std::time::SystemTime::now()),
                m.level(),
                m.target()
            )
        };
        let _ = writeln!(self.writer.make_writer(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    /// What grammers 0.11 logs when a sent message's id is missing from
    /// the answer (`warn!("{:#?}", updates)`): the whole update, text
    /// included. Only its level and place reach our log, in both formats,
    /// whatever `VAULTGRAM_LOG` says; our own events are untouched.
    #[test]
    fn grammers_events_never_carry_their_text_into_the_log() {
        let canary = "CANARY-grammers-update-text-7f3a";
        for format in [LogFormat::Json, LogFormat::Pretty] {
            for spec in [None, Some("trace"), Some("grammers_client=trace")] {
                let buf = Buf::default();
                let sub = subscriber(format, spec, "info", buf.clone());
                tracing::subscriber::with_default(sub, || {
                    tracing::warn!(target: "grammers_client::client::messages", "{}", format!("Updates {{ message: \"/kv put secret/x password={canary}\" }}"));
                    tracing::error!(target: "grammers_mtsender::sender", text = canary, "failed");
                    tracing::info!(target: "grammers_session::message_box", "{canary}");
                    tracing::info!(target: "vaultgram::test", "ours");
                });
                let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
                assert!(!out.contains(canary), "{format:?} {spec:?}: {out}");
                assert_eq!(
                    out.matches("its text is not logged").count(),
                    2,
                    "{format:?} {spec:?}: {out}"
                );
                assert!(
                    out.contains("client/messages.rs") || out.contains("telemetry.rs"),
                    "{out}"
                );
                if spec != Some("grammers_client=trace") {
                    assert!(out.contains("ours"), "{format:?} {spec:?}: {out}");
                }
            }
        }
    }

    /// grammers' `differenceTooLong` event is counted whatever the filter
    /// says, once per event; nothing else on that target is.
    #[test]
    fn update_gaps_are_counted_whatever_the_filter() {
        for spec in [None, Some("grammers_session=off"), Some("trace")] {
            let sub = subscriber(LogFormat::Json, spec, "info", Buf::default());
            tracing::subscriber::with_default(sub, || {
                tracing::debug!(target: "grammers_session::message_box", "handling too-long difference (pts = {}); no longer getting diff", 42);
                tracing::debug!(target: "grammers_session::message_box", "handling partial difference");
                tracing::warn!(target: "vaultgram::x", "handling too-long difference");
            });
            assert_eq!(take_update_gaps(), 1, "{spec:?}");
            assert_eq!(take_update_gaps(), 0);
        }
    }

    /// The text [`UpdateGaps`] waits for is what the grammers-session in
    /// `Cargo.lock` emits, at that target: an upgrade that changes it
    /// fails here instead of silencing the alert.
    #[test]
    fn the_grammers_event_is_the_one_grammers_emits() {
        let lock = include_str!("../Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"grammers-session\""))
            .and_then(|p| p.split("version = \"").nth(1))
            .and_then(|v| v.split('"').next())
            .expect("grammers-session in Cargo.lock");
        let home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        let registry = std::path::Path::new(&home).join("registry/src");
        let source = std::fs::read_dir(&registry)
            .unwrap_or_else(|e| panic!("{}: {e}", registry.display()))
            .flatten()
            .map(|d| {
                d.path()
                    .join(format!("grammers-session-{version}/src/message_box/mod.rs"))
            })
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "grammers-session {version} source not under {}",
                    registry.display()
                )
            });
        let text = std::fs::read_to_string(&source).unwrap();
        let at = text
            .find(&format!(
                "\"{DIFFERENCE_TOO_LONG_TEXT} (pts = {{}}); no longer getting diff\""
            ))
            .unwrap_or_else(|| panic!("{}: the differenceTooLong event changed", source.display()));
        assert!(
            text[..at].trim_end().ends_with("debug!("),
            "not a tracing event"
        );
        let arm = text[..at]
            .rfind("=>")
            .map(|i| &text[..i])
            .unwrap_or_default();
        assert!(
            arm.trim_end().ends_with("Difference::TooLong(diff)"),
            "not the differenceTooLong arm"
        );
        assert_eq!(DIFFERENCE_TOO_LONG_TARGET, "grammers_session::message_box");
    }
}
