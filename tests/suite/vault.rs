//! OpenBao as the harness runs it: TLS only, initialised, unsealed, and
//! configured by `vault-policies/apply.sh`.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use vaultgram::config::AuthMethod;
use vaultgram::vault::Vault;

use super::TestFn;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "vault::listener_refuses_plain_http",
        listener_refuses_plain_http,
    ),
    (
        "vault::listener_rejects_clients_that_do_not_trust_the_ca",
        untrusted_client_fails,
    ),
    (
        "vault::apply_sh_configures_and_is_idempotent",
        apply_sh_configures_and_is_idempotent,
    ),
    ("vault::broker_token_from_config", broker_token_from_config),
];

fn listener_refuses_plain_http(env: &Env) {
    let c = env.cluster();
    // Control: over TLS the same request is answered.
    let (code, body) = c.vault_api(Method::GET, "sys/health", None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    // Plain HTTP to the same port: no Vault answer, only Go's TLS refusal.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.server_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.contains("\"initialized\""),
        "plain HTTP got a Vault answer: {text}"
    );
    assert!(
        text.starts_with("HTTP/1.0 400") || text.is_empty(),
        "unexpected answer to plain HTTP: {text}"
    );
    // And reqwest speaking http:// fails the same way.
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{}/v1/sys/health", c.server_port));
    if let Ok(resp) = r {
        assert_eq!(resp.status().as_u16(), 400);
    }
}

fn untrusted_client_fails(env: &Env) {
    let c = env.cluster();
    let client = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/v1/sys/health", c.vault_addr()))
        .send();
    assert!(
        r.is_err(),
        "a client without the test CA accepted OpenBao's certificate"
    );
}

fn apply_sh_configures_and_is_idempotent(env: &Env) {
    let c = env.cluster();
    let root = Some(&c.root_token);
    // Second run (the harness made the first): must succeed again.
    let out = c.apply_sh().output().unwrap();
    assert!(
        out.status.success(),
        "second apply.sh run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(secrecy::ExposeSecret::expose_secret(&c.root_token)),
        "apply.sh printed the token"
    );

    let (_, v) = c
        .vault_api(Method::GET, "sys/policies/acl?list=true", root, None)
        .unwrap();
    let policies: Vec<&str> = v["data"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for p in [
        "vaultgram-broker",
        "vaultgram-op-admin",
        "vault-operator",
        "vaultgram-op-agent-bob",
        "vaultgram-op-agent-carol",
    ] {
        assert!(
            policies.contains(&p),
            "policy {p} missing from {policies:?}"
        );
    }
    let (_, mounts) = c.vault_api(Method::GET, "sys/mounts", root, None).unwrap();
    assert_eq!(mounts["data"]["secret/"]["type"], "kv");
    assert_eq!(mounts["data"]["secret/"]["options"]["version"], "2");
    assert_eq!(mounts["data"]["transit/"]["type"], "transit");
    assert_eq!(mounts["data"]["totp/"]["type"], "totp");
    let (_, auths) = c.vault_api(Method::GET, "sys/auth", root, None).unwrap();
    assert_eq!(auths["data"]["approle/"]["type"], "approle");
    let (code, key) = c
        .vault_api(Method::GET, "transit/keys/vaultgram", root, None)
        .unwrap();
    assert_eq!(code, 200, "{key}");
    // Idempotent: the transit key was not re-created (still version 1).
    assert_eq!(key["data"]["latest_version"], 1);
    let (code, role) = c
        .vault_api(
            Method::GET,
            "auth/token/roles/vaultgram-operator",
            root,
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{role}");
    let (code, _) = c
        .vault_api(Method::GET, "auth/approle/role/vaultgram", root, None)
        .unwrap();
    assert_eq!(code, 200);

    // A bad agent name is refused before anything changes.
    let out = c
        .apply_sh()
        .env("VAULTGRAM_AGENTS", "dan ../evil")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "apply.sh accepted agent name ../evil"
    );
    let (code, _) = c
        .vault_api(
            Method::GET,
            "sys/policies/acl/vaultgram-op-agent-dan",
            root,
            None,
        )
        .unwrap();
    assert_eq!(code, 404, "apply.sh half-applied a refused agent list");
}

fn broker_token_from_config(env: &Env) {
    let cfg = env.config();
    assert_eq!(cfg.vault.auth.method, AuthMethod::Token);
    let token: SecretString = cfg.vault.auth.token.clone().expect("token from token_file");
    let vault = Vault::with_token(&cfg.vault, &token).unwrap();
    let (health, info) = env.rt.block_on(async {
        (
            vault.health().await.unwrap(),
            vault.lookup_self().await.unwrap(),
        )
    });
    assert!(health.initialized && !health.sealed);
    assert!(
        info.policies.iter().any(|p| p == "vaultgram-broker"),
        "{:?}",
        info.policies
    );
    assert!(!info.policies.iter().any(|p| p == "root"));
    assert!(!format!("{vault:?}").contains(secrecy::ExposeSecret::expose_secret(&token)));
}
