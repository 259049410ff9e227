//! The chat commands: one `enum Command` (`table`), one file per command
//! group (`kv`, `transit`, `agent`, `panel`, `mtproto`, `operator`,
//! `info`), what they share in `args` (arguments) and `reply` (replies),
//! the word splitter in `lexer`. Groups never import the table; this file
//! only declares and re-exports.

pub mod agent;
pub mod args;
mod gate_flags;
pub mod info;
pub mod kv;
pub mod lexer;
pub mod mtproto;
pub mod operator;
pub mod panel;
pub mod reply;
pub mod rules;
mod table;
pub mod transit;

pub use agent::AgentCommand;
pub use args::{ListArgs, Page, Pair, SecretArg, WrapArg};
pub use gate_flags::{GateFlags, ReviewVerdict};
pub use kv::KvCommand;
pub use mtproto::MtprotoCommand;
pub use operator::OperatorCommand;
pub use panel::PanelCommand;
pub use reply::Prepared;
pub use table::{all_command_words, help, prepare, Command, ParseError};
pub use transit::TransitCommand;
