//! The listener and the probes: `/healthz` and `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::checks::{cached_checks, Endpoints};
use super::scrape;
use crate::config::HttpConfig;
use crate::dispatch::App;

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
        members: tokio::sync::Mutex::new(None),
    });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape::metrics))
        .with_state(state);
    tracing::info!(listen = %addr, "HTTP endpoints listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
        .await
        .map_err(|source| HttpError::Serve { addr, source })
}

async fn healthz() -> &'static str {
    "ok"
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
