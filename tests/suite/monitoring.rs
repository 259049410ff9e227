//! The alert rules and the dashboard against a real Prometheus scraping
//! two real `run` replicas (one election, the Telegram stand-in) through
//! faults: Vault sealed, an etcd member stopped, the leader killed, an
//! operator over the reveal budget. Each alert must go firing after its
//! fault and clear after recovery; then every dashboard query must return
//! data. The rules are monitoring/rules.yml with every duration read as
//! seconds instead of minutes (`for: 5m` → 5 s, `[10m]` → 10 s, `1h` → 60 s):
//! the same expressions, on a test's time scale.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::Value;

use super::telegram_failover::{ctl_json, tail, Group};
use super::TestFn;
use crate::common::cluster::{random_hex, repo_root};
use crate::common::prometheus::Prometheus;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    ("monitoring::rules_scale_to_seconds", rules_scale_to_seconds),
    (
        "disruptive::monitoring::alerts_fire_and_clear_in_a_real_prometheus",
        alerts_fire_and_clear,
    ),
];

/// Scrape and rule evaluation interval of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
/// How long an alert may take to fire or clear (the longest scaled window
/// is 15 s; the etcd member probe is cached 5 s).
const WITHIN: Duration = Duration::from_secs(60);

/// monitoring/rules.yml with its durations divided by 60: `Nm` → `Ns`,
/// `Nh` → `N*60s`, in `for:` values and in range selectors.
fn scaled(rules: &str) -> (String, usize) {
    fn scale(num: &str, unit: char) -> Option<String> {
        let n: u64 = num.parse().ok()?;
        match unit {
            'm' => Some(format!("{n}s")),
            'h' => Some(format!("{}s", n * 60)),
            _ => None,
        }
    }
    let mut out = String::new();
    let mut changed = 0;
    for line in rules.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if let Some(v) = t.strip_prefix("for: ") {
            let (num, unit) = v.split_at(v.len() - 1);
            if let Some(s) = scale(num, unit.chars().next().unwrap_or(' ')) {
                out.push_str(&format!("{indent}for: {s}\n"));
                changed += 1;
                continue;
            }
        }
        // Range selectors: `[10m]`.
        let mut rest = line;
        let mut l = String::new();
        while let Some(open) = rest.find('[') {
            let Some(close) = rest[open..].find(']') else {
                break;
            };
            let inner = &rest[open + 1..open + close];
            l.push_str(&rest[..open + 1]);
            let (num, unit) = inner.split_at(inner.len().saturating_sub(1));
            match scale(num, unit.chars().next().unwrap_or(' ')) {
                Some(s) => {
                    l.push_str(&s);
                    changed += 1;
                }
                None => l.push_str(inner),
            }
            l.push(']');
            rest = &rest[open + close + 1..];
        }
        l.push_str(rest);
        out.push_str(&l);
        out.push('\n');
    }
    (out, changed)
}

fn rules_scale_to_seconds(_env: &Env) {
    let (s, n) = scaled("    expr: increase(x[10m]) > 0 and y[1h]\n    for: 5m\n  - [a]\n");
    assert_eq!(
        s,
        "    expr: increase(x[10s]) > 0 and y[60s]\n    for: 5s\n  - [a]\n"
    );
    assert_eq!(n, 3);
    let rules = std::fs::read_to_string(repo_root().join("monitoring/rules.yml")).unwrap();
    let (s, n) = scaled(&rules);
    assert!(n >= 20, "only {n} durations scaled");
    assert!(!s.contains("m]") && !s.contains("for: 1m"), "{s}");
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What the test saw of one alert.
struct Seen {
    what: String,
    fired: Duration,
    cleared: Duration,
}

struct Watch<'a> {
    prom: &'a Prometheus,
}

impl Watch<'_> {
    fn matching(&self, name: &str, labels: &[(&str, &str)], state: &str) -> bool {
        self.prom.alerts().iter().any(|a| {
            a.name == name
                && (state.is_empty() || a.state == state)
                && labels.iter().all(|(k, v)| a.labels[*k] == *v)
        })
    }

    fn wait(&self, what: &str, since: Instant, mut done: impl FnMut() -> bool) -> Duration {
        loop {
            if done() {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < WITHIN,
                "{what} not within {WITHIN:?}; alerts: {:?}\nrule errors: {:?}\n{}",
                self.prom.alerts(),
                self.prom.rule_errors(),
                tail(&self.prom.log_text(), 20),
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn firing(&self, name: &str, labels: &[(&str, &str)], since: Instant) -> Duration {
        self.wait(&format!("{name} {labels:?} firing"), since, || {
            self.matching(name, labels, "firing")
        })
    }

    fn cleared(&self, name: &str, labels: &[(&str, &str)], since: Instant) -> Duration {
        self.wait(&format!("{name} {labels:?} cleared"), since, || {
            !self.matching(name, labels, "")
        })
    }

    fn quiet(&self, name: &str) {
        assert!(
            !self.matching(name, &[], ""),
            "{name} active before its fault: {:?}",
            self.prom.alerts()
        );
    }
}

/// Runs `fault`, waits for each alert of `alerts` to fire, runs `recover`
/// (also when the wait failed: other tests need the servers) and waits
/// for them to clear. Both get `state` (the replicas).
fn scenario<S>(
    w: &Watch,
    seen: &mut Vec<Seen>,
    alerts: &[(&str, Vec<(&str, String)>)],
    state: &mut S,
    fault: impl FnOnce(&mut S),
    recover: impl FnOnce(&mut S),
) {
    for (name, _) in alerts {
        w.quiet(name);
    }
    let t0 = Instant::now();
    fault(state);
    let fired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        alerts
            .iter()
            .map(|(name, labels)| {
                let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                w.firing(name, &l, t0)
            })
            .collect::<Vec<_>>()
    }));
    let t1 = Instant::now();
    recover(state);
    let fired = fired.unwrap_or_else(|p| std::panic::resume_unwind(p));
    for ((name, labels), fired) in alerts.iter().zip(fired) {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cleared = w.cleared(name, &l, t1);
        seen.push(Seen {
            what: if labels.is_empty() {
                name.to_string()
            } else {
                format!("{name}{labels:?}")
            },
            fired,
            cleared,
        });
    }
}

fn alerts_fire_and_clear(env: &Env) {
    let c = env.cluster();
    let hex = random_hex(3);
    let root = c.path().join(format!("prom-{hex}"));
    // A finished snapshot, so that the backup metrics (and panel) exist.
    let backups = root.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(backups.join("etcd-1.db"), b"snapshot").unwrap();
    std::fs::write(backups.join("etcd-1.db.sha256"), b"-").unwrap();
    let harness = "[security]\nreveal_budget = 1000000\n";
    // The first admin (alice) is this uid, for `ctl` on a replica's socket.
    let me = vaultgram::transport::socket::user_name(unsafe { libc::getuid() }).unwrap();
    let mut g = Group::start_with(env, "prom", 2, false, |t| {
        assert!(t.contains(harness), "the harness config changed shape");
        let t = t.replacen(
            "role = \"admin\"\n",
            &format!("role = \"admin\"\nunix_user = \"{me}\"\n"),
            1,
        );
        format!(
            "{}\n[backup]\ndir = \"{}\"\n",
            t.replace(harness, "[security]\nreveal_budget = 2\n"),
            backups.display()
        )
    });
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let targets: Vec<String> = (0..2)
        .map(|i| format!("127.0.0.1:{}", g.node(i).http))
        .collect();
    let rules = std::fs::read_to_string(repo_root().join("monitoring/rules.yml")).unwrap();
    let prom = Prometheus::start(
        &root.join("prometheus"),
        &targets,
        &scaled(&rules).0,
        SCRAPE,
    );
    let started = unix_now();
    let w = Watch { prom: &prom };
    w.wait("both replicas scraped, one leading", Instant::now(), || {
        prom.query("up{job=\"vaultgram\"} == 1").len() == 2
            && prom.query("sum(vaultgram_leader) == 1").len() == 1
    });
    let errors = prom.rule_errors();
    assert!(
        errors.is_empty(),
        "rules that cannot be evaluated: {errors:?}"
    );
    let mut seen = Vec::new();

    // 1. Vault sealed, then unsealed.
    scenario(
        &w,
        &mut seen,
        &[(
            "VaultgramVaultUnavailable",
            vec![("dependency", "vault".into())],
        )],
        &mut g,
        |_| {
            let (code, body) = c
                .vault_api(Method::PUT, "sys/seal", Some(&c.root_token), None)
                .unwrap();
            assert!((200..300).contains(&code), "seal: {code} {body}");
        },
        |_| c.unseal(),
    );

    // 2. One etcd member of three stopped, then started.
    let member_label = c.etcd_endpoints()[2].clone();
    scenario(
        &w,
        &mut seen,
        &[
            ("VaultgramEtcdMemberDown", vec![("member", member_label)]),
            ("VaultgramEtcdQuorumAtRisk", vec![]),
        ],
        &mut g,
        |_| c.stop_etcd_member(2),
        |_| c.start_etcd_member(2),
    );

    // 3. The leader killed (SIGKILL); the other replica takes over; the
    //    killed one is started again.
    let instance = targets[leader].clone();
    scenario(
        &w,
        &mut seen,
        &[("VaultgramDown", vec![("instance", instance)])],
        &mut g,
        |g| {
            g.kill(leader);
        },
        |g| g.restart(leader),
    );
    w.wait("one leader again", Instant::now(), || {
        prom.query("sum(vaultgram_leader) == 1").len() == 1
    });

    // 4. An operator over the reveal budget (2): the third read is refused.
    let path = format!("secret/prom-{hex}");
    // Written with the root token: a secret never goes on a command line.
    let (code, body) = c
        .vault_api(
            Method::POST,
            &format!("secret/data/prom-{hex}"),
            Some(&c.root_token),
            Some(serde_json::json!({"data": {"v": "x"}})),
        )
        .unwrap();
    assert!((200..300).contains(&code), "{code} {body}");
    let sock = g.socket(&format!("n{}", 1 - leader));
    scenario(
        &w,
        &mut seen,
        &[("VaultgramRevealBudgetExceeded", vec![])],
        &mut g,
        |_| {
            for i in 0..3 {
                let v = ctl_json(&sock, &["/kv", "get", &path]);
                if i < 2 {
                    assert!(v["error"].is_null(), "read {i}: {v}");
                } else {
                    let m = v["error"]["message"].as_str().unwrap_or_default();
                    assert!(m.contains("reveal budget exhausted"), "{v}");
                }
            }
        },
        |_| {},
    );

    for s in &seen {
        eprintln!(
            "monitoring: {} firing {:.1} s after the fault, cleared {:.1} s after recovery",
            s.what,
            s.fired.as_secs_f64(),
            s.cleared.as_secs_f64()
        );
    }

    // Every dashboard query returns data over the scenario.
    let panels = dashboard_queries(&repo_root().join("monitoring/dashboard.json"));
    let end = unix_now();
    let mut empty = Vec::new();
    for (title, expr) in &panels {
        let q = expr.replace("$__rate_interval", "10s");
        let r = prom.query_range(&q, started, end, Duration::from_secs(2));
        let points: usize = r
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum();
        if points == 0 {
            empty.push(format!("{title}: {q}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n  {}",
        empty.join("\n  ")
    );
    let titles: std::collections::BTreeSet<&str> = panels.iter().map(|(t, _)| t.as_str()).collect();
    eprintln!(
        "monitoring: {} dashboard panels, {} queries: every one returned data",
        titles.len(),
        panels.len()
    );
}

/// Every (panel title, query) of the dashboard, rows excluded.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(!out.is_empty());
    out
}
