//! The one integration-test binary: the real cluster starts once per run,
//! with the Vault-API server `VAULTGRAM_IT_SERVER` names (OpenBao or
//! HashiCorp Vault; scripts/test.sh runs both).
//!
//! A custom `main` (libtest-mimic) instead of libtest so that the harness
//! can stop the cluster after the last test and then *check* that nothing
//! it started is left running — a leftover fails the run.

// The Telegram tests drive the broker through the stand-in client, which
// only a build with this feature contains (scripts/test.sh passes it).
#[cfg(not(feature = "telegram-standin"))]
compile_error!("the integration tests need `--features telegram-standin` (the Telegram stand-in); run scripts/test.sh");

mod common;
mod suite;

use std::sync::{OnceLock, RwLock};

use common::process::{port_open, processes_mentioning, started_pids};
use common::Env;
use libtest_mimic::{Arguments, Trial};

static ENV: OnceLock<Env> = OnceLock::new();

/// Tests named `disruptive::…` seal, stop or restart shared servers: they
/// run alone (write lock); every other test holds a read lock.
static DISRUPT: RwLock<()> = RwLock::new(());

fn env() -> &'static Env {
    ENV.get_or_init(Env::new)
}

fn main() {
    let mut args = Arguments::from_args();
    // The tests wait on servers far more than they compute.
    args.test_threads = args.test_threads.or(Some(8));
    // One run per Vault-API server (`VAULTGRAM_IT_SERVER`); the server is
    // part of every test's name, so a report says which one failed.
    let server = common::cluster::Server::from_env();
    let mut tests = suite::all();
    if server == common::cluster::Server::Vault {
        tests.extend(suite::vault_only());
    }
    let server = server.name();
    let trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::test(format!("{server}::{name}"), move || {
                let _guard = if name.starts_with("disruptive::") {
                    Err(DISRUPT.write().unwrap_or_else(|e| e.into_inner()))
                } else {
                    Ok(DISRUPT.read().unwrap_or_else(|e| e.into_inner()))
                };
                f(env());
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    // Stop the cluster (if a test started it) and verify nothing survives.
    let mut leftovers = Vec::new();
    let mut logs = vec![common::canary::log_path().to_path_buf()];
    if let Some(env) = ENV.get() {
        if let Some(cluster) = env.cluster_if_started() {
            // Everything the broker keeps in etcd (audit trail, approvals)
            // is searched for canaries too.
            let dump = cluster.path().join("etcd-dump.txt");
            let out = cluster.etcdctl(&["get", "--prefix", "/"], true);
            if out.status.success() {
                std::fs::write(&dump, &out.stdout).unwrap();
                logs.push(dump);
            } else {
                eprintln!(
                    "harness: etcd dump failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                leftovers.push("etcd dump for the canary search failed".into());
            }
            cluster.shutdown();
            logs.extend(cluster.log_files());
            let dir = cluster.path().display().to_string();
            for (pid, cmd) in processes_mentioning(&dir) {
                leftovers.push(format!("pid {pid}: {cmd}"));
            }
            for port in cluster.ports() {
                if port_open(port) {
                    leftovers.push(format!("port {port} still accepts connections"));
                }
            }
        }
    }
    if let Some(kube) = ENV.get().and_then(|e| e.kube_if_started()) {
        kube.shutdown();
        logs.extend(kube.log_files());
        let dir = kube.path().display().to_string();
        for (pid, cmd) in processes_mentioning(&dir) {
            leftovers.push(format!("pid {pid}: {cmd}"));
        }
        for port in kube.ports() {
            if port_open(port) {
                leftovers.push(format!("port {port} still accepts connections"));
            }
        }
    }
    for (pid, name) in started_pids().lock().unwrap().iter() {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A reaped child has no /proc entry; a zombie ("Z") would mean
            // we never waited for it.
            leftovers.push(format!("{name} (pid {pid}) still exists: {}", state.trim()));
        }
    }
    let hits = common::canary::search(&logs);
    if !hits.is_empty() {
        for (canary, file) in &hits {
            eprintln!("harness: canary {canary} found in {}", file.display());
        }
        std::process::exit(101);
    }
    eprintln!(
        "harness: {} canaries searched in {} log files: 0 hits",
        common::canary::all().len(),
        logs.len()
    );
    if !leftovers.is_empty() {
        eprintln!(
            "harness: end-of-run checks failed:\n  {}",
            leftovers.join("\n  ")
        );
        std::process::exit(101);
    }
    eprintln!(
        "harness: all {} processes started by the harness are gone",
        started_pids().lock().unwrap().len()
    );
    // Keep the evidence when something failed (or when asked to).
    if !conclusion.has_failed() && std::env::var_os("VAULTGRAM_KEEP_TEST_DIR").is_none() {
        if let Some(cluster) = ENV.get().and_then(|e| e.cluster_if_started()) {
            let _ = std::fs::remove_dir_all(cluster.path());
        }
        if let Some(kube) = ENV.get().and_then(|e| e.kube_if_started()) {
            let _ = std::fs::remove_dir_all(kube.path());
        }
        let _ = std::fs::remove_file(common::canary::log_path());
    }
    conclusion.exit();
}
