//! The approval flags an operator adds to a gated command
//! (`-reason="…"`, `-break-glass -code=CODE`). They are taken out of the line before it is parsed, so
//! they never become part of the command that waits or runs: the
//! canonical line an approver reads carries none of them, and a reason can
//! never be mistaken for an argument.

use super::args::SecretArg;

/// `/review`'s verdict on a break-glass run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReviewVerdict {
    Ok,
    Bad,
}

impl ReviewVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewVerdict::Ok => "ok",
            ReviewVerdict::Bad => "bad",
        }
    }
}

/// What the approval gate is told besides the command.
#[derive(Debug, Default, Clone)]
pub struct GateFlags {
    /// Why the operator asks: shown escaped to approvers and in the audit
    /// trail, length-checked by the gate.
    pub reason: Option<String>,
    /// `-break-glass`: run at once, alert, review later.
    pub break_glass: bool,
    /// `-code=CODE`: the break-glass admin's own TOTP code (redacted in
    /// `Debug`, never stored).
    pub code: Option<SecretArg>,
}

impl GateFlags {
    pub fn is_empty(&self) -> bool {
        self.reason.is_none() && !self.break_glass && self.code.is_none()
    }

    /// Removes `-reason=…`, `-break-glass` and `-code=…` (or their `--`
    /// spellings) from `words` (the command name, `words[0]`, is never
    /// one).
    pub fn take_from(words: &mut Vec<String>) -> Result<GateFlags, String> {
        let mut flags = GateFlags::default();
        let mut i = 1;
        while i < words.len() {
            let w = words[i]
                .strip_prefix("--")
                .or_else(|| words[i].strip_prefix('-'));
            match w.map(|w| w.split_once('=').map_or((w, None), |(n, v)| (n, Some(v)))) {
                Some(("reason", Some(v))) => {
                    if flags.reason.is_some() {
                        return Err("-reason is given twice".into());
                    }
                    flags.reason = Some(v.to_string());
                    words.remove(i);
                }
                Some(("reason", None)) => {
                    return Err("-reason needs a value: -reason=\"why you ask\"".into())
                }
                Some(("break-glass", None)) => {
                    flags.break_glass = true;
                    words.remove(i);
                }
                Some(("break-glass", Some(_))) => {
                    return Err(
                        "-break-glass takes no value; give your TOTP code as -code=CODE".into(),
                    )
                }
                Some(("code", Some(v))) => {
                    if flags.code.is_some() {
                        return Err("-code is given twice".into());
                    }
                    flags.code = Some(SecretArg(v.to_string().into()));
                    words.remove(i);
                }
                Some(("code", None)) => return Err("-code needs a value: -code=CODE".into()),
                _ => i += 1,
            }
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(line: &str) -> Result<(Vec<String>, GateFlags), String> {
        let mut w = crate::command::lexer::split(line).unwrap();
        let f = GateFlags::take_from(&mut w)?;
        Ok((w, f))
    }

    #[test]
    fn reasons_are_taken_out_of_the_line() {
        let (w, f) =
            take(r#"/kv destroy -versions=1 -reason="ticket 42: leaked" secret/x"#).unwrap();
        assert_eq!(w, ["/kv", "destroy", "-versions=1", "secret/x"]);
        assert_eq!(f.reason.as_deref(), Some("ticket 42: leaked"));
        let (w, f) = take("/transit rotate --reason=x k").unwrap();
        assert_eq!(w, ["/transit", "rotate", "k"]);
        assert_eq!(f.reason.as_deref(), Some("x"));
        let (w, f) = take("/kv destroy -versions=1 secret/reason=x").unwrap();
        assert_eq!(w.len(), 4);
        assert!(f.is_empty());
        // The command word itself is never a flag.
        let (w, f) = take("-reason=x").unwrap();
        assert_eq!(w, ["-reason=x"]);
        assert!(f.is_empty());
    }

    #[test]
    fn break_glass_and_its_code_are_taken_out() {
        let (w, f) =
            take(r#"/transit rotate -break-glass -code=123456 -reason="outage" k"#).unwrap();
        assert_eq!(w, ["/transit", "rotate", "k"]);
        assert!(f.break_glass);
        assert_eq!(f.reason.as_deref(), Some("outage"));
        let code = f
            .code
            .as_ref()
            .map(|c| secrecy::ExposeSecret::expose_secret(&c.0).to_string());
        assert_eq!(code.as_deref(), Some("123456"));
        assert!(!format!("{f:?}").contains("123456"), "the code is redacted");
        assert_eq!(
            take("/x -break-glass=1").unwrap_err(),
            "-break-glass takes no value; give your TOTP code as -code=CODE"
        );
        assert_eq!(
            take("/x -code").unwrap_err(),
            "-code needs a value: -code=CODE"
        );
    }

    #[test]
    fn malformed_reasons_are_refused() {
        assert_eq!(
            take("/transit rotate -reason k").unwrap_err(),
            "-reason needs a value: -reason=\"why you ask\""
        );
        assert_eq!(
            take("/transit rotate -reason=a -reason=b k").unwrap_err(),
            "-reason is given twice"
        );
    }
}
