//! Benchmark (not a test) P2: broker throughput. CLIENTS tokio tasks, each
//! a `vaultgram ctl`-equivalent client on its own connection to the Unix
//! socket (the same JSON-lines protocol: one command line in, one JSON reply
//! line out), send `/kv get secret/PATH` back to back for SECONDS after a
//! one-second warm-up. Every reply must be `"ok":true` and carry VALUE.
//!
//! Prints one line: `ops_per_s=… ops=… secs=… clients=… errors=…`.
//! Run it with `bench/run.sh`, which writes the secret and starts the broker.
//!
//!   kv_throughput SOCKET PATH VALUE [SECONDS] [CLIENTS]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

struct Shared {
    counting: AtomicBool,
    stop: AtomicBool,
    ops: AtomicU64,
    errors: AtomicU64,
}

async fn client(socket: PathBuf, line: String, value: String, s: Arc<Shared>) {
    let stream = UnixStream::connect(&socket)
        .await
        .expect("is `vaultgram run` up?");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while !s.stop.load(Ordering::Relaxed) {
        w.write_all(line.as_bytes()).await.expect("socket write");
        let reply = lines
            .next_line()
            .await
            .expect("socket read")
            .expect("the broker closed the connection");
        let good = reply.contains("\"ok\":true") && reply.contains(&value);
        if s.counting.load(Ordering::Relaxed) {
            if good {
                s.ops.fetch_add(1, Ordering::Relaxed);
            } else {
                s.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !good && s.errors.load(Ordering::Relaxed) == 1 {
            eprintln!("kv_throughput: unexpected reply: {reply}");
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: kv_throughput SOCKET PATH VALUE [SECONDS] [CLIENTS]");
        std::process::exit(2);
    }
    let socket = PathBuf::from(&args[1]);
    let line = format!("/kv get secret/{}\n", args[2]);
    let value = args[3].clone();
    let secs: f64 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(10.0);
    let clients: usize = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(8);

    let s = Arc::new(Shared {
        counting: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                socket.clone(),
                line.clone(),
                value.clone(),
                s.clone(),
            ))
        })
        .collect();
    // Warm-up: connections, the operator's child token, TLS to Vault.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.counting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    s.counting.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    s.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    let ops = s.ops.load(Ordering::Relaxed);
    let errors = s.errors.load(Ordering::Relaxed);
    println!(
        "ops_per_s={:.1} ops={ops} secs={elapsed:.2} clients={clients} errors={errors}",
        ops as f64 / elapsed
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
