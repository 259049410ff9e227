//! The `vaultgram` binary: parses the command line, loads the config, and
//! hands over to the library. `anyhow` lives here and nowhere else.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vaultgram::config::{self, Config, Operator};
use vaultgram::migrate;
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
    /// The service: the Telegram userbot (etcd election leader only), the
    /// Unix-socket server and the HTTP endpoints on `http.listen`. Stops on
    /// SIGTERM or Ctrl-C: stop intake, save the Telegram session, quit the
    /// client, finish handlers, resign, exit.
    Run,
    /// Interactive Telegram login (phone, code, 2FA password); stores the
    /// transit-encrypted session in Vault, never on disk.
    Login,
    /// Send one command to a running `run` over its Unix socket.
    Ctl {
        /// Print the JSON reply instead of its text.
        #[arg(long)]
        json: bool,
        /// The socket (default: `ipc.socket` of the config; nothing else of
        /// the config is read).
        #[arg(long)]
        socket: Option<std::path::PathBuf>,
        /// The command, e.g. `/kv get secret/telegram`; `-` reads it from
        /// stdin, as a command carrying a secret (`/kv put … password=…`,
        /// `/unlock CODE`) must be given: argv is visible to every local
        /// user.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<String>,
    },
    /// Read commands line by line from stdin, one reply per command on
    /// stdout (the same dispatcher as Telegram).
    Console {
        /// Operator to act as (default: the one whose unix_user is you).
        #[arg(long = "as")]
        as_operator: Option<String>,
        /// One JSON object per reply.
        #[arg(long)]
        json: bool,
    },
    /// Move existing secrets into Vault (vpnbot, ValhallaBot), as an admin
    /// operator.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Check Vault, etcd, certificates, leadership and the running
    /// service. Exit 0 all ok, 1 any warning, 2 any failure.
    Doctor {
        /// `{"status":"ok|warn|fail","checks":[…]}` instead of a table.
        #[arg(long)]
        json: bool,
        /// The etcd backend quota the DB size is compared with.
        #[arg(long, default_value_t = vaultgram::doctor::DEFAULT_ETCD_QUOTA_BYTES)]
        etcd_quota_bytes: u64,
    },
    /// Write files other programs read, from Vault, as an admin operator.
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
}

/// Flags every import takes.
#[derive(Debug, clap::Args)]
struct ImportFlags {
    /// Admin operator to act as (default: the one whose unix_user is you).
    #[arg(long = "as")]
    as_operator: Option<String>,
    /// Report what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace a different stored secret instead of skipping the row.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Debug, Subcommand)]
enum ImportSource {
    /// vpnbot's managed-secrets.json: user MTProto secrets to
    /// mtproto/admin/<owner_user_id>, the placeholder, the generation.
    Vpnbot {
        /// The managed-secrets.json (`-`: stdin).
        file: PathBuf,
        #[command(flatten)]
        flags: ImportFlags,
    },
    /// ValhallaBot's export `[{"agent","token_sha256","token_encrypted"}]`:
    /// Fernet-decrypted, digest-checked agent tokens to agents/<agent>.
    Valhalla {
        /// The JSON export (`-`: stdin).
        file: PathBuf,
        /// File with the current Fernet key (AGENT_TOKEN_ENCRYPTION_KEY).
        #[arg(long)]
        key_file: PathBuf,
        /// File with older keys (AGENT_TOKEN_ENCRYPTION_OLD_KEYS), comma-
        /// and/or newline-separated.
        #[arg(long)]
        old_keys_file: Option<PathBuf>,
        #[command(flatten)]
        flags: ImportFlags,
    },
}

#[derive(Debug, Subcommand)]
enum ExportTarget {
    /// vpnbot-compatible managed-secrets.json for the MTProto proxy: every
    /// live secret under mtproto/*/*.
    Mtproxy {
        /// Admin operator to act as (default: the one whose unix_user is you).
        #[arg(long = "as")]
        as_operator: Option<String>,
        /// The document's generation (default: the stored one, else 0).
        #[arg(long)]
        generation: Option<u64>,
        /// Write here atomically with mode 0600 (default: stdout).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Import { .. } | Command::Export { .. } | Command::Doctor { .. } => {
            telemetry::init_with_default(cli.log_format, telemetry::QUIET_TOOL_FILTER)
        }
        _ => telemetry::init(cli.log_format),
    }
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

/// glibc gives busy threads arenas of their own (up to 8 per core); two
/// are plenty for a broker's few threads and keep RSS lower (measured:
/// −0.2 MB idle, −0.5 MB after 5,000 commands, docs/PERFORMANCE.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config::resolve_path(cli.config.as_deref(), &config::process_env);
    if let Command::Ctl {
        json,
        socket,
        words,
    } = &cli.command
    {
        // A client: it needs the socket's path, not the broker's credentials.
        let socket = match socket {
            Some(s) => s.clone(),
            None => Config::load_socket_path(&path)?,
        };
        return run_ctl(&socket, *json, words);
    }
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
        Command::Run => {
            limit_malloc_arenas();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(vaultgram::service::run(cfg, stop_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Login => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let app = vaultgram::dispatch::App::start(cfg).await?;
                let version = vaultgram::transport::telegram::login(&app, &mut TerminalPrompt)
                    .await
                    .context("login")?;
                eprintln!(
                    "session stored in Vault at {}/{} (version {version}), transit-encrypted",
                    app.cfg.vault.kv_mount, app.cfg.telegram.session_path
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        // Handled above, before the config is loaded.
        Command::Ctl { .. } => anyhow::bail!("ctl needs no service config"),
        Command::Console { as_operator, json } => {
            let op = resolve_operator(&cfg, as_operator.as_deref())?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let app = vaultgram::dispatch::App::start(cfg).await?;
                let renewer = tokio::spawn(app.broker.clone().run_renewer(std::future::pending()));
                let failed = vaultgram::transport::console::run(app, op, json).await?;
                renewer.abort();
                Ok(if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            })
        }
        Command::Import { source } => run_import(&cfg, source),
        Command::Doctor {
            json,
            etcd_quota_bytes,
        } => {
            let opts = vaultgram::doctor::Options { etcd_quota_bytes };
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(vaultgram::doctor::run(&cfg, &opts));
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::Export {
            target:
                ExportTarget::Mtproxy {
                    as_operator,
                    generation,
                    output,
                },
        } => {
            let op = resolve_operator(&cfg, as_operator.as_deref())?;
            let opts = migrate::vpnbot::ExportOptions { generation, output };
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(async {
                let session = migrate::Session::open(&cfg, &op).await?;
                migrate::vpnbot::export(&session, &opts).await
            })?;
            let secrets = report.secrets;
            let generation = report.generation;
            match &report.written {
                migrate::vpnbot::Written::Stdout => {
                    eprintln!("exported {secrets} secret(s), generation {generation}, to stdout")
                }
                migrate::vpnbot::Written::File(p) => eprintln!(
                    "exported {secrets} secret(s), generation {generation}, to {} (mode 0600)",
                    p.display()
                ),
                migrate::vpnbot::Written::Unchanged(p) => eprintln!(
                    "{} unchanged ({secrets} secret(s), generation {generation})",
                    p.display()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `import vpnbot|valhalla`: per-row lines on stderr (from the library),
/// the summary on stdout; exit 1 when a row was rejected.
fn run_import(cfg: &Config, source: ImportSource) -> anyhow::Result<ExitCode> {
    let flags = match &source {
        ImportSource::Vpnbot { flags, .. } | ImportSource::Valhalla { flags, .. } => flags,
    };
    let op = resolve_operator(cfg, flags.as_operator.as_deref())?;
    let opts = migrate::ImportOptions {
        dry_run: flags.dry_run,
        overwrite: flags.overwrite,
    };
    // Key files are checked before anything touches Vault.
    let keys = match &source {
        ImportSource::Valhalla {
            key_file,
            old_keys_file,
            ..
        } => Some(migrate::valhalla::Keys::load(
            key_file,
            old_keys_file.as_deref(),
        )?),
        ImportSource::Vpnbot { .. } => None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let summary = rt.block_on(async {
        let session = migrate::Session::open(cfg, &op).await?;
        match (&source, &keys) {
            (ImportSource::Vpnbot { file, .. }, _) => {
                migrate::vpnbot::import(&session, file, opts).await
            }
            (ImportSource::Valhalla { file, .. }, Some(keys)) => {
                migrate::valhalla::import(&session, file, keys, opts).await
            }
            (ImportSource::Valhalla { .. }, None) => unreachable!("keys are loaded above"),
        }
    })?;
    println!("{summary}");
    Ok(ExitCode::from(summary.exit_code()))
}

/// `--as NAME`, else the operator whose `unix_user` is the current user.
fn resolve_operator(cfg: &Config, as_operator: Option<&str>) -> anyhow::Result<Operator> {
    match as_operator {
        Some(name) => cfg
            .operator_by_name(name)
            .cloned()
            .with_context(|| format!("no operator named `{name}` in the config")),
        None => {
            let me = current_unix_user()?;
            cfg.operator_by_unix_user(&me)
                .cloned()
                .with_context(|| format!("no operator has unix_user = \"{me}\"; use --as NAME"))
        }
    }
}

/// The login name of the real uid (for `unix_user` matching).
fn current_unix_user() -> anyhow::Result<String> {
    let uid = unsafe { libc::getuid() };
    vaultgram::transport::socket::user_name(uid)
        .with_context(|| format!("uid {uid} has no entry in /etc/passwd"))
}

/// `login`'s questions on the terminal; the code and the password are read
/// without echo.
struct TerminalPrompt;

impl vaultgram::transport::telegram::LoginPrompt for TerminalPrompt {
    fn phone(&mut self) -> Result<String, vaultgram::transport::telegram::ChatError> {
        use std::io::Write;
        eprint!("Phone number (international format, e.g. +4915…): ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| vaultgram::transport::telegram::ChatError::Prompt(e.to_string()))?;
        let phone = line.trim().to_string();
        if phone.is_empty() {
            return Err(vaultgram::transport::telegram::ChatError::Prompt(
                "no phone number given".into(),
            ));
        }
        Ok(phone)
    }

    fn code(&mut self) -> Result<secrecy::SecretString, vaultgram::transport::telegram::ChatError> {
        rpassword::prompt_password("Login code (sent by Telegram; hidden): ")
            .map(secrecy::SecretString::from)
            .map_err(|e| vaultgram::transport::telegram::ChatError::Prompt(e.to_string()))
    }

    fn password(
        &mut self,
        hint: Option<&str>,
    ) -> Result<secrecy::SecretString, vaultgram::transport::telegram::ChatError> {
        let prompt = match hint {
            Some(h) if !h.is_empty() => format!("2FA password (hint: {h}; hidden): "),
            _ => "2FA password (hidden): ".to_string(),
        };
        rpassword::prompt_password(prompt)
            .map(secrecy::SecretString::from)
            .map_err(|e| vaultgram::transport::telegram::ChatError::Prompt(e.to_string()))
    }

    fn notice(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

/// SIGTERM or Ctrl-C, whichever comes first (the service's shutdown).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: shutting down");
        }
    }
}

/// `vaultgram ctl`: one line to the socket, its reply printed. What the
/// broker sent is escaped once more before it reaches a terminal.
fn run_ctl(socket: &std::path::Path, json: bool, words: &[String]) -> anyhow::Result<ExitCode> {
    use vaultgram::text::escape_text;
    let line = if words == ["-"] {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the command from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let line = vaultgram::transport::socket::join_words(words);
        // Every local user reads another's argv (`ps`): a command that
        // carries a secret is refused there, so that no script gets used to
        // it. (A line that does not parse goes to the broker, which refuses
        // it without echoing a word.)
        let secret = vaultgram::command::Command::parse_with_gate_flags(&line)
            .is_ok_and(|(c, flags)| c.input_is_secret() || flags.code.is_some());
        if secret {
            eprintln!(
                "error (invalid): this command carries a secret, and a command line is visible to every local user; give it on stdin instead: `vaultgram ctl -` and type it (nothing was sent)"
            );
            return Ok(ExitCode::from(2));
        }
        line
    };
    let rt = tokio::runtime::Runtime::new()?;
    let reply = rt.block_on(vaultgram::transport::socket::request(socket, &line))?;
    let v: serde_json::Value =
        serde_json::from_str(&reply).context("the broker sent a reply that is not JSON")?;
    if json {
        // JSON escapes C0 controls itself; the rest (C1, bidi) too here.
        println!("{}", escape_text(&reply));
    } else if v["ok"] == true {
        println!("{}", escape_text(v["text"].as_str().unwrap_or_default()));
    } else {
        eprintln!(
            "error ({}): {}",
            escape_text(v["error"]["kind"].as_str().unwrap_or("?")),
            escape_text(v["error"]["message"].as_str().unwrap_or("?"))
        );
    }
    Ok(if v["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
