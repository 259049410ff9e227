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
//!   modules already track are copied in per scrape.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::dispatch::App;

/// Bound on each readiness check and on the scrape-time etcd count.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one readiness result answers every probe.
pub const READY_CACHE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("config key `http.listen`: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server on {addr}: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds `http.listen`; called before logging in so that a taken port
/// fails `run` at once.
pub async fn bind(cfg: &HttpConfig) -> Result<TcpListener, HttpError> {
    TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| HttpError::Bind {
            addr: cfg.listen.clone(),
            source,
        })
}

/// Serves until `shutdown` fires, then stops accepting and finishes the
/// requests in flight.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let state = Arc::new(Endpoints {
        app,
        ready: tokio::sync::Mutex::new(None),
        scrape: tokio::sync::Mutex::new(()),
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    tracing::info!(listen = %addr, "HTTP endpoints listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}

struct Endpoints {
    app: Arc<App>,
    /// The last readiness result; the lock also makes concurrent probes
    /// wait for one check instead of each starting its own.
    ready: tokio::sync::Mutex<Option<(Instant, Checks)>>,
    /// Scrape-time counter updates are read-then-add: one at a time.
    scrape: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone, Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Check {
    fn of<T, E: std::fmt::Display>(r: Result<Result<T, E>, tokio::time::error::Elapsed>) -> Check {
        match r {
            Ok(Ok(_)) => Check {
                ok: true,
                error: None,
            },
            // Vault and etcd error texts name paths and reasons, never values.
            Ok(Err(e)) => Check {
                ok: false,
                error: Some(e.to_string()),
            },
            Err(_) => Check {
                ok: false,
                error: Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Checks {
    vault: Check,
    etcd: Check,
}

impl Checks {
    async fn run(app: &App) -> Checks {
        let vault = app.broker.current();
        let key = crate::leader::election_key(&app.cfg.etcd);
        let (v, e) = tokio::join!(
            tokio::time::timeout(CHECK_TIMEOUT, vault.lookup_self()),
            tokio::time::timeout(CHECK_TIMEOUT, app.etcd.get(&key)),
        );
        Checks {
            vault: Check::of(v),
            etcd: Check::of(e),
        }
    }

    fn failed(&self) -> Vec<&'static str> {
        [("vault", &self.vault), ("etcd", &self.etcd)]
            .into_iter()
            .filter(|(_, c)| !c.ok)
            .map(|(n, _)| n)
            .collect()
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// The dependency checks, at most [`READY_CACHE`] old (probes and scrapes
/// share them: each costs a Vault and an etcd call), and their age.
async fn cached_checks(s: &Endpoints) -> (Duration, Checks) {
    let mut cached = s.ready.lock().await;
    match cached.as_ref() {
        Some((at, c)) if at.elapsed() < READY_CACHE => (at.elapsed(), c.clone()),
        _ => {
            let c = Checks::run(&s.app).await;
            *cached = Some((Instant::now(), c.clone()));
            (Duration::ZERO, c)
        }
    }
}

async fn readyz(State(s): State<Arc<Endpoints>>) -> Response {
    let (age, checks) = cached_checks(&s).await;
    let mut failed = checks.failed();
    // Refreshed by run's own re-check task, not per probe (API calls).
    let confinement = s.app.runtime.confinement();
    if confinement.as_ref().is_some_and(|c| c.blocks()) {
        failed.push("confinement");
    }
    // A leader without a connected client serves nobody: not ready once
    // that has lasted twice the start timeout (a restart in progress is).
    let tg = s.app.runtime.telegram();
    let bound = 2 * s.app.cfg.telegram.start_timeout_secs;
    if tg
        .down_since
        .is_some_and(|t| crate::clock::unix_secs().saturating_sub(t) > bound)
    {
        failed.push("telegram");
    }
    let ready = failed.is_empty();
    // Status of this process, fresh on every probe (cheap, in memory).
    let leader = s.app.runtime.elector.get().map(|e| e.status());
    let leading = leader.as_ref().is_some_and(|l| l.leading);
    let mut telegram = serde_json::to_value(s.app.runtime.telegram()).unwrap_or_default();
    if let Some(t) = telegram.as_object_mut() {
        t.insert("enabled".into(), s.app.cfg.telegram.enabled.into());
    }
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "ready": ready,
        "failed": failed,
        "checks": checks,
        "checked_ms_ago": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        "leading": leading,
        "leader": leader,
        "telegram": telegram,
        "confinement": confinement,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Raises a counter to `value` (a monotonic count kept elsewhere).
fn catch_up(c: &prometheus_client::metrics::counter::Counter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

async fn metrics(State(s): State<Arc<Endpoints>>) -> Response {
    let app = &s.app;
    let m = crate::metrics::get();
    let (_, checks) = cached_checks(&s).await;
    crate::metrics::dependency_up("vault", checks.vault.ok);
    crate::metrics::dependency_up("etcd", checks.etcd.ok);
    let pending = tokio::time::timeout(
        CHECK_TIMEOUT,
        app.etcd
            .count_prefix(&format!("{}approvals/pending/", app.cfg.etcd.prefix)),
    )
    .await;
    {
        let _one = s.scrape.lock().await;
        crate::metrics::security_kinds(&crate::security::Event::ALL.map(|e| e.as_str()));
        let token = app.broker.status();
        catch_up(&m.token_renewals, token.renewals);
        catch_up(&m.token_relogins, token.relogins);
        let leader = app.runtime.elector.get().map(|e| e.status());
        let leading = leader.as_ref().is_some_and(|l| l.leading);
        m.leader.set(i64::from(leading));
        // Each term won is also lost, except the one still held.
        let terms = leader.as_ref().map_or(0, |l| l.terms);
        catch_up(
            &m.leader_transitions,
            (2 * terms).saturating_sub(u64::from(leading)),
        );
        m.telegram_connected
            .set(i64::from(app.runtime.telegram().connected));
        // On failure the last known count stays (the etcd error is counted).
        if let Ok(Ok(n)) = pending {
            m.approvals_pending.set(n);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}
