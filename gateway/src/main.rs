//! The `cardgate` command line. Errors end here as `anyhow` with context.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use cardgate::config::Config;
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
    /// Manage admin API operators (works on the data directory while the daemon is stopped).
    #[command(subcommand)]
    Operator(OperatorCommand),
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Add an operator and print its bearer token, once.
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
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Terminal listener address (default 127.0.0.1:7700; port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Prometheus listener address (default 127.0.0.1:9700).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Admin API listener address (default 127.0.0.1:7780).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// sled data directory (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Maximum concurrent terminal connections.
    #[arg(long)]
    connections_max: Option<usize>,
    /// Central store URL: sqlite://PATH or postgres://USER@HOST:PORT/DB
    /// (default sqlite://DATA_DIR/central.db).
    #[arg(long, value_name = "URL")]
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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let mut config = Config::load(args.config.as_deref())?;
            if let Some(v) = args.listen {
                config.listen = v;
            }
            if let Some(v) = args.metrics_listen {
                config.metrics_listen = Some(v);
            }
            if let Some(v) = args.admin_listen {
                config.admin_listen = Some(v);
            }
            if let Some(v) = args.data_dir {
                config.data_dir = v;
            }
            if let Some(v) = args.central {
                config.central.url = Some(v);
            }
            if let Some(v) = args.connections_max {
                config.limits.connections_max = v;
            }
            if let Some(v) = args.demo_accounts {
                config.demo.accounts = v;
            }
            if let Some(v) = args.demo_terminals {
                config.demo.pos_terminals = v;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config, ServeOptions { demo: args.demo }))
        }
        Command::Operator(cmd) => {
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
