//! The lunch-rush load generator against the real daemon: every answer is one the run
//! expects, and the money it says moved is exactly the money that moved (conservation
//! read back through the protocol). Terminals that go offline mid-run get every offline
//! sale posted exactly once, and the day's completeness report, once the central store
//! has caught up, shows nothing missing but the numbers the run skipped on purpose, and
//! the central store agreeing with the journal, terminal by terminal. Runs are bounded
//! by request count, never by time.

use std::path::Path;
use std::time::{Duration, Instant};

use cardgate_codec::CardNo;
use cardgate_loadtest::client::now_ms;
use cardgate_loadtest::desk::{CardDesk, DeskError, HttpCardDesk};
use cardgate_loadtest::mix::Mix;
use cardgate_loadtest::offline::BatchCounts;
use cardgate_loadtest::report::Report;
use cardgate_loadtest::run::{RunConfig, run};
use serde_json::Value;

use crate::harness::*;

fn config(d: &Daemon, terminals: u64, requests: u64) -> RunConfig {
    RunConfig {
        target: d.terminal_addr(),
        terminals,
        first_terminal: 1,
        accounts: DEMO_ACCOUNTS,
        duration: None,
        requests: Some(requests),
        ramp_up: Duration::ZERO,
        rate: None,
        pipeline_max: None,
        mix: Mix {
            reversal_pct: 10,
            balance_pct: 10,
            lost_probe_pct: 0,
        },
        amount_min_fen: 100,
        amount_max_fen: 1_500,
        connect_concurrency: 16,
        answer_timeout: Duration::from_secs(30),
        source_addrs: vec![],
        seed: 42,
        lost_cards: 0,
        check_conservation: true,
        scan_connections: 4,
        progress: false,
        offline_pct: 0,
        offline_sales: 0,
        skip_every: 0,
    }
}

async fn go(cfg: RunConfig) -> Report {
    run(cfg, None::<HttpCardDesk>, std::future::pending())
        .await
        .expect("the run completes")
}

fn assert_clean(r: &Report, requests: u64) {
    assert!(r.ok, "{}", r.table());
    assert_eq!(r.answers + r.warmup_answers, requests, "{}", r.table());
    let c = r.conservation.as_ref().expect("checked");
    assert!(c.holds(), "{}", r.table());
    assert_eq!(c.cards, DEMO_ACCOUNTS);
    assert_eq!(
        c.before_fen - c.after_fen,
        c.purchases_approved_fen - c.reversals_approved_fen + c.offline_posted_fen
    );
    assert!(
        r.money.purchases_approved > 0 && r.money.reversals_approved > 0,
        "{}",
        r.table()
    );
}

#[tokio::test]
async fn a_closed_loop_mix_moves_exactly_the_money_it_was_told_about() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let r = go(config(&d, 20, 2_000)).await;
    assert_clean(&r, 2_000);
    assert_eq!(r.mode, "closed");
    assert!(r.answers_by_code.contains_key("balance ok"), "{}", r.table());
}

#[tokio::test]
async fn an_open_loop_with_pipelining_stays_exact_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    // 40 due per terminal per second: with pipelining, several are often unanswered
    // at once on one connection.
    let r = go(RunConfig {
        rate: Some(2_000.0),
        ..config(&d, 50, 1_500)
    })
    .await;
    assert_clean(&r, 1_500);
    assert_eq!(r.mode, "open");
    assert!(r.generator_lag_ms.is_some());
}

#[tokio::test]
async fn terminals_the_gateway_does_not_know_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let r = go(RunConfig {
        check_conservation: false,
        ..config(&d, DEMO_TERMINALS + 5, 200)
    })
    .await;
    assert!(!r.ok);
    assert_eq!(r.signed_on, DEMO_TERMINALS);
    assert_eq!(r.connection_errors.get("sign_on:refused:auth_failed"), Some(&5));
}

/// Says every loss report was acknowledged, and reports nothing.
struct LyingDesk;

impl CardDesk for LyingDesk {
    async fn report_lost(&self, _card: CardNo) -> Result<(), DeskError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_lost_card_that_still_pays_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path());
    let cfg = RunConfig {
        lost_cards: 2,
        mix: Mix {
            reversal_pct: 0,
            balance_pct: 0,
            lost_probe_pct: 50,
        },
        ..config(&d, 10, 1_000)
    };
    let r = run(cfg, Some(LyingDesk), std::future::pending()).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.lost_cards.reported, 2);
    assert!(r.lost_cards.probes > 0, "{}", r.table());
    assert!(r.lost_cards.approved > 0, "{}", r.table());
    assert!(
        r.failures.keys().any(|k| k.contains("lost_card_approved")),
        "{}",
        r.table()
    );
    // The money is still exact: the approvals happened and were counted.
    assert!(r.conservation.as_ref().unwrap().holds(), "{}", r.table());
}

/// A demo gateway whose POS terminals upload offline sales in batches of at most
/// `BATCH_MAX` (so that a few dozen sales take several), and a director's token for the
/// completeness report.
const BATCH_MAX: u64 = 16;

fn start_with_director(dir: &Path) -> (Daemon, String) {
    let config = dir.join("cardgate.toml");
    std::fs::write(&config, format!("[offline]\nbatch_max = {BATCH_MAX}\n")).unwrap();
    let data_dir = dir.join("data");
    let director = operator_add(&data_dir, "zhao", "director").expect("operator add");
    let d = Daemon::start_with(&data_dir, &["--config", config.to_str().unwrap()]);
    (d, director)
}

/// Waits until the central store holds everything the journal does. The gauge is
/// sampled once a second: only a sample taken after this call began counts.
async fn central_caught_up(d: &Daemon) {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.metric("cardgate_central_backlog_entries") != Some(0.0) {
        assert!(Instant::now() < deadline, "the central store did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Today's completeness report.
fn completeness_today(d: &Daemon, director: &str) -> Value {
    let today = crate::business_day::local_date(now_ms());
    let (st, body) = api_request(
        d.admin_addr(),
        "GET",
        &format!("/api/v1/reports/completeness?date={today}"),
        director,
        None,
        "",
    );
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn terminal_line(report: &Value, terminal: u64) -> &Value {
    report["terminals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["terminal"] == terminal)
        .unwrap_or_else(|| panic!("terminal {terminal} in the report: {report}"))
}

fn missing(line: &Value) -> Vec<(u64, u64)> {
    line["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect()
}

/// The sum of one figure of the gateway's side over the run's terminals.
fn sum_over(report: &Value, terminals: std::ops::Range<u64>, figure: &str) -> i64 {
    terminals
        .map(|t| terminal_line(report, t)["gateway"][figure].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn offline_terminals_post_every_sale_once_and_leave_no_gap() {
    crate::business_day::today_lasts_the_test();
    let dir = tempfile::tempdir().unwrap();
    let (d, director) = start_with_director(dir.path());
    let (terminals, per_terminal) = (20, 40);
    let r = go(RunConfig {
        offline_pct: 50,
        offline_sales: per_terminal,
        ..config(&d, terminals, 1_000)
    })
    .await;
    assert_clean(&r, 1_000);
    let o = &r.offline;
    let offline_terminals = 10;
    assert_eq!(o.terminals, offline_terminals, "{}", r.table());
    assert_eq!(o.made, offline_terminals * u64::from(per_terminal), "{}", r.table());
    assert_eq!(o.short_of_limits, 0);
    // Each sale posted exactly once, in batches of at most BATCH_MAX, none flagged.
    let u = &o.upload;
    assert_eq!(
        (u.posted, u.duplicates, u.held, u.flagged),
        (o.made, 0, o.made, 0),
        "{}",
        r.table()
    );
    assert_eq!((u.not_uploaded, u.unsure, u.mismatched), (0, 0, 0));
    assert_eq!(u.held_fen, o.made_fen);
    assert_eq!(
        u.batches,
        BatchCounts {
            accepted: offline_terminals * u64::from(per_terminal).div_ceil(BATCH_MAX),
            ..BatchCounts::default()
        }
    );
    // The money: offline sales move it like purchases.
    let c = r.conservation.as_ref().unwrap();
    assert_eq!(c.offline_posted_fen, o.made_fen);
    assert_eq!(
        c.before_fen - c.after_fen,
        c.purchases_approved_fen - c.reversals_approved_fen + o.made_fen
    );

    // The day, from the journal and from the central store: no number missing, both
    // sides equal, and the figures those of the run.
    central_caught_up(&d).await;
    let report = completeness_today(&d, &director);
    let run_terminals = 1..1 + terminals;
    for t in run_terminals.clone() {
        let line = terminal_line(&report, t);
        assert_eq!(missing(line), vec![], "terminal {t}: {line}");
        assert_eq!(line["matches"], true, "terminal {t}: {line}");
        let seq = r.sequences.terminals.iter().find(|s| s.terminal == t).unwrap();
        assert_eq!(line["seq_max"], seq.last, "terminal {t}: {line}");
        assert!(seq.skipped.is_empty());
    }
    assert_eq!(sum_over(&report, run_terminals.clone(), "offline_count"), o.made as i64);
    assert_eq!(
        i128::from(sum_over(&report, run_terminals.clone(), "offline_fen")),
        o.made_fen
    );
    assert_eq!(
        sum_over(&report, run_terminals.clone(), "online_count"),
        r.money.purchases_approved as i64
    );
    assert_eq!(
        sum_over(&report, run_terminals, "reversal_count"),
        r.money.reversals_approved as i64
    );
}

#[tokio::test]
async fn the_completeness_report_misses_exactly_the_numbers_the_run_skipped() {
    crate::business_day::today_lasts_the_test();
    let dir = tempfile::tempdir().unwrap();
    let (d, director) = start_with_director(dir.path());
    let terminals = 12;
    // Offline terminals too: one counter for online and offline, skips in both.
    let r = go(RunConfig {
        skip_every: 7,
        offline_pct: 25,
        offline_sales: 20,
        ..config(&d, terminals, 600)
    })
    .await;
    assert_clean(&r, 600);
    assert_eq!(r.offline.upload.held, 3 * 20, "{}", r.table());
    assert_eq!(r.sequences.terminals.len() as u64, terminals);
    assert!(r.sequences.skipped > 0);

    central_caught_up(&d).await;
    let report = completeness_today(&d, &director);
    for seq in &r.sequences.terminals {
        let line = terminal_line(&report, seq.terminal);
        assert!(
            !seq.skipped.is_empty(),
            "terminal {} skipped nothing: {seq:?}",
            seq.terminal
        );
        assert_eq!(missing(line), seq.skipped, "terminal {}: {line}", seq.terminal);
        assert_eq!(line["matches"], true, "terminal {}: {line}", seq.terminal);
        assert_eq!(line["seq_max"], seq.last);
    }
}
