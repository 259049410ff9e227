//! `vaultgram run` (Unix-socket server) and `vaultgram ctl`: the peer's
//! uid decides the operator, the socket is 0660, SIGTERM shuts down in
//! order.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::TestFn;
use crate::common::process::Proc;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "socket::run_ctl_peercred_and_sigterm",
        run_ctl_peercred_and_sigterm,
    ),
    ("socket::unseen_expiry_is_audited", unseen_expiry_is_audited),
    (
        "socket::revoked_shared_leases_are_replaced",
        revoked_shared_leases_are_replaced,
    ),
];

/// The harness config text with `[http] listen` on `port` and, when
/// given, its own etcd `prefix` (its own election, audit trail…).
pub fn on_port(text: &str, port: u16, prefix: Option<&str>) -> String {
    let listen = "listen = \"127.0.0.1:0\"";
    assert!(text.contains(listen), "no [http] listen in the config");
    let text = text.replace(listen, &format!("listen = \"127.0.0.1:{port}\""));
    match prefix {
        Some(p) => {
            assert!(text.contains("prefix = \"/vaultgram/\""), "no etcd prefix");
            text.replace("prefix = \"/vaultgram/\"", &format!("prefix = \"{p}\""))
        }
        None => text,
    }
}

/// A `vaultgram run` on its own socket, with `alice` mapped to our uid.
pub struct Broker {
    pub proc: Proc,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start(env: &Env, name: &str) -> Broker {
        Self::start_with(env, name, |t| t)
    }

    /// Like `start`, with the config text passed through `edit`.
    pub fn start_with(env: &Env, name: &str, edit: impl Fn(String) -> String) -> Broker {
        Self::start_with_before(env, name, edit, |_| {})
    }

    /// Like `start_with`; `before` runs with the config path after the
    /// config is written and before `run` starts.
    pub fn start_with_before(
        env: &Env,
        name: &str,
        edit: impl Fn(String) -> String,
        before: impl FnOnce(&Path),
    ) -> Broker {
        Self::start_full(env, name, edit, before, &[])
    }

    /// Like `start_with_before`, with extra environment variables (the
    /// environment is otherwise cleared).
    pub fn start_full(
        env: &Env,
        name: &str,
        edit: impl Fn(String) -> String,
        before: impl FnOnce(&Path),
        vars: &[(&str, String)],
    ) -> Broker {
        let c = env.cluster();
        // World-traversable, so a test can connect as another uid.
        let dir = tempfile::Builder::new()
            .prefix("vaultgram-sock-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("vaultgram.sock");
        let me = vaultgram::transport::socket::user_name(unsafe { libc::getuid() }).unwrap();
        let base = std::fs::read_to_string(&c.config_path).unwrap();
        let text = base
            .replace(
                &format!("socket = \"{}/vaultgram.sock\"", c.path().display()),
                &format!("socket = \"{}\"", socket.display()),
            )
            .replacen(
                "role = \"admin\"\n",
                &format!("role = \"admin\"\nunix_user = \"{me}\"\n"),
                1,
            );
        assert!(
            text.contains(&socket.display().to_string()),
            "socket path not replaced"
        );
        let config = c.path().join(format!("run-{name}.toml"));
        std::fs::write(&config, edit(text)).unwrap();
        let out_dir = c.path().join("console-output");
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vaultgram"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("VAULTGRAM_LOG", "info,vaultgram=debug")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(["--log-format", "json", "--config"])
            .arg(&config)
            .arg("run");
        before(&config);
        let mut proc = Proc::spawn(
            &format!("run-{name}"),
            cmd,
            &out_dir.join(format!("run-{name}.err")),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline && !proc.exited(),
                "run did not open its socket:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            proc,
            config,
            socket,
            dir,
        }
    }

    /// `vaultgram ctl [--json] -` with `line` on stdin: how a command that
    /// carries a secret is given (ctl refuses it in argv).
    pub fn ctl_line(&self, json: bool, line: &str) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vaultgram"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .arg("--config")
            .arg(&self.config)
            .arg("ctl");
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vaultgram"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .arg("--config")
            .arg(&self.config)
            .arg("ctl")
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sends one line to the socket as `uid` (python3 from /usr/bin, since the
/// test binary's files are not readable by other users).
fn send_as(uid: u32, socket: &Path, line: &str) -> Output {
    Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); \
             s.sendall(sys.argv[2].encode()+b'\\n'); s.shutdown(socket.SHUT_WR); \
             print(s.makefile().readline().strip())",
        ])
        .arg(socket)
        .arg(line)
        .uid(uid)
        .gid(uid)
        .current_dir("/")
        .output()
        .unwrap()
}

fn run_ctl_peercred_and_sigterm(env: &Env) {
    let mut b = Broker::start(env, "ctl");
    // The socket is created 0660.
    let mode = std::fs::metadata(&b.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    // Our uid is alice's unix_user: the seeded app keys come back.
    let out = b.ctl(&["/get_keys"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "API_ID: 123456\nAPI_HASH: abcdef1234567890\n"
    );
    // A secret in argv (visible to every local user) is refused by ctl
    // before anything is sent; on stdin it goes through.
    let pw = crate::common::canary::plant("ctl-argv");
    let path = format!(
        "secret/it-ctl-argv-{}",
        crate::common::cluster::random_hex(3)
    );
    let out = b.ctl(&["/kv", "put", &path, &format!("password={pw}")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("vaultgram ctl -"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains(&pw));
    // So is a break-glass line: it carries its author's TOTP code.
    let out = b.ctl(&[
        "/transit",
        "rotate",
        "-break-glass",
        "-reason=drill",
        "-code=123456",
        "k",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = b.ctl(&["--json", "/kv", "get", &path]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not_found", "sent anyway: {v}");
    let out = b.ctl_line(true, &format!("/kv put {path} password={pw}"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // Quoting survives the trip: ctl re-quotes words with spaces.
    let out = b.ctl(&["--json", "/kv", "get", "secret/../x"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid", "{v}");
    assert_eq!(out.status.code(), Some(1));

    // Another uid: no operator maps to it — refused, nothing executed.
    std::fs::set_permissions(&b.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = send_as(65534, &b.socket, "/get_keys");
    let reply = text(&out.stdout);
    assert!(
        reply.contains("\"denied\"") && reply.contains("uid 65534"),
        "{reply} {}",
        text(&out.stderr)
    );
    assert!(!reply.contains("123456"));

    // One connection, many commands: more bytes than the 1 MiB the old
    // framing allowed per connection, then an over-long line and one that
    // is not UTF-8 — each gets its reply and the connection goes on.
    {
        use std::io::{BufRead, BufReader, Write};
        let s = std::os::unix::net::UnixStream::connect(&b.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let filler = format!("/nope {}\n", "a".repeat(16_000));
        let mut input = filler.repeat(70).into_bytes();
        input.extend(format!("/nope {}\n", "b".repeat(20_000)).as_bytes());
        input.extend(b"\xff\xfe\n/get_keys\n");
        // Written by a thread: the replies are read meanwhile.
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let sent = w.write_all(&input);
            let _ = w.shutdown(std::net::Shutdown::Write);
            sent
        });
        let replies: Vec<String> = BufReader::new(&s).lines().map_while(Result::ok).collect();
        let sent = writer.join().unwrap();
        assert_eq!(
            replies.len(),
            73,
            "write: {sent:?}; last replies: {:?}",
            replies.iter().rev().take(2).collect::<Vec<_>>()
        );
        assert!(
            replies[..70].iter().all(|r| r.contains("unknown command")),
            "{}",
            replies[0]
        );
        assert!(replies[70].contains("20006 bytes long"), "{}", replies[70]);
        assert!(replies[71].contains("not UTF-8"), "{}", replies[71]);
        assert!(replies[72].contains("123456"), "{}", replies[72]);
    }

    // SIGTERM: stop intake, finish, exit 0, socket file gone.
    let pid = b.proc_pid();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = b
        .proc
        .wait_timeout(Duration::from_secs(15))
        .expect("run did not exit after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        b.proc.log_text()
    );
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(!b.socket.exists(), "socket file left behind");
    let log = b.proc.log_text();
    assert!(
        log.contains("SIGTERM: shutting down") && log.contains("\"stopped\""),
        "{log}"
    );
    let _ = &b.dir;
}

impl Broker {
    fn proc_pid(&self) -> u32 {
        self.proc.pid().expect("running")
    }
}

/// A request nobody approves is audited as expired by `run` itself.
fn unseen_expiry_is_audited(env: &Env) {
    // Validate, then gate: the key exists, so the request is filed.
    env.cluster().root_call(
        reqwest::Method::POST,
        "transit/keys/it-sock-expiry",
        Some(serde_json::json!({})),
    );
    let b = Broker::start_with(env, "expiry", |t| {
        t.replace("[approvals]\n", "[approvals]\nttl_secs = 10\n")
    });
    let out = b.ctl(&["--json", "/transit", "rotate", "it-sock-expiry"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "approval_required", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    let id = msg.split_whitespace().nth(1).unwrap().to_string();
    // ttl 10 s, sweep every 5 s: recorded within ~15 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let out = b.ctl(&["/audit", "50"]);
        let text = text(&out.stdout);
        if text
            .lines()
            .any(|l| l.contains(&id) && l.contains("expired"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no expired record for {id}:\n{text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The shared leases of the approvals log and of the notification queue,
/// revoked under a running broker (by hand, or lost with an etcd restore):
/// the broker still caches both, and its next request must replace both.
/// (Filing once retried with a fresh log lease only, and failed on the
/// dead queue lease.)
fn revoked_shared_leases_are_replaced(env: &Env) {
    let c = env.cluster();
    let key = format!("it-sock-lease-{}", crate::common::cluster::random_hex(4));
    c.root_call(
        reqwest::Method::POST,
        &format!("transit/keys/{key}"),
        Some(serde_json::json!({})),
    );
    let prefix = format!(
        "/vaultgram/lease-{}/",
        crate::common::cluster::random_hex(4)
    );
    let b = Broker::start_with(env, "lease", |t| {
        assert!(t.contains("prefix = \"/vaultgram/\""), "no etcd prefix");
        t.replace(
            "prefix = \"/vaultgram/\"",
            &format!("prefix = \"{prefix}\""),
        )
    });
    let file = || -> String {
        let out = b.ctl(&["--json", "/transit", "rotate", &key]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("not JSON: {}", text(&out.stdout)));
        assert_eq!(v["error"]["kind"], "approval_required", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        msg.split_whitespace().nth(1).unwrap().to_string()
    };
    let keys = |p: &str| -> Vec<String> {
        let out = c.etcdctl(&["get", "--prefix", "--keys-only", p], true);
        assert!(out.status.success(), "{out:?}");
        text(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let first = file();
    // dave, the other admin, was told: the queue's lease exists too.
    assert_eq!(keys(&format!("{prefix}notify/q/")).len(), 1);
    for name in ["approvals-log", "notify"] {
        let out = c.etcdctl(
            &[
                "get",
                &format!("{prefix}leases/{name}"),
                "--print-value-only",
            ],
            true,
        );
        let meta = text(&out.stdout);
        let id: i64 = meta
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no {name} lease: {out:?}"));
        let out = c.etcdctl(&["lease", "revoke", &format!("{id:x}")], true);
        assert!(out.status.success(), "revoke {name}: {out:?}");
    }
    // The revoke took the first request's log entry and notice with it.
    assert!(keys(&format!("{prefix}approvals/log/{first}")).is_empty());
    assert!(keys(&format!("{prefix}notify/q/")).is_empty());
    let second = file();
    assert_eq!(
        keys(&format!("{prefix}approvals/log/{second}")).len(),
        1,
        "the new request has its log entry"
    );
    assert_eq!(
        keys(&format!("{prefix}notify/q/")).len(),
        1,
        "dave is told of the new request"
    );
    // Taking it writes the log on the new lease as well.
    let out = b.ctl(&["--json", "/deny", &second]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let _ = &b.dir;
}
