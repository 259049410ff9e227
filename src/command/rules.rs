//! The role rule, by command words: what an agent operator may use
//! (admins may use everything). The one place it is written: the
//! dispatcher (`Command::allowed_for`), `/help` and each group's own
//! check read it. Vault's policies are the real boundary; this gives a
//! clear `denied` before any call.

/// Command words an agent may use; a rule shorter than the command
/// covers everything under it (`mtproto` is the whole group).
pub(super) const AGENT_MAY_USE: [&str; 11] = [
    "help",
    "whoami",
    "health",
    // An agent may cancel its own request (`Approvals::deny` checks that
    // it is its own).
    "deny",
    "unlock",
    "lock",
    // The panic button: whoever lost their phone has no TOTP code.
    "operator suspend",
    "agent list",
    "panel list",
    "panel show",
    "mtproto",
];

/// Whether an agent may use the command these words start.
pub fn agent_may_use(words: &[&str]) -> bool {
    AGENT_MAY_USE.iter().any(|rule| {
        let rule: Vec<&str> = rule.split(' ').collect();
        words.len() >= rule.len() && words[..rule.len()] == rule[..]
    })
}
