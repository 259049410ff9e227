//! Drives `vaultgram console --json` as an operator would: lines in on
//! stdin, one JSON object per reply out. Everything it printed (stdout and
//! stderr, i.e. the broker's logs) is kept for the canary search.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::Env;

/// The output of one console run.
pub struct ConsoleRun {
    /// One parsed JSON reply per input command.
    pub replies: Vec<Value>,
    pub stderr: String,
    pub exit_code: Option<i32>,
}

impl ConsoleRun {
    /// The text of reply `i`, panicking with the reply if it failed.
    pub fn ok_text(&self, i: usize) -> String {
        let r = &self.replies[i];
        assert_eq!(r["ok"], true, "reply {i} failed: {r}");
        r["text"].as_str().unwrap().to_string()
    }

    /// Asserts one reply per input line (shows the broker's stderr if not).
    pub fn one_per(self, lines: &[&str]) -> ConsoleRun {
        assert_eq!(
            self.replies.len(),
            lines.len(),
            "one reply per line expected for {lines:?}; stderr:\n{}",
            self.stderr
        );
        self
    }

    /// The error message of reply `i` (empty if it succeeded).
    pub fn message(&self, i: usize) -> String {
        self.replies[i]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The error kind of reply `i`, panicking if it succeeded.
    pub fn err_kind(&self, i: usize) -> String {
        let r = &self.replies[i];
        assert_eq!(r["ok"], false, "reply {i} succeeded: {r}");
        r["error"]["kind"].as_str().unwrap().to_string()
    }
}

fn output_dir(env: &Env) -> PathBuf {
    let d = env.cluster().path().join("console-output");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every file console runs wrote their output to (for the canary search).
pub fn output_files(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("console-output"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs `vaultgram console --as <operator> --json` over the harness config
/// with `lines` on stdin.
pub fn console(env: &Env, operator: &str, lines: &[&str]) -> ConsoleRun {
    console_with_config(env, &env.cluster().config_path, operator, lines)
}

pub fn console_with_config(
    env: &Env,
    config: &std::path::Path,
    operator: &str,
    lines: &[&str],
) -> ConsoleRun {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vaultgram"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("VAULTGRAM_LOG", "info,vaultgram=debug")
        .args(["--log-format", "json", "--config"])
        .arg(config)
        .args(["console", "--as", operator, "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = output_dir(env);
    std::fs::write(dir.join(format!("{n}-{operator}.out")), &stdout).unwrap();
    std::fs::write(dir.join(format!("{n}-{operator}.err")), &stderr).unwrap();
    let replies = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nstderr: {stderr}"))
        })
        .collect();
    ConsoleRun {
        replies,
        stderr,
        exit_code: out.status.code(),
    }
}
