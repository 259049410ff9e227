//! `[security]` (issue 14) against the real TOTP engine and etcd: step-up
//! unlock seen by a second process, lock and expiry; suspension reaching a
//! running `run` replica at once and revoking the operator's tokens in
//! Vault; resume behind a second admin's TOTP; auto-suspension after wrong
//! codes; the reveal budget with its alert in the audit trail and in the
//! Telegram outbox (the file stand-in).
//!
//! Each test has its own etcd prefix and its own operator, so suspending
//! or unlocking never touches another test's state or tokens. The budget
//! test is `disruptive::` because its Telegram leader uses the one session
//! path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::socket::Broker;
use super::TestFn;
use crate::common::cluster::random_hex;
use crate::common::console::{console_with_config, ConsoleRun};
use crate::common::totp::{create_totp_key, fresh_code, wrong_code, TotpKey};
use crate::common::{canary, Env};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "security::concurrent_reveals_are_all_counted",
        concurrent_reveals_are_all_counted,
    ),
    (
        "security::step_up_unlock_is_shared_and_ends",
        step_up_unlock_is_shared_and_ends,
    ),
    (
        "security::suspend_reaches_a_running_replica_and_revokes_tokens",
        suspend_reaches_a_running_replica_and_revokes_tokens,
    ),
    (
        "security::reveal_budget_blocks_never_exceed_the_budget",
        reveal_budget_blocks,
    ),
    (
        "disruptive::security::wrong_codes_suspend_and_the_budget_alerts",
        wrong_codes_suspend_and_the_budget_alerts,
    ),
    (
        "disruptive::security::suspensions_are_checked_from_memory_within_the_bound",
        suspensions_are_checked_from_memory_within_the_bound,
    ),
];

/// A test's own world: etcd prefix, one extra admin `name` with a TOTP
/// key, every harness operator with a TOTP key too (step-up needs one for
/// each), `[security]` as given and `extra` appended.
pub(super) struct World {
    pub(super) config: PathBuf,
    pub(super) prefix: String,
    pub(super) name: String,
    keys: std::collections::HashMap<String, TotpKey>,
    tail: String,
    /// `[http] listen` of a `run` with this config.
    pub(super) port: u16,
}

pub(super) fn world(env: &Env, tag: &str, security: &str, extra: &str) -> World {
    let c = env.cluster();
    let hex = random_hex(4);
    let name = format!("sec{hex}");
    let mut keys = std::collections::HashMap::new();
    for op in ["alice", "dave", "bob", "carol", name.as_str()] {
        keys.insert(
            op.to_string(),
            create_totp_key(env, &format!("{tag}-{hex}-{op}")),
        );
    }
    let w = World {
        config: c.path().join(format!("vaultgram-{tag}-{hex}.toml")),
        prefix: format!("/vaultgram/sec-{hex}/"),
        name,
        keys,
        tail: format!("\n[security]\n{security}\n{extra}"),
        port: crate::common::process::free_port(),
    };
    let text = w.transform(&std::fs::read_to_string(&c.config_path).unwrap());
    std::fs::write(&w.config, text).unwrap();
    w
}

impl World {
    /// The harness config text (or a `Broker`'s copy of it) made this
    /// world's. In a `Broker`'s copy the uid mapping moves from alice to
    /// this world's operator.
    pub(super) fn transform(&self, text: &str) -> String {
        let mut text = text.to_string();
        let me = vaultgram::transport::socket::user_name(unsafe { libc::getuid() }).unwrap();
        let mapping = format!("unix_user = \"{me}\"\n");
        let mapped = text.contains(&mapping);
        text = text.replacen(&mapping, "", 1);
        for op in ["alice", "dave", "bob", "carol"] {
            let from = format!("name = \"{op}\"\n");
            assert!(text.contains(&from), "harness config lists {op}");
            text = text.replace(
                &from,
                &format!("{from}totp_key = \"{}\"\n", self.keys[op].name),
            );
        }
        assert!(text.contains("prefix = \"/vaultgram/\""));
        text = text.replace(
            "prefix = \"/vaultgram/\"",
            &format!("prefix = \"{}\"", self.prefix),
        );
        let first = text.find("[[operators]]").expect("operators in the config");
        let id = 900_000_000 + u32::from_str_radix(&self.name[3..], 16).unwrap() % 99_999_999;
        text.insert_str(
            first,
            &format!(
                "[[operators]]\nname = \"{}\"\ntelegram_id = {id}\nrole = \"admin\"\ntotp_key = \"{}\"\n{}\n",
                self.name,
                self.keys[&self.name].name,
                if mapped { mapping.as_str() } else { "" }
            ),
        );
        // The harness's own [security] table gives way to this world's.
        let harness = "[security]\nreveal_budget = 1000000\n";
        assert!(text.contains(harness), "the harness config changed shape");
        text = text.replace(harness, "");
        let listen = "listen = \"127.0.0.1:0\"";
        assert!(text.contains(listen), "no [http] listen");
        text = text.replace(listen, &format!("listen = \"127.0.0.1:{}\"", self.port));
        text.push_str(&self.tail);
        text
    }

    pub(super) fn metrics(&self) -> String {
        reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .and_then(|r| r.text())
            .unwrap()
    }

    pub(super) fn broker(&self, env: &Env, tag: &str) -> Broker {
        Broker::start_with(env, &format!("{tag}-{}", self.name), |t| self.transform(&t))
    }
    pub(super) fn run(&self, env: &Env, op: &str, lines: &[&str]) -> ConsoleRun {
        console_with_config(env, &self.config, op, lines).one_per(lines)
    }
    pub(super) fn code(&self, op: &str) -> String {
        fresh_code(&self.keys[op])
    }
    pub(super) fn wrong(&self, op: &str) -> String {
        wrong_code(&self.keys[op])
    }
    /// The name of `op`'s TOTP key in Vault.
    pub(super) fn key_name(&self, op: &str) -> String {
        self.keys[op].name.clone()
    }
}

pub(super) fn assert_denied(r: &ConsoleRun, i: usize, needle: &str) {
    assert_eq!(r.err_kind(i), "denied", "{}", r.replies[i]);
    assert!(
        r.message(i).contains(needle),
        "{needle:?} not in {}",
        r.replies[i]
    );
}

/// A code never shows up where a person or a collector could read it: as
/// a word of its own (log timestamps carry digit runs, so only whole
/// tokens count).
pub(super) fn assert_no_code(hay: &str, code: &str, what: &str) {
    let hit = hay.split(|c: char| !c.is_ascii_digit()).any(|w| w == code);
    assert!(!hit, "TOTP code {code} found in {what}");
}

/// Every audit record's JSON under `prefix`.
pub(super) fn audit_records(env: &Env, prefix: &str) -> Vec<Value> {
    let out = env.cluster().etcdctl(
        &[
            "get",
            "--prefix",
            &format!("{prefix}audit/"),
            "--print-value-only",
        ],
        true,
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn step_up_unlock_is_shared_and_ends(env: &Env) {
    let w = world(
        env,
        "stepup",
        "step_up = \"secrets\"\nunlock_ttl_secs = 10\nunlock_max_failures = 3",
        "",
    );
    let op = w.name.as_str();
    // Locked: a secret is refused with the hint; a plain command is not.
    let wrong = w.wrong(op);
    let r = w.run(
        env,
        op,
        &[
            "/get_keys",
            "/whoami",
            "/health",
            &format!("/unlock {wrong}"),
        ],
    );
    assert_denied(&r, 0, "/unlock CODE");
    assert!(r.ok_text(1).contains(op));
    r.ok_text(2);
    assert_denied(&r, 3, "wrong code (1 of 3");
    // The right code unlocks this operator for every process.
    let code = w.code(op);
    let r = w.run(env, op, &[&format!("/unlock {code}")]);
    assert!(r.ok_text(0).contains("unlocked until"), "{}", r.replies[0]);
    for (i, reply) in r.replies.iter().enumerate() {
        assert_no_code(&reply.to_string(), &code, &format!("reply {i}"));
    }
    assert_no_code(&r.stderr, &code, "the console's log");
    let r = w.run(env, op, &["/get_keys", "/operator list"]);
    assert!(r.ok_text(0).contains("API_ID"), "{}", r.replies[0]);
    assert!(r.ok_text(1).contains("unlocked until"), "{}", r.replies[1]);
    // Another operator is still locked.
    let r = w.run(env, "dave", &["/get_keys"]);
    assert_denied(&r, 0, "/unlock CODE");
    // /lock ends it at once.
    let r = w.run(env, op, &["/lock", "/get_keys"]);
    r.ok_text(0);
    assert_denied(&r, 1, "/unlock CODE");
    // The window expires by itself (10 s).
    let code2 = w.code(op);
    let r = w.run(env, op, &[&format!("/unlock {code2}"), "/get_keys"]);
    r.ok_text(0);
    r.ok_text(1);
    let t = Instant::now();
    loop {
        let r = w.run(env, op, &["/get_keys"]);
        if r.replies[0]["ok"] == false {
            assert_denied(&r, 0, "/unlock CODE");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "still unlocked after 20 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let expired_after = t.elapsed();
    // Neither code reached the audit trail.
    for rec in audit_records(env, &w.prefix) {
        assert_no_code(&rec.to_string(), &code, "an audit record");
        assert_no_code(&rec.to_string(), &code2, "an audit record");
    }
    eprintln!("step-up: unlock shared across processes; /lock immediate; expiry seen {} ms after the last check passed", expired_after.as_millis());
}

/// Child tokens with `display` as display name that Vault still holds
/// (as root: every accessor, looked up).
pub(super) fn live_tokens(env: &Env, display: &str) -> usize {
    let c = env.cluster();
    let (code, body) = c
        .vault_api(
            reqwest::Method::GET,
            "auth/token/accessors?list=true",
            Some(&c.root_token),
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let mut n = 0;
    for acc in body["data"]["keys"].as_array().unwrap() {
        let (code, t) = c
            .vault_api(
                reqwest::Method::POST,
                "auth/token/lookup-accessor",
                Some(&c.root_token),
                Some(serde_json::json!({"accessor": acc})),
            )
            .unwrap();
        if code == 200 && t["data"]["display_name"] == display {
            n += 1;
        }
    }
    n
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn suspend_reaches_a_running_replica_and_revokes_tokens(env: &Env) {
    let w = world(env, "suspend", "step_up = \"off\"", "");
    let op = w.name.clone();
    // A running replica on its own socket; our uid is `op` there.
    let b = w.broker(env, "sus");
    let rconfig = w.config.clone();
    let out = b.ctl(&["/kv", "list", "secret/"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Another process mints its own token for the operator too.
    let r = console_with_config(env, &rconfig, &op, &["/kv list secret/"]);
    r.ok_text(0);
    // A wrong unlock code through the socket: an alert, counted by the
    // replica's metric, the code nowhere in it.
    let wrong = w.wrong(&op);
    let out = b.ctl_line(true, &format!("/unlock {wrong}"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "denied", "{v}");
    let metrics = w.metrics();
    assert!(
        metrics.contains("vaultgram_security_events_total{kind=\"unlock_failed\"} 1"),
        "{metrics}"
    );
    assert_no_code(&metrics, &wrong, "/metrics");
    assert_no_code(&b.proc.log_text(), &wrong, "the replica's log");
    let display = format!("token-vaultgram-{op}");
    let before = live_tokens(env, &display);
    assert!(
        before >= 2,
        "{before} live tokens of {op} before the suspension"
    );

    // An admin (another process, unlocked with her own code: suspending
    // someone else needs it) suspends it.
    let alice_code = w.code("alice");
    let r = console_with_config(
        env,
        &rconfig,
        "alice",
        &[
            &format!("/unlock {alice_code}"),
            &format!("/operator suspend {op} lost phone"),
        ],
    );
    let suspended_at = Instant::now();
    assert!(r.ok_text(1).contains("is suspended"), "{}", r.replies[1]);
    let out = b.ctl(&["--json", "/whoami"]);
    let refused_after = suspended_at.elapsed();
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out.stdout)));
    assert_eq!(v["error"]["kind"], "denied", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{v}"
    );
    assert!(
        refused_after < Duration::from_secs(1),
        "refused only after {refused_after:?}"
    );
    let after = live_tokens(env, &display);
    assert_eq!(
        after, 0,
        "tokens of {op} still valid in Vault after the suspension"
    );
    // The running replica's cached token is gone too: it cannot even
    // mint a new one (it checks the suspension first).
    let out = b.ctl(&["--json", "/kv", "list", "secret/"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "denied", "{v}");
    assert_eq!(live_tokens(env, &display), 0);
    let r = console_with_config(env, &rconfig, "alice", &["/operator list"]);
    assert!(
        r.ok_text(0)
            .contains(&format!("{op} (admin): suspended since")),
        "{}",
        r.replies[0]
    );
    assert!(
        r.ok_text(0).contains("by alice: lost phone"),
        "{}",
        r.replies[0]
    );

    // Resume is a two-person decision: alice asks, dave approves with his
    // TOTP code, and only then does the replica serve the operator again.
    let r = console_with_config(env, &rconfig, "alice", &[&format!("/operator resume {op}")]);
    assert_eq!(r.err_kind(0), "approval_required", "{}", r.replies[0]);
    let m = r.message(0);
    let id = m
        .strip_prefix("request ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = b.ctl(&["--json", "/whoami"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["error"]["kind"], "denied",
        "resumed before the approval: {v}"
    );
    let code = w.code("dave");
    let r = console_with_config(env, &rconfig, "dave", &[&format!("/approve {id} {code}")]);
    r.ok_text(0);
    let out = b.ctl(&["--json", "/whoami"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "not resumed: {v}");
    // The alerts: suspend and resume, each in the audit trail.
    let recs = audit_records(env, &w.prefix);
    for kind in ["security suspend", "security resume"] {
        assert!(
            recs.iter().any(|r| r["command"] == kind
                && r["operator"] == op.as_str()
                && r["result"] == "alert"),
            "no {kind} alert: {recs:?}"
        );
    }
    eprintln!(
        "suspend: refused by the running replica {} ms after the suspend reply; {before} live tokens -> 0; resume after dave's approval",
        refused_after.as_millis()
    );
    drop(b);
}

/// Telegram outbox lines of the file stand-in in `dir`.
pub(super) fn outbox(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("outbox.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A `run` reserves the reveal budget in blocks (1, then 2 = a tenth of
/// 25): it hands out exactly 25, the 26th is refused with one alert, and
/// another process (the console, counting one by one) in the same window
/// gets nothing more: the etcd counter bounds every process together.
fn reveal_budget_blocks(env: &Env) {
    let w = world(
        env,
        "blocks",
        "reveal_budget = 25\nreveal_window_secs = 86400",
        "",
    );
    let op = w.name.clone();
    let path = format!("secret/sec-{}", random_hex(3));
    let pw = canary::plant("secblocks");
    w.run(env, "alice", &[&format!("/kv put {path} pw={pw}")])
        .ok_text(0);
    let b = w.broker(env, "blocks");
    for i in 1..=27 {
        let out = b.ctl(&["--json", "/kv", "get", &path]);
        let reply: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{i}: {e}: {}", text(&out.stdout)));
        if i <= 25 {
            assert_eq!(reply["ok"], true, "{i}: {reply}");
            assert!(reply.to_string().contains(&pw), "{i}");
        } else {
            assert_eq!(reply["error"]["kind"], "denied", "{i}: {reply}");
            let m = reply["error"]["message"].as_str().unwrap();
            assert!(m.contains("reveal budget exhausted"), "{m}");
        }
    }
    let r = w.run(env, &op, &[&format!("/kv get {path}")]);
    assert_denied(&r, 0, "reveal budget exhausted");
    let recs = audit_records(env, &w.prefix);
    assert_eq!(
        recs.iter()
            .filter(|r| r["command"] == "security budget_exceeded")
            .count(),
        1,
        "{recs:?}"
    );
    // The counter: 25 reserved (1 + 12 blocks of 2), then one per refusal.
    let out = env.cluster().etcdctl(
        &[
            "get",
            "--prefix",
            &format!("{}security/reveal/{op}/", w.prefix),
            "--print-value-only",
        ],
        true,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "28", "{out:?}");
    drop(b);
}

fn wrong_codes_suspend_and_the_budget_alerts(env: &Env) {
    let c = env.cluster();
    let dir = c.path().join(format!("sec-tg-{}", random_hex(3)));
    std::fs::create_dir_all(&dir).unwrap();
    let tg = format!(
        "\n[telegram]\nbackend = \"file\"\nfile_dir = \"{}\"\nsession_save_secs = 1\n",
        dir.display()
    );
    let w = world(
        env,
        "budget",
        "step_up = \"secrets\"\nunlock_max_failures = 3\nreveal_budget = 3\nreveal_window_secs = 600",
        &tg,
    );
    let op = w.name.clone();
    let pw = canary::plant("secbudget");
    // Three wrong codes in a row: suspended (the third says so).
    let codes: Vec<String> = (0..3).map(|_| w.wrong(&op)).collect();
    let lines: Vec<String> = codes.iter().map(|c| format!("/unlock {c}")).collect();
    let lines: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .chain(["/whoami"])
        .collect();
    let r = w.run(env, &op, &lines);
    assert_denied(&r, 0, "1 of 3");
    assert_denied(&r, 1, "2 of 3");
    assert_denied(&r, 2, "is suspended");
    assert_denied(&r, 3, "suspended");
    // Even the right code does not help now.
    let right = w.code(&op);
    let r = w.run(env, &op, &[&format!("/unlock {right}")]);
    assert_denied(&r, 0, "suspended");
    let recs = audit_records(env, &w.prefix);
    assert!(
        recs.iter()
            .any(|r| r["command"] == "security auto_suspend" && r["operator"] == op.as_str()),
        "{recs:?}"
    );
    assert_eq!(
        recs.iter()
            .filter(|r| r["command"] == "security unlock_failed")
            .count(),
        2,
        "{recs:?}"
    );

    // The reveal budget (3): alice unlocks and reads a secret four times;
    // the fourth is refused and raises one alert, which the Telegram
    // leader (the file stand-in) sends to every admin.
    let path = format!("secret/sec-{}", random_hex(3));
    let alice_code = w.code("alice");
    let reads: Vec<String> = std::iter::repeat_n(format!("/kv get {path}"), 4).collect();
    let mut lines = vec![
        format!("/unlock {alice_code}"),
        format!("/kv put {path} pw={pw}"),
    ];
    lines.extend(reads);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = w.run(env, "alice", &lines);
    r.ok_text(0);
    r.ok_text(1);
    for i in 2..5 {
        assert!(r.ok_text(i).contains(&pw), "{}", r.replies[i]);
    }
    assert_denied(&r, 5, "reveal budget exhausted");
    let recs = audit_records(env, &w.prefix);
    assert_eq!(
        recs.iter()
            .filter(|r| r["command"] == "security budget_exceeded" && r["operator"] == "alice")
            .count(),
        1,
        "{recs:?}"
    );
    for rec in &recs {
        let s = rec.to_string();
        assert!(!s.contains(&pw), "secret in an audit record");
        for code in codes.iter().chain([&right, &alice_code]) {
            assert_no_code(&s, code, "an audit record");
        }
    }
    // The alerts reach the admins through the Telegram leader: a `run`
    // with the file stand-in (alice has written to the account before, so
    // her access hash is known; dave has not and is skipped).
    std::fs::write(
        dir.join("inbox.jsonl"),
        format!("{}\n", serde_json::json!({"id": 1, "chat": 111111, "sender": 111111, "users": true, "text": "hello"})),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaultgram"))
        .args(["--config"])
        .arg(&w.config)
        .arg("login")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = w.broker(env, "sectg");
    let t = Instant::now();
    let notices = loop {
        let n: Vec<Value> = outbox(&dir)
            .into_iter()
            .filter(|v| {
                v["op"] == "send"
                    && v["text"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("security:"))
            })
            .collect();
        let has = |needle: &str| {
            n.iter()
                .any(|v| v["text"].as_str().is_some_and(|t| t.contains(needle)))
        };
        if has("wrong TOTP codes in a row") && has("asked for more than 3 secrets") {
            break n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "security notices in the outbox: {n:?}\n{}",
            b.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let texts: Vec<&str> = notices
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("suspended after 3 wrong TOTP codes")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("alice asked for more than 3 secrets")),
        "{texts:?}"
    );
    for n in &notices {
        assert_eq!(
            n["chat"], 111111,
            "a notice to someone other than alice: {n}"
        );
        let s = n.to_string();
        assert!(!s.contains(&pw));
        for code in codes.iter().chain([&right, &alice_code]) {
            assert_no_code(&s, code, "a Telegram notice");
        }
    }
    // The metric counts them, and carries no code.
    eprintln!(
        "budget: 3 wrong codes suspended {op}; 4th secret refused; {} notices sent to alice",
        notices.len()
    );
    drop(b);
}

/// Issue 34: the suspension check reads nothing from etcd while the
/// watched view is current (`vaultgram::suspensions`). Two processes'
/// worth of services on one prefix: A suspends, and once the bound has
/// passed B refuses from memory; 1,000 checks on B then read etcd (almost)
/// never (on 191834d each of them was a read). With B cut off from etcd
/// (its proxies black-holed) A suspends another operator: B's view stops
/// answering within the bound, and B never says "not suspended" for them
/// (its fallback read fails: refused, as before). Restored, B's view is
/// current again and has the suspension.
fn suspensions_are_checked_from_memory_within_the_bound(env: &Env) {
    use std::sync::atomic::Ordering::Relaxed;
    use vaultgram::suspensions::STALENESS_BOUND;

    use crate::common::tcpproxy::TcpProxy;
    let c = env.cluster();
    let mut cfg = env.config();
    cfg.etcd.prefix = format!("/vaultgram/susp-{}/", random_hex(4));
    let proxies: Vec<TcpProxy> = TcpProxy::in_front_of(&c.etcd_endpoints());
    let mut cfg_b = cfg.clone();
    cfg_b.etcd.endpoints = proxies.iter().map(|p| p.https_endpoint()).collect();
    env.rt.block_on(async {
        let a = vaultgram::dispatch::App::start(cfg.clone()).await.unwrap();
        let b = vaultgram::dispatch::App::start(cfg_b).await.unwrap();
        let (sa, sb) = (&a.security, &b.security);
        // The first check starts the view (and reads etcd meanwhile).
        assert_eq!(sb.suspension("bob").await.unwrap(), None);
        let current = |limit: Duration| async move {
            let t = Instant::now();
            while !sb.view_is_current() {
                assert!(t.elapsed() < limit, "B's view not current within {limit:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            t.elapsed()
        };
        let first = current(Duration::from_secs(10)).await;
        assert_eq!(sb.suspension("bob").await.unwrap(), None);

        // 1. A suspends bob; B sees it, from memory, within the bound.
        sa.suspend("bob", "alice", "issue 34 test").await.unwrap();
        let t = Instant::now();
        while sb.suspension("bob").await.unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(5), "B never saw the suspension");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seen = t.elapsed();
        tokio::time::sleep(STALENESS_BOUND).await;
        current(Duration::from_secs(5)).await;
        let (view0, etcd0) = (sb.checks_from_view.load(Relaxed), sb.checks_from_etcd.load(Relaxed));
        for _ in 0..1000 {
            let s = sb.suspension("bob").await.unwrap();
            assert_eq!(s.map(|s| s.by), Some("alice".to_string()));
        }
        let from_view = sb.checks_from_view.load(Relaxed) - view0;
        let reads = sb.checks_from_etcd.load(Relaxed) - etcd0;
        assert!(
            from_view >= 990,
            "only {from_view} of 1000 checks from memory ({reads} etcd reads)"
        );

        // 2. B cut off from etcd: A suspends carol; B never serves her.
        for p in &proxies {
            p.cut();
        }
        sa.suspend("carol", "alice", "issue 34 test").await.unwrap();
        tokio::time::sleep(STALENESS_BOUND * 2).await;
        assert!(!sb.view_is_current(), "B answers from a view it cannot prove current");
        let refused = Instant::now();
        // Suspended, or unknown (an error: refused); never "not suspended".
        let answer = sb.suspension("carol").await;
        assert!(
            !matches!(answer, Ok(None)),
            "B said carol is not suspended while cut off"
        );
        let refused = refused.elapsed();

        // 3. Restored: current again, with carol's suspension; a resume on
        //    A reaches B too.
        for p in &proxies {
            p.restore();
        }
        let back = current(Duration::from_secs(30)).await;
        assert!(sb.suspension("carol").await.unwrap().is_some());
        sa.resume("bob").await.unwrap();
        let t = Instant::now();
        while sb.suspension("bob").await.unwrap().is_some() {
            assert!(t.elapsed() < Duration::from_secs(5), "B never saw the resume");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        eprintln!(
            "suspensions: B current {} ms after start; saw A's suspension after {} µs; 1000 checks: {from_view} from memory, {reads} etcd reads; cut off: not current after {} ms, the check refused in {} ms; current again {} ms after the restore",
            first.as_millis(),
            seen.as_micros(),
            (STALENESS_BOUND * 2).as_millis(),
            refused.as_millis(),
            back.as_millis()
        );
        drop(b);
        drop(a);
    });
}

/// The reveal budget is one compare-and-swap counter per operator that
/// every replica and console shares. Many of them revealing at the same
/// moment must all be counted — none refused as `unavailable` for losing
/// the race too often, and the count exactly the number of reveals. On
/// dbb873e some of 24 simultaneous reveals failed with "etcd unavailable:
/// counter kept changing" (8 immediate retries; seen once in CI as a
/// refused `/kv get` in `gate::agent_cancels_its_own_request`).
fn concurrent_reveals_are_all_counted(env: &Env) {
    use vaultgram::security::{Reveal, Security};
    const N: usize = 24;
    let cfg = env.config();
    let prefix = format!("/vaultgram/it-race-{}/", random_hex(4));
    let sec_cfg = vaultgram::config::SecurityConfig {
        reveal_budget: 1000,
        reveal_window_secs: 86_400,
        ..Default::default()
    };
    let (results, stored) = env.rt.block_on(async {
        // Every contender connected first, then all at once.
        let mut all = Vec::new();
        for _ in 0..N {
            let etcd = vaultgram::etcd::Etcd::connect(&cfg.etcd).await.unwrap();
            all.push(Security::new(etcd, &prefix, sec_cfg.clone(), vec![]));
        }
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
        let mut set = tokio::task::JoinSet::new();
        for sec in all {
            let barrier = barrier.clone();
            set.spawn(async move {
                barrier.wait().await;
                sec.count_reveal("racer").await.map_err(|e| e.to_string())
            });
        }
        let mut results = Vec::new();
        while let Some(r) = set.join_next().await {
            results.push(r.unwrap());
        }
        let etcd = vaultgram::etcd::Etcd::connect(&cfg.etcd).await.unwrap();
        let window = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400;
        let stored = etcd
            .get(&format!("{prefix}security/reveal/racer/{window}"))
            .await
            .unwrap()
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        (results, stored)
    });
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {N} reveals refused: {failed:?}",
        failed.len()
    );
    assert!(
        results.iter().all(|r| *r == Ok(Reveal::Allowed)),
        "{results:?}"
    );
    assert_eq!(
        stored.as_deref(),
        Some(N.to_string().as_str()),
        "the counter"
    );
    eprintln!("reveal budget: {N} simultaneous reveals from {N} clients, all counted");
}
