//! Benchmark (not a test) P2/P3: CPU per command and memory under load.
//! CLIENTS tokio tasks, each a `vaultgram ctl`-equivalent client on its own
//! connection to the Unix socket (one command line in, one JSON reply line
//! out), send COUNT `/kv get secret/PATH` in all, back to back. Every reply
//! must be `"ok":true` and carry VALUE.
//!
//! The broker's CPU is read from `/proc/BROKER_PID/stat` (utime + stime)
//! before and after; its VmRSS after. With VAULT_ADDR CA_FILE TOKEN_FILE,
//! the same COUNT reads are then made with bare vaultrs (CLIENTS tasks, a
//! service token carrying `vaultgram-op-admin`, like the broker's child
//! tokens), and this process's own CPU for them is read with `getrusage`:
//! the floor any Rust client pays for the read itself.
//!
//! Prints one line of `key=value` pairs:
//! `ops_per_s broker_cpu_us broker_rss_kb ops errors [vaultrs_cpu_us vaultrs_ops_per_s]`.
//!
//!   kv_throughput SOCKET PATH VALUE COUNT CLIENTS BROKER_PID [VAULT_ADDR CA_FILE TOKEN_FILE]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// utime + stime of PID in µs (`/proc/PID/stat` fields 14 and 15).
fn proc_cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("broker pid");
    // The command name (field 2) may hold spaces: split after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000 / hz
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// This process's user + system CPU in µs.
fn self_cpu_us() -> u64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

async fn client(socket: PathBuf, line: String, value: String, left: Arc<AtomicU64>) -> u64 {
    let stream = UnixStream::connect(&socket)
        .await
        .expect("is `vaultgram run` up?");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut errors = 0;
    while left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        w.write_all(line.as_bytes()).await.expect("socket write");
        let reply = lines
            .next_line()
            .await
            .expect("socket read")
            .expect("the broker closed the connection");
        if !(reply.contains("\"ok\":true") && reply.contains(&value)) {
            if errors == 0 {
                eprintln!("kv_throughput: unexpected reply: {reply}");
            }
            errors += 1;
        }
    }
    errors
}

async fn bare(vault: Arc<VaultClient>, path: String, value: String, left: Arc<AtomicU64>) -> u64 {
    let mut errors = 0;
    while left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        let r: Result<std::collections::HashMap<String, String>, _> =
            vaultrs::kv2::read(&*vault, "secret", &path).await;
        if !matches!(r, Ok(v) if v.get("value") == Some(&value)) {
            errors += 1;
        }
    }
    errors
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: kv_throughput SOCKET PATH VALUE COUNT CLIENTS BROKER_PID [VAULT_ADDR CA_FILE TOKEN_FILE]");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let path = args[2].clone();
    let line = format!("/kv get secret/{path}\n");
    let value = args[3].clone();
    let count: u64 = args[4].parse().unwrap();
    let clients: usize = args[5].parse().unwrap();
    let pid: u32 = args[6].parse().unwrap();

    let left = Arc::new(AtomicU64::new(count));
    let cpu0 = proc_cpu_us(pid);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                socket.clone(),
                line.clone(),
                value.clone(),
                left.clone(),
            ))
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        errors += t.await.expect("client task");
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_us(pid) - cpu0;
    print!(
        "ops_per_s={:.1} broker_cpu_us={:.1} broker_rss_kb={} ops={count} errors={errors}",
        count as f64 / secs,
        cpu as f64 / count as f64,
        rss_kb(pid)
    );

    if let [addr, ca, token_file] = &args[7..] {
        let token = std::fs::read_to_string(token_file)
            .unwrap()
            .trim()
            .to_string();
        let vault = Arc::new(
            VaultClient::new(
                VaultClientSettingsBuilder::default()
                    .address(addr)
                    .token(token)
                    .ca_certs(vec![ca.clone()])
                    .verify(true)
                    .build()
                    .unwrap(),
            )
            .unwrap(),
        );
        // Warm-up: connections and TLS sessions, as the broker's are.
        let warm = Arc::new(AtomicU64::new(clients as u64 * 5));
        for _ in 0..clients {
            bare(vault.clone(), path.clone(), value.clone(), warm.clone()).await;
        }
        let left = Arc::new(AtomicU64::new(count));
        let cpu0 = self_cpu_us();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                tokio::spawn(bare(
                    vault.clone(),
                    path.clone(),
                    value.clone(),
                    left.clone(),
                ))
            })
            .collect();
        for t in tasks {
            errors += t.await.expect("vaultrs task");
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = self_cpu_us() - cpu0;
        print!(
            " vaultrs_cpu_us={:.1} vaultrs_ops_per_s={:.1}",
            cpu as f64 / count as f64,
            count as f64 / secs
        );
    }
    println!();
    if errors > 0 {
        std::process::exit(1);
    }
}
