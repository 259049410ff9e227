//! The dependency checks `/readyz` and `/metrics` share, cached for
//! [`READY_CACHE`], and the state of the endpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dispatch::App;

/// Bound on each readiness check and on the scrape-time etcd count.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one readiness result answers every probe.
pub const READY_CACHE: Duration = Duration::from_millis(500);

/// Each configured etcd endpoint and whether it answered with a leader.
pub(super) type MemberProbe = Vec<(String, bool)>;

pub(super) struct Endpoints {
    pub(super) app: Arc<App>,
    /// The last readiness result; the lock also makes concurrent probes
    /// wait for one check instead of each starting its own.
    pub(super) ready: tokio::sync::Mutex<Option<(Instant, Checks)>>,
    /// Scrape-time counter updates are read-then-add: one at a time.
    pub(super) scrape: tokio::sync::Mutex<()>,
    /// The last probe of every etcd member (`scrape::MEMBER_CACHE`).
    pub(super) members: tokio::sync::Mutex<Option<(Instant, MemberProbe)>>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Check {
    pub(super) ok: bool,
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
pub(super) struct Checks {
    pub(super) vault: Check,
    pub(super) etcd: Check,
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

    pub(super) fn failed(&self) -> Vec<&'static str> {
        [("vault", &self.vault), ("etcd", &self.etcd)]
            .into_iter()
            .filter(|(_, c)| !c.ok)
            .map(|(n, _)| n)
            .collect()
    }
}

/// The dependency checks, at most [`READY_CACHE`] old (probes and scrapes
/// share them: each costs a Vault and an etcd call), and their age.
pub(super) async fn cached_checks(s: &Endpoints) -> (Duration, Checks) {
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
