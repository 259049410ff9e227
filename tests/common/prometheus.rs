//! A real Prometheus — Debian's, unpacked by `prometheus_binaries`
//! (scripts/lib.sh), found through `PROMETHEUS_BIN_DIR` — on a free
//! loopback port, scraping the given targets as job `vaultgram` and
//! evaluating the given rules; queried over its HTTP API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{free_port, Proc};

/// The directory holding `prometheus` and `promtool`.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("PROMETHEUS_BIN_DIR").map(PathBuf::from).expect(
        "PROMETHEUS_BIN_DIR is not set: scripts/test.sh sets it (prometheus_binaries in scripts/lib.sh)",
    );
    assert!(
        dir.join("prometheus").is_file(),
        "no prometheus in PROMETHEUS_BIN_DIR={}",
        dir.display()
    );
    dir
}

pub struct Prometheus {
    pub port: u16,
    proc: Proc,
    http: reqwest::blocking::Client,
}

/// An alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone)]
pub struct Alert {
    pub name: String,
    pub state: String,
    pub labels: Value,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (config, rules, TSDB, log) and waits
    /// until it is ready. `scrape` is both the scrape and the rule
    /// evaluation interval.
    pub fn start(dir: &Path, targets: &[String], rules: &str, scrape: Duration) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let interval = format!("{}ms", scrape.as_millis());
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: vaultgram\n    static_configs:\n      - targets: [{targets}]\n",
            dir.join("rules.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), &config).unwrap();
        let mut cmd = Command::new(bin_dir().join("prometheus"));
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // Alerts resolve as soon as their expression is false.
        .arg("--rules.alert.resend-delay=1s");
        let proc = Proc::spawn("prometheus", cmd, &dir.join("prometheus.log"));
        let p = Prometheus {
            port,
            proc,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = p
                .http
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/{path}", self.port);
        let r = self
            .http
            .get(&url)
            .query(params)
            .send()
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        let v: Value = r.json().unwrap();
        assert_eq!(v["status"], "success", "prometheus {path} {params:?}: {v}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let d = self.api("query", &[("query", expr.to_string())]);
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// A range query (Unix seconds) over `step`; its result matrix.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: Duration) -> Vec<Value> {
        let d = self.api(
            "query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{}s", step.as_secs_f64())),
            ],
        );
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every pending or firing alert.
    pub fn alerts(&self) -> Vec<Alert> {
        let d = self.api("alerts", &[]);
        d["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|a| Alert {
                name: a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                state: a["state"].as_str().unwrap_or("").to_string(),
                labels: a["labels"].clone(),
            })
            .collect()
    }

    /// Every rule group's evaluation errors (a rule that cannot be
    /// evaluated would never fire).
    pub fn rule_errors(&self) -> Vec<String> {
        let d = self.api("rules", &[]);
        let mut out = Vec::new();
        for g in d["groups"].as_array().cloned().unwrap_or_default() {
            for r in g["rules"].as_array().cloned().unwrap_or_default() {
                if r["health"] != "ok" && r["health"] != "unknown" {
                    out.push(format!("{}: {}", r["name"], r["lastError"]));
                }
            }
        }
        out
    }

    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}
