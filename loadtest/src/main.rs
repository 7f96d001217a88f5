//! `cardgate-loadtest`: signs on N demo terminals against a running gateway and makes
//! purchases as fast as each is answered (closed loop), then reports throughput, latency
//! percentiles and answers by code. Exits non-zero if any answer was one the run did not
//! expect: a system error, a refused or broken connection, a timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cardgate_codec::{DeclineReason, Message};
use cardgate_ledger::demo::{demo_card, demo_secret};
use cardgate_loadtest::client::{ClientError, TerminalClient};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug, Clone)]
#[command(name = "cardgate-loadtest", about = "Terminal simulator for cardgate")]
struct Args {
    /// Gateway terminal address.
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent terminal connections.
    #[arg(long)]
    terminals: u64,
    /// Run for this many seconds after every terminal has signed on.
    #[arg(long, conflicts_with = "requests", required_unless_present = "requests")]
    duration: Option<u64>,
    /// Stop after this many purchases in total.
    #[arg(long)]
    requests: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The first demo terminal id to use; terminals are consecutive from it.
    #[arg(long, default_value_t = 1)]
    first_terminal: u64,
    /// Demo accounts to spread purchases over (cards `1000000000 + 1..=accounts`).
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// Smallest purchase, in fen.
    #[arg(long, default_value_t = 100)]
    amount_min_fen: i64,
    /// Largest purchase, in fen.
    #[arg(long, default_value_t = 1_500)]
    amount_max_fen: i64,
    /// Connections being set up at once (the rest wait their turn).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// An answer slower than this counts as a failure.
    #[arg(long, default_value_t = 10_000)]
    answer_timeout_ms: u64,
}

/// What one terminal saw.
struct TerminalReport {
    latency_us: Histogram<u64>,
    answers: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

impl TerminalReport {
    fn new() -> TerminalReport {
        TerminalReport {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            answers: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }

    fn fail(&mut self, what: String) {
        *self.failures.entry(what).or_default() += 1;
    }
}

#[derive(Serialize)]
struct Report {
    terminals: u64,
    connected: u64,
    seconds: f64,
    answers_total: u64,
    throughput_per_s: f64,
    latency_ms: Percentiles,
    answers: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn answer_code(m: &Message) -> Result<String, String> {
    match m {
        Message::Approved(_) => Ok("approved".into()),
        Message::Declined(d) if d.reason == DeclineReason::SystemError => Err("declined:system_error".into()),
        Message::Declined(d) => Ok(format!("declined:{}", d.reason.as_str())),
        other => Err(format!("unexpected:{:#04x}", other.msg_type())),
    }
}

fn failure_name(e: &ClientError) -> String {
    match e {
        ClientError::Connect(e) => format!("connect:{}", e.kind()),
        ClientError::Codec(_) => "protocol".into(),
        ClientError::Refused(code) => format!("refused:{}", code.as_str()),
        ClientError::Closed => "closed".into(),
        ClientError::Unexpected(_) => "unexpected".into(),
        ClientError::Timeout(_) => "timeout".into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.terminals > 0, "--terminals must be at least 1");
    anyhow::ensure!(
        0 < args.amount_min_fen && args.amount_min_fen <= args.amount_max_fen,
        "need 0 < --amount-min-fen <= --amount-max-fen"
    );
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let report = run(args.clone()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if !report.failures.is_empty() || report.connected < report.terminals {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<Report> {
    let n = args.terminals;
    let start_gate = Arc::new(tokio::sync::Barrier::new(n as usize + 1));
    let connect_slots = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency));
    // Requests left to send when running by count; i64 so that it may go below zero.
    let budget = Arc::new(AtomicI64::new(args.requests.map(|r| r as i64).unwrap_or(i64::MAX)));
    let deadline: Arc<tokio::sync::OnceCell<Instant>> = Arc::new(tokio::sync::OnceCell::new());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let args = args.clone();
        let gate = start_gate.clone();
        let slots = connect_slots.clone();
        let budget = budget.clone();
        let deadline = deadline.clone();
        tasks.spawn(async move {
            let terminal_id = args.first_terminal + i;
            let mut report = TerminalReport::new();
            let client = {
                let _slot = slots.acquire().await;
                TerminalClient::connect(args.target, terminal_id, &demo_secret(terminal_id)).await
            };
            let mut client = match client {
                Ok(c) => Some(c),
                Err(e) => {
                    report.fail(format!("sign_on:{}", failure_name(&e)));
                    None
                }
            };
            gate.wait().await;
            let connected = client.is_some();
            if let Some(c) = client.as_mut() {
                drive(c, &args, &budget, &deadline, &mut report).await;
            }
            (connected, report)
        });
    }
    start_gate.wait().await;
    let started = Instant::now();
    if let Some(secs) = args.duration {
        let _ = deadline.set(started + Duration::from_secs(secs));
    }
    let mut total = TerminalReport::new();
    let mut connected = 0;
    while let Some(r) = tasks.join_next().await {
        let (ok, r) = r.context("a terminal task panicked")?;
        connected += u64::from(ok);
        total.latency_us.add(&r.latency_us).context("merging histograms")?;
        for (k, v) in r.answers {
            *total.answers.entry(k).or_default() += v;
        }
        for (k, v) in r.failures {
            *total.failures.entry(k).or_default() += v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let answers_total: u64 = total.answers.values().sum();
    let h = &total.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        terminals: n,
        connected,
        seconds,
        answers_total,
        throughput_per_s: answers_total as f64 / seconds,
        latency_ms: Percentiles {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        },
        answers: total.answers,
        failures: total.failures,
    })
}

/// Purchases in a closed loop until the deadline or the shared budget runs out.
async fn drive(
    client: &mut TerminalClient,
    args: &Args,
    budget: &AtomicI64,
    deadline: &tokio::sync::OnceCell<Instant>,
    report: &mut TerminalReport,
) {
    let timeout = Duration::from_millis(args.answer_timeout_ms);
    let mut seq = client.sign_on.last_tx_seq;
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    loop {
        if let Some(d) = deadline.get()
            && Instant::now() >= *d
        {
            return;
        }
        if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return;
        }
        seq += 1;
        let card = demo_card(rng.random_range(1..=args.accounts));
        let amount = rng.random_range(args.amount_min_fen..=args.amount_max_fen);
        let sent = Instant::now();
        let purchase = cardgate_codec::Purchase {
            tx_seq: seq,
            card,
            amount_fen: amount,
            terminal_time_ms: cardgate_loadtest::client::now_ms(),
        };
        match client.request_timeout(Message::Purchase(purchase), timeout).await {
            Ok(answer) => {
                let us = sent.elapsed().as_micros() as u64;
                let _ = report.latency_us.record(us.max(1));
                match answer_code(&answer) {
                    Ok(code) => *report.answers.entry(code).or_default() += 1,
                    Err(code) => report.fail(code),
                }
            }
            Err(e) => {
                report.fail(failure_name(&e));
                return;
            }
        }
    }
}

fn print_report(r: &Report) {
    println!("terminals        {} ({} signed on)", r.terminals, r.connected);
    println!("duration         {:.2} s", r.seconds);
    println!("answers          {}", r.answers_total);
    println!("throughput       {:.0} /s", r.throughput_per_s);
    println!(
        "latency (ms)     p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.p999, r.latency_ms.max
    );
    println!("answers by code");
    for (k, v) in &r.answers {
        println!("  {k:<32} {v}");
    }
    if !r.failures.is_empty() {
        println!("FAILURES (answers this run did not expect)");
        for (k, v) in &r.failures {
            println!("  {k:<32} {v}");
        }
    }
}
