//! The failure suite: commands keep flowing (or fail cleanly, with the
//! right kind, in bounded time) while parts of the real cluster die, and
//! everything recovers when they come back. All `disruptive::` (they run
//! alone), all bounded in time, loopback only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use vaultgram::config::{AuthMethod, Config};
use vaultgram::dispatch::App;
use vaultgram::error::ErrorKind;
use vaultgram::leader::Elector;
use vaultgram::transport_kind::Transport;

use super::TestFn;
use crate::common::cluster::{random_hex, Cluster};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "disruptive::failure::etcd_member_killed_while_commands_flow",
        etcd_member_killed_while_commands_flow,
    ),
    (
        "disruptive::failure::quorum_lost_then_recovered",
        quorum_lost_then_recovered,
    ),
    (
        "disruptive::failure::openbao_sealed_and_unsealed_under_load",
        openbao_sealed_and_unsealed_under_load,
    ),
    (
        "disruptive::failure::broker_token_revoked_under_load",
        broker_token_revoked_under_load,
    ),
    (
        "disruptive::failure::canary_scenario_leaves_no_trace",
        canary_scenario_leaves_no_trace,
    ),
];

/// One command's outcome: when it finished, how long it took, the error
/// kind if it failed.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    took: Duration,
    error: Option<ErrorKind>,
    // Read through `Debug` in failure messages.
    #[allow(dead_code)]
    message: Option<String>,
}

/// `workers` tasks dispatching `lines` round-robin as alice until `stop`.
fn load(
    env: &Env,
    app: &Arc<App>,
    workers: usize,
    lines: &'static [&'static str],
    stop: &Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Outcome>>>, Vec<tokio::task::JoinHandle<()>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let handles = (0..workers)
        .map(|w| {
            let app = app.clone();
            let out = out.clone();
            let stop = stop.clone();
            env.rt.spawn(async move {
                let op = app.cfg.operator_by_name("alice").unwrap().clone();
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    let line = lines[i % lines.len()];
                    i += 1;
                    let t = Instant::now();
                    let r = app
                        .dispatch(Some(&op), "alice", Transport::Console, line)
                        .await
                        .expect("an operator always gets a reply");
                    let (error, message) = match r {
                        Ok(_) => (None, None),
                        Err(e) => (Some(e.kind), Some(e.message)),
                    };
                    out.lock().unwrap().push(Outcome {
                        at: Instant::now(),
                        took: t.elapsed(),
                        error,
                        message,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    (out, handles)
}

fn finish(env: &Env, stop: &Arc<AtomicBool>, handles: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    env.rt.block_on(async {
        for h in handles {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("a worker hung")
                .unwrap();
        }
    });
}

fn start_app(env: &Env, cfg: Config) -> Arc<App> {
    env.rt.block_on(App::start(cfg)).expect("app")
}

fn kill_etcd_member(c: &Cluster, i: usize) {
    if let Some(mut p) = c.etcd[i].proc.lock().unwrap().take() {
        p.kill();
    }
}

/// kill -9 of one etcd member while commands that read and write etcd
/// flow: the client fails over to the other members, no command fails.
fn etcd_member_killed_while_commands_flow(env: &Env) {
    let c = env.cluster();
    let app = start_app(env, env.config());
    // As `run` does: reveals reserved in blocks, so that most of them cost
    // no etcd write (a write caught by the election waits for its end).
    app.security.reserve_ahead();
    let stop = Arc::new(AtomicBool::new(false));
    // /pending reads etcd, every command writes an audit record there.
    const LINES: &[&str] = &["/kv get secret/telegram", "/pending", "/whoami"];
    let (out, handles) = load(env, &app, 4, LINES, &stop);
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    kill_etcd_member(c, 0);
    std::thread::sleep(Duration::from_secs(4));
    c.start_etcd_member(0);
    c.wait_etcd_healthy(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    finish(env, &stop, handles);
    env.rt.block_on(app.audit.flush());
    let out = out.lock().unwrap();
    let during = out
        .iter()
        .filter(|o| o.at > killed_at && o.at < killed_at + Duration::from_secs(4))
        .count();
    let failed: Vec<&Outcome> = out.iter().filter(|o| o.error.is_some()).collect();
    let slowest = out.iter().map(|o| o.took).max().unwrap_or_default();
    eprintln!(
        "etcd member killed: {} commands, {during} while the member was down, {} failed, slowest {} ms",
        out.len(),
        failed.len(),
        slowest.as_millis()
    );
    assert!(
        during >= 20,
        "too few commands while the member was down: {during}"
    );
    assert!(failed.is_empty(), "failed commands: {failed:?}");
}

/// Two of three members down: commands that need etcd fail with
/// `unavailable` in bounded time, Vault-only commands still work, the
/// leader fences itself; with quorum back, everything works and a leader
/// is elected again.
fn quorum_lost_then_recovered(env: &Env) {
    let c = env.cluster();
    let mut cfg = env.config();
    cfg.etcd.prefix = format!("/vaultgram/q-{}/", random_hex(4));
    cfg.etcd.lease_ttl_secs = 3;
    cfg.etcd.request_timeout_secs = 2;
    let app = start_app(env, cfg.clone());
    let alice = cfg.operator_by_name("alice").unwrap().clone();
    let elector = Elector::new(app.etcd.clone(), &cfg.etcd, "quorum-node".into());
    let never = CancellationToken::new();
    let term = env.rt.block_on(elector.campaign(&never)).unwrap();
    let dispatch = |line: &str| {
        let t = Instant::now();
        let r = env
            .rt
            .block_on(app.dispatch(Some(&alice), "alice", Transport::Console, line))
            .unwrap();
        (r.err().map(|e| e.kind), t.elapsed())
    };
    assert_eq!(dispatch("/pending").0, None);
    let lost_at = Instant::now();
    let outage = c.etcd_outage(&[1, 2]);
    // The leader cannot renew its lease: it fences itself within the TTL.
    env.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(4), term.lost().cancelled())
            .await
            .expect("the leader did not fence itself without quorum");
    });
    let fenced_after = lost_at.elapsed();
    let (kind, took) = dispatch("/pending");
    assert_eq!(
        kind,
        Some(ErrorKind::Unavailable),
        "/pending without quorum"
    );
    let (kv_kind, _) = dispatch("/kv get secret/telegram");
    outage.end();
    assert!(took < Duration::from_secs(8), "/pending took {took:?}");
    // Fail closed, on both servers: a secret is not shown while its reveal
    // cannot be counted (nor a new token recorded) in etcd — and HashiCorp
    // Vault keeps everything in etcd anyway. A clean `unavailable`.
    assert_eq!(
        kv_kind,
        Some(ErrorKind::Unavailable),
        "/kv get without etcd quorum ({})",
        c.server.name()
    );
    let back = Instant::now();
    let deadline = back + Duration::from_secs(20);
    loop {
        if dispatch("/pending").0.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "/pending never recovered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let recovered = back.elapsed();
    env.rt.block_on(elector.resign(term));
    let again = env.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), elector.campaign(&never))
            .await
            .expect("no leader after quorum returned")
            .unwrap()
    });
    env.rt.block_on(elector.resign(again));
    env.rt.block_on(app.audit.flush());
    eprintln!(
        "quorum lost: leader fenced after {} ms (lease 3 s); /pending failed `unavailable` in {} ms; commands back {} ms after etcd was healthy",
        fenced_after.as_millis(),
        took.as_millis(),
        recovered.as_millis()
    );
}

fn root_call(c: &Cluster, method: Method, path: &str, body: Option<Value>) -> Value {
    c.root_call(method, path, body)
}

/// OpenBao sealed for a few seconds under load: every failure is
/// `unavailable` and returns within the request timeout; after the unseal
/// every command succeeds again.
fn openbao_sealed_and_unsealed_under_load(env: &Env) {
    let c = env.cluster();
    let app = start_app(env, env.config());
    let stop = Arc::new(AtomicBool::new(false));
    const LINES: &[&str] = &["/kv get secret/telegram", "/get_keys"];
    let (out, handles) = load(env, &app, 4, LINES, &stop);
    std::thread::sleep(Duration::from_secs(2));
    let sealed_at = Instant::now();
    root_call(c, Method::PUT, "sys/seal", None);
    std::thread::sleep(Duration::from_secs(3));
    c.unseal();
    let unsealed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    finish(env, &stop, handles);
    let out = out.lock().unwrap();
    let failed: Vec<&Outcome> = out.iter().filter(|o| o.error.is_some()).collect();
    for f in &failed {
        assert_eq!(f.error, Some(ErrorKind::Unavailable), "{f:?}");
        assert!(f.took < Duration::from_secs(11), "{f:?}");
        assert!(f.at > sealed_at, "a failure before the seal: {f:?}");
    }
    let last_failure = failed.iter().map(|f| f.at).max();
    let recovered_after = last_failure.map(|l| l.saturating_duration_since(unsealed_at));
    let after = out
        .iter()
        .filter(|o| o.at > unsealed_at + Duration::from_secs(2))
        .collect::<Vec<_>>();
    assert!(after.len() >= 10, "too few commands after the unseal");
    assert!(
        after.iter().all(|o| o.error.is_none()),
        "failures more than 2 s after the unseal"
    );
    assert!(!failed.is_empty(), "the seal was not noticed at all");
    eprintln!(
        "sealed under load: {} commands, {} failed (all `unavailable`, slowest {} ms), last failure {} ms after the unseal",
        out.len(),
        failed.len(),
        failed.iter().map(|f| f.took).max().unwrap_or_default().as_millis(),
        recovered_after.unwrap_or_default().as_millis()
    );
}

/// The broker's own token revoked from outside while one operator's
/// commands flow: the broker logs in again at once, at most the command
/// in flight fails.
fn broker_token_revoked_under_load(env: &Env) {
    let c = env.cluster();
    // A re-login needs credentials that can be used again: an AppRole
    // role with the broker's policy and a reusable secret_id.
    let role = format!("vaultgram-revoke-{}", random_hex(3));
    root_call(
        c,
        Method::POST,
        &format!("auth/approle/role/{role}"),
        Some(json!({
            "token_policies": ["vaultgram-broker"],
            "token_type": "service",
            "secret_id_num_uses": 0,
            "secret_id_ttl": "1h",
            "token_ttl": "1h",
        })),
    );
    let role_id = root_call(
        c,
        Method::GET,
        &format!("auth/approle/role/{role}/role-id"),
        None,
    )["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    let secret_id = root_call(
        c,
        Method::POST,
        &format!("auth/approle/role/{role}/secret-id"),
        Some(json!({"num_uses": 0})),
    )["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    crate::common::canary::register(&secret_id);
    let dir = c.path().join(format!("revoke-{}", random_hex(3)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("role_id"), &role_id).unwrap();
    std::fs::write(dir.join("secret_id"), &secret_id).unwrap();
    let mut cfg = env.config();
    cfg.vault.auth.method = AuthMethod::Approle;
    cfg.vault.auth.role = Some(role.clone());
    cfg.vault.auth.role_id_file = Some(dir.join("role_id"));
    cfg.vault.auth.secret_id_file = Some(dir.join("secret_id"));
    cfg.vault.auth.secret_id_wrapped = false;
    cfg.vault.auth.token = None;
    cfg.vault.auth.token_file = None;
    let app = start_app(env, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    const LINES: &[&str] = &["/kv get secret/telegram"];
    // One operator, one command at a time: "the command in flight" is one.
    let (out, handles) = load(env, &app, 1, LINES, &stop);
    std::thread::sleep(Duration::from_secs(2));
    let accessor = env
        .rt
        .block_on(app.broker.current().lookup_self())
        .unwrap()
        .accessor;
    let relogins = app.broker.status().relogins;
    let revoked_at = Instant::now();
    root_call(
        c,
        Method::POST,
        "auth/token/revoke-accessor",
        Some(json!({"accessor": accessor})),
    );
    std::thread::sleep(Duration::from_secs(3));
    finish(env, &stop, handles);
    let out = out.lock().unwrap();
    let failed: Vec<&Outcome> = out.iter().filter(|o| o.error.is_some()).collect();
    let after = out.iter().filter(|o| o.at > revoked_at).count();
    eprintln!(
        "broker token revoked: {} commands after the revocation, {} failed, re-logins {} → {}",
        after,
        failed.len(),
        relogins,
        app.broker.status().relogins
    );
    assert!(after >= 20, "too few commands after the revocation");
    assert!(
        failed.len() <= 1,
        "more than the in-flight command failed: {failed:?}"
    );
    assert!(app.broker.status().relogins > relogins, "no re-login");
    // The token in use now is a different, valid one.
    let now = env.rt.block_on(app.broker.current().lookup_self()).unwrap();
    assert_ne!(now.accessor, accessor);
}

/// A whole scenario with planted values through `run` (socket and the
/// Telegram path), then a search of everything the broker left behind:
/// its log, the audit trail in etcd, an etcd snapshot, `/metrics`. The
/// chat itself (the stand-in's outbox) is the only place a value may be.
fn canary_scenario_leaves_no_trace(env: &Env) {
    use crate::common::canary;
    let c = env.cluster();
    let port = crate::common::process::free_port();
    let prefix = format!("/vaultgram/canary-{}/", random_hex(4));
    let chat_dir = c.path().join(format!("canary-chat-{}", random_hex(3)));
    std::fs::create_dir_all(&chat_dir).unwrap();
    // The stand-in's session (fresh: offset 0), as `vaultgram login`
    // stores it, before `run` starts and loads it.
    let login = |config: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vaultgram"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .arg("--config")
            .arg(config)
            .arg("login")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "login: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let broker = super::socket::Broker::start_with_before(
        env,
        "canary",
        |text| {
            let text = super::socket::on_port(&text, port, Some(&prefix));
            format!(
            "{text}\n[telegram]\nbackend = \"file\"\nfile_dir = \"{}\"\nsession_save_secs = 1\nsecret_reply_ttl_secs = 1\n",
                chat_dir.display()
            )
        },
        login,
    );
    let pw = canary::plant("kvpw");
    let transit = canary::plant("transit");
    let panel_pw = canary::plant("panelpw");
    let chat_pw = canary::plant("chatpw");
    let base = format!("secret/canary-{}", random_hex(3));
    // On stdin: ctl refuses a secret in its argv.
    let ok = |args: &[&str]| {
        let o = broker.ctl_line(false, &args.join(" "));
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&[
        "/kv",
        "put",
        &format!("{base}/a"),
        &format!("password={pw}"),
    ]);
    assert!(ok(&["/kv", "get", &format!("{base}/a")]).contains(&pw));
    ok(&[
        "/kv",
        "patch",
        &format!("{base}/a"),
        &format!("other={pw}x"),
    ]);
    let ct = ok(&["/transit", "encrypt", "canary", &transit]);
    let ct = ct
        .split_whitespace()
        .find(|w| w.starts_with("vault:v"))
        .unwrap()
        .to_string();
    assert!(ok(&["/transit", "decrypt", "canary", &ct]).contains(&transit));
    let panel = format!("cp{}", random_hex(3));
    ok(&[
        "/panel",
        "add",
        &panel,
        "marzban",
        "https://panel.example.com",
        "admin",
        &panel_pw,
    ]);
    let agent = format!("ca{}", random_hex(3));
    let tok = ok(&["/agent", "add", &agent]);
    for w in tok.split_whitespace().filter(|w| w.len() >= 40) {
        canary::register(w);
    }
    let mt = ok(&[
        "/mtproto",
        "issue",
        &format!("{}", 900_000 + (std::process::id() % 1000)),
    ]);
    for w in mt
        .split(|ch: char| !ch.is_ascii_hexdigit())
        .filter(|w| w.len() == 32)
    {
        canary::register(w);
    }
    // Some failures too: a bad line that carries a value, a denied read.
    let _ = broker.ctl_line(false, &format!("/kv put {base}/../x password={pw}"));
    let _ = broker.ctl_line(false, &format!("/kv pt {base}/b password={pw}"));
    // The Telegram path: a put with a value and a secret reply.
    let wait_leader = Instant::now();
    while !std::fs::read_to_string(chat_dir.join("outbox.jsonl"))
        .unwrap_or_default()
        .contains("\"start\"")
    {
        assert!(
            wait_leader.elapsed() < Duration::from_secs(20),
            "no Telegram client:\n{}",
            broker.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut inbox = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(chat_dir.join("inbox.jsonl"))
        .unwrap();
    use std::io::Write;
    for (id, line) in [
        (1, format!("/kv put {base}/chat password={chat_pw}")),
        (2, format!("/kv get {base}/chat")),
    ] {
        writeln!(
            inbox,
            "{}",
            json!({"id": id, "chat": 111111, "sender": 111111, "text": line})
        )
        .unwrap();
    }
    let outbox = chat_dir.join("outbox.jsonl");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = std::fs::read_to_string(&outbox).unwrap_or_default();
        if o.contains(&chat_pw) && o.matches("\"delete\"").count() >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "chat flow incomplete:\n{o}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // /metrics, then stop the broker (its log is complete then).
    let metrics = c
        .http()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("/metrics");
    assert!(
        metrics.contains("vaultgram_commands_total"),
        "{metrics:.400}"
    );
    let mut broker = broker;
    broker.proc.terminate(Duration::from_secs(10));
    let log = broker.proc.log_text();
    // The audit trail and a snapshot of all of etcd.
    let audit = c.etcdctl(&["get", "--prefix", &format!("{prefix}audit/")], true);
    assert!(audit.status.success());
    let audit = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(
        audit.contains("kv put") && audit.contains("transit encrypt"),
        "{audit:.300}"
    );
    let dump = c.etcdctl(&["get", "--prefix", ""], true);
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    let mut places = vec![
        ("run log", log),
        ("audit trail", audit),
        ("etcd keys", dump),
        ("metrics", metrics),
    ];
    places.push((
        "etcd snapshot",
        String::from_utf8_lossy(&super::telegram::etcd_snapshot(env, &chat_dir)).into_owned(),
    ));
    let values = canary::all();
    let mut hits = Vec::new();
    for (name, text) in &places {
        for v in &values {
            if text.contains(v.as_str()) {
                hits.push(format!("{name}: {v:.12}…"));
            }
        }
    }
    eprintln!(
        "canary scenario: {} values searched in {} places ({} bytes): {} hits",
        values.len(),
        places.len(),
        places.iter().map(|(_, t)| t.len()).sum::<usize>(),
        hits.len()
    );
    assert!(hits.is_empty(), "planted values found: {hits:?}");
}
