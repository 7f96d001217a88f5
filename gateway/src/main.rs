//! The `cardgate` command line. Errors end here: printed once, as one line, and the
//! exit status says so.

use std::path::PathBuf;
use std::process::ExitCode;

use cardgate::config::{Config, ListenAddr, LogFormat};
use cardgate::daemon::{ServeOptions, serve};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cardgate",
    version,
    about = "Transaction gateway of the campus one-card system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Manage admin API operators (while the daemon runs, through its control socket).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Write a backup into a new directory inside DIR: through a running gateway's admin
    /// API (--admin-url, a data_admin token), or from a stopped gateway's --data-dir.
    Backup {
        dir: PathBuf,
        #[command(flatten)]
        at: TargetArgs,
    },
    /// Bring a STOPPED gateway's data directory back to exactly a backup. Refuses a
    /// damaged or partial backup, a directory in use, and one holding a database unless
    /// --force (which moves it aside).
    Restore {
        backup: PathBuf,
        /// The data directory to restore into (default: the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML configuration file (for the terminal key file and data_dir).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Replace the database in the data directory (it is moved aside, not deleted).
        #[arg(long)]
        force: bool,
    },
    /// Run the integrity check (exits 1 if it finds mismatches, 2 if it could not read the
    /// central store and found none in the journal): through a running gateway's admin
    /// API, or on a stopped gateway's --data-dir and its central store.
    Check {
        #[command(flatten)]
        at: TargetArgs,
    },
}

#[derive(clap::Args)]
struct TargetArgs {
    /// A running gateway's admin API, e.g. http://127.0.0.1:7780.
    #[arg(long, value_name = "URL")]
    admin_url: Option<String>,
    /// A data_admin or director token (default: $CARDGATE_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// TOML configuration file of a stopped gateway (data_dir, terminal key, central store).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A stopped gateway's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The central store to compare with (default: the config's, else DATA_DIR/central.db).
    #[arg(long, value_name = "URL", env = "CARDGATE_CENTRAL")]
    central: Option<String>,
}

impl TargetArgs {
    fn target(self) -> anyhow::Result<cardgate::durability_cli::Target> {
        cardgate::durability_cli::target(self.admin_url, self.token, self.config, self.data_dir, self.central)
    }
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Add an operator and print its bearer token, once. Creates the data directory if
    /// there is none yet.
    Add {
        name: String,
        /// director, system_admin, data_admin, card_desk, door_admin, attendance_admin
        #[arg(long)]
        role: String,
        /// sled data directory (default ./data).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Set a console password, typed at a prompt (not echoed).
        #[arg(long, conflicts_with = "password_file")]
        password: bool,
        /// Set a console password from the first line of FILE (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Set or reset an operator's console password (its owner changes it at the next
    /// sign-in). Typed at a prompt unless --password-file is given.
    Password {
        name: String,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The first line of FILE (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// List operators.
    List {
        /// sled data directory (default ./data); must exist.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
}

/// A listener that may be switched off: `""` as in the file's `admin_listen = ""`, so
/// that the flag and the environment variable can say what the file can.
#[derive(Clone, Debug)]
struct SwitchableListen(Option<ListenAddr>);

impl std::str::FromStr for SwitchableListen {
    type Err = String;

    fn from_str(s: &str) -> Result<SwitchableListen, String> {
        if s.trim().is_empty() {
            return Ok(SwitchableListen(None));
        }
        s.parse().map(|a| SwitchableListen(Some(a)))
    }
}

/// Flags override environment variables, which override the file (docs/CONFIGURATION.md).
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, env = "CARDGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Terminal listener, HOST:PORT (default 127.0.0.1:7700; port 0 picks a free one).
    #[arg(long, env = "CARDGATE_LISTEN")]
    listen: Option<ListenAddr>,
    /// Prometheus listener, HOST:PORT (default 127.0.0.1:9700; "" switches it off).
    #[arg(long, env = "CARDGATE_METRICS_LISTEN")]
    metrics_listen: Option<SwitchableListen>,
    /// Admin API listener, HOST:PORT (default 127.0.0.1:7780; "" switches it off).
    #[arg(long, env = "CARDGATE_ADMIN_LISTEN")]
    admin_listen: Option<SwitchableListen>,
    /// sled data directory (default ./data).
    #[arg(long, env = "CARDGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Maximum concurrent terminal connections.
    #[arg(long)]
    connections_max: Option<usize>,
    /// Central store URL: sqlite://PATH or postgres://USER@HOST:PORT/DB
    /// (default sqlite://DATA_DIR/central.db).
    #[arg(long, value_name = "URL", env = "CARDGATE_CENTRAL")]
    central: Option<String>,
    /// Create the demo campus on first start (documented keys: never for real money).
    #[arg(long)]
    demo: bool,
    /// Demo accounts (with one card each).
    #[arg(long)]
    demo_accounts: Option<u64>,
    /// Demo POS terminals.
    #[arg(long)]
    demo_terminals: Option<u64>,
    /// Log lines as text or JSON (default text).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl ServeArgs {
    fn apply(self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = v.0;
        }
        if let Some(v) = self.admin_listen {
            config.admin_listen = v.0;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.central {
            config.central.url = Some(v);
        }
        if let Some(v) = self.connections_max {
            config.limits.connections_max = v;
        }
        if let Some(v) = self.demo_accounts {
            config.demo.accounts = v;
        }
        if let Some(v) = self.demo_terminals {
            config.demo.pos_terminals = v;
        }
        if let Some(v) = self.log_format {
            config.log_format = v;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cardgate: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let mut config = Config::load(args.config.as_deref())?;
            let demo = args.demo;
            args.apply(&mut config);
            cardgate::logging::init(config.log_format, config.tz_offset_minutes);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config, ServeOptions { demo }))?;
            Ok(())
        }
        Command::Backup { dir, at } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cardgate::durability_cli::backup(&dir, at.target()?))
        }
        Command::Restore {
            backup,
            data_dir,
            config,
            force,
        } => {
            let mut config = Config::load(config.as_deref())?;
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cardgate::durability_cli::restore(&backup, &config, force))
        }
        Command::Check { at } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            // A check that could not run checked nothing: 2, as for a store it could not
            // read, never 1, which says records disagree.
            let outcome = match at
                .target()
                .and_then(|t| runtime.block_on(cardgate::durability_cli::check(t)))
            {
                Ok(outcome) => outcome,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    std::process::exit(2);
                }
            };
            match outcome.exit_code() {
                0 => Ok(()),
                code => std::process::exit(code),
            }
        }
        Command::Operator(cmd) => {
            let defaults = Config::default();
            cardgate::logging::init(defaults.log_format, defaults.tz_offset_minutes);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            use cardgate::operator_cli::{Cmd, PasswordFrom};
            runtime.block_on(cardgate::operator_cli::run(match cmd {
                OperatorCommand::Add {
                    name,
                    role,
                    data_dir,
                    password,
                    password_file,
                } => Cmd::Add {
                    name,
                    role,
                    data_dir,
                    password: match (password_file, password) {
                        (Some(f), _) => Some(PasswordFrom::File(f)),
                        (None, true) => Some(PasswordFrom::Prompt),
                        (None, false) => None,
                    },
                },
                OperatorCommand::Password {
                    name,
                    data_dir,
                    password_file,
                } => Cmd::Password {
                    name,
                    data_dir,
                    from: password_file.map_or(PasswordFrom::Prompt, PasswordFrom::File),
                },
                OperatorCommand::List { data_dir } => Cmd::List { data_dir },
            }))
        }
    }
}

/// An error and its causes as one line, each cause once: a cause whose text the line
/// already holds (an error that repeats its source in its own message) is left out.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[test]
    fn an_error_chain_is_one_line_with_each_cause_once() {
        let e = anyhow::Error::new(Repeats {
            source: std::io::Error::other("disk on fire"),
        });
        assert_eq!(one_line(&e), "outer: disk on fire");
        let e = anyhow::Error::new(std::io::Error::other("a\nb")).context("reading x");
        assert_eq!(one_line(&e), "reading x: a b");
    }

    #[test]
    fn a_listener_flag_or_variable_of_nothing_switches_it_off() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "cardgate",
            "serve",
            "--admin-listen",
            "",
            "--metrics-listen",
            "127.0.0.1:1",
        ])
        .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve");
        };
        let mut config = Config::default();
        args.apply(&mut config);
        assert!(config.admin_listen.is_none());
        assert_eq!(
            config.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:1")
        );
        assert!("nowhere".parse::<SwitchableListen>().is_err());
    }
}
