//! etcd TLS and RBAC as bootstrapped by `etcd/bootstrap-rbac.sh`.

use vaultgram::config::EtcdConfig;
use vaultgram::error::ErrorKind;
use vaultgram::etcd::Etcd;

use super::TestFn;
use crate::common::pki::Ca;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "etcd::rejects_client_without_certificate",
        rejects_client_without_certificate,
    ),
    (
        "etcd::rejects_certificate_from_another_ca",
        rejects_certificate_from_another_ca,
    ),
    (
        "etcd::vaultgram_user_confined_to_its_prefix",
        vaultgram_user_confined_to_its_prefix,
    ),
    (
        "etcd::cert_cn_alone_is_confined_too",
        cert_cn_alone_is_confined_too,
    ),
    (
        "etcd::three_members_with_peer_tls_and_auth",
        three_members_with_peer_tls_and_auth,
    ),
];

/// Connects and tries one write; the error kind if it fails.
fn try_put(env: &Env, cfg: &EtcdConfig, key: &str) -> Result<(), ErrorKind> {
    env.rt.block_on(async {
        let etcd = Etcd::connect(cfg).await.map_err(|e| e.kind())?;
        etcd.put(key, "x").await.map_err(|e| e.kind())
    })
}

fn rejects_client_without_certificate(env: &Env) {
    let mut cfg = env.config().etcd;
    // Sanity: the same config *with* the certificate works, so a failure
    // below is the missing certificate and nothing else.
    try_put(env, &cfg, "/vaultgram/it/with-cert").expect("control: write with certificate");
    cfg.cert = None;
    cfg.key = None;
    let r = try_put(env, &cfg, "/vaultgram/it/no-cert");
    assert_eq!(
        r,
        Err(ErrorKind::Unavailable),
        "a client without certificate got in"
    );
}

fn rejects_certificate_from_another_ca(env: &Env) {
    let c = env.cluster();
    let rogue = Ca::new("rogue CA");
    let dir = c.path().join("rogue");
    std::fs::create_dir_all(&dir).unwrap();
    // Same CN as the real broker certificate: only the issuer differs.
    let leaf = rogue.write_leaf(&dir, "vaultgram", "vaultgram", 30);
    let mut cfg = env.config().etcd;
    cfg.cert = Some(leaf.cert);
    cfg.key = Some(leaf.key);
    let r = try_put(env, &cfg, "/vaultgram/it/rogue");
    assert_eq!(
        r,
        Err(ErrorKind::Unavailable),
        "a certificate from another CA got in"
    );
}

fn vaultgram_user_confined_to_its_prefix(env: &Env) {
    let cfg = env.config().etcd;
    assert!(
        cfg.password_file.is_some(),
        "harness config logs in as the vaultgram user"
    );
    try_put(env, &cfg, "/vaultgram/it/inside").expect("write inside /vaultgram/");
    for key in ["/vault/core/x", "/other", "/vaultgramx", "/"] {
        assert_eq!(
            try_put(env, &cfg, key),
            Err(ErrorKind::Denied),
            "vaultgram user could write {key}"
        );
    }
    // Reads outside are denied too.
    let r = env.rt.block_on(async {
        let etcd = Etcd::connect(&cfg).await.unwrap();
        etcd.get("/vault/core/x").await.map_err(|e| e.kind())
    });
    assert_eq!(r, Err(ErrorKind::Denied));
    // Control: root may write outside, so the denials above are RBAC.
    let out = env.cluster().etcdctl(&["put", "/other", "1"], true);
    assert!(
        out.status.success(),
        "root put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cert_cn_alone_is_confined_too(env: &Env) {
    // Without a password the certificate's CN (vaultgram) is the user.
    let mut cfg = env.config().etcd;
    cfg.password_file = None;
    try_put(env, &cfg, "/vaultgram/it/cn").expect("CN user inside its prefix");
    assert_eq!(try_put(env, &cfg, "/vault/cn"), Err(ErrorKind::Denied));
}

fn three_members_with_peer_tls_and_auth(env: &Env) {
    let c = env.cluster();
    let out = c.etcdctl(&["member", "list", "-w", "json"], true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        for url in m["peerURLs"].as_array().unwrap() {
            assert!(
                url.as_str().unwrap().starts_with("https://"),
                "peer URL {url}"
            );
        }
    }
    // Auth is on: the root certificate without root's password may not
    // list users... unless its CN is root, which is the point of CN auth;
    // so check with an anonymous-CN certificate instead.
    let (cert, key) = c.ca.issue("nobody", 1);
    let dir = c.path().join("nobody");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), cert).unwrap();
    std::fs::write(dir.join("k.pem"), key).unwrap();
    let out = std::process::Command::new("etcdctl")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("ETCDCTL_API", "3")
        .args(["--command-timeout=5s", "--dial-timeout=2s"])
        .arg(format!("--endpoints={}", c.etcd_endpoints()[0]))
        .arg(format!("--cacert={}", c.ca_path.display()))
        .arg(format!("--cert={}", dir.join("c.pem").display()))
        .arg(format!("--key={}", dir.join("k.pem").display()))
        .args(["put", "/vaultgram/x", "1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a CN without an etcd user could write"
    );
}
