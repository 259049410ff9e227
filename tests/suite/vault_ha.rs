//! HashiCorp Vault HA on etcd (runs only with `VAULTGRAM_IT_SERVER=vault`;
//! OpenBao here is one raft node). A second Vault node joins the same
//! etcd storage as a standby; the broker reaches both through one address
//! (a proxy standing in for the Service or load balancer in front of the
//! nodes: a connection goes to a node that accepts; a standby forwards to
//! the active node). Under a steady load of broker commands the active node
//! is killed with SIGKILL, n times: the standby takes the HA lock in etcd,
//! and the broker follows with `unavailable` only during the takeover,
//! never a wrong answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use vaultgram::dispatch::App;
use vaultgram::error::ErrorKind;
use vaultgram::transport_kind::Transport;

use super::TestFn;
use crate::common::cluster::{random_hex, vault_etcd_config, Cluster};
use crate::common::process::{free_port, Proc};
use crate::common::tcpproxy::TcpProxy;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[(
    "disruptive::vault_ha::kill9_of_the_active_node_under_load",
    kill9_of_the_active_node_under_load,
)];

const KILLS: usize = 5;

/// `sys/health` of the node on `port`: 200 active, 429 standby, 503 sealed.
fn health(c: &Cluster, port: u16) -> Option<u16> {
    c.http()
        .get(format!("https://127.0.0.1:{port}/v1/sys/health"))
        .timeout(Duration::from_secs(3))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

/// Unseals the node on `port` and waits until it is active or standby.
fn unseal_node(c: &Cluster, port: u16) {
    use secrecy::ExposeSecret;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .http()
            .put(format!("https://127.0.0.1:{port}/v1/sys/unseal"))
            .json(&json!({"key": c.unseal_key.expose_secret()}))
            .send();
        if matches!(&r, Ok(resp) if resp.status().as_u16() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "unseal of :{port}: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    while !matches!(health(c, port), Some(200) | Some(429)) {
        assert!(
            Instant::now() < deadline,
            "node :{port} neither active nor standby"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the load saw: when, and whether the answer was right, a clean
/// `unavailable`, or anything else (wrong).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Seen {
    Ok,
    Unavailable,
    Wrong,
}

/// Node 2, and the harness's shape restored when the test ends, passing or
/// not: node 2 gone, node 1 running, unsealed and active — later tests
/// share the server.
struct SecondNode<'a> {
    c: &'a Cluster,
    proc: Proc,
}

impl Drop for SecondNode<'_> {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(10));
        let c = self.c;
        if c.server_proc.lock().unwrap().is_none() {
            c.start_server();
        }
        // No assertion here (a panic in a drop during a panic aborts):
        // unseal and wait for node 1 to hold the lock, bounded.
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline && health(c, c.server_port) != Some(200) {
            if health(c, c.server_port) == Some(503) {
                use secrecy::ExposeSecret;
                let _ = c
                    .http()
                    .put(format!("https://127.0.0.1:{}/v1/sys/unseal", c.server_port))
                    .json(&json!({"key": c.unseal_key.expose_secret()}))
                    .send();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The port of the active node, waiting (bounded) while a takeover or a
/// lost lock leaves both standing by.
fn active_port(c: &Cluster, ports: [u16; 2], round: usize) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = ports.iter().find(|p| health(c, **p) == Some(200)) {
            return *p;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: no active node for 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill9_of_the_active_node_under_load(env: &Env) {
    let c = env.cluster();
    // The second node: same etcd storage, its own ports.
    let port2 = free_port();
    let cfg2 = c.path().join("server-2.hcl");
    std::fs::write(
        &cfg2,
        vault_etcd_config(&c.etcd_endpoints(), &c.path().join("tls"), port2),
    )
    .unwrap();
    let start2 = || c.spawn_server("vault-2", &cfg2, "server-2.log");
    let mut node2 = SecondNode { c, proc: start2() };
    unseal_node(c, port2);
    assert_eq!(health(c, port2), Some(429), "node 2 joins as a standby");

    // The broker reaches the nodes through one address.
    let proxy = TcpProxy::start_any(vec![
        ([127, 0, 0, 1], c.server_port).into(),
        ([127, 0, 0, 1], port2).into(),
    ]);
    let text = std::fs::read_to_string(&c.config_path).unwrap().replace(
        &format!("addr = \"{}\"", c.vault_addr()),
        &format!(
            "addr = \"{}\"\nrequest_timeout_secs = 3",
            proxy.https_endpoint()
        ),
    );
    let cfg_path = c.path().join(format!("ha-{}.toml", random_hex(3)));
    std::fs::write(&cfg_path, text).unwrap();
    let cfg = vaultgram::config::Config::load(&cfg_path, &|_| None).unwrap();
    assert!(cfg.vault.addr.contains(&proxy.port().to_string()));
    let alice = crate::common::operator(&cfg, "alice");
    let value = format!("ha-{}", random_hex(8));
    c.root_call(
        Method::POST,
        "secret/data/it/ha",
        Some(json!({"data": {"v": value}})),
    );
    let app = Arc::new(env.rt.block_on(App::start(cfg)).unwrap());

    // Steady load: one command after another, each one judged.
    // (sent, answered, what came back) per command.
    let seen: Arc<Mutex<Vec<(Instant, Instant, Seen)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (app, seen, stop, value) = (app.clone(), seen.clone(), stop.clone(), value.clone());
        let handle = env.rt.handle().clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let r = handle
                    .block_on(app.dispatch(
                        Some(&alice),
                        "alice",
                        Transport::Console,
                        "/kv get -field=v secret/it/ha",
                    ))
                    .unwrap();
                let s = match r {
                    Ok(reply) if reply.as_str() == value => Seen::Ok,
                    Err(e) if e.kind == ErrorKind::Unavailable => Seen::Unavailable,
                    _ => Seen::Wrong,
                };
                seen.lock().unwrap().push((sent, Instant::now(), s));
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let first_ok_after = |t: Instant| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some((_, answered, _)) = seen
                .lock()
                .unwrap()
                .iter()
                // Sent after the kill: an answer already in flight does
                // not count as the takeover.
                .find(|(sent, _, s)| *sent > t && *s == Seen::Ok)
            {
                return *answered - t;
            }
            assert!(
                Instant::now() < deadline,
                "no successful command 90 s after the kill"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut takeovers = Vec::new();
    for round in 0..KILLS {
        // Some successes before each kill.
        std::thread::sleep(Duration::from_secs(1));
        let active_is_1 = active_port(c, [c.server_port, port2], round) == c.server_port;
        let killed_at = Instant::now();
        if active_is_1 {
            if let Some(mut p) = c.server_proc.lock().unwrap().take() {
                p.kill();
            }
        } else {
            node2.proc.kill();
        }
        let took = first_ok_after(killed_at);
        takeovers.push(took);
        // The killed node comes back as a standby for the next round.
        if active_is_1 {
            c.start_server();
            unseal_node(c, c.server_port);
        } else {
            node2.proc = start2();
            unseal_node(c, port2);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();

    // Back to the harness's shape: node 1 active, node 2 gone.
    drop(node2);
    c.wait_stably_active(Instant::now() + Duration::from_secs(60));
    drop(proxy);

    let seen = seen.lock().unwrap();
    let count = |k: Seen| seen.iter().filter(|(_, _, s)| *s == k).count();
    let (ok, unavailable, wrong) = (
        count(Seen::Ok),
        count(Seen::Unavailable),
        count(Seen::Wrong),
    );
    let mut ms: Vec<u128> = takeovers.iter().map(|d| d.as_millis()).collect();
    ms.sort_unstable();
    eprintln!(
        "vault HA: {KILLS} kill -9 of the active node: takeover (kill → first successful command) min {} ms, median {} ms, max {} ms; {} commands: {ok} ok, {unavailable} unavailable, {wrong} wrong",
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        seen.len()
    );
    assert_eq!(wrong, 0, "a command got a wrong answer or error kind");
    assert!(ok > 10 * KILLS, "too little load to judge: {ok} successes");
}
