//! Parsing from `&str` (teloxide-style): the table, Vault-CLI flags, quoting,
//! and errors that never quote a value.

use super::*;
use crate::config::Role;

fn parse(s: &str) -> Command {
    Command::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn kv_get_with_vault_flags() {
    match parse("/kv get -version=3 -field=password secret/panels/de1") {
        Command::Kv(KvCommand::Get {
            version,
            field,
            path,
            wrap,
        }) => {
            assert_eq!(version, Some(3));
            assert_eq!(field.as_deref(), Some("password"));
            assert_eq!(path.to_string(), "secret/panels/de1");
            assert!(wrap.wrap_ttl.is_none());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn names_match_the_approval_table() {
    for (line, name) in [
        ("/kv destroy -versions=1,2 secret/x", "kv destroy"),
        ("/kv metadata delete secret/x", "kv metadata delete"),
        ("/transit rotate k", "transit rotate"),
        ("/agent revoke bob", "agent revoke"),
        ("/mtproto revoke 42", "mtproto revoke"),
        ("/panel show --reveal p1", "panel show --reveal"),
        ("/panel show p1", "panel show"),
        ("/get_keys", "get_keys"),
    ] {
        assert_eq!(parse(line).name(), name, "{line}");
    }
    for n in crate::config::APPROVABLE_COMMANDS {
        assert!([
            "kv destroy",
            "kv metadata delete",
            "transit rotate",
            "agent revoke",
            "mtproto revoke",
            "panel show --reveal"
        ]
        .contains(&n));
    }
}

#[test]
fn put_pairs_are_redacted_in_debug() {
    let c = parse("/kv put secret/x password=hunter2 user=\"a b\"");
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("hunter2") && dbg.contains("password=<redacted>"),
        "{dbg}"
    );
    assert!(c.input_is_secret());
}

#[test]
fn errors_do_not_quote_values() {
    for line in [
        "/kv put secret/x hunter2",
        "/transit encrypt",
        "/panel add p1 marzban https://x u hunter2 extra-hunter2",
    ] {
        let e = Command::parse(line).unwrap_err();
        assert!(!e.0.contains("hunter2"), "{line}: {}", e.0);
    }
    assert!(Command::parse("/nope").unwrap_err().0.contains("/help"));
    assert!(Command::parse("").is_err());
    assert!(Command::parse("/kv get secret/../x")
        .unwrap_err()
        .0
        .contains("'..'"));
}

#[test]
fn help_is_generated_and_filtered_by_role() {
    let admin = help(Role::Admin);
    let agent = help(Role::Agent);
    assert!(admin.contains("/kv get [-version=N]"), "{admin}");
    assert!(admin.contains("/approve ID CODE"));
    assert!(!agent.contains("/kv "), "{agent}");
    assert!(agent.contains("/mtproto issue"));
    assert!(agent.contains("/panel show"));
    assert!(!agent.contains("/panel add"));
    assert!(!agent.contains("/agent add"));
    // Every line has a description from the doc comments.
    for l in admin.lines() {
        assert!(l.contains(" — ") && !l.ends_with(" — "), "{l}");
    }
}

#[test]
fn role_rules() {
    assert!(!parse("/kv get secret/x").allowed_for(Role::Agent));
    assert!(parse("/mtproto issue 7").allowed_for(Role::Agent));
    assert!(parse("/panel list").allowed_for(Role::Agent));
    assert!(!parse("/panel add p marzban https://x u p").allowed_for(Role::Agent));
    assert!(!parse("/approve abc 123456").allowed_for(Role::Agent));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary input never panics.
        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = Command::parse(&s);
        }

        /// Whatever the input, an accepted KV path has no `..`, no empty
        /// segment and no control character.
        #[test]
        fn accepted_kv_paths_are_clean(p in "[a-z./\\x00-\\x1f\\x7f ]{0,40}", sub in prop::sample::select(vec!["get", "list", "delete", "metadata get"])) {
            if let Ok(Command::Kv(c)) = Command::parse(&format!("/kv {sub} \"{p}\"")) {
                let s = c.path().to_string();
                prop_assert!(!s.split('/').any(|seg| seg == ".." || seg == "."), "{s:?}");
                prop_assert!(!s.trim_end_matches('/').split('/').any(|seg| seg.is_empty()), "{s:?}");
                prop_assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
            }
        }
    }
}
