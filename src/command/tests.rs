//! Parsing from `&str` (teloxide-style): the table, Vault-CLI flags, quoting,
//! and errors that never quote a value.

use super::*;
use crate::command::{agent, mtproto, ListArgs};
use crate::config::Effect;
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
        ("/operator resume bob", "operator resume"),
        ("/operator suspend bob lost phone", "operator suspend"),
    ] {
        assert_eq!(parse(line).name(), name, "{line}");
    }
    // Every name `approvals.required` takes is the name of a command
    // that has that effect (effect.rs classifies it so).
    for (effect, line) in [
        (Effect::DestroyVersions, "/kv destroy -versions=1 secret/x"),
        (Effect::DeleteMetadata, "/kv metadata delete secret/x"),
        (Effect::RotateKey, "/transit rotate k"),
        (Effect::RevokeAgent, "/agent revoke bob"),
        (Effect::RevokeMtproto, "/mtproto revoke 7"),
        (Effect::RevealPanelPassword, "/panel show p1 --reveal"),
        (Effect::ResumeOperator, "/operator resume bob"),
    ] {
        let cmd = parse(line);
        assert_eq!(cmd.name(), effect.name(), "{line}");
        assert_eq!(
            crate::effect::classify(&cmd, "secret").unwrap(),
            vec![effect],
            "{line}"
        );
    }
    assert_eq!(Effect::ALL.len(), 7, "a new effect needs a line above");
}

#[test]
fn step_up_classes() {
    use crate::security::Step;
    for (line, step) in [
        ("/help", Step::Free),
        ("/whoami", Step::Free),
        ("/unlock 123456", Step::Free),
        ("/lock", Step::Free),
        ("/operator suspend alice lost my phone", Step::Free),
        ("/operator resume alice", Step::Plain),
        ("/operator list", Step::Plain),
        ("/health", Step::Plain),
        ("/approve 0a1b2c3d 123456", Step::Plain),
        ("/kv list secret/", Step::Plain),
        ("/get_keys", Step::Secret),
        ("/kv get secret/x", Step::Secret),
        ("/kv put secret/x a=b", Step::Secret),
        ("/panel show --reveal p1", Step::Secret),
        ("/transit decrypt k vault:v1:x", Step::Secret),
    ] {
        assert_eq!(parse(line).step(), step, "{line}");
    }
    // The unlock code is secret input: deleted from the chat.
    assert!(parse("/unlock 123456").input_is_secret());
    assert!(!format!("{:?}", parse("/unlock 123456")).contains("123456"));
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

/// Every `/help` line starts with a usage that parses back to the command
/// it describes, with its optional parts left out and with them filled in.
#[test]
fn help_usage_lines_round_trip_through_the_parser() {
    fn fill(word: &str) -> String {
        match word {
            "MOUNT/PATH" => "secret/x".into(),
            "MOUNT/PATH/" => "secret/x/".into(),
            "k=v" => "k=v".into(),
            "…" => String::new(),
            "ID" => "ab12cd34".into(),
            "CODE" => "123456".into(),
            "ok|bad" => "ok".into(),
            "N" => "3".into(),
            "KEY" => "k1".into(),
            "TEXT" => "hello".into(),
            "vault:vN:…" => "vault:v1:abcd".into(),
            "NAME" => "p1".into(),
            "KIND" => "marzban".into(),
            "URL" => "https://panel.example".into(),
            "USER" => "7".into(),
            "PASSWORD" => "pw".into(),
            "AGENT" => "bob".into(),
            "-page=P" => "-page=2".into(),
            "PREFIX" => "ab".into(),
            w => w
                .replace("=N", "=3")
                .replace("=F", "=f")
                .replace("=DURATION", "=60s"),
        }
    }
    let lines = help(Role::Admin);
    let mut n = 0;
    for line in lines.lines() {
        let (usage, _) = line.split_once(" — ").expect("usage — about");
        // The command words: the usage's leading lower-case words.
        let words: Vec<&str> = usage
            .trim_start_matches('/')
            .split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let expected = words.join(" ");
        for with_optional in [false, true] {
            let typed: Vec<String> = usage
                .split_whitespace()
                .filter_map(
                    |w| match w.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                        Some(inner) if with_optional => Some(fill(inner)),
                        Some(_) => None,
                        None => Some(fill(w)),
                    },
                )
                .filter(|w| !w.is_empty())
                .collect();
            let typed = typed.join(" ");
            let cmd = Command::parse(&typed)
                .unwrap_or_else(|e| panic!("/help line {line:?}: {typed:?} does not parse: {e}"));
            let mut name = cmd.name();
            if name == "panel show --reveal" {
                name = "panel show".into();
            }
            assert_eq!(name, expected, "/help line {line:?} parsed as {typed:?}");
            n += 1;
        }
    }
    assert!(lines.contains("/kv metadata get MOUNT/PATH — "), "{lines}");
    assert!(
        lines.contains("/kv metadata delete MOUNT/PATH — "),
        "{lines}"
    );
    assert!(!lines.contains("<COMMAND>"), "{lines}");
    assert!(n >= 2 * 35, "only {n} usages checked");
}

/// Operator-supplied words shown to others carry no control or invisible
/// character; secret values (never shown) may.
#[test]
fn control_and_format_characters_are_refused_outside_secret_values() {
    for line in [
        "/transit rotate \"a\nb\"",
        "/transit rotate \"k\u{1b}[2K\"",
        "/kv metadata delete \"secret/x\u{85}\"",
        "/agent revoke \"a\u{2028}\"",
        "/mtproto revoke \"u\u{202e}1\"",
        "/panel show --reveal \"p\u{2066}\"",
        "/kv put secret/x \"k\u{1b}=v\"",
        "/panel add \"p\u{200b}1\" marzban https://x u pw",
    ] {
        let e = Command::parse(line).unwrap_err();
        assert!(
            e.0.contains("control or invisible character"),
            "{line:?}: {}",
            e.0
        );
    }
    for line in [
        "/kv put secret/x \"pem=-----BEGIN X-----\nAAAA\n-----END X-----\"",
        "/kv patch secret/x \"k=a\tb\"",
        "/transit encrypt k \"two\nlines\"",
        // A TOTP code is never shown either (Vault's format check refuses
        // this one before any request).
        "/approve ab12 \"1\r23456\"",
        "/panel add p1 marzban https://x u \"pw\u{1b}\"",
    ] {
        Command::parse(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
}

/// A canonical word goes back through the lexer unchanged.
#[test]
fn quote_round_trips_through_the_lexer() {
    for w in [
        "plain",
        "two words",
        "q\"uote",
        "back\\slash",
        "",
        "secret/x y/z",
    ] {
        let line = format!("x {}", crate::command::args::quote(w));
        assert_eq!(
            crate::command::lexer::split(&line).unwrap(),
            ["x", w],
            "{line}"
        );
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

#[test]
fn listings_take_a_page_and_a_prefix() {
    match parse("/mtproto list -page=3 bob/90") {
        Command::Mtproto(mtproto::MtprotoCommand::List(a)) => {
            assert_eq!(a.page, Some(3));
            assert_eq!(a.prefix.as_deref(), Some("bob/90"));
        }
        other => panic!("{other:?}"),
    }
    match parse("/agent list") {
        Command::Agent(agent::AgentCommand::List(a)) => {
            assert_eq!((a.page, a.prefix), (None, None));
        }
        other => panic!("{other:?}"),
    }
    match parse("/audit -page=2 1000") {
        Command::Audit { n, page } => assert_eq!((n, page), (Some(1000), Some(2))),
        other => panic!("{other:?}"),
    }
    for bad in [
        "/audit 1001",
        "/audit 0",
        "/mtproto list -page=x",
        "/agent list a b",
    ] {
        assert!(Command::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn pages_are_bounded_and_named() {
    let args = |page| ListArgs {
        page,
        prefix: Some("a".into()),
    };
    let items: Vec<u32> = (1..=120).collect();
    let p = args(None).paginate(items.clone(), 50).unwrap();
    assert_eq!((p.number, p.pages, p.total), (1, 3, 120));
    assert_eq!(p.items, (1..=50).collect::<Vec<_>>());
    assert_eq!(
        p.footer("/x list a").as_deref(),
        Some("page 1 of 3; next: /x list a -page=2")
    );
    let last = args(Some(3)).paginate(items.clone(), 50).unwrap();
    assert_eq!(last.items, (101..=120).collect::<Vec<_>>());
    assert_eq!(last.footer("/x").as_deref(), Some("page 3 of 3"));
    for bad in [0, 4] {
        let e = args(Some(bad)).paginate(items.clone(), 50).unwrap_err();
        assert_eq!(e.message, format!("-page={bad}: there are 3 pages of 50"));
    }
    let empty = args(None).paginate(Vec::<u32>::new(), 50).unwrap();
    assert_eq!((empty.pages, empty.footer("/x")), (1, None));
    assert!(args(None).matches("ab") && !args(None).matches("ba"));
    assert!(ListArgs::default().matches("anything"));
}

#[test]
fn group_trees_parse_as_the_whole_table() {
    let lines = [
        "/kv get -version=3 -field=password secret/panels/de1",
        "/kv put secret/x a=1 b=2",
        "/kv metadata get secret/x",
        "/kv destroy -versions=1,2 secret/x",
        "/kv get",
        "/kv get -version=x secret/x",
        "/kv nosuch secret/x",
        "/mtproto list -page=2 bob/",
        "/mtproto list -page=0",
        "/agent list a b",
        "/audit 1001",
        "/audit -page=2 30",
        "/help",
        "/whoami extra",
        "/get_keys",
        "/nosuch",
        "/kvv get secret/x",
        "/panel show --reveal p1",
        "/operator suspend bob because",
        "/transit encrypt k hello",
    ];
    for line in lines {
        let whole = Command::parse_with(line, |_| Line::command());
        let group = Command::parse(line);
        assert_eq!(format!("{group:?}"), format!("{whole:?}"), "{line}");
    }
}

/// Which commands carry a secret in the message is read off the table's
/// argument types (one description): exactly these.
#[test]
fn secret_input_comes_from_the_argument_types() {
    let secret: Vec<String> = leaves()
        .iter()
        .filter(|l| l.secret_input)
        .map(|l| l.words.join(" "))
        .collect();
    assert_eq!(
        secret,
        [
            "kv put",
            "kv patch",
            "transit encrypt",
            "panel add",
            "approve",
            "unlock"
        ]
    );
    assert!(parse("/kv put secret/x a=b").input_is_secret());
    assert!(!parse("/kv get secret/x").input_is_secret());
    assert!(parse("/unlock 123456").input_is_secret());
}

/// Every role rule names commands of the table (a renamed command cannot
/// leave a rule behind that matches nothing).
#[test]
fn every_role_rule_names_a_command() {
    for rule in super::rules::AGENT_MAY_USE {
        let words: Vec<&str> = rule.split(' ').collect();
        assert!(
            leaves()
                .iter()
                .any(|l| l.words.len() >= words.len() && l.words[..words.len()] == words[..]),
            "{rule}"
        );
        assert!(super::rules::agent_may_use(&words), "{rule}");
    }
    let allowed: Vec<String> = leaves()
        .iter()
        .filter(|l| super::rules::agent_may_use(&l.words))
        .map(|l| l.words.join(" "))
        .collect();
    assert_eq!(allowed.len(), 14, "{allowed:?}");
}
