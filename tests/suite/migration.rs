//! `vaultgram import vpnbot|valhalla` and `vaultgram export mtproxy`: the
//! real binary (`--config <harness config> … --as alice`) against real
//! OpenBao, with fixtures made at test time by independent implementations:
//! `tests/fixtures/vpnbot_managed_secrets.py` writes managed-secrets.json
//! as vpnbot does, `tests/fixtures/valhalla_export.py` encrypts tokens with
//! Python's `cryptography` Fernet (a current key and two old keys).
//!
//! Names used only here: vpnbot owner ids `7700xx`, agents `mig-*`. Every
//! fixture secret, token and key is a registered canary: the end-of-run
//! search proves none reached a log, and each run's stdout/stderr is
//! checked here (an export's output is the product and carries them).
//!
//! **Why the export's byte-identity runs on a fresh Vault.** `export
//! mtproxy` writes every live secret under `mtproto/*/*`, and the other
//! tests issue MTProto secrets in the shared Vault concurrently, so a
//! byte-for-byte comparison there is impossible, and the empty case
//! (placeholder only) even more so. A second KV mount does not help: the
//! export must run as an admin's child token, whose one policy
//! (`vaultgram-op-admin`) grants the `secret/` mount only, and widening that
//! shared policy would change what other tests check (apply.sh
//! idempotency, the policy matrix) and be undone by their apply.sh runs.
//! So that test starts its own cluster with the harness's own code
//! (`Cluster::start`: same scripts, policies and token role), runs the
//! round trips there, and copies that cluster's server and audit logs into
//! the canary search before stopping it. The imports' other behaviour runs
//! on the shared cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::TestFn;
use crate::common::cluster::{random_hex, repo_root, Cluster};
use crate::common::{canary, Env};

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "migration::vpnbot_import_dry_run_idempotence_and_conflicts",
        vpnbot_import_dry_run_idempotence_conflicts,
    ),
    (
        "migration::vpnbot_malformed_rows_rejected_valid_rows_imported",
        vpnbot_malformed_rows,
    ),
    (
        "migration::valhalla_import_current_and_old_keys",
        valhalla_import,
    ),
    (
        "migration::valhalla_malformed_rows_rejected_valid_rows_imported",
        valhalla_malformed_rows,
    ),
    (
        "migration::non_admin_operators_are_refused",
        non_admin_refused,
    ),
    (
        "migration::export_round_trip_is_byte_identical_on_a_fresh_vault",
        export_round_trip_fresh_vault,
    ),
];

/// The placeholder and generation records are one per Vault: the vpnbot
/// tests on the shared cluster take turns.
static MTPROXY_RECORDS: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fingerprint(secret: &str) -> String {
    sha256_hex(secret)[..16].to_string()
}

/// A fresh MTProto secret (16 random bytes as hex), registered as a canary.
fn mtproto_secret() -> String {
    let s = random_hex(16);
    canary::register(&s);
    s
}

/// A fresh agent token as ValhallaBot makes them (`token_urlsafe(32)`),
/// registered as a canary.
fn agent_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).unwrap();
    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    canary::register(&t);
    t
}

/// A work directory for one test, inside the harness's directory.
fn workdir(env: &Env, tag: &str) -> PathBuf {
    let d = env
        .cluster()
        .path()
        .join(format!("migration-{tag}-{}", random_hex(4)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The summary line (the last line of stdout).
    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }

    fn show(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "{}", self.show());
        self
    }

    /// Neither stream carries any of `secrets`.
    fn clean(&self, secrets: &[&str]) -> &Run {
        for s in secrets {
            assert!(
                !self.stdout.contains(s) && !self.stderr.contains(s),
                "a secret reached the output:\n{}",
                self.show()
            );
        }
        self
    }

    fn stderr_has(&self, line: &str) -> &Run {
        assert!(
            self.stderr.lines().any(|l| l.contains(line)),
            "no stderr line with {line:?}:\n{}",
            self.show()
        );
        self
    }
}

/// Runs the real binary with `config` and `args`, stdin closed. stderr
/// (the logs) goes into the canary search; stdout too unless
/// `stdout_is_product` (an export to stdout is the secrets document).
fn vaultgram(env: &Env, config: &Path, args: &[&str], stdout_is_product: bool) -> Run {
    static N: AtomicU64 = AtomicU64::new(0);
    let out = Command::new(env!("CARGO_BIN_EXE_vaultgram"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("VAULTGRAM_LOG", "info,vaultgram=debug")
        .args(["--log-format", "json", "--config"])
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let dir = env.cluster().path().join("console-output");
    std::fs::create_dir_all(&dir).unwrap();
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::fs::write(dir.join(format!("migration-{n}.err")), &run.stderr).unwrap();
    let out_name = if stdout_is_product {
        format!("migration-{n}.out")
    } else {
        format!("migration-{n}-stdout.err")
    };
    std::fs::write(dir.join(out_name), &run.stdout).unwrap();
    run
}

fn shared(env: &Env, args: &[&str]) -> Run {
    vaultgram(env, &env.cluster().config_path, args, false)
}

/// Runs a fixture script with `spec` on stdin.
fn python(script: &str, arg: &Path, spec: &Value) {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg(repo_root().join("tests/fixtures").join(script))
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// vpnbot's managed-secrets.json for `spec`, written by the Python fixture.
fn vpnbot_doc(dir: &Path, name: &str, spec: Value) -> PathBuf {
    let p = dir.join(name);
    python("vpnbot_managed_secrets.py", &p, &spec);
    p
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A KV v2 read with the root token: (status, data.data, data.metadata).
fn kv_root(c: &Cluster, path: &str) -> (u16, Value, Value) {
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

fn kv_root_put(c: &Cluster, path: &str, data: Value) {
    let (code, v) = c
        .vault_api(
            Method::POST,
            &format!("secret/data/{path}"),
            Some(&c.root_token),
            Some(json!({ "data": data })),
        )
        .unwrap();
    assert_eq!(code, 200, "{path}: {v}");
}

fn kv_root_forget(c: &Cluster, path: &str) {
    let (code, v) = c
        .vault_api(
            Method::DELETE,
            &format!("secret/metadata/{path}"),
            Some(&c.root_token),
            None,
        )
        .unwrap();
    assert!(code == 204 || code == 404, "{path}: {code} {v}");
}

fn mtproto_path(owner: u64) -> String {
    format!("vaultgram/mtproto/admin/{owner}")
}

// ---------------------------------------------------------------------------
// import vpnbot (shared cluster)
// ---------------------------------------------------------------------------

fn vpnbot_import_dry_run_idempotence_conflicts(env: &Env) {
    let _turn = MTPROXY_RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    let c = env.cluster();
    kv_root_forget(c, "vaultgram/mtproxy/state");
    let dir = workdir(env, "vpnbot");
    let (s1, s2, s3) = (mtproto_secret(), mtproto_secret(), mtproto_secret());
    let all = [s1.as_str(), s2.as_str(), s3.as_str()];
    let doc = vpnbot_doc(
        &dir,
        "managed-secrets.json",
        json!({"generation": 41, "entries": [
            {"secret": s1, "owner_user_id": 770001, "access_id": 5},
            {"secret": s2, "owner_user_id": 770002},
            {"secret": s3, "owner_user_id": 770003, "access_id": 7},
        ]}),
    );
    let file = path_str(&doc);

    // Dry run: reports, writes nothing.
    let r = shared(
        env,
        &["import", "vpnbot", file, "--dry-run", "--as", "alice"],
    );
    r.expect(0).clean(&all);
    assert_eq!(
        r.summary(),
        "created 3, unchanged 0, conflicts 0, rejected 0 (dry run: nothing written)",
        "{}",
        r.show()
    );
    r.stderr_has("(owner 770001): would be created")
        .stderr_has("generation 41: would be stored");
    for owner in [770001, 770002, 770003] {
        assert_eq!(kv_root(c, &mtproto_path(owner)).0, 404, "dry run wrote");
    }
    assert_eq!(kv_root(c, "vaultgram/mtproxy/state").0, 404);

    // The import: /mtproto issue's record plus vpnbot's ids.
    let r = shared(env, &["import", "vpnbot", file, "--as", "alice"]);
    r.expect(0).clean(&all);
    assert_eq!(
        r.summary(),
        "created 3, unchanged 0, conflicts 0, rejected 0",
        "{}",
        r.show()
    );
    for o in [770001, 770002, 770003] {
        r.stderr_has(&format!("(owner {o}): created"));
    }
    r.stderr_has("generation 41: stored");
    for (owner, secret, access) in [
        (770001, &s1, Some("5")),
        (770002, &s2, None),
        (770003, &s3, Some("7")),
    ] {
        let (code, d, _) = kv_root(c, &mtproto_path(owner));
        assert_eq!(code, 200);
        assert_eq!(d["secret"], secret.as_str());
        assert_eq!(d["fingerprint"], fingerprint(secret));
        assert_eq!(d["owner"], "admin");
        assert_eq!(d["issued_by"], "import:vpnbot");
        assert!(d["issued_at"].as_str().unwrap().ends_with('Z'), "{d}");
        assert_eq!(d["owner_user_id"], owner.to_string());
        assert_eq!(d["access_id"].as_str(), access, "{d}");
    }
    let (_, state, _) = kv_root(c, "vaultgram/mtproxy/state");
    assert_eq!(state["generation"], "41");
    // The admins' own tools see them as MTProto secrets.
    let console = crate::common::console::console(env, "alice", &["/mtproto show 770001"]);
    assert!(
        console.ok_text(0).contains(&fingerprint(&s1)),
        "{}",
        console.replies[0]
    );

    // A second run changes nothing and says so.
    let r = shared(env, &["import", "vpnbot", file, "--as", "alice"]);
    r.expect(0).clean(&all);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 3, conflicts 0, rejected 0",
        "{}",
        r.show()
    );
    r.stderr_has("generation 41: unchanged");
    let (_, _, meta) = kv_root(c, &mtproto_path(770002));
    assert_eq!(meta["version"], 1);

    // A different secret for 770002: a conflict, skipped (not a rejection).
    let s2b = mtproto_secret();
    let doc2 = vpnbot_doc(
        &dir,
        "managed-secrets-2.json",
        json!({"generation": 40, "entries": [
            {"secret": s1, "owner_user_id": 770001, "access_id": 5},
            {"secret": s2b, "owner_user_id": 770002},
        ]}),
    );
    let file2 = path_str(&doc2);
    let all2 = [s1.as_str(), s2.as_str(), s3.as_str(), s2b.as_str()];
    let r = shared(env, &["import", "vpnbot", file2, "--as", "alice"]);
    r.expect(0).clean(&all2);
    assert!(
        r.summary().starts_with("created 0, unchanged 1, conflicts 1, rejected 0 (1 conflict(s) skipped, not rejections"),
        "{}",
        r.show()
    );
    r.stderr_has("(owner 770002): conflict: a different secret is stored for this owner; skipped")
        .stderr_has("generation: kept 41 (the document has 40, lower; --overwrite sets it)");
    assert_eq!(kv_root(c, &mtproto_path(770002)).1["secret"], s2.as_str());

    // --overwrite with --dry-run: says so, writes nothing.
    let r = shared(
        env,
        &[
            "import",
            "vpnbot",
            file2,
            "--overwrite",
            "--dry-run",
            "--as",
            "alice",
        ],
    );
    r.expect(0).clean(&all2);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 1, conflicts 1, rejected 0 (1 conflict(s) would be overwritten) (dry run: nothing written)",
        "{}",
        r.show()
    );
    assert_eq!(kv_root(c, &mtproto_path(770002)).1["secret"], s2.as_str());

    // --overwrite replaces it as a new version.
    let r = shared(
        env,
        &["import", "vpnbot", file2, "--overwrite", "--as", "alice"],
    );
    r.expect(0).clean(&all2);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 1, conflicts 1, rejected 0 (1 conflict(s) overwritten)",
        "{}",
        r.show()
    );
    r.stderr_has(
        "(owner 770002): conflict: a different secret is stored for this owner; overwritten",
    )
    .stderr_has("generation: set to 40 (was 41)");
    let (_, d, meta) = kv_root(c, &mtproto_path(770002));
    assert_eq!(d["secret"], s2b.as_str());
    assert_eq!(meta["version"], 2);
}

fn vpnbot_malformed_rows(env: &Env) {
    let _turn = MTPROXY_RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    let c = env.cluster();
    let dir = workdir(env, "vpnbot-bad");
    let good1 = mtproto_secret();
    let good2 = mtproto_secret();
    let short = random_hex(15);
    canary::register(&short);
    let forged = mtproto_secret();
    let orphan = mtproto_secret();
    let stringly = mtproto_secret();
    let all = [
        good1.as_str(),
        good2.as_str(),
        short.as_str(),
        forged.as_str(),
        orphan.as_str(),
        stringly.as_str(),
    ];
    let doc = vpnbot_doc(
        &dir,
        "managed-secrets.json",
        json!({"generation": 3, "entries": [
            {"secret": good1, "owner_user_id": 770011, "access_id": 1},
            {"secret": short, "owner_user_id": 770012},
            {"secret": forged, "owner_user_id": 770013, "fingerprint": fingerprint(&good1).replace(|c: char| c.is_ascii_digit(), "0")},
            {"secret": orphan, "access_id": 9},
            {"secret": stringly, "owner_user_id": "770016"},
            {"secret": good2, "owner_user_id": 770014},
        ]}),
    );
    let r = shared(env, &["import", "vpnbot", path_str(&doc), "--as", "alice"]);
    r.expect(1).clean(&all);
    assert_eq!(
        r.summary(),
        "created 2, unchanged 0, conflicts 0, rejected 4",
        "{}",
        r.show()
    );
    r.stderr_has("(owner 770011): created")
        .stderr_has("(owner 770014): created")
        .stderr_has("(owner 770012): rejected: secret must be 32 hex characters, it has 30")
        .stderr_has("(owner 770013): rejected: fingerprint does not match the secret")
        .stderr_has("(owner id missing): rejected: owner_user_id is missing")
        .stderr_has("(owner id invalid): rejected: owner_user_id must be a positive integer");
    assert_eq!(
        kv_root(c, &mtproto_path(770011)).1["secret"],
        good1.as_str()
    );
    assert_eq!(
        kv_root(c, &mtproto_path(770014)).1["secret"],
        good2.as_str()
    );
    for bad in [770012, 770013, 770016] {
        assert_eq!(kv_root(c, &mtproto_path(bad)).0, 404, "{bad} was stored");
    }

    // Bad JSON: a clear error, exit 2, nothing written (the valid entry of
    // the truncated document included).
    let good3 = mtproto_secret();
    let full = vpnbot_doc(
        &dir,
        "whole.json",
        json!({"generation": 4, "entries": [{"secret": good3, "owner_user_id": 770015}]}),
    );
    let text = std::fs::read_to_string(&full).unwrap();
    let cut = dir.join("truncated.json");
    std::fs::write(&cut, &text[..text.len() - 8]).unwrap();
    let r = shared(env, &["import", "vpnbot", path_str(&cut), "--as", "alice"]);
    r.expect(2).clean(&[good3.as_str()]);
    r.stderr_has("is not valid JSON")
        .stderr_has("nothing was written");
    assert_eq!(kv_root(c, &mtproto_path(770015)).0, 404);
    // Not vpnbot's document at all.
    let other = dir.join("other.json");
    std::fs::write(&other, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    let r = shared(
        env,
        &["import", "vpnbot", path_str(&other), "--as", "alice"],
    );
    r.expect(2).clean(&[good3.as_str()]);
    r.stderr_has("unsupported `version`");
    assert_eq!(kv_root(c, &mtproto_path(770015)).0, 404);
    let missing = dir.join("missing.json");
    shared(
        env,
        &["import", "vpnbot", path_str(&missing), "--as", "alice"],
    )
    .expect(2)
    .stderr_has("cannot read");
}

// ---------------------------------------------------------------------------
// import valhalla (shared cluster)
// ---------------------------------------------------------------------------

/// The key files the Python fixture wrote, registered as canaries.
fn register_keys(dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for f in ["current.key", "old.keys", "stranger.key"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        for k in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            canary::register(k);
            keys.push(k.to_string());
        }
    }
    assert_eq!(keys.len(), 4);
    keys
}

fn valhalla_args<'a>(dir: &'a Path, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec![
        "import".to_string(),
        "valhalla".into(),
        dir.join("export.json").display().to_string(),
        "--key-file".into(),
        dir.join("current.key").display().to_string(),
        "--old-keys-file".into(),
        dir.join("old.keys").display().to_string(),
        "--as".into(),
        "alice".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_valhalla(env: &Env, dir: &Path, extra: &[&str]) -> Run {
    let args = valhalla_args(dir, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    shared(env, &refs)
}

fn agent_path(id: &str) -> String {
    format!("vaultgram/agents/{id}")
}

fn valhalla_import(env: &Env) {
    let c = env.cluster();
    let dir = workdir(env, "valhalla");
    let (t1, t2, t3) = (agent_token(), agent_token(), agent_token());
    python(
        "valhalla_export.py",
        &dir,
        &json!({"rows": [
            {"agent": "mig-va1", "token": t1, "key": "current"},
            {"agent": "mig-va2", "token": t2, "key": "old1"},
            {"agent": "mig-va3", "token": t3, "key": "old2"},
        ]}),
    );
    let keys = register_keys(&dir);
    let mut secrets: Vec<&str> = vec![&t1, &t2, &t3];
    secrets.extend(keys.iter().map(String::as_str));

    let r = run_valhalla(env, &dir, &["--dry-run"]);
    r.expect(0).clean(&secrets);
    assert_eq!(
        r.summary(),
        "created 3, unchanged 0, conflicts 0, rejected 0 (dry run: nothing written)",
        "{}",
        r.show()
    );
    for a in ["mig-va1", "mig-va2", "mig-va3"] {
        assert_eq!(kv_root(c, &agent_path(a)).0, 404, "dry run wrote {a}");
    }

    let r = run_valhalla(env, &dir, &[]);
    r.expect(0).clean(&secrets);
    assert_eq!(
        r.summary(),
        "created 3, unchanged 0, conflicts 0, rejected 0",
        "{}",
        r.show()
    );
    r.stderr_has("row 1 (agent mig-va1): created (decrypted with the current key)")
        .stderr_has("row 2 (agent mig-va2): created (decrypted with old key 1)")
        .stderr_has("row 3 (agent mig-va3): created (decrypted with old key 2)");
    for (a, t) in [("mig-va1", &t1), ("mig-va2", &t2), ("mig-va3", &t3)] {
        let (code, d, _) = kv_root(c, &agent_path(a));
        assert_eq!(code, 200);
        assert_eq!(d["token"], t.as_str());
        assert_eq!(d["token_sha256"], sha256_hex(t));
        assert_eq!(d["created_by"], "import:valhalla");
        assert!(d["created_at"].as_str().unwrap().ends_with('Z'), "{d}");
    }
    // /agent list (an admin's tool) sees them.
    let console = crate::common::console::console(env, "alice", &["/agent list"]);
    assert!(
        console.ok_text(0).lines().any(|l| l == "mig-va2"),
        "{}",
        console.replies[0]
    );

    let r = run_valhalla(env, &dir, &[]);
    r.expect(0).clean(&secrets);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 3, conflicts 0, rejected 0",
        "{}",
        r.show()
    );

    // ValhallaBot rotated mig-va2's token: a conflict, skipped, then
    // replaced with --overwrite.
    let dir2 = workdir(env, "valhalla-2");
    let t2b = agent_token();
    python(
        "valhalla_export.py",
        &dir2,
        &json!({"keys_from": dir, "rows": [
            {"agent": "mig-va1", "token": t1, "key": "old2"},
            {"agent": "mig-va2", "token": t2b, "key": "current"},
        ]}),
    );
    secrets.push(&t2b);
    let r = run_valhalla(env, &dir2, &[]);
    r.expect(0).clean(&secrets);
    assert!(
        r.summary()
            .starts_with("created 0, unchanged 1, conflicts 1, rejected 0 (1 conflict(s) skipped"),
        "{}",
        r.show()
    );
    r.stderr_has("(agent mig-va2): conflict: a different token is stored for this agent; skipped");
    assert_eq!(kv_root(c, &agent_path("mig-va2")).1["token"], t2.as_str());
    let r = run_valhalla(env, &dir2, &["--overwrite"]);
    r.expect(0).clean(&secrets);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 1, conflicts 1, rejected 0 (1 conflict(s) overwritten)",
        "{}",
        r.show()
    );
    let (_, d, meta) = kv_root(c, &agent_path("mig-va2"));
    assert_eq!(d["token"], t2b.as_str());
    assert_eq!(d["token_sha256"], sha256_hex(&t2b));
    assert_eq!(meta["version"], 2);
}

fn valhalla_malformed_rows(env: &Env) {
    let c = env.cluster();
    let dir = workdir(env, "valhalla-bad");
    let tokens: Vec<String> = (0..7).map(|_| agent_token()).collect();
    python(
        "valhalla_export.py",
        &dir,
        &json!({"rows": [
            {"agent": "mig-vb1", "token": tokens[0], "key": "current"},
            {"agent": "mig-vb2", "token": tokens[1], "token_encrypted": "this is *not* base64!"},
            {"agent": "mig-vb3", "token": tokens[2], "key": "stranger"},
            {"agent": "mig-vb4", "token": tokens[3], "token_sha256": sha256_hex("someone else's token")},
            {"agent": "admin", "token": tokens[4]},
            {"agent": "Bad/Id", "token": tokens[5]},
            {"agent": "mig-vb5", "token": tokens[6], "key": "old1"},
        ]}),
    );
    let keys = register_keys(&dir);
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.extend(keys.iter().map(String::as_str));
    let r = run_valhalla(env, &dir, &[]);
    r.expect(1).clean(&secrets);
    assert_eq!(
        r.summary(),
        "created 2, unchanged 0, conflicts 0, rejected 5",
        "{}",
        r.show()
    );
    r.stderr_has("row 1 (agent mig-vb1): created")
        .stderr_has("row 2 (agent mig-vb2): rejected: token_encrypted is not urlsafe base64")
        .stderr_has("row 3 (agent mig-vb3): rejected: no key decrypts token_encrypted")
        .stderr_has("row 4 (agent mig-vb4): rejected: the SHA-256 of the decrypted token does not match token_sha256")
        .stderr_has("row 5 (agent id invalid): rejected: invalid agent id: `admin` is reserved")
        .stderr_has("row 6 (agent id invalid): rejected: invalid agent id")
        .stderr_has("row 7 (agent mig-vb5): created (decrypted with old key 1)");
    assert!(!r.stderr.contains("Bad/Id"), "{}", r.show());
    assert_eq!(
        kv_root(c, &agent_path("mig-vb1")).1["token"],
        tokens[0].as_str()
    );
    assert_eq!(
        kv_root(c, &agent_path("mig-vb5")).1["token"],
        tokens[6].as_str()
    );
    for a in ["mig-vb2", "mig-vb3", "mig-vb4", "admin"] {
        assert_eq!(kv_root(c, &agent_path(a)).0, 404, "{a} was stored");
    }

    // Only the stranger key: every row is undecryptable (exit 1), nothing
    // is stored.
    let dir2 = workdir(env, "valhalla-wrongkey");
    let t = agent_token();
    python(
        "valhalla_export.py",
        &dir2,
        &json!({"keys_from": dir, "rows": [{"agent": "mig-vb6", "token": t}]}),
    );
    let mut args = valhalla_args(&dir2, &[]);
    args[4] = dir2.join("stranger.key").display().to_string();
    args.drain(5..7);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = shared(env, &refs);
    secrets.push(&t);
    r.expect(1).clean(&secrets);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 0, conflicts 0, rejected 1"
    );
    r.stderr_has("(agent mig-vb6): rejected: no key decrypts token_encrypted (tried the current key and 0 old key(s)");
    assert_eq!(kv_root(c, &agent_path("mig-vb6")).0, 404);

    // A key file that holds no key, and bad JSON: exit 2 before Vault.
    let junk = dir2.join("junk.key");
    std::fs::write(&junk, "not-a-key\n").unwrap();
    let mut args = valhalla_args(&dir2, &[]);
    args[4] = junk.display().to_string();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    shared(env, &refs)
        .expect(2)
        .clean(&secrets)
        .stderr_has("not a Fernet key (urlsafe base64 of 32 bytes)");
    std::fs::write(dir2.join("export.json"), "[{\"agent\": \"mig-vb6\",").unwrap();
    run_valhalla(env, &dir2, &[])
        .expect(2)
        .clean(&secrets)
        .stderr_has("is not valid JSON");
    std::fs::write(dir2.join("export.json"), "{\"agent\": \"mig-vb6\"}").unwrap();
    run_valhalla(env, &dir2, &[])
        .expect(2)
        .stderr_has("not a ValhallaBot export (expected a JSON array of objects)");
    assert_eq!(kv_root(c, &agent_path("mig-vb6")).0, 404);
}

fn non_admin_refused(env: &Env) {
    let dir = workdir(env, "nonadmin");
    let s = mtproto_secret();
    let doc = vpnbot_doc(
        &dir,
        "managed-secrets.json",
        json!({"generation": 1, "entries": [{"secret": s, "owner_user_id": 770021}]}),
    );
    let r = shared(env, &["import", "vpnbot", path_str(&doc), "--as", "bob"]);
    r.expect(2).clean(&[&s]);
    r.stderr_has("operator `bob` is not an admin");
    let r = shared(env, &["export", "mtproxy", "--as", "carol"]);
    r.expect(2);
    assert!(r.stdout.is_empty(), "{}", r.show());
    r.stderr_has("operator `carol` is not an admin");
    shared(env, &["export", "mtproxy", "--as", "mallory"])
        .expect(2)
        .stderr_has("no operator named `mallory`");
    assert_eq!(kv_root(env.cluster(), &mtproto_path(770021)).0, 404);
}

// ---------------------------------------------------------------------------
// export mtproxy: byte-identical round trips on a fresh Vault
// ---------------------------------------------------------------------------

/// A cluster of its own (see the module docs); its logs join the canary
/// search when it is dropped.
struct Fresh<'a> {
    env: &'a Env,
    cluster: Option<Cluster>,
}

impl Drop for Fresh<'_> {
    fn drop(&mut self) {
        let Some(c) = self.cluster.take() else { return };
        c.shutdown();
        let dir = self.env.cluster().path().join("console-output");
        let _ = std::fs::create_dir_all(&dir);
        for f in c.log_files() {
            if let Some(name) = f.file_name() {
                let _ = std::fs::copy(
                    &f,
                    dir.join(format!("fresh-vault-{}.err", name.to_string_lossy())),
                );
            }
        }
    }
}

fn export_round_trip_fresh_vault(env: &Env) {
    let fresh = Fresh {
        env,
        cluster: Some(Cluster::start()),
    };
    let c = fresh.cluster.as_ref().unwrap();
    let config = c.config_path.clone();
    let run = |args: &[&str], product: bool| vaultgram(env, &config, args, product);
    let dir = workdir(env, "export");

    // 1. Empty: the placeholder entry only. vpnbot's file → import → export
    //    gives the same bytes.
    let empty = vpnbot_doc(&dir, "empty.json", json!({"generation": 12, "entries": []}));
    let empty_bytes = std::fs::read(&empty).unwrap();
    let doc: Value = serde_json::from_slice(&empty_bytes).unwrap();
    let placeholder = doc["runtime_secrets"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    canary::register(&placeholder);
    assert_eq!(doc["runtime_secrets"][0]["purpose"], "empty-placeholder");
    let r = run(
        &["import", "vpnbot", path_str(&empty), "--as", "alice"],
        false,
    );
    r.expect(0).clean(&[&placeholder]);
    assert_eq!(
        r.summary(),
        "created 0, unchanged 0, conflicts 0, rejected 0"
    );
    r.stderr_has("runtime placeholder (secret/vaultgram/mtproxy/placeholder): created")
        .stderr_has("generation 12: stored");
    let (_, ph, _) = kv_root(c, "vaultgram/mtproxy/placeholder");
    assert_eq!(
        ph,
        json!({"secret": placeholder, "fingerprint": "empty-placeholder", "purpose": "empty-placeholder"})
    );
    let r = run(&["export", "mtproxy", "--as", "alice"], true);
    r.expect(0);
    assert_eq!(r.stdout.as_bytes(), empty_bytes.as_slice(), "{}", r.show());
    assert!(!r.stderr.contains(&placeholder));
    let out = dir.join("mtproxy").join("managed-secrets.json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let r = run(
        &["export", "mtproxy", "-o", path_str(&out), "--as", "alice"],
        false,
    );
    r.expect(0).clean(&[&placeholder]);
    r.stderr_has("exported 0 secret(s), generation 12, to");
    assert_eq!(std::fs::read(&out).unwrap(), empty_bytes);
    assert_mode_0600(&out);
    // The same document again: the file is left alone.
    run(
        &["export", "mtproxy", "-o", path_str(&out), "--as", "alice"],
        false,
    )
    .expect(0)
    .stderr_has("unchanged (0 secret(s), generation 12)");
    // A second import of the same file changes nothing.
    let r = run(
        &["import", "vpnbot", path_str(&empty), "--as", "alice"],
        false,
    );
    r.expect(0).clean(&[&placeholder]);
    r.stderr_has(
        "runtime placeholder (secret/vaultgram/mtproxy/placeholder): unchanged (already stored)",
    )
    .stderr_has("generation 12: unchanged");

    // 2. Three user secrets (one without access_id), generation 13.
    let (s1, s2, s3) = (mtproto_secret(), mtproto_secret(), mtproto_secret());
    let entries = vec![
        json!({"secret": s1, "owner_user_id": 770031, "access_id": 11}),
        json!({"secret": s2, "owner_user_id": 770032}),
        json!({"secret": s3, "owner_user_id": 770033, "access_id": 0}),
    ];
    let full = vpnbot_doc(
        &dir,
        "full.json",
        json!({"generation": 13, "entries": entries}),
    );
    let full_bytes = std::fs::read(&full).unwrap();
    let all = [s1.as_str(), s2.as_str(), s3.as_str(), placeholder.as_str()];
    let r = run(
        &["import", "vpnbot", path_str(&full), "--as", "alice"],
        false,
    );
    r.expect(0).clean(&all);
    assert_eq!(
        r.summary(),
        "created 3, unchanged 0, conflicts 0, rejected 0"
    );
    r.stderr_has("generation: set to 13 (was 12)");
    let r = run(
        &["export", "mtproxy", "-o", path_str(&out), "--as", "alice"],
        false,
    );
    r.expect(0).clean(&all);
    r.stderr_has("exported 3 secret(s), generation 13, to");
    assert_eq!(
        String::from_utf8(std::fs::read(&out).unwrap()).unwrap(),
        String::from_utf8(full_bytes.clone()).unwrap()
    );
    assert_mode_0600(&out);
    // --generation overrides the stored one, nothing else changes.
    let r = run(
        &["export", "mtproxy", "--generation", "99", "--as", "alice"],
        true,
    );
    r.expect(0);
    let want = String::from_utf8(full_bytes).unwrap().replacen(
        "\"generation\": 13,",
        "\"generation\": 99,",
        1,
    );
    assert_eq!(r.stdout, want);

    // 3. The export serves every owner's users: an agent's user with a
    //    numeric id (owner_user_id from the path), one with a name (no
    //    owner_user_id), and a revoked (soft-deleted) secret left out.
    let (sb1, sb2) = (mtproto_secret(), mtproto_secret());
    kv_root_put(
        c,
        "vaultgram/mtproto/bob/770041",
        json!({"secret": sb1, "fingerprint": fingerprint(&sb1), "owner": "bob", "issued_by": "bob"}),
    );
    kv_root_put(
        c,
        "vaultgram/mtproto/bob/mig-user",
        json!({"secret": sb2, "fingerprint": fingerprint(&sb2), "owner": "bob", "issued_by": "bob"}),
    );
    let (code, v) = c
        .vault_api(
            Method::DELETE,
            &format!("secret/data/{}", mtproto_path(770032)),
            Some(&c.root_token),
            None,
        )
        .unwrap();
    assert_eq!(code, 204, "{v}");
    let expected = vpnbot_doc(
        &dir,
        "expected-3.json",
        json!({"generation": 13, "entries": [
            entries[0], entries[2],
            {"secret": sb1, "owner_user_id": 770041},
            {"secret": sb2},
        ]}),
    );
    let r = run(&["export", "mtproxy", "--as", "alice"], true);
    r.expect(0);
    assert_eq!(
        r.stdout,
        std::fs::read_to_string(&expected).unwrap(),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(&sb1) && !r.stderr.contains(&sb2));
    assert!(!r.stdout.contains(&s2), "a revoked secret was exported");

    // Vault's audit log names the operator on every call: the imports and
    // exports ran with alice's child token, never the broker's.
    let audit = std::fs::read_to_string(c.audit_log()).unwrap();
    let mut seen = 0;
    for line in audit.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let path = v["request"]["path"].as_str().unwrap_or_default();
        if v["type"] == "request"
            && (path.starts_with("secret/data/vaultgram/mtproto/")
                || path.starts_with("secret/metadata/vaultgram/mtproto/")
                || path.starts_with("secret/data/vaultgram/mtproxy/"))
        {
            let who = v["auth"]["display_name"].as_str().unwrap_or_default();
            if who != "root" {
                assert_eq!(who, "token-vaultgram-alice", "{line}");
                seen += 1;
            }
        }
    }
    assert!(seen > 10, "only {seen} audited calls");
    // `fresh` stops the cluster here and keeps its logs for the search.
}

fn assert_mode_0600(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", p.display());
    // No temporary file left next to it.
    let others: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.path() != p)
        .collect();
    assert!(others.is_empty(), "{others:?}");
}
