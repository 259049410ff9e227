//! What a command *does*, as the two-person rule sees it.
//!
//! `approvals.required` names effects (destroying versions, deleting
//! metadata, rotating a key, revoking an agent or an MTProto user,
//! revealing a panel password), not command names: `/kv get` of a panel
//! record reveals its password just as `/panel show --reveal` does, and
//! `/kv delete` of an MTProto record revokes the user just as `/mtproto
//! revoke` does. [`classify`] maps every parsed command to the effects it
//! can have, or refuses it when a generic spelling would reach a managed
//! record behind its command's back. Version churn (a write that pushes a
//! live version out of the history) is refused where it would happen, in
//! `vault::kv` (see ARCHITECTURE.md, "Effects that need approval").

//!
//! # Every path to a gated effect
//!
//! `approvals.required` names effects. Every command path that can produce
//! one is gated, refused, or impossible by policy:
//!
//! | effect (name in `approvals.required`) | command paths that produce it | what happens |
//! | --- | --- | --- |
//! | destroy versions (`kv destroy`) | `/kv destroy`; any write that would push a live version past `max_versions` (`/kv put`, `/kv patch`, `/kv rollback`, `/agent token`, `/panel add` of an existing panel, `/panel assign` copies, `/mtproto issue` after a revoke, imports); setting `max_versions` / `delete_version_after` on a key | `/kv destroy`: gated. Churn: refused by `vault::kv::kv_history_guard` (names the version to destroy first). Metadata writes: no operator policy grants them; the mount keeps 100 versions and never deletes by age (`apply.sh`) |
//! | delete metadata (`kv metadata delete`) | `/kv metadata delete`; `/panel remove` (the record and every agent's copy, all versions) | gated |
//! | rotate a key (`transit rotate`) | `/transit rotate` | gated |
//! | revoke an agent (`agent revoke`) | `/agent revoke`; `/agent token` (the new token ends the current one); `/kv delete`, `destroy`, `metadata delete`, `put`, `patch`, `rollback`, `undelete` of `vaultgram/agents/ID` | `/agent revoke`, `/agent token`: gated (`/agent token`'s reply is the new token: a one-time grant for the requester); `/kv` writes there: refused (`effect`) |
//! | revoke an MTProto user (`mtproto revoke`) | `/mtproto revoke`; `/kv delete`, `destroy`, `metadata delete`, `put`, `patch`, `rollback` of `vaultgram/mtproto/OWNER/USER`; undoing a revoke with `undelete` | `/mtproto revoke`: gated; `/kv` writes there: refused; the agent policy has no `undelete` |
//! | reveal a panel password (`panel show --reveal`) | `/panel show --reveal`; `/kv get` (with or without `-version`, `-field=password`, `-wrap-ttl`) of `vaultgram/panels/NAME` or `vaultgram/panels-by-agent/AGENT/NAME` | `/panel show --reveal`: gated (one-time grant for the requester); `/kv get` there: refused unless `-field` names another field |
//!
//! The table is total: `effect::tests::every_command_of_the_table_is_classified`
//! walks every command of the command table (`command::all_command_words`)
//! with a sample line and the effects it must have, so a command added
//! without saying what it destroys or reveals — or taken out of `classify` —
//! fails the unit tests.
//!
//! Order for a gated command: parse (no control or invisible character in
//! any shown argument) → role → `effect::classify` → step-up (an effect
//! needs an unlock wherever a secret does) → `command::prepare`
//! (arguments, ownership and existence checked with the requester's own
//! child token; the canonical line built) → `Approvals::gate` (a grant for
//! exactly that canonical line is consumed, or a request is filed, at most
//! `max_pending_per_operator` per requester). `/pending` shows the canonical
//! line, escaped field by field, and `/approve` parses and runs that line.

use crate::command::kv::{KvCommand, KvMetadataCommand};
use crate::command::{AgentCommand, Command, MtprotoCommand, PanelCommand, TransitCommand};
use crate::context::CommandError;

/// The effects are the vocabulary of `approvals.required`: the config
/// (the ground floor) defines them, classification lives here.
pub use crate::config::Effect;

/// The managed area `path` (inside the mount, no trailing slash) is in,
/// with the command that owns it.
fn managed(path: &str) -> Option<(&'static str, &'static str)> {
    crate::records::MANAGED
        .iter()
        .copied()
        .find(|(dir, _)| path == *dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/')))
}

/// What `cmd` can do, or why it may not run at all. Pure: decided from the
/// parsed command and the KV mount, before any Vault or etcd call.
pub fn classify(cmd: &Command, kv_mount: &str) -> Result<Vec<Effect>, CommandError> {
    Ok(match cmd {
        Command::Kv(c) => return classify_kv(c, kv_mount),
        Command::Transit(TransitCommand::Rotate { .. }) => vec![Effect::RotateKey],
        // A new token ends the old one: whatever looks agents up by the
        // record's digest no longer finds it.
        Command::Agent(AgentCommand::Revoke { .. } | AgentCommand::Token { .. }) => {
            vec![Effect::RevokeAgent]
        }
        // The panel record and every agent's copy, each with all versions.
        Command::Panel(PanelCommand::Remove { .. }) => vec![Effect::DeleteMetadata],
        Command::Mtproto(MtprotoCommand::Revoke { .. }) => vec![Effect::RevokeMtproto],
        Command::Panel(PanelCommand::Show { reveal: true, .. }) => {
            vec![Effect::RevealPanelPassword]
        }
        Command::Operator(crate::command::OperatorCommand::Resume { .. }) => {
            vec![Effect::ResumeOperator]
        }
        _ => Vec::new(),
    })
}

fn classify_kv(c: &KvCommand, kv_mount: &str) -> Result<Vec<Effect>, CommandError> {
    let path = c.path();
    // Another mount may not even be KV v2 (cubbyhole/ takes a write and
    // answers in another shape); the broker's policies cover only this one.
    if path.mount() != kv_mount {
        return Err(CommandError::invalid(format!(
            "/kv works on the `{kv_mount}` mount only"
        )));
    }
    let p = path.path();
    let writes = !c.is_read_only();
    if let Some((dir, owner)) = managed(p) {
        match c {
            KvCommand::Get { field, .. }
                if crate::records::panel::is_record(p)
                    && field.as_deref().is_none_or(|f| f == "password") =>
            {
                return Err(CommandError::denied(
                    "reading a panel record through /kv shows its password; use /panel show NAME --reveal, which needs a second admin's approval (or /kv get -field=F for another field)",
                ));
            }
            _ if writes => {
                return Err(CommandError::denied(format!(
                    "{kv_mount}/{dir}/ holds the broker's own records: /kv may read them, only {owner} changes them"
                )));
            }
            _ => {}
        }
    }
    Ok(match c {
        KvCommand::Destroy { .. } => vec![Effect::DestroyVersions],
        KvCommand::Metadata(KvMetadataCommand::Delete { .. }) => vec![Effect::DeleteMetadata],
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Classifies `line`, with `{agents}`, `{panels}`, `{copies}`,
    /// `{mtproto}` and `{mtproxy}` standing for the record folders.
    fn effects(line: &str) -> Result<Vec<Effect>, CommandError> {
        use crate::records::{agent, mtproto, mtproxy, panel};
        let line = line
            .replace("{agents}", agent::DIR)
            .replace("{panels}", panel::DIR)
            .replace("{copies}", panel::COPIES_DIR)
            .replace("{mtproto}", mtproto::DIR)
            .replace("{mtproxy}", mtproxy::DIR);
        classify(&Command::parse(&line).unwrap(), "secret")
    }

    /// The effect table, total: every command of the command table, with
    /// a sample line and what it can destroy or reveal (beyond what its
    /// operator plainly reads or writes) as an effect that the default
    /// `approvals.required` gates. A command missing here fails the test,
    /// so a new command cannot slip past the two-person rule unnoticed; a
    /// destroying command taken out of `classify` fails it too.
    ///
    /// Why the commands with no effect need none: `kv put|patch|rollback`
    /// write a new version (a write that would push a live version out of
    /// the history is refused by `vault::kv::kv_history_guard`); `kv
    /// delete` is a soft delete (`kv undelete` brings it back) and
    /// `kv undelete` restores; `agent add` and `mtproto issue` never
    /// replace a live record (check-and-set 0 / a live secret is refused);
    /// `panel add` of an existing panel keeps the old credentials in the
    /// history; `panel assign` copies to an agent what only a gated
    /// `--reveal` shows; `transit *` but `rotate` use keys without changing
    /// them; `operator suspend` revokes tokens, which `operator resume`
    /// (gated) undoes; `deny` ends a request that has not run. Every
    /// `/kv` spelling that would reach a managed record is refused
    /// (`every_spelling_of_a_gated_effect_is_gated_or_refused`).
    #[test]
    fn every_command_of_the_table_is_classified() {
        use Effect::*;
        let table: &[(&str, &str, &[Effect])] = &[
            ("help", "/help", &[]),
            ("whoami", "/whoami", &[]),
            ("get_keys", "/get_keys", &[]),
            ("kv get", "/kv get secret/x", &[]),
            ("kv put", "/kv put secret/x a=b", &[]),
            ("kv patch", "/kv patch secret/x a=b", &[]),
            ("kv list", "/kv list secret/", &[]),
            ("kv delete", "/kv delete -versions=1 secret/x", &[]),
            ("kv undelete", "/kv undelete -versions=1 secret/x", &[]),
            (
                "kv destroy",
                "/kv destroy -versions=1 secret/x",
                &[DestroyVersions],
            ),
            ("kv metadata get", "/kv metadata get secret/x", &[]),
            (
                "kv metadata delete",
                "/kv metadata delete secret/x",
                &[DeleteMetadata],
            ),
            ("kv rollback", "/kv rollback -version=1 secret/x", &[]),
            ("transit encrypt", "/transit encrypt k text", &[]),
            ("transit decrypt", "/transit decrypt k vault:v1:x", &[]),
            ("transit rewrap", "/transit rewrap k vault:v1:x", &[]),
            ("transit rotate", "/transit rotate k", &[RotateKey]),
            ("transit keys", "/transit keys", &[]),
            ("transit datakey", "/transit datakey k", &[]),
            ("agent add", "/agent add a1", &[]),
            ("agent token", "/agent token a1", &[RevokeAgent]),
            ("agent list", "/agent list", &[]),
            ("agent revoke", "/agent revoke a1", &[RevokeAgent]),
            ("panel add", "/panel add p1 marzban https://x u pw", &[]),
            ("panel list", "/panel list", &[]),
            ("panel show", "/panel show p1", &[]),
            ("panel assign", "/panel assign p1 a1", &[]),
            ("panel remove", "/panel remove p1", &[DeleteMetadata]),
            ("mtproto issue", "/mtproto issue u1", &[]),
            ("mtproto show", "/mtproto show u1", &[]),
            ("mtproto revoke", "/mtproto revoke u1", &[RevokeMtproto]),
            ("mtproto list", "/mtproto list", &[]),
            ("approve", "/approve 0a1b 123456", &[]),
            ("deny", "/deny 0a1b", &[]),
            ("pending", "/pending", &[]),
            // `bad` suspends, as `/operator suspend` does (not gated).
            ("review", "/review 0a1b bad", &[]),
            ("health", "/health", &[]),
            ("audit", "/audit 5", &[]),
            ("unlock", "/unlock 123456", &[]),
            ("lock", "/lock", &[]),
            ("operator suspend", "/operator suspend bob", &[]),
            ("operator resume", "/operator resume bob", &[ResumeOperator]),
            ("operator list", "/operator list", &[]),
        ];
        let mut words: Vec<String> = crate::command::all_command_words();
        words.sort();
        let mut covered: Vec<String> = table.iter().map(|(w, _, _)| w.to_string()).collect();
        covered.sort();
        assert_eq!(
            words, covered,
            "the effect table must list exactly the commands of the command table: say what a new command destroys or reveals"
        );
        let gated = crate::config::ApprovalsConfig::default().required;
        for (words, line, expected) in table {
            let cmd = Command::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let name = cmd.name();
            assert!(
                name == *words || name.starts_with(&format!("{words} ")),
                "{line} parses as {name}, not {words}"
            );
            assert_eq!(
                classify(&cmd, "secret").unwrap(),
                expected.to_vec(),
                "{line}"
            );
            for e in *expected {
                assert!(
                    gated.iter().any(|g| g == e.name()),
                    "{line}: effect {} is not gated by default",
                    e.name()
                );
            }
        }
        // The one flag that changes what a command reveals.
        assert_eq!(
            classify(
                &Command::parse("/panel show --reveal p1").unwrap(),
                "secret"
            )
            .unwrap(),
            [RevealPanelPassword]
        );
    }

    #[test]
    fn every_spelling_of_a_gated_effect_is_gated_or_refused() {
        use Effect::*;
        assert_eq!(
            effects("/kv destroy -versions=1 secret/x").unwrap(),
            [DestroyVersions]
        );
        assert_eq!(
            effects("/kv metadata delete secret/x").unwrap(),
            [DeleteMetadata]
        );
        assert_eq!(effects("/transit rotate k").unwrap(), [RotateKey]);
        assert_eq!(effects("/agent revoke a1").unwrap(), [RevokeAgent]);
        assert_eq!(effects("/mtproto revoke u1").unwrap(), [RevokeMtproto]);
        assert_eq!(
            effects("/panel show p1 --reveal").unwrap(),
            [RevealPanelPassword]
        );
        assert_eq!(effects("/panel show p1").unwrap(), []);
        // Panel passwords through /kv: refused, in every spelling.
        for line in [
            "/kv get secret/{panels}/p1",
            "/kv get -field=password secret/{panels}/p1",
            "/kv get -wrap-ttl=60s secret/{panels}/p1",
            "/kv get -version=1 secret/{copies}/bob/p1",
        ] {
            assert_eq!(
                effects(line).unwrap_err().kind,
                crate::error::ErrorKind::Denied,
                "{line}"
            );
        }
        assert_eq!(
            effects("/kv get -field=url secret/{panels}/p1").unwrap(),
            []
        );
        // Revocation and history loss through /kv on managed records.
        for line in [
            "/kv delete secret/{mtproto}/admin/u1",
            "/kv delete -versions=1 secret/{agents}/a1",
            "/kv undelete -versions=1 secret/{mtproto}/bob/u1",
            "/kv put secret/{agents}/a1 token=x",
            "/kv patch secret/{panels}/p1 password=x",
            "/kv rollback -version=1 secret/{mtproto}/admin/u1",
            "/kv destroy -versions=1 secret/{mtproto}/admin/u1",
            "/kv metadata delete secret/{agents}/a1",
            "/kv put secret/{mtproxy}/state generation=1",
        ] {
            assert_eq!(
                effects(line).unwrap_err().kind,
                crate::error::ErrorKind::Denied,
                "{line}"
            );
        }
        // Reading and listing the broker's records stays possible.
        assert_eq!(effects("/kv list secret/{panels}/").unwrap(), []);
        assert_eq!(
            effects("/kv metadata get secret/{mtproto}/admin/u1").unwrap(),
            []
        );
        assert_eq!(effects("/kv get secret/{mtproto}/admin/u1").unwrap(), []);
        // Look-alikes of managed paths are ordinary secrets.
        assert_eq!(effects("/kv delete secret/{panels}x").unwrap(), []);
        assert_eq!(
            effects("/kv put secret/vaultgram-panels/p1 a=b").unwrap(),
            []
        );
        // Another mount: refused before any call.
        assert_eq!(
            effects("/kv put cubbyhole/x a=b").unwrap_err().kind,
            crate::error::ErrorKind::Invalid
        );
    }
}
