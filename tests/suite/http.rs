//! `vaultgram run`'s HTTP endpoints: `/metrics` parses as Prometheus text
//! and never carries a path or a value; `/readyz` follows Vault's seal
//! while `/healthz` stays up.

use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use reqwest::Method;

use super::socket::{on_port, Broker};
use super::TestFn;
use crate::common::cluster::random_hex;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "http::metrics_parse_as_prometheus_text",
        metrics_parse_as_prometheus_text,
    ),
    ("http::taken_port_fails_run", taken_port_fails_run),
    (
        "http::readyz_and_metrics_report_leadership",
        readyz_and_metrics_report_leadership,
    ),
    (
        "disruptive::http::readyz_follows_the_vault_seal",
        readyz_follows_the_vault_seal,
    ),
];

/// A broker with its HTTP endpoints on a free port and no election.
/// A broker with its HTTP server on a free port; with `prefix`, its etcd
/// state (approvals, audit) apart from the other tests'.
fn start(env: &Env, name: &str, prefix: Option<&str>) -> (Broker, String) {
    let port = crate::common::process::free_port();
    let broker = Broker::start_with(env, name, |text| {
        format!(
            "{}\n[telegram]\nenabled = false\n",
            on_port(&text, port, prefix)
        )
    });
    let base = format!("http://127.0.0.1:{port}");
    // The listener is bound before login; answers start after it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = get(&format!("{base}/healthz")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never answered:\n{}",
            broker.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (broker, base)
}

fn get(url: &str) -> Result<(u16, String), reqwest::Error> {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(url)
        .send()?;
    let code = r.status().as_u16();
    Ok((code, r.text()?))
}

fn counter(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a scalar: {other:?}"),
    }
}

fn metrics_parse_as_prometheus_text(env: &Env) {
    // Its own prefix: the pending-approvals gauge counts this broker's
    // requests only (on the shared one, other tests' requests showed up:
    // 7 in a CI run).
    let prefix = format!("/vaultgram/http-metrics-{}/", random_hex(4));
    let (broker, base) = start(env, "http-metrics", Some(&prefix));
    let canary = crate::common::canary::plant("http-metrics");
    let path = format!("secret/http-metrics-{}", random_hex(4));
    let ok = |args: &[&str]| {
        let out = broker.ctl(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["/whoami"]);
    let out = broker.ctl_line(false, &format!("/kv put {path} password={canary}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&["/kv", "get", &path]);
    // A failure and an unparsable line are counted too, under bounded labels.
    assert!(!broker
        .ctl(&["/kv", "get", &format!("{path}-none")])
        .status
        .success());
    assert!(!broker
        .ctl_line(false, &format!("/no-such-command {canary}"))
        .status
        .success());

    let (code, text) = get(&format!("{base}/metrics")).unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(
        !text.contains(&canary),
        "the canary is in /metrics:\n{text}"
    );
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let samples = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name || s.metric == format!("{name}_total"))
            .collect::<Vec<_>>()
    };

    // No label value is a path, a value or free text.
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                !v.contains("secret/") && !v.contains(&canary) && !v.contains("http-metrics"),
                "label {k}={v:?} on {}",
                s.metric
            );
        }
    }

    let commands = samples("vaultgram_commands");
    let find = |command: &str, result: &str| {
        commands
            .iter()
            .filter(|s| {
                s.labels.get("command") == Some(command)
                    && s.labels.get("result") == Some(result)
                    && s.labels.get("transport") == Some("socket")
            })
            .map(|s| counter(&s.value))
            .sum::<f64>()
    };
    assert!(find("whoami", "ok") >= 1.0, "{text}");
    assert!(find("kv put", "ok") >= 1.0, "{text}");
    assert!(find("kv get", "not_found") >= 1.0, "{text}");
    assert!(find("-", "invalid") >= 1.0, "{text}");

    // The histogram: buckets, sum and count for a KV read and a child token.
    for op in ["kv_read", "kv_write", "token_create"] {
        for suffix in ["_bucket", "_sum", "_count"] {
            let name = format!("vaultgram_vault_request_duration_seconds{suffix}{{");
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&name) && l.contains(&format!("operation=\"{op}\""))),
                "{op}{suffix} missing:\n{text}"
            );
        }
    }
    let hist = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric
                .starts_with("vaultgram_vault_request_duration_seconds")
                && s.labels.get("operation") == Some("kv_read")
                && matches!(s.value, Value::Histogram(_))
        })
        .unwrap_or_else(|| panic!("kv_read histogram not parsed:\n{text}"));
    let Value::Histogram(buckets) = &hist.value else {
        unreachable!()
    };
    assert!(buckets.iter().any(|b| b.count >= 1.0), "{buckets:?}");
    for w in buckets.windows(2) {
        assert!(
            w[0].count <= w[1].count,
            "buckets not cumulative: {buckets:?}"
        );
    }

    // Scalars present with sane values (no election in this broker).
    let one = |name: &str| {
        let s = samples(name);
        assert_eq!(s.len(), 1, "{name}:\n{text}");
        counter(&s[0].value)
    };
    assert_eq!(one("vaultgram_leader"), 0.0);
    assert_eq!(one("vaultgram_leader_transitions"), 0.0);
    assert_eq!(one("vaultgram_telegram_connected"), 0.0);
    // A fresh broker on a healthy cluster: its hour-long token not yet
    // renewed, never re-logged in, no etcd call failed, no request filed
    // under its own prefix.
    assert_eq!(one("vaultgram_token_renewals"), 0.0);
    assert_eq!(one("vaultgram_token_relogins"), 0.0);
    assert_eq!(one("vaultgram_etcd_errors"), 0.0);
    assert_eq!(one("vaultgram_approvals_pending"), 0.0);
    // Every security series exists at 0 before its first event: an alert
    // on increase() sees the first suspension (monitoring/rules.yml).
    let kinds: Vec<String> = samples("vaultgram_security_events")
        .iter()
        .filter(|s| counter(&s.value) == 0.0)
        .filter_map(|s| s.labels.get("kind").map(str::to_string))
        .collect();
    for kind in vaultgram::security::Event::ALL.map(|e| e.as_str()) {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing:\n{text}");
    }
    assert_eq!(dependency_up(&text), (Some(1), Some(1)), "{text}");

    // The deployment around the broker: every etcd member of the config up,
    // the configured certificates' expiry,
    // nothing undeliverable, no failed renewal, no backup.dir (both 0).
    let c = env.cluster();
    let members = samples("vaultgram_etcd_member_up");
    for ep in c.etcd_endpoints() {
        let m = members
            .iter()
            .find(|s| s.labels.get("member") == Some(ep.as_str()))
            .unwrap_or_else(|| panic!("member {ep} missing:\n{text}"));
        assert_eq!(counter(&m.value), 1.0, "{ep}:\n{text}");
    }
    assert_eq!(members.len(), c.etcd_endpoints().len(), "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let certs = samples("vaultgram_certificate_not_after_timestamp_seconds");
    assert!(!certs.is_empty(), "{text}");
    for s in &certs {
        let left_days = (counter(&s.value) - now) / 86_400.0;
        // tests/common/pki.rs: the CA for 365 days, leaves for 30.
        let want = if s.labels.get("certificate") == Some("etcd.cert") {
            29.0..=31.0
        } else {
            364.0..=366.0
        };
        assert!(
            want.contains(&left_days),
            "{:?}: {left_days} days left",
            s.labels
        );
    }
    assert!(
        certs
            .iter()
            .any(|s| s.labels.get("certificate") == Some("etcd.cert")),
        "{text}"
    );
    assert_eq!(one("vaultgram_token_renewal_failures"), 0.0);
    assert_eq!(one("vaultgram_notices_dropped"), 0.0);
    assert_eq!(one("vaultgram_operators_unreachable"), 0.0);
    assert_eq!(one("vaultgram_backup_newest_timestamp_seconds"), 0.0);
    assert_eq!(one("vaultgram_backup_max_age_seconds"), 0.0);
}

/// `vaultgram_dependency_up` for (vault, etcd) in a scrape.
fn dependency_up(text: &str) -> (Option<u8>, Option<u8>) {
    let of = |dep: &str| {
        let head = format!("vaultgram_dependency_up{{dependency=\"{dep}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&head))
            .and_then(|v| v.trim().parse().ok())
    };
    (of("vault"), of("etcd"))
}

/// With the election on (its own prefix, the grammers client, and no
/// grammers session in Vault — at most the file stand-in's, which grammers
/// refuses before any network call): `/readyz` says `leading`, `/metrics`
/// has the leader gauge at 1 and one transition; the client is not
/// connected.
fn readyz_and_metrics_report_leadership(env: &Env) {
    let port = crate::common::process::free_port();
    let prefix = format!("/vaultgram/http-{}/", random_hex(4));
    let broker = Broker::start_with(env, "http-leader", |text| {
        format!(
            "{}\n[telegram]\nbackend = \"grammers\"\n",
            on_port(&text, port, Some(&prefix))
        )
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        if let Ok((200, body)) = get(&format!("{base}/readyz")) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if v["leading"] == true {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never leading:\n{}",
            broker.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["leader"]["leading"], true, "{v}");
    assert_eq!(v["leader"]["terms"], 1, "{v}");
    assert_eq!(v["telegram"]["enabled"], true, "{v}");
    assert_eq!(v["telegram"]["connected"], false, "{v}");
    let (_, text) = get(&format!("{base}/metrics")).unwrap();
    for line in [
        "vaultgram_leader 1",
        "vaultgram_leader_transitions_total 1",
        "vaultgram_telegram_connected 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
}

/// A port someone else holds fails `run` at once, naming the key.
fn taken_port_fails_run(env: &Env) {
    let c = env.cluster();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&c.config_path)
        .unwrap()
        .replace(
            &format!("socket = \"{}/vaultgram.sock\"", c.path().display()),
            &format!("socket = \"{}/s.sock\"", dir.path().display()),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    let config = dir.path().join("taken.toml");
    std::fs::write(&config, format!("{text}\n[telegram]\nenabled = false\n")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vaultgram"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run kept running on a taken http.listen port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("config key `http.listen`") && err.contains(&port.to_string()),
        "{err}"
    );
    drop(held);
}

fn readyz_follows_the_vault_seal(env: &Env) {
    let c = env.cluster();
    let (broker, base) = start(env, "http-readyz", None);
    let readyz = || get(&format!("{base}/readyz")).expect("/readyz answers");
    let healthz = || {
        let (code, body) = get(&format!("{base}/healthz")).expect("/healthz answers");
        assert_eq!((code, body.as_str()), (200, "ok"));
    };
    let json = |body: &str| -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let wait_for = |want: u16, within: Duration| -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let (code, body) = readyz();
            healthz();
            if code == want {
                return json(&body);
            }
            assert!(
                Instant::now() < deadline,
                "/readyz still {code}, want {want}: {body}\n{}",
                broker.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let v = wait_for(200, Duration::from_secs(10));
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["leading"], false, "{v}");
    assert_eq!(v["telegram"]["enabled"], false, "{v}");
    assert!(v["checks"]["vault"]["ok"] == true && v["checks"]["etcd"]["ok"] == true);

    let (code, body) = c
        .vault_api(Method::PUT, "sys/seal", Some(&c.root_token), None)
        .unwrap();
    assert!((200..300).contains(&code), "seal: {code} {body}");
    let sealed_at = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let v = wait_for(503, Duration::from_secs(5));
        assert_eq!(v["ready"], false, "{v}");
        assert_eq!(v["failed"], serde_json::json!(["vault"]), "{v}");
        assert_eq!(v["checks"]["vault"]["ok"], false, "{v}");
        assert!(v["checks"]["vault"]["error"].is_string(), "{v}");
        assert_eq!(v["checks"]["etcd"]["ok"], true, "{v}");
        let took = sealed_at.elapsed();
        // The metric the VaultgramVaultUnavailable alert reads says it too.
        let (_, text) = get(&format!("{base}/metrics")).unwrap();
        assert_eq!(dependency_up(&text), (Some(0), Some(1)), "{text}");
        took
    }));
    // Unseal even when the sealed half failed: other tests need Vault.
    c.unseal();
    let took = result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let v = wait_for(200, Duration::from_secs(10));
    assert_eq!(v["failed"], serde_json::json!([]), "{v}");
    healthz();
    // Past the checks' cache: the next scrape checks again.
    std::thread::sleep(vaultgram::http::READY_CACHE);
    let (_, text) = get(&format!("{base}/metrics")).unwrap();
    assert_eq!(dependency_up(&text), (Some(1), Some(1)), "{text}");
}
