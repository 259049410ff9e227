//! The chat command table: one `enum Command` whose variants hold each
//! group's subcommands. clap's: each variant's doc comment is its `/help`
//! line and `override_usage` its usage, so `/help` is generated here and
//! cannot drift from what the parser accepts. Lines are split by
//! [`lexer`], Vault-style `-flag=value` becomes `--flag=value`, and clap
//! parses the rest. Parsing is pure (no I/O) and tested from `&str`.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::agent::AgentCommand;
use super::args::{Pair, SecretArg, WrapArg};
use super::gate_flags::{GateFlags, ReviewVerdict};
use super::info;
use super::kv::KvCommand;
use super::lexer;
use super::mtproto::MtprotoCommand;
use super::operator::{self, OperatorCommand};
use super::panel::PanelCommand;
use super::reply::Prepared;
use super::rules;
use super::transit::TransitCommand;
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx};

#[derive(Debug, Parser)]
#[command(
    name = "vaultgram",
    no_binary_name = true,
    disable_help_flag = true,
    disable_help_subcommand = true,
    disable_version_flag = true
)]
struct Line {
    #[command(subcommand)]
    cmd: Command,
}

/// Every chat command (SPEC.md "Chat commands").
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Commands you may use.
    #[command(override_usage = "/help")]
    Help,
    /// Who you are to Vault: operator, role, policies, token TTLs.
    #[command(override_usage = "/whoami")]
    Whoami,
    /// The userbot's Telegram app keys (API_ID, API_HASH).
    #[command(name = "get_keys", override_usage = "/get_keys [-wrap-ttl=DURATION]")]
    GetKeys(WrapArg),
    /// KV v2 secrets, as the Vault CLI.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Encryption as a service (transit).
    #[command(subcommand)]
    Transit(TransitCommand),
    /// Panel agents' API tokens.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Panel credentials.
    #[command(subcommand)]
    Panel(PanelCommand),
    /// Per-user MTProto proxy secrets.
    #[command(subcommand)]
    Mtproto(MtprotoCommand),
    /// Approve a pending request with your TOTP code.
    #[command(override_usage = "/approve ID CODE")]
    Approve { id: String, code: SecretArg },
    /// Deny a pending request (the reason goes to its requester).
    #[command(override_usage = "/deny ID [REASON…]")]
    Deny {
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        reason: Vec<String>,
    },
    /// Requests waiting for approval, and break-glass runs waiting for review.
    #[command(override_usage = "/pending")]
    Pending,
    /// Review another admin's break-glass run (`bad` suspends its author).
    #[command(override_usage = "/review ID ok|bad [NOTE…]")]
    Review {
        id: String,
        #[arg(value_enum)]
        verdict: ReviewVerdict,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        note: Vec<String>,
    },
    /// Vault, etcd and Telegram status.
    #[command(override_usage = "/health")]
    Health,
    /// The last N audit records (default 20, at most 1000), 20 per page, newest page first.
    #[command(override_usage = "/audit [-page=P] [N]")]
    Audit {
        #[arg(value_parser = clap::value_parser!(u16).range(1..=1000))]
        n: Option<u16>,
        #[arg(long, value_name = "P")]
        page: Option<u32>,
    },
    /// Open your step-up window with your own TOTP code (start of work).
    #[command(override_usage = "/unlock CODE")]
    Unlock { code: SecretArg },
    /// Close your step-up window now (end of work).
    #[command(override_usage = "/lock")]
    Lock,
    /// Suspend, resume and list operators.
    #[command(subcommand)]
    Operator(OperatorCommand),
}

/// The clap tree that parses a line starting with `name`. Building the
/// whole table's tree for every line took ~180 µs, a tenth of a `/kv get`
/// (measured, docs/PERFORMANCE.md): each command group's tree is built once,
/// alone under a root with [`Line`]'s settings, and cloned per line. An
/// unknown name gets the whole table, for its error message.
fn tree_for(name: &str) -> clap::Command {
    use std::collections::HashMap;
    static TREES: std::sync::OnceLock<(HashMap<String, clap::Command>, clap::Command)> =
        std::sync::OnceLock::new();
    let (groups, full) = TREES.get_or_init(|| {
        let mut full = Line::command();
        full.build();
        let mut groups = HashMap::new();
        for sub in full.get_subcommands() {
            let mut root = clap::Command::new("vaultgram")
                .no_binary_name(true)
                .disable_help_flag(true)
                .disable_help_subcommand(true)
                .disable_version_flag(true)
                .subcommand_required(true)
                .subcommand(sub.clone());
            root.build();
            for n in std::iter::once(sub.get_name()).chain(sub.get_all_aliases()) {
                groups.insert(n.to_string(), root.clone());
            }
        }
        (groups, full)
    });
    groups.get(name).unwrap_or(full).clone()
}

/// Why a line is not a command. The message never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl Command {
    /// Parses one chat line (`/kv get secret/x`, with or without the slash).
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        let words = lexer::split(line).map_err(|e| ParseError(e.to_string()))?;
        Self::parse_words(words, tree_for)
    }

    /// A line as an operator sends it: the command, and the approval
    /// flags (`-reason="…"`, `-break-glass`) taken out of it first, so
    /// that they are never part of the command that runs or waits.
    pub fn parse_with_gate_flags(line: &str) -> Result<(Command, GateFlags), ParseError> {
        let mut words = lexer::split(line).map_err(|e| ParseError(e.to_string()))?;
        let flags = GateFlags::take_from(&mut words).map_err(ParseError)?;
        Ok((Self::parse_words(words, tree_for)?, flags))
    }

    /// [`Command::parse`] with `tree(name)` as the clap tree.
    #[cfg(test)]
    fn parse_with(
        line: &str,
        tree: impl FnOnce(&str) -> clap::Command,
    ) -> Result<Command, ParseError> {
        let words = lexer::split(line).map_err(|e| ParseError(e.to_string()))?;
        Self::parse_words(words, tree)
    }

    fn parse_words(
        mut words: Vec<String>,
        tree: impl FnOnce(&str) -> clap::Command,
    ) -> Result<Command, ParseError> {
        let Some(first) = words.first_mut() else {
            return Err(ParseError("empty command; try /help".into()));
        };
        // "/kv" or "kv"; Telegram may append "@botname" in groups.
        let name = first.trim_start_matches('/');
        let name = name.split('@').next().unwrap_or(name).to_string();
        *first = name;
        // Operator-supplied text is shown to others (/pending, /audit,
        // errors): no word may carry a control or invisible character,
        // except the secret values that legitimately can (a PEM in
        // `/kv put`), which are never shown.
        for (i, w) in words.iter().enumerate() {
            if secret_word(&words, i) {
                continue;
            }
            if let Some(c) = crate::text::find_forbidden(w) {
                return Err(ParseError(format!(
                    "argument {} contains a control or invisible character (U+{:04X}); such characters are refused",
                    i + 1,
                    c as u32
                )));
            }
        }
        let words: Vec<String> = words.into_iter().map(lexer::vault_style_flag).collect();
        let matches = tree(&words[0])
            .try_get_matches_from(words)
            .map_err(|e| ParseError(clap_message(&e)))?;
        Line::from_arg_matches(&matches)
            .map(|l| l.cmd)
            .map_err(|e| ParseError(clap_message(&e)))
    }

    /// The name used in `approvals.required`, the audit trail and metrics
    /// (`kv get`, `panel show --reveal`, …): bounded, never a value.
    pub fn name(&self) -> String {
        match self {
            Command::Help => "help".into(),
            Command::Whoami => "whoami".into(),
            Command::GetKeys(_) => "get_keys".into(),
            Command::Kv(c) => format!("kv {}", c.name()),
            Command::Transit(c) => format!("transit {}", c.name()),
            Command::Agent(c) => format!("agent {}", c.name()),
            Command::Panel(c) => format!("panel {}", c.name()),
            Command::Mtproto(c) => format!("mtproto {}", c.name()),
            Command::Approve { .. } => "approve".into(),
            Command::Deny { .. } => "deny".into(),
            Command::Pending => "pending".into(),
            Command::Review { .. } => "review".into(),
            Command::Health => "health".into(),
            Command::Audit { .. } => "audit".into(),
            Command::Unlock { .. } => "unlock".into(),
            Command::Lock => "lock".into(),
            Command::Operator(c) => format!("operator {}", c.name()),
        }
    }

    /// What the command acts on (a KV path, an agent id, a panel name), for
    /// the audit trail; never a value.
    pub fn target(&self) -> Option<String> {
        match self {
            Command::Kv(c) => c.target(),
            Command::Transit(c) => c.target(),
            Command::Agent(c) => c.target(),
            Command::Panel(c) => c.target(),
            Command::Mtproto(c) => c.target(),
            Command::Operator(c) => c.target(),
            Command::Approve { id, .. } | Command::Deny { id, .. } | Command::Review { id, .. } => {
                Some(id.clone())
            }
            Command::GetKeys(_) => Some("telegram".into()),
            _ => None,
        }
    }

    /// Whether `role` may run this command at all ([`rules`]: the one
    /// role rule, which `/help` reads too).
    pub fn allowed_for(&self, role: Role) -> bool {
        match role {
            Role::Admin => true,
            Role::Agent => rules::agent_may_use(&self.words()),
        }
    }

    /// The command words of [`Command::name`] (`["panel", "show", "--reveal"]`).
    fn words(&self) -> Vec<&'static str> {
        let name = self.name();
        leaf_of(&name.split(' ').collect::<Vec<_>>())
            .map(|l| l.words.clone())
            .unwrap_or_default()
    }

    /// Reads and nothing else: safe to run while the suspension and the
    /// reveal budget are still being checked (its reply is dropped unseen
    /// if either refuses). An explicit list: a new command is not one
    /// until it is added here (`/kv`'s is `KvCommand::is_read_only`, which
    /// the effect classifier reads too).
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Help | Command::Whoami | Command::Health | Command::GetKeys(_) => true,
            Command::Kv(c) => c.is_read_only(),
            Command::Mtproto(c) => {
                matches!(c, MtprotoCommand::Show { .. } | MtprotoCommand::List(_))
            }
            Command::Agent(c) => matches!(c, AgentCommand::List(_)),
            _ => false,
        }
    }

    /// Reads nothing from Vault's data and changes nothing: runs even
    /// when etcd cannot say whether the operator is suspended (to find out
    /// what is wrong), where everything else is refused.
    pub fn is_diagnostic(&self) -> bool {
        matches!(self, Command::Help | Command::Whoami | Command::Health)
    }

    pub fn reply_is_secret(&self) -> bool {
        match self {
            Command::GetKeys(_) => true,
            Command::Kv(c) => c.reply_is_secret(),
            Command::Transit(c) => c.reply_is_secret(),
            Command::Agent(c) => c.reply_is_secret(),
            Command::Panel(c) => c.reply_is_secret(),
            Command::Mtproto(c) => c.reply_is_secret(),
            _ => false,
        }
    }

    /// The message itself carried a secret (deleted once handled): the
    /// table says so by the argument's type ([`SecretArg`], [`Pair`]).
    pub fn input_is_secret(&self) -> bool {
        let name = self.name();
        leaf_of(&name.split(' ').collect::<Vec<_>>()).is_some_and(|l| l.secret_input)
    }

    /// How the command stands to `security.step_up`.
    pub fn step(&self) -> crate::security::Step {
        use crate::security::Step;
        match self {
            // The panic button works without a TOTP code: whoever lost
            // their phone has none.
            Command::Help
            | Command::Whoami
            | Command::Unlock { .. }
            | Command::Lock
            | Command::Operator(OperatorCommand::Suspend { .. }) => Step::Free,
            // The approver's code is checked by the approval itself.
            Command::Approve { .. } => Step::Plain,
            c if c.reply_is_secret() || c.input_is_secret() => Step::Secret,
            _ => Step::Plain,
        }
    }
}

impl Command {
    /// Runs a parsed command that the dispatcher has authorised (role,
    /// step-up, approval, budget) with the operator's context. The
    /// approval commands are not here: they drive the pipeline itself,
    /// and the dispatcher runs them.
    pub async fn execute(&self, ctx: &Ctx<'_>) -> CommandResult {
        match self {
            Command::Help => Ok(info::help(ctx, help(ctx.op.role))),
            Command::Whoami => Ok(info::whoami(ctx).await),
            Command::GetKeys(wrap) => info::get_keys(ctx, wrap).await,
            Command::Health => Ok(info::health(ctx).await),
            Command::Audit { n, page } => info::audit(ctx, *n, *page).await,
            Command::Kv(c) => c.execute(ctx).await,
            Command::Transit(c) => c.execute(ctx).await,
            Command::Agent(c) => c.execute(ctx).await,
            Command::Panel(c) => c.execute(ctx).await,
            Command::Mtproto(c) => c.execute(ctx).await,
            Command::Unlock { code } => operator::unlock(ctx, code).await,
            Command::Lock => operator::lock(ctx).await,
            Command::Operator(c) => c.execute(ctx).await,
            Command::Approve { .. }
            | Command::Deny { .. }
            | Command::Pending
            | Command::Review { .. } => Err(CommandError::invalid(format!(
                "/{} is run by the dispatcher's approval gate",
                self.name()
            ))),
        }
    }
}

impl From<ParseError> for CommandError {
    fn from(e: ParseError) -> Self {
        CommandError::invalid(e.0)
    }
}

/// Checks a gated command's arguments and ownership (with the requester's
/// own child token: what it may not read, it could not change) and returns
/// its canonical line, which `/pending` shows and `/approve` runs. Runs
/// before a request is filed, so a request that could not succeed is never
/// filed.
pub async fn prepare(
    ctx: &crate::context::Ctx<'_>,
    cmd: &Command,
) -> Result<Prepared, crate::context::CommandError> {
    match cmd {
        Command::Kv(c) => c.prepare(ctx).await,
        Command::Transit(c) => c.prepare(ctx).await,
        Command::Agent(c) => c.prepare(ctx).await,
        Command::Mtproto(c) => c.prepare(ctx).await,
        Command::Panel(c) => c.prepare(ctx).await,
        Command::Operator(c) => c.prepare(ctx).await,
        _ => Err(crate::context::CommandError::invalid(format!(
            "/{} cannot wait for approval",
            cmd.name()
        ))),
    }
}

/// Words that carry a secret value (never shown, never stored): the
/// values of the table's [`SecretArg`] and [`Pair`] arguments (`/kv
/// put|patch` pairs, `/transit encrypt`'s plaintext, `/panel add`'s
/// password, TOTP codes). Every other word is checked.
fn secret_word(words: &[String], i: usize) -> bool {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let Some(leaf) = leaf_of(&words) else {
        return false;
    };
    let depth = leaf.words.len();
    if i < depth || words[i].starts_with('-') {
        return false;
    }
    // The word's place among the positional words after the command's.
    let n = words[depth..i]
        .iter()
        .filter(|w| !w.starts_with('-'))
        .count();
    let last = leaf.positionals.last().filter(|_| leaf.last_takes_rest);
    match leaf.positionals.get(n).or(last) {
        Some(Positional::Secret) => true,
        // `key=value`: the value is secret, the key is shown (and checked).
        Some(Positional::Pair) => words[i]
            .split_once('=')
            .is_some_and(|(k, _)| crate::text::find_forbidden(k).is_none()),
        Some(Positional::Plain) | None => false,
    }
}

/// What a positional argument holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Positional {
    Plain,
    /// A [`SecretArg`].
    Secret,
    /// A [`Pair`]: a shown key, a secret value.
    Pair,
}

/// What the table says about one command an operator types.
struct Leaf {
    /// Its command words (`kv`, `metadata`, `get`).
    words: Vec<&'static str>,
    /// Its positional arguments, in order.
    positionals: Vec<Positional>,
    /// The last positional takes every remaining word (`k=v …`).
    last_takes_rest: bool,
    /// Any of its arguments is secret.
    secret_input: bool,
}

/// Every command of the table by its words, derived once from clap's tree.
fn leaves() -> &'static [Leaf] {
    static LEAVES: std::sync::OnceLock<Vec<Leaf>> = std::sync::OnceLock::new();
    LEAVES.get_or_init(|| {
        fn kind(arg: &clap::Arg) -> Positional {
            let t = arg.get_value_parser().type_id();
            if t == std::any::TypeId::of::<SecretArg>() {
                Positional::Secret
            } else if t == std::any::TypeId::of::<Pair>() {
                Positional::Pair
            } else {
                Positional::Plain
            }
        }
        fn walk(cmd: &clap::Command, prefix: &[&'static str], out: &mut Vec<Leaf>) {
            for sub in cmd.get_subcommands() {
                // The tree lives as long as the process (built once here).
                let name: &'static str = String::leak(sub.get_name().to_string());
                let mut words = prefix.to_vec();
                words.push(name);
                if sub.has_subcommands() {
                    walk(sub, &words, out);
                    continue;
                }
                let positionals: Vec<&clap::Arg> = sub.get_positionals().collect();
                out.push(Leaf {
                    words,
                    last_takes_rest: positionals
                        .last()
                        .is_some_and(|a| a.get_num_args().is_some_and(|n| n.max_values() > 1)),
                    positionals: positionals.iter().map(|a| kind(a)).collect(),
                    secret_input: sub.get_arguments().any(|a| kind(a) != Positional::Plain),
                });
            }
        }
        let mut root = Line::command();
        root.build();
        let mut out = Vec::new();
        walk(&root, &[], &mut out);
        out
    })
}

/// The command that `words` start (the longest match).
fn leaf_of(words: &[&str]) -> Option<&'static Leaf> {
    leaves()
        .iter()
        .filter(|l| words.len() >= l.words.len() && words[..l.words.len()] == l.words[..])
        .max_by_key(|l| l.words.len())
}

/// clap's first error line, without its `Usage:` block and `--help` tips,
/// and without the offending word: clap quotes it, and it may be a secret
/// typed in the wrong place.
fn clap_message(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind as K};
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(a)) => a.trim_start_matches("--").to_string(),
        _ => "argument".to_string(),
    };
    match e.kind() {
        K::InvalidSubcommand => {
            // Never echo the word: it may be a pasted secret (a 32-hex
            // MTProto secret is a valid-looking "name").
            "unknown command; try /help".into()
        }
        K::MissingSubcommand | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            "incomplete command; try /help".into()
        }
        K::ValueValidation => {
            let why = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "invalid value".into());
            format!("invalid {arg}: {why}")
        }
        K::InvalidValue => format!("invalid value for {arg}"),
        K::UnknownArgument => {
            "unexpected argument (quote values that contain spaces; try /help)".into()
        }
        K::MissingRequiredArgument => match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::Strings(v)) => format!("missing {}", v.join(", ")),
            _ => "missing argument; try /help".into(),
        },
        K::TooManyValues | K::TooFewValues | K::WrongNumberOfValues => {
            format!("wrong number of values for {arg}")
        }
        K::ArgumentConflict => "conflicting arguments".into(),
        _ => "invalid command; try /help".into(),
    }
}

/// One `/help` line per command `role` may use, generated from the table.
/// Every line starts with a usage an operator can type as shown (a test
/// parses each back through [`Command::parse`]).
pub fn help(role: Role) -> String {
    let mut leaves = Vec::new();
    let root = Line::command();
    collect_leaves(&root, &mut leaves);
    let mut lines = Vec::new();
    for leaf in leaves {
        // clap renders "Usage: <override_usage>".
        let usage = leaf.clone().render_usage().to_string();
        let usage = usage.trim().trim_start_matches("Usage:").trim().to_string();
        // Check the role rule on a parse of the usage's command words.
        let words: Vec<&str> = usage
            .trim_start_matches('/')
            .split_whitespace()
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        if role == Role::Agent && !rules::agent_may_use(&words) {
            continue;
        }
        let about = leaf.get_about().map(|a| a.to_string()).unwrap_or_default();
        lines.push(format!("{usage} — {about}"));
    }
    lines.join("\n")
}

/// The command words of every command in the table (`help`, `kv metadata
/// get`, `operator suspend`, …), for the tests that must cover each one
/// (`effect.rs`: what every command destroys or reveals).
pub fn all_command_words() -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let words = if prefix.is_empty() {
                sub.get_name().to_string()
            } else {
                format!("{prefix} {}", sub.get_name())
            };
            if sub.has_subcommands() {
                walk(sub, &words, out);
            } else {
                out.push(words);
            }
        }
    }
    let mut out = Vec::new();
    walk(&Line::command(), "", &mut out);
    out
}

/// The commands an operator types, however deep they are nested
/// (`/kv metadata get` is three levels down).
fn collect_leaves<'a>(cmd: &'a clap::Command, out: &mut Vec<&'a clap::Command>) {
    for sub in cmd.get_subcommands() {
        if sub.has_subcommands() {
            collect_leaves(sub, out);
        } else {
            out.push(sub);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
