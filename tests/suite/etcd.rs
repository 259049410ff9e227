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
    (
        "etcd::vault_and_vaultgram_users_cannot_read_each_other",
        users_cannot_read_each_other,
    ),
    (
        "etcd::a_snapshot_holds_no_secret",
        a_snapshot_holds_no_secret,
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
    let out = c.etcdctl_one(
        &dir.join("c.pem"),
        &dir.join("k.pem"),
        None,
        &["put", "/vaultgram/x", "1"],
    );
    assert!(
        !out.status.success(),
        "a CN without an etcd user could write"
    );
}

/// `etcdctl` against one member as the harness's certificate `stem` and
/// etcd user `user`.
fn etcdctl_as(
    env: &Env,
    stem: &str,
    user: &str,
    password_file: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let c = env.cluster();
    let tls = c.path().join("tls");
    c.etcdctl_one(
        &tls.join(format!("{stem}.pem")),
        &tls.join(format!("{stem}-key.pem")),
        Some((user, password_file)),
        args,
    )
}

/// Vault's storage (`/vault/`, user `vault`) and the broker's state
/// (`/vaultgram/`, user `vaultgram`) are closed to each other, both ways,
/// by etcd's RBAC — with the real users, certificates and passwords.
fn users_cannot_read_each_other(env: &Env) {
    let c = env.cluster();
    // Something of each side exists (on HashiCorp Vault, its own keys).
    let put = c.etcdctl(&["put", "/vault/it-rbac/probe", "v"], true);
    assert!(put.status.success(), "{put:?}");
    let put = c.etcdctl(&["put", "/vaultgram/it-rbac/probe", "v"], true);
    assert!(put.status.success(), "{put:?}");
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let sides = [
        ("vault", &c.etcd_vault_password, "/vault/", "/vaultgram/"),
        (
            "vaultgram",
            &c.etcd_vaultgram_password,
            "/vaultgram/",
            "/vault/",
        ),
    ];
    for (user, password, own, other) in sides {
        // Inside its own prefix: allowed.
        let mine = format!("{own}it-rbac/probe");
        let o = etcdctl_as(env, user, user, password, &["get", &mine]);
        assert!(
            o.status.success() && text(&o).contains("probe"),
            "{user}: {}",
            text(&o)
        );
        // Across: denied, for a single key, the whole prefix, and a write.
        let theirs = format!("{other}it-rbac/probe");
        let write = format!("{other}it-rbac/x");
        for args in [
            &["get", theirs.as_str()][..],
            &["get", "--prefix", other],
            &["put", write.as_str(), "y"],
        ] {
            let o = etcdctl_as(env, user, user, password, args);
            assert!(
                !o.status.success() && text(&o).contains("permission denied"),
                "{user} user {args:?}: {}",
                text(&o)
            );
        }
    }
    // Vault's own keys too (on HashiCorp Vault they are there).
    let o = etcdctl_as(
        env,
        "vaultgram",
        "vaultgram",
        &c.etcd_vaultgram_password,
        &["get", "--prefix", "/vault/core/"],
    );
    assert!(
        !o.status.success() && text(&o).contains("permission denied"),
        "{}",
        text(&o)
    );
}

/// An etcd snapshot (what a backup of Vault on etcd is) holds none of the
/// secrets that went through the broker: Vault's barrier encrypts its
/// storage, and the broker never writes a value to etcd. On HashiCorp Vault
/// the snapshot must hold Vault's own keys too, or it proves nothing.
fn a_snapshot_holds_no_secret(env: &Env) {
    use crate::common::console::console;
    let c = env.cluster();
    let kv = crate::common::canary::plant("snapshot-kv");
    let pw = crate::common::canary::plant("snapshot-panel");
    let text = crate::common::canary::plant("snapshot-transit");
    let lines = [
        format!("/kv put secret/it/snapshot v={kv}"),
        format!("/panel add it-snap marzban https://snap.example.com/ ops {pw}"),
        format!("/transit encrypt it-snapshot {text}"),
        "/mtproto issue 9901".to_string(),
        "/agent add it-snap-agent".to_string(),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = console(env, "alice", &lines).one_per(&lines);
    for i in 0..lines.len() {
        assert_eq!(r.replies[i]["ok"], true, "{}", r.replies[i]);
    }
    // The generated secrets (MTProto, agent token) are canaries too.
    for t in [r.ok_text(3), r.ok_text(4)] {
        for w in t.split_whitespace().filter(|w| {
            w.len() >= 32
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            crate::common::canary::register(w);
        }
    }
    let dir = c.path().join(format!(
        "it-snapshot-{}",
        crate::common::cluster::random_hex(3)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = super::telegram::etcd_snapshot(env, &dir);
    assert!(bytes.len() > 4096, "snapshot of {} bytes", bytes.len());
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    if c.server == crate::common::cluster::Server::Vault {
        assert!(
            contains(b"/vault/core/"),
            "the snapshot holds none of Vault's storage"
        );
        assert!(
            contains(b"/vault/logical/"),
            "the snapshot holds no secrets engine data"
        );
    }
    assert!(
        contains(b"/vaultgram/audit/"),
        "the snapshot holds no broker state"
    );
    for canary in crate::common::canary::all() {
        assert!(
            !contains(canary.as_bytes()),
            "canary {canary} in the etcd snapshot"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
