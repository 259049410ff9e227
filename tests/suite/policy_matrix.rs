//! The policy matrix: for every vaultgram policy, what Vault itself allows
//! and denies, asked with `sys/capabilities` (table `CASES`) and proved by
//! real calls (table `calls()`), against the harness's OpenBao over TLS.
//!
//! Tokens are obtained the way production obtains them:
//! - the broker logs in with AppRole (role_id + a response-wrapped,
//!   single-use secret_id issued by a `vault-operator` token);
//! - every operator's child token is minted by the *broker's* token through
//!   the token role `vaultgram-operator`, with the operator in display name
//!   and metadata;
//! - the `vault-operator` token is made with root.
//!
//! The child tokens are then used directly against Vault: no broker code
//! runs, so every "denied" below is Vault's ACL, not a broker check.
//!
//! Why both tables: `sys/capabilities` answers for a path with a trailing
//! slash as if the slash were not there, but a real `DELETE` on
//! `…/telegram-session/` is checked as written, and KV v2 then applies it to
//! the session (this let an admin delete the session until
//! `vaultgram-op-admin` denied the `telegram-session/*` forms too).
//!
//! KV data: the seeds live under `vaultgram/agents/{bob,carol}` and
//! `*/pm-*` names used by no other test; `telegram` and
//! `vaultgram/telegram-session` are only written if absent (`cas=0`), and
//! writes that prove access to them use a check-and-set version that cannot
//! match, so nothing is overwritten.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::TestFn;
use crate::common::cluster::{repo_root, AGENTS};
use crate::common::{canary, Cluster, Env};
use Who::{Admin as A, Bob, Broker as B, Carol as C, DefaultOnly as D, Operator as O};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "policy_matrix::operator_tokens_are_minted_by_the_broker_through_the_role",
        tokens_minted_through_the_role,
    ),
    ("policy_matrix::capabilities_table", capabilities_table),
    ("policy_matrix::real_calls_table", real_calls_table),
    (
        "policy_matrix::vault_operator_can_rerun_apply_sh",
        vault_operator_can_rerun_apply_sh,
    ),
];

const ROLE_PATH: &str = "auth/token/create/vaultgram-operator";

/// `VAULTGRAM_POLICY_MATRIX_VERBOSE=1` prints every row, not just mismatches.
fn verbose() -> bool {
    std::env::var_os("VAULTGRAM_POLICY_MATRIX_VERBOSE").is_some()
}

// ---------------------------------------------------------------------------
// Who
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    /// The broker's own token (AppRole login): `vaultgram-broker`.
    Broker,
    /// alice's child token: `vaultgram-op-admin`.
    Admin,
    /// bob's child token: `vaultgram-op-agent-bob`.
    Bob,
    /// carol's child token: `vaultgram-op-agent-carol`.
    Carol,
    /// A human with the Vault CLI: `vault-operator` (made with root).
    Operator,
    /// A child minted through the role without any policy: `default` only.
    DefaultOnly,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Who::Broker => "broker",
            Who::Admin => "admin(alice)",
            Who::Bob => "agent bob",
            Who::Carol => "agent carol",
            Who::Operator => "vault-operator",
            Who::DefaultOnly => "default-only",
        })
    }
}

const ALL_WHO: [Who; 6] = [
    Who::Broker,
    Who::Admin,
    Who::Bob,
    Who::Carol,
    Who::Operator,
    Who::DefaultOnly,
];

struct Tokens {
    broker: SecretString,
    admin: SecretString,
    bob: SecretString,
    carol: SecretString,
    operator: SecretString,
    default_only: SecretString,
}

impl Tokens {
    fn get(&self, who: Who) -> &SecretString {
        match who {
            Who::Broker => &self.broker,
            Who::Admin => &self.admin,
            Who::Bob => &self.bob,
            Who::Carol => &self.carol,
            Who::Operator => &self.operator,
            Who::DefaultOnly => &self.default_only,
        }
    }

    /// Revokes the broker token, and with it every child it minted.
    fn revoke(self, c: &Cluster) {
        let (code, v) = api(
            c,
            Method::POST,
            "auth/token/revoke-self",
            Some(&self.broker),
            None,
        );
        assert_eq!(code, 204, "broker revoke-self: {v}");
        let (code, _) = api(
            c,
            Method::GET,
            "auth/token/lookup-self",
            Some(&self.bob),
            None,
        );
        assert_eq!(code, 403, "bob's child token survived its parent");
    }
}

fn api(
    c: &Cluster,
    method: Method,
    path: &str,
    token: Option<&SecretString>,
    body: Option<Value>,
) -> (u16, Value) {
    c.vault_api(method, path, token, body)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The broker's production login: a `vault-operator` reads the role_id and
/// issues a response-wrapped single-use secret_id; the broker unwraps it
/// with the wrapping token alone and logs in with AppRole.
fn broker_login(c: &Cluster, operator: &SecretString) -> SecretString {
    let (code, v) = api(
        c,
        Method::GET,
        "auth/approle/role/vaultgram/role-id",
        Some(operator),
        None,
    );
    assert_eq!(code, 200, "role-id: {v}");
    let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
    let (code, v) = c
        .vault_api_with_headers(
            Method::POST,
            "auth/approle/role/vaultgram/secret-id",
            Some(operator),
            None,
            &[("X-Vault-Wrap-TTL", "60s")],
        )
        .unwrap();
    assert_eq!(code, 200, "wrapped secret-id: {v}");
    assert!(v["data"].is_null(), "secret_id returned unwrapped");
    assert_eq!(
        v["wrap_info"]["creation_path"], "auth/approle/role/vaultgram/secret-id",
        "{v}"
    );
    let wrapping = SecretString::from(v["wrap_info"]["token"].as_str().unwrap().to_string());
    let (code, v) = api(
        c,
        Method::POST,
        "sys/wrapping/unwrap",
        Some(&wrapping),
        None,
    );
    assert_eq!(code, 200, "unwrap secret_id");
    let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
    canary::register(&secret_id);
    canary::register(wrapping.expose_secret());
    let (code, again) = api(
        c,
        Method::POST,
        "sys/wrapping/unwrap",
        Some(&wrapping),
        None,
    );
    assert_ne!(code, 200, "a wrapping token unwrapped twice: {again}");
    let login = json!({"role_id": role_id, "secret_id": secret_id});
    let (code, v) = api(
        c,
        Method::POST,
        "auth/approle/login",
        None,
        Some(login.clone()),
    );
    assert_eq!(code, 200, "approle login");
    let mut policies: Vec<&str> = v["auth"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    policies.sort();
    assert_eq!(policies, ["default", "vaultgram-broker"], "broker login");
    let token = SecretString::from(v["auth"]["client_token"].as_str().unwrap().to_string());
    let (code, _) = api(c, Method::POST, "auth/approle/login", None, Some(login));
    assert_eq!(
        code, 400,
        "the secret_id is single-use, a second login worked"
    );
    token
}

/// What the broker sends for one operator.
struct MintRequest<'a> {
    operator: &'a str,
    telegram_id: &'a str,
    policies: &'a [&'a str],
}

/// Mints an operator's child token with the broker token, through the role,
/// exactly as the broker does, and checks what Vault made of it.
fn mint(c: &Cluster, broker: &SecretString, m: &MintRequest) -> SecretString {
    let body = json!({
        "policies": m.policies,
        "ttl": "5m",
        "display_name": m.operator,
        "meta": {"operator": m.operator, "telegram_id": m.telegram_id},
    });
    let (code, v) = api(c, Method::POST, ROLE_PATH, Some(broker), Some(body));
    assert_eq!(code, 200, "broker minting a child for {}: {v}", m.operator);
    let token = SecretString::from(v["auth"]["client_token"].as_str().unwrap().to_string());

    let (code, v) = api(c, Method::GET, "auth/token/lookup-self", Some(&token), None);
    assert_eq!(code, 200, "lookup-self of {}'s child: {v}", m.operator);
    let d = &v["data"];
    let mut got: Vec<&str> = d["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    got.sort();
    let mut want: Vec<&str> = m.policies.iter().copied().chain(["default"]).collect();
    want.sort();
    want.dedup();
    let who = m.operator;
    assert_eq!(got, want, "{who}'s child token carries other policies");
    let display = d["display_name"].as_str().unwrap();
    assert!(display.contains(who), "{who}: display_name {display}");
    assert_eq!(
        d["meta"],
        json!({"operator": who, "telegram_id": m.telegram_id}),
        "{who}: token metadata"
    );
    let ttl = d["ttl"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 300, "{who}: ttl {ttl}s, want <= 5m");
    assert_eq!(d["creation_ttl"], 300, "{who}: creation_ttl");
    assert!(
        d["identity_policies"]
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "{who}: the child inherits identity policies: {}",
        d["identity_policies"]
    );
    assert_eq!(d["orphan"], false, "{who}: child token is an orphan");
    assert_eq!(d["type"], "service", "{who}: token type");
    assert_eq!(d["renewable"], true, "{who}: renewable");
    assert_eq!(d["role"], "vaultgram-operator", "{who}: role");
    assert_eq!(d["path"], ROLE_PATH, "{who}: creation path");
    token
}

/// The operators of the harness config: name -> telegram id.
fn operator_ids(env: &Env) -> BTreeMap<String, String> {
    env.config()
        .operators
        .iter()
        .map(|o| (o.name.clone(), o.telegram_id.to_string()))
        .collect()
}

fn obtain_tokens(env: &Env) -> Tokens {
    let c = env.cluster();
    let ids = operator_ids(env);
    let operator = c.create_token(&["vault-operator"], "1h");
    let broker = broker_login(c, &operator);
    let child = |name: &str, policies: &[&str]| {
        mint(
            c,
            &broker,
            &MintRequest {
                operator: name,
                telegram_id: &ids[name],
                policies,
            },
        )
    };
    let admin = child("alice", &["vaultgram-op-admin"]);
    let bob = child("bob", &["vaultgram-op-agent-bob"]);
    let carol = child("carol", &["vaultgram-op-agent-carol"]);
    // A create request naming no policy gets `default` only, never the
    // admin policy (the role's allowed_policies is empty on purpose).
    let default_only = child("dave", &[]);
    Tokens {
        broker,
        admin,
        bob,
        carol,
        operator,
        default_only,
    }
}

// ---------------------------------------------------------------------------
// Test 1: the child tokens themselves
// ---------------------------------------------------------------------------

fn tokens_minted_through_the_role(env: &Env) {
    let c = env.cluster();
    let t = obtain_tokens(env); // asserts every child's lookup-self

    // The harness's own broker token (used by the broker config) carries
    // exactly the policies the matrix tests as "broker".
    let file = std::fs::read_to_string(c.path().join("broker-token")).unwrap();
    let file = SecretString::from(file.trim().to_string());
    let (code, v) = api(c, Method::GET, "auth/token/lookup-self", Some(&file), None);
    assert_eq!(code, 200, "harness broker token: {v}");
    let mut policies: Vec<&str> = v["data"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    policies.sort();
    assert_eq!(policies, ["default", "vaultgram-broker"]);

    // A longer ttl than the role's explicit max is cut to 1 h.
    let (code, v) = api(
        c,
        Method::POST,
        ROLE_PATH,
        Some(&t.broker),
        Some(json!({"policies": ["vaultgram-op-agent-bob"], "ttl": "48h",
                     "explicit_max_ttl": "48h", "display_name": "bob"})),
    );
    assert_eq!(code, 200, "{v}");
    let dur = v["auth"]["lease_duration"].as_u64().unwrap();
    assert!(dur <= 3600, "child token lives {dur}s, role max is 1h");

    // Orphans cannot be had through the role either: refused, or ignored.
    let (code, v) = api(
        c,
        Method::POST,
        ROLE_PATH,
        Some(&t.broker),
        Some(json!({"policies": ["vaultgram-op-agent-bob"], "ttl": "5m", "no_parent": true})),
    );
    if code == 200 {
        let child = SecretString::from(v["auth"]["client_token"].as_str().unwrap().to_string());
        let (_, l) = api(c, Method::GET, "auth/token/lookup-self", Some(&child), None);
        assert_eq!(l["data"]["orphan"], false, "broker minted an orphan");
    } else {
        assert_eq!(code, 400, "no_parent through the role: {v}");
    }

    // Children die with the broker token that minted them.
    let broker2 = broker_login(c, &t.operator);
    let ids = operator_ids(env);
    let child = mint(
        c,
        &broker2,
        &MintRequest {
            operator: "carol",
            telegram_id: &ids["carol"],
            policies: &["vaultgram-op-agent-carol"],
        },
    );
    let (code, _) = api(
        c,
        Method::POST,
        "auth/token/revoke-self",
        Some(&broker2),
        None,
    );
    assert_eq!(code, 204);
    let (code, _) = api(c, Method::GET, "auth/token/lookup-self", Some(&child), None);
    assert_eq!(code, 403, "child outlived the broker token that minted it");

    t.revoke(c);
}

// ---------------------------------------------------------------------------
// Test 2: sys/capabilities
// ---------------------------------------------------------------------------

struct Case {
    who: Who,
    path: &'static str,
    /// The exact `sys/capabilities` answer, sorted.
    caps: &'static [&'static str],
}

const fn case(who: Who, path: &'static str, caps: &'static [&'static str]) -> Case {
    Case { who, path, caps }
}

const DENY: &[&str] = &["deny"];
const CRUD: &[&str] = &["create", "delete", "patch", "read", "update"];
const CRUDL: &[&str] = &["create", "delete", "list", "read", "update"];
/// Metadata for admins: read, list, delete (`/kv metadata delete`, gated);
/// no writes (max_versions or delete_version_after would destroy versions).
const META: &[&str] = &["delete", "list", "read"];
const R: &[&str] = &["read"];
const U: &[&str] = &["update"];
const L: &[&str] = &["list"];
const RL: &[&str] = &["list", "read"];
const CU: &[&str] = &["create", "update"];

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- vaultgram-broker ---------------------------------------------------
    case(B, "auth/token/create/vaultgram-operator", U),
    case(B, "auth/token/create", DENY),
    case(B, "auth/token/create-orphan", DENY),
    case(B, "auth/token/create/some-other-role", DENY),
    case(B, "auth/token/roles/vaultgram-operator", DENY),
    case(B, "auth/token/lookup", DENY),
    case(B, "auth/token/lookup-accessor", DENY),
    case(B, "auth/token/revoke", DENY),
    // A suspension revokes the operator's child tokens by accessor.
    case(B, "auth/token/revoke-accessor", U),
    case(B, "auth/token/lookup-self", R),
    case(B, "auth/token/renew-self", U),
    case(B, "auth/token/revoke-self", U),
    case(B, "sys/capabilities-self", U),
    case(B, "sys/capabilities", DENY),
    case(B, "sys/policy/vaultgram-broker", DENY),
    case(B, "sys/policy/x", DENY),
    case(B, "sys/policies/acl/vaultgram-broker", DENY),
    case(B, "sys/policies/acl/vaultgram-op-agent-bob", DENY),
    case(B, "sys/policies/acl/x", DENY),
    case(B, "sys/mounts", DENY),
    case(B, "sys/mounts/secret", DENY),
    case(B, "sys/auth/approle", DENY),
    case(B, "sys/audit", DENY),
    case(B, "auth/approle/role/vaultgram/secret-id", DENY),
    case(B, "auth/approle/role/vaultgram", DENY),
    case(B, "secret/data/telegram", R),
    case(B, "secret/metadata/telegram", DENY),
    case(B, "secret/data/vaultgram/telegram-session", &["create", "read", "update"]),
    case(B, "secret/metadata/vaultgram/telegram-session", R),
    case(B, "secret/subkeys/vaultgram/telegram-session", DENY),
    case(B, "secret/delete/vaultgram/telegram-session", DENY),
    case(B, "secret/undelete/vaultgram/telegram-session", DENY),
    case(B, "secret/destroy/vaultgram/telegram-session", DENY),
    case(B, "secret/data/vaultgram/agents/bob", DENY),
    case(B, "secret/data/vaultgram/agents/carol", DENY),
    case(B, "secret/data/vaultgram/mtproto/carol/u1", DENY),
    case(B, "secret/data/vaultgram/mtproto/admin/u1", DENY),
    case(B, "secret/data/vaultgram/panels/p1", DENY),
    case(B, "secret/data/vaultgram/panels-by-agent/bob/p1", DENY),
    case(B, "secret/data/vaultgram/panels-by-agent/carol/p1", DENY),
    case(B, "secret/metadata/", DENY),
    case(B, "secret/config", DENY),
    case(B, "transit/encrypt/vaultgram", U),
    case(B, "transit/decrypt/vaultgram", U),
    case(B, "transit/encrypt/other", DENY),
    case(B, "transit/decrypt/other", DENY),
    case(B, "transit/rewrap/vaultgram", DENY),
    case(B, "transit/datakey/plaintext/vaultgram", DENY),
    case(B, "transit/keys/vaultgram", DENY),
    case(B, "transit/keys/vaultgram/rotate", DENY),
    case(B, "transit/keys/vaultgram/config", DENY),
    case(B, "transit/export/encryption-key/vaultgram", DENY),
    case(B, "totp/code/alice", U),
    case(B, "totp/keys/alice", DENY),
    case(B, "sys/wrapping/wrap", U),
    case(B, "sys/wrapping/lookup", U),
    case(B, "sys/wrapping/unwrap", U),
    case(B, "sys/wrapping/rewrap", DENY),
    // ---- vaultgram-op-admin (alice) -----------------------------------------
    case(A, "secret/data/telegram", CRUD),
    case(A, "secret/metadata/telegram", META),
    case(A, "secret/data/vaultgram/agents/bob", CRUD),
    case(A, "secret/data/vaultgram/agents/carol", CRUD),
    case(A, "secret/data/vaultgram/mtproto/carol/u1", CRUD),
    case(A, "secret/data/vaultgram/mtproto/admin/u1", CRUD),
    case(A, "secret/data/vaultgram/panels/p1", CRUD),
    case(A, "secret/data/vaultgram/panels-by-agent/carol/p1", CRUD),
    case(A, "secret/metadata/", META),
    case(A, "secret/metadata/vaultgram/panels-by-agent/carol/p1", META),
    case(A, "secret/delete/vaultgram/panels/p1", U),
    case(A, "secret/undelete/vaultgram/panels/p1", U),
    case(A, "secret/destroy/vaultgram/panels/p1", U),
    case(A, "secret/subkeys/vaultgram/panels/p1", R),
    case(A, "secret/config", R),
    case(A, "secret/data/vaultgram/telegram-session", DENY),
    case(A, "secret/subkeys/vaultgram/telegram-session", DENY),
    case(A, "secret/metadata/vaultgram/telegram-session", R),
    case(A, "secret/delete/vaultgram/telegram-session", DENY),
    case(A, "secret/undelete/vaultgram/telegram-session", DENY),
    case(A, "secret/destroy/vaultgram/telegram-session", DENY),
    // No "…/telegram-session/" rows: sys/capabilities drops a trailing slash
    // and answers for the path without it, while a real DELETE on the path
    // with the slash is checked as written (and KV v2 then applies it to the
    // session). Those are covered by real calls in `calls()`.
    case(A, "transit/encrypt/vaultgram", CU),
    case(A, "transit/encrypt/mykey", CU),
    case(A, "transit/decrypt/mykey", U),
    case(A, "transit/decrypt/vaultgram", DENY),
    case(A, "transit/datakey/plaintext/vaultgram", DENY),
    case(A, "transit/datakey/plaintext/mykey", U),
    case(A, "transit/datakey/wrapped/vaultgram", U),
    case(A, "transit/rewrap/vaultgram", U),
    case(A, "transit/keys", L),
    case(A, "transit/keys/vaultgram", RL),
    case(A, "transit/keys/vaultgram/rotate", U),
    case(A, "transit/export/encryption-key/vaultgram", DENY),
    case(A, "transit/backup/vaultgram", DENY),
    case(A, "sys/wrapping/wrap", U),
    case(A, "sys/wrapping/lookup", U),
    case(A, "sys/wrapping/unwrap", U),
    case(A, "sys/wrapping/rewrap", DENY),
    case(A, "sys/policy/x", DENY),
    case(A, "sys/policies/acl/x", DENY),
    case(A, "sys/policies/acl/vaultgram-op-admin", DENY),
    case(A, "sys/mounts/secret", DENY),
    case(A, "auth/token/create", DENY),
    case(A, "auth/token/create-orphan", DENY),
    case(A, "auth/token/create/vaultgram-operator", DENY),
    case(A, "auth/token/roles/vaultgram-operator", DENY),
    case(A, "auth/approle/role/vaultgram/secret-id", DENY),
    case(A, "totp/code/alice", DENY),
    case(A, "totp/keys/alice", DENY),
    case(A, "auth/token/lookup-self", R),
    case(A, "sys/capabilities-self", U),
    // ---- vaultgram-op-agent-bob -------------------------------------------
    case(Bob, "secret/data/vaultgram/agents/bob", R),
    case(Bob, "secret/metadata/vaultgram/agents/bob", R),
    case(Bob, "secret/data/vaultgram/agents/carol", DENY),
    case(Bob, "secret/metadata/vaultgram/agents/carol", DENY),
    case(Bob, "secret/metadata/vaultgram/agents/", DENY),
    case(Bob, "secret/data/vaultgram/agents/bob2", DENY),
    case(Bob, "secret/data/vaultgram/agents/bob/x", DENY),
    case(Bob, "secret/data/vaultgram/mtproto/bob/u1", CRUD),
    case(Bob, "secret/metadata/vaultgram/mtproto/bob/", L),
    case(Bob, "secret/metadata/vaultgram/mtproto/bob/u1", RL),
    case(Bob, "secret/delete/vaultgram/mtproto/bob/u1", U),
    case(Bob, "secret/undelete/vaultgram/mtproto/bob/u1", DENY),
    case(Bob, "secret/config", R),
    case(Bob, "secret/destroy/vaultgram/mtproto/bob/u1", DENY),
    case(Bob, "secret/data/vaultgram/mtproto/carol/u1", DENY),
    case(Bob, "secret/metadata/vaultgram/mtproto/carol/", DENY),
    case(Bob, "secret/metadata/vaultgram/mtproto/carol/u1", DENY),
    case(Bob, "secret/delete/vaultgram/mtproto/carol/u1", DENY),
    case(Bob, "secret/data/vaultgram/mtproto/admin/u1", DENY),
    case(Bob, "secret/data/vaultgram/mtproto/bob2/u1", DENY),
    case(Bob, "secret/metadata/vaultgram/mtproto/", DENY),
    case(Bob, "secret/data/vaultgram/panels/p1", DENY),
    case(Bob, "secret/metadata/vaultgram/panels/", DENY),
    case(Bob, "secret/data/vaultgram/panels-by-agent/bob/p1", R),
    case(Bob, "secret/metadata/vaultgram/panels-by-agent/bob/", L),
    case(Bob, "secret/metadata/vaultgram/panels-by-agent/bob/p1", RL),
    case(Bob, "secret/data/vaultgram/panels-by-agent/carol/p1", DENY),
    case(Bob, "secret/metadata/vaultgram/panels-by-agent/carol/", DENY),
    case(Bob, "secret/data/telegram", DENY),
    case(Bob, "secret/metadata/telegram", DENY),
    case(Bob, "secret/data/vaultgram/telegram-session", DENY),
    case(Bob, "secret/metadata/vaultgram/telegram-session", DENY),
    case(Bob, "secret/subkeys/vaultgram/telegram-session", DENY),
    case(Bob, "secret/delete/vaultgram/telegram-session", DENY),
    case(Bob, "secret/destroy/vaultgram/telegram-session", DENY),
    case(Bob, "secret/metadata/", DENY),
    case(Bob, "transit/encrypt/vaultgram", DENY),
    case(Bob, "transit/decrypt/vaultgram", DENY),
    case(Bob, "totp/code/alice", DENY),
    case(Bob, "sys/wrapping/wrap", U),
    case(Bob, "sys/wrapping/lookup", U),
    case(Bob, "sys/wrapping/unwrap", U),
    case(Bob, "sys/wrapping/rewrap", DENY),
    case(Bob, "sys/policy/vaultgram-op-agent-bob", DENY),
    case(Bob, "sys/policies/acl/vaultgram-op-agent-bob", DENY),
    case(Bob, "auth/token/create", DENY),
    case(Bob, "auth/token/create/vaultgram-operator", DENY),
    case(Bob, "auth/token/lookup-self", R),
    // ---- vaultgram-op-agent-carol (the mirror image) -------------------------
    case(C, "secret/data/vaultgram/agents/carol", R),
    case(C, "secret/data/vaultgram/agents/bob", DENY),
    case(C, "secret/data/vaultgram/mtproto/carol/u1", CRUD),
    case(C, "secret/data/vaultgram/mtproto/bob/u1", DENY),
    case(C, "secret/metadata/vaultgram/mtproto/bob/", DENY),
    case(C, "secret/data/vaultgram/panels-by-agent/carol/p1", R),
    case(C, "secret/data/vaultgram/panels-by-agent/bob/p1", DENY),
    case(C, "secret/data/vaultgram/panels/p1", DENY),
    case(C, "secret/data/telegram", DENY),
    case(C, "secret/data/vaultgram/telegram-session", DENY),
    case(C, "sys/policies/acl/vaultgram-op-agent-carol", DENY),
    // ---- vault-operator (human CLI) ----------------------------------------
    case(O, "sys/policies/acl/x", CRUDL),
    case(O, "sys/policy/x", &["create", "delete", "read", "update"]),
    case(O, "sys/mounts/secret", &["create", "delete", "read", "sudo", "update"]),
    case(O, "sys/auth/approle", &["create", "delete", "read", "sudo", "update"]),
    case(O, "auth/token/roles/vaultgram-operator", CRUDL),
    case(O, "auth/approle/role/vaultgram/secret-id", CRUDL),
    case(O, "auth/token/create", DENY),
    case(O, "auth/token/create/vaultgram-operator", DENY),
    case(O, "totp/keys/alice", CRUDL),
    case(O, "totp/code/alice", DENY),
    case(O, "transit/keys/vaultgram", &["create", "list", "read", "update"]),
    case(O, "transit/encrypt/vaultgram", DENY),
    case(O, "transit/decrypt/vaultgram", DENY),
    case(O, "transit/export/encryption-key/vaultgram", DENY),
    case(O, "secret/data/telegram", &["create", "patch", "read", "update"]),
    case(O, "secret/metadata/telegram", R),
    case(O, "secret/config", &["read", "update"]),
    case(O, "secret/data/vaultgram/telegram-session", DENY),
    case(O, "secret/metadata/vaultgram/telegram-session", DENY),
    case(O, "secret/destroy/vaultgram/telegram-session", DENY),
    case(O, "secret/data/vaultgram/agents/bob", DENY),
    case(O, "secret/data/vaultgram/panels/p1", DENY),
    case(O, "sys/audit", &["read", "sudo"]),
    // ---- a child minted with no policy: "default" alone ----------------------
    case(D, "secret/data/telegram", DENY),
    case(D, "secret/data/vaultgram/agents/bob", DENY),
    case(D, "secret/data/vaultgram/telegram-session", DENY),
    case(D, "transit/decrypt/vaultgram", DENY),
    case(D, "totp/code/alice", DENY),
    case(D, "auth/token/create", DENY),
    case(D, "auth/token/create/vaultgram-operator", DENY),
    case(D, "auth/token/lookup-self", R),
];

fn capabilities_table(env: &Env) {
    let c = env.cluster();
    let t = obtain_tokens(env);
    let mut mismatches = Vec::new();
    let mut rows = 0;
    for who in ALL_WHO {
        let paths: Vec<&str> = CASES
            .iter()
            .filter(|k| k.who == who)
            .map(|k| k.path)
            .collect();
        if paths.is_empty() {
            continue;
        }
        let token = t.get(who);
        let got = c.capabilities(token, &paths);
        let got_self = c.capabilities_self(token, &paths);
        for k in CASES.iter().filter(|k| k.who == who) {
            rows += 1;
            let want: Vec<String> = k.caps.iter().map(|s| s.to_string()).collect();
            let g = &got[k.path];
            if verbose() {
                eprintln!("  {:<14} {:<52} {}", who.to_string(), k.path, g.join(","));
            }
            if *g != want {
                mismatches.push(format!(
                    "  {:<14} {:<52} want {:<40} got {}",
                    who.to_string(),
                    k.path,
                    want.join(","),
                    g.join(",")
                ));
            }
            if got_self[k.path] != *g {
                mismatches.push(format!(
                    "  {:<14} {:<52} sys/capabilities says {} but capabilities-self says {}",
                    who.to_string(),
                    k.path,
                    g.join(","),
                    got_self[k.path].join(",")
                ));
            }
        }
    }
    t.revoke(c);
    assert!(
        mismatches.is_empty(),
        "policy matrix: {} of {rows} capability cases differ:\n  {:<14} {:<52} {}\n{}",
        mismatches.len(),
        "who",
        "path",
        "expected / actual",
        mismatches.join("\n")
    );
    eprintln!("policy matrix: {rows} capability cases as expected");
}

// ---------------------------------------------------------------------------
// Test 3: real calls
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum M {
    Get,
    Post,
    Put,
    Delete,
    List,
}

impl M {
    fn method(self) -> Method {
        match self {
            M::Get => Method::GET,
            M::Post => Method::POST,
            M::Put => Method::PUT,
            M::Delete => Method::DELETE,
            M::List => Method::from_bytes(b"LIST").unwrap(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Exp {
    /// 200 or 204.
    Ok,
    /// 403 "permission denied": Vault's ACL.
    Denied,
    /// 400: the endpoint (token role, transit) refused after the ACL passed.
    Refused,
    /// 400 check-and-set mismatch: the write passed the ACL, nothing written.
    CasMismatch,
    /// Anything but success (200/204).
    NotOk,
}

impl fmt::Display for Exp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exp::Ok => "ok (200/204)",
            Exp::Denied => "denied (403)",
            Exp::Refused => "refused (400)",
            Exp::CasMismatch => "cas mismatch (400)",
            Exp::NotOk => "not ok (!2xx)",
        })
    }
}

struct Call {
    who: Who,
    method: M,
    path: &'static str,
    /// JSON; `%name%` is replaced by a value saved by an earlier call.
    body: Option<&'static str>,
    /// `X-Vault-Wrap-TTL`: the answer must be a wrapping token.
    wrap: Option<&'static str>,
    /// Save a value of the answer (JSON pointer) as `%name%`.
    save: Option<(&'static str, &'static str)>,
    expect: Exp,
}

fn call(who: Who, method: M, path: &'static str, expect: Exp) -> Call {
    Call {
        who,
        method,
        path,
        body: None,
        wrap: None,
        save: None,
        expect,
    }
}

impl Call {
    fn body(mut self, b: &'static str) -> Call {
        self.body = Some(b);
        self
    }
    fn wrap(mut self, ttl: &'static str) -> Call {
        self.wrap = Some(ttl);
        self
    }
    fn save(mut self, name: &'static str, pointer: &'static str) -> Call {
        self.save = Some((name, pointer));
        self
    }
}

const PT: &str = r#"{"plaintext": "cG9saWN5LW1hdHJpeA=="}"#;
const CAS_NEVER: &str = r#"{"options": {"cas": 999999}, "data": {"x": "y"}}"#;
const POLICY: &str = r#"{"policy": "path \"secret/*\" { capabilities = [\"read\"] }"}"#;

fn calls() -> Vec<Call> {
    use Exp::*;
    use M::*;
    let mint = ROLE_PATH;
    vec![
        // ---- vault-operator: puts what the others use ------------------------
        call(O, Post, "totp/keys/pm-alice", Ok)
            .body(r#"{"generate": true, "issuer": "vaultgram", "account_name": "alice"}"#),
        call(O, Get, "totp/code/pm-alice", Denied),
        call(O, Post, "secret/data/telegram", CasMismatch).body(CAS_NEVER),
        call(O, Get, "secret/data/telegram", Ok),
        call(O, Get, "secret/data/vaultgram/telegram-session", Denied),
        call(O, Get, "secret/metadata/vaultgram/telegram-session", Denied),
        call(O, Delete, "secret/metadata/vaultgram/telegram-session/", Denied),
        call(O, Get, "secret/data/vaultgram/agents/bob", Denied),
        call(O, Post, "transit/encrypt/vaultgram", Denied).body(PT),
        call(O, Get, "transit/keys/vaultgram", Ok),
        call(O, Get, "sys/policies/acl/vaultgram-broker", Ok),
        call(O, Put, "sys/policies/acl/vaultgram-it-policy-matrix", Ok).body(POLICY),
        call(O, Delete, "sys/policies/acl/vaultgram-it-policy-matrix", Ok),
        call(O, Post, "auth/approle/role/vaultgram/secret-id", Ok).wrap("60s"),
        call(O, Get, "sys/audit", Ok),
        // ---- broker: minting, and only through the role ----------------------
        call(B, Post, mint, Refused).body(r#"{"policies": ["vaultgram-broker"], "ttl": "5m"}"#),
        call(B, Post, mint, Refused).body(r#"{"policies": ["root"], "ttl": "5m"}"#),
        call(B, Post, mint, Refused).body(r#"{"policies": ["vault-operator"], "ttl": "5m"}"#),
        call(B, Post, mint, Refused).body(r#"{"policies": ["vaultgram-op-admin-x"], "ttl": "5m"}"#),
        call(B, Post, mint, Refused)
            .body(r#"{"policies": ["vaultgram-op-admin", "vaultgram-broker"], "ttl": "5m"}"#),
        call(B, Post, mint, Refused)
            .body(r#"{"policies": ["vaultgram-op-agent-bob"], "period": "768h"}"#),
        call(B, Post, "auth/token/create", Denied).body(r#"{"policies": ["vaultgram-op-admin"]}"#),
        call(B, Post, "auth/token/create-orphan", Denied).body(r#"{"policies": ["default"]}"#),
        call(B, Post, "auth/token/create/some-other-role", Denied),
        call(B, Post, "auth/token/roles/vaultgram-operator", Denied)
            .body(r#"{"allowed_policies": "vaultgram-broker,root"}"#),
        call(B, Put, "sys/policies/acl/vaultgram-op-agent-bob", Denied).body(POLICY),
        call(B, Put, "sys/policy/vaultgram-broker", Denied).body(POLICY),
        call(B, Delete, "sys/policies/acl/vaultgram-op-agent-carol", Denied),
        call(B, Post, "auth/approle/role/vaultgram/secret-id", Denied),
        // ---- broker: its own data only ----------------------------------------
        call(B, Get, "secret/data/telegram", Ok),
        call(B, Get, "secret/data/vaultgram/telegram-session", Ok),
        call(B, Post, "secret/data/vaultgram/telegram-session", CasMismatch).body(CAS_NEVER),
        call(B, Get, "secret/metadata/vaultgram/telegram-session", Ok),
        call(B, Delete, "secret/metadata/vaultgram/telegram-session", Denied),
        call(B, Post, "secret/destroy/vaultgram/telegram-session", Denied).body(r#"{"versions": [1]}"#),
        call(B, Delete, "secret/data/vaultgram/telegram-session/", Denied),
        call(B, Delete, "secret/metadata/vaultgram/telegram-session/", Denied),
        call(B, Get, "secret/data/vaultgram/agents/bob", Denied),
        call(B, Post, "secret/data/vaultgram/panels-by-agent/bob/pm-evil", Denied)
            .body(r#"{"data": {"x": "y"}}"#),
        call(B, Post, "transit/encrypt/vaultgram", Ok).body(PT).save("ct_session", "/data/ciphertext"),
        call(B, Post, "transit/decrypt/vaultgram", Ok).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(B, Post, "transit/keys/vaultgram/rotate", Denied),
        call(B, Get, "transit/keys/vaultgram", Denied),
        call(B, Post, "transit/encrypt/pm-admin", Denied).body(PT),
        call(B, Post, "transit/rewrap/vaultgram", Denied).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(B, Post, "transit/datakey/plaintext/vaultgram", Denied),
        call(B, Get, "totp/code/pm-alice", Denied),
        call(B, Post, "totp/code/pm-alice", Ok).body(r#"{"code": "000000"}"#),
        call(B, Get, "totp/keys/pm-alice", Denied),
        // ---- admin (alice) ----------------------------------------------------
        call(A, Get, "secret/data/telegram", Ok),
        call(A, Get, "secret/data/telegram", Ok).wrap("60s"),
        call(A, Get, "secret/data/vaultgram/agents/carol", Ok),
        call(A, List, "secret/metadata/", Ok),
        call(A, List, "transit/keys", Ok),
        call(A, Put, "secret/data/vaultgram/agents/pm-dan", Ok)
            .body(r#"{"data": {"token_sha256": "da0e", "note": "policy-matrix"}}"#),
        call(A, Put, "secret/data/vaultgram/panels/pm-p2", Ok)
            .body(r#"{"data": {"kind": "marzban", "url": "https://p2.example", "user": "u", "password": "pw", "agents": "carol"}}"#),
        call(A, Put, "secret/data/vaultgram/panels-by-agent/carol/pm-p2", Ok)
            .body(r#"{"data": {"kind": "marzban", "url": "https://p2.example", "user": "u", "password": "pw"}}"#),
        call(A, Post, "secret/destroy/vaultgram/panels/pm-p2", Ok).body(r#"{"versions": [1]}"#),
        call(A, Get, "secret/data/vaultgram/telegram-session", Denied),
        call(A, Get, "secret/subkeys/vaultgram/telegram-session", Denied),
        call(A, Get, "secret/metadata/vaultgram/telegram-session", Ok),
        call(A, Post, "secret/data/vaultgram/telegram-session", Denied).body(CAS_NEVER),
        call(A, Delete, "secret/data/vaultgram/telegram-session", Denied),
        call(A, Post, "secret/delete/vaultgram/telegram-session", Denied).body(r#"{"versions": [1]}"#),
        call(A, Post, "secret/destroy/vaultgram/telegram-session", Denied).body(r#"{"versions": [1, 2, 3]}"#),
        call(A, Delete, "secret/metadata/vaultgram/telegram-session", Denied),
        call(A, Post, "secret/metadata/vaultgram/telegram-session", Denied)
            .body(r#"{"delete_version_after": "1s"}"#),
        call(A, Post, "secret/config", Denied).body(r#"{"delete_version_after": "1s"}"#),
        call(A, Get, "secret/config", Ok),
        // No metadata writes: max_versions=1 would destroy every older
        // version of the secret without anyone's approval.
        call(A, Post, "secret/metadata/telegram", Denied).body(r#"{"max_versions": 1}"#),
        call(A, Post, "secret/metadata/vaultgram/agents/carol", Denied)
            .body(r#"{"delete_version_after": "1s"}"#),
        // The exact-path deny cannot be side-stepped by another spelling.
        call(A, Get, "secret/data/vaultgram//telegram-session", NotOk),
        call(A, Get, "secret/data/vaultgram/./telegram-session", NotOk),
        call(A, Get, "secret/data//vaultgram/telegram-session", NotOk),
        call(A, Get, "secret/data/Vaultgram/telegram-session", NotOk),
        call(A, Get, "secret/data/vaultgram/telegram-session/", Denied),
        call(A, Get, "secret/subkeys/vaultgram/telegram-session/", Denied),
        call(A, Get, "secret/metadata/vaultgram/telegram-session/", Denied),
        call(A, Post, "secret/destroy/vaultgram/telegram-session/", NotOk).body(r#"{"versions": [1]}"#),
        // DELETE is accepted on a path ending in "/" (writes are not), and
        // KV v2 applies it to the session: soft delete of the latest version,
        // and deletion of every version with the metadata.
        call(A, Delete, "secret/data/vaultgram/telegram-session/", Denied),
        call(A, Delete, "secret/metadata/vaultgram/telegram-session/", Denied),
        call(A, Delete, "secret/metadata/vaultgram/telegram-session%2F", Denied),
        call(A, Delete, "secret/metadata/vaultgram/telegram-session//", Denied),
        call(B, Get, "secret/data/vaultgram/telegram-session", Ok),
        call(A, Post, "transit/encrypt/pm-admin", Ok).body(PT).save("ct_admin", "/data/ciphertext"),
        call(A, Post, "transit/decrypt/pm-admin", Ok).body(r#"{"ciphertext": "%ct_admin%"}"#),
        call(A, Post, "transit/keys/pm-admin/rotate", Ok),
        call(A, Post, "transit/rewrap/pm-admin", Ok).body(r#"{"ciphertext": "%ct_admin%"}"#),
        call(A, Post, "transit/rewrap/vaultgram", Ok).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(A, Post, "transit/decrypt/vaultgram", Denied).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(A, Post, "transit/decrypt/VAULTGRAM", NotOk).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(A, Post, "transit/decrypt/pm-admin", NotOk).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(A, Post, "transit/datakey/plaintext/vaultgram", Denied),
        call(A, Get, "transit/export/encryption-key/vaultgram", Denied),
        call(A, Post, "sys/wrapping/wrap", Ok).body(r#"{"link": "tg://proxy"}"#).wrap("60s"),
        call(A, Put, "sys/policies/acl/vaultgram-op-admin", Denied).body(POLICY),
        call(A, Post, mint, Denied).body(r#"{"policies": ["vaultgram-op-admin"]}"#),
        call(A, Post, "auth/token/create", Denied).body(r#"{"policies": ["vaultgram-op-admin"]}"#),
        call(A, Get, "totp/code/pm-alice", Denied),
        // ---- agent bob, with its own child token, no broker in between --------
        call(Bob, Get, "secret/data/vaultgram/agents/bob", Ok),
        call(Bob, Get, "secret/data/vaultgram/agents/carol", Denied),
        call(Bob, Get, "secret/metadata/vaultgram/agents/carol", Denied),
        call(Bob, List, "secret/metadata/vaultgram/agents/", Denied),
        call(Bob, Get, "secret/data/telegram", Denied),
        call(Bob, Get, "secret/data/vaultgram/telegram-session", Denied),
        call(Bob, Get, "secret/metadata/vaultgram/telegram-session", Denied),
        call(Bob, Post, "secret/data/vaultgram/telegram-session", Denied).body(CAS_NEVER),
        call(Bob, Post, "secret/destroy/vaultgram/telegram-session", Denied).body(r#"{"versions": [1]}"#),
        call(Bob, Delete, "secret/metadata/vaultgram/telegram-session", Denied),
        call(Bob, Delete, "secret/metadata/vaultgram/telegram-session/", Denied),
        call(Bob, Delete, "secret/data/vaultgram/telegram-session/", Denied),
        call(Bob, Get, "secret/data/vaultgram/mtproto/carol/pm-u1", Denied),
        call(Bob, List, "secret/metadata/vaultgram/mtproto/carol/", Denied),
        call(Bob, Post, "secret/data/vaultgram/mtproto/carol/pm-u2", Denied).body(r#"{"data": {"secret": "x"}}"#),
        call(Bob, Post, "secret/data/vaultgram/mtproto/admin/pm-u2", Denied).body(r#"{"data": {"secret": "x"}}"#),
        call(Bob, Post, "secret/data/vaultgram/mtproto/bob/pm-u1", Ok)
            .body(r#"{"data": {"secret": "00112233445566778899aabbccddeeff"}}"#),
        call(Bob, Get, "secret/data/vaultgram/mtproto/bob/pm-u1", Ok),
        call(Bob, List, "secret/metadata/vaultgram/mtproto/bob/", Ok),
        call(Bob, Delete, "secret/data/vaultgram/mtproto/bob/pm-u1", Ok),
        // A revoked (soft-deleted) secret does not come back by the agent.
        call(Bob, Post, "secret/undelete/vaultgram/mtproto/bob/pm-u1", Denied).body(r#"{"versions": [1]}"#),
        call(Bob, Post, "secret/destroy/vaultgram/mtproto/bob/pm-u1", Denied).body(r#"{"versions": [1]}"#),
        call(Bob, Delete, "secret/metadata/vaultgram/mtproto/bob/pm-u1", Denied),
        call(Bob, Get, "secret/data/vaultgram/panels/pm-p1", Denied),
        call(Bob, List, "secret/metadata/vaultgram/panels/", Denied),
        call(Bob, Get, "secret/data/vaultgram/panels-by-agent/bob/pm-p1", Ok),
        call(Bob, List, "secret/metadata/vaultgram/panels-by-agent/bob/", Ok),
        call(Bob, Get, "secret/data/vaultgram/panels-by-agent/carol/pm-p2", Denied),
        call(Bob, Post, "secret/data/vaultgram/panels-by-agent/bob/pm-p9", Denied)
            .body(r#"{"data": {"x": "y"}}"#),
        call(Bob, Post, "transit/decrypt/vaultgram", Denied).body(r#"{"ciphertext": "%ct_session%"}"#),
        call(Bob, Post, "sys/wrapping/wrap", Ok)
            .body(r#"{"link": "https://t.me/proxy?server=x"}"#)
            .wrap("60s")
            .save("wrapped_by_bob", "/wrap_info/token"),
        call(B, Post, "sys/wrapping/lookup", Ok).body(r#"{"token": "%wrapped_by_bob%"}"#),
        call(Bob, Put, "sys/policies/acl/vaultgram-op-agent-bob", Denied).body(POLICY),
        call(Bob, Post, "auth/token/create", Denied).body(r#"{"policies": ["vaultgram-op-agent-carol"]}"#),
        call(Bob, Post, mint, Denied).body(r#"{"policies": ["vaultgram-op-agent-carol"]}"#),
        call(Bob, Get, "totp/code/pm-alice", Denied),
        // ---- agent carol --------------------------------------------------
        call(C, Get, "secret/data/vaultgram/agents/carol", Ok),
        call(C, Get, "secret/data/vaultgram/agents/bob", Denied),
        call(C, Get, "secret/data/vaultgram/mtproto/carol/pm-u1", Ok),
        call(C, Get, "secret/data/vaultgram/mtproto/bob/pm-u1", Denied),
        call(C, Get, "secret/data/vaultgram/panels-by-agent/carol/pm-p2", Ok),
        call(C, Get, "secret/data/vaultgram/panels-by-agent/bob/pm-p1", Denied),
        call(C, Get, "secret/data/vaultgram/telegram-session", Denied),
        call(C, Post, "auth/token/revoke-self", Ok),
        call(C, Get, "secret/data/vaultgram/agents/carol", Denied),
        // ---- default only ---------------------------------------------------
        call(D, Get, "secret/data/telegram", Denied),
        call(D, Get, "secret/data/vaultgram/agents/bob", Denied),
        call(D, Get, "secret/data/vaultgram/telegram-session", Denied),
        // After everyone's attempts, the session is still there, unharmed.
        call(B, Get, "secret/data/vaultgram/telegram-session", Ok),
    ]
}

/// Seeds with root (and the session with the broker), so that reads have
/// something to find. Never deletes; `telegram` and the session are written
/// only if absent.
fn seed(c: &Cluster, t: &Tokens) {
    let root = Some(&c.root_token);
    for (path, data) in [
        (
            "secret/data/vaultgram/agents/bob",
            json!({"token_sha256": "b0b0", "note": "policy-matrix seed"}),
        ),
        (
            "secret/data/vaultgram/agents/carol",
            json!({"token_sha256": "ca01", "note": "policy-matrix seed"}),
        ),
        (
            "secret/data/vaultgram/mtproto/carol/pm-u1",
            json!({"secret": "ffeeddccbbaa99887766554433221100"}),
        ),
        (
            "secret/data/vaultgram/panels/pm-p1",
            json!({"kind": "marzban", "url": "https://p1.example", "user": "u", "password": "pw", "agents": "bob"}),
        ),
        (
            "secret/data/vaultgram/panels-by-agent/bob/pm-p1",
            json!({"kind": "marzban", "url": "https://p1.example", "user": "u", "password": "pw"}),
        ),
    ] {
        let (code, v) = api(c, Method::POST, path, root, Some(json!({"data": data})));
        assert_eq!(code, 200, "seed {path}: {v}");
    }
    // If absent: the app keys (by a vault-operator, as in production) and
    // the session (by the broker, transit-encrypted).
    let if_absent = |who: &SecretString, path: &str, data: Value| {
        let (code, v) = api(
            c,
            Method::POST,
            path,
            Some(who),
            Some(json!({"options": {"cas": 0}, "data": data})),
        );
        assert!(
            code == 200 || (code == 400 && v.to_string().contains("check-and-set")),
            "seed {path}: {code} {v}"
        );
    };
    if_absent(
        &t.operator,
        "secret/data/telegram",
        json!({"api_id": "12345", "api_hash": "policy-matrix-seed"}),
    );
    let (code, v) = api(
        c,
        Method::POST,
        "transit/encrypt/vaultgram",
        Some(&t.broker),
        Some(serde_json::from_str(PT).unwrap()),
    );
    assert_eq!(code, 200, "{v}");
    if_absent(
        &t.broker,
        "secret/data/vaultgram/telegram-session",
        json!({"ciphertext": v["data"]["ciphertext"]}),
    );
}

fn substitute(body: &str, saved: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = body.to_string();
    for (k, v) in saved {
        out = out.replace(&format!("%{k}%"), v);
    }
    if let Some(i) = out.find('%') {
        let rest = &out[i + 1..];
        let name = &rest[..rest.find('%').unwrap_or(rest.len())];
        return Err(format!("%{name}% was not saved by an earlier call"));
    }
    Ok(out)
}

fn first_error(v: &Value) -> String {
    v["errors"]
        .as_array()
        .and_then(|e| e.first())
        .and_then(|e| e.as_str())
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn judge(call: &Call, code: u16, v: &Value) -> bool {
    let err = v["errors"].to_string();
    let ok = match call.expect {
        Exp::Ok => code == 200 || code == 204,
        Exp::Denied => code == 403 && err.contains("permission denied"),
        Exp::Refused => code == 400,
        Exp::CasMismatch => code == 400 && err.contains("check-and-set"),
        Exp::NotOk => !(200..300).contains(&code),
    };
    // A wrapped answer must be a wrapping token, not the data.
    if ok && call.wrap.is_some() && code == 200 {
        return v["wrap_info"]["token"].is_string() && v["data"].is_null();
    }
    ok
}

fn real_calls_table(env: &Env) {
    let c = env.cluster();
    let t = obtain_tokens(env);
    seed(c, &t);
    let table = calls();
    let mut saved: BTreeMap<&str, String> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (i, k) in table.iter().enumerate() {
        let line = |got: String| {
            format!(
                "  #{:<3} {:<14} {:<6} {:<50} want {:<22} got {got}",
                i + 1,
                k.who.to_string(),
                format!("{:?}", k.method).to_uppercase(),
                k.path,
                k.expect.to_string(),
            )
        };
        let body = match k.body.map(|b| substitute(b, &saved)).transpose() {
            Ok(b) => b.map(|b| serde_json::from_str::<Value>(&b).expect("body is JSON")),
            Err(e) => {
                mismatches.push(line(e));
                continue;
            }
        };
        let headers: Vec<(&str, &str)> = k
            .wrap
            .map(|w| ("X-Vault-Wrap-TTL", w))
            .into_iter()
            .collect();
        let (code, v) = c
            .vault_api_with_headers(
                k.method.method(),
                k.path,
                Some(t.get(k.who)),
                body,
                &headers,
            )
            .unwrap_or_else(|e| panic!("{}: {e}", k.path));
        let got = format!("{code} {}", first_error(&v));
        if !judge(k, code, &v) {
            mismatches.push(line(got));
        } else if verbose() {
            eprintln!("{}", line(got));
        }
        if let Some((name, pointer)) = k.save {
            if let Some(s) = v.pointer(pointer).and_then(|x| x.as_str()) {
                saved.insert(name, s.to_string());
            }
        }
    }
    let audit = audit_names_the_operator(c);
    t.revoke(c);
    if let Err(e) = audit {
        mismatches.push(format!("  audit log: {e}"));
    }
    assert!(
        mismatches.is_empty(),
        "policy matrix: {} of {} real calls differ:\n{}",
        mismatches.len(),
        table.len(),
        mismatches.join("\n")
    );
    eprintln!("policy matrix: {} real calls as expected", table.len());
}

/// Vault's audit log names the Telegram operator of a denied direct call:
/// bob's read of carol's record carries display name and metadata of bob.
fn audit_names_the_operator(c: &Cluster) -> Result<(), String> {
    let text = std::fs::read_to_string(c.audit_log())
        .map_err(|e| format!("cannot read the audit log: {e}"))?;
    let found = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| {
            e["type"] == "response"
                && e["request"]["path"] == "secret/data/vaultgram/agents/carol"
                && e["auth"]["display_name"]
                    .as_str()
                    .is_some_and(|d| d.contains("bob"))
                && e["auth"]["metadata"]["operator"] == "bob"
                && e["auth"]["metadata"]["telegram_id"] == "222222"
                && e["error"]
                    .as_str()
                    .is_some_and(|s| s.contains("permission denied"))
        });
    if found {
        Ok(())
    } else {
        Err("no response entry for bob's denied read of agents/carol naming bob".into())
    }
}

// ---------------------------------------------------------------------------
// Test 4: vault-operator is enough for apply.sh after the first run
// ---------------------------------------------------------------------------

/// README: "able to re-run apply.sh after the first, root-token run". With
/// the harness's inputs, every policy must then be read back as unchanged
/// (so the policy reads work too) and the run must succeed.
fn vault_operator_can_rerun_apply_sh(env: &Env) {
    let c = env.cluster();
    let operator = c.create_token(&["vault-operator"], "1h");
    let out = std::process::Command::new(repo_root().join("vault-policies/apply.sh"))
        .env("VAULT_ADDR", c.vault_addr())
        .env("VAULT_CACERT", &c.ca_path)
        .env("VAULT_TOKEN", operator.expose_secret())
        .env("VAULT_CLI", c.server.binary())
        .env("VAULTGRAM_AGENTS", AGENTS.join(" "))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "apply.sh with a vault-operator token failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stderr.contains(operator.expose_secret()) && !stdout.contains(operator.expose_secret()),
        "apply.sh printed the token"
    );
    let mut policies = vec![
        "vaultgram-broker".to_string(),
        "vaultgram-op-admin".to_string(),
        "vault-operator".to_string(),
    ];
    policies.extend(AGENTS.iter().map(|a| format!("vaultgram-op-agent-{a}")));
    for p in policies {
        assert!(
            stderr.lines().any(|l| l == format!("policy {p} unchanged")),
            "apply.sh as vault-operator did not find policy {p} unchanged:\n{stderr}"
        );
    }
    let (code, _) = api(
        c,
        Method::POST,
        "auth/token/revoke-self",
        Some(&operator),
        None,
    );
    assert_eq!(code, 204);
}
