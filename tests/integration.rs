//! The one integration-test binary: the real cluster starts once per run.
//!
//! A custom `main` (libtest-mimic) instead of libtest so that the harness
//! can stop the cluster after the last test and then *check* that nothing
//! it started is left running — a leftover fails the run.

mod common;
mod suite;

use std::sync::OnceLock;

use common::process::{port_open, processes_mentioning, started_pids};
use common::Env;
use libtest_mimic::{Arguments, Trial};

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get_or_init(Env::new)
}

fn main() {
    let args = Arguments::from_args();
    let trials: Vec<Trial> = suite::all()
        .into_iter()
        .map(|(name, f)| {
            Trial::test(name, move || {
                f(env());
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    // Stop the cluster (if a test started it) and verify nothing survives.
    let mut leftovers = Vec::new();
    if let Some(env) = ENV.get() {
        if let Some(cluster) = env.cluster_if_started() {
            cluster.shutdown();
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
    for (pid, name) in started_pids().lock().unwrap().iter() {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A reaped child has no /proc entry; a zombie ("Z") would mean
            // we never waited for it.
            leftovers.push(format!("{name} (pid {pid}) still exists: {}", state.trim()));
        }
    }
    if !leftovers.is_empty() {
        eprintln!(
            "harness: processes left behind:\n  {}",
            leftovers.join("\n  ")
        );
        std::process::exit(101);
    }
    eprintln!(
        "harness: all {} processes started by the harness are gone",
        started_pids().lock().unwrap().len()
    );
    conclusion.exit();
}
