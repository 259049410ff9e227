//! Approvals beyond two persons (issue 32): quorums of distinct admins,
//! reasons, and grants that a refusal does not waste. Through `vaultgram
//! console --json` against the real cluster; each console run is its own
//! broker process, so concurrent runs are two replicas.
//!
//! Each test adds a third admin of its own (its TOTP key and its counters
//! are nobody else's) to a copy of the harness config.

use serde_json::Value;

use super::approvals::{
    create_transit_key, etcd_keys, pending_ids, request_id, transit_key_version,
};
use super::TestFn;
use crate::common::canary;
use crate::common::cluster::random_hex;
use crate::common::console::{console_with_config, ConsoleRun};
use crate::common::totp::{approvers, create_totp_key, fresh_code, wrong_code, Approvers, TotpKey};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "approvals::quorum_counts_distinct_admins_once",
        quorum_counts_distinct_admins_once,
    ),
    (
        "approvals::quorum_race_on_two_replicas_runs_once",
        quorum_race_on_two_replicas_runs_once,
    ),
    (
        "approvals::reasons_are_required_escaped_and_bounded",
        reasons_are_required_escaped_and_bounded,
    ),
    (
        "approvals::a_reveal_refused_after_approval_keeps_its_grant",
        a_reveal_refused_after_approval_keeps_its_grant,
    ),
    (
        "approvals::a_suspended_admins_votes_no_longer_count",
        a_suspended_admins_votes_no_longer_count,
    ),
    (
        "approvals::what_was_approved_is_what_runs",
        what_was_approved_is_what_runs,
    ),
    (
        "approvals::break_glass_runs_alerts_is_limited_and_reviewed",
        break_glass_runs_alerts_is_limited_and_reviewed,
    ),
];

/// alice and dave (as `approvers`) plus a third admin `third` with a TOTP
/// key of its own, the config text passed through `edit`.
struct Three {
    s: Approvers,
    third: TotpKey,
}

fn three_admins(env: &Env, tag: &str, third: &str, edit: impl FnOnce(String) -> String) -> Three {
    let key = create_totp_key(env, &format!("{tag}-{third}"));
    let id = 555_000 + u64::from(u16::from_str_radix(&random_hex(2), 16).unwrap());
    let block = format!(
        "\n[[operators]]\nname = \"{third}\"\ntelegram_id = {id}\nrole = \"admin\"\ntotp_key = \"{}\"\n",
        key.name
    );
    let s = approvers(env, tag, |text| edit(format!("{text}{block}")));
    Three { s, third: key }
}

impl Three {
    fn run(&self, env: &Env, op: &str, lines: &[&str]) -> ConsoleRun {
        self.s.run(env, op, lines)
    }
}

const QUORUM_2: &str = "\n[approvals.quorum]\n\"transit rotate\" = 2\n";

/// The pending entry of `id` in a `/pending` reply.
fn pending_entry(r: &ConsoleRun, i: usize, id: &str) -> Value {
    r.replies[i]["data"]["pending"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} not pending: {}", r.replies[i]))
        .clone()
}

/// `transit rotate` needs 2 of alice's 2 fellow admins: one approval runs
/// nothing; the same admin again counts once (and spends no code); a
/// wrong and a replayed code are refused; `/pending` shows the tally; the
/// second distinct admin runs it, once, as alice.
fn quorum_counts_distinct_admins_once(env: &Env) {
    let t = three_admins(env, "it-quorum", "erin", |text| format!("{text}{QUORUM_2}"));
    let key = format!("it-quorum-{}", random_hex(3));
    let other = format!("{key}-b");
    create_transit_key(env, &key);
    create_transit_key(env, &other);

    let r1 = t.run(
        env,
        "alice",
        &[
            &format!("/transit rotate {key}"),
            &format!("/transit rotate {other}"),
        ],
    );
    let id = request_id(&r1, 0);
    let id_b = request_id(&r1, 1);
    assert!(
        r1.message(0).contains("waits for 2 more admins"),
        "{}",
        r1.message(0)
    );

    // dave: counted, nothing runs; dave again: refused before his code is
    // looked at (his code stays unspent), still 1 of 2.
    let d1 = fresh_code(&t.s.dave);
    let d2 = fresh_code(&t.s.dave);
    let r2 = t.run(
        env,
        "dave",
        &[
            &format!("/approve {id} {d1}"),
            &format!("/approve {id} {d2}"),
            "/pending",
        ],
    );
    let counted = r2.ok_text(0);
    assert!(counted.contains("1 of 2 approvals (dave)"), "{counted}");
    assert_eq!(
        transit_key_version(env, &key),
        1,
        "one approval of two runs nothing"
    );
    assert_eq!(r2.err_kind(1), "conflict");
    assert!(
        r2.message(1).contains("you already approved"),
        "{}",
        r2.message(1)
    );
    let p = pending_entry(&r2, 2, &id);
    assert_eq!(p["votes"], serde_json::json!(["dave"]));
    assert_eq!(p["quorum"], 2);
    assert!(
        r2.ok_text(2).contains("1 of 2 approvals (dave)"),
        "{}",
        r2.replies[2]
    );
    // d2 was not spent: dave uses it on the other request.
    let r2b = t.run(env, "dave", &[&format!("/approve {id_b} {d2}")]);
    assert!(
        r2b.ok_text(0).contains("1 of 2 approvals (dave)"),
        "{}",
        r2b.replies[0]
    );

    // erin: a wrong code, then a code she already used (on the other
    // request) — both refused, the request still waits with dave's vote.
    let e1 = fresh_code(&t.third);
    let r3 = t.run(
        env,
        "erin",
        &[
            &format!("/approve {id} {}", wrong_code(&t.third)),
            &format!("/approve {id_b} {e1}"),
            &format!("/approve {id} {e1}"),
        ],
    );
    assert_eq!(r3.err_kind(0), "denied");
    assert!(
        r3.message(0).contains("wrong TOTP code"),
        "{}",
        r3.message(0)
    );
    let ran_b = r3.ok_text(1);
    assert!(ran_b.contains(&format!("approved {id_b}: ran")), "{ran_b}");
    assert_eq!(transit_key_version(env, &other), 2);
    assert_eq!(
        r3.err_kind(2),
        "denied",
        "a replayed code: {}",
        r3.replies[2]
    );
    assert_eq!(transit_key_version(env, &key), 1);
    assert_eq!(
        etcd_keys(env, &format!("/vaultgram/approvals/pending/{id}")).len(),
        1
    );

    // erin's fresh code completes the quorum: it runs once, as alice.
    let e2 = fresh_code(&t.third);
    let r4 = t.run(env, "erin", &[&format!("/approve {id} {e2}")]);
    let ran = r4.ok_text(0);
    assert!(
        ran.contains(&format!("approved {id}: ran")) && ran.contains("as alice"),
        "{ran}"
    );
    assert_eq!(transit_key_version(env, &key), 2);
    let r5 = t.run(
        env,
        "dave",
        &[
            &format!("/approve {id} {}", fresh_code(&t.s.dave)),
            "/audit 300",
        ],
    );
    assert_eq!(r5.err_kind(0), "conflict");
    assert!(
        r5.message(0).contains("already approved by dave, erin"),
        "{}",
        r5.message(0)
    );
    let records = r5.replies[1]["data"]["records"].as_array().unwrap().clone();
    let run = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["result"] == "ok")
        .unwrap_or_else(|| panic!("no record of the run: {records:?}"));
    assert_eq!(run["approved_by"], "dave, erin");
    assert_eq!(run["operator"], "alice");
    assert!(records
        .iter()
        .any(|r| r["request_id"] == id.as_str() && r["result"] == "voted"));
    assert_eq!(transit_key_version(env, &key), 2);
}

/// The two approvals arrive at once from two broker processes: exactly
/// one run, whatever the interleaving (one is counted, the other
/// completes the quorum).
fn quorum_race_on_two_replicas_runs_once(env: &Env) {
    let t = three_admins(env, "it-quorum-race", "fay", |text| {
        format!("{text}{QUORUM_2}")
    });
    for round in 0..2 {
        let key = format!("it-quorum-race-{}", random_hex(3));
        create_transit_key(env, &key);
        let r1 = t.run(env, "alice", &[&format!("/transit rotate {key}")]);
        let id = request_id(&r1, 0);
        let (cd, cf) = (fresh_code(&t.s.dave), fresh_code(&t.third));
        let (a, b) = std::thread::scope(|sc| {
            let a = sc.spawn(|| t.run(env, "dave", &[&format!("/approve {id} {cd}")]));
            let b = sc.spawn(|| t.run(env, "fay", &[&format!("/approve {id} {cf}")]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let texts = [a.ok_text(0), b.ok_text(0)];
        let ran = texts
            .iter()
            .filter(|t| t.contains(&format!("approved {id}: ran")))
            .count();
        let counted = texts
            .iter()
            .filter(|t| t.contains("1 of 2 approvals"))
            .count();
        assert_eq!((ran, counted), (1, 1), "round {round}: {texts:?}");
        assert_eq!(
            transit_key_version(env, &key),
            2,
            "round {round}: rotated exactly once"
        );
    }
}

/// `require_reason`: no reason, a blank and a 5,000-character one are
/// refused and file nothing; a reason full of control, bidi and
/// zero-width characters is kept but shown escaped in `/pending`, in the
/// denial and in `/audit`; `/deny ID REASON` passes its reason on; a
/// reason on an ungated command is refused.
fn reasons_are_required_escaped_and_bounded(env: &Env) {
    let t = three_admins(env, "it-reason", "gus", |text| {
        text.replace("[approvals]\n", "[approvals]\nrequire_reason = true\n")
    });
    let key = format!("it-reason-{}", random_hex(3));
    create_transit_key(env, &key);
    let long = "x".repeat(5000);
    let evil = "ticket\u{7} 42 \u{202E}gnp.exe\u{200B} \u{1b}[31mred";
    let r1 = t.run(
        env,
        "alice",
        &[
            &format!("/transit rotate {key}"),
            &format!("/transit rotate -reason=\"{long}\" {key}"),
            &format!("/transit rotate -reason=\"  \" {key}"),
            "/transit keys -reason=x",
            &format!("/transit rotate -reason=\"{evil}\" {key}"),
            "/pending",
        ],
    );
    assert_eq!(r1.err_kind(0), "invalid");
    assert!(
        r1.message(0).contains("-reason=\\\"…\\\"") || r1.message(0).contains("-reason="),
        "{}",
        r1.message(0)
    );
    assert_eq!(r1.err_kind(1), "invalid");
    assert!(
        r1.message(1)
            .contains("too long (5000 characters, at most 280)"),
        "{}",
        r1.message(1)
    );
    assert_eq!(r1.err_kind(2), "invalid");
    assert_eq!(r1.err_kind(3), "invalid");
    assert!(r1.message(3).contains("does not"), "{}", r1.message(3));
    let id = request_id(&r1, 4);
    // Only the request with the good reason was filed.
    let mine: Vec<_> = r1.replies[5]["data"]["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["target"] == key.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert!(pending_ids(&r1, 5).contains(&id));
    let listed = r1.ok_text(5);
    let line = listed.lines().find(|l| l.starts_with(&id)).unwrap();
    for raw in ['\u{7}', '\u{202E}', '\u{200B}', '\u{1b}'] {
        assert!(
            !r1.replies[5].to_string().contains(raw),
            "raw U+{:04X} in {}",
            raw as u32,
            r1.replies[5]
        );
    }
    assert!(
        line.contains("(reason: ticket") && line.contains("gnp.exe"),
        "{line}"
    );
    assert!(line.contains("0 of 1 approvals"), "{line}");
    assert!(
        line.contains(&format!("approvals): /transit rotate {key} (reason: ")),
        "the reason is not part of the command: {line}"
    );

    // A /deny reason is plain words: a control character there is refused
    // like in any argument, and changes nothing.
    let r2 = t.run(
        env,
        "dave",
        &[
            &format!("/deny {id} not now\u{7}"),
            &format!("/deny {id} not now, see ticket"),
            "/audit 300",
        ],
    );
    assert_eq!(r2.err_kind(0), "invalid");
    assert!(r2.ok_text(1).contains("denied"), "{}", r2.replies[1]);
    let r3 = t.run(env, "alice", &[&format!("/deny {id}")]);
    assert_eq!(r3.err_kind(0), "conflict");
    let m = r3.message(0);
    assert!(
        m.contains("denied by dave (reason: not now") && m.contains("see ticket"),
        "{m}"
    );
    assert!(!m.contains('\u{7}'), "{m}");
    let records = r2.replies[2]["data"]["records"].as_array().unwrap();
    let denied = records
        .iter()
        .find(|r| r["request_id"] == id.as_str() && r["result"] == "denied")
        .unwrap_or_else(|| panic!("no denial record: {records:?}"));
    assert!(
        denied["reason"].as_str().unwrap().starts_with("ticket"),
        "{denied}"
    );
    let shown = r2.ok_text(2);
    let audit_line = shown
        .lines()
        .find(|l| l.contains(&id) && l.contains("denied"))
        .unwrap();
    assert!(audit_line.contains("(reason: ticket"), "{audit_line}");
    for raw in ['\u{7}', '\u{202E}', '\u{200B}', '\u{1b}'] {
        assert!(!shown.contains(raw), "raw U+{:04X} in /audit", raw as u32);
    }
    assert_eq!(transit_key_version(env, &key), 1);
}

/// A reveal approved for gina, then refused by her reveal budget: the
/// grant is still there (the old code spent it before the budget check),
/// and her next run within the window, under a larger budget, shows the
/// password and spends it.
fn a_reveal_refused_after_approval_keeps_its_grant(env: &Env) {
    let harness = "[security]\nreveal_budget = 1000000\n";
    let t = three_admins(env, "it-grant-kept", "gina", |text| {
        assert!(text.contains(harness));
        text.replace(
            harness,
            "[security]\nreveal_budget = 1\nreveal_window_secs = 86400\n",
        )
    });
    let roomy = t.s.config.with_extension("roomy.toml");
    std::fs::write(
        &roomy,
        std::fs::read_to_string(&t.s.config)
            .unwrap()
            .replace("reveal_budget = 1\n", "reveal_budget = 1000000\n"),
    )
    .unwrap();
    let panel = format!("it-grant-{}", random_hex(3));
    let password = canary::plant("grant-kept");
    let reveal = format!("/panel show --reveal {panel}");
    let secret = format!("secret/it-grant-kept/{}", random_hex(3));
    let r1 = t.run(
        env,
        "gina",
        &[
            &format!("/panel add {panel} marzban https://panel.example.com admin {password}"),
            &format!("/kv put {secret} a=b"),
            &reveal,
        ],
    );
    r1.ok_text(0);
    r1.ok_text(1);
    let id = request_id(&r1, 2);
    let r2 = t.run(
        env,
        "dave",
        &[&format!("/approve {id} {}", fresh_code(&t.s.dave))],
    );
    assert!(
        r2.ok_text(0).contains("gina may now run"),
        "{}",
        r2.replies[0]
    );
    let grant = format!("/vaultgram/approvals/grants/gina/{id}");
    assert_eq!(etcd_keys(env, &grant).len(), 1);

    // The budget (1) goes to the /kv get; the approved reveal is refused.
    let r3 = t.run(env, "gina", &[&format!("/kv get {secret}"), &reveal]);
    r3.ok_text(0);
    assert_eq!(r3.err_kind(1), "denied");
    assert!(
        r3.message(1).contains("reveal budget exhausted"),
        "{}",
        r3.message(1)
    );
    assert!(!r3.replies[1].to_string().contains(&password));
    assert_eq!(
        etcd_keys(env, &grant).len(),
        1,
        "a refused reveal must not spend the approval"
    );

    // Same window, a larger budget: the grant lets it through, once.
    let r4 =
        console_with_config(env, &roomy, "gina", &[&reveal, &reveal]).one_per(&[&reveal, &reveal]);
    assert!(r4.ok_text(0).contains(&password), "{}", r4.replies[0]);
    assert!(
        etcd_keys(env, &grant).is_empty(),
        "the reply spent the grant"
    );
    let again = request_id(&r4, 1);
    let r5 = t.run(env, "gina", &[&format!("/deny {again}")]);
    r5.ok_text(0);
}

/// The notices queued for Telegram under `prefix`: `(kind, to, text)`.
fn queued(env: &Env, prefix: &str) -> Vec<(String, String, String)> {
    let out = env.cluster().etcdctl(
        &[
            "get",
            "--prefix",
            "--print-value-only",
            &format!("{prefix}notify/q/"),
        ],
        true,
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["kind"].as_str().unwrap().to_string(),
                v["to"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Who was sent a notice of `kind` that mentions `id`, sorted.
fn told(env: &Env, prefix: &str, kind: &str, id: &str) -> Vec<String> {
    let mut to: Vec<String> = queued(env, prefix)
        .into_iter()
        .filter(|(k, _, t)| k == kind && t.contains(id))
        .map(|(_, to, _)| to)
        .collect();
    to.sort();
    to
}

/// hank may break glass once a day: without a reason, a code, or with a
/// wrong code nothing runs; with all three the rotation runs at once,
/// dave and alice are told once each (hank is not), a second use the same
/// day is refused. Unreviewed past `review_within_secs`, `/pending`
/// reminds the others once per period and shows it OVERDUE; hank cannot
/// review it himself; dave's `bad` needs his step-up, then suspends hank.
/// Runs under an etcd prefix of its own, so the notice queue, the
/// suspension and the token revocation are this test's alone.
fn break_glass_runs_alerts_is_limited_and_reviewed(env: &Env) {
    let prefix = format!("/vaultgram/bg-{}/", random_hex(3));
    let t = three_admins(env, "it-glass", "hank", |text| {
        assert!(text.contains("prefix = \"/vaultgram/\""));
        text.replace("prefix = \"/vaultgram/\"", &format!("prefix = \"{prefix}\""))
            .replace(
                "[approvals]\n",
                "[approvals]\nbreak_glass = [\"hank\"]\nbreak_glass_per_day = 1\nreview_within_secs = 10\n",
            )
    });
    let key = format!("it-glass-{}", random_hex(3));
    let key2 = format!("{key}-b");
    create_transit_key(env, &key);
    create_transit_key(env, &key2);
    let glass = |k: &str, code: &str| {
        format!("/transit rotate -break-glass -reason=\"outage 7\" -code={code} {k}")
    };

    let r1 = t.run(
        env,
        "dave",
        &[
            &glass(&key, &fresh_code(&t.s.dave)),
            "/transit keys -break-glass",
        ],
    );
    assert_eq!(r1.err_kind(0), "denied");
    assert!(
        r1.message(0).contains("may not break glass"),
        "{}",
        r1.message(0)
    );
    assert_eq!(r1.err_kind(1), "invalid");
    let r2 = t.run(
        env,
        "hank",
        &[
            &format!("/transit rotate -break-glass -code=123456 {key}"),
            &format!("/transit rotate -break-glass -reason=x {key}"),
            &glass(&key, &wrong_code(&t.third)),
        ],
    );
    assert_eq!(r2.err_kind(0), "invalid", "{}", r2.replies[0]);
    assert!(r2.message(0).contains("-reason"), "{}", r2.message(0));
    assert_eq!(r2.err_kind(1), "invalid");
    assert!(r2.message(1).contains("-code=CODE"), "{}", r2.message(1));
    assert_eq!(r2.err_kind(2), "denied");
    assert!(r2.message(2).contains("wrong code"), "{}", r2.message(2));
    assert_eq!(transit_key_version(env, &key), 1);
    assert!(queued(env, &prefix)
        .iter()
        .all(|(k, _, _)| k != "break_glass"));

    // The run: at once, as hank; the others are told once each.
    let code = fresh_code(&t.third);
    let r3 = t.run(
        env,
        "hank",
        &[&glass(&key, &code), &glass(&key2, &fresh_code(&t.third))],
    );
    r3.ok_text(0);
    assert!(!r3.replies[0].to_string().contains(&code));
    assert_eq!(transit_key_version(env, &key), 2, "break-glass ran at once");
    assert_eq!(r3.err_kind(1), "denied");
    assert!(
        r3.message(1)
            .contains("broke glass 1 time(s) in the last 24 hours"),
        "{}",
        r3.message(1)
    );
    assert_eq!(
        transit_key_version(env, &key2),
        1,
        "one break-glass run a day"
    );

    let r4 = t.run(env, "dave", &["/pending", "/audit 50"]);
    let runs = r4.replies[0]["data"]["break_glass"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let id = runs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["author"], "hank");
    assert_eq!(runs[0]["overdue"], false);
    assert!(
        r4.ok_text(0)
            .contains(&format!("break-glass {id} hank ran /transit rotate {key}")),
        "{}",
        r4.ok_text(0)
    );
    assert_eq!(told(env, &prefix, "break_glass", &id), ["alice", "dave"]);
    let records = r4.replies[1]["data"]["records"].as_array().unwrap();
    let marked = records
        .iter()
        .find(|r| r["result"] == "break_glass" && r["operator"] == "hank")
        .unwrap_or_else(|| panic!("no break-glass record: {records:?}"));
    assert_eq!(marked["reason"], "outage 7");
    assert_eq!(marked["approved_by"], format!("break-glass {id}"));
    assert!(records
        .iter()
        .any(|r| r["request_id"] == marked["request_id"] && r["result"] == "ok"));

    // Unreviewed past its 10 s: a reminder to alice and dave, once.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let r5 = t.run(env, "alice", &["/pending", "/pending"]);
    assert!(r5.ok_text(0).contains("OVERDUE"), "{}", r5.ok_text(0));
    assert_eq!(
        told(env, &prefix, "break_glass_overdue", &id),
        ["alice", "dave"]
    );

    // hank cannot review himself; dave's `bad` needs his step-up first.
    let r6 = t.run(env, "hank", &[&format!("/review {id} ok")]);
    assert_eq!(r6.err_kind(0), "denied");
    assert!(
        r6.message(0).contains("your own break-glass run"),
        "{}",
        r6.message(0)
    );
    let r7 = t.run(
        env,
        "dave",
        &[
            &format!("/review {id} bad"),
            &format!("/unlock {}", fresh_code(&t.s.dave)),
            &format!("/review {id} bad not agreed in the channel"),
            &format!("/review {id} ok"),
            "/pending",
        ],
    );
    assert_eq!(r7.err_kind(0), "denied");
    assert!(r7.message(0).contains("step-up"), "{}", r7.message(0));
    r7.ok_text(1);
    let bad = r7.ok_text(2);
    assert!(
        bad.contains(&format!("reviewed: break-glass run {id} by hank"))
            && bad.contains("hank is suspended"),
        "{bad}"
    );
    assert_eq!(r7.err_kind(3), "conflict");
    assert!(r7.replies[4]["data"]["break_glass"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        told(env, &prefix, "break_glass_review", &id),
        ["alice", "hank"]
    );
    let r8 = t.run(env, "hank", &["/transit keys"]);
    assert_eq!(r8.err_kind(0), "denied");
    assert!(
        r8.message(0).contains("hank is suspended"),
        "{}",
        r8.message(0)
    );
}

/// What the approver reads is what runs: a request resolved at filing
/// (the versions to destroy and their creation times, the record's current
/// version; the transit key's version) is refused and cancelled when the
/// target changed before the approval — a new version written, the key
/// rotated by someone else — and nothing runs.
fn what_was_approved_is_what_runs(env: &Env) {
    let t = three_admins(env, "it-wysiwyr", "ivy", |text| text);
    let c = env.cluster();
    let name = format!("it-wysiwyr/{}", random_hex(3));
    let secret = format!("secret/{name}");
    let key = format!("it-wysiwyr-{}", random_hex(3));
    create_transit_key(env, &key);
    let r1 = t.run(
        env,
        "alice",
        &[
            &format!("/kv put {secret} a=1"),
            &format!("/kv put {secret} a=2"),
            &format!("/kv destroy -versions=1 {secret}"),
            &format!("/transit rotate {key}"),
            "/pending",
        ],
    );
    let destroy = request_id(&r1, 2);
    let rotate = request_id(&r1, 3);
    let p = pending_entry(&r1, 4, &destroy);
    let effect = p["effect"].as_str().unwrap();
    assert!(
        effect.starts_with("destroys version(s) 1 (created 20")
            && effect.ends_with(&format!("of {secret} for good; current version 2")),
        "{effect}"
    );
    assert!(
        r1.ok_text(4).contains(&format!("— it {effect}")),
        "{}",
        r1.ok_text(4)
    );
    assert_eq!(
        pending_entry(&r1, 4, &rotate)["effect"],
        format!("rotates transit key {key} from version 1 to 2")
    );

    // Meanwhile: a third version, and the key rotated outside the broker.
    t.run(env, "alice", &[&format!("/kv put {secret} a=3")])
        .ok_text(0);
    c.root_call(
        reqwest::Method::POST,
        &format!("transit/keys/{key}/rotate"),
        None,
    );
    let r2 = t.run(
        env,
        "ivy",
        &[
            &format!("/approve {destroy} {}", fresh_code(&t.third)),
            &format!("/approve {rotate} {}", fresh_code(&t.third)),
        ],
    );
    assert_eq!(r2.err_kind(0), "conflict");
    let m = r2.message(0);
    assert!(
        m.contains("changed since it was filed")
            && m.contains("current version 2")
            && m.contains("current version 3")
            && m.contains("request is cancelled"),
        "{m}"
    );
    assert_eq!(r2.err_kind(1), "conflict");
    assert!(
        m.len() > 10 && r2.message(1).contains("from version 2 to 3"),
        "{}",
        r2.message(1)
    );
    let meta = c.root_call(
        reqwest::Method::GET,
        &format!("secret/metadata/{name}"),
        None,
    );
    assert_eq!(meta["data"]["versions"]["1"]["destroyed"], false, "{meta}");
    assert_eq!(
        transit_key_version(env, &key),
        2,
        "only the outside rotation"
    );
    for id in [&destroy, &rotate] {
        assert!(etcd_keys(env, &format!("/vaultgram/approvals/pending/{id}")).is_empty());
    }
}

/// A suspended admin's approvals stop counting: dave's vote is withdrawn
/// when alice suspends him, so jack's approval is one of two again and
/// nothing runs. Under an etcd prefix of its own (dave's suspension and
/// token revocation stay this test's).
fn a_suspended_admins_votes_no_longer_count(env: &Env) {
    let prefix = format!("/vaultgram/votes-{}/", random_hex(3));
    let t = three_admins(env, "it-votes", "jack", |text| {
        let text = text.replace(
            "prefix = \"/vaultgram/\"",
            &format!("prefix = \"{prefix}\""),
        );
        format!("{text}{QUORUM_2}")
    });
    let key = format!("it-votes-{}", random_hex(3));
    create_transit_key(env, &key);
    let r1 = t.run(env, "alice", &[&format!("/transit rotate {key}")]);
    let id = request_id(&r1, 0);
    let r2 = t.run(
        env,
        "dave",
        &[&format!("/approve {id} {}", fresh_code(&t.s.dave))],
    );
    assert!(
        r2.ok_text(0).contains("1 of 2 approvals (dave)"),
        "{}",
        r2.replies[0]
    );
    let r3 = t.run(
        env,
        "alice",
        &[
            &format!("/unlock {}", fresh_code(&t.s.alice)),
            "/operator suspend dave laptop stolen",
            "/pending",
        ],
    );
    r3.ok_text(1);
    let p = pending_entry(&r3, 2, &id);
    assert_eq!(p["votes"], serde_json::json!([]), "{p}");
    let r4 = t.run(
        env,
        "jack",
        &[&format!("/approve {id} {}", fresh_code(&t.third))],
    );
    assert!(
        r4.ok_text(0).contains("1 of 2 approvals (jack)"),
        "{}",
        r4.replies[0]
    );
    assert_eq!(
        transit_key_version(env, &key),
        1,
        "a withdrawn vote does not count"
    );
}
