//! The `vaultgram` binary's config handling: errors name the key, the
//! process exits non-zero before any network call, secrets are redacted.

use std::io::ErrorKind as IoKind;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use super::TestFn;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "cli::check_config_prints_effective_config_redacted",
        check_config_redacted,
    ),
    (
        "cli::invalid_config_exits_before_any_network_call",
        invalid_config_no_network,
    ),
    (
        "cli::config_errors_name_the_key",
        config_errors_name_the_key,
    ),
    ("cli::config_path_from_env", config_path_from_env),
    (
        "cli::userbot_example_config_is_valid",
        userbot_example_config_is_valid,
    ),
];

/// `userbot/vaultgram.example.toml` passes `check-config` once the files
/// it names exist (rewritten under a temp dir): the documented config
/// cannot drift from the real keys.
fn userbot_example_config_is_valid(_env: &Env) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("userbot/vaultgram.example.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().display().to_string();
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_string();
        for top in ["/etc/", "/run/", "/var/"] {
            l = l.replace(&format!("\"{top}"), &format!("\"{base}{top}"));
        }
        if !l.trim_start().starts_with('#') {
            if let Some(start) = l.find(&format!("\"{base}")) {
                let path = &l[start + 1..];
                let path = &path[..path.find('"').unwrap()];
                if !path.ends_with(".sock") {
                    let p = Path::new(path);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, "x").unwrap();
                }
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    let cfg = dir.path().join("vaultgram.toml");
    std::fs::write(&cfg, out).unwrap();
    let o = vaultgram(&["--config", cfg.to_str().unwrap(), "check-config"], &[]);
    assert!(
        o.status.success(),
        "userbot/vaultgram.example.toml: {}",
        text_of(&o.stderr)
    );
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn vaultgram(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vaultgram"));
    // A clean environment: stray VAULT_* of the developer must not leak in.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_config_redacted(env: &Env) {
    let c = env.cluster();
    let canary = "hvs.CANARY-check-config-7f3a9c";
    let broker_token = std::fs::read_to_string(c.path().join("broker-token")).unwrap();
    let cfg = c.config_path.display().to_string();
    for envs in [vec![], vec![("VAULT_TOKEN", canary)]] {
        let out = vaultgram(&["--config", &cfg, "check-config"], &envs);
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "check-config failed: {e}");
        assert!(
            o.contains(&c.vault_addr()),
            "effective config lacks vault.addr:\n{o}"
        );
        assert!(
            o.contains("<redacted>"),
            "token not shown as redacted:\n{o}"
        );
        for secret in [canary, broker_token.trim()] {
            assert!(
                !o.contains(secret) && !e.contains(secret),
                "check-config leaked a token"
            );
        }
    }
}

fn invalid_config_no_network(env: &Env) {
    let c = env.cluster();
    // A listener standing in for Vault: it must never see a connection.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    let base = std::fs::read_to_string(&c.config_path).unwrap();
    let bad = base.replace(&c.vault_addr(), &format!("http://127.0.0.1:{port}"));
    let path = c.path().join("bad-http.toml");
    std::fs::write(&path, bad).unwrap();
    let out = vaultgram(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim(),
        "error: config key `vault.addr`: http:// is refused; use https:// or set vault.dev_insecure = true"
    );
    match trap.accept() {
        Err(e) if e.kind() == IoKind::WouldBlock => {}
        other => panic!("the process connected to the configured address: {other:?}"),
    }
}

/// Rewrites the harness config and returns the one-line error.
fn error_for(c: &crate::common::Cluster, name: &str, edit: impl Fn(String) -> String) -> String {
    let base = std::fs::read_to_string(&c.config_path).unwrap();
    let path = c.path().join(format!("bad-{name}.toml"));
    std::fs::write(&path, edit(base)).unwrap();
    let out = vaultgram(&["--config", path.to_str().unwrap(), "check-config"], &[]);
    assert!(!out.status.success(), "{name}: accepted");
    assert_eq!(out.status.code(), Some(2), "{name}: exit code");
    text(&out.stderr).trim().to_string()
}

fn config_errors_name_the_key(env: &Env) {
    let c = env.cluster();
    let dir = c.path().display().to_string();
    type Edit = Box<dyn Fn(String) -> String>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "unknown-key",
            Box::new(|s| s.replacen("[vault]\n", "[vault]\nadr = \"x\"\n", 1)),
            "error: config key `vault.adr`: unknown key".into(),
        ),
        (
            "missing-file",
            Box::new(|s: String| s.replace("etcd-vaultgram-password", "no-such-password")),
            format!("error: config key `etcd.password_file`: file {dir}/no-such-password does not exist"),
        ),
        (
            "duplicate-id",
            Box::new(|s| s.replace("telegram_id = 444444", "telegram_id = 111111")),
            "error: config key `operators[1].telegram_id`: 111111 is already used by operator `alice`".into(),
        ),
        (
            "agent-without-agent",
            Box::new(|s| s.replace("agent = \"carol\"\n", "")),
            "error: config key `operators[3].agent`: required when role = \"agent\"".into(),
        ),
        (
            "etcd-http",
            Box::new(|s| s.replacen("\"https://127.0.0.1:", "\"http://127.0.0.1:", 2)),
            // The first replacement hits vault.addr, the second etcd.endpoints[0].
            "error: config key `vault.addr`: http:// is refused; use https:// or set vault.dev_insecure = true".into(),
        ),
    ];
    for (name, edit, want) in cases {
        assert_eq!(error_for(c, name, edit), want, "case {name}");
    }
    // etcd http:// on its own.
    let got = error_for(c, "etcd-http-only", |s| {
        let i = s.find("endpoints = [").unwrap();
        let (head, tail) = s.split_at(i);
        format!("{head}{}", tail.replacen("https://", "http://", 1))
    });
    assert_eq!(
        got,
        "error: config key `etcd.endpoints[0]`: http:// is refused; use https:// or set etcd.dev_insecure = true"
    );
}

fn config_path_from_env(env: &Env) {
    let c = env.cluster();
    let cfg = c.config_path.to_str().unwrap();
    let out = vaultgram(&["check-config"], &[("VAULTGRAM_CONFIG", cfg)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(cfg));
    // --config wins over the variable.
    let out = vaultgram(
        &["--config", "/nonexistent/x.toml", "check-config"],
        &[("VAULTGRAM_CONFIG", cfg)],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/x.toml"));
    let _ = Path::new(cfg);
}
