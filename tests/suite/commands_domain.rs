//! `/agent`, `/panel` and `/mtproto` through `vaultgram console --json`
//! against the real cluster (the dispatcher Telegram uses), each command's
//! success and error kinds, the role rules, and — separately — that Vault
//! itself denies an agent's child token on another agent's paths.
//!
//! Names used only here: agents `it-agent*`, panels `it-p*`, MTProto users
//! `9xxx`, TOTP keys `it-dom-*` (tests run in parallel on one cluster).

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::TestFn;
use crate::common::canary;
use crate::common::console::{console, ConsoleRun};
use crate::common::totp::{fresh_code, Approvers};
use crate::common::Env;
use vaultgram::vault::auth::TokenManager;
use vaultgram::vault::kv::KvPath;
use vaultgram::vault::token::OperatorTokens;
use vaultgram::vault::VaultError;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "commands_domain::agent_add_token_list_and_role_rules",
        agent_add_token_list,
    ),
    (
        "commands_domain::agent_revoke_after_approval",
        agent_revoke_approved,
    ),
    (
        "commands_domain::panel_add_assign_show_remove",
        panel_lifecycle,
    ),
    (
        "commands_domain::panel_reveal_after_approval",
        panel_reveal_approved,
    ),
    (
        "commands_domain::mtproto_issue_show_list_and_owners",
        mtproto_lifecycle,
    ),
    (
        "commands_domain::listings_page_within_one_telegram_message",
        listings_page,
    ),
    (
        "commands_domain::mtproto_revoke_after_approval",
        mtproto_revoke_approved,
    ),
    (
        "commands_domain::vault_denies_an_agent_token_on_other_agents_paths",
        vault_denies_other_agents_paths,
    ),
];

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn run(env: &Env, op: &str, lines: &[&str]) -> ConsoleRun {
    console(env, op, lines).one_per(lines)
}

fn message(r: &ConsoleRun, i: usize) -> String {
    r.message(i)
}

/// Asserts that no reply of `r` contains `secret`.
fn nowhere(r: &ConsoleRun, secret: &str) {
    for (i, rep) in r.replies.iter().enumerate() {
        assert!(
            !rep.to_string().contains(secret),
            "reply {i} carries the secret: {rep}"
        );
    }
}

/// The line after `prefix` in a reply text.
fn value_after<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {text}"))
        .trim()
}

/// The agent token of an `/agent add|token` reply (the line after the
/// "API token" line).
fn token_of(text: &str) -> String {
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.starts_with("API token"))
        .unwrap_or_else(|| panic!("no token in {text}"));
    let t = lines.next().unwrap().trim().to_string();
    canary::register(&t);
    t
}

/// Unwraps the wrapping token of a wrapped reply (with the token itself,
/// as `vault unwrap` does) and returns the wrapped answer's `data`.
fn unwrap_reply(env: &Env, r: &ConsoleRun, i: usize) -> Value {
    let rep = &r.replies[i];
    assert_eq!(rep["secret"], true, "{rep}");
    assert_eq!(rep["data"]["wrapped"], true, "{rep}");
    let text = r.ok_text(i);
    let token = value_after(&text, "wrapping_token:").to_string();
    canary::register(&token);
    assert!(
        !rep["data"].to_string().contains(&token),
        "wrapping token in data: {rep}"
    );
    let c = env.cluster();
    let (code, v) = c
        .vault_api(
            Method::POST,
            "sys/wrapping/unwrap",
            Some(&SecretString::from(token.clone())),
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "unwrap: {v}");
    // Single use.
    let (again, _) = c
        .vault_api(
            Method::POST,
            "sys/wrapping/unwrap",
            Some(&SecretString::from(token)),
            None,
        )
        .unwrap();
    assert_ne!(again, 200, "a wrapping token unwrapped twice");
    v["data"].clone()
}

/// A KV v2 read with the root token: (status, data.data, data.metadata).
fn kv_root(env: &Env, path: &str) -> (u16, Value, Value) {
    let c = env.cluster();
    let (code, v) = c
        .vault_api(
            Method::GET,
            &format!("secret/data/{path}"),
            Some(&c.root_token),
            None,
        )
        .unwrap();
    (
        code,
        v["data"]["data"].clone(),
        v["data"]["metadata"].clone(),
    )
}

fn kv_root_metadata(env: &Env, path: &str) -> (u16, Value) {
    let c = env.cluster();
    let (code, v) = c
        .vault_api(
            Method::GET,
            &format!("secret/metadata/{path}"),
            Some(&c.root_token),
            None,
        )
        .unwrap();
    (code, v["data"].clone())
}

// ---- TOTP for the approved paths (RFC 6238, HMAC-SHA1, 6 digits, 30 s) ----

fn approvers(env: &Env, tag: &str) -> Approvers {
    crate::common::totp::approvers(env, tag, |t| t)
}

/// The request ID of an `approval_required` reply.
fn request_id(r: &ConsoleRun, i: usize) -> String {
    assert_eq!(r.err_kind(i), "approval_required", "{}", r.replies[i]);
    let m = message(r, i);
    m.strip_prefix("request ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request ID in {m:?}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// /agent
// ---------------------------------------------------------------------------

fn agent_add_token_list(env: &Env) {
    let s = approvers(env, "it-dom-token");
    let id = "it-agent1";
    let r = s.run(
        env,
        "alice",
        &[
            &format!("/agent add {id}"),
            &format!("/agent add {id}"),
            "/agent add admin",
            "/agent add Bad/Id",
            &format!("/agent token {id}"),
            &format!("/kv metadata get secret/vaultgram/agents/{id}"),
            "/agent token it-agent-nobody",
            &format!("/agent token -wrap-ttl=60s {id}"),
            &format!("/agent token -wrap-ttl=5d {id}"),
            "/agent list",
            &format!("/agent revoke {id}"),
            "/agent revoke it-agent-nobody",
        ],
    );
    // add: the token once, as a secret reply; data holds only its digest.
    let t1 = token_of(&r.ok_text(0));
    assert_eq!(r.replies[0]["secret"], true);
    assert_eq!(t1.len(), 43, "{t1}");
    assert!(t1
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(r.replies[0]["data"]["token_sha256"], sha256_hex(&t1));
    assert!(!r.replies[0]["data"].to_string().contains(&t1));
    assert_eq!(r.err_kind(1), "conflict");
    assert!(message(&r, 1).contains("/agent token"), "{}", r.replies[1]);
    assert_eq!(r.err_kind(2), "invalid");
    assert!(message(&r, 2).contains("reserved"));
    assert_eq!(r.err_kind(3), "invalid");
    // token: a new token ends the old one (effect `agent revoke`), so it
    // waits for a second admin; checked first (no request for an agent
    // that does not exist, or a wrap TTL out of range).
    let rotate = request_id(&r, 4);
    assert_eq!(
        r.replies[5]["data"]["current_version"], 1,
        "{}",
        r.replies[5]
    );
    assert_eq!(r.err_kind(6), "not_found");
    let rotate_wrapped = request_id(&r, 7);
    assert_eq!(r.err_kind(8), "invalid");
    assert!(r.ok_text(9).lines().any(|l| l == id), "{}", r.replies[9]);
    // revoke is approval-gated by the dispatcher; validated first, so a
    // request for an agent that does not exist is never filed.
    let revoke = request_id(&r, 10);
    assert_eq!(r.err_kind(11), "not_found");
    // dave approves both rotations: each a one-time grant for alice, who
    // runs the line again and alone sees the new token.
    let ra = s.run(
        env,
        "dave",
        &[
            &format!("/approve {rotate} {}", fresh_code(&s.dave)),
            &format!("/approve {rotate_wrapped} {}", fresh_code(&s.dave)),
            &format!("/deny {revoke}"),
        ],
    );
    for i in 0..3 {
        ra.ok_text(i);
    }
    nowhere(&ra, &t1);
    let r = s.run(
        env,
        "alice",
        &[
            &format!("/agent token {id}"),
            &format!("/kv metadata get secret/vaultgram/agents/{id}"),
            &format!("/agent token -wrap-ttl=60s {id}"),
        ],
    );
    // A new token, as version 2; the old one stays in the history.
    let t2 = token_of(&r.ok_text(0));
    assert_ne!(t1, t2);
    assert_eq!(r.replies[0]["data"]["version"], 2);
    assert_eq!(
        r.replies[1]["data"]["current_version"], 2,
        "{}",
        r.replies[1]
    );
    assert_eq!(
        r.replies[1]["data"]["versions"].as_object().unwrap().len(),
        2,
        "{}",
        r.replies[1]
    );
    // -wrap-ttl: the token only inside the wrapping token.
    let w = unwrap_reply(env, &r, 2);
    let t3 = w["token"].as_str().unwrap().to_string();
    canary::register(&t3);
    assert_eq!(w["token_sha256"], sha256_hex(&t3));
    assert_eq!(w["agent"], id);
    assert!(!r.replies[2].to_string().contains(&t3));

    // What Vault holds: the latest token and its SHA-256, who made it; the
    // first token is still version 1.
    let (code, latest, meta) = kv_root(env, &format!("vaultgram/agents/{id}"));
    assert_eq!(code, 200);
    assert_eq!(meta["version"], 3);
    assert_eq!(latest["token"], t3.as_str());
    assert_eq!(latest["token_sha256"], sha256_hex(&t3));
    assert_eq!(latest["created_by"], "alice");
    assert_eq!(latest["rotated_by"], "alice");
    assert!(latest["created_at"].as_str().unwrap().ends_with('Z'));
    let c = env.cluster();
    let (code, v1) = c
        .vault_api(
            Method::GET,
            &format!("secret/data/vaultgram/agents/{id}?version=1"),
            Some(&c.root_token),
            None,
        )
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(v1["data"]["data"]["token"], t1.as_str());
    assert_eq!(v1["data"]["data"]["token_sha256"], sha256_hex(&t1));

    // Agents: /agent list shows themselves only (a digest prefix, never
    // the token); everything else is an admin's.
    let carol_token = canary::plant("agent-carol-token");
    let (code, _) = c
        .vault_api(
            Method::POST,
            "secret/data/vaultgram/agents/carol",
            Some(&c.root_token),
            Some(json!({"data": {"token": carol_token, "token_sha256": sha256_hex(&carol_token)}})),
        )
        .unwrap();
    assert_eq!(code, 200);
    for (who, other) in [("bob", "carol"), ("carol", "bob")] {
        let r = run(
            env,
            who,
            &[
                "/agent list",
                &format!("/agent add it-agent-{who}"),
                &format!("/agent token {id}"),
                &format!("/agent token {other}"),
                &format!("/agent revoke {id}"),
            ],
        );
        let text = r.ok_text(0);
        assert!(text.starts_with(&format!("agent {who}:")), "{text}");
        assert!(!text.contains(id) && !text.contains(other), "{text}");
        nowhere(&r, &carol_token);
        if who == "carol" {
            // The prefix of the digest of the version it read (the policy
            // matrix may seed this record concurrently).
            let d = &r.replies[0]["data"]["agents"][0];
            let version = d["version"].as_u64().unwrap();
            let (code, rec) = c
                .vault_api(
                    Method::GET,
                    &format!("secret/data/vaultgram/agents/carol?version={version}"),
                    Some(&c.root_token),
                    None,
                )
                .unwrap();
            assert_eq!(code, 200);
            let digest = rec["data"]["data"]["token_sha256"].as_str().unwrap();
            let prefix: String = digest.chars().take(12).collect();
            assert_eq!(d["token_sha256_prefix"], prefix.as_str());
            assert!(text.contains(&format!("token sha256 {prefix}…")), "{text}");
        }
        for i in 1..5 {
            assert_eq!(r.err_kind(i), "denied", "{who}: {}", r.replies[i]);
        }
        for t in [&t1, &t2, &t3] {
            nowhere(&r, t);
        }
    }
}

fn agent_revoke_approved(env: &Env) {
    let s = approvers(env, "it-dom-agent");
    let id = "it-agent2";
    let r1 = s.run(
        env,
        "alice",
        &[
            &format!("/agent add {id}"),
            &format!("/agent revoke {id}"),
            "/agent revoke it-agent-missing",
        ],
    );
    let token = token_of(&r1.ok_text(0));
    let req = request_id(&r1, 1);
    // Validated before it is filed: no request, no code spent on it.
    assert_eq!(r1.err_kind(2), "not_found", "{}", r1.replies[2]);
    let r2 = s.run(
        env,
        "dave",
        &[
            &format!("/approve {req} {}", fresh_code(&s.dave)),
            "/pending",
        ],
    );
    let text = r2.ok_text(0);
    assert!(
        text.contains(&format!("agent {id}: API token revoked")),
        "{text}"
    );
    nowhere(&r2, &token);
    assert!(
        !r2.ok_text(1).contains("it-agent-missing"),
        "{}",
        r2.replies[1]
    );
    // Every version is gone: the token cannot be found or brought back.
    assert_eq!(
        kv_root_metadata(env, &format!("vaultgram/agents/{id}")).0,
        404
    );
    let r3 = s.run(
        env,
        "alice",
        &[
            &format!("/agent token {id}"),
            "/agent list",
            &format!("/agent add {id}"),
        ],
    );
    assert_eq!(r3.err_kind(0), "not_found");
    assert!(!r3.ok_text(1).lines().any(|l| l == id));
    let fresh = token_of(&r3.ok_text(2));
    assert_ne!(fresh, token);
    let (_, _, meta) = kv_root(env, &format!("vaultgram/agents/{id}"));
    assert_eq!(meta["version"], 1, "a re-added agent starts a new history");
    let _ = &s.alice;
}

// ---------------------------------------------------------------------------
// /panel
// ---------------------------------------------------------------------------

fn panel_lifecycle(env: &Env) {
    let pw = canary::plant("panelpw");
    let pw2 = canary::plant("panelpw2");
    let p = "it-p1";
    let r = run(
        env,
        "alice",
        &[
            &format!("/panel add {p} marzban https://p1.example.com/dash admin {pw}"),
            &format!("/panel add it-p2 nosuchkind https://p2.example.com/ admin {pw}"),
            &format!("/panel add it-p2 sanaei ftp://p2.example.com/ admin {pw}"),
            &format!("/panel add it-p2 sanaei https://u:x@p2.example.com/ admin {pw}"),
            &format!("/panel add It/P2 sanaei https://p2.example.com/ admin {pw}"),
            "/panel list",
            &format!("/panel show {p}"),
            &format!("/panel show --reveal {p}"),
            &format!("/panel assign {p} carol"),
            &format!("/panel assign {p} it-agent-nobody"),
            "/panel assign it-p-nope carol",
            &format!("/panel assign {p} admin"),
            "/panel show it-p-nope",
            "/panel remove it-p-nope",
        ],
    );
    let text = r.ok_text(0);
    assert!(text.contains(&format!("panel {p} added")), "{text}");
    assert_eq!(r.replies[0]["secret"], false);
    for i in 1..5 {
        assert_eq!(r.err_kind(i), "invalid", "{}", r.replies[i]);
    }
    let list = r.ok_text(5);
    assert!(
        list.lines()
            .any(|l| l == format!("{p}  marzban  https://p1.example.com/dash  agents: -")),
        "{list}"
    );
    let show = r.ok_text(6);
    assert!(show.contains("password: ********"), "{show}");
    assert!(show.contains("username: admin"), "{show}");
    assert_eq!(r.replies[6]["secret"], false);
    assert_eq!(r.err_kind(7), "approval_required");
    assert!(r
        .ok_text(8)
        .contains(&format!("panel {p} assigned to carol")));
    assert_eq!(r.err_kind(9), "not_found");
    assert_eq!(r.err_kind(10), "not_found");
    assert_eq!(r.err_kind(11), "invalid");
    assert_eq!(r.err_kind(12), "not_found");
    assert_eq!(r.err_kind(13), "not_found");
    nowhere(&r, &pw);

    // The canonical record (admin-only) and carol's copy.
    let (code, canon, _) = kv_root(env, &format!("vaultgram/panels/{p}"));
    assert_eq!(code, 200);
    assert_eq!(canon["agents"], "carol");
    assert_eq!(canon["kind"], "marzban");
    assert_eq!(canon["password"], pw.as_str());
    let (code, copy, _) = kv_root(env, &format!("vaultgram/panels-by-agent/carol/{p}"));
    assert_eq!(code, 200);
    assert_eq!(copy["password"], pw.as_str());
    assert!(copy.get("agents").is_none(), "{copy}");

    // carol sees her copy (masked); bob sees nothing of it and may change nothing.
    let rc = run(env, "carol", &["/panel list", &format!("/panel show {p}")]);
    assert!(rc
        .ok_text(0)
        .contains(&format!("{p}  marzban  https://p1.example.com/dash")));
    assert!(rc.ok_text(1).contains("password: ********"));
    assert!(
        !rc.ok_text(1).contains("agents:"),
        "agents see no assignment list"
    );
    nowhere(&rc, &pw);
    let rb = run(
        env,
        "bob",
        &[
            "/panel list",
            &format!("/panel show {p}"),
            &format!("/panel assign {p} bob"),
            &format!("/panel remove {p}"),
            &format!("/panel add {p} marzban https://evil.example.com/ x y"),
        ],
    );
    assert!(!rb.ok_text(0).contains(p), "{}", rb.replies[0]);
    assert_eq!(rb.err_kind(1), "not_found");
    for i in 2..5 {
        assert_eq!(rb.err_kind(i), "denied", "{}", rb.replies[i]);
    }
    nowhere(&rb, &pw);

    // Re-adding updates the credentials and refreshes every copy.
    let r = run(
        env,
        "alice",
        &[
            &format!("/panel add {p} rebecca https://p1b.example.com/ root {pw2}"),
            &format!("/panel assign {p} carol"),
            "/panel list",
        ],
    );
    let text = r.ok_text(0);
    assert!(text.contains("updated") && text.contains("carol"), "{text}");
    assert!(r.ok_text(1).contains("already assigned"));
    assert!(r
        .ok_text(2)
        .lines()
        .any(|l| l == format!("{p}  rebecca  https://p1b.example.com/  agents: carol")));
    nowhere(&r, &pw2);
    let (_, copy, _) = kv_root(env, &format!("vaultgram/panels-by-agent/carol/{p}"));
    assert_eq!(copy["password"], pw2.as_str());
    assert_eq!(copy["kind"], "rebecca");
    assert_eq!(copy["username"], "root");
    let (_, canon, meta) = kv_root(env, &format!("vaultgram/panels/{p}"));
    assert_eq!(canon["agents"], "carol");
    assert_eq!(meta["version"], 3);

    // remove: the canonical record and every copy (also a stray one).
    let c = env.cluster();
    let (code, _) = c
        .vault_api(
            Method::POST,
            &format!("secret/data/vaultgram/panels-by-agent/bob/{p}"),
            Some(&c.root_token),
            Some(json!({"data": {"kind": "marzban", "password": "stray"}})),
        )
        .unwrap();
    assert_eq!(code, 200);
    // Removing deletes every version: a second admin approves it.
    let s = approvers(env, "it-dom-remove");
    let r = s.run(env, "alice", &[&format!("/panel remove {p}")]);
    let id = request_id(&r, 0);
    let r = s.run(
        env,
        "dave",
        &[&format!("/approve {id} {}", fresh_code(&s.dave))],
    );
    let text = r.ok_text(0);
    assert!(text.contains(&format!("panel {p} removed")), "{text}");
    assert!(text.contains("bob") && text.contains("carol"), "{text}");
    let r = run(
        env,
        "alice",
        &[&format!("/panel remove {p}"), &format!("/panel show {p}")],
    );
    assert_eq!(r.err_kind(0), "not_found");
    assert_eq!(r.err_kind(1), "not_found");
    for path in [
        format!("vaultgram/panels/{p}"),
        format!("vaultgram/panels-by-agent/carol/{p}"),
        format!("vaultgram/panels-by-agent/bob/{p}"),
    ] {
        assert_eq!(kv_root_metadata(env, &path).0, 404, "{path} survived");
    }
    let rc = run(env, "carol", &[&format!("/panel show {p}")]);
    assert_eq!(rc.err_kind(0), "not_found");
}

fn panel_reveal_approved(env: &Env) {
    let s = approvers(env, "it-dom-panel");
    let pw = canary::plant("panelpw-reveal");
    let p = "it-p3";
    let reveal = format!("/panel show --reveal {p}");
    let wrapped = format!("/panel show --reveal -wrap-ttl=60s {p}");
    let r1 = s.run(
        env,
        "alice",
        &[
            &format!("/panel add {p} pasarguard https://p3.example.com/ ops {pw}"),
            &format!("/panel assign {p} bob"),
        ],
    );
    r1.ok_text(1);
    // bob asks to see the password of his copy; dave approves; bob re-runs.
    let rb = s.run(env, "bob", &[&reveal, &wrapped]);
    let id = request_id(&rb, 0);
    let id_w = request_id(&rb, 1);
    let ra = s.run(
        env,
        "dave",
        &[
            &format!("/approve {id} {}", fresh_code(&s.dave)),
            &format!("/approve {id_w} {}", fresh_code(&s.dave)),
        ],
    );
    ra.ok_text(0);
    ra.ok_text(1);
    nowhere(&ra, &pw);
    let rb = s.run(env, "bob", &[&reveal, &wrapped, &reveal]);
    let text = rb.ok_text(0);
    assert_eq!(rb.replies[0]["secret"], true);
    assert!(text.contains(&format!("password: {pw}")), "{text}");
    assert!(!rb.replies[0]["data"].to_string().contains(&pw));
    // Wrapped: Vault's own answer to the read of bob's copy.
    let w = unwrap_reply(env, &rb, 1);
    assert_eq!(w["data"]["password"], pw.as_str(), "{w}");
    assert!(!rb.replies[1].to_string().contains(&pw));
    // The grant was for one run.
    request_id(&rb, 2);
    // An admin's reveal shows the canonical record the same way.
    let r = s.run(env, "alice", &[&reveal]);
    let id = request_id(&r, 0);
    s.run(
        env,
        "dave",
        &[&format!("/approve {id} {}", fresh_code(&s.dave))],
    );
    let r = s.run(env, "alice", &[&reveal, &format!("/panel remove {p}")]);
    assert!(r.ok_text(0).contains(&format!("password: {pw}")));
    assert!(r.ok_text(0).contains("agents: bob"));
    let id = request_id(&r, 1);
    s.run(
        env,
        "dave",
        &[&format!("/approve {id} {}", fresh_code(&s.dave))],
    )
    .ok_text(0);
    let _ = &s.alice;
}

// ---------------------------------------------------------------------------
// /mtproto
// ---------------------------------------------------------------------------

/// Checks an issue/show reply: secret, fingerprint and both links.
fn check_mtproto_reply(env: &Env, r: &ConsoleRun, i: usize) -> String {
    let text = r.ok_text(i);
    assert_eq!(r.replies[i]["secret"], true);
    let secret = value_after(&text, "secret:").to_string();
    canary::register(&secret);
    assert_eq!(secret.len(), 32, "{secret}");
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let fp = &sha256_hex(&secret)[..16];
    assert_eq!(value_after(&text, "fingerprint:"), fp);
    assert_eq!(r.replies[i]["data"]["fingerprint"], fp);
    let tg = env.config().telegram;
    let base = format!(
        "https://t.me/proxy?server={}&port={}&secret=",
        tg.mtproto_proxy_host, tg.mtproto_proxy_port
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&format!("{base}{secret}").as_str()),
        "{text}"
    );
    assert!(
        lines.contains(&format!("{base}dd{secret}").as_str()),
        "{text}"
    );
    assert!(!r.replies[i]["data"].to_string().contains(&secret));
    secret
}

fn mtproto_lifecycle(env: &Env) {
    let rb = run(
        env,
        "bob",
        &[
            "/mtproto issue 9001",
            "/mtproto issue 9001",
            "/mtproto issue a/b/c",
            "/mtproto issue \"a b\"",
            "/mtproto show 9001",
            "/mtproto show -wrap-ttl=60s 9001",
            "/mtproto show 9002",
            "/mtproto list",
            "/mtproto revoke 9001",
            "/mtproto issue carol/9003",
            "/mtproto show admin/9001",
        ],
    );
    let secret = check_mtproto_reply(env, &rb, 0);
    let fp = sha256_hex(&secret)[..16].to_string();
    assert_eq!(rb.replies[0]["data"]["owner"], "bob");
    assert_eq!(rb.err_kind(1), "conflict");
    assert!(message(&rb, 1).contains("/mtproto show 9001"));
    assert_eq!(rb.err_kind(2), "invalid");
    assert_eq!(rb.err_kind(3), "invalid");
    assert_eq!(check_mtproto_reply(env, &rb, 4), secret);
    let w = unwrap_reply(env, &rb, 5);
    assert_eq!(w["secret"], secret.as_str());
    assert_eq!(w["fingerprint"], fp.as_str());
    assert!(w["link_dd"]
        .as_str()
        .unwrap()
        .ends_with(&format!("secret=dd{secret}")));
    assert_eq!(rb.err_kind(6), "not_found");
    let list = rb.ok_text(7);
    assert!(list.lines().any(|l| l == format!("9001  {fp}")), "{list}");
    assert_eq!(rb.err_kind(8), "approval_required");
    assert_eq!(rb.err_kind(9), "denied");
    assert_eq!(rb.err_kind(10), "denied");
    for i in [1, 6, 7, 8, 9, 10] {
        assert!(
            !rb.replies[i].to_string().contains(&secret),
            "{}",
            rb.replies[i]
        );
    }

    // What Vault holds.
    let (code, rec, _) = kv_root(env, "vaultgram/mtproto/bob/9001");
    assert_eq!(code, 200);
    assert_eq!(rec["secret"], secret.as_str());
    assert_eq!(rec["fingerprint"], fp.as_str());
    assert_eq!(rec["owner"], "bob");
    assert_eq!(rec["issued_by"], "bob");
    assert!(rec["issued_at"].as_str().unwrap().ends_with('Z'));

    // carol: bob's user is not hers, by any spelling.
    let rc = run(
        env,
        "carol",
        &[
            "/mtproto issue 9004",
            "/mtproto show 9001",
            "/mtproto show bob/9001",
            "/mtproto list",
        ],
    );
    let carol_secret = check_mtproto_reply(env, &rc, 0);
    assert_eq!(rc.err_kind(1), "not_found");
    assert_eq!(rc.err_kind(2), "denied");
    assert!(
        message(&rc, 2).contains("its own users"),
        "{}",
        rc.replies[2]
    );
    let clist = rc.ok_text(3);
    assert!(!clist.contains("9001"), "{clist}");
    assert!(clist.lines().any(|l| l.starts_with("9004  ")), "{clist}");
    nowhere(&rc, &secret);

    // Admins: own users under `admin`, and every agent's as AGENT/USER.
    let ra = run(
        env,
        "alice",
        &[
            "/mtproto issue 9001",
            "/mtproto list",
            "/mtproto show bob/9001",
            "/mtproto issue bob/9005",
            "/mtproto show nosuch-agent/9001",
            "/mtproto show Bad!/9001",
        ],
    );
    let admin_secret = check_mtproto_reply(env, &ra, 0);
    assert_ne!(admin_secret, secret);
    assert_eq!(ra.replies[0]["data"]["owner"], "admin");
    let list = ra.ok_text(1);
    let admin_fp = &sha256_hex(&admin_secret)[..16];
    assert!(
        list.lines().any(|l| l == format!("9001  {admin_fp}")),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l == format!("bob/9001  {fp}")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l == format!("carol/9004  {}", &sha256_hex(&carol_secret)[..16])),
        "{list}"
    );
    for s in [&secret, &admin_secret, &carol_secret] {
        assert!(
            !ra.replies[1].to_string().contains(s.as_str()),
            "list leaks a secret"
        );
    }
    assert_eq!(check_mtproto_reply(env, &ra, 2), secret);
    assert_eq!(ra.err_kind(3), "invalid");
    assert_eq!(ra.err_kind(4), "not_found");
    assert_eq!(ra.err_kind(5), "invalid");
    let (_, rec, _) = kv_root(env, "vaultgram/mtproto/admin/9001");
    assert_eq!(rec["owner"], "admin");
    assert_eq!(rec["issued_by"], "alice");
}

/// `/mtproto list` and `/agent list` answer one page (50 / 100 lines) that
/// fits one Telegram message, say where the next is, and take a prefix.
fn listings_page(env: &Env) {
    let tag = format!("pg{}", crate::common::cluster::random_hex(3));
    let users: Vec<String> = (0..55)
        .map(|i| format!("/mtproto issue {tag}-{i:02}"))
        .collect();
    let mut lines: Vec<&str> = users.iter().map(String::as_str).collect();
    let agents: Vec<String> = (1..=3).map(|i| format!("/agent add {tag}-a{i}")).collect();
    lines.extend(agents.iter().map(String::as_str));
    let queries = [
        format!("/mtproto list {tag}-"),
        format!("/mtproto list -page=2 {tag}-"),
        format!("/mtproto list -page=3 {tag}-"),
        format!("/mtproto list {tag}-0"),
        format!("/agent list {tag}-"),
        format!("/agent list -page=0 {tag}-"),
        "/mtproto list".to_string(),
    ];
    lines.extend(queries.iter().map(String::as_str));
    let r = run(env, "alice", &lines);
    for i in 0..58 {
        r.ok_text(i);
    }
    let q = |k: usize| 58 + k;
    let page1 = r.ok_text(q(0));
    let shown: Vec<&str> = page1.lines().filter(|l| l.starts_with(&tag)).collect();
    assert_eq!(shown.len(), 50, "{page1}");
    assert_eq!(
        shown[0].split("  ").next(),
        Some(format!("{tag}-00").as_str())
    );
    assert!(page1.starts_with("MTProto users (55):"), "{page1}");
    assert!(
        page1.ends_with(&format!("page 1 of 2; next: /mtproto list {tag}- -page=2")),
        "{page1}"
    );
    assert_eq!(
        r.replies[q(0)]["data"]["users"].as_array().unwrap().len(),
        50
    );
    assert_eq!(r.replies[q(0)]["data"]["total"], 55);
    assert_eq!(r.replies[q(0)]["data"]["pages"], 2);
    let page2 = r.ok_text(q(1));
    let shown2: Vec<&str> = page2.lines().filter(|l| l.starts_with(&tag)).collect();
    assert_eq!(shown2.len(), 5, "{page2}");
    assert!(shown2[4].starts_with(&format!("{tag}-54  ")), "{page2}");
    assert!(page2.ends_with("page 2 of 2"), "{page2}");
    assert_eq!(r.err_kind(q(2)), "invalid");
    assert!(
        message(&r, q(2)).contains("there are 2 pages"),
        "{}",
        message(&r, q(2))
    );
    let tens = r.ok_text(q(3));
    assert_eq!(
        tens.lines().filter(|l| l.starts_with(&tag)).count(),
        10,
        "{tens}"
    );
    assert!(!tens.contains("page "), "{tens}");
    let agents = r.ok_text(q(4));
    assert_eq!(
        agents.lines().skip(1).collect::<Vec<_>>(),
        [
            format!("{tag}-a1"),
            format!("{tag}-a2"),
            format!("{tag}-a3")
        ]
    );
    assert_eq!(r.err_kind(q(5)), "invalid");
    // Whatever the fleet, one page is one Telegram message.
    for i in [q(0), q(1), q(3), q(4), q(6)] {
        assert!(
            r.ok_text(i).encode_utf16().count() <= 4096,
            "{}",
            r.ok_text(i)
        );
    }
}

fn mtproto_revoke_approved(env: &Env) {
    let s = approvers(env, "it-dom-mtproto");
    // An agent's revoke: every version soft-deleted (its policy has no
    // metadata delete); issuing again makes a new version.
    let rb = s.run(env, "bob", &["/mtproto issue 9101", "/mtproto revoke 9101"]);
    let old = check_mtproto_reply(env, &rb, 0);
    let id = request_id(&rb, 1);
    // Ownership is checked before a request is filed: carol's attempt on
    // bob's user never reaches an approver.
    let rc = s.run(env, "carol", &["/mtproto revoke bob/9101"]);
    assert_eq!(rc.err_kind(0), "denied", "{}", rc.replies[0]);
    let ra = s.run(
        env,
        "alice",
        &[&format!("/approve {id} {}", fresh_code(&s.alice))],
    );
    let text = ra.ok_text(0);
    // The canonical command: the owner is explicit.
    assert!(
        text.contains("ran /mtproto revoke bob/9101 as bob"),
        "{text}"
    );
    assert!(text.contains("revoked"), "{text}");
    nowhere(&ra, &old);
    let (code, meta) = kv_root_metadata(env, "vaultgram/mtproto/bob/9101");
    assert_eq!(code, 200);
    assert!(
        !meta["versions"]["1"]["deletion_time"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{meta}"
    );
    let rb = s.run(
        env,
        "bob",
        &[
            "/mtproto show 9101",
            "/mtproto list",
            "/mtproto revoke 9101",
            "/mtproto issue 9101",
        ],
    );
    assert_eq!(rb.err_kind(0), "not_found");
    assert!(rb.ok_text(1).lines().any(|l| l == "9101  (revoked)"));
    assert!(
        message(&rb, 2).contains("already revoked"),
        "{}",
        rb.replies[2]
    );
    let new = check_mtproto_reply(env, &rb, 3);
    assert_ne!(new, old);
    let (_, _, m) = kv_root(env, "vaultgram/mtproto/bob/9101");
    assert_eq!(m["version"], 2);

    // An admin's revoke deletes the record with its history.
    let ra = s.run(
        env,
        "alice",
        &[
            "/mtproto issue 9102",
            "/mtproto revoke 9102",
            "/mtproto revoke 9103",
        ],
    );
    let secret = check_mtproto_reply(env, &ra, 0);
    let id = request_id(&ra, 1);
    assert_eq!(ra.err_kind(2), "not_found", "{}", ra.replies[2]);
    let rd = s.run(
        env,
        "dave",
        &[&format!("/approve {id} {}", fresh_code(&s.dave))],
    );
    assert!(rd.ok_text(0).contains("revoked"));
    nowhere(&rd, &secret);
    assert_eq!(kv_root_metadata(env, "vaultgram/mtproto/admin/9102").0, 404);
}

// ---------------------------------------------------------------------------
// Vault is the boundary: bob's child token on carol's paths
// ---------------------------------------------------------------------------

/// The commands never address another agent's paths for an agent (they
/// are built from the operator's own agent id, and OWNER/USER is refused
/// in code). This proves the layer behind: the very child token the
/// broker mints for bob is denied by Vault on carol's data, written here
/// through the commands.
fn vault_denies_other_agents_paths(env: &Env) {
    let pw = canary::plant("panelpw-carol");
    let ra = run(
        env,
        "alice",
        &[
            &format!("/panel add it-p4 marzneshin https://p4.example.com/ ops {pw}"),
            "/panel assign it-p4 carol",
        ],
    );
    ra.ok_text(1);
    let rc = run(env, "carol", &["/mtproto issue 9201"]);
    let carol_secret = check_mtproto_reply(env, &rc, 0);
    let ra = run(env, "alice", &["/mtproto issue 9202"]);
    check_mtproto_reply(env, &ra, 0);

    let cfg = env.config();
    let bob = cfg.operator_by_name("bob").unwrap().clone();
    let results = env.rt.block_on(async {
        let broker = TokenManager::login(&cfg.vault).await.unwrap();
        let tokens = OperatorTokens::new(broker);
        let v = tokens.for_operator(&bob).await.unwrap();
        let p = |s: &str| KvPath::parse(s).unwrap();
        let mut out = Vec::new();
        for path in [
            "secret/vaultgram/mtproto/carol/9201",
            "secret/vaultgram/mtproto/admin/9202",
            "secret/vaultgram/panels/it-p4",
            "secret/vaultgram/panels-by-agent/carol/it-p4",
            "secret/vaultgram/agents/carol",
        ] {
            out.push((path, v.kv_get(&p(path), None).await.map(|_| ())));
        }
        for dir in [
            "secret/vaultgram/mtproto/carol/",
            "secret/vaultgram/mtproto/",
            "secret/vaultgram/panels-by-agent/carol/",
            "secret/vaultgram/panels/",
            "secret/vaultgram/agents/",
        ] {
            out.push((dir, v.kv_list(&p(dir)).await.map(|_| ())));
        }
        // Writes into carol's space.
        let mut d = vaultgram::vault::kv::KvData::new();
        d.insert("secret".into(), SecretString::from("x".to_string()));
        out.push((
            "write secret/vaultgram/mtproto/carol/9203",
            v.kv_put(&p("secret/vaultgram/mtproto/carol/9203"), &d, None)
                .await
                .map(|_| ()),
        ));
        out.push((
            "delete secret/vaultgram/mtproto/carol/9201",
            v.kv_delete(&p("secret/vaultgram/mtproto/carol/9201"), None)
                .await,
        ));
        // bob's own space works with the same token.
        let own = v.kv_list(&p("secret/vaultgram/mtproto/bob/")).await;
        (out, own)
    });
    let (results, own) = results;
    assert!(
        matches!(own, Ok(_) | Err(VaultError::NotFound(_))),
        "bob's own directory: {own:?}"
    );
    for (path, r) in results {
        match r {
            Err(VaultError::Denied(m)) => {
                assert!(
                    !m.contains(&carol_secret) && !m.contains(&pw),
                    "{path}: {m}"
                )
            }
            other => panic!("{path}: Vault did not deny bob's child token: {other:?}"),
        }
    }
    // Untouched by bob's attempts.
    let (code, rec, _) = kv_root(env, "vaultgram/mtproto/carol/9201");
    assert_eq!(code, 200);
    assert_eq!(rec["secret"], carol_secret.as_str());
    // Cleanup as root (`/panel remove` would wait for a second admin).
    for rel in [
        "vaultgram/panels/it-p4",
        "vaultgram/panels-by-agent/carol/it-p4",
    ] {
        env.cluster()
            .root_call(Method::DELETE, &format!("secret/metadata/{rel}"), None);
    }
}
