//! The Vault engines on `Vault` (KV v2, transit, response wrapping, TOTP)
//! against the harness's real OpenBao, with the tokens the broker would use
//! (an operator child token's policies; the broker's own for TOTP). Root
//! only sets things up. Every test has its own KV paths / key names, since
//! tests run in parallel; secret values are canaries, searched for in Debug
//! output and error texts here and in every log at the end of the run.

use std::collections::BTreeMap;
use std::process::Output;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use vaultgram::error::ErrorKind;
use vaultgram::vault::kv::{KvData, KvPath};
use vaultgram::vault::wrap::WrapTtl;
use vaultgram::vault::{Vault, VaultError};

use super::TestFn;
use crate::common::canary;
use crate::common::process::free_port;
use crate::common::totp::{base32, step_now, totp};
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "vault_engines::kv_put_get_versions_and_metadata",
        kv_put_get_versions_and_metadata,
    ),
    (
        "vault_engines::kv_cas_conflict_and_patch",
        kv_cas_conflict_and_patch,
    ),
    ("vault_engines::kv_list", kv_list),
    (
        "vault_engines::kv_delete_undelete_destroy_metadata_delete",
        kv_lifecycle,
    ),
    ("vault_engines::kv_rollback_as_the_cli", kv_rollback),
    (
        "vault_engines::kv_errors_map_to_kinds",
        kv_errors_map_to_kinds,
    ),
    (
        "vault_engines::kv_interop_with_the_bao_cli",
        kv_interop_with_bao_cli,
    ),
    (
        "vault_engines::transit_round_trip_rotate_rewrap_datakey",
        transit_round_trip,
    ),
    (
        "vault_engines::transit_min_decryption_version_enforced",
        transit_min_decryption_version,
    ),
    (
        "vault_engines::transit_errors_map_to_kinds",
        transit_errors_map_to_kinds,
    ),
    (
        "vault_engines::wrap_kv_get_unwraps_exactly_once",
        wrap_kv_get_single_use,
    ),
    (
        "vault_engines::wrap_kv_get_refuses_deleted_versions",
        wrap_kv_get_refuses_deleted,
    ),
    (
        "vault_engines::wrap_data_unwraps_once_with_its_own_token",
        wrap_data_unwrap_self,
    ),
    (
        "vault_engines::wrap_transit_decrypt_and_datakey",
        wrap_transit,
    ),
    ("vault_engines::totp_validates_codes", totp_validates_codes),
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn vault_as(env: &Env, token: &SecretString) -> Vault {
    Vault::with_token(&env.config().vault, token).unwrap()
}

/// An operator child token's policy set for an admin.
fn admin(env: &Env) -> (Vault, SecretString) {
    let t = env.cluster().create_token(&["vaultgram-op-admin"], "1h");
    (vault_as(env, &t), t)
}

fn agent(env: &Env, name: &str) -> Vault {
    let t = env
        .cluster()
        .create_token(&[&format!("vaultgram-op-agent-{name}")], "1h");
    vault_as(env, &t)
}

/// The broker's own token (what validates TOTP codes).
fn broker(env: &Env) -> Vault {
    let cfg = env.config();
    let token = cfg.vault.auth.token.clone().expect("broker token_file");
    Vault::with_token(&cfg.vault, &token).unwrap()
}

fn kp(s: &str) -> KvPath {
    KvPath::parse(s).unwrap()
}

fn data(pairs: &[(&str, &str)]) -> KvData {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), SecretString::from(*v)))
        .collect()
}

fn plain(d: &KvData) -> BTreeMap<String, String> {
    d.iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_string()))
        .collect()
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, VaultError>, kind: ErrorKind, what: &str) -> String {
    match r {
        Ok(v) => panic!("{what}: expected {kind} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: {e}");
            e.to_string()
        }
    }
}

/// No canary in any of these texts (Debug output, error Displays).
fn assert_clean(texts: &[String], canaries: &[&str]) {
    for t in texts {
        for c in canaries {
            assert!(!t.contains(c), "secret value leaked into: {t}");
        }
    }
}

fn stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn b64(input: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                A[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------

fn kv_put_get_versions_and_metadata(env: &Env) {
    let c = env.cluster();
    let (v, _) = admin(env);
    let pw1 = canary::plant("kv-basic-v1");
    let pw2 = canary::plant("kv-basic-v2");
    let path = kp("secret/it/engines/basic/panel");
    // (The harness's HTTP client is blocking: root set-up runs outside the runtime.)
    let (code, body) = c
        .vault_api(
            Method::POST,
            "secret/data/it/engines/basic/typed",
            Some(&c.root_token),
            Some(json!({"data": {"n": 5, "o": {"z": [1, "x"]}, "b": true, "s": "str"}})),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    env.rt.block_on(async {
        assert_eq!(
            v.kv_put(&path, &data(&[("user", "admin"), ("password", &pw1)]), None)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            v.kv_put(&path, &data(&[("user", "admin"), ("password", &pw2)]), None)
                .await
                .unwrap(),
            2
        );
        let latest = v.kv_get(&path, None).await.unwrap();
        assert_eq!(latest.version, 2);
        assert_eq!(plain(&latest.data)["password"], pw2);
        assert_eq!(plain(&latest.data)["user"], "admin");
        assert!(!latest.created_time.is_empty());
        assert_eq!(latest.deletion_time, None);
        assert!(!latest.destroyed);
        let first = v.kv_get(&path, Some(1)).await.unwrap();
        assert_eq!(
            (first.version, plain(&first.data)["password"].as_str()),
            (1, pw1.as_str())
        );

        let e1 = expect_err(v.kv_get(&path, Some(99)).await, ErrorKind::NotFound, "v99");
        assert!(
            e1.contains("secret/it/engines/basic/panel has no version 99"),
            "{e1}"
        );
        let missing = kp("secret/it/engines/basic/missing");
        let e2 = expect_err(
            v.kv_get(&missing, None).await,
            ErrorKind::NotFound,
            "missing",
        );
        assert!(
            e2.contains("no secret at secret/it/engines/basic/missing"),
            "{e2}"
        );

        let meta = v.kv_metadata_get(&path).await.unwrap();
        assert_eq!(meta.current_version, 2);
        assert_eq!(
            meta.versions.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(meta
            .versions
            .values()
            .all(|m| !m.destroyed && m.deletion_time.is_none()));
        assert!(!meta.created_time.is_empty() && !meta.updated_time.is_empty());
        let e3 = expect_err(
            v.kv_metadata_get(&missing).await,
            ErrorKind::NotFound,
            "meta",
        );
        assert!(
            e3.contains("no secret at secret/it/engines/basic/missing"),
            "{e3}"
        );

        // Input refused before any request.
        let e4 = expect_err(
            v.kv_put(&path, &KvData::new(), None).await,
            ErrorKind::Invalid,
            "empty",
        );
        let e5 = expect_err(
            v.kv_put(&path, &data(&[("", &pw1)]), None).await,
            ErrorKind::Invalid,
            "empty field",
        );

        // Values other tools wrote as JSON numbers/objects come back as
        // compact JSON text, as `vault kv get -format=json` shows them.
        let typed = v
            .kv_get(&kp("secret/it/engines/basic/typed"), None)
            .await
            .unwrap();
        let t = plain(&typed.data);
        assert_eq!(t["n"], "5");
        assert_eq!(t["o"], r#"{"z":[1,"x"]}"#);
        assert_eq!(t["b"], "true");
        assert_eq!(t["s"], "str");

        let dbg = format!("{latest:?} {first:?} {meta:?}");
        assert!(
            dbg.contains("password"),
            "field names are not secret: {dbg}"
        );
        assert_clean(&[dbg, e1, e2, e3, e4, e5], &[&pw1, &pw2]);
    });
}

fn kv_cas_conflict_and_patch(env: &Env) {
    let (v, _) = admin(env);
    let a = canary::plant("kv-cas-a");
    let b = canary::plant("kv-cas-b");
    let path = kp("secret/it/engines/cas/s");
    env.rt.block_on(async {
        assert_eq!(
            v.kv_put(&path, &data(&[("a", &a)]), Some(0)).await.unwrap(),
            1
        );
        // cas=0: only if absent.
        let e1 = expect_err(
            v.kv_put(&path, &data(&[("a", &b)]), Some(0)).await,
            ErrorKind::Conflict,
            "cas 0 on existing",
        );
        assert!(e1.contains("check-and-set"), "{e1}");
        let e2 = expect_err(
            v.kv_put(&path, &data(&[("a", &b)]), Some(7)).await,
            ErrorKind::Conflict,
            "cas mismatch",
        );
        assert_eq!(
            v.kv_put(&path, &data(&[("a", &a)]), Some(1)).await.unwrap(),
            2
        );

        // Patch merges into the latest version.
        assert_eq!(v.kv_patch(&path, &data(&[("b", &b)])).await.unwrap(), 3);
        let s = plain(&v.kv_get(&path, None).await.unwrap().data);
        assert_eq!((s["a"].as_str(), s["b"].as_str()), (a.as_str(), b.as_str()));

        let missing = kp("secret/it/engines/cas/missing");
        let e3 = expect_err(
            v.kv_patch(&missing, &data(&[("b", &b)])).await,
            ErrorKind::NotFound,
            "patch missing",
        );
        assert!(
            e3.contains("no secret at secret/it/engines/cas/missing"),
            "{e3}"
        );

        // Patch onto a deleted latest version: NotFound saying so.
        v.kv_delete(&path, None).await.unwrap();
        let e4 = expect_err(
            v.kv_patch(&path, &data(&[("b", &a)])).await,
            ErrorKind::NotFound,
            "patch deleted",
        );
        assert!(e4.contains("version 3 is deleted"), "{e4}");
        assert_clean(&[e1, e2, e3, e4], &[&a, &b]);
    });
}

fn kv_list(env: &Env) {
    let (v, _) = admin(env);
    let x = canary::plant("kv-list");
    env.rt.block_on(async {
        for p in ["a", "b", "sub/c"] {
            let path = kp(&format!("secret/it/engines/list/{p}"));
            v.kv_put(&path, &data(&[("x", &x)]), None).await.unwrap();
        }
        for dir in ["secret/it/engines/list/", "secret/it/engines/list"] {
            let keys = v.kv_list(&kp(dir)).await.unwrap();
            assert_eq!(keys, vec!["a", "b", "sub/"], "{dir}");
        }
        let root = v.kv_list(&kp("secret/")).await.unwrap();
        assert!(root.contains(&"it/".to_string()), "{root:?}");
        let e = expect_err(
            v.kv_list(&kp("secret/it/engines/list/nothing/")).await,
            ErrorKind::NotFound,
            "list missing",
        );
        assert!(
            e.contains("nothing to list at secret/it/engines/list/nothing/"),
            "{e}"
        );
        // A directory is not a secret.
        expect_err(
            v.kv_get(&kp("secret/it/engines/list/"), None).await,
            ErrorKind::Invalid,
            "get on a directory",
        );
    });
}

fn kv_lifecycle(env: &Env) {
    let (v, _) = admin(env);
    let vals: Vec<String> = (1..=3)
        .map(|i| canary::plant(&format!("kv-life-{i}")))
        .collect();
    let path = kp("secret/it/engines/life/s");
    env.rt.block_on(async {
        for x in &vals {
            v.kv_put(&path, &data(&[("x", x)]), None).await.unwrap();
        }
        // delete (latest) → the read says it is deleted; older ones remain.
        v.kv_delete(&path, None).await.unwrap();
        let e1 = expect_err(v.kv_get(&path, None).await, ErrorKind::NotFound, "deleted");
        assert!(
            e1.contains("secret/it/engines/life/s version 3 is deleted"),
            "{e1}"
        );
        assert_eq!(
            plain(&v.kv_get(&path, Some(2)).await.unwrap().data)["x"],
            vals[1]
        );
        let meta = v.kv_metadata_get(&path).await.unwrap();
        assert!(meta.versions[&3].is_deleted());
        assert!(meta.versions[&3].deletion_time.is_some());

        v.kv_undelete(&path, &[3]).await.unwrap();
        assert_eq!(
            plain(&v.kv_get(&path, None).await.unwrap().data)["x"],
            vals[2]
        );

        v.kv_delete(&path, Some(&[1, 2])).await.unwrap();
        let e2 = expect_err(
            v.kv_get(&path, Some(1)).await,
            ErrorKind::NotFound,
            "v1 deleted",
        );
        assert!(e2.contains("version 1 is deleted"), "{e2}");

        v.kv_destroy(&path, &[1]).await.unwrap();
        let e3 = expect_err(
            v.kv_get(&path, Some(1)).await,
            ErrorKind::NotFound,
            "destroyed",
        );
        assert!(e3.contains("version 1 is destroyed"), "{e3}");
        let meta = v.kv_metadata_get(&path).await.unwrap();
        assert!(meta.versions[&1].destroyed);
        assert!(meta.versions[&2].is_deleted() && !meta.versions[&2].destroyed);
        assert!(!meta.versions[&3].is_deleted());

        // Malformed version lists never reach Vault.
        for r in [
            v.kv_undelete(&path, &[]).await,
            v.kv_destroy(&path, &[0]).await,
            v.kv_delete(&path, Some(&[])).await,
        ] {
            expect_err(r, ErrorKind::Invalid, "bad versions");
        }

        v.kv_metadata_delete(&path).await.unwrap();
        expect_err(
            v.kv_metadata_get(&path).await,
            ErrorKind::NotFound,
            "meta gone",
        );
        let e4 = expect_err(v.kv_get(&path, None).await, ErrorKind::NotFound, "all gone");
        let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
        assert_clean(&[e1, e2, e3, e4, format!("{meta:?}")], &refs);
    });
}

fn kv_rollback(env: &Env) {
    let (v, _) = admin(env);
    let a1 = canary::plant("kv-rollback-1");
    let a2 = canary::plant("kv-rollback-2");
    let path = kp("secret/it/engines/rollback/s");
    env.rt.block_on(async {
        v.kv_put(&path, &data(&[("a", &a1), ("only_v1", "yes")]), None)
            .await
            .unwrap();
        v.kv_put(&path, &data(&[("a", &a2)]), None).await.unwrap();
        assert_eq!(v.kv_rollback(&path, 1).await.unwrap(), 3);
        let now = v.kv_get(&path, None).await.unwrap();
        assert_eq!(now.version, 3);
        assert_eq!(
            plain(&now.data),
            BTreeMap::from([("a".into(), a1.clone()), ("only_v1".into(), "yes".into())])
        );

        v.kv_delete(&path, Some(&[2])).await.unwrap();
        let e1 = expect_err(
            v.kv_rollback(&path, 2).await,
            ErrorKind::NotFound,
            "deleted",
        );
        assert!(
            e1.contains("cannot roll back") && e1.contains("version 2 is deleted"),
            "{e1}"
        );
        v.kv_destroy(&path, &[2]).await.unwrap();
        let e2 = expect_err(
            v.kv_rollback(&path, 2).await,
            ErrorKind::NotFound,
            "destroyed",
        );
        assert!(e2.contains("version 2 is destroyed"), "{e2}");
        let e3 = expect_err(v.kv_rollback(&path, 9).await, ErrorKind::Invalid, "future");
        assert!(e3.contains("current version is 3"), "{e3}");
        expect_err(v.kv_rollback(&path, 0).await, ErrorKind::Invalid, "zero");
        expect_err(
            v.kv_rollback(&kp("secret/it/engines/rollback/missing"), 1)
                .await,
            ErrorKind::NotFound,
            "missing",
        );
        assert_eq!(v.kv_metadata_get(&path).await.unwrap().current_version, 3);
        assert_clean(&[e1, e2, e3], &[&a1, &a2]);
    });
}

fn kv_errors_map_to_kinds(env: &Env) {
    let bob = agent(env, "bob");
    let carol = agent(env, "carol");
    let x = canary::plant("kv-errors");
    let bobs = kp("secret/vaultgram/mtproto/bob/u-errors");
    let carols = kp("secret/vaultgram/mtproto/carol/u-errors");
    env.rt.block_on(async {
        // Each agent works on its own users' secrets...
        bob.kv_put(&bobs, &data(&[("secret", &x)]), None)
            .await
            .unwrap();
        carol
            .kv_put(&carols, &data(&[("secret", &x)]), None)
            .await
            .unwrap();
        assert_eq!(
            plain(&bob.kv_get(&bobs, None).await.unwrap().data)["secret"],
            x
        );
        // ...and is denied the other agent's.
        let mut texts = vec![
            expect_err(bob.kv_get(&carols, None).await, ErrorKind::Denied, "get"),
            expect_err(
                bob.kv_put(&carols, &data(&[("secret", &x)]), None).await,
                ErrorKind::Denied,
                "put",
            ),
            expect_err(
                bob.kv_patch(&carols, &data(&[("secret", &x)])).await,
                ErrorKind::Denied,
                "patch",
            ),
            expect_err(
                bob.kv_list(&kp("secret/vaultgram/mtproto/carol/")).await,
                ErrorKind::Denied,
                "list",
            ),
            expect_err(
                bob.kv_delete(&carols, None).await,
                ErrorKind::Denied,
                "delete",
            ),
            expect_err(
                bob.kv_metadata_get(&carols).await,
                ErrorKind::Denied,
                "meta",
            ),
            expect_err(
                bob.kv_get(&kp("secret/telegram"), None).await,
                ErrorKind::Denied,
                "app keys",
            ),
        ];
        assert!(texts[0].contains("permission denied"), "{}", texts[0]);

        // Invalid paths never leave the process.
        for bad in ["secret/../sys/x", "secret//x", "secret/x\u{7}", " secret/x"] {
            let e = VaultError::from(KvPath::parse(bad).unwrap_err());
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad:?}");
            assert!(e.to_string().starts_with("invalid KV path: "), "{e}");
            texts.push(e.to_string());
        }
        texts.push(expect_err(
            bob.kv_put(
                &kp("secret/vaultgram/mtproto/bob/"),
                &data(&[("k", &x)]),
                None,
            )
            .await,
            ErrorKind::Invalid,
            "put on a directory",
        ));

        // Vault unreachable → Unavailable.
        let mut cfg = env.config().vault;
        cfg.addr = format!("https://127.0.0.1:{}", free_port());
        let down = Vault::with_token(&cfg, &SecretString::from("s.nothing")).unwrap();
        texts.push(expect_err(
            down.kv_put(&bobs, &data(&[("secret", &x)]), None).await,
            ErrorKind::Unavailable,
            "unreachable",
        ));
        assert_clean(&texts, &[&x]);
    });
}

fn kv_interop_with_bao_cli(env: &Env) {
    let c = env.cluster();
    let (v, token) = admin(env);
    let pw = canary::plant("kv-interop-cli");
    let mine = canary::plant("kv-interop-lib");
    env.rt.block_on(async {
        // Written by the operator's CLI, read by us.
        let out = c.cli_stdin(
            &token,
            &[
                "kv",
                "put",
                "secret/it/engines/interop/from-cli",
                "a=1",
                "b=two",
                "pw=-",
            ],
            &pw,
        );
        stdout(&out, "bao kv put");
        let s = v
            .kv_get(&kp("secret/it/engines/interop/from-cli"), None)
            .await
            .unwrap();
        assert_eq!(
            plain(&s.data),
            BTreeMap::from([
                ("a".into(), "1".into()),
                ("b".into(), "two".into()),
                ("pw".into(), pw.clone())
            ])
        );

        // Written by us, read by the CLI.
        let ours = kp("secret/it/engines/interop/from-lib");
        let version = v
            .kv_put(&ours, &data(&[("x", &mine), ("y", "why")]), None)
            .await
            .unwrap();
        let out = c.cli(
            &token,
            &[
                "kv",
                "get",
                "-format=json",
                "secret/it/engines/interop/from-lib",
            ],
        );
        let j: Value = serde_json::from_str(&stdout(&out, "bao kv get")).unwrap();
        assert_eq!(j["data"]["data"], json!({"x": mine, "y": "why"}));
        assert_eq!(j["data"]["metadata"]["version"], json!(version));
        let out = c.cli(
            &token,
            &[
                "kv",
                "get",
                "-field=y",
                "secret/it/engines/interop/from-lib",
            ],
        );
        assert_eq!(stdout(&out, "bao kv get -field").trim(), "why");

        // Patches cross over too.
        let out = c.cli(
            &token,
            &["kv", "patch", "secret/it/engines/interop/from-lib", "z=cli"],
        );
        stdout(&out, "bao kv patch");
        let s = plain(&v.kv_get(&ours, None).await.unwrap().data);
        assert_eq!((s["x"].as_str(), s["z"].as_str()), (mine.as_str(), "cli"));
        let from_cli = kp("secret/it/engines/interop/from-cli");
        v.kv_patch(&from_cli, &data(&[("b", "patched")]))
            .await
            .unwrap();
        let out = c.cli(
            &token,
            &[
                "kv",
                "get",
                "-format=json",
                "secret/it/engines/interop/from-cli",
            ],
        );
        let j: Value = serde_json::from_str(&stdout(&out, "bao kv get")).unwrap();
        assert_eq!(
            j["data"]["data"],
            json!({"a": "1", "b": "patched", "pw": pw})
        );

        // Version history agrees.
        let out = c.cli(
            &token,
            &[
                "kv",
                "metadata",
                "get",
                "-format=json",
                "secret/it/engines/interop/from-cli",
            ],
        );
        let j: Value = serde_json::from_str(&stdout(&out, "bao kv metadata get")).unwrap();
        let meta = v.kv_metadata_get(&from_cli).await.unwrap();
        assert_eq!(j["data"]["current_version"], json!(meta.current_version));
        assert_eq!(meta.current_version, 2);
    });
}

// ---------------------------------------------------------------------------
// Transit
// ---------------------------------------------------------------------------

fn transit_round_trip(env: &Env) {
    let c = env.cluster();
    let (v, token) = admin(env);
    let text = canary::plant("transit-rt");
    let secret = SecretString::from(text.clone());
    let key = "it-engines-rt";
    env.rt.block_on(async {
        // Encrypting with an unknown key creates it (admin has "create").
        let ct1 = v.transit_encrypt("transit", key, &secret).await.unwrap();
        assert!(ct1.starts_with("vault:v1:"), "{ct1}");
        assert_eq!(
            v.transit_decrypt("transit", key, &ct1)
                .await
                .unwrap()
                .expose_secret(),
            text
        );

        // The operator's CLI decrypts what we encrypted.
        let out = c.cli(
            &token,
            &[
                "write",
                "-field=plaintext",
                &format!("transit/decrypt/{key}"),
                &format!("ciphertext={ct1}"),
            ],
        );
        assert_eq!(
            stdout(&out, "bao write transit/decrypt").trim(),
            b64(text.as_bytes())
        );

        // Binary plaintext.
        let bin = [0u8, 255, 1, 254, 10, 13, 0];
        let ctb = v
            .transit_encrypt_bytes("transit/", key, &bin)
            .await
            .unwrap();
        assert_eq!(
            v.transit_decrypt_bytes("transit", key, &ctb)
                .await
                .unwrap()
                .expose_secret(),
            &bin
        );
        expect_err(
            v.transit_decrypt("transit", key, &ctb).await,
            ErrorKind::Invalid,
            "binary as text",
        );

        assert_eq!(v.transit_rotate("transit", key).await.unwrap(), 2);
        let info = v.transit_key_info("transit", key).await.unwrap();
        assert_eq!((info.name.as_str(), info.latest_version), (key, 2));
        assert_eq!(info.versions, vec![1, 2]);
        assert_eq!(info.key_type, "aes256-gcm96");
        assert!(info.supports_encryption && info.supports_decryption);
        let ct2 = v.transit_rewrap("transit", key, &ct1).await.unwrap();
        assert!(ct2.starts_with("vault:v2:"), "{ct2}");
        assert_eq!(
            v.transit_decrypt("transit", key, &ct2)
                .await
                .unwrap()
                .expose_secret(),
            text
        );

        let keys = v.transit_keys("transit").await.unwrap();
        assert!(
            keys.contains(&key.to_string()) && keys.contains(&"vaultgram".to_string()),
            "{keys:?}"
        );

        let dk = v.transit_datakey("transit", key).await.unwrap();
        assert!(dk.ciphertext.starts_with("vault:v2:"), "{}", dk.ciphertext);
        assert_eq!(dk.key_version, 2);
        let raw = v
            .transit_decrypt_bytes("transit", key, &dk.ciphertext)
            .await
            .unwrap();
        assert_eq!(raw.expose_secret().len(), 32);
        assert_eq!(b64(raw.expose_secret()), dk.plaintext.expose_secret());
        canary::register(dk.plaintext.expose_secret());
        let dbg = format!("{dk:?}");
        assert!(!dbg.contains(dk.plaintext.expose_secret()), "{dbg}");
    });
}

fn transit_min_decryption_version(env: &Env) {
    let c = env.cluster();
    let (v, _) = admin(env);
    let text = SecretString::from(canary::plant("transit-mdv"));
    let key = "it-engines-mdv";
    let (old, new) = env.rt.block_on(async {
        let old = v.transit_encrypt("transit", key, &text).await.unwrap();
        assert_eq!(v.transit_rotate("transit", key).await.unwrap(), 2);
        let new = v.transit_encrypt("transit", key, &text).await.unwrap();
        assert!(new.starts_with("vault:v2:"));
        (old, new)
    });
    // The operator raises min_decryption_version (root: admins may not).
    let (code, body) = c
        .vault_api(
            Method::POST,
            &format!("transit/keys/{key}/config"),
            Some(&c.root_token),
            Some(json!({"min_decryption_version": 2})),
        )
        .unwrap();
    assert!(code == 200 || code == 204, "{code} {body}");
    env.rt.block_on(async {
        assert_eq!(
            v.transit_key_info("transit", key)
                .await
                .unwrap()
                .min_decryption_version,
            2
        );
        let e1 = expect_err(
            v.transit_decrypt("transit", key, &old).await,
            ErrorKind::Invalid,
            "decrypt below min_decryption_version",
        );
        assert!(e1.contains("too old"), "{e1}");
        let e2 = expect_err(
            v.transit_rewrap("transit", key, &old).await,
            ErrorKind::Invalid,
            "rewrap below min_decryption_version",
        );
        let ok = v.transit_decrypt("transit", key, &new).await.unwrap();
        assert_eq!(ok.expose_secret(), text.expose_secret());
        assert_clean(&[e1, e2], &[text.expose_secret()]);
    });
}

fn transit_errors_map_to_kinds(env: &Env) {
    let (v, _) = admin(env);
    let bob = agent(env, "bob");
    let text = SecretString::from(canary::plant("transit-errors"));
    env.rt.block_on(async {
        let ct = v
            .transit_encrypt("transit", "it-engines-err", &text)
            .await
            .unwrap();
        let mut texts = vec![
            // Unknown key (OpenBao says 400 "key not found").
            expect_err(
                v.transit_decrypt("transit", "it-engines-none", &ct).await,
                ErrorKind::NotFound,
                "decrypt",
            ),
            expect_err(
                v.transit_rewrap("transit", "it-engines-none", &ct).await,
                ErrorKind::NotFound,
                "rewrap",
            ),
            expect_err(
                v.transit_rotate("transit", "it-engines-none").await,
                ErrorKind::NotFound,
                "rotate",
            ),
            expect_err(
                v.transit_key_info("transit", "it-engines-none").await,
                ErrorKind::NotFound,
                "info",
            ),
            expect_err(
                v.transit_datakey("transit", "it-engines-none").await,
                ErrorKind::NotFound,
                "datakey",
            ),
            // Malformed ciphertexts: the server's verdict, and ours.
            expect_err(
                v.transit_decrypt("transit", "it-engines-err", "nonsense")
                    .await,
                ErrorKind::Invalid,
                "no prefix",
            ),
            expect_err(
                v.transit_decrypt("transit", "it-engines-err", "vault:v1:%%%")
                    .await,
                ErrorKind::Invalid,
                "bad b64",
            ),
            expect_err(
                v.transit_decrypt("transit", "it-engines-err", "vault:v1: x")
                    .await,
                ErrorKind::Invalid,
                "space",
            ),
            // Bad names never reach Vault.
            expect_err(
                v.transit_encrypt("transit", "../sys", &text).await,
                ErrorKind::Invalid,
                "name",
            ),
            expect_err(
                v.transit_keys("transit/../sys").await,
                ErrorKind::Invalid,
                "mount",
            ),
            // Policy: admins never decrypt with the session key; agents have no transit.
            expect_err(
                v.transit_decrypt("transit", "vaultgram", &ct).await,
                ErrorKind::Denied,
                "session key",
            ),
            expect_err(
                v.transit_datakey("transit", "vaultgram").await,
                ErrorKind::Denied,
                "session datakey",
            ),
            expect_err(
                bob.transit_encrypt("transit", "it-engines-err", &text)
                    .await,
                ErrorKind::Denied,
                "agent",
            ),
            expect_err(
                bob.transit_keys("transit").await,
                ErrorKind::Denied,
                "agent list",
            ),
        ];
        texts.push(format!(
            "{:?}",
            v.transit_key_info("transit", "it-engines-err")
                .await
                .unwrap()
        ));
        assert_clean(&texts, &[text.expose_secret()]);
    });
}

// ---------------------------------------------------------------------------
// Response wrapping
// ---------------------------------------------------------------------------

fn wrap_kv_get_single_use(env: &Env) {
    let c = env.cluster();
    let (v, _operator_token) = admin(env);
    let pw = canary::plant("wrap-kv");
    let path = kp("secret/it/engines/wrap-kv/s");
    let ttl = WrapTtl::parse("5m").unwrap();
    let bob = agent(env, "bob");
    env.rt.block_on(async {
        v.kv_put(&path, &data(&[("pw", &pw)]), None).await.unwrap();
        let w = v.kv_get_wrapped(&path, None, ttl).await.unwrap();
        canary::register(w.token.expose_secret());
        assert_eq!(w.creation_path, "secret/data/it/engines/wrap-kv/s");
        assert_eq!(w.ttl_secs, 300);
        assert!(!w.accessor.is_empty());
        let dbg = format!("{w:?}");
        assert!(
            !dbg.contains(w.token.expose_secret()) && !dbg.contains(&pw),
            "{dbg}"
        );

        // Lookup does not use it up.
        let info = v.wrapping_lookup(&w.token).await.unwrap();
        assert_eq!(info.creation_path, w.creation_path);
        assert_eq!(info.creation_ttl, 300);

        // `bao unwrap TOKEN` gives the value, once.
        // The wrapping token as the CLI's token, never in argv.
        let out = c.cli(&w.token, &["unwrap", "-format=json"]);
        let j: Value = serde_json::from_str(&stdout(&out, "bao unwrap")).unwrap();
        assert_eq!(j["data"]["data"]["pw"], json!(pw));
        let e1 = expect_err(
            v.unwrap(&w.token).await,
            ErrorKind::Invalid,
            "second unwrap",
        );
        assert!(e1.contains("already unwrapped"), "{e1}");
        let e2 = expect_err(
            v.wrapping_lookup(&w.token).await,
            ErrorKind::Invalid,
            "lookup used",
        );

        // Our own unwrap gives Vault's answer as wrapped: {data, metadata}.
        let w = v.kv_get_wrapped(&path, Some(1), ttl).await.unwrap();
        canary::register(w.token.expose_secret());
        let m = v.unwrap(&w.token).await.unwrap();
        let inner: Value = serde_json::from_str(m["data"].expose_secret()).unwrap();
        assert_eq!(inner, json!({"pw": pw}));
        let out = c.cli(&w.token, &["unwrap"]);
        assert!(!out.status.success(), "bao unwrapped a used token");

        // Someone else's secret: denied, and no token minted.
        let e3 = expect_err(
            bob.kv_get_wrapped(&path, None, ttl).await,
            ErrorKind::Denied,
            "wrapped read denied",
        );
        let e4 = VaultError::from(WrapTtl::parse("25h").unwrap_err()).to_string();
        assert_clean(&[e1, e2, e3, e4, format!("{m:?}")], &[&pw]);
    });
}

fn wrap_kv_get_refuses_deleted(env: &Env) {
    let (v, _) = admin(env);
    let x = canary::plant("wrap-deleted");
    let path = kp("secret/it/engines/wrap-deleted/s");
    let ttl = WrapTtl::from_secs(60).unwrap();
    env.rt.block_on(async {
        v.kv_put(&path, &data(&[("x", &x)]), None).await.unwrap();
        v.kv_put(&path, &data(&[("x", &x)]), None).await.unwrap();
        v.kv_delete(&path, None).await.unwrap();
        // OpenBao would wrap the 404 of a deleted version; we refuse first.
        let e1 = expect_err(
            v.kv_get_wrapped(&path, None, ttl).await,
            ErrorKind::NotFound,
            "deleted",
        );
        assert!(e1.contains("version 2 is deleted"), "{e1}");
        v.kv_destroy(&path, &[1]).await.unwrap();
        let e2 = expect_err(
            v.kv_get_wrapped(&path, Some(1), ttl).await,
            ErrorKind::NotFound,
            "destroyed",
        );
        assert!(e2.contains("version 1 is destroyed"), "{e2}");
        let e3 = expect_err(
            v.kv_get_wrapped(&path, Some(7), ttl).await,
            ErrorKind::NotFound,
            "no such version",
        );
        let e4 = expect_err(
            v.kv_get_wrapped(&kp("secret/it/engines/wrap-deleted/none"), None, ttl)
                .await,
            ErrorKind::NotFound,
            "missing",
        );
        assert!(
            e4.contains("no secret at secret/it/engines/wrap-deleted/none"),
            "{e4}"
        );
        v.kv_undelete(&path, &[2]).await.unwrap();
        let w = v.kv_get_wrapped(&path, None, ttl).await.unwrap();
        canary::register(w.token.expose_secret());
        let m = v.unwrap(&w.token).await.unwrap();
        let inner: Value = serde_json::from_str(m["data"].expose_secret()).unwrap();
        assert_eq!(inner, json!({"x": x}));
        assert_clean(&[e1, e2, e3, e4], &[&x]);
    });
}

fn wrap_data_unwrap_self(env: &Env) {
    let c = env.cluster();
    let (v, _operator_token) = admin(env);
    let agent_token = canary::plant("wrap-data");
    let payload = data(&[("agent_token", &agent_token), ("agent", "bob")]);
    let ttl = WrapTtl::parse("1m").unwrap();
    env.rt.block_on(async {
        // Unwrapped by a client whose own token IS the wrapping token.
        let w = v.wrap_data(&payload, ttl).await.unwrap();
        canary::register(w.token.expose_secret());
        assert_eq!(
            (w.creation_path.as_str(), w.ttl_secs),
            ("sys/wrapping/wrap", 60)
        );
        let info = v.wrapping_lookup(&w.token).await.unwrap();
        assert_eq!(info.creation_path, "sys/wrapping/wrap");
        let holder = vault_as(env, &w.token);
        assert_eq!(plain(&holder.unwrap_self().await.unwrap()), plain(&payload));
        let e1 = expect_err(
            holder.unwrap_self().await,
            ErrorKind::Invalid,
            "second unwrap_self",
        );
        assert!(e1.contains("already unwrapped"), "{e1}");
        let e2 = expect_err(
            v.unwrap(&w.token).await,
            ErrorKind::Invalid,
            "unwrap after self",
        );

        // Unwrapped by token argument; then the CLI finds it used.
        let w = v.wrap_data(&payload, ttl).await.unwrap();
        canary::register(w.token.expose_secret());
        assert_eq!(plain(&v.unwrap(&w.token).await.unwrap()), plain(&payload));
        let out = c.cli(&w.token, &["unwrap"]);
        assert!(!out.status.success(), "bao unwrapped a used token");

        // Wrapped by us, unwrapped by the operator's CLI.
        let w = v.wrap_data(&payload, ttl).await.unwrap();
        canary::register(w.token.expose_secret());
        let out = c.cli(&w.token, &["unwrap", "-field=agent_token"]);
        assert_eq!(stdout(&out, "bao unwrap -field").trim(), agent_token);

        // Malformed tokens and empty payloads never travel.
        let e3 = expect_err(
            v.unwrap(&SecretString::from("a b")).await,
            ErrorKind::Invalid,
            "bad token",
        );
        expect_err(
            v.wrap_data(&KvData::new(), ttl).await,
            ErrorKind::Invalid,
            "empty",
        );
        assert_clean(&[e1, e2, e3], &[&agent_token]);
    });
}

fn wrap_transit(env: &Env) {
    let (v, _) = admin(env);
    let text = canary::plant("wrap-transit");
    let key = "it-engines-wrap";
    let ttl = WrapTtl::parse("2m").unwrap();
    env.rt.block_on(async {
        let ct = v
            .transit_encrypt("transit", key, &SecretString::from(text.clone()))
            .await
            .unwrap();
        let w = v
            .transit_decrypt_wrapped("transit", key, &ct, ttl)
            .await
            .unwrap();
        canary::register(w.token.expose_secret());
        assert_eq!(w.creation_path, format!("transit/decrypt/{key}"));
        assert_eq!(w.ttl_secs, 120);
        let m = v.unwrap(&w.token).await.unwrap();
        assert_eq!(m["plaintext"].expose_secret(), b64(text.as_bytes()));

        let w = v
            .transit_datakey_wrapped("transit", key, ttl)
            .await
            .unwrap();
        canary::register(w.token.expose_secret());
        let m = v.unwrap(&w.token).await.unwrap();
        canary::register(m["plaintext"].expose_secret());
        assert!(m["ciphertext"].expose_secret().starts_with("vault:v1:"));
        let raw = v
            .transit_decrypt_bytes("transit", key, m["ciphertext"].expose_secret())
            .await
            .unwrap();
        assert_eq!(b64(raw.expose_secret()), m["plaintext"].expose_secret());

        let e1 = expect_err(
            v.transit_decrypt_wrapped("transit", "it-engines-none", &ct, ttl)
                .await,
            ErrorKind::NotFound,
            "wrapped decrypt, unknown key",
        );
        let e2 = expect_err(
            v.transit_decrypt_wrapped("transit", "vaultgram", &ct, ttl)
                .await,
            ErrorKind::Denied,
            "wrapped decrypt, session key",
        );
        assert_clean(&[e1, e2, format!("{m:?}")], &[&text]);
    });
}

// ---------------------------------------------------------------------------
// TOTP
// ---------------------------------------------------------------------------

fn totp_validates_codes(env: &Env) {
    let c = env.cluster();
    let broker = broker(env);
    let (admin, _) = admin(env);
    let mut seed = [0u8; 20];
    getrandom::fill(&mut seed).unwrap();
    for (name, digits) in [("it-engines-alice", 6u32), ("it-engines-dave8", 8)] {
        let (code, body) = c
            .vault_api(
                Method::POST,
                &format!("totp/keys/{name}"),
                Some(&c.root_token),
                Some(json!({
                    "generate": false, "key": base32(&seed), "issuer": "vaultgram-it",
                    "account_name": name, "digits": digits, "period": 30, "algorithm": "SHA1"
                })),
            )
            .unwrap();
        assert!(code == 200 || code == 204, "create TOTP key: {code} {body}");
    }
    env.rt.block_on(async {
        let now = totp(&seed, step_now(), 6);
        assert!(broker
            .totp_validate("totp", "it-engines-alice", &now)
            .await
            .unwrap());
        // Vault refuses a replay within the code's period.
        let e1 = expect_err(
            broker.totp_validate("totp", "it-engines-alice", &now).await,
            ErrorKind::Denied,
            "replayed code",
        );
        assert!(e1.contains("already used"), "{e1}");
        // A code of no nearby step is simply not valid.
        let s = step_now();
        let near: Vec<String> = (s - 2..=s + 2).map(|t| totp(&seed, t, 6)).collect();
        let wrong = (0..1_000_000u32)
            .map(|n| format!("{n:06}"))
            .find(|w| !near.contains(w))
            .unwrap();
        assert!(!broker
            .totp_validate("totp", "it-engines-alice", &wrong)
            .await
            .unwrap());
        // 8-digit keys take 8-digit codes.
        let now8 = totp(&seed, step_now(), 8);
        assert!(broker
            .totp_validate("totp", "it-engines-dave8", &now8)
            .await
            .unwrap());

        let e2 = expect_err(
            broker
                .totp_validate("totp", "it-engines-nobody", "123456")
                .await,
            ErrorKind::NotFound,
            "unknown key",
        );
        assert!(e2.contains("unknown key"), "{e2}");
        for bad in ["12345", "abcdef", "123456789", ""] {
            let e = expect_err(
                broker.totp_validate("totp", "it-engines-alice", bad).await,
                ErrorKind::Invalid,
                "format",
            );
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        expect_err(
            broker.totp_validate("totp", "../sys", "123456").await,
            ErrorKind::Invalid,
            "key name",
        );
        // Admin child tokens cannot validate (or read) codes: only the broker.
        expect_err(
            admin
                .totp_validate("totp", "it-engines-alice", "123456")
                .await,
            ErrorKind::Denied,
            "admin token",
        );
    });
}
