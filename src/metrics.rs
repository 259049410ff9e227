//! The process's Prometheus metrics (`GET /metrics`, see [`crate::http`]).
//!
//! One global registry: `vault/` and `etcd.rs` record into it without
//! depending on the dispatcher, and a process has exactly one `/metrics`.
//! This module depends on nothing else in the crate; values that other
//! modules already track (token renewals, leadership, Telegram) are copied
//! in at scrape time by [`crate::http`].
//!
//! Every label value comes from a fixed set (command table names,
//! the Vault operation classes of `vault::http`, transports, error kinds): never a path,
//! a user id or message text, so neither a secret nor an unbounded series
//! can appear here.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
    result: &'static str,
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    /// An endpoint of `etcd.endpoints` (the config's, so bounded).
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    /// The config key naming the file (`etcd.cert`, …).
    certificate: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecurityLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

type HistogramFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// The stages of one command, as the dispatcher and the socket transport
/// time them (`vaultgram_command_stage_seconds{stage}`); `bench/run.sh`
/// turns their sums into the per-stage profile of docs/PERFORMANCE.md.
pub const STAGES: [&str; 10] = [
    "socket_read", // the socket: waiting for and reading the line (not in `total`)
    "parse",
    "suspension", // the operator's suspension (memory; an etcd read when the view is stale)
    "authorize",  // role, step-up, effects, the approval gate
    "budget",     // the reveal budget (etcd compare-and-swap)
    "execute",    // the command, child token and Vault requests included
    "token",      // the operator's child token (cache hit or mint), within execute
    "audit",      // the audit record: log line, JSON, queue
    "reply",      // rendering the JSON reply
    "total",      // line read → reply written (socket)
];

/// The metric handles; see [`get`].
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    vault_duration: HistogramFamily,
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    pub token_renewals: Counter,
    pub token_relogins: Counter,
    pub token_renewal_failures: Counter,
    pub leader: Gauge,
    pub leader_transitions: Counter,
    pub telegram_connected: Gauge,
    etcd_errors: Counter,
    pub approvals_pending: Gauge,
    security_events: Family<SecurityLabels, Counter>,
    confinement: Family<StateLabels, Gauge>,
    dependencies: Family<DependencyLabels, Gauge>,
    etcd_members: Family<MemberLabels, Gauge>,
    certificates: Family<CertificateLabels, Gauge>,
    /// Both stay 0 without `backup.dir` (a registered gauge is always
    /// exported; the alert ignores a max age of 0).
    pub backup_newest: Gauge,
    pub backup_max_age: Gauge,
    notices_dropped: Counter,
    pub operators_unreachable: Gauge,
}

fn vault_histogram() -> Histogram {
    // 2 ms (a cached local read) … 10 s (the request timeout's order).
    Histogram::new([
        0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn stage_histogram() -> Histogram {
    // 10 µs (parsing) … 1 s (a slow etcd or Vault round trip).
    Histogram::new([
        0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
    ])
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vaultgram");
        let m = Metrics {
            commands: Family::default(),
            vault_duration: Family::new_with_constructor(vault_histogram as fn() -> Histogram),
            stages: Family::new_with_constructor(stage_histogram as fn() -> Histogram),
            token_renewals: Counter::default(),
            token_relogins: Counter::default(),
            token_renewal_failures: Counter::default(),
            leader: Gauge::default(),
            leader_transitions: Counter::default(),
            telegram_connected: Gauge::default(),
            etcd_errors: Counter::default(),
            approvals_pending: Gauge::default(),
            security_events: Family::default(),
            confinement: Family::default(),
            dependencies: Family::default(),
            etcd_members: Family::default(),
            certificates: Family::default(),
            backup_newest: Gauge::default(),
            backup_max_age: Gauge::default(),
            notices_dropped: Counter::default(),
            operators_unreachable: Gauge::default(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "commands",
            "Commands dispatched, by command, result and transport",
            m.commands.clone(),
        );
        registry.register(
            "vault_request_duration_seconds",
            "Duration of Vault API requests, by operation class",
            m.vault_duration.clone(),
        );
        registry.register(
            "command_stage_seconds",
            "Wall time of each stage of a command (see metrics::STAGES)",
            m.stages.clone(),
        );
        registry.register(
            "token_renewals",
            "Renewals of the broker's Vault token",
            m.token_renewals.clone(),
        );
        registry.register(
            "token_relogins",
            "Logins of the broker after its first one",
            m.token_relogins.clone(),
        );
        registry.register(
            "leader",
            "1 while this process leads the election",
            m.leader.clone(),
        );
        registry.register(
            "leader_transitions",
            "Leadership terms won plus terms lost by this process",
            m.leader_transitions.clone(),
        );
        registry.register(
            "telegram_connected",
            "1 while this process's Telegram client is connected",
            m.telegram_connected.clone(),
        );
        registry.register("etcd_errors", "Failed etcd requests", m.etcd_errors.clone());
        registry.register(
            "approvals_pending",
            "Approval requests waiting for an admin",
            m.approvals_pending.clone(),
        );
        registry.register(
            "security_events",
            "Security alerts (suspend, resume, auto_suspend, budget_exceeded, unlock_failed)",
            m.security_events.clone(),
        );
        registry.register(
            "confinement",
            "1 for the pod's NetworkPolicy confinement state (ok, warn, fail, error, not_in_pod)",
            m.confinement.clone(),
        );
        registry.register(
            "dependency_up",
            "1 while the broker can use the dependency (vault: its token looks itself up; etcd: a read), as /readyz checks it",
            m.dependencies.clone(),
        );
        registry.register(
            "token_renewal_failures",
            "Failed renewals and logins of the broker's Vault token",
            m.token_renewal_failures.clone(),
        );
        registry.register(
            "etcd_member_up",
            "1 while this etcd member answers a status request with a leader in view, by endpoint",
            m.etcd_members.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "When the first certificate in a configured PEM file expires (Unix seconds), by config key",
            m.certificates.clone(),
        );
        registry.register(
            "backup_newest_timestamp_seconds",
            "When the newest finished snapshot in backup.dir was written, the oldest over the kinds present (Unix seconds; 0: none)",
            m.backup_newest.clone(),
        );
        registry.register(
            "backup_max_age_seconds",
            "backup.max_age_secs: how old the newest snapshot may be (0: no backup.dir, nothing exported)",
            m.backup_max_age.clone(),
        );
        registry.register(
            "notices_dropped",
            "Notices to operators dropped undelivered after their expiry",
            m.notices_dropped.clone(),
        );
        registry.register(
            "operators_unreachable",
            "Operators the Telegram leader cannot address (they never wrote to the userbot)",
            m.operators_unreachable.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in the text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// One dispatched command. `command` is `Command::name()` (the command
/// table) or `-`; `result` an `ErrorKind` string, `ok` or `ignored`.
pub fn command(command: &str, result: &'static str, transport: &'static str) {
    get()
        .commands
        .get_or_create(&CommandLabels {
            command: command.to_string(),
            result,
            transport,
        })
        .inc();
}

/// `n` messages from strangers, dropped unread (counted as `ignored`
/// commands named `-`, as one from the dispatcher would be).
pub fn strangers_ignored(n: u64, transport: &'static str) {
    get()
        .commands
        .get_or_create(&CommandLabels {
            command: "-".to_string(),
            result: "ignored",
            transport,
        })
        .inc_by(n);
}

/// Sets `vaultgram_confinement{state}`: 1 for `state`, 0 for the others
/// of `all` (the states are `kube`'s; this leaf does not import it).
pub fn confinement(state: &'static str, all: &[&'static str]) {
    for &s in all {
        get()
            .confinement
            .get_or_create(&StateLabels { state: s })
            .set(i64::from(s == state));
    }
}

/// Creates every security series at 0 (the kinds are `security`'s; this
/// leaf does not import it): a counter that first appears at 1 has no
/// `increase()`, and the first suspension would page nobody.
pub fn security_kinds(all: &[&'static str]) {
    for &kind in all {
        // Creating the series is the point; the guard is dropped at once.
        drop(
            get()
                .security_events
                .get_or_create(&SecurityLabels { kind }),
        );
    }
}

/// One security alert of `kind` (bounded: `security::Event` names).
pub fn security_event(kind: &'static str) {
    get()
        .security_events
        .get_or_create(&SecurityLabels { kind })
        .inc();
}

/// Sets `vaultgram_dependency_up{dependency}` from `/readyz`'s check.
pub fn dependency_up(dependency: &'static str, up: bool) {
    get()
        .dependencies
        .get_or_create(&DependencyLabels { dependency })
        .set(i64::from(up));
}

/// Sets `vaultgram_etcd_member_up{member}` for one configured endpoint.
pub fn etcd_member_up(member: &str, up: bool) {
    get()
        .etcd_members
        .get_or_create(&MemberLabels {
            member: member.to_string(),
        })
        .set(i64::from(up));
}

/// Sets `vaultgram_certificate_not_after_timestamp_seconds{certificate}`.
pub fn certificate_not_after(certificate: &'static str, not_after: i64) {
    get()
        .certificates
        .get_or_create(&CertificateLabels { certificate })
        .set(not_after);
}

/// One notice dropped undelivered.
pub fn notice_dropped() {
    get().notices_dropped.inc();
}

/// One failed etcd request.
pub fn etcd_error() {
    get().etcd_errors.inc();
}

/// Records how long one Vault request of class `operation` took.
pub fn observe_vault(operation: &'static str, started: Instant) {
    get()
        .vault_duration
        .get_or_create(&OperationLabels { operation })
        .observe(started.elapsed().as_secs_f64());
}

/// Records the wall time of one command stage (one of [`STAGES`]).
pub fn observe_stage(stage: &'static str, started: Instant) {
    debug_assert!(STAGES.contains(&stage), "{stage}");
    get()
        .stages
        .get_or_create(&StageLabels { stage })
        .observe(started.elapsed().as_secs_f64());
}

/// Runs one stage of a command and records its wall time.
pub async fn time_stage<F: Future>(stage: &'static str, f: F) -> F::Output {
    let started = Instant::now();
    let out = f.await;
    observe_stage(stage, started);
    out
}

/// Runs a Vault request (e.g. a vaultrs call) and records its duration.
pub async fn time_vault<F: Future>(operation: &'static str, f: F) -> F::Output {
    let started = Instant::now();
    let out = f.await;
    observe_vault(operation, started);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_conventional_names() {
        command("whoami", "ok", "socket");
        observe_vault("kv_read", Instant::now());
        let text = get().encode();
        assert!(text.contains("vaultgram_commands_total{"), "{text}");
        assert!(text.contains("vaultgram_vault_request_duration_seconds_bucket{"));
        assert!(text.contains("vaultgram_leader "));
    }
}
