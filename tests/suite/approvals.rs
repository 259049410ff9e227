//! The two-person rule and the audit trail, through `vaultgram console
//! --json` against the real cluster. Every console run is its own process,
//! i.e. a broker restart: requests filed in one run are approved in
//! another, and `/audit` shows records written by earlier runs.
//!
//! TOTP: the test creates the admins' keys in Vault with the root token
//! (`totp/keys/NAME`, a known seed, `generate=false`) and computes codes
//! itself (RFC 6238). Vault refuses a code twice, so each test uses its own
//! TOTP key names (a copy of the harness config with `totp_key` set), and
//! `common::totp::fresh_code` never hands out the same step twice per key.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::TestFn;
use crate::common::canary;
use crate::common::cluster::{random_hex, Server};
use crate::common::console::{console, ConsoleRun};
use crate::common::totp::{approvers, create_totp_key, fresh_code, wrong_code, Approvers};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "approvals::two_person_rule_across_restarts",
        two_person_rule_across_restarts,
    ),
    (
        "approvals::expired_request_cannot_be_approved",
        expired_request_cannot_be_approved,
    ),
    (
        "approvals::deny_cancel_and_pending",
        deny_cancel_and_pending,
    ),
    (
        "approvals::kv_destroy_runs_with_the_requesters_token",
        kv_destroy_runs_with_the_requesters_token,
    ),
    (
        "approvals::secret_reply_goes_to_the_requester_only",
        secret_reply_goes_to_the_requester_only,
    ),
    (
        "approvals::audit_survives_restarts_and_holds_no_value",
        audit_survives_restarts_and_holds_no_value,
    ),
    (
        "disruptive::approvals::etcd_outage_fails_no_command_through_audit",
        etcd_outage_fails_no_command_through_audit,
    ),
];

// ---------------------------------------------------------------------------
// TOTP (RFC 6238, HMAC-SHA1, 6 digits, 30 s)
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// alice's and dave's TOTP keys `<tag>-alice` / `<tag>-dave` and, if given,
/// `approvals.ttl_secs`.
fn setup(env: &Env, tag: &str, ttl_secs: Option<u64>) -> Approvers {
    approvers(env, tag, |text| match ttl_secs {
        Some(ttl) => text.replace("[approvals]\n", &format!("[approvals]\nttl_secs = {ttl}\n")),
        None => text,
    })
}

fn run(env: &Env, s: &Approvers, op: &str, lines: &[&str]) -> ConsoleRun {
    s.run(env, op, lines)
}

fn message(r: &ConsoleRun, i: usize) -> String {
    r.message(i)
}

/// The request ID of an `approval_required` reply.
pub(super) fn request_id(r: &ConsoleRun, i: usize) -> String {
    assert_eq!(r.err_kind(i), "approval_required", "{}", r.replies[i]);
    let m = message(r, i);
    let id = m
        .strip_prefix("request ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request ID in {m:?}"))
        .to_string();
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{m}"
    );
    assert!(m.contains(&format!("/approve {id} CODE")), "{m}");
    id
}

pub(super) fn transit_key_version(env: &Env, key: &str) -> u64 {
    let c = env.cluster();
    let (code, body) = c
        .vault_api(
            Method::GET,
            &format!("transit/keys/{key}"),
            Some(&c.root_token),
            None,
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    body["data"]["latest_version"].as_u64().unwrap()
}

pub(super) fn create_transit_key(env: &Env, key: &str) {
    let path = format!("transit/keys/{key}");
    env.cluster()
        .root_call(Method::POST, &path, Some(json!({})));
    assert_eq!(transit_key_version(env, key), 1);
}

/// The etcd keys under `prefix`, read as the etcd root user.
pub(super) fn etcd_keys(env: &Env, prefix: &str) -> Vec<String> {
    let out = env
        .cluster()
        .etcdctl(&["get", "--prefix", "--keys-only", prefix], true);
    assert!(out.status.success(), "{:?}", out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn pending_ids(r: &ConsoleRun, i: usize) -> Vec<String> {
    r.replies[i]["data"]["pending"]
        .as_array()
        .unwrap_or_else(|| panic!("no pending list: {}", r.replies[i]))
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------

/// Request by alice; self-approval, a wrong code and an agent are refused;
/// dave's right code, in another process, runs the command as alice.
/// Uses the harness config as it is: alice's and dave's TOTP keys are the
/// default `totp/keys/alice` and `totp/keys/dave`.
fn two_person_rule_across_restarts(env: &Env) {
    let c = env.cluster();
    let alice = create_totp_key(env, "alice");
    let dave = create_totp_key(env, "dave");
    let key = "it-approve-key";
    create_transit_key(env, key);

    // Run 1 (alice): the request waits; nothing happens in Vault.
    let r1 = console(env, "alice", &[&format!("/transit rotate {key}")]);
    let id = request_id(&r1, 0);
    assert!(
        message(&r1, 0).contains("expires in 600 s"),
        "{}",
        message(&r1, 0)
    );
    assert_eq!(transit_key_version(env, key), 1);
    let pending = etcd_keys(env, &format!("/vaultgram/approvals/pending/{id}"));
    assert_eq!(pending.len(), 1, "pending request in etcd: {pending:?}");

    // Run 2 (alice again): listed, but she cannot approve her own request,
    // not even with her valid code (which is not spent: refused first).
    let code_alice = fresh_code(&alice);
    let r2 = console(
        env,
        "alice",
        &["/pending", &format!("/approve {id} {code_alice}")],
    );
    assert!(pending_ids(&r2, 0).contains(&id), "{}", r2.replies[0]);
    assert!(
        r2.ok_text(0).contains(&format!("{id} alice")),
        "{}",
        r2.replies[0]
    );
    assert_eq!(r2.err_kind(1), "denied");
    assert!(
        message(&r2, 1).contains("own request"),
        "{}",
        message(&r2, 1)
    );
    assert!(!r2.replies[1].to_string().contains(&code_alice));

    // An agent may neither approve nor list.
    let rb = console(env, "bob", &[&format!("/approve {id} 123456"), "/pending"]);
    assert_eq!(rb.err_kind(0), "denied");
    assert_eq!(rb.err_kind(1), "denied");

    // Run 3 (dave, a restarted broker): a wrong code is refused and changes
    // nothing; the right one runs the rotation with alice's token.
    let wrong = wrong_code(&dave);
    let r3 = console(env, "dave", &[&format!("/approve {id} {wrong}")]);
    assert_eq!(r3.err_kind(0), "denied");
    let m = message(&r3, 0);
    assert!(m.contains("wrong TOTP code") && !m.contains(&wrong), "{m}");
    assert_eq!(transit_key_version(env, key), 1);
    assert_eq!(
        etcd_keys(env, &format!("/vaultgram/approvals/pending/{id}")).len(),
        1,
        "a wrong code must leave the request pending"
    );

    let code = fresh_code(&dave);
    let r4 = console(env, "dave", &[&format!("/approve {id} {code}")]);
    let text = r4.ok_text(0);
    assert!(text.contains(&format!("approved {id}")), "{text}");
    assert!(text.contains("as alice"), "{text}");
    assert!(!r4.replies[0].to_string().contains(&code));
    assert_eq!(transit_key_version(env, key), 2, "the rotation ran");
    assert!(etcd_keys(env, &format!("/vaultgram/approvals/pending/{id}")).is_empty());

    // Vault's audit log names alice (the requester's child token) for the
    // rotation, not dave and not the broker.
    let audit = std::fs::read_to_string(c.audit_log()).unwrap_or_default();
    let rotate_by: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains(&format!("transit/keys/{key}/rotate")))
        .collect();
    assert!(!rotate_by.is_empty(), "rotation in Vault's audit log");
    assert!(
        rotate_by.iter().all(|l| l.contains("alice")),
        "rotation ran with alice's child token: {rotate_by:?}"
    );

    // A second approval of the same request: conflict, nothing runs twice.
    let r5 = console(env, "dave", &[&format!("/approve {id} 000000")]);
    assert_eq!(r5.err_kind(0), "conflict");
    assert!(message(&r5, 0).contains("already approved by dave"));
    assert_eq!(transit_key_version(env, key), 2);

    // The trail: the request, the refusals, the approval, and the run as
    // alice approved by dave.
    let r6 = console(env, "dave", &["/audit 200"]);
    let records: Vec<Value> = r6.replies[0]["data"]["records"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r6.replies[0]))
        .clone();
    let ran = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["command"] == "transit rotate")
        .unwrap_or_else(|| panic!("no record of the approved run: {records:?}"));
    assert_eq!(ran["operator"], "alice");
    assert_eq!(ran["result"], "ok");
    assert_eq!(ran["approved_by"], "dave");
    assert_eq!(ran["target"], key);
    assert!(records.iter().any(|r| r["command"] == "approve"
        && r["operator"] == "alice"
        && r["target"] == id.as_str()
        && r["result"] == "denied"));
}

/// `[approvals] ttl_secs = 10`: after 12 s the request is gone from etcd,
/// `/approve` says it expired (not "unknown"), and the expiry is audited.
fn expired_request_cannot_be_approved(env: &Env) {
    let s = setup(env, "it-appr-exp", Some(10));
    let key = "it-approve-exp-key";
    create_transit_key(env, key);
    let r1 = run(env, &s, "alice", &[&format!("/transit rotate {key}")]);
    let id = request_id(&r1, 0);
    assert!(message(&r1, 0).contains("expires in 10 s"));
    // The lease removes the pending request once its 10 s are up (etcd
    // expires leases on its own clock: waited for, with a deadline).
    let filed = std::time::Instant::now();
    while !etcd_keys(env, &format!("/vaultgram/approvals/pending/{id}")).is_empty() {
        assert!(
            filed.elapsed() < Duration::from_secs(40),
            "the lease did not remove the pending request"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        filed.elapsed() >= Duration::from_secs(9),
        "gone before its TTL"
    );
    let code = fresh_code(&s.dave);
    let r2 = run(
        env,
        &s,
        "dave",
        &[
            &format!("/approve {id} {code}"),
            "/approve 0123abcd 123456",
            &format!("/deny {id}"),
            "/audit 100",
        ],
    );
    assert_eq!(r2.err_kind(0), "not_found");
    assert!(message(&r2, 0).contains("expired"), "{}", message(&r2, 0));
    assert_eq!(r2.err_kind(1), "not_found");
    assert!(message(&r2, 1).contains("no pending request"));
    assert_eq!(r2.err_kind(2), "not_found");
    assert!(message(&r2, 2).contains("expired"));
    assert_eq!(transit_key_version(env, key), 1, "nothing ran");
    let records = r2.replies[3]["data"]["records"].as_array().unwrap().clone();
    let expired: Vec<&Value> = records
        .iter()
        .filter(|r| r["request_id"] == id.as_str() && r["result"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1, "one expiry record: {records:?}");
    assert_eq!(expired[0]["operator"], "alice");
    assert_eq!(expired[0]["command"], "transit rotate");
}

/// `/deny` by another admin, cancelling one's own request, `/pending`.
fn deny_cancel_and_pending(env: &Env) {
    let s = setup(env, "it-appr-deny", None);
    let key = "it-approve-deny-key";
    create_transit_key(env, key);
    let r1 = run(
        env,
        &s,
        "alice",
        &[
            // Validate, then gate: a request is filed only for a secret
            // that exists.
            "/kv put secret/it/appr/deny v=1",
            &format!("/transit rotate {key}"),
            "/kv metadata delete secret/it/appr/deny",
        ],
    );
    r1.ok_text(0);
    let (id1, id2) = (request_id(&r1, 1), request_id(&r1, 2));
    assert_ne!(id1, id2);

    let r2 = run(
        env,
        &s,
        "dave",
        &[
            "/pending",
            &format!("/deny {id1}"),
            &format!("/approve {id1} 000000"),
        ],
    );
    let listed = &r2.replies[0]["data"]["pending"];
    for id in [&id1, &id2] {
        let p = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not in /pending: {listed}"));
        assert_eq!(p["requester"], "alice");
        let left = p["expires_in"].as_u64().unwrap();
        assert!((500..=600).contains(&left), "{p}");
    }
    let text = r2.ok_text(0);
    assert!(
        text.contains("/kv metadata delete secret/it/appr/deny"),
        "{text}"
    );
    assert!(r2.ok_text(1).contains("denied"), "{}", r2.replies[1]);
    assert_eq!(r2.err_kind(2), "conflict");
    assert!(message(&r2, 2).contains("denied by dave"));

    // alice cancels her own second request.
    let r3 = run(env, &s, "alice", &[&format!("/deny {id2}"), "/pending"]);
    assert!(r3.ok_text(0).contains("cancelled"), "{}", r3.replies[0]);
    let still = pending_ids(&r3, 1);
    assert!(!still.contains(&id1) && !still.contains(&id2), "{still:?}");
    assert_eq!(transit_key_version(env, key), 1);

    let r4 = run(env, &s, "dave", &["/audit 200"]);
    let records = r4.replies[0]["data"]["records"].as_array().unwrap().clone();
    for (id, by) in [(&id1, "dave"), (&id2, "alice")] {
        assert!(
            records.iter().any(|r| r["request_id"] == id.as_str()
                && r["result"] == "denied"
                && r["approved_by"] == by),
            "denial of {id} by {by}: {records:?}"
        );
    }
}

/// `/kv destroy` waits, then runs with alice's token once dave approves.
fn kv_destroy_runs_with_the_requesters_token(env: &Env) {
    let c = env.cluster();
    let s = setup(env, "it-appr-kv", None);
    let path = format!("it/appr/destroy-{}", random_hex(4));
    let value = canary::plant("approvals-destroy");
    let r1 = run(
        env,
        &s,
        "alice",
        &[
            &format!("/kv put secret/{path} v={value}"),
            &format!("/kv destroy -versions=1 secret/{path}"),
        ],
    );
    r1.ok_text(0);
    let id = request_id(&r1, 1);
    let meta = |c: &crate::common::Cluster| {
        let (code, body) = c
            .vault_api(
                Method::GET,
                &format!("secret/metadata/{path}"),
                Some(&c.root_token),
                None,
            )
            .unwrap();
        assert_eq!(code, 200, "{body}");
        body["data"]["versions"]["1"]["destroyed"]
            .as_bool()
            .unwrap()
    };
    assert!(!meta(c), "not destroyed before approval");
    let code = fresh_code(&s.dave);
    let r2 = run(env, &s, "dave", &[&format!("/approve {id} {code}")]);
    let text = r2.ok_text(0);
    assert!(text.contains("as alice"), "{text}");
    assert!(!r2.replies[0].to_string().contains(&value));
    assert!(meta(c), "version 1 destroyed after approval");
}

/// `/panel show --reveal`: the approver never sees the password; the
/// requester gets a one-time grant for exactly that line.
fn secret_reply_goes_to_the_requester_only(env: &Env) {
    let s = setup(env, "it-appr-reveal", None);
    let panel = format!("it-appr-{}", random_hex(3));
    let password = canary::plant("approvals-panel");
    let reveal = format!("/panel show --reveal {panel}");
    let r1 = run(
        env,
        &s,
        "alice",
        &[
            &format!("/panel add {panel} marzban https://panel.example.com admin {password}"),
            &reveal,
        ],
    );
    r1.ok_text(0);
    let id = request_id(&r1, 1);

    let code = fresh_code(&s.dave);
    let r2 = run(
        env,
        &s,
        "dave",
        &[&format!("/approve {id} {code}"), &reveal],
    );
    let text = r2.ok_text(0);
    assert!(
        text.contains(&format!("alice may now run {reveal} once within")),
        "{text}"
    );
    assert!(!r2.replies[0].to_string().contains(&password));
    assert_eq!(r2.replies[0]["secret"], false);
    // dave's own reveal is a new request: the grant is alice's.
    let other = request_id(&r2, 1);
    assert_ne!(other, id);
    assert_eq!(
        etcd_keys(env, &format!("/vaultgram/approvals/grants/alice/{id}")).len(),
        1
    );

    // alice: a different line does not use the grant; the exact line does,
    // once. And alice, with her own code, may approve dave's request.
    let code_alice = fresh_code(&s.alice);
    let r3 = run(
        env,
        &s,
        "alice",
        &[
            &format!("/panel show --reveal -wrap-ttl=60s {panel}"),
            &reveal,
            &reveal,
            &format!("/approve {other} {code_alice}"),
        ],
    );
    let wrapped = request_id(&r3, 0);
    let t = r3.ok_text(1);
    assert!(t.contains(&password), "the requester sees the password");
    assert_eq!(r3.replies[1]["secret"], true);
    let again = request_id(&r3, 2);
    assert!(
        r3.ok_text(3)
            .contains(&format!("dave may now run {reveal} once")),
        "{}",
        r3.replies[3]
    );
    assert!(etcd_keys(env, &format!("/vaultgram/approvals/grants/alice/{id}")).is_empty());
    // alice cancels what is left.
    let r4 = run(
        env,
        &s,
        "alice",
        &[&format!("/deny {wrapped}"), &format!("/deny {again}")],
    );
    r4.ok_text(0);
    r4.ok_text(1);
}

/// Records written by earlier processes are listed by `/audit N`, with the
/// operator, transport, command, target and result — never the value.
fn audit_survives_restarts_and_holds_no_value(env: &Env) {
    let path = format!("secret/it/appr/audit-{}", random_hex(4));
    let value = canary::plant("approvals-audit");
    let r1 = console(
        env,
        "alice",
        &[&format!("/kv put {path} token={value}"), "/whoami"],
    );
    r1.ok_text(0);
    let r2 = console(env, "bob", &["/audit", &format!("/kv get {path}")]);
    assert_eq!(r2.err_kind(0), "denied");
    let r3 = console(env, "dave", &["/audit 500", "/audit 3", "/audit 0"]);
    let all = r3.replies[0].to_string();
    assert!(!all.contains(&value), "no value in /audit");
    let records = r3.replies[0]["data"]["records"].as_array().unwrap().clone();
    let put = records
        .iter()
        .find(|r| r["command"] == "kv put" && r["target"] == path.as_str())
        .unwrap_or_else(|| panic!("kv put of run 1 not in /audit: {records:?}"));
    assert_eq!(put["operator"], "alice");
    assert_eq!(put["transport"], "console");
    assert_eq!(put["result"], "ok");
    assert!(put["time"].as_str().unwrap().ends_with('Z'));
    assert!(records
        .iter()
        .any(|r| r["operator"] == "bob" && r["command"] == "audit" && r["result"] == "denied"));
    // Oldest first; the text has one line per record.
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The text: one line per record of page 1 (the newest 20), then
    // where the next page is.
    let text = r3.ok_text(0);
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("page ")).collect();
    assert_eq!(lines.len(), records.len().min(20), "{text}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains(records.last().unwrap()["request_id"].as_str().unwrap()),
        "{text}"
    );
    if records.len() > 20 {
        assert!(text.ends_with("next: /audit 500 -page=2"), "{text}");
    }
    assert_eq!(
        r3.replies[1]["data"]["records"].as_array().unwrap().len(),
        3
    );
    assert_eq!(r3.err_kind(2), "invalid");

    // In etcd: JSON under /vaultgram/audit/<20-digit nanos>-<request id>,
    // attached to a retention lease.
    let keys = etcd_keys(env, "/vaultgram/audit/");
    assert!(!keys.is_empty());
    let last = keys.last().unwrap();
    let suffix = last.strip_prefix("/vaultgram/audit/").unwrap();
    let (nanos, rid) = suffix.split_once('-').unwrap();
    assert_eq!(nanos.len(), 20, "{last}");
    assert!(!rid.is_empty(), "{last}");
    let out = env.cluster().etcdctl(
        &["get", "--prefix", "/vaultgram/audit/", "-w", "json"],
        true,
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(!body.contains(&value));
    let v: Value = serde_json::from_str(&body).unwrap();
    for kv in v["kvs"].as_array().unwrap() {
        assert!(
            kv["lease"].as_i64().unwrap_or(0) != 0,
            "audit key without lease: {kv}"
        );
    }
}

fn wait_etcd_healthy(env: &Env) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if env
            .cluster()
            .etcdctl(&["endpoint", "health"], false)
            .status
            .success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "etcd not healthy again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two of three etcd members down (no quorum): commands that do not need
/// etcd still answer, in bounded time — the audit write fails with a
/// warning only — and a gated command fails cleanly (`unavailable`), since
/// its request cannot be filed. In-process, because a new broker cannot
/// authenticate to etcd without a quorum.
fn etcd_outage_fails_no_command_through_audit(env: &Env) {
    use vaultgram::dispatch::App;
    use vaultgram::transport_kind::Transport;
    let c = env.cluster();
    // The key exists, so the request is valid and only etcd is missing.
    create_transit_key(env, "it-approve-outage");
    let cfg = env.config();
    let alice = crate::common::operator(&cfg, "alice");
    let app = env.rt.block_on(App::start(cfg)).unwrap();
    let send = |line: &str| {
        env.rt
            .block_on(app.dispatch(Some(&alice), "alice", Transport::Console, line))
            .unwrap()
    };
    send("/help").unwrap();
    let outage = c.etcd_outage(&[1, 2]);
    let t0 = std::time::Instant::now();
    let help = send("/help");
    let whoami = send("/whoami");
    let elapsed = t0.elapsed();
    let rotate = send("/transit rotate it-approve-outage");
    outage.end();
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    let e = rotate.expect_err("a gated command needs etcd");
    assert_eq!(e.kind, vaultgram::error::ErrorKind::Unavailable, "{e:?}");
    match c.server {
        // OpenBao (raft) answers without etcd: only the audit copy waits.
        Server::OpenBao => {
            help.expect("/help without etcd");
            whoami.expect("/whoami without etcd");
        }
        // HashiCorp Vault keeps its tokens in etcd: /whoami may fail, but
        // cleanly, within the bound; /help needs nothing.
        Server::Vault => {
            help.expect("/help without etcd");
            if let Err(e) = whoami {
                assert_eq!(e.kind, vaultgram::error::ErrorKind::Unavailable, "{e:?}");
            }
        }
    }
    wait_etcd_healthy(env);
}
