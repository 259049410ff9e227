//! Chat commands through `vaultgram console --json` against the real
//! cluster (the same dispatcher Telegram uses).

use super::TestFn;
use crate::common::console::console;
use crate::common::Env;

pub const TESTS: &[(&str, TestFn)] =
    &[("commands::parse_errors_and_unknown_commands", parse_errors)];

fn parse_errors(env: &Env) {
    let run = console(
        env,
        "alice",
        &["/nope", "/kv get secret/../x", "/kv put secret/x hunter2"],
    );
    assert_eq!(run.replies.len(), 3, "{}", run.stderr);
    for i in 0..3 {
        assert_eq!(run.err_kind(i), "invalid");
    }
    assert!(!run.replies[2].to_string().contains("hunter2"));
    assert_eq!(run.exit_code, Some(1));
}
