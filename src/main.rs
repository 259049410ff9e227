//! The `vaultgram` binary: parses the command line, loads the config, and
//! hands over to the library. `anyhow` lives here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vaultgram::config::{self, Config};
use vaultgram::telemetry::{self, LogFormat};

/// Secrets broker driven from Telegram: operator commands become Vault KV v2
/// and transit calls.
#[derive(Debug, Parser)]
#[command(name = "vaultgram", version)]
struct Cli {
    /// Config file (default: $VAULTGRAM_CONFIG, then /etc/vaultgram/vaultgram.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "pretty", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<LogFormat>()))]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config (no network) and print the effective config with
    /// every secret redacted.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    vaultgram::tls::install_crypto_provider();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config::resolve_path(cli.config.as_deref(), &config::process_env);
    // Validation happens before anything touches Vault or etcd.
    let cfg = Config::load(&path, &config::process_env)?;
    match cli.command {
        Command::CheckConfig => {
            println!(
                "# effective config from {} (secrets redacted)",
                path.display()
            );
            print!("{}", cfg.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}
