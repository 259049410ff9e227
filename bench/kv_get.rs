//! Benchmark (not a test): `/kv get` through the dispatcher over the Unix
//! socket vs a bare vaultrs read of the same secret, in one process, against
//! the dev stack. Prints p50/p99 of both and their ratio (goal ≤ 1.10).
//!
//! Run it with `bench/run.sh`, which starts the dev stack and `vaultgram run`.
//!
//!   kv_get VAULT_ADDR CA_FILE ROOT_TOKEN_FILE SOCKET [ROUNDS] [PER_ROUND]

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

const PATH: &str = "bench/kv-get";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: kv_get VAULT_ADDR CA_FILE ROOT_TOKEN_FILE SOCKET [ROUNDS] [PER_ROUND]");
        std::process::exit(2);
    }
    let (addr, ca, token_file, socket) = (&args[1], &args[2], &args[3], &args[4]);
    let rounds: usize = args.get(5).map(|s| s.parse().unwrap()).unwrap_or(20);
    let per_round: usize = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(50);
    let token = std::fs::read_to_string(token_file)
        .unwrap()
        .trim()
        .to_string();

    let vault = VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .ca_certs(vec![ca.clone()])
            .verify(true)
            .build()
            .unwrap(),
    )
    .unwrap();
    let data = std::collections::HashMap::from([("value", "benchmark-value")]);
    vaultrs::kv2::set(&vault, "secret", PATH, &data)
        .await
        .unwrap();
    // The baseline reads with a token of the same kind the broker uses: a
    // service token carrying vaultgram-op-admin (root skips Vault's ACL
    // evaluation and would make Vault itself look faster).
    let mut req = vaultrs::api::token::requests::CreateTokenRequestBuilder::default();
    req.policies(vec!["vaultgram-op-admin".to_string()])
        .ttl("1h");
    let admin = vaultrs::token::new(&vault, Some(&mut req)).await.unwrap();
    let vault = VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(addr)
            .token(admin.client_token)
            .ca_certs(vec![ca.clone()])
            .verify(true)
            .build()
            .unwrap(),
    )
    .unwrap();

    let stream = UnixStream::connect(socket)
        .await
        .expect("is `vaultgram run` up?");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let line = format!("/kv get secret/{PATH}\n");

    let mut broker = Vec::new();
    let mut bare = Vec::new();
    // Warm-up (TLS sessions, child token, caches), then interleaved rounds
    // so drift on the machine hits both sides alike.
    for round in 0..=rounds {
        for _ in 0..per_round {
            let t = Instant::now();
            w.write_all(line.as_bytes()).await.unwrap();
            let reply = lines.next_line().await.unwrap().unwrap();
            let d = t.elapsed();
            assert!(reply.contains("\"ok\":true"), "{reply}");
            if round > 0 {
                broker.push(d);
            }
        }
        for _ in 0..per_round {
            let t = Instant::now();
            let v: std::collections::HashMap<String, String> =
                vaultrs::kv2::read(&vault, "secret", PATH).await.unwrap();
            let d = t.elapsed();
            assert_eq!(v["value"], "benchmark-value");
            if round > 0 {
                bare.push(d);
            }
        }
    }
    broker.sort();
    bare.sort();
    let (b50, b99) = (pct(&broker, 0.5), pct(&broker, 0.99));
    let (v50, v99) = (pct(&bare, 0.5), pct(&bare, 0.99));
    println!("| measure | n | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "| /kv get via socket + dispatcher | {} | {:.3} | {:.3} |",
        broker.len(),
        ms(b50),
        ms(b99)
    );
    println!(
        "| bare vaultrs kv2::read, admin-policy token | {} | {:.3} | {:.3} |",
        bare.len(),
        ms(v50),
        ms(v99)
    );
    println!(
        "| ratio (goal ≤ 1.10) | | {:.2} | {:.2} |",
        b50.as_secs_f64() / v50.as_secs_f64(),
        b99.as_secs_f64() / v99.as_secs_f64()
    );
}
