//! `GET /metrics`: [`crate::metrics`] in the text format, after copying in
//! per scrape what other modules track (token renewals, leadership,
//! Telegram, pending approvals) and what the deployment around the broker
//! shows (etcd members, certificate expiry, backups). Each collector is
//! bounded by [`CHECK_TIMEOUT`]; one that cannot answer leaves its last
//! value (and an etcd failure is counted), so a scrape never hangs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::checks::{cached_checks, Endpoints, MemberProbe, CHECK_TIMEOUT};
use crate::dispatch::App;
use crate::etcd::Etcd;

/// How long one probe of the etcd members answers every scrape: each probe
/// opens a connection per member.
pub(super) const MEMBER_CACHE: Duration = Duration::from_secs(5);

/// Raises a counter to `value` (a monotonic count kept elsewhere).
fn catch_up(c: &prometheus_client::metrics::counter::Counter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

pub(super) async fn metrics(State(s): State<Arc<Endpoints>>) -> Response {
    let app = &s.app;
    let m = crate::metrics::get();
    let (_, checks) = cached_checks(&s).await;
    crate::metrics::dependency_up("vault", checks.vault.ok);
    crate::metrics::dependency_up("etcd", checks.etcd.ok);
    let prefix = &app.cfg.etcd.prefix;
    let pending_prefix = format!("{prefix}approvals/pending/");
    let unreachable_prefix = crate::notify::unreachable_key(prefix, "");
    let (pending, unreachable, members) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, app.etcd.count_prefix(&pending_prefix)),
        tokio::time::timeout(CHECK_TIMEOUT, app.etcd.count_prefix(&unreachable_prefix)),
        etcd_members(&s),
    );
    for (member, up) in &members {
        crate::metrics::etcd_member_up(member, *up);
    }
    certificates(app);
    backups(app);
    {
        let _one = s.scrape.lock().await;
        crate::metrics::security_kinds(&crate::security::Event::ALL.map(|e| e.as_str()));
        let token = app.broker.status();
        catch_up(&m.token_renewals, token.renewals);
        catch_up(&m.token_relogins, token.relogins);
        catch_up(&m.token_renewal_failures, token.failures);
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
        if let Ok(Ok(n)) = unreachable {
            m.operators_unreachable.set(n);
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

/// Every member of `etcd.endpoints`, probed at once (a connection each),
/// at most [`MEMBER_CACHE`] old: up when it answers a status request and
/// sees a leader (a member cut off from the quorum sees none).
async fn etcd_members(s: &Endpoints) -> MemberProbe {
    let mut cached = s.members.lock().await;
    if let Some((at, m)) = cached.as_ref() {
        if at.elapsed() < MEMBER_CACHE {
            return m.clone();
        }
    }
    let cfg = &s.app.cfg.etcd;
    let out: MemberProbe = Etcd::member_statuses(cfg, CHECK_TIMEOUT)
        .await
        .into_iter()
        .zip(&cfg.endpoints)
        .map(|(r, ep)| (ep.clone(), matches!(r, Some(Ok(st)) if st.leader != 0)))
        .collect();
    *cached = Some((Instant::now(), out.clone()));
    out
}

/// When the first certificate of each configured file expires; a file
/// that cannot be read exports 0 (expired: the alert fires, as it should
/// for a certificate the broker cannot use).
fn certificates(app: &App) {
    for (key, path) in app.cfg.certificate_files() {
        let Some(path) = path else { continue };
        let first = crate::tls::certificates(path)
            .ok()
            .and_then(|c| c.iter().map(|(_, na)| *na).min())
            .unwrap_or(0);
        crate::metrics::certificate_not_after(key, first);
    }
}

/// The newest finished snapshot in `backup.dir` (of each kind present,
/// the oldest: as `doctor` judges it; 0 for none), and
/// `backup.max_age_secs`. Nothing is exported without `backup.dir`.
fn backups(app: &App) {
    let cfg = &app.cfg.backup;
    let Some(dir) = &cfg.dir else { return };
    let m = crate::metrics::get();
    m.backup_max_age
        .set(i64::try_from(cfg.max_age_secs).unwrap_or(i64::MAX));
    let newest = crate::backup::newest(dir).unwrap_or_default();
    let at = newest
        .values()
        .map(|s| s.modified)
        .min()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    m.backup_newest.set(at);
}
