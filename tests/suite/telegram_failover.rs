//! Leader election across real `vaultgram run` processes, with the
//! TEST-ONLY `file` Telegram backend (JSONL inbox/outbox in `file_dir`):
//! one leader at a time, fail-over on SIGKILL, fencing before the lease can
//! expire when the leader is cut off from etcd, no command run twice across
//! fail-over, orderly SIGTERM hand-over.
//!
//! All of them share the Telegram session in Vault (the broker policy only
//! allows the default `session_path`), so they are `disruptive::` (run
//! alone); each uses its own etcd prefix, hence its own election.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::TestFn;
use crate::common::cluster::random_hex;
use crate::common::process::Proc;
use crate::common::tcpproxy::TcpProxy;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    ("tcpproxy::forwards_and_cuts", forwards_and_cuts),
    (
        "disruptive::telegram::a_leader_whose_client_cannot_start_hands_over",
        hung_start_hands_over,
    ),
    (
        "disruptive::telegram::one_leader_then_failover_on_kill9",
        one_leader_then_failover_on_kill9,
    ),
    (
        "disruptive::telegram::cut_off_leader_fences_before_lease_expiry",
        cut_off_leader_fences_before_lease_expiry,
    ),
    (
        "disruptive::telegram::replayed_message_runs_once",
        replayed_message_runs_once,
    ),
    (
        "disruptive::telegram::sigterm_shuts_down_in_order_and_hands_over",
        sigterm_shuts_down_in_order_and_hands_over,
    ),
    (
        "disruptive::telegram::fenced_while_updates_keep_arriving",
        fenced_while_updates_keep_arriving,
    ),
    (
        "disruptive::telegram::relogin_while_running_is_not_overwritten",
        relogin_while_running_is_not_overwritten,
    ),
    (
        "disruptive::telegram::sigterm_with_buffered_commands_hands_them_over",
        sigterm_with_buffered_commands_hands_them_over,
    ),
    (
        "disruptive::telegram::fenced_while_connecting",
        fenced_while_connecting,
    ),
    (
        "disruptive::telegram::approvals_are_announced_once_across_failover",
        approvals_are_announced_once_across_failover,
    ),
    (
        "disruptive::telegram::quorum_round_in_chat",
        quorum_round_in_chat,
    ),
];

/// `etcd.lease_ttl_secs` in these tests.
const LEASE_TTL_MS: i64 = 4_000;

fn forwards_and_cuts(_env: &Env) {
    crate::common::tcpproxy::self_test();
}

// ---------------------------------------------------------------------------
// Log and file helpers
// ---------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One JSON log line of a `run` process.
#[derive(Debug, Clone)]
struct Event {
    /// Position in the log (lines that are not JSON are not counted).
    idx: usize,
    /// Unix milliseconds.
    ts: i64,
    msg: String,
    v: Value,
}

impl Event {
    fn is(&self, msg: &str) -> bool {
        self.msg == msg
    }

    /// An integer field (flattened, or under `fields`), number or string.
    fn int(&self, name: &str) -> Option<i64> {
        let f = self
            .v
            .get(name)
            .or_else(|| self.v.get("fields").and_then(|f| f.get(name)))?;
        f.as_i64()
            .or_else(|| f.as_u64().map(|u| u as i64))
            .or_else(|| f.as_str().and_then(|s| s.trim().parse().ok()))
    }

    fn str_field(&self, name: &str) -> Option<String> {
        let f = self
            .v
            .get(name)
            .or_else(|| self.v.get("fields").and_then(|f| f.get(name)))?;
        Some(match f {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

fn parse_ts(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

fn events_of(log: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let msg = v
            .get("message")
            .or_else(|| v.get("fields").and_then(|f| f.get("message")))
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        let Some(ts) = v
            .get("timestamp")
            .and_then(|t| t.as_str())
            .and_then(parse_ts)
        else {
            continue;
        };
        out.push(Event {
            idx: out.len(),
            ts,
            msg,
            v,
        });
    }
    out
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit`
/// with `what` and the context `ctx()` gives.
fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    ctx: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}\n{}", ctx());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text` (failure messages stay readable; the
/// whole logs are in the cluster directory's `console-output`).
pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut s = String::new();
    if skip > 0 {
        s.push_str(&format!("[… {skip} earlier lines]\n"));
    }
    s.push_str(&lines[skip..].join("\n"));
    s
}

/// The Telegram id of operator `name`, read from the harness config text.
fn telegram_id(config_text: &str, name: &str) -> i64 {
    let needle = format!("name = \"{name}\"");
    let start = config_text
        .find(&needle)
        .unwrap_or_else(|| panic!("operator {name} not in the harness config"));
    let rest = &config_text[start..];
    let line = rest
        .lines()
        .find(|l| l.trim_start().starts_with("telegram_id"))
        .unwrap();
    line.split('=').nth(1).unwrap().trim().parse().unwrap()
}

// ---------------------------------------------------------------------------
// A group of `run` processes sharing one election and one file_dir
// ---------------------------------------------------------------------------

pub(super) struct Node {
    name: String,
    proc: Proc,
    pid: u32,
    config: PathBuf,
    /// `[http] listen` port (`/readyz`, `/metrics`).
    pub(super) http: u16,
}

impl Node {
    fn events(&self) -> Vec<Event> {
        events_of(&self.proc.log)
    }

    fn first(&self, msg: &str) -> Option<Event> {
        self.events().into_iter().find(|e| e.is(msg))
    }

    fn all(&self, msg: &str) -> Vec<Event> {
        self.events().into_iter().filter(|e| e.is(msg)).collect()
    }
}

pub(super) struct Group {
    name: String,
    /// Unique per test: its own etcd prefix (election).
    hex: String,
    file_dir: PathBuf,
    alice: i64,
    /// Drop order matters: processes first, then the proxies.
    nodes: Vec<Option<Node>>,
    /// Per node: its own proxies in front of the etcd members (empty when
    /// the node talks to etcd directly).
    proxies: Vec<Vec<TcpProxy>>,
    /// Unix ms at which a node was SIGKILLed (its leadership ends there).
    killed_at: Vec<Option<i64>>,
    logs_dir: PathBuf,
    base_config: String,
    env_root: PathBuf,
}

impl Group {
    /// Creates the shared file_dir, runs `login` (a fresh session with
    /// offset 0) and starts `n` processes; with `proxied`, each process
    /// reaches etcd through its own three `TcpProxy`s.
    fn start(env: &Env, name: &str, n: usize, proxied: bool) -> Group {
        Self::start_with(env, name, n, proxied, |t| t)
    }

    /// Like `start`, with the harness config text passed through `edit`
    /// first (for every node and the login).
    pub(super) fn start_with(
        env: &Env,
        name: &str,
        n: usize,
        proxied: bool,
        edit: impl FnOnce(String) -> String,
    ) -> Group {
        let c = env.cluster();
        let hex = random_hex(4);
        let root = c.path().to_path_buf();
        let file_dir = root.join(format!("tg-{name}-{hex}"));
        std::fs::create_dir_all(&file_dir).unwrap();
        let logs_dir = root.join("console-output");
        std::fs::create_dir_all(&logs_dir).unwrap();
        let base_config = edit(std::fs::read_to_string(&c.config_path).unwrap());
        let alice = telegram_id(&base_config, "alice");
        let mut g = Group {
            name: name.to_string(),
            hex,
            file_dir,
            alice,
            nodes: Vec::new(),
            proxies: Vec::new(),
            killed_at: Vec::new(),
            logs_dir,
            base_config,
            env_root: root,
        };
        g.login(env);
        for _ in 0..n {
            g.add_node(env, proxied);
        }
        g
    }

    /// `vaultgram login` (the file stand-in: a fresh session with a new
    /// auth key and offset 0), over a config without proxies.
    fn login(&self, env: &Env) {
        let c = env.cluster();
        let login_cfg = self.write_config("login", &c.etcd_endpoints(), 0);
        let out = Command::new(env!("CARGO_BIN_EXE_vaultgram"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("VAULTGRAM_LOG", "info,vaultgram=debug")
            .args(["--log-format", "json", "--config"])
            .arg(&login_cfg)
            .arg("login")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let log = self
            .logs_dir
            .join(format!("tg-{}-{}-login.err", self.name, self.hex));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        f.write_all(&[&out.stdout[..], &out.stderr[..]].concat())
            .unwrap();
        assert!(
            out.status.success(),
            "login failed ({:?}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Appends raw lines (messages or stand-in control lines) in one write.
    fn inbox_lines(&self, lines: &[Value]) {
        let mut text = String::new();
        for l in lines {
            text.push_str(&format!("{l}\n"));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file_dir.join("inbox.jsonl"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// The harness config with this group's changes; returns its path.
    /// The Unix socket of node `tag` (`n0`, `n1`, …).
    pub(super) fn socket(&self, tag: &str) -> PathBuf {
        self.env_root.join(format!("tg-{}-{tag}.sock", self.hex))
    }

    fn write_config(&self, tag: &str, endpoints: &[String], http: u16) -> PathBuf {
        let root = self.env_root.display().to_string();
        let socket = format!("{root}/tg-{}-{tag}.sock", self.hex);
        let eps = endpoints
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut lines = Vec::new();
        let mut replaced = [false; 4];
        for l in self.base_config.lines() {
            let t = l.trim_start();
            if t.starts_with("socket = ") {
                lines.push(format!("socket = \"{socket}\""));
                replaced[0] = true;
            } else if t.starts_with("prefix = \"/vaultgram/\"") {
                lines.push(format!("prefix = \"/vaultgram/tgtest-{}/\"", self.hex));
                replaced[1] = true;
            } else if t.starts_with("lease_ttl_secs = ") {
                lines.push(format!("lease_ttl_secs = {}", LEASE_TTL_MS / 1000));
                replaced[2] = true;
            } else if t.starts_with("endpoints = [") {
                lines.push(format!("endpoints = [{eps}]"));
                replaced[3] = true;
            } else {
                lines.push(l.to_string());
            }
        }
        assert_eq!(replaced, [true; 4], "harness config changed shape");
        let mut text = lines.join("\n");
        text.push('\n');
        if http != 0 {
            text = text.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{http}\""),
            );
        }
        let tg = format!(
            "backend = \"file\"\nfile_dir = \"{}\"\nsession_save_secs = 2\nsecret_reply_ttl_secs = 3\n",
            self.file_dir.display()
        );
        if let Some(pos) = text.find("\n[telegram]\n") {
            text.insert_str(pos + "\n[telegram]\n".len(), &tg);
        } else {
            text.push_str(&format!("\n[telegram]\n{tg}"));
        }
        let path = self
            .env_root
            .join(format!("tg-{}-{}-{tag}.toml", self.name, self.hex));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn add_node(&mut self, env: &Env, proxied: bool) -> usize {
        let c = env.cluster();
        let i = self.nodes.len();
        let tag = format!("n{i}");
        let (endpoints, proxies) = if proxied {
            let proxies: Vec<TcpProxy> = TcpProxy::in_front_of(&c.etcd_endpoints());
            (
                proxies.iter().map(|p| p.https_endpoint()).collect(),
                proxies,
            )
        } else {
            (c.etcd_endpoints(), Vec::new())
        };
        let http = crate::common::process::free_port();
        let config = self.write_config(&tag, &endpoints, http);
        let name = format!("tg-{}-{}-{tag}", self.name, self.hex);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vaultgram"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("VAULTGRAM_LOG", "info,vaultgram=debug")
            .args(["--log-format", "json", "--config"])
            .arg(&config)
            .arg("run");
        let proc = Proc::spawn(&name, cmd, &self.logs_dir.join(format!("{name}.err")));
        let pid = proc.pid().unwrap();
        self.nodes.push(Some(Node {
            name,
            proc,
            pid,
            config,
            http,
        }));
        self.proxies.push(proxies);
        self.killed_at.push(None);
        i
    }

    pub(super) fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node still running")
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("node still running")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some() && self.killed_at[i].is_none())
            .collect()
    }

    /// Every node's log (for failure messages).
    pub(super) fn dump(&self) -> String {
        let mut s = String::new();
        for n in self.nodes.iter().flatten() {
            s.push_str(&format!(
                "===== {} (pid {}, {}) =====\n{}\n",
                n.name,
                n.pid,
                n.config.display(),
                tail(&n.proc.log_text(), 150)
            ));
        }
        s.push_str(&format!(
            "===== outbox =====\n{}\n",
            std::fs::read_to_string(self.file_dir.join("outbox.jsonl")).unwrap_or_default()
        ));
        s
    }

    /// Waits until exactly one running node logged "became leader" and
    /// every other running node "following"; returns the leader's index.
    pub(super) fn wait_single_leader(&self, limit: Duration) -> usize {
        let leader = wait_for(
            limit,
            "one leader, the others following",
            || {
                let run = self.running();
                let leaders: Vec<usize> = run
                    .iter()
                    .copied()
                    .filter(|&i| self.node(i).first("became leader").is_some())
                    .collect();
                if leaders.len() != 1 {
                    return None;
                }
                let others_follow = run
                    .iter()
                    .filter(|&&i| i != leaders[0])
                    .all(|&i| self.node(i).first("following").is_some());
                others_follow.then_some(leaders[0])
            },
            || self.dump(),
        );
        // Never two at once.
        for i in self.running() {
            if i != leader {
                assert!(
                    self.node(i).first("became leader").is_none(),
                    "two leaders:\n{}",
                    self.dump()
                );
            }
        }
        leader
    }

    /// Waits for `msg` in node `i`'s log at or after log position `from`.
    fn wait_event(&self, i: usize, msg: &str, from: usize, limit: Duration) -> Event {
        wait_for(
            limit,
            &format!("\"{msg}\" in {}", self.node(i).name),
            || {
                self.node(i)
                    .events()
                    .into_iter()
                    .find(|e| e.idx >= from && e.is(msg))
            },
            || self.dump(),
        )
    }

    /// Appends one message to the inbox; returns its line index (the
    /// client of the leader appends its own sent messages to the inbox too,
    /// as outgoing updates, so the index is looked up after the append).
    fn send(&self, id: i64, sender: i64, text: &str) -> usize {
        let path = self.file_dir.join("inbox.jsonl");
        let line = json!({"id": id, "chat": sender, "sender": sender, "text": text});
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        drop(f);
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    v["id"].as_i64() == Some(id)
                        && v["outgoing"] != true
                        && v["text"].as_str() == Some(text)
                })
            })
            .map(|(i, _)| i)
            .last()
            .expect("the line just appended")
    }

    fn outbox(&self) -> Vec<Value> {
        std::fs::read_to_string(self.file_dir.join("outbox.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every `send` that replies to message `id`.
    fn replies_to(&self, id: i64) -> Vec<Value> {
        self.outbox()
            .into_iter()
            .filter(|v| v["op"] == "send" && v["reply_to"].as_i64() == Some(id))
            .collect()
    }

    fn wait_reply(&self, id: i64, limit: Duration) -> Value {
        wait_for(
            limit,
            &format!("a reply to message {id}"),
            || self.replies_to(id).into_iter().next(),
            || self.dump(),
        )
    }

    /// The `start` outbox entry of `pid`'s client, if it started.
    fn start_of(&self, pid: u32) -> Option<Value> {
        self.outbox()
            .into_iter()
            .find(|v| v["op"] == "start" && v["pid"].as_u64() == Some(pid as u64))
    }

    fn wait_client_started(&self, i: usize, limit: Duration) -> Value {
        let pid = self.node(i).pid;
        wait_for(
            limit,
            &format!("the client of {} to start", self.node(i).name),
            || self.start_of(pid),
            || self.dump(),
        )
    }

    /// SIGKILL node `i`; returns the kill instant (unix ms).
    pub(super) fn kill(&mut self, i: usize) -> i64 {
        let t = now_ms();
        self.node_mut(i).proc.kill();
        self.killed_at[i] = Some(t);
        t
    }

    /// Starts node `i` again after [`Group::kill`]: the same config (HTTP
    /// port, socket), a log file of its own.
    pub(super) fn restart(&mut self, i: usize) {
        let old = self.nodes[i].take().expect("a node to restart");
        let name = format!("{}-again", old.name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vaultgram"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("VAULTGRAM_LOG", "info,vaultgram=debug")
            .args(["--log-format", "json", "--config"])
            .arg(&old.config)
            .arg("run");
        let proc = Proc::spawn(&name, cmd, &self.logs_dir.join(format!("{name}.err")));
        let pid = proc.pid().unwrap();
        self.nodes[i] = Some(Node {
            name,
            proc,
            pid,
            config: old.config,
            http: old.http,
        });
        self.killed_at[i] = None;
    }

    /// Leadership intervals `(node, from_ms, to_ms)` from the logs: from
    /// "became leader" to the next "telegram client stopped" (or the kill
    /// instant, or now).
    fn leadership_intervals(&self) -> Vec<(usize, i64, i64)> {
        let mut v = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let evs = n.events();
            let mut start: Option<i64> = None;
            for e in &evs {
                if e.is("became leader") {
                    assert!(
                        start.is_none(),
                        "{} became leader twice without stopping its client:\n{}",
                        n.name,
                        self.dump()
                    );
                    start = Some(e.ts);
                } else if e.is("telegram client stopped") {
                    if let Some(s) = start.take() {
                        v.push((i, s, e.ts));
                    }
                }
            }
            if let Some(s) = start {
                v.push((i, s, self.killed_at[i].unwrap_or(i64::MAX)));
            }
        }
        v
    }

    fn assert_no_overlap(&self) {
        let mut iv = self.leadership_intervals();
        iv.sort_by_key(|&(_, s, _)| s);
        for w in iv.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                a.2 <= b.1,
                "leadership of {} [{}, {}] overlaps that of {} [{}, {}]\n{}",
                self.node_name(a.0),
                a.1,
                a.2,
                self.node_name(b.0),
                b.1,
                b.2,
                self.dump()
            );
        }
        eprintln!(
            "{}: leadership intervals (node, from ms, to ms): {iv:?}",
            self.name
        );
    }

    fn node_name(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("node {i}"))
    }

    /// SIGTERM to every running node, then waits (bounded) for all.
    fn stop_all(&mut self) {
        for n in self.nodes.iter().flatten() {
            // Only children not yet reaped (no pid reuse risk).
            if let Some(pid) = n.proc.pid() {
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in self.nodes.iter_mut().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            if n.proc.wait_timeout(left).is_none() {
                n.proc.kill();
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop_all();
        self.nodes.clear();
        self.proxies.clear();
    }
}

fn kv_current_version(env: &Env, path: &str) -> i64 {
    let c = env.cluster();
    let api = path.replacen("secret/", "secret/metadata/", 1);
    let (code, v) = c
        .vault_api(reqwest::Method::GET, &api, Some(&c.root_token), None)
        .unwrap();
    assert_eq!(code, 200, "metadata of {path}: {v}");
    v["data"]["current_version"].as_i64().unwrap()
}

// ---------------------------------------------------------------------------
// a) one leader; SIGKILL → take-over within the lease TTL
// ---------------------------------------------------------------------------

fn one_leader_then_failover_on_kill9(env: &Env) {
    let mut g = Group::start(env, "kill9", 3, false);
    let leader = g.wait_single_leader(Duration::from_secs(20));
    g.wait_client_started(leader, Duration::from_secs(15));
    let leader_pid = g.node(leader).pid;

    g.send(1001, g.alice, "/whoami");
    let r = g.wait_reply(1001, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(leader_pid as u64), "{r}");
    assert_eq!(r["chat"].as_i64(), Some(g.alice), "{r}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(g.replies_to(1001).len(), 1, "{}", g.dump());

    let killed = g.kill(leader);
    let (next, ev) = wait_for(
        Duration::from_secs(15),
        "a new leader after SIGKILL",
        || {
            g.running()
                .into_iter()
                .find_map(|i| g.node(i).first("became leader").map(|e| (i, e)))
        },
        || g.dump(),
    );
    let takeover = ev.ts - killed;
    eprintln!(
        "kill9: new leader {} (node {:?}, revision {:?}) {takeover} ms after the kill",
        g.node(next).name,
        ev.str_field("node"),
        ev.str_field("revision")
    );
    assert!(
        takeover <= LEASE_TTL_MS + 1_000,
        "take-over took {takeover} ms (lease TTL {LEASE_TTL_MS} ms)\n{}",
        g.dump()
    );
    g.wait_single_leader(Duration::from_secs(10));
    g.wait_client_started(next, Duration::from_secs(15));

    g.send(1002, g.alice, "/whoami");
    let r = g.wait_reply(1002, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(g.node(next).pid as u64), "{r}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(g.replies_to(1002).len(), 1, "{}", g.dump());
    assert_eq!(g.replies_to(1001).len(), 1, "{}", g.dump());
    // Every send came from the leader of the moment.
    for v in g.outbox() {
        if v["op"] == "send" || v["op"] == "delete" {
            let pid = v["pid"].as_u64();
            assert!(
                pid == Some(leader_pid as u64) || pid == Some(g.node(next).pid as u64),
                "{v}"
            );
        }
    }
    g.assert_no_overlap();
}

// ---------------------------------------------------------------------------
// b) partition: the leader fences itself before its lease can expire
// ---------------------------------------------------------------------------

fn cut_off_leader_fences_before_lease_expiry(env: &Env) {
    let g = Group::start(env, "cut", 2, true);
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let other = 1 - leader;
    g.wait_client_started(leader, Duration::from_secs(15));
    let mark = g.node(leader).events().len();

    let cut_at = now_ms();
    for p in &g.proxies[leader] {
        p.cut();
    }
    let fenced = g.wait_event(
        leader,
        "fenced: stopping Telegram",
        mark,
        Duration::from_secs(15),
    );
    let proven_until = fenced
        .int("proven_until_ms")
        .unwrap_or_else(|| panic!("fenced line without proven_until_ms: {}", fenced.v));
    let stopped = g.wait_event(
        leader,
        "telegram client stopped",
        fenced.idx,
        Duration::from_secs(10),
    );
    let margin = proven_until - stopped.ts;
    assert!(
        stopped.ts < proven_until,
        "client stopped at {} ms, lease proven only until {proven_until} ms\n{}",
        stopped.ts,
        g.dump()
    );
    // The outbox agrees: the old client said stop, and nothing after.
    let new_leader = g.wait_event(other, "became leader", 0, Duration::from_secs(20));
    assert!(
        new_leader.ts > stopped.ts,
        "{} became leader at {} ms, before the old leader stopped its client at {} ms\n{}",
        g.node(other).name,
        new_leader.ts,
        stopped.ts,
        g.dump()
    );
    eprintln!(
        "cut: fenced {} ms after the cut; client stopped {} ms after the cut, {margin} ms before \
         the proven lease end; new leader {} ms after the cut, {} ms after the old client stopped",
        fenced.ts - cut_at,
        stopped.ts - cut_at,
        new_leader.ts - cut_at,
        new_leader.ts - stopped.ts
    );
    g.wait_client_started(other, Duration::from_secs(15));
    g.send(3001, g.alice, "/whoami");
    let r = g.wait_reply(3001, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(g.node(other).pid as u64), "{r}");

    // Heal the partition: the old leader follows.
    for p in &g.proxies[leader] {
        p.restore();
    }
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(20);
    let mut follows = false;
    while Instant::now() < deadline {
        let evs = g.node(leader).events();
        assert!(
            !evs.iter()
                .any(|e| e.idx > fenced.idx && e.is("became leader")),
            "the old leader led again while the new one leads\n{}",
            g.dump()
        );
        if evs.iter().any(|e| e.idx > fenced.idx && e.is("following")) {
            follows = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if follows {
        eprintln!(
            "cut: the old leader follows {} ms after the partition healed",
            healed.elapsed().as_millis()
        );
    } else {
        eprintln!("cut: WARNING the old leader logged no \"following\" within 20 s of healing");
    }
    assert!(
        follows,
        "the old leader did not log \"following\" after the partition healed\n{}",
        g.dump()
    );
    g.assert_no_overlap();
}

// ---------------------------------------------------------------------------
// c) the same message twice, and redelivery after fail-over: runs once
// ---------------------------------------------------------------------------

fn replayed_message_runs_once(env: &Env) {
    let mut g = Group::start(env, "replay", 2, false);
    let mut leader = g.wait_single_leader(Duration::from_secs(20));
    g.wait_client_started(leader, Duration::from_secs(15));

    // The same message (same id) twice in the inbox.
    let path = format!("secret/tgtest/replay-{}", g.hex);
    let put = format!("/kv put {path} n=1");
    g.send(2001, g.alice, &put);
    g.send(2001, g.alice, &put);
    let r = g.wait_reply(2001, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(g.node(leader).pid as u64), "{r}");
    // The copy is seen and skipped: only then does "one reply" mean much.
    wait_for(
        Duration::from_secs(15),
        "the copy of 2001 skipped",
        || {
            g.node(leader)
                .all("duplicate message skipped")
                .into_iter()
                .find(|e| e.int("msg_id") == Some(2001))
        },
        || g.dump(),
    );
    assert_eq!(g.replies_to(2001).len(), 1, "{}", g.dump());
    assert_eq!(kv_current_version(env, &path), 1);

    // Redelivery: SIGKILL the leader right after it replied, before its
    // next session save (every 2 s); the new leader's session then starts
    // before the message. A save can still slip in between: then the
    // message is not redelivered and we try again with a fresh follower.
    for attempt in 0..4 {
        let id = 2100 + attempt;
        let path = format!("secret/tgtest/replay-{}-{attempt}", g.hex);
        let line = g.send(id, g.alice, &format!("/kv put {path} n=1"));
        let r = g.wait_reply(id, Duration::from_secs(15));
        let old = leader;
        g.kill(old);
        assert_eq!(r["pid"].as_u64(), Some(g.node(old).pid as u64), "{r}");
        let next = wait_for(
            Duration::from_secs(15),
            "a new leader after SIGKILL",
            || {
                g.running()
                    .into_iter()
                    .find(|&i| g.node(i).first("became leader").is_some())
            },
            || g.dump(),
        );
        let start = g.wait_client_started(next, Duration::from_secs(15));
        let offset = start["offset"].as_u64().expect("start without offset") as usize;
        leader = next;
        if offset > line {
            eprintln!(
                "replay: attempt {attempt}: the session was saved before the kill (offset \
                 {offset} > line {line}); retrying"
            );
            g.add_node(env, false);
            g.wait_single_leader(Duration::from_secs(20));
            assert_eq!(g.replies_to(id).len(), 1, "{}", g.dump());
            continue;
        }
        let dup = wait_for(
            Duration::from_secs(15),
            &format!("\"duplicate message skipped\" for {id} in the new leader"),
            || {
                g.node(next)
                    .all("duplicate message skipped")
                    .into_iter()
                    .find(|e| e.int("msg_id") == Some(id))
            },
            || g.dump(),
        );
        eprintln!(
            "replay: attempt {attempt}: new leader resumed at offset {offset} (message on line \
             {line}) and skipped it: {}",
            dup.v
        );
        // Settle, then: one reply, one version, the earlier message too.
        std::thread::sleep(Duration::from_millis(1_000));
        assert_eq!(g.replies_to(id).len(), 1, "{}", g.dump());
        assert_eq!(g.replies_to(2001).len(), 1, "{}", g.dump());
        assert_eq!(kv_current_version(env, &path), 1);
        assert_eq!(
            kv_current_version(env, &format!("secret/tgtest/replay-{}", g.hex)),
            1
        );
        g.assert_no_overlap();
        return;
    }
    panic!(
        "every attempt raced a session save; redelivery never observed\n{}",
        g.dump()
    );
}

// ---------------------------------------------------------------------------
// d) SIGTERM: client stopped, then resigned; the follower takes over fast
// ---------------------------------------------------------------------------

fn sigterm_shuts_down_in_order_and_hands_over(env: &Env) {
    let mut g = Group::start(env, "sigterm", 2, false);
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let other = 1 - leader;
    g.wait_client_started(leader, Duration::from_secs(15));
    let pid = g.node(leader).pid;
    let mark = g.node(leader).events().len();

    let t0 = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = g
        .node_mut(leader)
        .proc
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM\n{}", g.dump()));
    let exit_ms = t0.elapsed().as_millis();
    assert!(status.success(), "exit status {status:?}\n{}", g.dump());

    let evs = g.node(leader).events();
    let stopped = evs
        .iter()
        .find(|e| e.idx >= mark && e.is("telegram client stopped"))
        .unwrap_or_else(|| panic!("no \"telegram client stopped\"\n{}", g.dump()))
        .clone();
    let resigned = evs
        .iter()
        .find(|e| e.idx >= mark && e.is("resigned"))
        .unwrap_or_else(|| panic!("no \"resigned\"\n{}", g.dump()))
        .clone();
    assert!(
        stopped.idx < resigned.idx && stopped.ts <= resigned.ts,
        "resigned before the client stopped\n{}",
        g.dump()
    );
    assert!(
        g.outbox()
            .iter()
            .any(|v| v["op"] == "stop" && v["pid"].as_u64() == Some(pid as u64)),
        "no clean stop in the outbox\n{}",
        g.dump()
    );

    let new_leader = g.wait_event(other, "became leader", 0, Duration::from_secs(10));
    let handover = new_leader.ts - resigned.ts;
    eprintln!(
        "sigterm: exited {exit_ms} ms after SIGTERM; new leader {handover} ms after \"resigned\""
    );
    assert!(
        handover < 2_000,
        "take-over {handover} ms after the resign\n{}",
        g.dump()
    );
    g.wait_client_started(other, Duration::from_secs(15));
    g.send(4001, g.alice, "/whoami");
    let r = g.wait_reply(4001, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(g.node(other).pid as u64), "{r}");
    g.assert_no_overlap();
}

// ---------------------------------------------------------------------------
// e) issue 16: what real Telegram (grammers) would break
// ---------------------------------------------------------------------------

/// The stored session's auth key and update offset (the file stand-in's
/// session, decrypted through the broker's own store).
fn stored_session(env: &Env) -> (String, u64) {
    let cfg = env.config();
    env.rt.block_on(async {
        let app = vaultgram::dispatch::App::start(cfg.clone()).await.unwrap();
        let store = vaultgram::transport::telegram::session::SessionStore::new(&cfg).unwrap();
        let s = store
            .load(&app.broker.current())
            .await
            .unwrap()
            .expect("a stored session");
        let v: Value = serde_json::from_slice(&s.bytes).unwrap();
        (
            v["auth_key"].as_str().unwrap_or_default().to_string(),
            v["offset"].as_u64().unwrap_or(0),
        )
    })
}

fn alice_msg(g: &Group, id: i64, text: &str) -> Value {
    json!({"id": id, "chat": g.alice, "sender": g.alice, "text": text})
}

/// The leader is cut off from etcd while one handler is slow (a 3 s send)
/// and 300 updates arrive behind it. The fence must stop the client, the
/// runner must leave and resign once etcd is back (no intake left waiting
/// for a runner that reads nothing), the new leader answers the rest, and
/// nothing runs twice.
fn fenced_while_updates_keep_arriving(env: &Env) {
    let g = Group::start(env, "flood", 2, true);
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let other = 1 - leader;
    g.wait_client_started(leader, Duration::from_secs(15));
    g.inbox_lines(&[
        json!({"control": "latency", "ms": 3000}),
        alice_msg(&g, 5000, "/whoami"),
    ]);
    std::thread::sleep(Duration::from_millis(600));
    let burst: Vec<Value> = (5001..5301)
        .map(|id| alice_msg(&g, id, "/whoami"))
        .collect();
    g.inbox_lines(&burst);
    std::thread::sleep(Duration::from_millis(300));
    let mark = g.node(leader).events().len();
    for p in &g.proxies[leader] {
        p.cut();
    }
    g.wait_event(
        leader,
        "fenced: stopping Telegram",
        mark,
        Duration::from_secs(15),
    );
    g.wait_event(other, "became leader", 0, Duration::from_secs(20));
    for p in &g.proxies[leader] {
        p.restore();
    }
    // The old leader's term ends: its runner left the loop, its intake
    // stopped, it resigned (or its lease was gone) and it follows again.
    let follows = g.wait_event(leader, "following", mark, Duration::from_secs(30));
    g.wait_client_started(other, Duration::from_secs(15));
    let answered = wait_for(
        Duration::from_secs(90),
        "every message of the burst answered",
        || {
            let n = (5001..5301)
                .filter(|&id| !g.replies_to(id).is_empty())
                .count();
            (n == 300).then_some(n)
        },
        || {
            let missing: Vec<i64> = (5001..5301)
                .filter(|&id| g.replies_to(id).is_empty())
                .collect();
            format!("missing: {missing:?}\n{}", g.dump())
        },
    );
    for id in 5000..5301 {
        assert!(
            g.replies_to(id).len() <= 1,
            "message {id} answered twice\n{}",
            g.dump()
        );
    }
    let dropped = g
        .nodes
        .iter()
        .flatten()
        .flat_map(|n| n.all("file backend: updates channel full, update dropped"))
        .count();
    assert_eq!(
        dropped,
        0,
        "updates dropped by the client's bounded channel\n{}",
        g.dump()
    );
    eprintln!(
        "flood: {answered}/300 answered after the fence, 0 twice, 0 dropped; the old leader follows at idx {}",
        follows.idx
    );
    g.assert_no_overlap();
}

/// `vaultgram login` while a leader runs (the documented re-login): the
/// leader's next save conflicts, it restarts from the new session, and
/// stopping it afterwards leaves the new session in Vault.
fn relogin_while_running_is_not_overwritten(env: &Env) {
    let mut g = Group::start(env, "relogin", 1, false);
    let leader = g.wait_single_leader(Duration::from_secs(20));
    g.wait_client_started(leader, Duration::from_secs(15));
    g.send(6001, g.alice, "/whoami");
    g.wait_reply(6001, Duration::from_secs(15));
    let (old_key, _) = stored_session(env);
    let mark = g.node(leader).events().len();
    g.login(env);
    let (new_key, _) = stored_session(env);
    assert_ne!(old_key, new_key, "login stores a new key");
    let reloaded = g.wait_event(
        leader,
        "telegram: the stored session changed (a new login); restarting from it",
        mark,
        Duration::from_secs(15),
    );
    g.wait_event(
        leader,
        "telegram client started",
        reloaded.idx,
        Duration::from_secs(15),
    );
    // Saves of the restarted client keep the new key.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        stored_session(env).0,
        new_key,
        "the running leader overwrote the new login\n{}",
        g.dump()
    );
    g.send(6002, g.alice, "/whoami");
    g.wait_reply(6002, Duration::from_secs(15));
    let pid = g.node(leader).pid;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    g.node_mut(leader)
        .proc
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM\n{}", g.dump()));
    assert_eq!(
        stored_session(env).0,
        new_key,
        "the stopping leader overwrote the new login\n{}",
        g.dump()
    );
    assert_eq!(g.replies_to(6001).len(), 1, "re-run after the reload");
    eprintln!("relogin: the leader restarted from the new login; the new key survived its saves and its stop");
}

/// SIGTERM while commands wait behind a slow one: the session stores the
/// state of the last *handled* update, so the next leader runs the rest
/// (exactly once).
fn sigterm_with_buffered_commands_hands_them_over(env: &Env) {
    let mut g = Group::start(env, "buffered", 2, false);
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let other = 1 - leader;
    g.wait_client_started(leader, Duration::from_secs(15));
    g.inbox_lines(&[
        json!({"control": "latency", "ms": 2500}),
        alice_msg(&g, 7001, "/whoami"),
        alice_msg(&g, 7002, "/whoami"),
        alice_msg(&g, 7003, "/whoami"),
    ]);
    std::thread::sleep(Duration::from_millis(800));
    let pid = g.node(leader).pid;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    g.node_mut(leader)
        .proc
        .wait_timeout(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit within 15 s of SIGTERM\n{}", g.dump()));
    g.wait_event(other, "became leader", 0, Duration::from_secs(10));
    for id in [7002, 7003] {
        let r = g.wait_reply(id, Duration::from_secs(20));
        assert_eq!(r["pid"].as_u64(), Some(g.node(other).pid as u64), "{r}");
    }
    for id in [7001, 7002, 7003] {
        assert!(
            g.replies_to(id).len() <= 1,
            "message {id} answered twice\n{}",
            g.dump()
        );
    }
    eprintln!(
        "buffered: 7001 answered by the old leader: {}; 7002 and 7003 by the new one",
        !g.replies_to(7001).is_empty()
    );
    g.assert_no_overlap();
}

/// The leader loses its lease while its client is still connecting (a
/// connect without timeout): it must stop and resign at once, never start
/// that client later, and the next leader serves.
fn fenced_while_connecting(env: &Env) {
    let mut g = Group::start(env, "connect", 3, true);
    let first = g.wait_single_leader(Duration::from_secs(20));
    g.wait_client_started(first, Duration::from_secs(15));
    std::fs::write(g.file_dir.join("connect_delay_ms"), "60000").unwrap();
    g.kill(first);
    // The next leader hangs in its connect.
    let hung = wait_for(
        Duration::from_secs(20),
        "a new leader",
        || {
            g.running()
                .into_iter()
                .find(|&i| g.node(i).first("became leader").is_some())
        },
        || g.dump(),
    );
    let mark = 0;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        g.start_of(g.node(hung).pid).is_none(),
        "the connect did not hang"
    );
    for p in &g.proxies[hung] {
        p.cut();
    }
    g.wait_event(
        hung,
        "fenced: stopping Telegram",
        mark,
        Duration::from_secs(15),
    );
    let third = 3 - first - hung;
    g.wait_event(third, "became leader", 0, Duration::from_secs(20));
    g.wait_client_started(third, Duration::from_secs(15));
    for p in &g.proxies[hung] {
        p.restore();
    }
    g.wait_event(hung, "following", mark, Duration::from_secs(30));
    g.send(8001, g.alice, "/whoami");
    let r = g.wait_reply(8001, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(g.node(third).pid as u64), "{r}");
    assert!(
        g.start_of(g.node(hung).pid).is_none(),
        "the fenced node's client started after all\n{}",
        g.dump()
    );
    g.assert_no_overlap();
}

// ---------------------------------------------------------------------------
// f) issue 20: the two-person rule in chat
// ---------------------------------------------------------------------------

/// `vaultgram ctl --socket PATH …` as our uid (alice in these configs).
pub(super) fn ctl_json(socket: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vaultgram"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "ctl: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn request_id_of(v: &Value) -> String {
    assert_eq!(v["error"]["kind"], "approval_required", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    m.strip_prefix("request ")
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string()
}

/// Requests filed on a follower's socket are announced by the leader to
/// the admin who may approve them, once, also when the leader dies while
/// sending; approval, denial and expiry each reach the requester once; an
/// admin the userbot cannot address is "not reachable" in /pending until
/// they write to it.
fn approvals_are_announced_once_across_failover(env: &Env) {
    let c = env.cluster();
    let me = vaultgram::transport::socket::user_name(unsafe { libc::getuid() }).unwrap();
    let dave_key =
        crate::common::totp::create_totp_key(env, &format!("chat-dave-{}", random_hex(3)));
    let dave_key_name = dave_key.name.clone();
    let mut g = Group::start_with(env, "approve", 2, false, |t| {
        let t = t.replacen(
            "role = \"admin\"\n",
            &format!("role = \"admin\"\nunix_user = \"{me}\"\n"),
            1,
        );
        let t = t.replace(
            "name = \"dave\"\n",
            &format!("name = \"dave\"\ntotp_key = \"{dave_key_name}\"\n"),
        );
        t.replace(
            "max_pending_per_operator = 100",
            "max_pending_per_operator = 100\nttl_secs = 25",
        )
    });
    let dave = telegram_id(&g.base_config, "dave");
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let follower = 1 - leader;
    g.wait_client_started(leader, Duration::from_secs(15));
    let fsock = g.socket(&format!("n{follower}"));
    let keys: Vec<String> = (0..4).map(|i| format!("it-chat-{}-{i}", g.hex)).collect();
    for k in &keys {
        c.root_call(
            reqwest::Method::POST,
            &format!("transit/keys/{k}"),
            Some(json!({})),
        );
    }
    let outbox_path = g.file_dir.join("outbox.jsonl");
    let to = |chat: i64, needle: &str| -> Vec<Value> {
        std::fs::read_to_string(&outbox_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["op"] == "send"
                    && v["chat"] == chat
                    && v["text"].as_str().is_some_and(|t| t.contains(needle))
            })
            .collect()
    };
    // alice has written to the userbot (her hash is cached); dave has not.
    g.inbox_lines(&[
        json!({"id": 9000, "chat": g.alice, "sender": g.alice, "users": true, "text": "hi"}),
    ]);
    // 0. Filed while dave is unreachable: /pending says so; once dave
    //    writes, the retry reaches him.
    let id0 = request_id_of(&ctl_json(&fsock, &["/transit", "rotate", &keys[0]]));
    let pending = wait_for(
        Duration::from_secs(15),
        "dave reported not reachable",
        || {
            let v = ctl_json(&fsock, &["/pending"]);
            v["data"]["not_reachable"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "dave"))
                .then_some(v)
        },
        || g.dump(),
    );
    assert!(
        pending["text"]
            .as_str()
            .unwrap()
            .contains("not reachable in Telegram"),
        "{pending}"
    );
    g.inbox_lines(&[
        json!({"id": 9001, "chat": dave, "sender": dave, "users": true, "text": "hi"}),
    ]);
    wait_for(
        Duration::from_secs(20),
        "request 0 announced to dave",
        || (to(dave, &id0).len() == 1).then_some(()),
        || g.dump(),
    );
    // dave is reachable now; bob and carol, who never wrote, are still
    // listed (the leader marks everyone it cannot address at start).
    let v = ctl_json(&fsock, &["/pending"]);
    let listed = v["data"]["not_reachable"].as_array().unwrap();
    assert!(!listed.iter().any(|x| x == "dave"), "{v}");
    assert!(listed.iter().any(|x| x == "carol"), "{v}");
    // The leader saves its session (dave's access hash) before the
    // failover: a save logged after this point, by whichever node leads.
    let marks: Vec<(usize, usize)> = g
        .running()
        .into_iter()
        .map(|i| (i, g.node(i).events().len()))
        .collect();
    wait_for(
        Duration::from_secs(20),
        "a session save after dave wrote",
        || {
            marks.iter().find(|&&(i, from)| {
                g.node(i)
                    .events()
                    .into_iter()
                    .any(|e| e.idx >= from && e.is("telegram session saved"))
            })
        },
        || g.dump(),
    );

    // 1. The leader dies while sending (each of its requests takes 3 s).
    g.inbox_lines(&[json!({"control": "latency", "ms": 3000})]);
    std::thread::sleep(Duration::from_millis(300));
    let id1 = request_id_of(&ctl_json(&fsock, &["/transit", "rotate", &keys[1]]));
    std::thread::sleep(Duration::from_millis(1500));
    // The node that leads now (under load a term can change hands): the
    // one that announced request 0.
    let sender = to(dave, &id0)[0]["pid"].as_u64().unwrap();
    let (leader, follower) = if u64::from(g.node(leader).pid) == sender {
        (leader, follower)
    } else {
        (follower, leader)
    };
    g.kill(leader);
    let announced = wait_for(
        Duration::from_secs(30),
        "request 1 announced by the new leader",
        || {
            let s = to(dave, &id1);
            (!s.is_empty()).then_some(s)
        },
        || g.dump(),
    );
    assert_eq!(
        announced[0]["pid"].as_u64(),
        Some(g.node(follower).pid as u64),
        "{}",
        announced[0]
    );
    let text = announced[0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("/approve {id1} CODE")) && text.contains(&format!("/deny {id1}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("/transit rotate {}", keys[1])) && text.contains("alice asks"),
        "{text}"
    );

    // 1b. The leader dies right after Telegram accepted a notice, before
    //     it could delete the record: the next leader sends it again with
    //     the record's random_id, which Telegram refuses as a duplicate.
    let third = g.add_node(env, false);
    g.wait_event(third, "following", 0, Duration::from_secs(20));
    let dying = follower;
    g.inbox_lines(&[json!({"control": "die_after_send"})]);
    std::thread::sleep(Duration::from_millis(300));
    let id2 = request_id_of(&ctl_json(
        &g.socket(&format!("n{third}")),
        &["/transit", "rotate", &keys[2]],
    ));
    let status = g
        .node_mut(dying)
        .proc
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the leader did not die after sending\n{}", g.dump()));
    g.killed_at[dying] = Some(now_ms());
    assert_eq!(status.code(), Some(137), "{status:?}");
    assert_eq!(to(dave, &id2).len(), 1, "the dying leader's notice is out");
    let resent = g.wait_event(third, "telegram: notice sent", 0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        to(dave, &id2).len(),
        1,
        "request {id2} announced twice across the crash\n{}",
        g.dump()
    );
    let follower = third;
    let fsock = g.socket(&format!("n{third}"));
    eprintln!("approvals: crash after sending: the new leader's resend of {id2} was refused as RANDOM_ID_DUPLICATE (logged at idx {})", resent.idx);

    // 2. Outcomes reach the requester (alice) once: approved, denied.
    let code = crate::common::totp::fresh_code(&dave_key);
    let r = crate::common::console::console_with_config(
        env,
        &g.node(follower).config,
        "dave",
        &[&format!("/approve {id0} {code}")],
    );
    r.ok_text(0);
    let r = crate::common::console::console_with_config(
        env,
        &g.node(follower).config,
        "dave",
        &[&format!("/deny {id1}")],
    );
    r.ok_text(0);
    wait_for(
        Duration::from_secs(15),
        "approval and denial told to alice",
        || {
            (to(g.alice, &format!("your request {id0}")).len() == 1
                && to(g.alice, &format!("your request {id1}")).len() == 1)
                .then_some(())
        },
        || g.dump(),
    );
    assert!(to(g.alice, &format!("your request {id0}"))[0]["text"]
        .as_str()
        .unwrap()
        .contains("approved by dave"));
    assert!(to(g.alice, &format!("your request {id1}"))[0]["text"]
        .as_str()
        .unwrap()
        .contains("denied by dave"));

    // 3. Expiry (ttl 25 s) reaches her once too.
    let id3 = request_id_of(&ctl_json(&fsock, &["/transit", "rotate", &keys[3]]));
    wait_for(
        Duration::from_secs(70),
        "expiry told to alice",
        || (to(g.alice, &format!("your request {id3}")).len() == 1).then_some(()),
        || g.dump(),
    );
    assert!(to(g.alice, &format!("your request {id3}"))[0]["text"]
        .as_str()
        .unwrap()
        .contains("expired"));

    // Once each, never twice; nothing to alice about her own filing; no
    // code anywhere.
    std::thread::sleep(Duration::from_secs(2));
    for id in [&id0, &id1, &id3] {
        assert_eq!(
            to(dave, id).len(),
            1,
            "dave told of {id} not exactly once\n{}",
            g.dump()
        );
        assert!(
            to(g.alice, &format!("approval request {id}")).is_empty(),
            "the requester was asked to approve"
        );
    }
    for (id, n) in [(&id0, 1), (&id1, 1), (&id3, 1)] {
        assert_eq!(
            to(g.alice, &format!("your request {id}")).len(),
            n,
            "outcome of {id}\n{}",
            g.dump()
        );
    }
    let all = g
        .outbox()
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !all.split(|ch: char| !ch.is_ascii_digit())
            .any(|w| w == code),
        "a TOTP code in a message"
    );
    eprintln!("approvals: 4 requests announced to dave once each (one across a kill -9 mid-send, one across a crash after sending), approval/denial/expiry told to alice once each; dave 'not reachable' until he wrote");
    g.assert_no_overlap();
}

/// Issue 29, item 5: the leader's route to Telegram swallows everything
/// (every client start of that process hangs, as a real start did for
/// 3 min 11 s). Each start gives up after `telegram.start_timeout_secs`;
/// the leader says so in `/health`, is not ready once it has been without
/// a client for twice that long, and after `max_failed_starts` hands
/// leadership over: the other replica starts its client and answers. On
/// e84a6d6 the start hung for good, the leader kept its lease, `/readyz`
/// stayed 200 and nobody else could take over.
fn hung_start_hands_over(env: &Env) {
    let me = vaultgram::transport::socket::user_name(unsafe { libc::getuid() }).unwrap();
    let g = Group::start_with(env, "hang", 2, false, |t| {
        // alice is our uid over the socket (ctl /health).
        let t = t.replacen(
            "role = \"admin\"\n",
            &format!("role = \"admin\"\nunix_user = \"{me}\"\n"),
            1,
        );
        format!("{t}\n[telegram]\nstart_timeout_secs = 3\nmax_failed_starts = 3\n")
    });
    let leader = g.wait_single_leader(Duration::from_secs(20));
    let other = 1 - leader;
    g.wait_client_started(leader, Duration::from_secs(15));
    let pid = g.node(leader).pid;
    std::fs::write(g.file_dir.join(format!("connect_hang_{pid}")), "").unwrap();
    let mark = g.node(leader).events().len();
    g.inbox_lines(&[json!({"control": "disconnect"})]);
    let hung_at = Instant::now();
    // /health on the leader says what is wrong.
    let sock = g.socket(&format!("n{leader}"));
    let last = std::cell::RefCell::new(Value::Null);
    let health = wait_for(
        Duration::from_secs(10),
        "/health naming the missing client",
        || {
            let v = ctl_json(&sock, &["/health"]);
            let t = v["text"].as_str().unwrap_or_default().to_string();
            *last.borrow_mut() = v;
            t.contains("NOT connected on the leader for").then_some(t)
        },
        || format!("last /health: {}\n{}", last.borrow(), g.dump()),
    );
    // Not ready after twice the start timeout (6 s).
    let url = format!("http://127.0.0.1:{}/readyz", g.node(leader).http);
    let ready = wait_for(
        Duration::from_secs(15),
        "/readyz 503 on the leader without a client",
        || {
            let r = reqwest::blocking::get(&url).ok()?;
            (r.status().as_u16() == 503).then(|| r.text().unwrap_or_default())
        },
        || g.dump(),
    );
    let not_ready_after = hung_at.elapsed();
    assert!(ready.contains("\"telegram\""), "{ready}");
    g.wait_event(
        leader,
        "telegram: the client failed to start 3 times in a row; handing leadership over",
        mark,
        Duration::from_secs(30),
    );
    g.wait_client_started(other, Duration::from_secs(30));
    let handed_after = hung_at.elapsed();
    g.send(8101, g.alice, "/whoami");
    let r = g.wait_reply(8101, Duration::from_secs(15));
    assert_eq!(r["pid"].as_u64(), Some(g.node(other).pid as u64), "{r}");
    g.assert_no_overlap();
    eprintln!(
        "hung start: /health said so ({health:.80}…); /readyz 503 after {} ms; the other replica answered {} ms after the route died",
        not_ready_after.as_millis(),
        handed_after.as_millis()
    );
}

/// A quorum round as operators live it (issue 32): alice files on the
/// broker's socket with a reason; dave and erin, in their Telegram chats
/// (the stand-in), are told what it does and why; dave's `/approve` in
/// chat is counted and alice and erin hear the tally; erin's completes
/// it and it runs once; alice hears who approved. The approvers' codes
/// never appear in any message sent.
fn quorum_round_in_chat(env: &Env) {
    let c = env.cluster();
    let me = vaultgram::transport::socket::user_name(unsafe { libc::getuid() }).unwrap();
    let tag = random_hex(3);
    let dave_key = crate::common::totp::create_totp_key(env, &format!("chat-q-dave-{tag}"));
    let erin_key = crate::common::totp::create_totp_key(env, &format!("chat-q-erin-{tag}"));
    let (dk, ek) = (dave_key.name.clone(), erin_key.name.clone());
    let erin: i64 = 556_677;
    let g = Group::start_with(env, "quorum", 1, false, |t| {
        let t = t.replacen(
            "role = \"admin\"\n",
            &format!("role = \"admin\"\nunix_user = \"{me}\"\n"),
            1,
        );
        let t = t.replace(
            "name = \"dave\"\n",
            &format!("name = \"dave\"\ntotp_key = \"{dk}\"\n"),
        );
        format!(
            "{t}\n[[operators]]\nname = \"erin\"\ntelegram_id = {erin}\nrole = \"admin\"\ntotp_key = \"{ek}\"\n\n[approvals.quorum]\n\"transit rotate\" = 2\n"
        )
    });
    let dave = telegram_id(&g.base_config, "dave");
    let leader = g.wait_single_leader(Duration::from_secs(20));
    g.wait_client_started(leader, Duration::from_secs(15));
    let sock = g.socket(&format!("n{leader}"));
    let key = format!("it-chat-quorum-{}", g.hex);
    c.root_call(
        reqwest::Method::POST,
        &format!("transit/keys/{key}"),
        Some(json!({})),
    );
    let outbox_path = g.file_dir.join("outbox.jsonl");
    let sent = || -> Vec<Value> {
        std::fs::read_to_string(&outbox_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["op"] == "send")
            .collect()
    };
    let to = |chat: i64, needle: &str| -> Vec<Value> {
        sent()
            .into_iter()
            .filter(|v| v["chat"] == chat && v["text"].as_str().is_some_and(|t| t.contains(needle)))
            .collect()
    };
    // Everyone has written to the userbot once (their access hashes).
    g.inbox_lines(&[
        json!({"id": 9100, "chat": g.alice, "sender": g.alice, "users": true, "text": "hi"}),
        json!({"id": 9101, "chat": dave, "sender": dave, "users": true, "text": "hi"}),
        json!({"id": 9102, "chat": erin, "sender": erin, "users": true, "text": "hi"}),
    ]);
    let filed = ctl_json(
        &sock,
        &["/transit", "rotate", "-reason=rotation drill", &key],
    );
    let id = request_id_of(&filed);
    for (who, chat) in [("dave", dave), ("erin", erin)] {
        let notice = wait_for(
            Duration::from_secs(20),
            &format!("request announced to {who}"),
            || to(chat, &format!("approval request {id}")).pop(),
            || g.dump(),
        );
        let text = notice["text"].as_str().unwrap();
        assert!(
            text.contains("(reason: rotation drill)")
                && text.contains("(needs 2 approvals)")
                && text.contains(&format!("it rotates transit key {key} from version 1 to 2")),
            "{text}"
        );
    }
    let d = crate::common::totp::fresh_code(&dave_key);
    g.inbox_lines(&[json!({"id": 9103, "chat": dave, "sender": dave, "users": true, "text": format!("/approve {id} {d}")})]);
    wait_for(
        Duration::from_secs(20),
        "dave's approval counted, alice and erin told",
        || {
            (to(
                dave,
                &format!("counted: request {id} has 1 of 2 approvals (dave)"),
            )
            .len()
                == 1
                && to(g.alice, &format!("request {id}")).iter().any(|v| {
                    v["text"]
                        .as_str()
                        .unwrap()
                        .contains("1 of 2 approvals (dave)")
                })
                && to(erin, "1 of 2 approvals (dave)").len() == 1)
                .then_some(())
        },
        || g.dump(),
    );
    assert_eq!(
        super::approvals::transit_key_version(env, &key),
        1,
        "one approval of two runs nothing"
    );
    let e = crate::common::totp::fresh_code(&erin_key);
    g.inbox_lines(&[json!({"id": 9104, "chat": erin, "sender": erin, "users": true, "text": format!("/approve {id} {e}")})]);
    wait_for(
        Duration::from_secs(20),
        "erin's approval runs it and alice hears who approved",
        || {
            (to(erin, &format!("approved {id}: ran")).len() == 1
                && to(g.alice, &format!("your request {id}")).iter().any(|v| {
                    v["text"]
                        .as_str()
                        .unwrap()
                        .contains("approved by dave, erin")
                }))
            .then_some(())
        },
        || g.dump(),
    );
    assert_eq!(
        super::approvals::transit_key_version(env, &key),
        2,
        "rotated once"
    );
    let all = std::fs::read_to_string(&outbox_path).unwrap();
    assert!(
        !all.contains(&d) && !all.contains(&e),
        "an approval code in a sent message"
    );
}
