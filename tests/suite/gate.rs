//! The two-person rule by effect (issue 17): every finding of the attack
//! run, reproduced against the real cluster through `vaultgram console`,
//! `run` and `ctl`. Each test failed before its fix.
//!
//! Names used only here: secrets `secret/it/gate/*`, panels `it-gate-*`,
//! MTProto users `95xx`, transit keys `it-gate-*`, TOTP keys `it-gate-*`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::socket::Broker;
use super::TestFn;
use crate::common::canary;
use crate::common::cluster::random_hex;
use crate::common::console::{console, ConsoleRun};
use crate::common::totp::{approvers, fresh_code, wrong_code};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "gate::panel_passwords_only_through_panel_show_reveal",
        panel_passwords_only_through_reveal,
    ),
    (
        "gate::version_churn_and_revocation_through_kv_are_refused",
        churn_and_revocation_refused,
    ),
    (
        "gate::what_pending_and_audit_show_is_escaped_and_canonical",
        pending_and_audit_escaped,
    ),
    (
        "gate::validate_then_gate_and_cap_per_requester",
        validate_then_gate_and_cap,
    ),
    (
        "gate::agent_cancels_its_own_request",
        agent_cancels_own_request,
    ),
    (
        "gate::denials_do_not_churn_child_tokens",
        denials_do_not_churn_tokens,
    ),
    (
        "gate::wrong_codes_cancel_a_request_and_expected_errors_are_quiet",
        wrong_codes_cancel,
    ),
    ("gate::kv_only_on_the_kv_v2_mount", kv_only_on_its_mount),
    (
        "gate::socket_survives_bad_bytes_idles_out_and_caps_connections",
        socket_limits,
    ),
    (
        "gate::ctl_needs_only_the_socket_path",
        ctl_needs_only_the_socket,
    ),
];

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn run(env: &Env, op: &str, lines: &[&str]) -> ConsoleRun {
    console(env, op, lines).one_per(lines)
}

fn request_id(r: &ConsoleRun, i: usize) -> String {
    assert_eq!(r.err_kind(i), "approval_required", "{}", r.replies[i]);
    let m = r.message(i);
    m.strip_prefix("request ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request ID in {m:?}"))
        .to_string()
}

/// Every reply of `r` free of `secret`.
fn nowhere(r: &ConsoleRun, secret: &str) {
    for (i, rep) in r.replies.iter().enumerate() {
        assert!(!rep.to_string().contains(secret), "reply {i}: {rep}");
    }
}

/// The raw characters that must never reach a person.
fn raw_forbidden(s: &str) -> Option<char> {
    s.chars()
        .find(|&c| c != '\n' && vaultgram::text::forbidden_char(c))
}

/// A root-token call that must succeed (2xx); its JSON.
fn root(env: &Env, method: Method, path: &str, body: Option<Value>) -> Value {
    env.cluster().root_call(method, path, body)
}

fn pending_requesters(env: &Env) -> Vec<Value> {
    let out = env.cluster().etcdctl(
        &[
            "get",
            "--prefix",
            "--print-value-only",
            "/vaultgram/approvals/pending/",
        ],
        true,
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn create_transit_key(env: &Env, key: &str) {
    let path = format!("transit/keys/{key}");
    env.cluster()
        .root_call(Method::POST, &path, Some(json!({})));
}

// ---------------------------------------------------------------------------
// 1. panel passwords only through /panel show --reveal
// ---------------------------------------------------------------------------

fn panel_passwords_only_through_reveal(env: &Env) {
    let pw = canary::plant("gate-panelpw");
    let p = "it-gate-p1";
    let r = run(
        env,
        "alice",
        &[
            &format!("/panel add {p} marzban https://gate.example.com/ ops {pw}"),
            &format!("/panel assign {p} bob"),
        ],
    );
    r.ok_text(1);
    let spellings = [
        format!("/kv get secret/vaultgram/panels/{p}"),
        format!("/kv get -field=password secret/vaultgram/panels/{p}"),
        format!("/kv get -wrap-ttl=60s secret/vaultgram/panels/{p}"),
        format!("/kv get -version=1 secret/vaultgram/panels/{p}"),
        format!("/kv get secret/vaultgram/panels-by-agent/bob/{p}"),
        format!("/kv get -field=password -wrap-ttl=60s secret/vaultgram/panels-by-agent/bob/{p}"),
    ];
    let mut lines: Vec<&str> = spellings.iter().map(String::as_str).collect();
    let url = format!("/kv get -field=url secret/vaultgram/panels/{p}");
    lines.push(&url);
    let r = run(env, "alice", &lines);
    for (i, line) in lines.iter().enumerate().take(spellings.len()) {
        assert_eq!(r.err_kind(i), "denied", "{line}: {}", r.replies[i]);
        assert!(
            r.message(i).contains("/panel show NAME --reveal"),
            "{}",
            r.replies[i]
        );
    }
    // Other fields stay readable.
    assert_eq!(r.ok_text(spellings.len()), "https://gate.example.com/");
    nowhere(&r, &pw);
    // The gate itself is unchanged: a reveal waits for a second admin, and
    // so does removing the panel (a delete with all versions).
    let r = run(
        env,
        "alice",
        &[
            &format!("/panel show --reveal {p}"),
            &format!("/panel remove {p}"),
        ],
    );
    let (reveal, remove) = (request_id(&r, 0), request_id(&r, 1));
    run(
        env,
        "alice",
        &[&format!("/deny {reveal}"), &format!("/deny {remove}")],
    );
    for rel in [
        format!("vaultgram/panels/{p}"),
        format!("vaultgram/panels-by-agent/bob/{p}"),
    ] {
        root(env, Method::DELETE, &format!("secret/metadata/{rel}"), None);
    }
}

// ---------------------------------------------------------------------------
// 2. destroy by version churn, revocation through /kv
// ---------------------------------------------------------------------------

fn churn_and_revocation_refused(env: &Env) {
    // apply.sh made the history policy explicit.
    let cfg = root(env, Method::GET, "secret/config", None);
    assert_eq!(cfg["data"]["max_versions"], 100, "{cfg}");
    assert_eq!(cfg["data"]["delete_version_after"], "0s", "{cfg}");

    // A secret that keeps 3 versions (a Vault operator's setting).
    let rel = format!("it/gate/churn-{}", random_hex(4));
    let p = format!("secret/{rel}");
    root(
        env,
        Method::POST,
        &format!("secret/metadata/{rel}"),
        Some(json!({"max_versions": 3})),
    );
    let vals: Vec<String> = (0..4)
        .map(|i| canary::plant(&format!("churn{i}")))
        .collect();
    let l = [
        format!("/kv put {p} v={}", vals[0]),
        format!("/kv put {p} v={}", vals[1]),
        format!("/kv put {p} v={}", vals[2]),
        format!("/kv put {p} v={}", vals[3]),
        format!("/kv patch {p} w={}", vals[3]),
        format!("/kv rollback -version=2 {p}"),
        format!("/kv get -version=1 -field=v {p}"),
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    for i in 0..3 {
        r.ok_text(i);
    }
    for (i, line) in lines.iter().enumerate().take(6).skip(3) {
        assert_eq!(r.err_kind(i), "denied", "{line}: {}", r.replies[i]);
        assert!(
            r.message(i).contains("would drop version 1 for good"),
            "{}",
            r.replies[i]
        );
    }
    // Nothing was written: version 1 is still there, 3 is current.
    assert_eq!(r.ok_text(6), vals[0]);
    let meta = root(env, Method::GET, &format!("secret/metadata/{rel}"), None);
    assert_eq!(meta["data"]["current_version"], 3, "{meta}");
    // Once version 1 is destroyed (by a Vault operator here; in chat an
    // approved /kv destroy), writing goes on: nothing live is lost.
    root(
        env,
        Method::POST,
        &format!("secret/destroy/{rel}"),
        Some(json!({"versions": [1]})),
    );
    let r = run(env, "alice", &[&format!("/kv put {p} v={}", vals[3])]);
    assert!(r.ok_text(0).contains("version"), "{}", r.replies[0]);

    // Revocation and history loss through /kv on the broker's records.
    let r = run(env, "alice", &["/mtproto issue 9501"]);
    r.ok_text(0);
    let rec = "secret/vaultgram/mtproto/admin/9501";
    let l = [
        format!("/kv delete {rec}"),
        format!("/kv delete -versions=1 {rec}"),
        format!("/kv metadata delete {rec}"),
        format!("/kv destroy -versions=1 {rec}"),
        format!("/kv put {rec} secret=00"),
        format!("/kv undelete -versions=1 {rec}"),
        "/kv delete secret/vaultgram/agents/bob".to_string(),
        "/mtproto show 9501".to_string(),
    ];
    let lines: Vec<&str> = l.iter().map(String::as_str).collect();
    let r = run(env, "alice", &lines);
    for (i, line) in lines.iter().enumerate().take(7) {
        assert_eq!(r.err_kind(i), "denied", "{line}: {}", r.replies[i]);
        assert!(
            r.message(i).contains("broker's own records"),
            "{}",
            r.replies[i]
        );
    }
    r.ok_text(7);
    let meta = root(
        env,
        Method::GET,
        "secret/metadata/vaultgram/mtproto/admin/9501",
        None,
    );
    assert_eq!(meta["data"]["versions"]["1"]["deletion_time"], "", "{meta}");
}

// ---------------------------------------------------------------------------
// 3. what an approver reads
// ---------------------------------------------------------------------------

fn pending_and_audit_escaped(env: &Env) {
    let c = env.cluster();
    // Decoys with terminal and bidi controls: refused at parse, nothing filed.
    let decoys = [
        "/transit rotate \"k\u{1b}[2K\rsecret/x/scratch\"",
        "/kv metadata delete \"secret/it/gate/a\u{85}b\"",
        "/agent revoke \"a\u{2028}b\"",
        "/mtproto revoke \"u\u{202e}1\"",
        "/panel show --reveal \"p\u{2066}1\u{2069}\"",
        "/transit rotate \"vertical\u{0b}tab\"",
        // Blank or invisible: a Hangul filler, a Braille blank, a combining
        // grapheme joiner, a variation selector (issue 28).
        "/agent revoke \"a\u{3164}b\"",
        "/mtproto revoke \"u\u{2800}1\"",
        "/transit rotate \"k\u{034f}\"",
        "/panel show --reveal \"p\u{fe0f}\"",
    ];
    let r = run(env, "alice", &decoys);
    for (i, decoy) in decoys.iter().enumerate() {
        assert_eq!(r.err_kind(i), "invalid", "{decoy:?}: {}", r.replies[i]);
        assert!(
            r.message(i).contains("control or invisible character"),
            "{}",
            r.replies[i]
        );
        let rendered = r.replies[i].to_string();
        assert!(raw_forbidden(&r.message(i)).is_none(), "{rendered}");
    }
    // None was filed (other tests file requests meanwhile: look for ours).
    assert!(!pending_requesters(env).iter().any(|p| p["line"]
        .as_str()
        .is_some_and(|l| raw_forbidden(l).is_some() || l.contains("scratch"))));

    // A request stored with such characters (an older broker, or anyone
    // with etcd access) is shown escaped, one line per request.
    let id = format!("9a{}", random_hex(3));
    let evil_line = "/kv metadata delete secret/x/important\u{1b}[2K\r/kv metadata delete secret/x/scratch\u{85}\u{2028}\u{202e}\u{3164}\u{2800}\u{34f}\u{fe0f}/\u{5d0}\u{5d1}";
    let req = json!({
        "id": id, "requester": "alice\u{1b}[1A", "command": "kv metadata delete",
        "target": "secret/x/\rimportant", "line": evil_line, "request_id": "r1",
        "transport": "console", "created_at": "2026-01-01T00:00:00Z",
        "expires_at": vaultgram::clock::unix_secs() + 600, "ttl_secs": 600,
    });
    let key = format!("/vaultgram/approvals/pending/{id}");
    let out = c.etcdctl(&["put", &key, &req.to_string()], true);
    assert!(out.status.success(), "{out:?}");
    // An audit record carrying the same characters.
    let akey = format!("/vaultgram/audit/{:020}-zz{}", u64::MAX / 2, random_hex(3));
    let rec = json!({
        "time": "2026-01-01T00:00:00.000Z", "request_id": "zz", "operator": "bob\u{1b}[2K",
        "transport": "console", "command": "mtproto show", "target": "9\r\u{2028}x\u{202e}\u{3164}\u{627}",
        "result": "ok\nforged line",
    });
    let out = c.etcdctl(&["put", &akey, &rec.to_string()], true);
    assert!(out.status.success(), "{out:?}");

    let r = run(env, "dave", &["/pending", "/audit 500"]);
    let pending = r.ok_text(0);
    let audit = r.ok_text(1);
    for text in [&pending, &audit] {
        assert!(raw_forbidden(text).is_none(), "raw control in {text:?}");
    }
    let mine: Vec<&str> = pending.lines().filter(|l| l.starts_with(&id)).collect();
    assert_eq!(mine.len(), 1, "{pending}");
    assert!(
        mine[0].contains("important\\u{001b}[2K\\r/kv metadata delete secret/x/scratch\\u{0085}\\u{2028}\\u{202e}\\u{3164}\\u{2800}\\u{034f}\\u{fe0f}/\\u{05d0}\\u{05d1}"),
        "{}",
        mine[0]
    );
    assert!(mine[0].contains("alice\\u{001b}[1A"), "{}", mine[0]);
    let forged: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("bob\\u{001b}"))
        .collect();
    assert_eq!(forged.len(), 1, "{audit}");
    assert!(forged[0].contains("ok\\nforged line"), "{}", forged[0]);
    assert!(
        forged[0].contains("x\\u{202e}\\u{3164}\\u{0627}"),
        "{}",
        forged[0]
    );
    assert!(!audit.lines().any(|l| l.starts_with("forged line")));
    let _ = c.etcdctl(&["del", &key], true);
    let _ = c.etcdctl(&["del", &akey], true);

    // A real request: /pending shows the canonical command /approve runs.
    let rel = format!("it/gate/canon-{}", random_hex(4));
    let r = run(
        env,
        "alice",
        &[
            &format!("/kv put secret/{rel} v=1"),
            &format!("/kv destroy -versions=1,1 secret/{rel}"),
            &format!("/kv   metadata   delete   \"secret/{rel}\""),
        ],
    );
    let (a, b) = (request_id(&r, 1), request_id(&r, 2));
    let p = run(env, "dave", &["/pending"]);
    let text = p.ok_text(0);
    let line_of = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    // The canonical line, then what it does to what exists now.
    assert!(
        line_of(&a).contains(&format!(
            "): /kv destroy -versions=1 secret/{rel} — it destroys version(s) 1 (created "
        )),
        "{text}"
    );
    assert!(
        line_of(&b).contains(&format!(
            "): /kv metadata delete secret/{rel} — it deletes secret/{rel} with all 1 version(s)"
        )),
        "{text}"
    );
    run(
        env,
        "alice",
        &[&format!("/deny {a}"), &format!("/deny {b}")],
    );

    // Unknown commands and typos echo nothing back.
    let hex = "0123456789abcdef0123456789abcdef";
    let r = run(env, "alice", &[&format!("/{hex}"), &format!("/nope {hex}")]);
    nowhere(&r, hex);
    assert_eq!(r.err_kind(0), "invalid");
}

// ---------------------------------------------------------------------------
// 4. validate, then gate; a cap per requester
// ---------------------------------------------------------------------------

fn validate_then_gate_and_cap(env: &Env) {
    let s = approvers(env, "it-gate-cap", |t| {
        t.replace(
            "max_pending_per_operator = 100",
            "max_pending_per_operator = 2",
        )
    });
    let theirs = |who: &str| {
        pending_requesters(env)
            .into_iter()
            .filter(|p| {
                p["requester"] == who && p["line"].as_str().unwrap_or("").contains("it-gate")
            })
            .count()
    };
    // bob: another owner's user, refused at once (nothing filed).
    let r = s.run(env, "carol", &["/mtproto issue 9511"]);
    r.ok_text(0);
    let r = s.run(
        env,
        "bob",
        &[
            "/mtproto revoke carol/9511",
            "/panel show --reveal it-gate-unassigned",
        ],
    );
    assert_eq!(r.err_kind(0), "denied", "{}", r.replies[0]);
    assert_eq!(r.err_kind(1), "not_found", "{}", r.replies[1]);
    // alice: a panel, a key, versions that do not exist.
    let rel = format!("it/gate/cap-{}", random_hex(4));
    let r = s.run(
        env,
        "dave",
        &[
            &format!("/kv put secret/{rel} v=1"),
            "/panel show --reveal it-gate-nope",
            "/transit rotate it-gate-nokey",
            &format!("/kv destroy -versions=7 secret/{rel}"),
            "/kv metadata delete secret/it/gate/none",
            "/agent revoke it-gate-none",
            "/mtproto revoke 9599",
        ],
    );
    r.ok_text(0);
    for (i, kind) in [
        (1, "not_found"),
        (2, "not_found"),
        (3, "invalid"),
        (4, "not_found"),
        (5, "not_found"),
        (6, "not_found"),
    ] {
        assert_eq!(r.err_kind(i), kind, "{}", r.replies[i]);
    }
    assert_eq!(theirs("dave"), 0);
    assert_eq!(theirs("bob"), 0);

    // The cap: two requests wait, the third is refused; a cancel frees one.
    create_transit_key(env, "it-gate-cap1");
    create_transit_key(env, "it-gate-cap2");
    create_transit_key(env, "it-gate-cap3");
    let r = s.run(
        env,
        "dave",
        &[
            "/transit rotate it-gate-cap1",
            "/transit rotate it-gate-cap2",
            "/transit rotate it-gate-cap3",
        ],
    );
    let first = request_id(&r, 0);
    request_id(&r, 1);
    assert_eq!(r.err_kind(2), "conflict", "{}", r.replies[2]);
    assert!(
        r.message(2).contains("max_pending_per_operator"),
        "{}",
        r.replies[2]
    );
    assert_eq!(theirs("dave"), 2);
    let r = s.run(
        env,
        "dave",
        &[&format!("/deny {first}"), "/transit rotate it-gate-cap3"],
    );
    r.ok_text(0);
    let third = request_id(&r, 1);
    let second_left: Vec<String> = pending_requesters(env)
        .into_iter()
        .filter(|p| {
            p["requester"] == "dave" && p["line"].as_str().unwrap_or("").contains("it-gate-cap")
        })
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(second_left.len(), 2, "{second_left:?}");
    for id in second_left {
        s.run(env, "dave", &[&format!("/deny {id}")]).ok_text(0);
    }
    let _ = (&s.alice, &s.dave, third);
}

// ---------------------------------------------------------------------------
// 5. an agent cancels its own request
// ---------------------------------------------------------------------------

fn agent_cancels_own_request(env: &Env) {
    let r = run(env, "bob", &["/mtproto issue 9521", "/mtproto revoke 9521"]);
    r.ok_text(0);
    let id = request_id(&r, 1);
    let rc = run(env, "carol", &[&format!("/deny {id}")]);
    assert_eq!(rc.err_kind(0), "denied", "{}", rc.replies[0]);
    let rb = run(env, "bob", &[&format!("/deny {id}"), "/mtproto show 9521"]);
    assert!(rb.ok_text(0).contains("cancelled"), "{}", rb.replies[0]);
    rb.ok_text(1);
    assert!(!pending_requesters(env)
        .iter()
        .any(|p| p["id"] == id.as_str()));
}

// ---------------------------------------------------------------------------
// 6. denials do not churn Vault's token store
// ---------------------------------------------------------------------------

fn denials_do_not_churn_tokens(env: &Env) {
    use std::sync::Arc;
    use vaultgram::dispatch::App;
    use vaultgram::transport_kind::Transport;
    let cfg = env.config();
    let bob = crate::common::operator(&cfg, "bob");
    let send = |app: &Arc<App>, line: &'static str| {
        env.rt
            .block_on(app.dispatch(Some(&bob), "bob", Transport::Console, line))
            .unwrap()
    };
    let app = env.rt.block_on(App::start(cfg.clone())).unwrap();
    let token = |app: &Arc<App>| env.rt.block_on(app.tokens.for_operator(&bob)).unwrap();
    send(&app, "/mtproto issue 9531").unwrap();
    let before = token(&app);
    for _ in 0..20 {
        // The broker's role check, its ownership check, and Vault's 404.
        assert!(send(&app, "/kv get secret/telegram").is_err());
        assert!(send(&app, "/mtproto show carol/1").is_err());
        assert!(send(&app, "/mtproto show 9539").is_err());
    }
    let after = token(&app);
    assert!(
        Arc::ptr_eq(&before, &after),
        "a new child token was minted after denials"
    );
    // A child token that is really dead is replaced after one failure.
    let accessor = env.rt.block_on(after.lookup_self()).unwrap().accessor;
    root(
        env,
        Method::POST,
        "auth/token/revoke-accessor",
        Some(json!({ "accessor": accessor })),
    );
    let e = send(&app, "/mtproto show 9531").unwrap_err();
    assert_eq!(e.kind, vaultgram::error::ErrorKind::Denied, "{e:?}");
    send(&app, "/mtproto show 9531").expect("a fresh child token");
    let fresh = token(&app);
    assert!(!Arc::ptr_eq(&after, &fresh));
}

// ---------------------------------------------------------------------------
// 12. wrong codes; quiet expected errors
// ---------------------------------------------------------------------------

fn wrong_codes_cancel(env: &Env) {
    // Its own etcd prefix: three wrong codes also suspend the approver
    // (they count toward dave's `unlock_max_failures`), which must not
    // reach the other tests' dave.
    let prefix = format!(
        "/vaultgram/gate-codes-{}/",
        crate::common::cluster::random_hex(4)
    );
    let s = approvers(env, "it-gate-codes", |t| {
        assert!(t.contains("prefix = \"/vaultgram/\""));
        t.replace(
            "prefix = \"/vaultgram/\"",
            &format!("prefix = \"{prefix}\""),
        )
    });
    create_transit_key(env, "it-gate-codes");
    let r = s.run(env, "alice", &["/transit rotate it-gate-codes"]);
    let id = request_id(&r, 0);
    let w = wrong_code(&s.dave);
    let r = s.run(
        env,
        "dave",
        &[
            &format!("/approve {id} {w}"),
            &format!("/approve {id} {w}"),
            &format!("/approve {id} {w}"),
            &format!("/approve {id} {}", fresh_code(&s.dave)),
        ],
    );
    assert!(
        r.message(0).contains("2 more wrong code") && r.message(0).contains("1 of 3"),
        "{}",
        r.replies[0]
    );
    assert!(
        r.message(1).contains("1 more wrong code"),
        "{}",
        r.replies[1]
    );
    assert!(
        r.message(2).contains("cancelled after 3 wrong codes")
            && r.message(2).contains("dave is suspended"),
        "{}",
        r.replies[2]
    );
    assert_eq!(r.err_kind(3), "denied", "{}", r.replies[3]);
    assert!(r.message(3).contains("suspended"), "{}", r.replies[3]);
    let key = root(env, Method::GET, "transit/keys/it-gate-codes", None);
    assert_eq!(key["data"]["latest_version"], 1);
    let _ = &s.alice;

    // A 404 and a 403 from Vault are the command's outcome, not an ERROR
    // line with the request URI.
    let r = run(
        env,
        "alice",
        &[
            "/kv get secret/it/gate/absent",
            "/kv get secret/vaultgram/telegram-session",
        ],
    );
    assert_eq!(r.err_kind(0), "not_found");
    assert_eq!(r.err_kind(1), "denied");
    for l in r.stderr.lines() {
        assert!(!l.contains("\"level\":\"ERROR\""), "{l}");
        assert!(!l.contains("/v1/secret/"), "{l}");
    }
}

// ---------------------------------------------------------------------------
// 9. /kv on another mount
// ---------------------------------------------------------------------------

fn kv_only_on_its_mount(env: &Env) {
    let r = run(
        env,
        "alice",
        &[
            "/kv put cubbyhole/gate a=b",
            "/kv get cubbyhole/gate",
            "/kv list sys/",
        ],
    );
    for i in 0..3 {
        assert_eq!(r.err_kind(i), "invalid", "{}", r.replies[i]);
        assert!(
            r.message(i).contains("`secret` mount only"),
            "{}",
            r.replies[i]
        );
    }
}

// ---------------------------------------------------------------------------
// 10. the socket: bad bytes, idle clients, too many clients
// ---------------------------------------------------------------------------

fn socket_limits(env: &Env) {
    let b = Broker::start_with(env, "gate-socket", |t| {
        t.replace(
            "[ipc]\n",
            "[ipc]\nidle_timeout_secs = 2\nmax_connections = 2\n",
        )
    });
    let connect = || {
        let s = UnixStream::connect(&b.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    // Not UTF-8, then a command on the same connection: both answered.
    let mut s = connect();
    s.write_all(b"/whoami \xff\xfe\n/whoami\n").unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["error"]["kind"], "invalid", "{first}");
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["ok"], true, "{second}");
    // Idle: closed by the broker after ~2 s.
    let t = Instant::now();
    let mut rest = String::new();
    let n = s.read_to_string(&mut rest).unwrap();
    assert_eq!(n, 0, "{rest}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Two connections held open; a third is told to try again.
    // Each answers a command first: both hold a slot when the third comes
    // (an idle one would keep it for 2 s more).
    // The idle connection's slot is freed just after its socket closes:
    // a connection made in between is refused, and is made again.
    let hold = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut h = connect();
            let mut line = String::new();
            if h.write_all(b"/whoami\n").is_ok()
                && BufReader::new(&h).read_line(&mut line).is_ok()
                && line.contains("\"ok\":true")
            {
                return h;
            }
            assert!(Instant::now() < deadline, "no slot: {line}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (h1, h2) = (hold(), hold());
    let mut third = connect();
    let mut reply = String::new();
    let _ = third.read_to_string(&mut reply);
    let v: Value = serde_json::from_str(reply.trim()).unwrap_or(json!({"raw": reply}));
    assert_eq!(v["error"]["kind"], "unavailable", "{v}");
    drop((h1, h2));
    // Once they are gone, connections are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = b.ctl(&["--json", "/whoami"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// 11. ctl reads nothing but the socket path
// ---------------------------------------------------------------------------

fn ctl_needs_only_the_socket(env: &Env) {
    let b = Broker::start(env, "gate-ctl");
    // A config whose credential files do not exist (a mapped operator
    // cannot read the broker's): ctl still works.
    let text = std::fs::read_to_string(&b.config).unwrap();
    let mut broken = String::new();
    for l in text.lines() {
        let l = if l.trim_start().starts_with("role_id_file")
            || l.trim_start().starts_with("secret_id_file")
            || l.trim_start().starts_with("password_file")
            || l.trim_start().starts_with("key =")
        {
            let k = l.split('=').next().unwrap();
            format!("{k}= \"/nonexistent/{}\"", random_hex(3))
        } else {
            l.to_string()
        };
        broken.push_str(&l);
        broken.push('\n');
    }
    let cfg = b.dir.path().join("client.toml");
    std::fs::write(&cfg, broken).unwrap();
    let ctl = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vaultgram"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&[
        "--config".as_ref(),
        cfg.as_os_str(),
        "ctl".as_ref(),
        "/whoami".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("operator: alice"));
    // --socket needs no config at all.
    let out = ctl(&[
        "--config".as_ref(),
        "/nonexistent.toml".as_ref(),
        "ctl".as_ref(),
        "--socket".as_ref(),
        b.socket.as_os_str(),
        "/whoami".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
