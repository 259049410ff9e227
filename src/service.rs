//! `vaultgram run`: the service, as mini-redis's `server::run` — started
//! with a config and a shutdown signal, it binds, checks its confinement,
//! logs in, serves (socket, HTTP, the Telegram leader, the background
//! tasks below) and, once `shutdown` resolves, stops in order: intake
//! (socket, Telegram), the Telegram session saved and its client quit,
//! handlers finished, leadership resigned, the audit backlog flushed,
//! token renewal stopped. `main.rs` only parses arguments and waits for
//! SIGTERM/Ctrl-C.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::App;
use crate::kube::{Confinement, Status};

/// Why the service did not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Socket(#[from] crate::transport::socket::SocketError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("kubernetes.require_confinement: refusing to start: {0}")]
    Unconfined(String),
    #[error(transparent)]
    Start(#[from] crate::dispatch::StartError),
    #[error(transparent)]
    Random(#[from] crate::ids::RandomError),
    #[error("a service task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs the service until `shutdown` resolves, then stops it in order.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
    let socket_path = cfg.ipc.socket.clone();
    // Bind before logging in: a second broker on the same socket fails fast.
    let listener = crate::transport::socket::bind(&socket_path).await?;
    let http_listener = crate::http::bind(&cfg.http).await?;
    // Before logging in: an unconfined pod never gets a Vault token.
    let confinement = crate::kube::status(&cfg).await;
    if confinement.blocks() {
        return Err(ServiceError::Unconfined(confinement.detail));
    }
    log_confinement(&confinement);
    tokio::pin!(shutdown);
    let app = tokio::select! {
        app = start_app(cfg) => app?,
        // SIGTERM while still waiting for Vault or etcd: nothing to stop.
        () = &mut shutdown => return Ok(()),
    };
    // Long-lived: reveals are reserved in blocks (security::count_reveal).
    app.security.reserve_ahead();
    let in_pod = confinement.state != Confinement::NotInPod;
    app.runtime.set_confinement(confinement);
    let stop = CancellationToken::new();
    let rechecker = in_pod.then(|| tokio::spawn(recheck_confinement(app.clone(), stop.clone())));
    let renewer = tokio::spawn({
        let stop = stop.clone();
        app.broker
            .clone()
            .run_renewer(async move { stop.cancelled().await })
    });
    let server = tokio::spawn(crate::transport::socket::serve(
        app.clone(),
        listener,
        socket_path.clone(),
        stop.clone(),
        Duration::from_secs(10),
    ));
    let http = tokio::spawn(crate::http::serve(app.clone(), http_listener, stop.clone()));
    let sweeper = tokio::spawn(sweep_expired_approvals(app.clone(), stop.clone()));
    // Only the election leader runs the Telegram client.
    let telegram = match app.cfg.telegram.enabled {
        true => {
            let elector = Arc::new(crate::leader::Elector::new(
                app.etcd.clone(),
                &app.cfg.etcd,
                crate::leader::node_id()?,
            ));
            Some(tokio::spawn(crate::transport::telegram::run(
                app.clone(),
                elector,
                stop.clone(),
            )))
        }
        false => None,
    };
    tracing::info!(socket = %socket_path.display(), "vaultgram running");
    (&mut shutdown).await;
    stop.cancel();
    if let Some(t) = telegram {
        t.await?;
    }
    server.await?;
    http.await??;
    sweeper.await?;
    if let Some(r) = rechecker {
        r.await?;
    }
    // Bounded: every record is in the log already; the etcd copy of a
    // backlog is not worth hanging a shutdown for.
    if tokio::time::timeout(Duration::from_secs(10), app.audit.flush())
        .await
        .is_err()
    {
        tracing::warn!("audit: etcd backlog not flushed within 10 s (records are in the log)");
    }
    renewer.await?;
    tracing::info!("stopped");
    Ok(())
}

/// How long `run` keeps trying a Vault or etcd that cannot be reached
/// before it gives up. A new pod's first connections can be refused until
/// the NetworkPolicy enforcer has programmed its address into the peers'
/// allow-lists (about a second with kube-router, tests/node/); exiting
/// would cost a restart and the kubelet's back-off. Nothing is served
/// meanwhile: the socket and HTTP listeners only answer once started.
const START_RETRY: Duration = Duration::from_secs(15);
/// A failed attempt shorter than this was refused, not timed out.
const QUICK: Duration = Duration::from_secs(2);

async fn start_app(cfg: Config) -> Result<Arc<App>, ServiceError> {
    use crate::dispatch::StartError;
    let deadline = tokio::time::Instant::now() + START_RETRY;
    let mut wait = Duration::from_millis(250);
    loop {
        let attempt = tokio::time::Instant::now();
        match App::start(cfg.clone()).await {
            Ok(app) => return Ok(app),
            Err(
                e @ (StartError::Vault(crate::vault::VaultError::Unavailable(_))
                | StartError::Etcd(
                    crate::etcd::EtcdError::Unavailable(_)
                    | crate::etcd::EtcdError::LeaderChanged(_),
                )),
                // Only a quick refusal: an attempt that timed out has waited
                // already, and a silent peer is not one that is starting.
            ) if attempt.elapsed() < QUICK && tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(
                    error = %e,
                    retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "start: cannot reach it yet; trying again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(4));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Policies change under a running pod: checked again every
/// `kubernetes.recheck_secs`, shown on `/readyz` and in the metrics.
async fn recheck_confinement(app: Arc<App>, stop: CancellationToken) {
    let every = Duration::from_secs(app.cfg.kubernetes.recheck_secs);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let status = crate::kube::status(&app.cfg).await;
        let before = app.runtime.confinement().map(|c| c.state);
        if before != Some(status.state) {
            log_confinement(&status);
        }
        app.runtime.set_confinement(status);
    }
}

/// Approval requests whose lease ran out unseen are audited as expired,
/// by the service itself (no transport carried them to an end); overdue
/// break-glass reviews remind the admins.
async fn sweep_expired_approvals(app: Arc<App>, stop: CancellationToken) {
    // Often enough that an expiry is recorded within half a TTL.
    let every = (app.cfg.approvals.ttl_secs / 2).clamp(5, 30);
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                app.approvals
                    .sweep_expired(app.audit.as_ref(), crate::transport_kind::Transport::Service)
                    .await;
                app.approvals.remind_unreviewed().await;
            }
        }
    }
}

fn log_confinement(c: &Status) {
    let state = c.state.as_str();
    match c.state {
        Confinement::Ok | Confinement::NotInPod => {
            tracing::info!(state, "confinement: {}", c.detail)
        }
        Confinement::Warn => tracing::warn!(state, "confinement: {}", c.detail),
        Confinement::Fail | Confinement::Error => {
            tracing::error!(state, required = c.required, "confinement: {}", c.detail)
        }
    }
}
