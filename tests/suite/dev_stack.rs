//! `scripts/dev-stack.sh`: the README's first command. Run twice in a row it
//! works both times; `down` leaves no process and no listening port. It
//! brings up the run's server (`VAULTGRAM_DEV_SERVER`): OpenBao, or
//! HashiCorp Vault on the stack's etcd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::TestFn;
use crate::common::cluster::{repo_root, Server};
use crate::common::process::{free_port, port_open, processes_mentioning};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[("dev_stack::up_twice_then_down", up_twice_then_down)];

struct Stack {
    dir: tempfile::TempDir,
    etcd_ports: [u16; 3],
    bao_port: u16,
}

impl Stack {
    fn run(&self, arg: &str) -> Output {
        self.run_with_input(arg, "")
    }

    /// Runs the script with `input` on stdin (the console reads it).
    fn run_with_input(&self, arg: &str, input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(repo_root().join("scripts/dev-stack.sh"))
            .arg(arg)
            .env("VAULTGRAM_DEV_DIR", self.state())
            .env(
                "VAULTGRAM_DEV_ETCD_PORTS",
                self.etcd_ports.map(|p| p.to_string()).join(" "),
            )
            .env("VAULTGRAM_DEV_BAO_PORT", self.bao_port.to_string())
            .env("VAULTGRAM_DEV_SERVER", Server::from_env().name())
            .env("VAULTGRAM_BIN", env!("CARGO_BIN_EXE_vaultgram"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn ports(&self) -> Vec<u16> {
        let mut p = vec![self.bao_port, self.bao_port + 1];
        for e in self.etcd_ports {
            p.extend([e, e + 1]);
        }
        p
    }
}

impl Drop for Stack {
    // A failed assertion must not leave the stack running.
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn up_twice_then_down(_env: &Env) {
    let stack = Stack {
        dir: tempfile::Builder::new()
            .prefix("vaultgram-devstack-")
            .tempdir()
            .unwrap(),
        etcd_ports: [free_port(), free_port(), free_port()],
        bao_port: free_port(),
    };
    let first = stack.run("up");
    assert!(first.status.success(), "first up: {}", show(&first));
    let cfg = stack.state().join("vaultgram.toml");
    assert!(cfg.exists());
    // The second run keeps the stack and opens the console as the admin.
    let second = stack.run_with_input("up", "/get_keys\n/whoami\n");
    assert!(second.status.success(), "second up: {}", show(&second));
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains("API_ID: 123456\nAPI_HASH: abcdef1234567890"),
        "{}",
        show(&second)
    );
    assert!(out.contains("alice"), "{}", show(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already running"),
        "second up restarted the stack: {}",
        show(&second)
    );
    // The stack works: the seeded app keys are readable with the server's
    // own CLI (`bao` or `vault`).
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "eval \"$({} env)\" && \"$1\" kv get -field=api_id secret/telegram",
            repo_root().join("scripts/dev-stack.sh").display()
        ))
        .arg("dev-stack-cli")
        .arg(Server::from_env().binary())
        .env("VAULTGRAM_DEV_DIR", stack.state())
        .env(
            "VAULTGRAM_DEV_ETCD_PORTS",
            stack.etcd_ports.map(|p| p.to_string()).join(" "),
        )
        .env("VAULTGRAM_DEV_BAO_PORT", stack.bao_port.to_string())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "123456",
        "{}",
        show(&out)
    );

    let down = stack.run("down");
    assert!(down.status.success(), "down: {}", show(&down));
    assert_no_leftovers(&stack.state(), &stack.ports());
}

fn assert_no_leftovers(state: &Path, ports: &[u16]) {
    let left = processes_mentioning(&state.display().to_string());
    assert!(left.is_empty(), "processes left after down: {left:?}");
    for p in ports {
        assert!(!port_open(*p), "port {p} still listening after down");
    }
}
