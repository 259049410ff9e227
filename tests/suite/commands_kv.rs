//! `/kv`, `/transit`, `/get_keys`, `/whoami`, `/help`, `/health` through
//! `vaultgram console --json` (the real binary, the real cluster, the same
//! dispatcher Telegram uses).
//!
//! Every test has its own KV paths (`secret/it/cmdkv/<test>/<random>`) and
//! transit key names, since tests run in parallel. Values are canaries:
//! each run checks that they appear only in the text of secret replies —
//! never in a non-secret reply, in `data`, in an error or on stderr (and
//! the harness searches every log for them at the end of the run).

use std::path::PathBuf;

use secrecy::SecretString;
use serde_json::{json, Value};

use super::TestFn;
use crate::common::canary;
use crate::common::cluster::random_hex;
use crate::common::console::{console, console_with_config, ConsoleRun};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "commands_kv::get_keys_prints_what_the_bao_cli_put",
        get_keys_after_bao_cli_put,
    ),
    (
        "commands_kv::kv_get_put_patch_list_and_their_errors",
        kv_get_put_patch_list,
    ),
    ("commands_kv::kv_put_cas_conflicts", kv_put_cas_conflicts),
    (
        "commands_kv::kv_delete_undelete_metadata_rollback",
        kv_version_lifecycle,
    ),
    (
        "commands_kv::kv_destroy_and_metadata_delete_need_approval",
        kv_gated_commands,
    ),
    (
        "commands_kv::vault_policy_denies_what_the_role_check_lets_through",
        vault_itself_denies,
    ),
    ("commands_kv::role_rules_admin_agent_unknown", role_rules),
    (
        "commands_kv::wrap_ttl_replies_unwrap_exactly_once",
        wrap_ttl_single_use,
    ),
    (
        "commands_kv::telegram_wrap_ttl_makes_wrapping_the_default",
        wrap_ttl_by_role_config,
    ),
    (
        "commands_kv::transit_commands_and_their_errors",
        transit_commands,
    ),
    ("commands_kv::whoami_help_health", whoami_help_health),
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fresh KV path for one test.
fn path(test: &str, name: &str) -> String {
    format!("secret/it/cmdkv/{test}/{}/{name}", random_hex(4))
}

fn run(env: &Env, op: &str, lines: &[&str]) -> ConsoleRun {
    console(env, op, lines).one_per(lines)
}

/// Canaries appear only in the text of secret replies.
fn assert_clean(run: &ConsoleRun, canaries: &[&str]) {
    for (i, r) in run.replies.iter().enumerate() {
        let visible = if r["secret"] == true {
            r["data"].to_string()
        } else {
            r.to_string()
        };
        for c in canaries {
            assert!(
                !visible.contains(c),
                "reply {i} shows a canary outside a secret text: {visible}"
            );
        }
    }
    for c in canaries {
        assert!(
            !run.stderr.contains(c),
            "a canary reached the console's stderr"
        );
    }
}

fn secret_text(run: &ConsoleRun, i: usize) -> String {
    let t = run.ok_text(i);
    assert_eq!(run.replies[i]["secret"], true, "reply {i} must be secret");
    t
}

fn plain_text(run: &ConsoleRun, i: usize) -> String {
    let t = run.ok_text(i);
    assert_eq!(
        run.replies[i]["secret"], false,
        "reply {i} must not be secret: {t}"
    );
    t
}

fn err(run: &ConsoleRun, i: usize, kind: &str) -> String {
    assert_eq!(run.err_kind(i), kind, "reply {i}: {}", run.replies[i]);
    run.replies[i]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The wrapping token of a wrapped reply (registered for the log search).
fn wrapping_token(run: &ConsoleRun, i: usize) -> String {
    let text = secret_text(run, i);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("wrapping_token: "))
        .unwrap_or_else(|| panic!("reply {i} has no wrapping_token line"))
        .to_string();
    canary::register(&token);
    assert!(text.contains(&format!("\nunwrap with: vault unwrap {token}")));
    assert!(text.contains("\nwrapping_token_ttl: "));
    let data = &run.replies[i]["data"];
    assert_eq!(data["wrapped"], true);
    assert!(!data.to_string().contains(&token), "token in data: {data}");
    token
}

/// `bao unwrap -format=json TOKEN` (as root): the wrapped answer, or None
/// when Vault refuses (already used).
fn bao_unwrap(env: &Env, token: &str) -> Option<Value> {
    let c = env.cluster();
    // The wrapping token as the CLI's token: `bao unwrap` with no argument
    // unwraps it (never in argv).
    let out = c.cli(
        &SecretString::from(token.to_string()),
        &["unwrap", "-format=json"],
    );
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("bao unwrap JSON"))
}

fn unwrap_once(env: &Env, token: &str) -> Value {
    let v = bao_unwrap(env, token).expect("first unwrap");
    assert!(
        bao_unwrap(env, token).is_none(),
        "a wrapping token unwrapped twice"
    );
    v
}

fn b64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// The harness config with `extra` TOML appended.
fn config_with(env: &Env, name: &str, extra: &str) -> PathBuf {
    let c = env.cluster();
    let text = std::fs::read_to_string(&c.config_path).unwrap();
    let p = c
        .path()
        .join(format!("cmdkv-{name}-{}.toml", random_hex(4)));
    std::fs::write(&p, format!("{text}\n{extra}\n")).unwrap();
    p
}

// ---------------------------------------------------------------------------
// /get_keys
// ---------------------------------------------------------------------------

fn get_keys_after_bao_cli_put(env: &Env) {
    let c = env.cluster();
    // The operator's step from SPEC.md, with the real CLI.
    // The hash on stdin (`api_hash=-`), as an operator should type it.
    let out = c.cli_stdin(
        &c.root_token,
        &[
            "kv",
            "put",
            "secret/telegram",
            "api_id=123456",
            "api_hash=-",
        ],
        "abcdef1234567890",
    );
    assert!(
        out.status.success(),
        "bao kv put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = run(
        env,
        "alice",
        &[
            "/get_keys",
            "/get_keys -wrap-ttl=2m",
            "/get_keys -wrap-ttl=forever",
            "/get_keys -wrap-ttl=25h",
        ],
    );
    assert_eq!(
        secret_text(&r, 0),
        "API_ID: 123456\nAPI_HASH: abcdef1234567890"
    );
    assert_eq!(r.replies[0]["data"]["path"], "secret/telegram");
    assert!(!r.replies[0]["data"]
        .to_string()
        .contains("abcdef1234567890"));

    let token = wrapping_token(&r, 1);
    assert!(!r.ok_text(1).contains("abcdef1234567890"));
    assert_eq!(r.replies[1]["data"]["wrapping_token_ttl"], 120);
    let v = unwrap_once(env, &token);
    assert_eq!(v["data"]["data"]["api_id"], "123456");
    assert_eq!(v["data"]["data"]["api_hash"], "abcdef1234567890");

    assert!(err(&r, 2, "invalid").contains("wrap TTL"));
    assert!(err(&r, 3, "invalid").contains("24h"));

    // Agents never see the userbot's keys (role check, before Vault).
    let b = run(env, "bob", &["/get_keys"]);
    assert!(err(&b, 0, "denied").contains("not available to agent"));
}

// ---------------------------------------------------------------------------
// /kv get, put, patch, list
// ---------------------------------------------------------------------------

fn kv_get_put_patch_list(env: &Env) {
    let p = path("basic", "app");
    let dir = p.rsplit_once('/').unwrap().0.to_string();
    let (pw1, pw2, tok) = (
        canary::plant("kv"),
        canary::plant("kv"),
        canary::plant("kv"),
    );
    let put1 = format!("/kv put {p} user=admin password={pw1}");
    let get = format!("/kv get {p}");
    let field = format!("/kv get -field=password {p}");
    let missing_field = format!("/kv get -field=nope {p}");
    let put2 = format!("/kv put {p} user=admin password={pw2}");
    let get_v1 = format!("/kv get -version=1 -field=password {p}");
    let get_v9 = format!("/kv get -version=9 {p}");
    let patch = format!("/kv patch {p} token={tok}");
    let get_tok = format!("/kv get -field=token {p}");
    let get_pw = format!("/kv get -field=password {p}");
    let list = format!("/kv list {dir}/");
    let list_no_slash = format!("/kv list {dir}");
    let list_none = format!("/kv list {dir}/nothing-here/");
    let get_none = format!("/kv get {dir}/nothing-here");
    let patch_none = format!("/kv patch {dir}/nothing-here token={tok}");
    let get_dir = format!("/kv get {dir}/");
    let put_dir = format!("/kv put {dir}/ k={tok}");
    let lines = [
        put1.as_str(),                   // 0
        get.as_str(),                    // 1
        field.as_str(),                  // 2
        missing_field.as_str(),          // 3
        put2.as_str(),                   // 4
        get_v1.as_str(),                 // 5
        get_v9.as_str(),                 // 6
        patch.as_str(),                  // 7
        get_tok.as_str(),                // 8
        get_pw.as_str(),                 // 9
        list.as_str(),                   // 10
        list_no_slash.as_str(),          // 11
        list_none.as_str(),              // 12
        get_none.as_str(),               // 13
        patch_none.as_str(),             // 14
        get_dir.as_str(),                // 15
        put_dir.as_str(),                // 16
        "/kv get secret/it/../telegram", // 17
        "/kv get secret/it//x",          // 18
        "/kv get \"secret/it/x\u{7}\"",  // 19
        "/kv get secret",                // 20
    ];
    let r = run(env, "alice", &lines);
    assert_clean(&r, &[&pw1, &pw2, &tok]);

    // put: the new version, not the values.
    assert_eq!(
        plain_text(&r, 0),
        format!("Success! Data written to: {p} (version 1)")
    );
    assert_eq!(
        r.replies[0]["data"],
        json!({"path": p, "version": 1, "keys": ["password", "user"]})
    );

    // get: the CLI's sections, the values only in the (secret) text.
    let t = secret_text(&r, 1);
    let api = p.replacen("secret/", "secret/data/", 1);
    assert!(
        t.starts_with(&format!("== Secret Path ==\n{api}\n\n== Metadata ==\nKey")),
        "{t}"
    );
    assert!(t.contains("\nversion            1\n"), "{t}");
    assert!(t.contains("\ndestroyed          false\n"), "{t}");
    assert!(t.contains("\ndeletion_time      n/a\n"), "{t}");
    assert!(
        t.ends_with(&format!(
            "== Data ==\nKey         Value\n---         -----\npassword    {pw1}\nuser        admin"
        )),
        "{t}"
    );
    assert_eq!(r.replies[1]["data"]["version"], 1);
    assert_eq!(r.replies[1]["data"]["keys"], json!(["password", "user"]));

    // -field: only that value.
    assert_eq!(secret_text(&r, 2), pw1);
    assert_eq!(r.replies[2]["data"]["field"], "password");
    assert!(err(&r, 3, "not_found").contains("field `nope` not present"));

    // A second version; -version reads the first.
    assert_eq!(
        plain_text(&r, 4),
        format!("Success! Data written to: {p} (version 2)")
    );
    assert_eq!(secret_text(&r, 5), pw1);
    assert!(err(&r, 6, "not_found").contains("has no version 9"));

    // patch merges into the latest version.
    assert_eq!(
        plain_text(&r, 7),
        format!("Success! Data patched at: {p} (version 3)")
    );
    assert_eq!(r.replies[7]["data"]["keys"], json!(["token"]));
    assert_eq!(secret_text(&r, 8), tok);
    assert_eq!(secret_text(&r, 9), pw2);

    // list: keys one per line, with or without the trailing slash.
    assert_eq!(plain_text(&r, 10), "Keys\n----\napp");
    assert_eq!(r.replies[10]["data"]["keys"], json!(["app"]));
    assert_eq!(plain_text(&r, 11), "Keys\n----\napp");
    err(&r, 12, "not_found");

    // Nothing there.
    assert!(err(&r, 13, "not_found").contains("no secret at"));
    err(&r, 14, "not_found");

    // Paths: a directory where a secret is needed, `..`, empty segments,
    // control characters, a bare mount.
    assert!(err(&r, 15, "invalid").contains("only kv list takes a directory"));
    err(&r, 16, "invalid");
    assert!(err(&r, 17, "invalid").contains("'..'"));
    assert!(err(&r, 18, "invalid").contains("empty segment"));
    assert!(err(&r, 19, "invalid").contains("U+0007"));
    assert!(err(&r, 20, "invalid").contains("secret path is needed"));
}

fn kv_put_cas_conflicts(env: &Env) {
    let p = path("cas", "s");
    let (a, b) = (canary::plant("kv"), canary::plant("kv"));
    let l = [
        format!("/kv put -cas=0 {p} v={a}"),    // 0 creates
        format!("/kv put -cas=0 {p} v={b}"),    // 1 exists: conflict
        format!("/kv put -cas=7 {p} v={b}"),    // 2 wrong version: conflict
        format!("/kv put -cas=1 {p} v={b}"),    // 3 right version
        format!("/kv get -field=v {p}"),        // 4
        format!("/kv rollback -version=1 {p}"), // 5
        format!("/kv put -cas=x {p} v={b}"),    // 6 not a number
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    assert_clean(&r, &[&a, &b]);
    assert!(plain_text(&r, 0).ends_with("(version 1)"));
    assert!(err(&r, 1, "conflict").contains("check-and-set"));
    err(&r, 2, "conflict");
    assert!(plain_text(&r, 3).ends_with("(version 2)"));
    assert_eq!(secret_text(&r, 4), b);
    assert_eq!(
        plain_text(&r, 5),
        format!("Success! Rolled back {p} to version 1: written as version 3")
    );
    err(&r, 6, "invalid");
}

// ---------------------------------------------------------------------------
// delete / undelete / metadata get / rollback
// ---------------------------------------------------------------------------

fn kv_version_lifecycle(env: &Env) {
    let p = path("life", "s");
    let none = path("life", "none");
    let vals: Vec<String> = (0..3).map(|_| canary::plant("kv")).collect();
    let l = [
        format!("/kv put {p} v={}", vals[0]),       // 0 v1
        format!("/kv put {p} v={}", vals[1]),       // 1 v2
        format!("/kv put {p} v={}", vals[2]),       // 2 v3
        format!("/kv delete {p}"),                  // 3 deletes v3
        format!("/kv get {p}"),                     // 4 not_found: deleted
        format!("/kv delete {p}"),                  // 5 already deleted
        format!("/kv undelete -versions=3 {p}"),    // 6
        format!("/kv get -field=v {p}"),            // 7 v3 again
        format!("/kv delete -versions=1,2 {p}"),    // 8
        format!("/kv get -version=1 {p}"),          // 9 not_found: deleted
        format!("/kv undelete -versions=2,9 {p}"),  // 10 no version 9
        format!("/kv delete -versions=0 {p}"),      // 11 invalid
        format!("/kv rollback -version=1 {p}"),     // 12 v1 deleted
        format!("/kv rollback -version=99 {p}"),    // 13 beyond current
        format!("/kv undelete -versions=2 {p}"),    // 14
        format!("/kv rollback -version=2 {p}"),     // 15 → v4
        format!("/kv get -field=v {p}"),            // 16 = vals[1]
        format!("/kv metadata get {p}"),            // 17
        format!("/kv delete {none}"),               // 18 not_found
        format!("/kv undelete -versions=1 {none}"), // 19 not_found
        format!("/kv metadata get {none}"),         // 20 not_found
        format!("/kv rollback -version=1 {none}"),  // 21 not_found
        format!("/kv undelete {p}"),                // 22 -versions required
        format!("/kv rollback {p}"),                // 23 -version required
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
    assert_clean(&r, &refs);

    assert_eq!(
        plain_text(&r, 3),
        format!("Success! Deleted version 3 of {p} (kv undelete -versions=3 {p} restores it)")
    );
    assert_eq!(r.replies[3]["data"]["versions"], json!([3]));
    assert!(err(&r, 4, "not_found").contains("version 3 is deleted"));
    assert!(plain_text(&r, 5).contains("version 3 is already deleted"));
    assert_eq!(
        plain_text(&r, 6),
        format!("Success! Restored version 3 of {p}")
    );
    assert_eq!(secret_text(&r, 7), vals[2]);
    assert_eq!(
        plain_text(&r, 8),
        format!(
            "Success! Deleted versions 1, 2 of {p} (kv undelete -versions=1,2 {p} restores them)"
        )
    );
    assert!(err(&r, 9, "not_found").contains("version 1 is deleted"));
    assert!(err(&r, 10, "not_found").contains("has no version 9"));
    err(&r, 11, "invalid");
    assert!(err(&r, 12, "not_found").contains("cannot roll back"));
    assert!(err(&r, 13, "invalid").contains("current version is 3"));
    plain_text(&r, 14);
    assert_eq!(
        plain_text(&r, 15),
        format!("Success! Rolled back {p} to version 2: written as version 4")
    );
    assert_eq!(r.replies[15]["data"]["version"], 4);
    assert_eq!(secret_text(&r, 16), vals[1]);

    // metadata get: history, no values.
    let t = plain_text(&r, 17);
    let api = p.replacen("secret/", "secret/metadata/", 1);
    assert!(
        t.starts_with(&format!("== Metadata Path ==\n{api}\n")),
        "{t}"
    );
    assert!(t.contains("\ncurrent_version         4\n"), "{t}");
    assert!(t.contains("== Versions =="), "{t}");
    assert!(t.contains(", current"), "{t}");
    assert!(t.contains(", deleted "), "{t}");
    let d = &r.replies[17]["data"];
    assert_eq!(d["current_version"], 4);
    assert_eq!(d["versions"]["1"]["deleted"], true);
    assert_eq!(d["versions"]["2"]["deleted"], false);
    assert_eq!(d["versions"]["4"]["destroyed"], false);

    for i in 18..=21 {
        assert!(err(&r, i, "not_found").contains(&none), "{}", r.replies[i]);
    }
    err(&r, 22, "invalid");
    err(&r, 23, "invalid");
}

fn kv_gated_commands(env: &Env) {
    let p = path("gated", "s");
    let v = canary::plant("kv");
    // Validate, then gate: the key must exist for a rotation to be filed.
    env.cluster().root_call(
        reqwest::Method::POST,
        "transit/keys/it-cmdkv-gated",
        Some(json!({})),
    );
    let l = [
        format!("/kv put {p} v={v}"),
        format!("/kv destroy -versions=1 {p}"),
        format!("/kv metadata delete {p}"),
        "/transit rotate it-cmdkv-gated".to_string(),
        format!("/kv get -field=v {p}"),
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    assert_clean(&r, &[&v]);
    plain_text(&r, 0);
    for i in 1..=3 {
        err(&r, i, "approval_required");
    }
    // Nothing happened while the requests wait.
    assert_eq!(secret_text(&r, 4), v);
}

// ---------------------------------------------------------------------------
// Vault is the boundary; the role check is a courtesy
// ---------------------------------------------------------------------------

fn vault_itself_denies(env: &Env) {
    // Admins pass the role check for /kv and /transit, but the admin policy
    // keeps the userbot's session and the session key's plaintext out of
    // reach: Vault says no. (Writes to the broker's own records do not even
    // reach Vault: the effect check refuses them; the policy matrix shows
    // that Vault would refuse them too.)
    let x = canary::plant("kv");
    let session = "secret/vaultgram/telegram-session";
    let l = [
        format!("/kv get {session}"),                // 0
        format!("/kv put {session} session={x}"),    // 1
        format!("/kv patch {session} session={x}"),  // 2
        format!("/kv delete -versions=1 {session}"), // 3
        format!("/kv list {session}/"),              // 4
        format!("/transit encrypt vaultgram {x}"),   // 5 allowed
        "/transit datakey vaultgram".to_string(),    // 6
        format!("/kv get -field=session {session}"), // 7
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    assert_clean(&r, &[&x]);
    for i in [0, 4, 6, 7] {
        assert!(
            err(&r, i, "denied").contains("permission denied"),
            "{}",
            r.replies[i]
        );
    }
    for i in [1, 2, 3] {
        assert!(
            err(&r, i, "denied").contains("holds the broker's own records"),
            "{}",
            r.replies[i]
        );
    }

    let ct = plain_text(&r, 5)
        .lines()
        .find_map(|l| l.strip_prefix("ciphertext"))
        .unwrap()
        .trim()
        .to_string();
    let r2 = run(env, "dave", &[&format!("/transit decrypt vaultgram {ct}")]);
    assert!(err(&r2, 0, "denied").contains("permission denied"));
}

fn role_rules(env: &Env) {
    let p = path("roles", "s");
    let v = canary::plant("kv");
    let seed = run(env, "alice", &[&format!("/kv put {p} v={v}")]);
    plain_text(&seed, 0);

    let l = [
        format!("/kv get {p}"),
        format!("/kv put {p} v={v}"),
        format!("/kv patch {p} v={v}"),
        format!("/kv list {p}/"),
        format!("/kv delete {p}"),
        format!("/kv undelete -versions=1 {p}"),
        format!("/kv metadata get {p}"),
        format!("/kv rollback -version=1 {p}"),
        format!("/transit encrypt it-cmdkv-roles {v}"),
        "/transit decrypt it-cmdkv-roles vault:v1:AAAA".to_string(),
        "/transit keys".to_string(),
        "/transit datakey it-cmdkv-roles".to_string(),
        "/transit rewrap it-cmdkv-roles vault:v1:AAAA".to_string(),
        "/get_keys".to_string(),
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    for agent in ["bob", "carol"] {
        let r = run(env, agent, &lines);
        assert_clean(&r, &[&v]);
        for i in 0..lines.len() {
            let m = err(&r, i, "denied");
            assert!(m.contains("not available to agent operators"), "{m}");
        }
    }
    // Both admins may.
    for admin in ["alice", "dave"] {
        let r = run(env, admin, &[&format!("/kv get -field=v {p}")]);
        assert_eq!(secret_text(&r, 0), v);
    }
    // An unknown operator gets nothing at all: the console refuses to start.
    let r = console(env, "nobody", &["/kv get secret/telegram", "/whoami"]);
    assert!(r.replies.is_empty(), "{:?}", r.replies);
    assert_ne!(r.exit_code, Some(0));
    assert!(
        r.stderr.contains("no operator named `nobody`"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------
// -wrap-ttl
// ---------------------------------------------------------------------------

fn wrap_ttl_single_use(env: &Env) {
    let p = path("wrap", "s");
    let (pw, other) = (canary::plant("kv"), canary::plant("kv"));
    let l = [
        format!("/kv put {p} pw={pw} other={other}"),    // 0
        format!("/kv get -wrap-ttl=5m {p}"),             // 1
        format!("/kv get -wrap-ttl=1m -field=pw {p}"),   // 2
        format!("/kv get -wrap-ttl=90 -version=1 {p}"),  // 3
        format!("/kv get -wrap-ttl=1d {p}"),             // 4 invalid
        format!("/kv get -wrap-ttl=5m -field=nope {p}"), // 5 not_found
        format!("/kv delete {p}"),                       // 6
        format!("/kv get -wrap-ttl=5m {p}"),             // 7 deleted: no token
        format!("/kv get -wrap-ttl=5m {p}-none"),        // 8 not_found
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    assert_clean(&r, &[&pw, &other]);

    // The whole secret, wrapped by Vault: it unwraps to {data, metadata}.
    let t1 = wrapping_token(&r, 1);
    let text = r.ok_text(1);
    assert!(!text.contains(&pw) && !text.contains(&other), "{text}");
    assert!(text.contains("\nwrapping_token_ttl: 5m0s\n"), "{text}");
    let api = p.replacen("secret/", "secret/data/", 1);
    assert!(
        text.contains(&format!("\nwrapping_token_creation_path: {api}\n")),
        "{text}"
    );
    assert_eq!(r.replies[1]["data"]["wrapping_token_ttl"], 300);
    let v = unwrap_once(env, &t1);
    assert_eq!(v["data"]["data"], json!({"pw": pw, "other": other}));
    assert_eq!(v["data"]["metadata"]["version"], 1);

    // -field: only that field is wrapped.
    let t2 = wrapping_token(&r, 2);
    assert_eq!(r.replies[2]["data"]["wrapping_token_ttl"], 60);
    let v = unwrap_once(env, &t2);
    assert_eq!(v["data"], json!({"pw": pw}));

    let t3 = wrapping_token(&r, 3);
    assert_eq!(r.replies[3]["data"]["wrapping_token_ttl"], 90);
    assert_eq!(unwrap_once(env, &t3)["data"]["data"]["pw"], json!(pw));

    assert!(err(&r, 4, "invalid").contains("wrap TTL"));
    err(&r, 5, "not_found");
    plain_text(&r, 6);
    assert!(err(&r, 7, "not_found").contains("is deleted"));
    err(&r, 8, "not_found");
}

fn wrap_ttl_by_role_config(env: &Env) {
    let p = path("wrapcfg", "s");
    let pw = canary::plant("kv");
    let cfg = config_with(env, "wrap", "[telegram.wrap_ttl]\nadmin = \"2m\"");
    let key = format!("it-cmdkv-wrapcfg-{}", random_hex(3));
    // Encrypt with the plain config (encrypt has no secret reply anyway).
    let enc = run(env, "alice", &[&format!("/transit encrypt {key} {pw}")]);
    assert_clean(&enc, &[&pw]);
    let ct = enc.replies[0]["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();

    let l = [
        format!("/kv put {p} pw={pw}"),         // 0 not a secret reply
        format!("/kv get {p}"),                 // 1 wrapped, 2m
        format!("/kv get -field=pw {p}"),       // 2 wrapped, 2m
        format!("/kv get -wrap-ttl=30s {p}"),   // 3 explicit TTL wins
        "/get_keys".to_string(),                // 4 wrapped
        format!("/transit decrypt {key} {ct}"), // 5 wrapped
        format!("/transit datakey {key}"),      // 6 wrapped
        format!("/kv list {}/", p.rsplit_once('/').unwrap().0), // 7 not wrapped
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = console_with_config(env, &cfg, "alice", &lines);
    assert_eq!(r.replies.len(), lines.len(), "{}", r.stderr);
    assert_clean(&r, &[&pw]);
    plain_text(&r, 0);
    for i in [1, 2, 4, 5, 6] {
        let t = wrapping_token(&r, i);
        assert_eq!(r.replies[i]["data"]["wrapping_token_ttl"], 120, "{i}");
        assert!(!r.ok_text(i).contains(&pw));
        let v = unwrap_once(env, &t);
        match i {
            1 => assert_eq!(v["data"]["data"]["pw"], json!(pw)),
            2 => assert_eq!(v["data"]["pw"], json!(pw)),
            4 => assert_eq!(v["data"]["data"]["api_id"], "123456"),
            5 => assert_eq!(v["data"]["plaintext"], json!(b64(pw.as_bytes()))),
            _ => {
                assert!(v["data"]["plaintext"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()));
                assert!(v["data"]["ciphertext"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("vault:v1:")));
            }
        }
    }
    let t = wrapping_token(&r, 3);
    assert_eq!(r.replies[3]["data"]["wrapping_token_ttl"], 30);
    unwrap_once(env, &t);
    assert_eq!(plain_text(&r, 7), "Keys\n----\ns");

    // The default is per role: agents (none configured) and the normal
    // config are unaffected.
    let plain = run(env, "alice", &[&format!("/kv get -field=pw {p}")]);
    assert_eq!(secret_text(&plain, 0), pw);
}

// ---------------------------------------------------------------------------
// /transit
// ---------------------------------------------------------------------------

fn transit_commands(env: &Env) {
    let key = format!("it-cmdkv-transit-{}", random_hex(3));
    let (w1, w2) = (canary::plant("kv"), canary::plant("kv"));
    let phrase = format!("{w1} and {w2}");
    let enc = run(
        env,
        "alice",
        &[
            &format!("/transit encrypt {key} {w1} and {w2}"),
            &format!("/transit encrypt {key} \"{w1}  spaced\""),
        ],
    );
    assert_clean(&enc, &[&w1, &w2]);
    let t = plain_text(&enc, 0);
    let ct = enc.replies[0]["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    assert_eq!(
        t,
        format!(
            "Key            Value\n---            -----\nciphertext     {ct}\nkey_version    1"
        )
    );
    assert_eq!(enc.replies[0]["data"]["key_version"], 1);
    let ct2 = enc.replies[1]["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();

    let l = [
        format!("/transit decrypt {key} {ct}"),              // 0
        format!("/transit decrypt {key} {ct2}"),             // 1 quoted words kept
        format!("/transit rewrap {key} {ct}"),               // 2
        "/transit keys".to_string(),                         // 3
        format!("/transit datakey {key}"),                   // 4
        format!("/transit decrypt -wrap-ttl=3m {key} {ct}"), // 5
        format!("/transit datakey -wrap-ttl=3m {key}"),      // 6
        format!("/transit decrypt it-cmdkv-none {ct}"),      // 7 not_found
        format!("/transit rewrap it-cmdkv-none {ct}"),       // 8 not_found
        "/transit datakey it-cmdkv-none".to_string(),        // 9 not_found
        format!("/transit decrypt {key} nonsense"),          // 10 invalid (Vault)
        format!("/transit decrypt {key} vault:v1:%%%"),      // 11 invalid (Vault)
        format!("/transit encrypt ../sys {w1}"),             // 12 invalid (ours)
        format!("/transit decrypt {key}"),                   // 13 invalid (parse)
        format!("/transit decrypt -wrap-ttl=0 {key} {ct}"),  // 14 invalid
        format!("/transit rotate {key}"),                    // 15 approval
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    assert_clean(&r, &[&w1, &w2]);

    assert_eq!(secret_text(&r, 0), phrase);
    assert_eq!(
        r.replies[0]["data"],
        json!({"key": key, "key_version": 1, "encoding": "utf-8"})
    );
    assert_eq!(secret_text(&r, 1), format!("{w1}  spaced"));
    let t = plain_text(&r, 2);
    let rewrapped = r.replies[2]["data"]["ciphertext"].as_str().unwrap();
    assert!(rewrapped.starts_with("vault:v1:") && t.contains(rewrapped));

    let keys = plain_text(&r, 3);
    assert!(keys.starts_with("Keys\n----\n"), "{keys}");
    assert!(keys.lines().any(|l| l == key), "{keys}");
    assert!(keys.lines().any(|l| l == "vaultgram"), "{keys}");

    let dk = secret_text(&r, 4);
    assert!(dk.contains("\nplaintext      "), "datakey table");
    let dkct = r.replies[4]["data"]["ciphertext"].as_str().unwrap();
    assert!(dk.contains(&format!("\nciphertext     {dkct}\n")));
    let dk_plain = dk
        .lines()
        .find_map(|l| l.strip_prefix("plaintext"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(dk_plain.len(), 44, "a 256-bit key in base64");
    assert!(!r.replies[4]["data"].to_string().contains(&dk_plain));

    // Wrapped: the plaintext only behind a single-use token.
    let tok = wrapping_token(&r, 5);
    assert!(!r.ok_text(5).contains(&w1));
    assert_eq!(
        unwrap_once(env, &tok)["data"]["plaintext"],
        json!(b64(phrase.as_bytes()))
    );
    let tok = wrapping_token(&r, 6);
    let v = unwrap_once(env, &tok);
    assert!(v["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));
    assert_eq!(v["data"]["plaintext"].as_str().unwrap().len(), 44);

    for i in 7..=9 {
        assert!(
            err(&r, i, "not_found").contains("key not found"),
            "{}",
            r.replies[i]
        );
    }
    err(&r, 10, "invalid");
    err(&r, 11, "invalid");
    assert!(err(&r, 12, "invalid").contains("transit key name"));
    err(&r, 13, "invalid");
    err(&r, 14, "invalid");
    err(&r, 15, "approval_required");
}

// ---------------------------------------------------------------------------
// /whoami, /help, /health
// ---------------------------------------------------------------------------

fn whoami_help_health(env: &Env) {
    let r = run(env, "alice", &["/whoami", "/help", "/health"]);
    let w = plain_text(&r, 0);
    assert!(w.starts_with("operator: alice\nrole: admin\n"), "{w}");
    assert!(
        w.contains("vault policies: ") && w.contains("vaultgram-op-admin"),
        "{w}"
    );
    assert!(w.contains("token-vaultgram-alice"), "{w}");
    assert!(w.contains("broker token: TTL "), "{w}");
    let d = &r.replies[0]["data"];
    assert_eq!(d["operator"], "alice");
    assert_eq!(d["role"], "admin");
    assert!(d["vault"]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("vaultgram-op-admin")));
    let ttl = d["vault"]["ttl_secs"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 300, "{ttl}");
    assert!(d["broker"]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("vaultgram-broker")));
    assert!(d["broker"]["ttl_secs"].as_u64().unwrap() > 0);

    let h = plain_text(&r, 1);
    assert!(h.contains("/kv get [-version=N]"), "{h}");
    assert!(h.contains("/transit datakey"), "{h}");
    assert!(h.contains("/get_keys"), "{h}");

    let s = plain_text(&r, 2);
    assert!(
        s.starts_with("status: ok\nvault: ok (unsealed, active)"),
        "{s}"
    );
    assert!(s.contains("\netcd: ok (3 members, leader "), "{s}");
    assert!(s.contains("\ntelegram: not running in this process"), "{s}");
    let d = &r.replies[2]["data"];
    assert_eq!(d["ok"], true);
    assert_eq!(d["vault"]["sealed"], false);
    assert_eq!(d["vault"]["initialized"], true);
    assert!(d["vault"]["broker_token_ttl_secs"].as_u64().unwrap() > 0);
    assert_eq!(d["etcd"]["members"], 3);
    assert!(d["etcd"]["leader"].as_str().is_some_and(|l| !l.is_empty()));
    assert_eq!(d["telegram"]["running"], false);

    // An agent: its own policy, and /help without what it may not use.
    let b = run(env, "bob", &["/whoami", "/help", "/health"]);
    let w = plain_text(&b, 0);
    assert!(
        w.starts_with("operator: bob\nrole: agent\nagent: bob\n"),
        "{w}"
    );
    assert!(b.replies[0]["data"]["vault"]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("vaultgram-op-agent-bob")));
    let h = plain_text(&b, 1);
    assert!(
        !h.contains("/kv ") && !h.contains("/transit ") && !h.contains("/get_keys"),
        "{h}"
    );
    assert!(h.contains("/whoami") && h.contains("/health"), "{h}");
    assert_eq!(b.replies[2]["data"]["ok"], true);
}
