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
    /// Run the integrity check (exits 1 if it finds mismatches): through a running
    /// gateway's admin API, or on a stopped gateway's --data-dir and its central store.
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
    #[arg(long, value_name = "URL")]
    central: Option<String>,
}

impl TargetArgs {
    fn target(self) -> anyhow::Result<cardgate::durability_cli::Target> {
        cardgate::durability_cli::target(self.admin_url, self.token, self.config, self.data_dir, self.central)
    }
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
            let clean = runtime.block_on(cardgate::durability_cli::check(at.target()?))?;
            if !clean {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Operator(cmd) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cardgate::operator_cli::run(match cmd {
                OperatorCommand::Add { name, role, data_dir } => {
                    cardgate::operator_cli::Cmd::Add { name, role, data_dir }
                }
                OperatorCommand::List { data_dir } => cardgate::operator_cli::Cmd::List { data_dir },
            }))
        }
    }
}
