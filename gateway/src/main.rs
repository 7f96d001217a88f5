//! The `cardgate` command line. Errors end here as `anyhow` with context.

use std::net::SocketAddr;
use std::path::PathBuf;

use cardgate::config::{Config, LogFormat};
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
    /// Log lines as text or JSON (default text).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> anyhow::Result<()> {
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
            if let Some(v) = args.log_format {
                config.log_format = v;
            }
            cardgate::logging::init(config.log_format, config.tz_offset_minutes);
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                commit = env!("CARDGATE_GIT_COMMIT"),
                business_time_zone = %format!("UTC{}", cardgate::logging::utc_offset(config.tz_offset_minutes)),
                "cardgate starting; log times are in the business time zone"
            );
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config, ServeOptions { demo: args.demo }))
        }
        Command::Operator(cmd) => {
            let defaults = Config::default();
            cardgate::logging::init(defaults.log_format, defaults.tz_offset_minutes);
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
