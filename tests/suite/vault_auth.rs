//! The broker's Vault identity against real OpenBao: AppRole with a
//! response-wrapped secret_id, token renewal and re-login under load,
//! per-operator child tokens, and behaviour while OpenBao is sealed or
//! restarted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use vaultgram::config::{AuthMethod, VaultConfig};
use vaultgram::error::ErrorKind;
use vaultgram::vault::auth::TokenManager;
use vaultgram::vault::kv::KvPath;
use vaultgram::vault::token::OperatorTokens;

use super::TestFn;
use crate::common::canary;
use crate::common::cluster::random_hex;
use crate::common::pki::write_private;
use crate::common::{Cluster, Env};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "vault_auth::approle_wrapped_secret_id_unwraps_once",
        wrapped_secret_id_unwraps_once,
    ),
    (
        "vault_auth::wrapped_secret_id_wrong_creation_path_refused",
        wrong_creation_path_refused,
    ),
    (
        "vault_auth::reused_secret_id_refused",
        reused_secret_id_refused,
    ),
    (
        "vault_auth::reads_survive_renewals_and_forced_relogin",
        reads_survive_renewals_and_relogin,
    ),
    (
        "vault_auth::periodic_token_is_renewed_not_relogged",
        periodic_token_renewed,
    ),
    (
        "vault_auth::child_tokens_carry_only_the_operators_policy",
        child_tokens,
    ),
    (
        "disruptive::vault_sealed_then_unsealed",
        sealed_then_unsealed,
    ),
    ("disruptive::vault_restarted", vault_restarted),
];

/// `method = "approle"` config for `role`, with the given secret_id file
/// content (a wrapping token when `wrapped`).
fn approle_config(env: &Env, role: &str, secret: &str, wrapped: bool) -> VaultConfig {
    let c = env.cluster();
    let dir = c.path().join(format!("approle-{}", random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let role_id = role_id(c, role);
    write_private(&dir.join("role_id"), role_id.as_bytes());
    write_private(&dir.join("secret_id"), secret.as_bytes());
    let mut v = env.config().vault;
    v.auth.method = AuthMethod::Approle;
    v.auth.role = Some(role.to_string());
    v.auth.role_id_file = Some(dir.join("role_id"));
    v.auth.secret_id_file = Some(dir.join("secret_id"));
    v.auth.secret_id_wrapped = wrapped;
    v.auth.token = None;
    v.auth.token_file = None;
    v
}

fn root_call(c: &Cluster, method: Method, path: &str, body: Option<Value>) -> Value {
    c.root_call(method, path, body)
}

fn role_id(c: &Cluster, role: &str) -> String {
    root_call(
        c,
        Method::GET,
        &format!("auth/approle/role/{role}/role-id"),
        None,
    )["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A root call whose response is wrapped; returns the wrapping token.
fn wrapped_call(c: &Cluster, path: &str, body: Value) -> String {
    let mut v = Value::Null;
    for _ in 0..20 {
        let resp = c
            .http()
            .post(format!("{}/v1/{path}", c.vault_addr()))
            .header("X-Vault-Token", c.root_token.expose_secret())
            .header("X-Vault-Wrap-TTL", "120s")
            .json(&body)
            .send()
            .unwrap();
        let code = resp.status().as_u16();
        v = resp.json().unwrap();
        if code != 500 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = v["wrap_info"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no wrap_info: {v}"))
        .to_string();
    canary::register(&token);
    token
}

fn secret_id(c: &Cluster, role: &str, num_uses: u64) -> String {
    let sid = root_call(
        c,
        Method::POST,
        &format!("auth/approle/role/{role}/secret-id"),
        Some(json!({"num_uses": num_uses})),
    )["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_string();
    canary::register(&sid);
    sid
}

/// An extra AppRole role with the broker's policy and short-lived tokens.
fn short_role(c: &Cluster, name: &str, settings: Value) {
    let mut body = json!({
        "token_policies": ["vaultgram-broker"],
        "token_type": "service",
        "secret_id_num_uses": 0,
        "secret_id_ttl": "1h",
    });
    for (k, v) in settings.as_object().unwrap() {
        body[k] = v.clone();
    }
    root_call(
        c,
        Method::POST,
        &format!("auth/approle/role/{name}"),
        Some(body),
    );
}

pub(super) fn err_text<T: std::fmt::Debug>(
    r: Result<T, vaultgram::vault::VaultError>,
) -> (ErrorKind, String) {
    let e = r.expect_err("expected an error");
    (e.kind(), e.to_string())
}

fn wrapped_secret_id_unwraps_once(env: &Env) {
    let c = env.cluster();
    let wrap = wrapped_call(c, "auth/approle/role/vaultgram/secret-id", json!({}));
    let cfg = approle_config(env, "vaultgram", &wrap, true);
    let mgr = env
        .rt
        .block_on(TokenManager::login(&cfg))
        .expect("first login");
    let st = mgr.status();
    assert!(
        st.policies.iter().any(|p| p == "vaultgram-broker"),
        "{:?}",
        st.policies
    );
    // Periodic token (apply.sh default): a TTL, renewable.
    assert!(st.renewable && st.ttl_remaining.is_some());
    // The same wrapping token again: refused, loudly.
    let (kind, msg) = err_text(env.rt.block_on(TokenManager::login(&cfg)));
    assert_eq!(kind, ErrorKind::Denied);
    assert!(msg.contains("already unwrapped"), "{msg}");
    assert!(
        !msg.contains(&wrap),
        "error text carries the wrapping token"
    );
}

fn wrong_creation_path_refused(env: &Env) {
    let c = env.cluster();
    // A real secret_id, but wrapped by someone through sys/wrapping/wrap.
    let sid = secret_id(c, "vaultgram", 1);
    let wrap = wrapped_call(c, "sys/wrapping/wrap", json!({"secret_id": sid}));
    let cfg = approle_config(env, "vaultgram", &wrap, true);
    let (kind, msg) = err_text(env.rt.block_on(TokenManager::login(&cfg)));
    assert_eq!(kind, ErrorKind::Denied);
    assert_eq!(
        msg,
        "vault: wrapped secret_id refused: it was created at `sys/wrapping/wrap`, expected `auth/approle/role/vaultgram/secret-id`"
    );
    assert!(!msg.contains(&sid));
    // Refused *before* unwrapping: the wrapping token is still intact.
    let (code, _) = c
        .vault_api(
            Method::POST,
            "sys/wrapping/lookup",
            None,
            Some(json!({"token": wrap})),
        )
        .unwrap();
    assert_eq!(code, 200, "the refused wrapping token was consumed");

    // A genuine secret_id of another role is refused too.
    short_role(c, "vaultgram-other", json!({}));
    let wrap = wrapped_call(c, "auth/approle/role/vaultgram-other/secret-id", json!({}));
    let cfg = approle_config(env, "vaultgram", &wrap, true);
    let (_, msg) = err_text(env.rt.block_on(TokenManager::login(&cfg)));
    assert!(
        msg.contains("created at `auth/approle/role/vaultgram-other/secret-id`"),
        "{msg}"
    );
}

fn reused_secret_id_refused(env: &Env) {
    let c = env.cluster();
    let sid = secret_id(c, "vaultgram", 1);
    let cfg = approle_config(env, "vaultgram", &sid, false);
    env.rt
        .block_on(TokenManager::login(&cfg))
        .expect("first use");
    let (kind, msg) = err_text(env.rt.block_on(TokenManager::login(&cfg)));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(!msg.contains(&sid));
}

/// Reads `secret/telegram` (the broker policy's one KV read) with the
/// manager's current token every 25 ms for `dur`; returns (reads, failures).
pub(super) fn read_loop(env: &Env, mgr: &TokenManager, dur: Duration) -> (u64, Vec<String>) {
    let telegram = KvPath::parse("secret/telegram").unwrap();
    env.rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let stop = stop.clone();
            tokio::spawn(mgr.clone().run_renewer(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }))
        };
        let reads = AtomicU64::new(0);
        let mut failures = Vec::new();
        let end = Instant::now() + dur;
        while Instant::now() < end {
            match mgr.current().kv_get(&telegram, None).await {
                Ok(s) => assert_eq!(s.data["api_id"].expose_secret(), "123456"),
                Err(e) => failures.push(e.to_string()),
            }
            reads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.store(true, Ordering::Relaxed);
        renewer.await.unwrap();
        (reads.load(Ordering::Relaxed), failures)
    })
}

fn reads_survive_renewals_and_relogin(env: &Env) {
    let c = env.cluster();
    // TTL 6 s, explicit max 15 s: renewals every 4 s, a forced re-login
    // about every 12 s (with 3 s of the old token left, so a loaded
    // machine does not turn the switch-over into failed reads).
    short_role(
        c,
        "vaultgram-short",
        json!({"token_ttl": "6s", "token_max_ttl": "15s"}),
    );
    let sid = secret_id(c, "vaultgram-short", 0);
    let cfg = approle_config(env, "vaultgram-short", &sid, false);
    let mgr = env.rt.block_on(TokenManager::login(&cfg)).unwrap();
    let (reads, failures) = read_loop(env, &mgr, Duration::from_secs(32));
    let st = mgr.status();
    eprintln!(
        "token test: {reads} reads, {} failed, {} renewals, {} re-logins",
        failures.len(),
        st.renewals,
        st.relogins
    );
    assert!(failures.is_empty(), "failed reads: {failures:?}");
    assert!(reads > 500, "only {reads} reads");
    assert!(st.renewals >= 4, "{st:?}");
    assert!(st.relogins >= 2, "{st:?}");
}

fn periodic_token_renewed(env: &Env) {
    let c = env.cluster();
    short_role(c, "vaultgram-periodic", json!({"token_period": "6s"}));
    let sid = secret_id(c, "vaultgram-periodic", 0);
    let cfg = approle_config(env, "vaultgram-periodic", &sid, false);
    let mgr = env.rt.block_on(TokenManager::login(&cfg)).unwrap();
    let (_, failures) = read_loop(env, &mgr, Duration::from_secs(14));
    let st = mgr.status();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(st.renewals >= 2, "{st:?}");
    assert_eq!(
        st.relogins, 0,
        "a periodic token never needs a re-login: {st:?}"
    );
}

fn child_tokens(env: &Env) {
    let cfg = env.config();
    let broker = env.rt.block_on(TokenManager::login(&cfg.vault)).unwrap();
    let tokens = OperatorTokens::new(broker.clone());
    for (name, policy) in [
        ("alice", "vaultgram-op-admin"),
        ("bob", "vaultgram-op-agent-bob"),
    ] {
        let op = cfg.operator_by_name(name).unwrap();
        let v = env.rt.block_on(tokens.for_operator(op)).unwrap();
        let info = env.rt.block_on(v.lookup_self()).unwrap();
        let mut policies = info.policies.clone();
        policies.sort();
        assert_eq!(
            policies,
            vec!["default".to_string(), policy.to_string()],
            "{name}"
        );
        assert_eq!(info.display_name, format!("token-vaultgram-{name}"));
        assert_eq!(info.meta.get("operator").map(String::as_str), Some(name));
        assert_eq!(
            info.meta.get("telegram_id").cloned(),
            Some(op.telegram_id.to_string())
        );
        assert!(
            info.ttl_secs <= 300 && info.ttl_secs > 0,
            "ttl {}",
            info.ttl_secs
        );
        // Cached: the same client comes back.
        let again = env.rt.block_on(tokens.for_operator(op)).unwrap();
        assert!(Arc::ptr_eq(&v, &again), "{name}: not cached");
    }
    // The broker's token revoked from outside: its children die with it;
    // the manager logs in again and the cache mints new children.
    let c = env.cluster();
    short_role(c, "vaultgram-reusable", json!({"token_ttl": "1h"}));
    let sid = secret_id(c, "vaultgram-reusable", 0);
    let broker = env
        .rt
        .block_on(TokenManager::login(&approle_config(
            env,
            "vaultgram-reusable",
            &sid,
            false,
        )))
        .unwrap();
    let tokens = OperatorTokens::new(broker.clone());
    let alice = cfg.operator_by_name("alice").unwrap();
    let before = env.rt.block_on(tokens.for_operator(alice)).unwrap();
    let accessor = env
        .rt
        .block_on(broker.current().lookup_self())
        .unwrap()
        .accessor;
    root_call(
        c,
        Method::POST,
        "auth/token/revoke-accessor",
        Some(json!({"accessor": accessor})),
    );
    let (kind, _) = err_text(env.rt.block_on(before.lookup_self()));
    assert_eq!(
        kind,
        ErrorKind::Denied,
        "a child outlived its revoked parent"
    );
    let gen = broker.generation();
    env.rt
        .block_on(broker.refresh(None))
        .expect("re-login after revocation");
    assert_eq!(broker.generation(), gen + 1);
    let after = env.rt.block_on(tokens.for_operator(alice)).unwrap();
    assert!(!Arc::ptr_eq(&before, &after));
    env.rt
        .block_on(after.lookup_self())
        .expect("new child works");
}

/// The broker's view while OpenBao is sealed: `unavailable` within the
/// request timeout, no panic; after unsealing the same manager works.
fn sealed_then_unsealed(env: &Env) {
    let c = env.cluster();
    let cfg = env.config();
    let mgr = env.rt.block_on(TokenManager::login(&cfg.vault)).unwrap();
    env.rt.block_on(mgr.current().lookup_self()).unwrap();
    root_call(c, Method::PUT, "sys/seal", None);
    let t = Instant::now();
    let (kind, _) = err_text(env.rt.block_on(mgr.current().lookup_self()));
    assert_eq!(kind, ErrorKind::Unavailable);
    assert!(
        t.elapsed() < Duration::from_secs(cfg.vault.request_timeout_secs),
        "{:?}",
        t.elapsed()
    );
    let (kind, _) = err_text(env.rt.block_on(mgr.refresh(None)));
    assert_eq!(kind, ErrorKind::Unavailable, "renewal while sealed");
    c.unseal();
    env.rt
        .block_on(mgr.current().lookup_self())
        .expect("works again after unseal");
    env.rt
        .block_on(mgr.refresh(None))
        .expect("renews again after unseal");
}

fn vault_restarted(env: &Env) {
    let c = env.cluster();
    let cfg = env.config();
    let mgr = env.rt.block_on(TokenManager::login(&cfg.vault)).unwrap();
    c.stop_server();
    let t = Instant::now();
    let (kind, _) = err_text(env.rt.block_on(mgr.current().lookup_self()));
    assert_eq!(kind, ErrorKind::Unavailable);
    assert!(t.elapsed() < Duration::from_secs(cfg.vault.request_timeout_secs));
    c.start_server();
    c.unseal();
    env.rt
        .block_on(mgr.current().lookup_self())
        .expect("works again after restart");
}
