//! `cardgate-loadtest`: a campus of demo terminals at 12:05 against a running gateway.
//!
//! Closed loop (the default: each terminal sends its next request when the last is
//! answered) finds the maximum throughput; `--rate` runs an open loop at a target
//! arrival rate and measures latency from when each request was due. Prints a table (or
//! `--json`) and exits non-zero if anything happened that the run did not expect: a
//! system error, a refused or broken connection, a timeout, a lost card approved, an
//! offline sale not uploaded, or money that does not add up (`--check-conservation`).
//!
//! Offline POS: `--offline-pct P --offline-sales N` takes P percent of the terminals
//! offline once mid-run to sell N each, then reconnect and upload; `--skip-every K` leaves
//! a sequence number unused after every K, and the report names them, for the daily
//! completeness report to be checked against.
//!
//! Doors: `--doors N --door-rate R` adds demo door controllers 100001.. beside the POS
//! terminals: each syncs its door group's cache, then checks random demo cards at its
//! door, alternating in and out; their latency and answers by reason are reported
//! apart. `--door-revoke-after S --door-revoke-permission ID` has the door admin revoke
//! a permission S seconds into the window and times the controllers' delta syncs.
//!
//! Ten thousand connections: the tool raises its own file-descriptor limit and, when
//! 127.0.0.1 runs out of ephemeral ports towards the gateway, connects from 127.0.0.2,
//! 127.0.0.3, ... (or from `--source-addrs`). The gateway needs the matching
//! `--demo-terminals`, and its own `limits.connections_max` (20,000 by default).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use cardgate_loadtest::desk::{HttpCardDesk, HttpDoorAdmin, LOST_CARD_ENDPOINT_EXAMPLE, REVOKE_ENDPOINT_EXAMPLE};
use cardgate_loadtest::door_fleet::{DEFAULT_DOOR_PAGE_ENTRIES, DoorConfig, RevokePlan};
use cardgate_loadtest::mix::Mix;
use cardgate_loadtest::run::{RunConfig, run_with_doors};
use cardgate_loadtest::source::parse_source_addrs;
use clap::Parser;

/// File descriptors the tool needs beyond one per terminal: the runtime, the balance
/// scans' connections, stdio, the operator API.
const FD_HEADROOM: u64 = 256;

#[derive(Parser, Debug)]
#[command(
    name = "cardgate-loadtest",
    about = "Terminal simulator for cardgate: a campus of POS terminals at lunch time",
    after_help = after_help()
)]
struct Args {
    /// Gateway terminal address.
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent POS terminal connections (demo terminals first-terminal.. onwards; the
    /// gateway needs at least that many --demo-terminals). 0 with --doors: doors only.
    #[arg(long)]
    terminals: u64,
    /// Length of the measured window in seconds, after ramp-up.
    #[arg(long, required_unless_present = "requests")]
    duration: Option<f64>,
    /// Stop after this many requests in total (instead of, or as well as, --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Spread the terminals' sign-ons over this many seconds; each starts sending as
    /// soon as it is signed on, and the measured window opens when the last one is. With
    /// 0 every terminal signs on first and all start together.
    #[arg(long, default_value_t = 0.0)]
    ramp_up: f64,
    /// Open loop: requests per second across all terminals, Poisson arrivals. Without it
    /// the run is a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: unanswered requests per connection at most (the gateway's
    /// pipeline_depth_max from SIGN_ON_OK is the ceiling).
    #[arg(long)]
    pipeline_max: Option<u16>,
    /// Percent of requests that reverse one of the terminal's recent approved purchases.
    #[arg(long, default_value_t = 2)]
    reversal_pct: u8,
    /// Percent of requests that are balance inquiries.
    #[arg(long, default_value_t = 10)]
    balance_pct: u8,
    /// Demo accounts to spread the traffic over (cards 1000000000 + 1..=accounts).
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// The first demo terminal id to use; terminals are consecutive from it.
    #[arg(long, default_value_t = 1)]
    first_terminal: u64,
    /// Smallest purchase, in fen.
    #[arg(long, default_value_t = 100)]
    amount_min_fen: i64,
    /// Largest purchase, in fen.
    #[arg(long, default_value_t = 1_500)]
    amount_max_fen: i64,
    /// Terminals signing on at once (the rest wait their turn).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// An answer slower than this ends the terminal's connection and fails the run.
    #[arg(long, default_value_t = 10_000)]
    answer_timeout_ms: u64,
    /// Local addresses to connect from, round-robin: "127.0.0.2,127.0.0.3" or
    /// "127.0.0.2-127.0.0.9". Default: the kernel's choice, then 127.0.0.2, 127.0.0.3, ...
    /// whenever one runs out of ports (loopback targets only).
    #[arg(long, value_parser = parse_sources)]
    source_addrs: Option<Sources>,
    /// Seed for cards, amounts and the mix (random by default; printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Cards to report lost halfway through the measured window; every purchase with
    /// one after the report is acknowledged must be declined card_lost. Needs
    /// --lost-card-endpoint; skipped (and said so) without it.
    #[arg(long, default_value_t = 0)]
    lost_cards: u64,
    /// Operator API endpoint that reports a card lost: POSTed with
    /// {"card_no": N, "reason": "cardgate-loadtest"}; "{card}" in the URL is replaced by
    /// the card number. The gateway's own is
    /// http://ADMIN_LISTEN/api/v1/cards/{card}/lost, with a card_desk token.
    #[arg(long)]
    lost_card_endpoint: Option<String>,
    /// Bearer token for the operator API.
    #[arg(long, env = "CARDGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Percent of purchases made with a card already reported lost (once there is one).
    #[arg(long, default_value_t = 1)]
    lost_probe_pct: u8,
    /// Read every card's balance (BALANCE_INQUIRY) before and after, and check that the
    /// sum before, minus approved purchases, plus approved reversals, equals the sum
    /// after. Only valid when nothing else moves money on these cards meanwhile.
    #[arg(long)]
    check_conservation: bool,
    /// Connections the balance scans use.
    #[arg(long, default_value_t = 64)]
    scan_connections: u64,
    /// Percent of terminals (rounded up) that lose the gateway once, somewhere between a
    /// quarter and three quarters of the run (at its end at the latest): each waits for
    /// its answers, hangs up, sells --offline-sales offline, signs on again and uploads
    /// them in batches of the gateway's batch_max (a batch that got system_error or lost
    /// its connection is sent again), then sells online again. Needs POS terminals.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    offline_pct: u8,
    /// Sales each offline terminal makes while offline, under the next sequence numbers,
    /// within the OFFLINE_LIMITS it was told at sign-on (per sale, per card a day, per
    /// terminal: fewer when they stop it, and the report says how many).
    #[arg(long, default_value_t = 0)]
    offline_sales: u32,
    /// Every terminal leaves one sequence number unused after every K it uses (online
    /// and offline); the report (--json: sequences.terminals[].skipped) names each, so
    /// that the gateway's completeness report must show exactly these as missing.
    #[arg(long, default_value_t = 0)]
    skip_every: u64,
    /// Door controllers beside the POS terminals: demo controllers 100000 + first-door
    /// onwards (the gateway's demo needs at least that many door controllers).
    #[arg(long, default_value_t = 0)]
    doors: u64,
    /// The first door controller's number (terminal 100000 + it, door it).
    #[arg(long, default_value_t = 1)]
    first_door: u64,
    /// Open loop for the doors: access checks per second across the controllers,
    /// Poisson arrivals. Without it each controller checks the next card as soon as the
    /// last is answered.
    #[arg(long)]
    door_rate: Option<f64>,
    /// Keep every door cache entry (about 1 MB per controller with 20,000 demo cards)
    /// instead of counting them.
    #[arg(long)]
    door_keep_cache: bool,
    /// The largest cache page the controllers ask for (DOOR_CACHE_SYNC's
    /// page_entries_max): 0 for the four-entry DOOR_CACHE_PAGE, else DOOR_CACHE_BULK
    /// frames of up to this many entries (the gateway sends at most 512).
    #[arg(long, default_value_t = DEFAULT_DOOR_PAGE_ENTRIES)]
    door_page_entries: u16,
    /// Seconds into the measured window at which the door admin revokes
    /// --door-revoke-permission; the report times how long until the controllers
    /// acknowledged the new cache version. Without it, the first --lost-cards report is
    /// timed the same way.
    #[arg(long, requires = "door_revoke_permission")]
    door_revoke_after: Option<f64>,
    /// Percent of door controllers (rounded up) that lose the gateway once, somewhere
    /// between a quarter and three quarters of the run: each decides --door-offline-events
    /// checks from its cache, signs on again, uploads them, and uploads the first batch a
    /// second time (it must store nothing twice).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    door_offline_pct: u8,
    /// Checks each offline door controller decides while offline.
    #[arg(long, default_value_t = 0)]
    door_offline_events: u32,
    /// The permission to revoke (its id in the operator API).
    #[arg(long, requires = "door_revoke_after")]
    door_revoke_permission: Option<u64>,
    /// Operator API endpoint that revokes a permission, POSTed with a door_admin token;
    /// "{id}" in the URL is replaced by the permission id.
    #[arg(long, default_value = REVOKE_ENDPOINT_EXAMPLE)]
    door_revoke_endpoint: String,
    /// Print the report as JSON on stdout (and no progress bar).
    #[arg(long)]
    json: bool,
}

fn after_help() -> String {
    format!(
        "Examples:\n  \
         closed loop, max throughput:  cardgate-loadtest --target 127.0.0.1:7700 --terminals 1000 --duration 10\n  \
         open loop at 30,000/s:        cardgate-loadtest --target 127.0.0.1:7700 --terminals 10000 --ramp-up 5 --rate 30000 --duration 20\n  \
         money adds up:                cardgate-loadtest --target 127.0.0.1:7700 --terminals 256 --duration 10 --check-conservation\n  \
         lost cards mid-run:           ... --lost-cards 20 --lost-card-endpoint '{LOST_CARD_ENDPOINT_EXAMPLE}' \
         --admin-token TOKEN\n  \
         offline POS, numbers skipped: ... --offline-pct 10 --offline-sales 100 --skip-every 50 --check-conservation --json\n  \
         doors beside the POS:         ... --terminals 1000 --rate 20000 --doors 500 --door-rate 2000 --duration 30\n  \
         a revocation reaching doors:  ... --doors 500 --door-revoke-after 5 --door-revoke-permission 1 --admin-token TOKEN\n\n\
         Then the day's completeness report (GET /api/v1/reports/completeness?date=YYYY-MM-DD) shows, per terminal,\n\
         no missing sequence numbers but those in the run's sequences.terminals[].skipped"
    )
}

/// A parsed `--source-addrs` (a newtype, so that clap takes it as one value).
#[derive(Clone, Debug)]
struct Sources(Vec<std::net::IpAddr>);

fn parse_sources(s: &str) -> Result<Sources, String> {
    parse_source_addrs(s).map(Sources)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let needed = args.terminals + args.doors + FD_HEADROOM;
    let limit = rlimit::increase_nofile_limit(needed.max(65_536)).context("raising the file descriptor limit")?;
    anyhow::ensure!(
        limit >= needed,
        "{} terminals need about {needed} file descriptors but the hard limit is {limit}; raise it (ulimit -Hn) or use fewer terminals",
        args.terminals + args.doors
    );
    let desk = match &args.lost_card_endpoint {
        Some(url) => Some(HttpCardDesk::new(url, args.admin_token.clone())?),
        None => {
            if args.lost_cards > 0 {
                eprintln!(
                    "note: --lost-cards {} skipped: no --lost-card-endpoint given (the operator API reports cards lost)",
                    args.lost_cards
                );
            }
            None
        }
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let cfg = RunConfig {
        target: args.target,
        terminals: args.terminals,
        first_terminal: args.first_terminal,
        accounts: args.accounts,
        duration: args
            .duration
            .map(Duration::try_from_secs_f64)
            .transpose()
            .context("--duration")?,
        requests: args.requests,
        ramp_up: Duration::try_from_secs_f64(args.ramp_up).context("--ramp-up")?,
        rate: args.rate,
        pipeline_max: args.pipeline_max,
        mix: Mix {
            reversal_pct: args.reversal_pct,
            balance_pct: args.balance_pct,
            lost_probe_pct: args.lost_probe_pct,
        },
        amount_min_fen: args.amount_min_fen,
        amount_max_fen: args.amount_max_fen,
        connect_concurrency: args.connect_concurrency,
        answer_timeout: Duration::from_millis(args.answer_timeout_ms),
        source_addrs: args.source_addrs.clone().map(|s| s.0).unwrap_or_default(),
        seed,
        lost_cards: args.lost_cards,
        check_conservation: args.check_conservation,
        scan_connections: args.scan_connections,
        progress: !args.json && std::io::stderr().is_terminal(),
        offline_pct: args.offline_pct,
        offline_sales: args.offline_sales,
        skip_every: args.skip_every,
    };
    let revoke = match (args.door_revoke_after, args.door_revoke_permission) {
        (Some(after), Some(permission)) => Some(RevokePlan {
            after: Duration::try_from_secs_f64(after).context("--door-revoke-after")?,
            permission,
            admin: HttpDoorAdmin::new(&args.door_revoke_endpoint, args.admin_token.clone())?,
        }),
        _ => None,
    };
    let doors = DoorConfig {
        controllers: args.doors,
        first_controller: args.first_door,
        rate: args.door_rate,
        keep_cache: args.door_keep_cache,
        page_entries: args.door_page_entries,
        revoke,
        offline_pct: args.door_offline_pct,
        offline_events: args.door_offline_events,
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = run_with_doors(cfg, doors, desk, stop).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
