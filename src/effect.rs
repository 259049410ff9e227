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

use crate::command::kv::{KvCommand, KvMetadataCommand};
use crate::command::{AgentCommand, Command, MtprotoCommand, PanelCommand, TransitCommand};
use crate::context::CommandError;

/// An effect that `approvals.required` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Versions of a secret are gone for good.
    DestroyVersions,
    /// A secret with its whole history is gone.
    DeleteMetadata,
    /// A transit key gets a new version.
    RotateKey,
    /// An agent's API token stops working.
    RevokeAgent,
    /// A user's MTProto secret stops working.
    RevokeMtproto,
    /// A panel's password is shown.
    RevealPanelPassword,
    /// A suspended operator (a possibly stolen account) is trusted again.
    ResumeOperator,
}

impl Effect {
    pub const ALL: [Effect; 7] = [
        Effect::DestroyVersions,
        Effect::DeleteMetadata,
        Effect::RotateKey,
        Effect::RevokeAgent,
        Effect::RevokeMtproto,
        Effect::RevealPanelPassword,
        Effect::ResumeOperator,
    ];

    /// The name used in `approvals.required` (the canonical command that
    /// has this effect).
    pub fn name(self) -> &'static str {
        match self {
            Effect::DestroyVersions => "kv destroy",
            Effect::DeleteMetadata => "kv metadata delete",
            Effect::RotateKey => "transit rotate",
            Effect::RevokeAgent => "agent revoke",
            Effect::RevokeMtproto => "mtproto revoke",
            Effect::RevealPanelPassword => "panel show --reveal",
            Effect::ResumeOperator => "operator resume",
        }
    }
}

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
        Command::Agent(AgentCommand::Revoke { .. }) => vec![Effect::RevokeAgent],
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
    let writes = !matches!(
        c,
        KvCommand::Get { .. }
            | KvCommand::List { .. }
            | KvCommand::Metadata(KvMetadataCommand::Get { .. })
    );
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
    use crate::config::APPROVABLE_COMMANDS;

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

    #[test]
    fn effect_names_are_the_approvable_commands() {
        let names: Vec<&str> = Effect::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(names, APPROVABLE_COMMANDS.to_vec());
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
